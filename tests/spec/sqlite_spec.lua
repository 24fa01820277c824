-- The sqlite module on real SQLite databases like the applications' (WAL mode, as
-- Vaultwarden keeps its own): online backups while a writer holds the database,
-- read-only queries, errors that name the file, backups undone with their step.

need("sqlite3")

-- A database like Vaultwarden's: WAL mode, a few tables with rows.
local function vault(dir)
  local db = dir .. "/db.sqlite3"
  exec.run({ "sqlite3", db }, { stdin = [[
PRAGMA journal_mode = WAL;
CREATE TABLE users (uuid TEXT PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE ciphers (uuid TEXT PRIMARY KEY, user_uuid TEXT, data BLOB);
INSERT INTO users VALUES ('u1', 'admin@example.org'), ('u2', 'family@example.org');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
  INSERT INTO ciphers SELECT 'c' || i, 'u1', randomblob(200) FROM n;
]] })
  return db
end

describe("sqlite.query", function()
  it("reads rows as tables keyed by column, with bound values", function()
    local db = vault(tmpdir())
    local rows = sqlite.query(db, "SELECT count(*) AS n FROM ciphers")
    eq(rows, { { n = 500 } })
    rows = sqlite.query(db, "SELECT email FROM users WHERE uuid = ? ORDER BY email", { "u2" })
    eq(rows, { { email = "family@example.org" } })
    eq(sqlite.query(db, "PRAGMA integrity_check"), { { integrity_check = "ok" } })
    eq(sqlite.query(db, "SELECT NULL AS x, 1.5 AS y"), { { y = 1.5 } })
    -- nobody has it open: read as it is, no -wal or -shm made beside it
    eq(fs.glob(db .. "-*"), {})
    local odd = db:gsub("db%.sqlite3$", "odd %%?#name.db")
    fs.copy(db, odd)
    eq(sqlite.query(odd, "SELECT count(*) AS n FROM users")[1].n, 2)
    eq(fs.glob(odd .. "-*"), {})
  end)

  it("refuses SQL that writes, several statements, and values that do not fit", function()
    local db = vault(tmpdir())
    checkerr("a statement that only reads expected", sqlite.query, db, "DELETE FROM users")
    checkerr("one statement only", sqlite.query, db, "SELECT 1; SELECT 2")
    checkerr("as many values as the SQL has parameters", sqlite.query, db, "SELECT ?", {})
    checkerr("value 1: a number, string or boolean expected, got table", sqlite.query, db, "SELECT ?", { {} })
    eq(sqlite.query(db, "SELECT count(*) AS n FROM users")[1].n, 2)
  end)

  it("names the file and the problem", function()
    local d = tmpdir()
    local r, err, code = sqlite.query(d .. "/nope.db", "SELECT 1")
    eq(r, nil)
    eq(code, "ENOENT")
    has(err, d .. "/nope.db")
    eq(fs.exists(d .. "/nope.db"), false, "never created")
    fs.write(d .. "/text.db", string.rep("not a database\n", 100))
    r, err, code = sqlite.query(d .. "/text.db", "SELECT 1 FROM t")
    eq({ r, code }, { nil, "ESQLITE" })
    has(err, "sqlite.query: " .. d .. "/text.db: file is not a database")
    has(select(2, sqlite.query(vault(d), "SELECT * FROM folders")), "no such table: folders")
  end)
end)

describe("sqlite.backup", function()
  it("copies a database in WAL mode while a writer holds it open", function()
    local d = tmpdir()
    local db = vault(d)
    -- a writer with committed rows still in the WAL (not checkpointed) and an open reader
    local writer = exec.run({ "sh", "-c", "(echo 'PRAGMA wal_autocheckpoint=0;'; " ..
      "echo \"INSERT INTO users VALUES ('u3', 'late@example.org');\"; sleep 2) | sqlite3 " .. db
      .. " & echo $!" }).stdout:match("%d+")
    sys.sleep(0.5)
    local b = sqlite.backup(db, d .. "/backup/db.sqlite3")
    eq(b, nil, "the backup directory does not exist")
    fs.mkdir(d .. "/backup")
    b = assert(sqlite.backup(db, d .. "/backup/db.sqlite3"))
    eq(b.file, d .. "/backup/db.sqlite3")
    ok(b.bytes > 100000 and b.pages > 0)
    eq(string.format("%o", fs.stat(b.file).mode & 4095), "600")
    eq(sqlite.query(b.file, "SELECT count(*) AS n FROM users")[1].n, 3, "the committed row is in the copy")
    eq(sqlite.query(b.file, "PRAGMA integrity_check")[1].integrity_check, "ok")
    exec.run({ "kill", writer }, { check = false })
    eq(#fs.glob(d .. "/backup/*"), 1, "no temporary left")
  end)

  it("never replaces a file, and names what is missing", function()
    local d = tmpdir()
    local db = vault(d)
    fs.write(d .. "/taken", "mine")
    local r, err, code = sqlite.backup(db, d .. "/taken")
    eq(r, nil)
    eq(code, "EEXIST")
    has(err, d .. "/taken")
    eq(fs.read(d .. "/taken"), "mine")
    r, err, code = sqlite.backup(d .. "/gone.db", d .. "/copy")
    eq({ r, code }, { nil, "ENOENT" })
    has(err, d .. "/gone.db")
    eq(fs.exists(d .. "/copy"), false)
    fs.write(d .. "/text.db", string.rep("not a database\n", 100))
    r, err, code = sqlite.backup(d .. "/text.db", d .. "/copy")
    eq({ r, code }, { nil, "ESQLITE" })
    has(err, "sqlite.backup: " .. d .. "/text.db: file is not a database")
    eq(#fs.glob(d .. "/copy*"), 0, "no temporary left")
  end)

  it("is planned, not made, in a plan; a failed run removes it", function()
    local d = tmpdir()
    local db = vault(d)
    local p = playbook_file(d, "backup.lua", string.format([[
return playbook { name = "backup",
  phase "p" {
    step "back up" { run = function() sqlite.backup(%q, %q) end },
    step "fails" { run = function(ctx) assert(ctx.plan, "the switch failed") end },
  } }]], db, d .. "/db.backup"))
    local r = hrun_cmd({ "plan", p, "--state", d .. "/state" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would sqlite.backup")
    eq(fs.exists(d .. "/db.backup"), false)
    r = hrun_cmd({ p, "--state", d .. "/state" })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.exists(d .. "/db.backup"), false)
  end)
end)
