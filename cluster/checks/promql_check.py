#!/usr/bin/env python3
"""Every PromQL expression of the Grafana dashboards, run by a real Prometheus against real nodes
(CTest cluster_dashboard_promql; issue 6: a broken panel query fails CI).

    promql_check.py --bin BUILD/bin [--work-dir DIR] [--dashboard FILE ...] [--nodes 3]

Starts a redis-server on a free loopback port (no persistence, its own directory under the work
dir), NODES throttlexd on loopback snapshotting to it (--redis; ports from the kernel; the others
join node-1, local gossip preset), so that the Redis panels have data, a Prometheus (Debian package `prometheus`, scripts/setup.sh) on a free loopback port
that scrapes their /metrics every second into its own storage under the work dir, and
throttlex-bench entering at every node (--route entry: local and forwarded checks). Then every
expression of every panel of the dashboards (default cluster/grafana/dashboards/*.json), Grafana
variables replaced by concrete values (grafana_values()), goes through /api/v1/query:

  - a query Prometheus rejects (parse or type error) fails at once;
  - a query must return at least one series, unless it selects a metric of
    cluster/grafana/pending-metrics.txt (not exported yet: allowed empty, still parsed);
  - a metric it selects that no node exports (and that is not pending) fails: a misspelt name.
Empty queries are polled (a rate needs two scrapes in its window) until --deadline s. Then the
checker checks itself: a query with a syntax error and one with a misspelt metric must fail.
Before all that, `promtool check config` (same package) must accept the compose stack's
cluster/prometheus/prometheus.yml (and with it the rules it loads). The test Prometheus loads
cluster/prometheus/rules.yml too: every rule must evaluate without an error and select only
exported metrics, and the seed plan's `rate(requests_total[1m])` must answer.

Every process started here is stopped by its handle (SIGTERM, then SIGKILL), and gets SIGTERM
if this script dies (PR_SET_PDEATHSIG). Traffic goes to 127.0.0.1 only. Exit status: 0 ok,
1 a query failed, 2 usage or setup failure, 77 no prometheus or no redis-server here (CTest's
skip).
"""
import argparse
import contextlib
import json
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from common import CLUSTER, ROOT, RunningNode, die_with_parent, promql_metric_names

SCRAPE_S = 1
RATE_INTERVAL = "10s"   # Grafana: max(4 x scrape interval, $__interval + scrape interval); wider
                        # here so that a rate sees several scrapes on loaded cores
POLL_S = 0.5
RULES = CLUSTER / "prometheus/rules.yml"  # recording and alerting rules, loaded as compose does


def log(msg):
    print(f"promql_check: {msg}", file=sys.stderr, flush=True)


# ---- the dashboards --------------------------------------------------------------------------

