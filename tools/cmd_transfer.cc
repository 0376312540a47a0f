// ploop import [-b BLOCKSIZE] RAW IMAGE   and   ploop export DiskDescriptor.xml|IMAGE OUT.raw
#include <cstdio>

#include "ploop/raw_transfer.h"
#include "tools/cli.h"

namespace cli {

void add_import(CLI::App& app, int& rc) {
  auto* c = app.add_subcommand("import", "Create an image and descriptor from a raw disk file");
  auto block = std::make_shared<uint32_t>(ploop::kDefaultClusterSectors);
  auto raw = std::make_shared<std::string>();
  auto image = std::make_shared<std::string>();
  c->add_option("-b,--blocksize", *block, "Cluster size in 512-byte sectors (default 2048 = 1 MiB)");
  c->add_option("RAW", *raw, "Raw disk file to read")->required();
  c->add_option("IMAGE", *image, "Image file to create")->required();
  c->callback([=, &rc] {
    auto st = ploop::import_raw(storage(), *raw, *image, *block, terminal_progress("importing"));
    std::printf("Imported %s into %s: %llu of %llu bytes hold data\n", raw->c_str(), image->c_str(),
                static_cast<unsigned long long>(st.bytes_copied), static_cast<unsigned long long>(st.bytes_total));
    rc = 0;
  });
}

void add_export(CLI::App& app, int& rc) {
  auto* c = app.add_subcommand("export", "Write what a disk reads into a sparse raw file");
  auto disk = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto verify = std::make_shared<bool>(false);
  c->add_flag("--verify", *verify, "Check every read from a sealed delta against its seal");
  c->add_option("DISK", *disk, "DiskDescriptor.xml or image file")->required();
  c->add_option("OUT", *out, "Raw file to create")->required();
  c->callback([=, &rc] {
    auto st = ploop::export_raw(storage(), *disk, *out, terminal_progress("exporting"), *verify);
    std::printf("Exported %s to %s: %llu of %llu bytes hold data\n", disk->c_str(), out->c_str(),
                static_cast<unsigned long long>(st.bytes_copied), static_cast<unsigned long long>(st.bytes_total));
    rc = 0;
  });
}

}  // namespace cli
