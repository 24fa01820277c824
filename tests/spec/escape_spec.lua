-- Escape attempts against the sandboxed playbook's process (issue 19): each tries to do
-- something its playbook did not declare, and asserts both that it is refused (or ends)
-- and that nothing outside the declared scope changed: marker files, files outside,
-- processes left running, the journal and `hrun show --json` holding a secret's bytes.

local SECRET = "Esc4pe-T0ken-9f8e7d"

local sandbox_procs = sandbox_processes

-- A sandboxed playbook in d declaring caps, its one phase made of `steps` (source).
local function book(d, caps, steps, top)
  return sandboxed_playbook(d, { caps = caps, steps = steps, top = top or "", name = "escape",
    params = 'dir = "", out = "", sock = "", url = ""' })
end

-- hrun on the playbook, sandboxed, with params {name = value}.
local function run(d, p, params, extra)
  local args = { p, "--sandbox", "--state", d .. "/state" }
  for k, v in pairs(params or {}) do
    args[#args + 1] = "-p"
    args[#args + 1] = k .. "=" .. v
  end
  for _, a in ipairs(extra or {}) do
    args[#args + 1] = a
  end
  return hrun_cmd(args)
end

-- hrun in the background through sh, its output to files (a run that prints gigabytes
-- must not be captured), `during` seconds later sent `signal` (if any): → code, seconds,
-- pid, stdout head, stderr.
local function run_bg(argv, signal, during, limit)
  local d = tmpdir()
  local cmd = {}
  for _, a in ipairs(argv) do
    cmd[#cmd + 1] = shq(a)
  end
  -- a watchdog kills what still runs after 20 s (a hang is a failure, not a stuck suite)
  local script = string.format("t0=$(date +%%s.%%N); %s %s > %s/out 2> %s/err & pid=$!; echo $pid > %s/pid; " ..
    "(sleep %d; kill -KILL $pid) >/dev/null 2>&1 & dog=$!; %s " ..
    "wait $pid; code=$?; kill $dog 2>/dev/null; t1=$(date +%%s.%%N); echo \"$code $(echo \"$t1 - $t0\" | bc)\"",
    shq(HRUN), table.concat(cmd, " "), d, d, d, limit or 20,
    signal and string.format("sleep %s; kill -%s $pid;", during, signal) or "")
  local r = exec.sh(script, { check = false, timeout = 60 })
  local code, secs = r.stdout:match("(%d+) ([%d%.]+)")
  local pid = (fs.read(d .. "/pid") or ""):gsub("%s", "")
  local fh = io.open(d .. "/out", "rb")
  local head = fh and fh:read(4096) or ""
  if fh then
    fh:close()
  end
  return tonumber(code), tonumber(secs), pid, head, fs.read(d .. "/err") or ""
end

-- Every byte hrun keeps of the runs in state (journal, WAL, stash) and shows of them:
-- none holds SECRET.
local function no_secret(state, out)
  local function walk(path)
    local st = fs.stat(path, { follow = false })
    if st and st.type == "dir" then
      for _, name in ipairs(assert(fs.list(path))) do
        walk(path .. "/" .. name)
      end
    elseif st and st.type == "file" then
      local data = assert(fs.read(path))
      ok(not data:find(SECRET, 1, true), path .. " holds the secret")
    end
  end
  walk(state)
  ok(not out:find(SECRET, 1, true), "the output shows the secret: " .. out)
  for _, args in ipairs({ { "show", "1", "--json" }, { "show", "1" }, { "runs", "--json" } }) do
    local cmd = { table.unpack(args) }
    cmd[#cmd + 1] = "--state"
    cmd[#cmd + 1] = state
    local r = hrun_cmd(cmd)
    ok(not (r.stdout .. r.stderr):find(SECRET, 1, true), table.concat(args, " ") .. " shows the secret")
  end
end

-- A credentials directory holding SECRET as `tok`.
local function creds()
  local d = tmpdir()
  fs.mkdir(d .. "/creds", { mode = "0700" })
  fs.write(d .. "/creds/tok", SECRET .. "\n", { mode = "0600" })
  return d .. "/creds"
end

-- A scope directory and a file outside it: → dir, scope, outside.
local function scoped()
  local d = tmpdir()
  fs.mkdir(d .. "/scope")
  fs.write(d .. "/outside", "keep")
  return d, d .. "/scope", d .. "/outside"
end

-- {======================================================
-- 1. The playbook's code after or outside the sandbox
-- ======================================================

describe("code after or outside the sandbox", function()
  it("finalizers at load, in steps and at exit only send checked calls", function()
    local d, scope = scoped()
    local marker = d .. "/gc-marker"
    local p = book(d, { "fs:" .. scope }, [[
    step "s" { run = function(ctx)
      for _ = 1, 200 do
        setmetatable({}, { __gc = function() pcall(fs.write, ctx.params.out .. "-step", "x") end })
      end
      local junk = {}
      for i = 1, 200000 do junk[i % 1000 + 1] = { i } end
      fs.write(ctx.params.dir .. "/in", "1")
      -- left for the exit: the process ends without closing its state
      setmetatable({}, { __gc = function() fs.write(ctx.params.out .. "-exit", "x") end })
      _G.keep = setmetatable({}, { __gc = function() fs.write(ctx.params.out .. "-exit2", "x") end })
    end },]], [[
for _ = 1, 100 do
  setmetatable({}, { __gc = function() pcall(fs.write, "]] .. marker .. [[-load", "x") end })
end
local junk = {}
for i = 1, 100000 do junk[i % 100 + 1] = { i } end
]])
    local r = run(d, p, { dir = scope, out = marker })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(scope .. "/in"), "1")
    for _, suffix in ipairs({ "-load", "-step", "-exit", "-exit2" }) do
      eq(fs.exists(marker .. suffix), false, "a finalizer wrote " .. suffix)
    end
    -- the same under check and plan
    r = hrun_cmd({ "check", p, "--sandbox", "--state", d .. "/state" })
    eq(r.code, 0, r.stdout .. r.stderr)
    r = hrun_cmd({ "plan", p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. scope, "-p", "out=" .. marker })
    eq(r.code, 0, r.stdout .. r.stderr)
    for _, suffix in ipairs({ "-load", "-step", "-exit", "-exit2" }) do
      eq(fs.exists(marker .. suffix), false, "a finalizer wrote " .. suffix)
    end
  end)

  it("a finalizer that runs during a later rollback's undo is still confined", function()
    local d, scope, outside = scoped()
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { run = function(ctx)
      fs.write(ctx.params.dir .. "/a", "1")
      _G.bomb = {}
      for i = 1, 300 do
        setmetatable({}, { __gc = function() pcall(fs.write, ctx.params.out, "0wned") end })
      end
    end, undo = function(ctx)
      local junk = {}
      for i = 1, 300000 do junk[i % 100 + 1] = { i } end
      fs.remove(ctx.params.dir .. "/a")
    end },
    step "b" { run = function() error("fail on purpose") end },]])
    local r = run(d, p, { dir = scope, out = outside })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "fail on purpose")
    eq(fs.exists(scope .. "/a"), false, "rolled back")
    eq(fs.read(outside), "keep")
  end)

  it("metamethods of error objects, arguments, ctx.state and params run in the playbook's process", function()
    local d, scope, outside = scoped()
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { run = function(ctx)
      local evil = { __tostring = function() fs.write(ctx.params.out, "tostring") return "evil" end,
        __len = function() fs.write(ctx.params.out, "len") return 1 end,
        __index = function() fs.write(ctx.params.out, "index") end,
        __pairs = function() fs.write(ctx.params.out, "pairs") return next, {}, nil end,
        __eq = function() fs.write(ctx.params.out, "eq") return true end,
        __concat = function() fs.write(ctx.params.out, "concat") return "c" end,
        __close = function() fs.write(ctx.params.out, "close") end,
        __tojson = function() fs.write(ctx.params.out, "tojson") return "j" end,
        __name = "hrun.secret", __metatable = "hrun.secret" }
      ctx.state.v = setmetatable({ 1, 2 }, evil)
      ctx.shared.v = setmetatable({ z = 1 }, evil)
      fs.write(ctx.params.dir .. "/a", setmetatable({}, evil) == nil and "" or "plain")
    end, undo = function(ctx)
      fs.remove(ctx.params.dir .. "/a")
      local mt = getmetatable(ctx.state.v)
      assert(mt == nil or mt == getmetatable(json.array()), "ctx.state came back with the playbook's metatable")
      fs.write(ctx.params.dir .. "/undo-state", json.encode(ctx.state))
    end },
    step "b" { run = function(ctx)
      error(setmetatable({}, { __tostring = function() fs.write(ctx.params.out, "err") return "boom" end,
        __index = function() fs.write(ctx.params.out, "errindex") end }))
    end },]])
    local r = run(d, p, { dir = scope, out = outside })
    eq(r.code, 1, r.stdout)
    eq(fs.read(outside), "keep")
    eq(fs.exists(scope .. "/a"), false, "rolled back")
    local st = json.decode(fs.read(scope .. "/undo-state") or error("no undo-state: " .. r.stdout))
    eq(st.v, { 1, 2 }, "the table's raw content, as data")
    -- an error object raised at load time
    local p2 = playbook_file(d, "load.lua", [[
error(setmetatable({}, { __tostring = function() fs.write("]] .. outside .. [[", "load") return "x" end }))]])
    r = hrun_cmd({ "check", p2, "--sandbox", "--state", d .. "/state" })
    eq(r.code, 3, r.stderr)
    eq(fs.read(outside), "keep")
    no_secret(d .. "/state", r.stdout)
  end)

  it("changing shared metatables (strings, json.array, file handles) changes nothing in the engine", function()
    local d, scope, outside = scoped()
    fs.write(scope .. "/f", "line1\nline2\n")
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { run = function(ctx)
      local out = ctx.params.out
      local boom = function() pcall(fs.write, out, "mt") error("mt") end
      local amt = getmetatable(json.array())
      if type(amt) == "table" then
        amt.__index, amt.__len, amt.__tojson, amt.__pairs = boom, boom, boom, boom
      end
      local smt = getmetatable("")
      if type(smt) == "table" then smt.__index = boom end
      local f = io.open(ctx.params.dir .. "/f")
      local fmt = getmetatable(f)
      if type(fmt) == "table" then
        fmt.__index, fmt.__gc, fmt.__close, fmt.__tostring = boom, boom, boom, boom
      end
      fs.write(ctx.params.dir .. "/a", "1")
      ctx.state.list = json.array({ 1, 2 })
      ctx.state.h = f
    end, undo = function(ctx) fs.remove(ctx.params.dir .. "/a") end },
    step "b" { run = function() error("fail on purpose") end },]])
    local r = run(d, p, { dir = scope, out = outside })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.read(outside), "keep")
    eq(fs.exists(scope .. "/a"), false, "the rollback ran as usual")
    local show = hrun_cmd({ "show", "1", "--json", "--state", d .. "/state" })
    eq(show.code, 0, show.stderr)
    ok(json.decode(show.stdout), "the journal reads as JSON")
    eq(fs.read(outside), "keep")
  end)
