#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the
# workspace on a private D-Bus session bus with an unlocked Secret Service
# keyring (gnome-keyring-daemon), so the keychain tests talk to the real thing.
#   bash tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh

if [ -z "${MESH_INNER:-}" ]; then
  export MESH_INNER=1
  exec dbus-run-session -- bash "$0" "$@"
fi

# A throwaway keyring: never the user's own.
keyring_home=$(mktemp -d)
trap 'kill "${GNOME_KEYRING_PID:-0}" 2>/dev/null || true; rm -rf "$keyring_home"' EXIT
export XDG_DATA_HOME="$keyring_home/data" XDG_RUNTIME_DIR="$keyring_home/run"
mkdir -p "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
eval "$(printf 'robbie-mesh-tests' | gnome-keyring-daemon --unlock --components=secrets --daemonize)"
export GNOME_KEYRING_CONTROL GNOME_KEYRING_PID MESH_TESTS_REQUIRE_KEYCHAIN=1

cargo build -p robbie-mesh --bins
cargo test --workspace "$@"
