// The FUSE export: the disk as <mountpoint>/disk, used through the file (buffered, O_DIRECT,
// concurrent writers, fallocate, the end of the disk) and through loop devices on it (with and
// without direct I/O, concurrent buffered writers, ext4). Every test checks the image afterwards
// through the library. Needs /dev/fuse (skipped without); the loop tests need loop devices, and
// the ext4 test mkfs.ext4/e2fsck/mount (skipped without).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kmod-shim/fuse/fuse_export.h"
#include "ploop/check.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "test_util.h"

namespace {

constexpr uint64_t kMiB = 1 << 20;

bool have_fuse() {
  struct stat st;
  return ::stat("/dev/fuse", &st) == 0;
}

#define SKIP_WITHOUT_FUSE() \
  if (!have_fuse()) GTEST_SKIP() << "/dev/fuse is missing: this kernel or container has no FUSE"

// Runs a shell command; returns its exit status (-1 if it did not exit normally).
int run(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// Runs a shell command; returns its output (stdout and stderr) without the trailing newline.
std::string capture(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) {
    *status = -1;
    return out;
  }
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  int rc = pclose(p);
  *status = rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

struct AlignedBuf {
  explicit AlignedBuf(size_t n) : size(n) {
    if (posix_memalign(reinterpret_cast<void**>(&p), 4096, n)) throw std::bad_alloc();
  }
  ~AlignedBuf() { free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  uint8_t* p = nullptr;
  size_t size;
};

void fill_random(std::mt19937_64& rng, uint8_t* p, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<uint8_t>(rng());
}

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  fill_random(rng, v.data(), n);
  return v;
}

bool full_pwrite(int fd, const void* buf, size_t n, uint64_t off) {
  auto* p = static_cast<const uint8_t*>(buf);
  while (n) {
    ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (r <= 0) return false;
    p += r;
    off += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool full_pread(int fd, void* buf, size_t n, uint64_t off) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r <= 0) return false;
    p += r;
    off += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Compares `got` with `want`; on a difference, a message naming the first differing offset.
::testing::AssertionResult same_bytes(const uint8_t* got, const uint8_t* want, size_t n, uint64_t base) {
  if (n == 0 || std::memcmp(got, want, n) == 0) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (got[i] == want[i]) ++i;
  size_t bad = 0;
  for (size_t j = i; j < n; ++j) bad += got[j] != want[j];
  return ::testing::AssertionFailure() << "first difference at disk offset " << base + i << " (got "
                                       << int{got[i]} << ", want " << int{want[i]} << "), " << bad
                                       << " differing bytes of " << n;
}

// Reads [off, off+n) of `path` with O_DIRECT (so from below any page cache) and compares.
::testing::AssertionResult verify_direct(const std::string& path, const uint8_t* want, size_t n, uint64_t off) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
  if (fd < 0) return ::testing::AssertionFailure() << "open " << path << ": " << std::strerror(errno);
  AlignedBuf buf(4 * kMiB);
  for (size_t done = 0; done < n;) {
    size_t k = std::min<size_t>(buf.size, n - done);
    if (!full_pread(fd, buf.p, k, off + done)) {
      ::close(fd);
      return ::testing::AssertionFailure() << "read " << path << " at " << off + done << ": " << std::strerror(errno);
    }
    auto r = same_bytes(buf.p, want + done, k, off + done);
    if (!r) {
      ::close(fd);
      return r << " (" << path << ")";
    }
    done += k;
  }
  ::close(fd);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult image_is_clean(ploop::Storage& storage, const std::string& image) {
  ploop::CheckReport r = ploop::check_delta(storage, image, {});
  std::string problems;
  for (const auto& f : r.findings) {
    if (f.severity != ploop::CheckFinding::kInfo) problems += "\n  " + f.text;
  }
  if (r.ok() && !r.in_use_left && problems.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "check_delta " << image << ": ok=" << r.ok() << " in_use=" << r.in_use_left
                                       << problems;
}

// A disk in a temporary directory, opened through posix storage and exported at <dir>/mnt.
struct Exported {
  explicit Exported(uint64_t size, uint32_t cluster_sectors = 2048, bool direct_storage = false,
                    bool read_only = false)
      : storage(ploop::make_posix_storage(direct_storage)) {
    ploop::create_disk(*storage, image(), {size, cluster_sectors, 2});
    open(read_only);
  }
  ~Exported() {
    try {
      stop();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "stopping the export: " << e.what();
    }
  }
  void open(bool read_only) {
    stack = ploop::open_disk(*storage, descriptor(),
                             read_only ? ploop::OpenMode::kReadOnly : ploop::OpenMode::kReadWrite);
    std::filesystem::create_directories(mnt());
    exp = std::make_unique<shim::FuseExport>(*stack, mnt(), read_only);
    exp->start();
  }
  // Unmounts and closes the image cleanly.
  void stop() {
    if (exp) exp->stop();
    exp.reset();
    if (stack) stack->close();
    stack.reset();
  }
  // The whole disk as the library reads it from the image (after stop()).
  std::vector<uint8_t> image_contents() {
    auto s = ploop::open_disk(*storage, descriptor(), ploop::OpenMode::kReadOnly);
    std::vector<uint8_t> v(s->size());
    s->read(v.data(), 0, v.size());
    s->close();
    return v;
  }
  std::string image() const { return dir / "root.hds"; }
  std::string descriptor() const { return dir / "DiskDescriptor.xml"; }
  std::string mnt() const { return dir / "mnt"; }
  std::string file() const { return exp->file(); }

  testutil::TempDir dir;  // destroyed last, after the mount is gone
  std::unique_ptr<ploop::Storage> storage;
  std::unique_ptr<ploop::Stack> stack;
  std::unique_ptr<shim::FuseExport> exp;
};

bool is_mount_point(const std::string& dir) {
  struct stat a, b;
  if (::stat(dir.c_str(), &a) != 0) return false;
  if (::stat((dir + "/..").c_str(), &b) != 0) return false;
  return a.st_dev != b.st_dev;
}

// ---------------------------------------------------------------------------------------------
// The file itself

class FuseExportFile : public ::testing::TestWithParam<bool> {};  // param: O_DIRECT image storage

TEST_P(FuseExportFile, ReadWriteConcurrencyFallocateAndEnd) {
  SKIP_WITHOUT_FUSE();
  Exported e(48 * kMiB, 128, GetParam());  // 64 KiB clusters: many cluster boundaries
  const uint64_t size = e.stack->size();
  const std::string file = e.file();
  EXPECT_EQ(file, e.mnt() + "/disk");
  std::vector<uint8_t> model(size, 0);
  std::mt19937_64 rng(20240611);

  // The mount: one directory holding `disk`, 0600, of the disk's size.
  struct stat st;
  ASSERT_EQ(::stat(file.c_str(), &st), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
  ASSERT_EQ(::stat(e.mnt().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  std::vector<std::string> names;
  for (const auto& ent : std::filesystem::directory_iterator(e.mnt())) names.push_back(ent.path().filename());
  EXPECT_EQ(names, std::vector<std::string>{"disk"});
  struct statvfs sv;
  ASSERT_EQ(::statvfs(e.mnt().c_str(), &sv), 0);
  EXPECT_EQ(sv.f_bsize, 4096u);
  EXPECT_EQ(sv.f_blocks * sv.f_frsize, size);

  int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << std::strerror(errno);

  // Buffered: random lengths at random offsets, not aligned to anything.
  std::vector<uint8_t> buf(3 * kMiB), back(3 * kMiB);
  for (int i = 0; i < 300; ++i) {
    size_t len = 1 + rng() % (i % 10 == 0 ? 3 * kMiB : 200 * 1024);
    uint64_t off = rng() % (size - len + 1);
    fill_random(rng, buf.data(), len);
    ASSERT_EQ(::pwrite(fd, buf.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len)) << std::strerror(errno);
    std::memcpy(&model[off], buf.data(), len);
    size_t rlen = 1 + rng() % (2 * kMiB);
    uint64_t roff = rng() % (size - rlen + 1);
    ASSERT_EQ(::pread(fd, back.data(), rlen, static_cast<off_t>(roff)), static_cast<ssize_t>(rlen));
    ASSERT_TRUE(same_bytes(back.data(), &model[roff], rlen, roff)) << "buffered iteration " << i;
  }

  // O_DIRECT, aligned buffers, offsets and lengths.
  int dfd = ::open(file.c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(dfd, 0) << "O_DIRECT open: " << std::strerror(errno);
  AlignedBuf abuf(4 * kMiB), aback(4 * kMiB);
  for (int i = 0; i < 100; ++i) {
    uint64_t off = rng() % (size / 4096) * 4096;
    size_t len = std::min<size_t>(4096 * (1 + rng() % 1024), size - off);
    fill_random(rng, abuf.p, len);
    ASSERT_EQ(::pwrite(dfd, abuf.p, len, static_cast<off_t>(off)), static_cast<ssize_t>(len)) << std::strerror(errno);
    std::memcpy(&model[off], abuf.p, len);
    ASSERT_EQ(::pread(dfd, aback.p, len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    ASSERT_TRUE(same_bytes(aback.p, &model[off], len, off)) << "O_DIRECT iteration " << i;
    // ... and the buffered descriptor sees the same bytes at once (no stale page cache).
    ASSERT_EQ(::pread(fd, back.data(), 4096, static_cast<off_t>(off)), 4096);
    ASSERT_TRUE(same_bytes(back.data(), &model[off], 4096, off));
  }

  // Concurrent writers on disjoint stripes that share clusters (stripes of 20 KiB + 4 KiB-aligned
  // in O_DIRECT threads, odd sizes in buffered ones), each thread on its own descriptor, while a
  // reader reads everywhere.
  {
    constexpr int kThreads = 8;
    constexpr uint64_t kStripe = 20 * 1024;
    const uint64_t stripes = (size + kStripe - 1) / kStripe;
    auto stripe_data = [&](uint64_t s) { return random_bytes(std::min(kStripe, size - s * kStripe), 1000 + s); };
    std::atomic<int> failures{0};
    std::atomic<bool> writing{true};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        bool direct = t % 2 == 0;
        int tfd = ::open(file.c_str(), O_RDWR | (direct ? O_DIRECT : 0));
        if (tfd < 0) {
          ++failures;
          return;
        }
        AlignedBuf tb(kStripe);
        std::vector<uint64_t> mine;
        for (uint64_t s = static_cast<uint64_t>(t); s < stripes; s += kThreads) mine.push_back(s);
        std::shuffle(mine.begin(), mine.end(), std::mt19937_64(static_cast<uint64_t>(t)));
        for (uint64_t s : mine) {
          auto d = stripe_data(s);
          std::memcpy(tb.p, d.data(), d.size());
          if (!full_pwrite(tfd, tb.p, d.size(), s * kStripe)) ++failures;
        }
        ::close(tfd);
      });
    }
    std::thread reader([&] {
      std::mt19937_64 r(7);
      std::vector<uint8_t> rb(kMiB);
      int rfd = ::open(file.c_str(), O_RDONLY);
      while (writing) {
        uint64_t off = r() % (size - kMiB);
        if (::pread(rfd, rb.data(), rb.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(rb.size())) ++failures;
      }
      ::close(rfd);
    });
    for (auto& th : threads) th.join();
    writing = false;
    reader.join();
    ASSERT_EQ(failures.load(), 0);
    for (uint64_t s = 0; s < stripes; ++s) {
      auto d = stripe_data(s);
      std::memcpy(&model[s * kStripe], d.data(), d.size());
    }
  }
  ASSERT_EQ(::fsync(fd), 0) << std::strerror(errno);
  ASSERT_EQ(::fdatasync(dfd), 0) << std::strerror(errno);

  // fallocate: punched and zeroed ranges read back as zeros, whole and partial clusters alike.
  auto zero_model = [&](uint64_t off, uint64_t len) { std::memset(&model[off], 0, len); };
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 3 * kMiB + 1234, 5 * kMiB + 777), 0)
      << std::strerror(errno);
  zero_model(3 * kMiB + 1234, 5 * kMiB + 777);
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 10 * kMiB, 100), 0);  // inside one cluster
  zero_model(10 * kMiB, 100);
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_ZERO_RANGE, 20 * kMiB + 100, 3 * kMiB), 0) << std::strerror(errno);
  zero_model(20 * kMiB + 100, 3 * kMiB);
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 30 * kMiB - 5, 10), 0);
  zero_model(30 * kMiB - 5, 10);
  // Punching across the end zeroes the part inside and ignores the rest, like a regular file.
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(size - 5000), 10000), 0);
  zero_model(size - 5000, 5000);
  EXPECT_EQ(::fallocate(fd, 0, 0, static_cast<off_t>(size)), 0);  // preallocation inside: nothing to do
  EXPECT_EQ(::fallocate(fd, 0, static_cast<off_t>(size - 4096), 8192), -1);
  EXPECT_EQ(errno, ENOSPC);
  EXPECT_EQ(::fallocate(fd, FALLOC_FL_ZERO_RANGE, static_cast<off_t>(size - 4096), 8192), -1);
  EXPECT_EQ(errno, ENOSPC);
  EXPECT_EQ(::fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, 64 * 1024), -1);
  EXPECT_TRUE(errno == EOPNOTSUPP || errno == EINVAL) << std::strerror(errno);
  ASSERT_TRUE(verify_direct(file, model.data(), size, 0));

  // The end of the disk: reads stop there, writes past it fail and change nothing.
  std::memset(buf.data(), 0xAB, 8192);
  EXPECT_EQ(::pwrite(fd, buf.data(), 4096, static_cast<off_t>(size)), -1);
  EXPECT_TRUE(errno == ENOSPC || errno == EFBIG) << std::strerror(errno);
  EXPECT_EQ(::pwrite(fd, buf.data(), 200, static_cast<off_t>(size - 100)), -1);
  EXPECT_TRUE(errno == ENOSPC || errno == EFBIG) << std::strerror(errno);
  EXPECT_EQ(::pwrite(dfd, abuf.p, 8192, static_cast<off_t>(size - 4096)), -1);
  EXPECT_TRUE(errno == ENOSPC || errno == EFBIG) << std::strerror(errno);
  EXPECT_EQ(::pwrite(fd, buf.data(), 4096, static_cast<off_t>(size + kMiB)), -1);
  EXPECT_EQ(::pread(fd, back.data(), 4096, static_cast<off_t>(size)), 0);
  EXPECT_EQ(::pread(fd, back.data(), 4096, static_cast<off_t>(size + 10 * kMiB)), 0);
  EXPECT_EQ(::pread(dfd, aback.p, 4096, static_cast<off_t>(size)), 0);
  ASSERT_EQ(::pread(fd, back.data(), 200, static_cast<off_t>(size - 100)), 100);
  EXPECT_TRUE(same_bytes(back.data(), &model[size - 100], 100, size - 100));
  ASSERT_EQ(::pread(dfd, aback.p, 8192, static_cast<off_t>(size - 4096)), 4096);
  EXPECT_TRUE(same_bytes(aback.p, &model[size - 4096], 4096, size - 4096));
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);

  // The size is fixed.
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size / 2)), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size + kMiB)), -1);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  EXPECT_EQ(::open(file.c_str(), O_WRONLY | O_TRUNC), -1);
  EXPECT_EQ(::chmod(file.c_str(), 0666), -1);
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);

  ASSERT_EQ(::fsync(fd), 0);
  ASSERT_TRUE(verify_direct(file, model.data(), size, 0));
  ::close(dfd);
  ::close(fd);

  // The image holds exactly what was written, and is consistent.
  e.stop();
  EXPECT_FALSE(is_mount_point(e.mnt()));
  auto img = e.image_contents();
  ASSERT_EQ(img.size(), size);
  EXPECT_TRUE(same_bytes(img.data(), model.data(), size, 0));
  EXPECT_TRUE(image_is_clean(*e.storage, e.image()));
}

