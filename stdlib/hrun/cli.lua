-- hrun.cli: the command line. Called by the host (runtime/main.c) with the private
-- library, argv (argv[0] is the program) and the stdlib directory; returns the exit
-- status. Every command is one entry of `commands`; every option one of `flags`.

local priv, argv, stdlib_dir = ...
priv.stdlib = stdlib_dir

local pretty = require "hrun.pretty"
local json = require "hrun.json"
local fs = require "hrun.fs"
local sys = require "hrun.sys"
-- fs.edit, fs.template: Lua on fs.read and fs.write
require("hrun.edit").install(fs, { null = json.null, is_secret = require("hrun.secrets").is })

local EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 3, 130

-- A usage error: exit 3 with the message and a hint.
local Usage = {}
Usage.__index = Usage
local function usage_error(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, Usage), 0)
end

-- {======================================================
-- Options. `only` lists the commands an option applies to; without it, it is global:
-- accepted by every command, in any position (before a script's path).
-- ======================================================

local PLAYBOOK_CMDS = { playbook = true, plan = true, repl = true }

local flags = {
  ["--state"] = { complete = "dir", key = "state", value = "DIR",
    help = "state directory (default $HRUN_STATE_DIR, /var/lib/hrun as root)" },
  ["--json"] = { key = "json", help = "events, errors and listings as JSON, one object a line" },
  ["-v"] = { key = "verbose", help = "tracebacks, every effect, debug lines" },
  ["--verbose"] = { key = "verbose" },
  ["--no-color"] = { key = "no_color", help = "no colours, even on a terminal" },
  ["--yes"] = { key = "yes", help = "answer yes to confirmations" },
  ["-y"] = { key = "yes" },
  ["-e"] = { key = "chunks", value = "CODE", multi = true },
  ["-h"] = { key = "help" },
  ["--help"] = { key = "help" },
  ["--version"] = { key = "version" },
  ["-p"] = { complete = "param", key = "params", value = "KEY=VALUE", multi = true, only = PLAYBOOK_CMDS },
  ["--param"] = { complete = "param", key = "params", value = "KEY=VALUE", multi = true, only = PLAYBOOK_CMDS },
  ["--params"] = { complete = "file", key = "params_files", value = "FILE", multi = true, only = PLAYBOOK_CMDS },
  ["--plan"] = { key = "plan", only = { playbook = true, rollback = true } },
  ["--from"] = { complete = "step", key = "from", value = "STEP", only = { playbook = true, plan = true } },
  ["--only"] = { complete = "phase", key = "only", value = "PHASE", only = { playbook = true, plan = true } },
  ["--debug"] = { key = "debug", only = { playbook = true } },
  ["--tags"] = { key = "tags", value = "TAG,…", multi = true, only = { playbook = true, plan = true } },
  ["--skip-tags"] = { key = "skip_tags", value = "TAG,…", multi = true, only = { playbook = true, plan = true } },
  ["--step"] = { key = "step", only = { playbook = true } },
  ["--require-clean"] = { key = "require_clean", only = { playbook = true, plan = true } },
  ["--diff"] = { key = "diff", only = { playbook = true, plan = true, resume = true } },
  ["--notify"] = { key = "notify", value = "URL", multi = true,
    only = { playbook = true, resume = true, rollback = true } },
  ["--break"] = { complete = "step", key = "break_at", value = "STEP", multi = true, only = { playbook = true } },
  ["--force"] = { key = "force", only = { resume = true, rollback = true } },
  ["-m"] = { key = "message", value = "WHY", only = { resolve = true } },
  ["--message"] = { key = "message", value = "WHY", only = { resolve = true } },
  ["--sandbox"] = { key = "sandbox", only = { playbook = true, plan = true, check = true } },
  ["--strict"] = { key = "strict", only = { check = true } },
  ["--allow-weak-sandbox"] = { key = "allow_weak_sandbox",
    only = { playbook = true, plan = true, check = true, resume = true, rollback = true } },
  ["--memory-limit"] = { key = "memory_limit", value = "SIZE",
    only = { playbook = true, plan = true, check = true, resume = true, rollback = true } },
  ["-n"] = { key = "count", value = "N", only = { runs = true } },
  ["--md"] = { key = "md", only = { show = true } },
  ["-a"] = { complete = { "xxh128", "sha256", "blake2b" }, key = "algo", value = "ALGO", only = { hash = true } },
  ["-j"] = { key = "jobs", value = "N", only = { hash = true, verify = true } },
  ["--save"] = { key = "save", value = "NAME", only = { hash = true } },
  ["-o"] = { complete = "file", key = "output", value = "FILE", only = { hash = true } },
  ["--format"] = { complete = { "coreutils", "sha256sum", "b2sum", "xxhsum", "hrun" }, key = "format",
    value = "FORMAT", only = { hash = true, verify = true } },
  ["--resume"] = { key = "resume", value = "NAME", only = { hash = true } },
  ["--exclude"] = { key = "exclude", value = "GLOB", multi = true, only = { hash = true } },
  ["--one-file-system"] = { key = "one_file_system", only = { hash = true } },
  ["--quick"] = { key = "quick", only = { verify = true } },
  ["--update"] = { key = "update", only = { fetch = true } },
  ["--older-than"] = { key = "older_than", value = "DURATION", only = { gc = true } },
  ["--dry-run"] = { key = "dry_run", only = { gc = true } },
  ["-H"] = { key = "hosts", value = "NAME=URL", multi = true,
    only = { playbook = true, plan = true, resume = true, rollback = true, hosts = true, check = true } },
  ["--host"] = { key = "hosts", value = "NAME=URL", multi = true,
    only = { playbook = true, plan = true, resume = true, rollback = true, hosts = true, check = true } },
  ["--hosts"] = { complete = "file", key = "hosts_file", value = "FILE",
    only = { playbook = true, plan = true, hosts = true } },
  ["--limit"] = { key = "limit", value = "NAMES", multi = true, only = { playbook = true, plan = true, rollback = true,
    hosts = true } },
  ["--forks"] = { key = "forks", value = "N", only = { playbook = true, plan = true, resume = true } },
  ["--fleet-member"] = { hidden = true, key = "fleet_member", value = "SPEC",
    only = { playbook = true, plan = true, resume = true, rollback = true } },
  ["--dir"] = { complete = "dir", key = "agent_dir", value = "DIR", only = { agent = true } },
  ["--detached"] = { hidden = true, key = "detached", value = "ID", only = { agent = true } },
  ["--candidates"] = { hidden = true, key = "candidates", value = "KIND", only = { completion = true } },
  ["--luals"] = { key = "luals", only = { help = true } },
}

local function flag_names()
  local names = {}
  for name in pairs(flags) do
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

-- }======================================================

-- Options of the tools people come from, and where hrun does that.
local PEERS = {
  ["--check"] = "hrun plan PLAYBOOK.lua changes nothing, as ansible-playbook --check",
  ["--dry-run"] = "hrun plan PLAYBOOK.lua changes nothing and lists every write it would do",
  ["-C"] = "hrun plan PLAYBOOK.lua changes nothing, as ansible-playbook -C",
  ["--list-tasks"] = "hrun check PLAYBOOK.lua lists the phases and steps",
}

local commands = {}
local command_order = { "playbook", "plan", "check", "resume", "rollback", "resolve", "runs", "show", "gc", "hash",
  "verify", "fetch", "hosts",
  "run", "-e", "repl", "version", "help", "completion", "agent" }

-- The state directory: --state, $HRUN_STATE_DIR, /var/lib/hrun for root, else
-- $XDG_STATE_HOME/hrun (~/.local/state/hrun). Created 0700 when `create`.
local function state_dir(opts, create)
  local dir = opts.state or sys.env("HRUN_STATE_DIR")
  if not dir or dir == "" then
    if sys.is_root() then
      dir = "/var/lib/hrun"
    else
      local xdg = sys.env("XDG_STATE_HOME")
      if not xdg or xdg == "" then
        xdg = (sys.env("HOME") or "/tmp") .. "/.local/state"
      end
      dir = xdg .. "/hrun"
    end
  end
  if create and not fs.exists(dir) then
    local ok, err = fs.mkdir(dir, { parents = true, mode = "0700" })
    if not ok then
      return nil, err
    end
  end
  return dir
end

-- {======================================================
-- Reporting
-- ======================================================

local function colorize(opts, code, s)
  if opts.color then
    return "\27[" .. code .. "m" .. s .. "\27[0m"
  end
  return s
end

local function report_error(opts, err)
  local msg = type(err) == "string" and err or pretty.format(err)
  if opts.json then
    io.stdout:write(json.encode({ event = "error", message = pretty.utf8(msg), time = sys.now() }), "\n")
  else
    io.stderr:write(colorize(opts, "1;31", "hrun: ") .. msg .. "\n")
  end
end

local function handler(opts)
  return function(e)
    if type(e) == "string" and opts.verbose then
      return debug.traceback(e, 2)
    end
    return e
  end
end

-- Runs fn(...) protected; returns the exit status.
local function protected(opts, fn, ...)
  local ok, err = xpcall(fn, handler(opts), ...)
  if ok then
    return EXIT_OK
  end
  report_error(opts, err)
  if priv.interrupted() > 0 then
    return EXIT_INTERRUPTED
  end
  return EXIT_FAILED
end

-- Runs fn(...) protected; returns its status, or 1 (130) after reporting its error.
local function protected_status(opts, fn, ...)
  local ok, res = xpcall(fn, handler(opts), ...)
  if ok then
    return res
  end
  report_error(opts, res)
  return priv.interrupted() > 0 and EXIT_INTERRUPTED or EXIT_FAILED
end

-- Runs a playbook command (hrun.play), turning its problems into exit statuses.
local function play(opts, fn, ...)
  local playmod = require "hrun.play"
  local ok, res = xpcall(fn, function(e)
    if getmetatable(e) == playmod.Bad or not opts.verbose then
      return e
    end
    return debug.traceback(tostring(e), 2)
  end, priv, opts, ...)
  if ok then
    return res
  end
  local status = playmod.report(res, function(msg)
    report_error(opts, msg)
  end)
  if status then
    if status == 3 and not opts.json and not (type(res) == "table" and res.acted) then
      io.stderr:write("hrun: nothing was run.\n")
    end
    return status
  end
  report_error(opts, res)
  return priv.interrupted() > 0 and EXIT_INTERRUPTED or EXIT_FAILED
end

local function need_state(opts)
  local dir, err = state_dir(opts, false)
  if not dir then
    usage_error("%s", err)
  end
  return dir
end

local function one_arg(name, args, what, optional)
  if #args > 1 then
    usage_error("%s takes one %s, got '%s' too", name, what, args[2])
  elseif #args == 0 and not optional then
    usage_error("%s needs a %s", name, what)
  end
  return args[1]
end

-- }======================================================

-- {======================================================
-- Commands
-- ======================================================

commands.playbook = {
  usage = "hrun PLAYBOOK.lua [-p K=V]... [--params FILE] [--plan] [--from STEP] [--only PHASE] [--tags T,…]",
  summary = "run a playbook: journaled, checked, rolled back on failure",
  help = [[
Runs the playbook's phases in order: each phase's checks, then its steps. Every write
a step makes is journaled with its inverse before it happens. When a step fails (an
error, a failed verify, a timeout, Ctrl-C) the run rolls back: the failed step's
effects are undone, then the completed steps, newest first. Exit status: 0 done,
1 failed and rolled back, 2 rollback incomplete, 3 bad playbook or usage, 4 another
run holds the lock, 130 interrupted.
  -p KEY=VALUE      set a parameter (typed as its default: number, boolean, JSON list)
  --params FILE     parameters from a .json or .lua file
  --plan            run the checks and reads, list the writes, change nothing
  --from STEP       start at STEP (or PHASE/STEP): the phases before its phase (and
                    their checks) and the steps before it are not run; the checks of
                    its phase all run
  --only PHASE      run one phase
  --diff            show each change of a file's content as a unified diff, before
                    it is made (a plan always shows them)
  --tags A,B        run only the steps tagged A or B (a phase's tags are its steps'),
                    and those tagged always
  --skip-tags A,B   leave out the steps (and handlers) tagged A or B
  --step            ask before each step: yes, no (skip it), continue without asking
  --require-clean   refuse a playbook whose git repository has changes not committed
  --notify URL      report the run's end to an ntfy topic URL (json:URL: as JSON)
  --debug           open the REPL when a step fails: retry, skip, continue, roll back
  --break STEP      open the REPL before STEP
  --sandbox         allow only the playbook's declared capabilities (always, for a
                    playbook from 'hrun fetch'): it runs in a process of its own,
                    confined by the kernel; see docs/security.md
  --allow-weak-sandbox  run a fetched playbook even where the kernel lacks part
                    of the confinement (Landlock, seccomp); the run says which
  --memory-limit SIZE  the memory a sandboxed playbook's process may use (default 512M)
  --hosts FILE      run it on each host of an inventory (a fleet): in the batches of
                    its serial, strategy linear or free, max_fail, on_host_failure;
                    a recap per host; see docs/hosts.md
  --limit NAMES     only these hosts or groups of the inventory (comma-separated)
  --forks N         at most N hosts of a fleet run a step at once (default 10)]],
  run = function(opts, args)
    local path = one_arg("a playbook", args, "path")
    if (opts.debug or opts.break_at) and (opts.sandbox or require("hrun.play").fetched(priv, path)) then
      usage_error("--debug and --break open a REPL with every power: not for a sandboxed playbook")
    end
    if opts.debug or opts.break_at then
      return play(opts, require("hrun.debugger").run, path, need_state(opts))
    end
    return play(opts, require("hrun.play").run, path, need_state(opts))
  end,
}

commands.plan = {
  arg = "playbook",
  usage = "hrun plan PLAYBOOK.lua [-p K=V]... [--from STEP] [--only PHASE] [--tags T,…] [--skip-tags T,…]",
  summary = "what the playbook would do, changing nothing",
  help = [[
Runs the checks and every read; records each write instead of doing it, and lists it
under its phase and step with every argument in full and how it would be undone
("cannot be undone" where no inverse exists); a change of a file's content as a
unified diff, a prune or restore with what it deletes, keeps and sets aside. Writes
return stand-ins (a write returns its path, a command succeeds with empty output); a
step or check that fails after a planned write is "unknown" (it may read what that
write changes) and the plan goes on. Same as hrun PLAYBOOK --plan. Ends with the
capabilities the playbook declares and those its run would use — each path, program,
unit and URL — marking any the declaration does not cover (a sandboxed run would
refuse them).]],
  run = function(opts, args)
    opts.plan = true
    return play(opts, require("hrun.play").run, one_arg("plan", args, "playbook"), need_state(opts))
  end,
}

commands.check = {
  arg = "playbook",
  usage = "hrun check PLAYBOOK.lua [--strict] [--sandbox]",
  summary = "validate and lint a playbook, run nothing",
  help = [[
Loads and validates the playbook (unknown fields, steps without run, duplicate names,
wrong types, malformed capabilities — each with file:line), then lints it. Errors, what
fails when it runs: a global the playbook environment does not have, a module function
that is not there (fs.wirte: did you mean fs.write?). Warnings: a global it sets, and —
for a playbook that declares capabilities or runs sandboxed — a module it calls whose
capability it does not declare. Lists the capabilities it declares and those its source
uses. Exit status 0 clean or warnings only, 3 errors (and warnings, with --strict).
  --strict          warnings fail too (exit 3)]],
  run = function(opts, args)
    return play(opts, require("hrun.play").check, one_arg("check", args, "playbook"), need_state(opts))
  end,
}

commands.resume = {
  arg = "run",
  usage = "hrun resume [RUN] [--force]",
  summary = "continue an interrupted run (default: the latest)",
  help = [[
Continues a run that hrun did not finish (killed, power cut) or that stopped on a
failure (on_failure = "stop"). First the children the crash left running are stopped
(SIGTERM, then SIGKILL), and what a write was making when hrun died (its temporary
files) is removed. Completed steps are not run again; the step that was running is
undone through its journaled effects and runs again from its start (a step with
resume = "rerun" runs again as it is). If the playbook changed since the run began,
resuming needs --force. A run that was rolling back is not resumed: hrun rollback
finishes it. A fleet run (--hosts) resumes each host where it stopped and starts those
not started yet.]],
  run = function(opts, args)
    return play(opts, require("hrun.play").resume, one_arg("resume", args, "run", true), need_state(opts))
  end,
}

commands.rollback = {
  arg = "run",
  usage = "hrun rollback [RUN] [--plan] [--force]",
  summary = "undo a run's changes (default: the latest)",
  help = [[
Undoes a finished, failed, stopped or crashed run: newest step first, a completed step
with an undo function by that function — of the playbook version that ran it, which
the journal keeps — and any other step by the inverses its writes journaled. Children
a crash left running are stopped first. Every undo attempt is journaled: a step is
undone only when its undo succeeded, and running hrun rollback RUN again retries
exactly what is not undone yet, by the same means. An inverse that finds its work
already done succeeds; one that finds what it would restore changed since the run
(a file edited, a subvolume written) leaves it and fails, naming it. The run is
rolled-back only when every step is undone; otherwise rollback-incomplete (exit 2),
and 'hrun show RUN' says what is not undone and why.
  --plan    list every undo in the order it would run, with its target, and whether
            it is already undone or changed since; change nothing (--json: events)
  --force   undo over later runs that touched the same targets (refused otherwise,
            exit 3), overwrite what changed since the run, and undo a step whose
            undo function is not to be had by its journaled inverses
  --limit NAMES  of a fleet run (--hosts): only these hosts; each host's run is
            undone, the host that finished last first]],
  run = function(opts, args)
    return play(opts, require("hrun.play").rollback, one_arg("rollback", args, "run", true), need_state(opts))
  end,
}

commands.resolve = {
  arg = "run",
  usage = "hrun resolve RUN -m WHY",
  summary = "mark a run that cannot be closed as resolved by hand",
  help = [[
Marks a run whose rollback is incomplete, or that crashed, as resolved by a person,
with the reason: journaled with who and when, shown by hrun runs, show and --md. It
changes nothing on the system and nothing of the run's steps; the run no longer
protects its snapshots from btrfs.prune. hrun rollback RUN still works on it.]],
  run = function(opts, args)
    return play(opts, require("hrun.play").resolve, one_arg("resolve", args, "run"), need_state(opts))
  end,
}

commands.runs = {
  usage = "hrun runs [-n N]",
  summary = "the journal, one line a run",
  help = "Lists the latest N runs (20), newest first: status, time, steps done.",
  run = function(opts, args)
    if #args > 0 then
      usage_error("runs takes no arguments, got '%s'", args[1])
    end
    if opts.count ~= nil and not tostring(opts.count):match("^[1-9]%d*$") then
      usage_error("-n %s: expected how many runs, a number such as 20", tostring(opts.count))
    end
    return play(opts, require("hrun.play").runs, need_state(opts))
  end,
}

commands.show = {
  arg = "run",
  usage = "hrun show RUN [--json|--md]",
  summary = "one run in full: steps, effects, errors",
  help = [[
Shows a run: its playbook and parameters, each phase and step with its status and
time, every effect with how it is undone, and the errors. --json prints it as one
JSON object; --md as a migration log to paste into notes.]],
  run = function(opts, args)
    return play(opts, require("hrun.play").show, one_arg("show", args, "run", true), need_state(opts))
  end,
}

commands.gc = {
  usage = "hrun gc --older-than DURATION [--dry-run]",
  summary = "remove what finished runs left: restore asides, stashes",
  help = [[
Removes what runs that finished more than DURATION ago (30d, 12h, 2w, 1d12h; units s,
m, h, d, w) left behind that the journal knows of: the copies btrfs.restore set aside
(<target>.hrun-RUN-TIME) and each run's stash (what its writes destroyed, kept for its
undo). A run that is not finished — running, crashed, stopped, rolling back or with
its rollback incomplete — is never touched. A finished run that is not rolled back
needs those to be rolled back: gc journals it as collected, and hrun rollback refuses
it after (--force undoes what it still can). The journal's rows stay (hrun show of an
old run still works). Each collection is journaled. Exit 1 if something could not be
removed.
  --dry-run   list what it would remove and which runs would no longer be rolled
              back; change nothing]],
  run = function(opts, args)
    if #args > 0 then
      usage_error("gc takes no arguments, got '%s'", args[1])
    end
    if opts.older_than == nil then
      usage_error("gc needs --older-than DURATION (such as 30d, 12h, 2w)")
    end
    local play_mod = require "hrun.play"
    local seconds = play_mod.duration(opts.older_than)
    if not seconds then
      usage_error("--older-than %s: expected a duration such as 30d, 12h, 2w, 1d12h (units s, m, h, d, w)",
        tostring(opts.older_than))
    end
    return play(opts, play_mod.gc, need_state(opts), seconds)
  end,
}

