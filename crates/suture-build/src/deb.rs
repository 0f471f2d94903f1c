//! `suture build --deb`: live patches for the files of an installed Debian package.
//!
//! [`build`] resolves `PACKAGE[=VERSION]` (a binary or source package; the version defaults to
//! the installed one) or an unpacked source directory; fetches the source package with
//! `apt-get source` into a cache; when the archive no longer has that version (it keeps only
//! the newest source of each suite), reconstructs it from the nearest newer one by reversing
//! the patches the newer changelog entries added ([`added_patches`]) and dropping those
//! entries; builds it the Debian way (`debian/rules build`, with Debian's build flags and
//! `SOURCE_DATE_EPOCH` from the changelog) through suture's recorded build
//! ([`crate::run_build`]); matches every ELF file of the installed binary packages of the
//! source with a build output by build-id (or name) and, when the build-id is not reproduced,
//! says why ([`InstalledFile::reasons`]); then runs the ordinary pipeline ([`crate::build`])
//! on the built tree with the fix (`--patch` files, or every patch `debian/patches/series` of
//! a newer version has that the installed one lacks) and the matching installed files as
//! targets, so one bundle is written per installed file the fix changes.
//!
//! A build-id is proof of the whole file, including parts a package strips (the compiler's
//! version string in `.comment`, debug information). When only those differ, every section the
//! installed file loads is byte-identical to the rebuild's ([`crate::bind::loaded_differences`])
//! and the rebuild is a valid twin; the report says which of the usual causes applies
//! (compiler updated since the package was built, build path in the debug information,
//! build dependencies updated) and what would reproduce the build-id exactly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use suture_bundle::hex;

use crate::bind::loaded_differences;
use crate::elfinfo::ElfInfo;
use crate::units::Graph;
use crate::{abs, record, BuildError, BuildOptions, BuildReport, Outcome};

/// What to build: an installed package (binary or source name, optional version) or an
/// unpacked source tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DebSpec {
    Package {
        name: String,
        version: Option<String>,
    },
    Dir(PathBuf),
}

impl DebSpec {
    /// `PACKAGE`, `PACKAGE=VERSION`, or a directory (anything with a `/`, or an existing
    /// directory).
    pub fn parse(s: &str) -> DebSpec {
        if s.contains('/') || Path::new(s).is_dir() {
            return DebSpec::Dir(PathBuf::from(s));
        }
        match s.split_once('=') {
            Some((n, v)) => DebSpec::Package {
                name: n.to_string(),
                version: Some(v.to_string()),
            },
            None => DebSpec::Package {
                name: s.to_string(),
                version: None,
            },
        }
    }
}

/// The fix: patch files, or the patches a newer version of the source package added.
#[derive(Clone, Debug)]
pub enum DebFix {
    Patches(Vec<PathBuf>),
    To(String),
    /// No fix yet: fetch, build the Debian way and bind the installed files, so that a later
    /// fix builds in seconds (`--prepare`).
    Prepare,
}

/// Inputs of [`build`].
#[derive(Clone, Debug)]
pub struct DebOptions {
    pub spec: DebSpec,
    pub fix: DebFix,
    pub out_dir: PathBuf,
    /// Where sources and built trees are kept between runs.
    pub cache: PathBuf,
    pub patch_id: Option<String>,
    pub created_by: String,
    pub debug_dirs: Vec<PathBuf>,
    pub wrapper_exe: PathBuf,
    pub diff_options: suture_object::Options,
    /// Install missing build dependencies with `apt-get build-dep` (as root).
    pub install_build_deps: bool,
}

/// The default cache: `$SUTURE_DEB_CACHE`, else `/var/tmp/suture/deb`.
pub fn default_cache() -> PathBuf {
    std::env::var_os("SUTURE_DEB_CACHE")
        .map_or_else(|| PathBuf::from("/var/tmp/suture/deb"), PathBuf::from)
}

/// Where the source tree came from.
#[derive(Clone, Debug, Serialize)]
pub struct SourceOrigin {
    /// `archive` (apt-get source), `reconstructed` (from a newer source package) or
    /// `directory` (given).
    pub kind: &'static str,
    /// The newer version a reconstruction started from.
    pub from_version: Option<String>,
    /// The patches of that version's series reversed, in series order.
    pub dropped_patches: Vec<String>,
}

impl SourceOrigin {
    fn archive() -> SourceOrigin {
        SourceOrigin {
            kind: "archive",
            from_version: None,
            dropped_patches: Vec::new(),
        }
    }
}

/// An installed binary package of the source.
#[derive(Clone, Debug, Serialize)]
pub struct InstalledPackage {
    pub package: String,
    pub version: String,
    /// Its ELF files (executables and shared libraries with a build-id).
    pub files: Vec<String>,
}

/// An installed ELF file and the build output that corresponds to it.
#[derive(Clone, Debug, Serialize)]
pub struct InstalledFile {
    pub path: String,
    pub package: String,
    pub build_id: String,
    pub rebuilt: Option<String>,
    pub rebuilt_build_id: Option<String>,
    /// `reproduced` (same build-id), `same-load` (another build-id, but every section the
    /// file loads is byte-identical), `differs` (loaded bytes differ: no bundle), `not-built`
    /// (the build made no such file).
    pub status: &'static str,
    /// Why the build-id is not reproduced, in plain words.
    pub reasons: Vec<String>,
    /// What would reproduce it.
    pub remedies: Vec<String>,
}

