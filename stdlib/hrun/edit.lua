-- hrun.edit: fs.edit (ensure a line or a block between markers, remove them: Ansible's
-- lineinfile and blockinfile) and fs.template (a logic-less Mustache subset), added to an
-- fs module table by install(). Both compute the new content from fs.read and hand it to
-- fs.write, so that journaling, the inverse (the old content back), plans, the
-- sandbox's scopes and same-bytes skipping are fs.write's. In a sandboxed playbook they
-- are installed on the process's fs stubs (hrun.child): the patterns and the template run
-- there, never in the engine, which serves only the fs.read and fs.write they make.

local M = {}

-- Our own errors: raised by the public functions at their caller's line.
local Fail = {}
local function fail(fmt, ...)
  error(setmetatable({ msg = string.format(fmt, ...) }, Fail), 0)
end

-- Without the position an error of a module function starts with ("x.lua:12: ").
local function strip(text)
  return (text:gsub("^[^\n]-:%d+: ", ""))
end

-- nearest(word, list) → a candidate at most two edits away, or nil
local function nearest(word, list)
  local best, best_d
  for _, c in ipairs(list) do
    local m, n = #word, #c
    local prev = {}
    for j = 0, n do
      prev[j] = j
    end
    for i = 1, m do
      local cur = { [0] = i }
      for j = 1, n do
        local cost = word:byte(i) == c:byte(j) and 0 or 1
        cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      end
      prev = cur
    end
    if prev[n] <= 2 and prev[n] < #word and (not best_d or prev[n] < best_d) then
      best, best_d = c, prev[n]
    end
  end
  return best
end

