"""The Grafana dashboard: valid JSON, every panel on the provisioned datasource, and every PromQL
expression selecting only metric names that exist: in docs/metrics.md's table, in what a real
throttlexd exports, or in cluster/grafana/pending-metrics.txt (named in the panel's description).
"""
import json
import re

import yaml

from common import CLUSTER, ROOT, expand_family, exposition_names, promql_metric_names

DATASOURCES = CLUSTER / "grafana/provisioning/datasources/prometheus.yml"
PENDING = CLUSTER / "grafana/pending-metrics.txt"
METRICS_DOC = ROOT / "docs/metrics.md"


def documented_names():
    """Names from the table in docs/metrics.md: rows '| `name` | type | ...'."""
    names = set()
    for m in re.finditer(r"^\|\s*`([A-Za-z_:][\w:]*)`\s*\|\s*([a-z]+)", METRICS_DOC.read_text(), re.M):
        names |= expand_family(m.group(1), m.group(2))
    return names


def pending_families():
    lines = (line.split("#", 1)[0].split() for line in PENDING.read_text().splitlines())
    return {words[0] for words in lines if words}


def balanced(expr):
    """(), [] and {} nest properly outside string literals (a cheap syntax check: no promtool here)."""
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def panels_of(dashboard):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check(problems, dashboard_path, exported_text):
    where = str(dashboard_path.relative_to(ROOT)) if dashboard_path.is_relative_to(ROOT) else str(dashboard_path)
    try:
        dashboard = json.loads(dashboard_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        problems.add(where, f"does not parse as JSON: {e}")
        return
    uids = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    documented = documented_names()
    exported = exposition_names(exported_text)
    pending = pending_families()
    pending_names = set().union(*(expand_family(p, "histogram") for p in pending))
    known = documented | exported | pending_names
    problems.check(len(documented) > 10, str(METRICS_DOC), "found too few metrics in the table")
    problems.check(len(exported) > 10, "throttlexd /metrics", "found too few metric names")

    panels = list(panels_of(dashboard))
    problems.check(panels, where, "has no panels")
    ids = [p.get("id") for p in panels]
    problems.check(len(ids) == len(set(ids)), where, f"panel ids are not unique: {ids}")
    exprs = 0
    for panel in panels:
        if panel.get("type") == "row":
            continue
        at = f"{where}: panel {panel.get('id')} {panel.get('title')!r}"
        ds = (panel.get("datasource") or {}).get("uid")
        problems.check(ds in uids, at, f"datasource uid {ds!r} is not provisioned ({sorted(uids)})")
        problems.check(panel.get("targets"), at, "has no queries")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            exprs += 1
            tds = (target.get("datasource") or {}).get("uid", ds)
            problems.check(tds in uids, at, f"query {target.get('refId')}: datasource uid {tds!r} is not provisioned")
            problems.check(balanced(expr), at, f"unbalanced brackets in {expr!r}")
            names = promql_metric_names(expr)
            if not problems.check(names, at, f"no metric name found in {expr!r}"):
                continue
            for name in sorted(names - known):
                problems.add(at, f"unknown metric {name!r} (not in docs/metrics.md, not exported "
                                 f"by throttlexd, not in {PENDING.name}) in {expr!r}")
            for name in sorted(names & (pending_names - documented - exported)):
                family = next(p for p in pending if name in expand_family(p, "histogram"))
                problems.check(family in panel.get("description", ""), at,
                               f"uses {family!r}, which is not exposed yet: its description must say so")
    problems.check(exprs > 0, where, "no PromQL found")

    for family in sorted(pending):
        if expand_family(family, "histogram") & (exported | documented):
            print(f"note: {family} is exported or documented now: remove it from {PENDING.relative_to(ROOT)}")
    for name in sorted(documented - exported):
        if not name.endswith(("_bucket", "_sum", "_count")):
            print(f"note: {name} is in docs/metrics.md but a lone throttlexd does not export it")
