-- phase1-non-critical.lua — Phase 1 of the ZimaOS → NixOS migration: the services whose
-- downtime hurts least (Uptime-Kuma, Stirling-PDF, Memos, Linkwarden, SwingMusic) move
-- from their Docker containers on ZimaOS to NixOS, where the configuration in git
-- defines them (virtualisation.oci-containers or native modules).
--
--   hrun plan playbooks/phase1-non-critical.lua --params my-phase1.lua
--   hrun playbooks/phase1-non-critical.lua --params my-phase1.lua
--
-- Run on the NixOS host (new = "local"); the old host is a host of the playbook (old,
-- ssh://root@zimaos.lan: -H old=URL for another address, and old.ssh the same for rsync),
-- where hrun uploads its portable build to /DATA/.hrun (ZimaOS's root is read-only). For
-- each service, in order: its container stopped on the old host (docker stop, run there
-- and journaled there), its SQLite databases backed up and checked there and copied here,
-- its data hashed there (a checksum manifest where the data is), copied here with rsync
-- over ssh and verified byte for byte against that manifest, its PostgreSQL databases
-- restored on the new server with every table's rows compared.
-- Then the configuration is switched to, the services start in order and must answer,
-- the proxy routes their names to NixOS, and the success criteria are checked.
--
-- Rollback (a failure rolls back at once; `hrun rollback` later — the plan's "switch back
-- in < 5 minutes"): the proxy's routes put back, the new services stopped, the generation
-- before, the restored databases dropped, the copies and backups removed, and the
-- containers on the old host started again. The old host's data is only ever read.
--
-- An old host that cannot run anything (the agent cannot be uploaded or run there): run
-- with -H old=local and params old = {host = "local", appdata = its app data mounted here
-- (`sshfs -o ro root@zimaos:/DATA/AppData /mnt/zimaos`), stop = {"ssh", "root@zimaos.lan",
-- "docker", "stop", "{container}"}, start = the same with "start"}: everything runs here,
-- the old host reached only by those commands (docs/migration.md).

local function no_failed_units(ctx)
  return checks.no_failed_units({ except = ctx.params.failed_allowed })
end

return playbook {
  name = "phase1-non-critical", version = "1.0.0",
  description = "Migration phase 1: the non-critical services move from ZimaOS to NixOS",
  -- the old machine (ZimaOS: hrun's portable build goes to its data disk) and this one
  hosts = { old = { url = "ssh://root@zimaos.lan", agent_dir = "/DATA/.hrun" }, new = "local" },
  -- (env:HRUN_SSH_CONFIG: rsync reaches the old host with hrun's ssh configuration)
  capabilities = { "fs", "hash", "nix", "git", "service", "net", "exec", "env:PG*", "env:HRUN_SSH_CONFIG",
    "fs@old", "hash@old", "exec@old" },
  params = {
    old = {
      host = "old",                        -- the playbook's host ("local": one that cannot run anything)
      ssh = "ssh://root@zimaos.lan",       -- its address for rsync (the same host as -H old=URL)
      appdata = "/DATA/AppData",           -- its app data (there; a mount here when host = "local")
      scratch = "/DATA/.hrun/migration",   -- where manifests and backups are made there
      stop = { "docker", "stop", "{container}" },   -- run on the old host, undone by start
      start = { "docker", "start", "{container}" },
    },
    pg_old = { host = "zimaos.lan", port = 5432, user = "postgres" }, -- the old host's PostgreSQL
    pg_new = { host = "/run/postgresql", port = 5432, user = "postgres" },
    config = { flake = "/etc/nixos", host = "hwc-server", ref = "", profile = "" },
    backup_dir = "/var/backups/hrun-migration/phase1",
    proxy = { file = "", unit = "" },      -- a Traefik dynamic configuration file ("" = no proxy step),
                                           -- and a unit to reload when it changes ("": the proxy
                                           -- watches the file, as Traefik's file provider does)
    offsite = { unit = "", max_age = 86400 }, -- the offsite backup that must have succeeded lately
    algo = "xxh128",
    max_downtime = 0,                      -- seconds a service may be down (0 = not checked)
    failed_allowed = {},
    tag = "migration/phase1",
    services = {
      { name = "uptime-kuma", unit = "podman-uptime-kuma", data = "uptime-kuma", to = "/var/lib/uptime-kuma",
        url = "http://127.0.0.1:3001/", sqlite = { { file = "kuma.db", tables = { "monitor", "heartbeat" } } } },
    },
  },

  phase "pre-flight" {
    check "the services are described right" (function(ctx) return migrate.check_moves(ctx.params.services) end),
    check "their data is on the old host, their place free here" (function(ctx)
      return migrate.check_sources(ctx.params.old, ctx.params.services)
    end),
    check "they answer on the old host" (function(ctx) return migrate.check_old(ctx.params.services) end),
    check "the offsite backup succeeded lately" (function(ctx) return migrate.check_offsite(ctx.params.offsite) end),
    check "the configuration is committed" (function(ctx) return migrate.check_committed(ctx.params.config) end),
    check "no failed units" (no_failed_units),
  },

  phase "move the data" {
    step "stop the services on the old host" {
      description = "undone by starting them there again",
      run = function(ctx) migrate.stop_old(ctx, ctx.params.old, ctx.params.services) end,
    },
    step "back up their databases" {
      description = "nothing moves without a backup that is checked",
      run = function(ctx)
        local p = ctx.params
        migrate.backup(ctx, p.old, p.services, p.backup_dir, p.pg_old)
      end,
    },
    step "copy their data" {
      description = "rsync from the old host, verified against a checksum manifest made there",
      run = function(ctx)
        local p = ctx.params
        migrate.copy(ctx, p.old, p.services, { algo = p.algo, dir = p.backup_dir })
      end,
    },
    step "restore their PostgreSQL databases" {
      run = function(ctx) migrate.restore_databases(ctx, ctx.params.services, ctx.params.pg_new) end,
    },
  },

  phase "deploy" {
    step "switch to the configuration" {
      run = function(ctx) migrate.deploy(ctx, ctx.params.config) end,
    },
    step "start the services in order" {
      run = function(ctx) migrate.start(ctx, ctx.params.services) end,
    },
    -- the proxy reloads once its routes changed, and again after a rollback put them back
    handler "reload the proxy" { run = migrate.reload_proxy },
    step "route the proxy to NixOS" {
      when = function(ctx) return ctx.params.proxy.file ~= "" end,
      notify = { "reload the proxy" },
      run = function(ctx) fs.write(ctx.params.proxy.file, migrate.routes(ctx.params.services, "phase 1")) end,
    },
  },

  phase "success criteria" {
    check "every service runs and answers" (function(ctx) return migrate.check_services(ctx.params.services) end),
    check "they answer at the same URLs" (function(ctx)
      return migrate.found(ctx, migrate.check_public(ctx.params.services))
    end),
    check "no data lost" (function(ctx)
      return migrate.found(ctx, migrate.check_rows(ctx.params.services, ctx.shared.backups, ctx.params.pg_new))
    end),
    check "the downtime was short" (function(ctx)
      return migrate.found(ctx, migrate.check_downtime(ctx, ctx.params.services, ctx.params.max_downtime))
    end),
    check "no failed units" (no_failed_units),
    step "tag the configuration" {
      run = function(ctx)
        local p = ctx.params
        migrate.tag(ctx, p.config.flake, p.tag, "Migration phase 1 done: the non-critical services run on NixOS")
      end,
    },
  },
}
