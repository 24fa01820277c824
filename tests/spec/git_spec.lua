-- git through libgit2 against real repositories, checked against what the git CLI sees:
-- local repositories, a bare remote by path, over file:// and over `git daemon` on
-- 127.0.0.1; inverses undone by failing playbooks.

-- git(dir, args...) → the git CLI's stdout (the reference we compare with)
local function git_cli(dir, ...)
  local argv = { "git", "-C", dir, ... }
  return exec.run(argv, { readonly = true, env = { GIT_CONFIG_NOSYSTEM = "1" } }).stdout
end

local function trim(s)
  return (s:gsub("%s+$", ""))
end

-- A repository with two commits on main (flake.nix, flake.lock) and a tag v1 on the
-- first; committer from its own config.
local function repo()
  need("git")
  local d = tmpdir()
  local dir = d .. "/etc-nixos"
  local r = assert(git.init(dir))
  exec.run({ "git", "-C", dir, "config", "user.name", "Admin" })
  exec.run({ "git", "-C", dir, "config", "user.email", "admin@hwc" })
  fs.write(dir .. "/flake.nix", "{ inputs.nixpkgs.url = \"github:NixOS/nixpkgs/nixos-24.05\"; }\n")
  fs.write(dir .. "/flake.lock", "{ \"version\": 7 }\n")
  local c1 = assert(r:commit("24.05", { all = true }))
  assert(r:tag("v1", { target = c1 }))
  fs.write(dir .. "/flake.nix", "{ inputs.nixpkgs.url = \"github:NixOS/nixpkgs/nixos-24.11\"; }\n")
  local c2 = assert(r:commit("24.11", { paths = { "flake.nix" } }))
  return r, dir, d, c1, c2
end

