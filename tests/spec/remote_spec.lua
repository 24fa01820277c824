-- Other hosts over real OpenSSH (issue 21): playbooks whose steps run on hosts that are
-- nspawn containers with their own roots and sshd (tests/fixtures/hosts.sh), reached with
-- the system's ssh; hrun at the other end is the portable build the controller uploads,
-- or the hrun installed there.

-- The environment for hrun reaching the fixture's hosts: its ssh_config, a state dir.
local function controller(hs, extra)
  local dir = tmpdir()
  local env = { HRUN_SSH_CONFIG = hs.ssh_config, HRUN_STATE_DIR = dir .. "/state", HRUN_SSH_SERVER_ALIVE = "1" }
  for k, v in pairs(extra or {}) do
    env[k] = v
  end
  return dir, env
end

local run = hrun_with

-- A shell command run in the background while hrun runs: :wait() until it is done.
local function background(cmd)
  local pid = exec.run({ "sh", "-c", "(" .. cmd .. ") >/dev/null 2>&1 & echo $!" }).stdout:gsub("%s+$", "")
  local b = {}
  function b.wait()
    for _ = 1, 600 do
      if not exec.run({ "kill", "-0", pid }, { check = false }).ok then
        return
      end
      sys.sleep(0.1)
    end
    error("the background command did not end: " .. cmd)
  end
  after(function()
    exec.run({ "kill", pid }, { check = false })
  end)
  return b
end

-- what a host has under dir, as a tree seen through its root from here
local function host_tree(h, dir)
  if not fs.exists(h.root .. dir) then
    return {}
  end
  return tree(h.root .. dir)
end