INSTANTIATE_TEST_SUITE_P(FuseExport, FuseExportFile, ::testing::Bool(),
                         [](const auto& p) { return p.param ? "DirectStorage" : "BufferedStorage"; });

TEST(FuseExport, ReadOnly) {
  SKIP_WITHOUT_FUSE();
  testutil::TempDir dir;
  auto storage = ploop::make_posix_storage(false);
  ploop::create_disk(*storage, dir / "root.hds", {8 * kMiB, 2048, 2});
  auto data = random_bytes(8 * kMiB, 5);
  {
    auto s = ploop::open_disk(*storage, dir / "DiskDescriptor.xml", ploop::OpenMode::kReadWrite);
    s->write(data.data(), 0, data.size());
    s->close();
  }
  for (bool ask_read_only : {true, false}) {  // a read-only stack is exported read-only either way
    SCOPED_TRACE(ask_read_only ? "read_only=true" : "read_only=false on a read-only stack");
    auto s = ploop::open_disk(*storage, dir / "DiskDescriptor.xml", ploop::OpenMode::kReadOnly);
    std::filesystem::create_directories(dir / "mnt");
    shim::FuseExport exp(*s, dir / "mnt", ask_read_only);
    exp.start();
    struct stat st;
    ASSERT_EQ(::stat(exp.file().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0400u);
    EXPECT_EQ(::open(exp.file().c_str(), O_RDWR), -1);
    EXPECT_EQ(errno, EROFS);
    int fd = ::open(exp.file().c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    std::vector<uint8_t> back(data.size());
    ASSERT_TRUE(full_pread(fd, back.data(), back.size(), 0));
    EXPECT_TRUE(same_bytes(back.data(), data.data(), data.size(), 0));
    EXPECT_EQ(::pwrite(fd, back.data(), 512, 0), -1);
    EXPECT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096), -1);
    ::close(fd);
    exp.stop();
    s->close();
  }
  EXPECT_TRUE(image_is_clean(*storage, dir / "root.hds"));
}

