// A disk as users name it: a DiskDescriptor.xml (the whole chain it lists) or a single delta
// file. Creating one writes the delta and the descriptor beside it; opening one checks that the
// descriptor and the delta headers agree before any byte is served.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ploop/descriptor.h"
#include "ploop/file.h"
#include "ploop/stack.h"

namespace ploop {

struct CreateOptions {
  uint64_t size_bytes = 0;
  uint32_t cluster_sectors = kDefaultClusterSectors;
  int version = 2;
};

// True if `path` names a descriptor (its file name ends in ".xml").
bool is_descriptor(const std::string& path);

// Creates `image_path` and DiskDescriptor.xml in the same directory. Refuses, touching nothing,
// if either exists. Returns the descriptor's path.
std::string create_disk(Storage& storage, const std::string& image_path, const CreateOptions& opts);

// The same, returning the new disk open read-write. Its image lock is held from the moment the
// file exists, so no other program (qemu, another ploop) can open it before the caller has
// written what it creates it for (import).
struct NewDisk {
  std::string descriptor;
  std::unique_ptr<Stack> stack;
};
NewDisk create_disk_open(Storage& storage, const std::string& image_path, const CreateOptions& opts);

// Opens a descriptor's chain (top writable if `mode` is kReadWrite) or a single delta.
// Throws Error(kDescriptor) if the descriptor and the deltas disagree on size or cluster size.
// With `guid`, opens the chain from the base up to that snapshot (read-only unless it is the top).
std::unique_ptr<Stack> open_disk(Storage& storage, const std::string& path, OpenMode mode,
                                 bool allow_dirty = false, const std::string& guid = "");

// For a server that keeps a disk open read-only: makes `stack` hold a shared image lock on every
// delta, so no writer (snapshot, merge, resize, check -r, another server) changes them meanwhile.
void hold_shared_locks(Storage& storage, Stack& stack);

}  // namespace ploop
