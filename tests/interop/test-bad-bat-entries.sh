#!/usr/bin/env bash
# BAT entries that point outside the data area are refused by info and export (one "ploop: "
# line, exit non-zero, nothing changed) and found by check (exit 11, nothing changed without -r):
# v2 entry past EOF, v2 entry into the header/BAT (a 256 MiB disk with 32 KiB clusters, whose BAT
# spans clusters 0-1, entry := 1), v2 entry 0xFFFFFFFF, v1 entry not a cluster multiple of
# sectors, v1 entry past EOF. Then `check -r` repairs (drops the bad entry): exit 0, a second
# check exits 0, qemu-img check is clean, OpenVZ's check accepts it, and the disk reads the source
# with only the dropped cluster turned to zeros.
source "$(dirname "$0")/lib.sh"

M=$((1 << 20))
K32=32768
truncate -s $((256 * M)) v2.raw
randomize v2.raw 0 $((3 * K32))                 # guest clusters 0, 1, 2
randomize v2.raw $((100 * M)) 5000              # guest cluster 3200
mkdir v2 && ploop_ok import -b 64 v2.raw v2/img.hds >/dev/null
rm v2/DiskDescriptor.xml
[ "$(read_u32 v2/img.hds 48)" = 128 ] || fail "setup: expected the data area at sector 128 (BAT in 2 clusters)"

truncate -s $((64 * M)) v1.raw
fill v1.raw $M $M 0x42
fill v1.raw $((5 * M)) 4096 0x43
mkdir v1 && ploop_ok init -v 1 -s 64M v1/root.hdd >/dev/null
rm v1/DiskDescriptor.xml
need_tool qemu-io
qemu-io -f parallels -c "write -P 0x42 $M $M" -c "write -P 0x43 $((5 * M)) 4096" v1/root.hdd >/dev/null
[ "$(read_u32 v1/root.hdd $((64 + 4 * 1)))" = 2048 ] || fail "setup: expected v1 BAT entry 1 = sector 2048"

# bad_entry NAME SOURCE_IMAGE SOURCE_RAW GUEST_CLUSTER CLUSTER_BYTES VALUE
bad_entry() {
    local name=$1 src=$2 raw=$3 idx=$4 cs=$5 val=$6
    mkdir "$name" && cd "$name"
    cp "../$src" img
    patch_u32 img $((64 + 4 * idx)) "$val"
    expect_error "$name (info)" info img
    expect_error "$name (export)" export img out.raw
    expect_check_fails "$name" img

    say "$name: check -r repairs"
    local rc=0
    "$PLOOP" check -r img || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: ploop check -r exited $rc"
    rc=0
    "$PLOOP" check img >/dev/null || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: ploop check after check -r exited $rc"
    if command -v qemu-img >/dev/null; then
        qemu_check_clean img || soft_fail "$name: qemu-img check not clean after ploop check -r"
    fi
    if [ -x "$OPENVZ_PLOOP" ]; then
        cp img ovz-copy
        rc=0
        run_openvz_ploop check -f ovz-copy >ovz.out 2>&1 || rc=$?
        [ "$rc" -eq 0 ] || { cat ovz.out; soft_fail "$name: OpenVZ ploop check -f exited $rc after ploop check -r"; }
        rm -f ovz-copy ovz.out
    fi
    cp --sparse=always "../$raw" want.raw
    fill want.raw $((idx * cs)) "$cs" 0
    if "$PLOOP" export img out.raw >/dev/null; then
        cmp out.raw want.raw || soft_fail "$name: after repair the disk does not read the source minus the dropped cluster"
    else
        soft_fail "$name: ploop export failed after check -r"
    fi
    cd ..
}

bad_entry v2-past-eof     v2/img.hds   v2.raw 1 $K32 100
bad_entry v2-ffffffff     v2/img.hds   v2.raw 2 $K32 0xFFFFFFFF
bad_entry v2-into-bat     v2/img.hds   v2.raw 0 $K32 1
bad_entry v1-unaligned    v1/root.hdd  v1.raw 1 $M  $((2048 + 5))
bad_entry v1-into-header  v1/root.hdd  v1.raw 5 $M  1
bad_entry v1-past-eof     v1/root.hdd  v1.raw 5 $M  $((2048 * 50))
finish
