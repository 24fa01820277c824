-- hrun.journal: the write-ahead run journal, in SQLite (STATE/journal.db, WAL,
-- synchronous=FULL). Before a write primitive acts, its intent and its inverse are
-- committed; after, its result. Step boundaries are committed too. After a crash the
-- journal alone says what may have happened and how to undo it.
--
-- The engine opens it with journal.open(priv, dir); playbooks and the REPL read runs
-- through the module functions journal.runs() and journal.run(id).

local codec = require "hrun.codec"

local M = {}
local Journal = {}
Journal.__index = Journal

-- {======================================================
-- Schema: one migration per version, applied in order (PRAGMA user_version)
-- ======================================================

local migrations = {
  [1] = [[
    CREATE TABLE runs (
      id INTEGER PRIMARY KEY,
      playbook TEXT NOT NULL,          -- its name
      version TEXT,
      path TEXT NOT NULL,              -- the file it was loaded from
      hash TEXT NOT NULL,              -- of its content (sha256 when available)
      git_commit TEXT,                 -- filled by the git integration
      git_dirty INTEGER,
      params TEXT NOT NULL,            -- JSON
      mode TEXT NOT NULL,              -- run | debug
      status TEXT NOT NULL,            -- running, done, stopped, rolled-back, rollback-incomplete
      on_failure TEXT NOT NULL,
      host TEXT, user TEXT, pid INTEGER, hrun_version TEXT,
      shared TEXT NOT NULL DEFAULT '{}',  -- ctx.shared, JSON
      error TEXT,
      interrupted INTEGER NOT NULL DEFAULT 0,
      started REAL NOT NULL, ended REAL
    );
    CREATE TABLE phases (
      id INTEGER PRIMARY KEY,
      run INTEGER NOT NULL REFERENCES runs(id),
      name TEXT NOT NULL,
      status TEXT NOT NULL,            -- running, done, failed
      started REAL NOT NULL, ended REAL
    );
    CREATE TABLE steps (
      id INTEGER PRIMARY KEY,
      run INTEGER NOT NULL REFERENCES runs(id),
      phase TEXT NOT NULL,
      name TEXT NOT NULL,
      kind TEXT NOT NULL,              -- step | check
      status TEXT NOT NULL,            -- running, done, failed, skipped, interrupted,
                                       -- undone, undo-failed
      attempts INTEGER NOT NULL DEFAULT 0,
      state TEXT,                      -- ctx.state, JSON
      has_undo INTEGER NOT NULL DEFAULT 0,
      irreversible INTEGER NOT NULL DEFAULT 0,
      error TEXT,
      undo_error TEXT,
      started REAL NOT NULL, ended REAL
    );
    CREATE TABLE effects (
      id INTEGER PRIMARY KEY,
      run INTEGER NOT NULL REFERENCES runs(id),
      step INTEGER NOT NULL REFERENCES steps(id),
      op TEXT NOT NULL,                -- fs.write
      args TEXT NOT NULL,              -- for people (long strings cut): JSON
      inverse TEXT,                    -- how to undo it, exact: JSON list of {op, args}
      no_inverse TEXT,                 -- why it cannot be undone
      status TEXT NOT NULL,            -- intent, done, failed, partial, undone, undo-failed
      result TEXT, error TEXT,
      started REAL NOT NULL, ended REAL
    );
    CREATE TABLE events (
      id INTEGER PRIMARY KEY,
      run INTEGER NOT NULL REFERENCES runs(id),
      time REAL NOT NULL,
      event TEXT NOT NULL,
      data TEXT NOT NULL               -- the whole event, JSON
    );
    CREATE INDEX steps_run ON steps(run);
    CREATE INDEX effects_step ON effects(step);
    CREATE INDEX events_run ON events(run);
  ]],
  [2] = [[
    CREATE TABLE manifests (
      id INTEGER PRIMARY KEY,
      name TEXT,                       -- --save NAME; NULL for one-off hashes
      root BLOB NOT NULL,
      algo TEXT NOT NULL,              -- xxh128, sha256, blake2b
      status TEXT NOT NULL,            -- running (or crashed: resumable), complete, incomplete
      files INTEGER NOT NULL DEFAULT 0,
      bytes INTEGER NOT NULL DEFAULT 0,
      errors INTEGER NOT NULL DEFAULT 0,
      options TEXT,                    -- JSON: exclude, one_file_system
      source TEXT,                     -- an imported file
      started REAL NOT NULL, ended REAL
    );
    CREATE UNIQUE INDEX manifests_name ON manifests(name) WHERE name IS NOT NULL;
    CREATE TABLE entries (
      manifest INTEGER NOT NULL,
      path BLOB NOT NULL,              -- relative to the root, bytes
      type TEXT NOT NULL,              -- f, l, d, s
      size INTEGER, mode INTEGER, mtime_ns INTEGER, dev INTEGER, ino INTEGER,
      target BLOB,                     -- a symlink's
      digest BLOB,
      error TEXT,
      PRIMARY KEY (manifest, path)
    ) WITHOUT ROWID;
  ]],
  -- 3: runs in the capability sandbox (a fetched playbook, --sandbox) stay there when
  -- resumed or rolled back
  [3] = [[
    ALTER TABLE runs ADD COLUMN sandbox INTEGER NOT NULL DEFAULT 0
  ]],
  -- 4: a manifest's entries packed in path order, ~64 KiB a row (runtime/manifest.c), not
  -- one row each: writing them cost more than hashing small files; the rows of schema 2
  -- are packed by hrun_chunk(), 1024 a chunk
  [4] = [[
    CREATE TABLE chunks (
      id INTEGER PRIMARY KEY,          -- a manifest's chunks in this order hold its paths in order
      manifest INTEGER NOT NULL,
      entries INTEGER NOT NULL,
      last BLOB NOT NULL,              -- its last path (where a resumed hash goes on)
      data BLOB NOT NULL
    );
    CREATE INDEX chunks_manifest ON chunks(manifest, id);
    ALTER TABLE manifests ADD COLUMN entries INTEGER NOT NULL DEFAULT 0;
    UPDATE manifests SET
      entries = (SELECT count(*) FROM entries e WHERE e.manifest = manifests.id),
      files = (SELECT count(*) FROM entries e WHERE e.manifest = manifests.id AND e.type = 'f'),
      bytes = (SELECT coalesce(sum(size), 0) FROM entries e
               WHERE e.manifest = manifests.id AND e.type = 'f'),
      errors = (SELECT count(*) FROM entries e
                WHERE e.manifest = manifests.id AND e.error IS NOT NULL);
    INSERT INTO chunks (manifest, entries, last, data)
      SELECT manifest, count(*), max(path),
             hrun_chunk(path, type, size, mode, mtime_ns, dev, ino, target, digest, error)
      FROM (SELECT *, (row_number() OVER (PARTITION BY manifest ORDER BY path) - 1) / 1024 AS part
            FROM entries)
      GROUP BY manifest, part ORDER BY manifest, part;
    DROP TABLE entries
  ]],
  -- 5: undo is journaled state. A step or effect keeps its own outcome; whether it is
  -- undone is a column beside it, and every undo attempt (a step's undo function, each
  -- operation of an inverse) is a row with its outcome, so a rollback retries exactly
  -- what is not undone yet. An effect keeps the state of what it changed before and
  -- after (for "already undone" and "changed since"); a run keeps its own outcome and
  -- time beside its later rollback's; each version of the playbook that ran a step is
  -- kept; children are recorded while they run, to be stopped after a crash.
  [5] = [[
    ALTER TABLE runs ADD COLUMN outcome TEXT;          -- how the run itself ended
    ALTER TABLE runs ADD COLUMN rollback_status TEXT;  -- of the latest hrun rollback
    ALTER TABLE runs ADD COLUMN rollback_started REAL;
    ALTER TABLE runs ADD COLUMN rollback_ended REAL;
    ALTER TABLE runs ADD COLUMN resolved TEXT;         -- hrun resolve -m: why
    ALTER TABLE runs ADD COLUMN resolved_by TEXT;
    ALTER TABLE runs ADD COLUMN resolved_at REAL;
    UPDATE runs SET outcome = status WHERE status NOT IN ('running');
    ALTER TABLE steps ADD COLUMN undo_status TEXT;     -- NULL, undone, undo-failed
    ALTER TABLE steps ADD COLUMN playbook TEXT;        -- the sha256 of the version that ran it
    UPDATE steps SET undo_status = status,
      status = CASE WHEN error IS NULL AND ended IS NOT NULL THEN 'done' ELSE 'failed' END
      WHERE status IN ('undone', 'undo-failed');
    ALTER TABLE effects ADD COLUMN undo_status TEXT;   -- NULL, undone, undo-failed, irreversible
    ALTER TABLE effects ADD COLUMN before TEXT;        -- JSON: the state of its targets before
    ALTER TABLE effects ADD COLUMN after TEXT;         -- … right after it
    ALTER TABLE effects ADD COLUMN settled TEXT;       -- … and when its step ended
    UPDATE effects SET undo_status = status,
      status = CASE WHEN ended IS NULL THEN 'intent' ELSE 'done' END
      WHERE status IN ('undone', 'undo-failed', 'irreversible');
    CREATE TABLE undos (
      id INTEGER PRIMARY KEY,
      run INTEGER NOT NULL REFERENCES runs(id),
      step INTEGER NOT NULL REFERENCES steps(id),
      effect INTEGER REFERENCES effects(id),  -- NULL: the step's undo function
      op INTEGER,                      -- which operation of the inverse (1-based)
      how TEXT NOT NULL,               -- undo, inverse, already-undone, irreversible, forced
      status TEXT NOT NULL,            -- running, ok, failed
      error TEXT,
      targets TEXT,                    -- JSON: what an undo function wrote to (its states)
      started REAL NOT NULL, ended REAL
    );
    CREATE INDEX undos_step ON undos(step);
    CREATE TABLE playbooks (
      hash TEXT PRIMARY KEY,           -- sha256 of the content
      path TEXT NOT NULL,
      content BLOB NOT NULL
    );
    CREATE TABLE children (
      id INTEGER PRIMARY KEY,
      run INTEGER NOT NULL REFERENCES runs(id),
      step INTEGER,
      pgid INTEGER NOT NULL, pid INTEGER NOT NULL,
      start INTEGER NOT NULL,          -- the leader's start, clock ticks after boot
      boot TEXT NOT NULL,              -- /proc/sys/kernel/random/boot_id
      argv0 TEXT,
      returned INTEGER NOT NULL DEFAULT 0  -- the call that started it returned
    );
    CREATE INDEX children_run ON children(run)
  ]],
  -- 6: what a run plans to do and what it keeps. A run knows its playbook's step count
  -- from its start (hrun runs: done/total while it runs; NULL for older runs, whose
  -- total is the steps journaled). A write with keep = true is journaled as usual and
  -- marked kept: a rollback (or a resume's, after a crash) leaves it. hrun gc's
  -- collections are a record each, and a run whose restore asides a collection
  -- removed says when: it can no longer be rolled back. And whether a step changed
  -- something (1: one of its effects completed; 0: ok, all already so; NULL: a check,
  -- a step not done, or a step of an older hrun). Handlers: which step notified which
  -- handler, and the run (kind 'handler' step row) that handled it; NULL until then, so
  -- that resume runs what a crash left pending. runs.selection: the run's --tags,
  -- --skip-tags, --from, --only (JSON), kept for resume.
  [6] = [[
    ALTER TABLE runs ADD COLUMN steps_total INTEGER;
    ALTER TABLE runs ADD COLUMN collected REAL;        -- hrun gc removed what its undo needs
    ALTER TABLE effects ADD COLUMN kept INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE steps ADD COLUMN changed INTEGER;
    CREATE TABLE collections (
      id INTEGER PRIMARY KEY,
      older_than REAL NOT NULL,        -- seconds
      dry_run INTEGER NOT NULL DEFAULT 0,
      removed TEXT,                    -- JSON: [{path, kind, run}]
      failed TEXT,                     -- JSON: [{path, error}]
      runs TEXT,                       -- JSON: the runs it made not rollbackable
      started REAL NOT NULL, ended REAL
    );
    CREATE TABLE notifications (
      id INTEGER PRIMARY KEY,
      run INTEGER NOT NULL REFERENCES runs(id),
      step INTEGER NOT NULL REFERENCES steps(id),  -- the step that notified
      phase TEXT NOT NULL,             -- its phase: the handler runs at that phase's end
      handler TEXT NOT NULL,           -- the handler's name
      scope TEXT NOT NULL,             -- 'phase' or 'playbook': where the handler is defined
      handled INTEGER REFERENCES steps(id), -- the handler's run that handled it
      begun INTEGER REFERENCES steps(id)    -- the handler's run that began on it (it may have
                                            -- restarted a service before it failed)
    );
    CREATE INDEX notifications_run ON notifications(run);
    ALTER TABLE runs ADD COLUMN selection TEXT;
  ]],
  -- 7: other hosts. An effect done on another host is journaled there too (its agent's
  -- journal); here it names the host and its id there. A run keeps the hosts it reached
  -- (name → ssh URL) for its resume and rollback; the journal has an id of its own that
  -- each host's agent files this controller's effects under.
  [7] = [[
    ALTER TABLE effects ADD COLUMN host TEXT;          -- NULL: this machine
    ALTER TABLE effects ADD COLUMN remote INTEGER;     -- its id in that host's journal
    ALTER TABLE runs ADD COLUMN hosts TEXT;            -- JSON {name = url}
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
  ]],
  -- 8: fleets (--hosts FILE). A fleet run (mode 'fleet') runs the playbook on each host
  -- as a member run in a journal of its own (state); here, each host's place in it.
  [8] = [[
    CREATE TABLE fleet_hosts (
      run INTEGER NOT NULL REFERENCES runs(id),
      host TEXT NOT NULL,
      url TEXT NOT NULL,
      state TEXT NOT NULL,             -- the member's state directory (its journal)
      position INTEGER NOT NULL,       -- in the inventory's order
      batch INTEGER,
      member_run INTEGER,              -- its run in that journal
      status TEXT NOT NULL,            -- pending, running, done, rolled-back, rollback-incomplete,
                                       -- failed, unreachable, stopped, crashed, not started
      error TEXT,
      started REAL, ended REAL,
      PRIMARY KEY (run, host)
    );
  ]],
}

M.schema_version = #migrations

local function migrate(db)
  local version = db:query("PRAGMA user_version")[1].user_version
  if version > #migrations then
    error(string.format("journal: written by a newer hrun (schema %d, this hrun knows %d)", version,
      #migrations), 0)
  end
  -- each migration its own transaction; a new journal's all in one (one commit: a fleet
  -- makes a journal for each host of every run)
  local step = version == 0 and #migrations or 1
  for v = version + 1, #migrations, step do
    local last = math.min(#migrations, v + step - 1)
    db:exec("BEGIN IMMEDIATE")
    local ok, err = pcall(function()
      for k = v, last do
        db:exec(migrations[k])
      end
      db:exec(string.format("PRAGMA user_version = %d;", last))
    end)
    if not ok then
      db:exec("ROLLBACK")
      error(err, 0)
    end
    db:exec("COMMIT")
  end
end

-- }======================================================

-- open(priv, state_dir) → journal | nil, message, code. Creates the state directory
-- (0700) and the database (0600).
function M.open(priv, dir)
  local fs = require "hrun.fs"
  if not fs.exists(dir) then
    local ok, err, code = fs.mkdir(dir, { parents = true, mode = "0700" })
    if not ok then
      return nil, err, code
    end
  end
  local sok, serr, scode = priv.securedir(dir)
  if not sok then
    return nil, serr, scode
  end
  local path = dir .. "/journal.db"
  local db, err, code = priv.db_open(path)
  if not db then
    return nil, err, code
  end
  migrate(db)
  return setmetatable({ db = db, dir = dir, priv = priv }, Journal)
end

function Journal:close()
  self:commit()
  self.db:close()
end

-- Writes go into one open transaction; commit() makes everything written so far
-- durable at once (synchronous=FULL). The engine commits where it must — a write
-- primitive's intent before it acts, a step's end, each undone effect, the run's
-- end — and everything else (events, a step's start, an effect's result) rides along
-- with the next commit instead of costing an fsync each. A crash loses only those,
-- and the journal still says what may have happened.
-- (The hash engine writes to the same database and commits what is open first: the
-- transaction's state is asked of SQLite, not remembered here.)
function Journal:write(sql, ...)
  if not self.db:in_transaction() then
    self.db:exec("BEGIN IMMEDIATE")
  end
  -- no secret's bytes reach the journal, whatever text carries them
  if self.priv.secrets() == 0 then
    return self.db:run(sql, ...)
  end
  local args = table.pack(...)
  for i = 1, args.n do
    if type(args[i]) == "string" then
      args[i] = self.priv.mask(args[i])
    end
  end
  return self.db:run(sql, table.unpack(args, 1, args.n))
end

function Journal:commit()
  if self.db:in_transaction() then
    self.db:exec("COMMIT")
  end
end

-- {======================================================
-- Runs, phases, steps
-- ======================================================

function Journal:new_run(r)
  -- the hosts it reaches with it, in the same commit: a run is never journaled without them
  local _, id = self:write([[INSERT INTO runs (playbook, version, path, hash, git_commit, git_dirty,
      params, mode, status, on_failure, host, user, pid, hrun_version, started, sandbox, steps_total, hosts)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)]],
    r.playbook, r.version, r.path, r.hash, r.git_commit, r.git_dirty, codec.encode(r.params), r.mode,
    r.on_failure, r.host, r.user, r.pid, r.hrun_version, r.started, r.sandbox or 0, r.steps_total,
    r.hosts and codec.encode(r.hosts) or nil)
  self:commit()
  return id
end

function Journal:set_run(id, fields)
  local keys = {}
  for k in pairs(fields) do
    keys[#keys + 1] = k
  end
  table.sort(keys) -- the same fields give the same statement text: one cached statement
  local sets, values = {}, {}
  for i, k in ipairs(keys) do
    sets[i] = k .. " = ?"
    values[i] = fields[k]
  end
  values[#keys + 1] = id
  self:write("UPDATE runs SET " .. table.concat(sets, ", ") .. " WHERE id = ?", table.unpack(values, 1, #keys + 1))
end

function Journal:new_phase(run, name, time)
  local _, id = self:write("INSERT INTO phases (run, name, status, started) VALUES (?, ?, 'running', ?)",
    run, name, time)
  return id
end

function Journal:end_phase(id, status, time)
  self:write("UPDATE phases SET status = ?, ended = ? WHERE id = ?", status, time, id)
end

-- Keeps a version of a playbook (its content under its sha256), once.
function Journal:keep_playbook(hash, path, content)
  self:write("INSERT OR IGNORE INTO playbooks (hash, path, content) VALUES (?, ?, ?)", hash, path, content)
end

-- The content of the playbook version hash, or nil when the journal does not have it.
function Journal:playbook(hash)
  local row = hash and self.db:query("SELECT content FROM playbooks WHERE hash = ?", hash)[1]
  return row and row.content
end

function Journal:new_step(s)
  local _, id = self:write([[INSERT INTO steps (run, phase, name, kind, status, has_undo, irreversible,
      started, playbook) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)]],
    s.run, s.phase, s.name, s.kind, s.status or "running", s.has_undo and 1 or 0, s.irreversible and 1 or 0,
    s.started, s.playbook)
  return id
end

function Journal:end_step(id, f)
  local changed = f.changed
  if changed ~= nil then
    changed = changed and 1 or 0
  end
  self:write("UPDATE steps SET status = ?, attempts = ?, state = ?, error = ?, ended = ?, changed = ? WHERE id = ?",
    f.status, f.attempts or 0, f.state, f.error, f.ended, changed, id)
end

function Journal:set_step_status(id, status)
  self:write("UPDATE steps SET status = ? WHERE id = ?", status, id)
  self:commit()
end

-- Whether a step is undone (undone, undo-failed) and why not: durable.
function Journal:set_step_undo(id, undo_status, err)
  self:write("UPDATE steps SET undo_status = ?, undo_error = ? WHERE id = ?", undo_status, err, id)
  self:commit()
end

-- }======================================================

-- {======================================================
-- Effects: intent (with the inverse) before, result after
-- ======================================================

function Journal:intent(e)
  local _, id = self:write([[INSERT INTO effects (run, step, op, args, inverse, no_inverse, status, started,
      before, kept) VALUES (?, ?, ?, ?, ?, ?, 'intent', ?, ?, ?)]],
    e.run, e.step, e.op, e.args, e.inverse and codec.encode(e.inverse) or nil, e.no_inverse, e.started,
    e.before and codec.encode(e.before) or nil, e.kept and 1 or 0)
  self:commit() -- before the write acts: after a crash the journal knows it may have happened
  return id
end

-- The journal's own id: what each host's agent files this controller's effects under.
function Journal:id()
  if self.uuid then
    return self.uuid
  end
  local row = self.db:query("SELECT value FROM meta WHERE key = 'id'")[1]
  if not row then
    local f = assert(io.open("/dev/urandom", "rb"))
    local bytes = f:read(16)
    f:close()
    local id = bytes:gsub(".", function(c)
      return string.format("%02x", c:byte())
    end)
    self:write("INSERT INTO meta (key, value) VALUES ('id', ?)", id)
    self:commit()
    row = { value = id }
  end
  self.uuid = row.value
  return self.uuid
end

-- An effect on another host, before it is sent there: durable, as a local intent.
function Journal:remote_intent(e)
  local _, id = self:write([[INSERT INTO effects (run, step, op, args, status, started, kept, host)
      VALUES (?, ?, ?, ?, 'intent', ?, ?, ?)]], e.run, e.step, e.op, e.args, e.started, e.kept and 1 or 0, e.host)
  self:commit()
  return id
end

-- What the host's agent journaled of effect id (its answer, or its journal asked after a
-- crash): inverse, states, status and its id there.
function Journal:remote_effect(id, r, result, time)
  self:write([[UPDATE effects SET remote = ?, inverse = ?, no_inverse = ?, before = ?, after = ?, status = ?,
      result = coalesce(?, result), error = ?, ended = ? WHERE id = ?]], r.remote,
    r.inverse and codec.encode(r.inverse) or nil, r.no_inverse, r.before and codec.encode(r.before) or nil,
    r.after and codec.encode(r.after) or nil, r.status, result, r.error, r.status ~= "intent" and time or nil, id)
end

-- An effect that never reached its host (or was already so there): no effect at all.
function Journal:drop_effect(id)
  self:write("DELETE FROM effects WHERE id = ?", id)
end

-- An effect on another host that never reached it (its journal there had no record of
-- it, and now has a tombstone): kept, so that its id — the key that host files it
-- under — is never given to another effect.
function Journal:effect_dropped(id, why, time)
  self:write("UPDATE effects SET status = 'dropped', error = ?, ended = ? WHERE id = ?", why, time, id)
end

function Journal:effect_end(id, status, result, err, time, after)
  self:write("UPDATE effects SET status = ?, result = ?, error = ?, ended = ?, after = ? WHERE id = ?",
    status, result, err, time, after and codec.encode(after) or nil, id)
end

-- The state of what an effect changed as its step left it.
function Journal:effect_settled(id, settled)
  self:write("UPDATE effects SET settled = ? WHERE id = ?", settled and codec.encode(settled) or nil, id)
end

-- Whether an effect is undone (undone, undo-failed, irreversible) and why not: durable,
-- so that an undone effect is never undone twice after a crash.
function Journal:set_effect_undo(id, undo_status, err)
  self:write("UPDATE effects SET undo_status = ?, error = coalesce(?, error) WHERE id = ?", undo_status, err, id)
  self:commit()
end

local function decode_effect(e)
  e.inverse = codec.decode(e.inverse)
  e.before = codec.decode(e.before)
  e.after = codec.decode(e.after)
  e.settled = codec.decode(e.settled)
  return e
end

-- The effects of a step that may have happened (intent, done, partial) and are not
-- undone yet, newest first.
function Journal:effects_to_undo(step)
  local rows = self.db:query([[SELECT * FROM effects WHERE step = ?
      AND status IN ('intent', 'done', 'partial') AND coalesce(undo_status, '') IN ('', 'undo-failed')
      ORDER BY id DESC]], step)
  for _, e in ipairs(rows) do
    decode_effect(e)
  end
  return rows
end

-- {======================================================
-- Undo attempts: a row each, durable before and after, so that what a crash or a
-- failure interrupted is tried again and what succeeded never is
-- ======================================================

-- undo_begin{run, step, effect, op, how} → id
function Journal:undo_begin(u)
  local _, id = self:write([[INSERT INTO undos (run, step, effect, op, how, status, started)
      VALUES (?, ?, ?, ?, ?, 'running', ?)]], u.run, u.step, u.effect, u.op, u.how, u.started)
  self:commit()
  return id
end

-- (defer: committed with the next durable write instead)
function Journal:undo_end(id, status, err, time, defer)
  self:write("UPDATE undos SET status = ?, error = ?, ended = ? WHERE id = ?", status, err, time, id)
  if not defer then
    self:commit()
  end
end

-- What an undo function is about to write to, before it does: durable, so that what a
-- crash leaves of it (its temporaries) is found.
function Journal:undo_targets(id, states)
  self:write("UPDATE undos SET targets = ? WHERE id = ?", codec.encode(states), id)
  self:commit()
end

-- The attempts of a step's undo function that a crash or an interrupt cut short, with
-- the states of what they wrote to.
function Journal:undo_interrupted(step)
  local rows = self.db:query([[SELECT id, targets, started FROM undos WHERE step = ? AND effect IS NULL
      AND status = 'running' AND targets IS NOT NULL]], step)
  for _, u in ipairs(rows) do
    u.targets = codec.decode(u.targets)
  end
  return rows
end

-- The operations of an effect's inverse that an earlier attempt completed: {[op] = true};
-- and those whose last attempt began and did not finish (a crash, an interrupt), with
-- when it began: {[op] = started}. An attempt cut and tried again since is not one: the
-- later attempt is what was last done to what the operation touches.
function Journal:ops_done(effect)
  local done, last = {}, {}
  local sql = "SELECT op, status, started FROM undos WHERE effect = ? AND op IS NOT NULL ORDER BY id"
  for _, u in ipairs(self.db:query(sql, effect)) do
    done[u.op] = done[u.op] or u.status == "ok" or nil
    last[u.op] = u
  end
  local begun = {}
  for op, u in pairs(last) do
    if u.status == "running" and not done[op] then
      begun[op] = tonumber(u.started) or 0
    end
  end
  return done, begun
end

-- }======================================================

-- {======================================================
-- Children: recorded while they run, so that a resume or rollback after a crash stops
-- any still running. SIGKILL loses nothing the kernel has, so this commit skips the
-- fsync (a power cut ends the children too); when a transaction is open it rides on it.
-- ======================================================

function Journal:child(run, step, c)
  local sql = [[INSERT INTO children (run, step, pgid, pid, start, boot, argv0) VALUES (?, ?, ?, ?, ?, ?, ?)]]
  if self.db:in_transaction() then
    local _, id = self:write(sql, run, step, c.pgid, c.pid, c.start, c.boot, c.argv0)
    self:commit()
    return id
  end
  self.db:exec("PRAGMA synchronous=OFF")
  local ok, _, id = pcall(self.write, self, sql, run, step, c.pgid, c.pid, c.start, c.boot, c.argv0)
  local cok, cerr = pcall(self.commit, self)
  self.db:exec("PRAGMA synchronous=FULL")
  if not ok then
    error(_, 0)
  elseif not cok then
    error(cerr, 0)
  end
  return id
end

-- The calls that started these children returned: nothing of theirs to stop after a crash.
function Journal:children_returned(ids)
  for _, id in ipairs(ids) do
    self:write("UPDATE children SET returned = 1 WHERE id = ?", id)
  end
end

-- The children of a run whose call never returned (hrun died while it waited).
function Journal:live_children(run)
  return self.db:query("SELECT * FROM children WHERE run = ? AND returned = 0 ORDER BY id", run)
end

-- }======================================================

-- An event: committed with the next durable write.
function Journal:event(run, ev)
  self:write("INSERT INTO events (run, time, event, data) VALUES (?, ?, ?, ?)", run, ev.time, ev.event,
    codec.summary(ev, 8192))
end

-- {======================================================
-- Handlers: notifications, pending until a handler's run handles them
-- ======================================================

-- A step notified a handler: written with the step's end (the same commit).
function Journal:notified(run, step, phase, handler, scope)
  self:write("INSERT INTO notifications (run, step, phase, handler, scope) VALUES (?, ?, ?, ?, ?)", run, step, phase,
    handler, scope)
end

-- The notifications of a run that no handler's run handled yet, in the order made.
function Journal:pending_notifications(run)
  return self.db:query([[SELECT n.*, s.name AS step_name FROM notifications n JOIN steps s ON n.step = s.id
      WHERE n.run = ? AND n.handled IS NULL AND coalesce(s.undo_status, '') <> 'undone' ORDER BY n.id]], run)
end

-- The handler's run `handler_step` handled these notifications (ids): durable with its end.
function Journal:handled(ids, handler_step)
  for _, id in ipairs(ids) do
    self:write("UPDATE notifications SET handled = ? WHERE id = ?", handler_step, id)
  end
end

-- A handler's run began on these notifications (ids), before any of its writes.
function Journal:begun(ids, handler_step)
  for _, id in ipairs(ids) do
    self:write("UPDATE notifications SET begun = ? WHERE id = ?", handler_step, id)
  end
end

-- The handlers to run again after a rollback: those a notification names whose handler's
-- run ended, or began and wrote (it may have restarted the service before it failed, or
-- before a crash), and whose notifying step is undone; and those whose run after an
-- earlier rollback failed.
function Journal:handlers_to_rerun(run)
  -- a playbook's handler once, whatever phases notified it (min(): the first's phase)
  return self.db:query([[SELECT min(n.id) AS first, n.phase, n.handler, n.scope,
      group_concat(DISTINCT s.name) AS steps FROM notifications n JOIN steps s ON n.step = s.id
      WHERE n.run = ? AND (n.handled IS NOT NULL OR EXISTS (SELECT 1 FROM effects e WHERE e.step = n.begun
        AND e.status <> 'dropped'))
      AND s.undo_status = 'undone'
      AND NOT EXISTS (SELECT 1 FROM steps h WHERE h.run = n.run AND h.kind = 'rollback-handler'
        AND h.name = n.handler AND h.status = 'done'
        AND (n.scope = 'playbook' OR h.phase = n.phase) AND h.id > coalesce(n.handled, n.begun))
      GROUP BY CASE n.scope WHEN 'playbook' THEN '' ELSE n.phase END, n.handler, n.scope
      ORDER BY first]], run)
end

-- }======================================================

-- }======================================================

-- {======================================================
-- Reading
-- ======================================================

-- runs(n) → the latest n runs, newest first, with step counts
-- {======================================================
-- Fleets: each host's member run
-- ======================================================

function Journal:add_fleet_host(run, h)
  self:write([[INSERT INTO fleet_hosts (run, host, url, state, position, status) VALUES (?, ?, ?, ?, ?, 'pending')]],
    run, h.name, h.url, h.state, h.position)
end

function Journal:set_fleet_host(run, host, fields)
  local keys, cols = {}, { batch = true, member_run = true, status = true, error = true, started = true, ended = true }
  for k in pairs(fields) do
    if cols[k] then
      keys[#keys + 1] = k
    end
  end
  if #keys == 0 then
    return
  end
  table.sort(keys)
  local sets, values = {}, {}
  for i, k in ipairs(keys) do
    sets[i] = k .. " = ?"
    values[i] = fields[k]
  end
  values[#keys + 1], values[#keys + 2] = run, host
  self:write("UPDATE fleet_hosts SET " .. table.concat(sets, ", ") .. " WHERE run = ? AND host = ?",
    table.unpack(values, 1, #keys + 2))
end

-- The hosts of a fleet run, in the inventory's order (none: not a fleet run).
function Journal:fleet_hosts(run)
  return self.db:query("SELECT * FROM fleet_hosts WHERE run = ? ORDER BY position", run)
end

-- }======================================================

function Journal:runs(n)
  return self.db:query([[SELECT r.*,
      (SELECT count(*) FROM steps s WHERE s.run = r.id AND s.kind = 'step' AND s.status = 'done') AS steps_done,
      (SELECT count(*) FROM steps s WHERE s.run = r.id AND s.kind = 'step') AS steps_run
      FROM runs r ORDER BY r.id DESC LIMIT ?]], n or 20)
end

-- {======================================================
-- hrun gc: what hrun left that the journal knows of
-- ======================================================

-- The restore asides of finished runs that ended before `before`: {{path, run, status,
-- effect, undone}}; status is the run's (done, stopped, rolled-back, …).
function Journal:restore_asides(before)
  local out = {}
  for _, e in ipairs(self.db:query([[SELECT e.id, e.run, e.result, e.undo_status, r.status FROM effects e
      JOIN runs r ON e.run = r.id WHERE e.op = 'btrfs.restore' AND e.status = 'done'
      AND r.status IN ('done', 'stopped', 'rolled-back', 'resolved') AND r.ended IS NOT NULL AND r.ended < ?
      AND coalesce(r.rollback_status, '') <> 'running' ORDER BY e.id]], before)) do
    local aside = e.result and codec.decode(e.result)
    if type(aside) == "string" and aside ~= "" then
      out[#out + 1] = { path = aside, run = e.run, status = e.status, effect = e.id,
        undone = e.undo_status == "undone" }
    end
  end
  return out
end

-- Records a collection (hrun gc); marks the runs it made not rollbackable.
function Journal:collection(c)
  local _, id = self:write([[INSERT INTO collections (older_than, dry_run, removed, failed, runs, started, ended)
      VALUES (?, ?, ?, ?, ?, ?, ?)]], c.older_than, c.dry_run and 1 or 0, codec.encode(c.removed),
    codec.encode(c.failed), codec.encode(c.runs), c.started, c.ended)
  if not c.dry_run then
    for _, run in ipairs(c.runs) do
      self:write("UPDATE runs SET collected = coalesce(collected, ?) WHERE id = ?", c.started, run)
    end
  end
  self:commit()
  return id
end

-- A write (btrfs.prune) deleted these paths: the finished runs not rolled back whose
-- restore set one of them aside lose what their undo needs, journaled as collected at
-- `time` (hrun rollback then refuses them, as after hrun gc). Returns those runs.
function Journal:collect_asides(paths, time)
  local gone, seen, runs = {}, {}, {}
  for _, p in ipairs(paths) do
    gone[p] = true
  end
  for _, a in ipairs(self:restore_asides(math.huge)) do
    if gone[a.path] and not a.undone and a.status ~= "rolled-back" and not seen[a.run] then
      seen[a.run] = true
      runs[#runs + 1] = a.run
      self:write("UPDATE runs SET collected = coalesce(collected, ?) WHERE id = ?", time, a.run)
    end
  end
  return runs
end

-- A collection's end: what it removed and could not remove (durable).
function Journal:collection_end(id, removed, failed, ended)
  self:write("UPDATE collections SET removed = ?, failed = ?, ended = ? WHERE id = ?", codec.encode(removed),
    codec.encode(failed), ended, id)
  self:commit()
end

-- run(id) → the run with its phases, steps (each with its effects) and events
function Journal:run(id)
  local r = self.db:query("SELECT * FROM runs WHERE id = ?", id)[1]
  if not r then
    return nil
  end
  r.params = codec.decode(r.params)
  r.shared = codec.decode(r.shared)
  r.hosts = codec.decode(r.hosts)
  r.phases = self.db:query("SELECT * FROM phases WHERE run = ? ORDER BY id", id)
  r.steps = self.db:query("SELECT * FROM steps WHERE run = ? ORDER BY id", id)
  for _, s in ipairs(r.steps) do
    s.state = codec.decode(s.state)
    s.effects = self.db:query("SELECT * FROM effects WHERE step = ? ORDER BY id", s.id)
    for _, e in ipairs(s.effects) do
      decode_effect(e)
    end
    s.undos = self.db:query("SELECT * FROM undos WHERE step = ? ORDER BY id", s.id)
  end
  r.events = self.db:query("SELECT * FROM events WHERE run = ? ORDER BY id", id)
  for _, e in ipairs(r.events) do -- each event as the value it is (show --json: not JSON in a string)
    e.data = codec.decode(e.data)
  end
  return r
end

-- Does an unfinished run (running, crashed, stopped, rollback incomplete) reference
-- path in an effect that may have happened? btrfs.prune never deletes those.
function Journal:references(path)
  local needle = require("hrun.json").encode(path):sub(2, -2)
  return #self.db:query([[SELECT 1 FROM effects e JOIN runs r ON e.run = r.id
      WHERE r.status IN ('running', 'stopped', 'rollback-incomplete')
      AND e.status IN ('intent', 'done', 'partial') AND coalesce(e.undo_status, '') <> 'undone'
      AND (instr(e.args, ?) > 0 OR instr(coalesce(e.inverse, ''), ?) > 0) LIMIT 1]], needle, needle) > 0
end

function Journal:latest_run()
  local r = self.db:query("SELECT id FROM runs ORDER BY id DESC LIMIT 1")[1]
  return r and r.id
end

-- The steps of a run that may have changed something and are not undone yet, newest
-- first: what a rollback undoes (and retries).
local UNDOABLE = [[kind IN ('step', 'handler') AND status IN ('done', 'failed', 'running', 'interrupted')
      AND coalesce(undo_status, '') <> 'undone']]

function Journal:steps_to_undo(run)
  local rows = self.db:query("SELECT * FROM steps WHERE run = ? AND " .. UNDOABLE .. " ORDER BY id DESC", run)
  for _, s in ipairs(rows) do
    s.state = codec.decode(s.state)
  end
  return rows
end

-- How many of a run's steps are not undone yet.
function Journal:not_undone(run)
  return self.db:query("SELECT count(*) AS n FROM steps WHERE run = ? AND " .. UNDOABLE, run)[1].n
end

-- Each state an effect row journaled, before it acted and after: f(state).
local function each_state(e, f)
  for _, states in ipairs({ codec.decode(e.before) or {}, codec.decode(e.after) or {} }) do
    for _, st in ipairs(states) do
      f(st)
    end
  end
end

-- The targets of a run's effects that are not undone: {{kind, target, effect, op}}.
function Journal:targets(run)
  local out = {}
  for _, e in ipairs(self.db:query([[SELECT e.id, e.op, e.before, e.after FROM effects e JOIN steps s ON e.step = s.id
      WHERE e.run = ? AND e.status IN ('intent', 'done', 'partial')
      AND coalesce(e.undo_status, '') NOT IN ('undone')
      AND coalesce(s.undo_status, '') <> 'undone' ORDER BY e.id]], run)) do
    local seen = {}
    each_state(e, function(st)
      local key = tostring(st.kind) .. "\0" .. tostring(st.target)
      if not seen[key] then
        seen[key] = true
        out[#out + 1] = { kind = st.kind, target = st.target, effect = e.id, op = e.op }
      end
    end)
  end
  return out
end

-- The paths a run's kept writes (keep = true, done) made or changed: a directory the
-- run made that holds one of them stays when the run is rolled back.
function Journal:kept_targets(run)
  local out = {}
  for _, e in ipairs(self.db:query("SELECT before, after FROM effects WHERE run = ? AND kept = 1 AND status = 'done'",
    run)) do
    each_state(e, function(st)
      if type(st.target) == "string" then
        out[#out + 1] = st.target
      end
    end)
  end
  return out
end

-- The runs after run that are not rolled back, newest first.
function Journal:later_runs(run)
  return self.db:query([[SELECT id, playbook, status, started FROM runs WHERE id > ?
      AND status <> 'rolled-back' ORDER BY id DESC]], run)
end

-- }======================================================

-- {======================================================
-- The `journal` module of playbooks and the REPL: reading past runs
-- ======================================================

-- public(priv, dir) → {runs = fn(n), run = fn(id)} over the journal in dir
function M.public(priv, dir)
  local j
  local function get()
    if not j then
      if not require("hrun.fs").exists(dir .. "/journal.db") then
        return nil
      end
      j = assert(M.open(priv, dir))
    end
    return j
  end
  return {
    -- journal.runs([n]) → the latest n runs (20), newest first
    runs = function(n)
      local jj = get()
      return jj and jj:runs(n) or {}
    end,
    -- journal.run(id) → one run in full (phases, steps, effects, events), or nil
    run = function(id)
      local jj = get()
      return jj and jj:run(id)
    end,
  }
end

-- }======================================================

return M
