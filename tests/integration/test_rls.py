"""Envoy's rate limit service (gRPC, envoy.service.ratelimit.v3) on real throttlexd processes,
called through an independent client: Debian's python3-grpcio with messages that protoc generates
from proto/envoy/ (run with /usr/bin/python3, which imports Debian's Python packages).

The rules are envoyproxy/ratelimit's own README examples (1 to 9), loaded as they are from a rules
directory (one file per domain). Every answer is compared with what that service documents for
them: code, current_limit, limit_remaining and duration_until_reset, request by request; on one
node, and through a 3-node cluster entering at every node in turn. Fixed windows are aligned to
the unit (as envoyproxy/ratelimit's): a sequence that crossed a window boundary is run again in the
next window (bounded), so exact counts never depend on when the test runs.
"""
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

from harness import ROOT, Node, metric_value, wait_for_view

GEN = tempfile.mkdtemp(prefix="throttlex-rls-proto-")
PROTOS = ["envoy/config/core/v3/base.proto", "envoy/type/v3/ratelimit_unit.proto",
          "envoy/extensions/common/ratelimit/v3/ratelimit.proto",
          "envoy/service/ratelimit/v3/rls.proto"]
subprocess.run(["protoc", "-I", str(ROOT / "proto"), "--python_out=" + GEN, *PROTOS], check=True)
sys.path.insert(0, GEN)

import grpc  # noqa: E402  (Debian's python3-grpcio)
from envoy.service.ratelimit.v3 import rls_pb2  # noqa: E402

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
Unit = rls_pb2.RateLimitResponse.RateLimit
SECOND, MINUTE, DAY = Unit.SECOND, Unit.MINUTE, Unit.DAY
UNIT_SECONDS = {SECOND: 1, MINUTE: 60, DAY: 86_400}
MAX_UINT32 = 4_294_967_295
METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

# envoyproxy/ratelimit's README, Examples 1 to 9, verbatim but for the domain of Example 4's first
# variant (both variants use "example4"; one file per domain here).
README_EXAMPLES = {
    "example1.yaml": """\
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500

  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
""",
    "example2.yaml": """\
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5

  # Only allow 100 messages a day to any unique phone number
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
""",
    "example3.yaml": """\
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10

  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
""",
    "example4_flat.yaml": """\
domain: example4_flat
descriptors:
  - key: key
    value: value
    rate_limit:
      requests_per_unit: 300
      unit: second
""",
    "example4.yaml": """\
domain: example4
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit:
          requests_per_unit: 300
          unit: second
""",
    "example5.yaml": """\
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true

  - key: azure
    rate_limit:
      unit: minute
      requests_per_unit: 100
""",
    "example6.yaml": """\
domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit:
          requests_per_unit: 10
          unit: second
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit:
          requests_per_unit: 20
          unit: second
""",
    "example7.yaml": """\
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          name: specific_limit
          requests_per_unit: 5
          unit: second
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
""",
    "example8.yaml": """\
domain: example8
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: key1
    value: value1
    rate_limit:
      unit: minute
      requests_per_unit: 20
""",
    "example9.yaml": """\
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit:
      unit: minute
      requests_per_unit: 20
""",
}

# ThrottleX's own extension: a domain whose descriptors are all or nothing.
ATOMIC_DOMAIN = {
    "atomic.yaml": """\
domain: atomic
atomic: true
descriptors:
  - key: user
    rate_limit:
      unit: day
      requests_per_unit: 5
  - key: global
    rate_limit:
      unit: day
      requests_per_unit: 8
""",
}

RLS_PORT = re.compile(r"rls [^:]+:(\d+)")


def rules_dir():
    path = tempfile.mkdtemp(prefix="throttlex-rls-rules-")
    for name, text in {**README_EXAMPLES, **ATOMIC_DOMAIN}.items():
        pathlib.Path(path, name).write_text(text)
    return path


