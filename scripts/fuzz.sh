#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang in build/fuzz and runs each one for a
# bounded time over a copy of its seed corpus (the repository is not modified). First every saved
# regression input in tests/fuzz/regressions/<name>/ is run once.
#
# Exits non-zero when a target crashes (or leaks, hangs, or runs out of memory) and prints the path
# of the input that did it; reproduce with `build/fuzz/tests/fuzz/fuzz_<name> <input>`.
#
# Usage: scripts/fuzz.sh [name ...]   (default: every target; names without "fuzz_", e.g. envelope)
# Environment:
#   FUZZ_SECONDS  seconds per target (default 30)
#   FUZZ_ARGS     extra libFuzzer flags, e.g. "-jobs=4 -workers=4"
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "fuzz.sh: FUZZ_SECONDS must be a positive whole number, got '$seconds'" >&2
  exit 2
fi
jobs=$(nproc 2>/dev/null || echo 2)
dir=build/fuzz
mkdir -p "$dir"

bash scripts/install-deps.sh || { echo "fuzz.sh: installing dependencies failed" >&2; exit 1; }

echo "=== fuzz: configure and build ($dir, clang)"
if ! cmake -S . -B "$dir" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNOTIFICATIONS_FUZZ=ON -DNOTIFICATIONS_BUILD_SAMPLES=OFF \
    -DNOTIFICATIONS_BUILD_BENCH=OFF -DNOTIFICATIONS_INSTALL=OFF >"$dir.configure.log" 2>&1; then
  cat "$dir.configure.log"
  exit 1
fi
list="$dir/tests/fuzz/targets.txt"
if [ ! -f "$list" ]; then
  echo "fuzz.sh: $list is missing: tests/CMakeLists.txt must contain add_subdirectory(fuzz)" >&2
  exit 1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(grep -v '^$' "$list")
fi
for name in "${targets[@]}"; do
  if ! grep -qx "$name" "$list"; then
    echo "fuzz.sh: unknown target '$name' (known: $(tr '\n' ' ' <"$list"))" >&2
    exit 2
  fi
done
build_targets=()
for name in "${targets[@]}"; do build_targets+=("fuzz_$name"); done
if ! cmake --build "$dir" -j"$jobs" --target "${build_targets[@]}" >"$dir.build.log" 2>&1; then
  tail -n 60 "$dir.build.log"
  exit 1
fi

# UBSan findings abort, so libFuzzer reports them as crashes.
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1"

failed=()
for name in "${targets[@]}"; do
  binary="$dir/tests/fuzz/fuzz_$name"
  work="$dir/work/$name"
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  if [ -d "tests/fuzz/corpus/$name" ]; then cp -R "tests/fuzz/corpus/$name/." "$work/corpus/"; fi
  flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
         -artifact_prefix="$work/artifacts/")
  if [ -f "tests/fuzz/$name.dict" ]; then flags+=(-dict="tests/fuzz/$name.dict"); fi

  regressions=()
  if [ -d "tests/fuzz/regressions/$name" ]; then
    mapfile -t regressions < <(find "tests/fuzz/regressions/$name" -type f | sort)
  fi
  if [ ${#regressions[@]} -gt 0 ]; then
    echo "=== fuzz_$name: ${#regressions[@]} regression inputs"
    if ! "$binary" "${regressions[@]}" >"$work/regressions.log" 2>&1; then
      tail -n 40 "$work/regressions.log"
      echo "fuzz.sh: fuzz_$name crashed on a regression input (see $work/regressions.log)"
      failed+=("$name")
      continue
    fi
  fi

  echo "=== fuzz_$name: ${seconds}s over $(find "$work/corpus" -type f | wc -l) seeds"
  # shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
  "$binary" "${flags[@]}" ${FUZZ_ARGS:-} "$work/corpus" >"$work/fuzz.log" 2>&1
  status=$?
  execs=$(grep -E '^stat::number_of_executed_units:' "$work/fuzz.log" | awk '{s += $2} END {print s + 0}')
  corpus=$(find "$work/corpus" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$work/fuzz.log"
    echo "fuzz.sh: fuzz_$name FAILED (exit $status) after $execs runs; crashing input:"
    find "$work/artifacts" -type f | sed 's/^/  /'
    echo "  log: $work/fuzz.log"
    echo "  keep it: copy the input to tests/fuzz/regressions/$name/ and add a test"
    failed+=("$name")
  else
    echo "fuzz_$name: ok, $execs runs, corpus $corpus inputs (in $work/corpus), log $work/fuzz.log"
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]}"
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, no crash"
