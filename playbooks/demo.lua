-- demo.lua — what hrun does, in half a minute, on a sandbox server it makes and removes:
-- a photo library on a real btrfs volume (a loop device), a web service answering for
-- it, and — given a nix sandbox (scripts/demo.sh makes one: a private nix store with
-- system generations and a flake in git) — a NixOS-style configuration.
--
-- It snapshots and checksums the library, then "upgrades" the server: the flake's
-- nixpkgs moves to 24.11 (committed, built, switched to: a new generation), the
-- library is migrated in place, the service restarts on its new port — and its health
-- check fails. hrun undoes everything, newest first: the library comes back from its
-- snapshot, the generation before is switched to, the commit and the flake's bytes go
-- back; then the sandbox proves that every byte of the library is as it was (against
-- the manifest made before) and removes itself.
--
--   scripts/demo.sh                         all of it (the README's first command)
--   hrun plan playbooks/demo.lua            what it would do, changing nothing
--   hrun playbooks/demo.lua -p fail=false   the upgrade that works (then: hrun rollback)
--   … --only "upgrade 1.4 → 2.0" again         changes nothing: changed=0
-- As root: the volume is a loop device. Without -p nix=DIR the NixOS part is skipped.

local function box(ctx, path)
  return ctx.params.root .. (path and ("/" .. path) or "")
end

local function library(ctx)
  return box(ctx, "mnt/photos")
end

local function with_nix(ctx)
  return ctx.params.nix ~= ""
end

-- The web service: python's http.server over the library's www directory, its pid in
-- a file. The command that starts it on port, and the one that stops it.
local function server_commands(ctx, port)
  local pidfile = box(ctx, "server.pid")
  return string.format("setsid python3 -m http.server %d --bind 127.0.0.1 --directory '%s' >/dev/null 2>&1 & "
    .. "echo $! > '%s'", port, library(ctx) .. "/www", pidfile),
    string.format("kill $(cat '%s') && rm -f '%s'", pidfile, pidfile)
end

local function serve(ctx, port)
  local start, stop = server_commands(ctx, port)
  exec.sh(start, { undo = stop })
  if not ctx.plan then
    http.wait(string.format("http://127.0.0.1:%d/health", port), { timeout = 10, interval = 0.1 })
  end
end

-- A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick).
local function free_port()
  return tonumber(exec.run({ "python3", "-c", "import socket; s = socket.socket(); "
    .. "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])" }, { readonly = true }).stdout) or 2283
end

-- Does photos 2.0 answer already, on the port the restart wrote down?
local function serving_2(ctx)
  local marker = box(ctx, "serving-2.0")
  if not fs.exists(marker) then
    return false
  end
  local ok, r = pcall(http.get, string.format("http://127.0.0.1:%s/health", fs.read(marker)), { timeout = 2 })
  return ok and r.status == 200 and r.body:find("2.0 ok", 1, true) ~= nil
end

local function stop_serving(ctx, port)
  local start, stop = server_commands(ctx, port)
  exec.sh(stop, { undo = start })
end

