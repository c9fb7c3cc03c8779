"""throttlectl and throttlex-bench against a real throttlexd over RPC: exit codes, table and JSON
output, rules administration, key inspection and reset, node status, and a short load run; and
http-paced (the fixed-rate HTTP generator of the benchmarks) over HTTP."""
import json
import os
import socket
import time
import unittest

from harness import Node, run_tool

RULES = """
rules:
  - name: api
    algorithm: fixed_window
    limit: 3
    period: 1m
"""
RELOADED_RULES = """
rules:
  - name: api
    limit: 5
    period: 1m
  - name: login
    algorithm: sliding_window
    limit: 2
    period: 10s
"""
CHECK_FIELDS = {"allowed", "limit", "remaining", "reset_after_ms", "retry_after_ms", "policy",
                "shadow"}


def closed_port():
    """A local port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrottlectlTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node(rules=RULES)

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def ctl(self, *args, timeout=30):
        return run_tool("throttlectl", "--node", self.node.rpc_address, *args, timeout=timeout)

    def ctl_json(self, *args):
        code, out, err = self.ctl("-o", "json", *args)
        return code, json.loads(out), err

    def test_check_exits_0_while_allowed_and_1_once_limited(self):
        inline = ["--limit", "2", "--period", "1m"]
        self.assertEqual(self.ctl("check", "exit-codes", *inline)[0], 0)
        code, out, _ = self.ctl("check", "exit-codes", *inline)
        self.assertEqual(code, 0)
        self.assertIn("allowed", out)
        code, out, _ = self.ctl("check", "exit-codes", *inline)
        self.assertEqual(code, 1)
        self.assertIn("limited", out)

    def test_check_json_is_one_document_with_the_http_fields(self):
        code, doc, _ = self.ctl_json("check", "json-shape", "--limit", "10", "--period", "10s",
                                     "--algorithm", "sliding_window", "--hits", "3")
        self.assertEqual(code, 0)
        self.assertEqual(set(doc), CHECK_FIELDS)
        self.assertEqual((doc["allowed"], doc["limit"], doc["remaining"]), (True, 10, 7))
        self.assertEqual((doc["retry_after_ms"], doc["policy"], doc["shadow"]), (0, "default", False))
        self.assertGreater(doc["reset_after_ms"], 0)
        code, doc, _ = self.ctl_json("check", "json-shape-2", "--limit", "1", "--period", "1m",
                                     "--hits", "2")
        self.assertEqual(code, 1)
        self.assertEqual(doc["retry_after_ms"], -1)  # more hits than the bucket holds: never

    def test_usage_errors_exit_2_with_a_message_and_send_nothing(self):
        for args in (["check", "k"],                                   # no limit
                     ["check", "k", "--limit", "1"],                    # no period
                     ["check", "k", "--limit", "1", "--period", "5x"],  # bad period
                     ["check", "k", "--rule", "api", "--limit", "1"],   # both
                     ["check", "k", "--limit", "-1", "--period", "1s"],
                     ["check", "k", "--limit", "1", "--period", "1s", "--algorithm", "magic"],
                     ["rules", "set", "r", "--limit", "1"],
                     ["rules"], ["frobnicate"], ["-o", "xml", "status"], ["--timeout", "0s", "status"]):
            code, out, err = self.ctl(*args)
            self.assertEqual(code, 2, args)
            self.assertEqual(out, "", args)
            self.assertTrue(err.startswith("throttlectl: "), (args, err))
        code, _, err = run_tool("throttlectl", "status")  # no --node and no THROTTLEX_NODE
        self.assertEqual(code, 2)
        self.assertIn("--node", err)
        code, _, _ = run_tool("throttlectl", "--node", "no-port", "status")
        self.assertEqual(code, 2)

    def test_help_documents_the_exit_codes(self):
        code, out, _ = run_tool("throttlectl", "--help")
        self.assertEqual(code, 0)
        for line in ("0  ok", "1  check: limited", "2  usage error", "3  node unreachable",
                     "4  the node refused"):
            self.assertIn(line, out)

    def test_unreachable_node_exits_3_within_the_timeout(self):
        port = closed_port()
        started = time.monotonic()
        code, out, err = run_tool("throttlectl", "--node", f"127.0.0.1:{port}", "--timeout", "1s",
                                  "check", "k", "--limit", "1", "--period", "1s")
        self.assertEqual(code, 3)
        self.assertEqual(out, "")
        self.assertTrue(err.startswith("throttlectl: "), err)
        self.assertLess(time.monotonic() - started, 5.0)

    def test_node_from_the_environment(self):
        p = os.environ.copy()
        os.environ["THROTTLEX_NODE"] = self.node.rpc_address
        try:
            code, out, _ = run_tool("throttlectl", "status")
        finally:
            os.environ.clear()
            os.environ.update(p)
        self.assertEqual(code, 0, out)

    def test_refused_requests_exit_4(self):
        code, out, err = self.ctl("check", "k", "--rule", "no-such-rule")
        self.assertEqual(code, 4)
        self.assertEqual(out, "")
        self.assertIn("no-such-rule", err)
        self.assertEqual(self.ctl("check", "k", "--limit", str(2**41), "--period", "1s")[0], 4)
        self.assertEqual(self.ctl("rules", "set", "bad name!", "--limit", "1",
                                  "--period", "1s")[0], 4)

    def test_inspect_then_reset(self):
        code, doc, _ = self.ctl_json("inspect", "ins", "--rule", "api")
        self.assertEqual((code, doc["found"]), (0, False))
        self.assertEqual(self.ctl("check", "ins", "--rule", "api", "--hits", "2")[0], 0)
        code, doc, _ = self.ctl_json("inspect", "ins", "--rule", "api")
        self.assertEqual(code, 0)
        self.assertEqual((doc["found"], doc["algorithm"], doc["limit"], doc["remaining"],
                          doc["count"]), (True, "fixed_window", 3, 1, 2))
        code, out, _ = self.ctl("inspect", "ins", "--rule", "api")
        self.assertIn("fixed_window", out)
        code, doc, _ = self.ctl_json("reset", "ins", "--rule", "api")
        self.assertEqual((code, doc), (0, {"key": "ins", "existed": True}))
        code, doc, _ = self.ctl_json("reset", "ins", "--rule", "api")
        self.assertEqual((code, doc["existed"]), (0, False))
        self.assertFalse(self.ctl_json("inspect", "ins", "--rule", "api")[1]["found"])

    def test_status_fields(self):
        code, doc, _ = self.ctl_json("status")
        self.assertEqual(code, 0)
        self.assertEqual(set(doc), {"node_id", "version", "protocol_version", "http_address",
                                    "rpc_address", "metrics_address", "uptime_ms", "keys",
                                    "evictions", "rules", "rules_version", "rules_origin",
                                    "rules_made_unix_ms", "persistence"})
        self.assertGreaterEqual(doc["protocol_version"], 1)
        self.assertGreaterEqual(doc["rules"], 1)
        # The rules file as loaded (version 0, made by no node), or a version a test of this
        # class made on this node.
        self.assertRegex(doc["rules_version"], r"^\d+\.[0-9a-f]{16}$")
        self.assertEqual(doc["rules_origin"],
                         "" if doc["rules_version"].startswith("0.") else doc["node_id"])
        # Started without --redis: memory only, nothing pending, no handoffs.
        p = doc["persistence"]
        self.assertEqual((p["redis"], p["connected"], p["pending"], p["handoffs_sent"],
                          p["slots_waiting"], p["draining"]), ("", False, 0, 0, 0, False))
        code, out, _ = self.ctl("status")
        self.assertEqual(code, 0)
        for name in ("node", "version", "protocol", "uptime", "keys", "evictions", "rules",
                     "redis", "none (memory only)", "handoffs"):
            self.assertIn(name, out)
        # snapshot needs a snapshot store: a clear refusal, not a silent success.
        code, out, err = self.ctl("snapshot")
        self.assertNotEqual(code, 0)
        self.assertIn("--redis", out + err)


class ThrottlectlRulesTest(unittest.TestCase):
    """Its own node: these tests change the rule set."""

    def setUp(self):
        self.node = Node(rules=RULES)

    def tearDown(self):
        self.node.stop()

    def ctl(self, *args):
        return run_tool("throttlectl", "--node", self.node.rpc_address, *args)

    def rules(self):
        code, out, _ = self.ctl("-o", "json", "rules", "list")
        self.assertEqual(code, 0)
        return {r["name"]: r for r in json.loads(out)}

    def test_set_list_delete_round_trip(self):
        self.assertEqual(list(self.rules()), ["api"])
        code, _, _ = self.ctl("rules", "set", "web", "--limit", "10", "--period", "5s",
                              "--algorithm", "gcra", "--burst", "20", "--shadow",
                              "--degraded", "deny", "--overload", "deny")
        self.assertEqual(code, 0)
        self.assertEqual(self.rules()["web"], {"name": "web", "algorithm": "gcra", "limit": 10,
                                               "period": "5s", "period_ms": 5000, "burst": 20,
                                               "shadow": True, "degraded": "deny",
                                               "overload": "deny"})
        # The rules file's own rule: the defaults.
        self.assertEqual((self.rules()["api"]["degraded"], self.rules()["api"]["overload"]),
                         ("share", "allow"))
        code, out, _ = self.ctl("rules", "list")
        self.assertEqual(out.split("\n")[0].split(),
                         ["NAME", "ALGORITHM", "LIMIT", "PERIOD", "BURST", "SHADOW", "ADAPTIVE"])
        self.assertIn("gcra", out)
        # A shadow rule allows, so check exits 0 even past the limit.
        for _ in range(25):
            self.assertEqual(self.ctl("check", "k", "--rule", "web")[0], 0)
        code, out, _ = self.ctl("-o", "json", "rules", "delete", "web")
        doc = json.loads(out)
        self.assertEqual((code, doc["name"], doc["deleted"]), (0, "web", True))
        # One node, not clustered with others: the change is reported for it alone, with the
        # rules version it made (the set above made the one before).
        self.assertEqual([n["ok"] for n in doc["nodes"]], [True])
        self.assertRegex(doc["nodes"][0]["detail"], r"^deleted, version (\d+)\.[0-9a-f]{16}$")
        code, out, _ = self.ctl("-o", "json", "rules", "delete", "web")
        doc = json.loads(out)
        self.assertEqual((code, doc["deleted"]), (0, False))
        code, out, _ = self.ctl("rules", "delete", "web")
        self.assertEqual(code, 0)
        self.assertIn("not found", out)
        self.assertEqual(self.ctl("check", "k", "--rule", "web")[0], 4)

    def test_atomic_spends_on_every_key_or_on_none(self):
        # api: 3 a minute (the file), login: 2 an hour. Two batches pass; the third is denied by
        # login and gives api's unit back.
        self.assertEqual(self.ctl("rules", "set", "login", "--limit", "2", "--period", "1h",
                                  "--algorithm", "fixed_window")[0], 0)
        for _ in range(2):
            self.assertEqual(self.ctl("atomic", "api=u1", "login=u1")[0], 0)
        code, out, err = self.ctl("-o", "json", "atomic", "api=u1", "login=u1")
        self.assertEqual(code, 1, out + err)
        doc = json.loads(out)
        self.assertEqual((doc["allowed"], doc["denied_by"]), (False, 1))
        self.assertEqual([(r["rule"], r["key"], r["refunded"]) for r in doc["results"]],
                         [("api", "u1", True), ("login", "u1", False)])
        code, out, _ = self.ctl("-o", "json", "check", "u1", "--rule", "api")
        self.assertEqual((code, json.loads(out)["remaining"]), (0, 0))  # 2 batches + this one
        code, out, _ = self.ctl("atomic", "api=u2", "login=u1")
        self.assertEqual(code, 1)
        self.assertIn("denied by check 2 (login=u1): nothing spent", out)
        # Usage errors: nothing sent, exit 2.
        for bad in (["api"], ["=u1"], ["api="]):
            code, _, err = self.ctl("atomic", *bad)
            self.assertEqual(code, 2, bad)
            self.assertIn("RULE=KEY", err)
        # An unknown rule denies the whole batch: exit 4 with the error, nothing spent (api's unit
        # is given back if it was taken).
        code, out, err = self.ctl("atomic", "api=u3", "nope=u3")
        self.assertEqual(code, 4)
        self.assertIn("nope", err)
        code, out, _ = self.ctl("-o", "json", "check", "u3", "--rule", "api", "--hits", "0")
        self.assertEqual((code, json.loads(out)["remaining"]), (0, 3))

    def test_reload_reads_the_file_and_replaces_runtime_rules(self):
        self.assertEqual(self.ctl("rules", "set", "temp", "--limit", "1", "--period", "1s")[0], 0)
        self.node.write_rules(RELOADED_RULES)
        code, out, _ = self.ctl("-o", "json", "rules", "reload")
        self.assertEqual((code, json.loads(out)["rules"]), (0, 2))
        rules = self.rules()
        self.assertEqual(sorted(rules), ["api", "login"])
        self.assertEqual(rules["api"]["limit"], 5)
        self.assertEqual(rules["login"]["algorithm"], "sliding_window")
        code, out, _ = self.ctl("rules", "reload")
        self.assertEqual(code, 0)
        self.assertIn("2 rules", out)


class ThrottlexBenchTest(unittest.TestCase):
    def test_short_run_reports_checks_and_no_errors(self):
        node = Node()
        try:
            code, out, err = run_tool("throttlex-bench", "--node", node.rpc_address,
                                      "--duration", "1s", "--warmup", "0", "--keys", "1000",
                                      "--connections", "2", "--concurrency", "8", "--json",
                                      timeout=60)
        finally:
            node.stop()
        self.assertEqual(code, 0, err)
        doc = json.loads(out)
        self.assertGreater(doc["checks"], 0)
        self.assertEqual(doc["errors"], 0)
        self.assertEqual(doc["fallbacks"], 0)
        self.assertEqual(doc["allowed"] + doc["limited"], doc["checks"])
        self.assertGreater(doc["throughput"], 0)
        lat = doc["latency_us"]
        self.assertTrue(0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"])
        self.assertGreaterEqual(doc["client"]["avg_batch"], 1.0)
        self.assertIn("checks/s", err)  # the progress line

    def test_unreachable_node_exits_non_zero_with_a_message(self):
        code, out, err = run_tool("throttlex-bench", "--node", f"127.0.0.1:{closed_port()}",
                                  "--duration", "1s")
        self.assertEqual(code, 3)
        self.assertIn("throttlex-bench:", err)

    def test_errors_over_one_percent_exit_non_zero(self):
        node = Node()
        try:
            code, out, err = run_tool("throttlex-bench", "--node", node.rpc_address,
                                      "--duration", "1s", "--warmup", "0", "--connections", "1",
                                      "--rule", "missing", "--json", timeout=60)
        finally:
            node.stop()
        self.assertEqual(code, 1)
        doc = json.loads(out)
        self.assertEqual(doc["errors"], doc["checks"])
        self.assertIn("unknown rule", doc["first_error"])


if __name__ == "__main__":
    unittest.main()


class HttpPacedTest(unittest.TestCase):
    """bench/http_paced.cc, the fixed-rate HTTP generator the benchmark reports rely on."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def paced(self, *args):
        code, out, err = run_tool("http-paced", "--port", str(self.node.http_port), *args,
                                  "--json", timeout=60)
        return code, (json.loads(out) if out.strip() else None), err

    def test_every_request_due_in_the_window_is_sent_and_answered(self):
        code, doc, err = self.paced("--rate", "500", "--duration", "1", "--warmup", "0.2",
                                    "--keys", "1000", "--suffix", "&limit=1000000&period=1s")
        self.assertEqual(code, 0, err)
        # Due every 2 ms for 1 s: exactly 500 in the measured window, whatever the node's speed.
        self.assertEqual(doc["answered"], 500)
        self.assertEqual(doc["ok"], 500)
        self.assertEqual(doc["socket_errors"] + doc["unsent"] + doc["non_2xx"], 0)
        lat = doc["latency_ms"]
        self.assertTrue(0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"])

    def test_denials_are_counted_and_fail_the_run(self):
        # 50 keys of 3 per hour: at most 150 of the 600 checks (warm-up included) are allowed.
        code, doc, err = self.paced("--rate", "500", "--duration", "1", "--warmup", "0.2",
                                    "--keys", "50", "--key-prefix", "deny:",
                                    "--suffix", "&limit=3&period=1h")
        self.assertEqual(code, 1, err)
        self.assertEqual(doc["ok"] + doc["non_2xx"], doc["answered"])
        self.assertEqual(doc["answered"], 500)
        self.assertLessEqual(doc["ok"], 150)

    def test_closed_loop_runs_as_fast_as_answers_come(self):
        code, doc, err = self.paced("--rate", "0", "--duration", "0.5", "--warmup", "0",
                                    "--connections", "4", "--suffix", "&limit=1000000&period=1s")
        self.assertEqual(code, 0, err)
        self.assertGreater(doc["answered"], 0)
        self.assertEqual(doc["ok"], doc["answered"])

    def test_unreachable_server_and_bad_flags_exit_non_zero_with_a_message(self):
        code, out, err = run_tool("http-paced", "--port", str(closed_port()), "--rate", "10")
        self.assertEqual(code, 3)
        self.assertIn("cannot connect", err)
        code, out, err = run_tool("http-paced", "--port", "80", "--host", "not-an-ip", "--rate", "10")
        self.assertEqual(code, 2)
        self.assertIn("--host must be an IP address", err)
        code, out, err = run_tool("http-paced", "--rate", "10")
        self.assertEqual(code, 2)
        self.assertIn("--port", err)
