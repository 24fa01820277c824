-- hrun.cli: the command line. Called by the host (runtime/main.c) with the private
-- library, argv (argv[0] is the program) and the stdlib directory; returns the exit
-- status. Every command is one entry of `commands`.

local priv, argv, stdlib_dir = ...

local pretty = require "hrun.pretty"
local json = require "hrun.json"
local fs = require "hrun.fs"
local sys = require "hrun.sys"

local EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 3, 130

-- A usage error: exit 3 with the message and a hint.
local Usage = {}
Usage.__index = Usage
local function usage_error(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, Usage), 0)
end

-- {======================================================
-- Global options: accepted by every command, in any position before a script's path.
-- ======================================================

local global_flags = {
  ["--state"] = { key = "state", value = "DIR" },
  ["--json"] = { key = "json" },
  ["-v"] = { key = "verbose" },
  ["--verbose"] = { key = "verbose" },
  ["--no-color"] = { key = "no_color" },
  ["--yes"] = { key = "yes" },
  ["-y"] = { key = "yes" },
  ["-e"] = { key = "chunks", value = "CODE", multi = true },
  ["-h"] = { key = "help" },
  ["--help"] = { key = "help" },
  ["--version"] = { key = "version" },
}

-- }======================================================

local commands = {}
local command_order = { "run", "-e", "repl", "version", "help" }

-- The state directory: --state, $HRUN_STATE_DIR, /var/lib/hrun for root, else
-- $XDG_STATE_HOME/hrun (~/.local/state/hrun). Created 0700 when `create`.
local function state_dir(opts, create)
  local dir = opts.state or sys.env("HRUN_STATE_DIR")
  if not dir or dir == "" then
    if sys.is_root() then
      dir = "/var/lib/hrun"
    else
      local xdg = sys.env("XDG_STATE_HOME")
      if not xdg or xdg == "" then
        xdg = (sys.env("HOME") or "/tmp") .. "/.local/state"
      end
      dir = xdg .. "/hrun"
    end
  end
  if create and not fs.exists(dir) then
    local ok, err = fs.mkdir(dir, { parents = true, mode = "0700" })
    if not ok then
      return nil, err
    end
  end
  return dir
end

-- {======================================================
-- Reporting
-- ======================================================

local function colorize(opts, code, s)
  if opts.color then
    return "\27[" .. code .. "m" .. s .. "\27[0m"
  end
  return s
end

local function report_error(opts, err)
  local msg = type(err) == "string" and err or pretty.format(err)
  if opts.json then
    io.stdout:write(json.encode({ event = "error", message = pretty.utf8(msg), time = sys.now() }), "\n")
  else
    io.stderr:write(colorize(opts, "1;31", "hrun: ") .. msg .. "\n")
  end
end

local function handler(opts)
  return function(e)
    if type(e) == "string" and opts.verbose then
      return debug.traceback(e, 2)
    end
    return e
  end
end

-- Runs fn(...) protected; returns the exit status.
local function protected(opts, fn, ...)
  local ok, err = xpcall(fn, handler(opts), ...)
  if ok then
    return EXIT_OK
  end
  report_error(opts, err)
  if priv.interrupted() > 0 then
    return EXIT_INTERRUPTED
  end
  return EXIT_FAILED
end

-- }======================================================

