-- btrfs on real filesystems: a one-device filesystem and a three-device array (data
-- RAID5, metadata RAID1), on sparse image files over loop devices, made and removed by
-- each test.

local function fill(dir, n)
  fs.mkdir(dir .. "/photos/2024 summer", { parents = true })
  for i = 1, n do
    fs.write(string.format("%s/photos/2024 summer/IMG %03d.jpg", dir, i), string.rep(string.char(i % 256), 5000 + i))
  end
  fs.write(dir .. "/config.json", '{"version": 1}')
  exec.run({ "ln", "-s", "config.json", dir .. "/link" })
end

for _, devices in ipairs({ 1, 3 }) do
  local kind = devices == 1 and "one device" or "RAID5 over three devices"

  describe("btrfs on " .. kind, function()
    it("creates, snapshots, describes, lists, flips read-only, deletes", function()
      local mnt = btrfs_volume(devices)
      eq(btrfs.create(mnt .. "/@data"), mnt .. "/@data")
      ok(btrfs.is_subvolume(mnt .. "/@data"))
      eq(btrfs.is_subvolume(mnt), true, "the top of the filesystem is subvolume 5")
      fs.mkdir(mnt .. "/.snapshots")
      eq(btrfs.is_subvolume(mnt .. "/.snapshots"), false)
      fill(mnt .. "/@data", 5)
      eq(btrfs.snapshot(mnt .. "/@data", mnt .. "/.snapshots/pre", { readonly = true }), mnt .. "/.snapshots/pre")
      local info = btrfs.info(mnt .. "/.snapshots/pre")
      local src = btrfs.info(mnt .. "/@data")
      eq(info.readonly, true)
      eq(info.parent_uuid, src.uuid)
      eq(info.path, ".snapshots/pre")
      eq(src.path, "@data")
      ok(info.id > 256 and math.abs(info.otime - sys.now()) < 60)
      fails("EROFS", mnt .. "/.snapshots/pre/x", fs.write, mnt .. "/.snapshots/pre/x", "no")
      eq(fs.read(mnt .. "/.snapshots/pre/config.json"), '{"version": 1}')
      local rw = btrfs.snapshot(mnt .. "/@data", mnt .. "/.snapshots/rw")
      eq(btrfs.info(rw).readonly, false)
      eq(btrfs.set_readonly(rw, true), rw)
      eq(btrfs.info(rw).readonly, true)
      btrfs.set_readonly(rw, false)
      local list = btrfs.list(mnt)
      local rels = {}
      for _, e in ipairs(list) do
        rels[#rels + 1] = e.rel
        eq(e.path, mnt .. "/" .. e.rel)
      end
      eq(rels, { ".snapshots/pre", ".snapshots/rw", "@data" })
      local below = btrfs.list(mnt .. "/.snapshots")
      eq(#below, 2)
      eq(below[1].rel, "pre")
      eq(below[1].fs_path, ".snapshots/pre")
      eq(btrfs.delete(mnt .. "/.snapshots/pre"), mnt .. "/.snapshots/pre", "read-only snapshots too")
      eq(fs.exists(mnt .. "/.snapshots/pre"), false)
      ok(btrfs.sync(mnt))
    end)

    it("restores a snapshot: every byte back, the old target kept aside", function()
      local mnt = btrfs_volume(devices)
      btrfs.create(mnt .. "/@data")
      fill(mnt .. "/@data", 20)
      local before = tree(mnt .. "/@data")
      btrfs.snapshot(mnt .. "/@data", mnt .. "/pre", { readonly = true })
      fs.write(mnt .. "/@data/config.json", '{"version": 2}')
      fs.remove(mnt .. "/@data/photos", { recursive = true })
      fs.write(mnt .. "/@data/new", "x")
      local aside = btrfs.restore(mnt .. "/pre", mnt .. "/@data")
      eq(aside:sub(1, #mnt + 12), mnt .. "/@data.hrun-", aside)
      ok(aside:sub(#mnt + 13):match("^%d+T%d+%.%d%d%d%d%d%dZ$"), aside)
      eq(tree(mnt .. "/@data"), before)
      eq(btrfs.info(mnt .. "/@data").readonly, false, "a writable copy")
      eq(fs.read(aside .. "/new"), "x", "the old target is kept")
      eq(btrfs.restore(mnt .. "/pre", mnt .. "/fresh"), false, "no target: nothing set aside")
    end)

    it("snapshots and deletes nested subvolumes with recursive", function()
      local mnt = btrfs_volume(devices)
      btrfs.create(mnt .. "/@root")
      btrfs.create(mnt .. "/@root/var")
      fs.write(mnt .. "/@root/var/log", "nested")
      btrfs.snapshot(mnt .. "/@root", mnt .. "/flat")
      eq(btrfs.is_subvolume(mnt .. "/flat/var"), false, "without recursive a nested subvolume is an empty dir")
      btrfs.snapshot(mnt .. "/@root", mnt .. "/deep", { recursive = true })
      ok(btrfs.is_subvolume(mnt .. "/deep/var"))
      eq(fs.read(mnt .. "/deep/var/log"), "nested")
      fails("ENOTEMPTY", mnt .. "/deep", btrfs.delete, mnt .. "/deep")
      eq(btrfs.delete(mnt .. "/deep", { recursive = true }), mnt .. "/deep")
      eq(fs.exists(mnt .. "/deep"), false)
    end)

    it("names the path and the reason, and changes nothing", function()
      local mnt = btrfs_volume(devices)
      btrfs.create(mnt .. "/@data")
      fs.mkdir(mnt .. "/plain")
      fails("ENOTSUBVOL", "btrfs.snapshot: " .. mnt .. "/plain: not a btrfs subvolume", btrfs.snapshot,
        mnt .. "/plain", mnt .. "/snap")
      fails("ENOENT", mnt .. "/missing", btrfs.snapshot, mnt .. "/missing", mnt .. "/snap")
      fails("EEXIST", "btrfs.snapshot: " .. mnt .. "/plain: File exists", btrfs.snapshot, mnt .. "/@data",
        mnt .. "/plain")
      fails("EEXIST", mnt .. "/@data", btrfs.create, mnt .. "/@data")
      fails("ENOENT", mnt .. "/no/such", btrfs.create, mnt .. "/no/such/sub")
      local d = tmpdir()
      fails("ENOTBTRFS", d .. ": not on a btrfs filesystem", btrfs.create, d .. "/sub")
      fails("ENOTBTRFS", "not on a btrfs filesystem", btrfs.info, d)
      eq(btrfs.is_subvolume(d), false)
      fails("ENOTSUBVOL", mnt .. "/plain", btrfs.delete, mnt .. "/plain")
      fails("ENOENT", mnt .. "/gone", btrfs.delete, mnt .. "/gone")
      fails("ENOTSUBVOL", mnt .. "/plain", btrfs.restore, mnt .. "/plain", mnt .. "/@data")
      ok(btrfs.is_subvolume(mnt .. "/@data"), "the target is untouched")
      eq(#fs.glob(mnt .. "/@data.hrun-*"), 0, "nothing set aside")
      checkerr("bad argument #2 to 'btrfs.set_readonly' (boolean expected, got string)", btrfs.set_readonly,
        mnt .. "/@data", "yes")
      checkerr("unknown option 'readnly' (did you mean 'readonly'?)", btrfs.snapshot, mnt .. "/@data",
        mnt .. "/x", { readnly = true })
      eq(#btrfs.list(mnt), 1)
    end)

    it("says when permission is missing", function()
      need("setpriv")
      local mnt, _, dir = btrfs_volume(devices)
      btrfs.create(mnt .. "/@data")
      exec.run({ "chmod", "755", dir, mnt, mnt .. "/@data" })
      local script = "local ok, err, code = btrfs.snapshot(...) io.write(tostring(code), ' ', tostring(err))"
      local r = exec.run({ "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", HRUN, "-e",
        "local mnt = '" .. mnt .. "'; " .. script:gsub("%.%.%.", "mnt .. '/@data', mnt .. '/@data/snap'") },
        { check = false })
      has(r.stdout, "EPERM btrfs.snapshot: " .. mnt .. "/@data/snap: Operation not permitted")
      eq(fs.exists(mnt .. "/@data/snap"), false)
    end)
  end)
end

local SNAPSHOTTER = [[
return playbook {
  name = "snapshotter", params = { mnt = "", fail = false, delete_old = false, irreversible = false },
  phase "p" {
    step "snapshot before" {
      run = function(ctx)
        fs.mkdir(ctx.params.mnt .. "/.snapshots", { parents = true })
        ctx.state.snap = btrfs.snapshot(ctx.params.mnt .. "/@data", ctx.params.mnt .. "/.snapshots/pre",
          { readonly = true })
      end,
      verify = function(ctx) return btrfs.is_subvolume(ctx.state.snap) end,
    },
    step "change" {
      run = function(ctx)
        fs.write(ctx.params.mnt .. "/@data/config.json", '{"version": 2}')
        btrfs.create(ctx.params.mnt .. "/@new")
        btrfs.set_readonly(ctx.params.mnt .. "/@data", true)
        if ctx.params.fail then error("the change failed") end
      end,
    },
    step "drop the old" {
      irreversible = ctx_irreversible,
      when = function(ctx) return ctx.params.delete_old end,
      run = function(ctx) btrfs.delete(ctx.params.mnt .. "/old") end,
    },
  },
}
]]

describe("btrfs in playbooks", function()
  local function setup()
    local mnt, _, dir = btrfs_volume(1)
    btrfs.create(mnt .. "/@data")
    fill(mnt .. "/@data", 3)
    btrfs.create(mnt .. "/old")
    return mnt, dir, playbook_file(dir, "snap.lua", (SNAPSHOTTER:gsub("ctx_irreversible", "false"))), dir .. "/state"
  end

  it("plans without making a snapshot, and lists the writes", function()
    local mnt, _, p, state = setup()
    local before = tree(mnt)
    local r = hrun_cmd({ "plan", p, "--state", state, "-p", "mnt=" .. mnt })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would btrfs.snapshot " .. mnt .. "/@data " .. mnt .. "/.snapshots/pre {\"readonly\":true}  [undo: "
      .. "btrfs.delete " .. mnt .. "/.snapshots/pre]")
    has(r.stdout, "would btrfs.set_readonly " .. mnt .. "/@data true  [undo: btrfs.set_readonly " .. mnt
      .. "/@data false]")
    eq(tree(mnt), before)
  end)

  it("undoes its snapshots, subvolumes and flags when it fails", function()
    local mnt, _, p, state = setup()
    local before = tree(mnt)
    local r = hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt, "-p", "fail=true" })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(tree(mnt), before)
    eq(btrfs.info(mnt .. "/@data").readonly, false)
    local rels = {}
    for _, e in ipairs(btrfs.list(mnt)) do
      rels[#rels + 1] = e.rel
    end
    eq(rels, { "@data", "old" }, "the snapshot and the new subvolume are gone")
  end)

  it("refuses btrfs.delete in a step without undo or irreversible", function()
    local mnt, dir, p, state = setup()
    local r = hrun_cmd({ "plan", p, "--state", state, "-p", "mnt=" .. mnt, "-p", "delete_old=true" })
    has(r.stdout, "btrfs.delete cannot be undone: step 'drop the old' needs its own undo, or irreversible = true")
    r = hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt, "-p", "delete_old=true" })
    eq(r.code, 1)
    has(r.stdout, "btrfs.delete cannot be undone: step 'drop the old' needs its own undo")
    ok(btrfs.is_subvolume(mnt .. "/old"), "not deleted")
    local p2 = playbook_file(dir, "snap2.lua", (SNAPSHOTTER:gsub("ctx_irreversible", "true")))
    r = hrun_cmd({ p2, "--state", state, "-p", "mnt=" .. mnt, "-p", "delete_old=true" })
    eq(r.code, 0, r.stdout)
    eq(fs.exists(mnt .. "/old"), false)
  end)

  it("restores, and a rollback swaps back", function()
    local mnt, dir, _, state = setup()
    btrfs.snapshot(mnt .. "/@data", mnt .. "/pre", { readonly = true })
    fs.write(mnt .. "/@data/config.json", "changed after the snapshot")
    local changed = tree(mnt .. "/@data")
    local p = playbook_file(dir, "restore.lua", [[
return playbook { name = "restore", params = { mnt = "" },
  phase "p" {
    step "restore" { run = function(ctx)
      ctx.state.aside = btrfs.restore(ctx.params.mnt .. "/pre", ctx.params.mnt .. "/@data")
    end },
    step "then fail" { run = function() error("no") end },
  } }]])
    local r = hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt })
    eq(r.code, 1, r.stdout)
    eq(tree(mnt .. "/@data"), changed, "the target as it was before the restore")
    eq(#fs.glob(mnt .. "/@data.hrun-*"), 0)
  end)
end)

describe("btrfs.prune", function()
  -- snapshots named with their times (UTC), as btrbk names them: no waiting for clocks
  local names = {
    "data.2024-01-15T12:00:00Z", "data.2024-02-10T12:00:00Z", "data.2024-02-20T12:00:00Z",
    "data.2024-03-01T09:00:00Z", "data.2024-03-01T18:00:00Z", "data.2024-03-02T08:00:00Z",
    "data.2024-03-02T20:00:00Z", "data.2024-03-03T07:00:00Z", "data.2024-03-03T08:00:00Z",
    "data.2024-03-03T08:30:00Z",
  }

  local function snapshots(mnt)
    btrfs.create(mnt .. "/@data")
    fs.mkdir(mnt .. "/snaps")
    for _, n in ipairs(names) do
      btrfs.snapshot(mnt .. "/@data", mnt .. "/snaps/" .. n, { readonly = true })
    end
    fs.mkdir(mnt .. "/snaps/not-a-snapshot")
  end

  local function prune(mnt, state, policy)
    local d = tmpdir()
    local script = d .. "/prune.lua"
    fs.write(script, "local mnt, policy = ...\n"
      .. "io.write(json.encode(btrfs.prune(mnt .. '/snaps', json.decode(policy))))")
    local r = hrun_cmd({ "--state", state, script, mnt, json.encode(policy) }, { env = { TZ = "UTC" } })
    eq(r.code, 0, r.stderr)
    return json.decode(r.stdout)
  end

  it("keeps exactly what the policy says", function()
    local mnt, _, dir = btrfs_volume(1)
    snapshots(mnt)
    local res = prune(mnt, dir .. "/state", { keep_last = 2, keep_daily = 3, keep_monthly = 3 })
    table.sort(res.kept)
    eq(res.kept, {
      "data.2024-01-15T12:00:00Z", -- newest of January (monthly)
      "data.2024-02-20T12:00:00Z", -- newest of February (monthly)
      "data.2024-03-01T18:00:00Z", -- newest of 1 March (daily)
      "data.2024-03-02T20:00:00Z", -- newest of 2 March (daily)
      "data.2024-03-03T08:00:00Z", -- the two newest (last)
      "data.2024-03-03T08:30:00Z", -- and newest of 3 March and of March
    })
    table.sort(res.deleted)
    eq(res.deleted, { "data.2024-02-10T12:00:00Z", "data.2024-03-01T09:00:00Z", "data.2024-03-02T08:00:00Z",
      "data.2024-03-03T07:00:00Z" })
    for _, n in ipairs(res.deleted) do
      eq(fs.exists(mnt .. "/snaps/" .. n), false)
    end
    ok(fs.exists(mnt .. "/snaps/not-a-snapshot"), "only subvolumes are candidates")
    res = prune(mnt, dir .. "/state", { keep_hourly = 1, pattern = "data.2024-03-*" })
    table.sort(res.kept)
    eq(res.kept, { "data.2024-03-03T08:30:00Z" })
  end)

  it("never deletes a snapshot an unfinished run still references", function()
    local mnt, _, dir = btrfs_volume(1)
    snapshots(mnt)
    local state = dir .. "/state"
    local p = playbook_file(dir, "keeper.lua", [[
return playbook { name = "keeper", params = { mnt = "" },
  phase "p" {
    step "snap" { run = function(ctx)
      btrfs.snapshot(ctx.params.mnt .. "/@data", ctx.params.mnt .. "/snaps/data.2023-12-31T00:00:00Z",
        { readonly = true })
    end },
    step "more" { run = function() end },
  } }]])
    local r = hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt }, { env = { HRUN_TEST_CRASH = "step-done:1" } })
    eq(r.signal, "SIGKILL")
    local res = prune(mnt, state, { keep_last = 1 })
    eq(res.protected, { "data.2023-12-31T00:00:00Z" })
    ok(btrfs.is_subvolume(mnt .. "/snaps/data.2023-12-31T00:00:00Z"))
    eq(#res.deleted, #names - 1)
  end)

  it("needs a rule", function()
    checkerr("no keep_* rule: pruning would delete every snapshot", btrfs.prune, "/tmp", {})
    checkerr("field 'keep_last': must be >= 0", btrfs.prune, "/tmp", { keep_last = -1 })
    checkerr("unknown option 'keep_dayly' (did you mean 'keep_daily'?)", btrfs.prune, "/tmp", { keep_dayly = 1 })
  end)
end)

describe("btrfs.scrub", function()
  -- The file's first extent as (device, physical offset) lines of btrfs-map-logical.
  local function mapping(loops, file, bytes)
    exec.run({ "sync" })
    local frag = exec.run({ "filefrag", "-v", file }, { readonly = true }).stdout
    local first = assert(frag:match("\n%s*0:%s+%d+%.%.%s*%d+:%s+(%d+)%.%."), frag)
    local logical = tonumber(first) * 4096
    local map = exec.run({ "btrfs-map-logical", "-l", tostring(logical), "-b", tostring(bytes), loops[1] },
      { readonly = true }).stdout
    local out = {}
    for mirror, at, phys, dev in map:gmatch("mirror (%d+) logical (%d+) physical (%d+) device (%S+)") do
      out[#out + 1] = { mirror = tonumber(mirror), logical = tonumber(at), phys = tonumber(phys), dev = dev,
        first = tonumber(at) == logical }
    end
    assert(#out > 0, map)
    return out
  end

  -- Zeroes 64 KiB at each chosen place, through the loop devices' image files (written
  -- with the filesystem unmounted), then mounts it again.
  local function damage(mnt, loops, places)
    exec.run({ "umount", mnt })
    for _, m in ipairs(places) do
      local img = exec.run({ "losetup", "-n", "-O", "BACK-FILE", m.dev }, { readonly = true }).stdout:gsub("%s+$", "")
      exec.run({ "dd", "if=/dev/zero", "of=" .. img, "bs=4096", "seek=" .. (m.phys // 4096), "count=16",
        "conv=notrunc,fsync", "status=none" })
    end
    local devopts = {}
    for _, l in ipairs(loops) do
      devopts[#devopts + 1] = "device=" .. l
    end
    exec.run({ "mount", "-t", "btrfs", "-o", table.concat(devopts, ","), loops[1], mnt })
  end

  local function sum(path)
    return exec.run({ "sha256sum", path }, { readonly = true }).stdout:match("^%x+")
  end

  it("corrects one damaged copy and reports both damaged (one device, two copies)", function()
    need("filefrag")
    need("btrfs-map-logical")
    local mnt, loops = btrfs_volume(1, true)
    exec.run({ "dd", "if=/dev/urandom", "of=" .. mnt .. "/big", "bs=1M", "count=8", "status=none" })
    local r = btrfs.scrub(mnt)
    eq({ r.ok, r.corrected, r.uncorrectable, r.status }, { true, 0, 0, "finished" })
    local good = sum(mnt .. "/big")
    local places = mapping(loops, mnt .. "/big", 4096)
    damage(mnt, loops, { places[1] })
    r = btrfs.scrub(mnt)
    eq({ r.ok, r.corrected, r.uncorrectable, r.errors.csum }, { true, 16, 0, 16 }, r.output)
    eq(sum(mnt .. "/big"), good)
    damage(mnt, loops, places)
    r = btrfs.scrub(mnt)
    eq(r.ok, false, r.output)
    ok(r.uncorrectable >= 16, "every damaged block uncorrectable: " .. r.output)
  end)

  it("on RAID5: rebuilds a damaged device's stripes, and reports data and parity both lost", function()
    need("filefrag")
    need("btrfs-map-logical")
    local mnt, loops = btrfs_volume(3)
    exec.run({ "dd", "if=/dev/urandom", "of=" .. mnt .. "/big", "bs=1M", "count=16", "status=none" })
    local r = btrfs.scrub(mnt)
    eq({ r.ok, r.corrected, r.uncorrectable }, { true, 0, 0 })
    local good = sum(mnt .. "/big")
    -- the data stripes of the first MiB that lie on one device: RAID5 rebuilds each from
    -- the others (how many the kernel counts as corrected varies; that none is lost does not)
    local places, device = {}, nil
    for _, m in ipairs(mapping(loops, mnt .. "/big", 1 << 20)) do
      device = device or (m.mirror == 1 and m.dev)
      if m.mirror == 1 and m.dev == device then
        places[#places + 1] = m
      end
    end
    damage(mnt, loops, places)
    r = btrfs.scrub(mnt)
    eq({ r.ok, r.uncorrectable }, { true, 0 }, r.output)
    eq(sum(mnt .. "/big"), good, "every byte rebuilt")
    -- a stripe's data and its parity both: nothing to rebuild from
    exec.run({ "dd", "if=/dev/urandom", "of=" .. mnt .. "/big2", "bs=1M", "count=8", "status=none" })
    places = {}
    for _, m in ipairs(mapping(loops, mnt .. "/big2", 4096)) do
      if m.first then
        places[#places + 1] = m
      end
    end
    damage(mnt, loops, places)
    r = btrfs.scrub(mnt)
    eq(r.ok, false, r.output)
    ok(r.uncorrectable > 0, "uncorrectable: " .. r.output)
  end)

  it("names a path that is not btrfs", function()
    need_root()
    local d = tmpdir()
    fails("ENOTBTRFS", "btrfs.scrub: " .. d .. ": not on a btrfs filesystem", btrfs.scrub, d)
    fails("ENOENT", "btrfs.scrub: " .. d .. "/nope", btrfs.scrub, d .. "/nope")
  end)
end)
