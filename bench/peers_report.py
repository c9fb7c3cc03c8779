#!/usr/bin/env python3
"""ThrottleX side by side with the limiters users would pick instead, same machine, same load.

    bench/peers_report.py [--duration 10] [--rounds 3] [--rate 5000] [--keys 100000]
                          [--fill-keys 200000] [--out build/peers-report] [--only NAME,...]

The peers (issue 6, "Peers side by side"), each answering an HTTP GET per check on loopback:
  throttlex    throttlexd --threads 1, GET /v1/check?key=K&limit=1000000&period=1m (memory only)
  nginx        nginx limit_req (1 worker), limit_req_zone $arg_key, 64 MB zone
  rlf-memory   rate-limiter-flexible RateLimiterMemory behind a Node.js HTTP server
  rlf-redis    rate-limiter-flexible RateLimiterRedis (ioredis) behind the same server + redis-server
  redis-lua    a token bucket in a Redis Lua script (bench/peers/token_bucket.lua, EVALSHA through
               ioredis) behind the same server + redis-server: the "central store on the hot path"
Per peer, in this order, with the load generators on the same 2 cores (1 thread each):
  peak         wrk -t1 -c64 -dD --latency, keys uniform over KEYS, limits far above the load:
               requests/s, and every answer that is not 2xx is counted as an error (nothing may
               be throttled at these limits)
  latency      bench http-paced (build/bin/http-paced, 64 connections): requests evenly spaced at a
               fixed offered rate, open loop, latency from each request's due time — first at
               RATE/s for every peer (the same load), then at half of the peak the peer reached in
               this round (the target's "half of peak load"). wrk's delay() is not used for this:
               it paces on millisecond timers per connection, so answers that came together send
               together, and the percentiles were those of bursts of up to 32 requests
  memory/key   FILL_KEYS new keys, one check each of a limit of 100 per day (nginx: 1 per minute)
               so that the state lasts past the measurement; the growth of the memory that holds the state,
               divided by FILL_KEYS: throttlexd's and Node's RSS, nginx's worker RSS (the shared
               zone's touched pages), Redis's used_memory for the Redis-backed peers
Rounds alternate the peers; medians over rounds, and ratios peer / throttlex. Writes report.md,
report.json and, with gnuplot, throughput.png, latency.png, memory.png into --out.
Needs wrk, build/bin/http-paced, nginx, node with bench/peers/node_modules (npm ci --prefix bench/peers), redis-server.
Every process started here is stopped by PID; each wrk run is bounded by its duration.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
BIN = Path(os.environ.get("THROTTLEX_BIN", ROOT / "build" / "bin"))
WRK_LUA = PEERS / "wrk.lua"
NAMES = ["throttlex", "nginx", "rlf-memory", "rlf-redis", "redis-lua"]

NGINX_CONF = """
worker_processes 1;
error_log {tmp}/error.log error;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  limit_req_zone $arg_key zone=peers:64m rate=100000r/s;
  limit_req_zone $arg_key zone=fill:64m rate=1r/m;
  limit_req_status 429;
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location /check {{
      limit_req zone=peers burst=100000 nodelay;
      default_type application/json;
      return 200 '{{"allowed":true}}';
    }}
    location /fill {{
      limit_req zone=fill burst=100 nodelay;
      default_type application/json;
      return 200 '{{"allowed":true}}';
    }}
  }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (status {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet, bounded by the deadline
    raise RuntimeError(f"{what} did not open port {port} within {timeout:.0f} s")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


class Peer:
    """One running limiter: its URL shape and where its state's memory shows."""

    def __init__(self, name, tmp):
        self.name, self.tmp = name, tmp
        self.procs = []
        self.redis_port = None
        self.port = free_port()
        self.prefix, self.suffix = "/check?key=", ""
        self.fill_prefix, self.fill_suffix = "/fill?key=", ""

    def spawn(self, cmd, env=None, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, **(env or {})}, **kw)
        self.procs.append(p)
        return p

    def start(self):
        n = self.name
        if n in ("rlf-redis", "redis-lua"):
            self.redis_port = free_port()
            r = self.spawn(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no"])
            wait_port(self.redis_port, r, "redis-server")
        if n == "throttlex":
            self.main = self.spawn([str(BIN / "throttlexd"), "--bind", "127.0.0.1", "--http-port",
                                    str(self.port), "--rpc-port", "0", "--metrics-port", "0",
                                    "--threads", "1"])
            self.prefix, self.suffix = "/v1/check?key=", "&limit=1000000&period=1m"
            self.fill_prefix, self.fill_suffix = "/v1/check?key=", "&limit=100&period=1d"
        elif n == "nginx":
            conf = Path(self.tmp) / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=self.tmp, port=self.port))
            self.main = self.spawn(["nginx", "-p", self.tmp, "-c", str(conf), "-g", "daemon off;"])
        else:
            mode = {"rlf-memory": ["memory"], "rlf-redis": ["redis", f"127.0.0.1:{self.redis_port}"],
                    "redis-lua": ["lua", f"127.0.0.1:{self.redis_port}"]}[n]
            self.main = self.spawn(["node", str(PEERS / "server.js"), str(self.port), *mode],
                                   env={"LIMIT": "1000000", "PERIOD_S": "1"})
        wait_port(self.port, self.main, n)

    def memory_bytes(self):
        """The memory that grows with the number of keys (None: not measurable here)."""
        if self.name == "nginx":
            # limit_req keeps its states in a shared zone of fixed size, which shows as resident
            # neither in the worker's RSS nor in the system's Shmem as it fills (measured: no
            # change for 100,000 states). nginx documents ~16,000 states per MB (~64 B each).
            return None
        if self.redis_port:
            out = subprocess.run(["redis-cli", "-p", str(self.redis_port), "info", "memory"],
                                 capture_output=True, text=True, timeout=10).stdout
            return int(re.search(r"^used_memory:(\d+)", out, re.M).group(1))
        pids = children(self.main.pid) if self.name == "nginx" else [self.main.pid]
        return sum(rss_kb(p) for p in pids) * 1024

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)


