// One delta file: its header, its BAT and, for the writable top delta, the allocation of its
// clusters. A Delta validates everything it reads from disk at open, so that no BAT entry it
// hands out points outside the file or into the header.
//
// Crash-safety rules kept here (docs/crash-safety.md):
// - The in-use flag is set and synced when a delta is opened read-write, and cleared by close().
// - map() records a BAT entry in memory only; flush() first syncs the data written before the
//   entries it persists, then writes the dirty 4 KiB BAT pages, then syncs again.
// - A cluster released by unmap() is reused only after the flush that persisted its cleared
//   entry, so a crash can never leave two entries sharing one cluster.
// - close() truncates the unused tail of the file so that no space leaks.
// A Delta destroyed without close() is left as after a crash.
//
// Thread safety: every method may be called concurrently; callers serialise map()/unmap() of the
// same virtual cluster themselves (the Stack does, with its cluster locks).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ploop/aligned_bytes.h"
#include "ploop/file.h"
#include "ploop/format.h"

namespace ploop {

class Delta {
 public:
  // Creates a new empty delta file (it must not exist), syncs it and its directory, and returns
  // it open read-write. The image lock is taken while the file is still empty, so no other
  // program can open the new delta before this writer has it.
  static std::unique_ptr<Delta> create(Storage& storage, const std::string& path, uint64_t size_bytes,
                                       uint32_t cluster_sectors, int version = 2);
  // Writes a new empty delta, cleanly closed, with one sync (and the directory's unless
  // `sync_dir` is false: then the caller syncs the directory before anything names the file). The
  // BAT is preallocated as zeros, not written, so the cost hardly grows with the disk size. The fast path for
  // snapshots and new disks, which do not write to the new delta right away.
  static void create_closed(Storage& storage, const std::string& path, uint64_t size_bytes, uint32_t cluster_sectors,
                            int version = 2, bool sync_dir = true);
  // Opens an existing delta. Read-write opens take the image lock (unless the caller already
  // holds the chain's lock: `lock` false), refuse an image whose in-use flag is set unless
  // `allow_dirty`, and refuse BAT entries that share a cluster.
  static std::unique_ptr<Delta> open(Storage& storage, const std::string& path, OpenMode mode,
                                     bool allow_dirty = false, bool lock = true);
  ~Delta();
  Delta(const Delta&) = delete;
  Delta& operator=(const Delta&) = delete;

  const std::string& path() const { return file_->path(); }
  File& file() { return *file_; }
  Header header() const;
  uint64_t cluster_bytes() const { return h_.cluster_bytes(); }
  uint32_t bat_entries() const { return h_.bat_entries; }
  uint64_t size_bytes() const { return h_.size_bytes(); }
  bool writable() const { return writable_; }
  // File cluster holding virtual cluster `vc`, or 0 if this delta does not map it.
  uint32_t cluster_of(uint32_t vc) const;
  uint64_t mapped_clusters() const;
  // The whole map at once (one lock instead of one per entry): element vc is cluster_of(vc).
  std::vector<uint32_t> clusters() const;
  // (virtual cluster, file cluster) of every mapped entry, in virtual order; skips empty runs fast.
  std::vector<std::pair<uint32_t, uint32_t>> mapped() const;
  // Calls fn, in order, with consecutive pieces of the BAT entries exactly as stored on disk
  // (4 bytes each, little-endian), under the delta's lock: fn must not call back into this delta.
  // Pages known to read as zeros come as a shared zero buffer, so their memory stays untouched.
  void for_each_bat_piece(const std::function<void(std::span<const uint8_t>)>& fn) const;

  // --- read-write deltas only ---
  // Reserves a free file cluster. The caller writes it in full, then calls map() or abandon().
  uint32_t allocate();
  void abandon(uint32_t cluster);
  void map(uint32_t vc, uint32_t cluster);
  // Clears the entry of `vc`, punches its cluster, and queues the cluster for reuse.
  void unmap(uint32_t vc);
  void flush();
  // Changes the disk size (rounded up to a cluster). Growing may need more BAT clusters: data
  // clusters in the way are moved first, each move durable (copy, sync, repoint, sync) before the
  // next; the new BAT space is zeroed and synced; the header, written last, commits the new size.
  // Shrinking is refused unless no entry maps a cluster past the new end and the BAT keeps its
  // number of clusters. Offline only: the caller has no Stack open over this delta.
  void resize(uint64_t new_size_bytes);
  // Clean close: flush, truncate the unused tail, clear the in-use flag, sync. Idempotent.
  void close();

 private:
  Delta(std::unique_ptr<File> file, bool writable);
  void load(bool allow_dirty, bool lock);
  void read_meta();
  void move_cluster(uint32_t from, uint32_t to, uint32_t vc);
  uint32_t entry_locked(uint32_t vc) const;
  uint32_t next_mapped_locked(uint32_t vc) const;  // first mapped entry >= vc, or bat_entries
  uint32_t next_mapped_in_locked(uint32_t vc, uint32_t end) const;  // the same in [vc, end), or end
  void set_entry_locked(uint32_t vc, uint32_t cluster);
  void store_header_locked();
  void write_page(size_t page, const uint8_t* bytes);

  std::unique_ptr<File> file_;
  bool writable_;
  bool closed_ = false;
  Header h_;

  mutable std::mutex mu_;            // guards everything below
  ZeroPages meta_;                   // header + BAT, whole pages, as on disk
  std::vector<bool> dirty_pages_;    // 4 KiB pages of meta_ not yet written
  // 4 KiB pages of meta_ that read as zeros and were never touched (the file system reported
  // them as holes or unwritten space at open): scans skip them. Cleared when an entry in the page
  // is set. A hint only: the memory of such a page reads as zeros too.
  std::vector<bool> zero_pages_;
  std::vector<bool> used_;           // per file cluster: referenced by the BAT or reserved
  std::set<uint32_t> free_;          // reusable clusters below tail_, lowest first
  std::vector<uint32_t> pending_free_;  // released; reusable after the next flush
  uint32_t tail_ = 0;                // first cluster past the end of the file's clusters
  uint64_t mapped_ = 0;
  std::mutex flush_mu_;              // serialises flushes
};

}  // namespace ploop
