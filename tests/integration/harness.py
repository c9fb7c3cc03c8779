"""Starts real throttlexd processes for integration tests and talks to them over HTTP.

Every node listens on ports chosen by the kernel (port 0); the harness reads the actual ports from
the daemon's "ready:" log line, so tests can run side by side. Processes are stopped by PID.
"""
import http.client
import json
import os
import pathlib
import re
import resource
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("THROTTLEX_BIN", ROOT / "build" / "bin"))
# The load generators (throttlex-bench, http-paced): a Release build even when the nodes under test
# are a sanitizer build (scripts/test.sh runs the integration tests against ASan binaries too).
LOAD_TOOLS = ("throttlex-bench", "http-paced")
TOOLS_BIN = pathlib.Path(os.environ.get("THROTTLEX_TOOLS_BIN", BIN))


def tool_path(name):
    """Where build/bin's `name` is: the load generators may come from another build."""
    return (TOOLS_BIN if name in LOAD_TOOLS else BIN) / name


# The Release build's throttlexd (next to the load generators), for a node run out of file
# descriptors on purpose: a sanitizer runtime cannot judge such a process. UBSan's vptr check
# probes memory through a pipe it opens, and without a free descriptor it takes every object it
# has not seen yet for a bad one ("invalid vptr", docs/security.md).
RELEASE_DAEMON = TOOLS_BIN / "throttlexd"

READY = re.compile(r"ready: http [^:]+:(\d+), rpc [^:]+:(\d+), metrics [^:]+:(\d+), gossip [^:]+:(\d+)")
START_TIMEOUT = 20.0


class Node:
    """One throttlexd process on 127.0.0.1."""

    def __init__(self, *args, rules=None, env=None, max_fds=None, binary=None):
        self.tmp = tempfile.TemporaryDirectory(prefix="throttlex-it-")
        self.rules_path = None
        cmd = [str(binary or BIN / "throttlexd"), "--bind", "127.0.0.1", "--http-port", "0",
               "--rpc-port", "0", "--metrics-port", "0", "--gossip-port", "0", "--threads", "2"]
        if rules is not None:
            self.rules_path = os.path.join(self.tmp.name, "rules.yaml")
            self.write_rules(rules)
            cmd += ["--rules", self.rules_path]
        # Overload protection sheds by the machine's load, and tests of exact decisions must not
        # depend on how loaded this machine is: off unless a test asks for it (test_overload).
        if "--overload-target-ms" not in args:
            cmd += ["--overload-target-ms", "0"]
        cmd += list(args)
        self.node_id = args[args.index("--node-id") + 1] if "--node-id" in args else None
        self.log_lines = []
        self._log_changed = threading.Condition()
        self._ready = threading.Event()
        full_env = dict(os.environ)
        full_env.update(env or {})
        limit_fds = None
        if max_fds is not None:  # RLIMIT_NOFILE of the node alone, to exhaust its descriptors
            def limit_fds():
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env=full_env, preexec_fn=limit_fds)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("throttlexd did not start:\n" + "".join(self.log_lines))

    def _read_log(self):
        for line in self.proc.stderr:
            m = READY.search(line)
            if m:
                self.http_port, self.rpc_port, self.metrics_port, self.gossip_port = map(int, m.groups())
                self._ready.set()
            with self._log_changed:
                self.log_lines.append(line)
                self._log_changed.notify_all()
        self._ready.set()  # the process ended: stop waiting for it

    @property
    def rpc_address(self):
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def gossip_address(self):
        return f"127.0.0.1:{self.gossip_port}"

    def write_rules(self, text):
        with open(self.rules_path, "w") as f:
            f.write(text)

    def wait_for_log(self, pattern, timeout=10.0):
        """Waits until a log line matches `pattern` (a regex); returns the line."""
        rx = re.compile(pattern)
        found = []

        def match():
            found[:] = [line for line in self.log_lines if rx.search(line)]
            return bool(found)

        with self._log_changed:
            if self._log_changed.wait_for(match, timeout):
                return found[0]
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "".join(self.log_lines))

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read().decode()
        finally:
            conn.close()

    def metrics(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def raw(self, data, read_timeout=5.0):
        """Sends raw bytes on a new connection; returns everything read until close/timeout."""
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=read_timeout) as s:
            s.sendall(data)
            chunks = []
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except socket.timeout:
                pass
            return b"".join(chunks)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def freeze(self):
        """SIGSTOP, and wait until every thread of the node has stopped: the kernel stops a thread
        only when it next runs (one in a page fault or another uninterruptible wait finishes that
        first), so requests sent right after the signal could still be served."""
        self.proc.send_signal(signal.SIGSTOP)
        tasks = pathlib.Path(f"/proc/{self.proc.pid}/task")

        def stopped():
            states = []
            for stat in tasks.glob("*/stat"):
                try:
                    # The state follows the command name, which is in parentheses.
                    states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
                except (OSError, IndexError):
                    continue  # a thread that just exited
            return bool(states) and all(s in ("T", "t") for s in states)
        wait_until(stopped, timeout=10, interval=0.001, what="every thread of the node to stop")

    def stop(self, timeout=10.0):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        self.proc.stderr.close()
        self.tmp.cleanup()
        keep = os.environ.get("THROTTLEX_IT_LOG_DIR")  # for reading a failed run afterwards
        if keep and self.log_lines:
            name = f"{self.node_id or 'node'}-{self.proc.pid}.log"
            with open(os.path.join(keep, name), "w") as f:
                f.writelines(self.log_lines)


