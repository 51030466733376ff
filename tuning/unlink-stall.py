#!/usr/bin/env python3
"""How removing large files delays another file's fdatasyncs, on the file system of DIR.

Writes three 64 MiB files (or COUNT files of MIB MiB), then loops 13 KiB writes + fdatasync on
another file (a log's batch) while it removes them: `plain` unlinks each whole, `fadvise` drops
its cached pages first in 8 MiB steps, `trunc` cuts it down 4 MiB at a time (2 ms apart, as
ferrocd does; 8 MiB before 2026-11-27 evening) before unlinking, `trunc0` likewise without the
pauses.
Prints the removal times and the fdatasyncs' p50/p99/max
(tuning/results/2026-11-27-checkpoint-write-back.md).

usage: tuning/unlink-stall.py DIR plain|fadvise|trunc|trunc0 [MIB [COUNT]]
  e.g. `tuning/unlink-stall.py /work/tmp plain 1024 1`: one checkpoint part of 1 GiB
"""
import os
import sys
import threading
import time

d, mode = sys.argv[1], sys.argv[2]
mib = int(sys.argv[3]) if len(sys.argv) > 3 else 64
count = int(sys.argv[4]) if len(sys.argv) > 4 else 3
os.makedirs(d, exist_ok=True)
big = []
for i in range(count):
    p = f"{d}/big{i}"
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    os.posix_fallocate(fd, 0, mib << 20)
    for _ in range(mib):
        os.write(fd, b"x" * (1 << 20))
    os.fdatasync(fd)
    os.close(fd)
    big.append(p)
logfd = os.open(f"{d}/log", os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
os.posix_fallocate(logfd, 0, 64 << 20)
lat, stop = [], False


def syncer():
    off = 0
    while not stop:
        os.pwrite(logfd, b"y" * 13000, off)
        off += 13000
        t = time.perf_counter()
        os.fdatasync(logfd)
        lat.append(time.perf_counter() - t)


th = threading.Thread(target=syncer)
th.start()
time.sleep(0.3)
t = time.perf_counter()
for p in big:
    if mode == "fadvise":
        fd = os.open(p, os.O_RDONLY)
        for off in range(0, mib << 20, 8 << 20):
            os.posix_fadvise(fd, off, 8 << 20, os.POSIX_FADV_DONTNEED)
            time.sleep(0.002)
        os.close(fd)
    if mode in ("trunc", "trunc0"):
        fd = os.open(p, os.O_WRONLY)
        for n in range(mib - 4, -1, -4):
            os.ftruncate(fd, n << 20)
            if mode == "trunc":
                time.sleep(0.002)
        os.close(fd)
    t1 = time.perf_counter()
    os.unlink(p)
    print(f"  unlink {1000 * (time.perf_counter() - t1):.1f} ms")
print(f"  removal in all {1000 * (time.perf_counter() - t):.1f} ms")
time.sleep(0.3)
stop = True
th.join()
os.close(logfd)
os.unlink(f"{d}/log")
lat.sort()
n = len(lat)
print(f"{mode}: {n} fdatasyncs, p50 {1000 * lat[n // 2]:.2f} p99 {1000 * lat[int(n * .99)]:.2f} max {1000 * lat[-1]:.2f} ms")
