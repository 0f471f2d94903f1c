#!/usr/bin/env bash
# memcached-case.sh CACHE
#
# Prepares the trees of the memcached security-update case (tests in
# crates/suture/tests/memcached.rs) under CACHE/memcached:
#
#   src/            Debian's source package memcached (1.6.18-1+deb12u1 on bookworm), as
#                   `apt-get source` unpacks it (all Debian patches applied)
#   cve-patches.txt the Debian patches that are CVE fixes: a patch whose name or header (the
#                   text before its first diff) names a CVE-YYYY-N
#   cve.diff        those patches concatenated in series order (-p1 from the source root)
#   <tree>-src/     each tree below before its build (what `suture build --source` gets a copy of)
#   debian/         src/ built exactly as Debian builds it (`debian/rules build`: dh, autoreconf,
#                   Debian's configure flags --enable-sasl --enable-tls, dpkg-buildflags with
#                   hardening=+all); debian/memcached is the unstripped twin of the apt binary
#   vuln/           the same package with the CVE patches dropped from debian/patches/series
#                   (quilt), built the same way: what a Debian machine ran before the update
#   vuln-pwdb/      as vuln/, configured with Debian's flags plus --enable-sasl-pwdb. Debian's
#                   configure flags do NOT compile the SASL password check that the
#                   CVE-2026-47783/47784 patch fixes (sasl_server_userdb_checkpass() is under
#                   #ifdef ENABLE_SASL_PWDB); this tree is the same package with that documented
#                   upstream option on, so the fix has compiled code to patch.
#   build-cmd.txt   the command that builds one of these trees as Debian does
#   suture-build-cmd.txt
#                   the same build limited to the deployed binary, for `suture build --build-cmd`
#   tu/<tree>/{orig,fixed}/sasl_defs.o
#                   sasl_defs.c of <tree> (vuln, vuln-pwdb) compiled with the tree's own compile
#                   command (from make) plus -ffunction-sections -fdata-sections, before and after
#                   cve.diff; tu/<tree>/compile.txt holds the command
#   sasl/           SASL setup for the tests: sasl/conf/memcached.conf (SASL_CONF_PATH=sasl/conf)
#                   with `mech_list: plain` and a sasldb (sasl/sasldb2, made by saslpasswd2 -f)
#                   holding user `suture` / password `suture-pass` (realm: empty, see below);
#                   sasl/conf-pwdb is the configuration for vuln-pwdb (no sasldb); its password
#                   file (MEMCACHED_SASL_PWDB) is written by the test, as its user names carry the
#                   host name (memcached's SASL realm)
#   build-times.txt seconds each full build took (for docs/benchmarks.md)
#   .ready          written last; a second call returns at once when it exists
#
# Nothing system-wide is changed except installing Debian packages (as root) and the deb-src
# entry that scripts/debian-source.sh adds. Needs root for apt; everything else runs as any user.
#
# Environment:
#   SUTURE_DEBIAN_SRC  where unpacked sources are kept (default CACHE/debian-src)
#   JOBS               make -j (default: number of CPUs)
set -euo pipefail
exec </dev/null

me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: $me CACHE"
here=$(cd "$(dirname "$0")" && pwd)
cache=$(realpath -m -- "$1")
out=$cache/memcached
srcroot=${SUTURE_DEBIAN_SRC:-$cache/debian-src}
jobs=${JOBS:-$(nproc)}

mkdir -p -- "$out"
exec 9>"$out.lock"
flock -w 3600 9 || die "timed out waiting for $out.lock"
# Bump when the layout of CACHE/memcached changes: an older .ready is redone (built trees are
# kept, each has its own .suture-built stamp).
format=3
[[ -f $out/.ready ]] && grep -qx "format: $format" "$out/.ready" && exit 0
rm -f -- "$out/.ready"

# --- packages --------------------------------------------------------------------------------
# Build-Depends of memcached (debian/control) + the tools used here. libio-socket-ssl-perl is
# only for Debian's test suite (<!nocheck>), which is not run.
needs=(dpkg-dev debhelper quilt pkg-config libevent-dev libsasl2-dev libssl-dev sasl2-bin
    libsasl2-modules gcc make patch)
missing=()
for p in "${needs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "needs packages ${missing[*]}; run as root or install them"
    log "installing ${missing[*]}"
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 install -y \
            --no-install-recommends "${missing[@]}" >&2
    }
    if ! apt_install; then
        apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || true
        apt_install || die "apt-get install ${missing[*]} failed"
    fi
fi

