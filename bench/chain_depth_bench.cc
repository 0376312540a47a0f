// chain_depth_bench: read latency through chains of deltas of different depths.
//
//   chain_depth_bench fill --level K --of N DISK
//       Writes, through Stack::write into DISK's top delta, every virtual cluster vc with
//       vc % N == K, whole clusters, with a pattern that names the 4 KiB block and the level.
//       bench/chain-depth.sh builds a chain of N deltas by `fill --level 0`, `ploop snapshot`,
//       `fill --level 1`, `ploop snapshot`, ... `fill --level N-1`: level k of the chain then
//       owns exactly the clusters vc % N == k, so uniform random reads hit every level equally.
//
//   chain_depth_bench read [--reads R] [--rounds M] [--warmup W] [--bs BYTES] [--engine sync|uring]
//                          [--seed S] DISK...
//       Opens every DISK read-only with make_posix_storage(true) (O_DIRECT), then for each round
//       reads R random blocks of --bs bytes (default 4096, aligned, uniform over the whole disk) at
//       queue depth 1 from each disk in turn, the order of the disks rotated by one every round
//       so that no disk always runs first or last. Every read is timed with steady_clock
//       (--engine sync: Stack::read; --engine uring: one request through UringEngine, submitted
//       and waited for with poll(true)) and checked against the pattern (the block's offset and
//       that its level is vc % depth). W reads per disk are done first and not counted. Prints
//       one line per disk per round and one summary line per disk over all rounds:
//
//         round=1 depth=16 reads=20000 median_us=93.1 p99_us=250.4 mean_us=101.7 cpu_us_per_read=5.21
//         all depth=16 reads=100000 median_us=... p99_us=... mean_us=... open_ms=3.2 disk=...
//
//       cpu_us_per_read is the user+system CPU time of the reading thread per read.
//
//   chain_depth_bench open DISK...
//       Only opens each DISK read-only (O_DIRECT) and prints how long that took:
//         open depth=64 open_ms=197.5 disk=...
//
// Exit status: 0 on success, 1 if a read returned the wrong data, 2 on bad usage or an error.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ploop/disk.h"
#include "ploop/file.h"
#include "ploop/stack.h"
#include "ploop/uring_engine.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kBlock = 4096;

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "chain_depth_bench: %s\n"
               "usage: chain_depth_bench fill --level K --of N DISK\n"
               "       chain_depth_bench read [--reads R] [--rounds M] [--warmup W] [--bs BYTES] "
               "[--engine sync|uring] [--seed S] DISK...\n"
               "       chain_depth_bench open DISK...\n",
               msg.c_str());
  std::exit(2);
}

uint64_t parse_u64(const char* s, const std::string& what) {
  char* end = nullptr;
  unsigned long long v = std::strtoull(s, &end, 0);
  if (!*s || *end) usage("bad " + what + ": " + s);
  return v;
}

struct XorShift {
  uint64_t s;
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

// The pattern of the 4 KiB block at virtual offset `off`, written by level `level`: the offset,
// the level, then pseudo-random bytes derived from the offset.
void fill_block(uint8_t* p, uint64_t off, uint64_t level) {
  std::memcpy(p, &off, 8);
  std::memcpy(p + 8, &level, 8);
  XorShift r{off * 0x9E3779B97F4A7C15ull + 1};
  for (uint64_t i = 16; i < kBlock; i += 8) {
    uint64_t v = r.next();
    std::memcpy(p + i, &v, 8);
  }
}

bool check_block(const uint8_t* p, uint64_t off, uint64_t level) {
  uint64_t o, l;
  std::memcpy(&o, p, 8);
  std::memcpy(&l, p + 8, 8);
  return o == off && l == level;
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_THREAD, &u);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

uint8_t* aligned_alloc_or_die(size_t n) {
  void* m = nullptr;
  if (posix_memalign(&m, 4096, n)) throw std::bad_alloc();
  return static_cast<uint8_t*>(m);
}

int cmd_fill(int argc, char** argv) {
  uint64_t level = UINT64_MAX, of = 0;
  std::vector<std::string> pos;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--level") {
      level = parse_u64(value(), a);
    } else if (a == "--of") {
      of = parse_u64(value(), a);
    } else if (a.starts_with("--")) {
      usage("unknown option " + a);
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 1 || of == 0 || level >= of) usage("fill needs --level K --of N (K < N) and one DISK");
  auto storage = ploop::make_posix_storage(/*direct=*/true);
  auto stack = ploop::open_disk(*storage, pos[0], ploop::OpenMode::kReadWrite);
  const uint64_t cs = stack->cluster_bytes(), clusters = stack->size() / cs;
  uint8_t* buf = aligned_alloc_or_die(cs);
  uint64_t written = 0;
  for (uint64_t vc = level; vc < clusters; vc += of) {
    for (uint64_t b = 0; b < cs; b += kBlock) fill_block(buf + b, vc * cs + b, level);
    stack->write(buf, vc * cs, cs);
    ++written;
  }
  stack->close();
  std::free(buf);
  std::printf("fill: level %llu of %llu: %llu clusters of %llu bytes\n", static_cast<unsigned long long>(level),
              static_cast<unsigned long long>(of), static_cast<unsigned long long>(written),
              static_cast<unsigned long long>(cs));
  return 0;
}

struct Disk {
  std::string path;
  std::unique_ptr<ploop::Stack> stack;
  std::unique_ptr<ploop::UringEngine> engine;
  uint64_t blocks = 0;
  double open_ms = 0;
  std::vector<double> all_us;
};

struct Stats {
  double median, p99, mean;
};

