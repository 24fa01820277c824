-- hrun.hashcmd: `hrun hash` and `hrun verify` — the hash module from the command line,
-- with a progress bar on a terminal and progress events with --json.

local hash = require "hrun.hash"
local json = require "hrun.json"
local pretty = require "hrun.pretty"
local ui = require "hrun.ui"

local M = {}

-- A path for a line of output: as it is, or quoted with escapes if it has controls.
local function shown(p)
  if p:find("[%c]") or not utf8.len(p) then
    return pretty.quote(p)
  end
  return p
end

local human = ui.bytes

-- A progress function: a bar redrawn in place on a terminal, an event a second with
-- --json, nothing otherwise.
local function progress(priv, opts)
  if opts.json then
    local last = 0
    return function(p)
      if p.seconds - last >= 1 then
        last = p.seconds
        p.event = "hash-progress"
        io.stdout:write(json.encode(p), "\n")
        io.stdout:flush()
      end
    end
  elseif priv.isatty(2) then
    return function(p)
      local frac = p.scanned and p.total_bytes > 0 and math.min(1, p.bytes / p.total_bytes) or nil
      local width = 30
      local full = frac and math.floor(frac * width)
      local bar = full and (string.rep("█", full) .. string.rep("░", width - full)) or string.rep("·", width)
      io.stderr:write(string.format("\r\27[K%s %s  %d files  %s  %s/s%s", bar,
        frac and string.format("%3d%%", math.floor(frac * 100)) or " …  ", p.files, human(p.bytes), human(p.rate),
        p.eta and string.format("  ETA %s", ui.seconds(p.eta)) or ""))
      io.stderr:flush()
    end
  end
end

local function clear_progress(priv, opts)
  if not opts.json and priv.isatty(2) then
    io.stderr:write("\r\27[K")
  end
end

-- hrun hash PATH… [-a ALGO] [-j N] [--save NAME] [-o FILE] [--format F] [--resume NAME]
function M.hash(priv, opts, paths)
  local algo = opts.algo or "xxh128"
  local status = 0
  if opts.resume then
    paths = #paths > 0 and paths or { false }
  end
  for i, path in ipairs(paths) do
    local hopts = { algo = algo, threads = tonumber(opts.jobs), save = opts.save or opts.resume,
      resume = opts.resume and true or nil, exclude = opts.exclude, one_file_system = opts.one_file_system,
      progress = progress(priv, opts) }
    if #paths > 1 and hopts.save then
      hopts.save = hopts.save .. "-" .. i
    end
    if not path then -- --resume without a path: the manifest's root
      for _, m in ipairs(hash.manifests()) do
        if m.name == opts.resume then
          path = m.root
          algo, hopts.algo = m.algo, m.algo
        end
      end
      if not path then
        error(string.format("no manifest named '%s' to resume", opts.resume), 0)
      end
    end
    local m, err = hash.tree(path, hopts)
    clear_progress(priv, opts)
    if not m then
      error(err, 0)
    end
    if opts.output then
      assert(hash.export(m.id, opts.output, { format = opts.format or "coreutils" }))
    end
    if opts.json then
      m.event = "hash-done"
      io.stdout:write(require("hrun.codec").summary(m, 4096), "\n")
    elseif opts.format then
      local tmp = os.tmpname()
      assert(hash.export(m.id, tmp, { format = opts.format }))
      io.stdout:write(assert(io.open(tmp)):read("a"))
      os.remove(tmp)
    else
      io.stdout:write(string.format("%s: %d files, %s, %s in %s (%s/s)%s%s\n", pretty.utf8(m.root), m.files,
        human(m.bytes), m.algo, ui.seconds(m.seconds or 0), human(m.bytes / math.max(m.seconds or 0, 1e-9)),
        m.name and (" — manifest " .. m.name) or "",
        m.complete and "" or string.format(" — INCOMPLETE: %d entries could not be read", m.errors)))
    end
    if not m.complete then
      status = 1
    end
  end
  return status
end

-- hrun verify NAME|FILE [PATH] [--quick]
function M.verify(priv, opts, args)
  local target, path = args[1], args[2]
  local manifest = target
  local fs = require "hrun.fs"
  local known = false
  for _, m in ipairs(hash.manifests()) do
    if m.name == target then
      known = true
    end
  end
  if not known and fs.exists(target) then
    local m, err = hash.import(target, { format = opts.format or "coreutils", root = path })
    if not m then
      error(err, 0)
    end
    manifest = m.id
  elseif not known and tonumber(target) then
    manifest = math.tointeger(tonumber(target))
  end
  local r, err = hash.verify(manifest, path, { quick = opts.quick, threads = tonumber(opts.jobs),
    progress = progress(priv, opts) })
  clear_progress(priv, opts)
  if not r then
    error(err, 0)
  end
  if opts.json then
    r.event = "verify-done"
    io.stdout:write(require("hrun.codec").summary(r, 4096), "\n")
  else
    for _, kind in ipairs({ "changed", "missing", "added", "meta", "errors" }) do
      for _, p in ipairs(r[kind]) do
        io.stdout:write(string.format("%-8s %s\n", kind, shown(p)))
      end
    end
    io.stdout:write(string.format("%s: %d files, %s — %d changed, %d missing, %d added, %d metadata only, "
      .. "%d unreadable\n", r.ok and "ok" or "DIFFERENT", r.files, human(r.bytes), #r.changed, #r.missing, #r.added,
      #r.meta, #r.errors))
  end
  return r.ok and 0 or 1
end

return M