-- A playbook in dir (o.name, "p") whose one step, on host h at url (o.agent_dir: its
-- agent's directory there), writes /root/x there.
local function writes_x(dir, url, o)
  o = o or {}
  local name = o.name or "p"
  local host = o.agent_dir and string.format("{ url = %q, agent_dir = %q }", url, o.agent_dir)
    or string.format("%q", url)
  return playbook_file(dir, name .. ".lua", string.format([[
return playbook { name = %q, hosts = { h = %s },
  phase "p" { step "s" { on = "h", run = function() fs.write("/root/x", "1") end } } }
]], name, host))
end

local TWO_HOSTS = [[
return playbook {
  name = "two hosts", hosts = { old = "@OLD@", new = "@NEW@" },
  params = { fail = false, local_dir = "" },
  phase "move" {
    step "stop on the old host" { on = "old",
      run = function(ctx)
        fs.write("/srv/app/config", "v2\n")
        fs.mkdir("/srv/app/moved")
        exec.run({ "sh", "-c", "echo stopped >> /srv/app/state" }, { undo = { "sed", "-i", "$ d", "/srv/app/state" } })
        ctx.state.host = sys.hostname()
      end },
    step "copy to the new host" {
      run = function(ctx)
        local data = hosts.old.fs.read("/srv/app/data")
        hosts.new.fs.mkdir("/srv/app", { parents = true })
        hosts.new.fs.write("/srv/app/data", data)
        fs.write(ctx.params.local_dir .. "/copied", hosts.new.sys.hostname() .. "\n")
      end },
    step "check" { run = function(ctx)
      assert(hosts.new.fs.read("/srv/app/data") == hosts.old.fs.read("/srv/app/data"))
      if ctx.params.fail then error("the new host is not ready") end
    end },
  },
}
]]

local function two_hosts_playbook(dir, hs)
  return playbook_file(dir, "two.lua", TWO_HOSTS:gsub("@OLD@", hs[1].url):gsub("@NEW@", hs[2].url))
end

local function seed_old(h)
  local _, code = h:sh("mkdir -p /srv/app && printf 'v1\\n' > /srv/app/config && printf 'the data\\n' > " ..
    "/srv/app/data && printf 'running\\n' > /srv/app/state")
  eq(code, 0, "seeded")
end

describe("a playbook on two hosts", function()
  it("runs each step where it says, journals every effect with its host, and rolls back on every host", function()
    local hs = ssh_hosts(2)
    seed_old(hs[1])
    local dir, env = controller(hs)
    local pb = two_hosts_playbook(dir, hs)
    local before1, before2 = host_tree(hs[1], "/srv"), host_tree(hs[2], "/srv")
    local r = run(env, { pb, "-p", "local_dir=" .. dir, "--json" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[1].root .. "/srv/app/config"), "v2\n")
    eq(fs.read(hs[1].root .. "/srv/app/state"), "running\nstopped\n")
    eq(fs.read(hs[2].root .. "/srv/app/data"), "the data\n")
    eq(fs.read(dir .. "/copied"), "host2\n")
    has(r.stdout, '"event":"host"')
    -- the controller's journal names each effect's host and its id there
    local j = exec.run({ "sqlite3", dir .. "/state/journal.db",
      "SELECT op, coalesce(host, '-'), remote IS NOT NULL FROM effects ORDER BY id" }).stdout
    eq(j, "fs.write|old|1\nfs.mkdir|old|1\nexec.run|old|1\nfs.mkdir|new|1\nfs.write|new|1\nfs.write|-|0\n")
    -- each host's own journal has its effects, filed under this controller
    local a = exec.run({ "sqlite3", "-cmd", ".timeout 10000", hs[1].root .. "/var/lib/hrun/agent/agent.db",
      "SELECT op, status FROM effects ORDER BY id" }).stdout
    eq(a, "fs.write|done\nfs.mkdir|done\nexec.run|done\n")
    -- the portable build was uploaded under its hash
    local up = exec.run({ "sh", "-c", "ls " .. hs[1].root .. "/var/lib/hrun/agent | grep '^hrun-'" }).stdout
    ok(up:match("^hrun%-%x+\n$"), "the portable build there: " .. up)
    -- rolled back: every host as it was
    r = run(env, { "rollback", "--yes" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(host_tree(hs[1], "/srv"), before1, "old host after the rollback")
    eq(host_tree(hs[2], "/srv"), before2, "new host after the rollback")
    ok(not fs.exists(dir .. "/copied"), "the local write undone")
  end)

  it("rolls back a failed run on every host, newest first across hosts", function()
    local hs = ssh_hosts(2)
    seed_old(hs[1])
    local dir, env = controller(hs)
    local pb = two_hosts_playbook(dir, hs)
    local before1, before2 = host_tree(hs[1], "/srv"), host_tree(hs[2], "/srv")
    local r = run(env, { pb, "-p", "local_dir=" .. dir, "-p", "fail=true" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "the new host is not ready")
    eq(host_tree(hs[1], "/srv"), before1)
    eq(host_tree(hs[2], "/srv"), before2)
    -- the undo ran on the old host: its exec's undo took the line "stopped" off again
    eq(fs.read(hs[1].root .. "/srv/app/state"), "running\n")
  end)

  it("plans each host's writes with the host, its reads done there, nothing changed", function()
    local hs = ssh_hosts(2)
    seed_old(hs[1])
    local dir, env = controller(hs)
    local pb = two_hosts_playbook(dir, hs)
    local before1, before2 = host_tree(hs[1], "/srv"), host_tree(hs[2], "/srv")
    local r = run(env, { "plan", pb, "-p", "local_dir=" .. dir })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would fs.write /srv/app/config \"v2\\n\"  @old")
    has(r.stdout, "-v1")
    has(r.stdout, "+v2")
    has(r.stdout, "would fs.write /srv/app/data \"the data\\n\"  @new")
    eq(host_tree(hs[1], "/srv"), before1)
    eq(host_tree(hs[2], "/srv"), before2)
  end)

  it("uses the hrun installed on a host when its version is this one", function()
    local hs = ssh_hosts(1)
    hs[1]:install_hrun()
    local dir, env = controller(hs, { HRUN_PORTABLE = "/nonexistent" })
    local pb = writes_x(dir, hs[1].url, { name = "one" })
    local r = run(env, { "hosts", "check", pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "reachable (host1), root, hrun installed there")
    r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[1].root .. "/root/x"), "1")
    ok(not fs.exists(hs[1].root .. "/var/lib/hrun/agent/hrun-"), "nothing uploaded")
  end)
end)

describe("hrun's agent on a host", function()
  it("starts with one ssh, a master of its own when there is none, also after a master was killed", function()
    local hs = ssh_hosts(1)
    local wrap = tmpdir()
    local log = wrap .. "/ssh.log"
    fs.write(wrap .. "/ssh", string.format("#!/bin/sh\nprintf '%%s\\n' \"$*\" >> %s\nexec /usr/bin/ssh \"$@\"\n", log),
      { mode = "0755" })
    local dir, env = controller(hs, { PATH = wrap .. ":" .. sys.env("PATH") })
    local pb = writes_x(dir, hs[1].url)
    local function starts()
      local lines = {}
      for l in (fs.exists(log) and fs.read(log) or ""):gmatch("[^\n]+") do
        lines[#lines + 1] = l
      end
      fs.remove(log, { force = true })
      return lines
    end
    -- the first run there: the start finds no build, which is uploaded, then started
    local r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "uploaded now")
    eq(#starts(), 3, "the start, the upload, the agent")
    -- then one ssh start a run: the master of the run before is used
    r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    local s = starts()
    eq(#s, 1, table.concat(s, "\n"))
    has(s[1], "ControlMaster=auto")
    -- its master killed, its socket left behind: the next run's ssh replaces it
    local sock
    for _, e in ipairs(fs.list(dir .. "/state/ssh")) do
      sock = e:match("^%x+$") and (dir .. "/state/ssh/" .. e) or sock
    end
    local master = exec.run({ "pgrep", "-f", "^ssh: " .. dir .. "/state/ssh/" }, { check = false }).stdout
    ok(master:match("%d"), "a master runs: " .. master)
    exec.run({ "pkill", "-KILL", "-f", "^ssh: " .. dir .. "/state/ssh/" })
    ok(sock and fs.exists(sock), "its socket is left")
    fs.remove(hs[1].root .. "/root/x")
    r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[1].root .. "/root/x"), "1")
    eq(#starts(), 1)
    ok(exec.run({ "pgrep", "-f", "^ssh: " .. dir .. "/state/ssh/" }, { check = false }).ok, "a new master")
  end)

  it("runs only a program nobody but the login user could have put there, and says where it will not", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = writes_x(dir, hs[1].url)
    -- an hrun there that cannot even start: the portable build is used
    local _, broken = hs[1]:sh("printf '#!/bin/sh\\nexit 127\\n' > /usr/local/bin/hrun && " ..
      "chmod 755 /usr/local/bin/hrun")
    eq(broken, 0)
    local r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "hrun portable build, uploaded now")
    hs[1]:sh("rm -f /usr/local/bin/hrun")
    local agent = hs[1].root .. "/var/lib/hrun/agent"
    local name
    for _, e in ipairs(fs.list(agent)) do
      name = e:match("^hrun%-%x+$") or name
    end
    ok(name, "uploaded under its hash")
    -- a program under hrun's name that others could have written, or of another user:
    -- sent again over it, never run
    for _, how in ipairs({ "chmod 0777", "chown 1000:1000" }) do
      local _, code = hs[1]:sh(string.format("printf '#!/bin/sh\\ntouch /root/pwned\\n' > /var/lib/hrun/agent/%s " ..
        "&& chmod 0755 /var/lib/hrun/agent/%s && %s /var/lib/hrun/agent/%s", name, name, how, name))
      eq(code, 0)
      r = run(env, { "hosts", "check", pb })
      eq(r.code, 0, r.stdout .. r.stderr)
      has(r.stdout, "uploaded now")
      ok(not fs.exists(hs[1].root .. "/root/pwned"), how .. ": not run")
      local st = fs.stat(agent .. "/" .. name)
      eq(st.uid, 0, how)
      eq(st.mode & 18, 0, how)
    end
    -- a directory others may write to: refused, named, nothing changed
    local _, code = hs[1]:sh("mkdir -p /srv/shared && chmod 0777 /srv/shared && rm -f /root/x")
    eq(code, 0)
    local pb2 = writes_x(dir, hs[1].url, { name = "p2", agent_dir = "/srv/shared" })
    r = run(env, { pb2 })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "its agent_dir /srv/shared is a directory of uid 0, mode 777")
    ok(not fs.exists(hs[1].root .. "/root/x"), "nothing changed")
    eq(#fs.list(hs[1].root .. "/srv/shared"), 0, "nothing uploaded there")
    -- a sandboxed playbook does not choose it at all
    r = run(env, { "--sandbox", pb2 })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "hosts.h: agent_dir = \"/srv/shared\": a sandboxed playbook does not choose")
    ok(not fs.exists(hs[1].root .. "/root/x"), "nothing changed")
  end)
end)

describe("a host reached as a user with sudo", function()
  it("runs the agent as root through one sudoers rule, never a prompt, and stops its commands through sudo", function()
    local hs = ssh_hosts(1)
    hs[1]:install_hrun()
    local _, code = hs[1]:sh("useradd -m -s /bin/sh deploy && mkdir -p ~deploy/.ssh && " ..
      "cp /root/.ssh/authorized_keys ~deploy/.ssh/ && chown -R deploy: ~deploy/.ssh")
    eq(code, 0)
    local dir, env = controller(hs, { HRUN_PORTABLE = "/nonexistent" })
    local url = "ssh://deploy@127.0.0.1:" .. hs[1].port
    local function pb_with(name, host)
      return playbook_file(dir, name .. ".lua", string.format([[
return playbook { name = %q, hosts = { h = %s }, params = { hang = false },
  phase "p" { step "s" { on = "h", timeout = 3, run = function(ctx)
    fs.write("/root/x", "1")
    if ctx.params.hang then exec.run({ "sleep", "30" }) end
  end } } }
]], name, host))
    end
    local pb = pb_with("s", string.format("{ url = %q, sudo = true }", url))
    -- no sudoers rule: refused at once (sudo -n), saying what is missing; nothing changed
    local r = run(env, { pb })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "sudo asks for a password: hrun's agent needs a NOPASSWD sudoers rule")
    ok(not fs.exists(hs[1].root .. "/root/x"), "nothing changed")
    -- the one rule: the agent runs as root
    _, code = hs[1]:sh("echo 'deploy ALL=(root) NOPASSWD: /usr/local/bin/hrun agent --dir /var/lib/hrun/agent' " ..
      "> /etc/sudoers.d/hrun && chmod 440 /etc/sudoers.d/hrun")
    eq(code, 0)
    r = run(env, { "hosts", "check", pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "root, hrun installed there")
    r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[1].root .. "/root/x"), "1")
    -- a step that times out there: its command is stopped through sudo (the user may not
    -- signal root's agent; its sudo relays the signal)
    r = run(env, { pb, "-p", "hang=true" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "timed out after 3 s")
    local _, left = hs[1]:sh("pgrep -x sleep")
    ok(left ~= 0, "the command there was stopped")
    -- the same user without sudo cannot write there: the privilege is the rule's
    local plain = pb_with("plain", string.format("{ url = %q, agent_dir = \"/home/deploy/.hrun\" }", url))
    fs.remove(hs[1].root .. "/root/x")
    r = run(env, { plain })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "/root/x")
    ok(not fs.exists(hs[1].root .. "/root/x"), "not written")
    -- a sandboxed playbook does not choose sudo
    r = run(env, { "--sandbox", pb })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "hosts.h: sudo = true: a sandboxed playbook does not choose to run as root")
  end)
