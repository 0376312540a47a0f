#!/usr/bin/env bash
# `ploop serve` that cannot listen fails cleanly and leaves the image as it was: a bad --tcp port
# (not a number, above 65535), an address that is not IPv4, a 127.0.0.1 port another process already
# listens on, a --socket in a missing directory, a --socket path too long for a Unix socket. Each
# exits non-zero (below 128) with one `ploop: ` line on stderr and nothing on stdout, changes no
# file (expect_error), and afterwards `ploop check` exits 0: the in-use flag is not left set.
source "$(dirname "$0")/lib.sh"
need_tool python3
PY=python3   # a system python starts faster than a version manager's shim
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

HOLDER_PID=
bad_cleanup() {
    set +e
    if [ -n "$HOLDER_PID" ]; then kill "$HOLDER_PID" 2>/dev/null; wait "$HOLDER_PID" 2>/dev/null; fi
    cleanup
}
trap bad_cleanup EXIT

mkdir disk
ploop_ok init -s 64M disk/img.hds >/dev/null
DD=disk/DiskDescriptor.xml

# a process listening on a 127.0.0.1 port, for the port-in-use case
"$PY" -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
open("busy.port.tmp", "w").write(str(s.getsockname()[1])); import os; os.rename("busy.port.tmp", "busy.port")
time.sleep(120)' &
HOLDER_PID=$!
for i in $(seq 50); do [ -s busy.port ] && break; sleep 0.1; done
[ -s busy.port ] || fail "could not hold a port"
BUSY=$(cat busy.port)
rm -f busy.port

long=$WORK/$(head -c 120 /dev/zero | tr '\0' s).sock

# still_clean DESC : `ploop check` exits 0; if the flag was left set, repair it for the next case
still_clean() {
    local rc=0
    "$PLOOP" check "$DD" >check.txt 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        soft_fail "$1: afterwards ploop check exits $rc: $(tr '\n' '|' <check.txt)"
        "$PLOOP" check -r "$DD" >/dev/null 2>&1 || true
    fi
    rm -f check.txt
}

for args in "--tcp 127.0.0.1:abc" "--tcp 70000" "--tcp 127.0.0.1:" "--tcp 999.0.0.1:10809" \
            "--tcp not-an-address:10809" "--tcp 127.0.0.1:$BUSY" "--socket $WORK/missing/dir/nbd.sock" \
            "--socket $long"; do
    # shellcheck disable=SC2086
    expect_error "serve $args" serve $args "$DD"
    still_clean "serve $args"
done
finish