local function check_keys(fname, where, t, allowed)
  local names = {}
  for k in pairs(allowed) do
    names[#names + 1] = k
  end
  table.sort(names)
  for k in pairs(t) do
    if type(k) ~= "string" or not allowed[k] then
      local near = type(k) == "string" and nearest(k, names)
      fail("%s: %sunknown option '%s'%s", fname, where, tostring(k),
        near and string.format(" (did you mean '%s'?)", near) or string.format(" (options: %s)",
          table.concat(names, ", ")))
    end
  end
end

local function check_path(fname, n, path)
  if type(path) ~= "string" then
    fail("bad argument #%d to '%s' (string expected, got %s)", n, fname, type(path))
  elseif path == "" or path:find("\0", 1, true) then
    fail("bad argument #%d to '%s' (a path must be a non-empty string without NUL bytes)", n, fname)
  end
end

-- The mode option, as fs.write takes it (an integer or octal digits).
local function check_mode(fname, mode)
  if mode ~= nil and math.type(mode) ~= "integer" and not (type(mode) == "string" and mode:match("^[0-7]+$")) then
    fail("%s: mode: an integer or a string of octal digits expected, got %s", fname, tostring(mode))
  end
end

-- read(fname, fs, path, missing_ok) → data | false (missing, when missing_ok) | nil, msg,
-- code (a failure of the world that fs.read returned: the REPL's way). A failure that
-- fs.read raised (a playbook's step: failures raise there; a sandbox's refusal) raises,
-- reworded to name fname.
local function read(fname, fs, path, missing_ok, hint)
  local ok, data, msg, code = pcall(fs.read, path)
  if not ok then
    if type(data) ~= "string" then
      error(data, 0) -- the engine's own error objects pass as they are
    end
    local text = strip(data)
    local missing = text:find("No such file or directory$")
    if missing_ok and missing then
      return false
    end
    fail("%s%s", (text:gsub("^fs%.read", fname)), missing and hint or "")
  elseif data == nil then
    if missing_ok and code == "ENOENT" then
      return false
    end
    return nil, (tostring(msg):gsub("^fs%.read", fname)) .. (code == "ENOENT" and hint or ""), code
  end
  return data
end

local function write(fname, fs, path, data, mode, keep)
  local opts = (mode ~= nil or keep ~= nil) and { mode = mode, keep = keep } or nil
  local ok, r, msg, code = pcall(fs.write, path, data, opts)
  if not ok then
    if type(r) ~= "string" then
      error(r, 0)
    end
    fail("%s", (strip(r):gsub("^fs%.write", fname)))
  elseif r == nil then
    return nil, (tostring(msg):gsub("^fs%.write", fname)), code
  end
  return true
end

-- {======================================================
-- fs.edit
-- ======================================================

local DEFAULT_MARKER = "# {mark} MANAGED BY HRUN"
local EDIT_KEYS = { line = true, regexp = true, after = true, before = true, block = true, marker = true,
  absent = true }
local CALL_KEYS = { create = true, mode = true, keep = true }

-- The lines of data: {text, term} with term "\n", "\r\n" or "" (a last line without one).
local function split(data)
  local lines, i = {}, 1
  while i <= #data do
    local j = data:find("\n", i, true)
    if not j then
      lines[#lines + 1] = { text = data:sub(i), term = "" }
      break
    end
    local text, term = data:sub(i, j - 1), "\n"
    if text:sub(-1) == "\r" then
      text, term = text:sub(1, -2), "\r\n"
    end
    lines[#lines + 1] = { text = text, term = term }
    i = j + 1
  end
  return lines
end

local function join(lines)
  local out = {}
  for i, l in ipairs(lines) do
    out[i] = l.text .. l.term
  end
  return table.concat(out)
end

-- Checks one edit's options; returns it normalised (the block's lines, the markers).
local function check_edit(fname, where, e)
  if type(e) ~= "table" then
    fail("%s: %san edit is a table, got %s", fname, where, type(e))
  end
  local allowed = {}
  for k in pairs(EDIT_KEYS) do
    allowed[k] = true
  end
  if where == "" then
    for k in pairs(CALL_KEYS) do
      allowed[k] = true
    end
  elseif e.create ~= nil or e.mode ~= nil then
    fail("%s: %s%s goes beside the list of edits, not in one", fname, where, e.create ~= nil and "create" or "mode")
  end
  check_keys(fname, where, e, allowed)
  local function str(k)
    if e[k] ~= nil and type(e[k]) ~= "string" then
      fail("%s: %s%s: a string expected, got %s", fname, where, k, type(e[k]))
    end
  end
  for _, k in ipairs({ "line", "regexp", "after", "before", "block", "marker" }) do
    str(k)
  end
  if e.absent ~= nil and type(e.absent) ~= "boolean" then
    fail("%s: %sabsent: true or false expected, got %s", fname, where, type(e.absent))
  end
  for _, k in ipairs({ "regexp", "after", "before" }) do
    if e[k] then
      local ok, err = pcall(string.find, "", e[k])
      if not ok then
        fail("%s: %s%s: bad Lua pattern '%s': %s", fname, where, k, e[k], strip(tostring(err)))
      end
    end
  end
  if e.after and e.before then
    fail("%s: %safter and before: give one of them, not both", fname, where)
  end
  if e.absent and (e.after or e.before) then
    fail("%s: %s%s has no use with absent = true", fname, where, e.after and "after" or "before")
  end
  local n = { absent = e.absent or false, after = e.after, before = e.before, who = fname, where = where }
  if e.block ~= nil or e.marker ~= nil then
    if e.line ~= nil or e.regexp ~= nil then
      fail("%s: %s%s: a block edit takes block and marker, not line or regexp", fname, where,
        e.line ~= nil and "line" or "regexp")
    end
    local marker = e.marker or DEFAULT_MARKER
    if not marker:find("{mark}", 1, true) then
      fail("%s: %smarker: '%s' has no {mark} (it becomes BEGIN and END)", fname, where, marker)
    elseif marker:find("[\r\n]") then
      fail("%s: %smarker: one line expected, it has a line break", fname, where)
    end
    n.kind = "block"
    n.begin_marker = (marker:gsub("{mark}", "BEGIN"))
    n.end_marker = (marker:gsub("{mark}", "END"))
    if not n.absent then
      if e.block == nil then
        fail("%s: %sblock: the block's text is needed (or absent = true to remove it)", fname, where)
      end
      local text = e.block:gsub("\r\n", "\n"):gsub("\n$", "")
      n.lines = {}
      if e.block ~= "" then
        for l in (text .. "\n"):gmatch("([^\n]*)\n") do
          n.lines[#n.lines + 1] = l
        end
      end
    end
    return n
  end
  n.kind = "line"
  if e.line ~= nil and e.line:find("[\r\n]") then
    fail("%s: %sline: one line expected, it has a line break (use block for several)", fname, where)
  end
  if n.absent then
    if e.line == nil and e.regexp == nil then
      fail("%s: %sabsent: say which lines with line or regexp", fname, where)
    end
  elseif e.line == nil then
    fail("%s: %sline: the line to ensure is needed%s", fname, where,
      e.regexp and " (or absent = true to remove the lines regexp matches)" or "")
  end
  n.line, n.regexp = e.line, e.regexp
  return n
end

-- Does the line match the edit's pattern e[key]? A pattern whose fault shows only on
-- some subject ("a%" reaches its "%" once an "a" matches) is named as check_edit does.
local function matches(e, key, text)
  local ok, r = pcall(string.find, text, e[key])
  if not ok then
    fail("%s: %s%s: bad Lua pattern '%s': %s", e.who, e.where, key, e[key], strip(tostring(r)))
  end
  return r ~= nil
end

-- Where an anchored insert goes: the index a new line takes.
local function anchor(lines, e)
  if e.after then
    for i = #lines, 1, -1 do
      if matches(e, "after", lines[i].text) then
        return i + 1
      end
    end
  elseif e.before then
    for i = 1, #lines do
      if matches(e, "before", lines[i].text) then
        return i
      end
    end
  end
  return #lines + 1
end

local function insert(lines, at, texts, eol)
  if at == #lines + 1 and at > 1 and lines[at - 1].term == "" then
    lines[at - 1].term = eol -- the old last line had no final newline
  end
  for k, t in ipairs(texts) do
    table.insert(lines, at + k - 1, { text = t, term = eol })
  end
end

local function apply_line(lines, e, eol)
  if e.absent then
    local kept = {}
    for _, l in ipairs(lines) do
      if not (e.regexp and matches(e, "regexp", l.text) or not e.regexp and l.text == e.line) then
        kept[#kept + 1] = l
      end
    end
    table.move(kept, 1, #kept, 1, lines)
    for i = #lines, #kept + 1, -1 do
      lines[i] = nil
    end
    return
  end
  if e.regexp then
    for i = #lines, 1, -1 do
      if matches(e, "regexp", lines[i].text) then
        lines[i].text = e.line
        return
      end
    end
  end
  for _, l in ipairs(lines) do
    if l.text == e.line then
      return -- already there
    end
  end
  insert(lines, anchor(lines, e), { e.line }, eol)
end

local function apply_block(fname, path, lines, e, eol)
  local b, en
  for i, l in ipairs(lines) do
    if not b and l.text == e.begin_marker then
      b = i
    elseif l.text == e.end_marker then
      if not b then
        fail("%s: %s:%d: the end marker '%s' comes without its begin marker '%s' before it", fname, path, i,
          e.end_marker, e.begin_marker)
      end
      en = i
      break
    end
  end
  if b and not en then
    fail("%s: %s:%d: the begin marker '%s' has no end marker '%s' after it", fname, path, b, e.begin_marker,
      e.end_marker)
  end
  if e.absent then
    for i = en or 0, b or 1, -1 do
      table.remove(lines, i)
    end
    return
  end
  if b then
    for i = en - 1, b + 1, -1 do
      table.remove(lines, i)
    end
    insert(lines, b + 1, e.lines, eol)
    return
  end
  local texts = { e.begin_marker }
  for _, t in ipairs(e.lines) do
    texts[#texts + 1] = t
  end
  texts[#texts + 1] = e.end_marker
  insert(lines, anchor(lines, e), texts, eol)
end

local function edit(fs, path, spec)
  local fname = "fs.edit"
  check_path(fname, 1, path)
  if type(spec) ~= "table" then
    fail("bad argument #2 to 'fs.edit' (a table of options, or a list of them, expected, got %s)", type(spec))
  end
  local edits, opts = {}, {}
  local who = fname .. ": " .. path -- option errors name the file too
  if spec[1] ~= nil then
    for k, v in pairs(spec) do
      if math.type(k) == "integer" and k >= 1 and k <= #spec then
        edits[k] = check_edit(who, string.format("edit %d: ", k), v)
      else
        check_keys(who, "", { [k] = v }, CALL_KEYS)
        opts[k] = v
      end
    end
  else
    edits[1] = check_edit(who, "", spec)
    opts.create, opts.mode, opts.keep = spec.create, spec.mode, spec.keep
  end
  if opts.create ~= nil and type(opts.create) ~= "boolean" then
    fail("%s: create: true or false expected, got %s", who, type(opts.create))
  end
  check_mode(who, opts.mode)
  local old, msg, code = read(fname, fs, path, opts.create, " (create = true makes it)")
  if old == nil then
    return nil, msg, code
  end
  local lines = split(old or "")
  local eol = "\n"
  for _, l in ipairs(lines) do
    if l.term ~= "" then
      eol = l.term
      break
    end
  end
  for _, e in ipairs(edits) do
    if e.kind == "block" then
      apply_block(fname, path, lines, e, eol)
    else
      apply_line(lines, e, eol)
    end
  end
  local new = join(lines)
  if not old and new == "" then
    return { path = path, changed = false }
  end
  -- the same bytes go to fs.write too: in a run it finds them already so (nothing written,
  -- nothing journaled); in a plan it knows whether an earlier planned write changes them
  local ok, werr, wcode = write(fname, fs, path, new, opts.mode, opts.keep)
  if not ok then
    return nil, werr, wcode
  end
  return { path = path, changed = new ~= old }
end

-- }======================================================

-- {======================================================
-- fs.template: {{name}}, {{a.b}}, {{#s}}…{{/s}}, {{^s}}…{{/s}}, {{! c}}, {{{x}}}, {{&x}}
-- ======================================================

-- parse(text, src) → the tree: strings, {var = name, line}, {section = name, inverted,
-- line, body}. A tag of a section or a comment alone on its line takes the line with it.
local function parse(text, src)
  local root = { body = {} }
  local stack = { root }
  local pos, line, scanned = 1, 1, 1
  local function line_at(p) -- the line of position p (p never goes back)
    local _, n = text:sub(scanned, p - 1):gsub("\n", "")
    line, scanned = line + n, math.max(scanned, p)
    return line
  end
  while true do
    local s = text:find("{{", pos, true)
    local top = stack[#stack]
    if not s then
      top.body[#top.body + 1] = text:sub(pos)
      break
    end
    local tl = line_at(s)
    local triple = text:sub(s + 2, s + 2) == "{"
    local close = triple and "}}}" or "}}"
    local inner_from = s + (triple and 3 or 2)
    local e = text:find(close, inner_from, true)
    if not e then
      fail("fs.template: %s:%d: '%s' without '%s'", src, tl, text:sub(s, inner_from - 1), close)
    end
    local inner = text:sub(inner_from, e - 1)
    local after = e + #close
    local kind = triple and "&" or inner:match("^%s*([!#^/&>=]?)")
    local name = (triple and inner or inner:gsub("^%s*[!#^/&>=]?", "")):match("^%s*(.-)%s*$")
    local bad_name = not name:match("^[%w_%-%.]+$") or name:find("%.%.") or name:find("^%.") or name:find("%.$")
    if kind == ">" then
      fail("fs.template: %s:%d: partials ({{>%s}}) are not supported", src, tl, name)
    elseif kind == "=" then
      fail("fs.template: %s:%d: changing the delimiters ({{=…=}}) is not supported", src, tl)
    elseif kind ~= "!" and bad_name and name ~= "." then
      fail("fs.template: %s:%d: '%s' is not a name (letters, digits, _, - and dots)", src, tl,
        text:sub(s, after - 1))
    end
    -- standalone: a section's or comment's tag alone on its line goes with the line
    local text_end = s - 1
    if kind == "!" or kind == "#" or kind == "^" or kind == "/" then
      local ls = s
      while ls > 1 and text:sub(ls - 1, ls - 1) ~= "\n" do
        ls = ls - 1
      end
      local _, nl = text:find("^[ \t]*\r?\n", after)
      local at_end = text:find("^[ \t]*$", after)
      if ls >= pos and text:sub(ls, s - 1):match("^[ \t]*$") and (nl or at_end) then
        text_end, after = ls - 1, nl and nl + 1 or #text + 1
      end
    end
    if text_end >= pos then
      top.body[#top.body + 1] = text:sub(pos, text_end)
    end
    if kind == "#" or kind == "^" then
      local node = { section = name, inverted = kind == "^", line = tl, body = {} }
      top.body[#top.body + 1] = node
      stack[#stack + 1] = node
    elseif kind == "/" then
      if top == root then
        fail("fs.template: %s:%d: {{/%s}} closes no section", src, tl, name)
      elseif top.section ~= name then
        fail("fs.template: %s:%d: {{/%s}} closes the section '%s' opened at line %d", src, tl, name,
          top.section, top.line)
      end
      stack[#stack] = nil
    elseif kind ~= "!" then
      top.body[#top.body + 1] = { var = name, line = tl }
    end
    line_at(after)
    pos = after
  end
  if #stack > 1 then
    local open = stack[#stack]
    fail("fs.template: %s:%d: the section '%s' is not closed ({{/%s}})", src, open.line, open.section,
      open.section)
  end
  return root.body
end

local function is_list(v)
  return type(v) == "table" and (v[1] ~= nil or next(v) == nil)
end

-- The value of name in the context stack (innermost first); a missing one is an error.
-- k: {null = json.null, is_secret = fn}.
local function lookup(stack, name, src, line, k)
  if name == "." then
    return stack[#stack]
  end
  local first, rest = name:match("^([^%.]+)(.*)$")
  local v
  for i = #stack, 1, -1 do
    local c = stack[i]
    if type(c) == "table" and not k.is_secret(c) and not is_list(c) and c[first] ~= nil then
      v = c[first]
      break
    end
  end
  if v == nil then
    fail("fs.template: %s:%d: no variable '%s' in the vars given", src, line, first)
  end
  local path = first
  for part in rest:gmatch("%.([^%.]+)") do
    if type(v) ~= "table" or k.is_secret(v) then
      fail("fs.template: %s:%d: '%s' is %s, it has no field '%s'", src, line, path,
        k.is_secret(v) and "a secret" or v == k.null and "null" or "a " .. type(v), part)
    end
    v, path = v[part], path .. "." .. part
    if v == nil then
      fail("fs.template: %s:%d: no variable '%s' in the vars given", src, line, path)
    end
  end
  return v
end

local function render(nodes, stack, out, src, k)
  for _, n in ipairs(nodes) do
    if type(n) == "string" then
      out[#out + 1] = n
    elseif n.var then
      local v = lookup(stack, n.var, src, n.line, k)
      local t = type(v)
      if t == "string" or k.is_secret(v) then
        out[#out + 1] = v
      elseif t == "number" or t == "boolean" then
        out[#out + 1] = tostring(v)
      else
        fail("fs.template: %s:%d: '%s' is %s, not a string, number or boolean%s", src, n.line, n.var,
          v == k.null and "null" or "a " .. t, t == "table" and " (a table goes in a section: {{#" .. n.var ..
          "}}…{{/" .. n.var .. "}})" or "")
      end
    else
      local v = lookup(stack, n.section, src, n.line, k)
      if k.is_secret(v) then
        fail("fs.template: %s:%d: '%s' is a secret: it can be a value ({{%s}}), not a section", src, n.line,
          n.section, n.section)
      end
      local falsy = v == false or v == k.null or (type(v) == "table" and next(v) == nil)
      if n.inverted then
        if falsy then
          render(n.body, stack, out, src, k)
        end
      elseif not falsy then
        if v == true then
          render(n.body, stack, out, src, k)
        elseif is_list(v) then
          for _, item in ipairs(v) do
            stack[#stack + 1] = item
            render(n.body, stack, out, src, k)
            stack[#stack] = nil
          end
        else
          stack[#stack + 1] = v
          render(n.body, stack, out, src, k)
          stack[#stack] = nil
        end
      end
    end
  end
end

local function no_secret()
  return false
end

-- render(text, vars, src [, k]) → the text, or a secret when a value was one (its bytes
-- stay unread: joined as secrets join)
function M.render(text, vars, src, k)
  k = k or { is_secret = no_secret }
  local tree = parse(text, src or "template")
  local out = {}
  render(tree, { vars }, out, src or "template", k)
  local acc, run = nil, {}
  for _, part in ipairs(out) do
    if type(part) == "string" then
      run[#run + 1] = part
    else
      acc = (acc == nil and "" or acc) .. table.concat(run) .. part
      run = {}
    end
  end
  if acc == nil then
    return table.concat(run)
  end
  return #run > 0 and acc .. table.concat(run) or acc
end

local function template(fs, src, dst, vars, opts, k)
  local fname = "fs.template"
  check_path(fname, 1, src)
  check_path(fname, 2, dst)
  if type(vars) ~= "table" then
    fail("bad argument #3 to 'fs.template' (a table of variables expected, got %s)", type(vars))
  end
  if opts ~= nil and type(opts) ~= "table" then
    fail("bad argument #4 to 'fs.template' (a table of options expected, got %s)", type(opts))
  end
  opts = opts or {}
  check_keys(fname, "", opts, { mode = true, keep = true })
  check_mode(fname, opts.mode)
  local text, msg, code = read(fname, fs, src)
  if text == nil then
    return nil, msg, code
  end
  local new = M.render(text, vars, src, k)
  local changed = true
  if not k.is_secret(new) then -- a secret's bytes are fs.write's to compare
    local old, omsg, ocode = read(fname, fs, dst, true)
    if old == nil then
      return nil, omsg, ocode
    end
    changed = old ~= new
  end
  -- the same bytes go to fs.write too (see fs.edit)
  local ok, werr, wcode = write(fname, fs, dst, new, opts.mode, opts.keep)
  if not ok then
    return nil, werr, wcode
  end
  return { path = dst, changed = changed }
end

-- }======================================================

-- The public functions raise our errors at their caller's line; others pass as they are.
local function public(impl)
  return function(...)
    local r = table.pack(pcall(impl, ...))
    if r[1] then
      return table.unpack(r, 2, r.n)
    end
    local e = r[2]
    if type(e) == "table" and getmetatable(e) == Fail then
      error(e.msg, 2)
    end
    error(e, 0)
  end
end

-- The capability each needs (hrun check's lint): fs's, for the files it reads and writes.
M.capabilities = { ["fs.edit"] = "fs", ["fs.template"] = "fs" }

-- The functions install() made, to be told from the module's own (the sandbox's engine
-- side serves none of them: they run in the playbook's process).
M.derived = setmetatable({}, { __mode = "k" })

-- install(fs [, k]) adds edit and template to the fs module table fs, on its read and
-- write. k.null: json.null (false in a section); k.is_secret(v): is v a secret (rendered
-- without being read).
function M.install(fs, k)
  k = { null = k and k.null, is_secret = k and k.is_secret or no_secret }
  fs.edit = public(function(path, spec)
    return edit(fs, path, spec)
  end)
  fs.template = public(function(src, dst, vars, opts)
    return template(fs, src, dst, vars, opts, k)
  end)
  M.derived[fs.edit], M.derived[fs.template] = true, true
  return fs
end

return M
