-- Hashing: digests the usual tools agree with, manifests of odd trees, verify and
-- compare, the formats of sha256sum, b2sum and xxhsum both ways, resume after SIGKILL.

local function tool(argv, cwd)
  return exec.run(argv, { cwd = cwd, readonly = true }).stdout
end

-- A tree with what trips hashers up.
local function odd_tree()
  local d = tmpdir()
  local root = d .. "/tree"
  fs.mkdir(root .. "/sub/deeper", { parents = true })
  fs.write(root .. "/plain.txt", "hello\n")
  fs.write(root .. "/empty", "")
  fs.write(root .. "/with space", "space")
  fs.write(root .. "/new\nline", "newline")
  fs.write(root .. "/back\\slash", "backslash")
  fs.write(root .. "/bad\xffutf8", "invalid utf-8 name")
  fs.write(root .. "/sub/deeper/big.bin", string.rep("0123456789abcdef", 100000))
  exec.run({ "truncate", "-s", "5M", root .. "/sparse" })
  exec.run({ "ln", root .. "/plain.txt", root .. "/sub/hardlink" })
  exec.run({ "ln", "-s", "plain.txt", root .. "/symlink" })
  exec.run({ "ln", "-s", "/nonexistent", root .. "/dangling" })
  exec.run({ "mkfifo", root .. "/fifo" })
  return root, d
end

local function state()
  return tmpdir() .. "/state"
end

-- hrun with a state directory of its own
local function hrun_in(st, args, opts)
  local argv = { "--state", st }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  return hrun_cmd(argv, opts)
end

describe("hash.file", function()
  it("gives the digests of xxhsum -H2, sha256sum and b2sum", function()
    local root = odd_tree()
    for _, name in ipairs({ "plain.txt", "empty", "sparse", "sub/deeper/big.bin" }) do
      local p = root .. "/" .. name
      eq(hash.file(p), tool({ "xxhsum", "-H2", p }):match("^(%x+)"), "xxh128 of " .. name)
      eq(hash.file(p, { algo = "sha256" }), tool({ "sha256sum", p }):match("^(%x+)"), "sha256 of " .. name)
      eq(hash.file(p, { algo = "blake2b" }), tool({ "b2sum", p }):match("^(%x+)"), "blake2b of " .. name)
    end
    fails("ENOENT", root .. "/nope", hash.file, root .. "/nope")
    fails("EISDIR", root .. "/sub", hash.file, root .. "/sub")
    checkerr("field 'algo': xxh128, sha256 or blake2b, not 'md5'", hash.file, root .. "/empty", { algo = "md5" })
  end)
end)

