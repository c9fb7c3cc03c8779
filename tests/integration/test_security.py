"""Security between real nodes (docs/security.md), the attacks of issue 16 replayed.

Gossip keyring (gossip-forge): spoofed alive, suspect, dead and left from a sender without the key
change no member and no owner; a node without the key cannot join; keys rotate across five nodes
under load with no member lost and no check failed.
RPC TLS and roles (rpc-forge, throttlectl): no certificate, no connection; a client certificate
may check but not change rules, reset, drain or hand off, and cannot make a non-owner decide a key
by marking its checks as forwarded; state is unchanged after every refusal."""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

from harness import (BIN, RELEASE_DAEMON, ROOT, Node, Redis, free_port, metric_value, run_tool,
                     wait_for_view, wait_until)

CLUSTER = "sec"
COMMON = ("--gossip-preset", "local", "--cluster-name", CLUSTER)


def generate_key():
    code, out, err = run_tool("throttlectl", "keyring", "generate")
    assert code == 0, err
    return out.strip()


def members(node):
    status, _, body = node.request("GET", "/v1/cluster")
    assert status == 200, body
    return {m["node_id"]: m for m in json.loads(body)["members"]}


def counter(node, name, reason):
    line = f'{name}{{reason="{reason}"}} '
    for text in node.metrics().splitlines():
        if text.startswith(line):
            return int(float(text[len(line):]))
    return 0


def unauthenticated(node):
    return counter(node, "throttlex_gossip_dropped_total", "unauthenticated")


def forge(node, *args, key=None):
    cmd = ["--to", node.gossip_address, "--cluster", CLUSTER, *args]
    if key:
        cmd += ["--key", key]
    code, _, err = run_tool("gossip-forge", *cmd)
    assert code == 0, err


def owner(node, key, *flags, limit="10"):
    code, out, err = run_tool("throttlectl", "--node", node.rpc_address, *flags, "-o", "json",
                              "owner", key, "--limit", limit, "--period", "1m")
    assert code == 0, err
    return json.loads(out)["owner"]


class Keyrings:
    """One keyring file per node (each node rewrites its own), all holding the same keys."""

    def __init__(self, test):
        self.tmp = tempfile.TemporaryDirectory(prefix="throttlex-keys-")
        test.addCleanup(self.tmp.cleanup)

    def write(self, name, *keys):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w") as f:
            f.write("".join(k + "\n" for k in keys))
        os.chmod(path, 0o600)
        return path

    def read(self, name):
        with open(os.path.join(self.tmp.name, name)) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def start_cluster(keyrings, names, *keys):
    nodes = []
    try:
        for name in names:
            seed = ("--join", nodes[0].gossip_address) if nodes else ()
            nodes.append(Node("--node-id", name, *seed, *COMMON,
                              "--gossip-keyring", keyrings.write(name, *keys)))
        for n in nodes:
            for other in nodes:
                if other is not n:
                    n.wait_for_log(rf"member {other.node_id} joined", timeout=30)
        return nodes
    except BaseException:
        for n in nodes:
            n.kill()
        raise


