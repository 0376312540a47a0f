// A kernel NBD device (/dev/nbdN) served from a delta stack by this process. The kernel's client
// gets one end of each of a few socket pairs; the other ends are served by nbd::Connection in
// transmission-only mode (the kernel does no handshake: size, 512-byte blocks and transmission
// flags are handed to it here). Set up through the generic-netlink family "nbd" (the kernel picks
// a free device), or through the old ioctls (NBD_SET_SOCK, NBD_DO_IT on a thread) where that
// family is missing.
//
// Promises: start() returns only once the device has its size; stop() returns only once the
// device is disconnected and every serving thread has ended. If this process dies, the kernel
// sees its sockets close: requests fail after `dead_conn_timeout_s` instead of hanging, and
// disconnect(index) releases the device. All of it needs CAP_SYS_ADMIN and the nbd module.
// start(), resize() and stop() are called from one thread at a time. /sys/block/nbdN/pid names the
// thread that connected the device (on the ioctl path, the NBD_DO_IT thread), not always the
// process.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kmod-shim/nbd/connection.h"
#include "ploop/stack.h"

namespace shim {

struct KernelNbdOptions {
  bool read_only = false;
  unsigned connections = 2;           // socket pairs (one kernel hardware queue each), 1..16
  unsigned dead_conn_timeout_s = 30;  // how long the kernel waits for a dead server before failing I/O
};

class KernelNbd {
 public:
  KernelNbd(ploop::Stack& stack, KernelNbdOptions o);
  ~KernelNbd();  // stop() if started
  KernelNbd(const KernelNbd&) = delete;
  KernelNbd& operator=(const KernelNbd&) = delete;

  // Whether the nbd module is loaded (/sys/module/nbd exists).
  static bool available();
  // Attaches a free /dev/nbdN served from the stack by this process and returns its path; waits
  // until the device has its size. Throws ploop::Error(kDevice) with the reason, leaving nothing
  // attached, if it cannot.
  std::string start();
  // Tells the kernel the disk's new size (NBD_CMD_RECONFIGURE, or NBD_SET_SIZE on the ioctl path);
  // the stack must already have it. Throws ploop::Error(kDevice) if the kernel refuses.
  void resize(uint64_t bytes);
  // Disconnects the device (NBD_CMD_DISCONNECT), closes the sockets, joins the serving threads.
  // Never throws; a second call does nothing.
  void stop();
  // The device's index N, or -1 before start().
  int index() const { return index_; }
  // Releases /dev/nbdN after a dead daemon: best effort, errors ignored, never waits long.
  static void disconnect(int index);

 private:
  struct Served;  // one socket pair's server side and its thread
  // Hands the kernel its socket ends; false (nothing done) if the netlink family is missing.
  bool connect_netlink(const std::vector<int>& kernel_fds);
  void connect_ioctl(const std::vector<int>& kernel_fds);
  uint16_t server_flags() const;
  void wait_for_size(uint64_t bytes);
  void stop_serving();

  ploop::Stack& stack_;
  KernelNbdOptions opts_;
  nbd::Stats stats_;
  nbd::MemoryBudget budget_;
  std::vector<std::unique_ptr<Served>> served_;
  int index_ = -1;
  bool started_ = false;
  bool netlink_ = false;
  int device_fd_ = -1;    // ioctl path: the open /dev/nbdN
  std::thread do_it_;     // ioctl path: NBD_DO_IT blocks here until disconnect
  std::atomic<bool> do_it_done_{false};
  std::atomic<int> do_it_errno_{0};
};

}  // namespace shim
