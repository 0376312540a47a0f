// An offline session on a disk named by its DiskDescriptor.xml: the descriptor, loaded and
// validated, and the image lock on the chain's base, held until the session ends. Every
// operation that changes a chain (snapshot, switch, delete, merge, resize) runs inside one, so a
// second writer — this tool, OpenVZ ploop or qemu — is refused rather than raced.
#pragma once

#include <memory>
#include <string>

#include "ploop/descriptor.h"
#include "ploop/file.h"

namespace ploop {

struct Session {
  Storage& storage;
  std::string dd_path;
  Descriptor dd;
  std::unique_ptr<File> lock;

  std::string path_of(const std::string& file) const;
  std::string guid_path(const std::string& guid) const;  // the image file of a snapshot
  void save() { dd.save(storage, dd_path); }
};

// Loads the descriptor, takes the lock, and finishes any operation that a crash interrupted
// (see recovery.h). Throws Error(kInUse) if another process holds the lock.
std::unique_ptr<Session> open_session(Storage& storage, const std::string& dd_path);

}  // namespace ploop
