-- hrun.pretty: values as a person reads them — strings quoted with their escapes,
-- tables nested and indented, cycles marked, deep or long tables cut short.

local M = {}

local keywords = {}
for kw in ([[and break do else elseif end false for function goto if in local nil not
  or repeat return then true until while]]):gmatch("%a+") do
  keywords[kw] = true
end

local escapes = {
  ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r", ["\\"] = "\\\\", ['"'] = '\\"',
  ["\a"] = "\\a", ["\b"] = "\\b", ["\f"] = "\\f", ["\v"] = "\\v",
}

-- A string in double quotes: valid UTF-8 as it is, other bytes and controls escaped.
function M.quote(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    local ch = s:sub(i, i)
    if escapes[ch] then
      out[#out + 1] = escapes[ch]
      i = i + 1
    elseif c < 0x20 or c == 0x7f then
      out[#out + 1] = string.format("\\x%02x", c)
      i = i + 1
    elseif c < 0x80 then
      out[#out + 1] = ch
      i = i + 1
    else
      -- a whole UTF-8 sequence, or one escaped byte
      local len = c >= 0xf0 and 4 or c >= 0xe0 and 3 or c >= 0xc2 and 2 or 0
      local seq = len > 0 and s:sub(i, i + len - 1) or ""
      if len > 0 and #seq == len and utf8.len(seq) == 1 then
        out[#out + 1] = seq
        i = i + len
      else
        out[#out + 1] = string.format("\\x%02x", c)
        i = i + 1
      end
    end
  end
  return '"' .. table.concat(out) .. '"'
end

-- s with every byte that is not part of valid UTF-8 written as the text \xNN, so it
-- can go where only UTF-8 may (JSON events, terminals).
function M.utf8(s)
  local out, i = {}, 1
  while true do
    local _, bad = utf8.len(s, i)
    if not bad then
      out[#out + 1] = s:sub(i)
      return table.concat(out)
    end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = string.format("\\x%02x", s:byte(bad))
    i = bad + 1
  end
end

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") and not keywords[k]
end

local type_order = { number = 1, string = 2, boolean = 3 }

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    return (type_order[ta] or 9) < (type_order[tb] or 9)
  end
  if ta == "number" or ta == "string" then
    return a < b
  end
  return tostring(a) < tostring(b)
end

local function scalar(v, null)
  local t = type(v)
  if t == "string" then
    return M.quote(v)
  elseif t == "number" then
    return math.type(v) == "integer" and string.format("%d", v) or string.format("%.17g", v)
  elseif null ~= nil and rawequal(v, null) then
    return "json.null"
  end
  return tostring(v)
end

-- M.format(value [, {depth = 5, items = 200, width = 80, indent = ""}]) → string
function M.format(value, opts)
  opts = opts or {}
  local max_depth = opts.depth or 5
  local max_items = opts.items or 200
  local width = opts.width or 80
  local null = package.loaded["hrun.json"] and package.loaded["hrun.json"].null
  local path = {}

  local function render(v, depth, indent)
    if type(v) ~= "table" then
      return scalar(v, null)
    end
    if path[v] then
      return "<cycle>"
    end
    if depth >= max_depth then
      return next(v) == nil and "{}" or "{…}"
    end
    local mt = getmetatable(v)
    if type(mt) == "table" and rawget(mt, "__tostring") then
      return tostring(v)
    end
    path[v] = true
    local parts, n = {}, #v
    for i = 1, math.min(n, max_items) do
      parts[#parts + 1] = render(v[i], depth + 1, indent .. "  ")
    end
    local keys = {}
    for k in pairs(v) do
      if not (math.type(k) == "integer" and k >= 1 and k <= n) then
        keys[#keys + 1] = k
      end
    end
    table.sort(keys, key_less)
    for _, k in ipairs(keys) do
      if #parts >= max_items then
        break
      end
      local ks = is_identifier(k) and k or "[" .. render(k, max_depth, "") .. "]"
      parts[#parts + 1] = ks .. " = " .. render(v[k], depth + 1, indent .. "  ")
    end
    local total = n + #keys
    if total > #parts then
      parts[#parts + 1] = string.format("… (%d more)", total - #parts)
    end
    path[v] = nil
    if #parts == 0 then
      return "{}"
    end
    local line = "{ " .. table.concat(parts, ", ") .. " }"
    if #line + #indent <= width and not line:find("\n", 1, true) then
      return line
    end
    local inner = indent .. "  "
    return "{\n" .. inner .. table.concat(parts, ",\n" .. inner) .. "\n" .. indent .. "}"
  end

  return render(value, 0, opts.indent or "")
end

return M
