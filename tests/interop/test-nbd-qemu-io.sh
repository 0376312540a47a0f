#!/usr/bin/env bash
# qemu's NBD client (qemu-io -f raw nbd+unix://) against `ploop serve`: pattern writes aligned and
# unaligned (a 512-byte sector at an odd sector, a range crossing a 1 MiB cluster boundary at odd
# byte offsets, the last sector of the disk, a 4 MiB FUA write over several clusters, concurrent
# aio writes), each read back with `read -P`; `write -z` zeroes (unaligned inside data, and a whole
# cluster with -u) and `discard` (a whole cluster reads zeros and becomes a hole; a partial discard
# leaves the bytes around it alone); flush. A model raw file gets the same operations and the
# export (qemu-img compare live, then `ploop export` after SIGINT) must equal it; `ploop check` clean.
source "$(dirname "$0")/lib.sh"
need_tool qemu-io qemu-img nbdinfo

source "$(dirname "$0")/nbd_lib.sh"
trap nbd_cleanup EXIT

# qio DESC COMMANDS... : one qemu-io run on the export; each argument is one -c command
qio() {
    local desc=$1 rc=0 c; shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f raw "$URI" "${args[@]}" >qio.out 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] || grep -qiE 'fail|error|mismatch' qio.out; then
        soft_fail "$desc: qemu-io exited $rc: $(grep -iE 'fail|error|mismatch' qio.out | head -5 | tr '\n' '|')"
    fi
}
# hole_at OFFSET : nbdinfo --map reports OFFSET inside a hole
hole_at() {
    nbdinfo --map "$URI" | awk -v at="$1" '$1 <= at && at < $1 + $2 { if ($3 % 2 == 1) found = 1 } END { exit !found }'
}

SIZE=$((256 << 20))
M=$((1 << 20))
mkdir disk
ploop_ok init -s 256M disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml
truncate -s "$SIZE" model.raw

start_server "$DD"

say "aligned, odd-sector, cluster-crossing, last-sector and FUA writes"
qio "writes" \
    'write -P 0xaa 0 64k' \
    'write -P 0xbb 3584 512' \
    'write -P 0xcc 1000001 100001' \
    "write -f -P 0xdd $((4 * M)) 4M" \
    "write -P 0xee $((SIZE - 512)) 512"
fill model.raw 0 65536 0xaa
fill model.raw 3584 512 0xbb
fill model.raw 1000001 100001 0xcc
fill model.raw $((4 * M)) $((4 * M)) 0xdd
fill model.raw $((SIZE - 512)) 512 0xee
qio "read back" \
    'read -P 0xaa 0 3584' \
    'read -P 0xbb 3584 512' \
    'read -P 0xaa 4096 61440' \
    'read -P 0 65536 934465' \
    'read -P 0xcc 1000001 100001' \
    'read -P 0 1100002 1000' \
    "read -P 0xdd $((4 * M)) 4M" \
    "read -P 0 $((SIZE - 1024)) 512" \
    "read -P 0xee $((SIZE - 512)) 512"

say "write -z inside data (unaligned) and over a whole cluster with unmap"
qio "write -z" \
    "write -z $((4 * M + 100)) 1000" \
    "write -z -u $((5 * M)) 1M" \
    "read -P 0xdd $((4 * M)) 100" \
    "read -P 0 $((4 * M + 100)) 1000" \
    "read -P 0xdd $((4 * M + 1100)) 4096" \
    "read -P 0 $((5 * M)) 1M" \
    "read -P 0xdd $((6 * M)) 1M"
fill model.raw $((4 * M + 100)) 1000 0
fill model.raw $((5 * M)) $M 0

say "discard a whole cluster, then part of one"
qio "discard" \
    "discard $((6 * M)) 1M" \
    "read -P 0 $((6 * M)) 1M" \
    "discard $((7 * M + 4096)) 8192" \
    "read -P 0xdd $((7 * M)) 4096" \
    "read -P 0xdd $((7 * M + 12288)) $((M - 12288))" \
    "read -P 0xdd $((8 * M - 512)) 512"
fill model.raw $((6 * M)) $M 0
hole_at $((6 * M)) || soft_fail "the discarded cluster at 6 MiB is not a hole: $(nbdinfo --map "$URI" | tr '\n' '|')"
# what a partial discard leaves inside its range is unspecified: make it zeros for the model
qio "zero the partially discarded range" "write -z $((7 * M + 4096)) 8192" "read -P 0 $((7 * M + 4096)) 8192"
fill model.raw $((7 * M + 4096)) 8192 0

say "concurrent aio writes, aio_flush, flush"
qio "aio" \
    "aio_write -P 0x11 $((20 * M)) 64k" \
    "aio_write -P 0x22 $((20 * M + 65536)) 64k" \
    "aio_write -P 0x33 $((21 * M - 3000)) 6000" \
    "aio_write -P 0x44 $((30 * M + 1)) 511" \
    aio_flush \
    flush \
    "read -P 0x11 $((20 * M)) 64k" \
    "read -P 0x22 $((20 * M + 65536)) 64k" \
    "read -P 0x33 $((21 * M - 3000)) 6000" \
    "read -P 0x44 $((30 * M + 1)) 511" \
    "read -P 0 $((30 * M)) 1"
fill model.raw $((20 * M)) 65536 0x11
fill model.raw $((20 * M + 65536)) 65536 0x22
fill model.raw $((21 * M - 3000)) 6000 0x33
fill model.raw $((30 * M + 1)) 511 0x44

say "the whole export equals the model"
qemu-img compare -f raw -F raw model.raw "$URI" || soft_fail "qemu-img compare: the export differs from the model"
stop_server

ploop_ok check "$DD" >/dev/null
ploop_ok export "$DD" exported.raw >/dev/null
cmp model.raw exported.raw || soft_fail "ploop export differs from the model"
finish
