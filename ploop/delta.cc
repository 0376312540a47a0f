#include "ploop/delta.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "ploop/error.h"
#include "ploop/le_codec.h"
#include "ploop/paths.h"

namespace ploop {
namespace {

constexpr size_t kPage = 4096;

// Bytes of the first cluster(s) a delta keeps in memory: the header and the BAT, in whole pages,
// never past the start of the data (a cluster can be smaller than a page).
size_t meta_bytes(const Header& h) {
  uint64_t used = kHeaderSize + 4 * uint64_t{h.bat_entries};
  return static_cast<size_t>(std::min<uint64_t>((used + kPage - 1) / kPage * kPage, h.data_offset_bytes()));
}

}  // namespace

Delta::Delta(std::unique_ptr<File> file, bool writable) : file_(std::move(file)), writable_(writable) {}

Delta::~Delta() = default;

namespace {

// An empty delta in a new file: the header page, then the rest of the BAT allocated as zeros (an
// empty BAT) without writing them, so the cost hardly grows with the disk size. Allocated, not a
// hole: OpenVZ ploop refuses sparse header regions.
void write_empty(File& file, const Header& h) {
  AlignedBytes page(std::min<uint64_t>(kPage, h.data_offset_bytes()));
  encode_header(h, std::span<uint8_t, kHeaderSize>(page.data(), kHeaderSize));
  file.write(page.data(), page.size(), 0);
  if (h.data_offset_bytes() > page.size()) file.preallocate(page.size(), h.data_offset_bytes() - page.size());
  file.sync();
}

}  // namespace

void Delta::create_closed(Storage& storage, const std::string& path, uint64_t size_bytes, uint32_t cluster_sectors,
                          int version, bool sync_dir) {
  Header h = make_header(size_bytes, cluster_sectors, version);
  write_empty(*storage.create(path), h);
  if (sync_dir) storage.sync_dir(dir_of(path));
}

std::unique_ptr<Delta> Delta::create(Storage& storage, const std::string& path, uint64_t size_bytes,
                                     uint32_t cluster_sectors, int version) {
  Header h = make_header(size_bytes, cluster_sectors, version);
  std::unique_ptr<Delta> d(new Delta(storage.create(path), true));
  try {
    // Locked while still empty, before it reads as an image: no other program can open the new
    // delta between its creation and this writer's first write.
    if (std::string holder = d->file_->lock_image(); !holder.empty()) {
      throw Error(Exit::kInUse, path + ": new image was opened by " + holder + " before it could be locked");
    }
    write_empty(*d->file_, h);
    storage.sync_dir(dir_of(path));
    d->load(false, false);
  } catch (...) {
    storage.remove(path);  // this call made it (the create refuses an existing file)
    throw;
  }
  return d;
}

std::unique_ptr<Delta> Delta::open(Storage& storage, const std::string& path, OpenMode mode,
                                   bool allow_dirty, bool lock) {
  std::unique_ptr<Delta> d(new Delta(storage.open(path, mode), mode == OpenMode::kReadWrite));
  d->load(allow_dirty, lock);
  return d;
}

void Delta::load(bool allow_dirty, bool lock) {
  const std::string& name = file_->path();
  // A writer locks before it reads anything: a header and BAT read first could be stale by the
  // time the lock is taken (another program may write the image and close it in between), and
  // this writer would then store that stale map over the other's allocations.
  if (writable_ && lock) {
    if (std::string holder = file_->lock_image(); !holder.empty()) {
      throw Error(Exit::kInUse, name + ": image is in use by " + holder);
    }
  }
  uint64_t file_size = file_->size();
  if (file_size < kHeaderSize) {
    throw Error(Exit::kFormat, name + ": file is " + std::to_string(file_size) +
                                   " bytes, too short for a ploop header (64 bytes)");
  }
  uint8_t hb[kHeaderSize];
  file_->read(hb, kHeaderSize, 0);
  h_ = decode_header(std::span<const uint8_t, kHeaderSize>(hb, kHeaderSize), file_size, name);

  meta_ = ZeroPages(meta_bytes(h_));
  read_meta();
  dirty_pages_.assign((meta_.size() + kPage - 1) / kPage, false);

  const uint64_t cs = h_.cluster_bytes();
  const uint64_t file_clusters = (file_size + cs - 1) / cs;
  uint64_t max_clusters = h_.version == 2 ? UINT32_MAX : UINT32_MAX / h_.cluster_sectors;
  if (file_clusters > max_clusters) {
    throw Error(Exit::kFormat, name + ": file of " + std::to_string(file_size) +
                                   " bytes is larger than a BAT can address");
  }
  tail_ = static_cast<uint32_t>(file_clusters);
  used_.assign(tail_, false);
  const uint32_t data_start = h_.data_start_cluster();
  for (uint32_t c = 0; c < data_start && c < tail_; ++c) used_[c] = true;

  for (uint32_t vc = next_mapped_locked(0); vc < h_.bat_entries; vc = next_mapped_locked(vc + 1)) {
    uint32_t e = entry_locked(vc);
    uint32_t c;
    std::string where = name + ": BAT entry " + std::to_string(vc) + " (offset " +
                        std::to_string(kHeaderSize + 4 * uint64_t{vc}) + ")";
    if (!bat_entry_to_cluster(h_, e, c)) {
      throw Error(Exit::kFormat, where + " is " + std::to_string(e) + " sectors, not a cluster multiple");
    }
    if (c < data_start) {
      throw Error(Exit::kFormat, where + " points to cluster " + std::to_string(c) +
                                     ", inside the header and BAT (data starts at cluster " +
                                     std::to_string(data_start) + ")");
    }
    if (c >= tail_) {
      throw Error(Exit::kFormat, where + " points to cluster " + std::to_string(c) +
                                     ", past the end of the file (" + std::to_string(file_size) + " bytes)");
    }
    if (used_[c] && writable_) {
      throw Error(Exit::kFormat, where + " points to cluster " + std::to_string(c) +
                                     ", which another entry also uses; run ploop check -r");
    }
    used_[c] = true;
    ++mapped_;
  }
  for (uint32_t c = data_start; c < tail_; ++c) {
    if (!used_[c]) free_.insert(c);
  }

  if (!writable_) return;
  if (h_.flags & kFlagFmtConvert) {
    throw Error(Exit::kFormat, name + ": an interrupted format conversion is recorded (CIF_FmtVersionConvert)");
  }
  if (h_.dirty() && !allow_dirty) {
    throw Error(Exit::kInUse, name + ": image is in use or was not closed cleanly (in-use flag set); "
                                     "run 'ploop check -r' on it");
  }
  // A format extension (dirty bitmaps) cannot be kept up to date by this writer: drop it, as
  // ploop does when it loads the bitmaps and qemu does for read-write opens. Its clusters are
  // not referenced by the BAT, so they are free space and the tail is truncated at close.
  h_.ext_offset_sectors = 0;
  h_.in_use = kInUseMagic;
  std::lock_guard lk(mu_);
  store_header_locked();
  write_page(0, meta_.data());
  dirty_pages_[0] = false;
  file_->sync();
}

// Reads the header and BAT pages, except whole pages that the file system reports as reading
// zeros: a new delta's BAT is allocated but never written, and a sparse disk's BAT is mostly
// empty pages. Those stay zero, untouched, and are marked so that scans skip them.
void Delta::read_meta() {
  const uint64_t n = meta_.size();
  zero_pages_.assign((n + kPage - 1) / kPage, false);
  uint64_t pos = 0;  // always a page boundary
  while (pos < n) {
    uint64_t data = std::max(std::min(file_->next_data(pos), n), pos);
    const uint64_t from = data / kPage * kPage;
    for (uint64_t p = pos / kPage; p < from / kPage; ++p) zero_pages_[p] = true;
    if (data >= n) break;
    uint64_t hole = file_->next_hole(data);
    if (hole <= data || hole > n) hole = n;
    const uint64_t to = std::min((hole + kPage - 1) / kPage * kPage, n);
    file_->read(meta_.data() + from, to - from, from);
    pos = to;
  }
}

Header Delta::header() const {
  std::lock_guard lk(mu_);
  return h_;
}

uint32_t Delta::entry_locked(uint32_t vc) const {
  return le::load32(&meta_[kHeaderSize + 4 * size_t{vc}]);
}

uint32_t Delta::cluster_of(uint32_t vc) const {
  std::lock_guard lk(mu_);
  if (vc >= h_.bat_entries) return 0;
  uint32_t e = entry_locked(vc), c = 0;
  if (e) bat_entry_to_cluster(h_, e, c);  // validated at open
  return c;
}

uint32_t Delta::next_mapped_locked(uint32_t vc) const {
  const uint32_t n = h_.bat_entries;
  // Page by page (page p holds the entries whose 4 bytes lie in it; entries never straddle
  // pages, the header being 64 bytes), skipping pages known to be zero.
  while (vc < n) {
    const size_t page = (kHeaderSize + 4 * size_t{vc}) / kPage;
    const auto end = static_cast<uint32_t>(std::min<uint64_t>(n, ((page + 1) * kPage - kHeaderSize) / 4));
    if (!zero_pages_[page]) {
      vc = next_mapped_in_locked(vc, end);
      if (vc < end) return vc;
    }
    vc = end;
  }
  return n;
}

uint32_t Delta::next_mapped_in_locked(uint32_t vc, uint32_t n) const {
  // Sixteen, then two entries at a time over runs of empty entries (most of a sparse disk's BAT).
  while (vc < n && (vc & 1)) {
    if (entry_locked(vc)) return vc;
    ++vc;
  }
  const uint8_t* bat = &meta_[kHeaderSize];
  auto zero64 = [&](uint32_t at) {  // 16 entries (64 bytes) at `at` all empty
    uint64_t any = 0;
    for (size_t i = 0; i < 8; ++i) any |= le::load64(bat + 4 * size_t{at} + 8 * i);
    return any == 0;
  };
  while (vc + 16 <= n && zero64(vc)) vc += 16;
  while (vc + 1 < n && le::load64(bat + 4 * size_t{vc}) == 0) vc += 2;
  while (vc < n && !entry_locked(vc)) ++vc;
  return std::min(vc, n);
}

std::vector<uint32_t> Delta::clusters() const {
  std::lock_guard lk(mu_);
  std::vector<uint32_t> out(h_.bat_entries, 0);
  for (uint32_t vc = next_mapped_locked(0); vc < h_.bat_entries; vc = next_mapped_locked(vc + 1)) {
    bat_entry_to_cluster(h_, entry_locked(vc), out[vc]);  // validated at open
  }
  return out;
}

std::vector<std::pair<uint32_t, uint32_t>> Delta::mapped() const {
  std::lock_guard lk(mu_);
  std::vector<std::pair<uint32_t, uint32_t>> out;
  out.reserve(mapped_);
  for (uint32_t vc = next_mapped_locked(0); vc < h_.bat_entries; vc = next_mapped_locked(vc + 1)) {
    uint32_t c = 0;
    bat_entry_to_cluster(h_, entry_locked(vc), c);  // validated at open
    out.emplace_back(vc, c);
  }
  return out;
}

uint64_t Delta::mapped_clusters() const {
  std::lock_guard lk(mu_);
  return mapped_;
}

void Delta::set_entry_locked(uint32_t vc, uint32_t cluster) {
  size_t off = kHeaderSize + 4 * size_t{vc};
  le::store32(&meta_[off], cluster ? cluster_to_bat_entry(h_, cluster) : 0);
  dirty_pages_[off / kPage] = true;
  zero_pages_[off / kPage] = false;
}

void Delta::for_each_bat_piece(const std::function<void(std::span<const uint8_t>)>& fn) const {
  static const AlignedBytes zeros(kPage, 0);
  std::lock_guard lk(mu_);
  const size_t end = kHeaderSize + 4 * size_t{h_.bat_entries};
  size_t pos = kHeaderSize;
  while (pos < end) {
    const size_t page = pos / kPage, stop = std::min(end, (page + 1) * kPage);
    if (zero_pages_[page]) {
      fn(std::span<const uint8_t>(zeros.data(), stop - pos));
      pos = stop;
      continue;
    }
    size_t run = stop;  // through the following pages that are not known zero, in one piece
    while (run < end && !zero_pages_[run / kPage]) run = std::min(end, run + kPage);
    fn(std::span<const uint8_t>(meta_.data() + pos, run - pos));
    pos = run;
  }
}

void Delta::store_header_locked() {
  encode_header(h_, std::span<uint8_t, kHeaderSize>(meta_.data(), kHeaderSize));
  dirty_pages_[0] = true;
}

void Delta::write_page(size_t page, const uint8_t* bytes) {
  size_t n = std::min(kPage, meta_.size() - page * kPage);
  file_->write(bytes, n, page * kPage);
}

uint32_t Delta::allocate() {
  std::lock_guard lk(mu_);
  if (!free_.empty()) {
    uint32_t c = *free_.begin();
    free_.erase(free_.begin());
    used_[c] = true;
    return c;
  }
  uint64_t limit = h_.version == 2 ? UINT32_MAX : UINT32_MAX / h_.cluster_sectors;
  if (tail_ >= limit) throw Error(Exit::kWrite, path() + ": image file reached the largest size its BAT can address");
  used_.push_back(true);
  return tail_++;
}

void Delta::abandon(uint32_t c) {
  std::lock_guard lk(mu_);
  used_[c] = false;
  free_.insert(c);
}

void Delta::map(uint32_t vc, uint32_t c) {
  std::lock_guard lk(mu_);
  if (!entry_locked(vc)) ++mapped_;
  set_entry_locked(vc, c);
  if (h_.flags & kFlagEmpty) {
    h_.flags &= ~kFlagEmpty;
    store_header_locked();
  }
}

void Delta::unmap(uint32_t vc) {
  uint32_t c;
  {
    std::lock_guard lk(mu_);
    uint32_t e = entry_locked(vc);
    if (!e) return;
    bat_entry_to_cluster(h_, e, c);
    set_entry_locked(vc, 0);
    --mapped_;
    pending_free_.push_back(c);
  }
  // The cluster keeps its data until the cleared entry is durable (flush), so no durable entry
  // ever points at a hole; then it is punched and becomes reusable.
}

void Delta::flush() {
  if (!writable_) return;
  std::lock_guard flk(flush_mu_);
  std::vector<std::pair<size_t, AlignedBytes>> pages;
  std::vector<uint32_t> released;
  {
    // Snapshot first: every entry in it was mapped after its data write completed, so the
    // sync below makes that data durable before the entry is written.
    std::lock_guard lk(mu_);
    for (size_t p = 0; p < dirty_pages_.size(); ++p) {
      if (!dirty_pages_[p]) continue;
      size_t n = std::min(kPage, meta_.size() - p * kPage);
      pages.emplace_back(p, AlignedBytes(meta_.data() + p * kPage, meta_.data() + p * kPage + n));
      dirty_pages_[p] = false;
    }
    released.swap(pending_free_);
  }
  try {
    file_->sync();
    if (!pages.empty()) {
      for (auto& [p, bytes] : pages) write_page(p, bytes.data());
      file_->sync();
    }
  } catch (...) {
    std::lock_guard lk(mu_);
    for (auto& pb : pages) dirty_pages_[pb.first] = true;
    pending_free_.insert(pending_free_.end(), released.begin(), released.end());
    throw;
  }
  // The cleared entries are durable: give the space back to the file system, then reuse.
  for (uint32_t c : released) file_->punch_hole(c * cluster_bytes(), cluster_bytes());
  std::lock_guard lk(mu_);
  for (uint32_t c : released) {
    used_[c] = false;
    free_.insert(c);
  }
}

void Delta::move_cluster(uint32_t from, uint32_t to, uint32_t vc) {
  const uint64_t cs = cluster_bytes();
  AlignedBytes buf(std::min<uint64_t>(cs, 1 << 20));
  for (uint64_t pos = 0; pos < cs; pos += buf.size()) {
    file_->read(buf.data(), buf.size(), from * cs + pos);
    file_->write(buf.data(), buf.size(), to * cs + pos);
  }
  map(vc, to);
  flush();  // the copy is synced before the entry, the entry before the old cluster is reused
}

void Delta::resize(uint64_t new_size_bytes) {
  if (!writable_) throw Error(Exit::kParam, path() + ": resize of a read-only delta");
  flush();
  Header nh = make_header(new_size_bytes, h_.cluster_sectors, h_.version);
  const uint64_t cs = cluster_bytes();
  const uint32_t old_start = h_.data_start_cluster(), new_start = nh.data_start_cluster();
  if (nh.bat_entries < h_.bat_entries) {
    for (uint32_t vc = nh.bat_entries; vc < h_.bat_entries; ++vc) {
      if (cluster_of(vc)) {
        throw Error(Exit::kParam, path() + ": cannot shrink to " + std::to_string(nh.size_bytes()) +
                                      " bytes: cluster " + std::to_string(vc) + " past the new end holds data");
      }
    }
    if (new_start != old_start) {
      throw Error(Exit::kParam, path() + ": cannot shrink to " + std::to_string(nh.size_bytes()) +
                                    " bytes: the BAT would need fewer clusters, which is not supported");
    }
  }
  if (new_start > old_start) {
    // Clusters [old_start, new_start) become BAT: take them out of allocation, then move away
    // the ones that hold data.
    std::map<uint32_t, uint32_t> owner;  // file cluster -> virtual cluster
    {
      std::lock_guard lk(mu_);
      for (uint32_t vc = 0; vc < h_.bat_entries; ++vc) {
        uint32_t e = entry_locked(vc), c = 0;
        if (e && bat_entry_to_cluster(h_, e, c) && c < new_start) owner[c] = vc;
      }
      while (tail_ < new_start) {
        used_.push_back(false);
        ++tail_;
      }
      for (uint32_t c = old_start; c < new_start; ++c) {
        free_.erase(c);
        used_[c] = true;
      }
    }
    for (auto [c, vc] : owner) {
      uint32_t to = allocate();
      move_cluster(c, to, vc);
    }
    AlignedBytes zero(std::min<uint64_t>(cs, 1 << 20), 0);
    for (uint64_t off = uint64_t{old_start} * cs; off < uint64_t{new_start} * cs; off += zero.size()) {
      file_->write(zero.data(), zero.size(), off);
    }
    file_->sync();
  }
  std::lock_guard lk(mu_);
  nh.in_use = h_.in_use;
  nh.flags = h_.flags & ~kFlagEmpty;
  if (mapped_ == 0) nh.flags |= kFlagEmpty;
  nh.first_block_sectors = std::max(nh.first_block_sectors, h_.first_block_sectors);
  h_ = nh;
  meta_.resize(meta_bytes(h_));
  zero_pages_.assign((meta_.size() + kPage - 1) / kPage, false);
  // Entries past the new end are zero (checked above for shrink; new for grow).
  for (size_t off = kHeaderSize + 4 * size_t{h_.bat_entries}; off < meta_.size(); off += 4) le::store32(&meta_[off], 0);
  store_header_locked();
  // Write every BAT page, header page last: the header commits the new size.
  for (size_t p = (meta_.size() + kPage - 1) / kPage; p-- > 1;) write_page(p, meta_.data() + p * kPage);
  file_->sync();
  write_page(0, meta_.data());
  file_->sync();
  dirty_pages_.assign((meta_.size() + kPage - 1) / kPage, false);
}

void Delta::close() {
  if (!writable_ || closed_) return;
  flush();
  std::lock_guard lk(mu_);
  uint32_t end = h_.data_start_cluster();
  for (uint32_t c = tail_; c > end; --c) {
    if (used_[c - 1]) {
      end = c;
      break;
    }
  }
  uint64_t want = uint64_t{end} * cluster_bytes();
  if (file_->size() != want) {
    file_->truncate(want);
    used_.resize(end);
    tail_ = end;
    free_.erase(free_.lower_bound(end), free_.end());
  }
  h_.in_use = 0;
  if (mapped_ == 0) h_.flags |= kFlagEmpty;
  store_header_locked();
  write_page(0, meta_.data());
  dirty_pages_[0] = false;
  file_->sync();
  closed_ = true;
}

}  // namespace ploop
