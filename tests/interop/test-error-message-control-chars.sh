#!/usr/bin/env bash
# Error messages stay one line and carry no terminal control characters even when they quote
# text from a DiskDescriptor.xml (which may come from an untrusted container): a newline inside
# <File>, <TopGUID> or <Blocksize>, and an ESC sequence (&#27;[31m) inside <File>. Every command
# must print exactly one stderr line starting "ploop: " with no byte below 0x20 except the final
# newline, and exit non-zero below 128. (Also a newline in an image name given on the command
# line.)
source "$(dirname "$0")/lib.sh"

cp -r "$FIXTURES/chain" chain
chmod -R u+w chain
ORIG=$PWD/chain/DiskDescriptor.xml.orig
mv chain/DiskDescriptor.xml "$ORIG"

clean_error() {  # DESC ploop-args...   (after expect_error's checks, look for control bytes)
    local desc=$1; shift
    expect_error "$desc" "$@"
    if LC_ALL=C grep -q '[[:cntrl:]]' .err; then
        soft_fail "$desc: ploop $* printed control characters on stderr: $(od -c .err | head -3 | tr '\n' ' ')"
    fi
}
with_dd() {  # NAME OLD NEW
    local name=$1
    rm -rf "case-$name" && cp -r chain "case-$name"
    python3 -c 'import sys; s=open(sys.argv[1]).read(); assert sys.argv[2] in s; print(s.replace(sys.argv[2], sys.argv[3]), end="")' \
        "$ORIG" "$2" "$3" >"case-$name/DiskDescriptor.xml"
    cd "case-$name"
    clean_error "$name (info)" info DiskDescriptor.xml
    clean_error "$name (export)" export DiskDescriptor.xml out.raw
    clean_error "$name (check)" check DiskDescriptor.xml
    cd ..
}

with_dd newline-in-file '<File>root.hdd</File>' $'<File>root\nx.hdd</File>'
with_dd newline-in-topguid '<TopGUID>{5fbaabe3' $'<TopGUID>{5\nfbaabe3'
with_dd newline-in-blocksize '<Blocksize>2048</Blocksize>' $'<Blocksize>20\n48</Blocksize>'
with_dd escape-in-file '<File>root.hdd</File>' '<File>&#27;[31mRED&#27;[0m.hdd</File>'

mkdir cli && cd cli
clean_error "newline in a command-line image name" info $'no\nsuch.hds'
finish