end)

describe("secrets and other hosts", function()
  it("cross as secrets both ways, their bytes never shown or journaled", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    fs.write(dir .. "/token", "TOPSECRET-4711\n")
    fs.write(dir .. "/quoted", 'QU"OTED\\SECRET-99\n') -- JSON escapes it: masked before escaping
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { h = "]] .. hs[1].url .. [[" },
  phase "p" { step "s" { run = function(ctx)
    local t = secrets.read("]] .. dir .. [[/token")
    hosts.h.fs.write("/root/token", t)                  -- sent: its bytes are written there
    local back = hosts.h.secrets.read("/root/token")    -- read there: a secret here too
    local q = secrets.read("]] .. dir .. [[/quoted")
    hosts.h.exec.run({ "sh", "-c", 'test -n "$TOKEN"' }, { env = { TOKEN = q }, undo = { "true" } })
    assert(secrets.is(back), "a secret came back")
    fs.write("]] .. dir .. [[/back", back)
    ctx.log("read back %s", tostring(back))
  end } } }
]])
    local plan = run(env, { "plan", pb, "-v" })
    eq(plan.code, 0, plan.stdout .. plan.stderr)
    ok(not plan.stdout:find("TOPSECRET", 1, true), "never shown in a plan: " .. plan.stdout)
    ok(plan.stdout:find("fs.write /root/token", 1, true), plan.stdout)
    ok(not fs.exists(hs[1].root .. "/root/token"), "a plan changes nothing there")
    local r = run(env, { pb, "-v" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[1].root .. "/root/token"), "TOPSECRET-4711") -- secrets.read drops the final newline
    eq(fs.read(dir .. "/back"), "TOPSECRET-4711")
    ok(not r.stdout:find("TOPSECRET", 1, true), "never shown")
    local j = exec.run({ "sqlite3", dir .. "/state/journal.db", "SELECT * FROM effects" }).stdout
    ok(not j:find("TOPSECRET", 1, true), "not in the controller's journal")
    local a = exec.run({ "sqlite3", "-cmd", ".timeout 10000", hs[1].root .. "/var/lib/hrun/agent/agent.db",
      "SELECT * FROM effects" }).stdout
    ok(not a:find("TOPSECRET", 1, true), "not in the host's journal")
    ok(not a:find("SECRET-99", 1, true), "not in the host's journal, escaped or not: " .. a)
    ok(not j:find("SECRET-99", 1, true), "not in the controller's journal")
    ok(not r.stdout:find("SECRET-99", 1, true), "never shown")
  end)
