#!/usr/bin/env bash
# Snapshots made and merged by this project and by OpenVZ mix:
# - v2: `ploop import` + our `ploop snapshot`; OpenVZ `ploop snapshot-list` reads our descriptor,
#   OpenVZ `ploop check -f -c` accepts both deltas, qemu-io writes into the new top, our export of
#   the descriptor equals qemu's read of the chain; our `snapshot-merge` keeps what the disk reads
#   and leaves one delta that qemu and OpenVZ find clean;
# - v1: our snapshot merged by OpenVZ `ploop snapshot-merge`, and OpenVZ's snapshot merged by ours:
#   the disk reads the same before and after.
source "$(dirname "$0")/lib.sh"
need_tool qemu-img qemu-io
need_openvz_ploop
"$PLOOP" snapshot --help >/dev/null 2>&1 || skip "this build of ploop has no snapshot command"

M=$((1 << 20))
chain_json() {  # TOP BASE
    printf 'json:{"driver":"parallels","file":{"driver":"file","filename":"%s"},"backing":{"driver":"parallels","file":{"driver":"file","filename":"%s"}}}' "$1" "$2"
}
top_of() { find "$1" -maxdepth 1 -name '*.{*}' | head -1; }
ovz_check_ok() {  # FILE WHAT
    cp "$1" ovz-copy
    local rc=0
    run_openvz_ploop check -f -c ovz-copy >ovz.out 2>&1 || rc=$?
    [ "$rc" = 0 ] || { cat ovz.out; soft_fail "$2: OpenVZ ploop check -f -c exited $rc"; }
    rm -f ovz-copy ovz.out
}

say "v2: import, our snapshot"
truncate -s $((64 * M)) src.raw
randomize src.raw 0 3000000
mkdir d
ploop_ok import -b 64 src.raw d/img.hds >/dev/null
ploop_ok snapshot d/DiskDescriptor.xml >/dev/null
top=$(top_of d)
[ -n "$top" ] || fail "our snapshot made no new delta"
out=$(run_openvz_ploop snapshot-list d/DiskDescriptor.xml 2>&1) || soft_fail "OpenVZ snapshot-list failed: $out"
[ "$(printf '%s\n' "$out" | grep -c '{')" = 2 ] || soft_fail "OpenVZ snapshot-list does not list 2 snapshots: $out"
ovz_check_ok d/img.hds "v2 base after our snapshot"
ovz_check_ok "$top" "v2 new top after our snapshot"

say "v2: qemu writes into our new top; our export equals qemu's read of the chain"
qemu-io -f parallels -c "write -P 0x77 100k 50k" -c "write -P 0x78 $((40 * M)) $M" "$top" >/dev/null
qemu-img convert -O raw "$(chain_json "$PWD/$top" "$PWD/d/img.hds")" want.raw
ploop_ok export d/DiskDescriptor.xml got.raw >/dev/null
cmp got.raw want.raw || soft_fail "our export of the snapshot chain differs from qemu's read"

say "v2: our snapshot-merge"
ploop_ok snapshot-merge d/DiskDescriptor.xml >/dev/null
[ -z "$(top_of d)" ] || soft_fail "the merged delta is still there: $(top_of d)"
rm -f got.raw
ploop_ok export d/DiskDescriptor.xml got.raw >/dev/null
cmp got.raw want.raw || soft_fail "snapshot-merge changed what the disk reads"
qemu_check_clean d/img.hds || soft_fail "qemu-img check not clean after our snapshot-merge"
ovz_check_ok d/img.hds "v2 after our snapshot-merge"

say "v1: our snapshot, OpenVZ snapshot-merge"
mkdir v
ploop_ok init -v 1 -s 64M v/root.hdd >/dev/null
qemu-io -f parallels -c "write -P 0x41 0 $((2 * M))" v/root.hdd >/dev/null
ploop_ok snapshot v/DiskDescriptor.xml >/dev/null
qemu-io -f parallels -c "write -P 0x42 $M $((2 * M))" "$(top_of v)" >/dev/null
ploop_ok export v/DiskDescriptor.xml v.want >/dev/null
run_openvz_ploop snapshot-merge v/DiskDescriptor.xml >ovz.out 2>&1 || { cat ovz.out; soft_fail "OpenVZ snapshot-merge of our snapshot failed"; }
ploop_ok export v/DiskDescriptor.xml v.got >/dev/null
cmp v.got v.want || soft_fail "after OpenVZ merged our snapshot the disk reads differently"
ploop_ok check v/DiskDescriptor.xml >/dev/null

say "v1: OpenVZ snapshot, our snapshot-merge"
mkdir w
ploop_ok init -v 1 -s 64M w/root.hdd >/dev/null
qemu-io -f parallels -c "write -P 0x41 0 $((2 * M))" w/root.hdd >/dev/null
run_openvz_ploop snapshot w/DiskDescriptor.xml >ovz.out 2>&1 || { cat ovz.out; fail "setup: OpenVZ snapshot failed"; }
qemu-io -f parallels -c "write -P 0x42 $M $((2 * M))" "$(top_of w)" >/dev/null
ploop_ok export w/DiskDescriptor.xml w.want >/dev/null
ploop_ok snapshot-merge w/DiskDescriptor.xml >/dev/null
ploop_ok export w/DiskDescriptor.xml w.got >/dev/null
cmp w.got w.want || soft_fail "after our merge of OpenVZ's snapshot the disk reads differently"
ovz_check_ok w/root.hdd "v1 after our merge of OpenVZ's snapshot"
qemu_check_clean w/root.hdd || soft_fail "qemu-img check not clean after our merge of OpenVZ's snapshot"
finish
