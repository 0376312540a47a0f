// The NBD server against malformed and hostile input, through socket pairs: every case ends
// with a protocol error reply or a disconnect, never a crash, a hang, or unbounded memory.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "kmod-shim/nbd/protocol.h"
#include "kmod-shim/nbd/server.h"
#include "ploop/disk.h"
#include "ploop/fault_storage.h"
#include "nbd_wire.h"
#include "test_util.h"

using namespace nbd;

namespace {

constexpr uint64_t kDisk = 8 << 20;

struct Fixture {
  ploop::FaultStorage fs;
  std::unique_ptr<ploop::Stack> stack;
  std::unique_ptr<Server> server;
  // Options of the tests: 1 MiB requests at most, 4 connections.
  static ServerOptions options() {
    ServerOptions o;
    o.exp.max_payload = 1 << 20;
    o.max_connections = 4;
    return o;
  }
  // The same, with a client that makes no progress cut after `stall_ms`.
  static ServerOptions stalling(unsigned stall_ms) {
    ServerOptions o = options();
    o.exp.stall_ms = stall_ms;
    return o;
  }
  explicit Fixture(const ServerOptions& o = options()) {
    ploop::create_disk(fs, "root.hds", {kDisk, 64, 2});
    stack = ploop::open_disk(fs, "DiskDescriptor.xml", ploop::OpenMode::kReadWrite);
    server = std::make_unique<Server>(*stack, o);
  }
  ~Fixture() {
    server.reset();
    stack->close();
  }
};

// A raw client on one end of a socket pair; the server serves the other end on a thread.
struct Client : nbdtest::Wire {
  std::thread server_side;
  Client(Server& s) {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    fd = sv[0];
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int other = sv[1];
    server_side = std::thread([&s, other] { s.serve_fd(other); });
  }
  ~Client() {
    ::close(fd);
    server_side.join();  // the server side must end by itself once we are gone
  }
  void send_u32(uint32_t v) {
    uint8_t b[4];
    be::store32(b, v);
    send(b, 4);
  }
  void hello() {
    uint8_t h[18];
    ASSERT_TRUE(recv(h, 18));
    ASSERT_EQ(be::load64(h), kMagic);
    ASSERT_EQ(be::load64(h + 8), kOptMagic);
  }
  void option(uint32_t opt, const std::vector<uint8_t>& data) {
    uint8_t h[16];
    be::store64(h, kOptMagic);
    be::store32(h + 8, opt);
    be::store32(h + 12, static_cast<uint32_t>(data.size()));
    send(h, 16);
    if (!data.empty()) send(data.data(), data.size());
  }
  // Reads one option reply; returns its type and fills data.
  uint32_t option_reply(std::vector<uint8_t>& data) {
    uint8_t h[20];
    if (!recv(h, 20)) return 0;
    EXPECT_EQ(be::load64(h), kOptReplyMagic);
    data.resize(be::load32(h + 16));
    if (!data.empty() && !recv(data.data(), data.size())) return 0;
    return be::load32(h + 12);
  }
  std::vector<uint8_t> go_data(const std::string& name = "") {
    std::vector<uint8_t> d(4 + name.size() + 2);
    be::store32(d.data(), static_cast<uint32_t>(name.size()));
    std::memcpy(d.data() + 4, name.data(), name.size());
    be::store16(d.data() + 4 + name.size(), 0);
    return d;
  }
  // Handshake to transmission with NBD_OPT_GO.
  void go() {
    hello();
    send_u32(kClientFixedNewstyle | kClientNoZeroes);
    option(kOptGo, go_data());
    std::vector<uint8_t> d;
    uint32_t t;
    while ((t = option_reply(d)) == kRepInfo) {
    }
    ASSERT_EQ(t, kRepAck);
  }
};

}  // namespace

TEST(Nbd, WriteReadFlushThenDisconnect) {
  Fixture f;
  Client c(*f.server);
  c.go();
  auto data = testutil::pattern(65536, 3);
  c.request(kCmdWrite, 4096, 65536, 0, data.data());
  EXPECT_EQ(c.reply(), 0u);
  c.request(kCmdFlush, 0, 0);
  EXPECT_EQ(c.reply(), 0u);
  c.request(kCmdRead, 4096, 65536);
  std::vector<uint8_t> got;
  EXPECT_EQ(c.reply(&got, 65536), 0u);
  EXPECT_EQ(got, data);
  c.request(kCmdDisc, 0, 0);
  EXPECT_TRUE(c.closed_by_server());
}

