#include "kmod-shim/daemon/registry.h"

#include <signal.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "ploop/error.h"

namespace shim {

uint64_t process_start_time(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), {});
  auto close = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return 0;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i) {
    if (i == 22) return std::strtoull(field.c_str(), nullptr, 10);
  }
  return 0;
}

bool MountState::alive() const {
  if (pid <= 0 || (::kill(pid, 0) != 0 && errno != EPERM)) return false;
  return start_time == 0 || process_start_time(pid) == start_time;
}

std::string run_root() {
  const char* e = std::getenv("PLOOP_RUN_DIR");
  return e && *e ? e : "/run/ploop";
}

std::string state_dir_for(const std::string& dd) {
  char id[17];
  std::snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(XXH3_64bits(dd.data(), dd.size())));
  return run_root() + "/" + id;
}

void save_state(const MountState& s) {
  nlohmann::json j{{"dd", s.dd},         {"pid", s.pid}, {"start_time", s.start_time},   {"front", s.front},       {"device", s.device}, {"dev_id", s.dev_id},
                   {"direct_io", s.direct_io}, {"mountpoint", s.mountpoint}, {"read_only", s.read_only},
                   {"log", s.log},       {"socket", s.socket}};
  std::string tmp = s.dir + "/state.json.tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    if (!out) throw ploop::Error(ploop::Exit::kWrite, tmp + ": cannot write");
  }
  std::filesystem::rename(tmp, s.dir + "/state.json");
}

std::optional<MountState> load_state(const std::string& dir) {
  std::ifstream in(dir + "/state.json");
  if (!in) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  MountState s;
  s.dir = dir;
  s.dd = j.value("dd", "");
  s.pid = j.value("pid", 0);
  s.start_time = j.value("start_time", uint64_t{0});
  s.front = j.value("front", "fuse");
  if (s.front.empty()) s.front = "fuse";
  s.device = j.value("device", "");
  s.dev_id = j.value("dev_id", -1);
  s.direct_io = j.value("direct_io", false);
  s.mountpoint = j.value("mountpoint", "");
  s.read_only = j.value("read_only", false);
  s.log = j.value("log", "");
  s.socket = j.value("socket", "");
  return s;
}

std::vector<MountState> list_states() {
  std::vector<MountState> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(run_root(), ec)) {
    if (auto s = load_state(e.path())) out.push_back(*s);
  }
  return out;
}

}  // namespace shim
