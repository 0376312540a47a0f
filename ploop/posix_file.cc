// File and Storage on the real operating system: pread/pwrite/fdatasync/fallocate.
#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "ploop/error.h"
#include "ploop/file.h"

namespace ploop {
namespace {

constexpr size_t kDirectAlign = 4096;

bool aligned(const void* p, size_t len, uint64_t off) {
  return (reinterpret_cast<uintptr_t>(p) % kDirectAlign) == 0 && len % 512 == 0 && off % 512 == 0;
}

struct AlignedBuffer {
  explicit AlignedBuffer(size_t n) {
    if (posix_memalign(&p, kDirectAlign, n ? n : kDirectAlign)) throw std::bad_alloc();
  }
  ~AlignedBuffer() { free(p); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  void* p = nullptr;
};

// Synchronous reads and writes through a small io_uring per thread: the data path of the daemon
// runs every file I/O through io_uring (one ring per worker thread, no shared submission state).
// Returns the byte count or -errno, like pread/pwrite.
ssize_t uring_rw(bool write, int fd, void* buf, size_t len, uint64_t off) {
  struct Ring {
    Ring() { ok = io_uring_queue_init(8, &ring, 0) == 0; }
    ~Ring() {
      if (ok) io_uring_queue_exit(&ring);
    }
    io_uring ring{};
    bool ok = false;
  };
  thread_local Ring r;
  if (!r.ok) {  // no ring for this thread (memlock limits): plain system calls
    ssize_t n = write ? ::pwrite(fd, buf, len, static_cast<off_t>(off)) : ::pread(fd, buf, len, static_cast<off_t>(off));
    return n < 0 ? -errno : n;
  }
  io_uring_sqe* sqe = io_uring_get_sqe(&r.ring);
  auto n32 = static_cast<unsigned>(std::min<size_t>(len, 1u << 30));
  if (write) {
    io_uring_prep_write(sqe, fd, buf, n32, off);
  } else {
    io_uring_prep_read(sqe, fd, buf, n32, off);
  }
  int rc = io_uring_submit_and_wait(&r.ring, 1);
  if (rc < 0) return rc;
  io_uring_cqe* cqe;
  rc = io_uring_wait_cqe(&r.ring, &cqe);
  if (rc < 0) return rc;
  ssize_t res = cqe->res;
  io_uring_cqe_seen(&r.ring, cqe);
  return res;
}

class PosixFile final : public File {
 public:
  PosixFile(std::string path, int fd, bool direct, bool uring)
      : File(std::move(path)), fd_(fd), direct_(direct), uring_(uring) {}
  ~PosixFile() override {
    ::close(fd_);
    if (buffered_ >= 0) ::close(buffered_);
  }

  void read(void* buf, size_t len, uint64_t off) override {
    if (direct_ && !aligned(buf, len, off)) {
      // Bounce through an aligned buffer covering whole sectors around the request.
      uint64_t lo = off / 512 * 512, hi = (off + len + 511) / 512 * 512;
      AlignedBuffer b(hi - lo);
      read(b.p, hi - lo, lo);
      std::memcpy(buf, static_cast<uint8_t*>(b.p) + (off - lo), len);
      return;
    }
    auto* p = static_cast<uint8_t*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = uring_ ? uring_rw(false, fd_, p + done, len - done, off + done)
                         : ::pread(fd_, p + done, len - done, static_cast<off_t>(off + done));
      if (n < 0 && !uring_) n = -errno;
      if (n < 0) {
        if (n == -EINTR || n == -EAGAIN) continue;
        throw_errno(Exit::kRead, static_cast<int>(-n), "read failed", path(), static_cast<int64_t>(off + done));
      }
      if (n == 0) {  // end of file: the rest reads as zeros
        std::memset(p + done, 0, len - done);
        return;
      }
      done += static_cast<size_t>(n);
    }
  }

  void write(const void* buf, size_t len, uint64_t off) override {
    int fd = fd_;
    if (direct_ && !aligned(buf, len, off)) {
      if (len % 512 || off % 512) {
        // Not whole sectors (small metadata files such as the descriptor): write through a
        // buffered descriptor of the same file. Linux keeps direct and buffered I/O coherent.
        fd = buffered_fd();
      } else {
        AlignedBuffer b(len);
        std::memcpy(b.p, buf, len);
        write(b.p, len, off);
        return;
      }
    }
    auto* p = static_cast<const uint8_t*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = uring_ ? uring_rw(true, fd, const_cast<uint8_t*>(p + done), len - done, off + done)
                         : ::pwrite(fd, p + done, len - done, static_cast<off_t>(off + done));
      if (n < 0 && !uring_) n = -errno;
      if (n < 0) {
        if (n == -EINTR || n == -EAGAIN) continue;
        throw_errno(Exit::kWrite, static_cast<int>(-n), "write failed", path(), static_cast<int64_t>(off + done));
      }
      if (n == 0) throw_errno(Exit::kWrite, EIO, "write made no progress", path(), static_cast<int64_t>(off + done));
      done += static_cast<size_t>(n);
    }
  }

