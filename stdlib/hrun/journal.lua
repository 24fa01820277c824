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
}

M.schema_version = #migrations

local function migrate(db)
  local version = db:query("PRAGMA user_version")[1].user_version
  if version > #migrations then
    error(string.format("journal: written by a newer hrun (schema %d, this hrun knows %d)", version,
      #migrations), 0)
  end
  for v = version + 1, #migrations do
    db:exec("BEGIN IMMEDIATE")
    local ok, err = pcall(db.exec, db, migrations[v] .. string.format("; PRAGMA user_version = %d;", v))
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
  local _, id = self:write([[INSERT INTO runs (playbook, version, path, hash, git_commit, git_dirty,
      params, mode, status, on_failure, host, user, pid, hrun_version, started, sandbox)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)]],
    r.playbook, r.version, r.path, r.hash, r.git_commit, r.git_dirty, codec.encode(r.params), r.mode,
    r.on_failure, r.host, r.user, r.pid, r.hrun_version, r.started, r.sandbox or 0)
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

function Journal:new_step(s)
  local _, id = self:write([[INSERT INTO steps (run, phase, name, kind, status, has_undo, irreversible,
      started) VALUES (?, ?, ?, ?, ?, ?, ?, ?)]],
    s.run, s.phase, s.name, s.kind, s.status or "running", s.has_undo and 1 or 0, s.irreversible and 1 or 0,
    s.started)
  return id
end

function Journal:end_step(id, f)
  self:write("UPDATE steps SET status = ?, attempts = ?, state = ?, error = ?, ended = ? WHERE id = ?",
    f.status, f.attempts or 0, f.state, f.error, f.ended, id)
end

function Journal:set_step_status(id, status, undo_error)
  self:write("UPDATE steps SET status = ?, undo_error = ? WHERE id = ?", status, undo_error, id)
  self:commit()
end

-- }======================================================

-- {======================================================
-- Effects: intent (with the inverse) before, result after
-- ======================================================

function Journal:intent(e)
  local _, id = self:write([[INSERT INTO effects (run, step, op, args, inverse, no_inverse, status, started)
      VALUES (?, ?, ?, ?, ?, ?, 'intent', ?)]],
    e.run, e.step, e.op, e.args, e.inverse and codec.encode(e.inverse) or nil, e.no_inverse, e.started)
  self:commit() -- before the write acts: after a crash the journal knows it may have happened
  return id
end

function Journal:effect_end(id, status, result, err, time)
  self:write("UPDATE effects SET status = ?, result = ?, error = ?, ended = ? WHERE id = ?",
    status, result, err, time, id)
end

-- Durable: an undone effect must not be undone twice after a crash.
function Journal:set_effect_status(id, status, err)
  self:write("UPDATE effects SET status = ?, error = coalesce(?, error) WHERE id = ?", status, err, id)
  self:commit()
end

-- The effects of a step that may have happened (intent or done) or whose undo failed
-- before, newest first.
function Journal:effects_to_undo(step)
  local rows = self.db:query([[SELECT * FROM effects WHERE step = ?
      AND status IN ('intent', 'done', 'partial', 'undo-failed') ORDER BY id DESC]], step)
  for _, e in ipairs(rows) do
    e.inverse = codec.decode(e.inverse)
  end
  return rows
end

-- An event: committed with the next durable write.
function Journal:event(run, ev)
  self:write("INSERT INTO events (run, time, event, data) VALUES (?, ?, ?, ?)", run, ev.time, ev.event,
    codec.summary(ev, 8192))
end

-- }======================================================

-- {======================================================
-- Reading
-- ======================================================

-- runs(n) → the latest n runs, newest first, with step counts
function Journal:runs(n)
  return self.db:query([[SELECT r.*,
      (SELECT count(*) FROM steps s WHERE s.run = r.id AND s.kind = 'step' AND s.status = 'done') AS steps_done,
      (SELECT count(*) FROM steps s WHERE s.run = r.id AND s.kind = 'step') AS steps_run
      FROM runs r ORDER BY r.id DESC LIMIT ?]], n or 20)
end

-- run(id) → the run with its phases, steps (each with its effects) and events
function Journal:run(id)
  local r = self.db:query("SELECT * FROM runs WHERE id = ?", id)[1]
  if not r then
    return nil
  end
  r.params = codec.decode(r.params)
  r.shared = codec.decode(r.shared)
  r.phases = self.db:query("SELECT * FROM phases WHERE run = ? ORDER BY id", id)
  r.steps = self.db:query("SELECT * FROM steps WHERE run = ? ORDER BY id", id)
  for _, s in ipairs(r.steps) do
    s.state = codec.decode(s.state)
    s.effects = self.db:query("SELECT * FROM effects WHERE step = ? ORDER BY id", s.id)
    for _, e in ipairs(s.effects) do
      e.inverse = codec.decode(e.inverse)
    end
  end
  r.events = self.db:query("SELECT * FROM events WHERE run = ? ORDER BY id", id)
  return r
end

-- Does an unfinished run (running, crashed, stopped, rollback incomplete) reference
-- path in an effect that may have happened? btrfs.prune never deletes those.
function Journal:references(path)
  local needle = require("hrun.json").encode(path):sub(2, -2)
  return #self.db:query([[SELECT 1 FROM effects e JOIN runs r ON e.run = r.id
      WHERE r.status IN ('running', 'stopped', 'rollback-incomplete')
      AND e.status IN ('intent', 'done', 'undo-failed')
      AND (instr(e.args, ?) > 0 OR instr(coalesce(e.inverse, ''), ?) > 0) LIMIT 1]], needle, needle) > 0
end

function Journal:latest_run()
  local r = self.db:query("SELECT id FROM runs ORDER BY id DESC LIMIT 1")[1]
  return r and r.id
end

-- The steps of a run that rollback must consider, newest first.
function Journal:steps_to_undo(run)
  local rows = self.db:query([[SELECT * FROM steps WHERE run = ? AND kind = 'step'
      AND status IN ('done', 'failed', 'running', 'interrupted', 'undo-failed') ORDER BY id DESC]], run)
  for _, s in ipairs(rows) do
    s.state = codec.decode(s.state)
  end
  return rows
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
