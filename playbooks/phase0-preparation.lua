-- phase0-preparation.lua — Phase 0 of the ZimaOS → NixOS migration: the test machine.
-- Before any service moves, prove on separate hardware that NixOS does what the
-- migration needs, as the plan's success criteria say:
--   * NixOS boots and runs stably: a system generation is current, the machine has been
--     up for `min_uptime` hours, no unit is failed, cgroup v2;
--   * containers: `containers.count` (3) test containers deployed with podman, all
--     running, then removed;
--   * btrfs RAID5 (the array's layout) built on loop devices, its throughput measured
--     (written with fdatasync, read cold) against `btrfs.min_write`/`min_read` MB/s,
--     scrubbed without errors, then taken apart;
--   * the configuration documented in git: committed, and tagged.
--
--   hrun playbooks/phase0-preparation.lua --params playbooks/params/phase0-homelab.lua
--
-- It leaves nothing behind but the tag (the containers and the test array remove
-- themselves); rollback (`hrun rollback`) removes the tag. The plan's rollback for this
-- phase: none needed (an isolated test machine).

local function mbps(bytes, seconds)
  return bytes / 1e6 / math.max(seconds, 1e-6)
end

-- The test array: loop devices over sparse files in dir, btrfs RAID5 (data) and RAID1
-- (metadata) on them, mounted; measured; then taken apart whatever happened. Every
-- command is journaled; none needs undoing afterwards.
local function raid5_test(ctx, t)
  local dir = t.dir
  local devices, mnt, mounted = {}, dir .. "/mnt", false
  local function teardown()
    if mounted then
      exec.run({ "umount", mnt }, { check = false })
    end
    for _, d in ipairs(devices) do
      exec.run({ "losetup", "-d", d }, { check = false })
    end
    exec.run({ "rm", "-rf", dir }, { check = false })
  end
  local ok, err = pcall(function()
    if fs.exists(dir) then
      error(dir .. " exists: an earlier test's? remove it first")
    end
    exec.run({ "mkdir", "-p", mnt })
    for i = 1, t.devices do
      local img = string.format("%s/disk%d.img", dir, i)
      exec.run({ "truncate", "-s", t.size, img })
      local dev = exec.run({ "losetup", "--find", "--show", img }).stdout:gsub("%s+$", "")
      devices[#devices + 1] = dev ~= "" and dev or nil
    end
    if ctx.plan then
      return
    end
    local argv = { "mkfs.btrfs", "-q", "-f", "-d", "raid5", "-m", "raid1" }
    for _, d in ipairs(devices) do
      argv[#argv + 1] = d
    end
    exec.run(argv)
    exec.run({ "mount", devices[1], mnt })
    mounted = true
    local df = exec.run({ "btrfs", "filesystem", "df", mnt }, { readonly = true }).stdout
    if not df:find("Data, RAID5") then
      error("the test array is not RAID5: " .. df)
    end
    local bytes = t.test_mib * 1048576
    local w = exec.run({ "dd", "if=/dev/urandom", "of=" .. mnt .. "/test", "bs=1M", "count=" .. t.test_mib,
      "conv=fdatasync", "status=none" }, { timeout = 600 })
    exec.run({ "sh", "-c", "echo 3 > /proc/sys/vm/drop_caches" })
    local r = exec.run({ "dd", "if=" .. mnt .. "/test", "of=/dev/null", "bs=1M", "status=none" }, { timeout = 600 })
    local scrub = exec.run({ "btrfs", "scrub", "start", "-B", mnt }, { check = false, timeout = 600 })
    local result = { write = mbps(bytes, w.seconds), read = mbps(bytes, r.seconds), scrub = scrub.ok }
    ctx.shared.raid5 = result
    ctx.log("RAID5 on %d loop devices: write %.0f MB/s, read %.0f MB/s, scrub %s", t.devices, result.write,
      result.read, scrub.ok and "without errors" or ("failed: " .. scrub.stdout .. scrub.stderr))
  end)
  teardown()
  if not ok then
    error(err, 0)
  end
end

return playbook {
  name = "phase0-preparation", version = "1.0.0",
  description = "Migration phase 0: the NixOS test machine proves what the migration needs",
  capabilities = { "fs", "nix", "git", "service", "exec" },
  params = {
    config = { flake = "/etc/nixos", profile = "" },
    min_uptime = 24,                       -- hours up without trouble ("runs stably")
    cgroup = "/sys/fs/cgroup",
    containers = { count = 3, engine = "podman", image = "docker.io/library/busybox:stable",
      command = { "sleep", "3600" } },
    btrfs = { devices = 3, size = "2G", test_mib = 512, dir = "/var/tmp/hrun-phase0-raid5",
      min_write = 50, min_read = 100 },    -- MB/s the array must reach (0 = not checked)
    failed_allowed = {},
    tag = "migration/phase0",
  },

  phase "pre-flight" {
    description = "the test machine: NixOS, stable, cgroup v2, its configuration in git",
    check "a NixOS generation is current" (function(ctx)
      local p = ctx.params.config.profile
      local gens = nixos.generations({ profile = p ~= "" and p or nil })
      for _, g in ipairs(gens) do
        if g.current then
          return migrate.found(ctx, true, string.format("generation %d (%s)", g.number, g.version or "?"))
        end
      end
      return false, "no current system generation: is this NixOS?"
    end),
    check "it runs stably" (function(ctx)
      local up = tonumber(fs.read("/proc/uptime"):match("^(%S+)")) / 3600
      return up >= ctx.params.min_uptime, string.format("up %.1f h (at least %g h wanted)", up, ctx.params.min_uptime)
    end),
    check "cgroup v2" (function(ctx) return checks.cgroup_v2(ctx.params.cgroup) end),
    check "no failed units" (function(ctx) return checks.no_failed_units({ except = ctx.params.failed_allowed }) end),
    check "the configuration is in git, committed" (function(ctx)
      return migrate.check_committed(ctx.params.config)
    end),
  },

  phase "containers" {
    step "deploy the test containers" {
      description = "each removed again on undo",
      run = function(ctx)
        local c = ctx.params.containers
        for i = 1, c.count do
          local name = "hrun-phase0-" .. i
          local argv = { c.engine, "run", "-d", "--name", name, c.image }
          for _, a in ipairs(c.command) do
            argv[#argv + 1] = a
          end
          exec.run(argv, { timeout = 300, undo = { c.engine, "rm", "-f", "--ignore", name } })
        end
      end,
    },
  },

  phase "containers, checked" {
    check "they all run" (function(ctx)
      local c, down = ctx.params.containers, {}
      for i = 1, c.count do
        local info = podman.inspect("hrun-phase0-" .. i)
        if not info.running then
          down[#down + 1] = string.format("%s is %s", info.name, info.status)
        end
      end
      return migrate.found(ctx, #down == 0, #down == 0 and string.format("%d containers running", c.count)
        or table.concat(down, "; "))
    end),
    step "remove the test containers" {
      irreversible = true, -- what it removes, the step before made: nothing to give back
      run = function(ctx)
        local c = ctx.params.containers
        for i = 1, c.count do
          exec.run({ c.engine, "rm", "-f", "--ignore", "hrun-phase0-" .. i }, { timeout = 120 })
        end
      end,
    },
  },

  phase "btrfs RAID5" {
    step "build, measure and take apart a test RAID5" {
      description = "on loop devices over sparse files; nothing is left",
      irreversible = true,
      run = function(ctx) raid5_test(ctx, ctx.params.btrfs) end,
    },
  },

  phase "success criteria" {
    check "the performance is acceptable" (function(ctx)
      local r, t = ctx.shared.raid5, ctx.params.btrfs
      if not r then
        return false, "not measured"
      end
      local msg = string.format("write %.0f MB/s (at least %g), read %.0f MB/s (at least %g)", r.write,
        t.min_write, r.read, t.min_read)
      return migrate.found(ctx, r.scrub and r.write >= t.min_write and r.read >= t.min_read,
        r.scrub and msg or (msg .. "; scrub failed"))
    end),
    step "tag the configuration" {
      run = function(ctx)
        local p = ctx.params
        migrate.tag(ctx, p.config.flake, p.tag, "Migration phase 0 done: NixOS, podman and btrfs RAID5 tested")
      end,
    },
  },
}
