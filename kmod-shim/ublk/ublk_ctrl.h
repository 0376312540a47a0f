// The ublk control channel: commands to /dev/ublk-control sent as IORING_OP_URING_CMD on a small
// SQE128 io_uring (the command struct does not fit a 64-byte SQE), one at a time, each waited for.
//
// Opcodes: GET_FEATURES (ioctl-encoded only, Linux >= 6.5) tells which encoding the kernel takes:
// if it answers, every command is sent ioctl-encoded (UBLK_U_CMD_*), which kernels built without
// CONFIG_BLKDEV_UBLK_LEGACY_OPCODES require; if not (older kernels), the legacy numbers are used
// and features() is 0. Every failure is a ploop::Error(kDevice) naming the command, the device id
// and the kernel's errno.
#pragma once

#include <liburing.h>

#include <cstdint>
#include <string>

#include "kmod-shim/ublk/ublk_uapi.h"

namespace shim {

class UblkControl {
 public:
  // Opens /dev/ublk-control. Throws ploop::Error(kDevice) if it cannot.
  UblkControl();
  ~UblkControl();
  UblkControl(const UblkControl&) = delete;
  UblkControl& operator=(const UblkControl&) = delete;

  uint64_t features() const { return features_; }  // UBLK_F_* the driver supports (0: unknown, old kernel)
  bool ioctl_encoded() const { return encoded_; }

  // ADD_DEV with `info` (dev_id -1 = any free id); the kernel's answer is written back into it.
  void add_dev(ublksrv_ctrl_dev_info& info);
  void set_params(uint32_t dev_id, ublk_params& p);
  void start_dev(uint32_t dev_id, int server_pid);
  void stop_dev(uint32_t dev_id);
  // DEL_DEV: waits (at most `timeout_ms`) until the kernel has freed the id. Returns false on timeout
  // (the device is stopped and goes away once its last opener lets go).
  bool del_dev(uint32_t dev_id, unsigned timeout_ms);
  // DEL_DEV_ASYNC where the kernel has it (it does not wait for openers); else del_dev with a short wait.
  void del_dev_nowait(uint32_t dev_id);
  void get_info(uint32_t dev_id, ublksrv_ctrl_dev_info& info);
  void update_size(uint32_t dev_id, uint64_t sectors);
  void start_user_recovery(uint32_t dev_id);
  void end_user_recovery(uint32_t dev_id, int server_pid);

  // Sends one command; returns the CQE result (>= 0), throws on a negative one. timeout_ms == 0
  // waits forever; on timeout returns -ETIME without throwing (the command is cancelled).
  int command(unsigned legacy_op, unsigned encoded_op, const char* name, uint32_t dev_id, uint64_t addr = 0,
              uint16_t len = 0, uint64_t data0 = 0, unsigned timeout_ms = 0, bool throw_on_error = true);

 private:
  int fd_ = -1;
  io_uring ring_{};
  bool ring_ok_ = false;
  uint64_t features_ = 0;
  bool encoded_ = false;
};

}  // namespace shim