class Rls:
    """A gRPC client of one node's RLS port."""

    def __init__(self, node):
        port = int(RLS_PORT.search(node.wait_for_log(r"ready: .* rls ")).group(1))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.call = self.channel.unary_unary(
            METHOD, request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
            response_deserializer=rls_pb2.RateLimitResponse.FromString)
        self.raw = self.channel.unary_unary(METHOD)  # bytes in, bytes out

    def close(self):
        self.channel.close()


def stopped_clean(*nodes):
    """SIGTERM each node; every one must exit 0 (with a sanitizer build, a leak or undefined
    behaviour found at run time or at exit makes the exit code non-zero)."""
    codes = {n.node_id or "node": n.stop() for n in nodes}
    assert all(c == 0 for c in codes.values()), f"exit codes {codes}"


def request(domain, *descriptors, hits=0):
    """descriptors: each a list of (key, value) entries."""
    r = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for entries in descriptors:
        d = r.descriptors.add()
        for k, v in entries:
            e = d.entries.add()
            e.key, e.value = k, v
    return r


class Expect:
    """One descriptor's documented status: no limit, unlimited, or (limit, unit) with `remaining`
    after this request and whether it is over."""

    def __init__(self, limit=None, unit=None, remaining=0, over=False, unlimited=False, name=""):
        self.limit, self.unit, self.remaining = limit, unit, remaining
        self.over, self.unlimited, self.name = over, unlimited, name


NO_LIMIT = Expect()
UNLIMITED = Expect(unlimited=True)


def wait_for_window_after(window, seconds):
    """Returns once the wall clock, which the nodes' fixed windows follow, is past `window` (a
    window index of `seconds` each): at most one window of waiting."""
    while int(time.time()) // seconds <= window:
        time.sleep(max(0.001, (window + 1) * seconds - time.time()))


class RlsCase(unittest.TestCase):
    clients = []  # requests rotate over these (one node, or every node of a cluster)

    def setUp(self):
        self.turn = 0

    def ask(self, req):
        client = self.clients[self.turn % len(self.clients)]
        self.turn += 1
        return client.call(req, timeout=10)

    def check_status(self, status, want, where):
        if want.unlimited:
            self.assertEqual(status.code, OK, where)
            self.assertFalse(status.HasField("current_limit"), where)
            self.assertEqual(status.limit_remaining, MAX_UINT32, where)
            return
        if want.limit is None:
            self.assertEqual(status.code, OK, where)
            self.assertFalse(status.HasField("current_limit"), where)
            self.assertEqual(status.limit_remaining, 0, where)
            self.assertFalse(status.HasField("duration_until_reset"), where)
            return
        self.assertEqual(status.code, OVER if want.over else OK, where)
        self.assertEqual(status.current_limit.requests_per_unit, want.limit, where)
        self.assertEqual(status.current_limit.unit, want.unit, where)
        self.assertEqual(status.current_limit.name, want.name, where)
        self.assertEqual(status.limit_remaining, want.remaining, where)
        seconds = UNIT_SECONDS[want.unit]
        # divider - now % divider, as envoyproxy/ratelimit computes it: 1..divider.
        self.assertGreaterEqual(status.duration_until_reset.seconds, 1, where)
        self.assertLessEqual(status.duration_until_reset.seconds, seconds, where)

    def run_in_window(self, unit, steps):
        """Runs `steps` (a list of (request, [Expect per descriptor])) inside one fixed window of
        `unit`; a run that crossed a boundary is repeated in the next window (at most 5 times).
        Each request uses fresh values: `steps` is a function of a run tag."""
        seconds = UNIT_SECONDS[unit]
        for attempt in range(5):
            tag = uuid.uuid4().hex[:8]
            start = int(time.time()) // seconds
            answers = [(req, want, self.ask(req)) for req, want in steps(tag)]
            end = int(time.time()) // seconds
            if end != start:
                # Crossed into the next window: the counts started over midway, and the requests
                # sent after the boundary count in window `end`. Some steps use fixed values (the
                # README's IPs), so the next run starts in a window this one never touched.
                if seconds <= 60:
                    wait_for_window_after(end, seconds)
                continue
            for i, (req, want, got) in enumerate(answers):
                where = f"request {i + 1} ({req.domain}: {list(req.descriptors)})"
                self.assertEqual(len(got.statuses), len(want), where)
                self.assertEqual(got.overall_code, OVER if any(w.over for w in want) else OK, where)
                for status, w in zip(got.statuses, want):
                    self.check_status(status, w, where)
            return
        self.fail("five runs in a row crossed a window boundary")