def run_tool(name, *args, timeout=30):
    """Runs a build/bin tool; returns (exit code, stdout, stderr)."""
    p = subprocess.run([str(tool_path(name)), *args], capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def wait_until(condition, timeout=10.0, interval=0.05, what="the condition"):
    """Polls `condition()` every `interval` seconds until it returns something truthy, and returns
    that; fails after `timeout` seconds. For state that can only be observed by asking (an HTTP
    view, a counter); a log line is better waited for with Node.wait_for_log."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


JOIN_TIMEOUT = 20.0


def cluster_members(node):
    """GET /v1/cluster: {node id: member} as the node sees it (state, incarnation, addresses)."""
    status, _, body = node.request("GET", "/v1/cluster")
    assert status == 200, body
    return {m["node_id"]: m for m in json.loads(body)["members"]}


def cluster_view(node):
    return {member: m["state"] for member, m in cluster_members(node).items()}


def alive_members(node):
    return {member for member, state in cluster_view(node).items() if state == "alive"}


def wait_for_view(nodes, timeout=JOIN_TIMEOUT):
    """Until each of `nodes` sees exactly `nodes` alive. On a timeout, the failure says what every
    node saw (state and incarnation of each member), so that a slow join can be told apart from a
    member that is suspected or gone."""
    everyone = {n.node_id for n in nodes}
    for n in nodes:
        try:
            wait_until(lambda n=n: alive_members(n) == everyone, timeout=timeout,
                       what=f"{n.node_id} to see {sorted(everyone)} alive")
        except AssertionError as e:
            views = []
            for other in nodes:
                try:
                    members = cluster_members(other)
                    views.append(f"  {other.node_id}: " + ", ".join(
                        f"{k} {m['state']}@{m.get('incarnation')}" for k, m in sorted(members.items())))
                except (AssertionError, OSError) as why:
                    views.append(f"  {other.node_id}: no view ({why})")
            raise AssertionError(f"{e}; views:\n" + "\n".join(views)) from None


def unique_cluster_name(tag):
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def start_cluster(size, tag, rules=None, extra=()):
    """Starts `size` nodes (<tag>1 is the seed, the others --join it; each with `rules` and the
    `extra` flags) and waits until each of them sees all of them alive. Returns the nodes; on
    failure none is left running."""
    common = ("--gossip-preset", "local", "--cluster-name", unique_cluster_name(tag), *extra)
    nodes = []
    try:
        nodes.append(Node("--node-id", f"{tag}1", *common, rules=rules))
        for i in range(2, size + 1):
            nodes.append(Node("--node-id", f"{tag}{i}", "--join", nodes[0].gossip_address, *common,
                              rules=rules))
        wait_for_view(nodes)
        return nodes
    except BaseException:
        for n in nodes:
            n.kill()
        raise


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of the test's own on a free loopback port, without persistence; stopped by
    PID. kill() and start() again (same port) simulate an outage."""

    def __init__(self, password=None, tls=None):
        self.password = password  # requirepass, when given
        self.tls = tls  # (cert, key, ca): TLS only, no plain port
        self.tmp = tempfile.TemporaryDirectory(prefix="throttlex-redis-")
        self.port = free_port()
        self.proc = None
        self.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        ports = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.tmp.name,
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._ping(), timeout=10, what="redis-server to answer PING")

    def _ping(self):
        try:
            return self.cli("PING") == "PONG"
        except (OSError, subprocess.SubprocessError):
            return False

    def cli(self, *args):
        """Runs one command through redis-cli; returns its output without the trailing newline."""
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        tls = ["--tls", "--cacert", self.tls[2]] if self.tls else []
        p = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *tls, *auth,
                            *args],
                           capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            raise OSError(p.stderr)
        return p.stdout.rstrip("\n")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self):
        self.kill()
        self.tmp.cleanup()


def metric_value(text, name, labels=None):
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    want = "" if not labels else "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.split()[-1])
    return 0.0
