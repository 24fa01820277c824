-- Rollback you can trust: every undo attempt is journaled, a step is undone only when its
-- undo succeeded and the next hrun rollback retries exactly what is not; an inverse that
-- finds its work done succeeds and one that finds its target changed since the run
-- leaves it (unless --force); a step is undone by the playbook version that ran it; a
-- rollback under later runs is refused; hrun resolve closes a run by hand; a run keeps
-- its own outcome and time beside its rollback's.

local function world()
  local d = tmpdir()
  fs.mkdir(d .. "/data")
  return d, d .. "/data", d .. "/state"
end

local function show(state, run)
  return json.decode(hrun_cmd({ "show", tostring(run or 1), "--json", "--state", state }).stdout)
end

local function step_of(run, name)
  local found
  for _, s in ipairs(run.steps) do
    if s.name == name then
      found = s
    end
  end
  return found
end

-- A step whose undo raises until a flag file exists, then a step that fails.
local FLAGGED = [[
return playbook { name = "flagged", params = { data = "" },
  phase "p" {
    step "svc" {
      run = function(ctx) fs.write(ctx.params.data .. "/svc", "on") end,
      undo = function(ctx)
        if not fs.exists(ctx.params.data .. "/flag") then error("flag missing: cannot undo yet") end
        fs.write(ctx.params.data .. "/undone-by-function", "yes")
        fs.remove(ctx.params.data .. "/svc")
      end,
    },
    step "edit" { run = function(ctx) fs.write(ctx.params.data .. "/config", "new") end },
    step "boom" { run = function(ctx) if ctx.params.fail then error("boom") end end },
  } }
]]

local function failing(src)
  return (src:gsub('params = { data = "" }', 'params = { data = "", fail = true }'))
end

describe("a failed undo", function()
  it("leaves the run rollback-incomplete, says why, and is run again by the next rollback", function()
    local d, data, state = world()
    fs.write(data .. "/config", "old")
    local p = playbook_file(d, "flagged.lua", failing(FLAGGED))
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 2, r.stdout .. r.stderr)
    eq(fs.read(data .. "/config"), "old", "the other steps were undone")
    local run = show(state)
    eq(run.status, "rollback-incomplete")
    eq(step_of(run, "svc").undo_status, "undo-failed")
    eq(step_of(run, "edit").undo_status, "undone")
    has(hrun_cmd({ "show", "1", "--state", state }).stdout, "p/svc: ")
    has(hrun_cmd({ "show", "1", "--md", "--state", state }).stdout, "flag missing: cannot undo yet")
    -- the same again: still not undone, by the same means
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 2, r.stdout .. r.stderr)
    eq(fs.exists(data .. "/undone-by-function"), false)
    -- the cause fixed, the undo function runs (not the inverses), and only it
    fs.write(data .. "/flag", "")
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/undone-by-function"), "yes")
    eq(fs.exists(data .. "/svc"), false)
    run = show(state)
    eq(run.status, "rolled-back")
    eq(step_of(run, "svc").undo_status, "undone")
    local hows = {}
    for _, u in ipairs(step_of(run, "svc").undos) do
      hows[#hows + 1] = u.how .. ":" .. u.status
    end
    eq(hows, { "undo:failed", "undo:failed", "undo:ok" }, "every attempt journaled")
    has(hrun_cmd({ "rollback", "1", "--state", state }).stdout, "already rolled back")
  end)

  it("is run again after Ctrl-C stopped it", function()
    local d, data, state = world()
    local p = playbook_file(d, "slow.lua", [[
return playbook { name = "slow", params = { data = "" },
  phase "p" {
    step "a" {
      run = function(ctx) fs.write(ctx.params.data .. "/a", "1") end,
      undo = function(ctx)
        if not fs.exists(ctx.params.data .. "/quick") then
          fs.write(ctx.params.data .. "/undoing", "")
          sys.sleep(20)
        end
        fs.remove(ctx.params.data .. "/a")
        fs.write(ctx.params.data .. "/undo-ran", "yes")
      end,
    },
  } }]])
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    local r = exec.sh(string.format("%s rollback 1 --state %s >%s/out 2>&1 & pid=$!; " ..
      "for i in $(seq 200); do [ -e %s/undoing ] && break; sleep 0.05; done; kill -INT $pid; wait $pid; echo status=$?",
      shq(HRUN), shq(state), shq(d), shq(data)), { timeout = 30 })
    has(r.stdout, "status=2")
    eq(show(state).status, "rollback-incomplete")
    eq(fs.exists(data .. "/undo-ran"), false)
    fs.write(data .. "/quick", "")
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/undo-ran"), "yes")
    eq(fs.exists(data .. "/a"), false)
  end)
