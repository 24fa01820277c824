-- Playbooks from git: the journal records the commit a playbook ran from and whether its
-- tree was dirty; --require-clean refuses a dirty one; `hrun fetch` clones a shared
-- playbook repository into the state directory pinned to a commit, `hrun NAME/x.lua`
-- runs it, `hrun fetch --update NAME` shows what changed before moving the pin.

local function trim(s)
  return (s:gsub("%s+$", ""))
end

local function commit_all(dir, message)
  exec.run({ "git", "-C", dir, "add", "-A" })
  exec.run({ "git", "-C", dir, "-c", "user.name=Sharer", "-c", "user.email=s@example.org", "commit", "-q", "-m",
    message })
  return trim(exec.run({ "git", "-C", dir, "rev-parse", "HEAD" }).stdout)
end

local PLAYBOOK = [[
return playbook {
  name = "shared-backup", version = "%s",
  params = { out = "" },
  capabilities = { "fs:/tmp" },
  phase "backup" {
    step "write" { run = function(ctx) fs.write(ctx.params.out, "written by %s\n") end },
  },
}
]]

-- A repository of shared playbooks (a work tree and its bare "remote") with one commit.
local function shared()
  need("git")
  local d = tmpdir()
  local work = d .. "/work"
  exec.run({ "git", "init", "-q", "-b", "main", work })
  fs.write(work .. "/backup.lua", PLAYBOOK:format("1.0", "v1"))
  fs.write(work .. "/README.md", "# shared playbooks\n")
  local c1 = commit_all(work, "v1")
  exec.run({ "git", "-C", work, "tag", "v1" })
  local bare = d .. "/shared.git"
  exec.run({ "git", "clone", "-q", "--bare", work, bare })
  return d, work, bare, c1
end

local function state_of(d)
  return d .. "/state"
end

