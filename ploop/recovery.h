// Finishing what a crash interrupted. Operations on a chain record their intent in the
// descriptor before they touch a delta, and clear it when done:
// - a merge marks the parent snapshot <Temporary/>: it is finished by merging again (the copy is
//   idempotent, and until the descriptor changes the child still masks every cluster it copies);
// - a resize records <Pending_size>: it is committed if the top delta's header already has the new
//   size, and dropped otherwise.
#pragma once

namespace ploop {

struct Session;

// Returns true if something was finished or rolled back.
bool finish_interrupted(Session& s);

}  // namespace ploop
