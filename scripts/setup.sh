#!/usr/bin/env bash
# Installs every Debian 12 package ThrottleX needs to build, test and run.
# Idempotent and non-interactive; run as root (or through sudo).
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git
  clang-format clang-tidy  # scripts/test.sh checks formatting and .clang-tidy
  # libraries (see docs/architecture.md, "Dependencies")
  libasio-dev capnproto libcapnp-dev libhiredis-dev libconcurrentqueue-dev
  prometheus-cpp-dev libcli11-dev doctest-dev libxxhash-dev libbenchmark-dev
  libhttp-parser-dev libyaml-cpp-dev nlohmann-json3-dev
  libssl-dev  # libcrypto: the gossip keyring (AES-256-GCM)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc  # Envoy's rate limit service (daemon/rls)
  # services and tools used by the tests and benchmarks
  redis-server redis-tools nginx-light wrk curl iproute2 procps python3
  openssl  # scripts/cluster-init.sh: the CA and certificates of a secured cluster
  stunnel4  # integration_security: Redis over TLS through a local proxy (cluster/redis-tls)
  docker-compose python3-yaml  # cluster/validate.sh: compose config, Kubernetes YAML
  iptables  # cluster/chaos/{partition,loss}.sh: drop a node's traffic inside its namespace
  python3-grpcio python3-protobuf  # integration_rls: an independent gRPC client of the RLS port
  prometheus  # cluster/checks/promql_check.py: the dashboard's queries against a real Prometheus
)

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo "$0" "$@"; fi
  echo "setup.sh: must run as root to install packages" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup.sh: all ${#packages[@]} packages already installed"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "setup.sh: installing ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install where it can; the tests start their own
# instances on their own ports, so the system-wide ones are not needed.
echo "setup.sh: done"
