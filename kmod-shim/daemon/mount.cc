#include "kmod-shim/daemon/mount.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "fsutil/fsutil.h"
#include "kmod-shim/daemon/daemon.h"
#include "kmod-shim/daemon/front_end.h"
#include "kmod-shim/loop/loop_device.h"
#include "kmod-shim/nbd/kernel_nbd.h"
#include "kmod-shim/ublk/ublk_device.h"
#include "ploop/error.h"

namespace shim {
namespace {

namespace fs = std::filesystem;

std::string real(const std::string& p) {
  std::error_code ec;
  auto r = fs::canonical(p, ec);
  if (ec) throw ploop::Error(ploop::Exit::kOpen, p + ": " + ec.message());
  return r.string();
}

bool wait_gone(int pid, std::chrono::milliseconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (::kill(pid, 0) == 0) {
    ::waitpid(pid, nullptr, WNOHANG);  // reap it if it is our child
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// Whether `device` is still the loop device over `file`: after a daemon died, its old /dev/loopN
// may have been detached and handed to another disk, which must be left alone.
bool loop_backs(const std::string& device, const std::string& file) {
  std::string name = device.substr(device.rfind('/') + 1);
  std::ifstream in("/sys/block/" + name + "/loop/backing_file");
  std::string backing;
  std::getline(in, backing);
  if (backing.size() > 10 && backing.compare(backing.size() - 10, 10, " (deleted)") == 0) backing.resize(backing.size() - 10);
  return !backing.empty() && backing == file;
}

// The index N of /dev/nbdN or /dev/ublkbN, -1 if the name does not end in digits.
int trailing_number(const std::string& device) {
  size_t i = device.size();
  while (i > 0 && device[i - 1] >= '0' && device[i - 1] <= '9') --i;
  return i == device.size() ? -1 : std::atoi(device.c_str() + i);
}

// Whether /dev/nbdN is still the dead daemon's: a live process other than it that configured the
// device (/sys/block/nbdN/pid) means the index was handed to another disk.
bool nbd_is_ours(int index, int dead_pid) {
  std::ifstream in("/sys/block/nbd" + std::to_string(index) + "/pid");
  int pid = 0;
  if (!(in >> pid) || pid <= 0 || pid == dead_pid) return true;
  return ::kill(pid, 0) != 0 && errno != EPERM;
}

// Removes the device a dead daemon left behind, so that waiting and future I/O fail instead of
// hanging (ublk with USER_RECOVERY queues I/O until a server returns; nbd waits for a reconnect).
void remove_dead_device(const MountState& s) {
  if (s.dev_id < 0) return;
  if (s.front == "ublk") UblkDevice::remove(s.dev_id);
  if (s.front == "nbd" && nbd_is_ours(s.dev_id, s.pid)) KernelNbd::disconnect(s.dev_id);
}

// Best-effort teardown used both by umount and by a failed mount.
void teardown(MountState& s, bool lazy_fs) {
  const bool alive = s.alive();
  // A dead daemon's ublk or nbd device goes first: unmounting a file system whose device queues
  // I/O forever would hang, while a removed device fails that I/O at once.
  if (!alive) remove_dead_device(s);
  if (!s.mountpoint.empty() && fsutil::is_mountpoint(s.mountpoint)) {
    try {
      fsutil::umount_fs(s.mountpoint, false);
    } catch (const ploop::Error&) {
      if (!lazy_fs) throw;
      fsutil::umount_fs(s.mountpoint, true);
    }
  }
  if (s.front == "fuse" && !s.device.empty() && loop_backs(s.device, s.fuse_dir() + "/disk")) {
    try {
      detach_loop(s.device);
    } catch (const ploop::Error&) {
    }
  }
  if (alive && s.pid > 0) {  // the daemon removes its ublk or nbd device as it stops
    try {
      control(s.socket, "stop");
    } catch (const ploop::Error&) {
      ::kill(s.pid, SIGTERM);
    }
    if (!wait_gone(s.pid, std::chrono::seconds(60))) {
      throw ploop::Error(ploop::Exit::kBusy, "the daemon (PID " + std::to_string(s.pid) + ") did not stop; see " + s.log);
    }
  }
  if (s.front == "fuse" && fsutil::is_mountpoint(s.fuse_dir())) {  // the daemon died without unmounting its export
    try {
      fsutil::umount_fs(s.fuse_dir(), true);
    } catch (const ploop::Error&) {
    }
  }
  std::error_code ec;
  fs::remove(s.dir + "/state.json", ec);
  fs::remove(s.dir + "/ctl.sock", ec);
  fs::remove(s.fuse_dir(), ec);
}

}  // namespace

MountState mount_disk(const MountOptions& o) {
  MountState s;
  s.dd = real(o.dd);
  s.dir = state_dir_for(s.dd);
  s.read_only = o.read_only;
  std::string mp;
  if (!o.mountpoint.empty()) {
    mp = real(o.mountpoint);
    if (!fs::is_directory(mp)) throw ploop::Error(ploop::Exit::kParam, mp + ": not a directory");
  }
  int recover_id = -1;
  if (auto old = load_state(s.dir)) {
    if (old->alive()) {
      throw ploop::Error(ploop::Exit::kBusy, s.dd + " is already mounted" +
                                                 (old->mountpoint.empty() ? "" : " at " + old->mountpoint) + " (device " +
                                                 old->device + ", daemon PID " + std::to_string(old->pid) + ")");
    }
    // A dead daemon's recoverable ublk device still carries the file system and holds its I/O:
    // a new daemon reattaches to it (USER_RECOVERY) instead of tearing it down. The daemon does
    // not create recoverable devices (kmod-shim/ublk/ublk_device.h says why), so this only serves
    // a device some other build left.
    if (old->front == "ublk" && (o.device.empty() || o.device == "ublk") && old->read_only == o.read_only &&
        (mp.empty() || mp == old->mountpoint) && UblkDevice::available() && UblkDevice::can_recover(old->dev_id)) {
      recover_id = old->dev_id;
      s.front = "ublk";
      s.mountpoint = old->mountpoint;
    } else {
      teardown(*old, true);  // leftovers of a daemon that died
    }
  }
  if (recover_id < 0) {
    s.front = choose_front(o.device);
    s.mountpoint = mp;
    if (!mp.empty() && fsutil::is_mountpoint(mp)) throw ploop::Error(ploop::Exit::kBusy, mp + ": something is already mounted there");
  }
  fs::create_directories(s.front == "fuse" ? s.fuse_dir() : s.dir);
  ::chmod(s.dir.c_str(), 0700);
  s.log = s.dir + "/daemon.log";
  s.socket = s.dir + "/ctl.sock";

  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "pipe failed", s.dir);
  pid_t pid = ::fork();
  if (pid < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "fork failed", s.dir);
  if (pid == 0) {
    ::close(pipefd[0]);
    // Detach: a new session, no terminal, output to the log.
    if (::fork() > 0) _exit(0);  // the grandchild is the daemon; the child exits so nobody must reap
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    int logfd = ::open(s.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    ::dup2(null, STDIN_FILENO);
    ::dup2(logfd >= 0 ? logfd : null, STDOUT_FILENO);
    ::dup2(logfd >= 0 ? logfd : null, STDERR_FILENO);
    if (::chdir("/") != 0) {
    }
    DaemonConfig cfg{s.dd, s.dir, s.read_only, s.front, recover_id};
    run_daemon(cfg, pipefd[1]);
  }
  ::close(pipefd[1]);
  ::waitpid(pid, nullptr, 0);  // the intermediate child exits at once
  std::string answer;
  char buf[512];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) {
    answer.append(buf, static_cast<size_t>(n));
    if (answer.find('\n') != std::string::npos) break;
  }
  ::close(pipefd[0]);
  while (!answer.empty() && answer.back() == '\n') answer.pop_back();
  // The daemon answers "ready <pid>" (fuse) or "ready <pid> <device>" (ublk, nbd) once it serves.
  if (answer.rfind("ready ", 0) != 0) {
    std::error_code ec;
    if (s.front == "fuse") fs::remove_all(s.fuse_dir(), ec);
    throw ploop::Error(ploop::Exit::kDevice, "the daemon did not start: " +
                                                 (answer.rfind("error: ", 0) == 0 ? answer.substr(7) : "see " + s.log));
  }
  {
    std::istringstream in(answer.substr(6));
    in >> s.pid >> s.device;
  }
  s.start_time = process_start_time(s.pid);
  try {
    if (s.front == "fuse") {
      LoopDevice dev = attach_loop(s.fuse_dir() + "/disk", s.read_only, true);
      s.device = dev.path;
      s.direct_io = dev.direct_io;
    } else {
      if (s.device.empty()) throw ploop::Error(ploop::Exit::kDevice, "the daemon did not name its device; see " + s.log);
      s.dev_id = trailing_number(s.device);
    }
    save_state(s);
    const bool still_mounted = recover_id >= 0 && !s.mountpoint.empty() && fsutil::is_mountpoint(s.mountpoint);
    if (!s.mountpoint.empty() && !still_mounted) {
      std::vector<uint8_t> head(1 << 20);
      {
        int fd = ::open(s.device.c_str(), O_RDONLY | O_CLOEXEC);
        ssize_t got = fd >= 0 ? ::pread(fd, head.data(), head.size(), 0) : -1;
        if (fd >= 0) ::close(fd);
        if (got < 0) ploop::throw_errno(ploop::Exit::kRead, errno, "cannot read", s.device);
      }
      fsutil::FsInfo fi = fsutil::probe(head);
      if (fi.type.empty()) {
        throw ploop::Error(ploop::Exit::kMount, s.dd + ": the disk holds no file system (make one with 'ploop init -t ext4')");
      }
      fsutil::mount_fs(s.device, s.mountpoint, fi.type, s.read_only);
    }
    save_state(s);
  } catch (...) {
    try {
      teardown(s, true);
    } catch (...) {
    }
    throw;
  }
  return s;
}

MountState umount_disk(const std::string& what) {
  // The descriptor may be gone already (moved or deleted while mounted): fall back to the path
  // as written, made absolute, to find what is mounted.
  std::error_code ec;
  auto canon = fs::canonical(what, ec);
  std::string key = ec ? fs::absolute(what).lexically_normal().string() : canon.string();
  std::optional<MountState> found = load_state(state_dir_for(key));
  if (!found) {
    for (auto& s : list_states()) {
      if (s.mountpoint == key || s.device == key) found = s;
    }
  }
  if (!found) throw ploop::Error(ploop::Exit::kNotMounted, what + ": not mounted");
  // A dead daemon means the device is gone: detach the file system lazily then.
  teardown(*found, !found->alive());
  return *found;
}

void with_block_device(ploop::Stack& stack, const std::function<void(const std::string&)>& fn) {
  // ublk or kernel NBD, served by this process, where the kernel has them.
  for (const char* front : {"ublk", "nbd"}) {
    bool have = std::string(front) == "ublk" ? UblkDevice::available() : KernelNbd::available();
    if (!have) continue;
    std::unique_ptr<FrontEnd> dev = FrontEnd::make(front, stack, false, "", -1, /*recoverable=*/false);
    std::string path;
    try {
      path = dev->start();
    } catch (const ploop::Error& e) {
      std::fprintf(stderr, "ploop: %s front end unavailable (%s); trying the next one\n", front, e.what());
      continue;
    }
    try {
      fn(path);
    } catch (...) {
      dev->stop();
      throw;
    }
    dev->stop();
    return;
  }
  // Else a FUSE file with a loop device on it.
  char tmpl[] = "/tmp/ploop-fuse-XXXXXX";
  if (!::mkdtemp(tmpl)) ploop::throw_errno(ploop::Exit::kSys, errno, "mkdtemp failed", tmpl);
  std::string dir = tmpl;
  {
    std::unique_ptr<FrontEnd> fuse = FrontEnd::make("fuse", stack, false, dir);
    std::string file = fuse->start();
    std::string dev;
    try {
      dev = attach_loop(file, false, true).path;
      fn(dev);
      detach_loop(dev);
    } catch (...) {
      if (!dev.empty()) {
        try {
          detach_loop(dev);
        } catch (...) {
        }
      }
      fuse->stop();
      ::rmdir(dir.c_str());
      throw;
    }
    fuse->stop();
  }
  ::rmdir(dir.c_str());
}

}  // namespace shim
