#!/usr/bin/env python3
"""The seed plan's four tests on a 5-node namespace cluster with Redis: throughput (steady and a
1.2x burst), latency (request and Redis), memory (per key and per node), error rate. Needs root.

    cluster/seed_report.py [--duration 10] [--keys 1000000] [--memory-keys 1000000]
                           [--out build/seed-report]
                           [--prefix txsr] [--subnet 10.77.6] [--threads 1]

Brings up `cluster/netns/cluster.sh up --redis` (each node and Redis in its own namespace on a
bridge; brought down at the end, also on failure), then from the root namespace, after checking
that `ip route get` to every node goes through the cluster's bridge, runs throttlex-bench
(client library over RPC, checks routed to their owners, batches of 100, 4 connections, keys
uniform over KEYS, inline limit far above the load so that every deny is a wrong one):
  1. peak      as fast as it goes (--rate 0) for DURATION s: the cluster's peak P here
  2. steady    open loop at 0.8 P for DURATION s        } the seed's "1 M RPS, bursts to
  3. burst     open loop at 1.2 x steady for DURATION s } 1.2 M", scaled to this machine
  4. steady    again at 0.8 P (recovery after the burst)
  5. single    single checks over RPC (no batch): their peak, then open loop at half of it
  6. HTTP      bench/http_paced.cc, 64 connections spread over every node's /v1/check (checks
               enter anywhere and are forwarded to their owner): closed loop, the HTTP peak H;
               then at 0.5 H, requests evenly spaced, latency from each one's due time: the
               request latency at half of peak load
  7. memory    MEMORY_KEYS new keys of a 100-per-day limit (so that their state lasts), then
               `throttlectl snapshot`: the nodes' RSS growth and Redis's used_memory growth over
               the live keys gained
and reads, per phase, every node's /metrics: Redis command latency (mean and p99 from
`throttlex_redis_duration_seconds`). Error rate = (errors + fallbacks + wrongly limited) / checks
over every phase; the seed's target is below 0.001%. Writes report.md, report.json and (with gnuplot) throughput.png, latency.png into
--out. Every process is stopped by PID (cluster.sh down); every run is bounded by its duration.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("THROTTLEX_BIN", ROOT / "build" / "bin"))
CLUSTER_SH = ROOT / "cluster" / "netns" / "cluster.sh"
RPC_PORT, METRICS_PORT = 7400, 9464


def log(msg):
    print(f"seed_report: {msg}", file=sys.stderr, flush=True)


def node_addr(subnet, i):
    return f"{subnet}.{10 + i}"


def metrics(addr):
    try:
        with urllib.request.urlopen(f"http://{addr}:{METRICS_PORT}/metrics", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return ""


def samples(text, name):
    """{labels: value} of one metric family's samples."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
            if m:
                out[m.group(1) or ""] = float(m.group(2))
    return out


def redis_histogram(texts):
    """Summed over nodes: (sum, count, {le: cumulative count})."""
    s = c = 0.0
    buckets = {}
    for t in texts:
        s += sum(samples(t, "throttlex_redis_duration_seconds_sum").values())
        c += sum(samples(t, "throttlex_redis_duration_seconds_count").values())
        for labels, v in samples(t, "throttlex_redis_duration_seconds_bucket").items():
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                key = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
                buckets[key] = buckets.get(key, 0.0) + v
    return s, c, buckets


def redis_latency(before, after):
    """Mean and p99 (upper bucket bound) in ms of the Redis commands between two snapshots."""
    s0, c0, b0 = before
    s1, c1, b1 = after
    n = c1 - c0
    if n <= 0:
        return {"commands": 0, "mean_ms": None, "p99_ms": None}
    p99 = None
    for le in sorted(b1):
        if b1[le] - b0.get(le, 0.0) >= 0.99 * n:
            p99 = None if le == float("inf") else le * 1000
            break
    return {"commands": int(n), "mean_ms": (s1 - s0) * 1000 / n, "p99_ms": p99}


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def bench(nodes, duration, rate, keys, batch, prefix="seed:"):
    cmd = [str(BIN / "throttlex-bench"), "--json", "--route", "owner", "--connections", "4",
           "--duration", f"{duration}s", "--warmup", "1s", "--rate", str(rate), "--keys", str(keys),
           "--limit", "1000000000", "--period", "1s", "--deadline", "1s", "--key-prefix", prefix]
    cmd += ["--batch", str(batch)] if batch else ["--concurrency", "64"]
    for a in nodes:
        cmd += ["--node", f"{a}:{RPC_PORT}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    try:
        r = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"throttlex-bench gave no JSON (exit {p.returncode}): {p.stderr[-500:]}")
    lat = r.get("latency_us", {})
    return {"offered": rate, "achieved": r["checks"] / r["duration_s"], "checks": r["checks"],
            "errors": r["errors"], "fallbacks": r["fallbacks"], "limited": r.get("limited", 0),
            "degraded": r.get("degraded", 0), "p50_ms": lat.get("p50", 0) / 1000,
            "p99_ms": lat.get("p99", 0) / 1000, "p999_ms": lat.get("p99.9", 0) / 1000}


