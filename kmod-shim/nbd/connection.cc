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
    if (r == 0) errno = 0;  // the client has gone (not a timeout)
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The protocol's error for an errno from the engine (EINVAL for a bad range, ENOSPC, EIO, ...).
uint32_t wire_errno(int err) {
  switch (err) {
    case ENOSPC: return kENoSpc;
    case EINVAL: return kEInval;
    case ENOMEM: return kENoMem;
    case EPERM: return kEPerm;
    default: return kEIo;
  }
}

constexpr size_t kRxBytes = 64 << 10;  // one receive: many request headers, or small writes

}  // namespace

struct Connection::Request {
  uint16_t type, flags;
  uint64_t cookie, offset;
  uint32_t len;
  uint64_t cost;               // memory budget held
  ploop::PageBuffer data;      // write payload, or read buffer
  std::vector<uint8_t> extra;  // block status descriptors
};

Connection::Connection(int fd, ploop::Stack& stack, const ExportOptions& opts, Stats& stats, MemoryBudget& budget,
                       Phase start)
    : fd_(fd), stack_(stack), opts_(opts), stats_(stats), budget_(budget), start_(start) {
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
      shutdown();
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
  // A client that reads none of the server's replies for stall_ms is cut, in the handshake too
  // (one that sends options without reading the replies would otherwise hold its thread and
  // connection slot for ever).
  const timeval stall{static_cast<time_t>(opts_.stall_ms / 1000),
                      static_cast<suseconds_t>(opts_.stall_ms % 1000 * 1000)};
  setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &stall, sizeof stall);
  if (start_ == Phase::kHandshake) {
    // A client gets 30 s per handshake read; idle connections in transmission are fine.
    timeval tv{30, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ok = handshake();
  }
  // From here on the socket is read without blocking, except for the rest of a write's payload
  // (read_exact): there too a client that makes no progress for stall_ms ends the connection.
  setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &stall, sizeof stall);
  // A Unix socket holds about 400 KiB of replies by default: a 1 MiB read reply then leaves in
  // three or more sends, each after a wake-up for room. With room for a whole reply (the kernel
  // counts twice this) 1 MiB sequential reads went 1.2-1.8x faster (docs/performance.md). TCP
  // sizes its buffers itself (setting one would turn that off).
  int domain = 0;
  socklen_t dlen = sizeof domain;
  if (getsockopt(fd_, SOL_SOCKET, SO_DOMAIN, &domain, &dlen) == 0 && domain == AF_UNIX) {
    int bytes = 1 << 20;
    setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);  // best effort: capped by wmem_max
  }
  if (!ok) return;
  try {
    transmission();
  } catch (const std::exception& x) {  // e.g. no io_uring could be set up: this connection only
    std::fprintf(stderr, "nbd: connection ended: %s\n", x.what());
  }
}

void Connection::transmission() {
  ploop::UringEngine engine(stack_, opts_.max_in_flight + 2);
  engine_ = &engine;
  rx_ = ploop::PageBuffer(kRxBytes);
  bool readable = true, writable = true, watch_in = false, watch_out = false, end = false, ending = false;
  for (;;) {
    engine.poll(false);  // queues replies for whatever has completed
    if (writable) writable = flush_out(false);
    while (!end && readable && !broken_ && in_flight_ < opts_.max_in_flight) {
      Step st = receive();
      if (st == Step::kEnd) end = true;
      if (st == Step::kNoHeader) readable = false;
      if (st == Step::kWaitMemory) break;  // our own requests will give memory back
    }
    if (writable) writable = flush_out(false);  // replies given at once (errors, cache, status)
    if (end || broken_) break;
    if (!readable && !watch_in) {
      watch_in = true;
      engine.watch(fd_, ploop::UringEngine::kReadable, [&](int) {
        watch_in = false;
        readable = true;
      });
    }
    if (!writable && !watch_out) {
      watch_out = true;
      engine.watch(
          fd_, ploop::UringEngine::kWritable,
          [&](int err) {
            watch_out = false;
            writable = true;
            if (err && !ending) {  // no progress for stall_ms
              std::fprintf(stderr, "nbd: client read no reply for %u ms; disconnecting\n", opts_.stall_ms);
              shutdown();
            }
          },
          opts_.stall_ms);
    }
    engine.poll(true);  // a completion, the socket has more, or it has room again
  }
  // Answer what is in flight (a client that sent DISC may still read them), then stop.
  ending = true;
  engine.unwatch();
  while (engine.in_flight()) engine.poll(true);
  flush_out(true);
  engine_ = nullptr;
}

