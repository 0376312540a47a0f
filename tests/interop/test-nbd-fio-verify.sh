#!/usr/bin/env bash
# fio's nbd engine (libnbd) against `ploop serve`: 4 jobs of 4 KiB random writes at queue depth 16
# on disjoint 16 MiB regions (offset_increment) with crc32c verification, then a 1 MiB sequential
# write+verify job (32 MiB at 128 MiB). fio exits 0, every job reports error 0 and read back what it
# wrote. The server is then stopped (SIGINT) and restarted, and `fio --verify_only` replays the same
# jobs and finds every block intact; after the last stop `ploop check` is clean.
source "$(dirname "$0")/lib.sh"
need_tool fio python3
PY=python3   # a system python starts faster than a version manager's shim
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
fio --enghelp=nbd 2>/dev/null | grep -q uri || skip "this fio has no nbd engine"

source "$(dirname "$0")/nbd_lib.sh"
trap nbd_cleanup EXIT

mkdir disk
ploop_ok init -s 256M disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml

cat >jobs.fio <<JOBS
[global]
ioengine=nbd
uri=$URI
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0

[rand4k]
rw=randwrite
bs=4k
iodepth=16
numjobs=4
size=16M
offset=0
offset_increment=16M

[seq1m]
stonewall
rw=write
bs=1M
iodepth=4
size=32M
offset=128M
JOBS

# check_fio JSON MODE : every job error 0; in "write" mode each job read (verified) all it wrote
check_fio() {
    "$PY" - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
jobs = d["jobs"]
bad = []
if len(jobs) != 5:
    bad.append(f"{len(jobs)} jobs reported, expected 5")
for j in jobs:
    name, r, w = j["jobname"], j["read"]["io_bytes"], j["write"]["io_bytes"]
    want = (16 << 20) if name == "rand4k" else (32 << 20)
    if j["error"] != 0:
        bad.append(f"{name}: error {j['error']}")
    if r != want:
        bad.append(f"{name}: verified {r} bytes, expected {want}")
    if sys.argv[2] == "write" and w != want:
        bad.append(f"{name}: wrote {w} bytes, expected {want}")
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
PY
}

start_server "$DD"
say "fio: 4 x randwrite 4k QD16 on disjoint regions + 1 MiB sequential, crc32c verify"
rc=0
fio --output-format=json --output=fio1.json jobs.fio 2>fio1.err || rc=$?
[ "$rc" -eq 0 ] || { cat fio1.err >&2; soft_fail "fio write+verify exited $rc"; }
grep -i 'verify' fio1.err && soft_fail "fio reported verify errors"
check_fio fio1.json write || soft_fail "fio write+verify: jobs not clean"
stop_server
ploop_ok check "$DD" >/dev/null

say "after a restart of the server: fio --verify_only"
start_server "$DD"
rc=0
fio --output-format=json --output=fio2.json --verify_only jobs.fio 2>fio2.err || rc=$?
[ "$rc" -eq 0 ] || { cat fio2.err >&2; soft_fail "fio --verify_only after a restart exited $rc"; }
grep -i 'verify' fio2.err && soft_fail "fio --verify_only reported verify errors"
check_fio fio2.json verify || soft_fail "fio --verify_only: jobs not clean"
stop_server
ploop_ok check "$DD" >/dev/null
finish
