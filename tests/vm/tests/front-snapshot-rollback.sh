#!/usr/bin/env bash
# Snapshot and rollback between mounts through one front end: write A, umount, `ploop snapshot
# -u GUID` (listed by snapshot-list --json), mount, change A and write B, umount, check,
# `snapshot-switch -u GUID`, mount: A as it was, B gone.
source "$(dirname "$0")/lib.sh"
GUID='{0e5b0c1a-7c1d-4a9e-9d2f-5a6b7c8d9e01}'

new_disk 256M
mount_disk "$DD" mnt
write_tree mnt
head -c $((8 << 20)) /dev/urandom >mnt/a.bin
sync
checksums mnt >before
umount_disk "$DD"

say "snapshot $GUID"
ploop_ok snapshot -u "$GUID" "$DD" >/dev/null
[[ $(ploop_ok snapshot-list --json "$DD") == *"$GUID"* ]] ||
    fail "snapshot-list --json does not list $GUID"

say "change the disk on top of the snapshot"
mount_disk "$DD" mnt
head -c $((8 << 20)) /dev/urandom >mnt/a.bin
head -c $((4 << 20)) /dev/urandom >mnt/b.bin
rm -rf mnt/tree/dir2
sync
umount_disk "$DD"
ploop_ok check "$DD" >/dev/null

say "snapshot-switch back to $GUID"
ploop_ok snapshot-switch -u "$GUID" "$DD" >/dev/null
mount_disk "$DD" mnt
[ ! -e mnt/b.bin ] || soft_fail "b.bin, written after the snapshot, is still there"
checksums mnt >after
diff before after >/dev/null || soft_fail "contents differ from the snapshot: $(diff before after | head -10)"
umount_disk "$DD"
ploop_ok check "$DD" >/dev/null
finish
