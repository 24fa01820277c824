-- End to end: playbooks/nixos-upgrade-24.05-24.11.lua on a sandbox host built from real
-- parts — a private nix store with generations 1–2 of hwc-server's flake (in git, the
-- inputs of the upgrade plan) and a nixos-rebuild stand-in, a PostgreSQL 15 cluster, and
-- systemd in nspawn running units named like the server's. Run for real, rolled back
-- later, and failed on purpose (a build that fails, units that fail to activate).

local ROOT = exec.run({ "realpath", arg[0]:match("^(.*)/tests/[^/]+$") }, { readonly = true }).stdout:gsub("\n$", "")
local PLAYBOOK = ROOT .. "/playbooks/nixos-upgrade-24.05-24.11.lua"

local function unit(description, port)
  return string.format("[Unit]\nDescription=%s\n[Service]\nExecStart=/bin/busybox httpd -f -p 127.0.0.1:%s -h /srv\n"
    .. "[Install]\nWantedBy=multi-user.target\n", description, port)
end

-- The host: returns a table with the directories, the environment for hrun and the
-- params file of this sandbox (extra: more params).
local function server(extra)
  local h = {}
  h.nix, h.env = nix_host(true)
  local pg_env, pg_dir = pg_cluster()
  local immich_port = free_port()
  local bus = systemd_container({
    ["postgresql.service"] = unit("PostgreSQL (stand-in)", free_port()),
    ["podman-immich-server.service"] = unit("immich-server (stand-in)", immich_port),
  })
  for k, v in pairs(pg_env) do
    h.env[k] = v
  end
  for k, v in pairs(bus) do
    h.env[k] = v
  end
  h.pg_env, h.pg_dir = pg_env, pg_dir
  h.etc = h.nix .. "/etc-nixos"
  h.work = tmpdir()
  h.state = h.work .. "/state"
  h.backups = h.work .. "/backups"
  local params = {
    flake = h.etc, host = "hwc-server",
    inputs = {
      ["nixpkgs-stable"] = "path:" .. h.nix .. "/pkgs-{to}",
      ["home-manager-stable"] = "path:" .. h.nix .. "/home-manager-{to}",
      ["agenix-stable"] = "path:" .. h.nix .. "/agenix",
    },
    -- this host is hybrid: the container's systemd runs on the unified (v2) hierarchy
    cgroup = fs.exists("/sys/fs/cgroup/unified/cgroup.controllers") and "/sys/fs/cgroup/unified" or "/sys/fs/cgroup",
    profile = h.nix .. "/profiles/system", store = h.env.NIX_STORE_DIR, backup_dir = h.backups,
    pg = { enabled = true, unit = "postgresql", major = 15, host = pg_dir, port = tonumber(pg_env.PGPORT),
      user = "postgres", extensions = { "vectors", "vchord" } },
    immich = { unit = "podman-immich-server", url = "http://127.0.0.1:" .. immich_port .. "/health",
      required = true, database = "immich", owner = "immich" },
  }
  for k, v in pairs(extra or {}) do
    params[k] = v
  end
  h.params = h.work .. "/server.json"
  fs.write(h.params, json.encode(params))
  return h
end

-- What the rollback must give back: the flake's files (git's own aside) and HEAD, the
-- current generation.
local function snapshot(h)
  local files = {}
  for path, desc in pairs(tree(h.etc)) do
    if path ~= ".git" and path:sub(1, 5) ~= ".git/" then
      files[path] = desc
    end
  end
  return {
    flake = files,
    head = exec.run({ "git", "-C", h.etc, "rev-parse", "HEAD" }, { readonly = true }).stdout,
    current = exec.run({ "readlink", h.nix .. "/profiles/system" }, { readonly = true }).stdout,
  }
end

local function psql(h, db, sql)
  return exec.run({ "psql", "-X", "-A", "-t", "-d", db, "-c", sql }, { env = h.pg_env }).stdout:gsub("%s+$", "")
end