end)

describe("careful inverses", function()
  local WRITE = [[
return playbook { name = "write", params = { data = "" },
  phase "p" {
    step "new file" { run = function(ctx) fs.write(ctx.params.data .. "/made", "by the run") end },
    step "overwrite" { run = function(ctx) fs.write(ctx.params.data .. "/config", "v2") end },
    step "dir" { run = function(ctx) fs.mkdir(ctx.params.data .. "/dir") end },
  } }]]

  it("count as undone what is already back as it was", function()
    local d, data, state = world()
    fs.write(data .. "/config", "v1")
    local before = tree(data)
    local p = playbook_file(d, "write.lua", WRITE)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    -- a person undid it all by hand already
    fs.remove(data .. "/made")
    fs.write(data .. "/config", "v1")
    fs.remove(data .. "/dir")
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(tree(data), before)
    local run = show(state)
    eq(run.status, "rolled-back")
    for _, s in ipairs(run.steps) do
      eq(s.undo_status, "undone", s.name)
      eq(s.undos[1].how, "already-undone", s.name)
    end
  end)

  it("act where the write did: a relative path, rolled back from another directory", function()
    local d, _, state = world()
    fs.mkdir(d .. "/work")
    fs.mkdir(d .. "/other/victim", { parents = true })
    fs.write(d .. "/other/victim/precious", "keep me")
    local p = playbook_file(d, "rel.lua", [[
return playbook { name = "rel",
  phase "p" {
    step "relative" { run = function()
      fs.write("victim", "made here")
      exec.run({ "sh", "-c", "echo ran > ran" }, { cwd = ".", undo = { "rm", "-f", "ran" } })
    end },
  } }]])
    local r = hrun_cmd({ p, "--state", state }, { cwd = d .. "/work" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/work/victim"), "made here")
    fs.write(d .. "/other/ran", "theirs")
    r = hrun_cmd({ "rollback", "1", "--state", state }, { cwd = d .. "/other" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.exists(d .. "/work/victim"), false, "undone where it was written")
    eq(fs.exists(d .. "/work/ran"), false, "the undo command ran where the command did")
    eq(fs.read(d .. "/other/victim/precious"), "keep me", "not the other directory's")
    eq(fs.read(d .. "/other/ran"), "theirs")
  end)

  it("leave what changed since the run, name it, and overwrite it only with --force", function()
    local d, data, state = world()
    fs.write(data .. "/config", "v1")
    local before = tree(data)
    local p = playbook_file(d, "write.lua", WRITE)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    fs.write(data .. "/config", "edited by a person")
    fs.write(data .. "/dir/new", "a file made since")
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 2, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, data .. "/config")
    has(r.stdout .. r.stderr, "changed since the run")
    eq(fs.read(data .. "/config"), "edited by a person", "not overwritten")
    eq(fs.read(data .. "/dir/new"), "a file made since")
    eq(fs.exists(data .. "/made"), false, "what did not change is undone")
    local run = show(state)
    eq(run.status, "rollback-incomplete")
    eq(step_of(run, "new file").undo_status, "undone")
    eq(step_of(run, "overwrite").undo_status, "undo-failed")
    has(step_of(run, "overwrite").undo_error, data .. "/config: the run left file 0644 root:root 2 bytes")
    -- the person's file goes away, and --force puts the config back
    fs.remove(data .. "/dir/new")
    r = hrun_cmd({ "rollback", "1", "--force", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(tree(data), before)
  end)
end)

describe("the playbook as it ran", function()
  it("undoes a step with the version that ran it, not the file as it is now", function()
    local d, data, state = world()
    local src = [[
return playbook { name = "versions", params = { data = "" },
  phase "p" {
    step "a" {
      run = function(ctx) fs.write(ctx.params.data .. "/a", "1") end,
      undo = function(ctx) fs.remove(ctx.params.data .. "/a"); fs.write(ctx.params.data .. "/undone-by", "VERSION") end,
    },
  } }]]
    local p = playbook_file(d, "versions.lua", (src:gsub("VERSION", "first")))
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    fs.write(p, (src:gsub("VERSION", "second")))
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/undone-by"), "first")
  end)

  it("keeps each version a --debug retry ran, and show lists the retry", function()
    local d, data, state = world()
    local src = [[
return playbook { name = "retry", params = { data = "" },
  phase "p" {
    step "first" {
      run = function(ctx) fs.write(ctx.params.data .. "/first", "1") end,
      undo = function(ctx)
        fs.remove(ctx.params.data .. "/first")
        fs.write(ctx.params.data .. "/first-undone", "V1")
      end,
    },
    step "second" {
      run = function(ctx) fs.write(ctx.params.data .. "/second", "x"); BROKEN end,
      undo = function(ctx)
        fs.remove(ctx.params.data .. "/second")
        fs.write(ctx.params.data .. "/second-undone", "V1")
      end,
    },
  } }]]
    local p = playbook_file(d, "retry.lua", (src:gsub("BROKEN", 'error("broken")')))
    local t = terminal(string.format("%s %s --state %s -p data=%s --no-color --debug; echo EXIT=$?; sleep 60",
      shq(HRUN), shq(p), shq(state), shq(data)))
    t:wait("failed: step 'second'")
    fs.write(p, (src:gsub("BROKEN", ""):gsub("V1", "V2")))
    t:line("retry()", "EXIT=0")
    local run = show(state)
    eq(run.status, "done")
    has(hrun_cmd({ "show", "1", "--state", state }).stdout, "ran again (attempt 2)")
    has(hrun_cmd({ "show", "1", "--state", state }).stdout, "with the playbook as reloaded")
    -- the file changes once more: each step is undone by the version that ran it
    fs.write(p, (src:gsub("BROKEN", ""):gsub("V1", "V3")))
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/first-undone"), "V1")
    eq(fs.read(data .. "/second-undone"), "V2")
  end)
end)

describe("rolling back out of order", function()
  local CONF = [[
return playbook { name = "conf", params = { data = "", value = "" },
  phase "p" {
    step "write" { run = function(ctx) fs.write(ctx.params.data .. "/config", ctx.params.value) end },
  } }]]

  it("is refused when a later run touched the same targets, and --plan shows it", function()
    local d, data, state = world()
    fs.write(data .. "/config", "v0")
    fs.write(data .. "/other", "o")
    local p = playbook_file(d, "conf.lua", CONF)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data, "-p", "value=v1" }).code, 0)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data, "-p", "value=v2" }).code, 0)
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "run 2 (conf, done) changed since run 1 what its rollback would undo: " .. data .. "/config")
    eq(fs.read(data .. "/config"), "v2", "nothing changed")
    eq(show(state, 1).status, "done")
    -- the plan: what would be undone, in order, with its target; nothing changes
    r = hrun_cmd({ "rollback", "1", "--plan", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "step 'write' (phase p)")
    has(r.stdout, "target: " .. data .. "/config")
    has(r.stdout, "changed since the run")
    r = hrun_cmd({ "rollback", "2", "--plan", "--json", "--state", state })
    local events = {}
    for line in r.stdout:gmatch("[^\n]+") do
      events[#events + 1] = json.decode(line)
    end
    eq(events[1].event, "undo-planned")
    eq(events[1].targets, { data .. "/config" })
    eq(events[1].note, "will be undone")
    eq(events[#events].event, "rollback-plan")
    eq(fs.read(data .. "/config"), "v2")
    eq(show(state, 2).status, "done")
    -- newest first works; then the older one is in nobody's way
    eq(hrun_cmd({ "rollback", "2", "--state", state }).code, 0)
    eq(fs.read(data .. "/config"), "v1")
    eq(hrun_cmd({ "rollback", "1", "--state", state }).code, 0)
    eq(fs.read(data .. "/config"), "v0")
  end)

  it("goes ahead with --force", function()
    local d, data, state = world()
    fs.write(data .. "/config", "v0")
    local p = playbook_file(d, "conf.lua", CONF)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data, "-p", "value=v1" }).code, 0)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data, "-p", "value=v2" }).code, 0)
    local r = hrun_cmd({ "rollback", "1", "--force", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/config"), "v0")
  end)

  it("is not refused for later runs that touched other things", function()
    local d, data, state = world()
    fs.write(data .. "/config", "v0")
    local p = playbook_file(d, "conf.lua", CONF)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data, "-p", "value=v1" }).code, 0)
    local d2 = d .. "/data2"
    fs.mkdir(d2)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. d2, "-p", "value=x" }).code, 0)
    eq(hrun_cmd({ "rollback", "1", "--state", state }).code, 0)
    eq(fs.read(data .. "/config"), "v0")
    eq(fs.read(d2 .. "/config"), "x")
  end)
