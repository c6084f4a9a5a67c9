#!/usr/bin/env python3
"""The least time a journal-protected reencryption can take on a filesystem, from its
writes alone: each hotzone is first copied into the journal area and then written back
in place, and each step must be done before the next begins (the journal must hold a
hotzone before its data is overwritten, and be kept until that write is done). So the
writes form one chain that no number of cores shortens, and on filesystems that
serialise writers of a file (tmpfs and ext4 take the inode lock) not even within a step.

usage: write-floor.py FILE SIZE_MIB PIECE_BYTES ROUNDS

FILE is created (SIZE_MIB MiB of data after a PIECE_BYTES journal area) and removed.
Each round copies the data in PIECE_BYTES pieces to the journal area with
copy_file_range (in the kernel, as vmcrypt does) and writes each piece back from a
1 MiB buffer that stays in the CPU cache (as vmcrypt's workers do), one thread, no
reads and no crypto. Prints the median seconds of ROUNDS rounds.
"""
import os
import statistics
import sys
import time

CHUNK = 1 << 20


def one_round(fd, size, piece, buf):
    start = time.perf_counter()
    for at in range(piece, piece + size, piece):
        n = min(piece, piece + size - at)
        done = 0
        while done < n:
            k = os.copy_file_range(fd, fd, n - done, at + done, done)
            if k <= 0:
                sys.exit(f"copy_file_range returned {k} at {at + done}")
            done += k
        for off in range(at, at + n, CHUNK):
            os.pwrite(fd, buf[: min(CHUNK, at + n - off)], off)
    return time.perf_counter() - start


def main():
    path, size_mib, piece, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    size = size_mib << 20
    buf = os.urandom(CHUNK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for off in range(0, piece + size, CHUNK):
            os.pwrite(fd, buf, off)
        times = [one_round(fd, size, piece, buf) for _ in range(rounds)]
    finally:
        os.close(fd)
        os.unlink(path)
    print(f"{statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
