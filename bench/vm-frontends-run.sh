#!/usr/bin/env bash
# The in-VM half of bench/vm-frontends.sh (run by the test VM's /init with ploop.bench=, in
# /scratch, a tmpfs). Attaches four block devices over the same kind of data on the same tmpfs:
#   loop  util-linux `losetup --direct-io=on` over a raw file (the baseline)
#   ublk, nbd, fuse  `ploop mount --device FRONT DD.xml` (device only) of a blank raw-format disk
# fills each completely (fio, 1 MiB sequential writes) so that reads hit data and writes are
# overwrites, then runs the fio workloads in rounds, the device order rotating each round
# (A B C D, B C D A, ...), and prints one line per run for the host:
#   BENCH ROUND WORKLOAD DEVICE VALUE UNIT IOS VM_BUSY_TICKS DAEMON_TICKS CLAT_MEAN_US ELAPSED_CS
# (VALUE: IOPS or MiB/s; ticks are USER_HZ: VM_BUSY of all CPUs from /proc/stat, DAEMON of the
# serving process, 0 for loop; ELAPSED_CS: wall time of the fio process, fio's start included). At the end: a fio verify=crc32c pass on each device, umount and
# `ploop check`. Exits with the number of failures (a device that hangs or errs is reported with
# BENCH-ERROR and left out of the later runs).
# Settings come from bench.conf next to this script: ROUNDS RUNTIME SIZE_MB WORKLOADS DEVICES.
here=$(cd "$(dirname "$0")" && pwd)
ROUNDS=3 RUNTIME=5 SIZE_MB=256 WORKLOADS="randread randwrite seqread seqwrite" DEVICES="loop ublk nbd fuse"
# shellcheck disable=SC1091
[ -f "$here/bench.conf" ] && source "$here/bench.conf"
mkdir -p /scratch/bench && cd /scratch/bench || exit 1
# shellcheck disable=SC1091
source /opt/ploop/tests/lib.sh    # entry/field/mount_disk; sets -uo pipefail
LOSETUP=/usr/sbin/losetup         # util-linux (busybox's has no --direct-io)
FIO_LIMIT=$((RUNTIME + 90))       # a run taking longer than this is a hang

failures=0
declare -A dev=() pid=() dd=() broken=()

