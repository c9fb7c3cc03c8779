#!/usr/bin/env python3
"""The 5-node cluster on this machine, for docs/benchmarks.md:

1. throughput over RPC with batching (throttlex-bench), entering at the nodes in turn
   (`--route entry`: each node forwards what it does not own) and going straight to the owners
   (`--route owner`: the client library routes by the ring), each repeated, medians reported;
2. detection of a crashed node: under a steady load on the survivors, one node is killed with -9;
   reported are the time until every survivor declares it dead (from the daemons' log timestamps),
   the client-visible errors during the run, and the checks decided in degraded mode.

Every node runs on 127.0.0.1 with kernel-chosen ports (tests/integration/harness.py), so the report
can run beside anything else. Every load is bounded in time; every process is stopped by PID.

    bench/cluster_report.py [--rounds 3] [--duration 5s] [--keys 1000000] [--detect-runs 5]
                            [--preset local] [--threads 1] [--json FILE]
"""
import argparse
import datetime
import json
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from harness import BIN, Node, wait_until  # noqa: E402

NODES = 5
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z")


def start_cluster(args, name):
    common = ("--gossip-preset", args.preset, "--cluster-name", name, "--threads", str(args.threads))
    nodes = [Node("--node-id", "n1", *common)]
    try:
        for i in range(2, NODES + 1):
            nodes.append(Node("--node-id", f"n{i}", "--join", nodes[0].gossip_address, *common))
        for n in nodes:
            wait_until(lambda n=n: alive(n) == NODES, timeout=30, what=f"{n.node_id} to see {NODES}")
    except BaseException:
        for n in nodes:
            n.kill()
        raise
    return nodes


def alive(node):
    status, _, body = node.request("GET", "/v1/cluster")
    return json.loads(body)["alive"] if status == 200 else 0


def bench(nodes, args, route, *extra):
    cmd = [str(BIN / "throttlex-bench"), "--json", "--route", route, "--keys", str(args.keys),
           "--limit", "1000000000", "--period", "1s", *extra]
    for n in nodes:
        cmd += ["--node", n.rpc_address]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def throughput(args):
    configs = [("entry", ["--batch", "500", "--connections", "5"]),
               ("entry", ["--batch", "1000", "--connections", "4"]),
               ("owner", ["--batch", "500", "--connections", "5"]),
               ("owner", ["--batch", "1000", "--connections", "4"]),
               ("owner", ["--batch", "2500", "--connections", "2"]),
               ("entry", ["--concurrency", "256", "--connections", "5"]),
               ("owner", ["--concurrency", "256", "--connections", "5"])]
    nodes = start_cluster(args, "bench-throughput")
    rows = []
    try:
        for route, cfg in configs:
            runs = []
            for _ in range(args.rounds):
                p = bench(nodes, args, route, "--duration", args.duration, "--warmup", "1s", *cfg)
                if p.returncode != 0:
                    raise RuntimeError(f"throttlex-bench failed ({p.returncode}): {p.stderr}")
                runs.append(json.loads(p.stdout))
            tp = statistics.median(r["throughput"] for r in runs)
            rows.append({"route": route, "config": " ".join(cfg), "throughput": tp,
                         "runs": [r["throughput"] for r in runs],
                         "p50_us": statistics.median(r["latency_us"]["p50"] for r in runs),
                         "p99_us": statistics.median(r["latency_us"]["p99"] for r in runs),
                         "errors": sum(r["errors"] + r["fallbacks"] for r in runs),
                         "avg_batch": statistics.median(r["client"]["avg_batch"] for r in runs)})
            print(f"  {route:5} {' '.join(cfg):40} {tp / 1e6:.2f} M/s", file=sys.stderr)
    finally:
        for n in nodes:
            n.stop()
    return rows


def log_time(line):
    m = TIMESTAMP.match(line)
    return datetime.datetime.fromisoformat(m.group(1)).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def degraded(node):
    total = 0
    for line in node.metrics().splitlines():
        if line.startswith("throttlex_requests_total{") and 'route="degraded"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def counter(node, name):
    for line in node.metrics().splitlines():
        if line.startswith(name + " "):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def detection(args, run):
    nodes = start_cluster(args, f"bench-detect-{run}")
    victim, survivors = nodes[-1], nodes[:-1]
    try:
        # A steady, bounded load through the survivors (the client learns the victim from the ring
        # and routes its keys there until it fails over).
        cmd = [str(BIN / "throttlex-bench"), "--json", "--route", args.detect_route, "--keys", "100000",
               "--limit", "1000000000", "--period", "1s", "--concurrency", "64", "--connections", "2",
               "--rate", str(args.detect_rate), "--duration", "16s", "--warmup", "0",
               "--on-unavailable", "error", "--deadline", "1s"]
        for n in survivors:
            cmd += ["--node", n.rpc_address]
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # load is flowing: the crash must happen under load (not a synchronisation)
        killed_at = time.time()
        victim.proc.send_signal(signal.SIGKILL)
        detected = []
        for n in survivors:
            line = n.wait_for_log(rf"member {victim.node_id} dead", timeout=60)
            detected.append(log_time(line) - killed_at)
        out, err = load.communicate(timeout=120)
        if load.returncode not in (0, 1):
            raise RuntimeError(f"throttlex-bench failed ({load.returncode}): {err}")
        r = json.loads(out)
        return {"all_detected_s": max(detected), "first_detected_s": min(detected),
                "checks": r["checks"], "errors": r["errors"] + r["fallbacks"],
                "first_error": r.get("first_error", ""),
                "degraded": sum(degraded(n) for n in survivors),
                "by_policy": sum(counter(n, "throttlex_degraded_total") for n in survivors),
                "client_degraded": r.get("degraded", 0)}
    finally:
        for n in nodes:
            n.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--detect-runs", type=int, default=5)
    ap.add_argument("--detect-rate", type=int, default=20000)
    ap.add_argument("--detect-route", default="owner", choices=["owner", "entry"])
    ap.add_argument("--preset", default="local", choices=["local", "lan", "wan"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    report = {"nodes": NODES, "preset": args.preset, "threads": args.threads}
    if not args.skip_throughput:
        print("throughput:", file=sys.stderr)
        report["throughput"] = throughput(args)
        print("| route | client configuration | median checks/s | runs | p50 µs | p99 µs | avg batch | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in report["throughput"]:
            runs = " / ".join(f"{x / 1e6:.2f} M" for x in r["runs"])
            print(f"| {r['route']} | `{r['config']}` | {r['throughput'] / 1e6:.2f} M | {runs} | "
                  f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['avg_batch']:.0f} | {r['errors']} |")
    if args.detect_runs > 0:
        print("detection:", file=sys.stderr)
        runs = []
        for i in range(args.detect_runs):
            runs.append(detection(args, i))
            print(f"  run {i + 1}: {runs[-1]}", file=sys.stderr)
        report["detection"] = runs
        print()
        print("| run | all survivors saw it dead after | first | checks | client-visible errors | "
              "decided without the owner | of which by degraded policy |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for i, r in enumerate(runs):
            print(f"| {i + 1} | {r['all_detected_s']:.2f} s | {r['first_detected_s']:.2f} s | "
                  f"{r['checks']} | {r['errors']} | {r['degraded']} | {r['by_policy']} |")
        print(f"\nmedian detection (all survivors): "
              f"{statistics.median(r['all_detected_s'] for r in runs):.2f} s; "
              f"errors {sum(r['errors'] for r in runs)} of {sum(r['checks'] for r in runs)} checks")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
