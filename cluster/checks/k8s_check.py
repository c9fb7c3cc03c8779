"""cluster/k8s: every file parses, the kinds and API versions are the expected ones, selectors
and names fit together, and the container's arguments are flags throttlexd knows. Returns the
StatefulSet's arguments with the downward-API variables filled in, and the rules file, so the
caller can start a real throttlexd with them."""
import re

import yaml

from common import CLUSTER, flag_values, flags_used

K8S = CLUSTER / "k8s"
API = {"StatefulSet": "apps/v1", "Service": "v1", "ConfigMap": "v1",
       "PodDisruptionBudget": "policy/v1", "Kustomization": "kustomize.config.k8s.io/v1beta1"}
EXAMPLE_ENV = {"POD_NAME": "throttlex-0", "POD_NAMESPACE": "default"}


def load(problems):
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        try:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc is not None:
                    docs.append((path.name, doc))
        except yaml.YAMLError as e:
            problems.add(f"k8s/{path.name}", f"does not parse: {e}")
    return docs


def subset(small, big):
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def check_objects(problems, docs):
    by_kind = {}
    for file, doc in docs:
        kind = doc.get("kind")
        problems.check(kind in API, f"k8s/{file}", f"unexpected kind {kind!r}")
        problems.check(doc.get("apiVersion") == API.get(kind), f"k8s/{file}",
                       f"{kind} has apiVersion {doc.get('apiVersion')!r}, want {API.get(kind)!r}")
        by_kind.setdefault(kind, []).append((file, doc))
    for kind, count in [("StatefulSet", 1), ("Service", 2), ("ConfigMap", 1), ("PodDisruptionBudget", 1), ("Kustomization", 1)]:
        problems.check(len(by_kind.get(kind, [])) == count, "k8s", f"want {count} {kind}, found {len(by_kind.get(kind, []))}")
    kust = by_kind.get("Kustomization", [(None, {})])[0][1]
    listed = set(kust.get("resources", []))
    files = {f for f, d in docs if d.get("kind") != "Kustomization"}
    problems.check(listed == files, "k8s/kustomization.yaml", f"resources {sorted(listed)} != the manifests {sorted(files)}")
    return by_kind


