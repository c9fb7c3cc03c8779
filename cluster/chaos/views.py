#!/usr/bin/env python3
"""Cluster views for the chaos scenarios (lib.sh): what nodes report in GET /v1/cluster.

One process polls every node, so a wait costs one interpreter start, not one per node and
round (that matters on two shared cores under load). Standard library only.

    views.py alive ADDR...                      alive count each node reports (-1: no answer)
    views.py state MEMBER ADDR...               the state each node reports for MEMBER
    views.py members STATE ADDR                 members ADDR reports in STATE, space-separated
    views.py wait-state TIMEOUT MEMBER STATES ADDR...
        until every ADDR reports MEMBER in one of STATES (comma-separated): prints the seconds
        it took; exit 1 after TIMEOUT seconds
    views.py wait-alive TIMEOUT COUNT STABLE ADDR...
        until every ADDR reports COUNT members alive, and has gone on doing so for STABLE s
        (a thawed node answers at once with the view it had when it froze): prints the seconds
        until the first poll of that stable run; exit 1 when none began within TIMEOUT s

ADDR is host:port of a node's HTTP API. Waits count from $VIEWS_T0 (epoch seconds) if set. Every request has a 1 s timeout; polls are 0.1 s apart.
"""
import json
import os
import sys
import time
import urllib.request

POLL_S = 0.1


def view(addr):
    try:
        with urllib.request.urlopen(f"http://{addr}/v1/cluster", timeout=1) as r:
            return json.load(r)
    except Exception:  # a node that does not answer (dead, frozen, cut off) is a value here
        return None


def alive(addr):
    v = view(addr)
    return -1 if v is None else v["alive"]


def state(addr, member):
    v = view(addr)
    if v is None:
        return "unreachable"
    return next((m["state"] for m in v["members"] if m["node_id"] == member), "none")


def wait(timeout, done, stable=0.0):
    """Polls until done() has held for `stable` seconds in a row; prints when that run began,
    in seconds since $VIEWS_T0 (epoch seconds: when the caller began waiting; an interpreter
    start can take a second on loaded cores) or since this call."""
    start = float(os.environ.get("VIEWS_T0") or time.time())
    since = None
    while True:
        t = time.time()
        if done():
            since = t if since is None else since
            if t - since >= stable:
                print("%.2f" % (since - start))
                return 0
        else:
            since = None
        if t - start >= timeout + stable:
            return 1
        time.sleep(POLL_S)


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "alive":
        print(" ".join(str(alive(a)) for a in args))
    elif cmd == "state":
        print(" ".join(state(a, args[0]) for a in args[1:]))
    elif cmd == "members":
        v = view(args[1])
        print("" if v is None else " ".join(m["node_id"] for m in v["members"] if m["state"] == args[0]))
    elif cmd == "wait-state":
        timeout, member, states, addrs = float(args[0]), args[1], args[2].split(","), args[3:]
        return wait(timeout, lambda: all(state(a, member) in states for a in addrs))
    elif cmd == "wait-alive":
        timeout, count, stable, addrs = float(args[0]), int(args[1]), float(args[2]), args[3:]
        return wait(timeout, lambda: all(alive(a) == count for a in addrs), stable)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
