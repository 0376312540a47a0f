#!/usr/bin/env bash
# Read latency through chains of 1, 16 and 64 deltas: 4 KiB random reads at queue depth 1,
# O_DIRECT, through the delta stack (no device), uniform over the whole disk.
#
#   sudo bench/chain-depth.sh [BUILD_DIR]        (default: $BUILD_DIR or <repo>/build)
#
# Environment: DEPTHS (default "1 16 64"; the first is the reference), SIZE (default 1G),
# CLUSTER_SECTORS (default 2048 = 1 MiB), READS per disk per round (default 20000), ROUNDS
# (default 10), WARMUP reads per disk, not counted (default 2000), ENGINE (sync: Stack::read,
# the default; uring: one request at a time through UringEngine), SCRATCH (a directory to create
# the files in; default a new directory under bench/, on the repository's file system, not tmpfs).
#
# Each chain of N deltas is built as a user would: `ploop init -s SIZE`, then for k = 0..N-1
# `chain_depth_bench fill --level k --of N` (writes, through Stack::write, the whole clusters vc
# with vc % N == k, with a pattern naming the block and the level) followed, except after the last
# level, by `ploop snapshot`. Level k then owns exactly the clusters vc % N == k: every level is
# read equally often, the top as well as the base. Then `chain_depth_bench read` opens every
# chain read-only (O_DIRECT) and, ROUNDS times, does READS reads on each chain in turn, the order
# of the chains rotated by one every round; every read is timed and its data checked (the right
# offset, from the right level).
#
# Prints a table: per depth, the median over rounds of the per-round median and p99 latency, the
# latency pooled over all rounds, CPU time per read and the time to open the chain; then the
# per-round ratios to the first depth (median latency, and p99), median and min-max.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
build=$(cd "${1:-${BUILD_DIR:-$repo/build}}" && pwd)
ploop_bin=$build/tools/ploop
bench_bin=$build/bench/chain_depth_bench
DEPTHS=${DEPTHS:-"1 16 64"}
SIZE=${SIZE:-1G}
CLUSTER_SECTORS=${CLUSTER_SECTORS:-2048}
READS=${READS:-20000}
ROUNDS=${ROUNDS:-10}
WARMUP=${WARMUP:-2000}
ENGINE=${ENGINE:-sync}

for t in "$ploop_bin" "$bench_bin"; do
  [[ -x $t ]] || { echo "missing $t: build first (cmake --build $build)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq not found" >&2; exit 2; }

if [[ -n ${SCRATCH:-} ]]; then
  mkdir -p "$SCRATCH"
  scratch=$(mktemp -d "$SCRATCH/chain-depth.XXXXXX")
else
  scratch=$(mktemp -d "$here/.scratch.XXXXXX")
fi
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM
if [[ $(stat -f -c %T "$scratch") == tmpfs ]]; then
  echo "warning: $scratch is on tmpfs; O_DIRECT numbers will not mean much" >&2
fi

echo "# scratch: $scratch ($(stat -f -c %T "$scratch")), DEPTHS=\"$DEPTHS\" SIZE=$SIZE" \
  "CLUSTER_SECTORS=$CLUSTER_SECTORS READS=$READS ROUNDS=$ROUNDS WARMUP=$WARMUP ENGINE=$ENGINE" >&2
disks=()
for n in $DEPTHS; do
  dir=$scratch/depth$n
  mkdir "$dir"
  "$ploop_bin" init -s "$SIZE" -b "$CLUSTER_SECTORS" "$dir/root.hds" >/dev/null
  for ((k = 0; k < n; k++)); do
    "$bench_bin" fill --level "$k" --of "$n" "$dir/DiskDescriptor.xml" >/dev/null
    if ((k + 1 < n)); then "$ploop_bin" snapshot "$dir/DiskDescriptor.xml" >/dev/null; fi
  done
  got=$("$ploop_bin" snapshot-list --json "$dir/DiskDescriptor.xml" | jq length)
  [[ $got == "$n" ]] || { echo "depth $n: the chain has $got deltas" >&2; exit 1; }
  echo "# built a chain of $n deltas: $(du -sh "$dir" | cut -f1)" >&2
  disks+=("$dir/DiskDescriptor.xml")
done
sync

out=$scratch/read.out
"$bench_bin" read --reads "$READS" --rounds "$ROUNDS" --warmup "$WARMUP" --engine "$ENGINE" "${disks[@]}" | tee "$out" >&2

echo
awk -v depths="$DEPTHS" '
  function sort(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
  }
  function median(a, n) { sort(a, n); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function val(s, key,   i, f, kv) {
    n = split(s, f, " ")
    for (i = 1; i <= n; i++) { split(f[i], kv, "="); if (kv[1] == key) return kv[2] }
    return ""
  }
  /^round=/ { r = val($0, "round"); d = val($0, "depth"); med[r, d] = val($0, "median_us"); p99[r, d] = val($0, "p99_us")
              cpu[r, d] = val($0, "cpu_us_per_read"); rounds[r] = 1 }
  /^all / { d = val($0, "depth"); amed[d] = val($0, "median_us"); ap99[d] = val($0, "p99_us"); open[d] = val($0, "open_ms") }
  END {
    nd = split(depths, D, " "); ref = D[1]
    printf "%-6s %13s %13s %13s %13s %11s %9s\n", "depth", "median us", "p99 us", "pooled median", "pooled p99", "cpu us/read", "open ms"
    for (i = 1; i <= nd; i++) {
      d = D[i]; n = 0
      for (r in rounds) { n++; a[n] = med[r, d]; b[n] = p99[r, d]; c[n] = cpu[r, d] }
      printf "%-6s %13.1f %13.1f %13.1f %13.1f %11.2f %9.1f\n", d, median(a, n), median(b, n), amed[d], ap99[d], median(c, n), open[d]
    }
    printf "\n%-28s %6s %11s %6s %11s\n", "per-round ratio to depth " ref, "median", "min-max", "p99", "min-max"
    for (i = 2; i <= nd; i++) {
      d = D[i]; n = 0
      for (r in rounds) { n++; a[n] = med[r, d] / med[r, ref]; b[n] = p99[r, d] / p99[r, ref] }
      ma = median(a, n); mb = median(b, n)
      printf "%-28s %6.2f %5.2f-%-5.2f %6.2f %5.2f-%-5.2f\n", "depth " d " / depth " ref, ma, a[1], a[n], mb, b[1], b[n]
    }
    printf "(%d rounds)\n", n
  }' "$out"
