#include "kmod-shim/nbd/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ploop/error.h"

namespace nbd {

Server::Server(ploop::Stack& stack, const ServerOptions& opts)
    : stack_(stack), opts_(opts), budget_(opts.memory_budget) {}

Server::~Server() {
  stop();
  {
    std::unique_lock lk(mu_);
    done_cv_.wait(lk, [&] { return active_ == 0; });  // connection threads are detached
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (!unix_path_.empty()) ::unlink(unix_path_.c_str());
}

void Server::listen_unix(const std::string& path) {
  sockaddr_un sa{};
  if (path.size() >= sizeof sa.sun_path) throw ploop::Error(ploop::Exit::kParam, path + ": socket path too long");
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "socket failed", path);
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.c_str(), path.size());
  ::unlink(path.c_str());
  mode_t old = ::umask(077);  // the socket is for root only
  int rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  ::umask(old);
  if (rc < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "cannot bind", path);
  if (::listen(listen_fd_, 64) < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "cannot listen", path);
  unix_path_ = path;
}

void Server::listen_tcp(const std::string& addr, uint16_t port) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "socket failed", addr);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) {
    throw ploop::Error(ploop::Exit::kParam, "'" + addr + "' is not an IPv4 address");
  }
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
    ploop::throw_errno(ploop::Exit::kSys, errno, "cannot bind", addr + ":" + std::to_string(port));
  }
  if (::listen(listen_fd_, 64) < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "cannot listen", addr);
  socklen_t len = sizeof sa;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len);
  port_ = ntohs(sa.sin_port);
}

void Server::serve_fd(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on Unix sockets
  Connection c(fd, stack_, opts_.exp, stats_, budget_);
  {
    std::lock_guard lk(mu_);
    if (stop_) return;
    live_.push_back(&c);
  }
  c.serve();
  std::lock_guard lk(mu_);
  live_.remove(&c);
}

void Server::run() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, 200);
    if (rc <= 0) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    if (active_ >= opts_.max_connections) {
      ::close(fd);  // over the limit: refuse at once, keep serving the others
      continue;
    }
    ++active_;
    std::thread([this, fd] {
      serve_fd(fd);
      std::lock_guard lk(mu_);
      --active_;
      done_cv_.notify_all();
    }).detach();
  }
  stop();  // after a request_stop(), the live connections go down here, outside the handler
}

void Server::stop() {
  stop_ = true;
  std::lock_guard lk(mu_);
  for (Connection* c : live_) c->shutdown();
}

}  // namespace nbd
