"""Overload protection of a node (docs/overload.md), on a real throttlexd.

A node frozen with SIGSTOP while checks arrive is a worker loop far behind: when it resumes, what
queued meets a loop lag of the whole freeze. Sheddable checks are then answered at once by their
rule's overload policy — allowed (200) or limited with Retry-After (429) — marked shed in the body,
a header and throttlex_shed_total; critical checks are decided as always. Once the loop keeps up
again, sheddable checks are decided too.

The freeze is the scenario (how long the loop falls behind), not a wait for something to happen;
everything else is polled, bounded.
"""
import json
import signal
import threading
import time
import unittest

from harness import Node, metric_value, wait_until

RULES = """rules:
  - name: open
    limit: 100
    period: 1m
  - name: closed
    limit: 100
    period: 1m
    overload: deny
"""


class OverloadTest(unittest.TestCase):
    def setUp(self):
        self.node = Node("--node-id", "o1", "--overload-target-ms", "10",
                         "--overload-interval-ms", "1000", rules=RULES)

    def tearDown(self):
        self.node.signal(signal.SIGCONT)
        self.node.kill()

    def check(self, rule, key, priority):
        status, headers, body = self.node.request(
            "GET", f"/v1/check?rule={rule}&key={key}", headers={"X-Throttlex-Priority": priority})
        return status, headers, json.loads(body)

    def test_a_frozen_loop_sheds_sheddable_checks_and_decides_critical_ones(self):
        cases = ([("open", f"s{i}", "sheddable") for i in range(10)] +
                 [("closed", f"d{i}", "sheddable") for i in range(10)] +
                 [("open", f"c{i}", "critical") for i in range(10)])
        answers = [None] * len(cases)

        def send(i):
            answers[i] = self.check(*cases[i])

        self.node.freeze()  # stopped, every thread, before the first check is sent
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        time.sleep(0.6)  # the freeze: the checks wait in the node's sockets
        self.node.signal(signal.SIGCONT)
        for t in threads:
            t.join(timeout=30)
        self.assertFalse(any(t.is_alive() for t in threads))

        for (rule, key, priority), (status, headers, body) in zip(cases, answers):
            with self.subTest(rule=rule, key=key, priority=priority):
                if priority == "critical":
                    self.assertEqual(status, 200, body)
                    self.assertNotIn("shed", body)
                    self.assertEqual(body["remaining"], 99)  # decided: one unit spent
                elif rule == "open":
                    self.assertEqual(status, 200, body)
                    self.assertEqual((body["shed"], headers["x-throttlex-shed"]),
                                     ("overload", "overload"))
                    self.assertEqual(body["remaining"], 100)  # nothing spent
                else:
                    self.assertEqual(status, 429, body)
                    self.assertEqual(body["shed"], "overload")
                    self.assertEqual(headers["retry-after"], "1")
        metrics = self.node.metrics()
        self.assertEqual(metric_value(metrics, "throttlex_shed_total",
                                      {"reason": "overload", "priority": "sheddable"}), 20)
        self.assertEqual(metric_value(metrics, "throttlex_shed_total",
                                      {"reason": "overload", "priority": "critical"}), 0)
        shed = metric_value(metrics, "throttlex_requests_total",
                            {"decision": "shed", "route": "local", "api": "http"})
        self.assertEqual(shed, 20)
        # The shed checks were not counted as limit decisions of their rules.
        rule_series = [line for line in metrics.splitlines()
                       if line.startswith("throttlex_rule_checks_total")]
        self.assertTrue(any('rule="open"' in line for line in rule_series), rule_series)
        self.assertFalse(any('rule="closed"' in line for line in rule_series), rule_series)

        # Caught up: sheddable checks are decided again.
        def served():
            status, headers, body = self.check("open", "after", "sheddable")
            return "shed" not in body and status == 200
        wait_until(served, timeout=10, interval=0.1, what="a sheddable check decided again")


if __name__ == "__main__":
    unittest.main()
