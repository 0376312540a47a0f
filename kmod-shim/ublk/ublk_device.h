// A delta stack served as a ublk block device, /dev/ublkbN, from this process (Linux ublk_drv:
// the block layer hands requests to userspace through io_uring commands on /dev/ublkcN).
//
// Setup (start): ADD_DEV, SET_PARAMS, one queue thread per hardware queue posting FETCH_REQ for
// every tag (ublk_queue.h), START_DEV. Parameters: logical block 512, physical 4096, a volatile
// write cache with FUA (UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA: the kernel sends FLUSH and FUA
// writes, which mean Stack::flush and a durable write), discard and write-zeroes (single range,
// 4 KiB granularity), max_sectors = the per-tag buffer (512 KiB), read-only attribute if asked.
// Commands are ioctl-encoded when the kernel answers GET_FEATURES, else legacy (ublk_ctrl.h).
//
// Recovery (UBLK_F_USER_RECOVERY) is off unless asked for (UblkOptions::recovery), and the mount
// daemon does not ask: reattaching a new server under a still-mounted file system would be silent
// corruption here, because writes this server acknowledged but had not flushed (new clusters whose
// BAT entries live in memory until the next FLUSH, as the volatile-cache contract allows) die with
// it, while the file system's page cache keeps believing them. A dead server's device therefore
// fails its I/O; `ploop umount` removes it, and the next mount checks the image first, as after a
// power loss. Where asked for, it is used only with UBLK_F_USER_RECOVERY_FAIL_IO (Linux 6.13+):
// plain USER_RECOVERY(_REISSUE) makes every writer wait, unkillably, for a server that may never
// come. Reattach: UblkOptions::recover_id (START_USER_RECOVERY, fetch, END_USER_RECOVERY).
// Resize: UPDATE_SIZE where the driver has UBLK_F_UPDATE_SIZE (6.16+); elsewhere resize() throws.
// Errors: ploop::Error(kDevice) with the command, the device id and the kernel's errno.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ploop {
class Stack;
}

namespace shim {

class UblkControl;
class UblkQueue;
class WorkerPool;

struct UblkOptions {
  bool read_only = false;
  unsigned queues = 2;
  unsigned depth = 64;
  int recover_id = -1;   // >= 0: reattach to this device left by a dead server instead of creating one
  bool recovery = false;  // ask for UBLK_F_USER_RECOVERY(+FAIL_IO) where the kernel has both (see above)
};

class UblkDevice {
 public:
  UblkDevice(ploop::Stack& stack, UblkOptions o);
  ~UblkDevice();  // stop() if started
  UblkDevice(const UblkDevice&) = delete;
  UblkDevice& operator=(const UblkDevice&) = delete;

  // /dev/ublk-control exists and opens.
  static bool available();
  // Creates (or, with recover_id, reattaches) and starts the device; returns "/dev/ublkbN" once the
  // block device node exists. Undoes everything on failure.
  std::string start();
  // Online grow where the kernel can; else ploop::Error(kParam, ...). The stack must already be
  // `bytes` long.
  void resize(uint64_t bytes);
  // STOP_DEV + DEL_DEV, joins the queue threads. Idempotent.
  void stop();
  int id() const { return id_; }
  bool recoverable() const { return recoverable_; }  // created with UBLK_F_USER_RECOVERY

  // Deletes a device left by a server that died (DEL_DEV_ASYNC where the kernel has it, so
  // openers do not make it wait). Best effort: does nothing if there is no such device, and
  // leaves alone a device whose server process is alive.
  static void remove(int id);
  // Whether device `id` exists, was created with USER_RECOVERY, has no live server and waits
  // for one (state QUIESCED or FAIL_IO): then a new server can reattach with recover_id.
  static bool can_recover(int id);

 private:
  void serve_queues(uint16_t queues, uint16_t depth, uint32_t buf_bytes);
  void teardown_queues();

  ploop::Stack& stack_;
  UblkOptions opts_;
  int id_ = -1;
  int char_fd_ = -1;
  bool started_ = false;
  bool recoverable_ = false;
  uint64_t dev_flags_ = 0;
  std::unique_ptr<UblkControl> ctl_;
  std::unique_ptr<WorkerPool> pool_;
  std::vector<std::unique_ptr<UblkQueue>> queues_;
};

}  // namespace shim
