#include "ploop/format.h"

#include <cstring>

#include "ploop/error.h"
#include "ploop/le_codec.h"

namespace ploop {
namespace {

uint64_t div_up(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }  // no overflow near 2^64

[[noreturn]] void corrupt(const std::string& name, const std::string& what) {
  throw Error(Exit::kFormat, name + ": " + what);
}

}  // namespace

bool valid_cluster_sectors(uint64_t cs) {
  return cs >= kMinClusterSectors && cs <= kMaxClusterSectors && (cs & (cs - 1)) == 0;
}

Geometry chs_for(uint64_t size) {
  // OpenVZ's ConvertToCHS: the classic 63x16 geometry for mid-sized disks, otherwise the first
  // divisors that fit, and pure LBA when none does.
  if (size > 1032192 && size < 16777216) {
    return {static_cast<uint32_t>(size / (63 * 16)), 16, 63};
  }
  for (uint32_t s : {63u, 32u, 16u, 8u}) {
    if (size % s) continue;
    for (uint32_t h : {16u, 8u, 4u, 2u}) {
      if ((size / s) % h) continue;
      uint64_t c = size / s / h;
      if (c > UINT32_MAX) break;
      return {static_cast<uint32_t>(c), h, s};
    }
  }
  return {static_cast<uint32_t>(size > UINT32_MAX ? UINT32_MAX : size), 1, 1};
}

uint64_t metadata_clusters(uint64_t bat_entries, uint64_t cluster_bytes) {
  return div_up(kHeaderSize + 4 * bat_entries, cluster_bytes);
}

Header make_header(uint64_t size_bytes, uint32_t cluster_sectors, int version) {
  if (!valid_cluster_sectors(cluster_sectors)) {
    throw Error(Exit::kParam, "cluster size " + std::to_string(uint64_t{cluster_sectors} * 512) +
                                  " bytes is not a power of two from 32 KiB to 64 MiB");
  }
  if (size_bytes == 0) throw Error(Exit::kParam, "disk size must be greater than zero");
  if (version != 1 && version != 2) throw Error(Exit::kParam, "format version must be 1 or 2");
  Header h;
  h.version = version;
  h.cluster_sectors = cluster_sectors;
  uint64_t cluster = h.cluster_bytes();
  uint64_t entries = div_up(size_bytes, cluster);
  if (entries > kMaxBatEntries) {
    throw Error(Exit::kParam, "disk size " + std::to_string(size_bytes) + " bytes is too large (at most " +
                                  std::to_string(kMaxBatEntries) + " clusters)");
  }
  h.bat_entries = static_cast<uint32_t>(entries);
  h.size_sectors = entries * cluster_sectors;
  uint64_t meta = metadata_clusters(entries, cluster) * cluster_sectors;
  if (version == 1 && (h.size_sectors > UINT32_MAX || meta > UINT32_MAX)) {
    throw Error(Exit::kParam, "disk size too large for format version 1 (2 TiB at most)");
  }
  h.first_block_sectors = static_cast<uint32_t>(meta);
  Geometry g = chs_for(h.size_sectors);
  h.heads = g.heads;
  h.cylinders = g.cylinders;
  h.flags = kFlagEmpty;
  return h;
}

Header decode_header(std::span<const uint8_t, kHeaderSize> b, uint64_t file_size,
                     const std::string& name) {
  Header h;
  if (std::memcmp(b.data(), kSignatureV2, 16) == 0) {
    h.version = 2;
  } else if (std::memcmp(b.data(), kSignatureV1, 16) == 0) {
    h.version = 1;
  } else {
    corrupt(name, "not a ploop image (signature is neither WithoutFreeSpace nor WithouFreSpacExt)");
  }
  h.type = le::load32(&b[16]);
  h.heads = le::load32(&b[20]);
  h.cylinders = le::load32(&b[24]);
  h.cluster_sectors = le::load32(&b[28]);
  h.bat_entries = le::load32(&b[32]);
  // v1 keeps a 32-bit size followed by 4 unused bytes; v2 a 64-bit size.
  h.size_sectors = h.version == 1 ? le::load32(&b[36]) : le::load64(&b[36]);
  h.in_use = le::load32(&b[44]);
  h.first_block_sectors = le::load32(&b[48]);
  h.flags = le::load32(&b[52]);
  h.ext_offset_sectors = le::load64(&b[56]);

  if (h.type != kImageType) {
    corrupt(name, "image type " + std::to_string(h.type) + " at offset 16, expected 2 (expandable)");
  }
  if (!valid_cluster_sectors(h.cluster_sectors)) {
    corrupt(name, "cluster size " + std::to_string(h.cluster_sectors) +
                      " sectors at offset 28 is not a power of two from 64 to 131072");
  }
  if (h.size_sectors == 0) corrupt(name, "disk size at offset 36 is zero");
  uint64_t want_entries = div_up(h.size_sectors, h.cluster_sectors);
  if (want_entries > kMaxBatEntries) {
    corrupt(name, "disk size " + std::to_string(h.size_sectors) + " sectors is absurd (more than " +
                      std::to_string(kMaxBatEntries) + " clusters)");
  }
  if (h.bat_entries != want_entries) {
    corrupt(name, "BAT has " + std::to_string(h.bat_entries) + " entries (offset 32) but a disk of " +
                      std::to_string(h.size_sectors) + " sectors needs " + std::to_string(want_entries));
  }
  uint64_t min_first = metadata_clusters(h.bat_entries, h.cluster_bytes()) * h.cluster_sectors;
  if (h.first_block_sectors % h.cluster_sectors != 0 || h.first_block_sectors < min_first) {
    corrupt(name, "data area offset " + std::to_string(h.first_block_sectors) +
                      " sectors (offset 48) is not a cluster multiple of at least " +
                      std::to_string(min_first));
  }
  if (h.data_offset_bytes() > file_size) {
    corrupt(name, "file is truncated: " + std::to_string(file_size) + " bytes, but the header and BAT need " +
                      std::to_string(h.data_offset_bytes()));
  }
  return h;
}

void encode_header(const Header& h, std::span<uint8_t, kHeaderSize> b) {
  std::memcpy(b.data(), h.version == 1 ? kSignatureV1 : kSignatureV2, 16);
  le::store32(&b[16], h.type);
  le::store32(&b[20], h.heads);
  le::store32(&b[24], h.cylinders);
  le::store32(&b[28], h.cluster_sectors);
  le::store32(&b[32], h.bat_entries);
  if (h.version == 1) {
    le::store32(&b[36], static_cast<uint32_t>(h.size_sectors));
    le::store32(&b[40], 0);
  } else {
    le::store64(&b[36], h.size_sectors);
  }
  le::store32(&b[44], h.in_use);
  le::store32(&b[48], h.first_block_sectors);
  le::store32(&b[52], h.flags);
  le::store64(&b[56], h.ext_offset_sectors);
}

bool bat_entry_to_cluster(const Header& h, uint32_t entry, uint32_t& cluster) {
  if (h.version == 2) {
    cluster = entry;
    return true;
  }
  if (entry % h.cluster_sectors) return false;
  cluster = entry / h.cluster_sectors;
  return true;
}

uint32_t cluster_to_bat_entry(const Header& h, uint32_t cluster) {
  return h.version == 2 ? cluster : cluster * h.cluster_sectors;
}

}  // namespace ploop
