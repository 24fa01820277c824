#!/bin/sh
# The first command of the README: install what hrun needs, build it, run the demo —
# an upgrade whose health check fails, rolled back to the last byte.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build"
state=$(mktemp -d /tmp/hrun-demo-state-XXXXXX)
trap 'rm -rf "$state"' EXIT
status=0
"$root/build/hrun" "$root/playbooks/demo.lua" --state "$state" || status=$?
# exit 1 is the demo working: the run failed on purpose and was rolled back
if [ "$status" -ne 1 ]; then
    echo "demo.sh: the demo ended with exit status $status, not 1 (failed and rolled back)" >&2
    exit 1
fi
echo
echo "That was hrun: every change journaled with its inverse, undone on failure."
echo "Next: build/hrun plan playbooks/demo.lua; build/hrun help; docs/playbooks.md"