HTTP_PORT = 8080
LOAD_SUFFIX = "&limit=1000000000&period=1s"  # far above the load: every deny is a wrong one


def http_load(nodes, duration, rate, keys):
    """bench/http_paced.cc, 64 connections spread over every node's /v1/check (checks enter at
    any node, as behind a load balancer, and most are forwarded to their owner): closed loop for
    the peak (rate 0), else requests evenly spaced at `rate` with latency from each one's due
    time."""
    cmd = [str(BIN / "http-paced"), "--port", str(HTTP_PORT), "--rate", str(rate),
           "--connections", "64", "--duration", str(duration), "--warmup", "1", "--prefix",
           "/v1/check?key=", "--key-prefix", "seed:", "--suffix", LOAD_SUFFIX, "--keys", str(keys),
           "--json"]
    for a in nodes:
        cmd += ["--host", a]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    try:
        r = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"http-paced gave no JSON (exit {p.returncode}): {p.stderr[-500:]}")
    lat = r["latency_ms"]
    return {"offered": rate, "achieved": r["achieved_rate"], "checks": r["answered"] + r["unsent"],
            "errors": r["socket_errors"] + r["unsent"], "fallbacks": 0, "limited": r["non_2xx"],
            "degraded": 0, "mean_ms": lat["mean"], "p50_ms": lat["p50"], "p99_ms": lat["p99"],
            "p999_ms": lat["p999"], "generator_late_p99_ms": r["lateness_ms"]["p99"]}


def redis_used_memory(addr):
    out = subprocess.run(["redis-cli", "-h", addr, "info", "memory"], capture_output=True,
                         text=True, timeout=10).stdout
    m = re.search(r"^used_memory:(\d+)", out, re.M)
    return int(m.group(1)) if m else None


def live_keys(texts):
    return int(sum(sum(samples(x, "throttlex_keys").values()) for x in texts))


