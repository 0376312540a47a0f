// The `ploop` command: OpenVZ's command names and main options over this project's library.
#include <cstdio>
#include <exception>
#include <string>

#include "ploop/error.h"
#include "tools/cli.h"

namespace {

// Error text can carry names from a descriptor or the command line: keep it one printable line.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\x%02x", c);
      out += esc;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ploop: container disk images (OpenVZ ploop v2 compatible)", "ploop"};
  app.require_subcommand(1);
  app.fallthrough(false);
  int rc = 0;
  cli::add_init(app, rc);
  cli::add_info(app, rc);
  cli::add_check(app, rc);
  cli::add_import(app, rc);
  cli::add_export(app, rc);
  cli::add_snapshot(app, rc);
  cli::add_resize(app, rc);
  cli::add_serve(app, rc);
  cli::add_mount(app, rc);
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      known = known || sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "ploop: unknown command '%s' (this build has: %s)\n", printable(argv[1]).c_str(), names.c_str());
      return static_cast<int>(ploop::Exit::kParam);
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    std::fputs(app.help("", CLI::AppFormatMode::All).c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "ploop: %s (see 'ploop --help')\n", printable(e.what()).c_str());
    return static_cast<int>(ploop::Exit::kParam);
  } catch (const ploop::Error& e) {
    std::fprintf(stderr, "ploop: %s\n", printable(e.what()).c_str());
    return static_cast<int>(e.code());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "ploop: out of memory\n");
    return static_cast<int>(ploop::Exit::kMemory);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ploop: %s\n", printable(e.what()).c_str());
    return static_cast<int>(ploop::Exit::kSys);
  }
  return rc;
}
