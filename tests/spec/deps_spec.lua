-- Every program the tests and the benches call is installed, and scripts/install-deps.sh
-- installs it: a fresh Debian 12 machine that runs scripts/test.sh has each one. The
-- programs are collected from the sources (need("X") in tests/**/*.lua, exec.run({"X", …})
-- there, `command -v X` and "needs X (apt-get install …)" in bench/*.sh and
-- tests/fixtures/*) and from the list below; each must have a package in PACKAGES, which
-- install-deps.sh names (or which every Debian 12 system has: Priority required), and
-- which dpkg -S says owns the program here.

local TESTS = FIXTURES:match("^(.*)/fixtures$")
local ROOT = TESTS .. "/.."

-- program → the Debian package that provides it; `owner`: the package dpkg -S names for
-- the file when install-deps.sh names another one (that depends on it)
local PACKAGES = {
  -- coreutils, util-linux, mount, … (Priority: required, on every Debian 12 system)
  sh = "dash", cat = "coreutils", chmod = "coreutils", chown = "coreutils", date = "coreutils",
  dd = "coreutils", echo = "coreutils", ["false"] = "coreutils", id = "coreutils", ln = "coreutils",
  mkfifo = "coreutils", mktemp = "coreutils", pwd = "coreutils", readlink = "coreutils", realpath = "coreutils",
  rm = "coreutils", sha256sum = "coreutils", b2sum = "coreutils", sleep = "coreutils", stat = "coreutils",
  sync = "coreutils", test = "coreutils", touch = "coreutils", tr = "coreutils", ["true"] = "coreutils",
  truncate = "coreutils", wc = "coreutils", ["/usr/bin/true"] = "coreutils", ["/usr/bin/env"] = "coreutils",
  env = "coreutils", printf = "coreutils", bash = "bash",
  diff = "diffutils", hostname = "hostname", mount = "mount", umount = "mount", losetup = "mount",
  runuser = "util-linux", setpriv = "util-linux", unshare = "util-linux", filefrag = "e2fsprogs",
  ldd = "libc-bin", uname = "coreutils", dpkg = "dpkg", ["dpkg-deb"] = "dpkg",
  -- named in scripts/install-deps.sh
  kill = "procps", pgrep = "procps", pkill = "procps",
  xxhsum = "xxhash", git = "git", ["mkfs.btrfs"] = "btrfs-progs", btrfs = "btrfs-progs",
  ["btrfs-map-logical"] = "btrfs-progs",
  nix = "nix-bin", ["nix-env"] = "nix-bin", ["nix-build"] = "nix-bin", ["nix-store"] = "nix-bin",
  ["systemd-nspawn"] = "systemd-container", mmdebstrap = "mmdebstrap", podman = "podman", runc = "runc",
  catatonit = "catatonit",
  [PG_BIN .. "/initdb"] = "postgresql-15", [PG_BIN .. "/pg_ctl"] = "postgresql-15",
  psql = { "postgresql-client-15", owner = "postgresql-client-common" },
  pg_dumpall = { "postgresql-client-15", owner = "postgresql-client-common" },
  tmux = "tmux", python3 = { "python3", owner = "python3-minimal" }, openssl = "openssl", sqlite3 = "sqlite3",
  cmake = "cmake", luacheck = "lua-check", ["clang-format"] = "clang-format", file = "file",
  zsh = "zsh", fish = "fish",
  -- the benches' peers and timers
  hyperfine = "hyperfine", ansible = { "ansible", owner = "ansible-core" },
  ["ansible-playbook"] = { "ansible", owner = "ansible-core" }, rhash = "rhash", hashdeep = "hashdeep",
  b3sum = "b3sum", ["/usr/bin/time"] = "time",
  -- the hosts reached over ssh (tests/fixtures/hosts.sh)
  ssh = "openssh-client", ["ssh-keygen"] = "openssh-client", iptables = "iptables", rsync = "rsync",
  cp = "coreutils", mkdir = "coreutils", findmnt = "util-linux", nsenter = "util-linux", flock = "util-linux",
}

-- what the suite calls beyond what the scan below finds: programs run through a shell,
-- from a fixture script, or by a variable's value
local CALLED = {
  "xxhsum", "sha256sum", "b2sum", "git", "mkfs.btrfs", "btrfs", "losetup", "mount", "umount", "nix", "nix-env",
  "nix-build", "nix-store", "systemd-nspawn", "mmdebstrap", "podman", "runc", "catatonit", PG_BIN .. "/initdb",
  PG_BIN .. "/pg_ctl", "psql", "pg_dumpall", "runuser", "tmux", "python3", "openssl", "sqlite3", "hyperfine",
  "ansible-playbook", "rhash", "hashdeep", "b3sum", "/usr/bin/time", "luacheck", "clang-format", "kill", "pgrep",
  "pkill", "ssh", "ssh-keygen", "iptables", "rsync", "findmnt", "nsenter", "flock",
}

local function read(path)
  return assert(fs.read(path))
end

local function files_under(dir, suffix, out)
  out = out or {}
  for _, name in ipairs(assert(fs.list(dir))) do
    local path = dir .. "/" .. name
    local st = fs.stat(path, { follow = false })
    if st and st.type == "dir" then
      files_under(path, suffix, out)
    elseif st and st.type == "file" and (suffix == nil or path:sub(-#suffix) == suffix) then
      out[#out + 1] = path
    end
  end
  return out
end

-- program → the files that call it (for the messages)
local function collect()
  local found = {}
  local function add(program, where)
    -- a variable, or a program a test makes itself (./hello)
    if program:find("^%$") or program == "" or program:find("^%.%.?/") then
      return
    end
    found[program] = found[program] or {}
    found[program][where] = true
  end
  for _, path in ipairs(files_under(TESTS, ".lua")) do
    if not path:find("/fuzz/corpus/", 1, true) and not path:find("deps_spec.lua", 1, true) then
      local text = read(path)
      for p in text:gmatch('[^%w_]need%(%s*"([^"]+)"%s*%)') do
        add(p, path)
      end
      for p in text:gmatch('exec%.run%(%s*{%s*"([^"]+)"') do
        add(p, path)
      end
    end
  end
  local shells = files_under(ROOT .. "/bench", ".sh")
  for _, path in ipairs(files_under(TESTS .. "/fixtures")) do
    shells[#shells + 1] = path
  end
  for _, path in ipairs(shells) do
    local text = read(path)
    for p in text:gmatch("command %-v ([%w%._/+-]+)") do
      add(p, path)
    end
    for p in text:gmatch("\n%s*need ([%w%._/+-]+)") do
      add(p, path)
    end
    for p in text:gmatch("needs ([%w%._/+-]+) %(apt%-get install") do
      add(p, path)
    end
    -- for t in a b c; do command -v $t …
    for list in text:gmatch("for %w+ in ([^;\n]+);%s*do%s*command %-v %$%w+") do
      for p in list:gmatch("%S+") do
        add(p, path)
      end
    end
  end
  for _, p in ipairs(CALLED) do
    add(p, "tests/spec/deps_spec.lua")
  end
  return found
end

-- the package names install-deps.sh installs (comments left out)
local function installed_by_script()
  local names = {}
  for line in read(ROOT .. "/scripts/install-deps.sh"):gmatch("[^\n]+") do
    line = line:gsub("#.*$", "")
    for w in line:gmatch("[%w][%w%.+-]*") do
      names[w] = true
    end
  end
  return names
end

local function sh(cmd)
  return exec.run({ "sh", "-c", cmd }, { check = false, readonly = true })
end

-- the packages dpkg -S says own the program's file (usrmerge: /bin and /usr/bin alike)
local function owners(program)
  local candidates = {}
  if program:find("/", 1, true) then
    candidates[1] = program
    candidates[2] = program:gsub("^/usr/", "/")
  else
    for _, d in ipairs({ "/usr/bin", "/usr/sbin", "/bin", "/sbin" }) do
      candidates[#candidates + 1] = d .. "/" .. program
    end
  end
  -- a link through /etc/alternatives (iptables → xtables-nft-multi): its target's package
  local real = sh("readlink -f \"$(command -v " .. shq(program) .. ")\"").stdout:gsub("\n$", "")
  if real ~= "" then
    candidates[#candidates + 1] = real
  end
  local quoted = {}
  for i, c in ipairs(candidates) do
    quoted[i] = shq(c)
  end
  local out = sh("dpkg -S " .. table.concat(quoted, " ") .. " 2>/dev/null").stdout
  local set = {}
  for line in out:gmatch("[^\n]+") do
    local pkgs = line:match("^(.-): /")
    if pkgs and not line:find("^diversion") then
      for p in pkgs:gmatch("[^,%s]+") do
        set[(p:gsub(":.*$", ""))] = true -- clang-format:amd64
      end
    end
  end
  return set
end

local function sorted_keys(t)
  local l = {}
  for k in pairs(t) do
    l[#l + 1] = k
  end
  table.sort(l)
  return l
end

local function priority(pkg)
  local r = sh("dpkg-query -W -f='${Priority}' " .. shq(pkg) .. " 2>/dev/null")
  return r.ok and r.stdout or nil
end

local found = collect()
local script = installed_by_script()
local programs = {}
for p in pairs(found) do
  programs[#programs + 1] = p
end
table.sort(programs)

local function callers(p)
  local list = {}
  for _, f in ipairs(sorted_keys(found[p])) do
    list[#list + 1] = (f:gsub("^" .. ROOT:gsub("%p", "%%%0") .. "/", ""))
  end
  return table.concat(list, ", ")
end

describe("every program the tests and benches call", function()
  it("is found in the sources (the scan sees need, exec.run, command -v)", function()
    for _, p in ipairs({ "xxhsum", "git", "mkfs.btrfs", "tmux", "hyperfine", "ansible-playbook", "rhash",
      "/usr/bin/time" }) do
      ok(found[p], p .. " was not collected")
    end
  end)

  for _, p in ipairs(programs) do
    it(p, function()
      local entry = PACKAGES[p]
      local pkg = type(entry) == "table" and entry[1] or entry
      local owner = type(entry) == "table" and entry.owner or pkg
      ok(pkg, string.format("%s (called by %s) has no Debian package in tests/spec/deps_spec.lua's PACKAGES: " ..
        "add it there and to scripts/install-deps.sh", p, callers(p)))
      local base = priority(pkg) == "required"
      if not script[pkg] and not base then
        error(string.format("scripts/install-deps.sh does not install %s, which provides %s (called by %s)",
          pkg, p, callers(p)), 0)
      end
      if not sh("command -v " .. shq(p)).ok then
        error(string.format("%s is not installed (called by %s): scripts/install-deps.sh installs it " ..
          "(package %s)", p, callers(p), pkg), 0)
      end
      local own = owners(p)
      ok(own[owner], string.format("dpkg -S says %s comes from %s, not %s", p,
        next(own) and table.concat(sorted_keys(own), ", ") or "no package", owner))
    end)
  end
end)
