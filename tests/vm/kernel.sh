#!/usr/bin/env bash
# Finds the test VM's kernel: Debian's newest linux-image-6.12*-amd64-unsigned, fetched with
# `apt-get download` and unpacked with `dpkg -x` into the cache, with a modules.dep made by
# `depmod -b` (the package ships none). Prints the unpacked tree's path on stdout; the tree holds
# boot/vmlinuz-KVER and lib/modules/KVER/.
# Usage: kernel.sh CACHE_DIR. Exit 77 (with one line on stderr) when no kernel can be had.
set -euo pipefail
cache=$1
skip() { echo "tests/vm: SKIP: $*" >&2; exit 77; }

mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] || skip "the kernel cache $cache is not writable (set PLOOP_VM_CACHE)"
cd "$cache"

# The candidates apt knows, newest first; then what the cache already holds.
pattern='^linux-image-6\.12\.[0-9.+a-z]*-amd64-unsigned$'
newest=$(apt-cache search --names-only "$pattern" 2>/dev/null | cut -d' ' -f1 | sort -V | tail -1 || true)
deb=""
if [ -n "$newest" ]; then
    version=$(apt-cache policy "$newest" 2>/dev/null | sed -n 's/^  Candidate: //p')
    want="${newest}_${version//:/%3a}_amd64.deb"
    if [ -n "$version" ] && [ "$version" != "(none)" ]; then
        if [ -f "$want" ]; then
            deb=$want
        else
            # apt's sandbox user _apt may not write here: download in a directory it can.
            tmp=$(mktemp -d /tmp/ploop-vm-apt.XXXXXX)
            chmod 755 "$tmp"; chown _apt "$tmp" 2>/dev/null || true
            if (cd "$tmp" && timeout 900 apt-get download -q "$newest=$version" >&2); then
                mv "$tmp"/*.deb "$cache/" && deb=$want
            else
                echo "tests/vm: apt-get download $newest failed; trying the cache" >&2
            fi
            rm -rf "$tmp"
        fi
    fi
fi
if [ -z "$deb" ]; then
    deb=$(ls linux-image-6.12*-amd64-unsigned_*.deb 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$deb" ] || skip "no linux-image-6.12*-amd64-unsigned: apt-get download failed and $cache holds none"
fi

tree=$cache/${deb%.deb}
if [ ! -f "$tree/.ready" ]; then
    echo "tests/vm: unpacking $deb (once; cached in $tree)" >&2
    rm -rf "$tree"; mkdir -p "$tree"
    dpkg -x "$deb" "$tree" || { rm -rf "$tree"; skip "dpkg -x $deb failed"; }
    kver=$(ls "$tree/lib/modules" | head -1)
    if [ ! -f "$tree/lib/modules/$kver/modules.dep" ]; then
        depmod -b "$tree" "$kver" || { rm -rf "$tree"; skip "depmod -b $tree $kver failed"; }
    fi
    touch "$tree/.ready"
fi
echo "$tree"
