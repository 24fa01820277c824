#!/bin/bash
# hrun plan against hrun run of the NixOS upgrade playbook on its end-to-end sandbox host
# (needs root: nspawn, PostgreSQL, a private nix store). Writes $OUT (default
# docs/bench-plan.md).
#   HRUN=build/hrun RUNS=5 bench/plan.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
HRUN=$(realpath "${HRUN:-$root/build/hrun}") # the specs run it from other directories
export RUNS=${RUNS:-5}
export OUT=${OUT:-$root/docs/bench-plan.md}
export HRUN_BIN=$HRUN
exec "$HRUN" "$root/tests/spec.lua" "$root/bench/plan_upgrade.lua"
