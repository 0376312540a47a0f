// A model-based test of the snapshot tree: a long random sequence of writes, snapshots, switches,
// deletes, merges and resizes, checked after every step against a plain in-memory model of what
// every snapshot and the top must read. Fixed seed by default; longer with
//   PLOOP_MODEL_STEPS=5000 PLOOP_MODEL_SEED=7 ./unit_tests --gtest_filter='SnapshotModel.*'
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <random>

#include "ploop/check.h"
#include "ploop/descriptor.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/fault_storage.h"
#include "ploop/merge.h"
#include "ploop/paths.h"
#include "ploop/resize.h"
#include "ploop/seal.h"
#include "ploop/snapshot.h"

using namespace ploop;

namespace {

constexpr uint64_t kC = 32768;
const std::string kDD = "ct/DiskDescriptor.xml";

uint64_t env(const char* name, uint64_t dflt) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : dflt;
}

std::vector<uint8_t> read_disk(FaultStorage& fs, const std::string& guid) {
  auto s = open_disk(fs, kDD, OpenMode::kReadOnly, false, guid);
  std::vector<uint8_t> b(s->size());
  s->read(b.data(), 0, b.size());
  return b;
}

struct ModelRun {
  FaultStorage fs;
  std::mt19937_64 rng;
  std::map<std::string, std::vector<uint8_t>> snaps;  // snapshot GUID -> what it reads
  std::vector<uint8_t> top;
  int ops = 0, refused = 0;

  explicit ModelRun(uint64_t seed) : rng(seed) {
    create_disk(fs, "ct/root.hds", {16 * kC, 64, 2});
    top.assign(16 * kC, 0);
  }

  uint64_t pick(uint64_t n) { return rng() % n; }

  void write() {
    auto s = open_disk(fs, kDD, OpenMode::kReadWrite);
    uint64_t len = 512 * (1 + pick(3 * kC / 512)), off = 512 * pick((top.size() - len) / 512 + 1);
    std::vector<uint8_t> b(len);
    uint8_t v = static_cast<uint8_t>(1 + pick(255));
    for (size_t i = 0; i < len; ++i) b[i] = static_cast<uint8_t>(v + i / 512);
    if (pick(8) == 0) {
      s->write_zeroes(off, len);
      std::fill(b.begin(), b.end(), 0);
    } else {
      s->write(b.data(), off, len);
    }
    std::copy(b.begin(), b.end(), top.begin() + static_cast<long>(off));
    s->close();
  }

  std::string any_snapshot() {
    auto it = snaps.begin();
    std::advance(it, static_cast<long>(pick(snaps.size())));
    return it->first;
  }

  std::string last;
  void step() {
    ++ops;
    Descriptor d = Descriptor::load(fs, kDD);
    switch (pick(10)) {
      case 0:
      case 1:
      case 2:
        write();
        break;
      case 3: {
        std::string g = create_snapshot(fs, kDD);
        snaps[g] = top;
        break;
      }
      case 4:
        if (snaps.empty()) break;
        {
          std::string g = any_snapshot();
          switch_snapshot(fs, kDD, g);
          top = snaps[g];
        }
        break;
      case 5:
        if (snaps.empty()) break;
        {
          std::string g = any_snapshot();
          try {
            delete_snapshot(fs, kDD, g);
            snaps.erase(g);
          } catch (const Error& e) {
            ASSERT_EQ(e.code(), Exit::kParam) << e.what();
            ASSERT_GT(d.children(g).size(), 1u) << e.what();
            ++refused;
          }
        }
        break;
      case 6: {
        const DescriptorShot* t = d.shot(d.top_guid);
        if (t->parent == kNoGuid) break;
        std::string parent = t->parent;
        try {
          merge_snapshot(fs, kDD, "", false);
          snaps.erase(parent);
        } catch (const Error& e) {
          ASSERT_GT(d.children(parent).size(), 1u) << e.what();
          ++refused;
        }
        break;
      }
      case 7: {
        uint64_t size = kC * (4 + pick(40));
        try {
          uint64_t got = resize_disk(fs, kDD, size);
          top.resize(got, 0);
        } catch (const Error& e) {
          ASSERT_EQ(e.code(), Exit::kParam) << e.what();
          ASSERT_LT(size, top.size());
          ++refused;
        }
        break;
      }
      default:
        write();
    }
  }

  void verify() {
    ASSERT_EQ(read_disk(fs, ""), top) << "top differs after op " << ops;
    for (const auto& [g, want] : snaps) ASSERT_EQ(read_disk(fs, g), want) << "snapshot " << g << " after op " << ops;
    Descriptor d = Descriptor::load(fs, kDD);
    ASSERT_EQ(d.shots.size(), snaps.size() + 1);
    for (const auto& im : d.images) {
      CheckReport r = check_delta(fs, join_path("ct", im.file), {});
      std::string why;
      for (const auto& f : r.findings) why += f.text + "; ";
      ASSERT_TRUE(r.ok() && !r.in_use_left && r.leaked_clusters == 0) << im.file << " after op " << ops << ": " << why;
    }
    // Every snapshot is sealed, and its seal chain verifies.
    for (const auto& sh : d.shots) {
      if (sh.guid == d.top_guid) continue;
      std::string parent = sh.parent == kNoGuid ? "" : join_path("ct", d.image(sh.parent)->file);
      SealReport r = verify_seal(fs, join_path("ct", d.image(sh.guid)->file), parent);
      ASSERT_TRUE(r.present && r.ok) << sh.guid << " after op " << ops << ": " << r.problem;
    }
  }
};

}  // namespace

TEST(SnapshotModel, RandomOperationsMatchTheModel) {
  ModelRun m(env("PLOOP_MODEL_SEED", 20261122));
  const uint64_t steps = env("PLOOP_MODEL_STEPS", 1000);
  for (uint64_t i = 0; i < steps; ++i) {
    m.step();
    if (HasFatalFailure()) return;
    m.verify();
    if (HasFatalFailure()) return;
  }
  RecordProperty("refused", m.refused);
}
