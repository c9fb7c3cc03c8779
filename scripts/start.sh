#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root): install what is needed, build, and start a
# throttlexd node on this machine (HTTP 8080, RPC 7400, metrics 9464) with the example rules, in the
# foreground until Ctrl-C. (The cluster issue turns this into a local 5-node cluster.)
#   scripts/start.sh [extra throttlexd flags]
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build build

cat <<MSG

throttlexd is starting. Try:
  curl -i 'http://127.0.0.1:8080/v1/check?key=user:1&limit=5&period=1m'
  curl -i 'http://127.0.0.1:8080/v1/check?key=user:1&rule=api-per-user'
  build/bin/throttlectl --node 127.0.0.1:7400 status
  build/bin/throttlectl --node 127.0.0.1:7400 check user:1 --rule login
  curl -s http://127.0.0.1:9464/metrics | grep throttlex_
Stop with Ctrl-C.

MSG
exec build/bin/throttlexd --node-id local-1 --bind 127.0.0.1 --rules docs/examples/rules.yaml "$@"
