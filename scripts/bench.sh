#!/usr/bin/env bash
# Builds and runs the dispatch micro-benchmarks (bench/bench_notifier.cpp) in Release, writes the
# results to build/bench/notifier.json and prints the ratio goals computed from the medians; then
# the end-to-end benchmarks (their JSON lines also in build/bench/lines.jsonl), and draws the
# chart docs/benchmarks.svg from that run (scripts/bench_chart.py).
# See docs/benchmarks.md.
#
# Usage: scripts/bench.sh [extra Google Benchmark flags, e.g. --benchmark_min_time=1]
# Environment: BENCH_REPETITIONS (default 5).
#
# A missed goal prints MISS but does not fail the script: this is a measurement, not a test.
# The script fails only when the build or the benchmark run itself fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

build_dir="build/bench"
json="$build_dir/notifier.json"
repetitions="${BENCH_REPETITIONS:-5}"

scripts/install-deps.sh

# The threaded benchmarks need both cores: a busy machine shows up as a MISS there first.
echo "bench: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
  -DNOTIFICATIONS_BUILD_BENCH=ON -DNOTIFICATIONS_BUILD_TESTS=OFF \
  -DNOTIFICATIONS_BUILD_SAMPLES=OFF -DNOTIFICATIONS_SANITIZE= >/dev/null
cmake --build "$build_dir" --target bench_notifier --parallel "$(nproc)"

"$build_dir/bench/bench_notifier" \
  --benchmark_format=console \
  --benchmark_out="$json" --benchmark_out_format=json \
  --benchmark_repetitions="$repetitions" \
  --benchmark_report_aggregates_only=true \
  "$@"
echo "bench: load average after the run $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$json" <<'PY'
import json
import re
import sys

with open(sys.argv[1]) as f:
    runs = json.load(f)["benchmarks"]

TO_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def family(run_name):
    # "BM_Instrument_2Threads/real_time/threads:2" -> "BM_Instrument_2Threads"
    return re.sub(r"/(real_time|threads:\d+)", "", run_name)


# Medians by benchmark name: the "median" aggregate, or the single run without repetitions.
median = {}
cv = {}
for run in runs:
    if run.get("error_occurred"):
        continue
    name = family(run.get("run_name", run["name"]))
    kind = run.get("aggregate_name")
    row = {
        "cpu_ns": run["cpu_time"] * TO_NS[run.get("time_unit", "ns")],
        "real_ns": run["real_time"] * TO_NS[run.get("time_unit", "ns")],
        "items_per_second": run.get("items_per_second"),
    }
    if kind == "median" or (kind is None and name not in median):
        median[name] = row
    elif kind == "cv":
        cv[name] = run["cpu_time"]  # a fraction: stddev / mean of the repetitions

print()
print("Medians (%s)" % sys.argv[1])
print("%-36s %10s %10s %14s %7s" % ("benchmark", "cpu ns", "real ns", "items/s", "cv"))
for name, row in median.items():
    items = row["items_per_second"]
    print("%-36s %10.2f %10.2f %14s %7s" % (
        name, row["cpu_ns"], row["real_ns"],
        "%.3fM" % (items / 1e6) if items else "-",
        "%.1f%%" % (cv[name] * 100) if name in cv else "-"))


def cpu_ratio(a, b):
    return median[a]["cpu_ns"] / median[b]["cpu_ns"]


def throughput_ratio(a, b):
    return median[a]["items_per_second"] / median[b]["items_per_second"]


