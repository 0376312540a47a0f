#include "kmod-shim/daemon/daemon.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "kmod-shim/daemon/front_end.h"
#include "ploop/check.h"
#include "ploop/descriptor.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/paths.h"
#include "ploop/session.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace shim {
namespace {

std::atomic<bool> g_stop{false};
void on_term(int) { g_stop = true; }

void log(const char* fmt, const std::string& what) {
  auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char ts[32];
  std::strftime(ts, sizeof ts, "%F %T", std::localtime(&now));
  std::fprintf(stderr, "%s ", ts);
  std::fprintf(stderr, fmt, what.c_str());
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

void tell(int fd, const std::string& line) {
  std::string l = line + "\n";
  if (::write(fd, l.data(), l.size()) < 0) {
  }
}

int listen_control(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (fd < 0 || path.size() >= sizeof sa.sun_path) throw ploop::Error(ploop::Exit::kSys, path + ": cannot create control socket");
  std::memcpy(sa.sun_path, path.c_str(), path.size());
  ::unlink(path.c_str());
  mode_t old = ::umask(077);  // root only
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  ::umask(old);
  if (rc < 0 || ::listen(fd, 8) < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "cannot listen", path);
  return fd;
}

}  // namespace

void run_daemon(const DaemonConfig& cfg, int ready_fd) {
  ::setsid();
  struct sigaction sa {};
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int code = 0;
  try {
    if (::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
      log("PR_SET_IO_FLUSHER not granted (%s); continuing without it", std::strerror(errno));
    }
    auto storage = ploop::make_posix_storage(/*direct=*/true, /*uring=*/true);
    // An image left in use by a daemon that died is checked and repaired before it is served.
    ploop::Descriptor d = ploop::Descriptor::load(*storage, cfg.dd);
    std::string top = ploop::join_path(ploop::dir_of(cfg.dd), d.image(d.top_guid)->file);
    auto plain = ploop::make_posix_storage(false);
    if (!cfg.read_only) {
      ploop::CheckReport pre = ploop::check_delta(*plain, top, {});
      if (pre.in_use_left) {
        log("%s was not closed cleanly: checking and repairing it", top);
        ploop::CheckReport r = ploop::check_delta(*plain, top, {true});
        if (!r.ok()) throw ploop::Error(ploop::Exit::kFormat, top + ": damaged; run 'ploop check' on it");
      }
    }
    if (!cfg.read_only) ploop::open_session(*plain, cfg.dd);  // finishes an interrupted merge or resize
    auto stack = ploop::open_disk(*storage, cfg.dd, cfg.read_only ? ploop::OpenMode::kReadOnly : ploop::OpenMode::kReadWrite);
    if (cfg.read_only) ploop::hold_shared_locks(*storage, *stack);
    std::unique_ptr<FrontEnd> front = FrontEnd::make(cfg.front, *stack, cfg.read_only, cfg.dir + "/fuse", cfg.recover_id);
    std::string served = front->start();
    const std::string device = cfg.front == "fuse" ? "" : served;
    int ctl;
    try {
      ctl = listen_control(cfg.dir + "/ctl.sock");
    } catch (...) {
      front->stop();
      throw;
    }
    log("serving %s", cfg.dd + " through " + cfg.front + (device.empty() ? "" : " as " + device) +
                          (cfg.recover_id >= 0 ? " (reattached to the device a dead daemon left)" : ""));
    tell(ready_fd, "ready " + std::to_string(::getpid()) + (device.empty() ? "" : " " + device));
    ::close(ready_fd);
    ready_fd = -1;
    auto started = std::chrono::steady_clock::now();
    while (!g_stop) {
      pollfd p{ctl, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      int c = ::accept4(ctl, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      timeval tv{5, 0};
      setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char buf[64] = {};
      ssize_t n = ::recv(c, buf, sizeof buf - 1, 0);
      std::string cmd(buf, n > 0 ? static_cast<size_t>(n) : 0);
      while (!cmd.empty() && (cmd.back() == '\n' || cmd.back() == '\r')) cmd.pop_back();
      std::string answer;
      try {
        if (cmd == "status") {
          nlohmann::json chain = nlohmann::json::array();
          for (size_t i = 0; i < stack->depth(); ++i) chain.push_back(stack->delta(i).path());
          nlohmann::json ops = nlohmann::json::object();
          const ploop::StackStats& st = stack->stats();
          for (int i = 0; i < ploop::StackStats::kOps; ++i) {
            uint64_t cnt = st.count[i];
            double avg_us = cnt ? static_cast<double>(st.nanos[i].load()) / static_cast<double>(cnt) / 1000.0 : 0.0;
            ops[ploop::StackStats::kNames[i]] = {{"count", cnt}, {"bytes", st.bytes[i].load()}, {"avg_latency_us", avg_us}};
          }
          answer = nlohmann::json{{"size", stack->size()},
                                  {"ops", ops},
                                  {"cluster_size", stack->cluster_bytes()},
                                  {"chain", chain},
                                  {"front", cfg.front},
                                  {"device", device},
                                  {"read_only", cfg.read_only},
                                  {"pid", ::getpid()},
                                  {"uptime_s", std::chrono::duration_cast<std::chrono::seconds>(
                                                   std::chrono::steady_clock::now() - started).count()}}
                       .dump();
        } else if (cmd == "flush") {
          stack->flush();
          answer = "ok";
        } else if (cmd == "stop") {
          g_stop = true;
          answer = "ok";
        } else {
          answer = "error: unknown command '" + cmd + "' (status, flush, stop)";
        }
      } catch (const std::exception& e) {
        answer = std::string("error: ") + e.what();
      }
      answer += "\n";
      ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
      ::close(c);
    }
    log("stopping %s", cfg.dd);
    ::close(ctl);
    ::unlink((cfg.dir + "/ctl.sock").c_str());
    front->stop();
    stack->close();
    log("stopped cleanly: %s", cfg.dd);
  } catch (const std::exception& e) {
    log("error: %s", e.what());
    if (ready_fd >= 0) tell(ready_fd, std::string("error: ") + e.what());
    code = 1;
  }
  std::fflush(stderr);
  _exit(code);
}

std::string control(const std::string& socket, const std::string& command) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, socket.c_str(), sizeof sa.sun_path - 1);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    ploop::throw_errno(ploop::Exit::kSys, err, "the daemon does not answer on", socket);
  }
  timeval tv{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string line = command + "\n", out;
  ::send(fd, line.data(), line.size(), MSG_NOSIGNAL);
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace shim
