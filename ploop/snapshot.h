// The snapshot tree, offline, with OpenVZ's semantics (docs/format.md, DiskDescriptor.xml):
// the writable top delta always has GUID {5fbaabe3-...}; a snapshot turns the current top into a
// read-only snapshot under a new GUID and puts a new empty top delta, `<base file>.{GUID}`, over
// it. The descriptor is replaced atomically, after the new file is durable, so a crash leaves
// either the old tree or the new one (at worst an unreferenced new file).
#pragma once

#include <string>
#include <vector>

#include "ploop/file.h"

namespace ploop {

struct SnapshotInfo {
  std::string guid;
  std::string parent;
  std::string file;
  bool current = false;    // the writable top
  bool temporary = false;  // an interrupted operation is recorded on it
};

// Takes a snapshot; `guid` empty means a new random one. Returns the snapshot's GUID.
std::string create_snapshot(Storage& storage, const std::string& dd_path, std::string guid = "");

// Rolls back: the current top delta is removed and a new empty top is put over snapshot `guid`.
void switch_snapshot(Storage& storage, const std::string& dd_path, const std::string& guid);

std::vector<SnapshotInfo> list_snapshots(Storage& storage, const std::string& dd_path);

}  // namespace ploop
