-- hrun.luals: LuaLS (lua-language-server) annotations for what a playbook sees — every
-- module function, the repository object, hosts, the DSL (playbook, phase, step, check,
-- handler, required), ctx and the DSL's option tables — each with its one line from
-- hrun.docs, and the fields from the DSL's own tables (hrun.dsl.fields), so that they
-- cannot drift from what the engine accepts. `hrun help --luals` writes them; the
-- packages install them as share/hrun/luals/hrun.lua (docs/install.md, editors).

local docs = require "hrun.docs"
local dsl = require "hrun.dsl"

local M = {}

-- A parameter's type, from the name the signature gives it.
local TYPES = {
  path = "string", dir = "string", src = "string", dst = "string", name = "string", text = "string",
  command = "string", url = "string", ref = "string", message = "string", pattern = "string", unit = "string",
  file = "string", sql = "string", data = "string", target = "string", snapshot = "string", root = "string",
  fmt = "string", container = "string", image = "string", flake = "string", input = "string", profile = "string",
  database = "string", key = "string", tag = "string", branch = "string", remote = "string", host = "string",
  seconds = "number", n = "integer", count = "integer", generation = "integer", bool = "boolean",
  argv = "string[]", paths = "string[]", edits = "table", vars = "table", values = "table", fn = "function",
}

local FIELD_TYPES = {
  ["function"] = "fun(ctx: hrun.Ctx): any", string = "string", number = "number", boolean = "boolean",
  table = "table", any = "any",
}

