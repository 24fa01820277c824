-- The capability sandbox (--sandbox, and every playbook from hrun fetch): declared
-- capabilities and their scopes, refusals that name the capability, what plan and
-- check list, resume and rollback staying in the sandbox, the memory limit, the clean
-- environment, and the files root refuses to run.

local function run(args, env)
  return hrun_cmd(args, { env = env })
end

-- A playbook in d declaring caps; its one phase's steps from `steps` (source text).
local function sandboxed(d, caps, steps, params)
  return sandboxed_playbook(d, { caps = caps, steps = steps, params = 'dir = "", url = "" ' .. (params or "") })
end

describe("capabilities", function()
  it("are checked for their grammar, naming the file, line and field", function()
    local d = tmpdir()
    for _, case in ipairs({
      { "netw", "capabilities[1]: unknown capability 'netw' (did you mean 'net'?)" },
      { "fs:etc/nixos", "capabilities[1]: 'fs:etc/nixos': fs takes an absolute path (fs:/etc/nixos)" },
      { "net:ntfy.example", "capabilities[1]: 'net:ntfy.example': net takes a URL" },
      { "exec:", "capabilities[1]: 'exec:': the scope after ':' is empty" },
      { "exec:bin/sh", "capabilities[1]: 'exec:bin/sh': exec takes a program's name or absolute path" },
    }) do
      local p = sandboxed(d, { case[1] }, [[step "s" { run = function() end },]])
      local r = run({ "check", p, "--state", d .. "/state" })
      eq(r.code, 3, case[1])
      local line = 0 -- the field's own line
      for l in fs.read(p):gmatch("[^\n]*") do
        line = line + 1
        if l:find("capabilities", 1, true) then
          break
        end
      end
      has(r.stderr, p .. ":" .. line .. ": playbook: " .. case[2])
      r = run({ p, "--state", d .. "/state" })
      eq(r.code, 3, case[1])
      eq(fs.exists(d .. "/state/journal.db"), false, "nothing ran")
    end
  end)

  it("confine a sandboxed playbook's paths, and a failed step is rolled back", function()
    local d = tmpdir()
    local data = d .. "/data"
    fs.mkdir(data)
    fs.write(d .. "/outside", "keep")
    exec.run({ "ln", "-s", d .. "/outside", data .. "/link" })
    local p = sandboxed(d, { "fs:" .. data }, [[
    step "inside" { run = function(ctx) fs.write(ctx.params.dir .. "/new", "1") end },
    step "escape" { run = function(ctx)
      local how = ctx.params.url
      if how == "dotdot" then fs.write(ctx.params.dir .. "/../outside", "0wned") end
      if how == "link" then fs.write(ctx.params.dir .. "/link", "0wned") end
      if how == "read" then fs.read("/etc/hostname") end
      if how == "io" then io.open("/etc/hostname") end
    end },]])
    for _, how in ipairs({ "dotdot", "link", "read", "io" }) do
      local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. data, "-p", "url=" .. how })
      eq(r.code, 1, how .. ": " .. r.stdout)
      local need = how == "read" and "/etc/hostname" or how == "io" and "/etc/hostname" or d .. "/outside"
      local who = how == "io" and "io.open" or how == "read" and "fs.read" or "fs.write"
      has(r.stdout, string.format("pb.lua:%d: sandbox: %s needs the capability 'fs:%s', which the playbook " ..
        "does not declare (it declares: fs:%s)", how == "io" and 11 or how == "read" and 10 or
        how == "link" and 9 or 8, who, need, data), how)
      eq(fs.read(d .. "/outside"), "keep", how)
      eq(fs.exists(data .. "/new"), false, how .. ": the first step was rolled back")
    end
    -- the same playbook outside the sandbox may do it
    local r = run({ p, "--state", d .. "/state", "-p", "dir=" .. data, "-p", "url=dotdot" })
    eq(r.code, 0, r.stdout)
    eq(fs.read(d .. "/outside"), "0wned")
  end)

  it("confine programs, their undo commands, shells and URLs", function()
    local d = tmpdir()
    local u = http_server()
    local p = sandboxed(d, { "exec:true", "exec:/bin/echo", "net:" .. u .. "/echo" }, [[
    step "s" { run = function(ctx)
      local how = ctx.params.url
      exec.run({ "true" }, { readonly = true })
      exec.run({ "/usr/bin/true" }, { readonly = true })
      exec.run({ "echo", "by name, found on PATH" }, { readonly = true })
      http.get(ctx.params.dir .. "/echo/x")
      if how == "rm" then exec.run({ "rm", "-rf", ctx.params.dir }) end
      if how == "undo" then exec.run({ "true" }, { undo = { "rm", "-rf", "/" } }) end
      if how == "sh" then exec.sh("true") end
      if how == "url" then http.get(ctx.params.dir .. "/status/200") end
      if how == "port" then http.get("http://127.0.0.1:1/echo") end
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. u, "-p", "url=none" })
    eq(r.code, 0, r.stdout)
    for how, need in pairs({ rm = "exec.run needs the capability 'exec:rm'",
      undo = "exec.run needs the capability 'exec:rm'", sh = "exec.sh needs the capability 'exec:/usr/bin/sh'",
      url = "http.get needs the capability 'net:" .. u .. "'",
      port = "http.get needs the capability 'net:http://127.0.0.1:1'" }) do
      r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. u, "-p", "url=" .. how })
      eq(r.code, 1, how .. ": " .. r.stdout)
      has(r.stdout, "sandbox: " .. need, how)
    end
  end)

  it("may not be used before the run: a sandboxed playbook's file only builds tables", function()
    local d = tmpdir()
    local p = playbook_file(d, "early.lua", [[
local host = fs.read("/etc/hostname")
return playbook { name = "early", capabilities = { "fs" },
  phase "p" { step "s" { run = function() end } } }]])
    local r = run({ "check", p, "--sandbox", "--state", d })
    eq(r.code, 3)
    has(r.stderr, "early.lua:1: sandbox: fs.read while the playbook's file loads: a sandboxed playbook's file " ..
      "only builds tables (call it from a step)")
    r = run({ "check", p, "--state", d })
    eq(r.code, 0, r.stderr)
  end)

  it("are listed by plan (declared and used) and by check (from the source)", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d .. "/data", "exec:true" }, [[
    step "s" { run = function(ctx)
      fs.mkdir(ctx.params.dir, { parents = true })
      fs.write(ctx.params.dir .. "/x", "1")
      exec.run({ "true" })
      http.get(ctx.params.url)
    end },]])
    local r = run({ "plan", p, "--state", d .. "/state", "-p", "dir=" .. d .. "/data",
      "-p", "url=http://127.0.0.1:1/x" })
    has(r.stdout, "capabilities declared: fs:" .. d .. "/data, exec:true")
    has(r.stdout, "NOT DECLARED net:http://127.0.0.1:1 (http.get) — a sandboxed run refuses it")
    has(r.stdout, "ok exec:true (exec.run)")
    has(r.stdout, "ok fs:" .. d .. "/data/x (fs.write)")
    eq(fs.exists(d .. "/data"), false, "a plan changes nothing")
    local j = run({ "plan", p, "--json", "--state", d .. "/state", "-p", "dir=" .. d .. "/data",
      "-p", "url=http://127.0.0.1:1/x" })
    local ev
    for line in j.stdout:gmatch("[^\n]+") do
      local e = json.decode(line)
      if e.event == "capabilities" then
        ev = e
      end
    end
    eq(ev.declared, { "fs:" .. d .. "/data", "exec:true" })
    local undeclared = {}
    for _, u in ipairs(ev.used) do
      if not u.declared then
        undeclared[#undeclared + 1] = u.need
      end
    end
    eq(undeclared, { "net:http://127.0.0.1:1" })
    -- a warning (the playbook declares capabilities): exit 0, or 3 with --strict
    r = run({ "check", p, "--state", d .. "/state" })
    eq(r.code, 0)
    has(r.stderr, "hrun: warning: " .. p .. ":9: http.get needs the capability 'net', which the playbook does " ..
      "not declare")
    eq(run({ "check", p, "--strict", "--state", d .. "/state" }).code, 3)
    has(r.stdout, "capabilities used by name in the source: fs, exec:true, net (not declared)")
  end)

  it("stay in force when a sandboxed run is resumed after a crash, and rolled back", function()
    local d = tmpdir()
    local data = d .. "/data"
    fs.mkdir(data)
    local p = sandboxed(d, { "fs:" .. data }, [[
    step "one" { run = function(ctx) fs.write(ctx.params.dir .. "/one", "1") end },
    step "two" {
      run = function(ctx) fs.write(ctx.params.dir .. "/two", "2") end,
      undo = function(ctx) fs.write(ctx.params.url, "the undo escaped") end,
    },
    step "three" { run = function(ctx) fs.write(ctx.params.url, "escaped") end },]])
    local state = d .. "/state"
    local r = run({ p, "--sandbox", "--state", state, "-p", "dir=" .. data, "-p", "url=" .. d .. "/escaped" },
      { HRUN_TEST_CRASH = "step-done:2" })
    ok(r.code ~= 0, "killed")
    eq(fs.read(data .. "/two"), "2")
    eq(exec.run({ "sqlite3", state .. "/journal.db", "SELECT sandbox FROM runs" }).stdout, "1\n")
    r = run({ "resume", "--state", state })
    eq(r.code, 2, r.stdout)
    has(r.stdout, "sandbox: fs.write needs the capability 'fs:" .. d .. "/escaped'")
    has(r.stdout, "undo two: failed (undo)")
    eq(fs.exists(d .. "/escaped"), false)
    eq(fs.exists(data .. "/one"), false, "rolled back")
    eq(fs.read(data .. "/two"), "2", "its undo was refused: it is left, and the journal says so")
    -- hrun rollback runs the undo function again, in the sandbox again: refused again
    r = run({ "rollback", "--state", state })
    eq(r.code, 2, r.stdout)
    has(r.stdout, "undo two: failed (undo)")
    eq(fs.exists(d .. "/escaped"), false)
    -- --force undoes what is left through the journaled inverses
    r = run({ "rollback", "--force", "--state", state })
    eq(r.code, 0, r.stdout)
    has(r.stdout, "undo two: undone (inverses (--force: its undo function failed))")
    eq(fs.exists(data .. "/two"), false)
    eq(fs.exists(d .. "/escaped"), false)
  end)

  it("check a rollback's inverses again where they land: a link put in their path leads nowhere", function()
    local d = tmpdir()
    local area, outside = d .. "/area", d .. "/outside"
    fs.mkdir(area .. "/data", { parents = true })
    fs.mkdir(outside)
    fs.write(outside .. "/victim1", "precious 1\n")
    fs.write(outside .. "/victim2", "precious 2\n")
    exec.run({ "ln", "-s", outside, area .. "/data/L" })
    local p = sandboxed(d, { "fs:" .. area }, [[
    step "swap" { run = function(ctx)
      local A = ctx.params.dir
]] .. LINK_SWAP .. [[
    end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. area })
    eq(r.code, 2, r.stdout .. r.stderr)
    has(r.stdout, "needs the capability 'fs:" .. outside .. "/victim")
    eq(fs.read(outside .. "/victim1"), "precious 1\n", "not removed through the link")
    eq(fs.read(outside .. "/victim2"), "precious 2\n", "not written through the link")
  end)

  it("never cover hrun's own state, whatever they declare", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "plant" { run = function(ctx) fs.write(ctx.params.dir .. "/state/planted", "x") end },]])
    local r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "fs.write needs the capability 'fs:" .. d .. "/state/planted', which no sandboxed playbook " ..
      "may use, declared or not: it is hrun's own")
    eq(fs.exists(d .. "/state/planted"), false)
    p = sandboxed(d, { "fs:" .. d }, [[
    step "read" { run = function(ctx) fs.read(ctx.params.dir .. "/state/journal.db") end },]])
    r = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "fs.read needs the capability 'fs:" .. d .. "/state/journal.db', which no sandboxed playbook")
  end)

  it("give a sandboxed playbook only the manifests of trees it may hash", function()
    local d = tmpdir()
    fs.mkdir(d .. "/secret")
    fs.mkdir(d .. "/allowed")
    fs.write(d .. "/secret/key", "k")
    local state = d .. "/state"
    -- the admin's own baseline of a tree the playbook may not hash
    local admin = playbook_file(d, "admin.lua", [[
return playbook { name = "admin", params = { dir = "" },
  phase "p" { step "s" { run = function(ctx) hash.tree(ctx.params.dir .. "/secret", { save = "baseline" }) end } } }]])
    eq(run({ admin, "--state", state, "-p", "dir=" .. d }).code, 0)
    local cases = {
      { "list", [[local names = {}
        for _, m in ipairs(hash.manifests()) do names[#names + 1] = m.name end
        assert(#names == 0, "listed: " .. table.concat(names, ","))]] },
      { "verify", [[hash.verify("baseline", {})]], "hash.verify needs the capability 'hash:" .. d .. "/secret'" },
      { "export", [[hash.export("baseline", ctx.params.dir .. "/allowed/out")]],
        "hash.export needs the capability 'hash:" .. d .. "/secret'" },
      { "replace", [[hash.tree(ctx.params.dir .. "/allowed", { save = "baseline" })]],
        "hash.tree needs the capability 'hash:" .. d .. "/secret'" },
    }
    for _, c in ipairs(cases) do
      local p = sandboxed(d, { "hash:" .. d .. "/allowed", "fs:" .. d .. "/allowed" },
        'step "s" { run = function(ctx) ' .. c[2] .. " end },")
      local r = run({ p, "--sandbox", "--state", state, "-p", "dir=" .. d })
      if c[3] then
        eq(r.code, 1, c[1] .. ": " .. r.stdout .. r.stderr)
        has(r.stdout, c[3])
      else
        eq(r.code, 0, c[1] .. ": " .. r.stdout .. r.stderr)
      end
    end
    eq(fs.exists(d .. "/allowed/out"), false)
    -- the baseline is still the admin's
    local v = playbook_file(d, "v.lua", [[
return playbook { name = "v", params = { dir = "" },
  phase "p" { step "s" { run = function(ctx)
    local r = hash.verify("baseline", {})
    assert(r.ok, "the baseline was replaced")
  end } } }]])
    local r = run({ v, "--state", state, "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
  end)

  it("give a sandboxed playbook a memory limit, with a clear error", function()
    local d = tmpdir()
    local p = sandboxed(d, { "fs:" .. d }, [[
    step "first" { run = function(ctx) fs.write(ctx.params.dir .. "/first", "1") end },
    step "grow" { run = function()
      local t = {}
      for i = 1, 1e9 do t[i] = string.rep("x", 64) .. i end
    end },]])
    local r = run({ p, "--sandbox", "--memory-limit", "32M", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "step grow: failed")
    has(r.stdout, "memory limit reached: the playbook's process would pass 32 MiB (--memory-limit)")
    has(r.stdout, "failed and rolled back")
    eq(fs.exists(d .. "/first"), false)
    r = run({ p, "--sandbox", "--memory-limit", "lots", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 3)
    has(r.stderr, "--memory-limit lots: expected a size such as 512M or 2G")
  end)
end)

describe("the playbook environment", function()
  it("gives each playbook its own copies of the modules and hides strings' metatable", function()
    local d = tmpdir()
    local p = playbook_file(d, "copies.lua", [[
return playbook { name = "copies", params = { dir = "" },
  phase "p" {
    step "write" { run = function(ctx)
      fs.write(ctx.params.dir .. "/x", "1")
      fs.remove = function() error("the playbook's own remove") end
      assert(getmetatable("") == false and fs._restore == nil)
      error("fail, so that the engine's own fs.remove rolls back")
    end },
  } }]])
    local r = run({ p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "fail, so that the engine's own fs.remove rolls back")
    has(r.stdout, "undo write: undone")
    eq(fs.exists(d .. "/x"), false)
  end)
end)

describe("a step's timeout and Ctrl-C", function()
  it("stop a loop in a coroutine made before the step began", function()
    local d = tmpdir()
    local p = playbook_file(d, "co.lua", [[
local spin = coroutine.wrap(function() while true do end end)
local co = coroutine.create(function() while true do end end)
return playbook { name = "co", params = { how = "wrap" },
  phase "p" { step "s" { timeout = 0.5, run = function(ctx)
    if ctx.params.how == "wrap" then spin() else assert(coroutine.resume(co)) end
  end } } }]])
    for _, how in ipairs({ "wrap", "resume" }) do
      local r = run({ p, "--state", d .. "/state", "-p", "how=" .. how })
      eq(r.code, 1, how .. ": " .. r.stdout)
      has(r.stdout, "step 's' failed: timed out after 0.5 s")
    end
    local q = playbook_file(d, "int.lua", [[
local spin = coroutine.wrap(function() while true do end end)
return playbook { name = "int", phase "p" { step "s" { run = function() spin() end } } }]])
    local r = exec.sh(string.format("%s %s --state %s & pid=$!; sleep 1; kill -INT $pid; wait $pid; echo status=$?",
      shq(HRUN), shq(q), shq(d .. "/state2")), { check = false })
    has(r.stdout, "status=130")
  end)
end)

describe("files root runs", function()
  it("are refused when others could have changed them, with exit 3 and the reason", function()
    need_root()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
return playbook { name = "p", params = { x = "" }, phase "p" { step "s" { run = function() end } } }]])
    local params = playbook_file(d, "params.lua", [[return { x = "y" }]])
    local state = d .. "/state"
    eq(run({ p, "--params", params, "--state", state }).code, 0)
    exec.run({ "chmod", "g+w", p })
    local r = run({ p, "--state", state })
    eq(r.code, 3)
    has(r.stderr, "refusing the playbook " .. p .. ": " .. p .. " is writable by the group root (mode 0664)")
    exec.run({ "chmod", "g-w", p })
    exec.run({ "chmod", "o+w", params })
    r = run({ p, "--params", params, "--state", state })
    eq(r.code, 3)
    has(r.stderr, "refusing the params file " .. params .. ": " .. params .. " is writable by everyone")
    exec.run({ "chmod", "o-w", params })
    exec.run({ "chown", "nobody", p })
    r = run({ "check", p, "--state", state })
    eq(r.code, 3)
    has(r.stderr, p .. " is owned by nobody")
    exec.run({ "chown", "root", p })
    exec.run({ "chmod", "o+w", d })
    r = run({ "plan", p, "--state", state })
    eq(r.code, 3)
    has(r.stderr, "the directory " .. d .. " is writable by everyone")
    exec.run({ "chmod", "o+t", d }) -- sticky, as /tmp: others cannot replace root's file
    eq(run({ "plan", p, "--state", state }).code, 0)
    exec.run({ "chmod", "o-wt", d })
  end)

  it("state directory 0700 (tightened if looser), journal 0600", function()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
return playbook { name = "p", phase "p" { step "s" { run = function() end } } }]])
    local state = d .. "/state"
    eq(run({ p, "--state", state }).code, 0)
    eq(fs.stat(state).mode & 511, 448, "0700")
    eq(fs.stat(state .. "/journal.db").mode & 511, 384, "0600")
    exec.run({ "chmod", "0755", state })
    eq(run({ p, "--state", state }).code, 0)
    eq(fs.stat(state).mode & 511, 448, "0700 again")
  end)
end)