end)

describe("hosts that cannot be reached", function()
  it("fail the pre-flight, naming each host and why, before anything changes", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local down = "ssh://root@127.0.0.1:" .. free_port()
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p",
  hosts = { up = "]] .. hs[1].url .. [[", down = "]] .. down .. [[", nowhere = "ssh://root@nowhere.invalid" },
  phase "p" { step "s" { on = "up", run = function() fs.write("/root/touched", "1") end } } }
]])
    local r = run(env, { pb })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "pre-flight")
    has(r.stdout, "host 'down' (" .. down .. "): cannot connect: the connection is refused")
    has(r.stdout, "host 'nowhere' (ssh://root@nowhere.invalid): cannot connect: its name does not resolve (DNS)")
    ok(not fs.exists(hs[1].root .. "/root/touched"), "nothing ran on the host that is up")
    r = run(env, { "hosts", "check", pb })
    eq(r.code, 1)
    has(r.stdout, "down")
    has(r.stdout, "NOT reachable")
  end)

  it("refuse an unknown host key until `hrun hosts trust`, and a changed one with a clear message", function()
    local hs = ssh_hosts(1, { trust = false })
    local dir, env = controller(hs)
    local pb = writes_x(dir, hs[1].url)
    local r = run(env, { pb })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "its host key is not known: `hrun hosts trust NAME` first")
    ok(not fs.exists(hs[1].root .. "/root/x"))
    r = run(env, { "hosts", "trust", "h", pb })
    eq(r.code, 1, "no terminal, no --yes: not kept")
    has(r.stderr, "confirm with --yes")
    r = run(env, { "hosts", "trust", "h", pb, "--yes" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "SHA256:")
    has(r.stdout, "kept in " .. dir .. "/state/known_hosts")
    r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    -- a new key on the host: refused, and said so
    hs[1]:rekey()
    exec.run({ "sh", "-c", "ssh -F " .. hs.ssh_config .. " -O exit host1 2>/dev/null; " ..
      "for s in " .. dir .. "/state/ssh/*; do [ -S \"$s\" ] && ssh -o ControlPath=\"$s\" -O exit x 2>/dev/null; " ..
      "done; true" },
      { check = false })
    r = run(env, { pb })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "its host key has CHANGED")
    -- trusted again, the new key replaces the old one: runs go on
    local before = fs.read(dir .. "/state/known_hosts")
    r = run(env, { "hosts", "trust", "h", pb, "--yes" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local after = fs.read(dir .. "/state/known_hosts")
    ok(after ~= before, "the new key is kept")
    eq(select(2, after:gsub("\n", "")), select(2, before:gsub("\n", "")), "in place of the old one")
    r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
  end)
end)

