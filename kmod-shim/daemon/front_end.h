// Front ends behind one face: how a daemon (or `ploop init -t ext4`, in-process) turns an open
// stack into something the kernel can mount. Three kinds, in order of preference:
// - "ublk": /dev/ublkbN served through ublk_drv (kmod-shim/ublk/), when /dev/ublk-control opens;
// - "nbd":  a kernel /dev/nbdN served over socket pairs (kmod-shim/nbd/kernel_nbd.h), when the
//           nbd module is loaded (/sys/module/nbd);
// - "fuse": the disk as a file in a private FUSE mount (a loop device goes on top, by the caller).
// choose_front() picks the first one available, or checks the one asked for.
#pragma once

#include <memory>
#include <string>

namespace ploop {
class Stack;
}

namespace shim {

// "" picks ublk, then nbd, then fuse; "ublk", "nbd" or "fuse" is checked and returned. Throws
// ploop::Error(kParam) for another name, ploop::Error(kDevice) if the one asked for is unavailable.
std::string choose_front(const std::string& asked);

class FrontEnd {
 public:
  virtual ~FrontEnd() = default;
  // Serves the stack; returns the block device (ublk, nbd) or the exported file (fuse).
  virtual std::string start() = 0;
  virtual void stop() = 0;  // idempotent; removes the device it created
  virtual int dev_id() const { return -1; }  // ublk id or nbd index

  // `fuse_dir`: an empty directory for the FUSE mount (fuse only). `recover_id` >= 0: ublk only,
  // reattach to the device a dead daemon left. `recoverable`: ublk asks for USER_RECOVERY; off by
  // default, and the daemon leaves it off (why: kmod-shim/ublk/ublk_device.h).
  static std::unique_ptr<FrontEnd> make(const std::string& front, ploop::Stack& stack, bool read_only,
                                        const std::string& fuse_dir, int recover_id = -1, bool recoverable = false);
};

}  // namespace shim
