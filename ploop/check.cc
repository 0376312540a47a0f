#include "ploop/check.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "ploop/error.h"
#include "ploop/format.h"
#include "ploop/le_codec.h"

namespace ploop {
namespace {

constexpr size_t kPage = 4096;
constexpr uint64_t kNoOwner = UINT64_MAX;

std::string n2s(uint64_t v) { return std::to_string(v); }

}  // namespace

bool CheckReport::ok() const {
  for (const auto& f : findings) {
    if (f.severity == CheckFinding::kError && !f.repaired) return false;
  }
  return true;
}


CheckReport check_delta(Storage& storage, const std::string& path, const CheckOptions& opts,
                        const Progress& progress) {
  CheckReport r;
  auto add = [&](CheckFinding::Severity s, std::string text) -> CheckFinding& {
    r.findings.push_back({s, std::move(text), false});
    return r.findings.back();
  };
  auto f = storage.open(path, opts.repair ? OpenMode::kReadWrite : OpenMode::kReadOnly);
  if (opts.repair) {
    if (std::string holder = f->lock_image(); !holder.empty()) {
      throw Error(Exit::kInUse, path + ": image is in use by " + holder + "; not repairing it");
    }
  }
  r.file_size = f->size();
  if (r.file_size < kHeaderSize) {
    add(CheckFinding::kError, "file is " + n2s(r.file_size) + " bytes, too short for a ploop header");
    return r;
  }
  uint8_t hb[kHeaderSize];
  f->read(hb, kHeaderSize, 0);
  Header h;
  try {
    h = decode_header(std::span<const uint8_t, kHeaderSize>(hb, kHeaderSize), r.file_size, path);
  } catch (const Error& e) {
    add(CheckFinding::kError, e.what());
    return r;
  }
  r.header_valid = true;
  const uint64_t cs = h.cluster_bytes();
  r.cluster_bytes = cs;
  r.bat_entries = h.bat_entries;
  const uint32_t data_start = h.data_start_cluster();
  std::vector<uint8_t> meta(h.data_offset_bytes());
  f->read(meta.data(), meta.size(), 0);
  std::vector<bool> dirty_pages((meta.size() + kPage - 1) / kPage, false);
  auto set_entry = [&](uint64_t slot, uint32_t value) {
    le::store32(&meta[4 * slot], value);
    dirty_pages[4 * slot / kPage] = true;
  };

  if (h.size_sectors % h.cluster_sectors) {
    add(CheckFinding::kInfo, "disk size " + n2s(h.size_sectors) +
                                 " sectors is not a multiple of the cluster size (as qemu writes it); "
                                 "OpenVZ's kernel would not mount it");
  }
  uint64_t min_first = metadata_clusters(h.bat_entries, cs) * h.cluster_sectors;
  if (h.first_block_sectors != min_first) {
    add(CheckFinding::kWarning, "data area starts at sector " + n2s(h.first_block_sectors) + ", not at " +
                                    n2s(min_first) + " (OpenVZ's kernel refuses custom offsets)");
  }
  if (h.flags & kFlagFmtConvert) {
    add(CheckFinding::kError, "an interrupted v1/v2 format conversion is recorded (CIF_FmtVersionConvert)");
  }
  if (r.file_size % cs) {
    auto& x = add(CheckFinding::kWarning, "file size " + n2s(r.file_size) + " is not a multiple of the cluster size " + n2s(cs));
    if (opts.repair) {
      uint64_t want = (r.file_size + cs - 1) / cs * cs;
      f->truncate(want);
      f->sync();
      r.file_size = want;
      x.repaired = true;
    }
  }
  uint64_t file_clusters = (r.file_size + cs - 1) / cs;

  // BAT entries.
  std::vector<uint64_t> owner(file_clusters, kNoOwner);
  std::vector<std::pair<uint32_t, uint32_t>> dups;  // (virtual cluster, shared file cluster)
  std::vector<size_t> dup_findings;
  for (uint32_t vc = 0; vc < h.bat_entries; ++vc) {
    if (progress && (vc % 65536 == 0)) progress(vc, h.bat_entries);
    uint32_t e = le::load32(&meta[kHeaderSize + 4 * size_t{vc}]);
    if (!e) continue;
    uint32_t c = 0;
    std::string where = "BAT entry " + n2s(vc) + " (file offset " + n2s(kHeaderSize + 4 * uint64_t{vc}) + ")";
    CheckFinding* bad = nullptr;
    if (!bat_entry_to_cluster(h, e, c)) {
      bad = &add(CheckFinding::kError, where + " is " + n2s(e) + " sectors, not a cluster multiple");
    } else if (c < data_start) {
      bad = &add(CheckFinding::kError, where + " points to cluster " + n2s(c) + " inside the header and BAT");
    } else if (c >= file_clusters) {
      bad = &add(CheckFinding::kError, where + " points to cluster " + n2s(c) + " past the end of the file");
    } else if (owner[c] != kNoOwner) {
      add(CheckFinding::kError, where + " shares cluster " + n2s(c) + " with BAT entry " + n2s(owner[c]));
      dup_findings.push_back(r.findings.size() - 1);
      dups.emplace_back(vc, c);
      continue;
    } else {
      owner[c] = vc;
      ++r.allocated_clusters;
      continue;
    }
    if (opts.repair) {  // the data is unreachable anyway; drop the entry, as qemu does
      set_entry(kBatMapOffset + vc, 0);
      bad->repaired = true;
    }
  }
  if (progress) progress(h.bat_entries, h.bat_entries);
  for (uint64_t slot = kBatMapOffset + uint64_t{h.bat_entries}; slot < meta.size() / 4; ++slot) {
    if (le::load32(&meta[4 * slot]) == 0) continue;
    auto& x = add(CheckFinding::kWarning, "BAT slot " + n2s(slot - kBatMapOffset) + " past the last entry is not zero");
    if (opts.repair) {
      set_entry(slot, 0);
      x.repaired = true;
    }
  }

  // Duplicates: give each later entry its own copy of the data (qemu's repair).
  // Copies go to unreferenced clusters inside the file first (lowest first), then past its end.
  if (opts.repair && !dups.empty()) {
    std::vector<uint8_t> buf(std::min<uint64_t>(cs, 1 << 20));
    std::vector<uint32_t> targets;
    uint64_t scan = data_start;
    for (auto [vc, c] : dups) {
      while (scan < file_clusters && owner[scan] != kNoOwner) ++scan;
      if (scan == file_clusters) {
        owner.push_back(kNoOwner);
        ++file_clusters;
      }
      auto nc = static_cast<uint32_t>(scan);
      owner[nc] = vc;
      targets.push_back(nc);
      for (uint64_t pos = 0; pos < cs; pos += buf.size()) {
        f->read(buf.data(), buf.size(), c * cs + pos);
        f->write(buf.data(), buf.size(), nc * cs + pos);
      }
      ++r.allocated_clusters;
    }
    f->sync();  // the copies are durable before any entry points at them
    for (size_t i = 0; i < dups.size(); ++i) {
      set_entry(kBatMapOffset + dups[i].first, cluster_to_bat_entry(h, targets[i]));
    }
    for (size_t i : dup_findings) r.findings[i].repaired = true;
  }

  // Write back repaired BAT pages (not the header page's header: that comes last).
  bool bat_changed = std::find(dirty_pages.begin(), dirty_pages.end(), true) != dirty_pages.end();
  if (bat_changed) {
    for (size_t p = 0; p < dirty_pages.size(); ++p) {
      if (!dirty_pages[p]) continue;
      size_t n = std::min(kPage, meta.size() - p * kPage);
      size_t from = p == 0 ? kHeaderSize : 0;  // page 0: leave the on-disk header alone for now
      f->write(&meta[p * kPage + from], n - from, p * kPage + from);
    }
    f->sync();
  }

  // The format extension, if any, sits at the end of the file and must not count as a leak.
  uint64_t last_used = data_start;  // one past the last used cluster
  for (uint64_t c = file_clusters; c > data_start; --c) {
    if (owner[c - 1] != kNoOwner) {
      last_used = c;
      break;
    }
  }
  bool header_changed = false;
  if (h.ext_offset_sectors) {
    uint64_t ext = h.ext_offset_sectors * kSectorSize;
    std::string bad;
    if (ext % cs || ext / cs < data_start || ext + cs > r.file_size) {
      bad = "is not a cluster inside the file's data area";
    } else if (owner[ext / cs] != kNoOwner) {
      bad = "points at cluster " + n2s(ext / cs) + ", which BAT entry " + n2s(owner[ext / cs]) + " uses for data";
    } else {
      uint8_t magic[8];
      f->read(magic, 8, ext);
      if (le::load64(magic) != kFormatExtensionMagic) bad = "points at a cluster without the extension magic";
    }
    if (!bad.empty()) {
      // Readers (qemu) refuse such an image; dropping the offset loses only the unusable extension.
      auto& x = add(CheckFinding::kError, "format extension offset " + n2s(h.ext_offset_sectors) + " sectors " + bad);
      if (opts.repair) {
        h.ext_offset_sectors = 0;
        header_changed = x.repaired = true;
      }
    } else {
      // Its bitmap clusters are not in the BAT and their order is not fixed: keep the whole tail.
      add(CheckFinding::kInfo, "has a format extension (dirty bitmaps) at sector " + n2s(h.ext_offset_sectors) +
                                   "; clusters after the data are kept for it");
      last_used = file_clusters;
    }
  }
  for (uint64_t c = data_start; c < last_used; ++c) {
    if (owner[c] == kNoOwner) ++r.free_clusters;
  }
  if (r.free_clusters) add(CheckFinding::kInfo, n2s(r.free_clusters) + " unused clusters inside the file (reusable)");
  if (file_clusters > last_used) {
    r.leaked_clusters = file_clusters - last_used;
    auto& x = add(CheckFinding::kWarning, n2s(r.leaked_clusters) + " leaked clusters past the last used one");
    if (opts.repair) {
      f->truncate(last_used * cs);
      f->sync();
      r.file_size = last_used * cs;
      x.repaired = true;
    }
  }

  if ((h.flags & kFlagEmpty) && r.allocated_clusters) {
    auto& x = add(CheckFinding::kWarning, "CIF_Empty flag is set but the image holds data");
    if (opts.repair) {
      h.flags &= ~kFlagEmpty;
      header_changed = x.repaired = true;
    }
  }
  if (h.in_use != 0 && h.in_use != kInUseMagic && h.in_use != kClosedV21) {
    add(CheckFinding::kWarning, "unknown in-use value " + n2s(h.in_use) + " (not written by ploop or qemu)");
  }
  if (h.dirty()) {
    auto& x = add(CheckFinding::kWarning, "image was not closed cleanly (in-use flag set)");
    if (opts.repair && r.ok()) {
      h.in_use = 0;
      header_changed = x.repaired = true;
    } else {
      r.in_use_left = true;
    }
  }
  if (header_changed) {
    encode_header(h, std::span<uint8_t, kHeaderSize>(meta.data(), kHeaderSize));
    f->write(meta.data(), kHeaderSize, 0);
    f->sync();
  }
  return r;
}

}  // namespace ploop
