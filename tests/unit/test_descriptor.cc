#include <gtest/gtest.h>

#include <unistd.h>

#include "ploop/check.h"
#include "ploop/descriptor.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/fault_storage.h"
#include "test_util.h"

using namespace ploop;

namespace {

std::string fixture_text() {
  auto b = testutil::read_file(testutil::fixture("chain/DiskDescriptor.xml"));
  return std::string(b.begin(), b.end());
}

void expect_bad(const std::string& text, const char* needle) {
  try {
    Descriptor::parse(text, "DD.xml");
    FAIL() << "accepted: " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kDescriptor);
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  auto p = s.find(from);
  EXPECT_NE(p, std::string::npos) << from;
  return s.replace(p, from.size(), to);
}

}  // namespace

TEST(Descriptor, ParsesOpenVZChain) {
  Descriptor d = Descriptor::parse(fixture_text(), "DD.xml");
  EXPECT_EQ(d.size_sectors, 131072u);
  EXPECT_EQ(d.blocksize, 2048u);
  EXPECT_EQ(d.top_guid, kTopGuid);
  auto chain = d.chain();
  ASSERT_EQ(chain.size(), 2u);
  EXPECT_EQ(chain[0], "root.hdd");
  EXPECT_EQ(chain[1], "root.hdd.{ae0b1c9f-2600-42e6-b369-5806da621702}");
}

TEST(Descriptor, SaveKeepsUnknownElements) {
  std::string text = replace(fixture_text(), "<Padding>0</Padding>",
                             "<Padding>0</Padding><Encryption><KeyId>k1</KeyId></Encryption>");
  text = replace(text, "<File>root.hdd</File>", "<File>root.hdd</File><Vendor x=\"1\">keep</Vendor>");
  Descriptor d = Descriptor::parse(text, "DD.xml");
  FaultStorage fs;
  d.save(fs, "DD.xml");
  auto out = fs.contents("DD.xml");
  std::string s(out.begin(), out.end());
  EXPECT_NE(s.find("<KeyId>k1</KeyId>"), std::string::npos) << s;
  EXPECT_NE(s.find("<Vendor x=\"1\">keep</Vendor>"), std::string::npos) << s;
  Descriptor again = Descriptor::load(fs, "DD.xml");
  EXPECT_EQ(again.chain(), d.chain());
  EXPECT_FALSE(fs.exists("DD.xml.tmp"));
}

TEST(Descriptor, MakeMatchesWhatOpenVZWrites) {
  Descriptor d = Descriptor::make(131072, 2048, "root.hdd");
  std::string s = d.to_string();
  Descriptor p = Descriptor::parse(s, "x");
  EXPECT_EQ(p.cylinders, 256u);
  EXPECT_EQ(p.heads, 16u);
  EXPECT_EQ(p.sectors, 32u);
  EXPECT_EQ(p.chain(), std::vector<std::string>{"root.hdd"});
  EXPECT_EQ(p.top_guid, kTopGuid);
}

TEST(Descriptor, MalformedInputsGetClearErrors) {
  std::string t = fixture_text();
  expect_bad(t.substr(0, t.size() / 2), "malformed XML");
  expect_bad("", "malformed XML");
  expect_bad(replace(t, "<Blocksize>2048</Blocksize>", ""), "Blocksize");
  expect_bad(replace(t, "<Blocksize>2048</Blocksize>", "<Blocksize>1000</Blocksize>"), "Blocksize");
  expect_bad(replace(t, "<Disk_size>131072</Disk_size>", "<Disk_size>-5</Disk_size>"), "Disk_size");
  expect_bad(replace(t, "<Disk_size>131072</Disk_size>", "<Disk_size>99999999999999999999999</Disk_size>"),
             "Disk_size");
  expect_bad(replace(t, "<File>root.hdd</File>", "<File>../../etc/passwd</File>"), "inside the descriptor");
  expect_bad(replace(t, "<File>root.hdd</File>", "<File>/etc/passwd</File>"), "inside the descriptor");
  expect_bad(replace(t, "<TopGUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</TopGUID>", "<TopGUID>{00000000-0000-0000-0000-000000000001}</TopGUID>"),
             "TopGUID");
  // A cycle: the root's parent becomes the top, so nothing is a root ... and add a root elsewhere.
  std::string cyc = replace(t, "<ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID>",
                            "<ParentGUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</ParentGUID>");
  expect_bad(cyc, "root");
  expect_bad(replace(t, "<ParentGUID>{9e9da037-6dc5-4ac4-abc9-0bc39dda05d4}</ParentGUID>",
                     "<ParentGUID>{11111111-1111-1111-1111-111111111111}</ParentGUID>"),
             "does not exist");
  expect_bad(replace(t, "<GUID>{9e9da037-6dc5-4ac4-abc9-0bc39dda05d4}</GUID>", "<GUID>nonsense</GUID>"), "GUID");
}

