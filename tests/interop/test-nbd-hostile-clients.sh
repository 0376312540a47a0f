#!/usr/bin/env bash
# `ploop serve` survives hostile and broken clients (raw sockets from python3, plus qemu-io):
#  (a) 500 connections opened at once (more than the server's connection limit), then closed: the
#      server answers nbdinfo again within 5 s and its thread and file descriptor counts come back;
#  (b) garbage bytes right after the greeting, garbage instead of an option after valid client
#      flags, and a garbage request after NBD_OPT_GO: each connection is closed by the server;
#  (c) an option header announcing a 4 GiB option (INFO and EXPORT_NAME): closed at once, without
#      waiting for the data; a 100000-byte option gets NBD_REP_ERR_TOO_BIG and the same connection
#      can then NBD_OPT_GO;
#  (d) a read beyond the end with qemu-io fails cleanly; raw requests beyond the end (read, read
#      wrapping past 2^64, read of 4 GiB, write) each get an error reply and the same connection
#      then reads fine.
# Through all of it the server stays alive, its VmRSS stays under 200 MiB, the disk still reads
# all zeros (nothing was written), and after SIGINT `ploop check` is clean.
source "$(dirname "$0")/lib.sh"
need_tool python3 nbdinfo qemu-io
PY=python3   # a system python starts faster than a version manager's shim
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

source "$(dirname "$0")/nbd_lib.sh"
trap nbd_cleanup EXIT

