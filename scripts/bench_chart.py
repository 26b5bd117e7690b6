#!/usr/bin/env python3
"""Draws the benchmark chart of the README (docs/benchmarks.svg) from one run of scripts/bench.sh.

Usage: scripts/bench_chart.py [--out docs/benchmarks.svg] [RUN_DIR]

RUN_DIR (default build/bench) holds what scripts/bench.sh wrote: notifier.json (Google Benchmark's
JSON of bench_notifier) and lines.jsonl (the {"bench": ...} lines of bench_forward, bench_nats,
bench_sqlite_transport and bench_durable). Every bar is the bus against a baseline measured in the
same run, as speed relative to it (1.0 = as fast as the baseline, higher is better): a throughput
ratio as it is, a cost ratio (CPU time, latency) turned over. The machine is shared and noisy, so
only such ratios are drawn, never absolute times. A figure the run did not produce is left out and
named on stderr. Needs only Python 3 (the SVG is written by hand).
"""
import argparse
import html
import json
import os
import re
import statistics
import sys


def google_benchmark_medians(path):
    """CPU ns per iteration, by benchmark family, from the median aggregate (or the single run)."""
    to_ns = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
    with open(path) as f:
        runs = json.load(f)["benchmarks"]
    medians = {}
    for run in runs:
        if run.get("error_occurred"):
            continue
        name = re.sub(r"/(real_time|threads:\d+)", "", run.get("run_name", run["name"]))
        kind = run.get("aggregate_name")
        if kind == "median" or (kind is None and name not in medians):
            medians[name] = run["cpu_time"] * to_ns[run.get("time_unit", "ns")]
    return medians


def bench_lines(path):
    """The {"bench": ...} objects of a JSON-lines file, grouped by their "bench" name."""
    by_name = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit("bench_chart: %s line %d is not JSON: %s" % (path, number, e))
            if isinstance(row, dict) and "bench" in row:
                by_name.setdefault(row["bench"], []).append(row)
    return by_name


def median_of(rows, key, where=None):
    values = [r[key] for r in rows if key in r and (where is None or where(r))]
    return statistics.median(values) if values else None


def bars_from(medians, lines):
    """(group, label, value, baseline name) for every figure the run produced."""
    bars, missing = [], []

    def add(group, label, value, baseline):
        if value is None:
            missing.append(label)
        else:
            bars.append((group, label, value, baseline))

    def cost(bus, base):  # CPU per event, lower is better: speed = base / bus
        return medians[base] / medians[bus] if bus in medians and base in medians else None

    add("local dispatch", "no listener", cost("BM_Instrument_NoSubscriber", "BM_RawSignals2/0"),
        "Boost.Signals2 call, no slot")
    add("local dispatch", "1 listener", cost("BM_Instrument/1", "BM_RawSignals2/1"),
        "Boost.Signals2, 1 slot")
    add("local dispatch", "10 listeners", cost("BM_Instrument/10", "BM_RawSignals2/10"),
        "Boost.Signals2, 10 slots")

    nats = lines.get("nats_forward", [])
    add("NATS", "forward, headers", median_of(nats, "ratio", lambda r: r.get("headers") is True),
        "raw cnats publish loop")
    add("NATS", "forward, bodies only", median_of(nats, "ratio", lambda r: r.get("headers") is False),
        "raw cnats publish loop")
    ping = lines.get("nats_pingpong", [])
    raw_p50, bus_p50 = median_of(ping, "raw_p50_us"), median_of(ping, "bus_p50_us")
    add("NATS", "round trip p50", raw_p50 / bus_p50 if raw_p50 and bus_p50 else None,
        "raw cnats ping-pong")

    sqlite = lines.get("sqlite_transport", [])
    bus, raw = median_of(sqlite, "events_per_s"), median_of(sqlite, "raw_events_per_s")
    add("SQLite", "sqlite:// events/s", bus / raw if bus and raw else None,
        "raw SQLite producer/poller")
    bus, raw = median_of(sqlite, "p50_ms"), median_of(sqlite, "raw_p50_ms")
    add("SQLite", "sqlite:// latency p50", raw / bus if bus and raw else None,
        "raw SQLite producer/poller")
    outbox = lines.get("sqlite_outbox", [])
    bus = median_of(outbox, "outbox_cpu_us_per_event", lambda r: r.get("mode") == "async")
    raw = median_of(outbox, "raw_insert_cpu_us_per_row", lambda r: r.get("mode") == "async")
    add("SQLite", "outbox async, CPU", raw / bus if bus and raw else None, "raw batched INSERT")
    durable = lines.get("durable_handler", [])
    add("SQLite", "durable handler + inbox", median_of(durable, "ratio"),
        "the same handler without the inbox")
    return bars, missing