class ReadmeExamples:
    """The README's examples, as sequences of requests with the answers its rules imply. Mixed in
    by the one-node and the cluster cases."""

    def test_example1_two_values_of_one_key(self):
        def steps(tag):
            users = request("mongo_cps", [("database", "users")])
            default = request("mongo_cps", [("database", "default")])
            other = request("mongo_cps", [("database", "other-" + tag)])
            # Counters are per window: these rules count from 0 in each second.
            return [(users, [Expect(500, SECOND, 499)]), (users, [Expect(500, SECOND, 498)]),
                    (default, [Expect(500, SECOND, 499)]), (other, [NO_LIMIT])]
        self.run_in_window(SECOND, steps)

    def test_example2_nested_and_per_value_limits(self):
        def steps(tag):
            a, b = "206" + tag, "207" + tag
            marketing_a = request("messaging", [("message_type", "marketing"), ("to_number", a)],
                                  [("to_number", a)])
            out = [(marketing_a, [Expect(5, DAY, 5 - i), Expect(100, DAY, 100 - i)])
                   for i in range(1, 6)]
            # The sixth marketing message is over 5/day; the 100/day counter still counts it (a
            # logical OR of independent limits, as envoyproxy/ratelimit does).
            out.append((marketing_a, [Expect(5, DAY, 0, over=True), Expect(100, DAY, 94)]))
            # Another number has its own counters.
            out.append((request("messaging", [("message_type", "marketing"), ("to_number", b)]),
                        [Expect(5, DAY, 4)]))
            out.append((request("messaging", [("to_number", b)]), [Expect(100, DAY, 99)]))
            # ("message_type", "marketing") alone: a placeholder without a limit.
            out.append((request("messaging", [("message_type", "marketing")]), [NO_LIMIT]))
            return out
        self.run_in_window(DAY, steps)

    def test_example3_key_value_before_key(self):
        def steps(tag):
            ip = request("edge_proxy_per_ip", [("remote_address", "50.0.0.1")])
            black = request("edge_proxy_per_ip", [("remote_address", "50.0.0.5")])
            out = [(ip, [Expect(10, SECOND, 10 - i)]) for i in range(1, 11)]
            out.append((ip, [Expect(10, SECOND, 0, over=True)]))
            out.append((black, [Expect(0, SECOND, 0, over=True)]))
            return out
        self.run_in_window(SECOND, steps)

    def test_example4_depth_must_match(self):
        def steps(tag):
            req = [("key", "value"), ("subkey", "subvalue-" + tag)]
            return [(request("example4", req), [Expect(300, SECOND, 299)]),
                    (request("example4_flat", req), [NO_LIMIT]),
                    (request("example4", [("key", "value")]), [NO_LIMIT])]
        self.run_in_window(SECOND, steps)

    def test_example5_unlimited(self):
        def steps(tag):
            return [(request("internal", [("ldap", "x-" + tag)]), [UNLIMITED]),
                    (request("internal", [("azure", "a-" + tag)]), [Expect(100, MINUTE, 99)]),
                    (request("internal", [("ldap", "y")], [("azure", "a-" + tag)]),
                     [UNLIMITED, Expect(100, MINUTE, 98)])]
        self.run_in_window(MINUTE, steps)

    def test_example6_shadow_mode_never_limits(self):
        def steps(tag):
            service = ("service", "auth-" + tag)
            a = request("example6", [service, ("user", "user-a")])
            b = request("example6", [service, ("user", "user-b")])
            out = [(a, [Expect(10, SECOND, 10 - i)]) for i in range(1, 11)]
            over = Expect(10, SECOND, 0)  # over its limit, answered OK (shadow), remaining 0
            out += [(a, [over]), (a, [over])]
            out += [(b, [Expect(20, SECOND, 20 - i)]) for i in range(1, 21)]
            out.append((b, [Expect(20, SECOND, 0, over=True)]))
            return out
        self.run_in_window(SECOND, steps)

    def test_example7_replaces(self):
        def steps(tag):
            one = [("key_1", "value_1"), ("user", "bkthomps")]
            two = [("key_2", "value_2"), ("user", "bkthomps")]
            both = request("example7", one, two)
            return [(both, [NO_LIMIT, Expect(10, SECOND, 9)]),
                    (both, [NO_LIMIT, Expect(10, SECOND, 8)]),
                    # The replaced limit was not touched by the two requests above.
                    (request("example7", one), [Expect(5, SECOND, 4, name="specific_limit")]),
                    (request("example7", two), [Expect(10, SECOND, 7)])]
        # The counters are shared by every run: one window per attempt keeps them exact.
        self.run_in_window(SECOND, steps)

    def test_example8_key_and_key_value(self):
        def steps(tag):
            unspecified = request("example8", [("key1", "unspecified-" + tag)])
            unspecified2 = request("example8", [("key1", "unspecified2-" + tag)])
            value1 = request("example8", [("key1", "value1")])
            return [(unspecified, [Expect(10, MINUTE, 9)]), (unspecified, [Expect(10, MINUTE, 8)]),
                    (unspecified2, [Expect(10, MINUTE, 9)]), (value1, [Expect(20, MINUTE, 19)]),
                    (value1, [Expect(20, MINUTE, 18)])]
        self.run_in_window(MINUTE, steps)

    def test_example9_wildcard_value(self):
        def steps(tag):
            v1 = request("example9", [("key1", "value_1" + tag)])
            v2 = request("example9", [("key1", "value_2" + tag)])
            return [(v1, [Expect(20, MINUTE, 19)]), (v1, [Expect(20, MINUTE, 18)]),
                    (v2, [Expect(20, MINUTE, 19)]),
                    (request("example9", [("key1", "other" + tag)]), [NO_LIMIT])]
        self.run_in_window(MINUTE, steps)


