-- nixos-upgrade-24.05-24.11.lua — a NixOS server from one release to the next, as the
-- upgrade plan of hwc-server says it step for step, journaled and reversible.
--
--   hrun plan playbooks/nixos-upgrade-24.05-24.11.lua --params my-server.lua
--                    the checks run; every write listed, with the closure diff of the switch
--   hrun playbooks/nixos-upgrade-24.05-24.11.lua --params my-server.lua
--   hrun rollback    later: the previous generation, flake.nix and flake.lock back
--
-- Parameterised: -p from=24.11 -p to=25.05 with the inputs' new URLs serves the next
-- release ("{to}" and "{from}" in a URL are replaced). The plan's phases:
--
--   pre-flight       flake in git and clean, running `from`, cgroup v2, room for the dump
--   pre-migration    /etc/nixos copied aside, pg_dumpall (size and sha256 in the journal),
--                    the failed units and every stateVersion recorded
--   flake            the inputs' URLs changed (stateVersion untouched), the lock updated,
--                    `nix flake check`, committed
--   build and switch nixos-rebuild build, test, switch
--   post-migration   version, failed units against before, PostgreSQL and its extension
--                    files, the containers' units, Immich restarted and asked
--   reset immich     only with -p reset_immich=true, behind a confirmation: the Immich
--                    database dumped, dropped and created empty (undone from the dump)
--
-- A failure anywhere rolls back, newest first: the generation before is switched to
-- (the plan's "boot the previous generation"), the commit and the lock and flake.nix
-- bytes come back (its "git checkout HEAD~1 -- flake.nix flake.lock" and rebuild); the
-- backup copy and the dump stay (keep = true: the copies a person wants after a failed
-- upgrade; `hrun gc` does not remove them either). Before rolling back by hand:
-- `hrun show RUN`. -p host=NAME is required: the nixosConfigurations entry to build.

local function expand(url, p)
  return (url:gsub("{to}", p.to):gsub("{from}", p.from))
end

-- The inputs, sorted by name (params.inputs is name → URL).
local function input_names(p)
  local names = {}
  for name in pairs(p.inputs) do
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

-- Every `stateVersion = "…"` in the flake's .nix files: "file:line" → value.
local function state_versions(dir)
  local found = {}
  local function walk(d, rel)
    for _, name in ipairs(fs.list(d)) do
      local path, r = d .. "/" .. name, rel == "" and name or rel .. "/" .. name
      local st = fs.stat(path, { follow = false })
      if st.type == "dir" and name ~= ".git" and name ~= "result" then
        walk(path, r)
      elseif st.type == "file" and name:match("%.nix$") then
        local n = 0
        for line in (fs.read(path) .. "\n"):gmatch("([^\n]*)\n") do
          n = n + 1
          local code = line:gsub("#.*$", "")
          local v = code:match('[%w%.]*stateVersion%s*=%s*"([^"]*)"')
          if v then
            found[r .. ":" .. n] = v
          end
        end
      end
    end
  end
  walk(dir, "")
  return found
end

local function pg_opts(p)
  return { host = p.pg.host ~= "" and p.pg.host or nil, port = p.pg.port ~= 0 and p.pg.port or nil,
    user = p.pg.user ~= "" and p.pg.user or nil }
end

local function profile(p)
  return { profile = p.profile }
end

-- nixos-rebuild ACTION --flake <flake>#<host>, the generations read from params.profile.
local function rebuild(ctx, action)
  local p = ctx.params
  return nixos.rebuild(action, { flake = p.flake .. "#" .. p.host, profile = p.profile })
end

local function unit_names(list)
  local names = {}
  for _, u in ipairs(list) do
    names[#names + 1] = u.unit
  end
  return names
end

return playbook {
  name = "nixos-upgrade", version = "1.0.0",
  description = "Upgrade a NixOS server from one release to the next (24.05 → 24.11 by default)",
  capabilities = { "fs", "exec", "nix", "git", "service", "net", "hash", "env:PG*" },
  params = {
    from = "24.05", to = "24.11",
    flake = "/etc/nixos",                   -- the flake's directory, a git repository
    host = required "string",               -- nixosConfigurations.<host>: every server its own
    inputs = {                              -- input → its URL after the upgrade
      ["nixpkgs-stable"] = "github:NixOS/nixpkgs/nixos-{to}",
      ["home-manager-stable"] = "github:nix-community/home-manager/release-{to}",
      ["agenix-stable"] = "github:ryantm/agenix",
    },
    profile = "/nix/var/nix/profiles/system",
    cgroup = "/sys/fs/cgroup",              -- systemd 256 (24.11) refuses cgroup v1
    store = "/nix/store",
    backup_dir = "/mnt/hot/backups",        -- where pg_dumpall writes
    flake_backup = "",                      -- default: <flake>.backup.<from>
    pg = { enabled = true, unit = "postgresql", major = 15, host = "", port = 0, user = "postgres",
      extensions = { "vectors", "vchord" } },
    units = { "postgresql", "podman-immich-server" }, -- must be active after the switch
    failed_allowed = {},                    -- globs of units allowed to fail after
    immich = { unit = "podman-immich-server", url = "", required = false, database = "immich", owner = "immich" },
    nvidia = false,                         -- run nvidia-smi after
    reset_immich = false,                   -- the "reset immich" phase (asks first)
  },

  phase "pre-flight" {
    check "the flake is a clean git repository" (function(ctx)
      local p = ctx.params
      if not fs.exists(p.flake .. "/flake.nix") then
        return false, p.flake .. "/flake.nix: no such file"
      end
      local ok, st = pcall(git.status, p.flake, { untracked = false })
      if not ok then
        return false, tostring(st)
      end
      if not st.clean then
        local paths = {}
        for _, f in ipairs(st.files) do
          paths[#paths + 1] = f.path
        end
        return false, p.flake .. " has uncommitted changes (" .. table.concat(paths, ", ") ..
          "): commit them first, so the rollback's HEAD~1 is what runs now"
      end
      return true
    end),
    check "running the release to upgrade from" (function(ctx)
      local cur = nixos.current(profile(ctx.params))
      local from = ctx.params.from
      if (cur.version or ""):sub(1, #from + 1) == from .. "." then
        return true, "generation " .. cur.number .. ": " .. cur.version
      end
      return false, string.format("the current generation %d runs %s, not %s", cur.number, cur.version or "?", from)
    end),
    check "cgroup v2" (function(ctx) return checks.cgroup_v2(ctx.params.cgroup) end),
    check "room for the database dump" (function(ctx)
      if not ctx.params.pg.enabled then
        return true
      end
      return checks.free_space(ctx.params.backup_dir, { bytes = 1024 * 1024 * 1024 })
    end),
    check "every input is in flake.nix" (function(ctx)
      local text = fs.read(ctx.params.flake .. "/flake.nix")
      for _, name in ipairs(input_names(ctx.params)) do
        if not text:find(name, 1, true) then
          return false, "flake.nix has no input " .. name
        end
      end
      return true
    end),
  },

  phase "pre-migration" {
    step "back up the flake" {
      description = "cp -a /etc/nixos /etc/nixos.backup.<from>",
      run = function(ctx)
        local p = ctx.params
        local dst = p.flake_backup ~= "" and p.flake_backup or (p.flake .. ".backup." .. p.from)
        if fs.exists(dst) then -- an earlier attempt's copy stays as it is; this one is beside it
          dst = dst .. "." .. migrate.stamp()
          ctx.log("an earlier backup is there: this one is %s", dst)
        end
        -- kept: after a failed upgrade and its rollback, a person wants this copy
        fs.copy(p.flake, dst, { recursive = true, keep = true })
        ctx.state.backup = dst
      end,
      verify = function(ctx) return fs.exists(ctx.state.backup .. "/flake.nix") end,
    },
    step "dump PostgreSQL" {
      description = "pg_dumpall, its size and sha256 kept in the journal",
      when = function(ctx) return ctx.params.pg.enabled end,
      run = function(ctx)
        local p = ctx.params
        fs.mkdir(p.backup_dir, { parents = true, mode = "0700" })
        local opts = pg_opts(p)
        opts.keep = true -- a rollback leaves the dump: it is the copy a person wants afterwards
        local file = p.backup_dir .. "/postgresql-pre-" .. p.to .. ".sql"
        if fs.exists(file) then -- an earlier attempt's dump stays as it is; this one is beside it
          file = string.format("%s/postgresql-pre-%s.%s.sql", p.backup_dir, p.to, migrate.stamp())
        end
        local d, err = pg.dumpall(file, opts)
        if not d then
          error(err, 0)
        end
        ctx.state.dump = d
        if not d.planned then
          ctx.log("%s: %d bytes, sha256 %s", d.file, d.bytes, d.sha256)
        end
      end,
      verify = function(ctx)
        local d = ctx.state.dump
        return hash.file(d.file, { algo = "sha256" }) == d.sha256, d.file .. " changed since it was written"
      end,
    },
    step "record the system as it is" {
      description = "failed units, generation, stateVersion values",
      run = function(ctx)
        local p = ctx.params
        ctx.shared.failed_before = unit_names(service.failed())
        ctx.shared.generation_before = nixos.current(profile(p)).number
        ctx.shared.state_versions = state_versions(p.flake)
        ctx.log("generation %d; failed units: %s", ctx.shared.generation_before,
          #ctx.shared.failed_before > 0 and table.concat(ctx.shared.failed_before, ", ") or "none")
      end,
    },
  },

  phase "flake" {
    step "change the inputs" {
      run = function(ctx)
        local p = ctx.params
        ctx.state.old = {}
        for _, name in ipairs(input_names(p)) do
          local url = expand(p.inputs[name], p)
          ctx.state.old[name] = nixos.flake_set_input(p.flake .. "/flake.nix", name, url)
          ctx.log("%s: %s → %s", name, ctx.state.old[name], url)
        end
      end,
      verify = function(ctx)
        -- stateVersion is the release the state was made with: an upgrade never changes it
        local now = state_versions(ctx.params.flake)
        for where, v in pairs(ctx.shared.state_versions or {}) do
          if now[where] ~= v then
            return false, string.format("stateVersion at %s changed: %s → %s", where, v, tostring(now[where]))
          end
        end
        return true
      end,
    },
    step "update the lock" {
      description = "nix flake update <the inputs>",
      run = function(ctx) nixos.flake_update(ctx.params.flake, { inputs = input_names(ctx.params) }) end,
    },
    step "nix flake check" {
      run = function(ctx)
        local r = nixos.flake_check(ctx.params.flake)
        if not r.ok then
          error("nix flake check failed:\n" .. r.stderr:sub(-2000))
        end
      end,
    },
    step "commit" {
      run = function(ctx)
        local p = ctx.params
        ctx.state.commit = git.commit(p.flake, string.format("nixos: %s → %s (hrun run %d)", p.from, p.to,
          ctx.run_id or 0), { paths = { "flake.nix", "flake.lock" } })
      end,
    },
  },

  phase "build and switch" {
    step "build" {
      description = "nixos-rebuild build: nothing activated",
      run = function(ctx) rebuild(ctx, "build") end,
    },
    step "test" {
      description = "nixos-rebuild test: activated, not the boot default",
      run = function(ctx) rebuild(ctx, "test") end,
    },
    step "switch" {
      description = "nixos-rebuild switch; undone by switching to the generation before",
      run = function(ctx)
        local r = rebuild(ctx, "switch")
        ctx.state.generation, ctx.state.previous = r.generation, r.previous
      end,
      verify = function(ctx)
        local cur = nixos.current(profile(ctx.params))
        local to = ctx.params.to
        return (cur.version or ""):sub(1, #to + 1) == to .. ".", "now running " .. tostring(cur.version)
      end,
    },
  },

  phase "post-migration" {
    check "no unit failed that did not fail before" (function(ctx)
      local except = {}
      for _, u in ipairs(ctx.shared.failed_before or {}) do
        except[#except + 1] = u
      end
      for _, g in ipairs(ctx.params.failed_allowed) do
        except[#except + 1] = g
      end
      return checks.no_failed_units({ except = except })
    end),
    check "PostgreSQL runs the same major version" (function(ctx)
      local p = ctx.params
      if not p.pg.enabled then
        return true
      end
      local st = service.status(p.pg.unit)
      if st.active ~= "active" then
        return false, string.format("%s is %s (%s)", st.unit, st.active, st.sub or "?")
      end
      local v, major = pg.version(pg_opts(p))
      return major == p.pg.major, string.format("PostgreSQL %s, expected %d", v, p.pg.major)
    end),
    check "the units are active" (function(ctx)
      local down = {}
      for _, u in ipairs(ctx.params.units) do
        local st = service.status(u)
        if st.active ~= "active" then
          down[#down + 1] = string.format("%s (%s/%s)", st.unit, st.load, st.active)
        end
      end
      return #down == 0, "not active: " .. table.concat(down, ", ")
    end),
    check "NVIDIA driver answers" (function(ctx)
      if not ctx.params.nvidia then
        return true
      end
      local r = exec.run({ "nvidia-smi", "-L" }, { check = false, readonly = true, timeout = 30 })
      return r.ok, "nvidia-smi: " .. (r.stderr ~= "" and r.stderr or r.stdout)
    end),
    step "look for the vector extensions" {
      description = "ls /nix/store/*postgresql*/share/postgresql/extension/ | grep -i vect",
      when = function(ctx) return ctx.params.pg.enabled end,
      run = function(ctx)
        local found = {}
        for _, f in ipairs(fs.glob(ctx.params.store .. "/*postgresql*/share/postgresql/extension/*.control")) do
          local name = f:match("([^/]+)%.control$")
          for _, want in ipairs(ctx.params.pg.extensions) do
            if name:lower():find(want:lower(), 1, true) then
              found[#found + 1] = name
            end
          end
        end
        table.sort(found)
        ctx.shared.extensions = found
        ctx.log(#found > 0 and "extension files: %s" or "no extension file matching %s",
          #found > 0 and table.concat(found, ", ") or table.concat(ctx.params.pg.extensions, ", "))
      end,
    },
    step "restart Immich" {
      description = "systemctl restart podman-immich-server, then its health",
      irreversible = true, -- a restart changes nothing to give back
      when = function(ctx) return ctx.params.immich.unit ~= "" end,
      run = function(ctx)
        local im = ctx.params.immich
        local ok, err = pcall(function()
          service.restart(im.unit, { timeout = 120 })
          if im.url ~= "" then
            http.wait(im.url, { timeout = 120, interval = 2 })
          end
        end)
        ctx.shared.immich_ok = ok
        if not ok then
          if im.required then
            error(err, 0)
          end
          ctx.log("WARNING: Immich is not healthy: %s", tostring(err))
          ctx.log("if the vector extension is missing, run the 'reset immich' phase: -p reset_immich=true")
        end
      end,
    },
  },

  phase "reset immich" {
    description = "If Immich still fails: its database dropped and created empty (photos stay)",
    when = function(ctx) return ctx.params.reset_immich end,
    step "reset the Immich database" {
      confirm = "Drop the Immich database and create it empty? (it is dumped first; the photos stay)",
      run = function(ctx)
        local p, im = ctx.params, ctx.params.immich
        local opts = pg_opts(p)
        fs.mkdir(p.backup_dir, { parents = true, mode = "0700" })
        ctx.state.dump = pg.dump(im.database, string.format("%s/%s-before-reset-%s.sql", p.backup_dir, im.database,
          migrate.stamp()), opts)
        pg.exec(string.format('DROP DATABASE "%s"', im.database), opts)
        ctx.state.dropped = true
        pg.exec(string.format('CREATE DATABASE "%s" OWNER "%s"', im.database, im.owner), opts)
        if im.unit ~= "" then
          service.restart(im.unit, { timeout = 120 })
        end
      end,
      undo = function(ctx)
        local p, im = ctx.params, ctx.params.immich
        local opts = pg_opts(p)
        if ctx.state.dropped then
          pg.exec(string.format('DROP DATABASE IF EXISTS "%s"', im.database), opts)
          opts.sha256 = ctx.state.dump.sha256
          pg.restore(ctx.state.dump.file, opts)
        end
        if ctx.state.dump then
          fs.remove(ctx.state.dump.file)
        end
      end,
    },
  },
}
