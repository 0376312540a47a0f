// ploop check [-f] [-r] [-c] [--verify] [--json] DiskDescriptor.xml|IMAGE
// Exit: 0 when no error remains (warnings are printed), 11 when errors remain, 37 when the
// image's in-use flag is still set (not repaired, or in use).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ploop/check.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/paths.h"
#include "ploop/seal.h"
#include "ploop/session.h"
#include "tools/cli.h"

namespace cli {

void add_check(CLI::App& app, int& rc) {
  auto* c = app.add_subcommand("check", "Check an image (every delta of a descriptor) and repair what is safe");
  auto force = std::make_shared<bool>(false);
  auto repair = std::make_shared<bool>(false);
  auto dups = std::make_shared<bool>(false);
  auto json = std::make_shared<bool>(false);
  auto verify = std::make_shared<bool>(false);
  auto path = std::make_shared<std::string>();
  c->add_flag("-f,--force", *force, "Check even if the image is marked clean (always done; for compatibility)");
  c->add_flag("-r,--repair", *repair, "Repair what is safe to repair");
  c->add_flag("-c,--check", *dups, "Check for clusters shared by two entries (always done; for compatibility)");
  c->add_flag("--json", *json, "Print JSON");
  c->add_flag("--verify", *verify, "Verify every sealed delta against its checksums");
  c->add_option("DISK", *path, "DiskDescriptor.xml or image file")->required();
  c->callback([=, &rc] {
    std::vector<std::string> files;
    std::vector<std::string> tree_problems, tree_notes;
    if (ploop::is_descriptor(*path)) {
      ploop::Descriptor dd = ploop::Descriptor::load(storage(), *path);  // validates the tree
      bool interrupted = dd.pending_size != 0;
      for (const auto& sh : dd.shots) interrupted = interrupted || sh.temporary;
      if (interrupted && *repair) {
        ploop::open_session(storage(), *path);  // finishes the interrupted merge or resize
        tree_notes.push_back("an interrupted operation (merge or resize) was finished");
      } else if (interrupted) {
        tree_notes.push_back("an interrupted operation (merge or resize) is recorded; 'ploop check -r' or the next "
                             "write command finishes it");
      }
      if (*repair) dd = ploop::Descriptor::load(storage(), *path);
      for (const auto& f : dd.chain()) files.push_back(ploop::join_path(ploop::dir_of(*path), f));
    } else {
      files.push_back(*path);
    }
    nlohmann::json out = nlohmann::json::array();
    bool ok = true, in_use = false;
    for (size_t i = 0; i < files.size(); ++i) {
      const std::string& f = files[i];
      ploop::CheckReport r = ploop::check_delta(storage(), f, {*repair}, terminal_progress("checking " + f));
      if (*verify && r.ok() && i + 1 == files.size() && storage().exists(ploop::seal_path(f))) {
        r.findings.push_back({ploop::CheckFinding::kInfo, "a seal left beside the writable top delta is ignored", false});
      } else if (*verify && r.ok()) {
        ploop::SealReport sr = ploop::verify_seal(storage(), f, i ? files[i - 1] : "", terminal_progress("verifying " + f));
        if (sr.present && !sr.ok) r.findings.push_back({ploop::CheckFinding::kError, sr.problem, false});
        if (sr.present && sr.ok) r.findings.push_back({ploop::CheckFinding::kInfo, "seal verified", false});
        if (!sr.present && i + 1 < files.size()) r.findings.push_back({ploop::CheckFinding::kInfo, "not sealed", false});
      }
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
    if (ploop::is_descriptor(*path) && ok) {
      try {  // the descriptor and the deltas must agree (size, cluster size)
        ploop::open_disk(storage(), *path, ploop::OpenMode::kReadOnly);
      } catch (const ploop::Error& e) {
        tree_problems.push_back(e.what());
      }
    }
    for (const auto& t : tree_notes) {
      if (!*json) std::printf("%s: info: %s\n", path->c_str(), t.c_str());
    }
    for (const auto& t : tree_problems) {
      ok = false;
      if (!*json) std::printf("%s: error: %s\n", path->c_str(), t.c_str());
    }
    if (*json) {
      nlohmann::json top{{"disk", *path}, {"deltas", out}, {"errors", tree_problems}, {"notes", tree_notes}, {"ok", ok}};
      std::printf("%s\n", top.dump(2).c_str());
    }
    rc = !ok ? static_cast<int>(ploop::Exit::kFormat) : in_use ? static_cast<int>(ploop::Exit::kInUse) : 0;
  });
}

}  // namespace cli