/// The fix that was built.
#[derive(Clone, Debug, Serialize)]
pub struct FixReport {
    /// Patch files, in the order applied.
    pub patches: Vec<String>,
    /// With `--to`: the newer version they come from.
    pub newer_version: Option<String>,
    /// The diff given to the build (the patches concatenated).
    pub diff: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Seconds {
    pub source: f64,
    pub debian_build: f64,
    pub patch_build: f64,
    pub total: f64,
}

/// What `suture build --deb` did (schema `suture.deb-build/1`, docs/deb.md).
#[derive(Clone, Debug, Serialize)]
pub struct DebReport {
    pub schema: &'static str,
    /// `written`, `refused`, `no-change` (the fix's build), or `prepared` (no fix given).
    pub outcome: &'static str,
    pub source: String,
    pub version: String,
    pub tree: String,
    pub origin: SourceOrigin,
    /// Null when preparing.
    pub fix: Option<FixReport>,
    pub packages: Vec<InstalledPackage>,
    /// Installed binary packages of the same source at another version (`PACKAGE VERSION`),
    /// whose files this build does not patch.
    pub other_versions: Vec<String>,
    pub files: Vec<InstalledFile>,
    /// Whether the Debian build ran now (false: the cached built tree was used).
    pub debian_build_ran: bool,
    /// The `suture.build/1` report of the fix; null when preparing.
    pub build: Option<BuildReport>,
    pub seconds: Seconds,
}

fn err(message: String) -> BuildError {
    BuildError::Deb { message }
}

/// Runs a command; its stdout, or an error with its output's last lines.
fn run(cmd: &mut Command) -> Result<String, BuildError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BuildError::Spawn {
            command: format!("{:?}", cmd.get_program()),
            source,
        })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        return Err(BuildError::ToolFailed {
            command: format!("{cmd:?}"),
            stderr: lines[lines.len().saturating_sub(15)..].join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// debian/changelog and debian/patches/series

/// One entry of `debian/changelog`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub source: String,
    pub version: String,
    /// Byte offset of its header line.
    pub start: usize,
    /// The whole entry (header to trailer).
    pub text: String,
    /// Seconds since the epoch of its trailer's date (0 when unreadable).
    pub date: i64,
}

/// The entries of a `debian/changelog`, newest first.
pub fn changelog(text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut off = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_end();
        let header = !l.starts_with(' ') && !l.is_empty();
        if header {
            if let Some((src, rest)) = l.split_once(" (") {
                if let Some((ver, _)) = rest.split_once(')') {
                    entries.push(Entry {
                        source: src.to_string(),
                        version: ver.to_string(),
                        start: off,
                        text: String::new(),
                        date: 0,
                    });
                }
            }
        }
        if let Some(e) = entries.last_mut() {
            e.text.push_str(line);
            if let Some(t) = l.strip_prefix(" -- ") {
                if let Some((_, date)) = t.split_once(">  ") {
                    e.date = rfc2822(date.trim()).unwrap_or(0);
                }
            }
        }
        off += line.len();
    }
    entries
}

/// Seconds since the epoch of a changelog trailer's date (`Sun, 08 Sep 2024 08:44:19 +0200`).
pub fn rfc2822(s: &str) -> Option<i64> {
    let s = s.split_once(", ").map_or(s, |(_, r)| r);
    let f: Vec<&str> = s.split_whitespace().collect();
    let [day, mon, year, time, zone, ..] = f.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = i64::try_from(months.iter().position(|x| x == mon)? + 1).ok()?;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, sec] = hms.as_slice() else {
        return None;
    };
    let z: i64 = zone.parse().ok()?;
    let zsecs = (z / 100) * 3600 + (z % 100) * 60;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - zsecs)
}

