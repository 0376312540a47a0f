#!/usr/bin/env bash
# NBD server throughput: this project's `ploop serve` against qemu-nbd (the same data as a raw file
# and as a fully allocated qcow2, both --cache=none --aio=io_uring) and `nbdkit file` (cache=none),
# measured by fio's nbd engine (libnbd, Unix socket) in one run on the same data: 4 KiB random
# read and overwrite, 1 MiB sequential read and overwrite. Goals printed per workload:
# ours >= 1.2x qemu-nbd(qcow2) and >= 1.0x qemu-nbd(raw).
#
#   sudo PLOOP=build/release/tools/ploop bench/nbd-vs-peers.sh
#
# Environment: PLOOP (this project's CLI; default <repo>/build/release/tools/ploop; never the
# Debian /usr/sbin/ploop), ROUNDS (default 3), RUNTIME seconds per fio run (default 10), SIZE_MB
# (default 1024), WORKLOADS (default "randread randwrite seqread seqwrite"), SERVERS (default
# "ours qemu-raw qemu-qcow2 nbdkit disk"; `disk` is no server: fio itself on the raw file with
# io_uring and O_DIRECT, the same jobs and depths, i.e. what the disk gives without any NBD in the
# way, the ceiling every O_DIRECT server shares), RAND_JOBS (default 4: 4 KiB random runs use RAND_JOBS fio jobs
# with QD 32/RAND_JOBS each, one NBD connection per job, 32 requests in flight in total),
# SEQ_JOBS (default 1: 1 MiB sequential runs use SEQ_JOBS jobs of QD 8/SEQ_JOBS, each on its own
# part of the disk), SCRATCH (directory to create the files in; default a new directory under
# bench/, on the repository's filesystem), VERIFY=0 skips the final data check of our server.
#
# Why several connections for random I/O: `ploop serve` and qemu-nbd execute at most 16 requests
# of one connection at once (docs/cli.md, serve), nbdkit 16 (its thread count); a single
# connection at QD32 would compare those limits rather than the servers. 4 connections x QD 8 gives
# every server the same 32 requests to work on.
#
# Rounds: every server serves every workload once per round; the order of the servers rotates
# from round to round (A B C D, B C D A, ...), each server is started for its run and stopped after
# it, and /proc/loadavg is recorded at the start of each round. The result per workload is the median over
# the rounds of each server's figure, and the median of the per-round ratios ours/peer.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
PLOOP=${PLOOP:-$repo/build/release/tools/ploop}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}
SIZE_MB=${SIZE_MB:-1024}
WORKLOADS=${WORKLOADS:-"randread randwrite seqread seqwrite"}
SERVERS=${SERVERS:-"ours qemu-raw qemu-qcow2 nbdkit disk"}
RAND_JOBS=${RAND_JOBS:-4}
SEQ_JOBS=${SEQ_JOBS:-1}
VERIFY=${VERIFY:-1}

source "$here/lib.sh"
bench_ploop
bench_need fio jq qemu-nbd qemu-img nbdkit
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio has no nbd engine" >&2; exit 2; }
((32 % RAND_JOBS == 0 && 8 % SEQ_JOBS == 0)) || { echo "RAND_JOBS must divide 32, SEQ_JOBS 8" >&2; exit 2; }

bench_scratch nbd-vs-peers
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

raw=$scratch/disk.raw
qcow2=$scratch/disk.qcow2
dd_xml=$scratch/ploop/DiskDescriptor.xml
sock=$scratch/nbd.sock
results=$scratch/results   # round workload server value p99_us mean_us server_cpu_s
loads=$scratch/loads

# Block size, jobs, QD per job, fio rw= and the unit compared, per workload.
params() {
  case $1 in
    randread)  echo "4096 $RAND_JOBS $((32 / RAND_JOBS)) randread iops" ;;
    randwrite) echo "4096 $RAND_JOBS $((32 / RAND_JOBS)) randwrite iops" ;;
    seqread)   echo "1048576 $SEQ_JOBS $((8 / SEQ_JOBS)) read mibps" ;;
    seqwrite)  echo "1048576 $SEQ_JOBS $((8 / SEQ_JOBS)) write mibps" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}

echo "# scratch: $scratch ($(stat -f -c %T "$scratch")), ${SIZE_MB} MiB, ROUNDS=$ROUNDS RUNTIME=${RUNTIME}s" \
  "RAND_JOBS=$RAND_JOBS SEQ_JOBS=$SEQ_JOBS, PLOOP=$PLOOP" >&2