error() { # DEVICE MESSAGE : report, mark DEVICE broken, show the kernel's last words
    echo "BENCH-ERROR $1 $2"
    broken[$1]=1
    failures=$((failures + 1))
    dmesg | tail -15 | sed 's/^/   | /'
    local log
    for log in /run/ploop/*/daemon.log; do
        [ -f "$log" ] && { echo "   --- $log"; tail -10 "$log" | sed 's/^/   | /'; }
    done
}

# params WORKLOAD -> "BS QD RW UNIT"
params() {
    case $1 in
        randread) echo "4k 32 randread iops" ;;
        randwrite) echo "4k 32 randwrite iops" ;;
        seqread) echo "1M 8 read mibps" ;;
        seqwrite) echo "1M 8 write mibps" ;;
        *) echo "unknown workload $1" >&2; return 1 ;;
    esac
}

uptime_cs() { local up _r; read -r up _r </proc/uptime; echo $((10#${up/./})); }
cpu_busy() { local _c u n s _i w q sq st; read -r _c u n s _i w q sq st _ </proc/stat; echo $((u + n + s + q + sq + st)); }
daemon_ticks() { # DEVICE
    local p=${pid[$1]:-} f
    if [ -z "$p" ] || [ ! -r "/proc/$p/stat" ]; then echo 0; return; fi
    read -r -a f <"/proc/$p/stat"
    echo $((f[13] + f[14]))
}

# attach DEVICE : the device node in dev[DEVICE], the server's pid in pid[DEVICE]
attach() {
    local d=$1
    mkdir -p "$d"
    if [ "$d" = loop ]; then
        truncate -s "${SIZE_MB}M" loop/raw
        dev[loop]=$($LOSETUP --direct-io=on --show -f loop/raw) || { error loop "losetup failed"; return; }
        echo "   loop: ${dev[loop]} over a raw file on tmpfs, dio=$(cat "/sys/block/${dev[loop]#/dev/}/loop/dio")"
        return
    fi
    dd[$d]=$WORK/$d/DiskDescriptor.xml
    # lib.sh's helpers exit on failure: run them in a subshell
    (timeout 120 "$PLOOP" init -s "${SIZE_MB}M" -t none "$WORK/$d/root.hds" >/dev/null &&
        FRONT=$d mount_disk "${dd[$d]}") || { error "$d" "ploop init or mount --device $d failed"; return; }
    local e
    e=$(entry "${dd[$d]}")
    dev[$d]=$(get "$e" device) pid[$d]=$(get "$e" pid)
    local extra=""
    [ "$d" = fuse ] && extra=", its loop device's dio=$(cat "/sys/block/${dev[$d]#/dev/}/loop/dio" 2>/dev/null)"
    echo "   $d: ${dev[$d]}, daemon pid ${pid[$d]}$extra"
}

# fio_run DEVICE NAME ARGS... : fio on DEVICE's node with the common options; terse line in $FIO_OUT
fio_run() {
    local d=$1 name=$2 rc=0
    shift 2
    FIO_OUT=$(timeout -s KILL "$FIO_LIMIT" fio --name="$name" --filename="${dev[$d]}" --ioengine=io_uring \
        --direct=1 --output-format=terse --terse-version=3 "$@" 2>&1) || rc=$?
    if [ "$rc" != 0 ]; then
        if [ "$rc" = 137 ]; then
            error "$d" "fio $name did not finish in $FIO_LIMIT s (a hang)"
        else
            error "$d" "fio $name exited $rc: $(echo "$FIO_OUT" | tail -5 | tr '\n' ' ')"
        fi
        return 1
    fi
}

echo "== vm-frontends: $(nproc) CPUs, kernel $(uname -r), ROUNDS=$ROUNDS RUNTIME=$RUNTIME SIZE_MB=$SIZE_MB"
echo "== attaching: $DEVICES"
for d in $DEVICES; do attach "$d"; done

echo "== filling each device (${SIZE_MB} MiB, 1 MiB sequential writes, QD 8)"
for d in $DEVICES; do
    [ -n "${broken[$d]:-}" ] && continue
    SECONDS=0
    fio_run "$d" fill --rw=write --bs=1M --iodepth=8 --size="${SIZE_MB}M" || continue
    echo "   $d filled in ${SECONDS} s"
done

read -r -a order <<<"$DEVICES"
n=${#order[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    echo "== round $round: load $(cut -d' ' -f1-3 /proc/loadavg)"
    for w in $WORKLOADS; do
        read -r bs qd rw unit <<<"$(params "$w")"   # (no /dev/fd in the VM)
        for ((k = 0; k < n; k++)); do
            d=${order[$(((round - 1 + k) % n))]}
            [ -n "${broken[$d]:-}" ] && continue
            b0=$(cpu_busy) t0=$(daemon_ticks "$d") u0=$(uptime_cs)
            fio_run "$d" "$w" --rw="$rw" --bs="$bs" --iodepth="$qd" --size="${SIZE_MB}M" \
                --runtime="$RUNTIME" --time_based --norandommap --randrepeat=0 || continue
            b1=$(cpu_busy) t1=$(daemon_ticks "$d") u1=$(uptime_cs)
            line=$(echo "$FIO_OUT" | grep '^3;' | tail -1)
            IFS=';' read -r -a f <<<"$line"
            # terse v3: read io_kb/bw_KiB/iops/.../clat mean at 6/7/8/16, write at 47/48/49/57
            if [[ $rw == *read ]]; then o=0; else o=41; fi
            kb=${f[$((5 + o))]:-0} bw=${f[$((6 + o))]:-0} iops=${f[$((7 + o))]:-0} clat=${f[$((15 + o))]:-0}
            bs_kb=4; [ "$bs" = 1M ] && bs_kb=1024
            ios=$((kb / bs_kb))
            if [ "$unit" = iops ]; then value=$iops; else value=$((bw * 10 / 1024)); value=$((value / 10)).$((value % 10)); fi
            [ "$ios" -gt 0 ] || { error "$d" "fio $w completed no I/O: $line"; continue; }
            echo "BENCH $round $w $d $value $unit $ios $((b1 - b0)) $((t1 - t0)) ${clat%.*} $((u1 - u0))"
        done
    done
done

echo "== verify: fio verify=crc32c (4 KiB random writes at QD 32 over 32 MiB, read back) on each device"
for d in $DEVICES; do
    [ -n "${broken[$d]:-}" ] && continue
    if fio_run "$d" verify --rw=randwrite --bs=4k --iodepth=32 --size=32M --randrepeat=0 \
        --verify=crc32c --verify_fatal=1 --do_verify=1; then
        echo "VERIFY $d OK"
    else
        echo "VERIFY $d FAILED"
    fi
done

echo "== detaching"
for d in $DEVICES; do
    [ -n "${dev[$d]:-}" ] || continue
    if [ "$d" = loop ]; then
        $LOSETUP -d "${dev[loop]}" || error loop "losetup -d failed"
        continue
    fi
    if (umount_disk "${dd[$d]}" && ploop_ok check "${dd[$d]}" >/dev/null); then
        echo "CHECK $d OK"
    else
        echo "CHECK $d FAILED"
        error "$d" "umount or ploop check failed"
    fi
done
echo "== vm-frontends: $failures failure(s)"
exit "$failures"
