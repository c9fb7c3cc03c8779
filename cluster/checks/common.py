"""Shared helpers of cluster/validate.sh: the checks' error list, flags a binary's --help knows,
metric names in PromQL, and a real throttlexd started on ports chosen by the kernel.

Python 3 standard library only (the callers add python3-yaml where they parse YAML).
"""
import ctypes
import pathlib
import re
import signal
import subprocess
import tempfile
import threading
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


class Problems:
    """Collects what is wrong, so one run reports every problem instead of the first."""

    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")

    def check(self, condition, where, message):
        if not condition:
            self.add(where, message)
        return condition


# ---- command lines ---------------------------------------------------------------------------

_HELP_OPTION = re.compile(r"^\s+(?:-[A-Za-z],)?(--[a-z][a-z0-9-]*)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def help_flags(binary):
    """The long options `binary --help` lists (CLI11's format: '  -h,--help  ...')."""
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=10).stdout
    flags = {m.group(1) for line in out.splitlines() if (m := _HELP_OPTION.match(line))}
    if "--help" not in flags or len(flags) < 3:
        raise RuntimeError(f"could not read the options of {binary} --help:\n{out}")
    return flags


def flags_used(args):
    """Long options in an argument list, or in a shell command string ('--x=1', '--x 1')."""
    text = args if isinstance(args, str) else "\n".join(str(a) for a in args)
    return set(_FLAG.findall(text))


def flag_values(args):
    """{'--flag': [values]} of an argument list in '--flag=value' or '--flag value' form."""
    values = {}
    args = [str(a) for a in args]
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                name, value = a.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                name, value = a, args[i + 1]
                i += 1
            else:
                name, value = a, ""
            values.setdefault(name, []).append(value)
        i += 1
    return values


# ---- PromQL ----------------------------------------------------------------------------------

# Words of PromQL that look like metric names but are not.
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                 "group_left", "group_right", "inf", "nan", "start", "end"}


def promql_metric_names(expr):
    """Metric names an expression selects. Strips strings, label matchers, ranges, grouping
    clauses and Grafana variables, then takes every identifier not followed by '(' (those are
    functions and aggregations)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s):
        if m.group(0) in _PROMQL_WORDS or re.match(r"\s*\(", s[m.end():]):
            continue
        names.add(m.group(0))
    return names


def expand_family(name, kind):
    """The series names a metric family of this type is scraped as."""
    if kind == "histogram":
        return {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind == "summary":
        return {name, f"{name}_sum", f"{name}_count"}
    return {name}


def exposition_names(text):
    """Metric names in Prometheus text exposition: the # TYPE families (so a family with no
    series yet, such as the per-peer ones on a lone node, still counts) and every sample."""
    names = set()
    for line in text.splitlines():
        if m := re.match(r"#\s*TYPE\s+(\S+)\s+(\S+)", line):
            names |= expand_family(m.group(1), m.group(2))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


# ---- a real node -----------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent():
    """preexec_fn for Popen: the child gets SIGTERM when this process dies, even by SIGKILL (a
    CTest timeout), so no daemon outlives the check that started it. Linux only."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_READY = re.compile(r"ready: http [^ ]+:(\d+), rpc [^ ]+:(\d+), metrics [^ ]+:(\d+), "
                    r"gossip [^ ]+:(\d+), (\d+) threads, (\d+) rules")


class RunningNode:
    """`with RunningNode(bin_dir, args) as node:` starts throttlexd with `args` and then every
    listener on 127.0.0.1 and port 0 (later flags win), waits for its 'ready:' line, and stops
    it with SIGTERM on exit. node.rules is the rule count it loaded; node.log its output;
    node.{http,rpc,metrics,gossip}_port the ports it listens on."""

    PORT_FLAGS = ["--bind=127.0.0.1", "--http-port=0", "--rpc-port=0", "--metrics-port=0",
                  "--gossip-port=0"]

    def __init__(self, bin_dir, args, timeout=20.0):
        self.cmd = [str(pathlib.Path(bin_dir) / "throttlexd"), *map(str, args), *self.PORT_FLAGS]
        self.timeout = timeout
        self.log = []
        self._ready = threading.Event()
        self.match = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=die_with_parent)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(self.timeout) or self.match is None:
            self._stop()
            raise RuntimeError(f"throttlexd did not become ready: {' '.join(self.cmd)}\n"
                               + "".join(self.log))
        self.http_port, self.rpc_port, self.metrics_port, self.gossip_port, _, rules = map(
            int, self.match.groups())
        self.rules = rules
        return self

    def __exit__(self, *exc):
        self._stop()

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)
            if self.match is None and (m := _READY.search(line)):
                self.match = m
                self._ready.set()
        self._ready.set()

    def _stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def get(self, port, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()

    def metrics(self):
        return self.get(self.metrics_port, "/metrics")[1]


def temp_file(text, suffix):
    """A named temporary file holding `text` (deleted when the returned object is closed)."""
    f = tempfile.NamedTemporaryFile("w", suffix=suffix, prefix="throttlex-validate-")
    f.write(text)
    f.flush()
    return f