TEST(Nbd, OutOfRangeAndUnknownRequestsGetErrorsAndTheConnectionLives) {
  Fixture f;
  Client c(*f.server);
  c.go();
  c.request(kCmdRead, kDisk - 512, 4096);
  EXPECT_EQ(c.reply(), kEInval);
  c.request(kCmdRead, UINT64_MAX - 10, 4096);
  EXPECT_EQ(c.reply(), kEInval);
  std::vector<uint8_t> buf(4096, 1);
  c.request(kCmdWrite, kDisk - 1024, 4096, 0, buf.data());  // payload is consumed, error returned
  EXPECT_EQ(c.reply(), kENoSpc);
  c.request(99, 0, 4096);
  EXPECT_EQ(c.reply(), kEInval);
  c.request(kCmdRead, 0, 4096, 0x8000);  // unknown flag
  EXPECT_EQ(c.reply(), kEInval);
  c.request(kCmdRead, 0, 2 << 20);  // over the maximum payload
  EXPECT_EQ(c.reply(), kEInval);
  c.request(kCmdBlockStatus, 0, 4096);  // no meta context negotiated
  EXPECT_EQ(c.reply(), kEInval);
  std::vector<uint8_t> got;
  c.request(kCmdRead, 0, 512);
  EXPECT_EQ(c.reply(&got, 512), 0u);  // still serving
}

TEST(Nbd, OversizedWriteDisconnects) {
  Fixture f;
  Client c(*f.server);
  c.go();
  c.request(kCmdWrite, 0, 64u << 20);  // announces 64 MiB, over the 1 MiB limit
  EXPECT_TRUE(c.closed_by_server());
}

TEST(Nbd, BadRequestMagicDisconnects) {
  Fixture f;
  Client c(*f.server);
  c.go();
  uint8_t junk[28] = {1, 2, 3, 4};
  c.send(junk, 28);
  EXPECT_TRUE(c.closed_by_server());
}

TEST(Nbd, HandshakeViolations) {
  {
    Fixture f;
    Client c(*f.server);
    c.hello();
    c.send_u32(0x80);  // unknown client flag
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    Fixture f;
    Client c(*f.server);
    c.hello();
    c.send_u32(kClientFixedNewstyle);
    uint8_t bad[16] = {'n', 'o', 't', 'm', 'a', 'g', 'i', 'c'};
    c.send(bad, 16);
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    Fixture f;
    Client c(*f.server);
    c.hello();
    c.send_u32(kClientFixedNewstyle);
    uint8_t h[16];
    be::store64(h, kOptMagic);
    be::store32(h + 8, kOptGo);
    be::store32(h + 12, 0xfffffff0);  // a 4 GiB option
    c.send(h, 16);
    EXPECT_TRUE(c.closed_by_server());
  }
}

TEST(Nbd, BadOptionsGetErrorRepliesAndTheHandshakeGoesOn) {
  Fixture f;
  Client c(*f.server);
  c.hello();
  c.send_u32(kClientFixedNewstyle | kClientNoZeroes);
  std::vector<uint8_t> d;
  c.option(1234, {});
  EXPECT_EQ(c.option_reply(d), kRepErrUnsup);
  c.option(kOptInfo, {0, 0, 0, 50, 'x'});  // name length past the data
  EXPECT_EQ(c.option_reply(d), kRepErrInvalid);
  c.option(kOptGo, c.go_data("nosuch"));
  EXPECT_EQ(c.option_reply(d), kRepErrUnknown);
  c.option(kOptList, {1});
  EXPECT_EQ(c.option_reply(d), kRepErrInvalid);
  c.option(kOptSetMetaContext, {0, 0, 0, 0, 0, 0, 0, 0});  // before structured replies
  EXPECT_EQ(c.option_reply(d), kRepErrInvalid);
  c.option(kOptStartTls, {});
  EXPECT_EQ(c.option_reply(d), kRepErrPolicy);
  c.option(kOptGo, std::vector<uint8_t>(100 << 10, 0));  // too big, but small enough to skip
  EXPECT_EQ(c.option_reply(d), kRepErrTooBig);
  c.option(kOptGo, c.go_data());
  uint32_t t;
  while ((t = c.option_reply(d)) == kRepInfo) {
  }
  EXPECT_EQ(t, kRepAck);
  c.request(kCmdFlush, 0, 0);
  EXPECT_EQ(c.reply(), 0u);
}

