#!/usr/bin/env bash
# The whole test suite: installs what is missing, then configures, builds and runs the tests in
#   build/release  (optimised, with samples; also checks the installed CMake package)
#   build/asan     (clang: AddressSanitizer + UndefinedBehaviorSanitizer, shorter stress counts)
#   build/tsan     (clang: ThreadSanitizer, shorter stress counts, and clang's thread-safety
#                   analysis of the annotated locks as errors, with its compile tests)
#   build/fuzz     (clang libFuzzer targets, each run for FUZZ_SECONDS, default 20)
# and fails if any of them fails. Quick the second time: every build folder is reused.
# The release build uses the default compiler (GCC on Debian), the sanitizer builds clang: it
# compiles a sanitized test about 2.5 times faster than GCC (7.8 s against 21.5 s for
# tests/remote/test_bridge.cpp at -O0), which keeps the whole run inside its time budget.
#
# Usage: scripts/test.sh [release|package|asan|tsan|fuzz ...]   (default: all of them)
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --with-interop --with-browser || { echo "test.sh: installing dependencies failed" >&2; exit 1; }

jobs=$(nproc 2>/dev/null || echo 2)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(release package asan tsan fuzz)

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_init_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:die_after_fork=0"  # test_nats_fork forks on purpose

total_passed=0
total_failed=0
failed_stages=()

# configure_and_test NAME [cmake args...]
configure_and_test() {
  local name=$1
  shift
  local dir="build/$name"
  # CMake cannot change the compiler of a configured folder: one configured with another compiler
  # (build/tsan used GCC before it used clang) is configured afresh.
  local want_cxx
  want_cxx=$(printf '%s\n' "$@" | sed -n 's/^-DCMAKE_CXX_COMPILER=//p' | tail -n 1)
  if [ -n "$want_cxx" ] && [ -f "$dir/CMakeCache.txt" ] &&
    ! grep -q "^CMAKE_CXX_COMPILER:[A-Z]*=\(.*/\)\?$want_cxx\$" "$dir/CMakeCache.txt"; then
    echo "=== $name: configured with another C++ compiler than $want_cxx: configuring afresh"
    rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
  fi
  echo "=== $name: configure and build ($dir)"
  if ! cmake -S . -B "$dir" -DNOTIFICATIONS_BUILD_BENCH=OFF "$@" >"$dir.configure.log" 2>&1; then
    cat "$dir.configure.log"
    failed_stages+=("$name(configure)")
    return
  fi
  if ! cmake --build "$dir" -j"$jobs" >"$dir.build.log" 2>&1; then
    tail -n 60 "$dir.build.log"
    failed_stages+=("$name(build)")
    return
  fi
  echo "=== $name: ctest"
  local log="$dir.ctest.log"
  # ctest_label_exclude (set for one call): labels of tests this stage does not run.
  # Two tests at a time (one per core): the tests against nats-server, most of the run, hold the
  # RESOURCE_LOCK nats_server (tests/CMakeLists.txt) and run one after another, while the others
  # take the second core. Their waits are bounded for hangs, not for speed, so sharing the cores
  # changes no result.
  (cd "$dir" && ctest --output-on-failure --timeout 600 -j"$jobs" ${ctest_label_exclude:+--label-exclude "$ctest_label_exclude"}) 2>&1 |
    tee "$log"
  local status=${PIPESTATUS[0]}
  local line
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -n 1)
  if [ -n "$line" ]; then
    local failed total
    failed=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/')
    total=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/')
    total_passed=$((total_passed + total - failed))
    total_failed=$((total_failed + failed))
  fi
  if [ "$status" -ne 0 ] || [ -z "$line" ]; then failed_stages+=("$name"); fi
}

# The installed package works for a consumer project (find_package(notifications CONFIG)).
package_check() {
  echo "=== package: install build/release and build tests/cmake_import against it"
  local prefix="$PWD/build/_install"
  rm -rf "$prefix" build/cmake_import
  if cmake --install build/release --prefix "$prefix" >build/package.log 2>&1 &&
    cmake -S tests/cmake_import -B build/cmake_import -DCMAKE_PREFIX_PATH="$prefix" >>build/package.log 2>&1 &&
    cmake --build build/cmake_import -j"$jobs" >>build/package.log 2>&1 &&
    ./build/cmake_import/consumer >>build/package.log 2>&1; then
    echo "package: consumer built and ran"
    total_passed=$((total_passed + 1))
  else
    tail -n 40 build/package.log
    total_failed=$((total_failed + 1))
    failed_stages+=("package")
  fi
}

# libFuzzer targets for a bounded time each (FUZZ_SECONDS, default 20 here).
fuzz_check() {
  echo "=== fuzz: every target for ${FUZZ_SECONDS:-20} s"
  if FUZZ_SECONDS=${FUZZ_SECONDS:-20} bash scripts/fuzz.sh; then
    total_passed=$((total_passed + 1))
  else
    total_failed=$((total_failed + 1))
    failed_stages+=("fuzz")
  fi
}

# Line tables only (-g1, -gline-tables-only): failures, sanitizer reports and backtraces keep
# their file:line, and each build is about a sixth faster than with full debug information
# (tests/remote/test_bridge.cpp: GCC -O2 15.5 s with -g, 13.0 s with -g1; clang TSan 12.2 s and
# 10.0 s). Configure a folder of your own for a debugger's full view.
release_flags="-O2 -g1 -DNDEBUG"
asan_flags="-O0 -gline-tables-only"
tsan_flags="-O2 -gline-tables-only -DNDEBUG"

mkdir -p build
stage_times=()
for stage in "${stages[@]}"; do
  stage_start=$(date +%s)
  case "$stage" in
    # The browser test runs here only, and may not skip (tests/browser/test_event_page.py).
    release) TEST_REQUIRE_BROWSER=1 configure_and_test release -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=$release_flags" ;;
    package) package_check ;;
    asan) ctest_label_exclude=browser configure_and_test asan -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=$asan_flags" \
            -DNOTIFICATIONS_SANITIZE=address \
            -DNOTIFICATIONS_TESTS_SHORT=ON -DNOTIFICATIONS_BUILD_SAMPLES=OFF -DNOTIFICATIONS_INSTALL=OFF ;;
    tsan) ctest_label_exclude=browser configure_and_test tsan -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
            "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=$tsan_flags" \
            -DNOTIFICATIONS_SANITIZE=thread -DNOTIFICATIONS_THREAD_SAFETY_ANALYSIS=ON \
            -DNOTIFICATIONS_TESTS_SHORT=ON -DNOTIFICATIONS_BUILD_SAMPLES=OFF -DNOTIFICATIONS_INSTALL=OFF ;;
    fuzz) fuzz_check ;;
    *) echo "test.sh: unknown stage '$stage' (expected release, package, asan, tsan or fuzz)" >&2; exit 2 ;;
  esac
  stage_times+=("$stage $(($(date +%s) - stage_start)) s")
  echo "=== $stage: took $(($(date +%s) - stage_start)) s"
done

echo
echo "stage times: $(IFS=','; echo "${stage_times[*]}" | sed 's/,/, /g')"
if [ ${#failed_stages[@]} -ne 0 ]; then
  echo "FAILED stages: ${failed_stages[*]}"
fi
echo "tests: $total_passed passed, $total_failed failed"
[ ${#failed_stages[@]} -eq 0 ]
