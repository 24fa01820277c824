-- hrun.checks: the pre-flight and success checks migrations repeat. Each returns
-- ok (a boolean) and a message saying why not (or what it found), so a playbook's
-- `check "…" (function() return checks.cgroup_v2() end)` reads as it should.

local fs = require "hrun.fs"

local M = {}

-- checks.cgroup_v2([root = "/sys/fs/cgroup"]) → ok, why: the unified hierarchy is mounted
-- there (what podman, systemd and NixOS 24.11 expect).
function M.cgroup_v2(root)
  root = root or "/sys/fs/cgroup"
  if fs.exists(root .. "/cgroup.controllers") then
    return true, root .. " is cgroup v2"
  end
  return false, string.format("%s is not cgroup v2 (no cgroup.controllers): the host runs cgroup v1 or hybrid", root)
end

-- checks.no_failed_units([{except = {…}}]) → ok, message, the failed units: no unit is
-- failed (but those in except, names or globs).
function M.no_failed_units(opts)
  local service = require "hrun.service"
  local failed, err = service.failed()
  if not failed then
    return false, err, {}
  end
  local left = {}
  for _, u in ipairs(failed) do
    local excused = false
    for _, e in ipairs(opts and opts.except or {}) do
      local pattern = "^" .. e:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$"
      excused = excused or u.unit:match(pattern) ~= nil
    end
    if not excused then
      left[#left + 1] = u.unit
    end
  end
  if #left == 0 then
    return true, "no failed units", left
  end
  return false, "failed units: " .. table.concat(left, ", "), left
end

local human = require("hrun.ui").bytes

-- checks.free_space(path, {bytes = N} | {percent = P}) → ok, message, {available, total,
-- percent}: at least that much is available to write on path's filesystem. A path that
-- does not exist yet (a backup directory a step will make) is measured at its nearest
-- existing parent.
function M.free_space(path, want)
  assert(type(path) == "string", "bad argument #1 to 'checks.free_space' (path expected)")
  want = want or {}
  local at = path
  while not fs.exists(at) and at:find("/[^/]+/*$") do
    at = at:gsub("/[^/]+/*$", "")
    at = at ~= "" and at or "/"
  end
  local ok, s, err = pcall(fs.statfs, at)
  if not ok or not s then
    return false, ok and err or tostring(s), nil
  end
  local percent = s.total > 0 and s.available * 100 / s.total or 0
  local info = { available = s.available, total = s.total, percent = percent }
  local desc = string.format("%s: %s available of %s (%.1f %%)", path, human(s.available), human(s.total), percent)
  if want.bytes and s.available < want.bytes then
    return false, string.format("%s, %s needed", desc, human(want.bytes)), info
  end
  if want.percent and percent < want.percent then
    return false, string.format("%s, %g %% needed", desc, want.percent), info
  end
  return true, desc, info
end

-- The mount table: {{source, target, fstype, options}, …} from /proc/self/mountinfo.
function M.mounts()
  local out = {}
  local text = fs.read("/proc/self/mountinfo") or ""
  local function unescape(s)
    return (s:gsub("\\(%d%d%d)", function(o) return string.char(tonumber(o, 8)) end))
  end
  for line in text:gmatch("[^\n]+") do
    local target, opts, rest = line:match("^%S+ %S+ %S+ %S+ (%S+) (%S+)[^-]*%- (.*)$")
    if target then
      local fstype, source, super = rest:match("^(%S+) (%S+) ?(%S*)")
      out[#out + 1] = { target = unescape(target), source = unescape(source or ""), fstype = fstype,
        options = opts .. (super ~= "" and ("," .. super) or "") }
    end
  end
  return out
end

-- checks.mounted(path [, {fstype, source}]) → ok, message, the mount: path is a mount
-- point (the last one mounted there), of that type and from that source when given.
function M.mounted(path, want)
  assert(type(path) == "string", "bad argument #1 to 'checks.mounted' (path expected)")
  want = want or {}
  path = path ~= "/" and path:gsub("/+$", "") or path
  local found
  for _, m in ipairs(M.mounts()) do
    if m.target == path then
      found = m
    end
  end
  if not found then
    return false, path .. " is not a mount point", nil
  end
  if want.fstype and found.fstype ~= want.fstype then
    return false, string.format("%s is %s, not %s", path, found.fstype, want.fstype), found
  end
  if want.source and found.source ~= want.source then
    return false, string.format("%s is mounted from %s, not %s", path, found.source, want.source), found
  end
  return true, string.format("%s: %s from %s", path, found.fstype, found.source), found
end

return M
