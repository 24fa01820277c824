-- hrun.repl: the read-eval-print loop. Lines come from libedit on a terminal (the
-- private library's readline) or from a pipe; incomplete chunks continue on the next
-- line, as in lua.c; expressions print their values through hrun.pretty.

local pretty = require "hrun.pretty"

local M = {}

local keywords = {
  "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
  "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
}

-- Compiles a chunk typed at the prompt: an expression first (its values are printed),
-- then a statement. Returns fn, or nil, message, incomplete; a chunk is incomplete
-- when either reading ran into its end ("1 +", "function f()").
function M.compile(src, env)
  local fn, experr = load("return " .. src, "=repl", "t", env)
  if fn then
    return fn
  end
  local err
  fn, err = load(src, "=repl", "t", env)
  if fn then
    return fn
  end
  local function at_end(msg)
    return msg:sub(-5) == "<eof>"
  end
  if at_end(err) or at_end(experr) then
    return nil, err, true
  end
  -- report the reading that got further: "1 +" then ")" is a bad expression
  local function line(msg)
    return tonumber(msg:match("^repl:(%d+):")) or 0
  end
  return nil, line(experr) > line(err) and experr or err, false
end

-- The candidates for completing `text`: global names and keywords, or the fields of
-- the table a dotted prefix names ("fs.re" → "fs.read", "fs.remove", "fs.rename");
-- after ':' the methods of a value.
function M.completions(text, env)
  local prefix, sep, partial = text:match("^(.-)([.:])([%w_]*)$")
  local t = env
  if prefix then
    for name in prefix:gmatch("[^.:]+") do
      if type(t) ~= "table" then
        return {}
      end
      t = t[name]
    end
    if sep == ":" then
      local mt = getmetatable(t)
      t = type(mt) == "table" and rawget(mt, "__index") or nil
    end
  else
    partial = text
  end
  local seen, out = {}, {}
  local function add(name)
    if not seen[name] and name:sub(1, #partial) == partial then
      seen[name] = true
      out[#out + 1] = (prefix and prefix .. sep or "") .. name
    end
  end
  local depth = 0
  while type(t) == "table" and depth < 8 do
    for k in pairs(t) do
      if type(k) == "string" and k:match("^[%a_][%w_]*$") then
        add(k)
      end
    end
    local mt = getmetatable(t)
    t = type(mt) == "table" and rawget(mt, "__index") or nil
    depth = depth + 1
  end
  if not prefix then
    for _, kw in ipairs(keywords) do
      add(kw)
    end
  end
  table.sort(out)
  return out
end

local function report(err, opts)
  local msg = type(err) == "string" and err or pretty.format(err)
  if opts.color then
    msg = "\27[31m" .. msg .. "\27[0m"
  end
  io.stderr:write(msg, "\n")
  io.stderr:flush()
end

local function evaluate(fn, priv, opts)
  local results = table.pack(xpcall(fn, function(e)
    if opts.verbose and type(e) == "string" then
      return debug.traceback(e, 2)
    end
    return e
  end))
  if not results[1] then
    if priv.interrupted() > 0 then
      priv.clearinterrupt()
    end
    report(results[2], opts)
    return false
  end
  if results.n > 1 then
    local out = {}
    for i = 2, results.n do
      out[#out + 1] = pretty.format(results[i], { width = 100 })
    end
    io.stdout:write(table.concat(out, "\t"), "\n")
    io.stdout:flush()
  end
  return true
end

-- Feeds one line; returns "more" while the chunk is incomplete, else true/false for
-- whether it ran without error.
local function feed(state, line, priv, opts)
  state.buf = state.buf and state.buf .. "\n" .. line or line
  local fn, err, incomplete = M.compile(state.buf, state.env)
  if incomplete then
    return "more"
  end
  state.buf = nil
  if not fn then
    report(err, opts)
    return false
  end
  return evaluate(fn, priv, opts)
end

-- The loop on a terminal. opts: env, history (file or nil), banner, color, verbose,
-- finished (a function: the loop ends once it returns true).
function M.interactive(priv, opts)
  local state = { env = opts.env }
  priv.repl_open(opts.history, function(text)
    return M.completions(text, state.env)
  end)
  if opts.banner then
    io.stdout:write(opts.banner, "\n")
  end
  while true do
    local ok, res = pcall(function()
      local line, why = priv.readline(state.buf and ">> " or "> ")
      if why == "interrupted" then
        io.stdout:write("\n")
        state.buf = nil
        return
      elseif line == nil then
        io.stdout:write("\n")
        return "exit"
      end
      priv.addhistory(line)
      feed(state, line, priv, opts)
    end)
    if (ok and res == "exit") or (opts.finished and opts.finished()) then
      break
    elseif not ok then -- an interrupt that fell between two lines
      priv.clearinterrupt()
      state.buf = nil
      report(res, opts)
    end
  end
  priv.repl_close()
  return 0
end

-- The loop on a pipe: no prompts, no echo; the exit status says whether all went well.
function M.piped(priv, opts, input)
  local state = { env = opts.env }
  local failed = false
  for line in input:lines() do
    if feed(state, line, priv, opts) == false then
      failed = true
    end
    if opts.finished and opts.finished() then
      break
    end
  end
  if state.buf then
    local _, err = M.compile(state.buf, state.env)
    report(err, opts)
    failed = true
  end
  return failed and 1 or 0
end

return M
