#include "fsutil/fsutil.h"

#include <blkid/blkid.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "ploop/error.h"
#include "ploop/le_codec.h"

namespace fsutil {

int run(const std::vector<std::string>& argv, std::string* output) {
  int pipefd[2] = {-1, -1};
  if (output && ::pipe2(pipefd, O_CLOEXEC) < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "pipe failed", argv[0]);
  pid_t pid = ::fork();
  if (pid < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "fork failed", argv[0]);
  if (pid == 0) {
    ::dup2(output ? pipefd[1] : STDERR_FILENO, STDOUT_FILENO);
    if (output) ::dup2(pipefd[1], STDERR_FILENO);
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    _exit(127);
  }
  if (output) {
    ::close(pipefd[1]);
    char buf[4096];
    ssize_t n;
    while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) output->append(buf, static_cast<size_t>(n));
    ::close(pipefd[0]);
  }
  int status;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    throw ploop::Error(ploop::Exit::kSys, argv[0] + ": could not be run (is it installed?)");
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void make_ext4(const std::string& device, const std::string& label) {
  // 4 KiB blocks whatever the disk size, as OpenVZ ploop makes them (mke2fs would pick 1 KiB for
  // small disks).
  std::vector<std::string> argv{"mkfs.ext4", "-q", "-F", "-b", "4096"};
  if (!label.empty()) argv.insert(argv.end(), {"-L", label});
  argv.push_back(device);
  std::string out;
  if (int rc = run(argv, &out); rc != 0) {
    while (!out.empty() && out.back() == '\n') out.pop_back();
    throw ploop::Error(ploop::Exit::kMkfs, "mkfs.ext4 " + device + " failed (exit " + std::to_string(rc) + "): " + out);
  }
}

FsInfo probe(const std::vector<uint8_t>& head) {
  FsInfo info;
  int fd = ::memfd_create("ploop-probe", MFD_CLOEXEC);
  if (fd < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "memfd_create failed", "probe");
  if (::write(fd, head.data(), head.size()) != static_cast<ssize_t>(head.size())) {
    ::close(fd);
    ploop::throw_errno(ploop::Exit::kSys, errno, "write failed", "probe");
  }
  blkid_probe pr = blkid_new_probe();
  if (pr && blkid_probe_set_device(pr, fd, 0, static_cast<blkid_loff_t>(head.size())) == 0) {
    blkid_probe_enable_superblocks(pr, 1);
    blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_LABEL);
    if (blkid_do_safeprobe(pr) == 0) {
      const char* v;
      if (blkid_probe_lookup_value(pr, "TYPE", &v, nullptr) == 0) info.type = v;
      if (blkid_probe_lookup_value(pr, "UUID", &v, nullptr) == 0) info.uuid = v;
      if (blkid_probe_lookup_value(pr, "LABEL", &v, nullptr) == 0) info.label = v;
    }
  }
  if (pr) blkid_free_probe(pr);
  ::close(fd);
  if ((info.type == "ext2" || info.type == "ext3" || info.type == "ext4") && head.size() >= 2048) {
    // Sizes from the ext2/3/4 superblock at byte 1024 (all fields little-endian).
    const uint8_t* sb = head.data() + 1024;
    uint32_t log = ploop::le::load32(sb + 24);
    bool is64 = ploop::le::load32(sb + 96) & 0x80;  // INCOMPAT_64BIT
    if (log <= 6) {
      info.block_size = uint64_t{1024} << log;
      info.blocks = ploop::le::load32(sb + 4) | (is64 ? uint64_t{ploop::le::load32(sb + 0x150)} << 32 : 0);
      info.free_blocks = ploop::le::load32(sb + 12) | (is64 ? uint64_t{ploop::le::load32(sb + 0x158)} << 32 : 0);
    }
  }
  return info;
}

void mount_fs(const std::string& device, const std::string& dir, const std::string& type, bool read_only,
              const std::string& options) {
  unsigned long flags = read_only ? MS_RDONLY : 0;
  if (::mount(device.c_str(), dir.c_str(), type.c_str(), flags, options.empty() ? nullptr : options.c_str()) < 0) {
    ploop::throw_errno(ploop::Exit::kMount, errno, "cannot mount " + device + " (" + type + ") on", dir);
  }
}

void umount_fs(const std::string& dir, bool lazy) {
  if (::umount2(dir.c_str(), lazy ? MNT_DETACH : 0) < 0) {
    ploop::throw_errno(ploop::Exit::kUmount, errno, "cannot unmount", dir);
  }
}

bool is_mountpoint(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::string id, parent, devno, root, mnt;
    ss >> id >> parent >> devno >> root >> mnt;
    if (mnt == dir) return true;
  }
  return false;
}

static void freeze_ioctl(const std::string& dir, unsigned long req, const char* what) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) ploop::throw_errno(ploop::Exit::kSys, errno, "cannot open", dir);
  int rc = ::ioctl(fd, req, 0);
  int err = errno;
  ::close(fd);
  if (rc < 0) ploop::throw_errno(ploop::Exit::kSys, err, what, dir);
}

void freeze(const std::string& dir) { freeze_ioctl(dir, FIFREEZE, "cannot freeze"); }
void thaw(const std::string& dir) { freeze_ioctl(dir, FITHAW, "cannot thaw"); }

}  // namespace fsutil
