-- The masker: every secret a run has read is hidden wherever its bytes turn up — in a
-- command's output (echoed from stdin, env or argv), in ctx.shared and ctx.state, in log
-- lines, errors, effect arguments and results, events (--json), hrun's own output, the
-- journal's file, `hrun show` (--json, --md), `hrun runs` and --notify — as CI systems
-- mask theirs. A playbook's __tojson never sees a secret revealed.

local SECRET = "S3cr3t-Pa55w0rd-xyz"
-- a key file: a command that streams it shows it a line at a time
local KEY_LINES = { "-----BEGIN TEST KEY-----", "MIIEowIBAAKCAQEAx1y2z3qTest", "ZmFrZWtleWJvZHlsaW5lMgTest",
  "-----END TEST KEY-----" }

-- A credentials directory: tok (SECRET), key (KEY_LINES), short (2 bytes).
local function credentials()
  local d = tmpdir()
  fs.mkdir(d .. "/creds", { mode = "0700" })
  fs.write(d .. "/creds/tok", SECRET .. "\n", { mode = "0600" })
  fs.write(d .. "/creds/key", table.concat(KEY_LINES, "\n") .. "\n", { mode = "0600" })
  fs.write(d .. "/creds/short", "q7\n", { mode = "0600" })
  return d, d .. "/creds"
end

-- What must never show: the secret, either half of it (a string cut short in the
-- middle of one), its hex (a string that is not UTF-8 is journaled as hex) and the body
-- lines of the key.
local NEEDLES = { SECRET, SECRET:sub(1, 9), SECRET:sub(10),
  (SECRET:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end)), KEY_LINES[2], KEY_LINES[3] }

-- Asserts that text holds none of the needles; where names it.
local function clean(text, where)
  for _, n in ipairs(NEEDLES) do
    local at = text:find(n, 1, true)
    ok(not at, string.format("%s shows %q: …%s…", where, n, at and text:sub(math.max(1, at - 60), at + 60) or ""))
  end
end

-- Every file under dir (the journal, its WAL, the stash) read as raw bytes.
local function clean_files(dir)
  local n = 0
  local function walk(path)
    local st = fs.stat(path, { follow = false })
    if st and st.type == "dir" then
      for _, name in ipairs(assert(fs.list(path))) do
        walk(path .. "/" .. name)
      end
    elseif st and st.type == "file" then
      n = n + 1
      clean(assert(fs.read(path)), path)
    end
  end
  walk(dir)
  return n
end

