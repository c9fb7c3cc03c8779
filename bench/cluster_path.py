#!/usr/bin/python3
"""The cluster path side by side (docs/benchmarks.md, "The cluster path"): one node alone and the
README's 5-node cluster (--threads 1, Redis, TLS between nodes, sealed gossip, as scripts/start.sh
runs it), loaded the same way in the same run, for one build or two (A/B, alternating rounds).

  bench/cluster_path.py [--bin build/bin] [--baseline-bin OTHER/bin] [--rounds 3] [--seconds 6]

Per build and round:
  http one node   wrk -t1 random keys (bench/wrk/random_keys.lua) against a lone node, -c32 and
                  -c128: the peak is the better of the two
  http cluster    one wrk -t1 per node, all five at once (a load balancer's spread), -c8, -c32 and
                  -c64 per node: the peak is the best of them (a forwarded check waits for its
                  owner's answer, so the cluster needs more checks in flight than one node to be
                  busy); then http-paced at half of that peak (a fifth at each node, 32
                  connections each): p99 from due time
  rpc single      throttlex-bench single checks, --route owner (no forwarding): peak, then half: p99
  rpc batch       throttlex-bench --batch 100, --route owner and --route entry: throughput
For the cluster phases: context switches of all the nodes' threads (voluntary + involuntary, from
/proc/PID/task/*/status) per forwarded check (throttlex_forward_batch_size_sum), and the nodes'
throttlex_thread_handoffs_total. Prints one JSON line per phase, then a table of medians.
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ctx_switches(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


class Cluster:
    """n nodes as scripts/start.sh starts them, on free ports; stopped by PID."""

    def __init__(self, binary, n, work, keys, redis_port, tag):
        self.nodes, self.procs = [], []
        seed = None
        for i in range(1, n + 1):
            node = {"http": free_port(), "rpc": free_port(), "metrics": free_port(),
                    "gossip": free_port(), "id": f"node-{i}"}
            keyring = f"{work}/{tag}-{i}.keyring"
            shutil.copy(f"{keys}/keyring", keyring)
            os.chmod(keyring, 0o600)
            args = [f"{binary}/throttlexd", "--node-id", node["id"], "--bind", "127.0.0.1",
                    "--cluster-name", f"bench-{tag}", "--gossip-preset", "local",
                    "--http-port", str(node["http"]), "--rpc-port", str(node["rpc"]),
                    "--metrics-port", str(node["metrics"]), "--gossip-port", str(node["gossip"]),
                    "--threads", "1", "--rules", f"{ROOT}/docs/examples/rules.yaml",
                    "--redis", f"127.0.0.1:{redis_port}", "--gossip-keyring", keyring,
                    "--tls-ca", f"{keys}/ca.crt", "--tls-cert", f"{keys}/node-{i}.crt",
                    "--tls-key", f"{keys}/node-{i}.key"]
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
            members = json.load(r)["members"]
        return sum(1 for m in members if m["state"] == "alive")

    def counters(self):
        fwd = handoffs = 0.0
        for nd in self.nodes:
            text = scrape(nd["metrics"])
            fwd += metric_sum(text, "throttlex_forward_batch_size_sum")
            handoffs += metric_sum(text, "throttlex_thread_handoffs_total")
        switches = sum(ctx_switches(p.pid) for p in self.procs)
        return fwd, handoffs, switches

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wrk(ports, seconds, conns):
    procs = [subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s",
                               f"{ROOT}/bench/wrk/random_keys.lua", f"http://127.0.0.1:{p}"],
                              stdout=subprocess.PIPE, text=True) for p in ports]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        total += float(m.group(1)) if m else 0.0
    return total


def paced(binary, ports, rate, seconds, conns=32):
    procs = [subprocess.Popen([f"{binary}/http-paced", "--port", str(p), "--rate", str(rate / len(ports)),
                               "--connections", str(conns), "--duration", str(seconds), "--warmup", "1",
                               "--keys", "1000000", "--suffix", "&limit=100&period=1m", "--json"],
                              stdout=subprocess.PIPE, text=True) for p in ports]
    p99s = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        p99s.append(json.loads(out)["latency_ms"]["p99"] * 1000)
    return max(p99s)


def bench_rpc(binary, keys, nodes, seconds, extra):
    args = [f"{binary}/throttlex-bench"] + [a for nd in nodes for a in ("--node", f"127.0.0.1:{nd['rpc']}")]
    args += ["--tls-ca", f"{keys}/ca.crt", "--tls-cert", f"{keys}/client.crt", "--tls-key",
             f"{keys}/client.key", "--keys", "100000", "--limit", "1000000", "--period", "1m",
             "--duration", f"{seconds}s", "--warmup", "1s", "--json"] + extra
    out = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=seconds + 60).stdout
    r = json.loads(out)
    return r["throughput"], r["latency_us"]["p99"]


def measure(binary, label, args, work, keys, redis_port, rnd):
    res = {"build": label, "round": rnd}
    one = Cluster(binary, 1, work, keys, redis_port, f"{label}{rnd}one")
    try:
        res["http_one_peak"] = max(wrk([one.nodes[0]["http"]], args.seconds, c) for c in (32, 128))
    finally:
        one.stop()
    five = Cluster(binary, 5, work, keys, redis_port, f"{label}{rnd}five")
    try:
        ports = [nd["http"] for nd in five.nodes]
        f0, h0, s0 = five.counters()
        res["http_cluster_c8"] = wrk(ports, args.seconds, 8)
        res["http_cluster_c32"] = wrk(ports, args.seconds, 32)
        fa, ha, sa = five.counters()
        res["http_cluster_c64"] = wrk(ports, args.seconds, 64)
        f1, h1, s1 = five.counters()
        res["http_cluster_peak"] = max(res[f"http_cluster_c{c}"] for c in (8, 32, 64))
        res["switches_per_forwarded_peak"] = (s1 - sa) / max(f1 - fa, 1)
        res["http_cluster_half_p99_us"] = paced(binary, ports, res["http_cluster_peak"] / 2, args.seconds)
        f2, h2, s2 = five.counters()
        res["switches_per_forwarded_half"] = (s2 - s1) / max(f2 - f1, 1)
        res["handoffs"] = h2 - h0
        peak, _ = bench_rpc(binary, keys, five.nodes, args.seconds,
                            ["--route", "owner", "--connections", "5", "--concurrency", "16"])
        res["rpc_single_peak"] = peak
        _, p99 = bench_rpc(binary, keys, five.nodes, args.seconds,
                           ["--route", "owner", "--connections", "5", "--concurrency", "16",
                            "--rate", str(peak / 2)])
        res["rpc_single_half_p99_us"] = p99
        for route in ("owner", "entry"):
            res[f"rpc_batch_{route}"], _ = bench_rpc(
                binary, keys, five.nodes, args.seconds,
                ["--route", route, "--batch", "100", "--connections", "5", "--concurrency", "4"])
    finally:
        five.stop()
    res["cluster_over_one"] = res["http_cluster_peak"] / res["http_one_peak"]
    print(json.dumps(res), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=f"{ROOT}/build/bin")
    ap.add_argument("--baseline-bin")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (scripts/setup.sh installs it)")
    work = tempfile.mkdtemp(prefix="throttlex-pathbench-")
    keys = f"{work}/keys"
    subprocess.run([f"{ROOT}/scripts/cluster-init.sh", keys, "5"], check=True, stdout=subprocess.DEVNULL)
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", work],
                             stdout=subprocess.DEVNULL)
    builds = [("new", args.bin)] + ([("base", args.baseline_bin)] if args.baseline_bin else [])
    rows = []
    try:
        for rnd in range(1, args.rounds + 1):
            for label, binary in (builds if rnd % 2 else builds[::-1]):
                subprocess.run(["redis-cli", "-p", str(redis_port), "flushall"], stdout=subprocess.DEVNULL)
                rows.append(measure(binary, label, args, work, keys, redis_port, rnd))
    finally:
        redis.terminate()
        redis.wait()
    keys_order = [k for k in rows[0] if k not in ("build", "round")]
    print("\n| figure | " + " | ".join(b for b, _ in builds) + (" | new / base |" if len(builds) > 1 else " |"))
    print("| --- " * (len(builds) + 1 + (len(builds) > 1)) + "|")
    for k in keys_order:
        meds = [statistics.median(r[k] for r in rows if r["build"] == b) for b, _ in builds]
        cells = [f"{m:,.2f}" if m < 100 else f"{m:,.0f}" for m in meds]
        ratio = f" | {meds[0] / meds[1]:.2f}" if len(meds) > 1 and meds[1] else (" | –" if len(meds) > 1 else "")
        print(f"| {k} | " + " | ".join(cells) + ratio + " |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
