#!/usr/bin/env bash
# pacpool's main job on embedded defaults, on any Debian 12 machine (as root):
#
#   a coordinator (SQLite) and two endpoint daemons, "alice" and "bob", each on its own
#   sandbox pacman root, with a local repository of generated packages; then set-latest on
#   alice, bob becoming behind, bob syncing, alice upgrading, bob following, and bob
#   reverting — printing what happens at each step. The pool is left running (the
#   coordinator and both daemons); the demo ends with commands to try and one to stop it.
#
# Nothing touches the host's own packages: every pacman path points into $PACPOOL_DEMO_DIR
# (default /tmp/pacpool-demo), which is wiped first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=debian-deps.sh
source packaging/debian-deps.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
ensure_tools
[[ $(id -u) -eq 0 ]] || die "run as root: pacman runs transactions only as root, even in a sandbox"

say "Building pacpool (release)"
cargo build --release --locked --bins
BIN=$PWD/target/release
DEMO=${PACPOOL_DEMO_DIR:-/tmp/pacpool-demo}
PORT=${PACPOOL_DEMO_PORT:-7300}
URL=http://127.0.0.1:$PORT

# Stop what a previous demo left running, then start afresh.
for pidfile in "$DEMO"/*.pid; do
	[[ -e $pidfile ]] || continue
	pid=$(cat "$pidfile")
	kill "$pid" 2>/dev/null || continue
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
done
rm -rf "$DEMO"
mkdir -p "$DEMO/repo" "$DEMO/build"
ARCH=$(uname -m)

# A real package: .PKGINFO plus one file, compressed with zstd, as makepkg lays it out.
mkpkg() { # name version [depend...]
	local name=$1 ver=$2 stage
	shift 2
	stage=$DEMO/build/$name-$ver
	mkdir -p "$stage/usr/share/$name"
	echo "$name $ver" >"$stage/usr/share/$name/README"
	{
		echo "pkgname = $name"
		echo "pkgbase = $name"
		echo "pkgver = $ver"
		echo "pkgdesc = pacpool demo package $name"
		echo "url = https://example.org/$name"
		echo "builddate = $(date +%s)"
		echo "packager = pacpool demo <demo@example.org>"
		echo "size = 16"
		echo "arch = $ARCH"
		for d in "$@"; do echo "depend = $d"; done
	} >"$stage/.PKGINFO"
	(cd "$stage" && bsdtar --zstd -cf "$DEMO/repo/$name-$ver-$ARCH.pkg.tar.zst" .PKGINFO usr)
	repo-add --quiet "$DEMO/repo/demo.db.tar.gz" "$DEMO/repo/$name-$ver-$ARCH.pkg.tar.zst"
	# pacman -Sy compares whole seconds: make a republished database look newer.
	touch -d "@$(($(date +%s) + ${REPO_TICK:=0}))" "$DEMO/repo/demo.db.tar.gz"
	REPO_TICK=$((REPO_TICK + 1))
}

# A sandbox pacman installation and its pacpoold configuration.
mkbox() { # name
	local box=$DEMO/$1
	mkdir -p "$box/root/var/lib/pacman" "$box/root/var/log" "$box/cache" "$box/hooks" "$box/run" "$box/state"
	chmod 755 "$DEMO" "$box" "$box/run"
	cat >"$box/pacman.conf" <<-CONF
		[options]
		RootDir = $box/root
		DBPath = $box/root/var/lib/pacman/
		CacheDir = $box/cache/
		HookDir = $box/hooks/
		LogFile = $box/root/var/log/pacman.log
		Architecture = auto
		SigLevel = Never
		LocalFileSigLevel = Never

		[demo]
		Server = file://$DEMO/repo
	CONF
	cat >"$box/pacpoold.toml" <<-CONF
		coordinator_url = "$URL"
		join_token = "$JOIN"
		name = "$1"
		state_dir = "$box/state"
		socket = "$box/run/pacpoold.sock"

		[pacman]
		root = "$box/root"
		dbpath = "$box/root/var/lib/pacman"
		config = "$box/pacman.conf"
		cachedir = "$box/cache"
		hookdir = "$box/hooks"
		logfile = "$box/root/var/log/pacman.log"
	CONF
}

boxpacman() { # name args...
	local box=$DEMO/$1
	shift
	pacman --noconfirm --color never --root "$box/root" --dbpath "$box/root/var/lib/pacman" \
		--cachedir "$box/cache" --config "$box/pacman.conf" --hookdir "$box/hooks" \
		--logfile "$box/root/var/log/pacman.log" "$@"
}

pp() { # name args... : the pacpool CLI against that machine's daemon
	local box=$DEMO/$1
	shift
	echo "[$(basename "$box")]\$ pacpool $*"
	"$BIN/pacpool" --socket "$box/run/pacpoold.sock" "$@"
}

wait_revision() { # name revision: until that machine's daemon has the pool target revision
	local i
	for i in $(seq 1 100); do
		if "$BIN/pacpool" --socket "$DEMO/$1/run/pacpoold.sock" status --json 2>/dev/null | grep -q "\"revision\": $2,"; then
			return 0
		fi
		sleep 0.1
	done
	die "$1 did not learn target revision $2; see $DEMO/$1/pacpoold.log"
}

wait_connected() { # name
	local i
	for i in $(seq 1 100); do
		if "$BIN/pacpool" --socket "$DEMO/$1/run/pacpoold.sock" status --json 2>/dev/null | grep -q '"link": "connected"'; then
			return 0
		fi
		sleep 0.1
	done
	die "$1's daemon did not connect to the coordinator; see $DEMO/$1/pacpoold.log"
}

say "Generating packages and a local repository ($DEMO/repo)"
mkpkg libtext 1.0-1
mkpkg editor 1.0-1 libtext
mkpkg shell 2.0-1
mkpkg oldtool 1.0-1
ls "$DEMO/repo"

say "Starting the coordinator on $URL (SQLite: $DEMO/coordinator.db)"
cat >"$DEMO/coordinator.toml" <<CONF
listen = "127.0.0.1:$PORT"
database = "$DEMO/coordinator.db"
admin_token_file = "$DEMO/admin-token"
CONF
nohup "$BIN/pacpool-coordinator" serve --config "$DEMO/coordinator.toml" >"$DEMO/coordinator.log" 2>&1 &
echo $! >"$DEMO/coordinator.pid"
for i in $(seq 1 100); do
	[[ -s $DEMO/admin-token ]] && "$BIN/pacpool" admin --url "$URL" --token-file "$DEMO/admin-token" pools list >/dev/null 2>&1 && break
	sleep 0.1
done
ADMIN=("$BIN/pacpool" admin --url "$URL" --token-file "$DEMO/admin-token")
echo "\$ pacpool admin pools create lab"
"${ADMIN[@]}" pools create lab
POOL=$("${ADMIN[@]}" --json pools list | grep -o '"id": *[0-9]*' | head -1 | grep -o '[0-9]*$')
JOIN=$("${ADMIN[@]}" --json join-token create "$POOL" | grep -o '"token": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/')

say "Two machines: alice has editor + shell, bob has shell + oldtool"
for m in alice bob; do mkbox $m; done
boxpacman alice -Sy editor shell >/dev/null
boxpacman bob -Sy shell oldtool >/dev/null
for m in alice bob; do
	nohup "$BIN/pacpoold" --config "$DEMO/$m/pacpoold.toml" >"$DEMO/$m/pacpoold.log" 2>&1 &
	echo $! >"$DEMO/$m.pid"
done
wait_connected alice
wait_connected bob
pp alice status
pp bob status

say "alice: set as latest"
pp alice set-latest --yes
wait_revision bob 1
say "bob learns the pool target changed"
pp bob status
pp bob preview || true

say "bob: sync to latest"
pp bob sync --yes
pp bob status

say "alice upgrades editor to 1.1 with pacman and sets it as latest"
mkpkg editor 1.1-1 libtext
boxpacman alice -Syu >/dev/null
pp alice notify
pp alice set-latest --yes
wait_revision bob 2
pp bob status

say "bob: sync again (its databases are refreshed first)"
pp bob sync --yes

say "bob: revert to previous (works without the coordinator)"
pp bob revert --yes
pp bob status
pp bob snapshots

say "The pool as the coordinator sees it"
"${ADMIN[@]}" endpoints list "$POOL"
"${ADMIN[@]}" targets history "$POOL"

say "Done. The pool is still running: the coordinator at $URL, and alice's and bob's daemons"
# The README shows these lines ("After the demo, try"); tests/readme.rs keeps both the same.
cat <<EOF
Try (each machine has its own pacpoold socket):
PACPOOL_SOCKET=$DEMO/alice/run/pacpoold.sock $BIN/pacpool status
PACPOOL_SOCKET=$DEMO/bob/run/pacpoold.sock $BIN/pacpool history
PACPOOL_SOCKET=$DEMO/bob/run/pacpoold.sock $BIN/pacpool preview
$BIN/pacpool admin --url $URL --token-file $DEMO/admin-token endpoints list lab
Metrics: $URL/api/v1/metrics
Stop everything:
kill \$(cat $DEMO/*.pid)
EOF
