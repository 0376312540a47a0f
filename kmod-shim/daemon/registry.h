// What is mounted: one directory per disk under /run/ploop/<id>/ (id = a hash of the descriptor's
// real path) holding the FUSE mount point (FUSE front end only), the daemon's control socket, its
// log and state.json (front end, device and its ublk id or nbd index, daemon PID, mount point).
// `ploop list` reads these; `ploop umount` uses them to undo a mount, even after the daemon died.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shim {

struct MountState {
  std::string dd;          // real path of DiskDescriptor.xml
  std::string dir;         // /run/ploop/<id>
  int pid = 0;             // the daemon
  uint64_t start_time = 0; // its start time (/proc/PID/stat field 22), so a recycled PID is not taken for it
  std::string front;       // "ublk", "nbd" or "fuse" (FUSE file + loop device)
  std::string device;      // /dev/ublkbN, /dev/nbdN or /dev/loopN
  int dev_id = -1;         // ublk device id or nbd index (so a dead daemon's device can be removed); -1 for loop
  bool direct_io = false;  // of the loop device
  std::string mountpoint;  // "" if only the device is attached
  bool read_only = false;
  std::string log;         // the daemon's log file
  std::string socket;      // control socket

  bool alive() const;
  std::string fuse_dir() const { return dir + "/fuse"; }
};

// The start time of a process in clock ticks since boot, 0 if there is no such process.
uint64_t process_start_time(int pid);
std::string run_root();  // /run/ploop, or $PLOOP_RUN_DIR
std::string state_dir_for(const std::string& dd_realpath);
void save_state(const MountState& s);
std::optional<MountState> load_state(const std::string& dir);
std::vector<MountState> list_states();

}  // namespace shim