class GossipKeyringTest(unittest.TestCase):
    def test_forged_gossip_without_the_key_changes_no_member_and_no_owner(self):
        keyrings = Keyrings(self)
        key = generate_key()
        nodes = start_cluster(keyrings, ("n1", "n2", "n3"), key)
        try:
            before = members(nodes[0])
            owners = {k: owner(nodes[0], k) for k in ("user:1", "user:2", "user:3", "user:4")}
            self.assertEqual(set(before), {"n1", "n2", "n3"})
            attacker = "127.0.0.1:9"
            for seal in (None, generate_key()):  # no key, then a key the cluster does not hold
                # alive at 2^64-1 with the attacker's addresses: would take n2's keys.
                forge(nodes[0], "--state", "alive", "--id", "n2", "--incarnation",
                      str(2**64 - 1), "--address", attacker, "--rpc", attacker, key=seal)
                forge(nodes[0], "--state", "suspect", "--id", "n2", "--incarnation", "1000",
                      key=seal)
                forge(nodes[0], "--state", "dead", "--id", "n3", "--incarnation", "1000",
                      key=seal)
                forge(nodes[0], "--state", "left", "--id", "n3", "--incarnation", "1000",
                      key=seal)
            wait_until(lambda: unauthenticated(nodes[0]) >= 8, timeout=10,
                       what="8 forged packets counted as unauthenticated")
            self.assertEqual(unauthenticated(nodes[0]), 8)
            after = members(nodes[0])
            for name in ("n1", "n2", "n3"):
                self.assertEqual(after[name]["state"], "alive", after)
                self.assertEqual(after[name]["rpc_address"], before[name]["rpc_address"])
                self.assertLess(after[name]["incarnation"], 1000, after)
            self.assertEqual({k: owner(nodes[0], k) for k in owners}, owners)
            for n in nodes:
                self.assertNotRegex("".join(n.log_lines), r"member n[23] (left|dead|suspect)")
            self.assertIn("throttlex_gossip_encrypted{key_id=", nodes[0].metrics())
            # The control: the same tool with the cluster's key is believed, so the refusals above
            # are the keyring's doing, not a broken forgery.
            forge(nodes[0], "--state", "alive", "--id", "intruder", "--address", attacker,
                  "--rpc", attacker, key=key)
            nodes[0].wait_for_log(r"member intruder joined", timeout=10)
        finally:
            for n in nodes:
                n.kill()

    def test_without_a_keyring_a_forged_member_is_believed(self):
        node = Node("--node-id", "plain", *COMMON)
        try:
            node.wait_for_log(r"no --gossip-keyring: gossip is unauthenticated")
            forge(node, "--state", "alive", "--id", "intruder", "--address", "127.0.0.1:9",
                  "--rpc", "127.0.0.1:9")
            node.wait_for_log(r"member intruder joined", timeout=10)
            self.assertIn("throttlex_gossip_encrypted{key_id=\"\"} 0", node.metrics())
        finally:
            node.kill()

    def test_a_bad_keyring_file_stops_the_node_at_start_with_the_line_named(self):
        keyrings = Keyrings(self)
        good = generate_key()
        for content, message in ((f"{good}\nnot-a-key\n", "line 2"), ("# empty\n", "no key")):
            path = keyrings.write("bad", content.strip())
            p = subprocess.run([str(BIN / "throttlexd"), "--bind", "127.0.0.1", "--http-port", "0",
                                "--rpc-port", "0", "--metrics-port", "0", "--gossip-port", "0",
                                "--gossip-keyring", path], capture_output=True, text=True,
                               timeout=30)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("--gossip-keyring", p.stderr)
            self.assertIn(message, p.stderr)

    def test_a_node_without_the_key_cannot_join(self):
        keyrings = Keyrings(self)
        nodes = start_cluster(keyrings, ("n1", "n2"), generate_key())
        outsiders = []
        try:
            outsiders.append(Node("--node-id", "nokey", "--join", nodes[0].gossip_address,
                                  *COMMON))
            outsiders.append(Node("--node-id", "wrongkey", "--join", nodes[0].gossip_address,
                                  *COMMON, "--gossip-keyring",
                                  keyrings.write("wrong", generate_key())))
            # Each outsider's join is a push/pull stream; both are refused and counted.
            wait_until(lambda: unauthenticated(nodes[0]) >= 2, timeout=20,
                       what="the outsiders' joins counted as unauthenticated")
            self.assertEqual(set(members(nodes[0])), {"n1", "n2"})
            self.assertEqual(set(members(nodes[1])), {"n1", "n2"})
            for o in outsiders:
                self.assertEqual(set(members(o)), {o.node_id})
        finally:
            for n in outsiders + nodes:
                n.kill()

    def test_keys_rotate_across_five_nodes_under_load_without_losing_a_member(self):
        keyrings = Keyrings(self)
        old, new = generate_key(), generate_key()
        names = ("n1", "n2", "n3", "n4", "n5")
        nodes = start_cluster(keyrings, names, old)
        stop = threading.Event()
        outcome = {"checks": 0, "failed": []}

        def load():
            # Checks entering at every node (forwarded to owners over RPC), bounded in count.
            i = 0
            while not stop.is_set() and i < 20000:
                node = nodes[i % len(nodes)]
                query = urllib.parse.urlencode({"key": f"rot:{i % 50}", "limit": "1000000",
                                                "period": "1m"})
                try:
                    status, _, body = node.request("GET", "/v1/check?" + query)
                    if status != 200:
                        outcome["failed"].append(f"{node.node_id}: {status} {body}")
                except OSError as e:
                    outcome["failed"].append(f"{node.node_id}: {e}")
                i += 1
                outcome["checks"] = i

        loader = threading.Thread(target=load)
        loader.start()
        try:
            wait_until(lambda: outcome["checks"] >= 300, timeout=60, what="300 checks before")
            for step in (("install", new), ("use", new), ("remove", old)):
                code, out, err = run_tool("throttlectl", "--node", nodes[0].rpc_address, "-o",
                                          "json", "keyring", *step)
                self.assertEqual(code, 0, err)
                result = json.loads(out)
                self.assertEqual(sorted(n["node_id"] for n in result["nodes"]), list(names))
                self.assertTrue(all(n["ok"] for n in result["nodes"]), result)
                wait_until(lambda: all(
                    sum(1 for m in members(n).values() if m["state"] == "alive") == 5
                    for n in nodes), timeout=10, what="every node seeing five alive members")
            during = outcome["checks"]
            wait_until(lambda: outcome["checks"] >= during + 300, timeout=60,
                       what="300 checks after the rotation")
        finally:
            stop.set()
            loader.join(60)
        try:
            code, out, err = run_tool("throttlectl", "--node", nodes[2].rpc_address, "-o", "json",
                                      "keyring", "list")
            self.assertEqual(code, 0, err)
            for n in json.loads(out)["nodes"]:
                self.assertRegex(n["detail"], r"^[0-9a-f]{8} \(primary\)$")
            for name in names:
                self.assertEqual(keyrings.read(name), [new])  # saved: a restart keeps it
            self.assertEqual(outcome["failed"], [])
            self.assertGreaterEqual(outcome["checks"], 600)
            for n in nodes:
                self.assertEqual(unauthenticated(n), 0)
                log = "".join(n.log_lines)
                self.assertNotRegex(log, r"member n\d (suspect|dead|left)")
            # A node restarted after the rotation comes back with the new key and rejoins.
            nodes[4].stop()
            nodes[4] = Node("--node-id", "n5", "--join", nodes[0].gossip_address, *COMMON,
                            "--gossip-keyring", os.path.join(keyrings.tmp.name, "n5"))
            nodes[4].wait_for_log(r"member n1 joined", timeout=30)
        finally:
            for n in nodes:
                n.kill()



