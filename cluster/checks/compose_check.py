"""docker-compose.yml, as `docker-compose config` resolved it (Compose v1 or v2 output), together
with the Prometheus and Grafana files it mounts: five nodes wired to each other, to Redis and to
the rules file; flags the binaries know; published ports; scrape targets; Grafana provisioning."""
import pathlib
import re

import yaml

from common import CLUSTER, ROOT, flag_values, flags_used

NODE = re.compile(r"^node-\d+$")
EXPECTED_PORTS = {  # service -> host port -> container port (from the README's table)
    "node-1": {8080: 8080, 7400: 7400, 9464: 9464},
    "node-5": {8084: 8080, 7404: 7400, 9468: 9464},
    "grafana": {3000: 3000},
    "prometheus": {9090: 9090},
}


def ports_of(service):
    """[(host port, container port)] from short ('127.0.0.1:8080:8080/tcp') or long syntax."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((int(p["published"]), int(p["target"])))
        else:
            parts = str(p).split("/")[0].split(":")
            out.append((int(parts[-2]), int(parts[-1])))
    return out


def mounts_of(service):
    """{container path: host path} of the bind mounts, short or long syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = v.get("source", "")
        else:
            parts = str(v).split(":")
            out[parts[1]] = parts[0]
    return out


def as_list(x):
    return [] if x is None else [x] if isinstance(x, str) else list(x)


def check_nodes(problems, services, daemon_flags):
    nodes = sorted((n for n in services if NODE.match(n)), key=lambda n: int(n.split("-")[1]))
    problems.check(nodes == [f"node-{i}" for i in range(1, 6)], "compose", f"want services node-1..node-5, found {nodes}")
    for name in nodes:
        svc, at = services[name], f"compose service {name}"
        problems.check(svc.get("build", {}).get("dockerfile", "").endswith("cluster/Dockerfile"),
                       at, "is not built from cluster/Dockerfile")
        problems.check(not svc.get("entrypoint"), at, "must keep the image's entrypoint (throttlexd)")
        args = as_list(svc.get("command"))
        for flag in sorted(flags_used(args) - daemon_flags):
            problems.add(at, f"throttlexd --help does not know {flag}")
        v = {k: vals[-1] for k, vals in flag_values(args).items()}
        problems.check(v.get("--node-id") == name, at, f"--node-id is {v.get('--node-id')!r}, want {name!r}")
        problems.check(v.get("--advertise") == name, at, f"--advertise is {v.get('--advertise')!r}, want {name!r}")
        problems.check(v.get("--bind") == "0.0.0.0", at, "--bind must be 0.0.0.0")
        problems.check("node-1:7946" in v.get("--join", "").split(","), at, "must --join node-1:7946")
        redis = v.get("--redis", "")
        problems.check(redis.split(":")[0] in services and redis.endswith(":6379"), at,
                       f"--redis {redis!r} is not the redis service's port 6379")
        rules = v.get("--rules")
        source = mounts_of(svc).get(rules)
        if problems.check(source, at, f"--rules {rules!r} is not a mounted file"):
            problems.check(pathlib.Path(source).is_file(), at, f"rules file {source} does not exist")
    return nodes


def check_ports(problems, services):
    seen = {}
    for name, svc in services.items():
        for host, container in ports_of(svc):
            problems.check(host not in seen, f"compose service {name}",
                           f"host port {host} is also published by {seen.get(host)}")
            seen[host] = name
    for name, want in EXPECTED_PORTS.items():
        got = dict(ports_of(services.get(name, {})))
        for host, container in want.items():
            problems.check(got.get(host) == container, f"compose service {name}",
                           f"must publish host port {host} -> {container}, has {got}")


def check_tools(problems, services, daemon_flags, bench_flags):
    extra = services.get("node-extra")
    if problems.check(extra, "compose", "service node-extra (profile scale) is missing"):
        for flag in sorted(flags_used(as_list(extra.get("command"))) - daemon_flags):
            problems.add("compose service node-extra", f"throttlexd --help does not know {flag}")
    lg = services.get("loadgen")
    if problems.check(lg, "compose", "service loadgen is missing"):
        at = "compose service loadgen"
        problems.check("bench" in lg.get("profiles", []), at, "must be in profile 'bench'")
        problems.check(as_list(lg.get("entrypoint"))[:1] == ["throttlex-bench"], at, "must run throttlex-bench")
        args = as_list(lg.get("command"))
        for flag in sorted(flags_used(args) - bench_flags):
            problems.add(at, f"throttlex-bench --help does not know {flag}")
        for node in flag_values(args).get("--node", []):
            host, _, port = node.partition(":")
            problems.check(NODE.match(host) and host in services and port == "7400", at,
                           f"--node {node!r} is not a node service's RPC port")


def check_monitoring(problems, services, nodes):
    prom_mounts = mounts_of(services.get("prometheus", {}))
    prom_file = prom_mounts.get("/etc/prometheus/prometheus.yml")
    at = "compose service prometheus"
    if problems.check(prom_file and pathlib.Path(prom_file).is_file(), at, "prometheus.yml is not mounted"):
        config = yaml.safe_load(pathlib.Path(prom_file).read_text())
        job = next((j for j in config["scrape_configs"] if j["job_name"] == "throttlex"), {})
        targets = {t for sc in job.get("static_configs", []) for t in sc.get("targets", [])}
        want = {f"{n}:9464" for n in nodes}
        problems.check(targets == want, prom_file, f"job throttlex scrapes {sorted(targets)}, want {sorted(want)}")

    g = mounts_of(services.get("grafana", {}))
    at = "compose service grafana"
    prov = g.get("/etc/grafana/provisioning")
    problems.check(prov and pathlib.Path(prov) == CLUSTER / "grafana/provisioning", at,
                   "must mount cluster/grafana/provisioning at /etc/grafana/provisioning")
    providers = yaml.safe_load((CLUSTER / "grafana/provisioning/dashboards/throttlex.yml").read_text())
    for p in providers["providers"]:
        source = g.get(p["options"]["path"])
        problems.check(source and pathlib.Path(source) == CLUSTER / "grafana/dashboards", at,
                       f"dashboard provider path {p['options']['path']} is not cluster/grafana/dashboards")
    for ds in yaml.safe_load((CLUSTER / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]:
        problems.check(ds["url"] == "http://prometheus:9090", at, f"datasource url {ds['url']} is not the prometheus service")


def check(problems, resolved_config_text, daemon_flags, bench_flags):
    services = yaml.safe_load(resolved_config_text)["services"]
    nodes = check_nodes(problems, services, daemon_flags)
    check_ports(problems, services)
    check_tools(problems, services, daemon_flags, bench_flags)
    check_monitoring(problems, services, nodes)
    problems.check("redis" in services, "compose", "service redis is missing")
    return services
