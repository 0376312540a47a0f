#include "ploop/merge.h"

#include <algorithm>
#include <vector>

#include "ploop/delta.h"
#include "ploop/error.h"
#include "ploop/seal.h"
#include "ploop/session.h"

namespace ploop {
namespace {

// Copies every cluster `child` maps into `parent`, in place where the parent maps it, else in a
// cluster the parent allocates (free clusters first). Runs of clusters that are consecutive in
// both files go in one copy (in the kernel where the files allow). Flushes and closes the parent
// cleanly: its data is durable before any new BAT entry is written.
void copy_down(Delta& child, Delta& parent, const Progress& progress) {
  if (child.size_bytes() > parent.size_bytes()) parent.resize(child.size_bytes());
  const uint64_t cs = child.cluster_bytes();
  const size_t max_run = static_cast<size_t>(std::max<uint64_t>(1, (64u << 20) / cs));
  const std::vector<std::pair<uint32_t, uint32_t>> mapped = child.mapped();  // (virtual, child file) cluster
  struct Piece {
    uint32_t vc, from, to;
    bool fresh;
  };
  std::vector<Piece> run;
  size_t done = 0, ahead = 0;
  // Asks for the child's clusters up to mapped[upto) to be read ahead, consecutive ones together,
  // so the reads of the next runs overlap the writes of this one.
  auto read_ahead = [&](size_t upto) {
    upto = std::min(upto, mapped.size());
    while (ahead < upto) {
      size_t n = 1;
      while (ahead + n < upto && mapped[ahead + n].second == mapped[ahead].second + n) ++n;
      child.file().will_need(uint64_t{mapped[ahead].second} * cs, n * cs);
      ahead += n;
    }
  };
  auto copy_run = [&] {
    if (run.empty()) return;
    read_ahead(done + run.size() + 2 * max_run);
    try {
      parent.file().copy_from(child.file(), uint64_t{run[0].from} * cs, run.size() * cs, uint64_t{run[0].to} * cs);
    } catch (...) {
      for (const Piece& p : run) {
        if (p.fresh) parent.abandon(p.to);
      }
      throw;
    }
    for (const Piece& p : run) {
      if (p.fresh) parent.map(p.vc, p.to);
    }
    done += run.size();
    run.clear();
    if (progress) progress(done, mapped.size());
  };
  for (auto [vc, from] : mapped) {
    uint32_t to = parent.cluster_of(vc);
    bool fresh = to == 0;
    if (fresh) to = parent.allocate();
    if (!run.empty() && (run.size() >= max_run || from != run.back().from + 1 || to != run.back().to + 1)) {
      try {
        copy_run();
      } catch (...) {
        if (fresh) parent.abandon(to);
        throw;
      }
    }
    run.push_back({vc, from, to, fresh});
  }
  copy_run();
  parent.close();  // flush: data, then BAT; truncate the unused tail; clear the in-use flag
}

}  // namespace

void merge_into_parent(Session& s, std::string child_guid, const Progress& progress) {  // by value: callers pass names from d.shots, which this changes
  Descriptor& d = s.dd;
  const DescriptorShot* c = d.shot(child_guid);
  if (!c) throw Error(Exit::kParam, s.dd_path + ": no snapshot " + child_guid);
  if (c->parent == kNoGuid) throw Error(Exit::kParam, s.dd_path + ": " + child_guid + " is the base; it has no parent to merge into");
  const std::string parent_guid = c->parent;
  auto kids = d.children(parent_guid);
  if (kids.size() != 1) {
    throw Error(Exit::kParam, s.dd_path + ": snapshot " + parent_guid + " has " + std::to_string(kids.size()) +
                                  " children; only a snapshot with one child can be merged with it");
  }
  const std::string child_path = s.guid_path(child_guid), parent_path = s.guid_path(parent_guid);
  const std::string child_file = d.image(child_guid)->file, parent_file = d.image(parent_guid)->file;

  // Record the intent before the parent's file changes.
  bool resuming = false;
  for (auto& sh : d.shots) {
    if (sh.guid == parent_guid) {
      resuming = sh.temporary;
      sh.temporary = true;
    }
  }
  if (!resuming) s.save();
  {
    auto child = Delta::open(s.storage, child_path, OpenMode::kReadOnly);
    if (child->header().dirty()) {
      throw Error(Exit::kInUse, child_path + ": image is in use or was not closed cleanly; run 'ploop check -r' on it");
    }
    auto parent = Delta::open(s.storage, parent_path, OpenMode::kReadWrite, /*allow_dirty=*/resuming, /*lock=*/false);
    copy_down(*child, *parent, progress);
  }
  // The parent's old seal no longer describes its file: drop it before the commit, so a crash
  // never leaves a seal that disagrees with its delta (a missing seal only reads as "not sealed").
  remove_seal(s.storage, parent_path);
  // Commit: the parent's file now carries the child's GUID; the parent snapshot is gone.
  std::string grandparent = d.shot(parent_guid)->parent;
  std::erase_if(d.images, [&](const DescriptorImage& im) { return im.guid == parent_guid; });
  std::erase_if(d.shots, [&](const DescriptorShot& sh) { return sh.guid == parent_guid; });
  for (auto& im : d.images) {
    if (im.guid == child_guid) im.file = parent_file;
  }
  for (auto& sh : d.shots) {
    if (sh.guid == child_guid) sh.parent = grandparent;
  }
  s.save();
  const SealId old_child_seal = seal_id(s.storage, child_path);
  s.storage.remove(child_path);
  remove_seal(s.storage, child_path);
  remove_seal(s.storage, parent_path);
  if (child_guid != d.top_guid) {
    // The merged delta is a snapshot: seal it anew, and point its descendants' seals at the new
    // seal, level by level (each only if it pointed at the seal its parent had before).
    const DescriptorShot* m = d.shot(child_guid);
    seal_delta(s.storage, parent_path, m->parent == kNoGuid ? "" : s.guid_path(m->parent));
    std::vector<std::pair<std::string, SealId>> work{{child_guid, old_child_seal}};
    while (!work.empty()) {
      auto [guid, old_id] = work.back();
      work.pop_back();
      for (const DescriptorShot* kid : d.children(guid)) {
        if (kid->guid == d.top_guid) continue;
        std::string kid_path = s.guid_path(kid->guid);
        SealId kid_old = seal_id(s.storage, kid_path);
        if (relink_seal(s.storage, kid_path, s.guid_path(guid), old_id)) work.emplace_back(kid->guid, kid_old);
      }
    }
  }
}

void delete_snapshot(Storage& st, const std::string& dd_path, const std::string& guid, const Progress& progress) {
  auto s = open_session(st, dd_path);
  Descriptor& d = s->dd;
  if (!d.shot(guid)) throw Error(Exit::kParam, dd_path + ": no snapshot " + guid);
  if (guid == d.top_guid) throw Error(Exit::kParam, dd_path + ": " + guid + " is the current top delta; it cannot be deleted");
  auto kids = d.children(guid);
  if (kids.size() > 1) {
    throw Error(Exit::kParam, dd_path + ": snapshot " + guid + " has " + std::to_string(kids.size()) +
                                  " children; delete or merge all but one first");
  }
  if (kids.size() == 1) return merge_into_parent(*s, kids[0]->guid, progress);
  // A leaf that is not the top (left over by a switch): nothing depends on it.
  std::string path = s->guid_path(guid);
  std::erase_if(d.images, [&](const DescriptorImage& im) { return im.guid == guid; });
  std::erase_if(d.shots, [&](const DescriptorShot& sh) { return sh.guid == guid; });
  s->save();
  st.remove(path);
  remove_seal(st, path);
}

void merge_snapshot(Storage& st, const std::string& dd_path, const std::string& guid, bool all,
                    const Progress& progress) {
  auto s = open_session(st, dd_path);
  if (!all) return merge_into_parent(*s, guid.empty() ? s->dd.top_guid : guid, progress);
  while (s->dd.shot(s->dd.top_guid)->parent != kNoGuid) merge_into_parent(*s, s->dd.top_guid, progress);
}

}  // namespace ploop
