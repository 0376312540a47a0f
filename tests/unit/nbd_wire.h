// The client side of the NBD wire for the server's unit tests: raw sends and receives on a
// socket (one end of a socket pair), transmission requests and simple replies, built byte by byte
// so tests can also send what no real client would.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstdint>
#include <vector>

#include "kmod-shim/nbd/protocol.h"

namespace nbdtest {

struct Wire {
  int fd = -1;

  void send(const void* p, size_t n) { ASSERT_EQ(::send(fd, p, n, MSG_NOSIGNAL), static_cast<ssize_t>(n)); }
  bool recv(void* p, size_t n) {
    auto* b = static_cast<uint8_t*>(p);
    while (n) {
      ssize_t r = ::recv(fd, b, n, 0);
      if (r <= 0) return false;
      b += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }
  bool closed_by_server() {
    uint8_t b;
    return ::recv(fd, &b, 1, 0) == 0;
  }
  void request(uint16_t type, uint64_t off, uint32_t len, uint16_t flags = 0, const uint8_t* payload = nullptr,
               uint64_t cookie = 7) {
    uint8_t h[28];
    nbd::be::store32(h, nbd::kRequestMagic);
    nbd::be::store16(h + 4, flags);
    nbd::be::store16(h + 6, type);
    nbd::be::store64(h + 8, cookie);
    nbd::be::store64(h + 16, off);
    nbd::be::store32(h + 24, len);
    send(h, 28);
    if (payload) send(payload, len);
  }
  // One simple reply: its error, or UINT32_MAX if the connection closed. Read data goes to *data.
  uint32_t reply(std::vector<uint8_t>* data = nullptr, size_t len = 0, uint64_t cookie = 7) {
    uint8_t h[16];
    if (!recv(h, 16)) return UINT32_MAX;
    EXPECT_EQ(nbd::be::load32(h), nbd::kSimpleReplyMagic);
    EXPECT_EQ(nbd::be::load64(h + 8), cookie);
    uint32_t err = nbd::be::load32(h + 4);
    if (data && err == 0) {
      data->resize(len);
      if (!recv(data->data(), len)) return UINT32_MAX;
    }
    return err;
  }
};

}  // namespace nbdtest
