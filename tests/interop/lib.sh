# Shared helpers for the interop tests (sourced, not run).
#
# Environment:
#   PLOOP     path of this project's ploop CLI (required; never the system /usr/sbin/ploop)
#   FIXTURES  path of tests/fixtures (default: ../fixtures next to this file)
#   KEEP_TMP  if set to 1, the scratch directory is kept for inspection
#
# Exit codes: 0 pass, 1 fail, 77 skip (ctest SKIP_RETURN_CODE).

set -euo pipefail

INTEROP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEST_NAME=$(basename "$0" .sh)
FIXTURES=${FIXTURES:-$INTEROP_DIR/../fixtures}
[ ! -d "$FIXTURES" ] || FIXTURES=$(cd "$FIXTURES" && pwd)
OPENVZ_PLOOP=${OPENVZ_PLOOP:-/usr/sbin/ploop}

say() { printf '%s: %s\n' "$TEST_NAME" "$*"; }

fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

skip() {
    printf 'SKIP: %s\n' "$*"
    exit 77
}

pass() { printf 'PASS: %s\n' "$TEST_NAME"; exit 0; }

# Failures accumulate with soft_fail so that one test reports every problem it sees; finish()
# then passes or fails. They are counted in a file so that soft_fail works in subshells too.
soft_fail() {
    printf 'FAIL: %s\n' "$*" >&2
    echo x >>"$WORK/.failures"
}
finish() {
    local n=0
    [ -f "$WORK/.failures" ] && n=$(wc -l <"$WORK/.failures")
    if [ "$n" -ne 0 ]; then
        printf 'FAIL: %s: %d check(s) failed\n' "$TEST_NAME" "$n" >&2
        exit 1
    fi
    pass
}

need_tool() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || skip "$t not installed"
    done
}

need_openvz_ploop() {
    [ -x "$OPENVZ_PLOOP" ] || skip "$OPENVZ_PLOOP not installed"
}

# --- this project's ploop -------------------------------------------------------------------

