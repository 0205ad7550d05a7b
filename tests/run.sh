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
die() {
	printf 'tests/run.sh: error: %s\n' "$*" >&2
	exit 1
}
# True when every command named is on PATH.
have() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || return 1
	done
}

step "Checking system packages"
apt_packages=()
if ! have pacman repo-add vercmp bsdtar makepkg; then
	apt_packages+=(pacman-package-manager makepkg libarchive-tools zstd)
fi

# ---- LATER SYSTEM PACKAGES ------------------------------------------------------------
# The tray tests (GTK, Xvfb, a tray host, notifications) add their packages here, in the
# same form: a check, then the Debian packages to install when it fails. For example:
#   if ! have Xvfb xauth; then apt_packages+=(xvfb xauth); fi
#   if ! dpkg-query -W libgtk-3-dev >/dev/null 2>&1; then apt_packages+=(libgtk-3-dev); fi
# ----------------------------------------------------------------------------------------

if ((${#apt_packages[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		die "missing system packages; as root run:
  apt-get update && apt-get install -y --no-install-recommends ${apt_packages[*]}
or run this script as root, which does that."
	fi
	have apt-get || die "missing system packages (${apt_packages[*]}) and no apt-get: install their equivalents by hand"
	step "Installing ${apt_packages[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y --no-install-recommends "${apt_packages[@]}"
	have pacman repo-add vercmp bsdtar makepkg || die "pacman, repo-add, vercmp, bsdtar or makepkg is still missing after apt-get install"
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "warning: not root: the tests that run real pacman transactions will fail" >&2
fi

# rustup installs into ~/.cargo/bin, which a fresh root shell may not have on PATH.
if ! have cargo && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
	PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
have cargo || die "cargo not found: install Rust 1.85 or newer (https://rustup.rs), then rerun"

# Style and lints guard main too, where the toolchain has them (rustup's default profile does).
if cargo fmt --version >/dev/null 2>&1; then
	step "cargo fmt --check"
	cargo fmt --check
fi
if cargo clippy --version >/dev/null 2>&1; then
	step "cargo clippy --all-targets --locked -- -D warnings"
	cargo clippy --all-targets --locked -- -D warnings
fi

step "cargo build --all-targets --locked"
cargo build --all-targets --locked

# Library, binaries, integration tests and doc tests. Benchmarks are only built above: they
# print figures (see BENCHMARKS.md) and assert nothing about time.
step "cargo test --locked"
cargo test --locked

step "All tests passed"
