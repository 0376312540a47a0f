#!/usr/bin/env bash
# Data round trip through `ploop serve` with libnbd's nbdcopy: a 256 MiB raw disk with random data,
# unaligned ranges, written zeros and holes (lib.sh make_raw, plus 24 MiB of random data in one run)
# is copied into an empty disk's export with nbdcopy (several connections: the server offers
# multi-conn), copied back out with nbdcopy, and the copy is identical (cmp); `qemu-img compare` of
# the live export against the raw file agrees. Then the server is stopped with SIGINT, `ploop check`
# is clean and `ploop export` of the disk is byte for byte the raw file.
source "$(dirname "$0")/lib.sh"
need_tool nbdcopy qemu-img cmp

source "$(dirname "$0")/nbd_lib.sh"
trap nbd_cleanup EXIT

SIZE=$((256 << 20))
mkdir disk
ploop_ok init -s 256M disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml
make_raw source.raw "$SIZE"
randomize source.raw $((20 << 20)) $((24 << 20))

start_server "$DD"
say "nbdcopy source.raw -> export"
nbdcopy --flush source.raw "$URI" || soft_fail "nbdcopy into the export failed"
say "nbdcopy export -> back.raw"
nbdcopy "$URI" back.raw || soft_fail "nbdcopy out of the export failed"
[ "$(stat -c %s back.raw)" = "$SIZE" ] || soft_fail "back.raw is $(stat -c %s back.raw) bytes, expected $SIZE"
cmp source.raw back.raw || soft_fail "what nbdcopy read back differs from what it wrote"
say "qemu-img compare source.raw $URI"
qemu-img compare -f raw -F raw source.raw "$URI" || soft_fail "qemu-img compare: the export differs from source.raw"
stop_server

ploop_ok check "$DD" >/dev/null
ploop_ok export "$DD" exported.raw >/dev/null
cmp source.raw exported.raw || soft_fail "ploop export after serving differs from source.raw"
finish
