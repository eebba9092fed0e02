#!/usr/bin/env bash
# Runs the tunnel benchmark (robbie-mesh vs OpenSSH ssh -L/-R vs direct), release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh >/dev/null
cargo build --release -p robbie-mesh
cargo bench -p mesh-tests --bench tunnels