[ -n "${PLOOP:-}" ] || { echo "FAIL: set PLOOP to the path of this project's ploop binary"; exit 1; }
case "$PLOOP" in
    /*) ;;
    *) PLOOP=$(cd "$(dirname "$PLOOP")" && pwd)/$(basename "$PLOOP") ;;
esac
[ -x "$PLOOP" ] || { echo "FAIL: PLOOP=$PLOOP is not executable"; exit 1; }
[ "$PLOOP" != "$OPENVZ_PLOOP" ] || { echo "FAIL: PLOOP points at OpenVZ's ploop"; exit 1; }

# Run this project's ploop; die if it crashed (signal) or the exit code is not the one expected.
#   ploop_expect RC args...      (RC may be "nonzero")
ploop_expect() {
    local want=$1; shift
    local rc=0
    "$PLOOP" "$@" >"$WORK/.out" 2>"$WORK/.err" || rc=$?
    if [ "$rc" -ge 128 ]; then
        cat "$WORK/.out" "$WORK/.err" >&2
        fail "ploop $* crashed (exit $rc)"
    fi
    if { [ "$want" = nonzero ] && [ "$rc" -eq 0 ]; } || { [ "$want" != nonzero ] && [ "$rc" -ne "$want" ]; }; then
        cat "$WORK/.out" "$WORK/.err" >&2
        fail "ploop $* exited $rc, expected $want"
    fi
    cat "$WORK/.out"
    cat "$WORK/.err" >&2
}

ploop_ok() { ploop_expect 0 "$@"; }

# --- OpenVZ ploop ---------------------------------------------------------------------------

# Debian's ploop 1.15 crashes when the environment is smaller than 4 KiB; pad it.
run_openvz_ploop() {
    PLOOP_PAD=$(head -c 8192 /dev/zero | tr '\0' x) "$OPENVZ_PLOOP" "$@"
}

# --- scratch directory ----------------------------------------------------------------------

WORK=$(mktemp -d "/tmp/ploop-interop-$TEST_NAME.XXXXXX")
cleanup() {
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
cd "$WORK"

# --- bytes ----------------------------------------------------------------------------------

# patch_u32 FILE BYTE_OFFSET VALUE   (little endian, in place)
patch_u32() {
    local file=$1 off=$2 v=$(( $3 & 0xFFFFFFFF ))
    local esc
    esc=$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' \
        $((v & 0xFF)) $(((v >> 8) & 0xFF)) $(((v >> 16) & 0xFF)) $(((v >> 24) & 0xFF)))
    printf '%b' "$esc" | dd of="$file" bs=1 seek="$off" conv=notrunc status=none
}

# patch_u64 FILE BYTE_OFFSET VALUE   (little endian, in place)
patch_u64() {
    local file=$1 off=$2 v=$3
    patch_u32 "$file" "$off" $(( v & 0xFFFFFFFF ))
    patch_u32 "$file" $(( off + 4 )) $(( (v >> 32) & 0xFFFFFFFF ))
}

# patch_bytes FILE BYTE_OFFSET STRING   (raw bytes, in place)
patch_bytes() {
    printf '%s' "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# read_u32 FILE BYTE_OFFSET -> decimal
read_u32() {
    od -An -tu4 --endian=little -j "$2" -N 4 "$1" | tr -d ' '
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# fill FILE OFFSET LENGTH BYTE   write LENGTH copies of BYTE (e.g. 0xa5) at OFFSET
fill() {
    local file=$1 off=$2 len=$3 byte=$4
    head -c "$len" /dev/zero | tr '\0' "\\$(printf '%03o' "$byte")" |
        dd of="$file" bs=64K seek="$off" oflag=seek_bytes conv=notrunc status=none
}

# randomize FILE OFFSET LENGTH   write random bytes at OFFSET
randomize() {
    head -c "$3" /dev/urandom | dd of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc status=none
}

# make_raw FILE SIZE_BYTES
# A sparse raw disk with random data in a few places (whole clusters, partial clusters, a range
# crossing a 1 MiB boundary, the last bytes of the disk), a range of explicit zeros written out
# (must stay unallocated after import), and holes everywhere else.
make_raw() {
    local file=$1 size=$2
    truncate -s "$size" "$file"
    randomize "$file" 0 4096                                # first sector(s)
    randomize "$file" $((1 << 20)) $((1 << 20))             # one whole 1 MiB cluster
    randomize "$file" $((3 * 1024 * 1024 - 700)) 5000       # across a 1 MiB boundary, unaligned
    fill "$file" $((5 << 20)) $((2 << 20)) 0                # written zeros
    fill "$file" $((9 << 20)) 100000 0xa5                   # constant non-zero pattern
    randomize "$file" $((size / 2 + 12345)) 70000           # middle, unaligned
    randomize "$file" $((size - 1000)) 1000                 # last bytes of the disk
}

# build_project_images DIR
# Writes, with this project's ploop, one image per case into DIR/CASE/ (the image is
# DIR/CASE/img.hds, v1 ones DIR/CASE/root.hdd; DiskDescriptor.xml beside it) and
# DIR/CASE/expected.raw, what the disk must read. Lists the case names in DIR/cases.
build_project_images() {
    local dir=$1
    mkdir -p "$dir"
    : >"$dir/cases"
    _init_case() {   # NAME SIZE_ARG EXPECTED_BYTES IMAGE_NAME [init options...]
        local name=$1 size=$2 bytes=$3 img=$4; shift 4
        mkdir -p "$dir/$name"
        ploop_ok init -s "$size" "$@" "$dir/$name/$img" >/dev/null
        truncate -s "$bytes" "$dir/$name/expected.raw"
        echo "$name" >>"$dir/cases"
    }
    _import_case() { # NAME RAW_BYTES [import options...]  (cluster size from -b, default 1 MiB)
        local name=$1 bytes=$2 cs=$((1 << 20)); shift 2
        [ "${1:-}" = -b ] && cs=$(( $2 * 512 ))
        mkdir -p "$dir/$name"
        make_raw "$dir/$name/source.raw" "$bytes"
        ploop_ok import "$@" "$dir/$name/source.raw" "$dir/$name/img.hds" >/dev/null
        # the documented disk size: the raw size rounded up to a cluster
        cp --sparse=always "$dir/$name/source.raw" "$dir/$name/expected.raw"
        truncate -s $(( (bytes + cs - 1) / cs * cs )) "$dir/$name/expected.raw"
        echo "$name" >>"$dir/cases"
    }
    _init_case init-v2-1m        64M     $((64 << 20))  img.hds
    _init_case init-v2-32k       64M     $((64 << 20))  img.hds  -b 64
    _init_case init-v2-64k       16M     $((16 << 20))  img.hds  -b 128
    _init_case init-v2-64m-clu   256M    $((256 << 20)) img.hds  -b 131072
    _init_case init-v2-2048-256m 256M    $((256 << 20)) img.hds  -b 2048
    _init_case init-v2-sectors   131072  $((64 << 20))  img.hds
    _init_case init-v2-1g-32k    1G      $((1 << 30))   img.hds  -b 64
    _init_case init-v1-1m        64M     $((64 << 20))  root.hdd -v 1
    _init_case init-v1-32k       64M     $((64 << 20))  root.hdd -v 1 -b 64
    _import_case import-1m        $((64 << 20))
    _import_case import-32k       $((64 << 20))  -b 64
    _import_case import-2048      $((128 << 20)) -b 2048
    _import_case import-128k      $((96 << 20))  -b 256
    _import_case import-unaligned $(( (64 << 20) + 3 * 512 )) -b 2048
    # a raw disk of 1000 bytes: a sector and a cluster are rounded up
    mkdir -p "$dir/import-tiny"
    head -c 1000 /dev/urandom >"$dir/import-tiny/source.raw"
    ploop_ok import -b 64 "$dir/import-tiny/source.raw" "$dir/import-tiny/img.hds" >/dev/null
    cp "$dir/import-tiny/source.raw" "$dir/import-tiny/expected.raw"
    truncate -s 32768 "$dir/import-tiny/expected.raw"
    echo import-tiny >>"$dir/cases"
    _import_case import-256m-32k  $((256 << 20)) -b 64   # BAT spans 2 clusters
}

# image_of DIR/CASE -> path of the case's image file
image_of() {
    if [ -e "$1/img.hds" ]; then echo "$1/img.hds"; else echo "$1/root.hdd"; fi
}

# qemu_check_clean IMAGE -> returns non-zero (and prints why) unless qemu-img check finds
# nothing: exit 0 and no "leak"/"error"/"corrupt" in its output other than "No errors were found".
# qemu 7.2 itself reports "space leaked at the end of the image" on an empty image whose BAT spans
# several clusters (qemu-img create -f parallels -o cluster_size=32k x 1G does it); when qemu's
# own image of the same size and cluster size gets exactly the same report, that is accepted as
# qemu's quirk and noted.
qemu_check_clean() {
    local img=$1 out rc=0
    out=$(qemu-img check -f parallels "$img" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ] && ! printf '%s\n' "$out" | grep -v '^No errors were found on the image' |
            grep -qiE 'leak|error|corrupt|warning'; then
        return 0
    fi
    local vsize cs ref refout refrc=0
    vsize=$(qemu-img info -f parallels --output=json "$img" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])' 2>/dev/null) || vsize=
    cs=$(( $(read_u32 "$img" 28) * 512 ))
    if [ -n "$vsize" ] && [ "$cs" -gt 0 ]; then
        ref=$(mktemp "$WORK/qemu-ref.XXXXXX")
        rm -f "$ref"
        if qemu-img create -q -f parallels -o cluster_size="$cs" "$ref" "$vsize" >/dev/null 2>&1; then
            refout=$(qemu-img check -f parallels "$ref" 2>&1) || refrc=$?
            rm -f "$ref"
            if [ "$refrc" -eq "$rc" ] && [ "$refout" = "$out" ]; then
                printf 'note: qemu-img check reports the same on qemu'"'"'s own empty image (%s, cluster %s): qemu quirk, accepted:\n%s\n' \
                    "$vsize" "$cs" "$out"
                return 0
            fi
        fi
        rm -f "$ref"
    fi
    printf 'qemu-img check -f parallels %s (exit %d):\n%s\n' "$img" "$rc" "$out"
    return 1
}

# --- bad inputs -----------------------------------------------------------------------------

# snapshot_dir DIR -> every file under DIR with its CRC and size (cksum: fast on big sparse
# files) and its mode, to detect changed, new and removed files
snapshot_dir() {
    (cd "$1" && find . ! -name '.out' ! -name '.err' ! -name '.failures' -printf '%y %m %p\n' | sort &&
        find . -type f ! -name '.out' ! -name '.err' ! -name '.failures' -print0 | sort -z | xargs -0 -r cksum)
}

# expect_error DESC ploop-args...
# A bad input: this project's ploop must exit non-zero without crashing (exit < 128), print
# exactly one line on stderr starting "ploop: ", print nothing on stdout, and leave every file in
# the working directory as it was (no change, nothing created or removed).
expect_error() {
    local desc=$1; shift
    local before after rc=0 nlines
    before=$(snapshot_dir .)
    "$PLOOP" "$@" >.out 2>.err || rc=$?
    after=$(snapshot_dir .)
    nlines=$(wc -l <.err)
    say "$desc: ploop $* -> exit $rc, stderr: $(head -c 300 .err | tr '\n' '|')"
    if [ "$rc" -ge 128 ]; then
        soft_fail "$desc: ploop $* crashed (exit $rc)"
    elif [ "$rc" -eq 0 ]; then
        soft_fail "$desc: ploop $* succeeded (exit 0) on a bad input"
    fi
    if [ "$nlines" -ne 1 ] || ! head -1 .err | grep -q '^ploop: '; then
        soft_fail "$desc: ploop $*: expected one stderr line starting 'ploop: ', got $nlines line(s): $(head -c 500 .err)"
    fi
    if [ -s .out ]; then
        soft_fail "$desc: ploop $*: printed on stdout on failure: $(head -c 300 .out)"
    fi
    if [ "$before" != "$after" ]; then
        soft_fail "$desc: ploop $* changed files: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | tr '\n' ' ')"
    fi
}

# expect_check_fails DESC check-args...
# `ploop check` on a bad input: it reports, so either exit 11 with its findings on stdout (at least
# one "error") and nothing on stderr, or — when it cannot even start (missing file, bad
# descriptor) — a non-zero exit with one "ploop: " line on stderr. Never a crash, never exit 0,
# and without -r nothing changes.
expect_check_fails() {
    local desc=$1; shift
    local before after rc=0
    before=$(snapshot_dir .)
    "$PLOOP" check "$@" >.out 2>.err || rc=$?
    after=$(snapshot_dir .)
    say "$desc: ploop check $* -> exit $rc: $(cat .out .err | head -c 400 | tr '\n' '|')"
    if [ "$rc" -ge 128 ]; then
        soft_fail "$desc: ploop check $* crashed (exit $rc)"
    elif [ "$rc" -eq 0 ]; then
        soft_fail "$desc: ploop check $* exited 0 on a bad input"
    elif [ "$rc" -eq 11 ]; then
        grep -q 'error' .out || soft_fail "$desc: ploop check $* exited 11 but reported no error"
        [ ! -s .err ] || soft_fail "$desc: ploop check $* exited 11 and wrote to stderr: $(head -c 300 .err)"
    else
        if [ "$(wc -l <.err)" -ne 1 ] || ! head -1 .err | grep -q '^ploop: '; then
            soft_fail "$desc: ploop check $* exited $rc without one 'ploop: ' stderr line: $(head -c 500 .err)"
        fi
    fi
    if [ "$before" != "$after" ]; then
        soft_fail "$desc: ploop check $* changed files: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | tr '\n' ' ')"
    fi
}

# expect_rejected DESC FILE : info, export and check all refuse FILE and change nothing
expect_rejected() {
    local desc=$1 file=$2
    expect_error "$desc (info)" info "$file"
    expect_error "$desc (info --json)" info --json "$file"
    expect_error "$desc (export)" export "$file" never-created.raw
    expect_check_fails "$desc" "$file"
    expect_check_fails "$desc (-r)" -r "$file"   # nothing here is safely repairable
}