end)

-- }======================================================

-- {======================================================
-- 2. The check and the act read the same data
-- ======================================================

describe("check vs act", function()
  it("options read through __index or proxies are not seen by the check, nor by the act", function()
    local d, scope = scoped()
    local marker = d .. "/proxy-marker"
    local p = book(d, { "fs:" .. scope, "exec:true" }, [[
    step "a" { run = function(ctx)
      local m = ctx.params.out
      exec.run({ "true" }, setmetatable({ readonly = true }, { __index = { undo = { "touch", m } } }))
      exec.run({ "true" }, setmetatable({ readonly = true }, { __index = { cwd = "/", env = { LD_PRELOAD = m } } }))
      pcall(exec.run, setmetatable({}, { __index = { "touch", m } }), { readonly = true })
    end },
    step "b" { run = function() error("fail on purpose") end },]])
    local r = run(d, p, { dir = scope, out = marker })
    eq(r.code, 1, r.stdout)
    eq(fs.exists(marker), false, "no undo ran touch, nor any argv read through __index")
  end)

  it("a flake nix fetches is no path: a scope that holds hrun's directory does not cover it", function()
    local d, scope = scoped()
    local p = book(d, { "nix:" .. scope }, [[
    step "a" { run = function(ctx)
      nixos.rebuild("switch", { flake = ctx.params.url })
    end },]])
    for _, flake in ipairs({ "github:evil/x#host", "git+https://evil.example/x#host", "path:/etc#host",
      "git+file:///etc#host" }) do
      -- hrun runs in the scope: a flake reference read as a relative path would be in it
      local r = exec.sh(string.format("cd %s && %s plan %s --sandbox --state %s -p url=%s", shq(scope), shq(HRUN),
        shq(p), shq(d .. "/state"), shq(flake)), { check = false })
      eq(r.code, 1, flake .. ": " .. r.stdout)
      has(r.stdout, "sandbox: nixos.rebuild needs the capability 'nix:/", flake)
    end
  end)

  it("a git repository given as a table, a forged repository, or a number carries its target", function()
    need("git")
    local d, scope = scoped()
    local other = d .. "/other"
    exec.run({ "git", "init", "-q", other })
    local before = tree(other)
    local p = book(d, { "git:" .. scope, "net:http://127.0.0.1:1/x" }, [[
    step "a" { run = function(ctx)
      local how = ctx.params.url
      if how == "table" then git.checkout({ path = ctx.params.out }, "HEAD") end
      if how == "forged" then
        git.checkout(setmetatable({ path = ctx.params.out }, { __name = "hrun.git.repo" }), "HEAD") end
      if how == "tag" then git.tag({ ["$g"] = ctx.params.out }, "v1") end
      if how == "number" then git.clone(123, ctx.params.dir .. "/c") end
      if how == "urlnum" then http.get(80) end
    end },]])
    for _, how in ipairs({ "table", "forged", "tag", "number", "urlnum" }) do
      local r = run(d, p, { dir = scope, out = other, url = how })
      eq(r.code, 1, how .. ": " .. r.stdout)
      eq(tree(other), before, how)
      eq(fs.exists(scope .. "/c"), false, how)
      eq(fs.exists(d .. "/123"), false, how)
    end
  end)

  it("coroutines yielding across a primitive's callback leave nothing undone", function()
    local d, scope, outside = scoped()
    local p = book(d, { "fs:" .. scope, "exec:printf" }, [[
    step "a" { timeout = 5, run = function(ctx)
      fs.write(ctx.params.dir .. "/a", "1")
      local co = coroutine.wrap(function()
        exec.run({ "printf", "one\ntwo\n" }, { readonly = true, stream = function()
          coroutine.yield("mid")
        end })
        return "end"
      end)
      local first = co()
      pcall(fs.write, ctx.params.out, "after yield: " .. tostring(first))
      pcall(co)
      error("fail on purpose")
    end, undo = function(ctx) fs.remove(ctx.params.dir .. "/a") end },]])
    local r = run(d, p, { dir = scope, out = outside })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.read(outside), "keep")
    eq(fs.exists(scope .. "/a"), false, "rolled back")
  end)

  it("functions, huge or deep data, NaN/inf keys, NUL bytes and bad UTF-8 cross as data or not at all", function()
    local d, scope, outside = scoped()
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { run = function(ctx)
      local dir, out = ctx.params.dir, ctx.params.out
      local results = {}
      local function try(name, f, ...)
        local okk, e = pcall(f, ...)
        results[#results + 1] = name .. "=" .. tostring(okk)
      end
      try("fn", fs.write, dir .. "/fn", function() return "x" end)
      local deep = {}
      local cur = deep
      for _ = 1, 5000 do cur.x = {}; cur = cur.x end
      try("deep", fs.write, dir .. "/deep", "x", deep)
      try("inf", fs.write, dir .. "/inf", "x", { [math.huge] = 1, [-math.huge] = 2, [0.5] = 0 / 0 })
      try("nul", fs.write, dir .. "/ok\0/../../outside", "0wned")
      try("nul2", fs.write, out .. "\0" .. dir .. "/x", "0wned")
      try("utf8", fs.write, dir .. "/\255\254", "bad utf8 inside")
      try("utf8dots", fs.write, dir .. "/\255/../../outside", "0wned")
      try("big", fs.write, dir .. "/big", string.rep("x", 50 * 1024 * 1024))
      fs.write(dir .. "/results", table.concat(results, " "))
    end },]])
    local r = run(d, p, { dir = scope, out = outside })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(outside), "keep")
    local res = fs.read(scope .. "/results")
    has(res, "fn=false")
    has(res, "nul=false")
    has(res, "nul2=false")
    has(res, "utf8dots=false")
    eq(fs.read(scope .. "/\255\254"), "bad utf8 inside")
    eq(fs.exists(scope .. "/fn"), false)
  end)

  it("tables keyed '$s', '$f', '$d', '$g', '$m' stay tables: no secret, function or object is forged", function()
    local d, scope, outside = scoped()
    local cr = creds()
    local p = book(d, { "fs:" .. scope, "secrets:" .. cr, "exec:true" }, [[
    step "a" { run = function(ctx)
      local dir = ctx.params.dir
      local tok = secrets.read(ctx.params.sock .. "/tok")
      fs.write(dir .. "/real", tok) -- the engine's secret 1
      local res = {}
      local function try(name, f, ...)
        local okk, e = pcall(f, ...)
        res[#res + 1] = name .. "=" .. tostring(okk)
      end
      try("s", fs.write, dir .. "/s", { ["$s"] = { { id = 1 } } })
      try("s2", fs.write, dir .. "/s2", { ["$s"] = { "abcd", { id = 1 } } })
      try("m", fs.write, dir .. "/m", { ["$m"] = { { 1, "x" } } })
      try("b", fs.write, dir .. "/b", { ["$b"] = "QUJD" })
      try("f", exec.run, { "true" }, { readonly = true, stream = { ["$f"] = "e1" } })
      try("d", fs.write, dir .. "/d", { ["$d"] = { kind = "step", name = "x", body = {} } })
      try("g", fs.write, { ["$g"] = ctx.params.out }, "0wned")
      try("u", fs.write, dir .. "/u", { ["$u"] = 0 })
      try("ss", fs.write, dir .. "/ss", { ["$$s"] = { { id = 1 } } })
      fs.write(dir .. "/results", table.concat(res, " "))
      ctx.state.forged = { ["$s"] = { { id = 1 } } }
    end },]])
    local r = run(d, p, { dir = scope, out = outside, sock = cr })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(outside), "keep")
    eq(fs.read(scope .. "/real"), SECRET)
    local res = fs.read(scope .. "/results")
    for _, k in ipairs({ "s", "s2", "m", "b", "f", "d", "g", "u", "ss" }) do
      has(res, k .. "=false", k)
      eq(fs.exists(scope .. "/" .. k), false, k)
    end
    no_secret(d .. "/state", r.stdout)
  end)
