// A Storage for tests that passes every call through to another Storage and first tells a
// callback what is about to happen to which file ("lock", "read", "write", "sync", "size",
// "truncate", "punch", "preallocate"), so a test can check the order of operations or look at
// the file system at that moment.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "ploop/file.h"

namespace testutil {

class SpyStorage final : public ploop::Storage {
 public:
  using Hook = std::function<void(const std::string& event, const std::string& path)>;
  SpyStorage(ploop::Storage& inner, Hook hook) : inner_(inner), hook_(std::move(hook)) {}

  std::unique_ptr<ploop::File> open(const std::string& p, ploop::OpenMode m) override {
    return std::make_unique<Spy>(inner_.open(p, m), hook_);
  }
  std::unique_ptr<ploop::File> create(const std::string& p) override {
    return std::make_unique<Spy>(inner_.create(p), hook_);
  }
  bool exists(const std::string& p) override { return inner_.exists(p); }
  void remove(const std::string& p) override { inner_.remove(p); }
  void rename(const std::string& a, const std::string& b) override { inner_.rename(a, b); }
  void sync_dir(const std::string& d) override { inner_.sync_dir(d); }

 private:
  class Spy final : public ploop::File {
   public:
    Spy(std::unique_ptr<ploop::File> f, Hook& hook) : File(f->path()), f_(std::move(f)), hook_(hook) {}
    void read(void* b, size_t n, uint64_t o) override { tell("read"), f_->read(b, n, o); }
    void write(const void* b, size_t n, uint64_t o) override { tell("write"), f_->write(b, n, o); }
    void sync() override { tell("sync"), f_->sync(); }
    uint64_t size() override { return tell("size"), f_->size(); }
    void truncate(uint64_t n) override { tell("truncate"), f_->truncate(n); }
    void punch_hole(uint64_t o, uint64_t n) override { tell("punch"), f_->punch_hole(o, n); }
    void preallocate(uint64_t o, uint64_t n) override { tell("preallocate"), f_->preallocate(o, n); }
    uint64_t next_data(uint64_t o) override { return f_->next_data(o); }
    uint64_t next_hole(uint64_t o) override { return f_->next_hole(o); }
    int fd() const override { return f_->fd(); }
    std::string lock_image() override { return tell("lock"), f_->lock_image(); }
    void lock_image_shared() override { tell("lock"), f_->lock_image_shared(); }

   private:
    void tell(const char* event) { hook_(event, path()); }
    std::unique_ptr<ploop::File> f_;
    Hook& hook_;
  };

  ploop::Storage& inner_;
  Hook hook_;
};

}  // namespace testutil
