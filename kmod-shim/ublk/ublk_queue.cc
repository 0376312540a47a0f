#include "kmod-shim/ublk/ublk_queue.h"

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <new>

#include "kmod-shim/ublk/ublk_uapi.h"
#include "ploop/error.h"
#include "ploop/stack.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace shim {
namespace {

constexpr uint64_t kEventData = 1ull << 32;  // user_data of the eventfd read; tags are below 2^16

size_t page_round(size_t n) {
  size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

int errno_of(const ploop::Error& e) {
  if (e.sys_errno()) return e.sys_errno();
  return e.code() == ploop::Exit::kParam ? EINVAL : EIO;
}

io_uring* ring_of(void* p) { return static_cast<io_uring*>(p); }

}  // namespace

UblkQueue::UblkQueue(ploop::Stack& stack, WorkerPool& pool, UblkQueueConfig cfg) : stack_(stack), pool_(pool), cfg_(cfg) {}

UblkQueue::~UblkQueue() {
  quit();
  join();
  if (ring_) {
    io_uring_queue_exit(ring_of(ring_));
    delete ring_of(ring_);
  }
  if (descs_) ::munmap(const_cast<void*>(descs_), descs_len_);
  if (bufs_) ::munmap(bufs_, bufs_len_);
  if (event_fd_ >= 0) ::close(event_fd_);
}

void UblkQueue::setup() {
  const std::string q = "ublk queue " + std::to_string(cfg_.q_id);
  event_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (event_fd_ < 0) ploop::throw_errno(ploop::Exit::kDevice, errno, "eventfd failed", q);
  // The descriptor array of queue q sits at q * (room for the largest depth), read-only.
  descs_len_ = page_round(cfg_.depth * sizeof(ublksrv_io_desc));
  off_t off = static_cast<off_t>(UBLKSRV_CMD_BUF_OFFSET +
                                 cfg_.q_id * page_round(UBLK_MAX_QUEUE_DEPTH * sizeof(ublksrv_io_desc)));
  void* d = ::mmap(nullptr, descs_len_, PROT_READ, MAP_SHARED | MAP_POPULATE, cfg_.char_fd, off);
  if (d == MAP_FAILED) ploop::throw_errno(ploop::Exit::kDevice, errno, "cannot map the request descriptors of", q);
  descs_ = d;
  // One buffer per tag; anonymous memory, touched only when a request of that size arrives.
  bufs_len_ = static_cast<size_t>(cfg_.depth) * cfg_.buf_bytes;
  void* b = ::mmap(nullptr, bufs_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (b == MAP_FAILED) ploop::throw_errno(ploop::Exit::kMemory, errno, "cannot allocate I/O buffers for", q);
  bufs_ = static_cast<uint8_t*>(b);
  auto* ring = new io_uring{};
  int rc = io_uring_queue_init(cfg_.depth + 2u, ring, 0);
  if (rc < 0) {
    delete ring;
    ploop::throw_errno(ploop::Exit::kDevice, -rc, "cannot create the io_uring of", q);
  }
  ring_ = ring;
}

// Queues FETCH_REQ (commit == false) or COMMIT_AND_FETCH_REQ for `tag`; submitted by the loop.
void UblkQueue::post(uint16_t tag, bool commit, int32_t result) {
  io_uring* ring = ring_of(ring_);
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (!sqe) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  if (!sqe) throw ploop::Error(ploop::Exit::kDevice, "ublk queue " + std::to_string(cfg_.q_id) + ": submission ring full");
  std::memset(sqe, 0, sizeof *sqe);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = cfg_.char_fd;
  if (cfg_.ioctl_encoded) {
    sqe->cmd_op = commit ? UBLK_U_IO_COMMIT_AND_FETCH_REQ : UBLK_U_IO_FETCH_REQ;
  } else {
    sqe->cmd_op = commit ? UBLK_IO_COMMIT_AND_FETCH_REQ : UBLK_IO_FETCH_REQ;
  }
  sqe->user_data = tag;
  auto* cmd = reinterpret_cast<ublksrv_io_cmd*>(sqe->cmd);
  cmd->q_id = cfg_.q_id;
  cmd->tag = tag;
  cmd->result = commit ? result : -1;
  cmd->addr = reinterpret_cast<uintptr_t>(bufs_ + static_cast<size_t>(tag) * cfg_.buf_bytes);
}

void UblkQueue::arm_event() {
  io_uring* ring = ring_of(ring_);
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (!sqe) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  if (!sqe) return;
  io_uring_prep_read(sqe, event_fd_, &event_buf_, sizeof event_buf_, 0);
  sqe->user_data = kEventData;
}

int32_t UblkQueue::execute(uint16_t tag) {
  const auto* iod = static_cast<const ublksrv_io_desc*>(descs_) + tag;
  const uint32_t op = iod->op_flags & 0xff, flags = iod->op_flags;
  const uint64_t off = iod->start_sector << 9, len = static_cast<uint64_t>(iod->nr_sectors) << 9;
  uint8_t* buf = bufs_ + static_cast<size_t>(tag) * cfg_.buf_bytes;
  const bool fua = (flags & UBLK_IO_F_FUA) != 0;
  static const char* const kNames[] = {"read", "write", "flush", "discard", "write-same", "write-zeroes"};
  const char* name = op < 6 ? kNames[op] : "unknown operation";
  try {
    switch (op) {
      case UBLK_IO_OP_READ:
        if (len > cfg_.buf_bytes) return -EINVAL;
        stack_.read(buf, off, len);
        return static_cast<int32_t>(len);
      case UBLK_IO_OP_WRITE:
        if (cfg_.read_only) return -EROFS;
        if (len > cfg_.buf_bytes) return -EINVAL;
        stack_.write(buf, off, len, fua);
        return static_cast<int32_t>(len);
      case UBLK_IO_OP_FLUSH:
        if (!cfg_.read_only) stack_.flush();
        return 0;
      case UBLK_IO_OP_DISCARD:
        if (cfg_.read_only) return -EROFS;
        stack_.discard(off, len);
        return 0;
      case UBLK_IO_OP_WRITE_ZEROES:
        if (cfg_.read_only) return -EROFS;
        stack_.write_zeroes(off, len, fua, (flags & UBLK_IO_F_NOUNMAP) == 0);
        return 0;
      default:
        return -EOPNOTSUPP;
    }
  } catch (const ploop::Error& e) {
    std::fprintf(stderr, "ploop ublk: %s of %llu bytes at offset %llu failed: %s\n", name,
                 static_cast<unsigned long long>(len), static_cast<unsigned long long>(off), e.what());
    return -errno_of(e);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ploop ublk: %s of %llu bytes at offset %llu failed: %s\n", name,
                 static_cast<unsigned long long>(len), static_cast<unsigned long long>(off), e.what());
    return -EIO;
  }
}

void UblkQueue::serve(uint16_t tag) {
  int32_t r = execute(tag);
  {
    std::lock_guard lk(mu_);
    done_.push_back({tag, r});
  }
  uint64_t one = 1;
  if (::write(event_fd_, &one, sizeof one) < 0) {
  }
}

void UblkQueue::run(std::promise<void>& ready) {
  ::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);  // inherited from the daemon anyway; harmless if refused
  try {
    setup();
    for (uint16_t t = 0; t < cfg_.depth; ++t) post(t, false, 0);
    arm_event();
    int rc = io_uring_submit(ring_of(ring_));
    if (rc < 0) ploop::throw_errno(ploop::Exit::kDevice, -rc, "cannot post FETCH_REQ on", "ublk queue " + std::to_string(cfg_.q_id));
  } catch (...) {
    ready.set_exception(std::current_exception());
    return;
  }
  ready.set_value();