class AtomicDomain:
    """`atomic: true`: a request is allowed only if every descriptor is, and a denied request
    spends nothing (the descriptors that were admitted are given back and answer OK)."""

    def test_atomic_domain_user_5_global_8_two_users_sending_10(self):
        def steps(tag):
            def ask(user):
                return request("atomic", [("user", user + tag)], [("global", tag)])
            out = []
            for i in range(10):  # user 1: 5 allowed; then the user limit denies, global given back
                user_over = i >= 5
                out.append((ask("u1-"), [Expect(5, DAY, max(0, 4 - i), over=user_over),
                                         Expect(8, DAY, 7 - min(i, 4))]))
            for i in range(10):  # user 2: global has 3 left
                global_over = i >= 3
                out.append((ask("u2-"), [Expect(5, DAY, 4 - i if i < 3 else 2),
                                         Expect(8, DAY, max(0, 2 - i), over=global_over)]))
            return out
        self.run_in_window(DAY, steps)


class OneNode(AtomicDomain, ReadmeExamples, RlsCase):
    @classmethod
    def setUpClass(cls):
        cls.rules = rules_dir()
        cls.node = Node("--rls-port", "0", "--rules", cls.rules)
        cls.clients = [Rls(cls.node)]

    @classmethod
    def tearDownClass(cls):
        for c in cls.clients:
            c.close()
        stopped_clean(cls.node)


