// The daemon that takes the place of ploop's kernel module for one mounted disk: it owns the open
// delta stack, serves it through a front end (the FUSE export today), and answers commands on a
// root-only control socket: "status" (a JSON line: size, chain, front end, request counts),
// "flush", "stop". It stops cleanly on "stop" or SIGTERM: front end down, stack flushed and
// closed, in-use flag cleared.
//
// Hazards it keeps in mind (../shared/research/peers.md): it asks for PR_SET_IO_FLUSHER so that
// memory reclaim inside it does not wait on its own device (this needs CAP_SYS_RESOURCE; without
// it the daemon logs that and goes on), and it reads and writes the image with O_DIRECT so that
// serving a write never needs page cache for the image files.
#pragma once

#include <string>

#include "kmod-shim/daemon/registry.h"

namespace shim {

struct DaemonConfig {
  std::string dd;   // DiskDescriptor.xml (real path)
  std::string dir;  // its state directory
  bool read_only = false;
};

// Runs in the forked daemon process. Writes "ready <pid>\n" to `ready_fd` once the front end serves, or
// "error: <message>\n" and exits non-zero. Never returns.
[[noreturn]] void run_daemon(const DaemonConfig& cfg, int ready_fd);

// Sends one command on a daemon's control socket and returns its one-line answer.
// Throws ploop::Error(kSys) if the daemon does not answer.
std::string control(const std::string& socket, const std::string& command);

}  // namespace shim
