// The ploop delta header: its 64 bytes, how they decode and encode, and the rules that make a
// header valid. See docs/format.md for the byte layout; field names follow OpenVZ's
// include/ploop1_image.h (m_Sig, m_Type, ...). Decoding validates every field before any value
// is used to size a buffer or compute an offset; a header that fails gets an Error(kFormat)
// naming the file, the field and what was expected.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

namespace ploop {

inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kHeaderSize = 64;
inline constexpr uint32_t kBatMapOffset = kHeaderSize / 4;  // header occupies BAT slots 0..15
inline constexpr uint32_t kImageType = 2;                  // PRL_IMAGE_COMPRESSED ("expandable")
inline constexpr uint32_t kInUseMagic = 0x746F6E59;             // "Ynot": open read-write / not closed
inline constexpr uint32_t kClosedV21 = 0x312e3276;         // "v2.1": closed, format extension valid
inline constexpr uint64_t kFormatExtensionMagic = 0xAB234CEF23DCEA87ull;  // first 8 bytes of the extension
inline constexpr uint32_t kFlagEmpty = 0x1;                // CIF_Empty
inline constexpr uint32_t kFlagFmtConvert = 0x2;           // CIF_FmtVersionConvert
inline constexpr uint32_t kMinClusterSectors = 64;         // 32 KiB
inline constexpr uint32_t kMaxClusterSectors = 131072;     // 64 MiB
inline constexpr uint32_t kDefaultClusterSectors = 2048;   // 1 MiB
// Largest BAT this implementation accepts: 2^28 entries (256 TiB at 1 MiB clusters). Above it
// the in-memory map alone would need gigabytes; such a header is treated as corrupt.
inline constexpr uint64_t kMaxBatEntries = uint64_t{1} << 28;

inline constexpr char kSignatureV1[16] = {'W', 'i', 't', 'h', 'o', 'u', 't', 'F',
                                          'r', 'e', 'e', 'S', 'p', 'a', 'c', 'e'};
inline constexpr char kSignatureV2[16] = {'W', 'i', 't', 'h', 'o', 'u', 'F', 'r',
                                          'e', 'S', 'p', 'a', 'c', 'E', 'x', 't'};

// The 64 header bytes, decoded. Values are exactly what is on disk.
struct Header {
  int version = 2;                 // 1: "WithoutFreeSpace" (BAT in sectors), 2: "...Ext" (clusters)
  uint32_t type = kImageType;      // m_Type
  uint32_t heads = 0;              // m_Heads (geometry, informational)
  uint32_t cylinders = 0;          // m_Cylinders (geometry, informational)
  uint32_t cluster_sectors = 0;    // m_Sectors: cluster size in 512-byte sectors
  uint32_t bat_entries = 0;        // m_Size: number of BAT entries (virtual clusters)
  uint64_t size_sectors = 0;       // m_SizeInSectors (v1: low 32 bits only)
  uint32_t in_use = 0;             // m_DiskInUse
  uint32_t first_block_sectors = 0;  // m_FirstBlockOffset: start of the data area, in sectors
  uint32_t flags = 0;              // m_Flags
  uint64_t ext_offset_sectors = 0;  // m_FormatExtensionOffset, in sectors; 0 = none

  uint64_t cluster_bytes() const { return uint64_t{cluster_sectors} * kSectorSize; }
  uint64_t size_bytes() const { return size_sectors * kSectorSize; }
  uint64_t data_offset_bytes() const { return uint64_t{first_block_sectors} * kSectorSize; }
  uint32_t data_start_cluster() const { return first_block_sectors / cluster_sectors; }
  bool dirty() const { return in_use != 0 && in_use != kClosedV21; }
};

// CHS geometry as OpenVZ computes it (ConvertToCHS); informational only.
struct Geometry {
  uint32_t cylinders, heads, sectors;
};
Geometry chs_for(uint64_t size_sectors);

// Number of clusters the header and BAT of `bat_entries` entries occupy (rounded up).
uint64_t metadata_clusters(uint64_t bat_entries, uint64_t cluster_bytes);

// A header for a new empty delta of `size_bytes` (rounded up to a cluster, as ploop does).
// Throws Error(kParam) for a size of 0, a size above the limits, or a bad cluster size.
Header make_header(uint64_t size_bytes, uint32_t cluster_sectors, int version = 2);

// Whether a cluster size (in sectors) is one this implementation reads and writes.
bool valid_cluster_sectors(uint64_t cluster_sectors);

// Decodes and validates the first 64 bytes of a delta. `file_size` is used to check that the
// header and BAT lie within the file (the format-extension offset is left to check).
// `name` appears in error messages.
Header decode_header(std::span<const uint8_t, kHeaderSize> bytes, uint64_t file_size,
                     const std::string& name);

void encode_header(const Header& h, std::span<uint8_t, kHeaderSize> out);

// BAT entry <-> file cluster index. v1 stores sector offsets, v2 cluster indices; 0 is "unmapped".
// decode returns false if a v1 entry is not cluster-aligned.
bool bat_entry_to_cluster(const Header& h, uint32_t entry, uint32_t& cluster);
uint32_t cluster_to_bat_entry(const Header& h, uint32_t cluster);

}  // namespace ploop
