-- What phases 1–3 of the ZimaOS → NixOS migration share for the homelab of the plan:
-- the old host, how its containers are stopped and started, both PostgreSQL servers,
-- the NixOS configuration, the proxy. Give it first, then the phase's services:
--   hrun plan playbooks/phase1-non-critical.lua --params playbooks/params/homelab.lua \
--       --params playbooks/params/phase1-homelab.lua
return {
  -- ZimaOS, a host of the playbooks (hosts.old: ssh://root@zimaos.lan; -H old=URL for
  -- another address): its containers stopped and started there, its data hashed there
  -- and copied here with rsync over ssh (old.ssh, the same host)
  old = {
    host = "old",
    ssh = "ssh://root@zimaos.lan",
    appdata = "/DATA/AppData",
    scratch = "/DATA/.hrun/migration",
    stop = { "docker", "stop", "--time", "60", "{container}" },
    start = { "docker", "start", "{container}" },
  },
  -- (ZimaOS unable to run hrun's agent: -H old=local, and old = {host = "local",
  --  appdata = "/mnt/zimaos/AppData" (sshfs -o ro,allow_other root@zimaos.lan:/DATA/AppData
  --  /mnt/zimaos/AppData), stop = {"ssh", "root@zimaos.lan", "docker", "stop", "--time",
  --  "60", "{container}"}, start = {"ssh", "root@zimaos.lan", "docker", "start", "{container}"}})
  pg_old = { host = "zimaos.lan", port = 5432, user = "postgres" },
  pg_new = { host = "/run/postgresql", port = 5432, user = "postgres" },
  config = { flake = "/etc/nixos", host = "hwc-server", ref = "", profile = "" },
  -- Traefik still runs on ZimaOS until phase 4: its dynamic configuration directory,
  -- mounted read-write here, is where the routes to NixOS go
  proxy = { file = "/mnt/zimaos/traefik/dynamic/nixos-migration.yml" },
  offsite = { unit = "restic-backups-offsite", max_age = 86400 },
  algo = "xxh128",
  failed_allowed = {},
}
