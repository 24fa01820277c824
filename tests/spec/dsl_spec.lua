-- Playbook validation: every malformed playbook is refused before anything runs,
-- exit 3, with file:line naming the field; parameters; hrun check's lint.

local here = arg[0]:match("^(.*)/[^/]+$")
local corpus = here .. "/playbooks/bad"

describe("malformed playbooks", function()
  local files = fs.glob(corpus .. "/*.lua")
  it("make a corpus of at least 15", function()
    ok(#files >= 15, #files .. " files")
  end)
  for _, file in ipairs(files) do
    it("are refused: " .. file:match("[^/]+$"), function()
      local expect = fs.read(file):match("^%-%- expect: ([^\n]+)")
      local line, text = expect:match("^(%d+): (.*)$")
      local state = tmpdir()
      local r = hrun_cmd({ file, "--state", state })
      eq(r.code, 3, r.stderr)
      if line then
        has(r.stderr, file .. ":" .. line .. ": " .. text)
      else
        has(r.stderr, expect)
      end
      has(r.stderr, "nothing was run")
      eq(r.stdout, "")
      eq(fs.exists(state .. "/journal.db"), false, "nothing journaled")
      local c = hrun_cmd({ "check", file, "--state", state })
      eq(c.code, 3)
      has(c.stderr, text or expect)
    end)
  end

  it("name hosts that are not hosts, an `on` no host has, a capability of no host, at their lines", function()
    local d = tmpdir()
    local p = playbook_file(d, "hosts.lua", [[
return playbook {
  name = "hosts",
  hosts = { old = "ssh://root@zimaos.lan:2222", bad = "ssh://-oProxyCommand=sh", web = "http://x" },
  capabilities = { "fs@old:/DATA", "exec@nas:docker" },
  phase "one" {
    step "a" { on = "olt", run = function() end },
    step "b" { on = "local", run = function() end },
  },
}]])
    local r = hrun_cmd({ p, "--state", d })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, p .. ":3: playbook: hosts.bad: ssh://-oProxyCommand=sh: '-oProxyCommand=sh' is not a host name")
    has(r.stderr, p .. ":3: playbook: hosts.web: http://x: only ssh:// hosts are known (or \"local\")")
    has(r.stderr, p .. ":4: playbook: capabilities[2]: 'exec@nas:docker' names host 'nas', which the playbook's " ..
      "hosts do not have")
    has(r.stderr, p .. ":6: step 'a': on = \"olt\": the playbook has no such host")
    has(r.stderr, "(did you mean 'old'?)")
    eq(fs.exists(d .. "/journal.db"), false, "nothing journaled")
    -- -H: a host given on the command line is checked the same way
    local ok_pb = playbook_file(d, "ok.lua", [[
return playbook { name = "ok", phase "p" { step "s" { run = function() end } } }]])
    r = hrun_cmd({ ok_pb, "--state", d, "-H", "old=ssh://-x" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "-H old=ssh://-x: ssh://-x: '-x' is not a host name")
    r = hrun_cmd({ ok_pb, "--state", d, "-H", "nonsense" })
    eq(r.code, 3)
    has(r.stderr, "-H nonsense: expected NAME=URL")
  end)

  it("report every problem at once", function()
    local d = tmpdir()
    local p = playbook_file(d, "many.lua", [[
return playbook {
  name = "many",
  phase "one" {
    step "a" { rnu = function() end },
    step "b" { run = function() end, timeout = "x" },
  },
}]])
    local r = hrun_cmd({ p, "--state", d })
    eq(r.code, 3)
    has(r.stderr, p .. ":4: step 'a': unknown field 'rnu' (did you mean 'run'?)")
    has(r.stderr, p .. ":4: step 'a': has no run function")
    has(r.stderr, p .. ":5: step 'b': field 'timeout' must be a number, got string")
  end)

  -- a field's file:line is its own line, not its step's first line; a key of the same
  -- name inside the step's functions is not taken for it; in file order
  for _, sandbox in ipairs({ false, true }) do
    it("name each field's own line" .. (sandbox and " (--sandbox)" or ""), function()
      local d = tmpdir()
      local p = playbook_file(d, "fields.lua", [[
return playbook {
  name = "fields",
  on_failure = "later",
  phase "one" {
    step "a" {
      run = function()
        exec.run({ "true" }, { timeout = 1 })
      end,
      tiemout = 5,
    },
    step "b" {
      run = function() end,
      retries = 1.5,
      resume = "maybe",
    },
  },
}]])
      local r = hrun_cmd({ "check", p, "--state", d, sandbox and "--sandbox" or nil })
      eq(r.code, 3, r.stderr)
      has(r.stderr, p .. ":3: playbook: field 'on_failure' must be")
      has(r.stderr, p .. ":9: step 'a': unknown field 'tiemout' (did you mean 'timeout'?)")
      has(r.stderr, p .. ":13: step 'b': field 'retries' must be a whole number")
      has(r.stderr, p .. ":14: step 'b': field 'resume' must be")
      ok(r.stderr:find(":3: playbook", 1, true) < r.stderr:find(":9: step 'a'", 1, true), r.stderr)
      ok(r.stderr:find(":13: step 'b'", 1, true) < r.stderr:find(":14: step 'b'", 1, true), r.stderr)
    end)
  end
end)

local function simple(dir)
  return playbook_file(dir, "simple.lua", [[
return playbook {
  name = "simple",
  params = { count = 1, name = "x", enabled = false, list = { "a" } },
  phase "one" {
    step "show" {
      run = function(ctx)
        print(json.encode({ count = ctx.params.count, name = ctx.params.name,
          enabled = ctx.params.enabled, list = ctx.params.list }))
      end,
    },
  },
  phase "two" { step "later" { run = function() print("later") end } },
}]])
end

describe("parameters", function()
  it("come from -p, typed as their defaults", function()
    local d = tmpdir()
    local r = hrun_cmd({ simple(d), "--state", d, "-p", "count=3", "-p", "name=a b", "-p", "enabled=yes",
      "-p", 'list=["x","y"]' })
    eq(r.code, 0, r.stderr)
    local line = r.stdout:match("({[^\n]*})")
    eq(json.decode(line), { count = 3, name = "a b", enabled = true, list = { "x", "y" } })
  end)

  it("come from --params files, JSON or Lua", function()
    local d = tmpdir()
    fs.write(d .. "/p.json", '{"count": 7, "list": ["s1", "s2", "s3"]}')
    fs.write(d .. "/p.lua", 'return { name = "from lua" }')
    local r = hrun_cmd({ simple(d), "--state", d, "--params", d .. "/p.json", "--params", d .. "/p.lua" })
    eq(r.code, 0, r.stderr)
    eq(json.decode(r.stdout:match("({[^\n]*})")), { count = 7, name = "from lua", enabled = false,
      list = { "s1", "s2", "s3" } })
  end)

  it("must be declared and well typed", function()
    local d = tmpdir()
    local p = simple(d)
    local r = hrun_cmd({ p, "--state", d, "-p", "cuont=2" })
    eq(r.code, 3)
    has(r.stderr, "the playbook has no parameter 'cuont' (did you mean 'count'?)")
    r = hrun_cmd({ p, "--state", d, "-p", "count=many" })
    eq(r.code, 3)
    has(r.stderr, "parameter 'count' must be a number, got 'many'")
    r = hrun_cmd({ p, "--state", d, "-p", "noequals" })
    eq(r.code, 3)
    has(r.stderr, "-p noequals: expected key=value")
    fs.write(d .. "/bad.json", '{"count": "seven"}')
    r = hrun_cmd({ p, "--state", d, "--params", d .. "/bad.json" })
    eq(r.code, 3)
    has(r.stderr, "parameter 'count' must be a number, got string")
    eq(fs.exists(d .. "/journal.db"), false)
  end)

  it("declared required have no default: each must be given, and is typed", function()
    local d = tmpdir()
    local p = playbook_file(d, "rq.lua", [[
return playbook { name = "rq", params = { host = required "string", port = required "number", mode = "fast" },
  phase "p" { step "s" { run = function(ctx)
    print(require("hrun.json").encode({ host = ctx.params.host, port = ctx.params.port, mode = ctx.params.mode }))
  end } } }]])
    for _, extra in ipairs({ {}, { "--sandbox" }, { "--plan" } }) do
      local args = { p, "--state", d }
      table.move(extra, 1, #extra, #args + 1, args)
      local r = hrun_cmd(args)
      eq(r.code, 3, r.stdout)
      has(r.stderr, "parameter 'host' is required (a string, no default): give it with -p host=… or --params FILE")
      has(r.stderr, "parameter 'port' is required (a number, no default)")
    end
    eq(fs.exists(d .. "/journal.db"), false)
    local r = hrun_cmd({ p, "--state", d, "-p", "host=db.lan", "-p", "port=many" })
    eq(r.code, 3)
    has(r.stderr, "parameter 'port' must be a number, got 'many'")
    ok(not r.stderr:find("'port' is required", 1, true), "no second message for the same parameter")
    fs.write(d .. "/p.json", '{"host": "db.lan", "port": 5432}')
    for _, extra in ipairs({ {}, { "--sandbox" } }) do
      local args = { p, "--state", d, "--params", d .. "/p.json" }
      table.move(extra, 1, #extra, #args + 1, args)
      r = hrun_cmd(args)
      eq(r.code, 0, r.stdout .. r.stderr)
      eq(json.decode(r.stdout:match("({[^\n]*})")), { host = "db.lan", port = 5432, mode = "fast" })
    end
    local bad = playbook_file(d, "bad.lua", [[
return playbook { name = "bad", params = { n = required "int" },
  phase "p" { step "s" { run = function() end } } }]])
    r = hrun_cmd({ "check", bad })
    eq(r.code, 3)
    has(r.stderr, "bad.lua:1: playbook: params.n: required takes \"string\", \"number\", \"boolean\" or " ..
      "\"table\", got \"int\"")
  end)

  it("are read-only in ctx", function()
    local d = tmpdir()
    local p = playbook_file(d, "ro.lua", [[
return playbook { name = "ro", params = { x = 1 },
  phase "p" { step "s" { run = function(ctx) ctx.params.x = 2 end } } }]])
    local r = hrun_cmd({ p, "--state", d })
    eq(r.code, 1)
    has(r.stdout, "ctx.params is read-only (tried to set 'x')")
  end)
end)

describe("--from and --only", function()
  it("must name a step or phase of the playbook", function()
    local d = tmpdir()
    local p = simple(d)
    local r = hrun_cmd({ p, "--state", d, "--from", "shwo" })
    eq(r.code, 3)
    has(r.stderr, "--from shwo: the playbook has no step 'shwo' (did you mean 'show'?)")
    r = hrun_cmd({ p, "--state", d, "--only", "three" })
    eq(r.code, 3)
    has(r.stderr, "--only three: the playbook has no phase 'three'")
  end)

  it("select where to start and what to run", function()
    local d = tmpdir()
    local p = simple(d)
    local r = hrun_cmd({ p, "--state", d, "--from", "later" })
    eq(r.code, 0, r.stderr)
    has(r.stdout, "later")
    ok(not r.stdout:find('"count"', 1, true), "the step before --from did not run")
    r = hrun_cmd({ p, "--state", d, "--only", "one" })
    has(r.stdout, '"count"')
    ok(not r.stdout:find("\nlater\n", 1, true))
    r = hrun_cmd({ p, "--state", d, "--from", "two/later" })
    eq(r.code, 0)
  end)
end)

describe("hrun check", function()
  it("validates, counts and lints", function()
    local d = tmpdir()
    local r = hrun_cmd({ "check", simple(d), "--state", d })
    eq(r.code, 0, r.stderr)
    has(r.stdout, "simple — 2 phases, 2 steps, 0 checks\n  capabilities declared: none\n")
    local p = playbook_file(d, "lint.lua", [[
return playbook {
  name = "lint",
  phase "p" {
    step "s" {
      run = function(ctx)
        fs.wirte("/tmp/x", "y")
        leaked = 1
        os.execute("true")
        print(undefined_thing)
      end,
    },
  },
}]])
    r = hrun_cmd({ "check", p, "--state", d })
    eq(r.code, 3)
    has(r.stderr, "hrun: warning: " .. p .. ":7: sets the global 'leaked'")
    has(r.stderr, "hrun: error: " .. p .. ":9: undefined global 'undefined_thing'")
    has(r.stderr, "hrun: error: " .. p .. ":6: fs.wirte: fs has no such function (did you mean 'fs.write'?)")
    has(r.stderr, "hrun: error: " .. p .. ":8: os.execute: os has no such function in a playbook's environment")
    -- it declares no capability and is not sandboxed: no capability warnings to bury these in
    ok(not r.stderr:find("needs the capability", 1, true), r.stderr)
    eq(fs.exists(d .. "/journal.db"), false)
  end)

  it("names the file and line of a check that fails without saying why", function()
    local d = tmpdir()
    local p = playbook_file(d, "chk.lua", [[
return playbook {
  name = "chk",
  phase "p" {
    check "disk" (function() return false end),
    step "s" { run = function() end },
  },
}]])
    local r = hrun_cmd({ p, "--state", d })
    eq(r.code, 1, r.stdout)
    has(r.stdout, p .. ":4: the check returned false")
  end)

  it("exits 0 on warnings alone, 3 with --strict; capability warnings where capabilities count", function()
    local d = tmpdir()
    local src = [[
return playbook {
  name = "warn",%s
  phase "p" { step "s" { run = function() counter = 1; fs.write("/tmp/x", "y") end } },
}]]
    local p = playbook_file(d, "warn.lua", src:format(""))
    local r = hrun_cmd({ "check", p, "--state", d })
    eq(r.code, 0, r.stderr)
    has(r.stderr, "hrun: warning: " .. p .. ":3: sets the global 'counter' (use local)")
    ok(not r.stderr:find("capability", 1, true), r.stderr)
    r = hrun_cmd({ "check", p, "--strict", "--state", d })
    eq(r.code, 3)
    r = hrun_cmd({ "check", p, "--sandbox", "--state", d })
    eq(r.code, 0, r.stderr)
    has(r.stderr, "hrun: warning: " .. p .. ":3: fs.write needs the capability 'fs', which the playbook does " ..
      "not declare")
    p = playbook_file(d, "warn2.lua", src:format(' capabilities = { "exec" },'))
    r = hrun_cmd({ "check", p, "--json", "--state", d })
    eq(r.code, 0, r.stderr)
    local ev = json.decode(r.stdout)
    eq({ ev.ok, #ev.errors, #ev.warnings }, { true, 0, 2 })
  end)
end)

describe("the playbook environment", function()
  it("has the modules and no way around the journal", function()
    local d = tmpdir()
    local p = playbook_file(d, "env.lua", [[
return playbook {
  name = "env",
  phase "p" {
    step "s" {
      run = function()
        assert(fs and exec and json and sys and journal)
        assert(os.execute == nil and io.popen == nil and debug == nil and package == nil)
        assert(not pcall(io.open, "/tmp/hrun-env-test", "w"))
        assert(not pcall(load, string.dump(function() end), "x", "b"))
        assert(require("hrun.fs") == fs)
        assert(not pcall(require, "os"))
        print("env ok")
      end,
    },
  },
}]])
    local r = hrun_cmd({ p, "--state", d })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "env ok")
  end)
end)
