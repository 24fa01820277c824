-- hrun-portable (docs/portable.md): one static binary with the Lua library inside, what
-- the controller uploads to a host that has no hrun. It links no shared library, runs
-- alone in an otherwise empty root (a playbook journaled and rolled back there), reports
-- hrun's version, and the modules it has not (git, http, service, podman) fail with a
-- message that says so, never a nil-index crash.

local PORTABLE = sys.env("HRUN_PORTABLE") or (HRUN:match("^(.*)/[^/]*$") or ".") .. "/hrun-portable"

local function portable(args, opts)
  local argv = { PORTABLE }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  opts = opts or {}
  opts.check = false
  return exec.run(argv, opts)
end

-- root() → dir: an empty root holding only the binary (/hrun) and an empty /tmp (and
-- /proc, where in_root mounts a proc of its own, gone with its mount namespace)
local function root()
  need_root()
  need("unshare")
  local dir = tmpdir()
  fs.mkdir(dir .. "/tmp")
  fs.mkdir(dir .. "/proc")
  fs.copy(PORTABLE, dir .. "/hrun")
  return dir
end

-- in_root(dir, args) → exec.run's result of /hrun args chrooted into dir
local function in_root(dir, args)
  local argv = { "unshare", "--mount", "--pid", "--fork", "--root=" .. dir, "--mount-proc", "/hrun",
    "--no-color" }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  return exec.run(argv, { check = false, env = { PATH = "/", HOME = "/tmp" } })
end

-- Every module the portable build has, in two steps: files written and read, a tree
-- hashed, JSON, a SQLite backup queried, sys, and exec (of the binary itself: the root
-- has no other program; its stdin given, as the root has no /dev/null either).
local PLAYBOOK = [[
return playbook { name = "portable", params = { data = "/tmp/data" },
  phase "p" {
    step "files" { run = function(ctx)
      local d = ctx.params.data
      fs.mkdir(d .. "/tree", { parents = true })
      fs.write(d .. "/tree/a", "alpha")
      fs.write(d .. "/tree/b", json.encode({ n = 1 }))
      assert(json.decode(fs.read(d .. "/tree/b")).n == 1)
      local m = hash.tree(d .. "/tree")
      fs.write(d .. "/manifest.json", json.encode({ files = m.files, bytes = m.bytes }))
    end },
    step "db" { run = function(ctx)
      local d = ctx.params.data
      sqlite.backup("/tmp/state/journal.db", d .. "/journal-copy.db")
      local rows = sqlite.query(d .. "/journal-copy.db", "select count(*) as n from runs")
      local itself = "/hrun"
      local v = exec.run({ itself, "version" }, { stdin = "", readonly = true }).stdout
      fs.write(d .. "/facts", json.encode({ runs = rows[1].n, root = sys.is_root(), version = v }))
    end },
  } }
]]

describe("the binary", function()
  it("is statically linked: file says so, ldd finds nothing to load", function()
    need("file")
    need("ldd")
    ok(fs.exists(PORTABLE), PORTABLE .. " (built by scripts/build.sh beside hrun)")
    has(exec.run({ "file", "-L", PORTABLE }).stdout, "statically linked")
    local l = exec.run({ "ldd", PORTABLE }, { check = false })
    has(l.stdout .. l.stderr, "not a dynamic executable")
  end)

  it("reports hrun's version; its library is the one inside unless HRUN_PATH says", function()
    local full = hrun_cmd({ "version" }).stdout
    local v = portable({ "version" }).stdout
    eq(v:gsub(" portable", ""), full, "the same version as hrun's")
    has(portable({ "version", "-v" }).stdout, "library: (built in)")
    local src = (FIXTURES:match("^(.*)/tests/fixtures$") or "..") .. "/stdlib"
    has(portable({ "version", "-v" }, { env = { HRUN_PATH = src } }).stdout, "library: " .. src)
  end)

  it("has no git, http, service, podman functions in its listing", function()
    local list = portable({ "help", "modules" }).stdout
    has(list, "fs.write")
    has(list, "sqlite.query")
    has(list, "nixos.")
    for _, m in ipairs({ "git.", "http.", "service.", "podman." }) do
      ok(not list:find("\n  " .. m, 1, true), m .. " listed")
      has(hrun_cmd({ "help", "modules" }).stdout, "\n  " .. m, "the full build has " .. m)
    end
  end)
end)

