#include "kmod-shim/daemon/front_end.h"

#include <unistd.h>

#include "kmod-shim/fuse/fuse_export.h"
#include "kmod-shim/nbd/kernel_nbd.h"
#include "kmod-shim/ublk/ublk_device.h"
#include "ploop/error.h"
#include "ploop/stack.h"

namespace shim {
namespace {

class UblkFront : public FrontEnd {
 public:
  UblkFront(ploop::Stack& s, UblkOptions o) : dev_(s, o) {}
  std::string start() override { return dev_.start(); }
  void stop() override { dev_.stop(); }
  int dev_id() const override { return dev_.id(); }

 private:
  UblkDevice dev_;
};

class NbdFront : public FrontEnd {
 public:
  NbdFront(ploop::Stack& s, KernelNbdOptions o) : dev_(s, o) {}
  std::string start() override { return dev_.start(); }
  void stop() override { dev_.stop(); }
  int dev_id() const override { return dev_.index(); }

 private:
  KernelNbd dev_;
};

class FuseFront : public FrontEnd {
 public:
  FuseFront(ploop::Stack& s, const std::string& dir, bool ro) : fuse_(s, dir, ro) {}
  std::string start() override {
    fuse_.start();
    return fuse_.file();
  }
  void stop() override { fuse_.stop(); }

 private:
  FuseExport fuse_;
};

bool fuse_available() { return ::access("/dev/fuse", R_OK | W_OK) == 0; }

}  // namespace

std::string choose_front(const std::string& asked) {
  if (asked.empty()) {
    if (UblkDevice::available()) return "ublk";
    if (KernelNbd::available()) return "nbd";
    if (fuse_available()) return "fuse";
    throw ploop::Error(ploop::Exit::kDevice,
                       "no front end is available: neither /dev/ublk-control (modprobe ublk_drv), nor the nbd module "
                       "(modprobe nbd), nor /dev/fuse");
  }
  if (asked == "ublk") {
    if (!UblkDevice::available()) {
      throw ploop::Error(ploop::Exit::kDevice, "--device ublk: /dev/ublk-control is missing or cannot be opened (modprobe ublk_drv; needs root)");
    }
  } else if (asked == "nbd") {
    if (!KernelNbd::available()) throw ploop::Error(ploop::Exit::kDevice, "--device nbd: the nbd module is not loaded (modprobe nbd)");
  } else if (asked == "fuse") {
    if (!fuse_available()) throw ploop::Error(ploop::Exit::kDevice, "--device fuse: /dev/fuse is not available");
  } else {
    throw ploop::Error(ploop::Exit::kParam, "--device must be ublk, nbd or fuse, not '" + asked + "'");
  }
  return asked;
}

std::unique_ptr<FrontEnd> FrontEnd::make(const std::string& front, ploop::Stack& stack, bool read_only,
                                         const std::string& fuse_dir, int recover_id, bool recoverable) {
  if (front == "ublk") {
    UblkOptions o;
    o.read_only = read_only;
    o.recover_id = recover_id;
    o.recovery = recoverable;
    return std::make_unique<UblkFront>(stack, o);
  }
  if (front == "nbd") {
    KernelNbdOptions o;
    o.read_only = read_only;
    return std::make_unique<NbdFront>(stack, o);
  }
  if (front == "fuse") return std::make_unique<FuseFront>(stack, fuse_dir, read_only);
  throw ploop::Error(ploop::Exit::kParam, "unknown front end '" + front + "'");
}

}  // namespace shim
