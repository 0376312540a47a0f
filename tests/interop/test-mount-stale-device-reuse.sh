#!/usr/bin/env bash
# Cleaning up after a dead daemon must not detach a loop device that now belongs to another disk.
# Disk A is attached (`ploop mount A.xml`, device only), its daemon is killed with SIGKILL, and its
# stale loop device is detached by hand (as an administrator or a reboot-less cleanup would do),
# so the kernel hands the same /dev/loopN to disk B on its `ploop mount`. Then `ploop umount
# A.xml` (cleaning up the dead daemon's leftovers) must leave B's device alone: it stays attached
# to B's FUSE file and still reads and writes; B then unmounts cleanly and `check` of B is clean.
# The mount state lives in a private PLOOP_RUN_DIR. Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/lib.sh"

export PLOOP_RUN_DIR=$WORK/run
source "$(dirname "$0")/mount_lib.sh"
# attach_ok DD : `ploop mount DD` (device only), which must succeed; remembers it (not in a
# subshell: the cleanup needs what remember records) and sets DEV to its device
attach_ok() {
    ploop_ok mount "$1" >"$WORK/mount.out"
    remember "$1" "$WORK/mount.out"
    DEV=$(sed -n 's/.*: device \(\/dev\/loop[0-9]*\) .*/\1/p' "$WORK/mount.out")
}
backing() { losetup -nO BACK-FILE "$1" 2>/dev/null || true; }

mkdir run A B
ploop_ok init -s 64M A/img.hds >/dev/null
ploop_ok init -s 64M B/img.hds >/dev/null
A=$WORK/A/DiskDescriptor.xml
B=$WORK/B/DiskDescriptor.xml

say "attach A, kill its daemon, detach its stale loop device by hand"
attach_ok "$A"
devA=$DEV
pidA=$(field "$A" pid)
[ -n "$devA" ] && [ -n "$pidA" ] || fail "no device or PID for A: $(cat mount.out)"
kill -KILL "$pidA"
for i in $(seq 100); do [ "$(field "$A" alive)" = False ] && break; sleep 0.1; done
[ "$(field "$A" alive)" = False ] || fail "A's daemon still listed alive 10 s after SIGKILL"
losetup -d "$devA" || fail "losetup -d $devA failed"
# from here on the cleanup must not `ploop umount A`: $devA may belong to someone else
DDS=("${DDS[@]/#$A}")

say "attach B: it should get $devA again"
attach_ok "$B"
devB=$DEV
stateB=$(dirname "$(field "$B" log)")
if [ "$devB" != "$devA" ]; then
    # another process took $devA meanwhile: the scenario cannot be set up this time
    skip "B got $devB, not A's old $devA (loop devices in use by others); cannot set up the scenario"
fi
say "A's stale state names $(field "$A" device); B is attached at $devB ($(backing "$devB"))"
head -c 65536 /dev/urandom >pattern.bin
dd if=pattern.bin of="$devB" bs=64K oflag=direct status=none || fail "cannot write B's device"

say "ploop umount A (dead daemon)"
rc=0
"$PLOOP" umount "$A" >umount.out 2>&1 || rc=$?
say "ploop umount A -> exit $rc: $(tr '\n' '|' <umount.out)"
[ "$rc" -lt 128 ] || soft_fail "ploop umount A crashed (exit $rc)"
[ -z "$(entry "$A")" ] || soft_fail "A is still listed after its umount: $(entry "$A")"

back=$(backing "$devB")
[ "$back" = "$stateB/fuse/disk" ] ||
    soft_fail "umount of A detached or changed B's loop device $devB: its backing file is now '${back:-none}', expected $stateB/fuse/disk"
if dd if="$devB" of=readback.bin bs=64K count=1 iflag=direct status=none 2>dd.err; then
    cmp -s pattern.bin readback.bin || soft_fail "B's device $devB no longer reads what was written to it"
else
    soft_fail "B's device $devB can no longer be read after umount of A: $(cat dd.err)"
fi
[ "$(field "$B" alive)" = True ] || soft_fail "B's daemon is gone after umount of A"

say "umount B"
ploop_ok umount "$B" >/dev/null
nothing_left "after umount B" "$B" "" "$stateB"
ploop_ok check "$B" >/dev/null
ploop_ok export "$B" b.raw >/dev/null
cmp -s -n 65536 pattern.bin b.raw || soft_fail "B's disk does not hold what was written through its device"
finish
