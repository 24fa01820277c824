-- Parameters of phase0-preparation.lua for the plan's test server (an older i5, 16 GB,
-- a 500 GB SSD): copy, edit, then
--   hrun playbooks/phase0-preparation.lua --params my-phase0.lua
return {
  config = { flake = "/etc/nixos", profile = "" },
  min_uptime = 48,                         -- the plan: monitor 48 hours before the next phase
  cgroup = "/sys/fs/cgroup",
  containers = { count = 3, engine = "podman", image = "docker.io/library/busybox:stable",
    command = { "sleep", "3600" } },
  -- a RAID5 of three 4 GiB loop devices on the SSD; the array's disks will be faster
  btrfs = { devices = 3, size = "4G", test_mib = 1024, dir = "/var/tmp/hrun-phase0-raid5",
    min_write = 100, min_read = 200 },
  failed_allowed = {},
  tag = "migration/phase0",
}
