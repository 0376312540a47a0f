#include "ploop/cluster_locks.h"

namespace ploop {

void ClusterLocks::lock_shared(uint32_t vc) {
  Stripe& s = stripe(vc);
  std::unique_lock lk(s.m);
  s.cv.wait(lk, [&] { return !s.writer; });
  ++s.readers;
}

bool ClusterLocks::try_lock_shared(uint32_t vc) {
  Stripe& s = stripe(vc);
  std::lock_guard lk(s.m);
  if (s.writer) return false;
  ++s.readers;
  return true;
}

void ClusterLocks::unlock_shared(uint32_t vc) {
  Stripe& s = stripe(vc);
  bool wake;
  {
    std::lock_guard lk(s.m);
    wake = --s.readers == 0;
  }
  if (wake) s.cv.notify_all();
}

void ClusterLocks::lock(uint32_t vc) {
  Stripe& s = stripe(vc);
  std::unique_lock lk(s.m);
  s.cv.wait(lk, [&] { return !s.writer && s.readers == 0; });
  s.writer = true;
}

void ClusterLocks::unlock(uint32_t vc) {
  Stripe& s = stripe(vc);
  {
    std::lock_guard lk(s.m);
    s.writer = false;
  }
  s.cv.notify_all();
}

}  // namespace ploop
