-- Crashes: hrun killed with SIGKILL between steps, in the middle of an effect, while a
-- child runs, and in the middle of a rollback. Then hrun resume finishes the job, or
-- hrun rollback undoes it: nothing lost, nothing done twice.

local PLAYBOOK = [[
local function append(ctx, word)
  local log = ctx.params.data .. "/log"
  fs.write(log, (fs.exists(log) and fs.read(log) or "") .. word .. "\n")
end

return playbook {
  name = "crashy", params = { data = "", fail = false, wait = false },
  phase "a" {
    step "one" { run = function(ctx)
      append(ctx, "one")
      fs.write(ctx.params.data .. "/one", "1")
    end },
    step "two" { run = function(ctx)
      append(ctx, "two")
      fs.mkdir(ctx.params.data .. "/dir2")
      fs.write(ctx.params.data .. "/dir2/f", "2")
      if ctx.params.wait and not fs.exists(ctx.params.data .. "/../no-wait") then
        fs.write(ctx.params.data .. "/waiting", "")
        exec.run({ "sleep", "31.417" }, { readonly = true })
      end
    end },
  },
  phase "b" {
    step "three" { run = function(ctx)
      append(ctx, "three")
      fs.rename(ctx.params.data .. "/one", ctx.params.data .. "/one.moved")
    end },
    step "four" { run = function(ctx)
      append(ctx, "four")
      fs.remove(ctx.params.data .. "/victim")
      if ctx.params.fail then error("four fails") end
    end },
  },
}
]]

local function setup()
  local d = tmpdir()
  fs.mkdir(d .. "/data")
  fs.write(d .. "/data/victim", "precious\n")
  fs.write(d .. "/data/config", "unchanged\n")
  local p = playbook_file(d, "crashy.lua", PLAYBOOK)
  return p, d .. "/data", d .. "/state"
end

local function crash_run(p, data, state, point, extra)
  local args = { p, "--state", state, "-p", "data=" .. data }
  for _, a in ipairs(extra or {}) do
    args[#args + 1] = a
  end
  local r = hrun_cmd(args, { env = { HRUN_TEST_CRASH = point } })
  eq(r.signal, "SIGKILL", point .. ": hrun was to be killed there; " .. r.stdout .. r.stderr)
  return r
end

local function expect_done(data, state)
  eq(fs.read(data .. "/log"), "one\ntwo\nthree\nfour\n", "each step's work exactly once")
  eq(fs.read(data .. "/one.moved"), "1")
  eq(fs.read(data .. "/dir2/f"), "2")
  eq(fs.exists(data .. "/victim"), false)
  eq(fs.exists(data .. "/one"), false)
  local run = json.decode(hrun_cmd({ "show", "--json", "--state", state }).stdout)
  eq(run.status, "done")
  local done = {}
  for _, s in ipairs(run.steps) do
    if s.kind == "step" and s.status == "done" then
      done[s.name] = (done[s.name] or 0) + 1
    end
  end
  eq(done, { one = 1, two = 1, three = 1, four = 1 }, "every step done once in the journal")
end

describe("after SIGKILL, hrun resume", function()
  for _, point in ipairs({ "step-start:2", "step-done:1", "step-done:3", "effect-intent:1", "effect-intent:4",
    "effect-done:4", "effect-intent:9" }) do
    it("finishes the run killed at " .. point, function()
      local p, data, state = setup()
      crash_run(p, data, state, point)
      has(hrun_cmd({ "runs", "--state", state }).stdout, "crashed")
      local r = hrun_cmd({ "resume", "--state", state })
      eq(r.code, 0, r.stdout .. r.stderr)
      expect_done(data, state)
    end)
  end

  it("finishes the run killed while a child runs", function()
    local p, data, state = setup()
    local script = string.format("%s %s --state %s -p data=%s -p wait=true >/dev/null 2>&1 & pid=$!; " ..
      "for i in $(seq 200); do [ -e %s/waiting ] && break; sleep 0.05; done; kill -KILL $pid; wait $pid; " ..
      "echo status=$?", shq(HRUN), shq(p), shq(state), shq(data), shq(data))
    local r = exec.sh(script, { timeout = 30 })
    after(function()
      exec.run({ "pkill", "-f", "^sleep 31.417$" }, { check = false })
    end)
    has(r.stdout, "status=137")
    fs.write(data .. "/../no-wait", "")
    r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "undo two: undone (inverses, before running it again)")
    expect_done(data, state)
  end)

  it("refuses a playbook that changed since, unless --force", function()
    local p, data, state = setup()
    crash_run(p, data, state, "step-done:1")
    fs.write(p, PLAYBOOK .. "\n-- edited\n")
    local r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "changed since run 1 began: check the change, then resume with --force")
    r = hrun_cmd({ "resume", "--force", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stderr, "resuming anyway (--force)")
    expect_done(data, state)
  end)

  it("finds the playbook from any working directory", function()
    local p, data, state = setup()
    local dir, name = p:match("^(.*)/([^/]+)$")
    local r = hrun_cmd({ name, "--state", state, "-p", "data=" .. data }, { cwd = dir,
      env = { HRUN_TEST_CRASH = "step-done:2" } })
    eq(r.signal, "SIGKILL")
    r = hrun_cmd({ "resume", "--state", state }, { cwd = "/" })
    eq(r.code, 0, r.stdout .. r.stderr)
    expect_done(data, state)
  end)

  it("has nothing to resume in a finished run", function()
    local p, data, state = setup()
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    local r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "run 1 is done: there is nothing to resume")
  end)
