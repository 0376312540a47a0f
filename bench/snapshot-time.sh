#!/usr/bin/env bash
# How long `ploop snapshot` takes: with a nearly empty top on disks of 1 GiB, 16 GiB and 1 TiB
# (is it independent of the disk size?), and with a top holding DATA_MB of data (the old top is
# sealed: XXH3 of every 4 KiB block it maps, so this part grows with the data).
#
#   sudo bench/snapshot-time.sh [BUILD_DIR]        (default: $BUILD_DIR or <repo>/build)
#
# Environment: REPS (default 20), SIZES (default "1G 16G 1T"), DATA_MB (default 256), DATA_REPS
# (default 5), SCRATCH (a directory to create the files in; default a new directory under bench/,
# on the repository's file system, not tmpfs).
#
# Part 1, empty top: one disk per size (`ploop init -s SIZE`, default 1 MiB clusters). REPS times,
# for each size in an order rotated every repetition: `ploop snapshot DD.xml` (timed; the chain
# grows by one delta each time, to REPS+1 deltas), then `ploop snapshot-list DD.xml` (timed: the
# floor of any command on that disk, i.e. process start, loading and validating the descriptor).
# Every time is wall-clock around the command, from bash's EPOCHREALTIME, so it includes process
# start (exec, dynamic linking), as a user sees it.
#
# Part 2, a top holding data: a 16 GiB disk; DATA_REPS times, DATA_MB of random bytes are written
# into its top through the library (build/bench/disk_write --direct, at an offset not used before,
# so every write allocates), `sync`, then:
#   cold: the disk's files are dropped from the page cache (dd iflag=nocache count=0), the top
#         file is read once with `dd bs=1M of=/dev/null` (timed: the peer, what reading the data
#         alone costs) and dropped again, then `ploop snapshot` (timed);
#   warm: DATA_MB more is written into the new top, the top file is read into the page cache
#         (cat), then `ploop snapshot` (timed): the sealing cost without the disk, i.e. XXH3 and
#         the copies out of the page cache.
#
# Prints two tables: per size, the snapshot and snapshot-list times (median, p90 = nearest rank,
# min, max, and the medians of the first and the last 5 repetitions, to show any drift as the
# chain grows); and for the data case, medians of the cold and warm snapshot and of the peer read,
# with the derived sealing rate DATA_MB / (t_snapshot - median empty 16G snapshot).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
build=$(cd "${1:-${BUILD_DIR:-$repo/build}}" && pwd)
ploop_bin=$build/tools/ploop
writer=$build/bench/disk_write
REPS=${REPS:-20}
SIZES=${SIZES:-"1G 16G 1T"}
DATA_MB=${DATA_MB:-256}
DATA_REPS=${DATA_REPS:-5}

for t in "$ploop_bin" "$writer"; do
  [[ -x $t ]] || { echo "missing $t: build first (cmake --build $build)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq not found" >&2; exit 2; }
((REPS >= 1 && REPS + 1 <= 128)) || { echo "REPS must be 1..127 (a chain holds at most 128 deltas)" >&2; exit 2; }
((2 * DATA_REPS * DATA_MB <= 16 * 1024 && 2 * DATA_REPS + 1 <= 128)) ||
  { echo "2 * DATA_REPS * DATA_MB must fit in 16 GiB" >&2; exit 2; }

source "$here/lib.sh"
bench_scratch snapshot-time
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM
results=$scratch/results  # lines: kind size rep milliseconds

