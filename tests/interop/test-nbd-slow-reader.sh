#!/usr/bin/env bash
# One NBD client that stops reading its replies must not stall the others: a raw python3 client
# negotiates NBD_OPT_GO with `ploop serve`, pipelines 64 reads of 32 MiB (the advertised maximum
# block size) and then never reads a byte, keeping the connection open. While it sits there, other
# clients (qemu-io reading 4 KiB, nbdinfo --map) must still be served within 10 s, and the
# server's VmRSS must stay under 512 MiB. Once the stuck client goes away the server still
# answers, stops cleanly on SIGINT, and `ploop check` is clean.
source "$(dirname "$0")/lib.sh"
need_tool python3 qemu-io nbdinfo timeout
PY=python3   # a system python starts faster than a version manager's shim
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

source "$(dirname "$0")/nbd_lib.sh"

STUCK_PID=
slow_cleanup() {
    set +e
    if [ -n "$STUCK_PID" ]; then kill "$STUCK_PID" 2>/dev/null; wait "$STUCK_PID" 2>/dev/null; fi
    kill_server
    cleanup
}
trap slow_cleanup EXIT

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

mkdir disk
ploop_ok init -s 256M disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml
start_server "$DD"
qemu-io -f raw "$URI" -c 'write -P 0x42 0 1M' >/dev/null || fail "qemu-io write failed"

say "a client pipelines 64 reads of 32 MiB and never reads the replies"
timeout 120 "$PY" - "$SOCK" <<'PY' >stuck.out 2>&1 &
import os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
def recv_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("EOF")
        b += c
    return b
recv_exact(18)                                   # greeting
s.sendall(struct.pack(">I", 3))                  # fixed newstyle, no zeroes
s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 6) + struct.pack(">IH", 0, 0))  # NBD_OPT_GO ""
while True:
    magic, opt, typ, ln = struct.unpack(">QIII", recv_exact(20))
    recv_exact(ln)
    if typ == 1:
        break
    if typ & 0x80000000:
        sys.exit(f"GO refused {typ:#x}")
for i in range(64):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, (i % 8) << 20, 32 << 20))
open("stuck.ready", "w").close()
print("sent 64 reads; not reading the replies", flush=True)
deadline = time.time() + 60
while not os.path.exists("stuck.release") and time.time() < deadline:
    time.sleep(0.05)
s.close()
PY
STUCK_PID=$!
for i in $(seq 100); do [ -e stuck.ready ] && break; kill -0 "$STUCK_PID" 2>/dev/null || break; sleep 0.1; done
[ -e stuck.ready ] || fail "the stuck client did not get going: $(cat stuck.out)"
sleep 1

say "other clients while it is stuck"
rc=0
timeout 10 qemu-io -f raw "$URI" -c 'read -P 0x42 0 4k' >qio.out 2>&1 || rc=$?
[ "$rc" -eq 0 ] || soft_fail "qemu-io read while another client is stuck: exit $rc$([ "$rc" = 124 ] && echo ' (no answer in 10 s)')"
rc=0
timeout 10 nbdinfo --map "$URI" >map.out 2>&1 || rc=$?
[ "$rc" -eq 0 ] || soft_fail "nbdinfo --map while another client is stuck: exit $rc$([ "$rc" = 124 ] && echo ' (no answer in 10 s)')"
rss=$(rss_kb "$SERVER_PID")
say "server VmRSS with the stuck client: $rss kB"
[ "$rss" -lt $((512 * 1024)) ] || soft_fail "server VmRSS $rss kB with one stuck client (limit 512 MiB)"

say "the stuck client goes away"
touch stuck.release
wait "$STUCK_PID" || true
STUCK_PID=
timeout 10 qemu-io -f raw "$URI" -c 'read -P 0x42 0 4k' >/dev/null 2>&1 ||
    soft_fail "qemu-io read after the stuck client went away failed"
stop_server
ploop_ok check "$DD" >/dev/null
finish