Connection::Step Connection::receive() {
  constexpr size_t kHeader = 28;
  if (rx_end_ - rx_begin_ < kHeader) {
    if (rx_begin_) {
      std::memmove(rx_.data(), rx_.data() + rx_begin_, rx_end_ - rx_begin_);
      rx_end_ -= rx_begin_;
      rx_begin_ = 0;
    }
    ssize_t r = ::recv(fd_, rx_.data() + rx_end_, rx_.size() - rx_end_, MSG_DONTWAIT);
    if (r > 0) {
      rx_end_ += static_cast<size_t>(r);
      return Step::kNext;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Step::kNoHeader;
    if (r < 0 && errno == EINTR) return Step::kNext;
    return Step::kEnd;  // the client has gone, or the socket failed
  }
  const uint8_t* h = rx_.data() + rx_begin_;
  if (be::load32(h) != kRequestMagic) return Step::kEnd;  // unparseable from here on
  auto* r = new Request{be::load16(h + 6), be::load16(h + 4), be::load64(h + 8), be::load64(h + 16), be::load32(h + 24), 0, {}, {}};
  std::unique_ptr<Request> own(r);
  if (r->type == kCmdWrite && r->len > opts_.max_payload) return Step::kEnd;  // cannot be skipped without reading it all
  // Memory this request will hold: its write data, or its read buffer (bounded by max_payload).
  if (r->type == kCmdWrite || r->type == kCmdRead) r->cost = std::min(r->len, opts_.max_payload);
  if (in_flight_ && bytes_in_flight_ + r->cost > opts_.max_bytes_in_flight) return Step::kWaitMemory;
  if (!budget_.try_take(r->cost)) {
    if (in_flight_) return Step::kWaitMemory;  // the header stays in rx_ for the next try
    budget_.take(r->cost);                     // other connections will give it back
  }
  rx_begin_ += kHeader;
  bytes_in_flight_ += r->cost;
  if (r->type == kCmdWrite) {
    r->data = buffers_.get(r->len);
    size_t have = std::min<size_t>(r->len, rx_end_ - rx_begin_);
    if (have) std::memcpy(r->data.data(), rx_.data() + rx_begin_, have);
    rx_begin_ += have;
    if (have < r->len && !read_exact(fd_, r->data.data() + have, r->len - have)) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        std::fprintf(stderr, "nbd: client sent no more of a write's payload for %u ms; disconnecting\n",
                     opts_.stall_ms);
      ++in_flight_;
      finish(own.release());
      return Step::kEnd;
    }
  }
  if (rx_begin_ == rx_end_) rx_begin_ = rx_end_ = 0;
  ++in_flight_;  // until its reply has been sent
  if (r->type == kCmdDisc) {
    finish(own.release());
    return Step::kEnd;
  }
  start(own.release());
  return Step::kNext;
}