describe("a step on another host that is stopped", function()
  local PB = [[
return playbook { name = "p", hosts = { h = "@URL@" },
  phase "p" { step "long" { on = "h", timeout = @T@, run = function()
    fs.write("/root/before", "1")
    exec.run({ "sh", "-c", "echo started > /root/started; exec sleep 61" }, { undo = { "rm", "-f", "/root/started" } })
  end } } }
]]

  local function sleeping(h)
    local out = h:sh("pgrep -f '^sleep 61' || true")
    return out:match("%d") ~= nil
  end

  local function statuses(dir)
    return exec.run({ "sqlite3", dir .. "/state/journal.db", "SELECT op || ' ' || status FROM effects ORDER BY id" })
      .stdout
  end

  it("by its timeout: the command there is stopped, its end journaled, the step rolled back", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = playbook_file(dir, "p.lua", (PB:gsub("@URL@", hs[1].url):gsub("@T@", "3")))
    local t0 = sys.clock()
    local r = run(env, { pb })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "timed out after 3 s")
    ok(sys.clock() - t0 < 40, "not the command's minute")
    ok(not sleeping(hs[1]), "the command there was stopped")
    eq(statuses(dir), "fs.write done\nexec.run failed\n")
    ok(not fs.exists(hs[1].root .. "/root/before"), "rolled back there")
  end)

  it("by Ctrl-C: the command there is stopped, its end journaled, the run rolled back", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = playbook_file(dir, "p.lua", (PB:gsub("@URL@", hs[1].url):gsub("@T@", "600")))
    local envs = {}
    for k, v in pairs(env) do
      envs[#envs + 1] = k .. "='" .. v:gsub("'", "'\\''") .. "'"
    end
    local b = background(string.format("env %s %s %s > %s/out 2>&1; echo $? > %s/code", table.concat(envs, " "),
      HRUN, pb, dir, dir))
    for _ = 1, 300 do
      if fs.exists(hs[1].root .. "/root/started") then
        break
      end
      sys.sleep(0.1)
    end
    ok(sleeping(hs[1]), "running there")
    exec.run({ "pkill", "-INT", "-f", "^" .. HRUN .. " " .. pb .. "$" })
    b.wait()
    local out = fs.read(dir .. "/out")
    eq(fs.read(dir .. "/code"), "130\n", out)
    ok(not sleeping(hs[1]), "the command there was stopped")
    eq(statuses(dir), "fs.write done\nexec.run failed\n", out)
    ok(not fs.exists(hs[1].root .. "/root/before"), "rolled back there: " .. out)
  end)
end)

