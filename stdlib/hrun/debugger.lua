-- hrun.debugger: the REPL as a playbook debugger.
--
-- hrun PLAYBOOK --debug opens the REPL when a step fails, with that step's ctx, its
-- error and the playbook in scope: retry() (after editing the playbook on disk: it is
-- reloaded), skip(), continue() (accept the step as done) or rollback() — as Ansible's
-- task debugger does. --break STEP opens it before STEP.
--
-- hrun repl PLAYBOOK loads a playbook with its parameters: phases() and steps() list
-- it, run_step(name) and run_check(name) run one on its own (journaled as a debug run
-- that rollback() undoes), ctx is the context of the last step run.

local dsl = require "hrun.dsl"
local play = require "hrun.play"
local repl = require "hrun.repl"
local runner_mod = require "hrun.runner"
local sys = require "hrun.sys"

local M = {}

local Debugger = {}
Debugger.__index = Debugger


local function lookup(pb, name)
  for _, ph in ipairs(pb.phases) do
    for _, item in ipairs(ph.items) do
      if item.name == name or ph.name .. "/" .. item.name == name then
        return item
      end
    end
  end
end

-- The names of a playbook's steps and checks, "phase/name", in order.
local function list_steps(pb, phase)
  local out = {}
  for _, ph in ipairs(pb.phases) do
    if phase == nil or ph.name == phase then
      for _, item in ipairs(ph.items) do
        out[#out + 1] = ph.name .. "/" .. item.name .. (item.kind == "check" and " (check)" or "")
      end
    end
  end
  return out
end

-- {======================================================
-- hrun PLAYBOOK --debug / --break STEP
-- ======================================================

function Debugger:breaks_at(item)
  for _, b in ipairs(self.opts.break_at or {}) do
    if b == item.name or item.phase .. "/" .. item.name == b then
      return true
    end
  end
  return false
end

-- Opens the REPL; returns the decision: "retry", "skip", "continue", "rollback".
function Debugger:prompt(why, item, err, ctx)
  local runner = self.runner
  runner.ui:pause()
  local decision
  local function decide(d)
    return function()
      decision = d
      return d
    end
  end
  local env = setmetatable({
    ctx = ctx, step = item.name, phase = item.phase, err = err, playbook = runner.pb,
    retry = decide("retry"), skip = decide("skip"), rollback = decide("rollback"),
    continue = decide("continue"), steps = function()
      return list_steps(runner.pb)
    end,
  }, { __index = _G })
  local actions = why == "break" and "continue() runs it, skip(), rollback()"
    or "retry() (the playbook is reloaded), skip(), continue() accepts it as done, rollback()"
  local banner = string.format("%s step '%s' (phase %s)%s\n  ctx, err and playbook are in scope; %s",
    why == "break" and "▶ break before" or "✗ failed:", item.name, item.phase,
    err and ("\n  " .. err:gsub("\n", "\n  ")) or "", actions)
  -- hooks off while the person types: what they run is theirs, not the step's
  runner:remove_hooks()
  local ropts = { env = env, color = self.opts.color, verbose = self.opts.verbose, banner = banner,
    history = self.history, finished = function()
      return decision ~= nil
    end }
  if self.priv.isatty(0) then
    repl.interactive(self.priv, ropts)
  else
    io.stdout:write(banner, "\n")
    repl.piped(self.priv, ropts, io.stdin)
  end
  runner:install_hooks()
  runner.ui:resume()
  decision = decision or (why == "break" and "continue" or "rollback") -- end of input
  runner:emit({ event = "log", phase = item.phase, step = item.name, message = "debugger: " .. decision })
  return decision
end

-- The step as the playbook on disk now defines it (after an edit), or nil.
function Debugger:reload(item)
  local ok, pb, hash, src = pcall(play.load, self.priv, self.runner.path, self.state)
  if not ok then
    local lines = getmetatable(pb) == play.Bad and pb.lines or { tostring(pb) }
    for _, line in ipairs(lines) do
      io.stderr:write("hrun: the playbook does not reload: ", line, "\n")
    end
    return nil
  end
  self.runner:adopt(pb, hash, src) -- journaled: a rollback undoes each step with the version that ran it
  return lookup(pb, item.phase .. "/" .. item.name)
end

-- hrun PLAYBOOK --debug|--break: a normal run with a debugger attached.
function M.run(priv, opts, path, state)
  local d = setmetatable({ priv = priv, opts = opts, state = state, on_failure = opts.debug,
    history = state .. "/repl_history" }, Debugger)
  return play.run(priv, opts, path, state, function(r)
    r.debugger = d
    d.runner = r
  end)
end

-- }======================================================

-- {======================================================
-- hrun repl PLAYBOOK
-- ======================================================

local Session = {}
Session.__index = Session

-- The debug run, made on the first step run: journal, lock, stash.
function Session:runner()
  if self.r then
    return self.r
  end
  local priv, opts = self.priv, self.opts
  -- the playbook's hosts (and -H): its `on = NAME` steps run there, as in a run
  local hosts = play.hosts(self.pb.hosts, opts)
  local lk, j, id = play.begin_run(priv, self.state, self.pb, self.path, self.hash, self.params, "debug", nil,
    nil, self.src, hosts)
  self.lock, self.journal = lk, j
  self.r = runner_mod.new({ priv = priv, ui = play.new_ui(priv, opts), pb = self.pb, params = self.params,
    journal = self.journal, run_id = id, path = self.path, opts = opts, pb_hash = self.hash, run_hash = self.hash,
    host_urls = hosts,
    versions = play.versions(priv, j, { path = self.path, sandbox = 0 }, self.state, opts) })
  self.r:emit({ event = "run-start", run = id, playbook = self.pb.name, version = self.pb.version, path = self.path })
  return self.r
end

function Session:find(name, kind)
  local item = lookup(self.pb, name)
  if not item or item.kind ~= kind then
    local names = {}
    for _, ph in ipairs(self.pb.phases) do
      for _, it in ipairs(ph.items) do
        if it.kind == kind then
          names[#names + 1] = it.name
        end
      end
    end
    local near = self.priv.nearest(tostring(name), names)
    -- no position: the engine's file and line mean nothing to the person at the prompt
    error(string.format("the playbook has no %s '%s'%s", kind, tostring(name),
      near and string.format(" (did you mean '%s'?)", near) or ""), 0)
  end
  return item
end

-- Runs one step or check of the playbook, under the hooks, in the debug run.
function Session:run_one(name, kind)
  local item = self:find(name, kind)
  local r = self:runner()
  r:install_hooks()
  local ok, err
  if kind == "step" then
    ok, err = r:run_step(item)
  else
    ok, err = r:run_check(item)
  end
  r:remove_hooks()
  return ok, err
end

function Session:close()
  if self.r then
    local status = self.rolled_back or "done"
    self.journal:set_run(self.r.run_id, { status = status, outcome = status, ended = sys.now() })
    self.priv.setstash(nil)
    self.journal:close()
    self.lock:release()
  end
end

-- session(priv, opts, path, state) → a session whose env the REPL uses
function M.session(priv, opts, path, state)
  path = play.absolute(path)
  if play.fetched(priv, path) then
    error(setmetatable({ lines = { path .. ": a playbook from hrun fetch runs in the capability sandbox; " ..
      "the REPL and the debugger have every power" } }, play.Bad), 0)
  end
  local pb, hash, src = play.load(priv, path, state)
  local params, problems = dsl.params(pb, opts.params_files or {}, opts.params or {}, priv.nearest)
  if not params then
    error(setmetatable({ lines = problems }, play.Bad), 0)
  end
  local s = setmetatable({ priv = priv, opts = opts, path = path, state = state, pb = pb, hash = hash,
    src = src, params = params }, Session)
  local env = setmetatable({}, { __index = _G })
  env.playbook = pb
  env.params = params
  -- phases() → the phase names
  env.phases = function()
    local out = {}
    for _, ph in ipairs(pb.phases) do
      out[#out + 1] = ph.name
    end
    return out
  end
  -- steps([phase]) → "phase/step" of every step and check
  env.steps = function(phase)
    return list_steps(pb, phase)
  end
  -- run_step(name) → ok, error: runs one step on its own, journaled
  env.run_step = function(name)
    local ok, err = s:run_one(name, "step")
    env.ctx = s.r.last_ctx
    return ok, err
  end
  -- run_check(name) → ok, error
  env.run_check = function(name)
    return s:run_one(name, "check")
  end
  -- rollback() → the status: undoes the steps this session ran, newest first
  env.rollback = function()
    if not s.r then
      return "nothing to undo"
    end
    s.r:install_hooks()
    local status = s.r:rollback("rollback() in the REPL")
    s.r:remove_hooks()
    s.rolled_back = status
    return status
  end
  s.env = env
  return s
end

-- }======================================================

return M
