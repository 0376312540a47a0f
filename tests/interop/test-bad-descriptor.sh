#!/usr/bin/env bash
# Malformed DiskDescriptor.xml files are refused cleanly by info, info --json, export and check
# (one "ploop: " line on stderr, non-zero exit below 128, nothing changed): empty, not XML,
# truncated XML, missing <Blocksize>, <Blocksize> 0 / abc, missing <Snapshots>, a <File> of
# ../../etc/passwd, an absolute path, an empty <File>, a <File> that is a directory, an image file
# that does not exist, a GUID cycle (two snapshots parenting each other, a snapshot its own
# parent), a parent GUID that names nothing, a <TopGUID> that names nothing, a GUID used twice.
source "$(dirname "$0")/lib.sh"

B='{9e9da037-6dc5-4ac4-abc9-0bc39dda05d4}'
T='{5fbaabe3-6958-40ff-92a7-860e329aab41}'
Z='{00000000-0000-0000-0000-000000000000}'
TOPFILE='root.hdd.{ae0b1c9f-2600-42e6-b369-5806da621702}'
cp -r "$FIXTURES/chain" chain
chmod -R u+w chain
ORIG=$PWD/chain/DiskDescriptor.xml.orig
mv chain/DiskDescriptor.xml "$ORIG"

# bad NAME: the descriptor comes on stdin; each case gets its own copy of the chain
bad() {
    local name=$1
    rm -rf "case-$name" && cp -r chain "case-$name"
    cat >"case-$name/DiskDescriptor.xml"
    (cd "case-$name" && expect_rejected "$name" DiskDescriptor.xml)
}
edit() {  # python-style replace OLD NEW on the original descriptor
    python3 -c 'import sys; s=open(sys.argv[1]).read(); assert sys.argv[2] in s, sys.argv[2]; print(s.replace(sys.argv[2], sys.argv[3]), end="")' \
        "$ORIG" "$1" "$2"
}

: | bad empty
echo 'this is not xml' | bad not-xml
head -c 300 "$ORIG" | bad truncated
grep -v '<Blocksize>' "$ORIG" | bad no-blocksize
edit '<Blocksize>2048</Blocksize>' '<Blocksize>0</Blocksize>' | bad blocksize-0
edit '<Blocksize>2048</Blocksize>' '<Blocksize>abc</Blocksize>' | bad blocksize-abc
edit '<Blocksize>2048</Blocksize>' '<Blocksize>100</Blocksize>' | bad blocksize-100
python3 -c 'import sys; s=open(sys.argv[1]).read(); print(s[:s.index("<Snapshots>")] + "</Parallels_disk_image>")' "$ORIG" |
    bad no-snapshots
edit "<File>$TOPFILE</File>" '<File>../../etc/passwd</File>' | bad dotdot-path
edit "<File>$TOPFILE</File>" '<File>/etc/passwd</File>' | bad absolute-path
edit "<File>$TOPFILE</File>" '<File></File>' | bad empty-file-name
edit "<File>$TOPFILE</File>" '<File>.</File>' | bad file-is-dir
edit "<File>$TOPFILE</File>" '<File>no-such-delta.hds</File>' | bad missing-image
edit "<ParentGUID>$Z</ParentGUID>" "<ParentGUID>$T</ParentGUID>" | bad guid-cycle
edit "<ParentGUID>$B</ParentGUID>" "<ParentGUID>$T</ParentGUID>" | bad guid-self-parent
edit "<ParentGUID>$B</ParentGUID>" '<ParentGUID>{22222222-2222-2222-2222-222222222222}</ParentGUID>' | bad orphan-parent
edit "<TopGUID>$T</TopGUID>" '<TopGUID>{11111111-1111-1111-1111-111111111111}</TopGUID>' | bad top-names-nothing
python3 -c 'import sys; s=open(sys.argv[1]).read(); print(s.replace("<GUID>"+sys.argv[2]+"</GUID>", "<GUID>"+sys.argv[3]+"</GUID>").replace("<ParentGUID>"+sys.argv[2]+"</ParentGUID>", "<ParentGUID>"+sys.argv[3]+"</ParentGUID>"), end="")' \
    "$ORIG" "$B" "$T" | bad guid-twice
finish