end)

describe("hrun resolve", function()
  it("closes a rollback-incomplete run by hand, journaled and shown", function()
    local d, data, state = world()
    local p = playbook_file(d, "flagged.lua", failing(FLAGGED))
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 2)
    local r = hrun_cmd({ "resolve", "1", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "resolve needs -m")
    r = hrun_cmd({ "resolve", "1", "-m", "stopped the service by hand", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "run 1 (rollback-incomplete) resolved by")
    local run = show(state)
    eq(run.status, "resolved")
    eq(run.resolved, "stopped the service by hand")
    eq(run.outcome, "rollback-incomplete")
    has(hrun_cmd({ "runs", "--state", state }).stdout, "resolved by")
    has(hrun_cmd({ "show", "1", "--md", "--state", state }).stdout, "**Resolved** by")
  end)

  it("refuses a run that finished", function()
    local d, data, state = world()
    local p = playbook_file(d, "flagged.lua", FLAGGED)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    local r = hrun_cmd({ "resolve", "1", "-m", "why", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "run 1 is done: only a run whose rollback is incomplete, or that crashed")
  end)

  it("closes a crashed run", function()
    local d, data, state = world()
    local p = playbook_file(d, "flagged.lua", FLAGGED)
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data }, { env = { HRUN_TEST_CRASH = "step-done:1" } })
    eq(r.signal, "SIGKILL")
    r = hrun_cmd({ "resolve", "1", "-m", "finished by hand", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(show(state).outcome, "crashed")
    eq(hrun_cmd({ "resume", "--state", state }).code, 3, "nothing to resume")
  end)
end)

describe("honest history", function()
  it("keeps a run's own outcome and time beside its rollback's", function()
    local d, data, state = world()
    local p = playbook_file(d, "flagged.lua", FLAGGED)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    fs.write(data .. "/flag", "")
    local own = show(state)
    sys.sleep(1.2)
    eq(hrun_cmd({ "rollback", "1", "--state", state }).code, 0)
    local run = show(state)
    eq(run.status, "rolled-back")
    eq(run.outcome, "done")
    eq(run.ended, own.ended, "the run's end is its own")
    eq(run.rollback_status, "rolled-back")
    ok(run.rollback_started >= own.ended + 1, "the rollback's start is its own")
    local line = hrun_cmd({ "runs", "--state", state }).stdout:match("\n(1 [^\n]+)")
    has(line, " done ")
    has(line, "rolled back")
    ok(not line:find("%d%.%d+ s%s+1/") or tonumber(line:match("(%d+%.%d+) s")) < 1,
      "the run's time is not run + gap + rollback: " .. line)
  end)
end)

describe("children a crash left running", function()
  it("are stopped before resume runs the step again", function()
    local d, data, state = world()
    local p = playbook_file(d, "child.lua", [[
return playbook { name = "child", params = { data = "" },
  phase "p" {
    step "wait" { run = function(ctx)
      fs.write(ctx.params.data .. "/started", "")
      if not fs.exists(ctx.params.data .. "/quick") then exec.run({ "sleep", "27.182" }, { readonly = true }) end
    end },
  } }]])
    after(function()
      exec.run({ "pkill", "-f", "^sleep 27.182$" }, { check = false })
    end)
    local r = exec.sh(string.format("%s %s --state %s -p data=%s >/dev/null 2>&1 & pid=$!; " ..
      "for i in $(seq 200); do pgrep -f '^sleep 27.182$' >/dev/null && break; sleep 0.05; done; " ..
      "kill -KILL $pid; wait $pid; echo status=$?", shq(HRUN), shq(p), shq(state), shq(data)), { timeout = 30 })
    has(r.stdout, "status=137")
    ok(exec.run({ "pgrep", "-f", "^sleep 27.182$" }, { check = false }).ok, "the child outlived hrun")
    fs.write(data .. "/quick", "")
    r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "stopped sleep")
    eq(exec.run({ "pgrep", "-f", "^sleep 27.182$" }, { check = false }).ok, false, "the child is gone")
  end)
end)

describe("subvolumes", function()
  local SNAP = [[
return playbook { name = "snap", params = { mnt = "" },
  phase "p" {
    step "snapshot" { run = function(ctx)
      btrfs.snapshot(ctx.params.mnt .. "/data", ctx.params.mnt .. "/.snapshots/pre", { readonly = true })
    end },
    step "make and fill" { run = function(ctx)
      btrfs.create(ctx.params.mnt .. "/new")
      fs.write(ctx.params.mnt .. "/new/file", "filled")
    end },
  } }]]

  local function setup()
    local mnt = btrfs_volume(1)
    btrfs.create(mnt .. "/data")
    fs.mkdir(mnt .. "/.snapshots")
    local d = tmpdir()
    return mnt, playbook_file(d, "snap.lua", SNAP), d .. "/state"
  end

  it("a snapshot pruned since counts as undone: the run can be closed", function()
    local mnt, p, state = setup()
    eq(hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt }).code, 0)
    exec.run({ "btrfs", "subvolume", "delete", mnt .. "/.snapshots/pre" })
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.exists(mnt .. "/new"), false, "the subvolume made and filled is deleted")
    eq(btrfs.list(mnt) and #btrfs.list(mnt), 1, "only data is left")
  end)

  it("a snapshot replaced since is left alone and named", function()
    local mnt, p, state = setup()
    eq(hrun_cmd({ p, "--state", state, "-p", "mnt=" .. mnt }).code, 0)
    exec.run({ "btrfs", "subvolume", "delete", mnt .. "/.snapshots/pre" })
    exec.run({ "btrfs", "subvolume", "snapshot", "-r", mnt .. "/data", mnt .. "/.snapshots/pre" })
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 2, r.stdout .. r.stderr)
    has(r.stdout, mnt .. "/.snapshots/pre: the run left subvolume")
    ok(btrfs.is_subvolume(mnt .. "/.snapshots/pre"), "a person's snapshot is kept")
  end)
