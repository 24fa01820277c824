-- hrun.runner: runs a validated playbook. Steps are transactions, the playbook a saga:
-- every write a step makes goes through the registry's hooks, which commit its intent
-- and its inverse to the journal before it acts (or, in plan mode, record it and
-- stand in for it). A failed step is undone through its effects' inverses, then the
-- completed steps newest first, each by its own undo or by its inverses.

local codec = require "hrun.codec"
local json = require "hrun.json"
local remote = require "hrun.remote"
local secrets_mod = require "hrun.secrets"
local sys = require "hrun.sys"

local M = {}
local Runner = {}
Runner.__index = Runner

M.EXIT = { done = 0, ["rolled-back"] = 1, stopped = 1, ["rollback-incomplete"] = 2, interrupted = 130 }

-- What a planned write returns instead of running: what it would return.
local placeholders = {
  ["exec.run"] = function()
    return { ok = true, code = 0, stdout = "", stderr = "", seconds = 0, timed_out = false, planned = true }
  end,
  ["fs.copy"] = function(_, dst)
    return dst
  end,
  ["fs.rename"] = function(_, dst)
    return dst
  end,
  ["sqlite.backup"] = function(_, dst)
    return { file = dst, bytes = 0, pages = 0, seconds = 0, planned = true }
  end,
}
placeholders["exec.sh"] = placeholders["exec.run"]
placeholders["btrfs.snapshot"] = placeholders["fs.copy"]
placeholders["btrfs.restore"] = function(_, target)
  return target .. ".hrun-(aside)"
end
placeholders["btrfs.prune"] = function()
  return { kept = {}, deleted = {}, protected = {}, planned = true }
end
placeholders["nixos.rebuild"] = function(action)
  return { ok = true, action = action, stdout = "", stderr = "", seconds = 0, planned = true }
end
placeholders["nixos.rollback"] = function(opts)
  return { generation = opts and opts.to, planned = true }
end
placeholders["nixos.flake_update"] = function()
  return true
end
placeholders["git.commit"] = function()
  return "(planned commit)"
end
placeholders["git.tag"] = placeholders["git.commit"]
placeholders["git.clone"] = function(_, dir)
  return { path = dir, planned = true }
end
placeholders["git.init"] = function(dir)
  return { path = dir, planned = true }
end
placeholders["http.request"] = function(url)
  return { status = 200, headers = {}, body = "", url = url, seconds = 0, planned = true }
end
placeholders["http.post"] = placeholders["http.request"]
for _, verb in ipairs({ "start", "restart", "reload", "stop" }) do
  placeholders["service." .. verb] = function(unit)
    return { unit = unit, load = "loaded", active = verb == "stop" and "inactive" or "active", planned = true }
  end
end
for _, verb in ipairs({ "start", "restart", "stop" }) do
  placeholders["podman." .. verb] = function(name)
    return { name = name, running = verb ~= "stop", status = verb == "stop" and "exited" or "running",
      planned = true }
  end
end
placeholders["btrfs.scrub"] = function()
  return { ok = true, corrected = 0, uncorrectable = 0, unverified = 0, errors = {}, planned = true }
end

-- Copies whose data may be on another machine (`from`): the call runs where the data
-- goes; its sending side where the data is (Runner:request_copying, copy_sender).
local COPIES = { ["fs.sync"] = true, ["btrfs.receive"] = true }

-- Why a step may not call a write that destroys what it cannot give back.
local function refusal(call, step)
  return string.format("%s cannot be undone: step '%s' needs its own undo, or irreversible = true", call.name,
    step.name)
end

-- What the preview of a planned write says it would return: a prune's lists, the name a
-- restore sets the target aside as (false: no target); nil, why, code where the call
-- would fail.
local from_preview = {
  ["btrfs.prune"] = function(p)
    return { kept = p.kept, deleted = p.deleted, protected = p.protected, planned = true }
  end,
  ["btrfs.restore"] = function(p)
    return p.aside
  end,
}

local function placeholder(name, preview, ...)
  if type(preview) == "table" and from_preview[name] then
    if preview.error then
      return nil, preview.error, preview.code
    end
    return from_preview[name](preview)
  end
  local f = placeholders[name]
  if f then
    return f(...)
  end
  local first = ...
  return first == nil and true or first
end

-- The arguments of a call as a list JSON can hold (nil holes as null).
local function arglist(args)
  local out = json.array()
  for i = 1, args.n do
    local v = args[i]
    if v == nil then
      v = json.null
    end
    out[i] = v
  end
  return out
end

-- A call's arguments as plain data (dsl.plain: tables without metatables, functions and
-- userdata left out), for the engine's own work outside the sandbox: no playbook code
-- can run from them.
local function plain_args(...)
  local plain = require("hrun.dsl").plain
  local args = table.pack(...)
  for i = 1, args.n do
    args[i] = plain(args[i], true)
  end
  return table.unpack(args, 1, args.n)
end

-- The state of what a write changes (priv.state), or nil when it has none or it cannot
-- be read: the engine's own work, it never fails the write.
local function state_of(priv, name, ...)
  local ok, states = pcall(priv.state, name, ...)
  return ok and states or nil
end

-- The same states as they are now.
local function restate(priv, states)
  local ok, now = pcall(priv.restate, states)
  return ok and now or nil
end

-- What a write returns when it would change nothing (priv.unchanged), or nil: when it
-- would change something, cannot tell, or its arguments are wrong (the call itself then
-- says what is wrong). The engine's own work: it never fails the write.
local function unchanged_of(priv, name, ...)
  local ok, v = pcall(priv.unchanged, name, ...)
  if ok and v ~= nil and v ~= false then
    return v
  end
end

-- exec.run/exec.sh with changed = false: journaled, but its step counts it ok.
local function counts_as_change(name, args)
  if name ~= "exec.run" and name ~= "exec.sh" then
    return true
  end
  local opts = args[2]
  return not (type(opts) == "table" and rawget(opts, "changed") == false)
end

-- A read-only view of t (and of the tables in it).

-- o: priv, ui, pb (validated), params, journal (nil for plans), opts {plan, yes, from,
-- only, verbose}, path, hash
function M.new(o)
  local r = setmetatable(o, Runner)
  r.shared = r.shared or {}
  r.effect_stack = {}
  r.call_children = {} -- the children the current primitive call started (journal ids)
  r.step_effects = {} -- the current step's effects with a state: {id, before}
  r.crash_counts = {}
  r.planned = 0
  r.planned_targets = {} -- plans: the targets of the writes planned so far
  r.recap = M.recap() -- the run's counts, and each phase's (r.phase_recap)
  r.irreversible_planned = 0
  r.flake_edits = {} -- plans: flake file → the text the planned edits leave
  r.flake_updates = {} -- plans: flake dir → the inputs planned to update ({all = true}: all)
  r.ro_params = require("hrun.dsl").readonly(r.params or {})
  if r.host_urls and r.state then
    r:open_hosts(r.host_urls)
  end
  return r
end

