-- The demo the README's first command runs (scripts/demo.sh): on a sandbox it makes — a
-- btrfs volume on a loop device, a web service, a private nix store with generations and
-- a flake in git — its upgrade fails on purpose, everything is rolled back to the last
-- byte, and nothing is left behind.

local demo = arg[0]:match("^(.*)/tests/[^/]+$") .. "/playbooks/demo.lua"

-- A sandbox for the demo: its root (not made yet), the nix sandbox and the environment.
local function sandbox()
  need_root()
  need("mkfs.btrfs")
  need("python3")
  local d = tmpdir()
  local nix, env = nix_host(true)
  local h = host_views({ env = env, nix = nix, etc = nix .. "/etc-nixos" })
  h.root, h.state = d .. "/box", d .. "/state"
  function h.run(args)
    local argv = {}
    for _, a in ipairs(args) do
      argv[#argv + 1] = a
    end
    for _, a in ipairs({ "--state", h.state, "-p", "root=" .. h.root, "-p", "nix=" .. nix }) do
      argv[#argv + 1] = a
    end
    return hrun_cmd(argv, { env = env })
  end
  function h.left()
    return { root = fs.exists(h.root), loops = select(2, exec.run({ "losetup", "-a" }).stdout:gsub(h.root, "")),
      server = exec.run({ "pgrep", "-f", "directory " .. h.root }, { check = false }).stdout,
      generation = h.generation(),
      head = exec.run({ "git", "-C", h.etc, "log", "--format=%s", "-1" }).stdout }
  end
  h.nothing = { root = false, loops = 0, server = "", generation = "system-2-link", head = "second generation\n" }
  return h
end

describe("the demo playbook", function()
  it("fails its health check, rolls everything back, proves every byte is back, leaves nothing", function()
    local h = sandbox()
    local r = h.run({ demo })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "a library of 40 photos on btrfs (/dev/loop")
    has(r.stdout, "generation 3 (was 2)")
    has(r.stdout, "photos 2.0 does not answer")
    has(r.stdout, "photos was written: restored from ")
    has(r.stdout, "every byte is back: 42 files match the manifest")
    has(r.stdout, "failed and rolled back")
    eq(h.left(), h.nothing)
  end)

  it("plans without making anything", function()
    local h = sandbox()
    local r = h.run({ "plan", demo })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would exec.run mount -o loop")
    has(r.stdout, "would nixos.rebuild switch")
    has(r.stdout, "nothing was changed")
    has(r.stdout, "capabilities declared: fs, btrfs, hash, nix, git, net, exec")
    ok(not r.stdout:find("NOT DECLARED", 1, true), "the demo declares all it uses:\n" .. r.stdout)
    eq(h.left(), h.nothing)
  end)

  it("succeeds when told to, and hrun rollback then undoes it all", function()
    local h = sandbox()
    local r = h.run({ demo, "-p", "fail=false" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "photos 2.0 answers on :")
    eq(h.generation(), "system-3-link")
    ok(fs.exists(h.root .. "/mnt/photos/2024/IMG 0001.jpg"))
    -- the same upgrade again changes nothing: every write already so, the switch and the
    -- restart not needed
    local again = h.run({ demo, "-p", "fail=false", "--only", "upgrade 1.4 → 2.0" })
    eq(again.code, 0, again.stdout .. again.stderr)
    has(again.stdout, "recap: ok=2 changed=0 skipped=2 failed=0")
    eq(h.generation(), "system-3-link")
    r = hrun_cmd({ "rollback", "--state", h.state }, { env = h.env }) -- the second: nothing to undo
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(h.generation(), "system-3-link")
    r = hrun_cmd({ "rollback", "1", "--state", h.state }, { env = h.env })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "every byte is back")
    eq(h.left(), h.nothing)
  end)
end)