describe("git, reading", function()
  it("sees what the git CLI sees: head, log, status, tags", function()
    local r, dir, _, c1, c2 = repo()
    eq(r.path, dir)
    eq(r.bare, false)
    local head = git.head(dir)
    eq(head, { commit = c2, branch = "main", detached = false, unborn = false, summary = "24.11" })
    eq(trim(git_cli(dir, "rev-parse", "HEAD")), c2)
    eq(trim(git_cli(dir, "log", "--format=%an <%ae> %s")), "Admin <admin@hwc> 24.11\nAdmin <admin@hwc> 24.05")
    local log = r:log(10)
    eq(#log, 2)
    eq({ log[1].id, log[1].summary, log[1].author, log[1].email }, { c2, "24.11", "Admin", "admin@hwc" })
    eq(log[2].id, c1)
    eq(#r:log(1), 1)
    eq(#git.log(dir, 0, { to = c1 }), 1, "to: stops before c1")
    eq(r:status(), { clean = true, files = {} })
    fs.write(dir .. "/flake.lock", "{ \"version\": 8 }\n")
    fs.write(dir .. "/new file.txt", "x")
    fs.remove(dir .. "/flake.nix")
    eq(r:status(), { clean = false, files = {
      { path = "flake.lock", worktree = "modified" },
      { path = "flake.nix", worktree = "deleted" },
      { path = "new file.txt", worktree = "untracked" },
    } })
    eq(git_cli(dir, "status", "--porcelain"), " M flake.lock\n D flake.nix\n?? \"new file.txt\"\n")
    eq(#r:status({ untracked = false }).files, 2)
    eq(r:tags(), { { name = "v1", commit = c1, annotated = false } })
    eq(r:tags("v2*"), {})
    local d = r:diff(c1, c2)
    eq(d.files, { { path = "flake.nix", status = "modified" } })
    has(d.patch, "-{ inputs.nixpkgs.url = \"github:NixOS/nixpkgs/nixos-24.05\"; }")
    has(d.patch, "+{ inputs.nixpkgs.url = \"github:NixOS/nixpkgs/nixos-24.11\"; }")
  end)

  it("opens from a subdirectory, and names what is not a repository", function()
    local _, dir, d = repo()
    fs.mkdir(dir .. "/hosts/hwc", { parents = true })
    eq(git.open(dir .. "/hosts/hwc").path, dir)
    fails("ENOTREPO", d .. ": not in a git repository", git.open, d)
    fails("ENOENT", d .. "/missing", git.head, d .. "/missing")
    fails("ENOENT", "no-such-rev", git.log, dir, 5, { from = "no-such-rev" })
    checkerr("'bad..name' is not a valid tag name", git.tag, dir, "bad..name")
    checkerr("bad argument #1 to 'git.head'", git.head, 42)
  end)

  it("reads an empty repository", function()
    need("git")
    local d = tmpdir()
    assert(git.init(d .. "/empty", { branch = "trunk" }))
    eq(git.head(d .. "/empty"), { unborn = true, detached = false, branch = "trunk" })
    eq(git.log(d .. "/empty"), {})
    eq(trim(git_cli(d .. "/empty", "symbolic-ref", "HEAD")), "refs/heads/trunk")
    fails("EEXIST", "already a git repository", git.init, d .. "/empty")
    fails("ENOCHANGE", "nothing to commit", git.commit, d .. "/empty", "nothing")
  end)
end)

describe("git, writing", function()
  it("commits as git config says, else as hrun <user@host>", function()
    local r, dir = repo()
    fs.write(dir .. "/flake.lock", "{ \"version\": 8 }\n")
    local c = assert(r:commit("lock", { all = true }))
    eq(trim(git_cli(dir, "log", "-1", "--format=%H %an <%ae>")), c .. " Admin <admin@hwc>")
    -- no user in any config: hrun's own identity
    exec.run({ "git", "-C", dir, "config", "--unset", "user.name" })
    exec.run({ "git", "-C", dir, "config", "--unset", "user.email" })
    fs.write(dir .. "/flake.lock", "{ \"version\": 9 }\n")
    local home = tmpdir()
    local out = hrun_cmd({ "-e", string.format("print(git.commit(%q, 'by hrun', { all = true }))", dir) },
      { env = { HOME = home, XDG_CONFIG_HOME = home, GIT_CONFIG_NOSYSTEM = "1" } })
    eq(out.code, 0, out.stderr)
    local who = trim(git_cli(dir, "log", "-1", "--format=%an <%ae>"))
    eq(who, "hrun <" .. (sys.is_root() and "root" or sys.env("USER")) .. "@" .. sys.hostname() .. ">")
  end)

  it("tags (annotated and lightweight), refuses a tag that exists unless forced, deletes", function()
    local r, dir, _, c1, c2 = repo()
    local id = assert(r:tag("pre-24.11", { message = "before the upgrade" }))
    eq(trim(git_cli(dir, "cat-file", "-t", "pre-24.11")), "tag")
    eq(trim(git_cli(dir, "rev-parse", "pre-24.11^{commit}")), c2)
    eq(trim(git_cli(dir, "rev-parse", "pre-24.11")), id)
    has(git_cli(dir, "tag", "-n1", "pre-24.11"), "before the upgrade")
    fails("EEXIST", "v1: tag exists", r.tag, r, "v1")
    assert(r:tag("v1", { target = c2, force = true }))
    eq(trim(git_cli(dir, "rev-parse", "v1")), c2)
    assert(r:delete_tag("v1"))
    eq(git_cli(dir, "tag", "-l", "v1"), "")
    fails("ENOENT", "v1: no such tag", r.delete_tag, r, "v1")
    fails("ENOENT", "nope", r.tag, r, "x", { target = "nope" })
    eq(c1 ~= c2, true)
  end)

  it("checks out paths from another revision, as git checkout REV -- PATHS", function()
    local r, dir, _, c1 = repo()
    assert(r:checkout_paths("HEAD~1", { "flake.nix" }))
    has(fs.read(dir .. "/flake.nix"), "nixos-24.05")
    eq(git_cli(dir, "status", "--porcelain"), "M  flake.nix\n")
    eq(git_cli(dir, "show", c1 .. ":flake.nix"), fs.read(dir .. "/flake.nix"))
    local before = fs.read(dir .. "/flake.nix")
    fails("ENOENT", "missing.nix: not in HEAD~1", r.checkout_paths, r, "HEAD~1", { "flake.nix", "missing.nix" })
    eq(fs.read(dir .. "/flake.nix"), before, "nothing changed")
    checkerr("is not inside the work tree", r.checkout_paths, r, "HEAD", { "../etc/passwd" })
    checkerr("an empty list of paths", r.checkout_paths, r, "HEAD", {})
  end)

  it("undoes commit, tag, delete_tag and checkout_paths when a playbook fails", function()
    local _, dir, d, c1, c2 = repo()
    local state = d .. "/state"
    fs.write(dir .. "/hardware.nix", "{ }\n")
    local p = playbook_file(d, "pb.lua", string.format([[
return playbook { name = "git-undo",
  phase "p" {
    step "tag" { run = function() git.tag(%q, "pre-upgrade", { message = "before" }) end },
    step "drop v1" { run = function() git.delete_tag(%q, "v1") end },
    step "commit" { run = function()
      fs.write(%q, "{ changed }\n")
      git.commit(%q, "upgrade", { all = true })
    end },
    step "revert flake" { run = function() git.open(%q):checkout_paths("HEAD~2", { "flake.nix" }) end },
    step "fail" { run = function() error("verification failed") end },
  },
}]], dir, dir, dir .. "/flake.lock", dir, dir))
    local r = hrun_cmd({ p, "--state", state })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(trim(git_cli(dir, "rev-parse", "HEAD")), c2, "the branch is back")
    eq(git_cli(dir, "tag", "-l"), "v1\n", "pre-upgrade gone, v1 back")
    eq(trim(git_cli(dir, "rev-parse", "v1")), c1)
    has(fs.read(dir .. "/flake.nix"), "nixos-24.11", "checkout_paths undone")
    -- the commit moved back with its index, and fs.write's inverse put the file back
    eq(fs.read(dir .. "/flake.lock"), "{ \"version\": 7 }\n")
    eq(git_cli(dir, "status", "--porcelain"), "?? hardware.nix\n", "as before the run")
  end)

  it("refuses to move a branch back that moved on since", function()
    local r, dir, d = repo()
    local p = playbook_file(d, "pb.lua", string.format([[
return playbook { name = "moved",
  phase "p" {
    step "commit" { run = function() fs.write(%q, "x") git.commit(%q, "mine", { all = true }) end },
    step "someone else commits" { irreversible = true, run = function()
      exec.run({ "git", "-C", %q, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q",
        "--allow-empty", "-m", "theirs" })
    end },
    step "fail" { run = function() error("no") end },
  },
}]], dir .. "/x", dir, dir))
    local res = hrun_cmd({ p, "--state", d .. "/state" })
    eq(res.code, 2, res.stdout .. res.stderr)
    -- the careful undo finds the branch unlike what the commit left, and names it
    has(res.stdout .. res.stderr, "changed since")
    has(res.stdout .. res.stderr, dir .. " refs/heads/main")
    eq(trim(git_cli(dir, "log", "-1", "--format=%s")), "theirs", "nobody's work was lost")
    eq(r.path, dir)
  end)
end)

-- A bare remote with main and a tag, served by `git daemon` on 127.0.0.1 (stopped when
-- the test ends). Returns the bare repository's path, the git:// URL and the commits.
local function remote()
  local _, dir, d, c1, c2 = repo()
  local bare = d .. "/remote.git"
  exec.run({ "git", "clone", "-q", "--bare", dir, bare })
  exec.run({ "git", "-C", bare, "tag", "v2", c2 })
  exec.run({ "touch", bare .. "/git-daemon-export-ok" })
  -- a free port on loopback: the kernel picks one, the daemon takes it just after
  local port = free_port()
  local pidfile = d .. "/daemon.pid"
  exec.run({ "git", "daemon", "--reuseaddr", "--listen=127.0.0.1", "--port=" .. port, "--base-path=" .. d,
    "--export-all", "--pid-file=" .. pidfile, "--detach", d })
  after(function()
    local pid = fs.read(pidfile)
    if pid then
      exec.run({ "kill", trim(pid) }, { check = false })
      for _ = 1, 50 do
        if not exec.run({ "kill", "-0", trim(pid) }, { check = false }).ok then
          break
        end
        sys.sleep(0.1)
      end
    end
  end)
  local url = "git://127.0.0.1:" .. port .. "/remote.git"
  for _ = 1, 50 do -- until it answers
    if exec.run({ "git", "ls-remote", url }, { check = false, readonly = true }).ok then
      break
    end
    sys.sleep(0.1)
  end
  return bare, url, d, c1, c2, dir
end

describe("git.clone and fetch", function()
  it("clones by path, file:// and git:// at a branch, a tag or a commit", function()
    local bare, url, d, c1, c2 = remote()
    local cases = {
      { bare, nil, c2, "main" },
      { "file://" .. bare, "v1", c1, nil },
      { url, nil, c2, "main" },
      { url, "v2", c2, nil },
      { url, c1, c1, nil },
      { url, "main", c2, "main" },
    }
    for i, c in ipairs(cases) do
      local dir = d .. "/clone" .. i
      local calls = 0
      local r = assert(git.clone(c[1], dir, { ref = c[2], progress = function(p)
        calls = calls + 1
        ok(p.total_objects >= p.received_objects, "progress numbers")
      end }))
      eq(r.path, dir)
      local h = git.head(dir)
      eq(h.commit, c[3], c[1] .. " @ " .. tostring(c[2]))
      eq(h.branch, c[4])
      eq(h.detached, c[4] == nil)
      eq(trim(git_cli(dir, "rev-parse", "HEAD")), c[3], "the git CLI agrees")
      eq(git_cli(dir, "status", "--porcelain"), "", "a clean checkout")
      ok(calls > 0 or c[1] == bare, "progress was reported")
    end
    eq(trim(git_cli(d .. "/clone6", "rev-parse", "--abbrev-ref", "main@{upstream}")), "origin/main")
  end)

  it("leaves nothing behind when the ref or the URL is wrong", function()
    local bare, url, d = remote()
    fails("ENOENT", "no-such-ref", git.clone, bare, d .. "/c1", { ref = "no-such-ref" })
    eq(fs.exists(d .. "/c1"), false)
    local _, msg = git.clone("git://127.0.0.1:1/nothing.git", d .. "/c2")
    has(msg, "git.clone: git://127.0.0.1:1/nothing.git: ")
    eq(fs.exists(d .. "/c2"), false)
    fs.mkdir(d .. "/full")
    fs.write(d .. "/full/x", "")
    fails("EEXIST", "exists and is not an empty directory", git.clone, url, d .. "/full")
  end)

  it("fetches new commits and tags from the remote", function()
    local bare, url, d, _, c2, work = remote()
    local clone = d .. "/clone"
    assert(git.clone(url, clone))
    fs.write(work .. "/flake.nix", "{ new }\n")
    local c3 = assert(git.commit(work, "24.11 fixes", { all = true }))
    exec.run({ "git", "-C", work, "push", "-q", bare, "main" })
    exec.run({ "git", "-C", bare, "tag", "v3", c3 })
    assert(git.fetch(clone))
    eq(trim(git_cli(clone, "rev-parse", "origin/main")), c3)
    eq(trim(git_cli(clone, "rev-parse", "v3")), c3)
    eq(git.head(clone).commit, c2, "HEAD stays where it was")
    local log = git.log(clone, 0, { from = "origin/main", to = "HEAD" })
    eq(#log, 1)
    eq(log[1].summary, "24.11 fixes")
    eq(git.checkout(clone, "v3"), c3)
    eq(git.head(clone).detached, true)
    fails("ENOENT", "upstream", git.fetch, clone, { remote = "upstream" })
  end)

  it("is undone with its inverse: a clone or init in a failed step is removed", function()
    local bare, _, d = remote()
    local p = playbook_file(d, "pb.lua", string.format([[
return playbook { name = "clone",
  phase "p" {
    step "clone" { run = function() git.clone(%q, %q) git.init(%q) end },
    step "fail" { run = function() error("no") end },
  },
}]], bare, d .. "/cloned", d .. "/fresh"))
    local r = hrun_cmd({ p, "--state", d .. "/state" })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(fs.exists(d .. "/cloned"), false)
    eq(fs.exists(d .. "/fresh"), false)
  end)
end)