TEST(Descriptor, CycleBesideARootIsDetected) {
  Descriptor d = Descriptor::make(131072, 2048, "root.hdd");
  d.images.push_back({"{11111111-1111-1111-1111-111111111111}", "Compressed", "a"});
  d.images.push_back({"{22222222-2222-2222-2222-222222222222}", "Compressed", "b"});
  d.shots.push_back({"{11111111-1111-1111-1111-111111111111}", "{22222222-2222-2222-2222-222222222222}", false});
  d.shots.push_back({"{22222222-2222-2222-2222-222222222222}", "{11111111-1111-1111-1111-111111111111}", false});
  try {
    d.validate("DD.xml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cycle"), std::string::npos) << e.what();
  }
}

TEST(Disk, CreateAndOpenThroughTheDescriptor) {
  FaultStorage fs;
  std::string dd = create_disk(fs, "dir/root.hds", {8 << 20, 64, 2});
  EXPECT_EQ(dd, "dir/DiskDescriptor.xml");
  auto s = open_disk(fs, dd, OpenMode::kReadWrite);
  EXPECT_EQ(s->size(), 8u << 20);
  s->close();
  EXPECT_THROW(create_disk(fs, "dir/root.hds", {8 << 20, 64, 2}), Error);
}

TEST(Disk, DescriptorThatDisagreesWithTheImageIsRefused) {
  FaultStorage fs;
  std::string dd = create_disk(fs, "d/root.hds", {8 << 20, 64, 2});
  Descriptor d = Descriptor::load(fs, dd);
  d.size_sectors *= 2;
  d.save(fs, dd);
  try {
    open_disk(fs, dd, OpenMode::kReadOnly);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kDescriptor);
    EXPECT_NE(std::string(e.what()).find("Disk_size"), std::string::npos) << e.what();
  }
  d.size_sectors /= 2;
  d.blocksize = 128;
  d.save(fs, dd);
  EXPECT_THROW(open_disk(fs, dd, OpenMode::kReadOnly), Error);
  d.blocksize = 64;
  d.images[0].file = "missing.hds";
  d.save(fs, dd);
  try {
    open_disk(fs, dd, OpenMode::kReadOnly);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
}

TEST(Disk, SecondWriterIsRefusedWithTheHolder) {
  testutil::TempDir dir;
  auto st = make_posix_storage();
  std::string dd = create_disk(*st, dir / "root.hds", {8 << 20, 64, 2});
  auto first = open_disk(*st, dd, OpenMode::kReadWrite);
  try {
    open_disk(*st, dd, OpenMode::kReadWrite);
    FAIL() << "a second writer was let in";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kInUse);
    EXPECT_NE(std::string(e.what()).find("in use by PID " + std::to_string(getpid())), std::string::npos) << e.what();
  }
  try {
    check_delta(*st, dir / "root.hds", {true});
    FAIL() << "repair ran under a live writer";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kInUse);
  }
  EXPECT_NO_THROW(open_disk(*st, dd, OpenMode::kReadOnly));  // readers are not locked out
  first->close();
  first.reset();
  auto again = open_disk(*st, dd, OpenMode::kReadWrite);  // the lock went with the writer
  again->close();
}