def wrk(peer, args, duration, connections, env, latency=True):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(WRK_LUA)]
    if latency:
        cmd.append("--latency")
    cmd.append(f"http://127.0.0.1:{peer.port}")
    full_env = {**os.environ, "PREFIX": peer.prefix, "SUFFIX": peer.suffix,
                "KEYS": str(args.keys), **env}
    out = subprocess.run(cmd, capture_output=True, text=True, env=full_env,
                         timeout=duration + 60).stdout
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    total = re.search(r"(\d+) requests in", out)
    r["requests"] = int(total.group(1)) if total else 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["errors"] = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            v = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            r[f"p{q}_ms"] = v
    return r


def paced(peer, args, rate):
    """Latency at a fixed offered rate (bench/http_paced.cc): evenly spaced, open loop."""
    cmd = [str(BIN / "http-paced"), "--port", str(peer.port), "--rate", str(round(rate)),
           "--connections", "64", "--duration", str(args.duration), "--warmup", "1",
           "--prefix", peer.prefix, "--suffix", peer.suffix, "--keys", str(args.keys), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60)
    if not out.stdout.strip():
        raise RuntimeError(f"http-paced failed (rc {out.returncode}): {out.stderr.strip()}")
    j = json.loads(out.stdout)
    return {"rate": rate, "rps": j["achieved_rate"], "requests": j["answered"] + j["unsent"],
            "errors": j["non_2xx"] + j["socket_errors"] + j["unsent"],
            "p50_ms": j["latency_ms"]["p50"], "p99_ms": j["latency_ms"]["p99"],
            "late_p99_ms": j["lateness_ms"]["p99"]}