-- {======================================================
-- Commands
-- ======================================================

commands.run = {
  usage = "hrun SCRIPT.lua [ARG...]",
  summary = "run a Lua script with every module loaded",
  help = [[
Runs SCRIPT.lua (or standard input for "-") with fs, exec, json and sys as globals.
The script gets its arguments as ... and in the global table arg (arg[0] is the
script), as lua does. Options after the script's path are the script's own.
An uncaught error prints file:line: message (a traceback with -v) and exits 1.]],
  run = function(opts, args)
    local path = args[1]
    local fn, err
    if path == "-" then
      fn, err = load(io.stdin:read("a"), "=stdin", "t")
    else
      fn, err = loadfile(path, "t")
    end
    if not fn then
      report_error(opts, err)
      return EXIT_FAILED
    end
    local script_arg = { [0] = path }
    for i = 2, #args do
      script_arg[i - 1] = args[i]
    end
    _G.arg = script_arg
    return protected(opts, fn, table.unpack(script_arg, 1, #script_arg))
  end,
}

commands["-e"] = {
  usage = "hrun -e CODE [-e CODE]...",
  summary = "run a chunk of Lua with every module loaded",
  help = [[
Runs each CODE in order, as a chunk with fs, exec, json and sys as globals:
  hrun -e 'print(exec.run({"uname", "-r"}).stdout)']],
  run = function(opts)
    for i, code in ipairs(opts.chunks) do
      local fn, err = load(code, "=(command line " .. i .. ")", "t")
      if not fn then
        report_error(opts, err)
        return EXIT_FAILED
      end
      local status = protected(opts, fn)
      if status ~= EXIT_OK then
        return status
      end
    end
    return EXIT_OK
  end,
}

commands.repl = {
  usage = "hrun repl",
  summary = "interactive Lua with every module loaded",
  help = [[
Reads Lua at a prompt: expressions print their values (tables pretty-printed),
incomplete chunks continue on the next line, Tab completes globals and module
fields, the history is kept in the state directory. Ctrl-C cancels the line or
interrupts a running call; Ctrl-D exits. With a pipe on standard input it reads
chunks without prompts, so it can be scripted; the exit status is 1 if any failed.]],
  run = function(opts, args)
    if #args > 0 then
      usage_error("repl takes no arguments, got '%s'", args[1])
    end
    local repl = require "hrun.repl"
    local ropts = { env = _G, color = opts.color, verbose = opts.verbose }
    if not priv.isatty(0) then
      return repl.piped(priv, ropts, io.stdin)
    end
    local dir, err = state_dir(opts, true)
    if dir then
      ropts.history = dir .. "/repl_history"
    else
      io.stderr:write("hrun: no history: ", err, "\n")
    end
    ropts.banner = string.format("hrun %s (%s) — modules: exec fs json sys. Ctrl-D exits.",
      priv.version, _VERSION)
    return repl.interactive(priv, ropts)
  end,
}

commands.version = {
  usage = "hrun version",
  summary = "print the version",
  help = "Prints hrun's version and the Lua it embeds; with -v, where its Lua library is.",
  run = function(opts)
    io.stdout:write(string.format("hrun %s (%s)\n", priv.version, _VERSION))
    if opts.verbose then
      io.stdout:write("library: ", stdlib_dir, "\n")
    end
    return EXIT_OK
  end,
}

local function general_help()
  local lines = {
    "hrun — journaled, checked, reversible changes to a server, written in Lua.",
    "",
    "Usage:",
  }
  for _, name in ipairs(command_order) do
    lines[#lines + 1] = string.format("  %-30s %s", commands[name].usage, commands[name].summary)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Global options (any command, any position before a script's path):"
  lines[#lines + 1] = "  --state DIR   state directory (default $HRUN_STATE_DIR, /var/lib/hrun as root)"
  lines[#lines + 1] = "  --json        errors and events as JSON lines"
  lines[#lines + 1] = "  -v            tracebacks and debug lines"
  lines[#lines + 1] = "  --no-color    no colours, even on a terminal"
  lines[#lines + 1] = "  --yes         answer yes to confirmations"
  lines[#lines + 1] = ""
  lines[#lines + 1] = "'hrun help COMMAND' tells more. Exit status: 0 done, 1 failed, 3 bad usage, 130 interrupted."
  return table.concat(lines, "\n") .. "\n"
end

-- Every native function: module.name, whether it reads or writes, its capability.
local function modules_help(opts)
  local prims = priv.primitives()
  table.sort(prims, function(a, b)
    return a.name < b.name
  end)
  if opts.json then
    for _, p in ipairs(prims) do
      io.stdout:write(json.encode({ name = p.name, kind = p.kind, cap = p.cap }), "\n")
    end
    return EXIT_OK
  end
  io.stdout:write("Native functions (pure: computes only; read: looks at the system;\n",
    "write: changes it, recorded in plans and journaled), with the capability each needs:\n\n")
  for _, p in ipairs(prims) do
    io.stdout:write(string.format("  %-16s %-6s %s\n", p.name, p.kind, p.cap or "-"))
  end
  return EXIT_OK
end

commands.help = {
  usage = "hrun help [COMMAND|modules]",
  summary = "this help, a command's, or the list of native functions",
  help = [[
Prints the list of commands, or the usage and description of one. 'hrun help modules'
lists every native function with whether it reads or writes and the capability it
needs (one JSON object a line with --json).]],
  run = function(opts, args)
    local name = args[1]
    if not name then
      io.stdout:write(general_help())
      return EXIT_OK
    elseif name == "modules" then
      return modules_help(opts)
    end
    local cmd = commands[name] or (name == "e" and commands["-e"])
    if not cmd then
      local near = priv.nearest(name, command_order)
      usage_error("no command '%s'%s", name, near and string.format(" (did you mean '%s'?)", near) or "")
    end
    io.stdout:write("Usage: ", cmd.usage, "\n\n", cmd.help, "\n")
    return EXIT_OK
  end,
}

-- }======================================================

-- {======================================================
-- Parsing
-- ======================================================

local function is_script(word)
  return word == "-" or word:match("%.lua$") or word:find("/", 1, true)
end

local function known_flags()
  local names = {}
  for name in pairs(global_flags) do
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

-- Splits argv into the command's name, the options and the command's arguments (and,
-- for -e followed by a script, the script's).
local function parse(args)
  local opts, words, name = { chunks = {} }, {}, nil
  local i = 1
  while i <= #args do
    local a = args[i]
    if name == "run" then
      words[#words + 1] = a -- after a script's path, everything is the script's
    elseif name == "help" and a == "-e" then
      words[#words + 1] = a -- hrun help -e
    elseif a == "--" then
      for j = i + 1, #args do
        words[#words + 1] = args[j]
      end
      if name == nil and #words > 0 then
        name = "run"
      end
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      local flag, inline = a:match("^(%-%-[%w-]+)=(.*)$")
      flag = flag or a
      local spec = global_flags[flag]
      if not spec then
        local near = priv.nearest(flag, known_flags())
        usage_error("unknown option '%s'%s", a, near and string.format(" (did you mean '%s'?)", near) or "")
      end
      local value = true
      if spec.value then
        value = inline
        if value == nil then
          i = i + 1
          value = args[i]
        end
        if value == nil then
          usage_error("option %s needs a value (%s)", flag, spec.value)
        end
      elseif inline then
        usage_error("option %s takes no value", flag)
      end
      if spec.multi then
        table.insert(opts[spec.key], value)
      else
        opts[spec.key] = value
      end
    elseif name == nil then
      if commands[a] and a ~= "run" and a ~= "-e" then
        name = a
      elseif is_script(a) then
        name = "run"
        words[1] = a
      else
        local near = priv.nearest(a, { "repl", "version", "help" })
        usage_error("unknown command '%s'%s", a,
          near and string.format(" (did you mean '%s'?)", near) or " (a script's name ends in .lua)")
      end
    else
      words[#words + 1] = a
    end
    i = i + 1
  end
  if opts.help then
    return "help", opts, { name }
  elseif opts.version then
    return "version", opts, {}
  elseif #opts.chunks > 0 then
    if name and name ~= "run" then
      usage_error("-e cannot be combined with the command '%s'", name)
    end
    return "-e", opts, {}, name == "run" and words or nil
  end
  return name or "help", opts, words
end

-- }======================================================

-- With HRUN_COVERAGE=FILE, the names of the primitives this process called are
-- appended to FILE when the state closes (also after os.exit(code, true)); the test
-- suite's bindcov check reads them.
local function write_coverage()
  local file = sys.env("HRUN_COVERAGE")
  local f = io.open(file, "a")
  if not f then
    return
  end
  for _, p in ipairs(priv.primitives()) do
    if p.calls > 0 then
      f:write(p.name, "\n")
    end
  end
  f:close()
end

local function main()
  if (sys.env("HRUN_COVERAGE") or "") ~= "" then
    debug.getregistry()["hrun.coverage"] = setmetatable({}, { __gc = write_coverage })
  end
  local args = {}
  for i = 1, #argv do
    args[i] = argv[i]
  end
  local ok, name, opts, cargs, script = pcall(parse, args)
  if not ok then
    local err = name
    if getmetatable(err) == Usage then
      io.stderr:write("hrun: ", err.message, "\nTry 'hrun help'.\n")
      return EXIT_USAGE
    end
    error(err, 0)
  end
  local env_color = sys.env("NO_COLOR")
  opts.color = not opts.no_color and not opts.json and (env_color == nil or env_color == "")
    and priv.isatty(2)
  priv.setoptions({ verbose = opts.verbose, color = opts.color })
  local status
  ok, status = pcall(commands[name].run, opts, cargs)
  if not ok then
    if getmetatable(status) == Usage then
      io.stderr:write("hrun: ", status.message, "\nTry 'hrun help'.\n")
      return EXIT_USAGE
    end
    error(status, 0)
  end
  -- -e followed by a script: hrun -e 'x = 1' script.lua
  if status == EXIT_OK and script then
    status = commands.run.run(opts, script)
  end
  return status
end

return main()
