#!/usr/bin/env bash
# Installs what the test suite needs, idempotently (Debian/Ubuntu, as root or with sudo).
set -euo pipefail

need=()
command -v /usr/sbin/sshd >/dev/null || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v dbus-run-session >/dev/null || need+=(dbus)
command -v gnome-keyring-daemon >/dev/null || need+=(gnome-keyring)

if ((${#need[@]})); then
  echo "tests/setup.sh: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}"
fi
# sshd's privilege separation directory.
[ -d /run/sshd ] || { SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"; $SUDO mkdir -p /run/sshd; }
echo "tests/setup.sh: ready"
