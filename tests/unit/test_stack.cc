#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "ploop/delta.h"
#include "ploop/error.h"
#include "ploop/fault_storage.h"
#include "ploop/stack.h"
#include "test_util.h"

using namespace ploop;
using testutil::pattern;

namespace {

constexpr uint32_t kCs = 64;  // 32 KiB
constexpr uint64_t kC = 32768;
constexpr uint64_t kDisk = 4 << 20;

std::unique_ptr<Stack> single(FaultStorage& fs) {
  if (!fs.exists("base")) Delta::create(fs, "base", kDisk, kCs)->close();
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "base", OpenMode::kReadWrite));
  return std::make_unique<Stack>(std::move(v));
}

// base (read-only, holding data) under a new empty writable top.
std::unique_ptr<Stack> two_level(FaultStorage& fs) {
  if (!fs.exists("top")) Delta::create(fs, "top", kDisk, kCs)->close();
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "base", OpenMode::kReadOnly));
  v.push_back(Delta::open(fs, "top", OpenMode::kReadWrite));
  return std::make_unique<Stack>(std::move(v));
}

std::vector<uint8_t> read(Stack& s, uint64_t off, size_t n) {
  std::vector<uint8_t> b(n);
  s.read(b.data(), off, n);
  return b;
}

bool zeros(const std::vector<uint8_t>& b) {
  for (auto x : b) {
    if (x) return false;
  }
  return true;
}

}  // namespace

TEST(Stack, UnwrittenDiskReadsZeros) {
  FaultStorage fs;
  auto s = single(fs);
  EXPECT_TRUE(zeros(read(*s, 0, kDisk)));
}

TEST(Stack, WriteReadBackAcrossClusterBoundaries) {
  FaultStorage fs;
  auto s = single(fs);
  auto data = pattern(3 * kC, 7);
  s->write(data.data(), kC / 2, data.size());
  EXPECT_EQ(read(*s, kC / 2, data.size()), data);
  EXPECT_TRUE(zeros(read(*s, 0, kC / 2)));
  s->close();
  auto s2 = single(fs);
  EXPECT_EQ(read(*s2, kC / 2, data.size()), data);
  s2->close();
}

TEST(Stack, AllZeroWriteToUnallocatedClusterAllocatesNothing) {
  FaultStorage fs;
  auto s = single(fs);
  std::vector<uint8_t> z(kC, 0);
  s->write(z.data(), 0, kC);
  EXPECT_EQ(s->top().mapped_clusters(), 0u);
  s->close();
}

TEST(Stack, PartialWriteOverLowerDeltaCopiesTheWholeClusterUp) {
  FaultStorage fs;
  {
    auto s = single(fs);
    auto base = pattern(kC, 1);
    s->write(base.data(), 0, kC);
    s->close();
  }
  auto s = two_level(fs);
  auto small = pattern(4096, 9);
  s->write(small.data(), 8192, 4096);
  auto want = pattern(kC, 1);
  std::memcpy(want.data() + 8192, small.data(), 4096);
  EXPECT_EQ(read(*s, 0, kC), want);
  EXPECT_EQ(s->top().mapped_clusters(), 1u);
  s->close();
  // The base is untouched; reopening the chain reads the same.
  auto s2 = two_level(fs);
  EXPECT_EQ(read(*s2, 0, kC), want);
  EXPECT_EQ(s2->delta(0).mapped_clusters(), 1u);
  s2->close();
}

TEST(Stack, ReadsFallThroughToTheHighestOwner) {
  FaultStorage fs;
  {
    auto s = single(fs);
    auto a = pattern(2 * kC, 1);
    s->write(a.data(), 0, 2 * kC);
    s->close();
  }
  auto s = two_level(fs);
  auto b = pattern(kC, 2);
  s->write(b.data(), kC, kC);
  EXPECT_EQ(read(*s, 0, kC), pattern(kC, 1));
  EXPECT_EQ(read(*s, kC, kC), b);
  EXPECT_TRUE(zeros(read(*s, 2 * kC, kC)));
  Stack::Extent e = s->status(0, kDisk);
  EXPECT_TRUE(e.allocated);
  EXPECT_EQ(e.length, 2 * kC);
  EXPECT_EQ(e.level, 0);
  e = s->status(2 * kC, kDisk - 2 * kC);
  EXPECT_FALSE(e.allocated);
  EXPECT_EQ(e.length, kDisk - 2 * kC);
  s->close();
}

