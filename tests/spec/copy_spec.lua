-- Copies of trees between machines (issue 21, item 7): fs.sync (rsync) and btrfs.receive
-- (btrfs send | btrfs receive), here and between real hosts over real OpenSSH
-- (tests/fixtures/hosts.sh). The copy is the receiving machine's journaled write, with
-- its inverse there; its sending side runs where the data is, behind hrun's relay.

local function sqlite(db, sql)
  return exec.run({ "sqlite3", "-cmd", ".timeout 10000", db, sql }).stdout
end

-- The environment for hrun reaching the fixture's hosts: its ssh_config, a state dir.
local function controller(hs)
  local dir = tmpdir()
  return dir, { HRUN_SSH_CONFIG = hs.ssh_config, HRUN_STATE_DIR = dir .. "/state", HRUN_SSH_SERVER_ALIVE = "1" }
end

local run = hrun_with

-- A playbook on hosts old (hs[1]) and new (hs[2]) whose steps are `steps` (Lua source).
local function on_two(dir, hs, name, steps, params)
  return playbook_file(dir, name .. ".lua", string.format([[
return playbook {
  name = %q, hosts = { old = %q, new = %q }, params = { %s },
  phase "copy" {
%s
  },
}
]], name, hs[1].url, hs[2].url, params or "", steps))
end

local function rooted(h, path)
  return fs.exists(h.root .. path) and tree(h.root .. path) or nil
end

-- a host's btrfs at /srv/pool (ssh_hosts{pools = true}), seen from here
local function pool(h)
  return string.format("%s/h%d/pool", h.dir, h.index)
end

-- relays here for the run whose state is under dir (and the rsyncs they serve), and
-- rsyncs and relays on the hosts: none once a run has ended
local function nothing_left(dir, hs)
  local here, there
  for _ = 1, 50 do
    here = exec.run({ "pgrep", "-af", "__relay .*" .. dir }, { check = false }).stdout
    there = ""
    for _, h in ipairs(hs) do
      there = there .. (h:sh("pgrep -af '^rsync |__rela[y]' || true"))
    end
    if here == "" and there == "" then
      return
    end
    sys.sleep(0.1)
  end
  error("processes of a copy left running: " .. here .. there)
end

