-- The spec runner, run by hrun itself: hrun tests/spec.lua FILE_spec.lua...
--
-- A spec file calls describe(name, fn) and it(name, fn); inside, the helpers below.
-- After each test the runner checks the invariants every test must keep: no child
-- process left behind, temporary directories removed. It prints one line a test and
-- closes with "N passed, N failed, N skipped". Exit status: 0 all passed, 1 something
-- failed, 77 everything was skipped (CTest's skip). With HRUN_NO_SKIP=1 (CI) a skip
-- is a failure: nothing may be skipped there.

local files = { ... }
local no_skip = (sys.env("HRUN_NO_SKIP") or "") ~= ""
local color = sys.env("NO_COLOR") == nil and exec.run({ "test", "-t", "1" }, { check = false, readonly = true }).ok

local results = { passed = 0, failed = 0, skipped = 0 }
local cleanups = {}
local prefix = {}

local SKIP = setmetatable({}, { __tostring = function() return "skip" end })

local function paint(code, s)
  return color and ("\27[" .. code .. "m" .. s .. "\27[0m") or s
end

-- {======================================================
-- Helpers for specs (globals: specs are plain scripts)
-- ======================================================

local function show(v)
  return require("hrun.pretty").format(v, { width = 100 })
end

local function deep_eq(a, b, seen)
  if a == b then
    return true
  end
  if type(a) ~= "table" or type(b) ~= "table" then
    return false
  end
  seen = seen or {}
  if seen[a] == b then
    return true
  end
  seen[a] = b
  for k, v in pairs(a) do
    if not deep_eq(v, b[k], seen) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

-- eq(actual, expected [, what]): deep equality
function eq(actual, expected, what)
  if not deep_eq(actual, expected) then
    error(string.format("%sexpected %s, got %s", what and what .. ": " or "", show(expected), show(actual)), 2)
  end
end

-- ok(value [, what]): a true value
function ok(value, what)
  if not value then
    error((what or "expected a true value") .. ", got " .. show(value), 2)
  end
  return value
end

-- has(s, part [, what]): s contains part (plain text)
function has(s, part, what)
  if type(s) ~= "string" or not s:find(part, 1, true) then
    error(string.format("%sexpected %s to contain %s", what and what .. ": " or "", show(s), show(part)), 2)
  end
end

-- checkerr(part, fn, ...): fn(...) raises an error whose message contains part
function checkerr(part, fn, ...)
  local good, err = pcall(fn, ...)
  if good then
    error("expected an error containing " .. show(part) .. ", but it succeeded", 2)
  end
  if type(err) ~= "string" or not err:find(part, 1, true) then
    error("expected an error containing " .. show(part) .. ", got " .. show(err), 2)
  end
  return err
end

-- fails(code, part, fn, ...): fn(...) returns nil, a message containing part, and code
function fails(code, part, fn, ...)
  local r, msg, c = fn(...)
  if r ~= nil then
    error("expected nil, " .. show(part) .. ", " .. show(code) .. "; got " .. show(r), 2)
  end
  if type(msg) ~= "string" or not msg:find(part, 1, true) then
    error("expected a message containing " .. show(part) .. ", got " .. show(msg), 2)
  end
  if c ~= code then
    error("expected the code " .. show(code) .. ", got " .. show(c) .. " (" .. msg .. ")", 2)
  end
  return msg
end

-- after(fn): runs fn when the current test ends, pass or fail (newest first)
function after(fn)
  cleanups[#cleanups + 1] = fn
end

-- tmpdir() → a new directory, removed (with everything in it) when the test ends
function tmpdir()
  local dir = exec.run({ "mktemp", "-d", "/tmp/hrun-spec-XXXXXX" }).stdout:gsub("\n$", "")
  after(function()
    exec.run({ "chmod", "-R", "u+rwx", dir }, { check = false })
    fs.remove(dir, { recursive = true })
  end)
  return dir
end

-- skip(reason): ends the test as skipped (a failure under HRUN_NO_SKIP)
function skip(reason)
  error(setmetatable({ reason = reason }, SKIP), 0)
end

-- need(program): fails unless program is on PATH (or, given as a path, executable).
-- Never a skip: every program the tests call is installed by scripts/install-deps.sh,
-- and tests/spec/deps_spec.lua checks that it names a package for each.
function need(program)
  if not exec.run({ "sh", "-c", "command -v " .. shq(program) }, { check = false, readonly = true }).ok then
    error(string.format("%s is not installed: scripts/install-deps.sh installs it (the tests need it; " ..
      "tests/spec/deps_spec.lua names its Debian package)", program), 2)
  end
end

-- need_root(): skip unless root
function need_root()
  if not sys.is_root() then
    skip("needs root")
  end
end

-- HRUN: the hrun binary under test; hrun_cmd(args [, opts]) runs it (check = false)
HRUN = sys.env("HRUN_BIN") or "hrun"
-- FIXTURES: tests/fixtures; PG_BIN: PostgreSQL 15's programs
FIXTURES = arg[0]:match("^(.*)/[^/]+$") .. "/fixtures"
PG_BIN = "/usr/lib/postgresql/15/bin"
function hrun_cmd(args, opts)
  local argv = { HRUN }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  opts = opts or {}
  if opts.check == nil then
    opts.check = false
  end
  return exec.run(argv, opts)
end

-- hrun_with(env, args [, opts]) → hrun_cmd with env in its environment (a timeout of 240 s
-- unless opts.timeout)
function hrun_with(env, args, opts)
  opts = opts or {}
  opts.env = env
  opts.timeout = opts.timeout or 240
  return hrun_cmd(args, opts)
end

-- tree(dir) → {relative path = "type mode content-or-target"}: a snapshot of a tree
-- to compare before and after (what a plan or a rollback must leave as it was)
function tree(dir)
  local out = {}
  local function walk(rel)
    local path = rel == "" and dir or dir .. "/" .. rel
    local st = assert(fs.stat(path, { follow = false }))
    local desc = st.type .. " " .. string.format("%o", st.mode)
    if st.type == "file" then
      local data = assert(fs.read(path))
      -- short contents as they are; long ones as their size and a checksum (FNV-1a)
      if #data <= 64 then
        desc = desc .. " " .. data
      else
        local h = 2166136261
        for i = 1, #data do
          h = ((h ~ data:byte(i)) * 16777619) & 0xffffffff
        end
        desc = desc .. string.format(" <%d bytes, fnv %08x>", #data, h)
      end
    elseif st.type == "link" then
      desc = desc .. " -> " .. st.target
    end
    out[rel == "" and "." or rel] = desc
    if st.type == "dir" then
      for _, name in ipairs(assert(fs.list(path))) do
        walk(rel == "" and name or rel .. "/" .. name)
      end
    end
  end
  walk("")
  return out
end

-- playbook(dir, name, source) → the path of a playbook file written there
function playbook_file(dir, name, source)
  local path = dir .. "/" .. name
  fs.write(path, source)
  return path
end

-- sandboxed_playbook(dir, o) → the path of a playbook file in dir that declares o.caps
-- (a list of capabilities) and has one phase "p" made of o.steps (source): o.name (the
-- playbook's, "sandboxed"), o.params (source of its params' fields), o.top (source of a
-- first line before it; absent: none), o.file ("pb.lua").
-- The body of a sandboxed step attacking its own rollback: it writes victim1 (made) and
-- victim2 (written over) in A/x/L, then puts in x's place a copy of A/data, whose L is a
-- link out (kept: the rollback leaves it), and fails. The inverses of the writes in x/L
-- would now remove and write through the link. A, the area, is defined before it.
LINK_SWAP = [[
    fs.mkdir(A .. "/x/L", { parents = true })
    fs.write(A .. "/x/L/victim1", "mine\n")
    fs.write(A .. "/x/L/victim2", "PAYLOAD\n", { keep = true })
    fs.write(A .. "/x/L/victim2", "whatever\n")
    fs.remove(A .. "/x", { recursive = true, keep = true })
    fs.copy(A .. "/data", A .. "/x", { recursive = true, keep = true })
    error("boom")
]]

function sandboxed_playbook(dir, o)
  local caps = {}
  for _, c in ipairs(o.caps or {}) do
    caps[#caps + 1] = string.format("%q", c)
  end
  return playbook_file(dir, o.file or "pb.lua", string.format([[
%sreturn playbook {
  name = %q, params = { %s },
  capabilities = { %s },
  phase "p" {
%s
  },
}]], o.top and (o.top .. "\n") or "", o.name or "sandboxed", o.params or "", table.concat(caps, ", "), o.steps))
end

-- sandbox_processes([pid]) → the pids of the sandboxed playbooks' processes (hrun
-- __sandbox STDLIB PID) that still run: those of the engine pid, or all.
function sandbox_processes(pid)
  local found = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:match("^%d+$") then
      local cmd = fs.read("/proc/" .. name .. "/cmdline")
      if cmd and cmd:find("__sandbox", 1, true) and (pid == nil or cmd:match("\0" .. pid .. "\0?$")) then
        found[#found + 1] = name
      end
    end
  end
  return found
end

-- http_server([args, scheme]) → the base URL of tests/fixtures/httpd.py started with
-- args (and its directory); stopped when the test ends.
function http_server(args, scheme)
  need("python3")
  local d = tmpdir()
  local out = d .. "/port"
  local argv = { "python3", FIXTURES .. "/httpd.py" }
  for _, a in ipairs(args or {}) do
    argv[#argv + 1] = a
  end
  local cmd = {}
  for _, a in ipairs(argv) do
    cmd[#cmd + 1] = "'" .. a:gsub("'", "'\\''") .. "'"
  end
  -- in the background, its pid kept to stop it
  exec.sh(table.concat(cmd, " ") .. " > " .. out .. " 2>" .. d .. "/err & echo $! > " .. d .. "/pid")
  after(function()
    local pid = fs.read(d .. "/pid")
    if pid then
      exec.run({ "kill", (pid:gsub("%s", "")) }, { check = false })
    end
  end)
  for _ = 1, 100 do
    local port = fs.read(out)
    if port and port:find("\n") then
      return string.format("%s://127.0.0.1:%s", scheme or "http", port:gsub("%s", "")), d
    end
    sys.sleep(0.05)
  end
  error("the fixture server did not start: " .. tostring(fs.read(d .. "/err")))
end

-- n consecutive ports on 127.0.0.1 that nothing listens on now, below the ephemeral range
local function free_ports(n)
  local out = exec.run({ "python3", "-c", [[
import random, socket, sys
n = int(sys.argv[1])
for _ in range(500):
    base, held = random.randint(20000, 32000 - n), []
    try:
        for p in range(base, base + n):
            s = socket.socket(); held.append(s); s.bind(("127.0.0.1", p))
        print(base); break
    except OSError:
        pass
    finally:
        for s in held: s.close()
]], tostring(n) }).stdout
  return assert(tonumber(out), "no " .. n .. " free consecutive ports")
end

-- A port on 127.0.0.1 that nothing listens on now, below the ephemeral range: a server
-- stopped and started again by a test (a service moved and rolled back) must find it
-- free, which an ephemeral port is not once some connection of a test beside it takes it.
function free_port()
  return tostring(free_ports(1))
end

-- systemd_container([units]) → the environment that points hrun at a real systemd (PID 1
-- of a systemd-nspawn container, tests/fixtures/container.sh; its root file system built
-- once beside the hrun under test), and its web unit's health URL; powered off when the
-- test ends. units: {["name.service"] = "unit file text"}, runtime units of this boot
-- (started with it when WantedBy=multi-user.target); binds: host paths mounted at the
-- same place inside.
function systemd_container(units, binds)
  need_root()
  need("systemd-nspawn")
  need("mmdebstrap")
  local rootfs = (HRUN:find("/") and HRUN:match("^(.*)/[^/]+$") or "/var/tmp") .. "/nspawn-rootfs"
  local port = free_port()
  exec.run({ FIXTURES .. "/container.sh", "build", rootfs }, { env = { HRUN_CT_PORT = port }, timeout = 600 })
  local dir = tmpdir()
  local run = dir .. "/run"
  local argv = { FIXTURES .. "/container.sh", "boot", rootfs, run }
  if units then
    fs.mkdir(dir .. "/units")
    for name, text in pairs(units) do
      fs.write(dir .. "/units/" .. name, text)
    end
    argv[#argv + 1] = dir .. "/units"
    for _, b in ipairs(binds or {}) do
      argv[#argv + 1] = b
    end
  end
  local ns = exec.run(argv, { timeout = 60 }).stdout:match("^(%d+)")
  after(function()
    exec.run({ FIXTURES .. "/container.sh", "poweroff", ns, run }, { check = false, timeout = 30 })
  end)
  return { DBUS_SYSTEM_BUS_ADDRESS = "unix:path=" .. run .. "/dbus/system_bus_socket" },
    "http://127.0.0.1:" .. port .. "/health"
end

-- ssh_hosts(n [, opts]) → n real hosts reached over real OpenSSH (tests/fixtures/hosts.sh):
-- systemd-nspawn containers, each booted from its own overlay of one Debian rootfs (built
-- once beside the hrun under test) with its own systemd, host keys and sshd on
-- 127.0.0.1:port; torn down (containers, mounts, cgroups, firewall rules) when the test
-- ends. A list of hosts, each {name = "host1", port, url = "ssh://root@127.0.0.1:PORT",
-- root = its / as seen from here} with h:sh(cmd) → stdout, exit code, stderr (over ssh,
-- as the fixture: it always knows the host's current keys), h:cut() / h:restore() (a
-- network cut of its port, both ways), h:rekey() (new host keys, sshd restarted) and
-- h:install_hrun([bin [, stdlib]]) (a dynamic hrun build, as a package would install it).
-- The list has ssh_config (for ssh -F: an alias per host, `Host host1` → 127.0.0.1:PORT
-- as root; the test key, known_hosts, BatchMode, StrictHostKeyChecking yes), known_hosts
-- (each host's keys as booted; empty with opts.trust == false), key (the private key),
-- dir. opts.port0: host I listens on port0 + I - 1 (else free ports are picked).
-- opts.pools: each host has its own btrfs at /srv/pool (a loop image).
local Host = {}
Host.__index = Host

local function hosts_sh(...)
  return exec.run({ FIXTURES .. "/hosts.sh", ... }, { timeout = 120 })
end

function Host:sh(cmd)
  local r = exec.run({ "ssh", "-F", self.dir .. "/fixture/ssh_config", self.name, cmd },
    { check = false, timeout = 120 })
  return r.stdout, r.code, r.stderr
end

function Host:cut()
  hosts_sh("cut", self.dir, tostring(self.index))
end

function Host:restore()
  hosts_sh("restore", self.dir, tostring(self.index))
end

function Host:rekey()
  hosts_sh("rekey", self.dir, tostring(self.index))
end

-- the binary at /usr/local/bin/hrun, the Lua library at /usr/local/share/hrun/lua (where
-- hrun looks: <its directory>/../share/hrun/lua)
function Host:install_hrun(bin, stdlib)
  bin = bin or (HRUN:find("/") and HRUN or exec.run({ "sh", "-c", "command -v hrun" }).stdout:gsub("\n$", ""))
  stdlib = stdlib or FIXTURES .. "/../../stdlib"
  local lua = self.root .. "/usr/local/share/hrun/lua"
  exec.run({ "mkdir", "-p", self.root .. "/usr/local/bin", lua })
  exec.run({ "cp", bin, self.root .. "/usr/local/bin/hrun" })
  exec.run({ "rsync", "-a", "--delete", stdlib .. "/", lua .. "/" })
  -- the libraries its root lacks (a sanitizer build's libasan, libubsan), as a package's
  -- dependencies would bring them
  for lib in exec.run({ "ldd", bin }).stdout:gmatch("=> (/%S+)") do
    if not fs.exists(self.root .. lib) then
      exec.run({ "cp", "-L", lib, self.root .. lib })
    end
  end
end

function ssh_hosts(n, opts)
  opts = opts or {}
  need_root()
  need("systemd-nspawn")
  need("mmdebstrap")
  need("ssh")
  need("ssh-keygen")
  need("iptables")
  local ipt = exec.run({ "iptables", "-S", "INPUT" }, { check = false, readonly = true })
  if not ipt.ok then
    skip("iptables does not work here (network cuts): " .. ipt.stderr:gsub("%s+$", ""))
  end
  local rootfs = (HRUN:find("/") and HRUN:match("^(.*)/[^/]+$") or "/var/tmp") .. "/hosts-rootfs"
  exec.run({ FIXTURES .. "/hosts.sh", "build", rootfs }, { timeout = 900 })
  local dir = tmpdir() .. "/hosts"
  local port0 = opts.port0 or free_ports(n)
  -- registered before up: an up that fails half way is torn down too
  after(function()
    hosts_sh("down", dir)
  end)
  exec.run({ FIXTURES .. "/hosts.sh", "up", dir, tostring(n), tostring(port0), rootfs },
    { timeout = 300, env = opts.pools and { HOSTS_POOLS = "1" } or nil })
  local hosts = { ssh_config = dir .. "/ssh_config", known_hosts = dir .. "/known_hosts", key = dir .. "/id",
    dir = dir }
  if opts.trust == false then
    assert(fs.write(hosts.known_hosts, ""))
  end
  for i = 1, n do
    local port = port0 + i - 1
    hosts[i] = setmetatable({ name = "host" .. i, index = i, port = port, url = "ssh://root@127.0.0.1:" .. port,
      root = dir .. "/h" .. i .. "/root", dir = dir }, Host)
  end
  return hosts
end

-- podman_sandbox() → the environment for podman and hrun: a private podman (its storage
-- and configuration in the test's directory, tests/fixtures/podman-sandbox.sh) with the
-- image localhost/hrun-busybox:test; every container and what podman made removed when
-- the test ends.
function podman_sandbox()
  need_root()
  need("podman")
  local dir = tmpdir() .. "/podman"
  after(function()
    exec.run({ FIXTURES .. "/podman-sandbox.sh", "teardown", dir }, { check = false, timeout = 60 })
  end)
  local out = exec.run({ FIXTURES .. "/podman-sandbox.sh", "setup", dir }, { timeout = 120 }).stdout
  local env = {}
  for k, v in out:gmatch("([%w_]+)=([^\n]*)") do
    env[k] = v
  end
  return env
end

-- pg_cluster() → the libpq environment, the directory and a function running argv as the
-- postgres user: a real PostgreSQL 15 cluster (initdb in the test's own directory, a unix
-- socket only, a port of its own) with a database "app" (a table of 1000 rows) and a role
-- "immich"; stopped and removed when the test ends.
function pg_cluster()
  need_root()
  if not fs.exists(PG_BIN .. "/initdb") then
    skip("PostgreSQL 15 is not installed")
  end
  -- short: the socket path must stay under 108 bytes
  local d = exec.run({ "mktemp", "-d", "/tmp/pg-XXXXXX" }).stdout:gsub("\n$", "")
  exec.run({ "chown", "postgres:postgres", d })
  local data = d .. "/data"
  local port = free_port()
  local function as_pg(argv)
    local a = { "runuser", "-u", "postgres", "--" }
    for _, x in ipairs(argv) do
      a[#a + 1] = x
    end
    return exec.run(a, { timeout = 60 })
  end
  after(function()
    if fs.exists(data .. "/postmaster.pid") then
      exec.run({ "runuser", "-u", "postgres", "--", PG_BIN .. "/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop" },
        { check = false, timeout = 30 })
    end
    exec.run({ "rm", "-rf", d }, { check = false })
  end)
  as_pg({ PG_BIN .. "/initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8",
    "--no-sync" })
  as_pg({ PG_BIN .. "/pg_ctl", "-D", data, "-l", d .. "/server.log", "-w", "-o",
    "-k " .. d .. " -p " .. port .. " -c listen_addresses='' -c fsync=off", "start" })
  local env = { PGHOST = d, PGPORT = port, PGUSER = "postgres" }
  exec.run({ "psql", "-X", "-q", "-c", "CREATE DATABASE app", "-c", "CREATE ROLE immich LOGIN" }, { env = env })
  exec.run({ "psql", "-X", "-q", "-d", "app", "-c", "CREATE TABLE t (id int PRIMARY KEY, v text)",
    "-c", "INSERT INTO t SELECT g, 'row' || g FROM generate_series(1, 1000) g" }, { env = env })
  return env, d, function(argv)
    return as_pg(argv)
  end
end

-- nix_host([seed]) → the sandbox directory and the environment for hrun: a NixOS-like
-- host in a private nix store (tests/fixtures/nix-sandbox.sh): generations 1 and 2,
-- /etc/nixos as a git repository, package-set releases 24.05 and 24.11 (and a broken
-- one); seed: the flake of the upgrade plan (nixpkgs-stable, … host hwc-server).
function nix_host(seed)
  need("nix")
  need("nix-env")
  local dir = tmpdir() .. "/nix"
  local out = exec.run({ FIXTURES .. "/nix-sandbox.sh", dir, seed and "seed" or nil }).stdout
  local env = {}
  for k, v in out:gmatch("([%w_]+)=([^\n]*)") do
    env[k] = v
  end
  return dir, env
end

-- btrfs_volume(devices [, dup]) → the mount point, the loop devices, the directory: a
-- btrfs on `devices` sparse images over loop devices (data RAID5 and metadata RAID1 on
-- three; `dup`: two copies of everything on one); unmounted and detached when the test
-- ends.
function btrfs_volume(devices, dup)
  need_root()
  need("mkfs.btrfs")
  need("losetup")
  local dir = tmpdir()
  local loops = {}
  after(function()
    exec.run({ "umount", dir .. "/mnt" }, { check = false })
    for _, l in ipairs(loops) do
      exec.run({ "losetup", "-d", l }, { check = false })
    end
    exec.run({ "btrfs", "device", "scan", "--forget" }, { check = false })
  end)
  for i = 1, devices do
    local img = dir .. "/disk" .. i .. ".img"
    exec.run({ "truncate", "-s", devices == 1 and "300M" or "512M", img })
    loops[i] = exec.run({ "losetup", "--find", "--show", img }).stdout:gsub("%s+$", "")
  end
  local mkfs = { "mkfs.btrfs", "-f", "-q" }
  if dup then
    for _, a in ipairs({ "-d", "dup", "-m", "dup" }) do
      mkfs[#mkfs + 1] = a
    end
  elseif devices > 1 then
    for _, a in ipairs({ "-d", "raid5", "-m", "raid1" }) do
      mkfs[#mkfs + 1] = a
    end
  end
  for _, l in ipairs(loops) do
    mkfs[#mkfs + 1] = l
  end
  exec.run(mkfs)
  fs.mkdir(dir .. "/mnt")
  local devopts = {}
  for _, l in ipairs(loops) do
    devopts[#devopts + 1] = "device=" .. l
  end
  exec.run({ "mount", "-t", "btrfs", "-o", table.concat(devopts, ","), loops[1], dir .. "/mnt" })
  return dir .. "/mnt", loops, dir
end

-- hrun_on(h, args [, extra_env]) → hrun's result, run on a sandbox host h = {env, params,
-- state, work}: with h.env (and extra_env) in the environment, in h.work, with
-- `--params h.params` (for the commands that take them) and `--state h.state`.
function hrun_on(h, args, extra_env)
  local env = {}
  for k, v in pairs(h.env) do
    env[k] = v
  end
  for k, v in pairs(extra_env or {}) do
    env[k] = v
  end
  local argv = {}
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  if args[1] ~= "rollback" and args[1] ~= "show" then
    argv[#argv + 1] = "--params"
    argv[#argv + 1] = h.params
  end
  argv[#argv + 1] = "--state"
  argv[#argv + 1] = h.state
  return hrun_cmd(argv, { env = env, cwd = h.work, timeout = 300 })
end

-- host_views(h) → h, given ways to look at a sandbox host {env, nix, etc}: h.active(unit)
-- (its ActiveState), h.generation() (what the system profile links to), h.tags() (the
-- flake repository's tags, a line each).
function host_views(h)
  function h.active(u)
    return hrun_chunk(h.env, string.format("print(service.status(%q).active)", u)):gsub("\n$", "")
  end
  function h.generation()
    return exec.run({ "readlink", h.nix .. "/profiles/system" }, { readonly = true }).stdout:gsub("\n$", "")
  end
  function h.tags()
    return exec.run({ "git", "-C", h.etc, "tag" }, { readonly = true }).stdout
  end
  return h
end

-- hrun_chunk(env, code) → what hrun -e CODE printed, run with env added (it must exit 0)
function hrun_chunk(env, code)
  local r = hrun_cmd({ "-e", code }, { env = env })
  eq(r.code, 0, r.stderr)
  return r.stdout
end

-- {======================================================
-- terminal(command, ready): a real terminal (tmux) running command; t:type(text, keys…)
-- types, t:wait(text) waits for the screen to show text, t:line(text, expect) types a
-- line and waits; closed when the test ends.
-- ======================================================

local Term = {}
Term.__index = Term

function terminal(command, ready)
  need("tmux")
  local t = setmetatable({ socket = "hrun-spec-" .. math.random(1, 1e9), command = command, ready = ready }, Term)
  after(function()
    t:tmux("kill-server")
  end)
  t:start()
  return t
end

function Term:tmux(...)
  return exec.run({ "tmux", "-L", self.socket, ... }, { check = false })
end

function Term:start()
  local r = self:tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "50", self.command)
  assert(r.ok, r.stderr)
  if self.ready then
    self:wait(self.ready)
  end
end

function Term:screen()
  return self:tmux("capture-pane", "-p", "-t", "t", "-S", "-200").stdout
end

-- Waits (up to 5 s) until the screen contains text; returns the screen.
function Term:wait(text)
  local deadline = sys.clock() + 5
  repeat
    local s = self:screen()
    if s:find(text, 1, true) then
      return s
    end
    sys.sleep(0.05)
  until sys.clock() > deadline
  error(string.format("the screen never showed %q; it shows:\n%s", text, self:screen()), 2)
end

-- Types text literally (no key names), then the given keys.
function Term:type(text, ...)
  if text ~= "" then
    self:tmux("send-keys", "-t", "t", "-l", text)
  end
  if select("#", ...) > 0 then
    self:tmux("send-keys", "-t", "t", ...)
  end
end

-- Types a line and waits for the text its result shows.
function Term:line(text, expect)
  self:type(text, "Enter")
  return self:wait(expect)
end

-- Is the program still running?
function Term:alive()
  return self:tmux("has-session", "-t", "t").ok
end

-- }======================================================

-- shq(s): s quoted for sh
function shq(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- }======================================================

-- {======================================================
-- Invariants checked after every test
-- ======================================================

local self_pid = fs.stat("/proc/self", { follow = false }).target

local function children()
  local list = fs.read("/proc/" .. self_pid .. "/task/" .. self_pid .. "/children") or ""
  return list:gsub("%s+$", "")
end

local function check_invariants()
  local left = children()
  if left ~= "" then
    return "child processes left behind: " .. left
  end
end

-- }======================================================

function describe(name, fn)
  prefix[#prefix + 1] = name
  fn()
  prefix[#prefix] = nil
end

function it(name, fn)
  local title = table.concat(prefix, " › ") .. (#prefix > 0 and " › " or "") .. name
  cleanups = {}
  local good, err = xpcall(fn, function(e)
    if getmetatable(e) == SKIP then
      return e
    end
    -- the message, and of the traceback only the frames in spec files
    local tb = debug.traceback(tostring(e), 2)
    local at = tb:find("\nstack traceback:", 1, true) or #tb
    local lines = { tb:sub(1, at - 1) }
    for line in tb:sub(at + 1):gmatch("[^\n]+") do
      if line:find("_spec.lua", 1, true) then
        lines[#lines + 1] = line
      end
    end
    return table.concat(lines, "\n")
  end)
  for i = #cleanups, 1, -1 do
    local cgood, cerr = pcall(cleanups[i])
    if not cgood and good then
      good, err = false, "cleanup failed: " .. tostring(cerr)
    end
  end
  if good then
    local broken = check_invariants()
    if broken then
      good, err = false, broken
    end
  end
  if good then
    results.passed = results.passed + 1
    print(paint("32", "ok") .. "   " .. title)
  elseif getmetatable(err) == SKIP and not no_skip then
    results.skipped = results.skipped + 1
    print(paint("33", "skip") .. " " .. title .. " (" .. err.reason .. ")")
  else
    if getmetatable(err) == SKIP then
      err = "skipped, and HRUN_NO_SKIP forbids skips: " .. err.reason
    end
    results.failed = results.failed + 1
    print(paint("31", "FAIL") .. " " .. title)
    print("     " .. tostring(err):gsub("\n", "\n     "))
  end
  io.stdout:flush()
end

for _, file in ipairs(files) do
  local chunk, err = loadfile(file, "t")
  if not chunk then
    print(paint("31", "FAIL") .. " " .. file .. ": " .. err)
    results.failed = results.failed + 1
  else
    local good, lerr = pcall(chunk)
    if not good then
      print(paint("31", "FAIL") .. " " .. file .. ": " .. tostring(lerr))
      results.failed = results.failed + 1
    end
  end
end

print(string.format("%d passed, %d failed, %d skipped", results.passed, results.failed, results.skipped))
-- close the state on exit, so its finalizers (the coverage record) run
if results.failed > 0 then
  os.exit(1, true)
elseif results.passed == 0 and results.skipped > 0 then
  os.exit(77, true)
end
