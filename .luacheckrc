-- luacheck configuration: Lua 5.4; the stdlib sets no globals.
std = "lua54"
max_line_length = 120
codes = true

-- hrun's modules are globals in scripts, the REPL and playbooks
local hrun_globals = {
  "fs", "exec", "json", "sys", "btrfs", "hash", "git", "nixos", "http", "service", "podman", "sqlite", "secrets",
}

files["stdlib"] = { read_globals = hrun_globals }
-- playbooks load into an environment of their own: the modules and the DSL
local playbook_globals = {
  "fs", "exec", "json", "sys", "btrfs", "hash", "git", "nixos", "http", "notify", "service", "podman", "sqlite", "pg",
  "checks", "migrate", "journal", "secrets",
  "playbook", "phase", "step", "check", "required", "handler",
}
files["playbooks"] = { read_globals = playbook_globals }
files["tests/playbooks"] = { read_globals = playbook_globals }
files["bench"] = { read_globals = playbook_globals }
-- the corpus of malformed playbooks is malformed on purpose
exclude_files = { "tests/playbooks/bad/*.lua", "tests/fuzz/corpus/**" }
files["tests"] = {
  read_globals = hrun_globals,
  -- the spec runner's helpers, defined as globals for the spec files
  globals = {
    "describe", "it", "eq", "ok", "has", "checkerr", "fails", "after", "tmpdir", "skip", "need",
    "need_root", "HRUN", "hrun_cmd", "hrun_with", "shq", "tree", "playbook_file", "terminal", "free_port",
    "systemd_container", "hrun_chunk", "hrun_on", "FIXTURES", "PG_BIN", "pg_cluster", "podman_sandbox", "nix_host",
    "btrfs_volume", "host_views", "http_server", "sandboxed_playbook", "sandbox_processes",
    "ssh_hosts", "LINK_SWAP",
  },
}
-- the plan-against-run bench runs under the spec runner, for the upgrade's fixtures
files["bench/plan_upgrade.lua"] = { read_globals = hrun_globals, globals = { "describe", "it", "eq", "ok", "hrun_on" } }