TEST(Stack, DiscardReleasesTopOnlyClusters) {
  FaultStorage fs;
  auto s = single(fs);
  auto a = pattern(4 * kC, 3);
  s->write(a.data(), 0, a.size());
  s->flush();
  s->discard(kC / 2, 2 * kC);  // covers cluster 1 fully, 0 and 2 partly
  EXPECT_EQ(s->top().mapped_clusters(), 3u);
  EXPECT_TRUE(zeros(read(*s, kC, kC)));
  EXPECT_EQ(read(*s, 0, kC), std::vector<uint8_t>(a.begin(), a.begin() + kC));
  s->flush();
  // The released cluster is reused by the next allocation instead of growing the file.
  auto size_before = fs.contents("base").size();
  auto b = pattern(kC, 4);
  s->write(b.data(), 10 * kC, kC);
  EXPECT_EQ(fs.contents("base").size(), size_before);
  s->close();
}

TEST(Stack, DiscardDoesNotExposeLowerData) {
  FaultStorage fs;
  {
    auto s = single(fs);
    auto a = pattern(kC, 5);
    s->write(a.data(), 0, kC);
    s->close();
  }
  auto s = two_level(fs);
  auto b = pattern(kC, 6);
  s->write(b.data(), 0, kC);
  s->discard(0, kC);  // the top cluster masks the base: it must stay
  EXPECT_EQ(read(*s, 0, kC), b);
  s->close();
}

TEST(Stack, WriteZeroesMasksLowerDeltas) {
  FaultStorage fs;
  {
    auto s = single(fs);
    auto a = pattern(3 * kC, 5);
    s->write(a.data(), 0, a.size());
    s->close();
  }
  auto s = two_level(fs);
  s->write_zeroes(0, kC);             // whole cluster over the base
  s->write_zeroes(kC + 512, 1024);    // partial
  EXPECT_TRUE(zeros(read(*s, 0, kC)));
  auto c1 = read(*s, kC, kC);
  auto want = pattern(3 * kC, 5);
  std::memset(want.data() + kC + 512, 0, 1024);
  EXPECT_EQ(c1, std::vector<uint8_t>(want.begin() + kC, want.begin() + 2 * kC));
  s->close();
  auto s2 = two_level(fs);
  EXPECT_TRUE(zeros(read(*s2, 0, kC)));
  s2->close();
}

TEST(Stack, WriteZeroesReleasesTopOnlyClusters) {
  FaultStorage fs;
  auto s = single(fs);
  auto a = pattern(2 * kC, 8);
  s->write(a.data(), 0, a.size());
  s->write_zeroes(0, 2 * kC);
  EXPECT_EQ(s->top().mapped_clusters(), 0u);
  EXPECT_TRUE(zeros(read(*s, 0, 2 * kC)));
  s->close();
}

TEST(Stack, OutOfRangeRequestsAreRefused) {
  FaultStorage fs;
  auto s = single(fs);
  std::vector<uint8_t> b(4096);
  EXPECT_THROW(s->read(b.data(), kDisk, 1), Error);
  EXPECT_THROW(s->write(b.data(), kDisk - 1024, 4096), Error);
  EXPECT_THROW(s->read(b.data(), UINT64_MAX - 10, 4096), Error);
  EXPECT_THROW(s->discard(kDisk, 1), Error);
  s->close();
}

TEST(Stack, ReadOnlyStackRefusesWrites) {
  FaultStorage fs;
  single(fs)->close();
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "base", OpenMode::kReadOnly));
  Stack s(std::move(v));
  std::vector<uint8_t> b(4096, 1);
  EXPECT_THROW(s.write(b.data(), 0, 4096), Error);
}

