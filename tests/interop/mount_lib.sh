# Helpers shared by the test-mount-*.sh scripts: the checks every such test needs first (root,
# /dev/fuse, loop devices, losetup/mountpoint/python3: the test skips, saying which is missing),
# remembering the disks a test mounts, and cleaning them up (umount, loop devices, daemons)
# whatever happens. Sourced after lib.sh.
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

