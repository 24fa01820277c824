-- Handlers (handler "name" {…}, a step's notify, ctx.notify): once at the phase's end,
-- journaled, pending across a crash, run again after a rollback on the restored file;
-- tags (--tags, --skip-tags, always), --step, and the same under --sandbox.

-- The "service": a config file (conf) and what each restart saw (seen), both in dir.
-- Its handler "restart web" records the config it finds; it fails on a config saying
-- "broken". Steps: "conf" writes port=PORT (notify restart web), "same" writes nothing
-- (notify restart web: not notified), "other" notifies with ctx.notify, "late" fails
-- when fail=true.
local WEB = [[
return playbook {
  name = "web", params = { dir = "", port = "2", fail = false, late = "" },
  handler "audit" { run = function(ctx)
    exec.sh("echo audit >> " .. ctx.params.dir .. "/seen")
  end },
  phase "config" {
    handler "reload log" { tags = { "logs" }, run = function(ctx)
      exec.sh("echo reload-log >> " .. ctx.params.dir .. "/seen")
    end },
    handler "restart web" { run = function(ctx)
      local conf = fs.read(ctx.params.dir .. "/conf")
      if conf:find("broken") then error("the service does not start on " .. conf) end
      exec.sh("echo restart:$(cat " .. ctx.params.dir .. "/conf) >> " .. ctx.params.dir .. "/seen")
    end },
    step "conf" { notify = { "restart web", "audit" }, tags = { "conf" }, run = function(ctx)
      fs.write(ctx.params.dir .. "/conf", "port=" .. ctx.params.port .. "\n")
    end },
    step "same" { notify = { "restart web" }, run = function(ctx)
      fs.read(ctx.params.dir .. "/conf")
    end },
    step "other" { tags = { "logs" }, run = function(ctx)
      fs.write(ctx.params.dir .. "/log.conf", "x")
      ctx.notify("reload log")
      ctx.notify("restart web")
    end },
  },
  phase "check" {
    tags = { "check" },
    step "late" { run = function(ctx)
      fs.write(ctx.params.dir .. "/late", ctx.params.late)
      if ctx.params.fail then error("the health check fails") end
    end },
  },
}
]]

local function setup(conf)
  local d = tmpdir()
  fs.mkdir(d .. "/data")
  fs.write(d .. "/data/conf", conf or "port=1\n")
  return playbook_file(d, "web.lua", WEB), d .. "/data", d .. "/state"
end

local function run(p, data, state, extra, opts)
  local args = { p, "--state", state, "-p", "dir=" .. data }
  for _, a in ipairs(extra or {}) do
    args[#args + 1] = a
  end
  return hrun_cmd(args, opts)
end

local function shown(state, id)
  local args = { "show", "--json", "--state", state }
  if id then
    args[#args + 1] = tostring(id)
  end
  return json.decode(hrun_cmd(args).stdout)
end

-- The journal's rows of a run as "kind name status[, undo_status]", in order.
local function rows(state, id)
  local out = {}
  for _, s in ipairs(shown(state, id).steps) do
    out[#out + 1] = string.format("%s %s %s%s", s.kind, s.name, s.status,
      s.undo_status and s.undo_status ~= json.null and (", " .. s.undo_status) or "")
  end
  return out
end

describe("handlers", function()
  it("run once at the end of the phase, in the order written, when a step changed something", function()
    local p, data, state = setup()
    local r = run(p, data, state)
    eq(r.code, 0, r.stdout .. r.stderr)
    -- two steps notified restart web: once; "same" changed nothing; the phase's handlers
    -- in the order written (reload log before restart web, though notified after), then
    -- the playbook's
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=2\naudit\n")
    eq(rows(state), { "step conf done", "step same done", "step other done", "handler reload log done",
      "handler restart web done", "handler audit done", "step late done" })
    has(r.stdout, "running handler 'restart web', notified by steps 'conf', 'other'")
    has(r.stdout, "running handler 'audit', notified by step 'conf'")
    -- --json: the notify and handler events (another port: conf changes again, and
    -- notifies; ctx.notify notifies whether or not its step changed something)
    r = run(p, data, state, { "--json", "-p", "port=3" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local handlers, notified = {}, {}
    for line in r.stdout:gmatch("[^\n]+") do
      local ev = json.decode(line)
      if ev.event == "handler" then
        handlers[#handlers + 1] = ev.handler .. " by " .. table.concat(ev.notified_by, ",")
      elseif ev.event == "notify" then
        notified[#notified + 1] = ev.step .. "→" .. ev.handler
      end
    end
    eq(handlers, { "reload log by other", "restart web by conf,other", "audit by conf" })
    eq(notified, { "conf→restart web", "conf→audit", "other→reload log", "other→restart web" })
    -- show names them as handlers
    has(hrun_cmd({ "show", "--state", state, "1" }).stdout, "handler restart web")
  end)

  it("do not run when no step changed anything", function()
    local d = tmpdir()
    local p = playbook_file(d, "quiet.lua", [[
return playbook {
  name = "quiet", params = { dir = "" },
  phase "p" {
    handler "h" { run = function(ctx) fs.write(ctx.params.dir .. "/ran", "yes") end },
    step "reads" { notify = { "h" }, run = function(ctx) fs.exists(ctx.params.dir) end },
  },
}]])
    local r = hrun_cmd({ p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.exists(d .. "/ran"), false)
    eq(rows(d .. "/state"), { "step reads done" })
  end)

  it("fail the run like a step: it is rolled back", function()
    local p, data, state = setup("broken\n")
    -- the config written is broken too: the handler fails after the phase's steps
    local r = run(p, data, state, { "-p", "port=broken" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "handler 'restart web' failed: ")
    has(r.stdout, "the service does not start on port=broken")
    eq(fs.read(data .. "/conf"), "broken\n", "the config file is restored")
    eq(fs.exists(data .. "/log.conf"), false)
    eq(fs.exists(data .. "/late"), false, "the next phase never ran")
    eq(shown(state).status, "rolled-back")
  end)

  it("run again after a rollback, once, after every undo: on the restored configuration", function()
    local p, data, state = setup()
    local r = run(p, data, state, { "-p", "fail=true" })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.read(data .. "/conf"), "port=1\n")
    -- the restart saw port=2 in the run, then port=1 after the undos: the file was
    -- restored before the handler ran again (undo order: the handlers' rows are undone
    -- first, then the steps, newest first; the handlers run at the end)
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=2\naudit\nreload-log\nrestart:port=1\naudit\n")
    local lines = {}
    for l in r.stdout:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    local last_undo, first_again
    for i, l in ipairs(lines) do
      if l:find("undo conf: undone", 1, true) then
        last_undo = i
      elseif l:find("again after the rollback", 1, true) then
        first_again = first_again or i
      end
    end
    ok(last_undo and first_again and last_undo < first_again, "the handlers run after the undos:\n" .. r.stdout)
    has(r.stdout, "running handler 'restart web' again after the rollback, notified by steps 'conf', 'other'")
    eq(shown(state).status, "rolled-back")
    local kinds = {}
    for _, s in ipairs(shown(state).steps) do
      if s.kind == "rollback-handler" then
        kinds[#kinds + 1] = s.name .. " " .. s.status
      end
    end
    eq(kinds, { "reload log done", "restart web done", "audit done" })
  end)

  it("run again after hrun rollback of a finished run", function()
    local p, data, state = setup()
    eq(run(p, data, state).code, 0)
    local r = hrun_cmd({ "rollback", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/conf"), "port=1\n")
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=2\naudit\nreload-log\nrestart:port=1\naudit\n")
  end)

  it("that fail after a rollback make it rollback-incomplete, naming them; a second rollback retries them", function()
    local p, data, state = setup("broken\n")
    local r = run(p, data, state, { "-p", "fail=true", "-p", "port=3" })
    eq(r.code, 2, r.stdout .. r.stderr)
    has(r.stdout, "after the rollback: handler 'restart web' failed: ")
    eq(fs.read(data .. "/conf"), "broken\n")
    local run1 = shown(state)
    eq(run1.status, "rollback-incomplete")
    -- mended by hand; hrun rollback runs the handler that failed, not the others again
    fs.write(data .. "/conf", "port=1\n")
    r = hrun_cmd({ "rollback", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=3\naudit\nreload-log\naudit\nrestart:port=1\n")
    eq(shown(state).status, "rolled-back")
  end)

  -- the trap in its commonest form: the handler restarts the service, then its own health
  -- check fails (or hrun is killed after the restart): the rollback restores the file and
  -- runs the handler again, so the service is not left on the new configuration
  it("that fail after they acted run again after the rollback, on the restored file", function()
    local d = tmpdir()
    fs.mkdir(d .. "/data")
    fs.write(d .. "/data/conf", "port=1\n")
    local p = playbook_file(d, "restart.lua", [[
return playbook {
  name = "restart", params = { dir = "" },
  phase "config" {
    handler "restart web" { run = function(ctx)
      local conf = fs.read(ctx.params.dir .. "/conf")
      exec.sh("echo restart:$(cat " .. ctx.params.dir .. "/conf) >> " .. ctx.params.dir .. "/seen")
      if conf:find("port=2", 1, true) then error("not healthy on port 2") end
    end },
    step "conf" { notify = { "restart web" }, run = function(ctx)
      fs.write(ctx.params.dir .. "/conf", "port=2\n")
    end },
  },
}]])
    local data, state = d .. "/data", d .. "/state"
    local r = run(p, data, state)
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.read(data .. "/conf"), "port=1\n")
    eq(fs.read(data .. "/seen"), "restart:port=2\nrestart:port=1\n")
    eq(shown(state).status, "rolled-back")
    -- killed after the restart's effect: hrun rollback restores the file, then restarts
    fs.remove(data .. "/seen")
    r = run(p, data, d .. "/state2", {}, { env = { HRUN_TEST_CRASH = "effect-done:2" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    eq(fs.read(data .. "/seen"), "restart:port=2\n")
    r = hrun_cmd({ "rollback", "--state", d .. "/state2" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/conf"), "port=1\n")
    eq(fs.read(data .. "/seen"), "restart:port=2\nrestart:port=1\n")
  end)

  it("notified before a crash run when the run resumes, and not twice", function()
    local p, data, state = setup()
    -- killed right after the first step's end is committed: restart web is pending
    local r = run(p, data, state, {}, { env = { HRUN_TEST_CRASH = "step-done:1" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    eq(fs.exists(data .. "/seen"), false)
    r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=2\naudit\n")
    -- killed right after a handler's end: it handled its notifications, in that commit
    p, data, state = setup()
    r = run(p, data, state, {}, { env = { HRUN_TEST_CRASH = "step-done:5" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=2\n")
    r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=2\naudit\n")
    -- killed inside a handler (after its write): it runs again in full on resume
    p, data, state = setup()
    r = run(p, data, state, {}, { env = { HRUN_TEST_CRASH = "effect-done:4" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=2\nrestart:port=2\naudit\n")
    has(hrun_cmd({ "show", "--state", state }).stdout, "handler restart web" .. string.rep(" ", 28) ..
      "interrupted, undone")
  end)

  it("are named, and a notify naming none is refused with its file:line and a suggestion", function()
    local d = tmpdir()
    local p = playbook_file(d, "bad.lua", [[
return playbook {
  name = "bad",
  handler "global" { run = function() end },
  phase "p" {
    handler "restart web" { run = function() end },
    handler "restart web" { run = function() end },
    step "a" {
      run = function() end,
      notify = { "restart wbe", 3 },
    },
    step "b" { run = function() end, tags = "x" },
  },
  phase "q" {
    step "c" { run = function() end, notify = { "restart web" } },
  },
}]])
    for _, cmd in ipairs({ { "check", p }, { p }, { "plan", p } }) do
      cmd[#cmd + 1] = "--state"
      cmd[#cmd + 1] = d .. "/state"
      local r = hrun_cmd(cmd)
      eq(r.code, 3, r.stdout .. r.stderr)
      has(r.stderr, "bad.lua:6: phase 'p': two handlers named 'restart web' (the other at line 5)")
      has(r.stderr, "bad.lua:9: step 'a': notify[1]: no handler 'restart wbe' in phase 'p' or the playbook " ..
        "(did you mean 'restart web'?)")
      has(r.stderr, "bad.lua:9: step 'a': notify[2] must be a non-empty string, got number")
      has(r.stderr, "bad.lua:11: step 'b': field 'tags' must be a table, got string")
      -- a phase's handlers are its own
      has(r.stderr, "bad.lua:14: step 'c': notify[1]: no handler 'restart web' in phase 'q' or the playbook")
    end
    eq(fs.exists(d .. "/state/journal.db"), false, "nothing ran")
  end)

  it("ctx.notify with an unknown name fails the step at its line", function()
    local d = tmpdir()
    local p = playbook_file(d, "n.lua", [[
return playbook {
  name = "n",
  phase "p" {
    handler "restart web" { run = function() end },
    step "s" { run = function(ctx)
      ctx.notify("restart wbe")
    end },
  },
}]])
    local r = hrun_cmd({ p, "--state", d .. "/state" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "n.lua:6: ctx.notify: no handler 'restart wbe' in phase 'p' or the playbook " ..
      "(did you mean 'restart web'?)")
  end)

  it("are listed by plans: what would run, notified by which step", function()
    local p, data, state = setup()
    local before = tree(data)
    local r = hrun_cmd({ "plan", p, "--state", state, "-p", "dir=" .. data })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would run handler 'restart web', notified by steps 'conf', 'other'")
    has(r.stdout, "would run handler 'audit', notified by step 'conf'")
    has(r.stdout, "would exec.sh \"echo audit >> ")
    eq(tree(data), before, "a plan changes nothing")
  end)
end)

describe("tags", function()
  it("--tags runs the steps tagged so (a phase's tags are its steps'), always, and their handlers", function()
    local p, data, state = setup()
    local r = run(p, data, state, { "--tags", "conf" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "step same skipped (not tagged conf (--tags))")
    has(r.stdout, "phase check skipped (no step selected by --tags/--skip-tags)")
    eq(fs.exists(data .. "/log.conf"), false)
    eq(fs.exists(data .. "/late"), false)
    eq(fs.read(data .. "/seen"), "restart:port=2\naudit\n")
    -- a phase's tag; two tags given in one or two options
    p, data, state = setup()
    r = run(p, data, state, { "--tags", "check,logs" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/conf"), "port=1\n")
    eq(fs.exists(data .. "/late"), true)
    eq(fs.read(data .. "/seen"), "reload-log\nrestart:port=1\n")
  end)

  it("--skip-tags leaves out steps and handlers; always runs unless skipped by name", function()
    local d = tmpdir()
    local p = playbook_file(d, "t.lua", [[
return playbook {
  name = "t", params = { dir = "" },
  phase "p" {
    handler "h" { tags = { "noisy" }, run = function(ctx) fs.write(ctx.params.dir .. "/h", "") end },
    step "a" { tags = { "always" }, run = function(ctx) fs.write(ctx.params.dir .. "/a", "") end },
    step "b" { tags = { "x" }, notify = { "h" }, run = function(ctx) fs.write(ctx.params.dir .. "/b", "") end },
    step "c" { run = function(ctx) fs.write(ctx.params.dir .. "/c", "") end },
  },
}]])
    local function try(args, want)
      local data = d .. "/" .. table.concat(args, "_"):gsub("[^%w]", "")
      fs.mkdir(data)
      local argv = { p, "--state", d .. "/state", "-p", "dir=" .. data }
      table.move(args, 1, #args, #argv + 1, argv)
      local r = hrun_cmd(argv)
      eq(r.code, 0, r.stdout .. r.stderr)
      eq(fs.list(data), want, table.concat(args, " "))
      return r
    end
    try({ "--tags", "y" }, { "a" })
    try({ "--tags", "x" }, { "a", "b", "h" })
    local r = try({ "--skip-tags", "x" }, { "a", "c" })
    has(r.stdout, "step b skipped (tagged 'x', --skip-tags)")
    r = try({ "--skip-tags", "noisy" }, { "a", "b", "c" })
    has(r.stdout, "step h skipped (tagged 'noisy', --skip-tags)")
    try({ "--skip-tags", "always", "--tags", "x" }, { "b", "h" })
    -- a plan follows the same selection
    r = hrun_cmd({ "plan", p, "--state", d .. "/state", "-p", "dir=" .. d, "--skip-tags", "x" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "step b skipped (tagged 'x', --skip-tags)")
    ok(not r.stdout:find("would run handler", 1, true), r.stdout)
  end)

  it("are kept by a resumed run", function()
    local p, data, state = setup()
    local r = run(p, data, state, { "--tags", "conf" }, { env = { HRUN_TEST_CRASH = "step-done:1" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "step other skipped (not tagged conf (--tags))")
    eq(fs.exists(data .. "/log.conf"), false)
    eq(fs.exists(data .. "/late"), false)
    eq(fs.read(data .. "/seen"), "restart:port=2\naudit\n")
    -- and --from: the steps before it stay out
    p, data, state = setup()
    r = run(p, data, state, { "--from", "same" }, { env = { HRUN_TEST_CRASH = "step-done:1" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/conf"), "port=1\n", "conf is before --from")
    eq(fs.exists(data .. "/late"), true)
  end)
end)

describe("--step", function()
  it("is refused without a terminal", function()
    local p, data, state = setup()
    local r = run(p, data, state, { "--step" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "--step asks before each step on the terminal, and there is none")
    eq(fs.exists(state .. "/journal.db"), false, "nothing ran")
  end)

  it("asks before each step: yes, no, continue", function()
    local p, data, state = setup()
    local t = terminal(string.format("env TERM=xterm %s %s --step --state %s -p dir=%s; echo EXIT=$?; sleep 30",
      shq(HRUN), shq(p), shq(state), shq(data)), "run step 'conf'?")
    t:line("y", "run step 'same'?")
    t:line("n", "run step 'other'?")
    t:line("c", "EXIT=0")
    eq(fs.read(data .. "/conf"), "port=2\n")
    eq(fs.exists(data .. "/late"), true, "c: the rest ran without asking")
    ok(not t:screen():find("run step 'late'", 1, true), t:screen())
    eq(rows(state)[2], "step other done")
    has(t:screen(), "skipped at --step")
  end)
end)

describe("handlers in the sandbox", function()
  it("run, notified by notify and ctx.notify, and again after a rollback", function()
    local d = tmpdir()
    fs.mkdir(d .. "/data")
    fs.write(d .. "/data/conf", "port=1\n")
    local p = sandboxed_playbook(d, { caps = { "fs:" .. d .. "/data", "exec:sh" }, params = 'dir = "", fail = false',
      steps = [[
    handler "restart web" { run = function(ctx)
      exec.sh("echo restart:$(cat " .. ctx.params.dir .. "/conf) >> " .. ctx.params.dir .. "/seen")
    end },
    step "conf" { notify = { "restart web" }, run = function(ctx)
      fs.write(ctx.params.dir .. "/conf", "port=2\n")
    end },
    step "poke" { run = function(ctx)
      ctx.notify("restart web")
      if ctx.params.fail then ctx.notify("nothing such") end
    end },]] })
    local data = d .. "/data"
    local r = hrun_cmd({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. data })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "running handler 'restart web', notified by steps 'conf', 'poke'")
    eq(fs.read(data .. "/seen"), "restart:port=2\n")
    r = hrun_cmd({ "rollback", "--state", d .. "/state" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(data .. "/seen"), "restart:port=2\nrestart:port=1\n")
    -- an unknown name raises in the playbook's process, at its line
    r = hrun_cmd({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. data, "-p", "fail=true" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "pb.lua:13: ctx.notify: no handler 'nothing such' in phase 'p' or the playbook")
  end)
end)
