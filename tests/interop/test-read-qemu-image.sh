#!/usr/bin/env bash
# Images made by `qemu-img create -f parallels` (default and 64 KiB / 32 KiB clusters, BAT of one
# and of several clusters) and written by `qemu-io -f parallels` at several offsets (whole
# clusters, partial clusters, unaligned ranges crossing cluster boundaries, rewrites, explicit
# zeros) are read back exactly by this project: `ploop export IMG` equals `qemu-img convert -O raw`,
# `ploop check IMG` exits 0 and leaves the file alone, and `ploop info --json` reports qemu's size.
# `ploop check -r` on a copy leaves an image qemu finds clean and reads the same. Also images
# written by `qemu-img convert -O parallels` from a raw disk (1 MiB and 32 KiB clusters) and by
# qemu with preallocation=falloc / full.
source "$(dirname "$0")/lib.sh"
need_tool qemu-img qemu-io

# case NAME SIZE CREATE_OPTS(-o ... or empty) ; writes follow as "pattern offset length" triples
run_case() {
    local name=$1 size=$2 opts=$3; shift 3
    local img=$name.hds args=()
    say "$name: qemu-img create -f parallels ${opts:-(default cluster)} $size"
    # shellcheck disable=SC2086
    qemu-img create -q -f parallels $opts "$img" "$size"
    while [ $# -gt 0 ]; do
        args+=(-c "write -P $1 $2 $3")
        shift 3
    done
    qemu-io -f parallels "${args[@]}" "$img" >/dev/null
    check_qemu_image "$name" "$img"
}

# check_qemu_image NAME IMAGE: this project reads the qemu-made IMAGE as qemu does
check_qemu_image() {
    local name=$1 img=$2 before
    qemu_check_clean "$img" || fail "$name: qemu's own image is not clean (test setup)"
    qemu-img convert -f parallels -O raw "$img" "$name.qemu.raw"

    say "$name: ploop export equals qemu-img convert"
    before=$(sha "$img")
    "$PLOOP" export "$img" "$name.ours.raw" >/dev/null || soft_fail "$name: ploop export exited $?"
    if [ -e "$name.ours.raw" ]; then
        cmp "$name.ours.raw" "$name.qemu.raw" || soft_fail "$name: ploop export differs from qemu-img convert"
    fi
    say "$name: ploop check exits 0"
    local rc=0
    "$PLOOP" check "$img" || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: ploop check exited $rc on a qemu-written image"
    [ "$(sha "$img")" = "$before" ] || soft_fail "$name: ploop export/check without -r changed the image"

    say "$name: ploop info --json size"
    local got want
    want=$(stat -c %s "$name.qemu.raw")
    got=$("$PLOOP" info --json "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])') ||
        soft_fail "$name: ploop info --json failed"
    [ "$got" = "$want" ] || soft_fail "$name: ploop info size $got, qemu says $want"

    say "$name: ploop check -r keeps it a clean qemu image with the same contents"
    cp "$img" "$name.rep.hds"
    rc=0
    "$PLOOP" check -r "$name.rep.hds" >/dev/null || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: ploop check -r exited $rc on a qemu-written image"
    qemu_check_clean "$name.rep.hds" || soft_fail "$name: qemu-img check not clean after ploop check -r"
    qemu-img compare -q -f parallels -F raw "$name.rep.hds" "$name.qemu.raw" ||
        soft_fail "$name: ploop check -r changed what qemu reads"
    rm -f "$name.ours.raw" "$name.qemu.raw" "$name.rep.hds"
}

M=$((1 << 20))
run_case default-64m 64M "" \
    0xa1 0 4096 \
    0xb2 $((M - 512)) 1024 \
    0xc3 $((10 * M)) $M \
    0xd4 $((20 * M + 4096)) 3000 \
    0xe5 $((33 * M - 700)) 70000 \
    0x00 $((40 * M)) $M \
    0xf6 $((64 * M - 512)) 512 \
    0x5a 0 512

run_case c64k-32m 32M "-o cluster_size=64k" \
    0x11 0 65536 \
    0x22 100000 300000 \
    0x33 $((16 * M - 1)) 2 \
    0x44 $((32 * M - 65536)) 65536 \
    0x55 130000 10

run_case c32k-256m 256M "-o cluster_size=32k" \
    0x66 0 32768 \
    0x77 $((128 * M + 12345)) 100000 \
    0x88 $((256 * M - 4096)) 4096 \
    0x99 $((7 * M)) 5

run_case odd-size 100000K "-o cluster_size=1M" \
    0xaa $((97 * M)) $((100000 * 1024 - 97 * M)) \
    0xbb 512 512

run_case falloc 64M "-o preallocation=falloc" \
    0x12 $((3 * M)) 4096 \
    0x13 $((50 * M)) $((2 * M))
run_case full 64M "-o preallocation=full" \
    0x14 0 4096

for cs in 1M 32k; do
    name=convert-$cs
    say "$name: qemu-img convert -f raw -O parallels -o cluster_size=$cs"
    make_raw "$name.src" $((64 * M))
    qemu-img convert -f raw -O parallels -o cluster_size=$cs "$name.src" "$name.hds"
    check_qemu_image "$name" "$name.hds"
    # qemu's read must be the source itself
    rm -f "$name.ours.raw"
    if ! { "$PLOOP" export "$name.hds" "$name.ours.raw" >/dev/null && cmp "$name.ours.raw" "$name.src"; }; then
        soft_fail "$name: ploop export differs from the raw qemu converted"
    fi
    rm -f "$name.src" "$name.ours.raw"
done
finish
