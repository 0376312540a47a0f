#!/usr/bin/env bash
# An image left "in use" (header byte 44 = the kernel's magic, as after a crash): `ploop check`
# exits 37 and changes nothing; `ploop check -r` clears the flag (exit 0) so that a second check
# exits 0, qemu-img check (which calls it an error before) is clean and OpenVZ `ploop check -f`
# exits 0 (it exits 37 on the flagged copy); the data reads the same throughout.
source "$(dirname "$0")/lib.sh"

truncate -s 64M src.raw
randomize src.raw 0 100000
mkdir d && ploop_ok import -b 64 src.raw d/img.hds >/dev/null
patch_u32 d/img.hds 44 0x746F6E59   # "Ynot", CIF in-use magic

if command -v qemu-img >/dev/null; then
    rc=0
    qemu-img check -f parallels d/img.hds >/dev/null 2>&1 || rc=$?
    [ "$rc" -ne 0 ] || fail "setup: qemu-img check does not notice the in-use flag"
fi
if [ -x "$OPENVZ_PLOOP" ]; then
    cp d/img.hds ovz-before.hds
    rc=0
    run_openvz_ploop check -f ovz-before.hds >/dev/null 2>&1 || rc=$?
    [ "$rc" = 37 ] || say "note: OpenVZ ploop check -f on the flagged image exited $rc (37 expected)"
fi

before=$(sha d/img.hds)
say "ploop check on the flagged image exits 37"
rc=0
"$PLOOP" check d/img.hds || rc=$?
[ "$rc" = 37 ] || soft_fail "ploop check exited $rc on an in-use image, expected 37"
[ "$(sha d/img.hds)" = "$before" ] || soft_fail "ploop check without -r changed the image"
say "ploop info reports it"
"$PLOOP" info --json d/img.hds | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["deltas"][0]["in_use"] is True' ||
    soft_fail "ploop info --json does not report in_use"
ploop_ok export d/img.hds flagged.raw >/dev/null
cmp flagged.raw src.raw || soft_fail "export of the in-use image differs from the source"

say "ploop check -r clears it"
rc=0
"$PLOOP" check -r d/img.hds || rc=$?
[ "$rc" = 0 ] || soft_fail "ploop check -r exited $rc"
[ "$(read_u32 d/img.hds 44)" = 0 ] || soft_fail "in-use field is $(read_u32 d/img.hds 44) after check -r"
rc=0
"$PLOOP" check d/img.hds >/dev/null || rc=$?
[ "$rc" = 0 ] || soft_fail "second ploop check exited $rc"
if command -v qemu-img >/dev/null; then
    qemu_check_clean d/img.hds || soft_fail "qemu-img check not clean after ploop check -r"
fi
if [ -x "$OPENVZ_PLOOP" ]; then
    cp d/img.hds ovz-after.hds
    rc=0
    run_openvz_ploop check -f ovz-after.hds >ovz.out 2>&1 || rc=$?
    [ "$rc" = 0 ] || { cat ovz.out; soft_fail "OpenVZ ploop check -f exited $rc after ploop check -r"; }
fi
ploop_ok export d/img.hds repaired.raw >/dev/null
cmp repaired.raw src.raw || soft_fail "export after check -r differs from the source"
finish