end)

-- A repository made by git and a playbook that commits a file to it: data, state, the
-- playbook's path.
local function committing()
  local d, data, state = world()
  need("git")
  exec.run({ "git", "init", "-q", data .. "/repo" })
  return data, state, playbook_file(d, "commit.lua", [[
return playbook { name = "commit", params = { data = "" },
  phase "p" {
    step "commit" { run = function(ctx)
      fs.write(ctx.params.data .. "/repo/a", "a")
      git.commit(ctx.params.data .. "/repo", "first", { all = true })
    end },
  } }]])
end

describe("repositories", function()
  it("made and committed to by the run are undone without a word about changes", function()
    local d, data, state = world()
    local p = playbook_file(d, "repo.lua", [[
return playbook { name = "repo", params = { data = "" },
  phase "p" {
    step "init" { run = function(ctx) git.init(ctx.params.data .. "/repo") end },
    step "commit" { run = function(ctx)
      fs.write(ctx.params.data .. "/repo/a", "a")
      git.commit(ctx.params.data .. "/repo", "first", { all = true })
    end },
    step "fail" { run = function() error("no") end },
  } }]])
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.exists(data .. "/repo"), false)
  end)

  it("leave a lock file a person holds alone", function()
    local data, state, p = committing()
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    fs.write(data .. "/repo/.git/index.lock", "")
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    ok(fs.exists(data .. "/repo/.git/index.lock"), "the lock is the person's: " .. r.stdout .. r.stderr)
    fs.remove(data .. "/repo/.git/index.lock")
  end)
