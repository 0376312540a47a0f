#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "ploop/error.h"
#include "tools/cli.h"

namespace cli {

uint64_t parse_size(const std::string& text) {
  if (text.empty()) throw ploop::Error(ploop::Exit::kParam, "empty size");
  size_t digits = text.find_first_not_of("0123456789");
  if (digits == 0) throw ploop::Error(ploop::Exit::kParam, "size '" + text + "' does not start with a number");
  std::string num = text.substr(0, digits), suffix = digits == std::string::npos ? "" : text.substr(digits);
  if (num.size() > 19) throw ploop::Error(ploop::Exit::kParam, "size '" + text + "' is too large");
  uint64_t v = std::stoull(num);
  unsigned shift;
  if (suffix.empty()) {
    shift = 9;  // sectors, as OpenVZ ploop
  } else if (suffix.size() == 1 || (suffix.size() == 2 && (suffix[1] == 'B' || suffix[1] == 'b'))) {
    switch (suffix[0]) {
      case 'K': case 'k': shift = 10; break;
      case 'M': case 'm': shift = 20; break;
      case 'G': case 'g': shift = 30; break;
      case 'T': case 't': shift = 40; break;
      default: throw ploop::Error(ploop::Exit::kParam, "size '" + text + "' has an unknown suffix (use K, M, G or T)");
    }
  } else {
    throw ploop::Error(ploop::Exit::kParam, "size '" + text + "' has an unknown suffix (use K, M, G or T)");
  }
  if (v > (UINT64_MAX >> shift)) throw ploop::Error(ploop::Exit::kParam, "size '" + text + "' is too large");
  return v << shift;
}

ploop::Progress terminal_progress(const std::string& label) {
  if (!isatty(STDERR_FILENO)) return {};
  auto last = std::make_shared<std::chrono::steady_clock::time_point>();
  return [label, last](uint64_t done, uint64_t total) {
    auto now = std::chrono::steady_clock::now();
    if (done < total && now - *last < std::chrono::milliseconds(100)) return;
    *last = now;
    unsigned pct = total ? static_cast<unsigned>(done * 100 / total) : 100;
    std::fprintf(stderr, "\r%s: %3u%%", label.c_str(), pct);
    if (done >= total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
}

ploop::Storage& storage() {
  static std::unique_ptr<ploop::Storage> s = ploop::make_posix_storage(false);
  return *s;
}

}  // namespace cli
