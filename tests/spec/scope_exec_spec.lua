-- Declared capabilities reach no further than their scope (issue 19): env:NAME for what
-- exec.run's env sets and sys.env reads, the variables no sandboxed playbook may set,
-- fs.glob's braces, ".." and symlinks, and fetched playbooks that are symlinks.

-- A playbook in d declaring caps, one step whose body is `body` (ctx.params.dir and
-- ctx.params.arg are the test's); run with --sandbox.
local function sandboxed(d, caps, body)
  return sandboxed_playbook(d, { caps = caps, name = "scoped", params = 'dir = "", arg = ""', steps = string.format([[
    step "s" { run = function(ctx)
      local dir, arg = ctx.params.dir, ctx.params.arg
%s
    end },]], body) })
end

local function run(p, d, arg)
  return hrun_cmd({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d, "-p", "arg=" .. (arg or "") })
end

-- A bash script that leaves a marker file when it runs: what BASH_ENV would source.
local function marker_script(d)
  need("bash")
  local script = d .. "/evil.sh"
  fs.write(script, "touch " .. d .. "/pwned\n")
  return script
end

describe("exec.run's env in the sandbox", function()
  it("needs env:NAME for each name it sets or unsets", function()
    local d = tmpdir()
    local p = sandboxed(d, { "exec:env", "env:PG*" }, [[
      local v = "1"
      if arg == "PGHOST" then v = false end
      exec.run({ "env" }, { env = { PGPASSWORD = "pw", [arg] = v } })]])
    local r = run(p, d, "PGHOST")
    eq(r.code, 0, r.stdout)
    r = run(p, d, "AWS_SECRET")
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: exec.run needs the capability 'env:AWS_SECRET', which the playbook does not declare " ..
      "(it declares: exec:env, env:PG*)")
    -- unsetting needs it too
    p = sandboxed(d, { "exec:true" }, [[exec.run({ "true" }, { env = { HOME = false } })]])
    r = run(p, d)
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: exec.run needs the capability 'env:HOME', which the playbook does not declare")
  end)

  it("refuses loader and interpreter variables even when declared, and the program runs nothing", function()
    local d = tmpdir()
    local script = marker_script(d)
    local p = sandboxed(d, { "exec:bash", "env", "env:BASH_ENV", "env:LD_PRELOAD" }, [[
      exec.run({ "bash", "-c", "true" }, { env = { [arg] = ]] .. string.format("%q", script) .. [[ } })]])
    for _, case in ipairs({
      { "BASH_ENV", "a shell runs code it names" },
      { "LD_PRELOAD", "the dynamic loader and the C library load code" },
      { "LD_AUDIT", "the dynamic loader" },
      { "PATH", "the program finds the programs it runs there" },
      { "PERL5OPT", "perl loads the modules" },
      { "PYTHONSTARTUP", "python imports and runs" },
      { "GIT_SSH_COMMAND", "git runs the commands" },
      { "BASH_FUNC_ls%%", "a shell runs code it names" },
      { "npm_config_script_shell", "node and npm" },
      { "HOME", "programs read their configuration from there" },
      { "NIX_CONFIG", "nix takes its configuration" },
    }) do
      local r = run(p, d, case[1])
      eq(r.code, 1, case[1] .. ": " .. r.stdout)
      has(r.stdout, "pb.lua:7: sandbox: exec.run needs the capability 'env:" .. case[1] ..
        "', which no sandboxed playbook may use, declared or not: " .. case[2], case[1])
      eq(fs.exists(d .. "/pwned"), false, case[1] .. ": the program ran nothing")
    end
    -- outside the sandbox it is the owner's to do, and BASH_ENV is code
    local r = hrun_cmd({ p, "--state", d .. "/state", "-p", "dir=" .. d, "-p", "arg=BASH_ENV" })
    eq(r.code, 0, r.stdout)
    eq(fs.exists(d .. "/pwned"), true)
  end)

  it("checks the env the program gets, not only the table the call was given", function()
    local d = tmpdir()
    local script = marker_script(d)
    -- the options' env comes through __index: a metatable does not cross into the
    -- engine, so neither the check nor the program sees the env it offers
    local p = sandboxed(d, { "exec:bash", "env" }, [[
      exec.run({ "bash", "-c", "true" }, setmetatable({}, { __index = { env = { BASH_ENV = ]] ..
      string.format("%q", script) .. [[ } } }))]])
    local r = run(p, d)
    eq(r.code, 0, r.stdout)
    eq(fs.exists(d .. "/pwned"), false)
    -- the same env given plainly is refused
    p = sandboxed(d, { "exec:bash", "env" }, [[
      exec.run({ "bash", "-c", "true" }, { env = { BASH_ENV = ]] .. string.format("%q", script) .. [[ } })]])
    r = run(p, d)
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: exec.run needs the capability 'env:BASH_ENV', which no sandboxed playbook may use")
    eq(fs.exists(d .. "/pwned"), false)
  end)

  it("checks the undo command's env and program, which the rollback runs as they were journaled", function()
    local d = tmpdir()
    local script = marker_script(d)
    local p = sandboxed(d, { "exec:true", "exec:bash", "env" }, string.format([[
      local opts = { undo = { "bash", "-c", "true" } }
      if arg == "env" then opts.env = { BASH_ENV = %q } end
      if arg == "index" then setmetatable(opts, { __index = { undo = { "sh", "-c", "touch %s/pwned" } } }) end
      exec.run({ "true" }, opts)
      error("fail, so that the undo runs")]], script, d))
    local r = run(p, d, "env")
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: exec.run needs the capability 'env:BASH_ENV', which no sandboxed playbook may use")
    eq(fs.exists(d .. "/pwned"), false)
    -- an undo from __index is no undo: neither checked nor journaled nor run
    r = run(p, d, "index")
    eq(r.code, 1, r.stdout)
    has(r.stdout, "fail, so that the undo runs")
    eq(fs.exists(d .. "/pwned"), false)
  end)
end)

