-- A plan a person can review: every planned write in full (long values folded below the
-- call, never a byte count), a unified diff for every change of a file's content (in
-- plans, and in runs with --diff), prune and restore previews that name what they
-- delete, keep and set aside, and steps that read what a planned write would change
-- shown `unknown` while the plan goes on.

-- A config of n numbered lines (about 33 bytes each).
local function config(n, changed)
  local lines = {}
  for i = 1, n do
    lines[i] = string.format("setting_%03d = value number %03d", i, i)
    if changed and changed[i] then
      lines[i] = changed[i]
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

-- The writer: fs.write of params.file with the content read from params.src (a file the
-- test writes), then a long command, then a step that reads what it wrote and one more
-- write after it.
local WRITER = [[
return playbook { name = "writer", params = { dir = "", src = "", file = "" },
  phase "p" {
    step "write" { run = function(ctx)
      fs.write(ctx.params.file, assert(fs.read(ctx.params.src)))
    end },
  },
}]]

local function plan(args, env)
  local r = hrun_cmd(args, { env = env })
  return r, r.stdout .. r.stderr
end

-- The lines of a text, without the plain output's timestamps.
local function untimed(text)
  local out = {}
  for line in text:gmatch("[^\n]*") do
    out[#out + 1] = (line:gsub("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ ", ""))
  end
  return out
end

-- Is `line` (after the indent) one of the lines of text?
local function has_line(text, line, what)
  for _, l in ipairs(untimed(text)) do
    if l:match("^%s*(.-)%s*$") == line then
      return true
    end
  end
  error(string.format("%s: no line %q in:\n%s", what or "output", line, text), 2)
end

local function lacks_line(text, line, what)
  for _, l in ipairs(untimed(text)) do
    if l:match("^%s*(.-)%s*$") == line then
      error(string.format("%s: the line %q should not be there:\n%s", what or "output", line, text), 2)
    end
  end
end

describe("a plan shows every write in full", function()
  it("shows all of a 3 KB new file, line by line, as a diff from nothing", function()
    local d = tmpdir()
    local content = config(100)
    ok(#content > 3000, "3 KB")
    fs.write(d .. "/src", content)
    local p = playbook_file(d, "w.lua", WRITER)
    local r, out = plan({ "plan", p, "--state", d .. "/state", "-p", "src=" .. d .. "/src", "-p",
      "file=" .. d .. "/app.conf" })
    eq(r.code, 0, out)
    has(out, "would fs.write " .. d .. "/app.conf (the content: the diff below)  [undo: fs.remove " .. d .. "/app.conf")
    has_line(out, "--- /dev/null")
    has_line(out, "+++ " .. d .. "/app.conf")
    has_line(out, "@@ -0,0 +1,100 @@")
    for i = 1, 100 do
      has_line(out, string.format("+setting_%03d = value number %03d", i, i))
    end
    ok(not out:find("bytes)", 1, true), "no byte count: " .. out)
    eq(fs.exists(d .. "/app.conf"), false, "the plan wrote nothing")
  end)

  it("diffs a changed file: only the changed hunks, with three lines of context", function()
    local d = tmpdir()
    fs.write(d .. "/app.conf", config(60))
    fs.write(d .. "/src", config(60, { [5] = "setting_005 = five", [40] = "setting_040 = forty" }))
    local before = fs.read(d .. "/app.conf")
    local p = playbook_file(d, "w.lua", WRITER)
    local r, out = plan({ "plan", p, "--state", d .. "/state", "-p", "src=" .. d .. "/src", "-p",
      "file=" .. d .. "/app.conf" })
    eq(r.code, 0, out)
    has_line(out, "--- " .. d .. "/app.conf")
    has_line(out, "+++ " .. d .. "/app.conf")
    has_line(out, "@@ -2,7 +2,7 @@")
    has_line(out, "-setting_005 = value number 005")
    has_line(out, "+setting_005 = five")
    has_line(out, "@@ -37,7 +37,7 @@")
    has_line(out, "-setting_040 = value number 040")
    has_line(out, "+setting_040 = forty")
    for _, i in ipairs({ 2, 4, 8, 37, 43 }) do
      has_line(out, string.format("setting_%03d = value number %03d", i, i), "context")
    end
    for _, i in ipairs({ 1, 9, 20, 36, 44, 60 }) do
      lacks_line(out, string.format("setting_%03d = value number %03d", i, i), "outside the hunks")
    end
    eq(fs.read(d .. "/app.conf"), before, "the plan changed nothing")
  end)

  it("folds a long command and a long option below the call, in full", function()
    local d = tmpdir()
    local script = "for f in alpha beta gamma delta epsilon zeta eta theta iota kappa lambda; do echo \"$f\"; " ..
      "done > /dev/null; echo the end"
    ok(#script > 100, "longer than a line keeps")
    local p = playbook_file(d, "sh.lua", string.format([[
return playbook { name = "sh",
  phase "p" {
    step "run it" { run = function() exec.sh(%q, { undo = "true" }) end },
    step "copy" { run = function(ctx)
      btrfs.snapshot(%q, %q)
    end },
  } }]], script, d .. "/a/long/path/to/a/subvolume/that/is/over/sixty/bytes/long/data",
      d .. "/a/long/path/to/a/subvolume/that/is/over/sixty/bytes/long/data.pre"))
    local r, out = plan({ "plan", p, "--state", d .. "/state" })
    eq(r.code, 0, out)
    has(out, "would exec.sh «1»  [undo: exec.sh true]")
    has_line(out, "«1» " .. script)
    has(out, "would btrfs.snapshot " .. d .. "/a/long/path/to/a/subvolume/that/is/over/sixty/bytes/long/data " .. d ..
      "/a/long/path/to/a/subvolume/that/is/over/sixty/bytes/long/data.pre  [undo: btrfs.delete")
    ok(not out:find("bytes)", 1, true), "no byte count: " .. out)
  end)

  it("masks a secret in a written file's diff, in a plan and with --diff in a run", function()
    local d = tmpdir()
    local secret = "S3cr3t-Pa55w0rd-xyz"
    local key = "-----BEGIN TEST KEY-----\nMIIEowIBAAKCAQEAx1y2z3qTest\nZmFrZWtleWJvZHlsaW5lMgTest\n" ..
      "-----END TEST KEY-----"
    fs.mkdir(d .. "/creds", { mode = "0700" })
    fs.write(d .. "/creds/tok", secret .. "\n", { mode = "0600" })
    fs.write(d .. "/creds/key", key .. "\n", { mode = "0600" })
    fs.write(d .. "/app.conf", "user = app\npassword = old\n")
    local p = playbook_file(d, "s.lua", [[
return playbook { name = "secret", params = { dir = "" },
  phase "p" {
    step "configure" { run = function(ctx)
      fs.write(ctx.params.dir .. "/app.conf", "user = app\npassword = " .. secrets.read("tok") .. "\n")
      fs.write(ctx.params.dir .. "/key.pem", secrets.read("key"))
    end },
  } }]])
    local env = { CREDENTIALS_DIRECTORY = d .. "/creds" }
    for _, args in ipairs({ { "plan", p }, { p, "--diff" } }) do
      args[#args + 1] = "--state"
      args[#args + 1] = d .. "/state"
      args[#args + 1] = "-p"
      args[#args + 1] = "dir=" .. d
      local r, out = plan(args, env)
      eq(r.code, 0, out)
      has_line(out, "-password = old")
      has_line(out, "+password = <secret>")
      has_line(out, "+<secret>", "the key, masked whole")
      for _, needle in ipairs({ secret, "MIIEowIBAAKCAQEAx1y2z3qTest", "ZmFrZWtleWJvZHlsaW5lMgTest" }) do
        ok(not out:find(needle, 1, true), args[1] .. " shows " .. needle .. ":\n" .. out)
      end
    end
    eq(fs.read(d .. "/app.conf"), "user = app\npassword = " .. secret .. "\n", "the run wrote the secret itself")
  end)
end)

describe("a copy over a file, and -v", function()
  it("diffs fs.copy of a file over another in a plan", function()
    local d = tmpdir()
    fs.write(d .. "/live.conf", config(12))
    fs.write(d .. "/staged.conf", config(12, { [6] = "setting_006 = six" }))
    local p = playbook_file(d, "c.lua", [[
return playbook { name = "copy", params = { dir = "" },
  phase "p" { step "copy" { run = function(ctx)
    fs.copy(ctx.params.dir .. "/staged.conf", ctx.params.dir .. "/live.conf")
  end } } }]])
    local r, out = plan({ "plan", p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, out)
    has(out, "would fs.copy " .. d .. "/staged.conf " .. d .. "/live.conf  [undo: ")
    has_line(out, "--- " .. d .. "/live.conf")
    has_line(out, "-setting_006 = value number 006")
    has_line(out, "+setting_006 = six")
    eq(fs.read(d .. "/live.conf"), config(12))
  end)

  it("shows a run's writes in full with -v: a long content folded, every line", function()
    local d = tmpdir()
    fs.write(d .. "/src", config(40))
    local p = playbook_file(d, "w.lua", WRITER)
    local r, out = plan({ p, "-v", "--state", d .. "/state", "-p", "src=" .. d .. "/src", "-p",
      "file=" .. d .. "/app.conf" })
    eq(r.code, 0, out)
    has(out, "-> fs.write " .. d .. "/app.conf «1»  [undo: fs.remove " .. d .. "/app.conf")
    has_line(out, "«1» setting_001 = value number 001")
    for i = 2, 40 do
      has_line(out, string.format("setting_%03d = value number %03d", i, i))
    end
    ok(not out:find("bytes)", 1, true), "no byte count: " .. out)
  end)
end)

describe("--diff", function()
  it("shows each file change of a run as a diff, before the write", function()
    local d = tmpdir()
    fs.write(d .. "/app.conf", config(20))
    fs.write(d .. "/src", config(20, { [10] = "setting_010 = ten" }))
    local p = playbook_file(d, "w.lua", WRITER)
    local args = { p, "--state", d .. "/state", "-p", "src=" .. d .. "/src", "-p", "file=" .. d .. "/app.conf" }
    -- without it, a run shows no diff
    local r, out = plan(args)
    eq(r.code, 0, out)
    ok(not out:find("+setting_010", 1, true), out)
    fs.write(d .. "/app.conf", config(20))
    args[#args + 1] = "--diff"
    r, out = plan(args)
    eq(r.code, 0, out)
    has(out, "-> fs.write " .. d .. "/app.conf (the content: the diff below)  [undo: fs._restore " .. d .. "/app.conf")
    has_line(out, "@@ -7,7 +7,7 @@")
    has_line(out, "-setting_010 = value number 010")
    has_line(out, "+setting_010 = ten")
    eq(fs.read(d .. "/app.conf"), config(20, { [10] = "setting_010 = ten" }))
    -- the same as --json events: the preview in the effect event
    fs.write(d .. "/app.conf", config(20))
    args[#args + 1] = "--json"
    r = hrun_cmd(args)
    local found
    for line in r.stdout:gmatch("[^\n]+") do
      local ev = json.decode(line)
      if ev.event == "effect" and ev.op == "fs.write" then
        found = ev.preview
      end
    end
    ok(found, "a preview in the effect event: " .. r.stdout)
    eq({ found.diff, found.added, found.removed, found.path }, { true, 1, 1, d .. "/app.conf" })
  end)
end)

describe("steps that read what a planned write changes", function()
  local READER = [[
return playbook { name = "reader", params = { dir = "" },
  phase "p" {
    step "make" { run = function(ctx) fs.write(ctx.params.dir .. "/made", "ready\n") end },
    step "use" { run = function(ctx)
      local text = assert(fs.read(ctx.params.dir .. "/made"))
      fs.write(ctx.params.dir .. "/used", text)
    end },
    step "after" { run = function(ctx) fs.write(ctx.params.dir .. "/after", "x") end },
  },
  phase "later" {
    step "last" { run = function(ctx) fs.write(ctx.params.dir .. "/last", "y") end },
  },
}]]

  it("are unknown: the plan goes on with the steps after them, and exits 0", function()
    local d = tmpdir()
    local p = playbook_file(d, "r.lua", READER)
    local r, out = plan({ "plan", p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, out)
    has(out, "step use: unknown")
    has(out, "fails now (" .. p .. ":5: fs.read: " .. d .. "/made: No such file or directory), " ..
      "before the writes planned above")
    has(out, "would fs.write " .. d .. "/after x")
    has(out, "would fs.write " .. d .. "/last y")
    has(out, "step after: planned")
    has(out, "plan: 3 writes, 1 step or check unknown until the run (it reads what the planned writes change); " ..
      "nothing was changed")
    eq(fs.list(d), { "r.lua" }, "nothing made")
    -- as events
    r = hrun_cmd({ "plan", p, "--json", "--state", d .. "/state", "-p", "dir=" .. d })
    local statuses, last = {}, nil
    for line in r.stdout:gmatch("[^\n]+") do
      local ev = json.decode(line)
      if ev.event == "step-end" then
        statuses[#statuses + 1] = ev.step .. "=" .. ev.status
      elseif ev.event == "run-end" then
        last = ev
      end
    end
    eq(statuses, { "make=planned", "use=unknown", "after=planned", "last=planned" })
    eq({ last.status, last.exit, last.unknown, last.planned }, { "planned", 0, 1, 3 })
    -- the run itself does it all
    r = hrun_cmd({ p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/used"), "ready\n")
  end)

  it("fail the plan when no write was planned before them", function()
    local d = tmpdir()
    local p = playbook_file(d, "r.lua", (READER:gsub('step "make" {.-end },\n', "")))
    local r, out = plan({ "plan", p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 1, out)
    has(out, "step use: failed")
    has(out, "fs.read: " .. d .. "/made: No such file or directory")
    ok(not out:find("fails now", 1, true) and out:find("unknown=0", 1, true), out)
  end)

  it("are unknown in a sandboxed plan too, with the diffs and the folded values", function()
    local d = tmpdir()
    fs.write(d .. "/app.conf", config(30))
    local p = sandboxed_playbook(d, { caps = { "fs:" .. d }, params = 'dir = ""', steps = string.format([[
    step "write" { run = function(ctx)
      local text = assert(fs.read(ctx.params.dir .. "/app.conf"))
      fs.write(ctx.params.dir .. "/app.conf", (text:gsub("value number 015", "fifteen")))
      fs.write(ctx.params.dir .. "/new.conf", %q)
    end },
    step "read" { run = function(ctx) assert(fs.read(ctx.params.dir .. "/new.conf")) end },
    step "after" { run = function(ctx) fs.write(ctx.params.dir .. "/after", "x") end },]], config(5)) })
    local r, out = plan({ "plan", p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, out)
    has(out, "sandbox: a process of its own")
    has_line(out, "@@ -12,7 +12,7 @@")
    has_line(out, "-setting_015 = value number 015")
    has_line(out, "+setting_015 = fifteen")
    has_line(out, "--- /dev/null")
    has_line(out, "+setting_005 = value number 005")
    has(out, "step read: unknown")
    has(out, "would fs.write " .. d .. "/after x")
    has(out, "1 step or check unknown until the run")
    eq(fs.read(d .. "/app.conf"), config(30), "the plan changed nothing")
  end)
end)

describe("prune and restore in a plan", function()
  local names = {
    "data.2024-01-15T12:00:00Z", "data.2024-02-10T12:00:00Z", "data.2024-02-20T12:00:00Z",
    "data.2024-03-01T09:00:00Z", "data.2024-03-01T18:00:00Z", "data.2024-03-02T08:00:00Z",
    "data.2024-03-02T20:00:00Z", "data.2024-03-03T07:00:00Z", "data.2024-03-03T08:00:00Z",
    "data.2024-03-03T08:30:00Z",
  }
  local PRUNER = [[
return playbook { name = "pruner", params = { mnt = "" },
  phase "p" {
    step "prune" { irreversible = true, run = function(ctx)
      local res = assert(btrfs.prune(ctx.params.mnt .. "/snaps", { keep_last = 2, keep_daily = 3, keep_monthly = 3 }))
      ctx.log("deleted: %s", table.concat(res.deleted, " "))
      ctx.log("kept: %s", table.concat(res.kept, " "))
    end },
  } }]]

  local function listing(mnt)
    local out = {}
    for _, e in ipairs(btrfs.list(mnt)) do
      out[#out + 1] = e.rel
    end
    table.sort(out)
    return out
  end

  it("names exactly the snapshots a prune would delete and keep, as the prune then does", function()
    local mnt, _, dir = btrfs_volume(1)
    btrfs.create(mnt .. "/@data")
    fs.mkdir(mnt .. "/snaps")
    for _, n in ipairs(names) do
      btrfs.snapshot(mnt .. "/@data", mnt .. "/snaps/" .. n, { readonly = true })
    end
    local p = playbook_file(dir, "prune.lua", PRUNER)
    local before = listing(mnt)
    local r, out = plan({ "plan", p, "--state", dir .. "/state", "-p", "mnt=" .. mnt }, { TZ = "UTC" })
    eq(r.code, 0, out)
    eq(listing(mnt), before, "the plan deleted nothing")
    local deleted = { "data.2024-03-03T07:00:00Z", "data.2024-03-02T08:00:00Z", "data.2024-03-01T09:00:00Z",
      "data.2024-02-10T12:00:00Z" }
    local kept = { "data.2024-03-03T08:30:00Z", "data.2024-03-03T08:00:00Z", "data.2024-03-02T20:00:00Z",
      "data.2024-03-01T18:00:00Z", "data.2024-02-20T12:00:00Z", "data.2024-01-15T12:00:00Z" }
    has_line(out, "in " .. mnt .. "/snaps: deletes 4, keeps 6")
    for _, n in ipairs(deleted) do
      has_line(out, "- delete " .. n)
    end
    for _, n in ipairs(kept) do
      has_line(out, "keep   " .. n)
    end
    ok(not out:find("kept 0, deleted 0", 1, true), out)
    -- what the plan's stand-in returned: the preview's lists
    has_line(out, "deleted: " .. table.concat(deleted, " "))
    has_line(out, "kept: " .. table.concat(kept, " "))
    -- the run deletes those, and keeps those
    r, out = plan({ p, "--state", dir .. "/state", "-p", "mnt=" .. mnt }, { TZ = "UTC" })
    eq(r.code, 0, out)
    has_line(out, "deleted: " .. table.concat(deleted, " "))
    local left = {}
    for _, n in ipairs(kept) do
      left[#left + 1] = "snaps/" .. n
    end
    left[#left + 1] = "@data"
    table.sort(left)
    eq(listing(mnt), left)
  end)

  it("says what a restore makes the target and where the current one is set aside", function()
    local mnt, _, dir = btrfs_volume(1)
    btrfs.create(mnt .. "/@data")
    btrfs.snapshot(mnt .. "/@data", mnt .. "/pre", { readonly = true })
    local p = playbook_file(dir, "restore.lua", [[
return playbook { name = "restore", params = { mnt = "" },
  phase "p" {
    step "restore" { run = function(ctx)
      local aside = btrfs.restore(ctx.params.mnt .. "/pre", ctx.params.mnt .. "/@data")
      ctx.log("aside: %s", tostring(aside))
      local none = btrfs.restore(ctx.params.mnt .. "/pre", ctx.params.mnt .. "/@fresh")
      ctx.log("no target: %s", tostring(none))
    end },
  } }]])
    local before = listing(mnt)
    local r, out = plan({ "plan", p, "--state", dir .. "/state", "-p", "mnt=" .. mnt })
    eq(r.code, 0, out)
    local aside = out:match("sets the current " .. mnt:gsub("%p", "%%%0") .. "/@data aside as (%S+)")
    ok(aside and aside:match("/@data%.hrun%-%d+T%d+%.%d+Z$"), "the aside's name: " .. out)
    has_line(out, mnt .. "/@data becomes a writable snapshot of " .. mnt .. "/pre")
    has_line(out, "aside: " .. aside)
    has_line(out, mnt .. "/@fresh becomes a writable snapshot of " .. mnt .. "/pre (there is no target to set aside)")
    has_line(out, "no target: false")
    eq(listing(mnt), before, "the plan changed nothing")
    -- a restore from what is not a subvolume: the plan says the restore fails, as the run
    fs.mkdir(mnt .. "/plain")
    p = playbook_file(dir, "bad.lua", [[
return playbook { name = "bad", params = { mnt = "" },
  phase "p" { step "restore" { run = function(ctx)
    assert(btrfs.restore(ctx.params.mnt .. "/plain", ctx.params.mnt .. "/@data"))
  end } } }]])
    r, out = plan({ "plan", p, "--state", dir .. "/state", "-p", "mnt=" .. mnt })
    eq(r.code, 1, out)
    has(out, "the restore fails: btrfs.restore: " .. mnt .. "/plain: not a btrfs subvolume")
  end)
end)

describe("flake edits in a plan", function()
  it("diff the flake.nix text, a second edit against the first's result", function()
    local dir, env = nix_host()
    local etc = dir .. "/etc-nixos"
    local before = fs.read(etc .. "/flake.nix")
    local old = before:match('nixpkgs%.url%s*=%s*"([^"]+)"') or before:match('url%s*=%s*"(path:[^"]*pkgs[^"]*)"')
    ok(old, "the fixture's nixpkgs URL:\n" .. before)
    local p = playbook_file(dir, "flake.lua", string.format([[
return playbook { name = "flake",
  phase "p" {
    step "inputs" { run = function()
      nixos.flake_set_input(%q, "nixpkgs", "path:%s/pkgs-24.11")
      nixos.flake_set_input(%q, "nixpkgs", "path:%s/pkgs-25.05")
    end },
  } }]], etc .. "/flake.nix", dir, etc .. "/flake.nix", dir))
    local e = {}
    for k, v in pairs(env) do
      e[k] = v
    end
    local r = hrun_cmd({ "plan", p, "--state", dir .. "/state" }, { env = e, cwd = env.HOME })
    local out = r.stdout .. r.stderr
    eq(r.code, 0, out)
    has_line(out, "--- " .. etc .. "/flake.nix")
    local minus, plus = {}, {}
    for _, l in ipairs(untimed(out)) do
      local sign, rest = l:match("^%s*([%+%-])([^%+%-].*)$")
      if sign == "-" and rest:find("pkgs", 1, true) then
        minus[#minus + 1] = rest
      elseif sign == "+" and rest:find("pkgs", 1, true) then
        plus[#plus + 1] = rest
      end
    end
    eq(#minus, 2, out)
    has(minus[1], old)
    has(plus[1], "path:" .. dir .. "/pkgs-24.11")
    has(minus[2], "path:" .. dir .. "/pkgs-24.11", "the second diffs against the first's result")
    has(plus[2], "path:" .. dir .. "/pkgs-25.05")
    eq(fs.read(etc .. "/flake.nix"), before, "the plan changed nothing")
  end)
end)
