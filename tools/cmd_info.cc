// ploop info [--json] DiskDescriptor.xml|IMAGE
#include <cstdio>
#include <nlohmann/json.hpp>

#include <sys/statvfs.h>

#include <filesystem>

#include "fsutil/fsutil.h"
#include "kmod-shim/daemon/registry.h"
#include "ploop/delta.h"
#include "ploop/disk.h"
#include "ploop/error.h"
#include "ploop/paths.h"
#include "tools/cli.h"

namespace cli {
namespace {

nlohmann::json delta_info(const std::string& path) {
  auto d = ploop::Delta::open(storage(), path, ploop::OpenMode::kReadOnly);
  ploop::Header h = d->header();
  return {{"file", path},
          {"version", h.version},
          {"size", h.size_bytes()},
          {"cluster_size", h.cluster_bytes()},
          {"file_size", d->file().size()},
          {"allocated_clusters", d->mapped_clusters()},
          {"in_use", h.dirty()},
          {"flags", h.flags}};
}

std::string human(uint64_t b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  double v = static_cast<double>(b);
  while (v >= 1024 && i < 5) v /= 1024, ++i;
  char s[32];
  std::snprintf(s, sizeof s, i ? "%.1f %s" : "%.0f %s", v, u[i]);
  return s;
}

}  // namespace

void add_info(CLI::App& app, int& rc) {
  auto* c = app.add_subcommand("info", "Show a disk's size, cluster size and deltas");
  auto json = std::make_shared<bool>(false);
  auto path = std::make_shared<std::string>();
  c->add_flag("--json", *json, "Print JSON");
  c->add_option("DISK", *path, "DiskDescriptor.xml or image file")->required();
  c->callback([=, &rc] {
    nlohmann::json out;
    if (ploop::is_descriptor(*path)) {
      // Opening the chain checks that the descriptor and the deltas agree.
      ploop::open_disk(storage(), *path, ploop::OpenMode::kReadOnly);
      ploop::Descriptor dd = ploop::Descriptor::load(storage(), *path);
      out["descriptor"] = *path;
      out["size"] = dd.size_sectors * ploop::kSectorSize;
      out["cluster_size"] = uint64_t{dd.blocksize} * ploop::kSectorSize;
      out["top_guid"] = dd.top_guid;
      nlohmann::json deltas = nlohmann::json::array();
      std::vector<std::string> chain = dd.chain();
      for (const auto& f : chain) {
        nlohmann::json j = delta_info(ploop::join_path(ploop::dir_of(*path), f));
        for (const auto& im : dd.images) {
          if (im.file == f) j["guid"] = im.guid;
        }
        deltas.push_back(j);
      }
      out["deltas"] = deltas;
    } else {
      nlohmann::json j = delta_info(*path);
      out["size"] = j["size"];
      out["cluster_size"] = j["cluster_size"];
      out["deltas"] = nlohmann::json::array({j});
    }
    {
      // The file system inside: probed from the disk's first MiB; live usage if it is mounted.
      auto stack = ploop::open_disk(storage(), *path, ploop::OpenMode::kReadOnly);
      std::vector<uint8_t> head(std::min<uint64_t>(1 << 20, stack->size()));
      stack->read(head.data(), 0, head.size());
      fsutil::FsInfo fi = fsutil::probe(head);
      if (!fi.type.empty()) {
        nlohmann::json f{{"type", fi.type}, {"uuid", fi.uuid}, {"label", fi.label}};
        if (fi.block_size) {
          f["size"] = fi.blocks * fi.block_size;
          f["free"] = fi.free_blocks * fi.block_size;
        }
        for (const auto& st : shim::list_states()) {
          struct statvfs v;
          if (!st.mountpoint.empty() && ploop::is_descriptor(*path) && st.dd == std::filesystem::canonical(*path).string() &&
              ::statvfs(st.mountpoint.c_str(), &v) == 0) {
            f["mountpoint"] = st.mountpoint;
            f["size"] = uint64_t{v.f_blocks} * v.f_frsize;
            f["free"] = uint64_t{v.f_bfree} * v.f_frsize;
          }
        }
        out["filesystem"] = f;
      }
    }
    if (*json) {
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      if (out.contains("descriptor")) std::printf("descriptor:   %s\n", out["descriptor"].get<std::string>().c_str());
      std::printf("size:         %s (%llu bytes)\n", human(out["size"]).c_str(),
                  static_cast<unsigned long long>(out["size"].get<uint64_t>()));
      std::printf("cluster size: %s\n", human(out["cluster_size"]).c_str());
      if (out.contains("filesystem")) {
        const auto& f = out["filesystem"];
        std::printf("filesystem:   %s, UUID %s%s%s", f["type"].get<std::string>().c_str(), f["uuid"].get<std::string>().c_str(),
                    f["label"].get<std::string>().empty() ? "" : ", label ", f["label"].get<std::string>().c_str());
        if (f.contains("size")) {
          std::printf(", %s used of %s", human(f["size"].get<uint64_t>() - f["free"].get<uint64_t>()).c_str(),
                      human(f["size"]).c_str());
        }
        std::printf("%s\n", f.contains("mountpoint") ? (" (mounted at " + f["mountpoint"].get<std::string>() + ")").c_str() : "");
      }
      for (const auto& j : out["deltas"]) {
        std::printf("delta:        %s  v%d  %s on disk, %llu clusters allocated%s\n",
                    j["file"].get<std::string>().c_str(), j["version"].get<int>(),
                    human(j["file_size"]).c_str(),
                    static_cast<unsigned long long>(j["allocated_clusters"].get<uint64_t>()),
                    j["in_use"].get<bool>() ? ", IN USE (not closed cleanly)" : "");
      }
    }
    rc = 0;
  });
}

}  // namespace cli
