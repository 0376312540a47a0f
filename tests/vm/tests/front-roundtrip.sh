#!/usr/bin/env bash
# ext4 round trip through one front end: init -t ext4, mount --device FRONT -m (list shows the
# front end), write a tree and a 64 MiB pattern file, sync, umount; e2fsck -fn on the device
# (attached without -m); mount again: every file is intact; umount; `ploop check` is clean.
source "$(dirname "$0")/lib.sh"

new_disk 512M
say "mount --device $FRONT, write a tree and 64 MiB"
mount_disk "$DD" mnt
write_tree mnt
head -c $((64 << 20)) /dev/urandom >mnt/pattern.bin
sync
checksums mnt >sums
umount_disk "$DD"

say "e2fsck -fn on the device"
fsck_disk "$DD"

say "mount again: contents intact"
mount_disk "$DD" mnt
(cd mnt && sha256sum -c -s ../sums) || fail "files differ after remount"
[ "$(readlink mnt/tree/link)" = dir1/file1.txt ] || fail "the symlink changed"
umount_disk "$DD"
ploop_ok check "$DD" >/dev/null
finish
