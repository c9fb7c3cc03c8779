"""Rules across the cluster (docs/api.md, "Rules across the cluster"): a rules change made on one
node reaches every member, every node reports the version it runs, and a node that joins or
restarts runs the cluster's rules rather than its own rules file.

Run: cd tests/integration && /usr/bin/python3 -m unittest -v test_rules_sync
"""
import json
import signal
import unittest

from harness import Node, metric_value, run_tool, start_cluster, wait_for_view, wait_until

RULES = """
rules:
  - name: api
    algorithm: fixed_window
    limit: 3
    period: 1h
"""

EDITED = """
rules:
  - name: api
    algorithm: fixed_window
    limit: 7
    period: 1h
  - name: login
    algorithm: sliding_window
    limit: 2
    period: 1h
"""


def info(node):
    status, _, body = node.request("GET", "/v1/info")
    assert status == 200, body
    return json.loads(body)


def versions(nodes):
    return {n.node_id: info(n)["rules_version"] for n in nodes}


def allowed(node, rule, key, times):
    """How many of `times` checks of `key` under `rule`, entering at `node`, were allowed."""
    count = 0
    for _ in range(times):
        status, _, body = node.request("GET", f"/v1/check?rule={rule}&key={key}")
        assert status in (200, 429), body
        count += status == 200
    return count


class RulesAcrossTheCluster(unittest.TestCase):
    def setUp(self):
        self.nodes = start_cluster(5, "rs", rules=RULES)

    def tearDown(self):
        for n in self.nodes:
            n.kill()

    def ctl(self, node, *args):
        return run_tool("throttlectl", "--node", node.rpc_address, *args)

    def restart_last(self, rules):
        """Stops rs5 (drained, exit 0) and starts it again with `rules` as its file, joining the
        others; returns it once it reports ready."""
        victim = self.nodes.pop(4)
        self.assertEqual(victim.stop(), 0)
        args = self.nodes[0].proc.args
        cluster = args[args.index("--cluster-name") + 1]
        back = Node("--node-id", "rs5", "--join", self.nodes[0].gossip_address, "--gossip-preset",
                    "local", "--cluster-name", cluster, rules=rules)
        self.nodes.append(back)
        return back

    def converged(self, nodes=None):
        """Until every node runs one version; returns it."""
        nodes = nodes or self.nodes

        def one_version():
            seen = set(versions(nodes).values())
            return seen.pop() if len(seen) == 1 else None

        return wait_until(one_version, timeout=10, what="every node to run one rules version")

    def test_a_change_on_one_node_reaches_every_member(self):
        start = self.converged()
        code, out, err = self.ctl(self.nodes[2], "-o", "json", "rules", "set", "web",
                                  "--limit", "2", "--period", "1h", "--algorithm", "fixed_window")
        self.assertEqual(code, 0, out + err)
        doc = json.loads(out)
        # The command waits for every member and reports each with the version it runs.
        self.assertEqual(len(doc["nodes"]), 5, doc)
        self.assertTrue(all(n["ok"] for n in doc["nodes"]), doc)
        made = self.converged()
        self.assertNotEqual(made, start)
        self.assertEqual(int(made.split(".")[0]), int(start.split(".")[0]) + 1)
        for n in self.nodes:
            self.assertEqual(info(n)["rules_origin"], "rs3")
            self.assertEqual(metric_value(n.metrics(), "throttlex_rules_version"),
                             int(made.split(".")[0]))
        # The rule is enforced as one limit whichever node a check enters at.
        total = sum(allowed(n, "web", "user-1", 2) for n in self.nodes)
        self.assertEqual(total, 2)
        # A delete reaches everyone too.
        code, out, err = self.ctl(self.nodes[4], "rules", "delete", "web")
        self.assertEqual(code, 0, out + err)
        self.converged()
        for n in self.nodes:
            status, _, body = n.request("GET", "/v1/check?rule=web&key=user-1")
            self.assertEqual(status, 404, body)

    def test_a_reload_on_one_node_publishes_its_file(self):
        self.converged()
        self.nodes[1].write_rules(EDITED)
        self.nodes[1].signal(signal.SIGHUP)
        self.nodes[1].wait_for_log("rules reloaded")
        self.converged()
        for n in self.nodes:
            self.assertEqual(info(n)["rules"], 2, n.node_id)
        self.assertEqual(sum(allowed(n, "api", "k", 2) for n in self.nodes), 7)
        # The other nodes' files are unchanged, yet a reload there that reads what the cluster
        # does not run makes a newer version: the last reload wins, on every node.
        code, out, err = self.ctl(self.nodes[3], "rules", "reload")
        self.assertEqual(code, 0, out + err)
        self.converged()
        for n in self.nodes:
            self.assertEqual(info(n)["rules"], 1, n.node_id)

    def test_a_restarted_node_runs_the_cluster_rules_not_its_file(self):
        code, out, err = self.ctl(self.nodes[0], "rules", "set", "web", "--limit", "4",
                                  "--period", "1h", "--algorithm", "fixed_window")
        self.assertEqual(code, 0, out + err)
        made = self.converged()
        # Back with its own file, which does not have the rule: it takes the cluster's before
        # it reports ready.
        back = self.restart_last(RULES)
        self.assertEqual(info(back)["rules_version"], made)
        status, _, body = back.request("GET", "/v1/check?rule=web&key=fresh")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["limit"], 4)
        wait_for_view(self.nodes)
        self.assertEqual(self.converged(), made)
        self.assertGreaterEqual(metric_value(back.metrics(), "throttlex_rules_adopted_total"), 1)

    def test_a_node_restarted_with_an_edited_file_takes_the_cluster_rules_and_sends_nothing(self):
        # Nothing changed since the start: every node runs its file as loaded (counter 0). The
        # restarted node's edited file orders above or below the cluster's by its digest alone;
        # either way it must take the cluster's, and the cluster must keep its own.
        start = self.converged()
        self.assertTrue(start.startswith("0."), start)
        back = self.restart_last(EDITED)
        self.assertEqual(info(back)["rules_version"], start)
        self.assertEqual(info(back)["rules"], 1)
        wait_for_view(self.nodes)
        # After its join (one call to each of the 4 others) and two rounds of its own, the others
        # still run their version and took none.
        wait_until(lambda: metric_value(back.metrics(), "throttlex_rules_sync_calls_total") >= 6,
                   timeout=10, what="the restarted node's sync rounds")
        self.assertEqual(self.converged(), start)
        for n in self.nodes[:4]:
            self.assertEqual(metric_value(n.metrics(), "throttlex_rules_adopted_total"), 0,
                             n.node_id)
        for n in self.nodes:
            self.assertEqual(info(n)["rules"], 1, n.node_id)


if __name__ == "__main__":
    unittest.main()
