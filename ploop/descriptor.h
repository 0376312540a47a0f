// DiskDescriptor.xml: OpenVZ's description of a disk (size, geometry, cluster size), its delta
// files and the snapshot tree over them. Read and written with pugixml.
//
// Promises:
// - load() validates what the rest of the library relies on and throws Error(kDescriptor) naming
//   the file and the problem: one Storage, a valid Blocksize, one Shot per Image, an existing
//   TopGUID that is not temporary, exactly one root, parents that exist, no cycles, and image
//   file names that stay inside the descriptor's directory.
// - save() keeps elements and attributes it does not know, and replaces the file atomically:
//   write DiskDescriptor.xml.tmp, fsync, rename, fsync the directory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ploop/file.h"

namespace pugi {
class xml_document;
}

namespace ploop {

inline constexpr const char* kTopGuid = "{5fbaabe3-6958-40ff-92a7-860e329aab41}";
inline constexpr const char* kNoGuid = "{00000000-0000-0000-0000-000000000000}";
inline constexpr const char* kDescriptorName = "DiskDescriptor.xml";

struct DescriptorImage {
  std::string guid;
  std::string type = "Compressed";  // Compressed: ploop delta; Plain: raw
  std::string file;                 // relative to the descriptor's directory
};

struct DescriptorShot {
  std::string guid;
  std::string parent;
  bool temporary = false;
};

class Descriptor {
 public:
  Descriptor();
  ~Descriptor();
  Descriptor(Descriptor&&) noexcept;
  Descriptor& operator=(Descriptor&&) noexcept;

  // A descriptor for a new disk of one image.
  static Descriptor make(uint64_t size_sectors, uint32_t blocksize_sectors, const std::string& file);
  static Descriptor load(Storage& storage, const std::string& path);
  // Parses text; `name` is used in error messages.
  static Descriptor parse(const std::string& text, const std::string& name);
  void save(Storage& storage, const std::string& path);
  std::string to_string();

  uint64_t size_sectors = 0;
  uint32_t cylinders = 0, heads = 0, sectors = 0;
  uint32_t blocksize = 0;  // cluster size in sectors
  // A resize in progress (sectors), recorded before the top delta changes size and cleared after;
  // 0 when none. Stored as <Pending_size> in <Disk_Parameters> (an element OpenVZ ignores).
  uint64_t pending_size = 0;
  std::vector<DescriptorImage> images;
  std::vector<DescriptorShot> shots;
  std::string top_guid;

  const DescriptorImage* image(const std::string& guid) const;
  const DescriptorShot* shot(const std::string& guid) const;
  // Snapshots whose parent is `guid`.
  std::vector<const DescriptorShot*> children(const std::string& guid) const;
  const DescriptorShot* root() const;
  // Sets the size and the geometry derived from it.
  void set_size(uint64_t size_sectors);
  // Image files from the root down to `guid` (the top if empty), base first.
  std::vector<std::string> chain(const std::string& guid = "") const;
  // Throws Error(kDescriptor) with `name` if the model breaks a rule listed above.
  void validate(const std::string& name) const;

 private:
  void sync_to_xml();
  std::unique_ptr<pugi::xml_document> doc_;
};

// A random GUID in OpenVZ's "{8-4-4-4-12}" lower-case form.
std::string new_guid();
bool valid_guid(const std::string& s);

}  // namespace ploop
