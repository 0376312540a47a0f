#include "ploop/seal.h"

#include <xxhash.h>

#include <cstring>

#include "ploop/delta.h"
#include "ploop/error.h"
#include "ploop/le_codec.h"
#include "ploop/paths.h"

namespace ploop {
namespace {

constexpr char kMagic[16] = {'p', 'l', 'o', 'o', 'p', '-', 's', 'e', 'a', 'l', '-', 'v', '1', 0, 0, 0};
constexpr size_t kHead = 80, kTrailer = 16;

void put128(uint8_t* p, XXH128_hash_t h) {
  le::store64(p, h.low64);
  le::store64(p + 8, h.high64);
}

// XXH3-128 of the delta's BAT entries as stored on disk.
XXH128_hash_t bat_hash(const Delta& d) {
  // Streamed in pieces (the same hash as one call over the whole BAT), so that pages of the BAT
  // known to be zero need not be touched.
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> st(XXH3_createState(), XXH3_freeState);
  if (!st) throw std::bad_alloc();
  XXH3_128bits_reset(st.get());
  d.for_each_bat_piece([&](std::span<const uint8_t> piece) { XXH3_128bits_update(st.get(), piece.data(), piece.size()); });
  return XXH3_128bits_digest(st.get());
}

std::vector<uint8_t> read_all(Storage& st, const std::string& path) {
  auto f = st.open(path, OpenMode::kReadOnly);
  std::vector<uint8_t> b(f->size());
  f->read(b.data(), b.size(), 0);
  return b;
}

XXH128_hash_t parent_hash(Storage& st, const std::string& parent) {
  if (parent.empty() || !st.exists(seal_path(parent))) return {0, 0};
  auto b = read_all(st, seal_path(parent));
  return XXH3_128bits(b.data(), b.size());
}

struct Parsed {
  uint64_t cluster_bytes, bat_entries, count;
  const uint8_t* bat_sum;
  const uint8_t* parent_sum;
  const uint8_t* table;
  const uint8_t* sums;
};

Parsed parse(const std::vector<uint8_t>& b, const std::string& name) {
  auto bad = [&](const std::string& what) { throw Error(Exit::kFormat, name + ": damaged seal: " + what); };
  if (b.size() < kHead + kTrailer || std::memcmp(b.data(), kMagic, 16) != 0) bad("bad magic or too short");
  XXH128_hash_t self = XXH3_128bits(b.data(), b.size() - kTrailer);
  uint8_t want[16];
  put128(want, self);
  if (std::memcmp(want, &b[b.size() - kTrailer], 16) != 0) bad("its own checksum does not match");
  Parsed p{le::load64(&b[24]), le::load64(&b[32]), le::load64(&b[40]), &b[48], &b[64], &b[kHead], nullptr};
  if (le::load32(&b[16]) != kSealBlock || p.cluster_bytes % kSealBlock || p.cluster_bytes == 0) bad("bad block size");
  uint64_t table = (4 * p.count + 7) / 8 * 8;
  uint64_t bpc = p.cluster_bytes / kSealBlock;
  if (p.count > p.bat_entries || kHead + table + p.count * bpc * 8 + kTrailer != b.size()) bad("bad length");
  p.sums = &b[kHead + table];
  return p;
}

void write_atomically(Storage& st, const std::string& path, const std::vector<uint8_t>& bytes, bool sync_dir = true) {
  std::string tmp = path + ".tmp";
  st.remove(tmp);
  {
    auto f = st.create(tmp);
    f->write(bytes.data(), bytes.size(), 0);
    f->sync();
  }
  st.rename(tmp, path);
  if (sync_dir) st.sync_dir(dir_of(path));
}

}  // namespace

SealId seal_id(Storage& st, const std::string& delta_path) {
  SealId id{};
  if (st.exists(seal_path(delta_path))) {
    auto b = read_all(st, seal_path(delta_path));
    put128(id.data(), XXH3_128bits(b.data(), b.size()));
  }
  return id;
}

bool relink_seal(Storage& st, const std::string& delta_path, const std::string& new_parent, const SealId& old_parent) {
  if (!st.exists(seal_path(delta_path))) return false;
  auto b = read_all(st, seal_path(delta_path));
  parse(b, seal_path(delta_path));
  if (std::memcmp(&b[64], old_parent.data(), 16) != 0) return false;
  put128(&b[64], parent_hash(st, new_parent));
  put128(&b[b.size() - kTrailer], XXH3_128bits(b.data(), b.size() - kTrailer));
  write_atomically(st, seal_path(delta_path), b);
  return true;
}

std::string seal_path(const std::string& delta_path) { return delta_path + ".seal"; }

void remove_seal(Storage& st, const std::string& delta_path) { st.remove(seal_path(delta_path)); }

void seal_delta(Storage& st, const std::string& delta_path, const std::string& parent, const Progress& progress) {
  auto d = Delta::open(st, delta_path, OpenMode::kReadOnly);
  seal_delta(st, *d, parent, progress, true);
}

void seal_delta(Storage& st, Delta& delta, const std::string& parent, const Progress& progress, bool sync_dir) {
  Delta* d = &delta;
  const std::string& delta_path = d->path();
  const uint64_t cs = d->cluster_bytes(), bpc = cs / kSealBlock;
  const std::vector<std::pair<uint32_t, uint32_t>> vcs = d->mapped();  // (virtual, file) cluster
  uint64_t table = (4 * vcs.size() + 7) / 8 * 8;
  std::vector<uint8_t> out(kHead + table + vcs.size() * bpc * 8 + kTrailer, 0);
  std::memcpy(out.data(), kMagic, 16);
  le::store32(&out[16], kSealBlock);
  le::store64(&out[24], cs);
  le::store64(&out[32], d->bat_entries());
  le::store64(&out[40], vcs.size());
  put128(&out[48], bat_hash(*d));
  put128(&out[64], parent_hash(st, parent));
  AlignedBytes buf(vcs.empty() ? 0 : std::min<uint64_t>(cs, 1 << 20));
  uint8_t* sums = &out[kHead + table];
  for (size_t i = 0; i < vcs.size(); ++i) {
    le::store32(&out[kHead + 4 * i], vcs[i].first);
    uint64_t fc = vcs[i].second;
    for (uint64_t pos = 0; pos < cs; pos += buf.size()) {
      d->file().read(buf.data(), buf.size(), fc * cs + pos);
      for (uint64_t b = 0; b < buf.size(); b += kSealBlock) {
        le::store64(sums + 8 * (i * bpc + (pos + b) / kSealBlock), XXH3_64bits(&buf[b], kSealBlock));
      }
    }
    if (progress) progress(i + 1, vcs.size());
  }
  put128(&out[out.size() - kTrailer], XXH3_128bits(out.data(), out.size() - kTrailer));
  write_atomically(st, seal_path(delta_path), out, sync_dir);
}

std::unique_ptr<SealVerifier> SealVerifier::load(Storage& st, const std::string& delta_path) {
  if (!st.exists(seal_path(delta_path))) return nullptr;
  auto b = read_all(st, seal_path(delta_path));
  Parsed p = parse(b, seal_path(delta_path));
  auto d = Delta::open(st, delta_path, OpenMode::kReadOnly);
  uint8_t now[16];
  put128(now, bat_hash(*d));
  if (p.cluster_bytes != d->cluster_bytes() || p.bat_entries != d->bat_entries() || std::memcmp(now, p.bat_sum, 16)) {
    throw Error(Exit::kFormat, seal_path(delta_path) + ": stale seal: the delta's BAT changed after it was sealed");
  }
  auto v = std::unique_ptr<SealVerifier>(new SealVerifier);
  v->blocks_per_cluster_ = p.cluster_bytes / kSealBlock;
  v->sums_.resize(p.count * v->blocks_per_cluster_);
  for (uint64_t i = 0; i < p.count; ++i) v->index_[le::load32(p.table + 4 * i)] = i * v->blocks_per_cluster_;
  for (size_t i = 0; i < v->sums_.size(); ++i) v->sums_[i] = le::load64(p.sums + 8 * i);
  return v;
}

bool SealVerifier::verify(uint32_t vc, uint64_t block, const uint8_t* data) const {
  auto it = index_.find(vc);
  if (it == index_.end() || block >= blocks_per_cluster_) return false;
  return sums_[it->second + block] == XXH3_64bits(data, kSealBlock);
}

SealReport verify_seal(Storage& st, const std::string& delta_path, const std::string& parent, const Progress& progress) {
  SealReport r;
  if (!st.exists(seal_path(delta_path))) return r;
  r.present = true;
  std::unique_ptr<SealVerifier> v;
  try {
    v = SealVerifier::load(st, delta_path);
    auto b = read_all(st, seal_path(delta_path));
    uint8_t want[16];
    put128(want, parent_hash(st, parent));
    if (std::memcmp(want, parse(b, seal_path(delta_path)).parent_sum, 16) != 0) {
      r.problem = seal_path(delta_path) + ": the parent's seal changed after this delta was sealed (chain broken)";
      return r;
    }
  } catch (const Error& e) {
    r.problem = e.what();
    return r;
  }
  auto d = Delta::open(st, delta_path, OpenMode::kReadOnly);
  const uint64_t cs = d->cluster_bytes();
  AlignedBytes buf(std::min<uint64_t>(cs, 1 << 20));
  uint64_t done = 0, total = d->mapped_clusters();
  for (auto [vc, cluster] : d->mapped()) {
    const uint64_t fc = cluster;
    for (uint64_t pos = 0; pos < cs; pos += buf.size()) {
      d->file().read(buf.data(), buf.size(), fc * cs + pos);
      for (uint64_t b = 0; b < buf.size(); b += kSealBlock) {
        if (!v->verify(vc, (pos + b) / kSealBlock, &buf[b])) {
          r.problem = delta_path + ": cluster " + std::to_string(vc) + " (file offset " + std::to_string(fc * cs + pos + b) +
                      "): 4 KiB block " + std::to_string((pos + b) / kSealBlock) + " does not match its seal";
          return r;
        }
      }
    }
    if (progress) progress(++done, total);
  }
  r.ok = true;
  return r;
}

}  // namespace ploop