TEST(Nbd, TruncatedPacketsEndTheConnectionCleanly) {
  Fixture f;
  for (size_t cut : {1u, 7u, 17u, 20u}) {
    Client c(*f.server);
    c.go();
    uint8_t h[28] = {};
    be::store32(h, kRequestMagic);
    c.send(h, cut);
    ::shutdown(c.fd, SHUT_WR);  // the client goes away in the middle of a request
  }
  Client c(*f.server);  // and the server still serves
  c.go();
  c.request(kCmdFlush, 0, 0);
  EXPECT_EQ(c.reply(), 0u);
}

TEST(Nbd, RandomGarbageNeverCrashesTheServer) {
  Fixture f;
  std::mt19937_64 rng(99);
  for (int i = 0; i < 300; ++i) {
    Client c(*f.server);
    std::vector<uint8_t> junk(rng() % 200);
    for (auto& b : junk) b = static_cast<uint8_t>(rng());
    if (i % 2) {  // half the time after a valid handshake, so the request parser gets fuzzed too
      c.go();
      for (size_t k = 0; k + 4 <= junk.size() && k < 28; k += 28) be::store32(&junk[k], kRequestMagic);
    } else if (junk.size() >= 4) {
      be::store32(junk.data(), kClientFixedNewstyle);
    }
    ::send(c.fd, junk.data(), junk.size(), MSG_NOSIGNAL);
    ::shutdown(c.fd, SHUT_WR);
  }
  Client c(*f.server);
  c.go();
  c.request(kCmdFlush, 0, 0);
  EXPECT_EQ(c.reply(), 0u);
}

TEST(Nbd, ConnectionLimitRefusesExtrasAndKeepsServing) {
  Fixture f;
  testutil::TempDir dir;
  std::string sock = dir / "s.sock";
  f.server->listen_unix(sock);
  std::thread runner([&] { f.server->run(); });
  auto connect_one = [&] {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strcpy(sa.sun_path, sock.c_str());
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    return fd;
  };
  std::vector<int> idle;
  for (int i = 0; i < 200; ++i) idle.push_back(connect_one());  // far more than the limit of 4
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_LE(f.server->connections(), 4u);
  for (int fd : idle) ::close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int fd = connect_one();
  uint8_t h[18];
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  EXPECT_EQ(::recv(fd, h, 18, MSG_WAITALL), 18);  // a new client is greeted again
  ::close(fd);
  f.server->stop();
  runner.join();
}

// A client may send many requests before it reads any reply: replies that do not fit in the
// socket wait in the server's queue (the server stops taking requests at its in-flight limit, not
// the client's stream), and every reply arrives once the client reads, in full and matched.
// Requests in flight together may complete in any order (a read sent after a write it overlaps,
// before that write's reply, may see the old data, as on any block device), so the pipelined
// reads here read what was written and acknowledged before; the pipelined writes are read back
// afterwards.
TEST(Nbd, PipelinedRequestsAreAllAnsweredWhenTheClientReadsLate) {
  Fixture f;
  Client c(*f.server);
  c.go();
  auto data = testutil::pattern(kDisk, 11);
  constexpr uint32_t kLen = 64 << 10;
  constexpr unsigned kHalf = kDisk / kLen / 2;  // 64 blocks in each half of the disk
  for (unsigned i = 0; i < kHalf; ++i) {        // the first half, one request at a time
    c.request(kCmdWrite, uint64_t{i} * kLen, kLen, 0, data.data() + i * kLen);
    ASSERT_EQ(c.reply(), 0u);
  }
  // 64 writes to the second half, then 64 reads of the first: far beyond 16 in flight.
  for (unsigned i = kHalf; i < 2 * kHalf; ++i) c.request(kCmdWrite, uint64_t{i} * kLen, kLen, 0, data.data() + i * kLen, i);
  for (unsigned i = 0; i < kHalf; ++i) c.request(kCmdRead, uint64_t{i} * kLen, kLen, 0, nullptr, 1000 + i);
  std::vector<bool> seen(2 * kHalf, false);
  std::vector<uint8_t> got(kLen);
  for (unsigned n = 0; n < 2 * kHalf; ++n) {
    uint8_t h[16];
    ASSERT_TRUE(c.recv(h, 16));
    ASSERT_EQ(be::load32(h), kSimpleReplyMagic);
    ASSERT_EQ(be::load32(h + 4), 0u);
    uint64_t cookie = be::load64(h + 8);
    if (cookie >= 1000) {
      ASSERT_LT(cookie - 1000, kHalf);
      ASSERT_TRUE(c.recv(got.data(), kLen));
      EXPECT_EQ(0, std::memcmp(got.data(), data.data() + (cookie - 1000) * kLen, kLen)) << "block " << cookie - 1000;
      seen[cookie - 1000] = true;
    } else {
      ASSERT_GE(cookie, kHalf);
      ASSERT_LT(cookie, 2 * kHalf);
      seen[cookie] = true;
    }
  }
  for (unsigned i = 0; i < 2 * kHalf; ++i) EXPECT_TRUE(seen[i]) << i;
  for (unsigned i = kHalf; i < 2 * kHalf; ++i) {  // the pipelined writes, all acknowledged
    c.request(kCmdRead, uint64_t{i} * kLen, kLen);
    std::vector<uint8_t> back;
    ASSERT_EQ(c.reply(&back, kLen), 0u);
    EXPECT_EQ(0, std::memcmp(back.data(), data.data() + i * kLen, kLen)) << "block " << i;
  }
  c.request(kCmdDisc, 0, 0);
  EXPECT_TRUE(c.closed_by_server());
}

