#!/usr/bin/env bash
# qemu reads back exactly what this project's ploop wrote: `qemu-img convert -f parallels -O raw`
# of each image equals the raw source byte for byte (cmp), and `qemu-img compare` agrees.
source "$(dirname "$0")/lib.sh"
need_tool qemu-img

build_project_images imgs
while read -r c; do
    img=$(image_of "imgs/$c")
    say "$c: qemu-img convert -O raw and cmp with the source"
    qemu-img convert -f parallels -O raw "$img" "imgs/$c/qemu.raw"
    cmp "imgs/$c/qemu.raw" "imgs/$c/expected.raw" ||
        soft_fail "$c: qemu-img convert output differs from the raw source"
    say "$c: qemu-img compare"
    out=$(qemu-img compare -f parallels -F raw "$img" "imgs/$c/expected.raw" 2>&1) ||
        soft_fail "$c: qemu-img compare: $out"
    # the descriptor's disk also reads the same through this project's export
    "$PLOOP" export "imgs/$c/DiskDescriptor.xml" "imgs/$c/ours.raw" >/dev/null ||
        soft_fail "$c: ploop export of DiskDescriptor.xml failed"
    cmp "imgs/$c/ours.raw" "imgs/$c/expected.raw" || soft_fail "$c: ploop export differs from the source"
    rm -f "imgs/$c/qemu.raw" "imgs/$c/ours.raw"
done <imgs/cases
finish
