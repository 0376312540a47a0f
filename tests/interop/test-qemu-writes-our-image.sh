#!/usr/bin/env bash
# qemu can write into images this project made, and this project reads qemu's writes back:
# after `ploop init` (v2 1 MiB and 32 KiB clusters, v1) or `ploop import`, `qemu-io -f parallels`
# writes (new clusters and overwrites); then qemu-img check is clean, `ploop check` exits 0 and
# `ploop export DiskDescriptor.xml` equals `qemu-img convert -O raw`.
source "$(dirname "$0")/lib.sh"
need_tool qemu-img qemu-io

M=$((1 << 20))
check_case() {
    local name=$1 img=$2
    qemu-io -f parallels \
        -c "write -P 0x3c 0 4096" \
        -c "write -P 0x4d $((M - 100)) 300" \
        -c "write -P 0x5e $((17 * M)) $M" \
        -c "write -P 0x6f $((64 * M - 4096)) 4096" \
        "$img" >/dev/null
    say "$name: qemu-img check after qemu-io writes"
    qemu_check_clean "$img" || soft_fail "$name: qemu-img check not clean after qemu wrote into it"
    say "$name: ploop check"
    local rc=0
    "$PLOOP" check "$img" || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: ploop check exited $rc after qemu wrote into it"
    say "$name: ploop export equals qemu-img convert"
    qemu-img convert -f parallels -O raw "$img" "$name.qemu.raw"
    "$PLOOP" export "$(dirname "$img")/DiskDescriptor.xml" "$name.ours.raw" >/dev/null ||
        soft_fail "$name: ploop export failed"
    [ -e "$name.ours.raw" ] && { cmp "$name.ours.raw" "$name.qemu.raw" ||
        soft_fail "$name: ploop export differs from qemu-img convert"; }
    rm -f "$name.qemu.raw" "$name.ours.raw"
}

mkdir v2 v2-32k v1 imp
ploop_ok init -s 64M v2/img.hds >/dev/null
check_case init-v2 v2/img.hds
ploop_ok init -s 64M -b 64 v2-32k/img.hds >/dev/null
check_case init-v2-32k v2-32k/img.hds
ploop_ok init -s 64M -v 1 v1/root.hdd >/dev/null
check_case init-v1 v1/root.hdd
make_raw src.raw $((64 * M))
ploop_ok import src.raw imp/img.hds >/dev/null
check_case import imp/img.hds
finish
