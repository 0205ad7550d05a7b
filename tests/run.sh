#!/usr/bin/env bash
# The test command of pacpool: `bash tests/run.sh` from anywhere in the checkout.
#
# On Debian 12 it installs the system tools the tests drive (the real pacman, repo-add,
# vercmp, bsdtar) when they are missing, then builds and runs every test target.
# The real-pacman tests need root: pacman refuses -S/-U/-R/-D for other users, even with
# --root inside a temporary directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
# shellcheck source=../packaging/debian-deps.sh
source packaging/debian-deps.sh

step "Checking system packages"
ensure_tools --with-tray --with-network --with-bench --with-snapper --with-browser --with-postgres
if [[ $(id -u) -ne 0 ]]; then
	echo "warning: not root: the tests that run real pacman transactions will fail" >&2
fi

# Style and lints guard main too, where the toolchain has them (rustup's default profile does).
if cargo fmt --version >/dev/null 2>&1; then
	step "cargo fmt --check"
	cargo fmt --check
fi
if cargo clippy --version >/dev/null 2>&1; then
	step "cargo clippy --all-targets --all-features --locked -- -D warnings"
	cargo clippy --all-targets --all-features --locked -- -D warnings
fi

# --all-features includes the tray (GTK); the default build needs no GTK.
step "cargo build --all-targets --all-features --locked"
cargo build --all-targets --all-features --locked

# Library, binaries, integration tests and doc tests. Benchmarks are only built above: they
# print figures (see BENCHMARKS.md) and assert nothing about time.
step "cargo test --all-features --locked"
cargo test --all-features --locked

step "All tests passed"
