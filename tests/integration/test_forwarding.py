"""Checks forwarded to the key's owner between real throttlexd processes.

Every node answers for every key: it decides keys it owns ("route": "local"), forwards the others
to their owner over RPC ("forwarded"), and decides alone with a share of the limit when the owner
cannot be reached ("degraded"). Three properties:

1. A cluster answers exactly like one standalone node (the oracle), whichever node is asked, for
   single checks and batches, batches repeating a key included.
2. kill -9 of a member under load: no error reaches a client, the survivors agree it is dead, and
   its keys get a new owner. How many answers were degraded meanwhile is printed.
3. The owner `throttlectl owner` names is the node that answers "local"; every other node forwards.

Set THROTTLEX_SEED to replay a run's random choices (each test prints its seed).
"""
import http.client
import json
import os
import random
import re
import signal
import sys
import threading
import time
import unittest
import urllib.parse

from harness import (Node, cluster_view, run_tool, start_cluster, unique_cluster_name,
                     wait_until)

ALGORITHMS = ("token_bucket", "leaky_bucket", "gcra", "fixed_window", "sliding_window")
ROUTES = ("local", "forwarded", "degraded")
DAY_MS = 86_400_000
DEATH_TIMEOUT = 30.0


def seeded_rng(test_name):
    seed = int(os.environ.get("THROTTLEX_SEED", random.randrange(1 << 32)))
    print(f"\n{test_name}: THROTTLEX_SEED={seed}", file=sys.stderr)
    return random.Random(seed)


def post_checks(node, checks):
    """One POST /v1/check batch; returns the results, in request order."""
    status, _, body = node.request("POST", "/v1/check", body=json.dumps({"checks": checks}),
                                   headers={"Content-Type": "application/json"})
    assert status == 200, f"{node.node_id}: {status} {body}"
    results = json.loads(body)["results"]
    assert len(results) == len(checks), body
    return results


def check_path(check):
    return "/v1/check?" + urllib.parse.urlencode(check, quote_via=urllib.parse.quote)


def get_check(node, check):
    """One GET /v1/check; returns (HTTP status, result)."""
    status, _, body = node.request("GET", check_path(check))
    assert status in (200, 429), f"{node.node_id}: {status} {body}"
    return status, json.loads(body)


def route_of(result):
    assert "error" not in result, f"the check failed: {result}"
    assert "route" in result, f"no \"route\" in the answer (is forwarding built?): {result}"
    assert result["route"] in ROUTES, result
    return result["route"]


def window_period_days(margin_ms=3_600_000):
    """The longest period (in days, at most 365) whose current epoch-aligned window lasts at least
    `margin_ms` more, so no window boundary passes during the test (windows start at multiples of
    the period since the Unix epoch)."""
    now_ms = int(time.time() * 1000)
    for days in range(365, 300, -1):
        period = days * DAY_MS
        if period - now_ms % period > margin_ms:
            return days
    raise AssertionError("no long period without a window boundary within the margin")


def owner_of(node, check):
    """The owner `throttlectl owner` reports for an inline-limit check, asked through `node`."""
    code, out, err = run_tool("throttlectl", "--node", node.rpc_address, "-o", "json", "owner",
                              check["key"], "--limit", str(check["limit"]), "--period",
                              str(check["period"]), "--algorithm", check["algorithm"])
    assert code == 0, err
    return json.loads(out)["owner"]


