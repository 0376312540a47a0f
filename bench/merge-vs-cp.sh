#!/usr/bin/env bash
# Merge throughput: `ploop snapshot-merge` of a top delta holding 1 GiB of data over a 16 GiB
# disk, against `cp` of a 1 GiB file and `qemu-img commit` of a qcow2 overlay holding the same
# 1 GiB over a 16 GiB qcow2 base, all on the same file system.
#
#   sudo bench/merge-vs-cp.sh [BUILD_DIR]        (default: $BUILD_DIR or <repo>/build)
#
# Environment: ROUNDS (default 5), DATA_MB (default 1024: the data, in 1 MiB pieces), DISK_GB
# (default 16: the virtual size; piece i lands at i * DISK_GB*1024/DATA_MB MiB, so the pieces are
# spread evenly over the disk), SCRATCH (a directory to create the files in; default a new
# directory under bench/, on the repository's file system, not tmpfs), DROP=global (drop the
# whole page cache with /proc/sys/vm/drop_caches before each timed run instead of only the files
# involved, with `dd iflag=nocache count=0`, the default).
#
# Once, before the rounds: a DATA_MB file of random bytes (the cp source) and a sparse raw file of
# DISK_GB GiB holding the same bytes in 1 MiB pieces spread over it (the expected disk).
# Every round, untimed: a fresh ploop disk (`ploop init -s 16G`, `ploop snapshot`, then the raw's
# data written into the top delta by build/bench/disk_write, through the library's Stack), and a
# fresh qcow2 pair (an empty 16 GiB base; the overlay is the raw converted to qcow2, holes left
# unallocated, then pointed at the base with `qemu-img rebase -u`: the base reads as zeros, so the
# chain reads as the raw). Then `sync`, the page cache of every file involved is dropped, and the
# three timed commands run in an order rotated every round:
#   ours: ploop snapshot-merge DD.xml ; sync root.hds        (top into its parent, the base)
#   cp:   cp data dst ; sync dst
#   qemu: qemu-img commit top.qcow2 ; sync base.qcow2        (default options: cache=writeback,
#                                                            the overlay is emptied afterwards)
# The trailing `sync FILE` (an fsync) is cheap where the tool already synced; it makes the three
# equally durable when they return. Each time is wall-clock, from bash's EPOCHREALTIME.
# After the first round the merged disk is checked (`ploop check`) and read back (`ploop export`,
# then cmp against the raw), and the committed qcow2 base is compared with the raw
# (`qemu-img compare`); any mismatch stops the script with status 1.
#
# After the three, `rm` of cp's copy is timed too (context: the merge removes the child's file,
# which costs time on some file systems, while cp leaves its source in place).
#
# Prints a table: median time and MiB/s (DATA_MB / time) of each side over the rounds, and the
# per-round ratios ours/cp throughput (t_cp / t_ours), qemu-img commit time / ours
# (t_qemu / t_ours, above 1 means ours is faster) and (t_cp + t_rm) / t_ours: median and min-max.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
build=$(cd "${1:-${BUILD_DIR:-$repo/build}}" && pwd)
ploop_bin=$build/tools/ploop
writer=$build/bench/disk_write
ROUNDS=${ROUNDS:-5}
DATA_MB=${DATA_MB:-1024}
DISK_GB=${DISK_GB:-16}
DROP=${DROP:-files}

for t in "$ploop_bin" "$writer"; do
  [[ -x $t ]] || { echo "missing $t: build first (cmake --build $build)" >&2; exit 2; }
done
command -v qemu-img >/dev/null || { echo "qemu-img not found" >&2; exit 2; }
stride_mb=$((DISK_GB * 1024 / DATA_MB))
((stride_mb >= 1)) || { echo "DATA_MB must not exceed DISK_GB*1024" >&2; exit 2; }

source "$here/lib.sh"
bench_scratch merge-vs-cp
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM

data=$scratch/data.bin      # DATA_MB of random bytes: the cp source
raw=$scratch/expected.raw   # DISK_GB sparse, the same bytes spread in 1 MiB pieces
results=$scratch/results    # lines: round side seconds

drop_cache() {  # files...
  if [[ $DROP == global ]]; then
    echo 1 >/proc/sys/vm/drop_caches
    return
  fi
  local f
  for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done
}

echo "# scratch: $scratch ($(stat -f -c %T "$scratch")), ${DATA_MB} MiB over ${DISK_GB} GiB" \
  "(a 1 MiB piece every ${stride_mb} MiB), ROUNDS=$ROUNDS, cache drop: $DROP" >&2
echo "# $(qemu-img --version | head -1); $(cp --version | head -1)" >&2
dd if=/dev/urandom of="$data" bs=1M count="$DATA_MB" status=none
truncate -s "${DISK_GB}G" "$raw"
for ((i = 0; i < DATA_MB; i++)); do
  dd if="$data" of="$raw" bs=1M count=1 skip="$i" seek=$((i * stride_mb)) conv=notrunc status=none
done
sync

setup_ours() {
  rm -rf "$scratch/ours"
  mkdir "$scratch/ours"
  "$ploop_bin" init -s "${DISK_GB}G" "$scratch/ours/root.hds" >/dev/null
  "$ploop_bin" snapshot "$scratch/ours/DiskDescriptor.xml" >/dev/null
  "$writer" --direct "$scratch/ours/DiskDescriptor.xml" "$raw" >/dev/null
}

