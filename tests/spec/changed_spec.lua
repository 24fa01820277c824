-- Changed or ok: a write that would change nothing (the same bytes, the directory there,
-- the tag already so, the guard's path there) neither acts nor is journaled; each step
-- ends changed or ok; a recap per phase and per run in every output and in the journal.
-- A playbook run again on an unchanged host says changed=0.

local bench20 = arg[0]:match("^(.*)/tests/[^/]+$") .. "/bench/steps20.lua"

-- The journal of state: the effects of run n, and its steps' (name = changed) columns.
local function journaled(state, run)
  local db = state .. "/journal.db"
  local effects = sqlite.query(db, "SELECT op FROM effects WHERE run = ? ORDER BY id", { run })
  local steps = {}
  for _, s in ipairs(sqlite.query(db, "SELECT name, changed FROM steps WHERE run = ? AND kind = 'step'", { run })) do
    steps[s.name] = s.changed
  end
  local ops = {}
  for _, e in ipairs(effects) do
    ops[#ops + 1] = e.op
  end
  return ops, steps
end

-- The events of a --json run, by kind.
local function events(out)
  local by = {}
  for line in out:gmatch("[^\n]+") do
    local ev = json.decode(line)
    by[ev.event] = by[ev.event] or {}
    table.insert(by[ev.event], ev)
  end
  return by
end

local FILES = [[
    step "write" { run = function(ctx) fs.write(ctx.params.dir .. "/conf", "port = 8080\n", { mode = "0640" }) end },
    step "mkdir" { run = function(ctx) fs.mkdir(ctx.params.dir .. "/d") end },
    step "remove" { run = function(ctx) fs.remove(ctx.params.dir .. "/old", { force = true }) end },
    step "copy" { run = function(ctx) fs.copy(ctx.params.dir .. "/conf", ctx.params.dir .. "/conf.bak") end },
    step "count" { run = function(ctx) exec.sh("echo x >> " .. ctx.params.dir .. "/ran", { changed = false }) end },
    step "once" { run = function(ctx)
      exec.sh("echo once >> " .. ctx.params.dir .. "/once", { creates = ctx.params.dir .. "/once" })
    end },
    step "unless" { run = function(ctx)
      exec.run({ "rm", ctx.params.dir .. "/flag" }, { removes = ctx.params.dir .. "/flag" })
    end },
]]

local function files_playbook(d, o)
  o = o or {}
  return sandboxed_playbook(d, { file = o.file or "files.lua", name = "files",
    params = string.format("dir = %q", d .. "/t"),
    caps = { "fs:" .. d .. "/t", "exec:/bin/sh", "exec:/usr/bin/rm", "exec:/bin/rm" }, steps = FILES })
end

describe("a write already so", function()
  it("neither acts nor journals; a rerun says changed=0 with the steps ok", function()
    local d = tmpdir()
    fs.mkdir(d .. "/t")
    fs.write(d .. "/t/old", "x")
    fs.write(d .. "/t/flag", "x")
    local pb, state = files_playbook(d), d .. "/state"
    local r = hrun_cmd({ pb, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "step write: changed")
    has(r.stdout, "step count: ok", "exec with changed = false runs, is journaled, counts ok")
    has(r.stdout, "recap p: ok=1 changed=6 skipped=0 failed=0")
    has(r.stdout, "recap: ok=1 changed=6 skipped=0 failed=0")
    local ops, steps = journaled(state, 1)
    eq(ops, { "fs.write", "fs.mkdir", "fs.remove", "fs.copy", "exec.sh", "exec.sh", "exec.run" })
    eq(steps, { write = 1, mkdir = 1, remove = 1, copy = 1, count = 0, once = 1, unless = 1 })
    local before = tree(d .. "/t")

    r = hrun_cmd({ pb, "--state", state, "-v" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "recap: ok=7 changed=0 skipped=0 failed=0")
    has(r.stdout, "ok fs.write " .. d .. "/t/conf")
    has(r.stdout, "(already so)")
    has(r.stdout, "(already so: creates: " .. d .. "/t/once exists)")
    has(r.stdout, "(already so: removes: " .. d .. "/t/flag does not exist)")
    ops, steps = journaled(state, 2)
    eq(ops, { "exec.sh" }, "only the command with changed = false ran and was journaled")
    eq(steps, { write = 0, mkdir = 0, remove = 0, copy = 0, count = 0, once = 0, unless = 0 })
    local after_ = tree(d .. "/t")
    eq(after_["ran"], "file 644 x\nx\n", "changed = false: the command ran both times")
    after_["ran"], before["ran"] = nil, nil
    eq(after_, before, "nothing else was touched")
    eq(fs.read(d .. "/t/once"), "once\n", "creates: the command ran once")
  end)

  it("is a change when the bytes or the mode differ, and rolls back as one", function()
    local d = tmpdir()
    fs.mkdir(d .. "/t")
    local pb, state = files_playbook(d), d .. "/state"
    eq(hrun_cmd({ pb, "--state", state }).code, 0)
    exec.run({ "chmod", "0600", d .. "/t/conf" })
    fs.write(d .. "/t/conf.bak", "port = 9090\n")
    local r = hrun_cmd({ pb, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "step write: changed")
    has(r.stdout, "step copy: changed")
    has(r.stdout, "recap: ok=5 changed=2 skipped=0 failed=0")
    eq(journaled(state, 2), { "fs.write", "fs.copy", "exec.sh" })
    eq(fs.stat(d .. "/t/conf").mode, tonumber("640", 8))
    eq(fs.read(d .. "/t/conf.bak"), "port = 8080\n")
  end)

  it("says so in the plan, not counted as planned; a write after a planned one to the same file stays planned",
    function()
      local d = tmpdir()
      fs.mkdir(d .. "/t")
      fs.write(d .. "/t/a", "one")
      local pb = playbook_file(d, "pb.lua", string.format([[
return playbook {
  name = "twice",
  phase "p" {
    step "same" { run = function() fs.write(%q, "one") end },
    step "other" { run = function() fs.write(%q, "two") end },
    step "back" { run = function() fs.write(%q, "one") end },
  },
}]], d .. "/t/a", d .. "/t/a", d .. "/t/a"))
      local r = hrun_cmd({ "plan", pb })
      eq(r.code, 0, r.stdout .. r.stderr)
      has(r.stdout, "ok fs.write " .. d .. "/t/a one (already so)")
      has(r.stdout, "plan: 2 writes")
      has(r.stdout, "recap: ok=1 changed=2 skipped=0 failed=0 unknown=0")
      r = hrun_cmd({ "plan", "--json", pb })
      local ev = events(r.stdout)
      eq(#ev.effect, 3)
      eq({ ev.effect[1].unchanged, ev.effect[1].planned }, { true, true })
      eq({ ev.effect[2].unchanged, ev.effect[3].unchanged }, { nil, nil })
      eq(fs.read(d .. "/t/a"), "one", "a plan changes nothing")
    end)

  it("plans a guarded command whose path an earlier planned write makes or removes", function()
    local d = tmpdir()
    local pb = playbook_file(d, "pb.lua", string.format([[
return playbook {
  name = "guards",
  phase "p" {
    step "make" { run = function() fs.write(%q, "1") end },
    step "cleanup" { run = function() exec.run({ "rm", %q }, { removes = %q }) end },
    step "init" { run = function() exec.run({ "touch", "flag" }, { creates = "flag", cwd = %q }) end },
  },
}]], d .. "/flag", d .. "/flag", d .. "/flag", d))
    local r = hrun_cmd({ "plan", pb })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "plan: 3 writes")
    ok(not r.stdout:find("already so", 1, true), r.stdout)
  end)

  it("validates the guards like the other options", function()
    local d = tmpdir()
    local pb = playbook_file(d, "pb.lua", [[
return playbook {
  name = "bad",
  phase "p" { step "s" { run = function() exec.run({ "true" }, { creates = 5 }) end } },
}]])
    local r = hrun_cmd({ pb, "--state", d .. "/state" })
    eq(r.code, 1)
    has(r.stdout, "bad argument #2 to 'exec.run' (field 'creates'")
    r = hrun_chunk({}, 'print(pcall(exec.run, { "true" }, { changed = "no" }))')
    has(r, "field 'changed'")
    r = hrun_chunk({}, 'print(pcall(exec.sh, "true", { removes = "" }))')
    has(r, "field 'removes': a path expected")
    r = hrun_chunk({}, 'print(pcall(exec.sh, "true", { creatse = "/x" }))')
    has(r, "creatse")
    -- outside a run too: the guard skips the command
    r = hrun_chunk({}, string.format('print(exec.sh("echo ran > %s/x", { creates = "%s" }).skipped)', d, d))
    eq(r, "creates: " .. d .. " exists\n")
    eq(fs.exists(d .. "/x"), false)
  end)
end)

describe("the recap", function()
  it("is a --json event per phase and per run, and in show and show --md from the journal", function()
    local d = tmpdir()
    fs.mkdir(d .. "/t")
    local pb = playbook_file(d, "pb.lua", string.format([[
return playbook {
  name = "two phases",
  phase "first" {
    check "there" (function() return fs.exists(%q) end),
    step "write" { run = function() fs.write(%q, "x") end },
    step "never" { when = function() return false end, run = function() end },
  },
  phase "second" {
    step "nothing" { run = function() end },
  },
}]], d .. "/t", d .. "/t/x"))
    local state = d .. "/state"
    local r = hrun_cmd({ pb, "--state", state, "--json" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local ev = events(r.stdout)
    eq(#ev.recap, 3)
    local first, second, total = ev.recap[1], ev.recap[2], ev.recap[3]
    eq({ first.phase, first.ok, first.changed, first.skipped, first.failed }, { "first", 1, 1, 1, 0 })
    eq({ second.phase, second.ok, second.changed }, { "second", 1, 0 })
    eq({ total.phase, total.ok, total.changed, total.skipped, total.failed }, { nil, 2, 1, 1, 0 })
    eq(#total.phases, 2)
    eq(total.phases[1].phase, "first")
    eq(ev["step-end"][1].changed, true)
    eq(ev["step-end"][2].changed, false)
    r = hrun_cmd({ "show", "1", "--state", state })
    has(r.stdout, "recap      ok=2 changed=1 skipped=1 failed=0")
    has(r.stdout, "first: ok=1 changed=1 skipped=1 failed=0")
    has(r.stdout, "write                                    changed")
    r = hrun_cmd({ "show", "1", "--md", "--state", state })
    has(r.stdout, "- **Recap:** ok=2 changed=1 skipped=1 failed=0")
    has(r.stdout, "  - second: ok=1 changed=0 skipped=0 failed=0")
    r = hrun_cmd({ pb, "--state", state })
    has(r.stdout, "recap: ok=3 changed=0 skipped=1 failed=0")
    r = hrun_cmd({ "show", "2", "--state", state })
    has(r.stdout, "recap      ok=3 changed=0 skipped=1 failed=0")
  end)

  it("counts a failed step, and show counts it from the journal when the run has no recap event", function()
    local d = tmpdir()
    local pb = playbook_file(d, "pb.lua", string.format([[
return playbook {
  name = "fails",
  phase "p" {
    step "write" { run = function() fs.write(%q, "x") end },
    step "boom" { run = function() error("boom") end },
  },
}]], d .. "/x"))
    local state = d .. "/state"
    local r = hrun_cmd({ pb, "--state", state })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "recap: ok=0 changed=1 skipped=0 failed=1")
    eq(fs.exists(d .. "/x"), false, "rolled back")
    -- as an older hrun left it: no recap event, no changed column
    need("sqlite3")
    exec.run({ "sqlite3", state .. "/journal.db",
      "DELETE FROM events WHERE event = 'recap'; UPDATE steps SET changed = NULL" })
    r = hrun_cmd({ "show", "1", "--state", state })
    has(r.stdout, "recap      ok=0 changed=1 skipped=0 failed=1")
  end)

  it("says changed=0 for the 20-step bench run again, and under --sandbox", function()
    local d = tmpdir()
    local state = d .. "/state"
    for _, extra in ipairs({ {}, { "--sandbox" } }) do
      for _ = 1, 2 do
        local r = hrun_cmd({ bench20, "--state", state, table.unpack(extra) })
        eq(r.code, 0, r.stdout .. r.stderr)
        has(r.stdout, "recap: ok=20 changed=0 skipped=0 failed=0")
      end
    end
    eq(#journaled(state, 4), 20, "the commands ran and were journaled")
  end)

  it("under --sandbox: the files playbook run again changes nothing", function()
    local d = tmpdir()
    fs.mkdir(d .. "/t")
    fs.write(d .. "/t/old", "x")
    fs.write(d .. "/t/flag", "x")
    local pb, state = files_playbook(d), d .. "/state"
    local r = hrun_cmd({ pb, "--state", state, "--sandbox" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "recap: ok=1 changed=6 skipped=0 failed=0")
    r = hrun_cmd({ pb, "--state", state, "--sandbox", "--json" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local ev = events(r.stdout)
    local total = ev.recap[#ev.recap]
    eq({ total.ok, total.changed }, { 7, 0 })
    local so = 0
    for _, e in ipairs(ev.effect) do
      so = so + (e.unchanged and 1 or 0)
    end
    eq({ #ev.effect, so }, { 7, 6 }, "six writes already so, the seventh ran (changed = false)")
    eq(journaled(state, 2), { "exec.sh" })
  end)
end)

describe("already so, on real components", function()
  it("git.tag, git.delete_tag and nixos.flake_set_input", function()
    need("git")
    local d = tmpdir()
    local repo = d .. "/repo"
    exec.run({ "git", "init", "-q", repo })
    fs.write(repo .. "/flake.nix",
      '{\n  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";\n  outputs = _: { };\n}\n')
    exec.run({ "git", "-C", repo, "add", "." })
    exec.run({ "git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one" })
    exec.run({ "git", "-C", repo, "tag", "gone" })
    local pb = playbook_file(d, "pb.lua", string.format([[
return playbook {
  name = "git",
  phase "p" {
    step "input" { run = function()
      nixos.flake_set_input(%q, "nixpkgs", "github:NixOS/nixpkgs/nixos-24.11")
    end },
    step "commit" { run = function() git.commit(%q, "nixpkgs 24.11", { all = true }) end },
    step "tag" { run = function() git.tag(%q, "v1") end },
    step "annotated" { run = function() git.tag(%q, "v2", { message = "second" }) end },
    step "untag" { run = function() git.delete_tag(%q, "gone") end },
  },
}]], repo .. "/flake.nix", repo, repo, repo, repo))
    local state = d .. "/state"
    local env = { GIT_AUTHOR_NAME = "t", GIT_AUTHOR_EMAIL = "t@t", GIT_COMMITTER_NAME = "t",
      GIT_COMMITTER_EMAIL = "t@t" }
    local r = hrun_cmd({ pb, "--state", state }, { env = env })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "recap: ok=0 changed=5 skipped=0 failed=0")
    r = hrun_cmd({ pb, "--state", state }, { env = env })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "recap: ok=5 changed=0 skipped=0 failed=0")
    eq(journaled(state, 2), {})
    -- an untracked file is something to commit (all = true); then v1 is not at HEAD:
    -- git.tag without force fails as it did, and the run is rolled back
    fs.write(repo .. "/new", "x")
    r = hrun_cmd({ pb, "--state", state }, { env = env })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "step input: ok")
    has(r.stdout, "step commit: changed")
    has(r.stdout, "v1: tag exists")
    eq(journaled(state, 3), { "git.commit", "git.tag" })
    eq(exec.run({ "git", "-C", repo, "log", "--format=%s", "-1" }).stdout, "nixpkgs 24.11\n", "the commit undone")
  end)

  it("btrfs.create and btrfs.set_readonly on a real btrfs", function()
    local mnt = btrfs_volume(1)
    local d = tmpdir()
    local pb = playbook_file(d, "pb.lua", string.format([[
return playbook {
  name = "btrfs",
  phase "p" {
    step "create" { run = function() btrfs.create(%q) end },
    step "freeze" { run = function() btrfs.set_readonly(%q, true) end },
  },
}]], mnt .. "/@a", mnt .. "/@a"))
    local state = d .. "/state"
    local r = hrun_cmd({ pb, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "recap: ok=0 changed=2 skipped=0 failed=0")
    r = hrun_cmd({ pb, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "recap: ok=2 changed=0 skipped=0 failed=0")
    eq(journaled(state, 2), {})
    btrfs.set_readonly(mnt .. "/@a", false)
    r = hrun_cmd({ pb, "--state", state })
    has(r.stdout, "recap: ok=1 changed=1 skipped=0 failed=0")
    eq(btrfs.info(mnt .. "/@a").readonly, true)
    btrfs.set_readonly(mnt .. "/@a", false)
  end)
end)

-- start, stop, stop again, start again: the ones already so are ok, journal nothing
local function start_stop(name, env, target)
  local d = tmpdir()
  local pb = playbook_file(d, "pb.lua", string.format([[
return playbook {
  name = "units", params = { want = "start" },
  phase "p" { step "s" { run = function(ctx) %s[ctx.params.want](%q) end } },
}]], name, target))
  local state = d .. "/state"
  for i, want in ipairs({ "start", "stop", "stop", "start" }) do
    local r = hrun_cmd({ pb, "--state", state, "-p", "want=" .. want }, { env = env })
    eq(r.code, 0, r.stdout .. r.stderr)
    local so = i == 1 or i == 3
    has(r.stdout, so and "recap: ok=1 changed=0" or "recap: ok=0 changed=1", want .. " (run " .. i .. ")")
    eq(#journaled(state, i), so and 0 or 1)
  end
end

describe("already so, on units and containers", function()
  it("service.start of an active unit and service.stop of an inactive one", function()
    local env = systemd_container()
    start_stop("service", env, "hrun-web")
  end)

  it("podman.start of a running container and podman.stop of a stopped one", function()
    local env = podman_sandbox()
    exec.run({ "podman", "run", "-d", "--init", "--name", "web", "localhost/hrun-busybox:test", "sleep", "600" },
      { env = env })
    start_stop("podman", env, "web")
  end)
end)
