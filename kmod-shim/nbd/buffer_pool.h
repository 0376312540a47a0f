// Request buffers of one NBD connection, recycled. A fresh page-aligned buffer costs page faults
// (and, for large ones, an mmap and munmap) on every request, which at 1 MiB per request is a
// fifth of the server's CPU; a connection reuses the buffers of its finished requests instead.
// Buffers come in power-of-two sizes from 4 KiB; at most `keep_bytes` of idle buffers are kept,
// the rest are freed. Single-threaded: one pool per connection thread.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <vector>

#include "ploop/aligned_bytes.h"

namespace nbd {

class BufferPool {
 public:
  explicit BufferPool(uint64_t keep_bytes) : keep_(keep_bytes) {}

  // A buffer of at least `n` bytes (n > 0), contents undefined.
  ploop::PageBuffer get(size_t n) {
    const unsigned c = size_class(n);
    if (c < kClasses && !idle_[c].empty()) {
      ploop::PageBuffer b = std::move(idle_[c].back());
      idle_[c].pop_back();
      idle_bytes_ -= b.size();
      return b;
    }
    return ploop::PageBuffer(c < kClasses ? kMin << c : n);
  }

  // Takes back a buffer from get() (or an empty one, which is ignored).
  void put(ploop::PageBuffer b) {
    if (b.size() == 0 || idle_bytes_ + b.size() > keep_) return;
    const unsigned c = size_class(b.size());
    if (c >= kClasses || (kMin << c) != b.size()) return;
    idle_bytes_ += b.size();
    idle_[c].push_back(std::move(b));
  }

 private:
  static constexpr size_t kMin = 4096;
  static constexpr unsigned kClasses = 14;  // 4 KiB .. 32 MiB
  static unsigned size_class(size_t n) {
    size_t pages = (n + kMin - 1) / kMin;
    return static_cast<unsigned>(std::bit_width(pages - 1));  // ceil(log2(pages))
  }
  uint64_t keep_;
  uint64_t idle_bytes_ = 0;
  std::array<std::vector<ploop::PageBuffer>, kClasses> idle_;
};

}  // namespace nbd
