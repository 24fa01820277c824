-- demo.lua — a short tour of hrun's modules: run it with `hrun playbooks/demo.lua`.
-- It works in a temporary directory of its own and removes it at the end.

local function say(fmt, ...)
  io.write("▸ ", string.format(fmt, ...), "\n")
end

local function show(label, value)
  io.write(string.format("    %-14s %s\n", label, value))
end

say("this machine (sys)")
show("host", sys.hostname())
show("root", tostring(sys.is_root()))
show("kernel", exec.run({ "uname", "-r" }, { readonly = true }).stdout:gsub("\n$", ""))

local dir = exec.run({ "mktemp", "-d", "/tmp/hrun-demo-XXXXXX" }).stdout:gsub("\n$", "")
local ok, err = pcall(function()
  say("files (fs): atomic writes, byte-string names, errors that name the path")
  local conf = dir .. "/app config.json"
  fs.write(conf, json.encode({ name = "immich", port = 2283, enabled = true }, { indent = 2 }), { mode = "0640" })
  local st = fs.stat(conf)
  show("wrote", string.format("%q  (%d bytes, mode %o)", conf, st.size, st.mode))
  fs.mkdir(dir .. "/backup/etc/nixos", { parents = true })
  fs.copy(conf, dir .. "/backup/etc/nixos/app config.json")
  show("copied to", "backup/etc/nixos/ — " .. #fs.list(dir .. "/backup/etc/nixos") .. " file")
  local _, msg, code = fs.read(dir .. "/missing.conf")
  show("missing file", string.format("nil, %q, %q", msg, code))

  say("json: integers stay integers, keys sorted")
  local decoded = json.decode(fs.read(conf))
  show("decoded", string.format("port=%d (%s), enabled=%s", decoded.port, math.type(decoded.port),
    tostring(decoded.enabled)))

  say("processes (exec): no shell, stdout and stderr apart, streamed live")
  local r = exec.run({ "sh", "-c", "for i in 1 2 3; do echo step $i; sleep 0.1; done; echo warn >&2" }, {
    stream = function(line, which)
      io.write(string.format("    %-14s %s\n", which == "stdout" and "│" or "│ stderr", line))
    end,
  })
  show("exit", string.format("code %d in %.2f s", r.code, r.seconds))

  say("timeouts end the whole process group, and say so")
  local t = exec.run({ "sh", "-c", "sleep 60 & sleep 60" }, { timeout = 0.5, check = false })
  show("result", string.format("timed_out=%s signal=%s after %.2f s", tostring(t.timed_out), t.signal, t.seconds))
  local _, failure = pcall(exec.run, { "ls", dir .. "/nope" })
  show("check=true", (failure:gsub("\n", " / ")))
end)

fs.remove(dir, { recursive = true })
say("cleaned up %s", dir)
if not ok then
  error(err, 0)
end