echo "# $(fio --version), $(qemu-nbd --version | head -1), $(nbdkit --version)" >&2
echo "# creating the data (random, fully allocated): raw, ploop import, qcow2 convert" >&2
dd if=/dev/urandom of="$raw" bs=1M count="$SIZE_MB" status=none
mkdir "$scratch/ploop"
"$PLOOP" import "$raw" "$scratch/ploop/root.hdd" >/dev/null
qemu-img convert -f raw -O qcow2 "$raw" "$qcow2"
sync
# Every cluster must hold data, so that reads hit data and writes are overwrites.
alloc=$(qemu-img map -f qcow2 --output=json "$qcow2" | jq '[.[] | select(.data) | .length] | add')
((alloc == SIZE_MB * 1048576)) || { echo "qcow2 not fully allocated ($alloc bytes)" >&2; exit 1; }
alloc=$(qemu-img map -f parallels --output=json "$scratch/ploop/root.hdd" | jq '[.[] | select(.data) | .length] | add')
((alloc == SIZE_MB * 1048576)) || { echo "ploop image not fully allocated ($alloc bytes)" >&2; exit 1; }

wait_socket() {  # pid
  for _ in $(seq 200); do
    [[ -S $sock ]] && return 0
    kill -0 "$1" 2>/dev/null || { echo "server exited before listening" >&2; return 1; }
    sleep 0.05
  done
  echo "server did not listen within 10 s" >&2
  return 1
}

start_server() {  # name; sets server_pid
  rm -f "$sock" "$scratch/pid"
  [[ $1 == disk ]] && { server_pid=""; return 0; }
  case $1 in
    ours)
      "$PLOOP" serve --socket "$sock" "$dd_xml" >"$scratch/serve.log" 2>&1 &
      server_pid=$! ;;
    qemu-raw|qemu-qcow2)
      local f=raw img=$raw
      [[ $1 == qemu-qcow2 ]] && { f=qcow2; img=$qcow2; }
      qemu-nbd --fork --pid-file="$scratch/pid" -t -e 16 -k "$sock" -f "$f" --cache=none --aio=io_uring "$img"
      server_pid=$(cat "$scratch/pid") ;;
    nbdkit)
      # nbdkit 1.32's file plugin has no O_DIRECT (cache=none evicts pages after writes): drop the
      # raw file's cached pages first, so that its reads start from the disk like the others'.
      sync "$raw"
      dd if="$raw" iflag=nocache count=0 status=none
      nbdkit -U "$sock" -P "$scratch/pid" file file="$raw" cache=none
      for _ in $(seq 100); do [[ -s $scratch/pid ]] && break; sleep 0.05; done
      server_pid=$(cat "$scratch/pid") ;;
  esac
  wait_socket "$server_pid"
}

stop_server() {
  [[ -n $server_pid ]] || return 0
  kill "$server_pid"
  for _ in $(seq 600); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$server_pid" 2>/dev/null; then echo "server $server_pid did not stop in 30 s" >&2; exit 1; fi
  wait "$server_pid" 2>/dev/null || true  # ours is our child; reap it
  server_pid=""
}

cpu_ticks() { if [[ -n $1 ]]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }

run_fio() {  # workload side -> "value p99_us mean_us"
  local bs jobs qd rw unit
  read -r bs jobs qd rw unit < <(params "$1")
  local extra=()
  # Sequential jobs each stream over their own part of the disk.
  [[ $rw == read || $rw == write ]] && ((jobs > 1)) &&
    extra=(--size=$((SIZE_MB / jobs))M --offset_increment=$((SIZE_MB / jobs))M)
  local target=(--ioengine=nbd --uri="nbd+unix:///?socket=$sock")
  [[ $2 == disk ]] && target=(--ioengine=io_uring --direct=1 --filename="$raw")
  fio --name="$1" "${target[@]}" --size="${SIZE_MB}M" "${extra[@]}" \
             --rw="$rw" --bs="$bs" --numjobs="$jobs" --iodepth="$qd" --group_reporting \
             --runtime="$RUNTIME" --time_based --norandommap --randrepeat=0 --output-format=json --output="$scratch/fio.json" >/dev/null
  local dir=read
  [[ $rw == *write ]] && dir="write"
  local value=".$dir.iops | floor"
  [[ $unit == mibps ]] && value=".$dir.bw_bytes / 1048576 | . * 10 | floor / 10"
  jq -r ".jobs[0] | \"\\($value) \\(.$dir.clat_ns.percentile[\"99.000000\"] / 1000 | floor) \\(.$dir.clat_ns.mean / 1000 | floor)\"" "$scratch/fio.json"
}