describe("a rollback pointed at another machine", function()
  it("undoes nothing there: that host's agent has no record of the run's effects", function()
    local hs = ssh_hosts(2)
    local dir, env = controller(hs)
    local pb = writes_x(dir, hs[1].url)
    local r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    local _, code = hs[2]:sh("printf 'theirs' > /root/x")
    eq(code, 0)
    r = run(env, { "rollback", "--yes", "-H", "h=" .. hs[2].url })
    eq(r.code, 2, r.stdout .. r.stderr)
    has(r.stdout, "host 'h' (" .. hs[2].url .. ") has no record of this run's fs.write there")
    eq(fs.read(hs[2].root .. "/root/x"), "theirs", "the other machine's file is left alone")
    eq(fs.read(hs[1].root .. "/root/x"), "1")
    r = run(env, { "rollback", "--yes" })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(not fs.exists(hs[1].root .. "/root/x"), "undone on the machine the run changed")
    eq(fs.read(hs[2].root .. "/root/x"), "theirs")
  end)
end)

describe("a rollback with a host that cannot be reached", function()
  it("is incomplete, naming the host, and the next rollback finishes it (-H set the host)", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = writes_x(dir, "ssh://root@127.0.0.1:1")
    local r = run(env, { pb, "-H", "h=" .. hs[1].url })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[1].root .. "/root/x"), "1")
    hs[1]:cut()
    r = run(env, { "rollback", "--yes" })
    hs[1]:restore()
    eq(r.code, 2, r.stdout .. r.stderr)
    has(r.stdout, "on host 'h'")
    ok(fs.exists(hs[1].root .. "/root/x"), "not undone while the host was cut off")
    r = run(env, { "rollback", "--yes" })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(not fs.exists(hs[1].root .. "/root/x"), "undone once the host is back")
  end)
end)

