#include "kmod-shim/nbd/connection.h"

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "kmod-shim/nbd/protocol.h"
#include "ploop/error.h"

namespace nbd {
namespace {

constexpr uint32_t kMaxOptionLen = 64 << 10;      // larger options are refused
constexpr uint32_t kMaxOptionDiscard = 1 << 20;   // up to this much is read and dropped first
constexpr unsigned kMaxOptions = 4096;            // a client that never ends the handshake is cut off
const char kBaseAllocation[] = "base:allocation";
constexpr uint32_t kMetaId = 1;

bool read_exact(int fd, void* buf, size_t n) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

uint32_t wire_errno(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const ploop::Error& x) {
    if (x.sys_errno() == ENOSPC) return kENoSpc;
    if (x.code() == ploop::Exit::kParam) return kEInval;
    return kEIo;
  } catch (const std::bad_alloc&) {
    return kENoMem;
  } catch (...) {
    return kEIo;
  }
}

}  // namespace

Connection::Connection(int fd, ploop::Stack& stack, const ExportOptions& opts, shim::WorkerPool& pool, Stats& stats,
                       MemoryBudget& budget, Phase start)
    : fd_(fd), stack_(stack), opts_(opts), pool_(pool), stats_(stats), budget_(budget), start_(start) {
  if (stack_.writable() == false) opts_.read_only = true;
}

Connection::~Connection() { ::close(fd_); }

void Connection::shutdown() {
  broken_ = true;
  ::shutdown(fd_, SHUT_RDWR);
}

bool Connection::send_all(const void* a, size_t alen, const void* b, size_t blen) {
  iovec iov[2] = {{const_cast<void*>(a), alen}, {const_cast<void*>(b), blen}};
  int cnt = b && blen ? 2 : 1;
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<size_t>(cnt);
  size_t left = alen + (cnt == 2 ? blen : 0);
  while (left) {
    ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      broken_ = true;
      ::shutdown(fd_, SHUT_RDWR);
      return false;
    }
    left -= static_cast<size_t>(w);
    auto done = static_cast<size_t>(w);
    while (done && msg.msg_iovlen) {
      size_t k = std::min(done, msg.msg_iov->iov_len);
      msg.msg_iov->iov_base = static_cast<uint8_t*>(msg.msg_iov->iov_base) + k;
      msg.msg_iov->iov_len -= k;
      done -= k;
      if (msg.msg_iov->iov_len == 0) {
        ++msg.msg_iov;
        --msg.msg_iovlen;
      }
    }
  }
  return true;
}

uint16_t Connection::transmission_flags() const {
  uint16_t f = kHasFlags | kSendFlush | kSendDf | kCanMultiConn | kSendCache;
  if (opts_.read_only) return f | kReadOnly;
  return f | kSendFua | kSendTrim | kSendWriteZeroes | kSendFastZero;
}

bool Connection::option_reply(uint32_t opt, uint32_t type, const void* data, uint32_t len) {
  uint8_t h[20];
  be::store64(h, kOptReplyMagic);
  be::store32(h + 8, opt);
  be::store32(h + 12, type);
  be::store32(h + 16, len);
  return send_all(h, sizeof h, data, len);
}

// Parses "u32 namelen, name, ..." at the start of an option; false if it does not fit.
static bool parse_name(const std::vector<uint8_t>& d, size_t& pos, std::string& name) {
  if (d.size() < 4) return false;
  uint32_t n = be::load32(d.data());
  if (n > d.size() - 4) return false;
  name.assign(reinterpret_cast<const char*>(d.data()) + 4, n);
  pos = 4 + n;
  return true;
}

