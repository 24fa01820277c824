-- hrun.migrate: what the phases of a migration to NixOS repeat, for playbooks
-- (playbooks/phase*.lua): read-only snapshots of the subvolumes a phase touches and
-- checksum manifests of them, the data restored from those snapshots when it changed
-- (a step's undo), a NixOS configuration deployed from a git ref, services started in
-- order and asked for their health, the configuration tagged when a phase is done.
-- Every write goes through the journaled modules: undone with the step.
--
-- A service is {unit = "…", url = "…" (optional), status = {200, …} (optional),
-- match = "…" (optional), timeout = seconds (optional)}; a subvolume a path relative to
-- the array's mount point.

local btrfs = require "hrun.btrfs"
local fs = require "hrun.fs"
local git = require "hrun.git"
local hash = require "hrun.hash"
local http = require "hrun.http"
local nixos = require "hrun.nixos"
local service = require "hrun.service"

local M = {}

local function join(a, b)
  return (a:gsub("/+$", "")) .. "/" .. b
end

-- A UTC time for names: 2026-03-01T12-30-00Z (btrfs.prune reads it back).
local function stamp()
  return os.date("!%Y-%m-%dT%H-%M-%SZ")
end

-- migrate.snapshot(ctx, mount, subvolumes, {dir = ".snapshots", label}) → {sub = snapshot}:
-- a read-only snapshot of each subvolume in mount/dir, named <sub>.<label>.<time>; kept
-- in ctx.state.snapshots, with each subvolume's btrfs generation after it (what
-- restore_changed compares). Undone (inverse) by deleting them.
function M.snapshot(ctx, mount, subvolumes, opts)
  opts = opts or {}
  local dir = join(mount, opts.dir or ".snapshots")
  if not fs.exists(dir) then
    fs.mkdir(dir, { parents = true, mode = "0700" })
  end
  local when, made = stamp(), {}
  for _, sub in ipairs(subvolumes) do
    local name = string.format("%s.%s.%s", sub:gsub("/", "-"), opts.label or "hrun", when)
    made[sub] = btrfs.snapshot(join(mount, sub), join(dir, name), { readonly = true })
    ctx.log("snapshot %s → %s", sub, made[sub])
  end
  ctx.state.snapshots = made
  if not ctx.plan then
    btrfs.sync(mount)
    ctx.state.generations = {}
    for _, sub in ipairs(subvolumes) do
      ctx.state.generations[sub] = btrfs.info(join(mount, sub)).generation
    end
  end
  return made
end