class Certificates:
    """scripts/cluster-init.sh's output in a temporary directory."""

    def __init__(self, test, nodes):
        self.tmp = tempfile.TemporaryDirectory(prefix="throttlex-certs-")
        test.addCleanup(self.tmp.cleanup)
        p = subprocess.run([str(ROOT / "scripts/cluster-init.sh"), self.tmp.name, str(nodes)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def node_flags(self, i):
        return ("--tls-ca", self.path("ca.crt"), "--tls-cert", self.path(f"node-{i}.crt"),
                "--tls-key", self.path(f"node-{i}.key"), "--gossip-keyring", self.path("keyring"))

    def tool_flags(self, who):
        return ("--tls-ca", self.path("ca.crt"), "--tls-cert", self.path(f"{who}.crt"),
                "--tls-key", self.path(f"{who}.key"))


def ctl(node, certs, who, *args):
    flags = certs.tool_flags(who) if who else ()
    return run_tool("throttlectl", "--node", node.rpc_address, *flags, *args)


def forge_rpc(node, certs, who, *args):
    code, out, err = run_tool("rpc-forge", "--node", node.rpc_address, *certs.tool_flags(who),
                              *args)
    assert code == 0, err
    return dict(field.split("=") for field in out.split())


class RpcTlsTest(unittest.TestCase):
    def start(self, certs, count):
        nodes = []
        for i in range(1, count + 1):
            seed = ("--join", nodes[0].gossip_address) if nodes else ()
            nodes.append(Node("--node-id", f"n{i}", *seed, *COMMON, *certs.node_flags(i)))
            self.addCleanup(nodes[-1].kill)
        for n in nodes:
            for other in nodes:
                if other is not n:
                    n.wait_for_log(rf"member {other.node_id} joined", timeout=30)
        return nodes

    def test_the_certificate_decides_what_a_connection_may_do(self):
        certs = Certificates(self, 2)
        nodes = self.start(certs, 2)
        # No certificate: no connection at all.
        code, _, err = ctl(nodes[0], certs, None, "members")
        self.assertEqual(code, 3, err)
        nodes[0].wait_for_log(r"rpc connection refused")
        # A client may check and read.
        code, out, err = ctl(nodes[0], certs, "client", "-o", "json", "members")
        self.assertEqual(code, 0, err)
        self.assertEqual({m["node_id"] for m in json.loads(out)}, {"n1", "n2"})
        code, _, err = ctl(nodes[0], certs, "client", "check", "tls:1", "--limit", "1",
                           "--period", "1m")
        self.assertEqual(code, 0, err)
        # ... but change nothing: each refusal names the role, and nothing changed.
        for args in (("rules", "set", "blocked", "--limit", "1", "--period", "1s"),
                     ("reset", "tls:1", "--limit", "1", "--period", "1m"),
                     ("keyring", "install", generate_key()),
                     ("drain", "n2")):
            code, _, err = ctl(nodes[0], certs, "client", *args)
            self.assertEqual(code, 4, f"{args}: {err}")
            self.assertIn("permission_denied", err)
        code, out, err = ctl(nodes[0], certs, "admin", "-o", "json", "rules", "list")
        self.assertEqual(code, 0, err)
        self.assertNotIn("blocked", out)
        code, _, _ = ctl(nodes[0], certs, "client", "check", "tls:1", "--limit", "1",
                         "--period", "1m")
        self.assertEqual(code, 1)  # still spent: the reset was refused
        self.assertIsNone(nodes[1].proc.poll())  # the drain was refused
        code, out, err = ctl(nodes[0], certs, "admin", "-o", "json", "keyring", "list")
        self.assertEqual(code, 0, err)
        self.assertTrue(all(n["detail"].count(" ") == 1 for n in json.loads(out)["nodes"]), out)
        # A handoff (one entry claiming a spent state) needs a peer's certificate.
        self.assertEqual(forge_rpc(nodes[0], certs, "client", "handoff", "--slot", "7"),
                         {"error": "permission_denied", "merged": "0"})
        self.assertEqual(forge_rpc(nodes[0], certs, "node-2", "handoff", "--slot", "7"),
                         {"error": "none", "merged": "1"})  # the control: a peer may
        # An admin may change things.
        code, _, err = ctl(nodes[0], certs, "admin", "rules", "set", "allowed", "--limit", "1",
                           "--period", "1s")
        self.assertEqual(code, 0, err)

    def test_a_client_cannot_make_a_non_owner_decide_by_marking_checks_forwarded(self):
        certs = Certificates(self, 2)
        nodes = self.start(certs, 2)
        by_id = {n.node_id: n for n in nodes}
        key = next(f"hops:{i}" for i in range(1000)
                   if owner(nodes[0], f"hops:{i}", *certs.tool_flags("client"), limit="3") == "n1")
        non_owner = by_id["n2"]
        # hops 5: past the hop limit (2) and the moves a drained slot may take (3 more), where a
        # node decides a check itself whoever owns it (docs/architecture.md).
        args = ("checks", "--key", key, "--limit", "3", "--period-ms", "60000", "--count", "5",
                "--hops", "5")
        # A client's hops are ignored: the checks go to the owner, which admits exactly 3.
        self.assertEqual(forge_rpc(non_owner, certs, "client", *args),
                         {"allowed": "3", "denied": "2", "errors": "0"})
        self.assertEqual(forge_rpc(non_owner, certs, "client", *args),
                         {"allowed": "0", "denied": "5", "errors": "0"})
        # The control: a peer's hops are honoured, and so the non-owner decides itself (3 more
        # admitted) — which is why only peers may say so.
        self.assertEqual(forge_rpc(non_owner, certs, "node-1", *args)["allowed"], "3")



class ListenerTest(unittest.TestCase):
    def test_after_descriptors_run_out_and_are_freed_every_listener_accepts_again(self):
        # Caps above the descriptors, so that connections do exhaust them. The node is the Release
        # build even in the sanitizer stage: out of descriptors, UBSan's own memory probe (a pipe)
        # fails and it reports KJ's promise nodes as "invalid vptr" (harness.RELEASE_DAEMON).
        node = Node("--node-id", "fds", "--threads", "1", "--max-connections", "1000",
                    max_fds=128, binary=RELEASE_DAEMON)
        self.addCleanup(node.kill)
        held = []
        try:
            # Far more connections than descriptors: the kernel completes the handshakes, the
            # node's accepts fail with EMFILE.
            for _ in range(200):
                held.append(socket.create_connection(("127.0.0.1", node.rpc_port), timeout=5))
            node.wait_for_log(r"rpc accept failed", timeout=10)
            for _ in range(50):
                held.append(socket.create_connection(("127.0.0.1", node.http_port), timeout=5))
        finally:
            for s in held:
                s.close()
        # Freed: the accept loops are still there (they retried every 100 ms) and take new
        # connections, RPC and HTTP alike; the node never stopped being ready.
        code, out, err = run_tool("throttlectl", "--node", node.rpc_address, "--timeout", "10s",
                                  "check", "fds:1", "--limit", "5", "--period", "1m")
        self.assertEqual(code, 0, err)
        status, _, body = node.request("GET", "/v1/check?key=fds:1&limit=5&period=1m")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["remaining"], 3)
        self.assertEqual(node.request("GET", "/readyz")[0], 200)
        self.assertIsNone(node.proc.poll())

    def test_by_default_connections_are_capped_below_the_descriptor_limit(self):
        node = Node("--node-id", "caps", "--threads", "1", max_fds=128)
        self.addCleanup(node.kill)
        # 128 descriptors: 64 reserved, 32 connections per API.
        node.wait_for_log(r"connections: at most 32 per API", timeout=1)
        held = []
        try:
            for _ in range(100):
                held.append(socket.create_connection(("127.0.0.1", node.rpc_port), timeout=5))
            for _ in range(100):
                held.append(socket.create_connection(("127.0.0.1", node.http_port), timeout=5))
            # With 200 connections held, the ones past the caps were closed at once and
            # descriptors are left: a scrape (a listener of its own) still answers.
            self.assertIn("throttlex_build_info", node.metrics())
            self.assertIsNone(node.proc.poll())
        finally:
            for s in held:
                s.close()
        status, _, body = node.request("GET", "/v1/check?key=caps&limit=5&period=1m")
        self.assertEqual(status, 200, body)
        self.assertFalse(any("accept failed" in line for line in node.log_lines),
                         "".join(node.log_lines[-10:]))

    def test_a_scrape_answers_within_a_second_with_50_idle_connections_held(self):
        # /metrics on an address of its own; 127.0.0.2 is loopback too, but not the API's address.
        node = Node("--node-id", "scrape", "--metrics-bind", "127.0.0.2")
        self.addCleanup(node.kill)
        node.wait_for_log(rf"metrics 127\.0\.0\.2:{node.metrics_port}\b", timeout=1)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", node.metrics_port), timeout=5).close()
        self.assertEqual(node.request("GET", "/v1/check?key=s&limit=5&period=1m")[0], 200)
        held = []
        try:
            for i in range(50):  # half say nothing, half stop in the middle of their request
                s = socket.create_connection(("127.0.0.2", node.metrics_port), timeout=5)
                if i % 2:
                    s.sendall(b"GET /metr")
                held.append(s)
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.2", node.metrics_port, timeout=10)
            try:
                conn.request("GET", "/metrics")
                r = conn.getresponse()
                body = r.read().decode()
            finally:
                conn.close()
            took = time.monotonic() - started
            print(f"\nscrape with 50 idle connections held: {took * 1000:.1f} ms")
            self.assertEqual(r.status, 200)
            self.assertIn('throttlex_requests_total{decision="allowed",route="local",api="http"} 1',
                          body)
            self.assertLess(took, 1.0)
            # Only /metrics is served there.
            conn = http.client.HTTPConnection("127.0.0.2", node.metrics_port, timeout=10)
            try:
                conn.request("GET", "/v1/check?key=s&limit=5&period=1m")
                r = conn.getresponse()
                self.assertEqual(r.status, 404)
                self.assertEqual(r.getheader("Content-Type"), "application/problem+json")
                r.read()
            finally:
                conn.close()
        finally:
            for s in held:
                s.close()



def served_serial(node, certs):
    """The serial number of the certificate the node's RPC port presents now."""
    hello = subprocess.run(["openssl", "s_client", "-connect", node.rpc_address, "-CAfile",
                            certs.path("ca.crt"), "-cert", certs.path("client.crt"), "-key",
                            certs.path("client.key"), "-servername", "throttlex-node"],
                           input="", capture_output=True, text=True, timeout=20)
    pem = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=hello.stdout,
                         capture_output=True, text=True, timeout=20)
    assert pem.returncode == 0, hello.stdout + hello.stderr
    return pem.stdout.strip()


