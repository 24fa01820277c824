-- The demo the README's first command runs: it must fail on purpose, roll back to the
-- last byte and leave nothing behind.

local demo = arg[0]:match("^(.*)/tests/[^/]+$") .. "/playbooks/demo.lua"

describe("the demo playbook", function()
  it("fails its health check, rolls back, proves every byte is back, leaves nothing", function()
    local d = tmpdir()
    local root = d .. "/sandbox"
    local r = hrun_cmd({ demo, "--state", d .. "/state", "-p", "root=" .. root })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout, "every byte is back")
    has(r.stdout, "failed and rolled back")
    eq(fs.exists(root), false)
  end)

  it("plans without making anything", function()
    local d = tmpdir()
    local r = hrun_cmd({ "plan", demo, "--state", d .. "/state", "-p", "root=" .. d .. "/sandbox" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "nothing was changed")
    eq(fs.list(d), {})
  end)

  it("succeeds when told to, and hrun rollback then undoes it all", function()
    local d = tmpdir()
    local root = d .. "/sandbox"
    local r = hrun_cmd({ demo, "--state", d .. "/state", "-p", "root=" .. root, "-p", "fail=false" })
    eq(r.code, 0, r.stdout .. r.stderr)
    ok(fs.exists(root .. "/srv/media/library/2024 summer/IMG 0001.jpg"))
    r = hrun_cmd({ "rollback", "--state", d .. "/state" })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "every byte is back")
    eq(fs.exists(root), false)
  end)
end)
