// Power loss at many points inside merge, snapshot-delete and resize. After each cut, the
// recovery a user runs (`ploop check -r DD.xml`: check and repair every delta, then finish the
// operation recorded in the descriptor) must leave a chain that opens, checks clean, and reads
// exactly the state before the operation or the state after it.
#include <gtest/gtest.h>

#include <functional>
#include <map>

#include "ploop/check.h"
#include "ploop/descriptor.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/fault_storage.h"
#include "ploop/merge.h"
#include "ploop/paths.h"
#include "ploop/resize.h"
#include "ploop/seal.h"
#include "ploop/session.h"
#include "ploop/snapshot.h"

using namespace ploop;

namespace {

constexpr uint64_t kC = 32768;
constexpr uint64_t kDisk = 64 * kC;
const std::string kDD = "ct/DiskDescriptor.xml";

void write(FaultStorage& fs, uint64_t cluster, uint64_t clusters, uint8_t v, std::vector<uint8_t>& model) {
  auto s = open_disk(fs, kDD, OpenMode::kReadWrite);
  std::vector<uint8_t> b(clusters * kC);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(v + i / 4096);
  s->write(b.data(), cluster * kC + 1024, b.size() - 2048);  // partial first and last cluster
  std::copy(b.begin(), b.end() - 2048, model.begin() + static_cast<long>(cluster * kC + 1024));
  s->close();
}

std::vector<uint8_t> read_disk(FaultStorage& fs, const std::string& guid) {
  auto s = open_disk(fs, kDD, OpenMode::kReadOnly, false, guid);
  std::vector<uint8_t> b(s->size());
  s->read(b.data(), 0, b.size());
  return b;
}

// base S1 <- S2 <- top, each with data of its own and overlaps.
struct Chain {
  std::string s1, s2;
  std::map<std::string, std::vector<uint8_t>> snaps;
  std::vector<uint8_t> top;
};

Chain build(FaultStorage& fs) {
  Chain c;
  create_disk(fs, "ct/root.hds", {kDisk, 64, 2});
  std::vector<uint8_t> m(kDisk, 0);
  write(fs, 0, 10, 0x10, m);
  c.s1 = create_snapshot(fs, kDD);
  c.snaps[c.s1] = m;
  write(fs, 5, 10, 0x40, m);
  c.s2 = create_snapshot(fs, kDD);
  c.snaps[c.s2] = m;
  write(fs, 12, 8, 0x80, m);
  write(fs, 40, 3, 0xc0, m);
  c.top = m;
  return c;
}

// What `ploop check -r DD.xml` does after a crash.
void recover(FaultStorage& fs) {
  Descriptor d = Descriptor::load(fs, kDD);
  for (const auto& im : d.images) {
    CheckReport r = check_delta(fs, join_path("ct", im.file), {true});
    ASSERT_TRUE(r.ok()) << im.file << ": " << (r.findings.empty() ? "" : r.findings.front().text);
  }
  open_session(fs, kDD);  // finishes an interrupted merge or resize
}

void expect_state(FaultStorage& fs, const Chain& c, const std::vector<std::string>& gone_after,
                  const std::function<void(const std::vector<uint8_t>&)>& check_top) {
  Descriptor d = Descriptor::load(fs, kDD);
  for (const auto& sh : d.shots) ASSERT_FALSE(sh.temporary) << "recovery left " << sh.guid << " temporary";
  check_top(read_disk(fs, ""));
  size_t gone = 0;
  for (const auto& [g, want] : c.snaps) {
    if (!d.shot(g)) {
      ASSERT_NE(std::find(gone_after.begin(), gone_after.end(), g), gone_after.end()) << g << " vanished";
      ++gone;
      continue;
    }
    ASSERT_EQ(read_disk(fs, g), want) << "snapshot " << g;
  }
  ASSERT_TRUE(gone == 0 || gone == gone_after.size()) << "a mix of before and after";
  for (const auto& im : d.images) {
    CheckReport r = check_delta(fs, join_path("ct", im.file), {});
    ASSERT_TRUE(r.ok() && !r.in_use_left && r.leaked_clusters == 0) << im.file;
  }
}

// Runs `op` once to count its mutations, then once per cut point with the power failing there.
void crash_everywhere(const std::function<void(FaultStorage&, Chain&)>& op,
                      const std::function<void(FaultStorage&, const Chain&)>& verify) {
  uint64_t total;
  {
    FaultStorage fs;
    Chain c = build(fs);
    uint64_t before = fs.mutations();
    op(fs, c);
    total = fs.mutations() - before;
    verify(fs, c);
  }
  ASSERT_GE(total, 5u);
  int points = 0;
  for (uint64_t cut = 0; cut < total; cut += std::max<uint64_t>(1, total / 40)) {
    SCOPED_TRACE("power cut after mutation " + std::to_string(cut) + " of " + std::to_string(total));
    FaultStorage fs;
    Chain c = build(fs);
    fs.crash_after(cut);
    try {
      op(fs, c);
      FAIL() << "the operation finished although the power went";
    } catch (const PowerLost&) {
    }
    fs.power_cut(cut * 7919 + 1);
    recover(fs);
    if (testing::Test::HasFatalFailure()) return;
    verify(fs, c);
    if (testing::Test::HasFatalFailure()) return;
    ++points;
  }
  EXPECT_GE(points, 5);
}

}  // namespace

TEST(PowerLossOps, MergeTopIntoParent) {
  crash_everywhere([](FaultStorage& fs, Chain&) { merge_snapshot(fs, kDD, "", false); },
                   [](FaultStorage& fs, const Chain& c) {
                     expect_state(fs, c, {c.s2}, [&](const std::vector<uint8_t>& top) { ASSERT_EQ(top, c.top); });
                   });
}