def file_serial(path):
    return subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", path],
                          capture_output=True, text=True, timeout=20, check=True).stdout.strip()


class TlsReloadTest(unittest.TestCase):
    def test_a_renewed_certificate_is_served_after_sighup_and_a_bad_one_is_not(self):
        certs = Certificates(self, 1)
        node = Node("--node-id", "renew", *certs.node_flags(1)[:6])
        self.addCleanup(node.kill)
        first = served_serial(node, certs)
        self.assertEqual(first, file_serial(certs.path("node-1.crt")))
        # Renew: cluster-init.sh issues what is missing, from the same CA.
        os.remove(certs.path("node-1.crt"))
        os.remove(certs.path("node-1.key"))
        subprocess.run([str(ROOT / "scripts/cluster-init.sh"), certs.tmp.name, "1"], check=True,
                       capture_output=True, timeout=60)
        renewed = file_serial(certs.path("node-1.crt"))
        self.assertNotEqual(renewed, first)
        node.proc.send_signal(signal.SIGHUP)
        node.wait_for_log(r"TLS certificates reloaded", timeout=10)
        self.assertEqual(served_serial(node, certs), renewed)
        code, _, err = ctl(node, certs, "client", "check", "r:1", "--limit", "5", "--period", "1m")
        self.assertEqual(code, 0, err)
        # A broken key file is refused, named, and the renewed certificate stays in use.
        with open(certs.path("node-1.key"), "w") as f:
            f.write("not a key\n")
        node.proc.send_signal(signal.SIGHUP)
        line = node.wait_for_log(r"TLS reload failed", timeout=10)
        self.assertIn("node-1.key", line)
        self.assertEqual(served_serial(node, certs), renewed)
        code, _, err = ctl(node, certs, "client", "check", "r:1", "--limit", "5", "--period", "1m")
        self.assertEqual(code, 0, err)


