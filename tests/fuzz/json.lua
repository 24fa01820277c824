-- Fuzz driver: json.decode returns a value or nil and a message, never raises; a value
-- it decodes encodes, and decodes again to the same value.
local json = require "hrun.json"

local function same(a, b)
  if type(a) ~= type(b) then
    return false
  elseif type(a) ~= "table" then
    return a == b or (a ~= a and b ~= b)
  end
  for k, v in pairs(a) do
    if not same(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

return function(data)
  local ok, v, err = pcall(json.decode, data)
  assert(ok, v)
  if v == nil then
    assert(type(err) == "string", "json.decode: no value and no message")
    return
  end
  local text = json.encode(v)
  local again, why = json.decode(text)
  assert(again ~= nil, why)
  assert(same(v, again), "json: a round trip changed the value: " .. text)
end
