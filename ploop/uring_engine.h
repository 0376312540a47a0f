// An asynchronous front for a Stack over io_uring, for servers and benchmarks that keep many
// requests in flight from one thread.
//
// The owner thread submits requests and calls poll(); callbacks run on the owner thread inside
// poll(). Reads, and writes to clusters the top delta already owns, go straight to the ring
// (their clusters pinned until completion). Everything else (allocation and copy-up, discard,
// write-zeroes, flush, FUA writes, requests that meet a cluster being changed) runs on one worker
// thread through the Stack's synchronous calls, so the owner thread never blocks on a cluster lock.
// Ordering: requests in flight together may complete in any order, as on any block device; a
// flush covers every write whose callback ran before the flush was submitted.
// Submissions are batched: requests queued by the calls below reach the kernel at the next
// poll() (or earlier when the submission queue fills), so a burst costs one system call.
// A server can also wait for a file descriptor of its own (watch()) in the same poll(), so one
// thread serves both its socket and its I/O without further wake-ups.
#pragma once

#include <liburing.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "ploop/stack.h"

namespace ploop {

class UringEngine {
 public:
  // err is 0 or a positive errno (EINVAL for a bad range, ENOSPC, EIO, ...).
  using Done = std::function<void(int err)>;

  UringEngine(Stack& stack, unsigned queue_depth);
  ~UringEngine();  // waits for every request in flight
  UringEngine(const UringEngine&) = delete;
  UringEngine& operator=(const UringEngine&) = delete;

  void read(void* buf, uint64_t offset, uint32_t len, Done done);
  void write(const void* buf, uint64_t offset, uint32_t len, bool fua, Done done);
  void flush(Done done);
  // Runs `op` (Stack calls that may block: discard, write-zeroes, ...) on the worker thread; `done`
  // gets its errno.
  void run(std::function<void()> op, Done done);

  // One-shot: `done(0)` runs in a later poll() once `fd` is ready for `dir` (or has hung up or
  // failed). With a timeout, done(ECANCELED) if it is not ready in that time; also after
  // unwatch(). At most one watch per direction at a time; each counts as in flight.
  enum Direction { kReadable = 0, kWritable = 1 };
  void watch(int fd, Direction dir, Done done, unsigned timeout_ms = 0);
  void unwatch();

  // Runs the callbacks of completed requests; with `wait`, first waits until at least one request
  // completes (returns at once if nothing is in flight). Returns how many callbacks ran.
  size_t poll(bool wait);
  size_t in_flight() const { return in_flight_; }

 private:
  struct Request;
  void submit_mapped(Request* r, bool is_write);
  void redo_sync(Request* r, const Stack::Piece& p, uint32_t done);
  void to_worker(std::function<void()> op, Done done);
  void finish(Request* r);
  void worker_loop();
  io_uring_sqe* sqe();
  void arm_eventfd();

  Stack& stack_;
  io_uring ring_{};
  int efd_ = -1;
  uint64_t efd_buf_ = 0;
  size_t in_flight_ = 0;
  Done watch_done_[2];
  bool watching_[2] = {false, false};
  __kernel_timespec watch_timeout_[2]{};
  std::deque<std::pair<Done, int>> done_;  // completed by the worker

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::function<void()>, Done>> jobs_;
  std::deque<std::pair<Done, int>> worker_done_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace ploop
