#!/usr/bin/env bash
# OpenVZ's tools work on this project's DiskDescriptor.xml, and this project reads what they write:
# `ploop init -v 1` (ours) + qemu-io data, then OpenVZ `ploop snapshot` adds a top delta and
# rewrites the descriptor, qemu-io writes into the top delta; our `ploop check DD.xml` exits 0,
# our `ploop info --json` shows both deltas, our `ploop export DD.xml` equals qemu's read of the
# chain; then OpenVZ `ploop snapshot-merge` merges offline and our export still reads the same.
# (OpenVZ 1.15 cannot snapshot a v2 image without its kernel module, so this uses v1.)
source "$(dirname "$0")/lib.sh"
need_openvz_ploop
need_tool qemu-img qemu-io

M=$((1 << 20))
mkdir d
ploop_ok init -v 1 -s 64M d/root.hdd >/dev/null
qemu-io -f parallels -c "write -P 0xa1 0 $((2 * M))" -c "write -P 0xb2 $((10 * M)) 5000" d/root.hdd >/dev/null

say "OpenVZ ploop snapshot on our descriptor"
run_openvz_ploop snapshot d/DiskDescriptor.xml >/dev/null 2>&1 || fail "OpenVZ ploop snapshot exited $?"
top=$(find d -name 'root.hdd.{*}' | head -1)
[ -n "$top" ] || fail "OpenVZ ploop snapshot made no delta"
qemu-io -f parallels -c "write -P 0xc3 $((M + 4096)) 8192" -c "write -P 0xd4 $((20 * M)) $M" \
    -c "write -P 0xe5 $((64 * M - 512)) 512" "$top" >/dev/null

chain_json() {  # TOP BASE -> qemu json: filename of the chain
    printf 'json:{"driver":"parallels","file":{"driver":"file","filename":"%s"},"backing":{"driver":"parallels","file":{"driver":"file","filename":"%s"}}}' "$1" "$2"
}
qemu-img convert -O raw "$(chain_json "$PWD/$top" "$PWD/d/root.hdd")" want.raw

say "our ploop check and info on the two-delta descriptor"
ploop_ok check d/DiskDescriptor.xml >/dev/null
n=$("$PLOOP" info --json d/DiskDescriptor.xml | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["deltas"]))')
[ "$n" = 2 ] || soft_fail "ploop info --json lists $n deltas, expected 2"

say "our ploop export of the chain equals qemu's read of it"
ploop_ok export d/DiskDescriptor.xml got.raw >/dev/null
cmp got.raw want.raw || soft_fail "ploop export of the OpenVZ snapshot chain differs from qemu"

say "OpenVZ ploop snapshot-merge, then our export again"
run_openvz_ploop snapshot-merge d/DiskDescriptor.xml >/dev/null 2>&1 || fail "OpenVZ ploop snapshot-merge exited $?"
ploop_ok check d/DiskDescriptor.xml >/dev/null
ploop_ok export d/DiskDescriptor.xml merged.raw >/dev/null
cmp merged.raw want.raw || soft_fail "ploop export after OpenVZ snapshot-merge differs"
qemu_check_clean d/root.hdd || soft_fail "qemu-img check not clean on the merged image"
finish