end)

-- }======================================================

-- {======================================================
-- 3. A declared capability reaching further than its scope
-- ======================================================

describe("a capability's reach", function()
  it("exec's env: loader and interpreter variables are refused even when declared", function()
    local d, scope = scoped()
    local marker = d .. "/env-marker"
    fs.write(scope .. "/rc", "touch " .. marker .. "\n")
    local p = book(d, { "fs:" .. scope, "exec:true", "exec:sh", "env:*" }, [[
    step "a" { run = function(ctx)
      local name = ctx.params.url
      exec.run({ "true" }, { readonly = true, env = { [name] = ctx.params.dir .. "/rc" } })
    end },]])
    for _, name in ipairs({ "LD_PRELOAD", "ld_preload", "PERL5OPT", "GIT_SSH_COMMAND", "BASH_ENV", "ENV",
      "PYTHONSTARTUP", "NODE_OPTIONS", "LD_LIBRARY_PATH", "PATH", "GCONV_PATH", "HOME", "SHELLOPTS" }) do
      local r = run(d, p, { dir = scope, url = name })
      eq(r.code == 0, false, name .. ": " .. r.stdout)
    end
    -- a shell given BASH_ENV in an undo command's env
    p = book(d, { "fs:" .. scope, "exec:true", "exec:bash", "env:*" }, [[
    step "a" { run = function(ctx)
      exec.run({ "true" }, { env = { BASH_ENV = ctx.params.dir .. "/rc" }, undo = { "bash", "-c", "true" } })
    end },
    step "b" { run = function() error("fail on purpose") end },]])
    local r = run(d, p, { dir = scope })
    eq(r.code, 1, r.stdout)
    eq(fs.exists(marker), false)
  end)

  it("a repository's own config cannot move git's work tree outside its scope", function()
    need("git")
    local d, scope = scoped()
    local repo = scope .. "/repo"
    local victim = d .. "/victim"
    fs.mkdir(victim)
    fs.write(victim .. "/f", "keep")
    exec.run({ "git", "init", "-q", "-b", "main", repo })
    fs.write(repo .. "/f", "from git")
    exec.run({ "git", "-C", repo, "add", "f" })
    exec.run({ "git", "-C", repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "1" })
    exec.run({ "git", "-C", repo, "config", "core.worktree", victim })
    fs.mkdir(repo .. "/.git/hooks")
    fs.write(repo .. "/.git/hooks/post-checkout", "#!/bin/sh\ntouch " .. d .. "/hook-marker\n", { mode = "0755" })
    local p = book(d, { "git:" .. scope }, [[
    step "a" { run = function(ctx)
      local how = ctx.params.url
      if how == "paths" then git.checkout_paths(ctx.params.dir .. "/repo", "HEAD", { "f" }) end
      if how == "checkout" then git.checkout(ctx.params.dir .. "/repo", "HEAD") end
      if how == "status" then git.status(ctx.params.dir .. "/repo") end
    end },]])
    for _, how in ipairs({ "paths", "checkout", "status" }) do
      local r = run(d, p, { dir = scope, url = how })
      eq(r.code, 1, how .. ": " .. r.stdout)
      eq(fs.read(victim .. "/f"), "keep", how)
      eq(fs.exists(d .. "/hook-marker"), false, how)
    end
  end)

  it("net: unix sockets, redirects and %2e%2e stay in the declared URL", function()
    local u, sd = http_server()
    local d = tmpdir()
    local p = book(d, { "net:" .. u .. "/echo" }, [[
    step "a" { run = function(ctx)
      local how, u = ctx.params.url, ctx.params.dir
      if how == "dots" then http.get(u .. "/echo/%2e%2e/status/200") end
      if how == "dots2" then http.get(u .. "/echo/%2E%2E%2fstatus/200") end
      if how == "redirect" then http.get(u .. "/echo/../to?url=" .. u .. "/status/200") end
      if how == "unix" then http.get(u .. "/echo", { unix_socket = ctx.params.sock }) end
      if how == "dotsslash" then http.get(u .. "/echo/%2e%2e%2fstatus/200") end
    end },]])
    local log = fs.read(sd .. "/port") -- any: the server writes only its port here
    for _, how in ipairs({ "dots", "dots2", "redirect", "unix", "dotsslash" }) do
      local r = run(d, p, { dir = u, url = how, sock = "/run/systemd/private" })
      eq(r.code, 1, how .. ": " .. r.stdout)
      has(r.stdout, "sandbox:", how)
    end
    eq(fs.read(sd .. "/port"), log)
  end)

  it("fs.glob braces, symlinks, '..' after a symlink, /proc/self paths and relative paths stay in scope", function()
    local d, scope, outside = scoped()
    fs.mkdir(d .. "/elsewhere/deep", { parents = true })
    exec.run({ "ln", "-s", d .. "/elsewhere/deep", scope .. "/link" })
    exec.run({ "ln", "-s", "/", scope .. "/root" })
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { run = function(ctx)
      local how, dir, out = ctx.params.url, ctx.params.dir, ctx.params.out
      if how == "glob" then
        local list = fs.glob(dir .. "/{../../../../..,.}/*")
        fs.write(dir .. "/globbed", table.concat(list, "\n"))
      end
      if how == "glob2" then fs.glob(dir .. "/{a,b}/../../*") end
      if how == "dotdot" then fs.write(dir .. "/link/../../outside", "0wned") end
      if how == "root" then fs.write(dir .. "/root" .. out, "0wned") end
      if how == "proc" then fs.write("/proc/self/root" .. out, "0wned") end
      if how == "proccwd" then fs.write("/proc/self/cwd/outside", "0wned") end
      if how == "relative" then fs.write("outside", "0wned") end
      if how == "fd" then fs.read("/proc/self/fd/0") end
    end },]])
    for _, how in ipairs({ "glob", "glob2", "dotdot", "root", "proc", "proccwd", "relative", "fd" }) do
      local r = exec.run({ HRUN, p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. scope, "-p",
        "out=" .. outside, "-p", "url=" .. how }, { check = false, cwd = d })
      eq(r.code, 1, how .. ": " .. r.stdout)
      has(r.stdout, "sandbox:", how)
      eq(fs.read(outside), "keep", how)
      eq(fs.exists(scope .. "/globbed"), false, how)
    end
  end)

  it("sqlite.query reads only the database it names (ATTACH names another file)", function()
    need("sqlite3")
    local d, scope = scoped()
    exec.run({ "sqlite3", scope .. "/in.db", "create table t(x); insert into t values (1);" })
    exec.run({ "sqlite3", d .. "/secret.db", "create table s(pw); insert into s values ('hunter2');" })
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { run = function(ctx)
      local how = ctx.params.url
      if how == "attach" then sqlite.query(ctx.params.dir .. "/in.db", "ATTACH '" .. ctx.params.out .. "' AS o") end
      if how == "missing" then
        sqlite.query(ctx.params.dir .. "/in.db", "ATTACH '" .. ctx.params.out .. ".none' AS o")
      end
    end },]])
    local r1 = run(d, p, { dir = scope, out = d .. "/secret.db", url = "attach" })
    local r2 = run(d, p, { dir = scope, out = d .. "/secret.db", url = "missing" })
    eq(r1.code, 1, "ATTACH of a file outside the scope: " .. r1.stdout)
    has(r1.stdout, "sandbox:")
    eq(r2.code, 1, r2.stdout)
    eq(fs.exists(d .. "/secret.db.none"), false)
  end)
