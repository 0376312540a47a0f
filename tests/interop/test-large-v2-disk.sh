#!/usr/bin/env bash
# A v2 disk beyond 2 TiB (3 TiB: 64-bit size field, guest sectors above 2^32, a 12 MiB BAT):
# qemu sees the right virtual size and finds the fresh image clean (apart from qemu 7.2's own
# quirk, see qemu_check_clean), OpenVZ's check accepts it, qemu-io writes above 2 TiB and near the
# end are read back by `ploop export` at the right offsets, and the export stays sparse.
source "$(dirname "$0")/lib.sh"
need_tool qemu-img qemu-io

T3=$((3 << 40))
mkdir d
ploop_ok init -s 3T d/img.hds >/dev/null
say "qemu-img info / check"
got=$(qemu-img info -f parallels --output=json d/img.hds | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
[ "$got" = "$T3" ] || soft_fail "qemu-img info virtual-size $got, expected $T3"
qemu_check_clean d/img.hds || soft_fail "qemu-img check not clean on a fresh 3 TiB image"
if [ -x "$OPENVZ_PLOOP" ]; then
    say "OpenVZ ploop check -f -c"
    cp d/img.hds ovz.hds
    rc=0
    run_openvz_ploop check -f -c ovz.hds >ovz.out 2>&1 || rc=$?
    [ "$rc" = 0 ] || { cat ovz.out; soft_fail "OpenVZ ploop check -f -c exited $rc on a fresh 3 TiB image"; }
    rm -f ovz.hds
fi
got=$("$PLOOP" info --json d/DiskDescriptor.xml | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')
[ "$got" = "$T3" ] || soft_fail "ploop info --json size $got, expected $T3"

OFF1=$(( (1 << 41) + 4096 ))      # just above 2 TiB: sector 2^32 + 8
OFF2=$(( T3 - 5 * (1 << 20) + 777 ))
OFF3=$(( T3 - 512 ))              # the last sector
qemu-io -f parallels -c "write -P 0x5d $OFF1 512" -c "write -P 0x5c $OFF2 3000" -c "write -P 0x5e $OFF3 512" \
    d/img.hds >/dev/null
say "ploop check and export after qemu wrote above 2 TiB"
rc=0
"$PLOOP" check d/img.hds >/dev/null || rc=$?
[ "$rc" = 0 ] || soft_fail "ploop check exited $rc"
ploop_ok export d/DiskDescriptor.xml out.raw >/dev/null
[ "$(stat -c %s out.raw)" = "$T3" ] || soft_fail "export size $(stat -c %s out.raw), expected $T3"
region() {  # OFF LEN BYTE : compare out.raw at OFF with LEN copies of BYTE, and qemu's read
    local off=$1 len=$2 byte=$3
    dd if=out.raw bs=64K iflag=skip_bytes,count_bytes skip="$off" count="$len" status=none >got.bin
    head -c "$len" /dev/zero | tr '\0' "\\$(printf '%03o' "$byte")" >want.bin
    cmp got.bin want.bin || soft_fail "export at offset $off does not hold $len bytes of $byte"
}
region "$OFF1" 512 0x5d
region "$OFF2" 3000 0x5c
region "$OFF3" 512 0x5e
region $(( OFF1 - 4096 )) 4096 0     # the rest of those clusters reads zeros
region $(( OFF2 + 3000 )) 65536 0
used=$(( $(stat -c %b out.raw) * $(stat -c %B out.raw) ))
[ "$used" -le $((3 << 20)) ] || soft_fail "export of a 3 TiB disk with 3 clusters of data occupies $used bytes"
finish