describe("exec.run's creates and removes in the sandbox", function()
  -- whether a path exists is a read: outside the playbook's fs scope it is refused, not
  -- answered by a command run or skipped
  it("need the fs scope of the paths they look at, relative ones from cwd", function()
    local d = tmpdir()
    fs.mkdir(d .. "/data")
    fs.mkdir(d .. "/secret")
    fs.write(d .. "/secret/file", "x")
    fs.write(d .. "/data/done", "x")
    local p = sandboxed(d, { "fs:" .. d .. "/data", "exec:true" }, [[
      local r = exec.run({ "true" }, { [arg] = dir .. "/secret/file" })
      ctx.log("skipped: %s", tostring(r.skipped))]])
    for _, guard in ipairs({ "creates", "removes" }) do
      local r = run(p, d, guard)
      eq(r.code, 1, r.stdout)
      has(r.stdout, "sandbox: exec.run needs the capability 'fs:" .. d .. "/secret/file'")
    end
    p = sandboxed(d, { "fs:" .. d .. "/data", "exec:true" }, [[
      local r = exec.run({ "true" }, { creates = "done", cwd = dir .. "/data" })
      ctx.log("skipped: %s", tostring(r.skipped))
      r = exec.run({ "true" }, { creates = "../secret/file", cwd = dir .. "/data" })]])
    local r = run(p, d)
    eq(r.code, 1, r.stdout)
    has(r.stdout, "skipped: creates: " .. d .. "/data/done exists")
    has(r.stdout, "sandbox: exec.run needs the capability 'fs:" .. d .. "/secret/file'")
  end)
end)

