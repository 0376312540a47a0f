#include "ploop/file.h"

#include <algorithm>

#include "ploop/aligned_bytes.h"

namespace ploop {

void File::copy_from(File& src, uint64_t src_offset, uint64_t len, uint64_t offset) {
  AlignedBytes buf(static_cast<size_t>(std::min<uint64_t>(len, 1 << 20)));
  for (uint64_t done = 0; done < len;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, buf.size()));
    src.read(buf.data(), n, src_offset + done);
    write(buf.data(), n, offset + done);
    done += n;
  }
}

void File::preallocate(uint64_t offset, uint64_t len) {
  AlignedBytes zero(static_cast<size_t>(std::min<uint64_t>(len, 1 << 20)));
  for (uint64_t done = 0; done < len;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, zero.size()));
    write(zero.data(), n, offset + done);
    done += n;
  }
}

}  // namespace ploop