class ThreeNodes(AtomicDomain, ReadmeExamples, RlsCase):
    """The same answers through a cluster, each request entering at the next node: most checks
    are forwarded to their owner."""

    @classmethod
    def setUpClass(cls):
        cls.rules = rules_dir()
        common = ("--rls-port", "0", "--rules", cls.rules, "--gossip-preset", "local",
                  "--cluster-name", "rls-" + uuid.uuid4().hex[:8])
        cls.nodes = [Node("--node-id", "rls1", *common)]
        try:
            for i in (2, 3):
                cls.nodes.append(Node("--node-id", f"rls{i}", "--join",
                                      cls.nodes[0].gossip_address, *common))
            wait_for_view(cls.nodes)
        except BaseException:
            for n in cls.nodes:
                n.kill()
            raise
        cls.clients = [Rls(n) for n in cls.nodes]

    @classmethod
    def tearDownClass(cls):
        for c in cls.clients:
            c.close()
        forwarded = sum(metric_value(n.metrics(), "throttlex_requests_total",
                                     {"decision": d, "route": "forwarded", "api": "rls"})
                        for n in cls.nodes for d in ("allowed", "limited"))
        stopped_clean(*cls.nodes)
        # Not an assertion of the examples: that the cluster really forwarded RLS checks.
        assert forwarded > 0, "no RLS check was forwarded"


class Tls(unittest.TestCase):
    """With --tls-*, the RLS port speaks TLS only and wants a certificate of the cluster's CA
    whose common name grants a role, as the Cap'n Proto port does."""

    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="throttlex-rls-certs-")
        subprocess.run([str(ROOT / "scripts/cluster-init.sh"), cls.certs, "1"], check=True,
                       capture_output=True, timeout=60)
        cls.rules = rules_dir()
        c = cls.path
        cls.node = Node("--rls-port", "0", "--rules", cls.rules, "--tls-ca", c("ca.crt"),
                        "--tls-cert", c("node-1.crt"), "--tls-key", c("node-1.key"))
        cls.port = int(RLS_PORT.search(cls.node.wait_for_log(r"ready: .* rls ")).group(1))

    @classmethod
    def tearDownClass(cls):
        stopped_clean(cls.node)

    @classmethod
    def path(cls, name):
        return os.path.join(cls.certs, name)

    def call(self, channel):
        stub = channel.unary_unary(METHOD, request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
                                   response_deserializer=rls_pb2.RateLimitResponse.FromString)
        try:
            return stub(request("mongo_cps", [("database", "users")]), timeout=10)
        finally:
            channel.close()

    def secure(self, who=None, ca="ca.crt"):
        read = lambda name: pathlib.Path(self.path(name)).read_bytes()  # noqa: E731
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(ca), private_key=read(f"{who}.key") if who else None,
            certificate_chain=read(f"{who}.crt") if who else None)
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds,
                                   options=[("grpc.ssl_target_name_override", "throttlex-node")])

    def test_a_client_certificate_of_the_cluster_is_served(self):
        got = self.call(self.secure("client"))
        self.assertEqual(got.overall_code, OK)
        self.assertEqual(got.statuses[0].current_limit.requests_per_unit, 500)

    def test_a_certificate_of_another_ca_is_refused(self):
        other = tempfile.mkdtemp(prefix="throttlex-rls-other-")
        subprocess.run([str(ROOT / "scripts/cluster-init.sh"), other, "1"], check=True,
                       capture_output=True, timeout=60)
        read = lambda name, d=self.certs: pathlib.Path(d, name).read_bytes()  # noqa: E731
        creds = grpc.ssl_channel_credentials(root_certificates=read("ca.crt"),
                                             private_key=read("client.key", other),
                                             certificate_chain=read("client.crt", other))
        channel = grpc.secure_channel(f"127.0.0.1:{self.port}", creds,
                                      options=[("grpc.ssl_target_name_override", "throttlex-node")])
        with self.assertRaises(grpc.RpcError) as cm:
            self.call(channel)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_no_certificate_or_plain_text_is_refused(self):
        for channel in (self.secure(None), grpc.insecure_channel(f"127.0.0.1:{self.port}")):
            with self.assertRaises(grpc.RpcError) as cm:
                self.call(channel)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)


