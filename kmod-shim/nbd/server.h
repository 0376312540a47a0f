// The NBD server of the daemon: listens on a Unix socket (default) or on TCP (127.0.0.1 unless an
// address is given), and serves each connection on its own thread, which runs that connection's
// requests asynchronously (see Connection). Limits keep a hostile or broken client from exhausting the daemon: at most
// `max_connections` at once (more are closed at accept), a bounded number of requests in flight
// per connection, bounded option and request sizes (see Connection).
#pragma once

#include <atomic>
#include <condition_variable>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kmod-shim/nbd/connection.h"

namespace nbd {

struct ServerOptions {
  ExportOptions exp;
  unsigned max_connections = 64;
  uint64_t memory_budget = 1ull << 30;  // payload bytes held by all connections at once
};

class Server {
 public:
  Server(ploop::Stack& stack, const ServerOptions& opts);
  ~Server();  // stops and waits for every connection
  // Binds and listens. Throws ploop::Error(kSys) on failure.
  void listen_unix(const std::string& path);
  void listen_tcp(const std::string& addr, uint16_t port);
  uint16_t tcp_port() const { return port_; }
  // Accepts connections until stop() or request_stop(); then shuts the live connections down.
  void run();
  void stop();
  // Only sets the flag run() polls (every 200 ms): safe in a signal handler, unlike stop().
  void request_stop() { stop_ = true; }
  // Serves one already connected socket on the calling thread (tests, socket pairs).
  void serve_fd(int fd);
  Stats& stats() { return stats_; }
  unsigned connections() const { return active_; }

 private:
  ploop::Stack& stack_;
  ServerOptions opts_;
  Stats stats_;
  MemoryBudget budget_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::string unix_path_;
  std::atomic<bool> stop_{false};
  std::atomic<unsigned> active_{0};
  std::mutex mu_;
  std::list<Connection*> live_;
  std::condition_variable done_cv_;
};

}  // namespace nbd
