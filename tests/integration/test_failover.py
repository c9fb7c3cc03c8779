"""The client library against real daemons: when a node is killed (kill -9) under load, checks
fail over to the next listed node and none is lost or answered by the fallback policy."""
import json
import signal
import subprocess
import unittest

from harness import Node, run_tool, tool_path


class ClientFailoverTest(unittest.TestCase):
    def test_kill_9_of_a_node_under_load_loses_no_check(self):
        a, b = Node(), Node()
        try:
            bench = subprocess.Popen(
                [str(tool_path("throttlex-bench")), "--node", a.rpc_address, "--node", b.rpc_address,
                 "--connections", "2", "--concurrency", "8", "--keys", "1000",
                 "--duration", "3s", "--warmup", "0", "--deadline", "1s",
                 "--on-unavailable", "error", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # The first progress line means load is flowing through node a: kill it then.
            first = bench.stderr.readline()
            self.assertIn("checks/s", first)
            a.proc.send_signal(signal.SIGKILL)
            out, err = bench.communicate(timeout=30)
            self.assertEqual(bench.returncode, 0, err)
            report = json.loads(out)
            self.assertGreater(report["checks"], 1000)
            self.assertEqual(report["errors"], 0, report["first_error"])
            self.assertEqual(report["fallbacks"], 0)
            # The node that stayed answered the checks after the kill.
            code, out, _ = run_tool("throttlectl", "--node", b.rpc_address, "-o", "json", "status")
            self.assertEqual(code, 0)
            self.assertGreater(json.loads(out)["keys"], 0)
        finally:
            a.kill()
            b.stop()

    def test_throttlectl_fails_over_to_the_next_node(self):
        a, b = Node(), Node()
        try:
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            code, out, err = run_tool("throttlectl", "--node", a.rpc_address, "--node",
                                      b.rpc_address, "-o", "json", "check", "k", "--limit", "1",
                                      "--period", "1m")
            self.assertEqual(code, 0, err)
            self.assertTrue(json.loads(out)["allowed"])
            code, _, _ = run_tool("throttlectl", "--node", a.rpc_address, "--node", b.rpc_address,
                                  "check", "k", "--limit", "1", "--period", "1m")
            self.assertEqual(code, 1)
        finally:
            a.kill()
            b.stop()


if __name__ == "__main__":
    unittest.main()