end)

describe("after SIGKILL, hrun rollback", function()
  for _, point in ipairs({ "step-done:1", "effect-intent:4", "effect-done:5", "effect-intent:9" }) do
    it("undoes the run killed at " .. point, function()
      local p, data, state = setup()
      local before = tree(data)
      crash_run(p, data, state, point)
      local r = hrun_cmd({ "rollback", "--state", state })
      eq(r.code, 0, r.stdout .. r.stderr)
      eq(tree(data), before)
      eq(json.decode(hrun_cmd({ "show", "--json", "--state", state }).stdout).status, "rolled-back")
    end)
  end

  it("undoes a finished run, and only once", function()
    local p, data, state = setup()
    local before = tree(data)
    eq(hrun_cmd({ p, "--state", state, "-p", "data=" .. data }).code, 0)
    local r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(tree(data), before)
    r = hrun_cmd({ "rollback", "1", "--state", state })
    eq(r.code, 0)
    has(r.stdout, "already rolled back")
  end)

  it("finishes a rollback that was itself killed", function()
    local p, data, state = setup()
    local before = tree(data)
    crash_run(p, data, state, "undo-effect:3", { "-p", "fail=true" })
    local r = hrun_cmd({ "rollback", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(tree(data), before)
  end)

  it("uses the journal alone when the playbook is gone", function()
    local p, data, state = setup()
    local before = tree(data)
    crash_run(p, data, state, "step-done:3")
    fs.remove(p)
    local r = hrun_cmd({ "rollback", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stderr, "is gone: each step is undone with the version that ran it, which the journal keeps")
    eq(tree(data), before)
  end)
end)

describe("a step's own undo", function()
  it("sees the state the step saved, after a crash", function()
    local d = tmpdir()
    local data, state = d .. "/data", d .. "/state"
    fs.mkdir(data)
    local p = playbook_file(d, "undo.lua", [[
return playbook { name = "undo", params = { data = "" },
  phase "p" {
    step "record" {
      run = function(ctx)
        ctx.state.token = "t-" .. 42
        exec.run({ "sh", "-c", "echo made > " .. ctx.params.data .. "/external" })
      end,
      undo = function(ctx)
        exec.run({ "rm", ctx.params.data .. "/external" })
        fs.write(ctx.params.data .. "/undone-with", ctx.state.token)
      end,
    },
    step "next" { run = function(ctx) fs.write(ctx.params.data .. "/next", "x") end },
  } }]])
    crash_run(p, data, state, "step-done:1")
    eq(fs.read(data .. "/external"), "made\n")
    local r = hrun_cmd({ "rollback", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.exists(data .. "/external"), false)
    eq(fs.read(data .. "/undone-with"), "t-42")
  end)
end)

describe("a run's hosts", function()
  local HOSTED = [[
return playbook { name = "hosted", hosts = { old = "ssh://root@192.0.2.1" }, params = { data = "" },
  phase "p" {
    step "there" { on = "old", run = function(ctx) fs.write(ctx.params.data .. "/there", "x") end },
  } }]]

  -- the run killed as its first step starts (-H old=local: host old is this machine)
  local function killed_run()
    local d = tmpdir()
    fs.mkdir(d .. "/data")
    local p = playbook_file(d, "hosted.lua", HOSTED)
    local state = d .. "/state"
    local r = hrun_cmd({ p, "--state", state, "-p", "data=" .. d .. "/data", "-H", "old=local" },
      { env = { HRUN_TEST_CRASH = "step-start:1" } })
    eq(r.signal, "SIGKILL")
    return d, state
  end

  it("are journaled with the run, in its first commit: killed there, a resume reaches the same", function()
    local d, state = killed_run()
    local hosts = exec.run({ "sqlite3", state .. "/journal.db", "SELECT hosts FROM runs WHERE id = 1" }).stdout
    eq(json.decode(hosts), { old = { url = "local" } })
    local r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/data/there"), "x", "-H old=local: this machine, as the run said")
  end)

  it("unknown to a run (journaled by an older hrun without them): its `on` steps run nowhere, not here", function()
    local d, state = killed_run()
    exec.run({ "sqlite3", state .. "/journal.db", "UPDATE runs SET hosts = NULL" })
    local r = hrun_cmd({ "resume", "--state", state })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "the step runs on host 'old', and this run knows no address for it")
    eq(fs.exists(d .. "/data/there"), false, "nothing meant for host old was done here")
  end)
end)
