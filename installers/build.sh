#!/usr/bin/env bash
# Builds the packages into dist/: the service's .deb (cargo-deb), with its
# man page generated from the command line's own definitions.
#   bash installers/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null; then
  echo "installers/build.sh: needs cargo-deb; install it with: cargo install cargo-deb --locked" >&2
  exit 1
fi
target=${CARGO_TARGET_DIR:-target}
echo "installers/build.sh: building robbie-mesh (release)"
cargo build --release -p robbie-mesh --bin robbie-mesh
mkdir -p dist
"$target/release/robbie-mesh" man | gzip -9n > "$target/release/robbie-mesh.1.gz"
echo "installers/build.sh: packaging"
cargo deb -p robbie-mesh --no-build --output dist/
ls -l dist/*.deb
