-- Issue 19, "shared playbooks must do nothing they did not declare": net and git scopes
-- reach no further than they say. Unix sockets need net:unix:PATH; every redirect hop is
-- checked before it is followed; URL paths are compared decoded and without dot
-- segments; a repository's own config, its directories and its remote's URL stay in
-- scope. Each refusal is checked for its message and for what it kept from being
-- reached (a server's request log stays empty, a file unchanged).

-- A fixture server that logs each request it gets: its URL and the log's path.
local function logged_server(args)
  local d = tmpdir()
  local log = d .. "/requests"
  fs.write(log, "")
  local argv = { "--log", log }
  for _, a in ipairs(args or {}) do
    argv[#argv + 1] = a
  end
  return (http_server(argv)), log
end

-- runs a playbook declaring caps whose one step runs body (source of a function(ctx));
-- params are passed as -p name=value; --sandbox unless open.
local function run(caps, body, params, open)
  local d = tmpdir()
  local names = {}
  for k in pairs(params or {}) do
    names[#names + 1] = k .. ' = ""'
  end
  local p = sandboxed_playbook(d, { caps = caps, name = "scoped", params = table.concat(names, ", "),
    steps = string.format('    step "s" { run = %s },', body) })
  local args = { p, "--state", d .. "/state" }
  if not open then
    args[#args + 1] = "--sandbox"
  end
  for k, v in pairs(params or {}) do
    args[#args + 1] = "-p"
    args[#args + 1] = k .. "=" .. v
  end
  return hrun_cmd(args)
end

local function refused(r, need, what)
  eq(r.code, 1, (what or need) .. ": " .. r.stdout .. r.stderr)
  has(r.stdout, need, what)
end

local GET = [[function(ctx) assert(http.get(ctx.params.url, { timeout = 5 })) end]]

describe("net:unix", function()
  it("a unix socket needs net:unix:PATH; a net:http scope never covers one", function()
    local d = tmpdir()
    fs.mkdir(d .. "/run")
    fs.mkdir(d .. "/other")
    local _, log = logged_server({ "--unix", d .. "/run/api.sock" })
    local _, other = logged_server({ "--unix", d .. "/other/api.sock" })
    exec.run({ "ln", "-s", d .. "/other/api.sock", d .. "/run/link.sock" })
    local body = [[function(ctx)
      assert(http.get("http://localhost/echo", { unix_socket = ctx.params.sock }).status == 200)
    end]]
    local caps = { "net:http://localhost", "net:unix:" .. d .. "/run" }
    eq(run(caps, body, { sock = d .. "/run/api.sock" }).code, 0)
    eq(fs.read(log), "GET /echo\n")
    for _, sock in ipairs({ d .. "/other/api.sock", d .. "/run/link.sock", d .. "/run/../other/api.sock" }) do
      refused(run(caps, body, { sock = sock }), "sandbox: http.get needs the capability 'net:unix:" .. d ..
        "/other/api.sock', which the playbook does not declare (it declares: net:http://localhost, net:unix:" ..
        d .. "/run)", sock)
    end
    refused(run({ "net:http://localhost" }, body, { sock = d .. "/run/api.sock" }),
      "sandbox: http.get needs the capability 'net:unix:" .. d .. "/run/api.sock'")
    eq(fs.read(log), "GET /echo\n", "nothing more reached the socket")
    eq(fs.read(other), "", "nothing reached the other socket")
    -- an unscoped net covers every socket, as it covers every URL
    eq(run({ "net" }, body, { sock = d .. "/other/api.sock" }).code, 0)
    eq(fs.read(other), "GET /echo\n")
  end)

  it("reads unix_socket as the request does: no __index shows the check another socket", function()
    local d = tmpdir()
    local _, other = logged_server({ "--unix", d .. "/api.sock" })
    local r = run({ "net:unix:" .. d .. "/none.sock" }, [[function(ctx)
      http.request("http://localhost/echo", setmetatable({}, { __index = { unix_socket = ctx.params.sock } }))
    end]], { sock = d .. "/api.sock" })
    refused(r, "sandbox: http.request needs the capability 'net:http://localhost'")
    eq(fs.read(other), "")
  end)

  it("takes an absolute path", function()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
return playbook { name = "u", capabilities = { "net:unix:run/api.sock" },
  phase "p" { step "s" { run = function() end } } }]])
    local r = hrun_cmd({ "check", p, "--state", d .. "/state" })
    eq(r.code, 3)
    has(r.stderr, "capabilities[1]: 'net:unix:run/api.sock': net:unix takes a socket's absolute path " ..
      "(net:unix:/run/podman/podman.sock)")
  end)
end)

describe("redirects", function()
  it("are checked hop by hop before they are followed", function()
    local a, alog = logged_server()
    local b, blog = logged_server()
    local caps = { "net:" .. a .. "/to" }
    local r = run(caps, GET, { url = a .. "/to?url=" .. b .. "/status/200" })
    refused(r, "sandbox: http.get's redirect to " .. b .. "/status/200 needs the capability 'net:" .. b ..
      "', which the playbook does not declare (it declares: net:" .. a .. "/to)")
    eq(fs.read(blog), "", "the other server was never reached")
    -- the same server, outside the scope's path
    r = run(caps, GET, { url = a .. "/to?url=/status/200" })
    refused(r, "sandbox: http.get's redirect to " .. a .. "/status/200 needs the capability 'net:" .. a .. "'")
    eq(fs.read(alog), "GET /to?url=" .. b .. "/status/200\nGET /to?url=/status/200\n")
    -- in scope, every hop is followed
    eq(run({ "net:" .. a }, GET, { url = a .. "/redirect/3" }).code, 0)
    -- a 307 keeps the method: still checked
    r = run(caps, [[function(ctx) http.post(ctx.params.url, "x") end]],
      { url = a .. "/to?code=307&url=" .. b .. "/echo" })
    refused(r, "sandbox: http.post's redirect to " .. b .. "/echo needs the capability 'net:" .. b .. "'")
    eq(fs.read(blog), "")
    -- http.wait stops at a refused hop
    r = run(caps, [[function(ctx) http.wait(ctx.params.url, { timeout = 5, interval = 0.1 }) end]],
      { url = a .. "/to?url=" .. b .. "/status/200" })
    refused(r, "sandbox: http.request's redirect to " .. b .. "/status/200 needs the capability 'net:" .. b .. "'")
    eq(fs.read(blog), "")
    -- outside the sandbox the same playbook follows it
    eq(run(caps, GET, { url = a .. "/to?url=" .. b .. "/status/200" }, true).code, 0)
    eq(fs.read(blog), "GET /status/200\n")
  end)

  it("are recorded by a plan", function()
    local a = logged_server()
    local b, blog = logged_server()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", string.format([[
return playbook { name = "plan", capabilities = { "net:%s" },
  phase "p" { step "s" { run = function() http.get(%q) end } } }]], a, a .. "/to?url=" .. b .. "/status/200"))
    local r = hrun_cmd({ "plan", p, "--state", d .. "/state" })
    has(r.stdout, "NOT DECLARED net:" .. b .. " (http.get's redirect to " .. b .. "/status/200)")
    eq(fs.read(blog), "GET /status/200\n", "a plan audits: it refuses nothing")
  end)

  it("follow only http and https, keep max_redirects, and take no credentials to another origin", function()
    local a = http_server()
    local b = http_server()
    for _, to in ipairs({ "ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://127.0.0.1/x" }) do
      fails("EREDIRECT", "http.get: " .. a .. "/to?url=" .. to .. ": a redirect to " .. to ..
        ": only http and https are followed", http.get, a .. "/to?url=" .. to)
    end
    fails("EREDIRECT", "Maximum (2) redirects followed", http.get, a .. "/redirect/3", { max_redirects = 2 })
    fails("EREDIRECT", "Maximum (0) redirects followed", http.get, a .. "/redirect/1", { max_redirects = 0 })
    eq(http.get(a .. "/redirect/3", { max_redirects = 3 }).status, 200)
    local headers = { Authorization = "Bearer t0ken", Cookie = "c=1", ["X-Keep"] = "k" }
    local r = assert(http.get(a .. "/to?url=" .. b .. "/echo", { headers = headers }))
    eq(r.url, b .. "/echo")
    eq({ r.json.headers.authorization, r.json.headers.cookie, r.json.headers["x-keep"] }, { nil, nil, "k" })
    r = assert(http.get(a .. "/to?url=/echo", { headers = headers }))
    eq({ r.url, r.json.headers.authorization, r.json.headers.cookie }, { a .. "/echo", "Bearer t0ken", "c=1" })
    -- the method after a redirect: 302 and 303 make a POST a GET, 307 keeps it and its body
    r = assert(http.post(a .. "/to?url=/echo", "x"))
    eq({ r.json.method, r.json.body }, { "GET", "" })
    r = assert(http.post(a .. "/to?code=307&url=/echo", "x"))
    eq({ r.json.method, r.json.body }, { "POST", "x" })
    r = assert(http.request(a .. "/to?code=303&url=/echo", { method = "PUT", body = "x" }))
    eq(r.json.method, "GET")
    r = assert(http.request(a .. "/to?code=301&url=/echo", { method = "PUT", body = "x" }))
    eq({ r.json.method, r.json.body }, { "PUT", "x" })
    eq(http.get(a .. "/to?url=/echo", { follow = false }).status, 302)
  end)
