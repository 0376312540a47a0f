// A driver for shim::KernelNbd in the test VM, for what `ploop` does not reach yet (online resize
// through NBD_CMD_RECONFIGURE, the ioctl fallback): `kernel_nbd_probe serve DIR SIZE_MIB` creates
// a disk in DIR, attaches it to a /dev/nbdN, writes N to DIR/index, then follows commands appended
// to DIR/cmd: "resize BYTES", "stop". With PROBE_NO_NETLINK set, netlink sockets are refused, so
// KernelNbd takes its ioctl path. Prints one line per step; exits non-zero on any error.
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "kmod-shim/nbd/kernel_nbd.h"
#include "ploop/disk.h"
#include "ploop/file.h"

// Interposes on libc's socket(): the probe's own way to hide the netlink family.
extern "C" int socket(int domain, int type, int protocol) {
  if (domain == AF_NETLINK && std::getenv("PROBE_NO_NETLINK")) {
    errno = EAFNOSUPPORT;
    return -1;
  }
  return static_cast<int>(::syscall(SYS_socket, domain, type, protocol));
}

int main(int argc, char** argv) {
  if (argc != 4 || std::string(argv[1]) != "serve") {
    std::fprintf(stderr, "usage: kernel_nbd_probe serve DIR SIZE_MIB\n");
    return 2;
  }
  try {
    const std::string dir = argv[2];
    const uint64_t size = std::strtoull(argv[3], nullptr, 10) << 20;
    auto storage = ploop::make_posix_storage(false);
    ploop::create_disk(*storage, dir + "/root.hds", {size, 2048, 2});
    auto stack = ploop::open_disk(*storage, dir + "/DiskDescriptor.xml", ploop::OpenMode::kReadWrite);
    shim::KernelNbd nbd(*stack, {});
    std::string dev = nbd.start();
    std::printf("started %s\n", dev.c_str());
    std::fflush(stdout);
    std::ofstream(dir + "/index") << nbd.index() << "\n";
    size_t done = 0;  // commands already carried out
    for (;;) {
      std::ifstream in(dir + "/cmd");
      std::string line;
      for (size_t i = 0; std::getline(in, line); ++i) {
        if (i < done) continue;
        ++done;
        std::istringstream words(line);
        std::string cmd;
        uint64_t bytes = 0;
        words >> cmd >> bytes;
        if (cmd == "resize") {
          nbd.resize(bytes);
          std::printf("resized to %llu\n", static_cast<unsigned long long>(bytes));
        } else if (cmd == "stop") {
          nbd.stop();
          stack->close();
          std::printf("stopped\n");
          return 0;
        } else {
          std::printf("unknown command '%s'\n", line.c_str());
        }
        std::fflush(stdout);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_nbd_probe: %s\n", e.what());
    return 1;
  }
}
