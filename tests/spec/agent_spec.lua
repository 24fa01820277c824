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