class ExactnessTest(unittest.TestCase):
    """Five clustered nodes answer exactly what one standalone node answers."""

    SPECS = 300     # distinct limits: (key, algorithm) with a fixed limit
    BATCHES = 60    # sequential POST batches ...
    BATCH = 100     # ... of this many checks, each for a different limit
    SINGLE = 300    # then single GET checks

    def setUp(self):
        self.rng = seeded_rng(self.id())
        self.nodes = start_cluster(5, "x")
        self.addCleanup(lambda: [n.kill() for n in self.nodes])
        self.oracle = Node("--node-id", "oracle", "--gossip-preset", "local",
                           "--cluster-name", unique_cluster_name("oracle"))
        self.addCleanup(self.oracle.kill)

    def make_specs(self):
        """Limits that no time passing during the test can change: windows that do not end,
        buckets refilling one unit in at least 7 days. Some keys are shared by several algorithms
        (different limits), some need escaping."""
        days = window_period_days()
        names = [f"user:{i}" for i in range(200)] + ["a b/c?d=e&f", "ключ:7", "100%", "x" * 300]
        specs = set()
        while len(specs) < self.SPECS:
            specs.add((self.rng.choice(names), self.rng.choice(ALGORITHMS)))
        return [{"key": key, "algorithm": algorithm, "limit": self.rng.randint(1, 50),
                 "period": f"{days}d"} for key, algorithm in sorted(specs)]

    def send_batch(self, batch, where, routes, mismatches):
        """Sends `batch` to a random cluster node and to the oracle; counts the cluster's routes and
        records every answer that differs from the oracle's."""
        node = self.rng.choice(self.nodes)
        got = post_checks(node, batch)
        want = post_checks(self.oracle, batch)
        for check, g, w in zip(batch, got, want):
            routes[route_of(g)] += 1
            self.assertEqual(route_of(w), "local", w)
            self.compare(f"{where} via {node.node_id}", check, g, w, mismatches)

    def compare(self, where, check, got, want, mismatches):
        if (got["allowed"], got["remaining"]) != (want["allowed"], want["remaining"]):
            mismatches.append(f"{where} {check}: cluster {got} oracle {want}")

    def assert_exact(self, total, routes, mismatches):
        print(f"{total} checks, routes {routes}, {len(mismatches)} mismatches", file=sys.stderr)
        self.assertEqual(len(mismatches), 0, f"{len(mismatches)} of {total} answers differ from "
                         "the oracle; the first:\n" + "\n".join(mismatches[:10]))
        self.assertEqual(routes["degraded"], 0, routes)
        # A random node owns a random key with probability 1/5: most answers were forwarded.
        self.assertGreater(routes["forwarded"], total // 2, routes)
        self.assertGreater(routes["local"], total // 20, routes)

    def test_every_node_answers_like_a_single_node(self):
        specs = self.make_specs()
        routes = {r: 0 for r in ROUTES}
        mismatches = []
        # Batches one after another, so a key's checks reach the cluster in the oracle's order;
        # within a batch every check is for a different limit.
        for b in range(self.BATCHES):
            batch = [dict(spec, hits=self.rng.randint(0, 3))
                     for spec in self.rng.sample(specs, self.BATCH)]
            self.send_batch(batch, f"batch {b}", routes, mismatches)
        for i in range(self.SINGLE):
            check = dict(self.rng.choice(specs), hits=self.rng.randint(0, 3))
            node = self.rng.choice(self.nodes)
            status, g = get_check(node, check)
            want_status, w = get_check(self.oracle, check)
            self.assertEqual(status, 200 if g["allowed"] else 429, g)
            self.assertEqual(want_status, 200 if w["allowed"] else 429, w)
            routes[route_of(g)] += 1
            self.compare(f"GET {i} via {node.node_id}", check, g, w, mismatches)
        self.assert_exact(self.BATCHES * self.BATCH + self.SINGLE, routes, mismatches)

    def test_a_batch_repeating_keys_is_decided_in_request_order(self):
        # One node decides a batch in request order; split among owners and forwarded, each
        # key's checks must still be decided in that order.
        specs = self.make_specs()
        routes = {r: 0 for r in ROUTES}
        mismatches = []
        for b in range(20):
            few = self.rng.sample(specs, 12)
            batch = [dict(self.rng.choice(few), hits=self.rng.randint(0, 3)) for _ in range(100)]
            self.send_batch(batch, f"batch {b}", routes, mismatches)
        self.assert_exact(20 * 100, routes, mismatches)


class OwnerTest(unittest.TestCase):
    """The node `throttlectl owner` names decides a key itself; every other node forwards it."""

    def test_the_owner_answers_local_and_the_others_forward(self):
        nodes = start_cluster(5, "o")
        try:
            by_id = {n.node_id: n for n in nodes}
            seen_owners = set()
            for i in range(25):
                check = {"key": f"owned:{i}", "limit": 10, "period": "1h",
                         "algorithm": ALGORITHMS[i % len(ALGORITHMS)], "hits": 0}
                owners = {owner_of(n, check) for n in nodes}
                self.assertEqual(len(owners), 1, f"{check['key']}: nodes disagree: {owners}")
                owner = owners.pop()
                self.assertIn(owner, by_id)
                seen_owners.add(owner)
                for n in nodes:
                    _, result = get_check(n, check)
                    want = "local" if n.node_id == owner else "forwarded"
                    self.assertEqual(route_of(result), want,
                                     f"{check['key']} (owner {owner}) via {n.node_id}: {result}")
            self.assertGreater(len(seen_owners), 1, "25 keys with one owner: the ring is skewed")
        finally:
            for n in nodes:
                n.kill()


class RefundTest(unittest.TestCase):
    """Negative hits give units back at the key's owner, whichever node they enter."""

    def test_a_refund_entering_anywhere_reaches_the_owner_and_is_capped(self):
        nodes = start_cluster(3, "r")
        try:
            check = {"key": "job:refund", "limit": 10, "period": "1h", "algorithm": "token_bucket"}
            owner = owner_of(nodes[0], check)
            others = [n for n in nodes if n.node_id != owner]
            by_id = {n.node_id: n for n in nodes}
            status, result = get_check(others[0], {**check, "hits": 10})
            self.assertEqual((status, route_of(result)), (200, "forwarded"))
            status, result = get_check(others[1], {**check, "hits": 1})
            self.assertEqual(status, 429)
            status, result = get_check(others[1], {**check, "hits": -4})
            self.assertEqual((status, route_of(result), result["remaining"]), (200, "forwarded", 4))
            _, result = get_check(by_id[owner], {**check, "hits": 0})
            self.assertEqual((route_of(result), result["remaining"]), ("local", 4))
            # Over RPC (throttlectl --hits -100): capped at the limit.
            code, out, err = run_tool("throttlectl", "--node", others[0].rpc_address, "-o", "json",
                                      "check", check["key"], "--limit", "10", "--period", "1h",
                                      "--hits", "-100")
            self.assertEqual(code, 0, err)
            self.assertEqual(json.loads(out)["remaining"], 10)
            status, result = get_check(by_id[owner], {**check, "hits": 10})
            self.assertEqual(status, 200)
        finally:
            for n in nodes:
                n.kill()


class AtomicTest(unittest.TestCase):
    """All-or-nothing batches whose keys live on different owners, under concurrent load."""

    GLOBAL = {"key": "atomic:global", "limit": 40, "period": "24h", "algorithm": "token_bucket"}
    USER_LIMIT = 1000

    def post_atomic(self, node, user):
        body = {"atomic": True, "checks": [
            {"key": user, "limit": self.USER_LIMIT, "period": "24h"}, self.GLOBAL]}
        status, _, text = node.request("POST", "/v1/check", body=json.dumps(body),
                                       headers={"Content-Type": "application/json"})
        self.assertIn(status, (200, 429), text)
        answer = json.loads(text)
        self.assertEqual(answer["allowed"], status == 200, text)
        return answer

    def test_a_global_limit_is_never_exceeded_and_denied_batches_give_everything_back(self):
        rng = seeded_rng("atomic")
        nodes = start_cluster(3, "a")
        try:
            global_owner = owner_of(nodes[0], self.GLOBAL)
            users = []
            for i in range(40):
                user = f"atomic:user:{i}"
                probe = {"key": user, "limit": self.USER_LIMIT, "period": "24h",
                         "algorithm": "token_bucket"}
                if owner_of(nodes[0], probe) != global_owner:
                    users.append(user)
                if len(users) == 8:
                    break
            self.assertEqual(len(users), 8, "no 8 user keys owned apart from the global key")
            allowed = [0] * 8
            failures = []

            def load(t):
                try:
                    for _ in range(15):
                        answer = self.post_atomic(rng.choice(nodes), users[t])
                        if answer["allowed"]:
                            allowed[t] += 1
                        else:
                            self.assertEqual(answer["denied_by"], 1, answer)
                            self.assertTrue(answer["results"][0].get("refunded"), answer)
                except BaseException as e:  # noqa: BLE001 - reported below
                    failures.append(e)

            threads = [threading.Thread(target=load, args=(t,)) for t in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=120)
            self.assertEqual(failures, [])
            under_load = sum(allowed)
            self.assertLessEqual(under_load, 40)
            # Drain what is left, one batch at a time: exactly the global limit in all.
            drained = 0
            while self.post_atomic(nodes[drained % 3], users[drained % 8])["allowed"]:
                allowed[drained % 8] += 1
                drained += 1
                self.assertLessEqual(drained, 40)
            print(f"atomic: {under_load} allowed under load (8 threads x 15 batches), {drained} "
                  "in the sequential drain", file=sys.stderr)
            self.assertEqual(sum(allowed), 40, f"{under_load} under load, {drained} after")
            # Every user spent exactly what its allowed batches spent: denied ones gave it back.
            for t, user in enumerate(users):
                _, result = get_check(nodes[t % 3], {"key": user, "limit": self.USER_LIMIT,
                                                     "period": "24h", "hits": 0})
                self.assertEqual(self.USER_LIMIT - result["remaining"], allowed[t], user)
        finally:
            for n in nodes:
                n.kill()


class ClusterRulesTest(unittest.TestCase):
    """A rule set through one node is set on every member: each owner decides its keys with it."""

    def test_rules_set_through_one_node_apply_on_every_owner(self):
        nodes = start_cluster(3, "r")
        try:
            code, out, err = run_tool("throttlectl", "--node", nodes[1].rpc_address, "-o", "json",
                                      "rules", "set", "web", "--limit", "2", "--period", "1h")
            self.assertEqual(code, 0, err)
            doc = json.loads(out)
            self.assertEqual(sorted(n["node_id"] for n in doc["nodes"] if n["ok"]),
                             sorted(n.node_id for n in nodes))
            # Keys owned by every node, checked through nodes[0]: 2 allowed, then limited.
            owners = set()
            for i in range(12):
                check = {"key": f"rule-key:{i}", "rule": "web"}
                code, out, err = run_tool("throttlectl", "--node", nodes[0].rpc_address, "-o",
                                          "json", "owner", check["key"], "--rule", "web")
                self.assertEqual(code, 0, err)
                owners.add(json.loads(out)["owner"])
                answers = [get_check(nodes[0], check) for _ in range(3)]
                self.assertEqual([status for status, _ in answers], [200, 200, 429], answers)
            self.assertEqual(len(owners), 3, f"12 keys did not reach every owner: {owners}")
            code, out, err = run_tool("throttlectl", "--node", nodes[2].rpc_address, "-o", "json",
                                      "rules", "delete", "web")
            self.assertEqual((code, json.loads(out)["deleted"]), (0, True), err)
            for n in nodes:
                status, _, _ = n.request("GET", check_path({"key": "rule-key:0", "rule": "web"}))
                self.assertEqual(status, 404)
        finally:
            for n in nodes:
                n.kill()


class LoadRecorder:
    """Bounded load: `threads` threads send GET checks to `targets` until stopped, until
    `max_requests` in all, or until `max_seconds`. Records (start time, end time, status, route or
    error text), times from time.monotonic()."""

    def __init__(self, targets, pick_check, seed, threads=3, max_requests=200_000,
                 max_seconds=90.0):
        self.targets = targets
        self.pick_check = pick_check
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records = []  # (started, finished, status or None, route or error text)
        self.threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def count(self):
        with self.lock:
            return len(self.records)

    def _run(self, seed):
        rng = random.Random(seed)
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if len(self.records) >= self.max_requests:
                    return
            node = rng.choice(self.targets)
            check = self.pick_check(rng)
            started = time.monotonic()
            try:
                status, _, body = node.request("GET", check_path(check))
                try:
                    outcome = (json.loads(body).get("route", "no route")
                               if status in (200, 429) else body)
                except ValueError:
                    outcome = f"bad JSON: {body[:200]}"
            except (OSError, http.client.HTTPException) as e:
                status, outcome = None, f"{node.node_id}: {type(e).__name__}: {e}"
            with self.lock:
                self.records.append((started, time.monotonic(), status, outcome))

    def finish(self, timeout=30.0):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "load threads did not stop"
        return list(self.records)


class KillUnderLoadTest(unittest.TestCase):
    """kill -9 of a member while the others are under load."""

    def test_a_killed_owner_costs_no_errors_and_its_keys_move(self):
        rng = seeded_rng(self.id())
        nodes = start_cluster(5, "k")
        self.addCleanup(lambda: [n.kill() for n in nodes])
        victim = nodes[2]
        survivors = [n for n in nodes if n is not victim]

        def load_check(i):
            return {"key": f"load:{i}", "limit": 50, "period": "1m", "algorithm": "token_bucket"}

        # The keys the victim owns, as the cluster sees it before the crash (bounded scan).
        victim_keys = []
        for i in range(300):
            if owner_of(survivors[i % 4], load_check(i)) == victim.node_id:
                victim_keys.append(i)
                if len(victim_keys) == 12:
                    break
        self.assertGreaterEqual(len(victim_keys), 5, "the victim owns almost no keys")

        def pick_check(r):
            # Half the load on the victim's keys, so its death is felt; half on any key.
            i = r.choice(victim_keys) if r.random() < 0.5 else r.randrange(500)
            return dict(load_check(i), hits=r.randint(0, 2))

        load = LoadRecorder(survivors, pick_check, seed=rng.randrange(1 << 32))
        try:
            wait_until(lambda: load.count() >= 300, timeout=20, what="load before the crash")
            killed_at = time.monotonic()
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            for n in survivors:
                n.wait_for_log(rf"member {re.escape(victim.node_id)} dead", timeout=DEATH_TIMEOUT)
            converged_at = time.monotonic()
            after = load.count()
            wait_until(lambda: load.count() >= after + 300, timeout=20,
                       what="load after the survivors agreed")
        finally:
            records = load.finish()

        # No client saw an error: every check answered 200 or 429 with a route.
        failures = [r for r in records if r[2] not in (200, 429) or r[3] not in ROUTES]
        self.assertEqual(len(failures), 0, f"{len(failures)} of {len(records)} checks failed; the "
                         "first:\n" + "\n".join(map(str, failures[:10])))
        # Phases: answered before the kill; in flight at some time between the kill and the last
        # survivor's "dead"; sent after it.
        def phase(started, finished):
            if finished < killed_at:
                return "before the kill"
            return "until agreed dead" if started < converged_at else "after"
        summary = {p: {r: 0 for r in ROUTES}
                   for p in ("before the kill", "until agreed dead", "after")}
        for started, finished, _, route in records:
            summary[phase(started, finished)][route] += 1
        print(f"{len(records)} checks under load, routes by phase: {summary}; victim declared "
              f"dead {converged_at - killed_at:.2f}s after the kill", file=sys.stderr)
        self.assertEqual(summary["before the kill"]["degraded"], 0, summary)

        # The survivors agree: four alive, the victim dead (a survivor suspected while the box was
        # loaded gets the time to refute it).
        want = {n.node_id: "alive" for n in survivors}
        want[victim.node_id] = "dead"
        for n in survivors:
            wait_until(lambda: cluster_view(n) == want, timeout=10,
                       what=f"{n.node_id} to see {want}")

        # The victim's keys have a new owner, the same for every survivor, which decides them
        # locally; the others forward to it.
        for i in victim_keys:
            check = dict(load_check(i), hits=0)
            owners = {owner_of(n, check) for n in survivors}
            self.assertEqual(len(owners), 1, f"survivors disagree on {check['key']}: {owners}")
            owner = owners.pop()
            self.assertNotEqual(owner, victim.node_id)
            for n in survivors:
                _, result = get_check(n, check)
                self.assertEqual(route_of(result), "local" if n.node_id == owner else "forwarded",
                                 f"{check['key']} (new owner {owner}) via {n.node_id}: {result}")


if __name__ == "__main__":
    unittest.main()