describe("hash.tree", function()
  it("records every entry of an odd tree, symlinks not followed", function()
    local root = odd_tree()
    local st = state()
    local script = [[
      local root = ...
      local seen = 0
      local m = assert(hash.tree(root, { save = "odd", algo = "sha256", progress = function(p) seen = seen + 1 end }))
      io.write(json.encode({ m = m, seen = seen }))
    ]]
    local d = tmpdir()
    fs.write(d .. "/s.lua", script)
    local r = hrun_in(st, { d .. "/s.lua", root })
    eq(r.code, 0, r.stderr)
    local out = json.decode(r.stdout)
    local m = out.m
    eq(m.complete, true)
    eq(m.files, 9, "regular files, the hard link counted")
    eq(m.entries, 14, "9 files, 2 directories, 2 symlinks, the fifo")
    eq(m.bytes, 6 + 0 + 5 + 7 + 9 + 18 + 1600000 + 5 * 1024 * 1024 + 6)
    ok(out.seen >= 1, "the progress function was called")
    -- sha256sum itself accepts the exported list, from the root
    fs.write(d .. "/x.lua", "assert(hash.export('odd', ...))")
    eq(hrun_in(st, { d .. "/x.lua", d .. "/SHA256SUMS" }).code, 0)
    local check = exec.run({ "sha256sum", "-c", d .. "/SHA256SUMS" }, { cwd = root, check = false })
    ok(check.ok, check.stdout .. check.stderr)
    local _, lines = check.stdout:gsub("OK\n", "")
    eq(lines, 9)
  end)

  it("hashes large files through mappings, a window at a time, to xxhsum's digests", function()
    local root = tmpdir() .. "/large"
    fs.mkdir(root)
    -- 4 MiB and more are mapped, 256 MiB at a time: one file of one window, one of two
    exec.sh("cd " .. shq(root) .. " && head -c 5000000 /dev/urandom > five && truncate -s 300M two " ..
      "&& printf end >> two")
    local r = hrun_in(state(), { "hash", root, "--format", "xxhsum" })
    eq(r.code, 0, r.stderr)
    eq(r.stdout, tool({ "xxhsum", "-H2", "five", "two" }, root))
  end)

  it("excludes globs and stays on one filesystem", function()
    need_root()
    local root = odd_tree()
    fs.mkdir(root .. "/mnt")
    exec.run({ "mount", "-t", "tmpfs", "-o", "size=1m", "hrun-spec", root .. "/mnt" })
    after(function()
      exec.run({ "umount", root .. "/mnt" }, { check = false })
    end)
    fs.write(root .. "/mnt/elsewhere", "x")
    local st = state()
    local d = tmpdir()
    fs.write(d .. "/s.lua", [[
      local root = ...
      local m = assert(hash.tree(root, { exclude = { "*.bin", "sub/deeper" }, one_file_system = true, save = "ex" }))
      io.write(m.entries)
    ]])
    local r = hrun_in(st, { d .. "/s.lua", root })
    eq(r.stdout, "13", r.stderr) -- 14, less sub/deeper and big.bin in it, plus mnt but not what is mounted there
  end)

  it("reports an unreadable file and marks the manifest incomplete", function()
    need_root()
    need("setpriv")
    local root, d = odd_tree()
    fs.write(root .. "/secret", "x", { mode = "0000" })
    exec.run({ "chmod", "-R", "a+rX", d })
    exec.run({ "chmod", "000", root .. "/secret" })
    local st = d .. "/nobody-state"
    fs.mkdir(st, { mode = "0700" })
    exec.run({ "chown", "65534:65534", st })
    local r = exec.run({ "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", HRUN, "--state", st, "hash",
      root, "--save", "n", "-a", "sha256" }, { check = false }) -- in lanes: one fails to open
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "INCOMPLETE: 1 entries could not be read")
    local v = exec.run({ "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", HRUN, "--state", st, "verify",
      "n" }, { check = false })
    has(v.stdout, "errors   secret: Permission denied")
    eq(v.code, 1)
  end)
end)

