// The daemon that takes the place of ploop's kernel module for one mounted disk: it owns the open
// delta stack, serves it through a front end, and answers commands on a root-only control
// socket: "status" (a JSON line: size, chain, front end, device, request counts),
// "flush", "stop". It stops cleanly on "stop" or SIGTERM: front end down, stack flushed and
// closed, in-use flag cleared.
//
// Front ends: "ublk" (the daemon creates /dev/ublkbN itself; with recover_id it reattaches to the
// device a dead daemon left, see ublk_device.h), "nbd" (it attaches a free /dev/nbdN), "fuse" (it
// exports <dir>/fuse/disk, on which `ploop mount` puts a loop device). Stopping removes the device
// it created (STOP_DEV + DEL_DEV, or NBD disconnect).
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
  std::string front = "fuse";  // "ublk", "nbd" or "fuse"
  int recover_id = -1;         // ublk: reattach to this device id instead of creating one
};

// Runs in the forked daemon process. Writes "ready <pid> <device>\n" (ublk, nbd) or "ready <pid>\n"
// (fuse) to `ready_fd` once the front end serves, or "error: <message>\n" and exits non-zero.
// Never returns.
[[noreturn]] void run_daemon(const DaemonConfig& cfg, int ready_fd);

// Sends one command on a daemon's control socket and returns its one-line answer.
// Throws ploop::Error(kSys) if the daemon does not answer.
std::string control(const std::string& socket, const std::string& command);

}  // namespace shim
