#!/usr/bin/env bash
# debian-source.sh PKG[=VERSION] DESTDIR
#
# Puts the unpacked Debian source tree of PKG (Debian patches applied, as `apt-get source`
# leaves it) at DESTDIR, so that DESTDIR itself is the source root (DESTDIR/debian/ exists).
#
# - Makes sure apt has deb-src entries: if none is configured, writes
#   /etc/apt/sources.list.d/suture-deb-src.sources, mirroring the existing Debian `deb`
#   entries (deb.debian.org, debian-security, snapshot...) with `Types: deb-src`, and runs
#   `apt-get update`.
# - Idempotent: DESTDIR/.suture-source.stamp records what was unpacked; a second call with
#   the same PKG returns at once, without touching the network.
# - Must run as root (it may write apt's configuration); reads no standard input. Waits for
#   the apt/dpkg locks when another apt is running.
#
# Environment:
#   SUTURE_APT_LOCK_TIMEOUT  seconds to wait for apt's locks (default 300)
set -euo pipefail
exec </dev/null

me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 1; }
log() { echo "$me: $*" >&2; }

[[ $# -eq 2 ]] || die "usage: $me PKG[=VERSION] DESTDIR"
spec=$1
dest=$2
[[ -n $spec && -n $dest ]] || die "usage: $me PKG[=VERSION] DESTDIR"
pkg=${spec%%=*}
[[ $pkg =~ ^[a-z0-9][a-z0-9.+-]+$ ]] || die "'$pkg' is not a Debian package name"
dest=$(realpath -m -- "$dest")
stamp=$dest/.suture-source.stamp

# --- fast path: already unpacked -------------------------------------------------------------
# Serialise with other calls for the same DESTDIR (flock is released when the script exits).
mkdir -p -- "$(dirname -- "$dest")"
exec 9>"$dest.lock"
flock -w 900 9 || die "timed out waiting for $dest.lock"
if [[ -f $stamp ]]; then
    st_spec=$(sed -n 's/^spec: *//p' "$stamp")
    st_source=$(sed -n 's/^source: *//p' "$stamp")
    st_version=$(sed -n 's/^version: *//p' "$stamp")
    if [[ $spec == "$st_spec" ]]; then
        exit 0
    fi
    if [[ $pkg == "${st_spec%%=*}" || $pkg == "$st_source" ]]; then
        # same package: any version will do unless one was asked for
        [[ $spec != *=* || ${spec#*=} == "$st_version" ]] && exit 0
        die "$dest holds $st_source $st_version, not ${spec#*=}; remove it or pick another DESTDIR"
    fi
    die "$dest already holds another source ($st_source $st_version); remove it or pick another DESTDIR"
fi
if [[ -e $dest ]] && [[ -n $(ls -A -- "$dest" 2>/dev/null) ]]; then
    die "$dest exists, is not empty and has no $(basename "$stamp"); refusing to overwrite it"
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (apt configuration and apt-get update)"
for tool in apt-get apt-cache dpkg-source flock; do
    command -v "$tool" >/dev/null || die "'$tool' not found (dpkg-source is in package dpkg-dev)"
done

lock_timeout=${SUTURE_APT_LOCK_TIMEOUT:-300}
[[ $lock_timeout =~ ^[0-9]+$ ]] || die "SUTURE_APT_LOCK_TIMEOUT must be a number of seconds"
apt_opts=(-q -o "DPkg::Lock::Timeout=$lock_timeout" -o APT::Sandbox::User=root)

# --- deb-src entries -------------------------------------------------------------------------
srcfile=/etc/apt/sources.list.d/suture-deb-src.sources

have_deb_src() {
    # an enabled deb-src in one-line format, or a deb822 stanza whose Types include deb-src
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] && grep -qE '^[[:space:]]*deb-src[[:space:]]' "$f" && return 0
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk 'BEGIN{RS=""; FS="\n"; found=0}
             { types=""; enabled=1
               for (i=1;i<=NF;i++) {
                 if ($i ~ /^Types:/) types=$i
                 if ($i ~ /^Enabled:[[:space:]]*no/) enabled=0 }
               if (enabled && types ~ /[[:space:]]deb-src([[:space:]]|$)/) found=1 }
             END{exit !found}' "$f" && return 0
    done
    return 1
}

# Emits deb822 deb-src stanzas mirroring the Debian `deb` entries configured on this machine.
mirror_stanzas() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f && $f != "$srcfile" ]] || continue
        awk 'BEGIN{RS=""; FS="\n"}
             { types=""; uris=""; enabled=1
               for (i=1;i<=NF;i++) {
                 if ($i ~ /^Types:/) types=$i
                 if ($i ~ /^URIs:/) uris=$i
                 if ($i ~ /^Enabled:[[:space:]]*no/) enabled=0 }
               if (!enabled || types !~ /[[:space:]]deb([[:space:]]|$)/) next
               if (uris !~ /debian\.org|\/debian(-security)?\/?([[:space:]]|$)/) next
               for (i=1;i<=NF;i++) {
                 if ($i ~ /^Types:/) print "Types: deb-src"
                 else print $i }
               print "" }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # deb [opts] URI SUITE COMPONENT...
        awk '$1=="deb" {
               i=2; opts=""
               if ($2 ~ /^\[/) { while (i<=NF && $i !~ /\]$/) { opts=opts" "$i; i++ } opts=opts" "$i; i++ }
               uri=$i; suite=$(i+1); comps=""
               for (j=i+2;j<=NF;j++) comps=comps" "$j
               if (uri !~ /debian\.org|\/debian(-security)?\/?$/) next
               print "Types: deb-src"; print "URIs: " uri; print "Suites: " suite
               print "Components:" comps
               if (opts ~ /signed-by=/) { sub(/.*signed-by=/, "", opts); sub(/[] ].*/, "", opts); print "Signed-By: " opts }
               print "" }' "$f"
    done
}

