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

local function run(env, args, opts)
  opts = opts or {}
  opts.env = env
  opts.timeout = opts.timeout or 240
  return hrun_cmd(args, opts)
end

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
    local pb = playbook_file(dir, "one.lua", [[
return playbook { name = "one", hosts = { h = "]] .. hs[1].url .. [[" },
  phase "p" { step "s" { on = "h", run = function() fs.write("/root/x", "1") end } } }
]])
    local r = run(env, { "hosts", "check", pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "reachable (host1), root, hrun installed there")
    r = run(env, { pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(hs[1].root .. "/root/x"), "1")
    ok(not fs.exists(hs[1].root .. "/var/lib/hrun/agent/hrun-"), "nothing uploaded")
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
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { h = "]] .. hs[1].url .. [[" },
  phase "p" { step "s" { on = "h", run = function() fs.write("/root/x", "1") end } } }
]])
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
  end)
end)

describe("a rollback with a host that cannot be reached", function()
  it("is incomplete, naming the host, and the next rollback finishes it (-H set the host)", function()
    local hs = ssh_hosts(1)
    local dir, env = controller(hs)
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", hosts = { h = "ssh://root@127.0.0.1:1" },
  phase "p" { step "s" { on = "h", run = function() fs.write("/root/x", "1") end } } }
]])
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
  end)
end)
