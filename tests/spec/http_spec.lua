-- http through libcurl against a real server on loopback (tests/fixtures/httpd.py):
-- status codes as values, JSON both ways, headers, redirects, timeouts, TLS with a
-- self-signed certificate made here by openssl, unix sockets, and http.wait.


local server = http_server

describe("http requests", function()
  it("returns status codes as values, with headers and bodies", function()
    local u = server()
    local r = assert(http.get(u .. "/status/503"))
    eq(r.status, 503)
    eq(r.body, "status 503\n")
    eq(r.headers["content-type"], "text/plain")
    eq(r.url, u .. "/status/503")
    ok(r.seconds >= 0 and r.seconds < 5)
    eq(http.get(u .. "/nothing").status, 404)
    local h = assert(http.head(u .. "/big/4096"))
    eq({ h.status, h.body, h.headers["content-length"] }, { 200, "", "4096" })
  end)

  it("sends headers and JSON, and decodes JSON answers", function()
    local u = server()
    local r = assert(http.get(u .. "/echo", { headers = { ["X-Api-Key"] = "k1", Accept = "application/json" } }))
    eq(r.json.method, "GET")
    eq(r.json.headers["x-api-key"], "k1")
    eq(r.headers["x-multi"], "a, b", "a repeated header joined")
    r = assert(http.post(u .. "/echo", { message = "backup done", priority = 3 }))
    eq(r.json.method, "POST")
    eq(json.decode(r.json.body), { message = "backup done", priority = 3 })
    eq(r.json.headers["content-type"], "application/json")
    r = assert(http.post(u .. "/echo", "plain text", { headers = { ["Content-Type"] = "text/plain" } }))
    eq({ r.json.body, r.json.headers["content-type"] }, { "plain text", "text/plain" })
    r = assert(http.request(u .. "/echo", { method = "PUT", body = "x" }))
    eq(r.json.method, "PUT")
    eq(http.get(u .. "/json").json, { services = { "immich", "nextcloud" }, ok = true })
    eq(http.get(u .. "/badjson").json, nil, "not JSON: no json field, the body is there")
    eq(http.get(u .. "/badjson").body, "{not json")
  end)

  it("follows redirects unless told not to, and bounds them", function()
    local u = server()
    local r = assert(http.get(u .. "/redirect/3"))
    eq({ r.status, r.url }, { 200, u .. "/status/200" })
    r = assert(http.get(u .. "/redirect/1", { follow = false }))
    eq({ r.status, r.headers.location }, { 302, "/status/200" })
    fails("EREDIRECT", "Maximum (3) redirects followed", http.get, u .. "/loop", { max_redirects = 3 })
  end)

  it("names what fails: refused, timed out, too big, a bad URL", function()
    local u = server()
    fails("ECONNREFUSED", "http.get: http://127.0.0.1:1/x: ", http.get, "http://127.0.0.1:1/x")
    local started = sys.now()
    fails("ETIMEDOUT", "http.get: " .. u .. "/slow/3: ", http.get, u .. "/slow/3", { timeout = 0.3 })
    ok(sys.now() - started < 2.5, "the timeout held")
    fails("E2BIG", "larger than max_body (100 bytes)", http.get, u .. "/big/1000", { max_body = 100 })
    fails("EURL", "ftp://127.0.0.1/x", http.get, "ftp://127.0.0.1/x")
    checkerr("bad argument #1 to 'http.get' (not a URL)", http.get, "")
    checkerr("unknown option 'timout'", http.get, u, { timout = 1 })
    checkerr("body and json exclude each other", http.request, u, { body = "x", json = {} })
    checkerr("bad header", http.get, u, { headers = { ["X-Evil"] = "a\r\nInjected: 1" } })
  end)

  it("verifies TLS by default; cacert trusts a certificate, insecure skips the check", function()
    need("openssl")
    local d = tmpdir()
    exec.run({ "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
      "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", d .. "/key.pem", "-out", d .. "/cert.pem" })
    local u = server({ "--tls", d .. "/cert.pem", d .. "/key.pem" }, "https")
    fails("ETLS", "http.get: " .. u .. "/status/200: ", http.get, u .. "/status/200")
    eq(http.get(u .. "/status/200", { cacert = d .. "/cert.pem" }).status, 200)
    eq(http.get(u .. "/status/204", { insecure = true }).status, 204)
  end)

  it("talks over a unix socket (as the podman API does)", function()
    local d = tmpdir()
    server({ "--unix", d .. "/api.sock" })
    local r = assert(http.get("http://localhost/echo", { unix_socket = d .. "/api.sock" }))
    eq({ r.status, r.json.path }, { 200, "/echo" })
    fails("ECONNREFUSED", "", http.get, "http://localhost/x", { unix_socket = d .. "/none.sock" })
  end)

  it("is a read for GET and HEAD, a write otherwise (plans record POSTs)", function()
    local u, d = server()
    local p = playbook_file(d, "pb.lua", string.format([[
return playbook { name = "notify",
  phase "p" {
    step "s" { run = function()
      assert(http.get(%q).status == 200)
      assert(http.post(%q, { text = "upgrade started" }).status == 200) -- a plan stands in
    end },
  },
}]], u .. "/status/200", u .. "/echo"))
    local r = hrun_cmd({ "plan", p, "--state", d .. "/state" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would http.post " .. u .. "/echo")
    ok(not r.stdout:find("would http.get"), "a GET is not a write")
  end)
end)

describe("http.wait", function()
  it("waits until the service answers as wanted", function()
    local u = server()
    local r = assert(http.wait(u .. "/ready/3", { interval = 0.05, timeout = 10 }))
    eq({ r.status, r.body, r.attempts }, { 200, "ready\n", 4 })
    r = assert(http.wait(u .. "/status/401", { status = { 200, 401 }, timeout = 2 }))
    eq(r.status, 401)
    r = assert(http.wait(u .. "/json", { match = '"immich"', timeout = 2 }))
    eq(r.attempts, 1)
  end)

  it("fails with the last status or error when the time is up", function()
    local u = server()
    -- the last attempt is at the end of the time given, and the message says the time taken
    local t0 = sys.now()
    local res, msg, code = http.wait(u .. "/status/502", { timeout = 1, interval = 0.4 })
    local took = sys.now() - t0
    eq({ res, code }, { nil, "ETIMEDOUT" })
    ok(took >= 1 and took < 1.5, "it waited the time given: " .. took)
    local where = u:gsub("%p", "%%%0")
    ok(msg:find("^http%.wait: " .. where .. "/status/502: not healthy after 1%.[01] s %(4 attempts%): status 502$"),
      msg)
    fails("ETIMEDOUT", "status 200, body not matching 'nextcloud'", http.wait, u .. "/status/200",
      { match = "nextcloud", timeout = 0.3, interval = 0.1 })
    fails("ETIMEDOUT", "not healthy after 0.3 s (4 attempts): http.request: http://127.0.0.1:1/: ", http.wait,
      "http://127.0.0.1:1/", { timeout = 0.3, interval = 0.1 })
  end)

  it("stops at the step's timeout", function()
    local u, d = server()
    local p = playbook_file(d, "pb.lua", string.format([[
return playbook { name = "wait",
  phase "p" { step "s" { timeout = 0.5, run = function() http.wait(%q, { timeout = 30, interval = 0.1 }) end } },
}]], u .. "/status/503"))
    local started = sys.now()
    local r = hrun_cmd({ p, "--state", d .. "/state" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "timed out")
    ok(sys.now() - started < 10, "stopped at the step's timeout, not http.wait's")
  end)
end)

describe("notify", function()
  it("posts to ntfy and webhooks, and --notify reports a run's end", function()
    local notify = require "hrun.notify"
    local u, d = server()
    assert(notify.ntfy(u .. "/inbox", "backup done", { title = "hwc-server", priority = 4,
      tags = { "floppy_disk" } }))
    assert(notify.webhook(u .. "/inbox", { event = "upgrade", ok = true }))
    fails("EHTTP", "notify.ntfy: " .. u .. "/status/500: status 500", notify.ntfy, u .. "/status/500", "x")
    local inbox = http.get(u .. "/inbox").json
    eq(inbox[1].body, "backup done")
    eq({ inbox[1].headers.title, inbox[1].headers.priority, inbox[1].headers.tags },
      { "hwc-server", "4", "floppy_disk" })
    eq(json.decode(inbox[2].body), { event = "upgrade", ok = true })
    -- a failing run, reported to an ntfy topic and as JSON
    local p = playbook_file(d, "pb.lua", [[
return playbook { name = "upgrade", phase "p" { step "s" { run = function() error("switch failed") end } } }]])
    local r = hrun_cmd({ p, "--state", d .. "/state", "--notify", u .. "/inbox",
      "--notify", "json:" .. u .. "/inbox" })
    eq(r.code, 1, r.stdout .. r.stderr)
    inbox = http.get(u .. "/inbox").json
    eq(#inbox, 4)
    has(inbox[3].body, sys.hostname() .. ": upgrade run 1 rolled-back (exit 1) in ")
    has(inbox[3].body, "switch failed")
    eq({ inbox[3].headers.title, inbox[3].headers.priority }, { "hrun: upgrade rolled-back", "4" })
    local ev = json.decode(inbox[4].body)
    eq({ ev.event, ev.playbook, ev.run, ev.status, ev.exit }, { "run-end", "upgrade", 1, "rolled-back", 1 })
    -- a notification that cannot be sent is reported; the run's status stays its own
    r = hrun_cmd({ p, "--state", d .. "/state", "--notify", "http://127.0.0.1:1/x" })
    eq(r.code, 1)
    has(r.stdout .. r.stderr, "--notify http://127.0.0.1:1/x: http.request: http://127.0.0.1:1/x: ")
  end)
end)
