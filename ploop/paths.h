// Path helpers shared by the descriptor and the operations: the directory of a file, joining a
// directory and a relative name. Purely lexical; nothing touches the file system.
#pragma once

#include <string>

namespace ploop {

inline std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

inline std::string base_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

inline std::string join_path(const std::string& dir, const std::string& name) {
  if (name.empty() || name[0] == '/' || dir.empty() || dir == ".") return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

}  // namespace ploop
