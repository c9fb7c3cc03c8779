"""Membership between real throttlexd processes on loopback: nodes join through a seed, a node
killed with -9 is declared dead by the others, a node stopped with SIGTERM is seen as left."""
import json
import signal
import unittest

from harness import Node, cluster_view, run_tool


class MembershipTest(unittest.TestCase):
    def test_join_crash_and_leave_are_seen_by_every_node(self):
        common = ("--gossip-preset", "local", "--cluster-name", "it")
        seed = Node("--node-id", "n1", *common)
        nodes = [seed]
        try:
            for name in ("n2", "n3", "n4"):
                nodes.append(Node("--node-id", name, "--join", seed.gossip_address, *common))
            # Everyone learns about everyone (the log line is the event, no polling).
            for n in nodes:
                for other in nodes:
                    if other is not n:
                        n.wait_for_log(rf"member {other.node_id} joined", timeout=20)
            for n in nodes:
                self.assertEqual(cluster_view(n), {"n1": "alive", "n2": "alive", "n3": "alive",
                                                   "n4": "alive"})
            self.assertIn('throttlex_members{state="alive"} 4', nodes[0].metrics())
            code, out, err = run_tool("throttlectl", "--node", nodes[2].rpc_address, "-o", "json",
                                      "members")
            self.assertEqual(code, 0, err)
            self.assertEqual({m["node_id"]: m["state"] for m in json.loads(out)},
                             {"n1": "alive", "n2": "alive", "n3": "alive", "n4": "alive"})
            # Every node derives the same ring: the owner of a key is the same whoever is asked.
            code, out, err = run_tool("throttlectl", "--node", nodes[0].rpc_address, "-o", "json",
                                      "ring")
            self.assertEqual(code, 0, err)
            ring = json.loads(out)
            self.assertEqual(sorted(m["node_id"] for m in ring["members"]), ["n1", "n2", "n3", "n4"])
            self.assertEqual(sum(m["slots"] for m in ring["members"]), ring["slot_count"])
            owners = set()
            for n in nodes:
                code, out, err = run_tool("throttlectl", "--node", n.rpc_address, "-o", "json",
                                          "owner", "user:42", "--limit", "10", "--period", "1m")
                self.assertEqual(code, 0, err)
                owners.add(json.loads(out)["owner"])
            self.assertEqual(len(owners), 1)
            self.assertIn(owners.pop(), {"n1", "n2", "n3", "n4"})
            code, out, _ = run_tool("throttlectl", "--node", nodes[2].rpc_address, "members")
            self.assertEqual(code, 0)
            self.assertIn("NODE", out)
            self.assertIn(nodes[0].rpc_address, out)

            # kill -9: the survivors declare it dead.
            crashed = nodes[1]
            crashed.proc.send_signal(signal.SIGKILL)
            crashed.proc.wait(10)
            for n in (nodes[0], nodes[2], nodes[3]):
                n.wait_for_log(r"member n2 dead", timeout=30)
                self.assertEqual(cluster_view(n)["n2"], "dead")
            metrics = nodes[0].metrics()
            self.assertIn('throttlex_members{state="alive"} 3', metrics)
            self.assertIn('throttlex_members{state="dead"} 1', metrics)

            # SIGTERM: a voluntary leave, never reported as dead.
            self.assertEqual(nodes[3].stop(), 0)
            for n in (nodes[0], nodes[2]):
                n.wait_for_log(r"member n4 left", timeout=30)
                view = cluster_view(n)
                self.assertEqual(view["n4"], "left")
                self.assertEqual(view["n1"], "alive")
                self.assertEqual(view["n3"], "alive")
        finally:
            for n in nodes:
                n.kill()

    def test_a_node_of_another_cluster_is_not_admitted(self):
        a = Node("--node-id", "a1", "--gossip-preset", "local", "--cluster-name", "alpha")
        b = Node("--node-id", "b1", "--gossip-preset", "local", "--cluster-name", "beta",
                 "--join", a.gossip_address)
        c = Node("--node-id", "a2", "--gossip-preset", "local", "--cluster-name", "alpha",
                 "--join", a.gossip_address)
        try:
            a.wait_for_log(r"member a2 joined", timeout=20)
            self.assertNotIn("b1", cluster_view(a))
            # b's join reached a and was dropped and counted, not admitted.
            self.assertRegex(a.metrics(), r'throttlex_gossip_dropped_total\{reason="foreign_cluster"\} [1-9]')
            self.assertEqual(set(cluster_view(b)), {"b1"})
        finally:
            for n in (a, b, c):
                n.kill()


if __name__ == "__main__":
    unittest.main()