TEST(Stack, MismatchedClusterSizesAreRefused) {
  FaultStorage fs;
  Delta::create(fs, "a", kDisk, 64)->close();
  Delta::create(fs, "b", kDisk, 128)->close();
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "a", OpenMode::kReadOnly));
  v.push_back(Delta::open(fs, "b", OpenMode::kReadWrite));
  EXPECT_THROW(Stack s(std::move(v)), Error);
}

TEST(Stack, LowerLargerThanTopIsRefused) {
  FaultStorage fs;
  Delta::create(fs, "a", 2 * kDisk, kCs)->close();
  Delta::create(fs, "b", kDisk, kCs)->close();
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "a", OpenMode::kReadOnly));
  v.push_back(Delta::open(fs, "b", OpenMode::kReadWrite));
  EXPECT_THROW(Stack s(std::move(v)), Error);
}

TEST(Stack, ConcurrentWritersToOneUnallocatedCluster) {
  FaultStorage fs;
  {
    auto s = single(fs);
    auto a = pattern(kC, 11);
    s->write(a.data(), 0, kC);
    s->close();
  }
  auto s = two_level(fs);
  // Eight threads each write their own 4 KiB of the same cluster, which the top does not own:
  // every write must survive the copy-up race.
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      auto d = pattern(4096, static_cast<uint8_t>(100 + t));
      s->write(d.data(), t * 4096, 4096);
    });
  }
  for (auto& t : ts) t.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(read(*s, t * 4096, 4096), pattern(4096, static_cast<uint8_t>(100 + t)));
  EXPECT_EQ(s->top().mapped_clusters(), 1u);
  s->close();
}

TEST(Stack, ConcurrentRandomWritersAndReaders) {
  FaultStorage fs;
  auto s = single(fs);
  constexpr int kThreads = 4;
  // Each thread owns a disjoint set of 4 KiB blocks (block % kThreads == t) and checks its reads.
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      std::vector<uint8_t> last(kDisk / 4096, 0);
      uint32_t x = 12345 + t;
      for (int i = 0; i < 400; ++i) {
        x = x * 1103515245 + 12345;
        uint64_t blk = ((x >> 8) % (kDisk / 4096 / kThreads)) * kThreads + t;
        auto d = pattern(4096, static_cast<uint8_t>(i));
        s->write(d.data(), blk * 4096, 4096);
        last[blk] = static_cast<uint8_t>(i);
        if (i % 3 == 0) s->discard(0, 0);
        if (read(*s, blk * 4096, 4096) != d) ++bad;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  s->close();
}

TEST(Stack, FixtureChainReadsWhatOpenVZAndQemuWrote) {
  FaultStorage fs;
  fs.import_file("base", testutil::read_file(testutil::fixture("chain/root.hdd")));
  fs.import_file("top", testutil::read_file(testutil::fixture("chain/root.hdd.{ae0b1c9f-2600-42e6-b369-5806da621702}")));
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "base", OpenMode::kReadOnly));
  v.push_back(Delta::open(fs, "top", OpenMode::kReadOnly));
  Stack s(std::move(v));
  constexpr uint64_t M = 1 << 20;
  auto expect_fill = [&](uint64_t off, uint8_t val) {
    auto b = read(s, off, M);
    EXPECT_EQ(b, std::vector<uint8_t>(M, val)) << "at " << off;
  };
  expect_fill(0, 0xa1);
  expect_fill(M, 0xc3);
  expect_fill(10 * M, 0xb2);
  expect_fill(20 * M, 0xd4);
  expect_fill(5 * M, 0);
  expect_fill(63 * M, 0);
}

TEST(Stack, QemuFixtureReadsBack) {
  FaultStorage fs;
  fs.import_file("q", testutil::read_file(testutil::fixture("qemu/disk.hds")));
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "q", OpenMode::kReadOnly));
  Stack s(std::move(v));
  constexpr uint64_t M = 1 << 20;
  EXPECT_EQ(read(s, 0, M), std::vector<uint8_t>(M, 0xa1));
  EXPECT_EQ(read(s, M, M), std::vector<uint8_t>(M, 0xc3));
  EXPECT_EQ(read(s, 30 * M, 4096), std::vector<uint8_t>(4096, 0xe5));
  EXPECT_TRUE(zeros(read(s, 30 * M + 4096, M - 4096)));
}
