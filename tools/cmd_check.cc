// ploop check [-f] [-r] [-c] [--json] DiskDescriptor.xml|IMAGE
// Exit: 0 when no error remains (warnings are printed), 11 when errors remain, 37 when the
// image's in-use flag is still set (not repaired, or in use).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ploop/check.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/paths.h"
#include "tools/cli.h"

namespace cli {

void add_check(CLI::App& app, int& rc) {
  auto* c = app.add_subcommand("check", "Check an image (every delta of a descriptor) and repair what is safe");
  auto force = std::make_shared<bool>(false);
  auto repair = std::make_shared<bool>(false);
  auto dups = std::make_shared<bool>(false);
  auto json = std::make_shared<bool>(false);
  auto path = std::make_shared<std::string>();
  c->add_flag("-f,--force", *force, "Check even if the image is marked clean (always done; for compatibility)");
  c->add_flag("-r,--repair", *repair, "Repair what is safe to repair");
  c->add_flag("-c,--check", *dups, "Check for clusters shared by two entries (always done; for compatibility)");
  c->add_flag("--json", *json, "Print JSON");
  c->add_option("DISK", *path, "DiskDescriptor.xml or image file")->required();
  c->callback([=, &rc] {
    std::vector<std::string> files;
    if (ploop::is_descriptor(*path)) {
      ploop::Descriptor dd = ploop::Descriptor::load(storage(), *path);
      for (const auto& f : dd.chain()) files.push_back(ploop::join_path(ploop::dir_of(*path), f));
    } else {
      files.push_back(*path);
    }
    nlohmann::json out = nlohmann::json::array();
    bool ok = true, in_use = false;
    for (const auto& f : files) {
      ploop::CheckReport r = ploop::check_delta(storage(), f, {*repair}, terminal_progress("checking " + f));
      ok = ok && r.ok();
      in_use = in_use || r.in_use_left;
      nlohmann::json j{{"file", f}, {"ok", r.ok()}, {"allocated_clusters", r.allocated_clusters},
                       {"free_clusters", r.free_clusters}, {"leaked_clusters", r.leaked_clusters},
                       {"in_use", r.in_use_left}, {"findings", nlohmann::json::array()}};
      for (const auto& x : r.findings) {
        const char* sev = x.severity == ploop::CheckFinding::kError ? "error"
                          : x.severity == ploop::CheckFinding::kWarning ? "warning" : "info";
        j["findings"].push_back({{"severity", sev}, {"text", x.text}, {"repaired", x.repaired}});
        if (!*json) {
          std::printf("%s: %s: %s%s\n", f.c_str(), sev, x.text.c_str(), x.repaired ? " (repaired)" : "");
        }
      }
      if (!*json) {
        std::printf("%s: %s, %llu clusters allocated\n", f.c_str(), r.ok() ? (r.in_use_left ? "no errors, but in use" : "OK") : "ERRORS",
                    static_cast<unsigned long long>(r.allocated_clusters));
      }
      out.push_back(j);
    }
    if (*json) std::printf("%s\n", out.dump(2).c_str());
    rc = !ok ? static_cast<int>(ploop::Exit::kFormat) : in_use ? static_cast<int>(ploop::Exit::kInUse) : 0;
  });
}

}  // namespace cli
