// Byte vectors whose storage starts on a 4 KiB boundary, so they can be read and written with
// O_DIRECT as they are (no bounce buffer). Elements are value-initialised (zero) like std::vector.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace ploop {

template <class T>
struct PageAlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{4096};
  PageAlignedAllocator() = default;
  template <class U>
  PageAlignedAllocator(const PageAlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  friend bool operator==(const PageAlignedAllocator&, const PageAlignedAllocator&) { return true; }
};

using AlignedBytes = std::vector<uint8_t, PageAlignedAllocator<uint8_t>>;

}  // namespace ploop
