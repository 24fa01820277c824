-- A sandboxed playbook in a process of its own (hrun __sandbox, stdlib/hrun/child.lua):
-- the confinement the run reports and a fetched playbook's refusal when the kernel lacks
-- part of it; the engine's clock (a step's deadline, SIGTERM, the load's 10 s under
-- hrun check) against Lua that never returns to it; memory that C allocates; a process
-- started again after a kill; ctx, callbacks, coroutines and secrets across the pipe.

local function run(args, env)
  return hrun_cmd(args, { env = env })
end

-- A playbook in d declaring caps; its one phase's steps from `steps` (source text);
-- `top`: source before the playbook.
local function sandboxed(d, caps, steps, top)
  return sandboxed_playbook(d, { caps = caps, steps = steps, top = top or "", name = "proc", params = 'dir = ""' })
end

-- Runs hrun in the background of a shell: its result with the pid it had.
local function run_pid(args, env)
  local words = {}
  for _, a in ipairs(args) do
    words[#words + 1] = shq(a)
  end
  local r = exec.sh(string.format("%s %s & pid=$!; echo \"pid=$pid\" >&2; wait $pid", shq(HRUN),
    table.concat(words, " ")), { check = false, env = env })
  r.pid = r.stderr:match("pid=(%d+)")
  return r
end

-- The sandbox processes hrun `pid` started that still run.
local left_by = sandbox_processes

describe("the sandbox's process", function()
  it("is confined by the kernel, and the run says so; --json carries what is missing", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "s" { run = function(ctx) fs.write(ctx.params.dir .. "/x", "1") end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "sandbox: a process of its own, confined by nobody, no_new_privs, Landlock (ABI ")
    has(r.stdout, "seccomp")
    ok(not r.stdout:find("MISSING", 1, true), r.stdout)
    r = run({ "plan", p, "--sandbox", "--json", "--state", d .. "/state", "-p", "dir=" .. d },
      { HRUN_SANDBOX_OMIT = "landlock" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local start = json.decode(r.stdout:match("[^\n]+"))
    eq(start.event, "run-start")
    eq(start.sandbox.landlock, false)
    eq(start.sandbox.seccomp, true)
    eq(start.sandbox.missing, { "landlock: omitted (HRUN_SANDBOX_OMIT)" })
    -- a trusted playbook runs in the engine: no such line
    r = run({ p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout)
    ok(not r.stdout:find("sandbox:", 1, true), r.stdout)
  end)

  it("refuses a fetched playbook where confinement is missing, unless --allow-weak-sandbox", function()
    local d = tmpdir()
    local state = d .. "/state"
    fs.mkdir(state .. "/playbooks/shared", { parents = true })
    fs.write(state .. "/playbooks/shared.lock", "{}")
    local p = sandboxed(state .. "/playbooks/shared", { "fs:" .. d .. "/out" }, [[
    step "s" { run = function() fs.write("]] .. d .. [[/out", "ran") end },]])
    local weak = { HRUN_SANDBOX_OMIT = "seccomp" }
    local r = run({ p, "--state", state }, weak)
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "refusing the fetched playbook " .. p .. ": this kernel cannot confine it fully:")
    has(r.stderr, "seccomp: omitted (HRUN_SANDBOX_OMIT)")
    has(r.stderr, "--allow-weak-sandbox")
    eq(fs.exists(d .. "/out"), false)
    r = run({ "check", p, "--state", state }, weak)
    eq(r.code, 3, r.stderr)
    r = run({ p, "--state", state, "--allow-weak-sandbox" }, weak)
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "MISSING: seccomp: omitted (HRUN_SANDBOX_OMIT)")
    eq(fs.read(d .. "/out"), "ran")
    -- fully confined, it needs no flag
    fs.remove(d .. "/out")
    r = run({ p, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/out"), "ran")
  end)
end)

describe("the engine's clock", function()
  it("kills a Lua pattern at the step's deadline, and the rollback's undo runs in a new process", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "first" {
      run = function(ctx) fs.write(ctx.params.dir .. "/first", "1"); ctx.state.loads = loads end,
      undo = function(ctx)
        -- a process started again: the file's top ran once more in it
        fs.write(ctx.params.dir .. "/undone", tostring(loads) .. " " .. tostring(ctx.state.loads))
        fs.remove(ctx.params.dir .. "/first")
      end,
    },
    step "pattern" { timeout = 1, run = function()
      local s = string.rep("a", 40)
      while true do s:find("^(a*)*b$") end
    end },]], "loads = (loads or 0) + 1")
    local t0 = sys.now()
    local r = run_pid({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    local took = sys.now() - t0
    eq(r.code, 1, r.stdout)
    has(r.stdout, "step 'pattern' failed: timed out after 1 s")
    has(r.stdout, "undo first: undone (undo)")
    ok(took < 8, "it ended at the deadline, not after: " .. took)
    eq(fs.read(d .. "/undone"), "1 1")
    eq(fs.exists(d .. "/first"), false)
    eq(left_by(r.pid), {})
  end)

  it("ends everything on SIGTERM, a loop in a finalizer included", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "first" { run = function(ctx) fs.write(ctx.params.dir .. "/first", "1") end },
    step "spin" { run = function()
      -- garbage until the collector runs a finalizer that never returns
      while true do setmetatable({}, { __gc = function() while true do end end }) end
    end },]])
    local r = exec.sh(string.format("%s %s --sandbox --state %s -p dir=%s & pid=$!; echo pid=$pid >&2; sleep 1.5; " ..
      "kill -TERM $pid; wait $pid; echo status=$?", shq(HRUN), shq(p), shq(d .. "/state"), shq(d)), { check = false })
    has(r.stdout, "status=130")
    has(r.stdout, "failed and rolled back")
    eq(fs.exists(d .. "/first"), false)
    eq(left_by(r.stderr:match("pid=(%d+)")), {})
  end)

  it("gives loading 10 s under every command, hrun check included", function()
    local d = tmpdir()
    local p = sandboxed(d, {}, [[
    step "s" { run = function() end },]], "while true do end")
    local t0 = sys.now()
    local r = run_pid({ "check", p, "--sandbox", "--state", d .. "/state" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, p .. ": evaluating the playbook took longer than 10 s")
    ok(sys.now() - t0 < 20, "the load was stopped")
    eq(left_by(r.pid), {})
  end)
end)

describe("memory", function()
  it("counts what json.decode allocates in C, not only the Lua heap", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "first" { run = function(ctx) fs.write(ctx.params.dir .. "/first", "1") end },
    step "decode" { run = function(ctx)
      local text = "[" .. string.rep("[1,2,3,4,5,6,7,8],", 1500000) .. "0]"
      ctx.log("decoding %d bytes", #text)
      local v, err = json.decode(text)
      ctx.log("decoded: %s %s", type(v), tostring(err))
    end },]])
    local r = run({ p, "--sandbox", "--memory-limit", "64M", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "decoding 27000003 bytes")
    has(r.stdout, "memory limit reached: the playbook's process would pass 64 MiB (--memory-limit)")
    eq(fs.exists(d .. "/first"), false)
  end)
end)

