// ploop serve [-r] [--socket PATH | --tcp ADDR:PORT] [--name NAME] DiskDescriptor.xml|IMAGE
// Serves the disk over NBD in the foreground until SIGINT/SIGTERM, then flushes and closes the
// image cleanly.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <thread>

#include "kmod-shim/nbd/server.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/session.h"
#include "tools/cli.h"

namespace cli {
namespace {

std::atomic<nbd::Server*> g_server{nullptr};

void on_signal(int) {
  if (nbd::Server* s = g_server.load()) s->request_stop();  // async-signal-safe: an atomic store
}

}  // namespace

void add_serve(CLI::App& app, int& rc) {
  auto* c = app.add_subcommand("serve", "Serve a disk over NBD in the foreground (Ctrl-C stops it cleanly)");
  auto ro = std::make_shared<bool>(false);
  auto sock = std::make_shared<std::string>();
  auto tcp = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>();
  auto disk = std::make_shared<std::string>();
  c->add_flag("-r,--read-only", *ro, "Export read-only");
  auto* s_opt = c->add_option("--socket", *sock, "Unix socket to listen on (default: DISK's directory/nbd.sock)");
  c->add_option("--tcp", *tcp, "Listen on TCP instead: PORT or ADDR:PORT (ADDR defaults to 127.0.0.1)")->excludes(s_opt);
  c->add_option("--name", *name, "Export name (the default export \"\" always matches)");
  c->add_option("DISK", *disk, "DiskDescriptor.xml or image file")->required();
  c->callback([=, &rc] {
    // The listening socket comes first: a bad address must not leave the image opened.
    std::string addr = "127.0.0.1", port;
    if (!tcp->empty()) {
      port = *tcp;
      if (auto colon = tcp->rfind(':'); colon != std::string::npos) {
        addr = tcp->substr(0, colon);
        port = tcp->substr(colon + 1);
      }
      if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
          std::stoul(port) > 65535) {
        throw ploop::Error(ploop::Exit::kParam, "--tcp " + *tcp + ": bad port");
      }
    }
    auto storage = ploop::make_posix_storage(/*direct=*/true, /*uring=*/true);
    if (!*ro && ploop::is_descriptor(*disk)) ploop::open_session(*storage, *disk);  // finish interrupted operations
    auto stack = ploop::open_disk(*storage, *disk, *ro ? ploop::OpenMode::kReadOnly : ploop::OpenMode::kReadWrite);
    if (*ro) ploop::hold_shared_locks(*storage, *stack);
    nbd::ServerOptions o;
    o.exp.name = *name;
    o.exp.read_only = *ro;
    auto owned = std::make_unique<nbd::Server>(*stack, o);
    nbd::Server& server = *owned;
    std::string where;
    try {
      if (!tcp->empty()) {
        server.listen_tcp(addr, static_cast<uint16_t>(std::stoul(port)));
        where = "nbd://" + addr + ":" + std::to_string(server.tcp_port());
      } else {
        std::string path = sock->empty() ? (disk->find('/') == std::string::npos ? std::string(".") : disk->substr(0, disk->rfind('/'))) + "/nbd.sock" : *sock;
        server.listen_unix(path);
        where = "nbd+unix:///" + *name + "?socket=" + path;
      }
    } catch (...) {
      owned.reset();
      stack->close();
      throw;
    }
    g_server = &server;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
    std::printf("serving %s at %s\n", disk->c_str(), where.c_str());
    std::fflush(stdout);
    server.run();
    g_server = nullptr;
    std::fprintf(stderr, "stopping: waiting for connections, flushing, closing the image\n");
    owned.reset();  // waits for every connection to finish its requests
    stack->close();
    rc = 0;
  });
}

}  // namespace cli
