-- hrun.fetch: `hrun fetch` — shared playbook repositories, cloned into the state
-- directory and pinned to a commit. STATE/playbooks/NAME is the checkout (HEAD detached
-- at the pin); STATE/playbooks/NAME.lock records {url, ref, kind, branch, commit,
-- fetched}. `hrun NAME/playbook.lua` runs a playbook from it; `hrun fetch --update NAME`
-- shows the log and the diff from the pinned commit to the new one before moving the pin.

local fs = require "hrun.fs"
local git = require "hrun.git"
local json = require "hrun.json"
local sys = require "hrun.sys"

local M = {}

-- A problem with the command's input: exit 3, nothing changed.
local Usage = {}
M.Usage = Usage
local function usage(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, Usage), 0)
end

-- URL[@REF] → url, ref. The @ must come after the URL's last / or : (so that
-- git@host:repo and https://user@host/repo keep theirs).
function M.split(spec)
  local at = spec:match(".*()@")
  if at and at > 1 and at < #spec and not spec:sub(at + 1):find("[/:]") and spec:sub(1, at - 1):find("[/:]") then
    return spec:sub(1, at - 1), spec:sub(at + 1)
  end
  return spec, nil
end

-- The name a repository gets from its URL: its last path element without .git.
function M.name_of(url)
  local base = url:gsub("/+$", ""):match("([^/:]+)$") or url
  return (base:gsub("%.git$", ""))
end

local function check_name(name)
  if not name:match("^[%w_][%w._-]*$") then
    usage("'%s' is not a usable name (letters, digits, '.', '_', '-')", name)
  end
end

function M.dir(state)
  return state .. "/playbooks"
end

local function lock_path(state, name)
  return M.dir(state) .. "/" .. name .. ".lock"
end

function M.read_lock(state, name)
  local src = fs.read(lock_path(state, name))
  if not src then
    return nil
  end
  return json.decode(src)
end

local function write_lock(state, name, lock)
  assert(fs.write(lock_path(state, name), json.encode(lock) .. "\n", { mode = "0600" }))
end

