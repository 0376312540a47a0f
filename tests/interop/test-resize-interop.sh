#!/usr/bin/env bash
# `ploop resize` leaves images qemu and OpenVZ accept and that read the same: growing a disk with
# 32 KiB clusters from 64 MiB to 1 GiB (its BAT grows from 1 to 5 clusters, so data clusters
# must move out of the way) and to 100 GiB; on a second 64 MiB disk, shrinking to 32 MiB (only
# zeros past the new end; the BAT keeps its size -- shrinking the BAT is not supported yet).
# qemu-img info shows the new size, qemu-img check is clean, qemu's read equals the source
# (zero-extended or cut), OpenVZ `ploop check -f -c` exits 0. Shrinking below data is refused
# (one "ploop: " line, nothing changed).
source "$(dirname "$0")/lib.sh"
need_tool qemu-img
"$PLOOP" resize --help >/dev/null 2>&1 || skip "this build of ploop has no resize command"

M=$((1 << 20))
truncate -s $((64 * M)) src.raw
randomize src.raw 0 2000000                 # guest clusters 0..61, in file clusters 1..62
randomize src.raw $((20 * M + 5)) 100000
mkdir d
ploop_ok import -b 64 src.raw d/img.hds >/dev/null

resized_ok() {  # NEW_SIZE_BYTES
    local want=$1 got
    say "resize to $want bytes"
    ploop_ok resize -s "$((want / 512))" d/DiskDescriptor.xml >/dev/null
    got=$(qemu-img info -f parallels --output=json d/img.hds | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    [ "$got" = "$want" ] || soft_fail "after resize qemu sees $got bytes, expected $want"
    qemu_check_clean d/img.hds || soft_fail "qemu-img check not clean after resize to $want"
    cp --sparse=never src.raw expect.raw
    truncate -s "$want" expect.raw
    qemu-img compare -q -f parallels -F raw d/img.hds expect.raw ||
        soft_fail "after resize to $want qemu does not read the source (zero-extended/cut)"
    rc=0
    "$PLOOP" check d/DiskDescriptor.xml >/dev/null || rc=$?
    [ "$rc" = 0 ] || soft_fail "ploop check exited $rc after resize to $want"
    if [ -x "$OPENVZ_PLOOP" ]; then
        cp d/img.hds ovz-copy
        rc=0
        run_openvz_ploop check -f -c ovz-copy >ovz.out 2>&1 || rc=$?
        [ "$rc" = 0 ] || { cat ovz.out; soft_fail "OpenVZ ploop check -f -c exited $rc after resize to $want"; }
        rm -f ovz-copy ovz.out
    fi
    rm -f expect.raw
}

resized_ok $((1 << 30))
resized_ok $((100 << 30))

rm -rf d src.raw
truncate -s $((64 * M)) src.raw
randomize src.raw 0 100000
randomize src.raw $((20 * M + 5)) 100000
mkdir d
ploop_ok import -b 64 src.raw d/img.hds >/dev/null
cd d
expect_error "shrink below data" resize -s 16M DiskDescriptor.xml
cd ..
resized_ok $((32 * M))
finish
