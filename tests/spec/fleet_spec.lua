-- Fleets (issue 22): one playbook on the hosts of an inventory (`--hosts FILE`), in
-- rolling batches, each host's run journaled there and here, on real hosts over real
-- OpenSSH (tests/fixtures/hosts.sh: nspawn containers with their own roots and sshd).

local run = hrun_with

-- The environment for hrun reaching the fixture's hosts, and a state dir.
local function controller(hs)
  local dir = tmpdir()
  return dir, { HRUN_SSH_CONFIG = hs.ssh_config, HRUN_STATE_DIR = dir .. "/state", HRUN_SSH_SERVER_ALIVE = "1" }
end

-- An inventory naming each host hN (urls of the fixture's hosts), all in group "servers".
local function inventory(dir, hs, extra)
  local lines = {}
  for i, h in ipairs(hs) do
    lines[#lines + 1] = string.format("host %q { url = %q }", "h" .. i, h.url)
  end
  local names = {}
  for i = 1, #hs do
    names[#names + 1] = string.format("%q", "h" .. i)
  end
  lines[#lines + 1] = string.format("group \"servers\" { %s }", table.concat(names, ", "))
  lines[#lines + 1] = extra or ""
  local path = dir .. "/inventory.lua"
  assert(fs.write(path, table.concat(lines, "\n") .. "\n"))
  return path
end

-- A playbook of three steps on each host: a file written, a step that fails on the host
-- named by fail_on, a second file; fleet fields from `fields` (Lua text).
local function fleet_playbook(dir, fields)
  return playbook_file(dir, "fleet.lua", string.format([[
return playbook {
  name = "fleet", targets = "servers", %s
  params = { fail_on = "", tag = "v2" },
  phase "upgrade" {
    step "config" { run = function(ctx) fs.write("/srv/config", ctx.params.tag .. " " .. ctx.host .. "\n") end },
    step "check" { run = function(ctx)
      if ctx.params.fail_on == ctx.host then error("the service does not come back on " .. ctx.host) end
    end },
    step "marker" { run = function(ctx) fs.write("/srv/marker", sys.hostname() .. "\n") end },
  },
}
]], fields or ""))
end

-- Each host's /srv, as seen from here.
local function trees(hs)
  local out = {}
  for i, h in ipairs(hs) do
    out[i] = fs.exists(h.root .. "/srv") and tree(h.root .. "/srv") or {}
  end
  return out
end

-- The JSON events of a run's stdout.
local function events(stdout)
  local out = {}
  for line in stdout:gmatch("[^\n]+") do
    local ok, ev = pcall(json.decode, line)
    if ok and type(ev) == "table" then
      out[#out + 1] = ev
    end
  end
  return out
end

local function recap(evs)
  local by = {}
  for _, ev in ipairs(evs) do
    if ev.event == "fleet-recap" then
      for _, h in ipairs(ev.hosts) do
        by[h.host] = h.status
      end
    end
  end
  return by
end

describe("an inventory", function()
  it("is checked before anything runs: the file, line and field of each mistake", function()
    local dir = tmpdir()
    local inv = dir .. "/inv.lua"
    assert(fs.write(inv, table.concat({
      'host "web1" { url = "ssh://root@10.0.0.11" }',
      'host "web2" { url = "ssh://root@10.0.0.12", grups = { "web" } }',
      'host "db 1" { url = "ssh://root@10.0.0.21" }',
      'host "db2" { url = "ftp://10.0.0.22" }',
      'group "web" { "web1", "web3" }',
    }, "\n") .. "\n"))
    local pb = playbook_file(dir, "p.lua", [[
return playbook { name = "p", targets = "web", phase "p" { step "s" { run = function() end } } }
]])
    local r = run({ HRUN_STATE_DIR = dir .. "/state" }, { pb, "--hosts", inv })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, inv .. ":2: host 'web2': unknown field 'grups' (did you mean 'groups'?)")
    has(r.stderr, inv .. ":3: host: a host's name is a word")
    has(r.stderr, inv .. ":4: host 'db2': url:")
    has(r.stderr, inv .. ":5: group 'web': no host 'web3' in the inventory (did you mean 'web1'?)")
    ok(not fs.exists(dir .. "/state/fleet"), "nothing started")
    -- a playbook's mistakes in its fleet fields, with their lines
    local bad_pb = playbook_file(dir, "bad.lua", [[
return playbook { name = "p",
  serial = { 1, "150%" },
  strategy = "fast",
  on_host_failure = "panic",
  phase "p" { step "s" { run = function() end } } }
]])
    r = run({ HRUN_STATE_DIR = dir .. "/state" }, { "check", bad_pb })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "bad.lua:2: playbook: serial[2]: a batch is a number of hosts")
    has(r.stderr, "bad.lua:3: playbook: strategy must be \"linear\" or \"free\"")
    has(r.stderr, "bad.lua:4: playbook: on_host_failure must be")
    -- --limit naming nothing the inventory has
    assert(fs.write(inv, 'host "web1" { url = "ssh://root@10.0.0.11", groups = { "web" } }\n'))
    r = run({ HRUN_STATE_DIR = dir .. "/state" }, { pb, "--hosts", inv, "--limit", "web2" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "--limit web2: no host or group 'web2' in the inventory")
  end)
end)

describe("the live view of a fleet", function()
  it("folds the hosts that are not running into one line past a screenful", function()
    local out = hrun_chunk({}, [[
      local fleet = require("hrun.fleet")
      local ui = fleet.ui({ no_color = true }, { isatty = function() return true end,
        termsize = function() return 6, 80 end })
      local names = {}
      for i = 1, 10 do names[i] = "n" .. i end
      ui:event({ event = "fleet-start", playbook = "p", hosts = names, batches = 1, strategy = "linear", forks = 10 })
      ui:event({ event = "batch-start", batch = 1, hosts = names })
      for i = 1, 3 do ui:event({ event = "step-start", host = "n" .. i, phase = "p", step = "s" }) end
      for i = 4, 8 do ui:event({ event = "host-end", host = "n" .. i, status = "done" }) end
      io.stdout:write("\nEND\n")
    ]])
    -- the last drawing: after the last clear of the region
    local last = out:match(".*\27%[J(.-)\nEND\n$")
    ok(last, out)
    local lines = {}
    for l in last:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    eq(#lines, 4, last)
    ok(lines[1]:match("n1%s+p ▸ s"), lines[1])
    ok(lines[3]:match("n3%s+p ▸ s"), lines[3])
    has(lines[4], "… 7 more: 5 done, 2 waiting or ended otherwise")
  end)

  it("shows a line a host on a terminal, a failing host's error above them, and a recap", function()
    local hs = ssh_hosts(3)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs)
    local pb = playbook_file(dir, "live.lua", [[
return playbook { name = "live", targets = "servers", serial = 2, params = { fail_on = "" },
  phase "p" {
    step "one" { run = function(ctx) fs.write("/srv/one", ctx.host) end },
    step "wait" { run = function(ctx)
      sys.sleep(2)
      if ctx.params.fail_on == ctx.host then error("it does not come back") end
    end },
  },
}
]])
    local vars = {}
    for k, v in pairs(env) do
      vars[#vars + 1] = k .. "=" .. shq(v)
    end
    local t = terminal(string.format("env %s %s %s --hosts %s -p fail_on=h2; sleep 60", table.concat(vars, " "),
      shq(HRUN), shq(pb), shq(inv)))
    local screen = t:wait("▸ wait")
    has(screen, "h1  p ▸ wait")
    has(screen, "h2  p ▸ wait")
    screen = t:wait("exit 1")
    has(screen, "✗ h2 ▸ wait: ")
    has(screen, "it does not come back")
    has(screen, "✓ h1")
    has(screen, "↶ h2")
    has(screen, "· h3")
    ok(not screen:find("p ▸ wait", 1, true), "the live lines are gone at the end:\n" .. screen)
  end)
end)

describe("a fleet run", function()
  it("runs in rolling batches, every host a step at a time, each host's params its own", function()
    local hs = ssh_hosts(4)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs, 'group "canary" { "h1", vars = { tag = "v3" } }')
    local pb = fleet_playbook(dir, 'serial = { 1, "50%" },')
    local r = run(env, { pb, "--hosts", inv, "--json" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local evs = events(r.stdout)
    local batches = {}
    for _, ev in ipairs(evs) do
      if ev.event == "batch-start" then
        batches[#batches + 1] = table.concat(ev.hosts, ",")
      end
    end
    eq(table.concat(batches, " | "), "h1 | h2,h3 | h4")
    eq(fs.read(hs[1].root .. "/srv/config"), "v3 h1\n", "a group's vars")
    eq(fs.read(hs[2].root .. "/srv/config"), "v2 h2\n")
    eq(fs.read(hs[4].root .. "/srv/marker"), "host4\n", "on the host itself")
    -- linear: within batch 2, no host starts a step before both ended the one before
    local prev, ended, starts = { check = "config", marker = "check" }, {}, 0
    for _, ev in ipairs(evs) do
      if ev.host == "h2" or ev.host == "h3" then
        if ev.event == "step-end" then
          ended[ev.step] = (ended[ev.step] or 0) + 1
        elseif ev.event == "step-start" then
          starts = starts + 1
          if prev[ev.step] then
            eq(ended[prev[ev.step]], 2, ev.host .. " started " .. ev.step .. " before both ended " .. prev[ev.step])
          end
        end
      end
    end
    eq(starts, 6)
    local rc = recap(evs)
    for i = 1, 4 do
      eq(rc["h" .. i], "done")
    end
    -- `hrun show` has a line per host; --md a table
    local runs = run(env, { "runs", "--json" })
    local id = json.decode(runs.stdout:match("[^\n]+")).id
    local show = run(env, { "show", tostring(id) })
    eq(show.code, 0, show.stderr)
    has(show.stdout, "fleet run " .. id)
    has(show.stdout, "h3")
    local md = run(env, { "show", tostring(id), "--md" })
    has(md.stdout, "| host | batch | status | its run | error |")
    has(md.stdout, "| h4 | 3 | done |")
    -- then rolled back: every host as before
    local rb = run(env, { "rollback", tostring(id) })
    eq(rb.code, 0, rb.stdout .. rb.stderr)
    for i = 1, 4 do
      ok(not fs.exists(hs[i].root .. "/srv/config"), "h" .. i .. " rolled back")
    end
  end)

  it("runs on the hosts --limit names, and rolls back those --limit names", function()
    local hs = ssh_hosts(3)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs, 'group "edge" { "h3" }')
    local pb = fleet_playbook(dir)
    local r = run(env, { pb, "--hosts", inv, "--limit", "h1,edge", "--json" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local rc = recap(events(r.stdout))
    eq(rc.h1, "done")
    eq(rc.h3, "done")
    eq(rc.h2, nil, "not in the run")
    ok(not fs.exists(hs[2].root .. "/srv/config"), "h2 untouched")
    r = run(env, { "rollback", "--limit", "h3" })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(not fs.exists(hs[3].root .. "/srv/config"), "h3 rolled back")
    eq(fs.read(hs[1].root .. "/srv/config"), "v2 h1\n", "h1 left as it is")
    -- the fleet run is rolled back only once every host is
    local show = run(env, { "show", "--json" })
    eq(json.decode(show.stdout).status, "rollback-incomplete")
    r = run(env, { "rollback" })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(not fs.exists(hs[1].root .. "/srv/config"), "h1 rolled back")
    show = run(env, { "show", "--json" })
    eq(json.decode(show.stdout).status, "rolled-back")
  end)

  it("goes on past a failed host within max_fail, stops starting hosts over it, and exits non-zero", function()
    local hs = ssh_hosts(4)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs)
    -- 1 of 4 failed = 25%: within max_fail = 25
    local pb = fleet_playbook(dir, "serial = 2, max_fail = 25,")
    local before = trees(hs)
    local r = run(env, { pb, "--hosts", inv, "--json", "-p", "fail_on=h2" })
    eq(r.code, 1, r.stdout .. r.stderr)
    local rc = recap(events(r.stdout))
    eq(rc.h1, "done")
    eq(rc.h2, "rolled-back")
    eq(rc.h3, "done")
    eq(rc.h4, "done")
    eq(trees(hs)[2], before[2], "h2 as before")
    -- max_fail = 0 (the default): the next batch does not start
    pb = fleet_playbook(dir, "serial = 2,")
    for i = 1, 4 do
      hs[i]:sh("rm -rf /srv/config /srv/marker")
    end
    r = run(env, { pb, "--hosts", inv, "--json", "-p", "fail_on=h1" })
    eq(r.code, 1, r.stdout .. r.stderr)
    rc = recap(events(r.stdout))
    eq(rc.h1, "rolled-back")
    eq(rc.h2, "done", "its batch finishes")
    eq(rc.h3, "not started")
    eq(rc.h4, "not started")
    ok(not fs.exists(hs[3].root .. "/srv/config"), "h3 untouched")
  end)

  it("on_host_failure = rollback_all: every host that changed is rolled back", function()
    local hs = ssh_hosts(4)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs)
    local pb = fleet_playbook(dir, 'serial = { 1, 2 }, on_host_failure = "rollback_all",')
    local before = trees(hs)
    local r = run(env, { pb, "--hosts", inv, "--json", "-p", "fail_on=h3" })
    eq(r.code, 1, r.stdout .. r.stderr)
    local rc = recap(events(r.stdout))
    eq(rc.h1, "rolled-back", "the batch before")
    eq(rc.h2, "rolled-back", "the other host of its batch")
    eq(rc.h3, "rolled-back")
    eq(rc.h4, "not started")
    eq(trees(hs), before, "every host as before")
  end)

  it("on_host_failure = stop: the others finish their step and stop; resume goes on", function()
    local hs = ssh_hosts(2)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs)
    local pb = fleet_playbook(dir, 'on_host_failure = "stop",')
    local r = run(env, { pb, "--hosts", inv, "--json", "-p", "fail_on=h1" })
    eq(r.code, 1, r.stdout .. r.stderr)
    local rc = recap(events(r.stdout))
    eq(rc.h1, "rolled-back")
    eq(rc.h2, "stopped")
    eq(fs.read(hs[2].root .. "/srv/config"), "v2 h2\n", "its finished step stays")
    ok(not fs.exists(hs[2].root .. "/srv/marker"), "the next step did not start")
    -- resumed: the stopped host goes on; the failed one stays as its rollback left it
    r = run(env, { "resume", "--json" })
    eq(r.code, 1, r.stdout .. r.stderr)
    rc = recap(events(r.stdout))
    eq(rc.h2, "done")
    eq(rc.h1, "rolled-back")
    eq(fs.read(hs[2].root .. "/srv/marker"), "host2\n")
  end)

  it("plans each host's writes there, journals nothing and changes nothing", function()
    local hs = ssh_hosts(2)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs)
    local pb = fleet_playbook(dir)
    local before = trees(hs)
    local r = run(env, { "plan", pb, "--hosts", inv })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "[h1]     would fs.write /srv/config \"v2 h1\\n\"  @h1")
    has(r.stdout, "[h2]     would fs.write /srv/marker")
    eq(trees(hs), before, "nothing changed")
    local runs = run(env, { "runs" })
    has(runs.stdout, "no runs yet")
    ok(not fs.exists(dir .. "/state/fleet") or #fs.list(dir .. "/state/fleet") == 0, "nothing left")
  end)

  it("runs a run_once step on one host; the others skip it", function()
    local hs = ssh_hosts(3)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs)
    local pb = playbook_file(dir, "once.lua", [[
return playbook { name = "once", targets = "servers",
  phase "p" {
    step "migrate the database" { run_once = true, run = function(ctx) fs.write("/srv/migrated", ctx.host) end },
    step "each" { run = function(ctx) fs.write("/srv/each", ctx.host) end },
  },
}
]])
    local r = run(env, { pb, "--hosts", inv, "--json" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local ran = 0
    for i = 1, 3 do
      ran = ran + (fs.exists(hs[i].root .. "/srv/migrated") and 1 or 0)
      eq(fs.read(hs[i].root .. "/srv/each"), "h" .. i)
    end
    eq(ran, 1, "once")
    has(r.stdout, "run_once: ran on host 'h1'")
  end)

  it("refuses to start when a host cannot be reached or its key is unknown, naming each", function()
    local hs = ssh_hosts(2)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs, 'host "down" { url = "ssh://root@127.0.0.1:1", groups = { "servers" } }')
    local pb = fleet_playbook(dir)
    local before = trees(hs)
    local r = run(env, { pb, "--hosts", inv })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "[down] UNREACHABLE: cannot connect: the connection is refused")
    has(r.stdout, "not started")
    eq(trees(hs), before, "nothing ran anywhere")
    -- an unknown key: every such host named once, nothing run (a state of its own: no
    -- master connection of the run before)
    fs.write(hs.known_hosts, "")
    inv = inventory(dir, hs)
    env.HRUN_STATE_DIR = dir .. "/state2"
    r = run(env, { pb, "--hosts", inv })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "2 hosts cannot be trusted yet, nothing was run")
    has(r.stdout, "host 'h1'")
    has(r.stdout, "host 'h2'")
    eq(trees(hs), before, "nothing ran anywhere")
  end)

  it("after a SIGKILL of hrun mid-batch: resume finishes every host, rollback undoes every host", function()
    local hs = ssh_hosts(3)
    local dir, env = controller(hs)
    local inv = inventory(dir, hs)
    local pb = playbook_file(dir, "slow.lua", [[
return playbook { name = "slow", targets = "servers", serial = 2,
  phase "p" {
    step "one" { run = function(ctx) fs.write("/srv/one", ctx.host) end },
    step "wait" { run = function() sys.sleep(2) end },
    step "two" { run = function(ctx) fs.write("/srv/two", ctx.host) end },
  },
}
]])
    local before = trees(hs)
    local env2 = {}
    for k, v in pairs(env) do
      env2[k] = v
    end
    local bg = exec.run({ "sh", "-c", string.format("cd %s && %s %s --hosts %s > %s/out 2>&1 & echo $!", dir,
      HRUN, pb, inv, dir) }, { env = env2 })
    local pid = bg.stdout:gsub("%s+$", "")
    for _ = 1, 100 do
      if fs.exists(hs[1].root .. "/srv/one") and fs.exists(hs[2].root .. "/srv/one") then
        break
      end
      sys.sleep(0.1)
    end
    exec.run({ "kill", "-KILL", pid })
    -- its members stop at their next step (their fleet is gone)
    for _ = 1, 100 do
      if not exec.run({ "pgrep", "-f", "fleet-member" }, { check = false }).ok then
        break
      end
      sys.sleep(0.1)
    end
    ok(not fs.exists(hs[1].root .. "/srv/two"), "cut before its last step")
    local r = run(env, { "resume", "--json" })
    eq(r.code, 0, r.stdout .. r.stderr)
    for i = 1, 3 do
      eq(fs.read(hs[i].root .. "/srv/two"), "h" .. i)
    end
    r = run(env, { "rollback" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(trees(hs), before, "every host as before")
  end)
end)

describe("a fleet run whose process was killed while its hosts' runs go on", function()
  it("is neither resumed nor rolled back beside them: refused, naming each, changing nothing", function()
    local d = tmpdir()
    fs.write(d .. "/inv.lua", 'host "a" { url = "local", groups = { "g" } }\n' ..
      'host "b" { url = "local", groups = { "g" } }\n')
    local pb = playbook_file(d, "pb.lua", [[
return playbook { name = "fl", targets = "g", params = { dir = "" },
  phase "p" {
    step "one" { run = function(ctx) fs.write(ctx.params.dir .. "/" .. ctx.host .. ".1", "x") end },
    step "slow" { run = function(ctx)
      fs.write(ctx.params.dir .. "/" .. ctx.host .. ".started", "")
      while not fs.exists(ctx.params.dir .. "/go") do sys.sleep(0.05) end
    end },
    step "two" { run = function(ctx) fs.write(ctx.params.dir .. "/" .. ctx.host .. ".2", "x") end },
  } }]])
    local data = d .. "/data"
    fs.mkdir(data)
    local bg = exec.run({ "sh", "-c", string.format("cd %s && %s %s --hosts inv.lua --state state -p dir=%s " ..
      "> out 2>&1 & echo $!", d, HRUN, pb, data) })
    local pid = bg.stdout:gsub("%s+$", "")
    for _ = 1, 200 do
      if fs.exists(data .. "/a.started") and fs.exists(data .. "/b.started") then
        break
      end
      sys.sleep(0.05)
    end
    exec.run({ "kill", "-KILL", pid }) -- the fleet's process only: its hosts' runs go on
    after(function()
      fs.write(data .. "/go", "")
    end)
    local shown = hrun_cmd({ "show", "1", "--state", d .. "/state" }).stdout
    for _, cmd in ipairs({ "resume", "rollback" }) do
      local r = hrun_cmd({ cmd, "--state", d .. "/state" })
      eq(r.code, 4, r.stdout .. r.stderr)
      has(r.stderr, "host 'a' (pid ")
      has(r.stderr, "host 'b' (pid ")
      eq(hrun_cmd({ "show", "1", "--state", d .. "/state" }).stdout, shown, cmd .. " changed nothing")
    end
    -- once they stopped at their next step, the fleet resumes — from another directory
    fs.write(data .. "/go", "")
    for _ = 1, 200 do
      if not exec.run({ "pgrep", "-f", "fleet-member " .. d }, { check = false }).ok then
        break
      end
      sys.sleep(0.05)
    end
    local r = exec.run({ HRUN, "resume", "--state", d .. "/state" }, { cwd = "/", check = false })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(fs.exists(data .. "/a.2") and fs.exists(data .. "/b.2"), "both hosts finished")
  end)
end)
