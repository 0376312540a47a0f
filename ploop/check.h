// Checking and repairing one delta file: the union of OpenVZ ploop's and qemu's checks.
// It works on files that Delta::open would refuse (that is its purpose), reading raw bytes and
// validating each field itself.
//
// Checked: signature, type, cluster size, disk size against the BAT, data-area offset, file size
// (a cluster multiple), every BAT entry (v1 alignment, inside the header/BAT area, past the end of
// the file, two entries sharing a cluster), non-zero slots past the last entry, leaked clusters
// past the last used one, the in-use flag, CIF_Empty, and the format-extension offset.
// Repairs (with `repair`) are the safe ones, each ordered so that a crash during repair leaves an
// image no worse than before: data copies are synced before BAT entries change, BAT entries are
// synced before the file is truncated, and the header (in-use flag) is written last.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ploop/file.h"
#include "ploop/progress.h"

namespace ploop {

struct CheckFinding {
  enum Severity { kInfo, kWarning, kError };
  Severity severity;
  std::string text;
  bool repaired = false;
};

struct CheckReport {
  std::vector<CheckFinding> findings;
  uint64_t bat_entries = 0;
  uint64_t allocated_clusters = 0;
  uint64_t free_clusters = 0;   // unreferenced clusters inside the file (reusable holes)
  uint64_t leaked_clusters = 0;  // unreferenced clusters past the last used one
  uint64_t cluster_bytes = 0;
  uint64_t file_size = 0;
  bool header_valid = false;
  // No error is left unrepaired.
  bool ok() const;
  bool in_use_left = false;  // the in-use flag is still set
};

struct CheckOptions {
  bool repair = false;
};

CheckReport check_delta(Storage& storage, const std::string& path, const CheckOptions& opts,
                        const Progress& progress = {});

}  // namespace ploop