describe("playbook provenance", function()
  it("journals the commit a playbook ran from and whether its tree was dirty", function()
    local d, work, _, c1 = shared()
    local state = state_of(d)
    local r = hrun_cmd({ work .. "/backup.lua", "--state", state, "-p", "out=" .. d .. "/out" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "@ " .. c1:sub(1, 12))
    local show = hrun_cmd({ "show", "1", "--json", "--state", state })
    local run = json.decode(show.stdout)
    eq(run.git_commit, c1)
    eq(run.git_dirty, 0)
    fs.write(work .. "/backup.lua", PLAYBOOK:format("1.1", "a local edit"))
    r = hrun_cmd({ work .. "/backup.lua", "--state", state, "-p", "out=" .. d .. "/out" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "(dirty)")
    run = json.decode(hrun_cmd({ "show", "2", "--json", "--state", state }).stdout)
    eq(run.git_commit, c1)
    eq(run.git_dirty, 1)
    has(hrun_cmd({ "show", "2", "--state", state }).stdout, "git        " .. c1 .. " (dirty)")
  end)

  it("--require-clean refuses a dirty tree or a playbook outside git, and runs nothing", function()
    local d, work = shared()
    local state = state_of(d)
    fs.write(work .. "/backup.lua", PLAYBOOK:format("1.1", "a local edit"))
    local r = hrun_cmd({ work .. "/backup.lua", "--require-clean", "--state", state, "-p", "out=" .. d .. "/out" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "--require-clean: " .. work .. " has changes not committed:")
    has(r.stderr, "backup.lua (modified)")
    eq(fs.exists(d .. "/out"), false)
    eq(fs.exists(state .. "/journal.db"), false, "not even a run was journaled")
    -- untracked files do not make it dirty
    exec.run({ "git", "-C", work, "checkout", "-q", "--", "backup.lua" })
    fs.write(work .. "/notes.txt", "mine")
    r = hrun_cmd({ work .. "/backup.lua", "--require-clean", "--state", state, "-p", "out=" .. d .. "/out" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/out"), "written by v1\n")
    -- outside any repository
    local loose = playbook_file(tmpdir(), "loose.lua", PLAYBOOK:format("1", "loose"))
    r = hrun_cmd({ "plan", loose, "--require-clean", "--state", state, "-p", "out=" .. d .. "/out2" })
    eq(r.code, 3)
    has(r.stderr, "is not in a git repository")
  end)
end)

describe("a fetched playbook", function()
  it("runs in the capability sandbox; its scripts do not run, nor --debug", function()
    local d, work, bare = shared()
    fs.write(work .. "/greedy.lua", [[
return playbook { name = "greedy", capabilities = { "fs:/tmp" },
  phase "p" { step "s" { run = function() fs.write("/etc/hrun-greedy", "x") end } } }]])
    fs.write(work .. "/script.lua", [[fs.write("/etc/hrun-script", "x")]])
    commit_all(work, "more")
    exec.run({ "git", "-C", work, "push", "-q", bare, "main" })
    local state = state_of(d)
    eq(hrun_cmd({ "fetch", "file://" .. bare, "--state", state }).code, 0)
    local r = hrun_cmd({ "shared/greedy.lua", "--state", state })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: fs.write needs the capability 'fs:/etc/hrun-greedy', which the playbook does not " ..
      "declare (it declares: fs:/tmp)")
    eq(fs.exists("/etc/hrun-greedy"), false)
    -- however it is named
    r = hrun_cmd({ state .. "/playbooks/shared/greedy.lua", "--state", d .. "/other-state" })
    eq(r.code, 1, r.stdout)
    has(r.stdout, "sandbox: fs.write needs the capability 'fs:/etc/hrun-greedy'")
    r = hrun_cmd({ "shared/script.lua", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "a fetched repository's scripts do not run")
    eq(fs.exists("/etc/hrun-script"), false)
    r = hrun_cmd({ "shared/greedy.lua", "--debug", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "--debug and --break open a REPL with every power: not for a sandboxed playbook")
    r = hrun_cmd({ "repl", state .. "/playbooks/shared/greedy.lua", "--state", state }, { stdin = "" })
    eq(r.code, 3)
    has(r.stderr, "the REPL and the debugger have every power")
  end)
end)

describe("hrun fetch", function()
  it("clones a shared repository pinned to a commit, and runs its playbooks by name", function()
    local d, _, bare, c1 = shared()
    local state = state_of(d)
    local r = hrun_cmd({ "fetch", "file://" .. bare, "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "fetched shared: file://" .. bare .. " at " .. c1:sub(1, 12) .. " (v1)")
    has(r.stdout, "hrun shared/backup.lua")
    local lock = json.decode(fs.read(state .. "/playbooks/shared.lock"))
    eq({ lock.url, lock.commit, lock.kind, lock.branch }, { "file://" .. bare, c1, "branch", "main" })
    eq(fs.stat(state .. "/playbooks/shared.lock").mode, tonumber("600", 8))
    local checkout = state .. "/playbooks/shared"
    eq(trim(exec.run({ "git", "-C", checkout, "rev-parse", "HEAD" }).stdout), c1)
    eq(trim(exec.run({ "git", "-C", checkout, "status", "--porcelain", "-b" }).stdout), "## HEAD (no branch)",
      "HEAD detached at the pin")
    -- run it by NAME/playbook.lua from anywhere
    r = hrun_cmd({ "shared/backup.lua", "--state", state, "-p", "out=" .. d .. "/out" }, { cwd = "/" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/out"), "written by v1\n")
    has(r.stdout, checkout .. "/backup.lua @ " .. c1:sub(1, 12))
    r = hrun_cmd({ "plan", "shared/backup.lua", "--state", state, "-p", "out=" .. d .. "/out" }, { cwd = "/" })
    eq(r.code, 0, r.stdout .. r.stderr)
    -- a second fetch of the same name is refused
    r = hrun_cmd({ "fetch", bare, "shared", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "shared is already fetched")
  end)

  it("fetches at a tag or a commit, under another name", function()
    local d, work, bare, c1 = shared()
    local state = state_of(d)
    fs.write(work .. "/backup.lua", PLAYBOOK:format("2.0", "v2"))
    commit_all(work, "v2")
    exec.run({ "git", "-C", work, "push", "-q", bare, "main" })
    local r = hrun_cmd({ "fetch", bare .. "@v1", "stable", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    local lock = json.decode(fs.read(state .. "/playbooks/stable.lock"))
    eq({ lock.ref, lock.kind, lock.commit }, { "v1", "tag", c1 })
    r = hrun_cmd({ "fetch", bare .. "@" .. c1, "exact", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(json.decode(fs.read(state .. "/playbooks/exact.lock")).kind, "commit")
    r = hrun_cmd({ "fetch", "--update", "exact", "--state", state })
    eq(r.code, 0)
    has(r.stdout, "exact is pinned to the commit it was asked for")
  end)

  it("shows the log and the diff before moving the pin, and moves it only when told", function()
    local d, work, bare, c1 = shared()
    local state = state_of(d)
    eq(hrun_cmd({ "fetch", bare, "--state", state }).code, 0)
    fs.write(work .. "/backup.lua", PLAYBOOK:format("2.0", "v2"))
    local c2 = commit_all(work, "write v2")
    exec.run({ "git", "-C", work, "push", "-q", bare, "main" })
    -- no terminal and no --yes: shown, not moved
    local r = hrun_cmd({ "fetch", "--update", "shared", "--state", state })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "shared: " .. c1:sub(1, 12) .. " → " .. c2:sub(1, 12) .. " (branch main)")
    has(r.stdout, c2:sub(1, 12) .. " write v2  (Sharer, ")
    has(r.stdout, "-  name = \"shared-backup\", version = \"1.0\",")
    has(r.stdout, "+  name = \"shared-backup\", version = \"2.0\",")
    has(r.stderr, "the pin of shared stays at " .. c1:sub(1, 12))
    eq(json.decode(fs.read(state .. "/playbooks/shared.lock")).commit, c1)
    r = hrun_cmd({ "shared/backup.lua", "--state", state, "-p", "out=" .. d .. "/out" }, { cwd = "/" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/out"), "written by v1\n", "still the pinned version")
    -- --yes moves it
    r = hrun_cmd({ "fetch", "--update", "shared", "--yes", "--state", state })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "shared pinned at " .. c2:sub(1, 12))
    eq(json.decode(fs.read(state .. "/playbooks/shared.lock")).commit, c2)
    r = hrun_cmd({ "shared/backup.lua", "--state", state, "-p", "out=" .. d .. "/out" }, { cwd = "/" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/out"), "written by v2\n")
    r = hrun_cmd({ "fetch", "--update", "shared", "--state", state })
    eq(r.code, 0)
    has(r.stdout, "shared is up to date at " .. c2:sub(1, 12))
  end)

  it("names what is wrong and leaves nothing behind", function()
    local d, _, bare = shared()
    local state = state_of(d)
    local r = hrun_cmd({ "fetch", d .. "/nothing.git", "--state", state })
    eq(r.code, 1)
    has(r.stderr, "git.clone: " .. d .. "/nothing.git: No such file or directory")
    r = hrun_cmd({ "fetch", bare .. "@no-such-branch", "--state", state })
    eq(r.code, 1)
    has(r.stderr, "no-such-branch")
    r = hrun_cmd({ "fetch", "git://127.0.0.1:1/x.git", "--state", state })
    eq(r.code, 1)
    has(r.stderr, "git.clone: git://127.0.0.1:1/x.git: ")
    eq(fs.list(state .. "/playbooks"), {}, "no checkout, no lock, no scratch clone")
    r = hrun_cmd({ "fetch", bare, "../evil", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "'../evil' is not a usable name")
    r = hrun_cmd({ "fetch", "--update", "nope", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "nope has not been fetched")
    r = hrun_cmd({ "fetch", "--state", state })
    eq(r.code, 3)
    has(r.stderr, "fetch takes URL[@REF] and an optional NAME")
  end)

  it("splits URL@REF the way git URLs allow", function()
    local fetch = require "hrun.fetch"
    eq({ fetch.split("https://git.example.org/ops/playbooks.git@v1.2") },
      { "https://git.example.org/ops/playbooks.git", "v1.2" })
    eq({ fetch.split("git@github.com:ops/playbooks.git") }, { "git@github.com:ops/playbooks.git" })
    eq({ fetch.split("git@github.com:ops/playbooks.git@main") }, { "git@github.com:ops/playbooks.git", "main" })
    eq({ fetch.split("https://user@host/x.git") }, { "https://user@host/x.git" })
    eq({ fetch.split("/srv/git/x@abc123") }, { "/srv/git/x", "abc123" })
    eq(fetch.name_of("https://git.example.org/ops/homelab-playbooks.git/"), "homelab-playbooks")
    eq(fetch.name_of("git@github.com:ops/nixos.git"), "nixos")
  end)
end)