# (label, how, numerator, denominator, comparison, target); None as comparison: reference only.
goals = [
    ("cpu  NoSubscriber / RawSignals2/0", cpu_ratio,
     "BM_Instrument_NoSubscriber", "BM_RawSignals2/0", "<=", 0.5),
    ("cpu  NoSubscriber_Handle / RawSignals2/0", cpu_ratio,
     "BM_Instrument_NoSubscriber_Handle", "BM_RawSignals2/0", "<=", 0.1),
    ("cpu  Instrument/1 / RawSignals2/1", cpu_ratio,
     "BM_Instrument/1", "BM_RawSignals2/1", "<=", 2.0),
    ("cpu  Instrument/10 / RawSignals2/10", cpu_ratio,
     "BM_Instrument/10", "BM_RawSignals2/10", "<=", 1.5),
    ("items/s  Instrument_2Threads / Instrument/1", throughput_ratio,
     "BM_Instrument_2Threads", "BM_Instrument/1", ">=", 1.0),
    ("items/s  RawSignals2_2Threads / RawSignals2/1", throughput_ratio,
     "BM_RawSignals2_2Threads", "BM_RawSignals2/1", None, None),
    # CPU spent per item with two threads against one: about 1 when the threads do not contend
    # (unlike items/s, barely moved by other processes taking a core away).
    ("cpu/item  Instrument_2Threads / Instrument/1", cpu_ratio,
     "BM_Instrument_2Threads", "BM_Instrument/1", "<=", 1.1),
    ("cpu/item  RawSignals2_2Threads / RawSignals2/1", cpu_ratio,
     "BM_RawSignals2_2Threads", "BM_RawSignals2/1", None, None),
    # Against the in-repo floor: std::function listeners in a std::vector called with an event
    # built with the same clock reads and fields (issue 12).
    ("cpu  Instrument/1 / Floor_Built/1", cpu_ratio,
     "BM_Instrument/1", "BM_Floor_Built/1", "<=", 1.3),
    ("cpu  Instrument/10 / Floor_Built/10", cpu_ratio,
     "BM_Instrument/10", "BM_Floor_Built/10", "<=", 1.15),
    ("cpu  Instrument_Handle/1 / Floor_Built/1", cpu_ratio,
     "BM_Instrument_Handle/1", "BM_Floor_Built/1", "<=", 1.3),
    ("cpu  Instrument_Handle/10 / Floor_Built/10", cpu_ratio,
     "BM_Instrument_Handle/10", "BM_Floor_Built/10", "<=", 1.15),
    # A Handle keeps its resolved listeners: with listeners it is cheaper than by name.
    ("cpu  Instrument_Handle/1 / Instrument/1", cpu_ratio,
     "BM_Instrument_Handle/1", "BM_Instrument/1", "<", 1.0),
    ("cpu  Instrument_Handle/10 / Instrument/10", cpu_ratio,
     "BM_Instrument_Handle/10", "BM_Instrument/10", "<", 1.0),
    ("cpu  Clocks / Floor_Built/1", cpu_ratio,
     "BM_Clocks", "BM_Floor_Built/1", None, None),
]

print()
print("%-46s %8s %8s  %s" % ("goal", "ratio", "target", "result"))
misses = 0
for label, how, a, b, op, target in goals:
    if a not in median or b not in median:
        print("%-46s %8s %8s  %s" % (label, "-", "", "n/a (not run)"))
        continue
    ratio = how(a, b)
    if op is None:
        print("%-46s %8.3f %8s  %s" % (label, ratio, "", "reference"))
        continue
    ok = {"<=": ratio <= target, "<": ratio < target, ">=": ratio >= target}[op]
    misses += 0 if ok else 1
    print("%-46s %8.3f %8s  %s" % (label, ratio, op + " " + str(target), "PASS" if ok else "MISS"))
print()
print("%d goal(s) missed" % misses if misses else "all goals met")
PY

# End-to-end forwarding: in memory (bench_forward), over NATS next to a raw cnats baseline
# (bench_nats, which starts its own nats-server), and over sqlite:// between two processes next to
# a raw SQLite producer/poller pair (bench_sqlite_transport, with its goal lines). Each prints one
# JSON line per measurement; what they measure and the goals are in the comments at the top of
# bench/bench_forward.cpp, bench/bench_nats.cpp and bench/bench_sqlite_transport.cpp.
# Their lines are also kept in build/bench/lines.jsonl, from which scripts/bench_chart.py draws
# docs/benchmarks.svg (the README's chart) at the end.
cmake --build "$build_dir" --target bench_forward bench_nats bench_sqlite_transport bench_sqlite_outbox bench_durable bench_sse \
  --parallel "$(nproc)"
lines="$build_dir/lines.jsonl"
: > "$lines"
echo "bench: load average before bench_forward $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$build_dir/bench/bench_forward" | tee -a "$lines"
echo "bench: load average before bench_nats $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$build_dir/bench/bench_nats" | tee -a "$lines"
echo "bench: load average before bench_sqlite_transport $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$build_dir/bench/bench_sqlite_transport" | tee -a "$lines"
# The SQLite outbox against raw batched INSERTs of the same rows (bench_sqlite_outbox, issue 13).
echo "bench: load average before bench_sqlite_outbox $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$build_dir/bench/bench_sqlite_outbox" | tee -a "$lines"
# A durable handler through the SQLite inbox against the same subscription without it
# (bench_durable, issue 15): what exactly-once costs per event.
echo "bench: load average before bench_durable $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$build_dir/bench/bench_durable" | tee -a "$lines"
# Server-Sent Events of the bus to 1, 100 and 1,000 loopback clients (bench_sse, issue 19): fan-out
# throughput, receive latency, CPU per event per client, and instrument() p99 with the clients
# streaming against the same stream without clients.
echo "bench: load average before bench_sse $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$build_dir/bench/bench_sse" | tee -a "$lines"
echo "bench: load average after the run $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# The chart, from this run only (BENCH_CHART=path to write it elsewhere than docs/benchmarks.svg).
python3 scripts/bench_chart.py --out "${BENCH_CHART:-docs/benchmarks.svg}" "$build_dir"
