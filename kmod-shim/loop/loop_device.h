// Loop devices over a file (the FUSE-exported disk): attach with LOOP_CONFIGURE (direct I/O when
// the file supports it), detach with LOOP_CLR_FD. Used where the kernel has neither ublk nor nbd.
#pragma once

#include <string>

namespace shim {

struct LoopDevice {
  std::string path;      // /dev/loopN
  bool direct_io = false;
};

// Throws ploop::Error(kSys) with the reason if no loop device can be attached.
LoopDevice attach_loop(const std::string& file, bool read_only, bool try_direct_io);
void detach_loop(const std::string& device);

}  // namespace shim