def measure(name, args):
    with tempfile.TemporaryDirectory(prefix=f"peers-{name}-") as tmp:
        peer = Peer(name, tmp)
        try:
            peer.start()
            wrk(peer, args, 2, 64, {}, latency=False)  # warm-up: connections, JIT, allocator
            peak = wrk(peer, args, args.duration, 64, {})
            fixed = paced(peer, args, args.rate)
            half = paced(peer, args, 0.5 * peak["rps"])
            time.sleep(2)  # the load's states (1 s limits) expire first; not synchronisation
            before = peer.memory_bytes()
            # wrk runs for its whole duration even when the script stopped its thread: as long
            # as the keys take at half the peak rate, so that the state is still there (nginx
            # drops an idle node after 60 s).
            fill_s = min(50, int(args.fill_keys / max(1.0, 0.5 * peak["rps"])) + 2)
            fill = wrk(peer, args, fill_s, 8, {"MODE": "fill", "KEYS": str(args.fill_keys),
                                             "PREFIX": peer.fill_prefix,
                                             "SUFFIX": peer.fill_suffix}, latency=False)
            time.sleep(0.5)  # let the allocator's statistics settle; not synchronisation
            after = peer.memory_bytes()
            return {"peak_rps": peak["rps"], "peak_requests": peak["requests"],
                    "peak_errors": peak["errors"], "peak_p50_ms": peak.get("p50_ms"),
                    "peak_p99_ms": peak.get("p99_ms"), "fixed_rps": fixed["rps"],
                    "fixed_requests": fixed["requests"], "fixed_errors": fixed["errors"],
                    "fixed_p50_ms": fixed["p50_ms"], "fixed_p99_ms": fixed["p99_ms"],
                    "fixed_late_p99_ms": fixed["late_p99_ms"], "half_rate": half["rate"],
                    "half_rps": half["rps"], "half_requests": half["requests"],
                    "half_errors": half["errors"], "half_p50_ms": half["p50_ms"],
                    "half_p99_ms": half["p99_ms"], "half_late_p99_ms": half["late_p99_ms"],
                    "fill_requests": fill["requests"], "fill_errors": fill["errors"],
                    "bytes_per_key": None if before is None else (after - before) / args.fill_keys}
        finally:
            peer.stop()


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def plot(out, summary, names):
    if not shutil.which("gnuplot"):
        print("gnuplot is missing (apt-get install gnuplot-nox): no plots", file=sys.stderr)
        return []
    made = []
    for fname, key, title, ylabel in (
            ("throughput.png", "peak_rps", "Peak throughput, 1 core each (wrk -t1 -c64)", "checks/s"),
            ("latency.png", "fixed_p99_ms", "p99 latency, same offered rate for all", "ms"),
            ("latency_half.png", "half_p99_ms", "p99 latency at half of each one's peak", "ms"),
            ("memory.png", "bytes_per_key", "Memory per key", "bytes")):
        data = out / (fname + ".dat")
        shown = [n for n in names if summary[n][key] is not None]
        data.write_text("".join(f'"{n}" {summary[n][key]}\n' for n in shown))
        script = (f'set terminal pngcairo size 800,450; set output "{out / fname}";'
                  f'set title "{title}"; set ylabel "{ylabel}"; set style fill solid 0.6;'
                  'set boxwidth 0.6; set grid ytics; set yrange [0:*]; unset key;'
                  f'plot "{data}" using 0:2:xtic(1) with boxes')
        r = subprocess.run(["gnuplot", "-e", script], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            made.append(fname)
        else:
            print(f"gnuplot: {r.stderr.strip()}", file=sys.stderr)
        data.unlink()
    return made


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--fill-keys", type=int, default=200_000)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "peers-report")
    p.add_argument("--only", default=",".join(NAMES))
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        p.error(f"--only takes names from {','.join(NAMES)}")
    if min(args.duration, args.rounds, args.rate, args.keys, args.fill_keys) <= 0:
        p.error("durations, rounds, rates and key counts must be positive")
    # What the chosen peers need (--only throttlex,nginx needs neither Node.js nor Redis).
    node_peers = [n for n in names if n.startswith(("rlf-", "redis-"))]
    tools = ["wrk"] + (["nginx"] if "nginx" in names else [])
    tools += ["node"] if node_peers else []
    tools += ["redis-server", "redis-cli"] if any(n != "rlf-memory" for n in node_peers) else []
    missing = [t for t in tools if not shutil.which(t)]
    missing += [str(BIN / b) for b in ("throttlexd", "http-paced") if not (BIN / b).exists()]
    if node_peers and not (PEERS / "node_modules" / "rate-limiter-flexible").exists():
        missing.append("bench/peers/node_modules (npm ci --prefix bench/peers)")
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    rows = {n: [] for n in names}
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else list(reversed(names))):
            m = measure(n, args)
            rows[n].append(m)
            print(f"round {r + 1} {n}: {m['peak_rps']:,.0f}/s peak ({m['peak_errors']} errors), "
                  f"{m['fixed_rps']:,.0f}/s fixed p50 {m['fixed_p50_ms']:.3f} ms p99 {m['fixed_p99_ms']:.3f} ms, "
                  f"{m['half_rps']:,.0f}/s half p50 {m['half_p50_ms']:.3f} ms p99 {m['half_p99_ms']:.3f} ms, "
                  f"{'–' if m['bytes_per_key'] is None else format(m['bytes_per_key'], '.0f')} B/key",
                  file=sys.stderr, flush=True)
    keys = ["peak_rps", "peak_p50_ms", "peak_p99_ms", "fixed_rps", "fixed_p50_ms", "fixed_p99_ms",
            "fixed_late_p99_ms", "half_rate", "half_rps", "half_p50_ms", "half_p99_ms",
            "half_late_p99_ms", "bytes_per_key"]
    summary = {n: {k: median(rows[n], k) for k in keys} for n in names}
    for n in names:
        s = summary[n]
        requests = sum(r["peak_requests"] + r["fixed_requests"] + r["half_requests"] +
                       r["fill_requests"] for r in rows[n])
        errors = sum(r["peak_errors"] + r["fixed_errors"] + r["half_errors"] + r["fill_errors"]
                     for r in rows[n])
        s["requests"], s["errors"] = requests, errors
        s["error_rate"] = errors / requests if requests else None
    base = summary.get("throttlex")
    pngs = plot(args.out, summary, names)

    report = {"machine": f"{os.cpu_count()} cores, {os.uname().release}", "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "date": time.strftime("%Y-%m-%d"), "rounds": rows, "median": summary, "plots": pngs}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)
    lines = [f"# ThrottleX and its peers ({report['date']}, {report['machine']})", "",
             f"Medians of {args.rounds} rounds, generators on the same cores (1 thread): peak with "
             f"wrk -t1 -c64; latency with http-paced (evenly spaced, open loop, from each request's "
             f"due time) at {args.rate:,}/s for all and at half of each one's peak; memory per key "
             f"from {args.fill_keys:,} new keys.", "",
             "| limiter | peak checks/s | × throttlex | p50 / p99 ms at "
             f"{args.rate:,}/s | p99 × throttlex | half of peak: offered /s, p50 / p99 ms "
             "| bytes per key | × throttlex | errors / requests |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def ratio(s, key):
        b = base.get(key) if base else None
        return s[key] / b if b and s[key] is not None and b > 0 else None
    for n in names:
        s = summary[n]
        lines.append(f"| {n} | {f(s['peak_rps'], ',.0f')} | {f(ratio(s, 'peak_rps'), '.2f')} | "
                     f"{f(s['fixed_p50_ms'], '.3f')} / {f(s['fixed_p99_ms'], '.3f')} | "
                     f"{f(ratio(s, 'fixed_p99_ms'), '.2f')} | {f(s['half_rate'], ',.0f')}: "
                     f"{f(s['half_p50_ms'], '.3f')} / {f(s['half_p99_ms'], '.3f')} | "
                     f"{f(s['bytes_per_key'], '.0f')} | {f(ratio(s, 'bytes_per_key'), '.2f')} | "
                     f"{s['errors']} / {s['requests']:,} |")
    if base:
        # A round measures every peer back to back, so the machine's drift between rounds (this
        # VM's peaks move by ±25%) cancels in a ratio taken within the round.
        paired = []
        for n in names:
            if n == "throttlex":
                continue
            rs = sorted(p["peak_rps"] / t["peak_rps"] for p, t in zip(rows[n], rows["throttlex"])
                        if t["peak_rps"])
            if rs:
                summary[n]["peak_ratio_paired"] = statistics.median(rs)
                paired.append(f"{n} {statistics.median(rs):.2f} ({rs[0]:.2f}–{rs[-1]:.2f})")
        if paired:
            lines += ["", "Peak × throttlex within each round (median of the rounds' ratios, and "
                      "their range): " + ", ".join(paired) + "."]
    lines += ["", "Generator lateness (due → sent), p99 at the common rate / at half of peak: " +
              ", ".join(f"{n} {f(summary[n]['fixed_late_p99_ms'], '.3f')} / "
                        f"{f(summary[n]['half_late_p99_ms'], '.3f')} ms" for n in names) +
              " (a late request's wait is in its latency: it is measured from when it was due)."]
    if "nginx" in names:
        lines += ["", "nginx: bytes per key not measured — limit_req's shared zone has a fixed size "
                  "(64 MB here) and filling it shows in no RSS or Shmem figure; nginx documents "
                  "about 16,000 states per MB (~64 B each)."]
    lines += [""] + [f"![{png}]({png})" for png in pngs]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {args.out}/report.md, report.json" + "".join(f", {x}" for x in pngs),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