return playbook {
  name = "demo", version = "2.0",
  description = "Upgrade a sandbox photo server; its health check fails; hrun gives back every byte",
  capabilities = { "fs", "btrfs", "hash", "nix", "git", "net", "exec" },
  params = {
    root = "/tmp/hrun-demo",               -- the sandbox: its volume, mount point and service
    nix = "",                              -- a nix sandbox (scripts/demo.sh makes one), or none
    port = 0,                              -- the service's port (0: a free one)
    fail = true,                           -- the upgraded service does not answer
  },

  phase "sandbox" {
    check "no sandbox left over" (function(ctx)
      return not fs.exists(ctx.params.root), ctx.params.root .. " exists: remove it, or pass -p root=…"
    end),
    check "run as root (the volume is a loop device)" (function() return sys.is_root() end),
    step "make a photo server" {
      description = "a btrfs volume on a loop device, a library on it, a web service",
      run = function(ctx)
        local img, mnt = box(ctx, "disk.img"), box(ctx, "mnt")
        fs.mkdir(mnt, { parents = true })
        exec.sh(string.format("truncate -s 256M '%s' && mkfs.btrfs -q -m dup '%s'", img, img),
          { undo = string.format("rm -f '%s'", img) })
        -- a loop device of its own, released when unmounted
        exec.run({ "mount", "-o", "loop", img, mnt }, { undo = { "umount", mnt } })
        local dev = exec.run({ "findmnt", "-n", "-o", "SOURCE", mnt }, { readonly = true, check = false }).stdout
          :gsub("%s+$", "") -- in a plan nothing is mounted
        btrfs.create(library(ctx))
        fs.mkdir(library(ctx) .. "/2024 summer")
        fs.mkdir(library(ctx) .. "/www")
        for i = 1, 40 do
          local bytes = {}
          for b = 0, 255 do
            bytes[#bytes + 1] = string.char((b * i + i) % 256)
          end
          fs.write(string.format("%s/2024 summer/IMG %04d.jpg", library(ctx), i), table.concat(bytes):rep(16 * i))
        end
        fs.write(library(ctx) .. "/library.json", json.encode({ version = "1.4", photos = 40 }))
        fs.write(library(ctx) .. "/www/health", "photos 1.4 ok\n")
        local port = ctx.params.port
        if port == 0 then
          port = free_port()
        end
        ctx.shared.port = port
        serve(ctx, port)
        if not ctx.plan then
          local m = hash.tree(library(ctx), { save = "demo-library" })
          ctx.log("a library of %d photos on btrfs (%s), served on :%d; manifest: %d files, %s", 40, dev, port,
            m.files, m.bytes .. " bytes")
        end
      end,
      -- undone last: first prove that the rollback gave back every byte, then remove it all
      undo = function(ctx)
        local r = hash.verify("demo-library", library(ctx))
        if not r.ok then
          error(string.format("the library differs from its manifest: %d changed, %d missing, %d added", #r.changed,
            #r.missing, #r.added))
        end
        ctx.log("every byte is back: %d files match the manifest made before the upgrade", r.files)
        stop_serving(ctx, ctx.shared.port)
        exec.run({ "umount", box(ctx, "mnt") })
        fs.remove(ctx.params.root, { recursive = true })
        ctx.log("sandbox removed: volume, loop device, service")
      end,
    },
  },

  phase "before the upgrade" {
    step "snapshot the library" {
      description = "read-only; its undo gives the library back if the upgrade wrote to it",
      run = function(ctx) migrate.snapshot(ctx, box(ctx, "mnt"), { "photos" }, { label = "before-2.0" }) end,
      undo = function(ctx) migrate.restore_changed(ctx, box(ctx, "mnt")) end,
    },
  },

  phase "upgrade 1.4 → 2.0" {
    step "move nixpkgs to 24.11" {
      description = "the flake's input changed, committed",
      when = with_nix,
      run = function(ctx)
        local etc, url = ctx.params.nix .. "/etc-nixos", "path:" .. ctx.params.nix .. "/pkgs-24.11"
        -- already 24.11: the input is left as it is (ok), and so are the lock and the commit
        if nixos.flake_set_input(etc .. "/flake.nix", "nixpkgs-stable", url) ~= url then
          nixos.flake_update(etc, { inputs = { "nixpkgs-stable" } })
        end
        git.commit(etc, "nixpkgs 24.11", { all = true }) -- nothing to commit: ok
      end,
    },
    step "build and switch" {
      when = function(ctx) -- not when 24.11 runs already
        return with_nix(ctx) and not (nixos.current({ profile = ctx.params.nix .. "/profiles/system" }).version
          or ""):match("^24%.11")
      end,
      run = function(ctx)
        local r = nixos.rebuild("switch", { flake = ctx.params.nix .. "/etc-nixos#hwc-server",
          profile = ctx.params.nix .. "/profiles/system" })
        if not ctx.plan then
          ctx.log("generation %d (was %d)", r.generation, r.previous)
        end
      end,
    },
    step "migrate the library" {
      description = "version 2.0's layout, thumbnails",
      run = function(ctx)
        local lib = library(ctx)
        fs.write(lib .. "/library.json", json.encode({ version = "2.0", photos = 40, layout = "by-year" }))
        if fs.exists(lib .. "/2024 summer") then -- moved already: nothing to move
          fs.rename(lib .. "/2024 summer", lib .. "/2024")
        end
        fs.mkdir(lib .. "/.thumbs")
        for i = 1, 40, 4 do
          fs.write(string.format("%s/.thumbs/%04d.webp", lib, i), string.rep("t", 500))
        end
        fs.write(lib .. "/www/health", "photos 2.0 ok\n")
        ctx.log("library 2.0: 40 photos moved to 2024/, 10 thumbnails, a new index")
      end,
    },
    step "restart on the new port" {
      when = function(ctx) return not serving_2(ctx) end, -- already: nothing to restart
      run = function(ctx)
        stop_serving(ctx, ctx.shared.port)
        -- a new port nothing listens on (port + 1 may be another program's)
        local port = ctx.params.port == 0 and free_port() or ctx.params.port + 1
        if not ctx.params.fail then
          serve(ctx, port)
        end
        if not ctx.plan then
          local ok = pcall(http.wait, string.format("http://127.0.0.1:%d/health", port),
            { match = "2.0 ok", timeout = 3, interval = 0.2 })
          if not ok then
            error(string.format("photos 2.0 does not answer on :%d (the demo fails here on purpose)", port), 0)
          end
          ctx.log("photos 2.0 answers on :%d", port)
        end
        fs.write(box(ctx, "serving-2.0"), tostring(port)) -- what the next run finds
      end,
    },
  },
}
