#include "ploop/uring_engine.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "ploop/error.h"

namespace ploop {
namespace {

// user_data of the engine's own operations; requests are pointers (never this small)
constexpr uint64_t kEventTag = 1;   // the eventfd read that wakes poll() for worker completions
constexpr uint64_t kWatchTag = 2;   // the poll of a watched descriptor, + direction (2, 3)
constexpr uint64_t kCancelTag = 4;  // the removal of such a poll, or its timeout

// O_DIRECT needs sector-aligned offsets and lengths and an aligned buffer; anything else goes
// through File, which bounces it. (A device with larger sectors answers EINVAL: see poll().)
bool direct_ok(const void* buf, uint64_t off, uint32_t len) {
  return ((off | len | reinterpret_cast<uintptr_t>(buf)) & 511) == 0;
}

int errno_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& x) {
    if (x.sys_errno()) return x.sys_errno();
    return x.code() == Exit::kParam ? EINVAL : EIO;
  } catch (const std::bad_alloc&) {
    return ENOMEM;
  } catch (...) {
    return EIO;
  }
}

}  // namespace

struct UringEngine::Request {
  struct Io {
    Request* r;
    const Stack::Piece* piece;
  };
  Stack::Mapping map;
  std::vector<Io> ios;
  uint8_t* buf;
  bool is_write;
  unsigned remaining = 0;
  int err = 0;
  Done done;
};

UringEngine::UringEngine(Stack& stack, unsigned depth) : stack_(stack) {
  io_uring_params p{};
  int rc = io_uring_queue_init_params(depth < 8 ? 8 : depth * 2, &ring_, &p);
  if (rc < 0) throw_errno(Exit::kSys, -rc, "io_uring_queue_init failed", "io_uring");
  efd_ = eventfd(0, EFD_CLOEXEC);
  if (efd_ < 0) {
    io_uring_queue_exit(&ring_);
    throw_errno(Exit::kSys, errno, "eventfd failed", "eventfd");
  }
  arm_eventfd();
  worker_ = std::thread([this] { worker_loop(); });
}

UringEngine::~UringEngine() {
  unwatch();
  while (in_flight_) poll(true);
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
  io_uring_queue_exit(&ring_);
  ::close(efd_);
}

