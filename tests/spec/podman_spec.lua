-- podman with real containers from an imported busybox image (no registry), its storage
-- and configuration in the test's own directory (tests/fixtures/podman-sandbox.sh).


local function trim(s)
  return (s:gsub("%s+$", ""))
end

-- A private podman with a web container running and a container that exited 7; returns
-- the environment for hrun, the web container's health URL.
local function sandbox()
  local env = podman_sandbox()
  local port = free_port()
  exec.run({ "podman", "run", "-d", "--init", "--name", "web", "localhost/hrun-busybox:test", "httpd", "-f", "-p",
    "127.0.0.1:" .. port, "-h", "/www" }, { env = env })
  exec.run({ "podman", "run", "--name", "failer", "localhost/hrun-busybox:test", "sh", "-c",
    "echo line1; echo line2; echo oops >&2; exit 7" }, { env = env, check = false })
  local url = "http://127.0.0.1:" .. port .. "/health"
  assert(http.wait(url, { timeout = 10, interval = 0.1 }))
  return env, url
end

describe("podman", function()
  it("lists and inspects containers as podman sees them", function()
    local env = sandbox()
    local ps = json.decode(hrun_chunk(env, "print(json.encode(podman.ps()))"))
    eq(#ps, 1)
    eq({ ps[1].name, ps[1].state, ps[1].image }, { "web", "running", "localhost/hrun-busybox:test" })
    local all = json.decode(hrun_chunk(env, "print(json.encode(podman.ps({ all = true })))"))
    eq({ all[1].name, all[1].state, all[1].exit_code, all[2].name }, { "failer", "exited", 7, "web" })
    local i = json.decode(hrun_chunk(env, [[local i = podman.inspect("web") i.raw = nil print(json.encode(i))]]))
    eq({ i.name, i.status, i.running, i.restarts }, { "web", "running", true, 0 })
    ok(i.pid > 0)
    local id = trim(exec.run({ "podman", "inspect", "--format", "{{.Id}}", "web" }, { env = env }).stdout)
    eq(i.id, id, "the id podman itself reports")
    has(hrun_chunk(env, 'print(podman.inspect("nope"))'), "nil\tpodman.inspect: nope: ")
    has(hrun_chunk(env, 'print(podman.inspect("nope"))'), "no such container nope\tENOENT")
  end)

  it("reads a container's logs, the last lines with tail", function()
    local env = sandbox()
    eq(hrun_chunk(env, 'print(podman.logs("failer"))'), "line1\nline2\n\toops\n\n")
    eq(hrun_chunk(env, 'local o, e = podman.logs("failer", { tail = 2 }) io.write(o, "|", e)'), "line2\n|oops\n")
  end)

  it("stops, starts and restarts, returning the state, and the URL follows", function()
    local env, url = sandbox()
    local out = hrun_chunk(env, string.format([[
      local s = podman.stop("web", { timeout = 2 })
      print(s.status, s.running, s.exit_code)
      print(select(3, http.get(%q)))
      s = podman.start("web")
      print(s.status, s.running)
      s = podman.restart("web", { timeout = 1 })
      print(s.status, s.running)
      print(podman.start("nope"))
    ]], url))
    local lines = {}
    for l in out:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    eq(lines[1], "exited\tfalse\t143", "stopped by SIGTERM through its init")
    eq(lines[2], "ECONNREFUSED")
    eq(lines[3], "running\ttrue")
    eq(lines[4], "running\ttrue")
    has(lines[5], "nil\tpodman.start: nope: ")
    has(lines[5], "\tENOENT")
    assert(http.wait(url, { timeout = 10, interval = 0.1 }))
  end)

  it("undoes a stop in a failed playbook; plans say a restart cannot be undone", function()
    local env, url = sandbox()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
return playbook { name = "containers", params = { fail = false },
  phase "p" {
    step "stop web" { run = function() assert(not podman.stop("web", { timeout = 1 }).running) end },
    step "work" { run = function(ctx) if ctx.params.fail then error("database migration failed") end end },
    step "restart" { irreversible = true, run = function() podman.restart("web", { timeout = 1 }) end },
  },
}]])
    local r = hrun_cmd({ "plan", p, "--state", d .. "/state" }, { env = env })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would podman.stop web {\"timeout\":1}  [undo: podman.start web]")
    has(r.stdout, "a restart cannot be undone")
    r = hrun_cmd({ p, "--state", d .. "/state", "-p", "fail=true" }, { env = env })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(json.decode(hrun_chunk(env, 'print(json.encode({ podman.inspect("web").running }))')), { true })
    assert(http.wait(url, { timeout = 10, interval = 0.1 }))
  end)
end)
