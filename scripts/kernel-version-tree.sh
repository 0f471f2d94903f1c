#!/usr/bin/env bash
# Prepare the kernel tree of another Debian release than the host's, for rebuilding single
# translation units with that kernel's own configuration and kbuild flags (scripts/kernel-tu.sh,
# scripts/kernel-case.sh work on it as on the 6.1 tree of scripts/kernel-tree.sh).
#
#   scripts/kernel-version-tree.sh SERIES DIR       SERIES: 6.12 (Debian 13) or 5.10 (Debian 11)
#
# The packages come from that release's archive through a private apt configuration
# ($SUTURE_KVER_APT, default the directory `apt` beside DIR: its own sources list, lists and cache);
# the host's apt sources and installed packages are never touched: `apt-get download` fetches
# linux-source-SERIES and the matching linux-headers-<abi>-amd64 (for Debian's .config), and
# `dpkg-deb -x` unpacks them. The version is the one the fixture cases are written for (6.12.117-1,
# 5.10.262-1) unless SUTURE_KVER_VERSION names another (`newest`: the archive's newest).
#
# The compiler is the host's gcc-12, not the one Debian built these kernels with (6.12: gcc-14,
# 5.10: gcc-10; neither installs on bookworm). `make olddefconfig` re-derives the
# compiler-dependent options; what it changed is kept in DIR/.suture-config-changes. The objects
# are therefore real objects of that kernel's sources, configuration and flags, but not
# byte-identical to Debian's binary packages (these trees serve the differ, not live loading).
#
# Idempotent: nothing is done when DIR/.suture-ready exists. ~1.5 GB per tree, ~2 min.
set -euo pipefail

log() { printf 'kernel-version-tree: %s\n' "$*" >&2; }
die() { printf 'kernel-version-tree: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 6.12|5.10 DIR"
SERIES=$1 DIR=$2
case $SERIES in
    # The versions the fixture cases (crates/suture-object/tests/kernel-versions) are written
    # for: 6.12.117-1 is the release before 6.12.118-1, whose fixes the cases apply.
    6.12) SUITES=(trixie trixie-security) PIN=6.12.117-1 ;;
    5.10) SUITES=(bullseye bullseye-security) PIN=5.10.262-1 ;;
    *) die "unknown series $SERIES (6.12 or 5.10)" ;;
esac
if [ -e "$DIR/.suture-ready" ]; then
    log "$DIR is ready (remove $DIR/.suture-ready to redo it)"
    exit 0
fi
for t in gcc-12 make bc bison flex xz tar pahole dpkg-deb apt-get; do
    command -v "$t" >/dev/null 2>&1 || die "$t is missing (scripts/kernel-tree.sh installs the tools)"
done

APT=${SUTURE_KVER_APT:-$(dirname "$DIR")/apt}
mkdir -p "$APT/cache/archives/partial"
list=$APT/sources-$SERIES.list
: >"$list"
for s in "${SUITES[@]}"; do
    case $s in
        *-security) url=http://deb.debian.org/debian-security ;;
        *) url=http://deb.debian.org/debian ;;
    esac
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $url $s main" >>"$list"
done
aptopts=(-o "Dir::Etc::SourceList=$list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT/lists-$SERIES" -o "Dir::Cache=$APT/cache"
    -o Acquire::Retries=3)
mkdir -p "$APT/lists-$SERIES/partial"
if ! compgen -G "$APT/lists-$SERIES/*_Packages*" >/dev/null; then
    log "apt-get update (private lists for ${SUITES[*]})"
    apt-get "${aptopts[@]}" -q update >/dev/null || die "apt-get update of ${SUITES[*]} failed"
fi
# Newest version of PKG the private lists know, or SUTURE_KVER_VERSION when set.
version_of() {
    apt-cache "${aptopts[@]}" show "$1" 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n1
}
srcpkg=linux-source-$SERIES
ver=${SUTURE_KVER_VERSION:-$PIN}
[ "$ver" != newest ] || ver=$(version_of "$srcpkg")
[ -n "$ver" ] || die "the ${SUITES[*]} archive has no $srcpkg"
apt-cache "${aptopts[@]}" show "$srcpkg=$ver" >/dev/null 2>&1 ||
    die "the ${SUITES[*]} archive no longer serves $srcpkg=$ver; known: $(apt-cache "${aptopts[@]}" \
show "$srcpkg" 2>/dev/null | sed -n 's/^Version: //p' | tr '\n' ' ')"
# The headers package of the same version: the one linux-headers-amd64=$ver depends on.
hpkg=$(apt-cache "${aptopts[@]}" show "linux-headers-amd64=$ver" 2>/dev/null |
    sed -n 's/^Depends: \(linux-headers-[^ ,]*-amd64\) .*/\1/p' | head -n1)
[ -n "$hpkg" ] || die "no linux-headers-amd64=$ver in ${SUITES[*]}"
log "$srcpkg $ver, config from $hpkg"

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
debs=$DIR/.suture-debs
mkdir -p "$debs"
chmod 1777 "$debs"
(
    cd "$debs"
    for p in "$srcpkg=$ver" "$hpkg=$ver"; do
        compgen -G "${p%%=*}_*.deb" >/dev/null ||
            apt-get "${aptopts[@]}" -q download "$p" >/dev/null 2>apt.err ||
            die "apt-get download $p failed: $(tail -n1 apt.err)"
    done
)
if [ ! -f "$DIR/.suture-unpacked" ]; then
    log "unpacking the source"
    rm -rf "$debs/x"
    mkdir -p "$debs/x"
    dpkg-deb --fsys-tarfile "$debs/${srcpkg}"_*.deb | tar -x -C "$debs/x" ./usr/src/
    tarball=$(ls "$debs"/x/usr/src/linux-source-*.tar.xz)
    tar -xJf "$tarball" -C "$DIR" --strip-components=1
    dpkg-deb -x "$debs/${hpkg}"_*.deb "$debs/x"
    cp "$debs/x/usr/src/$hpkg/.config" "$DIR/.config.debian"
    rm -rf "$debs/x"
    touch "$DIR/.suture-unpacked"
fi

cd "$DIR"
cp .config.debian .config
# Debian signs modules with its own key, which is not in the source package.
sed -i -e 's/^CONFIG_SYSTEM_TRUSTED_KEYS=.*/CONFIG_SYSTEM_TRUSTED_KEYS=""/' \
    -e 's/^CONFIG_MODULE_SIG_KEY=.*/CONFIG_MODULE_SIG_KEY="certs\/signing_key.pem"/' .config
log "make CC=gcc-12 olddefconfig"
make -s CC=gcc-12 olddefconfig </dev/null
diff <(grep '^CONFIG_' .config.debian | sort) <(grep '^CONFIG_' .config | sort) \
    >.suture-config-changes || true
log "olddefconfig with gcc-12 changed $(grep -c '^[<>]' .suture-config-changes) config lines \
(.suture-config-changes)"
log "make CC=gcc-12 -j${SUTURE_KERNEL_JOBS:-2} modules_prepare"
make -s CC=gcc-12 -j"${SUTURE_KERNEL_JOBS:-2}" modules_prepare </dev/null
printf '%s\n' "kernel=$SERIES" "debian=$ver" "headers=$hpkg" \
    "compiler=$(gcc-12 --version | head -n1)" \
    "debian_compiler=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"$/\1/p' .config.debian)" \
    >.suture-ready
rm -rf "$debs"
log "ready: $DIR"