io_uring_sqe* UringEngine::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  while (!s) {
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

void UringEngine::arm_eventfd() {
  io_uring_sqe* s = sqe();
  io_uring_prep_read(s, efd_, &efd_buf_, sizeof efd_buf_, 0);
  io_uring_sqe_set_data64(s, kEventTag);
}

void UringEngine::read(void* buf, uint64_t off, uint32_t len, Done done) {
  ++in_flight_;
  auto* r = new Request{{}, {}, static_cast<uint8_t*>(buf), false, 0, 0, std::move(done)};
  bool mapped = false;
  try {
    mapped = direct_ok(buf, off, len) && stack_.map_read(off, len, r->map);
  } catch (...) {
    done_.emplace_back(std::move(r->done), errno_of(std::current_exception()));
    delete r;
    return;
  }
  if (mapped) return submit_mapped(r, false);
  Done d = std::move(r->done);
  delete r;
  --in_flight_;
  to_worker([this, buf, off, len] { stack_.read(buf, off, len); }, std::move(d));
}

void UringEngine::write(const void* buf, uint64_t off, uint32_t len, bool fua, Done done) {
  ++in_flight_;
  auto* r = new Request{{}, {}, static_cast<uint8_t*>(const_cast<void*>(buf)), true, 0, 0, std::move(done)};
  bool mapped = false;
  try {
    mapped = !fua && direct_ok(buf, off, len) && stack_.map_write(off, len, r->map);
  } catch (...) {
    done_.emplace_back(std::move(r->done), errno_of(std::current_exception()));
    delete r;
    return;
  }
  if (mapped) return submit_mapped(r, true);
  Done d = std::move(r->done);
  delete r;
  --in_flight_;
  to_worker([this, buf, off, len, fua] { stack_.write(buf, off, len, fua); }, std::move(d));
}

void UringEngine::submit_mapped(Request* r, bool is_write) {
  r->ios.reserve(r->map.pieces.size());
  for (const Stack::Piece& p : r->map.pieces) {
    uint8_t* b = r->buf + p.buf_offset;
    if (!p.file) {
      std::memset(b, 0, p.length);
      continue;
    }
    if (p.file->fd() < 0) {  // no kernel file (test storage): do it synchronously
      try {
        if (is_write) {
          p.file->write(b, p.length, p.file_offset);
        } else {
          p.file->read(b, p.length, p.file_offset);
        }
      } catch (...) {
        r->err = errno_of(std::current_exception());
      }
      continue;
    }
    io_uring_sqe* s = sqe();
    if (is_write) {
      io_uring_prep_write(s, p.file->fd(), b, p.length, p.file_offset);
    } else {
      io_uring_prep_read(s, p.file->fd(), b, p.length, p.file_offset);
    }
    r->ios.push_back({r, &p});
    io_uring_sqe_set_data(s, &r->ios.back());
    ++r->remaining;
  }
  if (r->remaining == 0) finish(r);  // else submitted with the batch at the next poll()
}

void UringEngine::redo_sync(Request* r, const Stack::Piece& p, uint32_t done) {
  try {
    uint8_t* b = r->buf + p.buf_offset + done;
    if (r->is_write) {
      p.file->write(b, p.length - done, p.file_offset + done);
    } else {
      p.file->read(b, p.length - done, p.file_offset + done);
    }
  } catch (...) {
    r->err = errno_of(std::current_exception());
  }
}

void UringEngine::finish(Request* r) {
  stack_.release(r->map);
  done_.emplace_back(std::move(r->done), r->err);
  delete r;
}

void UringEngine::to_worker(std::function<void()> op, Done done) {
  ++in_flight_;
  {
    std::lock_guard lk(mu_);
    jobs_.emplace_back(std::move(op), std::move(done));
  }
  cv_.notify_one();
}

void UringEngine::run(std::function<void()> op, Done done) { to_worker(std::move(op), std::move(done)); }

void UringEngine::watch(int fd, Direction dir, Done done, unsigned timeout_ms) {
  ++in_flight_;
  watch_done_[dir] = std::move(done);
  watching_[dir] = true;
  if (timeout_ms && io_uring_sq_space_left(&ring_) < 2) io_uring_submit(&ring_);  // the pair stays linked
  io_uring_sqe* s = sqe();
  io_uring_prep_poll_add(s, fd, dir == kReadable ? POLLIN : POLLOUT);
  io_uring_sqe_set_data64(s, kWatchTag + dir);
  if (timeout_ms) {
    s->flags |= IOSQE_IO_LINK;
    watch_timeout_[dir].tv_sec = timeout_ms / 1000;
    watch_timeout_[dir].tv_nsec = (timeout_ms % 1000) * 1000000ll;
    io_uring_sqe* t = sqe();
    io_uring_prep_link_timeout(t, &watch_timeout_[dir], 0);
    io_uring_sqe_set_data64(t, kCancelTag);
  }
}

void UringEngine::unwatch() {
  for (int dir : {kReadable, kWritable}) {
    if (!watching_[dir]) continue;
    io_uring_sqe* s = sqe();
    io_uring_prep_poll_remove(s, kWatchTag + dir);
    io_uring_sqe_set_data64(s, kCancelTag);
  }
}

void UringEngine::flush(Done done) {
  to_worker([this] { stack_.flush(); }, std::move(done));
}

void UringEngine::worker_loop() {
  for (;;) {
    std::pair<std::function<void()>, Done> job;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    int err = 0;
    try {
      job.first();
    } catch (...) {
      err = errno_of(std::current_exception());
    }
    {
      std::lock_guard lk(mu_);
      worker_done_.emplace_back(std::move(job.second), err);
    }
    uint64_t one = 1;
    ssize_t rc = ::write(efd_, &one, sizeof one);
    (void)rc;
  }
}

size_t UringEngine::poll(bool wait) {
  auto pending_done = [&] {
    std::lock_guard lk(mu_);
    return !done_.empty() || !worker_done_.empty();
  };
  if (wait && in_flight_ && !pending_done()) {
    int rc;
    do {
      rc = io_uring_submit_and_wait(&ring_, 1);
    } while (rc == -EINTR);
  } else if (io_uring_sq_ready(&ring_)) {
    io_uring_submit(&ring_);
  }
  unsigned head, seen = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++seen;
    const uint64_t tag = io_uring_cqe_get_data64(cqe);
    if (tag == kEventTag) {
      arm_eventfd();
      continue;
    }
    if (tag == kCancelTag) continue;
    if (tag == kWatchTag || tag == kWatchTag + 1) {
      const auto dir = static_cast<size_t>(tag - kWatchTag);
      watching_[dir] = false;
      done_.emplace_back(std::move(watch_done_[dir]), cqe->res < 0 ? -cqe->res : 0);
      continue;
    }
    auto* io = static_cast<Request::Io*>(io_uring_cqe_get_data(cqe));
    Request* r = io->r;
    const Stack::Piece& p = *io->piece;
    if (cqe->res == -EINVAL) {
      redo_sync(r, p, 0);  // alignment the device refuses for O_DIRECT: File bounces it
    } else if (cqe->res < 0) {
      r->err = -cqe->res;
    } else if (static_cast<uint32_t>(cqe->res) < p.length) {
      // A short transfer (end of file, or a partial completion): finish the rest synchronously;
      // File::read zero-fills past end of file.
      redo_sync(r, p, static_cast<uint32_t>(cqe->res));
    }
    if (--r->remaining == 0) finish(r);
  }
  io_uring_cq_advance(&ring_, seen);
  if (io_uring_sq_ready(&ring_)) io_uring_submit(&ring_);  // re-armed eventfd read
  {
    std::lock_guard lk(mu_);
    while (!worker_done_.empty()) {
      done_.push_back(std::move(worker_done_.front()));
      worker_done_.pop_front();
    }
  }
  size_t ran = 0;
  while (!done_.empty()) {
    auto [d, err] = std::move(done_.front());
    done_.pop_front();
    --in_flight_;
    ++ran;
    if (d) d(err);
  }
  return ran;
}

}  // namespace ploop
