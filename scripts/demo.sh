#!/bin/sh
# The first command of the README: install what hrun needs, build it, run the demo.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build"
exec "$root/build/hrun" "$root/playbooks/demo.lua"
