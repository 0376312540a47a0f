#!/usr/bin/env bash
# `ploop serve --tcp` listens on loopback only unless told otherwise: with `--tcp 127.0.0.1:PORT`
# it prints `serving DISK at nbd://127.0.0.1:PORT` and nbdinfo over nbd://127.0.0.1:PORT reports
# the export; with `--tcp PORT` alone `ss -ltn` shows it bound to 127.0.0.1:PORT and never to
# 0.0.0.0 / [::]; `--tcp 0` takes a free port chosen by the kernel, prints it, and that port is
# on 127.0.0.1 and answers. Data written over one TCP server reads back over the next. After each
# SIGINT, `ploop check` is clean. Only loopback addresses are ever used.
source "$(dirname "$0")/lib.sh"
need_tool nbdinfo qemu-io ss python3
PY=python3   # a system python starts faster than a version manager's shim
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

source "$(dirname "$0")/nbd_lib.sh"   # stop_server, nbd_cleanup (the server here listens on TCP)
# start_tcp TCP_ARG DISK : `ploop serve --tcp TCP_ARG DISK` in the background; sets SERVER_URI
start_tcp() {
    : >"$WORK/serve.log"
    "$PLOOP" serve --tcp "$1" "$2" >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 100); do
        grep -q '^serving ' "$WORK/serve.log" && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^serving ' "$WORK/serve.log" || { cat "$WORK/serve.log" >&2; fail "ploop serve --tcp $1 did not start"; }
    SERVER_URI=$(sed -n 's/^serving .* at \(nbd:[^ ]*\)$/\1/p' "$WORK/serve.log")
}
trap nbd_cleanup EXIT

# free_port : a TCP port on 127.0.0.1 that nothing listens on right now
free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
# listeners PORT : the local addresses listening on PORT, one a line
listeners() { ss -ltnH "sport = :$1" | awk '{ print $4 }'; }

SIZE=$((256 << 20))
mkdir disk
ploop_ok init -s 256M disk/img.hds >/dev/null
DD=$WORK/disk/DiskDescriptor.xml

PORT=$(free_port)
say "--tcp 127.0.0.1:$PORT"
start_tcp "127.0.0.1:$PORT" "$DD"
[ "$SERVER_URI" = "nbd://127.0.0.1:$PORT" ] || soft_fail "serve printed '$(cat serve.log)', expected the URI nbd://127.0.0.1:$PORT"
nbdinfo --json "nbd://127.0.0.1:$PORT" >info.json || soft_fail "nbdinfo over nbd://127.0.0.1:$PORT failed"
"$PY" -c 'import json,sys; e=json.load(open(sys.argv[1]))["exports"][0]; assert e["export-size"] == int(sys.argv[2]), e["export-size"]' info.json "$SIZE" ||
    soft_fail "nbdinfo over TCP: wrong export size"
[ "$(listeners "$PORT")" = "127.0.0.1:$PORT" ] || soft_fail "listening on: $(listeners "$PORT" | tr '\n' ' '), expected 127.0.0.1:$PORT only"
qemu-io -f raw "nbd://127.0.0.1:$PORT" -c 'write -P 0x3c 1M 64k' >/dev/null || soft_fail "qemu-io write over TCP failed"
stop_server
ploop_ok check "$DD" >/dev/null

PORT=$(free_port)
say "--tcp $PORT alone binds 127.0.0.1 only"
start_tcp "$PORT" "$DD"
[ "$SERVER_URI" = "nbd://127.0.0.1:$PORT" ] || soft_fail "serve --tcp $PORT printed '$(cat serve.log)'"
got=$(listeners "$PORT")
say "listening: $(echo "$got" | tr '\n' ' ')"
[ "$got" = "127.0.0.1:$PORT" ] || soft_fail "serve --tcp $PORT listens on: $(echo "$got" | tr '\n' ' '), expected 127.0.0.1:$PORT only"
echo "$got" | grep -qE '^(0\.0\.0\.0|\*|\[::\]):' && soft_fail "serve --tcp $PORT listens on a wildcard address"
qemu-io -f raw "nbd://127.0.0.1:$PORT" -c 'read -P 0x3c 1M 64k' >/dev/null ||
    soft_fail "data written over the first TCP server does not read back over the second"
stop_server
ploop_ok check "$DD" >/dev/null

say "--tcp 0: a port chosen by the kernel"
start_tcp 0 "$DD"
port=${SERVER_URI##*:}
case "$SERVER_URI" in
    nbd://127.0.0.1:[1-9]*) ;;
    *) soft_fail "serve --tcp 0 printed '$(cat serve.log)', expected nbd://127.0.0.1:<port>" ;;
esac
if [ -n "$port" ] && [ "$port" != 0 ]; then
    [ "$(listeners "$port")" = "127.0.0.1:$port" ] || soft_fail "serve --tcp 0: port $port is not listening on 127.0.0.1 only: $(listeners "$port" | tr '\n' ' ')"
    nbdinfo --size "nbd://127.0.0.1:$port" >size.txt || soft_fail "nbdinfo on the port chosen for --tcp 0 failed"
    [ "$(cat size.txt)" = "$SIZE" ] || soft_fail "nbdinfo --size over --tcp 0: $(cat size.txt)"
fi
stop_server
ploop_ok check "$DD" >/dev/null
finish
