#include "ploop/disk.h"

#include <vector>

#include "ploop/error.h"
#include "ploop/paths.h"

namespace ploop {

bool is_descriptor(const std::string& path) {
  return path.size() >= 4 && path.compare(path.size() - 4, 4, ".xml") == 0;
}

namespace {

// The descriptor's path for a new disk at `image_path`, after checking that neither file exists
// and that the options make a valid header.
std::string check_new_disk(Storage& storage, const std::string& image_path, const CreateOptions& opts) {
  std::string dd = join_path(dir_of(image_path), kDescriptorName);
  if (storage.exists(image_path)) throw Error(Exit::kCreate, image_path + ": already exists");
  if (storage.exists(dd)) throw Error(Exit::kCreate, dd + ": already exists");
  make_header(opts.size_bytes, opts.cluster_sectors, opts.version);  // validates
  return dd;
}

void save_new_descriptor(Storage& storage, const std::string& dd, const std::string& image_path,
                         const Header& h) {
  try {
    Descriptor::make(h.size_sectors, h.cluster_sectors, base_of(image_path)).save(storage, dd);
  } catch (...) {
    storage.remove(image_path);
    throw;
  }
}

}  // namespace

std::string create_disk(Storage& storage, const std::string& image_path, const CreateOptions& opts) {
  std::string dd = check_new_disk(storage, image_path, opts);
  Delta::create_closed(storage, image_path, opts.size_bytes, opts.cluster_sectors, opts.version);
  save_new_descriptor(storage, dd, image_path, make_header(opts.size_bytes, opts.cluster_sectors, opts.version));
  return dd;
}

NewDisk create_disk_open(Storage& storage, const std::string& image_path, const CreateOptions& opts) {
  std::string dd = check_new_disk(storage, image_path, opts);
  auto delta = Delta::create(storage, image_path, opts.size_bytes, opts.cluster_sectors, opts.version);
  save_new_descriptor(storage, dd, image_path, delta->header());
  std::vector<std::unique_ptr<Delta>> deltas;
  deltas.push_back(std::move(delta));
  return {dd, std::make_unique<Stack>(std::move(deltas))};
}

std::unique_ptr<Stack> open_disk(Storage& storage, const std::string& path, OpenMode mode, bool allow_dirty,
                                 const std::string& guid) {
  std::vector<std::unique_ptr<Delta>> deltas;
  if (!is_descriptor(path)) {
    deltas.push_back(Delta::open(storage, path, mode, allow_dirty));
    return std::make_unique<Stack>(std::move(deltas));
  }
  Descriptor d = Descriptor::load(storage, path);
  if (!guid.empty() && guid != d.top_guid && mode == OpenMode::kReadWrite) {
    throw Error(Exit::kParam, path + ": snapshot " + guid + " is read-only; only the top delta can be written");
  }
  std::vector<std::string> files = d.chain(guid);
  const bool is_top = guid.empty() || guid == d.top_guid;
  // A writer locks the base of the chain (as OpenVZ ploop does) and the top (as qemu does).
  std::unique_ptr<File> base_lock;
  if (mode == OpenMode::kReadWrite && files.size() > 1) {
    std::string base = join_path(dir_of(path), files[0]);
    if (!storage.exists(base)) throw Error(Exit::kDescriptor, path + ": image file " + files[0] + " does not exist");
    base_lock = storage.open(base, OpenMode::kReadOnly);
    if (std::string holder = base_lock->lock_image(); !holder.empty()) {
      throw Error(Exit::kInUse, base + ": image is in use by " + holder);
    }
  }
  for (size_t i = 0; i < files.size(); ++i) {
    const DescriptorImage* im = nullptr;
    for (const auto& x : d.images) {
      if (x.file == files[i]) im = &x;
    }
    if (im && im->type == "Plain") {
      throw Error(Exit::kDescriptor, path + ": raw (Plain) images are not supported yet: " + files[i]);
    }
    std::string full = join_path(dir_of(path), files[i]);
    if (!storage.exists(full)) {
      throw Error(Exit::kDescriptor, path + ": image file " + files[i] + " does not exist");
    }
    bool top = i + 1 == files.size();
    deltas.push_back(Delta::open(storage, full, top ? mode : OpenMode::kReadOnly, allow_dirty));
    Header h = deltas.back()->header();
    if (h.cluster_sectors != d.blocksize) {
      throw Error(Exit::kDescriptor, path + ": Blocksize " + std::to_string(d.blocksize) + " but " + files[i] +
                                         " has clusters of " + std::to_string(h.cluster_sectors) + " sectors");
    }
    if (top && is_top && h.size_sectors != d.size_sectors && h.size_sectors != d.pending_size) {
      throw Error(Exit::kDescriptor, path + ": Disk_size " + std::to_string(d.size_sectors) + " sectors but top delta " +
                                         files[i] + " is " + std::to_string(h.size_sectors));
    }
  }
  auto stack = std::make_unique<Stack>(std::move(deltas));
  if (base_lock) stack->hold_lock(std::move(base_lock));
  return stack;
}

void hold_shared_locks(Storage& storage, Stack& stack) {
  for (size_t i = 0; i < stack.depth(); ++i) {
    auto f = storage.open(stack.delta(i).path(), OpenMode::kReadOnly);
    f->lock_image_shared();
    stack.hold_lock(std::move(f));
  }
}

}  // namespace ploop
