-- End to end: the playbooks of migration phases 1–3 (services moved from the old host's
-- containers to NixOS) on a sandbox built from real parts — the old host is a real host
-- reached over OpenSSH (tests/fixtures/hosts.sh: systemd in nspawn, its own root and
-- sshd; hrun's portable build uploaded to it), its "containers" busybox httpd units
-- serving its app data, stopped and started there; its PostgreSQL a real cluster; NixOS
-- is systemd in nspawn with units named as NixOS names them (podman-<name>), serving the
-- data where it was copied (rsync over ssh from the old host), a second PostgreSQL
-- cluster, a private nix store with the server's flake in git. Each phase runs for real;
-- failures (a unit that fails, a database that is corrupt) are proven rolled back: the
-- old containers running again, nothing left on the new side nor in the old host's
-- scratch directory.

local ROOT = exec.run({ "realpath", arg[0]:match("^(.*)/tests/[^/]+$") }, { readonly = true }).stdout:gsub("\n$", "")

local function playbook_path(name)
  return ROOT .. "/playbooks/" .. name .. ".lua"
end

local function sqlite_db(file, sql)
  exec.run({ "sqlite3", file }, { stdin = sql })
end

-- The two hosts. services: {name = {port_old, port_new, files = {path = content}, fail}}
-- — each gets app data with a health file, a unit on the old host (its container) and a
-- unit on the new one. Returns h (hrun_on runs playbooks on it) with ways to look at
-- both sides.
local function hosts(services)
  local h = { work = tmpdir(), old = {}, new = {} }
  local hs = ssh_hosts(1)
  local old = hs[1]
  h.appdata = old.root .. "/DATA/AppData" -- as seen from here; /DATA/AppData there
  h.scratch = old.root .. "/var/tmp/hrun-migration"
  h.lib = h.work .. "/nixos/var/lib"
  fs.mkdir(h.lib, { parents = true })
  fs.mkdir(h.work .. "/traefik/dynamic", { parents = true })
  h.proxy = h.work .. "/traefik/dynamic/migration.yml"
  fs.write(h.proxy, "# routes to ZimaOS\n")
  local units, names = {}, {}
  for name, s in pairs(services) do
    local data = h.appdata .. "/" .. name
    fs.mkdir(data, { parents = true })
    fs.write(data .. "/health", name .. " ok\n")
    for path, content in pairs(s.files or {}) do
      local dir = path:match("^(.*)/[^/]+$")
      if dir then
        fs.mkdir(data .. "/" .. dir, { parents = true })
      end
      fs.write(data .. "/" .. path, content)
    end
    s.old, s.new = free_port(), free_port()
    -- its "container" on the old host: a unit there, as docker's would be
    fs.write(string.format("%s/etc/systemd/system/%s.service", old.root, name), string.format(
      "[Unit]\nDescription=%s on the old host (its container)\n[Service]\n"
      .. "ExecStart=/bin/busybox httpd -f -p 127.0.0.1:%d -h /DATA/AppData/%s\n", name, s.old, name))
    names[#names + 1] = name
    s.old_url = "http://127.0.0.1:" .. s.old .. "/health"
    s.url = "http://127.0.0.1:" .. s.new .. "/health"
    units["podman-" .. name .. ".service"] = string.format("[Unit]\nDescription=%s on NixOS (stand-in)\n"
      .. "[Service]\nExecStart=%s\n", name, s.fail and "/bin/false" or
      string.format("/bin/busybox httpd -f -p 127.0.0.1:%d -h %s/%s", s.new, h.lib, name))
  end
  local said, code, err = old:sh("systemctl daemon-reload && systemctl start " .. table.concat(names, " "))
  assert(code == 0, said .. err)
  for _, s in pairs(services) do
    http.wait(s.old_url, { timeout = 20, interval = 0.1 })
  end
  h.nix, h.env = nix_host(true)
  h.env.HRUN_SSH_CONFIG, h.env.HRUN_SSH_SERVER_ALIVE = hs.ssh_config, "1"
  for k, v in pairs(systemd_container(units, { h.lib })) do
    h.env[k] = v
  end
  h.pg_old, h.pg_old_dir = pg_cluster()
  h.pg_new, h.pg_new_dir = pg_cluster()
  h.etc = h.nix .. "/etc-nixos"
  h.state = h.work .. "/state"
  h.backups = h.work .. "/backups"
  h.services = services
  function h.params(moves, extra)
    local p = {
      old = { host = "old", ssh = old.url, appdata = "/DATA/AppData", scratch = "/var/tmp/hrun-migration",
        stop = { "systemctl", "stop", "{container}" }, start = { "systemctl", "start", "{container}" } },
      pg_old = { host = h.pg_old_dir, port = tonumber(h.pg_old.PGPORT), user = "postgres" },
      pg_new = { host = h.pg_new_dir, port = tonumber(h.pg_new.PGPORT), user = "postgres" },
      config = { flake = h.etc, host = "hwc-server", ref = "", profile = h.nix .. "/profiles/system" },
      backup_dir = h.backups, proxy = { file = h.proxy }, services = moves,
    }
    for _, m in ipairs(moves) do
      local s = services[m.name]
      m.unit, m.data, m.to = "podman-" .. m.name, m.name, h.lib .. "/" .. m.name
      m.url, m.old_url, m.public, m.match = s.url, s.old_url, s.url, m.name:gsub("%p", "%%%0") .. " ok"
      m.timeout = 20
    end
    for k, v in pairs(extra or {}) do
      p[k] = v
    end
    h.paramfile = h.work .. "/params.json"
    fs.write(h.paramfile, json.encode(p))
  end
  -- h.run(playbook [, command]): hrun [command] playbooks/<playbook>.lua --params …
  h.old_url = old.url -- h.old_url = "local": an old host that cannot run anything
  h.old = old
  function h.run(name, cmd)
    local argv = { cmd, playbook_path(name), "-H", "old=" .. h.old_url }
    if not cmd then
      argv = { playbook_path(name), "-H", "old=" .. h.old_url }
    end
    return hrun_on({ env = h.env, params = h.paramfile, state = h.state, work = h.work }, argv)
  end
  function h.rollback()
    return hrun_on({ env = h.env, state = h.state, work = h.work }, { "rollback" })
  end
  function h.running(container)
    local out = old:sh("systemctl is-active " .. container)
    return out:gsub("\n$", "") == "active" and "true" or "false"
  end
  function h.psql(env, db, sql)
    return exec.run({ "psql", "-X", "-A", "-t", "-d", db, "-c", sql }, { env = env }).stdout:gsub("%s+$", "")
  end
  -- the configuration the phase deploys, committed
  fs.write(h.etc .. "/label", "services")
  exec.run({ "git", "-C", h.etc, "-c", "user.name=admin", "-c", "user.email=admin@hwc", "commit", "-qam",
    "the services on NixOS" }, { env = h.env })
  return host_views(h)
end

-- What is on the new side: nothing once a run is rolled back.
local function nothing_moved(h, names)
  for _, name in ipairs(names) do
    eq(fs.exists(h.lib .. "/" .. name), false, name .. "'s copy removed")
    eq(h.active("podman-" .. name), "inactive", name)
    eq(h.running(name), "true", name .. " runs on the old host again")
  end
  eq(fs.read(h.proxy), "# routes to ZimaOS\n")
  eq(h.generation(), "system-2-link")
  eq(h.tags(), "")
  eq(#fs.glob(h.backups .. "/*/*"), 0, "no backups left")
  eq(fs.exists(h.scratch), false, "nothing left in the old host's scratch directory")
end

describe("phase 1: the non-critical services", function()
  it("moves them with their data and databases; `hrun rollback` gives them back to the old host", function()
    local h = hosts({
      ["uptime-kuma"] = { files = { ["upload/logo.png"] = string.rep("\137PNG", 5000) } },
      memos = { files = { ["assets/odd name\nwith newline.txt"] = "memo", [".thumbnail_cache/a"] = "" } },
      linkwarden = { files = { ["archives/1/page.pdf"] = string.rep("%PDF", 30000) } },
    })
    sqlite_db(h.appdata .. "/uptime-kuma/kuma.db", [[
PRAGMA journal_mode = WAL;
CREATE TABLE monitor (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE heartbeat (id INTEGER PRIMARY KEY, monitor_id INT, status INT);
INSERT INTO monitor (name) VALUES ('nextcloud'), ('immich');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
  INSERT INTO heartbeat (monitor_id, status) SELECT i % 2 + 1, 1 FROM n;
]])
    exec.run({ "psql", "-X", "-q", "-c", "CREATE DATABASE linkwarden" }, { env = h.pg_old })
    exec.run({ "psql", "-X", "-q", "-d", "linkwarden", "-c", 'CREATE TABLE "Link" (id int PRIMARY KEY, url text)',
      "-c", "INSERT INTO \"Link\" SELECT g, 'https://example.org/' || g FROM generate_series(1, 750) g",
      "-c", "CREATE TABLE users (id int)" }, { env = h.pg_old })
    h.params({
      { name = "uptime-kuma", sqlite = { { file = "kuma.db", tables = { "monitor", "heartbeat" } } },
        host = "status.example.org" },
      { name = "memos" },
      { name = "linkwarden", postgres = { { database = "linkwarden" } }, host = "links.example.org" },
    })
    local before = {}
    for _, name in ipairs({ "uptime-kuma", "memos", "linkwarden" }) do
      before[name] = tree(h.appdata .. "/" .. name)
    end

    -- the plan changes nothing
    local r = h.run("phase1-non-critical", "plan")
    eq(r.code, 0, r.stdout .. r.stderr)
    -- the container stopped on the old host, its undo there; the data read there by rsync
    has(r.stdout, 'would exec.run systemctl stop uptime-kuma {"timeout":300}  @old  [undo: exec.run systemctl ' ..
      'start uptime-kuma {"timeout":300}]')
    has(r.stdout, "would sqlite.backup /DATA/AppData/uptime-kuma/kuma.db " ..
      "/var/tmp/hrun-migration/uptime-kuma/kuma.db  @old")
    has(r.stdout, ":/DATA/AppData/memos/ " .. h.lib .. "/memos/")
    ok(not r.stdout:find("NOT DECLARED", 1, true), "phase 1 declares every capability it uses: " ..
      (r.stdout:match("[^\n]*NOT DECLARED[^\n]*") or ""))
    eq(h.running("memos"), "true")

    r = h.run("phase1-non-critical")
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "uptime-kuma: kuma.db backed up")
    has(r.stdout, "rows heartbeat 2000, monitor 2")
    has(r.stdout, "checksums match")
    has(r.stdout, "linkwarden: database linkwarden restored, rows match (2 tables)")
    has(r.stdout, "3 public URLs answer")
    has(r.stdout, "no rows lost (4 tables counted)")
    for name, t in pairs(before) do
      eq(tree(h.lib .. "/" .. name), t, name .. ": the copy is the old data, byte for byte")
      eq(h.active("podman-" .. name), "active", name)
      eq(h.running(name), "false", name .. " stopped on the old host")
      eq(tree(h.appdata .. "/" .. name), t, name .. ": the old data untouched")
    end
    eq(h.psql(h.pg_new, "linkwarden", 'SELECT count(*) FROM "Link"'), "750")
    has(fs.read(h.proxy), "rule: \"Host(`links.example.org`)\"")
    has(fs.read(h.proxy), "- url: \"http://127.0.0.1:" .. h.services.linkwarden.new .. "\"")
    eq(h.generation(), "system-3-link")
    eq(h.tags(), "migration/phase1\n")

    -- later: back to the old host
    r = h.rollback()
    eq(r.code, 0, r.stdout .. r.stderr)
    nothing_moved(h, { "uptime-kuma", "memos", "linkwarden" })
    eq(h.psql(h.pg_new, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'linkwarden'"), "0")
    eq(h.psql(h.pg_old, "linkwarden", 'SELECT count(*) FROM "Link"'), "750")
    for name, t in pairs(before) do
      eq(tree(h.appdata .. "/" .. name), t)
    end
  end)

  it("moves them from an old host that cannot run anything: command templates, its data mounted here", function()
    local h = hosts({ memos = { files = { ["assets/a.txt"] = string.rep("memo", 1000) } } })
    local ssh = { "ssh", "-F", h.env.HRUN_SSH_CONFIG, h.old.name }
    h.params({ { name = "memos" } }, { old = { host = "local", appdata = h.appdata, -- "mounted" here
      stop = { ssh[1], ssh[2], ssh[3], ssh[4], "systemctl", "stop", "{container}" },
      start = { ssh[1], ssh[2], ssh[3], ssh[4], "systemctl", "start", "{container}" } } })
    h.old_url = "local"
    local before = tree(h.appdata .. "/memos")
    local r = h.run("phase1-non-critical")
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "memos: 2 files")
    eq(tree(h.lib .. "/memos"), before, "the copy is the old data, byte for byte")
    eq(h.running("memos"), "false", "stopped on the old host by its template")
    eq(fs.exists(h.old.root .. "/DATA/.hrun"), false, "nothing uploaded to the old host")
    r = h.rollback()
    eq(r.code, 0, r.stdout .. r.stderr)
    nothing_moved(h, { "memos" })
  end)

  it("refuses a services list with a mistake, naming the service and the field, and stops nothing", function()
    local h = hosts({ memos = {} })
    h.params({ { name = "memos" } })
    local p = json.decode(fs.read(h.paramfile))
    p.services[1].to = "var/lib/memos"
    p.services[1].sqllite = {}
    fs.write(h.paramfile, json.encode(p))
    local r = h.run("phase1-non-critical")
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "memos: unknown field 'sqllite'")
    has(r.stdout, "memos: field 'to' must be an absolute path")
    eq(h.running("memos"), "true")
  end)
end)

describe("phase 2: the media stack", function()
  it("refuses to start a download client before the VPN gateway; rolls back when a service fails", function()
    local h = hosts({
      gluetun = { files = { ["wireguard/wg0.conf"] = "[Interface]\nPrivateKey = secret\n" } },
      qbittorrent = { files = { ["qBittorrent/BT_backup/abc.fastresume"] = string.rep("d", 4000),
        ["qBittorrent/BT_backup/abc.torrent"] = string.rep("t", 9000) } },
      sonarr = {},
      emby = { fail = true, files = { ["metadata/library/poster.jpg"] = string.rep("J", 70000) } },
    })
    sqlite_db(h.appdata .. "/sonarr/sonarr.db", [[
CREATE TABLE History (Id INTEGER PRIMARY KEY, SeriesId INT, EventType INT, Date TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
  INSERT INTO History (SeriesId, EventType, Date) SELECT i % 7, 1, '2025-01-01' FROM n;
]])
    sqlite_db(h.appdata .. "/emby/library.db", [[
PRAGMA journal_mode = WAL;
CREATE TABLE MediaItems (Id INTEGER PRIMARY KEY, Name TEXT);
CREATE TABLE UserDatas (UserId INT, ItemId INT, Played INT, PlaybackPositionTicks INT);
INSERT INTO MediaItems (Name) VALUES ('Film'), ('Series');
INSERT INTO UserDatas VALUES (1, 1, 1, 0), (1, 2, 0, 12345);
]])
    local media = h.work .. "/array/media"
    fs.mkdir(media .. "/tv", { parents = true })
    fs.write(media .. "/tv/episode.mkv", "frames")
    local moves = {
      { name = "qbittorrent" },
      { name = "gluetun" },
      { name = "sonarr", sqlite = { { file = "sonarr.db", tables = { "History" } } } },
      { name = "emby", sqlite = { { file = "library.db", tables = { "MediaItems", "UserDatas" } } } },
    }
    local vpn = { unit = "podman-gluetun", url = h.services.gluetun.url, match = "gluetun ok" }
    h.params(moves, { vpn = vpn, media_paths = { media .. "/tv" } })
    local r = h.run("phase2-media-stack")
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "the VPN gateway (podman-gluetun) must be the first service: qbittorrent would start outside")
    eq(h.running("qbittorrent"), "true")

    moves[1], moves[2] = moves[2], moves[1]
    h.params(moves, { vpn = vpn, media_paths = { media .. "/tv" } })
    local before = {}
    for name in pairs(h.services) do
      before[name] = tree(h.appdata .. "/" .. name)
    end
    r = h.run("phase2-media-stack")
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "sonarr: sonarr.db backed up")
    has(r.stdout, "rows History 300")
    has(r.stdout, "emby: library.db backed up")
    has(r.stdout, "rows MediaItems 2, UserDatas 2")
    -- the tunnel before any download client
    local up, tunnel, qbit = r.stdout:find("podman%-gluetun%.service: active"),
      r.stdout:find("the tunnel is up"), r.stdout:find("podman%-qbittorrent%.service: active")
    ok(up and tunnel and qbit and up < tunnel and tunnel < qbit, r.stdout)
    has(r.stdout .. r.stderr, "podman-emby.service")
    has(r.stdout, "undo stop the services on the old host: undone")
    nothing_moved(h, { "gluetun", "qbittorrent", "sonarr", "emby" })
    for name, t in pairs(before) do
      eq(tree(h.appdata .. "/" .. name), t, name .. ": the old data untouched")
    end
  end)
end)

describe("phase 3: the critical services", function()
  local function critical()
    local h = hosts({
      nextcloud = { files = { ["data/admin/files/Documents/report.odt"] = string.rep("odt", 20000),
        ["config/config.php"] = "<?php $CONFIG = array('dbtype' => 'pgsql');\n" } },
      vaultwarden = { files = { ["rsa_key.pem"] = "-----BEGIN PRIVATE KEY-----\n" } },
    })
    sqlite_db(h.appdata .. "/vaultwarden/db.sqlite3", [[
PRAGMA journal_mode = WAL;
CREATE TABLE users (uuid TEXT PRIMARY KEY, email TEXT);
CREATE TABLE ciphers (uuid TEXT PRIMARY KEY, user_uuid TEXT, data BLOB);
INSERT INTO users VALUES ('u1', 'admin@example.org'), ('u2', 'family@example.org');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
  INSERT INTO ciphers SELECT 'c' || i, 'u1', randomblob(300) FROM n;
]])
    exec.run({ "psql", "-X", "-q", "-c", "CREATE DATABASE nextcloud" }, { env = h.pg_old })
    exec.run({ "psql", "-X", "-q", "-d", "nextcloud", "-c", "CREATE TABLE oc_filecache (fileid bigint, path text)",
      "-c", "INSERT INTO oc_filecache SELECT g, 'files/' || g FROM generate_series(1, 5000) g",
      "-c", "CREATE TABLE oc_users (uid text)", "-c", "INSERT INTO oc_users VALUES ('admin'), ('family')" },
      { env = h.pg_old })
    h.params({
      { name = "nextcloud", postgres = { { database = "nextcloud" } }, host = "cloud.example.org" },
      { name = "vaultwarden", sqlite = { { file = "db.sqlite3", tables = { "users", "ciphers" } } },
        host = "vault.example.org" },
    }, { mandatory_backup = { "vaultwarden" }, max_downtime = 300 })
    return h
  end

  it("moves Nextcloud's PostgreSQL and Vaultwarden with a backup proven first", function()
    local h = critical()
    local r = h.run("phase3-critical-services")
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "vaultwarden: the backup of db.sqlite3 restores, rows match (ciphers 400, users 2)")
    has(r.stdout, "nextcloud: database nextcloud restored, rows match (2 tables)")
    has(r.stdout, "longest downtime")
    eq(h.psql(h.pg_new, "nextcloud", "SELECT count(*) FROM oc_filecache"), "5000")
    eq(tree(h.lib .. "/vaultwarden"), tree(h.appdata .. "/vaultwarden"))
    eq(fs.glob(h.backups .. "/vaultwarden/*"), { h.backups .. "/vaultwarden/db.sqlite3" }, "no scratch left")
    eq(h.tags(), "migration/phase3\n")
    r = h.rollback()
    eq(r.code, 0, r.stdout .. r.stderr)
    nothing_moved(h, { "nextcloud", "vaultwarden" })
    eq(h.psql(h.pg_new, "postgres", "SELECT count(*) FROM pg_database WHERE datname = 'nextcloud'"), "0")
  end)

  it("moves nothing when Vaultwarden's database is corrupt: its backup is mandatory", function()
    local h = critical()
    -- a damaged page in the middle of the database (a disk error, a bad sector)
    local db = h.appdata .. "/vaultwarden/db.sqlite3"
    local bytes = fs.read(db)
    fs.write(db, bytes:sub(1, 12288) .. string.rep("\255", 8192) .. bytes:sub(12288 + 8193))
    local r = h.run("phase3-critical-services")
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "step back up their databases: failed")
    has(r.stdout .. r.stderr, "vaultwarden")
    nothing_moved(h, { "nextcloud", "vaultwarden" })
  end)
end)