describe("verify and compare", function()
  it("report changed, missing, added and metadata-only changes", function()
    local root = odd_tree()
    local st = state()
    eq(hrun_in(st, { "hash", root, "--save", "base" }).code, 0)
    local r = hrun_in(st, { "verify", "base" })
    eq(r.code, 0, r.stdout)
    has(r.stdout, "ok: 9 files")
    fs.write(root .. "/plain.txt", "changed\n") -- the hard link keeps the old inode's bytes? no: fs.write renames
    fs.remove(root .. "/empty")
    fs.write(root .. "/new file", "new")
    exec.run({ "chmod", "600", root .. "/with space" })
    exec.run({ "ln", "-sf", "elsewhere", root .. "/symlink" })
    r = hrun_in(st, { "verify", "base", "--json" })
    eq(r.code, 1)
    local v = json.decode(r.stdout)
    eq(v.changed, { "plain.txt", "symlink" })
    eq(v.missing, { "empty" })
    eq(v.added, { "new file" })
    eq(v.meta, { "with space" })
    eq(v.ok, false)
    eq(hrun_in(st, { "hash", root, "--save", "after" }).code, 0)
    local d = tmpdir()
    fs.write(d .. "/c.lua", "io.write(json.encode(hash.compare('base', 'after')))")
    local c = json.decode(hrun_in(st, { d .. "/c.lua" }).stdout)
    eq(c.changed, { "plain.txt", "symlink" })
    eq(c.added, { "new file" })
  end)

  it("--quick trusts unchanged size, mtime and inode", function()
    local root = odd_tree()
    local st = state()
    eq(hrun_in(st, { "hash", root, "--save", "q" }).code, 0)
    -- same size, same mtime, same inode, other bytes: only a full verify sees it
    local stamp = exec.run({ "stat", "-c", "%y", root .. "/with space" }, { readonly = true }).stdout:gsub("\n", "")
    exec.sh("printf SPACE > '" .. root .. "/with space'")
    exec.run({ "touch", "-d", stamp, root .. "/with space" })
    eq(hrun_in(st, { "verify", "q", "--quick" }).code, 0)
    local r = hrun_in(st, { "verify", "q" })
    eq(r.code, 1)
    has(r.stdout, "changed  with space")
    -- the quick check walks beside the manifest: what came and went is still seen
    fs.write(root .. "/a new one", "new")
    fs.write(root .. "/plain.txt", "other content, other size")
    fs.remove(root .. "/empty")
    r = hrun_in(st, { "verify", "q", "--quick", "--json" })
    eq(r.code, 1)
    local v = json.decode(r.stdout)
    eq({ v.changed, v.missing, v.added }, { { "plain.txt" }, { "empty" }, { "a new one" } })
  end)

  it("leaves no scratch manifest behind, also when the verification is stopped", function()
    local root = odd_tree()
    local st = state()
    eq(hrun_in(st, { "hash", root, "--save", "m" }).code, 0)
    local r = hrun_in(st, { "-e", [[
      local before = #hash.manifests()
      assert(hash.verify("m"))
      print(pcall(hash.verify, "m", { progress = function() error("stopped by the caller") end }))
      print(before, #hash.manifests())
    ]] })
    eq(r.code, 0, r.stderr)
    has(r.stdout, "false\t")
    has(r.stdout, "stopped by the caller")
    has(r.stdout, "\n1\t1\n")
  end)
end)

describe("sha256sum, b2sum and xxhsum files", function()
  it("are read as their tools write them, escapes included", function()
    local root = odd_tree()
    local st = state()
    local d = tmpdir()
    local files = { "plain.txt", "with space", "new\nline", "back\\slash", "sub/deeper/big.bin", "empty" }
    for _, t in ipairs({ { "sha256sum", "sha256sum" }, { "b2sum", "b2sum" }, { "xxhsum", "xxhsum", "-H2" } }) do
      local argv = { t[2] }
      for i = 3, #t do
        argv[#argv + 1] = t[i]
      end
      for _, f in ipairs(files) do
        if not (t[1] == "xxhsum" and f:find("[\n\\]")) then -- xxhsum writes such names raw
          argv[#argv + 1] = f
        end
      end
      fs.write(d .. "/" .. t[1], tool(argv, root))
      local r = hrun_in(st, { "verify", d .. "/" .. t[1], root, "--format", t[1] })
      eq(r.code, 0, t[1] .. ": " .. r.stdout .. r.stderr)
      has(r.stdout, "ok:")
    end
    fs.write(root .. "/plain.txt", "tampered")
    local r = hrun_in(st, { "verify", d .. "/sha256sum", root })
    eq(r.code, 1)
    has(r.stdout, "changed  plain.txt")
    fs.write(d .. "/bad", "not a checksum line\n")
    r = hrun_in(st, { "verify", d .. "/bad", root })
    eq(r.code, 1)
    has(r.stderr, d .. "/bad:1: not a coreutils line")
    -- xxhsum cannot hold a name with a newline: refused, nothing written; coreutils' can
    r = hrun_in(st, { "hash", root, "-o", d .. "/odd.xxh", "--format", "xxhsum" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stderr, "a name with a newline cannot be written in xxhsum's format")
    eq(fs.exists(d .. "/odd.xxh"), false)
    r = hrun_in(st, { "hash", root, "-o", d .. "/odd.sum", "--format", "coreutils" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(fs.read(d .. "/odd.sum"), "  new\\nline\n")
  end)
end)

describe("a hash killed with SIGKILL", function()
  it("resumes where it stopped and ends as a full hash would", function()
    local d = tmpdir()
    local root = d .. "/many"
    -- names that sort beside a directory's ("d1 a" < "d1" + "/" < "d10"): the walk must
    -- go on exactly after the last path it committed
    exec.sh("mkdir -p " .. root .. " && cd " .. root .. " && for i in $(seq 1 30); do mkdir d$i; " ..
      "echo a > 'd'$i' a'; echo b > d$i.b; " ..
      "for j in $(seq 1 100); do echo $i-$j > d$i/f$j; done; done")
    local st = state()
    for crash = 1, 2 do
      local r = hrun_in(st, { "hash", root, "--save", "big" }, { env = { HRUN_TEST_CRASH = "hash-commit:" .. crash } })
      eq(r.signal, "SIGKILL")
      r = hrun_in(st, { "hash", "--resume", "big" })
      eq(r.code, 0, r.stdout .. r.stderr)
      has(r.stdout, "3060 files")
    end
    local r
    eq(hrun_in(st, { "hash", root, "--save", "fresh" }).code, 0)
    fs.write(d .. "/c.lua", "io.write(json.encode({ hash.compare('fresh', 'big'), " ..
      "hash.manifests()[1].entries, hash.manifests()[2].entries }))")
    local out = json.decode(hrun_in(st, { d .. "/c.lua" }).stdout)
    local c = out[1]
    eq(c.ok, true)
    eq(c.files, 3060)
    eq(out[2], out[3], "as many entries as a hash that was not stopped: none twice")
    r = hrun_in(st, { "hash", "--resume", "big" })
    eq(r.code, 1)
    has(r.stderr, "manifest 'big' is complete: nothing to resume")
  end)
end)

describe("sha256 over many files at once", function()
  -- Each hasher keeps 16 (AVX-512) or 8 (AVX2) files in SIMD lanes; HRUN_SHA256_LANES
  -- lowers that, 0 being one file at a time through OpenSSL.
  local function sized_tree()
    local d = tmpdir()
    local root = d .. "/sizes"
    fs.mkdir(root)
    local sizes = { 0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 121, 127, 128, 129, 65535, 65536, 65537,
      65536 + 55, 65536 + 56, 131072 + 63, 1000000, 3 * 1048576 + 7 }
    for i = 1, 300 do
      sizes[#sizes + 1] = (i * 7919) % (i % 3 == 0 and 200000 or 3000)
    end
    local block = string.rep("0123456789abcdef\n\0\255", 200000)
    for i, n in ipairs(sizes) do
      fs.write(string.format("%s/f%03d", root, i), block:sub(i, i + n - 1))
    end
    return root, d, #sizes
  end

  it("gives sha256sum's digests for files of every size around a block and a read", function()
    local root, d, n = sized_tree()
    local st = state()
    local outs = {}
    for _, lanes in ipairs({ "", "8", "0" }) do
      local r = hrun_in(st, { "hash", root, "-a", "sha256", "--format", "sha256sum", "-j", "2" },
        { env = { HRUN_SHA256_LANES = lanes } })
      eq(r.code, 0, r.stderr)
      outs[#outs + 1] = r.stdout
    end
    eq(outs[2], outs[1], "8 lanes and the best kernel agree")
    eq(outs[3], outs[1], "one file at a time agrees")
    fs.write(d .. "/SHA256SUMS", outs[1])
    local check = exec.run({ "sha256sum", "--strict", "-c", d .. "/SHA256SUMS" }, { cwd = root, check = false })
    ok(check.ok, check.stdout .. check.stderr)
    eq(select(2, check.stdout:gsub(": OK\n", "")), n)
  end)

  it("closes every file it holds when stopped part-way", function()
    local root = sized_tree()
    -- sparse: 1.6 GB to hash, none of it on the disk
    exec.sh("cd " .. shq(root) .. " && for i in $(seq 1 200); do truncate -s 8M big$i; done")
    local function fds()
      return #assert(fs.list("/proc/self/fd"))
    end
    local d = tmpdir()
    assert(hash.tree(d)) -- the journal's files are open from here on
    local before = fds()
    local ok_, err = pcall(hash.tree, root, { algo = "sha256", progress = function()
      error("stopped by the caller")
    end })
    eq(ok_, false)
    has(err, "stopped by the caller")
    eq(fds(), before, "no file left open")
    local m = assert(hash.tree(root, { algo = "sha256" }))
    eq(m.files, 522)
    eq(m.complete, true)
  end)

  it("stops on Ctrl-C inside a huge file, not at its end", function()
    local d = tmpdir()
    exec.run({ "truncate", "-s", "16G", d .. "/huge" }) -- a minute of SHA-256 on one core
    local t0 = sys.clock()
    local r = exec.sh(string.format("%s --state %s hash -a sha256 %s & pid=$!; sleep 1; kill -INT $pid; " ..
      "wait $pid; echo status=$?", shq(HRUN), shq(state()), shq(d)), { timeout = 120 })
    has(r.stdout, "status=130")
    ok(sys.clock() - t0 < 10, "stopped within seconds")
  end)
end)

describe("hrun hash", function()
  it("prints digests in a tool's format, writes them with -o, and reports progress as JSON", function()
    local root = odd_tree()
    local st = state()
    local r = hrun_in(st, { "hash", root .. "/sub", "-a", "sha256", "--format", "sha256sum" })
    eq(r.code, 0, r.stderr)
    eq(r.stdout, tool({ "sha256sum", "deeper/big.bin", "hardlink" }, root .. "/sub"))
    local d = tmpdir()
    r = hrun_in(st, { "hash", root .. "/sub", "-o", d .. "/X", "--format", "xxhsum", "-j", "1" })
    eq(r.code, 0, r.stderr)
    eq(fs.read(d .. "/X"), tool({ "xxhsum", "-H2", "deeper/big.bin", "hardlink" }, root .. "/sub"))
    r = hrun_in(st, { "hash", root, "--json" })
    local last
    for line in r.stdout:gmatch("[^\n]+") do
      last = json.decode(line)
    end
    eq(last.event, "hash-done")
    eq(last.files, 9)
    r = hrun_in(st, { "hash", root .. "/nope" })
    eq(r.code, 1)
    has(r.stderr, "hash.tree: " .. root .. "/nope: No such file or directory")
    eq(hrun_in(st, { "hash", root, "-a", "md5" }).code, 1)
  end)
end)

describe("the hrun format", function()
  it("exports every entry with its metadata as JSON lines, any name kept", function()
    local root = odd_tree()
    local st = state()
    local r = hrun_in(st, { "hash", root, "-a", "sha256", "--save", "odd" })
    eq(r.code, 0, r.stderr)
    r = hrun_in(st, { "hash", root, "-a", "sha256", "--format", "hrun" })
    eq(r.code, 0, r.stderr)
    local lines = {}
    for line in r.stdout:gmatch("[^\n]+") do
      lines[#lines + 1] = json.decode(line)
    end
    local head = table.remove(lines, 1)
    eq({ head.hrun_manifest, head.algo, head.status, head.files, head.root },
      { 1, "sha256", "complete", 9, root })
    local by = {}
    for _, e in ipairs(lines) do
      local path = e.path or (e.path_hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
      by[path] = e
    end
    eq(#lines, 14, "every entry: files, links, directories, the fifo")
    eq(by["plain.txt"].digest, tool({ "sha256sum", "plain.txt" }, root):match("^(%x+)"))
    eq({ by["plain.txt"].type, by["plain.txt"].size, by["plain.txt"].mode },
      { "file", 6, fs.stat(root .. "/plain.txt").mode })
    eq(by["plain.txt"].ino, by["sub/hardlink"].ino, "hard links share an inode")
    eq({ by.symlink.type, by.symlink.target }, { "link", "plain.txt" })
    eq(by.sub.type, "dir")
    eq(by.fifo.type, "special")
    eq(by["new\nline"].type, "file")
    eq(by["bad\xffutf8"].path_hex, "626164ff75746638", "a name that is not UTF-8 is kept as hex")
    local d = tmpdir()
    r = hrun_in(st, { "-e", string.format("assert(hash.export('odd', %q, { format = 'hrun' }))",
      d .. "/odd.jsonl") })
    eq(r.code, 0, r.stderr)
    local n = 0
    for _ in fs.read(d .. "/odd.jsonl"):gmatch("[^\n]+") do
      n = n + 1
    end
    eq(n, 15, "the manifest, then its 14 entries")
  end)
end)

-- the paths of an export in the hrun format
local function exported(st, name)
  local d = tmpdir()
  local r = hrun_in(st, { "-e", string.format("assert(hash.export(%q, %q, { format = 'hrun' }))", name, d .. "/x") })
  eq(r.code, 0, r.stderr)
  local lines = {}
  for line in fs.read(d .. "/x"):gmatch("[^\n]+") do
    lines[#lines + 1] = line
  end
  return lines
end

local function path_of(e)
  return e.path or (e.path_hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

describe("a manifest's entries", function()
  it("are kept in the order of their paths' bytes, a directory right before what it holds", function()
    local d = tmpdir()
    local root = d .. "/t"
    fs.mkdir(root .. "/a/x", { parents = true })
    for _, f in ipairs({ "a-b", "a0", "a b", "a.c", "a/z", "a/x/y" }) do
      fs.write(root .. "/" .. f, f)
    end
    local st = state()
    eq(hrun_in(st, { "hash", root, "--save", "t" }).code, 0)
    local paths = {}
    for i, line in ipairs(exported(st, "t")) do
      if i > 1 then
        paths[#paths + 1] = path_of(json.decode(line))
      end
    end
    eq(paths, { "a", "a b", "a-b", "a.c", "a/x", "a/x/y", "a/z", "a0" })
  end)

  it("written by an hrun that kept a row each (journal schema 3) are packed, none lost", function()
    need("sqlite3")
    local root = odd_tree()
    local st = state()
    eq(hrun_in(st, { "hash", root, "--save", "odd" }).code, 0)
    eq(hrun_in(st, { "hash", root .. "/sub", "-a", "sha256", "--save", "sub" }).code, 0)
    local before = { odd = exported(st, "odd"), sub = exported(st, "sub") }
    -- the journal as the hrun before packing left it: one row an entry in `entries`
    local function blob(s)
      return s and ("x'" .. s:gsub(".", function(c) return string.format("%02x", c:byte()) end) .. "'") or "NULL"
    end
    local function unhex(h)
      return h and (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
    end
    local sql = { [[
      CREATE TABLE entries (manifest INTEGER NOT NULL, path BLOB NOT NULL, type TEXT NOT NULL,
        size INTEGER, mode INTEGER, mtime_ns INTEGER, dev INTEGER, ino INTEGER, target BLOB,
        digest BLOB, error TEXT, PRIMARY KEY (manifest, path)) WITHOUT ROWID;]] }
    local types = { file = "f", link = "l", dir = "d", special = "s" }
    for _, name in ipairs({ "odd", "sub" }) do
      for i, line in ipairs(before[name]) do
        if i > 1 then
          local e = json.decode(line)
          sql[#sql + 1] = string.format(
            "INSERT INTO entries SELECT id, %s, '%s', %d, %d, %d, %d, %d, %s, %s, %s FROM manifests WHERE name = '%s';",
            blob(path_of(e)), types[e.type], e.size, e.mode, e.mtime_ns, e.dev, e.ino,
            blob(e.target), blob(unhex(e.digest)), e.error and ("'" .. e.error .. "'") or "NULL", name)
        end
      end
    end
    sql[#sql + 1] = [[DROP TABLE chunks; ALTER TABLE manifests DROP COLUMN entries;
      UPDATE manifests SET files = 0, bytes = 0, errors = 0;]]
    -- and without what came after version 4 (the undo journal; version 6's columns)
    sql[#sql + 1] = [[DROP TABLE undos; DROP TABLE playbooks; DROP TABLE children;
      DROP TABLE collections; DROP TABLE notifications; DROP TABLE meta; DROP TABLE fleet_hosts;]]
    for _, c in ipairs({ "effects.host", "effects.remote", "runs.hosts",
      "runs.steps_total", "runs.collected", "runs.selection", "effects.kept", "runs.outcome",
      "runs.rollback_status", "runs.rollback_started", "runs.rollback_ended",
      "runs.resolved", "runs.resolved_by", "runs.resolved_at", "steps.undo_status", "steps.playbook",
      "effects.undo_status", "effects.before", "effects.after", "effects.settled", "steps.changed" }) do
      local t, col = c:match("^(%w+)%.([%w_]+)$")
      sql[#sql + 1] = string.format("ALTER TABLE %s DROP COLUMN %s;", t, col)
    end
    sql[#sql + 1] = "PRAGMA user_version = 3;"
    exec.run({ "sqlite3", st .. "/journal.db" }, { stdin = table.concat(sql, "\n") })
    eq(exec.run({ "sqlite3", st .. "/journal.db", "PRAGMA user_version" }).stdout, "3\n")
    -- the next hrun migrates: the same manifests, entry for entry, and they verify
    eq(exported(st, "odd"), before.odd)
    eq(exported(st, "sub"), before.sub)
    eq(exec.run({ "sqlite3", st .. "/journal.db", "PRAGMA user_version" }).stdout,
      require("hrun.journal").schema_version .. "\n")
    local r = hrun_in(st, { "verify", "odd" })
    eq(r.code, 0, r.stdout .. r.stderr)
  end)
end)
