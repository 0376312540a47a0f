#!/usr/bin/env bash
# The FUSE + loop device path: this project's device daemon (`ploop mount --device fuse`, device
# only, no file system) against qemu-storage-daemon's FUSE export of the same data as a raw file
# (cache.direct=on, aio=io_uring) with `losetup --direct-io=on` over it. fio (io_uring, direct=1)
# runs on the two loop devices: 4 KiB random read and overwrite at QD32, 1 MiB sequential read and
# overwrite at QD8. Goal printed per workload: ours >= 1.0x qsd.
#
#   sudo PLOOP=build/release/tools/ploop bench/fuse-vs-qsd.sh
#
# Environment: PLOOP (this project's CLI; default <repo>/build/release/tools/ploop; never the
# Debian /usr/sbin/ploop), ROUNDS (default 3), RUNTIME seconds per fio run (default 10), SIZE_MB
# (default 1024), WORKLOADS (default "randread randwrite seqread seqwrite"), SCRATCH (directory to
# create the files in; default a new directory under bench/, on the repository's filesystem),
# VERIFY=0 skips the final data check (fio verify through both loop devices; a failure of ours
# is fatal, qsd's is reported: qemu 7.2's FUSE export is known to misplace concurrent writes from a
# direct-I/O loop device).
#
# Each run starts its server and loop device and removes both afterwards; our daemon keeps its
# state in a private PLOOP_RUN_DIR under the scratch directory. The two sides alternate, ours
# first in odd rounds and qsd first in even ones; /proc/loadavg is recorded at the start of each
# round. The result per workload is the median over the rounds of each side's figure, and the
# median of the per-round ratios ours/qsd.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
PLOOP=${PLOOP:-$repo/build/release/tools/ploop}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}
SIZE_MB=${SIZE_MB:-1024}
WORKLOADS=${WORKLOADS:-"randread randwrite seqread seqwrite"}
VERIFY=${VERIFY:-1}

source "$here/lib.sh"
bench_ploop
bench_need fio jq qemu-storage-daemon losetup
[[ -c /dev/fuse ]] || { echo "no /dev/fuse" >&2; exit 2; }

bench_scratch fuse-vs-qsd
export PLOOP_RUN_DIR=$scratch/run
mkdir -p "$PLOOP_RUN_DIR"
raw=$scratch/disk.raw
dd_xml=$scratch/ploop/DiskDescriptor.xml
qsd_file=$scratch/qsd-export   # qsd's FUSE export is mounted over this regular file
results=$scratch/results       # round workload side value p99_us mean_us server_cpu_s
loads=$scratch/loads
ours_up=0 qsd_pid="" qsd_loop="" dev="" pid=""

