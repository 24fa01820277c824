-- End to end: playbooks/phase0-preparation.lua on a sandbox test machine built from real
-- parts — a private nix store with system generations and the flake in git, systemd in
-- nspawn, a real podman (containers from an imported busybox image), loop devices for
-- the test RAID5. It runs for real and leaves nothing but its tag; an array slower than
-- asked fails the phase, rolled back.

local ROOT = exec.run({ "realpath", arg[0]:match("^(.*)/tests/[^/]+$") }, { readonly = true }).stdout:gsub("\n$", "")
local PLAYBOOK = ROOT .. "/playbooks/phase0-preparation.lua"

local function machine()
  need("mkfs.btrfs")
  local h = { work = tmpdir() }
  h.nix, h.env = nix_host(true)
  for k, v in pairs(podman_sandbox()) do
    h.env[k] = v
  end
  for k, v in pairs(systemd_container()) do
    h.env[k] = v
  end
  h.etc = h.nix .. "/etc-nixos"
  h.state = h.work .. "/state"
  h.raid = h.work .. "/raid5"
  function h.params(extra)
    local p = {
      config = { flake = h.etc, profile = h.nix .. "/profiles/system" },
      min_uptime = 0,
      -- this machine may run systemd's hybrid hierarchy: its cgroup v2 part
      cgroup = fs.exists("/sys/fs/cgroup/unified/cgroup.controllers") and "/sys/fs/cgroup/unified" or "/sys/fs/cgroup",
      containers = { count = 3, engine = "podman", image = "localhost/hrun-busybox:test",
        command = { "sleep", "600" } },
      btrfs = { devices = 3, size = "1G", test_mib = 64, dir = h.raid, min_write = 1, min_read = 1 },
    }
    for k, v in pairs(extra or {}) do
      p.btrfs[k] = v
    end
    h.params_file = h.work .. "/params.json"
    fs.write(h.params_file, json.encode(p))
  end
  function h.run(args)
    return hrun_on({ env = h.env, params = h.params_file, state = h.state, work = h.work }, args)
  end
  function h.left()
    local loops = exec.run({ "losetup", "-a" }, { readonly = true }).stdout
    local ps = exec.run({ "podman", "ps", "-a", "--format", "{{.Names}}" }, { env = h.env }).stdout
    return { loops = select(2, loops:gsub(h.raid, "")), containers = ps, dir = fs.exists(h.raid) }
  end
  return host_views(h)
end

describe("phase 0: the test machine", function()
  it("tests podman and a btrfs RAID5, leaves only its tag, and fails when the array is too slow", function()
    local h = machine()
    h.params()
    local r = h.run({ PLAYBOOK })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "generation 2 (24.05")
    has(r.stdout, "3 containers running")
    has(r.stdout, "RAID5 on 3 loop devices: write ")
    has(r.stdout, "scrub without errors")
    has(r.stdout, "check the performance is acceptable: ok")
    eq(h.left(), { loops = 0, containers = "", dir = false })
    eq(h.tags(), "migration/phase0\n")
    r = hrun_on({ env = h.env, state = h.state, work = h.work }, { "rollback" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(h.tags(), "")

    h.params({ min_write = 1e9 })
    r = h.run({ PLAYBOOK })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "check 'the performance is acceptable' failed: write ")
    has(r.stdout, "(at least 1e+09)")
    eq(h.left(), { loops = 0, containers = "", dir = false })
    eq(h.tags(), "")
  end)
end)
