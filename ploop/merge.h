// Merging deltas, offline. Merging a child C into its parent P copies only the clusters C owns
// into P's file (overwriting P's copy in place, or in a cluster P allocates: its free clusters
// first), then the descriptor makes P's file carry C's GUID and forgets P, and C's file is
// removed. Cost is proportional to the data in C, not to the disk size; P's file does not grow
// beyond the data it holds (its unused tail is truncated).
// Crash safety: P is marked <Temporary/> in the descriptor before its file changes; until the
// descriptor is replaced, C still masks every cluster being copied, so the chain reads the same
// at every moment, and the interrupted merge is finished on the next session (recovery.h).
#pragma once

#include <string>

#include "ploop/file.h"
#include "ploop/progress.h"

namespace ploop {

struct Session;

// Merges snapshot `child` into its parent. The parent must have no other child.
void merge_into_parent(Session& s, std::string child, const Progress& progress = {});

// ploop snapshot-delete: removes snapshot `guid`, merging it with its only child; a snapshot
// without children is simply removed; one with two or more children is refused.
void delete_snapshot(Storage& storage, const std::string& dd_path, const std::string& guid,
                     const Progress& progress = {});

// ploop snapshot-merge: merges `guid` (the top if empty) into its parent; with `all`, merges the
// whole chain under the top into one delta.
void merge_snapshot(Storage& storage, const std::string& dd_path, const std::string& guid, bool all,
                    const Progress& progress = {});

}  // namespace ploop
