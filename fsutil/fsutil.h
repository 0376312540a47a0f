// File systems on block devices, for the mount path: create (mke2fs), check (e2fsck), probe
// (libblkid), mount and unmount, freeze and thaw. Nothing here knows about images: it is given a
// device path or the first bytes of a disk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fsutil {

// Runs a program with arguments (no shell); returns its exit status, or throws ploop::Error(kSys)
// if it could not be started. Its output goes to stderr, or into `output` if given.
int run(const std::vector<std::string>& argv, std::string* output = nullptr);

// mkfs.ext4 on `device`. Throws ploop::Error (exit 24, SYSEXIT_MKFS) on failure.
void make_ext4(const std::string& device, const std::string& label = "");

struct FsInfo {
  std::string type, uuid, label;  // empty if no file system was recognised
  uint64_t block_size = 0, blocks = 0, free_blocks = 0;  // ext2/3/4 only
};
// Probes the first bytes of a disk (1 MiB is enough for ext4) with libblkid; for ext2/3/4 also
// reads the size and free-block counts from the superblock.
FsInfo probe(const std::vector<uint8_t>& head);

// mount(2) / umount2(2). Errors are ploop::Error(21 SYSEXIT_MOUNT / 22 SYSEXIT_UMOUNT).
void mount_fs(const std::string& device, const std::string& dir, const std::string& type, bool read_only,
              const std::string& options = "");
void umount_fs(const std::string& dir, bool lazy = false);
bool is_mountpoint(const std::string& dir);

// FIFREEZE / FITHAW on a mounted file system, for consistent online snapshots.
void freeze(const std::string& dir);
void thaw(const std::string& dir);

}  // namespace fsutil
