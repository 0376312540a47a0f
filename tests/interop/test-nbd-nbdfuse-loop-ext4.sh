#!/usr/bin/env bash
# A real file system on `ploop serve` through clients nobody here wrote: libnbd's nbdfuse exposes
# the export as a file (DIR/nbd), a kernel loop device goes over that file, mkfs.ext4 makes a file
# system, and it is mounted and filled with a tree of small files and a 64 MiB random file, then
# sync, umount, losetup -d, fusermount3 -u, and the server is stopped (SIGINT). `ploop check` is
# clean, `e2fsck -fn` on `ploop export` of the disk finds nothing, and debugfs reads every file back
# from the exported raw with the same sha256 as written. Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/lib.sh"
need_tool nbdfuse fusermount3 losetup mkfs.ext4 e2fsck debugfs sha256sum
[ "$(id -u)" = 0 ] || skip "needs root (loop devices, mount)"
[ -c /dev/fuse ] && [ -r /dev/fuse ] && [ -w /dev/fuse ] || skip "/dev/fuse is missing or not usable"
[ -e /dev/loop-control ] || skip "no loop devices (/dev/loop-control missing)"

source "$(dirname "$0")/nbd_lib.sh"

LOOP=
FUSE_PID=
fs_cleanup() {
    set +e
    mountpoint -q "$WORK/fs" 2>/dev/null && umount "$WORK/fs" 2>/dev/null
    mountpoint -q "$WORK/fs" 2>/dev/null && umount -l "$WORK/fs" 2>/dev/null
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    mountpoint -q "$WORK/fuse" 2>/dev/null && fusermount3 -u "$WORK/fuse" 2>/dev/null
    mountpoint -q "$WORK/fuse" 2>/dev/null && fusermount3 -uz "$WORK/fuse" 2>/dev/null
    if [ -n "$FUSE_PID" ]; then kill "$FUSE_PID" 2>/dev/null; wait "$FUSE_PID" 2>/dev/null; fi
    kill_server
    cleanup
}
trap fs_cleanup EXIT

mkdir disk fuse fs
ploop_ok init -s 512M disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml
start_server "$DD"

say "nbdfuse $WORK/fuse/ $URI"
nbdfuse -P fuse.pid fuse/ "$URI" 2>nbdfuse.err &
FUSE_PID=$!
for i in $(seq 100); do [ -s fuse.pid ] && break; kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
[ -s fuse.pid ] && [ -e fuse/nbd ] || { cat nbdfuse.err >&2; fail "nbdfuse did not start"; }
[ "$(stat -c %s fuse/nbd)" = $((512 << 20)) ] || soft_fail "fuse/nbd is $(stat -c %s fuse/nbd) bytes, expected 512 MiB"

LOOP=$(losetup -f --show fuse/nbd) || fail "losetup on the nbdfuse file failed"
say "loop device $LOOP: mkfs.ext4, mount, write"
mkfs.ext4 -q -F "$LOOP" || fail "mkfs.ext4 $LOOP failed"
mount "$LOOP" fs || fail "mount $LOOP failed"
for d in a a/b a/b/c d e; do
    mkdir -p "fs/tree/$d"
    for n in 1 2 3 4 5; do head -c $((RANDOM * 3 + n)) /dev/urandom >"fs/tree/$d/f$n"; done
done
echo "hello from $TEST_NAME" >fs/tree/hello.txt
ln -s a/b/c/f1 fs/tree/link
head -c $((64 << 20)) /dev/urandom >fs/big.bin
(cd fs && find tree big.bin -type f -print0 | sort -z | xargs -0 sha256sum) >written.sha256
sync
umount fs || fail "umount of the ext4 file system failed"
losetup -d "$LOOP" || soft_fail "losetup -d $LOOP failed"
LOOP=
fusermount3 -u fuse || soft_fail "fusermount3 -u failed"
rc=0
for i in $(seq 100); do kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
wait "$FUSE_PID" || rc=$?
FUSE_PID=
[ "$rc" -eq 0 ] || soft_fail "nbdfuse exited $rc: $(cat nbdfuse.err)"
stop_server

say "ploop check, ploop export, e2fsck -fn, debugfs reads the files back"
ploop_ok check "$DD" >/dev/null
ploop_ok export "$DD" exported.raw >/dev/null
e2fsck -fn exported.raw >e2fsck.out 2>&1 || { cat e2fsck.out >&2; soft_fail "e2fsck -fn on the exported disk exited $?"; }
mkdir out
debugfs -R "rdump /tree $WORK/out" exported.raw >/dev/null 2>debugfs.err || soft_fail "debugfs rdump failed: $(cat debugfs.err)"
debugfs -R "dump /big.bin $WORK/out/big.bin" exported.raw >/dev/null 2>>debugfs.err || soft_fail "debugfs dump failed"
(cd out && sha256sum -c --quiet ../written.sha256) || soft_fail "files read back from the exported disk differ from what was written"
[ "$(readlink out/tree/link)" = a/b/c/f1 ] || soft_fail "the symlink did not survive: $(readlink out/tree/link)"
finish