describe("a channel that drops", function()
  it("after the agent is killed mid-step: the step fails as interrupted, and the rollback undoes it there", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { h = "]] .. hs[1].url .. [[" },
  phase "p" { step "s" { on = "h", run = function()
    fs.write("/root/first", "1")
    exec.run({ "sh", "-c", "touch /root/sleeping; sleep 4" }, { undo = { "rm", "-f", "/root/sleeping" } })
    fs.write("/root/second", "2")
  end } } }
]])
    local before = host_tree(hs[1], "/root")
    local killer = background("while [ ! -e " .. hs[1].root .. "/root/sleeping ]; do sleep 0.1; done; ssh -F " ..
      hs.ssh_config .. " host1 \"pkill -KILL -f 'agent --dir'\"")
    local r = run(env, { pb })
    killer:wait()
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "exec.run was interrupted on this host")
    eq(host_tree(hs[1], "/root"), before)
  end)

  it("over a network cut mid-step: connects again, the call answered once, the run goes on", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { h = "]] .. hs[1].url .. [[" },
  phase "p" { step "s" { on = "h", run = function()
    fs.write("/root/first", "1")
    exec.run({ "sh", "-c", "touch /root/sleeping; sleep 3; echo once >> /root/count" },
      { undo = { "rm", "-f", "/root/count", "/root/sleeping" } })
    fs.write("/root/second", "2")
  end } } }
]])
    local cutter = background("while [ ! -e " .. hs[1].root .. "/root/sleeping ]; do sleep 0.1; done; " ..
      FIXTURES .. "/hosts.sh cut " .. hs.dir .. " 1; sleep 8; " .. FIXTURES .. "/hosts.sh restore " .. hs.dir .. " 1")
    local r = run(env, { pb })
    cutter:wait()
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "the channel dropped")
    eq(fs.read(hs[1].root .. "/root/count"), "once\n")
    eq(fs.read(hs[1].root .. "/root/second"), "2")
  end)

  it("runs a detached step in a unit of its own that outlives the connection, and reattaches to it", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { h = "]] .. hs[1].url .. [[" },
  phase "p" { step "switch" { on = "h", detach = true, run = function()
    -- what a switch does to the connection: every ssh session on the host ends
    exec.run({ "sh", "-c", "sleep 1; pkill -KILL -f '[s]shd: root'; sleep 2; echo switched > /root/switched" },
      { undo = { "rm", "-f", "/root/switched" } })
  end } } }
]])
    local r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[1].root .. "/root/switched"), "switched\n")
    local a = exec.run({ "sqlite3", "-cmd", ".timeout 10000", hs[1].root .. "/var/lib/hrun/agent/agent.db",
      "SELECT op, status, unit IS NOT NULL FROM effects" }).stdout
    eq(a, "exec.run|done|1\n")
    r = run(env, { "rollback", "--yes" })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(not fs.exists(hs[1].root .. "/root/switched"))
  end)
end)

