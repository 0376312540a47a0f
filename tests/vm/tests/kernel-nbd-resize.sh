#!/usr/bin/env bash
# vm: once
# Kernel NBD attach beyond what `ploop mount` uses: the device follows an online resize through
# NBD_CMD_RECONFIGURE (netlink), and the ioctl fallback (netlink hidden from the probe) attaches,
# resizes (NBD_SET_SIZE) and detaches too. Driven by tests/vm/probes/kernel_nbd_probe.
source "$(dirname "$0")/lib.sh"
PROBE=/opt/ploop/bin/kernel_nbd_probe
[ -x "$PROBE" ] || fail "$PROBE is missing from the initramfs"
[ -d /sys/module/nbd ] || fail "the nbd module is not loaded"

# sectors DEV : the device's size in 512-byte sectors
sectors() { cat "/sys/block/$1/size"; }

# wait_for FILE : up to 30 s for the probe to write FILE
wait_for() { local i; for i in $(seq 300); do [ -s "$1" ] && return 0; sleep 0.1; done; return 1; }

# expect_size DEV SECTORS : up to 10 s for the device to show that size
expect_size() {
    local i
    for i in $(seq 100); do [ "$(sectors "$1")" = "$2" ] && return 0; sleep 0.1; done
    soft_fail "$1 has $(sectors "$1") sectors, expected $2"
}

run_probe() { # NAME [ENV...] : attach a 256 MiB disk, resize to 128 MiB and back, stop
    local name=$1 dir=$WORK/$1 dev pid
    shift
    mkdir -p "$dir"
    : >"$dir/cmd"
    env "$@" "$PROBE" serve "$dir" 256 >"$dir/log" 2>&1 &
    pid=$!
    wait_for "$dir/index" || { cat "$dir/log"; fail "$name: the probe did not attach a device"; }
    dev=nbd$(cat "$dir/index")
    say "$name: attached /dev/$dev ($(head -1 "$dir/log"))"
    expect_size "$dev" $((256 << 11))
    [ "$(cat "/sys/block/$dev/queue/logical_block_size")" = 512 ] || soft_fail "$name: logical block size is not 512"
    echo "resize $((128 << 20))" >>"$dir/cmd"
    expect_size "$dev" $((128 << 11))
    echo "resize $((256 << 20))" >>"$dir/cmd"
    expect_size "$dev" $((256 << 11))
    dd if=/dev/zero of="/dev/$dev" bs=1M count=8 seek=200 oflag=direct status=none || soft_fail "$name: write past the old end failed"
    echo "stop" >>"$dir/cmd"
    local i
    for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "$name: the probe did not stop within 30 s"
    wait "$pid" || soft_fail "$name: the probe failed: $(cat "$dir/log")"
    expect_size "$dev" 0
    say "$name: $(tr '\n' ';' <"$dir/log")"
}

run_probe netlink
run_probe ioctl PROBE_NO_NETLINK=1
finish