// Validates a request and either answers it at once or hands it to the engine; complete() sends
// the reply when the engine is done.
void Connection::start(Request* r) {
  const uint64_t size = stack_.size();
  const bool in_range = r->offset <= size && r->len <= size - r->offset;
  const uint16_t known = kCmdFlagFua | kCmdFlagNoHole | kCmdFlagDf | kCmdFlagReqOne | kCmdFlagFastZero;
  const uint16_t type = r->type, flags = r->flags;
  const uint64_t off = r->offset, len = r->len;
  auto fail = [&](uint32_t e) {
    ++stats_.errors;
    reply_error(r, e);
  };
  if (flags & ~known) return fail(kEInval);
  if ((flags & kCmdFlagDf) && (type != kCmdRead || !structured_)) return fail(kEInval);
  if ((flags & kCmdFlagFastZero) && type != kCmdWriteZeroes) return fail(kEInval);
  if ((flags & kCmdFlagReqOne) && type != kCmdBlockStatus) return fail(kEInval);
  const bool writes = type == kCmdWrite || type == kCmdTrim || type == kCmdWriteZeroes;
  if (writes && opts_.read_only) return fail(kEPerm);
  auto done = [this, r](int err) { complete(r, err); };
  const bool fua = flags & kCmdFlagFua;
  bool handed = false;  // the engine owns the request (its callback will complete it)
  auto hand = [&] { handed = true; };
  try {
    switch (type) {
      case kCmdRead:
        if (len == 0 || len > opts_.max_payload || !in_range) return fail(kEInval);
        r->data = buffers_.get(len);  // aligned: O_DIRECT reads land in it without a bounce
        hand();
        return engine_->read(r->data.data(), off, r->len, done);
      case kCmdWrite:
        if (!in_range) return fail(kENoSpc);
        hand();
        return engine_->write(r->data.data(), off, r->len, fua, done);
      case kCmdFlush:
        hand();
        return engine_->flush(done);
      case kCmdTrim:
        if (!in_range) return fail(kENoSpc);
        hand();
        return engine_->run(
            [this, off, len, fua] {
              stack_.discard(off, len);
              if (fua) stack_.flush();
            },
            done);
      case kCmdWriteZeroes: {
        if (!in_range) return fail(kENoSpc);
        if ((flags & kCmdFlagFastZero) && !stack_.zeroes_are_fast(off, len)) return fail(kENotSup);
        const bool may_unmap = !(flags & kCmdFlagNoHole);
        hand();
        return engine_->run([this, off, len, fua, may_unmap] { stack_.write_zeroes(off, len, fua, may_unmap); },
                            done);
      }
      case kCmdCache:
        if (!in_range) return fail(kEInval);
        return reply_simple(r, 0);  // reads go to the files' own cache; nothing to do
      case kCmdBlockStatus: {
        if (!base_allocation_ || len == 0 || !in_range) return fail(kEInval);
        std::vector<uint8_t> desc;
        uint64_t pos = off, end = off + len;
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
        r->extra = std::move(desc);
        return reply_block_status(r);
      }
      default:
        return fail(kEInval);
    }
  } catch (const std::exception& x) {
    // Only memory can run out before the engine has the request; after that, the engine reports
    // failures through the callback. Either way the client gets an error, not a dead daemon.
    std::fprintf(stderr, "nbd: request type %u at offset %llu: %s\n", type, static_cast<unsigned long long>(off),
                 x.what());
    if (!handed) return fail(dynamic_cast<const std::bad_alloc*>(&x) ? kENoMem : kEIo);
    shutdown();  // the engine may not have taken it: end the connection rather than guess
  }
}

void Connection::complete(Request* r, int err) {
  if (err) {
    ++stats_.errors;
    std::fprintf(stderr, "nbd: request type %u at offset %llu, %u bytes: %s\n", r->type,
                 static_cast<unsigned long long>(r->offset), r->len, std::strerror(err));
    return reply_error(r, wire_errno(err));
  }
  switch (r->type) {
    case kCmdRead:
      ++stats_.reads;
      stats_.bytes_read += r->len;
      return reply_read(r);
    case kCmdWrite:
      ++stats_.writes;
      stats_.bytes_written += r->len;
      break;
    case kCmdFlush:
      ++stats_.flushes;
      break;
    case kCmdTrim:
      ++stats_.trims;
      break;
    default:  // kCmdWriteZeroes
      ++stats_.zeroes;
  }
  reply_simple(r, 0);
}

