-- service over sd-bus against a real systemd: PID 1 of a systemd-nspawn container
-- (tests/fixtures/container.sh), reached through DBUS_SYSTEM_BUS_ADDRESS, with units
-- that start, fail, start slowly and crash; hrun runs as a child with that address.

describe("service status", function()
  it("reads a unit's state, and says not-found for one that does not exist", function()
    local env = systemd_container()
    local st = json.decode(hrun_chunk(env, 'print(json.encode(service.status("hrun-web")))'))
    eq({ st.unit, st.load, st.active, st.sub, st.result },
      { "hrun-web.service", "loaded", "active", "running", "success" })
    ok(st.main_pid > 0, "a main pid")
    ok(math.abs(st.since - sys.now()) < 120, "since: seconds since the epoch")
    eq(st.restarts, 0)
    st = json.decode(hrun_chunk(env, 'print(json.encode(service.status("no-such-thing")))'))
    eq({ st.unit, st.load, st.active }, { "no-such-thing.service", "not-found", "inactive" })
    eq(hrun_chunk(env, 'print(service.is_enabled("hrun-web")) print(service.is_enabled("hrun-fail.service"))'),
      "true\tenabled\nfalse\tstatic\n")
    local list = json.decode(hrun_chunk(env, 'print(json.encode(service.list("hrun-*")))'))
    eq(#list, 1, "loaded units only: the web server")
    eq(list[1].unit, "hrun-web.service")
  end)

  it("names the bus it cannot reach", function()
    local out = hrun_chunk({ DBUS_SYSTEM_BUS_ADDRESS = "unix:path=/nonexistent/bus" }, 'print(service.status("x"))')
    eq(out, "nil\tservice.status: cannot reach systemd on the system bus (unix:path=/nonexistent/bus): "
      .. "No such file or directory\tENOBUS\n")
  end)
end)

describe("service jobs", function()
  it("stops and starts, waiting for the job, and the URL answers again", function()
    local env, url = systemd_container()
    local out = hrun_chunk(env, string.format([[
      local s = service.stop("hrun-web")
      print(s.job, s.active, s.sub)
      print(http.get(%q))
      s = service.start("hrun-web.service")
      print(s.job, s.active, s.sub)
      -- "active" is the process started, not yet listening: under ASan it takes a moment
      assert(http.wait(%q, { timeout = 20 }))
      print(http.get(%q).body)
      s = service.restart("hrun-web")
      print(s.job, s.active)
    ]], url, url, url))
    local lines = {}
    for l in out:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    eq(lines[1], "done\tinactive\tdead")
    has(lines[2], "ECONNREFUSED")
    eq(lines[3], "done\tactive\trunning")
    eq(lines[4], "ok")
    eq(lines[5], "done\tactive")
  end)

  it("reports a unit that fails, with the state it is left in, and lists it as failed", function()
    local env = systemd_container()
    eq(hrun_chunk(env, 'print(service.start("hrun-fail"))'),
      "nil\tservice.start: hrun-fail.service: the job failed (now failed, result exit-code)\tEUNIT\n")
    local failed = json.decode(hrun_chunk(env, 'print(json.encode(service.failed()))'))
    eq(#failed, 1)
    eq({ failed[1].unit, failed[1].active, failed[1].sub }, { "hrun-fail.service", "failed", "failed" })
    eq(hrun_chunk(env, 'print(service.start("no-such-thing"))'),
      "nil\tservice.start: no-such-thing.service: no such unit\tENOENT\n")
    checkerr("not a unit name", service.start, "../etc/passwd")
  end)

  it("waits for a slow unit, and gives up at the timeout", function()
    local env = systemd_container()
    local out = hrun_chunk(env, [[
      local t = sys.now()
      local s = service.start("hrun-slow")
      print(s.active, sys.now() - t >= 1.9)
      service.stop("hrun-slow")
      print(service.start("hrun-slow", { timeout = 0.5 }))
      print(service.start("hrun-slow", { wait = false }).job)
    ]])
    local lines = {}
    for l in out:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    eq(lines[1], "active\ttrue")
    eq(lines[2], "nil\tservice.start: hrun-slow.service: the job did not finish in 0.5 s\tETIMEDOUT")
    eq(lines[3], "nil", "wait = false: queued, no job result")
  end)

  it("counts the restarts of a crashing unit", function()
    local env = systemd_container()
    local st = json.decode(hrun_chunk(env, [[
      service.start("hrun-flaky", { wait = false })
      local st
      for _ = 1, 100 do -- until systemd restarted it twice (bounded: 10 s)
        st = service.status("hrun-flaky")
        if st.restarts >= 2 then break end
        sys.sleep(0.1)
      end
      print(json.encode(st))
      service.stop("hrun-flaky")
    ]]))
    ok(st.restarts >= 2, "restarted by systemd: " .. tostring(st.restarts))
  end)

  it("reloads a unit that can reload, and refuses one that is not running", function()
    local env = systemd_container()
    local out = hrun_chunk(env, [[
      print(service.reload("hrun-oneshot"))
      service.start("hrun-oneshot")
      local s = service.reload("hrun-oneshot")
      print(s.job, s.active)
    ]])
    eq(out, "nil\tservice.reload: hrun-oneshot.service: the job ended invalid (now inactive, result success)"
      .. "\tEUNIT\ndone\tactive\n")
  end)
end)

describe("service in playbooks", function()
  it("undoes a stop by starting the unit again, and plans say restart cannot be undone", function()
    local env, url = systemd_container()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
return playbook { name = "maintenance", params = { fail = false },
  phase "p" {
    step "stop web" { run = function() assert(service.stop("hrun-web").active == "inactive") end },
    step "work" { run = function(ctx) if ctx.params.fail then error("migration failed") end end },
    step "restart web" { irreversible = true, run = function() service.restart("hrun-web") end },
  },
}]])
    local r = hrun_cmd({ "plan", p, "--state", d .. "/state" }, { env = env })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would service.stop hrun-web  [undo: service.start hrun-web.service]")
    has(r.stdout, "a restart or reload cannot be undone")
    eq(http.get(url).status, 200, "the plan stopped nothing")
    r = hrun_cmd({ p, "--state", d .. "/state", "-p", "fail=true" }, { env = env })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(json.decode(hrun_chunk(env, 'print(json.encode(service.status("hrun-web")))')).active, "active")
    eq(http.get(url).body, "ok\n", "the URL answers again after the rollback")
    r = hrun_cmd({ p, "--state", d .. "/state" }, { env = env })
    eq(r.code, 0, r.stdout .. r.stderr)
  end)

  it("undoes a start that ended in failure: stopped, and its failed state forgotten", function()
    local env = systemd_container()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
return playbook { name = "start",
  phase "p" {
    step "start" { run = function() service.start("hrun-fail", { wait = false }) end },
    step "look" { run = function()
      sys.sleep(1)
      error("hrun-fail is " .. service.status("hrun-fail").active)
    end },
  },
}]])
    local r = hrun_cmd({ "plan", p, "--state", d .. "/state" }, { env = env })
    has(r.stdout, "[undo: service.stop hrun-fail.service; service._reset_failed hrun-fail.service]")
    r = hrun_cmd({ p, "--state", d .. "/state" }, { env = env })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "hrun-fail is failed")
    eq(json.decode(hrun_chunk(env, 'print(json.encode(service.status("hrun-fail")))')).active, "inactive")
  end)
end)
