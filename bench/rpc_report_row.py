#!/usr/bin/env python3
"""One Markdown row from several throttlex-bench --json reports (files): the median run by
throughput. Used by bench/rpc_report.sh:  rpc_report_row.py CONFIG RUN.json..."""
import json
import sys

cfg = sys.argv[1]
runs = sorted((json.load(open(path)) for path in sys.argv[2:]), key=lambda d: d["throughput"])
m = runs[len(runs) // 2]
errors = sum(d["errors"] + d["fallbacks"] for d in runs)
row = (f"| `{cfg}` | {m['throughput'] / 1e6:.2f} M | {m['latency_us']['p50']:.0f} | "
       f"{m['latency_us']['p99']:.0f} | {m['client']['avg_batch']:.0f} |")
print(row if errors == 0 else row + f" errors+fallbacks over all runs: {errors}")
