#!/usr/bin/env bash
# The main job, short and visible: build, create a container disk image with ext4, mount it, write
# files, take a snapshot, change things, roll back to the snapshot, and check everything with this
# tool and with qemu-img. Needs root (mount, loop devices, FUSE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh >/dev/null
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j "$(nproc)" -- --no-print-directory >/dev/null
PLOOP=$PWD/build/release/tools/ploop

work=$(mktemp -d /tmp/ploop-demo.XXXXXX)
cleanup() {
  "$PLOOP" umount -m "$work/root" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
mkdir -p "$work/ct" "$work/root"
DD=$work/ct/DiskDescriptor.xml

step "$PLOOP" init -s 2G -t ext4 "$work/ct/root.hds"
step "$PLOOP" mount -m "$work/root" "$DD"
step "$PLOOP" list
echo; echo "Writing the container's files:"
mkdir -p "$work/root/etc" "$work/root/srv"
echo "demo-container" > "$work/root/etc/hostname"
head -c 32M /dev/urandom > "$work/root/srv/data.bin"
sha=$(sha256sum < "$work/root/srv/data.bin")
sync
step ls -l "$work/root" "$work/root/srv"
step "$PLOOP" info "$DD"
step "$PLOOP" umount -m "$work/root"

step "$PLOOP" snapshot "$DD"
snap=$("$PLOOP" snapshot-list --json "$DD" | python3 -c 'import json,sys; print([s["uuid"] for s in json.load(sys.stdin) if not s["current"]][0])')
step "$PLOOP" snapshot-list "$DD"

echo; echo "Changing things after the snapshot: remove data.bin, write a new file:"
step "$PLOOP" mount -m "$work/root" "$DD"
rm "$work/root/srv/data.bin"
echo "written after the snapshot" > "$work/root/srv/later.txt"
step ls -l "$work/root/srv"
step "$PLOOP" umount -m "$work/root"

echo; echo "Rolling back to the snapshot:"
step "$PLOOP" snapshot-switch -u "$snap" "$DD"
step "$PLOOP" mount -m "$work/root" "$DD"
step ls -l "$work/root/srv"
if [ "$(sha256sum < "$work/root/srv/data.bin")" = "$sha" ]; then echo "data.bin is back, intact: $sha"; else echo "data.bin differs"; exit 1; fi
step "$PLOOP" umount -m "$work/root"

echo; echo "Every delta checked, by this tool (with seals) and by qemu:"
step "$PLOOP" check --verify "$DD"
for f in "$work"/ct/root.hds*; do case $f in *.seal) continue ;; esac; step qemu-img check -f parallels "$f"; done
echo; echo "demo finished"
