#!/usr/bin/env bash
# Builds the packages into dist/:
#   robbie-mesh_VERSION_ARCH.deb       the service (cargo-deb), with its man page
#                                      generated from the command line's definitions
#   robbie-mesh-tray_VERSION_ARCH.deb  the tray app (Tauri's bundler), which depends
#                                      on the service package instead of carrying it
#   bash installers/build.sh [--service-only]
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
echo "installers/build.sh: packaging the service"
cargo deb -p robbie-mesh --no-build --output dist/
[ "${1:-}" = "--service-only" ] && { ls -l dist/*.deb; exit 0; }

# Tauri's command line: `cargo tauri`, $TAURI_CLI, or the one tests/setup.sh
# installs from npm (a prebuilt binary).
tauri=${TAURI_CLI:-}
if [ -z "$tauri" ]; then
  if cargo tauri --version >/dev/null 2>&1; then tauri="cargo tauri"
  elif [ -x /var/cache/robbie-mesh/tauri-cli/node_modules/.bin/tauri ]; then tauri=/var/cache/robbie-mesh/tauri-cli/node_modules/.bin/tauri
  else
    echo "installers/build.sh: needs Tauri's CLI for the tray: npm install --prefix /var/cache/robbie-mesh/tauri-cli @tauri-apps/cli@2 (or cargo install tauri-cli), or pass --service-only" >&2
    exit 1
  fi
fi
# The tray package's Debian changelog, in the form lintian checks.
mkdir -p target/deb-doc
gzip -9nc installers/debian/tray.changelog > target/deb-doc/changelog.gz
gzip -9nc installers/linux/robbie-mesh-tray.1 > target/deb-doc/robbie-mesh-tray.1.gz
echo "installers/build.sh: building and packaging the tray (Tauri's bundler)"
rm -rf "$target/release/bundle/deb"
(cd src-tauri && $tauri build --bundles deb)
# What Debian asks that Tauri's bundler does not do, done as dh_strip,
# dh_installdeb and dpkg-gencontrol would: the binary without its symbol table,
# the autostart entry under /etc listed as a conffile (an admin's edit survives
# upgrades), the long description wrapped at 80 columns.
for deb in "$target"/release/bundle/deb/robbie-mesh-tray_*.deb; do
  tree=$(mktemp -d)
  dpkg-deb -R "$deb" "$tree"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$tree/usr/bin/robbie-mesh-tray"
  sed -i "s/^Installed-Size: .*/Installed-Size: $(du -sk --exclude=DEBIAN "$tree" | cut -f1)/" "$tree/DEBIAN/control"
  (cd "$tree" && find etc -type f | sed 's|^|/|') > "$tree/DEBIAN/conffiles"
  awk '/^ / && length($0) > 80 { n = split(substr($0, 2), w, " "); line = "";
         for (i = 1; i <= n; i++) { if (length(line) + length(w[i]) + 1 > 78) { print " " line; line = "" }
                                    line = line (line == "" ? "" : " ") w[i] }
         if (line != "") print " " line; next } { print }' "$tree/DEBIAN/control" > "$tree/DEBIAN/control.new"
  mv "$tree/DEBIAN/control.new" "$tree/DEBIAN/control"
  (cd "$tree" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$tree/DEBIAN/md5sums"
  dpkg-deb --root-owner-group -b "$tree" "dist/$(basename "$deb")" >/dev/null
  rm -rf "$tree"
done
ls -l dist/*.deb
