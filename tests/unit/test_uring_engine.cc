#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include <sys/socket.h>
#include <unistd.h>

#include "ploop/disk.h"
#include "ploop/fault_storage.h"
#include "ploop/uring_engine.h"
#include "test_util.h"

using namespace ploop;

namespace {

struct AlignedBuf {
  explicit AlignedBuf(size_t n) : size(n) { p = static_cast<uint8_t*>(aligned_alloc(4096, n)); }
  ~AlignedBuf() { free(p); }
  uint8_t* p;
  size_t size;
};

}  // namespace

// Random reads and writes (fast path and copy-up path mixed) through io_uring on real files,
// O_DIRECT, checked against an in-memory model of the disk.
TEST(UringEngine, MatchesAModelUnderMixedLoad) {
  testutil::TempDir dir;
  auto st = make_posix_storage(true);
  constexpr uint64_t kDisk = 16 << 20, kBlk = 4096;
  std::string dd = create_disk(*st, dir / "root.hds", {kDisk, 128, 2});  // 64 KiB clusters
  auto stack = open_disk(*st, dd, OpenMode::kReadWrite);
  std::vector<uint8_t> model(kDisk, 0);
  {
    UringEngine eng(*stack, 32);
    std::mt19937_64 rng(7);
    constexpr int kSlots = 32;
    std::vector<std::unique_ptr<AlignedBuf>> bufs;
    for (int i = 0; i < kSlots; ++i) bufs.push_back(std::make_unique<AlignedBuf>(4 * kBlk));
    std::vector<bool> busy(kSlots, false);
    std::vector<uint64_t> blocks_busy;  // keep overlapping requests out of flight together
    int errors = 0, mismatches = 0;
    for (int op = 0; op < 4000; ++op) {
      int slot = -1;
      while (slot < 0) {
        for (int i = 0; i < kSlots; ++i) {
          if (!busy[i]) {
            slot = i;
            break;
          }
        }
        if (slot < 0) eng.poll(true);
      }
      uint64_t nblk = 1 + rng() % 4;
      uint64_t blk = (rng() % (kDisk / kBlk - nblk));
      // Serialise overlapping requests: the model cannot order concurrent overlaps.
      while (true) {
        bool clash = false;
        for (uint64_t b : blocks_busy) clash |= b + 4 > blk && b < blk + nblk;
        if (!clash) break;
        eng.poll(true);
      }
      busy[slot] = true;
      blocks_busy.push_back(blk);
      uint8_t* p = bufs[slot]->p;
      auto done_common = [&, slot, blk] {
        busy[slot] = false;
        blocks_busy.erase(std::find(blocks_busy.begin(), blocks_busy.end(), blk));
      };
      uint32_t len = static_cast<uint32_t>(nblk * kBlk);
      if (rng() % 2) {
        for (uint32_t i = 0; i < len; ++i) p[i] = static_cast<uint8_t>(op + i / 512);
        std::memcpy(&model[blk * kBlk], p, len);
        eng.write(p, blk * kBlk, len, rng() % 50 == 0, [&, done_common](int err) {
          errors += err != 0;
          done_common();
        });
      } else {
        std::vector<uint8_t> want(model.begin() + static_cast<long>(blk * kBlk),
                                  model.begin() + static_cast<long>(blk * kBlk + len));
        eng.read(p, blk * kBlk, len, [&, done_common, p, want, len](int err) {
          errors += err != 0;
          mismatches += std::memcmp(p, want.data(), len) != 0;
          done_common();
        });
      }
      if (op % 500 == 0) eng.flush([&](int err) { errors += err != 0; });
    }
    while (eng.in_flight()) eng.poll(true);
    EXPECT_EQ(errors, 0);
    EXPECT_EQ(mismatches, 0);
    int bad = -1;
    eng.read(bufs[0]->p, kDisk, 4096, [&](int err) { bad = err; });
    while (eng.in_flight()) eng.poll(true);
    EXPECT_EQ(bad, EINVAL);
  }
  stack->close();
  auto again = open_disk(*st, dd, OpenMode::kReadOnly);
  AlignedBuf all(kDisk);
  again->read(all.p, 0, kDisk);
  EXPECT_EQ(0, std::memcmp(all.p, model.data(), kDisk));
}