describe("sys.env in the sandbox", function()
  it("needs env:NAME, and the whole environment needs every name", function()
    local d = tmpdir()
    local p = sandboxed(d, { "env:HOME", "fs:" .. d }, [[
      local v = arg == "all" and sys.env() or sys.env(arg)
      fs.write(dir .. "/out", type(v) == "table" and "table" or tostring(v))]])
    local r = run(p, d, "HOME")
    eq(r.code, 0, r.stdout)
    eq(fs.read(d .. "/out"), tostring(os.getenv("HOME")))
    r = run(p, d, "PATH")
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: sys.env needs the capability 'env:PATH', which the playbook does not declare " ..
      "(it declares: env:HOME, fs:" .. d .. ")")
    r = run(p, d, "all")
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: sys.env needs the capability 'env:")
    p = sandboxed(d, { "env", "fs:" .. d }, [[
      fs.write(dir .. "/out", type(sys.env()) == "table" and "table" or "?")]])
    r = run(p, d)
    eq(r.code, 0, r.stdout)
    eq(fs.read(d .. "/out"), "table")
  end)

  it("is a well-formed capability with a name or a glob", function()
    local d = tmpdir()
    local p = sandboxed(d, { "env:A=B" }, "")
    local r = hrun_cmd({ "check", p, "--state", d .. "/state" })
    eq(r.code, 3)
    has(r.stderr, "'env:A=B': env takes a variable's name or a glob of names (env:PGPASSWORD)")
  end)
end)

describe("fs.glob in the sandbox", function()
  -- d/data is the scope; d/outside holds a secret, and data/link points at it
  local function scene()
    local d = tmpdir()
    fs.mkdir(d .. "/data")
    fs.mkdir(d .. "/outside")
    fs.write(d .. "/outside/secret", "s")
    fs.write(d .. "/data/a1", "1")
    fs.write(d .. "/data/b1", "1")
    local p = sandboxed(d, { "fs:" .. d .. "/data" }, [[
      local list = fs.glob(arg)
      fs.write(dir .. "/data/out", table.concat(list, "\n"))]])
    return d, p
  end

  it("lists what the scope holds, brace alternatives in turn", function()
    local d, p = scene()
    local r = run(p, d, d .. "/data/{b,a}*")
    eq(r.code, 0, r.stdout)
    eq(fs.read(d .. "/data/out"), d .. "/data/b1\n" .. d .. "/data/a1")
  end)

  it("refuses a brace alternative that starts outside, naming it, and returns nothing", function()
    local d, p = scene()
    for _, pattern in ipairs({ d .. "/data/{../outside/*,a*}", "{" .. d .. "/outside/*," .. d .. "/data/a*}" }) do
      local r = run(p, d, pattern)
      eq(r.code, 1, pattern .. ": " .. r.stdout)
      has(r.stdout, "sandbox: fs.glob needs the capability 'fs:" .. d .. "/outside', which the playbook does not " ..
        "declare", pattern)
      eq(fs.exists(d .. "/data/out"), false, pattern)
    end
  end)

  it("refuses '..' after a wildcard, and a match that resolves outside through a symlink", function()
    local d, p = scene()
    local r = run(p, d, d .. "/data/*/../../outside/*")
    eq(r.code, 1, r.stdout)
    has(r.stdout, "'..' after a wildcard is refused in the sandbox")
    exec.run({ "ln", "-s", d .. "/outside", d .. "/data/link" })
    r = run(p, d, d .. "/data/*/secret")
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: fs.glob needs the capability 'fs:" .. d .. "/outside/secret', which the playbook " ..
      "does not declare")
    eq(fs.exists(d .. "/data/out"), false)
  end)

  it("and every path is walked as the kernel walks it: '..' after a symlink goes up from its target", function()
    local d = tmpdir()
    fs.mkdir(d .. "/data")
    fs.mkdir(d .. "/outside/sub", { parents = true })
    exec.run({ "ln", "-s", d .. "/outside/sub", d .. "/data/l" })
    local p = sandboxed(d, { "fs:" .. d .. "/data" }, [[fs.write(dir .. "/data/l/../pwned", "x")]])
    local r = run(p, d)
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: fs.write needs the capability 'fs:" .. d .. "/outside/pwned'")
    eq(fs.exists(d .. "/outside/pwned"), false)
    eq(fs.exists(d .. "/data/pwned"), false)
  end)
end)