# Runs "$@" with output discarded; prints its wall-clock time and its CPU time (user + system,
# from the shell's `times` before and after: millisecond resolution), in ms.
ms() {
  local c0 c1 t0 t1
  times >"$scratch/times"
  c0=$(tail -1 "$scratch/times")
  t0=$EPOCHREALTIME
  "$@" >/dev/null
  t1=$EPOCHREALTIME
  times >"$scratch/times"
  c1=$(tail -1 "$scratch/times")
  awk -v a="$t0" -v b="$t1" -v c0="$c0" -v c1="$c1" '
    function sec(s,   m) { m = s; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", s); sub(/s$/, "", s); return m * 60 + s }
    BEGIN { split(c0, x, " "); split(c1, y, " ")
            printf "%.2f %.0f\n", (b - a) * 1000, (sec(y[1]) + sec(y[2]) - sec(x[1]) - sec(x[2])) * 1000 }'
}

drop_cache() {  # files...
  local f
  for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done
}

top_file() {  # DD.xml -> path of the top delta
  local dir
  dir=$(dirname "$1")
  echo "$dir/$("$ploop_bin" snapshot-list --json "$1" | jq -r '.[] | select(.current) | .fname')"
}

echo "# scratch: $scratch ($(stat -f -c %T "$scratch")), REPS=$REPS SIZES=\"$SIZES\" DATA_MB=$DATA_MB DATA_REPS=$DATA_REPS" >&2
read -ra sizes <<<"$SIZES"
for s in "${sizes[@]}"; do
  mkdir "$scratch/$s"
  "$ploop_bin" init -s "$s" "$scratch/$s/root.hds" >/dev/null
done
sync

# Part 1.
for ((rep = 1; rep <= REPS; rep++)); do
  for ((k = 0; k < ${#sizes[@]}; k++)); do
    s=${sizes[(k + rep - 1) % ${#sizes[@]}]}
    dd=$scratch/$s/DiskDescriptor.xml
    t=$(ms "$ploop_bin" snapshot "$dd")
    echo "snapshot $s $rep $t" >>"$results"
    t=$(ms "$ploop_bin" snapshot-list "$dd")
    echo "list $s $rep $t" >>"$results"
  done
  echo "# rep $rep: $(awk -v r="$rep" '$1 == "snapshot" && $3 == r { printf "%s %s ms  ", $2, $4 }' "$results")" >&2
done

# Part 2.
dd if=/dev/urandom of="$scratch/data.raw" bs=1M count="$DATA_MB" status=none
mkdir "$scratch/data"
ddx=$scratch/data/DiskDescriptor.xml
"$ploop_bin" init -s 16G "$scratch/data/root.hds" >/dev/null
slot=0
for ((rep = 1; rep <= DATA_REPS; rep++)); do
  # cold
  "$writer" --direct --offset $((slot++ * DATA_MB << 20)) "$ddx" "$scratch/data.raw" >/dev/null
  sync
  top=$(top_file "$ddx")
  drop_cache "$scratch"/data/*
  t=$(ms dd if="$top" of=/dev/null bs=1M status=none)
  echo "read-cold 16G $rep $t" >>"$results"
  drop_cache "$scratch"/data/*
  t=$(ms "$ploop_bin" snapshot "$ddx")
  echo "data-cold 16G $rep $t" >>"$results"
  echo "# data rep $rep: read cold $(tail -2 "$results" | head -1 | cut -d' ' -f4) ms, snapshot cold $t ms" >&2
  # warm
  "$writer" --direct --offset $((slot++ * DATA_MB << 20)) "$ddx" "$scratch/data.raw" >/dev/null
  sync
  top=$(top_file "$ddx")
  cat "$top" >/dev/null
  t=$(ms "$ploop_bin" snapshot "$ddx")
  echo "data-warm 16G $rep $t" >>"$results"
  echo "# data rep $rep: snapshot warm $t ms" >&2
done
"$ploop_bin" check "$scratch/data/root.hds" >/dev/null || { echo "ploop check failed on the data disk" >&2; exit 1; }

echo
awk -v sizes="$SIZES" -v mb="$DATA_MB" '
  function sort(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
  }
  function median(a, n) { sort(a, n); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function p90(a, n,   k) { sort(a, n); k = int(0.9 * n); if (k < 0.9 * n) k++; return a[k] }
  # Sets n, med, p, lo, hi (wall), cmed (CPU), first, last (medians of the first and last 5).
  function stats(kind, s,   i, r, a, c, f, l, nf, nl, m) {
    n = 0; nf = 0; nl = 0; m = maxrep[kind, s]
    for (r = 1; r <= m; r++) if ((kind, s, r) in t) {
      a[++n] = t[kind, s, r]; c[n] = cpu[kind, s, r]
      if (r <= 5) f[++nf] = t[kind, s, r]
      if (r > m - 5) l[++nl] = t[kind, s, r]
    }
    if (!n) return 0
    med = median(a, n); p = p90(a, n); lo = a[1]; hi = a[n]; cmed = median(c, n); first = median(f, nf); last = median(l, nl)
    return n
  }
  { t[$1, $2, $3] = $4; cpu[$1, $2, $3] = $5; if ($3 > maxrep[$1, $2]) maxrep[$1, $2] = $3 }
  END {
    ns = split(sizes, S, " ")
    printf "%-20s %7s %7s %7s %7s %8s %8s %9s %4s\n", "ms", "median", "p90", "min", "max", "cpu med", "med 1-5", "med last5", "n"
    for (k = 0; k < 2; k++) for (i = 1; i <= ns; i++) {
      kind = k ? "list" : "snapshot"
      if (!stats(kind, S[i])) continue
      printf "%-20s %7.1f %7.1f %7.1f %7.1f %8.0f %8.1f %9.1f %4d\n", (k ? "snapshot-list " : "snapshot ") S[i], med, p, lo, hi, cmed, first, last, n
      if (!k && S[i] == "16G") empty16 = med
    }
    if (!stats("data-cold", "16G")) exit
    printf "\n%-36s %7s %7s %7s %8s %4s %9s\n", "16G disk, top holds " mb " MiB, ms", "median", "min", "max", "cpu med", "n", "MiB/s"
    split("read-cold data-cold data-warm", K, " ")
    L["read-cold"] = "dd read of the top file, cold"; L["data-cold"] = "snapshot, top not in page cache"; L["data-warm"] = "snapshot, top in page cache"
    for (i = 1; i <= 3; i++) {
      stats(K[i], "16G")
      rate = K[i] == "read-cold" ? mb * 1000 / med : (empty16 != "" ? mb * 1000 / (med - empty16) : 0)
      printf "%-36s %7.1f %7.1f %7.1f %8.0f %4d %9.0f\n", L[K[i]], med, lo, hi, cmed, n, rate
    }
    if (empty16 != "") printf "(MiB/s: %d MiB / time; for the snapshots, time minus %.1f ms, the median empty 16G snapshot)\n", mb, empty16
  }' "$results"
