#!/usr/bin/env python3
"""Overload handling of two builds side by side (docs/overload.md): the same fixed open-loop rates
offered to one node of each build in turn, so that a change to shedding is judged against its
baseline in the same run.

Each node runs --threads 1 pinned to CPU 0 (with --node-cpu, in a cgroup with that CPU quota, as
bench/overload_report.py does); throttlex-bench (of the first build) runs pinned to CPU 1. Per
round and rate, build A then build B (B first in even rounds). Reported per build and rate:
medians over rounds of goodput (decided checks/s), the share of checks shed, p99 of decided checks
and the generator's lateness p99 (near the p99: the generator, not the node, was measured).

Bounded: rounds x rates x 2 runs of --seconds (+1 s warm-up) each; every process is stopped by PID.
Usage: bench/shed_ab.py --a build-before --b build --rates 120000,200000 [--rounds 5]
       [--seconds 5] [--node-cpu 10] [--priority normal]
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overload_report as ov  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="baseline build folder (with bin/throttlexd)")
    ap.add_argument("--b", required=True, help="build folder to compare")
    ap.add_argument("--rates", required=True, help="offered checks/s, comma separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--node-cpu", type=float, default=0)
    ap.add_argument("--priority", default="normal", choices=["normal", "sheddable", "critical"])
    args = ap.parse_args()
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        sys.exit("--rates: numbers separated by commas, e.g. 120000,200000")
    if not rates or any(r <= 0 for r in rates) or not 1 <= args.rounds <= 50:
        sys.exit("--rates must be positive and --rounds within 1 and 50")
    if not 0 <= args.node_cpu <= 100:
        sys.exit("--node-cpu is a percentage: 1 to 100 (0: no limit)")
    builds = {"A": Path(args.a) / "bin", "B": Path(args.b) / "bin"}
    for name, b in builds.items():
        if not (b / "throttlexd").is_file():
            sys.exit(f"build {name}: no {b / 'throttlexd'}")
    period = ov.shortest_period_us(args.node_cpu) if args.node_cpu > 0 else 0
    share = ov.CpuShare(args.node_cpu, period) if args.node_cpu > 0 else None
    runs = {(n, r): [] for n in builds for r in rates}
    try:
        with tempfile.TemporaryDirectory(prefix="throttlex-shed-ab-") as tmp:
            for i in range(args.rounds):
                order = ["A", "B"] if i % 2 == 0 else ["B", "A"]
                for name in order:
                    node = ov.Node(builds[name], Path(tmp), [], share)
                    try:
                        for rate in rates:
                            r = ov.bench(builds["A"], node, args.seconds, rate=rate,
                                         priority=args.priority)
                            runs[(name, rate)].append(r)
                            print(f"round {i + 1} {name} {rate:.0f}/s: goodput {r['goodput']:.0f}"
                                  f" shed {r['shed']} p99 {r['p99_us'] / 1000:.1f} ms",
                                  file=sys.stderr)
                    finally:
                        node.stop()
    finally:
        if share is not None:
            share.remove()
    cpu = f", {args.node_cpu:g}% of CPU 0 in {period} µs periods" if share else ""
    print(f"medians of {args.rounds} rounds of {args.seconds} s{cpu}; priority {args.priority}")
    print(f"{'build':5} {'offered/s':>10} {'goodput/s':>10} {'shed %':>7} {'p99 ms':>8} "
          f"{'gen late p99 ms':>16}")
    for rate in rates:
        for name in builds:
            rs = runs[(name, rate)]
            med = lambda f: statistics.median(f(r) for r in rs)
            shed = med(lambda r: 100 * r["shed"] / max(1, r["offered"] * args.seconds))
            print(f"{name:5} {med(lambda r: r['offered']):10.0f} {med(lambda r: r['goodput']):10.0f}"
                  f" {shed:7.1f} {med(lambda r: r['p99_us']) / 1000:8.2f}"
                  f" {med(lambda r: r['late_us']) / 1000:16.2f}")
        a = statistics.median(r["goodput"] for r in runs[("A", rate)])
        b = statistics.median(r["goodput"] for r in runs[("B", rate)])
        ratios = [rb["goodput"] / ra["goodput"] for ra, rb in
                  zip(runs[("A", rate)], runs[("B", rate)]) if ra["goodput"] > 0]
        if ratios:
            print(f"      goodput B/A: {b / a if a else 0:.2f} (median of per-round ratios "
                  f"{statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
