#!/usr/bin/env bash
# The in-VM test runner: runs every tests/*.sh (or those PLOOP_VM_TESTS names) once per front end
# in $PLOOP_VM_FRONTS (a test whose header has the line `# vm: once` runs once, as front "auto"),
# each in its own scratch directory under a time limit, and prints its output and
# `PASS|FAIL|SKIP NAME [FRONT] (N s)`, on a failure with the kernel's messages and the daemon
# logs. After each test it takes down whatever the test left mounted, so one failure does not
# spoil the next test. Exits with the number failed.
export PLOOP=/opt/ploop/bin/ploop
TESTS=/opt/ploop/tests
LIMIT=${PLOOP_VM_TEST_TIMEOUT:-300}
failed=0 passed=0 skipped=0 summary=()

# Take down every disk `ploop list` knows, then by force what is still left.
cleanup_all() {
    local dd pid m l
    local json pids dds
    json=$("$PLOOP" list --json 2>/dev/null)
    pids=$(echo "$json" | sed -n 's/^ *"pid": *\([0-9]*\).*/\1/p')
    dds=$(echo "$json" | sed -n 's/^ *"dd": *"\(.*\)",*$/\1/p')
    for dd in $dds; do
        timeout 90 "$PLOOP" umount "$dd" >/dev/null 2>&1 || echo "   (cleanup: ploop umount $dd failed)"
    done
    for m in $(awk '$2 ~ "^/scratch/" { print $2 }' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
    for m in $(awk '$2 ~ "^/run/ploop/" { print $2 }' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
    for l in $(losetup -a 2>/dev/null | cut -d: -f1); do losetup -d "$l" 2>/dev/null; done
    rm -rf /scratch/* /run/ploop/* 2>/dev/null
    while read -r ko; do   # a test may have removed some
        m=${ko##*/}; m=${m%.ko}
        [ -d "/sys/module/${m//-/_}" ] || insmod "$ko"
    done </etc/modules.load
}

# The kernel's messages since the test started (the last 40), and the daemon logs it wrote.
diagnose() { # LOG_SINCE_FILE DMESG_LINES_BEFORE
    echo "   --- dmesg since the test started (tail) ---"
    dmesg | tail -n +$(($2 + 1)) | tail -40 | sed 's/^/   | /'
    local log
    find /run/ploop -name daemon.log -newer "$1" 2>/dev/null | while read -r log; do
        echo "   --- $log (tail) ---"
        tail -30 "$log" | sed 's/^/   | /'
    done
}

for t in "$TESTS"/*.sh; do
    name=$(basename "$t" .sh)
    [ "$name" = lib ] && continue
    [ -z "${PLOOP_VM_TESTS:-}" ] || [[ " $PLOOP_VM_TESTS " == *" $name "* ]] || continue
    fronts=$PLOOP_VM_FRONTS
    grep -q '^# vm: once' "$t" && fronts=auto
    for front in $fronts; do
        work=/scratch/$name-$front
        mkdir -p "$work"
        touch /tmp/since
        klines=$(dmesg | wc -l)
        echo "== $name [$front]"
        start=$(date +%s)
        (cd "$work" && FRONT=$front timeout -s KILL "$LIMIT" bash "$t" "$front") >/tmp/test.out 2>&1
        rc=$?
        secs=$(( $(date +%s) - start ))
        sed 's/^/   /' /tmp/test.out
        case $rc in
            0) verdict=PASS; passed=$((passed + 1)) ;;
            77) verdict=SKIP; skipped=$((skipped + 1)) ;;
            *) verdict=FAIL; failed=$((failed + 1))
               [ "$rc" = 137 ] && echo "   TIMEOUT: killed after $LIMIT s (a hang)"
               diagnose /tmp/since "$klines" ;;
        esac
        echo "$verdict $name [$front] (${secs} s)"
        summary+=("$verdict $name [$front]")
        cleanup_all
    done
done

echo "== summary: $passed passed, $failed failed, $skipped skipped"
printf '   %s\n' "${summary[@]}"
exit "$failed"