void Connection::finish(Request* r) {
  --in_flight_;
  bytes_in_flight_ -= r->cost;
  budget_.give(r->cost);
  buffers_.put(std::move(r->data));
  delete r;
}

void Connection::queue(Request* r, const uint8_t* head, size_t hlen, const uint8_t* data, size_t dlen) {
  Out o{{}, hlen, data, dlen, 0, r};
  std::memcpy(o.head, head, hlen);
  out_.push_back(o);
}

// Sends queued replies, several per system call. Without `block`, stops when the socket is full
// (false: the caller waits until it is writable); with it, waits (up to the send timeout).
bool Connection::flush_out(bool block) {
  while (!out_.empty() && !broken_) {
    iovec iov[64];
    size_t n = 0;
    for (auto it = out_.begin(); it != out_.end() && n + 2 <= std::size(iov); ++it) {
      if (it->sent < it->hlen) iov[n++] = {it->head + it->sent, it->hlen - it->sent};
      size_t d = it->sent > it->hlen ? it->sent - it->hlen : 0;
      if (it->dlen > d) iov[n++] = {const_cast<uint8_t*>(it->data) + d, it->dlen - d};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && !block && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (w <= 0) {
      shutdown();
      break;
    }
    auto left = static_cast<size_t>(w);
    while (left) {
      Out& o = out_.front();
      size_t k = std::min(left, o.hlen + o.dlen - o.sent);
      o.sent += k;
      left -= k;
      if (o.sent == o.hlen + o.dlen) {
        Request* r = o.r;
        out_.pop_front();
        finish(r);
      }
    }
  }
  if (broken_) {  // nobody will read these any more
    while (!out_.empty()) {
      Request* r = out_.front().r;
      out_.pop_front();
      finish(r);
    }
  }
  return true;
}

void Connection::reply_simple(Request* r, uint32_t error) {
  uint8_t h[16];
  be::store32(h, kSimpleReplyMagic);
  be::store32(h + 4, error);
  be::store64(h + 8, r->cookie);
  const bool data = r->type == kCmdRead && error == 0;
  queue(r, h, sizeof h, data ? r->data.data() : nullptr, data ? r->len : 0);
}

void Connection::reply_read(Request* r) {
  if (!structured_) return reply_simple(r, 0);
  uint8_t h[28];
  be::store32(h, kStructuredReplyMagic);
  be::store16(h + 4, kReplyFlagDone);
  be::store16(h + 6, kReplyTypeOffsetData);
  be::store64(h + 8, r->cookie);
  be::store32(h + 16, 8 + r->len);
  be::store64(h + 20, r->offset);
  queue(r, h, sizeof h, r->data.data(), r->len);
}

void Connection::reply_error(Request* r, uint32_t error) {
  if (!structured_) return reply_simple(r, error);
  uint8_t h[26];
  be::store32(h, kStructuredReplyMagic);
  be::store16(h + 4, kReplyFlagDone);
  be::store16(h + 6, kReplyTypeError);
  be::store64(h + 8, r->cookie);
  be::store32(h + 16, 6);
  be::store32(h + 20, error);
  be::store16(h + 24, 0);  // no message
  queue(r, h, sizeof h, nullptr, 0);
}

void Connection::reply_block_status(Request* r) {
  uint8_t h[24];
  be::store32(h, kStructuredReplyMagic);
  be::store16(h + 4, kReplyFlagDone);
  be::store16(h + 6, kReplyTypeBlockStatus);
  be::store64(h + 8, r->cookie);
  be::store32(h + 16, static_cast<uint32_t>(4 + r->extra.size()));
  be::store32(h + 20, kMetaId);
  queue(r, h, sizeof h, r->extra.data(), r->extra.size());
}

}  // namespace nbd