class TlsMigrationTest(unittest.TestCase):
    """Turning RPC TLS on in a running cluster, one restart at a time (docs/security.md): certs
    with plain accepted and peers reached in plain TCP, then peers reached over TLS, then plain
    refused. At every step each node forwards to the other."""

    def test_tls_turns_on_node_by_node_and_forwarding_never_stops(self):
        certs = Certificates(self, 2)
        cluster = ("--gossip-preset", "local", "--cluster-name", f"tls-{os.getpid()}")
        nodes = {}

        def start(name, *flags):
            if name in nodes:
                self.assertEqual(nodes[name].stop(timeout=20), 0)
            other = [n for k, n in nodes.items() if k != name]
            seed = ("--join", other[0].gossip_address) if other else ()
            nodes[name] = Node("--node-id", name, *seed, *cluster, *flags)
            self.addCleanup(nodes[name].kill)

        def tls(i, required, outgoing):
            return (*certs.node_flags(i)[:6], f"--tls-incoming-required={str(required).lower()}",
                    f"--tls-outgoing={str(outgoing).lower()}")

        start("n1")
        start("n2")
        wait_for_view(list(nodes.values()))
        # A key each node owns (ownership follows the node ids, which stay).
        owned = {}
        for i in range(200):
            code, out, err = run_tool("throttlectl", "--node", nodes["n1"].rpc_address, "-o",
                                      "json", "owner", f"m{i}", "--limit", "1000", "--period",
                                      "1h")
            self.assertEqual(code, 0, err)
            owned.setdefault(json.loads(out)["owner"], f"m{i}")
            if len(owned) == 2:
                break

        def forwarding_works(step):
            wait_for_view(list(nodes.values()))
            for entry, owner in (("n1", "n2"), ("n2", "n1")):
                path = f"/v1/check?key={owned[owner]}&limit=1000&period=1h"

                def forwarded():
                    status, _, body = nodes[entry].request("GET", path)
                    return status == 200 and json.loads(body)["route"] == "forwarded"
                wait_until(forwarded, timeout=20, what=f"{step}: {entry} to forward to {owner}")

        forwarding_works("plain")
        steps = [("n2", 2, False, False), ("n1", 1, False, False),  # certs, all still plain
                 ("n2", 2, False, True), ("n1", 1, False, True),    # peers reached over TLS
                 ("n2", 2, True, True), ("n1", 1, True, True)]      # plain refused
        for name, i, required, outgoing in steps:
            start(name, *tls(i, required, outgoing))
            forwarding_works(f"{name} required={required} outgoing={outgoing}")
            if name == "n1" and not required:
                # Meanwhile plain clients still work, and TLS ones get their roles.
                code, _, err = run_tool("throttlectl", "--node", nodes["n1"].rpc_address,
                                        "check", "plain", "--limit", "5", "--period", "1m")
                self.assertEqual(code, 0, err)
                code, _, err = ctl(nodes["n1"], certs, "client", "rules", "set", "x",
                                   "--limit", "1", "--period", "1s")
                self.assertEqual(code, 4, err)
        for n in nodes.values():  # at the end: no plain connection
            code, _, err = run_tool("throttlectl", "--node", n.rpc_address, "members")
            self.assertEqual(code, 3, err)