setup_qemu() {
  rm -rf "$scratch/qemu"
  mkdir "$scratch/qemu"
  qemu-img create -q -f qcow2 "$scratch/qemu/base.qcow2" "${DISK_GB}G"
  qemu-img convert -f raw -O qcow2 "$raw" "$scratch/qemu/top.qcow2"
  qemu-img rebase -u -f qcow2 -b base.qcow2 -F qcow2 "$scratch/qemu/top.qcow2"
}

# Each prints the wall-clock seconds of its timed command.
time_ours() {
  local t0=$EPOCHREALTIME
  "$ploop_bin" snapshot-merge "$scratch/ours/DiskDescriptor.xml" >/dev/null
  sync "$scratch/ours/root.hds"
  echo "$t0 $EPOCHREALTIME" | awk '{ printf "%.3f\n", $2 - $1 }'
}
time_cp() {
  local t0=$EPOCHREALTIME
  cp "$data" "$scratch/cp.dst"
  sync "$scratch/cp.dst"
  echo "$t0 $EPOCHREALTIME" | awk '{ printf "%.3f\n", $2 - $1 }'
}
time_qemu() {
  local t0=$EPOCHREALTIME
  qemu-img commit -q "$scratch/qemu/top.qcow2"
  sync "$scratch/qemu/base.qcow2"
  echo "$t0 $EPOCHREALTIME" | awk '{ printf "%.3f\n", $2 - $1 }'
}

verify() {
  local dd=$scratch/ours/DiskDescriptor.xml n
  n=$(find "$scratch/ours" -name 'root.hds*' ! -name '*.seal' | wc -l)
  [[ $n == 1 ]] || { echo "after the merge the ploop disk still has $n delta files" >&2; exit 1; }
  "$ploop_bin" check "$scratch/ours/root.hds" >/dev/null || { echo "ploop check failed after the merge" >&2; exit 1; }
  "$ploop_bin" export "$dd" "$scratch/export.raw" >/dev/null
  cmp "$scratch/export.raw" "$raw" || { echo "the merged ploop disk does not read back the data" >&2; exit 1; }
  rm -f "$scratch/export.raw"
  qemu-img compare -q -f qcow2 -F raw "$scratch/qemu/base.qcow2" "$raw" ||
    { echo "the committed qcow2 base differs from the data" >&2; exit 1; }
  echo "# verified: ploop check OK, ploop export == expected raw, qemu-img compare base == expected raw" >&2
}

sides=(cp ours qemu)
for ((round = 1; round <= ROUNDS; round++)); do
  setup_ours
  setup_qemu
  sync
  sleep 1  # let the file system finish the discards of the files removed above
  order=()
  for ((k = 0; k < 3; k++)); do order+=("${sides[(k + round - 1) % 3]}"); done
  for side in "${order[@]}"; do
    case $side in
      ours) drop_cache "$scratch"/ours/* ;;
      cp) drop_cache "$data" ;;
      qemu) drop_cache "$scratch"/qemu/* ;;
    esac
    s=$(time_"$side")
    echo "$round $side $s" >>"$results"
    echo "round $round  $side  ${s}s" >&2
  done
  # Context: removing a 1 GiB file that is on disk is not free on every file system (the merge
  # removes the child's file; cp leaves its source). Timed on cp's copy, untimed before.
  sync
  t0=$EPOCHREALTIME
  rm "$scratch/cp.dst"
  s=$(echo "$t0 $EPOCHREALTIME" | awk '{ printf "%.3f\n", $2 - $1 }')
  echo "$round rm $s" >>"$results"
  echo "round $round  rm of cp's copy  ${s}s" >&2
  if ((round == 1)); then verify; fi
done

echo
awk -v mb="$DATA_MB" '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { t[$1, $2] = $3; rounds[$1] = 1 }
  END {
    n = 0
    for (r in rounds) {
      n++; o[n] = t[r, "ours"]; c[n] = t[r, "cp"]; q[n] = t[r, "qemu"]
      rc[n] = c[n] / o[n]; rq[n] = q[n] / o[n]; m_[n] = t[r, "rm"]; rcm[n] = (c[n] + m_[n]) / o[n]
    }
    mo = median(o, n); mc = median(c, n); mq = median(q, n)
    printf "%-24s %10s %10s\n", "side (" n " rounds)", "median s", "MiB/s"
    printf "%-24s %10.2f %10.0f\n", "ploop snapshot-merge", mo, mb / mo
    printf "%-24s %10.2f %10.0f\n", "cp + sync", mc, mb / mc
    printf "%-24s %10.2f %10.0f\n", "qemu-img commit", mq, mb / mq
    mr = median(m_, n); printf "%-24s %10.2f %10s\n", "(rm of cp'"'"'s copy)", mr, "-"
    printf "\n%-44s %6s %11s\n", "per-round ratio", "median", "min-max"
    m = median(rc, n); printf "%-44s %6.2f %5.2f-%-5.2f\n", "ours/cp throughput (t_cp / t_ours)", m, rc[1], rc[n]
    m = median(rq, n); printf "%-44s %6.2f %5.2f-%-5.2f\n", "qemu commit time / ours (t_qemu / t_ours)", m, rq[1], rq[n]
    m = median(rcm, n); printf "%-44s %6.2f %5.2f-%-5.2f\n", "(cp + sync + rm) / ours", m, rcm[1], rcm[n]
  }' "$results"
