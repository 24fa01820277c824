-- secrets.read: systemd credentials, agenix, files; secrets passed to commands, HTTP and
-- files, and shown as <secret> everywhere else — output, JSON events, the journal, step
-- state, error messages.

local SECRET = "hunter2-correct-horse"

-- A credentials directory holding db-pass, as systemd's LoadCredential= makes one.
local function credentials()
  local d = tmpdir()
  fs.mkdir(d .. "/creds", { mode = "0700" })
  fs.write(d .. "/creds/db-pass", SECRET .. "\n", { mode = "0600" })
  return d, d .. "/creds"
end

describe("secrets.read", function()
  it("reads a credential by name, a path, or from /run/agenix; trims one newline", function()
    local d, creds = credentials()
    local r = hrun_cmd({ playbook_file(d, "read.lua", [[
      local s = assert(secrets.read("db-pass"))
      local f = assert(secrets.read(... .. "/db-pass", { trim = false }))
      local missing, err, code = secrets.read("nope")
      print(tostring(s), secrets.is(s), secrets.is("x"), missing, err, code)
      fs.write((...) .. "/../a", s)
      fs.write((...) .. "/../b", f)
      fs.write((...) .. "/../c", "Bearer " .. s)
    ]]), creds }, { env = { CREDENTIALS_DIRECTORY = creds } })
    eq(r.code, 0, r.stderr)
    eq(r.stdout, "<secret>\ttrue\tfalse\tnil\tsecrets.read: nope: no such credential in " ..
      "$CREDENTIALS_DIRECTORY (" .. creds .. ") or /run/agenix\tENOENT\n")
    eq(fs.read(d .. "/a"), SECRET)
    eq(fs.read(d .. "/b"), SECRET .. "\n")
    eq(fs.read(d .. "/c"), "Bearer " .. SECRET)
    -- agenix keeps its secrets in /run/agenix
    need_root()
    if fs.exists("/run/agenix") then
      skip("/run/agenix exists here: it is not the test's to change")
    end
    fs.mkdir("/run/agenix", { mode = "0751" })
    after(function()
      fs.remove("/run/agenix", { recursive = true })
    end)
    fs.write("/run/agenix/ntfy-token", "tk_12345", { mode = "0400" })
    r = hrun_cmd({ playbook_file(d, "agenix.lua", [[fs.write(..., assert(secrets.read("ntfy-token")))]]), d .. "/t" })
    eq(r.code, 0, r.stderr)
    eq(fs.read(d .. "/t"), "tk_12345")
  end)
end)

describe("a secret", function()
  it("reaches commands, HTTP and files, and shows as <secret> everywhere else", function()
    local d, creds = credentials()
    local u = http_server()
    local p = playbook_file(d, "pb.lua", string.format([[
return playbook { name = "secret", params = { dir = "", url = "" },
  capabilities = { "secrets", "exec:sh", "env:P", "fs:%s", "net:%s" },
  phase "p" {
    step "use" { irreversible = true, run = function(ctx)
      local s = secrets.read("db-pass")
      print("printed:", s, json.encode({ p = s }))
      local r = exec.run({ "sh", "-c", 'echo "arg=$1 env=$P stdin=$(cat)"', "sh", s },
        { env = { P = s }, stdin = s, readonly = true })
      ctx.log("the command said %%s", r.stdout)
      http.post(ctx.params.url .. "/echo", s, { headers = { Authorization = "Bearer " .. s } })
      http.request(ctx.params.url .. "/echo", { method = "POST", json = { token = s } })
      fs.write(ctx.params.dir .. "/file", s)
      ctx.state.kept = s
    end },
    step "fail" { run = function(ctx)
      exec.run({ "sh", "-c", "echo \"no access for $0\" >&2; exit 3", secrets.read("db-pass") })
    end },
  } }]], d, u))
    local state = d .. "/state"
    local r = hrun_cmd({ p, "--state", state, "-p", "dir=" .. d, "-p", "url=" .. u, "--sandbox" },
      { env = { CREDENTIALS_DIRECTORY = creds } })
    eq(r.code, 1, r.stdout .. r.stderr)
    -- what the command, the server and the file received: the secret itself
    eq(fs.exists(d .. "/file"), false, "rolled back")
    -- shown: never the bytes
    ok(not r.stdout:find(SECRET, 1, true), r.stdout)
    has(r.stdout, "printed:\t<secret>\t{\"p\":\"<secret>\"}")
    has(r.stdout, "the command said arg=<secret> env=<secret> stdin=<secret>")
    has(r.stdout, "exec.run: sh -c 'echo \"no access for $0\" >&2; exit 3' <secret> exited with code 3:\n" ..
      "    no access for <secret>")
    local dump = exec.run({ "sqlite3", state .. "/journal.db", ".dump" }).stdout
    ok(not dump:find(SECRET, 1, true), "the journal holds no secret")
    has(dump, "<secret>")
    local shown = json.decode(hrun_cmd({ "show", "1", "--json", "--state", state }).stdout)
    eq(shown.steps[1].state, { kept = "<secret>" })
    local events = hrun_cmd({ p, "--json", "--state", state, "-p", "dir=" .. d, "-p", "url=" .. u },
      { env = { CREDENTIALS_DIRECTORY = creds } }).stdout
    ok(not events:find(SECRET, 1, true), events)
  end)

  it("is received intact by commands, servers and files", function()
    local d, creds = credentials()
    local u = http_server()
    local r = hrun_cmd({ playbook_file(d, "send.lua", [[
      local dir, url = ...
      local s = assert(secrets.read("db-pass"))
      local c = exec.run({ "sh", "-c", 'printf "%s|%s|%s" "$1" "$P" "$(cat)" > "$2"', "sh", s, dir .. "/cmd" },
        { env = { P = s }, stdin = s })
      local h = http.post(url .. "/echo", s, { headers = { Authorization = "Bearer " .. s } })
      fs.write(dir .. "/server", json.encode({ body = h.json.body, auth = h.json.headers.authorization }))
      local j = http.request(url .. "/echo", { method = "POST", json = { token = s } })
      fs.write(dir .. "/json", j.json.body)
      fs.write(dir .. "/file", s)
      assert(c.ok)
    ]]), d, u }, { env = { CREDENTIALS_DIRECTORY = creds } })
    eq(r.code, 0, r.stderr)
    eq(fs.read(d .. "/cmd"), SECRET .. "|" .. SECRET .. "|" .. SECRET)
    eq(json.decode(fs.read(d .. "/server")), { body = SECRET, auth = "Bearer " .. SECRET })
    eq(json.decode(fs.read(d .. "/json")), { token = SECRET })
    eq(fs.read(d .. "/file"), SECRET)
  end)
end)