describe("the sandbox on other hosts", function()
  it("checks a host's calls against that host's capabilities before they leave", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { old = "]] .. hs[1].url .. [[" },
  capabilities = { "fs@old:/srv", "fs:]] .. dir .. [[" },
  phase "p" {
    step "allowed" { on = "old", run = function() fs.write("/srv/ok", "1") end },
    step "refused" { run = function() hosts.old.fs.write("/etc/evil", "x") end },
  } }
]])
    local r = run(env, { "--sandbox", pb })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "fs.write on host 'old' needs the capability 'fs@old:/etc/evil'")
    ok(not fs.exists(hs[1].root .. "/etc/evil"))
    ok(not fs.exists(hs[1].root .. "/srv/ok"), "rolled back")
  end)

  it("checks a host that is this machine (-H old=local) against this machine's and its own", function()
    local dir = tmpdir()
    local env = { HRUN_STATE_DIR = dir .. "/state" }
    fs.mkdir(dir .. "/here")
    fs.mkdir(dir .. "/old")
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { old = "ssh://root@127.0.0.1:1" },
  capabilities = { "fs:]] .. dir .. [[/here", "fs@old:]] .. dir .. [[/old" },
  params = { evil = "" },
  phase "p" {
    step "on old" { on = "old", run = function()
      fs.write("]] .. dir .. [[/old/a", "1")
      fs.write("]] .. dir .. [[/here/a", "1")
    end },
    step "routed" { run = function(ctx)
      hosts.old.fs.write("]] .. dir .. [[/old/b", "1")
      hosts.old.fs.write("]] .. dir .. [[/here/b", "1")
      fs.write("]] .. dir .. [[/here/c", "1")
      if ctx.params.evil ~= "" then hosts.old.fs.write(ctx.params.evil, "x") end
    end },
  } }
]])
    local r = run(env, { "--sandbox", pb, "-H", "old=local" })
    eq(r.code, 0, r.stdout .. r.stderr)
    for _, f in ipairs({ "old/a", "here/a", "old/b", "here/b", "here/c" }) do
      eq(fs.read(dir .. "/" .. f), "1", f)
    end
    r = run(env, { "--sandbox", pb, "-H", "old=local", "-p", "evil=" .. dir .. "/evil" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "fs.write on host 'old' needs the capability 'fs@old:" .. dir .. "/evil'")
    ok(not fs.exists(dir .. "/evil"))
  end)

  it("takes a host's paths as written here: this machine's symlinks say nothing of the host's", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    -- here dir/data/sub is a link out of dir/data; there it is a directory
    fs.mkdir(dir .. "/data")
    fs.mkdir(dir .. "/other")
    exec.run({ "ln", "-s", dir .. "/other", dir .. "/data/sub" })
    local _, code = hs[1]:sh("mkdir -p " .. dir .. "/data/sub")
    eq(code, 0)
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { old = "]] .. hs[1].url .. [[" },
  capabilities = { "fs@old:]] .. dir .. [[/data" },
  phase "p" { step "s" { on = "old", run = function() fs.write("]] .. dir .. [[/data/sub/x", "1") end } } }
]])
    local r = run(env, { "--sandbox", pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq((hs[1]:sh("cat " .. dir .. "/data/sub/x")), "1") -- its /tmp is its own
    ok(not fs.exists(dir .. "/other/x"), "nothing here")
  end)

  it("is checked again by the host's agent, where the host's symlinks are resolved", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local _, code = hs[1]:sh("mkdir -p /srv && ln -s /etc /srv/link")
    eq(code, 0)
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { old = "]] .. hs[1].url .. [[" },
  capabilities = { "fs@old:/srv" },
  phase "p" { step "through a link" { on = "old", run = function() fs.write("/srv/link/evil", "x") end } } }
]])
    local r = run(env, { "--sandbox", pb })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "fs.write on host 'old' needs the capability 'fs@old:/etc/evil'")
    ok(not fs.exists(hs[1].root .. "/etc/evil"))
    -- a plan is checked there too, before the agent reads what the write would change
    -- (a diff of a file beyond the link would show its content)
    _, code = hs[1]:sh("printf 'HOST-ONLY-4242\\n' > /etc/planned && chmod 600 /etc/planned")
    eq(code, 0)
    local pb2 = playbook_file(dir, "p2.lua", [[
return playbook { name = "p2", hosts = { old = "]] .. hs[1].url .. [[" },
  capabilities = { "fs@old:/srv" },
  phase "p" { step "a diff through a link" { on = "old", run = function()
    fs.write("/srv/link/planned", "x\n")
  end } } }
]])
    r = run(env, { "--sandbox", "--plan", pb2, "-v" })
    ok(r.code ~= 0, r.stdout .. r.stderr)
    has(r.stdout, "needs the capability 'fs@old:/etc/planned'")
    ok(not (r.stdout .. r.stderr):find("HOST-ONLY", 1, true), "its content never shown")
    eq(fs.read(hs[1].root .. "/etc/planned"), "HOST-ONLY-4242\n")
    -- a rollback's inverses are checked there again too: a link the step put in their
    -- path (kept) does not lead them out
    _, code = hs[1]:sh("mkdir -p /srv/area/data /srv/outside && printf 'precious\\n' > /srv/outside/victim1 && " ..
      "printf 'precious\\n' > /srv/outside/victim2 && ln -s /srv/outside /srv/area/data/L")
    eq(code, 0)
    local pb3 = playbook_file(dir, "p3.lua", [[
return playbook { name = "p3", hosts = { old = "]] .. hs[1].url .. [[" },
  capabilities = { "fs@old:/srv/area" },
  phase "p" { step "swap" { on = "old", run = function()
    local A = "/srv/area"
]] .. LINK_SWAP .. [[
  end } } }
]])
    r = run(env, { "--sandbox", pb3 })
    eq(r.code, 2, r.stdout .. r.stderr)
    has(r.stdout, "needs the capability 'fs@old:/srv/outside/victim")
    eq(fs.read(hs[1].root .. "/srv/outside/victim1"), "precious\n", "not removed through the link")
    eq(fs.read(hs[1].root .. "/srv/outside/victim2"), "precious\n", "not written through the link")
  end)
end)
