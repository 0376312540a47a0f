// Moving a disk's contents between a raw file and an image: import (a raw disk file into a new
// image and descriptor) and export (what a disk reads, as a sparse raw file).
// Both copy cluster by cluster; holes and all-zero clusters stay unallocated / unwritten.
#pragma once

#include <cstdint>
#include <string>

#include "ploop/disk.h"
#include "ploop/file.h"
#include "ploop/progress.h"

namespace ploop {

struct TransferStats {
  uint64_t bytes_total = 0;   // virtual size covered
  uint64_t bytes_copied = 0;  // non-zero data actually written
};

// Creates `image_path` (and DiskDescriptor.xml beside it) with the raw file's contents. The disk
// size is the raw size rounded up to a cluster. Refuses if the image or descriptor exists. On
// failure the new files are removed, so nothing half-made is left behind.
TransferStats import_raw(Storage& storage, const std::string& raw_path, const std::string& image_path,
                         uint32_t cluster_sectors, const Progress& progress = {});

// Writes what the disk at `disk_path` (descriptor or delta) reads into a new file `out_path` of
// the disk's size; unallocated and all-zero clusters are left as holes. Refuses if `out_path`
// exists. With `verify`, every read from a sealed delta is checked against its seal, and the first
// mismatch fails the export (naming the delta, cluster and offset) and removes `out_path`.
TransferStats export_raw(Storage& storage, const std::string& disk_path, const std::string& out_path,
                         const Progress& progress = {}, bool verify = false);

}  // namespace ploop
