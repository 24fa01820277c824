#!/bin/sh
# The first command of the README: install what hrun needs, build it, run the demo —
# a sandbox server (a btrfs volume on a loop device, a web service, a private nix store
# with system generations and its flake in git) whose upgrade fails its health check
# and is rolled back to the last byte. Everything it makes is removed at the end.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build"
work=$(mktemp -d /tmp/hrun-demo-XXXXXX)
cleanup() {
    chmod -R u+w "$work" 2>/dev/null || true # the nix store's paths are read-only
    rm -rf "$work"
}
trap cleanup EXIT
# the nix sandbox: a private store, generations 1 and 2, /etc/nixos in git (the same one
# the tests use: tests/fixtures/nix-sandbox.sh); hrun runs in its environment
env_lines=$("$root/tests/fixtures/nix-sandbox.sh" "$work/nix" seed)
status=0
env $env_lines "$root/build/hrun" "$root/playbooks/demo.lua" --state "$work/state" \
    -p root="$work/box" -p nix="$work/nix" || status=$?
# exit 1 is the demo working: the run failed on purpose and was rolled back
if [ "$status" -ne 1 ]; then
    echo "demo.sh: the demo ended with exit status $status, not 1 (failed and rolled back)" >&2
    exit 1
fi
echo
echo "That was hrun: every change journaled with its inverse, undone on failure."
echo "Next: build/hrun plan playbooks/demo.lua; build/hrun help; docs/playbooks.md"
