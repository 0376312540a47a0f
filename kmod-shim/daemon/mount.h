// Mounting a disk: start its daemon (detached; it outlives the command), attach a block device
// over the daemon's front end, mount the file system — and the exact reverse. Every step that
// fails undoes the ones before it, so a failed mount leaves nothing behind.
//
// Front ends: on a machine with neither ublk nor kernel NBD (this one), the daemon exports the disk
// as a file in a private FUSE mount and a loop device (direct I/O) sits on it. ublk and kernel NBD
// attach are a separate piece of work; asking for them here is refused with a clear message.
#pragma once

#include <functional>
#include <string>

#include "kmod-shim/daemon/registry.h"
#include "ploop/stack.h"

namespace shim {

struct MountOptions {
  std::string dd;           // DiskDescriptor.xml
  std::string mountpoint;   // "" attaches the device only
  bool read_only = false;
  std::string device;       // "", "fuse", "nbd" or "ublk"
};

MountState mount_disk(const MountOptions& opts);

// Undoes a mount named by its descriptor or its mount point. Works when the daemon was killed:
// then the file system is detached lazily, the loop device and the dead FUSE mount are removed,
// and the image (its in-use flag still set) is checked by the next mount.
MountState umount_disk(const std::string& dd_or_mountpoint);

// Exposes an open stack as a block device inside this process for the duration of `fn` (used by
// `ploop init -t ext4` to make the file system).
void with_block_device(ploop::Stack& stack, const std::function<void(const std::string& device)>& fn);

}  // namespace shim
