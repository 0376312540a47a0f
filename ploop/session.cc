#include "ploop/session.h"

#include "ploop/error.h"
#include "ploop/paths.h"
#include "ploop/recovery.h"

namespace ploop {

std::string Session::path_of(const std::string& file) const { return join_path(dir_of(dd_path), file); }

std::string Session::guid_path(const std::string& guid) const {
  const DescriptorImage* im = dd.image(guid);
  if (!im) throw Error(Exit::kParam, dd_path + ": no snapshot " + guid);
  return path_of(im->file);
}

std::unique_ptr<Session> open_session(Storage& storage, const std::string& dd_path) {
  auto s = std::unique_ptr<Session>(new Session{storage, dd_path, Descriptor::load(storage, dd_path), nullptr});
  std::string base = s->guid_path(s->dd.root()->guid);
  if (!storage.exists(base)) throw Error(Exit::kDescriptor, dd_path + ": image file " + base + " does not exist");
  s->lock = storage.open(base, OpenMode::kReadOnly);
  if (std::string holder = s->lock->lock_image(); !holder.empty()) {
    throw Error(Exit::kInUse, base + ": image is in use by " + holder);
  }
  finish_interrupted(*s);
  return s;
}

}  // namespace ploop
