#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root): install what is needed, build, and run.
# Until the daemon exists (issue "throttlexd on one node"), "run" means the limiter core benchmark;
# the cluster issue turns this into "start a local 5-node cluster".
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build build
exec ./build/bin/limiter_bench "$@"
