-- End to end: the release (scripts/release.sh) makes the Debian package and the portable
-- binary with their sums; the package installs with apt-get into a fresh Debian 12 root
-- filesystem (mmdebstrap, run with systemd-nspawn), where hrun runs from /usr — version,
-- help, the demo's plan, the completions and the editor annotations where the shells and
-- editors look — and is removed without a trace.

local SOURCE = arg[0]:match("^(.*)/tests/[^/]+$") -- arg[0]: tests/spec.lua
local DEBIAN = FIXTURES .. "/debian.sh"

local function version()
  return fs.read(SOURCE .. "/CMakeLists.txt"):match("project%(hrun VERSION ([%d.]+)")
end

-- The release, in a directory of the test's
local function release()
  local dist = tmpdir() .. "/dist"
  local r = exec.run({ SOURCE .. "/scripts/release.sh", dist }, { check = false, timeout = 1200 })
  eq(r.code, 0, r.stdout .. r.stderr)
  return dist
end

-- A fresh Debian 12 root with the package copied into its /srv, removed after the test.
local function fresh_debian(deb)
  need_root()
  need("mmdebstrap")
  need("systemd-nspawn")
  local base = (HRUN:find("/") and HRUN:match("^(.*)/[^/]+$") or "/var/tmp") .. "/debian-rootfs"
  exec.run({ DEBIAN, "build", base }, { timeout = 900 })
  local root = tmpdir() .. "/root"
  after(function()
    exec.run({ DEBIAN, "remove", root }, { check = false })
  end)
  exec.run({ DEBIAN, "copy", base, root })
  fs.copy(deb, root .. "/srv/" .. deb:match("[^/]+$"))
  return root
end

local function inside(root, script)
  return exec.run({ DEBIAN, "run", root, "sh", "-c", script }, { check = false, timeout = 600 })
end

describe("the release", function()
  it("makes the .deb and the portable binary with sums; the .deb installs into a fresh Debian 12 with apt-get, " ..
    "runs from /usr, and removes cleanly", function()
    local d = release()
    local v = version()
    local arch = exec.run({ "dpkg", "--print-architecture" }).stdout:gsub("%s", "")
    local deb = d .. "/hrun_" .. v .. "_" .. arch .. ".deb"
    ok(fs.exists(deb), "the package")
    local machine = exec.run({ "uname", "-m" }).stdout:gsub("%s", "")
    ok(fs.exists(d .. "/hrun-portable-" .. v .. "-" .. machine), "the portable binary")
    local r = exec.run({ "sha256sum", "-c", "SHA256SUMS" }, { cwd = d, check = false })
    eq(r.code, 0, r.stdout .. r.stderr)
    -- Depends derived from the binary's libraries, not listed by hand
    local info = exec.run({ "dpkg-deb", "-f", deb, "Depends" }).stdout
    has(info, "liblua5.4-0")
    has(info, "libgit2")
    has(info, "libsqlite3-0")

    local root = fresh_debian(deb)
    local name = deb:match("[^/]+$")
    r = inside(root, "apt-get update -q >/dev/null && apt-get install -y -q /srv/" .. name)
    eq(r.code, 0, r.stdout .. r.stderr)
    r = inside(root, "hrun version")
    eq(r.code, 0, r.stderr)
    has(r.stdout, "hrun " .. version())
    r = inside(root, "hrun help")
    eq(r.code, 0, r.stderr)
    has(r.stdout, "Usage:")
    has(inside(root, "man -w hrun 2>/dev/null || ls /usr/share/man/man1/hrun.1").stdout, "hrun.1")
    -- the demo's plan: its first phase planned from /usr/share/hrun (its nix sandbox is not
    -- there, so a later phase's plan fails: exit 1, not a bad playbook's 3)
    r = inside(root, "cd /srv && hrun plan /usr/share/hrun/playbooks/demo.lua --state /srv/state " ..
      "-p root=/srv/box -p nix=/srv/nix")
    ok(r.code == 0 or r.code == 1, "the plan ran: " .. r.stdout:sub(1, 2000) .. r.stderr)
    has(r.stdout, "plan demo")
    has(r.stdout, "would btrfs.create /srv/box/mnt/photos")
    eq(fs.exists(root .. "/srv/box"), false, "a plan changes nothing")
    -- the completions where bash-completion, zsh and fish look, and the annotations
    r = inside(root, "bash -c '. /usr/share/bash-completion/completions/hrun && complete -p hrun'")
    has(r.stdout, "-F _hrun hrun")
    ok(fs.exists(root .. "/usr/share/zsh/vendor-completions/_hrun"), "zsh's")
    ok(fs.exists(root .. "/usr/share/fish/vendor_completions.d/hrun.fish"), "fish's")
    has(fs.read(root .. "/usr/share/hrun/luals/hrun.lua"), "---@meta hrun")
    ok(fs.exists(root .. "/usr/lib/hrun/hrun-portable"), "the portable build, for hosts without hrun")
    -- removed: nothing of it left
    r = inside(root, "apt-get remove --purge -y -q hrun")
    eq(r.code, 0, r.stdout .. r.stderr)
    for _, path in ipairs({ "/usr/bin/hrun", "/usr/share/hrun", "/usr/lib/hrun", "/usr/share/man/man1/hrun.1",
      "/usr/share/bash-completion/completions/hrun", "/usr/share/doc/hrun" }) do
      eq(fs.exists(root .. path), false, path)
    end
  end)
end)
