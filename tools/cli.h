// Shared pieces of the `ploop` command: registering subcommands, parsing sizes, showing progress,
// and the exit-code contract (every failure is one line on stderr and a ploop SYSEXIT_* code).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <memory>
#include <string>

#include "ploop/file.h"
#include "ploop/progress.h"

namespace cli {

// Each subcommand registers itself on the app; its callback sets the exit code it wants.
void add_init(CLI::App& app, int& rc);
void add_info(CLI::App& app, int& rc);
void add_check(CLI::App& app, int& rc);
void add_import(CLI::App& app, int& rc);
void add_export(CLI::App& app, int& rc);
void add_snapshot(CLI::App& app, int& rc);  // snapshot, snapshot-list/-switch/-delete/-merge
void add_resize(CLI::App& app, int& rc);
void add_serve(CLI::App& app, int& rc);
void add_mount(CLI::App& app, int& rc);  // mount, umount, list

// "10G", "512M", "100" (sectors, as ploop) -> bytes. Throws ploop::Error(kParam).
uint64_t parse_size(const std::string& text);

// A progress printer on stderr when it is a terminal; an empty function otherwise.
ploop::Progress terminal_progress(const std::string& label);

ploop::Storage& storage();

}  // namespace cli
