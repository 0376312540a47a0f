// The FUSE export: a delta stack served as one regular file, `<mountpoint>/disk`, of the disk's
// virtual size, in a private FUSE mount, so that a loop device can sit on it (for kernels with FUSE
// and loop but without nbd or ublk). Built on libfuse3's low-level API.
//
// The mount: one directory (0700) holding `disk` (0600, or 0400 and mounted `ro` when read-only).
// Options default_permissions, fsname=ploop, subtype=ploop. Attributes never change, so the kernel
// may cache them for an hour.
//
// Page cache (direct_io): every open of `disk` is answered with FOPEN_DIRECT_IO, whether or not the
// caller asked for O_DIRECT. Each read or write then goes straight to the stack and nothing of the
// disk is kept in the FUSE file's page cache:
// - loop without --direct-io: loop does buffered I/O on its backing file; the data is cached once,
//   in /dev/loopN's own page cache, instead of twice; loop's flush reaches Stack::flush via fsync.
// - loop with --direct-io=on: loop's asynchronous direct reads and writes become concurrent FUSE
//   requests (FUSE_CAP_ASYNC_DIO, up to 1 MiB each, up to 64 in the background).
// - every opener (loop, dd, cmp, a test) sees the same bytes: no opener can read stale cached
//   pages after another wrote through a different open, which mixing cached and direct opens of
//   one FUSE file allows.
// The price: MAP_SHARED mmap() of the file fails with ENODEV (libfuse 3.14 cannot negotiate
// FUSE_DIRECT_IO_ALLOW_MMAP; MAP_PRIVATE works), and small buffered reads are not cached.
// O_DIRECT opens need no alignment (FUSE passes any offset through).
//
// Buffers and concurrency: libfuse's multi-threaded loop (clone_fd: one /dev/fuse descriptor and
// one receive buffer per worker thread; at most 10 workers, libfuse's limit for API version 35)
// runs each request on one worker from receipt to reply. A write is served straight from that
// worker's receive buffer with the request's own offset; a read fills a per-thread buffer that is
// sent before the worker takes its next request. Concurrent requests share nothing but the Stack,
// which is thread-safe. (A direct-I/O loop device with concurrent writes, where qemu-storage-daemon
// 7.2's FUSE export corrupted data, puts up to 10 requests in flight here; the tests cover it.)
// libfuse 3.14 cannot ask for FOPEN_PARALLEL_DIRECT_WRITES, so the kernel serialises synchronous
// writes to the file on its inode lock; asynchronous (loop direct-I/O) writes still overlap.
//
// Semantics of `disk`:
// - read: past the end returns 0 bytes; a read crossing the end is short.
// - write: any write reaching past the end fails with ENOSPC and writes nothing (no clamping).
//   A write carrying O_DSYNC/O_SYNC is durable on return (FUA).
// - fsync, and flush (close) of a writable open: Stack::flush().
// - fallocate: PUNCH_HOLE|KEEP_SIZE -> Stack::write_zeroes on the part inside the disk (whole
//   clusters released, partial ones zeroed; the range reads as zeros afterwards). ZERO_RANGE
//   [|KEEP_SIZE] -> write_zeroes, ENOSPC if the range reaches past the end. Mode 0 or KEEP_SIZE
//   alone (preallocation) -> success without doing anything if inside the disk, else ENOSPC.
//   Any other mode -> EOPNOTSUPP.
// - the size is fixed: truncate to another size, O_TRUNC, chmod and chown fail with EPERM;
//   time changes are accepted and ignored.
// - errors: ploop::Error -> its sys_errno() if set, kParam -> EINVAL, else EIO (message on stderr).
#pragma once

#include <condition_variable>
#include <ctime>
#include <mutex>
#include <string>
#include <thread>

struct fuse_session;

namespace ploop {
class Stack;
}

namespace shim {

class FuseExport {
 public:
  // Serves `stack` as the file `<mountpoint>/disk` (mode 0600, size = stack.size()).
  // `mountpoint` must be an existing empty directory. read_only: the file is 0400 and writes fail
  // EROFS (also forced if the stack itself is not writable).
  FuseExport(ploop::Stack& stack, std::string mountpoint, bool read_only);
  ~FuseExport();  // stop() if still running
  FuseExport(const FuseExport&) = delete;
  FuseExport& operator=(const FuseExport&) = delete;

  // Mounts and starts the multi-threaded FUSE loop on background threads; returns once the kernel
  // has completed the FUSE handshake (the mount is usable). Throws ploop::Error(kParam) if the
  // mount point is not an empty directory, ploop::Error(kSys) if FUSE is unavailable or the
  // mount fails.
  void start();
  // Unmounts and waits for the loop threads; idempotent. If the file is still open (say, a loop
  // device not yet released), it retries for up to 10 s, then detaches the mount lazily and waits
  // until the last user closes the file: it never cuts a user off.
  void stop();
  std::string file() const { return mountpoint_ + "/disk"; }

 private:
  struct Ops;  // the FUSE callbacks (fuse_export.cc)
  void detach_mount();

  ploop::Stack& stack_;
  std::string mountpoint_;
  std::string mounted_at_;  // absolute path of the mount point, while mounted
  bool read_only_;
  timespec created_{};
  fuse_session* se_ = nullptr;
  std::thread loop_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool mounted_ = false;      // mounted and not yet detached
  bool initialized_ = false;  // FUSE_INIT answered
  bool loop_done_ = false;    // the loop thread returned
};

}  // namespace shim
