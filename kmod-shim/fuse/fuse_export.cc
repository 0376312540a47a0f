#include "kmod-shim/fuse/fuse_export.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <new>
#include <string_view>

#include "ploop/error.h"
#include "ploop/stack.h"

#define FUSE_USE_VERSION 35
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wshadow"
#include <fuse_lowlevel.h>
#pragma GCC diagnostic pop

namespace shim {
namespace {

constexpr fuse_ino_t kRootIno = FUSE_ROOT_ID;
constexpr fuse_ino_t kDiskIno = 2;
constexpr const char* kDiskName = "disk";
constexpr double kAttrTimeout = 3600.0;  // nothing about the file ever changes
constexpr unsigned kMaxIo = 1u << 20;    // largest read or write request asked of the kernel
constexpr uint32_t kBlock = 4096;        // st_blksize, statfs f_bsize (loop's discard granularity)

int errno_of(const ploop::Error& e) {
  if (e.sys_errno()) return e.sys_errno();
  return e.code() == ploop::Exit::kParam ? EINVAL : EIO;
}

// The buffer a read is served from: one per worker thread, page-aligned (so an O_DIRECT storage
// reads into it without bouncing), reused by the next request of that worker only after
// fuse_reply_buf() has sent it.
uint8_t* read_buffer(size_t n) {
  struct Buf {
    ~Buf() { std::free(p); }
    void* p = nullptr;
    size_t cap = 0;
  };
  thread_local Buf b;
  if (n > b.cap) {
    std::free(b.p);
    b.p = nullptr;
    b.cap = 0;
    size_t cap = std::max<size_t>((n + kMaxIo - 1) / kMaxIo * kMaxIo, kMaxIo);
    if (posix_memalign(&b.p, kBlock, cap)) throw std::bad_alloc();
    b.cap = cap;
  }
  return static_cast<uint8_t*>(b.p);
}

}  // namespace

// The low-level callbacks. Each runs on one libfuse worker thread and replies exactly once.
struct FuseExport::Ops {
  static FuseExport& self(fuse_req_t req) { return *static_cast<FuseExport*>(fuse_req_userdata(req)); }

  // Runs f, which replies on success; turns an exception into an error reply.
  template <class F>
  static void guarded(fuse_req_t req, const char* op, uint64_t off, uint64_t len, F&& f) {
    int err;
    try {
      f();
      return;
    } catch (const ploop::Error& e) {
      err = errno_of(e);
      std::fprintf(stderr, "ploop fuse export: %s of %llu bytes at offset %llu failed: %s\n", op,
                   static_cast<unsigned long long>(len), static_cast<unsigned long long>(off), e.what());
    } catch (const std::bad_alloc&) {
      err = ENOMEM;
    } catch (const std::exception& e) {
      err = EIO;
      std::fprintf(stderr, "ploop fuse export: %s of %llu bytes at offset %llu failed: %s\n", op,
                   static_cast<unsigned long long>(len), static_cast<unsigned long long>(off), e.what());
    }
    fuse_reply_err(req, err);
  }

  static struct stat attr(const FuseExport& x, fuse_ino_t ino) {
    struct stat st {};
    st.st_ino = ino;
    st.st_uid = geteuid();
    st.st_gid = getegid();
    st.st_atim = st.st_mtim = st.st_ctim = x.created_;
    st.st_blksize = kBlock;
    if (ino == kRootIno) {
      st.st_mode = S_IFDIR | 0700;
      st.st_nlink = 2;
      st.st_size = kBlock;
    } else {
      st.st_mode = S_IFREG | (x.read_only_ ? 0400 : 0600);
      st.st_nlink = 1;
      st.st_size = static_cast<off_t>(x.stack_.size());
      st.st_blocks = static_cast<blkcnt_t>((x.stack_.size() + 511) / 512);
    }
    return st;
  }

