#!/usr/bin/env bash
# Type-checks the macOS-only code that calls Objective-C (SMAppService,
# service/src/install/login_items.rs) for aarch64-apple-darwin. The whole crate
# cannot be checked for a Mac here: its C dependencies (SQLite, aws-lc) need the
# macOS SDK. Prints "skipped" and succeeds where the Rust target cannot be added.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target=aarch64-apple-darwin
if ! rustup target list --installed 2>/dev/null | grep -qx "$target" \
    && ! timeout 300 rustup target add "$target" >/dev/null 2>&1; then
    echo "mac-check: skipped (the $target standard library cannot be installed here)"
    exit 0
fi
dir="${CARGO_TARGET_DIR:-/var/cache/robbie-mesh/target}/mac-check"
mkdir -p "$dir/src"
# The versions the service crate asks for, so this checks what a Mac build uses.
deps=$(sed -n "/^\[target.'cfg(target_os = \"macos\")'.dependencies\]/,/^\[/p" "$root/service/Cargo.toml" | grep -E '^[a-z0-9-]+ = ')
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "mac-check"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
thiserror = "2"
$deps
TOML
cat > "$dir/src/lib.rs" <<RS
#![deny(warnings)]
#![allow(dead_code)]
/// The service's error type, as in service/src/install.rs.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{what}: {why}")]
    Step { what: String, why: String },
}
#[path = "$root/service/src/install/login_items.rs"]
pub mod login_items;
RS
cp "$root/Cargo.lock" "$dir/Cargo.lock" 2>/dev/null || true
cd "$dir"
CARGO_TARGET_DIR="$dir/target" cargo check --quiet --target "$target"
echo "mac-check: service/src/install/login_items.rs type-checks for $target"
