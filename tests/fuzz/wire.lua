-- Fuzz driver: what a hostile sandboxed playbook's process could send the engine. The
-- engine decodes each line with the tags hrun.boundary uses (functions, secrets, DSL
-- objects, repositories, arrays) and validates a loaded playbook. Whatever the bytes,
-- decoding gives a value or a wire error — never a crash, never another error — data
-- encodes and decodes back to itself, and the validator returns a playbook or problems.
local priv = ...
local boundary = require "hrun.boundary"
local dsl = require "hrun.dsl"
local play = require "hrun.play"

local box = boundary.open(priv, play.modules(priv, nil), { memory = 64 << 20 })

-- Is v plain data (no function, no DSL object): then it must survive a round trip.
local function plain(v, depth)
  if type(v) == "function" or (type(v) == "table" and dsl.kind_of(v)) or type(v) == "userdata" then
    return false
  end
  if type(v) == "table" then
    if depth > 150 then
      return false
    end
    for k, x in next, v do
      if not plain(k, depth + 1) or not plain(x, depth + 1) then
        return false
      end
    end
  end
  return true
end

local function same(a, b)
  if type(a) ~= type(b) then
    return false
  elseif type(a) == "number" then
    return (a ~= a and b ~= b) or (a == b and math.type(a) == math.type(b))
  elseif type(a) ~= "table" then
    return a == b
  end
  for k, v in next, a do
    if not same(v, b[k]) then
      return false
    end
  end
  for k in next, b do
    if a[k] == nil then
      return false
    end
  end
  return true
end

return function(data)
  local ok, m = pcall(priv.wire.decode, data, box.tags)
  if not ok then
    assert(type(m) == "string" and (m:find("wire: ", 1, true) or m:find("not enough memory", 1, true)
      or m:find("nested too deep", 1, true)), "decode raised what is not a wire error: " .. tostring(m))
    return
  end
  if plain(m, 0) then
    local text = priv.wire.encode(m)
    assert(not text:find("\n", 1, true), "an encoded message spans lines")
    assert(same(priv.wire.decode(text), m), "a value does not survive a round trip: " .. text)
  end
  if type(m) == "table" and m.t == "loaded" then
    local vok, err = pcall(dsl.validate, m.playbook, priv.nearest, { file = "fuzz", line = 1 }, priv.capability)
    assert(vok, err)
  end
end
