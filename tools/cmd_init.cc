// ploop init -s SIZE [-b BLOCKSIZE] [-v 1|2] [-t none|ext4] IMAGE
#include <cstdio>

#include "fsutil/fsutil.h"
#include "kmod-shim/daemon/mount.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "tools/cli.h"

namespace cli {

void add_init(CLI::App& app, int& rc) {
  auto* c = app.add_subcommand("init", "Create an image and a DiskDescriptor.xml beside it");
  auto size = std::make_shared<std::string>();
  auto block = std::make_shared<uint32_t>(ploop::kDefaultClusterSectors);
  auto version = std::make_shared<int>(2);
  auto fstype = std::make_shared<std::string>("none");
  auto image = std::make_shared<std::string>();
  c->add_option("-s,--size", *size, "Disk size: sectors, or with a K/M/G/T suffix")->required();
  c->add_option("-b,--blocksize", *block, "Cluster size in 512-byte sectors (default 2048 = 1 MiB)");
  c->add_option("-v,--version", *version, "Image format version, 1 or 2 (default 2)");
  c->add_option("-t,--fstype", *fstype, "File system to create: ext4 or none (default none)");
  c->add_option("IMAGE", *image, "Image file to create")->required();
  c->callback([=, &rc] {
    if (*fstype != "none" && *fstype != "ext4") {
      throw ploop::Error(ploop::Exit::kParam, "-t " + *fstype + ": the file system must be ext4 or none");
    }
    ploop::CreateOptions o{parse_size(*size), *block, *version};
    std::string dd = ploop::create_disk(storage(), *image, o);
    if (*fstype == "ext4") {
      try {
        auto direct = ploop::make_posix_storage(true);
        auto stack = ploop::open_disk(*direct, dd, ploop::OpenMode::kReadWrite);
        shim::with_block_device(*stack, [](const std::string& dev) { fsutil::make_ext4(dev); });
        stack->close();
      } catch (...) {
        storage().remove(*image);
        storage().remove(dd);
        throw;
      }
    }
    std::printf("Created %s (%llu bytes, %u-sector clusters, v%d) and %s\n", image->c_str(),
                static_cast<unsigned long long>(ploop::make_header(o.size_bytes, o.cluster_sectors, o.version).size_bytes()),
                o.cluster_sectors, o.version, dd.c_str());
    rc = 0;
  });
}

}  // namespace cli