TEST(FuseExport, StartStopAndBadMountPoints) {
  SKIP_WITHOUT_FUSE();
  testutil::TempDir dir;
  auto storage = ploop::make_posix_storage(false);
  ploop::create_disk(*storage, dir / "root.hds", {4 * kMiB, 2048, 2});
  auto s = ploop::open_disk(*storage, dir / "DiskDescriptor.xml", ploop::OpenMode::kReadWrite);

  EXPECT_THROW(shim::FuseExport(*s, dir / "missing", false).start(), ploop::Error);
  EXPECT_THROW(shim::FuseExport(*s, dir / "root.hds", false).start(), ploop::Error);  // not a directory
  EXPECT_THROW(shim::FuseExport(*s, dir.path, false).start(), ploop::Error);           // not empty

  std::string mnt = dir / "mnt";
  std::filesystem::create_directories(mnt);
  {
    shim::FuseExport exp(*s, mnt, false);
    exp.stop();  // before start: nothing to do
    for (int round = 0; round < 2; ++round) {  // start again after stop
      exp.start();
      EXPECT_TRUE(is_mount_point(mnt));
      EXPECT_THROW(exp.start(), ploop::Error);
      exp.stop();
      exp.stop();  // idempotent
      EXPECT_FALSE(is_mount_point(mnt));
    }
    exp.start();
  }  // the destructor stops it
  EXPECT_FALSE(is_mount_point(mnt));

  // stop() while the file is open waits for the last close instead of cutting the user off.
  {
    shim::FuseExport exp(*s, mnt, false);
    exp.start();
    int fd = ::open(exp.file().c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    std::atomic<bool> stopped{false};
    std::thread stopper([&] {
      exp.stop();
      stopped = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_FALSE(stopped.load());
    char c = 'x';
    EXPECT_EQ(::pwrite(fd, &c, 1, 0), 1);  // still served
    ::close(fd);
    stopper.join();
    EXPECT_FALSE(is_mount_point(mnt));
  }
  s->close();
  EXPECT_TRUE(image_is_clean(*storage, dir / "root.hds"));
}

// ---------------------------------------------------------------------------------------------
// Loop devices on the exported file

struct LoopDevice {
  ~LoopDevice() { detach(); }
  // Returns "" on success, else losetup's complaint.
  std::string attach(const std::string& file, bool direct_io) {
    int rc;
    std::string out = capture(std::string("losetup --find --show ") + (direct_io ? "--direct-io=on " : "") + file, &rc);
    if (rc != 0 || out.rfind("/dev/loop", 0) != 0) return out.empty() ? "exit status " + std::to_string(rc) : out;
    dev = out;
    return "";
  }
  // The kernel's view of direct I/O for this device: "1", "0", or "" if unknown.
  std::string dio() const {
    std::string name = dev.substr(dev.rfind('/') + 1);
    auto v = testutil::read_file("/sys/block/" + name + "/loop/dio");
    std::string s(v.begin(), v.end());
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  void detach() {
    if (dev.empty()) return;
    if (run("losetup -d " + dev) != 0) ADD_FAILURE() << "losetup -d " << dev << " failed";
    dev.clear();
  }
  std::string dev;
};

struct Mounted {
  ~Mounted() { unmount(); }
  bool mount(const std::string& dev, const std::string& at, const std::string& opts = "") {
    std::filesystem::create_directories(at);
    if (run("mount -t ext4 " + (opts.empty() ? "" : "-o " + opts + " ") + dev + " " + at) != 0) return false;
    dir = at;
    return true;
  }
  void unmount() {
    if (dir.empty()) return;
    if (run("umount " + dir) != 0) ADD_FAILURE() << "umount " << dir << " failed";
    dir.clear();
  }
  std::string dir;
};

class FuseExportLoop : public ::testing::TestWithParam<bool> {};  // param: losetup --direct-io=on

#define ATTACH_OR_SKIP(loop, file, dio)                                                              \
  do {                                                                                               \
    std::string why = (loop).attach(file, dio);                                                      \
    if (!why.empty()) GTEST_SKIP() << "losetup failed (no loop devices here?): " << why;             \
    EXPECT_EQ((loop).dio(), (dio) ? "1" : "0") << (loop).dev << ": direct I/O state";               \
  } while (0)

TEST_P(FuseExportLoop, PatternsThroughLoopDevice) {
  SKIP_WITHOUT_FUSE();
  const bool dio = GetParam();
  Exported e(96 * kMiB);
  const uint64_t size = e.stack->size();
  std::vector<uint8_t> expect(size, 0);
  LoopDevice loop;
  ATTACH_OR_SKIP(loop, e.file(), dio);
  const std::string dev = loop.dev;

  // 1. 64 MiB with dd oflag=direct bs=1M.
  auto p1 = random_bytes(64 * kMiB, 11);
  {
    std::string pf = e.dir / "p1.bin";
    int fd = ::open(pf.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_TRUE(full_pwrite(fd, p1.data(), p1.size(), 0));
    ::close(fd);
    ASSERT_EQ(run("dd if=" + pf + " of=" + dev + " bs=1M seek=8 oflag=direct conv=fsync,notrunc status=none"), 0);
    std::memcpy(&expect[8 * kMiB], p1.data(), p1.size());
  }
  ASSERT_TRUE(verify_direct(dev, expect.data(), size, 0));
  ASSERT_TRUE(verify_direct(e.file(), expect.data(), size, 0));

  // 2. Buffered writes from several threads at once, on stripes of an odd size (neighbouring
  //    stripes share pages and clusters), each thread on its own descriptor; then fsync and sync.
  {
    auto p2 = random_bytes(64 * kMiB, 22);
    const uint64_t base = 20 * kMiB, stripe = 61 * 1024 + 1000;
    const uint64_t stripes = (p2.size() + stripe - 1) / stripe;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&, t] {
        int fd = ::open(dev.c_str(), O_WRONLY);
        if (fd < 0) {
          ++failures;
          return;
        }
        std::vector<uint64_t> mine;
        for (uint64_t s = static_cast<uint64_t>(t); s < stripes; s += 6) mine.push_back(s);
        std::shuffle(mine.begin(), mine.end(), std::mt19937_64(static_cast<uint64_t>(t) + 99));
        for (uint64_t s : mine) {
          uint64_t off = s * stripe, n = std::min<uint64_t>(stripe, p2.size() - off);
          if (!full_pwrite(fd, &p2[off], n, base + off)) ++failures;
        }
        if (::fsync(fd) != 0) ++failures;
        ::close(fd);
      });
    }
    for (auto& th : threads) th.join();
    ASSERT_EQ(failures.load(), 0);
    ASSERT_EQ(run("sync"), 0);
    std::memcpy(&expect[base], p2.data(), p2.size());
  }
  ASSERT_TRUE(verify_direct(dev, expect.data(), size, 0));
  ASSERT_TRUE(verify_direct(e.file(), expect.data(), size, 0));

  // 3. Buffered writes from several processes at once (dd without oflag=direct), then sync.
  {
    auto p3 = random_bytes(64 * kMiB, 33);
    std::string pf = e.dir / "p3.bin";
    int fd = ::open(pf.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_TRUE(full_pwrite(fd, p3.data(), p3.size(), 0));
    ::close(fd);
    // Four processes, each writing every fourth 256 KiB block of a 64 MiB range starting at 32 MiB.
    std::string script = "pids=; for i in 0 1 2 3; do ( b=$i; while [ $b -lt 256 ]; do "
                         "dd if=" + pf + " of=" + dev + " bs=256K skip=$b seek=$((b + 128)) count=1 "
                         "conv=notrunc status=none || exit 1; b=$((b + 4)); done ) & pids=\"$pids $!\"; done; "
                         "rc=0; for p in $pids; do wait $p || rc=1; done; sync && exit $rc";
    ASSERT_EQ(run("bash -c '" + script + "'"), 0);
    std::memcpy(&expect[32 * kMiB], p3.data(), p3.size());
  }
  ASSERT_TRUE(verify_direct(dev, expect.data(), size, 0));
  ASSERT_TRUE(verify_direct(e.file(), expect.data(), size, 0));

  // 4. Discard through the loop device (fallocate punch hole on the file) reads back as zeros.
  ASSERT_EQ(run("blkdiscard -o " + std::to_string(40 * kMiB) + " -l " + std::to_string(8 * kMiB) + " " + dev), 0);
  std::memset(&expect[40 * kMiB], 0, 8 * kMiB);
  ASSERT_TRUE(verify_direct(dev, expect.data(), size, 0));

  loop.detach();
  e.stop();
  auto img = e.image_contents();
  EXPECT_TRUE(same_bytes(img.data(), expect.data(), size, 0));
  EXPECT_TRUE(image_is_clean(*e.storage, e.image()));
}

TEST_P(FuseExportLoop, Ext4OnLoopDevice) {
  SKIP_WITHOUT_FUSE();
  if (run("command -v mkfs.ext4 e2fsck >/dev/null") != 0) GTEST_SKIP() << "mkfs.ext4 or e2fsck is missing";
  const bool dio = GetParam();
  Exported e(128 * kMiB);
  std::map<std::string, std::vector<uint8_t>> files;
  {
    LoopDevice loop;
    ATTACH_OR_SKIP(loop, e.file(), dio);
    ASSERT_EQ(run("mkfs.ext4 -q -F " + loop.dev), 0);
    Mounted m;
    ASSERT_TRUE(m.mount(loop.dev, e.dir / "ext")) << "mount -t ext4 " << loop.dev;
    std::mt19937_64 rng(77);
    for (int d = 0; d < 8; ++d) {
      std::string sub = "dir" + std::to_string(d) + "/sub" + std::to_string(d % 3);
      std::filesystem::create_directories(m.dir + "/" + sub);
      for (int f = 0; f < 12; ++f) {
        std::string rel = sub + "/file" + std::to_string(f);
        size_t n = rng() % (f == 0 ? 4 * kMiB : 300 * 1024);
        files[rel] = random_bytes(n, rng());
      }
    }
    files["big"] = random_bytes(24 * kMiB, 4242);
    // Written by several threads at once.
    std::vector<std::thread> writers;
    std::vector<const std::pair<const std::string, std::vector<uint8_t>>*> all;
    for (const auto& kv : files) all.push_back(&kv);
    std::atomic<int> failures{0};
    for (int t = 0; t < 4; ++t) {
      writers.emplace_back([&, t] {
        for (size_t i = static_cast<size_t>(t); i < all.size(); i += 4) {
          std::string p = m.dir + "/" + all[i]->first;
          int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
          if (fd < 0 || (!all[i]->second.empty() && !full_pwrite(fd, all[i]->second.data(), all[i]->second.size(), 0))) {
            ++failures;
          }
          if (fd >= 0) ::close(fd);
        }
      });
    }
    for (auto& th : writers) th.join();
    ASSERT_EQ(failures.load(), 0);
    ASSERT_EQ(run("rm -rf " + m.dir + "/dir7"), 0);  // some frees (and discards) too
    std::erase_if(files, [](const auto& kv) { return kv.first.rfind("dir7/", 0) == 0; });
    ASSERT_EQ(run("fstrim " + m.dir + " >/dev/null 2>&1 || true"), 0);
    m.unmount();
    int rc;
    std::string out = capture("e2fsck -fn " + loop.dev, &rc);
    EXPECT_EQ(rc, 0) << "e2fsck -fn " << loop.dev << ":\n" << out;
    loop.detach();
  }
  e.stop();
  EXPECT_TRUE(image_is_clean(*e.storage, e.image()));

  // Export the image again on a fresh loop device: the file system must be there, whole.
  e.open(false);
  LoopDevice loop;
  ATTACH_OR_SKIP(loop, e.file(), dio);
  int rc;
  std::string out = capture("e2fsck -fn " + loop.dev, &rc);
  EXPECT_EQ(rc, 0) << "e2fsck -fn after re-export:\n" << out;
  {
    Mounted m;
    ASSERT_TRUE(m.mount(loop.dev, e.dir / "ext", "ro"));
    for (const auto& [rel, data] : files) {
      auto got = testutil::read_file(m.dir + "/" + rel);
      ASSERT_EQ(got.size(), data.size()) << rel;
      ASSERT_TRUE(same_bytes(got.data(), data.data(), data.size(), 0)) << rel;
    }
    EXPECT_FALSE(std::filesystem::exists(m.dir + "/dir7"));
  }
  loop.detach();
  e.stop();
  EXPECT_TRUE(image_is_clean(*e.storage, e.image()));
}

INSTANTIATE_TEST_SUITE_P(FuseExport, FuseExportLoop, ::testing::Bool(),
                         [](const auto& p) { return p.param ? "DirectIO" : "BufferedIO"; });

}  // namespace