  io_uring* ring = ring_of(ring_);
  unsigned finished = 0;  // tags whose command came back without a request (ABORT or error)
  std::vector<Done> batch;
  try {
    while (finished < cfg_.depth && !(quit_ && in_flight_ == 0)) {
      int rc = io_uring_submit_and_wait(ring, 1);
      if (rc < 0 && rc != -EINTR && rc != -EBUSY) {
        ploop::throw_errno(ploop::Exit::kDevice, -rc, "io_uring wait failed on", "ublk queue " + std::to_string(cfg_.q_id));
      }
      io_uring_cqe* cqe;
      unsigned head, seen = 0;
      bool event = false;
      io_uring_for_each_cqe(ring, head, cqe) {
        ++seen;
        if (cqe->user_data == kEventData) {
          event = true;
          continue;
        }
        const auto tag = static_cast<uint16_t>(cqe->user_data);
        if (cqe->res == UBLK_IO_RES_OK) {
          ++in_flight_;
          pool_.submit([this, tag] { serve(tag); });
        } else {
          if (cqe->res != UBLK_IO_RES_ABORT) {
            std::fprintf(stderr, "ploop ublk: queue %u tag %u: command failed: %s\n", cfg_.q_id, tag, std::strerror(-cqe->res));
          }
          ++finished;
        }
      }
      io_uring_cq_advance(ring, seen);
      if (event) {
        {
          std::lock_guard lk(mu_);
          batch.swap(done_);
        }
        for (const Done& d : batch) {
          --in_flight_;
          post(d.tag, true, d.result);
        }
        batch.clear();
        arm_event();
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ploop ublk: queue %u stopped: %s\n", cfg_.q_id, e.what());
  }
  // Requests still with workers reference our buffers: wait for them before the ring goes away.
  // Not through the ring (it may be what failed): the workers' results are collected every
  // millisecond until none is left; this only runs once, at the end.
  for (;;) {
    {
      std::lock_guard lk(mu_);
      in_flight_ -= static_cast<unsigned>(done_.size());
      done_.clear();
    }
    if (in_flight_ == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void UblkQueue::start() {
  std::promise<void> ready;
  auto f = ready.get_future();
  thread_ = std::thread([this, &ready] { run(ready); });
  try {
    f.get();
  } catch (...) {
    join();
    throw;
  }
}

void UblkQueue::quit() {
  quit_ = true;
  if (event_fd_ >= 0) {
    uint64_t one = 1;
    if (::write(event_fd_, &one, sizeof one) < 0) {
    }
  }
}

void UblkQueue::join() {
  if (thread_.joinable()) thread_.join();
}

}  // namespace shim
