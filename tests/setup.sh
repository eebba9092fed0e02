#!/usr/bin/env bash
# Installs what the test suite needs, idempotently (Debian/Ubuntu, as root or with sudo).
set -euo pipefail

need=()
command -v /usr/sbin/sshd >/dev/null || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v dbus-run-session >/dev/null || need+=(dbus)
command -v gnome-keyring-daemon >/dev/null || need+=(gnome-keyring)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
command -v setpriv >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
command -v faketime >/dev/null || need+=(faketime)   # a device whose clock is slow (sync tests)   # the multi-node tests: one network namespace per node
# The installer tests: a real systemd as PID 1 of a sandbox (systemd-analyze,
# systemd-sysusers, journalctl inside), nsenter/unshare, curl inside the sandbox.
command -v /lib/systemd/systemd >/dev/null || need+=(systemd)
command -v nsenter >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v lintian >/dev/null || need+=(lintian)     # the .deb must be lintian-clean
command -v sudo >/dev/null || need+=(sudo)           # the README's install steps run as written (a user with sudo)
command -v chromium >/dev/null || need+=(chromium)   # the dashboard test, headless
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# The tray app (Tauri 2) and its test: a headless X server, Python's D-Bus and X11
# bindings (the test reads and closes the dashboard window) and xdotool (it answers dialogs).
for pkg in libwebkit2gtk-4.1-dev libsoup-3.0-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev \
           libxdo-dev libdbus-1-dev xvfb xauth python3-dbus python3-gi python3-xlib xdotool; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done

if ((${#need[@]})); then
  echo "tests/setup.sh: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}"
fi
# The official Ollama Python client, and paramiko (an SSH server that can be made
# to misbehave, which sshd cannot), in a venv kept between runs.
venv="${MESH_TEST_VENV:-/var/cache/robbie-mesh/venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import ollama, paramiko' 2>/dev/null; then
  echo "tests/setup.sh: installing the ollama Python client and paramiko into $venv"
  # Debian's python3 needs python3-venv for `python3 -m venv`.
  if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3 python3-venv
  fi
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check ollama paramiko
fi
# Playwright's driver for Debian's Chromium (no browser download), kept between runs.
pw="${MESH_PLAYWRIGHT:-/var/cache/robbie-mesh/node}"
if [ ! -f "$pw/node_modules/playwright-core/package.json" ]; then
  echo "tests/setup.sh: installing playwright-core into $pw"
  mkdir -p "$pw"
  npm install --prefix "$pw" --no-audit --no-fund --silent playwright-core@1.65.1
fi
# cargo-deb, which installers/build.sh packages the service with (pinned: the
# package tests check what its maintainer scripts do).
if ! command -v cargo-deb >/dev/null; then
  echo "tests/setup.sh: installing cargo-deb"
  cargo install --quiet --locked cargo-deb@3.8.0
fi
# Tauri's command line (a prebuilt binary from npm), which installers/build.sh
# bundles the tray's .deb with; pinned to the tauri crate's version.
tauri_cli="/var/cache/robbie-mesh/tauri-cli"
if [ ! -x "$tauri_cli/node_modules/.bin/tauri" ]; then
  echo "tests/setup.sh: installing Tauri's CLI into $tauri_cli"
  mkdir -p "$tauri_cli"
  npm install --prefix "$tauri_cli" --no-audit --no-fund --silent @tauri-apps/cli@2.12.5
fi
# sshd's privilege separation directory.
[ -d /run/sshd ] || { SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"; $SUDO mkdir -p /run/sshd; }
echo "tests/setup.sh: ready"
