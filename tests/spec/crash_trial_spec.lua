-- Seeded random crash trials. A playbook that uses every family of writing primitive on
-- real components (files, a git repository, btrfs subvolumes on a loop device, a child
-- process with an undo, a step with its own undo) is SIGKILLed at a random instant; then,
-- at random, `hrun resume` or `hrun rollback` — which may itself be SIGKILLed at a random
-- instant, and followed again by resume or rollback — until one finishes. After a
-- finished rollback the world's fingerprint (bytes, modes, symlinks, git refs, tags and
-- index, subvolumes and their read-only flags, leftover files anywhere) equals the one
-- before; after a finished resume it equals an uninterrupted run's, each step's work is
-- there once, and the journal shows no run running or crashed.
--
--   HRUN_TRIALS=N        how many trials (default 10)
--   HRUN_TRIAL_SEED=S    the master seed (default: from the clock); trial 1 uses S itself,
--                        and every trial prints its own seed: HRUN_TRIAL_SEED=<its seed>
--                        HRUN_TRIALS=1 replays it (the same kill instants and choices;
--                        the machine's timing decides what each instant hits)
--   HRUN_TRIAL_REPEAT=K  run each trial K times (a timing-dependent failure's replay)

local TRIALS = tonumber(sys.env("HRUN_TRIALS") or "") or 10
local REPEAT = tonumber(sys.env("HRUN_TRIAL_REPEAT") or "") or 1
local MAX_ROUNDS = 4 -- the first run and up to three resumes/rollbacks; the last is never killed

-- {======================================================
-- The playbook
-- ======================================================

local PLAYBOOK = [=[
-- every writing primitive family, on the world under params.w
local function W(ctx, rel)
  return ctx.params.w .. "/" .. rel
end

-- the counter: each step appends its name to the log, through a journaled write
local function count(ctx, name)
  local log = W(ctx, "log")
  fs.write(log, (fs.exists(log) and fs.read(log) or "") .. name .. "\n")
end

return playbook {
  name = "crash-trial", params = { w = "", m = "", fail = "1" },@ONFAIL@
  phase "files" {
    step "write" { run = function(ctx)
      count(ctx, "write")
      fs.write(W(ctx, "files/new.txt"), "a new file\n")
      fs.write(W(ctx, "files/a.txt"), "a, overwritten\n") -- keeps its mode 0640
      fs.write(W(ctx, "files/exe"), "#!/bin/sh\necho v2\n") -- keeps 0755
      fs.write(W(ctx, "files/link"), "through the link\n") -- writes a.txt, the link stays
    end },
    step "copy" { run = function(ctx)
      count(ctx, "copy")
      fs.copy(W(ctx, "files/a.txt"), W(ctx, "files/a.copy"))
      fs.copy(W(ctx, "files/config"), W(ctx, "files/over-dst")) -- over an existing file
      fs.copy(W(ctx, "files/src"), W(ctx, "files/src.copy"), { recursive = true })
    end },
    step "mkdir" { run = function(ctx)
      count(ctx, "mkdir")
      fs.mkdir(W(ctx, "files/newdir"))
      fs.mkdir(W(ctx, "files/newdir/a/b"), { parents = true })
    end },
    step "fill" { run = function(ctx)
      count(ctx, "fill")
      fs.write(W(ctx, "files/newdir/f1"), "f1\n")
      fs.write(W(ctx, "files/newdir/a/b/f2"), "f2\n", { mode = "0600" })
    end },@MID@
    step "remove" { run = function(ctx)
      count(ctx, "remove")
      fs.remove(W(ctx, "files/victim"))
      fs.remove(W(ctx, "files/doomed"), { recursive = true })
    end },
    step "rename" { run = function(ctx)
      count(ctx, "rename")
      fs.rename(W(ctx, "files/move-me"), W(ctx, "files/moved"))
      fs.rename(W(ctx, "files/dir-move"), W(ctx, "files/dir-moved"))
      fs.rename(W(ctx, "files/over-src"), W(ctx, "files/replaced")) -- replaces a file
    end },
    step "custom" {
      run = function(ctx)
        ctx.state.log = fs.read(W(ctx, "log"))
        ctx.state.config = fs.read(W(ctx, "files/config"))
        count(ctx, "custom")
        fs.write(W(ctx, "files/config"), ctx.state.config .. "custom = 2\n")
      end,
      -- its own undo, from what the step saved in ctx.state
      undo = function(ctx)
        fs.write(W(ctx, "files/config"), ctx.state.config)
        fs.write(W(ctx, "log"), ctx.state.log)
      end,
    },
  },
  phase "git" {
    step "commit" { run = function(ctx)
      count(ctx, "commit")
      fs.write(W(ctx, "repo/README"), "v2\n")
      fs.write(W(ctx, "repo/added"), "added\n")
      fs.remove(W(ctx, "repo/old"))
      ctx.shared.commit = git.commit(W(ctx, "repo"), "trial commit", { all = true })
    end },
    step "tag" { run = function(ctx)
      count(ctx, "tag")
      assert(ctx.shared.commit, "ctx.shared.commit, set by the step commit, is lost")
      git.tag(W(ctx, "repo"), "v2", { message = "release v2", target = ctx.shared.commit })
      git.tag(W(ctx, "repo"), "light")
    end },
  },
  phase "btrfs" {
    step "snapshot" { run = function(ctx)
      count(ctx, "snapshot")
      btrfs.snapshot(W(ctx, "vol"), W(ctx, "snaps/pre"), { readonly = true })
      fs.write(W(ctx, "vol/data"), "changed after the snapshot\n")
    end },
    step "scratch" { irreversible = true, run = function(ctx)
      count(ctx, "scratch")
      btrfs.create(W(ctx, "snaps/scratch"))
      fs.write(W(ctx, "snaps/scratch/x"), "x\n")
      btrfs.snapshot(W(ctx, "snaps/scratch"), W(ctx, "snaps/kept"))
      btrfs.delete(W(ctx, "snaps/scratch")) -- made by this step: deleting it loses nothing
    end },
  },
  phase "misc" {
    step "hash" { run = function(ctx)
      count(ctx, "hash")
      local m = hash.tree(W(ctx, "files"), { save = "trial-files" })
      ctx.state.files = m.files
      fs.write(W(ctx, "hash-count"), string.format("%d files\n", m.files))
    end },
    step "exec" { run = function(ctx)
      count(ctx, "exec")
      -- a child that writes a while after it starts; its undo removes what it wrote
      exec.run({ "sh", "-c", 'sleep 0.1; echo ran > "$1"', "trial-exec", W(ctx, "exec-out") },
        { undo = { "rm", "-f", W(ctx, "exec-out") } })
      -- a child that runs a while (kills land inside it); the path names it for pgrep
      exec.run({ "sh", "-c", "sleep 0.3", "trial-sleep", ctx.params.w }, { readonly = true })
    end },
  },@END@
}
]=]

-- the steps the counter counts, in order
local STEPS = { "write", "copy", "mkdir", "fill", "remove", "rename", "custom", "commit", "tag", "snapshot",
  "scratch", "hash", "exec" }

-- HRUN_VARIANT: plain (the playbook succeeds), fail (its last step fails: the run rolls
-- itself back), retry (a middle step fails its first two attempts, retries = 2, and then
-- succeeds), stop (on_failure = "stop" and the last step fails), sandbox (plain, run with
-- --sandbox: the kill lands in the engine while the playbook's own process waits on it)
local VARIANT = sys.env("HRUN_VARIANT") or "plain"
local MID, END, ONFAIL = "", "", ""
if VARIANT == "retry" then
  MID = [==[

    step "flaky" { retries = 2, retry_delay = 0.05, run = function(ctx)
      count(ctx, "flaky")
      fs.write(W(ctx, "files/flaky-out"), "the attempt that succeeded\n")
      -- the attempts, counted outside the journal (a retry's undo does not take it back)
      local n = tonumber((exec.run({ "sh", "-c", 'date +%s.%N >> "$1"; wc -l < "$1"', "trial-attempts", ctx.params.m },
        { readonly = true }).stdout:match("%d+")))
      if n < 3 then
        fs.write(W(ctx, "files/a.txt"), "a, spoiled by a failed attempt\n")
        fs.mkdir(W(ctx, "files/flaky-dir/sub"), { parents = true })
        fs.write(W(ctx, "files/flaky-dir/sub/junk" .. n), "junk\n")
        fs.remove(W(ctx, "files/exe"))
        fs.rename(W(ctx, "files/newdir/f1"), W(ctx, "files/flaky-dir/f1"))
        fs.copy(W(ctx, "files/src"), W(ctx, "files/flaky-dir/src"), { recursive = true })
        git.tag(W(ctx, "repo"), "flaky" .. n)
        exec.run({ "sh", "-c", "sleep 0.05", "trial-flaky", ctx.params.w }, { readonly = true })
        error("flaky attempt " .. n .. " fails")
      end
    end },]==]
  table.insert(STEPS, 5, "flaky")
elseif VARIANT == "fail" or VARIANT == "stop" then
  END = [==[

  phase "end" {
    step "fail" { run = function(ctx)
      count(ctx, "fail")
      fs.write(W(ctx, "files/fail-out"), "written before the failure\n")
      fs.write(W(ctx, "files/a.txt"), "a, by the failing step\n")
      fs.mkdir(W(ctx, "files/fail-dir"))
      exec.run({ "sh", "-c", "sleep 0.05", "trial-fail", ctx.params.w }, { readonly = true })
      if ctx.params.fail ~= "0" then
        error("the last step fails")
      end
    end },
  },]==]
  STEPS[#STEPS + 1] = "fail"
  if VARIANT == "stop" then
    ONFAIL = '\n  on_failure = "stop",'
  end
end
PLAYBOOK = PLAYBOOK:gsub("@MID@", function() return MID end):gsub("@END@", function() return END end)
  :gsub("@ONFAIL@", function() return ONFAIL end)

-- }======================================================

-- {======================================================
-- The world: made fresh for each trial, and its fingerprint
-- ======================================================

local SETUP = [[
set -e
w=$1
mkdir -p "$w/files/src/sub" "$w/files/doomed/deep" "$w/files/dir-move" "$w/snaps"
cd "$w/files"
printf 'a\n' > a.txt; chmod 640 a.txt
printf '#!/bin/sh\necho v1\n' > exe; chmod 755 exe
printf 'key = 1\n' > config
printf 'precious\n' > victim; chmod 600 victim
printf 'moving\n' > move-me
printf 'replacement\n' > over-src
printf 'replaced\n' > replaced
printf 'overwritten by a copy\n' > over-dst
ln -s a.txt link
printf 's1\n' > src/s1; printf 's2\n' > src/sub/s2; ln -s ../s1 src/sub/l1
yes 'a longer line of the bigger file' | head -c 300000 > src/big
chmod 700 src/sub
printf 'd\n' > doomed/d1; printf 'dd\n' > doomed/deep/d2; ln -s d1 doomed/l; chmod 750 doomed/deep
printf 'm\n' > dir-move/m1
git init -q -b main "$w/repo"
cd "$w/repo"
git config user.name trial; git config user.email trial@localhost
printf 'v1\n' > README; printf 'old\n' > old
git add -A; git commit -q -m initial; git tag v1
btrfs -q subvolume create "$w/vol" >/dev/null
printf 'original\n' > "$w/vol/data"
]]

-- git's view: refs with their trees and subjects (not commit ids: commit times differ),
-- the history's trees and messages, the index, the status
local GIT_VIEW = [[
cd "$1" || exit 0
echo "HEAD $(git symbolic-ref -q HEAD || echo detached) $(git rev-parse -q --verify 'HEAD^{tree}' 2>&1)"
git for-each-ref --format='%(refname) %(objecttype) %(subject)' 2>&1 | while read -r ref rest; do
  echo "ref $ref $rest $(git rev-parse -q --verify "$ref^{tree}" 2>&1)"
done
git log --format='log %T %s' HEAD 2>&1
git ls-files -s 2>&1 | sed 's/^/index /'
git --no-optional-locks status --porcelain --untracked-files=all 2>&1 | sed 's/^/status /'
]]

-- names that hrun or git leave behind when killed
local function leftover_name(name)
  return name:find("%.lock$") or name:find("hrun") or name:find("^tmp") or name:find("%.tmp$")
end

-- fingerprint(w) → {key = description}: everything the playbook touches in the world w,
-- independent of time and of where w is
local function fingerprint(w)
  local fp = {}
  local function walk_git(path, rel)
    for _, name in ipairs(fs.list(path) or {}) do
      local p, r = path .. "/" .. name, rel .. "/" .. name
      local st = fs.stat(p, { follow = false })
      if st and leftover_name(name) then
        fp["leftover " .. r] = st.type
      end
      if st and st.type == "dir" then
        walk_git(p, r)
      end
    end
  end
  local function walk(rel)
    local path = rel == "" and w or w .. "/" .. rel
    local st, err = fs.stat(path, { follow = false })
    if not st then
      fp["path " .. rel] = "unreadable: " .. tostring(err)
      return
    end
    local desc = st.type .. " " .. string.format("%o", st.mode)
    if st.type == "file" then
      desc = desc .. " " .. (st.size <= 80 and (fs.read(path) or "?") or (st.size .. " bytes " ..
        tostring(hash.file(path))))
    elseif st.type == "link" then
      desc = desc .. " -> " .. st.target
    end
    fp["path " .. (rel == "" and "." or rel)] = desc
    if st.type == "dir" then
      for _, name in ipairs(fs.list(path) or {}) do
        local r = rel == "" and name or rel .. "/" .. name
        if r == "repo/.git" then
          fp["path repo/.git"] = "dir"
          walk_git(path .. "/" .. name, r)
        else
          walk(r)
        end
      end
    end
  end
  walk("")
  for _, s in ipairs(btrfs.list(w) or {}) do
    fp["subvolume " .. s.rel] = s.readonly and "read-only" or "writable"
  end
  local n = 0
  for line in exec.run({ "sh", "-c", GIT_VIEW, "git-view", w .. "/repo" }, { readonly = true }).stdout:gmatch(
    "[^\n]+") do
    local kind, rest = line:match("^(%S+) (.*)$")
    if kind == "ref" or kind == "HEAD" then
      local ref, what = rest:match("^(%S+) ?(.*)$")
      fp["git " .. kind .. " " .. ref] = what
    else
      n = n + 1
      fp[string.format("git %s #%02d", kind or "?", n)] = rest or line
    end
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
  for _, k in ipairs(keys) do
    local a, b = got[k], want[k]
    if a ~= b then
      if a == nil then
        out[#out + 1] = string.format("  missing  %s: %s", k, (b:gsub("\n", "\\n")))
      elseif b == nil then
        out[#out + 1] = string.format("  extra    %s: %s", k, (a:gsub("\n", "\\n")))
      else
        out[#out + 1] = string.format("  differs  %s: %s (expected %s)", k, (a:gsub("\n", "\\n")),
          (b:gsub("\n", "\\n")))
      end
    end
  end
  return table.concat(out, "\n")
end

-- a short name for what a fingerprint difference is about (the failure classes): its
-- categories, and the paths when there are few
local function diff_kinds(got, want)
  local kinds, paths = {}, {}
  local function path_of(k)
    local p = k:match("^path (.*)$")
    if p then
      paths[#paths + 1] = (want[k] == nil and "extra " or got[k] == nil and "missing " or "changed ") .. p
    end
  end
  local keys = {}
  for k, v in pairs(got) do
    if want[k] ~= v then
      keys[#keys + 1] = k
    end
  end
  for k in pairs(want) do
    if got[k] == nil then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local p = k:match("^path (.*)$") or ""
    if k:find("^leftover") or (want[k] == nil and p:find("hrun")) then
      kinds["leftover temp files"] = true
    elseif k:find("^git") then
      kinds["git refs/index"] = true
    elseif k:find("^subvolume") then
      kinds["subvolumes"] = true
    else
      path_of(k)
    end
  end
  local list = {}
  for k in pairs(kinds) do
    list[#list + 1] = k
  end
  table.sort(list)
  if #paths > 0 and #paths <= 2 then
    list[#list + 1] = table.concat(paths, ", ")
  elseif #paths > 2 then
    list[#list + 1] = string.format("files (%d paths)", #paths)
  end
  return table.concat(list, ", ")
end

-- what a rollback's output says failed: "btrfs.create: No such file or directory", …
local function failed_undos(out)
  local seen, list = {}, {}
  for op, why in out:gmatch("undo ([%w_]+%.[%w_]+): failed: ([^\n]*)") do
    local item = op .. ": " .. (why:match(": ([^:]+)$") or why)
    if not seen[item] then
      seen[item], list[#list + 1] = true, item
    end
  end
  if #list == 0 then
    for why in out:gmatch("hrun: ([^\n]*)") do
      if not why:find("nothing was run", 1, true) then
        list[#list + 1] = why:gsub("/[^ ]*", "…")
      end
    end
  end
  return table.concat(list, "; ")
end

-- }======================================================

-- {======================================================
-- Running hrun, and killing it
-- ======================================================

-- launch(dir, tag, args, delay) → exit code (137: killed), seconds, the output files'
-- base: hrun args run in the background, SIGKILLed after delay seconds (unless it
-- finished by then; no delay: never killed)
local function launch(dir, tag, args, delay)
  local cmd = { shq(HRUN) }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = shq(a)
  end
  local base = dir .. "/" .. tag
  local line = table.concat(cmd, " ") .. " >" .. shq(base .. ".out") .. " 2>" .. shq(base .. ".err")
  local script
  if delay then
    script = string.format("%s & pid=$!; sleep %.4f; kill -KILL $pid 2>/dev/null; wait $pid; echo rc=$?", line,
      delay)
  else
    script = line .. "; echo rc=$?"
  end
  local t0 = sys.clock()
  local r = exec.sh(script, { timeout = 300 })
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

-- processes still running a child of the run in w (their argv names it)
local function orphans(w)
  local r = exec.run({ "pgrep", "-f", "--", w }, { check = false, readonly = true })
  return (r.stdout:gsub("%s+$", ""))
end

local function wait_orphans(w)
  local deadline = sys.clock() + 3
  local seen = orphans(w)
  while orphans(w) ~= "" and sys.clock() < deadline do
    sys.sleep(0.02)
  end
  return seen
end

local function tail(path, n)
  local s = fs.read(path) or ""
  local lines = {}
  for line in s:gmatch("[^\n]*\n?") do
    if line ~= "" then
      lines[#lines + 1] = line:gsub("\n$", "")
    end
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

-- }======================================================

-- {======================================================
-- The trials
-- ======================================================

-- the next seed of the sequence: trial 1 runs the master seed, trial i+1 this of trial i's
local function next_seed(s)
  return (s * 1103515245 + 12345) % 2147483648
end

local function clock_seed()
  local t = sys.now()
  return math.floor((t * 1000003) % 2147483647) + 1
end

-- a kill delay: often within the first 50 ms (start-up, the journal, the first writes),
-- otherwise uniform over the command's whole duration
local function pick_delay(duration)
  if math.random() < 0.25 then
    return math.random() * 0.05
  end
  return math.random() * duration * 1.05
end

-- all of a trial's random choices, drawn up front so that a replay makes the same ones
local function make_plan(seed, durations)
  math.randomseed(seed)
  local plan = { seed = seed, first = pick_delay(durations.run), rounds = {} }
  -- HRUN_FIRST_KILL_MS=LO,HI: the first kill uniformly between LO and HI ms instead
  local lo, hi = (sys.env("HRUN_FIRST_KILL_MS") or ""):match("^(%d+),(%d+)$")
  if lo then
    plan.first = (tonumber(lo) + math.random() * (tonumber(hi) - tonumber(lo))) / 1000
  end
  for round = 2, MAX_ROUNDS do
    local action = math.random() < 0.5 and "resume" or "rollback"
    local killed = round < MAX_ROUNDS and math.random() < 0.4
    local delay = pick_delay(action == "resume" and durations.run or durations.rollback)
    plan.rounds[round] = { action = action, delay = killed and delay or nil }
  end
  return plan
end

local function plan_text(plan)
  local parts = { string.format("run (kill at %.1f ms)", plan.first * 1000) }
  for round = 2, MAX_ROUNDS do
    local r = plan.rounds[round]
    parts[#parts + 1] = r.action .. (r.delay and string.format(" (kill at %.1f ms)", r.delay * 1000) or "")
  end
  return table.concat(parts, ", then ")
end

local Trials = {}
Trials.__index = Trials

function Trials.new(volume)
  local self = setmetatable({ volume = volume, playbook = volume .. "/trial.lua", n = 0, notes = {} }, Trials)
  local text = PLAYBOOK
  if VARIANT == "sandbox" then -- what it touches, all under the volume
    local caps = {}
    for _, c in ipairs({ "fs", "git", "btrfs", "hash" }) do
      caps[#caps + 1] = string.format("%q", c .. ":" .. volume)
    end
    caps[#caps + 1] = '"exec:sh", "exec:rm"'
    text = text:gsub('params = { w = "", m = "", fail = "1" },', function(p)
      return p .. "\n  capabilities = { " .. table.concat(caps, ", ") .. " },"
    end)
  end
  fs.write(self.playbook, text)
  return self
end

-- a fresh world in a new directory of the volume: dir, w, state
function Trials:world(name)
  local dir = self.volume .. "/" .. name
  fs.mkdir(dir)
  local w = dir .. "/w"
  exec.run({ "sh", "-c", SETUP, "setup", w })
  return dir, w, dir .. "/state"
end

-- removes a trial's directory: its subvolumes first (deepest first), then the rest
local function clean(dir)
  local subs = btrfs.list(dir) or {}
  table.sort(subs, function(a, b)
    return #a.rel > #b.rel
  end)
  for _, s in ipairs(subs) do
    btrfs.delete(s.path)
  end
  exec.run({ "rm", "-rf", dir })
end

function Trials:run_args(w, state, fail)
  local args = { self.playbook, "--state", state, "-p", "w=" .. w, "-p", "m=" .. w:gsub("/w$", "/attempts"),
    "-p", "fail=" .. (fail or "1") }
  if VARIANT == "sandbox" then
    args[#args + 1] = "--sandbox"
  end
  return args
end

local function journal(state)
  local runs = json_lines(hrun_cmd({ "runs", "--json", "--state", state }).stdout)
  local show = hrun_cmd({ "show", "--json", "--state", state })
  return runs, show.code == 0 and json.decode(show.stdout) or nil
end

-- the reference: an uninterrupted run's world, and how long a run and a rollback take
function Trials:reference()
  if VARIANT == "fail" or VARIANT == "stop" then
    return self:reference_failing()
  end
  local dir, w, state = self:world("ref")
  local problems = {}
  self.before = fingerprint(w)
  local code, secs = launch(dir, "run", self:run_args(w, state))
  if code ~= 0 then
    problems[#problems + 1] = string.format("the uninterrupted run exited %s:\n%s\n%s", tostring(code),
      tail(dir .. "/run.out", 30), tail(dir .. "/run.err", 30))
  end
  self.done = fingerprint(w)
  eq(fs.read(w .. "/log"), table.concat(STEPS, "\n") .. "\n", "the uninterrupted run's counter")
  local rcode, rsecs = launch(dir, "rollback", { "rollback", "--state", state })
  local after = fingerprint(w)
  if rcode ~= 0 or diff(after, self.before) ~= "" then
    problems[#problems + 1] = string.format("the uninterrupted run's rollback exited %s; world vs before:\n%s\n%s",
      tostring(rcode), diff(after, self.before), tail(dir .. "/rollback.out", 40))
  end
  self.durations = { run = secs, rollback = rsecs }
  if VARIANT == "retry" then
    local attempts = select(2, (fs.read(dir .. "/attempts") or ""):gsub("\n", ""))
    if attempts ~= 3 then
      problems[#problems + 1] = string.format("the uninterrupted run made %d attempts of flaky (expected 3)", attempts)
    end
  end
  clean(dir)
  return problems
end

-- the reference of the variants whose last step fails: a run where it does not fail
-- (how long its rollback takes), and one where it does (how long the run and its own
-- rollback take; the world after it: before (fail), or as it stopped (stop))
function Trials:reference_failing()
  local problems = {}
  local dir, w, state = self:world("ref0")
  self.before = fingerprint(w)
  local code = launch(dir, "run", self:run_args(w, state, "0"))
  if code ~= 0 then
    problems[#problems + 1] = string.format("the uninterrupted run with fail=0 exited %s:\n%s", tostring(code),
      tail(dir .. "/run.out", 30))
  end
  local rcode, rsecs = launch(dir, "rollback", { "rollback", "--state", state })
  local after = fingerprint(w)
  if rcode ~= 0 or diff(after, self.before) ~= "" then
    problems[#problems + 1] = string.format("the fail=0 run's rollback exited %s; world vs before:\n%s",
      tostring(rcode), diff(after, self.before))
  end
  clean(dir)
  dir, w, state = self:world("ref1")
  local secs
  code, secs = launch(dir, "run", self:run_args(w, state))
  local _, run = journal(state)
  local want_status = VARIANT == "fail" and "rolled-back" or "stopped"
  if code ~= 1 or not run or run.status ~= want_status then
    problems[#problems + 1] = string.format("the uninterrupted failing run exited %s, status %s (expected 1, %s):\n%s",
      tostring(code), tostring(run and run.status), want_status, tail(dir .. "/run.out", 30))
  end
  local got = fingerprint(w)
  if VARIANT == "fail" then
    if diff(got, self.before) ~= "" then
      problems[#problems + 1] = "the uninterrupted failing run's world vs before:\n" .. diff(got, self.before)
    end
    self.done = self.before
  else
    self.stopped = got
    eq(fs.read(w .. "/log"), table.concat(STEPS, "\n") .. "\n", "the stopped run's counter")
    local c2 = launch(dir, "resume", { "resume", "--state", state })
    local _, run2 = journal(state)
    local d = diff(fingerprint(w), self.stopped)
    if c2 ~= 1 or not run2 or run2.status ~= "stopped" or d ~= "" then
      problems[#problems + 1] = string.format("resuming the stopped run exited %s, status %s; world vs stopped:\n%s",
        tostring(c2), tostring(run2 and run2.status), d)
    end
    local c3 = launch(dir, "rollback", { "rollback", "--state", state })
    d = diff(fingerprint(w), self.before)
    if c3 ~= 0 or d ~= "" then
      problems[#problems + 1] = string.format("rolling back the stopped run exited %s; world vs before:\n%s",
        tostring(c3), d)
    end
  end
  self.durations = { run = secs, rollback = rsecs }
  clean(dir)
  return problems
end

-- one trial: returns nil when it passed, else {class = …, report = …}
function Trials:trial(seed)
  self.n = self.n + 1
  local plan = make_plan(seed, self.durations)
  local dir, w, state = self:world("t" .. self.n)
  local before = fingerprint(w)
  local problems, kinds, notes = {}, {}, {}
  local function problem(kind, text)
    kinds[kind] = true
    problems[#problems + 1] = text or kind
  end
  if diff(before, self.before) ~= "" then
    problem("harness: the fresh world differs", "the fresh world differs from the reference's:\n" ..
      diff(before, self.before))
  end
  local rounds = {}
  local expect -- "done" or "before", by what finished
  local finished_by
  local function round(tag, args, delay)
    local code, secs, base = launch(dir, tag, args, delay)
    rounds[#rounds + 1] = { tag = tag, code = code, secs = secs, base = base, delay = delay }
    return code
  end
  local failing = VARIANT == "fail" or VARIANT == "stop"
  local finished_status = VARIANT == "fail" and "before" or "stopped"
  local wall0 = sys.now()
  local code = round("1-run", self:run_args(w, state), plan.first)
  if VARIANT == "retry" then
    local at = {}
    for t in (fs.read(dir .. "/attempts") or ""):gmatch("[^\n]+") do
      at[#at + 1] = string.format("%.0f", (tonumber(t) - wall0) * 1000)
    end
    notes["flaky attempts at ms " .. table.concat(at, ",")] = true
  end
  if code == 0 and not failing then
    expect, finished_by = "done", "the run itself" -- the kill came after it ended
  elseif code == 1 and failing then
    expect, finished_by = finished_status, "the run itself (failed, " .. VARIANT .. ")"
  elseif code ~= 137 then
    problem("run exit " .. tostring(code))
  end
  -- then resume or rollback, until one finishes (the run finished: one of them once)
  local lock_waits = 0
  for r = 2, MAX_ROUNDS do
    if #problems > 0 then
      break
    end
    local action, delay = plan.rounds[r].action, plan.rounds[r].delay
    local args = { action, "--state", state }
    -- the run's state before this round: one killed while rolling back is not resumed
    local pre_status
    if fs.exists(state .. "/journal.db") then
      local _, pre = journal(state)
      pre_status = pre and pre.status
    end
    code = round(r .. "-" .. action, args, delay)
    -- another run holds the lock: something of the killed one still holds it
    while code == 4 and lock_waits < 50 do
      notes["lock still held after SIGKILL"] = true
      lock_waits = lock_waits + 1
      sys.sleep(0.05)
      code = round(r .. "-" .. action .. "-again" .. lock_waits, args, delay)
    end
    local last = rounds[#rounds].base
    local out = (fs.read(last .. ".err") or "") .. (fs.read(last .. ".out") or "")
    if action == "resume" and pre_status == "rollback-incomplete" and code ~= 3 and code ~= 137 then
      problem("resume of a run killed while rolling back not refused (exit " .. tostring(code) .. ")")
    end
    if action == "resume" and code == 3 then
      local id, st = out:match("run (%d+) is ([%w-]+): there is nothing to resume")
      if st == "rollback-incomplete" and not out:find("'hrun rollback " .. id .. "' finishes", 1, true) then
        problem("resume refused without naming 'hrun rollback N'", "resume refused: " .. out)
      end
      if st == "done" and failing then
        problem("resume says the run is done (its last step fails)", "resume: " .. out)
      end
    end
    if #problems > 0 then
      break
    elseif code == 137 then
      expect, finished_by = nil, nil -- killed: what it did is half done
    elseif code == 3 and not fs.exists(state .. "/journal.db") then
      -- killed before it made its state directory: there is no run
      if not out:find("has no runs yet", 1, true) then
        notes["no state directory: resume/rollback say " .. (out:match("hrun: ([^:\n]*)") or "?") ..
          " instead of 'no runs yet'"] = true
      end
      expect, finished_by = "before", "nothing (hrun was killed before it journaled the run)"
      break
    elseif code == 3 and out:find("has no runs yet", 1, true) then
      expect, finished_by = "before", "nothing (hrun was killed before it journaled the run)"
      break
    elseif action == "resume" and code == 3 and out:find("is done: there is nothing to resume", 1, true) then
      for _, earlier in ipairs(rounds) do
        if earlier.tag:find("rollback") and earlier.code == 137 then
          kinds["resume refused ('is done') after a killed rollback"] = true
        end
      end
      expect, finished_by = "done", finished_by or "a resume that finished"
      break
    elseif action == "resume" and code == 3 then
      -- not resumable (a rollback of it began): roll it back, never killed
      code = round(r .. "-rollback-instead", { "rollback", "--state", state })
      if code ~= 0 then
        local o = (fs.read(rounds[#rounds].base .. ".out") or "") .. (fs.read(rounds[#rounds].base .. ".err") or "")
        problem(string.format("rollback exit %s (%s)", tostring(code), failed_undos(o)))
      end
      expect, finished_by = "before", "hrun rollback (resume refused: " .. (out:match("hrun: ([^\n]*)") or "?") .. ")"
      break
    elseif code == 0 and not (failing and action == "resume") then
      expect = action == "resume" and "done" or "before"
      finished_by = "hrun " .. action
      break
    elseif code == 1 and failing and action == "resume" then
      expect, finished_by = finished_status, "hrun resume (failed, " .. VARIANT .. ")"
      break
    else
      problem(string.format("%s exit %s (%s)", action, tostring(code), failed_undos(out)))
      expect = (action == "rollback" or code == 1 or code == 2) and "before" or nil
      break
    end
  end
  if not expect and #problems == 0 then
    -- the plan's last round is never killed, so this is a run that finished and was
    -- never followed by a finishing command
    problem("harness: no round finished")
  end
  -- children of the killed runs still running now change the world later: wait for them
  local alive = wait_orphans(w)
  if alive ~= "" then
    notes["children of a killed run outlive the final round"] = true
  end
  local got = fingerprint(w)
  local runs, run = journal(state)
  if expect then
    local want = expect == "done" and self.done or expect == "stopped" and self.stopped or before
    local d = diff(got, want)
    if d ~= "" then
      local what = expect == "done" and "an uninterrupted run's" or expect == "stopped" and "the stopped run's" or
        "the one before"
      problem("world differs from " .. what .. " (" .. diff_kinds(got, want) .. ")", "the world differs from " ..
        what .. ":\n" .. d)
    end
    if expect == "done" then
      local log = fs.read(w .. "/log") or ""
      if log ~= table.concat(STEPS, "\n") .. "\n" then
        problem("counter: a step's work missing or done twice", "the counter shows:\n" .. log)
      end
      if run then
        local done = {}
        for _, s in ipairs(run.steps or {}) do
          if s.kind == "step" and s.status == "done" then
            done[s.name] = (done[s.name] or 0) + 1
          end
        end
        for _, name in ipairs(STEPS) do
          if done[name] ~= 1 then
            problem("journal: a step not done exactly once", string.format("the journal has step %s done %d times",
              name, done[name] or 0))
          end
        end
        if run.status ~= "done" then
          problem("status " .. tostring(run.status) .. " after a finished run")
        end
      end
    elseif expect == "stopped" then
      if run and run.status ~= "stopped" then
        problem("status " .. tostring(run.status) .. " after a run that stopped")
      end
      local log = fs.read(w .. "/log") or ""
      if log ~= table.concat(STEPS, "\n") .. "\n" then
        problem("counter: a step's work missing or done twice", "the counter shows:\n" .. log)
      end
    elseif run and run.status ~= "rolled-back" then
      problem("status " .. tostring(run.status) .. " after a finished rollback")
    end
  end
  for _, r in ipairs(runs) do
    if r.status == "running" or r.status == "crashed" then
      problem("a run left " .. r.status, string.format("hrun runs --json: run %s is %s", tostring(r.id), r.status))
    end
  end
  -- the trial's line
  local outcome = expect and ("→ " .. expect .. " by " .. tostring(finished_by)) or "→ ?"
  local codes = {}
  for _, r in ipairs(rounds) do
    codes[#codes + 1] = string.format("%s=%s%s", r.tag, tostring(r.code),
      r.delay and string.format("@%.0fms", r.delay * 1000) or "")
  end
  local note_list = {}
  for k in pairs(notes) do
    note_list[#note_list + 1] = k
    self.notes[k] = self.notes[k] or {}
    table.insert(self.notes[k], seed)
  end
  table.sort(note_list)
  print(string.format("     [%s] trial %d seed %d: %s %s%s%s", VARIANT, self.n, seed, table.concat(codes, " "), outcome,
    #problems > 0 and "  FAILED" or "", #note_list > 0 and "  (" .. table.concat(note_list, "; ") .. ")" or ""))
  io.stdout:flush()
  if #problems == 0 then
    clean(dir)
    return nil
  end
  local report = { string.format("trial %d, seed %d: %s", self.n, seed, plan_text(plan)),
    string.format("  replay: HRUN_VARIANT=%s HRUN_TRIAL_SEED=%d HRUN_TRIALS=1 %s tests/spec.lua " ..
      "tests/spec/crash_trial_spec.lua", VARIANT, seed, HRUN) }
  for _, p in ipairs(problems) do
    report[#report + 1] = "  " .. p:gsub("\n", "\n  ")
  end
  if alive ~= "" then
    report[#report + 1] = "  processes of the killed run still running after the final round: " .. alive
  end
  for _, r in ipairs(runs) do
    report[#report + 1] = string.format("  journal: run %s %s", tostring(r.id), tostring(r.status))
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
  clean(dir)
  return { class = table.concat(classes, "; "), report = table.concat(report, "\n"), seed = seed }
end

-- }======================================================

describe("random SIGKILL trials", function()
  it(string.format("%d trial(s): rollback gives back the world before, resume an uninterrupted run's", TRIALS),
    function()
      need_root()
      need("git")
      need("pgrep")
      local seed = tonumber(sys.env("HRUN_TRIAL_SEED") or "") or clock_seed()
      print(string.format("     master seed %d (HRUN_TRIAL_SEED=%d HRUN_TRIALS=%d replays this run)", seed, seed,
        TRIALS))
      -- mounted relatime, as most are: reading the world (the fingerprint does) updates
      -- atimes, which an undo must not take for a change
      local mnt = btrfs_volume(1)
      local trials = Trials.new(mnt)
      local failures = {}
      local reference = trials:reference()
      print(string.format("     an uninterrupted run takes %.3f s, its rollback %.3f s", trials.durations.run,
        trials.durations.rollback))
      for _, p in ipairs(reference) do
        failures[#failures + 1] = { class = "reference", report = p, seed = seed }
      end
      local started = sys.clock()
      for _ = 1, TRIALS do
        for _ = 1, REPEAT do
          local f = trials:trial(seed)
          if f then
            failures[#failures + 1] = f
          end
        end
        seed = next_seed(seed)
      end
      local secs = sys.clock() - started
      print(string.format("     %d trial(s) in %.1f s (%.2f s a trial), %d failed", trials.n, secs,
        secs / math.max(1, trials.n), #failures))
      for note, seeds in pairs(trials.notes) do
        local list = {}
        for i, s in ipairs(seeds) do
          list[i] = tostring(s)
        end
        print(string.format("     note (not a failure): %s: %d trial(s), seeds %s", note, #seeds,
          table.concat(list, " ")))
      end
      if #failures > 0 then
        local classes, order = {}, {}
        local text = {}
        for _, f in ipairs(failures) do
          text[#text + 1] = f.report
          if not classes[f.class] then
            classes[f.class] = {}
            order[#order + 1] = f.class
          end
          table.insert(classes[f.class], f.seed)
        end
        text[#text + 1] = "failure classes (class: seeds):"
        for _, c in ipairs(order) do
          local seeds = {}
          for i, s in ipairs(classes[c]) do
            seeds[i] = tostring(s)
          end
          text[#text + 1] = string.format("  %s: %s", c, table.concat(seeds, " "))
        end
        error(string.format("%d of %d trial(s) failed\n%s", #failures, trials.n, table.concat(text, "\n\n")), 0)
      end
    end)
end)
