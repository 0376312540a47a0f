// Mounting a disk: start its daemon (detached; it outlives the command), attach a block device
// over the daemon's front end, mount the file system — and the exact reverse. Every step that
// fails undoes the ones before it, so a failed mount leaves nothing behind.
//
// Front ends (front_end.h): ublk if /dev/ublk-control opens, else kernel NBD if the nbd module is
// loaded, else a FUSE file with a loop device (direct I/O) on it; MountOptions::device overrides.
// For ublk and nbd the daemon creates the device itself and names it in its ready line.
//
// A daemon that died: umount removes its ublk device (DEL_DEV) or disconnects its nbd device
// first, so that the file system's pending I/O fails instead of hanging, then detaches the file
// system lazily. A mount of a disk whose daemon died with a recoverable ublk device (see
// ublk_device.h) starts a new daemon that reattaches to that device, the file system staying
// mounted; otherwise it cleans up the leftovers and mounts afresh.
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
  std::string device;       // "" (the best available), "ublk", "nbd" or "fuse"
};

MountState mount_disk(const MountOptions& opts);

// Undoes a mount named by its descriptor or its mount point. Works when the daemon was killed:
// then its device is removed, the file system is detached lazily, the loop device and the dead
// FUSE mount are removed, and the image (its in-use flag still set) is checked by the next mount.
MountState umount_disk(const std::string& dd_or_mountpoint);

// Exposes an open stack as a block device inside this process for the duration of `fn` (used by
// `ploop init -t ext4` to make the file system): ublk, else kernel NBD, else FUSE + loop.
void with_block_device(ploop::Stack& stack, const std::function<void(const std::string& device)>& fn);

}  // namespace shim
