// disk_write: writes the data of a raw file into a disk through the library (open_disk +
// Stack::write), so that the data lands in the disk's top delta. A setup helper for the snapshot
// and merge benchmarks (bench/merge-vs-cp.sh, bench/snapshot-time.sh); it times nothing.
//
//   disk_write [--direct] [--offset BYTES] DISK RAW
//
// DISK is a DiskDescriptor.xml or an image. Only the data regions of RAW are read (holes, found
// with SEEK_DATA/SEEK_HOLE, are skipped), in pieces of at most 1 MiB, and written at the same
// offsets in the disk plus --offset (default 0; it must be a multiple of 4096). With --direct the
// disk's files are opened O_DIRECT (make_posix_storage(true)), so the written data does not stay
// in the page cache. The disk is closed cleanly at the end. Prints one line:
//
//   disk_write: wrote 1073741824 bytes in 1024 pieces
//
// Exit status: 0 on success, 2 on bad usage or any error.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "ploop/disk.h"
#include "ploop/file.h"
#include "ploop/stack.h"

namespace {

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr, "disk_write: %s\nusage: disk_write [--direct] [--offset BYTES] DISK RAW\n", msg.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  bool direct = false;
  uint64_t base = 0;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--direct") {
      direct = true;
    } else if (a == "--offset") {
      if (i + 1 >= argc) usage("missing value for --offset");
      char* end = nullptr;
      base = std::strtoull(argv[++i], &end, 0);
      if (*end || base % 4096) usage("--offset must be a multiple of 4096");
    } else if (a.starts_with("--")) {
      usage("unknown option " + a);
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 2) usage("expected DISK and RAW");

  int fd = ::open(pos[1].c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) usage(pos[1] + ": " + std::strerror(errno));
  const off_t raw_size = ::lseek(fd, 0, SEEK_END);

  constexpr size_t kChunk = 1 << 20;
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, kChunk)) usage("out of memory");
  auto* buf = static_cast<uint8_t*>(mem);
  uint64_t bytes = 0, pieces = 0;
  try {
    auto storage = ploop::make_posix_storage(direct);
    auto stack = ploop::open_disk(*storage, pos[0], ploop::OpenMode::kReadWrite);
    if (base + static_cast<uint64_t>(raw_size) > stack->size()) {
      stack->close();
      usage(pos[1] + " does not fit in the disk at offset " + std::to_string(base));
    }
    off_t at = 0;
    while (at < raw_size) {
      off_t data = ::lseek(fd, at, SEEK_DATA);
      if (data < 0) break;  // ENXIO: only a hole is left
      off_t hole = ::lseek(fd, data, SEEK_HOLE);
      if (hole < 0) hole = raw_size;
      for (off_t o = data; o < hole;) {
        // Pieces aligned to 1 MiB of the raw file, so that a cluster-aligned extent is written
        // one whole cluster at a time.
        size_t n = static_cast<size_t>(std::min<off_t>(hole - o, static_cast<off_t>(kChunk - static_cast<uint64_t>(o) % kChunk)));
        ssize_t got = ::pread(fd, buf, n, o);
        if (got != static_cast<ssize_t>(n)) usage(pos[1] + ": short read");
        size_t len = (n + 511) / 512 * 512;  // the disk takes whole sectors; pad with zeros
        std::memset(buf + n, 0, len - n);
        stack->write(buf, base + static_cast<uint64_t>(o), len);
        bytes += n;
        ++pieces;
        o += static_cast<off_t>(n);
      }
      at = hole;
    }
    stack->close();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "disk_write: %s\n", e.what());
    return 2;
  }
  std::free(mem);
  ::close(fd);
  std::printf("disk_write: wrote %llu bytes in %llu pieces\n", static_cast<unsigned long long>(bytes),
              static_cast<unsigned long long>(pieces));
  return 0;
}
