-- hrun.play: the playbook commands — run, plan, check, resume, rollback, runs, show.
-- Each takes the private library, the parsed options and its arguments, and returns
-- the exit status; the command line (hrun.cli) parses and dispatches.

local boundary = require "hrun.boundary"
local dsl = require "hrun.dsl"
local exec = require "hrun.exec"
local fs = require "hrun.fs"
local json = require "hrun.json"
local journal_mod = require "hrun.journal"
local runner_mod = require "hrun.runner"
local sys = require "hrun.sys"
local ui_mod = require "hrun.ui"

local M = {}

local EXIT_FAILED, EXIT_BAD, EXIT_LOCKED = 1, 3, 4

-- Raised for a problem the user must fix before anything runs: exit 3.
local Bad = {}
Bad.__index = Bad
local function bad(lines, acted)
  error(setmetatable({ lines = type(lines) == "table" and lines or { lines }, acted = acted }, Bad), 0)
end
M.Bad = Bad

-- The modules a playbook sees as globals.
function M.modules(priv, state)
  return {
    fs = fs, exec = exec, json = json, sys = sys, btrfs = require("hrun.btrfs"), hash = require("hrun.hash"),
    git = require("hrun.git"), nixos = require("hrun.nixos"), http = require("hrun.http"),
    service = require("hrun.service"), podman = require("hrun.podman"), sqlite = require("hrun.sqlite"),
    secrets = require("hrun.secrets"),
    notify = require("hrun.notify"), pg = require("hrun.pg"), checks = require("hrun.checks"),
    migrate = require("hrun.migrate"),
    journal = journal_mod.public(priv, state),
  }
end

-- The Lua heap a sandboxed playbook may use unless --memory-limit says otherwise.
local DEFAULT_MEMORY = 512 * 1024 * 1024

-- Is path in a repository `hrun fetch` made, in this state directory or any other?
-- However the path is written (relative, "..", symlinked directories, a symlink from
-- elsewhere into a checkout). A playbook in a checkout that resolves outside it is
-- refused (Bad): a shared repository's symlink must not point at what runs unsandboxed.
function M.fetched(_, path)
  local from, why = require("hrun.fetch").check(path)
  if from == nil then
    bad(why)
  end
  return from
end

-- --memory-limit SIZE ("512M", "2G", bytes) → bytes; raises Bad when malformed.
function M.memory_limit(opts)
  local text = opts.memory_limit
  if not text then
    return DEFAULT_MEMORY
  end
  local n, unit = tostring(text):match("^(%d+)([KMGkmg]?)i?[Bb]?$")
  local scale = { [""] = 1, k = 1 << 10, m = 1 << 20, g = 1 << 30 }
  if not n or tonumber(n) == 0 then
    bad(string.format("--memory-limit %s: expected a size such as 512M or 2G", text))
  end
  return tonumber(n) * scale[unit:lower()]
end

-- Refuses (Bad, exit 3) a file root would run that others could have changed: writable
-- by group or world, or owned by a user other than root (and the sudo user), or in a
-- directory so (as sudo and sshd refuse them).
local function check_trust(priv, path, what)
  local why = priv.untrusted(path)
  if why then
    bad(string.format("refusing the %s %s: %s", what, path, why))
  end
end

-- load(priv, path, state [, sandboxed, opts]) → playbook, hash, source; raises Bad with
-- every problem found. A sandboxed playbook is evaluated with no capability at all,
-- within LOAD_SECONDS and its memory limit.
function M.load(priv, path, state, sandboxed, opts)
  check_trust(priv, path, "playbook")
  local src, err = fs.read(path)
  if not src then
    bad(err)
  end
  return M.load_source(priv, path, src, state, sandboxed, opts)
end

-- Problems of a playbook, each with where it is.
local function bad_playbook(path, problems)
  for i, p in ipairs(problems) do
    if not p:find("^[^:]+:%d+: ") then
      problems[i] = path .. ": " .. p
    end
  end
  bad(problems)
end