end)

-- }======================================================

-- {======================================================
-- 4. Limits that hold
-- ======================================================

describe("limits", function()
  it("a primitive blocking in the engine (sqlite ATTACH of a FIFO outside the scope) ends at the deadline", function()
    need("sqlite3")
    local d, scope = scoped()
    exec.run({ "sqlite3", scope .. "/in.db", "create table t(x);" })
    exec.run({ "mkfifo", d .. "/fifo" })
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { timeout = 2, run = function(ctx)
      sqlite.query(ctx.params.dir .. "/in.db", "ATTACH '" .. ctx.params.out .. "' AS o")
    end },]])
    local code, secs, pid = run_bg({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. scope, "-p",
      "out=" .. d .. "/fifo" }, "TERM", 4, 8)
    ok(secs < 8, "ended after " .. tostring(secs) .. " s (code " .. tostring(code) .. "): neither the 2 s " ..
      "deadline nor SIGTERM at 4 s ended it")
    eq(code, 1)
    eq(sandbox_procs(pid), {})
  end)

  it("a catastrophic Lua pattern under timeout = 2 ends at ~2 s, with no process left", function()
    local d = tmpdir()
    local p = book(d, {}, [[
    step "a" { timeout = 2, run = function()
      local s = string.rep("a", 40)
      s:find(string.rep("a*", 40) .. "b")
    end },]])
    local code, secs, pid, out = run_bg({ p, "--sandbox", "--state", d .. "/state" })
    eq(code, 1, out)
    ok(secs < 5, "ended after " .. tostring(secs) .. " s")
    eq(sandbox_procs(pid), {}, "the playbook's process is gone")
  end)

  it("a loop in a finalizer stops at the step's deadline", function()
    local d = tmpdir()
    local p = book(d, {}, [[
    step "a" { timeout = 2, run = function()
      for _ = 1, 50 do setmetatable({}, { __gc = function() while true do end end }) end
      local junk = {}
      for i = 1, 1e7 do junk[i % 100 + 1] = { i } end
    end },]])
    local code, secs, pid, out = run_bg({ p, "--sandbox", "--state", d .. "/state" })
    eq(code, 1, out)
    ok(secs < 5, "ended after " .. tostring(secs) .. " s")
    eq(sandbox_procs(pid), {})
  end)

  it("a loop at load time ends at the 10 s load deadline under hrun check", function()
    local d = tmpdir()
    local p = playbook_file(d, "spin.lua", [[
local s = string.rep("a", 40)
while true do s:find(string.rep("a*", 30) .. "b") end]])
    local code, secs, pid, _, err = run_bg({ "check", p, "--sandbox", "--state", d .. "/state" })
    eq(code, 3, err)
    has(err, "evaluating the playbook took longer than 10 s")
    ok(secs < 14, "ended after " .. tostring(secs) .. " s")
    eq(sandbox_procs(pid), {})
  end)

  it("string.rep and json.decode of 100+ MB pass no --memory-limit", function()
    local d, scope = scoped()
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { run = function(ctx)
      local how = ctx.params.url
      if how == "rep" then local s = string.rep("x", 200 * 1024 * 1024); fs.write(ctx.params.dir .. "/r", s) end
      if how == "json" then
        local t, err = json.decode("[" .. string.rep("[1],", 3 * 1024 * 1024) .. "1]")
        if not t then error(err, 0) end
        fs.write(ctx.params.dir .. "/r", tostring(#t))
      end
      if how == "concat" then
        local t = {}
        for i = 1, 2e6 do t[i] = string.rep("y", 64) .. i end
        fs.write(ctx.params.dir .. "/r", table.concat(t))
      end
    end },]])
    for _, how in ipairs({ "rep", "json", "concat" }) do
      local r = run(d, p, { dir = scope, url = how }, { "--memory-limit", "64M" })
      eq(r.code, 1, how .. ": " .. r.stdout .. r.stderr)
      -- json.decode fails with "line -1 column -1: " (jansson's empty message), and concat
      -- sometimes kills the process outright ("ended (exited with code 1)"): the limit holds
      if how == "rep" then
        has(r.stdout, "memory limit", how)
      end
      eq(fs.exists(scope .. "/r"), false, how)
    end
  end)

  it("SIGTERM to hrun while the playbook spins ends everything", function()
    local d = tmpdir()
    local p = book(d, {}, [[
    step "a" { run = function()
      local s = string.rep("a", 40)
      while true do s:find(string.rep("a*", 30) .. "b") end
    end },]])
    local code, secs, pid, out = run_bg({ p, "--sandbox", "--state", d .. "/state" }, "TERM", 1)
    ok(code ~= 0, "stopped: " .. tostring(code) .. " " .. out)
    ok(secs < 5, "ended after " .. tostring(secs) .. " s")
    eq(sandbox_procs(pid), {})
  end)

  it("a playbook that prints gigabytes ends at its deadline", function()
    local d = tmpdir()
    local p = book(d, {}, [[
    step "a" { timeout = 2, run = function()
      local chunk = string.rep("spam ", 200000)
      while true do print(chunk) end
    end },]])
    local code, secs, pid = run_bg({ p, "--sandbox", "--state", d .. "/state" })
    eq(code, 1)
    ok(secs < 6, "ended after " .. tostring(secs) .. " s")
    eq(sandbox_procs(pid), {})
  end)

  it("a step without a timeout is still killed on Ctrl-C while the playbook's process holds a line back", function()
    local d = tmpdir()
    local p = book(d, {}, [[
    step "a" { run = function()
      -- one huge message: the engine reads it in pieces
      local s = string.rep("z", 300 * 1024 * 1024)
      print(s)
    end },]])
    local code, secs, pid = run_bg({ p, "--sandbox", "--state", d .. "/state", "--memory-limit", "1G" }, "INT", 1)
    ok(code ~= 0, "stopped")
    ok(secs < 8, "ended after " .. tostring(secs) .. " s")
    eq(sandbox_procs(pid), {})
  end)
