#!/usr/bin/env bash
# Builds the test VM's initramfs (an uncompressed newc cpio: TCG unpacks that fastest): busybox
# (static) for the base system, bash, coreutils' timeout, e2fsprogs and fio with their
# shared libraries, the project's executables from BUILD_DIR, the kernel modules the tests need
# (decompressed, in dependency order from the kernel's modules.dep), and tests/vm's own init,
# runner and tests.
# Usage: initramfs.sh BUILD_DIR KERNEL_TREE OUT.cpio
# For a benchmark (bench/vm-frontends.sh), PLOOP_VM_BENCH_DIR names a directory whose files go to
# /opt/ploop/bench (init runs one of them when the kernel command line has ploop.bench=NAME), and
# PLOOP_VM_BENCH_BINS host executables to add with their libraries. The tests use neither.
set -euo pipefail
build=$1 ktree=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
kver=$(ls "$ktree/lib/modules" | head -1)
mdir=$ktree/lib/modules/$kver
# The modules the tests use; their dependencies come from modules.dep. crc32c is for ext4's
# metadata checksums (the VM has no modprobe to load it on demand).
MODULES="crc32c_generic crc32c-intel loop nbd ublk_drv ext4"

root=$(mktemp -d /tmp/ploop-vm-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,scratch,lib64,opt/ploop/bin,opt/ploop/tests} \
    "$root/lib/modules/$kver"

# copy_libs FILE... : every library ldd lists for FILE, into the same path under $root
copy_libs() {
    local f lib
    for f in "$@"; do
        for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true); do
            [ -e "$root$lib" ] || cp -L --parents "$lib" "$root/"
        done
    done
}
# copy_elf FILE... : FILE into the same path under $root, with its libraries
copy_elf() {
    local f
    for f in "$@"; do
        cp -L --parents "$f" "$root/"
        copy_libs "$f"
    done
}

cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    case $applet in modprobe|depmod) continue ;; esac   # no on-demand loading: the tests choose
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
copy_elf /bin/bash /usr/bin/timeout /usr/bin/fio \
    "$(command -v mke2fs)" "$(command -v e2fsck)" "$(command -v resize2fs)"
ln -sf /usr/bin/timeout "$root/bin/timeout"     # coreutils' timeout kills the whole group
for t in mkfs.ext4:mke2fs mke2fs:mke2fs e2fsck:e2fsck fsck.ext4:e2fsck resize2fs:resize2fs; do
    ln -sf "$(command -v "${t#*:}")" "$root/sbin/${t%%:*}"
done
cp /etc/mke2fs.conf "$root/etc/"
# The dynamic loader, where the binaries expect it (ldd names it by its real path).
loader=$(readelf -l /bin/bash | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
cp -L --parents "$loader" "$root/"

# The project's executables: tools/ploop, whatever else the front ends build, and the VM probes.
found=0
while read -r exe; do
    case $(head -c4 "$exe" | od -An -c | tr -d ' ') in '177ELF') ;; *) continue ;; esac
    # Into /opt/ploop/bin itself, not under the build's path: that may lie below /tmp, which the
    # VM's init mounts a tmpfs over.
    cp -L "$exe" "$root/opt/ploop/bin/"
    copy_libs "$exe"
    found=1
done < <(find "$build/tools" "$build/kmod-shim" "$build/tests/vm/bin" -maxdepth 3 -type f -perm -u+x \
             -not -path '*/CMakeFiles/*' 2>/dev/null)
[ "$found" = 1 ] && [ -x "$build/tools/ploop" ] || { echo "tests/vm: no $build/tools/ploop" >&2; exit 1; }

# Modules: dependencies first, each once, decompressed (busybox insmod takes plain .ko only).
declare -A seen=()
order=()
add_module() { # PATH_IN_MODULES_DEP
    local m=$1 dep
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    for dep in $(grep -m1 "^$m:" "$mdir/modules.dep" | cut -d: -f2); do add_module "$dep"; done
    order+=("$m")
}
for name in $MODULES; do
    path=$(grep -m1 -E "(^|/)${name}\.ko(\.xz|\.zst|\.gz)?:" "$mdir/modules.dep" | cut -d: -f1 || true)
    [ -n "$path" ] || { echo "tests/vm: module $name is not in $mdir/modules.dep" >&2; exit 1; }
    add_module "$path"
done
for m in "${order[@]}"; do
    dst=$root/lib/modules/$kver/${m%.*}
    case $m in *.ko) dst=$root/lib/modules/$kver/$m ;; esac
    mkdir -p "$(dirname "$dst")"
    case $m in
        *.ko.xz) xz -dc "$mdir/$m" >"$dst" ;;
        *.ko.zst) zstd -qdc "$mdir/$m" >"$dst" ;;
        *.ko.gz) gzip -dc "$mdir/$m" >"$dst" ;;
        *) cp "$mdir/$m" "$dst" ;;
    esac
    echo "/lib/modules/$kver/${dst#"$root/lib/modules/$kver/"}" >>"$root/etc/modules.load"
done

cp "$here/init" "$root/init"
cp "$here/runner.sh" "$root/opt/ploop/runner.sh"
cp "$here"/tests/*.sh "$root/opt/ploop/tests/"
chmod +x "$root/init"
if [ -n "${PLOOP_VM_BENCH_DIR:-}" ]; then
    mkdir -p "$root/opt/ploop/bench"
    cp -r "$PLOOP_VM_BENCH_DIR"/. "$root/opt/ploop/bench/"
fi
# shellcheck disable=SC2086  # a list of paths
[ -z "${PLOOP_VM_BENCH_BINS:-}" ] || copy_elf $PLOOP_VM_BENCH_BINS

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet -R 0:0) >"$out.tmp"
mv "$out.tmp" "$out"
