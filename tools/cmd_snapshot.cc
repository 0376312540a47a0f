// ploop snapshot [-u GUID] DD.xml | snapshot-list [--json] DD.xml | snapshot-switch -u GUID DD.xml
// | snapshot-delete -u GUID DD.xml | snapshot-merge [-u GUID | -A] DD.xml
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ploop/error.h"
#include "ploop/merge.h"
#include "ploop/snapshot.h"
#include "tools/cli.h"

namespace cli {

void add_snapshot(CLI::App& app, int& rc) {
  auto dd = std::make_shared<std::string>();
  auto guid = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto all = std::make_shared<bool>(false);

  auto* snap = app.add_subcommand("snapshot", "Take a snapshot: the top delta becomes read-only, a new empty top goes over it");
  snap->add_option("-u,--uuid", *guid, "GUID of the new snapshot (default: a new random one)");
  snap->add_option("DD", *dd, "DiskDescriptor.xml")->required();
  snap->callback([=, &rc] {
    std::string g = ploop::create_snapshot(storage(), *dd, *guid);
    std::printf("ploop snapshot %s has been successfully created\n", g.c_str());
    rc = 0;
  });

  auto* list = app.add_subcommand("snapshot-list", "List the snapshots of a disk");
  list->add_flag("--json", *json, "Print JSON");
  list->add_option("DD", *dd, "DiskDescriptor.xml")->required();
  list->callback([=, &rc] {
    auto shots = ploop::list_snapshots(storage(), *dd);
    if (*json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& s : shots) {
        out.push_back({{"uuid", s.guid}, {"parent_uuid", s.parent}, {"fname", s.file}, {"current", s.current},
                       {"temporary", s.temporary}});
      }
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::printf("%-38s %-38s %-7s %s\n", "UUID", "PARENT_UUID", "CURRENT", "FNAME");
      for (const auto& s : shots) {
        std::printf("%-38s %-38s %-7s %s%s\n", s.guid.c_str(), s.parent.c_str(), s.current ? "*" : "", s.file.c_str(),
                    s.temporary ? "  (interrupted operation recorded)" : "");
      }
    }
    rc = 0;
  });

  auto* sw = app.add_subcommand("snapshot-switch", "Roll back: discard the current top and put a new empty top over a snapshot");
  sw->add_option("-u,--uuid", *guid, "GUID of the snapshot to switch to")->required();
  sw->add_option("DD", *dd, "DiskDescriptor.xml")->required();
  sw->callback([=, &rc] {
    ploop::switch_snapshot(storage(), *dd, *guid);
    std::printf("ploop snapshot has been successfully switched to %s\n", guid->c_str());
    rc = 0;
  });

  auto* del = app.add_subcommand("snapshot-delete", "Delete a snapshot, merging it with its only child");
  del->add_option("-u,--uuid", *guid, "GUID of the snapshot to delete")->required();
  del->add_option("DD", *dd, "DiskDescriptor.xml")->required();
  del->callback([=, &rc] {
    ploop::delete_snapshot(storage(), *dd, *guid, terminal_progress("merging"));
    std::printf("ploop snapshot %s has been successfully deleted\n", guid->c_str());
    rc = 0;
  });

  auto* merge = app.add_subcommand("snapshot-merge", "Merge a snapshot (the top by default) into its parent; -A: all");
  auto* u = merge->add_option("-u,--uuid", *guid, "GUID of the snapshot to merge into its parent");
  merge->add_flag("-A,--all", *all, "Merge every delta of the chain into one")->excludes(u);
  merge->add_option("DD", *dd, "DiskDescriptor.xml")->required();
  merge->callback([=, &rc] {
    ploop::merge_snapshot(storage(), *dd, *guid, *all, terminal_progress("merging"));
    std::printf("ploop snapshot has been successfully merged\n");
    rc = 0;
  });
}

}  // namespace cli
