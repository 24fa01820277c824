-- Parameters of phase4-infrastructure-storage.lua for the homelab of the migration plan
-- (ZimaOS → NixOS, 40+ containers, a 33 TB btrfs RAID5): copy, edit, then
--   hrun plan playbooks/phase4-infrastructure-storage.lua --params my-phase4.lua -p stage=old-host
return {
  array = "/mnt/array",                    -- mounted at the same path on ZimaOS and on NixOS
  devices = 5,                             -- the RAID5's drives: a missing one stops the phase
  subvolumes = { "data", "media", "photos", "nextcloud", "immich", "paperless", "appdata", "backups" },
  snapshot_dir = ".snapshots",
  carry_dir = ".hrun-migration",
  algo = "xxh128",                         -- 33 TB: xxh128 reads at the disks' speed; sha256 is CPU-bound
  -- on ZimaOS everything runs in Docker: stop what writes to the array before the snapshots
  old_services = { "docker" },
  -- the 8 PostgreSQL instances (one cluster a line), dumped before and asked after
  databases = {
    { name = "nextcloud", host = "/run/postgresql", port = 5432, user = "postgres", expect = { "nextcloud" } },
    { name = "immich", host = "/run/postgresql", port = 5433, user = "postgres", expect = { "immich" } },
    { name = "paperless", host = "/run/postgresql", port = 5434, user = "postgres", expect = { "paperless" } },
    { name = "linkwarden", host = "/run/postgresql", port = 5435, user = "postgres", expect = { "linkwarden" } },
    { name = "joplin", host = "/run/postgresql", port = 5436, user = "postgres", expect = { "joplin" } },
    { name = "memos", host = "/run/postgresql", port = 5437, user = "postgres", expect = { "memos" } },
    { name = "vaultwarden", host = "/run/postgresql", port = 5438, user = "postgres", expect = { "vaultwarden" } },
    { name = "kuma", host = "/run/postgresql", port = 5439, user = "postgres", expect = { "kuma" } },
  },
  config = { flake = "/etc/nixos", host = "hwc-server", ref = "phase4", profile = "" },
  -- started in this order on NixOS: databases, caches, the proxy last (its backends first)
  services = {
    { unit = "postgresql" },
    { unit = "redis-nextcloud" },
    { unit = "redis-immich" },
    { unit = "redis-paperless" },
    { unit = "traefik", url = "http://127.0.0.1:8080/ping", match = "OK" },
  },
  backup = { unit = "restic-backups-array" },
  failed_allowed = {},
  tag = "migration/phase4",
}
