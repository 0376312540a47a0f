// One ublk hardware queue, served by one thread (the kernel binds a queue's commands to the task
// that fetched them). The thread owns an io_uring, the queue's read-only array of request
// descriptors mmapped from /dev/ublkcN, and one page-aligned buffer per tag. It posts FETCH_REQ for
// every tag; each completion is a request, which a worker of the shared pool runs against the
// stack; the worker hands the result back through an eventfd the ring reads, and the queue thread
// answers with COMMIT_AND_FETCH_REQ (result + re-arm in one command).
//
// Request semantics (the FUSE export's, in block terms):
// - READ/WRITE -> Stack::read/write; WRITE with UBLK_IO_F_FUA -> a FUA write (durable on return).
// - FLUSH -> Stack::flush() (the device advertises a volatile cache, so the kernel sends these).
// - DISCARD -> Stack::discard (whole top-only clusters released; contents afterwards undefined).
// - WRITE_ZEROES -> Stack::write_zeroes (reads as zeros afterwards; NOUNMAP keeps clusters).
// - errors: ploop::Error -> -its errno if set, kParam -> -EINVAL, else -EIO; writes to a
//   read-only device -> -EROFS; any other operation -> -EOPNOTSUPP.
// The thread ends when every tag's command came back UBLK_IO_RES_ABORT (STOP_DEV, or the device
// going away), or after quit() once nothing is in flight.
#pragma once

#include <atomic>
#include <cstdint>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "kmod-shim/worker_pool.h"

namespace ploop {
class Stack;
}

namespace shim {

struct UblkQueueConfig {
  int char_fd = -1;           // /dev/ublkcN
  uint16_t q_id = 0;
  uint16_t depth = 0;
  uint32_t buf_bytes = 0;     // per tag, = the device's max_io_buf_bytes
  bool ioctl_encoded = true;  // UBLK_U_IO_* instead of the legacy opcodes
  bool read_only = false;
};

class UblkQueue {
 public:
  UblkQueue(ploop::Stack& stack, WorkerPool& pool, UblkQueueConfig cfg);
  ~UblkQueue();  // quit() and join()
  UblkQueue(const UblkQueue&) = delete;
  UblkQueue& operator=(const UblkQueue&) = delete;

  // Starts the thread; returns once FETCH_REQ is posted for every tag (START_DEV and
  // END_USER_RECOVERY wait for that). Throws ploop::Error(kDevice) if the queue cannot be set up.
  void start();
  void quit();
  void join();

 private:
  struct Done {
    uint16_t tag;
    int32_t result;
  };
  void run(std::promise<void>& ready);
  void setup();
  void serve(uint16_t tag);
  int32_t execute(uint16_t tag);
  void post(uint16_t tag, bool commit, int32_t result);
  void arm_event();

  ploop::Stack& stack_;
  WorkerPool& pool_;
  UblkQueueConfig cfg_;
  std::thread thread_;
  void* ring_ = nullptr;  // io_uring (kept out of this header)
  const void* descs_ = nullptr;
  size_t descs_len_ = 0;
  uint8_t* bufs_ = nullptr;
  size_t bufs_len_ = 0;
  int event_fd_ = -1;
  uint64_t event_buf_ = 0;
  std::mutex mu_;
  std::vector<Done> done_;  // results from workers, under mu_
  std::atomic<bool> quit_{false};
  unsigned in_flight_ = 0;  // requests handed to workers (queue thread only)
};

}  // namespace shim