-- The playbooks at the top of a checkout (files that call playbook{…}).
local function playbooks(dir)
  local dsl = require "hrun.dsl"
  local out = {}
  for _, name in ipairs(fs.list(dir) or {}) do
    if name:match("%.lua$") then
      local src = fs.read(dir .. "/" .. name)
      if src and dsl.is_playbook_source(src) then
        out[#out + 1] = name
      end
    end
  end
  table.sort(out)
  return out
end

local function short(id)
  return id:sub(1, 12)
end

local function progress(priv)
  if not priv.isatty(2) then
    return nil
  end
  return function(p)
    io.stderr:write(string.format("\r\27[Kreceiving objects: %d/%d, %d KiB", p.received_objects, p.total_objects,
      p.received_bytes // 1024))
    io.stderr:flush()
  end
end

local function done_progress(priv)
  if priv.isatty(2) then
    io.stderr:write("\r\27[K")
  end
end

-- hrun fetch URL[@REF] [NAME]
function M.fetch(priv, opts, state, spec, name)
  local url, ref = M.split(spec)
  name = name or M.name_of(url)
  check_name(name)
  local dir = M.dir(state)
  local target = dir .. "/" .. name
  local lock = M.read_lock(state, name)
  if lock and fs.exists(target) then
    usage("%s is already fetched (%s at %s); hrun fetch --update %s moves its pin", name, lock.url,
      short(lock.commit), name)
  end
  assert(fs.mkdir(dir, { parents = true, mode = "0700" }))
  -- cloned aside, then moved in place: a failed fetch leaves nothing
  local tmp = string.format("%s/.%s.fetching-%s", dir, name, fs.stat("/proc/self", { follow = false }).target)
  if fs.exists(tmp) then
    assert(fs.remove(tmp, { recursive = true }))
  end
  local _, err = git.clone(url, tmp, { ref = ref, progress = progress(priv) })
  done_progress(priv)
  if err then
    error(err, 0)
  end
  local head = assert(git.head(tmp))
  local kind = head.branch and "branch" or "commit"
  local tags = not head.branch and ref and git.tags(tmp, ref) or {}
  if #tags == 1 and tags[1].name == ref then
    kind = "tag"
  end
  assert(git.checkout(tmp, head.commit)) -- the pin: HEAD detached at the commit
  if fs.exists(target) then -- a checkout a killed fetch left without its lock
    assert(fs.remove(target, { recursive = true }))
  end
  assert(fs.rename(tmp, target))
  write_lock(state, name, { url = url, ref = ref, kind = kind, branch = head.branch, commit = head.commit,
    fetched = sys.now() })
  if opts.json then
    io.stdout:write(json.encode({ event = "fetched", name = name, url = url, ref = ref, commit = head.commit,
      path = target, playbooks = playbooks(target) }), "\n")
    return 0
  end
  io.stdout:write(string.format("fetched %s: %s%s at %s (%s)\n", name, url, ref and ("@" .. ref) or "",
    short(head.commit), head.summary))
  local list = playbooks(target)
  for _, p in ipairs(list) do
    io.stdout:write(string.format("  hrun %s/%s\n", name, p))
  end
  if #list == 0 then
    io.stdout:write("  (no playbook at its top level)\n")
  end
  return 0
end

-- What the pin would move to: the branch's or tag's commit at the remote now.
local function upstream(lock)
  if lock.kind == "branch" then
    return "refs/remotes/origin/" .. lock.branch
  elseif lock.kind == "tag" then
    return "refs/tags/" .. lock.ref
  end
end

local function confirm(priv, question)
  if not priv.isatty(0) then
    return false
  end
  io.stderr:write(question, " [y/N] ")
  io.stderr:flush()
  local answer = io.stdin:read("l")
  return answer ~= nil and answer:match("^%s*[yY]") ~= nil
end

-- hrun fetch --update NAME
function M.update(priv, opts, state, name)
  check_name(name)
  local lock = M.read_lock(state, name)
  local dir = M.dir(state) .. "/" .. name
  if not lock or not fs.exists(dir) then
    usage("%s has not been fetched (no %s)", name, lock and dir or lock_path(state, name))
  end
  local target = upstream(lock)
  if not target then
    io.stdout:write(string.format("%s is pinned to the commit it was asked for (%s): nothing to update\n", name,
      short(lock.commit)))
    return 0
  end
  local _, err = git.fetch(dir, { progress = progress(priv) })
  done_progress(priv)
  if err then
    error(err, 0)
  end
  local tip = git.log(dir, 1, { from = target })
  if not tip or not tip[1] then
    error(string.format("%s: %s is gone from %s", name, lock.ref or lock.branch, lock.url), 0)
  end
  local new = tip[1].id
  if new == lock.commit then
    io.stdout:write(string.format("%s is up to date at %s\n", name, short(new)))
    return 0
  end
  local log = assert(git.log(dir, 0, { from = new, to = lock.commit }))
  local diff = assert(git.diff(dir, lock.commit, new))
  if opts.json then
    io.stdout:write(json.encode({ event = "update", name = name, from = lock.commit, to = new, log = log,
      files = diff.files, moved = opts.yes or false }), "\n")
  else
    io.stdout:write(string.format("%s: %s → %s (%s %s)\n\n", name, short(lock.commit), short(new),
      lock.kind, lock.branch or lock.ref))
    for _, c in ipairs(log) do
      io.stdout:write(string.format("  %s %s  (%s, %s)\n", short(c.id), c.summary, c.author,
        os.date("!%Y-%m-%d", c.time)))
    end
    io.stdout:write("\n", diff.patch, "\n")
  end
  if not (opts.yes or confirm(priv, string.format("Move %s's pin to %s?", name, short(new)))) then
    io.stderr:write(string.format("hrun: the pin of %s stays at %s%s\n", name, short(lock.commit),
      priv.isatty(0) and "" or " (no terminal to ask: --yes moves it)"))
    return 1
  end
  assert(git.checkout(dir, new))
  lock.commit, lock.fetched = new, sys.now()
  write_lock(state, name, lock)
  if not opts.json then
    io.stdout:write(string.format("%s pinned at %s\n", name, short(new)))
  end
  return 0
end

-- The checkout `hrun fetch` made — some STATE's playbooks/NAME with its NAME.lock beside
-- it, of any state directory — that the absolute path is inside, or nil.
local function checkout_of(path)
  local dir = path:match("^(.*)/[^/]*$")
  while dir and dir ~= "" do
    local state, name = dir:match("^(.*)/playbooks/([^/]+)$")
    if state and fs.exists(lock_path(state, name)) then
      return dir
    end
    dir = dir:match("^(.*)/[^/]*$")
  end
  return nil
end

-- Is path (absolute, symlinks resolved) inside a checkout `hrun fetch` made?
function M.within(path)
  return checkout_of(path) ~= nil
end

-- The components of path, in order.
local function components(path, out)
  out = out or {}
  for c in path:gmatch("[^/]+") do
    out[#out + 1] = c
  end
  return out
end

-- path walked as the kernel walks it → where it lands (symlinks followed where they
-- stand, ".." after a link going up from its target), and the places the walk passed
-- through on the way: the path as it is written (made absolute, ".." taken lexically)
-- and each symlink it followed. From a component that does not exist on, the rest is
-- taken as it is written.
local function walk(path)
  if path:sub(1, 1) ~= "/" then
    path = fs.stat("/proc/self/cwd", { follow = false }).target .. "/" .. path
  end
  local written = {}
  for _, c in ipairs(components(path)) do
    if c == ".." then
      written[#written] = nil
    elseif c ~= "." then
      written[#written + 1] = c
    end
  end
  local places = { "/" .. table.concat(written, "/") }
  local todo, cur, links, missing = components(path), {}, 0, false
  local i = 1
  while i <= #todo do
    local c = todo[i]
    i = i + 1
    if c == ".." then
      cur[#cur] = nil
    elseif c ~= "." then
      cur[#cur + 1] = c
      local here = "/" .. table.concat(cur, "/")
      local st = not missing and fs.stat(here, { follow = false })
      if not st then
        missing = true
      elseif st.type == "link" then
        links = links + 1
        if links > 40 then
          return nil, places, "too many levels of symbolic links"
        end
        places[#places + 1] = here
        cur[#cur] = nil
        if st.target:sub(1, 1) == "/" then
          cur = {}
        end
        local rest = components(st.target)
        for j = i, #todo do
          rest[#rest + 1] = todo[j]
        end
        todo, i = rest, 1
      end
    end
  end
  return "/" .. table.concat(cur, "/"), places
end

-- check(path) → fetched | nil, why: is the playbook at path (as it is written: relative,
-- through symlinked directories, "..", a symlink elsewhere) from a checkout `hrun fetch`
-- made — then it runs in the sandbox? Either the path as written, a symlink on its way,
-- or where it lands counts. A path in a checkout that lands outside that checkout (a
-- symlink the repository holds, pointing elsewhere) is refused: nil and why.
function M.check(path)
  local final, places, err = walk(path)
  if not final then
    return nil, string.format("refusing the playbook %s: %s", path, err)
  end
  local home = checkout_of(final)
  local fetched = home ~= nil
  for _, place in ipairs(places) do
    local dir = checkout_of(place)
    if dir then
      fetched = true
      local real = walk(dir)
      if real ~= home then
        return nil, string.format("refusing the playbook %s: it is in the fetched repository %s but resolves to " ..
          "%s, outside it (a symlink in a shared repository must stay inside it)", path, dir, final)
      end
    end
  end
  return fetched
end

-- `hrun NAME/playbook.lua`: a path that does not exist here but names a fetched
-- repository's file resolves to it.
function M.resolve(state, path)
  local name, rest = path:match("^([%w_][%w._-]*)/(.+)$")
  if not name or fs.exists(path) or not state then
    return nil
  end
  local candidate = M.dir(state) .. "/" .. name .. "/" .. rest
  if fs.exists(candidate) and M.read_lock(state, name) then
    return candidate
  end
end

return M
