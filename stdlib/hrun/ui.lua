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

-- The longest value that stays on a call's line; longer ones, and text of several
-- lines, are folded below it.
local INLINE = 100

-- A value of a call as a person reads it, in full: short ones as they are (quoted where
-- needed), tables as JSON. With folds (a list), a long one becomes a mark («1») and its
-- text goes to folds, to be shown on the lines below the call; without, it is quoted.
local function word(v, folds)
  local text
  if type(v) == "string" then
    if #v <= INLINE or not folds then
      local s = pretty.utf8(v)
      if s == "" or s:find("[%s%c'\"\\]") then
        return pretty.quote(v)
      end
      return s
    end
    text = v
  elseif type(v) == "table" then
    local ok, json = pcall(codec.summary, v, math.maxinteger)
    json = ok and json or "{…}"
    if #json <= INLINE or not folds then
      return json
    end
    text = pretty.format(v, { depth = math.huge, items = math.huge, width = 100 })
  else
    return tostring(v)
  end
  folds[#folds + 1] = text
  return "«" .. #folds .. "»"
end

-- The lines that show folded value n below a call: "«n» first line", the others under
-- it; control characters other than tabs, and bytes that are not UTF-8, escaped.
function M.folded(n, text)
  local out, mark = {}, "«" .. n .. "» "
  local pad = string.rep(" ", utf8.len(mark))
  text = text:gsub("\n$", "")
  for line in (text .. "\n"):gmatch("(.-)\n") do
    line = pretty.utf8(line):gsub("[%z\1-\8\11-\31\127]", function(c)
      return string.format("\\x%02x", c:byte())
    end)
    out[#out + 1] = (#out == 0 and mark or pad) .. line
  end
  return out
end

-- A command's options as a call shows them: without its undo (the inverse shows it), and
-- nothing when none is left.
local function command_options(opts, folds)
  if type(opts) ~= "table" then
    return nil
  end
  local rest = {}
  for k, v in pairs(opts) do
    if k ~= "undo" then
      rest[k] = v
    end
  end
  return next(rest) ~= nil and word(rest, folds) or nil
end

-- "fs.write /etc/x «1»", "exec.run nixos-rebuild switch": every argument in full. folds
-- (optional): a list that gets the long values (see word); shown: the argument a
-- preview shows instead (fs.write's content, as its diff), named, not repeated.
function M.call(op, args, folds, shown)
  local parts = { op }
  if (op == "exec.run") and type(args[1]) == "table" then
    for _, a in ipairs(args[1]) do
      parts[#parts + 1] = word(a, folds)
    end
    parts[#parts + 1] = command_options(args[2], folds)
  elseif op == "exec.sh" then
    parts[#parts + 1] = word(args[1], folds)
    parts[#parts + 1] = command_options(args[2], folds)
  else
    for i = 1, #args do
      -- options left empty (keep = true is taken out before the write sees them): not shown
      local empty = i == #args and type(args[i]) == "table" and next(args[i]) == nil
      if i == shown and folds and word(args[i], {}) == "«1»" then
        parts[#parts + 1] = "(the content: the diff below)"
      elseif args[i] ~= require("hrun.json").null and not empty then
        parts[#parts + 1] = word(args[i], folds)
      end
    end
  end
  return table.concat(parts, " ")
end

-- The lines of an effect event for people: the call (its long values folded below it),
-- and its preview's lines.
function M.effect_lines(ev)
  local folds = {}
  local shown = ev.op == "fs.write" and ev.preview and ev.preview.lines and 2 or nil
  local call = M.call(ev.op, ev.args or {}, folds, shown)
  if ev.host then -- a write on another host says which
    call = call .. "  @" .. tostring(ev.host)
  end
  local below = {}
  for i, text in ipairs(folds) do
    for _, l in ipairs(M.folded(i, text)) do
      below[#below + 1] = l
    end
  end
  return call, below
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
function M.inverse(inverse, why, step_undo, kept)
  if kept and kept ~= 0 then -- keep = true
    return "kept: a rollback leaves it"
  elseif step_undo then
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
    self:line(ev.time, "  step %s: %s (%s%s)%s", ev.step, M.step_word(ev), M.seconds(ev.seconds),
      (ev.attempts or 1) > 1 and (", " .. ev.attempts .. " attempts") or "",
      err and ("\n    " .. err:gsub("\n", "\n    ")) or "")
  end,
  effect = function(self, ev)
    if ev.unchanged then
      return M.plain_already_so(self, ev)
    end
    if ev.planned or self.verbose or ev.preview then
      local call, below = M.effect_lines(ev)
      self:line(ev.time, "    %s %s  [%s]", ev.planned and "would" or "->", call,
        M.inverse(ev.inverse, ev.no_inverse, ev.step_undo, ev.kept))
      for _, l in ipairs(below) do
        self:line(ev.time, "      %s", l)
      end
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
  host = function(self, ev)
    self:line(ev.time, "%s", M.host_line(ev))
  end,
  capabilities = function(self, ev)
    for _, l in ipairs(M.capability_lines(ev)) do
      self:line(ev.time, "%s", l)
    end
  end,
  ["run-end"] = function(self, ev)
    self:line(ev.time, "%s", M.summary(ev))
  end,
  recap = function(self, ev)
    self:line(ev.time, "%s%s", ev.phase and ("recap " .. ev.phase .. ": ") or "recap: ", M.recap_line(ev))
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
M.SPINNER = SPINNER

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
    local mark = (ev.status == "done" or ev.status == "planned") and self:c(ev.changed and "33" or "32", "✓")
      or ev.status == "unknown" and self:c("33", "?") or self:c("31", "✗")
    self.live, self.live_step = nil, nil
    io.stdout:write("\r\27[K")
    local extra = (ev.attempts and ev.attempts > 1) and (" (" .. ev.attempts .. " attempts)") or ""
    if ev.changed ~= nil then
      extra = extra .. " · " .. M.step_word(ev)
    end
    self:print("  " .. mark .. " " .. pad(ev.step, 50) .. self:c("2", M.seconds(ev.seconds) .. extra))
    local err = ev.traceback or ev.error
    if err then
      self:print(self:c(ev.status == "unknown" and "33" or "31", "      " .. err:gsub("\n", "\n      ")))
    end
  end,
  effect = function(self, ev)
    if ev.unchanged then
      return M.tty_already_so(self, ev)
    end
    if ev.planned or self.verbose or ev.preview then
      local arrow = ev.planned and "→ " or "· "
      local inv = M.inverse(ev.inverse, ev.no_inverse, ev.step_undo, ev.kept)
      local call, below = M.effect_lines(ev)
      self:print("      " .. arrow .. call)
      for _, l in ipairs(below) do
        self:print("          " .. l)
      end
      self:print(self:c((ev.inverse or ev.step_undo) and "2" or "33", "          " .. inv))
      for _, l in ipairs(ev.preview and ev.preview.lines or {}) do
        local colour = l:sub(1, 1) == "+" and "32" or l:sub(1, 1) == "-" and "31" or "36"
        -- a diff's context lines as they are
        self:print(ev.preview.diff and l:sub(1, 1) == " " and "          " .. l or self:c(colour, "          " .. l))
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
    if self.verbose or ev.status == "kept" then
      self:print(self:c("2", "      ↶ " .. ev.op .. " " .. ev.status))
    end
  end,
  error = function(self, ev)
    self:print(self:c("31", "error: " .. ev.message))
  end,
  host = function(self, ev)
    self:print(self:c("2", M.host_line(ev)))
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
  recap = function(self, ev)
    if ev.phase then
      self:print(self:c("2", "  " .. M.recap_line(ev)))
    else
      self:print(self:c("1", "recap: " .. M.recap_line(ev)))
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
    return string.format("plan: %d write%s%s%s; nothing was changed", ev.planned or 0, ev.planned == 1 and "" or "s",
      (ev.irreversible or 0) > 0 and string.format(", %d cannot be undone", ev.irreversible) or "",
      (ev.unknown or 0) > 0 and string.format(", %d step%s or check%s unknown until the run (%s what the " ..
        "planned writes change)", ev.unknown, ev.unknown == 1 and "" or "s", ev.unknown == 1 and "" or "s",
        ev.unknown == 1 and "it reads" or "they read") or "")
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

-- {======================================================
-- Changed or ok: a step's word, the writes already so, the recap
-- ======================================================

-- What a step's end says: changed, or ok when it changed nothing (a step-end event, or
-- a journal row with its changed column); else its status (planned, failed, …).
function M.step_word(s)
  local changed = s.changed == true or s.changed == 1
  if s.status == "done" and s.changed ~= nil then
    return changed and "changed" or "ok"
  elseif s.status == "planned" and s.changed ~= nil and not changed then
    return "ok" -- a planned step with nothing to change
  end
  return s.status
end

-- A host reached at pre-flight: "host old: ssh://root@zimaos.lan (zimaos, root, hrun
-- portable build, uploaded now)".
function M.host_line(ev)
  return string.format("host %s: %s (%s, %s, hrun %s%s)", tostring(ev.host), tostring(ev.url),
    tostring(ev.hostname), ev.root and "root" or "not root",
    ev.agent == "installed" and "installed there" or "portable build", ev.uploaded and ", uploaded now" or "")
end

-- What a write already so says: "ok fs.write /etc/x (already so)".
local function already_so(ev)
  return string.format("ok %s%s (already so%s)", M.call(ev.op, ev.args), ev.host and ("  @" .. ev.host) or "",
    ev.skipped and (": " .. ev.skipped) or "")
end

function M.plain_already_so(self, ev)
  if ev.planned or self.verbose then
    self:line(ev.time, "    %s", already_so(ev))
  end
end

function M.tty_already_so(self, ev)
  if ev.planned or self.verbose then
    self:print(self:c("2", "      = " .. already_so(ev)))
  end
end

-- "ok=3 changed=1 skipped=0 failed=0", and unknown=N in plans (or when there are any).
function M.recap_line(c)
  local line = string.format("ok=%d changed=%d skipped=%d failed=%d", c.ok or 0, c.changed or 0, c.skipped or 0,
    c.failed or 0)
  if c.plan or (c.unknown or 0) > 0 then
    line = line .. string.format(" unknown=%d", c.unknown or 0)
  end
  return line
end

-- A run's recap from the journal: its recap event when it has one; else (a run that
-- crashed, or of an older hrun) counted from its steps and checks and its skip events
-- (a step of an older hrun that completed an effect counts as changed). Lines: the
-- total, then each phase's ("phase: ok=…").
function M.run_recap_lines(r)
  local total, phases
  for _, e in ipairs(r.events or {}) do
    if e.event == "recap" and type(e.data) == "table" and e.data.phase == nil then
      total, phases = e.data, e.data.phases or {}
    end
  end
  if not total then
    local runner = require "hrun.runner"
    total, phases = runner.recap(), {}
    local by = {}
    local function count(phase, o)
      if not by[phase] then
        by[phase] = runner.recap()
        by[phase].phase = phase
        phases[#phases + 1] = by[phase]
      end
      total[o], by[phase][o] = total[o] + 1, by[phase][o] + 1
    end
    for _, s in ipairs(r.steps or {}) do
      local changed = s.changed
      if changed == nil and s.kind == "step" then
        changed = false
        for _, e in ipairs(s.effects or {}) do
          changed = changed or e.status == "done" or e.status == "partial"
        end
      end
      local o = runner.outcome({ event = s.kind == "check" and "check" or "step-end",
        status = s.status == "done" and "done" or "failed", changed = changed == true or changed == 1 })
      count(s.phase, o)
    end
    for _, e in ipairs(r.events or {}) do
      if e.event == "step-skip" and type(e.data) == "table" then
        count(e.data.phase, "skipped")
      end
    end
  end
  local lines = { M.recap_line(total) }
  for _, p in ipairs(phases) do
    lines[#lines + 1] = string.format("%s: %s", tostring(p.phase), M.recap_line(p))
  end
  return lines
end

-- }======================================================

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
  if r.collected then
    notes[#notes + 1] = "collected by hrun gc " .. M.timestamp(r.collected)
  end
  return table.concat(notes, "; ")
end

-- How many steps a run has: its playbook's count, journaled at its start; for a run of
-- an older journal (schema < 6), the steps it journaled.
local function steps_total(r)
  return r.steps_total or r.steps_run or 0
end

function M.runs_table(rows, lock_free)
  local out = {
    string.format("%-5s %-20s %-28s %-20s %9s  %-6s %s", "RUN", "STARTED", "PLAYBOOK", "STATUS", "TIME", "STEPS",
      "AFTERWARDS"),
  }
  for _, r in ipairs(rows) do
    out[#out + 1] = string.format("%-5d %-20s %-28s %-20s %9s  %-6s %s", r.id, M.timestamp(r.started),
      (r.playbook .. (r.version and (" " .. r.version) or "")):sub(1, 28), outcome_of(r, lock_free),
      r.ended and M.seconds(r.ended - r.started) or "-", string.format("%d/%d", r.steps_done or 0, steps_total(r)),
      afterwards(r, lock_free)):gsub("%s+$", "")
  end
  return table.concat(out, "\n") .. "\n"
end

local function effect_line(e)
  local args = (pcall(codec.decode, e.args)) and codec.decode(e.args) or {}
  local status = e.status .. (e.undo_status and (", " .. e.undo_status) or "")
  return string.format("%s%s  [%s]%s", M.call(e.op, type(args) == "table" and args or {}),
    e.host and ("  @" .. e.host) or "", status,
    e.error and (" " .. e.error:gsub("\n", " ")) or "")
end

-- A step's status with whether it is undone: "done, undone (undo function)".
local function step_status(s)
  if (s.kind ~= "step" and s.kind ~= "handler") or not s.undo_status then
    return M.step_word(s)
  end
  local how
  for _, u in ipairs(s.undos or {}) do
    if u.status == "ok" then
      how = u.effect and "inverses" or "undo function"
    end
  end
  return string.format("%s, %s%s", M.step_word(s), s.undo_status, how and s.undo_status == "undone" and
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

-- An undo attempt's operations, as the journal's undos rows say: "op 1 btrfs.delete /x:
-- ok". ops: the effect's inverse (its operations' names and arguments).
local function undo_ops(undos, effect, ops)
  local out = {}
  for _, u in ipairs(undos) do
    if u.effect == effect then
      local op = u.op and ops and ops[u.op]
      local what = op and M.call(op.op, op.args or {}) or u.how
      out[#out + 1] = string.format("%s%s: %s%s", u.op and ("op " .. u.op .. " ") or "", what,
        u.status, u.error and (" — " .. tostring(u.error):gsub("\n", " ")) or "")
    end
  end
  return out
end

-- What a run's events and undo attempts record beyond its steps' rows: each step's
-- ctx.log lines (rec.logs[step]), the run's own log lines (rec.run_logs: what a resume or
-- rollback removed or stopped) and each rollback's timeline (rec.rollbacks: {started,
-- reason, ended, status, failed, lines}): every step undone in order with how, each
-- effect's undo with the operations it ran and their outcome (or kept), what an undo
-- function wrote to, and the log lines of undo functions.
local function record(r)
  local rec = { logs = {}, run_logs = {}, rollbacks = {} }
  local effects, undos_of = {}, {}
  for _, s in ipairs(r.steps or {}) do
    for _, e in ipairs(s.effects or {}) do
      effects[e.id] = e
      undos_of[e.id] = s.undos
    end
  end
  local function step_at(phase, name, t)
    local found
    for _, s in ipairs(r.steps or {}) do
      if s.phase == phase and s.name == name and s.started <= t + 1e-3 then
        found = s -- the latest such attempt that started before it
      end
    end
    return found
  end
  local rb, pending = nil, {}
  for _, row in ipairs(r.events or {}) do
    local ev = type(row.data) == "table" and row.data or {}
    local kind, t = row.event, row.time
    if kind == "rollback-start" then
      rb = { started = t, reason = ev.reason, lines = {} }
      rec.rollbacks[#rec.rollbacks + 1] = rb
      pending = {}
    elseif kind == "rollback-end" and rb then
      rb.ended, rb.status, rb.failed = t, ev.status, ev.failed
      rb = nil
    elseif kind == "undo-effect" and rb then
      local e = ev.effect and effects[ev.effect]
      local line = string.format("undo %s%s: %s%s", ev.op, e and (" " .. M.call(e.op, (pcall(codec.decode, e.args)) and
        codec.decode(e.args) or {}):sub(#e.op + 2)) or "", tostring(ev.status),
        ev.how and ev.how ~= ev.status and (" (" .. ev.how .. ")") or "")
      if ev.error then
        line = line .. " — " .. tostring(ev.error):gsub("\n", " ")
      end
      pending[#pending + 1] = line
      if e and ev.how ~= "kept" then
        for _, op in ipairs(undo_ops(undos_of[ev.effect] or {}, ev.effect, e.inverse)) do
          pending[#pending + 1] = "  " .. op
        end
      end
    elseif kind == "undo" and rb then
      rb.lines[#rb.lines + 1] = string.format("%s %s/%s: %s (%s)%s", M.timestamp(t), tostring(ev.phase),
        tostring(ev.step), tostring(ev.status), tostring(ev.how), ev.error and (" — " ..
          tostring(ev.error):gsub("\n", " ")) or "")
      for _, l in ipairs(pending) do
        rb.lines[#rb.lines + 1] = "    " .. l
      end
      pending = {}
      local s = step_at(ev.phase, ev.step, t)
      for _, u in ipairs(s and s.undos or {}) do
        if u.effect == nil and u.how == "undo" and u.started >= rb.started - 1e-3 then
          local targets = {}
          for _, st in ipairs((pcall(codec.decode, u.targets)) and codec.decode(u.targets) or {}) do
            targets[#targets + 1] = string.format("%s %s", tostring(st.kind), tostring(st.target))
          end
          rb.lines[#rb.lines + 1] = string.format("    its undo function: %s%s%s", u.status,
            #targets > 0 and ("; it wrote to " .. table.concat(targets, ", ")) or "; it wrote nothing",
            u.error and (" — " .. tostring(u.error):gsub("\n", " ")) or "")
        end
      end
    elseif kind == "log" then
      local msg = tostring(ev.message)
      local s = ev.step and step_at(ev.phase, ev.step, t)
      if rb and ev.step then -- an undo function's: under its step's line
        pending[#pending + 1] = "log: " .. msg
      elseif rb then
        rb.lines[#rb.lines + 1] = "log: " .. msg
      elseif s then
        rec.logs[s] = rec.logs[s] or {}
        table.insert(rec.logs[s], msg)
      else
        rec.run_logs[#rec.run_logs + 1] = msg
      end
    end
  end
  return rec
end

function M.show(r, lock_free)
  local rec = record(r)
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
  if r.collected then
    add("  collected  by hrun gc at %s: what its undo needs is removed, it can no longer be rolled back",
      M.timestamp(r.collected))
  end
  add("  params     %s", codec.summary(r.params))
  if r.error then
    add("  error      %s", r.error:gsub("\n", "\n             "))
  end
  for i, l in ipairs(M.run_recap_lines(r)) do
    add("  %s %s", i == 1 and "recap     " or "          ", l)
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
    for _, l in ipairs(rec.logs[s] or {}) do
      add("        log: %s", l:gsub("\n", "\n             "))
    end
    for _, e in ipairs(s.effects) do
      add("        %s", effect_line(e))
      add("            %s", M.inverse(e.inverse, e.no_inverse, s.has_undo == 1, e.kept))
    end
  end
  for _, l in ipairs(rec.run_logs) do
    add("  log        %s", l:gsub("\n", "\n             "))
  end
  for _, tl in ipairs(rec.rollbacks) do
    add("  rollback from %s%s: %s", M.timestamp(tl.started), tl.ended and (" to " .. M.timestamp(tl.ended) .. " ("
      .. M.seconds(tl.ended - tl.started) .. ")") or "", tostring(tl.reason):gsub("\n", "\n             "))
    for _, l in ipairs(tl.lines) do
      add("    %s", l)
    end
    add("    %s", tl.status and ("ended: " .. tl.status .. ((tl.failed or 0) > 0 and
      string.format(" (%d step%s not undone)", tl.failed, tl.failed == 1 and "" or "s") or ""))
      or "did not reach its end")
  end
  return table.concat(out, "\n") .. "\n"
end

-- A migration log a person pastes into their notes.
-- A line of text as Markdown code, on one line.
local function code(text)
  return "`" .. tostring(text):gsub("\n", " "):gsub("`", "'"):sub(1, 500) .. "`"
end

function M.markdown(r, lock_free)
  local rec = record(r)
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
  if r.collected then
    add("- **Collected** by hrun gc at %s: it can no longer be rolled back", M.timestamp(r.collected))
  end
  add("- **Playbook:** `%s` (sha256 `%s`)%s", r.path, r.hash:sub(1, 16),
    r.git_commit and string.format(", git `%s`%s", r.git_commit:sub(1, 12), r.git_dirty == 1 and " (dirty)" or "")
      or "")
  add("- **Parameters:** `%s`", codec.summary(r.params))
  if r.error then
    add("- **Failure:** %s", r.error:gsub("\n", " "))
  end
  for i, l in ipairs(M.run_recap_lines(r)) do
    add(i == 1 and "- **Recap:** %s" or "  - %s", l)
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
    for _, l in ipairs(rec.logs[s] or {}) do
      add("  - log: %s", code(l))
    end
    for _, e in ipairs(s.effects) do
      add("  - `%s` (%s)", effect_line(e):gsub("`", "'"), M.inverse(e.inverse, e.no_inverse, s.has_undo == 1,
        e.kept))
    end
  end
  if #rec.run_logs > 0 then
    add("")
    add("### Log")
    add("")
    for _, l in ipairs(rec.run_logs) do
      add("- %s", code(l))
    end
  end
  for _, tl in ipairs(rec.rollbacks) do
    add("")
    add("### Rollback, %s", M.timestamp(tl.started))
    add("")
    add("- **Why:** %s", code(tostring(tl.reason)))
    for _, l in ipairs(tl.lines) do
      local indent, text = l:match("^(%s*)(.*)$")
      add("%s- %s", indent:sub(3), code(text))
    end
    add("- **Ended:** %s", tl.status and (tl.status .. " at " .. M.timestamp(tl.ended) .. " (" ..
      M.seconds(tl.ended - tl.started) .. ")") or "did not reach its end")
  end
  return table.concat(out, "\n") .. "\n"
end

-- }======================================================

return M
