#!/usr/bin/env bash
# Bad image files are refused cleanly by info, info --json, export and check (and check -r):
# missing file, a directory, empty file, truncated header, truncated BAT, wrong signature, wrong
# type, and absurd header fields patched in (BAT entries 0 / too few / 0xFFFFFFFF, cluster size
# 0 / 3 / 2^31 sectors, disk size 0 / 2^40 / 2^63-1 sectors, v1 size 0xFFFFFFFF, data offset
# 0 / 1 / 0xFFFFFFFF). Each gives one "ploop: " line on stderr (check: exit 11 with its report),
# a non-zero exit below 128, and leaves the file byte-identical.
source "$(dirname "$0")/lib.sh"

M=$((1 << 20))
mkdir src && (cd src &&
    ploop_ok init -s 64M -b 64 v2.hds >/dev/null && rm DiskDescriptor.xml &&
    ploop_ok init -s 64M -v 1 v1.hdd >/dev/null && rm DiskDescriptor.xml &&
    truncate -s $((256 * M)) big.raw && randomize big.raw 0 100000 &&
    ploop_ok import -b 64 big.raw big.hds >/dev/null && rm DiskDescriptor.xml big.raw)
# now src/ holds: v2.hds (32 KiB clusters, BAT in one cluster), v1.hdd, big.hds (BAT in 2 clusters)

mkdir cases && cd cases

expect_rejected "missing file" missing.hds
mkdir adir && expect_rejected "a directory" adir

: >empty.hds
expect_rejected "empty file" empty.hds

head -c 40 ../src/v2.hds >trunc40.hds
expect_rejected "40 bytes of a header" trunc40.hds
head -c 63 ../src/v2.hds >trunc63.hds
expect_rejected "63 bytes of a header" trunc63.hds
head -c 10000 ../src/big.hds >truncbat.hds
expect_rejected "file ends inside the BAT" truncbat.hds

# patched copies of an image: NAME SOURCE OFFSET VALUE [64]
patched() {
    local name=$1 src=$2 off=$3 val=$4 width=${5:-32}
    cp "../src/$src" "$name"
    "patch_u$width" "$name" "$off" "$val"
    expect_rejected "$name (offset $off := $val)" "$name"
    rm -f "$name"
}
cp ../src/v2.hds badsig.hds && patch_bytes badsig.hds 0 "WithouFreSpacEx!"
expect_rejected "wrong signature" badsig.hds
cp ../src/v2.hds zerosig.hds && patch_u64 zerosig.hds 0 0 && patch_u64 zerosig.hds 8 0
expect_rejected "zeroed signature" zerosig.hds

patched type7.hds v2.hds 16 7
patched bat-ffffffff.hds v2.hds 32 0xFFFFFFFF
patched bat-0.hds v2.hds 32 0
patched bat-too-few.hds v2.hds 32 10
patched cluster-3.hds v2.hds 28 3
patched cluster-0.hds v2.hds 28 0
patched cluster-2g.hds v2.hds 28 0x80000000
patched size-0.hds v2.hds 36 0 64
patched size-2p40.hds v2.hds 36 $((1 << 40)) 64
patched size-2p63.hds v2.hds 36 0x7FFFFFFFFFFFFFFF 64
patched dataoff-0.hds v2.hds 48 0
patched dataoff-1.hds v2.hds 48 1
patched dataoff-ffffffff.hds v2.hds 48 0xFFFFFFFF
patched v1-size-ffffffff.hdd v1.hdd 36 0xFFFFFFFF
patched v1-size-0.hdd v1.hdd 36 0
patched v1-bat-ffffffff.hdd v1.hdd 32 0xFFFFFFFF
patched v1-cluster-3.hdd v1.hdd 28 3
finish
