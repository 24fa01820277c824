-- The REPL on a real terminal (tmux: send-keys to type, capture-pane to read the
-- screen), and on a pipe.

-- A REPL in a terminal of its own, with its history in state.
local function term(state)
  return terminal(string.format("env HRUN_STATE_DIR=%s TERM=xterm %s repl", shq(state), shq(HRUN)),
    "Ctrl-D exits")
end

describe("repl on a terminal", function()
  it("prints expressions, pretty-prints tables", function()
    local t = term(tmpdir())
    t:line("1 + 1", "\n2\n")
    t:line('{a = {1, 2}, b = "x", [10] = true}', '{ [10] = true, a = { 1, 2 }, b = "x" }')
    t:line('"tab\\there"', '"tab\\there"')
    t:line("local c = {} c.self = c return c", "{ self = <cycle> }")
    t:line("x = 5", "> x = 5\n>")
    t:line("x * 2", "\n10\n")
  end)

  it("continues incomplete chunks on the next lines", function()
    local t = term(tmpdir())
    t:line("function f()", "> function f()\n>>")
    t:line("  return 42", ">>   return 42")
    t:line("end", "> end")
    t:line("f()", "\n42\n")
  end)

  it("reports errors and carries on", function()
    local t = term(tmpdir())
    t:line("error('boom')", "repl:1: boom")
    t:line("fs.read(1)", "bad argument #1 to 'fs.read' (string expected, got number)")
    t:line("1 +", "> 1 +\n>>")
    t:line(")", "unexpected symbol near ')'")
    t:line("3", "\n3\n")
  end)

  it("completes globals and module fields with Tab", function()
    local t = term(tmpdir())
    t:type("json.enc", "Tab")
    t:wait("> json.encode")
    t:line("({1})", '"[1]"')
    t:type("fs.re", "Tab", "Tab")
    local s = t:wait("fs.rename")
    has(s, "fs.read")
    has(s, "fs.remove")
    t:type("", "C-c")
    t:type("exe", "Tab")
    t:wait("> exec")
  end)

  it("Ctrl-C cancels the line, or interrupts a running call", function()
    local t = term(tmpdir())
    t:type("this is not lua", "C-c")
    t:line("2 + 2", "\n4\n")
    ok(not t:screen():find("syntax error", 1, true), "the cancelled line was not run")
    t:type("sys.sleep(30)", "Enter")
    sys.sleep(0.3)
    local t0 = sys.clock()
    t:type("", "C-c")
    t:wait("interrupted")
    ok(sys.clock() - t0 < 3)
    t:line("7 * 6", "\n42\n")
    t:type('exec.run({"sleep", "30"})', "Enter")
    sys.sleep(0.3)
    t:type("", "C-c")
    t:wait("interrupted")
    t:line("8", "\n8\n")
  end)

  it("keeps history across sessions, and Ctrl-D exits", function()
    local state = tmpdir()
    local t = term(state)
    t:line("hist_marker = 12345", "> hist_marker = 12345\n>")
    t:type("", "C-d")
    local deadline = sys.clock() + 5
    while t:tmux("has-session", "-t", "t").ok and sys.clock() < deadline do
      sys.sleep(0.05)
    end
    eq(t:tmux("has-session", "-t", "t").ok, false, "the REPL exited")
    has(fs.read(state .. "/repl_history"), "hist_marker")
    t:start()
    t:type("", "Up")
    t:wait("> hist_marker = 12345")
  end)
end)

describe("repl on a pipe", function()
  it("reads chunks without prompts and prints values", function()
    local r = hrun_cmd({ "repl" }, { stdin = "x = 21\nreturn x * 2\nfunction g()\n  return 'g'\nend\ng()\n" })
    eq(r.stdout, '42\n"g"\n')
    eq(r.stderr, "")
    eq(r.code, 0)
  end)

  it("has every module a playbook has, and help() lists them and their functions", function()
    local r = hrun_cmd({ "repl" }, { stdin = "return checks ~= nil, pg ~= nil, migrate ~= nil, notify ~= nil\n" ..
      "help()\nhelp('sqlite')\nhelp(migrate)\nhelp('nope')\n" })
    eq(r.code, 0, r.stderr)
    has(r.stdout, "true\ttrue\ttrue\ttrue\n")
    for _, m in ipairs({ "fs", "exec", "json", "sys", "btrfs", "hash", "git", "nixos", "http", "service", "podman",
      "sqlite", "secrets", "checks", "pg", "migrate", "notify" }) do
      ok(r.stdout:find("\n  " .. m .. " +%S"), m .. " is listed")
    end
    has(r.stdout, "  sqlite.backup(src, dst)            write  fs\n")
    has(r.stdout, "  migrate.keys(t)                      Lua  -  the keys of t, sorted\n")
    has(r.stdout, "no module 'nope'; help() lists the modules\n") -- more in docs_spec.lua
  end)

  it("reports errors on stderr and exits 1", function()
    local r = hrun_cmd({ "repl" }, { stdin = "error('bad')\nreturn 1\nfunction h(\n" })
    eq(r.stdout, "1\n")
    has(r.stderr, "repl:1: bad")
    has(r.stderr, "<eof>")
    eq(r.code, 1)
  end)
end)
