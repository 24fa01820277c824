-- hrun.remote: the controller's end of a channel to another host.
--
-- A host is reached with the system's OpenSSH client, so that the user's ssh_config,
-- ProxyJump, agent and known_hosts work as they do. One master connection per host
-- (ControlMaster, under hrun's own ControlPath in the state directory) carries every
-- command; BatchMode=yes: a run never stops at a prompt (unknown keys are refused;
-- `hrun hosts trust` accepts one beforehand). At the other end runs `hrun agent` on one
-- long-lived channel: the hrun installed there when its version is this one, else the
-- portable build, uploaded once per version under its hash to the host's agent_dir.
local wire = require("hrun.wire")

local M = {}

M.DEFAULT_AGENT_DIR = "/var/lib/hrun/agent"
-- Above 0 while hrun's own work for a host runs (connecting, hashing its build): the
-- module functions it calls are this machine's, whatever host a step is on.
M.depth = 0

-- Calls fn(...) as hrun's own work (M.depth), outside any sandbox.
local function own(fn, ...)
  M.depth = M.depth + 1
  local res = table.pack(pcall(M.trusted, fn, ...))
  M.depth = M.depth - 1
  if not res[1] then
    error(res[2], 0)
  end
  return table.unpack(res, 2, res.n)
end
-- How long a host may stay unreachable in the middle of a run before its call fails.
M.RECONNECT_SECONDS = 60
-- ssh's own checks of a live connection: a cut one is seen after 3 intervals unanswered
-- (15 s; $HRUN_SSH_SERVER_ALIVE sets the interval).
local function alive()
  local every = tonumber(require("hrun.sys").env("HRUN_SSH_SERVER_ALIVE") or "") or 5
  return { "-o", "ServerAliveInterval=" .. math.max(1, math.floor(every)), "-o", "ServerAliveCountMax=3" }
end

local function shq(s)
  if s:match("^[%w%./_=:@%-]+$") then
    return s
  end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end
M.shq = shq

-- A call's answer as the call's results (raises its error).
local function results(reply)
  if reply.t == "error" then
    error(tostring(reply.message), 0)
  end
  local values, n = reply.values or {}, reply.n
  if math.type(n) ~= "integer" or n < 0 or n > 200 then
    n = #values
  end
  return table.unpack(values, 1, n)
end
M.results = results

-- {======================================================
-- Host descriptions: "local", "ssh://[user@]host[:port]", or an ssh_config alias
-- ======================================================

-- parse(text) → {is_local = true} | {user, host, port, url} | nil, why
function M.parse(text)
  if type(text) ~= "string" or text == "" then
    return nil, "a host is \"local\" or \"ssh://[user@]host[:port]\""
  end
  if text == "local" then
    return { is_local = true, url = "local" }
  end
  local rest = text:match("^ssh://(.*)$")
  if not rest then
    if text:find("://", 1, true) then
      return nil, string.format("%s: only ssh:// hosts are known (or \"local\")", text)
    end
    rest = text -- user@host or an ssh_config alias
  end
  rest = rest:gsub("/$", "")
  local user, hostport = rest:match("^([^@]*)@(.*)$")
  hostport = hostport or rest
  local host, port = hostport:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then
    host, port = hostport:match("^([^:]+):?(%d*)$")
  end
  if not host or host == "" then
    return nil, string.format("%s: no host name in it", text)
  end
  -- what reaches ssh's command line is a name, never an option (-oProxyCommand=…)
  if host:sub(1, 1) == "-" or not host:match("^[%w%.%-_:]+$") then
    return nil, string.format("%s: '%s' is not a host name", text, host)
  end
  if user and (user == "" or user:sub(1, 1) == "-" or not user:match("^[%w%._%-]+$")) then
    return nil, string.format("%s: '%s' is not a user name", text, user)
  end
  port = port ~= "" and tonumber(port) or nil
  if port and (port < 1 or port > 65535) then
    return nil, string.format("%s: port %d is not one", text, port)
  end
  return { user = user, host = host, port = port, url = text }
end

-- }======================================================

local Host = {}
Host.__index = Host

-- new{name, url, state, priv, agent_dir, controller, on_event}
function M.new(o)
  local where, why = M.parse(o.url)
  if not where then
    error(string.format("host '%s': %s", o.name, why), 0)
  end
  M.trusted = o.priv.trusted
  local self = setmetatable({ name = o.name, url = o.url, where = where, priv = o.priv, state = o.state,
    agent_dir = o.agent_dir or M.DEFAULT_AGENT_DIR, controller = o.controller, on_event = o.on_event,
    sudo = o.sudo or nil,
    seq = 0, reconnect_seconds = o.reconnect_seconds or M.RECONNECT_SECONDS }, Host)
  self.dir = o.state .. "/ssh"
  own(function()
    local fs = require("hrun.fs")
    if not fs.exists(self.dir) then
      assert(fs.mkdir(self.dir, { parents = true, mode = "0700" }))
    end
  end)
  local secrets = require("hrun.secrets")
  local json = require("hrun.json")
  self.special = function(v)
    local t = type(v)
    if t == "userdata" and secrets.is(v) then
      return "k", self.priv.secretbytes(v)
    elseif t == "userdata" and v == json.null then
      return "u", 0
    elseif t == "function" then
      error(string.format("a function cannot be passed to a module function on host '%s'", self.name), 0)
    elseif t == "table" then
      local mt = debug.getmetatable(v)
      local name = type(mt) == "table" and rawget(mt, "__name")
      if name == "array" then
        return "a", table.move(v, 1, #v, 1, {})
      elseif type(mt) == "table" and type(rawget(mt, "__tojson")) == "function" then
        return "v", mt.__tojson(v)
      end
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
      return json.null
    end,
    a = function(list)
      return json.array(type(list) == "table" and list or {})
    end,
  }
  return self
end

-- The ssh command line: the user's configuration, hrun's master connection. ssh keeps
-- the first value an option is given, so the caller's own options (extra) come first.
function Host:ssh_argv(extra)
  local w = self.where
  local argv = { "ssh" }
  for _, a in ipairs(extra or {}) do
    argv[#argv + 1] = a
  end
  local config = require("hrun.sys").env("HRUN_SSH_CONFIG")
  if config and config ~= "" then
    argv[#argv + 1], argv[#argv + 2] = "-F", config
  end
  for _, o in ipairs({ "BatchMode=yes", "ControlPath=" .. self.dir .. "/%C", "ConnectTimeout=10",
    -- keys `hrun hosts trust` accepted, beside the user's own and the system's
    "GlobalKnownHostsFile=" .. self.state .. "/known_hosts /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2" }) do
    argv[#argv + 1], argv[#argv + 2] = "-o", o
  end
  for _, a in ipairs(alive()) do
    argv[#argv + 1] = a
  end
  if w.port then
    argv[#argv + 1], argv[#argv + 2] = "-p", tostring(w.port)
  end
  if w.user then
    argv[#argv + 1], argv[#argv + 2] = "-l", w.user
  end
  return argv
end

function Host:target_argv(argv)
  argv[#argv + 1] = "--"
  argv[#argv + 1] = self.where.host
  return argv
end

function Host:errlog()
  return string.format("%s/%s.log", self.dir, self.name:gsub("[^%w%-_.]", "_"))
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  local s = f:read("a") or ""
  f:close()
  return s
end

-- What ssh said, in words a person acts on: kind, the message.
function M.classify(text)
  local last
  for line in text:gmatch("[^\r\n]+") do
    if not line:match("^Warning: Permanently added") and not line:match("^sudo: unable to resolve host")
      and not line:match("^%s*$") then
      last = last and (last .. "; " .. line) or line
    end
  end
  last = last or "ssh ended without a word"
  local rules = {
    -- sudo's first: its own warnings (an unresolved host name) must not read as ssh's
    { "a password is required", "sudo", "sudo asks for a password: hrun's agent needs a NOPASSWD sudoers rule " ..
      "(docs/hosts.md, Privilege)" },
    { "is not allowed to execute", "sudo", "sudo refuses to run hrun's agent: no sudoers rule allows it " ..
      "(docs/hosts.md, Privilege)" },
    { "is not in the sudoers file", "sudo", "sudo refuses: the login user is not in the sudoers file " ..
      "(docs/hosts.md, Privilege)" },
    { "sudo: not found", "sudo", "the host has no sudo" },
    { "Could not resolve hostname", "dns", "its name does not resolve (DNS)" },
    { "Name or service not known", "dns", "its name does not resolve (DNS)" },
    { "Connection refused", "refused", "the connection is refused (no sshd on that port?)" },
    { "timed out", "timeout", "the connection timed out" },
    { "No route to host", "unreachable", "there is no route to it" },
    { "Network is unreachable", "unreachable", "its network is unreachable" },
    { "REMOTE HOST IDENTIFICATION HAS CHANGED", "key-changed",
      "its host key has CHANGED since it was trusted (a reinstalled host, or someone in the middle): " ..
      "check the new key, then remove the old one from the known_hosts file ssh names" },
    { "No %S+ host key is known", "key-unknown", "its host key is not known: `hrun hosts trust NAME` first" },
    { "Host key verification failed", "key-unknown", "its host key is not known: `hrun hosts trust NAME` first" },
    { "Permission denied", "auth", "the login is refused (key or user: ssh-agent, IdentityFile, authorized_keys)" },
    { "Too many authentication failures", "auth", "the login is refused (too many keys offered)" },
    { "Connection closed by", "closed", "the connection was closed by the other end" },
    { "Connection reset", "closed", "the connection was reset" },
  }
  for _, r in ipairs(rules) do
    if text:find(r[1]) then
      return r[2], r[3], last
    end
  end
  return "ssh", last, last
end

-- Runs `cmd` (a shell command line) on the host over the master connection: its stdout,
-- exit status ("exited with code N"), and ssh's stderr. stdin from a file when given.
function Host:run(cmd, stdin_path)
  local log = self:errlog()
  local f = io.open(log, "wb")
  if f then
    f:close()
  end
  local argv = self:target_argv(self:ssh_argv({ "-o", "ControlMaster=no", "-T" }))
  argv[#argv + 1] = cmd
  local pid, ch = self.priv.spawnchannel(argv, log, stdin_path or "/dev/null")
  local out = {}
  while true do
    local line = ch:recv(1 << 30)
    if not line then
      break
    end
    out[#out + 1] = line
  end
  ch:close()
  local how = self.priv.sandboxend(pid, false, true)
  return table.concat(out, "\n"), how, read_file(log)
end

function Host:fail(what, stderr)
  local kind, words, raw = M.classify(stderr)
  local e = setmetatable({ host = self.name, kind = kind,
    message = string.format("host '%s' (%s): %s: %s%s", self.name, self.url, what, words,
      raw ~= words and (" [ssh: " .. raw .. "]") or "") }, { __tostring = function(t)
      return t.message
    end })
  error(e.message, 0)
end

-- The local portable build and its hash: the name it has on hosts.
function M.portable_build()
  local sys = require("hrun.sys")
  local fs = require("hrun.fs")
  local candidates = {}
  local env = sys.env("HRUN_PORTABLE")
  if env and env ~= "" then
    candidates[1] = env
  end
  local exe = fs.stat("/proc/self/exe", { follow = false })
  local dir = exe and exe.target and exe.target:match("^(.*)/[^/]*$")
  if dir then
    candidates[#candidates + 1] = dir .. "/hrun-portable"
    candidates[#candidates + 1] = dir .. "/../lib/hrun/hrun-portable"
  end
  for _, path in ipairs(candidates) do
    if fs.exists(path) then
      -- its name there: xxh128 of its bytes (a few ms; sha256 cost 100 ms a run)
      local hex = assert(require("hrun.hash").file(path))
      return path, hex:sub(1, 16)
    end
  end
  return nil, table.concat(candidates, ", ")
end

-- A line of `stat -c '%u %A %a %F'` there, in words: "a directory of uid 0, mode 777".
local function describe_stat(line)
  local owner, mode, what = (line or ""):match("^(%d+) %S+ (%d+) (.+)$")
  if not owner then
    return "not usable (" .. tostring(line) .. ")"
  end
  return string.format("a %s of uid %s, mode %s", what, owner, mode)
end

-- The one command that starts the agent there, with what to run decided there, so that
-- a run makes one ssh start, not three (a probe, a check of the master, the agent): the
-- hrun installed there when its version is this one, else the portable build under its
-- hash in agent_dir. What runs as the login user is only what that user (or root) could
-- have put there: the build a regular file of that user's, the directory (its link
-- followed: it may lead to a larger disk) the user's or root's, neither writable by group
-- or others (the case patterns below: %A's type, then ????-??-? leaves the group's and
-- others' w bits '-'). It says what it found, a "hrun-probe k=v" line each, before the
-- agent's first message; when nothing there may run, "agent=none", and it ends.
function Host:start_command(mine, hash)
  local dir = self.agent_dir
  local bin = dir .. "/hrun-" .. (hash or "none")
  -- sudo = true: the agent runs as root through `sudo -n` (one sudoers rule, never a
  -- prompt), so what it runs is root's alone: the build and its directory root's
  local sudo = self.sudo and "sudo -n " or ""
  local dirs = self.sudo and "\"0 d\"????-??-?\" \"*" or "\"$u d\"????-??-?\" \"*|\"0 d\"????-??-?\" \"*"
  local bins = self.sudo and "\"0 -\"????-??-?\" \"*" or "\"$u -\"????-??-?\" \"*"
  local script = {
    "u=$(id -u)",
    -- an installed hrun that cannot start prints nothing
    "v=$(command -v hrun >/dev/null 2>&1 && hrun version 2>/dev/null | head -n 1)",
    string.format("d=$(stat -L -c '%%u %%A %%a %%F' %s 2>/dev/null || echo missing)", shq(dir)),
    string.format("b=$(stat -c '%%u %%A %%a %%F' %s 2>/dev/null || echo missing)", shq(bin)),
    "echo \"hrun-probe uid=$u\"; echo \"hrun-probe hrun=$v\"; echo \"hrun-probe dir=$d\"",
    "echo \"hrun-probe path=$(command -v hrun)\"",
    "case \"$d\" in missing|" .. dirs .. ") echo hrun-probe dirok=yes;; esac",
    string.format("if [ \"$v\" = %s ]; then echo hrun-probe agent=installed; exec %s%s agent --dir %s; fi",
      shq(mine), sudo, self.sudo and "\"$(command -v hrun)\"" or "hrun", shq(dir)),
  }
  if hash then
    script[#script + 1] = string.format("case \"$d\" in %s) case \"$b\" in %s) echo hrun-probe agent=portable; " ..
      "exec %s%s agent --dir %s;; esac;; esac", dirs, bins, sudo, shq(bin), shq(dir))
  end
  script[#script + 1] = "echo hrun-probe agent=none"
  return table.concat(script, "; ")
end

-- The probe's lines (Host:start_command) up to its "agent=" one: {k = v}, or nil when
-- the channel ended first (and why, when not at its end: "timeout", "interrupted").
function Host:read_probe(seconds)
  return self:reading(seconds, function()
    local field = {}
    while true do
      local line, w = self.ch:recv(1 << 30, true)
      if not line then
        return nil, w ~= "eof" and w or nil
      end
      local k, v = line:match("^hrun%-probe (%a+)=(.*)$")
      if k then
        field[k] = v
        if k == "agent" then
          return field
        end
      end
    end
  end)
end

-- Nothing there may run as the agent (probe: its lines): the portable build is uploaded
-- into agent_dir, unless that directory is not to be trusted. The command to run there.
function Host:upload(probe, mine, portable, hash)
  local dir = self.agent_dir
  if not portable then
    error(string.format("host '%s': its hrun is %s, not %s, and there is no portable build to upload " ..
      "(looked for %s; set HRUN_PORTABLE)", self.name, self.installed or "missing", mine, hash), 0)
  end
  if self.sudo then
    error(string.format("host '%s': sudo = true: its agent runs as root, so hrun does not upload it; install " ..
      "hrun %s there (a package), or put the portable build at %s/hrun-%s as root (owned by root, mode 0700) — " ..
      "docs/hosts.md, Privilege", self.name, self.priv.version, dir, hash), 0)
  end
  if probe.dirok ~= "yes" then
    error(string.format("host '%s': its agent_dir %s is %s: hrun does not run a program from there " ..
      "(it must be a directory of the login user's or root's that nobody else may write to; " ..
      "fix it or choose agent_dir)", self.name, dir, describe_stat(probe.dir)), 0)
  end
  local remote = dir .. "/hrun-" .. hash
  -- missing, or not to be trusted: sent now, over whatever is there
  local part = string.format("%s/.hrun-%s.part.%d", dir, hash, self.priv.pid())
  local cmd = string.format("umask 077 && mkdir -p %s && cat > %s && chmod 700 %s && mv -f %s %s",
    shq(dir), shq(part), shq(part), shq(part), shq(remote))
  local _, how, err = self:run(cmd, portable)
  if how ~= "exited with code 0" then
    self:fail(string.format("cannot upload hrun to %s (%s)", dir, how), err)
  end
  self.uploaded = true
  return remote
end

function Host:emit(ev)
  if self.on_event then
    ev.host = self.name
    self.on_event(ev)
  end
end

-- Connects and says hello; the ready message. The agent's ssh is the master connection
-- when there is none (ControlMaster=auto: it starts one, kept 60 s after the last
-- client; a stale socket of a dead one is replaced), so a run from nothing makes one ssh
-- start: key exchange, then the agent (Host:start_command decides there what runs).
function Host:connect()
  return own(self.connect_here, self)
end

function Host:spawn_agent(cmd)
  local argv = self:target_argv(self:ssh_argv({ "-o", "ControlMaster=auto", "-o", "ControlPersist=60", "-T" }))
  argv[#argv + 1] = cmd
  self.pid, self.ch = self.priv.spawnchannel(argv, self:errlog())
end

-- The channel ended (why nil) or was given up on (why: "timeout", "interrupted") before
-- the agent said anything: ssh's own failure (255: the host not reached, named with
-- why), or the command's there.
function Host:ended(what, why)
  local ch, pid = self.ch, self.pid
  self.ch, self.pid = nil, nil
  ch:close()
  local how = self.priv.sandboxend(pid, why ~= nil, true)
  local said = read_file(self:errlog())
  if why then
    self:fail(string.format("%s (%s)", what, why == "timeout" and "no answer in 30 s" or why), said)
  elseif how == "exited with code 255" then
    self:fail("cannot connect", said)
  end
  self:fail(string.format("%s (%s)", what, how), said)
end

function Host:connect_here()
  local f = io.open(self:errlog(), "wb")
  if f then
    f:close()
  end
  if self.agent then -- connected before: started by its path
    self:spawn_agent(string.format("exec %s%s agent --dir %s", self.sudo and "sudo -n " or "", shq(self.agent),
      shq(self.agent_dir)))
  else
    local mine = string.format("hrun %s (%s)", self.priv.version, _VERSION)
    local portable, hash = M.portable_build()
    self:spawn_agent(self:start_command(mine, portable and hash))
    local probe, why = self:read_probe(30)
    if not probe then
      self:ended("cannot run a command there", why)
    end
    self.uid = tonumber(probe.uid)
    self.installed = (probe.hrun or "") ~= "" and probe.hrun or nil
    if probe.agent == "none" then
      self.ch:close()
      self.ch = nil
      self.priv.sandboxend(self.pid, false, true)
      self.pid = nil
      local remote = self:upload(probe, mine, portable, hash)
      self:spawn_agent(string.format("exec %s agent --dir %s", shq(remote), shq(self.agent_dir)))
      self.agent, self.agent_kind = remote, "portable"
    else
      self.agent_kind = probe.agent
      -- under sudo by its path: the one a sudoers rule names
      self.agent = probe.agent == "installed" and (self.sudo and probe.path or "hrun") or
        (self.agent_dir .. "/hrun-" .. hash)
    end
  end
  local ready, why = self:receive(nil, 30)
  if type(ready) ~= "table" or ready.t ~= "ready" then
    if not ready and (why == "eof" or why == "timeout" or why == "interrupted") then
      self:ended("its agent did not start", why ~= "eof" and why or nil)
    end
    local e = ready and ready.message or "no answer"
    self:close()
    self:fail("its agent did not start: " .. tostring(e), read_file(self:errlog()))
  end
  if ready.protocol ~= require("hrun.agent").PROTOCOL then
    self:close()
    error(string.format("host '%s': its hrun (%s) speaks protocol %s, this one %d", self.name,
      tostring(ready.version), tostring(ready.protocol), require("hrun.agent").PROTOCOL), 0)
  end
  self.ready = ready
  if ready.uid == 0 then -- under sudo: root, whoever logged in
    self.uid = 0
  end
  if self.caps then
    results(self:request({ t = "sandbox", caps = self.caps, host = self.name }))
  end
  if self.run_id then
    self:request({ t = "stash", controller = self.controller, run = self.run_id })
  end
  return ready
end

function Host:close()
  if self.ch then
    pcall(self.ch.send, self.ch, self:encode({ t = "bye" }))
    self.ch:close()
    self.ch = nil
  end
  if self.pid then
    self.priv.sandboxend(self.pid, true)
    self.pid = nil
  end
end

-- Stops the master connection (the end of a run that wants no ssh left behind).
function Host:disconnect()
  self:close()
  local argv = self:target_argv(self:ssh_argv({ "-O", "exit" }))
  local pid, ch = self.priv.spawnchannel(argv, "/dev/null", "/dev/null")
  ch:close()
  self.priv.sandboxend(pid, false, true)
end

function Host:encode(msg)
  return wire.encode(msg, self.special, false)
end

-- The next message for seq (output lines on the way are handed on), or nil, why.
-- seconds: a wait of its own (connecting); else the step's deadline and Ctrl-C.
function Host:receive(seq, seconds)
  return self:reading(seconds, function()
    while true do
      local line, w = self.ch:recv(1 << 30, true)
      if not line then
        return nil, w
      end
      local dok, m = pcall(wire.decode, line, self.tags)
      if not dok or type(m) ~= "table" then
        return nil, "not a message: " .. tostring(m)
      end
      if m.t == "output" then -- a request given up on (interrupted) may still print: not this one's
        if seq == nil or m.seq == seq then
          self:emit({ event = "output", line = require("hrun.pretty").utf8(tostring(m.line)), stream = m.stream })
        end
      elseif seq == nil or m.seq == seq then
        return m
      end
    end
  end)
end

-- fn() reading the channel, within seconds (a wait of its own) or else the step's
-- deadline and Ctrl-C: its results, or nil, "interrupted" / "timeout".
function Host:reading(seconds, fn)
  local priv = self.priv
  local saved = priv.deadline()
  if seconds then
    priv.setdeadline(priv.monotime() + seconds)
  end
  local ok, res, why = pcall(fn)
  if seconds then
    priv.setdeadline(saved)
  end
  if not ok then
    -- the hook raises an interrupt or the step's deadline in the loop itself: as the
    -- channel says them, so that the agent is told (Host:interrupt)
    local m = tostring(res)
    if m:match("interrupted$") then
      return nil, "interrupted"
    elseif m:match("timed out$") then
      return nil, "timeout"
    end
    error(res, 0)
  end
  return res, why
end

-- Sends a request and waits for its answer. A channel that drops is connected again and
-- the same request (same seq) sent again: the agent answers a write it already did from
-- its journal. The step's deadline or Ctrl-C interrupts the agent's call there.
function Host:request(msg)
  local reply = own(self.request_here, self, msg)
  if msg.t ~= "write" then -- a write's answer is journaled first, then settled
    self:settle()
  end
  return reply
end

-- After an answer to a request that was interrupted, or whose step timed out, is in
-- hand (and journaled): the interruption goes on, as it would have here.
function Host:settle()
  local cut = self.cut
  if cut then
    self.cut = nil
    self.priv.setdeadline(cut.deadline)
    error(cut.why == "timeout" and "timed out" or "interrupted", 0)
  end
end

function Host:request_here(msg)
  self.seq = self.seq + 1
  msg.seq = self.seq
  local text = self:encode(msg)
  local lost_at
  while true do
    local reply, why
    if self.ch then
      local sent, swhy = self.ch:send(text, true)
      if sent then
        reply, why = self:receive(msg.seq)
      else
        why = swhy
      end
    else
      why = "not connected"
    end
    if reply then
      return reply
    end
    if why == "timeout" or why == "interrupted" then
      return self:interrupt(msg, why)
    end
    -- the channel is gone: connect again while the host may come back
    lost_at = lost_at or self.priv.monotime()
    self:close()
    self:emit({ event = "log", message = string.format("host '%s': the channel dropped (%s); connecting again",
      self.name, tostring(why)) })
    local ok, err
    repeat
      ok, err = pcall(self.connect, self)
      if not ok then
        if self.priv.interrupted() > 0 then
          error(string.format("host '%s': interrupted while connecting again", self.name), 0)
        end
        if self.priv.monotime() - lost_at > self.reconnect_seconds then
          error(string.format("host '%s' is unreachable: %s (for %d s, in the middle of a call)", self.name,
            tostring(err), self.reconnect_seconds), 0)
        end
        require("hrun.sys").sleep(1)
      end
    until ok
  end
end

-- A request interrupted here (Ctrl-C), or whose step timed out: the agent's call is
-- interrupted as a local one would be (SIGINT: its command stopped), and its answer
-- waited for (10 s) so that what it did is journaled here; then the interruption goes
-- on (Host:settle). The wait is not cut short by the interrupt that caused it — a
-- second one does. A detached write goes on in its unit (as nixos-rebuild's switch
-- does): a rollback waits for it.
function Host:interrupt(msg, why)
  local priv = self.priv
  local held = priv.takeinterrupts()
  local deadline = priv.deadline()
  priv.setdeadline(0)
  local ok, reply = pcall(function()
    -- under sudo the agent is root's: its sudo (the user's) relays the signal to it
    local pid = self.ready and math.tointeger(self.sudo and self.ready.ppid or self.ready.pid)
    if pid then
      self:run("kill -INT " .. pid)
    end
    return (self:receive(msg.seq, 10))
  end)
  local again = priv.takeinterrupts()
  priv.putinterrupts(held + again)
  if ok and reply and again == 0 then
    self.cut = { why = why, deadline = deadline }
    return reply
  end
  priv.setdeadline(deadline)
  self:close()
  error(why == "timeout" and "timed out" or "interrupted", 0)
end


function Host:call(name, ...)
  local args = table.pack(...)
  local n = args.n
  args.n = nil
  return results(self:request({ t = "call", name = name, args = args, n = n }))
end

-- A call of hrun's own, outside the host's sandbox. once = {controller, run, effect, op}:
-- an inverse's operation from the journal, which the host journals with its answer and
-- never runs twice (sent again after a crash, it is answered from there).
function Host:call_trusted(once, name, ...)
  local args = table.pack(...)
  local n = args.n
  args.n = nil
  return results(self:request({ t = "call", name = name, args = args, n = n, trusted = true, once = once }))
end

-- The capabilities the playbook has on this host (a sandboxed run): its agent checks
-- each call against them, resolving paths there; sent again on every connection.
function Host:set_sandbox(caps)
  self.caps = caps
  if self.ch then
    results(self:request({ t = "sandbox", caps = caps, host = self.name }))
  end
end

function Host:priv_call(fn, ...)
  local args = table.pack(...)
  local n = args.n
  args.n = nil
  return results(self:request({ t = "priv", fn = fn, args = args, n = n }))
end

-- {======================================================
-- Copies between machines (fs.sync, btrfs.receive with `from`): the sending side runs
-- where the data is, started here behind a relay socket (`hrun __relay serve`,
-- runtime/relay.c); a receiving host reaches that socket through its ssh master
-- (Host:forward), as `scp -3` goes through the machine it runs on
-- ======================================================

local relays = 0

local Relay = {}
Relay.__index = Relay

-- M.sender{priv, dir, name, src, opts, host} → relay: the sending side of the copy
-- `name` (its src and opts as the call has them) behind a socket in dir; host: the Host
-- the data is on (its master connected), nil: this machine. relay.sock; relay:said(),
-- what the sending side said; relay:close() stops it (also its __close).
function M.sender(o)
  return own(M.sender_here, o)
end

function M.sender_here(o)
  local priv = o.priv
  relays = relays + 1
  local base = string.format("%s/relay-%d-%d", o.dir, priv.pid(), relays)
  local sock = base .. ".sock"
  if #sock > 100 then
    error(string.format("%s: the relay socket's path is too long for a Unix socket (%s): a shorter state " ..
      "directory (--state)", o.name, sock), 0)
  end
  local argv = { priv.selfexe(), "__relay", "serve", sock }
  local tail = {}
  if o.name == "fs.sync" then -- the receiving rsync says what it needs: checked, appended
    argv[#argv + 1], argv[#argv + 2] = "--rsync", o.src
  else
    argv[#argv + 1] = "--stdout"
    tail = { "btrfs", "send", "-q" }
    if o.opts.parent then
      tail[#tail + 1], tail[#tail + 2] = "-p", tostring(o.opts.parent)
    end
    tail[#tail + 1] = o.src
  end
  if o.host then
    argv[#argv + 1] = "--remote"
  end
  argv[#argv + 1] = "--"
  if o.host then
    for _, a in ipairs(o.host:target_argv(o.host:ssh_argv({ "-o", "ControlMaster=no", "-T" }))) do
      argv[#argv + 1] = a
    end
    if #tail > 0 then
      local quoted = {}
      for i, a in ipairs(tail) do
        quoted[i] = shq(a)
      end
      argv[#argv + 1] = table.concat(quoted, " ")
    end
  else
    table.move(tail, 1, #tail, #argv + 1, argv)
  end
  os.remove(sock)
  local self = setmetatable({ priv = priv, sock = sock, log = base .. ".log" }, Relay)
  self.pid, self.ch = priv.spawnchannel(argv, self.log, "/dev/null")
  local ready = self.ch:recv(64)
  if ready ~= "ready" then
    local said = self:said()
    self:close()
    error(string.format("%s: its relay did not start%s", o.name, said ~= "" and ": " .. said or ""), 0)
  end
  return self
end

-- The last words of the sending side (its relay's and ssh's errors), on one line.
function Relay:said()
  local lines = {}
  for line in read_file(self.log):gmatch("[^\r\n]+") do
    if not line:match("^Warning: Permanently added") then
      lines[#lines + 1] = line
    end
  end
  return table.concat(lines, "; ", math.max(1, #lines - 2))
end

function Relay:close()
  if self.pid then
    self.priv.sandboxend(self.pid, 15) -- SIGTERM: it stops the senders it started, and waits
    self.pid = nil
    self.ch:close()
    os.remove(self.log)
    os.remove(self.sock)
  end
end

Relay.__close = Relay.close

-- The relay socket `sock` here, reached on this host at a socket in its agent directory
-- (the master forwards it): that socket's path.
function Host:forward(sock)
  return own(self.forward_here, self, sock)
end

function Host:forward_here(sock)
  if self.sudo then -- the socket would go in root's directory, where the login user's sshd cannot
    error(string.format("host '%s': sudo = true: a copy to or from another machine is not supported on it " ..
      "(its agent_dir is root's; docs/hosts.md, Limits)", self.name), 0)
  end
  relays = relays + 1
  -- named by controller, process and count: a socket a crash left there is never this one
  local remote = string.format("%s/relay-%s-%d-%d.sock", self.agent_dir:gsub("/+$", ""),
    (self.controller or "c"):sub(1, 12), self.priv.pid(), relays)
  if #remote > 100 then
    error(string.format("host '%s': the relay socket's path is too long for a Unix socket (%s): a shorter " ..
      "agent_dir", self.name, remote), 0)
  end
  local function mux(op)
    local argv = self:target_argv(self:ssh_argv({ "-O", op, "-R", remote .. ":" .. sock }))
    local log = self:errlog()
    local pid, ch = self.priv.spawnchannel(argv, log, "/dev/null")
    ch:close()
    return self.priv.sandboxend(pid, false, true), log
  end
  local how, log = mux("forward")
  if how ~= "exited with code 0" then
    self:fail("cannot forward a relay socket to it (its sshd must allow AllowStreamLocalForwarding)",
      read_file(log))
  end
  return remote, function()
    own(mux, "cancel")
  end
end

-- }======================================================

-- {======================================================
-- hosts.NAME.<module>.<fn>(…): routed by the runner while a playbook runs
-- ======================================================

M.router = nil

function M.route(host, fn, ...)
  if host == "local" then
    if M.router then
      return M.router(host, fn, ...)
    end
    return fn(...)
  end
  if not M.router then
    error(string.format("hosts.%s: other hosts are reached while a playbook runs (hrun PLAYBOOK.lua)", host), 2)
  end
  return M.router(host, fn, ...)
end

-- }======================================================

return M
