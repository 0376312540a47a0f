#include "ploop/recovery.h"

#include "ploop/delta.h"
#include "ploop/merge.h"
#include "ploop/session.h"

namespace ploop {

bool finish_interrupted(Session& s) {
  bool did = false;
  Descriptor& d = s.dd;
  if (d.pending_size) {
    // The header is written last by Delta::resize: it tells whether the resize happened.
    uint64_t top_size = Delta::open(s.storage, s.guid_path(d.top_guid), OpenMode::kReadOnly)->header().size_sectors;
    if (top_size == d.pending_size) d.set_size(top_size);
    d.pending_size = 0;
    s.save();
    did = true;
  }
  for (bool again = true; again;) {
    again = false;
    for (const auto& sh : d.shots) {
      if (!sh.temporary) continue;
      auto kids = d.children(sh.guid);
      if (kids.size() == 1) {
        merge_into_parent(s, kids[0]->guid);
      } else {
        for (auto& x : d.shots) {
          if (x.guid == sh.guid) x.temporary = false;
        }
        s.save();
      }
      did = again = true;
      break;
    }
  }
  return did;
}

}  // namespace ploop