TEST(PowerLossOps, SnapshotDeleteMergesIntoTheChild) {
  crash_everywhere([](FaultStorage& fs, Chain& c) { delete_snapshot(fs, kDD, c.s1); },
                   [](FaultStorage& fs, const Chain& c) {
                     expect_state(fs, c, {c.s1}, [&](const std::vector<uint8_t>& top) { ASSERT_EQ(top, c.top); });
                   });
}

TEST(PowerLossOps, MergeAll) {
  crash_everywhere([](FaultStorage& fs, Chain&) { merge_snapshot(fs, kDD, "", true); },
                   [](FaultStorage& fs, const Chain& c) {
                     // -A merges one level at a time: any prefix of the merges is a valid state.
                     Descriptor d = Descriptor::load(fs, kDD);
                     std::vector<std::string> gone;
                     for (const auto& [g, _] : c.snaps) {
                       if (!d.shot(g)) gone.push_back(g);
                     }
                     expect_state(fs, c, gone, [&](const std::vector<uint8_t>& top) { ASSERT_EQ(top, c.top); });
                   });
}

TEST(PowerLossOps, SnapshotCreate) {
  const std::string g = "{0badc0de-0000-4000-8000-000000000001}";
  crash_everywhere([&](FaultStorage& fs, Chain&) { create_snapshot(fs, kDD, g); },
                   [&](FaultStorage& fs, const Chain& c) {
                     expect_state(fs, c, {}, [&](const std::vector<uint8_t>& top) { ASSERT_EQ(top, c.top); });
                     Descriptor d = Descriptor::load(fs, kDD);
                     if (!d.shot(g)) return;  // before: the old tree
                     // after: the old top is the snapshot, sealed over its parent's seal
                     ASSERT_EQ(read_disk(fs, g), c.top);
                     SealReport r = verify_seal(fs, join_path("ct", d.image(g)->file), join_path("ct", d.image(c.s2)->file));
                     ASSERT_TRUE(r.present && r.ok) << r.problem;
                   });
}

TEST(PowerLossOps, SnapshotSwitch) {
  crash_everywhere([](FaultStorage& fs, Chain& c) { switch_snapshot(fs, kDD, c.s1); },
                   [](FaultStorage& fs, const Chain& c) {
                     // before: the old top; after: a new empty top over S1
                     expect_state(fs, c, {}, [&](const std::vector<uint8_t>& top) {
                       ASSERT_TRUE(top == c.top || top == c.snaps.at(c.s1)) << "the top is neither the old one nor S1";
                     });
                   });
}

TEST(PowerLossOps, GrowThatMovesDataClusters) {
  // 32 KiB clusters: one BAT cluster covers 8176 clusters (255.5 MiB); 300 MiB needs two, so the
  // first data cluster moves.
  constexpr uint64_t kNew = 300ull << 20;
  crash_everywhere([](FaultStorage& fs, Chain&) { resize_disk(fs, kDD, kNew); },
                   [](FaultStorage& fs, const Chain& c) {
                     expect_state(fs, c, {}, [&](const std::vector<uint8_t>& top) {
                       ASSERT_TRUE(top.size() == kDisk || top.size() == kNew) << top.size();
                       ASSERT_TRUE(std::equal(c.top.begin(), c.top.end(), top.begin()));
                       ASSERT_TRUE(std::all_of(top.begin() + kDisk, top.end(), [](uint8_t x) { return x == 0; }));
                     });
                   });
}

TEST(PowerLossOps, ShrinkOfUnusedTail) {
  crash_everywhere(
      [](FaultStorage& fs, Chain&) {
        resize_disk(fs, kDD, 128 * kC);  // grow first (not cut: counted in the op, fine either way)
        resize_disk(fs, kDD, kDisk);
      },
      [](FaultStorage& fs, const Chain& c) {
        expect_state(fs, c, {}, [&](const std::vector<uint8_t>& top) {
          ASSERT_TRUE(top.size() == kDisk || top.size() == 128 * kC) << top.size();
          ASSERT_TRUE(std::equal(c.top.begin(), c.top.end(), top.begin()));
        });
      });
}

TEST(Operations, ShrinkOverDataIsRefusedAndChangesNothing) {
  FaultStorage fs;
  Chain c = build(fs);
  try {
    resize_disk(fs, kDD, 20 * kC);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kParam);
  }
  EXPECT_EQ(read_disk(fs, ""), c.top);
  Descriptor d = Descriptor::load(fs, kDD);
  EXPECT_EQ(d.pending_size, 0u);
  EXPECT_EQ(d.size_sectors * 512, kDisk);
}

TEST(Operations, SnapshotWithTwoChildrenCannotBeDeleted) {
  FaultStorage fs;
  Chain c = build(fs);
  switch_snapshot(fs, kDD, c.s1);  // s1 now has two children: s2 and the new top
  try {
    delete_snapshot(fs, kDD, c.s1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 children"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_disk(fs, ""), c.snaps.at(c.s1));
  EXPECT_EQ(read_disk(fs, c.s2), c.snaps.at(c.s2));
}

TEST(Operations, BadSnapshotArgumentsChangeNothing) {
  FaultStorage fs;
  Chain c = build(fs);
  EXPECT_THROW(create_snapshot(fs, kDD, "not-a-guid"), Error);
  EXPECT_THROW(create_snapshot(fs, kDD, c.s1), Error);
  EXPECT_THROW(switch_snapshot(fs, kDD, "{12345678-1234-1234-1234-123456789012}"), Error);
  EXPECT_EQ(read_disk(fs, ""), c.top);
}
