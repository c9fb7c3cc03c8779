#!/usr/bin/env python3
"""Overload benchmark (issue 17, docs/overload.md): one node offered load beyond its peak.

The node runs --threads 1 pinned to CPU 0; throttlex-bench (RPC, open loop, latency from each
check's due time) runs pinned to CPU 1, so the generator's CPU share is fixed. Per round:

  peak      closed loop, as fast as a node with protection off answers (8192 checks outstanding,
            so that a node that stalls for most of each CFS period is not measured at
            concurrency / latency): P decisions/s
  half      open loop at P/2: the p99 to compare with
  2x on     open loop at 2P, overload protection on (the default target), all checks `normal`,
            the client's adaptive throttling off (--client-throttle 0): the node alone
  2x on+c   the same with the client's adaptive throttling (K = 2, the client library's default)
  2x off    the same with --overload-target-ms 0 (the node queues as before), no client throttling
  2x shed   the same as `2x on` with every check `sheddable`
  2x shed+c the same with the client's adaptive throttling

Reported per phase: the offered rate the generator reached (it may not reach 2P on one core:
then its own lateness shows), goodput (decided checks/s) and its ratio to P, p99 of decided
checks, shed answers (and how many of them the client gave itself), errors, and the node's RSS
before and after. Medians over --rounds.

With --node-cpu PERCENT the node also gets only that share of its CPU (a cgroup v1 `cpu` group
with CFS bandwidth: a quota of PERCENT% of every --cfs-period-us), so that a generator of one
core can offer twice what the node can decide. The node then stalls for the rest of each period:
keep the period well below the overload target (10 ms), or the stalls alone look like queueing.
The kernel's smallest quota is 1 ms, so the default period is the shortest that allows it:
10 ms at 10% (9 ms stalls, as in the first runs), 5 ms at 20% (4 ms stalls). Needs root and the cgroup v1 cpu controller mounted at
/sys/fs/cgroup/cpu; the group is removed afterwards.

Bounded: each phase runs --seconds (default 5) plus 1 s of warm-up; every process is stopped by
PID. Usage: bench/overload_report.py [--rounds 3] [--seconds 5] [--build build] [--node-cpu 10]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RULES = """rules:
  - name: bench
    limit: 1000000000
    period: 1s
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")


def shortest_period_us(percent):
    """The shortest CFS period whose quota of `percent`% is the kernel's smallest, 1 ms."""
    return max(1000, int(100000 / percent + 0.5))


class CpuShare:
    """A cgroup v1 cpu group whose members get `percent`% of one CPU in every period."""

    def __init__(self, percent, period_us):
        self.path = CGROUP_ROOT / f"throttlex-overload-{os.getpid()}"
        self.path.mkdir()
        (self.path / "cpu.cfs_period_us").write_text(str(period_us))
        (self.path / "cpu.cfs_quota_us").write_text(str(int(percent * period_us / 100)))

    def add(self, pid):
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self):
        # Empty once its processes exited (they were stopped before this runs).
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)