-- Everything hrun shows of the runs in state, each checked.
local function clean_history(state, run)
  for _, args in ipairs({ { "show", run }, { "show", run, "--json" }, { "show", run, "--md" }, { "runs" },
    { "runs", "--json" } }) do
    local cmd = { table.unpack(args) }
    cmd[#cmd + 1] = "--state"
    cmd[#cmd + 1] = state
    local r = hrun_cmd(cmd)
    eq(r.code, 0, r.stderr)
    clean(r.stdout .. r.stderr, "hrun " .. table.concat(args, " "))
  end
  need("sqlite3")
  local dump = exec.run({ "sqlite3", state .. "/journal.db", ".dump" }).stdout
  clean(dump, "the journal (sqlite3 .dump)")
  has(dump, "<secret>")
  ok(clean_files(state) >= 1, "the state directory holds the journal")
end

-- The playbook of the leaks: a secret handed to sh on stdin, in env and in argv comes
-- back in the output, which the playbook keeps, logs, prints, passes on and raises.
local LEAKS = [[
return playbook { name = "leaks", params = { url = "" },
  capabilities = { "secrets", "exec:sh", "env:X", "net:%s" },
  phase "p" {
    step "echo" { run = function(ctx)
      local s = secrets.read("tok")
      local out = exec.run({ "sh", "-c", "cat" }, { stdin = s }).stdout
      ctx.shared.out, ctx.state.out = out, out
      ctx.state[out] = "as a key"
      ctx.state.env = exec.run({ "sh", "-c", 'echo "$X"' }, { env = { X = s } }).stdout
      ctx.state.argv = exec.run({ "sh", "-c", 'echo "$1"', "sh", s }).stdout
      -- not UTF-8 (journaled as hex), and long (cut short in the middle of the secret)
      ctx.state.binary = exec.run({ "sh", "-c", "printf '\\377'; cat" }, { stdin = s }).stdout
      ctx.state.long = exec.run({ "sh", "-c", "printf '%%150s' ''; cat" }, { stdin = s }).stdout
      ctx.log("the command said %%s", out)
      print("printed:", out)
      io.write("written: ", out:sub(1, 9), out:sub(10), "\n")
      -- streamed: the key a line at a time, the token whole
      exec.run({ "sh", "-c", "cat" }, { stdin = secrets.read("key"), stream = true })
      exec.run({ "sh", "-c", "cat" }, { stdin = s, stream = true })
      -- output passed on, in a table with a metatable
      exec.run(setmetatable({ "sh", "-c", "true", out }, {}))
      http.post(ctx.params.url .. "/echo", { said = out })
    end },
    step "fail" { run = function()
      local out = exec.run({ "sh", "-c", "cat; echo 'and it failed' >&2; exit 3" },
        { stdin = secrets.read("tok"), check = false })
      error("the command said " .. out.stdout)
    end },
  } }
]]

describe("a secret echoed back by a command", function()
  for _, sandbox in ipairs({ false, true }) do
    it("shows nowhere: journal, events, output, history" .. (sandbox and " (--sandbox)" or ""), function()
      local d, creds = credentials()
      local u = http_server()
      local p = playbook_file(d, "leaks.lua", string.format(LEAKS, u))
      local state = d .. "/state"
      local args = { p, "--state", state, "-p", "url=" .. u, "-v" }
      if sandbox then
        args[#args + 1] = "--sandbox"
      end
      local r = hrun_cmd(args, { env = { CREDENTIALS_DIRECTORY = creds } })
      eq(r.code, 2, r.stdout .. r.stderr) -- failed; exec cannot be undone
      clean(r.stdout, "hrun's stdout")
      clean(r.stderr, "hrun's stderr")
      has(r.stdout, "the command said <secret>")
      has(r.stdout, "printed:\t<secret>")
      has(r.stdout, "written: <secret>")
      for i = 1, #KEY_LINES do
        ok(not r.stdout:find(KEY_LINES[i], 1, true), "key line " .. i .. " streamed")
      end
      has(r.stdout, "| <secret>")
      has(r.stdout, "step fail: failed")
      clean_history(state, "1")
      local shown = json.decode(hrun_cmd({ "show", "1", "--json", "--state", state }).stdout)
      eq(shown.shared, { out = "<secret>" })
      eq(shown.steps[1].state, { out = "<secret>", ["<secret>"] = "as a key", env = "<secret>\n",
        argv = "<secret>\n", binary = "\\xff<secret>", long = string.rep(" ", 150) .. "<secret>" })
      -- the events of --json
      args[3] = d .. "/state2"
      args[#args + 1] = "--json"
      r = hrun_cmd(args, { env = { CREDENTIALS_DIRECTORY = creds } })
      eq(r.code, 2, r.stderr)
      clean(r.stdout .. r.stderr, "the events of --json")
      local lines = 0
      for line in r.stdout:gmatch("[^\n]+") do
        lines = lines + 1
        json.decode(line)
      end
      ok(lines > 10, r.stdout)
      clean_history(d .. "/state2", "1")
    end)
  end

  it("shows nowhere after a crash and a resume, nor in --notify", function()
    local d, creds = credentials()
    local u = http_server()
    local p = playbook_file(d, "crash.lua", [[
return playbook { name = "crash", on_failure = "stop",
  phase "p" {
    step "keep" { run = function(ctx)
      ctx.shared.out = exec.run({ "sh", "-c", "cat" }, { stdin = secrets.read("tok") }).stdout
    end },
    step "use" { irreversible = true, run = function(ctx)
      ctx.state.seen = ctx.shared.out
      local out = exec.run({ "sh", "-c", "cat" }, { stdin = secrets.read("tok") }).stdout
      error("refused: " .. out)
    end },
  } }
]])
    local state = d .. "/state"
    local r = hrun_cmd({ p, "--state", state }, { env = { CREDENTIALS_DIRECTORY = creds,
      HRUN_TEST_CRASH = "step-done:1" } })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    clean(r.stdout .. r.stderr, "the crashed run's output")
    ok(clean_files(state) >= 1, "the journal as the crash left it")
    r = hrun_cmd({ "resume", "--state", state, "--notify", "json:" .. u .. "/inbox", "--notify", u .. "/inbox" },
      { env = { CREDENTIALS_DIRECTORY = creds } })
    eq(r.code, 1, r.stdout .. r.stderr)
    clean(r.stdout .. r.stderr, "the resumed run's output")
    has(r.stdout, "refused: <secret>")
    clean_history(state, "1")
    local shown = json.decode(hrun_cmd({ "show", "1", "--json", "--state", state }).stdout)
    eq(shown.shared, { out = "<secret>" })
    local inbox = http.get(u .. "/inbox").body
    clean(inbox, "--notify")
    has(inbox, "refused: <secret>")
  end)
end)

describe("__tojson", function()
  it("never sees a secret revealed, in http's json or anywhere", function()
    local d, creds = credentials()
    local u = http_server()
    local r = hrun_cmd({ playbook_file(d, "tojson.lua", [[
      local url, state = ...
      local s = assert(secrets.read("tok"))
      local seen = {}
      local function proxy(f)
        return setmetatable({}, { __tojson = f })
      end
      -- a __tojson that encodes the secret, or raises it, while http encodes its json
      local h = http.post(url .. "/echo", { a = proxy(function()
        seen[#seen + 1] = json.encode(s)
        seen[#seen + 1] = json.encode({ s = s, t = { "Bearer " .. s } })
        seen[#seen + 1] = tostring(s)
        return "a"
      end), b = proxy(function()
        return s -- the secret itself: placed in the request, sent as it is
      end) })
      local ok, err = pcall(http.post, url .. "/echo", { c = proxy(function()
        error("said " .. json.encode(s))
      end) })
      seen[#seen + 1] = err
      print(table.concat(seen, " "), ok)
      fs.write(state, json.encode({ seen = seen, body = json.decode(h.json.body) }))
    ]]), u, d .. "/out" }, { env = { CREDENTIALS_DIRECTORY = creds } })
    eq(r.code, 0, r.stderr)
    clean(r.stdout .. r.stderr, "hrun's output")
    local out = json.decode(fs.read(d .. "/out"))
    eq(out.body, { a = "a", b = SECRET })
    eq(out.seen[1], '"<secret>"')
    eq(out.seen[2], '{"s":"<secret>","t":["<secret>"]}')
    eq(out.seen[3], "<secret>")
    has(out.seen[4], 'said "<secret>"')
    has(r.stdout, "false")
  end)
end)

describe("a short secret", function()
  it("is kept in ctx.state as <secret>, though its bytes are not masked in text", function()
    local d, creds = credentials()
    local state = d .. "/state"
    local r = hrun_cmd({ playbook_file(d, "short.lua", [[
return playbook { name = "short",
  phase "p" {
    step "keep" { run = function(ctx)
      local s = secrets.read("short")
      ctx.state.value = s
      ctx.state.bearer = "Bearer " .. s
      ctx.state.echoed = exec.run({ "sh", "-c", "cat" }, { stdin = "Bearer " .. s }).stdout
    end },
  } }
]]), "--state", state }, { env = { CREDENTIALS_DIRECTORY = creds } })
    eq(r.code, 0, r.stdout .. r.stderr)
    local shown = json.decode(hrun_cmd({ "show", "1", "--json", "--state", state }).stdout)
    -- "Bearer q7" is long enough to be masked: a secret made of a short one is
    eq(shown.steps[1].state, { value = "<secret>", bearer = "<secret>", echoed = "<secret>" })
  end)
end)

describe("secrets._mask", function()
  it("hides every secret's bytes, overlapping ones, each line of one, once", function()
    local _, creds = credentials()
    local a = assert(secrets.read(creds .. "/tok"))
    fs.write(creds .. "/inner", "Pa55w0rd-xyz-and-more")
    assert(secrets.read(creds .. "/inner"))
    assert(secrets.read(creds .. "/key"))
    local mask = secrets._mask
    eq(mask("x " .. SECRET .. " y"), "x <secret> y")
    -- overlapping secrets: one run of hidden bytes, nothing of either shown
    eq(mask("S3cr3t-Pa55w0rd-xyz-and-more!"), "<secret>!")
    eq(mask(KEY_LINES[2] .. "\n" .. KEY_LINES[3]), "<secret>\n<secret>")
    eq(mask(mask("x " .. SECRET)), "x <secret>")
    eq(mask("<secret>"), "<secret>")
    eq(mask(42), 42)
    eq(mask(tostring(a .. "!")), "<secret>")
    checkerr("bad argument #1", mask)
  end)
end)