  static void init(void* userdata, fuse_conn_info* conn) {
    auto& x = *static_cast<FuseExport*>(userdata);
    // Large requests: libfuse's receive buffer holds 1 MiB when the kernel supports FUSE_MAX_PAGES,
    // and max_write must never exceed it.
    conn->max_write = std::min(conn->max_write, kMaxIo);
    // A direct-I/O loop device submits many asynchronous requests at once; let them in flight.
    if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    conn->max_background = 64;
    conn->congestion_threshold = 48;
    {
      std::lock_guard lk(x.mu_);
      x.initialized_ = true;
    }
    x.cv_.notify_all();
  }

  static void lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    if (parent != kRootIno || std::string_view(name) != kDiskName) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    fuse_entry_param e{};
    e.ino = kDiskIno;
    e.generation = 1;
    e.attr = attr(self(req), kDiskIno);
    e.attr_timeout = kAttrTimeout;
    e.entry_timeout = kAttrTimeout;
    fuse_reply_entry(req, &e);
  }

  static void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    if (ino != kRootIno && ino != kDiskIno) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    struct stat st = attr(self(req), ino);
    fuse_reply_attr(req, &st, kAttrTimeout);
  }

  static void setattr(fuse_req_t req, fuse_ino_t ino, struct stat* a, int to_set, fuse_file_info*) {
    FuseExport& x = self(req);
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
      fuse_reply_err(req, EPERM);
      return;
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
      if (ino != kDiskIno) {
        fuse_reply_err(req, EISDIR);
        return;
      }
      if (a->st_size < 0 || static_cast<uint64_t>(a->st_size) != x.stack_.size()) {
        fuse_reply_err(req, EPERM);  // the disk size is fixed
        return;
      }
    }
    struct stat st = attr(x, ino);  // time changes are accepted and forgotten
    fuse_reply_attr(req, &st, kAttrTimeout);
  }

  static void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
    if (ino != kRootIno) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
    struct Entry {
      const char* name;
      fuse_ino_t ino;
      mode_t mode;
    };
    static constexpr Entry kEntries[] = {{".", kRootIno, S_IFDIR}, {"..", kRootIno, S_IFDIR}, {kDiskName, kDiskIno, S_IFREG}};
    char buf[256];
    size_t cap = std::min(size, sizeof buf), used = 0;
    for (off_t i = std::max<off_t>(off, 0); i < 3; ++i) {
      struct stat st {};
      st.st_ino = kEntries[i].ino;
      st.st_mode = kEntries[i].mode;
      size_t n = fuse_add_direntry(req, buf + used, cap - used, kEntries[i].name, &st, i + 1);
      if (n > cap - used) break;
      used += n;
    }
    fuse_reply_buf(req, buf, used);
  }

  static void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    FuseExport& x = self(req);
    if (ino != kDiskIno) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    bool writable = (fi->flags & O_ACCMODE) != O_RDONLY;
    if (writable && x.read_only_) {
      fuse_reply_err(req, EROFS);
      return;
    }
    if (fi->flags & O_TRUNC) {
      fuse_reply_err(req, EPERM);  // the disk size is fixed
      return;
    }
    fi->direct_io = 1;  // see the header: no page cache for the disk, for any opener
    fi->keep_cache = 0;
    fi->noflush = !writable;  // nothing to flush when a read-only descriptor closes
    fi->fh = writable;
    fuse_reply_open(req, fi);
  }

  static void read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info*) {
    FuseExport& x = self(req);
    if (off < 0) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    uint64_t o = static_cast<uint64_t>(off), disk = x.stack_.size();
    if (o >= disk || size == 0) {
      fuse_reply_buf(req, nullptr, 0);  // end of file
      return;
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(size, disk - o));  // short read at the end
    guarded(req, "read", o, n, [&] {
      uint8_t* buf = read_buffer(n);
      x.stack_.read(buf, o, n);
      fuse_reply_buf(req, reinterpret_cast<const char*>(buf), n);
    });
  }

  static void write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
    FuseExport& x = self(req);
    if (x.read_only_) {
      fuse_reply_err(req, EROFS);
      return;
    }
    if (off < 0) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    uint64_t o = static_cast<uint64_t>(off), disk = x.stack_.size();
    if (o > disk || size > disk - o) {
      fuse_reply_err(req, ENOSPC);  // the disk does not grow; nothing is written
      return;
    }
    guarded(req, "write", o, size, [&] {
      // `buf` is this request's own data in this worker's receive buffer.
      x.stack_.write(buf, o, size, (fi->flags & O_DSYNC) != 0);
      fuse_reply_write(req, size);
    });
  }

  static void flush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    FuseExport& x = self(req);
    if (!fi->fh || x.read_only_) {
      fuse_reply_err(req, 0);
      return;
    }
    guarded(req, "flush", 0, 0, [&] {
      x.stack_.flush();
      fuse_reply_err(req, 0);
    });
  }

  static void fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) {
    FuseExport& x = self(req);
    if (x.read_only_) {
      fuse_reply_err(req, 0);
      return;
    }
    guarded(req, "fsync", 0, 0, [&] {
      x.stack_.flush();
      fuse_reply_err(req, 0);
    });
  }

  static void statfs(fuse_req_t req, fuse_ino_t) {
    FuseExport& x = self(req);
    struct statvfs s {};
    s.f_bsize = kBlock;
    s.f_frsize = kBlock;
    s.f_blocks = (x.stack_.size() + kBlock - 1) / kBlock;
    s.f_bfree = s.f_bavail = 0;  // the disk file fills the file system
    s.f_files = 2;
    s.f_ffree = s.f_favail = 0;
    s.f_namemax = 255;
    fuse_reply_statfs(req, &s);
  }

  static void fallocate(fuse_req_t req, fuse_ino_t, int mode, off_t offset, off_t length, fuse_file_info*) {
    FuseExport& x = self(req);
    if (x.read_only_) {
      fuse_reply_err(req, EROFS);
      return;
    }
    if (offset < 0 || length <= 0) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    const uint64_t disk = x.stack_.size(), off = static_cast<uint64_t>(offset);
    const uint64_t len = static_cast<uint64_t>(length);
    const bool past_end = off > disk || len > disk - off;
    if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
      // Preallocation: every byte of the disk is always there to be written.
      fuse_reply_err(req, past_end ? ENOSPC : 0);
    } else if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
      // Punching past the end of a file is a no-op; the part inside must read as zeros afterwards,
      // which discard() does not promise for partial clusters or clusters a lower delta maps.
      if (off >= disk) {
        fuse_reply_err(req, 0);
        return;
      }
      uint64_t n = std::min(len, disk - off);
      guarded(req, "punch hole", off, n, [&] {
        x.stack_.write_zeroes(off, n);
        fuse_reply_err(req, 0);
      });
    } else if ((mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE) {
      if (past_end) {
        fuse_reply_err(req, ENOSPC);
        return;
      }
      guarded(req, "zero range", off, len, [&] {
        x.stack_.write_zeroes(off, len);
        fuse_reply_err(req, 0);
      });
    } else {
      fuse_reply_err(req, EOPNOTSUPP);
    }
  }

  static const fuse_lowlevel_ops& table() {
    static const fuse_lowlevel_ops ops = [] {
      fuse_lowlevel_ops o{};
      o.init = init;
      o.lookup = lookup;
      o.getattr = getattr;
      o.setattr = setattr;
      o.readdir = readdir;
      o.open = open;
      o.read = read;
      o.write = write;
      o.flush = flush;
      o.fsync = fsync;
      o.statfs = statfs;
      o.fallocate = fallocate;
      return o;
    }();
    return ops;
  }
};

