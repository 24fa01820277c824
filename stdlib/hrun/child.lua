-- hrun.child: the process a sandboxed playbook runs in (runtime/confine.c starts it).
--
-- It holds the playbook language and nothing of the engine: every module function is a
-- stub that sends a `call` over the pipe and waits for its `result` (or `error`), serving
-- the engine's calls into the playbook's functions meanwhile. Only data crosses
-- (runtime/wire.c); the engine checks each call's capability on exactly the data it then
-- acts on. Before it runs any of the playbook, the process confines itself for good.
local cpriv = ...
local wire, dsl, json = cpriv.wire, require("hrun.dsl"), require("hrun.json")
local edit = require("hrun.edit") -- fs.edit and fs.template run here, on the fs stubs

local ch = wire.channel(cpriv.infd, cpriv.outfd)
local debug_getmetatable = debug.getmetatable

-- {======================================================
-- Values that are not data: functions, secrets, DSL objects
-- ======================================================

local fn_ids = setmetatable({}, { __mode = "k" }) -- function → id
local fns = {} -- id → function: the playbook's (by their place in it), and transient ones
local transient = {} -- ids of functions handed over during the current engine call
local next_transient = 0

local SECRET = { __name = "hrun.secret", __metatable = "hrun.secret" }
local secret_parts = setmetatable({}, { __mode = "k" }) -- secret → {id | string, …}

local function new_secret(parts)
  local s = setmetatable({}, SECRET)
  secret_parts[s] = parts
  return s
end

local function parts_of(v)
  if secret_parts[v] then
    return secret_parts[v]
  end
  local t = type(v)
  if t == "string" or t == "number" then
    return { tostring(v) }
  end
  error(string.format("attempt to concatenate a %s value with a secret", t), 3)
end

SECRET.__tostring = function()
  return "<secret>"
end
SECRET.__tojson = SECRET.__tostring
SECRET.__concat = function(a, b)
  local out = {}
  for _, p in ipairs(parts_of(a)) do
    out[#out + 1] = p
  end
  for _, p in ipairs(parts_of(b)) do
    out[#out + 1] = p
  end
  return new_secret(out)
end
SECRET.__index = function(_, k)
  error(string.format("a secret has no field '%s': it is passed, never read", tostring(k)), 2)
end
SECRET.__newindex = SECRET.__index
SECRET.__len = function()
  error("a secret has no length: it is passed, never read", 2)
end

local DSL_KINDS -- DSL object → kind, from dsl.kind_of
local views = setmetatable({}, { __mode = "k" }) -- a read-only view (ctx.params) → the table it shows
local contexts = setmetatable({}, { __mode = "k" }) -- a ctx → the seq of the engine's call it came with
local ARRAY = debug_getmetatable(json.array())

-- A repository object (git.open, git.clone, git.init): its directory, and git's
-- functions as methods.
local REPO_METHODS = { "head", "status", "log", "tags", "diff", "fetch", "commit", "tag", "delete_tag",
  "checkout_paths", "checkout" }
local REPO = { __name = "hrun.git.repo", __metatable = "locked" }
local git_stub -- git's stubs, once the environment is made

local function new_repo(path)
  local r = setmetatable({ path = path }, REPO)
  return r
end
REPO.__index = function(_, k)
  for _, m in ipairs(REPO_METHODS) do
    if m == k then
      return function(self, ...)
        return git_stub[m](rawget(self, "path"), ...)
      end
    end
  end
end
REPO.__tostring = function(r)
  return "git repository " .. tostring(rawget(r, "path"))
end

local function special(v)
  local t = type(v)
  if t == "function" then
    local id = fn_ids[v]
    if not id then
      next_transient = next_transient + 1
      id = "t" .. next_transient
      fn_ids[v], fns[id] = id, v
      transient[#transient + 1] = id
    end
    return "f", id
  elseif t == "userdata" and v == json.null then
    return "u", 0
  elseif t == "table" then
    local mt = debug_getmetatable(v)
    if mt == SECRET then
      local parts, out = secret_parts[v], {}
      for i, p in ipairs(parts) do
        out[i] = type(p) == "string" and p or { id = p }
      end
      return "s", out
    elseif mt == REPO then
      return "g", rawget(v, "path")
    elseif mt == ARRAY then
      return "a", table.move(v, 1, #v, 1, {})
    end
    if views[v] then -- ctx.params and the tables in it: what they show
      return nil, views[v]
    elseif contexts[v] then -- handed to a module function: the engine's ctx of that call
      return "x", contexts[v]
    end
    local kind = DSL_KINDS(v)
    if kind then
      return "d", { kind = kind, name = v.name, loc = v.loc, body = v.body }
    end
  end
  return nil -- a table: its content, without its metatable; anything else: refused
end

local call -- call(name, ...): a module function, in the engine
local call_host -- while hosts.NAME.<module>.<fn> runs: NAME (the engine sends its calls there)

local function engine_fn(id)
  return function(...)
    return call({ fn = id }, ...)
  end
end

local tags = {
  f = engine_fn,
  s = function(parts)
    local out = {}
    for i, p in ipairs(parts) do
      out[i] = type(p) == "table" and p.id or p
    end
    return new_secret(out)
  end,
  u = function()
    return json.null
  end,
  a = function(list)
    return json.array(list)
  end,
  g = new_repo,
}

local function send(msg)
  if not ch:send(wire.encode(msg, special)) then
    os.exit(3) -- the engine is gone
  end
end

-- }======================================================

-- {======================================================
-- Calls, both ways
-- ======================================================

local seq = 0
local serve

-- Waits for the answer to our call `n`, serving the engine's calls meanwhile, until the
-- engine closes the pipe (then the process ends: nothing to answer, no finalizer to run).
local function wait(n)
  while true do
    local line = ch:recv()
    if not line then
      os.exit(0, false)
    end
    local m = wire.decode(line, tags)
    if m.t == "call" then
      serve(m)
    elseif m.seq == n then
      return m
    end
  end
end

-- Does msg already say where (file:line: )?
local function has_position(msg)
  return type(msg) == "string" and msg:match("^[^\n]-:%d+: ") ~= nil
end

call = function(target, ...)
  seq = seq + 1
  local n = seq
  local msg = { t = "call", seq = n, args = table.pack(...) }
  msg.n, msg.args.n = msg.args.n, nil
  if target.fn then
    msg.fn = target.fn
  else
    msg.name = target.name
    msg.host = call_host
  end
  send(msg)
  local r = wait(n)
  if type(r.ctx) == "table" then -- a module function the ctx was handed to changed it
    for c, cseq in pairs(contexts) do
      if cseq == r.ctx.seq then
        dsl.refill(c, "state", r.ctx.state)
        dsl.refill(c, "shared", r.ctx.shared)
      end
    end
  end
  if r.t == "error" then
    local text = r.message or "error"
    error(text, has_position(text) and 0 or 2) -- 2: the stubs tail-call: the playbook's line
  end
  return table.unpack(r.values or {}, 1, r.n or 0)
end

local memory_limit = 0

-- An error value as text, said as the person who reads it needs it.
local function message_of(err)
  local ok, text = pcall(tostring, err)
  text = ok and type(text) == "string" and text or "(an error value that cannot be shown)"
  if text:find("not enough memory", 1, true) then
    text = string.format("memory limit reached: the playbook's process would pass %d MiB (--memory-limit)",
      memory_limit // (1 << 20))
  end
  return text
end


-- A ctx has a metatable of its own (no field of it is used) so that the wire hands it to
-- `special` when the playbook passes it on.
local CTX = { __name = "hrun.ctx" }

-- The ctx a playbook function sees: data from the engine, log back to it.
local function make_ctx(c, cseq)
  local ctx = setmetatable({
    params = dsl.readonly(c.params or {}, views), state = c.state or {}, shared = c.shared or {},
    plan = c.plan or false, run_id = c.run_id, phase = c.phase, step = c.step,
  }, CTX)
  ctx.log = function(fmt, ...)
    send({ t = "event", kind = "log", message = string.format(fmt, ...) })
  end
  -- the names are checked here, so that an unknown one raises at the playbook's line
  local known = {}
  for _, name in ipairs(type(c.notifiable) == "table" and c.notifiable or {}) do
    known[name] = true
  end
  ctx.notify = function(name)
    if type(name) ~= "string" or not known[name] then
      error(string.format("ctx.notify: no handler '%s' in phase '%s' or the playbook", tostring(name),
        tostring(c.phase)), 2)
    end
    send({ t = "event", kind = "notify", name = name })
  end
  contexts[ctx] = cseq
  return ctx
end

-- The engine calls one of the playbook's functions.
serve = function(m)
  local fn = fns[m.fn]
  local ctx = m.ctx and make_ctx(m.ctx, m.seq)
  local args = m.args or {}
  local mark = #transient
  local res
  if not fn then
    res = { false, string.format("no function '%s' in the playbook", tostring(m.fn)), n = 2 }
  elseif ctx then
    res = table.pack(pcall(fn, ctx, table.unpack(args, 1, m.n or #args)))
  else
    res = table.pack(pcall(fn, table.unpack(args, 1, m.n or #args)))
  end
  local reply = { t = res[1] and "result" or "error", seq = m.seq }
  if ctx then
    contexts[ctx] = nil
    reply.ctx = { state = ctx.state, shared = ctx.shared }
  end
  if res[1] then
    reply.values, reply.n = { table.unpack(res, 2, res.n) }, res.n - 1
  else
    reply.message, reply.code = message_of(res[2]), fns[m.fn] and "failed" or "unknown"
  end
  local ok, err = pcall(send, reply)
  if not ok then -- what the function returned is not data
    reply.values, reply.n, reply.t, reply.message = nil, nil, "error", message_of(err)
    if ctx then
      reply.ctx = nil
      ok = pcall(send, reply)
      reply.message = reply.message .. " (and ctx.state or ctx.shared is not data)"
    end
    if not ok then
      send({ t = "error", seq = m.seq, message = reply.message })
    end
  end
  for i = #transient, mark + 1, -1 do -- the functions handed over during this call
    local id = table.remove(transient, i)
    fn_ids[fns[id]], fns[id] = nil, nil
  end
end

-- }======================================================

-- {======================================================
-- The playbook's environment
-- ======================================================

-- A file read whole through fs.read, as io.open's handles read it.
local function string_file(data)
  local pos = 1
  local f = {}
  local function read1(fmt)
    if type(fmt) == "number" then
      if pos > #data then
        return nil
      end
      local s = data:sub(pos, pos + fmt - 1)
      pos = pos + #s
      return s
    end
    fmt = type(fmt) == "string" and fmt:gsub("^%*", "") or "l"
    if fmt:sub(1, 1) == "a" then
      local s = data:sub(pos)
      pos = #data + 1
      return s
    elseif fmt:sub(1, 1) == "n" then
      local s, e = data:find("^%s*[-+]?[%x%.xXpPeE]+", pos)
      if not s then
        return nil
      end
      pos = e + 1
      return tonumber(data:sub(s, e):match("%S+"))
    elseif fmt:sub(1, 1) == "l" or fmt:sub(1, 1) == "L" then
      if pos > #data then
        return nil
      end
      local e = data:find("\n", pos, true)
      local line = data:sub(pos, e or #data)
      pos = (e or #data) + 1
      return fmt:sub(1, 1) == "l" and line:gsub("\n$", "") or line
    end
    error("bad format '" .. fmt .. "' to read", 3)
  end
  function f.read(_, ...)
    local n = select("#", ...)
    if n == 0 then
      return read1("l")
    end
    local out = {}
    for i = 1, n do
      out[i] = read1((select(i, ...)))
      if out[i] == nil then
        return table.unpack(out, 1, i)
      end
    end
    return table.unpack(out, 1, n)
  end
  function f.lines(_, ...)
    local fmts = table.pack(...)
    return function()
      return f:read(table.unpack(fmts, 1, fmts.n))
    end
  end
  function f.close()
    return true
  end
  function f.seek(_, whence, offset)
    whence, offset = whence or "cur", offset or 0
    local base = whence == "set" and 0 or whence == "end" and #data or pos - 1
    pos = math.max(0, math.min(#data, base + offset)) + 1
    return pos - 1
  end
  return setmetatable(f, { __name = "FILE*", __index = f, __tostring = function()
    return "file (read whole)"
  end })
end

-- open_read(fname, path) → a file | nil, why; a refusal names fname at the playbook's line
local function open_read(fname, path)
  local ok, data = pcall(call, { name = "fs.read" }, path)
  if not ok then
    if tostring(data):find("sandbox:", 1, true) then
      error((tostring(data):gsub("fs%.read needs", fname .. " needs")), 3)
    end
    -- as Lua's io.open says it: "PATH: why", and the errno
    local text = tostring(data):gsub("^[^\n]-:%d+: ", ""):gsub("^fs%.read: ", "")
    local errno = { ["No such file or directory"] = 2, ["Permission denied"] = 13, ["Is a directory"] = 21,
      ["Not a directory"] = 20, ["Too many levels of symbolic links"] = 40, ["File name too long"] = 36 }
    return nil, text, errno[text:match(": ([^:]+)$") or ""]
  end
  return string_file(data)
end

local function environment(modules)
  local stubs = {}
  for name, fields in pairs(modules) do
    local m = {}
    for fname, v in pairs(fields) do
      if v == true then
        local full = name .. "." .. fname
        m[fname] = function(...)
          return call({ name = full }, ...)
        end
      else
        m[fname] = v
      end
    end
    stubs[name] = m
  end
  stubs.json = json
  if stubs.fs then
    edit.install(stubs.fs, { null = json.null, is_secret = function(v)
      return debug_getmetatable(v) == SECRET
    end })
  end
  git_stub = stubs.git or {}
  stubs.secrets = stubs.secrets or {}
  stubs.secrets.is = function(v)
    return debug_getmetatable(v) == SECRET
  end
  local env = dsl.environment(stubs)
  -- hosts.NAME.fs.write(…): the calls made meanwhile name the host; the engine checks
  -- them against that host's capabilities and sends them there
  env.hosts = dsl.hosts_view(stubs, function(host, fn, ...)
    local saved = call_host
    call_host = host
    local res = table.pack(pcall(fn, ...))
    call_host = saved
    if not res[1] then
      error(res[2], 0)
    end
    return table.unpack(res, 2, res.n)
  end)
  local function out(text)
    send({ t = "event", kind = "output", text = text })
  end
  env.print = function(...)
    local n, parts = select("#", ...), {}
    for i = 1, n do
      parts[i] = tostring((select(i, ...)))
    end
    out(table.concat(parts, "\t") .. "\n")
  end
  env.io.write = function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do
      local v = parts[i]
      if type(v) ~= "string" and type(v) ~= "number" then
        error(string.format("bad argument #%d to 'write' (string expected, got %s)", i, type(v)), 2)
      end
      parts[i] = tostring(v)
    end
    out(table.concat(parts))
    return env.io
  end
  env.io.open = function(path, mode)
    if mode ~= nil and mode ~= "r" and mode ~= "rb" then
      error("io.open: playbooks open files for reading only; write with fs.write", 2)
    end
    if type(path) ~= "string" then
      error(string.format("bad argument #1 to 'open' (string expected, got %s)", type(path)), 2)
    end
    local f, err, code = open_read("io.open", path) -- not a tail call: a refusal names this line
    return f, err, code
  end
  env.io.lines = function(path, ...)
    if type(path) ~= "string" then
      error("io.lines: a path is needed", 2)
    end
    local f, err = open_read("io.lines", path)
    if not f then
      error(err, 2)
    end
    return f:lines(...)
  end
  env.os.getenv = function(name)
    if type(name) ~= "string" then
      error(string.format("bad argument #1 to 'getenv' (string expected, got %s)", type(name)), 2)
    end
    return call({ name = "sys.env" }, name)
  end
  return env
end

-- The playbook's functions by their place in it ("2/3/run": the run of the third step of
-- the second phase): the same after the process is started again.
local function name_functions(v, path, seen)
  if type(v) ~= "table" or seen[v] then
    return
  end
  seen[v] = true
  local kind = DSL_KINDS(v)
  local body = kind and v.body or v
  if type(body) ~= "table" then
    return
  end
  for k, x in next, body do
    -- a phase, step or check by its name (unique, whatever order a loop built them in)
    local kind_x = DSL_KINDS(x)
    local p = kind_x and type(x.name) == "string" and (path .. "/" .. kind_x .. ":" .. x.name)
      or (path .. "/" .. (type(k) == "string" and k or ("#" .. tostring(k))))
    if type(x) == "function" and not fn_ids[x] then
      fn_ids[x], fns[p] = p, x
    else
      name_functions(x, p, seen)
    end
  end
end

-- }======================================================

local init = wire.decode(assert(ch:recv()), tags)
memory_limit = init.memory
DSL_KINDS = dsl.kind_of
local confinement = cpriv.confine(init.memory)
cpriv.memlimit(init.memory)
send({ t = "ready", confinement = confinement })
-- the engine may refuse to go on with what the kernel gave (a fetched playbook on a weak
-- kernel): nothing of the playbook has run
local go = wire.decode(assert(ch:recv()), tags)
if go.t ~= "go" then
  os.exit(0, false)
end

local env = environment(init.modules)
local chunk, lerr = load(init.source, "@" .. init.path, "t", env)
local result
if chunk then
  local ok, res = pcall(chunk)
  if ok then
    result = res
    name_functions(res, "", {})
  else
    lerr = message_of(res)
  end
end
if lerr then
  send({ t = "error", seq = 0, message = lerr })
else
  local ok, err = pcall(send, { t = "loaded", playbook = result })
  if not ok then
    send({ t = "error", seq = 0,
      message = string.format("%s: the playbook is not data: %s", init.path, message_of(err)) })
  end
end
-- then the engine's calls, until it closes the pipe; nil, message returns raise, as in a
-- trusted playbook's functions
cpriv.strict(true)
wait(false) -- no answer has seq false: serves until the pipe closes
