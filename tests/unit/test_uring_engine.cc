#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "ploop/disk.h"
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
