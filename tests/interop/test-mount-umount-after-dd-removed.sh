#!/usr/bin/env bash
# `ploop umount DD.xml` works by the name `ploop list` shows even when that path no longer exists:
# a disk is mounted, its daemon dies (SIGKILL), and its directory is then renamed away (a
# container's private area moved or deleted during the cleanup after a crash). `ploop list` still
# shows the disk under its old descriptor path; `ploop umount OLD/DiskDescriptor.xml` must clean it
# up (exit 0): no list entry, nothing mounted at the mount point, no loop device or FUSE mount of
# its state directory. The mount state lives in a private PLOOP_RUN_DIR. Needs root, /dev/fuse and
# loop devices.
source "$(dirname "$0")/lib.sh"

export PLOOP_RUN_DIR=$WORK/run
source "$(dirname "$0")/mount_lib.sh"
mkdir run disk mnt
ploop_ok init -s 128M -t ext4 disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml
mount_ok "$DD" mnt
state=$(dirname "$(field "$DD" log)")
pid=$(field "$DD" pid)
echo data >mnt/file
sync

say "kill -9 the daemon, move the disk's directory away"
kill -KILL "$pid"
for i in $(seq 100); do [ "$(field "$DD" alive)" = False ] && break; sleep 0.1; done
[ "$(field "$DD" alive)" = False ] || fail "the daemon is still listed alive 10 s after SIGKILL"
mv disk disk.moved
"$PLOOP" list | grep -qF "$DD" || fail "ploop list no longer shows $DD: $("$PLOOP" list)"

say "ploop umount $DD (the path is gone)"
rc=0
"$PLOOP" umount "$DD" >umount.out 2>&1 || rc=$?
say "-> exit $rc: $(tr '\n' '|' <umount.out)"
[ "$rc" -eq 0 ] || soft_fail "ploop umount of the listed descriptor path exited $rc: $(cat umount.out)"
nothing_left "after umount of the moved disk" "$DD" "$WORK/mnt" "$state" "$pid"
[ -z "$("$PLOOP" list)" ] || soft_fail "ploop list is not empty: $("$PLOOP" list)"

# the image itself is fine (in use: the daemon was killed)
ploop_expect 37 check disk.moved/DiskDescriptor.xml >/dev/null
finish