describe("in an empty root", function()
  it("runs version and a playbook of every module it has, journaled, then rolls it back", function()
    local dir = root()
    local r = in_root(dir, { "version" })
    eq(r.code, 0, r.stderr)
    has(r.stdout, "hrun ")
    fs.write(dir .. "/tmp/p.lua", PLAYBOOK)
    r = in_root(dir, { "--state", "/tmp/state", "/tmp/p.lua" })
    eq(r.code, 0, r.stdout .. r.stderr)
    local data = dir .. "/tmp/data"
    eq(fs.read(data .. "/tree/a"), "alpha")
    eq(json.decode(fs.read(data .. "/manifest.json")), { files = 2, bytes = 12 })
    local facts = json.decode(fs.read(data .. "/facts"))
    eq(facts.runs, 1)
    eq(facts.root, true)
    eq(facts.version, in_root(dir, { "version" }).stdout, "exec.run of /hrun")
    r = in_root(dir, { "--state", "/tmp/state", "--yes", "rollback" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "rolled back (run 1)")
    ok(not fs.exists(data), "the rollback removed what the run made")
    eq(fs.list(dir .. "/tmp"), { "p.lua", "state" })
  end)
end)

describe("a module it has not", function()
  it("fails the step that calls it, saying so and what to use instead", function()
    local d = tmpdir()
    local p = playbook_file(d, "git.lua", [[
return playbook { name = "g", phase "p" {
  step "made" { run = function() fs.write("]] .. d .. [[/made", "x") end },
  step "clone" { run = function() git.clone("https://example.org/r.git", "]] .. d .. [[/r") end },
} }]])
    local r = portable({ "--no-color", "--state", d .. "/state", p })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "git.lua:3: git.clone: git is not in the portable build of hrun " ..
      "(run the host's own git through exec.run")
    ok(not fs.exists(d .. "/made"), "rolled back")
  end)

  it("has the full build's functions, as stand-ins (a playbook's copy of the module has them)", function()
    for _, m in ipairs({ "git", "http", "service", "podman" }) do
      local code = string.format([[local t = {} for k in pairs(require("hrun.%s")) do
        if k:sub(1, 1) ~= "_" then t[#t + 1] = k end end table.sort(t) print(table.concat(t, " "))]], m)
      eq(portable({ "-e", code }).stdout, hrun_cmd({ "-e", code }).stdout, m)
    end
  end)

  it("returns nil, why, ENOTSUP outside a playbook (the engine's callers carry on; a script's global)", function()
    local r = portable({ "-e", [[
local v, why, code = require("hrun.http").get("http://localhost/")
print(v, why, code)
print(select("#", require("hrun.service").status("x")))
print(select(3, git.open("/")))]] })
    eq(r.code, 0, r.stderr)
    eq(r.stdout, "nil\thttp.get: http is not in the portable build of hrun (make HTTP requests and " ..
      "checks from the controller)\tENOTSUP\n3\nENOTSUP\n")
  end)

  it("net scoped to a URL is refused as a capability (no URL parser without libcurl)", function()
    local d = tmpdir()
    local p = playbook_file(d, "pb.lua", [[
return playbook { name = "u", capabilities = { "net:https://ntfy.example" },
  phase "p" { step "s" { run = function() end } } }]])
    local r = portable({ "check", p, "--state", d .. "/state" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "'net:https://ntfy.example': a net capability scoped to a URL is not in the portable build")
  end)
end)
