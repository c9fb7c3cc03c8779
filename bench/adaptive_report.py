#!/usr/bin/python3
"""Adaptive limits against a simulated backend (docs/adaptive.md, docs/benchmarks.md).

  bench/adaptive_report.py [--bin build/bin] [--capacity 200] [--seconds 90] [--double-at 60]
                           [--runs static,gradient,aimd,gradient-5,aimd-5] [--rounds 1] [--out DIR]

The backend has a capacity C (calls a second): one FIFO server with a service time of 1/C plus a
fixed 20 ms, so every call admitted beyond C waits in its queue and its latency grows with the
queue. It lives in this process, in simulated time that follows the wall clock. A generator offers
3xC checks a second under one key of the rule (POST /v1/check batches every 50 ms), calls the
backend only for the admitted ones, and reports every completed call (POST /v1/report, batched
every 50 ms, at the time the call completes). C doubles at --double-at.

Runs (one after the other, each with its own fresh nodes):
  static       the rule with limit 3xC and no adaptive block, one node: the queue grows unbounded
  gradient     adaptive (law: gradient) from 3xC, one node
  aimd         adaptive (law: aimd), one node
  gradient-5   the gradient law on a 5-node cluster; checks and reports enter at random nodes
  aimd-5       the same with AIMD

Per 1 s window: the effective limit (the `limit` the checks answered, last of the window),
admitted calls, and the backend latency (p50/p99 of the calls completed in the window). Judged as
the issue asks: settled within 15 s (the limit within +-20% of C), held there from 15 s to 45 s,
backend p99 over those windows under 2x the target, and after C doubles the seconds until the
limit is within 20% of 2xC. With --rounds N every run is repeated N times (in alternating order)
and the table shows the median of each figure, with the range. Writes report.json, report.md and
one PNG per run (gnuplot, of its first round) to --out.
Every process started here is stopped by PID; every run is bounded in time.
"""
import argparse
import heapq
import http.client
import json
import os
import random
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
TARGET_MS = 100
BASE_MS = 20
RUNS = ("static", "gradient", "aimd", "gradient-5", "aimd-5")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rules_yaml(run, capacity):
    start = 3 * capacity
    text = f"rules:\n  - name: backend\n    limit: {start}\n    period: 1s\n"
    if run != "static":
        law = run.split("-")[0]
        text += (f"    adaptive:\n      min: 10\n      max: {10 * capacity}\n"
                 f"      latency_target: {TARGET_MS}ms\n      law: {law}\n      interval: 1s\n")
    return text


