#!/usr/bin/env bash
# Delta stack (driven directly through UringEngine, no device) against fio with io_uring on a raw
# file holding the same 1 GiB of data. Both use O_DIRECT, the same block size and queue depth.
#
#   sudo bench/stack-vs-fio.sh [BUILD_DIR]        (default: $BUILD_DIR or <repo>/build)
#
# Environment: ROUNDS (default 3), RUNTIME seconds per run (default 5), SIZE_MB (default 1024),
# WORKLOADS (default "randread randwrite seqread seqwrite"), SCRATCH (a directory to create the
# files in; default a new directory under bench/, on the repository's filesystem, not tmpfs),
# CONTROL=1 (an A/A test: the "ours" side runs fio on the raw file again, so the ratios show the
# noise floor of the machine rather than the stack).
#
# The machine this runs on is shared and noisy, so the two sides run alternately, one run each per
# workload per round, in order A B in odd rounds and B A in even ones, and the result is the ratio
# of each adjacent pair. Prints a table: medians of both sides, median of the per-round ratios
# (ours / fio) and their min-max spread. Needs no build: it runs BUILD_DIR/bench/stack_bench and
# BUILD_DIR/tools/ploop (this project's CLI; never /usr/sbin/ploop).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
build=$(cd "${1:-${BUILD_DIR:-$repo/build}}" && pwd)
bench_bin=$build/bench/stack_bench
ploop_bin=$build/tools/ploop
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-5}
SIZE_MB=${SIZE_MB:-1024}
WORKLOADS=${WORKLOADS:-"randread randwrite seqread seqwrite"}

for t in "$bench_bin" "$ploop_bin"; do
  [[ -x $t ]] || { echo "missing $t: build first (cmake --build $build)" >&2; exit 2; }
done
source "$here/lib.sh"
bench_need fio jq

bench_scratch stack-vs-fio
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM

raw=$scratch/raw
image=$scratch/root.hds
results=$scratch/results   # lines: round workload side value cpu_us_per_io


echo "# scratch: $scratch ($(stat -f -c %T "$scratch")), ${SIZE_MB} MiB, ROUNDS=$ROUNDS RUNTIME=${RUNTIME}s" \
  "${CONTROL:+CONTROL=$CONTROL}" >&2
echo "# creating the raw file (random data) and importing it into a ploop image" >&2
dd if=/dev/urandom of="$raw" bs=1M count="$SIZE_MB" status=none
sync "$raw"
"$ploop_bin" import "$raw" "$image" >/dev/null
sync "$image"

run_fio() {  # workload -> "value cpu_us_per_io"
  local bs qd rw unit
  read -r bs qd rw unit < <(bench_params "$1")
  local json
  json=$(fio --name="$1" --ioengine=io_uring --direct=1 --filename="$raw" --size="${SIZE_MB}M" \
             --runtime="$RUNTIME" --time_based --rw="$rw" --bs="$bs" --iodepth="$qd" \
             --norandommap --randrepeat=0 --output-format=json)
  local dir=read
  [[ $rw == *write ]] && dir="write"
  local value=".$dir.iops | floor"
  [[ $unit == mibps ]] && value=".$dir.bw_bytes / 1048576 | . * 10 | floor / 10"
  # fio's usr_cpu and sys_cpu are percentages of the job's runtime (ms).
  jq -r ".jobs[0] | \"\\($value) \\((.usr_cpu + .sys_cpu) * 10 * .job_runtime / .$dir.total_ios | . * 100 | floor / 100)\"" <<<"$json"
}

run_ours() {  # workload -> "value cpu_us_per_io"
  [[ ${CONTROL:-0} == 1 ]] && { run_fio "$1"; return; }
  local bs qd rw unit line
  read -r bs qd rw unit < <(bench_params "$1")
  line=$("$bench_bin" --runtime "$RUNTIME" --qd "$qd" --bs "$bs" "$1" "$image")
  sed -n "s/.* $unit=\([0-9.]*\).* cpu_us_per_io=\([0-9.]*\).*/\1 \2/p" <<<"$line"
}

checked=0
for ((round = 1; round <= ROUNDS; round++)); do
  for w in $WORKLOADS; do
    if ((round % 2)); then order="fio ours"; else order="ours fio"; fi
    for side in $order; do
      v=$(run_"$side" "$w")
      echo "$round $w $side $v" >>"$results"
      echo "round $round  $w  $side  $v" >&2
      if [[ $side == ours && $w == randwrite && $checked == 0 && ${CONTROL:-0} != 1 ]]; then
        # Correctness, once: after overwrites through the engine the image must check clean.
        "$ploop_bin" check "$image" >/dev/null || { echo "ploop check $image failed after randwrite" >&2; exit 1; }
        echo "# ploop check after randwrite: OK" >&2
        checked=1
      fi
    done
  done
done

# Table. Per round, ratio = ours / fio of the adjacent pair. CPU: process CPU time per request.
echo
printf '%-10s %-6s %11s %11s %6s %11s  %s\n' workload unit "fio median" "ours median" ratio "min-max" \
  "cpu us/io fio, ours (medians)"
for w in $WORKLOADS; do
  read -r _ _ _ unit < <(bench_params "$w")
  awk -v w="$w" -v unit="$unit" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    $2 == w { v[$1, $3] = $4; c[$1, $3] = $5; rounds[$1] = 1 }
    END {
      n = 0
      for (r in rounds) {
        n++; f[n] = v[r, "fio"]; o[n] = v[r, "ours"]; q[n] = v[r, "fio"] > 0 ? v[r, "ours"] / v[r, "fio"] : 0
        cf[n] = c[r, "fio"]; co[n] = c[r, "ours"]
      }
      fm = median(f, n); om = median(o, n); qm = median(q, n)
      printf "%-10s %-6s %11.1f %11.1f %6.2f %5.2f-%-5.2f  %.2f, %.2f\n", w, unit, fm, om, qm, q[1], q[n],
             median(cf, n), median(co, n)
    }' "$results"
done