  void sync() override {
    if (::fdatasync(fd_) < 0) throw_errno(Exit::kFsync, errno, "fdatasync failed", path());
  }

  int buffered_fd() {
    std::lock_guard lk(mu_);
    if (buffered_ < 0) {
      buffered_ = ::open(path().c_str(), O_RDWR | O_CLOEXEC);
      if (buffered_ < 0) throw_errno(Exit::kOpen, errno, "cannot open", path());
    }
    return buffered_;
  }

  uint64_t size() override {
    struct stat st;
    if (::fstat(fd_, &st) < 0) throw_errno(Exit::kSys, errno, "fstat failed", path());
    return static_cast<uint64_t>(st.st_size);
  }

  void truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) < 0) {
      throw_errno(Exit::kTruncate, errno, "ftruncate failed", path(), static_cast<int64_t>(size));
    }
  }

  void punch_hole(uint64_t off, uint64_t len) override {
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                    static_cast<off_t>(len)) < 0) {
      if (errno == EOPNOTSUPP) {  // file system without hole punching: write zeros instead
        AlignedBuffer z(1 << 20);
        std::memset(z.p, 0, 1 << 20);
        for (uint64_t done = 0; done < len;) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, 1 << 20));
          write(z.p, n, off + done);
          done += n;
        }
        return;
      }
      throw_errno(Exit::kWrite, errno, "punching a hole failed", path(), static_cast<int64_t>(off));
    }
  }

  int fd() const override { return fd_; }

  uint64_t next_data(uint64_t off) override {
    off_t r = ::lseek(fd_, static_cast<off_t>(off), SEEK_DATA);
    if (r >= 0) return static_cast<uint64_t>(r);
    if (errno == ENXIO) return kNoData;  // only holes (or unwritten space) from `off` to the end
    return off;                          // cannot tell (no SEEK_DATA here): everything may be data
  }

  uint64_t next_hole(uint64_t off) override {
    off_t r = ::lseek(fd_, static_cast<off_t>(off), SEEK_HOLE);
    return r >= 0 ? static_cast<uint64_t>(r) : size();
  }

  void will_need(uint64_t off, uint64_t len) override {
    if (!direct_) ::posix_fadvise(fd_, static_cast<off_t>(off), static_cast<off_t>(len), POSIX_FADV_WILLNEED);
  }

  void preallocate(uint64_t off, uint64_t len) override {
    if (::fallocate(fd_, 0, static_cast<off_t>(off), static_cast<off_t>(len)) == 0) return;
    if (errno != EOPNOTSUPP) throw_errno(Exit::kWrite, errno, "fallocate failed", path(), static_cast<int64_t>(off));
    File::preallocate(off, len);
  }

  void copy_from(File& src, uint64_t src_off, uint64_t len, uint64_t off) override {
    // In the kernel when both are plain (buffered) kernel files: no copy through user space, and
    // a metadata-only copy on file systems that share extents. Direct I/O files, other kinds of
    // files and kernels or file systems that refuse take the buffered path.
    if (direct_ || src.fd() < 0 || no_copy_range_) return File::copy_from(src, src_off, len, off);
    loff_t in = static_cast<loff_t>(src_off), out = static_cast<loff_t>(off);
    uint64_t done = 0;
    while (done < len) {
      ssize_t n = ::copy_file_range(src.fd(), &in, fd_, &out, len - done, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && done == 0 && (errno == EINVAL || errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS)) {
        no_copy_range_ = true;
        return File::copy_from(src, src_off, len, off);
      }
      if (n < 0) throw_errno(Exit::kWrite, errno, "copy from " + src.path() + " failed", path(), static_cast<int64_t>(off + done));
      if (n == 0) {  // the source ended: the rest reads as zeros
        return File::copy_from(src, src_off + done, len - done, off + done);
      }
      done += static_cast<uint64_t>(n);
    }
  }

  void lock_image_shared() override {
    struct flock fl = lock_bytes(F_RDLCK);
    if (::fcntl(fd_, F_OFD_SETLK, &fl) < 0) throw_errno(Exit::kLock, errno, "cannot lock", path());
  }

  std::string lock_image() override {
    if (std::string h = holder(); !h.empty()) return h;
    struct flock fl = lock_bytes(F_RDLCK);
    if (::fcntl(fd_, F_OFD_SETLK, &fl) < 0) {
      if (errno == EAGAIN || errno == EACCES) return holder_or("another process");
      throw_errno(Exit::kLock, errno, "cannot lock", path());
    }
    // Someone may have taken read locks between the test and ours: test again.
    if (std::string h = holder(); !h.empty()) {
      fl.l_type = F_UNLCK;
      ::fcntl(fd_, F_OFD_SETLK, &fl);
      return h;
    }
    return {};
  }

 private:
  static constexpr off_t kLockStart = 200, kLockLen = 5;

  static struct flock lock_bytes(short type) {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = kLockStart;
    fl.l_len = kLockLen;
    return fl;
  }

  // Who holds any lock on the lock bytes, other than this open file; "" if nobody.
  std::string holder() {
    struct flock fl = lock_bytes(F_WRLCK);
    if (::fcntl(fd_, F_OFD_GETLK, &fl) < 0) throw_errno(Exit::kLock, errno, "cannot test lock", path());
    if (fl.l_type == F_UNLCK) return {};
    if (fl.l_pid > 0) return "PID " + std::to_string(fl.l_pid);
    return holder_or("another process");
  }

  // Open-file-description locks do not report their owner (l_pid is -1, in /proc/locks too);
  // the owner is the process whose /proc/PID/fdinfo lists the lock.
  std::string holder_or(const std::string& fallback) {
    struct stat st;
    if (::fstat(fd_, &st) < 0) return fallback;
    char want[64];
    std::snprintf(want, sizeof want, "%02x:%02x:%lu ", major(st.st_dev), minor(st.st_dev),
                  static_cast<unsigned long>(st.st_ino));
    std::error_code ec;
    for (const auto& proc : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string pid = proc.path().filename();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      for (const auto& fdinfo : std::filesystem::directory_iterator(proc.path() / "fdinfo", ec)) {
        std::ifstream in(fdinfo.path());
        std::string line;
        while (std::getline(in, line)) {
          auto at = line.find(want);
          if (line.rfind("lock:", 0) != 0 || at == std::string::npos) continue;
          long long start = 0;
          char end[32] = {0};
          if (std::sscanf(line.c_str() + at + std::strlen(want), "%lld %31s", &start, end) != 2) continue;
          long long stop = std::strcmp(end, "EOF") == 0 ? INT64_MAX : std::atoll(end);
          if (start <= kLockStart + kLockLen - 1 && stop >= kLockStart && std::stol(pid) != getpid()) {
            return "PID " + pid;
          }
          if (start <= kLockStart + kLockLen - 1 && stop >= kLockStart && fdinfo.path().filename() != std::to_string(fd_)) {
            return "PID " + pid;  // this process, through another open file
          }
        }
      }
    }
    return fallback;
  }

  int fd_;
  std::atomic<bool> no_copy_range_{false};
  bool direct_;
  bool uring_;
  std::mutex mu_;
  int buffered_ = -1;  // lazily opened without O_DIRECT, for writes that are not whole sectors
};