class BadInput(unittest.TestCase):
    """Bad requests get a clear gRPC status and spend nothing; the node keeps serving."""

    @classmethod
    def setUpClass(cls):
        cls.rules = rules_dir()
        cls.node = Node("--rls-port", "0", "--rules", cls.rules)
        cls.rls = Rls(cls.node)

    @classmethod
    def tearDownClass(cls):
        cls.rls.close()
        stopped_clean(cls.node)

    def assert_status(self, req, code, raw=False):
        with self.assertRaises(grpc.RpcError) as cm:
            (self.rls.raw if raw else self.rls.call)(req, timeout=10)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception.details()

    def remaining(self, number):
        got = self.rls.call(request("messaging", [("to_number", number)]), timeout=10)
        return got.statuses[0].limit_remaining

    def test_refused_requests_spend_nothing(self):
        number = "bad-" + uuid.uuid4().hex[:8]
        day = int(time.time()) // 86_400
        self.assertEqual(self.remaining(number), 99)
        valid = [("to_number", number)]
        self.assertIn("domain", self.assert_status(request("", valid), grpc.StatusCode.INVALID_ARGUMENT))
        self.assertIn("unknown domain", self.assert_status(request("nope", valid),
                                                           grpc.StatusCode.NOT_FOUND))
        self.assertIn("descriptor", self.assert_status(request("messaging"),
                                                       grpc.StatusCode.INVALID_ARGUMENT))
        # A descriptor without entries, too many descriptors, too many entries, an over-long key:
        # refused as a whole, also when a valid descriptor comes first.
        empty = rls_pb2.RateLimitRequest(domain="messaging")
        e = empty.descriptors.add().entries.add()
        e.key, e.value = "to_number", number
        empty.descriptors.add()
        self.assert_status(empty, grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_status(request("messaging", *([valid] * 65)), grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_status(request("messaging", valid, [("k", "v")] * 17),
                           grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_status(request("messaging", valid, [("to_number", "x" * 2000)]),
                           grpc.StatusCode.INVALID_ARGUMENT)
        # A descriptor's own hits_addend beyond any limit.
        huge = request("messaging", valid)
        huge.descriptors[0].hits_addend.value = 1 << 62
        self.assert_status(huge, grpc.StatusCode.INVALID_ARGUMENT)
        # Malformed protobuf: a length past the end, and a truncated string.
        for garbage in (b"\x12\xff\x01", b"\x0a\x05ab"):
            self.assertIn("malformed", self.assert_status(garbage, grpc.StatusCode.INVALID_ARGUMENT,
                                                          raw=True))
        # More hits than the limit: a limit decision (over), nothing spent.
        got = self.rls.call(request("messaging", valid, hits=1000), timeout=10)
        self.assertEqual(got.overall_code, OVER)
        if int(time.time()) // 86_400 == day:  # the day's window did not end meanwhile
            self.assertEqual(self.remaining(number), 98)

    def test_hits_addend_counts_as_envoy_defines_it(self):
        number = "hits-" + uuid.uuid4().hex[:8]
        day = int(time.time()) // 86_400
        got = [self.rls.call(request("messaging", [("to_number", number)], hits=h), timeout=10)
               for h in (0, 1, 7)]  # 0 (unset) means 1
        req = request("messaging", [("to_number", number)], hits=7)
        req.descriptors[0].hits_addend.value = 3  # the descriptor's own overrides the request's
        got.append(self.rls.call(req, timeout=10))
        if int(time.time()) // 86_400 != day:
            self.skipTest("the day's window ended during the test")
        self.assertEqual([g.statuses[0].limit_remaining for g in got], [99, 98, 91, 88])