end)

describe("a step resumed as it is (resume = \"rerun\")", function()
  it("keeps its first attempt to be undone", function()
    local d, data, state = world()
    fs.write(data .. "/f", "old")
    local p = playbook_file(d, "rerun.lua", [[
return playbook { name = "rerun", params = { data = "", fail = false },
  phase "p" {
    step "one" { resume = "rerun", run = function(ctx)
      fs.write(ctx.params.data .. "/f", (fs.read(ctx.params.data .. "/f")) == "old" and "new1" or "new2")
    end },
    step "two" { run = function(ctx) if ctx.params.fail then error("two fails") end end },
  } }]])
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data, "-p", "fail=true" },
      { env = { HRUN_TEST_CRASH = "effect-done:1" } })
    eq(r.signal, "SIGKILL")
    eq(fs.read(data .. "/f"), "new1")
    r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.read(data .. "/f"), "old", "both attempts undone")
    eq(show(state).status, "rolled-back")
  end)
end)

describe("long names", function()
  it("are written and undone: the temporary's name stays within NAME_MAX", function()
    local d, data, state = world()
    local name = data .. "/" .. string.rep("n", 250)
    fs.write(name, "old")
    local p = playbook_file(d, "long.lua", string.format([[
return playbook { name = "long",
  phase "p" { step "write" { run = function() fs.write(%q, "new") end } } }]], name))
    eq(hrun_cmd({ p, "--state", state }).code, 0)
    eq(fs.read(name), "new")
    eq(hrun_cmd({ "rollback", "1", "--state", state }).code, 0)
    eq(fs.read(name), "old")
    eq(fs.list(data), { string.rep("n", 250) }, "no temporary left")
  end)
end)

