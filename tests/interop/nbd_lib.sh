# Helpers shared by the test-nbd-*.sh scripts: the socket, and starting and stopping
# `ploop serve` on it. Sourced after lib.sh.
SOCK=$WORK/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
SERVER_PID=

# start_server [serve options...] DISK : `ploop serve` in the background on $SOCK; returns once
# the socket exists and the server printed its "serving" line (it listens by then)
start_server() {
    rm -f "$SOCK"
    "$PLOOP" serve --socket "$SOCK" "$@" >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 100); do
        [ -S "$SOCK" ] && grep -q "^serving " "$WORK/serve.log" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/serve.log" >&2
    fail "ploop serve $* did not create $SOCK"
}
# stop_server : SIGINT, wait (30 s at most); fails softly unless it exits 0
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    local pid=$SERVER_PID rc=0 i
    SERVER_PID=
    kill -INT "$pid" 2>/dev/null || true
    for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        soft_fail "ploop serve (PID $pid) did not stop within 30 s of SIGINT"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$WORK/serve.log" >&2; soft_fail "ploop serve exited $rc after SIGINT"; }
}
# kill_server : for EXIT traps: the server down whatever its state (SIGINT, 5 s, then SIGKILL)
kill_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -INT "$SERVER_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    return 0
}
# nbd_cleanup : an EXIT trap (`trap nbd_cleanup EXIT`): kill_server, then lib.sh's cleanup
nbd_cleanup() {
    set +e
    kill_server
    cleanup
}
