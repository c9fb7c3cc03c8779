"""The HTTP API of a real throttlexd: status codes, headers, bodies, exactness, rules, shadow mode,
malformed input, metrics, shutdown, bad configuration."""
import json
import re
import signal
import unittest

from harness import Node, run_tool

RULES = """
rules:
  - name: api
    algorithm: fixed_window
    limit: 3
    period: 1m
  - name: dry
    limit: 1
    period: 1m
    shadow: true
"""


class HttpApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node(rules=RULES)

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def test_inline_limit_is_exact_and_answers_with_ratelimit_headers(self):
        statuses = []
        for _ in range(150):
            status, headers, body = self.node.request(
                "GET", "/v1/check?key=exact&limit=100&period=1m")
            statuses.append(status)
        self.assertEqual(statuses.count(200), 100)
        self.assertEqual(statuses.count(429), 50)
        self.assertEqual(headers["content-type"], "application/json")
        doc = json.loads(body)
        self.assertEqual(doc["allowed"], False)
        self.assertEqual(doc["limit"], 100)
        self.assertEqual(doc["remaining"], 0)
        # One unit refills every 600 ms; some of that has passed on the real clock.
        self.assertGreater(doc["retry_after_ms"], 0)
        self.assertLessEqual(doc["retry_after_ms"], 600)
        self.assertEqual(headers["ratelimit-policy"], '"default";q=100;w=60')
        self.assertEqual(headers["ratelimit"], '"default";r=0;t=1')
        self.assertEqual(headers["retry-after"], "1")

    def test_allowed_response_body_and_headers(self):
        status, headers, body = self.node.request(
            "GET", "/v1/check?key=fresh&limit=10&period=10s&algorithm=sliding_window&hits=3")
        self.assertEqual(status, 200)
        doc = json.loads(body)
        self.assertEqual(doc, {"allowed": True, "limit": 10, "remaining": 7,
                               "reset_after_ms": doc["reset_after_ms"], "retry_after_ms": 0,
                               "policy": "default", "shadow": False, "route": "local"})
        self.assertGreater(doc["reset_after_ms"], 10000)
        self.assertEqual(headers["ratelimit-policy"], '"default";q=10;w=10')
        self.assertNotIn("retry-after", headers)

    def test_post_single_and_batch(self):
        status, _, body = self.node.request(
            "POST", "/v1/check", json.dumps({"key": "p1", "limit": 1, "period": "1m"}),
            {"Content-Type": "application/json"})
        self.assertEqual(status, 200)
        status, _, body = self.node.request(
            "POST", "/v1/check", json.dumps({"key": "p1", "limit": 1, "period": 60000}))
        self.assertEqual(status, 429)
        batch = {"checks": [{"key": "b1", "rule": "api"}, {"key": ""},
                            {"key": "b1", "rule": "api", "hits": 2},
                            {"key": "b1", "rule": "api"}, {"key": "b2", "rule": "missing"}]}
        status, _, body = self.node.request("POST", "/v1/check", json.dumps(batch))
        self.assertEqual(status, 200)
        results = json.loads(body)["results"]
        self.assertEqual(len(results), 5)
        self.assertTrue(results[0]["allowed"])
        self.assertEqual(results[1]["error"]["status"], 400)
        self.assertTrue(results[2]["allowed"])
        self.assertFalse(results[3]["allowed"])
        self.assertEqual(results[4]["error"]["status"], 404)

    def test_bad_requests_get_problem_json(self):
        cases = [
            ("GET", "/v1/check?limit=10&period=1s", None, 400, "'key' is required"),
            ("GET", "/v1/check?key=a&limit=10&period=1week", None, 400, "invalid period"),
            ("GET", "/v1/check?key=a&limit=-1&period=1s", None, 400, "'limit' must be"),
            ("GET", "/v1/check?key=a&limit=2000000000000&period=1s", None, 400, "maximum 2^40"),
            ("GET", "/v1/check?key=a&limit=10&period=1s&algorithm=magic", None, 400, "unknown algorithm"),
            ("GET", "/v1/check?key=a&rule=nope", None, 404, "unknown rule 'nope'"),
            ("GET", "/v1/check?key=a&rule=api&limit=5", None, 400, "not both"),
            ("GET", "/v1/check?key=%zz&limit=1&period=1s", None, 400, "percent-encoding"),
            ("GET", "/v1/check?key=" + "k" * 1025 + "&limit=1&period=1s", None, 400, "1024"),
            ("POST", "/v1/check", "{not json", 400, "not valid JSON"),
            ("POST", "/v1/check", "[1]", 400, "JSON object"),
            ("POST", "/v1/check", json.dumps({"checks": [{}] * 1001}), 413, "1000"),
            ("POST", "/v1/check", json.dumps({"key": "a", "limit": "x", "period": "1s"}), 400, "'limit'"),
            ("DELETE", "/v1/check", None, 405, "DELETE"),
            ("GET", "/nowhere", None, 404, "/nowhere"),
        ]
        for method, path, body, want_status, needle in cases:
            with self.subTest(path=path[:60], body=(body or "")[:40]):
                status, headers, text = self.node.request(method, path, body)
                self.assertEqual(status, want_status, text)
                self.assertEqual(headers["content-type"], "application/problem+json")
                problem = json.loads(text)
                self.assertEqual(problem["status"], want_status)
                self.assertIn(needle, problem["detail"])

    def test_health_and_readiness(self):
        self.assertEqual(self.node.request("GET", "/healthz")[0], 200)
        status, _, body = self.node.request("GET", "/readyz")
        self.assertEqual((status, json.loads(body)["status"]), (200, "ready"))

    def test_shadow_rule_always_allows_and_counts_would_be_limited(self):
        for _ in range(3):
            status, _, body = self.node.request("GET", "/v1/check?key=s&rule=dry")
            self.assertEqual(status, 200)
        self.assertTrue(json.loads(body)["shadow"])
        self.assertIn("throttlex_shadow_limited_total 2", self.node.metrics())

    def test_nginx_auth_request_endpoint(self):
        headers = {"X-RateLimit-Key": "10.0.0.7"}
        for _ in range(3):
            status, h, _ = self.node.request("GET", "/v1/auth?rule=api", headers=headers)
            self.assertEqual(status, 204)
        status, h, _ = self.node.request("GET", "/v1/auth?rule=api", headers=headers)
        self.assertEqual(status, 403)
        self.assertIn("retry-after", h)
        self.assertTrue(h["ratelimit"].startswith('"api";r=0'))

    def test_malformed_http_gets_400_and_the_node_keeps_serving(self):
        reply = self.node.raw(b"THIS IS NOT HTTP\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply[:80])
        self.assertIn(b"application/problem+json", reply)
        reply = self.node.raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 431"), reply[:80])
        reply = self.node.raw(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 413"), reply[:80])
        self.assertEqual(self.node.request("GET", "/healthz")[0], 200)

    def test_pipelined_requests_are_answered_in_order(self):
        req = (b"GET /v1/check?key=pipe&limit=1&period=1m HTTP/1.1\r\nHost: x\r\n\r\n" * 2 +
               b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = self.node.raw(req)
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)
        self.assertEqual(statuses, [b"200", b"429", b"200"])

    def test_metrics_count_requests_by_decision_route_and_api(self):
        before = self.node.metrics()
        for _ in range(3):
            self.node.request("GET", "/v1/check?key=m&limit=2&period=1m")
        after = self.node.metrics()

        def value(text, decision):
            want = {"api": "http", "decision": decision, "route": "local"}
            for m in re.finditer(r'^throttlex_requests_total\{([^}]*)\} (\S+)$', text, re.M):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                if labels == want:
                    return float(m.group(2))
            self.fail(f"no throttlex_requests_total{want} in metrics")

        self.assertEqual(value(after, "allowed") - value(before, "allowed"), 2)
        self.assertEqual(value(after, "limited") - value(before, "limited"), 1)
        self.assertIn("throttlex_request_duration_seconds_bucket", after)
        self.assertIn("process_resident_memory_bytes", after)
        self.assertIn("throttlex_keys", after)


class RulesReloadTest(unittest.TestCase):
    def test_sighup_reloads_rules_and_a_bad_file_keeps_the_old_ones(self):
        node = Node(rules="rules:\n  - {name: a, limit: 1, period: 1m}\n")
        try:
            self.assertEqual(node.request("GET", "/v1/check?key=k&rule=b")[0], 404)
            node.write_rules("rules:\n  - {name: a, limit: 1, period: 1m}\n"
                             "  - {name: b, limit: 5, period: 1m}\n")
            node.signal(signal.SIGHUP)
            node.wait_for_log(r"rules reloaded: 2 rules")
            self.assertEqual(node.request("GET", "/v1/check?key=k&rule=b")[0], 200)
            node.write_rules("rules: [oops")
            node.signal(signal.SIGHUP)
            node.wait_for_log(r"rules reload failed")
            self.assertEqual(node.request("GET", "/v1/check?key=k&rule=b")[0], 200)
        finally:
            self.assertEqual(node.stop(), 0)


class StartupTest(unittest.TestCase):
    def test_sigterm_exits_zero(self):
        node = Node()
        self.assertEqual(node.stop(), 0)
        node.wait_for_log("stopped")

    def test_bad_configuration_fails_fast_naming_the_option(self):
        cases = [
            (["--http-port", "99999"], "--http-port"),
            (["--threads", "-3"], "--threads"),
            (["--rules", "/nonexistent/rules.yaml"], "--rules"),
            (["--no-such-flag"], "--no-such-flag"),
            (["--max-keys", "5"], "--max-keys"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                code, _, err = run_tool("throttlexd", "--bind", "127.0.0.1", "--http-port", "0",
                                        "--rpc-port", "0", "--metrics-port", "0", *args)
                self.assertNotEqual(code, 0)
                self.assertIn(needle, err)

    def test_environment_and_config_file_with_flags_winning(self):
        import os
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write('node-id = "from-file"\nthreads = 1\n')
        try:
            node = Node("--config", f.name, env={"THROTTLEX_NODE_ID": "from-env"})
            try:
                info = json.loads(node.request("GET", "/v1/info")[2])
                self.assertEqual(info["node_id"], "from-env")
            finally:
                node.stop()
            node = Node("--config", f.name, "--node-id", "from-flag",
                        env={"THROTTLEX_NODE_ID": "from-env"})
            try:
                self.assertEqual(json.loads(node.request("GET", "/v1/info")[2])["node_id"], "from-flag")
            finally:
                node.stop()
            node = Node("--config", f.name)
            try:
                self.assertEqual(json.loads(node.request("GET", "/v1/info")[2])["node_id"], "from-file")
            finally:
                node.stop()
        finally:
            os.unlink(f.name)

    def test_help_documents_every_option_with_defaults(self):
        code, out, _ = run_tool("throttlexd", "--help")
        self.assertEqual(code, 0)
        for opt in ["--node-id", "--bind", "--advertise", "--http-port", "--rpc-port",
                    "--gossip-port", "--metrics-port", "--join", "--redis", "--rules", "--config",
                    "--threads", "--max-keys"]:
            self.assertIn(opt, out)
        self.assertIn("8080", out)


if __name__ == "__main__":
    unittest.main()
