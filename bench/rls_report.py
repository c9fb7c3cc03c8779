#!/usr/bin/python3
"""Envoy's rate limit service (gRPC) next to HTTP and Cap'n Proto RPC, on one node and through a
3-node cluster entering at every node (docs/benchmarks.md, "The three APIs side by side").

  bench/rls_report.py [--bin build/bin] [--rounds 3] [--seconds 5]

The same load for each API, one check per call with a key drawn from 100,000 and a limit never
reached, 32 calls in flight per node entered (closed loop):
  http  wrk -t1 -c32 GET /v1/check (bench/wrk/random_keys.lua; inline limit)
  rpc   throttlex-bench --connections 1 --concurrency 32 (single checks through the client library;
        --route entry in the cluster, so nodes forward as they do for the other two)
  rls   rls-bench --channels 1 --concurrency 32 (ShouldRateLimit, one descriptor, a rule of the
        domain `bench`)
Rounds alternate the order of the APIs; the table gives medians and each API's share of HTTP's
figure. Plain TCP between nodes and clients (no TLS), no Redis: the cost measured is the API's.
Every process started here is stopped by PID; every load is bounded in time.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAIN = """domain: bench
descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 4000000000}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, binary, n, work, tag):
        self.procs, self.nodes = [], []
        seed = None
        for i in range(1, n + 1):
            node = {k: free_port() for k in ("http", "rpc", "metrics", "gossip", "rls")}
            args = [f"{binary}/throttlexd", "--node-id", f"{tag}-{i}", "--bind", "127.0.0.1",
                    "--cluster-name", f"rlsbench-{tag}", "--gossip-preset", "local",
                    "--http-port", str(node["http"]), "--rpc-port", str(node["rpc"]),
                    "--metrics-port", str(node["metrics"]), "--gossip-port", str(node["gossip"]),
                    "--rls-port", str(node["rls"]), "--threads", "1", "--rules", work]
            if seed:
                args += ["--join", seed]
            log = open(f"{work}/{tag}-{i}.log", "w")
            self.procs.append(subprocess.Popen(args, stdout=log, stderr=log))
            self.nodes.append(node)
            seed = seed or f"127.0.0.1:{node['gossip']}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if all(self.alive(nd) >= n for nd in self.nodes):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"cluster {tag} did not form in 60 s (logs in {work})")

    @staticmethod
    def alive(node):
        with urllib.request.urlopen(f"http://127.0.0.1:{node['http']}/v1/cluster", timeout=2) as r:
            return sum(1 for m in json.load(r)["members"] if m["state"] == "alive")

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def cpu_seconds(procs):
    """User + system CPU of the node processes so far."""
    total = 0
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_all(cmds, seconds, parse):
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for c in cmds]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        total += parse(out)
    return total


def wrk_rate(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def json_rate(out):
    return float(json.loads(out)["throughput"])


def measure(api, binary, nodes, seconds, route):
    if api == "http":
        cmds = [["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", f"{ROOT}/bench/wrk/random_keys.lua",
                 f"http://127.0.0.1:{nd['http']}"] for nd in nodes]
        return run_all(cmds, seconds, wrk_rate)
    if api == "rpc":
        cmds = [[f"{binary}/throttlex-bench", "--node", f"127.0.0.1:{nd['rpc']}", "--connections",
                 "1", "--concurrency", "32", "--keys", "100000", "--limit", "4000000000",
                 "--period", "1d", "--duration", f"{seconds}s", "--warmup", "1s", "--route", route,
                 "--json"] for nd in nodes]
        return run_all(cmds, seconds, json_rate)
    cmds = [[f"{binary}/rls-bench", "--target", f"127.0.0.1:{nd['rls']}", "--channels", "1",
             "--concurrency", "32", "--keys", "100000", "--duration", str(seconds), "--warmup", "1"]
            for nd in nodes]
    return run_all(cmds, seconds, json_rate)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=f"{ROOT}/build/bin")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    for tool in ("throttlexd", "throttlex-bench", "rls-bench"):
        if not os.path.exists(f"{args.bin}/{tool}"):
            sys.exit(f"no {tool} in {args.bin}: build first")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (scripts/setup.sh installs it)")
    # bench/wrk/random_keys.lua reads these: the same keys and a limit never reached, as the others.
    os.environ.update({"KEYS": "100000", "LIMIT": "4000000000", "PERIOD": "1d"})
    work = tempfile.mkdtemp(prefix="throttlex-rlsbench-")
    with open(f"{work}/bench.yaml", "w") as f:
        f.write(DOMAIN)
    rows, cost = {}, {}
    apis = ["http", "rpc", "rls"]
    try:
        for setup, n, route in (("one node", 1, "owner"), ("3 nodes, entering at each", 3, "entry")):
            cluster = Cluster(args.bin, n, work, "c" + str(n))
            try:
                for rnd in range(args.rounds):
                    for api in (apis if rnd % 2 == 0 else apis[::-1]):
                        c0, t0 = cpu_seconds(cluster.procs), time.time()
                        v = measure(api, args.bin, cluster.nodes, args.seconds, route)
                        cpu = cpu_seconds(cluster.procs) - c0
                        # The load runs `seconds` (plus a warm-up for rpc and rls): CPU per check
                        # over the whole wall time at the measured rate.
                        us = cpu / max(v * (time.time() - t0), 1) * 1e6
                        rows.setdefault((setup, api), []).append(v)
                        cost.setdefault((setup, api), []).append(us)
                        print(json.dumps({"setup": setup, "api": api, "round": rnd + 1,
                                          "checks_per_s": round(v), "node_cpu_us_per_check":
                                          round(us, 1)}), flush=True)
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| setup | API | checks/s (median) | / HTTP | node CPU per check (µs, median) |")
    print("| --- | --- | --- | --- | --- |")
    for setup in ("one node", "3 nodes, entering at each"):
        http = statistics.median(rows[(setup, "http")])
        for api in apis:
            m = statistics.median(rows[(setup, api)])
            us = statistics.median(cost[(setup, api)])
            print(f"| {setup} | {api} | {m:,.0f} | {m / http:.2f} | {us:.1f} |")


if __name__ == "__main__":
    main()
