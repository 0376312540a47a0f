// One NBD client connection: the fixed-newstyle handshake, then the transmission phase, served
// from a delta stack (or the transmission phase alone, for the kernel's client). Everything the
// client sends is validated before use: magic numbers, option and request lengths (bounded, so a
// hostile client cannot make the server allocate without limit), offsets against the export size
// (the stack's size at the time of the request), command flags. A protocol violation that
// leaves the stream unparseable ends the connection; anything else gets the protocol's error
// reply. One connection never touches another's state.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>

#include "kmod-shim/worker_pool.h"
#include "ploop/aligned_bytes.h"
#include "ploop/stack.h"

namespace nbd {

struct ExportOptions {
  std::string name;                    // the export's name; "" (the default export) also matches
  bool read_only = false;
  uint32_t max_payload = 32u << 20;    // largest READ/WRITE accepted
  // Requests of one connection queued or running at once: below the server's worker count, so a
  // client that stops reading its replies cannot hold every worker (each stalls at most for the
  // send timeout, 5 s, before that connection is cut).
  unsigned max_in_flight = 8;
};

// Bytes of request payload (write data, read buffers) that all connections of a server may hold
// at once; a connection waits for room before it reads or allocates more, so no mix of clients
// can make the server allocate without bound.
class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t bytes) : left_(bytes) {}
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
  Connection(int fd, ploop::Stack& stack, const ExportOptions& opts, shim::WorkerPool& pool, Stats& stats,
             MemoryBudget& budget, Phase start = Phase::kHandshake);
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
  void transmission();
  void execute(uint16_t type, uint16_t flags, uint64_t cookie, uint64_t offset, uint32_t len,
               ploop::PageBuffer payload);
  void reply_simple(uint64_t cookie, uint32_t error, const uint8_t* data, size_t len);
  void reply_read(uint64_t cookie, uint64_t offset, const uint8_t* data, size_t len);
  void reply_error(uint64_t cookie, uint32_t error);
  void reply_block_status(uint64_t cookie, const std::vector<uint8_t>& descriptors);
  bool send_all(const void* a, size_t alen, const void* b = nullptr, size_t blen = 0);
  uint16_t transmission_flags() const;

  int fd_;
  ploop::Stack& stack_;
  ExportOptions opts_;
  shim::WorkerPool& pool_;
  Stats& stats_;
  MemoryBudget& budget_;
  Phase start_;
  bool structured_ = false;
  bool base_allocation_ = false;  // meta context selected (id 1)
  std::mutex send_mu_;
  std::mutex flight_mu_;
  std::condition_variable flight_cv_;
  unsigned in_flight_ = 0;
  std::atomic<bool> broken_{false};
};

}  // namespace nbd