class InlineLimitsTest(unittest.TestCase):
    def test_with_inline_limits_off_callers_can_only_name_rules(self):
        node = Node("--node-id", "named", "--inline-limits", "off",
                    rules="rules:\n  - {name: api, limit: 2, period: 1m}\n")
        self.addCleanup(node.kill)
        # A caller that sends its own (generous) limit is refused, over HTTP and RPC alike.
        status, headers, body = node.request("GET", "/v1/check?key=u&limit=1000000&period=1s")
        self.assertEqual(status, 403, body)
        self.assertEqual(headers["content-type"], "application/problem+json")
        self.assertIn("--inline-limits", json.loads(body)["detail"])
        code, out, err = run_tool("throttlectl", "--node", node.rpc_address, "check", "u",
                                  "--limit", "1000000", "--period", "1s")
        self.assertEqual(code, 4, out + err)
        self.assertIn("permission_denied", out + err)
        # Named rules work; in a batch, inline checks are refused in their place.
        checks = [{"key": "u", "rule": "api"}, {"key": "u", "limit": 1000000, "period": "1s"},
                  {"key": "u", "rule": "api"}, {"key": "u", "rule": "api"}]
        status, _, body = node.request("POST", "/v1/check", body=json.dumps({"checks": checks}),
                                       headers={"Content-Type": "application/json"})
        self.assertEqual(status, 200, body)
        results = json.loads(body)["results"]
        self.assertEqual([r.get("allowed") for r in results], [True, None, True, False], results)
        self.assertEqual(results[1]["error"]["status"], 403, results)
        metrics = node.metrics()
        self.assertIn("throttlex_keys 1", metrics)  # only the rule's key has state


