#!/usr/bin/env bash
# `ploop init -v 1` writes the same bytes as OpenVZ's own `ploop init -t none` (Debian ploop 1.15,
# which makes v1 images when its kernel module is absent): identical image file and identical
# DiskDescriptor.xml (GUIDs included) for several sizes and cluster sizes, including sizes that
# are rounded up (65537K, 1 sector, 100000 sectors). Parameters OpenVZ refuses (blocksize 32, 100,
# 262144; a v1 disk of 2 TiB) are refused here too.
source "$(dirname "$0")/lib.sh"
need_openvz_ploop

same_as_openvz() {
    local args=("$@") d
    d=case$((++n))
    mkdir -p "$d/ovz" "$d/ours"
    say "init ${args[*]}"
    run_openvz_ploop init "${args[@]}" -t none "$d/ovz/root.hdd" >"$d/ovz.log" 2>&1 ||
        { cat "$d/ovz.log"; fail "setup: OpenVZ ploop init ${args[*]} failed"; }
    local rc=0
    "$PLOOP" init -v 1 "${args[@]}" "$d/ours/root.hdd" >/dev/null || rc=$?
    if [ "$rc" -ne 0 ]; then
        soft_fail "ploop init -v 1 ${args[*]} exited $rc where OpenVZ succeeds"
        return
    fi
    cmp "$d/ovz/root.hdd" "$d/ours/root.hdd" ||
        soft_fail "init ${args[*]}: image differs from OpenVZ's: $(cmp -l "$d/ovz/root.hdd" "$d/ours/root.hdd" | head -5 | tr '\n' ';')"
    diff "$d/ovz/DiskDescriptor.xml" "$d/ours/DiskDescriptor.xml" ||
        soft_fail "init ${args[*]}: DiskDescriptor.xml differs from OpenVZ's"
    rm -rf "$d"
}
both_refuse() {
    local d orc=0 rc=0
    d=case$((++n))
    mkdir -p "$d/ovz" "$d/ours"
    run_openvz_ploop init "$@" -t none "$d/ovz/root.hdd" >/dev/null 2>&1 || orc=$?
    "$PLOOP" init -v 1 "$@" "$d/ours/root.hdd" >/dev/null 2>&1 || rc=$?
    say "init $*: OpenVZ exit $orc, ours exit $rc"
    [ "$orc" -ne 0 ] || fail "setup: OpenVZ accepts init $*"
    [ "$rc" -ne 0 ] || soft_fail "ploop init -v 1 $* succeeds where OpenVZ refuses"
    [ -z "$(ls -A "$d/ours")" ] || soft_fail "ploop init -v 1 $* left files behind: $(ls "$d/ours")"
}

n=0
same_as_openvz -s 64M
same_as_openvz -s 65537K
same_as_openvz -s 100000
same_as_openvz -s 1
same_as_openvz -s 1G
same_as_openvz -s 100M -b 64
same_as_openvz -s 10G -b 256
same_as_openvz -s 1G -b 16384
same_as_openvz -s 1T
both_refuse -s 64M -b 32
both_refuse -s 64M -b 100
both_refuse -s 64M -b 262144
both_refuse -s 2T
finish
