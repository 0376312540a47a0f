// Resizing a disk offline: the top delta grows (its BAT grows, data clusters in the way move, each
// step durable before the next; see Delta::resize) or shrinks (only when nothing is stored past
// the new end and no snapshot is larger), then the descriptor records the new size. The intent is
// recorded in the descriptor first (<Pending_size>), so a crash in between is finished or dropped
// on the next session. The file system inside is not touched here.
#pragma once

#include <cstdint>
#include <string>

#include "ploop/file.h"

namespace ploop {

// Returns the new size in bytes (rounded up to a cluster).
uint64_t resize_disk(Storage& storage, const std::string& dd_path, uint64_t new_size_bytes);

}  // namespace ploop
