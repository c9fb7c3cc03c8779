#!/usr/bin/env python3
"""Runs build/bin/limiter_bench with repetitions and prints the medians as a Markdown table.

    python3 bench/limiter_report.py [--repetitions 3] [--filter REGEX]
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--filter", default=".")
    ap.add_argument("--binary", default=str(ROOT / "build/bin/limiter_bench"))
    args = ap.parse_args()

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [args.binary, f"--benchmark_filter={args.filter}",
             f"--benchmark_repetitions={args.repetitions}",
             "--benchmark_report_aggregates_only=true",
             f"--benchmark_out={out.name}", "--benchmark_out_format=json"],
            check=True, stdout=subprocess.DEVNULL)
        data = json.load(open(out.name))

    ctx = data["context"]
    print(f"{ctx['num_cpus']} CPUs at {ctx['mhz_per_cpu']} MHz, {ctx['date']}, "
          f"median of {args.repetitions} repetitions\n")
    print("| benchmark | algorithm / setup | median |")
    print("| --- | --- | --- |")
    for b in data["benchmarks"]:
        # One repetition has no aggregates: its single run is the median.
        wanted = "iteration" if args.repetitions == 1 else "aggregate"
        if b.get("run_type") != wanted or (wanted == "aggregate" and
                                           b.get("aggregate_name") != "median"):
            continue
        name = b["run_name"]
        if "bytes_per_key" in b:
            value = f"{b['bytes_per_key']:.1f} bytes/key"
        else:
            value = f"{b['items_per_second'] / 1e6:.1f} M checks/s"
        print(f"| `{name}` | {b.get('label', '')} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
