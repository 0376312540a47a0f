#!/usr/bin/env bash
# Bad command lines are refused with one "ploop: " line on stderr, a non-zero exit below 128, and
# no file created, changed or removed: init with size 0, '', -5, 10Q, a size too large, -b 100 /
# 0 (not a power of two), -v 3, -t xfs, -v 1 over 2 TiB, into a missing directory, over an
# existing image, beside an existing DiskDescriptor.xml; import of a missing / empty / directory
# raw, with -b 100, over an existing image; export to an existing file (which stays untouched) or
# into a missing directory; unknown subcommand or option, missing arguments.
source "$(dirname "$0")/lib.sh"

mkdir work && cd work
truncate -s 1M data.raw && printf 'hello' | dd of=data.raw conv=notrunc status=none
mkdir good && ploop_ok import data.raw good/img.hds >/dev/null

expect_error "init size 0" init -s 0 a.hds
expect_error "init empty size" init -s '' a.hds
expect_error "init negative size" init -s -5 a.hds
expect_error "init bad suffix" init -s 10Q a.hds
expect_error "init suffix only" init -s M a.hds
expect_error "init size with junk" init -s 64Mx a.hds
expect_error "init size overflowing u64" init -s 18446744073709551616 a.hds
expect_error "init size too large" init -s 99999999999T a.hds
expect_error "init blocksize 100" init -s 64M -b 100 a.hds
expect_error "init blocksize 0" init -s 64M -b 0 a.hds
expect_error "init blocksize 8 (4 KiB)" init -s 64M -b 8 a.hds
expect_error "init version 3" init -s 64M -v 3 a.hds
expect_error "init fstype xfs" init -s 64M -t xfs a.hds
expect_error "init v1 of 2 TiB" init -v 1 -s 2T a.hds
expect_error "init in a missing directory" init -s 64M no/such/dir/a.hds
expect_error "init over an existing image" init -s 64M good/img.hds
mkdir dd-only && cp good/DiskDescriptor.xml dd-only/
expect_error "init beside an existing DiskDescriptor.xml" init -s 64M dd-only/new.hds
expect_error "init without image" init -s 64M

expect_error "import missing raw" import no-such.raw b.hds
: >empty.raw
expect_error "import empty raw" import empty.raw b.hds
mkdir rawdir
expect_error "import a directory" import rawdir b.hds
expect_error "import blocksize 100" import -b 100 data.raw b.hds
expect_error "import over an existing image" import data.raw good/img.hds
expect_error "import into a missing directory" import data.raw no/such/b.hds

echo 'precious contents' >existing.raw
expect_error "export to an existing file" export good/DiskDescriptor.xml existing.raw
[ "$(cat existing.raw)" = 'precious contents' ] || soft_fail "export overwrote an existing file"
ln -s existing.raw link.raw
expect_error "export to a symlink to an existing file" export good/img.hds link.raw
ln -s no-such-target dangling.raw
expect_error "export to a dangling symlink" export good/img.hds dangling.raw
expect_error "export into a missing directory" export good/img.hds no/such/out.raw
expect_error "export to the image itself" export good/img.hds good/img.hds

expect_error "unknown subcommand" frobnicate
expect_error "unknown option" info --no-such-option good/img.hds
expect_error "info without a disk" info
expect_error "empty subcommand" ""
expect_error "no arguments"
finish
