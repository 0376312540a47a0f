#!/usr/bin/env bash
# fio with verify=crc32c (direct I/O, io_uring, random 4k-128k writes over 32 MiB, then a
# read-back verify) on the raw block device of a blank disk attached with --device FRONT and no
# mount point; the disk then detaches cleanly and `ploop check` finds no error.
source "$(dirname "$0")/lib.sh"

new_disk 128M none
mount_disk "$DD"
dev=$(field "$DD" device)
say "fio verify on $dev"
timeout 200 fio --name=verify --filename="$dev" --ioengine=io_uring --direct=1 --iodepth=16 \
    --rw=randwrite --bsrange=4k-128k --size=32M --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --randrepeat=0 --numjobs=1 >fio.out 2>&1 ||
    fail "fio exited $?: $(tail -20 fio.out)"
grep -E '^ +(READ|WRITE):|err=' fio.out
umount_disk "$DD"
ploop_ok check "$DD" >/dev/null
finish
