#!/usr/bin/env bash
# Installs every Debian package the build, the tests, the benchmarks and the demo need.
# Safe to run again: it installs only what is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  liburing-dev libxxhash-dev libblkid-dev libext2fs-dev uuid-dev
  libgtest-dev libgmock-dev libcli11-dev libpugixml-dev nlohmann-json3-dev libfmt-dev libfuse3-dev
  fuse3 e2fsprogs util-linux iproute2 python3
  qemu-utils libnbd-bin nbdkit fio ploop jq
  libnl-genl-3-dev qemu-system-x86 busybox-static cpio xz-utils zstd kmod
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all packages present"
