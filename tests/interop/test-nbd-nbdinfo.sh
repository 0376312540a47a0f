#!/usr/bin/env bash
# `ploop serve` seen by libnbd's nbdinfo: `nbdinfo --json` reports the export size, the block
# sizes (minimum 1, preferred 4096, maximum 32 MiB), can_flush/fua/trim/zero/fast_zero/df/
# multi_conn/cache, the base:allocation meta context and a writable export; with `serve -r`,
# is_read_only is true (and trim/zero/fua are not offered). `nbdinfo --map` shows one hole over an
# unwritten disk and data exactly over the clusters written (with qemu-io) afterwards. After each
# server is stopped with SIGINT, `ploop check` is clean.
source "$(dirname "$0")/lib.sh"
need_tool nbdinfo qemu-io python3
PY=python3   # a system python starts faster than a version manager's shim
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

source "$(dirname "$0")/nbd_lib.sh"
trap nbd_cleanup EXIT

# json_field FILE KEY : the field of the first export of an `nbdinfo --json` output
json_field() {
    "$PY" -c 'import json,sys; v=json.load(open(sys.argv[1]))["exports"][0][sys.argv[2]]; print(json.dumps(v))' "$1" "$2"
}
expect_field() { # FILE KEY VALUE(JSON)
    local got
    got=$(json_field "$1" "$2") || { soft_fail "nbdinfo --json has no $2"; return; }
    [ "$got" = "$3" ] || soft_fail "nbdinfo --json ($1): $2 is $got, expected $3"
}

SIZE=$((256 << 20))
mkdir disk
ploop_ok init -s 256M disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml

say "read-write export: nbdinfo --json"
start_server "$DD"
grep -q "^serving .* at nbd+unix:///?socket=$SOCK\$" "$WORK/serve.log" ||
    soft_fail "serve did not print 'serving DISK at <uri>': $(cat "$WORK/serve.log")"
nbdinfo --json "$URI" >rw.json || fail "nbdinfo --json failed"
cat rw.json
expect_field rw.json export-size "$SIZE"
expect_field rw.json block_size_minimum 1
expect_field rw.json block_size_preferred 4096
expect_field rw.json block_size_maximum $((32 << 20))
for f in can_flush can_fua can_trim can_zero can_fast_zero can_df can_multi_conn can_cache; do
    expect_field rw.json "$f" true
done
expect_field rw.json is_read_only false
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["structured"] is True; assert "base:allocation" in d["exports"][0]["contexts"]' rw.json ||
    soft_fail "nbdinfo: no structured replies or no base:allocation context"

say "nbdinfo --map on an unwritten disk: one hole"
nbdinfo --map "$URI" >map0.txt || soft_fail "nbdinfo --map failed"
cat map0.txt
# "offset length type description": a single extent 0..SIZE, type 3 (hole,zero)
read -r off len typ desc <map0.txt || true
[ "$(wc -l <map0.txt)" -eq 1 ] && [ "$off" = 0 ] && [ "$len" = "$SIZE" ] && [ "$typ" = 3 ] ||
    soft_fail "unwritten disk: expected one hole,zero extent 0 $SIZE, got: $(tr '\n' '|' <map0.txt)"

say "write two ranges with qemu-io, then nbdinfo --map shows data there"
qemu-io -f raw "$URI" -c 'write -P 0x55 1M 64k' -c 'write -P 0x66 100M 4k' -c flush >/dev/null ||
    soft_fail "qemu-io write failed"
nbdinfo --map "$URI" >map1.txt || soft_fail "nbdinfo --map failed"
cat map1.txt
# with 1 MiB clusters: data exactly on [1M,2M) and [100M,101M), holes elsewhere
"$PY" - map1.txt "$SIZE" <<'EOF' || soft_fail "nbdinfo --map after writes is not as expected"
import sys
size = int(sys.argv[2])
ext = []
for line in open(sys.argv[1]):
    f = line.split()
    ext.append((int(f[0]), int(f[1]), int(f[2])))
pos = 0
for off, ln, t in ext:
    assert off == pos, f"gap or overlap at {off}"
    pos += ln
assert pos == size, f"map covers {pos}, not {size}"
def typ(at):
    for off, ln, t in ext:
        if off <= at < off + ln:
            return t
data = [(1 << 20, 2 << 20), (100 << 20, 101 << 20)]
for a, b in data:
    for at in (a, b - 1):
        assert typ(at) == 0, f"{at} should be data, type {typ(at)}"
for at in (0, (1 << 20) - 1, 2 << 20, (50 << 20), (101 << 20), size - 1):
    assert typ(at) & 1, f"{at} should be a hole, type {typ(at)}"
EOF
stop_server
ploop_ok check "$DD" >/dev/null

say "read-only export (serve -r): nbdinfo --json"
start_server -r "$DD"
nbdinfo --json "$URI" >ro.json || fail "nbdinfo --json (read-only) failed"
expect_field ro.json is_read_only true
expect_field ro.json export-size "$SIZE"
expect_field ro.json can_flush true
expect_field ro.json can_trim false
expect_field ro.json can_zero false
# the data written before is still there, writes are refused
qemu-io -f raw -r "$URI" -c 'read -P 0x55 1M 64k' -c 'read -P 0x66 100M 4k' >/dev/null ||
    soft_fail "read-only export does not read the data written before"
if qemu-io -f raw "$URI" -c 'write -P 0x77 0 4k' >qio.out 2>&1 && ! grep -qi 'error\|denied\|failed\|read-only' qio.out; then
    soft_fail "a write to the read-only export succeeded: $(cat qio.out)"
fi
stop_server
ploop_ok check "$DD" >/dev/null
finish