hz=$(getconf CLK_TCK)
nservers=$(wc -w <<<"$SERVERS")
for ((round = 1; round <= ROUNDS; round++)); do
  read -r l1 l5 l15 _ < /proc/loadavg
  echo "$round $l1 $l5 $l15" >>"$loads"
  echo "# round $round: loadavg $l1 $l5 $l15" >&2
  # Rotate the order of the servers by one each round.
  read -ra s <<<"$SERVERS"
  order=()
  for ((i = 0; i < nservers; i++)); do order+=("${s[(i + round - 1) % nservers]}"); done
  for w in $WORKLOADS; do
    for side in "${order[@]}"; do
      start_server "$side"
      t0=$(cpu_ticks "$server_pid")
      v=$(run_fio "$w" "$side")
      t1=$(cpu_ticks "$server_pid")
      stop_server
      cpu=$(awk -v t="$((t1 - t0))" -v hz="$hz" 'BEGIN { printf "%.1f", t / hz }')
      echo "$round $w $side $v $cpu" >>"$results"
      echo "round $round  $w  $side  $v  server_cpu_s=$cpu" >&2
    done
  done
done

if [[ " $SERVERS " == *" ours "* ]]; then
  # Correctness: the image must check clean after the overwrites, and data written through our
  # server must read back (fio verify: 4 KiB random writes at QD32 over 256 MiB, then a read pass
  # checking every block's crc32c and header).
  "$PLOOP" check "$dd_xml" >/dev/null || { echo "ploop check failed after the runs" >&2; exit 1; }
  echo "# ploop check after the runs: OK" >&2
  if [[ $VERIFY == 1 ]]; then
    start_server ours
    fio --name=verify --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --size=$((SIZE_MB < 256 ? SIZE_MB : 256))M --rw=randwrite --bs=4096 \
        --iodepth=32 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 --randrepeat=0 >"$scratch/verify.log" 2>&1 ||
      { cat "$scratch/verify.log" >&2; echo "fio verify through ploop serve FAILED" >&2; stop_server; exit 1; }
    stop_server
    "$PLOOP" check "$dd_xml" >/dev/null || { echo "ploop check failed after the verify run" >&2; exit 1; }
    echo "# fio verify (256 MiB, 4 KiB random writes QD32, crc32c) through ploop serve: OK" >&2
  fi
fi

# Tables.
echo
echo "loadavg at the start of each round (1, 5, 15 min):"
awk '{ printf "  round %s: %s %s %s\n", $1, $2, $3, $4 }' "$loads"
echo
echo "medians over $ROUNDS rounds (value; p99 and mean completion latency in us; server CPU s per ${RUNTIME} s run):"
printf '%-10s %-6s' workload unit
for s in $SERVERS; do printf ' %28s' "$s"; done
echo
for w in $WORKLOADS; do
  read -r _ _ _ _ unit < <(params "$w")
  printf '%-10s %-6s' "$w" "$unit"
  for s in $SERVERS; do
    awk -v w="$w" -v s="$s" '
      function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
      }
      $2 == w && $3 == s { n++; v[n] = $4; p[n] = $5; m[n] = $6; c[n] = $7 }
      END { printf " %28s", sprintf("%.1f (%d/%d us, %.1f)", median(v, n), median(p, n), median(m, n), median(c, n)) }' "$results"
  done
  echo
done
if [[ " $SERVERS " == *" ours "* ]]; then
  echo
  echo "ours / peer: median of the per-round ratios (min-max); goal: >= 1.2x qemu-qcow2, >= 1.0x qemu-raw"
  [[ " $SERVERS " == *" disk "* ]] && echo "(ours / disk: the share of what fio gets from the raw file itself, with O_DIRECT)"
  printf '%-10s' workload
  for s in $SERVERS; do [[ $s == ours ]] || printf ' %18s' "$s"; done
  printf '  %s\n' goals
  for w in $WORKLOADS; do
    printf '%-10s' "$w"
    goals=""
    for s in $SERVERS; do
      [[ $s == ours ]] && continue
      r=$(awk -v w="$w" -v s="$s" '
        function median(a, n,   i, j, t) {
          for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
          return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        $2 == w && $3 == "ours" { o[$1] = $4 }
        $2 == w && $3 == s { p[$1] = $4 }
        END {
          for (r in o) if (r in p && p[r] > 0) { n++; q[n] = o[r] / p[r] }
          m = median(q, n)
          printf "%.2f %.2f %.2f", m, q[1], q[n]
        }' "$results")
      read -r med lo hi <<<"$r"
      printf ' %18s' "$med ($lo-$hi)"
      case $s in
        qemu-qcow2) goals+=" vs-qcow2>=1.2:$(awk -v m="$med" 'BEGIN { print (m >= 1.2 ? "met" : "NOT met") }')" ;;
        qemu-raw) goals+=" vs-raw>=1.0:$(awk -v m="$med" 'BEGIN { print (m >= 1.0 ? "met" : "NOT met") }')" ;;
      esac
    done
    printf ' %s\n' "$goals"
  done
fi
