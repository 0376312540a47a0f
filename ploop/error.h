// Errors of the library: one exception type carrying an exit category and a message with context
// (file, offset, what was expected). The categories are OpenVZ ploop's documented exit codes, so
// the CLI can exit with the same numbers ploop users script against.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ploop {

// Exit codes, numbered as OpenVZ ploop's SYSEXIT_* (ploop(8), "EXIT STATUS").
enum class Exit : int {
  kOk = 0,
  kCreate = 1,       // could not create a file
  kDevice = 2,       // could not set up or reach the block device (daemon, loop, nbd, ublk)
  kOpen = 4,         // could not open a file (missing, permission)
  kMemory = 5,       // out of memory
  kRead = 6,         // I/O error while reading
  kWrite = 7,        // I/O error while writing (including no space left)
  kFormat = 11,      // corrupted or unsupported image
  kSys = 12,         // other system error
  kFsync = 16,       // fsync failed
  kBusy = 17,        // another operation is in progress
  kTruncate = 19,    // ftruncate failed
  kMount = 21,       // could not mount the file system
  kUmount = 22,      // could not unmount it
  kLock = 23,        // could not take the image lock
  kMkfs = 24,        // could not create the file system
  kRename = 28,      // rename failed
  kInUse = 37,       // image is in use (in-use flag set, or locked by a writer)
  kParam = 38,       // bad parameter
  kDescriptor = 39,  // DiskDescriptor.xml is missing or malformed
  kNotMounted = 40,  // the disk is not mounted
};

class Error : public std::runtime_error {
 public:
  Error(Exit code, const std::string& what, int sys_errno = 0)
      : std::runtime_error(what), code_(code), errno_(sys_errno) {}
  Exit code() const { return code_; }
  // The operating system's errno behind the error, or 0 if it did not come from a system call.
  int sys_errno() const { return errno_; }

 private:
  Exit code_;
  int errno_;
};

// Throws Error(code, "<what>: <path>[ at offset N]: strerror(err)").
[[noreturn]] void throw_errno(Exit code, int err, const std::string& what, const std::string& path,
                              int64_t offset = -1);

}  // namespace ploop
