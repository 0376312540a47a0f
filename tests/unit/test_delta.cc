#include <gtest/gtest.h>

#include <algorithm>

#include "ploop/delta.h"
#include "ploop/error.h"
#include "ploop/fault_storage.h"
#include "ploop/le_codec.h"
#include "spy_storage.h"
#include "test_util.h"

using namespace ploop;

namespace {

constexpr uint32_t kCs = 64;  // 32 KiB clusters keep test files small
constexpr uint64_t kC = 32768;

uint32_t header_u32(FaultStorage& fs, const std::string& p, size_t off) {
  auto b = fs.contents(p);
  return le::load32(&b[off]);
}

void patch_u32(FaultStorage& fs, const std::string& p, size_t off, uint32_t v) {
  auto b = fs.contents(p);
  le::store32(&b[off], v);
  fs.import_file(p, b);
}

}  // namespace

// A writer locks before it touches the file: a header or BAT read before the lock could be stale
// once the lock is taken (another program may open, write and close the image in between), and a
// new delta that is not locked from its creation can be opened by another program before its
// creator has it (qemu-io once wrote into an image `ploop import` had just created).
TEST(Delta, AWriterLocksBeforeItsFirstReadOrWrite) {
  FaultStorage fs;
  std::vector<std::string> events;
  testutil::SpyStorage spy(fs, [&](const std::string& event, const std::string&) { events.push_back(event); });
  auto d = Delta::create(spy, "img", 1 << 20, kCs);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front(), "lock") << "Delta::create touched the new file before locking it";
  d->close();
  d.reset();
  events.clear();
  Delta::open(spy, "img", OpenMode::kReadWrite)->close();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front(), "lock") << "a read-write open read the file before locking it";
  events.clear();
  Delta::open(spy, "img", OpenMode::kReadOnly);
  EXPECT_EQ(std::count(events.begin(), events.end(), "lock"), 0);  // readers take no lock
}

TEST(Delta, CreateWritesAnEmptyCleanImage) {
  FaultStorage fs;
  auto d = Delta::create(fs, "img", 1 << 20, kCs);
  d->close();
  auto b = fs.contents("img");
  EXPECT_EQ(b.size(), kC);  // header + BAT only
  EXPECT_EQ(le::load32(&b[44]), 0u);        // not in use
  EXPECT_EQ(le::load32(&b[52]), kFlagEmpty);  // CIF_Empty
}

TEST(Delta, InUseFlagIsSetWhileOpenAndClearedOnClose) {
  FaultStorage fs;
  Delta::create(fs, "img", 1 << 20, kCs)->close();
  auto d = Delta::open(fs, "img", OpenMode::kReadWrite);
  EXPECT_EQ(header_u32(fs, "img", 44), kInUseMagic);
  d->close();
  EXPECT_EQ(header_u32(fs, "img", 44), 0u);
}

TEST(Delta, DirtyImageIsRefusedForWriting) {
  FaultStorage fs;
  Delta::create(fs, "img", 1 << 20, kCs)->close();
  { auto d = Delta::open(fs, "img", OpenMode::kReadWrite); }  // destroyed without close: a crash
  try {
    Delta::open(fs, "img", OpenMode::kReadWrite);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kInUse);
  }
  EXPECT_NO_THROW(Delta::open(fs, "img", OpenMode::kReadOnly));
  EXPECT_NO_THROW(Delta::open(fs, "img", OpenMode::kReadWrite, true));
}

TEST(Delta, MapIsDurableOnlyAfterFlushAndTailIsTruncatedOnClose) {
  FaultStorage fs;
  Delta::create(fs, "img", 1 << 20, kCs)->close();
  auto d = Delta::open(fs, "img", OpenMode::kReadWrite);
  uint32_t a = d->allocate(), b = d->allocate();
  EXPECT_EQ(a, 1u);
  EXPECT_EQ(b, 2u);
  std::vector<uint8_t> data(kC, 0xab);
  d->file().write(data.data(), kC, a * kC);
  d->map(5, a);
  EXPECT_EQ(header_u32(fs, "img", 64 + 4 * 5), 0u);  // not yet written
  d->flush();
  EXPECT_EQ(header_u32(fs, "img", 64 + 4 * 5), a);
  d->abandon(b);
  d->close();
  EXPECT_EQ(fs.contents("img").size(), 2 * kC);  // cluster 2 was never used
  EXPECT_EQ(header_u32(fs, "img", 52) & kFlagEmpty, 0u);
}

namespace {

// The BAT as Delta hands it out, piece by piece, joined.
std::vector<uint8_t> bat_pieces(const Delta& d) {
  std::vector<uint8_t> out;
  d.for_each_bat_piece([&](std::span<const uint8_t> p) { out.insert(out.end(), p.begin(), p.end()); });
  return out;
}

// Writes a cluster of `fill` bytes and maps virtual cluster `vc` to it.
void put(Delta& d, uint32_t vc, uint8_t fill) {
  std::vector<uint8_t> data(d.cluster_bytes(), fill);
  uint32_t c = d.allocate();
  d.file().write(data.data(), data.size(), c * d.cluster_bytes());
  d.map(vc, c);
}

void expect_bat_is_the_file(const Delta& d, const std::vector<uint8_t>& file) {
  std::vector<uint8_t> want(file.begin() + kHeaderSize, file.begin() + kHeaderSize + 4 * size_t{d.bat_entries()});
  EXPECT_EQ(bat_pieces(d), want);
}

}  // namespace