FuseExport::FuseExport(ploop::Stack& stack, std::string mountpoint, bool read_only)
    : stack_(stack), mountpoint_(std::move(mountpoint)), read_only_(read_only || !stack.writable()) {
  clock_gettime(CLOCK_REALTIME, &created_);
}

FuseExport::~FuseExport() { stop(); }

void FuseExport::start() {
  namespace fs = std::filesystem;
  if (se_) throw ploop::Error(ploop::Exit::kParam, "FUSE export at " + mountpoint_ + " is already started");
  std::error_code ec;
  if (!fs::is_directory(mountpoint_, ec) || !fs::is_empty(mountpoint_, ec) || ec) {
    throw ploop::Error(ploop::Exit::kParam, "FUSE mount point " + mountpoint_ + " is not an existing empty directory");
  }
  struct stat st;
  if (::stat("/dev/fuse", &st) != 0) {
    int err = errno;
    throw ploop::Error(ploop::Exit::kSys,
                       std::string("FUSE is unavailable: /dev/fuse: ") + std::strerror(err) +
                           " (is the fuse module loaded, and /dev/fuse present in this container?)",
                       err);
  }
  mounted_at_ = fs::absolute(mountpoint_).lexically_normal().string();

  std::string opts = "default_permissions,fsname=ploop,subtype=ploop";
  if (read_only_) opts += ",ro";
  const char* argv[] = {"ploop-fuse", "-o", opts.c_str()};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  se_ = fuse_session_new(&args, &Ops::table(), sizeof(fuse_lowlevel_ops), this);
  fuse_opt_free_args(&args);
  if (!se_) throw ploop::Error(ploop::Exit::kSys, "FUSE is unavailable: cannot create a FUSE session (see libfuse's message above)");
  if (fuse_session_mount(se_, mounted_at_.c_str()) != 0) {
    fuse_session_destroy(se_);
    se_ = nullptr;
    throw ploop::Error(ploop::Exit::kSys, "FUSE is unavailable: cannot mount FUSE at " + mounted_at_ +
                                              " (see libfuse's message above; mounting needs root or fusermount3)");
  }
  initialized_ = loop_done_ = false;
  mounted_ = true;
  loop_ = std::thread([this] {
    fuse_loop_config cfg{};
    cfg.clone_fd = 1;  // one /dev/fuse descriptor per worker thread
    cfg.max_idle_threads = 10;
    int rc = fuse_session_loop_mt(se_, &cfg);
    if (rc != 0) std::fprintf(stderr, "ploop fuse export: FUSE loop at %s ended with %d\n", mounted_at_.c_str(), rc);
    {
      std::lock_guard lk(mu_);
      loop_done_ = true;
    }
    cv_.notify_all();
  });

  std::unique_lock lk(mu_);
  cv_.wait_for(lk, std::chrono::seconds(10), [this] { return initialized_ || loop_done_; });
  bool ok = initialized_;
  lk.unlock();
  if (!ok) {
    stop();
    throw ploop::Error(ploop::Exit::kSys, "FUSE is unavailable: the kernel did not complete the FUSE handshake at " + mountpoint_);
  }
}

