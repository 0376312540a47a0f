// Power loss at many points of a random write/discard/flush workload over a two-level chain
// (read-only base with data, writable top). After each cut: check finds no error, and every
// 512-byte sector reads either its value at the last completed flush or one written since.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <set>

#include "ploop/check.h"
#include "ploop/delta.h"
#include "ploop/error.h"
#include "ploop/fault_storage.h"
#include "ploop/stack.h"

using namespace ploop;

namespace {

constexpr uint32_t kCs = 64;  // 32 KiB clusters
constexpr uint64_t kC = 32768;
constexpr uint64_t kDisk = 2 << 20;
constexpr uint64_t kSectors = kDisk / 512;

// Every sector written holds one 64-bit tag repeated; 0 is the zero sector.
void fill(std::vector<uint8_t>& b, uint64_t first_tag) {
  for (size_t s = 0; s < b.size() / 512; ++s) {
    uint64_t tag = first_tag + s;
    for (size_t w = 0; w < 64; ++w) std::memcpy(&b[s * 512 + w * 8], &tag, 8);
  }
}

uint64_t tag_of(const uint8_t* sector) {
  uint64_t t;
  std::memcpy(&t, sector, 8);
  for (size_t w = 1; w < 64; ++w) {
    uint64_t x;
    std::memcpy(&x, sector + w * 8, 8);
    if (x != t) return UINT64_MAX;  // torn inside a sector: never acceptable
  }
  return t;
}

struct Model {
  std::vector<uint64_t> durable;               // per sector, at the last completed flush
  std::vector<std::set<uint64_t>> since;       // values written since then
  explicit Model(size_t n) : durable(n, 0), since(n) {}
  void write(uint64_t sector, uint64_t tag) { since[sector].insert(tag); }
  void flushed(const std::vector<uint64_t>& current) {
    durable = current;
    for (auto& s : since) s.clear();
  }
};

void setup_base(FaultStorage& fs) {
  Delta::create(fs, "base", kDisk, kCs)->close();
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "base", OpenMode::kReadWrite));
  Stack s(std::move(v));
  std::vector<uint8_t> b(kDisk / 2);
  fill(b, 1'000'000);  // the first half of the disk holds base data
  s.write(b.data(), 0, b.size());
  s.close();
  Delta::create(fs, "top", kDisk, kCs)->close();
}

std::unique_ptr<Stack> open_chain(FaultStorage& fs, OpenMode top_mode) {
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "base", OpenMode::kReadOnly));
  v.push_back(Delta::open(fs, "top", top_mode));
  return std::make_unique<Stack>(std::move(v));
}

// Runs the workload until it ends or the power goes; keeps the model of what may be on disk.
void workload(FaultStorage& fs, uint64_t seed, Model& m, std::vector<uint64_t>& current) {
  std::mt19937_64 rng(seed);
  auto s = open_chain(fs, OpenMode::kReadWrite);
  uint64_t next_tag = 1;
  for (int op = 0; op < 120; ++op) {
    uint64_t kind = rng() % 10;
    if (kind < 6) {  // write 1..16 sectors (partial clusters, cluster crossings)
      uint64_t sectors = 1 + rng() % 16, start = rng() % (kSectors - sectors);
      std::vector<uint8_t> b(sectors * 512);
      uint64_t tag = next_tag * 1000;
      ++next_tag;
      fill(b, tag);
      for (uint64_t i = 0; i < sectors; ++i) m.write(start + i, tag + i);
      s->write(b.data(), start * 512, b.size());
      for (uint64_t i = 0; i < sectors; ++i) current[start + i] = tag + i;
    } else if (kind < 7) {  // whole-cluster write
      uint64_t c = rng() % (kDisk / kC);
      std::vector<uint8_t> b(kC);
      uint64_t tag = next_tag++ * 1000;
      fill(b, tag);
      for (uint64_t i = 0; i < kC / 512; ++i) m.write(c * 64 + i, tag + i);
      s->write(b.data(), c * kC, kC);
      for (uint64_t i = 0; i < kC / 512; ++i) current[c * 64 + i] = tag + i;
    } else if (kind < 8) {  // discard or zero a cluster: may read old data or zeros until flushed
      uint64_t c = rng() % (kDisk / kC);
      for (uint64_t i = 0; i < kC / 512; ++i) m.write(c * 64 + i, 0);
      if (rng() & 1) {
        s->write_zeroes(c * kC, kC);
        for (uint64_t i = 0; i < kC / 512; ++i) current[c * 64 + i] = 0;
      } else {
        // Discard may leave the data; the model accepts both, the current view reads what it reads.
        s->discard(c * kC, kC);
        std::vector<uint8_t> b(kC);
        s->read(b.data(), c * kC, kC);
        for (uint64_t i = 0; i < kC / 512; ++i) {
          current[c * 64 + i] = tag_of(&b[i * 512]);
          m.write(c * 64 + i, current[c * 64 + i]);
        }
      }
    } else {
      s->flush();
      m.flushed(current);
    }
  }
  s->close();
  m.flushed(current);
}

std::vector<uint64_t> base_values() {
  std::vector<uint64_t> v(kSectors, 0);
  for (uint64_t i = 0; i < kSectors / 2; ++i) v[i] = 1'000'000 + i;
  return v;
}

}  // namespace

