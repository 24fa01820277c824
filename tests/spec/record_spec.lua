-- The record: hrun show and --md keep each step's ctx.log lines, the rollback's
-- timeline and what an undo function wrote; hrun runs counts a run's steps against its
-- playbook's; keep = true writes stay through rollbacks; hrun gc removes what finished
-- runs left (restore asides, stashes) and nothing an unfinished run needs; names made
-- in the same second do not collide.

local RECORDED = [[
return playbook {
  name = "recorded", params = { dir = "", fail = true },
  phase "p" {
    step "write" { run = function(ctx)
      ctx.log("writing %s", "a")
      fs.write(ctx.params.dir .. "/a", "A")
    end },
    step "backup" { run = function(ctx)
      fs.copy(ctx.params.dir .. "/a", ctx.params.dir .. "/a.bak", { keep = true })
      fs.write(ctx.params.dir .. "/b", "B")
    end },
    step "own undo" {
      run = function(ctx)
        ctx.log("u runs")
        fs.write(ctx.params.dir .. "/u", "U")
      end,
      undo = function(ctx)
        ctx.log("undoing u")
        fs.remove(ctx.params.dir .. "/u")
      end,
    },
    step "last" { run = function(ctx)
      if ctx.params.fail then error("last fails") end
    end },
  },
}
]]

local function recorded()
  local d = tmpdir()
  fs.mkdir(d .. "/data")
  return playbook_file(d, "recorded.lua", RECORDED), d .. "/data", d .. "/state"
end

