// nbd::Connection started in transmission (what the kernel's NBD client gets from KernelNbd): no
// greeting, requests answered with simple replies at once, every request validated as after a
// handshake. Driven with raw requests over a socket pair, as the kernel drives it.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <thread>

#include "kmod-shim/nbd/connection.h"
#include "kmod-shim/nbd/protocol.h"
#include "ploop/disk.h"
#include "ploop/fault_storage.h"
#include "nbd_wire.h"
#include "test_util.h"

using namespace nbd;

namespace {

constexpr uint64_t kDisk = 8 << 20;

// A stack served over a socket pair by one transmission-only connection; the test is the client.
struct Served : nbdtest::Wire {
  ploop::FaultStorage fs;
  std::unique_ptr<ploop::Stack> stack;
  Stats stats;
  MemoryBudget budget{64 << 20};
  std::unique_ptr<Connection> conn;
  std::thread server_side;

  explicit Served(bool read_only = false) {
    ploop::create_disk(fs, "root.hds", {kDisk, 64, 2});
    stack = ploop::open_disk(fs, "DiskDescriptor.xml", ploop::OpenMode::kReadWrite);
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    fd = sv[0];
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ExportOptions o;
    o.read_only = read_only;
    o.max_payload = 1 << 20;
    conn = std::make_unique<Connection>(sv[1], *stack, o, stats, budget, Connection::Phase::kTransmission);
    // As KernelNbd does: once serve() returns, the peer sees the connection end.
    server_side = std::thread([this] {
      conn->serve();
      conn->shutdown();
    });
  }
  ~Served() {
    if (fd >= 0) ::close(fd);
    server_side.join();  // the server side ends by itself once the client is gone
    conn.reset();
    stack->close();
  }

  std::vector<uint8_t> read(uint64_t off, uint32_t len) {
    std::vector<uint8_t> got;
    request(kCmdRead, off, len);
    EXPECT_EQ(reply(&got, len), 0u);
    return got;
  }
};

}  // namespace

TEST(NbdTransmissionOnly, SendsNoGreeting) {
  Served s;
  pollfd p{s.fd, POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 200), 0);  // nothing to read: the server waits for a request
}

TEST(NbdTransmissionOnly, WriteReadFlushTrimWriteZeroes) {
  Served s;
  auto data = testutil::pattern(65536, 5);
  s.request(kCmdWrite, 4096, 65536, 0, data.data());
  EXPECT_EQ(s.reply(), 0u);
  s.request(kCmdWrite, 1 << 20, 65536, kCmdFlagFua, data.data(), 8);  // FUA, as the kernel sends it
  EXPECT_EQ(s.reply(nullptr, 0, 8), 0u);
  EXPECT_EQ(s.read(4096, 65536), data);
  s.request(kCmdFlush, 0, 0);
  EXPECT_EQ(s.reply(), 0u);

  // The disk has 32 KiB clusters: the cluster the trim covers whole is released (reads zeros),
  // the partly covered one keeps its data.
  s.request(kCmdTrim, 4096, 65536);
  EXPECT_EQ(s.reply(), 0u);
  EXPECT_EQ(s.read(32768, 32768), std::vector<uint8_t>(32768, 0));
  EXPECT_EQ(s.read(4096, 28672), std::vector<uint8_t>(data.begin(), data.begin() + 28672));

  s.request(kCmdWriteZeroes, (1 << 20) + 4096, 8192, kCmdFlagNoHole);
  EXPECT_EQ(s.reply(), 0u);
  auto want = data;
  std::memset(want.data() + 4096, 0, 8192);
  EXPECT_EQ(s.read(1 << 20, 65536), want);
  s.request(kCmdWriteZeroes, 1 << 20, 65536, kCmdFlagFua);
  EXPECT_EQ(s.reply(), 0u);
  EXPECT_EQ(s.read(1 << 20, 65536), std::vector<uint8_t>(65536, 0));

  EXPECT_EQ(s.stats.writes.load(), 2u);
  EXPECT_EQ(s.stats.trims.load(), 1u);
  EXPECT_EQ(s.stats.zeroes.load(), 2u);
  EXPECT_EQ(s.stats.flushes.load(), 1u);
  s.request(kCmdDisc, 0, 0);
  EXPECT_TRUE(s.closed_by_server());
}

TEST(NbdTransmissionOnly, BadRequestsGetErrorRepliesAndServingGoesOn) {
  Served s;
  s.request(kCmdRead, kDisk - 512, 4096);  // past the end
  EXPECT_EQ(s.reply(), kEInval);
  std::vector<uint8_t> buf(4096, 1);
  s.request(kCmdWrite, kDisk, 4096, 0, buf.data());  // payload consumed, error returned
  EXPECT_EQ(s.reply(), kENoSpc);
  s.request(kCmdTrim, kDisk - 4096, 8192);
  EXPECT_EQ(s.reply(), kENoSpc);
  s.request(99, 0, 4096);  // unknown command
  EXPECT_EQ(s.reply(), kEInval);
  s.request(kCmdRead, 0, 4096, 0x8000);  // unknown flag
  EXPECT_EQ(s.reply(), kEInval);
  s.request(kCmdRead, 0, 4096, kCmdFlagDf);  // DF needs structured replies, which never came
  EXPECT_EQ(s.reply(), kEInval);
  s.request(kCmdBlockStatus, 0, 4096);  // no meta context without a handshake
  EXPECT_EQ(s.reply(), kEInval);
  s.request(kCmdRead, 0, 2 << 20);  // over the maximum payload
  EXPECT_EQ(s.reply(), kEInval);
  EXPECT_EQ(s.read(0, 512).size(), 512u);  // still serving
  EXPECT_EQ(s.stats.errors.load(), 8u);
}

TEST(NbdTransmissionOnly, BadMagicDisconnects) {
  Served s;
  uint8_t h[28] = {};
  be::store32(h, 0x12345678);
  s.send(h, sizeof h);
  EXPECT_TRUE(s.closed_by_server());
}

TEST(NbdTransmissionOnly, OversizedWriteDisconnects) {
  Served s;
  s.request(kCmdWrite, 0, 64u << 20);  // announces 64 MiB, over the 1 MiB limit
  EXPECT_TRUE(s.closed_by_server());
}

TEST(NbdTransmissionOnly, ReadOnlyRefusesWrites) {
  Served s(/*read_only=*/true);
  std::vector<uint8_t> buf(4096, 1);
  s.request(kCmdWrite, 0, 4096, 0, buf.data());
  EXPECT_EQ(s.reply(), kEPerm);
  s.request(kCmdTrim, 0, 4096);
  EXPECT_EQ(s.reply(), kEPerm);
  s.request(kCmdWriteZeroes, 0, 4096);
  EXPECT_EQ(s.reply(), kEPerm);
  EXPECT_EQ(s.read(0, 4096), std::vector<uint8_t>(4096, 0));
}

TEST(NbdTransmissionOnly, ShutdownEndsServing) {
  auto s = std::make_unique<Served>();
  EXPECT_EQ(s->read(0, 512).size(), 512u);
  s->conn->shutdown();
  EXPECT_TRUE(s->closed_by_server());
}
