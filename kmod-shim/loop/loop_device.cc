#include "kmod-shim/loop/loop_device.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ploop/error.h"

namespace shim {

LoopDevice attach_loop(const std::string& file, bool read_only, bool try_direct_io) {
  int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "no loop devices (is the loop module loaded?)", "/dev/loop-control");
  int back = ::open(file.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (back < 0) {
    int err = errno;
    ::close(ctl);
    ploop::throw_errno(ploop::Exit::kSys, err, "cannot open", file);
  }
  for (int attempt = 0; attempt < 16; ++attempt) {
    int n = ::ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) break;
    std::string dev = "/dev/loop" + std::to_string(n);
    int fd = ::open(dev.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0) continue;
    for (bool dio : {try_direct_io, false}) {
      loop_config cfg{};
      cfg.fd = static_cast<uint32_t>(back);
      cfg.block_size = 512;
      cfg.info.lo_flags = (read_only ? LO_FLAGS_READ_ONLY : 0) | (dio ? LO_FLAGS_DIRECT_IO : 0);
      std::strncpy(reinterpret_cast<char*>(cfg.info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);
      if (::ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
        // The kernel may have turned direct I/O down silently: ask it.
        loop_info64 info{};
        bool got_dio = ::ioctl(fd, LOOP_GET_STATUS64, &info) == 0 && (info.lo_flags & LO_FLAGS_DIRECT_IO);
        ::close(fd);
        ::close(back);
        ::close(ctl);
        return {dev, got_dio};
      }
      if (errno == EBUSY) break;  // taken by someone else meanwhile: next free device
      if (!dio) break;
    }
    ::close(fd);
  }
  int err = errno;
  ::close(back);
  ::close(ctl);
  ploop::throw_errno(ploop::Exit::kSys, err, "cannot attach a loop device to", file);
}

void detach_loop(const std::string& device) {
  int fd = ::open(device.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "cannot open", device);
  for (int i = 0; i < 50; ++i) {
    if (::ioctl(fd, LOOP_CLR_FD, 0) == 0 || errno == ENXIO) break;
    if (errno != EBUSY) {
      int err = errno;
      ::close(fd);
      ploop::throw_errno(ploop::Exit::kSys, err, "cannot detach", device);
    }
    ::usleep(100000);  // still in use for a moment (udev probing): retry
  }
  ::close(fd);
}

}  // namespace shim
