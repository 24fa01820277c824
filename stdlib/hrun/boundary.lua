-- hrun.boundary: the engine's side of a sandboxed playbook's process (hrun.child).
--
-- open() starts the process; load() sends it the playbook's source and gets back the
-- playbook as data, each of its functions standing as a stub that calls into the process.
-- While the engine waits on one of those calls, the process's calls of module functions
-- are served here: the arguments arrive as plain data, the module function runs under the
-- sandbox that the runner has set, and what goes back has every secret's bytes masked.
-- The engine kills the process at the step's deadline and on Ctrl-C; the next call starts
-- it again from the same source (a playbook's module-level locals start over).
local dsl = require("hrun.dsl")
local edit = require("hrun.edit")
local json = require("hrun.json")
local secrets = require("hrun.secrets")

local M = {}

-- How long a sandboxed playbook's file may take to evaluate (it only builds tables).
M.LOAD_SECONDS = 10
-- The longest message the process may send: what its memory limit lets it build, with
-- the room the kernel gives it beyond that (an fs.write of a large file crosses whole).
local function max_message(memory)
  return memory + (64 << 20)
end
-- The most arguments or results a call carries (no stub sends more; a hostile process may).
local MAX_VALUES = 200

local Box = {}
Box.__index = Box
Box.__gc = function(box) -- the engine is done with it: the process goes too
  box:kill()
end

-- The module functions a playbook may call: {name = {fn = true | a data field}}.
local function exported(modules)
  local list, flat = {}, {}
  for name, mod in pairs(modules) do
    if type(mod) == "table" and name ~= "json" then
      local fields = {}
      for k, v in pairs(mod) do
        if type(k) == "string" and k:sub(1, 1) ~= "_" and not edit.derived[v] then -- fs.edit: the process's own
          if type(v) == "function" then
            fields[k], flat[name .. "." .. k] = true, v
          elseif type(v) == "string" or type(v) == "number" or type(v) == "boolean" then
            fields[k] = v
          end
        end
      end
      list[name] = fields
    end
  end
  return list, flat
end

-- open(priv, modules, opts) → box: opts.memory (bytes), opts.stdlib
function M.open(priv, modules, opts)
  local box = setmetatable({ priv = priv, opts = opts, seq = 0, fns = {}, secrets = {}, secret_ids = {},
    next_fn = 0, calls = {}, contexts = {}, depth = 0 }, Box)
  box.list, box.flat = exported(modules)
  local function want(tag, v, kind)
    if type(v) ~= kind then
      error(string.format("wire: $%s: a %s expected, got %s", tag, kind, type(v)), 0)
    end
    return v
  end
  box.tags = {
    f = function(id)
      if box.named then
        box.named[id] = true
      end
      return box:stub(want("f", id, "string"))
    end,
    s = function(parts)
      return box:secret(parts)
    end,
    u = function()
      return json.null
    end,
    a = function(list)
      return json.array(want("a", list, "table"))
    end,
    g = function(path) -- a repository object: its directory, the target git's checks read
      return want("g", path, "string")
    end,
    d = function(o)
      if type(o) ~= "table" then
        error("wire: a DSL object that is not one", 0)
      end
      return dsl.object(o.kind, o.name, o.loc, o.body)
    end,
    x = function(seq) -- a ctx the playbook handed to a module function: the call's own
      local ctx = box.contexts[seq]
      if not ctx then
        error("wire: a ctx of no call in progress", 0)
      end
      box.ctx_seen = seq
      return ctx
    end,
  }
  box.special = function(v)
    return box:encode_special(v)
  end
  return box
end

-- A secret the process names: the engine's own secret (by the id it was given as), or
-- one joined from those and text ("Bearer " .. token).
function Box:secret(parts)
  if type(parts) ~= "table" or #parts == 0 then
    error("wire: a secret that is not one", 0)
  end
  local acc
  for _, p in ipairs(parts) do
    local v
    if type(p) == "table" then
      v = self.secrets[p.id]
      if v == nil then
        error("wire: a secret the playbook was never given", 0)
      end
    elseif type(p) == "string" then
      v = p
    else
      error("wire: a secret that is not one", 0)
    end
    acc = acc == nil and v or acc .. v
  end
  return acc
end

function Box:encode_special(v)
  local t = type(v)
  if t == "function" then
    self.next_fn = self.next_fn + 1
    local id = "e" .. self.next_fn
    self.fns[id] = v
    self.calls[#self.calls + 1] = id
    return "f", id
  elseif t == "userdata" then
    if v == json.null then
      return "u", 0
    elseif secrets.is(v) then
      local id = self.secret_ids[v]
      if not id then
        id = #self.secrets + 1
        self.secrets[id], self.secret_ids[v] = v, id
      end
      return "s", { { id = id } }
    end
  elseif t == "table" then
    local mt = debug.getmetatable(v)
    local name = type(mt) == "table" and rawget(mt, "__name")
    if name == "hrun.git.repo" then
      return "g", rawget(v, "path")
    elseif name == "array" then -- json.array: stays one across
      return "a", table.move(v, 1, #v, 1, {})
    end
  end
  return nil
end

-- The engine's read-only views (ctx.params) as the data they show.
local function plain_view(v)
  local mt = getmetatable(v)
  if type(mt) == "table" and type(mt.__tojson) == "function" then
    return mt.__tojson(v)
  end
  return v
end

function Box:encode(msg)
  return self.priv.wire.encode(msg, self.special, true)
end

-- Sends msg (or its text); a send the deadline or Ctrl-C stops, or a closed pipe, is
-- the end of the process, as a wait would be.
function Box:send(msg)
  local ok, why = self.ch:send(type(msg) == "string" and msg or self:encode(msg), true)
  if not ok then
    self:lost(why == "closed" and "eof" or why)
  end
end

-- start() within the load's time, or the step's deadline when that is nearer; the
-- deadline as it was after.
function Box:start_in_time()
  local deadline = self.priv.deadline()
  local load_by = self.priv.monotime() + M.LOAD_SECONDS
  self.priv.setdeadline((deadline > 0 and deadline < load_by) and deadline or load_by)
  local ok, res = pcall(self.start, self)
  self.priv.setdeadline(deadline)
  if not ok then
    error(res, 0)
  end
  return res
end

-- Starts the process and loads the playbook in it; returns what it returned, as data.
function Box:start()
  self.loading = true
  local ok, res = pcall(self.spawn, self)
  self.loading = false
  if not ok then
    error(res, 0)
  end
  return res
end

function Box:spawn()
  local pid, ch = self.priv.sandboxspawn(self.opts.stdlib)
  self.pid, self.ch, self.alive = pid, ch, true
  self.dead_why = nil
  self:send({ t = "init", memory = self.opts.memory, modules = self.list, source = self.source, path = self.path })
  local ready = self:receive(0, "ready")
  if ready.t == "error" then
    self:kill()
    error(tostring(ready.message), 0)
  end
  self.confinement = ready.confinement
  -- before a line of the playbook runs: may it, with what the kernel gave?
  local ok, err = pcall(self.opts.accept or function() end, self.confinement)
  if not ok then
    self:kill()
    error(err, 0)
  end
  self:send({ t = "go" })
  self.named = {}
  local loaded = self:receive(0, "loaded")
  local named = self.named
  self.named = nil
  if loaded.t == "error" then
    self:kill()
    error(tostring(loaded.message), 0)
  end
  -- started again, the file must give the same functions, or stubs would call others
  if self.first_named then
    for id in pairs(self.first_named) do
      if not named[id] then
        self:kill()
        error(string.format("%s: the playbook's file gave another playbook when its process was started " ..
          "again (its function %s is gone): a playbook must build the same steps each time it loads",
          self.path, id), 0)
      end
    end
  else
    self.first_named = named
  end
  return loaded.playbook
end

-- The process's message m is the answer to `seq` (or its ready/loaded at seq 0); serves
-- the process's calls until it comes.
function Box:receive(seq, want)
  while true do
    local line, why = self.ch:recv(max_message(self.opts.memory), true)
    if not line then
      self:lost(why)
    end
    self.ctx_seen = nil
    local ok, m = pcall(self.priv.wire.decode, line, self.tags)
    if not ok or type(m) ~= "table" then
      self:kill()
      error("the sandboxed playbook's process sent what is not a message: " .. tostring(m), 0)
    end
    if m.t == "call" then
      self:serve(m, self.ctx_seen)
    elseif m.t == "event" then
      self:event(m)
    elseif m.t == "error" and (m.seq == seq or seq == 0) then
      return m
    elseif (want and m.t == want) or (m.t == "result" and m.seq == seq) then
      return m
    else
      self:kill()
      error(string.format("the sandboxed playbook's process answered out of turn (%s)", tostring(m.t)), 0)
    end
  end
end

-- The wait ended without an answer: the deadline, Ctrl-C, or the process is gone.
function Box:lost(why)
  if why == "eof" and self.dead_why then -- killed by a call nested in this one: its reason
    error(self.dead_why, 0)
  elseif why == "timeout" then
    self:kill("timed out")
  elseif why == "interrupted" then
    self:kill("interrupted")
  end
  if self.dead_why then
    error(self.dead_why, 0)
  end
  local how = self:kill()
  if how == "exited with code 4" then -- hrun __sandbox's exit when its memory ran out
    error(string.format("memory limit reached: the playbook's process would pass %d MiB (--memory-limit)",
      self.opts.memory // (1 << 20)), 0)
  end
  error(string.format("the sandboxed playbook's process ended (%s)%s", how or why,
    why ~= "eof" and (": " .. tostring(why)) or ""), 0)
end

-- Kills the process (why: what a call still waiting on it will say).
function Box:kill(why)
  if not self.alive then
    return nil
  end
  self.alive, self.dead_why = false, why
  self.ch:close()
  return self.priv.sandboxend(self.pid, true)
end

-- Output and log lines from the process.
function Box:event(m)
  if m.kind == "output" and type(m.text) == "string" then
    io.stdout:write(self.priv.mask(m.text))
  elseif m.kind == "log" and type(m.message) == "string" then
    local log = self.current_log
    if log then
      log("%s", m.message)
    end
  elseif m.kind == "notify" and type(m.name) == "string" then
    -- the process checked the name; what the engine refuses (a check's ctx) is logged
    local notify, log = self.current_notify, self.current_log
    local ok, err = pcall(notify or error, m.name)
    if not ok and log then
      log("%s", tostring(err))
    end
  end
end

-- The process calls a module function (`name`) or a function the engine handed it.
function Box:serve(m, ctx_seq)
  local fn
  if type(m.fn) == "string" then
    fn = self.fns[m.fn]
  elseif type(m.name) == "string" then
    fn = self.flat[m.name]
  end
  local args = type(m.args) == "table" and m.args or {}
  local n = math.type(m.n) == "integer" and m.n or #args
  local reply
  if self.loading and not (type(m.fn) == "string" and fn) then
    reply = { t = "error", seq = m.seq, code = "refused", message = string.format("sandbox: %s while the " ..
      "playbook's file loads: a sandboxed playbook's file only builds tables (call it from a step)",
      tostring(m.name or m.fn)) }
  elseif not fn then
    reply = { t = "error", seq = m.seq, code = "unknown",
      message = string.format("no function '%s'", tostring(m.name or m.fn)) }
  elseif n < 0 or n > MAX_VALUES then -- what no stub sends
    reply = { t = "error", seq = m.seq, code = "failed", message = "a call with a bad number of arguments" }
  else
    local res
    if type(m.host) == "string" then -- hosts.NAME.<module>.<fn>: that host's, as the runner routes it
      res = table.pack(pcall(require("hrun.remote").route, m.host, fn, table.unpack(args, 1, n)))
    else
      res = table.pack(pcall(fn, table.unpack(args, 1, n)))
    end
    if res[1] then
      reply = { t = "result", seq = m.seq, values = { table.unpack(res, 2, res.n) }, n = res.n - 1 }
    else
      local text = tostring(res[2])
      reply = { t = "error", seq = m.seq, message = text,
        code = text:find("sandbox: ", 1, true) and "refused" or "failed" }
    end
  end
  local ctx = ctx_seq and self.contexts[ctx_seq]
  if ctx then -- what the function did to the ctx it was handed goes back
    reply.ctx = { seq = ctx_seq, state = ctx.state, shared = ctx.shared }
  end
  local ok, text = pcall(self.encode, self, reply)
  if not ok then
    text = self:encode({ t = "error", seq = m.seq, message = tostring(text) })
  end
  if self.alive then -- a nested call may have ended the process (its deadline)
    self:send(text)
  end
end

-- The ctx tables the runner makes (Runner:ctx): they cross as data and come back.
M.contexts = setmetatable({}, { __mode = "k" })

-- A stub standing for the process's function `id`: one of the playbook's, named by where
-- it is ("/phase:p/step:s/run"), or one handed over during the current call ("t7").
function Box:stub(id)
  return function(first, ...)
    if M.contexts[first] then
      return self:invoke(id, first, ...)
    end
    return self:invoke(id, nil, first, ...)
  end
end

-- Calls the process's function id; with ctx, the function gets it as its first argument
-- and what it leaves in ctx.state and ctx.shared comes back into ctx.
function Box:invoke(id, ctx, ...)
  if not self.alive and self.depth > 0 then -- inside a call of the process that was ended
    error(self.dead_why or "the sandboxed playbook's process ended", 0)
  end
  if not self.alive then -- killed at a deadline: the same source again
    self:start_in_time()
  end
  self.seq = self.seq + 1
  local seq = self.seq
  local msg = { t = "call", seq = seq, fn = id, args = table.pack(...) }
  msg.n, msg.args.n = msg.args.n, nil
  local saved_log, saved_notify = self.current_log, self.current_notify
  if ctx then
    local known = M.contexts[ctx]
    msg.ctx = { params = plain_view(ctx.params), state = ctx.state, shared = ctx.shared, plan = ctx.plan,
      run_id = ctx.run_id, phase = ctx.phase, step = ctx.step,
      notifiable = type(known) == "table" and known.notifiable or nil }
    self.current_log, self.current_notify = ctx.log, ctx.notify
  end
  local mark = #self.calls
  if ctx then
    self.contexts[seq] = ctx
  end
  self.depth = self.depth + 1
  local ok, r = pcall(function()
    self:send(msg)
    return self:receive(seq)
  end)
  self.depth = self.depth - 1
  self.contexts[seq] = nil
  self.current_log, self.current_notify = saved_log, saved_notify
  for i = #self.calls, mark + 1, -1 do
    self.fns[table.remove(self.calls, i)] = nil
  end
  if not ok then
    error(r, 0)
  end
  if ctx and type(r.ctx) == "table" then
    dsl.refill(ctx, "state", r.ctx.state)
    dsl.refill(ctx, "shared", r.ctx.shared)
  end
  if r.t == "error" then
    error(tostring(r.message), 0)
  end
  local values, n = r.values, r.n
  if type(values) ~= "table" or math.type(n) ~= "integer" or n < 0 or n > MAX_VALUES then
    values, n = {}, 0
  end
  return table.unpack(values, 1, n)
end

-- load(path, source) → what the playbook file returned, as data: DSL objects and a stub for
-- each of its functions. Raises the process's error (a syntax error, the load's deadline).
function Box:load(path, source)
  self.path, self.source = path, source
  local ok, res = pcall(self.start_in_time, self)
  if not ok then
    if res == "timed out" then
      res = string.format("%s: evaluating the playbook took longer than %d s", path, M.LOAD_SECONDS)
    end
    error(res, 0)
  end
  return res
end

return M
