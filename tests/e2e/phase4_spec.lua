-- End to end: playbooks/phase4-infrastructure-storage.lua on a sandbox built from real
-- parts — a three-device btrfs RAID5 (loop devices) with subvolumes like the server's,
-- systemd in nspawn with units named like its services (the array bound inside, so a
-- service can write to it), a PostgreSQL 15 cluster, a private nix store with the
-- server's flake in git. Both stages run for real; then a checksum that does not match,
-- a unit that fails and a build that fails, each proven rolled back.

local ROOT = exec.run({ "realpath", arg[0]:match("^(.*)/tests/[^/]+$") }, { readonly = true }).stdout:gsub("\n$", "")
local PLAYBOOK = ROOT .. "/playbooks/phase4-infrastructure-storage.lua"
local SUBVOLUMES = { "data", "media", "photos", "nextcloud", "appdata" }

local function unit(description, exec_start, enabled)
  return string.format("[Unit]\nDescription=%s\n[Service]\n%s\n%s", description, exec_start,
    enabled and "[Install]\nWantedBy=multi-user.target\n" or "")
end

local function httpd(port)
  return "ExecStart=/bin/busybox httpd -f -p 127.0.0.1:" .. port .. " -h /srv"
end

-- The server: the array with data, its services, the database, the flake. Returns a
-- table with paths and ways to look at the host (hrun_on runs the playbook there).
local function server(extra)
  local h = { work = tmpdir() }
  h.array = btrfs_volume(3)
  for _, sub in ipairs(SUBVOLUMES) do
    exec.run({ "btrfs", "-q", "subvolume", "create", h.array .. "/" .. sub })
  end
  fs.mkdir(h.array .. "/photos/2024 summer", { parents = true })
  for i = 1, 40 do
    fs.write(string.format("%s/photos/2024 summer/IMG %04d.jpg", h.array, i), string.rep(string.char(i), 3000 * i))
  end
  fs.write(h.array .. "/media/film.mkv", string.rep("frame", 200000))
  fs.write(h.array .. "/nextcloud/config.php", "<?php $CONFIG = array('dbtype' => 'pgsql');\n")
  fs.write(h.array .. "/appdata/emby.db", string.rep("e", 4096))
  fs.write(h.array .. "/data/odd name\nwith newline", "x")
  h.nix, h.env = nix_host(true)
  local pg_env, pg_dir = pg_cluster()
  exec.run({ "psql", "-X", "-q", "-c", "CREATE DATABASE nextcloud", "-c", "CREATE DATABASE immich" }, { env = pg_env })
  local traefik = free_port()
  local bus = systemd_container({
    ["docker-nextcloud.service"] = unit("Nextcloud on ZimaOS (stand-in)", httpd(free_port()), true),
    ["postgresql.service"] = unit("PostgreSQL (stand-in)", httpd(free_port())),
    ["redis-nextcloud.service"] = unit("Redis for Nextcloud (stand-in)", httpd(free_port())),
    ["traefik.service"] = unit("Traefik (stand-in)", httpd(traefik)),
    -- Nextcloud's first start on NixOS writes to its subvolume
    ["nextcloud-setup.service"] = unit("Nextcloud setup (writes to the array)", "Type=oneshot\nRemainAfterExit=yes\n"
      .. "ExecStart=/bin/sh -c 'echo upgraded >> " .. h.array .. "/nextcloud/config.php'"),
    ["restic-backups-array.service"] = unit("Backup of the array (stand-in)", "Type=oneshot\nExecStart=/bin/true"),
  }, { h.array })
  for k, v in pairs(pg_env) do
    h.env[k] = v
  end
  for k, v in pairs(bus) do
    h.env[k] = v
  end
  h.pg_env = pg_env
  h.etc = h.nix .. "/etc-nixos"
  h.state = h.work .. "/state"
  local params = {
    array = h.array, devices = 3, subvolumes = SUBVOLUMES,
    old_services = { "docker-nextcloud" },
    databases = { { name = "main", host = pg_dir, port = tonumber(pg_env.PGPORT), user = "postgres",
      expect = { "nextcloud", "immich" } } },
    config = { flake = h.etc, host = "hwc-server", ref = "", profile = h.nix .. "/profiles/system" },
    services = {
      { unit = "postgresql" },
      { unit = "redis-nextcloud" },
      { unit = "nextcloud-setup" },
      { unit = "traefik", url = "http://127.0.0.1:" .. traefik .. "/health", match = "ok" },
    },
    backup = { unit = "restic-backups-array" },
  }
  for k, v in pairs(extra or {}) do
    params[k] = v
  end
  h.params = h.work .. "/server.json"
  fs.write(h.params, json.encode(params))
  function h.data()
    local t = {}
    for _, sub in ipairs(SUBVOLUMES) do
      t[sub] = tree(h.array .. "/" .. sub)
    end
    return t
  end
  return host_views(h)
end

local function old_host(h)
  local r = hrun_on(h, { PLAYBOOK, "-p", "stage=old-host" })
  eq(r.code, 0, r.stdout .. r.stderr)
  return r
end

