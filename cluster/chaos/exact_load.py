#!/usr/bin/env python3
"""A load generator that knows the right answer (cluster/chaos/rolling_restart.sh; issue 6's
oracle for wrongly allowed / denied decisions).

    exact_load.py --node HOST:PORT ... --out FILE [--keys 2000] [--limit 50] [--period 1d]
                  [--rate 2000] [--threads 4] [--batch 50] [--duration 120] [--deadline 5]

Every key has the same inline limit, LIMIT per PERIOD (token bucket, default 50 per day: it
refills 50/86400 units per second, under one unit in a run shorter than 28 minutes). So a correct
cluster admits exactly LIMIT checks of each key over the whole run, whatever happens to its
nodes, and then denies every check: the oracle is a count of allowed answers per key.

The load: THREADS threads send POST /v1/check batches of BATCH one-hit checks of random keys
over HTTP (docs/api.md), RATE checks/s in all (open loop per thread), each batch to the next node
in turn, until SIGTERM/SIGINT or DURATION s. A batch that fails (connection refused or reset, a
timeout, an HTTP status other than 200) goes to the next node, until it gets an answer or DEADLINE
s have passed — then it is a client-visible error. A batch that failed after it was sent may
have been decided (ambiguous): its checks are counted, since they can only make keys look
under-admitted, never over-admitted.

Then a final sweep, after the load: every key is checked again, one check per key per round,
until every key has been denied once (at most LIMIT + 1 rounds), so that a key the load never
exhausted is counted too. Per key, allowed answers (load + sweep) against LIMIT give:
  over_admitted   sum over keys of max(0, allowed - LIMIT): units granted twice (lost state);
  under_admitted  sum over keys of max(0, LIMIT - allowed) among keys denied in the sweep.
The JSON written to --out has those, checks, errors, ambiguous checks, routes, batch latency and
the first errors. Traffic goes only to the --node addresses (the caller checks their routes).
Exit status: 0 (the caller judges), 2 usage or no answer at all.
"""
import argparse
import http.client
import json
import random
import signal
import sys
import threading
import time

PERIODS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def period_ms(text):
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * PERIODS[unit]
    raise argparse.ArgumentTypeError(f"bad period {text!r}")


class Ambiguous(Exception):
    """The request was sent; whether it was decided is unknown."""


