#include "ploop/stack.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "ploop/error.h"

namespace ploop {
namespace {

constexpr size_t kCopyChunk = 1 << 20;

// A cluster-sized (at most 1 MiB) aligned scratch buffer per thread, for copy-up.
uint8_t* scratch() {
  struct Buf {
    Buf() {
      if (posix_memalign(&p, 4096, kCopyChunk)) throw std::bad_alloc();
    }
    ~Buf() { free(p); }
    void* p = nullptr;
  };
  thread_local Buf b;
  return static_cast<uint8_t*>(b.p);
}

bool all_zero(const uint8_t* p, size_t n) {
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

// Counts one request of `op` for `bytes` when it goes out of scope (also on error).
class Timed {
 public:
  Timed(StackStats& s, StackStats::Op op, uint64_t bytes)
      : s_(s), op_(op), bytes_(bytes), start_(std::chrono::steady_clock::now()) {}
  ~Timed() {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
    s_.count[op_].fetch_add(1, std::memory_order_relaxed);
    s_.bytes[op_].fetch_add(bytes_, std::memory_order_relaxed);
    s_.nanos[op_].fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
  }

 private:
  StackStats& s_;
  StackStats::Op op_;
  uint64_t bytes_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

Stack::Stack(std::vector<std::unique_ptr<Delta>> deltas) : deltas_(std::move(deltas)) {
  if (deltas_.empty()) throw Error(Exit::kParam, "a delta stack needs at least one delta");
  if (deltas_.size() > 254) throw Error(Exit::kParam, "a delta stack holds at most 254 deltas");
  Delta& t = *deltas_.back();
  size_ = t.size_bytes();
  cluster_ = t.cluster_bytes();
  writable_ = t.writable();
  top_level_ = static_cast<uint8_t>(deltas_.size());
  for (size_t i = 0; i + 1 < deltas_.size(); ++i) {
    Delta& d = *deltas_[i];
    if (d.writable()) throw Error(Exit::kParam, d.path() + ": only the top delta may be writable");
    if (d.cluster_bytes() != cluster_) {
      throw Error(Exit::kFormat, d.path() + ": cluster size " + std::to_string(d.cluster_bytes()) +
                                     " differs from the top delta's " + std::to_string(cluster_));
    }
    if (d.size_bytes() > size_) {
      throw Error(Exit::kFormat, d.path() + ": disk size " + std::to_string(d.size_bytes()) +
                                     " is larger than the top delta's " + std::to_string(size_));
    }
  }
  uint32_t n = t.bat_entries();
  phys_.assign(n, 0);
  level_.assign(n, 0);
  for (size_t i = 0; i < deltas_.size(); ++i) {
    std::vector<uint32_t> map = deltas_[i]->clusters();
    for (uint32_t vc = 0; vc < map.size(); ++vc) {
      if (map[vc]) {
        phys_[vc] = map[vc];
        level_[vc] = static_cast<uint8_t>(i + 1);
      }
    }
  }
}

Stack::~Stack() = default;

void Stack::check_range(uint64_t offset, uint64_t len, const char* op) const {
  if (offset > size_ || len > size_ - offset) {
    throw Error(Exit::kParam, std::string(op) + " of " + std::to_string(len) + " bytes at offset " +
                                  std::to_string(offset) + " is beyond the disk size " + std::to_string(size_));
  }
  if (len && *op != 'r' && !writable_) throw Error(Exit::kParam, std::string(op) + " on a read-only disk");
}

void Stack::read(void* buf, uint64_t offset, size_t len) {
  check_range(offset, len, "read");
  Timed t(stats_, StackStats::kRead, len);
  auto* p = static_cast<uint8_t*>(buf);
  while (len) {
    uint32_t vc = static_cast<uint32_t>(offset / cluster_);
    uint32_t in = static_cast<uint32_t>(offset % cluster_);
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(len, cluster_ - in));
    locks_.lock_shared(vc);
    try {
      if (uint8_t lv = level_[vc]; lv && lv <= verifiers_.size() && verifiers_[lv - 1]) {
        read_verified(lv, vc, in, p, n);
      } else if (lv) {
        deltas_[lv - 1]->file().read(p, n, phys_[vc] * cluster_ + in);
      } else {
        std::memset(p, 0, n);
      }
    } catch (...) {
      locks_.unlock_shared(vc);
      throw;
    }
    locks_.unlock_shared(vc);
    p += n;
    offset += n;
    len -= n;
  }
}

void Stack::write(const void* buf, uint64_t offset, size_t len, bool fua) {
  check_range(offset, len, "write");
  Timed t(stats_, StackStats::kWrite, len);
  auto* p = static_cast<const uint8_t*>(buf);
  while (len) {
    uint32_t vc = static_cast<uint32_t>(offset / cluster_);
    uint32_t in = static_cast<uint32_t>(offset % cluster_);
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(len, cluster_ - in));
    write_in_cluster(vc, in, p, n);
    p += n;
    offset += n;
    len -= n;
  }
  if (fua) flush();
}

void Stack::write_in_cluster(uint32_t vc, uint32_t in, const uint8_t* src, uint32_t n) {
  locks_.lock_shared(vc);
  if (level_[vc] == top_level_) {  // fast path: the top owns it, write in place
    try {
      top().file().write(src, n, phys_[vc] * cluster_ + in);
    } catch (...) {
      locks_.unlock_shared(vc);
      throw;
    }
    locks_.unlock_shared(vc);
    return;
  }
  locks_.unlock_shared(vc);
  locks_.lock(vc);
  try {
    if (level_[vc] == top_level_) {  // someone else allocated it meanwhile
      top().file().write(src, n, phys_[vc] * cluster_ + in);
    } else {
      copy_up(vc, in, src, n);
    }
  } catch (...) {
    locks_.unlock(vc);
    throw;
  }
  locks_.unlock(vc);
}

// Caller holds the exclusive lock of vc and the top does not own it. Writes a whole new top
// cluster: the lower owner's data (or zeros) with [in, in+n) replaced by src, then maps it.
// src == nullptr means zeros.
void Stack::copy_up(uint32_t vc, uint32_t in, const uint8_t* src, uint32_t n) {
  uint8_t lv = level_[vc];
  if (lv == 0 && (src == nullptr || all_zero(src, n))) return;  // already reads as zeros
  Delta& t = top();
  uint32_t c = t.allocate();
  try {
    uint8_t* buf = scratch();
    for (uint64_t pos = 0; pos < cluster_; pos += kCopyChunk) {
      size_t len = static_cast<size_t>(std::min<uint64_t>(kCopyChunk, cluster_ - pos));
      if (lv) {
        deltas_[lv - 1]->file().read(buf, len, phys_[vc] * cluster_ + pos);
      } else {
        std::memset(buf, 0, len);
      }
      uint64_t lo = std::max<uint64_t>(pos, in), hi = std::min<uint64_t>(pos + len, uint64_t{in} + n);
      if (lo < hi) {
        if (src) {
          std::memcpy(buf + (lo - pos), src + (lo - in), hi - lo);
        } else {
          std::memset(buf + (lo - pos), 0, hi - lo);
        }
      }
      t.file().write(buf, len, c * cluster_ + pos);
    }
  } catch (...) {
    t.abandon(c);
    throw;
  }
  t.map(vc, c);
  phys_[vc] = c;
  level_[vc] = top_level_;
}

void Stack::verify_reads(std::vector<std::unique_ptr<SealVerifier>> verifiers) {
  verifiers_ = std::move(verifiers);
}

// Reads the whole 4 KiB blocks around [in, in+n) of a sealed level's cluster and checks each.
void Stack::read_verified(uint8_t lv, uint32_t vc, uint32_t in, uint8_t* dst, uint32_t n) {
  const uint64_t first = in / kSealBlock, last = (uint64_t{in} + n - 1) / kSealBlock;
  std::vector<uint8_t> buf((last - first + 1) * kSealBlock);
  deltas_[lv - 1]->file().read(buf.data(), buf.size(), phys_[vc] * cluster_ + first * kSealBlock);
  for (uint64_t b = first; b <= last; ++b) {
    if (!verifiers_[lv - 1]->verify(vc, b, &buf[(b - first) * kSealBlock])) {
      throw Error(Exit::kFormat, deltas_[lv - 1]->path() + ": cluster " + std::to_string(vc) + " (file offset " +
                                     std::to_string(phys_[vc] * cluster_ + b * kSealBlock) +
                                     "): 4 KiB block does not match its seal");
    }
  }
  std::memcpy(dst, &buf[in - first * kSealBlock], n);
}

bool Stack::lower_maps(uint32_t vc) const {
  for (size_t i = 0; i + 1 < deltas_.size(); ++i) {
    if (deltas_[i]->cluster_of(vc)) return true;
  }
  return false;
}

void Stack::flush() {
  Timed t(stats_, StackStats::kFlush, 0);
  if (writable_) top().flush();
}

void Stack::discard(uint64_t offset, uint64_t len) {
  check_range(offset, len, "discard");
  Timed t(stats_, StackStats::kDiscard, len);
  // Only whole clusters that no lower delta maps can be released; the rest of a discard is a hint
  // that is allowed to change nothing.
  uint64_t first = (offset + cluster_ - 1) / cluster_, end = (offset + len) / cluster_;
  if (offset + len == size_) end = (size_ + cluster_ - 1) / cluster_;
  for (uint64_t vc = first; vc < end; ++vc) {
    auto v = static_cast<uint32_t>(vc);
    locks_.lock(v);
    try {
      if (level_[v] == top_level_ && !lower_maps(v)) {
        top().unmap(v);
        level_[v] = 0;
        phys_[v] = 0;
      }
    } catch (...) {
      locks_.unlock(v);
      throw;
    }
    locks_.unlock(v);
  }
}

void Stack::write_zeroes(uint64_t offset, uint64_t len, bool fua, bool may_unmap) {
  check_range(offset, len, "write_zeroes");
  Timed t(stats_, StackStats::kZero, len);
  while (len) {
    uint32_t vc = static_cast<uint32_t>(offset / cluster_);
    uint32_t in = static_cast<uint32_t>(offset % cluster_);
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(len, cluster_ - in));
    bool whole = in == 0 && (n == cluster_ || offset + n == size_);
    locks_.lock(vc);
    try {
      if (whole && may_unmap && level_[vc] == top_level_ && !lower_maps(vc)) {
        top().unmap(vc);  // released: reads as zeros, no lower data shows through
        level_[vc] = 0;
        phys_[vc] = 0;
      } else if (level_[vc] == top_level_) {
        uint8_t* z = scratch();
        std::memset(z, 0, std::min<uint64_t>(kCopyChunk, n));
        for (uint32_t done = 0; done < n;) {
          uint32_t k = static_cast<uint32_t>(std::min<uint64_t>(kCopyChunk, n - done));
          top().file().write(z, k, phys_[vc] * cluster_ + in + done);
          done += k;
        }
      } else if (level_[vc] != 0) {
        copy_up(vc, in, nullptr, n);  // mask the lower delta with zeros
      }
    } catch (...) {
      locks_.unlock(vc);
      throw;
    }
    locks_.unlock(vc);
    offset += n;
    len -= n;
  }
  if (fua) flush();
}

bool Stack::zeroes_are_fast(uint64_t offset, uint64_t len) {
  check_range(offset, len, "write_zeroes");
  for (uint64_t pos = offset; pos < offset + len;) {
    uint32_t vc = static_cast<uint32_t>(pos / cluster_);
    uint64_t start = uint64_t{vc} * cluster_, end = std::min(start + cluster_, size_);
    bool whole = pos == start && offset + len >= end;
    locks_.lock_shared(vc);
    uint8_t lv = level_[vc];
    locks_.unlock_shared(vc);
    if (lv != 0 && !(whole && lv == top_level_ && !lower_maps(vc))) return false;
    pos = end;
  }
  return true;
}

Stack::Extent Stack::status(uint64_t offset, uint64_t max_len) {
  check_range(offset, max_len ? 1 : 0, "read");
  if (offset >= size_) return {0, false, -1};
  max_len = std::min(max_len, size_ - offset);
  uint32_t vc = static_cast<uint32_t>(offset / cluster_);
  locks_.lock_shared(vc);
  uint8_t lv = level_[vc];
  locks_.unlock_shared(vc);
  Extent e{0, lv != 0, lv ? lv - 1 : -1};
  uint64_t pos = offset;
  while (pos < offset + max_len) {
    uint32_t c = static_cast<uint32_t>(pos / cluster_);
    locks_.lock_shared(c);
    bool alloc = level_[c] != 0;
    locks_.unlock_shared(c);
    if (alloc != e.allocated) break;
    pos = std::min<uint64_t>((uint64_t{c} + 1) * cluster_, offset + max_len);
  }
  e.length = pos - offset;
  return e;
}

void Stack::close() {
  if (closed_) return;
  if (writable_) top().close();
  closed_ = true;
}

bool Stack::map(uint64_t offset, uint32_t len, bool for_write, Mapping& m) {
  check_range(offset, len, for_write ? "write" : "read");
  if (!verifiers_.empty() && !for_write) return false;  // verified reads take the synchronous path
  m.pieces.clear();
  m.pinned.clear();
  uint32_t done = 0;
  while (done < len) {
    uint64_t pos = offset + done;
    uint32_t vc = static_cast<uint32_t>(pos / cluster_);
    uint32_t in = static_cast<uint32_t>(pos % cluster_);
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(len - done, cluster_ - in));
    if (!locks_.try_lock_shared(vc)) {
      release(m);
      return false;
    }
    m.pinned.push_back(vc);
    uint8_t lv = level_[vc];
    if (for_write && lv != top_level_) {
      release(m);
      return false;
    }
    if (lv) {
      m.pieces.push_back({&deltas_[lv - 1]->file(), phys_[vc] * cluster_ + in, n, done});
    } else {
      m.pieces.push_back({nullptr, 0, n, done});
    }
    done += n;
  }
  return true;
}

bool Stack::map_read(uint64_t offset, uint32_t len, Mapping& m) { return map(offset, len, false, m); }
bool Stack::map_write(uint64_t offset, uint32_t len, Mapping& m) { return map(offset, len, true, m); }

void Stack::release(Mapping& m) {
  for (uint32_t vc : m.pinned) locks_.unlock_shared(vc);
  m.pinned.clear();
  m.pieces.clear();
}

}  // namespace ploop