default_stanzas() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "no Debian deb entries to mirror and no VERSION_CODENAME in /etc/os-release"
    cat <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $codename-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

EOF
}

apt_update() {
    # DPkg::Lock::Timeout covers dpkg's lock; the lists lock of `apt-get update` is not always
    # waited for, so retry while another apt holds it.
    local deadline=$((SECONDS + lock_timeout)) out
    while :; do
        if out=$(apt-get "${apt_opts[@]}" update 2>&1); then
            return 0
        fi
        if grep -qiE 'could not get lock|unable to lock' <<<"$out" && ((SECONDS < deadline)); then
            log "apt is busy (lock held by another process), waiting..."
            sleep 5
            continue
        fi
        echo "$out" >&2
        die "apt-get update failed"
    done
}

updated=0
if ! have_deb_src; then
    stanzas=$(mirror_stanzas)
    [[ -n $stanzas ]] || stanzas=$(default_stanzas)
    log "adding deb-src entries in $srcfile"
    tmp=$(mktemp "$srcfile.XXXXXX")
    {
        echo "# Written by suture's scripts/debian-source.sh: deb-src mirrors of the deb entries."
        echo "$stanzas"
    } >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$srcfile"
    log "apt-get update"
    apt_update
    updated=1
fi

# Source indexes may be missing or stale (e.g. deb-src configured but lists never fetched).
# (No `apt-cache ... | grep -q` here: with pipefail, grep's early exit would fail the pipe.)
has_source_record() {
    local out
    out=$(apt-cache showsrc "$pkg" 2>/dev/null) || return 1
    grep -q '^Package:' <<<"$out"
}
if ! has_source_record; then
    if ((updated == 0)); then
        log "no source record for '$pkg' yet; apt-get update"
        apt_update
    fi
    has_source_record ||
        die "apt knows no source package for '$pkg' (check the name and the deb-src entries)"
fi

# --- download and unpack ---------------------------------------------------------------------
parent=$(dirname -- "$dest")
mkdir -p -- "$parent"
work=$(mktemp -d "$parent/.suture-src-$pkg.XXXXXX")
trap 'rm -rf -- "$work"' EXIT

# Without a pinned version, try every version apt knows, newest first: a mirror may list a
# security update whose files it cannot serve yet (seen: 404 on the .dsc of the newest one).
if [[ $spec == *=* ]]; then
    candidates=("$spec")
else
    mapfile -t versions < <(apt-cache showsrc "$pkg" 2>/dev/null | sed -n 's/^Version: *//p' |
        sort -u | sort -r -V)
    # sort -V is close to but not exactly Debian ordering; re-sort with dpkg.
    for ((i = 1; i < ${#versions[@]}; i++)); do
        for ((j = i; j > 0; j--)); do
            if dpkg --compare-versions "${versions[j]}" gt "${versions[j-1]}"; then
                t=${versions[j]}; versions[j]=${versions[j-1]}; versions[j-1]=$t
            else
                break
            fi
        done
    done
    candidates=()
    for v in "${versions[@]}"; do candidates+=("$pkg=$v"); done
    ((${#candidates[@]} > 0)) || candidates=("$pkg")
fi
got=
for cand in "${candidates[@]}"; do
    log "downloading source of $cand"
    if (cd "$work" && apt-get "${apt_opts[@]}" source --download-only "$cand") >&2; then
        got=$cand
        break
    fi
    log "download of $cand failed${candidates[1]+, trying an older version}"
    find "$work" -mindepth 1 -delete
done
[[ -n $got ]] || die "apt-get source --download-only failed for: ${candidates[*]}"
dscs=("$work"/*.dsc)
[[ ${#dscs[@]} -eq 1 && -f ${dscs[0]} ]] || die "expected exactly one .dsc after download, got: ${dscs[*]}"
dsc=${dscs[0]}
srcpkg=$(sed -n 's/^Source: *//p' "$dsc" | head -n1)
version=$(sed -n 's/^Version: *//p' "$dsc" | head -n1)
[[ -n $srcpkg && -n $version ]] || die "cannot read Source/Version from $dsc"

log "unpacking $srcpkg $version"
(cd "$work" && dpkg-source --no-check -x "$(basename "$dsc")" tree) >&2 ||
    die "dpkg-source -x $dsc failed"
[[ -d $work/tree/debian ]] || die "unpacked tree has no debian/ directory"

cat >"$work/tree/.suture-source.stamp" <<EOF
spec: $spec
source: $srcpkg
version: $version
dsc: $(basename "$dsc")
EOF
[[ -d $dest ]] && rmdir -- "$dest"
mv -- "$work/tree" "$dest"
log "$srcpkg $version unpacked in $dest"
