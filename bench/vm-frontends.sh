#!/usr/bin/env bash
# The three front ends of `ploop mount` (ublk, kernel NBD, FUSE + loop) against a loop device over
# a raw file, inside the test VM (tests/vm: Debian's 6.12 kernel under qemu, 2 vCPUs; the host
# kernel has no ublk or nbd), with the same fio workloads on each block device:
#
#   sudo bench/vm-frontends.sh [BUILD_DIR]      (default: $BUILD_DIR or <repo>/build)
#
# In the VM (bench/vm-frontends-run.sh, put into tests/vm's initramfs through its
# PLOOP_VM_BENCH_DIR hook and started by its init with ploop.bench=): four devices over SIZE_MB
# on the same tmpfs, each filled completely first (reads hit data, writes are overwrites); fio
# io_uring, direct=1: randread and randwrite 4 KiB at QD 32, seqread and seqwrite 1 MiB at QD 8,
# RUNTIME s each; ROUNDS rounds, the order of the devices rotating each round; then a fio
# verify=crc32c pass per device, umount and `ploop check`.
#
# Under TCG every guest instruction is emulated, so absolute figures say nothing about real
# hardware; the ratio of each front end to loop in the same round does. Prints per workload the
# median of each device, the median of the per-round ratios device/loop with their min-max; then
# the medians of fio's mean completion latency, of the serving process's CPU time per request
# (ublk, nbd, fuse) and of how busy the VM's two vCPUs were during the fio run.
#
# Environment: ROUNDS (3), RUNTIME (5 s), SIZE_MB (256), WORKLOADS, DEVICES ("loop ublk nbd fuse";
# loop must stay first, it is the reference), PLOOP_VM_CACHE (the kernel cache of tests/vm),
# PLOOP_VM_ACCEL (tcg,thread=multi), LIMIT (whole VM run, s; 1200). The initramfs and the console
# are kept in BUILD_DIR/bench-vm/. Exit 0: all ran and verified; 77: no qemu or kernel; 1: else.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
build=$(cd "${1:-${BUILD_DIR:-$repo/build}}" && pwd)
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-5}
SIZE_MB=${SIZE_MB:-256}
WORKLOADS=${WORKLOADS:-"randread randwrite seqread seqwrite"}
DEVICES=${DEVICES:-"loop ublk nbd fuse"}
LIMIT=${LIMIT:-1200}
cache=${PLOOP_VM_CACHE:-/var/cache/ploop-vm}
vm=$repo/tests/vm
out=$build/bench-vm

