#include "ploop/error.h"

#include <cstring>

namespace ploop {

void throw_errno(Exit code, int err, const std::string& what, const std::string& path,
                 int64_t offset) {
  std::string msg = what + ": " + path;
  if (offset >= 0) msg += " at offset " + std::to_string(offset);
  msg += ": ";
  msg += std::strerror(err);
  throw Error(code, msg, err);
}

}  // namespace ploop
