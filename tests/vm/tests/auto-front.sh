#!/usr/bin/env bash
# vm: once
# `ploop mount` without --device picks the best front end the kernel offers: ublk while
# /dev/ublk-control exists, nbd when only the nbd module is loaded (ublk_drv removed), fuse when
# neither is. Only the device is attached (no -m), so the file system plays no part. The runner
# loads the modules again afterwards.
source "$(dirname "$0")/lib.sh"

# expect_front WANT WHY : mount without --device or -m; list shows WANT; umount
expect_front() {
    local got
    got=$( mount_disk "$DD" >&2 && field "$DD" front ) || { soft_fail "ploop mount without --device failed ($2)"; return; }
    umount_disk "$DD" || true
    [ "$got" = "$1" ] || soft_fail "ploop mount without --device chose '$got', expected '$1' ($2)"
}

new_disk 64M none
[ -e /dev/ublk-control ] || fail "/dev/ublk-control is missing although ublk_drv is loaded"
say "ublk_drv and nbd loaded: expect ublk"
expect_front ublk "ublk_drv and nbd loaded"

say "rmmod ublk_drv: expect nbd"
rmmod ublk_drv || fail "rmmod ublk_drv failed"
expect_front nbd "only nbd loaded"

say "rmmod nbd: expect fuse"
rmmod nbd || fail "rmmod nbd failed"
expect_front fuse "neither ublk_drv nor nbd loaded"
finish
