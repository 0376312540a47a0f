#!/usr/bin/env bash
# Two (or three) BAT entries pointing at the same file cluster: reads are still well defined, so
# `ploop export` works and equals qemu's read; `ploop check` exits 11 and changes nothing;
# `ploop check -r` repairs (exit 0) so that a second check exits 0, qemu-img check is clean,
# OpenVZ `ploop check -f -c` finds no shared block, the disk still reads exactly as before, and
# the entries are really separate: qemu writing through one of them leaves the other alone.
source "$(dirname "$0")/lib.sh"
need_tool qemu-img qemu-io

M=$((1 << 20))
K32=32768
truncate -s $((64 * M)) v2.raw
randomize v2.raw 0 $((4 * K32))            # guest clusters 0..3 -> file clusters 1..4
mkdir v2 && ploop_ok import -b 64 v2.raw v2/img.hds >/dev/null
rm v2/DiskDescriptor.xml

mkdir v1 && ploop_ok init -v 1 -s 64M v1/root.hdd >/dev/null
rm v1/DiskDescriptor.xml
qemu-io -f parallels -c "write -P 0x42 0 $M" -c "write -P 0x43 $M $M" -c "write -P 0x44 $((2 * M)) $M" \
    v1/root.hdd >/dev/null

# dup_case NAME SOURCE CLUSTER_BYTES "IDX=VALUE ..." WRITE_IDX OTHER_IDX
dup_case() {
    local name=$1 src=$2 cs=$3 patches=$4 widx=$5 oidx=$6 p
    mkdir "$name" && cd "$name"
    cp "../$src" img
    for p in $patches; do patch_u32 img $((64 + 4 * ${p%=*})) "${p#*=}"; done

    say "$name: export still reads, same as qemu"
    qemu-img convert -f parallels -O raw img qemu.raw
    local rc=0
    "$PLOOP" export img before.raw >/dev/null || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: ploop export exited $rc on shared clusters"
    [ -e before.raw ] && { cmp before.raw qemu.raw || soft_fail "$name: ploop export differs from qemu"; }
    cp qemu.raw before.raw

    expect_check_fails "$name" img
    grep -qi 'share\|twice\|more than once\|duplicate' .out ||
        soft_fail "$name: check did not mention the shared cluster: $(cat .out)"

    say "$name: check -r"
    rc=0
    "$PLOOP" check -r img || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: ploop check -r exited $rc"
    rc=0
    "$PLOOP" check img >/dev/null || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: second ploop check exited $rc"
    qemu_check_clean img || soft_fail "$name: qemu-img check not clean after repair"
    if [ -x "$OPENVZ_PLOOP" ]; then
        cp img ovz
        rc=0
        run_openvz_ploop check -f -c -r ovz >ovz.out 2>&1 || rc=$?
        if [ "$rc" -ne 0 ] || grep -q 'more than once' ovz.out; then
            cat ovz.out
            soft_fail "$name: OpenVZ ploop check -f -c after repair (exit $rc)"
        fi
    fi
    rm -f after.raw
    "$PLOOP" export img after.raw >/dev/null || soft_fail "$name: export after repair failed"
    cmp after.raw before.raw || soft_fail "$name: repair changed what the disk reads"

    say "$name: entries are separate after repair"
    qemu-io -f parallels -c "write -P 0x99 $((widx * cs)) $cs" img >/dev/null
    fill before.raw $((widx * cs)) "$cs" 0x99
    rm -f after.raw
    "$PLOOP" export img after.raw >/dev/null || soft_fail "$name: export after the write failed"
    cmp after.raw before.raw ||
        soft_fail "$name: writing guest cluster $widx changed guest cluster $oidx (still shared)"
    cd ..
}

# v2: entries hold file cluster numbers; guest clusters 0..3 live in file clusters 1..4
dup_case v2-two   v2/img.hds  $K32 "1=1"          1 0
dup_case v2-three v2/img.hds  $K32 "0=3 1=3"      3 1
dup_case v2-last  v2/img.hds  $K32 "0=4"          0 3
dup_case v2-new   v2/img.hds  $K32 "40=2"         40 1   # a hole made to share a cluster
# v1: entries hold sector offsets; guest clusters 0..2 live at sectors 2048, 4096, 6144
dup_case v1-two   v1/root.hdd $M   "1=2048"       0 1
finish