// Nearest-rank percentiles of a copy.
Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto rank = [&](double q) {
    size_t k = static_cast<size_t>(q * static_cast<double>(v.size()) + 0.999999);
    return v[std::min(v.size(), std::max<size_t>(k, 1)) - 1];
  };
  double sum = 0;
  for (double x : v) sum += x;
  return {rank(0.5), rank(0.99), sum / static_cast<double>(v.size())};
}

int cmd_read(int argc, char** argv) {
  uint64_t reads = 20000, rounds = 5, warmup = 1000, bs = kBlock, seed = 0x243F6A8885A308D3ull;
  std::string engine = "sync";
  std::vector<std::string> pos;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--reads") {
      reads = parse_u64(value(), a);
    } else if (a == "--rounds") {
      rounds = parse_u64(value(), a);
    } else if (a == "--warmup") {
      warmup = parse_u64(value(), a);
    } else if (a == "--bs") {
      bs = parse_u64(value(), a);
    } else if (a == "--seed") {
      seed = parse_u64(value(), a);
    } else if (a == "--engine") {
      engine = value();
    } else if (a.starts_with("--")) {
      usage("unknown option " + a);
    } else {
      pos.push_back(a);
    }
  }
  if (pos.empty()) usage("read needs at least one DISK");
  if (reads == 0 || rounds == 0) usage("--reads and --rounds must be positive");
  if (bs == 0 || bs % kBlock || bs > (1u << 20)) usage("--bs must be a multiple of 4096, at most 1 MiB");
  if (engine != "sync" && engine != "uring") usage("--engine must be sync or uring");

  auto storage = ploop::make_posix_storage(/*direct=*/true);
  std::vector<Disk> disks(pos.size());
  for (size_t i = 0; i < pos.size(); ++i) {
    Disk& d = disks[i];
    d.path = pos[i];
    auto t0 = Clock::now();
    d.stack = ploop::open_disk(*storage, d.path, ploop::OpenMode::kReadOnly);
    d.open_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    d.blocks = d.stack->size() / bs;
    if (engine == "uring") d.engine = std::make_unique<ploop::UringEngine>(*d.stack, 1);
    d.all_us.reserve(reads * rounds);
  }
  uint8_t* buf = aligned_alloc_or_die(bs);
  XorShift rng{seed | 1};
  uint64_t bad = 0;

  // One read of `bs` bytes at a random aligned offset; returns its latency in microseconds.
  auto one = [&](Disk& d) {
    uint64_t off = rng.next() % d.blocks * bs;
    auto t0 = Clock::now();
    if (d.engine) {
      int err = -1;
      d.engine->read(buf, off, static_cast<uint32_t>(bs), [&err](int e) { err = e; });
      while (d.engine->in_flight()) d.engine->poll(true);
      if (err) throw std::runtime_error("read failed: " + std::string(std::strerror(err)));
    } else {
      d.stack->read(buf, off, bs);
    }
    double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    const uint64_t depth = d.stack->depth(), cs = d.stack->cluster_bytes();
    for (uint64_t b = 0; b < bs; b += kBlock) {
      uint64_t o = off + b;
      if (!check_block(buf + b, o, o / cs % depth)) {
        if (bad++ < 5) std::fprintf(stderr, "chain_depth_bench: %s: wrong data at offset %llu\n", d.path.c_str(),
                                    static_cast<unsigned long long>(o));
      }
    }
    return us;
  };

  for (auto& d : disks) {
    for (uint64_t i = 0; i < warmup; ++i) one(d);
  }
  std::vector<double> lat(reads);
  for (uint64_t r = 0; r < rounds; ++r) {
    for (size_t k = 0; k < disks.size(); ++k) {
      Disk& d = disks[(k + r) % disks.size()];
      double cpu0 = cpu_seconds();
      for (uint64_t i = 0; i < reads; ++i) lat[i] = one(d);
      double cpu = cpu_seconds() - cpu0;
      d.all_us.insert(d.all_us.end(), lat.begin(), lat.end());
      Stats s = stats(lat);
      std::printf("round=%llu depth=%zu reads=%llu median_us=%.1f p99_us=%.1f mean_us=%.1f cpu_us_per_read=%.2f\n",
                  static_cast<unsigned long long>(r + 1), d.stack->depth(), static_cast<unsigned long long>(reads),
                  s.median, s.p99, s.mean, cpu * 1e6 / static_cast<double>(reads));
      std::fflush(stdout);
    }
  }
  for (auto& d : disks) {
    Stats s = stats(d.all_us);
    std::printf("all depth=%zu reads=%zu median_us=%.1f p99_us=%.1f mean_us=%.1f open_ms=%.1f disk=%s\n", d.stack->depth(),
                d.all_us.size(), s.median, s.p99, s.mean, d.open_ms, d.path.c_str());
    d.engine.reset();
    d.stack->close();
  }
  std::free(buf);
  if (bad) std::fprintf(stderr, "chain_depth_bench: %llu reads returned wrong data\n", static_cast<unsigned long long>(bad));
  return bad ? 1 : 0;
}

int cmd_open(int argc, char** argv) {
  if (argc < 3) usage("open needs at least one DISK");
  auto storage = ploop::make_posix_storage(/*direct=*/true);
  for (int i = 2; i < argc; ++i) {
    auto t0 = Clock::now();
    auto stack = ploop::open_disk(*storage, argv[i], ploop::OpenMode::kReadOnly);
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    std::printf("open depth=%zu open_ms=%.1f disk=%s\n", stack->depth(), ms, argv[i]);
    stack->close();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage("expected a command: fill, read or open");
  std::string cmd = argv[1];
  try {
    if (cmd == "fill") return cmd_fill(argc, argv);
    if (cmd == "read") return cmd_read(argc, argv);
    if (cmd == "open") return cmd_open(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chain_depth_bench: %s\n", e.what());
    return 2;
  }
  usage("unknown command " + cmd);
}
