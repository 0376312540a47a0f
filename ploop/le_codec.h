// Little-endian codec: the one place where on-disk integers are read and written.
// Every on-disk field of a delta goes through these functions; no struct is ever punned onto
// disk bytes. They compile to plain loads/stores on little-endian hosts and byte shuffles elsewhere.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ploop::le {

inline uint16_t load16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
inline uint32_t load32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
inline uint64_t load64(const uint8_t* p) {
  return uint64_t{load32(p)} | (uint64_t{load32(p + 4)} << 32);
}
inline void store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline void store32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void store64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace ploop::le
