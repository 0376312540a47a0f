#!/usr/bin/env bash
# Roll back a mounted file system through a snapshot: `init -t ext4`, mount, write files, umount,
# `ploop snapshot -u GUID`, mount, change a file, delete one, add new ones (including 16 MiB of
# data), umount, `snapshot-switch -u GUID`, mount: the files are exactly those of the snapshot
# (same sha256, the deleted one back, the new ones gone); `e2fsck -fn` on `ploop export` is clean
# at each step. At the end nothing is left mounted, `snapshot-list --json` shows the snapshot as
# the parent of the current top, and `check` is clean. Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/lib.sh"
need_tool e2fsck sha256sum

[ "$(id -u)" = 0 ] || skip "needs root (mount, loop devices)"
[ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ] || skip "/dev/fuse is missing or not usable"
[ -e /dev/loop-control ] || skip "no loop devices (/dev/loop-control missing)"
need_tool losetup mountpoint python3
PY=python3   # a system python starts faster than a version manager's shim
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

# --- mounted disks of this test -------------------------------------------------------------
# entry DD : this DD's object in `ploop list --json` (empty if none)
entry() {
    local out rc=0
    out=$("$PLOOP" list --json 2>&1) || rc=$?
    [ "$rc" -eq 0 ] || { soft_fail "ploop list --json exited $rc: $out"; return 0; }
    printf '%s' "$out" | "$PY" -c '
import json, os, sys
want = os.path.realpath(sys.argv[1])
text = sys.stdin.read()
try:
    entries = json.loads(text)
except ValueError:
    sys.exit("ploop list --json printed no JSON: " + text[:300])
for e in entries:
    if e["dd"] == want:
        print(json.dumps(e))' "$1" || soft_fail "ploop list --json is unreadable"
}
# field DD KEY : one field of this DD's `ploop list --json` entry
field() { entry "$1" | "$PY" -c 'import json,sys; t=sys.stdin.read().strip(); print(json.loads(t)[sys.argv[1]] if t else "")' "$2"; }

# What this test mounted, for the cleanup (which must work even if $PLOOP does not): the state
# directories and daemon PIDs, taken from what `ploop mount` printed:
#   DD: device /dev/loopN (fuse, direct I/O), mounted at DIR, daemon PID N, log /run/ploop/ID/daemon.log
STATE_DIRS=() PIDS=() DDS=()
remember() { # DD MOUNT_STDOUT_FILE
    local line pid log
    DDS+=("$1")
    line=$(head -1 "$2")
    pid=$(sed -n 's/.*, daemon PID \([0-9][0-9]*\), log .*/\1/p' <<<"$line")
    log=$(sed -n 's/.*, daemon PID [0-9]*, log \(.*\)$/\1/p' <<<"$line")
    [ -n "$pid" ] && PIDS+=("$pid")
    [ -n "$log" ] && STATE_DIRS+=("$(dirname "$log")")
    return 0
}
# loops_of STATE_DIR : loop devices whose backing file is under STATE_DIR
loops_of() { losetup -a 2>/dev/null | grep -F "($1/" | cut -d: -f1 || true; }
mount_cleanup() {
    set +e
    local d m p s l
    # the normal way first, while every loop device named in the state is still ours
    for d in "${DDS[@]}"; do
        [ -e "$d" ] && timeout 60 "$PLOOP" umount "$d" >/dev/null 2>&1
    done
    # then by force, in order: the file systems mounted under the scratch directory (noting their
    # loop devices), the loop devices over our FUSE files (while their paths still resolve), the
    # FUSE exports, our daemons
    local loops=()
    while read -r src mp fstype; do
        case "$fstype" in fuse*) continue ;; esac
        case "$src" in /dev/loop*) loops+=("$src") ;; esac
        umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null
    done < <(awk -v w="$WORK/" 'index($2, w) == 1 { print $1, $2, $3 }' /proc/mounts | sort -r -k2)
    # shellcheck disable=SC2207  # device names: no spaces
    loops+=($(loops_of "$WORK"))
    # shellcheck disable=SC2207
    for s in "${STATE_DIRS[@]}"; do loops+=($(loops_of "$s")); done
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
    for m in $(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null
    done
    for s in "${STATE_DIRS[@]}"; do
        mountpoint -q "$s/fuse" 2>/dev/null && umount -l "$s/fuse" 2>/dev/null
    done
    for p in "${PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && grep -q ploop "/proc/$p/comm" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    done
    # our state directories (logs included), unless something is still mounted there
    for s in "${STATE_DIRS[@]}"; do
        case "$s" in "${PLOOP_RUN_DIR:-/run/ploop}"/[0-9a-f]*) ;; *) continue ;; esac
        grep -qF " $s/" /proc/mounts || rm -rf "$s"
    done
    cleanup
}
trap mount_cleanup EXIT

