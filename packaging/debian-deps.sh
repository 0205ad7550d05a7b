# Sourced by tests/run.sh and packaging/demo.sh: makes sure the system tools pacpool's tests
# and demo drive are installed (Debian 12), and that cargo is on PATH.
#
# ensure_tools [--with-tray] [--with-network] [--with-bench] [--with-snapper] [--with-browser]
# [--with-postgres]: installs pacman, repo-add, vercmp, bsdtar, makepkg and zstd from Debian's
# packages when any is missing (needs root; otherwise says what to run); with --with-tray
# also the GTK build dependencies and the headless desktop the tray tests use; with
# --with-network the network tools of the fault tests (the demo needs neither); with
# --with-bench nginx, the baseline of benches/pool_repo.rs; with --with-snapper snapper and
# btrfs-progs (tests/preflight_real_pacman.rs takes snapper snapshots on a loop-mounted btrfs
# image); with --with-browser headless Chromium and chromedriver, driven over WebDriver by
# tests/dashboard_browser.rs; with --with-postgres the PostgreSQL server (Debian 12: 15), of
# which the tests start throwaway clusters (tests/support/pg.rs).

have() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || return 1
	done
}

die() {
	printf '%s: error: %s\n' "${0##*/}" "$*" >&2
	exit 1
}

# Debian's postgresql postinst creates a `main` cluster and starts it; the tests never use it
# (each starts its own), so the one the install just made is stopped and left to start by
# hand only (start.conf `manual`). pg_ctlcluster goes through systemctl where systemd runs;
# with no init system (containers) the cluster may not be running, hence `|| true`.
stop_new_postgres_clusters() {
	local conf version
	for conf in /etc/postgresql/*/main/start.conf; do
		[[ -f $conf ]] || continue
		version=${conf#/etc/postgresql/}
		version=${version%%/*}
		printf '==> Stopping the PostgreSQL %s main cluster the install started (tests start their own)\n' "$version"
		pg_ctlcluster "$version" main stop 2>/dev/null || true
		echo manual >"$conf"
	done
}

ensure_tools() {
	local apt_packages=() tray=0 network=0 bench=0 snapper=0 browser=0 postgres=0 new_postgres=0 arg
	for arg in "$@"; do
		case $arg in
		--with-tray) tray=1 ;;
		--with-network) network=1 ;;
		--with-bench) bench=1 ;;
		--with-snapper) snapper=1 ;;
		--with-browser) browser=1 ;;
		--with-postgres) postgres=1 ;;
		*) die "ensure_tools: unknown option $arg" ;;
		esac
	done
	if ! have pacman repo-add vercmp bsdtar makepkg zstd; then
		apt_packages+=(pacman-package-manager makepkg libarchive-tools zstd)
	fi
	# pacpoold checks package signatures with gpg on pacman's keyring (pacman-key comes with
	# pacman); the trust tests make keyrings and sign packages with them.
	if ! have gpg gpgconf; then
		apt_packages+=(gnupg)
	fi
	# tests/packaging.rs builds the Arch package from a git source (git) with options=(debug),
	# whose sources makepkg lists with debugedit.
	if ! have git debugedit; then
		apt_packages+=(git debugedit)
	fi
	# ---- LATER SYSTEM PACKAGES ---------------------------------------------------------
	# The tray tests (GTK, Xvfb, a tray host, notifications) add their packages here, in the
	# same form: a check, then the Debian packages to install when it fails.
	# pacpool-tray builds against GTK 3 (libgtk-3-dev) and loads libayatana-appindicator3 at
	# run time; tests/tray_headless.rs runs it under Xvfb with gtk-sni-tray-standalone as the
	# StatusNotifierItem host, dunst as the notification server, gdbus to read the icon and
	# click the menu, ImageMagick's import/convert for screenshots and pixels, and xdotool to
	# open the menu for its screenshot.
	# (`import`, not `convert`: some images carry a stand-in `convert` script; grep reads all of
	# ldconfig's output so that pipefail never sees a SIGPIPE.)
	if ((tray)) && { ! have pkg-config Xvfb xauth import dunst gdbus dbus-daemon gtk-sni-tray-standalone xdotool ||
		! pkg-config --exists gtk+-3.0 ||
		! { ldconfig -p 2>/dev/null | grep 'libayatana-appindicator3\.so\.1' >/dev/null; }; }; then
		apt_packages+=(pkg-config libgtk-3-dev libayatana-appindicator3-1 xvfb xauth imagemagick xdotool
			dunst libglib2.0-bin dbus haskell-gtk-sni-tray-utils)
	fi
	# tests/fault_network.rs puts endpoints in their own network namespaces (ip netns, veth)
	# and impairs their links with nftables rules inside those namespaces (packet loss, full
	# partition) and tc (netem when the kernel has it, else a token bucket).
	if ((network)) && ! have ip tc nft; then
		apt_packages+=(iproute2 nftables)
	fi
	# benches/pool_repo.rs measures the pool repository against nginx serving the same files.
	if ((bench)) && ! [[ -x /usr/sbin/nginx ]]; then
		apt_packages+=(nginx)
	fi
	# The snapper test makes a btrfs file system in an image file (mkfs.btrfs), loop-mounts
	# it and lets snapper (without its D-Bus daemon) take the pre/post pair there.
	if ((snapper)) && ! have snapper mkfs.btrfs; then
		apt_packages+=(snapper btrfs-progs)
	fi
	# tests/dashboard_browser.rs: Debian's Chromium (about 100 MB installed) and its
	# WebDriver server, driven headless.
	if ((browser)) && ! have chromium chromedriver; then
		apt_packages+=(chromium chromium-driver)
	fi
	# tests/support/pg.rs: initdb and pg_ctl from /usr/lib/postgresql/*/bin start a throwaway
	# cluster per test in a temporary directory (psql comes with the server's client package).
	if ((postgres)) && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
		apt_packages+=(postgresql)
		new_postgres=1
	fi
	# -------------------------------------------------------------------------------------
	if ((${#apt_packages[@]} > 0)); then
		if [[ $(id -u) -ne 0 ]]; then
			die "missing system packages; as root run:
  apt-get update && apt-get install -y --no-install-recommends ${apt_packages[*]}
or run this script as root, which does that."
		fi
		have apt-get || die "missing system packages (${apt_packages[*]}) and no apt-get: install their equivalents by hand"
		printf '\n==> Installing %s\n' "${apt_packages[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update
		apt-get install -y --no-install-recommends "${apt_packages[@]}"
		have pacman repo-add vercmp bsdtar makepkg zstd || die "pacman, repo-add, vercmp, bsdtar, makepkg or zstd is still missing after apt-get install"
		if ((new_postgres)); then
			compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || die "initdb is still missing after apt-get install postgresql"
			stop_new_postgres_clusters
		fi
	fi
	# rustup installs into ~/.cargo/bin, which a fresh root shell may not have on PATH.
	if ! have cargo && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
		PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
	fi
	have cargo || die "cargo not found: install Rust 1.85 or newer (https://rustup.rs), then rerun"
}