class StoreFloodTest(unittest.TestCase):
    def test_flooding_keys_at_max_keys_never_lets_an_exhausted_key_through(self):
        node = Node("--node-id", "flood", "--max-keys", "2048")
        self.addCleanup(node.kill)
        victim = "/v1/check?key=victim&limit=3&period=1m"
        for _ in range(3):
            self.assertEqual(node.request("GET", victim)[0], 200)
        self.assertEqual(node.request("GET", victim)[0], 429)
        # 6,000 distinct new keys, three times --max-keys, in batches of 1,000.
        admitted = refused = 0
        for batch in range(6):
            checks = [{"key": f"flood:{batch}:{i}", "limit": 3, "period": "1m"}
                      for i in range(1000)]
            status, _, body = node.request("POST", "/v1/check",
                                           body=json.dumps({"checks": checks}),
                                           headers={"Content-Type": "application/json"})
            self.assertEqual(status, 200, body)
            for r in json.loads(body)["results"]:
                if r.get("allowed"):
                    admitted += 1
                else:
                    self.assertEqual(r["error"]["status"], 503, r)
                    refused += 1
        self.assertLessEqual(admitted, 2048)
        self.assertGreater(refused, 6000 - 2048)
        # The exhausted user stayed exhausted, whatever was refused around it.
        status, _, body = node.request("GET", victim)
        self.assertEqual(status, 429, body)
        # A single new key is refused with a problem+json 503.
        status, headers, body = node.request("GET", "/v1/check?key=new&limit=3&period=1m")
        self.assertEqual(status, 503, body)
        self.assertEqual(headers["content-type"], "application/problem+json")
        self.assertIn("key store is full", json.loads(body)["detail"])
        metrics = node.metrics()
        self.assertIn(f"throttlex_store_refused_total {refused + 1}", metrics)
        self.assertIn("throttlex_evictions_total 0", metrics)



