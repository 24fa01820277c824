#!/bin/bash
# The cost of one primitive call across the sandbox's process boundary: a step that
# calls sys.hostname() N times, sandboxed (each call a message to the engine and its
# answer) and not (in-process), against the same step with no call. Per call: the time
# N calls add, divided by N. Writes $OUT (default docs/bench-sandbox.md).
#   HRUN=build/hrun N=100000 RUNS=5 bench/boundary.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
HRUN=${HRUN:-$root/build/hrun}
N=${N:-100000}
RUNS=${RUNS:-5}
OUT=${OUT:-$root/docs/bench-sandbox.md}
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }
work=$(mktemp -d /tmp/hrun-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
for n in 0 "$N"; do
    cat >"$work/calls$n.lua" <<LUA
return playbook {
  name = "calls", capabilities = {},
  phase "p" { step "calls" { run = function()
    for _ = 1, $n do sys.hostname() end
  end } },
}
LUA
done
json=$work/result.json
hyperfine --warmup 2 --runs "$RUNS" --export-json "$json" \
    -n "sandboxed, 0 calls" "$HRUN plan $work/calls0.lua --sandbox" \
    -n "sandboxed, $N calls" "$HRUN plan $work/calls$N.lua --sandbox" \
    -n "in-process, 0 calls" "$HRUN plan $work/calls0.lua" \
    -n "in-process, $N calls" "$HRUN plan $work/calls$N.lua" >&2
python3 - "$json" "$OUT" "$N" <<'PY'
import json, sys, platform, datetime
res = json.load(open(sys.argv[1]))["results"]
n = int(sys.argv[3])
per = lambda a, b: (b["median"] - a["median"]) / n * 1e6
sb, ip = per(res[0], res[1]), per(res[2], res[3])
lines = [
  "# The sandbox's process boundary: what one call costs",
  "",
  "A sandboxed playbook runs in a process of its own; each primitive call it makes is a",
  "JSON message to the engine and one back (docs/architecture.md). `bench/boundary.sh`",
  "runs a step that calls `sys.hostname()` %d times, and the same step with no call," % n,
  "sandboxed and in-process (`hrun plan`, so that no journal write is timed), with",
  "hyperfine: %d runs after 2 warm-ups, on %s, %s." % (len(res[0]["times"]), platform.node() or "this machine",
    datetime.date.today().isoformat()),
  "",
  "| command | median | mean ± σ |",
  "|---|---|---|",
]
for r in res:
  lines.append("| %s | %.1f ms | %.1f ± %.1f ms |" % (r["command"], r["median"] * 1e3, r["mean"] * 1e3,
    r["stddev"] * 1e3))
lines += ["",
  "**One call across the boundary: %.1f µs** (goal: at most 20 µs); in-process: %.2f µs." % (sb, ip),
  "Starting the sandbox's process and loading the playbook in it: %.1f ms more than in-process"
    % ((res[0]["median"] - res[2]["median"]) * 1e3),
  "(the 0-call rows).", ""]
open(sys.argv[2], "w").write("\n".join(lines))
print("per call: %.1f us sandboxed, %.2f us in-process" % (sb, ip))
PY
