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
#   - older versions of libxml2 and liblzma5 installed from the archive (downgrades where the
#     machine has newer ones), and the newer sources whose fixes the tests take;
#   - CACHE/deb/.ready, written last. It records only that the sources were fetched: the
#     installed versions and build dependencies are checked on every call (cheap when they
#     hold), since a cache directory can outlive the packages installed beside it (a CI
#     machine restored from an image with a warm cache, or an `apt-get upgrade` since).
# libexpat1 2.5.0-1+deb12u1 must be installed already: the archive no longer serves that
# version, and the test says so when another one is installed.
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
format=2
ready=0
[[ -f $out/.ready ]] && grep -qx "format: $format" "$out/.ready" && ready=1

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

# The older versions of libraries the tests patch, from the archive (a downgrade where the
# machine has a newer one), with their -dev packages for the probes, and the newer source
# packages whose fixes the tests take, unpacked under CACHE/deb/fixes.
older=(libxml2=2.9.14+dfsg-1.3~deb12u4 libxml2-dev=2.9.14+dfsg-1.3~deb12u4
       liblzma5=5.4.1-1+deb12u1 liblzma-dev=5.4.1-1+deb12u1)
newer=(libxml2=2.9.14+dfsg-1.3~deb12u6 xz-utils=5.4.1-1+deb12u2)
for sv in "${newer[@]}"; do
    src=${sv%%=*} ver=${sv#*=}
    dest=$out/fixes/${src}_$ver
    [[ -f $dest/debian/changelog ]] && continue
    log "fetching the source of $src $ver"
    rm -rf -- "$dest" "$dest.dl"; mkdir -p -- "$dest.dl"
    (cd "$dest.dl" && apt-get source -q --download-only "$src=$ver" >&2) \
        || die "apt-get source $src=$ver failed"
    dpkg-source -x "$dest.dl"/*.dsc "$dest" >&2 || die "dpkg-source -x $src $ver failed"
    rm -rf -- "$dest.dl"
done

# Build dependencies, checked against the newer sources: `apt-get build-dep` only when
# something is missing, because it also upgrades what is already installed (liblzma-dev and
# with it liblzma5, which the downgrades below then undo). The downgrades come last.
for sv in "${newer[@]}"; do
    dest=$out/fixes/${sv%%=*}_${sv#*=}
    (cd "$dest" && dpkg-checkbuilddeps) >/dev/null 2>&1 && continue
    [[ $(id -u) -eq 0 ]] || die "needs the build dependencies of ${sv%%=*}; run as root"
    log "installing the build dependencies of ${sv%%=*}"
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 build-dep -y \
        --no-install-recommends "$dest" >&2 || die "apt-get build-dep ${sv%%=*} failed"
done

stale=()
for pv in "${older[@]}"; do
    [[ $(dpkg-query -W -f='${Version}' "${pv%%=*}" 2>/dev/null) == "${pv#*=}" ]] || stale+=("$pv")
done
if ((${#stale[@]})); then
    [[ $(id -u) -eq 0 ]] || die "needs ${stale[*]} installed; run as root"
    log "installing ${stale[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 install -y \
        --allow-downgrades --no-install-recommends "${stale[@]}" >&2 \
        || die "apt-get install ${stale[*]} failed (does the archive still serve them?)"
fi
((ready)) || echo "format: $format" >"$out/.ready"
log "ready: $out"