describe("across the pipe", function()
  it("ctx comes back as the function left it", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "one" { run = function(ctx)
      ctx.state.path = ctx.params.dir .. "/one"
      ctx.shared.list = { 1, 2.5, "three", { nested = true } }
      fs.write(ctx.state.path, "1")
    end },
    step "two" {
      run = function(ctx)
        assert(ctx.shared.list[3] == "three" and ctx.shared.list[4].nested and math.type(ctx.shared.list[2]) == "float")
        error("two fails")
      end,
    },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "two fails")
    local show = json.decode(run({ "show", "1", "--json", "--state", d .. "/state" }).stdout)
    local states = {}
    for _, st in ipairs(show.steps) do
      states[st.name] = st.state
    end
    eq(states.one, { path = d .. "/one" })
    -- each event is a value in show --json, not JSON inside a string
    eq(show.events[1].data.event, "run-start")
    eq(show.events[1].data.playbook, "proc")
    eq(show.shared, { list = { 1, 2.5, "three", { nested = true } } })
  end)

  it("calls back into the playbook (a stream function), from coroutines too", function()
    local d = tmpdir()
    local p = sandboxed(d, { "exec:sh", "fs:" .. d }, [[
    step "s" { run = function(ctx)
      local lines = {}
      local co = coroutine.wrap(function()
        exec.run({ "sh", "-c", "echo one; echo two" }, { stream = function(line) lines[#lines + 1] = line end })
        coroutine.yield(#lines)
        return fs.exists(ctx.params.dir)
      end)
      assert(co() == 2, "two lines")
      assert(co() == true)
      fs.write(ctx.params.dir .. "/lines", table.concat(lines, ","))
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/lines"), "one,two")
  end)

  it("gives a secret as a handle: it reaches the command, its bytes never reach the playbook", function()
    local d = tmpdir()
    fs.write(d .. "/pass", "hunter2-correct-horse\n")
    exec.run({ "chmod", "600", d .. "/pass" })
    local p = sandboxed(d, { "secrets:" .. d, "exec:sh", "env:PASS", "fs:" .. d }, [[
    step "s" { run = function(ctx)
      local s = secrets.read(ctx.params.dir .. "/pass")
      local header = "Bearer " .. s
      local tries = {}
      for _, f in ipairs({
        function() return #s end, function() return s:sub(1, 3) end, function() return string.byte(s, 1) end,
        function() return s.bytes end, function() return string.format("%q", s) end,
      }) do
        local ok, v = pcall(f)
        tries[#tries + 1] = tostring(ok) .. ":" .. tostring(v)
      end
      local r = exec.run({ "sh", "-c", 'printf "%s|%s" "$PASS" "$(cat)"' },
        { env = { PASS = s }, stdin = header })
      fs.write(ctx.params.dir .. "/seen", table.concat(tries, "\n") .. "\n" .. tostring(s) .. "\n" ..
        json.encode({ s = s }) .. "\n" .. r.stdout)
      ctx.state.out = r.stdout
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    local seen = fs.read(d .. "/seen")
    ok(not seen:find("hunter2", 1, true), seen)
    has(seen, "false:")
    has(seen, "a secret has no length")
    has(seen, "<secret>\n{\"s\":\"<secret>\"}\n<secret>|Bearer <secret>")
    -- the command got the bytes: it printed them, and the engine masked them on the way back
    local show = run({ "show", "1", "--json", "--state", d .. "/state" }).stdout
    ok(not show:find("hunter2", 1, true), show)
    has(show, "<secret>|Bearer <secret>")
  end)

  it("reads the environment through sys.env: os.getenv needs env:NAME", function()
    local d = tmpdir()
    local steps = [[
    step "s" { run = function(ctx)
      fs.write(ctx.params.dir .. "/got", tostring(os.getenv("HRUN_TEST_PASSWORD")))
    end },]]
    local env = { HRUN_TEST_PASSWORD = "pw-from-env", PATH = os.getenv("PATH") }
    local p = sandboxed(d, { "fs:" .. d }, steps)
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d }, env)
    eq(r.code, 1, r.stdout)
    has(r.stdout, "pb.lua:7: sandbox: sys.env needs the capability 'env:HRUN_TEST_PASSWORD'")
    eq(fs.exists(d .. "/got"), false)
    r = run({ sandboxed(d, { "fs:" .. d, "env:HRUN_TEST_*" }, steps), "--sandbox", "--state", d .. "/state", "-p",
      "dir=" .. d }, env)
    eq(r.code, 0, r.stdout)
    eq(fs.read(d .. "/got"), "pw-from-env")
  end)

  it("keeps a playbook's '$' keys and odd values as they are", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "s" { run = function(ctx)
      -- a table of the playbook's is never a tag, whatever its keys
      ctx.state.odd = { ["$s"] = { { id = 1 } }, ["$f"] = "x", ["$$d"] = 1, ["$g"] = "/", big = math.maxinteger }
      fs.write(ctx.params.dir .. "/x", "\255\254binary\0")
    end },
    step "t" { run = function(ctx)
      local data = fs.read(ctx.params.dir .. "/x")
      assert(data == "\255\254binary\0", "bytes that are not UTF-8 cross whole")
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    local show = json.decode(run({ "show", "1", "--json", "--state", d .. "/state" }).stdout)
    eq(show.steps[1].state, { odd = { ["$s"] = { { id = 1 } }, ["$f"] = "x", ["$$d"] = 1, ["$g"] = "/",
      big = math.maxinteger } })
  end)
end)

describe("what a review found", function()
  it("undoes each step with its own undo after a restart, however a loop ordered the steps", function()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
local set = {}
for _, n in ipairs({ "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel" }) do
  set[n] = true
end
local body = {}
for n in pairs(set) do -- pairs: another order in each new Lua state
  body[#body + 1] = step(n) {
    run = function(ctx) fs.write(ctx.params.dir .. "/" .. n, n) end,
    undo = function(ctx) fs.write(ctx.params.dir .. "/undo-" .. ctx.step, n) end,
  }
end
body[#body + 1] = step "spin" { timeout = 1, run = function() while true do end end }
return playbook { name = "order", params = { dir = "" }, capabilities = { "fs:]] .. d .. [[" },
  phase "p" (body) }]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "timed out after 1 s")
    for _, n in ipairs({ "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel" }) do
      eq(fs.read(d .. "/undo-" .. n), n, "the undo of " .. n .. " is its own")
    end
  end)

  it("refuses a playbook whose file gives other functions when its process starts again", function()
    local d = tmpdir()
    -- a step named by the clock: the process started again names it otherwise
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "first" { run = function(ctx) fs.write(ctx.params.dir .. "/first", "1") end,
      undo = function(ctx) fs.remove(ctx.params.dir .. "/first") end },
    step(("%d-%.0f"):format(os.time(), os.clock() * 1e9)) { run = function() end, undo = function() end },
    step "spin" { timeout = 0.5, run = function() while true do end end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 2, r.stdout)
    has(r.stdout, "the playbook's file gave another playbook when its process was started again")
  end)

  it("hands ctx.params and ctx to module functions as they are, and ctx comes back changed", function()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
return playbook {
  name = "ctx", params = { dir = "", files = { a = 1, b = 2 } },
  capabilities = { "fs:]] .. d .. [[" },
  phase "p" {
    step "keys" { run = function(ctx)
      local st = ctx.shared
      migrate.stop_old(ctx, {}, { { name = "svc" } })
      assert(st == ctx.shared and type(ctx.shared.stopped.svc) == "number", "the engine's change came back")
      fs.write(ctx.params.dir .. "/keys", table.concat(migrate.keys(ctx.params.files), ",") .. " " ..
        json.encode(ctx.params.files))
    end },
    step "next" { run = function(ctx)
      assert(type(ctx.shared.stopped.svc) == "number", "and was journaled")
    end },
  },
}]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/keys"), 'a,b {"a":1,"b":2}')
  end)

  it("survives finalizers that call hrun while a message is read", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "s" { run = function(ctx)
      for i = 1, 20000 do
        setmetatable({}, { __gc = function() fs.exists(ctx.params.dir) end })
        if i % 50 == 0 then fs.exists(ctx.params.dir) end
      end
      fs.write(ctx.params.dir .. "/done", "yes")
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/done"), "yes")
  end)

  it("masks a secret in table keys too", function()
    local d = tmpdir()
    fs.write(d .. "/pass", "hunter2-key-secret\n")
    exec.run({ "chmod", "600", d .. "/pass" })
    local p = sandboxed(d, { "secrets:" .. d, "exec:sh", "env:K", "fs:" .. d }, [[
    step "s" { run = function(ctx)
      local s = secrets.read(ctx.params.dir .. "/pass")
      local r = exec.run({ "sh", "-c", "printf '{\"%s\": 1}' \"$K\"" }, { env = { K = s } })
      local keys = {}
      for k in pairs(json.decode(r.stdout)) do
        keys[#keys + 1] = k:reverse()
      end
      fs.write(ctx.params.dir .. "/keys", table.concat(keys, ","))
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/keys"), ("<secret>"):reverse())
    -- what the engine sends the process: a key holding the bytes is masked as a value is
    r = hrun_cmd({ "-e", string.format([[
      local f = %q
      local s = secrets.read(f)
      local raw = fs.read(f):gsub("\n$", "")
      io.stdout:write(require("hrun.wire").encode({ [raw .. "-key"] = raw }, nil, true))
      assert(s)]], d .. "/pass") })
    eq(r.stdout, '{"<secret>-key":"<secret>"}', r.stderr)
  end)

  it("runs none of a fetched playbook's file before refusing a weak sandbox", function()
    local d = tmpdir()
    local state = d .. "/state"
    fs.mkdir(state .. "/playbooks/shared", { parents = true })
    fs.write(state .. "/playbooks/shared.lock", "{}")
    local p = sandboxed(state .. "/playbooks/shared", {}, [[
    step "s" { run = function() end },]], 'print("TOP-LEVEL CODE RAN")')
    local r = run({ p, "--state", state }, { HRUN_SANDBOX_OMIT = "landlock" })
    eq(r.code, 3, r.stdout .. r.stderr)
    ok(not (r.stdout .. r.stderr):find("TOP-LEVEL CODE RAN", 1, true), r.stdout)
  end)

  it("raises from a module function's nil, message as a trusted step does", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "s" { run = function(ctx) json.decode("{not json") end },]])
    for _, sb in ipairs({ "--sandbox", "--plan" }) do
      local r = run({ p, sb, "--state", d .. "/state", "-p", "dir=" .. d })
      eq(r.code, 1, r.stdout)
      has(r.stdout, "pb.lua:6: json.decode: line 1 column")
    end
  end)

  it("says a step timed out when its deadline struck inside a callback", function()
    local d = tmpdir()
    local p = sandboxed(d, { "exec:sh", "fs:" .. d }, [[
    step "s" { timeout = 1, run = function(ctx)
      exec.run({ "sh", "-c", "while :; do echo x; sleep 0.01; done" }, { stream = function() while true do end end })
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "step 's' failed: timed out after 1 s")
  end)

  it("leaves nothing open in the playbook's process but its pipe and stdio", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "s" { run = function(ctx) local t = os.time() + 2 while os.time() < t do end end },]])
    local r = exec.sh(string.format("exec 7</etc/hostname; %s %s --sandbox --state %s -p dir=%s & pid=$!; sleep 1; " ..
      "for c in $(pgrep -f \"__sandbox .* $pid\\$\"); do ls /proc/$c/fd; done; wait $pid", shq(HRUN), shq(p),
      shq(d .. "/state"), shq(d)), { check = false })
    eq(r.code, 0, r.stdout .. r.stderr)
    local fds = {}
    for line in r.stdout:gmatch("[^\n]+") do -- ls's lines, not the run's (its recap ends "failed=0")
      fds[#fds + 1] = line:match("^%d+$") and tonumber(line) or nil
    end
    table.sort(fds)
    eq(fds, { 0, 1, 2, 3, 4 })
  end)

  it("gives io.open's answers as Lua's io.open does", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "s" { run = function(ctx)
      local f, msg, code = io.open(ctx.params.dir .. "/missing")
      fs.write(ctx.params.dir .. "/got", tostring(f) .. "|" .. tostring(msg) .. "|" .. tostring(code))
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout)
    eq(fs.read(d .. "/got"), "nil|" .. d .. "/missing: No such file or directory|2")
  end)
end)
