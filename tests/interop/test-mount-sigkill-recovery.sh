#!/usr/bin/env bash
# Recovery after the mount daemon is killed with SIGKILL: `init -t ext4`, mount, write and sync a
# file, `kill -9` the daemon (PID from `ploop list --json`); `ploop list` then shows it dead
# (alive false, "DAEMON DEAD"); `ploop umount -m DIR` cleans up: nothing mounted at DIR, no loop
# device left on the state directory (`losetup -a`), no FUSE mount left (/proc/mounts), no list
# entry; `ploop check` says the image is in use (exit 37); the next `ploop mount` works (it checks
# and repairs) and the synced file is intact; after the final umount `check` is clean.
# Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/lib.sh"
need_tool sha256sum

source "$(dirname "$0")/mount_lib.sh"
mkdir disk mnt
ploop_ok init -s 256M -t ext4 disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml

say "mount, write and sync a file"
mount_ok "$DD" mnt
state=$(dirname "$(field "$DD" log)")
pid=$(field "$DD" pid)
dev=$(field "$DD" device)
[ -n "$pid" ] && [ "$pid" -gt 1 ] || fail "no daemon PID in ploop list --json: $(entry "$DD")"
mkdir mnt/dir
head -c $((8 << 20)) /dev/urandom >mnt/dir/synced.bin
echo "synced text" >mnt/synced.txt
sync
(cd mnt && sha256sum dir/synced.bin synced.txt) >synced.sha256

say "kill -9 the daemon (PID $pid)"
kill -KILL "$pid"
for i in $(seq 100); do [ "$(field "$DD" alive)" = False ] && break; sleep 0.1; done
[ "$(field "$DD" alive)" = False ] || soft_fail "ploop list --json still says the daemon is alive 10 s after SIGKILL: $(entry "$DD")"
"$PLOOP" list | grep -F "$DD" | grep -q 'DAEMON DEAD' ||
    soft_fail "ploop list does not mark the disk's daemon dead: $("$PLOOP" list | grep -F "$DD")"

say "umount -m after the daemon died"
rc=0
timeout 120 "$PLOOP" umount -m mnt >umount.out 2>&1 || rc=$?
[ "$rc" -eq 0 ] || soft_fail "ploop umount -m after SIGKILL exited $rc: $(cat umount.out)"
nothing_left "after umount of a dead daemon" "$DD" "$WORK/mnt" "$state" "$pid"
! losetup -a | grep -F "$state/" >/dev/null || soft_fail "losetup -a still shows a loop device on $state: $(losetup -a | grep -F "$state/")"
! grep fuse /proc/mounts | grep -F "$state" >/dev/null || soft_fail "a FUSE mount of $state is left: $(grep fuse /proc/mounts | grep -F "$state")"
[ ! -e "$state/state.json" ] || soft_fail "$state/state.json is left"

say "check says in use (37)"
ploop_expect 37 check "$DD" >/dev/null

say "mount again: repaired, the synced data intact"
mount_ok "$DD" mnt
pid=$(field "$DD" pid)
(cd mnt && sha256sum -c --quiet "$WORK/synced.sha256") || soft_fail "the synced files are not intact after the crash"
ploop_ok umount -m mnt >/dev/null
nothing_left "after the final umount" "$DD" "$WORK/mnt" "$state" "$pid"
ploop_ok check "$DD" >/dev/null
finish
