-- hrun.agent: `hrun agent`, the other end of a controller's channel on a host it reaches
-- over ssh (hrun.remote is the controller's end).
--
-- One JSON message a line each way on stdin and stdout, in the format of the sandbox's
-- boundary (hrun.wire: plain data; a secret crosses as {"$k": bytes}, the channel being
-- ssh's). Every request carries a sequence number and its answer the same one.
--
-- A write the controller journals is journaled here first, in this host's own journal
-- (DIR/agent.db): its inverse and the state of what it changes, before it acts, under the
-- controller's key (controller, run, effect). So a dead controller or a cut network
-- leaves this host knowing what may have happened, and a write sent again after a
-- reconnect is answered from the journal, never done twice. The temporaries a write
-- makes are named from the controller's run and effect, as they are on the controller,
-- so that its rollback finds what a crash left here.
local wire = require("hrun.wire")

local M = {}

M.PROTOCOL = 1
M.DEFAULT_DIR = "/var/lib/hrun/agent"

local SCHEMA = [[
  CREATE TABLE IF NOT EXISTS effects (
    id INTEGER PRIMARY KEY,
    controller TEXT NOT NULL,        -- the controller's journal
    run INTEGER NOT NULL,            -- its run
    effect INTEGER NOT NULL,         -- its effect's id there
    op TEXT NOT NULL,
    args TEXT,                       -- a summary, secrets masked
    inverse TEXT,                    -- wire-encoded operations
    no_inverse TEXT,
    before TEXT,                     -- wire-encoded states
    after TEXT,
    status TEXT NOT NULL,            -- intent, done, failed, partial; dropped: a tombstone
    reply TEXT,                      -- the answer sent (wire-encoded), to send again
    error TEXT,
    started REAL NOT NULL,
    ended REAL,
    request TEXT,                    -- a detached write: the request its unit runs
    unit TEXT,                       -- … and the transient systemd unit it runs in
    UNIQUE (controller, run, effect)
  );
  CREATE TABLE IF NOT EXISTS children (  -- the process groups a write started, until it returned
    effect INTEGER NOT NULL,         -- effects.id
    pgid INTEGER, start INTEGER, boot TEXT, argv0 TEXT
  );
  CREATE TABLE IF NOT EXISTS undos (   -- the operations of inverses run here, with their answer
    controller TEXT NOT NULL,
    run INTEGER NOT NULL,
    effect INTEGER NOT NULL,
    op INTEGER NOT NULL,
    reply TEXT NOT NULL,
    ended REAL NOT NULL,
    PRIMARY KEY (controller, run, effect, op)
  );
]]

-- The primitive `name` ("fs.write", "fs._restore"), or nil.
local function primitive(name)
  local mod, fn = tostring(name):match("^([%w_]+)%.([%w_]+)$")
  local m = mod and package.loaded["hrun." .. mod]
  local f = type(m) == "table" and rawget(m, fn)
  return type(f) == "function" and f or nil
end

local Agent = {}
Agent.__index = Agent

local function now()
  return require("hrun.sys").now()
end

function M.new(priv, dir)
  local self = setmetatable({ priv = priv, dir = dir }, Agent)
  local secrets = require("hrun.secrets")
  self.special = function(v)
    if type(v) == "userdata" and secrets.is(v) then
      return "k", priv.secretbytes(v)
    elseif type(v) == "userdata" and v == require("hrun.json").null then
      return "u", 0
    end
    local mt = type(v) == "table" and debug.getmetatable(v)
    if type(mt) == "table" and rawget(mt, "__name") == "array" then
      return "a", table.move(v, 1, #v, 1, {})
    end
    return nil
  end
  self.tags = {
    k = function(bytes)
      if type(bytes) ~= "string" then
        error("wire: a secret that is not one", 0)
      end
      return secrets._wrap(bytes)
    end,
    u = function()
      return require("hrun.json").null
    end,
    a = function(list)
      return require("hrun.json").array(type(list) == "table" and list or {})
    end,
  }
  return self
end

function Agent:encode(msg)
  return wire.encode(msg, self.special, false)
end

-- What the journal keeps: every secret this agent knows masked in it — inside strings
-- before they are escaped, and a secret itself (its bytes are never kept here).
function Agent:journaled(v)
  return wire.encode(v, self.special, true)
end

function Agent:open_journal()
  local fs = require("hrun.fs")
  if not fs.exists(self.dir) then
    assert(fs.mkdir(self.dir, { parents = true, mode = "0700" }))
  end
  local db, err = self.priv.db_open(self.dir .. "/agent.db")
  if not db then
    error(string.format("agent: cannot open its journal in %s: %s", self.dir, tostring(err)), 0)
  end
  db:exec(SCHEMA)
  self.db = db
  -- hash.tree here keeps its manifests in this host's own hrun journal (DIR/journal)
  local manifests
  self.priv.setjournal(function()
    if not manifests then
      manifests = assert(self.priv.trusted(require("hrun.journal").open, self.priv, self.dir .. "/journal"))
    end
    return manifests.db
  end)
end

-- The lock a write holds while it runs (an flock: the kernel drops it when its agent
-- dies), waited for.
function Agent:busy()
  local sys = require("hrun.sys")
  while true do
    local lk, holder, code = self.priv.lock(self.dir .. "/busy.lock")
    if lk then
      lk:note(string.format("agent pid %d", self.priv.pid()))
      return lk
    elseif code ~= "ELOCKED" then
      error(string.format("agent: cannot lock %s/busy.lock: %s", self.dir, tostring(holder)), 0)
    end
    sys.sleep(0.05)
  end
end

-- Each write is its own transaction, durable (synchronous=FULL) before the write acts.
function Agent:durable(sql, ...)
  self.db:exec("BEGIN IMMEDIATE")
  local ok, a, b = pcall(self.db.run, self.db, sql, ...)
  if not ok then
    self.db:exec("ROLLBACK")
    error(a, 0)
  end
  self.db:exec("COMMIT")
  return a, b
end

function Agent:mask(s)
  if type(s) == "string" and self.priv.secrets() > 0 then
    return self.priv.mask(s)
  end
  return s
end

function Agent:record(key)
  local rows = self.db:query("SELECT * FROM effects WHERE controller = ? AND run = ? AND effect = ?",
    key.controller, key.run, key.effect)
  return rows[1]
end

-- A journaled effect as the controller keeps it: its inverse and states decoded.
function Agent:described(row)
  local function dec(s)
    return s and wire.decode(s, self.tags) or nil
  end
  return { remote = row.id, op = row.op, status = row.status, inverse = dec(row.inverse),
    no_inverse = row.no_inverse, before = dec(row.before), after = dec(row.after), error = row.error,
    started = row.started }
end

-- Runs the primitive `name` with args: ok, values (packed) | false, message, code.
local function call(name, args, n)
  local fn = primitive(name)
  if not fn then
    return false, string.format("no function '%s' on this host%s", tostring(name),
      (tostring(name):match("^(git|http|service|podman)%.")) and " (the portable build of hrun has no " ..
      tostring(name):match("^(%w+)") .. " module)" or ""), "unknown"
  end
  local res = table.pack(pcall(fn, table.unpack(args, 1, n)))
  if not res[1] then
    return false, tostring(res[2]), "failed"
  end
  return true, table.pack(table.unpack(res, 2, res.n))
end

local function states_of(priv, name, args, n)
  local ok, states = pcall(priv.state, name, table.unpack(args, 1, n))
  if ok and type(states) == "table" then
    return priv.restate(states)
  end
  return nil
end

-- The error a sandboxed playbook's call gets here when its capabilities on this host do
-- not allow it, or nil: checked before anything of the call runs (whether it is already
-- so, its inverse, its preview read what the call would touch). undo: the call is an
-- inverse's operation, checked again where it lands now (a link the playbook put in its
-- path since must not lead it out of its scope); the run's stash is hrun's.
function Agent:refused(name, args, n, undo)
  local ok, err = pcall(undo and self.priv.checkundo or self.priv.check, name, table.unpack(args, 1, n))
  if not ok then
    return { t = "error", code = "failed", message = tostring(err) }
  end
end

-- A journaled write: already so (nothing journaled), or its intent, the act, its end.
function Agent:write(m, args, n)
  local priv, key = self.priv, m.key
  if type(key) ~= "table" or type(key.controller) ~= "string" or not key.controller:match("^[%w-]+$")
      or math.type(key.run) ~= "integer" or math.type(key.effect) ~= "integer" then
    return { t = "error", code = "failed", message = "agent: a write without its key" }
  end
  local refused = self:refused(m.name, args, n)
  if refused then
    return refused
  end
  -- one write at a time on this host: an agent whose channel was cut may still be
  -- finishing the write sent again here; its answer is waited for, not done twice
  local busy = self:busy()
  local row = self:record(key)
  if row and row.status == "dropped" then -- late: its controller found no record and gave it up
    busy:release()
    return { t = "error", code = "failed", message = string.format("%s: not done — its controller gave it up " ..
      "(it asked this host, which had no record of it yet)", m.name) }
  elseif row and row.op ~= m.name then
    busy:release()
    return { t = "error", code = "failed", message = string.format("agent: effect %d of run %d was %s here, not %s",
      key.effect, key.run, row.op, tostring(m.name)) }
  elseif row then -- sent again after a reconnect: what happened, never twice
    if not row.reply and not row.unit then
      self:orphans(row)
    end
    busy:release()
    if not row.reply and row.unit then -- a detached write: reattached to its unit
      row = self:await_detached(row)
    end
    if row.reply then
      local reply = wire.decode(row.reply, self.tags)
      reply.replayed = true
      return reply
    end
    local d = self:described(row)
    return { t = "error", code = "interrupted", effect = d,
      message = string.format("%s was interrupted on this host (its agent ended while it ran)", row.op) }
  end
  if not m.force then
    local ok, value = pcall(priv.unchanged, m.name, table.unpack(args, 1, n))
    if ok and value ~= nil then
      busy:release()
      return { t = "result", unchanged = true, values = { value }, n = 1 }
    end
  end
  local inverse, why = priv.inverse(m.name, table.unpack(args, 1, n))
  local before = states_of(priv, m.name, args, n)
  local started = now()
  local _, id = self:durable([[INSERT INTO effects (controller, run, effect, op, args, inverse, no_inverse,
      before, status, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'intent', ?)]], key.controller, key.run,
    key.effect, m.name, self:mask(m.summary), inverse and self:journaled(inverse) or nil, self:mask(why),
    before and self:journaled(before) or nil, started)
  if m.detach then
    busy:release()
    return self:detach(id, m)
  end
  local reply = self:act(id, key, m.name, args, n, m.partial, inverse, why, before, started)
  busy:release()
  return reply
end

-- The write of effect id, journaled as intent: runs it, journals its end; the answer.
function Agent:act(id, key, name, args, n, partial, inverse, why, before, started)
  local priv = self.priv
  priv.seteffect(key.run, key.effect)
  -- each child is journaled before it may run: an agent killed in the write leaves them
  -- running, and the next one stops them (Agent:orphans) before it answers for the write
  priv.setspawnsink(function(info)
    self:durable("INSERT INTO children (effect, pgid, start, boot, argv0) VALUES (?, ?, ?, ?, ?)", id, info.pgid,
      info.start, info.boot, info.argv0)
  end)
  local ok, res, code = call(name, args, n)
  priv.setspawnsink(nil)
  priv.seteffect(nil)
  local reply, status, err
  if ok and res.n > 0 and res[1] ~= nil and res[1] ~= false then
    status = "done"
    reply = { t = "result", values = res, n = res.n }
    reply.values.n = nil
  else
    status = partial and "partial" or "failed"
    err = ok and tostring(res[2] or "returned nothing") or res
    if ok then
      reply = { t = "result", values = res, n = res.n }
      reply.values.n = nil
    else
      reply = { t = "error", code = code, message = err }
    end
  end
  local after = status ~= "failed" and before and priv.restate(before) or nil
  reply.effect = { remote = id, status = status, inverse = inverse, no_inverse = why, before = before,
    after = after, error = err, started = started }
  self:durable("UPDATE effects SET status = ?, after = ?, reply = ?, error = ?, ended = ? WHERE id = ?",
    status, after and self:journaled(after) or nil, self:journaled(reply), self:mask(err), now(), id)
  self:durable("DELETE FROM children WHERE effect = ?", id) -- they ended with the call
  return reply
end

-- A copy whose data is on another machine (fs.sync, btrfs.receive with `from`): its
-- sending side answers on m.via, a socket in this agent's directory that the
-- controller's ssh master forwards to its relay ("self": the data is on this host).
function Agent:write_via(m, args, n)
  local via = m.via
  local dir = self.dir:gsub("/+$", "")
  if via ~= "self" and not (type(via) == "string" and via:sub(1, #dir + 1) == dir .. "/"
      and via:sub(#dir + 2):match("^relay%-[%w%-]+%.sock$")) then
    return { t = "error", code = "failed", message = "agent: a relay socket that is not in its directory" }
  end
  self.priv.settransport(function()
    if via ~= "self" then
      return via
    end
  end)
  local ok, reply = pcall(self.write, self, m, args, n)
  self.priv.settransport(nil)
  if via ~= "self" then
    os.remove(via)
  end
  if not ok then
    error(reply, 0)
  end
  return reply
end

-- Under the busy lock, a write of row that never answered (its agent died in it): the
-- children it left running are stopped first, as a crashed run's are here — they must
-- not race its undo.
function Agent:orphans(row)
  if row.error then -- answered for already
    return
  end
  local groups = self.db:query("SELECT pgid, start, boot FROM children WHERE effect = ?", row.id)
  local stopped = {}
  for _, c in ipairs(#groups > 0 and self.priv.reap(groups) or {}) do
    stopped[#stopped + 1] = string.format("%s (process group %d, %d process%s, %s)", tostring(c.argv0), c.pgid,
      c.processes, c.processes == 1 and "" or "es", c.signal)
  end
  self:durable("DELETE FROM children WHERE effect = ?", row.id)
  -- what it did is not known, as when hrun dies here: a child may have run to its end,
  -- been cut short, or died at its gate having run nothing
  local how = #stopped > 0 and "stopped " .. table.concat(stopped, ", ")
    or #groups > 0 and "none of its children was still running"
    or "it had started no child"
  row.error = "its agent ended while it ran; " .. how
  self:durable("UPDATE effects SET error = ? WHERE id = ?", row.error, row.id)
end

-- {======================================================
-- Detached writes: a step that cuts the connection (a generation switched, networking
-- restarted) runs in a transient systemd unit of its own, as nixos-rebuild
-- --target-host does; the agent waits for its answer in the journal, and an agent
-- started after a reconnect finds it there (or waits for the unit still running)
-- ======================================================

function Agent:detach(id, m)
  if m.secrets then
    return { t = "error", code = "failed", message = "a detached write cannot carry a secret (it is kept on disk " ..
      "for its unit)" }
  end
  local exec = require("hrun.exec")
  local unit = string.format("hrun-%s-%d-%d", m.key.controller:sub(1, 12), m.key.run, m.key.effect)
  m.caps, m.caps_host = self.caps, self.caps_host -- the unit's process checks as this one does
  self:durable("UPDATE effects SET request = ?, unit = ? WHERE id = ?", self:encode(m), unit, id)
  local r = self.priv.trusted(exec.run, { "systemd-run", "--unit=" .. unit, "--collect", "--quiet", "--",
    self.priv.selfexe(), "agent", "--dir", self.dir, "--detached", tostring(id) }, { check = false })
  if not r.ok then
    self:durable("UPDATE effects SET status = 'failed', error = ?, ended = ? WHERE id = ?",
      "systemd-run: " .. tostring(r.stderr), now(), id)
    return { t = "error", code = "failed", message = string.format("%s: cannot run it detached (systemd-run: %s)",
      m.name, (r.stderr or ""):gsub("%s+$", "")) }
  end
  local row = self:await_detached(self.db:query("SELECT * FROM effects WHERE id = ?", id)[1])
  if row.reply then
    return wire.decode(row.reply, self.tags)
  end
  return { t = "error", code = "interrupted", effect = self:described(row),
    message = string.format("%s was interrupted on this host (its unit %s ended without an answer)", row.op, unit) }
end

-- Waits until the detached write of row has answered, or its unit is gone; the row then.
function Agent:await_detached(row)
  local sys = require("hrun.sys")
  local exec = require("hrun.exec")
  local checked = 0
  while true do
    local cur = self.db:query("SELECT * FROM effects WHERE id = ?", row.id)[1]
    if cur.reply then
      return cur
    end
    if sys.clock() - checked > 1 then
      checked = sys.clock()
      local r = self.priv.trusted(exec.run, { "systemctl", "is-active", "--quiet", row.unit },
        { check = false, readonly = true })
      if not r.ok then -- gone: one last look (it may have answered just before it ended)
        return self.db:query("SELECT * FROM effects WHERE id = ?", row.id)[1]
      end
    end
    sys.sleep(0.1)
  end
end

-- hrun agent --detached ID: the unit's process, running the write journaled as ID.
function Agent:run_detached(id)
  local row = self.db:query("SELECT * FROM effects WHERE id = ?", id)[1]
  if not row or not row.request or row.reply then
    return 1
  end
  local busy = self:busy()
  local m = wire.decode(row.request, self.tags)
  local args = type(m.args) == "table" and m.args or {}
  local n = math.type(m.n) == "integer" and m.n or #args
  local d = self:described(row)
  self:stash(m.key.controller, m.key.run)
  if type(m.caps) == "table" and type(m.caps_host) == "string" then
    self.priv.sandbox(m.caps, true, false, m.caps_host)
    self.priv.setown({ self.dir })
  end
  self:act(row.id, m.key, m.name, args, n, m.partial, d.inverse, d.no_inverse, d.before, d.started)
  busy:release()
  return 0
end

-- }======================================================

-- An inverse's operation (m.once: its key): run once, its answer journaled with it; sent
-- again (the controller died before it journaled the answer), answered from here.
function Agent:once(m, args, n)
  local k = m.once
  if type(k.controller) ~= "string" or math.type(k.run) ~= "integer" or math.type(k.effect) ~= "integer"
      or math.type(k.op) ~= "integer" then
    return { t = "error", code = "failed", message = "agent: an undo operation without its key" }
  end
  local busy = self:busy()
  local row = self.db:query("SELECT reply FROM undos WHERE controller = ? AND run = ? AND effect = ? AND op = ?",
    k.controller, k.run, k.effect, k.op)[1]
  if row then
    busy:release()
    local reply = wire.decode(row.reply, self.tags)
    reply.replayed = true
    return reply
  end
  local refused = self:refused(m.name, args, n, true)
  if refused then
    busy:release()
    return refused
  end
  local ok, res, code = self.priv.trusted(call, m.name, args, n)
  local done = ok and res.n > 0 and res[1] ~= nil and res[1] ~= false
  local reply
  if ok then
    reply = { t = "result", values = res, n = res.n }
    reply.values.n = nil
  else
    reply = { t = "error", code = code, message = res }
  end
  if done then -- a failure may be tried again
    self:durable("INSERT INTO undos (controller, run, effect, op, reply, ended) VALUES (?, ?, ?, ?, ?, ?)",
      k.controller, k.run, k.effect, k.op, self:journaled(reply), now())
  end
  busy:release()
  return reply
end

-- What this host's journal says of the controller's effect `key`, whose answer it never
-- had. Asked under the busy lock: a write of it still running here (its agent's channel
-- was cut) is waited for. With no record, a tombstone goes in its place: the request
-- arriving late (an agent that read it just before the cut) is not done after the
-- controller was told it never was. peek: only asked (is this the host of the effect?).
function Agent:effect(key, op, peek)
  if type(key) ~= "table" or type(key.controller) ~= "string" or math.type(key.run) ~= "integer"
      or math.type(key.effect) ~= "integer" then
    return { t = "error", code = "failed", message = "agent: an effect without its key" }
  end
  local busy = self:busy()
  local row = self:record(key)
  if not row and not peek then
    self:durable([[INSERT INTO effects (controller, run, effect, op, status, error, started, ended)
        VALUES (?, ?, ?, ?, 'dropped', 'no record when its controller asked', ?, ?)]], key.controller, key.run,
      key.effect, type(op) == "string" and op or "?", now(), now())
  elseif row and not row.reply and not row.unit then
    self:orphans(row)
  end
  busy:release()
  if not row or row.status == "dropped" then
    return { t = "result", values = {}, n = 1 }
  end
  if not row.reply and row.unit then -- a detached write: what its unit did, once it is done
    row = self:await_detached(row)
  end
  return { t = "result", values = { self:described(row) }, n = 1 }
end

-- What a write would do, for a plan: already so, its inverse, its preview, its states.
function Agent:plan(m, args, n)
  local priv = self.priv
  local refused = self:refused(m.name, args, n)
  if refused then
    return refused
  end
  local out = { t = "result" }
  local ok, value = pcall(priv.unchanged, m.name, table.unpack(args, 1, n))
  if ok and value ~= nil then
    out.unchanged, out.values, out.n = true, { value }, 1
    return out
  end
  out.inverse, out.no_inverse = priv.inverse(m.name, table.unpack(args, 1, n))
  local sok, states = pcall(priv.state, m.name, table.unpack(args, 1, n))
  out.states = sok and states or nil
  local pok, preview = pcall(priv.preview, m.name, table.unpack(args, 1, n))
  out.preview = pok and preview or { error = tostring(preview) }
  return out
end

-- Where the controller's run's inverses save what its writes destroy, here.
function Agent:stash(controller, run)
  local dir = string.format("%s/runs/%s-%d/stash", self.dir, controller, run)
  local fs = require("hrun.fs")
  self.priv.trusted(function()
    if not fs.exists(dir) then
      assert(fs.mkdir(dir, { parents = true, mode = "0700" }))
    end
  end)
  self.priv.setstash(dir, run)
  return dir
end

-- The engine's own functions the controller calls here: undo's fingerprints and the
-- temporaries a crash left.
local PRIV = { restate = true, leftovers = true, state = true }

function Agent:handle(m)
  local args = type(m.args) == "table" and m.args or {}
  local n = math.type(m.n) == "integer" and m.n or #args
  if m.t == "call" and type(m.once) == "table" then
    return self:once(m, args, n)
  elseif m.t == "call" then
    local ok, res, code
    if m.trusted then -- hrun's own read (a plan's diff)
      ok, res, code = self.priv.trusted(call, m.name, args, n)
    else
      ok, res, code = call(m.name, args, n)
    end
    if not ok then
      return { t = "error", code = code, message = res }
    end
    local reply = { t = "result", values = res, n = res.n }
    reply.values.n = nil
    return reply
  elseif m.t == "write" and m.via ~= nil then
    return self:write_via(m, args, n)
  elseif m.t == "write" then
    return self:write(m, args, n)
  elseif m.t == "plan" then
    return self:plan(m, args, n)
  elseif m.t == "priv" and PRIV[m.fn] then
    local res = table.pack(pcall(self.priv[m.fn], table.unpack(args, 1, n)))
    if not res[1] then
      return { t = "error", code = "failed", message = tostring(res[2]) }
    end
    return { t = "result", values = { table.unpack(res, 2, res.n) }, n = res.n - 1 }
  elseif m.t == "sandbox" then -- a sandboxed playbook's capabilities on this host
    if type(m.caps) ~= "table" then
      return { t = "error", code = "failed", message = "agent: a sandbox without its capabilities" }
    end
    if type(m.host) ~= "string" then
      return { t = "error", code = "failed", message = "agent: a sandbox without its host's name" }
    end
    self.priv.sandbox(m.caps, true, false, m.host)
    self.priv.setown({ self.dir }) -- its journal, stashes and program: no capability covers them
    self.caps, self.caps_host = m.caps, m.host
    return { t = "result", values = {}, n = 0 }
  elseif m.t == "effect" then -- what this host's journal says of the controller's effect
    return self:effect(m.key, m.op, m.peek)
  elseif m.t == "stash" then -- where a run's inverses save what its writes destroy
    if math.type(m.run) ~= "integer" or type(m.controller) ~= "string" or not m.controller:match("^[%w-]+$") then
      return { t = "error", code = "failed", message = "agent: a stash without its run" }
    end
    return { t = "result", values = { self:stash(m.controller, m.run) }, n = 1 }
  end
  return { t = "error", code = "unknown", message = "agent: a message it does not know: " .. tostring(m.t) }
end

-- Serves the channel until the controller closes it.
function Agent:serve(ch)
  local priv = self.priv
  local sys = require("hrun.sys")
  -- a write's output lines go to the controller as they come, tagged with its request
  local current
  priv.setstreamsink(function(line, stream)
    if current then
      ch:send(self:encode({ t = "output", seq = current, line = line, stream = stream }))
    end
  end)
  -- its parent: under sudo, the sudo the controller signals (a user may not signal root's)
  local stat = io.open("/proc/self/stat", "r")
  local ppid = stat and tonumber((stat:read("a") or ""):match("%)%s+%S+%s+(%d+)"))
  if stat then
    stat:close()
  end
  ch:send(self:encode({ t = "ready", protocol = M.PROTOCOL, version = priv.version, pid = priv.pid(), ppid = ppid,
    uid = sys.is_root() and 0 or nil, host = sys.hostname(), dir = self.dir, portable = priv.portable or nil }))
  while true do
    local line, why = ch:recv(1 << 30)
    if not line then
      return why == "eof" and 0 or 1
    end
    local ok, m = pcall(wire.decode, line, self.tags)
    local reply
    if not ok or type(m) ~= "table" then
      reply = { t = "error", code = "failed", message = "agent: not a message: " .. tostring(m) }
    elseif m.t == "bye" then
      return 0
    else
      current = m.seq
      local hok, r = pcall(self.handle, self, m)
      current = nil
      -- the controller interrupted that request (kill -INT): it is answered, the next is not
      if priv.interrupted() > 0 then
        priv.clearinterrupt()
      end
      reply = hok and r or { t = "error", code = "failed", message = tostring(r) }
      reply.seq = m.seq
    end
    local eok, text = pcall(self.encode, self, reply)
    if not eok then
      text = self:encode({ t = "error", seq = reply.seq, code = "failed", message = tostring(text) })
    end
    if not ch:send(text) then -- the controller is gone; its write is journaled with its answer
      return 0
    end
  end
end

-- hrun agent [--dir DIR]
function M.main(priv, opts)
  local dir = opts.agent_dir or M.DEFAULT_DIR
  local agent = M.new(priv, dir)
  agent:open_journal()
  if opts.detached then
    return agent:run_detached(math.tointeger(tonumber(opts.detached)))
  end
  local ch = wire.channel(0, 1)
  return agent:serve(ch)
end

return M
