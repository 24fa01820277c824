#!/bin/bash
# The second command of the README: install what hrun needs, build it, run every test.
#   scripts/test.sh            the normal build, in build/
#   scripts/test.sh --sanitize an ASan+UBSan build, in build-sanitize/
# With HRUN_NO_SKIP=1 (CI sets it) a skipped test is a failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
flags=()
if [ "${1:-}" = "--sanitize" ]; then
    build=$root/build-sanitize
    flags=(-DHRUN_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
    # Lua, libedit and jansson are not instrumented; leaks in them at exit are theirs
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
    # leaks inside the system's libraries that hrun cannot free: tests/lsan.supp says which
    export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi
if [ "${HRUN_SKIP_INSTALL:-}" = "" ]; then
    "$root/scripts/install-deps.sh"
fi
"$root/scripts/build.sh" "$build" "${flags[@]}"
cd "$build"
log=$build/ctest.log
status=0
ctest --output-on-failure -j "$(nproc)" 2>&1 | tee "$log" || status=$?
if grep -q "Not Run\|\*\*\*Skipped\|tests did not run" "$log"; then
    echo "test.sh: some tests were skipped" >&2
    [ "${HRUN_NO_SKIP:-}" = "" ] || status=1
fi
exit $status