-- {======================================================
-- Plans see their own flake edits: a planned flake_set_input keeps the text it would
-- write, a planned flake_update the inputs it would update, and the closure diff of a
-- planned rebuild is built from a scratch copy of the flake with those applied — so the
-- plan of an upgrade shows what the upgrade changes, not what is running now.
-- ======================================================

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function clean(path)
  return (path:gsub("/%./", "/"):gsub("/+$", ""))
end

-- The planned result of flake_set_input (the URL it replaces: an input that is missing
-- fails the step here, as it would in the run) or flake_update (true).
function Runner:plan_flake_edit(name, target, a, b)
  if name == "nixos.flake_update" then
    local dir = clean(target)
    local inputs = type(a) == "table" and a.inputs
    local pending = self.flake_updates[dir] or {}
    if not inputs then
      pending.all = true
    else
      for _, i in ipairs(inputs) do
        pending[#pending + 1] = i
      end
    end
    self.flake_updates[dir] = pending
    return true
  end
  local file = clean(target)
  local text = self.flake_edits[file]
  if not text then
    local err
    text, err = require("hrun.fs").read(file)
    if not text then
      error("nixos.flake_set_input: " .. err, 0)
    end
  end
  local new, old = require("hrun.nixos")._set_input_text(text, a, b, file)
  if not new then
    self.plan_certain = true -- the file as the plan leaves it: the run fails the same
    error(old, 0)
  end
  self.flake_edits[file] = new
  return old
end

-- The diff a flake_set_input makes to the text the earlier planned edits leave (nil when
-- the edit cannot be made: plan_flake_edit says why).
function Runner:plan_flake_preview(target, input, url)
  local file = clean(target)
  local new = require("hrun.nixos")._set_input_text(self.flake_edits[file], input, url, file)
  return new and require("hrun.fs")._diff(self.flake_edits[file], new, target) or nil
end

-- The preview of a planned nixos.rebuild, from the flake as the planned edits leave it.
function Runner:plan_rebuild_preview(action, opts)
  local flake = type(opts) == "table" and type(opts.flake) == "string" and opts.flake
  local dir, attr
  if flake then
    dir, attr = flake:match("^([^#]*)(.*)$")
    dir = clean(dir ~= "" and dir or ".")
  end
  local files, updates = {}, dir and self.flake_updates[dir]
  for file, text in pairs(dir and self.flake_edits or {}) do
    if file:sub(1, #dir + 1) == dir .. "/" then
      files[file:sub(#dir + 2)] = text
    end
  end
  if not updates and next(files) == nil then
    return self.priv.preview("nixos.rebuild", action, opts)
  end
  local exec = require "hrun.exec"
  local scratch = exec.run({ "mktemp", "-d", (sys.env("TMPDIR") or "/tmp") .. "/hrun-plan-flake-XXXXXX" },
    { readonly = true }).stdout:gsub("%s+$", "")
  local ok, preview = pcall(function()
    exec.run({ "cp", "-a", dir, scratch .. "/flake" }, { readonly = true })
    for rel, text in pairs(files) do
      local path = scratch .. "/flake/" .. rel
      exec.run({ "mkdir", "-p", dirname(path) }, { readonly = true })
      local f = assert(io.open(path, "wb"))
      f:write(text)
      f:close()
    end
    local o = {}
    for k, v in pairs(opts) do
      o[k] = v
    end
    o.flake = scratch .. "/flake" .. attr
    o.extra_args = {}
    for _, a in ipairs(opts.extra_args or {}) do
      o.extra_args[#o.extra_args + 1] = a
    end
    if updates and updates.all then
      o.extra_args[#o.extra_args + 1] = "--recreate-lock-file"
    else
      for _, i in ipairs(updates or {}) do
        o.extra_args[#o.extra_args + 1] = "--update-input"
        o.extra_args[#o.extra_args + 1] = i
      end
    end
    return self.priv.preview("nixos.rebuild", action, o)
  end)
  exec.run({ "rm", "-rf", scratch }, { readonly = true, check = false })
  if not ok then
    error(preview, 0)
  end
  return preview
end

-- }======================================================

-- {======================================================
-- Events: to the journal (real runs) and to the screen
-- ======================================================

-- Every live secret's bytes in the strings of v shown as <secret> (a command that
-- echoed a password, an error that quotes one): events are masked before they are
-- journaled or shown.
-- Tables are copied (a playbook's own are never changed); one with a metatable other
-- than a JSON array's is left as it is.
local function masked(mask, v, depth)
  if type(v) == "string" then
    return mask(v)
  elseif type(v) ~= "table" or depth > 8 then
    return v
  end
  local mt = getmetatable(v)
  if mt ~= nil and not (type(mt) == "table" and mt.__name == "array") then
    return v
  end
  local out = setmetatable({}, mt)
  for k, x in next, v do
    out[k] = masked(mask, x, depth + 1)
  end
  return out
end

-- Returns the event as emitted (masked): what else it goes to (--notify) gets that.
function Runner:emit(ev)
  if self.hosts then -- its clock and masking are this machine's, whatever step calls it
    return self:own(self.emit_here, ev)
  end
  return self:emit_here(ev)
end

function Runner:emit_here(ev)
  if self.priv.secrets() > 0 then
    ev = masked(self.priv.mask, ev, 0)
  end
  ev.time = ev.time or sys.now()
  if self.recap then
    self:tally(ev)
  end
  if self.journal and self.run_id then
    self.journal:event(self.run_id, ev)
  end
  self.ui:event(ev)
  return ev
end

-- {======================================================
-- The recap: each phase's and the run's steps and checks, ok / changed / skipped /
-- failed (and, in plans, unknown)
-- ======================================================

function M.recap()
  return { ok = 0, changed = 0, skipped = 0, failed = 0, unknown = 0 }
end

-- What an event counts as in the recap, or nil: a step that changed something (or, in
-- a plan, would) is changed, one that did not is ok; a check that passed is ok.
function M.outcome(ev)
  local e, st = ev.event, ev.status
  if e == "step-skip" and ev.done then -- done before a crash: as the journal says
    return ev.changed and "changed" or "ok"
  elseif e == "step-skip" then
    return "skipped"
  elseif e ~= "step-end" and e ~= "check" then
    return nil
  elseif st == "failed" or st == "interrupted" then
    return "failed"
  elseif st == "unknown" then
    return "unknown"
  elseif e == "check" then
    return "ok"
  end
  return ev.changed and "changed" or "ok"
end

function Runner:tally(ev)
  local o = M.outcome(ev)
  if not o then
    return
  end
  self.recap[o] = self.recap[o] + 1
  if self.phase_recap then
    self.phase_recap[o] = self.phase_recap[o] + 1
  end
end

-- The recap event of a phase (phase = its name, counts) or of the run (phases: each
-- phase's, in order).
function Runner:emit_recap(phase, counts)
  local ev = { event = "recap", phase = phase, plan = self.plan or nil }
  for k, v in pairs(counts) do
    ev[k] = v
  end
  if not phase then
    ev.phases = json.array(self.phase_recaps or {})
  end
  self:emit(ev)
end

-- }======================================================

-- The test suite's fault injection: HRUN_TEST_CRASH=point:N kills hrun (SIGKILL) the
-- Nth time it reaches point (step-start, step-done, effect-intent, effect-journaled,
-- write-returned, effect-done, undo-op, undo-effect); point:N:INT sends it SIGINT there
-- instead, a Ctrl-C at that very instant.
function Runner:maybe_crash(point)
  local spec = os.getenv("HRUN_TEST_CRASH") -- not sys.env: the sandbox would check it
  if not spec then
    return
  end
  local want, n, sig = spec:match("^([%w-]+):(%d+):?(%u*)$")
  if want ~= point then
    return
  end
  self.crash_counts[point] = (self.crash_counts[point] or 0) + 1
  if self.crash_counts[point] == tonumber(n) then
    self.priv.crash(sig ~= "" and sig or nil)
  end
end

local function message_of(e)
  if type(e) == "string" then
    return e
  end
  return require("hrun.pretty").format(e)
end

-- The message handler of every call into the playbook: the message goes to the
-- journal and the screen; with -v the traceback is kept for the next step-end event.
function Runner:handler()
  return function(e)
    local msg = message_of(e)
    if self.opts.verbose then
      self.traceback = debug.traceback(msg, 2)
    end
    return msg
  end
end

-- }======================================================

-- {======================================================
-- The hooks: every call of a primitive passes here while the playbook runs
-- ======================================================

-- The writes whose preview is a diff of a file's content: a run with --diff shows it.
local DIFFS = { ["fs.write"] = true, ["fs.copy"] = true, ["nixos.flake_set_input"] = true }

-- What a write would change, for people (priv.preview); in a plan, a flake edit after
-- another planned edit of the same file diffs the text that edit leaves.
function Runner:preview(name, ...)
  local target = ...
  if self.plan and name == "nixos.flake_set_input" and type(target) == "string" and self.flake_edits[clean(target)] then
    return self.priv.trusted(self.plan_flake_preview, self, plain_args(...))
  end
  local preview = self.priv.preview(name, ...)
  if self.plan and type(preview) == "table" and preview.error then
    self.failing_write = self.planned -- its stand-in fails as the call would: not unknown
  end
  return preview
end

function Runner:before(call, ...)
  local host = self.hosts and self:call_host()
  if self.hosts and (self.in_playbook or 0) > 0 then -- what the hook does is hrun's own work, here
    return self:own(self.before_here, host, call, ...)
  end
  return self:before_here(host, call, ...)
end

function Runner:before_here(host, call, ...)
  if not call.writes then
    if host then
      return true, self:host(host):call(call.name, ...)
    end
    return
  elseif self.undoing then
    if host and self.inverse_op then -- an inverse's operation, sent to the host of its effect
      local k = self.inverse_op
      return true, self:host(host):call_trusted({ controller = self.journal:id(), run = k.run, effect = k.effect,
        op = k.op }, call.name, ...)
    elseif host then -- a step's undo function's call: that host's sandbox applies
      return true, self:host(host):call(call.name, ...)
    end
    return self:undo_writes(call, ...)
  end
  local cur = self.current
  if cur and cur.kind ~= "step" then
    error(string.format("%s '%s' must not change the system (it called %s): only run and undo may",
      cur.kind, cur.name, call.name), 0)
  end
  local args = table.pack(...)
  local def = cur and cur.def
  if call.destroys and def and not (def.undo or def.irreversible) then
    if not self.plan then
      error(refusal(call, def), 0)
    end
  end
  if COPIES[call.name] then
    self:check_copy(call.name, args)
  end
  if not cur and not self.plan then
    error(string.format("%s outside a step: a playbook changes the system in run (and undo) only",
      call.name), 0)
  end
  if host then
    return self:remote_write(host, call, args)
  end
  local already = self:already_so(call, args, ...)
  if already ~= nil then
    return true, already
  end
  if self.plan then
    if counts_as_change(call.name, args) then
      self.step_did_change = true
    end
    self:plan_targets(call, ...)
    local inverse, why = self.priv.inverse(call.name, ...)
    if call.destroys and def and not (def.undo or def.irreversible) then
      why = refusal(call, def) .. " — the run would fail here"
    end
    self.planned = self.planned + 1
    local step_undo = def and def.undo and true or nil -- the step's own undo takes it back
    if not inverse and not step_undo then
      self.irreversible_planned = self.irreversible_planned + 1
    end
    local preview
    if call.name == "nixos.rebuild" then
      preview = self.priv.trusted(self.plan_rebuild_preview, self, plain_args(...))
    else
      preview = self:preview(call.name, ...)
    end
    self:emit({ event = "effect", planned = true, phase = cur and cur.phase, step = cur and cur.name,
      op = call.name, args = arglist(args), inverse = inverse, no_inverse = why, preview = preview,
      step_undo = step_undo, kept = call.keep })
    if call.name == "nixos.flake_set_input" or call.name == "nixos.flake_update" then
      return true, self.priv.trusted(self.plan_flake_edit, self, call.name, plain_args(...))
    end
    return true, placeholder(call.name, preview, ...)
  end
  -- the inverse is computed (and what the write destroys saved) before the intent is
  -- committed, and the intent before the write: after a crash, the journal knows. So is
  -- the state of what it changes, to tell later whether an undo is already done or
  -- would overwrite a change made since.
  local inverse, why = self.priv.inverse(call.name, ...)
  local before = self.priv.trusted(state_of, self.priv, call.name, plain_args(...))
  local started = sys.now()
  local preview = self.opts.diff and DIFFS[call.name] and self:preview(call.name, ...) or nil
  self:emit({ event = "effect", phase = cur.phase, step = cur.name, op = call.name, args = arglist(args),
    inverse = inverse, no_inverse = why, step_undo = def and def.undo and true or nil, kept = call.keep,
    preview = preview })
  local top = { before = before, counts = counts_as_change(call.name, args),
    prune_dir = call.name == "btrfs.prune" and args[1] or nil }
  -- the intent and the entry the after hook gives its result to, with Ctrl-C held off
  -- in between: an interrupt raised there would leave an intent no result ever reaches
  self.priv.shielded(function()
    top.id = self.journal:intent({ run = self.run_id, step = cur.id, op = call.name, kept = call.keep,
      args = codec.summary(arglist(args)), inverse = inverse, no_inverse = why, started = started, before = before })
    self:maybe_crash("effect-journaled")
    self.effect_stack[#self.effect_stack + 1] = top
    -- temporaries the write makes are named from the run and the effect: found after a crash
    self.priv.seteffect(self.run_id, top.id)
  end)
  self:maybe_crash("effect-intent")
end

-- A write that would change nothing (the same bytes, the unit already active) neither
-- acts nor is journaled: an `effect` event with unchanged = true says it was already
-- so, and the call returns what the primitive returns then. In a plan, a write to what
-- a write planned before it changes is not known to be already so: it stays planned.
-- Returns that value, or nil when the write is to run (or be planned).
function Runner:already_so(call, args, ...)
  local value = unchanged_of(self.priv, call.name, ...)
  if value == nil then
    return nil
  end
  if self.plan and next(self.planned_targets) then
    local states = self.priv.trusted(state_of, self.priv, call.name, plain_args(...))
    for _, st in ipairs(states or {}) do
      if self.planned_targets[st.target] then
        return nil
      end
    end
    -- exec's creates and removes: a path an earlier planned write makes or removes
    local opts = (call.name == "exec.run" or call.name == "exec.sh") and args[2]
    for _, k in ipairs(type(opts) == "table" and { "creates", "removes" } or {}) do
      local path = rawget(opts, k)
      if type(path) == "string" and path:sub(1, 1) ~= "/" and type(rawget(opts, "cwd")) == "string" then
        path = rawget(opts, "cwd") .. "/" .. path
      end
      if type(path) == "string" and self.planned_targets[path] then
        return nil
      end
    end
  end
  local cur = self.current
  self:emit({ event = "effect", unchanged = true, planned = self.plan or nil, phase = cur and cur.phase,
    step = cur and cur.name, op = call.name, args = arglist(args),
    skipped = type(value) == "table" and rawget(value, "skipped") or nil })
  return value
end

-- Plans: what a planned write changes, so that a later write to it is not called already
-- so from what is there now.
function Runner:plan_targets(call, ...)
  local states = self.priv.trusted(state_of, self.priv, call.name, plain_args(...))
  for _, st in ipairs(states or {}) do
    if st.target then
      self.planned_targets[st.target] = true
    end
  end
end

-- Whether the step running (or the last one that ran) changed something: one of its
-- journaled effects completed (not an exec with changed = false). In plans: whether it
-- planned a write.
function Runner:step_changed()
  return self.step_did_change == true
end

-- A write of a step's undo function: not journaled as an effect (the undo function is
-- the step's way back), but what it writes to is, before it acts, so that a crash in
-- the middle leaves nothing the next rollback does not find (its temporaries).
function Runner:undo_writes(call, ...)
  local attempt = self.undo_attempt
  if not attempt then -- an inverse's operation: its effect is the one journaled
    return
  end
  local states = self.priv.trusted(state_of, self.priv, call.name, plain_args(...))
  if states and #states > 0 then
    for _, st in ipairs(states) do
      attempt.states[#attempt.states + 1] = st
    end
    self.journal:undo_targets(attempt.id, attempt.states)
  end
end

-- Writes whose failure may still have changed the system: nixos-rebuild can fail after
-- the profile moved or while activating (switch-to-configuration exits 4 when units fail
-- to start), a rollback half way, a copy cut short (rsync leaves what it copied). Their
-- failures are journaled `partial`, and undone.
local PARTIAL = { ["nixos.rebuild"] = true, ["nixos.rollback"] = true, ["fs.sync"] = true,
  ["btrfs.receive"] = true }

function Runner:after(call, nres, ...)
  local host = self.hosts and self:call_host()
  if self.hosts and (self.in_playbook or 0) > 0 then
    return self:own(self.after_here, host, call, nres, ...)
  end
  return self:after_here(host, call, nres, ...)
end

function Runner:after_here(host, call, nres, ...)
  if #self.call_children > 0 then -- the children this call started are done with
    self.journal:children_returned(self.call_children)
    self.call_children = {}
  end
  if not call.writes or self.undoing or self.plan or host then
    return -- (another host's write is journaled by remote_write, whole)
  end
  local top = table.remove(self.effect_stack)
  if not top then
    return
  end
  self:maybe_crash("write-returned")
  self.priv.seteffect(nil)
  local id = top.id
  local first, second = ...
  local status, result, err = "done", nil, nil
  if nres < 0 then
    status, err = "failed", message_of(first)
  elseif nres == 0 or first == nil or first == false then
    status, err = "failed", second and message_of(second) or "returned nothing"
  else
    result = codec.summary(first)
  end
  if status == "failed" and PARTIAL[call.name] then
    status = "partial"
  end
  if status ~= "failed" and top.counts then
    self.step_did_change = true
  end
  local after
  if top.before and status ~= "failed" then
    after = self.priv.trusted(restate, self.priv, top.before)
    self.step_effects[#self.step_effects + 1] = top
  end
  if top.prune_dir and status == "done" and type(first) == "table" and type(first.deleted) == "table" then
    -- a restore's aside a finished run's rollback needs, pruned: that run is collected
    local paths = {}
    for _, name in ipairs(first.deleted) do
      paths[#paths + 1] = top.prune_dir .. "/" .. name
    end
    for _, run in ipairs(self.journal:collect_asides(paths, sys.now())) do
      self:emit({ event = "log", phase = self.current and self.current.phase, step = self.current and self.current.name,
        message = string.format("run %d can no longer be rolled back: this prune deleted what its undo needs", run) })
    end
  end
  self.journal:effect_end(id, status, result, err, sys.now(), after)
  self:maybe_crash("effect-done")
end

-- {======================================================
-- Other hosts: a call made where a step's `on` or hosts.NAME says goes to that host's
-- agent; its writes are journaled there before they act and here with their host
-- ======================================================

-- The host the call being made goes to (nil: this machine): a call of the playbook's own
-- code (its run, undo, verify, when, checks: in_playbook) goes where hosts.NAME or its
-- step's `on` says; an inverse's operation where its effect was made. hrun's own calls
-- (its journal, its events, its clock) are this machine's.
function Runner:call_host()
  if remote.depth > 0 then
    return nil
  elseif self.inverse_op then
    return self.undo_host
  elseif (self.in_playbook or 0) == 0 then
    return nil
  end
  local stack = self.host_stack
  local name = stack and stack[#stack] or self.step_host
  if name == nil or not self.hosts[name] then -- "local", or a host that is this machine
    return nil
  end
  return name
end

-- xpcall(fn, handler, ...) of a function of the playbook's: its calls go to its host.
function Runner:xpcall_playbook(fn, ...)
  self.in_playbook = (self.in_playbook or 0) + 1
  local res = table.pack(xpcall(fn, self:handler(), ...))
  self.in_playbook = self.in_playbook - 1
  return table.unpack(res, 1, res.n)
end

-- fn(...) as hrun's own work, whoever's call it serves: its calls are this machine's.
function Runner:own(fn, ...)
  local saved = self.in_playbook
  self.in_playbook = 0
  local res = table.pack(pcall(fn, self, ...))
  self.in_playbook = saved
  if not res[1] then
    error(res[2], 0)
  end
  return table.unpack(res, 2, res.n)
end

-- The connected host `name` (connected now when it is not yet).
function Runner:host(name)
  local h = self.hosts[name]
  if not h then
    error(string.format("host '%s' is not one of the run's hosts", tostring(name)), 0)
  end
  if h.unreachable then -- once in a run: every effect there fails at once, saying why
    error(h.unreachable, 0)
  end
  if not h.ch then
    local ok, err = pcall(h.connect, h)
    if not ok then
      h.unreachable = message_of(err)
      error(err, 0)
    end
  end
  return h
end

-- The sandbox of `name` (or this machine's) in force: each host's capabilities are its own.
function Runner:sandbox_to(name)
  local boxes = self.sandbox_boxes
  local cur = self.sandbox_host or "local"
  name = name or "local"
  if not boxes or cur == name then
    return cur
  end
  self.priv.sandboxswap(boxes[cur])
  self.priv.sandboxswap(boxes[name])
  self.sandbox_host = name
  return cur
end

-- The URL of a host of the run as host_urls has it (a URL, or {url = …, agent_dir = …}).
local function url_of(h)
  return type(h) == "table" and h.url or h
end

-- Calls fn(...) with its calls going to host `name` (hosts.NAME.fs.write, an undo).
function Runner:with_host(name, fn, ...)
  local u = self.host_urls and self.host_urls[name]
  local box = name -- its capabilities: a host's own, when it is this machine too
  if u and url_of(u) == "local" then
    name = "local" -- a host of the run that is this machine (-H old=local): its calls are here
  end
  if name ~= "local" and not (self.hosts and self.hosts[name]) then
    error(string.format("hosts.%s: the playbook has no such host (hosts = { %s = \"ssh://…\" }, or -H %s=URL)",
      tostring(name), tostring(name), tostring(name)), 0)
  end
  self.host_stack = self.host_stack or {}
  local stack = self.host_stack
  stack[#stack + 1] = name
  local saved = self:sandbox_to(box)
  local res = table.pack(pcall(fn, ...))
  self:sandbox_to(saved)
  table.remove(stack)
  if not res[1] then
    error(res[2], 0)
  end
  return table.unpack(res, 2, res.n)
end

-- The states (fingerprints) of what an effect changed, read where it is.
function Runner:restate_on(host, states)
  if not states then
    return nil
  end
  if host then
    return self:host(host):priv_call("restate", states)
  end
  return self.priv.trusted(restate, self.priv, states)
end

-- The sandbox of each host: capabilities "fs@old:/DATA" are old's, the others this
-- machine's; each host's set aside in a box until a call goes there.
function Runner:set_sandboxes(caps, enforce, record)
  local dsl = require("hrun.dsl")
  local per, boxes = { ["local"] = {} }, nil
  for _, c in ipairs(caps) do
    local _, host = dsl.capability_host(c)
    host = host or "local"
    per[host] = per[host] or {}
    table.insert(per[host], host == "local" and (dsl.capability_host(c)) or c)
  end
  for name in pairs(self.hosts or {}) do
    per[name] = per[name] or {}
    if enforce then -- its agent checks them too, where the paths are
      self.hosts[name]:set_sandbox(per[name])
    end
  end
  -- a host of the run that is this machine (new = "local", -H old=local): its calls
  -- are this machine's, under this machine's capabilities and its own (fs@old:…), its
  -- paths resolved here
  local here = false
  for name, u in pairs(self.host_urls or {}) do
    if url_of(u) == "local" and name ~= "local" then
      local list = per[name] or {}
      for _, c in ipairs(per["local"]) do
        local cap, rest = c:match("^([%w]+)(.*)$")
        list[#list + 1] = cap .. "@" .. name .. rest
      end
      per[name], here = list, true
    end
  end
  if self.hosts or here then
    boxes = {}
    for name, list in pairs(per) do
      if name ~= "local" then
        -- another host's paths as written: its agent resolves them
        self.priv.sandbox(list, enforce, record, name, self.hosts ~= nil and self.hosts[name] ~= nil)
        boxes[name] = self.priv.sandboxbox()
        self.priv.sandboxswap(boxes[name])
      end
    end
    boxes["local"] = self.priv.sandboxbox()
  end
  self.priv.sandbox(per["local"], enforce, record)
  self.sandbox_boxes, self.sandbox_host = boxes, "local"
end

-- The hosts of the run: {name = Host} for those not "local"; urls from the playbook,
-- -H, or (resume, rollback) the journal.
function Runner:open_hosts(urls)
  local hosts, n = {}, 0
  for name, h in pairs(urls or {}) do
    local url = url_of(h)
    if url ~= "local" then
      -- a fleet's member: the fleet's ssh masters and trusted keys (hrun.fleet)
      hosts[name] = remote.new({ name = name, url = url, priv = self.priv, state = self.ssh_state or self.state,
        agent_dir = type(h) == "table" and h.agent_dir or nil, sudo = type(h) == "table" and h.sudo or nil,
        reconnect_seconds = type(h) == "table" and h.reconnect or nil,
        controller = self.journal and self.journal:id() or "plan", on_event = function(ev)
          local cur = self.current
          ev.phase, ev.step = cur and cur.phase, cur and cur.name
          self:emit(ev)
        end })
      hosts[name].run_id = self.run_id
      n = n + 1
    end
  end
  self.hosts = n > 0 and hosts or nil
end

-- Before anything changes: every host is reached and its agent answers, or the run
-- stops here naming each host that is not and why.
function Runner:preflight()
  if not self.hosts then
    return nil
  end
  local names, problems = {}, {}
  for name in pairs(self.hosts) do
    names[#names + 1] = name
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local h = self.hosts[name]
    local ok, err = pcall(h.connect, h)
    if ok then
      self:emit({ event = "host", host = name, url = h.url, agent = h.agent_kind, uploaded = h.uploaded or nil,
        hostname = h.ready.host, root = h.uid == 0, version = h.ready.version })
    else
      problems[#problems + 1] = message_of(err)
    end
  end
  if #problems > 0 then
    return "pre-flight: " .. table.concat(problems, "; ")
  end
end

function Runner:close_hosts()
  for _, h in pairs(self.hosts or {}) do
    h:close()
  end
end

-- Writes that cut the connection to the host they run on (a switch restarts sshd or the
-- network): they run there detached, in a transient unit (a step's detach = true too).
local DETACHED = { ["nixos.rebuild"] = true, ["nixos.rollback"] = true }

local function has_secret(v, depth)
  depth = depth or 0
  if secrets_mod.is(v) then
    return true
  elseif type(v) == "table" and depth < 20 then
    for k, x in pairs(v) do
      if has_secret(k, depth + 1) or has_secret(x, depth + 1) then
        return true
      end
    end
  end
  return false
end

-- A host's preview of a write of a file's content, with the diff made here when its hrun
-- makes none (the portable build has no libgit2): the old content read there.
function Runner:remote_diff(h, name, args, preview)
  if not (h.ready and h.ready.portable) or type(preview) ~= "table" then
    return preview
  end
  local path, new = args[1], args[2]
  if name == "fs.copy" then
    path = args[2]
    new = select(2, pcall(h.call_trusted, h, nil, "fs.read", args[1]))
  elseif name ~= "fs.write" then
    return preview
  end
  if type(path) ~= "string" or not (type(new) == "string" or secrets_mod.is(new)) then
    return preview
  end
  if secrets_mod.is(new) then -- masked as a local preview masks it
    new = self.priv.mask(self.priv.secretbytes(new))
  end
  local ok, old = pcall(h.call_trusted, h, nil, "fs.read", path)
  return self.priv.diffpreview(path, ok and type(old) == "string" and old or nil, new)
end

-- {======================================================
-- Copies whose data is on another machine: fs.sync and btrfs.receive with `from`. The
-- call runs where the data goes (journaled there, with its inverse); its sending side
-- runs where the data is, behind a relay on this machine (hrun.remote's sender)
-- ======================================================

-- The machine a copy's data comes from: nil (no `from`: where the call runs), "local",
-- or a host's name; and the name whose capabilities cover it.
function Runner:copy_from(name, opts)
  local from = type(opts) == "table" and opts.from or nil
  if from == nil then
    return nil
  end
  if type(from) ~= "string" then
    error(string.format("%s: from must be the name of a host of the run, not a %s", name, type(from)), 0)
  end
  if from == "local" or url_of(self.host_urls and self.host_urls[from]) == "local" then
    return "local", from
  end
  if not (self.hosts and self.hosts[from]) then
    error(string.format("%s: from = '%s': the playbook has no such host (hosts = { %s = \"ssh://…\" }, or -H %s=URL)",
      name, from, from, from), 0)
  end
  return from, from
end

-- A sandboxed playbook reads a copy's source only where its capabilities on the machine
-- of the data let it (fs@old:/DATA, btrfs@old:/DATA/.snapshots).
function Runner:check_copy(name, args)
  local _, box = self:copy_from(name, args[3])
  if not (box and self.sandbox) then
    return
  end
  local saved = self:sandbox_to(box)
  local ok, err = pcall(function()
    local read = name == "fs.sync" and "fs.read" or "btrfs.info"
    self.priv.check(read, args[1])
    if name == "btrfs.receive" and type(args[3]) == "table" and args[3].parent ~= nil then
      self.priv.check(read, args[3].parent)
    end
  end)
  self:sandbox_to(saved)
  if not ok then
    error(err, 0)
  end
end

-- The sending side of a copy that runs on `to` (a host's name; nil: this machine), or
-- nil when its data is where it runs.
function Runner:copy_sender(name, src, opts, to)
  local from = self:copy_from(name, opts)
  if from == nil or from == (to or "local") then
    return nil
  end
  local h = from ~= "local" and self:host(from) or nil
  return remote.sender({ priv = self.priv, dir = self.state .. "/ssh", name = name, src = src, opts = opts,
    host = h })
end

-- Sends msg (a write of call) to host h; a copy's sending side is started here first and
-- reached from h through its master, and stopped once h has answered.
function Runner:request_copying(h, call, args, msg)
  local from = COPIES[call.name] and self:copy_from(call.name, args[3])
  if not from then
    return h:request(msg)
  end
  if from == h.name then
    msg.via = "self"
    return h:request(msg)
  end
  local relay = self:own(self.copy_sender, call.name, args[1], args[3], h.name)
  local ok, r = pcall(function()
    local via, unforward = h:forward(relay.sock)
    msg.via = via
    local res = table.pack(pcall(h.request, h, msg))
    pcall(unforward)
    if not res[1] then
      error(res[2], 0)
    end
    return res[2]
  end)
  local said = relay:said()
  relay:close()
  if not ok then
    error(r, 0)
  end
  if said ~= "" then -- why the copy failed may be the sending side's
    if r.t == "error" then
      r.message = string.format("%s (the sending side: %s)", tostring(r.message), said)
    elseif type(r.values) == "table" and r.values[1] == nil and type(r.values[2]) == "string" then
      r.values[2] = string.format("%s (the sending side: %s)", r.values[2], said)
    end
  end
  return r
end

-- }======================================================

-- A write on another host. In a plan, what its agent says it would do; in a run,
-- journaled here (host, intent) before it is sent, and there before it acts; its
-- inverse and states come back with its answer.
function Runner:remote_write(host, call, args)
  local h = self:host(host)
  local cur = self.current
  local def = cur and cur.def
  local n = args.n
  -- sent as they are: the wire carries secrets (as secrets), json.null, arrays and read-only
  -- views; a function among them raises, naming the host
  local sent = table.move(args, 1, n, 1, {})
  if self.plan then
    local r = h:request({ t = "plan", name = call.name, args = sent, n = n })
    if r.t == "error" then
      error(tostring(r.message), 0)
    end
    if r.unchanged then
      self:emit({ event = "effect", unchanged = true, planned = true, host = host, phase = cur and cur.phase,
        step = cur and cur.name, op = call.name, args = arglist(args) })
      return true, remote.results(r)
    end
    if counts_as_change(call.name, args) then
      self.step_did_change = true
    end
    for _, st in ipairs(type(r.states) == "table" and r.states or {}) do
      if st.target then
        self.planned_targets[host .. ":" .. tostring(st.target)] = true
      end
    end
    local why = r.no_inverse
    if call.destroys and def and not (def.undo or def.irreversible) then
      why = refusal(call, def) .. " — the run would fail here"
    end
    self.planned = self.planned + 1
    local step_undo = def and def.undo and true or nil
    if not r.inverse and not step_undo then
      self.irreversible_planned = self.irreversible_planned + 1
    end
    local preview = self:remote_diff(h, call.name, args, r.preview)
    self:emit({ event = "effect", planned = true, host = host, phase = cur and cur.phase, step = cur and cur.name,
      op = call.name, args = arglist(args), inverse = r.inverse, no_inverse = why, preview = preview,
      step_undo = step_undo, kept = call.keep })
    return true, placeholder(call.name, r.preview, table.unpack(args, 1, n))
  end
  local summary = codec.summary(arglist(args))
  local id = self.journal:remote_intent({ run = self.run_id, step = cur.id, op = call.name, kept = call.keep,
    args = summary, started = sys.now(), host = host })
  self:maybe_crash("effect-intent")
  local r = self:request_copying(h, call, args, { t = "write", name = call.name, args = sent, n = n,
    summary = summary, partial = PARTIAL[call.name],
    key = { controller = self.journal:id(), run = self.run_id, effect = id },
    detach = (DETACHED[call.name] or (def and def.detach)) or nil, secrets = has_secret(sent) or nil })
  if r.unchanged then -- already so there: no effect
    self.journal:drop_effect(id)
    self:emit({ event = "effect", unchanged = true, host = host, phase = cur.phase, step = cur.name, op = call.name,
      args = arglist(args) })
    h:settle()
    return true, remote.results(r)
  end
  local e = r.effect
  if type(e) == "table" then
    self.journal:remote_effect(id, e, r.t == "result" and codec.summary(r.values and r.values[1]) or nil, sys.now())
    self:emit({ event = "effect", host = host, phase = cur.phase, step = cur.name, op = call.name,
      args = arglist(args), inverse = e.inverse, no_inverse = e.no_inverse,
      step_undo = def and def.undo and true or nil, kept = call.keep, remote = e.remote })
    if e.status ~= "failed" and counts_as_change(call.name, args) then
      self.step_did_change = true
    end
    if e.before and e.status ~= "failed" then
      self.step_effects[#self.step_effects + 1] = { id = id, before = e.before, host = host }
    end
  end
  self.journal:commit()
  self:maybe_crash("effect-done")
  h:settle()
  return true, remote.results(r)
end

-- }======================================================

function Runner:install_hooks()
  -- a sandboxed playbook's functions may use what it declares, no more; a plan of any
  -- playbook records what it uses (audit: nothing refused)
  if self.sandbox or self.plan then
    self:set_sandboxes(self.pb and self.pb.capabilities or {}, self.sandbox and true or false,
      (self.plan or not self.sandbox) and true or false)
  end
  if self.sandbox then
    self.priv.memlimit(require("hrun.play").memory_limit(self.opts or {}))
    if self.state then -- its journal, stashes and ssh keys: no capability covers them
      self.priv.setown({ self.state })
    end
  end
  remote.router = function(host, fn, ...)
    return self:with_host(host, fn, ...)
  end
  -- a copy here whose data is on another host (fs.sync, btrfs.receive with `from`)
  self.priv.settransport(function(name, src, _, opts)
    local relay = self:own(self.copy_sender, name, src, opts, nil)
    if relay then
      return relay.sock, relay
    end
  end)
  self.priv.setstrict(true)
  self.priv.sethooks(function(call, ...)
    return self:before(call, ...)
  end, function(call, nres, ...)
    return self:after(call, nres, ...)
  end)
  self.priv.setticker(function()
    self.ui:tick()
  end)
  if self.journal then
    self.priv.setprotector(function(path)
      return self.journal:references(path)
    end)
    self.priv.setjournal(function()
      return self.journal.db
    end)
  end
  if self.journal then
    -- a child is journaled before its call waits for it: after a crash, resume and
    -- rollback stop it
    self.priv.setspawnsink(function(info)
      local cur = self.current
      self.call_children[#self.call_children + 1] = self.journal:child(self.run_id, cur and cur.id, info)
    end)
  end
  self.priv.setstreamsink(function(line, stream)
    local cur = self.current
    self:emit({ event = "output", phase = cur and cur.phase, step = cur and cur.name, stream = stream,
      line = require("hrun.pretty").utf8(line) })
  end)
end

function Runner:remove_hooks()
  self:sandbox_to("local")
  self.sandbox_boxes = nil
  remote.router = nil
  self.priv.settransport(nil)
  self.priv.sandbox(nil)
  self.priv.setown(nil)
  self.priv.memlimit(0)
  self.priv.setstrict(false)
  self.priv.sethooks(nil)
  self.priv.setstreamsink(nil)
  self.priv.setspawnsink(nil)
  self.priv.seteffect(nil)
  self.priv.setticker(nil)
  self.priv.setdeadline(0)
end

-- }======================================================

-- {======================================================
-- Steps
-- ======================================================

function Runner:ctx(phase, step, state)
  local ctx = {
    params = self.ro_params,
    state = state or {},
    shared = self.shared,
    plan = self.plan or false,
    run_id = self.run_id,
    phase = phase,
    step = step,
    host = self.fleet_host, -- a fleet's member: the inventory's name of its host
    log = function(fmt, ...)
      self:emit({ event = "log", phase = phase, step = step, message = string.format(fmt, ...) })
    end,
  }
  ctx.notify = function(name)
    local ok, why = self:ctx_notify(ctx, phase, step, name)
    if not ok then
      error(why, 2) -- the playbook's line
    end
  end
  -- a sandboxed playbook's process checks ctx.notify's names against these
  require("hrun.boundary").contexts[ctx] = { notifiable = self.pb and self:notifiable(phase) }
  return ctx
end

-- Calls fn(ctx) as `kind` (when, verify, check: they must not write).
function Runner:call_as(kind, name, phase, fn, ctx)
  local saved = self.current
  self.current = { kind = kind, name = name, phase = phase, id = saved and saved.id }
  local res = table.pack(self:xpcall_playbook(fn, ctx))
  self.current = saved
  return table.unpack(res, 1, res.n)
end

function Runner:ask(step)
  if self.opts.yes then
    self:emit({ event = "log", phase = step.phase, step = step.name, message = "confirmed by --yes: " .. step.confirm })
    return true
  end
  if self.plan then
    return true
  end
  if not (self.priv.isatty(0) and self.priv.isatty(2)) then
    return false, string.format("asks '%s': there is no terminal to ask on; run with --yes to answer yes",
      step.confirm)
  end
  self.ui:pause()
  io.stderr:write(step.confirm, " [y/N] ")
  io.stderr:flush()
  local answer = io.stdin:read("l") or ""
  self.ui:resume()
  if answer:match("^%s*[yY]") then
    return true
  end
  return false, "not confirmed: " .. step.confirm
end

-- A memory error under a sandbox's memory limit says which limit.
function Runner:explain(err)
  if err == "not enough memory" then
    local hit, limit = self.priv.memhit()
    if hit then
      return string.format("memory limit reached: the playbook's Lua heap would pass %d MiB (--memory-limit)",
        limit // (1 << 20))
    end
  end
  return err
end

-- One attempt of run + verify, under the step's deadline.
function Runner:attempt(step, ctx)
  local deadline = step.timeout and (self.priv.monotime() + step.timeout) or 0
  self.priv.setdeadline(deadline)
  local ok, err = self:xpcall_playbook(step.run, ctx)
  if ok and step.verify and not self.plan then
    local vok, res, msg = self:call_as("verify", step.name, step.phase, step.verify, ctx)
    self.priv.setdeadline(deadline) -- call_as ran Lua: the deadline still holds
    if not vok then
      ok, err = false, "verify: " .. res
    elseif not res then
      ok, err = false, "verify failed" .. (msg ~= nil and (": " .. tostring(msg)) or "")
    end
  end
  self.priv.setdeadline(0)
  if not ok then
    err = self:explain(err)
    if self.priv.interrupted() > 0 then
      self.priv.clearinterrupt()
      self.interrupted = true
      err = "interrupted"
    elseif deadline > 0 and self.priv.monotime() >= deadline - 0.001 and tostring(err):find("timed out", 1, true) then
      err = string.format("timed out after %g s", step.timeout)
    end
  end
  return ok, err
end

-- Runs a step: when, confirm, attempts (undoing a failed attempt's effects before the
-- next), the journal rows. Returns ok, error.
function Runner:run_step(step, resumed_state)
  return self:on_host(step.on, self.run_step_here, self, step, resumed_state)
end

-- Calls fn(...) with the calls it makes going to host `name` (a step's or check's `on`;
-- nil: this machine, or a fleet member's host).
function Runner:on_host(name, fn, ...)
  name = name or self.fleet_host
  if name ~= nil and name ~= "local" and not (self.host_urls and self.host_urls[name]) then
    -- never here instead: what is meant for a host the run knows no address of runs nowhere
    error(string.format("the step runs on host '%s', and this run knows no address for it (hrun … -H %s=URL)",
      name, name), 0)
  end
  if name == nil or not (self.hosts or self.sandbox_boxes) then
    return fn(...)
  end
  local saved_host = self.step_host
  self.step_host = name
  local saved_sb = self:sandbox_to(name)
  local res = table.pack(pcall(fn, ...))
  self:sandbox_to(saved_sb)
  self.step_host = saved_host
  if not res[1] then
    error(res[2], 0)
  end
  return table.unpack(res, 2, res.n)
end

function Runner:run_step_here(step, resumed_state)
  local ctx = self:ctx(step.phase, step.name, resumed_state)
  self.last_ctx, self.last_step_id = ctx, nil
  if step.when then
    local ok, res = self:call_as("when", step.name, step.phase, step.when, ctx)
    if not ok then
      return self:fail_unjournaled(step, "when: " .. res)
    elseif not res then
      self:emit({ event = "step-skip", phase = step.phase, step = step.name, reason = "when is false" })
      return true
    end
  end
  if step.confirm then
    local yes, why = self:ask(step)
    if not yes then
      return self:fail_unjournaled(step, why)
    end
  end
  local started = sys.now()
  local id
  if not self.plan then
    id = self.journal:new_step({ run = self.run_id, phase = step.phase, name = step.name, kind = step.kind,
      has_undo = step.undo ~= nil, irreversible = step.irreversible, started = started, playbook = self.pb_hash })
    self.last_step_id = id
    if step.notes then -- a handler's run: it began on these notifications (with its row)
      self.journal:begun(step.notes, id)
    end
    self:maybe_crash("step-start")
  end
  self:emit({ event = "step-start", phase = step.phase, step = step.name })
  self.step_effects = {}
  local attempts, ok, err = 0
  while true do
    attempts = attempts + 1
    self.current = { kind = "step", id = id, name = step.name, phase = step.phase, def = step }
    self.step_did_change = false
    ok, err = self:attempt(step, ctx)
    self.current = nil
    if ok or self.interrupted or self.plan or attempts > (step.retries or 0) then
      break
    end
    self:emit({ event = "step-retry", phase = step.phase, step = step.name, attempt = attempts, error = err })
    local undo_ok, undo_err = self:undo_effects(id, step.irreversible)
    if not undo_ok then
      err = err .. "; and its effects could not be undone before a retry: " .. undo_err
      break
    end
    if (step.retry_delay or 0) > 0 then
      sys.sleep(step.retry_delay)
    end
  end
  local state_json
  if ok and not self.plan then
    local jok, jres = pcall(codec.encode, ctx.state)
    if not jok then
      ok, err = false, "ctx.state must hold JSON values only: " .. tostring(jres)
    else
      state_json = jres
    end
  end
  local status = ok and (self.plan and "planned" or "done") or (self.interrupted and "interrupted" or "failed")
  local planned = self.planned - (self.failing_write == self.planned and 1 or 0)
  if status == "failed" and self.plan and planned > 0 and not self.plan_certain then
    -- as for checks: what it read may be what the planned writes change (a file a
    -- planned step creates, a service a planned restart brings up): only the run can tell
    status, err, ok = "unknown", "fails now (" .. tostring(err) .. "), before the writes planned above", true
    self.unknown = (self.unknown or 0) + 1
  end
  self.plan_certain = nil
  if ok and not self.plan then
    self:settle(self.step_effects)
  end
  local changed -- ok: whether it changed something; nil: it failed
  if ok then
    changed = self:step_changed()
  end
  self.last_effects, self.step_effects = self.step_effects, {}
  if ok then
    self:record_notifications(step, ctx)
  end
  if not self.plan then
    self.journal:end_step(id, { status = status, attempts = attempts, state = state_json, error = err,
      ended = sys.now(), changed = changed })
    if ok then
      self.journal:set_run(self.run_id, { shared = codec.encode(self.shared) })
    end
    self.journal:commit() -- a step boundary: durable
    if ok then
      self:maybe_crash("step-done")
    end
  end
  self:emit({ event = "step-end", phase = step.phase, step = step.name, status = status, error = err,
    attempts = attempts, seconds = sys.now() - started, traceback = not ok and self.traceback or nil,
    changed = changed })
  self.traceback = nil
  return ok, err
end

-- Journals what a completed step left of each of its effects' targets: an undo that
-- finds one neither so nor back as it was before finds a change made after the step
-- (by a person, or by something unjournaled).
function Runner:settle(effects)
  for _, e in ipairs(effects) do
    self.journal:effect_settled(e.id, self:restate_on(e.host, e.before))
  end
end

-- A step that failed before it began (when raised, confirmation refused): journaled
-- as failed, with no effects.
function Runner:fail_unjournaled(step, err)
  if not self.plan then
    local id = self.journal:new_step({ run = self.run_id, phase = step.phase, name = step.name, kind = "step",
      status = "failed", started = sys.now() })
    self.journal:end_step(id, { status = "failed", error = err, ended = sys.now() })
  end
  self:emit({ event = "step-end", phase = step.phase, step = step.name, status = "failed", error = err,
    seconds = 0 })
  return false, err
end

function Runner:run_check(check)
  return self:on_host(check.on, self.run_check_here, self, check)
end

function Runner:run_check_here(check)
  local started = sys.now()
  local ctx = self:ctx(check.phase, check.name)
  local ok, res, msg = self:call_as("check", check.name, check.phase, check.fn, ctx)
  local err
  if not ok then
    err = self:explain(res)
  elseif not res then
    -- where the check is, so that the person finds it: "pb.lua:12: check 'x' returned false"
    local at = check.loc and string.format("%s:%d: ", check.loc.file, check.loc.line) or ""
    err = msg ~= nil and tostring(msg) or (at .. "the check returned false")
  end
  local status = err and "failed" or "ok"
  if err and self.plan and self.planned > 0 then
    -- what it checks may be what the planned writes change: only the run can tell
    status, err = "unknown", "fails now (" .. err .. "), before the writes planned above"
    self.unknown = (self.unknown or 0) + 1
  end
  if self.priv.interrupted() > 0 then
    self.priv.clearinterrupt()
    self.interrupted = true
    status, err = "failed", "interrupted"
  end
  if not self.plan then
    local id = self.journal:new_step({ run = self.run_id, phase = check.phase, name = check.name, kind = "check",
      started = started })
    self.journal:end_step(id, { status = err and "failed" or "done", attempts = 1, error = err, ended = sys.now() })
  end
  self:emit({ event = "check", phase = check.phase, check = check.name, status = status, error = err,
    seconds = sys.now() - started })
  return status ~= "failed", err
end

-- }======================================================

-- {======================================================
-- Undo
-- ======================================================

-- The function behind an undo operation's name: "fs.remove" → fs.remove.
local function operation(name)
  local mod, fn = name:match("^([%w_]+)%.([%w_]+)$")
  local m = mod and package.loaded["hrun." .. mod]
  return m and m[fn]
end

-- Are two lists of the same states equal?
local function same(a, b)
  for i, st in ipairs(a) do
    if not b[i] or b[i].fp ~= st.fp then
      return false
    end
  end
  return true
end

-- Do the states say all there is to what they describe? A file's bytes, a subvolume, a
-- ref do; a profile's generation does not say which system is active or booted.
local COMPLETE = { path = true, subvolume = true, ref = true }
local function complete(states)
  for _, st in ipairs(states) do
    if not COMPLETE[st.kind] then
      return false
    end
  end
  return true
end

-- The states that are neither back as they were (before), nor as the effect left them
-- (after: later effects of the run, undone first, bring it back there), nor as its step
-- left them (settled: a command of the step changed it after, unjournaled):
-- "target: the run left X, now Y; …", or nil.
-- A state the run left on its way somewhere (a unit still activating when the step
-- ended) goes on without anybody: wherever it went is not someone else's change.
local MOVING = { unit = { activating = true, deactivating = true, reloading = true } }
local function moving(st)
  local m = st and MOVING[st.kind]
  return m and m[st.fp] or false
end

local function changed_since(e, now)
  local out = {}
  for i, st in ipairs(e.before) do
    local n = now[i]
    local fp = n and n.fp
    local a, s = e.after and e.after[i], e.settled and e.settled[i]
    if fp ~= st.fp and not (a and fp == a.fp) and not (s and fp == s.fp) and not moving(s or a) then
      local left = s or a
      out[#out + 1] = string.format("%s: the run left %s, now %s", tostring(st.target),
        left and tostring(left.fp) or "?", fp and tostring(fp) or "unknown")
    end
  end
  return #out > 0 and table.concat(out, "; ") or nil
end

-- What the journaled states of effect e say of undoing it, given them as they are now:
-- "already-undone" (back as it was before, after it had changed it), "changed" and what
-- (see changed_since; only for effects of steps that ended), or nil: run the inverse.
-- An effect whose state shows no change runs its inverse: the state may not see all it
-- did.
function M.outlook(e, now)
  if not (now and e.before) then
    return nil
  end
  local left = e.settled or e.after
  if left and same(e.before, now) and not same(e.before, left) then
    return "already-undone"
  end
  -- a step that did not end is undone at once (or after a crash): nobody came between
  local diff = e.settled and changed_since(e, now)
  if diff then
    return "changed", diff
  end
end

-- Records one undo attempt that ended at once (nothing ran).
function Runner:undo_noted(step, effect, how, ok, err)
  local id = self.journal:undo_begin({ run = self.run_id, step = step, effect = effect, how = how,
    started = sys.now() })
  self.journal:undo_end(id, ok and "ok" or "failed", err, sys.now())
end

-- Runs one operation of an inverse: ok, error. An operation that finds nothing to undo
-- (ENOENT) is fine where the work may be done already: an effect that was only intended
-- (hrun died before its result), or an operation an earlier attempt began.
function Runner:run_op(op, maybe_done)
  local fn = operation(op.op)
  if not fn then
    return false, "unknown undo operation " .. tostring(op.op)
  end
  local args = op.args or {}
  if self.sandbox and not self.undo_host then
    -- a sandboxed run's inverse is checked again where it lands now: a link put in its
    -- path since (by the playbook itself) must not lead it out of the playbook's scope
    local cok, cerr = pcall(self.priv.checkundo, op.op, table.unpack(args, 1, #args))
    if not cok then
      return false, message_of(cerr)
    end
  end
  local ok, r, msg, code = self.priv.trusted(pcall, fn, table.unpack(args, 1, #args))
  if not ok then
    return false, message_of(r)
  elseif r == nil and not (maybe_done and code == "ENOENT") then
    return false, message_of(msg)
  end
  return true
end

-- Undoes one effect, every attempt journaled: ok, error, how. First what a crash left
-- (its temporaries) goes. Then, from the states journaled with it: what it changed is as
-- it was before → already undone (nothing runs); neither as it was nor as the effect left
-- it → changed since, not overwritten (unless --force). Otherwise the inverse's
-- operations run in order, those an earlier attempt completed skipped.
function Runner:undo_effect(e, irreversible)
  if not e.host then
    return self:undo_effect_here(e, irreversible)
  end
  -- another host's effect: what its journal says first, when the answer never came
  -- back (a crash, a cut); then the same undo, each call sent there
  local ok, res, err, how = pcall(function()
    if not e.remote and not self:reconcile(e) then
      return true, nil, "never reached its host"
    end
    self:same_host(e)
    self.undo_host = e.host -- its inverse's operations go there
    local res = table.pack(pcall(self.undo_effect_here, self, e, irreversible))
    self.undo_host = nil
    if not res[1] then
      error(res[2], 0)
    end
    return table.unpack(res, 2, res.n)
  end)
  if not ok then
    local msg = string.format("%s on host '%s': %s", e.op, e.host, message_of(res))
    self:undo_noted(e.step, e.id, "inverse", false, msg)
    self.journal:set_effect_undo(e.id, "undo-failed", msg)
    return false, msg
  end
  return res, err, how
end

-- Before the first undo on a host in this rollback: the host reached (its URL from the
-- journal, or -H) is the machine the run changed — its agent's journal has the record
-- of the effect, under the same id. Another machine's has none: nothing is undone there
-- (--force undoes anyway: a host whose agent's journal was lost).
function Runner:same_host(e)
  self.hosts_checked = self.hosts_checked or {}
  if self.hosts_checked[e.host] or self.opts.force then
    return
  end
  local found, h = self:host_record(e, true)
  if type(found) ~= "table" or found.remote ~= e.remote then
    error(string.format("host '%s' (%s) has no record of this run's %s there: it is not the machine the run " ..
      "changed (is -H %s=… right? hrun rollback --force undoes it anyway)", e.host, h.url or "?", e.op, e.host), 0)
  end
  self.hosts_checked[e.host] = true
end

-- What the journal of effect e's host says of it (nil: no record), and the host. Without
-- peek, no record leaves a tombstone there (Agent:effect).
function Runner:host_record(e, peek)
  local h = self:host(e.host)
  return remote.results(h:request({ t = "effect", op = e.op, peek = peek or nil,
    key = { controller = self.journal:id(), run = e.run, effect = e.id } })), h
end

-- An effect on another host whose answer the controller never had: its row filled in
-- from that host's journal (true), or, when the host has no record of it (the request
-- never arrived: its agent journals before it acts), dropped (false): kept as such here,
-- and there a tombstone refuses the request should it arrive late.
function Runner:reconcile(e)
  local found = self:host_record(e)
  if not found then
    self.journal:effect_dropped(e.id, "never reached its host", sys.now())
    self.journal:commit()
    return false
  end
  self.journal:remote_effect(e.id, found, nil, sys.now())
  self.journal:commit()
  e.remote, e.inverse, e.no_inverse, e.before, e.after, e.status = found.remote, found.inverse, found.no_inverse,
    found.before, found.after, found.status
  self.hosts_checked = self.hosts_checked or {}
  self.hosts_checked[e.host] = true -- its journal has the run's effect: the machine the run changed
  return true
end

function Runner:undo_effect_here(e, irreversible)
  local j = self.journal
  local done, begun = j:ops_done(e.id)
  self:remove_leftovers(e, next(done) ~= nil or next(begun) ~= nil, begun)
  if e.kept == 1 and e.status == "done" then -- keep = true: a rollback leaves what it made
    self:undo_noted(e.step, e.id, "kept", true)
    j:set_effect_undo(e.id, "kept")
    return true, nil, "kept"
  end
  if not e.inverse then
    if irreversible then
      j:set_effect_undo(e.id, "irreversible")
      return true, nil, "irreversible"
    end
    local err = string.format("%s %s", e.no_inverse or (e.op .. " cannot be undone"), e.args)
    self:undo_noted(e.step, e.id, "inverse", false, err)
    j:set_effect_undo(e.id, "undo-failed", err)
    return false, err
  end
  local now = e.before and self:restate_on(e.host, e.before)
  if now and next(done) == nil and next(begun) == nil then
    local outlook, diff = M.outlook(e, now)
    if outlook == "already-undone" then
      self:undo_noted(e.step, e.id, "already-undone", true)
      j:set_effect_undo(e.id, "undone")
      return true, nil, "already undone"
    elseif outlook == "changed" and not self.opts.force then
      local err = string.format("%s: changed since the run: %s (hrun rollback --force overwrites it)", e.op, diff)
      self:undo_noted(e.step, e.id, "inverse", false, err)
      j:set_effect_undo(e.id, "undo-failed", err)
      return false, err
    end
  end
  self.undoing = true
  self.priv.setstrict(false)
  self.priv.seteffect(self.run_id, e.id)
  local ok, err, held = true, nil, 0
  for i, op in ipairs(e.inverse) do
    if not done[i] and self:holds_kept(e.run, op) then
      held = held + 1
    elseif not done[i] then
      local uid = j:undo_begin({ run = self.run_id, step = e.step, effect = e.id, op = i,
        how = self.opts.force and "forced" or "inverse", started = sys.now() })
      self:maybe_crash("undo-op")
      -- the journal's operation, not the playbook's: trusted there too, and done once there
      self.inverse_op = { run = e.run, effect = e.id, op = i }
      ok, err = self:run_op(op, e.status == "intent" or begun[i])
      self.inverse_op = nil
      j:undo_end(uid, ok and "ok" or "failed", err, sys.now())
      if not ok then
        break
      end
    end
  end
  self.priv.seteffect(nil)
  self.priv.setstrict(true)
  self.undoing = false
  local how = "inverse"
  if ok and held > 0 and held == #e.inverse then -- all it made holds what is kept
    self:undo_noted(e.step, e.id, "kept", true)
    j:set_effect_undo(e.id, "kept")
    return true, nil, "kept"
  end
  if not ok and e.before and complete(e.before) then
    -- the operation failed, yet what the effect changed is back as it was (and its
    -- state says all there is to it: a file, a subvolume, a ref)
    now = self:restate_on(e.host, e.before)
    if now and same(e.before, now) then
      ok, err, how = true, nil, "already undone"
    end
  end
  j:set_effect_undo(e.id, ok and "undone" or "undo-failed", err)
  return ok, err, how
end

-- Undoes the effects a step journaled that are not undone yet, newest first. Returns
-- ok, problems.
-- Does an undo operation remove a directory (or subvolume) that holds what a kept write
-- of the run made (fs.mkdir's undo, under pg.dumpall's kept dump)? Then it stays: the
-- removal would fail on it, or take the kept copy with it.
function Runner:holds_kept(run, op)
  local path = (op.op == "fs.remove" or op.op == "btrfs.delete") and type(op.args) == "table" and op.args[1]
  if type(path) ~= "string" then
    return false
  end
  for _, t in ipairs(self.journal:kept_targets(run)) do
    if t:sub(1, #path + 1) == path .. "/" then
      return true
    end
  end
  return false
end

function Runner:undo_effects(step_id, irreversible)
  local problems = {}
  for _, e in ipairs(self.journal:effects_to_undo(step_id)) do
    local ok, err, how = self:undo_effect(e, irreversible)
    self:emit({ event = "undo-effect", op = e.op, status = how == "kept" and "kept" or ok and "undone" or "failed",
      how = how, error = err, effect = e.id })
    self:maybe_crash("undo-effect")
    if not ok then
      problems[#problems + 1] = err
    end
  end
  if #problems > 0 then
    return false, table.concat(problems, "; ")
  end
  return true
end

-- Removes what a crash may have left of effect e: the temporaries of the write, when
-- hrun died before its result (intent), and of an earlier undo of it (undo_begun); the
-- lock files and scratch files a killed git write leaves, made since the write began or,
-- for a done effect, since the inverse operation that was cut began (begun: {[op] =
-- started}) — older ones are not hrun's, and may be a person's.
function Runner:remove_leftovers(e, undo_begun, begun)
  local states = e.before or e.after
  if not states or not (e.status == "intent" or undo_begun) then
    return
  end
  local since = e.started
  if e.status ~= "intent" then
    since = nil
    for _, started in pairs(begun or {}) do
      since = math.min(since or started, started)
    end
    if not since then -- only finished operations: each removed its own locks
      local copy = {}
      for i, st in ipairs(states) do
        copy[i] = { kind = st.kind, target = st.target, key = st.key, fp = st.fp, aside_of = st.aside_of }
      end
      states = copy
    end
  end
  local ok, removed
  if e.host then
    ok, removed = pcall(function()
      return self:host(e.host):priv_call("leftovers", self.run_id, e.id, states, since)
    end)
  else
    ok, removed = pcall(self.priv.leftovers, self.run_id, e.id, states, since)
  end
  if ok and type(removed) == "table" and #removed > 0 then
    self:emit({ event = "log", message = "removed what a crash left: " .. table.concat(removed, ", ") })
  end
end

-- Removes what a crash left of a step's effects (their temporaries) without undoing
-- them: a step that resumes as it is (resume = "rerun").
function Runner:clean_leftovers(step_id)
  for _, e in ipairs(self.journal:effects_to_undo(step_id)) do
    self:remove_leftovers(e, false)
  end
end

local function find_in(pb, phase, name)
  for _, ph in ipairs(pb and pb.phases or {}) do
    if ph.name == phase then
      for _, item in ipairs(ph.items) do
        if item.kind == "step" and item.name == name then
          return item
        end
      end
    end
  end
end

function Runner:find_step(phase, name)
  return find_in(self.pb, phase, name)
end

-- The step as the playbook version that ran it defines it (a --debug retry may have
-- run a newer one): the file, when it is that version; else the copy the journal kept.
-- nil and why when neither is there.
function Runner:ran_as(s)
  local hash = s.playbook or self.run_hash
  local pb, why = nil, nil
  if self.pb and (hash == nil or hash == self.pb_hash) then
    pb = self.pb
  elseif self.versions then
    pb, why = self.versions(hash)
  end
  if not pb then
    return nil, why or string.format("the playbook version that ran it (sha256 %s) is not available",
      tostring(hash):sub(1, 16))
  end
  return find_in(pb, s.phase, s.name)
end

-- Runs a completed step's own undo function (the version that ran it), journaled.
function Runner:run_undo_function(s, def)
  local uid = self.journal:undo_begin({ run = self.run_id, step = s.id, how = "undo", started = sys.now() })
  local ctx = self:ctx(s.phase, s.name, s.state)
  self.current = { kind = "step", id = s.id, name = s.name, phase = s.phase, def = def }
  self.undoing = true
  -- its temporaries are named from the attempt, and what it writes to is journaled
  self.undo_attempt = { id = uid, states = {} }
  self.priv.seteffect(self.run_id, -uid)
  -- where the step ran: the calls of an `on = NAME` step's undo function go to that host
  local ok, err = self:on_host(def.on, function()
    return self:xpcall_playbook(def.undo, ctx)
  end)
  self.priv.seteffect(nil)
  self.undo_attempt = nil
  self.undoing = false
  self.current = nil
  if self.priv.interrupted() > 0 then
    self.priv.clearinterrupt()
    self.interrupted = true
    ok, err = false, "interrupted"
  end
  -- committed with the step's undo status (undo_step): a crash between the two must not
  -- leave an undo function done and its step not undone, to be run twice
  self.journal:undo_end(uid, ok and "ok" or "failed", not ok and tostring(err) or nil, sys.now(), true)
  return ok, err
end

-- Undoes one journaled step: a completed step with an undo function by that function
-- (of the version that ran it), any other by the inverses of its effects. Where the
-- undo function is not to be had, the step is not undone (--force: by its inverses).
function Runner:undo_step(s)
  -- what an earlier attempt of its undo function left when hrun died in it
  for _, u in ipairs(self.journal:undo_interrupted(s.id)) do
    local ok, removed = pcall(self.priv.leftovers, self.run_id, -u.id, u.targets, u.started)
    if ok and type(removed) == "table" and #removed > 0 then
      self:emit({ event = "log", phase = s.phase, step = s.name,
        message = "removed what a crash left: " .. table.concat(removed, ", ") })
    end
  end
  local ok, err, how
  if s.status == "done" and s.has_undo == 1 then
    local def, why = self:ran_as(s)
    if def and def.undo then
      how = "undo"
      ok, err = self:run_undo_function(s, def)
      if not ok and self.opts.force then
        self:emit({ event = "log", phase = s.phase, step = s.name,
          message = "its undo function failed (" .. tostring(err) .. "): --force undoes it with its inverses" })
        how = "inverses (--force: its undo function failed)"
        ok, err = self:undo_effects(s.id, s.irreversible == 1)
      end
    else
      why = why or "the playbook version that ran it has no undo function for it"
      if self.opts.force then
        how = "inverses (--force: " .. why .. ")"
        ok, err = self:undo_effects(s.id, s.irreversible == 1)
      else
        how = "undo"
        ok, err = false, "its undo function is not available: " .. why ..
          " (hrun rollback --force undoes it with the journaled inverses instead)"
        self:undo_noted(s.id, nil, "undo", false, err)
      end
    end
  else
    how = "inverses"
    -- a handler's writes without an inverse (a restart) are not undone: it runs again
    -- after the rollback instead (rerun_handlers)
    ok, err = self:undo_effects(s.id, s.irreversible == 1 or s.kind == "handler")
  end
  self.journal:set_step_undo(s.id, ok and "undone" or "undo-failed", not ok and tostring(err) or nil)
  self:emit({ event = "undo", phase = s.phase, step = s.name, how = how, status = ok and "undone" or "failed",
    error = err })
  return ok, err
end

-- Rolls back every step of the run not undone yet, newest first. Returns "rolled-back"
-- when the journal shows every step undone, else "rollback-incomplete".
function Runner:rollback(reason)
  self:emit({ event = "rollback-start", reason = reason })
  for _, s in ipairs(self.journal:steps_to_undo(self.run_id)) do
    self:undo_step(s)
  end
  local handlers_failed = self:rerun_handlers()
  local left = self.journal:not_undone(self.run_id)
  local status = left == 0 and #handlers_failed == 0 and "rolled-back" or "rollback-incomplete"
  self:emit({ event = "rollback-end", status = status, failed = left,
    handlers_failed = #handlers_failed > 0 and json.array(handlers_failed) or nil })
  return status
end

-- Stops the children a crash left running (their calls never returned), before
-- anything else is done: they must not race the resume or the rollback.
function Runner:stop_children()
  local rows = self.journal:live_children(self.run_id)
  if #rows == 0 then
    return
  end
  for _, c in ipairs(self.priv.reap(rows)) do
    self:emit({ event = "log", message = string.format("stopped %s (process group %d, %d process%s), left " ..
      "running by the crash, with %s", tostring(c.argv0), c.pgid, c.processes, c.processes == 1 and "" or "es",
      c.signal) })
  end
  local ids = {}
  for i, c in ipairs(rows) do
    ids[i] = c.id
  end
  self.journal:children_returned(ids)
  self.journal:commit()
end

-- }======================================================

-- {======================================================
-- Handlers, tags, --step
-- ======================================================

-- The handler `name` as a step of phase `phase` names it: the phase's own, else the
-- playbook's; and where it is defined ("phase", "playbook"). pb: another version.
function Runner:find_handler(phase, name, pb)
  pb = pb or self.pb
  for _, ph in ipairs(pb and pb.phases or {}) do
    if ph.name == phase then
      for _, h in ipairs(ph.handlers or {}) do
        if h.name == name then
          return h, "phase"
        end
      end
    end
  end
  for _, h in ipairs(pb and pb.handlers or {}) do
    if h.name == name then
      return h, "playbook"
    end
  end
end

-- The names a step of phase `phase` may notify, sorted.
function Runner:notifiable(phase)
  local names, seen = {}, {}
  for _, ph in ipairs(self.pb.phases) do
    for _, h in ipairs(ph.name == phase and ph.handlers or {}) do
      seen[h.name] = true
    end
  end
  for _, h in ipairs(self.pb.handlers or {}) do
    seen[h.name] = true
  end
  for k in pairs(seen) do
    names[#names + 1] = k
  end
  table.sort(names)
  return names
end

-- ctx.notify(name) from a step's run: kept for the step's end (a step that fails
-- notifies nothing). ok | nil, why.
function Runner:ctx_notify(ctx, phase, step, name)
  local cur = self.current
  if not (cur and cur.kind == "step" and cur.name == step and cur.def and cur.def.kind == "step") then
    return nil, "ctx.notify: only a step's run notifies handlers"
  end
  if type(name) ~= "string" or not self:find_handler(phase, name) then
    local near = type(name) == "string" and self.priv.nearest(name, self:notifiable(phase))
    return nil, string.format("ctx.notify: no handler '%s' in phase '%s' or the playbook%s", tostring(name), phase,
      near and string.format(" (did you mean '%s'?)", near) or "")
  end
  self.ctx_notes = self.ctx_notes or setmetatable({}, { __mode = "k" })
  local notes = self.ctx_notes[ctx] or {}
  notes[#notes + 1] = name
  self.ctx_notes[ctx] = notes
  return true
end

-- At the end of a step that succeeded (before its end is committed): the handlers it
-- notified (notify = {…} when it changed something, ctx.notify always) are journaled
-- pending; a handler's run marks the notifications it handled.
function Runner:record_notifications(step, ctx)
  if step.kind ~= "step" then -- a handler's run: what it handled
    if not self.plan and step.notes then
      self.journal:handled(step.notes, self.last_step_id)
    end
    return
  end
  local names, seen = {}, {}
  local function add(name)
    if not seen[name] then
      seen[name], names[#names + 1] = true, name
    end
  end
  if step.notify and #step.notify > 0 and self:step_changed() then
    for _, name in ipairs(step.notify) do
      add(name)
    end
  end
  for _, name in ipairs(self.ctx_notes and self.ctx_notes[ctx] or {}) do
    add(name)
  end
  for _, name in ipairs(names) do
    local _, scope = self:find_handler(step.phase, name)
    if self.plan then
      self.plan_pending = self.plan_pending or {}
      table.insert(self.plan_pending, { phase = step.phase, handler = name, scope = scope, step_name = step.name })
    else
      self.journal:notified(self.run_id, self.last_step_id, step.phase, name, scope)
    end
    self:emit({ event = "notify", phase = step.phase, step = step.name, handler = name })
  end
end

-- Runs the pending handlers at the end of phase ph, once each: the phases' own first,
-- then the playbook's, each in the order written. nil, or the failure.
function Runner:run_handlers(ph)
  local pending = self.plan and (self.plan_pending or {}) or self.journal:pending_notifications(self.run_id)
  self.plan_pending = nil
  if #pending == 0 then
    return nil
  end
  local by = {} -- handler key → {ids, steps}
  for _, n in ipairs(pending) do
    local key = n.scope == "playbook" and ("/" .. n.handler) or (n.phase .. "/" .. n.handler)
    local b = by[key] or { ids = {}, steps = {}, seen = {} }
    b.ids[#b.ids + 1] = n.id
    if not b.seen[n.step_name] then
      b.seen[n.step_name], b.steps[#b.steps + 1] = true, n.step_name
    end
    by[key] = b
  end
  local order = {}
  for _, p in ipairs(self.pb.phases) do
    for _, h in ipairs(p.handlers or {}) do
      order[#order + 1] = { key = p.name .. "/" .. h.name, h = h, phase = p.name }
    end
  end
  for _, h in ipairs(self.pb.handlers or {}) do
    order[#order + 1] = { key = "/" .. h.name, h = h, phase = ph.name }
  end
  for _, o in ipairs(order) do
    local b = by[o.key]
    if b then
      local failure = self:run_handler(o.h, o.phase, b.steps, b.ids, "handler")
      if failure then
        return failure
      end
    end
  end
end

-- Runs one handler as a step of phase `phase` (journaled as `kind`), notified by the
-- steps named. nil, or the failure.
function Runner:run_handler(h, phase, steps, ids, kind)
  local skip = self:tag_skip(h, nil, true)
  self:emit({ event = "handler", phase = phase, handler = h.name, notified_by = json.array(steps),
    planned = self.plan or nil, rollback = kind == "rollback-handler" or nil, skipped = skip })
  if skip then
    self:emit({ event = "step-skip", phase = phase, step = h.name, reason = skip })
    return nil
  end
  local item = { kind = kind, name = h.name, phase = phase, loc = h.loc, run = h.run, undo = h.undo,
    timeout = h.timeout, retries = h.retries, retry_delay = h.retry_delay, notes = ids }
  local ok, err = self:run_step(item)
  if not ok then
    return string.format("handler '%s' failed: %s", h.name, err)
  end
end

-- After a rollback's undos: the handlers the undone steps had notified (and that had
-- run) run again, once each, in the order of a phase's end, so that a service restarts
-- on the restored configuration. Returns the names of those that failed.
function Runner:rerun_handlers()
  local failed = {}
  local rows = self.journal:handlers_to_rerun(self.run_id)
  if #rows == 0 then
    return failed
  end
  local pb = self.pb or (self.versions and self.versions(self.run_hash))
  -- in the order of a phase's end: the phases' handlers, then the playbook's, as written
  local rank, k = {}, 0
  for _, ph in ipairs(pb and pb.phases or {}) do
    for _, h in ipairs(ph.handlers or {}) do
      k = k + 1
      rank["phase\0" .. ph.name .. "\0" .. h.name] = k
    end
  end
  for _, h in ipairs(pb and pb.handlers or {}) do
    k = k + 1
    rank["playbook\0\0" .. h.name] = k
  end
  local function rank_of(n)
    return rank[n.scope .. "\0" .. (n.scope == "phase" and n.phase or "") .. "\0" .. n.handler] or math.huge
  end
  table.sort(rows, function(a, b)
    local ra, rb = rank_of(a), rank_of(b)
    if ra ~= rb then
      return ra < rb
    end
    return a.first < b.first
  end)
  for _, n in ipairs(rows) do
    local h = self:find_handler(n.phase, n.handler, pb)
    local err
    if not h then
      err = string.format("handler '%s' is not in the playbook version at hand", n.handler)
    else
      local steps = {}
      for name in tostring(n.steps):gmatch("[^,]+") do
        steps[#steps + 1] = name
      end
      err = self:run_handler(h, n.phase, steps, nil, "rollback-handler")
    end
    if err then
      failed[#failed + 1] = n.handler
      self:emit({ event = "error", message = "after the rollback: " .. err })
    end
  end
  return failed
end

-- --tags, --skip-tags, --from, --only: the run's own, journaled; a resumed run keeps
-- those it began with (steps it left out stay out).
function Runner:tag_selection()
  for _, key in ipairs({ "tags", "skip_tags" }) do -- "a,b" given once or more → {"a", "b"}
    local given = self.opts[key]
    if type(given) == "table" and not given.split then
      local list = { split = true }
      for _, v in ipairs(given) do
        for t in tostring(v):gmatch("[^,%s]+") do
          list[#list + 1] = t
        end
      end
      self.opts[key] = list
    end
  end
  if not self.journal then
    return
  end
  local o = self.opts
  if self.resumed then
    local r = self.journal.db:query("SELECT selection FROM runs WHERE id = ?", self.run_id)[1]
    local sel = r and r.selection and json.decode(r.selection)
    if type(sel) == "table" then
      o.tags, o.skip_tags, o.from, o.only = sel.tags, sel.skip_tags, sel.from, sel.only
    end
  elseif o.tags or o.skip_tags or o.from or o.only then
    local function list(t)
      return t and json.array({ table.unpack(t) }) or nil
    end
    self.journal:set_run(self.run_id, { selection = json.encode({ tags = list(o.tags), skip_tags = list(o.skip_tags),
      from = o.from, only = o.only }) })
  end
end

-- Why --tags or --skip-tags leave item out (a step, with its phase ph; a handler), or
-- nil. `always` runs unless --skip-tags names it; --tags does not leave handlers out.
function Runner:tag_skip(item, ph, is_handler)
  local want, skip = self.opts.tags, self.opts.skip_tags
  if not (want or skip) then
    return nil
  end
  local have = {}
  for _, list in ipairs({ item.tags or {}, ph and ph.tags or {} }) do
    for _, t in ipairs(list) do
      have[t] = true
    end
  end
  for _, t in ipairs(skip or {}) do
    if have[t] then
      return string.format("tagged '%s', --skip-tags", t)
    end
  end
  if not want or is_handler or have.always then
    return nil
  end
  for _, t in ipairs(want) do
    if have[t] then
      return nil
    end
  end
  return "not tagged " .. table.concat(want, " or ") .. " (--tags)"
end

-- A phase none of whose steps --tags/--skip-tags select is left out, its checks too.
function Runner:phase_untagged(sel)
  if not (self.opts.tags or self.opts.skip_tags) then
    return nil
  end
  for _, item in ipairs(sel.items) do
    if item.kind == "step" and not self:tag_skip(item, sel.phase) then
      return nil
    end
  end
  return "no step selected by --tags/--skip-tags"
end

-- --step: asks before each step; the reason to skip it, or nil to run it.
function Runner:step_refused(item)
  if not self.opts.step or self.plan or self.step_all then
    return nil
  end
  self.ui:pause()
  local answer
  repeat
    io.stderr:write(string.format("run step '%s'? [y]es / [n]o (skip) / [c]ontinue without asking ", item.name))
    io.stderr:flush()
    local line = io.stdin:read("l")
    answer = line == nil and "n" or line:match("^%s*(%a)") or ""
    answer = answer:lower()
  until answer == "y" or answer == "n" or answer == "c"
  self.ui:resume()
  if answer == "c" then
    self.step_all = true
  end
  return answer == "n" and "skipped at --step" or nil
end

-- }======================================================

-- {======================================================
-- The run
-- ======================================================

-- Which items run, given --from (a step name, or phase/step) and --only (a phase).
local function selected_phases(self)
  local from = self.opts.from
  local started = from == nil
  local out = {}
  for _, ph in ipairs(self.pb.phases) do
    if self.opts.only == nil or ph.name == self.opts.only then
      local items = {}
      for _, item in ipairs(ph.items) do
        if not started and item.kind == "step" and (item.name == from or ph.name .. "/" .. item.name == from) then
          started = true
        end
        if started or item.kind == "check" then
          items[#items + 1] = item
        end
      end
      if started then
        out[#out + 1] = { phase = ph, items = items }
      end
    end
  end
  return out
end

-- Runs the steps that follow with another version of the playbook (a --debug retry
-- reloaded it): the journal keeps its content, and the steps it runs say which it was.
function Runner:adopt(pb, hash, src)
  if hash ~= self.pb_hash and self.journal then
    self.journal:keep_playbook(hash, self.path, src)
    self:emit({ event = "playbook-reloaded", path = self.path, hash = hash, previous = self.pb_hash })
  end
  self.pb, self.pb_hash = pb, hash
end

-- Runs a step; with --break or --debug, hands control to the debugger (self.debugger,
-- hrun.debugger) before it or when it fails: retry (the playbook reloaded from disk),
-- skip, continue (accept it as done) or roll back.
function Runner:step_with_debugger(item)
  local dbg = self.debugger
  if dbg and dbg:breaks_at(item) then
    local action = dbg:prompt("break", item, nil, self:ctx(item.phase, item.name))
    if action == "skip" then
      self:emit({ event = "step-skip", phase = item.phase, step = item.name, reason = "skipped in the debugger" })
      return true
    elseif action == "rollback" then
      return false, "rolled back from the debugger"
    end
  end
  local ok, err = self:run_step(item)
  while not ok and dbg and dbg.on_failure and not self.interrupted do
    local id = self.last_step_id
    local action = dbg:prompt("failed", item, err, self.last_ctx)
    if action == "rollback" then
      break
    end
    local undo_ok, undo_err = true, nil
    if action ~= "continue" and id then
      undo_ok, undo_err = self:undo_effects(id, item.irreversible)
      if undo_ok then
        self.journal:set_step_undo(id, "undone")
      end
    end
    if not undo_ok then
      err = err .. "; its effects could not be undone: " .. undo_err
      break
    end
    if action == "retry" then
      item = dbg:reload(item) or item
      ok, err = self:run_step(item)
    elseif action == "skip" then
      if id then
        self.journal:set_step_status(id, "skipped")
      end
      self:emit({ event = "step-skip", phase = item.phase, step = item.name, reason = "skipped in the debugger" })
      ok = true
    elseif action == "continue" then
      if id then
        self:settle(self.last_effects or {})
        self.journal:set_step_status(id, "done")
      end
      self:emit({ event = "log", phase = item.phase, step = item.name, message = "accepted as done in the debugger" })
      ok = true
    end
  end
  return ok, err
end

-- A fleet's member (hrun.fleet) asks its fleet before each step it would run, on
-- stdout beside its events, and waits for the answer on stdin: "go", "skip WHY" (a
-- run_once step another host ran), "stop WHY" (the others finish their step and stop) or
-- "fail WHY" (the step fails without running: the run is rolled back). No answer (the
-- fleet's process is gone) stops it: a resume of the fleet run continues it.
function Runner:fleet_gate(item)
  if not self.step_index then -- each step's place in the playbook: the same in every member
    local index, n = {}, 0
    for _, ph in ipairs(self.pb.phases) do
      for _, it in ipairs(ph.items or {}) do
        if it.kind == "step" then
          n = n + 1
          index[ph.name .. "/" .. it.name] = n
        end
      end
    end
    self.step_index = index
  end
  io.stdout:write(json.encode({ event = "fleet-gate", index = self.step_index[item.phase .. "/" .. item.name],
    phase = item.phase, step = item.name, run_once = item.run_once or nil }), "\n")
  io.stdout:flush()
  local line = io.stdin:read("l")
  if not line then
    return "stop", "the fleet's process is gone"
  end
  local word, why = line:match("^(%a+)%s*(.*)$")
  return word or "stop", why ~= "" and why or nil
end

-- Runs the phases; returns nil when all went well, else the failure's message.
function Runner:execute()
  self:tag_selection()
  for _, sel in ipairs(selected_phases(self)) do
    local ph = sel.phase
    local untagged = self:phase_untagged(sel)
    if untagged then
      self:emit({ event = "phase-skip", phase = ph.name, reason = untagged })
      goto next_phase
    end
    if ph.when then
      local ok, res = self:call_as("when", ph.name, ph.name, ph.when, self:ctx(ph.name, nil))
      if not ok then
        return string.format("phase '%s': when: %s", ph.name, res)
      elseif not res then
        self:emit({ event = "phase-skip", phase = ph.name, reason = "when is false" })
        goto next_phase
      end
    end
    do
      local started = sys.now()
      local pid = not self.plan and self.journal:new_phase(self.run_id, ph.name, started)
      self:emit({ event = "phase-start", phase = ph.name })
      self.phase_recap = M.recap()
      local failure
      -- a phase's checks run before its steps
      for _, item in ipairs(sel.items) do
        if item.kind == "check" and not failure then
          local ok, err = self:run_check(item)
          if not ok then
            failure = string.format("check '%s' failed: %s", item.name, err)
          end
        end
      end
      for _, item in ipairs(sel.items) do
        if item.kind == "step" and not failure then
          local done = self.resume_done and self.resume_done[ph.name .. "/" .. item.name]
          local skip = not done and (self:tag_skip(item, ph) or self:step_refused(item))
          if done then
            -- counted in the recap as what the journal says it did
            self:emit({ event = "step-skip", phase = ph.name, step = item.name, reason = "done before the crash",
              done = true, changed = type(done) == "table" and (done.changed == 1 or done.changed == true) })
          elseif skip then
            self:emit({ event = "step-skip", phase = ph.name, step = item.name, reason = skip })
          else
            local word, why = "go", nil
            if self.fleet_host and not self.plan then
              word, why = self:fleet_gate(item)
            end
            if word == "skip" then
              self:emit({ event = "step-skip", phase = ph.name, step = item.name, reason = why })
            elseif word == "stop" then
              self.fleet_stopped = true
              self:emit({ event = "log", phase = ph.name, step = item.name, message = "stopped by the fleet: " ..
                tostring(why) })
              failure = "stopped by the fleet: " .. tostring(why)
            elseif word == "fail" then
              failure = string.format("step '%s' not run: %s", item.name, tostring(why))
            else
              local ok, err = self:step_with_debugger(item)
              if not ok then
                failure = string.format("step '%s' failed: %s", item.name, err)
              end
            end
          end
        end
      end
      if not failure then
        failure = self:run_handlers(ph)
      end
      if pid then
        self.journal:end_phase(pid, failure and "failed" or "done", sys.now())
      end
      self:emit({ event = "phase-end", phase = ph.name, status = failure and "failed" or "done",
        seconds = sys.now() - started })
      local counts = self.phase_recap
      self.phase_recap = nil
      self.phase_recaps = self.phase_recaps or {}
      local entry = { phase = ph.name }
      for k, v in pairs(counts) do
        entry[k] = v
      end
      table.insert(self.phase_recaps, entry)
      self:emit_recap(ph.name, counts)
      if failure then
        return failure
      end
    end
    ::next_phase::
  end
end

-- The run from start to end: returns the exit status.
function Runner:run()
  local started = sys.now()
  local git = self.git and self.git.commit and { commit = self.git.commit, dirty = self.git.dirty } or nil
  self:emit({ event = "run-start", run = self.run_id, playbook = self.pb.name, version = self.pb.version,
    path = self.path, plan = self.plan or false, resumed = self.resumed or nil, params = self.params, git = git,
    sandbox = self.sandbox and self.pb.box and self.pb.box.confinement or nil })
  self:install_hooks()
  -- every host reached before anything changes
  local ok, failure = pcall(self.preflight, self)
  if ok and failure then
    self.unreached = true
    self:emit({ event = "error", message = failure })
  elseif ok then
    ok, failure = pcall(self.execute, self)
  end
  if not ok then -- the engine itself failed (the journal, a hook), or Ctrl-C hit it
    failure = "hrun: " .. message_of(failure)
  end
  if self.priv.interrupted() > 0 then -- an interrupt outside a step: rollback must not see it
    self.priv.clearinterrupt()
    self.interrupted = true
  end
  if self.plan then
    self:emit_capabilities()
  end
  local status
  if self.plan then
    status = failure and "failed" or "planned"
  elseif not failure then
    status = "done"
  elseif self.pb.on_failure == "stop" or self.fleet_stopped then
    status = "stopped"
  elseif self.unreached and self.journal:not_undone(self.run_id) == 0 then
    status = "failed" -- nothing changed: nothing to roll back
  else
    -- until the rollback ends, the journal does not show the run undone
    self.journal:set_run(self.run_id, { status = "rollback-incomplete", rollback_status = "running",
      rollback_started = sys.now() })
    self.journal:commit()
    local rok, res = pcall(self.rollback, self, failure)
    status = rok and res or "rollback-incomplete"
    if not rok then
      self:emit({ event = "error", message = "the rollback stopped: " .. message_of(res) })
    end
    self.journal:set_run(self.run_id, { rollback_status = status, rollback_ended = sys.now() })
  end
  self:remove_hooks()
  self:close_hosts()
  local exit = status == "planned" and 0 or (status == "failed" and 1) or M.EXIT[status]
  if self.interrupted and status ~= "rollback-incomplete" then
    exit = M.EXIT.interrupted
  end
  if not self.plan then
    self.journal:set_run(self.run_id, { status = status, outcome = status, error = failure, ended = sys.now(),
      interrupted = self.interrupted and 1 or 0 })
  end
  self:emit_recap(nil, self.recap)
  local ev = self:emit({ event = "run-end", run = self.run_id, status = status, exit = exit, error = failure,
    seconds = sys.now() - started, planned = self.plan and self.planned or nil,
    irreversible = self.plan and self.irreversible_planned or nil, unknown = self.plan and self.unknown or nil })
  if not self.plan then
    self.journal:commit()
    self:notify(ev)
  end
  return exit
end

-- A plan's account of capabilities: what the playbook declares, what its run would
-- use (each path, program, unit and URL) and whether the declaration covers it.
function Runner:emit_capabilities()
  local used = self.priv.capsused()
  table.sort(used, function(a, b)
    return a.need < b.need
  end)
  local list = json.array()
  for _, u in ipairs(used) do
    list[#list + 1] = { need = u.need, cap = u.cap, by = u.by, calls = u.calls, declared = u.declared }
  end
  self:emit({ event = "capabilities", declared = json.array(self.pb.capabilities), used = list,
    sandbox = self.sandbox or false })
end

-- --notify URL…: the run's end, sent once it is journaled; a notification that fails
-- is reported and changes nothing else.
function Runner:notify(ev)
  local urls = self.opts and self.opts.notify
  if not urls then
    return
  end
  local notify = require "hrun.notify"
  ev.playbook = ev.playbook or (self.pb and self.pb.name) or self.playbook_name
  for _, url in ipairs(urls) do
    local ok, sent, why = pcall(notify.run_end, url, ev, sys.hostname())
    if not ok then
      why = sent
    end
    if not (ok and sent) then
      self:emit({ event = "error", message = "--notify " .. url .. ": " .. tostring(why) })
    end
  end
end

-- Rolls back a finished or crashed run from the journal (hrun rollback). The run keeps
-- its own outcome and time; the rollback's are beside them.
function Runner:rollback_run(reason)
  local started = sys.now()
  self:emit({ event = "run-start", run = self.run_id, playbook = self.playbook_name, path = self.path,
    rollback = true })
  -- a crashed run's own end is the crash
  self.journal:set_run(self.run_id, { status = "rollback-incomplete", rollback_status = "running",
    rollback_started = started, outcome = self.outcome or "crashed" })
  self.journal:commit()
  self:install_hooks()
  local ok, status = pcall(function()
    self:stop_children()
    return self:rollback(reason)
  end)
  self:remove_hooks()
  self:close_hosts()
  if not ok then
    self:emit({ event = "error", message = message_of(status) })
    status = "rollback-incomplete"
  end
  self.journal:set_run(self.run_id, { status = status, rollback_status = status, rollback_ended = sys.now() })
  local exit = status == "rolled-back" and 0 or M.EXIT["rollback-incomplete"]
  local ev = self:emit({ event = "run-end", run = self.run_id, status = status, exit = exit,
    seconds = sys.now() - started })
  self.journal:commit()
  self:notify(ev)
  return exit
end

-- }======================================================

return M
