// Progress reporting for long operations: the library calls a Progress with work done and total
// work (in the operation's own units); the CLI decides whether and how to show it.
#pragma once

#include <cstdint>
#include <functional>

namespace ploop {

using Progress = std::function<void(uint64_t done, uint64_t total)>;

}  // namespace ploop
