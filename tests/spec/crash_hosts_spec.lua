-- Seeded random crash trials over two real hosts (issue 21; issue 10's random trial,
-- extended to other hosts). A playbook that writes on this machine and on two hosts
-- reached over real OpenSSH (tests/fixtures/hosts.sh: booted once for all the trials)
-- — steps `on = "old"` and `on = "new"`, steps calling hosts.old/hosts.new from the
-- controller, local steps; files written over with a mode, directories made, copies,
-- removals, children with an undo, a step with its own undo — is interrupted:
--
--   controller  the controller (hrun, only it: its ssh children may live on, as they do
--               after a real crash) SIGKILLed at a random instant; then at random
--               `hrun resume` or `hrun rollback --yes`, each perhaps SIGKILLed again,
--               until one finishes
--   agent       the agent on one host or both SIGKILLed at a random instant while the
--               controller runs on: the run ends done, or failed and rolled back
--   rollback    the playbook's last step fails; the controller is SIGKILLed while the
--               run rolls itself back; then resume or rollback as above
--
-- After a finished rollback every host's tree and the local one equal what they were
-- before (bytes, modes, no `.hrun-*` temporaries left anywhere); after a finished
-- resume, an uninterrupted run's; no run is left running or crashed; no effect of a host's
-- agent journal is left as an intent its controller did not resolve or undo.
--
--   HRUN_TRIALS=N        how many trials (default 6), the variants taken in turn
--   HRUN_VARIANT=V       only this variant (controller, agent, rollback)
--   HRUN_LENIENT_UNDO=1  the undo commands take off their own line (`sed '/^x$/d'`), not the
--                        last one (`sed '$ d'`, the default): an undo command run twice (hrun
--                        killed while it ran on a host, before it journaled its end) then no
--                        longer shows; the default checks that a host runs it once
--   HRUN_TRIAL_SEED=S    the master seed (default: from the clock); each trial prints its
--                        seed and variant: HRUN_VARIANT=V HRUN_TRIAL_SEED=<its seed>
--                        HRUN_TRIALS=1 replays it (the same instants and choices; the
--                        machine's timing decides what each instant hits)

local TRIALS = tonumber(sys.env("HRUN_TRIALS") or "") or 6
local MAX_ROUNDS = 4 -- the first run and up to three resumes/rollbacks; the last is never killed
local ALL_VARIANTS = { "controller", "agent", "rollback" }
local VARIANTS = sys.env("HRUN_VARIANT") and { sys.env("HRUN_VARIANT") } or ALL_VARIANTS

-- {======================================================
-- The playbook, and the trees it changes
-- ======================================================

local PLAYBOOK = [=[
local T = "/srv/trial"

-- the local counter: each step that runs here appends its name, through a journaled write
local function count(ctx, name)
  local log = ctx.params.w .. "/log"
  fs.write(log, (fs.exists(log) and fs.read(log) or "") .. name .. "\n")
end

return playbook {
  name = "crash-hosts", hosts = { old = "@OLD@", new = "@NEW@" },
  params = { w = "", fail = "0" },
  phase "hosts" {
    step "old files" { on = "old", run = function()
      fs.write(T .. "/config", "v2\n", { mode = "0640" }) -- over an existing 0644 file
      fs.mkdir(T .. "/moved/a", { parents = true })
      fs.copy(T .. "/data", T .. "/moved/data")
      fs.remove(T .. "/victim")
    end },
    step "old exec" { on = "old", run = function()
      -- a child that writes a while after it starts (a counter: twice shows); its undo
      -- takes its line off again. An undo command runs again when hrun is killed while it
      -- runs (it is journaled as begun, not as ended): `sed '$ d'` would take off the line
      -- before too
      exec.run({ "sh", "-c", "sleep 0.2; echo stopped >> /srv/trial/state" },
        { undo = { "sed", "-i", "/^stopped$/d", "/srv/trial/state" } })
    end },
    step "new files" { on = "new", run = function()
      fs.write(T .. "/config", "new v2\n", { mode = "0600" })
      fs.mkdir(T .. "/incoming")
      fs.copy(T .. "/src", T .. "/incoming/src", { recursive = true })
      fs.remove(T .. "/doomed", { recursive = true })
    end },
    step "new custom" { on = "new",
      run = function(ctx)
        ctx.state.motd = fs.read(T .. "/motd")
        ctx.state.state = fs.read(T .. "/state")
        fs.write(T .. "/motd", ctx.state.motd .. "moved here\n")
        exec.run({ "sh", "-c", "sleep 0.1; echo ran >> /srv/trial/state" },
          { undo = { "sed", "-i", "/^ran$/d", "/srv/trial/state" } })
      end,
      -- its own undo, on the host, from what the step saved: run again when hrun is
      -- killed in it, so it puts back what was (`sed '$ d'` here would take off a line
      -- more each time)
      undo = function(ctx)
        fs.write(T .. "/motd", ctx.state.motd)
        fs.write(T .. "/state", ctx.state.state)
      end },
    step "across" { run = function(ctx)
      count(ctx, "across")
      local data = hosts.old.fs.read(T .. "/data")
      hosts.new.fs.write(T .. "/data", data, { mode = "0640" }) -- over the new host's own
      hosts.new.fs.mkdir(T .. "/from-old")
      hosts.old.fs.write(T .. "/handed-over", hosts.new.sys.hostname() .. "\n")
      hosts.old.exec.run({ "sh", "-c", "sleep 0.1; echo handed >> /srv/trial/state" },
        { undo = { "sed", "-i", "/^handed$/d", "/srv/trial/state" } })
      fs.write(ctx.params.w .. "/copied", data)
    end },
  },
  phase "local" {
    step "here" { run = function(ctx)
      local w = ctx.params.w
      count(ctx, "here")
      fs.write(w .. "/config", "local v2\n", { mode = "0600" })
      fs.mkdir(w .. "/made/deep", { parents = true })
      fs.copy(w .. "/src", w .. "/made/src", { recursive = true })
      fs.remove(w .. "/victim")
      exec.run({ "sh", "-c", 'sleep 0.1; echo ran >> "$1"', "crash-hosts-exec", w .. "/exec-out" },
        { undo = { "rm", "-f", w .. "/exec-out" } })
    end },
  },
  phase "end" {
    step "last" { run = function(ctx)
      count(ctx, "last")
      hosts.old.fs.write(T .. "/config", "v3\n")
      hosts.new.fs.mkdir(T .. "/last")
      fs.write(ctx.params.w .. "/last", "written by the last step\n")
      if ctx.params.fail ~= "0" then
        error("the last step fails")
      end
    end },
  },
}
]=]

-- the local steps the counter counts, in order
local COUNTED = { "across", "here", "last" }

-- a tree at $1 (a host's /srv/trial seen from here, or the local one)
local SETUP = [[
set -e
t=$1
rm -rf "$t"
mkdir -p "$t/src/sub" "$t/doomed/deep"
cd "$t"
printf 'v1\n' > config; chmod 644 config
printf 'the data\n' > data; chmod 600 data
printf 'running\n' > state
printf 'precious\n' > victim; chmod 600 victim
printf 'welcome\n' > motd
printf 's1\n' > src/s1; printf 's2\n' > src/sub/s2; ln -s ../s1 src/sub/l1; chmod 750 src/sub
yes 'a longer line of the bigger file' | head -c 200000 > src/big
printf 'd\n' > doomed/d1; printf 'dd\n' > doomed/deep/d2; chmod 700 doomed/deep
]]

-- fingerprint(trees) → {key = description}: each tree's paths (type, mode, bytes or a
-- hash, link targets) and its leftover temporaries, keyed by the tree's name
local function fingerprint(trees)
  local fp = {}
  for _, t in ipairs(trees) do
    local function walk(rel)
      local path = rel == "" and t.path or t.path .. "/" .. rel
      local st, err = fs.stat(path, { follow = false })
      if not st then
        fp[t.name .. " " .. rel] = "unreadable: " .. tostring(err)
        return
      end
      local desc = st.type .. " " .. string.format("%o", st.mode)
      if st.type == "file" then
        desc = desc .. " " .. (st.size <= 80 and (fs.read(path) or "?") or (st.size .. " bytes " ..
          tostring(hash.file(path))))
      elseif st.type == "link" then
        desc = desc .. " -> " .. st.target
      end
      local name = rel:match("[^/]*$")
      if name:find("hrun") then
        fp["leftover " .. t.name .. " " .. rel] = st.type
      end
      fp[t.name .. " " .. (rel == "" and "." or rel)] = desc
      if st.type == "dir" then
        for _, n in ipairs(fs.list(path) or {}) do
          walk(rel == "" and n or rel .. "/" .. n)
        end
      end
    end
    walk("")
  end
  return fp
end

-- the differences of two fingerprints, a line each ("" when equal)
local function diff(got, want)
  local keys, seen = {}, {}
  for k in pairs(got) do
    keys[#keys + 1], seen[k] = k, true
  end
  for k in pairs(want) do
    if not seen[k] then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  local out = {}
  local function show(s)
    return (s:gsub("\n", "\\n"))
  end
  for _, k in ipairs(keys) do
    local a, b = got[k], want[k]
    if a ~= b then
      if a == nil then
        out[#out + 1] = string.format("  missing  %s: %s", k, show(b))
      elseif b == nil then
        out[#out + 1] = string.format("  extra    %s: %s", k, show(a))
      else
        out[#out + 1] = string.format("  differs  %s: %s (expected %s)", k, show(a), show(b))
      end
    end
  end
  return table.concat(out, "\n")
end

-- }======================================================

-- {======================================================
-- Running hrun, and killing it (or an agent)
-- ======================================================

local function tail(path, n)
  local lines = {}
  for line in (fs.read(path) or ""):gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  local from = math.max(1, #lines - n + 1)
  local out = {}
  if from > 1 then
    out[1] = string.format("      … %d lines before", from - 1)
  end
  for i = from, #lines do
    out[#out + 1] = "      " .. lines[i]
  end
  return table.concat(out, "\n")
end

local function sqlite(db, sql)
  local r = exec.run({ "sqlite3", "-separator", "|", db, sql }, { check = false, readonly = true })
  return r.stdout, r.ok, r.stderr
end

local Trials = {}
Trials.__index = Trials

-- launch(tag, args, o) → exit code (137: killed), seconds, the output files' base. hrun
-- args run in the background; o.delay: SIGKILLed that long after it starts (or, with
-- o.after, after its output first says o.after); o.agents = {delay, hosts}: the agents on
-- those hosts SIGKILLed that long after it starts, over ssh
function Trials:launch(tag, args, o)
  o = o or {}
  local cmd = { "env", "HRUN_SSH_CONFIG=" .. self.hs.ssh_config, "HRUN_STATE_DIR=" .. self.state,
    "HRUN_SSH_SERVER_ALIVE=1", shq(HRUN) }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = shq(a)
  end
  local base = self.dir .. "/" .. tag
  local lines = { table.concat(cmd, " ") .. " >" .. shq(base .. ".out") .. " 2>" .. shq(base .. ".err") .. " &",
    "pid=$!" }
  if o.agents then
    -- from here, at once: the agents in the host's pid namespace (over ssh, the kill would
    -- come a handshake later)
    local nss = {}
    for _, i in ipairs(o.agents.hosts) do
      nss[#nss + 1] = shq(self.pidns[i])
    end
    lines[#lines + 1] = string.format("(sleep %.4f; for p in $(pgrep -f '[a]gent --dir'); do for ns in %s; do " ..
      "[ \"$(readlink /proc/$p/ns/pid)\" = \"$ns\" ] && kill -KILL $p; done; done) >/dev/null 2>&1 & killer=$!",
      o.agents.delay, table.concat(nss, " "))
  end
  if o.delay then
    if o.after then
      lines[#lines + 1] = string.format("while kill -0 $pid 2>/dev/null && ! grep -q %s %s; do sleep 0.005; done",
        shq(o.after), shq(base .. ".out"))
    end
    -- (the wait ends early when hrun does)
    lines[#lines + 1] = string.format("sleep %.4f & s=$!", o.delay)
    lines[#lines + 1] = "while kill -0 $pid 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.01; done"
    lines[#lines + 1] = "kill -0 $s 2>/dev/null || kill -KILL $pid 2>/dev/null; kill $s 2>/dev/null; wait $s"
  end
  lines[#lines + 1] = "wait $pid; rc=$?"
  if o.agents then
    lines[#lines + 1] = "wait $killer"
  end
  lines[#lines + 1] = "echo rc=$rc"
  local t0 = sys.clock()
  local r = exec.sh(table.concat(lines, "\n"), { timeout = 300 })
  return tonumber(r.stdout:match("rc=(%d+)")), sys.clock() - t0, base
end

local function json_lines(s)
  local out = {}
  for line in s:gmatch("[^\n]+") do
    local good, v = pcall(json.decode, line)
    out[#out + 1] = good and v or { unparsed = line }
  end
  return out
end

function Trials:journal()
  local env = { HRUN_STATE_DIR = self.state }
  local runs = json_lines(hrun_cmd({ "runs", "--json" }, { env = env }).stdout)
  local show = hrun_cmd({ "show", "--json" }, { env = env })
  local good, run = pcall(json.decode, show.stdout)
  return runs, show.code == 0 and good and run or nil
end

-- the agents still running on host i, and the local processes of the trial (their argv
-- names the trial's directory): "" when none
function Trials:busy()
  local out = {}
  local agents = exec.run({ "pgrep", "-f", "[a]gent --dir" }, { check = false, readonly = true }).stdout
  for pid in agents:gmatch("%d+") do
    local st = fs.stat("/proc/" .. pid .. "/ns/pid", { follow = false })
    for i = 1, 2 do
      if st and st.target == self.pidns[i] then
        out[#out + 1] = string.format("host%d: agent %s", i, pid)
      end
    end
  end
  -- (not the ssh masters: they persist a while by design, ControlPersist; quiesce ends them.
  -- A master the agent's ssh forked (ControlMaster=auto) is titled "ssh: SOCKET [mux]"; one
  -- a killed controller's ssh was still logging in when quiesce began is born after it)
  local r = exec.run({ "pgrep", "-a", "-f", "--", self.dir }, { check = false, readonly = true })
  for line in r.stdout:gmatch("[^\n]+") do
    if not line:find("ControlMaster=yes", 1, true) and not line:find(" [mux]", 1, true) then
      out[#out + 1] = "here: " .. line
    end
  end
  return table.concat(out, "; ")
end

-- ends the ssh masters the trial's runs left (they would persist 60 s)
function Trials:close_masters()
  exec.run({ "sh", "-c", 'for s in "$1"/ssh/*; do [ -S "$s" ] && ssh -o ControlPath="$s" -O exit x; done; true',
    "close", self.state }, { check = false })
end

-- waits (a while) until nothing of the trial runs any more; what ran when it began
function Trials:quiesce()
  local seen = self:busy()
  self:close_masters()
  local deadline = sys.clock() + 20
  local now = seen
  while now ~= "" and sys.clock() < deadline do
    sys.sleep(0.1)
    now = self:busy()
  end
  return seen, now
end

-- }======================================================

-- {======================================================
-- The trials
-- ======================================================

local function next_seed(s)
  return (s * 1103515245 + 12345) % 2147483648
end

local function clock_seed()
  local t = sys.now()
  return math.floor((t * 1000003) % 2147483647) + 1
end

local function pick_delay(duration)
  if math.random() < 0.2 then
    return math.random() * 0.05
  end
  return math.random() * duration * 1.05
end

-- all of a trial's random choices, drawn up front so that a replay makes the same ones
local function make_plan(seed, variant, d)
  math.randomseed(seed)
  local plan = { seed = seed, variant = variant, rounds = {} }
  if variant == "controller" then
    plan.first = pick_delay(d.run)
  elseif variant == "agent" then
    local which = math.random(3)
    plan.agents = { delay = math.random() * d.run, hosts = which == 3 and { 1, 2 } or { which } }
  else
    plan.first = math.random() * d.own_rollback * 1.1
  end
  for round = 2, MAX_ROUNDS do
    local action = math.random() < 0.5 and "resume" or "rollback"
    local killed = round < MAX_ROUNDS and math.random() < 0.4
    local delay = pick_delay(action == "resume" and d.run or d.rollback)
    plan.rounds[round] = { action = action, delay = killed and delay or nil }
  end
  return plan
end

local function plan_text(plan)
  local parts
  if plan.variant == "controller" then
    parts = { string.format("run (controller killed at %.1f ms)", plan.first * 1000) }
  elseif plan.variant == "agent" then
    local hs = {}
    for i, h in ipairs(plan.agents.hosts) do
      hs[i] = "host" .. h
    end
    parts = { string.format("run (agent on %s killed at %.1f ms)", table.concat(hs, " and "),
      plan.agents.delay * 1000) }
  else
    parts = { string.format("failing run (controller killed %.1f ms into its rollback)", plan.first * 1000) }
  end
  for round = 2, MAX_ROUNDS do
    local r = plan.rounds[round]
    parts[#parts + 1] = r.action .. (r.delay and string.format(" (kill at %.1f ms)", r.delay * 1000) or "")
  end
  return table.concat(parts, ", then ") .. " (rounds after a finished one are not run)"
end

function Trials.new(hs, top)
  local self = setmetatable({ hs = hs, top = top, n = 0, notes = {} }, Trials)
  local text = PLAYBOOK:gsub("@OLD@", hs[1].url):gsub("@NEW@", hs[2].url)
  if sys.env("HRUN_LENIENT_UNDO") ~= "1" then
    text = text:gsub('"/%^%a+%$/d"', '"$ d"')
  end
  self.playbook = playbook_file(top, "crash-hosts.lua", text)
  self.agent_db, self.pidns = {}, {}
  for i = 1, 2 do
    self.agent_db[i] = hs[i].root .. "/var/lib/hrun/agent/agent.db"
    -- the host's pid namespace, its container's init's (the fixture's nspawn's child)
    local leader = exec.run({ "sh", "-c", 'pgrep -P "$(cat "$1")" | head -n1', "leader",
      hs.dir .. "/h" .. i .. "/nspawn.pid" }, { readonly = true }).stdout:match("%d+")
    local st = leader and fs.stat("/proc/" .. leader .. "/ns/pid", { follow = false })
    self.pidns[i] = assert(st and st.target, "host" .. i .. ": its pid namespace not found")
  end
  assert(self.pidns[1] ~= self.pidns[2], "the two hosts share a pid namespace")
  return self
end

-- a fresh trial: its directory, state, trees (reset on each host and here)
function Trials:fresh(name)
  if self.state then
    self:close_masters()
  end
  self.dir = self.top .. "/" .. name
  exec.run({ "rm", "-rf", self.dir })
  fs.mkdir(self.dir)
  self.state = self.dir .. "/state"
  self.w = self.dir .. "/w"
  self.trees = { { name = "here", path = self.w } }
  for i = 1, 2 do
    self.trees[#self.trees + 1] = { name = "host" .. i, path = self.hs[i].root .. "/srv/trial" }
  end
  for _, t in ipairs(self.trees) do
    exec.run({ "sh", "-c", SETUP, "setup", t.path })
  end
  -- the agents' journals: only what this trial adds is looked at
  self.agent_from = {}
  for i = 1, 2 do
    local out = fs.exists(self.agent_db[i]) and sqlite(self.agent_db[i], "SELECT coalesce(max(id), 0) FROM effects")
    self.agent_from[i] = tonumber(out and out:match("%d+")) or 0
  end
end

function Trials:run_args(fail)
  return { self.playbook, "-p", "w=" .. self.w, "-p", "fail=" .. (fail and "1" or "0") }
end

-- the references: an uninterrupted run's trees, its rollback's, a failing run's, and how
-- long each takes (and how long a failing run's own rollback takes)
function Trials:reference()
  local problems = {}
  self:fresh("ref")
  self.before = fingerprint(self.trees)
  -- (the first run uploads the agent to each host: a little longer than the trials' runs)
  local code, run_secs = self:launch("run", self:run_args(false))
  if code ~= 0 then
    problems[#problems + 1] = string.format("the uninterrupted run exited %s:\n%s\n%s", tostring(code),
      tail(self.dir .. "/run.out", 30), tail(self.dir .. "/run.err", 30))
  end
  self.done = fingerprint(self.trees)
  local log = fs.read(self.w .. "/log")
  if log ~= table.concat(COUNTED, "\n") .. "\n" then
    problems[#problems + 1] = "the uninterrupted run's counter: " .. tostring(log)
  end
  local rcode, rb_secs = self:launch("rollback", { "rollback", "--yes" })
  local d = diff(fingerprint(self.trees), self.before)
  if rcode ~= 0 or d ~= "" then
    problems[#problems + 1] = string.format("the uninterrupted run's rollback exited %s; trees vs before:\n%s\n%s",
      tostring(rcode), d, tail(self.dir .. "/rollback.out", 40))
  end
  self:fresh("ref3")
  local t0 = sys.clock()
  code = self:launch("run", self:run_args(true))
  local fail_secs = sys.clock() - t0
  d = diff(fingerprint(self.trees), self.before)
  if code ~= 1 or d ~= "" then
    problems[#problems + 1] = string.format("the failing run exited %s (expected 1); trees vs before:\n%s\n%s",
      tostring(code), d, tail(self.dir .. "/run.out", 40))
  end
  -- the first run uploads the agent: the failing run (steps and its own rollback) is
  -- the trials' measure of a run; its own rollback, from "rolling back" in its output to
  -- its end, about a rollback's without hrun's start and connecting
  self.durations = { run = math.min(run_secs, fail_secs), first = run_secs, rollback = rb_secs,
    failing = fail_secs, own_rollback = rb_secs * 0.6 }
  self:quiesce()
  exec.run({ "rm", "-rf", self.top .. "/ref", self.top .. "/ref3" })
  return problems
end

-- how many effects the controller's journal has
function Trials:effects()
  local db = self.state .. "/journal.db"
  return fs.exists(db) and tonumber((sqlite(db, "SELECT count(*) FROM effects"):match("%d+"))) or 0
end

-- the hosts ("host1", …) where an agent stopped a command its dead agent left running:
-- that write's end is not known (an intent, undone), or nil
function Trials:commands_cut()
  local out = {}
  for i = 1, 2 do
    local rows = fs.exists(self.agent_db[i]) and sqlite(self.agent_db[i], string.format(
      "SELECT id FROM effects WHERE id > %d AND status = 'intent' AND op = 'exec.run' AND error LIKE " ..
      "'its agent ended while it ran; %%'", self.agent_from[i])) or ""
    if rows:match("%d") then
      out[#out + 1] = "host" .. i
    end
  end
  return #out > 0 and out or nil
end

-- the agents' journals: each intent this trial left must be one its controller undid or
-- resolved (its effect journaled as ended there, or undone)
function Trials:agent_intents()
  local problems, notes = {}, {}
  local db = self.state .. "/journal.db"
  for i = 1, 2 do
    local rows = fs.exists(self.agent_db[i]) and sqlite(self.agent_db[i], string.format(
      "SELECT id, run, effect, op, status FROM effects WHERE id > %d AND status = 'intent'", self.agent_from[i])) or ""
    for line in rows:gmatch("[^\n]+") do
      local id, run, effect, op = line:match("^(%d+)|(%d+)|(%d+)|([^|]*)|")
      notes["an agent journal keeps an intent (its agent killed in the write)"] = true
      local c = fs.exists(db) and sqlite(db, string.format(
        "SELECT status, coalesce(undo_status, '') FROM effects WHERE run = %s AND id = %s", run, effect)) or ""
      local status, undo = c:match("^([^|]*)|([^|\n]*)")
      if not status then
        problems[#problems + 1] = string.format("host%d's agent journal: effect %s (%s) is an intent, and the " ..
          "controller's journal has no effect %s of run %s", i, id, op, effect, run)
      elseif status == "intent" and undo ~= "undone" then
        problems[#problems + 1] = string.format("host%d's agent journal: effect %s (%s) is an intent; the " ..
          "controller's effect %s is %s, undo %s: never resolved nor undone", i, id, op, effect, status,
          undo == "" and "none" or undo)
      end
    end
  end
  return problems, notes
end

-- one trial: nil when it passed, else {class, report, seed}
function Trials:trial(seed, variant)
  self.n = self.n + 1
  local plan = make_plan(seed, variant, self.durations)
  self:fresh("t" .. self.n)
  local before = fingerprint(self.trees)
  local problems, kinds, notes = {}, {}, {}
  local function problem(kind, text)
    kinds[kind] = true
    problems[#problems + 1] = text or kind
  end
  if diff(before, self.before) ~= "" then
    problem("harness: the fresh trees differ", "the fresh trees differ from the reference's:\n" ..
      diff(before, self.before))
  end
  local rounds = {}
  local function round(tag, args, o)
    local code, secs, base = self:launch(tag, args, o)
    rounds[#rounds + 1] = { tag = tag, code = code, secs = secs, base = base, delay = o and o.delay }
    return code
  end
  local expect, finished_by -- "done" or "before", and what finished
  local code
  if variant == "controller" then
    code = round("1-run", self:run_args(false), { delay = plan.first })
    if code == 0 then
      expect, finished_by = "done", "the run itself (the kill came after its end)"
    elseif code ~= 137 then
      problem("run exit " .. tostring(code))
    end
  elseif variant == "agent" then
    code = round("1-run", self:run_args(false), { agents = plan.agents })
    local out = fs.read(rounds[1].base .. ".out") or ""
    if out:find("the channel dropped", 1, true) then
      notes["the controller saw an agent's end and connected again"] = true
    elseif code == 0 then
      notes["the controller saw no agent end (none was running at the kill, or it ended idle)"] = true
    end
    if code == 0 then
      expect, finished_by = "done", "the run itself"
    elseif code == 1 then
      expect, finished_by = "before", "the run itself (failed, rolled back)"
    else
      problem("run exit " .. tostring(code) .. " (an agent killed: expected done 0 or rolled back 1)")
    end
  else
    code = round("1-run", self:run_args(true), { delay = plan.first, after = "rolling back" })
    if code == 1 then
      expect, finished_by = "before", "the run itself (failed, rolled back before the kill)"
    elseif code ~= 137 then
      problem("failing run exit " .. tostring(code))
    end
  end
  local failing = variant == "rollback"
  local lock_waits = 0
  for r = 2, MAX_ROUNDS do
    if expect or #problems > 0 then
      break
    end
    local action, delay = plan.rounds[r].action, plan.rounds[r].delay
    local args = action == "resume" and { "resume" } or { "rollback", "--yes" }
    local pre_status
    if fs.exists(self.state .. "/journal.db") then
      local _, pre = self:journal()
      pre_status = pre and pre.status
    end
    code = round(r .. "-" .. action, args, { delay = delay })
    while code == 4 and lock_waits < 50 do
      notes["lock still held after SIGKILL"] = true
      lock_waits = lock_waits + 1
      sys.sleep(0.1)
      code = round(r .. "-" .. action .. "-again" .. lock_waits, args, { delay = delay })
    end
    local last = rounds[#rounds].base
    local out = (fs.read(last .. ".err") or "") .. (fs.read(last .. ".out") or "")
    if action == "resume" and pre_status == "rollback-incomplete" and code ~= 3 and code ~= 137 then
      problem("resume of a run killed while rolling back not refused (exit " .. tostring(code) .. ")")
    end
    if #problems > 0 then
      break
    elseif code == 137 then
      expect, finished_by = nil, nil
    elseif code == 3 and (not fs.exists(self.state .. "/journal.db") or out:find("has no runs yet", 1, true)) then
      expect, finished_by = "before", "nothing (hrun was killed before it journaled the run)"
    elseif action == "resume" and code == 3 and out:find("is done: there is nothing to resume", 1, true) then
      if failing then
        problem("resume says the run is done (its last step fails)", "resume: " .. out)
      end
      expect, finished_by = "done", finished_by or "a resume that finished"
    elseif action == "resume" and code == 3 then
      -- not resumable (a rollback of it began): roll it back, never killed
      code = round(r .. "-rollback-instead", { "rollback", "--yes" })
      if code ~= 0 then
        problem(string.format("rollback exit %s", tostring(code)))
      end
      expect, finished_by = "before", "hrun rollback (resume refused: " .. (out:match("hrun: ([^\n]*)") or "?") .. ")"
    elseif code == 0 and not (failing and action == "resume") then
      expect = action == "resume" and "done" or "before"
      finished_by = "hrun " .. action
    elseif code == 1 and failing and action == "resume" then
      expect, finished_by = "before", "hrun resume (failed, rolled back)"
    else
      problem(string.format("%s exit %s", action, tostring(code)))
    end
  end
  if not expect and #problems == 0 then
    problem("harness: no round finished")
  end
  -- what the killed runs left running (ssh sessions, agents, children) ends before the
  -- trees are looked at
  local seen, still = self:quiesce()
  if seen ~= "" then
    notes["processes of a killed run outlive the final round"] = true
  end
  if still ~= "" then
    problem("processes still running 20 s after the final round", "still running: " .. still)
  end
  local got = fingerprint(self.trees)
  local runs, run = self:journal()
  if expect then
    local want = expect == "done" and self.done or before
    local d = diff(got, want)
    local cut = expect == "before" and d ~= "" and self:commands_cut()
    if cut then
      -- a command its agent's death cut short (the next agent stopped it): whether it
      -- wrote its line is not known, and its undo (`sed '$ d'`) ran as it must for a
      -- write that may have happened — the line before may be gone instead
      local alt = {}
      for k, v in pairs(want) do
        alt[k] = v
      end
      for _, name in ipairs(cut) do
        local key = name .. " state"
        local head, content = tostring(alt[key]):match("^(file %d+ )(.*)$")
        if head then
          alt[key] = head .. content:gsub("[^\n]*\n$", "")
        end
      end
      if diff(got, alt) == "" then
        d = ""
        notes["a command cut short by its agent's death: its undo took off the line before"] = true
      end
    end
    if d ~= "" then
      local leftovers = d:find("leftover", 1, true) and " (leftover temporaries)" or ""
      local where = {}
      for _, t in ipairs(self.trees) do
        if d:find(" " .. t.name .. " ", 1, true) then
          where[#where + 1] = t.name
        end
      end
      local what = expect == "done" and "an uninterrupted run's" or "the ones before"
      problem(string.format("trees differ from %s on %s%s", what, table.concat(where, ", "), leftovers),
        "the trees differ from " .. what .. ":\n" .. d)
    end
    if expect == "done" then
      local log = fs.read(self.w .. "/log") or ""
      if log ~= table.concat(COUNTED, "\n") .. "\n" then
        problem("counter: a step's work missing or done twice", "the counter shows:\n" .. log)
      end
      if run and run.status ~= "done" then
        problem("status " .. tostring(run.status) .. " after a finished run")
      end
    elseif run and run.status == "failed" and variant == "agent" and self:effects() == 0 then
      notes["an agent killed in the pre-flight: the run failed before any change"] = true
    elseif run and run.status ~= "rolled-back" then
      problem("status " .. tostring(run.status) .. " after a finished rollback")
    end
  end
  for _, r in ipairs(runs) do
    if r.status == "running" or r.status == "crashed" then
      problem("a run left " .. r.status, string.format("hrun runs --json: run %s is %s", tostring(r.id), r.status))
    end
  end
  local aproblems, anotes = self:agent_intents()
  for _, p in ipairs(aproblems) do
    problem("an agent's intent left unresolved", p)
  end
  for k in pairs(anotes) do
    notes[k] = true
  end
  -- the trial's line
  local codes = {}
  for _, r in ipairs(rounds) do
    codes[#codes + 1] = string.format("%s=%s%s", r.tag, tostring(r.code),
      r.delay and string.format("@%.0fms", r.delay * 1000) or "")
  end
  local note_list = {}
  for k in pairs(notes) do
    note_list[#note_list + 1] = k
    self.notes[k] = self.notes[k] or {}
    table.insert(self.notes[k], variant .. ":" .. seed)
  end
  table.sort(note_list)
  local first = variant == "agent" and string.format("agents@%.0fms ", plan.agents.delay * 1000) or ""
  print(string.format("     [%s] trial %d seed %d: %s%s %s%s%s", variant, self.n, seed, first, table.concat(codes, " "),
    expect and ("→ " .. expect .. " by " .. tostring(finished_by)) or "→ ?", #problems > 0 and "  FAILED" or "",
    #note_list > 0 and "  (" .. table.concat(note_list, "; ") .. ")" or ""))
  io.stdout:flush()
  if #problems == 0 then
    exec.run({ "rm", "-rf", self.dir })
    return nil
  end
  local report = { string.format("trial %d [%s], seed %d: %s", self.n, variant, seed, plan_text(plan)),
    string.format("  replay: HRUN_VARIANT=%s HRUN_TRIAL_SEED=%d HRUN_TRIALS=1 HRUN_BIN=%s %s tests/spec.lua " ..
      "tests/spec/crash_hosts_spec.lua", variant, seed, HRUN, HRUN) }
  for _, p in ipairs(problems) do
    report[#report + 1] = "  " .. p:gsub("\n", "\n  ")
  end
  for _, r in ipairs(runs) do
    report[#report + 1] = string.format("  journal: run %s %s", tostring(r.id), tostring(r.status))
  end
  if fs.exists(self.state .. "/journal.db") then
    report[#report + 1] = "  the controller's effects (id|step|op|host|remote|status|undo_status|error):\n    " ..
      sqlite(self.state .. "/journal.db", "SELECT id, step, op, coalesce(host, '-'), coalesce(remote, '-'), " ..
        "status, coalesce(undo_status, '-'), coalesce(substr(error, 1, 80), '') FROM effects ORDER BY id")
        :gsub("\n$", ""):gsub("\n", "\n    ")
    report[#report + 1] = "  the controller's undo attempts (id|step|effect|op|how|status|error):\n    " ..
      sqlite(self.state .. "/journal.db", "SELECT id, step, coalesce(effect, '-'), coalesce(op, '-'), how, " ..
        "status, coalesce(substr(error, 1, 80), '') FROM undos ORDER BY id"):gsub("\n$", ""):gsub("\n", "\n    ")
  end
  for i = 1, 2 do
    if fs.exists(self.agent_db[i]) then
      report[#report + 1] = string.format("  host%d's agent effects (id|run|effect|op|status|error):\n    ", i) ..
        sqlite(self.agent_db[i], string.format("SELECT id, run, effect, op, status, " ..
          "coalesce(substr(error, 1, 80), '') FROM effects WHERE id > %d ORDER BY id", self.agent_from[i]))
          :gsub("\n$", ""):gsub("\n", "\n    ")
    end
  end
  for _, r in ipairs(rounds) do
    report[#report + 1] = string.format("  round %s: exit %s after %.3f s%s", r.tag, tostring(r.code), r.secs,
      r.delay and string.format(" (SIGKILL planned at %.1f ms)", r.delay * 1000) or "")
    local out = tail(r.base .. ".out", 25)
    if out ~= "" then
      report[#report + 1] = out
    end
    local err = tail(r.base .. ".err", 10)
    if err ~= "" then
      report[#report + 1] = "    stderr:\n" .. err
    end
  end
  local classes = {}
  for k in pairs(kinds) do
    classes[#classes + 1] = k
  end
  table.sort(classes)
  return { class = variant .. ": " .. table.concat(classes, "; "), report = table.concat(report, "\n"),
    seed = seed }
end

-- }======================================================

describe("random SIGKILL trials on two hosts", function()
  it(string.format("%d trial(s): the controller or an agent killed; rollback gives back every host's tree, " ..
    "resume an uninterrupted run's", TRIALS), function()
    need("sqlite3")
    need("pgrep")
    local seed = tonumber(sys.env("HRUN_TRIAL_SEED") or "") or clock_seed()
    print(string.format("     master seed %d (HRUN_TRIAL_SEED=%d HRUN_TRIALS=%d%s replays this run)", seed, seed,
      TRIALS, sys.env("HRUN_VARIANT") and " HRUN_VARIANT=" .. sys.env("HRUN_VARIANT") or ""))
    local t0 = sys.clock()
    local hs = ssh_hosts(2)
    local top = tmpdir()
    local trials = Trials.new(hs, top)
    print(string.format("     two hosts booted in %.1f s", sys.clock() - t0))
    t0 = sys.clock()
    local failures = {}
    for _, p in ipairs(trials:reference()) do
      failures[#failures + 1] = { class = "reference", report = p, seed = seed }
    end
    local d = trials.durations
    print(string.format("     references in %.1f s: the first run takes %.2f s (uploading the agent), its " ..
      "rollback %.2f s, a failing run (with its own rollback) %.2f s", sys.clock() - t0, d.first, d.rollback,
      d.failing))
    local started = sys.clock()
    if #failures == 0 then
      for i = 1, TRIALS do
        local f = trials:trial(seed, VARIANTS[(i - 1) % #VARIANTS + 1])
        if f then
          failures[#failures + 1] = f
        end
        seed = next_seed(seed)
      end
    end
    local secs = sys.clock() - started
    print(string.format("     %d trial(s) in %.1f s (%.2f s a trial), %d failed", trials.n, secs,
      secs / math.max(1, trials.n), #failures))
    for note, seeds in pairs(trials.notes) do
      print(string.format("     note (not a failure): %s: %d trial(s), %s", note, #seeds, table.concat(seeds, " ")))
    end
    if #failures > 0 then
      local classes, order, text = {}, {}, {}
      for _, f in ipairs(failures) do
        text[#text + 1] = f.report
        if not classes[f.class] then
          classes[f.class] = {}
          order[#order + 1] = f.class
        end
        table.insert(classes[f.class], tostring(f.seed))
      end
      text[#text + 1] = "failure classes (class: seeds):"
      for _, c in ipairs(order) do
        text[#text + 1] = string.format("  %s: %s", c, table.concat(classes[c], " "))
      end
      error(string.format("%d of %d trial(s) failed\n%s", #failures, trials.n, table.concat(text, "\n\n")), 0)
    end
  end)
end)
