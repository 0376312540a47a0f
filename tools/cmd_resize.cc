// ploop resize -s SIZE DD.xml
#include <cstdio>

#include "ploop/resize.h"
#include "tools/cli.h"

namespace cli {

void add_resize(CLI::App& app, int& rc) {
  auto* c = app.add_subcommand("resize", "Grow or shrink a disk (offline; the file system inside is not resized)");
  auto size = std::make_shared<std::string>();
  auto dd = std::make_shared<std::string>();
  c->add_option("-s,--size", *size, "New size: sectors, or with a K/M/G/T suffix")->required();
  c->add_option("DD", *dd, "DiskDescriptor.xml")->required();
  c->callback([=, &rc] {
    uint64_t got = ploop::resize_disk(storage(), *dd, parse_size(*size));
    std::printf("%s resized to %llu bytes\n", dd->c_str(), static_cast<unsigned long long>(got));
    rc = 0;
  });
}

}  // namespace cli
