-- hrun.ui: what a run looks like. On a terminal a live tree (phase ▸ step, ✓ ✗ ↶,
-- timings, command output indented under its step); elsewhere plain timestamped lines;
-- with --json one event object a line. Also the run history (hrun runs) and one run
-- in full (hrun show, --md for a migration log).

local codec = require "hrun.codec"
local pretty = require "hrun.pretty"
local sys = require "hrun.sys"

local M = {}

-- {======================================================
-- Describing calls and times
-- ======================================================

local function word(v)
  if type(v) == "string" then
    local s = pretty.utf8(v)
    if #v > 60 then
      return string.format("(%d bytes)", #v)
    elseif s == "" or s:find("[%s'\"\\]") then
      return pretty.quote(v)
    end
    return s
  elseif type(v) == "table" then
    local ok, text = pcall(require("hrun.json").encode, v)
    text = ok and text or "{…}"
    return #text > 60 and text:sub(1, 57) .. "…}" or text
  end
  return tostring(v)
end

-- "fs.write /etc/x (41 bytes)", "exec.run nixos-rebuild switch"
function M.call(op, args)
  local parts = { op }
  if (op == "exec.run") and type(args[1]) == "table" then
    for _, a in ipairs(args[1]) do
      parts[#parts + 1] = word(a)
    end
  else
    for i = 1, #args do
      if args[i] ~= require("hrun.json").null then
        parts[#parts + 1] = word(args[i])
      end
    end
  end
  return table.concat(parts, " ")
end

-- " @ 1a2b3c4d5e6f (dirty)": where a playbook came from, for the run's first line
function M.git(g)
  if not g or not g.commit then
    return ""
  end
  return " @ " .. g.commit:sub(1, 12) .. (g.dirty and " (dirty)" or "")
end

-- How an effect is undone, as a plan or -v shows it; step_undo: its step has an undo
-- function, which the rollback runs instead of the effects' inverses.
function M.inverse(inverse, why, step_undo)
  if step_undo then
    return "undone by the step's undo"
  elseif not inverse then
    return "cannot be undone: " .. tostring(why)
  elseif #inverse == 0 then
    return "nothing to undo"
  end
  local ops = {}
  for _, op in ipairs(inverse) do
    ops[#ops + 1] = M.call(op.op, op.args or {})
  end
  return "undo: " .. table.concat(ops, "; ")
end

-- "512 B", "1.5 GiB": a size for people
-- A handler event as words: "would run handler 'x', notified by step 'a', 'b'".
function M.handler_line(ev)
  local by = {}
  for i, s in ipairs(ev.notified_by or {}) do
    by[i] = "'" .. tostring(s) .. "'"
  end
  return string.format("%s handler '%s'%s, notified by step%s %s", ev.planned and "would run" or "running",
    ev.handler, ev.rollback and " again after the rollback" or "", #by == 1 and "" or "s", table.concat(by, ", "))
end

function M.bytes(n)
  local units = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" }
  local i = 1
  while n >= 1024 and i < #units do
    n, i = n / 1024, i + 1
  end
  return string.format(i == 1 and "%d %s" or "%.1f %s", n, units[i])
end

function M.seconds(s)
  if s == nil then
    return ""
  elseif s < 10 then
    return string.format("%.2fs", s)
  elseif s < 120 then
    return string.format("%.1fs", s)
  end
  return string.format("%dm%02ds", s // 60, math.floor(s % 60))
end

function M.timestamp(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

-- }======================================================

-- {======================================================
-- --json: one event a line
-- ======================================================

local Json = {}
Json.__index = Json

function Json.event(_, ev)
  io.stdout:write(codec.summary(ev, 8192), "\n")
  io.stdout:flush()
end

function Json.pause() end
function Json.tick() end
function Json.resume() end

-- }======================================================

-- {======================================================
-- Plain lines (not a terminal)
-- ======================================================

local Plain = {}
Plain.__index = Plain

function Plain.line(_, t, fmt, ...)
  io.stdout:write(M.timestamp(t), " ", string.format(fmt, ...), "\n")
  io.stdout:flush()
end

function Plain.pause() end
function Plain.tick() end
function Plain.resume() end

-- The parts of a sandboxed process's confinement, in the order they are said.
local CONFINED_BY = { { "nobody", "nobody" }, { "no_new_privs", "no_new_privs" },
  { "landlock", "Landlock (ABI %s)" }, { "seccomp", "seccomp" }, { "rlimit_as", "RLIMIT_AS" } }

-- "sandbox: a process of its own, confined by …", and what the kernel could not do.
function M.confinement(c)
  if type(c) ~= "table" then
    return nil
  end
  local held = {}
  for _, part in ipairs(CONFINED_BY) do
    if c[part[1]] then
      held[#held + 1] = part[2]:format(tostring(c[part[1]]))
    end
  end
  local text = "sandbox: a process of its own, confined by " .. (#held > 0 and table.concat(held, ", ") or "nothing")
  if c.missing and #c.missing > 0 then
    text = text .. "; MISSING: " .. table.concat(c.missing, "; ")
  end
  if c.note then
    text = text .. " (" .. c.note .. ")"
  end
  return text
end

local plain_events = {
  ["run-start"] = function(self, ev)
    if ev.rollback then
      self:line(ev.time, "rollback of run %s (%s)", tostring(ev.run), tostring(ev.playbook))
    else
      self:line(ev.time, "%s %s%s%s (%s%s)", ev.plan and "plan" or "run", ev.playbook,
        ev.version and (" " .. ev.version) or "",
        ev.run and (" #" .. ev.run) or "", ev.path, M.git(ev.git))
      if ev.sandbox then
        self:line(ev.time, "%s", M.confinement(ev.sandbox))
      end
    end
  end,
  ["phase-start"] = function(self, ev)
    self:line(ev.time, "phase %s", ev.phase)
  end,
  ["phase-skip"] = function(self, ev)
    self:line(ev.time, "phase %s skipped (%s)", ev.phase, ev.reason)
  end,
  check = function(self, ev)
    self:line(ev.time, "  check %s: %s%s", ev.check, ev.status, ev.error and (": " .. ev.error) or "")
  end,
  ["step-start"] = function(self, ev)
    self:line(ev.time, "  step %s ...", ev.step)
  end,
  ["step-skip"] = function(self, ev)
    self:line(ev.time, "  step %s skipped (%s)", ev.step, ev.reason)
  end,
  ["step-retry"] = function(self, ev)
    self:line(ev.time, "  step %s: attempt %d failed, retrying: %s", ev.step, ev.attempt, ev.error)
  end,
  ["step-end"] = function(self, ev)
    local err = ev.traceback or ev.error
    self:line(ev.time, "  step %s: %s (%s%s)%s", ev.step, ev.status, M.seconds(ev.seconds),
      (ev.attempts or 1) > 1 and (", " .. ev.attempts .. " attempts") or "",
      err and ("\n    " .. err:gsub("\n", "\n    ")) or "")
  end,
  effect = function(self, ev)
    if ev.planned or self.verbose then
      self:line(ev.time, "    %s %s  [%s]", ev.planned and "would" or "->", M.call(ev.op, ev.args),
        M.inverse(ev.inverse, ev.no_inverse, ev.step_undo))
      for _, l in ipairs(ev.preview and ev.preview.lines or {}) do
        self:line(ev.time, "      %s", l)
      end
    end
  end,
  output = function(self, ev)
    self:line(ev.time, "    | %s", ev.line)
  end,
  log = function(self, ev)
    self:line(ev.time, "    %s", ev.message)
  end,
  ["rollback-start"] = function(self, ev)
    self:line(ev.time, "rolling back: %s", ev.reason)
  end,
  undo = function(self, ev)
    self:line(ev.time, "  undo %s: %s (%s)%s", ev.step, ev.status, ev.how, ev.error and (": " .. ev.error) or "")
  end,
  ["undo-effect"] = function(self, ev)
    if self.verbose or ev.status ~= "undone" then
      self:line(ev.time, "    undo %s: %s%s", ev.op, ev.status, ev.error and (": " .. ev.error) or "")
    end
  end,
  ["rollback-end"] = function(self, ev)
    self:line(ev.time, "rollback %s", ev.status)
  end,
  handler = function(self, ev)
    self:line(ev.time, "  %s", M.handler_line(ev))
  end,
  notify = function(self, ev)
    self:line(ev.time, "    notified handler '%s'", ev.handler)
  end,
  error = function(self, ev)
    self:line(ev.time, "error: %s", ev.message)
  end,
  capabilities = function(self, ev)
    for _, l in ipairs(M.capability_lines(ev)) do
      self:line(ev.time, "%s", l)
    end
  end,
  ["run-end"] = function(self, ev)
    self:line(ev.time, "%s", M.summary(ev))
  end,
}

function Plain:event(ev)
  local f = plain_events[ev.event]
  if f then
    f(self, ev)
  end
end

-- }======================================================

-- {======================================================
-- The terminal: a live tree
-- ======================================================

local Tty = {}
Tty.__index = Tty

function Tty:c(code, s)
  return self.color and ("\27[" .. code .. "m" .. s .. "\27[0m") or s
end

-- Writes lines above the live line (the running step), then redraws it.
function Tty:print(s)
  if self.live then
    io.stdout:write("\r\27[K")
  end
  io.stdout:write(s, "\n")
  if self.live then
    io.stdout:write(self.live)
  end
  io.stdout:flush()
end

function Tty:set_live(s)
  self.live = s
  io.stdout:write("\r\27[K", s or "")
  io.stdout:flush()
end

local SPINNER = { "⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏" }

-- The running step's line: spinner, name, time so far.
function Tty:live_line()
  local frame = SPINNER[self.frame % #SPINNER + 1]
  local elapsed = M.seconds(sys.clock() - self.live_since)
  return "  " .. self:c("33", frame) .. " " .. self.live_step .. self:c("2", " " .. elapsed)
end

-- Called about every 0.1 s while a command or a sleep waits: the spinner turns.
function Tty:tick()
  if self.live_step then
    self.frame = self.frame + 1
    self:set_live(self:live_line())
  end
end

function Tty:pause()
  if self.live then
    io.stdout:write("\n")
  end
end

function Tty:resume()
  if self.live then
    io.stdout:write(self.live)
    io.stdout:flush()
  end
end

local function pad(name, width)
  local len = utf8.len(name) or #name
  return name .. string.rep(" ", math.max(1, width - len))
end

local tty_events = {
  ["run-start"] = function(self, ev)
    if ev.rollback then
      self:print(self:c("1", "↶ rollback of run " .. tostring(ev.run))
        .. self:c("2", " (" .. tostring(ev.playbook) .. ")"))
    else
      self:print(self:c("1", (ev.plan and "plan " or "▶ ") .. ev.playbook .. (ev.version and (" " .. ev.version) or ""))
        .. self:c("2", (ev.run and (" · run " .. ev.run) or "") .. " · " .. tostring(ev.path) .. M.git(ev.git)
          .. (ev.plan and " · nothing will be changed" or "")))
      if ev.sandbox then
        local weak = ev.sandbox.missing and #ev.sandbox.missing > 0
        self:print(self:c(weak and "33" or "2", M.confinement(ev.sandbox)))
      end
    end
  end,
  ["phase-start"] = function(self, ev)
    self:print(self:c("1;34", "● ") .. self:c("1", ev.phase))
  end,
  ["phase-skip"] = function(self, ev)
    self:print(self:c("2", "○ " .. ev.phase .. " — skipped (" .. ev.reason .. ")"))
  end,
  check = function(self, ev)
    local mark = ev.status == "ok" and self:c("32", "✓") or ev.status == "unknown" and self:c("33", "?")
      or self:c("31", "✗")
    self:print("  " .. mark .. " " .. pad(ev.check, 44) .. self:c("2", "check " .. M.seconds(ev.seconds)))
    if ev.error then
      self:print(self:c(ev.status == "unknown" and "33" or "31", "      " .. ev.error:gsub("\n", "\n      ")))
    end
  end,
  ["step-start"] = function(self, ev)
    self.live_step, self.live_since, self.frame = ev.step, sys.clock(), 0
    self:set_live(self:live_line())
  end,
  ["step-skip"] = function(self, ev)
    self:print("  " .. self:c("2", "- " .. pad(ev.step, 44) .. "skipped: " .. ev.reason))
  end,
  ["step-retry"] = function(self, ev)
    self:print(self:c("33", "      attempt " .. ev.attempt .. " failed, retrying: ") .. ev.error)
  end,
  ["step-end"] = function(self, ev)
    local mark = (ev.status == "done" or ev.status == "planned") and self:c("32", "✓") or self:c("31", "✗")
    self.live, self.live_step = nil, nil
    io.stdout:write("\r\27[K")
    local extra = (ev.attempts and ev.attempts > 1) and (" (" .. ev.attempts .. " attempts)") or ""
    self:print("  " .. mark .. " " .. pad(ev.step, 50) .. self:c("2", M.seconds(ev.seconds) .. extra))
    local err = ev.traceback or ev.error
    if err then
      self:print(self:c("31", "      " .. err:gsub("\n", "\n      ")))
    end
  end,
  effect = function(self, ev)
    if ev.planned or self.verbose then
      local arrow = ev.planned and "→ " or "· "
      local inv = M.inverse(ev.inverse, ev.no_inverse, ev.step_undo)
      self:print("      " .. arrow .. M.call(ev.op, ev.args))
      self:print(self:c((ev.inverse or ev.step_undo) and "2" or "33", "          " .. inv))
      for _, l in ipairs(ev.preview and ev.preview.lines or {}) do
        local colour = l:sub(1, 1) == "+" and "32" or l:sub(1, 1) == "-" and "31" or "36"
        self:print(self:c(colour, "          " .. l))
      end
    end
  end,
  output = function(self, ev)
    self:print(self:c("2", "      │ ") .. ev.line)
  end,
  log = function(self, ev)
    self:print(self:c("36", "      " .. ev.message))
  end,
  ["rollback-start"] = function(self, ev)
    local reason = tostring(ev.reason)
    reason = reason:match("^(step '.-' failed)") or reason:match("^(check '.-' failed)") or reason:gsub("\n.*", "")
    self:print(self:c("1;33", "↶ rolling back") .. self:c("2", " — " .. reason))
  end,
  undo = function(self, ev)
    local mark = ev.status == "undone" and self:c("33", "↶") or self:c("31", "✗")
    self:print("  " .. mark .. " " .. pad(ev.step, 50) .. self:c("2", ev.status .. " (" .. ev.how .. ")"))
    if ev.error then
      self:print(self:c("31", "      " .. ev.error:gsub("\n", "\n      ")))
    end
  end,
  ["undo-effect"] = function(self, ev)
    if self.verbose then
      self:print(self:c("2", "      ↶ " .. ev.op .. " " .. ev.status))
    end
  end,
  error = function(self, ev)
    self:print(self:c("31", "error: " .. ev.message))
  end,
  handler = function(self, ev)
    self:print("  " .. self:c("35", "» " .. M.handler_line(ev)))
  end,
  notify = function(self, ev)
    self:print(self:c("2", "      notified handler '" .. tostring(ev.handler) .. "'"))
  end,
  capabilities = function(self, ev)
    for _, l in ipairs(M.capability_lines(ev)) do
      self:print(l:find("NOT DECLARED", 1, true) and self:c("33", l) or self:c("2", l))
    end
  end,
  ["run-end"] = function(self, ev)
    local good = ev.status == "done" or ev.status == "planned" or ev.status == "rolled-back" and ev.exit == 0
    self:print(self:c(good and "1;32" or "1;31", (good and "✓ " or "✗ ") .. M.summary(ev)))
  end,
}

function Tty:event(ev)
  local f = tty_events[ev.event]
  if f then
    f(self, ev)
  end
end

-- }======================================================

-- A plan's capabilities event as lines: what is declared, then each thing used (those
-- not declared first and all of them; of the others the first 30).
function M.capability_lines(ev)
  local lines = { "capabilities declared: " .. (#ev.declared > 0 and table.concat(ev.declared, ", ") or "none") }
  if #ev.used == 0 then
    lines[#lines + 1] = "capabilities used: none"
    return lines
  end
  lines[#lines + 1] = "capabilities used:"
  local shown = 0
  for pass = 1, 2 do
    for _, u in ipairs(ev.used) do
      local ok = u.declared
      if (pass == 1) ~= ok then
        shown = shown + 1
        if not ok or shown <= 30 then
          lines[#lines + 1] = string.format("  %s %s (%s%s)%s", ok and "ok" or "NOT DECLARED", u.need, u.by,
            u.calls > 1 and (" ×" .. u.calls) or "", ok and "" or (ev.sandbox and " — the sandbox refuses it" or
            " — a sandboxed run refuses it"))
        end
      end
    end
  end
  if shown > 30 then
    lines[#lines + 1] = string.format("  … and %d more, all declared", shown - 30)
  end
  return lines
end

-- The last line of a run, for people.
function M.summary(ev)
  local t = M.seconds(ev.seconds)
  if ev.status == "planned" then
    return string.format("plan: %d write%s%s; nothing was changed", ev.planned or 0, ev.planned == 1 and "" or "s",
      (ev.irreversible or 0) > 0 and string.format(", %d cannot be undone", ev.irreversible) or "")
  elseif ev.status == "done" then
    return string.format("done in %s (run %s)", t, tostring(ev.run))
  elseif ev.status == "rolled-back" then
    if ev.error then
      return string.format("failed and rolled back: the changes are undone (run %s, exit %d)", tostring(ev.run),
        ev.exit)
    end
    return string.format("rolled back (run %s)", tostring(ev.run))
  elseif ev.status == "rollback-incomplete" then
    return string.format("ROLLBACK INCOMPLETE: some changes remain — 'hrun show %s' lists them (exit %d)",
      tostring(ev.run), ev.exit)
  elseif ev.status == "stopped" then
    return string.format("stopped (on_failure = \"stop\"): nothing was undone; 'hrun rollback %s' undoes it",
      tostring(ev.run))
  end
  return string.format("%s (exit %d)", tostring(ev.status), ev.exit or 1)
end

-- new{json, color, tty, verbose} → a renderer with :event(ev), :pause(), :resume()
function M.new(o)
  if o.json then
    return setmetatable({}, Json)
  elseif o.tty then
    return setmetatable({ color = o.color, verbose = o.verbose }, Tty)
  end
  return setmetatable({ verbose = o.verbose }, Plain)
end

-- {======================================================
-- History: hrun runs, hrun show
-- ======================================================

-- What the journal proves of a run now: a run that says running while nobody holds the
-- lock crashed; a rollback that says running while nobody holds it did not finish.
local function status_of(r, lock_free)
  if r.status == "running" and lock_free then
    return "crashed"
  end
  return r.status
end
M.status_of = status_of

-- How the run itself ended (a later rollback or resolve does not change it).
local function outcome_of(r, lock_free)
  if r.outcome then
    return r.outcome
  end
  return r.status == "running" and (lock_free and "crashed" or "running") or r.status
end

-- A later hrun rollback (not the rollback a failed run did itself), or nil.
local function later_rollback(r)
  local started = r.rollback_started
  if not started or (r.ended and started < r.ended) then
    return nil
  end
  return started
end

-- What happened to the run after it ended, in a few words: "" when nothing did.
local function afterwards(r, lock_free)
  local notes = {}
  local started = later_rollback(r)
  if started then
    local st = r.rollback_status
    if st == "running" then
      st = lock_free and "rollback stopped before its end" or "rolling back"
    elseif st == "rolled-back" then
      st = "rolled back"
    else
      st = "rollback incomplete"
    end
    notes[#notes + 1] = string.format("%s %s%s", st, M.timestamp(started),
      r.rollback_ended and r.rollback_ended >= started and (" in " .. M.seconds(r.rollback_ended - started)) or "")
  elseif r.rollback_status == "running" and lock_free and r.status == "rollback-incomplete" then
    notes[#notes + 1] = "its rollback stopped before its end"
  end
  if r.resolved then
    notes[#notes + 1] = string.format("resolved by %s: %s", tostring(r.resolved_by), r.resolved:gsub("\n", " "))
  end
  return table.concat(notes, "; ")
end

function M.runs_table(rows, lock_free)
  local out = {
    string.format("%-5s %-20s %-28s %-20s %9s  %-6s %s", "RUN", "STARTED", "PLAYBOOK", "STATUS", "TIME", "STEPS",
      "AFTERWARDS"),
  }
  for _, r in ipairs(rows) do
    out[#out + 1] = string.format("%-5d %-20s %-28s %-20s %9s  %-6s %s", r.id, M.timestamp(r.started),
      (r.playbook .. (r.version and (" " .. r.version) or "")):sub(1, 28), outcome_of(r, lock_free),
      r.ended and M.seconds(r.ended - r.started) or "-", string.format("%d/%d", r.steps_done or 0, r.steps_run or 0),
      afterwards(r, lock_free)):gsub("%s+$", "")
  end
  return table.concat(out, "\n") .. "\n"
end

local function effect_line(e)
  local args = (pcall(codec.decode, e.args)) and codec.decode(e.args) or {}
  local status = e.status .. (e.undo_status and (", " .. e.undo_status) or "")
  return string.format("%s  [%s]%s", M.call(e.op, type(args) == "table" and args or {}), status,
    e.error and (" " .. e.error:gsub("\n", " ")) or "")
end

-- A step's status with whether it is undone: "done, undone (undo function)".
local function step_status(s)
  if (s.kind ~= "step" and s.kind ~= "handler") or not s.undo_status then
    return s.status
  end
  local how
  for _, u in ipairs(s.undos or {}) do
    if u.status == "ok" then
      how = u.effect and "inverses" or "undo function"
    end
  end
  return string.format("%s, %s%s", s.status, s.undo_status, how and s.undo_status == "undone" and
    (" (" .. how .. ")") or "")
end

-- Steps that ran again in the same run (a --debug retry, a resume) and the playbook
-- versions they ran with: {[step] = "run again (2nd time; playbook reloaded, sha256 …)"}.
local function retries(r)
  local seen, notes = {}, {}
  for _, s in ipairs(r.steps) do
    if s.kind == "step" then
      local key = s.phase .. "/" .. s.name
      seen[key] = (seen[key] or 0) + 1
      local parts = {}
      if seen[key] > 1 then
        parts[#parts + 1] = string.format("ran again (attempt %d)", seen[key])
      end
      if s.playbook and s.playbook ~= r.hash then
        parts[#parts + 1] = string.format("with the playbook as reloaded (sha256 %s)", s.playbook:sub(1, 16))
      end
      if #parts > 0 then
        notes[s] = table.concat(parts, ", ")
      end
    end
  end
  return notes
end

local MAY_HAVE_CHANGED = { done = true, failed = true, running = true, interrupted = true }

-- The steps a rollback-incomplete (or resolved) run still has not undone, and why.
local function not_undone(r)
  local out = {}
  if r.status ~= "rollback-incomplete" and r.status ~= "resolved" then
    return out
  end
  for _, s in ipairs(r.steps) do
    if s.kind == "step" and MAY_HAVE_CHANGED[s.status] and s.undo_status ~= "undone" then
      local why = s.undo_status == "undo-failed" and tostring(s.undo_error):gsub("\n", " ") or
        "not tried yet (the rollback stopped before it)"
      out[#out + 1] = string.format("%s/%s: %s", s.phase, s.name, why)
    end
  end
  return out
end

function M.show(r, lock_free)
  local out = {}
  local function add(fmt, ...)
    out[#out + 1] = string.format(fmt, ...)
  end
  local current, own = status_of(r, lock_free), outcome_of(r, lock_free)
  add("run %d: %s%s", r.id, r.playbook, r.version and (" " .. r.version) or "")
  add("  status     %s%s%s", current, current ~= own and (" (the run itself: " .. own .. ")") or "",
    r.interrupted == 1 and " (interrupted)" or "")
  add("  playbook   %s (sha256 %s)", r.path, r.hash)
  if r.git_commit then
    add("  git        %s%s", r.git_commit, r.git_dirty == 1 and " (dirty)" or "")
  end
  add("  started    %s on %s by %s (pid %d)", M.timestamp(r.started), tostring(r.host), tostring(r.user), r.pid or 0)
  if r.ended then
    add("  ended      %s (%s)", M.timestamp(r.ended), M.seconds(r.ended - r.started))
  end
  local rb = later_rollback(r)
  if rb then
    add("  rollback   %s, started %s%s", r.rollback_status == "running" and (lock_free and "stopped before its end"
      or "running") or tostring(r.rollback_status), M.timestamp(rb), r.rollback_ended and r.rollback_ended >= rb and
      (" (" .. M.seconds(r.rollback_ended - rb) .. ")") or "")
  end
  if r.resolved then
    add("  resolved   by %s at %s: %s", tostring(r.resolved_by), M.timestamp(r.resolved_at or 0), r.resolved)
  end
  add("  params     %s", codec.summary(r.params))
  if r.error then
    add("  error      %s", r.error:gsub("\n", "\n             "))
  end
  local left = not_undone(r)
  if #left > 0 then
    add("  not undone")
    for _, l in ipairs(left) do
      add("    %s", l)
    end
  end
  local again = retries(r)
  local phase
  for _, s in ipairs(r.steps) do
    if s.phase ~= phase then
      phase = s.phase
      add("  phase %s", phase)
    end
    local handler = (s.kind or ""):find("handler", 1, true)
    add("    %s %-" .. (handler and 38 or 40) .. "s %-12s %s", s.kind == "check" and "check" or handler and "handler"
      or "step ", s.name, step_status(s),
      s.ended and M.seconds(s.ended - s.started) or "")
    if again[s] then
      add("        %s", again[s])
    end
    if s.error then
      add("        error: %s", s.error:gsub("\n", "\n               "))
    end
    if s.undo_error then
      add("        undo error: %s", s.undo_error:gsub("\n", "\n                    "))
    end
    for _, e in ipairs(s.effects) do
      add("        %s", effect_line(e))
      add("            %s", M.inverse(e.inverse, e.no_inverse, s.has_undo == 1))
    end
  end
  return table.concat(out, "\n") .. "\n"
end

-- A migration log a person pastes into their notes.
function M.markdown(r, lock_free)
  local out = {}
  local function add(fmt, ...)
    out[#out + 1] = string.format(fmt, ...)
  end
  local current, own = status_of(r, lock_free), outcome_of(r, lock_free)
  add("## %s%s — run %d", r.playbook, r.version and (" " .. r.version) or "", r.id)
  add("")
  add("- **Status:** %s%s", current, current ~= own and (" (the run itself: " .. own .. ")") or "")
  add("- **Host:** %s, started %s%s", tostring(r.host), M.timestamp(r.started),
    r.ended and (", took " .. M.seconds(r.ended - r.started)) or "")
  local rb = later_rollback(r)
  if rb then
    add("- **Rollback:** %s, started %s%s", r.rollback_status == "running" and (lock_free and
      "stopped before its end" or "running") or tostring(r.rollback_status), M.timestamp(rb),
      r.rollback_ended and r.rollback_ended >= rb and (", took " .. M.seconds(r.rollback_ended - rb)) or "")
  end
  if r.resolved then
    add("- **Resolved** by %s at %s: %s", tostring(r.resolved_by), M.timestamp(r.resolved_at or 0),
      r.resolved:gsub("\n", " "))
  end
  add("- **Playbook:** `%s` (sha256 `%s`)%s", r.path, r.hash:sub(1, 16),
    r.git_commit and string.format(", git `%s`%s", r.git_commit:sub(1, 12), r.git_dirty == 1 and " (dirty)" or "")
      or "")
  add("- **Parameters:** `%s`", codec.summary(r.params))
  if r.error then
    add("- **Failure:** %s", r.error:gsub("\n", " "))
  end
  local left = not_undone(r)
  if #left > 0 then
    add("- **Not undone:**")
    for _, l in ipairs(left) do
      add("  - `%s`", l:gsub("`", "'"):sub(1, 300))
    end
  end
  local again = retries(r)
  local phase
  for _, s in ipairs(r.steps) do
    if s.phase ~= phase then
      phase = s.phase
      add("")
      add("### %s", phase)
      add("")
    end
    local box = (s.status == "done" and s.undo_status ~= "undone") and "[x]" or "[ ]"
    add("- %s %s%s — %s%s%s", box, s.kind == "check" and "check: " or (s.kind or ""):find("handler") and "handler: "
      or "", s.name, step_status(s),
      s.ended and (" (" .. M.seconds(s.ended - s.started) .. ")") or "", again[s] and (" — " .. again[s]) or "")
    if s.error then
      add("  - error: `%s`", s.error:gsub("\n", " "):sub(1, 300))
    end
    if s.undo_error then
      add("  - not undone: `%s`", s.undo_error:gsub("\n", " "):gsub("`", "'"):sub(1, 300))
    end
    for _, e in ipairs(s.effects) do
      add("  - `%s` (%s)", effect_line(e):gsub("`", "'"), M.inverse(e.inverse, e.no_inverse, s.has_undo == 1))
    end
  end
  return table.concat(out, "\n") .. "\n"
end

-- }======================================================

return M
