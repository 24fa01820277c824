-- hrun.dsl: the playbook language — playbook{}, phase "name" {}, step "name" {},
-- check "name" (fn) — its validation (every problem reported as file:line: before
-- anything runs), the environment playbooks load into, and their parameters.

local M = {}

local objects = setmetatable({}, { __mode = "k" }) -- DSL object -> its kind

-- {======================================================
-- What each kind accepts
-- ======================================================

local playbook_fields = {
  name = "string", version = "string", description = "string", params = "table",
  capabilities = "table", on_failure = "string", hosts = "table",
  -- a fleet (--hosts FILE): which hosts, in what batches, and what a failure does
  targets = "string", serial = "any", strategy = "string", max_fail = "number", on_host_failure = "string",
}
local phase_fields = { description = "string", when = "function", tags = "table", on = "string" }
local step_fields = {
  run = "function", undo = "function", verify = "function", when = "function", timeout = "number",
  retries = "number", retry_delay = "number", confirm = "string", resume = "string",
  description = "string", irreversible = "boolean", tags = "table", notify = "table", on = "string",
  detach = "boolean", run_once = "boolean",
}
-- handler "name" { run = … }: run once at its phase's end when a step notified it
local handler_fields = {
  run = "function", undo = "function", timeout = "number", retries = "number", retry_delay = "number",
  description = "string", tags = "table", on = "string", detach = "boolean",
}

-- What each kind accepts, by kind: the editor annotations (hrun.luals) are made from it.
M.fields = { playbook = playbook_fields, phase = phase_fields, step = step_fields, handler = handler_fields }

-- The types a required parameter may have.
local PARAM_TYPES = { string = true, number = true, boolean = true, table = true }

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end
M.sorted_keys = sorted_keys

-- }======================================================

