#include "kmod-shim/ublk/ublk_ctrl.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ploop/error.h"

namespace shim {
namespace {

constexpr const char* kControl = "/dev/ublk-control";
constexpr uint32_t kNoQueue = 0xffff;

[[noreturn]] void fail(const std::string& what, int err) {
  throw ploop::Error(ploop::Exit::kDevice, "ublk: " + what + ": " + std::strerror(err), err);
}

}  // namespace

UblkControl::UblkControl() {
  fd_ = ::open(kControl, O_RDWR | O_CLOEXEC);
  if (fd_ < 0) fail(std::string("cannot open ") + kControl + " (is the ublk_drv module loaded?)", errno);
  int rc = io_uring_queue_init(4, &ring_, IORING_SETUP_SQE128);
  if (rc < 0) {
    ::close(fd_);
    fd_ = -1;
    fail("cannot create the control io_uring (SQE128)", -rc);
  }
  ring_ok_ = true;
  // GET_FEATURES exists only ioctl-encoded; a kernel that answers it takes ioctl-encoded commands.
  uint64_t feats = 0;
  encoded_ = true;
  int r = command(0, UBLK_U_CMD_GET_FEATURES, "GET_FEATURES", 0, reinterpret_cast<uintptr_t>(&feats), sizeof feats, 0, 0,
                  false);
  if (r >= 0) {
    features_ = feats;
  } else {
    encoded_ = false;  // before Linux 6.5: legacy opcodes, features unknown
    features_ = 0;
  }
}

UblkControl::~UblkControl() {
  if (ring_ok_) io_uring_queue_exit(&ring_);
  if (fd_ >= 0) ::close(fd_);
}

int UblkControl::command(unsigned legacy_op, unsigned encoded_op, const char* name, uint32_t dev_id, uint64_t addr,
                         uint16_t len, uint64_t data0, unsigned timeout_ms, bool throw_on_error) {
  const std::string what = std::string(name) + " of ublk device " + std::to_string(static_cast<int>(dev_id));
  if (!ring_ok_) fail(what + ": the control ring is unusable after an earlier timeout", EIO);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) fail(what + ": no free SQE", EBUSY);
  std::memset(sqe, 0, 2 * sizeof(io_uring_sqe));  // SQE128: the command area runs into the second half
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd_;
  sqe->cmd_op = encoded_ ? encoded_op : legacy_op;
  sqe->user_data = 1;
  auto* cmd = reinterpret_cast<ublksrv_ctrl_cmd*>(sqe->cmd);
  cmd->dev_id = dev_id;
  cmd->queue_id = static_cast<uint16_t>(kNoQueue);
  cmd->len = len;
  cmd->addr = addr;
  cmd->data[0] = data0;
  int rc = io_uring_submit(&ring_);
  if (rc < 0) fail(what + ": io_uring_submit", -rc);

  io_uring_cqe* cqe = nullptr;
  if (timeout_ms == 0) {
    do rc = io_uring_wait_cqe(&ring_, &cqe);
    while (rc == -EINTR);
  } else {
    __kernel_timespec ts{static_cast<long long>(timeout_ms / 1000), static_cast<long long>(timeout_ms % 1000) * 1000000};
    rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    if (rc == -ETIME) {
      // Cancel it (an io-wq worker blocked in the kernel is interrupted) and collect both CQEs.
      io_uring_sqe* c = io_uring_get_sqe(&ring_);
      if (c) {
        io_uring_prep_cancel64(c, 1, 0);
        c->user_data = 2;
        io_uring_submit(&ring_);
      }
      int seen = 0;
      for (int i = 0; i < 2; ++i) {
        __kernel_timespec one{1, 0};
        if (io_uring_wait_cqe_timeout(&ring_, &cqe, &one) != 0) break;
        if (cqe->user_data == 1) ++seen;
        io_uring_cqe_seen(&ring_, cqe);
      }
      if (!seen) {
        io_uring_queue_exit(&ring_);
        ring_ok_ = false;
      }
      return -ETIME;
    }
  }
  if (rc < 0) fail(what + ": waiting for the answer", -rc);
  int res = cqe->res;
  io_uring_cqe_seen(&ring_, cqe);
  if (res < 0 && throw_on_error) fail(what + " failed", -res);
  return res;
}

void UblkControl::add_dev(ublksrv_ctrl_dev_info& info) {
  command(UBLK_CMD_ADD_DEV, UBLK_U_CMD_ADD_DEV, "ADD_DEV", info.dev_id, reinterpret_cast<uintptr_t>(&info), sizeof info);
}

void UblkControl::set_params(uint32_t dev_id, ublk_params& p) {
  command(UBLK_CMD_SET_PARAMS, UBLK_U_CMD_SET_PARAMS, "SET_PARAMS", dev_id, reinterpret_cast<uintptr_t>(&p),
          static_cast<uint16_t>(p.len));
}

void UblkControl::start_dev(uint32_t dev_id, int server_pid) {
  command(UBLK_CMD_START_DEV, UBLK_U_CMD_START_DEV, "START_DEV", dev_id, 0, 0, static_cast<uint64_t>(server_pid));
}

void UblkControl::stop_dev(uint32_t dev_id) { command(UBLK_CMD_STOP_DEV, UBLK_U_CMD_STOP_DEV, "STOP_DEV", dev_id); }

bool UblkControl::del_dev(uint32_t dev_id, unsigned timeout_ms) {
  return command(UBLK_CMD_DEL_DEV, UBLK_U_CMD_DEL_DEV, "DEL_DEV", dev_id, 0, 0, 0, timeout_ms) != -ETIME;
}

void UblkControl::del_dev_nowait(uint32_t dev_id) {
  if (encoded_) {
    int r = command(0, UBLK_U_CMD_DEL_DEV_ASYNC, "DEL_DEV_ASYNC", dev_id, 0, 0, 0, 5000, false);
    if (r >= 0) return;
    if (r != -EOPNOTSUPP && r != -EINVAL && r != -ENOTTY) fail("DEL_DEV_ASYNC of ublk device " + std::to_string(dev_id), -r);
  }
  del_dev(dev_id, 2000);
}

void UblkControl::get_info(uint32_t dev_id, ublksrv_ctrl_dev_info& info) {
  command(UBLK_CMD_GET_DEV_INFO, UBLK_U_CMD_GET_DEV_INFO, "GET_DEV_INFO", dev_id, reinterpret_cast<uintptr_t>(&info),
          sizeof info);
}

void UblkControl::update_size(uint32_t dev_id, uint64_t sectors) {
  command(0, UBLK_U_CMD_UPDATE_SIZE, "UPDATE_SIZE", dev_id, 0, 0, sectors);
}

void UblkControl::start_user_recovery(uint32_t dev_id) {
  command(UBLK_CMD_START_USER_RECOVERY, UBLK_U_CMD_START_USER_RECOVERY, "START_USER_RECOVERY", dev_id);
}

void UblkControl::end_user_recovery(uint32_t dev_id, int server_pid) {
  command(UBLK_CMD_END_USER_RECOVERY, UBLK_U_CMD_END_USER_RECOVERY, "END_USER_RECOVERY", dev_id, 0, 0,
          static_cast<uint64_t>(server_pid));
}

}  // namespace shim