// Requests O_DIRECT cannot take as they are (offsets, lengths or buffers not sector-aligned) are
// still served exactly, through the bouncing synchronous path.
TEST(UringEngine, UnalignedRequestsOnDirectFilesAreServed) {
  testutil::TempDir dir;
  auto st = make_posix_storage(true);
  constexpr uint64_t kDisk = 4 << 20;
  std::string dd = create_disk(*st, dir / "root.hds", {kDisk, 128, 2});
  auto stack = open_disk(*st, dd, OpenMode::kReadWrite);
  std::vector<uint8_t> pattern(70000);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 7 + 3);
  {
    UringEngine eng(*stack, 8);
    AlignedBuf wbuf(1 << 17), rbuf(1 << 17);
    // Allocating write (worker path), then an unaligned overwrite of the now-mapped cluster.
    std::memcpy(wbuf.p, pattern.data(), pattern.size());
    int e1 = -1, e2 = -1, e3 = -1;
    eng.write(wbuf.p, 4096, 65536, false, [&](int e) { e1 = e; });
    while (eng.in_flight()) eng.poll(true);
    eng.write(wbuf.p + 1, 4096 + 100, 3001, false, [&](int e) { e2 = e; });  // odd buffer, offset, length
    while (eng.in_flight()) eng.poll(true);
    eng.read(rbuf.p + 3, 4096 + 99, 3003, [&](int e) { e3 = e; });
    while (eng.in_flight()) eng.poll(true);
    EXPECT_EQ(e1, 0);
    EXPECT_EQ(e2, 0);
    EXPECT_EQ(e3, 0);
    std::vector<uint8_t> want(3003);
    want[0] = pattern[99];
    std::memcpy(want.data() + 1, pattern.data() + 1, 3001);
    want[3002] = pattern[100 + 3001];
    EXPECT_EQ(0, std::memcmp(rbuf.p + 3, want.data(), want.size()));
  }
  stack->close();
}

// watch(): a descriptor's readiness is reported by the same poll() that reports I/O; a writable
// watch with a timeout reports ECANCELED when the peer never makes room; unwatch() cancels.
TEST(UringEngine, WatchesDescriptorsInTheSamePoll) {
  ploop::FaultStorage fs;
  create_disk(fs, "root.hds", {1 << 20, 128, 2});
  auto stack = open_disk(fs, "DiskDescriptor.xml", OpenMode::kReadWrite);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  {
    UringEngine eng(*stack, 8);
    int got = -1;
    eng.watch(sv[0], UringEngine::kReadable, [&](int e) { got = e; });
    EXPECT_EQ(eng.poll(false), 0u);
    EXPECT_EQ(got, -1);
    ASSERT_EQ(::write(sv[1], "x", 1), 1);
    while (got == -1) eng.poll(true);
    EXPECT_EQ(got, 0);

    // Fill the socket until it refuses more, then wait for room that never comes.
    std::vector<char> chunk(1 << 16, 'y');
    while (::send(sv[0], chunk.data(), chunk.size(), MSG_DONTWAIT) > 0) {
    }
    int timed = -1;
    eng.watch(sv[0], UringEngine::kWritable, [&](int e) { timed = e; }, 200);
    while (timed == -1) eng.poll(true);
    EXPECT_EQ(timed, ECANCELED);

    int cancelled = -1;
    eng.watch(sv[0], UringEngine::kWritable, [&](int e) { cancelled = e; });
    eng.unwatch();
    while (eng.in_flight()) eng.poll(true);
    EXPECT_EQ(cancelled, ECANCELED);
  }
  ::close(sv[0]);
  ::close(sv[1]);
  stack->close();
}