describe("a state directory hrun never made", function()
  it("has no runs to resume or roll back, and stays unmade", function()
    local d = tmpdir()
    for _, cmd in ipairs({ "resume", "rollback", "resolve" }) do
      local r = hrun_cmd({ cmd, "1", "-m", "x", "--state", d .. "/state" })
      if cmd ~= "resolve" then
        r = hrun_cmd({ cmd, "--state", d .. "/state" })
      end
      eq(r.code, 3, cmd)
      has(r.stderr, "the journal has no runs yet (" .. d .. "/state)")
    end
    eq(fs.exists(d .. "/state"), false)
  end)
end)

describe("an undo function killed in the middle", function()
  it("leaves no temporary: what it wrote to is journaled, and the next rollback cleans", function()
    local d, data, state = world()
    local p = playbook_file(d, "killed.lua", [[
return playbook { name = "killed", params = { data = "" },
  phase "p" {
    step "a" {
      run = function(ctx) fs.write(ctx.params.data .. "/f", "made") end,
      undo = function(ctx)
        fs.write(ctx.params.data .. "/log", "undoing")
        if not fs.exists(ctx.params.data .. "/quick") then
          fs.write(ctx.params.data .. "/waiting", "")
          sys.sleep(20)
        end
        fs.remove(ctx.params.data .. "/f")
      end,
    },
  } }]])
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    local r = exec.sh(string.format("%s rollback 1 --state %s >/dev/null 2>&1 & pid=$!; " ..
      "for i in $(seq 200); do [ -e %s/waiting ] && break; sleep 0.05; done; " ..
      "kill -KILL $pid; wait $pid; echo status=$?", shq(HRUN), shq(state), shq(data)), { timeout = 30 })
    has(r.stdout, "status=137")
    local attempt = exec.run({ "sqlite3", state .. "/journal.db", "SELECT id FROM undos WHERE effect IS NULL " ..
      "AND status = 'running' AND targets IS NOT NULL" }).stdout:gsub("%s", "")
    ok(attempt ~= "", "the killed attempt and what it wrote to are journaled")
    -- what a kill inside its fs.write would have left, named from the run and the attempt
    local leftover = string.format("%s/.log.hrun-1--%s-AbC123", data, attempt)
    fs.write(leftover, "half")
    fs.remove(data .. "/waiting")
    fs.write(data .. "/quick", "")
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "removed what a crash left: " .. leftover)
    eq(fs.exists(leftover), false)
    eq(fs.exists(data .. "/f"), false)
  end)