# --- the deployed binary: Debian's memcached package --------------------------------------------
# Installed for /usr/bin/memcached only; its service must not run (the tests never use port
# 11211 and start their own daemons). Where no policy-rc.d exists, a temporary one keeps the
# package from starting the service; a service started anyway is stopped.
if ! dpkg-query -W -f='${Status}' memcached 2>/dev/null | grep -q 'ok installed'; then
    [[ $(id -u) -eq 0 ]] || die "needs package memcached; run as root or install it"
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# written by suture scripts/memcached-case.sh while installing memcached\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
        trap 'if [[ -n $made_policy ]]; then rm -f -- "$policy"; fi' EXIT
    fi
    log "installing memcached (service not started)"
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 install -y \
        --no-install-recommends memcached >&2 || die "apt-get install memcached failed"
    if [[ -n $made_policy ]]; then rm -f -- "$policy"; made_policy=; fi
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        systemctl disable --now memcached.service >&2 || true
    fi
fi
# A service started by the package (or an earlier install): stop it by its pid file.
if [[ -f /run/memcached/memcached.pid ]]; then
    pid=$(cat /run/memcached/memcached.pid)
    if [[ $pid =~ ^[0-9]+$ && $(readlink "/proc/$pid/exe" 2>/dev/null) == /usr/bin/memcached ]]; then
        log "stopping the memcached service started by the package (pid $pid)"
        kill "$pid" || true
    fi
fi

# --- source ----------------------------------------------------------------------------------
src=$out/src
if [[ ! -f $src/.suture-source.stamp ]]; then
    "$here/debian-source.sh" memcached "$srcroot/memcached"
    rm -rf -- "$src.tmp"
    cp -a -- "$srcroot/memcached" "$src.tmp"
    mv -- "$src.tmp" "$src"
fi
version=$(sed -n 's/^version: *//p' "$src/.suture-source.stamp")
log "memcached $version"

