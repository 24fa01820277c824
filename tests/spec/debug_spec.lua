-- Debugging playbooks in the REPL, on a real terminal: --debug when a step fails
-- (retry after editing the playbook, skip, continue, roll back), --break before a
-- step, and hrun repl PLAYBOOK.

local BROKEN = [[
return playbook {
  name = "debugme", params = { data = "" },
  phase "p" {
    step "first" { run = function(ctx) fs.write(ctx.params.data .. "/first", "1") end },
    step "second" { run = function(ctx)
      fs.write(ctx.params.data .. "/second", "attempt")
      error("second is broken")
    end },
    step "third" { run = function(ctx) fs.write(ctx.params.data .. "/third", "3") end },
  },
}
]]

local function setup()
  local d = tmpdir()
  fs.mkdir(d .. "/data")
  return d, playbook_file(d, "debugme.lua", BROKEN), d .. "/data", d .. "/state"
end

local function run_in_terminal(p, data, state, ...)
  local cmd = string.format("%s %s --state %s -p data=%s --no-color %s; echo EXIT=$?; sleep 60",
    shq(HRUN), shq(p), shq(state), shq(data), table.concat({ ... }, " "))
  return terminal(cmd)
end

describe("hrun PLAYBOOK --debug", function()
  it("opens the REPL on failure with ctx, and retries after an edit", function()
    local _, p, data, state = setup()
    local t = run_in_terminal(p, data, state, "--debug")
    t:wait("failed: step 'second' (phase p)")
    t:line("err", "second is broken")
    t:line("ctx.step", '"second"')
    t:line("ctx.params.data", data)
    -- fix the playbook on disk, then retry: the step is reloaded
    fs.write(p, (BROKEN:gsub('error%("second is broken"%)', 'fs.write(ctx.params.data .. "/second", "fixed")')))
    t:line("retry()", "EXIT=0")
    eq(fs.read(data .. "/second"), "fixed")
    eq(fs.read(data .. "/third"), "3")
  end)

  it("skips the failed step after undoing what it did", function()
    local _, p, data, state = setup()
    local t = run_in_terminal(p, data, state, "--debug")
    t:wait("failed: step 'second'")
    t:line("skip()", "EXIT=0")
    eq(fs.exists(data .. "/second"), false, "the failed attempt was undone")
    eq(fs.read(data .. "/third"), "3")
  end)

  it("continues, accepting the step as it is", function()
    local _, p, data, state = setup()
    local t = run_in_terminal(p, data, state, "--debug")
    t:wait("failed: step 'second'")
    t:line("continue()", "EXIT=0")
    eq(fs.read(data .. "/second"), "attempt")
  end)

  it("rolls back when asked", function()
    local _, p, data, state = setup()
    local t = run_in_terminal(p, data, state, "--debug")
    t:wait("failed: step 'second'")
    t:line("rollback()", "EXIT=1")
    eq(fs.list(data), {})
  end)
end)

describe("hrun PLAYBOOK --break STEP", function()
  it("stops before the step, with its ctx", function()
    local d, _, data, state = setup()
    local p = playbook_file(d, "ok.lua", (BROKEN:gsub('error%("second is broken"%)', "")))
    local t = run_in_terminal(p, data, state, "--break", "third")
    t:wait("break before step 'third'")
    eq(fs.exists(data .. "/third"), false, "not run yet")
    eq(fs.read(data .. "/second"), "attempt")
    t:line("ctx.step", '"third"')
    t:line("continue()", "EXIT=0")
    eq(fs.read(data .. "/third"), "3")
  end)

  it("works on a pipe too", function()
    local _, p, data, state = setup()
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. data, "--debug" },
      { stdin = "print('the error: ' .. err)\nskip()\n" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "the error: " .. p .. ":7: second is broken")
  end)
end)

describe("hrun repl PLAYBOOK", function()
  it("says which step is not there without the engine's own file and line", function()
    local _, p, data, state = setup()
    local r = hrun_cmd({ "repl", p, "-p", "data=" .. data, "--state", state },
      { stdin = 'run_step("secnod")\nrun_check("nope")\n' })
    eq(r.code, 1)
    has(r.stderr, "the playbook has no step 'secnod' (did you mean 'second'?)")
    has(r.stderr, "the playbook has no check 'nope'")
    ok(not r.stderr:find("debugger.lua", 1, true), r.stderr)
  end)

  it("lists, runs steps on their own as a debug run, and rolls them back", function()
    local _, p, data, state = setup()
    local t = terminal(string.format("env HRUN_STATE_DIR=%s %s repl %s -p data=%s --no-color", shq(state),
      shq(HRUN), shq(p), shq(data)), "playbook debugme")
    t:line("phases()", '{ "p" }')
    t:line("steps()", '"p/second"')
    t:line('run_step("first")', "true")
    eq(fs.read(data .. "/first"), "1")
    t:line("ctx.step", '"first"')
    t:line('run_step("secnod")', "the playbook has no step 'secnod' (did you mean 'second'?)")
    t:line('run_step("second")', "second is broken")
    t:line("rollback()", '"rolled-back"')
    eq(fs.list(data), {})
    t:type("", "C-d")
    local deadline = sys.clock() + 5
    while t:alive() and sys.clock() < deadline do
      sys.sleep(0.05)
    end
    local runs = hrun_cmd({ "runs", "--state", state }).stdout
    has(runs, "rolled-back")
    local shown = json.decode(hrun_cmd({ "show", "--json", "--state", state }).stdout)
    eq(shown.mode, "debug")
  end)
end)

describe("confirm on a terminal", function()
  it("asks, and runs the step when answered yes", function()
    local d = tmpdir()
    local data, state = d .. "/data", d .. "/state"
    fs.mkdir(data)
    local p = playbook_file(d, "ask.lua", [[
return playbook { name = "ask", params = { data = "" },
  phase "p" {
    step "wipe" { confirm = "Wipe the cache?", run = function(ctx) fs.write(ctx.params.data .. "/wiped", "") end },
    step "again" { confirm = "Really?", run = function(ctx) fs.write(ctx.params.data .. "/again", "") end },
  } }]])
    local t = run_in_terminal(p, data, state)
    t:wait("Wipe the cache? [y/N]")
    t:line("y", "Really? [y/N]")
    t:line("n", "EXIT=1")
    has(t:screen(), "not confirmed: Really?")
    eq(fs.list(data), {}, "the first step was rolled back")
  end)
end)