TEST(PowerLoss, EveryFlushedWriteSurvivesAndCheckPasses) {
  const uint64_t seed = 42;
  uint64_t total;
  {
    FaultStorage fs;
    setup_base(fs);
    Model m(kSectors);
    m.durable = base_values();
    auto cur = m.durable;
    uint64_t before = fs.mutations();
    workload(fs, seed, m, cur);
    total = fs.mutations() - before;
  }
  ASSERT_GT(total, 50u);
  int points = 0;
  for (uint64_t cut = 0; cut < total; cut += std::max<uint64_t>(1, total / 150)) {
    SCOPED_TRACE("power cut after mutation " + std::to_string(cut) + " of " + std::to_string(total));
    FaultStorage fs;
    setup_base(fs);
    Model m(kSectors);
    m.durable = base_values();
    auto cur = m.durable;
    fs.crash_after(cut);
    bool crashed = false;
    try {
      workload(fs, seed, m, cur);
    } catch (const PowerLost&) {
      crashed = true;
    }
    ASSERT_TRUE(crashed);
    fs.power_cut(seed + cut);
    ++points;

    CheckReport r = check_delta(fs, "top", {});
    ASSERT_TRUE(r.ok()) << (r.findings.empty() ? "" : r.findings.front().text);
    CheckReport base = check_delta(fs, "base", {});
    ASSERT_TRUE(base.ok());
    ASSERT_FALSE(base.in_use_left);
    CheckReport fixed = check_delta(fs, "top", {true});
    ASSERT_TRUE(fixed.ok());
    ASSERT_FALSE(fixed.in_use_left);

    auto s = open_chain(fs, OpenMode::kReadWrite);  // a repaired image opens for writing
    std::vector<uint8_t> b(kDisk);
    s->read(b.data(), 0, kDisk);
    for (uint64_t i = 0; i < kSectors; ++i) {
      uint64_t t = tag_of(&b[i * 512]);
      if (t == m.durable[i] || m.since[i].count(t)) continue;
      ADD_FAILURE() << "sector " << i << " reads tag " << t << ", durable was " << m.durable[i];
      break;
    }
    s->close();
    EXPECT_TRUE(check_delta(fs, "top", {}).ok());
  }
  EXPECT_GE(points, 100);
}

TEST(FaultInjection, NoSpaceFailsTheWriteAndLosesNothing) {
  FaultStorage fs;
  setup_base(fs);
  auto s = open_chain(fs, OpenMode::kReadWrite);
  std::vector<uint8_t> a(kC);
  fill(a, 5000);
  s->write(a.data(), 0, kC);
  s->flush();
  bool full = true;
  const uint64_t limit = fs.contents("top").size();
  fs.set_fault([&](FaultOp op, const std::string& path, uint64_t off, size_t) {
    // The disk is full: writes that would extend the top file fail.
    return full && op == FaultOp::kWrite && path == "top" && off >= limit ? ENOSPC : 0;
  });
  std::vector<uint8_t> b(kC);
  fill(b, 9000);
  try {
    s->write(b.data(), 5 * kC, kC);
    FAIL() << "write succeeded on a full disk";
  } catch (const Error& e) {
    EXPECT_EQ(e.sys_errno(), ENOSPC);
  }
  std::vector<uint8_t> r(kC);
  s->read(r.data(), 0, kC);
  EXPECT_EQ(r, a);
  full = false;
  s->write(b.data(), 5 * kC, kC);  // space again: works, no cluster was leaked for good
  s->close();
  CheckReport rep = check_delta(fs, "top", {});
  EXPECT_TRUE(rep.ok());
  EXPECT_EQ(rep.leaked_clusters, 0u);
  auto s2 = open_chain(fs, OpenMode::kReadOnly);
  s2->read(r.data(), 5 * kC, kC);
  EXPECT_EQ(r, b);
}

TEST(FaultInjection, IoErrorOnFlushIsReportedAndRetried) {
  FaultStorage fs;
  setup_base(fs);
  auto s = open_chain(fs, OpenMode::kReadWrite);
  std::vector<uint8_t> a(kC);
  fill(a, 7000);
  s->write(a.data(), 3 * kC, kC);
  int fails = 1;
  fs.set_fault([&](FaultOp op, const std::string&, uint64_t, size_t) {
    return op == FaultOp::kSync && fails-- > 0 ? EIO : 0;
  });
  EXPECT_THROW(s->flush(), Error);
  EXPECT_NO_THROW(s->flush());  // the dirty BAT pages were kept and are written now
  fs.power_cut(1);              // nothing unsynced is left to lose
  auto s2 = open_chain(fs, OpenMode::kReadOnly);
  std::vector<uint8_t> r(kC);
  s2->read(r.data(), 3 * kC, kC);
  EXPECT_EQ(r, a);
}

TEST(FaultInjection, ReadErrorReachesTheCaller) {
  FaultStorage fs;
  setup_base(fs);
  auto s = open_chain(fs, OpenMode::kReadOnly);
  fs.set_fault([](FaultOp op, const std::string&, uint64_t, size_t) { return op == FaultOp::kRead ? EIO : 0; });
  std::vector<uint8_t> r(4096);
  try {
    s->read(r.data(), 0, 4096);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kRead);
    EXPECT_EQ(e.sys_errno(), EIO);
  }
}
