-- Running playbooks on real files: success, failure and rollback, plans that change
-- nothing, retries, timeouts, confirmations, the lock, events, history.

-- A work directory with a few files a playbook changes, and a state directory.
local function setup()
  local d = tmpdir()
  fs.mkdir(d .. "/data/sub", { parents = true })
  fs.write(d .. "/data/config.txt", "version=1\n", { mode = "0640" })
  fs.write(d .. "/data/sub/keep.bin", "\0\1\2\255")
  fs.write(d .. "/data/doomed.txt", "remove me\n")
  exec.run({ "ln", "-s", "config.txt", d .. "/data/link" })
  return d, d .. "/data", d .. "/state"
end

-- A playbook that changes the data tree in every way fs can, then fails if asked.
local function changer(d)
  return playbook_file(d, "changer.lua", [[
return playbook {
  name = "changer", version = "2.0",
  params = { data = "", fail_at = "" },
  phase "edit" {
    check "data is there" (function(ctx) return fs.exists(ctx.params.data), "no data" end),
    step "rewrite config" {
      run = function(ctx)
        fs.write(ctx.params.data .. "/config.txt", "version=2\n")
        ctx.state.old_version = 1
        if ctx.params.fail_at == "rewrite config" then error("failing as asked") end
      end,
    },
    step "new tree" {
      run = function(ctx)
        fs.mkdir(ctx.params.data .. "/new/deep", { parents = true })
        fs.write(ctx.params.data .. "/new/deep/file", "fresh")
        fs.copy(ctx.params.data .. "/sub", ctx.params.data .. "/sub-copy", { recursive = true })
      end,
    },
  },
  phase "move" {
    step "remove and rename" {
      run = function(ctx)
        fs.remove(ctx.params.data .. "/doomed.txt")
        fs.rename(ctx.params.data .. "/sub/keep.bin", ctx.params.data .. "/moved.bin")
        fs.remove(ctx.params.data .. "/sub", { recursive = true })
        if ctx.params.fail_at == "remove and rename" then error("failing as asked") end
      end,
    },
    step "last" {
      run = function(ctx)
        fs.write(ctx.params.data .. "/config.txt", "version=3\n")
        if ctx.params.fail_at == "last" then error("failing at the end") end
      end,
      verify = function(ctx)
        return fs.read(ctx.params.data .. "/config.txt") == "version=3\n", "config is not version 3"
      end,
    },
  },
}]])
end

local function run(args)
  return hrun_cmd(args)
end

