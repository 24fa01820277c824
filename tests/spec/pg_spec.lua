-- pg against a real PostgreSQL 15 cluster (initdb as the postgres user in the test's own
-- directory, a unix socket only, no TCP), and checks against this machine.

local function psql(env, db, sql)
  return exec.run({ "psql", "-X", "-A", "-t", "-d", db, "-c", sql }, { env = env }).stdout:gsub("%s+$", "")
end

describe("pg", function()
  it("dumps every database with its size and sha256, and says the server's version", function()
    local env, d = pg_cluster()
    local out = hrun_cmd({ "-e", string.format([[
      local pg = require "hrun.pg"
      local r = assert(pg.dumpall(%q))
      print(r.file, r.bytes, r.sha256)
      print(pg.dumpall(%q))
      print(pg.version())
    ]], d .. "/all.sql", d .. "/all.sql") }, { env = env })
    eq(out.code, 0, out.stderr)
    local file, bytes, digest = out.stdout:match("^(%S+)\t(%d+)\t(%x+)\n")
    eq(file, d .. "/all.sql")
    eq(tonumber(bytes), fs.stat(file).size)
    eq(digest, exec.run({ "sha256sum", file }).stdout:match("^(%x+)"))
    has(fs.read(file), "CREATE DATABASE app")
    has(fs.read(file), "CREATE ROLE immich")
    has(out.stdout, "nil\tpg.dumpall: " .. file .. ": exists (a dump never replaces another)\tEEXIST")
    has(out.stdout, "\n15.")
    eq(fs.stat(file).mode, tonumber("600", 8), "a dump is readable by root only")
  end)

  it("restores into a fresh cluster after checking the checksum", function()
    local env, d = pg_cluster()
    local dump = d .. "/all.sql"
    local r = hrun_cmd({ "-e", string.format([[print(require("hrun.pg").dumpall(%q).sha256)]], dump) }, { env = env })
    eq(r.code, 0, r.stderr)
    local digest = r.stdout:gsub("%s+$", "")
    -- lose the data, then restore it
    exec.run({ "psql", "-X", "-q", "-c", "DROP DATABASE app", "-c", "DROP ROLE immich" }, { env = env })
    r = hrun_cmd({ "-e", string.format([[
      local pg = require "hrun.pg"
      print(pg.restore(%q, { sha256 = string.rep("0", 64) }))
      local res = assert(pg.restore(%q, { sha256 = %q }))
      print("errors", res.errors)
    ]], dump, dump, digest) }, { env = env })
    eq(r.code, 0, r.stderr)
    has(r.stdout, "ECHECKSUM")
    has(r.stdout, "errors\t1", "only: role postgres already exists")
    eq(psql(env, "app", "SELECT count(*) FROM t"), "1000")
    eq(psql(env, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'immich'"), "1")
  end)

  it("fails on a server that is down, and leaves no file; a plan dumps nothing", function()
    local env, d, as_pg = pg_cluster()
    as_pg({ PG_BIN .. "/pg_ctl", "-D", d .. "/data", "-m", "fast", "-w", "stop" })
    local r = hrun_cmd({ "-e", string.format([[print(require("hrun.pg").dumpall(%q))]], d .. "/x.sql") },
      { env = env })
    eq(r.code, 0, r.stderr)
    has(r.stdout, "nil\tpg.dumpall: pg_dumpall failed (exit 1): ")
    has(r.stdout, "EDUMP")
    eq(fs.exists(d .. "/x.sql"), false)
    -- the playbook in a directory of root's (the cluster's is postgres's: root refuses it)
    local p = playbook_file(tmpdir(), "pb.lua", string.format([[
return playbook { name = "backup",
  phase "p" { step "dump" { run = function(ctx) ctx.state.dump = pg.dumpall(%q) end } },
}]], d .. "/plan.sql"))
    r = hrun_cmd({ "plan", p, "--state", d .. "/state" }, { env = env })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would fs.write " .. d .. "/plan.sql")
    eq(fs.exists(d .. "/plan.sql"), false)
  end)

  it("is undone with the step: the dump file goes", function()
    local env, d = pg_cluster()
    local p = playbook_file(tmpdir(), "pb.lua", string.format([[
return playbook { name = "backup",
  phase "p" {
    step "dump" { run = function(ctx) ctx.state.dump = pg.dumpall(%q) end },
    step "fail" { run = function() error("upgrade failed") end },
  },
}]], d .. "/run.sql"))
    local r = hrun_cmd({ p, "--state", d .. "/state" }, { env = env })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.exists(d .. "/run.sql"), false)
  end)

  it("keeps a dump made with keep = true when the run rolls back", function()
    local env, d = pg_cluster()
    local p = playbook_file(tmpdir(), "pb.lua", string.format([[
return playbook { name = "backup",
  phase "p" {
    step "dump" { run = function(ctx) ctx.state.dump = pg.dumpall(%q, { keep = true }) end },
    step "fail" { run = function() error("upgrade failed") end },
  },
}]], d .. "/kept.sql"))
    local r = hrun_cmd({ p, "--state", d .. "/state" }, { env = env })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "undo fs.write: kept")
    has(fs.read(d .. "/kept.sql"), "PostgreSQL database cluster dump complete", "the dump stays, whole")
  end)

  it("moves a database to another server; undoing the restore drops it there", function()
    local old = pg_cluster()
    local new = pg_cluster()
    local d = tmpdir()
    exec.run({ "psql", "-X", "-q", "-c", "DROP DATABASE app" }, { env = new })
    local p = playbook_file(d, "pb.lua", string.format([[
local old = { host = %q, port = %s, user = "postgres" }
local new = { host = %q, port = %s, user = "postgres" }
return playbook { name = "move",
  phase "p" {
    step "move app" { run = function()
      local dump = assert(pg.dump("app", %q, old))
      assert(pg.restore(dump.file, { sha256 = dump.sha256, stop_on_error = true, creates = "app",
        host = new.host, port = new.port, user = new.user }))
      local rows = assert(pg.query("SELECT count(*) FROM t", { database = "app", host = new.host, port = new.port,
        user = new.user }))
      assert(rows[1][1] == "1000", "rows: " .. rows[1][1])
    end },
    step "fail" { run = function(ctx) assert(ctx.plan, "the new server is wrong") end },
  },
}]], old.PGHOST, old.PGPORT, new.PGHOST, new.PGPORT, d .. "/app.sql"))
    local r = hrun_cmd({ p, "--state", d .. "/state" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "the new server is wrong")
    eq(psql(new, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'app'"), "0", "dropped again")
    eq(psql(old, "app", "SELECT count(*) FROM t"), "1000", "the old one untouched")
    eq(fs.exists(d .. "/app.sql"), false)
  end)
end)

describe("checks", function()
  it("cgroup v2, free space and mounts, each with its reason", function()
    local checks = require "hrun.checks"
    local d = tmpdir()
    fs.mkdir(d .. "/fake")
    eq({ checks.cgroup_v2(d .. "/fake") },
      { false, d .. "/fake is not cgroup v2 (no cgroup.controllers): the host runs cgroup v1 or hybrid" })
    fs.write(d .. "/fake/cgroup.controllers", "cpu io memory\n")
    eq(checks.cgroup_v2(d .. "/fake"), true)
    local okk, msg, info = checks.free_space(d, { bytes = 1 })
    eq(okk, true, msg)
    ok(info.available > 0 and info.total >= info.available)
    okk, msg = checks.free_space(d, { bytes = info.total * 2 })
    eq(okk, false)
    has(msg, "needed")
    -- a directory a step will make is measured at its nearest parent that exists
    okk, msg = checks.free_space(d .. "/nope/deeper", { bytes = 1 })
    eq(okk, true, msg)
    has(msg, d .. "/nope/deeper: ")
    eq(checks.mounted("/proc"), true)
    eq(select(3, checks.mounted("/proc")).fstype, "proc")
    eq({ checks.mounted("/proc", { fstype = "ext4" }) }, { false, "/proc is proc, not ext4",
      select(3, checks.mounted("/proc")) })
    eq(checks.mounted(d), false)
  end)

  it("lists failed units but those excused (systemd in a container)", function()
    local env = systemd_container()
    local r = hrun_cmd({ "-e", [[
      local checks = require "hrun.checks"
      print(checks.no_failed_units())
      service.start("hrun-fail")
      print(checks.no_failed_units())
      print(checks.no_failed_units({ except = { "hrun-f*" } }))
    ]] }, { env = env })
    eq(r.code, 0, r.stderr)
    local lines = {}
    for l in r.stdout:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    has(lines[1], "true\tno failed units")
    has(lines[2], "false\tfailed units: hrun-fail.service")
    has(lines[3], "true\tno failed units")
  end)
end)
