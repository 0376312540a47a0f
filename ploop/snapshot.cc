#include "ploop/snapshot.h"

#include "ploop/delta.h"
#include "ploop/error.h"
#include "ploop/paths.h"
#include "ploop/seal.h"
#include "ploop/session.h"

namespace ploop {
namespace {

constexpr size_t kMaxImages = 128;  // as OpenVZ ploop

// The header of a delta that must be cleanly closed before the tree changes around it.
Header clean_header(Storage& st, const std::string& path) {
  auto d = Delta::open(st, path, OpenMode::kReadOnly);
  Header h = d->header();
  if (h.dirty()) {
    throw Error(Exit::kInUse, path + ": image is in use or was not closed cleanly; run 'ploop check -r' on it");
  }
  return h;
}

// A name for a new delta file: `<base file>.{GUID}`, as OpenVZ names them.
std::string new_delta_file(const Session& s) { return s.dd.image(s.dd.root()->guid)->file + "." + new_guid(); }

}  // namespace

std::string create_snapshot(Storage& st, const std::string& dd_path, std::string guid) {
  auto s = open_session(st, dd_path);
  Descriptor& d = s->dd;
  if (guid.empty()) guid = new_guid();
  if (!valid_guid(guid)) throw Error(Exit::kParam, "'" + guid + "' is not a {8-4-4-4-12} GUID");
  if (d.shot(guid) || guid == kTopGuid || guid == kNoGuid) {
    throw Error(Exit::kParam, dd_path + ": snapshot " + guid + " already exists or is reserved");
  }
  if (d.images.size() >= kMaxImages) throw Error(Exit::kParam, dd_path + ": too many snapshots (at most 128 images)");
  const std::string old_top = d.top_guid;
  const std::string old_top_path = s->guid_path(old_top);
  std::string file = new_delta_file(*s);
  {
    auto top = Delta::open(st, old_top_path, OpenMode::kReadOnly);
    Header h = top->header();
    if (h.dirty()) {
      throw Error(Exit::kInUse, old_top_path + ": image is in use or was not closed cleanly; run 'ploop check -r' on it");
    }
    // The old top becomes read-only: seal it (over its parent's seal) before anything refers to it
    // as a snapshot. One directory sync makes both the seal's rename and the new delta durable
    // before the descriptor, replaced last, names them.
    const DescriptorShot* top_shot = d.shot(old_top);
    seal_delta(st, *top, top_shot->parent == kNoGuid ? "" : s->guid_path(top_shot->parent), {}, false);
    Delta::create_closed(st, s->path_of(file), h.size_bytes(), h.cluster_sectors, h.version, false);
    st.sync_dir(dir_of(dd_path));
  }
  for (auto& im : d.images) {
    if (im.guid == old_top) im.guid = guid;
  }
  for (auto& sh : d.shots) {
    if (sh.guid == old_top) sh.guid = guid;
    if (sh.parent == old_top) sh.parent = guid;
  }
  d.images.push_back({kTopGuid, "Compressed", file});
  d.shots.push_back({kTopGuid, guid, false});
  d.top_guid = kTopGuid;
  try {
    s->save();
  } catch (...) {
    st.remove(s->path_of(file));
    throw;
  }
  return guid;
}

void switch_snapshot(Storage& st, const std::string& dd_path, const std::string& guid) {
  auto s = open_session(st, dd_path);
  Descriptor& d = s->dd;
  if (!d.shot(guid)) throw Error(Exit::kParam, dd_path + ": no snapshot " + guid);
  if (guid == d.top_guid) throw Error(Exit::kParam, dd_path + ": " + guid + " is the current top delta, not a snapshot");
  const std::string old_top = d.top_guid;
  const std::string old_file = d.image(old_top)->file;
  Header h = clean_header(st, s->guid_path(guid));

  std::string file = new_delta_file(*s);
  Delta::create_closed(st, s->path_of(file), h.size_bytes(), h.cluster_sectors, h.version);
  std::erase_if(d.images, [&](const DescriptorImage& im) { return im.guid == old_top; });
  std::erase_if(d.shots, [&](const DescriptorShot& sh) { return sh.guid == old_top; });
  d.images.push_back({kTopGuid, "Compressed", file});
  d.shots.push_back({kTopGuid, guid, false});
  d.top_guid = kTopGuid;
  d.set_size(h.size_sectors);
  try {
    s->save();
  } catch (...) {
    st.remove(s->path_of(file));
    throw;
  }
  // The descriptor no longer names the old top: its file goes (an unreferenced leftover if this
  // is interrupted, never a referenced file missing).
  st.remove(s->path_of(old_file));
  remove_seal(st, s->path_of(old_file));
}

std::vector<SnapshotInfo> list_snapshots(Storage& st, const std::string& dd_path) {
  Descriptor d = Descriptor::load(st, dd_path);
  std::vector<SnapshotInfo> out;
  for (const auto& sh : d.shots) {
    out.push_back({sh.guid, sh.parent, d.image(sh.guid)->file, sh.guid == d.top_guid, sh.temporary});
  }
  return out;
}

}  // namespace ploop