[[ -x $build/tools/ploop ]] || { echo "missing $build/tools/ploop: build first" >&2; exit 1; }
[[ $DEVICES == loop* ]] || { echo "DEVICES must start with loop (the reference)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "vm-frontends: SKIP: no qemu-system-x86_64" >&2; exit 77; }
[[ -x /usr/sbin/losetup ]] || { echo "missing util-linux /usr/sbin/losetup" >&2; exit 1; }

rc=0
ktree=$("$vm/kernel.sh" "$cache") || rc=$?
((rc == 0)) || exit "$rc"
kver=$(ls "$ktree/lib/modules" | head -1)

mkdir -p "$out"
extra=$(mktemp -d /tmp/ploop-vm-bench.XXXXXX)
trap 'rm -rf "$extra"' EXIT
cp "$here/vm-frontends-run.sh" "$extra/"
cat >"$extra/bench.conf" <<EOF
ROUNDS=$ROUNDS RUNTIME=$RUNTIME SIZE_MB=$SIZE_MB WORKLOADS="$WORKLOADS" DEVICES="$DEVICES"
EOF
PLOOP_VM_BENCH_DIR=$extra PLOOP_VM_BENCH_BINS=/usr/sbin/losetup \
    "$vm/initramfs.sh" "$build" "$ktree" "$out/initramfs.cpio"

echo "# vm-frontends: $kver under ${PLOOP_VM_ACCEL:-tcg,thread=multi}, -smp 2; devices: $DEVICES;" \
    "ROUNDS=$ROUNDS RUNTIME=$RUNTIME SIZE_MB=$SIZE_MB; console in $out/console.log" >&2
start=$(date +%s)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
qrc=0
timeout -k 10 "$LIMIT" qemu-system-x86_64 -accel "${PLOOP_VM_ACCEL:-tcg,thread=multi}" -cpu max -m 2048 -smp 2 \
    -nographic -no-reboot -nic none -kernel "$ktree/boot/vmlinuz-$kver" -initrd "$out/initramfs.cpio" \
    -append "console=ttyS0 rdinit=/init panic=-1 no_timer_check quiet loglevel=4 ploop.bench=vm-frontends-run.sh" \
    </dev/null 2>&1 | tr -d '\r' | tee "$out/console.log" >&2 || qrc=$?
echo "# finished $(date -u '+%F %H:%M') UTC; VM run $(($(date +%s) - start)) s; host loadavg $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"

result=$(sed -n 's/^VM-RESULT: \([0-9][0-9]*\)$/\1/p' "$out/console.log" | tail -1)
grep '^BENCH ' "$out/console.log" >"$out/results" || true

# Tables: per workload and device, medians over the rounds; ratio = device / loop of the same round.
table() { # KIND: rate | cost
    awk -v kind="$1" -v devices="$DEVICES" -v workloads="$WORKLOADS" '
      function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
      }
      # med(KEY_ARRAY, w, d): median over the rounds of one measure
      function med(arr, w, d,   r, n, x) {
        n = 0
        for (r in rounds) if ((r, w, d) in arr) x[++n] = arr[r, w, d]
        return n ? median(x, n) : ""
      }
      # BENCH ROUND WORKLOAD DEVICE VALUE UNIT IOS VM_BUSY_TICKS DAEMON_TICKS CLAT_US ELAPSED_CS
      $1 == "BENCH" {
        k = $2 SUBSEP $3 SUBSEP $4; rounds[$2] = 1; unit[$3] = $6
        v[k] = $5; clat[k] = $10; srv[k] = $9 * 10000 / $7; busy[k] = $8 / ($11 * 2) * 100
      }
      END {
        nd = split(devices, dev, " "); nw = split(workloads, wl, " ")
        if (kind == "rate") {
          printf "%-10s %-5s %9s", "workload", "unit", "loop"
          for (k = 2; k <= nd; k++) printf " %9s %-17s", dev[k], "/loop (min-max)"
          printf "\n"
        } else {
          printf "%-10s  %-32s  %-26s  %s\n", "workload", "mean latency us (" devices ")", "server cpu us/io (" substr(devices, index(devices, " ") + 1) ")", "VM busy % (" devices ")"
        }
        for (i = 1; i <= nw; i++) {
          w = wl[i]
          if (kind == "rate") {
            printf "%-10s %-5s %9s", w, unit[w], med(v, w, "loop")
            for (k = 2; k <= nd; k++) {
              d = dev[k]; m = 0
              for (r in rounds) if ((r, w, d) in v && (r, w, "loop") in v && v[r, w, "loop"] > 0) q[++m] = v[r, w, d] / v[r, w, "loop"]
              ratio = ""
              if (m) { x = median(q, m); ratio = sprintf("%.2f (%.2f-%.2f)", x, q[1], q[m]) }  # median sorts q
              printf " %9s %-17s", med(v, w, d), ratio
            }
            printf "\n"
          } else {
            a = ""; b = ""; c = ""
            for (k = 1; k <= nd; k++) {
              d = dev[k]; x = med(clat, w, d); y = med(srv, w, d); z = med(busy, w, d)
              a = a (k > 1 ? " " : "") (x == "" ? "-" : sprintf("%.0f", x))
              if (d != "loop") b = b (b != "" ? " " : "") (y == "" ? "-" : sprintf("%.0f", y))
              c = c (k > 1 ? " " : "") (z == "" ? "-" : sprintf("%.0f", z))
            }
            printf "%-10s  %-32s  %-26s  %s\n", w, a, b, c
          }
        }
      }' "$out/results"
}
echo
table rate
echo
table cost
echo
grep -E '^(VERIFY|CHECK|BENCH-ERROR) ' "$out/console.log" || true

if [[ -z $result ]]; then
    [[ $qrc == 124 ]] && { echo "vm-frontends: the VM did not finish within $LIMIT s (see $out/console.log)" >&2; exit 1; }
    echo "vm-frontends: the VM stopped without a result (qemu exit $qrc; see $out/console.log)" >&2
    exit 1
fi
[[ $result == 0 ]] || { echo "vm-frontends: $result failure(s) in the VM (see $out/console.log)" >&2; exit 1; }
