#include "kmod-shim/ublk/ublk_device.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <thread>

#include "kmod-shim/ublk/ublk_ctrl.h"
#include "kmod-shim/ublk/ublk_queue.h"
#include "kmod-shim/worker_pool.h"
#include "ploop/error.h"
#include "ploop/stack.h"

namespace shim {
namespace {

constexpr uint32_t kBufBytes = 512 * 1024;    // per tag; the largest request the kernel sends
constexpr uint32_t kMaxDiscardSectors = 1u << 21;  // 1 GiB per discard or write-zeroes request
constexpr unsigned kWorkersPerQueue = 4;

std::string char_path(int id) { return "/dev/ublkc" + std::to_string(id); }
std::string block_path(int id) { return "/dev/ublkb" + std::to_string(id); }

bool pid_alive(int pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

// Waits for a device node (devtmpfs creates it when the kernel registers the device; udev may
// replace it a moment later).
bool wait_node(const std::string& path, std::chrono::milliseconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  struct stat st;
  while (::stat(path.c_str(), &st) != 0) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// Retries `f` while it fails with EBUSY (the kernel finishing a dead server's teardown).
template <class F>
void retry_busy(F&& f, std::chrono::milliseconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    try {
      f();
      return;
    } catch (const ploop::Error& e) {
      if (e.sys_errno() != EBUSY || std::chrono::steady_clock::now() > until) throw;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

UblkDevice::UblkDevice(ploop::Stack& stack, UblkOptions o) : stack_(stack), opts_(o) {
  if (!stack_.writable()) opts_.read_only = true;
}

UblkDevice::~UblkDevice() {
  try {
    stop();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ploop ublk: stopping device %d: %s\n", id_, e.what());
  }
}

bool UblkDevice::available() {
  int fd = ::open("/dev/ublk-control", O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

void UblkDevice::serve_queues(uint16_t queues, uint16_t depth, uint32_t buf_bytes) {
  char_fd_ = -1;
  const std::string cpath = char_path(id_);
  if (!wait_node(cpath, std::chrono::seconds(5))) {
    throw ploop::Error(ploop::Exit::kDevice, "ublk: " + cpath + " did not appear");
  }
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while ((char_fd_ = ::open(cpath.c_str(), O_RDWR | O_CLOEXEC)) < 0) {
    int err = errno;  // EBUSY: a dead server's file is still being released
    if ((err != EBUSY && err != ENOENT) || std::chrono::steady_clock::now() > until) {
      ploop::throw_errno(ploop::Exit::kDevice, err, "ublk: cannot open", cpath);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  pool_ = std::make_unique<WorkerPool>(queues * kWorkersPerQueue, static_cast<size_t>(queues) * depth + 1);
  for (uint16_t q = 0; q < queues; ++q) {
    UblkQueueConfig qc{char_fd_, q, depth, buf_bytes, ctl_->ioctl_encoded(), opts_.read_only};
    queues_.push_back(std::make_unique<UblkQueue>(stack_, *pool_, qc));
    queues_.back()->start();
  }
}

void UblkDevice::teardown_queues() {
  for (auto& q : queues_) q->quit();
  queues_.clear();  // joins
  pool_.reset();
  if (char_fd_ >= 0) ::close(char_fd_);
  char_fd_ = -1;
}

std::string UblkDevice::start() {
  if (started_) return block_path(id_);
  if (opts_.queues == 0 || opts_.queues > 64 || opts_.depth == 0 || opts_.depth > UBLK_MAX_QUEUE_DEPTH) {
    throw ploop::Error(ploop::Exit::kParam, "ublk: queues must be 1..64 and depth 1.." + std::to_string(UBLK_MAX_QUEUE_DEPTH));
  }
  if (stack_.size() % 4096) throw ploop::Error(ploop::Exit::kParam, "ublk: the disk size is not a multiple of 4096 bytes");
  ctl_ = std::make_unique<UblkControl>();
  const uint64_t feats = ctl_->features();

  if (opts_.recover_id >= 0) {
    // Reattach to a device whose server died: the kernel keeps /dev/ublkbN and queues its I/O.
    id_ = opts_.recover_id;
    ublksrv_ctrl_dev_info info{};
    ctl_->get_info(static_cast<uint32_t>(id_), info);
    if (!(info.flags & UBLK_F_USER_RECOVERY)) {
      throw ploop::Error(ploop::Exit::kDevice, "ublk: device " + std::to_string(id_) + " was not created recoverable");
    }
    if (pid_alive(info.ublksrv_pid) && info.ublksrv_pid != ::getpid()) {
      throw ploop::Error(ploop::Exit::kBusy, "ublk: device " + std::to_string(id_) + " is served by live process " +
                                                 std::to_string(info.ublksrv_pid));
    }
    dev_flags_ = info.flags;
    recoverable_ = true;
    retry_busy([&] { ctl_->start_user_recovery(static_cast<uint32_t>(id_)); }, std::chrono::seconds(10));
    try {
      serve_queues(info.nr_hw_queues, info.queue_depth, info.max_io_buf_bytes);
      ctl_->end_user_recovery(static_cast<uint32_t>(id_), ::getpid());
    } catch (...) {
      teardown_queues();  // the device stays, quiesced, for another attempt or remove()
      throw;
    }
    started_ = true;
    if (!wait_node(block_path(id_), std::chrono::seconds(5))) {
      throw ploop::Error(ploop::Exit::kDevice, "ublk: " + block_path(id_) + " is gone");
    }
    return block_path(id_);
  }

  ublksrv_ctrl_dev_info info{};
  info.nr_hw_queues = static_cast<uint16_t>(opts_.queues);
  info.queue_depth = static_cast<uint16_t>(opts_.depth);
  info.max_io_buf_bytes = kBufBytes;
  info.dev_id = static_cast<uint32_t>(-1);
  info.ublksrv_pid = ::getpid();
  uint64_t want = 0;
  if (ctl_->ioctl_encoded()) want |= UBLK_F_CMD_IOCTL_ENCODE;
  // Recovery only together with FAIL_IO (Linux 6.13+): without it a device whose server died
  // holds every request until a new server comes, and writers hang instead of getting errors.
  if (opts_.recovery && (feats & UBLK_F_USER_RECOVERY) && (feats & UBLK_F_USER_RECOVERY_FAIL_IO)) {
    want |= UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO;
  }
  if (feats & UBLK_F_UPDATE_SIZE) want |= UBLK_F_UPDATE_SIZE;
  info.flags = want;
  const ublksrv_ctrl_dev_info asked = info;
  try {
    ctl_->add_dev(info);
  } catch (const ploop::Error& e) {
    if (e.sys_errno() != EINVAL || !(want & (UBLK_F_USER_RECOVERY | UBLK_F_UPDATE_SIZE))) throw;
    info = asked;  // a driver that refuses the optional flags: the plain device
    info.flags = want & ~(UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO | UBLK_F_UPDATE_SIZE);
    ctl_->add_dev(info);
  }
  id_ = static_cast<int>(info.dev_id);
  dev_flags_ = info.flags;
  recoverable_ = (dev_flags_ & UBLK_F_USER_RECOVERY) != 0;
  try {
    const uint32_t buf = std::min<uint32_t>(info.max_io_buf_bytes, kBufBytes) / 4096 * 4096;
    if (buf < 4096) throw ploop::Error(ploop::Exit::kDevice, "ublk: the driver granted an I/O buffer under 4 KiB");
    ublk_params p{};
    p.len = sizeof p;
    p.types = UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD;
    p.basic.attrs = UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA | (opts_.read_only ? UBLK_ATTR_READ_ONLY : 0);
    p.basic.logical_bs_shift = 9;
    p.basic.physical_bs_shift = 12;
    p.basic.io_min_shift = 12;
    p.basic.io_opt_shift = 12;
    p.basic.max_sectors = buf >> 9;
    p.basic.dev_sectors = stack_.size() >> 9;
    if (!opts_.read_only) {
      p.discard.discard_granularity = 4096;
      p.discard.max_discard_sectors = kMaxDiscardSectors;
      p.discard.max_write_zeroes_sectors = kMaxDiscardSectors;
      p.discard.max_discard_segments = 1;
    } else {
      p.types = UBLK_PARAM_TYPE_BASIC;
    }
    ctl_->set_params(static_cast<uint32_t>(id_), p);
    serve_queues(info.nr_hw_queues, info.queue_depth, buf);
    ctl_->start_dev(static_cast<uint32_t>(id_), ::getpid());
    started_ = true;
    if (!wait_node(block_path(id_), std::chrono::seconds(5))) {
      throw ploop::Error(ploop::Exit::kDevice, "ublk: " + block_path(id_) + " did not appear");
    }
  } catch (...) {
    try {
      if (started_) ctl_->stop_dev(static_cast<uint32_t>(id_));
    } catch (...) {
    }
    teardown_queues();
    try {
      ctl_->del_dev(static_cast<uint32_t>(id_), 10000);
    } catch (...) {
    }
    started_ = false;
    id_ = -1;
    throw;
  }
  return block_path(id_);
}

void UblkDevice::resize(uint64_t bytes) {
  if (!started_) throw ploop::Error(ploop::Exit::kParam, "ublk: resize of a device that is not started");
  if (!(dev_flags_ & UBLK_F_UPDATE_SIZE)) {
    throw ploop::Error(ploop::Exit::kParam,
                       "ublk: online resize needs UBLK_F_UPDATE_SIZE (Linux 6.16 or later); this kernel's ublk_drv "
                       "cannot change the size of " + block_path(id_) + " while it is attached");
  }
  if (bytes % 4096) throw ploop::Error(ploop::Exit::kParam, "ublk: new size is not a multiple of 4096 bytes");
  ctl_->update_size(static_cast<uint32_t>(id_), bytes >> 9);
}

void UblkDevice::stop() {
  if (!ctl_ || id_ < 0) return;
  const auto id = static_cast<uint32_t>(id_);
  if (started_) {
    // STOP_DEV removes /dev/ublkbN (waiting for requests in flight) and aborts every posted
    // FETCH_REQ, which ends the queue threads.
    try {
      ctl_->stop_dev(id);
    } catch (const ploop::Error& e) {
      std::fprintf(stderr, "ploop ublk: %s\n", e.what());
    }
  }
  teardown_queues();
  started_ = false;
  // Our /dev/ublkcN is closed; DEL_DEV returns once the kernel has released the device.
  if (!ctl_->del_dev(id, 30000)) {
    std::fprintf(stderr, "ploop ublk: device %d is still held after 30 s; it goes away with its last opener\n", id_);
  }
  id_ = -1;
  ctl_.reset();
}

void UblkDevice::remove(int id) {
  if (id < 0) return;
  try {
    UblkControl ctl;
    ublksrv_ctrl_dev_info info{};
    if (ctl.command(UBLK_CMD_GET_DEV_INFO, UBLK_U_CMD_GET_DEV_INFO, "GET_DEV_INFO", static_cast<uint32_t>(id),
                    reinterpret_cast<uintptr_t>(&info), sizeof info, 0, 5000, false) < 0) {
      return;  // no such device
    }
    if (pid_alive(info.ublksrv_pid) && info.ublksrv_pid != ::getpid()) return;  // someone else's live device
    ctl.del_dev_nowait(static_cast<uint32_t>(id));
  } catch (const ploop::Error& e) {
    std::fprintf(stderr, "ploop ublk: removing device %d: %s\n", id, e.what());
  }
}

bool UblkDevice::can_recover(int id) {
  if (id < 0) return false;
  try {
    UblkControl ctl;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    for (;;) {
      ublksrv_ctrl_dev_info info{};
      if (ctl.command(UBLK_CMD_GET_DEV_INFO, UBLK_U_CMD_GET_DEV_INFO, "GET_DEV_INFO", static_cast<uint32_t>(id),
                      reinterpret_cast<uintptr_t>(&info), sizeof info, 0, 5000, false) < 0) {
        return false;
      }
      if (!(info.flags & UBLK_F_USER_RECOVERY) || pid_alive(info.ublksrv_pid)) return false;
      if (info.state == UBLK_S_DEV_QUIESCED || info.state == UBLK_S_DEV_FAIL_IO) return true;
      if (info.state != UBLK_S_DEV_LIVE || std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the kernel is still quiescing it
    }
  } catch (const ploop::Error&) {
    return false;
  }
}

}  // namespace shim
