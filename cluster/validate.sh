#!/usr/bin/env bash
# Checks cluster/ without Docker (there is no Docker engine in CI): what can be checked of the
# Dockerfile, the compose file, the Grafana dashboard and the Kubernetes manifests.
#
#   cluster/validate.sh            (THROTTLEX_BIN: the built binaries, default build/bin)
#
#  1. `docker-compose config -q`: the compose file is valid Compose (Debian's docker-compose v1).
#  2. The resolved compose file: node-1..node-5 with --node-id/--advertise = service name, --bind
#     0.0.0.0, --join node-1:7946, --redis at the redis service, --rules a mounted file that
#     exists; every flag of the nodes, node-extra and loadgen is in `throttlexd --help` /
#     `throttlex-bench --help`; host ports unique and as documented; Prometheus scrapes exactly
#     the node services; Grafana mounts the provisioning whose paths and datasource fit.
#  3. node-1's command line (rules path mapped to the host) starts a real throttlexd on ports 0;
#     it loads every rule and answers /readyz, and its /metrics gives the exported metric names.
#  4. The dashboard JSON parses; every panel uses the provisioned datasource; every metric name
#     in every PromQL expression is in docs/metrics.md's table, exported by that throttlexd
#     (histograms' _bucket/_sum/_count included), or listed in grafana/pending-metrics.txt and
#     named in the panel's description.
#  5. Kubernetes: every manifest parses; kinds and apiVersions; replicas 5, headless service
#     (publishing not-ready pods) as serviceName, selectors, PDB maxUnavailable 1, probes on
#     /readyz and /healthz, scrape annotations, resource requests, --node-id from the downward
#     API, --join seeds that are pods of the StatefulSet; TLS files from the Secret throttlex-keys,
#     the keyring from a writable copy an init container makes, fsGroup; the args only use flags
#     throttlexd knows, and they start a real throttlexd with the ConfigMap's rules and keys made
#     by scripts/cluster-init.sh.
#  6. Dockerfile: debian:bookworm stages, a runtime package for every library `ldd` lists for
#     the built binaries and client library (`dpkg -S`), build targets defined in CMake, non-root
#     USER, /readyz HEALTHCHECK, EXPOSE, entrypoint; .dockerignore leaves build trees out.
#  7. The checker itself: a copy of the dashboard with one metric name misspelt must fail.
#
# Not checked here (no Docker engine, no registry, no Kubernetes): building the image, pulling
# the redis/prometheus/grafana images, running the stack, Grafana rendering, `kubectl apply`.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree
cd "$(dirname "$0")/.."

BIN=${THROTTLEX_BIN:-build/bin}
log() { echo "validate.sh: $*" >&2; }

for tool in docker-compose python3; do
  command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/setup.sh"; exit 1; }
done
python3 -c 'import yaml' 2>/dev/null || { log "python3-yaml is missing: run scripts/setup.sh"; exit 1; }
[[ -x $BIN/throttlexd && -x $BIN/throttlex-bench ]] || { log "no throttlexd/throttlex-bench in $BIN: build first"; exit 1; }

tmp=$(mktemp -d -t throttlex-validate.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

compose=(docker-compose -f cluster/docker-compose.yml --profile bench --profile scale)
log "docker-compose config -q"
"${compose[@]}" config -q
"${compose[@]}" config >"$tmp/compose.yml"

checks=(python3 -u cluster/checks/validate.py --bin "$BIN" --compose-config "$tmp/compose.yml")
log "compose, dashboard, Kubernetes and Dockerfile checks"
"${checks[@]}"

log "a misspelt metric in the dashboard must fail"
sed 's/throttlex_keys/throttlex_keyz/' cluster/grafana/dashboards/throttlex.json >"$tmp/broken.json"
cmp -s cluster/grafana/dashboards/throttlex.json "$tmp/broken.json" && { log "the dashboard has no throttlex_keys to misspell"; exit 1; }
if "${checks[@]}" --only dashboard --dashboard "$tmp/broken.json" >"$tmp/broken.out" 2>&1; then
  log "the checker accepted throttlex_keyz:"; cat "$tmp/broken.out" >&2; exit 1
fi
grep -q "unknown metric 'throttlex_keyz'" "$tmp/broken.out" || {
  log "the checker failed, but not on throttlex_keyz:"; cat "$tmp/broken.out" >&2; exit 1; }

log "ok"
