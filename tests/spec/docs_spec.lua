-- hrun.docs (stdlib/hrun/docs.lua), the one-line docs the REPL's help() shows and editor
-- annotations are made from: every public function of every module a playbook sees, as
-- a playbook sees them (its environment, plain and sandboxed), the methods of git.open's
-- repository, the DSL and ctx, has an entry — and no entry names what is not there.

local docs = require "hrun.docs"

-- Entries for what is being built and not there yet: tolerated while missing, checked
-- like any other entry once there (empty now).
local PENDING = {}

-- Lua's own libraries in a playbook's environment: not hrun's modules
local LUA_LIBS = { _G = true, string = true, table = true, math = true, utf8 = true, coroutine = true, os = true,
  io = true }

-- What a playbook's step sees, run for real (plain or --sandbox): "module NAME KEY…" for
-- each table among its globals, "ctx KEY…" for its ctx.
local DUMP = [[
    step "dump" { run = function(ctx)
      local function keys(t)
        local out = {}
        for k in pairs(t) do out[#out + 1] = tostring(k) end
        table.sort(out)
        return table.concat(out, " ")
      end
      for name, v in pairs(_ENV) do
        if type(v) == "table" then print("module " .. name .. " " .. keys(v)) end
      end
      print("ctx " .. keys(ctx))
    end },
]]

local function seen_by_playbook(sandbox)
  local dir = tmpdir()
  local p = sandboxed_playbook(dir, { steps = DUMP })
  local args = { p, "--state", dir .. "/state", "--no-color" }
  if sandbox then
    args[#args + 1] = "--sandbox"
  end
  local r = hrun_cmd(args)
  eq(r.code, 0, r.stdout .. r.stderr)
  local modules, ctx = {}, nil
  for line in r.stdout:gmatch("[^\n]+") do
    local name, keys = line:match("^module (%S+) ?(.*)$")
    if name and not LUA_LIBS[name] then
      modules[name] = {}
      for k in keys:gmatch("%S+") do
        if k:sub(1, 1) ~= "_" then -- _name: internal
          modules[name][k] = true
        end
      end
    end
    local c = line:match("^ctx (.*)$")
    if c then
      ctx = {}
      for k in c:gmatch("%S+") do
        ctx[k] = true
      end
    end
  end
  ok(modules.fs and modules.git and modules.pg, "the step listed the modules:\n" .. r.stdout)
  ok(ctx, "the step listed ctx:\n" .. r.stdout)
  return modules, ctx
end

-- The problems between what is there ({name = true}) and a section's entries, as
-- "section.name: …" lines, sorted.
local function compare(section_name, there, problems)
  local s = docs.section(section_name)
  if not s then
    problems[#problems + 1] = section_name .. ": no section in hrun.docs"
    return
  end
  for name in pairs(there) do
    if not s.by_name[name] then
      problems[#problems + 1] = string.format("%s.%s: no entry in hrun.docs", section_name, name)
    end
  end
  for _, e in ipairs(s.entries) do
    if not there[e.name] and not PENDING[section_name .. "." .. e.name] then
      problems[#problems + 1] = string.format("%s.%s: an entry in hrun.docs, not there", section_name, e.name)
    end
  end
end

local function no_problems(problems)
  table.sort(problems)
  eq(table.concat(problems, "\n"), "")
end

describe("hrun.docs", function()
  it("has an entry for every public function of every module a playbook sees, and no other", function()
    for _, sandbox in ipairs({ false, true }) do
      local modules, ctx = seen_by_playbook(sandbox)
      local problems = {}
      for name, keys in pairs(modules) do
        compare(name, keys, problems)
      end
      for _, s in ipairs(docs.sections) do
        if s.what == "module" and not modules[s.name] then
          problems[#problems + 1] = s.name .. ": a module in hrun.docs that playbooks do not have"
        end
      end
      compare("ctx", ctx, problems)
      no_problems(problems)
    end
  end)

  it("has an entry for every method of git.open's repository and every DSL constructor", function()
    local dir = tmpdir()
    local repo = assert(git.init(dir))
    local methods, problems = {}, {}
    for k in pairs(debug.getmetatable(repo).__index) do
      methods[k] = true
    end
    ok(methods.commit and methods.status, "the methods were read")
    compare("repo", methods, problems)
    local dsl = {}
    for k in pairs(require("hrun.dsl").constructors()) do
      dsl[k] = true
    end
    compare("dsl", dsl, problems)
    no_problems(problems)
  end)

  it("has one line, under 90 characters, and a signature for each", function()
    for _, s in ipairs(docs.sections) do
      ok(#s.doc > 0 and utf8.len(s.doc) < 90, s.name .. "'s description")
      ok(s.ref:match("^docs/[%w.-]+%.md#?[%w-]*$"), s.name .. "'s ref: " .. s.ref)
      for _, e in ipairs(s.entries) do
        local what = s.name .. "." .. e.name
        ok(e.doc ~= "" and not e.doc:find("\n") and utf8.len(e.doc) < 90, what .. ": " .. e.doc)
        -- the signature names it as it is called (fs.write(…), repo:status(…), ctx.log(…), step "…")
        local called = (s.what == "methods" and "repo:" or s.what == "dsl" and "" or s.name .. ".") .. e.name
        eq(e.sig:sub(1, #called), called, what .. "'s signature")
      end
    end
  end)
end)

-- Display widths: "…" is one column
local function width(s)
  return utf8.len(s) or #s
end

local function repl(stdin, args)
  local r = hrun_cmd(args or { "repl" }, { stdin = stdin })
  eq(r.code, 0, r.stderr)
  eq(r.stderr, "")
  for line in r.stdout:gmatch("[^\n]+") do
    ok(width(line) <= 100, "wider than 100 columns: " .. line)
  end
  return r.stdout
end

describe("help() in the REPL", function()
  it("lists the modules with a line on each", function()
    local out = repl("help()\n")
    has(out, "  fs       files and directories: read, write atomically, copy, rename, remove\n")
    has(out, "  migrate  what the phases of a migration to NixOS repeat")
    for _, m in ipairs({ "fs", "exec", "json", "sys", "btrfs", "hash", "git", "nixos", "http", "service", "podman",
      "sqlite", "secrets", "checks", "pg", "migrate", "notify" }) do
      ok(out:find("\n  " .. m .. " +%S"), m .. " is listed:\n" .. out)
    end
    has(out, 'help("repo")')
  end)

  it("lists a module's functions: signature, kind, capability and doc in columns", function()
    local out = repl("help('fs')\n")
    has(out, "fs — files and directories")
    has(out, "  fs.read(path)                        read   fs  the file's contents\n")
    -- a doc that does not fit goes under its signature
    has(out, "  fs.write(path, data, {mode})         write  fs\n" ..
      "      write a file atomically (temporary, fsync, rename); returns path\n")
    -- a signature too long for the column: the rest on the next line, in the columns
    has(out, "  fs.copy(src, dst, {recursive, reflink})\n" .. string.rep(" ", 39) .. "write  fs\n")
    has(out, "More in docs/reference.md#fs.\n")
    eq(repl("help(fs)\n"), out)
    -- the Lua modules' functions say so; a value is not a function
    has(repl("help(checks)\n"), "  checks.mounts()  ")
    has(repl("help(checks)\n"), "Lua  -")
    has(repl("help('json')\n"), "  json.null          value  -  the value of JSON's null")
  end)

  it("aligns the columns by display width, not bytes", function()
    -- ctx.log(fmt, …) has a 3-byte character: its doc starts where the others' do
    local out = repl("help('ctx')\n")
    local cols = {}
    for line in out:gmatch("[^\n]+") do
      local before = line:match("^(  ctx%.%S.-  +)%S")
      if before then
        cols[#cols + 1] = width(before)
      end
    end
    ok(#cols >= 8, "the ctx fields are listed:\n" .. out)
    for i = 2, #cols do
      eq(cols[i], cols[1], "the doc column of line " .. i .. ":\n" .. out)
    end
    has(out, "  ctx.log(fmt, …)   a line under the step")
    has(out, "  ctx.params        the parameters, read-only")
  end)

  it("says what one function does, and names the nearest to an unknown name", function()
    local out = repl("help('fs.write')\nhelp(json.decode)\nhelp('repo:status')\nhelp('step')\n" ..
      "help('fs.wirte')\nhelp('fz')\nhelp(42)\n")
    has(out, "fs.write(path, data, {mode})\n" ..
      "  write (changes the system: journaled, recorded in plans), capability fs\n" ..
      "  write a file atomically (temporary, fsync, rename); returns path\n" ..
      "  More in docs/reference.md#fs.\n")
    has(out, "json.decode(text)\n  pure (computes only), no capability\n")
    has(out, "repo:status({untracked=true, ignored})\n  read (looks at the system), capability git\n")
    has(out, 'step "name" { run = function(ctx) … end }\n  a step: run (required)')
    has(out, "no function 'fs.wirte' (did you mean 'fs.write'?); help() lists the modules\n")
    has(out, "no module 'fz' (did you mean 'fs'?); help() lists the modules\n")
    has(out, "help: a number is neither a module nor one of their functions")
  end)

  it("works in a playbook's REPL too", function()
    local dir = tmpdir()
    local p = sandboxed_playbook(dir, { steps = 'step "s" { run = function() end },' })
    local out = repl("help()\nhelp('git')\n", { "repl", p, "--state", dir .. "/state" })
    has(out, "  fs       files and directories")
    has(out, "  git.open(dir)                         read   git\n")
  end)
end)