end)

describe("URL paths", function()
  it("are compared decoded and without dot segments, as a server may read them", function()
    local a, alog = logged_server()
    local caps = { "net:" .. a .. "/api" }
    for _, path in ipairs({ "/api/../status/200", "/api/%2e%2e/status/200", "/api/%2E%2E/status/200",
      "/api/.%2e/status/200", "/api/..;/status/200", "/api%2f..%2fstatus/200", "/api%2F%2E%2E%2Fstatus/200",
      "/api/x/..%2f..%2f..%2fstatus/200", "/api/x\\..\\..\\status/200", "/api/%252e%252e/status/200", "/apix",
      "/Api", "/api/%00" }) do
      local r = run(caps, GET, { url = a .. path })
      eq(r.code, 1, path .. ": " .. r.stdout)
      has(r.stdout, "sandbox: http.get needs the capability 'net:", path)
    end
    eq(fs.read(alog), "", "none of them was sent")
    for _, path in ipairs({ "/api", "/api/", "/api/x", "/api/x/../y", "/api/%7Ex", "/api#/../../status/200",
      "/api?x=/../../status" }) do
      eq(run(caps, GET, { url = a .. path }).code, 0, path)
    end
    eq(fs.read(alog),
      "GET /api\nGET /api/\nGET /api/x\nGET /api/y\nGET /api/%7Ex\nGET /api\nGET /api?x=/../../status\n")
  end)

  it("are read with the host libcurl connects to: userinfo, backslashes, IPv6, spaces", function()
    local a = logged_server()
    local b, blog = logged_server()
    local caps = { "net:" .. a }
    local ha, hb = a:match("^http://(.*)$"), b:match("^http://(.*)$")
    local pb = hb:match(":(%d+)$")
    refused(run(caps, GET, { url = "http://" .. ha .. "@localhost:" .. pb .. "/status/200" }),
      "sandbox: http.get needs the capability 'net:http://localhost:" .. pb .. "'")
    local url = "http://" .. ha .. "\\@" .. hb .. "/status/200"
    refused(run(caps, GET, { url = url }), "sandbox: http.get needs the capability 'net:" .. url .. "'")
    refused(run(caps, GET, { url = "http://[::1]:" .. pb .. "/status/200" }),
      "sandbox: http.get needs the capability 'net:http://[::1]:" .. pb .. "'")
    refused(run(caps, GET, { url = b .. "/status/200#" .. a }), "needs the capability 'net:" .. b .. "'")
    eq(fs.read(blog), "")
    refused(run(caps, GET, { url = a .. "/a b" }), "sandbox: http.get needs the capability 'net:" .. a .. "/a b'")
    fails("EURL", "http.get: " .. a .. "/a b: ", http.get, a .. "/a b")
    checkerr("bad argument #1 to 'http.get' (string (a URL) expected, got number)", http.get, 80)
    checkerr("bad argument #1 to 'http.wait' (string (a URL) expected, got number)", http.wait, 80)
    fails("EURL", "http.get: 127.0.0.1:1/x: ", http.get, "127.0.0.1:1/x")
    refused(run({ "net:" .. a }, [[function() http.get(8080) end]]),
      "bad argument #1 to 'http.get' (string (a URL) expected, got number)")
  end)
end)

