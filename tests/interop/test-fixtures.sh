#!/usr/bin/env bash
# The fixtures written by other implementations (tests/fixtures, see its README) read as
# documented: `ploop export` of chain/DiskDescriptor.xml, of the chain's base alone and of
# qemu/disk.hds give the documented sha256; `ploop check` exits 0 on every fixture delta and
# descriptor and does not change them; `ploop info --json` prints valid JSON with the right size.
source "$(dirname "$0")/lib.sh"
[ -d "$FIXTURES/chain" ] || fail "fixtures not found at $FIXTURES"

CHAIN_SHA=bf3f9cd002caea333d9432adf3522ee283ee95f552fc0b892a2c35ffc47b2287
QEMU_SHA=79bd19dd3f1254d8c310c437cbd17438656138e45beb956cd27030eae6ef4a09
M=$((1 << 20))

cp -r "$FIXTURES/chain" "$FIXTURES/qemu" "$FIXTURES/v1-empty" .
chmod -R u+w .

expect_sha() {  # DISK WANT_SHA
    local out
    out=export-$(echo "$1" | tr '/' '_').raw
    say "ploop export $1 -> sha256"
    ploop_ok export "$1" "$out" >/dev/null
    local got
    got=$(sha "$out")
    [ "$got" = "$2" ] || soft_fail "ploop export $1: sha256 $got, expected $2"
    [ "$(stat -c %s "$out")" = $((64 * M)) ] || soft_fail "ploop export $1: size $(stat -c %s "$out")"
    rm -f "$out"
}
expect_sha chain/DiskDescriptor.xml "$CHAIN_SHA"
expect_sha qemu/disk.hds "$QEMU_SHA"
ZERO64M_SHA=3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351   # 64 MiB of zeros
expect_sha v1-empty/DiskDescriptor.xml "$ZERO64M_SHA"

# the base alone reads [0,2M) 0xa1 and [10M,11M) 0xb2
truncate -s $((64 * M)) base.want
fill base.want 0 $((2 * M)) 0xa1
fill base.want $((10 * M)) $M 0xb2
expect_sha chain/root.hdd "$(sha base.want)"

for f in chain/root.hdd "chain/root.hdd.{ae0b1c9f-2600-42e6-b369-5806da621702}" chain/DiskDescriptor.xml \
         qemu/disk.hds v1-empty/root.hdd v1-empty/DiskDescriptor.xml; do
    say "ploop check $f"
    before=$(snapshot_dir .)
    rc=0
    "$PLOOP" check "$f" || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "ploop check $f exited $rc"
    after=$(snapshot_dir .)
    [ "$before" = "$after" ] || soft_fail "ploop check $f (without -r) changed a file"

    say "ploop info --json $f"
    rc=0
    "$PLOOP" info --json "$f" >info.json || rc=$?
    [ "$rc" -eq 0 ] || soft_fail "ploop info --json $f exited $rc"
    size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["size"])' info.json) ||
        soft_fail "ploop info --json $f: not valid JSON with a size"
    [ "${size:-}" = $((64 * M)) ] || soft_fail "ploop info --json $f: size ${size:-?}"
    if command -v jq >/dev/null; then
        jq -e '.deltas | length >= 1' info.json >/dev/null || soft_fail "ploop info --json $f: no deltas"
    fi
done

n=$("$PLOOP" info --json chain/DiskDescriptor.xml | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["deltas"]))')
[ "$n" = 2 ] || soft_fail "ploop info --json chain/DiskDescriptor.xml lists $n deltas, expected 2"
finish