end)

describe("a git write killed half way", function()
  it("leaves no object libgit2 was writing, nor its locks", function()
    local data, state, p = committing()
    -- killed once the commit's intent is journaled: what libgit2 had begun is made here
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data },
      { env = { HRUN_TEST_CRASH = "effect-intent:2" } })
    eq(r.signal, "SIGKILL")
    local git = data .. "/repo/.git"
    fs.write(git .. "/objects/tmp_object_git2_0123abcd", "half an object")
    fs.write(git .. "/index.lock", "")
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "removed what a crash left:")
    eq(fs.exists(git .. "/objects/tmp_object_git2_0123abcd"), false)
    eq(fs.exists(git .. "/index.lock"), false)
    eq(fs.exists(data .. "/repo/a"), false)
  end)

  it("in a rollback leaves no locks to the next rollback, and a person's older one alone", function()
    local data, state, p = committing()
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    -- killed once the inverse operation has begun: what libgit2 had begun is made here
    local r = hrun_cmd({ "rollback", "1", "--state", state }, { env = { HRUN_TEST_CRASH = "undo-op:1" } })
    eq(r.signal, "SIGKILL")
    local git = data .. "/repo/.git"
    -- the branch the inverse moves back: its lock is the one libgit2 takes
    local lock = git .. "/" .. exec.run({ "git", "-C", data .. "/repo", "symbolic-ref", "HEAD" }).stdout:gsub("%s", "")
      .. ".lock"
    -- a lock older than the cut operation is not hrun's: it stays, and the rollback says so
    fs.write(lock, "")
    exec.run({ "touch", "-d", "1 hour ago", lock })
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 2, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, lock)
    ok(fs.exists(lock), "the older lock is the person's")
    -- a person's lock made after the cut attempt, once another attempt has run since: the
    -- cut one says nothing of it any more
    fs.remove(lock)
    fs.write(lock, "")
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 2, r.stdout .. r.stderr)
    ok(fs.exists(lock), "a lock made after an attempt that was tried again since is the person's")
    -- killed again in the inverse: this time the lock is the cut operation's
    r = hrun_cmd({ "rollback", "1", "--state", state }, { env = { HRUN_TEST_CRASH = "undo-op:1" } })
    eq(r.signal, "SIGKILL")
    fs.remove(lock)
    fs.write(lock, "")
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "removed what a crash left: " .. lock)
    eq(fs.exists(lock), false)
    eq(fs.exists(data .. "/repo/a"), false)
  end)
end)