class Nodes:
    """n throttlexd processes on free ports, --threads 1, joined; stopped by PID."""

    def __init__(self, binary, n, work, rules):
        self.procs, self.http = [], []
        rules_path = work / "rules.yaml"
        rules_path.write_text(rules)
        seed = None
        name = f"adaptive-{os.getpid()}-{time.monotonic_ns()}"
        for i in range(n):
            ports = [free_port() for _ in range(4)]
            args = [str(binary / "throttlexd"), "--node-id", f"n{i + 1}", "--bind", "127.0.0.1",
                    "--cluster-name", name, "--gossip-preset", "local", "--threads", "1",
                    "--http-port", str(ports[0]), "--rpc-port", str(ports[1]),
                    "--metrics-port", str(ports[2]), "--gossip-port", str(ports[3]),
                    "--rules", str(rules_path)]
            if seed:
                args += ["--join", seed]
            log = open(work / f"n{i + 1}.log", "w")
            self.procs.append(subprocess.Popen(args, stdout=log, stderr=log))
            self.http.append(ports[0])
            seed = seed or f"127.0.0.1:{ports[3]}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if all(self.alive(p) >= n for p in self.http):
                    self.conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=10)
                                  for p in self.http]
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"nodes did not come up in 60 s (logs in {work})")

    @staticmethod
    def alive(port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            c.request("GET", "/v1/cluster")
            members = json.loads(c.getresponse().read())["members"]
            return sum(1 for m in members if m["state"] == "alive")
        finally:
            c.close()

    def post(self, path, body):
        i = random.randrange(len(self.conns))
        c = self.conns[i]
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read()
        if r.status not in (200, 202):
            raise RuntimeError(f"{path}: {r.status} {text[:200]!r}")
        return json.loads(text)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Backend:
    """One FIFO server: service time 1/C, plus BASE_MS for every call."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.free_at = 0.0

    def call(self, now):
        """Admits a call at `now`; returns when it completes."""
        start = max(now, self.free_at)
        self.free_at = start + 1.0 / self.capacity
        return self.free_at + BASE_MS / 1000


def pct(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def one_run(run, args, work):
    n = 5 if run.endswith("-5") else 1
    nodes = Nodes(args.bin, n, work, rules_yaml(run, args.capacity))
    backend = Backend(args.capacity)
    offered = 3 * args.capacity
    tick = 0.05
    completions = []  # heap of (done_at, latency_s)
    windows = [{"t": s, "limit": None, "admitted": 0, "latencies": [], "capacity": None}
               for s in range(args.seconds)]
    t0 = time.monotonic()
    next_tick = t0
    owed = 0.0
    try:
        while True:
            now = time.monotonic()
            elapsed = now - t0
            if elapsed >= args.seconds:
                break
            second = int(elapsed)
            if args.double_at and elapsed >= args.double_at:
                backend.capacity = 2 * args.capacity
            windows[second]["capacity"] = backend.capacity
            # Offer 3xC a second, in batches every tick.
            owed += offered * tick
            batch = int(owed)
            owed -= batch
            if batch:
                results = nodes.post("/v1/check", {"checks": [{"rule": "backend", "key": "k"}] * batch})
                for r in results["results"]:
                    if "error" in r:
                        raise RuntimeError(f"check failed: {r}")
                    windows[second]["limit"] = r["limit"]
                    if r["allowed"]:
                        windows[second]["admitted"] += 1
                        done = backend.call(now)
                        heapq.heappush(completions, (done, done - now))
            # Report what completed by now.
            reports = []
            while completions and completions[0][0] <= now:
                done, latency = heapq.heappop(completions)
                windows[min(int(done - t0), args.seconds - 1)]["latencies"].append(latency)
                reports.append({"rule": "backend", "latency_ms": round(latency * 1000, 3)})
            for i in range(0, len(reports) if run != "static" else 0, 1000):  # static: nothing to report to
                nodes.post("/v1/report", {"reports": reports[i:i + 1000]})
            next_tick += tick
            time.sleep(max(0.0, next_tick - time.monotonic()))
    finally:
        nodes.stop()
    rows = []
    for w in windows:
        rows.append({"t": w["t"], "capacity": w["capacity"], "limit": w["limit"],
                     "admitted": w["admitted"],
                     "p50_ms": None if not w["latencies"] else round(pct(w["latencies"], 0.5) * 1000, 1),
                     "p99_ms": None if not w["latencies"] else round(pct(w["latencies"], 0.99) * 1000, 1)})
    return rows


def judge(rows, args):
    c = args.capacity
    held = rows[15:45]
    within = [r for r in held if r["limit"] is not None and abs(r["limit"] - c) <= 0.2 * c]
    p99s = [r["p99_ms"] for r in held if r["p99_ms"] is not None]
    settled = next((r["t"] for r in rows
                    if all(x["limit"] is not None and abs(x["limit"] - c) <= 0.2 * c
                           for x in rows[r["t"]:min(len(rows), r["t"] + 5)])), None)
    follow = None
    if args.double_at and args.double_at < len(rows):
        hit = next((r["t"] for r in rows[args.double_at:]
                    if r["limit"] is not None and abs(r["limit"] - 2 * c) <= 0.4 * c), None)
        follow = None if hit is None else hit - args.double_at
    return {"settled_s": settled, "within_15_45": len(within),
            "p99_max_ms_15_45": max(p99s) if p99s else None,
            "p99_median_ms_15_45": statistics.median(p99s) if p99s else None,
            "follow_2c_s": follow,
            "limit_median_15_45": statistics.median([r["limit"] for r in held if r["limit"]])
            if held else None}


def plot(run, rows, out):
    if not shutil.which("gnuplot"):
        print("gnuplot is missing (apt-get install gnuplot-nox): no plot", file=sys.stderr)
        return None
    data = out / f"{run}.dat"
    data.write_text("".join(f'{r["t"]} {r["limit"] or "NaN"} {r["capacity"] or "NaN"} '
                            f'{r["p99_ms"] if r["p99_ms"] is not None else "NaN"}\n' for r in rows))
    png = out / f"{run}.png"
    script = (f'set terminal pngcairo size 900,420; set output "{png}";'
              f'set title "{run}: effective limit and backend p99 (target {TARGET_MS} ms)";'
              'set xlabel "s"; set ylabel "calls/s"; set y2label "backend p99 (ms, log)";'
              'set ytics nomirror; set y2tics; set logscale y2; set grid; set key top right;'
              f'plot "{data}" using 1:2 with steps lw 2 title "effective limit",'
              f' "{data}" using 1:3 with steps dt 2 title "capacity C",'
              f' "{data}" using 1:4 axes x1y2 with lines title "backend p99"')
    r = subprocess.run(["gnuplot", "-e", script], capture_output=True, text=True, timeout=60)
    data.unlink()
    if r.returncode != 0:
        print(f"gnuplot: {r.stderr.strip()}", file=sys.stderr)
        return None
    return png.name


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", type=Path, default=ROOT / "build" / "bin")
    p.add_argument("--capacity", type=int, default=200)
    p.add_argument("--seconds", type=int, default=90)
    p.add_argument("--double-at", type=int, default=60)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--out", type=Path, default=ROOT / "build" / "adaptive-report")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    runs = [r for r in args.runs.split(",") if r]
    if not runs or any(r not in RUNS for r in runs):
        p.error(f"--runs takes names from {','.join(RUNS)}")
    if args.capacity <= 0 or args.seconds < 50 or not 0 <= args.double_at < args.seconds or args.rounds < 1:
        p.error("--capacity and --rounds must be positive, --seconds at least 50, --double-at "
                "within the run")
    if not (args.bin / "throttlexd").exists():
        print(f"missing: {args.bin / 'throttlexd'}", file=sys.stderr)
        return 2
    random.seed(args.seed)
    # SIGTERM ends the run like Ctrl-C: the nodes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"capacity": args.capacity, "seconds": args.seconds, "double_at": args.double_at,
              "target_ms": TARGET_MS, "rounds": args.rounds, "runs": {r: {"rounds": []} for r in runs}}
    for i in range(args.rounds):
        for run in (runs if i % 2 == 0 else list(reversed(runs))):
            with tempfile.TemporaryDirectory(prefix="throttlex-adaptive-") as work:
                rows = one_run(run, args, Path(work))
            verdict = judge(rows, args)
            entry = report["runs"][run]
            if not entry["rounds"]:
                entry["plot"] = plot(run, rows, args.out)
            entry["rounds"].append({"verdict": verdict, "windows": rows})
            print(f"round {i + 1} {run}: {json.dumps(verdict)}", flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    lines = [f"C = {args.capacity}/s (doubles at {args.double_at} s), offered 3xC under one key, "
             f"latency target {TARGET_MS} ms at p90; median of {args.rounds} round(s) "
             "(range in brackets).", "",
             "| run | settled (s) | windows within ±20% of C, 15-45 s | limit median 15-45 s | "
             "backend p99 median / max 15-45 s (ms) | follows 2xC after (s) |",
             "|---|---|---|---|---|---|"]
    for run, r in report["runs"].items():
        vs = [x["verdict"] for x in r["rounds"]]
        lines.append(f"| {run} | {summary(vs, 'settled_s')} | {summary(vs, 'within_15_45')}/30 | "
                     f"{summary(vs, 'limit_median_15_45')} | {summary(vs, 'p99_median_ms_15_45')} / "
                     f"{summary(vs, 'p99_max_ms_15_45')} | {summary(vs, 'follow_2c_s')} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def summary(verdicts, key):
    """The median of one figure over the rounds, with its range; "-" where it never happened."""
    vals = [v[key] for v in verdicts if v[key] is not None]
    if not vals:
        return "-"
    if len(vals) < len(verdicts):
        return f"{statistics.median(vals):g} ({len(verdicts) - len(vals)} never)"
    if len(vals) == 1:
        return f"{vals[0]:g}"
    return f"{statistics.median(vals):g} [{min(vals):g}-{max(vals):g}]"


if __name__ == "__main__":
    sys.exit(main())
