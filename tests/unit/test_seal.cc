#include <gtest/gtest.h>

#include "ploop/descriptor.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/fault_storage.h"
#include "ploop/seal.h"
#include "ploop/snapshot.h"

using namespace ploop;

namespace {

constexpr uint64_t kC = 32768;
const std::string kDD = "ct/DiskDescriptor.xml";

// A base with data in clusters 0..3, sealed by a snapshot; returns the base's path.
std::string sealed_base(FaultStorage& fs) {
  create_disk(fs, "ct/root.hds", {16 * kC, 64, 2});
  {
    auto s = open_disk(fs, kDD, OpenMode::kReadWrite);
    std::vector<uint8_t> b(4 * kC);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 13);
    s->write(b.data(), 0, b.size());
    s->close();
  }
  create_snapshot(fs, kDD);
  return "ct/root.hds";
}

void flip_byte(FaultStorage& fs, const std::string& path, size_t off) {
  auto b = fs.contents(path);
  b[off] ^= 0x5a;
  fs.import_file(path, b);
}

}  // namespace

TEST(Seal, SnapshotSealsTheOldTopAndItVerifies) {
  FaultStorage fs;
  std::string base = sealed_base(fs);
  EXPECT_TRUE(fs.exists(seal_path(base)));
  SealReport r = verify_seal(fs, base, "");
  EXPECT_TRUE(r.present);
  EXPECT_TRUE(r.ok) << r.problem;
}

TEST(Seal, DamagedDataIsFoundAndNamed) {
  FaultStorage fs;
  std::string base = sealed_base(fs);
  flip_byte(fs, base, 3 * kC + 2 * 4096 + 17);  // file cluster 3 = virtual cluster 2, block 2
  SealReport r = verify_seal(fs, base, "");
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.problem.find("cluster 2 "), std::string::npos) << r.problem;
  EXPECT_NE(r.problem.find("block 2 "), std::string::npos) << r.problem;

  // Reads through the stack verify on demand: the bad block fails, a good one passes.
  auto s = open_disk(fs, kDD, OpenMode::kReadOnly);
  std::vector<std::unique_ptr<SealVerifier>> v;
  v.push_back(SealVerifier::load(fs, base));
  v.push_back(nullptr);
  s->verify_reads(std::move(v));
  std::vector<uint8_t> buf(4096);
  EXPECT_NO_THROW(s->read(buf.data(), 2 * kC + 4096, 4096));
  try {
    s->read(buf.data(), 2 * kC + 2 * 4096 + 100, 200);
    FAIL() << "a damaged block was served";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kFormat);
    EXPECT_NE(std::string(e.what()).find("cluster 2"), std::string::npos) << e.what();
  }
}

TEST(Seal, DamagedSealFileIsReported) {
  FaultStorage fs;
  std::string base = sealed_base(fs);
  flip_byte(fs, seal_path(base), 100);
  SealReport r = verify_seal(fs, base, "");
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.problem.find("damaged seal"), std::string::npos) << r.problem;
  EXPECT_THROW(SealVerifier::load(fs, base), Error);
}

TEST(Seal, DeltaChangedByAnotherToolIsStaleNotDamaged) {
  FaultStorage fs;
  std::string base = sealed_base(fs);
  auto b = fs.contents(base);  // a BAT entry is cleared (as if another tool discarded a cluster)
  std::fill(b.begin() + 64 + 4 * 3, b.begin() + 64 + 4 * 4, 0);
  fs.import_file(base, b);
  SealReport r = verify_seal(fs, base, "");
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.problem.find("stale"), std::string::npos) << r.problem;
}

TEST(Seal, ChainLinkBreaksWhenTheParentSealChanges) {
  FaultStorage fs;
  std::string base = sealed_base(fs);
  create_snapshot(fs, kDD);  // seals the first top over the base's seal
  Descriptor d = Descriptor::load(fs, kDD);
  std::string mid;
  for (const auto& sh : d.shots) {
    if (sh.guid != d.top_guid && sh.parent != kNoGuid) mid = "ct/" + d.image(sh.guid)->file;
  }
  ASSERT_FALSE(mid.empty());
  EXPECT_TRUE(verify_seal(fs, mid, base).ok);
  seal_delta(fs, base, "");  // same content: same seal, link holds
  EXPECT_TRUE(verify_seal(fs, mid, base).ok);
  remove_seal(fs, base);  // the parent's seal is gone: the chain no longer verifies
  SealReport r = verify_seal(fs, mid, base);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.problem.find("chain broken"), std::string::npos) << r.problem;
}
