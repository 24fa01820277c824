-- fs.edit and fs.template on real files: every form, idempotence, errors that name the
-- option and the path and write nothing; in playbooks: rollback, plan, --sandbox, check.

local function file(d, name, data, mode)
  local p = d .. "/" .. name
  fs.write(p, data, mode and { mode = mode } or nil)
  return p
end

-- edits(data, spec) → the bytes fs.edit leaves in a file that held data, and its result
local function edited(data, spec)
  local p = file(tmpdir(), "f.conf", data)
  local r = assert(fs.edit(p, spec))
  return fs.read(p), r
end

describe("fs.edit: lines", function()
  it("ensures a line: replaces the last match of regexp, else inserts it, else leaves it", function()
    local out, r = edited("a=1\nport=80\nb=2\nport=81\n", { line = "port=8080", regexp = "^port=" })
    eq(out, "a=1\nport=80\nb=2\nport=8080\n")
    eq(r.changed, true)
    -- no match: at the end; a missing final newline is added before it
    eq(edited("a=1\nb=2", { line = "c=3", regexp = "^c=" }), "a=1\nb=2\nc=3\n")
    eq(edited("", { line = "c=3" }), "c=3\n")
    -- after the last line matching after, before the first matching before
    eq(edited("[a]\nx=1\n[b]\nx=2\n[c]\n", { line = "y=1", after = "^x=" }), "[a]\nx=1\n[b]\nx=2\ny=1\n[c]\n")
    eq(edited("[a]\nx=1\n[b]\nx=2\n", { line = "y=1", before = "^%[" }), "y=1\n[a]\nx=1\n[b]\nx=2\n")
    -- an anchor that matches nothing: at the end
    eq(edited("a\n", { line = "b", after = "^zzz" }), "a\nb\n")
    -- already present (exactly, when regexp matches nothing): unchanged
    local same
    same, r = edited("a=1\nport=80\n", { line = "port=80" })
    eq(same, "a=1\nport=80\n")
    eq(r.changed, false)
    eq(r.path:match("[^/]+$"), "f.conf")
    eq(edited("a=1\nport=80\n", { line = "port=80", regexp = "^nomatch" }), "a=1\nport=80\n")
  end)

  it("keeps CRLF line endings, and gives new lines the file's", function()
    eq(edited("a=1\r\nport=80\r\n", { line = "port=1", regexp = "^port" }), "a=1\r\nport=1\r\n")
    eq(edited("a=1\r\nb=2", { line = "c=3" }), "a=1\r\nb=2\r\nc=3\r\n")
  end)

  it("removes every line matching regexp, or equal to line, with absent", function()
    eq(edited("a\n#x\nb\n#y\n", { regexp = "^#", absent = true }), "a\nb\n")
    eq(edited("a\nb\na\n", { line = "a", absent = true }), "b\n")
    local out, r = edited("a\nb\n", { line = "c", absent = true })
    eq(out, "a\nb\n")
    eq(r.changed, false)
  end)
end)

describe("fs.edit: blocks", function()
  it("inserts a block between markers, replaces its content, removes it", function()
    local d = tmpdir()
    local p = file(d, "f", "a\nb\n")
    ok(fs.edit(p, { block = "x=1\ny=2\n" }).changed)
    eq(fs.read(p), "a\nb\n# BEGIN MANAGED BY HRUN\nx=1\ny=2\n# END MANAGED BY HRUN\n")
    ok(fs.edit(p, { block = "z=3" }).changed)
    eq(fs.read(p), "a\nb\n# BEGIN MANAGED BY HRUN\nz=3\n# END MANAGED BY HRUN\n")
    eq(fs.edit(p, { block = "z=3" }).changed, false)
    ok(fs.edit(p, { absent = true, marker = "# {mark} MANAGED BY HRUN" }).changed)
    eq(fs.read(p), "a\nb\n")
    -- after an anchor, with a marker of its own (two blocks live side by side)
    fs.edit(p, { block = "k", after = "^a$", marker = "; {mark} one" })
    fs.edit(p, { block = "m", before = "^a$", marker = "; {mark} two" })
    eq(fs.read(p), "; BEGIN two\nm\n; END two\na\n; BEGIN one\nk\n; END one\nb\n")
    ok(fs.edit(p, { block = "", absent = true, marker = "; {mark} one" }).changed)
    eq(fs.read(p), "; BEGIN two\nm\n; END two\na\nb\n")
  end)

  it("refuses a begin marker without its end, and writes nothing", function()
    local d = tmpdir()
    local p = file(d, "f", "a\n# BEGIN MANAGED BY HRUN\nb\n")
    checkerr(p .. ":2: the begin marker '# BEGIN MANAGED BY HRUN' has no end marker", fs.edit, p, { block = "x" })
    p = file(d, "g", "a\n# END MANAGED BY HRUN\n")
    checkerr(p .. ":2: the end marker", fs.edit, p, { block = "x" })
    eq(fs.read(d .. "/f"), "a\n# BEGIN MANAGED BY HRUN\nb\n")
  end)
end)

