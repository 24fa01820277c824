-- exec: programs without a shell, output captured apart, timeouts that leave nothing.

-- A unique marker so a test can look for its own processes.
local function marker()
  return string.format("%d.%06d", math.random(100, 999), math.random(0, 999999))
end

local function running(pattern)
  return exec.run({ "pgrep", "-f", pattern }, { check = false, readonly = true }).ok
end

describe("exec.run", function()
  it("captures stdout and stderr apart, with the exit code", function()
    local r = exec.run({ "sh", "-c", "echo out; echo err >&2; exit 0" })
    eq(r.ok, true)
    eq(r.code, 0)
    eq(r.stdout, "out\n")
    eq(r.stderr, "err\n")
    eq(r.signal, nil)
    eq(r.timed_out, false)
    ok(type(r.seconds) == "number" and r.seconds >= 0 and r.seconds < 10)
  end)

  it("passes arguments as they are, no shell involved", function()
    local args = { "printf", "%s|", "a b", "$HOME", "*", "new\nline", "\xff" }
    eq(exec.run(args).stdout, "a b|$HOME|*|new\nline|\xff|")
  end)

  it("moves 10 MB on stdout and 10 MB on stderr at once without deadlock", function()
    local r = exec.run({ "sh", "-c",
      "head -c 10000000 /dev/zero | tr '\\0' o & head -c 10000000 /dev/zero | tr '\\0' e >&2; wait" })
    eq(#r.stdout, 10000000)
    eq(#r.stderr, 10000000)
    eq(r.stdout:sub(-1), "o")
    eq(r.stderr:sub(1, 1), "e")
  end)

  it("feeds stdin from a string, 10 MB too", function()
    eq(exec.run({ "tr", "a-z", "A-Z" }, { stdin = "hello" }).stdout, "HELLO")
    local big = string.rep("0123456789", 1000000)
    eq(exec.run({ "wc", "-c" }, { stdin = big }).stdout, "10000000\n")
    eq(exec.run({ "cat" }, { stdin = "" }).stdout, "")
    eq(exec.run({ "cat" }).stdout, "", "no stdin option: /dev/null")
  end)

  it("adds to, unsets in, or replaces the environment", function()
    local r = exec.run({ "sh", "-c", 'echo "$HRUN_A|${HOME:-unset}|$PATH"' },
      { env = { HRUN_A = "1 2", HOME = false } })
    eq(r.stdout, "1 2|unset|" .. sys.env("PATH") .. "\n")
    r = exec.run({ "/usr/bin/env" }, { env = { ONLY = "this" }, clear_env = true })
    eq(r.stdout, "ONLY=this\n")
    checkerr("field 'env': bad name 'A=B'", exec.run, { "true" }, { env = { ["A=B"] = "x" } })
    checkerr("field 'env': X must be a string or false, got table", exec.run, { "true" }, { env = { X = {} } })
  end)

  it("runs in cwd, and names a cwd that is not there", function()
    local d = tmpdir()
    eq(exec.run({ "pwd" }, { cwd = d }).stdout, d .. "\n")
    local err = checkerr("working directory " .. d .. "/nope: No such file or directory",
      exec.run, { "pwd" }, { cwd = d .. "/nope" })
    has(err, "exec.run: pwd:")
    fails("ENOENT", d .. "/nope", exec.run, { "pwd" }, { cwd = d .. "/nope", check = false })
    fs.write(d .. "/file", "")
    fails("ENOTDIR", d .. "/file", exec.run, { "pwd" }, { cwd = d .. "/file", check = false })
  end)

  it("runs a relative program in cwd, and gives it its pipes when hrun has no stdio", function()
    local d = tmpdir()
    fs.write(d .. "/hello", "#!/bin/sh\necho hi from \"$(pwd)\"\n", { mode = "0755" })
    eq(exec.run({ "./hello" }, { cwd = d }).stdout, "hi from " .. d .. "\n")
    -- with hrun's stdin, stdout and stderr closed, its pipes are descriptors 0 to 2
    fs.write(d .. "/t.lua", string.format("local r = exec.run({'sh', '-c', 'cat; echo err >&2'}, "
      .. "{stdin = 'in\\n'})\nfs.write(%q, r.stdout .. r.stderr)\n", d .. "/out"))
    exec.sh(shq(HRUN) .. " " .. shq(d .. "/t.lua") .. " <&- >&- 2>&-")
    eq(fs.read(d .. "/out"), "in\nerr\n")
  end)

  it("raises on a non-zero exit with the command, the code and stderr's tail", function()
    local err = checkerr("exec.run: sh -c 'echo one >&2; echo two >&2; exit 3' exited with code 3:\none\ntwo",
      exec.run, { "sh", "-c", "echo one >&2; echo two >&2; exit 3" })
    ok(not err:find("\n\n"))
    local long = exec.run({ "sh", "-c", "seq 1 1000 >&2; exit 1" }, { check = false })
    eq(long.code, 1)
    eq(long.ok, false)
    err = checkerr("exited with code 1", exec.run, { "sh", "-c", "seq 1 1000 >&2; exit 1" })
    has(err, "\n991\n")
    ok(not err:find("\n990\n", 1, true), "only the tail of stderr")
  end)

  it("returns the result without raising when check = false", function()
    local r = exec.run({ "false" }, { check = false })
    eq(r.ok, false)
    eq(r.code, 1)
  end)

  it("reports a program that is not there", function()
    checkerr("exec.run: hrun-no-such-program: No such file or directory", exec.run, { "hrun-no-such-program" })
    fails("ENOENT", "hrun-no-such-program", exec.run, { "hrun-no-such-program" }, { check = false })
    local d = tmpdir()
    fs.write(d .. "/not-executable", "#!/bin/sh\n", { mode = "0644" })
    fails("EACCES", d .. "/not-executable: Permission denied", exec.run, { d .. "/not-executable" }, { check = false })
  end)

  it("reports a signal", function()
    local r = exec.run({ "sh", "-c", "kill -KILL $$" }, { check = false })
    eq(r.signal, "SIGKILL")
    eq(r.code, nil)
    eq(r.ok, false)
    checkerr("was killed by SIGKILL", exec.run, { "sh", "-c", "kill -KILL $$" })
  end)

  it("times out, kills the whole process group, and says so", function()
    local m = marker()
    local t0 = sys.clock()
    local err = checkerr("timed out after 0.3 s (stopped with SIGTERM)", exec.run,
      { "sh", "-c", "sleep " .. m .. " & sleep " .. m .. "; wait" }, { timeout = 0.3 })
    has(err, "exec.run: sh -c")
    ok(sys.clock() - t0 < 5, "it did not wait for the sleeps")
    eq(running("sleep " .. m), false, "no process of the group left behind")
  end)

  it("escalates to SIGKILL after the grace when SIGTERM is ignored", function()
    local m = marker()
    local r = exec.run({ "sh", "-c", "trap '' TERM; sleep " .. m .. " & wait; sleep " .. m },
      { timeout = 0.2, grace = 0.3, check = false })
    eq(r.timed_out, true)
    eq(r.ok, false)
    eq(r.signal, "SIGKILL")
    eq(running("sleep " .. m), false)
  end)

  it("stops at a timeout even when a grandchild holds the pipes", function()
    local m = marker()
    local r = exec.run({ "sh", "-c", "setsid sleep " .. m .. " & echo started" }, { timeout = 0.5, check = false })
    after(function()
      exec.run({ "pkill", "-f", "sleep " .. m }, { check = false })
    end)
    eq(r.stdout, "started\n")
    ok(r.seconds < 5)
  end)

  it("streams lines to a function while still capturing", function()
    local lines = {}
    local r = exec.run({ "sh", "-c", "echo a; echo b >&2; printf 'c\\nno newline'" }, {
      stream = function(line, which)
        lines[#lines + 1] = which .. ":" .. line
      end,
    })
    table.sort(lines)
    eq(lines, { "stderr:b", "stdout:a", "stdout:c", "stdout:no newline" })
    eq(r.stdout, "a\nc\nno newline")
  end)

  it("stops the command when the stream function raises, and re-raises", function()
    local m = marker()
    checkerr("stop here", exec.run, { "sh", "-c", "echo x; exec sleep " .. m }, {
      stream = function()
        error("stop here")
      end,
    })
    eq(running("sleep " .. m), false)
  end)

  it("echoes lines live with stream = true", function()
    local r = hrun_cmd({ "-e", 'exec.run({"sh", "-c", "echo to-out; echo to-err >&2"}, {stream = true})' })
    eq(r.code, 0)
    eq(r.stdout, "to-out\n")
    eq(r.stderr, "to-err\n")
  end)

  it("raises on misuse", function()
    checkerr("bad argument #1 to 'exec.run' (table expected, got number)", exec.run, 5)
    checkerr("bad argument #1 to 'exec.run' (table expected, got string)", exec.run, "ls -l")
    checkerr("bad argument #1 to 'exec.run' (argv is empty)", exec.run, {})
    checkerr("(argv[2] must be a string, got number)", exec.run, { "echo", 1 })
    checkerr("(argv[1] contains a NUL byte)", exec.run, { "a\0b" })
    checkerr("unknown option 'timout' (did you mean 'timeout'?)", exec.run, { "true" }, { timout = 1 })
    checkerr("field 'timeout': must not be negative", exec.run, { "true" }, { timeout = -1 })
    checkerr("field 'timeout': number expected, got string", exec.run, { "true" }, { timeout = "soon" })
    checkerr("field 'stream': boolean or function expected, got string", exec.run, { "true" }, { stream = "yes" })
    checkerr("field 'stdin': string or secret expected, got table", exec.run, { "cat" }, { stdin = {} })
    checkerr("field 'undo': an argv (a non-empty array) expected", exec.run, { "true" }, { undo = "rm x" })
    checkerr("field 'undo': an argv (a non-empty array) expected", exec.run, { "true" }, { undo = {} })
    checkerr("field 'undo': argv[2] must be a string", exec.run, { "true" }, { undo = { "rm", 1 } })
    checkerr("field 'undo': a command expected, got table", exec.sh, "true", { undo = { "rm" } })
  end)

  it("accepts readonly for commands that only look", function()
    eq(exec.run({ "true" }, { readonly = true }).ok, true)
  end)
end)

describe("exec.sh", function()
  it("runs a shell command line", function()
    eq(exec.sh("echo a | tr a b; echo $((1+2))").stdout, "b\n3\n")
    checkerr("exec.sh: /bin/sh -c 'exit 4' exited with code 4", exec.sh, "exit 4")
    eq(exec.sh("exit 4", { check = false }).code, 4)
    checkerr("bad argument #1 to 'exec.sh' (string expected, got table)", exec.sh, {})
  end)
end)

describe("interrupts", function()
  it("Ctrl-C stops the child and exits 130, leaving no process", function()
    local m = marker()
    local script = string.format(
      "%s -e 'exec.run({\"sleep\", \"%s\"})' & pid=$!; sleep 0.5; kill -INT $pid; wait $pid; echo status=$?",
      shq(HRUN), m)
    local t0 = sys.clock()
    local r = exec.sh(script)
    has(r.stdout, "status=130")
    has(r.stderr, "interrupted")
    ok(sys.clock() - t0 < 5)
    eq(running("sleep " .. m), false)
  end)

  it("Ctrl-C interrupts pure Lua code at a safe point", function()
    local script = string.format(
      "%s -e 'while true do end' & pid=$!; sleep 0.3; kill -INT $pid; wait $pid; echo status=$?", shq(HRUN))
    local r = exec.sh(script, { timeout = 10 })
    has(r.stdout, "status=130")
    has(r.stderr, "interrupted")
  end)
end)
