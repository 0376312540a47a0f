#include "kmod-shim/daemon/mount.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "fsutil/fsutil.h"
#include "kmod-shim/daemon/daemon.h"
#include "kmod-shim/fuse/fuse_export.h"
#include "kmod-shim/loop/loop_device.h"
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

std::string pick_front(const std::string& asked) {
  if (asked == "ublk" || asked == "nbd") {
    throw ploop::Error(ploop::Exit::kParam, "--device " + asked + ": not available in this build yet (use fuse)");
  }
  if (!asked.empty() && asked != "fuse") throw ploop::Error(ploop::Exit::kParam, "--device must be fuse, nbd or ublk");
  if (::access("/dev/fuse", R_OK | W_OK) != 0) throw ploop::Error(ploop::Exit::kSys, "/dev/fuse is not available: cannot serve the disk");
  return "fuse";
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

// Best-effort teardown used both by umount and by a failed mount.
void teardown(MountState& s, bool lazy_fs) {
  if (!s.mountpoint.empty() && fsutil::is_mountpoint(s.mountpoint)) {
    try {
      fsutil::umount_fs(s.mountpoint, false);
    } catch (const ploop::Error&) {
      if (!lazy_fs) throw;
      fsutil::umount_fs(s.mountpoint, true);
    }
  }
  if (!s.device.empty() && loop_backs(s.device, s.fuse_dir() + "/disk")) {
    try {
      detach_loop(s.device);
    } catch (const ploop::Error&) {
    }
  }
  if (s.alive()) {
    try {
      control(s.socket, "stop");
    } catch (const ploop::Error&) {
      ::kill(s.pid, SIGTERM);
    }
    if (!wait_gone(s.pid, std::chrono::seconds(60))) {
      throw ploop::Error(ploop::Exit::kBusy, "the daemon (PID " + std::to_string(s.pid) + ") did not stop; see " + s.log);
    }
  }
  if (fsutil::is_mountpoint(s.fuse_dir())) {  // the daemon died without unmounting its export
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
  s.front = pick_front(o.device);
  if (!o.mountpoint.empty()) {
    s.mountpoint = real(o.mountpoint);
    if (!fs::is_directory(s.mountpoint)) throw ploop::Error(ploop::Exit::kParam, s.mountpoint + ": not a directory");
    if (fsutil::is_mountpoint(s.mountpoint)) throw ploop::Error(ploop::Exit::kBusy, s.mountpoint + ": something is already mounted there");
  }
  if (auto old = load_state(s.dir)) {
    if (old->alive()) {
      throw ploop::Error(ploop::Exit::kBusy, s.dd + " is already mounted" +
                                                 (old->mountpoint.empty() ? "" : " at " + old->mountpoint) + " (device " +
                                                 old->device + ", daemon PID " + std::to_string(old->pid) + ")");
    }
    teardown(*old, true);  // leftovers of a daemon that died
  }
  fs::create_directories(s.fuse_dir());
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
    run_daemon({s.dd, s.dir, s.read_only}, pipefd[1]);
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
  // The daemon answers "ready <pid>" once its front end serves.
  if (answer.rfind("ready ", 0) != 0) {
    std::error_code ec;
    fs::remove_all(s.fuse_dir(), ec);
    throw ploop::Error(ploop::Exit::kDevice, "the daemon did not start: " +
                                                 (answer.rfind("error: ", 0) == 0 ? answer.substr(7) : "see " + s.log));
  }
  s.pid = std::atoi(answer.c_str() + 6);
  s.start_time = process_start_time(s.pid);
  try {
    LoopDevice dev = attach_loop(s.fuse_dir() + "/disk", s.read_only, true);
    s.device = dev.path;
    s.direct_io = dev.direct_io;
    save_state(s);
    if (!s.mountpoint.empty()) {
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
  char tmpl[] = "/tmp/ploop-fuse-XXXXXX";
  if (!::mkdtemp(tmpl)) ploop::throw_errno(ploop::Exit::kSys, errno, "mkdtemp failed", tmpl);
  std::string dir = tmpl;
  {
    FuseExport fuse(stack, dir, false);
    fuse.start();
    std::string dev;
    try {
      dev = attach_loop(fuse.file(), false, true).path;
      fn(dev);
      detach_loop(dev);
    } catch (...) {
      if (!dev.empty()) {
        try {
          detach_loop(dev);
        } catch (...) {
        }
      }
      fuse.stop();
      ::rmdir(dir.c_str());
      throw;
    }
    fuse.stop();
  }
  ::rmdir(dir.c_str());
}

}  // namespace shim
