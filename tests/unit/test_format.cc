#include <gtest/gtest.h>

#include <cstring>

#include "ploop/error.h"
#include "ploop/format.h"
#include "ploop/le_codec.h"

using namespace ploop;

TEST(Codec, RoundTripsLittleEndian) {
  uint8_t b[8];
  le::store16(b, 0x1234);
  EXPECT_EQ(b[0], 0x34);
  EXPECT_EQ(le::load16(b), 0x1234);
  le::store32(b, 0xdeadbeef);
  EXPECT_EQ(b[0], 0xef);
  EXPECT_EQ(b[3], 0xde);
  EXPECT_EQ(le::load32(b), 0xdeadbeefu);
  le::store64(b, 0x0102030405060708ull);
  EXPECT_EQ(b[0], 0x08);
  EXPECT_EQ(b[7], 0x01);
  EXPECT_EQ(le::load64(b), 0x0102030405060708ull);
}

TEST(Format, GeometryMatchesOpenVZ) {
  Geometry g = chs_for(2097152);  // 1 GiB: as Debian's ploop wrote it
  EXPECT_EQ(g.cylinders, 2080u);
  EXPECT_EQ(g.heads, 16u);
  EXPECT_EQ(g.sectors, 63u);
  g = chs_for(20971520);  // 10 GiB
  EXPECT_EQ(g.cylinders, 40960u);
  EXPECT_EQ(g.heads, 16u);
  EXPECT_EQ(g.sectors, 32u);
  g = chs_for(131072);  // 64 MiB, as in the fixtures
  EXPECT_EQ(g.cylinders, 256u);
}

TEST(Format, TenGiBHeaderBytesMatchTheSpec) {
  Header h = make_header(10ull << 30, 2048);
  uint8_t b[64];
  encode_header(h, b);
  const uint8_t want[64] = {
      0x57, 0x69, 0x74, 0x68, 0x6f, 0x75, 0x46, 0x72, 0x65, 0x53, 0x70, 0x61, 0x63, 0x45, 0x78, 0x74,
      0x02, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00,
      0x00, 0x28, 0x00, 0x00, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x08, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  EXPECT_EQ(0, std::memcmp(b, want, 64));
  Header d = decode_header(b, 1 << 20, "x");
  EXPECT_EQ(d.bat_entries, 10240u);
  EXPECT_EQ(d.size_sectors, 20971520u);
  EXPECT_EQ(d.first_block_sectors, 2048u);
}

TEST(Format, SizeRoundsUpToACluster) {
  Header h = make_header(1000000, 64);  // 32 KiB clusters
  EXPECT_EQ(h.size_bytes() % h.cluster_bytes(), 0u);
  EXPECT_GE(h.size_bytes(), 1000000u);
  EXPECT_LT(h.size_bytes(), 1000000u + h.cluster_bytes());
}

TEST(Format, LargeDiskNeedsSeveralBatClusters) {
  Header h = make_header(1ull << 40, 2048);  // 1 TiB needs 5 BAT clusters
  EXPECT_EQ(h.first_block_sectors, 5u * 2048);
}

TEST(Format, BadParametersAreRefused) {
  EXPECT_THROW(make_header(0, 2048), Error);
  EXPECT_THROW(make_header(1 << 20, 100), Error);      // not a power of two
  EXPECT_THROW(make_header(1 << 20, 32), Error);       // below 32 KiB
  EXPECT_THROW(make_header(1 << 20, 262144), Error);   // above 64 MiB
  EXPECT_THROW(make_header(1ull << 62, 64), Error);    // absurd
  EXPECT_THROW(make_header(3ull << 40, 2048, 1), Error);  // v1 caps at 2 TiB
}

namespace {

std::vector<uint8_t> good_header() {
  std::vector<uint8_t> b(64);
  encode_header(make_header(64 << 20, 2048), std::span<uint8_t, 64>(b.data(), 64));
  return b;
}

void expect_corrupt(const std::vector<uint8_t>& b, uint64_t file_size, const char* needle) {
  try {
    decode_header(std::span<const uint8_t, 64>(b.data(), 64), file_size, "img");
    FAIL() << "no error for " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Exit::kFormat);
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}

}  // namespace

TEST(Format, CorruptHeadersGetClearErrors) {
  auto b = good_header();
  b[3] = 'X';
  expect_corrupt(b, 1 << 20, "signature");
  b = good_header();
  le::store32(&b[16], 3);
  expect_corrupt(b, 1 << 20, "image type");
  b = good_header();
  le::store32(&b[28], 3);
  expect_corrupt(b, 1 << 20, "cluster size");
  b = good_header();
  le::store32(&b[32], 0xffffffff);
  expect_corrupt(b, 1 << 20, "BAT has");
  b = good_header();
  le::store64(&b[36], 0);
  expect_corrupt(b, 1 << 20, "zero");
  b = good_header();
  le::store64(&b[36], ~0ull);
  expect_corrupt(b, 1 << 20, "absurd");
  b = good_header();
  le::store32(&b[48], 100);
  expect_corrupt(b, 1 << 20, "data area offset");
  b = good_header();
  expect_corrupt(b, 4096, "truncated");
}

TEST(Format, V1EntriesAreSectorOffsets) {
  Header h = make_header(64 << 20, 2048, 1);
  uint32_t c = 0;
  EXPECT_TRUE(bat_entry_to_cluster(h, 4096, c));
  EXPECT_EQ(c, 2u);
  EXPECT_FALSE(bat_entry_to_cluster(h, 4097, c));
  EXPECT_EQ(cluster_to_bat_entry(h, 3), 6144u);
  Header h2 = make_header(64 << 20, 2048, 2);
  EXPECT_EQ(cluster_to_bat_entry(h2, 3), 3u);
}
