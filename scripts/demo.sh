#!/usr/bin/env bash
# The main job, short and visible: build, put a container root file system into a ploop image,
# inspect and check it with this tool and with qemu-img, take it back out and verify it.
# (Mounting, snapshots and rollback come with the device daemon; see the issues.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh >/dev/null
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j "$(nproc)" -- --no-print-directory >/dev/null
PLOOP=$PWD/build/release/tools/ploop

work=$(mktemp -d /tmp/ploop-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "A container root tree:"
mkdir -p "$work/rootfs/etc" "$work/rootfs/srv"
echo "demo-container" > "$work/rootfs/etc/hostname"
head -c 3M /dev/urandom > "$work/rootfs/srv/data.bin"
sha_before=$(sha256sum < "$work/rootfs/srv/data.bin")
find "$work/rootfs" -type f | sed "s|$work/rootfs||"

echo; echo "Made into a 256 MiB ext4 file system (mke2fs -d), then imported into a ploop image:"
truncate -s 256M "$work/fs.raw"
mke2fs -q -t ext4 -d "$work/rootfs" "$work/fs.raw"
mkdir "$work/ct"
step "$PLOOP" import "$work/fs.raw" "$work/ct/root.hds"
step "$PLOOP" info "$work/ct/DiskDescriptor.xml"
step "$PLOOP" check "$work/ct/DiskDescriptor.xml"
step qemu-img check -f parallels "$work/ct/root.hds"
step ls -ls "$work/fs.raw" "$work/ct/root.hds"

echo; echo "Out again, as a sparse raw disk, and checked by e2fsck:"
step "$PLOOP" export "$work/ct/DiskDescriptor.xml" "$work/out.raw"
step e2fsck -fn "$work/out.raw"
sha_after=$(debugfs -R "cat /srv/data.bin" "$work/out.raw" 2>/dev/null | sha256sum)
echo "hostname inside the image: $(debugfs -R 'cat /etc/hostname' "$work/out.raw" 2>/dev/null)"
if [ "$sha_before" = "$sha_after" ]; then echo "data.bin intact: $sha_after"; else echo "data.bin CHANGED"; exit 1; fi
echo; echo "demo finished"