class RedisAuthTest(unittest.TestCase):
    def test_the_snapshot_store_is_used_with_auth_and_a_wrong_password_never_fails_a_check(self):
        redis = Redis(password="s3cret-pass")
        self.addCleanup(redis.stop)
        tmp = tempfile.TemporaryDirectory(prefix="throttlex-redis-auth-")
        self.addCleanup(tmp.cleanup)
        right, wrong = os.path.join(tmp.name, "right"), os.path.join(tmp.name, "wrong")
        for path, text in ((right, "s3cret-pass\n"), (wrong, "guess\n")):
            with open(path, "w") as f:
                f.write(text)
        good = Node("--node-id", "auth-ok", "--redis", redis.address, "--redis-password-file",
                    right)
        self.addCleanup(good.kill)
        good.wait_for_log(r"redis connected to", timeout=10)
        self.assertEqual(good.request("GET", "/v1/check?key=a&limit=5&period=1m")[0], 200)
        code, out, err = run_tool("throttlectl", "--node", good.rpc_address, "snapshot")
        self.assertEqual(code, 0, err)
        self.assertNotEqual(redis.cli("DBSIZE"), "0")  # written, through AUTH
        bad = Node("--node-id", "auth-bad", "--redis", redis.address, "--redis-password-file",
                   wrong)
        self.addCleanup(bad.kill)
        bad.wait_for_log(r"redis AUTH failed", timeout=10)
        self.assertNotRegex("".join(bad.log_lines), r"redis connected to")
        self.assertEqual(bad.request("GET", "/v1/check?key=b&limit=5&period=1m")[0], 200)


class RedisTlsTest(unittest.TestCase):
    """hiredis 0.14 has no TLS: a node reaches a TLS-only Redis through a local stunnel in client
    mode (cluster/redis-tls/stunnel.conf), which verifies the server's certificate."""

    def test_snapshots_reach_a_tls_only_redis_through_a_local_stunnel(self):
        tmp = tempfile.TemporaryDirectory(prefix="throttlex-redis-tls-")
        self.addCleanup(tmp.cleanup)
        cert, key = os.path.join(tmp.name, "redis.crt"), os.path.join(tmp.name, "redis.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=redis.test",
                        "-addext", "subjectAltName=DNS:redis.test"],
                       check=True, capture_output=True)
        redis = Redis(password="over-tls", tls=(cert, key, cert))
        self.addCleanup(redis.stop)
        proxy_port = free_port()
        conf = os.path.join(tmp.name, "stunnel.conf")
        with open(conf, "w") as f:
            f.write(f"foreground = yes\npid =\n[redis]\nclient = yes\n"
                    f"accept = 127.0.0.1:{proxy_port}\nconnect = 127.0.0.1:{redis.port}\n"
                    f"CAfile = {cert}\nverifyChain = yes\ncheckHost = redis.test\n")
        stunnel = subprocess.Popen(["stunnel", conf], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.addCleanup(stunnel.wait, 10)
        self.addCleanup(stunnel.kill)
        wait_until(lambda: port_open(proxy_port), timeout=10, what="stunnel to listen")
        password = os.path.join(tmp.name, "password")
        with open(password, "w") as f:
            f.write("over-tls\n")
        node = Node("--node-id", "tls-redis", "--redis", f"127.0.0.1:{proxy_port}",
                    "--redis-password-file", password)
        self.addCleanup(node.kill)
        node.wait_for_log(r"redis connected to", timeout=10)
        for _ in range(3):
            self.assertEqual(node.request("GET", "/v1/check?key=t&limit=5&period=1h")[0], 200)
        code, out, err = run_tool("throttlectl", "--node", node.rpc_address, "snapshot")
        self.assertEqual(code, 0, out + err)
        self.assertNotEqual(redis.cli("DBSIZE"), "0")  # written through the proxy, over TLS
        # Pointed at the TLS port itself, a node never gets a connection, and checks go on.
        plain = Node("--node-id", "plain-redis", "--redis", redis.address,
                     "--redis-password-file", password)
        self.addCleanup(plain.kill)
        self.assertEqual(plain.request("GET", "/v1/check?key=p&limit=5&period=1h")[0], 200)
        self.assertEqual(metric_value(plain.metrics(), "throttlex_redis_connected"), 0)


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    unittest.main()