describe("the NixOS upgrade playbook", function()
  it("plans the upgrade with the closure diff of 24.11, and changes nothing", function()
    local h = server()
    local before = snapshot(h)
    local r = hrun_on(h, { "plan", PLAYBOOK })
    eq(r.code, 0, r.stdout .. r.stderr)
    -- the plan builds what the planned flake edits make: 24.11's closure
    has(r.stdout, "~ openssl 3.0.13 → 3.3.2")
    has(r.stdout, "~ nixos-system-hrun-test 24.05 → 24.11")
    has(r.stdout, "+ foo 1.0")
    has(r.stdout, "would nixos.flake_set_input " .. h.etc .. "/flake.nix")
    has(r.stdout, "would nixos.rebuild switch")
    ok(not r.stdout:find("NOT DECLARED", 1, true), "the playbook declares every capability it uses")
    eq(snapshot(h), before)
    eq(fs.exists(h.backups), false, "no dump, not even its directory")
    eq(fs.exists(h.etc .. ".backup.24.05"), false)
    eq(fs.read(h.nix .. "/activations"), "")
  end)

  it("upgrades for real, and `hrun rollback` brings 24.05 back", function()
    local h = server()
    local before = snapshot(h)
    local r = hrun_on(h, { PLAYBOOK })
    eq(r.code, 0, r.stdout .. r.stderr)
    -- 24.11 is running: generation 3, its inputs, committed; the backups kept
    eq(before.current, "system-2-link\n")
    eq(snapshot(h).current, "system-3-link\n")
    has(fs.read(h.nix .. "/profiles/system/nixos-version"), "24.11.")
    local flake = fs.read(h.etc .. "/flake.nix")
    has(flake, 'nixpkgs-stable.url = "path:' .. h.nix .. '/pkgs-24.11"')
    has(flake, 'url = "path:' .. h.nix .. '/home-manager-24.11"')
    has(flake, 'inputs.agenix-stable.url = "path:' .. h.nix .. '/agenix"')
    has(flake, 'stateVersion = "24.05"; # system.stateVersion', "stateVersion untouched")
    has(exec.run({ "git", "-C", h.etc, "log", "-1", "--format=%s" }).stdout, "nixos: 24.05 → 24.11")
    eq(exec.run({ "git", "-C", h.etc, "status", "--porcelain" }).stdout, "")
    ok(fs.exists(h.etc .. ".backup.24.05/flake.nix"))
    local dump = h.backups .. "/postgresql-pre-24.11.sql"
    has(fs.read(dump), "CREATE DATABASE app")
    -- the dump's size and sha256 are in the journal
    local digest = exec.run({ "sha256sum", dump }).stdout:match("^(%x+)")
    has(hrun_on(h, { "show", "1", "--json" }).stdout, digest)
    has(r.stdout, "extension files: vchord, vectors")
    has(fs.read(h.nix .. "/activations"), "test gen2\nswitch gen2\n")
    -- later: the whole upgrade undone from the journal
    r = hrun_on(h, { "rollback" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(snapshot(h), before)
    eq(fs.exists(dump), false)
    eq(fs.exists(h.etc .. ".backup.24.05"), false)
    has(fs.read(h.nix .. "/profiles/system/nixos-version"), "24.05.")
  end)

  it("rolls back when the build fails: flake files, commit and generation as before", function()
    local h = server({ inputs = {
      ["nixpkgs-stable"] = "path:" .. "NIX/pkgs-broken",
      ["home-manager-stable"] = "path:NIX/home-manager-{to}",
      ["agenix-stable"] = "path:NIX/agenix",
    } })
    -- the same inputs, the broken release for nixpkgs
    fs.write(h.params, (fs.read(h.params):gsub("NIX", h.nix)))
    local before = snapshot(h)
    local r = hrun_on(h, { PLAYBOOK })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "a broken release, as the test asked")
    has(r.stdout, "rolled back")
    eq(snapshot(h), before)
    eq(fs.exists(h.backups .. "/postgresql-pre-24.11.sql"), false)
    eq(fs.exists(h.etc .. ".backup.24.05"), false)
    eq(fs.read(h.nix .. "/activations"), "", "nothing was activated")
  end)

  it("rolls back when units fail to activate: the generation before is active again", function()
    local h = server()
    local before = snapshot(h)
    local r = hrun_on(h, { PLAYBOOK }, { HRUN_TEST_FAIL_ACTIVATION = "24.11" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "activation failed (as the test asked)")
    eq(snapshot(h), before)
    -- `test` activated 24.11, then its undo activated generation 2 again
    local log = fs.read(h.nix .. "/activations")
    has(log, "test gen2\n")
    eq(select(2, log:gsub("\n", "")), 2, log)
    local st = hrun_chunk(h.env, [[print(service.status("podman-immich-server").active)]])
    eq(st, "active\n")
  end)

  it("rolls back when a unit is down after the switch, and says which", function()
    local h = server({ units = { "postgresql", "podman-immich-server", "hrun-fail" } })
    local before = snapshot(h)
    local r = hrun_on(h, { PLAYBOOK })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "not active: hrun-fail.service (loaded/inactive)")
    eq(snapshot(h), before)
    has(fs.read(h.nix .. "/profiles/system/nixos-version"), "24.05.")
  end)

  it("resets the Immich database only when asked and confirmed, and undoes it from its dump", function()
    local h = server()
    exec.run({ "psql", "-X", "-q", "-c", "CREATE DATABASE immich OWNER immich" }, { env = h.pg_env })
    exec.run({ "psql", "-X", "-q", "-d", "immich", "-c", "CREATE TABLE assets (id int)",
      "-c", "INSERT INTO assets SELECT generate_series(1, 42)" }, { env = h.pg_env })
    -- not asked: the phase is skipped
    local r = hrun_on(h, { PLAYBOOK, "--only", "reset immich" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(psql(h, "immich", "SELECT count(*) FROM assets"), "42")
    -- asked, not confirmed (no terminal, no --yes): nothing happens
    r = hrun_on(h, { PLAYBOOK, "--only", "reset immich", "-p", "reset_immich=true" })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(psql(h, "immich", "SELECT count(*) FROM assets"), "42")
    -- confirmed: dumped, dropped, created empty
    r = hrun_on(h, { PLAYBOOK, "--only", "reset immich", "-p", "reset_immich=true", "--yes" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(psql(h, "immich", "SELECT count(*) FROM pg_tables WHERE tablename = 'assets'"), "0")
    eq(psql(h, "postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'immich'"), "immich")
    local dumps = fs.glob(h.backups .. "/immich-before-reset-*.sql")
    eq(#dumps, 1)
    -- undone: the database back from the dump, the dump removed
    r = hrun_on(h, { "rollback" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(psql(h, "immich", "SELECT count(*) FROM assets"), "42")
    eq(fs.exists(dumps[1]), false)
  end)
end)
