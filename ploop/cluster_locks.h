// Per-virtual-cluster reader/writer locks for the delta stack, striped over a fixed table.
// Shared holders are I/Os that only need the cluster's current mapping to stay put (reads,
// in-place writes); the exclusive holder is the one changing the mapping (allocation, copy-on-write,
// discard). Unlike std::shared_mutex, a shared hold may be released by another thread, so an
// asynchronous engine can pin a cluster at submission and unpin it at completion.
// Readers are never blocked by a waiting writer (no writer preference), so a thread holding
// shared pins on several clusters cannot deadlock against writers.
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace ploop {

class ClusterLocks {
 public:
  void lock_shared(uint32_t vc);
  bool try_lock_shared(uint32_t vc);
  void unlock_shared(uint32_t vc);
  void lock(uint32_t vc);
  void unlock(uint32_t vc);

 private:
  struct Stripe {
    std::mutex m;
    std::condition_variable cv;
    uint32_t readers = 0;
    bool writer = false;
  };
  Stripe& stripe(uint32_t vc) { return stripes_[vc % stripes_.size()]; }
  std::array<Stripe, 1024> stripes_;
};

}  // namespace ploop