describe("fs.edit: calls", function()
  it("applies a list of edits in order, in one write", function()
    local out, r = edited("port=80\n", { { line = "port=81", regexp = "^port=" }, { line = "host=h", before = "^port" },
      { block = "x" }, { line = "port=81", absent = true } })
    eq(out, "host=h\n# BEGIN MANAGED BY HRUN\nx\n# END MANAGED BY HRUN\n")
    ok(r.changed)
  end)

  it("makes a missing file with create (and mode), else fails naming the path", function()
    local d = tmpdir()
    local p = d .. "/new.conf"
    fails("ENOENT", p .. ": No such file or directory (create = true makes it)", fs.edit, p, { line = "a" })
    eq(fs.exists(p), false)
    -- nothing to add: still not made
    eq(fs.edit(p, { line = "a", absent = true, create = true }).changed, false)
    eq(fs.exists(p), false)
    ok(fs.edit(p, { { line = "a" }, { block = "b" }, create = true, mode = "0600" }).changed)
    eq(fs.read(p), "a\n# BEGIN MANAGED BY HRUN\nb\n# END MANAGED BY HRUN\n")
    eq(fs.stat(p).mode, tonumber("600", 8))
  end)

  it("keeps the file's mode, and leaves bytes and mtime alone the second time", function()
    local d = tmpdir()
    local p = file(d, "f", "a\n", "0640")
    local spec = { { line = "b=2", regexp = "^b=" }, { block = "c" } }
    ok(fs.edit(p, spec).changed)
    local bytes, st = fs.read(p), fs.stat(p)
    eq(st.mode, tonumber("640", 8))
    eq(fs.edit(p, spec).changed, false)
    eq(fs.read(p), bytes)
    eq(fs.stat(p).mtime_ns, st.mtime_ns)
  end)

  it("refuses bad options naming the option and the path, and writes nothing", function()
    local d = tmpdir()
    local p = file(d, "f", "a\n")
    local cases = {
      { { line = "x", rgexp = "a" }, p .. ": unknown option 'rgexp' (did you mean 'regexp'?)" },
      { { line = "x\ny" }, p .. ": line: one line expected, it has a line break (use block for several)" },
      { { line = "x", after = "a", before = "b" }, p .. ": after and before: give one of them, not both" },
      { { line = "x", regexp = "[a" }, p .. ": regexp: bad Lua pattern '[a': malformed pattern" },
      { { line = "x", after = "%" }, p .. ": after: bad Lua pattern '%'" },
      { { regexp = "a" }, p .. ": line: the line to ensure is needed (or absent = true" },
      { { line = 3 }, p .. ": line: a string expected, got number" },
      { { block = "x", marker = "# managed" }, p .. ": marker: '# managed' has no {mark}" },
      { { block = "x", line = "y" }, p .. ": line: a block edit takes block and marker" },
      { { absent = true }, p .. ": absent: say which lines with line or regexp" },
      { { { line = "x" }, { line = "y", create = true } }, p .. ": edit 2: create goes beside the list of edits" },
      { { { line = "x" }, { lin = "y" } }, p .. ": edit 2: unknown option 'lin' (did you mean 'line'?)" },
      { { line = "x", create = "yes" }, p .. ": create: true or false expected" },
      { { line = "x", mode = "rw" }, p .. ": mode: an integer or a string of octal digits" },
    }
    for _, c in ipairs(cases) do
      checkerr(c[2], fs.edit, p, c[1])
    end
    -- a fault the pattern shows only on a line that reaches it
    checkerr(p .. ": edit 2: after: bad Lua pattern 'a%': malformed pattern (ends with '%')", fs.edit, p,
      { { line = "x" }, { line = "y", after = "a%" } })
    checkerr("bad argument #2 to 'fs.edit'", fs.edit, p, "line")
    checkerr("bad argument #1 to 'fs.edit' (string expected, got number)", fs.edit, 3, { line = "x" })
    eq(fs.read(p), "a\n")
  end)
end)

