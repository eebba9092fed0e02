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
export XDG_DATA_HOME="$keyring_home/data" XDG_RUNTIME_DIR="$keyring_home/run"
mkdir -p "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
printf 'robbie-mesh-tests' | gnome-keyring-daemon --foreground --unlock --components=secrets >/dev/null 2>&1 &
keyring_pid=$!
trap 'kill "$keyring_pid" 2>/dev/null || true; rm -rf "$keyring_home"' EXIT
# Wait (up to 20 s) until the Secret Service is on the bus.
for _ in $(seq 200); do
  if dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
       org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q 'boolean true'; then
    break
  fi
  kill -0 "$keyring_pid" 2>/dev/null || { echo "gnome-keyring-daemon exited" >&2; exit 1; }
  sleep 0.1
done
export MESH_TESTS_REQUIRE_KEYCHAIN=1
# The API token every test service and client of this run shares (a service
# started with $ROBBIE_MESH_TOKEN uses it instead of writing a token file).
ROBBIE_MESH_TOKEN="test-$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
export ROBBIE_MESH_TOKEN
export MESH_PLAYWRIGHT="${MESH_PLAYWRIGHT:-/var/cache/robbie-mesh/node}"
export MESH_TEST_PYTHON="${MESH_TEST_VENV:-/var/cache/robbie-mesh/venv}/bin/python"

cargo build -p robbie-mesh -p robbie-mesh-tray --bins
bash tests/mac-check.sh   # the macOS-only Objective-C calls still type-check
bash installers/build.sh   # the .deb the package tests install
cargo test --workspace --benches --no-run -q   # the benchmark must keep compiling
cargo test --workspace "$@"
