#include "ploop/fault_storage.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "ploop/error.h"

namespace ploop {

struct Mutation {
  FaultOp op;
  uint64_t offset;
  uint64_t len;  // write: data.size(); truncate: new size; punch: length
  std::vector<uint8_t> data;
};

struct FaultStorage::FileState {
  std::vector<uint8_t> durable;
  std::vector<uint8_t> current;
  std::vector<Mutation> pending;
};

namespace {

void apply_mutation(std::vector<uint8_t>& bytes, const Mutation& m) {
  switch (m.op) {
    case FaultOp::kWrite:
      if (bytes.size() < m.offset + m.data.size()) bytes.resize(m.offset + m.data.size());
      std::memcpy(bytes.data() + m.offset, m.data.data(), m.data.size());
      break;
    case FaultOp::kTruncate:
      bytes.resize(m.len);
      break;
    case FaultOp::kPunch:
      if (m.offset < bytes.size()) {
        std::memset(bytes.data() + m.offset, 0, std::min<uint64_t>(m.len, bytes.size() - m.offset));
      }
      break;
    default:
      break;
  }
}

}  // namespace

class FaultFile final : public File {
 public:
  FaultFile(FaultStorage& s, std::string path, std::shared_ptr<FaultStorage::FileState> st, bool writable,
            uint64_t gen)
      : File(std::move(path)), s_(s), st_(std::move(st)), writable_(writable), gen_(gen) {}

  void read(void* buf, size_t len, uint64_t off) override {
    std::lock_guard lk(s_.mu_);
    check(FaultOp::kRead, off, len);
    auto& cur = st_->current;
    auto* p = static_cast<uint8_t*>(buf);
    size_t avail = off < cur.size() ? static_cast<size_t>(std::min<uint64_t>(len, cur.size() - off)) : 0;
    if (avail) std::memcpy(p, cur.data() + off, avail);
    std::memset(p + avail, 0, len - avail);
  }

  void write(const void* buf, size_t len, uint64_t off) override {
    std::lock_guard lk(s_.mu_);
    check(FaultOp::kWrite, off, len);
    Mutation m{FaultOp::kWrite, off, len, {}};
    m.data.assign(static_cast<const uint8_t*>(buf), static_cast<const uint8_t*>(buf) + len);
    apply_mutation(st_->current, m);
    st_->pending.push_back(std::move(m));
  }

  void sync() override {
    std::lock_guard lk(s_.mu_);
    check(FaultOp::kSync, 0, 0);
    st_->durable = st_->current;
    st_->pending.clear();
  }

  uint64_t size() override {
    std::lock_guard lk(s_.mu_);
    if (s_.dead_ || gen_ != s_.generation_) throw PowerLost();
    return st_->current.size();
  }

  // Exact: the first non-zero byte (the model has no holes, only bytes, so zeros are "no data").
  uint64_t next_data(uint64_t off) override {
    std::lock_guard lk(s_.mu_);
    if (s_.dead_ || gen_ != s_.generation_) throw PowerLost();
    const auto& cur = st_->current;
    for (uint64_t i = off; i < cur.size(); ++i) {
      if (cur[i]) return i;
    }
    return kNoData;
  }

  uint64_t next_hole(uint64_t off) override {
    std::lock_guard lk(s_.mu_);
    if (s_.dead_ || gen_ != s_.generation_) throw PowerLost();
    const auto& cur = st_->current;
    uint64_t i = off;
    while (i < cur.size() && cur[i]) ++i;
    return i;
  }

  void truncate(uint64_t size) override {
    std::lock_guard lk(s_.mu_);
    check(FaultOp::kTruncate, size, 0);
    Mutation m{FaultOp::kTruncate, 0, size, {}};
    apply_mutation(st_->current, m);
    st_->pending.push_back(std::move(m));
  }

  void punch_hole(uint64_t off, uint64_t len) override {
    std::lock_guard lk(s_.mu_);
    check(FaultOp::kPunch, off, len);
    Mutation m{FaultOp::kPunch, off, len, {}};
    apply_mutation(st_->current, m);
    st_->pending.push_back(std::move(m));
  }

 private:
  void check(FaultOp op, uint64_t off, size_t len) {
    if (op != FaultOp::kRead && !writable_) {
      throw Error(Exit::kWrite, path() + ": write to a file opened read-only");
    }
    if (gen_ != s_.generation_) throw PowerLost();
    int err = s_.before(op, path(), off, len);
    if (err) {
      throw_errno(op == FaultOp::kRead ? Exit::kRead : Exit::kWrite, err, "injected fault", path(),
                  static_cast<int64_t>(off));
    }
  }

