#!/usr/bin/env bash
# `ploop mount` / `ploop umount` round trip of an ext4 disk: `init -t ext4`, `mount -m DIR` (FUSE
# export + loop device, detached daemon), a tree of files, a symlink and a 64 MiB file written and
# synced, `umount -m DIR`; nothing is left (no `ploop list` entry for the disk, no mount at DIR, no
# loop device or FUSE mount of its state directory, daemon gone), `ploop check` is clean and
# `e2fsck -fn` on `ploop export` of the disk finds nothing. Mounted again: every file has the same
# sha256; `umount DD.xml` (by descriptor this time) leaves nothing and `check` is clean.
# Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/lib.sh"
need_tool e2fsck sha256sum

source "$(dirname "$0")/mount_lib.sh"
mkdir disk mnt
ploop_ok init -s 512M -t ext4 disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml
ploop_ok check "$DD" >/dev/null

say "mount, write a tree and a 64 MiB file, sync"
mount_ok "$DD" mnt
e=$(entry "$DD")
say "ploop list --json: $e"
state=$(dirname "$(field "$DD" log)")
pid=$(field "$DD" pid)
[ "$(field "$DD" alive)" = True ] || soft_fail "ploop list: the daemon is not alive right after mount"
[ "$(field "$DD" front)" = fuse ] || soft_fail "ploop list: front $(field "$DD" front), expected fuse"
[ "$(field "$DD" mountpoint)" = "$WORK/mnt" ] || soft_fail "ploop list: mountpoint $(field "$DD" mountpoint)"
dev=$(field "$DD" device)
grep -q "^$dev $WORK/mnt ext4 " /proc/mounts || soft_fail "/proc/mounts has no ext4 on $dev at $WORK/mnt"
for d in a a/b a/b/c d e/f; do
    mkdir -p "mnt/tree/$d"
    for n in 1 2 3 4; do head -c $((RANDOM * 2 + n)) /dev/urandom >"mnt/tree/$d/f$n"; done
done
: >mnt/tree/empty
ln -s a/b/c/f1 mnt/tree/link
head -c $((64 << 20)) /dev/urandom >mnt/big.bin
(cd mnt && find tree big.bin -type f -print0 | sort -z | xargs -0 sha256sum) >written.sha256
sync

say "umount -m"
ploop_ok umount -m mnt >/dev/null
nothing_left "after umount -m" "$DD" "$WORK/mnt" "$state" "$pid"
ploop_ok check "$DD" >/dev/null
ploop_ok export "$DD" exported.raw >/dev/null
e2fsck -fn exported.raw >e2fsck.out 2>&1 || { cat e2fsck.out >&2; soft_fail "e2fsck -fn on the exported disk is not clean"; }
rm -f exported.raw

say "mount again: everything intact"
mount_ok "$DD" mnt
pid=$(field "$DD" pid)
(cd mnt && sha256sum -c --quiet "$WORK/written.sha256") || soft_fail "files changed across umount/mount"
[ "$(readlink mnt/tree/link)" = a/b/c/f1 ] || soft_fail "the symlink changed: $(readlink mnt/tree/link)"
[ -f mnt/tree/empty ] && [ ! -s mnt/tree/empty ] || soft_fail "the empty file is gone or not empty"
ploop_ok umount "$DD" >/dev/null
nothing_left "after umount DD" "$DD" "$WORK/mnt" "$state" "$pid"
ploop_ok check "$DD" >/dev/null
finish
