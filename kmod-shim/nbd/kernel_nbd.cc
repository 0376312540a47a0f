#include "kmod-shim/nbd/kernel_nbd.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/nbd-netlink.h>
#include <linux/nbd.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/netlink.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "kmod-shim/nbd/protocol.h"
#include "ploop/error.h"

namespace shim {
namespace {

using ploop::Error;
using ploop::Exit;

// Explicit (the kernel's default, 1024, breaks file systems with smaller blocks) and equal to the
// logical block of loop and ublk, so a file system made through any front end mounts through this one.
constexpr uint64_t kBlockSize = 512;
constexpr unsigned kMaxConnections = 16;
// The kernel's per-request timeout. With several connections a request that times out marks its
// socket dead, and this process never hands the kernel a new one, so the timeout must exceed any
// stall of a healthy daemon (a flush on a busy disk, a snapshot holding the stack). A daemon that
// dies is noticed at once anyway: its sockets close.
constexpr uint64_t kRequestTimeoutS = 120;
constexpr auto kSizeWait = std::chrono::seconds(10);
constexpr int kNetlinkReplyWaitS = 10;

std::string device_path(int index) { return "/dev/nbd" + std::to_string(index); }
std::string sys_path(int index) { return "/sys/block/nbd" + std::to_string(index); }

// 512-byte sectors in /sys/block/nbdN/size, or -1 if the device does not exist.
int64_t sysfs_sectors(int index) {
  std::ifstream f(sys_path(index) + "/size");
  int64_t v = -1;
  if (!(f >> v)) return -1;
  return v;
}

// A generic-netlink socket bound to the "nbd" family, with a bounded wait for each answer.
class NbdNetlink {
 public:
  NbdNetlink() {
    sk_ = nl_socket_alloc();
    if (!sk_) return;
    if (genl_connect(sk_) < 0) return;
    timeval tv{kNetlinkReplyWaitS, 0};
    setsockopt(nl_socket_get_fd(sk_), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    family_ = genl_ctrl_resolve(sk_, NBD_GENL_FAMILY_NAME);
  }
  ~NbdNetlink() {
    if (sk_) nl_socket_free(sk_);
  }
  NbdNetlink(const NbdNetlink&) = delete;
  NbdNetlink& operator=(const NbdNetlink&) = delete;

  // Whether the kernel has the "nbd" family (the nbd module is loaded and new enough).
  bool ok() const { return sk_ && family_ >= 0; }

  // A message for `cmd`, or null if out of memory.
  nl_msg* message(uint8_t cmd) {
    nl_msg* m = nlmsg_alloc();
    if (m && !genlmsg_put(m, NL_AUTO_PORT, NL_AUTO_SEQ, family_, 0, 0, cmd, NBD_GENL_VERSION)) {
      nlmsg_free(m);
      return nullptr;
    }
    return m;
  }

  // Sends `m` (consumed) and waits for the kernel's acknowledgement; the NBD_ATTR_INDEX of a
  // reply, if any, goes to *index. Returns 0 or a negative libnl error.
  int transact(nl_msg* m, int* index = nullptr) {
    nl_socket_modify_cb(sk_, NL_CB_VALID, NL_CB_CUSTOM, &NbdNetlink::on_reply, index);
    return nl_send_sync(sk_, m);
  }

 private:
  static int on_reply(nl_msg* m, void* arg) {
    nlattr* attrs[NBD_ATTR_MAX + 1] = {};
    if (arg && genlmsg_parse(nlmsg_hdr(m), 0, attrs, NBD_ATTR_MAX, nullptr) == 0 && attrs[NBD_ATTR_INDEX]) {
      *static_cast<int*>(arg) = static_cast<int>(nla_get_u32(attrs[NBD_ATTR_INDEX]));
    }
    return NL_OK;
  }

  nl_sock* sk_ = nullptr;
  int family_ = -1;
};

std::string nl_reason(int err) {
  std::string r = nl_geterror(err);
  if (err == -NLE_PERM) r += " (CAP_SYS_ADMIN is needed)";
  return r;
}

// NBD_CMD_DISCONNECT of device `index`; 0 or a negative libnl error.
int netlink_disconnect(NbdNetlink& nl, int index) {
  nl_msg* m = nl.message(NBD_CMD_DISCONNECT);
  if (!m) return -NLE_NOMEM;
  if (nla_put_u32(m, NBD_ATTR_INDEX, static_cast<uint32_t>(index)) < 0) {
    nlmsg_free(m);
    return -NLE_NOMEM;
  }
  return nl.transact(m);
}

// Indices of the nbd devices that exist, in order.
std::vector<int> nbd_indices() {
  std::vector<int> out;
  DIR* d = ::opendir("/sys/block");
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    int n;
    char tail;
    if (std::sscanf(e->d_name, "nbd%d%c", &n, &tail) == 1 && n >= 0) out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

struct KernelNbd::Served {
  std::unique_ptr<nbd::Connection> conn;
  std::thread thread;
};

KernelNbd::KernelNbd(ploop::Stack& stack, KernelNbdOptions o)
    : stack_(stack), opts_(o), budget_(uint64_t{256} << 20) {
  opts_.connections = std::clamp(opts_.connections, 1u, kMaxConnections);
  if (!stack_.writable()) opts_.read_only = true;
}

KernelNbd::~KernelNbd() { stop(); }

bool KernelNbd::available() { return ::access("/sys/module/nbd", F_OK) == 0; }

std::string KernelNbd::start() {
  if (started_) throw Error(Exit::kParam, "nbd" + std::to_string(index_) + " is already attached");
  if (stack_.size() == 0) throw Error(Exit::kParam, "nbd: an empty disk cannot be attached");
  // The server sides run before the kernel gets its ends: the kernel may read (partition scan)
  // as soon as the device is connected.
  nbd::ExportOptions exp;
  exp.read_only = opts_.read_only;
  std::vector<int> kernel_fds;
  auto close_kernel_fds = [&] {
    for (int fd : kernel_fds) ::close(fd);
    kernel_fds.clear();
  };
  for (unsigned i = 0; i < opts_.connections; ++i) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
      int e = errno;
      close_kernel_fds();
      stop_serving();
      ploop::throw_errno(Exit::kDevice, e, "socketpair failed", "nbd");
    }
    kernel_fds.push_back(sv[1]);
    auto s = std::make_unique<Served>();
    s->conn = std::make_unique<nbd::Connection>(sv[0], stack_, exp, stats_, budget_,
                                                nbd::Connection::Phase::kTransmission);
    // A connection that ends by itself (a protocol error) is shut down at once, so the kernel
    // sees it dead and uses the others instead of waiting for its request timeout.
    s->thread = std::thread([c = s->conn.get()] {
      c->serve();
      c->shutdown();
    });
    served_.push_back(std::move(s));
  }
  try {
    netlink_ = connect_netlink(kernel_fds);
    if (!netlink_) connect_ioctl(kernel_fds);
  } catch (...) {
    close_kernel_fds();
    stop_serving();
    throw;
  }
  close_kernel_fds();  // the kernel holds its own references now
  started_ = true;
  try {
    wait_for_size(stack_.size());
  } catch (...) {
    stop();
    throw;
  }
  return device_path(index_);
}

uint16_t KernelNbd::server_flags() const {
  uint16_t f = nbd::kHasFlags | nbd::kSendFlush | nbd::kSendFua | nbd::kSendTrim | nbd::kSendWriteZeroes |
               nbd::kCanMultiConn;
  return opts_.read_only ? f | nbd::kReadOnly : f;
}

bool KernelNbd::connect_netlink(const std::vector<int>& kernel_fds) {
  NbdNetlink nl;
  if (!nl.ok()) return false;
  nl_msg* m = nl.message(NBD_CMD_CONNECT);
  if (!m) throw Error(Exit::kMemory, "nbd: out of memory for a netlink message");
  // No NBD_ATTR_INDEX: the kernel takes a device nobody has configured (or opened) or makes one,
  // which no scan of /sys from here could do without racing other attachers.
  bool ok = nla_put_u64(m, NBD_ATTR_SIZE_BYTES, stack_.size()) == 0 &&
            nla_put_u64(m, NBD_ATTR_BLOCK_SIZE_BYTES, kBlockSize) == 0 &&
            nla_put_u64(m, NBD_ATTR_SERVER_FLAGS, server_flags()) == 0 &&
            nla_put_u64(m, NBD_ATTR_TIMEOUT, kRequestTimeoutS) == 0 &&
            nla_put_u64(m, NBD_ATTR_DEAD_CONN_TIMEOUT, opts_.dead_conn_timeout_s) == 0;
  nlattr* socks = ok ? nla_nest_start(m, NBD_ATTR_SOCKETS) : nullptr;
  ok = socks != nullptr;
  for (size_t i = 0; ok && i < kernel_fds.size(); ++i) {
    nlattr* item = nla_nest_start(m, NBD_SOCK_ITEM);
    ok = item && nla_put_u32(m, NBD_SOCK_FD, static_cast<uint32_t>(kernel_fds[i])) == 0;
    if (ok) nla_nest_end(m, item);
  }
  if (ok) nla_nest_end(m, socks);
  if (!ok) {
    nlmsg_free(m);
    throw Error(Exit::kMemory, "nbd: netlink message too large");
  }
  int index = -1;
  int rc = nl.transact(m, &index);
  if (rc < 0) throw Error(Exit::kDevice, "nbd: netlink CONNECT failed: " + nl_reason(rc));
  if (index < 0) {
    throw Error(Exit::kDevice, "nbd: the kernel connected a device but did not say which");
  }
  index_ = index;
  return true;
}

void KernelNbd::connect_ioctl(const std::vector<int>& kernel_fds) {
  const uint64_t size = stack_.size();
  for (int n : nbd_indices()) {
    if (::access((sys_path(n) + "/pid").c_str(), F_OK) == 0) continue;  // served by someone
    int fd = ::open(device_path(n).c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    // The first socket claims the device for this thread; EBUSY means another task is setting
    // it up, so try the next one. Nothing else is touched before the claim.
    if (::ioctl(fd, NBD_SET_SOCK, static_cast<unsigned long>(kernel_fds[0])) < 0) {
      ::close(fd);
      continue;
    }
    auto fail = [&](const char* what) {
      int e = errno;
      ::ioctl(fd, NBD_CLEAR_SOCK);
      ::close(fd);
      ploop::throw_errno(Exit::kDevice, e, what, device_path(n));
    };
    for (size_t i = 1; i < kernel_fds.size(); ++i) {
      if (::ioctl(fd, NBD_SET_SOCK, static_cast<unsigned long>(kernel_fds[i])) < 0) fail("NBD_SET_SOCK failed");
    }
    if (::ioctl(fd, NBD_SET_BLKSIZE, static_cast<unsigned long>(kBlockSize)) < 0) fail("NBD_SET_BLKSIZE failed");
    int rc = size % kBlockSize == 0 ? ::ioctl(fd, NBD_SET_SIZE_BLOCKS, static_cast<unsigned long>(size / kBlockSize))
                                    : ::ioctl(fd, NBD_SET_SIZE, static_cast<unsigned long>(size));
    if (rc < 0) fail("NBD_SET_SIZE failed");
    if (::ioctl(fd, NBD_SET_TIMEOUT, static_cast<unsigned long>(kRequestTimeoutS)) < 0) fail("NBD_SET_TIMEOUT failed");
    if (::ioctl(fd, NBD_SET_FLAGS, static_cast<unsigned long>(server_flags())) < 0) fail("NBD_SET_FLAGS failed");
    // There is no ioctl for the dead-connection timeout: on this path a dead server fails I/O at
    // once (the kernel's default).
    device_fd_ = fd;
    index_ = n;
    do_it_errno_ = 0;
    do_it_ = std::thread([this] {
      if (::ioctl(device_fd_, NBD_DO_IT) < 0) do_it_errno_ = errno;  // returns at disconnect
      do_it_done_ = true;
    });
    return;
  }
  throw Error(Exit::kDevice, "nbd: no free /dev/nbdN (the netlink family \"nbd\" is missing too)");
}

void KernelNbd::wait_for_size(uint64_t bytes) {
  const auto deadline = std::chrono::steady_clock::now() + kSizeWait;
  const auto want = static_cast<int64_t>(bytes >> 9);
  for (;;) {
    bool node = ::access(device_path(index_).c_str(), F_OK) == 0;
    int64_t have = sysfs_sectors(index_);
    if (node && have == want) return;
    if (do_it_done_) {
      throw Error(Exit::kDevice, device_path(index_) + ": NBD_DO_IT ended at once: " + std::strerror(do_it_errno_),
                  do_it_errno_);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw Error(Exit::kDevice, device_path(index_) + (node ? "" : " did not appear and") + " has " +
                                     std::to_string(have) + " sectors, not " + std::to_string(want) +
                                     ", after " + std::to_string(kSizeWait.count()) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void KernelNbd::resize(uint64_t bytes) {
  if (!started_) throw Error(Exit::kParam, "nbd: resize of a device that is not attached");
  if (netlink_) {
    NbdNetlink nl;
    if (!nl.ok()) throw Error(Exit::kDevice, "nbd: the netlink family \"nbd\" is gone");
    nl_msg* m = nl.message(NBD_CMD_RECONFIGURE);
    if (!m) throw Error(Exit::kMemory, "nbd: out of memory for a netlink message");
    if (nla_put_u32(m, NBD_ATTR_INDEX, static_cast<uint32_t>(index_)) < 0 ||
        nla_put_u64(m, NBD_ATTR_SIZE_BYTES, bytes) < 0) {
      nlmsg_free(m);
      throw Error(Exit::kMemory, "nbd: netlink message too large");
    }
    int rc = nl.transact(m);
    if (rc < 0) throw Error(Exit::kDevice, device_path(index_) + ": netlink RECONFIGURE failed: " + nl_reason(rc));
  } else if (::ioctl(device_fd_, NBD_SET_SIZE, static_cast<unsigned long>(bytes)) < 0) {
    ploop::throw_errno(Exit::kDevice, errno, "NBD_SET_SIZE failed", device_path(index_));
  }
  wait_for_size(bytes);
}

void KernelNbd::stop() {
  if (!started_) return;
  started_ = false;
  if (netlink_) {
    // The kernel sends NBD_CMD_DISC on every socket, then shuts them down: the serving threads end.
    NbdNetlink nl;
    int rc = nl.ok() ? netlink_disconnect(nl, index_) : -NLE_OBJ_NOTFOUND;
    if (rc < 0) std::fprintf(stderr, "nbd%d: netlink DISCONNECT failed: %s\n", index_, nl_reason(rc).c_str());
  } else if (::ioctl(device_fd_, NBD_DISCONNECT) < 0) {
    std::fprintf(stderr, "nbd%d: NBD_DISCONNECT failed: %s\n", index_, std::strerror(errno));
  }
  // Closing the server ends also ends NBD_DO_IT (its receive threads see end of file), whatever
  // the kernel did with the disconnect.
  stop_serving();
  if (do_it_.joinable()) do_it_.join();
  if (device_fd_ >= 0) {
    ::ioctl(device_fd_, NBD_CLEAR_SOCK);
    ::close(device_fd_);
    device_fd_ = -1;
  }
}

void KernelNbd::stop_serving() {
  for (auto& s : served_) s->conn->shutdown();
  for (auto& s : served_) {
    if (s->thread.joinable()) s->thread.join();
  }
  served_.clear();  // closes the server ends (every connection has answered what it took)
}

void KernelNbd::disconnect(int index) {
  if (index < 0) return;
  NbdNetlink nl;
  if (nl.ok()) {
    netlink_disconnect(nl, index);
    return;
  }
  int fd = ::open(device_path(index).c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return;
  ::ioctl(fd, NBD_DISCONNECT);
  ::ioctl(fd, NBD_CLEAR_SOCK);
  ::close(fd);
}

}  // namespace shim
