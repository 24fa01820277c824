-- hrun.codec: values <-> JSON text for the journal. Paths are bytes, JSON is UTF-8: a
-- string that is not valid UTF-8 is stored as {"$hex": "…"} and comes back exact.
-- `summary` is for display only (effect arguments): long strings are cut short and
-- what JSON cannot hold is described. Both show every secret's bytes in a string as
-- <secret> before they hex, escape or cut it: masked afterwards, a secret in an
-- encoding (hex, \x escapes) or cut in half would not be found.

local json = require "hrun.json"
local mask = require("hrun.secrets")._mask

local M = {}

local function tohex(s)
  return (s:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

local function fromhex(h)
  return (h:gsub("%x%x", function(x)
    return string.char(tonumber(x, 16))
  end))
end

local function is_utf8(s)
  return utf8.len(s) ~= nil
end

-- A copy of v that json.encode accepts and `decode` turns back into v.
local function wrap(v, seen)
  local t = type(v)
  if t == "string" then
    v = mask(v)
    return is_utf8(v) and v or { ["$hex"] = tohex(v) }
  elseif t ~= "table" or v == json.null then
    return v
  end
  if seen[v] then
    error("a table that contains itself cannot be journaled", 0)
  end
  seen[v] = true
  local out = {}
  for k, x in pairs(v) do
    out[type(k) == "string" and mask(k) or k] = wrap(x, seen)
  end
  seen[v] = nil
  if next(v) == nil then
    local mt = getmetatable(v)
    if mt and mt.__name == "array" then
      return json.array()
    end
  end
  return out
end

local function unwrap(v)
  if type(v) ~= "table" then
    return v
  end
  if v["$hex"] and next(v, next(v)) == nil then
    return fromhex(v["$hex"])
  end
  for k, x in pairs(v) do
    v[k] = unwrap(x)
  end
  return v
end

-- encode(v) → JSON text (nil stays nil); raises for what JSON cannot hold (functions)
function M.encode(v)
  if v == nil then
    return nil
  end
  return json.encode(wrap(v, {}))
end

-- decode(text) → the value encode was given (nil for nil)
function M.decode(text)
  if text == nil then
    return nil
  end
  local v, err = json.decode(text)
  if v == nil and err then
    error("journal: unreadable value: " .. err, 0)
  end
  return unwrap(v)
end

-- summary(v [, limit]) → JSON text describing v for people: strings over limit bytes
-- (200) cut short, functions and other values described, invalid UTF-8 escaped.
function M.summary(v, limit)
  limit = limit or 200
  local function sum(x, depth)
    local t = type(x)
    if t == "string" then
      local s = mask(x)
      if #s > limit then
        s = s:sub(1, limit - 40) .. string.format("… (%d bytes)", #s)
      end
      return require("hrun.pretty").utf8(s)
    elseif t == "number" or t == "boolean" or x == json.null then
      return x
    elseif t == "userdata" and getmetatable(x) == "hrun.secret" then
      return "<secret>"
    elseif t == "table" then
      if depth > 6 then
        return "{…}"
      end
      local out = {}
      for k, y in pairs(x) do
        out[type(k) == "number" and k or mask(tostring(k))] = sum(y, depth + 1)
      end
      return out
    end
    return "<" .. t .. ">"
  end
  local ok, text = pcall(json.encode, sum(v, 0))
  return ok and text or json.encode(mask(tostring(v)))
end

return M
