// Byte vectors and buffers whose storage starts on a 4 KiB boundary, so they can be read and written with
// O_DIRECT as they are (no bounce buffer). Elements are value-initialised (zero) like std::vector.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
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

namespace ploop {

// A page-aligned byte buffer whose contents start undefined (no zero-fill): for I/O buffers that
// are filled right away, such as a request's data. Movable, not copyable.
class PageBuffer {
 public:
  PageBuffer() = default;
  explicit PageBuffer(size_t n) : p_(n ? static_cast<uint8_t*>(::operator new(n, kAlign)) : nullptr), n_(n) {}
  PageBuffer(PageBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  PageBuffer& operator=(PageBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_, n_ = o.n_;
      o.p_ = nullptr, o.n_ = 0;
    }
    return *this;
  }
  ~PageBuffer() { release(); }
  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  static constexpr std::align_val_t kAlign{4096};
  void release() {
    if (p_) ::operator delete(p_, kAlign);
  }
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace ploop

namespace ploop {

// A page-aligned byte buffer that reads as zeros and whose pages are not touched until used:
// anonymous memory the kernel supplies (zeroed) on first access. For large buffers most of which
// may stay zero, such as the BAT of a big, sparse disk: creating one costs no zero-fill and no
// page faults. Movable, not copyable.
class ZeroPages {
 public:
  ZeroPages() = default;
  explicit ZeroPages(size_t n) : n_(n) {
    if (n == 0) return;
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    p_ = static_cast<uint8_t*>(p);
  }
  ZeroPages(ZeroPages&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  ZeroPages& operator=(ZeroPages&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_, n_ = o.n_;
      o.p_ = nullptr, o.n_ = 0;
    }
    return *this;
  }
  ~ZeroPages() { release(); }
  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }
  uint8_t& operator[](size_t i) { return p_[i]; }
  const uint8_t& operator[](size_t i) const { return p_[i]; }
  // Keeps the first min(n, size()) bytes; bytes past them read as zeros.
  void resize(size_t n) {
    ZeroPages b(n);
    if (n_ && n) std::memcpy(b.p_, p_, n < n_ ? n : n_);
    *this = std::move(b);
  }

 private:
  void release() {
    if (p_) ::munmap(p_, n_);
  }
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace ploop
