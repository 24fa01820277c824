-- sys: the machine, the process, time.

describe("sys", function()
  it("knows the host name and whether it is root", function()
    eq(sys.hostname(), exec.run({ "hostname" }, { readonly = true }).stdout:gsub("\n$", ""))
    eq(sys.is_root(), exec.run({ "id", "-u" }, { readonly = true }).stdout == "0\n")
  end)

  it("tells the time on the wall and on a monotonic clock", function()
    local date = tonumber(exec.run({ "date", "+%s" }, { readonly = true }).stdout)
    ok(math.abs(sys.now() - date) < 5)
    ok(math.type(sys.now()) == "float")
    local a = sys.clock()
    sys.sleep(0.05)
    local b = sys.clock()
    ok(b - a >= 0.05 and b - a < 2, "slept " .. (b - a))
  end)

  it("reads the environment", function()
    eq(sys.env("PATH"), os.getenv("PATH"))
    eq(sys.env("HRUN_SURELY_UNSET_VARIABLE"), nil)
    eq(sys.env().PATH, os.getenv("PATH"))
  end)

  it("refuses a negative sleep", function()
    checkerr("bad argument #1 to 'sys.sleep' (seconds must be a finite number >= 0)", sys.sleep, -1)
    checkerr("bad argument #1 to 'sys.sleep' (number expected, got string)", sys.sleep, "x")
  end)

  it("wakes from sleep on Ctrl-C", function()
    local script = string.format(
      "%s -e 'sys.sleep(30)' & pid=$!; sleep 0.3; kill -INT $pid; wait $pid; echo status=$?", shq(HRUN))
    local t0 = sys.clock()
    local r = exec.sh(script, { timeout = 20 })
    has(r.stdout, "status=130")
    ok(sys.clock() - t0 < 5)
  end)
end)
