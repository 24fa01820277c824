-- hrun.pg: PostgreSQL backups with checks — pg_dumpall into a file whose size and
-- SHA-256 are returned (to keep in the step's state), restore with the checksum checked
-- first, the server's version. Connection options are libpq's environment (PGHOST,
-- PGPORT, PGUSER) or {host, port, user}; commands from PATH (`bin` for another directory).

local exec = require "hrun.exec"
local fs = require "hrun.fs"
local hash = require "hrun.hash"
local sys = require "hrun.sys"

local M = {}

-- The last line pg_dumpall writes: a dump without it was cut short.
local COMPLETE = "-- PostgreSQL database cluster dump complete"

local known = { host = true, port = true, user = true, bin = true, timeout = true, sha256 = true,
  database = true, stop_on_error = true, creates = true, keep = true }

local function options(what, opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(string.format("bad argument to '%s' (options table expected, got %s)", what, type(opts)), 3)
  end
  for k in pairs(opts) do
    if not known[k] then
      error(string.format("bad argument to '%s' (unknown option '%s')", what, tostring(k)), 3)
    end
  end
  local env = {}
  if opts.host then
    env.PGHOST = opts.host
  end
  if opts.port then
    env.PGPORT = tostring(opts.port)
  end
  if opts.user then
    env.PGUSER = opts.user
  end
  return opts, env
end

local function command(opts, name)
  return opts.bin and (opts.bin .. "/" .. name) or name
end

-- The end of a command's stderr, for messages.
local function tail(s)
  s = (s or ""):gsub("%s+$", "")
  return s:match("([^\n]*)$")
end

-- What pg.dumpall and pg.dump share: file must not exist; it is created first (journaled:
-- undoing the step removes it), then the command writes it; a dump that fails or was cut
-- short (no closing "dump complete" line) is an error (EDUMP) and the file is removed. In a
-- plan nothing is dumped ({file, planned = true}).
local function dump(what, argv, complete, file, opts, env)
  if fs.exists(file) then
    return nil, string.format("%s: %s: exists (a dump never replaces another)", what, file), "EEXIST"
  end
  -- keep = true: the dump stays when the run is rolled back (a backup a person wants)
  local ok, err, code = fs.write(file, "", { mode = "0600", keep = opts.keep })
  if not ok then
    return nil, what .. ": " .. err, code
  end
  if not fs.exists(file) then -- a plan stood in for the write: nothing is dumped either
    return { file = file, planned = true }
  end
  local started = sys.now()
  local r, why, rcode = exec.run(argv, { env = env, check = false, readonly = true, timeout = opts.timeout })
  local fail
  if not r then
    fail = { why, rcode }
  elseif not r.ok then
    fail = { string.format("%s: %s failed (%s): %s", what, argv[1]:match("[^/]*$"),
      r.code and ("exit " .. r.code) or r.signal, tail(r.stderr)), "EDUMP" }
  else
    local data = fs.read(file) or ""
    if not data:find(complete, math.max(1, #data - 200), true) then
      fail = { string.format("%s: %s: the dump is incomplete (no '%s' line)", what, file, complete), "EDUMP" }
    end
  end
  if fail then
    fs.remove(file) -- what is there must not pass for a dump
    return nil, fail[1], fail[2]
  end
  local digest = assert(hash.file(file, { algo = "sha256" }))
  local st = assert(fs.stat(file))
  return { file = file, bytes = st.size, sha256 = digest, seconds = sys.now() - started }
end

local function check_file(what, file)
  if type(file) ~= "string" or file == "" then
    error(string.format("bad argument to '%s' (a file path expected)", what), 3)
  end
end

-- pg.dumpall(file [, {host, port, user, bin, timeout, keep}]) → {file, bytes, sha256, seconds}
-- | nil, message, code: every database and role, as pg_dumpall writes them (see dump).
function M.dumpall(file, opts)
  check_file("pg.dumpall", file)
  local env
  opts, env = options("pg.dumpall", opts)
  return dump("pg.dumpall", { command(opts, "pg_dumpall"), "-f", file }, COMPLETE, file, opts, env)
end

-- pg.dump(database, file [, {host, port, user, bin, timeout}]) → {file, bytes, sha256,
-- seconds} | nil, message, code: one database as SQL that creates it again (pg_dump
-- --create: pg.restore(file, {database = "postgres"}) brings it back).
function M.dump(database, file, opts)
  if type(database) ~= "string" or database == "" then
    error("bad argument #1 to 'pg.dump' (a database name expected)", 2)
  end
  check_file("pg.dump", file)
  local env
  opts, env = options("pg.dump", opts)
  return dump("pg.dump", { command(opts, "pg_dump"), "--create", "-f", file, "-d", database },
    "-- PostgreSQL database dump complete", file, opts, env)
end

local function psql_c(what, sql, opts, readonly)
  if type(sql) ~= "string" or sql == "" then
    error(string.format("bad argument #1 to '%s' (SQL expected)", what), 3)
  end
  local env
  opts, env = options(what, opts)
  local r, why, code = exec.run({ command(opts, "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
    "-d", opts.database or "postgres" }, { env = env, check = false, readonly = readonly,
    timeout = opts.timeout or 300 })
  if not r then
    return nil, why, code
  end
  if r.planned then
    return ""
  end
  if not r.ok then
    return nil, what .. ": " .. tail(r.stderr), "EPG"
  end
  return (r.stdout:gsub("%s+$", ""))
end

-- pg.exec(sql [, {database = "postgres", host, port, user, bin, timeout}]) → what psql
-- printed (unaligned, tuples only) | nil, message, code (EPG, psql's error). A write:
-- journaled without an inverse, listed and not run in plans. One statement at a time
-- (DROP DATABASE cannot run inside the transaction several would share).
function M.exec(sql, opts)
  return psql_c("pg.exec", sql, opts, false)
end

-- pg.query(sql [, opts]) → the rows, a list of lists of strings | nil, message, code: a
-- read (runs in plans too); say so only of SQL that changes nothing.
function M.query(sql, opts)
  local out, err, code = psql_c("pg.query", sql, opts, true)
  if not out then
    return nil, err, code
  end
  local rows = {}
  for line in out:gmatch("[^\n]+") do
    local row = {}
    for field in (line .. "|"):gmatch("([^|]*)|") do
      row[#row + 1] = field
    end
    rows[#rows + 1] = row
  end
  return rows
end

-- pg.restore(file [, {sha256, database = "postgres", stop_on_error = false, creates, host,
-- port, user, bin, timeout}]) → {errors, stderr, seconds} | nil, message, code. With
-- sha256, a file whose digest differs is refused (ECHECKSUM) before anything is run.
-- errors counts the ERROR lines psql printed (a dumpall into a fresh cluster has one: the
-- role it connects as exists already); stop_on_error stops at the first. creates: the
-- database the file makes (a pg.dump of it) — undoing the restore drops it; without it a
-- restore cannot be undone.
function M.restore(file, opts)
  check_file("pg.restore", file)
  local env
  opts, env = options("pg.restore", opts)
  if not fs.exists(file) then
    return nil, string.format("pg.restore: %s: No such file or directory", file), "ENOENT"
  end
  if opts.sha256 then
    local digest = assert(hash.file(file, { algo = "sha256" }))
    if digest ~= opts.sha256 then
      return nil, string.format("pg.restore: %s: sha256 %s, not the %s recorded", file, digest, opts.sha256),
        "ECHECKSUM"
    end
  end
  local started = sys.now()
  local argv = { command(opts, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=" .. (opts.stop_on_error and 1 or 0),
    "-f", file, "-d", opts.database or "postgres" }
  local undo
  if opts.creates then
    undo = { command(opts, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c",
      string.format('DROP DATABASE IF EXISTS "%s" WITH (FORCE)', opts.creates:gsub('"', '""')) }
  end
  local r, why, code = exec.run(argv, { env = env, check = false, timeout = opts.timeout, undo = undo })
  if not r then
    return nil, why, code
  end
  local errors = 0
  for _ in r.stderr:gmatch("ERROR:") do
    errors = errors + 1
  end
  if not r.ok then
    return nil, string.format("pg.restore: psql stopped (%s): %s", r.code and ("exit " .. r.code) or r.signal,
      tail(r.stderr)), "ERESTORE"
  end
  return { errors = errors, stderr = r.stderr, seconds = sys.now() - started }
end

-- pg.version([{host, port, user, bin}]) → "15.18 (Debian 15.18-0+deb12u1)", major (15)
-- | nil, message, code: the server's version.
function M.version(opts)
  local env
  opts, env = options("pg.version", opts)
  local r, why, code = exec.run({ command(opts, "psql"), "-X", "-A", "-t", "-c", "SHOW server_version",
    "-d", opts.database or "postgres" }, { env = env, check = false, readonly = true, timeout = opts.timeout or 30 })
  if not r then
    return nil, why, code
  end
  if not r.ok then
    return nil, "pg.version: " .. tail(r.stderr), "EPG"
  end
  local v = r.stdout:gsub("%s+$", "")
  return v, tonumber(v:match("^(%d+)"))
end

return M
