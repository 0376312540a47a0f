#!/usr/bin/env bash
# The v2 header's format extension offset (byte 56, u64 sectors) pointing somewhere that holds no
# format extension: qemu refuses to open such an image ("Wrong parallels Format Extension
# magic"). `ploop check -r` must leave an image qemu opens and finds clean, with the same data,
# and a second `ploop check` must exit 0. When the offset points at a cluster that the BAT maps
# (guest data would be read as an extension, and anything writing the extension would overwrite
# guest data) plain `ploop check` must report an error (exit 11), as it does for two BAT entries
# sharing a cluster. Cases: past EOF (0xFFFFFFFF), inside the header/BAT, at a data cluster, at an
# unused zero-filled cluster appended to the file.
source "$(dirname "$0")/lib.sh"
need_tool qemu-img

truncate -s 256M src.raw
randomize src.raw 0 100000
mkdir d && ploop_ok import -b 64 src.raw d/img.hds >/dev/null     # BAT in clusters 0-1, data from 2
[ "$(read_u32 d/img.hds 48)" = 128 ] || fail "setup: expected the data area at sector 128"
[ "$(read_u32 d/img.hds 64)" = 2 ] || fail "setup: expected BAT entry 0 = cluster 2"

# ext_case NAME EXT_SECTORS MUST_ERROR(0|1) [append]   (with append, EXT "last" = the new cluster)
ext_case() {
    local name=$1 ext=$2 must_error=$3 append=${4:-}
    cp d/img.hds "$name.hds"
    if [ -n "$append" ]; then
        truncate -s +32K "$name.hds"
        [ "$ext" != last ] || ext=$(( $(stat -c %s "$name.hds") / 512 - 64 ))
    fi
    patch_u64 "$name.hds" 56 "$ext"
    local before rc=0
    qemu-img check -f parallels "$name.hds" >/dev/null 2>&1 || rc=$?
    [ "$rc" -ne 0 ] || fail "setup: qemu opens $name.hds without complaint"

    say "$name: ploop check"
    rc=0
    before=$(sha "$name.hds")
    "$PLOOP" check "$name.hds" || rc=$?
    [ "$rc" -lt 128 ] || soft_fail "$name: ploop check crashed (exit $rc)"
    [ "$(sha "$name.hds")" = "$before" ] || soft_fail "$name: ploop check without -r changed the image"
    if [ "$must_error" = 1 ] && [ "$rc" -ne 11 ]; then
        soft_fail "$name: ploop check exited $rc, expected 11: the extension offset points at guest data (cluster $((ext / 64)))"
    fi

    say "$name: ploop check -r"
    rc=0
    "$PLOOP" check -r "$name.hds" || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: ploop check -r exited $rc"
    rc=0
    "$PLOOP" check "$name.hds" >/dev/null || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "$name: second ploop check exited $rc"
    qemu_check_clean "$name.hds" || soft_fail "$name: qemu-img cannot use the image after ploop check -r"
    rm -f "$name.raw"
    if ! { "$PLOOP" export "$name.hds" "$name.raw" >/dev/null && cmp "$name.raw" src.raw; }; then
        soft_fail "$name: the disk does not read the source after ploop check -r"
    fi
    rm -f "$name.raw"
}

ext_case past-eof      0xFFFFFFFF 0
ext_case in-bat        64         0
ext_case data-cluster  128        1
ext_case unused-zeros  last       0 append
finish
