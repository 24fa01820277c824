-- hrun.fleet: one playbook on many hosts (`hrun PLAYBOOK --hosts FILE`), in rolling
-- batches, with hrun's journal, plan and rollback on every host.
--
-- Each host of the fleet is an ordinary run of the playbook — a *member* — in a process
-- of its own (`hrun PLAYBOOK --fleet-member SPEC`), with its own journal under the fleet
-- run's directory (STATE/fleet/RUN/HOST), whose steps run on that host unless they say
-- `on` otherwise; so a member is resumed and rolled back as any run is. This process
-- starts the members a batch at a time (`serial`), holds each at a gate before every step
-- (`strategy`: "linear" lets no host start a step before every host of its batch has
-- finished the one before; "free" lets each go on), answers `run_once`, and applies the
-- failure policy (`max_fail`, `on_host_failure`). Its own journal keeps the fleet run and
-- each host's member run, state directory and outcome (the fleet_hosts table).
local fs, sys, json = require("hrun.fs"), require("hrun.sys"), require("hrun.json")
local wire = require("hrun.wire")
local remote = require("hrun.remote")
local dsl, ui_mod = require("hrun.dsl"), require("hrun.ui")

local M = {}

M.DEFAULT_FORKS = 10

-- {======================================================
-- The inventory: a Lua file of `host "name" { … }` and `group "name" { … }`, data only
-- ======================================================

local HOST_FIELDS = { url = true, agent_dir = true, groups = true, vars = true, sudo = true }
local GROUP_FIELDS = { vars = true }
local WORD = "^[%a_][%w_%-]*$"

-- Values a host's or group's vars may hold: plain data.
local function plain(v, depth)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" then
    return true
  elseif t == "table" and (depth or 0) < 16 then
    for k, x in pairs(v) do
      if (type(k) ~= "string" and math.type(k) ~= "integer") or not plain(x, (depth or 0) + 1) then
        return false
      end
    end
    return true
  end
  return false
end

-- inventory(path, nearest) → {hosts = {name = host}, order = {names}, groups = {name =
-- {members, vars, line}}} | nil, {"FILE:LINE: problem", …}. The file runs with nothing but
-- `host` and `group` (no other global, a bounded number of instructions).
function M.inventory(path, nearest)
  local text, err = fs.read(path)
  if not text then
    return nil, { string.format("--hosts %s: %s", path, (tostring(err):gsub("^fs%.read: ", ""))) }
  end
  local problems, hosts, order, groups, group_order = {}, {}, {}, {}, {}
  local function add(line, fmt, ...)
    problems[#problems + 1] = string.format("%s:%s: " .. fmt, path, line or "?", ...)
  end
  local function line_of_caller()
    local info = debug.getinfo(3, "Sl")
    return info and info.source == "@" .. path and info.currentline or nil
  end
  local function constructor(kind, fields, into, list)
    return function(name)
      local line = line_of_caller()
      return function(body)
        if type(name) ~= "string" or not name:match(WORD) or name == "local" or name == "all" then
          add(line, "%s: a %s's name is a word (web1, nas-2; not 'local' or 'all'), got %s", kind, kind,
            type(name) == "string" and string.format("%q", name) or tostring(name))
          return
        end
        if type(body) ~= "table" then
          body = kind == "host" and { url = body } or body
          if type(body) ~= "table" then
            add(line, "%s '%s': expects a table: %s \"%s\" { … }", kind, name, kind, name)
            return
          end
        end
        if into[name] then
          add(line, "%s '%s': named twice (the other at line %s)", kind, name, tostring(into[name].line))
          return
        end
        for k in pairs(body) do
          if math.type(k) ~= "integer" and not fields[k] then
            local near = nearest(tostring(k), dsl.sorted_keys(fields))
            add(line, "%s '%s': unknown field '%s'%s", kind, name, tostring(k),
              near and string.format(" (did you mean '%s'?)", near) or "")
          end
        end
        into[name] = { name = name, line = line, body = body }
        list[#list + 1] = name
      end
    end
  end
  local env = { host = constructor("host", HOST_FIELDS, hosts, order),
    group = constructor("group", GROUP_FIELDS, groups, group_order) }
  local fn, lerr = load(text, "@" .. path, "t", env)
  if not fn then
    return nil, { lerr }
  end
  local ok, rerr = pcall(function()
    debug.sethook(function()
      error(path .. ": the inventory runs too long (it is data: host \"…\" { … } and group \"…\" { … })", 0)
    end, "", 10000000)
    local r = table.pack(pcall(fn))
    debug.sethook()
    if not r[1] then
      error(r[2], 0)
    end
  end)
  if not ok then
    return nil, { tostring(rerr) }
  end
  if #order == 0 and #problems == 0 then
    add(1, "no hosts: host \"web1\" { url = \"ssh://root@10.0.0.11\" }")
  end
  local out = { hosts = {}, order = order, groups = {} }
  for _, name in ipairs(order) do
    local h, b = hosts[name], hosts[name].body
    local parsed, why = remote.parse(b.url)
    if not parsed then
      add(h.line, "host '%s': url: %s", name, why)
    end
    if b.agent_dir ~= nil and (type(b.agent_dir) ~= "string" or b.agent_dir:sub(1, 1) ~= "/") then
      add(h.line, "host '%s': agent_dir must be an absolute path", name)
    end
    if b.vars ~= nil and (type(b.vars) ~= "table" or not plain(b.vars)) then
      add(h.line, "host '%s': vars must be a table of plain values (strings, numbers, booleans, tables)", name)
    end
    if b.sudo ~= nil and type(b.sudo) ~= "boolean" then
      add(h.line, "host '%s': sudo must be true or false", name)
    end
    local member_of = {}
    if b.groups ~= nil then
      if type(b.groups) ~= "table" then
        add(h.line, "host '%s': groups is a list of group names: groups = { \"web\" }", name)
      else
        for _, g in ipairs(b.groups) do
          if type(g) ~= "string" or not g:match(WORD) then
            add(h.line, "host '%s': groups: a group's name is a word, got %s", name, tostring(g))
          else
            member_of[#member_of + 1] = g
          end
        end
      end
    end
    out.hosts[name] = { name = name, url = b.url, agent_dir = b.agent_dir, sudo = b.sudo, vars = b.vars or {},
      line = h.line, groups = member_of }
  end
  for _, gname in ipairs(group_order) do
    local g, b = groups[gname], groups[gname].body
    if b.vars ~= nil and (type(b.vars) ~= "table" or not plain(b.vars)) then
      add(g.line, "group '%s': vars must be a table of plain values", gname)
    end
    for _, member in ipairs(b) do
      if not out.hosts[member] then
        local near = nearest(tostring(member), order)
        add(g.line, "group '%s': no host '%s' in the inventory%s", gname, tostring(member),
          near and string.format(" (did you mean '%s'?)", near) or "")
      else
        table.insert(out.hosts[member].groups, gname)
      end
    end
    out.groups[gname] = { name = gname, vars = b.vars or {}, line = g.line }
  end
  -- a group named only in hosts' lists exists too
  for _, name in ipairs(order) do
    for _, gname in ipairs(out.hosts[name].groups) do
      out.groups[gname] = out.groups[gname] or { name = gname, vars = {} }
    end
  end
  out.group_order = group_order
  if #problems > 0 then
    return nil, problems
  end
  return out
end

-- The hosts a run targets, in the inventory's order: the playbook's `targets` group (or
-- every host), narrowed by --limit (names and groups, comma-separated). Or nil, why.
function M.select(inv, targets, limit, nearest)
  local function members(gname)
    if gname == "all" then
      return inv.order
    end
    local list = {}
    for _, name in ipairs(inv.order) do
      for _, g in ipairs(inv.hosts[name].groups) do
        if g == gname then
          list[#list + 1] = name
          break
        end
      end
    end
    return list
  end
  local candidates = {}
  for g in pairs(inv.groups) do
    candidates[#candidates + 1] = g
  end
  for _, h in ipairs(inv.order) do
    candidates[#candidates + 1] = h
  end
  table.sort(candidates)
  local base = targets or "all"
  if base ~= "all" and not inv.groups[base] then
    local near = nearest(base, candidates)
    return nil, string.format("the playbook targets group '%s', which the inventory does not have%s", base,
      near and string.format(" (did you mean '%s'?)", near) or "")
  end
  local chosen = {}
  for _, name in ipairs(members(base)) do
    chosen[name] = true
  end
  if limit and #limit > 0 then
    local wanted = {}
    for _, item in ipairs(limit) do
      for word in tostring(item):gmatch("[^,%s]+") do
        if inv.hosts[word] then
          wanted[word] = true
        elseif inv.groups[word] or word == "all" then
          for _, name in ipairs(members(word)) do
            wanted[name] = true
          end
        else
          local near = nearest(word, candidates)
          return nil, string.format("--limit %s: no host or group '%s' in the inventory%s", item, word,
            near and string.format(" (did you mean '%s'?)", near) or "")
        end
      end
    end
    for name in pairs(chosen) do
      chosen[name] = wanted[name] or nil
    end
  end
  local list = {}
  for _, name in ipairs(inv.order) do
    if chosen[name] then
      list[#list + 1] = name
    end
  end
  if #list == 0 then
    return nil, string.format("no host of the inventory is targeted (targets = %q%s)", base,
      limit and #limit > 0 and (", --limit " .. table.concat(limit, ",")) or "")
  end
  return list
end

-- The batches of `serial` over n hosts: {{first, last}, …}. Each size in turn, the last
-- one repeated; a percentage of all the hosts, rounded up, at least one.
function M.batches(serial, n)
  local out, at, i = {}, 1, 1
  while at <= n do
    local size = serial and serial[math.min(i, #serial)]
    local count = not size and n or size.count or math.max(1, math.ceil(size.percent * n / 100 - 1e-9))
    local last = math.min(n, at + count - 1)
    out[#out + 1] = { at, last }
    at, i = last + 1, i + 1
  end
  return out
end

-- A host's parameters from the inventory: its groups' vars (in the inventory's order of
-- groups), then its own; only those the playbook declares (an inventory serves many
-- playbooks). Returns them, or nil and why (a value of the wrong type).
function M.host_params(inv, name, pb)
  local kinds = {}
  for k, v in pairs(pb.params or {}) do
    kinds[k] = type(v)
  end
  for k, t in pairs(pb.required or {}) do
    kinds[k] = t
  end
  local h, out = inv.hosts[name], {}
  local function take(vars, from)
    for k, v in pairs(vars or {}) do
      if kinds[k] then
        if type(v) ~= kinds[k] then
          return nil, string.format("%s: parameter '%s' must be a %s, got %s", from, k, kinds[k], type(v))
        end
        out[k] = v
      end
    end
    return true
  end
  local in_group = {}
  for _, g in ipairs(h.groups) do
    in_group[g] = true
  end
  for _, g in ipairs(inv.group_order) do
    if in_group[g] then
      local ok, why = take(inv.groups[g].vars, string.format("group '%s' vars", g))
      if not ok then
        return nil, why
      end
    end
  end
  local ok, why = take(h.vars, string.format("host '%s' vars", name))
  if not ok then
    return nil, why
  end
  return out
end

-- }======================================================

-- {======================================================
-- A member: one host's run, in a process of its own
-- ======================================================

local Member = {}
Member.__index = Member

-- A member from its row in fleet_hosts (or the same fields).
function M.member(row)
  return setmetatable({ name = row.host, url = row.url, agent_dir = row.agent_dir, state = row.state,
    position = row.position, batch = row.batch, member_run = row.member_run, status = row.status,
    error = row.error, started = row.started, ended = row.ended }, Member)
end

-- The member's gate answer: go | skip WHY | stop WHY | fail WHY.
function Member:answer(word, why)
  self.at = nil
  if word == "go" then
    self.running = self.gate.index
  end
  self.ch:send(why and (word .. " " .. why) or word)
end

-- A member's statuses that `hrun rollback` of the fleet run undoes.
M.UNDOABLE = { done = true, stopped = true, running = true, crashed = true, ["rollback-incomplete"] = true }

-- }======================================================

-- {======================================================
-- What a person sees: each member's events with its host, the fleet's own
-- ======================================================

local FleetUI = {}
FleetUI.__index = FleetUI

local Live = {}
Live.__index = Live

function M.ui(opts, priv)
  if not opts.json and priv.isatty(1) then
    return setmetatable({ priv = priv, color = not opts.no_color and not sys.env("NO_COLOR"), hosts = {},
      order = {}, drawn = 0, frame = 0 }, Live)
  end
  return setmetatable({ json = opts.json, plain = ui_mod.new({ json = false, tty = false, verbose = opts.verbose }) },
    FleetUI)
end

local QUIET = { ["run-start"] = true, ["run-end"] = true, recap = true, capabilities = true }

function FleetUI.line(_, t, fmt, ...)
  io.stdout:write(ui_mod.timestamp(t or sys.now()), " ", string.format(fmt, ...), "\n")
  io.stdout:flush()
end

function FleetUI:event(ev)
  if self.json then
    io.stdout:write(require("hrun.codec").summary(ev, 8192), "\n")
    io.stdout:flush()
    return
  end
  local e = ev.event
  if e == "fleet-start" then
    self:line(ev.time, "fleet %s%s: %d host%s (%s), %d batch%s, strategy %s, forks %d", ev.playbook,
      ev.run and (" #" .. ev.run) or "", #ev.hosts, #ev.hosts == 1 and "" or "s", table.concat(ev.hosts, ", "),
      ev.batches, ev.batches == 1 and "" or "es", ev.strategy, ev.forks)
  elseif e == "batch-start" then
    self:line(ev.time, "batch %d: %s", ev.batch, table.concat(ev.hosts, ", "))
  elseif e == "host-unreachable" then
    self:line(ev.time, "[%s] UNREACHABLE: %s", ev.host, ev.error)
  elseif e == "host-end" then
    self:line(ev.time, "[%s] %s%s", ev.host, ev.status, ev.error and (": " .. ev.error) or "")
  elseif e == "host-rollback" then
    self:line(ev.time, "[%s] rolling back%s", ev.host, ev.why and (": " .. ev.why) or "")
  elseif e == "fleet-recap" then
    self:line(ev.time, "recap:")
    for _, h in ipairs(ev.hosts) do
      self:line(ev.time, "  %-16s %s%s", h.host, h.status, h.error and ("  (" .. h.error .. ")") or "")
    end
  elseif e == "run-end" and ev.fleet then
    self:line(ev.time, "%s (fleet run %s, exit %d)", ev.status, tostring(ev.run), ev.exit)
  elseif e == "error" and not ev.host then
    self:line(ev.time, "error: %s", ev.message)
  elseif ev.host and not QUIET[e] then
    -- the member's own line, its host in front
    local lines, host = self.plain, ev.host
    lines.line = function(_, t, fmt, ...)
      self:line(t, "[%s] %s", host, string.format(fmt, ...))
    end
    lines:event(ev)
  end
end

-- {======================================================
-- The live view, on a terminal: the lines that stay scroll above; below them, one line
-- a host of the batch — its phase ▸ step, a spinner and the time so far, or ✓ ✗ ↶ once
-- it ended — redrawn in place; past a screenful, the hosts that are not running are
-- folded into one line. A host's failure is written above, under its name.
-- ======================================================

local SPINNER = ui_mod.SPINNER
local MARK = { done = { "✓", "32" }, planned = { "✓", "32" }, ["rolled-back"] = { "↶", "33" },
  stopped = { "■", "33" }, ["not started"] = { "·", "2" } }
local FAILED = { "✗", "31" }

-- A host's end as a mark and its colour: ✓ ↶ ■ ·, else ✗ (failed in any other way).
local function mark_of(status)
  return MARK[status] or FAILED
end

function Live:c(code, s)
  return self.color and ("\27[" .. code .. "m" .. s .. "\27[0m") or s
end

-- The region below is taken away, s written, the region drawn again.
function Live:print(s)
  self:erase()
  io.stdout:write(s, "\n")
  self:draw()
end

function Live:erase()
  if self.drawn > 0 then
    io.stdout:write(string.format("\27[%dF\27[J", self.drawn))
    self.drawn = 0
  end
end

function Live:row(h)
  local name = h.name .. string.rep(" ", math.max(1, self.width - (utf8.len(h.name) or #h.name)))
  if h.status then
    local mark = mark_of(h.status)
    return string.format("  %s %s%s", self:c(mark[2], mark[1]), name, self:c("2", h.status))
  elseif h.step then
    return string.format("  %s %s%s ▸ %s %s", self:c("33", SPINNER[self.frame % #SPINNER + 1]), name,
      h.phase or "", h.step, self:c("2", ui_mod.seconds(sys.clock() - h.since)))
  end
  return string.format("  %s %s%s", self:c("2", "…"), name, self:c("2", h.waiting or "connecting"))
end

function Live:draw()
  local rows = select(1, self.priv.termsize(1)) or 24
  local room = math.max(3, rows - 2)
  local lines, shown = {}, self.order
  if #shown > room then -- the running hosts first; the others counted on one line
    local running, rest = {}, { done = 0, other = 0 }
    for _, name in ipairs(shown) do
      local h = self.hosts[name]
      if not h.status and #running < room - 1 then
        running[#running + 1] = name
      elseif h.status == "done" then
        rest.done = rest.done + 1
      else
        rest.other = rest.other + 1
      end
    end
    shown = running
    lines[room] = self:c("2", string.format("  … %d more: %d done, %d waiting or ended otherwise",
      #self.order - #running, rest.done, rest.other))
  end
  local out = {}
  for _, name in ipairs(shown) do
    out[#out + 1] = self:row(self.hosts[name])
  end
  if lines[room] then
    out[#out + 1] = lines[room]
  end
  for _, l in ipairs(out) do
    io.stdout:write(l, "\n")
  end
  self.drawn = #out
  io.stdout:flush()
end

function Live:tick()
  self.frame = self.frame + 1
  self:erase()
  self:draw()
end

function Live:event(ev)
  local e, ts = ev.event, ui_mod.timestamp(ev.time or sys.now())
  local h = ev.host and self.hosts[ev.host]
  if e == "fleet-start" then
    self.width = 2
    for _, name in ipairs(ev.hosts) do
      self.width = math.max(self.width, (utf8.len(name) or #name) + 2)
    end
    self:print(self:c("1", string.format("fleet %s%s", ev.playbook, ev.run and (" #" .. ev.run) or "")) ..
      string.format(": %d host%s, %d batch%s, strategy %s, forks %d", #ev.hosts, #ev.hosts == 1 and "" or "s",
        ev.batches, ev.batches == 1 and "" or "es", ev.strategy, ev.forks))
  elseif e == "batch-start" then
    self:erase()
    self.order, self.hosts = {}, {}
    for _, name in ipairs(ev.hosts) do
      self.order[#self.order + 1] = name
      self.hosts[name] = { name = name }
    end
    self:print(self:c("1", string.format("batch %d", ev.batch)) .. ": " .. table.concat(ev.hosts, ", "))
  elseif e == "host-unreachable" then
    self:print(string.format("%s %s %s: %s", ts, self:c("31", "✗"), ev.host, "unreachable: " .. tostring(ev.error)))
  elseif e == "step-start" and h then
    h.phase, h.step, h.since, h.waiting = ev.phase, ev.step, sys.clock(), nil
    self:tick()
  elseif e == "step-end" and h then
    h.step, h.waiting = nil, "between steps"
    if ev.status == "failed" then
      self:print(string.format("%s %s %s ▸ %s: %s", ts, self:c("31", "✗"), ev.host, ev.step,
        tostring(ev.error):gsub("\n", "\n    ")))
    else
      self:tick()
    end
  elseif e == "host-end" and h then
    h.status, h.step = ev.status, nil
    self:tick()
  elseif e == "host-end" then
    local mark = mark_of(ev.status)
    self:print(string.format("%s %s %s: %s", ts, self:c(mark[2], mark[1]), ev.host, ev.status))
  elseif e == "host-rollback" then
    self:print(string.format("%s %s %s: rolling back%s", ts, self:c("33", "↶"), ev.host,
      ev.why and (" (" .. ev.why .. ")") or ""))
  elseif e == "error" and not ev.host then
    self:print(ts .. " " .. self:c("31", "error: ") .. tostring(ev.message))
  elseif e == "fleet-recap" then
    self:erase()
    self.order = {}
    local lines = { self:c("1", "recap:") }
    for _, r in ipairs(ev.hosts) do
      local mark = mark_of(r.status)
      lines[#lines + 1] = string.format("  %s %-16s %s%s", self:c(mark[2], mark[1]), r.host, r.status,
        r.error and self:c("2", "  (" .. r.error .. ")") or "")
    end
    self:print(table.concat(lines, "\n"))
  elseif e == "run-end" and ev.fleet then
    self:print(string.format("%s (fleet run %s, exit %d, %s)", self:c("1", ev.status), tostring(ev.run), ev.exit,
      ui_mod.seconds(ev.seconds or 0)))
  end
end

-- hrun show of a fleet run: the fleet, then each host's run.
function M.show(r, per, md)
  local out = {}
  local function add(fmt, ...)
    out[#out + 1] = string.format(fmt, ...)
  end
  if md then
    add("# Fleet run %d: %s\n", r.id, r.playbook)
    add("Status: **%s**. Started %s%s.\n", r.status, ui_mod.timestamp(r.started),
      r.ended and (", ended " .. ui_mod.timestamp(r.ended)) or "")
    add("| host | batch | status | its run | error |")
    add("|---|---|---|---|---|")
    for _, p in ipairs(per) do
      add("| %s | %s | %s | %s | %s |", p.row.host, tostring(p.row.batch or "–"), p.row.status,
        tostring(p.row.member_run or "–"), (p.row.error or ""):gsub("|", "\\|"))
    end
    for _, p in ipairs(per) do
      if p.run then
        add("\n## %s\n", p.row.host)
        add("%s", (ui_mod.markdown(p.run, true):gsub("^# [^\n]*\n", "")))
      end
    end
    return table.concat(out, "\n") .. "\n"
  end
  add("fleet run %d: %s (%s), %s", r.id, r.playbook, r.path, r.status)
  for _, p in ipairs(per) do
    add("  %-16s batch %s  %s%s%s", p.row.host, tostring(p.row.batch or "-"), p.row.status,
      p.row.member_run and ("  (its run " .. p.row.member_run .. " in " .. p.row.state .. ")") or "",
      p.row.error and ("\n      " .. p.row.error) or "")
  end
  for _, p in ipairs(per) do
    if p.run then
      add("\n[%s]", p.row.host)
      add("%s", ui_mod.show(p.run, true))
    end
  end
  return table.concat(out, "\n") .. "\n"
end

-- }======================================================

-- {======================================================
-- Pre-flight: every host's key known and the host reached, in parallel, before anything
-- ======================================================

-- {name = true | {kind, message}}: an ssh to each host (at most forks at once) that, as
-- ControlMaster=auto, leaves the master its member's run then uses.
function M.preflight(priv, state, members, forks)
  local results, queue, running, n = {}, {}, {}, 0
  for _, m in ipairs(members) do
    local where = remote.parse(m.url)
    if where and not where.is_local then
      queue[#queue + 1] = m
    else
      results[m.name] = true
    end
  end
  local i = 1
  while i <= #queue or n > 0 do
    while i <= #queue and n < forks do
      local m = queue[i]
      i = i + 1
      local h = remote.new({ name = m.name, url = m.url, priv = priv, state = state, agent_dir = m.agent_dir,
        sudo = m.sudo, controller = "fleet" })
      local log = h:errlog()
      assert(fs.write(log, "", { mode = "0600" }))
      local argv = h:target_argv(h:ssh_argv({ "-o", "ControlMaster=auto", "-o", "ControlPersist=60", "-T" }))
      argv[#argv + 1] = "true"
      local pid, ch = priv.spawnchannel(argv, log, "/dev/null")
      ch:close()
      running[pid], n = { m = m, log = log }, n + 1
    end
    for pid, r in pairs(running) do
      local how = priv.sandboxend(pid)
      if how then
        running[pid], n = nil, n - 1
        if how == "exited with code 0" then
          results[r.m.name] = true
        else
          local kind, words = remote.classify(fs.read(r.log) or "")
          results[r.m.name] = { kind = kind, message = words }
        end
      end
    end
    if n > 0 then
      sys.sleep(0.005)
    end
  end
  return results
end

-- }======================================================

-- {======================================================
-- The fleet run
-- ======================================================

local Fleet = {}
Fleet.__index = Fleet

function M.new(o)
  return setmetatable(o, Fleet)
end

-- An event of the fleet, on the UI and in the journal's events.
function Fleet:emit(ev)
  ev.time = ev.time or sys.now()
  self.ui:event(ev)
  if self.journal and self.run_id and not self.plan then
    self.journal:event(self.run_id, ev)
  end
  return ev
end

function Fleet:record(m, fields)
  for k, v in pairs(fields) do
    m[k] = v
  end
  if self.journal and not self.plan then
    self.journal:set_fleet_host(self.run_id, m.name, fields)
    self.journal:commit()
  end
end

-- Starts a member: `hrun PLAYBOOK --fleet-member SPEC` (or `hrun resume --fleet-member`
-- on its journal), its events on stdout, its gate answers on stdin.
function Fleet:spawn(m, resume)
  local argv = { self.priv.selfexe() }
  if resume then
    argv[#argv + 1], argv[#argv + 2] = "resume", tostring(m.member_run)
  else
    argv[#argv + 1] = self.path
    if self.plan then
      argv[#argv + 1] = "--plan"
    end
  end
  for _, a in ipairs({ "--json", "--state", m.state, "--fleet-member", m.state .. "/member.json" }) do
    argv[#argv + 1] = a
  end
  if not resume then
    argv[#argv + 1], argv[#argv + 2] = "--params", m.state .. "/params.json"
    for _, a in ipairs(self.pass or {}) do
      argv[#argv + 1] = a
    end
  end
  m.pid, m.ch = self.priv.spawnchannel(argv, m.state .. "/member.log")
  m.live = true
  self:record(m, { status = "running", started = m.started or sys.now() })
end

-- The member's next event (nil: it ended).
local function read_event(m)
  local line = m.ch:recv(1 << 24)
  if not line then
    return nil
  end
  local ok, ev = pcall(json.decode, line)
  if not ok or type(ev) ~= "table" then
    return { event = "log", message = line }
  end
  return ev
end

-- How a member's run ended, in the recap's words.
local function outcome_of(m)
  local e = m.run_end
  if m.unreachable then
    return "unreachable"
  elseif not e then
    return m.exit == 0 and "done" or "crashed"
  end
  return e.status == "failed" and "failed" or e.status
end

-- A host failed (a step, its pre-flight, its process): the failure policy. The others
-- of its batch go on ("continue"), or finish their current step and stop ("stop"), or
-- fail theirs and roll back, with every host done before ("rollback_all"). Once more
-- than max_fail percent of the hosts failed, no further batch starts.
function Fleet:failed(m, why)
  if m.failed then
    return
  end
  m.failed = why
  self.failures = self.failures + 1
  local fleet = self.pb.fleet
  if not self.stopping then
    local what = string.format("host '%s' failed (on_host_failure = \"%s\")", m.name, fleet.on_host_failure)
    if fleet.on_host_failure == "rollback_all" then
      self.stopping = { word = "fail", why = what, rollback_all = true }
    elseif fleet.on_host_failure == "stop" then
      self.stopping = { word = "stop", why = what }
    end
  end
  if not self.no_more_batches and self.failures * 100 > fleet.max_fail * #self.names then
    self.no_more_batches = string.format("%d of %d host%s failed: more than max_fail = %g%%", self.failures,
      #self.names, #self.names == 1 and "" or "s", fleet.max_fail)
  end
end

-- A member's event: recorded, shown with its host, and what it means for the fleet.
function Fleet:on_event(m, ev)
  if ev.event == "fleet-gate" then
    m.at, m.gate, m.running = ev.index, ev, nil
    return
  end
  ev.host = m.name
  if ev.event == "run-start" and ev.run then
    self:record(m, { member_run = ev.run })
  elseif ev.event == "step-end" or ev.event == "step-skip" then
    m.running = nil
    local once = self.once[m.gate and m.gate.index or -1]
    if once and once.host == m.name and m.gate.step == ev.step then
      once.status, once.error = ev.event == "step-skip" and "skipped" or ev.status, ev.error
    end
    if ev.event == "step-end" and ev.status == "failed" then
      self:failed(m, ev.error or "a step failed")
    end
  elseif ev.event == "run-end" then
    m.run_end = ev
    if ev.status ~= "done" and ev.status ~= "planned" then
      self:failed(m, ev.error or ev.status)
    end
  elseif ev.event == "step-start" then
    m.stepped = true
  elseif ev.event == "error" and tostring(ev.message):match("^pre%-flight: ") then
    -- its run could not reach its host (it connects itself, in the first batch)
    local why = tostring(ev.message):gsub("^pre%-flight: host '[^']*' %b(): ", "")
    m.unreachable = true
    if why:find("host key", 1, true) then
      m.key_problem = string.format("host '%s' (%s): %s", m.name, m.url, why)
    end
    self:emit({ event = "host-unreachable", host = m.name, error = why, time = ev.time })
    return
  end
  -- shown, not journaled here: the host's own journal has it
  self.ui:event(ev)
end

-- The first batch's hosts connect themselves while this process reaches the others; no
-- step runs anywhere before all have: then an unknown or changed host key anywhere
-- refuses the run, and hosts that cannot be reached beyond max_fail stop it.
function Fleet:release(batch)
  for _, m in ipairs(batch) do
    if m.live and not m.at then
      return false
    end
  end
  self.holding = false
  local keys = {}
  for _, k in ipairs(self.key_problems) do
    keys[#keys + 1] = k
  end
  for _, m in ipairs(batch) do
    keys[#keys + 1] = m.key_problem
  end
  if #keys > 0 then
    self.refused = string.format("pre-flight: %d host%s cannot be trusted yet, nothing was run: %s; " ..
      "`hrun hosts trust NAME --hosts FILE` checks and stores a key", #keys, #keys == 1 and "" or "s",
      table.concat(keys, "; "))
    self:emit({ event = "error", message = self.refused })
    self.stopping = { word = "stop", why = "refused at pre-flight" }
  elseif self.no_more_batches and not self.stopping then
    self.stopping = { word = "stop", why = self.no_more_batches }
  end
  return true
end

-- The members waiting at a gate get their answers when they may: the failure policy
-- first, then run_once, then the strategy and --forks.
function Fleet:schedule(batch)
  if self.holding and not self:release(batch) then
    return
  end
  local running, low = 0, math.huge
  for _, m in ipairs(batch) do
    if m.live then
      if m.running then
        running = running + 1
        low = math.min(low, m.running)
      elseif m.at then
        low = math.min(low, m.at)
      else
        low = 0 -- starting (connecting): a linear batch waits for it
      end
    end
  end
  for _, m in ipairs(batch) do
    if m.live and m.at then
      local gate = m.gate
      local once = gate.run_once and self.once[gate.index]
      if self.stopping then
        m:answer(self.stopping.word, self.stopping.why)
      elseif once and once.host ~= m.name then
        if once.status == "done" or once.status == "skipped" then
          m:answer("skip", string.format("run_once: %s on host '%s'", once.status == "done" and "ran" or "skipped",
            once.host))
        elseif once.status then
          m:answer("fail", string.format("run_once step '%s' failed on host '%s': %s", gate.step, once.host,
            tostring(once.error)))
        end
      elseif (self.strategy == "free" or m.at <= low) and running < self.forks then
        if gate.run_once and not once then
          self.once[gate.index] = { host = m.name }
        end
        running = running + 1
        m:answer("go")
      end
    end
  end
end

-- Runs one batch of members until each has ended.
function Fleet:start_batch(bi, batch, resume)
  local names = {}
  for _, m in ipairs(batch) do
    self:record(m, { batch = bi })
    names[#names + 1] = m.name
  end
  self:emit({ event = "batch-start", batch = bi, hosts = json.array(names) })
  for _, m in ipairs(batch) do
    self:spawn(m, resume and m.member_run ~= nil)
  end
end

-- Serves one batch's members (started) until each has ended.
function Fleet:run_batch(batch)
  while true do
    local chans, live = {}, {}
    for _, m in ipairs(batch) do
      if m.live then
        chans[#chans + 1], live[#live + 1] = m.ch, m
      end
    end
    if #chans == 0 then
      break
    end
    self:schedule(batch)
    local i, why = wire.select(chans)
    if not i then
      -- Ctrl-C or SIGTERM: each member has it too (the same process group) and ends its own way
      self.interrupted = why == "interrupted" or self.interrupted
      self.priv.clearinterrupt()
      self.stopping = self.stopping or { word = "stop", why = "interrupted" }
    else
      local m = live[i]
      local ev = read_event(m)
      if ev then
        self:on_event(m, ev)
      else
        m.ch:close()
        local how = self.priv.sandboxend(m.pid, false, true)
        m.live, m.exit = false, tonumber(how:match("code (%d+)")) or -1
        for _, once in pairs(self.once) do -- a run_once step its run never finished
          if once.host == m.name and not once.status then
            once.status, once.error = "failed", "its run there ended first"
          end
        end
        local outcome = outcome_of(m)
        if outcome ~= "done" and outcome ~= "planned" then
          self:failed(m, outcome)
        end
        if outcome == "stopped" and not m.stepped then -- stopped at its first step: nothing ran
          outcome = "not started"
        end
        self:record(m, { status = outcome, ended = sys.now(), error = m.run_end and m.run_end.error or
          (m.exit ~= 0 and how or nil) })
        self:emit({ event = "host-end", host = m.name, status = outcome, error = m.failed ~= outcome and m.failed or
          (m.run_end and m.run_end.error) or nil })
      end
    end
  end
end

-- `rollback_all`: the hosts of earlier batches that finished are rolled back too,
-- newest first (`hrun rollback` on each member's journal).
function Fleet:rollback_done(why)
  local done = {}
  for _, name in ipairs(self.names) do
    local m = self.members[name]
    if m.status == "done" then
      done[#done + 1] = m
    end
  end
  table.sort(done, function(a, b)
    return (a.ended or 0) > (b.ended or 0)
  end)
  for _, m in ipairs(done) do
    self:emit({ event = "host-rollback", host = m.name, why = why })
    local status = M.rollback_member(self.priv, m, self.pass_rollback)
    self:record(m, { status = status, ended = sys.now() })
    self:emit({ event = "host-end", host = m.name, status = status })
  end
end

-- `hrun rollback` of one member's run; its status after.
function M.rollback_member(priv, m, extra)
  local argv = { priv.selfexe(), "rollback", tostring(m.member_run), "--state", m.state, "--yes", "--json",
    "--fleet-member", m.state .. "/member.json" }
  for _, a in ipairs(extra or {}) do
    argv[#argv + 1] = a
  end
  local pid, ch = priv.spawnchannel(argv, m.state .. "/member.log")
  local status
  while true do
    local line = ch:recv(1 << 24)
    if not line then
      break
    end
    local ok, ev = pcall(json.decode, line)
    if ok and type(ev) == "table" and ev.event == "run-end" then
      status = ev.status
    end
  end
  ch:close()
  local how = priv.sandboxend(pid, false, true)
  return status or (how == "exited with code 0" and "rolled-back" or "rollback-incomplete")
end

-- The whole fleet run: pre-flight, batches, policies, recap. Returns the exit status.
-- resume: a fleet run continued (`hrun resume`): hosts done stay done, those stopped or
-- cut short resume their own runs, those not started start.
function Fleet:run(resume)
  local fleet = self.pb.fleet
  self.strategy, self.failures, self.once = self.plan and "free" or fleet.strategy, 0, {}
  local started = sys.now()
  local list = {}
  for _, name in ipairs(self.names) do
    list[#list + 1] = self.members[name]
  end
  local batches = M.batches(fleet.serial[1] and fleet.serial or nil, #list)
  self:emit({ event = "fleet-start", run = self.run_id, playbook = self.pb.name, hosts = json.array(self.names),
    batches = #batches, strategy = self.strategy, forks = self.forks, resumed = resume or nil, plan = self.plan })
  if self.ui.tick then -- the live view's spinner turns while the members are quiet
    self.priv.setticker(function()
      self.ui:tick()
    end)
  end
  -- the batches, each host that is to run in one: on a resume, those done stay done
  local todo = {}
  for bi, range in ipairs(batches) do
    local batch = {}
    for k = range[1], range[2] do
      local m = list[k]
      if not (resume and (m.status == "done" or m.status == "rolled-back" or m.status == "unreachable")) then
        batch[#batch + 1] = m
      end
    end
    if #batch > 0 then
      todo[#todo + 1] = { bi = bi, hosts = batch }
    end
  end
  -- the first batch starts now and connects; the other hosts are reached from here
  -- meanwhile (their keys checked, their master connections left for their runs)
  self.key_problems, self.holding = {}, true
  local later = {}
  for i = 2, #todo do
    for _, m in ipairs(todo[i].hosts) do
      later[#later + 1] = m
    end
  end
  if todo[1] then
    self:start_batch(todo[1].bi, todo[1].hosts, resume)
  end
  local reach = M.preflight(self.priv, self.state, later, self.forks)
  for _, m in ipairs(later) do
    local r = reach[m.name]
    if r ~= true and (r.kind == "key-unknown" or r.kind == "key-changed") then
      self.key_problems[#self.key_problems + 1] = string.format("host '%s' (%s): %s", m.name, m.url, r.message)
    elseif r ~= true then
      m.unreachable = true
      self:record(m, { status = "unreachable", error = r.message, ended = sys.now() })
      self:emit({ event = "host-unreachable", host = m.name, error = "cannot connect: " .. r.message })
      self:failed(m, r.message)
    end
  end
  for i, t in ipairs(todo) do
    local batch = {}
    for _, m in ipairs(t.hosts) do
      if i == 1 or not m.unreachable then -- the first batch's all started
        batch[#batch + 1] = m
      end
    end
    if i > 1 and (self.no_more_batches or self.stopping or self.refused) then
      for _, m in ipairs(batch) do
        if not m.member_run or m.status == "pending" then
          self:record(m, { status = "not started" })
        end
      end
    elseif #batch > 0 then
      if i > 1 then
        self:start_batch(t.bi, batch, resume)
      end
      self:run_batch(batch)
      if self.holding then -- its hosts all ended before their first step
        self:release(batch)
      end
    end
  end
  if self.stopping and self.stopping.rollback_all then
    self:rollback_done(self.stopping.why)
  end
  return self:finish(started)
end

-- The recap, one line a host; the fleet run's status and exit: 0 when every host is
-- done; 2 when a host's rollback is incomplete; else 1 (a host failed, was rolled back,
-- stopped, unreachable or not started); 130 interrupted.
function Fleet:finish(started)
  if self.ui.tick then
    self.priv.setticker(nil)
  end
  local worst, any_stopped = 0, false
  local rows = json.array()
  for _, name in ipairs(self.names) do
    local m = self.members[name]
    local status = m.status or "pending"
    if self.refused and status == "pending" then
      status = "not started"
      self:record(m, { status = status })
    end
    if self.plan then
      status = m.run_end and m.run_end.status or status
    end
    if status == "rollback-incomplete" then
      worst = 2
    elseif status ~= "done" and status ~= "planned" and worst == 0 then
      worst = 1
    end
    any_stopped = any_stopped or status == "stopped"
    rows[#rows + 1] = { host = name, status = status, run = m.member_run,
      error = m.failed ~= status and m.failed or nil }
  end
  if self.interrupted and worst < 2 then
    worst = 130
  end
  local status = self.plan and (worst == 0 and "planned" or "failed") or worst == 0 and "done" or
    worst == 2 and "rollback-incomplete" or any_stopped and "stopped" or "failed"
  if self.journal and not self.plan then
    self.journal:set_run(self.run_id, { status = status, outcome = status, ended = sys.now(),
      error = self.refused or self.no_more_batches or (self.stopping and self.stopping.why) or nil,
      interrupted = self.interrupted and 1 or 0 })
    self.journal:commit()
  end
  self:emit({ event = "fleet-recap", hosts = rows })
  self:emit({ event = "run-end", run = self.run_id, status = status, exit = worst, seconds = sys.now() - started,
    fleet = true, error = self.refused or self.no_more_batches })
  return worst
end

-- }======================================================

return M
