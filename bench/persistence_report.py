#!/usr/bin/env python3
"""What Redis snapshots cost and how fast a node recovers, for docs/benchmarks.md:

1. the hot path with and without `--redis`: one node, throttlex-bench with batches over RPC,
   rounds interleaved (no Redis, Redis, no Redis, ...) so that a noisy machine hits both alike;
   medians and their ratio. Also the snapshot writer's throughput (entries written per second)
   and the Redis memory per live key at the end;
2. recovery at start: after `--keys` keys were spent and written (`throttlectl snapshot`), the
   node is killed (-9) and started again, once with `--recovery eager` (every slot read from
   Redis before the node is ready) and once with `--recovery lazy` (ready at once; a slot is read
   when its first check arrives); reported: start to ready, the first 3 s of load (throughput,
   p99) and the entries read.

Every node and the redis-server run on 127.0.0.1 with kernel-chosen ports; every load is bounded
in time; every process is stopped by PID.

    bench/persistence_report.py [--rounds 3] [--duration 4s] [--keys 1000000] [--json FILE]
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from harness import BIN, Node, Redis, metric_value, run_tool, wait_until  # noqa: E402

TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z")


def bench(node, args, prefix):
    cmd = [str(BIN / "throttlex-bench"), "--json", "--node", node.rpc_address, "--keys",
           str(args.keys), "--limit", "1000000000", "--period", "1h", "--batch", "1000",
           "--connections", "4", "--duration", args.duration, "--warmup", "1s",
           "--key-prefix", prefix]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"throttlex-bench failed: {out.stderr}")
    return json.loads(out.stdout)


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def used_memory(redis):
    info = redis.cli("INFO", "memory")
    return int(re.search(r"used_memory:(\d+)", info).group(1))


def hot_path(args, redis):
    """Interleaved rounds; returns the per-round throughputs and the snapshot figures."""
    plain, snap, written_rates, redis_cpu = [], [], [], []
    for r in range(args.rounds):
        for with_redis in (False, True):
            extra = ("--redis", redis.address, "--cluster-name", f"hot{r}") if with_redis else ()
            node = Node("--node-id", "solo", "--threads", "2", *extra)
            try:
                before = metric_value(node.metrics(), "throttlex_snapshot_entries_written_total")
                cpu0 = cpu_seconds(redis.proc.pid)
                t0 = time.monotonic()
                result = bench(node, args, f"r{r}:")
                elapsed = time.monotonic() - t0
                rate = result["throughput"]
                (snap if with_redis else plain).append(rate)
                if with_redis:
                    after = metric_value(node.metrics(), "throttlex_snapshot_entries_written_total")
                    written_rates.append((after - before) / elapsed)
                    redis_cpu.append((cpu_seconds(redis.proc.pid) - cpu0) / elapsed)
            finally:
                node.stop()
        print(f"round {r + 1}: memory only {plain[-1]:,.0f}/s, with Redis {snap[-1]:,.0f}/s",
              file=sys.stderr)
    return plain, snap, written_rates, redis_cpu


def log_time(line):
    m = TIMESTAMP.match(line)
    return time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) + \
        int(m.group(1)[20:]) / 1000


def recovery(args, redis):
    common = ("--node-id", "solo", "--threads", "2", "--redis", redis.address, "--cluster-name",
              "recovery")
    node = Node(*common)
    try:
        # Spend one hit on every key (1000 per batch), then write everything.
        cmd = [str(BIN / "throttlex-bench"), "--json", "--node", node.rpc_address, "--keys",
               str(args.keys), "--limit", "2", "--period", "1h", "--batch", "1000",
               "--connections", "2", "--duration", "8s", "--warmup", "0", "--key-prefix", "rec:"]
        subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
        code, out, err = run_tool("throttlectl", "--node", node.rpc_address, "--timeout", "30s",
                                  "snapshot", timeout=60)
        if code != 0:
            raise RuntimeError(out + err)
        keys = metric_value(node.metrics(), "throttlex_keys")
        memory = used_memory(redis)
    finally:
        node.kill()
    out = {"live_keys": keys, "redis_used_memory": memory,
           "redis_bytes_per_key": memory / keys if keys else None}
    # Restart in each mode: eager reads every slot before the node is ready; lazy is ready at once
    # and reads a slot when its first check arrives. Then 3 s of load on the same keys (1 hit
    # each: under their limit of 2 only where the snapshot said 1 was spent, so the recovered
    # state shows in the answers): throughput and p99 of the first seconds.
    for mode in ("eager", "lazy"):
        started = time.time()
        node = Node(*common, "--recovery", mode)
        try:
            ready = time.time()
            cmd = [str(BIN / "throttlex-bench"), "--json", "--node", node.rpc_address, "--keys",
                   str(args.keys), "--limit", "2", "--period", "1h", "--batch", "1000",
                   "--connections", "2", "--duration", "3s", "--warmup", "0",
                   "--key-prefix", "rec:"]
            first = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                              check=True).stdout)
            text = node.metrics()
            out[mode] = {
                "start_to_ready_s": ready - started,
                "first_3s_throughput": first["throughput"],
                "first_3s_p99_us": first.get("latency_us", {}).get("p99"),
                "entries_recovered": metric_value(text, "throttlex_recovery_entries_total"),
                "slots_timed_out": metric_value(text, "throttlex_recovery_timeouts_total"),
                "checks_parked": metric_value(text, "throttlex_parked_checks_total"),
            }
        finally:
            node.kill()  # no drain, no last flush: the next start sees the same Redis
        print(f"{mode}: {out[mode]}", file=sys.stderr)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", default="4s")
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--json")
    args = p.parse_args()
    redis = Redis()
    try:
        plain, snap, written, redis_cpu = hot_path(args, redis)
        redis.cli("FLUSHALL")
        rec = recovery(args, redis)
    finally:
        redis.stop()
    report = {
        "throughput_memory_only": plain, "throughput_with_redis": snap,
        "median_memory_only": statistics.median(plain),
        "median_with_redis": statistics.median(snap),
        "ratio_with_redis": statistics.median(snap) / statistics.median(plain),
        "snapshot_entries_written_per_s": statistics.median(written),
        "redis_cpu_cores_busy": statistics.median(redis_cpu),
        "recovery": rec,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
