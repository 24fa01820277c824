-- hrun.migrate: what the phases of a migration to NixOS repeat, for playbooks
-- (playbooks/phase*.lua): read-only snapshots of the subvolumes a phase touches and
-- checksum manifests of them, the data restored from those snapshots when it changed
-- (a step's undo), a NixOS configuration deployed from a git ref, services started in
-- order and asked for their health, the configuration tagged when a phase is done.
-- Every write goes through the journaled modules: undone with the step.
--
-- A service is {unit = "…", url = "…" (optional), status = {200, …} (optional),
-- match = "…" (optional), timeout = seconds (optional)}; a subvolume a path relative to
-- the array's mount point.
--
-- Phases 1–3 move containerised services from the old host to NixOS, one after the
-- other: a moved service (a "move") is a service with, in addition,
--   name       what it is called in logs, backups and the proxy ("vaultwarden")
--   container  its container on the old host (default: name)
--   data       its data directory under the old host's app data ("vaultwarden")
--   to         where that data lives on NixOS ("/var/lib/vaultwarden")
--   sqlite     its SQLite databases, relative to data: {{file = "db.sqlite3",
--              tables = {"users", "ciphers"}}, …} — backed up, checked, rows counted
--   postgres   its PostgreSQL databases: {{database = "nextcloud"}, …} — dumped from the
--              old server, restored on the new one, rows counted on both
--   host       its name at the proxy ("vault.example.org"), routed to `backend`
--   backend    what the proxy sends it to on NixOS (default: url's scheme://host:port)
--   public     its URL as users reach it, asked once the proxy points at NixOS
--   old_url    its URL on the old host, asked before anything stops

local btrfs = require "hrun.btrfs"
local exec = require "hrun.exec"
local fs = require "hrun.fs"
local git = require "hrun.git"
local hash = require "hrun.hash"
local http = require "hrun.http"
local nixos = require "hrun.nixos"
local pg = require "hrun.pg"
local remote = require "hrun.remote"
local service = require "hrun.service"
local sqlite = require "hrun.sqlite"
local sys = require "hrun.sys"
local ui = require "hrun.ui"

local M = {}

-- A primitive's failure as values even in a step (where it raises): nil, message.
local function try(fn, ...)
  local res = table.pack(pcall(fn, ...))
  if res[1] then
    return table.unpack(res, 2, res.n)
  end
  return nil, (tostring(res[2]):gsub("^[^\n:]+:%d+: ", ""))
end

local function join(a, b)
  return (a:gsub("/+$", "")) .. "/" .. b
end

-- A check's answer: ok with msg when nothing is in bad, else what is (prefix first).
local function verdict(bad, msg, prefix)
  if #bad > 0 then
    return false, (prefix or "") .. table.concat(bad, "; ")
  end
  return true, msg
end

-- "1 changed, 0 missing, 0 added, e.g. photos/a.jpg": what a hash.verify found.
local function differences(r)
  local first = r.changed[1] or r.missing[1] or r.added[1] or r.errors[1]
  return string.format("%d changed, %d missing, %d added%s", #r.changed, #r.missing, #r.added,
    first and (", e.g. " .. first) or "")
end

-- The first table (by name) whose rows counted now differ from those wanted: its name,
-- its rows now (nil: not counted) and wanted; nil when every one matches.
local function rows_differ(now, want)
  for _, t in ipairs(M.keys(want)) do
    if now[t] ~= want[t] then
      return t, now[t], want[t]
    end
  end
end

-- Each table of `before` with fewer rows now is added to bad, as label .. "<table> has …";
-- returns how many tables were compared.
local function add_losses(bad, label, now, before)
  local n = 0
  for t, was in pairs(before or {}) do
    n = n + 1
    if (now[t] or 0) < was then
      bad[#bad + 1] = string.format("%s%s has %d rows, %d before", label, t, now[t] or 0, was)
    end
  end
  return n
end

-- A UTC time for names, to the microsecond: 2026-03-01T12-30-00.123456Z (btrfs.prune
-- reads it back). Two names made in the same second differ; see unique_name.
function M.stamp()
  local t = sys.now()
  local whole = math.floor(t)
  return string.format("%s.%06dZ", os.date("!%Y-%m-%dT%H-%M-%S", whole), math.floor((t - whole) * 1e6))
end
local stamp = M.stamp

-- migrate.snapshot(ctx, mount, subvolumes, {dir = ".snapshots", label}) → {sub = snapshot}:
-- a read-only snapshot of each subvolume in mount/dir, named <sub>.<label>.<time>; kept
-- in ctx.state.snapshots, with each subvolume's btrfs generation after it (what
-- restore_changed compares). Undone (inverse) by deleting them.
function M.snapshot(ctx, mount, subvolumes, opts)
  opts = opts or {}
  local dir = join(mount, opts.dir or ".snapshots")
  if not fs.exists(dir) then
    fs.mkdir(dir, { parents = true, mode = "0700" })
  end
  local when, made = stamp(), {}
  for _, sub in ipairs(subvolumes) do
    local base = string.format("%s.%s.", sub:gsub("/", "-"), opts.label or "hrun")
    local name = base .. when
    -- a name taken (in the same microsecond, or by another clock) is made again: never
    -- two snapshots under one name (btrfs.snapshot refuses one that exists)
    for _ = 1, 100 do
      if not fs.exists(join(dir, name)) then
        break
      end
      when = stamp()
      name = base .. when
    end
    made[sub] = btrfs.snapshot(join(mount, sub), join(dir, name), { readonly = true })
    ctx.log("snapshot %s → %s", sub, made[sub])
  end
  ctx.state.snapshots = made
  if not ctx.plan then
    btrfs.sync(mount)
    ctx.state.generations = {}
    for _, sub in ipairs(subvolumes) do
      ctx.state.generations[sub] = btrfs.info(join(mount, sub)).generation
    end
  end
  return made
end

-- migrate.manifests(ctx, snapshots, {algo, prefix, threads}) → {sub = manifest name}: a
-- checksum manifest of each snapshot (frozen: what the data was before the phase), saved
-- as <prefix>-<sub>; kept in ctx.state.manifests with the file and byte counts. Not in
-- plans (hashing terabytes is not a plan's job).
function M.manifests(ctx, snapshots, opts)
  opts = opts or {}
  local names, subs = {}, {}
  for sub in pairs(snapshots) do
    subs[#subs + 1] = sub
  end
  table.sort(subs)
  for _, sub in ipairs(subs) do
    local name = string.format("%s-%s", opts.prefix or "migration", sub:gsub("/", "-"))
    if ctx.plan then
      ctx.log("would hash %s as manifest %s", snapshots[sub], name)
    else
      local m = hash.tree(snapshots[sub], { algo = opts.algo, threads = opts.threads, save = name })
      if not m.complete then
        error(string.format("%s: %d entries could not be read", snapshots[sub], m.errors))
      end
      ctx.log("manifest %s: %d files, %d bytes", name, m.files, m.bytes)
    end
    names[sub] = name
  end
  ctx.state.manifests = names
  return names
end

-- migrate.verify(mount, manifests, {quick}) → ok, message, {sub = result}: each subvolume
-- as it is now against its manifest (made from its snapshot).
function M.verify(mount, manifests, opts)
  local bad, results = {}, {}
  local subs = {}
  for sub in pairs(manifests) do
    subs[#subs + 1] = sub
  end
  table.sort(subs)
  for _, sub in ipairs(subs) do
    local r = hash.verify(manifests[sub], join(mount, sub), { quick = opts and opts.quick })
    results[sub] = r
    if not r.ok then
      bad[#bad + 1] = string.format("%s (%s)", sub, differences(r))
    end
  end
  if #bad > 0 then
    return false, "checksums differ: " .. table.concat(bad, "; "), results
  end
  return true, string.format("%d subvolumes match their manifests", #subs), results
end

-- migrate.restore_changed(ctx, mount) — a step's undo: each subvolume written since its
-- snapshot (its btrfs generation moved on) gets the snapshot back — btrfs.restore, the
-- written copy kept aside and named in the log — and the snapshots are deleted.
function M.restore_changed(ctx, mount)
  local gens = ctx.state.generations or {}
  btrfs.sync(mount)
  for sub, snap in pairs(ctx.state.snapshots or {}) do
    local live = join(mount, sub)
    if gens[sub] and btrfs.info(live).generation ~= gens[sub] then
      local aside = btrfs.restore(snap, live)
      ctx.log("%s was written: restored from %s (what it was is kept as %s)", sub, snap, aside)
    end
    if fs.exists(snap) then
      btrfs.delete(snap)
    end
  end
end

-- migrate.deploy(ctx, {flake, host, ref, profile}) → the generation: the configuration at
-- git ref (if given: checked out, undone by checking out what was) built and switched to
-- (undone: the generation before).
function M.deploy(ctx, cfg)
  if cfg.ref and cfg.ref ~= "" then
    ctx.state.checked_out = git.checkout(cfg.flake, cfg.ref)
  end
  local r = nixos.rebuild("switch", { flake = cfg.flake .. "#" .. cfg.host,
    profile = cfg.profile ~= "" and cfg.profile or nil })
  ctx.state.generation, ctx.state.previous = r.generation, r.previous
  if not ctx.plan then
    ctx.log("generation %s (was %s)", tostring(r.generation), tostring(r.previous))
  end
  return r.generation
end

-- migrate.healthy(svc) → ok, message: the unit is active and its URL (if any) answers.
function M.healthy(svc)
  local st = service.status(svc.unit)
  if st.active ~= "active" then
    return false, string.format("%s is %s (%s/%s)", st.unit, st.active, st.load, st.sub or "?")
  end
  if svc.url and svc.url ~= "" then
    local r, err = try(http.request, svc.url, { timeout = 10 })
    if not r then
      return false, err
    end
    local want = svc.status or { 200, 204, 301, 302 }
    local good = false
    for _, s in ipairs(type(want) == "table" and want or { want }) do
      good = good or r.status == s
    end
    if not good then
      return false, string.format("%s answered %d", svc.url, r.status)
    end
    if svc.match and not r.body:find(svc.match) then
      return false, string.format("%s: the answer does not match '%s'", svc.url, svc.match)
    end
  end
  return true, st.unit .. " is active"
end

-- migrate.wait_healthy(svc, timeout) — until the service is healthy (its unit active,
-- its URL answering); raises with why not after timeout seconds, or at once when its
-- unit failed (a service that died does not answer later).
function M.wait_healthy(svc, timeout)
  local deadline = sys.now() + timeout
  while true do
    local ok, why = M.healthy(svc)
    if ok then
      return
    end
    -- named by its unit's state, whichever of the unit and the URL the last look caught
    local st = service.status(svc.unit)
    if st.active == "failed" then
      error(string.format("%s failed (%s/%s, result %s) while %s was awaited", st.unit, st.load, st.sub or "?",
        tostring(st.result), svc.url), 0)
    end
    if sys.now() > deadline then
      error(string.format("%s: not healthy after %d s: %s", svc.unit, timeout, why), 0)
    end
    sys.sleep(1)
  end
end

-- migrate.start(ctx, services) — each service in order: started (undone: stopped, if it
-- was not running) and waited for: its URL must answer before the next one starts.
function M.start(ctx, services)
  for _, svc in ipairs(services) do
    local st = service.start(svc.unit, { timeout = svc.timeout or 120 })
    if not st.planned then
      if svc.url and svc.url ~= "" then
        M.wait_healthy(svc, svc.timeout or 120)
      end
      ctx.log("%s: %s%s", st.unit, st.active, svc.url and svc.url ~= "" and (", " .. svc.url .. " answers") or "")
    end
  end
end

-- migrate.check_services(services) → ok, message: every one healthy (for a `check`).
function M.check_services(services)
  local bad = {}
  for _, svc in ipairs(services) do
    local ok, why = M.healthy(svc)
    if not ok then
      bad[#bad + 1] = why
    end
  end
  return verdict(bad, string.format("%d services healthy", #services))
end

-- migrate.check_subvolumes(mount, subvolumes) → ok, message: each is a btrfs subvolume.
function M.check_subvolumes(mount, subvolumes)
  local bad = {}
  for _, sub in ipairs(subvolumes) do
    if not btrfs.is_subvolume(join(mount, sub)) then
      bad[#bad + 1] = join(mount, sub)
    end
  end
  if #bad > 0 then
    return false, "not btrfs subvolumes: " .. table.concat(bad, ", ")
  end
  return true
end

-- {======================================================
-- Moving services (phases 1–3)
-- ======================================================

local move_fields = {
  name = "string", container = "string", unit = "string", data = "string", to = "string", url = "string",
  status = "table", match = "string", timeout = "number", sqlite = "table", postgres = "table", host = "string",
  backend = "string", public = "string", old_url = "string",
}

-- migrate.check_moves(moves) → ok, message: every move names its unit and its data, with
-- fields of the right types (a params file's mistake, named, before anything runs).
function M.check_moves(moves)
  local bad, seen = {}, {}
  for i, m in ipairs(moves) do
    local who = type(m) == "table" and type(m.name) == "string" and m.name or ("services[" .. i .. "]")
    if type(m) ~= "table" then
      bad[#bad + 1] = who .. ": a table expected"
    else
      for k, v in pairs(m) do
        if not move_fields[k] then
          bad[#bad + 1] = string.format("%s: unknown field '%s'", who, tostring(k))
        elseif type(v) ~= move_fields[k] then
          bad[#bad + 1] = string.format("%s: field '%s' must be a %s, not a %s", who, k, move_fields[k], type(v))
        end
      end
      for _, k in ipairs({ "name", "unit", "data", "to" }) do
        if m[k] == nil or m[k] == "" then
          bad[#bad + 1] = string.format("%s: field '%s' is missing", who, k)
        end
      end
      if type(m.to) == "string" and m.to:sub(1, 1) ~= "/" then
        bad[#bad + 1] = string.format("%s: field 'to' must be an absolute path", who)
      end
      for j, db in ipairs(type(m.sqlite) == "table" and m.sqlite or {}) do
        if type(db) ~= "table" or type(db.file) ~= "string" or (db.tables and type(db.tables) ~= "table") then
          bad[#bad + 1] = string.format("%s: sqlite[%d] must be {file = \"…\", tables = {…}}", who, j)
        end
      end
      for j, db in ipairs(type(m.postgres) == "table" and m.postgres or {}) do
        if type(db) ~= "table" or type(db.database) ~= "string" then
          bad[#bad + 1] = string.format("%s: postgres[%d] must be {database = \"…\"}", who, j)
        end
      end
      if seen[m.name] then
        bad[#bad + 1] = string.format("%s: named twice", who)
      end
      seen[m.name or who] = true
    end
  end
  return verdict(bad, string.format("%d services to move", #moves))
end

-- The old host (params.old) is a host of the playbook: `old.host` names it ("old", its
-- hosts = { old = "ssh://…" } entry, or -H old=URL), and what is done there runs there,
-- journaled by its agent — its containers stopped and started, its data hashed, its
-- SQLite databases backed up. `old.ssh` is its address for rsync ("ssh://root@zimaos.lan",
-- the same host as hosts.old), which copies its data here. `old.scratch`, a directory on
-- the old host, holds what is made there: the manifests of its data and the backups of
-- its databases (removed by a rollback; kept after a run that succeeds).
--
-- An old host that cannot run anything (hrun's agent cannot be uploaded or run there):
-- old.host = "local" with -H old=local, its app data mounted here (`sshfs -o ro
-- root@zimaos:/DATA/AppData /mnt/zimaos`, old.appdata that mount) and old.stop/old.start
-- command templates that reach it ({"ssh", "root@zimaos.lan", "docker", "stop",
-- "{container}"}): everything runs here, as before hosts.

-- Whether the old host's data is read here (a mount; the templates' way).
local function here(old)
  return (old.host or "old") == "local"
end

-- fn(...) on the old host (or here, when it is "local").
local function on(old, fn, ...)
  return remote.route(old.host or "old", fn, ...)
end

-- The old host's data directory of a move.
function M.old_data(old, m)
  return join(old.appdata, m.data)
end

-- migrate.check_sources(old, moves) → ok, message: each move's data is on the old host
-- (a directory, looked at there) and its place on NixOS is free (absent, or an empty
-- directory).
function M.check_sources(old, moves)
  if not on(old, fs.exists, old.appdata) then
    if here(old) then
      return false, string.format("the old host's app data is not at %s: mount it there (read-only is enough)",
        old.appdata)
    end
    return false, string.format("the old host (%s) has no %s", old.host or "old", old.appdata)
  end
  local bad = {}
  for _, m in ipairs(moves) do
    local from = M.old_data(old, m)
    local st = on(old, fs.exists, from) and on(old, fs.stat, from)
    if not st or st.type ~= "dir" then
      bad[#bad + 1] = string.format("%s: %s is not a directory", m.name, from)
    end
    for _, db in ipairs(st and m.sqlite or {}) do
      if not on(old, fs.exists, join(from, db.file)) then
        bad[#bad + 1] = string.format("%s: no database %s", m.name, join(from, db.file))
      end
    end
    if fs.exists(m.to) and #(fs.list(m.to) or {}) > 0 then
      bad[#bad + 1] = string.format("%s: %s exists and is not empty (moved already? look, then move it away)",
        m.name, m.to)
    end
  end
  return verdict(bad, string.format("%d data directories to move", #moves))
end

-- A command template of the old host's ({"docker", "stop", "{container}"}, run there;
-- {"ssh", "root@zimaos", "docker", "stop", "{container}"} for one that cannot run
-- anything) for a move: {name}, {container} and {unit} replaced.
local function command(template, m)
  local argv = {}
  for i, a in ipairs(template) do
    argv[i] = a:gsub("{(%w+)}", { name = m.name, container = m.container or m.name, unit = m.unit })
  end
  return argv
end

-- migrate.stop_old(ctx, old, moves) — each move's container on the old host stopped
-- (old.stop, run there), each undone by starting it again (old.start, there too); when
-- it stopped is kept in ctx.shared.stopped (the downtime is measured from there).
function M.stop_old(ctx, old, moves)
  ctx.shared.stopped = ctx.shared.stopped or {}
  for _, m in ipairs(moves) do
    if old.stop and #old.stop > 0 then
      local r = on(old, exec.run, command(old.stop, m), { timeout = 300,
        undo = old.start and #old.start > 0 and command(old.start, m) or nil })
      if not r.planned then
        ctx.log("%s stopped on the old host", m.container or m.name)
      end
    end
    ctx.shared.stopped[m.name] = sys.now()
  end
end

-- The ssh command rsync runs to reach the old host (old.ssh, a URL as in hosts = {…}),
-- with hrun's ssh configuration (HRUN_SSH_CONFIG) when there is one; and the host.
local function rsync_shell(old)
  local where, why = remote.parse(old.ssh)
  if not where or where.is_local then
    error(string.format("old.ssh: %s", why or "the old host's address for rsync (ssh://root@zimaos.lan)"), 0)
  end
  local argv = { "ssh" }
  local config = sys.env("HRUN_SSH_CONFIG")
  if config and config ~= "" then
    argv[#argv + 1], argv[#argv + 2] = "-F", config
  end
  argv[#argv + 1], argv[#argv + 2] = "-o", "BatchMode=yes"
  if where.port then
    argv[#argv + 1], argv[#argv + 2] = "-p", tostring(where.port)
  end
  if where.user then
    argv[#argv + 1], argv[#argv + 2] = "-l", where.user
  end
  for i, a in ipairs(argv) do
    argv[i] = remote.shq(a)
  end
  return table.concat(argv, " "), where.host
end

-- migrate.pull(ctx, old, from, to, {dir}) — from (on the old host) copied to `to` here,
-- with rsync over ssh (owners, modes, times, hard links, ACLs and xattrs kept; a
-- directory's contents when dir); journaled here with its inverse: `to` removed. `to`
-- must not exist before (the pre-flight says so). The old host's own data is only read.
function M.pull(ctx, old, from, to, opts)
  local shell, host = rsync_shell(old)
  local dir = opts and opts.dir
  local src = host:find(":", 1, true) and ("[" .. host .. "]") or host
  local r = exec.run({ "rsync", "-aHAX", "--numeric-ids", "-e", shell,
    src .. ":" .. from .. (dir and "/" or ""), to .. (dir and "/" or "") },
    { timeout = 0, undo = { "rm", "-rf", "--one-file-system", "--", to } })
  if not r.planned then
    ctx.log("rsync %s:%s → %s", old.host or "old", from, to)
  end
  return r
end

-- A directory on the old host for what is made there (old.scratch/<name>), made once.
local function scratch_dir(old, name)
  local d = join(old.scratch or "/DATA/.hrun/migration", name)
  if not on(old, fs.exists, d) then
    on(old, fs.mkdir, d, { parents = true, mode = "0700" })
  end
  return d
end

-- migrate.sqlite_counts(file, tables [, old]) → {table = rows} | nil, message: the rows of
-- each table, after SQLite's integrity check passed (counted on the old host when old).
function M.sqlite_counts(file, tables, old)
  local query = sqlite.query
  if old then
    query = function(...)
      return on(old, sqlite.query, ...)
    end
  end
  local rows, err = try(query, file, "PRAGMA integrity_check")
  if not rows then
    return nil, err
  end
  if rows[1].integrity_check ~= "ok" then
    return nil, string.format("%s: integrity check: %s", file, rows[1].integrity_check)
  end
  local counts = {}
  for _, t in ipairs(tables or {}) do
    local r, why = try(query, file, string.format('SELECT count(*) AS n FROM "%s"', t:gsub('"', '""')))
    if not r then
      return nil, why
    end
    counts[t] = r[1].n
  end
  return counts
end

-- The user tables of a PostgreSQL database and their rows: {["schema.table"] = rows}.
function M.pg_counts(database, opts)
  local o = { database = database }
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  local tables, err = pg.query("SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
    .. "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN "
    .. "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1", o)
  if not tables then
    return nil, err
  end
  local counts, parts = {}, {}
  for _, t in ipairs(tables) do
    parts[#parts + 1] = string.format("SELECT %s, count(*) FROM %s", "'" .. t[1]:gsub("'", "''") .. "'", t[1])
  end
  if #parts == 0 then
    return counts
  end
  local rows, why = pg.query(table.concat(parts, " UNION ALL "), o)
  if not rows then
    return nil, why
  end
  for _, r in ipairs(rows) do
    counts[r[1]] = tonumber(r[2])
  end
  return counts
end

-- Connection options of a server description {host, port, user} ("" and 0 = libpq's default).
function M.pg_server(s)
  s = s or {}
  return { host = s.host ~= "" and s.host or nil, port = s.port ~= 0 and s.port or nil,
    user = s.user ~= "" and s.user or nil }
end

-- migrate.backup(ctx, old, moves, dir, pg_old) — every database of every move backed up
-- in dir/<name>/ before its data moves: SQLite's through its backup API (then checked:
-- integrity and rows per table), PostgreSQL's with pg_dump (complete, sha256). A backup
-- that fails stops the phase: nothing moves without one. What was found is kept in
-- ctx.shared.backups[name] (files, sha256, rows) for the success checks.
function M.backup(ctx, old, moves, dir, pg_old)
  ctx.shared.backups = {}
  for _, m in ipairs(moves) do
    local into = join(dir, m.name)
    local found = { sqlite = {}, postgres = {} }
    if #(m.sqlite or {}) + #(m.postgres or {}) > 0 and not fs.exists(into) then
      fs.mkdir(into, { parents = true, mode = "0700" })
    end
    for _, db in ipairs(m.sqlite or {}) do
      local flat = db.file:gsub("/", "-")
      local file = join(into, flat)
      local rec = { file = file }
      -- taken where the database is (on the old host: in old.scratch, checked and
      -- hashed there, then copied here and its sha256 compared)
      local made = here(old) and file or join(scratch_dir(old, m.name), flat)
      local b = assert(on(old, sqlite.backup, join(M.old_data(old, m), db.file), made))
      if not ctx.plan then
        rec.rows = assert(M.sqlite_counts(made, db.tables, old))
        rec.sha256 = assert(on(old, hash.file, made, { algo = "sha256" }))
      end
      if not here(old) then
        M.pull(ctx, old, made, file)
        local got = not ctx.plan and hash.file(file, { algo = "sha256" })
        if got and got ~= rec.sha256 then
          error(string.format("%s: the backup of %s copied here has sha256 %s, %s on the old host", m.name, db.file,
            got, rec.sha256))
        end
      end
      if not ctx.plan then
        ctx.log("%s: %s backed up (%d bytes, sha256 %s), integrity ok%s", m.name, db.file, b.bytes, rec.sha256,
          db.tables and #db.tables > 0 and (", rows " .. M.show_counts(rec.rows)) or "")
      end
      found.sqlite[db.file] = rec
    end
    for _, db in ipairs(m.postgres or {}) do
      local d = assert(pg.dump(db.database, join(into, db.database .. ".sql"), M.pg_server(pg_old)))
      local rec = { file = d.file, sha256 = d.sha256 }
      if not d.planned then
        rec.rows = assert(M.pg_counts(db.database, M.pg_server(pg_old)))
        ctx.log("%s: database %s dumped (%d bytes, sha256 %s)", m.name, db.database, d.bytes, d.sha256)
      end
      found.postgres[db.database] = rec
    end
    ctx.shared.backups[m.name] = found
  end
end

-- migrate.prove_backups(ctx, moves, names, dir) — the SQLite backups of the moves named
-- (a mandatory backup) proven restorable before their data moves: each restored into a
-- scratch file beside it, checked, its rows compared with what migrate.backup counted in
-- the live database, then the scratch file removed. (PostgreSQL dumps are proven by
-- their restore on the new server, rows compared, before any service starts.)
function M.prove_backups(ctx, moves, names, dir)
  local wanted = {}
  for _, n in ipairs(names or {}) do
    wanted[n] = true
  end
  for _, m in ipairs(moves) do
    for _, db in ipairs(wanted[m.name] and m.sqlite or {}) do
      local rec = ctx.shared.backups[m.name].sqlite[db.file]
      local scratch = join(join(dir, m.name), "restore-test." .. (db.file:gsub("/", "-")))
      sqlite.backup(rec.file, scratch)
      if not ctx.plan then
        local rows = assert(M.sqlite_counts(scratch, db.tables))
        local t, now, want = rows_differ(rows, rec.rows)
        if t then
          error(string.format("%s: the backup of %s restores %s with %s rows, not %d", m.name, db.file, t,
            tostring(now), want))
        end
        ctx.log("%s: the backup of %s restores, rows match (%s)", m.name, db.file, M.show_counts(rows))
      end
      fs.remove(scratch)
    end
  end
end

-- "users 2, ciphers 500", sorted by table.
function M.show_counts(counts)
  local names, out = {}, {}
  for t in pairs(counts or {}) do
    names[#names + 1] = t
  end
  table.sort(names)
  for _, t in ipairs(names) do
    out[#out + 1] = string.format("%s %d", t, counts[t])
  end
  return table.concat(out, ", ")
end

-- The SQLite databases of a move's copy checked, their rows compared with the backup's.
local function copied_rows(ctx, m)
  local backups = (ctx.shared.backups or {})[m.name] or { sqlite = {} }
  for _, db in ipairs(m.sqlite or {}) do
    local rows = assert(M.sqlite_counts(join(m.to, db.file), db.tables))
    local t, now, want = rows_differ(rows, backups.sqlite[db.file] and backups.sqlite[db.file].rows or {})
    if t then
      error(string.format("%s: %s: table %s has %s rows, the old host's %d", m.name, db.file, t, tostring(now), want))
    end
  end
end

-- The copy of one move's data read here (a mount): a manifest of the old data (not in
-- plans), the copy, its verification against the manifest.
local function copy_here(ctx, m, from, name, algo)
  local manifest
  if not ctx.plan then
    manifest = hash.tree(from, { algo = algo, save = name })
    if not manifest.complete then
      error(string.format("%s: %d entries of %s could not be read", m.name, manifest.errors, from))
    end
  end
  fs.copy(from, m.to, { recursive = true })
  if ctx.plan then
    return
  end
  local r = hash.verify(name, m.to)
  if not r.ok then
    error(string.format("%s: the copy in %s differs from %s (%s)", m.name, m.to, from, differences(r)))
  end
  ctx.log("%s: %d files, %s copied to %s, checksums match", m.name, manifest.files, ui.bytes(manifest.bytes), m.to)
end

-- The copy of one move's data from the old host: its manifest made there (hash.tree where
-- the data is, not over the network) and exported to old.scratch, the data and the
-- manifest copied here with rsync, the copy hashed here and compared with the old host's
-- manifest: every file's digest, and as many files and bytes.
local function copy_from_host(ctx, old, m, from, name, opts)
  local algo = opts.algo or "xxh128"
  local manifest, sums
  if not ctx.plan then
    manifest = on(old, hash.tree, from, { algo = algo, save = name })
    if not manifest.complete then
      error(string.format("%s: %d entries of %s could not be read on the old host", m.name, manifest.errors, from))
    end
    sums = join(scratch_dir(old, m.name), name .. "." .. algo)
    on(old, hash.export, manifest.id, sums, { format = "coreutils" })
  end
  M.pull(ctx, old, from, m.to, { dir = true })
  if ctx.plan then
    return
  end
  local dir = join(opts.dir or "/var/backups/hrun-migration", "manifests")
  if not fs.exists(dir) then
    fs.mkdir(dir, { parents = true, mode = "0700" })
  end
  local here_sums = join(dir, name .. "." .. algo)
  M.pull(ctx, old, sums, here_sums)
  local theirs = hash.import(here_sums, { format = "coreutils", name = name .. "-old" })
  local ours = hash.tree(m.to, { algo = algo, save = name })
  local r = hash.compare(theirs, ours)
  if not r.ok or ours.files ~= manifest.files or ours.bytes ~= manifest.bytes then
    error(string.format("%s: the copy in %s differs from the old host's %s (%s; %d files, %d bytes there, %d, %d here)",
      m.name, m.to, from, differences(r), manifest.files, manifest.bytes, ours.files, ours.bytes))
  end
  ctx.log("%s: %d files, %s copied to %s, checksums match the old host's", m.name, manifest.files,
    ui.bytes(manifest.bytes), m.to)
end

-- migrate.copy(ctx, old, moves, {algo, dir}) — each move's data copied to its place on
-- NixOS (owners, modes and times kept; undone by removing the copy), checked against a
-- checksum manifest of the old data made where the data is (on the old host; named
-- migration-<name>, its export kept in old.scratch and in dir/manifests): a single byte
-- that differs fails the step. The SQLite databases in the copy are checked and their
-- rows compared with the backup's.
function M.copy(ctx, old, moves, opts)
  opts = opts or {}
  for _, m in ipairs(moves) do
    local from, name = M.old_data(old, m), "migration-" .. m.name
    if fs.exists(m.to) then
      fs.remove(m.to) -- an empty directory (the pre-flight said so)
    end
    local parent = m.to:match("^(.*)/[^/]+$")
    if parent and parent ~= "" and not fs.exists(parent) then
      fs.mkdir(parent, { parents = true })
    end
    if here(old) then
      copy_here(ctx, m, from, name, opts.algo)
    else
      copy_from_host(ctx, old, m, from, name, opts)
    end
    if not ctx.plan then
      copied_rows(ctx, m)
    end
  end
end

-- migrate.restore_databases(ctx, moves, pg_new) — each move's PostgreSQL databases
-- restored on the new server from the dumps migrate.backup made (checksum checked
-- first; a database that exists there already is refused); undone by dropping it.
-- Rows compared, table by table, with the old server's.
function M.restore_databases(ctx, moves, pg_new)
  local server = M.pg_server(pg_new)
  for _, m in ipairs(moves) do
    for _, db in ipairs(m.postgres or {}) do
      local rec = ctx.shared.backups[m.name].postgres[db.database]
      local there = assert(pg.query(string.format("SELECT 1 FROM pg_database WHERE datname = '%s'",
        db.database:gsub("'", "''")), server))
      if #there > 0 and not ctx.plan then
        error(string.format("%s: database %s exists on the new server already (restored before? drop it first)",
          m.name, db.database))
      end
      local o = { sha256 = rec.sha256, stop_on_error = true, creates = db.database }
      for k, v in pairs(server) do
        o[k] = v
      end
      if ctx.plan and not fs.exists(rec.file) then
        ctx.log("would restore %s from %s (the dump this run makes), dropped again on undo", db.database, rec.file)
      else
        assert(pg.restore(rec.file, o))
      end
      if not ctx.plan then
        local t, now, want = rows_differ(assert(M.pg_counts(db.database, server)), rec.rows)
        if t then
          error(string.format("%s: %s.%s has %s rows on the new server, %d on the old", m.name, db.database, t,
            tostring(now), want))
        end
        ctx.log("%s: database %s restored, rows match (%d tables)", m.name, db.database, #M.keys(rec.rows))
      end
    end
  end
end

function M.keys(t)
  local out = {}
  for k in pairs(t or {}) do
    out[#out + 1] = k
  end
  table.sort(out)
  return out
end

-- migrate.check_rows(moves, backups, pg_new) → ok, message: no rows lost — each table
-- the backups counted has at least as many rows now (the services run: they add).
function M.check_rows(moves, backups, pg_new)
  local bad, n = {}, 0
  for _, m in ipairs(moves) do
    local b = backups and backups[m.name] or { sqlite = {}, postgres = {} }
    for _, db in ipairs(m.sqlite or {}) do
      local rows, err = M.sqlite_counts(join(m.to, db.file), db.tables)
      if not rows then
        bad[#bad + 1] = err
      else
        n = n + add_losses(bad, string.format("%s: %s: ", m.name, db.file), rows,
          b.sqlite[db.file] and b.sqlite[db.file].rows)
      end
    end
    for _, db in ipairs(m.postgres or {}) do
      local rows, err = M.pg_counts(db.database, M.pg_server(pg_new))
      if not rows then
        bad[#bad + 1] = string.format("%s: %s", m.name, err)
      else
        n = n + add_losses(bad, string.format("%s: %s.", m.name, db.database), rows,
          b.postgres[db.database] and b.postgres[db.database].rows)
      end
    end
  end
  return verdict(bad, string.format("no rows lost (%d tables counted)", n))
end

-- What the proxy sends a move to: its backend, or its URL's scheme://host:port.
local function backend(m)
  return m.backend or (m.url and m.url:match("^(%a[%w+.-]*://[^/]+)"))
end

-- migrate.reload_proxy(ctx): the "reload the proxy" handler of phases 1–3 — proxy.unit
-- reloaded when the routes changed (and again after a rollback put them back); "" or
-- none: the proxy watches its file, nothing to reload.
function M.reload_proxy(ctx)
  local unit = ctx.params.proxy.unit
  if unit and unit ~= "" then
    service.reload(unit)
  end
end

-- migrate.routes(moves, label) → the text of a Traefik dynamic configuration file (its
-- file provider) routing each move's host to its backend on NixOS.
function M.routes(moves, label)
  local out = { "# Written by hrun (" .. label .. "): these services are served by NixOS now.",
    "# Undoing the run puts back what was here.", "http:", "  routers:" }
  local services = { "  services:" }
  for _, m in ipairs(moves) do
    if m.host and backend(m) then
      out[#out + 1] = string.format("    %s:\n      rule: \"Host(`%s`)\"\n      service: %s", m.name, m.host, m.name)
      services[#services + 1] = string.format("    %s:\n      loadBalancer:\n        servers:\n          - url: \"%s\"",
        m.name, backend(m))
    end
  end
  return table.concat(out, "\n") .. "\n" .. table.concat(services, "\n") .. "\n"
end

-- Why url does not answer (an error, a status of 400 or more, a body not matching match),
-- or nil when it does.
local function why_not_answering(url, match)
  local r, err = try(http.request, url, { timeout = 15 })
  if not r then
    return err
  elseif r.status >= 400 then
    return string.format("%s answered %d", url, r.status)
  elseif match and not r.body:find(match) then
    return string.format("%s: the answer does not match '%s'", url, match)
  end
end

-- migrate.check_public(moves) → ok, message: each move's public URL answers (through
-- the proxy, now pointing at NixOS) as its health URL must.
function M.check_public(moves)
  local bad, n = {}, 0
  for _, m in ipairs(moves) do
    if m.public and m.public ~= "" then
      n = n + 1
      bad[#bad + 1] = why_not_answering(m.public, m.match)
    end
  end
  return verdict(bad, string.format("%d public URLs answer", n))
end

-- migrate.check_old(moves) → ok, message: each move answers on the old host (old_url) —
-- what a rollback goes back to works.
function M.check_old(moves)
  local bad = {}
  for _, m in ipairs(moves) do
    if m.old_url and m.old_url ~= "" then
      bad[#bad + 1] = why_not_answering(m.old_url)
    end
  end
  return verdict(bad, nil, "the old host does not answer: ")
end

-- migrate.check_downtime(ctx, moves, max) → ok, message: from each container's stop on
-- the old host to now (its service healthy on NixOS) took at most max seconds.
function M.check_downtime(ctx, moves, max)
  local worst, who = 0, nil
  for _, m in ipairs(moves) do
    local t = (ctx.shared.stopped or {})[m.name]
    if t and sys.now() - t > worst then
      worst, who = sys.now() - t, m.name
    end
  end
  local msg = who and string.format("longest downtime %.0f s (%s)", worst, who) or "nothing was stopped"
  if max and max > 0 and worst > max then
    return false, string.format("%s, more than the %d s allowed", msg, max)
  end
  return true, msg
end

-- migrate.found(ctx, ok, message) → ok, message: a check's answer, its message logged
-- under the check when it passed (what it found: "longest downtime 42 s") — for checks
-- whose message says more than why not.
function M.found(ctx, ok, message)
  if ok and message then
    ctx.log("%s", message)
  end
  return ok, message
end

-- migrate.check_offsite({unit, max_age}) → ok, message: the offsite backup (a oneshot
-- unit, restic's or borg's) last ran to success, at most max_age seconds ago (0: any
-- time). "Before starting ANY phase: full backup of all data (offsite)".
function M.check_offsite(offsite)
  if not offsite or not offsite.unit or offsite.unit == "" then
    return true, "no offsite backup unit given: not checked"
  end
  local st = service.status(offsite.unit)
  if st.load ~= "loaded" then
    return false, string.format("%s is %s", st.unit, st.load)
  end
  if st.result ~= "success" or st.active == "failed" then
    return false, string.format("%s: its last run ended with %s", st.unit, tostring(st.result))
  end
  local age = st.since and st.since > 0 and sys.now() - st.since
  if not age then
    return false, st.unit .. " has not run since boot"
  end
  if (offsite.max_age or 0) > 0 and age > offsite.max_age then
    return false, string.format("%s last succeeded %.1f h ago (at most %.1f h allowed)", st.unit, age / 3600,
      offsite.max_age / 3600)
  end
  return true, string.format("%s succeeded %.1f h ago", st.unit, age / 3600)
end

-- migrate.check_committed({flake}) → ok, message: the configuration's repository has
-- nothing uncommitted (what is deployed is what git has: rollback and tags mean something).
function M.check_committed(config)
  local st, err = git.status(config.flake)
  if not st then
    return false, err
  end
  if not st.clean then
    local names = {}
    for i, f in ipairs(st.files) do
      names[i] = f.path
    end
    return false, string.format("%s has uncommitted changes: %s", config.flake, table.concat(names, ", "))
  end
  return true, config.flake .. " is committed"
end

-- migrate.tag(ctx, flake, name, message): the configuration's HEAD tagged (annotated);
-- undone by deleting the tag.
function M.tag(ctx, flake, name, message)
  ctx.state.tag = name
  git.tag(flake, name, { message = message })
  ctx.log("tagged %s", name)
end

return M
