// The delta stack: the virtual disk that a chain of deltas reads as. Level 0 is the base; the
// last delta is the top and, if it was opened read-write, takes every write.
//
// Promises:
// - A read returns the data of the highest delta that maps the cluster, else zeros. Lookup cost
//   does not depend on depth: a merged map of (owning level, file cluster) per virtual cluster is
//   built at open and kept current, as dm-ploop does.
// - A write to a cluster the top does not own copies the whole cluster up (from the lower owner,
//   or zeros) into a newly allocated top cluster, then maps it. Concurrent writers to the same
//   cluster are serialised by a per-cluster lock; other I/O runs in parallel.
// - discard() releases whole clusters that only the top maps; write_zeroes() makes the range
//   read as zeros, masking lower deltas with zeroed top clusters where it must.
// - flush() makes every write completed before it durable; a FUA write is durable on return.
// - close() closes the top cleanly (see Delta::close). A Stack destroyed without close() is left
//   as after a crash.
// All methods may be called from several threads at once.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "ploop/cluster_locks.h"
#include "ploop/delta.h"
#include "ploop/seal.h"

namespace ploop {

// Per-operation counters of a stack, for the daemon's status: how many requests, how many bytes,
// and how long they took in total (nanoseconds), by kind.
struct StackStats {
  enum Op { kRead, kWrite, kFlush, kDiscard, kZero, kOps };
  static constexpr const char* kNames[kOps] = {"read", "write", "flush", "discard", "write_zeroes"};
  std::atomic<uint64_t> count[kOps] = {};
  std::atomic<uint64_t> bytes[kOps] = {};
  std::atomic<uint64_t> nanos[kOps] = {};
};

class Stack {
 public:
  // `deltas` base first, top last. Throws Error(kFormat) if cluster sizes differ or a lower delta
  // is larger than the top, Error(kParam) if a delta below the top is writable.
  explicit Stack(std::vector<std::unique_ptr<Delta>> deltas);
  ~Stack();
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;

  uint64_t size() const { return size_; }
  uint64_t cluster_bytes() const { return cluster_; }
  bool writable() const { return writable_; }
  size_t depth() const { return deltas_.size(); }
  Delta& delta(size_t level) { return *deltas_[level]; }
  Delta& top() { return *deltas_.back(); }

  void read(void* buf, uint64_t offset, size_t len);
  void write(const void* buf, uint64_t offset, size_t len, bool fua = false);
  void flush();
  void discard(uint64_t offset, uint64_t len);
  // With `may_unmap` false (NBD's NO_HOLE), clusters the top holds stay allocated and are zeroed.
  void write_zeroes(uint64_t offset, uint64_t len, bool fua = false, bool may_unmap = true);
  // Whether write_zeroes() of this range would only release or skip clusters (no data written):
  // every cluster in it is unmapped, or wholly covered and mapped by the top alone.
  bool zeroes_are_fast(uint64_t offset, uint64_t len);

  // Allocation status from `offset` for at most `max_len` bytes: the length of the run of clusters
  // that are all mapped by some delta (allocated) or all unmapped (reads as zeros).
  struct Extent {
    uint64_t length;
    bool allocated;
    int level;  // owning level of the first cluster, -1 if unallocated
  };
  Extent status(uint64_t offset, uint64_t max_len);

  void close();
  const StackStats& stats() const { return stats_; }
  // From now on every read from a level that has a verifier is checked against its seal, 4 KiB
  // block by block; a mismatch fails the read with Error(kFormat) naming the cluster.
  // `verifiers[level]` may be null (that level is not verified).
  void verify_reads(std::vector<std::unique_ptr<SealVerifier>> verifiers);
  // Keeps `f` open as long as the stack lives: the image lock of a chain's base (see File::lock_image).
  void hold_lock(std::unique_ptr<File> f) { locks_held_.push_back(std::move(f)); }

  // --- Fast path for asynchronous engines ---
  // A request split into pieces of at most one cluster each, every piece's cluster pinned (shared)
  // until release(). file == nullptr means "zeros" (reads only).
  struct Piece {
    File* file;
    uint64_t file_offset;
    uint32_t length;
    uint32_t buf_offset;
  };
  struct Mapping {
    std::vector<Piece> pieces;
    std::vector<uint32_t> pinned;
  };
  // Maps a read, or a write whose every cluster the top already owns. Returns false (nothing
  // pinned) when the request needs the slow path: a write that allocates or copies, or a cluster
  // that is being changed right now. Throws Error(kParam) for a range outside the disk.
  bool map_read(uint64_t offset, uint32_t len, Mapping& out);
  bool map_write(uint64_t offset, uint32_t len, Mapping& out);
  void release(Mapping& m);

 private:
  void check_range(uint64_t offset, uint64_t len, const char* op) const;
  bool map(uint64_t offset, uint32_t len, bool for_write, Mapping& out);
  void write_in_cluster(uint32_t vc, uint32_t in_off, const uint8_t* src, uint32_t n);
  void copy_up(uint32_t vc, uint32_t in_off, const uint8_t* src, uint32_t n);
  void zero_cluster(uint32_t vc, bool whole);
  bool lower_maps(uint32_t vc) const;
  void read_verified(uint8_t lv, uint32_t vc, uint32_t in, uint8_t* dst, uint32_t n);

  std::vector<std::unique_ptr<Delta>> deltas_;
  uint64_t size_;
  uint64_t cluster_;
  bool writable_;
  bool closed_ = false;
  uint8_t top_level_;              // index of the top delta + 1
  std::vector<uint32_t> phys_;     // merged map: file cluster in the owning delta
  std::vector<uint8_t> level_;     // merged map: owning delta index + 1, 0 = unmapped
  ClusterLocks locks_;
  StackStats stats_;
  std::vector<std::unique_ptr<File>> locks_held_;
  std::vector<std::unique_ptr<SealVerifier>> verifiers_;
};

}  // namespace ploop