end)

-- }======================================================

-- {======================================================
-- 5. A fetched playbook that is a symlink out of its checkout
-- ======================================================

describe("fetched symlinks", function()
  it("a fetched playbook that resolves outside its checkout is refused", function()
    need("git")
    local d = tmpdir()
    local marker = d .. "/symlink-marker"
    local evil = playbook_file(d, "evil.lua", [[
return playbook { name = "evil", capabilities = { "fs:/tmp" },
  phase "p" { step "s" { run = function() fs.write("]] .. marker .. [[", "x") end } } }]])
    local work = d .. "/work"
    exec.run({ "git", "init", "-q", "-b", "main", work })
    exec.run({ "ln", "-s", evil, work .. "/up.lua" })
    exec.run({ "ln", "-s", "../../../evil.lua", work .. "/rel.lua" })
    exec.run({ "git", "-C", work, "add", "-A" })
    exec.run({ "git", "-C", work, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "1" })
    local state = d .. "/state"
    local r = hrun_cmd({ "fetch", "file://" .. work, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    for _, name in ipairs({ "work/up.lua", "work/rel.lua", state .. "/playbooks/work/up.lua" }) do
      r = hrun_cmd({ name, "--state", state })
      eq(r.code, 3, name .. ": " .. r.stdout .. r.stderr)
      eq(fs.exists(marker), false, name)
    end
  end)
end)

-- }======================================================

-- {======================================================
-- 6. Secrets
-- ======================================================

describe("secrets", function()
  it("a secret echoed back by a program shows nowhere: ctx.state, ctx.shared, events, journal, show", function()
    need("cat")
    local d, scope = scoped()
    local cr = creds()
    local p = book(d, { "fs:" .. scope, "secrets:" .. cr, "exec:cat" }, [[
    step "a" { run = function(ctx)
      local tok = secrets.read(ctx.params.sock .. "/tok")
      local r = exec.run({ "cat" }, { stdin = tok, readonly = true })
      ctx.state.out, ctx.shared.out, ctx.state.tok = r.stdout, r.stdout, tok
      ctx.log("got %s", r.stdout)
      print(r.stdout, tok)
      io.write(r.stdout)
      fs.write(ctx.params.dir .. "/echo", r.stdout)
      local lines = {}
      exec.run({ "cat" }, { stdin = tok, readonly = true, stream = function(_, line) lines[#lines + 1] = line end })
      ctx.state.lines = lines
      error("failing with " .. r.stdout)
    end },]])
    local r = run(d, p, { dir = scope, sock = cr }, { "--json" })
    eq(r.code, 1, r.stdout)
    no_secret(d .. "/state", r.stdout .. r.stderr)
  end)

  it("tostring, json, format, #, sub, byte, == and concatenation reveal nothing of a secret", function()
    local d, scope = scoped()
    local cr = creds()
    local p = book(d, { "fs:" .. scope, "secrets:" .. cr }, [[
    step "a" { run = function(ctx)
      local tok = secrets.read(ctx.params.sock .. "/tok")
      local seen = {}
      local function try(name, f)
        local okk, v = pcall(f)
        seen[#seen + 1] = name .. "=" .. tostring(okk) .. ":" .. tostring(v)
      end
      try("tostring", function() return tostring(tok) end)
      try("json", function() return json.encode({ tok }) end)
      try("format", function() return string.format("%s|%q", tok, tostring(tok)) end)
      try("len", function() return #tok end)
      try("sub", function() return string.sub(tok, 1, 3) end)
      try("byte", function() return string.byte(tok, 1) end)
      try("eq", function() return tok == "]] .. SECRET:sub(1, 7) .. [[" .. "]] .. SECRET:sub(8) .. [[" end)
      try("rawlen", function() return rawlen(tok) end)
      try("next", function() return next(tok) end)
      try("concat", function() return tostring("a" .. tok .. "b") end)
      try("tableconcat", function() return table.concat({ tok }) end)
      try("rep", function() return string.rep(tok, 2) end)
      try("gsub", function() return (string.gsub(tok, ".", "%0")) end)
      fs.write(ctx.params.dir .. "/seen", table.concat(seen, "\n"))
      -- a guess compared by the engine: does a refusal say more than "no"?
      local okk, e = pcall(fs.write, "/" .. tostring(tok), "x")
      ctx.state.e = tostring(e)
      ctx.state.seen = seen
    end },]])
    local r = run(d, p, { dir = scope, sock = cr })
    eq(r.code, 0, r.stdout)
    local seen = assert(fs.read(scope .. "/seen"))
    ok(not seen:find(SECRET, 1, true), seen)
    ok(not seen:find(SECRET:sub(1, 3), 1, true), "a part of it: " .. seen)
    has(seen, "eq=true:false")
    has(seen, "len=false")
    no_secret(d .. "/state", r.stdout)
  end)

  it("the masker is no oracle the playbook can ask byte by byte", function()
    local d, scope = scoped()
    local cr = creds()
    -- a guess of the secret's first bytes comes back unmasked: the masker hides the
    -- whole secret, so guessing a prefix learns nothing; a full guess is masked
    local p = book(d, { "fs:" .. scope, "secrets:" .. cr }, [[
    step "a" { run = function(ctx)
      local tok = secrets.read(ctx.params.sock .. "/tok")
      local got = {}
      for _, guess in ipairs({ "]] .. SECRET:sub(1, 6) .. [[", "]] .. SECRET:sub(1, -2) .. [[" }) do
        fs.write(ctx.params.dir .. "/g", guess)
        got[#got + 1] = fs.read(ctx.params.dir .. "/g") == guess and "same" or "masked"
      end
      fs.write(ctx.params.dir .. "/got", table.concat(got, " "))
    end },]])
    local r = run(d, p, { dir = scope, sock = cr })
    eq(r.code, 0, r.stdout)
    eq(fs.read(scope .. "/got"), "same same", "no partial guess is told apart")
  end)

  it("a secret's length cannot be read through the files it is written to", function()
    local d, scope = scoped()
    local cr = creds()
    local p = book(d, { "fs:" .. scope, "secrets:" .. cr }, [[
    step "a" { run = function(ctx)
      local tok = secrets.read(ctx.params.sock .. "/tok")
      fs.write(ctx.params.dir .. "/t", tok)
      ctx.state.size = fs.stat(ctx.params.dir .. "/t").size
      ctx.state.read = fs.read(ctx.params.dir .. "/t")
      print("size", ctx.state.size, "read", ctx.state.read)
    end },]])
    local r = run(d, p, { dir = scope, sock = cr })
    eq(r.code, 0, r.stdout)
    has(r.stdout, "read\t<secret>")
    no_secret(d .. "/state", r.stdout)
  end)
end)

-- }======================================================

-- {======================================================
-- 7. The process itself
-- ======================================================

describe("the playbook's process", function()
  it("has no way to files, programs, sockets, signals or the debug library from Lua", function()
    local d, scope, outside = scoped()
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { run = function(ctx)
      local res = {}
      local function try(name, f)
        local okk, v = pcall(f)
        res[#res + 1] = name .. "=" .. tostring(okk and v ~= nil)
      end
      try("debug", function() return debug end)
      try("package", function() return package end)
      try("require_io", function() return require("io") end)
      try("require_os", function() return require("os") end)
      try("require_hrun_fs", function() return require("hrun.fs").write(ctx.params.out, "0wned") end)
      try("popen", function() return io.popen end)
      try("execute", function() return os.execute end)
      try("remove", function() return os.remove end)
      try("exit", function() return os.exit end)
      try("loadfile", function() return loadfile end)
      try("dofile", function() return dofile end)
      try("collectgarbage", function() return collectgarbage end)
      try("binary", function() return load(string.dump(function() return 1 end), "x", "b") end)
      try("iowrite", function() return io.open(ctx.params.out, "w") end)
      try("ioread", function() return io.open(ctx.params.out) end)
      try("stderr", function() return io.stderr end)
      try("rawset_G", function() return rawget(_G, "_ENV") end)
      try("getenv_path", function() return os.getenv("PATH") end)
      fs.write(ctx.params.dir .. "/res", table.concat(res, " "))
    end },]])
    local r = run(d, p, { dir = scope, out = outside })
    eq(r.code, 0, r.stdout)
    local res = fs.read(scope .. "/res")
    for _, name in ipairs({ "debug", "package", "require_io", "require_os", "require_hrun_fs", "popen", "execute",
      "remove", "exit", "loadfile", "dofile", "binary", "iowrite", "ioread", "stderr", "getenv_path" }) do
      has(res, name .. "=false", name)
    end
    eq(fs.read(outside), "keep")
  end)

  it("cannot hang or crash the engine: out-of-turn answers, calls of unknown names, huge argument counts", function()
    local d, scope, outside = scoped()
    local p = book(d, { "fs:" .. scope }, [[
    step "a" { timeout = 10, run = function(ctx)
      local res = {}
      local function try(name, f, ...)
        local okk, v = pcall(f, ...)
        res[#res + 1] = name .. "=" .. tostring(okk)
      end
      -- a table with huge integer keys: table.unpack on the engine's side
      try("sparse", fs.write, ctx.params.dir .. "/x", "y", { [2 ^ 53] = 1, [1e300] = 2 })
      local many = {}
      for i = 1, 250 do many[i] = i end
      try("many", fs.exists, table.unpack(many))
      try("internal", function() return fs._restore end)
      fs.write(ctx.params.dir .. "/res", table.concat(res, " "))
    end },
    step "b" { run = function(ctx) fs.write(ctx.params.dir .. "/b", "still answered") end },]])
    local r = run(d, p, { dir = scope, out = outside })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(scope .. "/b"), "still answered")
    eq(fs.read(outside), "keep")
  end)
end)

-- }======================================================

-- {======================================================
-- The engine's decoder fed hostile text directly (what a child could send)
-- ======================================================

describe("the validation of a sandboxed playbook", function()
  -- its objects name their own file and line: the engine must read no other file to find
  -- a field's line (it would tell where `root_password =` is in a file out of scope)
  it("reads no file the playbook names for its objects' places", function()
    local d = tmpdir()
    fs.write(d .. "/private.conf", "a = 1\nb = 2\nroot_password = hunter2\n", { mode = "0600" })
    local p = book(d, {}, [[ s, ]], string.format([[
local s = step "x" { run = function() end, root_password = 1 }
for _, v in pairs(s) do
  if type(v) == "table" and v.file then v.file = %q; v.line = 1 end
end
]], d .. "/private.conf"))
    local r = hrun_cmd({ "check", p, "--sandbox", "--state", d .. "/state" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "unknown field 'root_password'")
    ok(not r.stderr:find(":3: step 'x'", 1, true), "the line of root_password in a file out of scope: " .. r.stderr)
  end)
end)

describe("the wire decoder", function()
  it("refuses or decodes hostile messages without crashing the engine", function()
    -- run in a plain script: hrun -e has the private library's wire? a script has only
    -- the public modules, so decode through a sandboxed run's own path: every message
    -- below is sent by a playbook whose tables hold exactly those bytes as strings.
    local d = tmpdir()
    local script = playbook_file(d, "wire.lua", [==[
local ok, wire = pcall(require, "hrun.wire")
if not ok then print("no wire") return end
local cases = {
  '{"$b":"===="}', '{"$b":"========"}', '{"$b":"A==="}', '{"$b":"@@@@"}', '{"$n":"nan"}',
  '{"$m":[[null,1]]}', '{"$m":[[{"$n":"nan"},1]]}', '{"$m":[[1]]}', '{"$zz":1}', '{"$":1}',
  '{"$s":1}', '[' .. string.rep("[", 5000) .. string.rep("]", 5000) .. ']', '"\\u0000"',
  '{"a\\u0000b":1}', '{"$m":' .. string.rep("[", 300) .. string.rep("]", 300) .. '}',
}
for _, c in ipairs(cases) do
  local okk, v = pcall(wire.decode, c, { s = function(p) return p end })
  local shown = okk and (type(v) == "string" and ("#" .. #v) or type(v)) or tostring(v)
  print(c:sub(1, 20), okk, shown)
end
print("survived")]==])
    local r = hrun_cmd({ script })
    eq(r.code, 0, r.stdout .. r.stderr)
    if r.stdout:find("no wire", 1, true) then
      skip("hrun.wire is not reachable from a script")
    end
    has(r.stdout, "survived")
  end)
end)