bool Connection::handle_info_go(uint32_t opt, const std::vector<uint8_t>& d) {
  std::string name;
  size_t pos;
  if (!parse_name(d, pos, name) || d.size() - pos < 2) return option_reply(opt, kRepErrInvalid, nullptr, 0);
  uint16_t n = be::load16(&d[pos]);
  pos += 2;
  if (d.size() - pos != 2u * n) return option_reply(opt, kRepErrInvalid, nullptr, 0);
  if (!name.empty() && name != opts_.name) {
    static const char msg[] = "no such export";
    return option_reply(opt, kRepErrUnknown, msg, sizeof msg - 1);
  }
  bool want_name = false, want_desc = false;
  for (uint16_t i = 0; i < n; ++i) {
    uint16_t t = be::load16(&d[pos + 2 * i]);
    want_name |= t == kInfoName;
    want_desc |= t == kInfoDescription;
  }
  uint8_t exp[12];
  be::store16(exp, kInfoExport);
  be::store64(exp + 2, stack_.size());
  be::store16(exp + 10, transmission_flags());
  if (!option_reply(opt, kRepInfo, exp, sizeof exp)) return false;
  uint8_t bs[14];
  be::store16(bs, kInfoBlockSize);
  be::store32(bs + 2, 1);        // any alignment works (unaligned requests are bounced)
  be::store32(bs + 6, 4096);     // preferred
  be::store32(bs + 10, opts_.max_payload);
  if (!option_reply(opt, kRepInfo, bs, sizeof bs)) return false;
  if (want_name) {
    std::vector<uint8_t> b(2 + opts_.name.size());
    be::store16(b.data(), kInfoName);
    std::memcpy(b.data() + 2, opts_.name.data(), opts_.name.size());
    if (!option_reply(opt, kRepInfo, b.data(), static_cast<uint32_t>(b.size()))) return false;
  }
  if (want_desc) {
    static const char desc[] = "ploop delta stack";
    std::vector<uint8_t> b(2 + sizeof desc - 1);
    be::store16(b.data(), kInfoDescription);
    std::memcpy(b.data() + 2, desc, sizeof desc - 1);
    if (!option_reply(opt, kRepInfo, b.data(), static_cast<uint32_t>(b.size()))) return false;
  }
  return option_reply(opt, kRepAck, nullptr, 0);
}

bool Connection::handle_meta_context(uint32_t opt, const std::vector<uint8_t>& d) {
  std::string name;
  size_t pos;
  if (!parse_name(d, pos, name) || d.size() - pos < 4) return option_reply(opt, kRepErrInvalid, nullptr, 0);
  if (opt == kOptSetMetaContext && !structured_) {
    static const char msg[] = "structured replies are needed first";
    return option_reply(opt, kRepErrInvalid, msg, sizeof msg - 1);
  }
  if (!name.empty() && name != opts_.name) return option_reply(opt, kRepErrUnknown, nullptr, 0);
  uint32_t nq = be::load32(&d[pos]);
  pos += 4;
  bool match = opt == kOptListMetaContext && nq == 0;  // LIST with no query lists everything
  for (uint32_t i = 0; i < nq; ++i) {
    if (d.size() - pos < 4) return option_reply(opt, kRepErrInvalid, nullptr, 0);
    uint32_t len = be::load32(&d[pos]);
    pos += 4;
    if (len > d.size() - pos) return option_reply(opt, kRepErrInvalid, nullptr, 0);
    std::string q(reinterpret_cast<const char*>(&d[pos]), len);
    pos += len;
    match |= q == kBaseAllocation || (opt == kOptListMetaContext && q == "base:");
  }
  if (pos != d.size()) return option_reply(opt, kRepErrInvalid, nullptr, 0);
  if (opt == kOptSetMetaContext) base_allocation_ = match;
  if (match) {
    std::vector<uint8_t> b(4 + sizeof kBaseAllocation - 1);
    be::store32(b.data(), kMetaId);
    std::memcpy(b.data() + 4, kBaseAllocation, sizeof kBaseAllocation - 1);
    if (!option_reply(opt, kRepMetaContext, b.data(), static_cast<uint32_t>(b.size()))) return false;
  }
  return option_reply(opt, kRepAck, nullptr, 0);
}