def panels_of(dashboard):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def grafana_values(dashboard, instance):
    """Concrete values for the Grafana variables an expression may use: the built-in interval
    variables, and the dashboard's own (templating) variables: `node`/`instance` become the
    instance of node-1 (fits both = and =~ matchers), any other one `.*`."""
    values = {"__rate_interval": RATE_INTERVAL, "__interval": "2s", "__interval_ms": "2000",
              "__range": "1m", "__range_s": "60", "__range_ms": "60000"}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name", "")
        values[name] = instance if name in ("node", "instance") else ".*"
    return values


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr, values):
    """expr with $var, ${var}, ${var:fmt} and [[var]] replaced; raises KeyError on an unknown one
    (add it to grafana_values() rather than let it through as text)."""
    def value(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(name)
        return values[name]
    return _VARIABLE.sub(value, expr)


def dashboard_queries(paths, instance):
    """(where, expr, concrete expr) of every target of every panel; a variable with no value
    is reported as a problem."""
    queries, problems = [], []
    for path in paths:
        dashboard = json.loads(path.read_text())
        values = grafana_values(dashboard, instance)
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if not expr:
                    continue
                where = f"{path.name}: panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}"
                try:
                    queries.append((where, expr, substitute(expr, values)))
                except KeyError as e:
                    problems.append(f"{where}: unknown Grafana variable ${e.args[0]} in {expr!r}")
    return queries, problems


def pending_metrics():
    lines = (line.split("#", 1)[0].split() for line in (CLUSTER / "grafana/pending-metrics.txt")
             .read_text().splitlines())
    families = {words[0] for words in lines if words}
    return {f"{f}{suffix}" for f in families for suffix in ("", "_bucket", "_sum", "_count")}


# ---- Prometheus --------------------------------------------------------------------------------

class QueryError(Exception):
    """Prometheus rejected the query (HTTP 400/422: bad_data, execution)."""


class Prometheus:
    """A prometheus process on 127.0.0.1 scraping TARGETS, its storage and log in WORK."""

    def __init__(self, binary, work, targets):
        self.binary, self.work, self.targets = binary, work, targets

    def __enter__(self):
        data = self.work / "prometheus-data"
        shutil.rmtree(data, ignore_errors=True)
        config = self.work / "prometheus.yml"
        # JSON is YAML: no python3-yaml needed here.
        config.write_text(json.dumps({
            "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                       "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "throttlex",
                                "static_configs": [{"targets": self.targets}]}]}, indent=2))
        for _ in range(3):  # the free port may be taken between our probe and its bind
            self.port = free_port()
            self.log_path = self.work / "prometheus.log"
            with open(self.log_path, "w") as log_file:
                self.proc = subprocess.Popen(
                    [self.binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=die_with_parent)
            if self._wait_ready(30):
                return self
            self._stop()
            if "address already in use" not in self.log_path.read_text():
                break
        raise RuntimeError(f"prometheus did not become ready; {self.log_path}:\n"
                           + self.log_path.read_text()[-3000:])

    def __exit__(self, *exc):
        self._stop()
        shutil.rmtree(self.work / "prometheus-data", ignore_errors=True)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            time.sleep(0.2)
        return False

    def _stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)["data"]
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                body = json.loads(body).get("error", body)
            except ValueError:
                pass
            raise QueryError(f"HTTP {e.code}: {body}") from None

    def query(self, expr):
        """The result vector/matrix of an instant query (raises QueryError)."""
        return self.api("query", query=expr)["result"]

    def metric_names(self):
        return set(self.api("label/__name__/values"))


