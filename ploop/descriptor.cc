#include "ploop/descriptor.h"

#include <pugixml.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "ploop/error.h"
#include "ploop/format.h"
#include "ploop/paths.h"

namespace ploop {
namespace {

constexpr uint64_t kMaxDescriptorBytes = 16 << 20;

[[noreturn]] void bad(const std::string& name, const std::string& what) {
  throw Error(Exit::kDescriptor, name + ": " + what);
}

uint64_t parse_number(const pugi::xml_node& parent, const char* child, const std::string& name, bool required) {
  pugi::xml_node n = parent.child(child);
  if (!n) {
    if (required) bad(name, std::string("missing <") + child + ">");
    return 0;
  }
  std::string t = n.text().as_string();
  t.erase(0, t.find_first_not_of(" \t\r\n"));
  t.erase(t.find_last_not_of(" \t\r\n") + 1);
  if (t.empty() || t.size() > 20 || t.find_first_not_of("0123456789") != std::string::npos) {
    bad(name, std::string("<") + child + "> is '" + t + "', expected a non-negative integer");
  }
  errno = 0;
  unsigned long long v = std::strtoull(t.c_str(), nullptr, 10);
  if (errno) bad(name, std::string("<") + child + "> is out of range");
  return v;
}

std::string trimmed_text(const pugi::xml_node& n) {
  std::string t = n.text().as_string();
  t.erase(0, t.find_first_not_of(" \t\r\n"));
  t.erase(t.find_last_not_of(" \t\r\n") + 1);
  return t;
}

uint32_t to_u32(uint64_t v, const char* what, const std::string& name) {
  if (v > UINT32_MAX) bad(name, std::string("<") + what + "> is out of range");
  return static_cast<uint32_t>(v);
}

void set_text(pugi::xml_node parent, const char* child, const std::string& value) {
  pugi::xml_node n = parent.child(child);
  if (!n) n = parent.append_child(child);
  n.text().set(value.c_str());
}

// An image file name must stay inside the descriptor's directory.
bool safe_file_name(const std::string& f) {
  if (f.empty() || f[0] == '/' || f.find('\0') != std::string::npos) return false;
  std::stringstream ss(f);
  std::string part;
  while (std::getline(ss, part, '/')) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

Descriptor::Descriptor() : doc_(std::make_unique<pugi::xml_document>()) {}
Descriptor::~Descriptor() = default;
Descriptor::Descriptor(Descriptor&&) noexcept = default;
Descriptor& Descriptor::operator=(Descriptor&&) noexcept = default;

bool valid_guid(const std::string& s) {
  if (s.size() != 38 || s.front() != '{' || s.back() != '}') return false;
  for (size_t i = 1; i < 37; ++i) {
    bool dash = i == 9 || i == 14 || i == 19 || i == 24;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

std::string new_guid() {
  std::random_device rd;
  uint8_t b[16];
  for (auto& x : b) x = static_cast<uint8_t>(rd());
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  char out[39];
  std::snprintf(out, sizeof out, "{%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x}", b[0],
                b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return out;
}

void Descriptor::set_size(uint64_t size) {
  size_sectors = size;
  Geometry g = chs_for(size);
  cylinders = g.cylinders;
  heads = g.heads;
  // OpenVZ writes Sectors as Disk_size / (Cylinders * Heads).
  uint64_t ch = uint64_t{g.cylinders} * g.heads;
  sectors = static_cast<uint32_t>(ch ? std::min<uint64_t>(size / ch, UINT32_MAX) : 0);
}

std::vector<const DescriptorShot*> Descriptor::children(const std::string& guid) const {
  std::vector<const DescriptorShot*> out;
  for (const auto& s : shots) {
    if (s.parent == guid) out.push_back(&s);
  }
  return out;
}

const DescriptorShot* Descriptor::root() const {
  for (const auto& s : shots) {
    if (s.parent == kNoGuid) return &s;
  }
  return nullptr;
}

Descriptor Descriptor::make(uint64_t size_sectors, uint32_t blocksize, const std::string& file) {
  Descriptor d;
  d.set_size(size_sectors);
  d.blocksize = blocksize;
  // A single-image disk: the image is the writable top, under OpenVZ's fixed top GUID.
  d.images.push_back({kTopGuid, "Compressed", file});
  d.shots.push_back({kTopGuid, kNoGuid, false});
  d.top_guid = kTopGuid;
  return d;
}

Descriptor Descriptor::load(Storage& storage, const std::string& path) {
  std::unique_ptr<File> f;
  try {
    f = storage.open(path, OpenMode::kReadOnly);
  } catch (const Error& e) {
    throw Error(Exit::kDescriptor, std::string(e.what()));
  }
  uint64_t n = f->size();
  if (n > kMaxDescriptorBytes) bad(path, "is " + std::to_string(n) + " bytes, too large for a descriptor");
  std::string text(n, '\0');
  f->read(text.data(), n, 0);
  return parse(text, path);
}

Descriptor Descriptor::parse(const std::string& text, const std::string& name) {
  Descriptor d;
  pugi::xml_parse_result r = d.doc_->load_buffer(text.data(), text.size());
  if (!r) bad(name, std::string("malformed XML at byte ") + std::to_string(r.offset) + ": " + r.description());
  pugi::xml_node root = d.doc_->document_element();
  if (!root) bad(name, "no root element");
  pugi::xml_node params = root.child("Disk_Parameters");
  if (!params) bad(name, "missing <Disk_Parameters>");
  d.size_sectors = parse_number(params, "Disk_size", name, true);
  d.cylinders = to_u32(parse_number(params, "Cylinders", name, false), "Cylinders", name);
  d.heads = to_u32(parse_number(params, "Heads", name, false), "Heads", name);
  d.sectors = to_u32(parse_number(params, "Sectors", name, false), "Sectors", name);
  d.pending_size = parse_number(params, "Pending_size", name, false);

  pugi::xml_node sd = root.child("StorageData");
  if (!sd) bad(name, "missing <StorageData>");
  size_t storages = std::distance(sd.children("Storage").begin(), sd.children("Storage").end());
  if (storages != 1) bad(name, "expected exactly one <Storage>, found " + std::to_string(storages));
  pugi::xml_node st = sd.child("Storage");
  d.blocksize = to_u32(parse_number(st, "Blocksize", name, true), "Blocksize", name);
  for (pugi::xml_node im : st.children("Image")) {
    DescriptorImage i{trimmed_text(im.child("GUID")), trimmed_text(im.child("Type")), trimmed_text(im.child("File"))};
    d.images.push_back(i);
  }
  pugi::xml_node snaps = root.child("Snapshots");
  if (!snaps) bad(name, "missing <Snapshots>");
  d.top_guid = trimmed_text(snaps.child("TopGUID"));
  for (pugi::xml_node s : snaps.children("Shot")) {
    DescriptorShot sh{trimmed_text(s.child("GUID")), trimmed_text(s.child("ParentGUID")),
                      static_cast<bool>(s.child("Temporary"))};
    d.shots.push_back(sh);
  }
  d.validate(name);
  return d;
}

void Descriptor::validate(const std::string& name) const {
  if (size_sectors == 0) bad(name, "<Disk_size> is zero");
  if (!valid_cluster_sectors(blocksize)) {
    bad(name, "<Blocksize> " + std::to_string(blocksize) + " is not a power of two from 64 to 131072 sectors");
  }
  if (images.empty()) bad(name, "no <Image> in <Storage>");
  if (images.size() != shots.size()) {
    bad(name, std::to_string(images.size()) + " images but " + std::to_string(shots.size()) + " snapshots");
  }
  std::set<std::string> guids;
  for (const auto& i : images) {
    if (!valid_guid(i.guid)) bad(name, "image GUID '" + i.guid + "' is not a {8-4-4-4-12} GUID");
    if (!guids.insert(i.guid).second) bad(name, "image GUID " + i.guid + " appears twice");
    if (i.type != "Compressed" && i.type != "Plain") {
      bad(name, "image " + i.guid + " has type '" + i.type + "', expected Compressed or Plain");
    }
    for (const auto& j : images) {
      if (&j != &i && j.file == i.file) bad(name, "image file '" + i.file + "' is named by two images");
    }
    if (!safe_file_name(i.file)) {
      bad(name, "image file '" + i.file + "' is not a name inside the descriptor's directory");
    }
  }
  std::set<std::string> shot_guids;
  int roots = 0;
  for (const auto& s : shots) {
    if (!guids.count(s.guid)) bad(name, "snapshot " + s.guid + " has no <Image>");
    if (!shot_guids.insert(s.guid).second) bad(name, "snapshot GUID " + s.guid + " appears twice");
    if (s.parent == kNoGuid) {
      ++roots;
    } else if (!guids.count(s.parent)) {
      bad(name, "snapshot " + s.guid + " has parent " + s.parent + ", which does not exist");
    }
  }
  if (roots != 1) bad(name, "expected exactly one root snapshot, found " + std::to_string(roots));
  const DescriptorShot* top = shot(top_guid);
  if (!top) bad(name, "<TopGUID> '" + top_guid + "' names no snapshot");
  if (top->temporary) bad(name, "<TopGUID> names a temporary snapshot");
  // Every snapshot must reach the root without revisiting a node.
  for (const auto& s : shots) {
    std::set<std::string> seen;
    for (const DescriptorShot* p = &s; p->parent != kNoGuid; p = shot(p->parent)) {
      if (!seen.insert(p->guid).second) bad(name, "snapshot parents form a cycle through " + p->guid);
    }
  }
}

const DescriptorImage* Descriptor::image(const std::string& guid) const {
  for (const auto& i : images) {
    if (i.guid == guid) return &i;
  }
  return nullptr;
}

const DescriptorShot* Descriptor::shot(const std::string& guid) const {
  for (const auto& s : shots) {
    if (s.guid == guid) return &s;
  }
  return nullptr;
}

std::vector<std::string> Descriptor::chain(const std::string& guid) const {
  std::vector<std::string> files;
  const DescriptorShot* s = shot(guid.empty() ? top_guid : guid);
  if (!s) throw Error(Exit::kParam, "no snapshot " + guid);
  for (size_t guard = 0; s; ++guard) {
    if (guard > shots.size()) throw Error(Exit::kDescriptor, "snapshot parents form a cycle");
    files.push_back(image(s->guid)->file);
    s = s->parent == kNoGuid ? nullptr : shot(s->parent);
  }
  std::reverse(files.begin(), files.end());
  return files;
}

void Descriptor::sync_to_xml() {
  if (!doc_->document_element()) {
    auto decl = doc_->append_child(pugi::node_declaration);
    decl.append_attribute("version") = "1.0";
    doc_->append_child("Parallels_disk_image");
  }
  pugi::xml_node root = doc_->document_element();
  pugi::xml_node params = root.child("Disk_Parameters");
  if (!params) params = root.append_child("Disk_Parameters");
  set_text(params, "Disk_size", std::to_string(size_sectors));
  set_text(params, "Cylinders", std::to_string(cylinders));
  set_text(params, "Heads", std::to_string(heads));
  set_text(params, "Sectors", std::to_string(sectors));
  if (!params.child("Padding")) set_text(params, "Padding", "0");
  if (pending_size) {
    set_text(params, "Pending_size", std::to_string(pending_size));
  } else if (params.child("Pending_size")) {
    params.remove_child("Pending_size");
  }

  pugi::xml_node sd = root.child("StorageData");
  if (!sd) sd = root.append_child("StorageData");
  pugi::xml_node st = sd.child("Storage");
  if (!st) st = sd.append_child("Storage");
  set_text(st, "Start", st.child("Start") ? trimmed_text(st.child("Start")) : "0");
  set_text(st, "End", std::to_string(size_sectors));
  set_text(st, "Blocksize", std::to_string(blocksize));
  // Reconcile <Image> elements by GUID, keeping unknown children of the ones that stay.
  std::map<std::string, pugi::xml_node> old_images;
  for (pugi::xml_node im : st.children("Image")) old_images[trimmed_text(im.child("GUID"))] = im;
  for (auto& [g, n] : old_images) {
    if (!image(g)) st.remove_child(n);
  }
  for (const auto& i : images) {
    pugi::xml_node n = old_images.count(i.guid) && image(i.guid) ? old_images[i.guid] : st.append_child("Image");
    set_text(n, "GUID", i.guid);
    set_text(n, "Type", i.type);
    set_text(n, "File", i.file);
  }

  pugi::xml_node snaps = root.child("Snapshots");
  if (!snaps) snaps = root.append_child("Snapshots");
  set_text(snaps, "TopGUID", top_guid);
  std::map<std::string, pugi::xml_node> old_shots;
  for (pugi::xml_node s : snaps.children("Shot")) old_shots[trimmed_text(s.child("GUID"))] = s;
  for (auto& [g, n] : old_shots) {
    if (!shot(g)) snaps.remove_child(n);
  }
  for (const auto& s : shots) {
    pugi::xml_node n = old_shots.count(s.guid) && shot(s.guid) ? old_shots[s.guid] : snaps.append_child("Shot");
    set_text(n, "GUID", s.guid);
    set_text(n, "ParentGUID", s.parent);
    if (s.temporary && !n.child("Temporary")) n.append_child("Temporary");
    if (!s.temporary && n.child("Temporary")) n.remove_child("Temporary");
  }
}

std::string Descriptor::to_string() {
  sync_to_xml();
  std::ostringstream out;
  doc_->save(out, "  ", pugi::format_default, pugi::encoding_utf8);
  return out.str();
}

void Descriptor::save(Storage& storage, const std::string& path) {
  validate(path);
  std::string text = to_string();
  std::string tmp = path + ".tmp";
  storage.remove(tmp);
  {
    auto f = storage.create(tmp);
    f->write(text.data(), text.size(), 0);
    f->sync();
  }
  storage.rename(tmp, path);
  storage.sync_dir(dir_of(path));
}

}  // namespace ploop