-- {======================================================
-- Problems: collected, each with where it is
-- ======================================================

local Problems = {}
Problems.__index = Problems

local function new_problems(nearest)
  return setmetatable({ list = {}, nearest = nearest }, Problems)
end

function Problems:add(loc, fmt, ...)
  local where = loc and string.format("%s:%d: ", loc.file, loc.line) or ""
  self.list[#self.list + 1] = where .. string.format(fmt, ...)
end

-- The problems in the order of the file (those without a place first), each file's
-- by line: table.sort is not stable, so the order found breaks ties.
function Problems:in_order()
  local keyed = {}
  for i, msg in ipairs(self.list) do
    local file, line = msg:match("^(.-):(%d+): ")
    keyed[i] = { msg = msg, file = file or "", line = tonumber(line) or 0, i = i }
  end
  table.sort(keyed, function(a, b)
    if a.file ~= b.file then
      return a.file < b.file
    elseif a.line ~= b.line then
      return a.line < b.line
    end
    return a.i < b.i
  end)
  local out = {}
  for i, k in ipairs(keyed) do
    out[i] = k.msg
  end
  return out
end

-- The lines of the playbook's source — the text that was loaded, never a file read here:
-- a sandboxed playbook's objects name their file themselves, and must not make the
-- engine read another (nil for any other file).
function Problems:source(file)
  if file ~= self.source_file or type(self.source_text) ~= "string" then
    return nil
  end
  if not self.source_lines then
    self.source_lines = {}
    for l in (self.source_text .. "\n"):gmatch("([^\n]*)\n") do
      self.source_lines[#self.source_lines + 1] = l
    end
  end
  return self.source_lines
end

-- Where field `key` of the object at `loc` (whose fields are `t`) is written: a function
-- knows its own first line; another value is the first `key =` in the source from the
-- object's line on, outside the bodies of its functions and before the next object —
-- so that a typo's file:line is the field's own, not its object's first line.
function Problems:field(loc, t, key)
  if not loc or type(key) ~= "string" then
    return loc
  end
  local v = t[key]
  local info = type(v) == "function" and debug.getinfo(v, "S")
  if info and info.linedefined > 0 and info.source == "@" .. loc.file then
    return { file = loc.file, line = info.linedefined }
  end
  local lines = self:source(loc.file)
  if not lines then
    return loc
  end
  local bodies, info_source = {}, "@" .. loc.file
  for _, f in pairs(t) do
    local fi = type(f) == "function" and debug.getinfo(f, "S")
    if fi and fi.linedefined > 0 and fi.source == info_source then
      bodies[#bodies + 1] = fi
    end
  end
  local want = "%f[%w_]" .. key:gsub("%p", "%%%0") .. "%s*=[^=]"
  for n = loc.line, math.min(#lines, loc.line + 500) do
    local l = lines[n]
    if n > loc.line and (l:match("^%s*step%s*[\"'[]") or l:match("^%s*phase%s*[\"'[]")
        or l:match("^%s*check%s*[\"'[]") or l:match("^%s*handler%s*[\"'[]")) then
      break
    end
    local inside = false
    for _, fi in ipairs(bodies) do
      inside = inside or (n > fi.linedefined and n <= fi.lastlinedefined)
    end
    if not inside and (l .. " "):find(want) then
      return { file = loc.file, line = n }
    end
  end
  return loc
end

-- Field `key` of t, if there, must be a list of strings (tags, notify).
function Problems:strings(loc, what, t, key)
  local v = t[key]
  if type(v) ~= "table" then
    return
  end
  for k, x in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 or k > #v then
      self:add(self:field(loc, t, key), "%s: field '%s' must be a list of strings, not a table with key '%s'", what,
        key, tostring(k))
    elseif type(x) ~= "string" or x == "" then
      self:add(self:field(loc, t, key), "%s: %s[%d] must be a non-empty string, got %s", what, key, k, type(x))
    end
  end
end

-- "unknown field 'rnu' (did you mean 'run'?)"
function Problems:unknown(loc, what, key, known)
  local near = type(key) == "string" and self.nearest(key, sorted_keys(known))
  self:add(loc, "%s: unknown field '%s'%s", what, tostring(key),
    near and string.format(" (did you mean '%s'?)", near) or "")
end

-- Checks the hash part of t against `spec` (field -> type).
function Problems:fields(loc, what, t, spec)
  for k, v in pairs(t) do
    if math.type(k) == "integer" then
      goto continue
    end
    local want = spec[k]
    if not want then
      self:unknown(self:field(loc, t, k), what, k, spec)
    elseif want ~= "any" and type(v) ~= want then
      self:add(self:field(loc, t, k), "%s: field '%s' must be a %s, got %s", what, k, want, type(v))
    end
    ::continue::
  end
end

-- }======================================================

-- {======================================================
-- The constructors. Each records where it was called (file:line); the content is
-- checked by validate(), so that every problem is reported at once.
-- ======================================================

local function caller_location()
  local info = debug.getinfo(3, "Sl")
  local file = info.source:sub(1, 1) == "@" and info.source:sub(2) or info.short_src
  return { file = file, line = info.currentline }
end

-- DSL objects have a metatable of their own (no field of it is used) so that the wire to
-- a sandboxed playbook's process (hrun.child) hands them to its `special`
local OBJECT_MT = { __name = "hrun.dsl.object" }

local function make(kind, name, loc, body)
  local o = setmetatable({ kind = kind, name = name, loc = loc, body = body }, OBJECT_MT)
  objects[o] = kind
  return o
end

local function named(kind)
  return function(name)
    local loc = caller_location()
    return function(body)
      return make(kind, name, loc, body)
    end
  end
end

-- The DSL functions, as playbooks see them. required "string" stands for a parameter
-- that has no default: the run needs it given (-p, --params).
function M.constructors()
  return {
    playbook = function(body)
      return make("playbook", nil, caller_location(), body)
    end,
    required = function(kind)
      return make("required", kind, caller_location(), nil)
    end,
    phase = named("phase"),
    step = named("step"),
    check = named("check"),
    handler = named("handler"),
  }
end

-- kind_of(v) → the kind of a DSL object ("playbook", "phase", …), or nil
function M.kind_of(v)
  return objects[v]
end

-- object(kind, name, loc, body) → a DSL object made of data that crossed from a sandboxed
-- playbook's process; validate() checks it as any other.
function M.object(kind, name, loc, body)
  loc = type(loc) == "table" and loc or {}
  local file, line = loc.file, loc.line
  return make(tostring(kind), name, {
    file = type(file) == "string" and file or "?",
    line = math.type(line) == "integer" and line or 0,
  }, body)
end

function M.is_playbook(v)
  return type(v) == "table" and objects[v] == "playbook"
end

-- }======================================================

-- {======================================================
-- Validation: a checked, plain description of the playbook
-- ======================================================

-- What steps and handlers share: a table of known fields with a run function, and the
-- numbers of their attempts. Returns the body, or nil when it is not a table.
local function validate_runnable(p, o, kind, fields)
  local what = string.format("%s '%s'", kind, o.name)
  local b = o.body
  if type(b) ~= "table" then
    p:add(o.loc, "%s: expects a table of fields: %s \"%s\" { run = function(ctx) … end }", what, kind, o.name)
    return nil
  end
  p:fields(o.loc, what, b, fields)
  if #b > 0 then
    p:add(o.loc, "%s: has %d unnamed value(s); fields are name = value", what, #b)
  end
  if type(b.run) ~= "function" then
    p:add(o.loc, "%s: has no run function (run = function(ctx) … end)", what)
  end
  if type(b.timeout) == "number" and b.timeout <= 0 then
    p:add(p:field(o.loc, b, "timeout"), "%s: field 'timeout' must be more than 0 seconds", what)
  end
  if type(b.retries) == "number" and (math.type(b.retries) ~= "integer" or b.retries < 0) then
    p:add(p:field(o.loc, b, "retries"), "%s: field 'retries' must be a whole number >= 0", what)
  end
  if type(b.retry_delay) == "number" and b.retry_delay < 0 then
    p:add(p:field(o.loc, b, "retry_delay"), "%s: field 'retry_delay' must be >= 0", what)
  end
  p:strings(o.loc, what, b, "tags")
  return b, what
end

local function validate_step(p, s, phase_name)
  local b, what = validate_runnable(p, s, "step", step_fields)
  if not b then
    return nil
  end
  if type(b.resume) == "string" and b.resume ~= "undo" and b.resume ~= "rerun" then
    p:add(p:field(s.loc, b, "resume"), "%s: field 'resume' must be \"undo\" or \"rerun\", got \"%s\"", what, b.resume)
  end
  p:strings(s.loc, what, b, "notify")
  local out = { kind = "step", name = s.name, phase = phase_name, loc = s.loc }
  for k in pairs(step_fields) do
    out[k] = b[k]
  end
  return out
end

-- A handler: a step's fields but when, verify, confirm, notify (it runs when notified).
local function validate_handler(p, h, phase_name)
  local b = validate_runnable(p, h, "handler", handler_fields)
  if not b then
    return nil
  end
  local out = { kind = "handler", name = h.name, phase = phase_name, loc = h.loc }
  for k in pairs(handler_fields) do
    out[k] = b[k]
  end
  return out
end

-- Handlers of one scope (a phase, the playbook), in definition order, names unique.
local function add_handler(p, scope, list, seen, h, phase_name)
  if type(h.name) ~= "string" or h.name == "" then
    p:add(h.loc, "a handler in %s needs a name: handler \"name\" { … }", scope)
    return
  end
  if seen[h.name] then
    p:add(h.loc, "%s: two handlers named '%s' (the other at line %d)", scope, h.name, seen[h.name].line)
  end
  seen[h.name] = h.loc
  list[#list + 1] = validate_handler(p, h, phase_name)
end

-- hosts = { old = "ssh://root@zimaos.lan", new = "local" }: each a name and where it is
-- (a URL, or a table {url = …, agent_dir = …, reconnect = seconds}).
local HOST_FIELDS = { url = "string", agent_dir = "string", reconnect = "number", sudo = "boolean" }
local function validate_hosts(p, pb, b)
  local out = {}
  if type(b.hosts) ~= "table" then
    return out
  end
  local where = p:field(pb.loc, b, "hosts")
  for name, v in pairs(b.hosts) do
    local what = string.format("playbook: hosts.%s", tostring(name))
    if type(name) ~= "string" or not name:match("^[%a_][%w_%-]*$") then
      p:add(where, "playbook: hosts: a host's name is a word (old, nas-1), got %s", tostring(name))
    else
      local h = type(v) == "table" and v or { url = v }
      for k in pairs(h) do
        if not HOST_FIELDS[k] then
          p:add(where, "%s: unknown field '%s' (url, agent_dir, reconnect, sudo)", what, tostring(k))
        end
      end
      local parsed, why = require("hrun.remote").parse(h.url)
      if not parsed then
        p:add(where, "%s: %s", what, why)
      elseif name == "local" and not parsed.is_local then
        p:add(where, "%s: 'local' is this machine: name another host otherwise", what)
      end
      if h.agent_dir ~= nil and (type(h.agent_dir) ~= "string" or h.agent_dir:sub(1, 1) ~= "/") then
        p:add(where, "%s: agent_dir must be an absolute path", what)
      end
      if h.reconnect ~= nil and (type(h.reconnect) ~= "number" or h.reconnect < 0) then
        p:add(where, "%s: reconnect must be a number of seconds >= 0", what)
      end
      if h.sudo ~= nil and type(h.sudo) ~= "boolean" then
        p:add(where, "%s: sudo must be true or false", what)
      end
      out[name] = { url = h.url, agent_dir = h.agent_dir, reconnect = h.reconnect, sudo = h.sudo }
    end
  end
  return out
end

-- One batch size of `serial`: a count of hosts (1, 2, …) or a share of them ("25%"):
-- {count = N} or {percent = P}, or nil and why.
function M.batch_size(v)
  if math.type(v) == "integer" and v >= 1 then
    return { count = v }
  end
  local pct = type(v) == "string" and tonumber(v:match("^%s*(%d+%.?%d*)%%%s*$"))
  if pct and pct > 0 and pct <= 100 then
    return { percent = pct }
  end
  return nil, string.format("a batch is a number of hosts (1, 5) or a percentage (\"25%%\") up to 100%%, got %s",
    type(v) == "string" and string.format("%q", v) or tostring(v))
end

-- The fleet's fields (a playbook run on an inventory's hosts): {targets, serial = {size…},
-- strategy, max_fail, on_host_failure}.
local function validate_fleet(p, pb, b)
  local out = { targets = b.targets, strategy = b.strategy or "linear", max_fail = b.max_fail or 0,
    on_host_failure = b.on_host_failure or "continue", serial = {} }
  if b.targets ~= nil and (type(b.targets) ~= "string" or not b.targets:match("^[%a_][%w_%-]*$")) then
    p:add(p:field(pb.loc, b, "targets"), "playbook: targets names a group of the inventory (a word), got %s",
      tostring(b.targets))
  end
  if b.serial ~= nil then
    local list = type(b.serial) == "table" and b.serial or { b.serial }
    if #list == 0 then
      p:add(p:field(pb.loc, b, "serial"), "playbook: serial: an empty list (serial = { 1, \"25%%\", \"100%%\" })")
    end
    for i, v in ipairs(list) do
      local size, why = M.batch_size(v)
      if not size then
        p:add(p:field(pb.loc, b, "serial"), "playbook: serial%s: %s", type(b.serial) == "table" and
          string.format("[%d]", i) or "", why)
      end
      out.serial[i] = size
    end
  end
  if b.strategy ~= nil and b.strategy ~= "linear" and b.strategy ~= "free" then
    p:add(p:field(pb.loc, b, "strategy"), "playbook: strategy must be \"linear\" or \"free\", got %s",
      string.format("%q", tostring(b.strategy)))
  end
  if b.max_fail ~= nil and (type(b.max_fail) ~= "number" or b.max_fail < 0 or b.max_fail > 100) then
    p:add(p:field(pb.loc, b, "max_fail"), "playbook: max_fail is a percentage of the hosts, 0 to 100, got %s",
      tostring(b.max_fail))
  end
  local policies = { continue = true, stop = true, rollback_all = true }
  if b.on_host_failure ~= nil and not policies[b.on_host_failure] then
    p:add(p:field(pb.loc, b, "on_host_failure"), "playbook: on_host_failure must be \"continue\", \"stop\" or " ..
      "\"rollback_all\", got %s", string.format("%q", tostring(b.on_host_failure)))
  end
  return out
end

-- Every `on` names a host of the playbook (or "local"); a phase's is its steps', checks'
-- and handlers' unless they say otherwise.
local function check_on(p, pb_out)
  local names = { "local" }
  for k in pairs(pb_out.hosts) do
    names[#names + 1] = k
  end
  table.sort(names)
  local function known(item, what, on)
    if on == nil or on == "local" or pb_out.hosts[on] then
      return
    end
    local near = p.nearest(on, names)
    p:add(p:field(item.loc, item, "on"), "%s: on = \"%s\": the playbook has no such host " ..
      "(hosts = { %s = \"ssh://…\" })%s", what, on, on, near and string.format(" (did you mean '%s'?)", near) or "")
  end
  for _, h in ipairs(pb_out.handlers) do
    known(h, string.format("handler '%s'", h.name), h.on)
  end
  for _, ph in ipairs(pb_out.phases) do
    known(ph, string.format("phase '%s'", ph.name), ph.on)
    for _, item in ipairs(ph.items or {}) do
      if item.on == nil then
        item.on = ph.on
      else
        known(item, string.format("%s '%s'", item.kind, item.name), item.on)
      end
    end
    for _, h in ipairs(ph.handlers or {}) do
      if h.on == nil then
        h.on = ph.on
      else
        known(h, string.format("handler '%s'", h.name), h.on)
      end
    end
  end
end

-- A capability of another host: "fs@old:/DATA" → "fs:/DATA", "old"; else text, nil.
function M.capability_host(text)
  local name, host, rest = text:match("^([%w]+)@([%w_%-]+)(.*)$")
  if name then
    return name .. rest, host
  end
  return text, nil
end

-- Every name in a step's notify is a handler of its phase or of the playbook.
local function check_notify(p, pb_out)
  local global = {}
  for _, h in ipairs(pb_out.handlers) do
    global[h.name] = true
  end
  for _, ph in ipairs(pb_out.phases) do
    local known = {}
    for k in pairs(global) do
      known[k] = true
    end
    for _, h in ipairs(ph.handlers or {}) do
      known[h.name] = true
    end
    for _, item in ipairs(ph.items or {}) do
      for i, name in ipairs(item.kind == "step" and type(item.notify) == "table" and item.notify or {}) do
        if type(name) == "string" and not known[name] then
          local near = p.nearest(name, sorted_keys(known))
          p:add(p:field(item.loc, item, "notify"), "step '%s': notify[%d]: no handler '%s' in phase '%s' or the " ..
            "playbook%s", item.name, i, name, ph.name, near and string.format(" (did you mean '%s'?)", near) or "")
        end
      end
    end
  end
end

local function validate_check(p, c, phase_name)
  if type(c.body) ~= "function" then
    p:add(c.loc, "check '%s': expects a function: check \"%s\" (function(ctx) … end)", c.name, c.name)
    return nil
  end
  return { kind = "check", name = c.name, phase = phase_name, loc = c.loc, fn = c.body }
end

local function validate_phase(p, ph)
  local what = string.format("phase '%s'", ph.name)
  local b = ph.body
  if type(b) ~= "table" then
    p:add(ph.loc, "%s: expects a table of steps and checks: phase \"%s\" { step … }", what, ph.name)
    return nil
  end
  p:fields(ph.loc, what, b, phase_fields)
  p:strings(ph.loc, what, b, "tags")
  local out = { name = ph.name, loc = ph.loc, description = b.description, when = b.when, items = {},
    tags = b.tags, handlers = {}, on = b.on }
  local seen, handlers_seen = {}, {}
  for i = 1, #b do
    local item = b[i]
    local kind = type(item) == "table" and objects[item]
    if kind == "handler" then
      add_handler(p, what, out.handlers, handlers_seen, item, ph.name)
    elseif kind ~= "step" and kind ~= "check" then
      p:add(ph.loc, "%s: item %d is not a step, a check or a handler (got %s)", what, i,
        kind and ("a " .. kind) or type(item))
    elseif type(item.name) ~= "string" or item.name == "" then
      p:add(item.loc, "a %s in %s needs a name: %s \"name\" …", kind, what, kind)
    else
      if seen[item.name] then
        p:add(item.loc, "%s: two steps or checks named '%s' (the other at line %d)", what, item.name,
          seen[item.name].line)
      end
      seen[item.name] = item.loc
      local v
      if kind == "step" then
        v = validate_step(p, item, ph.name)
      else
        v = validate_check(p, item, ph.name)
      end
      out.items[#out.items + 1] = v
    end
  end
  if #out.items == 0 and #b == #out.handlers then
    p:add(ph.loc, "%s: has no steps or checks", what)
  end
  return out
end

-- validate(object, nearest, where) → playbook description | nil, {"file:line: problem", …}
-- where: {file, line} of the playbook{} call, known from the source ("return playbook
-- {…}" is a tail call: the call leaves no frame to read it from). capability(text) →
-- true | nil, why checks a declared capability's grammar.
-- where: {file, line, source} — the playbook's file, the line of its playbook { and the
-- text loaded from it (for the lines of fields).
function M.validate(pb, nearest, where, capability)
  local p = new_problems(nearest)
  p.source_file, p.source_text = where and where.file, where and where.source
  if M.is_playbook(pb) and where and pb.loc.line < 1 then
    pb.loc = where
  end
  if not M.is_playbook(pb) then
    p:add(nil, "the file does not return a playbook: end it with return playbook { … }")
    return nil, p.list
  end
  local b = pb.body
  if type(b) ~= "table" then
    p:add(pb.loc, "playbook: expects a table: playbook { name = \"…\", phase \"…\" { … } }")
    return nil, p.list
  end
  p:fields(pb.loc, "playbook", b, playbook_fields)
  if type(b.name) ~= "string" or b.name == "" then
    p:add(pb.loc, "playbook: needs a name (name = \"…\")")
  end
  if b.on_failure ~= nil and b.on_failure ~= "rollback" and b.on_failure ~= "stop" then
    p:add(p:field(pb.loc, b, "on_failure"), "playbook: field 'on_failure' must be \"rollback\" or \"stop\", got \"%s\"",
      tostring(b.on_failure))
  end
  local hosts = validate_hosts(p, pb, b)
  if type(b.capabilities) == "table" then
    for i, c in ipairs(b.capabilities) do
      if type(c) ~= "string" then
        p:add(p:field(pb.loc, b, "capabilities"), "playbook: capabilities[%d] must be a string", i)
      else
        local text, host = M.capability_host(c)
        if host and host ~= "local" and not hosts[host] then
          p:add(p:field(pb.loc, b, "capabilities"), "playbook: capabilities[%d]: '%s' names host '%s', which " ..
            "the playbook's hosts do not have", i, c, host)
        elseif capability then
          local ok, why = capability(text)
          if not ok then
            p:add(p:field(pb.loc, b, "capabilities"), "playbook: capabilities[%d]: %s", i, why)
          end
        end
      end
    end
  end
  local out = {
    name = b.name, version = b.version, description = b.description,
    params = {}, required = {},
    capabilities = b.capabilities or {}, on_failure = b.on_failure or "rollback",
    loc = pb.loc, phases = {}, handlers = {}, hosts = hosts, fleet = validate_fleet(p, pb, b),
  }
  -- params: defaults, and required "TYPE" for those that have none
  for k, v in pairs(type(b.params) == "table" and b.params or {}) do
    if objects[v] == "required" then
      if PARAM_TYPES[v.name] then
        out.required[k] = v.name
      else
        p:add(v.loc, "playbook: params.%s: required takes \"string\", \"number\", \"boolean\" or \"table\", got %s",
          tostring(k), type(v.name) == "string" and string.format("%q", v.name) or type(v.name))
      end
    else
      out.params[k] = v
    end
  end
  local seen, handlers_seen = {}, {}
  for i = 1, #b do
    local ph = b[i]
    if objects[ph] == "handler" then
      add_handler(p, "playbook", out.handlers, handlers_seen, ph, nil)
    elseif objects[ph] ~= "phase" then
      p:add(pb.loc, "playbook: item %d is not a phase (got %s); steps go inside phase \"name\" { … }", i,
        objects[ph] and ("a " .. objects[ph]) or type(ph))
    elseif type(ph.name) ~= "string" or ph.name == "" then
      p:add(ph.loc, "a phase needs a name: phase \"name\" { … }")
    else
      if seen[ph.name] then
        p:add(ph.loc, "playbook: two phases named '%s' (the other at line %d)", ph.name, seen[ph.name].line)
      end
      seen[ph.name] = ph.loc
      out.phases[#out.phases + 1] = validate_phase(p, ph)
    end
  end
  if #out.phases == 0 and #b == #out.handlers then
    p:add(pb.loc, "playbook: has no phases")
  end
  check_notify(p, out)
  check_on(p, out)
  if #p.list > 0 then
    return nil, p:in_order()
  end
  return out
end

-- }======================================================

-- {======================================================
-- The environment playbooks load into: an allow-list of globals. No os.execute,
-- io.popen, writing io.open, binary chunks, debug or package.loadlib: they would
-- bypass the journal and plan mode.
-- ======================================================

local SAFE = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal", "rawget", "rawlen",
  "rawset", "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "xpcall",
  "_VERSION",
}
local LIBS = { "string", "table", "math", "utf8", "coroutine" }

local function copy(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = v
  end
  return c
end

-- environment(modules [, guard]) → a fresh table for one playbook: the safe globals,
-- copies of the safe libraries, copies of the hrun modules given ({name = module}; a
-- playbook that changes its fs.write changes its own copy, never the engine's) without
-- their internal functions (_name), and the DSL. guard: {allowed, mask} from the engine:
-- allowed(what, cap, path) → true | nil, why is the sandbox's say on the files io.open
-- and io.lines read; mask(text) hides the secrets in what print and io.write show;
-- armthread(co) lets timeouts and interrupts reach a coroutine.
function M.environment(modules, guard)
  local allowed = guard and guard.allowed
  local mask = guard and guard.mask or function(s)
    return s
  end
  local env = {}
  for _, k in ipairs(SAFE) do
    env[k] = _G[k]
  end
  for _, k in ipairs(LIBS) do
    env[k] = copy(_G[k])
  end
  -- hooks are per thread: a coroutine is armed each time it resumes, so that a step's
  -- timeout and Ctrl-C stop a loop in it too
  local arm = guard and guard.armthread
  if arm then
    env.coroutine.resume = function(co, ...)
      if type(co) == "thread" then
        arm(co)
      end
      return coroutine.resume(co, ...)
    end
    env.coroutine.wrap = function(f)
      local co = coroutine.create(f)
      return function(...)
        local r = table.pack(coroutine.resume(arm(co), ...))
        if not r[1] then
          error(r[2], 0)
        end
        return table.unpack(r, 2, r.n)
      end
    end
  end
  env.os = { time = os.time, date = os.date, clock = os.clock, difftime = os.difftime, getenv = os.getenv }
  env.print = function(...)
    local n, parts = select("#", ...), {}
    for i = 1, n do
      parts[i] = mask(tostring((select(i, ...))))
    end
    io.stdout:write(table.concat(parts, "\t"), "\n")
  end
  -- in the sandbox a file read is checked as fs's: the error names the playbook's line
  local function may_read(fn, path)
    if allowed and type(path) == "string" then
      local ok, why = allowed(fn, "fs", path)
      if not ok then
        error(why, 3)
      end
    end
  end
  env.io = {
    write = function(...)
      local args = table.pack(...)
      for i = 1, args.n do
        if type(args[i]) == "string" then
          args[i] = mask(args[i])
        end
      end
      return io.stdout:write(table.unpack(args, 1, args.n))
    end,
    -- reading only: writes go through fs, which plan mode and the journal see
    open = function(path, mode)
      if mode ~= nil and mode ~= "r" and mode ~= "rb" then
        error("io.open: playbooks open files for reading only; write with fs.write", 2)
      end
      may_read("io.open", path)
      return io.open(path, mode)
    end,
    lines = function(path, ...)
      if path == nil then
        error("io.lines: a path is needed", 2)
      end
      may_read("io.lines", path)
      return io.lines(path, ...)
    end,
  }
  env.load = function(chunk, name, mode, e)
    if mode ~= nil and mode ~= "t" then
      error("load: playbooks load text chunks only", 2)
    end
    return load(chunk, name, "t", e or env)
  end
  env.require = function(name)
    local m = type(name) == "string" and name:match("^hrun%.(.+)$")
    if m and modules[m] then
      return modules[m]
    end
    error(string.format("require: playbooks may require hrun's modules only (hrun.%s …), not '%s'",
      "fs", tostring(name)), 2)
  end
  local copies = {}
  for name, mod in pairs(modules) do
    local c = {}
    for k, v in pairs(mod) do
      if type(k) ~= "string" or k:sub(1, 1) ~= "_" then
        c[k] = v
      end
    end
    copies[name], env[name] = c, c
  end
  modules = copies
  for name, fn in pairs(M.constructors()) do
    env[name] = fn
  end
  env.hosts = M.hosts_view(modules, function(host, fn, ...)
    return require("hrun.remote").route(host, fn, ...)
  end)
  env._G = env
  return env
end

-- hosts.NAME.<module>.<fn>(…): the module function called on host NAME. route(host, fn,
-- …) calls fn with that host's calls going there (the runner's, while a playbook runs).
function M.hosts_view(modules, route)
  local made = {}
  return setmetatable({}, {
    __index = function(_, host)
      if type(host) ~= "string" then
        return nil
      end
      if not made[host] then
        local mods = {}
        for mname, mod in pairs(modules) do
          if type(mod) == "table" then
            local m = {}
            for fname, fn in pairs(mod) do
              if type(fn) == "function" then
                m[fname] = function(...)
                  return route(host, fn, ...)
                end
              else
                m[fname] = fn
              end
            end
            mods[mname] = m
          end
        end
        made[host] = mods
      end
      return made[host]
    end,
    __newindex = function()
      error("hosts: read-only (hosts are described in the playbook's hosts = { … } or with -H NAME=URL)", 2)
    end,
  })
end

-- readonly(t [, views]) → a read-only view of t (ctx.params): reads go to t, writes raise,
-- pairs and # work, json.encode gives t. views, a table, gets view → t for each view made
-- (the sandbox's process sends what a view shows).
function M.readonly(t, views)
  if type(t) ~= "table" then
    return t
  end
  local view = setmetatable({}, {
    __index = function(_, k)
      return M.readonly(t[k], views)
    end,
    __newindex = function(_, k)
      error(string.format("ctx.params is read-only (tried to set '%s')", tostring(k)), 2)
    end,
    __len = function()
      return #t
    end,
    __pairs = function()
      return function(_, k)
        local nk, nv = next(t, k)
        return nk, M.readonly(nv, views)
      end, nil, nil
    end,
    __tojson = function()
      return t
    end,
  })
  if views then
    views[view] = t
  end
  return view
end

-- refill(ctx, k, from): ctx[k] takes the content of the table `from`, in place, so that a
-- reference to ctx[k] (a playbook's local) stays good. ctx.state and ctx.shared come back
-- so from the sandbox's process and from the engine.
function M.refill(ctx, k, from)
  local into = ctx[k]
  if type(from) ~= "table" then
    return
  elseif type(into) ~= "table" then
    ctx[k] = from
    return
  end
  for key in pairs(into) do
    into[key] = nil
  end
  for key, v in pairs(from) do
    into[key] = v
  end
end

-- plain(v [, lenient]) → a copy of v as data: tables without metatables (read with next,
-- so no metamethod runs), strings, numbers, booleans. Anything else (a function among a
-- playbook's parameters) raises, or with lenient is left out; so does a table inside
-- itself.
function M.plain(v, lenient, seen)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then
    return v
  elseif t ~= "table" then
    if lenient then
      return nil
    end
    error(string.format("a %s where only data (strings, numbers, booleans, tables) may be", t), 0)
  end
  seen = seen or {}
  if seen[v] then
    if lenient then
      return nil
    end
    error("a table that contains itself where only data may be", 0)
  end
  seen[v] = true
  local out = {}
  for k, x in next, v do
    local pk = M.plain(k, lenient, seen)
    if pk ~= nil then
      out[pk] = M.plain(x, lenient, seen)
    end
  end
  seen[v] = nil
  return out
end

-- Is this source a playbook (it calls playbook{…} / playbook(…)), or a plain script?
-- A small lexer skips comments and strings, so a mention in either does not count.
-- Returns true and the line of the call, or false.
function M.is_playbook_source(src)
  local i, n = 1, #src
  local prev_ident, prev_line
  local function line_at(pos)
    local _, count = src:sub(1, pos):gsub("\n", "")
    return count + 1
  end
  while i <= n do
    local c = src:sub(i, i)
    if src:sub(i, i + 1) == "--" then
      local eq = src:match("^%[(=*)%[", i + 2)
      if eq then
        local _, e = src:find("]" .. eq .. "]", i, true)
        i = (e or n) + 1
      else
        local e = src:find("\n", i, true)
        i = (e or n) + 1
      end
      prev_ident = nil
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n do
        local d = src:sub(j, j)
        if d == "\\" then
          j = j + 2
        elseif d == c or d == "\n" then
          break
        else
          j = j + 1
        end
      end
      if prev_ident == "playbook" then
        return true, line_at(prev_line)
      end
      i = j + 1
      prev_ident = nil
    elseif c == "[" and src:match("^%[=*%[", i) then
      local eq = src:match("^%[(=*)%[", i)
      local _, e = src:find("]" .. eq .. "]", i, true)
      i = (e or n) + 1
      prev_ident = nil
    elseif c:match("[%a_]") then
      local word = src:match("^[%w_]+", i)
      prev_ident, prev_line = word, i
      i = i + #word
    elseif c:match("%s") then
      i = i + 1
    else
      if prev_ident == "playbook" and (c == "{" or c == "(") then
        return true, line_at(prev_line)
      end
      prev_ident = (c == ".") and "." or nil
      i = i + 1
    end
  end
  return false
end

-- }======================================================

-- {======================================================
-- Parameters: the playbook's params are the defaults; -p key=value and --params FILE
-- override them. Every key must be declared; values take the type of the default.
-- ======================================================

local function convert(value, want, key)
  if want == "string" then
    return value
  elseif want == "number" then
    local n = tonumber(value)
    if n == nil then
      return nil, string.format("parameter '%s' must be a number, got '%s'", key, value)
    end
    return n
  elseif want == "boolean" then
    local b = ({ ["true"] = true, yes = true, ["1"] = true, on = true,
      ["false"] = false, no = false, ["0"] = false, off = false })[value:lower()]
    if b == nil then
      return nil, string.format("parameter '%s' must be true or false, got '%s'", key, value)
    end
    return b
  elseif want == "table" then
    local v, err = require("hrun.json").decode(value)
    if type(v) ~= "table" then
      return nil, string.format("parameter '%s' takes a JSON list or object: %s", key, err or value)
    end
    return v
  end
  return value
end

local function read_params_file(path)
  local fs = require "hrun.fs"
  local text, err = fs.read(path)
  if not text then
    return nil, (tostring(err):gsub("^fs%.read: ", "")) -- the file and why, not the primitive
  end
  if path:match("%.json$") then
    local v, jerr = require("hrun.json").decode(text)
    if type(v) ~= "table" then
      return nil, string.format("%s: not a JSON object: %s", path, jerr or "")
    end
    return v
  end
  -- a Lua table: data only, no globals
  local fn, lerr = load(text, "@" .. path, "t", {})
  if not fn then
    return nil, lerr
  end
  local ok, v = pcall(fn)
  if not ok then
    return nil, v
  end
  if type(v) ~= "table" then
    return nil, string.format("%s: must return a table of parameters", path)
  end
  return v
end

-- params(pb, files, pairs, nearest) → params | nil, problems. files: --params FILE…
-- (applied in order), pairs: {"key=value", …} from -p (applied last).
function M.params(pb, files, kvs, nearest)
  local p = new_problems(nearest)
  local out = {}
  local required = pb.required or {}
  local kinds = {} -- each parameter's type: its default's, or the one required
  for k, v in pairs(pb.params) do
    out[k], kinds[k] = v, type(v)
  end
  for k, t in pairs(required) do
    kinds[k] = t
  end
  local given = {} -- what -p or --params named, well or not: no "is required" beside its error
  local function check_key(key, from)
    given[key] = true
    if kinds[key] == nil then
      local near = nearest(key, sorted_keys(kinds))
      p:add(nil, "%s: the playbook has no parameter '%s'%s", from, key,
        near and string.format(" (did you mean '%s'?)", near) or "")
      return false
    end
    return true
  end
  for _, file in ipairs(files) do
    local t, err = read_params_file(file)
    if not t then
      p:add(nil, "--params %s", err)
    else
      for k, v in pairs(t) do
        if check_key(k, file) then
          if type(v) ~= kinds[k] then
            p:add(nil, "%s: parameter '%s' must be a %s, got %s", file, k, kinds[k], type(v))
          else
            out[k] = v
          end
        end
      end
    end
  end
  for _, kv in ipairs(kvs) do
    local key, value = kv:match("^([^=]+)=(.*)$")
    if not key then
      p:add(nil, "-p %s: expected key=value", kv)
    elseif check_key(key, "-p " .. kv) then
      local v, err = convert(value, kinds[key], key)
      if err then
        p:add(nil, "-p %s: %s", kv, err)
      else
        out[key] = v
      end
    end
  end
  for _, k in ipairs(sorted_keys(required)) do
    if out[k] == nil and not given[k] then
      p:add(nil, "parameter '%s' is required (a %s, no default): give it with -p %s=… or --params FILE", k,
        required[k], k)
    end
  end
  if #p.list > 0 then
    return nil, p.list
  end
  return out
end

-- }======================================================

return M
