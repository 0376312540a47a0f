# shellcheck shell=bash
# Helpers for the VM tests (sourced). The runner starts each test in an empty scratch directory
# (tmpfs) with FRONT set to the front end under test (ublk, nbd, fuse; "auto" for tests that run
# once) and PLOOP set to the project's binary.
set -uo pipefail
FRONT=${FRONT:-${1:-fuse}}
PLOOP=${PLOOP:-/opt/ploop/bin/ploop}
WORK=$PWD

SECONDS=0
say() { echo "-- [${SECONDS}s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
ERRORS=0
soft_fail() { echo "FAIL: $*" >&2; ERRORS=$((ERRORS + 1)); }
finish() { [ "$ERRORS" = 0 ] || exit 1; exit 0; }

# ploop_ok ARGS... : run the project's ploop (limited to 120 s); a non-zero exit fails the test
ploop_ok() {
    local rc=0
    timeout 120 "$PLOOP" "$@" >"$WORK/.out" 2>"$WORK/.err" || rc=$?
    [ -s "$WORK/.out" ] && echo "$(<"$WORK/.out")"
    [ "$rc" = 0 ] || fail "ploop $* exited $rc: $(<"$WORK/.err")"
}

# device_args : the --device option for $FRONT (none for "auto")
device_args() { [ "$FRONT" = auto ] || echo "--device $FRONT"; }

# The JSON of `ploop list` is read with bash alone: under TCG every program started costs about
# a second. It is an array of flat objects whose strings (paths here) hold no quotes or spaces.
# entry DD : DD's object in `ploop list --json`, spaces removed (empty if not mounted). DD must be
# an absolute path.
entry() {
    local json dd obj
    dd=$(cd -P "${1%/*}" && pwd)/${1##*/}
    json=$("$PLOOP" list --json) || { echo "ploop list --json failed" >&2; return 1; }
    json=${json//[$' \n\t']/}
    while [[ $json =~ \{([^{}]*)\} ]]; do
        obj=${BASH_REMATCH[1]}
        json=${json#*"${BASH_REMATCH[0]}"}
        [[ ,$obj, == *',"dd":"'"$dd"'",'* ]] && { echo "{$obj}"; return 0; }
    done
}
# get OBJECT KEY : one value of an object that entry printed (strings without their quotes)
get() {
    [[ $1 =~ [{,]\"$2\":(\"([^\"]*)\"|([^,}]*)) ]] || return 0
    echo "${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
}
# field DD KEY : one field of DD's `ploop list --json` entry
field() { get "$(entry "$1")" "$2"; }

# mount_disk DD [DIR] : ploop mount with $FRONT (on DIR, or the device only); checks that
# `ploop list --json` shows the front end and a block device
mount_disk() {
    local dd=$1 dir=${2:-}
    # shellcheck disable=SC2046
    ploop_ok mount $(device_args) ${dir:+-m "$dir"} "$dd" >/dev/null
    local e front dev
    e=$(entry "$dd")
    [ -n "$e" ] || fail "ploop list --json does not show $dd after mount"
    front=$(get "$e" front); dev=$(get "$e" device)
    [ "$FRONT" = auto ] || [ "$front" = "$FRONT" ] || fail "ploop list --json shows front '$front', not '$FRONT': $e"
    [ -b "$dev" ] || fail "the device '$dev' in ploop list --json is not a block device: $e"
    if [ -n "$dir" ]; then
        [[ $(</proc/mounts) == *" $(cd -P "$dir" && pwd) "* ]] || fail "nothing is mounted on $dir after ploop mount -m"
    fi
}

# umount_disk DD : ploop umount DD, and the disk is gone from `ploop list`
umount_disk() {
    ploop_ok umount "$1" >/dev/null
    [ -z "$(entry "$1")" ] || fail "ploop list still shows $1 after umount: $(entry "$1")"
}

# fsck_disk DD : attach DD without a mount point and run e2fsck -fn on its device
fsck_disk() {
    local dd=$1 dev out rc=0
    mount_disk "$dd"
    dev=$(field "$dd" device)
    out=$(timeout 120 e2fsck -fn "$dev" 2>&1) || rc=$?
    umount_disk "$dd"
    [ "$rc" = 0 ] || fail "e2fsck -fn $dev exited $rc: $out"
}

# new_disk SIZE [none|ext4] : ploop init (ext4 by default) in $WORK/disk; sets DD to its descriptor
new_disk() {
    mkdir -p "$WORK/disk" "$WORK/mnt"
    ploop_ok init -s "$1" -t "${2:-ext4}" "$WORK/disk/root.hds" >/dev/null
    # shellcheck disable=SC2034  # used by the tests
    DD=$WORK/disk/DiskDescriptor.xml
}

# write_tree DIR : a small tree of files (directories, a symlink, a sparse file), written with
# shell builtins: every process costs a lot under TCG
write_tree() {
    local d=$1 i j line
    mkdir -p "$d/tree/dir0" "$d/tree/dir1" "$d/tree/dir2" "$d/tree/dir3"
    for i in $(seq 1 20); do
        line="file $i of the tree, padded to make it longer than one line of text"
        for ((j = 0; j < i * 20; j++)); do echo "$j $line"; done >"$d/tree/dir$((i % 4))/file$i.txt"
    done
    ln -s dir1/file1.txt "$d/tree/link"
    truncate -s 10M "$d/tree/sparse"
    echo tail >>"$d/tree/sparse"
}
# checksums DIR : sha256 of every regular file under DIR, by path
checksums() { (cd "$1" && find . -type f | sort | xargs sha256sum); }