# --- the CVE patches -------------------------------------------------------------------------
series=$src/debian/patches/series
[[ -f $series ]] || die "$series not found"
cves=()
while read -r p _; do
    [[ -z $p || $p == \#* ]] && continue
    f=$src/debian/patches/$p
    [[ -f $f ]] || die "patch $p listed in the series is missing"
    header=$(awk '/^(--- |diff |Index: )/ { exit } { print }' "$f")
    if grep -qE 'CVE-[0-9]{4}-[0-9]{4,}' <<<"$p"$'\n'"$header"; then
        cves+=("$p")
    fi
done <"$series"
((${#cves[@]})) || die "no CVE patch found in $series (is this the security update?)"
printf '%s\n' "${cves[@]}" >"$out/cve-patches.txt"
: >"$out/cve.diff"
for p in "${cves[@]}"; do cat -- "$src/debian/patches/$p" >>"$out/cve.diff"; done
log "CVE patches: ${cves[*]}"

# --- trees -----------------------------------------------------------------------------------
# The build command: Debian's own rules, without the test suite. `debian/rules build` runs
# dh_autoreconf, dh_auto_configure (Debian's configure flags and dpkg-buildflags with
# hardening=+all, exported by debian/rules) and dh_auto_build (make -jN, verbose).
build_cmd="DEB_BUILD_OPTIONS='nocheck parallel=$jobs' debian/rules build"
echo "$build_cmd" >"$out/build-cmd.txt"
# For `suture build --build-cmd`: Debian's own configure step (dh_autoreconf, then
# debian/rules' override_dh_auto_configure, i.e. dh_auto_configure with Debian's flags and
# dpkg-buildflags), then make of the deployed binary only. Same objects, same flags, same
# binary (its build-id is the apt binary's); what it leaves out is `make all`'s other
# programs, among them memcached-debug, a gcov-instrumented test binary that is not shipped.
# A tree configured before is not configured again (a second `suture build` is warm).
echo 'test -f config.status || { dh_update_autotools_config && dh_autoreconf && debian/rules override_dh_auto_configure; }; make -j"$(nproc)" memcached' \
    >"$out/suture-build-cmd.txt"
touch "$out/build-times.txt"

# tree NAME DROP-CVES EXTRA-CONFIGURE: NAME-src (unbuilt), then NAME (a built copy)
tree() {
    local name=$1 drop=$2 extra=$3 t=$out/$1 u=$out/$1-src start p
    [[ -f $t/.suture-built ]] && return 0
    rm -rf -- "$t" "$t.log" "$u"
    cp -a -- "$src" "$u.tmp"
    if [[ $drop == yes ]]; then
        # Unapply every patch, drop the CVE ones from the series, reapply the rest: the tree
        # Debian would have built had the security update not happened.
        (cd "$u.tmp" && QUILT_PATCHES=debian/patches quilt pop -a -q) >>"$t.log" 2>&1 ||
            die "quilt pop failed in $u.tmp (log: $t.log)"
        for p in "${cves[@]}"; do
            grep -vxF -- "$p" "$u.tmp/debian/patches/series" >"$u.tmp/series.tmp" || true
            mv -- "$u.tmp/series.tmp" "$u.tmp/debian/patches/series"
        done
        (cd "$u.tmp" && QUILT_PATCHES=debian/patches quilt push -a -q) >>"$t.log" 2>&1 ||
            die "quilt push failed in $u.tmp (log: $t.log)"
        patch -d "$u.tmp" -p1 --dry-run --quiet -i "$out/cve.diff" >/dev/null ||
            die "cve.diff does not apply to $name"
    fi
    if [[ -n $extra ]]; then
        # Debian's configure line is in debian/rules (override_dh_auto_configure).
        grep -q -- '--enable-sasl --enable-tls' "$u.tmp/debian/rules" ||
            die "debian/rules of $version has no '--enable-sasl --enable-tls' line to extend"
        sed -i "s/--enable-sasl --enable-tls/--enable-sasl $extra --enable-tls/" "$u.tmp/debian/rules"
    fi
    mv -- "$u.tmp" "$u"
    cp -a -- "$u" "$t"
    log "building $name ($build_cmd${extra:+, configure +$extra})"
    start=$(date +%s.%N)
    (cd "$t" && bash -c "$build_cmd") >>"$t.log" 2>&1 || {
        tail -n 30 "$t.log" >&2
        die "build of $name failed (log: $t.log)"
    }
    [[ -x $t/memcached ]] || die "build of $name made no memcached binary"
    echo "$name $(echo "$(date +%s.%N) - $start" | bc -l | xargs printf '%.1f')" >>"$out/build-times.txt"
    mv -- "$t.log" "$t/.suture-build.log"
    touch "$t/.suture-built"
}
command -v bc >/dev/null || die "bc not found"
tree debian no ""
tree vuln yes ""
tree vuln-pwdb yes --enable-sasl-pwdb

# --- sasl_defs.c before and after the fix, per tree --------------------------------------------
# The tree's own compile command for memcached-sasl_defs.o, as make would run it (make -n with
# the source marked new), plus function and data sections. Run in a copy with cve.diff
# applied too: -ffile-prefix-map maps each copy's root to `.`, so the two objects differ only
# where the fix makes them differ.
tu() {
    local name=$1 t=$out/$1 d=$out/tu/$1 cmd side root
    rm -rf -- "$d"
    mkdir -p -- "$d"
    cmd=$(cd "$t" && make -n -W sasl_defs.c memcached-sasl_defs.o | grep -E '(^| )-c ' | tail -n 1)
    [[ -n $cmd ]] || die "cannot find the compile command of sasl_defs.c in $name"
    cmd="$cmd -ffunction-sections -fdata-sections"
    for side in orig fixed; do
        root=$d/$side.tree
        rm -rf -- "$root"
        cp -a -- "$t" "$root"
        if [[ $side == fixed ]]; then
            patch -d "$root" -p1 --quiet --no-backup-if-mismatch -i "$out/cve.diff" ||
                die "cve.diff does not apply to $name"
        fi
        # The prefix map of the original tree is in the command; map this copy instead.
        (cd "$root" && bash -c "${cmd//$t/$root}") >"$d/$side.log" 2>&1 ||
            { cat "$d/$side.log" >&2; die "compiling sasl_defs.c of $name ($side) failed"; }
        mkdir -p -- "$d/$side"
        mv -- "$root/memcached-sasl_defs.o" "$d/$side/sasl_defs.o"
        rm -rf -- "$root"
    done
    echo "${cmd//$t/<root>}" >"$d/compile.txt"
}
tu vuln
tu vuln-pwdb

# --- SASL setup --------------------------------------------------------------------------------
s=$out/sasl
rm -rf -- "$s"
mkdir -p -- "$s/conf"
# The user is created with an empty realm (-u ''): memcached calls sasl_server_new() with the
# host name as server FQDN and no user realm, and Cyrus's PLAIN looks the user up as
# "suture@<realm>"; an empty realm makes the lookup independent of the host name.
printf '%s' suture-pass | saslpasswd2 -f "$s/sasldb2" -a memcached -u '' -p -c suture ||
    die "saslpasswd2 failed"
cat >"$s/conf/memcached.conf" <<EOF
mech_list: plain
sasldb_path: $s/sasldb2
EOF
# The pwdb daemon gets its own SASL configuration without a sasldb, so that only the password
# file (the patched function) can accept a user: Cyrus falls back to its auxprop when the
# userdb callback refuses.
mkdir -p -- "$s/conf-pwdb"
echo "mech_list: plain" >"$s/conf-pwdb/memcached.conf"
echo "sasldb_path: $s/no-sasldb" >>"$s/conf-pwdb/memcached.conf"
chmod -R a+rX "$s"

{
    echo "format: $format"
    echo "version: $version"
    echo "cves: ${cves[*]}"
} >"$out/.ready"
log "ready: $out"