describe("fs.template", function()
  local function render(src, vars)
    local d = tmpdir()
    local t = file(d, "t.tpl", src)
    local r = assert(fs.template(t, d .. "/out", vars))
    return fs.read(d .. "/out"), r, t
  end

  it("renders names, dotted names, sections, inverted sections and comments", function()
    local out = render(table.concat({
      "{{! a comment, with its line }}",
      "listen {{host}}:{{port}} tls={{tls}} ratio={{r}}",
      "db {{db.name}}@{{db.host}} {{{raw}}} {{&raw}}",
      "{{#upstreams}}",
      "  server {{name}} {{weight}};",
      "{{/upstreams}}",
      "{{#names}}[{{.}}]{{/names}}",
      "{{#db}}user={{user}}{{/db}}",
      "{{#tls}}",
      "ssl on;",
      "{{/tls}}",
      "{{^debug}}",
      "quiet;",
      "{{/debug}}",
      "{{^none}}no upstreams{{/none}}",
      "{{#null}}never{{/null}}{{^null}}null is false{{/null}}",
      "",
    }, "\n"), { host = "0.0.0.0", port = 8080, tls = true, r = 0.5, raw = "<a&b>", debug = false, none = {},
      null = json.null, db = { name = "app", host = "db1", user = "u" }, names = { "x", "y" },
      upstreams = { { name = "a", weight = 1 }, { name = "b", weight = 2 } } })
    eq(out, table.concat({
      "listen 0.0.0.0:8080 tls=true ratio=0.5",
      "db app@db1 <a&b> <a&b>",
      "  server a 1;",
      "  server b 2;",
      "[x][y]",
      "user=u",
      "ssl on;",
      "quiet;",
      "no upstreams",
      "null is false",
      "",
    }, "\n"))
  end)

  it("fails naming the template's line: a missing variable, an unclosed section, a table", function()
    local d = tmpdir()
    local t = file(d, "t.tpl", "a\nport={{port}}\n{{#s}}{{x.y}}{{/s}}\n")
    checkerr(t .. ":2: no variable 'port' in the vars given", fs.template, t, d .. "/out", {})
    checkerr(t .. ":3: no variable 'x.y' in the vars given", fs.template, t, d .. "/out",
      { port = 1, s = true, x = { z = 1 } })
    checkerr(t .. ":3: no variable 's'", fs.template, t, d .. "/out", { port = 1 })
    checkerr(t .. ":2: 'port' is a table, not a string, number or boolean", fs.template, t, d .. "/out",
      { port = { 1 } })
    checkerr(t .. ":2: 'port' is null, not a string, number or boolean", fs.template, t, d .. "/out",
      { port = json.null })
    t = file(d, "u.tpl", "x\n{{#list}}\n{{.}}\n")
    checkerr(t .. ":2: the section 'list' is not closed ({{/list}})", fs.template, t, d .. "/out", { list = {} })
    t = file(d, "v.tpl", "{{#a}}\n{{/b}}\n")
    checkerr(t .. ":2: {{/b}} closes the section 'a' opened at line 1", fs.template, t, d .. "/out", { a = true })
    t = file(d, "w.tpl", "x {{y\n")
    checkerr(t .. ":1: '{{' without '}}'", fs.template, t, d .. "/out", {})
    t = file(d, "p.tpl", "{{> part}}\n")
    checkerr(t .. ":1: partials ({{>part}}) are not supported", fs.template, t, d .. "/out", {})
    eq(fs.exists(d .. "/out"), false)
    fails("ENOENT", "fs.template: " .. d .. "/none.tpl: No such file or directory", fs.template, d .. "/none.tpl",
      d .. "/out", {})
  end)

  it("writes with the destination's mode or opts.mode, and not at all when the same", function()
    local d = tmpdir()
    local t = file(d, "t.tpl", "v={{v}}\n")
    local dst = file(d, "out", "old\n", "0640")
    ok(fs.template(t, dst, { v = 1 }).changed)
    eq(fs.read(dst), "v=1\n")
    eq(fs.stat(dst).mode, tonumber("640", 8))
    local st = fs.stat(dst)
    eq(fs.template(t, dst, { v = 1 }).changed, false)
    eq(fs.stat(dst).mtime_ns, st.mtime_ns)
    ok(fs.template(t, d .. "/new", { v = 2 }, { mode = "0600" }).changed)
    eq(fs.stat(d .. "/new").mode, tonumber("600", 8))
    checkerr("fs.template: unknown option 'mdoe' (did you mean 'mode'?)", fs.template, t, dst, { v = 1 }, { mdoe = 1 })
  end)
end)