down_ours() {
  ((ours_up)) || return 0
  "$PLOOP" umount "$dd_xml" >/dev/null
  ours_up=0
}
down_qsd() {
  if [[ -n $qsd_loop ]]; then losetup -d "$qsd_loop"; qsd_loop=""; fi
  if [[ -n $qsd_pid ]]; then
    kill "$qsd_pid" 2>/dev/null || true   # qsd unmounts its export on SIGTERM
    for _ in $(seq 600); do kill -0 "$qsd_pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$qsd_pid" 2>/dev/null && { echo "qemu-storage-daemon $qsd_pid did not stop" >&2; return 1; }
    qsd_pid=""
  fi
  return 0
}
cleanup() {
  down_ours || "$PLOOP" umount "$dd_xml" || true
  down_qsd || { kill -9 "$qsd_pid" 2>/dev/null; fusermount3 -u "$qsd_file" 2>/dev/null; } || true
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


echo "# scratch: $scratch ($(stat -f -c %T "$scratch")), ${SIZE_MB} MiB, ROUNDS=$ROUNDS RUNTIME=${RUNTIME}s, PLOOP=$PLOOP" >&2
echo "# $(fio --version), $(qemu-storage-daemon --version | head -1)" >&2
echo "# creating the data (random, fully allocated): raw, ploop import" >&2
dd if=/dev/urandom of="$raw" bs=1M count="$SIZE_MB" status=none
mkdir "$scratch/ploop"
"$PLOOP" import "$raw" "$scratch/ploop/root.hdd" >/dev/null
: >"$qsd_file"
sync

up_ours() {  # sets dev, pid
  "$PLOOP" mount --device fuse "$dd_xml" >/dev/null
  ours_up=1
  local j
  j=$("$PLOOP" list --json | jq -c --arg dd "$(realpath "$dd_xml")" '.[] | select(.dd == $dd)')
  [[ $(jq -r .direct_io <<<"$j") == true ]] || { echo "our loop device has no direct I/O: $j" >&2; exit 1; }
  dev=$(jq -r .device <<<"$j")
  pid=$(jq -r .pid <<<"$j")
}

up_qsd() {  # sets dev, pid
  rm -f "$scratch/qsd.pid"
  qemu-storage-daemon --daemonize --pidfile "$scratch/qsd.pid" \
    --blockdev driver=file,node-name=file0,filename="$raw",cache.direct=on,aio=io_uring \
    --blockdev driver=raw,node-name=fmt0,file=file0 \
    --export type=fuse,id=exp0,node-name=fmt0,mountpoint="$qsd_file",writable=on >/dev/null
  qsd_pid=$(cat "$scratch/qsd.pid")
  qsd_loop=$(losetup -f --show --direct-io=on "$qsd_file")
  [[ $(losetup -n -O DIO "$qsd_loop" | tr -d ' ') == 1 ]] || { echo "qsd's loop device has no direct I/O" >&2; exit 1; }
  dev=$qsd_loop
  pid=$qsd_pid
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_fio() {  # workload device -> "value p99_us mean_us"
  local bs qd rw unit
  read -r bs qd rw unit < <(bench_params "$1")
  fio --name="$1" --ioengine=io_uring --direct=1 --filename="$2" --size="${SIZE_MB}M" \
             --rw="$rw" --bs="$bs" --iodepth="$qd" --runtime="$RUNTIME" --time_based \
             --norandommap --randrepeat=0 --output-format=json --output="$scratch/fio.json" >/dev/null
  local dir=read
  [[ $rw == *write ]] && dir="write"
  local value=".$dir.iops | floor"
  [[ $unit == mibps ]] && value=".$dir.bw_bytes / 1048576 | . * 10 | floor / 10"
  jq -r ".jobs[0] | \"\\($value) \\(.$dir.clat_ns.percentile[\"99.000000\"] / 1000 | floor) \\(.$dir.clat_ns.mean / 1000 | floor)\"" "$scratch/fio.json"
}

hz=$(getconf CLK_TCK)
for ((round = 1; round <= ROUNDS; round++)); do
  read -r l1 l5 l15 _ < /proc/loadavg
  echo "$round $l1 $l5 $l15" >>"$loads"
  echo "# round $round: loadavg $l1 $l5 $l15" >&2
  if ((round % 2)); then order="ours qsd"; else order="qsd ours"; fi
  for w in $WORKLOADS; do
    for side in $order; do
      up_"$side"
      t0=$(cpu_ticks "$pid")
      v=$(run_fio "$w" "$dev")
      t1=$(cpu_ticks "$pid")
      down_"$side"
      cpu=$(awk -v t="$((t1 - t0))" -v hz="$hz" 'BEGIN { printf "%.1f", t / hz }')
      echo "$round $w $side $v $cpu" >>"$results"
      echo "round $round  $w  $side ($dev)  $v  server_cpu_s=$cpu" >&2
    done
  done
done

# Correctness: the image must check clean after the overwrites; data written through each loop
# device must read back (fio verify: 4 KiB random writes at QD32 over 256 MiB, then a read pass
# checking every block's crc32c and header).
"$PLOOP" check "$dd_xml" >/dev/null || { echo "ploop check failed after the runs" >&2; exit 1; }
echo "# ploop check after the runs: OK" >&2
verify() {  # device log
  fio --name=verify --ioengine=io_uring --direct=1 --filename="$1" --size=$((SIZE_MB < 256 ? SIZE_MB : 256))M --rw=randwrite --bs=4096 \
      --iodepth=32 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --randrepeat=0 >"$2" 2>&1
}
verdict_qsd="not run"
if [[ $VERIFY == 1 ]]; then
  up_ours
  if ! verify "$dev" "$scratch/verify-ours.log"; then
    grep -v 'rw=' "$scratch/verify-ours.log" | grep -m3 -iE 'bad|fail|mismatch|err=' >&2 || true
    echo "fio verify through ploop mount --device fuse ($dev) FAILED" >&2
    exit 1
  fi
  down_ours
  "$PLOOP" check "$dd_xml" >/dev/null || { echo "ploop check failed after the verify run" >&2; exit 1; }
  echo "# fio verify (256 MiB, 4 KiB random writes QD32, crc32c) through our loop device: OK" >&2
  up_qsd
  if verify "$dev" "$scratch/verify-qsd.log"; then verdict_qsd=OK; else
    verdict_qsd="FAILED: $(grep -v 'rw=' "$scratch/verify-qsd.log" | grep -m1 -iE 'bad|fail|mismatch|err=' || echo "fio exited non-zero")"
  fi
  down_qsd
  echo "# fio verify through qsd's loop device: $verdict_qsd" >&2
fi

# Tables.
echo
echo "loadavg at the start of each round (1, 5, 15 min):"
awk '{ printf "  round %s: %s %s %s\n", $1, $2, $3, $4 }' "$loads"
echo
echo "medians over $ROUNDS rounds (value; p99 and mean completion latency in us; server CPU s per ${RUNTIME} s run),"
echo "ours / qsd: median of the per-round ratios (min-max); goal >= 1.0:"
printf '%-10s %-6s %26s %26s %6s %11s  %s\n' workload unit "qsd" "ours" ratio "min-max" goal
for w in $WORKLOADS; do
  read -r _ _ _ unit < <(bench_params "$w")
  awk -v w="$w" -v unit="$unit" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function cell(s,   i, n, v, p, m, c) {
      for (i = 1; i <= nr; i++) if (S[i] == s) { n++; v[n] = V[i]; p[n] = P[i]; m[n] = M[i]; c[n] = C[i] }
      return sprintf("%.1f (%d/%d us, %.1f)", median(v, n), median(p, n), median(m, n), median(c, n))
    }
    $2 == w { nr++; S[nr] = $3; V[nr] = $4; P[nr] = $5; M[nr] = $6; C[nr] = $7; val[$1, $3] = $4; rounds[$1] = 1 }
    END {
      for (r in rounds) if (val[r, "qsd"] > 0) { n++; q[n] = val[r, "ours"] / val[r, "qsd"] }
      qm = median(q, n)
      printf "%-10s %-6s %26s %26s %6.2f %5.2f-%-5.2f  %s\n", w, unit, cell("qsd"), cell("ours"), qm, q[1], q[n],
             (qm >= 1.0 ? "met" : "NOT met")
    }' "$results"
done
[[ $VERIFY == 1 ]] && echo "fio verify: ours OK; qsd $verdict_qsd"
exit 0
