#!/usr/bin/env bash
# `ploop export` writes a sparse raw file: unallocated clusters, and allocated clusters that read
# as zeros (qemu-io `write -P 0`, or zeros written into an imported disk's cluster), stay holes;
# only clusters holding data take disk blocks. Checked with stat -c %b and with SEEK_DATA.
source "$(dirname "$0")/lib.sh"

M=$((1 << 20))
# blocks_bytes FILE -> bytes the file really occupies
blocks_bytes() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
# data_bytes FILE -> bytes inside SEEK_DATA extents
data_bytes() {
    python3 - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
off = total = 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    total += h - d
    off = h
print(total)
PY
}
expect_sparse() {  # FILE MAX_BYTES WHAT
    local b d
    b=$(blocks_bytes "$1")
    d=$(data_bytes "$1")
    say "$3: $(stat -c %s "$1") bytes, $b allocated, $d in data extents (at most $2 allowed)"
    [ "$b" -le "$2" ] || soft_fail "$3: export occupies $b bytes on disk, expected at most $2"
    [ "$d" -le "$2" ] || soft_fail "$3: export has $d bytes of data extents, expected at most $2"
}

say "empty 1 GiB disk"
mkdir empty
ploop_ok init -s 1G empty/img.hds >/dev/null
ploop_ok export empty/DiskDescriptor.xml empty.raw >/dev/null
[ "$(stat -c %s empty.raw)" = $((1 << 30)) ] || soft_fail "empty export has size $(stat -c %s empty.raw)"
expect_sparse empty.raw 0 "empty 1 GiB disk"

say "imported 256 MiB disk with 3 data clusters and 2 MiB of written zeros"
truncate -s $((256 * M)) src.raw
randomize src.raw 0 4096
randomize src.raw $((100 * M)) $M
randomize src.raw $((255 * M + 7)) 100
fill src.raw $((50 * M)) $((2 * M)) 0
mkdir imp
ploop_ok import src.raw imp/img.hds >/dev/null
ploop_ok export imp/DiskDescriptor.xml imp.raw >/dev/null
cmp imp.raw src.raw || soft_fail "export differs from the imported raw"
expect_sparse imp.raw $((3 * M)) "imported disk"

if command -v qemu-io >/dev/null; then
    say "qemu-written image with an allocated all-zero cluster"
    qemu-img create -q -f parallels q.hds 64M
    qemu-io -f parallels -c "write -P 0 $((8 * M)) $M" -c "write -P 0 $((9 * M)) $M" \
        -c "write -P 0x77 $((30 * M)) 4096" q.hds >/dev/null
    ploop_ok export q.hds q.raw >/dev/null
    qemu-img convert -f parallels -O raw q.hds q.want
    cmp q.raw q.want || soft_fail "export of the qemu image differs from qemu-img convert"
    expect_sparse q.raw $M "qemu image with zero clusters"
else
    say "qemu-io not installed: skipping the qemu zero-cluster case"
fi
finish