-- A playbook editing d/app.conf and rendering d/site.conf from d/site.tpl, then failing
-- if asked: the steps' source is the same trusted and sandboxed.
local STEPS = [[
    step "edit" { run = function(ctx)
      local r = fs.edit(ctx.params.dir .. "/app.conf", {
        { line = "port=" .. ctx.params.port, regexp = "^port=" },
        { block = "extra=1", after = "^%[main%]" },
      })
      ctx.state.changed = r.changed
    end },
    step "render" { run = function(ctx)
      fs.template(ctx.params.dir .. "/site.tpl", ctx.params.dir .. "/site.conf",
        { port = ctx.params.port, names = { "a", "b" } })
    end },
    step "last" { run = function(ctx)
      if ctx.params.fail then error("failing as asked") end
    end },
]]

local function fixture(d)
  file(d, "app.conf", "[main]\nport=80\nname=x\n", "0640")
  file(d, "site.tpl", "listen {{port}}\n{{#names}}\nserver {{.}}\n{{/names}}\n")
  return sandboxed_playbook(d, { caps = { "fs:" .. d }, name = "edits", steps = STEPS,
    params = 'dir = "", port = "8080", fail = false' })
end

local function run(args)
  return hrun_cmd(args)
end

describe("fs.edit and fs.template in playbooks", function()
  for _, mode in ipairs({ "trusted", "sandboxed" }) do
    local extra = mode == "sandboxed" and { "--sandbox" } or {}
    local function play(args)
      for _, a in ipairs(extra) do
        args[#args + 1] = a
      end
      return run(args)
    end

    it("edits and renders, changes nothing the second time, and rolls back to the old bytes (" .. mode .. ")",
      function()
        local d = tmpdir()
        local p = fixture(d)
        local r = play({ p, "--state", d .. "/state", "-p", "dir=" .. d })
        eq(r.code, 0, r.stdout .. r.stderr)
        eq(fs.read(d .. "/app.conf"), "[main]\n# BEGIN MANAGED BY HRUN\nextra=1\n# END MANAGED BY HRUN\nport=8080\n" ..
          "name=x\n")
        eq(fs.stat(d .. "/app.conf").mode, tonumber("640", 8))
        eq(fs.read(d .. "/site.conf"), "listen 8080\nserver a\nserver b\n")
        local bytes, st = fs.read(d .. "/app.conf"), fs.stat(d .. "/app.conf")
        r = play({ p, "--state", d .. "/state", "-p", "dir=" .. d })
        eq(r.code, 0, r.stdout .. r.stderr)
        eq(fs.read(d .. "/app.conf"), bytes)
        eq(fs.stat(d .. "/app.conf").mtime_ns, st.mtime_ns)
        -- a later step fails: both files as they were before this run
        r = play({ p, "--state", d .. "/state", "-p", "dir=" .. d, "-p", "port=9090", "-p", "fail=true" })
        eq(r.code, 1, r.stdout .. r.stderr)
        eq(fs.read(d .. "/app.conf"), bytes)
        eq(fs.read(d .. "/site.conf"), "listen 8080\nserver a\nserver b\n")
        -- and from the start: the first run rolled back leaves the tree as it was
        local d2 = tmpdir()
        p = fixture(d2)
        local before = tree(d2)
        r = play({ p, "--state", d2 .. "/state", "-p", "dir=" .. d2, "-p", "fail=true" })
        eq(r.code, 1, r.stdout .. r.stderr)
        local after = tree(d2)
        after["state"] = nil
        for k in pairs(after) do
          if k:match("^state/") then
            after[k] = nil
          end
        end
        eq(after, before)
      end)

    it("plans the writes and changes nothing (" .. mode .. ")", function()
      local d = tmpdir()
      local p = fixture(d)
      local before = tree(d)
      local r = play({ "plan", p, "--state", d .. "/state", "-p", "dir=" .. d })
      eq(r.code, 0, r.stdout .. r.stderr)
      has(r.stdout, "would fs.write " .. d .. "/app.conf")
      has(r.stdout, "would fs.write " .. d .. "/site.conf")
      eq(tree(d), before)
    end)

    it("fails with the playbook's line and writes nothing on a bad option or template (" .. mode .. ")", function()
      local d = tmpdir()
      file(d, "app.conf", "a\n")
      file(d, "t.tpl", "x={{x}}\n")
      local p = sandboxed_playbook(d, { caps = { "fs:" .. d }, name = "bad", params = 'dir = "", what = ""',
        steps = [[
    step "s" { run = function(ctx)
      if ctx.params.what == "edit" then
        fs.edit(ctx.params.dir .. "/app.conf", { line = "b", befor = "^a" })
      elseif ctx.params.what == "missing" then
        fs.edit(ctx.params.dir .. "/none.conf", { line = "b" })
      else
        fs.template(ctx.params.dir .. "/t.tpl", ctx.params.dir .. "/out", {})
      end
    end },]] })
      local r = play({ p, "--state", d .. "/state", "-p", "dir=" .. d, "-p", "what=edit" })
      eq(r.code, 1)
      has(r.stderr .. r.stdout, p .. ":7: fs.edit: " .. d .. "/app.conf: unknown option 'befor' (did you mean " ..
        "'before'?)")
      r = play({ p, "--state", d .. "/state", "-p", "dir=" .. d, "-p", "what=template" })
      eq(r.code, 1)
      has(r.stderr .. r.stdout, p .. ":11: fs.template: " .. d .. "/t.tpl:1: no variable 'x' in the vars given")
      r = play({ p, "--state", d .. "/state", "-p", "dir=" .. d, "-p", "what=missing" })
      eq(r.code, 1)
      has(r.stderr .. r.stdout, p .. ":9: fs.edit: " .. d .. "/none.conf: No such file or directory (create = " ..
        "true makes it)")
      eq(fs.exists(d .. "/none.conf"), false)
      eq(fs.read(d .. "/app.conf"), "a\n")
      eq(fs.exists(d .. "/out"), false)
    end)
  end

  it("in the sandbox reads and writes only within the declared fs scope", function()
    local d = tmpdir()
    local inside, outside = d .. "/in", d .. "/out"
    fs.mkdir(inside)
    fs.mkdir(outside)
    file(outside, "secret.tpl", "s={{x}}\n")
    file(outside, "app.conf", "a\n")
    file(inside, "t.tpl", "t={{x}}\n")
    local p = sandboxed_playbook(d, { caps = { "fs:" .. inside }, name = "scoped", params = 'src = "", dst = "", ' ..
      'what = ""', steps = [[
    step "s" { run = function(ctx)
      if ctx.params.what == "edit" then
        fs.edit(ctx.params.dst, { line = "b" })
      else
        fs.template(ctx.params.src, ctx.params.dst, { x = 1 })
      end
    end },]] })
    local function go(what, src, dst)
      return run({ p, "--sandbox", "--state", d .. "/state", "-p", "what=" .. what, "-p", "src=" .. src,
        "-p", "dst=" .. dst })
    end
    local r = go("edit", "", outside .. "/app.conf")
    eq(r.code, 1)
    has(r.stderr .. r.stdout, "sandbox: fs.read needs the capability 'fs:" .. outside .. "/app.conf'")
    eq(fs.read(outside .. "/app.conf"), "a\n")
    r = go("template", outside .. "/secret.tpl", inside .. "/x.conf")
    eq(r.code, 1)
    has(r.stderr .. r.stdout, "sandbox: fs.read needs the capability 'fs:" .. outside .. "/secret.tpl'")
    eq(fs.exists(inside .. "/x.conf"), false)
    r = go("template", inside .. "/t.tpl", outside .. "/x.conf")
    eq(r.code, 1)
    has(r.stderr .. r.stdout, "needs the capability 'fs:" .. outside .. "/x.conf'")
    eq(fs.exists(outside .. "/x.conf"), false)
    r = go("template", inside .. "/t.tpl", inside .. "/x.conf")
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(inside .. "/x.conf"), "t=1\n")
  end)

  it("runs in the sandboxed playbook's process: the engine serves its fs.read and fs.write only", function()
    local box = require("hrun.boundary").open({}, { fs = fs }, {})
    eq(box.flat["fs.edit"], nil)
    eq(box.flat["fs.template"], nil)
    eq(box.list.fs.edit, nil)
    ok(box.flat["fs.read"] and box.flat["fs.write"])
  end)

  it("renders a secret into the file, here and in the sandbox, without it crossing as text", function()
    local d = tmpdir()
    local sec = file(d, "token", "s3cret", "0600")
    file(d, "t.tpl", "user={{user}}\npass={{pass}}\n")
    local r = assert(fs.template(d .. "/t.tpl", d .. "/a.conf", { user = "u", pass = secrets.read(sec) }))
    ok(r.changed)
    eq(fs.read(d .. "/a.conf"), "user=u\npass=s3cret\n")
    local p = sandboxed_playbook(d, { caps = { "fs:" .. d, "secrets:" .. sec }, name = "sec", params = 'dir = ""',
      steps = [[
    step "s" { run = function(ctx)
      local tok = secrets.read(ctx.params.dir .. "/token")
      fs.template(ctx.params.dir .. "/t.tpl", ctx.params.dir .. "/b.conf", { user = "v", pass = tok })
      print(fs.read(ctx.params.dir .. "/b.conf"))
    end },]] })
    local out = run({ p, "--sandbox", "--state", d .. "/state", "-p", "dir=" .. d })
    eq(out.code, 0, out.stdout .. out.stderr)
    eq(fs.read(d .. "/b.conf"), "user=v\npass=s3cret\n")
    ok(not out.stdout:find("s3cret", 1, true), out.stdout)
  end)

  -- a plan's edit of a file an earlier planned write changes is a planned write, not ok:
  -- what the run finds is not what is there now
  it("are planned writes in a plan when an earlier planned write changes their file", function()
    local d = tmpdir()
    fs.write(d .. "/c", "a=0\nb=2\n")
    local p = playbook_file(d, "ed.lua", [[
return playbook { name = "ed", params = { dir = "" },
  phase "p" {
    step "reset" { run = function(ctx) fs.write(ctx.params.dir .. "/c", "a=1\n") end },
    step "ensure" { run = function(ctx) fs.edit(ctx.params.dir .. "/c", { line = "b=2" }) end },
  } }]])
    local r = hrun_cmd({ "plan", p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "plan: 2 writes")
    ok(not r.stdout:find("step ensure: ok", 1, true), r.stdout)
    r = hrun_cmd({ p, "--state", d .. "/state", "-p", "dir=" .. d })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(fs.read(d .. "/c"), "a=1\nb=2\n")
  end)

  it("is known to hrun check: a misspelt name is an error, an undeclared capability a warning", function()
    local d = tmpdir()
    local p = sandboxed_playbook(d, { caps = { "exec:true" }, name = "lint", steps = [[
    step "s" { run = function()
      fs.edit("/tmp/x", { line = "a" })
      fs.template("/tmp/t", "/tmp/x", {})
      fs.edti("/tmp/x", { line = "a" })
    end },]] })
    local r = run({ "check", p, "--state", d .. "/state" })
    eq(r.code, 3, r.stdout .. r.stderr)
    local out = r.stdout .. r.stderr
    has(out, p .. ":8: fs.edti: fs has no such function (did you mean 'fs.edit'?)")
    has(out, p .. ":6: fs.edit needs the capability 'fs'")
    ok(not out:find("fs.template: fs has no such function", 1, true), out)
  end)
end)
