#!/usr/bin/env bash
# deb-build.sh CACHE
#
# Prepares the tier of `suture build --deb` (tests in crates/suture/tests/deb_build.rs) under
# CACHE/deb, which the tests pass to suture as SUTURE_DEB_CACHE (its sources and built trees
# stay there between runs):
#   - apt's deb-src entries (scripts/debian-source.sh adds them when none is configured, and
#     unpacks expat's source at $SUTURE_DEBIAN_SRC/expat, shared with the real-fixes tier);
#   - the build tools and expat's build dependencies (apt-get build-dep), so `suture build
#     --deb` finds nothing missing;
#   - CACHE/deb/.ready, written last; a second call returns at once when it exists.
# The package itself (libexpat1 2.5.0-1+deb12u1) must be installed already: the archive no
# longer serves that version, and the test says so when another one is installed.
#
# Environment:
#   SUTURE_DEBIAN_SRC  where unpacked sources are kept (default CACHE/debian-src)
set -euo pipefail
exec </dev/null

me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: $me CACHE"
here=$(cd "$(dirname "$0")" && pwd)
cache=$(realpath -m -- "$1")
out=$cache/deb
srcroot=${SUTURE_DEBIAN_SRC:-$cache/debian-src}

mkdir -p -- "$out"
exec 9>"$out.lock"
flock -w 3600 9 || die "timed out waiting for $out.lock"
format=1
[[ -f $out/.ready ]] && grep -qx "format: $format" "$out/.ready" && exit 0
rm -f -- "$out/.ready"

"$here/debian-source.sh" expat "$srcroot/expat"

needs=(dpkg-dev debhelper gcc make patch)
missing=()
for p in "${needs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})) || ! (cd "$srcroot/expat" && dpkg-checkbuilddeps) >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "needs ${missing[*]} and expat's build dependencies; run as root"
    log "installing ${missing[*]} and expat's build dependencies"
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 install -y \
        --no-install-recommends "${needs[@]}" >&2 || die "apt-get install ${needs[*]} failed"
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 build-dep -y \
        --no-install-recommends "$srcroot/expat" >&2 || die "apt-get build-dep expat failed"
fi

echo "format: $format" >"$out/.ready"
log "ready: $out"
