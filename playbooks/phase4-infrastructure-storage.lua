-- phase4-infrastructure-storage.lua — Phase 4 of the ZimaOS → NixOS migration: the
-- 33 TB btrfs RAID5 array, PostgreSQL, Redis, Traefik and the backups, moved in place
-- (the plan's Option A: NixOS on its own drive mounts the existing array).
--
-- It runs twice, once on each side of the move (-p stage=…):
--
--   hrun playbooks/phase4-infrastructure-storage.lua --params server.lua -p stage=old-host
--       on ZimaOS, before shutting it down: the services that write to the array
--       stopped, a read-only snapshot of every subvolume, a checksum manifest of each
--       snapshot and every PostgreSQL instance dumped — onto the array, so they travel
--       with it
--   hrun playbooks/phase4-infrastructure-storage.lua --params server.lua -p stage=new-host
--       on NixOS, the array mounted: every subvolume verified against those manifests
--       (the success metric: checksums match pre-migration) before anything starts,
--       safety snapshots, the configuration deployed from git, the services started in
--       order and asked, the databases and the backup proven, the configuration tagged
--
-- Rollback (a failure rolls back at once; `hrun rollback` later): on the new host the
-- services stop, the generation before is switched to, the tag goes, and every subvolume
-- written since the safety snapshot gets the snapshot back (the written copy is kept
-- aside: `btrfs subvolume list` shows it, delete it once you have looked). On the old
-- host the snapshots, manifests and dumps are removed and the services start again. To
-- go back to ZimaOS after a new-host run: boot its drive; the array is as it was.

-- Where the manifests and dumps travel: on the array.
local function carry(p)
  return p.array .. "/" .. p.carry_dir
end

local function manifest_file(p, sub)
  return string.format("%s/%s-%s.%s", carry(p), p.tag:gsub("/", "-"), sub:gsub("/", "-"), p.algo)
end

local function pg_opts(db)
  return { host = db.host ~= "" and db.host or nil, port = db.port ~= 0 and db.port or nil,
    user = db.user ~= "" and db.user or nil }
end

local function no_failed_units(ctx)
  return checks.no_failed_units({ except = ctx.params.failed_allowed })
end

local function old_host(ctx) return ctx.params.stage == "old-host" end
local function new_host(ctx) return ctx.params.stage == "new-host" end

return playbook {
  name = "phase4-infrastructure-storage", version = "1.0.0",
  description = "Migration phase 4: the btrfs RAID5 array, databases, Redis, Traefik, backups — in place",
  capabilities = { "fs", "btrfs", "hash", "nix", "git", "service", "net", "exec", "env:PG*" },
  params = {
    stage = "new-host",                    -- old-host (ZimaOS, before) or new-host (NixOS, after)
    array = "/mnt/array",                  -- where the array is mounted (the same path on both)
    devices = 0,                           -- the array's device count, checked when not 0
    subvolumes = { "data", "media", "photos", "nextcloud", "appdata" },
    snapshot_dir = ".snapshots",           -- relative to the array
    carry_dir = ".hrun-migration",         -- manifests and dumps, on the array
    algo = "xxh128",                       -- or sha256 (sha256sum -c can check the files)
    old_services = {},                     -- units stopped on the old host before the snapshot
    databases = {                          -- PostgreSQL instances: dumped before, asked after
      { name = "main", host = "", port = 0, user = "postgres", expect = { "nextcloud", "immich" } },
    },
    config = { flake = "/etc/nixos", host = "hwc-server", ref = "", profile = "" },
    services = {                           -- started in this order on the new host
      { unit = "postgresql" },
      { unit = "redis-nextcloud" },
      { unit = "traefik", url = "http://127.0.0.1:8080/ping" },
    },
    backup = { unit = "" },                -- a oneshot backup unit that must succeed ("" = none)
    failed_allowed = {},                   -- globs of units allowed to be failed
    tag = "migration/phase4",
  },

  phase "pre-flight" {
    check "the array is mounted, btrfs" (function(ctx)
      return checks.mounted(ctx.params.array, { fstype = "btrfs" })
    end),
    check "the array has its devices" (function(ctx)
      local p = ctx.params
      if p.devices == 0 then
        return true
      end
      local r = exec.run({ "btrfs", "filesystem", "show", p.array }, { check = false, readonly = true })
      local n = select(2, r.stdout:gsub("\n%s+devid%s", ""))
      return r.ok and n == p.devices and not r.stdout:find("missing"),
        string.format("%s has %d devices, expected %d%s", p.array, n, p.devices,
          r.stdout:find("missing") and " (some missing)" or "")
    end),
    check "every subvolume is there" (function(ctx)
      return migrate.check_subvolumes(ctx.params.array, ctx.params.subvolumes)
    end),
    check "no failed units" (no_failed_units),
  },

  -- {=================== on the old host, before the move ===================

  phase "quiesce" {
    description = "stop what writes to the array, so the snapshots are consistent",
    when = old_host,
    step "stop the services" {
      run = function(ctx)
        for _, unit in ipairs(ctx.params.old_services) do
          service.stop(unit, { timeout = 180 })
        end
      end,
    },
  },

  phase "snapshot and checksum" {
    when = old_host,
    check "no manifests left from an earlier run" (function(ctx)
      return not fs.exists(carry(ctx.params)), carry(ctx.params) .. " exists: an earlier run's? move it away"
    end),
    step "snapshot every subvolume" {
      run = function(ctx)
        local p = ctx.params
        ctx.shared.snapshots = migrate.snapshot(ctx, p.array, p.subvolumes, { dir = p.snapshot_dir,
          label = p.tag:gsub("/", "-") })
      end,
    },
    step "checksum every snapshot" {
      description = "a manifest of each snapshot, exported onto the array",
      run = function(ctx)
        local p = ctx.params
        local names = migrate.manifests(ctx, ctx.shared.snapshots, { algo = p.algo, prefix = p.tag:gsub("/", "-") })
        fs.mkdir(carry(p), { mode = "0700" })
        for _, sub in ipairs(p.subvolumes) do
          if not ctx.plan then
            hash.export(names[sub], manifest_file(p, sub), { format = "coreutils" })
          end
        end
      end,
    },
    step "dump the databases" {
      run = function(ctx)
        local p = ctx.params
        ctx.state.dumps = {}
        for _, db in ipairs(p.databases) do
          local d = pg.dumpall(string.format("%s/%s.sql", carry(p), db.name), pg_opts(db))
          ctx.state.dumps[db.name] = d
          if not d.planned then
            ctx.log("%s: %d bytes, sha256 %s", d.file, d.bytes, d.sha256)
          end
        end
      end,
    },
  },

  -- }=========================================================================
  -- {=================== on the new host, after the move ====================

  phase "verify the array" {
    description = "checksums match pre-migration: nothing starts before",
    when = new_host,
    step "verify every subvolume" {
      run = function(ctx)
        local p = ctx.params
        local names = {}
        for _, sub in ipairs(p.subvolumes) do
          local file = manifest_file(p, sub)
          if not fs.exists(file) then
            error(file .. ": no manifest (run this playbook with -p stage=old-host on the old host first)")
          end
          names[sub] = hash.import(file, { format = "coreutils",
            root = p.array .. "/" .. sub }).id
        end
        local ok, why, results = migrate.verify(p.array, names)
        for sub, r in pairs(results) do
          for _, path in ipairs(r.changed) do
            ctx.log("%s: changed: %s", sub, path)
          end
          for _, path in ipairs(r.missing) do
            ctx.log("%s: missing: %s", sub, path)
          end
        end
        if not ok then
          error(why)
        end
        ctx.log(why)
      end,
    },
    step "check the dumps" {
      run = function(ctx)
        for _, db in ipairs(ctx.params.databases) do
          local file = string.format("%s/%s.sql", carry(ctx.params), db.name)
          local data = fs.exists(file) and fs.read(file) or ""
          if not data:find("PostgreSQL database cluster dump complete", #data - 200, true) then
            error(file .. ": not a complete pg_dumpall dump")
          end
        end
      end,
    },
  },

  phase "safety snapshots" {
    when = new_host,
    step "snapshot every subvolume" {
      description = "undone by giving each written subvolume its snapshot back",
      run = function(ctx)
        local p = ctx.params
        migrate.snapshot(ctx, p.array, p.subvolumes, { dir = p.snapshot_dir, label = "before-nixos" })
      end,
      undo = function(ctx) migrate.restore_changed(ctx, ctx.params.array) end,
    },
  },

  phase "deploy" {
    when = new_host,
    step "switch to the configuration" {
      run = function(ctx) migrate.deploy(ctx, ctx.params.config) end,
    },
    step "start the services in order" {
      run = function(ctx) migrate.start(ctx, ctx.params.services) end,
    },
  },

  phase "success criteria" {
    when = new_host,
    check "every service is healthy" (function(ctx) return migrate.check_services(ctx.params.services) end),
    check "every database answers" (function(ctx)
      for _, db in ipairs(ctx.params.databases) do
        local rows, err = pg.query("SELECT datname FROM pg_database", pg_opts(db))
        if not rows then
          return false, db.name .. ": " .. err
        end
        local have = {}
        for _, r in ipairs(rows) do
          have[r[1]] = true
        end
        for _, want in ipairs(db.expect) do
          if not have[want] then
            return false, string.format("%s: no database %s", db.name, want)
          end
        end
      end
      return true
    end),
    check "no failed units" (no_failed_units),
    step "run the backup" {
      description = "the backup system is functional: its unit runs to success",
      when = function(ctx) return ctx.params.backup.unit ~= "" end,
      run = function(ctx)
        local st = service.start(ctx.params.backup.unit, { timeout = 3600 })
        if not st.planned and st.result and st.result ~= "success" then
          error(string.format("%s: %s", st.unit, st.result))
        end
      end,
    },
    step "tag the configuration" {
      run = function(ctx)
        local p = ctx.params
        migrate.tag(ctx, p.config.flake, p.tag, "Migration phase 4 done: array verified, infrastructure on NixOS")
      end,
    },
  },

  -- }=========================================================================
}
