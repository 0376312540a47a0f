#!/usr/bin/env bash
# The test command: installs dependencies, builds twice (optimised, and with AddressSanitizer +
# UndefinedBehaviorSanitizer), and runs every test in both builds: GoogleTest units and the
# interop scripts against qemu-img, qemu-io and OpenVZ's ploop. Exit 0 only if all pass.
#   bash scripts/test.sh            # everything
#   JOBS=4 bash scripts/test.sh     # more build parallelism
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}

bash scripts/setup-deps.sh

build() {  # build DIR [cmake args...]
  local dir=$1; shift
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS" -- --no-print-directory >/dev/null
}

echo "== build: release"
build build/release
echo "== build: asan+ubsan"
build build/asan -DPLOOP_SANITIZE=ON

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
echo "== tests: release"
(cd build/release && ctest --output-on-failure -j "$JOBS") || status=1
echo "== tests: asan+ubsan"
(cd build/asan && ctest --output-on-failure -j "$JOBS") || status=1
if [ "$status" -ne 0 ]; then
  echo "FAILED: see the output above"
  exit 1
fi
echo "all tests passed in both builds"
