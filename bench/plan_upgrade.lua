-- hrun plan against hrun run of playbooks/nixos-upgrade-24.05-24.11.lua, on the sandbox
-- host of its end-to-end spec (tests/e2e/upgrade_host.lua: a private nix store, the
-- nixos-rebuild stand-in, PostgreSQL 15, systemd in nspawn). Each round times a plan, a
-- run (then rolled back, untimed) on the same host; the medians go to $OUT. Run through
-- the spec runner for its fixtures: bench/plan.sh.
local host = dofile(arg[0]:match("^(.*)/[^/]+$") .. "/e2e/upgrade_host.lua") -- arg[0]: tests/spec.lua
local RUNS = tonumber(sys.env("RUNS") or "") or 5
local OUT = sys.env("OUT")

local function median(xs)
  table.sort(xs)
  local n = #xs
  return n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
end

local function timed(h, args)
  local t = sys.now()
  local r = hrun_on(h, args)
  local s = sys.now() - t
  eq(r.code, 0, table.concat(args, " ") .. ": " .. r.stdout .. r.stderr)
  return s, r
end

describe("the upgrade playbook", function()
  it("plans in under twice its run's time", function()
    local h = host.server()
    local plans, runs, rollbacks = {}, {}, {}
    for i = 1, RUNS do
      plans[i] = timed(h, { "plan", host.PLAYBOOK })
      runs[i] = timed(h, { host.PLAYBOOK })
      rollbacks[i] = timed(h, { "rollback" })
    end
    local p, r, b = median(plans), median(runs), median(rollbacks)
    local text = table.concat({
      "# Plan against run: the NixOS upgrade playbook",
      "",
      "`hrun plan` of `playbooks/nixos-upgrade-24.05-24.11.lua` against its run, on the",
      "sandbox host of its end-to-end spec (tests/e2e/upgrade_host.lua: a private nix store",
      "with generations of the flake in git and the nixos-rebuild stand-in, PostgreSQL 15,",
      "systemd in nspawn). A plan runs the checks and reads, and builds the closure the",
      "planned flake edits make (for its closure diff); a run does the same and writes:",
      "the flake backup, `pg_dumpall`, the flake edits and commit, the build and switch,",
      "every step journaled. Each round: a plan, a run, its rollback, on the same host.",
      string.format("Measured by `bench/plan.sh`, %d rounds, medians, on %s, %s.", RUNS, sys.hostname(),
        os.date("!%Y-%m-%d")),
      "",
      "| command | median |",
      "|---|---|",
      string.format("| `hrun plan` | %.2f s |", p),
      string.format("| `hrun` (the run) | %.2f s |", r),
      string.format("| `hrun rollback` | %.2f s |", b),
      "",
      string.format("Plan / run: **%.2f×** (goal: under 2×).", p / r),
      "",
    }, "\n")
    print(text)
    if OUT and OUT ~= "" then
      fs.write(OUT, text)
    end
    ok(p < 2 * r, string.format("plan %.2f s, run %.2f s", p, r))
  end)
end)
