#!/usr/bin/env bash
# The release variant of the Arch package: a source tarball of one version (`git archive`, as
# a release's tarball) and a PKGBUILD that builds from it, with a fixed pkgver and the
# tarball's sha256sum. The PKGBUILD is derived from the git variant next to this script
# (packaging/arch/PKGBUILD), so the two cannot drift.
#
#   packaging/arch/release.sh OUTDIR [REV]      # REV: a tag or commit; default HEAD
#   cd OUTDIR && makepkg -s
#
# The PKGBUILD's source is the GitHub archive of tag v<version>; makepkg uses the tarball
# next to it instead of downloading. For a published release, `updpkgsums` then takes
# GitHub's tarball's checksum.
set -euo pipefail

die() {
	echo "release.sh: $*" >&2
	exit 1
}

[[ $# -ge 1 && $# -le 2 ]] || die "usage: release.sh OUTDIR [REV]"
out=$1
rev=${2:-HEAD}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel) || die "$here is not in a git checkout"
git -C "$repo" rev-parse --verify --quiet "$rev^{commit}" >/dev/null ||
	die "$rev is not a commit of $repo (a tag, branch or hash)"
version=$(git -C "$repo" show "$rev:Cargo.toml" | sed -n 's/^version = "\([^"]*\)"$/\1/p' | head -n1)
[[ -n $version ]] || die "no version = \"…\" line in $rev:Cargo.toml"

mkdir -p "$out"
out=$(cd "$out" && pwd)
tarball="pacpool-$version.tar.gz"
git -C "$repo" archive --format=tar.gz --prefix="pacpool-$version/" -o "$out/$tarball" "$rev"
sum=$(sha256sum "$out/$tarball" | cut -d' ' -f1)

# The git variant, with: a header for this variant, pkgver fixed, no pkgver(), the tarball as
# the source (and its checksum), its directory instead of the clone's, no git to build.
{
	cat <<HEADER
# Maintainer: pacpool developers <pacpool@example.org>
#
# pacpool $version from its source tarball (made by packaging/arch/release.sh from the git
# variant, packaging/arch/PKGBUILD; see there for the split packages, PACPOOL_NO_TRAY and
# the paths).
HEADER
	sed -n '/^$/,$p' "$here/PKGBUILD"
} | sed \
	-e "s/^pkgver=.*/pkgver=$version/" \
	-e '/^# <Cargo.toml version>/d' \
	-e '/^pkgver() {$/,/^}$/d' \
	-e 's|^source=.*|source=("pacpool-$pkgver.tar.gz::https://github.com/pacpool/pacpool/archive/v$pkgver.tar.gz")|' \
	-e "s|^sha256sums=.*|sha256sums=('$sum')|" \
	-e 's|^  cd pacpool$|  cd "pacpool-$pkgver"|' \
	-e 's|\$srcdir/pacpool/|$srcdir/pacpool-$pkgver/|g' \
	-e 's/^makedepends=(cargo git /makedepends=(cargo /' \
	-e 's/^  makedepends=(cargo git)/  makedepends=(cargo)/' \
	>"$out/PKGBUILD"

# The transformation must have caught every place of the git variant.
if grep -nE '^pkgver\(\)|git\+|^  cd pacpool$|\$srcdir/pacpool/|SKIP|PACPOOL_GIT' "$out/PKGBUILD" >&2; then
	die "packaging/arch/PKGBUILD changed in a way this script does not handle (lines above)"
fi
echo "$out/PKGBUILD"
echo "$out/$tarball"