/// The patch names of a quilt `series` file, in order (comments, blank lines and options
/// left out).
pub fn series(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The CVE ids named in `text` (`CVE-2024-8176`, `CVE 2026-33416`), normalised.
pub fn cves(text: &str) -> BTreeSet<String> {
    let up = text.to_ascii_uppercase();
    let b = up.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(p) = up[i..].find("CVE") {
        let mut j = i + p + 3;
        if j < b.len() && matches!(b[j], b'-' | b' ' | b'_') {
            j += 1;
        }
        let year: String = up[j..].chars().take_while(char::is_ascii_digit).collect();
        let k = j + year.len();
        if year.len() == 4 && k < b.len() && matches!(b[k], b'-' | b'_') {
            let num: String = up[k + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if num.len() >= 4 {
                out.insert(format!("CVE-{year}-{num}"));
            }
        }
        i += p + 3;
    }
    out
}

/// The patches the changelog entries newer than `installed` added to `series` (the tail of
/// the series that starts with the first patch naming, in its file name or its header, a CVE
/// that only those newer entries name; Debian appends a security update's patches to the
/// series). `patch_text` gives a patch's contents. `Err` says why none can be told apart.
pub fn added_patches(
    entries: &[Entry],
    series: &[String],
    installed: &str,
    patch_text: &dyn Fn(&str) -> String,
) -> Result<Vec<String>, String> {
    let idx = entries
        .iter()
        .position(|e| e.version == installed)
        .ok_or_else(|| format!("the changelog has no entry for version {installed}"))?;
    if idx == 0 {
        return Ok(Vec::new());
    }
    let newer: BTreeSet<String> = entries[..idx].iter().flat_map(|e| cves(&e.text)).collect();
    let older: BTreeSet<String> = entries[idx..].iter().flat_map(|e| cves(&e.text)).collect();
    let only_newer: BTreeSet<&String> = newer.difference(&older).collect();
    let header = |p: &str| {
        let t = patch_text(p);
        let end = t.find("\n--- ").unwrap_or(t.len());
        t[..end].to_string()
    };
    let first = series.iter().position(|p| {
        let mut c = cves(p);
        if c.is_empty() {
            c = cves(&header(p));
        }
        c.iter().any(|x| only_newer.contains(x))
    });
    match first {
        Some(i) => Ok(series[i..].to_vec()),
        None => Err(format!(
            "no patch of the series names a CVE that only the changelog entries newer than \
             {installed} name ({}): cannot tell which patches they added",
            if only_newer.is_empty() {
                "they name none".to_string()
            } else {
                only_newer
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// dpkg and apt

/// One installed binary package.
#[derive(Clone, Debug)]
struct Installed {
    /// `libexpat1:amd64`
    package: String,
    name: String,
    source: String,
    source_version: String,
    version: String,
}

fn dpkg_installed() -> Result<Vec<Installed>, BuildError> {
    let out = run(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${db:Status-Abbrev}\t${binary:Package}\t${Package}\t${source:Package}\t\
         ${source:Version}\t${Version}\n",
    ]))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let [st, pkg, name, src, sver, ver] = f.as_slice() else {
                return None;
            };
            st.starts_with("ii").then(|| Installed {
                package: pkg.to_string(),
                name: name.to_string(),
                source: src.to_string(),
                source_version: sver.to_string(),
                version: ver.to_string(),
            })
        })
        .collect())
}

/// The installed Debian package that owns `file` (`dpkg -S`, also under the path without
/// `/usr` on merged-/usr systems, where a process maps `/usr/lib/...` that dpkg lists as
/// `/lib/...`), and its version.
pub fn owner(file: &str) -> Option<(String, String)> {
    let query = |args: &[&str]| -> Option<String> {
        let o = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let mut paths = vec![file.to_string()];
    if let Some(rest) = file.strip_prefix("/usr") {
        paths.push(rest.to_string());
    }
    let owner = paths.iter().find_map(|p| query(&["dpkg", "-S", p]))?;
    let package = owner.lines().next()?.split_once(": ")?.0;
    let package = package.split(", ").next()?.to_string();
    let version = query(&["dpkg-query", "-W", "-f", "${Version}", &package])?;
    Some((package, version))
}

/// `dpkg --compare-versions a lt b`.
fn version_lt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .is_ok_and(|s| s.success())
}

/// The versions of source package `src` apt knows (`apt-cache showsrc`), oldest first.
fn known_versions(src: &str) -> Vec<String> {
    let out = Command::new("apt-cache")
        .args(["showsrc", src])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .map(|s| s.trim().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    v.sort_by(|a, b| {
        if version_lt(a, b) {
            std::cmp::Ordering::Less
        } else if version_lt(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    v
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The upstream part of a Debian version (no epoch, no revision).
fn upstream(version: &str) -> &str {
    let v = version.split_once(':').map_or(version, |(_, r)| r);
    v.rsplit_once('-').map_or(v, |(u, _)| u)
}

const STAMP: &str = ".suture-deb-source";

/// `apt-get source` of `src`=`version`, unpacked (patches applied) at
/// CACHE/src/SRC_VERSION/tree. `Ok(None)`: the archive does not have that version.
fn fetch(
    cache: &Path,
    src: &str,
    version: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<PathBuf>, BuildError> {
    let dir = cache.join("src").join(format!("{src}_{version}"));
    let tree = dir.join("tree");
    if tree.join(STAMP).is_file() {
        return Ok(Some(tree));
    }
    let dl = dir.join("download");
    let _ = std::fs::remove_dir_all(&dl);
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&dl).map_err(|e| BuildError::io(&dl, e))?;
    progress(&format!(
        "downloading the source of {src} {version} (apt-get source)"
    ));
    let got = Command::new("apt-get")
        .args([
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "source",
            "--download-only",
        ])
        .arg(format!("{src}={version}"))
        .current_dir(&dl)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| BuildError::Spawn {
            command: "apt-get".into(),
            source,
        })?;
    if !got.success() {
        progress(&format!("the archive does not serve {src} {version}"));
        return Ok(None);
    }
    let dsc = std::fs::read_dir(&dl)
        .map_err(|e| BuildError::io(&dl, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "dsc"))
        .ok_or_else(|| err(format!("apt-get source left no .dsc in {}", dl.display())))?;
    progress(&format!("unpacking {}", dsc.display()));
    run(Command::new("dpkg-source")
        .args(["--no-check", "-x"])
        .arg(&dsc)
        .arg(&tree)
        .current_dir(&dl))?;
    std::fs::write(
        tree.join(STAMP),
        format!("source: {src}\nversion: {version}\norigin: archive\n"),
    )
    .map_err(|e| BuildError::io(&tree, e))?;
    Ok(Some(tree))
}

/// The source of `src` `version` when the archive no longer has it: the nearest newer
/// version the archive has, with the patches its newer changelog entries added reversed
/// and those entries removed. At CACHE/src/SRC_VERSION/tree.
fn reconstruct(
    cache: &Path,
    src: &str,
    version: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, SourceOrigin), BuildError> {
    let dir = cache.join("src").join(format!("{src}_{version}"));
    let tree = dir.join("tree");
    let newer: Vec<String> = known_versions(src)
        .into_iter()
        .filter(|v| version_lt(version, v))
        .collect();
    let mut base = None;
    for v in &newer {
        if let Some(t) = fetch(cache, src, v, progress)? {
            base = Some((v.clone(), t));
            break;
        }
    }
    let Some((from, base)) = base else {
        return Err(err(format!(
            "the archive serves neither {src} {version} nor a newer version of it (apt knows: \
             {}); check the deb-src entries of apt's sources",
            newer.join(", ")
        )));
    };
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| BuildError::io(p, e));
    let text = read(&base.join("debian/changelog"))?;
    let entries = changelog(&text);
    let series_path = base.join("debian/patches/series");
    let series_text = read(&series_path).unwrap_or_default();
    let list = series(&series_text);
    let patches = base.join("debian/patches");
    let dropped = added_patches(&entries, &list, version, &|p| {
        std::fs::read_to_string(patches.join(p)).unwrap_or_default()
    })
    .map_err(|why| {
        err(format!(
            "cannot reconstruct {src} {version} from {from}: {why}"
        ))
    })?;
    if tree.join(STAMP).is_file() {
        return Ok((
            tree,
            SourceOrigin {
                kind: "reconstructed",
                from_version: Some(from),
                dropped_patches: dropped,
            },
        ));
    }
    progress(&format!(
        "reconstructing {src} {version} from {from}: reversing {}",
        dropped.join(", ")
    ));
    let tmp = dir.join("tree.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
    run(Command::new("cp").arg("-a").arg(&base).arg(&tmp))?;
    for p in dropped.iter().rev() {
        run(Command::new("patch")
            .args(["-R", "-p1", "-s", "-f", "--no-backup-if-mismatch", "-i"])
            .arg(tmp.join("debian/patches").join(p))
            .current_dir(&tmp))?;
        let _ = std::fs::remove_dir_all(tmp.join(".pc").join(p));
        let _ = std::fs::remove_file(tmp.join("debian/patches").join(p));
    }
    let keep = |t: &str| -> String {
        t.lines()
            .filter(|l| {
                !dropped
                    .iter()
                    .any(|d| l.split_whitespace().next() == Some(d))
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let write = |p: &Path, t: &str| std::fs::write(p, t).map_err(|e| BuildError::io(p, e));
    write(&tmp.join("debian/patches/series"), &keep(&series_text))?;
    let applied = tmp.join(".pc/applied-patches");
    if let Ok(t) = std::fs::read_to_string(&applied) {
        write(&applied, &keep(&t))?;
    }
    let idx = entries
        .iter()
        .position(|e| e.version == version)
        .expect("added_patches found the entry");
    write(&tmp.join("debian/changelog"), &text[entries[idx].start..])?;
    write(
        &tmp.join(STAMP),
        &format!(
            "source: {src}\nversion: {version}\norigin: reconstructed from {from}\ndropped: {}\n",
            dropped.join(" ")
        ),
    )?;
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::rename(&tmp, &tree).map_err(|e| BuildError::io(&tree, e))?;
    Ok((
        tree,
        SourceOrigin {
            kind: "reconstructed",
            from_version: Some(from),
            dropped_patches: dropped,
        },
    ))
}

/// The source tree of `src` `version`: from the archive, else reconstructed.
fn source_tree(
    cache: &Path,
    src: &str,
    version: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, SourceOrigin), BuildError> {
    let tree = cache.join("src").join(format!("{src}_{version}/tree"));
    if let Ok(stamp) = std::fs::read_to_string(tree.join(STAMP)) {
        if stamp.contains("origin: archive") {
            return Ok((tree, SourceOrigin::archive()));
        }
        return reconstruct(cache, src, version, progress);
    }
    match fetch(cache, src, version, progress)? {
        Some(t) => Ok((t, SourceOrigin::archive())),
        None => reconstruct(cache, src, version, progress),
    }
}

/// The ELF files (with a build-id) that package `pkg` installed.
fn elf_files(pkg: &str) -> Result<Vec<(PathBuf, ElfInfo)>, BuildError> {
    let out = run(Command::new("dpkg").args(["-L", pkg]))?;
    let mut seen = BTreeSet::new();
    let mut v = Vec::new();
    for l in out.lines() {
        let p = Path::new(l);
        let Ok(m) = std::fs::symlink_metadata(p) else {
            continue;
        };
        if !m.is_file() {
            continue;
        }
        let Ok(canon) = p.canonicalize() else {
            continue;
        };
        if !seen.insert(canon) {
            continue;
        }
        let mut head = [0u8; 18];
        let ok = std::fs::File::open(p)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok();
        if !ok || head[..4] != *b"\x7fELF" || !matches!(head[16], 2 | 3) {
            continue;
        }
        if let Ok(info) = ElfInfo::read(p) {
            if info.build_id.is_some() {
                v.push((p.to_path_buf(), info));
            }
        }
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// The Debian build and the comparison with what is installed

/// `dpkg-checkbuilddeps`; installs what is missing with `apt-get build-dep` when allowed.
fn build_deps(
    tree: &Path,
    install: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let out = Command::new("dpkg-checkbuilddeps")
        .current_dir(tree)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BuildError::Spawn {
            command: "dpkg-checkbuilddeps".into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let missing = said
        .split_once("Unmet build dependencies:")
        .map_or(said.trim(), |(_, m)| m.trim())
        .to_string();
    if !install || !is_root() {
        return Err(err(format!(
            "build dependencies missing: {missing}; install them (as root: apt-get build-dep \
             {})",
            tree.display()
        )));
    }
    progress(&format!("installing build dependencies: {missing}"));
    run(Command::new("apt-get")
        .args([
            "-q",
            "-y",
            "--no-install-recommends",
            "-o",
            "DPkg::Lock::Timeout=300",
            "build-dep",
        ])
        .arg(tree)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// The build command: Debian's `build` target with the changelog's `SOURCE_DATE_EPOCH`
/// (as dpkg-buildpackage sets it), tests off.
pub fn build_command(jobs: usize) -> String {
    format!(
        "SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -STimestamp) \
         DEB_BUILD_OPTIONS=\"nocheck parallel={jobs}\" debian/rules build"
    )
}

/// The `(Debian VERSION)` of a `.comment` string (`GCC: (Debian 12.2.0-14+deb12u1) 12.2.0`)
/// and the compiler's major version.
fn debian_compiler(comment: &[String]) -> Option<(String, String)> {
    comment.iter().find_map(|c| {
        let rest = c.strip_prefix("GCC: (Debian ")?;
        let (ver, _) = rest.split_once(')')?;
        let major = ver.split('.').next()?.to_string();
        Some((ver.to_string(), major))
    })
}

/// The date of the newest entry of a package's installed Debian changelog.
fn installed_changelog_date(pkg: &str) -> Option<i64> {
    let p = format!("/usr/share/doc/{pkg}/changelog.Debian.gz");
    let out = Command::new("zcat")
        .arg(&p)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let head: String = text.lines().take(400).map(|l| format!("{l}\n")).collect();
    changelog(&head).first().map(|e| e.date).filter(|d| *d > 0)
}

fn day(t: i64) -> String {
    Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Why `rebuilt` does not have `installed`'s build-id, and what would fix it.
struct Why {
    reasons: Vec<String>,
    remedies: Vec<String>,
}

fn explain(
    (installed, rebuilt): (&ElfInfo, &ElfInfo),
    tree: &Path,
    (src, version, built): (&str, &str, i64),
    loaded: &[String],
) -> Why {
    let mut w = Why {
        reasons: Vec::new(),
        remedies: Vec::new(),
    };
    if loaded.is_empty() {
        w.reasons.push(
            "every section the installed file loads is byte-identical to the rebuild's: the \
             builds differ only in parts the package strips (the compiler's version string in \
             .comment, debug information)"
                .into(),
        );
    } else {
        w.reasons.push(format!(
            "the code or data it loads differs from the rebuild's: {}",
            loaded.join(", ")
        ));
    }
    if let Some((cver, major)) = debian_compiler(&rebuilt.comment) {
        match installed_changelog_date(&format!("gcc-{major}-base")) {
            Some(cdate) if cdate > built => {
                w.reasons.push(format!(
                    "compiler differs: the rebuild used gcc-{major} {cver} (Debian changelog of \
                     {}), newer than {src} {version} (built after {}): Debian built it with an \
                     earlier gcc-{major}, whose version string is in the original's .comment",
                    day(cdate),
                    day(built)
                ));
                w.remedies.push(format!(
                    "build with the gcc-{major} version named in the package's .buildinfo (Debian's \
                     snapshot archive has it) to reproduce the build-id exactly"
                ));
            }
            _ => {}
        }
    }
    if installed.comment.is_empty() && !rebuilt.comment.is_empty() {
        w.reasons.push(format!(
            "the installed file has no .comment (stripped by the package build); the rebuild's \
             says {}",
            rebuilt.comment.join("; ")
        ));
    }
    let t = tree.as_os_str().as_encoded_bytes();
    if rebuilt.data.windows(t.len()).any(|x| x == t) {
        w.reasons.push(format!(
            "build path embedded: the rebuild names its build directory {} (debug information); \
             Debian's buildd built in another directory",
            tree.display()
        ));
        w.remedies.push(
            "build under the Build-Path of the package's .buildinfo (e.g. \
             /build/reproducible-path/<source>-<version>)"
                .into(),
        );
    }
    if !loaded.is_empty() {
        w.reasons.push(
            "dependency versions may differ: no .buildinfo of this build is available here, so \
             the build dependencies installed now (dpkg -l) cannot be compared with Debian's"
                .into(),
        );
        w.remedies.push(
            "install the build dependencies at the versions of the package's .buildinfo \
             (Installed-Build-Depends), then build again"
                .into(),
        );
    }
    w
}

/// Matches the installed files with the build's outputs and explains each mismatch.
fn compare(
    packages: &[(String, Vec<(PathBuf, ElfInfo)>)],
    graph: &Graph,
    tree: &Path,
    entry: (&str, &str, i64),
) -> Vec<InstalledFile> {
    let outputs: Vec<(PathBuf, ElfInfo)> = graph
        .links
        .iter()
        .map(|l| l.output.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|p| Some((p.clone(), ElfInfo::read(&p).ok()?)))
        .collect();
    let mut files = Vec::new();
    for (pkg, elfs) in packages {
        for (path, info) in elfs {
            let by_id = outputs
                .iter()
                .find(|(_, o)| o.build_id.is_some() && o.build_id == info.build_id);
            let by_name = || {
                let named: Vec<&(PathBuf, ElfInfo)> = outputs
                    .iter()
                    .filter(|(_, o)| {
                        o.file_name() == info.file_name()
                            || (o.soname.is_some() && o.soname == info.soname)
                    })
                    .collect();
                match named.as_slice() {
                    [one] => Some(*one),
                    _ => None,
                }
            };
            let found = by_id.or_else(by_name);
            let mut f = InstalledFile {
                path: path.display().to_string(),
                package: pkg.clone(),
                build_id: info.build_id.as_deref().map(hex).unwrap_or_default(),
                rebuilt: None,
                rebuilt_build_id: None,
                status: "not-built",
                reasons: Vec::new(),
                remedies: Vec::new(),
            };
            let Some((out, o)) = found else {
                f.reasons
                    .push("the build made no file with its build-id or name".into());
                files.push(f);
                continue;
            };
            f.rebuilt = Some(out.display().to_string());
            f.rebuilt_build_id = o.build_id.as_deref().map(hex);
            if o.build_id == info.build_id {
                f.status = "reproduced";
            } else {
                let loaded = loaded_differences(&o.data, &info.data)
                    .unwrap_or_else(|e| vec![format!("unreadable: {e}")]);
                f.status = if loaded.is_empty() {
                    "same-load"
                } else {
                    "differs"
                };
                let w = explain((info, o), tree, entry, &loaded);
                f.reasons = w.reasons;
                f.remedies = w.remedies;
            }
            files.push(f);
        }
    }
    files
}

// ---------------------------------------------------------------------------------------------
// The pipeline

/// The source package, its version, the installed binary packages of that version, and those
/// of other versions of the same source (a partial upgrade: their files are left alone).
fn resolve(spec: &DebSpec) -> Result<(String, String, Vec<Installed>, Vec<Installed>), BuildError> {
    let all = dpkg_installed()?;
    let (src, version) = match spec {
        DebSpec::Package { name, version } => {
            let named = all.iter().find(|i| &i.name == name || &i.package == name);
            let src = named.map_or_else(|| name.clone(), |i| i.source.clone());
            // The named binary package's version, else (a source package named) the newest
            // installed binary package's of that source.
            let installed = named.map(|i| i.source_version.clone()).or_else(|| {
                all.iter()
                    .filter(|i| i.source == src)
                    .map(|i| i.source_version.clone())
                    .reduce(|a, b| if version_lt(&a, &b) { b } else { a })
            });
            let v = version.clone().or(installed).ok_or_else(|| {
                err(format!(
                    "no installed package comes from the source package {src}: nothing to patch"
                ))
            })?;
            (src, v)
        }
        DebSpec::Dir(dir) => {
            let p = dir.join("debian/changelog");
            let text = std::fs::read_to_string(&p).map_err(|e| BuildError::io(&p, e))?;
            let top = changelog(&text)
                .into_iter()
                .next()
                .ok_or_else(|| err(format!("{} has no changelog entry", p.display())))?;
            (top.source, top.version)
        }
    };
    let (bins, others): (Vec<Installed>, Vec<Installed>) = all
        .into_iter()
        .filter(|i| i.source == src)
        .partition(|i| i.source_version == version);
    if bins.is_empty() {
        let what = others
            .iter()
            .map(|o| format!("{} {} (source {})", o.package, o.version, o.source_version))
            .collect::<Vec<_>>();
        return Err(err(if what.is_empty() {
            format!("no installed package comes from the source package {src}: nothing to patch")
        } else {
            format!(
                "no installed package comes from {src} {version} (installed: {}): build the \
                 installed version",
                what.join(", ")
            )
        }));
    }
    Ok((src, version, bins, others))
}

/// The patches `newer` has in its series that `older`'s series lacks, in series order.
fn newer_patches(older: &Path, newer: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let s = |t: &Path| {
        let p = t.join("debian/patches/series");
        std::fs::read_to_string(&p)
            .map(|x| series(&x))
            .map_err(|e| BuildError::io(&p, e))
    };
    let have: BTreeSet<String> = s(older).unwrap_or_default().into_iter().collect();
    Ok(s(newer)?
        .into_iter()
        .filter(|p| !have.contains(p))
        .map(|p| newer.join("debian/patches").join(p))
        .collect())
}

/// Runs `suture build --deb` (see the module documentation).
pub fn build(opts: &DebOptions, progress: &mut dyn FnMut(&str)) -> Result<DebReport, BuildError> {
    let t0 = Instant::now();
    let cache = abs(&opts.cache);
    let (src, version, bins, others) = resolve(&opts.spec)?;
    progress(&format!(
        "{src} {version}: installed binary packages {}",
        bins.iter()
            .map(|b| b.package.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let other_versions: Vec<String> = others
        .iter()
        .map(|o| format!("{} {}", o.package, o.version))
        .collect();
    if !other_versions.is_empty() {
        progress(&format!(
            "left alone (installed from another version of {src}): {}",
            other_versions.join(", ")
        ));
    }
    let (source, origin) = match &opts.spec {
        DebSpec::Dir(d) => (
            abs(d),
            SourceOrigin {
                kind: "directory",
                ..SourceOrigin::archive()
            },
        ),
        DebSpec::Package { .. } => source_tree(&cache, &src, &version, progress)?,
    };

    // The fix.
    let (patches, newer_version) = match &opts.fix {
        DebFix::Prepare => (Vec::new(), None),
        DebFix::Patches(p) => (p.iter().map(|x| abs(x)).collect::<Vec<_>>(), None),
        DebFix::To(v) => {
            if !version_lt(&version, v) {
                return Err(err(format!("--to {v} is not newer than {src} {version}")));
            }
            let newer = fetch(&cache, &src, v, progress)?.ok_or_else(|| {
                err(format!(
                    "the archive does not serve {src} {v} (apt knows: {})",
                    known_versions(&src).join(", ")
                ))
            })?;
            let p = newer_patches(&source, &newer)?;
            if p.is_empty() {
                return Err(err(format!(
                    "{src} {v} adds no patch to debian/patches/series of {version}"
                )));
            }
            (p, Some(v.clone()))
        }
    };
    let state = abs(&opts.out_dir).join(".suture-deb");
    std::fs::create_dir_all(&state).map_err(|e| BuildError::io(&state, e))?;
    let mut diff_text = String::new();
    for p in &patches {
        let t = std::fs::read_to_string(p).map_err(|source| BuildError::ReadFix {
            path: p.display().to_string(),
            source,
        })?;
        diff_text.push_str(&t);
        if !diff_text.ends_with('\n') {
            diff_text.push('\n');
        }
    }
    let stem = match (&newer_version, patches.first()) {
        (Some(v), _) => format!("{src}-{v}"),
        (None, Some(p)) => p
            .file_stem()
            .map_or_else(|| "fix".into(), |s| s.to_string_lossy().into_owned()),
        (None, None) => "prepare".into(),
    };
    let diff = state.join(format!("{stem}.diff"));
    if !patches.is_empty() {
        std::fs::write(&diff, &diff_text).map_err(|e| BuildError::io(&diff, e))?;
    }
    if !patches.is_empty() {
        progress(&format!(
            "the fix: {}",
            patches
                .iter()
                .map(|p| p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let t_source = t0.elapsed().as_secs_f64();

    // The Debian build, once per tree (a copy of the source, which stays pristine).
    let t1 = Instant::now();
    let tree = match &opts.spec {
        DebSpec::Dir(_) => source.clone(),
        DebSpec::Package { .. } => cache
            .join("build")
            .join(format!("{src}_{version}"))
            .join(format!("{src}-{}", upstream(&version))),
    };
    let built_stamp = tree.join(".suture-deb-built");
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cmd = build_command(jobs);
    let records = crate::records_dir(&tree, &state);
    let ran = !built_stamp.is_file();
    if ran {
        if tree != source {
            let _ = std::fs::remove_dir_all(&tree);
            if let Some(parent) = tree.parent() {
                std::fs::create_dir_all(parent).map_err(|e| BuildError::io(parent, e))?;
            }
            run(Command::new("cp").arg("-a").arg(&source).arg(&tree))?;
            // Records of an earlier tree at this path describe files that are gone.
            let _ = std::fs::remove_dir_all(&records);
        }
        build_deps(&tree, opts.install_build_deps, progress)?;
        progress(&format!("building {src} {version} the Debian way: {cmd}"));
        let log = state.join("debian-build.log");
        crate::run_build((&cmd, &opts.wrapper_exe), &tree, &records, &log, progress)?;
        std::fs::write(&built_stamp, format!("{cmd}\n")).map_err(|e| BuildError::io(&tree, e))?;
    } else {
        progress(&format!(
            "{src} {version} is built already in {}",
            tree.display()
        ));
    }
    let graph = Graph::new(&record::read_log(&records.join("commands.jsonl")));
    let t_debian = t1.elapsed().as_secs_f64();

    // What is installed, against what the build made.
    let mut packages = Vec::new();
    let mut elfs = Vec::new();
    for b in &bins {
        let files = elf_files(&b.package)?;
        packages.push(InstalledPackage {
            package: b.package.clone(),
            version: b.version.clone(),
            files: files.iter().map(|(p, _)| p.display().to_string()).collect(),
        });
        elfs.push((b.package.clone(), files));
    }
    let text = std::fs::read_to_string(tree.join("debian/changelog")).unwrap_or_default();
    let built = changelog(&text).first().map_or(0, |e| e.date);
    let files = compare(&elfs, &graph, &tree, (&src, &version, built));
    for f in &files {
        let mut line = format!("{} ({}): {}", f.path, f.package, f.status);
        if let Some(r) = &f.rebuilt {
            line += &format!(
                " (build-id {} vs rebuild {r} {})",
                f.build_id,
                f.rebuilt_build_id.as_deref().unwrap_or("-")
            );
        }
        progress(&line);
        for r in &f.reasons {
            progress(&format!("  why: {r}"));
        }
        for r in &f.remedies {
            progress(&format!("  to reproduce it: {r}"));
        }
    }
    let targets: Vec<PathBuf> = files
        .iter()
        .filter(|f| matches!(f.status, "reproduced" | "same-load"))
        .map(|f| PathBuf::from(&f.path))
        .collect();
    if targets.is_empty() {
        return Err(err(format!(
            "no installed file of {src} {version} is matched by the rebuild (see the reasons \
             above); nothing can be bound"
        )));
    }

    let fix = FixReport {
        patches: patches.iter().map(|p| p.display().to_string()).collect(),
        newer_version,
        diff: diff.display().to_string(),
    };
    let report = |outcome, fix, build, patch_build| DebReport {
        schema: "suture.deb-build/1",
        outcome,
        source: src.clone(),
        version: version.clone(),
        tree: tree.display().to_string(),
        origin: origin.clone(),
        fix,
        packages: packages.clone(),
        other_versions: other_versions.clone(),
        files: files.clone(),
        debian_build_ran: ran,
        build,
        seconds: Seconds {
            source: t_source,
            debian_build: t_debian,
            patch_build,
            total: t0.elapsed().as_secs_f64(),
        },
    };
    if patches.is_empty() {
        progress("prepared: a fix given later (--patch or --to) reuses this build");
        return Ok(report("prepared", None, None, 0.0));
    }

    // The fix, through the ordinary pipeline on the built tree.
    let t2 = Instant::now();
    let bopts = BuildOptions {
        source: tree.clone(),
        diff: diff.clone(),
        build_cmd: cmd,
        targets,
        out_dir: opts.out_dir.clone(),
        patch_id: Some(opts.patch_id.clone().unwrap_or(stem)),
        created_by: opts.created_by.clone(),
        debug_dirs: opts.debug_dirs.clone(),
        wrapper_exe: opts.wrapper_exe.clone(),
        diff_options: opts.diff_options.clone(),
    };
    let built = crate::build(&bopts, progress)?;
    let outcome = match built.outcome {
        Outcome::Written => "written",
        Outcome::Refused => "refused",
        Outcome::NoChange => "no-change",
    };
    Ok(report(
        outcome,
        Some(fix),
        Some(built),
        t2.elapsed().as_secs_f64(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGELOG: &str = "\
expat (2.5.0-1+deb12u2) bookworm; urgency=medium

  * Backport security fix for CVE-2023-52425: denial of service.
  * Backport security fix for CVE-2024-50602: crash within XML_ResumeParser().

 -- Laszlo Boszormenyi (GCS) <gcs@debian.org>  Sat, 05 Apr 2025 07:36:55 +0200

expat (2.5.0-1+deb12u1) bookworm-security; urgency=medium

  * Backport security fix for CVE-2024-45490: reject negative len.

 -- Laszlo Boszormenyi (GCS) <gcs@debian.org>  Sun, 08 Sep 2024 08:44:19 +0200
";

    #[test]
    fn changelog_entries_versions_and_dates() {
        let e = changelog(CHANGELOG);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].source, "expat");
        assert_eq!(e[0].version, "2.5.0-1+deb12u2");
        assert_eq!(e[1].version, "2.5.0-1+deb12u1");
        assert!(CHANGELOG[e[1].start..].starts_with("expat (2.5.0-1+deb12u1)"));
        // date -d 'Sun, 08 Sep 2024 08:44:19 +0200' +%s
        assert_eq!(e[1].date, 1_725_777_859);
        assert_eq!(
            rfc2822("Sat, 05 Apr 2025 07:36:55 +0200"),
            Some(1_743_831_415)
        );
    }

    #[test]
    fn cve_ids_in_names_and_prose() {
        let c = cves("expat-2.5.0-CVE-2024-8176.patch; fix for previously fixed CVE 2026-33416");
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            ["CVE-2024-8176", "CVE-2026-33416"]
        );
        assert!(cves("CVE-20-1").is_empty());
    }

    #[test]
    fn added_patches_are_the_tail_from_the_first_newer_cve() {
        let e = changelog(CHANGELOG);
        let s = series("fix.patch\nCVE-2024-45490.patch\n# x\nexpat-2.5.0-CVE-2023-52425.patch\nexpat-2.5.0-CVE-2024-50602.patch\nfollow-up.patch -p1\n");
        let got = added_patches(&e, &s, "2.5.0-1+deb12u1", &|_| String::new()).unwrap();
        assert_eq!(
            got,
            [
                "expat-2.5.0-CVE-2023-52425.patch",
                "expat-2.5.0-CVE-2024-50602.patch",
                "follow-up.patch"
            ]
        );
        assert!(added_patches(&e, &s, "2.5.0-1+deb12u2", &|_| String::new())
            .unwrap()
            .is_empty());
        // A CVE named only in a patch's header counts too.
        let s = series("a.patch\nb.patch\n");
        let got = added_patches(&e, &s, "2.5.0-1+deb12u1", &|p| {
            if p == "b.patch" {
                "Description: fix\nBug: CVE-2024-50602\n--- a/x\n+++ b/x\n".into()
            } else {
                String::new()
            }
        })
        .unwrap();
        assert_eq!(got, ["b.patch"]);
        assert!(added_patches(&e, &s, "1.0", &|_| String::new()).is_err());
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(
            DebSpec::parse("libexpat1=2.5.0-1+deb12u1"),
            DebSpec::Package {
                name: "libexpat1".into(),
                version: Some("2.5.0-1+deb12u1".into())
            }
        );
        assert_eq!(
            DebSpec::parse("./src"),
            DebSpec::Dir(PathBuf::from("./src"))
        );
        assert_eq!(upstream("1:1.2.13.dfsg-1"), "1.2.13.dfsg");
        assert_eq!(upstream("2.5.0-1+deb12u1"), "2.5.0");
    }
}