// Unmounts while the loop still serves requests: the kernel then ends the connection, every
// worker's read of /dev/fuse fails with ENODEV, and the loop returns. (Never fuse_session_exit()
// first: libfuse would cancel its workers at the next request while the mount may still be in use.)
void FuseExport::detach_mount() {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    if (::umount2(mounted_at_.c_str(), 0) == 0) return;
    int err = errno;
    if (err == EBUSY && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a loop device releases its file asynchronously
      continue;
    }
    if (err == EBUSY) {
      std::fprintf(stderr,
                   "ploop fuse export: %s is still in use after 10 s; detaching it lazily and serving until "
                   "its last user closes it\n",
                   mounted_at_.c_str());
      ::umount2(mounted_at_.c_str(), MNT_DETACH);
    } else if (err == EPERM) {
      fuse_session_unmount(se_);  // unprivileged: libfuse runs fusermount3 -u -z
    }
    // EINVAL: no longer mounted here (someone else unmounted it).
    return;
  }
}

void FuseExport::stop() {
  if (!se_) return;
  if (mounted_) {
    detach_mount();
    mounted_ = false;
  }
  if (loop_.joinable()) loop_.join();
  fuse_session_unmount(se_);  // closes /dev/fuse; the connection is already gone
  fuse_session_destroy(se_);
  se_ = nullptr;
}

}  // namespace shim