class PosixStorage final : public Storage {
 public:
  PosixStorage(bool direct, bool uring) : direct_(direct), uring_(uring) {}

  std::unique_ptr<File> open(const std::string& path, OpenMode mode) override {
    int flags = (mode == OpenMode::kReadOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    if (direct_) flags |= O_DIRECT;
    int fd = ::open(path.c_str(), flags);
    if (fd < 0) throw_errno(Exit::kOpen, errno, "cannot open", path);
    struct stat st;
    if (::fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error(Exit::kOpen, "cannot open: " + path + ": not a regular file");
    }
    return std::make_unique<PosixFile>(path, fd, direct_, uring_);
  }

  std::unique_ptr<File> create(const std::string& path) override {
    int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;
    if (direct_) flags |= O_DIRECT;
    int fd = ::open(path.c_str(), flags, 0600);
    if (fd < 0) throw_errno(Exit::kCreate, errno, "cannot create", path);
    return std::make_unique<PosixFile>(path, fd, direct_, uring_);
  }

  bool exists(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
  }

  void remove(const std::string& path) override {
    if (::unlink(path.c_str()) < 0 && errno != ENOENT) throw_errno(Exit::kSys, errno, "cannot remove", path);
  }

  void rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) < 0) throw_errno(Exit::kRename, errno, "cannot rename to " + to, from);
  }

  void sync_dir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw_errno(Exit::kOpen, errno, "cannot open directory", dir);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc < 0) throw_errno(Exit::kFsync, err, "fsync of directory failed", dir);
  }

 private:
  bool direct_;
  bool uring_;
};

}  // namespace

std::unique_ptr<Storage> make_posix_storage(bool direct, bool uring) {
  return std::make_unique<PosixStorage>(direct, uring);
}

}  // namespace ploop