bool Connection::handshake() {
  uint8_t hello[18];
  be::store64(hello, kMagic);
  be::store64(hello + 8, kOptMagic);
  be::store16(hello + 16, kFlagFixedNewstyle | kFlagNoZeroes);
  if (!send_all(hello, sizeof hello)) return false;
  uint8_t cf[4];
  if (!read_exact(fd_, cf, 4)) return false;
  uint32_t client = be::load32(cf);
  if (client & ~(kClientFixedNewstyle | kClientNoZeroes)) return false;  // unknown flags: disconnect
  const bool no_zeroes = client & kClientNoZeroes;
  for (unsigned i = 0; i < kMaxOptions; ++i) {
    uint8_t h[16];
    if (!read_exact(fd_, h, sizeof h)) return false;
    if (be::load64(h) != kOptMagic) return false;
    uint32_t opt = be::load32(h + 8), len = be::load32(h + 12);
    if (len > kMaxOptionLen) {
      if (len > kMaxOptionDiscard) return false;
      std::vector<uint8_t> sink(len);
      if (!read_exact(fd_, sink.data(), len)) return false;
      if (opt == kOptExportName) return false;
      if (!option_reply(opt, kRepErrTooBig, nullptr, 0)) return false;
      continue;
    }
    std::vector<uint8_t> d(len);
    if (len && !read_exact(fd_, d.data(), len)) return false;
    switch (opt) {
      case kOptExportName: {
        std::string name(d.begin(), d.end());
        if (!name.empty() && name != opts_.name) return false;  // no error path in this option
        uint8_t r[10 + 124] = {};
        be::store64(r, stack_.size());
        be::store16(r + 8, transmission_flags());
        return send_all(r, no_zeroes ? 10 : sizeof r);
      }
      case kOptAbort:
        option_reply(opt, kRepAck, nullptr, 0);
        return false;
      case kOptList: {
        if (len) {
          if (!option_reply(opt, kRepErrInvalid, nullptr, 0)) return false;
          break;
        }
        std::vector<uint8_t> b(4 + opts_.name.size());
        be::store32(b.data(), static_cast<uint32_t>(opts_.name.size()));
        std::memcpy(b.data() + 4, opts_.name.data(), opts_.name.size());
        if (!option_reply(opt, kRepServer, b.data(), static_cast<uint32_t>(b.size()))) return false;
        if (!option_reply(opt, kRepAck, nullptr, 0)) return false;
        break;
      }
      case kOptInfo:
      case kOptGo: {
        if (!handle_info_go(opt, d)) return false;
        // GO succeeded if the last reply was an ACK; handle_info_go replies errors itself.
        if (opt == kOptGo) {
          std::string name;
          size_t pos;
          bool ok = parse_name(d, pos, name) && (name.empty() || name == opts_.name) && d.size() - pos >= 2 &&
                    d.size() - pos - 2 == 2u * be::load16(&d[pos]);
          if (ok) return true;
        }
        break;
      }
      case kOptStructuredReply:
        if (len) {
          if (!option_reply(opt, kRepErrInvalid, nullptr, 0)) return false;
          break;
        }
        structured_ = true;
        if (!option_reply(opt, kRepAck, nullptr, 0)) return false;
        break;
      case kOptListMetaContext:
      case kOptSetMetaContext:
        if (!handle_meta_context(opt, d)) return false;
        break;
      case kOptStartTls: {
        static const char msg[] = "TLS is not supported";
        if (!option_reply(opt, kRepErrPolicy, msg, sizeof msg - 1)) return false;
        break;
      }
      default:
        if (!option_reply(opt, kRepErrUnsup, nullptr, 0)) return false;
    }
  }
  return false;
}

