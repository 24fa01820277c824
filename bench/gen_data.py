#!/usr/bin/env python3
"""The three data sets of the hashing bench, made deterministically (seeded random
bytes: the same files on every machine).

  big/    one file of 2 GiB
  small/  100,000 files of 1-64 KiB (log-uniform), 100 per directory, dNN/dNN/
  mixed/  2,000 files of 100 KiB-20 MiB (skewed small), 50 per directory

Usage: gen_data.py DATA_DIR   (makes what is missing; DATA_DIR/<set>.done marks a set)
"""
import os
import random
import sys

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024


def write(path, size, rng):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def make(root, name, seed, files):
    marker = os.path.join(root, name + ".done")
    if os.path.exists(marker):
        return
    rng = random.Random(seed)
    for rel, size in files(rng):
        path = os.path.join(root, name, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write(path, size, rng)
    open(marker, "w").close()


def big(rng):
    yield "file.bin", 2 * GiB


def small(rng):
    for i in range(100_000):
        size = int(KiB * (64 ** rng.random()))
        yield "d%02d/d%02d/f%05d" % (i // 10_000, (i // 100) % 100, i), size


def mixed(rng):
    for i in range(2_000):
        size = int(100 * KiB * (204.8 ** (rng.random() ** 3)))
        yield "d%02d/f%04d" % (i // 50, i), size


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "data"
    for name, seed, files in (("big", 1, big), ("small", 2, small), ("mixed", 3, mixed)):
        make(root, name, seed, files)
        print("ready:", os.path.join(root, name))
