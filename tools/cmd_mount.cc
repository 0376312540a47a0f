// ploop mount [-r] [-m DIR] [--device fuse|nbd|ublk] DD.xml  |  ploop umount -m DIR | DD.xml
// | ploop list [--json]
#include <cstdio>
#include <nlohmann/json.hpp>

#include "kmod-shim/daemon/mount.h"
#include "kmod-shim/daemon/registry.h"
#include "ploop/error.h"
#include "tools/cli.h"

namespace cli {

void add_mount(CLI::App& app, int& rc) {
  auto dd = std::make_shared<std::string>();
  auto dir = std::make_shared<std::string>();
  auto ro = std::make_shared<bool>(false);
  auto device = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);

  auto* m = app.add_subcommand("mount", "Serve a disk as a block device and mount its file system");
  m->add_flag("-r,--read-only", *ro, "Read-only");
  m->add_option("-m,--mount-point", *dir, "Where to mount the file system (without it, only the device is attached)");
  m->add_option("--device", *device, "Front end: ublk, nbd (kernel NBD) or fuse (FUSE file + loop device); default: the first available in that order");
  m->add_option("DD", *dd, "DiskDescriptor.xml")->required();
  m->callback([=, &rc] {
    shim::MountState s = shim::mount_disk({*dd, *dir, *ro, *device});
    std::printf("%s: device %s (%s%s)%s%s, daemon PID %d, log %s\n", s.dd.c_str(), s.device.c_str(), s.front.c_str(),
                s.direct_io ? ", direct I/O" : "", s.mountpoint.empty() ? "" : ", mounted at ", s.mountpoint.c_str(), s.pid,
                s.log.c_str());
    rc = 0;
  });

  auto* u = app.add_subcommand("umount", "Unmount a disk and stop its daemon");
  auto* mopt = u->add_option("-m,--mount-point", *dir, "The mount point");
  u->add_option("DD", *dd, "DiskDescriptor.xml")->excludes(mopt);
  u->callback([=, &rc] {
    if (dir->empty() && dd->empty()) throw ploop::Error(ploop::Exit::kParam, "umount needs -m DIR or DiskDescriptor.xml");
    shim::MountState s = shim::umount_disk(dir->empty() ? *dd : *dir);
    std::printf("%s: unmounted%s\n", s.dd.c_str(), s.mountpoint.empty() ? "" : (" from " + s.mountpoint).c_str());
    rc = 0;
  });

  auto* l = app.add_subcommand("list", "List mounted disks");
  l->add_flag("--json", *json, "Print JSON");
  l->callback([=, &rc] {
    auto all = shim::list_states();
    if (*json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& s : all) {
        out.push_back({{"dd", s.dd}, {"device", s.device}, {"front", s.front}, {"dev_id", s.dev_id}, {"direct_io", s.direct_io},
                       {"mountpoint", s.mountpoint}, {"read_only", s.read_only}, {"pid", s.pid}, {"alive", s.alive()},
                       {"log", s.log}});
      }
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      for (const auto& s : all) {
        std::printf("%-12s %-5s %-20s %s%s  (PID %d, log %s)\n", s.device.c_str(), s.front.c_str(),
                    s.mountpoint.empty() ? "-" : s.mountpoint.c_str(), s.dd.c_str(), s.alive() ? "" : "  DAEMON DEAD",
                    s.pid, s.log.c_str());
      }
    }
    rc = 0;
  });
}

}  // namespace cli