describe("phase 4: the array and the infrastructure, in place", function()
  it("runs on the old host, then on the new one; `hrun rollback` undoes the new host's run", function()
    local h = server()
    -- the phase's configuration, committed (what the deploy switches to)
    fs.write(h.etc .. "/label", "phase4")
    exec.run({ "git", "-C", h.etc, "-c", "user.name=admin", "-c", "user.email=admin@hwc", "commit", "-qam",
      "phase 4: storage and infrastructure" }, { env = h.env })
    local before = h.data()
    eq(h.active("docker-nextcloud"), "active")
    local r = old_host(h)
    eq(h.active("docker-nextcloud"), "inactive", "stopped before the snapshots")
    -- snapshots, manifests and the dump travel on the array
    local snaps = fs.glob(h.array .. "/.snapshots/*.migration-phase4.*")
    eq(#snaps, #SUBVOLUMES, r.stdout)
    ok(fs.exists(h.array .. "/.hrun-migration/migration-phase4-photos.xxh128"))
    has(fs.read(h.array .. "/.hrun-migration/main.sql"), "CREATE DATABASE nextcloud")
    -- the manifests are xxhsum's: xxhsum -c agrees
    local c = exec.run({ "sh", "-c", "cd '" .. h.array .. "/photos' && xxhsum -c '" .. h.array
      .. "/.hrun-migration/migration-phase4-photos.xxh128'" }, { check = false })
    eq(c.code, 0, c.stdout .. c.stderr)

    r = hrun_on(h, { PLAYBOOK, "-p", "stage=new-host" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "5 subvolumes match their manifests")
    for _, u in ipairs({ "postgresql", "redis-nextcloud", "traefik" }) do
      eq(h.active(u), "active", u)
    end
    eq(h.generation(), "system-3-link")
    eq(h.tags(), "migration/phase4\n")
    has(fs.read(h.array .. "/nextcloud/config.php"), "upgraded")

    -- later: the new host's run undone; the old host's snapshots stay
    r = hrun_on(h, { "rollback", "2" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(h.tags(), "")
    eq(h.generation(), "system-2-link")
    eq(h.active("traefik"), "inactive")
    eq(h.data(), before, "every subvolume as it was: nextcloud's snapshot given back")
    eq(#fs.glob(h.array .. "/.snapshots/*.before-nixos.*"), 0)
    eq(#fs.glob(h.array .. "/.snapshots/*.migration-phase4.*"), #SUBVOLUMES)
  end)

  it("refuses to start anything when a checksum does not match, and names the file", function()
    local h = server()
    old_host(h)
    -- the array changed between the hosts (a bit flipped, a write that should not be)
    fs.write(h.array .. "/photos/2024 summer/IMG 0007.jpg", string.rep("X", 21000))
    local r = hrun_on(h, { PLAYBOOK, "-p", "stage=new-host" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "photos: changed: 2024 summer/IMG 0007.jpg")
    has(r.stdout .. r.stderr, "checksums differ: photos (1 changed, 0 missing, 0 added")
    eq(h.active("postgresql"), "inactive")
    eq(h.generation(), "system-2-link")
    eq(h.tags(), "")
  end)

  it("rolls back when a unit fails: services stopped, the written subvolume restored, generation back", function()
    local h = server({ services = {
      { unit = "postgresql" }, { unit = "nextcloud-setup" }, { unit = "hrun-fail" },
    } })
    local before = h.data()
    old_host(h)
    local r = hrun_on(h, { PLAYBOOK, "-p", "stage=new-host" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "hrun-fail.service: the job failed")
    has(r.stdout, "nextcloud was written: restored from")
    eq(h.data(), before, "the manifests' data: nextcloud's write undone")
    eq(h.active("postgresql"), "inactive")
    eq(h.generation(), "system-2-link")
    eq(h.tags(), "")
  end)

  it("rolls back when the configuration does not build: HEAD, generation and array as before", function()
    local h = server()
    -- a commit that moves the system to a release that fails to build
    local flake = fs.read(h.etc .. "/flake.nix"):gsub("pkgs%-24%.05", "pkgs-broken")
    fs.write(h.etc .. "/flake.nix", flake)
    exec.run({ "git", "-C", h.etc, "-c", "user.name=admin", "-c", "user.email=admin@hwc", "commit", "-qam", "broken" },
      { env = h.env })
    local broken = exec.run({ "git", "-C", h.etc, "rev-parse", "HEAD" }).stdout:gsub("\n$", "")
    exec.run({ "git", "-C", h.etc, "reset", "-q", "--hard", "HEAD~1" })
    local params = json.decode(fs.read(h.params))
    params.config.ref = broken
    fs.write(h.params, json.encode(params))
    local head = exec.run({ "git", "-C", h.etc, "rev-parse", "HEAD" }).stdout
    local before = h.data()
    old_host(h)
    local r = hrun_on(h, { PLAYBOOK, "-p", "stage=new-host" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "a broken release, as the test asked")
    eq(exec.run({ "git", "-C", h.etc, "rev-parse", "HEAD" }).stdout, head)
    eq(h.generation(), "system-2-link")
    eq(h.data(), before)
    eq(h.active("postgresql"), "inactive")
    eq(#fs.glob(h.array .. "/.snapshots/*.before-nixos.*"), 0)
  end)
end)
