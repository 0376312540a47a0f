// The I/O interface under the library. Every byte the library reads or writes goes through a
// File, and every name it creates, renames or removes through a Storage, so that tests can
// replace the operating system with one that loses unsynced writes, tears them, or fails with
// ENOSPC or EIO (see fault_storage.h).
//
// Promises of every implementation:
// - read() fills the whole buffer or throws; bytes past end of file read as zeros.
// - write() writes the whole buffer or throws (Error kWrite; ENOSPC is reported as such).
// - sync() makes every write and size change that completed before it durable.
// - All methods may be called from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace ploop {

class File {
 public:
  virtual ~File() = default;
  virtual void read(void* buf, size_t len, uint64_t offset) = 0;
  virtual void write(const void* buf, size_t len, uint64_t offset) = 0;
  virtual void sync() = 0;
  virtual uint64_t size() = 0;
  virtual void truncate(uint64_t size) = 0;
  // Deallocates [offset, offset+len): reads return zeros afterwards; size is unchanged.
  virtual void punch_hole(uint64_t offset, uint64_t len) = 0;
  // Allocates [offset, offset+len) as zeros (extending the file if needed) without writing them
  // where the file system can (fallocate); the default writes zeros.
  virtual void preallocate(uint64_t offset, uint64_t len);
  // The first offset at or after `offset` whose bytes may not read as zeros (the file system's
  // SEEK_DATA: holes, and space allocated but never written, read as zeros), or kNoData if every
  // byte from `offset` on reads as zeros. A file that cannot tell returns `offset`: everything
  // may be data. A hint that lets readers skip ranges known to be zero; never needed for
  // correctness.
  static constexpr uint64_t kNoData = UINT64_MAX;
  virtual uint64_t next_data(uint64_t offset) { return offset; }
  // The end of the range that next_data() found: the first offset after `offset` from which the
  // file may read as zeros (SEEK_HOLE), at most the file size. The default: the file size.
  virtual uint64_t next_hole(uint64_t /*offset*/) { return size(); }
  // A hint that [offset, offset+len) will be read soon (start reading it ahead); may do nothing.
  virtual void will_need(uint64_t /*offset*/, uint64_t /*len*/) {}
  // Copies `len` bytes of `src` at `src_offset` to this file at `offset`. The default reads and
  // writes through a buffer; a kernel file copies in the kernel (copy_file_range) where it can.
  virtual void copy_from(File& src, uint64_t src_offset, uint64_t len, uint64_t offset);
  // The kernel file descriptor for asynchronous I/O engines, or -1 if there is none (in-memory
  // test files): engines then fall back to the synchronous calls above.
  virtual int fd() const { return -1; }
  // Takes the image lock that OpenVZ ploop and qemu use, so that they and this project exclude
  // each other: read locks on bytes 200..204 (qemu's "does not share permission" bytes), taken
  // only if nobody else holds a lock there, and checked again after taking them. The lock lasts
  // as long as this File is open. Returns "" on success, else who holds it ("PID 1234").
  virtual std::string lock_image() { return {}; }
  // A long-lived reader's share of the same bytes: read locks without the test, so readers
  // coexist but writers (which test first) are refused while this File is open.
  virtual void lock_image_shared() {}
  const std::string& path() const { return path_; }

 protected:
  explicit File(std::string path) : path_(std::move(path)) {}

 private:
  std::string path_;
};

enum class OpenMode { kReadOnly, kReadWrite };

class Storage {
 public:
  virtual ~Storage() = default;
  // Throws Error(kOpen) if the file does not exist or cannot be opened.
  virtual std::unique_ptr<File> open(const std::string& path, OpenMode mode) = 0;
  // Creates a new empty file; throws Error(kCreate) if it exists.
  virtual std::unique_ptr<File> create(const std::string& path) = 0;
  virtual bool exists(const std::string& path) = 0;
  virtual void remove(const std::string& path) = 0;
  // Atomically replaces `to` with `from`.
  virtual void rename(const std::string& from, const std::string& to) = 0;
  // Makes creations, renames and removals in the directory durable.
  virtual void sync_dir(const std::string& dir) = 0;
};

// The real operating system. With `direct`, files are opened O_DIRECT (unaligned requests are
// bounced through aligned buffers, or sent through a buffered descriptor when not whole sectors).
// With `uring`, reads and writes go through a per-thread io_uring instead of pread/pwrite (the
// daemon's data path); synchronous either way.
std::unique_ptr<Storage> make_posix_storage(bool direct = false, bool uring = false);

}  // namespace ploop
