#!/bin/bash
# btrfs.snapshot against the `btrfs subvolume snapshot` CLI: 100 read-only snapshots of
# a subvolume with 2,000 files, each way, on a loop-device btrfs, timed with hyperfine
# (the snapshots are deleted before every run, outside the timing). Writes the table
# to $OUT (default docs/bench-btrfs.md). Needs root.
#   HRUN=build/hrun RUNS=10 bench/btrfs-snapshot.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
HRUN=${HRUN:-$root/build/hrun}
RUNS=${RUNS:-10}
OUT=${OUT:-$root/docs/bench-btrfs.md}
[ "$(id -u)" = 0 ] || { echo "needs root (loop devices, mount)" >&2; exit 1; }
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hrun-bench-btrfs-XXXXXX")
loop=""
cleanup() {
    set +e
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    [ -n "$loop" ] && losetup -d "$loop"
    btrfs device scan --forget >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
truncate -s 2G "$work/disk.img"
loop=$(losetup --find --show "$work/disk.img")
mkfs.btrfs -f -q "$loop" >/dev/null
mkdir "$work/mnt"
mount "$loop" "$work/mnt"
mnt=$work/mnt
btrfs -q subvolume create "$mnt/@data"
mkdir "$mnt/@data/files" "$mnt/snaps"
for i in $(seq 2000); do head -c 4096 /dev/urandom > "$mnt/@data/files/$i"; done
sync

clear_snaps="for s in $mnt/snaps/*; do [ -e \"\$s\" ] && btrfs -q subvolume delete \"\$s\"; done; btrfs -q subvolume sync $mnt; sync"
json=$work/result.json
hyperfine --warmup 1 --runs "$RUNS" --export-json "$json" --prepare "$clear_snaps" \
    -n "hrun: 100 x btrfs.snapshot" \
    "$HRUN -e 'for i = 1, 100 do btrfs.snapshot(\"$mnt/@data\", \"$mnt/snaps/h\" .. i, { readonly = true }) end'" \
    -n "CLI: 100 x btrfs subvolume snapshot -r" \
    "sh -c 'for i in \$(seq 100); do btrfs subvolume snapshot -r $mnt/@data $mnt/snaps/c\$i >/dev/null; done'"
# the cost of one call inside hrun, without its start-up: measured in-process
inproc=$(sh -c "$clear_snaps" && "$HRUN" -e "
  local t = sys.clock()
  for i = 1, 100 do btrfs.snapshot('$mnt/@data', '$mnt/snaps/p' .. i, { readonly = true }) end
  io.write(string.format('%.3f', (sys.clock() - t) * 1000 / 100))")
python3 - "$json" "$OUT" "$inproc" <<'PY'
import json, sys, datetime, platform
res = json.load(open(sys.argv[1]))["results"]
h, c = res[0], res[1]
inproc = float(sys.argv[3])
lines = [
  "# btrfs.snapshot against the btrfs CLI",
  "",
  "100 read-only snapshots of a subvolume holding 2,000 files, on a loop-device btrfs,",
  "through `btrfs.snapshot` (libbtrfsutil, in one hrun process) and through 100 calls of",
  "`btrfs subvolume snapshot -r` from a shell loop. Timed with hyperfine",
  "(`bench/btrfs-snapshot.sh`), %d runs, the snapshots deleted before each run outside the"
    % len(h["times"]),
  "timing; %s, %s." % (platform.node() or "this machine", datetime.date.today().isoformat()),
  "",
  "| way | 100 snapshots (median) | per snapshot |",
  "|---|---|---|",
]
for r in res:
  lines.append("| %s | %.1f ms | %.2f ms |" % (r["command"], r["median"] * 1e3, r["median"] * 1e3 / 100))
lines.append("| btrfs.snapshot measured inside hrun (no process start) | %.1f ms | %.2f ms |" % (inproc * 100, inproc))
ratio_start = c["median"] / h["median"]
ratio_in = c["median"] / 100 / (inproc / 1e3)
lines += ["",
  "**Per call, btrfs.snapshot is %.1f× faster** than the CLI counting hrun's start-up once," % ratio_start,
  "and **%.1f×** measured in-process. The goal was 10×; it cannot be reached on this" % ratio_in,
  "kernel, because most of a snapshot's time is the kernel's own: the snapshot ioctl",
  "(`BTRFS_IOC_SNAP_CREATE_V2`) commits a transaction every time, about 0.6 ms for an empty",
  "subvolume and more for a full one (`strace -T`), and any tool pays it. What hrun removes",
  "is everything else the CLI costs for each snapshot: a process start, argument parsing,",
  "the library's setup — about %.1f ms a call here." % (c["median"] * 10 - inproc),
  "",
  "Between runs the snapshots are deleted and `btrfs subvolume sync` waits for the cleaner,",
  "so that no run pays for the previous one's deletions.", ""]
open(sys.argv[2], "w").write("\n".join(lines))
print("per call: hrun %.2f ms (in-process %.2f ms), CLI %.2f ms" % (h["median"] * 10, inproc, c["median"] * 10))
PY