describe("fetched playbooks that are symlinks", function()
  local OUTSIDE = [[
return playbook {
  name = "outside", params = { out = "" }, capabilities = { "fs" },
  phase "p" { step "s" { run = function(ctx) fs.write(ctx.params.out, "ran unsandboxed") end } },
}
]]
  local INSIDE = [[
return playbook {
  name = "inside", params = { out = "" }, capabilities = { "fs:/nonexistent" },
  phase "p" { step "s" { run = function(ctx) fs.write(ctx.params.out, "escaped") end } },
}
]]

  -- A fetched repository whose escape.lua is a symlink to d/outside.lua, beside an
  -- honest inside.lua; → d, its checkout
  local function fetched()
    need("git")
    local d = tmpdir()
    fs.write(d .. "/outside.lua", OUTSIDE)
    local work = d .. "/work"
    exec.run({ "git", "init", "-q", "-b", "main", work })
    fs.write(work .. "/inside.lua", INSIDE)
    exec.run({ "ln", "-s", d .. "/outside.lua", work .. "/escape.lua" })
    exec.run({ "git", "-C", work, "add", "-A" })
    exec.run({ "git", "-C", work, "-c", "user.name=S", "-c", "user.email=s@example.org", "commit", "-q", "-m", "x" })
    local r = hrun_cmd({ "fetch", work, "shared", "--state", d .. "/state" })
    eq(r.code, 0, r.stdout .. r.stderr)
    return d, d .. "/state/playbooks/shared"
  end

  it("fetch.check refuses a playbook in a checkout that resolves outside it", function()
    local d, co = fetched()
    local check = require("hrun.fetch").check
    local ok_, why = check(co .. "/escape.lua")
    eq(ok_, nil)
    has(why, "refusing the playbook " .. co .. "/escape.lua: it is in the fetched repository " .. co ..
      " but resolves to " .. d .. "/outside.lua, outside it")
    -- a symlinked directory of the checkout pointing out, then "..": the same
    exec.run({ "ln", "-s", d, co .. "/up" })
    eq(check(co .. "/up/outside.lua"), nil)
    eq(check(d .. "/outside.lua"), false)
  end)

  it("fetch.check finds a checkout's playbook however its path is written", function()
    local d, co = fetched()
    local check = require("hrun.fetch").check
    eq(check(co .. "/inside.lua"), true)
    exec.run({ "ln", "-s", co .. "/inside.lua", d .. "/innocent.lua" })
    eq(check(d .. "/innocent.lua"), true, "a symlink elsewhere pointing into it")
    exec.run({ "ln", "-s", d .. "/state/playbooks", d .. "/pbs" })
    eq(check(d .. "/pbs/shared/inside.lua"), true, "through a symlinked directory")
    eq(check(d .. "/pbs/shared/../shared/./inside.lua"), true, "with '..' and '.'")
    eq(check("/proc/self/root" .. co .. "//inside.lua"), true, "through /proc")
    local here = fs.stat("/proc/self/cwd", { follow = false }).target
    local rel = string.rep("../", select(2, here:gsub("/[^/]+", ""))) .. co:sub(2) .. "/inside.lua"
    eq(check(rel), true, "relative: " .. rel)
  end)

  it("runs a playbook reached through a symlink into a checkout in the sandbox", function()
    local d, co = fetched()
    exec.run({ "ln", "-s", co .. "/inside.lua", d .. "/innocent.lua" })
    local r = hrun_cmd({ d .. "/innocent.lua", "--state", d .. "/state", "-p", "out=" .. d .. "/out" })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: fs.write needs the capability 'fs:" .. d .. "/out'")
    eq(fs.exists(d .. "/out"), false)
  end)

  it("refuses to run a checkout's symlink that points outside it", function()
    -- NEEDS-PLAY-LINE: play.lua's M.fetched must call fetch.check (see the report)
    local d, co = fetched()
    local r = hrun_cmd({ co .. "/escape.lua", "--state", d .. "/state", "-p", "out=" .. d .. "/out" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "refusing the playbook " .. co .. "/escape.lua: it is in the fetched repository")
    eq(fs.exists(d .. "/out"), false)
  end)
end)
