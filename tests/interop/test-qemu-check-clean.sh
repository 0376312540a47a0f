#!/usr/bin/env bash
# Images written by this project's ploop (init v2 and v1 at several cluster sizes; import of a raw
# disk with data, written zeros and holes) pass `qemu-img check -f parallels` with no error and
# no leak, and qemu sees the expected virtual size.
source "$(dirname "$0")/lib.sh"
need_tool qemu-img

build_project_images imgs
while read -r c; do
    img=$(image_of "imgs/$c")
    say "$c: qemu-img check -f parallels"
    qemu_check_clean "$img" || soft_fail "$c: qemu-img check is not clean"
    want=$(stat -c %s "imgs/$c/expected.raw")
    got=$(qemu-img info -f parallels --output=json "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    [ "$got" = "$want" ] || soft_fail "$c: qemu-img info virtual-size $got, expected $want"
    # this project's own check agrees
    "$PLOOP" check "$img" >/dev/null || soft_fail "$c: ploop check exited $?"
done <imgs/cases
finish