def svg(bars, title):
    width, left, right, row, top = 900, 260, 40, 26, 70
    groups = []
    for group, *_ in bars:
        if group not in groups:
            groups.append(group)
    height = top + row * (len(bars) + len(groups)) + 60
    scale_max = max([1.25] + [b[2] * 1.1 for b in bars])
    plot = width - left - right

    def x(value):
        return left + plot * min(value, scale_max) / scale_max

    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
        'font-size="13">' % (width, height),
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="%d" y="28" font-size="16" font-weight="bold">%s</text>' % (left, html.escape(title)),
        '<text x="%d" y="48" fill="#555">speed relative to a baseline measured in the same run '
        '(1.0 = as fast; higher is better)</text>' % left,
    ]
    y = top
    for group in groups:
        out.append('<text x="10" y="%d" font-weight="bold">%s</text>' % (y + 17, html.escape(group)))
        y += row
        for g, label, value, baseline in bars:
            if g != group:
                continue
            colour = "#2b7bb9" if value >= 1.0 else "#e08a1e"
            out.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left - 8, y + 17, html.escape(label)))
            out.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"><title>%s: %.3f against %s'
                       '</title></rect>' % (left, y + 5, x(value) - left, row - 10, colour,
                                            html.escape(label), value, html.escape(baseline)))
            out.append('<text x="%.1f" y="%d">%.2fx <tspan fill="#777">vs %s</tspan></text>'
                       % (x(value) + 6, y + 17, value, html.escape(baseline)))
            y += row
    one = x(1.0)
    out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333" stroke-dasharray="4 3"/>'
               % (one, top - 6, one, y))
    out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#333">1.0 = baseline</text>' % (one, y + 18))
    out.append('</svg>')
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description="Draws docs/benchmarks.svg from one scripts/bench.sh run.")
    parser.add_argument("run_dir", nargs="?", default="build/bench")
    parser.add_argument("--out", default="docs/benchmarks.svg")
    parser.add_argument("--title", default="notifications against same-run baselines")
    args = parser.parse_args()
    notifier = os.path.join(args.run_dir, "notifier.json")
    jsonl = os.path.join(args.run_dir, "lines.jsonl")
    for path in (notifier, jsonl):
        if not os.path.isfile(path):
            sys.exit("bench_chart: %s is missing: run scripts/bench.sh first (it writes both files)" % path)
    bars, missing = bars_from(google_benchmark_medians(notifier), bench_lines(jsonl))
    if not bars:
        sys.exit("bench_chart: the run in %s holds none of the figures drawn" % args.run_dir)
    for label in missing:
        print("bench_chart: not in this run, left out: %s" % label, file=sys.stderr)
    with open(args.out, "w") as f:
        f.write(svg(bars, args.title))
    for group, label, value, baseline in bars:
        print("%-16s %-26s %6.2fx vs %s" % (group, label, value, baseline))
    print("bench_chart: wrote %s (%d bars)" % (args.out, len(bars)))


if __name__ == "__main__":
    main()
