#include "ploop/resize.h"

#include "ploop/delta.h"
#include "ploop/error.h"
#include "ploop/recovery.h"
#include "ploop/session.h"

namespace ploop {

uint64_t resize_disk(Storage& st, const std::string& dd_path, uint64_t new_size_bytes) {
  auto s = open_session(st, dd_path);
  Descriptor& d = s->dd;
  Header nh = make_header(new_size_bytes, d.blocksize);  // validates and rounds
  if (nh.size_sectors < d.size_sectors) {
    for (const auto& sh : d.shots) {
      if (sh.guid == d.top_guid) continue;
      auto lower = Delta::open(st, s->guid_path(sh.guid), OpenMode::kReadOnly);
      if (lower->size_bytes() > nh.size_bytes()) {
        throw Error(Exit::kParam, dd_path + ": cannot shrink below the size of snapshot " + sh.guid + " (" +
                                      std::to_string(lower->size_bytes()) + " bytes); merge or delete it first");
      }
    }
  }
  auto top = Delta::open(st, s->guid_path(d.top_guid), OpenMode::kReadWrite, false, /*lock=*/false);
  if (top->header().version == 1 && nh.size_sectors > UINT32_MAX) {
    throw Error(Exit::kParam, dd_path + ": a version 1 image cannot exceed 2 TiB");
  }
  d.pending_size = nh.size_sectors;
  s->save();
  try {
    top->resize(nh.size_bytes());
    top->close();
  } catch (...) {
    // Refused (nothing changed) or failed part-way: close what can be closed, and let the header
    // decide, as after a crash.
    try {
      top->close();
    } catch (...) {
    }
    top.reset();
    finish_interrupted(*s);
    throw;
  }
  d.set_size(nh.size_sectors);
  d.pending_size = 0;
  s->save();
  return nh.size_bytes();
}

}  // namespace ploop