def memory_phase(args, nodes, pids, peak_rate, redis_addr):
    """New keys with a limit that lasts (100 per day, each checked a few times): the growth of the
    nodes' RSS, and of their store tables, over the growth of their live keys; the growth of Redis's
    used_memory (the snapshots) over the same keys once `throttlectl snapshot` has written them."""
    texts = lambda: [metrics(a) for a in nodes]  # noqa: E731

    def total(name):
        return sum(sum(samples(x, name).values()) for x in texts())

    def snapshot():
        """Every pending entry written; Redis may lag behind a burst, so a few tries."""
        for _ in range(10):
            r = subprocess.run([str(BIN / "throttlectl"), "--node", f"{nodes[0]}:{RPC_PORT}",
                                "--timeout", "60s", "snapshot"], capture_output=True, timeout=120)
            if r.returncode == 0:
                return True
        return False

    def settled():
        """The snapshot tables of the burst given back (a few flush intervals), 10 s at most."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(sum(samples(x, "throttlex_snapshot_pending_bytes").values()) <= 256 * 1024
                   for x in texts()):
                return
            time.sleep(0.2)  # polling a condition with a deadline, not waiting for a guess

    snapshot()
    settled()
    keys0, store0 = live_keys(texts()), total("throttlex_store_bytes")
    rss0, redis0 = {a: rss_bytes(pids[a]) for a in nodes}, redis_used_memory(redis_addr)
    # ~3 checks per key: uniform draws then reach ~95% of the keys.
    seconds = int(min(120, max(5, 3 * args.memory_keys / max(1.0, peak_rate))))
    log(f"memory: {args.memory_keys:,} keys of a 100-per-day limit ({seconds} s)")
    cmd = [str(BIN / "throttlex-bench"), "--json", "--route", "owner", "--connections", "4",
           "--duration", f"{seconds}s", "--warmup", "0", "--keys", str(args.memory_keys),
           "--limit", "100", "--period", "1d", "--batch", "100", "--key-prefix", "mem:"]
    for a in nodes:
        cmd += ["--node", f"{a}:{RPC_PORT}"]
    r = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout)
    flushed = snapshot()
    settled()
    keys1, store1 = live_keys(texts()), total("throttlex_store_bytes")
    rss1, redis1 = {a: rss_bytes(pids[a]) for a in nodes}, redis_used_memory(redis_addr)
    added = keys1 - keys0
    growth = sum(rss1[a] - rss0[a] for a in nodes)
    return {"keys_added": added, "checks": r["checks"], "errors": r["errors"] + r["fallbacks"],
            "limited": r.get("limited", 0), "rss_growth_bytes": growth,
            "bytes_per_key": growth / added if added > 0 else None,
            "store_bytes_per_key": (store1 - store0) / added if added > 0 else None,
            "redis_bytes_per_key": ((redis1 - redis0) / added
                                    if added > 0 and redis0 is not None and redis1 is not None
                                    and flushed else None),
            "rss_mb_per_node": {a: round(rss1[a] / 2**20, 1) for a in nodes}}


def plot(out, phases):
    if not shutil.which("gnuplot"):
        log("gnuplot is missing (apt-get install gnuplot-nox): no plots")
        return []
    made = []
    for fname, cols, title, ylabel in (
            ("throughput.png", [("offered", "offered"), ("achieved", "achieved")],
             "Checks/s per phase (5 nodes, RPC, owner routing)", "checks/s"),
            ("latency.png", [("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")],
             "Request latency per phase", "ms")):
        data = out / (fname + ".dat")
        data.write_text("".join(
            f'"{name}" ' + " ".join(str(ph[c] or 0) for c, _ in cols) + "\n" for name, ph in phases))
        using = ", ".join(f'"{data}" using {i + 2}:xtic(1) title "{t}"' for i, (_, t) in enumerate(cols))
        script = (f'set terminal pngcairo size 900,450; set output "{out / fname}"; set title "{title}";'
                  f'set ylabel "{ylabel}"; set style data histograms; set style histogram clustered;'
                  'set style fill solid 0.6; set grid ytics; set yrange [0:*]; set key top left;'
                  f"plot {using}")
        r = subprocess.run(["gnuplot", "-e", script], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            made.append(fname)
        else:
            log(f"gnuplot: {r.stderr.strip()}")
        data.unlink()
    return made


def run(args, nodes, pids, redis_addr):
    texts = lambda: [metrics(a) for a in nodes]  # noqa: E731
    phases = []
    log(f"peak with batches of 100 ({args.duration} s)")
    peak = bench(nodes, args.duration, 0, args.keys, 100)
    phases.append(("peak", peak))
    steady = round(0.8 * peak["achieved"])
    for name, rate in (("steady", steady), ("burst 1.2x", round(1.2 * steady)), ("steady again", steady)):
        log(f"{name}: {rate:,} checks/s offered ({args.duration} s)")
        h0 = redis_histogram(texts())
        r = bench(nodes, args.duration, rate, args.keys, 100)
        r["redis"] = redis_latency(h0, redis_histogram(texts()))
        phases.append((name, r))
    log(f"single checks: peak, then half of it ({args.duration} s each)")
    single = bench(nodes, args.duration, 0, args.keys, 0)
    phases.append(("single peak", single))
    h0 = redis_histogram(texts())
    half = bench(nodes, args.duration, round(0.5 * single["achieved"]), args.keys, 0)
    half["redis"] = redis_latency(h0, redis_histogram(texts()))
    phases.append(("single at half", half))

    log(f"HTTP peak: 64 connections over the 5 nodes, closed loop ({args.duration} s)")
    hpeak = http_load(nodes, args.duration, 0, args.keys)
    phases.append(("HTTP peak", hpeak))
    log(f"HTTP at half of that, evenly spaced ({args.duration} s)")
    h0 = redis_histogram(texts())
    hhalf = http_load(nodes, args.duration, round(0.5 * hpeak["achieved"]), args.keys)
    hhalf["redis"] = redis_latency(h0, redis_histogram(texts()))
    phases.append(("HTTP at half", hhalf))

    memory = memory_phase(args, nodes, pids, peak["achieved"], redis_addr)
    checks = sum(p["checks"] for _, p in phases) + memory["checks"]
    wrong = sum(p["errors"] + p["fallbacks"] + p["limited"] for _, p in phases)
    wrong += memory["errors"] + memory["limited"]
    return phases, memory, {"checks": checks, "failed_or_wrongly_limited": wrong,
                            "rate": wrong / checks if checks else None}


def hhalf_mean(phases):
    return next((p.get("mean_ms") for name, p in phases if name == "HTTP at half"), None)


def report(args, phases, memory, errors):
    args.out.mkdir(parents=True, exist_ok=True)
    pngs = plot(args.out, phases)
    data = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores",
            "args": {k: str(v) for k, v in vars(args).items()}, "phases": dict(phases),
            "memory": memory, "errors": errors, "plots": pngs}
    (args.out / "report.json").write_text(json.dumps(data, indent=2))

    def f(v, fmt=",.0f"):
        return "–" if v is None else format(v, fmt)
    L = [f"# The seed plan's four tests ({data['date']}, {data['machine']}, 5 nodes + Redis in "
         "network namespaces, load generator on the same cores)", "",
         "| phase | offered /s | achieved /s | p50 / p99 / p99.9 ms | Redis mean / p99 ms (commands) "
         "| errors | wrongly limited |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, p in phases:
        red = p.get("redis")
        rtxt = "–" if not red or not red["commands"] else (
            f"{f(red['mean_ms'], '.2f')} / ≤{f(red['p99_ms'], '.1f')} ({red['commands']:,})")
        L.append(f"| {name} | {'max' if not p['offered'] else f(p['offered'])} | {f(p['achieved'])} | "
                 f"{f(p['p50_ms'], '.2f')} / {f(p['p99_ms'], '.2f')} / {f(p['p999_ms'], '.2f')} | "
                 f"{rtxt} | {p['errors'] + p['fallbacks']} | {p['limited']} |")
    per_key = memory["bytes_per_key"]
    L += ["", "HTTP phases: bench/http_paced.cc with 64 keep-alive connections spread over the five "
          "nodes (checks enter anywhere and ~80% are forwarded to their owner), closed loop for "
          "the peak, then requests evenly spaced at half of it with latency from each one's due "
          f"time. Mean request latency at half of peak: {f(hhalf_mean(phases), '.3f')} ms (the seed "
          "expects ~0.8 ms on average).", "",
          f"Memory: {memory['keys_added']:,} keys of a 100-per-day limit added "
          f"({memory['checks']:,} checks): the nodes' RSS grew by "
          f"{memory['rss_growth_bytes'] / 2**20:.1f} MB = **{f(per_key, '.1f')} B per key** (their "
          f"store tables: {f(memory['store_bytes_per_key'], '.1f')} B per key); "
          f"Redis's snapshots of them {f(memory['redis_bytes_per_key'], '.1f')} B per key. "
          "RSS per node at the end (MB): " + ", ".join(f"{v}" for v in memory["rss_mb_per_node"].values()) + ".",
          "",
          f"Error rate: {errors['failed_or_wrongly_limited']} failed or wrongly limited of "
          f"{errors['checks']:,} checks = {f(errors['rate'] * 100 if errors['rate'] is not None else None, '.5f')} % "
          "(seed target < 0.001 %).", ""] + [f"![{x}]({x})" for x in pngs]
    (args.out / "report.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--memory-keys", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "seed-report")
    p.add_argument("--prefix", default="txsr")
    p.add_argument("--subnet", default="10.77.6")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if min(args.duration, args.keys, args.memory_keys, args.threads) <= 0:
        p.error("duration, key counts and threads must be positive")
    if not re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}", args.subnet):
        p.error("--subnet takes the first three octets, e.g. 10.77.6")
    if os.geteuid() != 0:
        log("needs root (network namespaces)")
        return 77
    for b in ("throttlexd", "throttlex-bench", "throttlectl", "http-paced"):
        if not (BIN / b).exists():
            log(f"no {BIN / b}: build first")
            return 2
    for t in ("redis-cli",):
        if not shutil.which(t):
            log(f"{t} is missing (scripts/setup.sh installs it)")
            return 2
    run_dir = Path(f"/tmp/throttlex-seed-{args.prefix}")
    base = [str(CLUSTER_SH)]
    opts = ["--prefix", args.prefix, "--run-dir", str(run_dir)]
    env = {**os.environ, "THROTTLEX_BIN": str(BIN)}
    up = subprocess.run(base + ["up", "--nodes", "5", "--subnet", args.subnet, "--redis",
                                "--threads", str(args.threads)] + opts, env=env, timeout=120)
    if up.returncode != 0:
        log("the cluster did not come up")
        return 1
    try:
        nodes = [node_addr(args.subnet, i) for i in range(1, 6)]
        for a in nodes + [f"{args.subnet}.2"]:
            route = subprocess.run(["ip", "-4", "route", "get", a], capture_output=True, text=True).stdout
            if f" dev {args.prefix}-br " not in route:
                log(f"route to {a} is not through {args.prefix}-br ({route.strip()}): abort")
                return 1
        pids = {a: int((run_dir / f"node-{i}.pid").read_text()) for i, a in enumerate(nodes, 1)}
        phases, memory, errors = run(args, nodes, pids, f"{args.subnet}.2")
        report(args, phases, memory, errors)
        log(f"written: {args.out}/report.md, report.json and plots")
        return 0
    finally:
        subprocess.run(base + ["down"] + opts, env=env, timeout=120)


if __name__ == "__main__":
    sys.exit(main())
