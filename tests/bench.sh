#!/usr/bin/env bash
# Runs the benchmarks, release build: tunnels (robbie-mesh vs OpenSSH ssh -L/-R vs
# direct), the HTTP endpoint (robbie-mesh vs nginx vs direct) and the store
# (append latency, push rows/s, incremental sync vs pg_dump | psql, sync --verify),
# and the time to first token through the endpoint and a tunnel vs OpenSSH ssh -L.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh >/dev/null
command -v nginx >/dev/null || { SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"; $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq nginx-light; }
cargo build --release -p robbie-mesh
cargo bench -p mesh-tests --bench tunnels
cargo bench -p mesh-tests --bench endpoint
cargo bench -p mesh-tests --bench store
cargo bench -p mesh-tests --bench ttft