# rss_kb PID, threads PID, fds PID
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
answers() { # nbdinfo answers within 5 s (retried)
    local i
    for i in $(seq 50); do
        timeout 10 nbdinfo --size "$URI" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
alive() { kill -0 "$SERVER_PID" 2>/dev/null || fail "the server died ($1): $(tail -5 "$WORK/serve.log")"; }

SIZE=$((256 << 20))
RSS_LIMIT_KB=$((200 * 1024))
mkdir disk
ploop_ok init -s 256M disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml
start_server "$DD"
answers || fail "the server does not answer nbdinfo"
base_threads=$(threads "$SERVER_PID")
base_fds=$(fds "$SERVER_PID")

# samples the server's VmRSS every 20 ms into rss.peak while the hostile clients run
( peak=0; while kill -0 "$SERVER_PID" 2>/dev/null && [ ! -e rss.stop ]; do
      r=$(rss_kb "$SERVER_PID" 2>/dev/null) || break
      [ "${r:-0}" -gt "$peak" ] && { peak=$r; echo "$peak" >rss.peak; }
      sleep 0.02
  done ) &
MON_PID=$!

cat >nbdraw.py <<'PY'
# A minimal NBD client on raw sockets (fixed newstyle handshake, simple replies), for hostile tests.
import os, signal, socket, struct, sys, time

NBDMAGIC, IHAVEOPT, REPLY_MAGIC = 0x4e42444d41474943, 0x49484156454F5054, 0x3e889045565a9
REQ_MAGIC, SIMPLE_REPLY = 0x25609513, 0x67446698
OPT_EXPORT_NAME, OPT_INFO, OPT_GO = 1, 6, 7
REP_ACK, REP_INFO, REP_ERR_TOO_BIG = 1, 3, 0x80000009
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2

def connect(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(timeout)
    return s

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError(f"EOF after {len(b)} of {n} bytes")
        b += c
    return b

def greeting(s):
    magic, opt, flags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT:
        raise RuntimeError("bad greeting")
    return flags

def closed_by_server(s, timeout=5):
    """True if the server closes the connection (EOF or reset) within timeout seconds."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False

def option(s, opt, data=b"", length=None):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data) if length is None else length) + data)

def opt_reply(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recv_exact(s, 20))
    if magic != REPLY_MAGIC:
        raise RuntimeError(f"bad option reply magic {magic:#x}")
    return opt, typ, recv_exact(s, ln)

def start(s):
    greeting(s)
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes

def go(s):
    """NBD_OPT_GO on the default export -> export size"""
    option(s, OPT_GO, struct.pack(">IH", 0, 0))
    size = None
    while True:
        _, typ, data = opt_reply(s)
        if typ == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
            size = struct.unpack(">Q", data[2:10])[0]
        elif typ == REP_ACK:
            return size
        elif typ & 0x80000000:
            raise RuntimeError(f"GO refused: {typ:#x}")

def request(s, typ, cookie, offset, length, payload=b"", flags=0):
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, offset, length) + payload)

def reply(s, read_len=0):
    """-> (error, cookie, data) of a simple reply"""
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != SIMPLE_REPLY:
        raise RuntimeError(f"bad reply magic {magic:#x}")
    return err, cookie, (recv_exact(s, read_len) if err == 0 and read_len else b"")
PY

run_py() { # DESC : runs the python on stdin with nbdraw imported; FAIL lines -> soft_fail
    local desc=$1 rc=0
    timeout 120 "$PY" - "$SOCK" >py.out 2>&1 || rc=$?
    cat py.out
    { grep '^FAIL' py.out || true; } | while read -r l; do soft_fail "$desc: ${l#FAIL: }"; done
    [ "$rc" -eq 0 ] || soft_fail "$desc: the python client exited $rc"
}

say "(a) 500 connections at once, then closed"
run_py "500 connections" <<'PY'
import sys; sys.path.insert(0, "."); from nbdraw import *
path = sys.argv[1]
socks, refused = [], 0
for i in range(500):
    try:
        socks.append(connect(path, 5))
    except OSError as e:
        refused += 1
greeted = closed = 0
for s in socks:
    try:
        greeting(s); greeted += 1
    except (EOFError, ConnectionResetError):
        closed += 1
    except socket.timeout:
        print("FAIL: a connection got neither a greeting nor EOF within 5 s")
print(f"connected {len(socks)}, refused at connect {refused}, greeted {greeted}, closed by the server {closed}")
if greeted == 0:
    print("FAIL: no connection was greeted")
for s in socks:
    s.close()
PY
alive "after 500 connections"
answers || soft_fail "the server does not answer nbdinfo within 5 s after 500 connections were closed"
for i in $(seq 50); do
    [ "$(threads "$SERVER_PID")" -le "$base_threads" ] && [ "$(fds "$SERVER_PID")" -le "$base_fds" ] && break
    sleep 0.1
done
[ "$(threads "$SERVER_PID")" -le "$base_threads" ] ||
    soft_fail "threads: $(threads "$SERVER_PID") after the connections closed, $base_threads before"
[ "$(fds "$SERVER_PID")" -le "$base_fds" ] ||
    soft_fail "file descriptors: $(fds "$SERVER_PID") after the connections closed, $base_fds before"

say "(b) garbage after the greeting, instead of an option, instead of a request"
run_py "garbage" <<'PY'
import sys; sys.path.insert(0, "."); from nbdraw import *
path = sys.argv[1]
s = connect(path); greeting(s)
s.sendall(os.urandom(4096))
if not closed_by_server(s):
    print("FAIL: garbage after the greeting: the server kept the connection open")
s.close()
s = connect(path); start(s)
s.sendall(b"\xff" * 8 + os.urandom(4088))
if not closed_by_server(s):
    print("FAIL: garbage instead of an option: the server kept the connection open")
s.close()
s = connect(path); start(s); go(s)
s.sendall(os.urandom(28) + os.urandom(4096))
if not closed_by_server(s):
    print("FAIL: garbage instead of a request: the server kept the connection open")
s.close()
print("garbage: done")
PY
alive "after garbage"
answers || soft_fail "the server does not answer nbdinfo after garbage"

say "(c) an option of 4 GiB announced; an option of 100000 bytes"
run_py "huge option" <<'PY'
import sys; sys.path.insert(0, "."); from nbdraw import *
path = sys.argv[1]
for opt, name in ((OPT_INFO, "INFO"), (OPT_EXPORT_NAME, "EXPORT_NAME"), (OPT_GO, "GO")):
    s = connect(path); start(s)
    t = time.time()
    option(s, opt, b"", length=0xFFFFFFFF)
    if not closed_by_server(s, 5):
        print(f"FAIL: 4 GiB NBD_OPT_{name}: the server did not close the connection within 5 s")
    s.close()
s = connect(path); start(s)
option(s, OPT_INFO, b"\0" * 100000)
try:
    _, typ, _ = opt_reply(s)
    if typ != REP_ERR_TOO_BIG:
        print(f"FAIL: a 100000-byte option got reply {typ:#x}, expected NBD_REP_ERR_TOO_BIG")
    size = go(s)
    request(s, CMD_READ, 1, 0, 4096)
    err, cookie, data = reply(s, 4096)
    if err or cookie != 1 or data != b"\0" * 4096:
        print(f"FAIL: read after a too-big option: error {err}")
    request(s, CMD_DISC, 2, 0, 0)
except Exception as e:
    print(f"FAIL: after a too-big option: {e!r}")
s.close()
print("huge options: done")
PY
alive "after huge options"
answers || soft_fail "the server does not answer nbdinfo after huge options"

say "(d) reads and writes beyond the end"
rc=0
qemu-io -f raw "$URI" -c "read $((SIZE - 512)) 4096" >qio.out 2>&1 || rc=$?
cat qio.out
[ "$rc" -ne 0 ] || soft_fail "qemu-io read beyond the end succeeded"
alive "after qemu-io read beyond the end"
qemu-io -f raw "$URI" -c "read -P 0 $((SIZE - 4096)) 4096" >/dev/null 2>&1 ||
    soft_fail "qemu-io cannot read the last 4 KiB after a read beyond the end"
run_py "beyond the end" <<'PY'
import sys; sys.path.insert(0, "."); from nbdraw import *
path = sys.argv[1]
s = connect(path); start(s); size = go(s)
if size != 256 << 20:
    print(f"FAIL: export size {size}")
cases = [
    ("read across the end", CMD_READ, size - 512, 4096, b""),
    ("read past the end", CMD_READ, size, 512, b""),
    ("read wrapping past 2^64", CMD_READ, (1 << 64) - 512, 1024, b""),
    ("read of 4 GiB - 1", CMD_READ, 0, 0xFFFFFFFF, b""),
    ("write across the end", CMD_WRITE, size - 512, 4096, b"\x5a" * 4096),
]
for i, (desc, typ, off, ln, payload) in enumerate(cases):
    try:
        request(s, typ, 100 + i, off, ln, payload)
        err, cookie, _ = reply(s)
        if cookie != 100 + i:
            print(f"FAIL: {desc}: reply for cookie {cookie}, expected {100 + i}")
        if err == 0:
            print(f"FAIL: {desc}: no error")
        else:
            print(f"{desc}: error {err}")
        # the connection survives: a good read on it
        request(s, CMD_READ, 200 + i, size - 4096, 4096)
        err, cookie, data = reply(s, 4096)
        if err or cookie != 200 + i or data != b"\0" * 4096:
            print(f"FAIL: {desc}: the next good read failed (error {err}, cookie {cookie})")
    except Exception as e:
        print(f"FAIL: {desc}: {e!r}")
        s.close()
        s = connect(path); start(s); go(s)
request(s, CMD_DISC, 999, 0, 0)
s.close()
print("beyond the end: done")
PY
alive "after requests beyond the end"
answers || soft_fail "the server does not answer nbdinfo after requests beyond the end"

touch rss.stop
wait "$MON_PID" 2>/dev/null || true
peak=$(cat rss.peak 2>/dev/null || echo 0)
now=$(rss_kb "$SERVER_PID")
say "server VmRSS: peak $peak kB, now $now kB (limit $RSS_LIMIT_KB kB)"
[ "$peak" -lt "$RSS_LIMIT_KB" ] || soft_fail "server VmRSS peaked at $peak kB (limit $RSS_LIMIT_KB kB)"
[ "$now" -lt "$RSS_LIMIT_KB" ] || soft_fail "server VmRSS is $now kB after the hostile clients (limit $RSS_LIMIT_KB kB)"
stop_server
ploop_ok check "$DD" >/dev/null
ploop_ok export "$DD" exported.raw >/dev/null
truncate -s "$SIZE" zeros.raw
cmp exported.raw zeros.raw || soft_fail "the disk no longer reads all zeros after the hostile clients"
finish