class Redis:
    """A redis-server on 127.0.0.1 without persistence, its directory and log in WORK."""

    def __init__(self, binary, work):
        self.binary, self.dir = binary, work / "redis"

    def __enter__(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        for _ in range(3):  # the free port may be taken between our probe and its bind
            self.port = free_port()
            self.log_path = self.dir / "redis.log"
            with open(self.log_path, "w") as log_file:
                self.proc = subprocess.Popen(
                    [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                     "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=die_with_parent)
            if self._wait_ready(10):
                return self
            self.__exit__()
        raise RuntimeError(f"redis-server did not start; {self.log_path}:\n"
                           + self.log_path.read_text()[-2000:])

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.1)
        return False

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the check ---------------------------------------------------------------------------------

def evaluate(prom, queries, pending, deadline):
    """Problems of QUERIES (where, expr, concrete): errors at once; empty results are retried
    until DEADLINE (monotonic). Returns (problems, {where: series count})."""
    problems, counts, waiting = [], {}, []
    for where, expr, concrete in queries:
        selects = promql_metric_names(concrete)
        waiting.append((where, expr, concrete, selects, bool(selects & pending)))
    while waiting:
        exported = prom.metric_names()
        still = []
        for where, expr, concrete, selects, allowed_empty in waiting:
            try:
                result = prom.query(concrete)
            except QueryError as e:
                problems.append(f"{where}: Prometheus rejects {concrete!r}: {e}")
                continue
            counts[where] = len(result)
            unknown = selects - exported - pending
            if result or allowed_empty:
                continue
            if time.monotonic() < deadline:
                still.append((where, expr, concrete, selects, allowed_empty))
            elif unknown:
                problems.append(f"{where}: no node exports {sorted(unknown)} ({concrete!r})")
            else:
                problems.append(f"{where}: no series from {concrete!r}")
        waiting = still
        if waiting:
            time.sleep(POLL_S)
    return problems, counts


def rule_problems(prom, pending, deadline):
    """Every rule of cluster/prometheus/rules.yml as this Prometheus loaded it: evaluated without an
    error and selecting only metrics the nodes (or Prometheus: `up`) export; and the seed plan's
    PromQL, rate(requests_total[1m]), answering through the recording rule."""
    while True:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        evaluated = [r for r in rules if r.get("health") != "unknown"]
        try:
            seed = prom.query("rate(requests_total[1m])")
        except QueryError as e:
            return [f"rules: rate(requests_total[1m]) is rejected: {e}"]
        if rules and len(evaluated) == len(rules) and seed or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    problems = [] if rules else [f"rules: Prometheus loaded no rule from {RULES.relative_to(ROOT)}"]
    exported = prom.metric_names() | {"up"}
    for r in rules:
        where = f"rules.yml: {r.get('name')}"
        if r.get("health") != "ok":
            problems.append(f"{where}: health {r.get('health')}: {r.get('lastError', '')}")
        unknown = promql_metric_names(r["query"]) - exported - pending
        if unknown:
            problems.append(f"{where}: no node exports {sorted(unknown)} ({r['query']!r})")
    if not seed:
        problems.append("rules: rate(requests_total[1m]) returned no series")
    log(f"{len(rules)} rules evaluated; rate(requests_total[1m]) gives {len(seed)} series")
    return problems


def self_check(prom, queries, pending):
    """A syntax error and a misspelt metric in a known-good query must both be caught."""
    where, expr, concrete = next(q for q in queries if "throttlex_requests_total" in q[2])
    broken = [("self-check: syntax error", expr, concrete + ")"),
              ("self-check: misspelt metric", expr,
               concrete.replace("throttlex_requests_total", "throttlex_requests_totl"))]
    problems, _ = evaluate(prom, broken, pending, time.monotonic())
    caught = {p.split(":", 2)[1].strip() for p in problems}
    return [f"self-check: the {what} was not reported" for what in ("syntax error", "misspelt metric")
            if what not in caught]


def run(args):
    prometheus = shutil.which("prometheus")
    if not prometheus:
        log("prometheus is not installed (Debian package prometheus, scripts/setup.sh): skipped")
        return 77
    redis_server = shutil.which("redis-server")
    if not redis_server:
        log("redis-server is not installed (scripts/setup.sh): skipped (the Redis panels need it)")
        return 77
    for tool in ("throttlexd", "throttlex-bench"):
        if not (args.bin / tool).exists():
            log(f"no {tool} in {args.bin}: build first")
            return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    problems = promtool_problems(pathlib.Path(prometheus).with_name("promtool"))
    common = ["--gossip-preset", "local", "--cluster-name", "promql-check", "--threads", "1",
              "--rules", str(ROOT / "docs/examples/rules.yaml")]
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(Redis(redis_server, args.work_dir))
        log(f"redis-server {redis.proc.pid} on 127.0.0.1:{redis.port}")
        common += ["--redis", f"127.0.0.1:{redis.port}"]
        nodes = [stack.enter_context(RunningNode(args.bin, ["--node-id", "node-1", *common]))]
        for i in range(2, args.nodes + 1):
            nodes.append(stack.enter_context(RunningNode(
                args.bin, ["--node-id", f"node-{i}", "--join", f"127.0.0.1:{nodes[0].gossip_port}",
                           *common])))
        wait_members(nodes, args.nodes, 30)
        log(f"{args.nodes} nodes up: metrics on 127.0.0.1:"
            + ", ".join(str(n.metrics_port) for n in nodes))
        targets = [f"127.0.0.1:{n.metrics_port}" for n in nodes]
        prom = stack.enter_context(Prometheus(prometheus, args.work_dir, targets))
        log(f"prometheus {prom.proc.pid} on 127.0.0.1:{prom.port}, scraping every {SCRAPE_S}s")
        bench = stack.enter_context(load(args.bin, nodes, args.work_dir, int(args.deadline) + 30))
        stack.enter_context(reporting(nodes, args.deadline + 30))

        queries, found = dashboard_queries(args.dashboard, targets[0])
        problems += found
        if not queries:
            problems.append("no PromQL expressions found in " + ", ".join(map(str, args.dashboard)))
        pending = pending_metrics()
        wait_scraped(prom, len(targets), 30)
        started = time.monotonic()
        found, counts = evaluate(prom, queries, pending, started + args.deadline)
        problems += found
        problems += rule_problems(prom, pending, started + args.deadline)
        if bench.poll() not in (None, 0):
            problems.append(f"throttlex-bench exited {bench.returncode}: see {args.work_dir}/bench.log")
        for where, expr, concrete in queries:
            n = counts.get(where)
            note = " (pending metric: may be empty)" if promql_metric_names(concrete) & pending else ""
            print(f"  {'-' if n is None else n:>3} series  {where}{note}")
        log(f"{len(queries)} queries evaluated in {time.monotonic() - started:.1f}s")
        exported_pending = sorted(pending & prom.metric_names())
        if exported_pending:
            log(f"note: the nodes export {exported_pending} now: remove them from "
                "cluster/grafana/pending-metrics.txt")
        if queries:
            missed = self_check(prom, queries, pending)
            problems += missed
            if not missed:
                log("self-check: a syntax error and a misspelt metric were both caught")
    for p in problems:
        log(f"FAILED {p}")
    log("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def promtool_problems(promtool):
    """`promtool check config` of the compose stack's Prometheus configuration."""
    config = CLUSTER / "prometheus/prometheus.yml"
    if not promtool.exists():
        return [f"{promtool} is missing (it comes with prometheus)"]
    out = subprocess.run([str(promtool), "check", "config", str(config)], capture_output=True,
                         text=True, timeout=30)
    if out.returncode != 0:
        return [f"promtool check config {config.relative_to(ROOT)}: {(out.stdout + out.stderr).strip()}"]
    log(f"promtool accepts {config.relative_to(ROOT)}")
    return []


def wait_members(nodes, count, timeout):
    """Until every node's /v1/cluster shows COUNT alive (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        views = []
        for n in nodes:
            try:
                views.append(json.loads(n.get(n.http_port, "/v1/cluster")[1])["alive"])
            except (OSError, ValueError, KeyError):
                views.append(-1)
        if all(v == count for v in views):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes did not all see {count} alive within {timeout}s: {views}")
        time.sleep(0.2)


def wait_scraped(prom, count, timeout):
    """Until Prometheus has scraped every target successfully (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        up = prom.query("up == 1")
        if len(up) == count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"prometheus has {len(up)} of {count} targets up after {timeout}s")
        time.sleep(POLL_S)


@contextlib.contextmanager
def load(bin_dir, nodes, work, duration_s):
    """throttlex-bench entering at every node for at most DURATION_S s (stopped earlier on exit):
    a few thousand checks/s, some over their limit, some forwarded."""
    cmd = [str(bin_dir / "throttlex-bench"), "--route", "entry", "--rate", "2000",
           "--duration", f"{duration_s}s", "--warmup", "0", "--keys", "1000", "--limit", "50",
           "--period", "1s", "--connections", str(len(nodes)), "--concurrency", "8"]
    for n in nodes:
        cmd += ["--node", f"127.0.0.1:{n.rpc_port}"]
    with open(work / "bench.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
    log(f"load: throttlex-bench {proc.pid}, 2000 checks/s for at most {duration_s}s")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def reporting(nodes, duration_s):
    """Latency reports for the example rules' adaptive rule `backend`, 40 every 0.25 s at the
    nodes in turn, for at most DURATION_S s (stopped earlier on exit): the adaptive panel's
    signals exist only once a controller step has read reports."""
    stop = threading.Event()
    body = json.dumps({"reports": [{"rule": "backend", "latency_ms": 20 + i, "outcome": "ok"}
                                   for i in range(40)]}).encode()

    def send():
        deadline = time.monotonic() + duration_s
        i = 0
        while not stop.wait(0.25) and time.monotonic() < deadline:
            node = nodes[i % len(nodes)]
            i += 1
            req = urllib.request.Request(f"http://127.0.0.1:{node.http_port}/v1/report", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=2).read()
            except OSError:
                pass  # a missing series is what the check reports, not this thread

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    log("reports: 160/s for the adaptive rule backend")
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", type=pathlib.Path, default=ROOT / "build/bin")
    parser.add_argument("--work-dir", type=pathlib.Path, default=pathlib.Path("/tmp/throttlex-promql"))
    parser.add_argument("--dashboard", type=pathlib.Path, action="append")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=45.0,
                        help="seconds an empty query is retried")
    args = parser.parse_args()
    args.dashboard = args.dashboard or sorted((CLUSTER / "grafana/dashboards").glob("*.json"))
    args.bin = args.bin.resolve()
    args.work_dir = args.work_dir.resolve()
    try:
        return run(args)
    except RuntimeError as e:
        log(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
