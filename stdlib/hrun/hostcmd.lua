-- hrun.hostcmd: `hrun hosts check` and `hrun hosts trust` — other hosts, before a run.
local remote = require("hrun.remote")

local M = {}

local function bad(msg)
  local play = require("hrun.play")
  error(setmetatable({ lines = { msg } }, play.Bad), 0)
end

-- The hosts named (all when none), from the playbook at path and -H: {name, url, agent_dir}.
local function pick(priv, opts, path, names, state)
  local play = require("hrun.play")
  local base
  if path then
    local pb = play.load(priv, play.absolute(path), state, opts.sandbox, opts)
    base = pb.hosts
  end
  if opts.hosts_file then -- an inventory's hosts (--limit: some of them)
    local fleet = require("hrun.fleet")
    local inv, problems = fleet.inventory(opts.hosts_file, priv.nearest)
    if not inv then
      error(setmetatable({ lines = problems }, play.Bad), 0)
    end
    local chosen, why = fleet.select(inv, nil, opts.limit, priv.nearest)
    if not chosen then
      bad(why)
    end
    base = base or {}
    for _, name in ipairs(chosen) do
      base[name] = inv.hosts[name] -- play.hosts takes its url, agent_dir and sudo
    end
  end
  local hosts = play.hosts(base, opts) or {}
  local list = {}
  local function add(name, h)
    list[#list + 1] = { name = name, url = h.url, agent_dir = h.agent_dir, sudo = h.sudo }
  end
  if #names == 0 then
    for name, h in pairs(hosts) do
      if h.url ~= "local" then
        add(name, h)
      end
    end
    table.sort(list, function(a, b)
      return a.name < b.name
    end)
  else
    for _, name in ipairs(names) do
      local h = hosts[name]
      if not h then
        local parsed = remote.parse(name)
        if parsed and not parsed.is_local and name:find("[@:]") then -- a URL given as it is
          h = { url = name }
        else
          bad(string.format("no host '%s'%s", name, path and (" in " .. path) or " (give PLAYBOOK.lua or -H NAME=URL)"))
        end
      end
      add(name, h)
    end
  end
  if #list == 0 then
    bad("no hosts to " .. (opts.trust and "trust" or "check") .. ": give PLAYBOOK.lua or -H NAME=URL")
  end
  return list
end

local function new_host(priv, state, h)
  return remote.new({ name = h.name, url = h.url, priv = priv, state = state, agent_dir = h.agent_dir, sudo = h.sudo,
    controller = "check" })
end

-- hrun hosts check: each host reached (or why not), its hrun, root or not.
function M.check(priv, opts, path, names, state)
  local failed = 0
  for _, h in ipairs(pick(priv, opts, path, names, state)) do
    local host = new_host(priv, state, h)
    local ok, err = pcall(host.connect, host)
    local out
    if ok then
      local r = host.ready
      out = { host = h.name, url = h.url, reachable = true, hostname = r.host, root = host.uid == 0,
        hrun = host.installed, agent = host.agent_kind, uploaded = host.uploaded or false, version = r.version }
      host:close()
    else
      failed = failed + 1
      out = { host = h.name, url = h.url, reachable = false, error = tostring(err) }
    end
    if opts.json then
      io.stdout:write(require("hrun.json").encode(out), "\n")
    elseif ok then
      io.stdout:write(string.format("%-12s %s: reachable (%s), %s, hrun %s%s\n", h.name, h.url, out.hostname,
        out.root and "root" or "not root", out.agent == "installed" and "installed there" or "portable build",
        out.uploaded and " (uploaded now)" or ""))
    else
      io.stdout:write(string.format("%-12s %s: NOT reachable: %s\n", h.name, h.url, out.error))
    end
  end
  return failed > 0 and 1 or 0
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  local s = f:read("a") or ""
  f:close()
  return s
end

-- hrun hosts trust: each host's key fetched with ssh itself (so ProxyJump and the user's
-- configuration apply), its fingerprint shown and, confirmed, kept in STATE/known_hosts.
function M.trust(priv, opts, path, names, state)
  local fs = require("hrun.fs")
  local exec = require("hrun.exec")
  local known = state .. "/known_hosts"
  local status = 0
  for _, h in ipairs(pick(priv, opts, path, names, state)) do
    local host = new_host(priv, state, h)
    local tmp = string.format("%s/ssh/trust-%d", state, priv.pid())
    if not fs.exists(state .. "/ssh") then
      assert(fs.mkdir(state .. "/ssh", { parents = true, mode = "0700" }))
    end
    fs.remove(tmp)
    local argv = host:ssh_argv({ "-o", "ControlPath=none", "-o", "StrictHostKeyChecking=accept-new",
      "-o", "UserKnownHostsFile=" .. tmp, "-o", "GlobalKnownHostsFile=/dev/null", "-o", "HashKnownHosts=no" })
    -- the key is all it needs: the login may fail after it was seen
    host:target_argv(argv)
    argv[#argv + 1] = "true"
    local r = exec.run(argv, { check = false, readonly = true, timeout = 30 })
    local lines = read(tmp)
    if lines == "" then
      local _, words, raw = remote.classify(r.stderr or "")
      io.stderr:write(string.format("hrun: host '%s' (%s): no key fetched: %s [ssh: %s]\n", h.name, h.url, words,
        raw))
      status = 1
    else
      local fp = exec.run({ "ssh-keygen", "-l", "-f", tmp }, { check = false, readonly = true })
      io.stdout:write(string.format("%s (%s):\n%s", h.name, h.url, fp.stdout))
      local yes = opts.yes
      if not yes and priv.isatty(0) and priv.isatty(2) then
        io.stderr:write("Trust this key for hrun's runs? [y/N] ")
        yes = (io.stdin:read("l") or ""):match("^%s*[yY]") ~= nil
      elseif not yes then
        io.stderr:write("hrun: not kept: confirm with --yes (there is no terminal to ask on)\n")
        status = 1
      end
      if yes then
        -- the host's old key in hrun's file goes: the fingerprint was just shown
        local first = lines:match("^(%S+)")
        if first and fs.exists(known) then
          exec.run({ "ssh-keygen", "-R", first, "-f", known }, { check = false, readonly = true })
          fs.remove(known .. ".old")
        end
        local old = read(known)
        assert(fs.write(known, old .. lines, { mode = "0600" }))
        io.stdout:write(string.format("kept in %s\n", known))
      end
    end
    fs.remove(tmp)
  end
  return status
end

return M