# mount_ok DD DIR [mount options] : ploop mount -m DIR DD, which must succeed; remembers it
mount_ok() {
    local dd=$1 dir=$2; shift 2
    ploop_ok mount "$@" -m "$dir" "$dd" >"$WORK/mount.out"
    remember "$dd" "$WORK/mount.out"
    mountpoint -q "$dir" || fail "ploop mount -m $dir said yes but nothing is mounted there"
}
# nothing_left DESC DD DIR [STATE_DIR [PID]] : no list entry, no mount at DIR, no loop device on
# and no FUSE mount of the state directory, the daemon gone
nothing_left() {
    local desc=$1 dd=$2 dir=$3 s=${4:-} pid=${5:-}
    [ -z "$(entry "$dd")" ] || soft_fail "$desc: ploop list still shows $dd: $(entry "$dd")"
    [ -z "$dir" ] || ! mountpoint -q "$dir" || soft_fail "$desc: something is still mounted at $dir"
    if [ -n "$s" ]; then
        [ -z "$(loops_of "$s")" ] || soft_fail "$desc: loop device(s) still on $s: $(loops_of "$s" | tr '\n' ' ')"
        ! grep -qF " $s/fuse " /proc/mounts || soft_fail "$desc: the FUSE export $s/fuse is still mounted"
    fi
    [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null || soft_fail "$desc: the daemon (PID $pid) is still running"
}

# fsck_export DESC : e2fsck -fn on an export of the disk
fsck_export() {
    ploop_ok export "$DD" exported.raw >/dev/null
    e2fsck -fn exported.raw >e2fsck.out 2>&1 || { cat e2fsck.out >&2; soft_fail "$1: e2fsck -fn on the exported disk is not clean"; }
    rm -f exported.raw
}
tree_sums() { (cd mnt && find data -type f -print0 | sort -z | xargs -0 sha256sum); }

GUID='{0b1f5e2c-51a7-4c3e-9d6a-7f00d1ce0001}'
mkdir disk mnt
ploop_ok init -s 256M -t ext4 disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml

say "first state: write files"
mount_ok "$DD" mnt
mkdir -p mnt/data/sub
echo "version 1" >mnt/data/changed.txt
echo "I will be deleted" >mnt/data/deleted.txt
head -c 300000 /dev/urandom >mnt/data/sub/random.bin
tree_sums >before.sha256
sync
ploop_ok umount -m mnt >/dev/null
fsck_export "first state"

say "snapshot $GUID"
ploop_ok snapshot -u "$GUID" "$DD" >/dev/null

say "second state: change, delete, add"
mount_ok "$DD" mnt
echo "version 2" >mnt/data/changed.txt
rm mnt/data/deleted.txt
echo "I am new" >mnt/data/new.txt
head -c $((16 << 20)) /dev/urandom >mnt/data/sub/new-big.bin
sync
tree_sums >after.sha256
cmp -s before.sha256 after.sha256 && fail "the second state does not differ from the first"
ploop_ok umount -m mnt >/dev/null
fsck_export "second state"

say "snapshot-switch -u $GUID"
ploop_ok snapshot-switch -u "$GUID" "$DD" >/dev/null
mount_ok "$DD" mnt
state=$(dirname "$(field "$DD" log)")
pid=$(field "$DD" pid)
tree_sums >rolled.sha256
diff before.sha256 rolled.sha256 >/dev/null || soft_fail "after snapshot-switch the files differ from the snapshot: $(diff before.sha256 rolled.sha256 | tr '\n' '|')"
[ "$(cat mnt/data/changed.txt)" = "version 1" ] || soft_fail "changed.txt reads '$(cat mnt/data/changed.txt)', expected 'version 1'"
[ -f mnt/data/deleted.txt ] || soft_fail "deleted.txt did not come back"
[ ! -e mnt/data/new.txt ] || soft_fail "new.txt is still there after the rollback"
[ ! -e mnt/data/sub/new-big.bin ] || soft_fail "new-big.bin is still there after the rollback"
ploop_ok umount -m mnt >/dev/null
nothing_left "after the last umount" "$DD" "$WORK/mnt" "$state" "$pid"
fsck_export "rolled back"

"$PY" - "$GUID" <<PYEOF || soft_fail "snapshot-list --json after the switch: the current top's parent is not $GUID"
import json, subprocess, sys
snaps = json.loads(subprocess.check_output(["$PLOOP", "snapshot-list", "--json", "$DD"]))
cur = [s for s in snaps if s["current"]]
assert len(cur) == 1, snaps
assert cur[0]["parent_uuid"] == sys.argv[1], cur
assert any(s["uuid"] == sys.argv[1] for s in snaps), snaps
PYEOF
ploop_ok check "$DD" >/dev/null
finish