// A BAT of several pages, most of them never written (a new delta's BAT is allocated, not
// written): the pages the file system reports as zeros are not read, and nothing is lost.
TEST(Delta, BatPagesThatReadAsZerosAreSkippedButNeverLost) {
  for (bool real : {true, false}) {
    SCOPED_TRACE(real ? "posix storage (SEEK_DATA)" : "fault storage");
    testutil::TempDir dir;
    auto posix = make_posix_storage();
    FaultStorage fs;
    Storage& st = real ? static_cast<Storage&>(*posix) : fs;
    const std::string img = dir / "img";
    Delta::create_closed(st, img, uint64_t{8} << 30, 2048);  // 8 Ki entries, 1 MiB clusters: 9 pages
    {
      auto d = Delta::open(st, img, OpenMode::kReadOnly);
      EXPECT_TRUE(d->mapped().empty());
      expect_bat_is_the_file(*d, real ? testutil::read_file(img) : fs.contents(img));
    }
    {
      auto d = Delta::open(st, img, OpenMode::kReadWrite);
      put(*d, 10, 1);    // page 0
      put(*d, 5000, 2);  // page 4
      d->close();
    }
    auto d = Delta::open(st, img, OpenMode::kReadWrite);
    std::vector<std::pair<uint32_t, uint32_t>> want{{10, 1}, {5000, 2}};
    EXPECT_EQ(d->mapped(), want);
    EXPECT_EQ(d->cluster_of(7000), 0u);
    put(*d, 7000, 3);  // page 6, still untouched in memory: set, it must be found by scans
    want.emplace_back(7000, 3);
    EXPECT_EQ(d->mapped(), want);
    d->close();
    d = Delta::open(st, img, OpenMode::kReadOnly);
    EXPECT_EQ(d->mapped(), want);
    expect_bat_is_the_file(*d, real ? testutil::read_file(img) : fs.contents(img));
  }
}

TEST(Delta, ReleasedClusterIsReusedOnlyAfterFlush) {
  FaultStorage fs;
  Delta::create(fs, "img", 1 << 20, kCs)->close();
  auto d = Delta::open(fs, "img", OpenMode::kReadWrite);
  std::vector<uint8_t> data(kC, 1);
  uint32_t a = d->allocate();
  d->file().write(data.data(), kC, a * kC);
  d->map(0, a);
  d->flush();
  d->unmap(0);
  uint32_t b = d->allocate();
  EXPECT_NE(a, b);  // the cleared entry is not durable yet
  d->abandon(b);
  d->flush();
  uint32_t c = d->allocate();
  EXPECT_EQ(a, c);
  d->abandon(c);
  d->close();
}

TEST(Delta, BadBatEntriesAreRejectedAtOpen) {
  FaultStorage fs;
  Delta::create(fs, "img", 1 << 20, kCs)->close();
  auto base = fs.contents("img");
  patch_u32(fs, "img", 64 + 4 * 3, 7);  // past the end of a 1-cluster file
  try {
    Delta::open(fs, "img", OpenMode::kReadOnly);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kFormat);
    EXPECT_NE(std::string(e.what()).find("past the end"), std::string::npos) << e.what();
  }
  // Two entries sharing a cluster: readable, but not writable.
  base.resize(2 * kC);
  fs.import_file("img", base);
  patch_u32(fs, "img", 64 + 4 * 1, 1);
  patch_u32(fs, "img", 64 + 4 * 2, 1);
  EXPECT_NO_THROW(Delta::open(fs, "img", OpenMode::kReadOnly));
  EXPECT_THROW(Delta::open(fs, "img", OpenMode::kReadWrite), Error);
}

TEST(Delta, EntryIntoTheHeaderIsRejected) {
  FaultStorage fs;
  // 1 GiB with 32 KiB clusters: 32768 entries, the BAT spans 5 clusters.
  Delta::create(fs, "img", 1 << 30, kCs)->close();
  auto b = fs.contents("img");
  b.resize(b.size() + kC);
  fs.import_file("img", b);
  patch_u32(fs, "img", 64 + 4 * 9, 2);
  try {
    Delta::open(fs, "img", OpenMode::kReadOnly);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inside the header"), std::string::npos) << e.what();
  }
}

TEST(Delta, TruncatedFileIsRejected) {
  FaultStorage fs;
  Delta::create(fs, "img", 64 << 20, kCs)->close();
  auto b = fs.contents("img");
  b.resize(40);
  fs.import_file("img", b);
  EXPECT_THROW(Delta::open(fs, "img", OpenMode::kReadOnly), Error);
  b.resize(0);
  fs.import_file("img", b);
  EXPECT_THROW(Delta::open(fs, "img", OpenMode::kReadOnly), Error);
}

TEST(Delta, ReadsOpenVZV1Fixture) {
  auto fs_bytes = testutil::read_file(testutil::fixture("chain/root.hdd"));
  ASSERT_FALSE(fs_bytes.empty());
  FaultStorage fs;
  fs.import_file("base", fs_bytes);
  auto d = Delta::open(fs, "base", OpenMode::kReadOnly);
  EXPECT_EQ(d->header().version, 1);
  EXPECT_EQ(d->size_bytes(), 64u << 20);
  EXPECT_EQ(d->cluster_of(0), 1u);
  EXPECT_NE(d->cluster_of(10), 0u);
  EXPECT_EQ(d->cluster_of(2), 0u);
}
