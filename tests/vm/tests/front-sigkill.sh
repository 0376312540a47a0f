#!/usr/bin/env bash
# SIGKILL of the daemon during writes, through one front end: write and sync a tree and 8 MiB,
# start writing more, `kill -9` the daemon (PID from `ploop list --json`). Nothing may hang:
# `ploop umount` works and leaves no mount, no list entry and no daemon, and the writer has ended
# by then (errors expected; if it is still blocked 30 s after the kill, a NOTE says so); the next
# mount (which checks and repairs) shows the synced files intact.
source "$(dirname "$0")/lib.sh"

new_disk 256M
mount_disk "$DD" mnt
write_tree mnt
head -c $((8 << 20)) /dev/urandom >mnt/synced.bin
sync
checksums mnt >synced
pid=$(field "$DD" pid)
[ -n "$pid" ] && [ "$pid" -gt 1 ] || fail "no daemon PID in ploop list --json: $(entry "$DD")"
head -c $((4 << 20)) /dev/urandom >chunk

say "writing, then kill -9 the daemon (PID $pid)"
(for i in $(seq 1 100); do cat chunk >"$WORK/mnt/busy.$i" || exit; sync "$WORK/mnt/busy.$i" || exit; done) \
    >writer.out 2>&1 &
writer=$!
sleep 3
kill -KILL "$pid" || fail "kill -9 $pid failed"
# The writer should soon see errors. It may also stay blocked until umount takes the device
# down (a note, not a failure); but not beyond that.
for i in $(seq 1 30); do kill -0 "$writer" 2>/dev/null || break; sleep 1; done
if kill -0 "$writer" 2>/dev/null; then
    echo "NOTE: the writer is still blocked 30 s after the daemon died: $(ps -o pid,stat,args | grep -E ' (D|S) +(cat|sync) ' | head -3 | tr -s ' ')"
else
    say "the writer ended: $(tail -1 writer.out)"
fi
for i in $(seq 1 20); do [ "$(field "$DD" alive)" = false ] && break; sleep 1; done
[ "$(field "$DD" alive)" = false ] || soft_fail "ploop list --json does not show the daemon dead: $(entry "$DD")"

say "umount after the daemon died"
rc=0
timeout 120 "$PLOOP" umount -m mnt >umount.out 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "ploop umount -m after SIGKILL exited $rc: $(<umount.out)"
[ -z "$(entry "$DD")" ] || fail "ploop list still shows the disk: $(entry "$DD")"
[[ $(</proc/mounts) != *" $WORK/mnt "* ]] || fail "something is still mounted on mnt"
! kill -0 "$pid" 2>/dev/null || fail "the daemon $pid is still there"
for i in $(seq 1 30); do kill -0 "$writer" 2>/dev/null || break; sleep 1; done
! kill -0 "$writer" 2>/dev/null ||
    fail "the writer still hangs 30 s after umount: $(ps -o pid,stat,args | grep -E ' (cat|sync) ' | head -3 | tr -s ' ')"
say "umount done, the writer ended: $(tail -1 writer.out)"
say "mount again: the synced files are intact"
mount_disk "$DD" mnt
(cd mnt && sha256sum -c -s ../synced) || soft_fail "synced files differ after the crash"
umount_disk "$DD"
ploop_ok check "$DD" >/dev/null
finish
