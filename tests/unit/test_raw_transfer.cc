#include <gtest/gtest.h>

#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/fault_storage.h"
#include "ploop/raw_transfer.h"
#include "spy_storage.h"
#include "test_util.h"

using namespace ploop;

TEST(RawTransfer, ImportKeepsZeroClustersUnallocatedAndExportReadsBack) {
  FaultStorage fs;
  std::vector<uint8_t> raw(3 << 20, 0);
  auto a = testutil::pattern(100000, 3);
  std::copy(a.begin(), a.end(), raw.begin() + 40000);
  raw.back() = 7;  // last byte, in a partial final cluster... of a 3 MiB raw: cluster aligned
  fs.import_file("raw", raw);
  TransferStats st = import_raw(fs, "raw", "d/root.hds", 64);
  EXPECT_EQ(st.bytes_total, raw.size());
  auto s = open_disk(fs, "d/DiskDescriptor.xml", OpenMode::kReadOnly);
  EXPECT_EQ(s->top().mapped_clusters(), 5u);  // 4 clusters of pattern + the last one
  s.reset();
  export_raw(fs, "d/DiskDescriptor.xml", "out");
  EXPECT_EQ(fs.contents("out"), raw);
  EXPECT_THROW(export_raw(fs, "d/DiskDescriptor.xml", "out"), Error);  // never overwrites
  EXPECT_EQ(fs.contents("out"), raw);
}

TEST(RawTransfer, ImportOfAnOddSizedRawRoundsTheDiskUp) {
  FaultStorage fs;
  std::vector<uint8_t> raw(100000, 5);
  fs.import_file("raw", raw);
  import_raw(fs, "raw", "root.hds", 64);
  auto s = open_disk(fs, "DiskDescriptor.xml", OpenMode::kReadOnly);
  EXPECT_EQ(s->size(), 131072u);
  std::vector<uint8_t> b(131072);
  s->read(b.data(), 0, b.size());
  EXPECT_TRUE(std::equal(raw.begin(), raw.end(), b.begin()));
  EXPECT_TRUE(std::all_of(b.begin() + 100000, b.end(), [](uint8_t x) { return x == 0; }));
}

TEST(RawTransfer, FailedImportLeavesNothingBehind) {
  FaultStorage fs;
  fs.import_file("raw", std::vector<uint8_t>(1 << 20, 1));
  fs.set_fault([](FaultOp op, const std::string& path, uint64_t off, size_t) {
    return op == FaultOp::kWrite && path == "root.hds" && off >= 32768 ? ENOSPC : 0;
  });
  EXPECT_THROW(import_raw(fs, "raw", "root.hds", 64), Error);
  EXPECT_FALSE(fs.exists("root.hds"));
  EXPECT_FALSE(fs.exists("DiskDescriptor.xml"));
  EXPECT_THROW(import_raw(fs, "missing", "x.hds", 64), Error);
}

// Every write to the new image happens under its lock, from the first (the header) to the last:
// no other program (qemu, another ploop) can open it and write into an image the import is
// writing. (qemu-io once did, between the creation of the file and the import's open of it.)
TEST(RawTransfer, ImportWritesTheNewImageOnlyUnderItsLock) {
  testutil::TempDir dir;
  auto posix = make_posix_storage();
  auto raw = testutil::pattern(1 << 20, 9);
  {
    std::ofstream(dir / "raw", std::ios::binary).write(reinterpret_cast<const char*>(raw.data()), raw.size());
  }
  int writes = 0;
  testutil::SpyStorage spy(*posix, [&](const std::string& event, const std::string& path) {
    if (event != "write" || path != dir / "root.hds") return;
    auto other = posix->open(path, OpenMode::kReadWrite);
    EXPECT_NE(other->lock_image(), "") << "write number " << writes << " to the new image was not under its lock";
    ++writes;
  });
  import_raw(spy, dir / "raw", dir / "root.hds", 64);
  EXPECT_GT(writes, 2);
  auto again = open_disk(*posix, dir / "DiskDescriptor.xml", OpenMode::kReadWrite);  // the lock went with the import
  std::vector<uint8_t> b(raw.size());
  again->read(b.data(), 0, b.size());
  EXPECT_EQ(b, raw);
  again->close();
}