describe("hrun show and --md", function()
  it("give the log lines, the rollback's timeline and what an undo function wrote", function()
    local p, data, state = recorded()
    local r = hrun_cmd({ p, "--state", state, "-p", "dir=" .. data })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "undo fs.copy: kept", "the rollback says the backup is kept")
    eq(fs.read(data .. "/a.bak"), "A", "the kept backup stays")
    eq(fs.exists(data .. "/a"), false, "the rest is undone")
    eq(fs.exists(data .. "/b"), false)
    eq(fs.exists(data .. "/u"), false)

    local s = hrun_cmd({ "show", "1", "--state", state })
    eq(s.code, 0, s.stderr)
    has(s.stdout, "        log: writing a")
    has(s.stdout, "        log: u runs")
    has(s.stdout, "fs.copy " .. data .. "/a " .. data .. "/a.bak  [done, kept]")
    has(s.stdout, "kept: a rollback leaves it")
    has(s.stdout, "rollback from ")
    has(s.stdout, ": step 'last' failed: ")
    -- newest first, each with how
    local last = s.stdout:find("p/last: undone (inverses)", 1, true)
    local own = s.stdout:find("p/own undo: undone (undo)", 1, true)
    local backup = s.stdout:find("p/backup: undone (inverses)", 1, true)
    local write = s.stdout:find("p/write: undone (inverses)", 1, true)
    ok(last and own and backup and write and last < own and own < backup and backup < write,
      "the steps undone in order: " .. s.stdout)
    has(s.stdout, "log: undoing u")
    has(s.stdout, "its undo function: ok; it wrote to path " .. data .. "/u")
    has(s.stdout, "undo fs.write " .. data .. "/b B: undone (inverse)")
    has(s.stdout, "op 1 fs.remove " .. data .. "/b")
    has(s.stdout, "undo fs.copy " .. data .. "/a " .. data .. "/a.bak: kept")
    has(s.stdout, "ended: rolled-back")

    local md = hrun_cmd({ "show", "1", "--md", "--state", state })
    eq(md.code, 0, md.stderr)
    has(md.stdout, "  - log: `writing a`")
    has(md.stdout, "### Rollback, ")
    has(md.stdout, "- **Why:** `step 'last' failed: ")
    has(md.stdout, "- `its undo function: ok; it wrote to path " .. data .. "/u`")
    has(md.stdout, "(kept: a rollback leaves it)")
    has(md.stdout, "- **Ended:** rolled-back at ")

    local js = hrun_cmd({ "show", "1", "--json", "--state", state })
    eq(js.code, 0, js.stderr)
    local run = json.decode(js.stdout)
    local logs, kept = {}, 0
    for _, e in ipairs(run.events) do
      eq(type(e.data), "table", "each event's data is an object")
      if e.event == "log" then
        logs[#logs + 1] = e.data.message
      elseif e.event == "undo-effect" and e.data.status == "kept" then
        kept = kept + 1
      end
    end
    eq(logs, { "writing a", "u runs", "undoing u" })
    eq(kept, 1)
  end)

  it("plans say a kept write is kept, and a keep that is not a boolean is refused", function()
    local p, data, state = recorded()
    local r = hrun_cmd({ "plan", p, "--state", state, "-p", "dir=" .. data, "-p", "fail=false" })
    has(r.stdout, "would fs.copy " .. data .. "/a " .. data .. "/a.bak  [kept: a rollback leaves it]")
    local d = tmpdir()
    local bad = playbook_file(d, "bad.lua", [[
return playbook { name = "bad", params = { dir = "" },
  phase "p" { step "s" { run = function(ctx) fs.write(ctx.params.dir .. "/x", "x", { keep = "yes" }) end } } }]])
    r = hrun_cmd({ bad, "--state", state, "-p", "dir=" .. data })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "bad argument #3 to 'fs.write' (field 'keep': boolean expected, got string)")
    eq(fs.exists(data .. "/x"), false)
  end)

  -- keep is taken from a write's options only: a request's body (or an argv) that has a
  -- key named keep goes as it is
  it("takes keep from a write's options, never from a body", function()
    local url = http_server()
    local d = tmpdir()
    local p = playbook_file(d, "post.lua", [[
return playbook { name = "post", params = { url = "" },
  phase "p" { step "s" { irreversible = true, run = function(ctx)
    local r = http.post(ctx.params.url .. "/echo", { keep = true, n = 1 })
    ctx.log("sent %s", json.decode(r.body).body)
    http.post(ctx.params.url .. "/echo", "x", { keep = true })
  end } } }]])
    local r = hrun_cmd({ p, "--state", d .. "/state", "-p", "url=" .. url, "-v" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, 'sent {"keep":true,"n":1}')
    has(r.stdout, "[kept")
  end)

  it("keeps a kept write through hrun rollback of a finished run, in the sandbox too", function()
    local d = tmpdir()
    fs.mkdir(d .. "/data")
    local p = sandboxed_playbook(d, { caps = { "fs:" .. d .. "/data" }, params = 'dir = ""', steps = [[
    step "s" { run = function(ctx)
      fs.write(ctx.params.dir .. "/backup", "old config", { keep = true, mode = "0600" })
      fs.write(ctx.params.dir .. "/config", "new config")
    end },]] })
    local state = d .. "/state"
    local r = hrun_cmd({ p, "--sandbox", "--state", state, "-p", "dir=" .. d .. "/data" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(string.format("%o", fs.stat(d .. "/data/backup").mode), "600", "the other options reach the write")
    r = hrun_cmd({ "rollback", "1", "--plan", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "[kept (keep = true): a rollback leaves it]")
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "undo fs.write: kept")
    eq(fs.read(d .. "/data/backup"), "old config")
    eq(fs.exists(d .. "/data/config"), false)
    has(hrun_cmd({ "show", "1", "--state", state }).stdout, "[done, kept]")
  end)

  -- the directory a run made for its kept dump stays with it: its undo (fs.remove)
  -- would fail on the dump, and the rollback would be incomplete
  for _, sandbox in ipairs({ false, true }) do
    it("keeps the directories that hold a kept write" .. (sandbox and " (--sandbox)" or ""), function()
      local d = tmpdir()
      fs.mkdir(d .. "/data")
      local p = sandboxed_playbook(d, { caps = { "fs:" .. d .. "/data" }, params = 'dir = "", fail = true', steps = [[
      step "dump" { run = function(ctx)
        fs.mkdir(ctx.params.dir .. "/backups/pre", { parents = true })
        fs.mkdir(ctx.params.dir .. "/scratch")
        fs.write(ctx.params.dir .. "/backups/pre/dump.sql", "dump", { keep = true })
      end },
      step "fail" { run = function(ctx) if ctx.params.fail then error("as asked") end end },]] })
      local state = d .. "/state"
      local r = hrun_cmd({ p, "--state", state, "-p", "dir=" .. d .. "/data", sandbox and "--sandbox" or nil })
      eq(r.code, 1, r.stdout .. r.stderr)
      has(r.stdout, "rolled back")
      eq(fs.read(d .. "/data/backups/pre/dump.sql"), "dump")
      eq(fs.exists(d .. "/data/scratch"), false, "what holds nothing kept is undone")
      -- the same through hrun rollback of a finished run
      fs.remove(d .. "/data/backups", { recursive = true })
      r = hrun_cmd({ p, "--state", state, "-p", "dir=" .. d .. "/data", "-p", "fail=false",
        sandbox and "--sandbox" or nil })
      eq(r.code, 0, r.stdout .. r.stderr)
      r = hrun_cmd({ "rollback", "--state", state })
      eq(r.code, 0, r.stdout .. r.stderr)
      eq(fs.read(d .. "/data/backups/pre/dump.sql"), "dump")
      eq(fs.exists(d .. "/data/scratch"), false)
    end)
  end
end)

describe("hrun runs", function()
  it("counts a run's steps against its playbook's while it has not ended", function()
    local p, data, state = recorded()
    local r = hrun_cmd({ p, "--state", state, "-p", "dir=" .. data }, { env = { HRUN_TEST_CRASH = "step-start:2" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    local runs = hrun_cmd({ "runs", "--state", state })
    eq(runs.code, 0, runs.stderr)
    ok(runs.stdout:find("crashed%s+%-%s+1/4") ~= nil, "one of four steps done: " .. runs.stdout)
    local js = json.decode(hrun_cmd({ "runs", "--json", "--state", state }).stdout)
    eq(js.steps_total, 4)
    eq(hrun_cmd({ "rollback", "--state", state }).code, 0)
  end)
end)

describe("an older journal", function()
  it("is migrated; its runs count the steps they journaled", function()
    need("sqlite3")
    local p, data, state = recorded()
    eq(hrun_cmd({ p, "--state", state, "-p", "dir=" .. data, "-p", "fail=false" }).code, 0)
    -- the journal as schema 5 left it
    exec.run({ "sqlite3", state .. "/journal.db" }, { stdin = [[DROP TABLE collections; DROP TABLE notifications;
      ALTER TABLE runs DROP COLUMN selection; ALTER TABLE runs DROP COLUMN steps_total;
      ALTER TABLE runs DROP COLUMN collected;
      ALTER TABLE effects DROP COLUMN kept; ALTER TABLE steps DROP COLUMN changed;
      DROP TABLE meta; DROP TABLE fleet_hosts; ALTER TABLE effects DROP COLUMN host;
      ALTER TABLE effects DROP COLUMN remote;
      ALTER TABLE runs DROP COLUMN hosts;
      PRAGMA user_version = 5;]] })
    local runs = hrun_cmd({ "runs", "--state", state })
    eq(runs.code, 0, runs.stderr)
    ok(runs.stdout:find("done%s+[%d.]+s%s+4/4") ~= nil, runs.stdout)
    eq(exec.run({ "sqlite3", state .. "/journal.db", "PRAGMA user_version" }).stdout,
      require("hrun.journal").schema_version .. "\n")
    local show = hrun_cmd({ "show", "1", "--state", state })
    eq(show.code, 0, show.stderr)
    has(show.stdout, "log: writing a")
  end)
end)

describe("hrun gc", function()
  it("refuses a missing or bad duration (exit 3)", function()
    local state = tmpdir()
    local r = hrun_cmd({ "gc", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "gc needs --older-than DURATION")
    for _, bad in ipairs({ "3x", "30", "d", "-1d", "1.5d", "30d12", "" }) do
      r = hrun_cmd({ "gc", "--older-than", bad, "--state", state })
      eq(r.code, 3, bad)
      has(r.stderr, "--older-than " .. bad .. ": expected a duration such as 30d, 12h, 2w", bad)
    end
    r = hrun_cmd({ "gc", "--older-than", "1d12h", "--state", state })
    eq(r.code, 0, r.stderr)
  end)

  local RESTORE = [[
return playbook { name = "restore", params = { mnt = "", stop = false },
  on_failure = "rollback",
  phase "p" {
    step "restore" { run = function(ctx)
      ctx.state.aside = btrfs.restore(ctx.params.mnt .. "/pre", ctx.params.mnt .. "/@data")
    end },
  } }]]

  -- killed in the middle, gc has journaled first which runs lose what their undo needs:
  -- none of them looks rollbackable and is not
  it("journals the runs it makes not rollbackable before it removes anything", function()
    local d = tmpdir()
    fs.mkdir(d .. "/data")
    fs.write(d .. "/data/a", "old a")
    fs.write(d .. "/data/b", "old b")
    local p = playbook_file(d, "two.lua", [[
return playbook { name = "two", params = { dir = "" },
  phase "p" { step "s" { run = function(ctx)
    fs.write(ctx.params.dir .. "/a", "new a")
    fs.write(ctx.params.dir .. "/b", "new b")
  end } } }]])
    local state = d .. "/state"
    eq(hrun_cmd({ p, "--state", state, "-p", "dir=" .. d .. "/data" }).code, 0)
    local r = hrun_cmd({ "gc", "--older-than", "0s", "--state", state }, { env = { HRUN_TEST_CRASH = "gc-remove:1" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "run 1 can no longer be rolled back: hrun gc removed what its undo needs")
    eq(fs.read(d .. "/data/a"), "new a", "nothing half undone")
  end)

  -- a journaled btrfs.prune that deletes an aside a finished run's undo needs says so,
  -- and that run is collected as after hrun gc
  it("a prune of a finished run's aside makes that run collected", function()
    local mnt, _, dir = btrfs_volume(1)
    btrfs.create(mnt .. "/@data")
    btrfs.snapshot(mnt .. "/@data", mnt .. "/pre", { readonly = true })
    local state = dir .. "/state"
    local p = playbook_file(dir, "restore.lua", RESTORE)
    eq(hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt }).code, 0)
    eq(hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt }).code, 0)
    local prune = playbook_file(dir, "prune.lua", [[
return playbook { name = "prune", params = { mnt = "" },
  phase "p" { step "prune" { irreversible = true, run = function(ctx)
    btrfs.prune(ctx.params.mnt, { keep_last = 1, asides_of = "@data" })
  end } } }]])
    local r = hrun_cmd({ prune, "--state", state, "-p", "mnt=" .. mnt })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "run 1 can no longer be rolled back: this prune deleted what its undo needs")
    eq(#fs.glob(mnt .. "/@data.hrun-1-*"), 0)
    has(hrun_cmd({ "show", "1", "--state", state }).stdout, "  collected  ")
    ok(not hrun_cmd({ "show", "2", "--state", state }).stdout:find("  collected  ", 1, true), "run 2's aside is kept")
  end)

  it("removes the restore asides and stashes of finished runs, never an unfinished run's", function()
    local mnt, _, dir = btrfs_volume(1)
    btrfs.create(mnt .. "/@data")
    fs.write(mnt .. "/@data/f", "one")
    btrfs.snapshot(mnt .. "/@data", mnt .. "/pre", { readonly = true })
    local state = dir .. "/state"
    local p = playbook_file(dir, "restore.lua", RESTORE)
    -- run 1 finishes: its aside is what `hrun rollback 1` needs
    eq(hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt }).code, 0)
    local first = fs.glob(mnt .. "/@data.hrun-1-*")
    eq(#first, 1, "run 1 set one aside")
    -- run 2 crashes after its restore: not finished, its aside stays
    local r = hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt }, { env = { HRUN_TEST_CRASH = "effect-done:1" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    local second = fs.glob(mnt .. "/@data.hrun-2-*")
    eq(#second, 1, "run 2 set one aside")
    local before = tree(mnt)
    local stash1 = fs.exists(state .. "/runs/1")

    local dry = hrun_cmd({ "gc", "--older-than", "0s", "--dry-run", "--state", state })
    eq(dry.code, 0, dry.stdout .. dry.stderr)
    has(dry.stdout, "would remove restore aside " .. first[1] .. " (run 1)")
    has(dry.stdout, "run 1 would no longer be rolled back")
    eq(dry.stdout:find(second[1], 1, true), nil, "the crashed run's aside is not listed")
    eq(tree(mnt), before, "--dry-run changes nothing")
    eq(fs.exists(state .. "/runs/1"), stash1)

    local gc = hrun_cmd({ "gc", "--older-than", "1w", "--state", state })
    eq(gc.code, 0, gc.stderr)
    has(gc.stdout, "gc: removed 0 of 0 items")
    eq(tree(mnt), before, "nothing is old enough")

    gc = hrun_cmd({ "gc", "--older-than", "0s", "--state", state })
    eq(gc.code, 0, gc.stdout .. gc.stderr)
    has(gc.stdout, "removed restore aside " .. first[1] .. " (run 1)")
    has(gc.stdout, "run 1 can no longer be rolled back")
    eq(fs.exists(first[1]), false, "the finished run's aside is gone")
    ok(btrfs.is_subvolume(second[1]), "the crashed run's aside stays")
    eq(fs.exists(state .. "/runs/1"), false, "the finished run's stash is gone")
    ok(fs.exists(state .. "/runs/2"), "the crashed run's stash stays")
    eq(fs.read(mnt .. "/@data/f"), "one")

    has(hrun_cmd({ "show", "1", "--state", state }).stdout, "  collected  by hrun gc at ")
    has(hrun_cmd({ "runs", "--state", state }).stdout, "collected by hrun gc ")
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "run 1 can no longer be rolled back: hrun gc removed what its undo needs")
    -- the crashed run still rolls back with what it needs
    r = hrun_cmd({ "rollback", "2", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(#fs.glob(mnt .. "/@data.hrun-*"), 0)
  end)
end)

describe("names made in the same second", function()
  it("two snapshots and two restores of one subvolume in a second both succeed", function()
    local mnt, _, dir = btrfs_volume(1)
    btrfs.create(mnt .. "/@data")
    btrfs.snapshot(mnt .. "/@data", mnt .. "/pre", { readonly = true })
    local script = dir .. "/twice.lua"
    fs.write(script, [[
local mnt = ...
local migrate = require "hrun.migrate"
local ctx = { state = {}, plan = false, log = function() end }
local t0 = sys.now()
local a = migrate.snapshot(ctx, mnt, { "@data" })["@data"]
local b = migrate.snapshot(ctx, mnt, { "@data" })["@data"]
local x = assert(btrfs.restore(mnt .. "/pre", mnt .. "/@data"))
local y = assert(btrfs.restore(mnt .. "/pre", mnt .. "/@data"))
io.write(json.encode({ a = a, b = b, x = x, y = y, seconds = sys.now() - t0 }))]])
    local r = hrun_cmd({ script, mnt })
    eq(r.code, 0, r.stdout .. r.stderr)
    local out = json.decode(r.stdout)
    ok(out.a ~= out.b and btrfs.is_subvolume(out.a) and btrfs.is_subvolume(out.b), "two snapshots: " .. r.stdout)
    ok(out.x ~= out.y and btrfs.is_subvolume(out.x) and btrfs.is_subvolume(out.y), "two asides: " .. r.stdout)
    ok(out.a:match("%.%d%d%d%d%d%dZ$"), "to the microsecond: " .. out.a)

    -- prune's asides_of: the asides of @data, newest kept, the target never touched
    local prune = dir .. "/prune.lua"
    fs.write(prune, "local mnt = ...\nio.write(json.encode(btrfs.prune(mnt, { keep_last = 1, asides_of = '@data' })))")
    r = hrun_cmd({ prune, mnt })
    eq(r.code, 0, r.stderr)
    local res = json.decode(r.stdout)
    eq(#res.kept, 1)
    eq(#res.deleted, 1)
    eq(mnt .. "/" .. res.kept[1], out.y, "the newest aside is kept")
    ok(btrfs.is_subvolume(mnt .. "/@data"))
    ok(btrfs.is_subvolume(mnt .. "/pre"))
    r = hrun_cmd({ "-e", "btrfs.prune('" .. mnt .. "', { keep_last = 1, asides_of = 'a/b' })" })
    eq(r.code, 1)
    has(r.stderr, "field 'asides_of': the name of a subvolume in dir")
  end)
end)