commands.hash = {
  arg = "path",
  usage = "hrun hash PATH... [-a ALGO] [-j N] [--save NAME] [-o FILE] [--format F] [--resume NAME]",
  summary = "hash trees in parallel into manifests",
  help = [[
Hashes every entry under each PATH (symlinks recorded, not followed) with N threads
(-j; default: the CPUs) into a manifest kept in the journal; --save NAME names it for
hrun verify. -a xxh128 (default), sha256 or blake2b. -o FILE also writes the files'
digests in --format sha256sum, b2sum, xxhsum or coreutils (the default for -o), or
every entry with its metadata as JSON lines (--format hrun); --format alone prints
them. --exclude GLOB (repeatable), --one-file-system.
--resume NAME continues a hash that was killed. A progress bar on a terminal, progress
events with --json. Exit status 1 when an entry could not be read (the manifest is
incomplete).]],
  run = function(opts, args)
    if #args == 0 and not opts.resume then
      usage_error("hash needs a PATH")
    end
    return protected_status(opts, require("hrun.hashcmd").hash, priv, opts, args)
  end,
}

commands.verify = {
  arg = "file",
  usage = "hrun verify NAME|FILE [PATH] [--quick]",
  summary = "hash again and report changed, missing, added",
  help = [[
Hashes PATH (default: where the manifest was made) again and compares it with the
manifest NAME, or with FILE — a sha256sum, b2sum or xxhsum file, its paths relative to
PATH (default: FILE's directory). Lists what changed, went missing, was added, or
changed its metadata only (mode, mtime). --quick trusts files whose size, mtime and
inode are unchanged, as rsync does. Exit status 0 when nothing differs, 1 otherwise.]],
  run = function(opts, args)
    if #args == 0 or #args > 2 then
      usage_error("verify takes NAME|FILE and an optional PATH")
    end
    return protected_status(opts, require("hrun.hashcmd").verify, priv, opts, args)
  end,
}

commands.fetch = {
  usage = "hrun fetch URL[@REF] [NAME] | hrun fetch --update NAME",
  summary = "get a shared playbook repository, pinned to a commit",
  help = [[
Clones the git repository at URL (a path, file://, git://, https://) into the state
directory as NAME (default: the URL's last element without .git), at REF (a branch, a
tag or a commit; default: the remote's HEAD), and pins it to that commit: a lock file
records URL, ref and commit. Its playbooks then run as hrun NAME/PLAYBOOK.lua.
--update NAME fetches again and shows the log and the diff from the pinned commit to
the branch's or tag's new one, then moves the pin when you say so (--yes: without
asking). A fetch that fails leaves nothing behind.]],
  run = function(opts, args)
    local fetch = require "hrun.fetch"
    local state = need_state(opts)
    if opts.update then
      if #args ~= 1 then
        usage_error("fetch --update takes the NAME of a fetched repository")
      end
    elseif #args < 1 or #args > 2 then
      usage_error("fetch takes URL[@REF] and an optional NAME")
    end
    local ok, res = xpcall(function()
      local dir, err = state_dir(opts, true)
      if not dir then
        error(err, 0)
      end
      if opts.update then
        return fetch.update(priv, opts, state, args[1])
      end
      return fetch.fetch(priv, opts, state, args[1], args[2])
    end, handler(opts))
    if ok then
      return res
    end
    report_error(opts, type(res) == "table" and res.message or res)
    if getmetatable(res) == fetch.Usage then
      return EXIT_USAGE
    end
    return priv.interrupted() > 0 and EXIT_INTERRUPTED or EXIT_FAILED
  end,
}

commands.run = {
  usage = "hrun SCRIPT.lua [ARG...]",
  summary = "run a Lua script with every module loaded",
  help = [[
Runs SCRIPT.lua (or standard input for "-") with fs, exec, json and sys as globals.
The script gets its arguments as ... and in the global table arg (arg[0] is the
script), as lua does. Options after the script's path are the script's own. A file
that calls playbook{…} is a playbook, not a script (see 'hrun help playbook').
An uncaught error prints file:line: message (a traceback with -v) and exits 1.]],
  run = function(opts, args)
    local path = args[1]
    local fn, err
    if path ~= "-" and require("hrun.play").fetched(priv, path) then
      report_error(opts, path .. ": a fetched repository's scripts do not run (they would have every " ..
        "power); only its playbooks do, in the capability sandbox")
      return EXIT_USAGE
    end
    if path == "-" then
      fn, err = load(io.stdin:read("a"), "=stdin", "t")
    elseif not fs.exists(path) then -- what does not exist is bad input, as for every command
      local _, why = fs.stat(path)
      report_error(opts, (tostring(why):gsub("^fs%.stat: ", "")))
      return EXIT_USAGE
    else
      fn, err = loadfile(path, "t")
    end
    if not fn then
      report_error(opts, err)
      return EXIT_FAILED
    end
    local script_arg = { [0] = path }
    for i = 2, #args do
      script_arg[i - 1] = args[i]
    end
    _G.arg = script_arg
    return protected(opts, fn, table.unpack(script_arg, 1, #script_arg))
  end,
}

commands["-e"] = {
  usage = "hrun -e CODE [-e CODE]...",
  summary = "run a chunk of Lua with every module loaded",
  help = [[
Runs each CODE in order, as a chunk with fs, exec, json and sys as globals:
  hrun -e 'print(exec.run({"uname", "-r"}).stdout)']],
  run = function(opts)
    for i, code in ipairs(opts.chunks) do
      local fn, err = load(code, "=(command line " .. i .. ")", "t")
      if not fn then
        report_error(opts, err)
        return EXIT_FAILED
      end
      local status = protected(opts, fn)
      if status ~= EXIT_OK then
        return status
      end
    end
    return EXIT_OK
  end,
}

-- The Lua modules a REPL loads beside the native ones, as playbooks have them.
local HELPERS = { "checks", "pg", "migrate", "notify" }

-- help([what]) in the REPL, from hrun.docs: help() the modules with a line on each;
-- help("fs") or help(fs) each function's signature, kind (pure, read, write: from the
-- registry; Lua for functions written in Lua), capability and one-line doc, in columns
-- that fit 100; help("fs.write") (or help(fs.write)) one function; help("repo"),
-- help("dsl"), help("ctx") git.open's object, the playbook language and a step's ctx.
local HELP_WIDTH = 100
local HELP_KINDS = { pure = "computes only", read = "looks at the system",
  write = "changes the system: journaled, recorded in plans" }

local function help_width(s)
  return utf8.len(s) or #s
end

local function help_pad(s, w)
  return s .. string.rep(" ", w - help_width(s))
end

-- text folded at spaces into lines that fit HELP_WIDTH after indent
local function help_fold(text, indent)
  local lines, line = {}, nil
  for word in text:gmatch("%S+") do
    if line and help_width(indent .. line .. " " .. word) > HELP_WIDTH then
      lines[#lines + 1] = indent .. line
      line = word
    else
      line = line and (line .. " " .. word) or word
    end
  end
  lines[#lines + 1] = indent .. (line or "")
  return table.concat(lines, "\n")
end

local function repl_help(env)
  local docs = require "hrun.docs"
  local prims = {}
  for _, p in ipairs(priv.primitives()) do
    prims[p.name] = p
  end
  local write = function(...)
    io.stdout:write(...)
  end
  -- the object a section documents in this REPL: a module, or nil
  local function object(s)
    local v = s.what == "module" and env[s.name]
    return type(v) == "table" and v or nil
  end
  -- kind and capability of entry e of section s
  local function kind_of(s, e)
    local p = prims[(s.what == "methods" and "git" or s.name) .. "." .. e.name] -- repo:f is git.f
    if p then
      return p.kind, p.cap or "-"
    end
    local obj = object(s)
    if obj and obj[e.name] ~= nil and type(obj[e.name]) ~= "function" then
      return "value", "-"
    end
    return "Lua", "-"
  end
  -- the entries of a section this REPL has (a module's functions that exist, and any
  -- public one the docs lack, named as such)
  local function entries(s)
    if s.what == "dsl" then -- those the DSL has
      local have, out = require("hrun.dsl").constructors(), {}
      for _, e in ipairs(s.entries) do
        out[#out + 1] = have[e.name] and e or nil
      end
      return out
    end
    local obj = object(s)
    if s.what ~= "module" or not obj then
      return s.entries
    end
    local out = {}
    for _, e in ipairs(s.entries) do
      if obj[e.name] ~= nil then
        out[#out + 1] = e
      end
    end
    local extra = {}
    for k, v in pairs(obj) do
      if type(k) == "string" and k:sub(1, 1) ~= "_" and type(v) == "function" and not s.by_name[k] then
        extra[#extra + 1] = k
      end
    end
    table.sort(extra)
    for _, k in ipairs(extra) do
      out[#out + 1] = { name = k, sig = s.name .. "." .. k .. "(…)", doc = "(not in hrun.docs: see " .. s.ref .. ")" }
    end
    return out
  end

  local function list_modules()
    local rows, w = {}, 0
    for _, s in ipairs(docs.sections) do
      if object(s) then
        rows[#rows + 1] = s
        w = math.max(w, help_width(s.name))
      end
    end
    write("Modules (help(\"fs\") lists one's functions, help(\"fs.write\") says what one does):\n")
    for _, s in ipairs(rows) do
      write("  ", help_pad(s.name, w), "  ", s.doc, "\n")
    end
    write("Also help(\"repo\"): git.open's repository; help(\"dsl\"): playbook, phase, step, check, ",
      "required;\nhelp(\"ctx\"): what a step's functions get. docs/reference.md says it all in full.\n")
  end

  local function list_section(s)
    local list = entries(s)
    local cols = s.what ~= "dsl" and s.what ~= "ctx"
    local rows, sw, kw, cw = {}, 0, 0, 0
    for _, e in ipairs(list) do
      local kind, cap
      if cols then
        kind, cap = kind_of(s, e)
        kw, cw = math.max(kw, help_width(kind)), math.max(cw, help_width(cap))
      end
      rows[#rows + 1] = { e = e, kind = kind, cap = cap }
      if help_width(e.sig) <= 36 then
        sw = math.max(sw, help_width(e.sig))
      end
    end
    write(s.name, " — ", s.doc, "\n")
    if s.what == "module" and not object(s) then -- journal, without a playbook's state
      write("  (playbooks have it; this REPL does not)\n")
    end
    for _, r in ipairs(rows) do
      local head = "  " .. help_pad(r.e.sig, math.max(sw, help_width(r.e.sig)))
      if help_width(r.e.sig) > sw then -- too long for the column: the rest on the next line
        write(head, "\n")
        head = "  " .. string.rep(" ", sw)
      end
      if cols then
        head = head .. "  " .. help_pad(r.kind, kw) .. "  " .. help_pad(r.cap, cw)
      end
      local bare = head:gsub("%s+$", "")
      if bare ~= "" and help_width(head) + 2 + help_width(r.e.doc) <= HELP_WIDTH then
        write(head, "  ", r.e.doc, "\n")
      else -- the doc under the signature
        write(bare ~= "" and (bare .. "\n") or "", help_fold(r.e.doc, "      "), "\n")
      end
    end
    if #list == 0 then
      write("  (none in this REPL)\n")
    end
    write("More in ", s.ref, ".\n")
  end

  local function show_entry(s, e)
    write(e.sig, "\n")
    if s.what == "module" or s.what == "methods" then
      local kind, cap = kind_of(s, e)
      if kind == "Lua" then
        write("  Lua (written in Lua: the native functions it calls say what it reads and writes)\n")
      elseif kind ~= "value" then -- json.null's doc says what it is
        write(help_fold(string.format("%s%s, %s", kind, HELP_KINDS[kind] and (" (" .. HELP_KINDS[kind] .. ")") or "",
          cap == "-" and "no capability" or ("capability " .. cap)), "  "), "\n")
      end
    end
    write(help_fold(e.doc, "  "), "\n", "  More in ", s.ref, ".\n")
  end

  -- "fs", "fs.write", "repo:status", "step" → section, entry (nil when there is none);
  -- nil and a message naming the nearest name otherwise
  local function resolve(name)
    local sname, ename = name:match("^([%w_]+)[.:]([%w_]+)$")
    if not sname then
      local s = docs.section(name)
      if s then
        return s
      end
      local d = docs.entry("dsl", name)
      if d then
        return docs.section("dsl"), d
      end
    else
      local e = docs.entry(sname, ename)
      if e then
        return docs.section(sname), e
      end
    end
    local all = {}
    for _, s in ipairs(docs.sections) do
      all[#all + 1] = s.name
      for _, e in ipairs(s.entries) do
        all[#all + 1] = s.name .. (s.what == "methods" and ":" or ".") .. e.name
      end
    end
    local near = priv.nearest(name, all)
    return nil, string.format("no %s '%s'%s; help() lists the modules", sname and "function" or "module", name,
      near and string.format(" (did you mean '%s'?)", near) or "")
  end

  -- a value given instead of a name: a module, one of its functions, a repository, ctx
  local function name_of(v)
    for _, s in ipairs(docs.sections) do
      local obj = object(s)
      if obj == v then
        return s.name
      end
      for _, e in ipairs(obj and s.entries or {}) do
        if obj[e.name] == v then
          return s.name .. "." .. e.name
        end
      end
    end
    if type(v) == "table" and type(rawget(v, "gitdir")) == "string" then
      return "repo"
    end
    if v == rawget(env, "ctx") then
      return "ctx"
    end
  end

  return function(what)
    if what == nil then
      return list_modules()
    end
    local name = type(what) == "string" and what or name_of(what)
    if not name then
      write(string.format("help: a %s is neither a module nor one of their functions; help() lists the modules\n",
        type(what)))
      return
    end
    local s, e = resolve(name)
    if not s then
      write(e, "\n")
    elseif e then
      show_entry(s, e)
    else
      list_section(s)
    end
  end
end

commands.repl = {
  arg = "playbook",
  usage = "hrun repl [PLAYBOOK.lua [-p K=V]...]",
  summary = "interactive Lua with every module loaded",
  help = [[
Reads Lua at a prompt: expressions print their values (tables pretty-printed),
incomplete chunks continue on the next line, Tab completes globals and module
fields, the history is kept in the state directory. Ctrl-C cancels the line or
interrupts a running call; Ctrl-D exits. With a pipe on standard input it reads
chunks without prompts, so it can be scripted; the exit status is 1 if any failed.
With a playbook: phases() and steps() list it, run_step(NAME) and run_check(NAME)
run one on its own (journaled as a debug run), ctx is the last step's context and
rollback() undoes what the session did.]],
  run = function(opts, args)
    local path = one_arg("repl", args, "playbook", true)
    local repl = require "hrun.repl"
    for _, m in ipairs(HELPERS) do -- the Lua modules too, as playbooks have them
      _G[m] = _G[m] or require("hrun." .. m)
    end
    local ropts = { env = _G, color = opts.color, verbose = opts.verbose }
    local session
    if path then
      local dbg = require "hrun.debugger"
      local ok, res = pcall(dbg.session, priv, opts, path, need_state(opts))
      if not ok then
        local status = require("hrun.play").report(res, function(msg)
          report_error(opts, msg)
        end)
        if status then
          return status
        end
        error(res, 0)
      end
      session = res
      ropts.env = session.env
    end
    ropts.env.help = repl_help(ropts.env)
    local status
    if not priv.isatty(0) then
      status = repl.piped(priv, ropts, io.stdin)
    else
      local dir, err = state_dir(opts, true)
      if dir then
        ropts.history = dir .. "/repl_history"
      else
        io.stderr:write("hrun: no history: ", err, "\n")
      end
      ropts.banner = string.format(
        "hrun %s (%s) — every module loaded; help() lists them%s. Ctrl-D exits.",
        priv.version, _VERSION,
        session and (" — playbook " .. session.pb.name .. ": phases(), steps(), run_step(name)") or "")
      status = repl.interactive(priv, ropts)
    end
    if session then
      session:close()
    end
    return status
  end,
}

commands.version = {
  usage = "hrun version",
  summary = "print the version",
  help = "Prints hrun's version and the Lua it embeds; with -v, where its Lua library is.",
  run = function(opts)
    io.stdout:write(string.format("hrun %s%s (%s)\n", priv.version, priv.portable and " portable" or "", _VERSION))
    if opts.verbose then
      io.stdout:write("library: ", stdlib_dir, "\n", "sqlite: ", priv.sqlite_version, "\n")
    end
    return EXIT_OK
  end,
}

commands.hosts = {
  arg = { "check", "trust" },
  usage = "hrun hosts check|trust [NAME…] [PLAYBOOK.lua] [-H NAME=URL…]",
  summary = "check other hosts, or trust their ssh keys before a run",
  help = [[
The hosts a playbook reaches (its hosts = { … }, and -H NAME=URL):
  check   connects to each: reachable or why not (DNS, refused, key, login), the hrun
          there (installed, or the portable build hrun uploads), root or not. Exit 1
          when one is not reachable.
  trust   fetches each named host's key (all hosts when none is named), shows its
          fingerprint and, confirmed (or --yes), keeps it in the state directory's
          known_hosts, which hrun's ssh reads besides yours. Runs never ask: a host
          whose key is not known is refused at pre-flight.
Other hosts are reached with the system's ssh (your ssh_config, ProxyJump, agent);
$HRUN_SSH_CONFIG names another ssh_config file.]],
  run = function(opts, args)
    local what = args[1]
    if what ~= "check" and what ~= "trust" then
      usage_error("hosts needs check or trust (hrun hosts check PLAYBOOK.lua)")
    end
    local names, path = {}, nil
    for i = 2, #args do
      if args[i]:match("%.lua$") then
        path = args[i]
      else
        names[#names + 1] = args[i]
      end
    end
    local state = state_dir(opts, true)
    return play(opts, require("hrun.hostcmd")[what], path, names, state)
  end,
}

commands.agent = {
  usage = "hrun agent [--dir DIR]",
  summary = "the other end of a controller's channel (started by hrun over ssh)",
  help = [[
Serves one controller over stdin and stdout: hrun starts it on another host with
ssh, and sends it the calls of the steps that run there. Each write is journaled in
DIR/agent.db (default /var/lib/hrun/agent) before it acts. Not for people to run.]],
  run = function(opts, args)
    if #args > 0 then
      usage_error("agent takes no arguments, got '%s'", args[1])
    end
    return require("hrun.agent").main(priv, opts)
  end,
}

-- The commands a person types by name.
local function visible_commands()
  local out = {}
  for _, name in ipairs(command_order) do
    if name ~= "playbook" and name ~= "run" and name ~= "-e" then
      out[#out + 1] = name
    end
  end
  return out
end

-- What the completion scripts are written from (hrun.complete): the commands a person
-- types, and every option but the internal ones, with where each applies.
local function completion_spec()
  -- a playbook's path in the command's place: its options, not a word to type
  local spec = { commands = { { name = "playbook", summary = commands.playbook.summary, hidden = true } }, flags = {} }
  for _, name in ipairs(visible_commands()) do
    if name ~= "agent" then
      local c = commands[name]
      spec.commands[#spec.commands + 1] = { name = name, summary = c.summary, arg = c.arg }
    end
  end
  local help_of = {} -- an alias (-y) says what the option it stands for (--yes) does
  for _, f in pairs(flags) do
    help_of[f.key] = help_of[f.key] or f.help
  end
  for _, name in ipairs(flag_names()) do
    local f = flags[name]
    if not f.hidden then
      spec.flags[#spec.flags + 1] = { name = name, value = f.value, help = f.help or help_of[f.key], only = f.only,
        complete = f.complete }
    end
  end
  return spec
end

commands.completion = {
  arg = { "bash", "zsh", "fish" },
  usage = "hrun completion bash|zsh|fish",
  summary = "the shell's completion script for hrun",
  help = [[
Writes the completion script for bash, zsh or fish, made from hrun's own tables of
commands and options: commands, options, playbook files, run ids from the journal
(of --state or the default state directory), and after -p the parameters the playbook
on the line declares. The packages install them; by hand:
  hrun completion bash > ~/.local/share/bash-completion/completions/hrun
  hrun completion zsh > ~/.zfunc/_hrun        (with fpath+=~/.zfunc before compinit)
  hrun completion fish > ~/.config/fish/completions/hrun.fish
Completing a playbook's parameters, phases or steps loads it with nothing but the
playbook language, its code bounded: never its module calls.]],
  run = function(opts, args)
    local complete = require "hrun.complete"
    if opts.candidates then
      local state = state_dir(opts, false)
      for _, word in ipairs(complete.candidates(priv, opts.candidates, args[1], state)) do
        io.stdout:write(word, "\n")
      end
      return EXIT_OK
    end
    if #args ~= 1 then
      usage_error("completion needs one shell: bash, zsh or fish")
    end
    local text, err = complete.script(args[1], completion_spec())
    if not text then
      usage_error("%s", err)
    end
    io.stdout:write(text)
    return EXIT_OK
  end,
}

-- s padded with spaces to `width` characters (not bytes: "…" is one)
local function pad(s, width)
  return s .. string.rep(" ", math.max(1, width - (utf8.len(s) or #s)))
end

local function general_help()
  local lines = {
    "hrun — journaled, checked, reversible changes to a server, written in Lua.",
    "",
    "Usage:",
  }
  for _, name in ipairs(command_order) do
    local usage = commands[name].usage:gsub(" %[%-.*", " …")
    local _, open = usage:gsub("%[", "")
    local _, close = usage:gsub("%]", "")
    usage = usage .. string.rep("]", open - close) -- "[PLAYBOOK.lua …]": what was cut closed
    if utf8.len(usage) > 45 then -- too long for its column: the summary on the next line
      lines[#lines + 1] = "  " .. usage
      lines[#lines + 1] = "  " .. string.rep(" ", 46) .. commands[name].summary
    else
      lines[#lines + 1] = "  " .. pad(usage, 46) .. commands[name].summary
    end
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Global options (any command, any position before a script's path):"
  for _, name in ipairs({ "--state", "--json", "-v", "--no-color", "--yes" }) do
    local f = flags[name]
    lines[#lines + 1] = string.format("  %-14s %s", name .. (f.value and (" " .. f.value) or ""), f.help)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "'hrun help COMMAND' tells more; 'hrun help modules' lists the native functions."
  lines[#lines + 1] = "Exit status: 0 done, 1 failed (rolled back), 2 rollback incomplete, 3 bad playbook or"
  lines[#lines + 1] = "usage, 4 another run holds the lock, 130 interrupted."
  return table.concat(lines, "\n") .. "\n"
end

-- Every native function: module.name, whether it reads or writes, its capability.
local function modules_help(opts)
  local prims = priv.primitives()
  table.sort(prims, function(a, b)
    return a.name < b.name
  end)
  if opts.json then
    for _, p in ipairs(prims) do
      io.stdout:write(json.encode({ name = p.name, kind = p.kind, cap = p.cap }), "\n")
    end
    return EXIT_OK
  end
  io.stdout:write("Native functions (pure: computes only; read: looks at the system;\n",
    "write: changes it, recorded in plans and journaled), with the capability each needs:\n\n")
  for _, p in ipairs(prims) do
    io.stdout:write(string.format("  %-16s %-6s %s\n", p.name, p.kind, p.cap or "-"))
  end
  return EXIT_OK
end

commands.help = {
  arg = "command",
  usage = "hrun help [COMMAND|modules] [--luals]",
  summary = "this help, a command's, or the list of native functions",
  help = [[
Prints the list of commands, or the usage and description of one. 'hrun help modules'
lists every native function with whether it reads or writes and the capability it
needs (one JSON object a line with --json). 'hrun help --luals' writes annotations for
lua-language-server: every function a playbook sees, the playbook language and ctx,
with their one-line docs (installed as share/hrun/luals/hrun.lua; docs/install.md).]],
  run = function(opts, args)
    local name = args[1]
    if opts.luals then
      if name then
        usage_error("help --luals takes no command, got '%s'", name)
      end
      io.stdout:write(require("hrun.luals").text(), "\n")
      return EXIT_OK
    elseif not name then
      io.stdout:write(general_help())
      return EXIT_OK
    elseif name == "modules" then
      return modules_help(opts)
    end
    local cmd = commands[name] or (name == "e" and commands["-e"])
    if not cmd then
      local near = priv.nearest(name, command_order)
      usage_error("no command '%s'%s", name, near and string.format(" (did you mean '%s'?)", near) or "")
    end
    io.stdout:write("Usage: ", cmd.usage, "\n\n", cmd.help, "\n")
    return EXIT_OK
  end,
}

-- }======================================================

-- {======================================================
-- Parsing
-- ======================================================

local function is_file_arg(word)
  return word == "-" or word:match("%.lua$") or word:find("/", 1, true)
end

-- A file that calls playbook{…} is a playbook; other .lua files are scripts. NAME/x.lua
-- that is not here may be a fetched repository's playbook (resolved once --state is
-- known): its options are hrun's.
local function kind_of_file(path)
  if path == "-" then
    return "run"
  end
  local src = fs.read(path)
  if src and require("hrun.dsl").is_playbook_source(src) then
    return "playbook"
  end
  if not src and path:match("^[%w_][%w._-]*/.") and not fs.exists(path) then
    return "playbook"
  end
  return "run"
end

-- Splits argv into the command's name, the options and the command's arguments (and,
-- for -e followed by a script, the script's).
local function parse(args)
  local opts, words, name = { chunks = {} }, {}, nil
  local given = {} -- option -> first command-specific one seen, checked once the command is known
  local i = 1
  while i <= #args do
    local a = args[i]
    if name == "run" then
      words[#words + 1] = a -- after a script's path, everything is the script's
    elseif name == "help" and a == "-e" then
      words[#words + 1] = a -- hrun help -e
    elseif a == "--" then
      for j = i + 1, #args do
        words[#words + 1] = args[j]
      end
      if name == nil and #words > 0 then
        name = kind_of_file(words[1])
      end
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      local flag, inline = a:match("^(%-%-[%w-]+)=(.*)$")
      flag = flag or a
      local spec = flags[flag]
      if not spec then
        local pointer = PEERS[flag]
        local near = not pointer and priv.nearest(flag, flag_names())
        usage_error("unknown option '%s'%s", a, pointer and (" (" .. pointer .. ")")
          or near and string.format(" (did you mean '%s'?)", near) or "")
      end
      local value = true
      if spec.value then
        value = inline
        if value == nil then
          i = i + 1
          value = args[i]
        end
        if value == nil then
          usage_error("option %s needs a value (%s)", flag, spec.value)
        end
      elseif inline then
        usage_error("option %s takes no value", flag)
      end
      if spec.only then
        given[#given + 1] = flag
      end
      if spec.multi then
        opts[spec.key] = opts[spec.key] or {}
        table.insert(opts[spec.key], value)
      else
        opts[spec.key] = value
      end
    elseif name == nil then
      if commands[a] and a ~= "run" and a ~= "-e" and a ~= "playbook" then
        name = a
      elseif is_file_arg(a) then
        name = kind_of_file(a)
        words[1] = a
      elseif a == "run" or a == "playbook" then -- the command is the playbook's path
        usage_error("unknown command '%s': a playbook runs by its path alone (hrun PLAYBOOK.lua)", a)
      else
        local near = priv.nearest(a, visible_commands())
        usage_error("unknown command '%s'%s", a,
          near and string.format(" (did you mean '%s'?)", near) or " (a playbook's or script's name ends in .lua)")
      end
    else
      words[#words + 1] = a
    end
    i = i + 1
  end
  -- a fetched repository's playbook: hrun NAME/playbook.lua
  if (name == "run" or name == "playbook" or name == "plan" or name == "check") and words[1] then
    local found = require("hrun.fetch").resolve(state_dir(opts, false), words[1])
    if found then
      words[1] = found
      if name == "run" or name == "playbook" then
        name = kind_of_file(found)
      end
    end
  end
  if opts.help then
    return "help", opts, { name }
  elseif opts.version then
    return "version", opts, {}
  end
  local chunks = #opts.chunks > 0
  if chunks and name and name ~= "run" then
    usage_error("-e cannot be combined with the command '%s'", name)
  end
  local effective = chunks and "-e" or name or "help"
  for _, flag in ipairs(given) do
    if not flags[flag].only[effective] and PEERS[flag] then -- --dry-run is gc's: elsewhere, another tool's
      usage_error("unknown option '%s' (%s)", flag, PEERS[flag])
    elseif not flags[flag].only[effective] then
      usage_error("option %s does not apply to %s", flag,
        effective == "run" and "a plain script (its options go after the path)" or ("'" .. effective .. "'"))
    end
  end
  if chunks then
    return "-e", opts, {}, name == "run" and words or nil
  end
  return effective, opts, words
end

-- }======================================================

-- With HRUN_COVERAGE=FILE, the names of the primitives this process called are
-- appended to FILE when the state closes (also after os.exit(code, true)); the test
-- suite's bindcov check reads them.
local function write_coverage()
  local file = sys.env("HRUN_COVERAGE")
  local f = io.open(file, "a")
  if not f then
    return
  end
  for _, p in ipairs(priv.primitives()) do
    if p.calls > 0 then
      f:write(p.name, "\n")
    end
  end
  f:close()
end

local function main()
  if (sys.env("HRUN_COVERAGE") or "") ~= "" then
    debug.getregistry()["hrun.coverage"] = setmetatable({}, { __gc = write_coverage })
  end
  local args = {}
  for i = 1, #argv do
    args[i] = argv[i]
  end
  local ok, name, opts, cargs, script = pcall(parse, args)
  if not ok then
    local err = name
    if getmetatable(err) == Usage then
      io.stderr:write("hrun: ", err.message, "\nTry 'hrun help'.\n")
      return EXIT_USAGE
    end
    error(err, 0)
  end
  local env_color = sys.env("NO_COLOR")
  opts.color = not opts.no_color and not opts.json and (env_color == nil or env_color == "")
    and priv.isatty(1) and priv.isatty(2)
  priv.setoptions({ verbose = opts.verbose, color = opts.color })
  -- scripts and the REPL keep manifests in the state directory's journal
  local shared_journal
  priv.setjournal(function()
    if not shared_journal then
      local dir = state_dir(opts, false)
      shared_journal = assert(require("hrun.journal").open(priv, dir))
    end
    return shared_journal.db
  end)
  -- scripts and the REPL prune snapshots too: never one an unfinished run still needs
  priv.setprotector(function(path)
    local dir = state_dir(opts, false)
    if not dir or not fs.exists(dir .. "/journal.db") then
      return false
    end
    local j = assert(require("hrun.journal").open(priv, dir))
    local yes = j:references(path)
    j:close()
    return yes
  end)
  local status
  ok, status = pcall(commands[name].run, opts, cargs)
  if not ok then
    if getmetatable(status) == Usage then
      io.stderr:write("hrun: ", status.message, "\nTry 'hrun help'.\n")
      return EXIT_USAGE
    end
    error(status, 0)
  end
  -- -e followed by a script: hrun -e 'x = 1' script.lua
  if status == EXIT_OK and script then
    status = commands.run.run(opts, script)
  end
  return status
end

return main()
