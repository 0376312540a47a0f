#!/usr/bin/env bash
# Roll back a mounted file system through a snapshot: `init -t ext4`, mount, write files, umount,
# `ploop snapshot -u GUID`, mount, change a file, delete one, add new ones (including 16 MiB of
# data), umount, `snapshot-switch -u GUID`, mount: the files are exactly those of the snapshot
# (same sha256, the deleted one back, the new ones gone); `e2fsck -fn` on `ploop export` is clean
# at each step. At the end nothing is left mounted, `snapshot-list --json` shows the snapshot as
# the parent of the current top, and `check` is clean. Needs root, /dev/fuse and loop devices.
source "$(dirname "$0")/lib.sh"
need_tool e2fsck sha256sum

source "$(dirname "$0")/mount_lib.sh"
# fsck_export DESC : e2fsck -fn on an export of the disk
fsck_export() {
    ploop_ok export "$DD" exported.raw >/dev/null
    e2fsck -fn exported.raw >e2fsck.out 2>&1 || { cat e2fsck.out >&2; soft_fail "$1: e2fsck -fn on the exported disk is not clean"; }
    rm -f exported.raw
}
tree_sums() { (cd mnt && find data -type f -print0 | sort -z | xargs -0 sha256sum); }

GUID='{0b1f5e2c-51a7-4c3e-9d6a-7f00d1ce0001}'
mkdir disk mnt
ploop_ok init -s 256M -t ext4 disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml

say "first state: write files"
mount_ok "$DD" mnt
mkdir -p mnt/data/sub
echo "version 1" >mnt/data/changed.txt
echo "I will be deleted" >mnt/data/deleted.txt
head -c 300000 /dev/urandom >mnt/data/sub/random.bin
tree_sums >before.sha256
sync
ploop_ok umount -m mnt >/dev/null
fsck_export "first state"

say "snapshot $GUID"
ploop_ok snapshot -u "$GUID" "$DD" >/dev/null

say "second state: change, delete, add"
mount_ok "$DD" mnt
echo "version 2" >mnt/data/changed.txt
rm mnt/data/deleted.txt
echo "I am new" >mnt/data/new.txt
head -c $((16 << 20)) /dev/urandom >mnt/data/sub/new-big.bin
sync
tree_sums >after.sha256
cmp -s before.sha256 after.sha256 && fail "the second state does not differ from the first"
ploop_ok umount -m mnt >/dev/null
fsck_export "second state"

say "snapshot-switch -u $GUID"
ploop_ok snapshot-switch -u "$GUID" "$DD" >/dev/null
mount_ok "$DD" mnt
state=$(dirname "$(field "$DD" log)")
pid=$(field "$DD" pid)
tree_sums >rolled.sha256
diff before.sha256 rolled.sha256 >/dev/null || soft_fail "after snapshot-switch the files differ from the snapshot: $(diff before.sha256 rolled.sha256 | tr '\n' '|')"
[ "$(cat mnt/data/changed.txt)" = "version 1" ] || soft_fail "changed.txt reads '$(cat mnt/data/changed.txt)', expected 'version 1'"
[ -f mnt/data/deleted.txt ] || soft_fail "deleted.txt did not come back"
[ ! -e mnt/data/new.txt ] || soft_fail "new.txt is still there after the rollback"
[ ! -e mnt/data/sub/new-big.bin ] || soft_fail "new-big.bin is still there after the rollback"
ploop_ok umount -m mnt >/dev/null
nothing_left "after the last umount" "$DD" "$WORK/mnt" "$state" "$pid"
fsck_export "rolled back"

"$PY" - "$GUID" <<PYEOF || soft_fail "snapshot-list --json after the switch: the current top's parent is not $GUID"
import json, subprocess, sys
snaps = json.loads(subprocess.check_output(["$PLOOP", "snapshot-list", "--json", "$DD"]))
cur = [s for s in snaps if s["current"]]
assert len(cur) == 1, snaps
assert cur[0]["parent_uuid"] == sys.argv[1], cur
assert any(s["uuid"] == sys.argv[1] for s in snaps), snaps
PYEOF
ploop_ok check "$DD" >/dev/null
finish
