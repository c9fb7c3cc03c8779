"""Runs the checks of cluster/validate.sh that need Python (see that script for the list).

  validate.py --bin BUILD/bin --compose-config FILE [--dashboard FILE] [--only dashboard]

--compose-config is the output of `docker-compose config` (the resolved compose file).
Exit status 0 when everything holds, 1 with every problem listed otherwise.
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import yaml

import compose_check
import dashboard_check
import dockerfile_check
import k8s_check
from common import CLUSTER, Problems, RunningNode, flag_values, help_flags, temp_file

EXAMPLE_RULES = CLUSTER.parent / "docs/examples/rules.yaml"


def rule_count(text):
    return len((yaml.safe_load(text) or {}).get("rules", []))


def run_compose_node(problems, bin_dir, services):
    """node-1's command line, with the host path of its rules file, run by a real throttlexd.
    Returns what it exports on /metrics (empty when it did not start)."""
    svc = services.get("node-1", {})
    args = [str(a) for a in svc.get("command", [])]
    rules = flag_values(args).get("--rules", [""])[-1]
    source = compose_check.mounts_of(svc).get(rules, str(EXAMPLE_RULES))
    args = [f"--rules={source}" if a.startswith("--rules") else a for a in args]
    # Keys and certificates live in the volume keygen fills: here scripts/cluster-init.sh makes
    # them in a directory of our own, and the paths are mapped there.
    for flag in ("--gossip-keyring", "--tls-ca", "--tls-cert", "--tls-key"):
        problems.check(any(a.startswith(flag + "=/etc/throttlex/keys/") for a in args),
                       "compose node-1", f"no {flag} in the keys volume: the default cluster must "
                       "run secured")
    with tempfile.TemporaryDirectory(prefix="throttlex-validate-keys-") as keys:
        subprocess.run([str(CLUSTER.parent / "scripts/cluster-init.sh"), keys, "5"], check=True,
                       capture_output=True)
        shutil.copy(os.path.join(keys, "keyring"), os.path.join(keys, "node-1.keyring"))
        args = [a.replace("=/etc/throttlex/keys/", f"={keys}/") for a in args]
        return run_node(problems, bin_dir, args, source)


def run_node(problems, bin_dir, args, source):
    try:
        with RunningNode(bin_dir, args) as node:
            want = rule_count(pathlib.Path(source).read_text())
            problems.check(node.rules == want, "compose node-1", f"throttlexd loaded {node.rules} rules, the file has {want}")
            problems.check(node.get(node.http_port, "/readyz")[0] == 200, "compose node-1", "/readyz is not 200")
            return node.metrics()
    except RuntimeError as e:
        problems.add("compose node-1", f"its command line does not start throttlexd: {e}")
        return ""


def run_k8s_node(problems, bin_dir, args, rules_text):
    """The StatefulSet's arguments (pod throttlex-0 in namespace default) with its ConfigMap's
    rules and keys from scripts/cluster-init.sh (the Secret's files, as docs say to make them),
    run by a real throttlexd."""
    with temp_file(rules_text, ".yaml") as rules, \
            tempfile.TemporaryDirectory(prefix="throttlex-validate-k8s-") as keys:
        subprocess.run([str(CLUSTER.parent / "scripts/cluster-init.sh"), keys, "1"], check=True,
                       capture_output=True)
        values = flag_values(args)
        keyring = values.get("--gossip-keyring", [""])[-1]
        secret_dir = os.path.dirname(values.get("--tls-ca", [""])[-1])
        shutil.copy(os.path.join(keys, "keyring"), os.path.join(keys, "keyring.copy"))
        args = [f"--rules={rules.name}" if a.startswith("--rules") else a for a in args]
        args = [a.replace(f"={keyring}", f"={keys}/keyring.copy") if keyring else a for a in args]
        args = [a.replace(f"={secret_dir}/", f"={keys}/") if secret_dir else a for a in args]
        try:
            with RunningNode(bin_dir, args) as node:
                want = rule_count(rules_text)
                problems.check(node.rules == want and want > 0, "k8s ConfigMap",
                               f"throttlexd loaded {node.rules} rules, the ConfigMap has {want}")
        except RuntimeError as e:
            problems.add("k8s StatefulSet", f"its arguments do not start throttlexd: {e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--compose-config", required=True)
    ap.add_argument("--dashboard", default=str(CLUSTER / "grafana/dashboards/throttlex.json"))
    ap.add_argument("--only", choices=["dashboard"])
    a = ap.parse_args()
    bin_dir = pathlib.Path(a.bin)
    problems = Problems()
    daemon_flags = help_flags(bin_dir / "throttlexd")
    bench_flags = help_flags(bin_dir / "throttlex-bench")

    services = compose_check.check(problems, pathlib.Path(a.compose_config).read_text(), daemon_flags, bench_flags)
    exported = run_compose_node(problems, bin_dir, services)
    dashboard_check.check(problems, pathlib.Path(a.dashboard), exported)
    if a.only != "dashboard":
        k8s_args, rules_text = k8s_check.check(problems, daemon_flags)
        if k8s_args is not None and rules_text:
            run_k8s_node(problems, bin_dir, k8s_args, rules_text)
        dockerfile_check.check(problems, bin_dir)

    for p in problems.items:
        print(f"FAIL {p}")
    print(f"validate.py: {'ok' if not problems.items else f'{len(problems.items)} problem(s)'}"
          f"{' (dashboard only)' if a.only else ''}")
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())
