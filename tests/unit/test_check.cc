#include <gtest/gtest.h>

#include "ploop/check.h"
#include "ploop/delta.h"
#include "ploop/fault_storage.h"
#include "ploop/le_codec.h"
#include "ploop/stack.h"
#include "test_util.h"

using namespace ploop;

namespace {

constexpr uint64_t kC = 32768;

// A clean image with clusters 1..3 mapped by virtual clusters 0..2, each filled with its number.
void make_image(FaultStorage& fs) {
  Delta::create(fs, "img", 4 << 20, 64)->close();
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "img", OpenMode::kReadWrite));
  Stack s(std::move(v));
  for (uint8_t i = 0; i < 3; ++i) {
    std::vector<uint8_t> b(kC, static_cast<uint8_t>(i + 1));
    s.write(b.data(), i * kC, kC);
  }
  s.close();
}

void patch(FaultStorage& fs, size_t off, uint32_t v) {
  auto b = fs.contents("img");
  le::store32(&b[off], v);
  fs.import_file("img", b);
}

bool has(const CheckReport& r, const std::string& needle, CheckFinding::Severity sev) {
  for (const auto& f : r.findings) {
    if (f.severity == sev && f.text.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST(Check, CleanImageHasNoFindings) {
  FaultStorage fs;
  make_image(fs);
  CheckReport r = check_delta(fs, "img", {});
  EXPECT_TRUE(r.ok());
  EXPECT_TRUE(r.findings.empty()) << r.findings.front().text;
  EXPECT_EQ(r.allocated_clusters, 3u);
  EXPECT_EQ(r.leaked_clusters, 0u);
}

TEST(Check, DuplicateEntriesAreRepairedByCopying) {
  FaultStorage fs;
  make_image(fs);
  patch(fs, 64 + 4 * 7, 2);  // virtual cluster 7 shares file cluster 2 with virtual cluster 1
  auto before = fs.contents("img");
  CheckReport r = check_delta(fs, "img", {});
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(has(r, "shares cluster 2", CheckFinding::kError));
  EXPECT_EQ(fs.contents("img"), before);  // a check without repair changes nothing
  r = check_delta(fs, "img", {true});
  EXPECT_TRUE(r.ok());
  r = check_delta(fs, "img", {});
  EXPECT_TRUE(r.findings.empty());
  std::vector<std::unique_ptr<Delta>> v;
  v.push_back(Delta::open(fs, "img", OpenMode::kReadWrite));
  Stack s(std::move(v));
  std::vector<uint8_t> b(kC);
  s.read(b.data(), 7 * kC, kC);
  EXPECT_EQ(b, std::vector<uint8_t>(kC, 2));
  std::vector<uint8_t> w(kC, 9);
  s.write(w.data(), 7 * kC, kC);  // the copies are independent now
  s.read(b.data(), 1 * kC, kC);
  EXPECT_EQ(b, std::vector<uint8_t>(kC, 2));
  s.close();
}

TEST(Check, EntriesPastEndOrIntoHeaderAreDropped) {
  FaultStorage fs;
  make_image(fs);
  patch(fs, 64 + 4 * 9, 50);  // past the end of the file
  CheckReport r = check_delta(fs, "img", {});
  EXPECT_TRUE(has(r, "past the end of the file", CheckFinding::kError));
  r = check_delta(fs, "img", {true});
  EXPECT_TRUE(r.ok());
  EXPECT_TRUE(check_delta(fs, "img", {}).findings.empty());
}

TEST(Check, LeakedTailAndDirtyFlagAreRepaired) {
  FaultStorage fs;
  make_image(fs);
  auto b = fs.contents("img");
  b.resize(b.size() + 3 * kC + 100);  // 3 leaked clusters and a ragged end
  le::store32(&b[44], kInUseMagic);
  fs.import_file("img", b);
  CheckReport r = check_delta(fs, "img", {});
  EXPECT_TRUE(r.ok());  // warnings only
  EXPECT_TRUE(r.in_use_left);
  EXPECT_TRUE(has(r, "leaked", CheckFinding::kWarning));
  EXPECT_TRUE(has(r, "not a multiple of the cluster size", CheckFinding::kWarning));
  EXPECT_TRUE(has(r, "not closed cleanly", CheckFinding::kWarning));
  r = check_delta(fs, "img", {true});
  EXPECT_TRUE(r.ok());
  EXPECT_FALSE(r.in_use_left);
  EXPECT_EQ(fs.contents("img").size(), 4 * kC);
  EXPECT_TRUE(check_delta(fs, "img", {}).findings.empty());
}

TEST(Check, WrongEmptyFlagAndNonZeroSpareSlots) {
  FaultStorage fs;
  make_image(fs);
  patch(fs, 52, kFlagEmpty);
  patch(fs, 64 + 4 * 130, 3);  // 128 entries: slot 130 is past the last one
  CheckReport r = check_delta(fs, "img", {});
  EXPECT_TRUE(has(r, "CIF_Empty", CheckFinding::kWarning));
  EXPECT_TRUE(has(r, "past the last entry", CheckFinding::kWarning));
  check_delta(fs, "img", {true});
  EXPECT_TRUE(check_delta(fs, "img", {}).findings.empty());
}

TEST(Check, UnreadableHeaderIsAnError) {
  FaultStorage fs;
  fs.import_file("img", std::vector<uint8_t>(30, 1));
  EXPECT_FALSE(check_delta(fs, "img", {}).ok());
  fs.import_file("img", std::vector<uint8_t>(4096, 1));
  CheckReport r = check_delta(fs, "img", {true});
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(r.header_valid);
}

TEST(Check, AcceptsTheFixtures) {
  for (const char* f : {"chain/root.hdd", "chain/root.hdd.{ae0b1c9f-2600-42e6-b369-5806da621702}", "qemu/disk.hds",
                        "v1-empty/root.hdd"}) {
    FaultStorage fs;
    fs.import_file("img", testutil::read_file(testutil::fixture(f)));
    CheckReport r = check_delta(fs, "img", {});
    EXPECT_TRUE(r.ok()) << f;
  }
}