describe("a playbook run", function()
  it("does every step, journals it, and exits 0", function()
    local d, data, state = setup()
    local r = run({ changer(d), "--state", state, "-p", "data=" .. data })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/config.txt"), "version=3\n")
    eq(fs.read(data .. "/moved.bin"), "\0\1\2\255")
    eq(fs.exists(data .. "/sub"), false)
    eq(fs.read(data .. "/new/deep/file"), "fresh")
    has(r.stdout, "done in")
    local runs = run({ "runs", "--state", state })
    has(runs.stdout, "changer 2.0")
    has(runs.stdout, "done")
    has(runs.stdout, "4/4")
  end)

  it("rolls back a failure: every byte as it was", function()
    for _, at in ipairs({ "rewrite config", "remove and rename", "last" }) do
      local d, data, state = setup()
      local before = tree(data)
      local r = run({ changer(d), "--state", state, "-p", "data=" .. data, "-p", "fail_at=" .. at })
      eq(r.code, 1, at .. ": " .. r.stdout .. r.stderr)
      has(r.stdout, "failed and rolled back")
      eq(tree(data), before, "after failing at " .. at)
      local show = run({ "show", "1", "--state", state })
      has(show.stdout, "status     rolled-back")
    end
  end)

  it("rolls back with verify failing too", function()
    local d, data, state = setup()
    local p = playbook_file(d, "verify.lua", [[
return playbook { name = "verify", params = { data = "" },
  phase "p" {
    step "write" {
      run = function(ctx) fs.write(ctx.params.data .. "/config.txt", "broken") end,
      verify = function(ctx) return false, "the service did not come back" end,
    },
  } }]])
    local before = tree(data)
    local r = run({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 1)
    has(r.stdout, "verify failed: the service did not come back")
    eq(tree(data), before)
  end)

  it("stops without undoing with on_failure = \"stop\", and resume continues", function()
    local d, data, state = setup()
    local p = playbook_file(d, "stop.lua", [[
return playbook { name = "stop", on_failure = "stop", params = { data = "" },
  phase "p" {
    step "one" { run = function(ctx) fs.write(ctx.params.data .. "/one", "1") end },
    step "two" {
      run = function(ctx)
        fs.write(ctx.params.data .. "/two", "2")
        if not fs.exists(ctx.params.data .. "/go") then error("not yet") end
      end,
    },
  } }]])
    local r = run({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 1)
    has(r.stdout, "stopped")
    eq(fs.read(data .. "/one"), "1", "nothing undone")
    eq(fs.read(data .. "/two"), "2")
    fs.write(data .. "/go", "")
    r = run({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "one skipped (done before the crash)")
    -- the recap counts it as the journal says it went: changed, not skipped
    has(r.stdout, "recap: ok=0 changed=2 skipped=0 failed=0")
    local shown = run({ "show", "1", "--state", state }).stdout
    local _, dones = shown:gsub("step  one%s+changed", "")
    eq(dones, 1, "step one ran once")
  end)

  it("undoes a retried attempt before the next, and succeeds", function()
    local d, data, state = setup()
    local p = playbook_file(d, "retry.lua", [[
return playbook { name = "retry", params = { data = "" },
  phase "p" {
    step "flaky" {
      retries = 3, retry_delay = 0.01,
      run = function(ctx)
        local counter = ctx.params.data .. "/counter"
        local n = fs.exists(counter) and tonumber(fs.read(counter)) or 0
        exec.run({ "sh", "-c", "echo " .. (n + 1) .. " > " .. ctx.params.data .. "/counter" })
        fs.write(ctx.params.data .. "/attempt-" .. (n + 1), "x")
        if n < 2 then error("not yet") end
      end,
    },
  } }]])
    local r = run({ p, "--state", state, "-p", "data=" .. data, "--yes" })
    -- exec.run has no inverse: a retry cannot undo it, so the run fails honestly
    eq(r.code, 2, r.stdout)
    has(r.stdout, "could not be undone before a retry")
    local p2 = playbook_file(d, "retry2.lua", [[
local data = ...
return playbook { name = "retry2", params = { data = "" },
  phase "p" {
    step "flaky" {
      retries = 3, retry_delay = 0.01,
      run = function(ctx)
        local marks = fs.glob(ctx.params.data .. "/mark-*")
        fs.write(ctx.params.data .. "/mark-" .. #marks, "x")
        local file = ctx.params.data .. "/../tries"
        local tries = (fs.exists(file) and tonumber(fs.read(file)) or 0) + 1
        io.write("attempt ", tries, "\n")
        exec.run({ "sh", "-c", "echo " .. tries .. " > " .. ctx.params.data .. "/../tries" }, { readonly = true })
        if tries < 3 then error("try again") end
      end,
    },
  } }]])
    r = run({ p2, "--state", state, "-p", "data=" .. data })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, ", 3 attempts)")
    eq(fs.glob(data .. "/mark-*"), { data .. "/mark-0" }, "each failed attempt's write was undone")
  end)

  it("skips a step whose when is false, and records the reason", function()
    local d, data, state = setup()
    local p = playbook_file(d, "when.lua", [[
return playbook { name = "when", params = { data = "", on = false },
  phase "p" {
    step "maybe" {
      when = function(ctx) return ctx.params.on end,
      run = function(ctx) fs.write(ctx.params.data .. "/maybe", "x") end,
    },
  } }]])
    local r = run({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 0)
    has(r.stdout, "maybe skipped (when is false)")
    eq(fs.exists(data .. "/maybe"), false)
    r = run({ p, "--state", state, "-p", "data=" .. data, "-p", "on=true" })
    eq(r.code, 0)
    eq(fs.exists(data .. "/maybe"), true)
  end)

  it("refuses a write outside run", function()
    local d, data, state = setup()
    local p = playbook_file(d, "sneaky.lua", [[
return playbook { name = "sneaky", params = { data = "" },
  phase "p" {
    check "writes" (function(ctx) fs.write(ctx.params.data .. "/x", "y") return true end),
    step "s" { run = function() end },
  } }]])
    local r = run({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 1)
    has(r.stdout, "check 'writes' must not change the system (it called fs.write)")
    eq(fs.exists(data .. "/x"), false)
  end)

  it("persists ctx.state and ctx.shared, JSON only", function()
    local d, data, state = setup()
    local p = playbook_file(d, "state.lua", [[
return playbook { name = "state", params = { data = "" },
  phase "p" {
    step "a" { run = function(ctx) ctx.state.x = { 1, 2 }; ctx.shared.seen = "a" end },
    step "b" { run = function(ctx) assert(ctx.shared.seen == "a"); ctx.state.bad = print end },
  } }]])
    local r = run({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 1)
    has(r.stdout, "ctx.state must hold JSON values only")
    local shown = json.decode(run({ "show", "1", "--state", state, "--json" }).stdout)
    eq(shown.steps[1].state, { x = { 1, 2 } })
    eq(shown.shared, { seen = "a" })
  end)
end)

describe("timeouts", function()
  it("stop a runaway Lua loop and a slow command, then roll back", function()
    local d, data, state = setup()
    local p = playbook_file(d, "slow.lua", [[
return playbook { name = "slow", params = { data = "", what = "lua" },
  phase "p" {
    step "first" { run = function(ctx) fs.write(ctx.params.data .. "/first", "1") end },
    step "hang" {
      timeout = 0.5,
      run = function(ctx)
        if ctx.params.what == "lua" then while true do end end
        if ctx.params.what == "sleep" then sys.sleep(30) end
        exec.run({ "sleep", "30" }, { readonly = true })
      end,
    },
  } }]])
    for _, what in ipairs({ "lua", "sleep", "exec" }) do
      local t0 = sys.clock()
      local r = run({ p, "--state", state, "-p", "data=" .. data, "-p", "what=" .. what })
      eq(r.code, 1, what .. ": " .. r.stdout)
      has(r.stdout, "step 'hang' failed: timed out after 0.5 s")
      ok(sys.clock() - t0 < 10, what .. " took " .. (sys.clock() - t0))
      eq(fs.exists(data .. "/first"), false, "rolled back")
    end
  end)
end)

describe("confirm", function()
  it("is refused without a terminal unless --yes", function()
    local d, data, state = setup()
    local p = playbook_file(d, "confirm.lua", [[
return playbook { name = "confirm", params = { data = "" },
  phase "p" {
    step "wipe" {
      confirm = "Really wipe the data?",
      run = function(ctx) fs.write(ctx.params.data .. "/wiped", "yes") end,
    },
  } }]])
    local r = run({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 1)
    has(r.stdout, "there is no terminal to ask on; run with --yes")
    eq(fs.exists(data .. "/wiped"), false)
    r = run({ p, "--state", state, "-p", "data=" .. data, "--yes" })
    eq(r.code, 0, r.stdout)
    has(r.stdout, "confirmed by --yes")
    eq(fs.read(data .. "/wiped"), "yes")
  end)
end)

describe("plan", function()
  it("changes nothing and lists every write with its inverse", function()
    local d, data, state = setup()
    local p = changer(d)
    local before = tree(d)
    local r = run({ "plan", p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(tree(d), before, "not a byte changed, no state directory made")
    local lines = {}
    for line in r.stdout:gmatch("[^\n]+") do
      if line:find(" would ", 1, true) then
        lines[#lines + 1] = line:gsub("^%S+%s+would ", "")
      end
    end
    eq(#lines, 8, r.stdout)
    has(lines[1], "fs.write " .. data .. "/config.txt \"version=2\\n\"  [undo: fs._restore " .. data .. "/config.txt")
    has(lines[2], "fs.mkdir " .. data .. "/new/deep {\"parents\":true}  [undo: fs.remove " .. data .. "/new/deep")
    has(r.stdout, "plan: 8 writes; nothing was changed")
    -- the same with --plan, and as JSON events
    local j = run({ p, "--plan", "--json", "--state", state, "-p", "data=" .. data })
    eq(j.code, 0)
    local effects = 0
    for line in j.stdout:gmatch("[^\n]+") do
      local ev = assert(json.decode(line), line)
      if ev.event == "effect" then
        effects = effects + 1
        eq(ev.planned, true)
      end
    end
    eq(effects, 8)
    eq(tree(d), before)
  end)

  it("says which writes cannot be undone", function()
    local d, _, state = setup()
    local p = playbook_file(d, "cmd.lua", [[
return playbook { name = "cmd",
  phase "p" { step "s" { run = function() exec.run({ "touch", "/tmp/hrun-never-made" }) end } } }]])
    local r = run({ "plan", p, "--state", state })
    eq(r.code, 0)
    has(r.stdout, "would exec.run touch /tmp/hrun-never-made  [cannot be undone: exec.run cannot be undone]")
    has(r.stdout, "plan: 1 write, 1 cannot be undone")
    eq(fs.exists("/tmp/hrun-never-made"), false)
    -- a step with an undo function: its rollback runs that, the plan says so and counts it
    p = playbook_file(d, "undo.lua", [[
return playbook { name = "undo",
  phase "p" { step "s" {
    run = function() exec.run({ "touch", "/tmp/hrun-never-made" }) end,
    undo = function() exec.run({ "rm", "-f", "/tmp/hrun-never-made" }) end,
  } } }]])
    r = run({ "plan", p, "--state", state })
    eq(r.code, 0)
    has(r.stdout, "would exec.run touch /tmp/hrun-never-made  [undone by the step's undo]")
    has(r.stdout, "plan: 1 write; nothing was changed")
    ok(not r.stdout:find("cannot be undone", 1, true), r.stdout)
  end)

  it("undoes commands by the command each was given as its undo, newest first", function()
    local d, _, state = setup()
    local log = d .. "/log"
    local p = playbook_file(d, "cmds.lua", string.format([[
local log = %q
return playbook { name = "cmds",
  phase "p" {
    step "stop the old" { run = function()
      exec.run({ "sh", "-c", "echo stop a >> " .. log }, { undo = { "sh", "-c", "echo start a >> " .. log } })
      exec.sh("echo stop b >> $LOG", { env = { LOG = log }, undo = "echo start b >> $LOG" })
    end },
    step "fails" { run = function(ctx) assert(ctx.plan, "the new one does not answer") end },
  } }]], log))
    local r = run({ "plan", p, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "[undo: exec.run sh -c \"echo start a >> " .. log .. "\"]")
    has(r.stdout, "plan: 2 writes; nothing was changed")
    eq(fs.exists(log), false)
    r = run({ p, "--state", state })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.read(log), "stop a\nstop b\nstart b\nstart a\n")
  end)
end)

describe("the lock", function()
  it("lets one run at a time: the second exits 4 naming the holder", function()
    local d, data, state = setup()
    local p = playbook_file(d, "long.lua", [[
return playbook { name = "long", params = { data = "" },
  phase "p" { step "wait" { run = function(ctx)
    fs.write(ctx.params.data .. "/started", "")
    sys.sleep(5)
  end } } }]])
    local script = string.format(
      "%s %s --state %s -p data=%s >/dev/null & pid=$!; " ..
      "for i in $(seq 100); do [ -e %s/started ] && break; sleep 0.05; done; " ..
      "%s %s --state %s -p data=%s; echo \"second=$?\"; kill -INT $pid; wait $pid; echo \"first=$?\"",
      shq(HRUN), shq(p), shq(state), shq(data), shq(data), shq(HRUN), shq(p), shq(state), shq(data))
    local r = exec.sh(script, { check = false, timeout = 30 })
    has(r.stdout, "second=4")
    has(r.stderr, "another run holds the lock: pid ")
    has(r.stderr, "run 1 (" .. p .. ")")
    has(r.stdout, "first=130")
  end)
end)

describe("Ctrl-C", function()
  it("stops the step, rolls back, and exits 130", function()
    local d, data, state = setup()
    local p = playbook_file(d, "int.lua", [[
return playbook { name = "int", params = { data = "" },
  phase "p" {
    step "one" { run = function(ctx) fs.write(ctx.params.data .. "/config.txt", "changed") end },
    step "wait" { run = function(ctx)
      fs.write(ctx.params.data .. "/started", "")
      exec.run({ "sleep", "30" })
    end },
  } }]])
    local before = tree(data)
    local script = string.format("%s %s --state %s -p data=%s & pid=$!; " ..
      "for i in $(seq 100); do [ -e %s/started ] && break; sleep 0.05; done; kill -INT $pid; wait $pid; " ..
      "echo \"status=$?\"", shq(HRUN), shq(p), shq(state), shq(data), shq(data))
    local r = exec.sh(script, { check = false, timeout = 30 })
    has(r.stdout, "status=130")
    has(r.stdout, "interrupted")
    eq(tree(data), before)
    has(run({ "show", "1", "--state", state }).stdout, "(interrupted)")
  end)

  -- HRUN_TEST_CRASH=point:N:INT sends the SIGINT at that very instant: in the middle of
  -- journaling the write, or as its call returns, before its result is journaled
  for _, case in ipairs({
    { point = "effect-journaled:2:INT", op = "exec.run", status = "failed" },
    { point = "write-returned:2:INT", op = "fs.write", status = "done, undone" },
  }) do
    it("between a write's intent and its result (" .. case.point .. ") journals the result first", function()
      local d, data, state = setup()
      local p = playbook_file(d, "int.lua", [[
return playbook { name = "int", params = { data = "" },
  phase "p" {
    step "one" { run = function(ctx) fs.write(ctx.params.data .. "/config.txt", "changed") end },
    step "two" { run = function(ctx)
      if fs.exists(ctx.params.data .. "/exec") then exec.run({ "true" })
      else fs.write(ctx.params.data .. "/config.txt", "changed again") end
    end },
  } }]])
      if case.op == "exec.run" then
        fs.write(data .. "/exec", "")
      end
      local before = tree(data)
      local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data }, { env = { HRUN_TEST_CRASH = case.point } })
      eq(r.code, 130, r.stdout .. r.stderr)
      eq(tree(data), before)
      local shown = run({ "show", "1", "--state", state }).stdout
      has(shown, case.op)
      has(shown, "[" .. case.status .. "]")
      ok(not shown:find("intent", 1, true), "no write is left as an intent: " .. shown)
    end)
  end
end)

describe("events and history", function()
  it("--json writes one parseable event a line, of every kind", function()
    local d, data, state = setup()
    local r = run({ changer(d), "--json", "-v", "--state", state, "-p", "data=" .. data, "-p", "fail_at=last" })
    eq(r.code, 1)
    local kinds = {}
    for line in r.stdout:gmatch("[^\n]+") do
      local ev = json.decode(line)
      ok(ev, "not JSON: " .. line)
      ok(type(ev.time) == "number")
      kinds[ev.event] = true
    end
    for _, k in ipairs({ "run-start", "phase-start", "check", "step-start", "effect", "step-end", "phase-end",
      "rollback-start", "undo", "undo-effect", "rollback-end", "run-end" }) do
      ok(kinds[k], "no " .. k .. " event")
    end
  end)

  it("hrun show tells everything; --md is a migration log", function()
    local d, data, state = setup()
    run({ changer(d), "--state", state, "-p", "data=" .. data, "-p", "fail_at=last" })
    local s = run({ "show", "1", "--state", state })
    eq(s.code, 0)
    has(s.stdout, "run 1: changer 2.0")
    has(s.stdout, "status     rolled-back")
    has(s.stdout, "error: " .. d .. "/changer.lua:")
    has(s.stdout, "fs.rename " .. data .. "/sub/keep.bin " .. data .. "/moved.bin  [done, undone]")
    has(s.stdout, "undo: fs.rename " .. data .. "/moved.bin " .. data .. "/sub/keep.bin")
    local md = run({ "show", "1", "--md", "--state", state }).stdout
    has(md, "## changer 2.0 — run 1")
    has(md, "### edit")
    has(md, "- [ ] rewrite config — changed, undone (inverses)")
    local j = json.decode(run({ "show", "1", "--json", "--state", state }).stdout)
    eq(j.status, "rolled-back")
    eq(#j.steps, 5)
    local missing = run({ "show", "9", "--state", state })
    eq(missing.code, 3)
    has(missing.stderr, "there is no run 9")
  end)
end)

describe("inverses", function()
  it("restore replaced files, renamed-over targets and removed trees exactly", function()
    local d, data, state = setup()
    fs.mkdir(data .. "/tree/with space", { parents = true })
    fs.write(data .. "/tree/with space/new\nline", "odd", { mode = "0600" })
    fs.write(data .. "/tree/bad\xffname", "\xff\xfe")
    exec.run({ "ln", "-s", "../config.txt", data .. "/tree/link" })
    fs.write(data .. "/target.txt", "the old target\n", { mode = "0604" })
    local p = playbook_file(d, "inv.lua", [[
return playbook { name = "inv", params = { data = "" },
  phase "p" {
    step "replace" {
      run = function(ctx)
        local data = ctx.params.data
        fs.copy(data .. "/config.txt", data .. "/target.txt")
        fs.rename(data .. "/sub/keep.bin", data .. "/config.txt")
        fs.remove(data .. "/tree", { recursive = true })
        fs.copy(data .. "/doomed.txt", data .. "/sub", { recursive = false })
      end,
    },
  } }]])
    local before = tree(data)
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "step 'replace' failed: " .. p .. ":9: fs.copy: " .. data .. "/sub: is a directory")
    eq(tree(data), before)
  end)
end)

describe("the journal", function()
  it("is read by playbooks through journal.runs and journal.run", function()
    local d, _, state = setup()
    local p = playbook_file(d, "reader.lua", [[
return playbook { name = "reader",
  phase "p" { step "read" { run = function()
    local runs = journal.runs(5)
    print("runs=" .. #runs .. " first=" .. runs[1].playbook .. " status=" .. runs[1].status)
    print("steps=" .. #journal.run(runs[#runs].id).steps)
  end } } }]])
    eq(hrun_cmd({ p, "--state", state }).code, 0)
    local r = hrun_cmd({ p, "--state", state })
    has(r.stdout, "runs=2 first=reader status=running")
    has(r.stdout, "steps=1")
    eq(fs.stat(state).mode, tonumber("700", 8))
    eq(fs.stat(state .. "/journal.db").mode, tonumber("600", 8))
  end)

  it("refuses a journal written by a newer hrun", function()
    local d, data, state = setup()
    local p = changer(d)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    need("sqlite3")
    exec.run({ "sqlite3", state .. "/journal.db", "PRAGMA user_version = 99" })
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data })
    eq(r.code, 1)
    has(r.stderr, string.format("journal: written by a newer hrun (schema 99, this hrun knows %d)",
      require("hrun.journal").schema_version))
  end)

  it("options apply to the commands they belong to", function()
    local r = hrun_cmd({ "runs", "--plan" })
    eq(r.code, 3)
    has(r.stderr, "option --plan does not apply to 'runs'")
  end)
end)

describe("a second Ctrl-C", function()
  it("kills the step's child processes at once", function()
    local d, data, state = setup()
    local p = playbook_file(d, "stubborn.lua", [[
return playbook { name = "stubborn", params = { data = "" },
  phase "p" { step "wait" { run = function(ctx)
    fs.write(ctx.params.data .. "/started", "")
    -- ignores SIGINT, and the grace before SIGKILL is long: only a second Ctrl-C ends it soon
    exec.run({ "sh", "-c", "trap '' INT; sleep 28.5 & wait; sleep 28.5" }, { grace = 25 })
  end } } }]])
    local script = string.format("%s %s --state %s -p data=%s & pid=$!; " ..
      "for i in $(seq 100); do [ -e %s/started ] && break; sleep 0.05; done; sleep 0.3; " ..
      "kill -INT $pid; sleep 0.5; kill -INT $pid; wait $pid; echo \"status=$?\"",
      shq(HRUN), shq(p), shq(state), shq(data), shq(data))
    local t0 = sys.clock()
    local r = exec.sh(script, { check = false, timeout = 60 })
    has(r.stdout, "status=130")
    ok(sys.clock() - t0 < 10, "took " .. (sys.clock() - t0))
    eq(exec.run({ "pgrep", "-f", "sleep 28.5" }, { check = false, readonly = true }).ok, false)
  end)
end)