-- git run through the CLI (the test's own hand), with an identity of its own
local function git(dir, ...)
  local argv = { "git", "-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.org" }
  for _, a in ipairs({ ... }) do
    argv[#argv + 1] = a
  end
  return exec.run(argv).stdout
end

local function repo(dir)
  need("git")
  exec.run({ "git", "init", "-q", "-b", "main", dir })
  fs.write(dir .. "/f", "1")
  git(dir, "add", "f")
  git(dir, "commit", "-qm", "one")
  return dir
end

describe("git scopes", function()
  it("refuse a repository whose own config could send git outside the scope", function()
    local d = tmpdir()
    local r = repo(d .. "/scope/repo")
    local outside = repo(d .. "/outside")
    local status = [[function(ctx) git.status(ctx.params.repo) end]]
    local commit = [[function(ctx)
      fs.write(ctx.params.repo .. "/f", "2")
      git.commit(ctx.params.repo, "two", { all = true })
    end]]
    local caps = { "git:" .. d .. "/scope", "fs:" .. d .. "/scope" }
    eq(run(caps, status, { repo = r }).code, 0)
    for _, kv in ipairs({ { "core.hooksPath", outside }, { "core.fsmonitor", outside .. "/monitor" },
      { "core.sshCommand", "sh " .. outside .. "/x" }, { "include.path", outside .. "/config" },
      { "includeIf.gitdir:" .. r .. "/.git.path", outside .. "/config" } }) do
      git(r, "config", kv[1], kv[2])
      for _, body in ipairs({ status, commit }) do
        local res = run(caps, body, { repo = r })
        refused(res, "the repository's config sets " ..
          kv[1]:gsub("^([^.]*)", string.lower):gsub("([^.]*)$", string.lower) .. " = " .. kv[2] ..
          ", which could send git outside the playbook's scope", kv[1])
      end
      git(r, "config", "--unset", kv[1])
    end
    -- core.worktree: the work tree it names is outside the capability
    git(r, "config", "core.worktree", outside)
    refused(run(caps, commit, { repo = r }), "sandbox: git.commit: the repository " .. r .. " opens (" ..
      outside .. ") needs the capability 'git:" .. outside .. "'")
    git(r, "config", "--unset", "core.worktree")
    eq(fs.read(outside .. "/f"), "1")
    eq(git(outside, "log", "--format=%s"), "one\n", "no commit outside")
    eq(git(r, "log", "--format=%s"), "one\n", "no commit inside either: every refusal came first")
    -- outside the sandbox the config is git's own business
    git(r, "config", "core.hooksPath", outside)
    eq(run(caps, status, { repo = r }, true).code, 0)
  end)

  it("run no hooks (libgit2 has none to run)", function()
    local d = tmpdir()
    local r = repo(d .. "/scope/repo")
    for _, hook in ipairs({ "pre-commit", "post-commit", "commit-msg" }) do
      fs.write(r .. "/.git/hooks/" .. hook, "#!/bin/sh\ntouch " .. d .. "/ran-" .. hook .. "\n")
      exec.run({ "chmod", "+x", r .. "/.git/hooks/" .. hook })
    end
    local res = run({ "git:" .. d .. "/scope", "fs:" .. d .. "/scope" }, [[function(ctx)
      fs.write(ctx.params.repo .. "/f", "2")
      git.commit(ctx.params.repo, "two", { all = true })
    end]], { repo = r })
    eq(res.code, 0, res.stdout)
    eq(git(r, "log", "--format=%s"), "two\none\n")
    for _, hook in ipairs({ "pre-commit", "post-commit", "commit-msg" }) do
      eq(fs.exists(d .. "/ran-" .. hook), false, hook)
    end
  end)

  it("check the repository a directory opens: one above the scope, one a .git file points at", function()
    local d = tmpdir()
    local top = repo(d .. "/top")
    fs.mkdir(top .. "/sub")
    local res = run({ "git:" .. top .. "/sub", "fs:" .. top .. "/sub" }, [[function(ctx)
      fs.write(ctx.params.dir .. "/new", "x")
      git.commit(ctx.params.dir, "escaped", { all = true })
    end]], { dir = top .. "/sub" })
    refused(res, "sandbox: git.commit: the repository " .. top .. "/sub opens (" .. top ..
      ") needs the capability 'git:" .. top .. "'")
    eq(git(top, "log", "--format=%s"), "one\n")
    local outside = repo(d .. "/outside")
    fs.mkdir(d .. "/scope/wt", { parents = true })
    fs.write(d .. "/scope/wt/.git", "gitdir: " .. outside .. "/.git\n")
    res = run({ "git:" .. d .. "/scope" }, [[function(ctx) git.log(ctx.params.dir) end]], { dir = d .. "/scope/wt" })
    refused(res, "sandbox: git.log: the repository " .. d .. "/scope/wt opens (" .. outside ..
      "/.git) needs the capability 'git:" .. outside .. "/.git'")
  end)

  it("take a repository object's path as the target", function()
    local d = tmpdir()
    local outside = repo(d .. "/outside")
    fs.mkdir(d .. "/scope")
    local res = run({ "git:" .. d .. "/scope" }, [[function(ctx) git.status({ path = ctx.params.dir }) end]],
      { dir = outside })
    refused(res, "sandbox: git.status needs the capability 'git:" .. outside .. "'")
    res = run({ "git:" .. d .. "/scope" }, [[function(ctx)
      git.status(setmetatable({}, { __index = { path = ctx.params.dir } }))
    end]], { dir = outside })
    refused(res, "bad argument #1 to 'git.status' (a repository ({path = dir}) or a directory expected)")
    local r = repo(d .. "/scope/repo")
    res = run({ "git:" .. d .. "/scope" }, [[function(ctx)
      local repo = assert(git.open(ctx.params.dir))
      assert(git.status(repo).clean)
      assert(repo:status().clean)
    end]], { dir = r })
    eq(res.code, 0, res.stdout)
  end)

  it("check where git.fetch goes: the remote's URL with insteadOf applied", function()
    local d = tmpdir()
    local inside = repo(d .. "/scope/upstream")
    local outside = repo(d .. "/outside")
    local r = repo(d .. "/scope/repo")
    local a = logged_server()
    local b, blog = logged_server()
    local fetch = [[function(ctx) assert(git.fetch(ctx.params.repo)) end]]
    local caps = { "git:" .. d .. "/scope", "net:" .. a }
    git(r, "remote", "add", "origin", inside)
    local res = run(caps, fetch, { repo = r })
    eq(res.code, 0, res.stdout)
    eq(git(r, "rev-parse", "origin/main"), git(inside, "rev-parse", "main"))
    git(r, "update-ref", "-d", "refs/remotes/origin/main")
    local function nothing_fetched(what)
      eq(git(r, "for-each-ref", "refs/remotes"), "", what .. ": nothing was fetched")
    end
    for _, case in ipairs({
      { url = outside, need = "git:" .. outside },
      { url = "file://" .. outside, need = "git:" .. outside },
      { url = inside, insteadof = outside, need = "git:" .. outside },
      { url = b .. "/repo.git", need = "net:" .. b },
      { url = a .. "/repo.git", insteadof = b .. "/", base = a .. "/", need = "net:" .. b },
      { url = "git@example.org:x.git", need = "net:git@example.org:x.git" },
    }) do
      git(r, "remote", "set-url", "origin", case.url)
      if case.insteadof then
        git(r, "config", "url." .. case.insteadof .. ".insteadOf", case.base or case.url)
      end
      res = run(caps, fetch, { repo = r })
      refused(res, "sandbox: git.fetch needs the capability '" .. case.need .. "'", case.url)
      nothing_fetched(case.url)
      if case.insteadof then
        git(r, "config", "--remove-section", "url." .. case.insteadof)
      end
    end
    eq(fs.read(blog), "", "the other server was never reached")
  end)

  it("check where git.clone goes", function()
    local d = tmpdir()
    local outside = repo(d .. "/outside")
    fs.mkdir(d .. "/scope")
    local b, blog = logged_server()
    for _, case in ipairs({
      { url = outside, need = "git:" .. outside },
      { url = "file://" .. outside, need = "git:" .. outside },
      { url = b .. "/repo.git", need = "net:" .. b },
    }) do
      local res = run({ "git:" .. d .. "/scope" }, [[function(ctx) git.clone(ctx.params.url, ctx.params.dir) end]],
        { url = case.url, dir = d .. "/scope/clone" })
      refused(res, "sandbox: git.clone needs the capability '" .. case.need .. "'", case.url)
      eq(fs.exists(d .. "/scope/clone"), false)
    end
    eq(fs.read(blog), "")
  end)
end)
