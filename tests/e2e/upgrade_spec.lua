-- End to end: playbooks/nixos-upgrade-24.05-24.11.lua on a sandbox host built from real
-- parts — a private nix store with generations 1–2 of hwc-server's flake (in git, the
-- inputs of the upgrade plan) and a nixos-rebuild stand-in, a PostgreSQL 15 cluster, and
-- systemd in nspawn running units named like the server's. Run for real, rolled back
-- later, and failed on purpose (a build that fails, units that fail to activate).

local host = dofile(arg[0]:match("^(.*)/[^/]+$") .. "/e2e/upgrade_host.lua") -- arg[0]: tests/spec.lua
local PLAYBOOK, server, snapshot = host.PLAYBOOK, host.server, host.snapshot

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
    -- the dump and the flake's copy stay (keep = true): what a person wants afterwards
    has(fs.read(dump), "CREATE DATABASE app")
    ok(fs.exists(h.etc .. ".backup.24.05/flake.nix"))
    has(r.stdout, "kept")
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
    -- kept after the rollback: the dump, and the flake's copy
    ok(fs.exists(h.backups .. "/postgresql-pre-24.11.sql"))
    ok(fs.exists(h.etc .. ".backup.24.05/flake.nix"))
    eq(fs.read(h.nix .. "/activations"), "", "nothing was activated")
    -- a second attempt keeps the first's copy and dump, and makes its own beside them
    r = hrun_on(h, { PLAYBOOK })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "a broken release, as the test asked")
    eq(#fs.glob(h.etc .. ".backup.24.05.*"), 1, "a second copy, stamped")
    eq(#fs.glob(h.backups .. "/postgresql-pre-24.11.*.sql"), 1, "a second dump, stamped")
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