-- migrate.manifests(ctx, snapshots, {algo, prefix, threads}) → {sub = manifest name}: a
-- checksum manifest of each snapshot (frozen: what the data was before the phase), saved
-- as <prefix>-<sub>; kept in ctx.state.manifests with the file and byte counts. Not in
-- plans (hashing terabytes is not a plan's job).
function M.manifests(ctx, snapshots, opts)
  opts = opts or {}
  local names, subs = {}, {}
  for sub in pairs(snapshots) do
    subs[#subs + 1] = sub
  end
  table.sort(subs)
  for _, sub in ipairs(subs) do
    local name = string.format("%s-%s", opts.prefix or "migration", sub:gsub("/", "-"))
    if ctx.plan then
      ctx.log("would hash %s as manifest %s", snapshots[sub], name)
    else
      local m = hash.tree(snapshots[sub], { algo = opts.algo, threads = opts.threads, save = name })
      if not m.complete then
        error(string.format("%s: %d entries could not be read", snapshots[sub], m.errors))
      end
      ctx.log("manifest %s: %d files, %d bytes", name, m.files, m.bytes)
    end
    names[sub] = name
  end
  ctx.state.manifests = names
  return names
end

-- migrate.verify(mount, manifests, {quick}) → ok, message, {sub = result}: each subvolume
-- as it is now against its manifest (made from its snapshot).
function M.verify(mount, manifests, opts)
  local bad, results = {}, {}
  local subs = {}
  for sub in pairs(manifests) do
    subs[#subs + 1] = sub
  end
  table.sort(subs)
  for _, sub in ipairs(subs) do
    local r = hash.verify(manifests[sub], join(mount, sub), { quick = opts and opts.quick })
    results[sub] = r
    if not r.ok then
      local first = r.changed[1] or r.missing[1] or r.added[1] or r.errors[1]
      bad[#bad + 1] = string.format("%s (%d changed, %d missing, %d added%s)", sub, #r.changed, #r.missing,
        #r.added, first and (", e.g. " .. first) or "")
    end
  end
  if #bad > 0 then
    return false, "checksums differ: " .. table.concat(bad, "; "), results
  end
  return true, string.format("%d subvolumes match their manifests", #subs), results
end

-- migrate.restore_changed(ctx, mount) — a step's undo: each subvolume written since its
-- snapshot (its btrfs generation moved on) gets the snapshot back — btrfs.restore, the
-- written copy kept aside and named in the log — and the snapshots are deleted.
function M.restore_changed(ctx, mount)
  local gens = ctx.state.generations or {}
  btrfs.sync(mount)
  for sub, snap in pairs(ctx.state.snapshots or {}) do
    local live = join(mount, sub)
    if gens[sub] and btrfs.info(live).generation ~= gens[sub] then
      local aside = btrfs.restore(snap, live)
      ctx.log("%s was written: restored from %s (what it was is kept as %s)", sub, snap, aside)
    end
    if fs.exists(snap) then
      btrfs.delete(snap)
    end
  end
end

-- migrate.deploy(ctx, {flake, host, ref, profile}) → the generation: the configuration at
-- git ref (if given: checked out, undone by checking out what was) built and switched to
-- (undone: the generation before).
function M.deploy(ctx, cfg)
  if cfg.ref and cfg.ref ~= "" then
    ctx.state.checked_out = git.checkout(cfg.flake, cfg.ref)
  end
  local r = nixos.rebuild("switch", { flake = cfg.flake .. "#" .. cfg.host,
    profile = cfg.profile ~= "" and cfg.profile or nil })
  ctx.state.generation, ctx.state.previous = r.generation, r.previous
  ctx.log("generation %s (was %s)", tostring(r.generation), tostring(r.previous))
  return r.generation
end

-- migrate.healthy(svc) → ok, message: the unit is active and its URL (if any) answers.
function M.healthy(svc)
  local st = service.status(svc.unit)
  if st.active ~= "active" then
    return false, string.format("%s is %s (%s/%s)", st.unit, st.active, st.load, st.sub or "?")
  end
  if svc.url and svc.url ~= "" then
    local r, err = http.request(svc.url, { timeout = 10 })
    if not r then
      return false, err
    end
    local want = svc.status or { 200, 204, 301, 302 }
    local good = false
    for _, s in ipairs(type(want) == "table" and want or { want }) do
      good = good or r.status == s
    end
    if not good then
      return false, string.format("%s answered %d", svc.url, r.status)
    end
    if svc.match and not r.body:find(svc.match) then
      return false, string.format("%s: the answer does not match '%s'", svc.url, svc.match)
    end
  end
  return true, st.unit .. " is active"
end

-- migrate.start(ctx, services) — each service in order: started (undone: stopped, if it
-- was not running) and waited for: its URL must answer before the next one starts.
function M.start(ctx, services)
  for _, svc in ipairs(services) do
    local st = service.start(svc.unit, { timeout = svc.timeout or 120 })
    if svc.url and svc.url ~= "" and not st.planned then
      http.wait(svc.url, { status = svc.status, match = svc.match, timeout = svc.timeout or 120, interval = 1 })
    end
    ctx.log("%s: %s%s", st.unit, st.active, svc.url and svc.url ~= "" and (", " .. svc.url .. " answers") or "")
  end
end

-- migrate.check_services(services) → ok, message: every one healthy (for a `check`).
function M.check_services(services)
  local bad = {}
  for _, svc in ipairs(services) do
    local ok, why = M.healthy(svc)
    if not ok then
      bad[#bad + 1] = why
    end
  end
  if #bad > 0 then
    return false, table.concat(bad, "; ")
  end
  return true, string.format("%d services healthy", #services)
end

-- migrate.check_subvolumes(mount, subvolumes) → ok, message: each is a btrfs subvolume.
function M.check_subvolumes(mount, subvolumes)
  local bad = {}
  for _, sub in ipairs(subvolumes) do
    if not btrfs.is_subvolume(join(mount, sub)) then
      bad[#bad + 1] = join(mount, sub)
    end
  end
  if #bad > 0 then
    return false, "not btrfs subvolumes: " .. table.concat(bad, ", ")
  end
  return true
end

-- migrate.tag(ctx, flake, name, message): the configuration's HEAD tagged (annotated);
-- undone by deleting the tag.
function M.tag(ctx, flake, name, message)
  ctx.state.tag = name
  git.tag(flake, name, { message = message })
  ctx.log("tagged %s", name)
end

return M
