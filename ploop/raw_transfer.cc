#include "ploop/raw_transfer.h"

#include <cstring>
#include <vector>

#include "ploop/error.h"
#include "ploop/paths.h"
#include "ploop/seal.h"

namespace ploop {
namespace {

bool all_zero(const uint8_t* p, size_t n) { return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0); }

}  // namespace

TransferStats import_raw(Storage& storage, const std::string& raw_path, const std::string& image_path,
                         uint32_t cluster_sectors, const Progress& progress) {
  auto raw = storage.open(raw_path, OpenMode::kReadOnly);
  uint64_t raw_size = raw->size();
  if (raw_size == 0) throw Error(Exit::kParam, raw_path + ": raw file is empty");
  auto [dd, stack] = create_disk_open(storage, image_path, {raw_size, cluster_sectors, 2});
  TransferStats st;
  try {
    uint64_t cs = stack->cluster_bytes();
    std::vector<uint8_t> buf(cs);
    st.bytes_total = stack->size();
    for (uint64_t off = 0; off < raw_size; off += cs) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(cs, raw_size - off));
      raw->read(buf.data(), n, off);
      if (!all_zero(buf.data(), n)) {
        stack->write(buf.data(), off, n);
        st.bytes_copied += n;
      }
      if (progress) progress(off + n, raw_size);
    }
    stack->close();
  } catch (...) {
    stack.reset();
    storage.remove(image_path);
    storage.remove(dd);
    throw;
  }
  return st;
}

TransferStats export_raw(Storage& storage, const std::string& disk_path, const std::string& out_path,
                         const Progress& progress, bool verify) {
  if (storage.exists(out_path)) throw Error(Exit::kCreate, out_path + ": already exists");
  auto stack = open_disk(storage, disk_path, OpenMode::kReadOnly);
  if (verify) {
    std::vector<std::unique_ptr<SealVerifier>> v;
    for (size_t i = 0; i < stack->depth(); ++i) v.push_back(SealVerifier::load(storage, stack->delta(i).path()));
    stack->verify_reads(std::move(v));
  }
  auto out = storage.create(out_path);
  TransferStats st;
  st.bytes_total = stack->size();
  try {
    uint64_t cs = stack->cluster_bytes();
    std::vector<uint8_t> buf(cs);
    out->truncate(stack->size());
    for (uint64_t off = 0; off < stack->size();) {
      Stack::Extent e = stack->status(off, stack->size() - off);
      if (e.allocated) {
        for (uint64_t pos = off; pos < off + e.length; pos += cs) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(cs, off + e.length - pos));
          stack->read(buf.data(), pos, n);
          if (!all_zero(buf.data(), n)) {
            out->write(buf.data(), n, pos);
            st.bytes_copied += n;
          }
          if (progress) progress(pos + n, stack->size());
        }
      }
      off += e.length;
      if (progress) progress(off, stack->size());
    }
    out->sync();
  } catch (...) {
    out.reset();
    storage.remove(out_path);
    throw;
  }
  return st;
}

}  // namespace ploop
