// An in-memory Storage that misbehaves on purpose, for tests: it models a disk with a volatile
// write cache and can lose power, fail operations with an errno, or stop dead at a chosen point.
//
// Model: each file keeps its durable bytes and the list of mutations (write, truncate, punch)
// since its last sync(). sync() makes them durable. power_cut() rebuilds every file from its
// durable bytes plus a random subset of the pending mutations, applied in order, where a write
// that survives may be torn: only some of its 512-byte sectors land. Sectors are atomic.
// Names (create, rename, remove) are durable at once; that is stricter than a real file system
// and is the one simplification of the model.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ploop/file.h"

namespace ploop {

enum class FaultOp { kRead, kWrite, kSync, kTruncate, kPunch };

// Thrown by every operation after the crash point set by crash_after(): the "machine" is off.
struct PowerLost : std::exception {
  const char* what() const noexcept override { return "power lost (fault injection)"; }
};

class FaultStorage final : public Storage {
 public:
  struct FileState;

  std::unique_ptr<File> open(const std::string& path, OpenMode mode) override;
  std::unique_ptr<File> create(const std::string& path) override;
  bool exists(const std::string& path) override;
  void remove(const std::string& path) override;
  void rename(const std::string& from, const std::string& to) override;
  void sync_dir(const std::string&) override {}

  // After `n` more mutating operations (write, sync, truncate, punch), every operation throws
  // PowerLost. The n-th operation itself does not happen.
  void crash_after(uint64_t n);
  // Simulates losing power: drops or tears unsynced mutations (seeded), then revives the storage.
  // Handles opened before the cut are dead afterwards (they throw PowerLost).
  void power_cut(uint64_t seed);
  // Called before every operation, with the storage locked (it must not call back into the
  // storage); a non-zero return is the errno that operation fails with.
  void set_fault(std::function<int(FaultOp, const std::string& path, uint64_t off, size_t len)> f);
  uint64_t mutations() const;
  // Copies a file in from the real file system (for fixtures) and out again.
  void import_file(const std::string& path, const std::vector<uint8_t>& bytes);
  std::vector<uint8_t> contents(const std::string& path) const;

 private:
  friend class FaultFile;
  int before(FaultOp op, const std::string& path, uint64_t off, size_t len);

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<FileState>> files_;
  std::function<int(FaultOp, const std::string&, uint64_t, size_t)> fault_;
  uint64_t mutations_ = 0;
  uint64_t crash_at_ = UINT64_MAX;
  bool dead_ = false;
  uint64_t generation_ = 0;
};

}  // namespace ploop
