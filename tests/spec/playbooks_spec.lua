-- The playbooks shipped in playbooks/: each one passes `hrun check` (validation and
-- lint), and each example parameters file is accepted by its playbook (a plan on this
-- machine gets past the parameters and stops at the first check this host fails, or
-- at the pre-flight's reach of a host it cannot reach: zimaos.lan).

local ROOT = exec.run({ "realpath", arg[0]:match("^(.*)/tests/[^/]+$") }, { readonly = true }).stdout:gsub("\n$", "")

describe("the shipped playbooks", function()
  it("pass hrun check", function()
    local found = 0
    for _, pb in ipairs(fs.glob(ROOT .. "/playbooks/*.lua")) do
      local r = hrun_cmd({ "check", pb })
      eq(r.code, 0, pb .. ": " .. r.stdout .. r.stderr)
      found = found + 1
    end
    ok(found >= 3, "playbooks found: " .. found)
  end)

  it("accept their example parameters", function()
    local pairs_ = {
      ["nixos-upgrade-24.05-24.11.lua"] = { "hwc-server-24.11.lua" },
      ["phase0-preparation.lua"] = { "phase0-homelab.lua" },
      ["phase1-non-critical.lua"] = { "homelab.lua", "phase1-homelab.lua" },
      ["phase2-media-stack.lua"] = { "homelab.lua", "phase2-homelab.lua" },
      ["phase3-critical-services.lua"] = { "homelab.lua", "phase3-homelab.lua" },
      ["phase4-infrastructure-storage.lua"] = { "phase4-homelab.lua" },
    }
    for pb, files in pairs(pairs_) do
      local argv = { "plan", ROOT .. "/playbooks/" .. pb, "--state", tmpdir() .. "/state" }
      for _, f in ipairs(files) do
        argv[#argv + 1] = "--params"
        argv[#argv + 1] = ROOT .. "/playbooks/params/" .. f
      end
      local r = hrun_cmd(argv)
      ok(r.code == 0 or r.code == 1, pb .. ": exit " .. r.code .. ": " .. r.stdout .. r.stderr)
      if r.stdout:find("pre-flight: host 'old'", 1, true) then
        -- phases 1–3 reach the old host (zimaos.lan) before any check: not from here
        has(r.stdout, "host 'old' (ssh://root@zimaos.lan): cannot connect", pb)
      else
        has(r.stdout, "phase pre-flight", pb)
        has(r.stdout, "check ", pb)
      end
    end
    -- a wrong one is refused before anything runs
    local d = tmpdir()
    fs.write(d .. "/bad.lua", "return { subvolumes = 'data', arrray = '/mnt' }")
    local r = hrun_cmd({ "plan", ROOT .. "/playbooks/phase4-infrastructure-storage.lua", "--params", d .. "/bad.lua",
      "--state", d .. "/state" })
    eq(r.code, 3, r.stdout .. r.stderr)
    has(r.stderr, "parameter 'subvolumes' must be a table, got string")
    has(r.stderr, "no parameter 'arrray' (did you mean 'array'?)")
  end)
end)