// A client that stops reading its replies is disconnected after stall_ms without progress, and
// holds nothing another connection needs meanwhile.
TEST(Nbd, AClientThatReadsNoRepliesIsCutAndOthersAreServed) {
  Fixture f(Fixture::stalling(1500));
  Client stuck(*f.server);
  stuck.go();
  for (uint64_t i = 0; i < 64; ++i) stuck.request(kCmdRead, 0, 1 << 20, 0, nullptr, i);  // 64 MiB of replies
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  {
    Client other(*f.server);
    other.go();
    auto data = testutil::pattern(4096, 5);
    auto t0 = std::chrono::steady_clock::now();
    other.request(kCmdWrite, 8192, 4096, 0, data.data());
    EXPECT_EQ(other.reply(), 0u);
    other.request(kCmdRead, 8192, 4096);
    std::vector<uint8_t> got;
    EXPECT_EQ(other.reply(&got, 4096), 0u);
    EXPECT_EQ(got, data);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
    other.request(kCmdDisc, 0, 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  // The server has shut its end: what we send now fails.
  EXPECT_LT(::send(stuck.fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT), 0);
}

// A client that sends handshake options and reads none of the replies is cut once the server has
// waited stall_ms for room: it does not get every reply later (the server stopped, rather than
// waiting for it for ever).
TEST(Nbd, AHandshakeClientThatReadsNoRepliesIsCut) {
  Fixture f(Fixture::stalling(300));
  Client c(*f.server);
  c.hello();
  c.send_u32(kClientFixedNewstyle | kClientNoZeroes);
  constexpr unsigned kOptions = 4000;  // under the server's limit of 4096 options
  std::vector<uint8_t> many;
  for (unsigned i = 0; i < kOptions; ++i) {
    uint8_t h[16];
    be::store64(h, kOptMagic);
    be::store32(h + 8, kOptList);
    be::store32(h + 12, 0);
    many.insert(many.end(), h, h + 16);
  }
  c.send(many.data(), many.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  unsigned acks = 0;
  std::vector<uint8_t> d;
  for (uint32_t t; (t = c.option_reply(d)) != 0;) acks += t == kRepAck;
  EXPECT_LT(acks, kOptions);  // cut part way, not answered in full
}

// A client that sends a write's header and stops inside its payload holds that payload's memory
// only until it is cut (stall_ms without progress); another client, waiting for that memory, is
// served then, and the image never sees the half-sent write.
TEST(Nbd, AClientThatStopsInsideAWritePayloadIsCutAndItsMemoryGoesBack) {
  ServerOptions o = Fixture::stalling(500);
  o.memory_budget = 1 << 20;  // the stuck write takes all of it
  Fixture f(o);
  Client stuck(*f.server);
  stuck.go();
  auto half = testutil::pattern(4096, 9);
  stuck.request(kCmdWrite, 0, 1 << 20);  // header only, then a little of the payload
  stuck.send(half.data(), half.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  {
    Client other(*f.server);
    other.go();
    auto data = testutil::pattern(4096, 5);
    auto t0 = std::chrono::steady_clock::now();
    other.request(kCmdWrite, 8192, 4096, 0, data.data());  // waits for the budget
    EXPECT_EQ(other.reply(), 0u);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
    other.request(kCmdRead, 0, 8192);
    std::vector<uint8_t> got;
    EXPECT_EQ(other.reply(&got, 8192), 0u);
    EXPECT_EQ(got, std::vector<uint8_t>(8192, 0));  // nothing of the cut write
    other.request(kCmdDisc, 0, 0);
  }
  EXPECT_TRUE(stuck.closed_by_server());
}
