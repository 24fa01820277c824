#!/bin/sh
# Makes a release: the Debian package (cpack -G DEB) and the portable binary, with their
# SHA-256 sums, in DIST (default dist/). Usage: scripts/release.sh [DIST]
# Built from a clean tree of its own (build-release/), without the tests.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
dist=${1:-$root/dist}
build=$root/build-release
rm -rf "$build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DHRUN_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)"
(cd "$build" && cpack -G DEB >/dev/null)
version=$(sed -n 's/^project(hrun VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")
arch=$(dpkg --print-architecture)
mkdir -p "$dist"
cp "$build/hrun_${version}_${arch}.deb" "$dist/"
cp "$build/hrun-portable" "$dist/hrun-portable-${version}-$(uname -m)"
(cd "$dist" && sha256sum "hrun_${version}_${arch}.deb" "hrun-portable-${version}-$(uname -m)" > SHA256SUMS)
echo "$dist:"
(cd "$dist" && cat SHA256SUMS)