def check_wiring(problems, by_kind):
    sts = by_kind["StatefulSet"][0][1]
    at = "k8s StatefulSet"
    spec, pod = sts["spec"], sts["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    problems.check(spec.get("replicas") == 5, at, f"replicas {spec.get('replicas')}, want 5")
    problems.check(subset(spec["selector"].get("matchLabels"), labels), at, "selector does not match the pod labels")
    services = {d["metadata"]["name"]: d for _, d in by_kind["Service"]}
    headless = services.get(spec.get("serviceName"), {}).get("spec", {})
    problems.check(headless.get("clusterIP") == "None", at, f"serviceName {spec.get('serviceName')!r} is not a headless Service")
    problems.check(headless.get("publishNotReadyAddresses") is True, at, "the headless Service must publish not-ready pods (peers gossip before ready)")
    for name, svc in services.items():
        problems.check(subset(svc["spec"].get("selector"), labels), f"k8s Service {name}", "selector does not match the pod labels")
    problems.check(any(s["spec"].get("clusterIP") != "None" for s in services.values()), "k8s", "no client Service (non-headless)")
    pdb = by_kind["PodDisruptionBudget"][0][1]["spec"]
    problems.check(pdb.get("maxUnavailable") == 1, "k8s PodDisruptionBudget", "maxUnavailable must be 1")
    problems.check(subset(pdb.get("selector", {}).get("matchLabels"), labels), "k8s PodDisruptionBudget", "selector does not match the pod labels")
    return sts


def check_container(problems, sts, by_kind, daemon_flags):
    pod = sts["spec"]["template"]
    containers = pod["spec"]["containers"]
    problems.check(len(containers) == 1, "k8s StatefulSet", "want one container")
    c = containers[0]
    at = f"k8s container {c.get('name')}"
    args = [str(a) for a in c.get("args", [])]
    problems.check(not c.get("command"), at, "must keep the image's entrypoint (throttlexd)")
    for flag in sorted(flags_used(args) - daemon_flags):
        problems.add(at, f"throttlexd --help does not know {flag}")
    env = {e["name"]: e for e in c.get("env", [])}
    pod_name = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    problems.check(pod_name == "metadata.name", at, "env POD_NAME must come from the downward API (metadata.name)")
    for ref in sorted({r for a in args for r in re.findall(r"\$\((\w+)\)", a)} - env.keys()):
        problems.add(at, f"args use $({ref}), which is not in env")
    v = {k: vals[-1] for k, vals in flag_values(args).items()}
    problems.check(v.get("--node-id") == "$(POD_NAME)", at, "--node-id must be $(POD_NAME)")
    ports = {p["name"]: p for p in c.get("ports", [])}
    metrics_port = int(v.get("--metrics-port", 9464))
    http_port = int(v.get("--http-port", 8080))
    problems.check(ports.get("metrics", {}).get("containerPort") == metrics_port, at, "port 'metrics' is not --metrics-port")
    problems.check(ports.get("http", {}).get("containerPort") == http_port, at, "port 'http' is not --http-port")
    notes = pod["metadata"].get("annotations", {})
    problems.check(notes.get("prometheus.io/scrape") == "true" and notes.get("prometheus.io/port") == str(metrics_port),
                   at, "needs prometheus.io/scrape 'true' and prometheus.io/port = the metrics port")
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = c.get(probe, {}).get("httpGet", {})
        problems.check(get.get("path") == path, at, f"{probe} must GET {path}")
        port = ports[get["port"]]["containerPort"] if get.get("port") in ports else get.get("port")
        problems.check(port == http_port, at, f"{probe} port {get.get('port')!r} is not the HTTP port")
    requests = c.get("resources", {}).get("requests", {})
    problems.check({"cpu", "memory"} <= requests.keys(), at, "needs resources.requests cpu and memory")
    headless = sts["spec"]["serviceName"]
    problems.check(f".{headless}." in v.get("--advertise", ""), at, f"--advertise must be the pod's name under {headless}")
    for seed in v.get("--join", "").split(","):
        m = re.match(rf"^{sts['metadata']['name']}-(\d+)\.{headless}\.[^:]*:(\d+)$", seed)
        problems.check(m and int(m.group(1)) < sts["spec"]["replicas"] and int(m.group(2)) == ports.get("gossip", {}).get("containerPort"),
                       at, f"--join seed {seed!r} is not a pod of this StatefulSet at the gossip port")

    # The rules: the ConfigMap behind the volume mounted where --rules points.
    volumes = {vol["name"]: vol for vol in pod["spec"].get("volumes", [])}
    rules = v.get("--rules", "")
    configmaps = {d["metadata"]["name"]: d for _, d in by_kind["ConfigMap"]}
    rules_text = None
    for mount in c.get("volumeMounts", []):
        if rules.startswith(mount["mountPath"].rstrip("/") + "/"):
            cm = configmaps.get(volumes.get(mount["name"], {}).get("configMap", {}).get("name"), {})
            rules_text = cm.get("data", {}).get(rules[len(mount["mountPath"].rstrip("/")) + 1:])
    problems.check(rules_text, at, f"--rules {rules!r} is not a key of a mounted ConfigMap")
    check_keys(problems, pod, c, v)
    resolved = [re.sub(r"\$\((\w+)\)", lambda m: EXAMPLE_ENV.get(m.group(1), m.group(0)), a) for a in args]
    return resolved, rules_text


def mounted(container, volumes, path):
    """The volume (its spec) mounted where `path` lies in `container`, or {}."""
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return volumes.get(mount["name"], {})
    return {}


def check_keys(problems, pod, c, v):
    """Secured by default: the TLS files come from the Secret throttlex-keys, the keyring from a
    writable copy an init container makes of the Secret's (the node writes rotations back)."""
    at = f"k8s container {c.get('name')}"
    volumes = {vol["name"]: vol for vol in pod["spec"].get("volumes", [])}
    for flag in ("--tls-ca", "--tls-cert", "--tls-key"):
        secret = mounted(c, volumes, v.get(flag, "")).get("secret", {}).get("secretName")
        problems.check(secret == "throttlex-keys", at, f"{flag} {v.get(flag)!r} is not in the mounted Secret throttlex-keys")
    keyring = v.get("--gossip-keyring", "")
    problems.check("emptyDir" in mounted(c, volumes, keyring), at,
                   f"--gossip-keyring {keyring!r} is not on a writable (emptyDir) volume")
    inits = pod["spec"].get("initContainers", [])
    problems.check(any(keyring and keyring in " ".join(i.get("command", [])) and
                       any(volumes.get(m["name"], {}).get("secret", {}).get("secretName") == "throttlex-keys"
                           for m in i.get("volumeMounts", []))
                       for i in inits), at, "no init container copies the Secret's keyring to --gossip-keyring")
    problems.check(pod["spec"].get("securityContext", {}).get("fsGroup") is not None, at,
                   "the Secret's files need fsGroup to be readable by a non-root node")


def check(problems, daemon_flags):
    before = len(problems.items)
    docs = load(problems)
    by_kind = check_objects(problems, docs)
    if len(problems.items) > before:  # the wiring checks below assume the objects are there
        return None, None
    sts = check_wiring(problems, by_kind)
    return check_container(problems, sts, by_kind, daemon_flags)
