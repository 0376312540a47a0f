// Seals of read-only deltas, a thing OpenVZ ploop and qemu do not have: when a delta becomes a
// snapshot, the XXH3-64 checksum of every 4 KiB block of every cluster it maps is recorded in a
// side file `<delta>.seal`, with the checksum of the delta's BAT (so a delta changed by another
// tool is told apart from a damaged one) and the checksum of its parent's seal (so a chain of
// seals is a verified chain). The delta file itself is untouched and stays byte-compatible with
// ploop and qemu; the format is in docs/format.md ("Seal files").
// A 4 KiB read is verified by reading exactly those 4 KiB and one 8-byte checksum.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ploop/file.h"
#include "ploop/progress.h"

namespace ploop {

class Delta;

inline constexpr uint32_t kSealBlock = 4096;

std::string seal_path(const std::string& delta_path);

// Writes `<delta>.seal` (atomically: temp file, sync, rename). `parent_delta` is "" for a base.
void seal_delta(Storage& storage, const std::string& delta_path, const std::string& parent_delta,
                const Progress& progress = {});
// The same for a delta the caller has open; with `sync_dir` false the caller syncs the directory
// (the seal's rename) before anything relies on the seal being there.
void seal_delta(Storage& storage, Delta& delta, const std::string& parent_delta, const Progress& progress,
                bool sync_dir);
void remove_seal(Storage& storage, const std::string& delta_path);

// The identity of a delta's seal (XXH3-128 of its seal file; zeros if it has none).
using SealId = std::array<uint8_t, 16>;
SealId seal_id(Storage& storage, const std::string& delta_path);

// After a merge rewrote a parent legitimately, points the seal of `delta_path` at the parent's
// new seal — but only if it pointed at `old_parent` (the parent's seal before the merge), so a
// broken chain is never laundered. Returns false (and changes nothing) otherwise.
bool relink_seal(Storage& storage, const std::string& delta_path, const std::string& new_parent,
                 const SealId& old_parent);

struct SealReport {
  bool present = false;
  bool ok = false;
  std::string problem;  // the first problem found, with the cluster and file offset
};

// Re-reads the whole delta and compares. Missing seal: present = false.
SealReport verify_seal(Storage& storage, const std::string& delta_path, const std::string& parent_delta,
                       const Progress& progress = {});

// A loaded seal, to verify reads as they happen.
class SealVerifier {
 public:
  // Returns nullptr if the delta has no seal; throws Error(kFormat) if the seal is damaged or stale.
  static std::unique_ptr<SealVerifier> load(Storage& storage, const std::string& delta_path);
  // Whether block `block` (4 KiB units from the start) of virtual cluster `vc` has checksum-matching
  // contents `data` (kSealBlock bytes). A cluster the seal does not cover fails.
  bool verify(uint32_t vc, uint64_t block, const uint8_t* data) const;

 private:
  uint64_t blocks_per_cluster_ = 0;
  std::unordered_map<uint32_t, uint64_t> index_;  // virtual cluster -> first checksum
  std::vector<uint64_t> sums_;
};

}  // namespace ploop
