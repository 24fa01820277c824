-- The memory bound: hashing a tree of 1,000,000 files stays under 200 MB of peak RSS,
-- whatever the tree's size (bounded queues, entries written out as they finish).
-- Takes a minute or two: CTest label "long".

describe("hash.tree on 1,000,000 files", function()
  it("keeps its peak memory under 200 MB", function()
    local d = tmpdir()
    local root = d .. "/million"
    fs.mkdir(root)
    -- 1000 directories of 1000 small files; the shell's own redirections, no process each
    exec.sh("cd " .. shq(root) .. " && for i in $(seq 1000); do mkdir $i; for j in $(seq 1000); do " ..
      "echo $i.$j > $i/$j; done; done", { timeout = 1200 })
    local script = d .. "/m.lua"
    fs.write(script, [[
      local root = ...
      local m = assert(hash.tree(root, { save = "million" }))
      local peak = fs.read("/proc/self/status"):match("VmHWM:%s*(%d+) kB")
      io.write(json.encode({ files = m.files, entries = m.entries, complete = m.complete, peak_kb = tonumber(peak) }))
    ]])
    -- in the sanitizer build, AddressSanitizer's quarantine of freed memory (256 MB by
    -- default) would count as ours: keep it small there (other builds ignore this)
    local asan = (sys.env("ASAN_OPTIONS") or "detect_leaks=1") .. ":quarantine_size_mb=8"
    local r = hrun_cmd({ "--state", d .. "/state", script, root }, { timeout = 1200, env = { ASAN_OPTIONS = asan } })
    eq(r.code, 0, r.stderr)
    local out = json.decode(r.stdout)
    eq(out.files, 1000000)
    eq(out.entries, 1001000)
    eq(out.complete, true)
    ok(out.peak_kb < 200 * 1024, "peak RSS " .. out.peak_kb .. " kB")
    print(string.format("     1,000,000 files hashed with a peak RSS of %.1f MB", out.peak_kb / 1024))
  end)
end)
