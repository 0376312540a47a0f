// One NBD client connection: the fixed-newstyle handshake, then the transmission phase, served
// from a delta stack (or the transmission phase alone, for the kernel's client). Everything the
// client sends is validated before use: magic numbers, option and request lengths (bounded, so a
// hostile client cannot make the server allocate without limit), offsets against the export size
// (the stack's size at the time of the request), command flags. A protocol violation that
// leaves the stream unparseable ends the connection; anything else gets the protocol's error
// reply. One connection never touches another's state.
//
// Threading: one thread per connection does everything for it. It reads requests without
// blocking, submits them to its own asynchronous engine (ploop::UringEngine: reads and
// overwrites go to io_uring from this thread, allocating writes and other blocking work to the
// engine's worker), and queues each reply when its completion arrives; queued replies are sent
// in order, several per sendmsg, without blocking. One io_uring wait covers the I/O, the socket's
// input and its room for replies. A client that stops reading its replies, or stops inside a
// write's payload, stalls only its own connection, and is cut after 5 s without progress (the
// memory it held goes back to the others).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "kmod-shim/nbd/buffer_pool.h"
#include "ploop/aligned_bytes.h"
#include "ploop/stack.h"
#include "ploop/uring_engine.h"

namespace nbd {

struct ExportOptions {
  std::string name;                    // the export's name; "" (the default export) also matches
  bool read_only = false;
  uint32_t max_payload = 32u << 20;    // largest READ/WRITE accepted
  // Requests of one connection in flight at once (qemu-nbd allows 16 too); more wait in the socket.
  unsigned max_in_flight = 16;
  // Payload bytes (write data, read buffers) one connection may hold at once; a single request of
  // up to max_payload always goes. Keeps one client that stops reading its replies small.
  uint64_t max_bytes_in_flight = 64u << 20;
  // A client that makes no progress for this long while the server waits on it, reading its
  // replies or sending the rest of a write's payload, is disconnected (an idle connection, with
  // nothing owed either way, may stay as long as it likes).
  unsigned stall_ms = 5000;
};

// Bytes of request payload (write data, read buffers) that all connections of a server may hold
// at once; a connection waits for room before it reads or allocates more, so no mix of clients
// can make the server allocate without bound.
class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t bytes) : left_(bytes) {}
  bool try_take(uint64_t n) {
    std::lock_guard lk(mu_);
    if (left_ < n) return false;
    left_ -= n;
    return true;
  }
  void take(uint64_t n) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return left_ >= n; });
    left_ -= n;
  }
  void give(uint64_t n) {
    {
      std::lock_guard lk(mu_);
      left_ += n;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t left_;
};

struct Stats {
  std::atomic<uint64_t> reads{0}, writes{0}, flushes{0}, trims{0}, zeroes{0}, block_status{0}, errors{0};
  std::atomic<uint64_t> bytes_read{0}, bytes_written{0};
};

class Connection {
 public:
  // Where serve() begins. The kernel's NBD client does no handshake: whoever hands it the socket
  // tells it the export's size and flags itself (see KernelNbd), so such a connection starts in
  // transmission, with simple replies and no meta context; requests are validated exactly as
  // after a handshake, and the read-only option holds the same way.
  enum class Phase { kHandshake, kTransmission };

  // Takes ownership of `fd` (a connected stream socket).
  Connection(int fd, ploop::Stack& stack, const ExportOptions& opts, Stats& stats, MemoryBudget& budget,
             Phase start = Phase::kHandshake);
  ~Connection();
  // Runs the handshake (unless started in transmission), then serves requests until the client
  // disconnects, breaks the protocol, or shutdown() is called. Returns when every request in
  // flight has been answered.
  void serve();
  // Makes serve() return soon (from any thread).
  void shutdown();

 private:
  bool handshake();
  bool option_reply(uint32_t opt, uint32_t type, const void* data, uint32_t len);
  bool handle_info_go(uint32_t opt, const std::vector<uint8_t>& data);
  bool handle_meta_context(uint32_t opt, const std::vector<uint8_t>& data);
  struct Request;
  enum class Step { kNext, kNoHeader, kWaitMemory, kEnd };
  void transmission();
  Step receive();
  void start(Request* r);
  void complete(Request* r, int err);
  void finish(Request* r);
  // Replies are queued and sent without blocking (flush_out); the request is finished (its
  // buffers and budget given back) once its reply has left.
  void reply_simple(Request* r, uint32_t error);
  void reply_read(Request* r);
  void reply_error(Request* r, uint32_t error);
  void reply_block_status(Request* r);
  void queue(Request* r, const uint8_t* head, size_t hlen, const uint8_t* data, size_t dlen);
  bool flush_out(bool block);
  bool send_all(const void* a, size_t alen, const void* b = nullptr, size_t blen = 0);
  uint16_t transmission_flags() const;

  int fd_;
  ploop::Stack& stack_;
  ExportOptions opts_;
  Stats& stats_;
  MemoryBudget& budget_;
  Phase start_;
  bool structured_ = false;
  bool base_allocation_ = false;  // meta context selected (id 1)
  ploop::UringEngine* engine_ = nullptr;  // during transmission()
  BufferPool buffers_{16u << 20};         // idle request buffers kept for reuse
  ploop::PageBuffer rx_;                  // received bytes not yet parsed: [rx_begin_, rx_end_)
  size_t rx_begin_ = 0, rx_end_ = 0;
  struct Out {
    uint8_t head[32];
    size_t hlen;
    const uint8_t* data;
    size_t dlen;
    size_t sent;
    Request* r;
  };
  std::deque<Out> out_;           // replies not yet (wholly) sent, in order
  unsigned in_flight_ = 0;        // requests received and not yet answered (reply sent)
  uint64_t bytes_in_flight_ = 0;  // budget held by the requests in flight
  std::atomic<bool> broken_{false};
};

}  // namespace nbd