-- The arguments of a signature "m.f(a, {b, c=1}, [d])": {{name, type, optional}, …}
local function params_of(sig)
  local inner = sig:match("%((.*)%)%s*$")
  if not inner or inner:match("^%s*$") then
    return {}
  end
  local parts, depth, cur = {}, 0, {}
  for ch in inner:gmatch(utf8.charpattern) do
    if ch == "{" or ch == "[" or ch == "(" then
      depth = depth + 1
    elseif ch == "}" or ch == "]" or ch == ")" then
      depth = depth - 1
    end
    if ch == "," and depth == 0 then
      parts[#parts + 1] = table.concat(cur)
      cur = {}
    else
      cur[#cur + 1] = ch
    end
  end
  parts[#parts + 1] = table.concat(cur)
  local out, seen = {}, {}
  for i, raw in ipairs(parts) do
    local p = raw:gsub("^%s+", ""):gsub("%s+$", "")
    local optional = false
    if p:match("^%[.*%]$") then
      optional, p = true, p:sub(2, -2):gsub("^%s+", ""):gsub("%s+$", "")
    end
    local entry
    if p == "…" or p == "..." then
      entry = { name = "...", type = "any" }
    elseif p:sub(1, 1) == "{" then
      local fields, seen_f = {}, {}
      for item in p:gsub("^{", ""):gsub("}.*$", ""):gmatch("[^,|]+") do
        local f = item:match("^%s*([%a_][%w_]*)")
        if f and not seen_f[f] then
          seen_f[f] = true
          fields[#fields + 1] = f .. "?: any"
        end
      end
      entry = { name = "opts", type = #fields > 0 and ("{" .. table.concat(fields, ", ") .. "}") or "table",
        optional = true }
    else
      local name = p:match("^([%a_][%w_]*)") or ("arg" .. i)
      entry = { name = name, type = p:find("|", 1, true) and "any" or TYPES[name] or "any", optional = optional }
    end
    if seen[entry.name] then
      entry.name = entry.name .. i
    end
    seen[entry.name] = true
    out[#out + 1] = entry
  end
  return out
end

local function emit_function(L, qualified, e, returns)
  L[#L + 1] = "--- " .. e.doc
  local names = {}
  for _, p in ipairs(params_of(e.sig)) do
    L[#L + 1] = string.format("---@param %s%s %s", p.name, p.optional and "?" or "", p.type)
    names[#names + 1] = p.name
  end
  L[#L + 1] = "---@return " .. (returns or "any")
  L[#L + 1] = string.format("function %s(%s) end", qualified, table.concat(names, ", "))
  L[#L + 1] = ""
end

local function class_of(L, class, fields, docs_of)
  L[#L + 1] = "---@class " .. class
  for _, k in ipairs(dsl.sorted_keys(fields)) do
    L[#L + 1] = string.format("---@field %s%s %s%s", k, k == "run" and "" or "?", FIELD_TYPES[fields[k]] or "any",
      docs_of and docs_of[k] and (" " .. docs_of[k]) or "")
  end
  L[#L + 1] = ""
end

-- text() → the annotations, one Lua file
function M.text()
  local L = {
    "---@meta hrun",
    "-- Annotations for lua-language-server: what an hrun playbook sees. Written by",
    "-- `hrun help --luals` from hrun's own tables; do not edit.",
    "",
  }
  local step_doc = {
    run = "what the step does (required)", undo = "how to take it back (else its journaled inverses)",
    verify = "true when the step's work holds", when = "false skips the step", timeout = "seconds",
  }
  for _, s in ipairs(docs.sections) do
    if s.what == "module" then
      L[#L + 1] = "--- " .. s.doc .. " (" .. s.ref .. ")"
      L[#L + 1] = string.format("%s = {}", s.name)
      L[#L + 1] = ""
      for _, e in ipairs(s.entries) do
        if e.sig:find("(", 1, true) then
          emit_function(L, s.name .. "." .. e.name, e, e.sig:match("^git%.open%(") and "hrun.Repo" or nil)
        else
          L[#L + 1] = "--- " .. e.doc
          L[#L + 1] = string.format("%s.%s = nil ---@type any", s.name, e.name)
          L[#L + 1] = ""
        end
      end
    elseif s.what == "methods" then
      L[#L + 1] = "--- " .. s.doc
      L[#L + 1] = "---@class hrun.Repo"
      L[#L + 1] = "---@field path string the repository's directory"
      L[#L + 1] = "local Repo = {}"
      L[#L + 1] = ""
      for _, e in ipairs(s.entries) do
        emit_function(L, "Repo:" .. e.name, e)
      end
    elseif s.what == "hosts" then
      L[#L + 1] = "--- " .. s.doc
      L[#L + 1] = "---@type table<string, table>"
      L[#L + 1] = "hosts = {}"
      L[#L + 1] = ""
    end
  end
  -- ctx
  local ctx = docs.section("ctx")
  L[#L + 1] = "--- " .. ctx.doc
  L[#L + 1] = "---@class hrun.Ctx"
  for _, e in ipairs(ctx.entries) do
    local t
    if e.sig:find("(", 1, true) then
      local args = {}
      for _, p in ipairs(params_of(e.sig)) do
        args[#args + 1] = p.name .. (p.optional and "?" or "") .. ": " .. p.type
      end
      t = "fun(" .. table.concat(args, ", ") .. ")"
    elseif e.name == "plan" then
      t = "boolean"
    elseif e.name == "run_id" then
      t = "integer"
    elseif e.name == "phase" or e.name == "step" or e.name == "host" then
      t = "string"
    else
      t = "table"
    end
    L[#L + 1] = string.format("---@field %s %s %s", e.name, t, e.doc)
  end
  L[#L + 1] = ""
  -- the DSL's option tables
  class_of(L, "hrun.Playbook", dsl.fields.playbook)
  class_of(L, "hrun.Phase", dsl.fields.phase)
  class_of(L, "hrun.Step", dsl.fields.step, step_doc)
  class_of(L, "hrun.Handler", dsl.fields.handler, step_doc)
  L[#L + 1] = "---@class hrun.Object a DSL object: a playbook, phase, step, check or handler"
  L[#L + 1] = ""
  local returns = {
    playbook = { "t: hrun.Playbook", "hrun.Object" },
    phase = { "name: string", "fun(t: hrun.Phase): hrun.Object" },
    step = { "name: string", "fun(t: hrun.Step): hrun.Object" },
    check = { "name: string", "fun(fn: fun(ctx: hrun.Ctx): boolean, string?): hrun.Object" },
    handler = { "name: string", "fun(t: hrun.Handler): hrun.Object" },
    required = { "type: string", "hrun.Object" },
  }
  for _, e in ipairs(docs.section("dsl").entries) do
    local r = returns[e.name] or { "...: any", "any" }
    local pname, ptype = r[1]:match("^(.-): (.*)$")
    L[#L + 1] = "--- " .. e.doc .. ": " .. e.sig
    L[#L + 1] = string.format("---@param %s %s", pname, ptype)
    L[#L + 1] = "---@return " .. r[2]
    L[#L + 1] = string.format("function %s(%s) end", e.name, pname)
    L[#L + 1] = ""
  end
  return table.concat(L, "\n")
end

return M