class Nodes:
    """One keep-alive connection per node for one thread; failover to the next node."""

    def __init__(self, addrs, timeout):
        self.addrs = addrs
        self.timeout = timeout
        self.conns = [None] * len(addrs)
        self.next = random.randrange(len(addrs))

    def _post(self, i, body):
        conn = self.conns[i]
        if conn is None:
            host, port = self.addrs[i].rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
            conn.connect()  # OSError here: nothing was sent
            self.conns[i] = conn
        try:
            conn.request("POST", "/v1/check", body=body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close(i)
            raise Ambiguous(f"{type(e).__name__}: {e}") from None
        if resp.will_close:
            self.close(i)
        if resp.status != 200:
            raise Ambiguous(f"HTTP {resp.status}: {data[:200]!r}")
        return json.loads(data)["results"]

    def close(self, i):
        if self.conns[i] is not None:
            self.conns[i].close()
            self.conns[i] = None

    def post(self, body, deadline, stats):
        """Results of the batch, failing over until DEADLINE (monotonic); None if none answered."""
        last = None
        while time.monotonic() < deadline:
            i = self.next
            self.next = (self.next + 1) % len(self.addrs)
            try:
                return self._post(i, body), last
            except Ambiguous as e:
                stats["ambiguous_batches"] += 1
                last = f"{self.addrs[i]}: {e}"
            except (OSError, http.client.HTTPException) as e:
                self.close(i)
                last = f"{self.addrs[i]}: {type(e).__name__}: {e}"
            stats["failovers"] += 1
            time.sleep(0.02)  # a refused connection fails at once: do not spin over the nodes
        return None, last


class Load:
    def __init__(self, args):
        self.args = args
        self.keys = [f"{args.key_prefix}{i}" for i in range(args.keys)]
        self.allowed = dict.fromkeys(self.keys, 0)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.stats = {"checks": 0, "batches": 0, "errors": 0, "error_batches": 0,
                      "check_errors": 0, "ambiguous_batches": 0, "ambiguous_checks": 0,
                      "failovers": 0}
        self.routes = {}
        self.first_errors = []
        self.batch_ms = []
        self.t0 = time.monotonic()

    def checks_of(self, keys):
        return [{"key": k, "limit": self.args.limit, "period": self.args.period_ms} for k in keys]

    def record(self, keys, results, seconds, ambiguous_before):
        with self.lock:
            self.stats["batches"] += 1
            self.stats["ambiguous_checks"] += ambiguous_before * len(keys)
            self.batch_ms.append(seconds * 1e3)
            denied = []
            for k, r in zip(keys, results):
                self.stats["checks"] += 1
                if "error" in r:
                    self.stats["check_errors"] += 1
                    self.stats["errors"] += 1
                    self.note(f"{k}: {r['error']}")
                    continue
                self.routes[r.get("route", "?")] = self.routes.get(r.get("route", "?"), 0) + 1
                if r.get("allowed"):
                    self.allowed[k] += 1
                else:
                    denied.append(k)
            return denied

    def note(self, what):
        if len(self.first_errors) < 10:
            self.first_errors.append("%.2fs %s" % (time.monotonic() - self.t0, what))

    def send(self, nodes, keys):
        """Sends one batch with failover; returns the denied keys, or None on error."""
        body = json.dumps({"checks": self.checks_of(keys)})
        started = time.monotonic()
        stats = {"ambiguous_batches": 0, "failovers": 0}
        results, last = nodes.post(body, started + self.args.deadline, stats)
        with self.lock:
            self.stats["ambiguous_batches"] += stats["ambiguous_batches"]
            self.stats["failovers"] += stats["failovers"]
        if results is None:
            with self.lock:
                self.stats["error_batches"] += 1
                self.stats["errors"] += len(keys)
                self.stats["ambiguous_checks"] += stats["ambiguous_batches"] * len(keys)
                self.note(f"batch of {len(keys)} failed on every node for {self.args.deadline}s: {last}")
            return None
        return self.record(keys, results, time.monotonic() - started, stats["ambiguous_batches"])

    def run_thread(self, seed):
        rng = random.Random(seed)
        nodes = Nodes(self.args.node, min(2.0, self.args.deadline))
        per_thread = self.args.rate / self.args.threads
        interval = self.args.batch / per_thread if per_thread > 0 else 0
        next_at = time.monotonic()
        end = self.t0 + self.args.duration
        while not self.stop.is_set() and time.monotonic() < end:
            if self.stats["checks"] >= self.args.max_checks:
                break
            self.send(nodes, [rng.choice(self.keys) for _ in range(self.args.batch)])
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)  # pacing of the offered load
            elif delay < -1:
                next_at = time.monotonic()  # behind by over 1 s: do not burst to catch up

    def sweep(self):
        """Until every key was denied once (bounded: LIMIT + 1 rounds, 60 s)."""
        nodes = Nodes(self.args.node, min(2.0, self.args.deadline))
        todo = list(self.keys)
        rounds = 0
        deadline = time.monotonic() + 60
        while todo and rounds <= self.args.limit and time.monotonic() < deadline:
            rounds += 1
            still = []
            for i in range(0, len(todo), self.args.batch):
                chunk = todo[i:i + self.args.batch]
                denied = self.send(nodes, chunk)
                if denied is None:
                    still += chunk
                    continue
                denied = set(denied)
                still += [k for k in chunk if k not in denied]
            todo = still
        return todo, rounds

    def main(self):
        threads = [threading.Thread(target=self.run_thread, args=(self.args.seed + i,), daemon=True)
                   for i in range(self.args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
        load_s = time.monotonic() - self.t0
        load_stats = dict(self.stats)
        not_denied, rounds = self.sweep()
        limit = self.args.limit
        over = {k: a - limit for k, a in self.allowed.items() if a > limit}
        under = {k: limit - a for k, a in self.allowed.items() if a < limit and k not in not_denied}
        lat = sorted(self.batch_ms)
        pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None
        out = {
            "keys": len(self.keys), "limit": limit, "period_ms": self.args.period_ms,
            "load_seconds": round(load_s, 2), "load": load_stats, "sweep_rounds": rounds,
            "sweep_not_denied": len(not_denied), **self.stats,
            "allowed": sum(self.allowed.values()), "expected_allowed": limit * len(self.keys),
            "over_admitted": sum(over.values()), "over_admitted_keys": len(over),
            "under_admitted": sum(under.values()), "under_admitted_keys": len(under),
            "worst_over": sorted(over.items(), key=lambda kv: -kv[1])[:5],
            "worst_under": sorted(under.items(), key=lambda kv: -kv[1])[:5],
            "routes": self.routes, "batch_ms": {"p50": pick(0.5), "p99": pick(0.99),
                                                "max": round(lat[-1], 2) if lat else None},
            "first_errors": self.first_errors,
        }
        with open(self.args.out, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
        return 0 if self.stats["batches"] > 0 else 2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--node", action="append", required=True, help="HOST:PORT of a node's HTTP API")
    p.add_argument("--out", required=True)
    p.add_argument("--keys", type=int, default=2000)
    p.add_argument("--key-prefix", default="rolling:")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--period", dest="period_ms", type=period_ms, default=period_ms("1d"))
    p.add_argument("--rate", type=float, default=2000, help="offered checks/s in all")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--duration", type=float, default=120, help="longest load, s (then the sweep)")
    p.add_argument("--max-checks", type=int, default=2_000_000)
    p.add_argument("--deadline", type=float, default=5, help="per batch, failover included, s")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.keys < 1 or args.limit < 1 or args.threads < 1 or not 1 <= args.batch <= 1000:
        p.error("--keys, --limit, --threads >= 1; --batch 1..1000")
    load = Load(args)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: load.stop.set())
    sys.exit(load.main())


if __name__ == "__main__":
    main()