describe("fs.sync on this machine", function()
  it("makes a tree a copy of another with rsync, is already so the second time, and rolls back", function()
    need("rsync")
    local dir = tmpdir()
    fs.mkdir(dir .. "/src/sub/deep", { parents = true })
    fs.write(dir .. "/src/a", "alpha\n", { mode = "0640" })
    fs.write(dir .. "/src/sub/deep/b", "beta\n")
    exec.run({ "ln", "-s", "a", dir .. "/src/link" })
    fs.mkdir(dir .. "/old")
    fs.write(dir .. "/old/a", "old alpha\n")
    fs.write(dir .. "/old/gone", "only in the old copy\n")
    local before = tree(dir .. "/old")
    local pb = playbook_file(dir, "sync.lua", [[
return playbook { name = "sync", params = { d = "" },
  phase "p" {
    step "new" { run = function(ctx)
      local r = fs.sync(ctx.params.d .. "/src", ctx.params.d .. "/new")
      assert(r.files == 6 and r.path == ctx.params.d .. "/new", json.encode(r))
    end },
    step "over" { run = function(ctx)
      fs.sync(ctx.params.d .. "/src/", ctx.params.d .. "/old", { delete = true })
    end },
  },
}
]])
    local state = dir .. "/state"
    local r = hrun_cmd({ pb, "-p", "d=" .. dir, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(tree(dir .. "/new"), tree(dir .. "/src"))
    eq(tree(dir .. "/old"), tree(dir .. "/src"), "with delete, what the source lacks is gone")
    -- the second time: in sync, nothing journaled, nothing saved
    r = hrun_cmd({ pb, "-p", "d=" .. dir, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "step new: ok")
    has(r.stdout, "step over: ok")
    eq(sqlite(state .. "/journal.db", "SELECT count(*) FROM effects WHERE run = 2"), "0\n")
    r = hrun_cmd({ "rollback", "1", "--yes", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(not fs.exists(dir .. "/new"), "made by the run: removed")
    eq(tree(dir .. "/old"), before, "the tree it copied over is as it was")
  end)

  it("names what is wrong and changes nothing", function()
    need("rsync")
    local dir = tmpdir()
    fs.mkdir(dir .. "/src")
    fs.write(dir .. "/file", "x")
    checkerr("fs.sync: " .. dir .. "/nope: No such file or directory", function()
      assert(fs.sync(dir .. "/nope", dir .. "/dst"))
    end)
    checkerr("fs.sync: " .. dir .. "/file: Not a directory", function()
      assert(fs.sync(dir .. "/file", dir .. "/dst"))
    end)
    checkerr("fs.sync: " .. dir .. "/no/such: No such file or directory", function()
      assert(fs.sync(dir .. "/src", dir .. "/no/such/dst"))
    end)
    checkerr("fs.sync: " .. dir .. "/file: Not a directory", function()
      assert(fs.sync(dir .. "/src", dir .. "/file"))
    end)
    checkerr("unknown option 'form'", function()
      fs.sync(dir .. "/src", dir .. "/dst", { form = "old" })
    end)
    checkerr("from = 'old': other hosts are reached while a playbook runs", function()
      fs.sync(dir .. "/src", dir .. "/dst", { from = "old" })
    end)
    ok(not fs.exists(dir .. "/dst"))
  end)
end)

describe("hrun's relay", function()
  it("starts only the rsync sender it was asked for: another source or option is refused", function()
    need("rsync")
    local dir = tmpdir()
    fs.mkdir(dir .. "/src")
    fs.write(dir .. "/src/keep", "the source\n")
    local sock = dir .. "/relay.sock"
    local log = dir .. "/relay.log"
    local serve = exec.run({ "sh", "-c", '"$1" __relay serve "$2" --rsync "$3" -- > /dev/null 2> "$4" & echo $!',
      "serve", HRUN, sock, dir .. "/src/", log }).stdout:gsub("%s+$", "")
    after(function()
      exec.run({ "kill", serve }, { check = false })
    end)
    for _ = 1, 50 do
      if fs.exists(sock) then
        break
      end
      sys.sleep(0.05)
    end
    eq(fs.stat(sock).mode & 63, 0, "only its owner may connect")
    local function ask(...)
      return hrun_cmd({ "__relay", "connect", sock, "relay", "rsync", "--server", "--sender", ... },
        { stdin = "", timeout = 20 })
    end
    for _, args in ipairs({
      { "-logDtpre.iLsfxCIvu", "--remove-source-files", ".", dir .. "/src/" },
      { "-logDtpre.iLsfxCIvu", ".", "/etc/" },
      { "-logDtpre.iLsfxCIvuT/tmp", ".", dir .. "/src/" },
      { "-logDtpre.iLsfxCIvu", "--log-file=/tmp/x", ".", dir .. "/src/" },
    }) do
      local before = select(2, (fs.read(log) or ""):gsub("hrun relay: refused what the receiving side asked for", ""))
      ask(table.unpack(args))
      local now
      for _ = 1, 50 do
        now = select(2, (fs.read(log) or ""):gsub("hrun relay: refused what the receiving side asked for", ""))
        if now > before then
          break
        end
        sys.sleep(0.05)
      end
      eq(now, before + 1, table.concat(args, " ") .. ": " .. (fs.read(log) or ""))
    end
    eq(fs.read(dir .. "/src/keep"), "the source\n")
    exec.run({ "kill", serve })
    for _ = 1, 50 do
      if not fs.exists(sock) then
        break
      end
      sys.sleep(0.05)
    end
    ok(not fs.exists(sock), "its socket goes with it")
  end)
end)

describe("copies between hosts", function()
  it("fs.sync copies from a host here, from here to a host, and between two, journaled where the data goes",
    function()
      local hs = ssh_hosts(2)
      local _, code = hs[1]:sh("mkdir -p /srv/x/src/d /srv/x/empty && printf 'old data\\n' > /srv/x/src/d/f && " ..
        "printf 'top\\n' > /srv/x/src/t && chmod 600 /srv/x/src/t && ln -s d/f /srv/x/src/l && " ..
        "mkdir -p /srv/y && printf 'same host\\n' > /srv/y/own")
      eq(code, 0)
      _, code = hs[2]:sh("mkdir -p /srv/y/over && printf 'stale\\n' > /srv/y/over/t && " ..
        "printf 'extra\\n' > /srv/y/over/x")
      eq(code, 0)
      local dir, env = controller(hs)
      fs.mkdir(dir .. "/here/sub", { parents = true })
      fs.write(dir .. "/here/sub/f", "from the controller\n")
      local before1, before2 = rooted(hs[1], "/srv"), rooted(hs[2], "/srv")
      local pb = on_two(dir, hs, "copies", [[
    step "old to here" { run = function(ctx)
      local r = fs.sync("/srv/x/src", ctx.params.d .. "/fromold", { from = "old" })
      assert(r.files == 5, json.encode(r))
    end },
    step "here to new" { run = function(ctx)
      hosts.new.fs.sync(ctx.params.d .. "/here", "/srv/y/fromhere", { from = "local" })
    end },
    step "old to new" { on = "new", run = function()
      fs.sync("/srv/x/src", "/srv/y/fromold", { from = "old" })
      fs.sync("/srv/x/src", "/srv/y/over", { from = "old", delete = true })
    end },
    step "on one host" { on = "old", run = function()
      fs.sync("/srv/y", "/srv/x/y-copy", { from = "old" })
    end },
]], 'd = ""')
      local r = run(env, { pb, "-p", "d=" .. dir })
      eq(r.code, 0, r.stdout .. r.stderr)
      local src = tree(hs[1].root .. "/srv/x/src")
      eq(tree(dir .. "/fromold"), src)
      eq(rooted(hs[2], "/srv/y/fromhere"), tree(dir .. "/here"))
      eq(rooted(hs[2], "/srv/y/fromold"), src)
      eq(rooted(hs[2], "/srv/y/over"), src, "over an existing tree, with delete")
      eq(rooted(hs[1], "/srv/x/y-copy"), tree(hs[1].root .. "/srv/y"))
      -- each copy is an effect of the machine the data went to, with its id there
      eq(sqlite(dir .. "/state/journal.db",
        "SELECT op, coalesce(host, '-'), remote IS NOT NULL FROM effects ORDER BY id"),
        "fs.sync|-|0\nfs.sync|new|1\nfs.sync|new|1\nfs.sync|new|1\nfs.sync|old|1\n")
      eq(sqlite(hs[2].root .. "/var/lib/hrun/agent/agent.db", "SELECT op, status FROM effects ORDER BY id"),
        "fs.sync|done\nfs.sync|done\nfs.sync|done\n")
      nothing_left(dir, hs)
      eq(exec.run({ "sh", "-c", "ls " .. hs[2].root .. "/var/lib/hrun/agent | grep -c relay || true" }).stdout, "0\n",
        "no relay socket left on the receiving host")
      -- the second time: every copy already so, nothing journaled
      r = run(env, { pb, "-p", "d=" .. dir })
      eq(r.code, 0, r.stdout .. r.stderr)
      eq(select(2, r.stdout:gsub(": ok %(", "")), 4, r.stdout)
      eq(sqlite(dir .. "/state/journal.db", "SELECT count(*) FROM effects WHERE run = 2"), "0\n")
      -- the rollback gives back every host's tree
      r = run(env, { "rollback", "1", "--yes" })
      eq(r.code, 0, r.stdout .. r.stderr)
      eq(rooted(hs[1], "/srv"), before1)
      eq(rooted(hs[2], "/srv"), before2)
      ok(not fs.exists(dir .. "/fromold"))
    end)

  it("btrfs.receive sends a snapshot between hosts and here, the difference from a parent; rollback deletes them",
    function()
      need("btrfs")
      local hs = ssh_hosts(2, { pools = true })
      local mnt = btrfs_volume(1)
      local _, code = hs[1]:sh("btrfs subvolume create /srv/pool/data >/dev/null && printf 'one\\n' > " ..
        "/srv/pool/data/f && btrfs subvolume snapshot -r /srv/pool/data /srv/pool/snap1 >/dev/null && " ..
        "printf 'two\\n' > /srv/pool/data/g && btrfs subvolume snapshot -r /srv/pool/data /srv/pool/snap2 >/dev/null")
      eq(code, 0)
      local dir, env = controller(hs)
      local pb = on_two(dir, hs, "receive", [[
    step "to new" { run = function()
      local r = hosts.new.btrfs.receive("/srv/pool/snap1", "/srv/pool", { from = "old" })
      assert(r.readonly and r.received_uuid, json.encode(r))
      hosts.new.btrfs.receive("/srv/pool/snap2", "/srv/pool", { from = "old", parent = "/srv/pool/snap1" })
    end },
    step "to here" { run = function(ctx)
      btrfs.receive("/srv/pool/snap1", ctx.params.mnt, { from = "old" })
    end },
    step "here to new" { run = function(ctx)
      btrfs.snapshot(ctx.params.mnt .. "/snap1", ctx.params.mnt .. "/mine", { readonly = true })
      hosts.new.btrfs.receive(ctx.params.mnt .. "/mine", "/srv/pool", { from = "local" })
    end },
]], 'mnt = ""')
      local r = run(env, { pb, "-p", "mnt=" .. mnt })
      eq(r.code, 0, r.stdout .. r.stderr)
      eq(fs.read(pool(hs[2]) .. "/snap1/f"), "one\n")
      eq(fs.read(pool(hs[2]) .. "/snap2/g"), "two\n")
      eq(fs.read(mnt .. "/snap1/f"), "one\n")
      eq(fs.read(pool(hs[2]) .. "/mine/f"), "one\n")
      local info = btrfs.info(mnt .. "/snap1")
      ok(info.readonly and info.received_uuid, "a received subvolume, read-only")
      eq(sqlite(dir .. "/state/journal.db", "SELECT op, coalesce(host, '-') FROM effects ORDER BY id"),
        "btrfs.receive|new\nbtrfs.receive|new\nbtrfs.receive|-\nbtrfs.snapshot|-\nbtrfs.receive|new\n")
      nothing_left(dir, hs)
      -- into a name that is taken: refused, naming it
      local pb2 = on_two(dir, hs, "again", [[
    step "again" { run = function()
      hosts.new.btrfs.receive("/srv/pool/snap1", "/srv/pool", { from = "old" })
    end },
]])
      r = run(env, { pb2 })
      eq(r.code, 1)
      has(r.stdout, "btrfs.receive: /srv/pool/snap1: File exists")
      r = run(env, { "rollback", "1", "--yes" })
      eq(r.code, 0, r.stdout .. r.stderr)
      local left = hs[2]:sh("btrfs subvolume list /srv/pool")
      eq(left, "", "every received subvolume deleted")
      ok(not fs.exists(mnt .. "/snap1") and not fs.exists(mnt .. "/mine"))
    end)

  it("names the host and path of what is wrong, and leaves nothing behind", function()
    local hs = ssh_hosts(2, { pools = true })
    local dir, env = controller(hs)
    hs[2]:sh("mkdir -p /srv/y")
    local before2 = rooted(hs[2], "/srv")
    local cases = {
      { 'hosts.new.fs.sync("/srv/nope", "/srv/y/z", { from = "old" })',
        "fs.sync: /srv/nope → /srv/y/z: rsync exited with code 23", "/srv/nope" },
      { 'hosts.new.fs.sync("/etc", "/srv/no/z", { from = "old" })', "fs.sync: /srv/no: No such file or directory" },
      { 'hosts.new.fs.sync("etc", "/srv/y/z", { from = "old" })',
        "fs.sync: etc: the source on another host must be an absolute path" },
      { 'hosts.new.fs.sync("/etc", "/srv/y/z", { from = "nosuch" })',
        "fs.sync: from = 'nosuch': the playbook has no such host" },
      { 'hosts.new.btrfs.receive("/srv/pool/nope", "/srv/pool", { from = "old" })',
        "btrfs.receive: /srv/pool/nope → /srv/pool: ", "unable to resolve /srv/pool/nope" },
      { 'hosts.new.btrfs.receive("/srv/pool/s", "/srv/y", { from = "old" })',
        "btrfs.receive: /srv/y: not on a btrfs filesystem" },
    }
    for i, c in ipairs(cases) do
      local pb = on_two(dir, hs, "bad" .. i, string.format('    step "bad" { run = function() %s end },\n', c[1]))
      local r = run(env, { pb })
      eq(r.code, 1, r.stdout .. r.stderr)
      has(r.stdout, c[2])
      if c[3] then
        has(r.stdout, c[3])
      end
      eq(rooted(hs[2], "/srv"), before2, c[1])
    end
    nothing_left(dir, hs)
  end)

  it("a copy cut by its step's timeout, or by a SIGKILL of hrun, is stopped everywhere and rolled back", function()
    local hs = ssh_hosts(2)
    local _, code = hs[1]:sh("mkdir -p /srv/big && head -c 200M /dev/zero > /srv/big/blob && " ..
      "head -c 1M /dev/urandom > /srv/big/small")
    eq(code, 0)
    local dir, env = controller(hs)
    local before2 = rooted(hs[2], "/srv")
    local pb = on_two(dir, hs, "slow", [[
    step "copy" { timeout = 0.5, run = function(ctx)
      hosts.new.fs.sync("/srv/big", "/srv/big", { from = "old", checksum = true })
    end },
]])
    local r = run(env, { pb })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "timed out after 0.5 s")
    has(r.stdout, "failed and rolled back")
    nothing_left(dir, hs)
    eq(rooted(hs[2], "/srv"), before2)
    -- hrun SIGKILLed in the copy (here, from the old host): its rollback stops what is left
    pb = on_two(dir, hs, "killed", [[
    step "copy" { run = function(ctx)
      fs.sync("/srv/big", ctx.params.d .. "/big", { from = "old", checksum = true })
    end },
]], 'd = ""')
    r = exec.run({ "sh", "-c", '"$@" > /dev/null 2>&1 & pid=$!; i=0; ' ..
      'while [ ! -e "' .. dir .. '/big" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; ' ..
      'sleep 0.2; kill -KILL $pid', "killer", HRUN, pb, "-p", "d=" .. dir }, { env = env, check = false })
    eq(r.code, 0, r.stderr)
    r = run(env, { "rollback", "--yes" })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(not fs.exists(dir .. "/big"), "the partial copy is gone")
    nothing_left(dir, hs)
  end)

  it("a sandboxed playbook reads a copy's source only where its capabilities on that host say", function()
    local hs = ssh_hosts(2)
    hs[1]:sh("mkdir -p /srv/x/src /srv/secret && printf 'data\\n' > /srv/x/src/f && printf 'key\\n' > /srv/secret/k")
    hs[2]:sh("mkdir -p /srv/y")
    local dir, env = controller(hs)
    local pb = playbook_file(dir, "boxed.lua", string.format([[
return playbook {
  name = "boxed", hosts = { old = %q, new = %q }, params = { src = "/srv/x/src" },
  capabilities = { "fs@old:/srv/x", "fs@new:/srv/y" },
  phase "copy" {
    step "copy" { run = function(ctx) hosts.new.fs.sync(ctx.params.src, "/srv/y/copy", { from = "old" }) end },
  },
}
]], hs[1].url, hs[2].url))
    local r = run(env, { pb, "--sandbox" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[2].root .. "/srv/y/copy/f"), "data\n")
    r = run(env, { pb, "--sandbox", "-p", "src=/srv/secret" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "sandbox: fs.read on host 'old' needs the capability 'fs@old:/srv/secret'")
    ok(not fs.exists(hs[2].root .. "/srv/y/copy/k"), "nothing of it crossed")
  end)
end)
