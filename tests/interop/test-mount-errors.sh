#!/usr/bin/env bash
# Refused mount operations fail cleanly and leave nothing behind: mount of a missing descriptor,
# onto a regular file, onto a missing directory, of a disk with no file system, with an unknown
# --device or one whose kernel module is missing; mounting a mounted disk again (to another
# directory, to the same one, without -m:
# refused with exit 17 while the first mount keeps working: same daemon, data readable and
# writable); umount of a busy file system (refused, still mounted); umount of something not mounted
# (exit 40); `init -t ext4` with a bad size. Each prints exactly one `ploop: ` line on stderr and
# nothing on stdout, exits non-zero below 128, and (where no file system is live) changes no file
# (lib.sh expect_error). The mount state lives in a private PLOOP_RUN_DIR so that at the end
# `ploop list` is exactly empty; no loop device, mount or daemon is left, and `check` is clean.
# Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/lib.sh"

export PLOOP_RUN_DIR=$WORK/run
source "$(dirname "$0")/mount_lib.sh"
# expect_refused DESC WANT_RC ploop-args... : like expect_error without the file comparison (for
# commands run while a file system is mounted and live)
expect_refused() {
    local desc=$1 want=$2 rc=0; shift 2
    "$PLOOP" "$@" >"$WORK/r.out" 2>"$WORK/r.err" || rc=$?
    say "$desc: ploop $* -> exit $rc, stderr: $(tr '\n' '|' <"$WORK/r.err")"
    [ "$rc" -lt 128 ] || soft_fail "$desc: ploop $* crashed (exit $rc)"
    [ "$rc" -ne 0 ] || soft_fail "$desc: ploop $* succeeded"
    [ "$want" = any ] || [ "$rc" -eq "$want" ] || soft_fail "$desc: ploop $* exited $rc, expected $want"
    [ "$(wc -l <"$WORK/r.err")" -eq 1 ] && head -1 "$WORK/r.err" | grep -q '^ploop: ' ||
        soft_fail "$desc: expected one 'ploop: ' line on stderr, got: $(head -c 400 "$WORK/r.err")"
    [ ! -s "$WORK/r.out" ] || soft_fail "$desc: printed on stdout: $(head -c 200 "$WORK/r.out")"
}
# the mounts, loop devices and FUSE exports that refer to this test's directory
leftovers() {
    grep -F "$WORK" /proc/mounts || true
    losetup -a | grep -F "$WORK" || true
}

mkdir run t
cd t || exit 1
mkdir disk nofs mnt mnt2 empty
touch file
ploop_ok init -s 256M -t ext4 disk/img.hds >/dev/null
ploop_ok init -s 64M nofs/img.hds >/dev/null
DD=$WORK/t/disk/DiskDescriptor.xml
NOFS=$WORK/t/nofs/DiskDescriptor.xml
DDS+=("$DD" "$NOFS")

say "refused mounts"
expect_error "missing descriptor" mount -m mnt missing/DiskDescriptor.xml
expect_error "mount onto a regular file" mount -m file "$DD"
expect_error "mount onto a missing directory" mount -m no-such-dir "$DD"
expect_error "disk with no file system" mount -m mnt "$NOFS"
expect_error "unknown --device" mount --device bogus -m mnt "$DD"
# a front end whose kernel module is missing (the host here has neither)
[ -e /dev/ublk-control ] || expect_error "--device ublk without ublk_drv" mount --device ublk -m mnt "$DD"
[ -d /sys/module/nbd ] || expect_error "--device nbd without the nbd module" mount --device nbd -m mnt "$DD"
[ -z "$(leftovers)" ] || soft_fail "refused mounts left: $(leftovers | tr '\n' '|')"
[ -z "$("$PLOOP" list)" ] || soft_fail "ploop list after refused mounts: $("$PLOOP" list)"
ploop_ok check "$NOFS" >/dev/null

say "the same disk twice"
mount_ok "$DD" mnt
pid=$(field "$DD" pid)
state=$(dirname "$(field "$DD" log)")
echo "first mount" >mnt/hello.txt
sync
expect_refused "second mount elsewhere" 17 mount -m mnt2 "$DD"
expect_refused "second mount on the same directory" 17 mount -m mnt "$DD"
expect_refused "second mount without -m" 17 mount "$DD"
expect_refused "another disk onto the busy directory" 17 mount -m mnt "$NOFS"
! mountpoint -q mnt2 || soft_fail "something got mounted on mnt2"
[ "$(field "$DD" pid)" = "$pid" ] && [ "$(field "$DD" alive)" = True ] ||
    soft_fail "the first mount's daemon changed or died: $(entry "$DD")"
[ "$("$PLOOP" list --json | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ] ||
    soft_fail "ploop list shows not exactly one mount: $("$PLOOP" list)"
[ "$(cat mnt/hello.txt 2>&1)" = "first mount" ] || soft_fail "the first mount no longer reads its file"
head -c $((4 << 20)) /dev/urandom >mnt/after.bin && sync || soft_fail "the first mount no longer takes writes"
sum=$(sha mnt/after.bin)

say "umount of a busy file system"
( cd mnt && exec sleep 60 ) &
holder=$!
sleep 0.2
expect_refused "umount while busy" any umount -m mnt
mountpoint -q mnt || soft_fail "the busy file system was unmounted anyway"
[ "$(field "$DD" alive)" = True ] || soft_fail "after a refused umount the daemon is gone: $(entry "$DD")"
[ "$(sha mnt/after.bin 2>/dev/null)" = "$sum" ] || soft_fail "after a refused umount the data does not read back"
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
ploop_ok umount -m mnt >/dev/null
nothing_left "after umount" "$DD" "$WORK/t/mnt" "$state" "$pid"

say "umount of what is not mounted"
ploop_expect 40 umount -m empty >/dev/null 2>&1
ploop_expect 40 umount "$DD" >/dev/null 2>&1
expect_error "umount -m of a directory not mounted" umount -m empty
expect_error "umount of a disk not mounted" umount "$DD"
expect_error "umount -m of a missing directory" umount -m no-such-dir

say "init -t ext4 with a bad size"
for size in 0 abc -5 10X 99999999999999999999; do
    expect_error "init -t ext4 -s $size" init -s "$size" -t ext4 new/img.hds
    expect_error "init -t ext4 -s $size (existing dir)" init -s "$size" -t ext4 empty/img.hds
done

say "nothing left"
[ -z "$("$PLOOP" list)" ] || soft_fail "ploop list is not empty at the end: $("$PLOOP" list)"
[ "$("$PLOOP" list --json | tr -d ' \n')" = "[]" ] || soft_fail "ploop list --json is not [] at the end"
[ -z "$(leftovers)" ] || soft_fail "left at the end: $(leftovers | tr '\n' '|')"
left=$(find "$PLOOP_RUN_DIR" -mindepth 2 ! -name daemon.log)
[ -z "$left" ] || soft_fail "state files left in $PLOOP_RUN_DIR: $left"
! kill -0 "$pid" 2>/dev/null || soft_fail "the daemon (PID $pid) is still running"
ploop_ok check "$DD" >/dev/null
ploop_ok check "$NOFS" >/dev/null
finish
