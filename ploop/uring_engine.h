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
  void discard(uint64_t offset, uint64_t len, Done done);
  void write_zeroes(uint64_t offset, uint64_t len, bool fua, Done done);

  // Runs the callbacks of completed requests; with `wait`, first waits until at least one request
  // completes (returns at once if nothing is in flight). Returns how many callbacks ran.
  size_t poll(bool wait);
  size_t in_flight() const { return in_flight_; }

 private:
  struct Request;
  void submit_mapped(Request* r, bool is_write);
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
  size_t ready_ = 0;  // callbacks ready to run in the next poll
  std::deque<std::pair<Done, int>> done_;  // completed by the worker

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::function<void()>, Done>> jobs_;
  std::deque<std::pair<Done, int>> worker_done_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace ploop