void Connection::serve() {
  bool ok = true;
  if (start_ == Phase::kHandshake) {
    // A client gets 30 s per handshake read; idle connections in transmission are fine.
    timeval tv{30, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ok = handshake();
    tv = {0, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  // A client that stops reading its replies must not hold the shared workers: a reply that cannot
  // be sent for 5 s ends the connection.
  timeval stv{5, 0};
  setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof stv);
  if (ok) transmission();
  std::unique_lock lk(flight_mu_);
  flight_cv_.wait(lk, [&] { return in_flight_ == 0; });
}

void Connection::transmission() {
  for (;;) {
    uint8_t h[28];
    if (broken_ || !read_exact(fd_, h, sizeof h)) return;
    if (be::load32(h) != kRequestMagic) return;  // unparseable from here on
    uint16_t flags = be::load16(h + 4), type = be::load16(h + 6);
    uint64_t cookie = be::load64(h + 8), offset = be::load64(h + 16);
    uint32_t len = be::load32(h + 24);
    ploop::PageBuffer payload;
    // Memory this request will hold: its write data, or its read buffer (bounded by max_payload).
    uint64_t cost = (type == kCmdWrite || type == kCmdRead) ? std::min(len, opts_.max_payload) : 0;
    if (type == kCmdWrite && len > opts_.max_payload) return;  // cannot be skipped safely without reading it all
    budget_.take(cost);
    if (type == kCmdWrite) {
      payload = ploop::PageBuffer(len);
      if (len && !read_exact(fd_, payload.data(), len)) {
        budget_.give(cost);
        return;
      }
    }
    if (type == kCmdDisc) {
      budget_.give(cost);
      return;
    }
    {
      std::unique_lock lk(flight_mu_);
      flight_cv_.wait(lk, [&] { return in_flight_ < opts_.max_in_flight; });
      ++in_flight_;
    }
    // std::function needs a copyable job: the buffer travels in a shared_ptr.
    auto p = std::make_shared<ploop::PageBuffer>(std::move(payload));
    pool_.submit([this, type, flags, cookie, offset, len, cost, p] {
      execute(type, flags, cookie, offset, len, std::move(*p));
      budget_.give(cost);
      std::lock_guard lk(flight_mu_);
      --in_flight_;
      flight_cv_.notify_all();
    });
  }
}

void Connection::execute(uint16_t type, uint16_t flags, uint64_t cookie, uint64_t offset, uint32_t len,
                         ploop::PageBuffer payload) {
  const uint64_t size = stack_.size();
  const bool in_range = offset <= size && len <= size - offset;
  const uint16_t known = kCmdFlagFua | kCmdFlagNoHole | kCmdFlagDf | kCmdFlagReqOne | kCmdFlagFastZero;
  auto fail = [&](uint32_t e) {
    ++stats_.errors;
    reply_error(cookie, e);
  };
  if (flags & ~known) return fail(kEInval);
  if ((flags & kCmdFlagDf) && (type != kCmdRead || !structured_)) return fail(kEInval);
  if ((flags & kCmdFlagFastZero) && type != kCmdWriteZeroes) return fail(kEInval);
  if ((flags & kCmdFlagReqOne) && type != kCmdBlockStatus) return fail(kEInval);
  const bool writes = type == kCmdWrite || type == kCmdTrim || type == kCmdWriteZeroes;
  if (writes && opts_.read_only) return fail(kEPerm);
  try {
    switch (type) {
      case kCmdRead: {
        if (len == 0 || len > opts_.max_payload) return fail(kEInval);
        if (!in_range) return fail(kEInval);
        ploop::PageBuffer buf(len);  // aligned: O_DIRECT reads land in it without a bounce
        stack_.read(buf.data(), offset, len);
        ++stats_.reads;
        stats_.bytes_read += len;
        return reply_read(cookie, offset, buf.data(), len);
      }
      case kCmdWrite:
        if (!in_range) return fail(kENoSpc);
        stack_.write(payload.data(), offset, len, flags & kCmdFlagFua);
        ++stats_.writes;
        stats_.bytes_written += len;
        return reply_simple(cookie, 0, nullptr, 0);
      case kCmdFlush:
        stack_.flush();
        ++stats_.flushes;
        return reply_simple(cookie, 0, nullptr, 0);
      case kCmdTrim:
        if (!in_range) return fail(kENoSpc);
        stack_.discard(offset, len);
        if (flags & kCmdFlagFua) stack_.flush();
        ++stats_.trims;
        return reply_simple(cookie, 0, nullptr, 0);
      case kCmdWriteZeroes:
        if (!in_range) return fail(kENoSpc);
        if ((flags & kCmdFlagFastZero) && !stack_.zeroes_are_fast(offset, len)) return fail(kENotSup);
        stack_.write_zeroes(offset, len, flags & kCmdFlagFua, !(flags & kCmdFlagNoHole));
        ++stats_.zeroes;
        return reply_simple(cookie, 0, nullptr, 0);
      case kCmdCache:
        if (!in_range) return fail(kEInval);
        return reply_simple(cookie, 0, nullptr, 0);  // reads go to the files' own cache; nothing to do
      case kCmdBlockStatus: {
        if (!base_allocation_ || len == 0 || !in_range) return fail(kEInval);
        std::vector<uint8_t> desc;
        uint64_t pos = offset, end = offset + len;
        while (pos < end && desc.size() < 8 * 1024) {
          ploop::Stack::Extent e = stack_.status(pos, end - pos);
          uint8_t one[8];
          be::store32(one, static_cast<uint32_t>(std::min<uint64_t>(e.length, 0xfffff000u)));
          be::store32(one + 4, e.allocated ? 0 : kStateHole | kStateZero);
          desc.insert(desc.end(), one, one + 8);
          pos += std::min<uint64_t>(e.length, 0xfffff000u);
          if (flags & kCmdFlagReqOne) break;
        }
        ++stats_.block_status;
        return reply_block_status(cookie, desc);
      }
      default:
        return fail(kEInval);
    }
  } catch (...) {
    uint32_t e = wire_errno(std::current_exception());
    try {
      std::rethrow_exception(std::current_exception());
    } catch (const std::exception& x) {
      std::fprintf(stderr, "nbd: request type %u at offset %llu: %s\n", type, static_cast<unsigned long long>(offset), x.what());
    }
    fail(e);
  }
}

void Connection::reply_simple(uint64_t cookie, uint32_t error, const uint8_t* data, size_t len) {
  uint8_t h[16];
  be::store32(h, kSimpleReplyMagic);
  be::store32(h + 4, error);
  be::store64(h + 8, cookie);
  std::lock_guard lk(send_mu_);
  send_all(h, sizeof h, data, len);
}

void Connection::reply_read(uint64_t cookie, uint64_t offset, const uint8_t* data, size_t len) {
  if (!structured_) return reply_simple(cookie, 0, data, len);
  uint8_t h[28];
  be::store32(h, kStructuredReplyMagic);
  be::store16(h + 4, kReplyFlagDone);
  be::store16(h + 6, kReplyTypeOffsetData);
  be::store64(h + 8, cookie);
  be::store32(h + 16, static_cast<uint32_t>(8 + len));
  be::store64(h + 20, offset);
  std::lock_guard lk(send_mu_);
  send_all(h, sizeof h, data, len);
}

void Connection::reply_error(uint64_t cookie, uint32_t error) {
  if (!structured_) return reply_simple(cookie, error, nullptr, 0);
  uint8_t h[26];
  be::store32(h, kStructuredReplyMagic);
  be::store16(h + 4, kReplyFlagDone);
  be::store16(h + 6, kReplyTypeError);
  be::store64(h + 8, cookie);
  be::store32(h + 16, 6);
  be::store32(h + 20, error);
  be::store16(h + 24, 0);  // no message
  std::lock_guard lk(send_mu_);
  send_all(h, sizeof h);
}

void Connection::reply_block_status(uint64_t cookie, const std::vector<uint8_t>& desc) {
  uint8_t h[24];
  be::store32(h, kStructuredReplyMagic);
  be::store16(h + 4, kReplyFlagDone);
  be::store16(h + 6, kReplyTypeBlockStatus);
  be::store64(h + 8, cookie);
  be::store32(h + 16, static_cast<uint32_t>(4 + desc.size()));
  be::store32(h + 20, kMetaId);
  std::lock_guard lk(send_mu_);
  send_all(h, sizeof h, desc.data(), desc.size());
}

}  // namespace nbd
