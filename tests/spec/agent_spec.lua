-- hrun's agent on another host (`hrun agent --dir DIR`), spoken to here on its stdin as
-- the controller speaks to it over ssh: what its journal answers for the controller's
-- effects, and a request that arrives after the controller gave it up.

-- The agent's answers to msgs (one JSON message a line each way), after its ready.
local function agent(dir, msgs)
  local lines = {}
  for _, m in ipairs(msgs) do
    lines[#lines + 1] = json.encode(m)
  end
  local r = hrun_cmd({ "agent", "--dir", dir }, { stdin = table.concat(lines, "\n") .. "\n", timeout = 60 })
  eq(r.code, 0, r.stdout .. r.stderr)
  local out = {}
  for line in r.stdout:gmatch("[^\n]+") do
    out[#out + 1] = json.decode(line)
  end
  eq(out[1].t, "ready", r.stdout)
  table.remove(out, 1)
  eq(#out, #msgs, r.stdout)
  return out
end

local function key(effect)
  return { controller = "c0ffee-1", run = 1, effect = effect }
end

local function write(seq, effect, name, args)
  return { t = "write", seq = seq, name = name, args = args, n = #args, summary = "[]", key = key(effect) }
end

describe("hrun's agent", function()
  it("leaves a tombstone for an effect it has no record of: the request arriving late is not done", function()
    local dir = tmpdir()
    local target = dir .. "/late"
    local out = agent(dir .. "/agent", {
      { t = "effect", seq = 1, key = key(5), op = "fs.write" },
      write(2, 5, "fs.write", { target, "late\n" }),
    })
    eq(out[1].t, "result")
    eq(out[1].values[1], nil, "no record")
    eq(out[2].t, "error")
    has(out[2].message, "fs.write: not done — its controller gave it up")
    ok(not fs.exists(target), "never written")
    -- asked again: still none, and the tombstone stays one
    out = agent(dir .. "/agent", { { t = "effect", seq = 1, key = key(5), op = "fs.write" } })
    eq(out[1].values[1], nil)
  end)

  it("refuses a sandboxed playbook its own directory, whatever the capabilities say", function()
    local dir = tmpdir()
    local adir = dir .. "/agent"
    local out = agent(adir, {
      { t = "sandbox", seq = 1, caps = { "fs@h:" .. dir }, host = "h" },
      write(2, 1, "fs.write", { adir .. "/hrun-0123456789abcdef", "#!/bin/sh\n" }),
      write(3, 2, "fs.write", { dir .. "/fine", "ok\n" }),
    })
    eq(out[1].t, "result")
    eq(out[2].t, "error", json.encode(out[2]))
    has(out[2].message, "which no sandboxed playbook may use, declared or not: it is hrun's own")
    ok(not fs.exists(adir .. "/hrun-0123456789abcdef"))
    eq(out[3].t, "result", json.encode(out[3]))
    eq(fs.read(dir .. "/fine"), "ok\n")
  end)

  it("answers for a write its killed agent left: stops what it left running, notes what it found", function()
    local dir = tmpdir()
    local adir = dir .. "/agent"
    -- an agent SIGKILLed while its command (whose group writes its pid) runs
    local function killed_in(effect, msg)
      local r = exec.run({ "sh", "-c", [[
        printf '%s\n' "$1" | "$2" agent --dir "$3" > /dev/null 2>&1 &
        agent=$!
        i=0
        while [ ! -s "$4" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL $agent
        wait $agent 2> /dev/null
        [ -s "$4" ] ]], "killed-agent", json.encode(msg), HRUN, adir, dir .. "/pid" .. effect }, { check = false })
      eq(r.code, 0, "the command started before its agent was killed: " .. r.stderr)
      return tonumber(fs.read(dir .. "/pid" .. effect):match("%d+"))
    end
    local function note(effect)
      local r = exec.run({ "sqlite3", adir .. "/agent.db", "SELECT status || '|' || error FROM effects WHERE effect = "
        .. effect }, { check = false })
      return r.stdout
    end
    local function alive(pid) -- not a zombie its init has yet to reap
      local stat = fs.read("/proc/" .. pid .. "/stat")
      return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
    end
    local function command(effect)
      return write(1, effect, "exec.run", { { "sh", "-c", 'echo $$ > "$1"; exec sleep 60', "cmd",
        dir .. "/pid" .. effect } })
    end
    -- left running: stopped before the answer
    local pid = killed_in(1, command(1))
    ok(alive(pid), "its command outlives its agent")
    local out = agent(adir, { command(1) })
    eq(out[1].t, "error", json.encode(out[1]))
    eq(out[1].code, "interrupted")
    has(out[1].message, "exec.run was interrupted on this host (its agent ended while it ran)")
    eq(out[1].effect.status, "intent", "what it did is not known")
    ok(not alive(pid), "stopped before the agent answered")
    has(note(1), "intent|its agent ended while it ran; stopped sleep (process group " .. pid .. ", 1 process")
    -- ended by itself before the next agent came: noted all the same (its end is not known)
    pid = killed_in(2, command(2))
    exec.run({ "kill", "-KILL", tostring(pid) })
    for _ = 1, 100 do
      if not alive(pid) then
        break
      end
      sys.sleep(0.05)
    end
    out = agent(adir, { { t = "effect", seq = 1, key = key(2), op = "exec.run" } })
    eq(out[1].values[1].status, "intent", json.encode(out[1]))
    eq(out[1].values[1].error, "its agent ended while it ran; none of its children was still running")
    -- asked again: the first note stays
    out = agent(adir, { command(2) })
    eq(out[1].code, "interrupted")
    has(note(2), "intent|its agent ended while it ran; none of its children was still running")
  end)

  it("answers a write sent again from its journal, never twice, and only for the same operation", function()
    local dir = tmpdir()
    local target = dir .. "/once"
    local out = agent(dir .. "/agent", {
      write(1, 7, "fs.write", { target, "one\n" }),
      { t = "effect", seq = 2, key = key(7), op = "fs.write" },
    })
    eq(out[1].t, "result", json.encode(out[1]))
    eq(out[1].effect.status, "done")
    eq(out[2].values[1].status, "done")
    eq(out[2].values[1].op, "fs.write")
    eq(fs.read(target), "one\n")
    fs.write(target, "changed here\n")
    out = agent(dir .. "/agent", {
      write(1, 7, "fs.write", { target, "one\n" }),
      write(2, 7, "fs.mkdir", { target }),
    })
    eq(out[1].replayed, true, json.encode(out[1]))
    eq(fs.read(target), "changed here\n", "answered from the journal, not written again")
    eq(out[2].t, "error")
    has(out[2].message, "effect 7 of run 1 was fs.write here, not fs.mkdir")
  end)
end)
