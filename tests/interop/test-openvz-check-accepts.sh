#!/usr/bin/env bash
# OpenVZ's own checker (Debian ploop 1.15, `ploop check -f -c`) accepts the images this project
# writes: init v2 and v1 at several cluster sizes, import with data (including a BAT spanning two
# clusters). It must exit 0, complain about nothing, and find nothing to rewrite (the checked copy
# stays byte-identical). The copies keep the originals' holes (cp --sparse=auto) because OpenVZ
# refuses sparse images, so this project must write them fully allocated. OpenVZ also accepts the
# DiskDescriptor.xml (`ploop check DD.xml`, `ploop snapshot-list`).
source "$(dirname "$0")/lib.sh"
need_openvz_ploop

build_project_images imgs
while read -r c; do
    img=$(image_of "imgs/$c")
    mkdir "copy-$c"
    cp --sparse=auto "imgs/$c/$(basename "$img")" "imgs/$c/DiskDescriptor.xml" "copy-$c/"
    copy="copy-$c/$(basename "$img")"
    say "$c: OpenVZ ploop check -f -c"
    rc=0
    out=$(run_openvz_ploop check -f -c "$copy" 2>&1) || rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    [ "$rc" -eq 0 ] || soft_fail "$c: OpenVZ ploop check -f -c exited $rc"
    if printf '%s\n' "$out" | grep -v '^Reopen rw ' | grep -qiE 'error|fatal|incorrect|hole|more than once|sparse|dirty|corrupt|broken|wrong'; then
        soft_fail "$c: OpenVZ ploop check complained"
    fi
    if ! cmp -s "$img" "$copy"; then
        soft_fail "$c: OpenVZ ploop check rewrote the image: $(cmp -l "$img" "$copy" | head -5 | tr '\n' ';')"
    fi
    say "$c: OpenVZ ploop check DiskDescriptor.xml and snapshot-list"
    rc=0
    out=$(run_openvz_ploop check "copy-$c/DiskDescriptor.xml" 2>&1) || rc=$?
    [ "$rc" -eq 0 ] || { printf '%s\n' "$out"; soft_fail "$c: OpenVZ ploop check DiskDescriptor.xml exited $rc"; }
    rc=0
    out=$(run_openvz_ploop snapshot-list "copy-$c/DiskDescriptor.xml" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ] || ! printf '%s\n' "$out" | grep -qF "$(basename "$img")"; then
        printf '%s\n' "$out"
        soft_fail "$c: OpenVZ ploop snapshot-list does not list the image (exit $rc)"
    fi
done <imgs/cases
finish
