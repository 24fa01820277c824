-- demo.lua — what hrun does, in half a minute, on a sandbox it makes and removes itself.
--
--   hrun playbooks/demo.lua              an upgrade that fails its health check: every
--                                        change is undone, newest first, and the sandbox
--                                        proves that every byte is back
--   hrun plan playbooks/demo.lua         what it would do, changing nothing
--   hrun playbooks/demo.lua -p fail=false   the upgrade that works (then: hrun rollback)

-- A fingerprint of a tree: every file's path and sha256, hashed together.
local function fingerprint(root)
  local r = exec.sh("cd '" .. root .. "' && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum",
    { readonly = true })
  return r.stdout:match("^(%x+)")
end

return playbook {
  name = "demo", version = "1.0",
  description = "Upgrade a (pretend) photo server; the health check fails; hrun undoes it all",
  params = { root = "/tmp/hrun-demo", fail = true },

  phase "sandbox" {
    check "no sandbox left over" (function(ctx)
      return not fs.exists(ctx.params.root), ctx.params.root .. " exists: remove it, or pass -p root=…"
    end),
    step "make a little server" {
      description = "config, photos and a cache under params.root",
      run = function(ctx)
        local root = ctx.params.root
        fs.mkdir(root .. "/etc/photos", { parents = true })
        fs.write(root .. "/etc/photos/config.json",
          json.encode({ version = "1.4", port = 2283, library = root .. "/srv/photos" }, { indent = 2 }))
        fs.mkdir(root .. "/srv/photos/2024 summer", { parents = true })
        for i = 1, 12 do
          -- bytes of every value, names with spaces
          local bytes = {}
          for b = 0, 255 do
            bytes[#bytes + 1] = string.char((b * i + i) % 256)
          end
          fs.write(string.format("%s/srv/photos/2024 summer/IMG %04d.jpg", root, i), table.concat(bytes):rep(64))
        end
        fs.mkdir(root .. "/var/cache/thumbs", { parents = true })
        fs.write(root .. "/var/cache/thumbs/index", "stale\n")
        if not ctx.plan then -- in a plan nothing was made: there is nothing to fingerprint
          ctx.state.fingerprint = fingerprint(root)
          ctx.log("sandbox %s, fingerprint %s…", root, ctx.state.fingerprint:sub(1, 16))
        end
      end,
      -- undone last: first prove that the rollback gave back every byte, then clean up
      undo = function(ctx)
        local now = fingerprint(ctx.params.root)
        if now ~= ctx.state.fingerprint then
          error("the sandbox differs from what was made: " .. now .. " ≠ " .. ctx.state.fingerprint)
        end
        ctx.log("every byte is back: fingerprint %s… as made", now:sub(1, 16))
        fs.remove(ctx.params.root, { recursive = true })
        ctx.log("sandbox removed")
      end,
    },
  },

  phase "upgrade 1.4 → 2.0" {
    check "the config is readable" (function(ctx)
      if ctx.plan then
        return true -- the sandbox phase was only planned
      end
      local config = json.decode(fs.read(ctx.params.root .. "/etc/photos/config.json"))
      return config and config.version == "1.4", "expected version 1.4"
    end),
    step "back up the config" {
      run = function(ctx)
        fs.copy(ctx.params.root .. "/etc/photos/config.json", ctx.params.root .. "/etc/photos/config.json.bak")
      end,
    },
    step "write the 2.0 config" {
      run = function(ctx)
        local root = ctx.params.root
        fs.write(root .. "/etc/photos/config.json", json.encode({ version = "2.0", port = 3001,
          library = root .. "/srv/media/library", machine_learning = true }, { indent = 2 }))
      end,
      verify = function(ctx)
        return json.decode(fs.read(ctx.params.root .. "/etc/photos/config.json")).version == "2.0"
      end,
    },
    step "move the library" {
      run = function(ctx)
        local root = ctx.params.root
        fs.mkdir(root .. "/srv/media", { parents = true })
        fs.rename(root .. "/srv/photos", root .. "/srv/media/library")
        fs.remove(root .. "/var/cache/thumbs", { recursive = true })
      end,
    },
    step "health check" {
      run = function(ctx)
        if ctx.plan then
          return -- nothing was upgraded: nothing to check
        end
        local listening = exec.sh("sleep 0.5; ! " .. tostring(ctx.params.fail), { check = false, readonly = true })
        if not listening.ok then
          error("photos 2.0 does not answer on :3001 (the demo fails here on purpose)")
        end
        ctx.log("photos 2.0 answers on :3001")
      end,
    },
  },
}