class Node:
    def __init__(self, binary, work, extra, share=None):
        (work / "rules.yaml").write_text(RULES)
        self.rpc = free_port()
        ports = [free_port() for _ in range(3)]
        args = ["taskset", "-c", "0", str(binary / "throttlexd"), "--node-id", "o1",
                "--bind", "127.0.0.1", "--threads", "1", "--rpc-port", str(self.rpc),
                "--http-port", str(ports[0]), "--metrics-port", str(ports[1]),
                "--gossip-port", str(ports[2]), "--rules", str(work / "rules.yaml"), *extra]
        self.log = open(work / "node.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        if share is not None:
            share.add(self.proc.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "ready:" in (work / "node.log").read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        sys.exit(f"the node did not start (log: {work / 'node.log'})")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def bench(binary, node, seconds, rate=0.0, priority="normal", client_throttle=0):
    args = ["taskset", "-c", "1", str(binary / "throttlex-bench"), "--node",
            f"127.0.0.1:{node.rpc}", "--rule", "bench", "--keys", "100000",
            "--connections", "1", "--concurrency", "8192" if rate == 0 else "100000",
            "--deadline", "30s",
            "--duration", f"{seconds}s", "--warmup", "1s", "--priority", priority, "--json",
            "--client-throttle", str(client_throttle)]
    if rate > 0:
        args += ["--rate", str(rate)]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=seconds + 90)
    if not p.stdout.strip():
        sys.exit(f"throttlex-bench failed: {p.stderr[-2000:]}")
    r = json.loads(p.stdout)
    offered = r["checks"] / r["duration_s"] if r["duration_s"] else 0
    return {"offered": offered, "goodput": r["goodput"], "p99_us": r["latency_us"]["p99"],
            "shed": r.get("shed", 0), "shed_locally": r.get("shed_locally", 0),
            "errors": r["errors"] + r["fallbacks"],
            "late_us": (r.get("generator_lateness_us") or {}).get("send", {}).get("p99", 0)}


def one_round(binary, work, seconds, share):
    rows = {}
    # The peak is the node's capacity: measured with protection off, since a closed loop against
    # a shedding node gets shed answers back at once and sends the more (it overloads it).
    node = Node(binary, work, ["--overload-target-ms", "0"], share)
    try:
        rows["peak"] = bench(binary, node, seconds)
        peak = rows["peak"]["goodput"]
        before = rss_kb(node.proc.pid)
        rows["2x off"] = bench(binary, node, seconds, rate=2 * peak)
        rows["2x off"]["rss_kb"] = (before, rss_kb(node.proc.pid))
    finally:
        node.stop()
    node = Node(binary, work, [], share)
    try:
        rows["half"] = bench(binary, node, seconds, rate=peak / 2)
        before = rss_kb(node.proc.pid)
        rows["2x on"] = bench(binary, node, seconds, rate=2 * peak)
        rows["2x on+c"] = bench(binary, node, seconds, rate=2 * peak, client_throttle=2)
        rows["2x shed"] = bench(binary, node, seconds, rate=2 * peak, priority="sheddable")
        rows["2x shed+c"] = bench(binary, node, seconds, rate=2 * peak, priority="sheddable",
                                  client_throttle=2)
        rows["2x on"]["rss_kb"] = (before, rss_kb(node.proc.pid))
    finally:
        node.stop()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--build", default="build")
    ap.add_argument("--node-cpu", type=float, default=0,
                    help="the node's share of its CPU in percent (cgroup v1 CFS quota); 0: all")
    ap.add_argument("--cfs-period-us", type=int, default=0,
                    help="the CFS period of --node-cpu's quota, in µs (default: the shortest "
                         "whose quota is the kernel's smallest, 1 ms)")
    args = ap.parse_args()
    if not 0 <= args.node_cpu <= 100:
        sys.exit("--node-cpu is a percentage: 1 to 100 (0: no limit)")
    if args.node_cpu > 0 and args.cfs_period_us == 0:
        args.cfs_period_us = shortest_period_us(args.node_cpu)
    if args.node_cpu > 0 and not (1000 <= args.cfs_period_us <= 1000000 and
                                  args.node_cpu * args.cfs_period_us / 100 >= 1000):
        sys.exit("--cfs-period-us must be within 1000 and 1000000, and its quota "
                 "(--node-cpu percent of it) at least 1000 µs")
    binary = Path(args.build) / "bin"
    rounds = []
    share = CpuShare(args.node_cpu, args.cfs_period_us) if args.node_cpu > 0 else None
    try:
        with tempfile.TemporaryDirectory(prefix="throttlex-overload-") as tmp:
            for i in range(args.rounds):
                rows = one_round(binary, Path(tmp), args.seconds, share)
                rounds.append(rows)
                print(f"round {i + 1}: " + json.dumps(rows), file=sys.stderr)
    finally:
        if share is not None:
            share.remove()
    phases = ["peak", "half", "2x on", "2x on+c", "2x off", "2x shed", "2x shed+c"]
    med = lambda phase, k: statistics.median(r[phase][k] for r in rounds)
    peak = med("peak", "goodput")
    cpu = (f" ({args.node_cpu:g}% of it in {args.cfs_period_us} µs periods)"
           if args.node_cpu > 0 else "")
    print(f"{os.cpu_count()} CPUs; node pinned to CPU 0{cpu}, generator to CPU 1; "
          f"medians of {args.rounds} rounds of {args.seconds} s")
    print(f"{'phase':9} {'offered/s':>10} {'goodput/s':>10} {'x peak':>7} {'p99 ms':>9} "
          f"{'shed':>8} {'by client':>9} {'errors':>7} {'gen late p99 ms':>16}")
    for ph in phases:
        print(f"{ph:9} {med(ph, 'offered'):10.0f} {med(ph, 'goodput'):10.0f} "
              f"{med(ph, 'goodput') / peak:7.2f} {med(ph, 'p99_us') / 1000:9.2f} "
              f"{med(ph, 'shed'):8.0f} {med(ph, 'shed_locally'):9.0f} {med(ph, 'errors'):7.0f} "
              f"{med(ph, 'late_us') / 1000:16.2f}")
    print("A generator lateness near the p99 means the queue was in the generator, not the node: "
          "the run measured the generator (give it more cores).")
    for ph in ("2x on", "2x off"):
        rss = [r[ph]["rss_kb"] for r in rounds]
        print(f"RSS {ph}: " + ", ".join(f"{a / 1024:.0f}->{b / 1024:.0f} MiB" for a, b in rss))


if __name__ == "__main__":
    main()