-- A sandboxed playbook is evaluated in a process of its own (hrun.boundary), confined by
-- the kernel, within LOAD_SECONDS and its memory limit; what comes back is data, with a
-- stub for each of its functions, and the engine validates that. pb.box is the process.
local function load_sandboxed(priv, path, src, state, opts)
  opts = opts or {}
  -- a fetched playbook does not run where the kernel cannot confine it, unless told
  local strict = M.fetched(priv, path) and not opts.allow_weak_sandbox
  local box = boundary.open(priv, M.modules(priv, state), { memory = M.memory_limit(opts), stdlib = priv.stdlib,
    accept = function(confinement)
      local missing = confinement and confinement.missing or {}
      if strict and #missing > 0 then
        local lines = { string.format("refusing the fetched playbook %s: this kernel cannot confine it fully:", path) }
        for _, m in ipairs(missing) do
          lines[#lines + 1] = "  " .. m
        end
        lines[#lines + 1] = "run it with --allow-weak-sandbox to accept that (docs/security.md)"
        error(table.concat(lines, "\n"), 0)
      end
    end })
  local ok, res = pcall(box.load, box, path, src)
  if not ok then
    bad(tostring(res))
  end
  local _, line = dsl.is_playbook_source(src)
  local pb, problems = dsl.validate(res, priv.nearest, { file = path, line = line or 1, source = src },
    priv.capability)
  if not pb then
    box:kill()
    bad_playbook(path, problems)
  end
  local pok, params = pcall(dsl.plain, pb.params)
  if not pok then
    box:kill()
    bad(string.format("%s: playbook: params: %s", path, params))
  end
  pb.params, pb.capabilities = params, dsl.plain(pb.capabilities)
  pb.box = box
  return pb
end

-- load_source(priv, path, src, …): the same, from the source text (a version the
-- journal kept); messages name path.
function M.load_source(priv, path, src, state, sandboxed, opts)
  if sandboxed then
    return load_sandboxed(priv, path, src, state, opts), priv.sha256(src), src
  end
  local env = dsl.environment(M.modules(priv, state),
    { allowed = priv.allowed, mask = priv.mask, armthread = priv.armthread })
  local chunk, lerr = load(src, "@" .. path, "t", env)
  if not chunk then
    bad(lerr)
  end
  local _, line = dsl.is_playbook_source(src)
  local ok, res = pcall(chunk)
  local pb, problems
  if ok then
    ok, pb, problems = pcall(dsl.validate, res, priv.nearest, { file = path, line = line or 1, source = src },
      priv.capability)
    res = ok and res or pb -- on failure: the error
  end
  if not ok then
    bad(tostring(res))
  end
  if not pb then
    bad_playbook(path, problems)
  end
  return pb, priv.sha256(src), src
end

-- Checks --from and --only against the playbook.
local function check_selection(priv, pb, opts)
  local phases, steps = {}, {}
  for _, ph in ipairs(pb.phases) do
    phases[#phases + 1] = ph.name
    for _, item in ipairs(ph.items) do
      if item.kind == "step" then
        steps[#steps + 1] = item.name
        steps[#steps + 1] = ph.name .. "/" .. item.name
      end
    end
  end
  local function known(list, v)
    for _, x in ipairs(list) do
      if x == v then
        return true
      end
    end
  end
  local problems = {}
  local function check(flag, v, list, what)
    if v and not known(list, v) then
      local near = priv.nearest(v, list)
      problems[#problems + 1] = string.format("%s %s: the playbook has no %s '%s'%s", flag, v, what, v,
        near and string.format(" (did you mean '%s'?)", near) or "")
    end
  end
  check("--only", opts.only, phases, "phase")
  check("--from", opts.from, steps, "step")
  for _, b in ipairs(opts.break_at or {}) do
    check("--break", b, steps, "step")
  end
  if opts.from and opts.only then
    local in_phase = false
    for _, ph in ipairs(pb.phases) do
      if ph.name == opts.only then
        for _, item in ipairs(ph.items) do
          if item.name == opts.from or ph.name .. "/" .. item.name == opts.from then
            in_phase = true
          end
        end
      end
    end
    if not in_phase and #problems == 0 then
      problems[#problems + 1] = string.format("--from %s is not in the phase --only %s", opts.from, opts.only)
    end
  end
  if #problems > 0 then
    bad(problems)
  end
end

function M.new_ui(priv, opts)
  return ui_mod.new({ json = opts.json, tty = priv.isatty(1), color = opts.color, verbose = opts.verbose })
end
local new_ui = M.new_ui

local function self_pid()
  return tonumber(fs.stat("/proc/self", { follow = false }).target)
end

-- Takes the state directory's lock, or raises with the holder (exit 4).
local function lock(priv, state, note)
  local handle, holder, code = priv.lock(state .. "/lock")
  if not handle then
    if code == "ELOCKED" then
      error(setmetatable({ locked = holder }, Bad), 0)
    end
    bad(holder)
  end
  handle:note(note)
  return handle
end

local function open_journal(priv, state)
  local j, err = journal_mod.open(priv, state)
  if not j then
    bad(err)
  end
  return j
end

local function stash_dir(state, run_id)
  local dir = string.format("%s/runs/%d/stash", state, run_id)
  assert(fs.mkdir(dir, { parents = true, mode = "0700" }))
  return dir
end

-- The playbook's provenance: {commit, dirty, files, root} of the git repository it is in
-- (dirty: tracked files changed and not committed; untracked files do not count, as for
-- `git describe --dirty`), or nil outside one.
function M.provenance(path)
  local git = require "hrun.git"
  local repo = git.open(path:match("^(.*)/[^/]*$") or ".")
  if not repo or repo.bare then
    return nil
  end
  local head = git.head(repo.path)
  local status = git.status(repo.path, { untracked = false })
  if not head or not status then -- a repository git cannot read: no provenance to record
    return nil
  end
  return { commit = head.commit, dirty = not status.clean, files = status.files, root = repo.path }
end

-- --require-clean: the playbook must come from a commit, not from changes nobody committed.
local function require_clean(path, prov)
  if not prov then
    bad(string.format("--require-clean: %s is not in a git repository: no commit says what runs", path))
  elseif not prov.commit then
    bad(string.format("--require-clean: %s has no commit yet", prov.root))
  elseif prov.dirty then
    local lines = { string.format("--require-clean: %s has changes not committed:", prov.root) }
    for _, f in ipairs(prov.files) do
      lines[#lines + 1] = string.format("  %s (%s)", f.path, f.index or f.worktree)
    end
    bad(lines)
  end
end

-- begin_run(priv, state, pb, path, hash, params, mode [, prov, sandboxed, src, hosts]) →
-- lock, journal, run id: takes the state directory's lock, journals a new run with its
-- provenance (mode "debug" with --debug or from the REPL), whether it runs in the
-- sandbox (so that resume and rollback keep it there) and the hosts it reaches
-- ({name = {url, …}}: resume and rollback reach the same), and points the stash at it.
-- How many steps the playbook has (hrun runs shows done/total while it runs).
function M.step_count(pb)
  local n = 0
  for _, ph in ipairs(pb.phases or {}) do
    for _, item in ipairs(ph.items or {}) do
      if item.kind == "step" then
        n = n + 1
      end
    end
  end
  return n
end

function M.begin_run(priv, state, pb, path, hash, params, mode, prov, sandboxed, src, hosts)
  assert(fs.exists(state) or fs.mkdir(state, { parents = true, mode = "0700" }))
  local lk = lock(priv, state, string.format("pid %d, playbook %s, since %s", self_pid(), path,
    ui_mod.timestamp(sys.now())))
  local j = open_journal(priv, state)
  prov = prov or M.provenance(path)
  local run_id = j:new_run({ playbook = pb.name, version = pb.version, path = path, hash = hash, params = params,
    git_commit = prov and prov.commit, git_dirty = prov and prov.commit and (prov.dirty and 1 or 0),
    mode = mode, on_failure = pb.on_failure, host = sys.hostname(),
    user = sys.env("USER") or sys.env("LOGNAME") or (sys.is_root() and "root") or nil, pid = self_pid(),
    hrun_version = priv.version, started = sys.now(), sandbox = sandboxed and 1 or 0,
    steps_total = M.step_count(pb), hosts = hosts })
  if src then -- rollback undoes each step with the version of the playbook that ran it
    j:keep_playbook(hash, path, src)
    j:commit()
  end
  lk:note(string.format("pid %d, run %d (%s), since %s", self_pid(), run_id, path, ui_mod.timestamp(sys.now())))
  priv.setstash(stash_dir(state, run_id), run_id)
  return lk, j, run_id
end

-- {======================================================
-- hrun PLAYBOOK, hrun plan PLAYBOOK
-- ======================================================

-- The path as the journal keeps it: absolute, so that resume and rollback find the
-- playbook from any working directory.
function M.absolute(path)
  if path:sub(1, 1) == "/" then
    return path
  end
  local cwd = fs.stat("/proc/self/cwd", { follow = false }).target
  return (cwd .. "/" .. path):gsub("/%./", "/"):gsub("/%.$", "")
end

-- A fleet's member (--fleet-member SPEC, written by hrun.fleet): {host, url, agent_dir,
-- ssh_state}, or nil when this run is not one.
local function member_spec(opts)
  if not opts.fleet_member then
    return nil
  end
  local text, err = fs.read(opts.fleet_member)
  local ok, spec = pcall(json.decode, text or "")
  if not text or not ok or type(spec) ~= "table" or type(spec.host) ~= "string" or type(spec.url) ~= "string" then
    bad(string.format("--fleet-member %s: not a fleet member's description (%s)", opts.fleet_member,
      tostring(err or spec)))
  end
  return spec
end

-- The run's hosts: the playbook's (or, resumed, the journal's), with -H NAME=URL setting
-- or overriding them; {name = {url, agent_dir, reconnect}}, or nil when there are none.
-- A sandboxed playbook does not say where on a host the program its agent runs is kept
-- (that is the user's trust to give, as its capabilities are).
function M.hosts(base, opts, sandboxed)
  local hosts, any = {}, false
  for name, h in pairs(base or {}) do
    if sandboxed and h.agent_dir then
      bad(string.format("hosts.%s: agent_dir = %q: a sandboxed playbook does not choose where hrun's agent is " ..
        "kept on a host (drop the field, or run the playbook without the sandbox)", name, h.agent_dir))
    end
    if sandboxed and h.sudo then
      bad(string.format("hosts.%s: sudo = true: a sandboxed playbook does not choose to run as root on a host " ..
        "(drop the field; an inventory's host may say it, docs/hosts.md)", name))
    end
    hosts[name], any = { url = h.url, agent_dir = h.agent_dir, reconnect = h.reconnect, sudo = h.sudo }, true
  end
  for _, given in ipairs(opts.hosts or {}) do
    local name, url = tostring(given):match("^([%a_][%w_%-]*)=(.+)$")
    if not name then
      bad(string.format("-H %s: expected NAME=URL (old=ssh://root@10.0.0.5:2222)", tostring(given)))
    end
    local ok, why = require("hrun.remote").parse(url)
    if not ok then
      bad(string.format("-H %s: %s", given, why))
    end
    hosts[name] = hosts[name] or {}
    hosts[name].url, any = url, true
  end
  return any and hosts or nil
end

-- setup(runner), if given, sees the runner before it starts (the debugger attaches).
function M.run(priv, opts, path, state, setup)
  if opts.hosts_file and not opts.fleet_member then
    return M.fleet(priv, opts, path, state)
  end
  path = M.absolute(path)
  local fetched = M.fetched(priv, path)
  local sandboxed = opts.sandbox or fetched
  local pb, hash, src = M.load(priv, path, state, sandboxed, opts)
  for _, file in ipairs(opts.params_files or {}) do
    check_trust(priv, file, "params file")
  end
  local params, problems = dsl.params(pb, opts.params_files or {}, opts.params or {}, priv.nearest)
  if not params then
    bad(problems)
  end
  check_selection(priv, pb, opts)
  if opts.step and not opts.plan and not (priv.isatty(0) and priv.isatty(2)) then
    bad("--step asks before each step on the terminal, and there is none (stdin and stderr are not a TTY)")
  end
  local prov = M.provenance(path)
  if opts.require_clean then
    require_clean(path, prov)
  end
  local ui = new_ui(priv, opts)
  local hosts = M.hosts(pb.hosts, opts, sandboxed)
  local member = member_spec(opts)
  if member then -- its steps run on its host unless they say `on`
    hosts = hosts or {}
    hosts[member.host] = { url = member.url, agent_dir = member.agent_dir, sudo = member.sudo }
  end
  local fleet_host, ssh_state = member and member.host, member and member.ssh_state
  if opts.plan then
    local r = runner_mod.new({ priv = priv, ui = ui, pb = pb, params = params, plan = true, path = path,
      opts = opts, git = prov, sandbox = sandboxed, state = state, host_urls = hosts, fleet_host = fleet_host,
      ssh_state = ssh_state })
    return r:run()
  end
  -- luacheck: ignore 211/lk (a to-be-closed lock: released on every way out)
  local lk <close>, j, run_id = M.begin_run(priv, state, pb, path, hash, params,
    (opts.debug or opts.break_at) and "debug" or "run", prov, sandboxed, src, hosts)
  local r = runner_mod.new({ priv = priv, ui = ui, pb = pb, params = params, journal = j, run_id = run_id,
    path = path, opts = opts, git = prov, sandbox = sandboxed, pb_hash = hash, run_hash = hash, state = state,
    host_urls = hosts, fleet_host = fleet_host, ssh_state = ssh_state,
    versions = M.versions(priv, j, { path = path, sandbox = sandboxed and 1 or 0 }, state, opts) })
  if setup then
    setup(r)
  end
  local exit = r:run()
  priv.setstash(nil)
  j:close()
  return exit
end

-- }======================================================

-- {======================================================
-- hrun check PLAYBOOK: validate, and lint the globals it uses
-- ======================================================

-- From luac's listing: the globals a chunk reads and writes, with their lines; and the
-- module functions it calls by name (fs.write: {line, module, name}, with the program
-- of an exec.run whose argv starts with a literal).
local function globals_used(path)
  local r = exec.run({ "luac5.4", "-l", "-l", "-p", path }, { check = false, readonly = true })
  if not r.ok then
    return nil, r.stderr
  end
  local uses, calls = {}, {}
  local lines = {}
  for l in r.stdout:gmatch("[^\n]+") do
    lines[#lines + 1] = l
  end
  for i, l in ipairs(lines) do
    local line, op, name = l:match("%[(%d+)%]%s+([GS]ETTABUP)[^\n]-; _ENV \"([^\"]+)\"")
    if line then
      uses[#uses + 1] = { line = tonumber(line), name = name, set = op == "SETTABUP" }
      local fn = op == "GETTABUP" and lines[i + 1] and lines[i + 1]:match("GETFIELD%s[^;]*; \"([%w_]+)\"")
      if fn then
        local call = { line = tonumber(line), module = name, name = fn }
        if name == "exec" and fn == "run" and lines[i + 2] and lines[i + 2]:match("NEWTABLE") then
          for j = i + 3, math.min(i + 5, #lines) do
            local prog = lines[j]:match("LOADK%s[^;]*; \"([^\"]+)\"")
            if prog then
              call.program = prog
              break
            end
          end
        end
        calls[#calls + 1] = call
      end
    end
  end
  return uses, calls
end

-- What a playbook's source says it uses: {need = "exec:pg_dumpall" | "fs", line, by}
-- for each call of a primitive by name; helpers (pg, migrate, …) by their module name.
local function capabilities_in_source(priv, calls)
  local cap_of = {}
  for _, p in ipairs(priv.primitives()) do
    cap_of[p.name] = p.cap
  end
  for name, cap in pairs(require("hrun.edit").capabilities) do -- fs.edit, fs.template: Lua on fs's
    cap_of[name] = cap
  end
  local out, seen = {}, {}
  for _, c in ipairs(calls) do
    local full = c.module .. "." .. c.name
    local cap = cap_of[full]
    if cap then
      local need = cap
      if full == "exec.sh" then
        need = "exec:/bin/sh"
      elseif c.program then
        need = "exec:" .. c.program
      end
      if not seen[need] then
        seen[need] = true
        out[#out + 1] = { need = need, cap = cap, scoped = need ~= cap, line = c.line, by = full }
      end
    end
  end
  return out
end

-- Is a need ("exec:pg_dumpall", "net") met by some declared capability? Scopes of
-- paths, units and URLs are only known when the playbook runs: `hrun plan` checks them.
local function declared_covers(declared, u)
  for _, d in ipairs(declared) do
    local name, scope = d:match("^([^:]+):?(.*)$")
    if name == u.cap and (scope == "" or not u.scoped or d == u.need or u.cap ~= "exec") then
      return true
    end
  end
  return false
end

function M.check(priv, opts, path, state)
  local fetched = M.fetched(priv, path)
  local sandboxed = opts.sandbox or fetched
  local pb = M.load(priv, path, state, sandboxed, opts)
  check_selection(priv, pb, opts)
  local env = dsl.environment(M.modules(priv, state))
  -- errors: what fails when it runs (a global or a module function that is not there);
  -- warnings: what runs but should not be so (a global set; a capability not declared,
  -- for a playbook that declares some or runs sandboxed)
  local errors, warnings = {}, {}
  local uses, calls = globals_used(path)
  local used = {}
  if not uses then
    warnings[#warnings + 1] = "the lint could not run: " .. tostring(calls)
  else
    local names = {}
    for k in pairs(env) do
      names[#names + 1] = k
    end
    for _, u in ipairs(uses) do
      if u.set then
        warnings[#warnings + 1] = string.format("%s:%d: sets the global '%s' (use local)", path, u.line, u.name)
      elseif env[u.name] == nil then
        local near = priv.nearest(u.name, names)
        errors[#errors + 1] = string.format("%s:%d: undefined global '%s'%s", path, u.line, u.name,
          near and string.format(" (did you mean '%s'?)", near) or "")
      end
    end
    for _, c in ipairs(calls) do
      local mod = env[c.module]
      if type(mod) == "table" and mod[c.name] == nil then
        local fields = {}
        for k in pairs(mod) do
          fields[#fields + 1] = k
        end
        local near = priv.nearest(c.name, fields)
        errors[#errors + 1] = string.format("%s:%d: %s.%s: %s has no such function%s", path, c.line, c.module,
          c.name, c.module, near and string.format(" (did you mean '%s.%s'?)", c.module, near) or
          " in a playbook's environment")
      end
    end
    used = capabilities_in_source(priv, calls)
    local declares = #pb.capabilities > 0 or sandboxed
    for _, u in ipairs(used) do
      u.declared = declared_covers(pb.capabilities, u)
      if not u.declared and declares then
        warnings[#warnings + 1] = string.format("%s:%d: %s needs the capability '%s', which the playbook does " ..
          "not declare", path, u.line, u.by, u.need)
      end
    end
  end
  local failed = #errors > 0 or (opts.strict and #warnings > 0)
  local steps, checks = 0, 0
  for _, ph in ipairs(pb.phases) do
    for _, item in ipairs(ph.items) do
      if item.kind == "step" then
        steps = steps + 1
      else
        checks = checks + 1
      end
    end
  end
  if opts.json then
    local list = json.array()
    for _, u in ipairs(used) do
      list[#list + 1] = { need = u.need, by = u.by, line = u.line, declared = u.declared }
    end
    io.stdout:write(json.encode({ event = "check", playbook = pb.name, ok = not failed,
      errors = json.array(errors), warnings = json.array(warnings),
      phases = #pb.phases, steps = steps, checks = checks, capabilities = json.array(pb.capabilities),
      uses = list, sandbox = sandboxed or false }), "\n")
  else
    for _, e in ipairs(errors) do
      io.stderr:write("hrun: error: ", e, "\n")
    end
    for _, w in ipairs(warnings) do
      io.stderr:write("hrun: warning: ", w, "\n")
    end
    io.stdout:write(string.format("%s: %s%s — %d phase%s, %d step%s, %d check%s\n", path,
      pb.name, pb.version and (" " .. pb.version) or "", #pb.phases, #pb.phases == 1 and "" or "s", steps,
      steps == 1 and "" or "s", checks, checks == 1 and "" or "s"))
    local hosts = M.hosts(pb.hosts, opts)
    if hosts then -- where its steps run
      local list = {}
      for name, h in pairs(hosts) do
        list[#list + 1] = string.format("%s (%s)", name, h.url)
      end
      table.sort(list)
      io.stdout:write("  hosts: ", table.concat(list, ", "), "\n")
    end
    io.stdout:write("  capabilities declared: ",
      #pb.capabilities > 0 and table.concat(pb.capabilities, ", ") or "none", "\n")
    local needs = {}
    for _, u in ipairs(used) do
      needs[#needs + 1] = u.need .. (u.declared and "" or " (not declared)")
    end
    io.stdout:write("  capabilities used by name in the source: ", #needs > 0 and table.concat(needs, ", ") or
      "none", "\n  (paths, units and URLs are known when it runs: hrun plan lists each)\n")
  end
  return failed and EXIT_BAD or 0
end

-- }======================================================

-- {======================================================
-- hrun resume [RUN], hrun rollback [RUN]
-- ======================================================

local function pick_run(j, arg)
  local id = arg and tonumber(arg) or j:latest_run()
  if arg and not tonumber(arg) then
    bad(string.format("'%s' is not a run number ('hrun runs' lists them)", arg))
  end
  if not id then
    bad("the journal has no runs yet")
  end
  local r = j:run(id)
  if not r then
    bad(string.format("there is no run %d ('hrun runs' lists them)", id))
  end
  return r
end

-- open_run(priv, state, arg, doing) → lock, journal, run: a journaled run, to resume or
-- roll back, under the lock.
local function open_run(priv, state, arg, doing)
  if not fs.exists(state .. "/journal.db") then
    bad(string.format("the journal has no runs yet (%s)", state))
  end
  local lk = lock(priv, state, string.format("pid %d, %s, since %s", self_pid(), doing, ui_mod.timestamp(sys.now())))
  local j = open_journal(priv, state)
  local r = pick_run(j, arg)
  lk:note(string.format("pid %d, %s run %d (%s), since %s", self_pid(), doing, r.id, r.path,
    ui_mod.timestamp(sys.now())))
  return lk, j, r
end

-- The playbook of a journaled run, if it is still there and unchanged.
local function reload(priv, r, state, opts)
  if not fs.exists(r.path) then
    return nil, "the playbook " .. r.path .. " is gone"
  end
  M.memory_limit(opts) -- a malformed --memory-limit is the command line's problem
  local ok, pb, hash, src = pcall(M.load, priv, r.path, state, r.sandbox == 1, opts)
  if not ok then
    local why = getmetatable(pb) == Bad and table.concat(pb.lines, "; ") or tostring(pb)
    return nil, "the playbook " .. r.path .. " no longer loads (" .. why .. ")"
  end
  if hash ~= r.hash then
    return nil, string.format("the playbook %s changed since run %d began", r.path, r.id), pb, hash, src
  end
  return pb
end

-- versions(priv, j, r, state, opts) → fn(hash) → the playbook version the journal
-- kept for run r, or nil and why: what rollback undoes a step with.
function M.versions(priv, j, r, state, opts)
  local cache = {}
  return function(hash)
    if not cache[hash] then
      local src = j:playbook(hash)
      if not src then
        cache[hash] = { nil, string.format("the journal does not keep the version of %s that ran it (sha256 %s)",
          r.path, tostring(hash):sub(1, 16)) }
      else
        local ok, pb = pcall(M.load_source, priv, r.path, src, state, r.sandbox == 1, opts)
        local why = not ok and (getmetatable(pb) == Bad and table.concat(pb.lines, "; ") or tostring(pb))
        cache[hash] = ok and { pb } or { nil, "the version of the playbook that ran it does not load: " .. why }
      end
    end
    return cache[hash][1], cache[hash][2]
  end
end

-- The runner over a journaled run, for resume and rollback.
local function journaled_runner(priv, opts, j, r, state, pb, extra)
  local o = { priv = priv, ui = new_ui(priv, opts), pb = pb, params = r.params, journal = j, run_id = r.id,
    path = r.path, opts = opts, shared = r.shared, playbook_name = r.playbook, sandbox = r.sandbox == 1,
    state = state, host_urls = M.hosts(r.hosts, opts, r.sandbox == 1),
    pb_hash = pb and r.hash, run_hash = r.hash, versions = M.versions(priv, j, r, state, opts),
    -- a run that never reached its end (killed while running, or while rolling back) crashed
    outcome = r.outcome or ((r.status == "running" or r.rollback_status == "running") and "crashed" or r.status) }
  local member = member_spec(opts)
  if member then
    o.fleet_host, o.ssh_state = member.host, member.ssh_state
  end
  for k, v in pairs(extra or {}) do
    o[k] = v
  end
  return runner_mod.new(o)
end

function M.resume(priv, opts, arg, state)
  local lk <close>, j, r = open_run(priv, state, arg, "resuming") -- luacheck: ignore 211/lk
  if r.mode == "fleet" then
    return M.fleet_resume(priv, opts, j, r, state)
  end
  if r.status ~= "running" and r.status ~= "stopped" then
    local hint = r.status == "rollback-incomplete" and
      string.format(" ('hrun rollback %d' finishes undoing it)", r.id) or ""
    bad(string.format("run %d is %s: there is nothing to resume%s", r.id, r.status, hint))
  end
  local pb, why, changed, changed_hash, changed_src = reload(priv, r, state, opts)
  if not pb and changed and opts.force then
    io.stderr:write("hrun: warning: ", why, "; resuming anyway (--force)\n")
    pb = changed
  elseif not pb and changed then
    bad(why .. ": check the change, then resume with --force")
  elseif not pb then
    bad(why .. ": it cannot be resumed ('hrun rollback " .. r.id .. "' undoes what it did)")
  end
  priv.setstash(stash_dir(state, r.id), r.id)
  local run = journaled_runner(priv, opts, j, r, state, pb, { resumed = true })
  if changed then -- the steps that run now say which version ran them
    run:adopt(pb, changed_hash, changed_src)
  end
  -- completed steps are not run again; the step that was running when hrun stopped is
  -- undone (unless it says resume = "rerun") and runs again from its start
  local done = {}
  for _, s in ipairs(r.steps) do
    if s.kind == "step" and s.status == "done" and s.undo_status ~= "undone" then
      done[s.phase .. "/" .. s.name] = s -- its row: whether it changed something
    end
  end
  run.resume_done = done
  j:set_run(r.id, { status = "running", pid = self_pid(), interrupted = 0 })
  run:install_hooks()
  -- children the crash left running go first: they must not race the step run again
  run:stop_children()
  for _, s in ipairs(r.steps) do
    -- a handler cut short runs again, once its effects are undone (those with no inverse
    -- stay: it runs again)
    if (s.kind == "step" or s.kind == "handler")
      and (s.status == "running" or s.status == "interrupted" or s.status == "failed")
      and s.undo_status ~= "undone" then
      local def = run:find_step(s.phase, s.name)
      if def and def.resume == "rerun" then
        -- it runs again as it is: what its first attempt did stays, and a rollback
        -- undoes it (the attempt is not undone)
        run:clean_leftovers(s.id)
        j:set_step_status(s.id, "interrupted")
      else
        local ok, err = run:undo_effects(s.id, s.irreversible == 1 or s.kind == "handler")
        if s.status == "running" then
          j:set_step_status(s.id, "interrupted")
        end
        j:set_step_undo(s.id, ok and "undone" or "undo-failed", err)
        run:emit({ event = "undo", phase = s.phase, step = s.name, how = "inverses, before running it again",
          status = ok and "undone" or "failed", error = err })
        if not ok then
          run:remove_hooks()
          j:set_run(r.id, { status = "running" })
          j:commit()
          bad(string.format("step '%s' was interrupted and its effects cannot be undone: %s ('hrun rollback %d' " ..
            "undoes the run; 'hrun resolve %d -m WHY' closes it by hand)", s.name, err, r.id, r.id), true)
        end
      end
    end
  end
  run:remove_hooks()
  local exit = run:run()
  priv.setstash(nil)
  j:close()
  return exit
end

-- {======================================================
-- Rolling back out of order: a later run that is not rolled back and touched what this
-- rollback would undo is named, and the rollback refused unless --force.
-- ======================================================

-- Where in the file system a target is: a path or subvolume itself, a git ref its
-- repository; nil for units, containers, profiles (compared by name).
local function place(t)
  if t.kind == "path" or t.kind == "subvolume" or t.kind == "repo" then
    return tostring(t.target)
  elseif t.kind == "ref" then
    return (tostring(t.target):match("^(.*) [^ ]+$"))
  end
end

-- Do two targets touch the same thing: the same one, or one path inside the other
-- (a file in a directory another run made; a repository and one of its refs)?
local function overlaps(a, b)
  if a.kind == b.kind and a.target == b.target then
    return true
  end
  local x, y = place(a), place(b)
  if not (x and y) or (a.kind == "ref" and b.kind == "ref") then
    return false -- two refs of a repository are two things
  end
  return x == y or x == "/" or y == "/" or x:sub(1, #y + 1) == y .. "/" or y:sub(1, #x + 1) == x .. "/"
end

-- {{run = row, targets = {target, …}}, …}: the later runs in the way, newest first.
local function in_the_way(j, r)
  local mine = j:targets(r.id)
  local out = {}
  if #mine == 0 then
    return out
  end
  for _, later in ipairs(j:later_runs(r.id)) do
    local hits, seen = {}, {}
    for _, t in ipairs(j:targets(later.id)) do
      for _, m in ipairs(mine) do
        if overlaps(t, m) and not seen[m.target] then
          seen[m.target] = true
          hits[#hits + 1] = m.target
        end
      end
    end
    if #hits > 0 then
      out[#out + 1] = { run = later, targets = hits }
    end
  end
  return out
end

local function in_the_way_lines(r, later)
  local lines = {}
  for _, w in ipairs(later) do
    lines[#lines + 1] = string.format("run %d (%s, %s) changed since run %d what its rollback would undo: %s", w.run.id,
      w.run.playbook, w.run.status, r.id, table.concat(w.targets, ", "))
  end
  return lines
end

-- }======================================================

-- What hrun rollback RUN would do, newest first, changing nothing: each step's undo
-- function or each effect's inverse, with its targets and what their state says.
local function rollback_plan(priv, opts, j, r, run, later)
  local items = {}
  for _, s in ipairs(j:steps_to_undo(r.id)) do
    -- as Runner:undo_step decides: the undo function (of the version that ran the step)
    -- for a completed step that has one, where it is to be had; else the inverses
    local by_inverses = true
    if s.status == "done" and s.has_undo == 1 then
      local def, why = run:ran_as(s)
      local undo = def and def.undo
      by_inverses = not undo and opts.force
      items[#items + 1] = { phase = s.phase, step = s.name, how = "undo",
        note = undo and (s.undo_status == "undo-failed" and "will run again (it failed before)" or "will run")
          or ("not possible: " .. (why or "the version that ran it has no undo function") ..
            (opts.force and "; --force: by the inverses" or "")) }
    end
    if by_inverses then
      for _, e in ipairs(j:effects_to_undo(s.id)) do
        local targets, note = {}, "will be undone"
        for _, st in ipairs(e.before or {}) do
          targets[#targets + 1] = st.target
        end
        local okr, now = pcall(priv.restate, e.before or {})
        local outlook, diff = runner_mod.outlook(e, okr and now or nil)
        if e.kept == 1 and e.status == "done" then
          note = "kept (keep = true): a rollback leaves it"
        elseif not e.inverse then
          note = s.irreversible == 1 and "irreversible: left as it is" or
            ("cannot be undone: " .. tostring(e.no_inverse))
        elseif outlook == "already-undone" then
          note = "already undone: nothing to do"
        elseif outlook == "changed" then
          note = "changed since the run: " .. diff .. (opts.force and " (--force: overwritten)" or
            " (refused without --force)")
        end
        local ops = {}
        for _, op in ipairs(e.inverse or {}) do
          ops[#ops + 1] = ui_mod.call(op.op, op.args or {})
        end
        items[#items + 1] = { phase = s.phase, step = s.name, how = "inverse", op = e.op, effect = e.id,
          targets = json.array(targets), undo = json.array(ops), note = note }
      end
    end
  end
  if opts.json then
    for _, w in ipairs(later) do
      io.stdout:write(json.encode({ event = "rollback-conflict", run = w.run.id, status = w.run.status,
        targets = json.array(w.targets) }), "\n")
    end
    for _, it in ipairs(items) do
      it.event = "undo-planned"
      it.run = r.id
      io.stdout:write(json.encode(it), "\n")
    end
    io.stdout:write(json.encode({ event = "rollback-plan", run = r.id, undos = #items, refused = #later > 0 and
      not opts.force }), "\n")
    return 0
  end
  local out = { string.format("hrun rollback %d would undo, newest first (nothing is changed now):", r.id) }
  for _, line in ipairs(in_the_way_lines(r, later)) do
    out[#out + 1] = "  ! " .. line .. (opts.force and " (--force: goes ahead)" or " (refused without --force)")
  end
  local last
  for _, it in ipairs(items) do
    if last ~= it.phase .. "/" .. it.step then
      last = it.phase .. "/" .. it.step
      out[#out + 1] = string.format("  step '%s' (phase %s)", it.step, it.phase)
    end
    if it.how == "undo" then
      out[#out + 1] = "    undo function: " .. it.note
    else
      out[#out + 1] = string.format("    %s  [%s]", #it.undo > 0 and table.concat(it.undo, "; ") or it.op, it.note)
      if #it.targets > 0 then
        out[#out + 1] = "      target: " .. table.concat(it.targets, ", ")
      end
    end
  end
  if #items == 0 then
    out[#out + 1] = "  nothing: every step is undone"
  end
  io.stdout:write(table.concat(out, "\n"), "\n")
  return 0
end

function M.rollback(priv, opts, arg, state)
  local lk <close>, j, r = open_run(priv, state, arg, "rolling back") -- luacheck: ignore 211/lk
  if r.mode == "fleet" then
    return M.fleet_rollback(priv, opts, j, r)
  end
  if r.status == "rolled-back" then
    if opts.json then
      io.stdout:write(json.encode({ event = "nothing-to-undo", run = r.id, status = r.status }), "\n")
    else
      io.stdout:write(string.format("run %d is already rolled back: nothing to undo\n", r.id))
    end
    return 0
  end
  if r.collected and not opts.force and not opts.plan then
    bad(string.format("run %d can no longer be rolled back: hrun gc removed what its undo needs at %s " ..
      "('hrun rollback %d --force' undoes what it still can)", r.id, ui_mod.timestamp(r.collected), r.id))
  end
  local pb, why = reload(priv, r, state, opts)
  if not pb and not opts.plan then
    io.stderr:write("hrun: note: ", why, ": each step is undone with the version that ran it, which the " ..
      "journal keeps\n")
  end
  local run = journaled_runner(priv, opts, j, r, state, pb)
  local later = in_the_way(j, r)
  if opts.plan then
    return rollback_plan(priv, opts, j, r, run, later)
  end
  if #later > 0 and not opts.force then
    local lines = in_the_way_lines(r, later)
    lines[#lines + 1] = string.format("roll those back first (newest first), or 'hrun rollback %d --force' to " ..
      "undo run %d over them; 'hrun rollback %d --plan' shows what it would do", r.id, r.id, r.id)
    bad(lines)
  end
  priv.setstash(stash_dir(state, r.id), r.id)
  local exit = run:rollback_run(string.format("hrun rollback %d", r.id))
  priv.setstash(nil)
  j:close()
  return exit
end

-- hrun resolve RUN -m WHY: a person says a run that cannot be closed (rollback
-- incomplete, crashed) is dealt with. Journaled; the run's steps stay as they are.
function M.resolve(priv, opts, arg, state)
  local lk <close>, j, r = open_run(priv, state, arg, "resolving") -- luacheck: ignore 211/lk
  local why = opts.message
  if not why or why:match("^%s*$") then
    bad(string.format("resolve needs -m \"WHY\": what was done about run %d", r.id))
  end
  -- under the lock, a run that says running is one hrun did not finish: crashed
  local status = r.status == "running" and "crashed" or r.status
  if status ~= "rollback-incomplete" and status ~= "crashed" then
    bad(string.format("run %d is %s: only a run whose rollback is incomplete, or that crashed, is resolved by hand",
      r.id, status))
  end
  local by = sys.env("SUDO_USER") or sys.env("USER") or sys.env("LOGNAME") or (sys.is_root() and "root") or "?"
  local now = sys.now()
  j:set_run(r.id, { status = "resolved", resolved = why, resolved_by = by, resolved_at = now,
    outcome = r.outcome or status })
  j:event(r.id, { event = "resolved", time = now, by = by, message = why, was = status })
  j:commit()
  if opts.json then
    io.stdout:write(json.encode({ event = "resolved", run = r.id, was = status, by = by, message = why }), "\n")
  else
    io.stdout:write(string.format("run %d (%s) resolved by %s: %s\n", r.id, status, by, why))
  end
  j:close()
  return 0
end

-- }======================================================

-- {======================================================
-- hrun runs, hrun show RUN
-- ======================================================

-- Is the state directory's lock free (no run in progress)?
local function lock_free(priv, state)
  local handle = priv.lock(state .. "/lock")
  if handle then
    handle:release()
    return true
  end
  return false
end

local function existing_journal(priv, state)
  if not fs.exists(state .. "/journal.db") then
    return nil
  end
  return open_journal(priv, state)
end

function M.runs(priv, opts, state)
  local j = existing_journal(priv, state)
  local rows = j and j:runs(tonumber(opts.count) or 20) or {}
  local free = lock_free(priv, state)
  if opts.json then
    for _, r in ipairs(rows) do
      r.status = ui_mod.status_of(r, free)
      io.stdout:write(require("hrun.codec").summary(r, 8192), "\n")
    end
  elseif #rows == 0 then
    io.stdout:write("no runs yet in ", state, "\n")
  else
    io.stdout:write(ui_mod.runs_table(rows, free))
  end
  return 0
end

function M.show(priv, opts, arg, state)
  local j = existing_journal(priv, state)
  if not j then
    bad("the journal has no runs yet (" .. state .. ")")
  end
  local r = pick_run(j, arg)
  local free = lock_free(priv, state)
  if r.mode == "fleet" then
    return M.fleet_show(priv, opts, j, r, free)
  end
  if opts.json then
    r.status = ui_mod.status_of(r, free)
    io.stdout:write(require("hrun.codec").summary(r, 1 << 20), "\n")
  elseif opts.md then
    io.stdout:write(ui_mod.markdown(r, free))
  else
    io.stdout:write(ui_mod.show(r, free))
  end
  return 0
end

-- }======================================================

-- {======================================================
-- hrun PLAYBOOK --hosts FILE: the playbook on each host of an inventory (hrun.fleet)
-- ======================================================

-- What each member is given of this command line.
local function member_args(opts)
  local out = {}
  local function add(flag, v)
    out[#out + 1] = flag
    if v ~= nil then
      out[#out + 1] = tostring(v)
    end
  end
  for _, f in ipairs(opts.params_files or {}) do
    add("--params", M.absolute(f))
  end
  for _, kv in ipairs(opts.params or {}) do
    add("-p", kv)
  end
  for _, t in ipairs(opts.tags or {}) do
    add("--tags", t)
  end
  for _, t in ipairs(opts.skip_tags or {}) do
    add("--skip-tags", t)
  end
  if opts.only then add("--only", opts.only) end
  if opts.from then add("--from", opts.from) end
  if opts.sandbox then add("--sandbox") end
  if opts.allow_weak_sandbox then add("--allow-weak-sandbox") end
  if opts.memory_limit then add("--memory-limit", opts.memory_limit) end
  if opts.diff then add("--diff") end
  if opts.verbose then add("-v") end
  return out
end

-- The fleet's processes: each member's spec and directory, the UI.
local function fleet_runner(priv, opts, j, run_id, pb, path, rows, state)
  local fleet = require("hrun.fleet")
  local forks = tonumber(opts.forks or fleet.DEFAULT_FORKS)
  if not forks or forks < 1 or forks ~= math.floor(forks) then
    bad(string.format("--forks %s: a number of hosts, 1 or more", tostring(opts.forks)))
  end
  local members, names = {}, {}
  for _, row in ipairs(rows) do
    local m = fleet.member(row)
    members[m.name], names[#names + 1] = m, m.name
  end
  return fleet.new({ priv = priv, ui = fleet.ui(opts, priv), journal = j, run_id = run_id, pb = pb, path = path,
    names = names, members = members, forks = forks, pass = member_args(opts), state = state })
end

function M.fleet(priv, opts, path, state)
  local fleet = require("hrun.fleet")
  path = M.absolute(path)
  -- absolute: the hosts' directories are journaled, and a resume may run from elsewhere
  state = M.absolute(state)
  local sandboxed = opts.sandbox or M.fetched(priv, path)
  local pb, hash, src = M.load(priv, path, state, sandboxed, opts)
  for _, file in ipairs(opts.params_files or {}) do
    check_trust(priv, file, "params file")
  end
  check_trust(priv, opts.hosts_file, "inventory")
  check_selection(priv, pb, opts)
  local inv, problems = fleet.inventory(opts.hosts_file, priv.nearest)
  if not inv then
    bad(problems)
  end
  local names, why = fleet.select(inv, pb.fleet.targets, opts.limit, priv.nearest)
  if not names then
    bad(why)
  end
  -- each host's parameters, checked now: the inventory's, then --params and -p
  local per_host, all_problems = {}, {}
  local tmp = state .. "/fleet"
  assert(fs.exists(tmp) or fs.mkdir(tmp, { parents = true, mode = "0700" }))
  for _, name in ipairs(names) do
    if pb.hosts[name] then
      all_problems[#all_problems + 1] = string.format("host '%s': the playbook names a host '%s' of its own: " ..
        "rename one of them", name, name)
    end
    local vars, verr = fleet.host_params(inv, name, pb)
    if not vars then
      all_problems[#all_problems + 1] = string.format("%s: %s", opts.hosts_file, verr)
    else
      local file = string.format("%s/.params-%s.json", tmp, name)
      assert(fs.write(file, json.encode(vars), { mode = "0600" }))
      local files = { file }
      for _, f in ipairs(opts.params_files or {}) do
        files[#files + 1] = f
      end
      local params, pp = dsl.params(pb, files, opts.params or {}, priv.nearest)
      fs.remove(file)
      if not params then
        for _, line in ipairs(pp) do
          all_problems[#all_problems + 1] = string.format("host '%s': %s", name, line)
        end
      end
      per_host[name] = { vars = vars, params = params }
    end
  end
  if #all_problems > 0 then
    bad(all_problems)
  end
  local first = per_host[names[1]].params
  local prov = M.provenance(path)
  if opts.require_clean then
    require_clean(path, prov)
  end
  -- a plan journals nothing: its members' directories are removed after it
  local lk, j, run_id, base
  if opts.plan then
    base = string.format("%s/fleet/plan-%d", state, self_pid())
  else
    lk, j, run_id = M.begin_run(priv, state, pb, path, hash, first, "fleet", prov, sandboxed, src)
    base = string.format("%s/fleet/%d", state, run_id)
  end
  -- luacheck: ignore 211/held (a to-be-closed lock: released on every way out)
  local held <close> = lk
  local rows = {}
  for i, name in ipairs(names) do
    local h = inv.hosts[name]
    local dir = string.format("%s/%s", base, name)
    assert(fs.mkdir(dir, { parents = true, mode = "0700" }))
    assert(fs.write(dir .. "/member.json", json.encode({ host = name, url = h.url, agent_dir = h.agent_dir,
      sudo = h.sudo, ssh_state = state, fleet_run = run_id }), { mode = "0600" }))
    assert(fs.write(dir .. "/params.json", json.encode(per_host[name].vars), { mode = "0600" }))
    rows[i] = { host = name, url = h.url, agent_dir = h.agent_dir, state = dir, position = i, status = "pending" }
    if j then
      j:add_fleet_host(run_id, { name = name, url = h.url, state = dir, position = i })
    end
  end
  if j then
    j:commit()
  end
  local f = fleet_runner(priv, opts, j, run_id, pb, path, rows, state)
  f.plan = opts.plan
  local ok, exit = pcall(f.run, f)
  if j then
    j:close()
  else
    fs.remove(base, { recursive = true, force = true })
  end
  if not ok then
    error(exit, 0)
  end
  return exit
end

-- The playbook of a fleet run, as it was when it began.
local function fleet_playbook(priv, opts, j, r, state)
  local pb, why = reload(priv, r, state, opts)
  if not pb then
    pb, why = M.versions(priv, j, r, state, opts)(r.hash)
  end
  if not pb then
    bad(why)
  end
  return pb
end

-- A fleet run's hosts whose own runs are still going — a process that outlived a killed
-- fleet process, in the middle of a long step, holding its state's lock: resuming or
-- rolling back the fleet would start a second run of that host beside it. Refused
-- before anything changes (exit 4), naming each such host and its holder.
local function hosts_idle(priv, rows)
  local busy = {}
  for _, row in ipairs(rows) do
    if row.state and fs.exists(row.state .. "/lock") then
      local handle, holder, code = priv.lock(row.state .. "/lock")
      if handle then
        handle:release()
      elseif code == "ELOCKED" then
        busy[#busy + 1] = string.format("host '%s' (%s)", row.host, holder)
      end
    end
  end
  if #busy > 0 then
    error(setmetatable({ locked = table.concat(busy, "; ") .. " — still going from before the fleet's process " ..
      "ended, and stopping at its next step: wait for it (or stop it), then run this again" }, Bad), 0)
  end
end

-- hrun resume FLEET-RUN: each host continues where it stopped; hosts not started yet start.
function M.fleet_resume(priv, opts, j, r, state)
  if r.status ~= "running" and r.status ~= "stopped" and r.status ~= "failed" then
    bad(string.format("fleet run %d is %s: there is nothing to resume", r.id, r.status))
  end
  local pb = fleet_playbook(priv, opts, j, r, state)
  local rows = j:fleet_hosts(r.id)
  hosts_idle(priv, rows)
  j:set_run(r.id, { status = "running", pid = self_pid() })
  j:commit()
  local f = fleet_runner(priv, opts, j, r.id, pb, r.path, rows, state)
  local exit = f:run(true)
  j:close()
  return exit
end

-- hrun rollback FLEET-RUN [--limit NAMES]: each host's run undone, the host that changed
-- last first.
function M.fleet_rollback(priv, opts, j, r)
  local fleet = require("hrun.fleet")
  local rows = j:fleet_hosts(r.id)
  hosts_idle(priv, rows)
  local limit
  if opts.limit then
    limit = {}
    for _, item in ipairs(opts.limit) do
      for w in tostring(item):gmatch("[^,%s]+") do
        limit[w] = true
      end
    end
  end
  local ui = fleet.ui(opts, priv)
  local todo = {}
  for _, row in ipairs(rows) do
    if (not limit or limit[row.host]) and row.member_run and fleet.UNDOABLE[row.status] then
      todo[#todo + 1] = fleet.member(row)
    end
  end
  table.sort(todo, function(a, b)
    return (a.ended or a.started or 0) > (b.ended or b.started or 0)
  end)
  local worst = 0
  for _, m in ipairs(todo) do
    ui:event({ event = "host-rollback", host = m.name, time = sys.now() })
    local status = fleet.rollback_member(priv, m, opts.force and { "--force" } or nil)
    j:set_fleet_host(r.id, m.name, { status = status, ended = sys.now() })
    j:commit()
    ui:event({ event = "host-end", host = m.name, status = status, time = sys.now() })
    if status ~= "rolled-back" then
      worst = 2
    end
  end
  local left = 0
  for _, row in ipairs(j:fleet_hosts(r.id)) do
    if fleet.UNDOABLE[row.status] and row.member_run then
      left = left + 1
    end
  end
  local status = left == 0 and "rolled-back" or "rollback-incomplete"
  j:set_run(r.id, { status = status, rollback_status = status, rollback_ended = sys.now() })
  j:commit()
  ui:event({ event = "run-end", run = r.id, status = status, exit = worst, fleet = true, time = sys.now() })
  j:close()
  return worst
end

-- hrun show FLEET-RUN: the fleet, then each host's run as its journal has it.
function M.fleet_show(priv, opts, j, r, free)
  local rows = j:fleet_hosts(r.id)
  local per = {}
  for _, row in ipairs(rows) do
    local mj = row.member_run and fs.exists(row.state .. "/journal.db") and journal_mod.open(priv, row.state)
    local mr = mj and mj:run(row.member_run)
    if mr then
      mr.status = ui_mod.status_of(mr, lock_free(priv, row.state))
    end
    per[#per + 1] = { row = row, run = mr }
    if mj then
      mj:close()
    end
  end
  r.status = ui_mod.status_of(r, free)
  if opts.json then
    local hosts = json.array()
    for _, p in ipairs(per) do
      hosts[#hosts + 1] = { host = p.row.host, url = p.row.url, status = p.row.status, batch = p.row.batch,
        error = p.row.error, run = p.run }
    end
    r.hosts_of_fleet = hosts
    io.stdout:write(require("hrun.codec").summary(r, 1 << 20), "\n")
  else
    io.stdout:write(require("hrun.fleet").show(r, per, opts.md))
  end
  return 0
end

-- }======================================================

-- {======================================================
-- hrun gc --older-than DURATION [--dry-run]: what hrun left that the journal knows of
-- ======================================================

local UNITS = { s = 1, m = 60, h = 3600, d = 86400, w = 7 * 86400 }

-- "30d", "12h", "2w", "1d12h" → seconds; nil when it is not a duration.
function M.duration(text)
  if type(text) ~= "string" or not text:match("^%d+[smhdw]") then
    return nil
  end
  local total, rest = 0, text
  while rest ~= "" do
    local n, unit, more = rest:match("^(%d+)([smhdw])(.*)$")
    if not n then
      return nil
    end
    total, rest = total + tonumber(n) * UNITS[unit], more
  end
  return total
end

-- Is a subvolume (or anything) at path?
local function present(path)
  return fs.stat(path, { follow = false }) ~= nil
end

-- Removes (or, dry, lists) what finished runs that ended more than `older_than` seconds
-- ago left: the copies btrfs.restore set aside, and the runs' stashes (what their writes
-- destroyed, kept for their undo). Runs that are not finished (running, crashed,
-- stopped, rollback incomplete or rolling back) are never touched; a finished run that
-- is not rolled back and loses what its undo needs is journaled as collected: hrun
-- rollback refuses it after (--force: it undoes what it still can). The journal's rows
-- stay: the record of every run is kept. The collection is journaled (not a dry run).
function M.gc(priv, opts, state, older_than)
  if not fs.exists(state .. "/journal.db") then
    io.stdout:write("no runs yet in ", state, "\n")
    return 0
  end
  local lk <close> = lock(priv, state, string.format("pid %d, hrun gc, since %s", self_pid(), -- luacheck: ignore 211/lk
    ui_mod.timestamp(sys.now())))
  local j = open_journal(priv, state)
  local started = sys.now()
  local before = started - older_than
  local items, failed, runs, marked = {}, {}, {}, {}
  local function needs_undo(status)
    return status ~= "rolled-back"
  end
  -- the stashes and asides of finished runs only (the lock is held: no run is in progress)
  local finished = {}
  for _, r in ipairs(j.db:query([[SELECT id, status FROM runs WHERE status IN ('done', 'rolled-back',
      'resolved') AND ended IS NOT NULL AND ended < ? AND coalesce(rollback_status, '') <> 'running'
      ORDER BY id]], before)) do
    finished[r.id] = r.status
  end
  for _, a in ipairs(j:restore_asides(before)) do
    if finished[a.run] and present(a.path) then
      items[#items + 1] = { kind = "restore aside", path = a.path, run = a.run,
        undo = needs_undo(a.status) and not a.undone }
    end
  end
  local ids = {}
  for id in pairs(finished) do
    ids[#ids + 1] = id
  end
  table.sort(ids)
  for _, id in ipairs(ids) do
    local dir = string.format("%s/runs/%d", state, id)
    if present(dir) then
      local stash = dir .. "/stash"
      local held = present(stash) and #(fs.list(stash) or {}) > 0
      items[#items + 1] = { kind = held and "stash" or "empty stash", path = dir, run = id,
        undo = held and needs_undo(finished[id]) }
    end
  end
  -- the runs that lose what their undo needs are journaled collected before anything is
  -- removed: killed in the middle, gc leaves no run that looks rollbackable and is not
  for _, it in ipairs(items) do
    if it.undo and not marked[it.run] then
      marked[it.run] = true
      runs[#runs + 1] = it.run
    end
  end
  table.sort(runs)
  local collection
  if not opts.dry_run then
    collection = j:collection({ older_than = older_than, removed = json.array(), failed = json.array(),
      runs = json.array(runs), started = started })
  end
  local btrfs = require "hrun.btrfs"
  for n, it in ipairs(items) do
    local ok, err = true, nil
    if not opts.dry_run then
      if os.getenv("HRUN_TEST_CRASH") == "gc-remove:" .. n then -- the tests' fault injection
        priv.crash()
      end
      if it.kind == "restore aside" then
        ok, err = btrfs.delete(it.path, { recursive = true })
      else
        ok, err = fs.remove(it.path, { recursive = true })
      end
    end
    if not ok then
      failed[#failed + 1] = { path = it.path, error = tostring(err) }
      it.error = tostring(err)
    end
    local verb = opts.dry_run and "would remove" or (ok and "removed" or "could not remove")
    if opts.json then
      io.stdout:write(json.encode({ event = "gc", action = opts.dry_run and "would-remove" or
        (ok and "removed" or "failed"), kind = it.kind, path = it.path, run = it.run, error = it.error }), "\n")
    else
      io.stdout:write(string.format("%s %s %s (run %d)%s\n", verb, it.kind, it.path, it.run,
        it.error and (": " .. it.error) or ""))
    end
  end
  if collection then
    local removed = {}
    for _, it in ipairs(items) do
      if not it.error then
        removed[#removed + 1] = { kind = it.kind, path = it.path, run = it.run }
      end
    end
    j:collection_end(collection, json.array(removed), json.array(failed), sys.now())
  end
  local summary = string.format("%s %d of %d item%s left by runs that ended before %s%s", opts.dry_run and
    "gc --dry-run: would remove" or "gc: removed", #items - #failed, #items, #items == 1 and "" or "s",
    ui_mod.timestamp(before), #runs > 0 and string.format("; run%s %s %s no longer be rolled back", #runs == 1 and
    "" or "s", table.concat(runs, ", "), opts.dry_run and "would" or "can") or "")
  if opts.json then
    io.stdout:write(json.encode({ event = "gc-end", dry_run = opts.dry_run or false, items = #items,
      failed = #failed, runs = json.array(runs), before = before }), "\n")
  else
    io.stdout:write(summary, "\n")
  end
  j:close()
  return #failed > 0 and EXIT_FAILED or 0
end

-- }======================================================

-- Reports what M's commands raise: returns the exit status.
function M.report(err, report_error)
  if getmetatable(err) ~= Bad then
    return nil
  end
  if err.locked then
    report_error("another run holds the lock: " .. err.locked)
    return EXIT_LOCKED
  end
  for _, line in ipairs(err.lines) do
    report_error(line)
  end
  return EXIT_BAD
end

M.EXIT_FAILED = EXIT_FAILED

return M