  FaultStorage& s_;
  std::shared_ptr<FaultStorage::FileState> st_;
  bool writable_;
  uint64_t gen_;
};

int FaultStorage::before(FaultOp op, const std::string& path, uint64_t off, size_t len) {
  if (dead_) throw PowerLost();
  if (op != FaultOp::kRead) {
    if (mutations_ >= crash_at_) {
      dead_ = true;
      throw PowerLost();
    }
    ++mutations_;
  }
  return fault_ ? fault_(op, path, off, len) : 0;
}

std::unique_ptr<File> FaultStorage::open(const std::string& path, OpenMode mode) {
  std::lock_guard lk(mu_);
  if (dead_) throw PowerLost();
  auto it = files_.find(path);
  if (it == files_.end()) throw_errno(Exit::kOpen, ENOENT, "cannot open", path);
  return std::make_unique<FaultFile>(*this, path, it->second, mode == OpenMode::kReadWrite, generation_);
}

std::unique_ptr<File> FaultStorage::create(const std::string& path) {
  std::lock_guard lk(mu_);
  if (dead_) throw PowerLost();
  if (files_.count(path)) throw_errno(Exit::kCreate, EEXIST, "cannot create", path);
  auto st = std::make_shared<FileState>();
  files_[path] = st;
  return std::make_unique<FaultFile>(*this, path, st, true, generation_);
}

bool FaultStorage::exists(const std::string& path) {
  std::lock_guard lk(mu_);
  return files_.count(path) != 0;
}

void FaultStorage::remove(const std::string& path) {
  std::lock_guard lk(mu_);
  if (dead_) throw PowerLost();
  files_.erase(path);
}

void FaultStorage::rename(const std::string& from, const std::string& to) {
  std::lock_guard lk(mu_);
  if (dead_) throw PowerLost();
  auto it = files_.find(from);
  if (it == files_.end()) throw_errno(Exit::kRename, ENOENT, "cannot rename to " + to, from);
  auto st = it->second;
  files_.erase(it);
  files_[to] = st;
}

void FaultStorage::crash_after(uint64_t n) {
  std::lock_guard lk(mu_);
  crash_at_ = mutations_ + n;
}

void FaultStorage::power_cut(uint64_t seed) {
  std::lock_guard lk(mu_);
  std::mt19937_64 rng(seed);
  for (auto& [name, st] : files_) {
    std::vector<uint8_t> bytes = st->durable;
    for (const Mutation& m : st->pending) {
      switch (rng() % 3) {
        case 0:  // never reached the disk
          break;
        case 1:
          apply_mutation(bytes, m);
          break;
        default:
          if (m.op != FaultOp::kWrite) {
            apply_mutation(bytes, m);
            break;
          }
          // Torn: each 512-byte sector of the write lands or not.
          for (uint64_t s = 0; s < m.data.size(); s += 512) {
            if (rng() & 1) continue;
            Mutation part{FaultOp::kWrite, m.offset + s, 0, {}};
            part.data.assign(m.data.begin() + static_cast<ptrdiff_t>(s),
                             m.data.begin() + static_cast<ptrdiff_t>(std::min<uint64_t>(s + 512, m.data.size())));
            apply_mutation(bytes, part);
          }
      }
    }
    st->durable = bytes;
    st->current = std::move(bytes);
    st->pending.clear();
  }
  dead_ = false;
  crash_at_ = UINT64_MAX;
  ++generation_;
}

void FaultStorage::set_fault(std::function<int(FaultOp, const std::string&, uint64_t, size_t)> f) {
  std::lock_guard lk(mu_);
  fault_ = std::move(f);
}

uint64_t FaultStorage::mutations() const {
  std::lock_guard lk(mu_);
  return mutations_;
}

void FaultStorage::import_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::lock_guard lk(mu_);
  auto st = std::make_shared<FileState>();
  st->durable = bytes;
  st->current = bytes;
  files_[path] = st;
}

std::vector<uint8_t> FaultStorage::contents(const std::string& path) const {
  std::lock_guard lk(mu_);
  auto it = files_.find(path);
  return it == files_.end() ? std::vector<uint8_t>{} : it->second->current;
}

}  // namespace ploop
