#!/usr/bin/env bash
# Runs suture's whole test suite, including the tiers that need prepared source trees:
#   - real Linux kernel translation units (Debian's linux-source, Debian's config and gcc-12),
#   - real Debian kernel security updates loaded into the older releases' stock images,
#   - translation units of real C projects (Debian source packages, Debian's build flags).
# As root it installs the Debian packages it needs. Trees are cached in $SUTURE_CACHE
# (default /var/tmp/suture, ~11 GB with four kernel releases side by side); a second run reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null

cache=${SUTURE_CACHE:-/var/tmp/suture}
mkdir -p "$cache"

packages=(gcc g++ clang binutils patch make util-linux gcc-multilib cmake autoconf automake libtool diffutils
    dpkg-dev debhelper quilt pkg-config bc libevent-dev libsasl2-dev libssl-dev sasl2-bin
    libsasl2-modules procps iproute2 debootstrap xz-utils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "==> installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
fi

echo "==> preparing the kernel tree in $cache/kernel-tree"
bash scripts/kernel-tree.sh "$cache/kernel-tree"
export SUTURE_KERNEL_TREE="$cache/kernel-tree"
echo "==> preparing the 6.12 and 5.10 kernel trees in $cache/kver"
bash scripts/kernel-version-tree.sh 6.12 "$cache/kver/linux-6.12"
bash scripts/kernel-version-tree.sh 5.10 "$cache/kver/linux-5.10"
export SUTURE_KERNEL_VERSIONS="$cache/kver"
export SUTURE_DEBIAN_SRC="$cache/debian-src"
export SUTURE_REAL_BUILD="$cache/real-build"
mkdir -p "$SUTURE_DEBIAN_SRC"

echo "==> preparing the memcached security-update case in $cache/memcached"
bash scripts/memcached-case.sh "$cache"
export SUTURE_MEMCACHED_CASE="$cache/memcached"

echo "==> preparing the real-fixes tier (Debian CVE fixes) in $cache/real-fixes"
bash scripts/real-fixes.sh "$cache"
export SUTURE_REAL_FIXES="$cache/real-fixes"

echo "==> preparing the suture build --deb tier in $cache/deb"
bash scripts/deb-build.sh "$cache"
export SUTURE_DEB_BUILD="$cache/deb"
# The Debian builds of the installed packages the tier patches take minutes each when cold:
# done here (`suture build --deb --prepare`), not inside a test's time limit. A failure is
# left for the test to report.
for p in libexpat1 libxml2 liblzma5; do
    echo "==> suture build --deb $p --prepare"
    SUTURE_DEB_CACHE="$SUTURE_DEB_BUILD" cargo run -q -p suture -- build --deb "$p" --prepare \
        >/dev/null 2>"$cache/deb/prepare-$p.log" || echo "    failed: see $cache/deb/prepare-$p.log"
done

# The booted-guest tier (tests/kernel_guest.rs): QEMU (TCG) boots Debian's stock kernel, whose
# image scripts/guest-kernel.sh fetches into the cache. Without recommends: no GUI, no firmware
# beyond the BIOS.
guest_packages=(qemu-system-x86 busybox-static)
guest_missing=()
for p in "${guest_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || guest_missing+=("$p")
done
if [ "${#guest_missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "==> installing ${guest_missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${guest_missing[@]}"
    else
        echo "missing Debian packages: ${guest_missing[*]} (run as root to install them)" >&2
        exit 1
    fi
fi
echo "==> preparing the guest kernel in $cache/guest"
bash scripts/guest-kernel.sh "$cache/guest"
export SUTURE_GUEST_CACHE="$cache/guest"
echo "==> preparing consecutive kernel releases (real kernel fixes) in $cache"
bash scripts/kernel-releases.sh "$cache"
export SUTURE_KERNEL_RELEASES="$cache"
# Debian 13's 6.12 (IBT, gcc-14): a debootstrap'ed trixie root with the trees in it. Cold
# ~5 min and ~7 GB (debootstrap, three 160 MB sources, two images); warm 2 s.
echo "==> preparing Debian 13's 6.12 releases (trixie chroot) in $cache"
bash scripts/kernel-releases.sh --trixie "$cache"
export SUTURE_KERNEL_RELEASES_6_12="$cache"

echo "==> cargo test"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi
