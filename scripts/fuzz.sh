#!/bin/bash
# Fuzzes hrun's parsers with libFuzzer for a bounded time: the playbook loader and
# validator, the manifest import parsers, flake.nix input rewriting, JSON.
#   scripts/fuzz.sh [SECONDS]   each target for SECONDS (default $HRUN_FUZZ_SECONDS or 60)
# A clang build with ASan+UBSan in build-fuzz/. Each target starts from its corpus
# (tests/fuzz/corpus/<target>); a crash stops the script with the input kept in
# build-fuzz/crashes/<target>/ — add it to the corpus once fixed: it becomes a regression
# test that the suite runs in every build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-${HRUN_FUZZ_SECONDS:-60}}
build=$root/build-fuzz
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DHRUN_FUZZ=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target fuzz_playbook fuzz_manifest fuzz_flake fuzz_json fuzz_wire >/dev/null
scratch=$(mktemp -d /tmp/hrun-fuzz-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for target in playbook manifest flake json wire; do
    corpus=$scratch/corpus-$target
    mkdir -p "$corpus" "$build/crashes/$target"
    cp "$root/tests/fuzz/corpus/$target"/* "$corpus/"
    if [ "$target" = playbook ]; then # the shipped playbooks and the malformed ones seed it too
        cp "$root"/playbooks/*.lua "$root"/tests/playbooks/bad/*.lua "$corpus/"
    fi
    echo "== fuzz $target (${seconds}s)"
    if ! HRUN_FUZZ_TMP=$scratch/tmp-$target "$build/tests/fuzz_$target" "$corpus" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$build/crashes/$target/" -print_final_stats=1 2>"$scratch/log-$target"; then
        tail -40 "$scratch/log-$target"
        echo "fuzz.sh: $target crashed; the input is in $build/crashes/$target/" >&2
        status=1
    else
        grep -E "stat::number_of_executed_units|stat::new_units_added" "$scratch/log-$target" | tr '\n' ' '
        echo
    fi
done
exit $status
