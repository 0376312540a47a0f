#!/usr/bin/env bash
# A DiskDescriptor.xml that disagrees with its deltas cannot be opened, so every command must say
# so -- not only export: info, info --json and check must refuse too (non-zero exit, one "ploop: "
# line or a check report with an error), and change nothing. Cases: <Blocksize> differs from the
# deltas' cluster size; <Disk_size>/<End> larger than the top delta; a top delta whose cluster
# size differs from its base; the same <File> named by two images.
source "$(dirname "$0")/lib.sh"

TOPFILE='root.hdd.{ae0b1c9f-2600-42e6-b369-5806da621702}'
cp -r "$FIXTURES/chain" chain
chmod -R u+w chain
ORIG=$PWD/chain/DiskDescriptor.xml

edit() {  # OLD NEW [OLD NEW]... -> the chain descriptor with replacements
    python3 - "$ORIG" "$@" <<'PY'
import sys
s = open(sys.argv[1]).read()
a = sys.argv[2:]
for old, new in zip(a[::2], a[1::2]):
    assert old in s, old
    s = s.replace(old, new)
print(s, end="")
PY
}
mismatch() {  # NAME ; descriptor on stdin, run inside a fresh copy of the chain
    local name=$1
    rm -rf "case-$name" && cp -r chain "case-$name"
    cat >"case-$name/DiskDescriptor.xml"
    (cd "case-$name" && expect_rejected "$name" DiskDescriptor.xml)
}

edit '<Blocksize>2048</Blocksize>' '<Blocksize>64</Blocksize>' | mismatch blocksize-differs
edit '<Disk_size>131072</Disk_size>' '<Disk_size>262144</Disk_size>' '<End>131072</End>' '<End>262144</End>' |
    mismatch disk-size-larger
edit "<File>$TOPFILE</File>" '<File>root.hdd</File>' | mismatch same-file-twice

# a top delta with 32 KiB clusters over the 1 MiB-cluster base
mkdir mk && ploop_ok init -s 64M -b 64 mk/top.hds >/dev/null
cp mk/top.hds chain/top32k.hds
edit "<File>$TOPFILE</File>" '<File>top32k.hds</File>' | mismatch top-cluster-size-differs
finish
