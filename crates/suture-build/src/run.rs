//! The `suture build` pipeline (see the crate documentation for the steps).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use suture_bundle::{hex, Bundle, Function, Manifest, Target, Unit as BundleUnit};
use suture_object::report::{Report, Status};

use crate::bind::{self, Wanted};
use crate::elfinfo::ElfInfo;
use crate::patchset::{self, FileKind, Touched};
use crate::record;
use crate::sandbox::Mount;
use crate::units::{Compiler, Graph};
use crate::{abs, tail, BuildError};

/// Inputs of [`build`].
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The source tree, in the state of the deployed build.
    pub source: PathBuf,
    /// The fix, a unified diff (paths relative to `source`, with or without `a/` `b/`).
    pub diff: PathBuf,
    /// The project's build command, run with `sh -c` in `source`.
    pub build_cmd: String,
    /// Deployed files to bind bundles to (none: bind to the build's own outputs).
    pub targets: Vec<PathBuf>,
    /// Where bundles, the build log and suture's working files go.
    pub out_dir: PathBuf,
    /// Patch id recorded in processes (default: the diff's file stem).
    pub patch_id: Option<String>,
    /// `suture <version>`, recorded in manifests.
    pub created_by: String,
    /// Directories holding `.build-id/xx/yyyy.debug` files.
    pub debug_dirs: Vec<PathBuf>,
    /// The program to run as the compiler wrapper (the `suture` binary).
    pub wrapper_exe: PathBuf,
    /// How units are diffed (e.g. keep functions whose only change is a moved line number).
    pub diff_options: suture_object::Options,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Bundles were written.
    Written,
    /// At least one change cannot be live-patched; nothing written.
    Refused,
    /// The diff changes nothing in any compiled output; nothing written.
    NoChange,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    pub file: String,
    pub kind: FileKind,
    /// `patched`, `no-change`, `not-compiled`, `refused`.
    pub verdict: &'static str,
    pub detail: String,
    /// Translation units rebuilt for this file (sources relative to the tree).
    pub units: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UnsupportedItem {
    pub symbol: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct UnitReport {
    pub source: String,
    pub object: Option<String>,
    pub outputs: Vec<String>,
    /// `patchable`, `no-change`, `unsupported` (the differ's verdict).
    pub status: Status,
    pub changed_functions: Vec<String>,
    pub unsupported: Vec<UnsupportedItem>,
    /// Functions whose only change is a moved source line number (left out of the patch
    /// unless `include_line_shifts`).
    pub line_shifts: Vec<String>,
    /// On-stack replacement per replaced function (docs/osr.md).
    pub osr: Vec<OsrSummary>,
}

/// Whether frames of a replaced function that wait in a call can move to the patched code.
#[derive(Clone, Debug, Serialize)]
pub struct OsrSummary {
    pub function: String,
    /// Why the function is likely to be on a stack when the patch is applied (`main`, a loop
    /// around a waiting call, an entry point), or null.
    pub on_stack: Option<String>,
    /// Call sites whose waiting frames move (apply) / move back (revert).
    pub sites: usize,
    pub sites_back: usize,
    /// Call sites that cannot, with the reason.
    pub refused: Vec<suture_object::osr::OsrRefusal>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    pub file: String,
    pub symbol: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BundleReport {
    pub path: String,
    /// The build's output the patch was computed for.
    pub output: String,
    /// The file the bundle is bound to (a `--target`, or the output itself).
    pub target: String,
    pub build_id: String,
    pub twin: suture_bundle::Twin,
    pub functions: Vec<String>,
    pub units: Vec<String>,
    pub symbols_verified: usize,
}

fn osr_summaries(r: &suture_object::Report) -> Vec<OsrSummary> {
    r.changed_functions
        .iter()
        .filter_map(|f| {
            let t = f.osr.as_ref()?;
            Some(OsrSummary {
                function: f.name.clone(),
                on_stack: t.on_stack.clone(),
                sites: t.forward.len(),
                sites_back: t.backward.len(),
                refused: t.refused.clone(),
            })
        })
        .collect()
}

/// The note for a replaced function that is usually on a stack: whether waiting frames can
/// move (an apply would otherwise wait for it to return).
fn osr_note(src: &str, o: &OsrSummary, why: &str) -> String {
    let total = o.sites + o.refused.len();
    let mut note = format!(
        "{src}: {} is usually on a stack ({why}); on-stack replacement moves frames waiting at \
         {} of its {total} call sites to the fix (and {} back on revert)",
        o.function, o.sites, o.sites_back
    );
    if let Some(r) = o.refused.first() {
        let call = if r.callee.is_empty() {
            "an indirect call".to_string()
        } else {
            format!("the call to {}", r.callee)
        };
        note.push_str(&format!("; not at +{:#x} ({call}): {}", r.at, r.reason));
        if o.refused.len() > 1 {
            note.push_str(&format!(" (and {} more, see --json)", o.refused.len() - 1));
        }
        note.push_str(
            "; a thread waiting there holds a plain apply up: `suture apply --transition` \
             switches every other thread at once and lets it finish in the old code",
        );
    }
    note
}

/// Whether a compile command enables link-time optimisation (the last of `-flto[=...]` and
/// `-fno-lto` wins).
fn uses_lto(args: &[String]) -> bool {
    args.iter().fold(false, |on, a| {
        if a == "-flto" || a.starts_with("-flto=") {
            true
        } else if a == "-fno-lto" {
            false
        } else {
            on
        }
    })
}

/// What `suture build` did (schema `suture.build/1`, printed by `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    pub schema: &'static str,
    pub outcome: Outcome,
    pub files: Vec<FileReport>,
    pub units: Vec<UnitReport>,
    pub refusals: Vec<Refusal>,
    pub bundles: Vec<BundleReport>,
    /// Outputs the fix changes that got no bundle (no `--target` names them).
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
    pub build_log: String,
}

/// An object-file failure about `what`.
fn analysis(what: String) -> impl FnOnce(suture_object::Error) -> BuildError {
    move |source| BuildError::Analysis { what, source }
}

fn rel(source: &Path, p: &Path) -> String {
    p.strip_prefix(source).unwrap_or(p).display().to_string()
}

/// Creates the wrapper directory: a symlink to the wrapper for every compiler name in PATH.
fn wrapper_dir(dir: &Path, exe: &Path) -> Result<(), BuildError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| BuildError::io(dir, e))?;
    let mut names = BTreeSet::new();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    if record::is_compiler_name(n) {
                        names.insert(n.to_string());
                    }
                }
            }
        }
    }
    for n in names {
        let link = dir.join(&n);
        std::os::unix::fs::symlink(exe, &link).map_err(|e| BuildError::io(&link, e))?;
    }
    Ok(())
}

/// Where the records of a source tree's builds live: they outlast one run, so a second
/// `suture build` on an already built tree (where make compiles nothing) still knows every
/// command. `$SUTURE_CACHE_DIR`, else `$XDG_CACHE_HOME/suture`, else `~/.cache/suture`; one
/// directory per source tree (by the SHA-256 of its canonical path).
pub fn records_dir(source: &Path, out_dir: &Path) -> PathBuf {
    let base = std::env::var_os("SUTURE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("suture")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/suture")))
        .unwrap_or_else(|| out_dir.join(".suture"));
    let key = suture_bundle::sha256_hex(source.as_os_str().as_encoded_bytes());
    base.join("build").join(&key[..16])
}

/// Runs `build_cmd` (with `sh -c`, in `source`) with the compiler wrapper `wrapper_exe`
/// first in `PATH`, its output in `log`; the commands it ran are appended to the tree's
/// records in `records` (see [`records_dir`]). Returns every recorded invocation, of this run
/// and of earlier ones.
pub fn run_build(
    (build_cmd, wrapper_exe): (&str, &Path),
    source: &Path,
    records: &Path,
    log: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<record::Invocation>, BuildError> {
    std::fs::create_dir_all(records).map_err(|e| BuildError::io(records, e))?;
    std::fs::write(
        records.join("source"),
        source.as_os_str().as_encoded_bytes(),
    )
    .map_err(|e| BuildError::io(records, e))?;
    // A stable path: build systems that cache the compiler's path (CMake) find it next time.
    let wrap = records.join("bin");
    wrapper_dir(&wrap, wrapper_exe)?;
    let commands = records.join("commands.jsonl");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![wrap.clone()];
    paths.extend(std::env::split_paths(&path));
    let new_path = std::env::join_paths(paths).map_err(|source| BuildError::WrapperPath {
        dir: wrap.display().to_string(),
        source,
    })?;
    progress(&format!(
        "running the build: {} (in {}, log {})",
        build_cmd,
        source.display(),
        log.display()
    ));
    let logf = std::fs::File::create(log).map_err(|e| BuildError::io(log, e))?;
    let errf = logf.try_clone().map_err(|e| BuildError::io(log, e))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(build_cmd)
        .current_dir(source)
        .env("PATH", new_path)
        .env(record::LOG_ENV, &commands)
        .env(record::WRAP_DIR_ENV, &wrap)
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(errf)
        .status()
        .map_err(|source| BuildError::Spawn {
            command: "sh".into(),
            source,
        })?;
    if !status.success() {
        return Err(BuildError::BuildFailed {
            cmd: build_cmd.to_string(),
            status: status.to_string(),
            log: log.display().to_string(),
            tail: tail(log, 30),
        });
    }
    Ok(record::read_log(&commands))
}

/// Merges several units' patch objects into one (`ld -r`), with one combined
/// `.suture.patch` manifest (the per-unit ones would otherwise be concatenated).
fn merge(objects: &[Vec<u8>], reports: &[Report], dir: &Path) -> Result<Vec<u8>, BuildError> {
    if let [one] = objects {
        return Ok(one.clone());
    }
    std::fs::create_dir_all(dir).map_err(|e| BuildError::io(dir, e))?;
    let run = |cmd: &mut Command| -> Result<(), BuildError> {
        let out = cmd.output().map_err(|source| BuildError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        if !out.status.success() {
            return Err(BuildError::ToolFailed {
                command: format!("{cmd:?}"),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    };
    let mut stripped = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let p = dir.join(format!("unit{i}.o"));
        std::fs::write(&p, o).map_err(|e| BuildError::io(&p, e))?;
        let s = dir.join(format!("unit{i}.nomanifest.o"));
        run(Command::new("objcopy")
            .arg(format!(
                "--remove-section={}",
                suture_object::emit::MANIFEST_SECTION
            ))
            .arg(&p)
            .arg(&s))?;
        stripped.push(s);
    }
    let merged = dir.join("merged.o");
    run(Command::new("ld")
        .arg("-r")
        .arg("-o")
        .arg(&merged)
        .args(&stripped))?;
    let mut manifest =
        serde_json::to_value(&reports[0]).map_err(BuildError::encode("the merged manifest"))?;
    for r in &reports[1..] {
        let v = serde_json::to_value(r).map_err(BuildError::encode("the merged manifest"))?;
        for key in [
            "changed_functions",
            "new_functions",
            "new_data",
            "references",
            "unsupported",
            "removed_functions",
        ] {
            if let (Some(a), Some(b)) = (manifest[key].as_array_mut(), v[key].as_array()) {
                a.extend(b.iter().cloned());
            }
        }
    }
    manifest["source_file"] = serde_json::Value::Null;
    let mpath = dir.join("manifest.json");
    std::fs::write(&mpath, manifest.to_string()).map_err(|e| BuildError::io(&mpath, e))?;
    let fin = dir.join("patch.o");
    run(Command::new("objcopy")
        .arg("--add-section")
        .arg(format!(
            "{}={}",
            suture_object::emit::MANIFEST_SECTION,
            mpath.display()
        ))
        .arg(&merged)
        .arg(&fin))?;
    std::fs::read(&fin).map_err(|e| BuildError::io(&fin, e))
}

struct UnitResult {
    idx: usize,
    report: Report,
    patch: Option<Vec<u8>>,
}

/// Where one run works: the canonical source tree, the output directory and suture's state in
/// it, and the fixed `SOURCE_DATE_EPOCH` of both compiles.
struct Workspace {
    source: PathBuf,
    diff_text: String,
    out_dir: PathBuf,
    state: PathBuf,
    work: PathBuf,
    epoch: String,
}

impl Workspace {
    fn prepare(opts: &BuildOptions) -> Result<Workspace, BuildError> {
        let source = opts
            .source
            .canonicalize()
            .map_err(|e| BuildError::io(&opts.source, e))?;
        if !source.is_dir() {
            return Err(BuildError::NotADirectory {
                path: source.display().to_string(),
            });
        }
        let diff_text =
            std::fs::read_to_string(&opts.diff).map_err(|e| BuildError::io(&opts.diff, e))?;
        std::fs::create_dir_all(&opts.out_dir).map_err(|e| BuildError::io(&opts.out_dir, e))?;
        let out_dir = abs(&opts.out_dir);
        if out_dir.starts_with(&source) {
            return Err(BuildError::OutputInSource {
                path: out_dir.display().to_string(),
            });
        }
        let state = out_dir.join(".suture");
        let work = state.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| BuildError::io(&work, e))?;
        let epoch = std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().to_string())
                .unwrap_or_else(|_| "0".into())
        });
        Ok(Workspace {
            source,
            diff_text,
            out_dir,
            state,
            work,
            epoch,
        })
    }
}

/// The fix applied to copies (fails fast when the diff does not apply).
fn patch(ws: &Workspace, progress: &mut dyn FnMut(&str)) -> Result<Vec<Touched>, BuildError> {
    let touched = patchset::apply(&ws.source, &ws.diff_text, &ws.work)?;
    progress(&format!(
        "the diff touches {} file(s): {}",
        touched.len(),
        touched
            .iter()
            .map(|t| t.rel.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(touched)
}

/// The project's own build, recorded: the build graph and the build log's path.
fn record(
    opts: &BuildOptions,
    ws: &Workspace,
    progress: &mut dyn FnMut(&str),
) -> Result<(Graph, PathBuf), BuildError> {
    let (source, out_dir) = (&ws.source, &ws.out_dir);
    let log = ws.state.join("build.log");
    let records = records_dir(source, out_dir);
    let invocations = run_build(
        (&opts.build_cmd, &opts.wrapper_exe),
        source,
        &records,
        &log,
        progress,
    )?;
    let graph = Graph::new(&invocations);
    if graph.units.is_empty() {
        return Err(BuildError::NothingRecorded {
            records: records.display().to_string(),
        });
    }
    progress(&format!(
        "recorded {} compiled unit(s) and {} linked output(s)",
        graph.units.len(),
        graph.links.len()
    ));
    Ok((graph, log))
}

/// What the touched files mean for the recorded build.
struct Selection {
    files: Vec<FileReport>,
    refusals: Vec<Refusal>,
    /// Unit (index in the graph) → the touched files (indexes) it is rebuilt for.
    affected: BTreeMap<usize, Vec<usize>>,
    /// The patched copies of the touched sources and headers the build compiles.
    mounts: Vec<Mount>,
    /// Said to the user (e.g. the build compiles a copy of a touched file).
    notes: Vec<String>,
}

/// The verdict on a touched file that needs no look at the build: `Err` a refusal, `Ok` why
/// it is not compiled; `None` for an existing source or header the build may compile.
/// The build systems a tree can carry files of, the file each leaves in a tree it configured
/// (looked for at the top and one directory down, where build directories go), and the path
/// piece its compile outputs carry (`CMakeFiles/t.dir/x.c.o`, `t.p/x.c.o`).
#[allow(clippy::type_complexity)]
const OTHER_BUILD_SYSTEMS: [(&str, fn(&str) -> bool, &str, &str); 2] = [
    (
        "CMake",
        |name| name == "CMakeLists.txt" || name.ends_with(".cmake"),
        "CMakeCache.txt",
        "/CMakeFiles/",
    ),
    (
        "Meson",
        |name| name == "meson.build" || name == "meson_options.txt",
        "build.ninja",
        ".p/",
    ),
];

/// For a build file of a build system the recorded build did not use (a project shipping
/// CMake files next to its autotools build, say): which system. Such a change is not part of
/// the deployed build.
fn unused_build_system(source: &Path, graph: &Graph, rel: &Path) -> Option<&'static str> {
    let name = rel.file_name()?.to_str()?;
    let (system, _, marker, outputs) = OTHER_BUILD_SYSTEMS.iter().find(|(_, is, _, _)| is(name))?;
    let compiled_by_it = graph.units.iter().any(|u| {
        u.compile
            .output
            .as_ref()
            .is_some_and(|o| o.to_string_lossy().contains(outputs))
    });
    let configured = compiled_by_it
        || std::iter::once(source.to_path_buf())
            .chain(
                std::fs::read_dir(source)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            )
            .any(|d| d.join(marker).is_file());
    (!configured).then_some(*system)
}

fn verdict_by_kind(t: &Touched) -> Option<Result<&'static str, &'static str>> {
    Some(match (t.kind, t.created, t.deleted) {
        (FileKind::Build, ..) => Err("build file: a live patch cannot change how the program \
                                      is configured or built"),
        (FileKind::Assembly, ..) => Err("assembly source: its machine code is written by hand \
                                         and cannot be diffed; suture live-patches compiled C \
                                         and C++"),
        (FileKind::Header, true, _) => Err("new header: the compiler can only be shown patched \
                                            copies of files that exist in the source tree"),
        (FileKind::Source | FileKind::Header, _, true) => {
            Err("the diff deletes this file: a build change")
        }
        (FileKind::Source, true, _) => Ok("new file: the build does not compile it"),
        (FileKind::Other, ..) => Ok("not a source file: not compiled into any output"),
        (FileKind::Source | FileKind::Header, false, false) => return None,
    })
}

/// Files the build compiles (sources, and the headers units include) that have `path`'s
/// file name and contents but another path: copies made by the build.
fn copies_of(
    path: &Path,
    graph: &Graph,
    compiler: &Compiler,
    deps: &mut BTreeMap<usize, Vec<PathBuf>>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<PathBuf>, BuildError> {
    let (Some(name), Ok(contents)) = (path.file_name(), std::fs::read(path)) else {
        return Ok(Vec::new());
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    for (ui, u) in graph.units.iter().enumerate() {
        if u.compile.source.file_name() == Some(name) {
            candidates.push(u.compile.source.clone());
        }
        if u.outputs.is_empty() {
            continue;
        }
        let list = match deps.entry(ui) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                progress(&format!(
                    "listing the headers of {}",
                    u.compile.source.display()
                ));
                e.insert(compiler.deps(&u.compile)?)
            }
        };
        candidates.extend(list.iter().filter(|d| d.file_name() == Some(name)).cloned());
    }
    candidates.sort();
    candidates.dedup();
    Ok(candidates
        .into_iter()
        .filter(|c| c != path && std::fs::read(c).is_ok_and(|b| b == contents))
        .collect())
}

/// The units that compile `path` (a source) or include it (a header; only units linked into
/// an output are asked for their headers, once each, cached in `deps`).
fn users_of(
    path: &Path,
    kind: FileKind,
    (source, graph): (&Path, &Graph),
    compiler: &Compiler,
    deps: &mut BTreeMap<usize, Vec<PathBuf>>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<usize>, BuildError> {
    let mut users = Vec::new();
    for (ui, u) in graph.units.iter().enumerate() {
        let uses = if kind == FileKind::Source {
            u.compile.source == path
        } else if u.outputs.is_empty() {
            // Not linked anywhere (e.g. configure's test programs, long gone).
            false
        } else {
            let list = match deps.entry(ui) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    progress(&format!(
                        "listing the headers of {}",
                        rel(source, &u.compile.source)
                    ));
                    e.insert(compiler.deps(&u.compile)?)
                }
            };
            list.contains(&path.to_path_buf())
        };
        if uses {
            users.push(ui);
        }
    }
    Ok(users)
}

/// Which units each touched file affects, and the files refused outright (build files,
/// assembly, deleted sources, changed structure definitions).
fn select_units(
    source: &Path,
    graph: &Graph,
    touched: &[Touched],
    compiler: &Compiler,
    progress: &mut dyn FnMut(&str),
) -> Result<Selection, BuildError> {
    let mut refusals = Vec::new();
    let mut files = Vec::new();
    let mut affected: BTreeMap<usize, Vec<usize>> = BTreeMap::new(); // unit -> files
    let mut deps_cache: BTreeMap<usize, Vec<PathBuf>> = BTreeMap::new();
    let mut mounts = Vec::new();
    let mut notes = Vec::new();
    for (fi, t) in touched.iter().enumerate() {
        let name = t.rel.display().to_string();
        let mut report = FileReport {
            file: name.clone(),
            kind: t.kind,
            verdict: "not-compiled",
            detail: String::new(),
            units: Vec::new(),
        };
        let unused = (t.kind == FileKind::Build)
            .then(|| unused_build_system(source, graph, &t.rel))
            .flatten();
        let verdict =
            match unused {
                Some("CMake") => Some(Ok(
                    "a CMake file, and this build does not use CMake (no \
                                      CMakeCache.txt in the tree): not part of the deployed build",
                )),
                Some(_) => Some(Ok("a Meson file, and this build does not use Meson (no \
                                build.ninja in the tree): not part of the deployed build")),
                None => verdict_by_kind(t),
            };
        match verdict {
            Some(Err(reason)) => {
                refusals.push(Refusal {
                    file: name.clone(),
                    symbol: String::new(),
                    reason: reason.to_string(),
                });
                report.verdict = "refused";
                report.detail = reason.into();
            }
            Some(Ok(detail)) => report.detail = detail.into(),
            None => {
                let path = abs(&t.path);
                mounts.push(Mount {
                    copy: abs(&t.patched),
                    original: path.clone(),
                });
                let users = users_of(
                    &path,
                    t.kind,
                    (source, graph),
                    compiler,
                    &mut deps_cache,
                    progress,
                )?;
                // A build may compile a copy of the file (copied or generated into a build
                // directory before compiling): a compiled file of the same name and the same
                // contents as the original is that copy, and gets the fix too.
                let (users, copies) = if users.is_empty() {
                    let copies = copies_of(&path, graph, compiler, &mut deps_cache, progress)?;
                    let mut users = Vec::new();
                    for copy in &copies {
                        mounts.push(Mount {
                            copy: abs(&t.patched),
                            original: copy.clone(),
                        });
                        users.extend(users_of(
                            copy,
                            t.kind,
                            (source, graph),
                            compiler,
                            &mut deps_cache,
                            progress,
                        )?);
                    }
                    users.sort_unstable();
                    users.dedup();
                    (users, copies)
                } else {
                    (users, Vec::new())
                };
                for copy in &copies {
                    notes.push(format!(
                        "{name}: the build compiles a copy of it, {}; the fix is applied to the copy",
                        copy.display()
                    ));
                }
                let linked: Vec<usize> = users
                    .iter()
                    .copied()
                    .filter(|&u| !graph.units[u].outputs.is_empty())
                    .collect();
                if users.is_empty() {
                    report.detail = "the build never compiles it (nor a copy of it with the same \
                                     name and contents)"
                        .into();
                } else if linked.is_empty() {
                    report.detail = "compiled, but not linked into any executable or shared \
                                     library the build produced"
                        .into();
                } else {
                    // Structure definitions matter only where the file is compiled: a header
                    // of a feature the build leaves out may change freely.
                    let orig = std::fs::read_to_string(&path).unwrap_or_default();
                    let new = std::fs::read_to_string(&t.patched).unwrap_or_default();
                    for s in patchset::changed_structs(&orig, &new) {
                        refusals.push(Refusal {
                            file: name.clone(),
                            symbol: s.clone(),
                            reason: format!(
                                "{s}: the running program holds data laid out by the old \
                                 definition, so code using the new layout cannot be loaded \
                                 into it"
                            ),
                        });
                        report.verdict = "refused";
                        report.detail = s.to_string();
                    }
                    for u in linked {
                        affected.entry(u).or_default().push(fi);
                        report
                            .units
                            .push(rel(source, &graph.units[u].compile.source));
                    }
                    if report.verdict != "refused" {
                        report.verdict = "pending";
                    }
                }
            }
        }
        files.push(report);
    }
    Ok(Selection {
        files,
        refusals,
        affected,
        mounts,
        notes,
    })
}

/// Where one unit's objects and logs go.
fn unit_dir(work: &Path, ui: usize) -> PathBuf {
    work.join(format!("unit{ui}"))
}

/// Compiles unit `ui` as built and with the fix: the paths of both objects.
fn compile(
    ws: &Workspace,
    graph: &Graph,
    ui: usize,
    compilers: (&Compiler, &Compiler),
) -> Result<(PathBuf, PathBuf), BuildError> {
    let unit = &graph.units[ui];
    let dir = unit_dir(&ws.work, ui);
    std::fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
    let (a, b) = (dir.join("orig.o"), dir.join("patched.o"));
    compilers
        .0
        .compile(&unit.compile, &a, false, &dir.join("orig.log"))?;
    compilers
        .1
        .compile(&unit.compile, &b, true, &dir.join("patched.log"))?;
    Ok((a, b))
}

/// The differ's verdict on one unit's two objects, and its patch object when patchable.
fn diff(
    src: &str,
    ui: usize,
    (a, b): (&Path, &Path),
    as_built: Option<&Path>,
    options: suture_object::Options,
) -> Result<UnitResult, BuildError> {
    let (ab, bb) = (
        std::fs::read(a).map_err(|e| BuildError::io(a, e))?,
        std::fs::read(b).map_err(|e| BuildError::io(b, e))?,
    );
    let oa = suture_object::Object::parse(&ab).map_err(analysis(a.display().to_string()))?;
    let ob = suture_object::Object::parse(&bb).map_err(analysis(b.display().to_string()))?;
    let mut d =
        suture_object::analyze_with(&oa, &ob, options).map_err(analysis(src.to_string()))?;
    if let (Some(path), Status::Patchable) = (as_built, d.report.status) {
        let bytes = std::fs::read(path).map_err(|e| BuildError::io(path, e))?;
        let deployed =
            suture_object::Object::parse(&bytes).map_err(analysis(path.display().to_string()))?;
        let units = suture_object::units::Units::new(&deployed);
        for f in &mut d.report.changed_functions {
            f.osr = None;
        }
        for (i, table) in suture_object::osr::tables_against(&d, &units) {
            d.report.changed_functions[i].osr = Some(table);
        }
    }
    let patch = if d.report.status == Status::Patchable {
        Some(suture_object::emit::emit(&d).map_err(analysis(src.to_string()))?)
    } else {
        None
    };
    Ok(UnitResult {
        idx: ui,
        report: d.report.clone(),
        patch,
    })
}

/// The differ's verdict in a progress line.
fn verdict_words(report: &Report) -> String {
    match report.status {
        Status::Patchable => format!(
            "changed: {}",
            report
                .changed_functions
                .iter()
                .filter(|f| !f.fragment)
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Status::NoChange => "no change in the compiled code".into(),
        Status::Unsupported => "cannot be live-patched".into(),
    }
}

/// Verdicts per unit and per file, and the report so far.
fn verdicts(
    source: &Path,
    graph: &Graph,
    sel: Selection,
    results: &[UnitResult],
    log: &Path,
) -> BuildReport {
    let Selection {
        mut files,
        mut refusals,
        affected,
        notes: selection_notes,
        ..
    } = sel;
    let mut units = Vec::new();
    let mut notes = selection_notes;
    for r in results {
        let u = &graph.units[r.idx];
        let src = rel(source, &u.compile.source);
        if r.patch.is_some() && uses_lto(&u.compile.args) {
            // The deployed code was optimised across units: other units may hold inlined
            // copies of the changed functions, which a patch of this unit cannot reach and the
            // byte-identity proof (of out-of-line symbols) cannot see.
            refusals.push(Refusal {
                file: src.clone(),
                symbol: String::new(),
                reason: "the build compiles it with link-time optimisation (-flto): other \
                         units may contain inlined copies of the changed functions that a live \
                         patch cannot reach; rebuild the deployed binary without LTO"
                    .into(),
            });
        }
        for x in &r.report.unsupported {
            refusals.push(Refusal {
                file: src.clone(),
                symbol: x.symbol.clone(),
                reason: x.reason.clone(),
            });
        }
        units.push(UnitReport {
            source: src.clone(),
            object: u.compile.output.as_ref().map(|o| o.display().to_string()),
            outputs: u.outputs.iter().map(|o| o.display().to_string()).collect(),
            status: r.report.status,
            changed_functions: r
                .report
                .changed_functions
                .iter()
                .filter(|f| !f.fragment)
                .map(|f| f.name.clone())
                .collect(),
            unsupported: r
                .report
                .unsupported
                .iter()
                .map(|x| UnsupportedItem {
                    symbol: x.symbol.clone(),
                    reason: x.reason.clone(),
                })
                .collect(),
            line_shifts: r
                .report
                .line_shifts
                .iter()
                .map(|l| l.function.clone())
                .collect(),
            osr: osr_summaries(&r.report),
        });
        for o in units.last().map_or(&[][..], |u| &u.osr[..]) {
            if let Some(why) = &o.on_stack {
                notes.push(osr_note(&src, o, why));
            }
        }
        // A patchable unit's differ notes (copied below) already say this.
        let shifts = if r.report.status == Status::Patchable {
            &[][..]
        } else {
            &r.report.line_shifts[..]
        };
        for l in shifts {
            let moved: Vec<String> = l.lines.iter().map(|(a, b)| format!("{a}->{b}")).collect();
            notes.push(format!(
                "{src}: {} differs only in source line numbers ({} line {}), moved by the fix: \
                 {}",
                l.function,
                l.file,
                moved.join(", "),
                if l.included {
                    "kept in the patch as asked"
                } else {
                    "left out of the patch (--include-line-shifts keeps it)"
                }
            ));
        }
        if r.report.status == Status::Patchable {
            notes.extend(r.report.notes.iter().map(|n| format!("{src}: {n}")));
        }
    }
    for (fi, f) in files.iter_mut().enumerate() {
        if f.verdict != "pending" {
            continue;
        }
        let mine: Vec<&UnitResult> = results
            .iter()
            .filter(|r| affected.get(&r.idx).is_some_and(|v| v.contains(&fi)))
            .collect();
        if mine.iter().any(|r| r.report.status == Status::Unsupported) {
            f.verdict = "refused";
            f.detail = "a change in its code cannot be live-patched".into();
        } else if mine.iter().any(|r| r.report.status == Status::Patchable) {
            f.verdict = "patched";
        } else if mine.iter().any(|r| !r.report.line_shifts.is_empty()) {
            f.verdict = "no-change";
            f.detail = "no change in the compiled code except source line numbers the fix \
                        moved (left out; --include-line-shifts keeps them)"
                .into();
        } else {
            f.verdict = "no-change";
            f.detail = "no change in any compiled output (the changed code is not compiled \
                        in this configuration)"
                .into();
        }
    }

    // A source compiled more than once (a package building several flavours of one library)
    // gives the same note once per unit.
    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert(n.clone()));
    BuildReport {
        schema: "suture.build/1",
        outcome: Outcome::NoChange,
        files,
        units,
        refusals,
        bundles: Vec::new(),
        skipped: Vec::new(),
        notes,
        build_log: log.display().to_string(),
    }
}

/// x86-64 relocations that hold a 32-bit displacement or address of their symbol.
const R_X86_64_PC32: u32 = 2;
const R_X86_64_32: u32 = 10;
const R_X86_64_32S: u32 = 11;

/// References of a patch that can only be out of reach at apply time: a PC-relative (or
/// 32-bit absolute) access, other than a call or jump, to a symbol the linked output does
/// not define. `-fPIE` code reads external variables that way, trusting the executable to
/// hold a copy of them (a copy relocation); when the deployed program never used the
/// variable, only the library defining it has one, beyond the ±2 GiB a 32-bit
/// displacement reaches from the patch (see [`crate::units::indirect_extern_access`], which
/// avoids this when the compiler can).
fn out_of_reach(
    source: &Path,
    graph: &Graph,
    results: &[UnitResult],
) -> Result<Vec<Refusal>, BuildError> {
    let mut defined: BTreeMap<PathBuf, crate::elfinfo::ElfSymbols> = BTreeMap::new();
    let mut out = Vec::new();
    for r in results {
        let Some(patch) = &r.patch else { continue };
        let unit = &graph.units[r.idx];
        let src = rel(source, &unit.compile.source);
        let obj = suture_object::Object::parse(patch).map_err(analysis(src.clone()))?;
        let mut needed = BTreeSet::new();
        for s in &obj.sections {
            for x in &s.relocs {
                if !matches!(x.r_type, R_X86_64_PC32 | R_X86_64_32 | R_X86_64_32S) {
                    continue;
                }
                let sym = obj.symbol(x.sym);
                let o = x.offset as usize;
                let before = |n: usize| o.checked_sub(n).and_then(|i| s.data.get(i)).copied();
                let branch = matches!(before(1), Some(0xe8 | 0xe9))
                    || (before(2) == Some(0x0f) && before(1).is_some_and(|b| b & 0xf0 == 0x80));
                // Statics of the original unit (`suture.local::...`) are in the output.
                let local = suture_object::names::parse_local_reference(&sym.name).is_some();
                let call = s.is_exec() && branch;
                let external = sym.place == suture_object::elf::Place::Undefined
                    && !sym.name.is_empty()
                    && !local;
                if external && !call {
                    needed.insert(sym.name.clone());
                }
            }
        }
        if needed.is_empty() {
            continue;
        }
        for output in &unit.outputs {
            if !defined.contains_key(output) {
                let bytes = std::fs::read(output).map_err(|e| BuildError::io(output, e))?;
                let syms = crate::elfinfo::ElfSymbols::parse(&output.display().to_string(), &bytes)
                    .map_err(BuildError::elf(output))?;
                defined.insert(output.clone(), syms);
            }
            let syms = &defined[output];
            if !syms.has_symtab {
                // A stripped output lists only its exports: it cannot tell (apply will).
                continue;
            }
            for name in &needed {
                let here = syms.global(name).is_some()
                    || syms.linker_local(name).is_ok_and(|x| x.is_some());
                if here {
                    continue;
                }
                let compiler = unit.compile.compiler.display().to_string();
                out.push(Refusal {
                    file: src.clone(),
                    symbol: name.clone(),
                    reason: format!(
                        "the fix reads {name} with a 32-bit PC-relative (or absolute) address, \
                         as -fPIE code does for external variables it expects the executable to \
                         hold a copy of, but {} has no copy (the original program never used \
                         {name}), so a live patch cannot reach the library's own; {compiler} \
                         has no flag for GOT access to external data (gcc 12 and later: \
                         -mno-direct-extern-access; clang 12 and later: \
                         -fno-direct-access-external-data), which suture build adds to its \
                         recompiles when the compiler knows it",
                        output.display()
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// The deployed files to bind each changed output to: `(output, target)` pairs (no target:
/// the output itself). Targets that are no changed output become notes; changed outputs no
/// target names are skipped.
fn bind_targets(
    opts: &BuildOptions,
    source: &Path,
    graph: &Graph,
    per_output: &BTreeMap<PathBuf, Vec<&UnitResult>>,
    report: &mut BuildReport,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, BuildError> {
    let mut jobs: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    if opts.targets.is_empty() {
        jobs.extend(per_output.keys().map(|o| (o.clone(), None)));
    } else {
        let outputs: Vec<(PathBuf, ElfInfo)> = graph
            .links
            .iter()
            .filter_map(|l| Some((l.output.clone(), ElfInfo::read(&l.output).ok()?)))
            .collect();
        let mut used = BTreeSet::new();
        for t in &opts.targets {
            let ti = ElfInfo::read(t).map_err(BuildError::elf(t))?;
            let by_id: Vec<&PathBuf> = outputs
                .iter()
                .filter(|(_, o)| o.build_id.is_some() && o.build_id == ti.build_id)
                .map(|(p, _)| p)
                .collect();
            let by_name: Vec<&PathBuf> = outputs
                .iter()
                .filter(|(_, o)| {
                    o.file_name() == ti.file_name() || (o.soname.is_some() && o.soname == ti.soname)
                })
                .map(|(p, _)| p)
                .collect();
            let out = match (by_id.as_slice(), by_name.as_slice()) {
                ([one, ..], _) | ([], [one]) => (*one).clone(),
                ([], []) => {
                    return Err(BuildError::NoOutputFor {
                        target: t.display().to_string(),
                        build_id: ti.build_id.as_deref().map(hex).unwrap_or_default(),
                        outputs: outputs
                            .iter()
                            .map(|(p, _)| rel(source, p))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
                ([], many) => {
                    return Err(BuildError::AmbiguousTarget {
                        target: t.display().to_string(),
                        candidates: many
                            .iter()
                            .map(|p| rel(source, p))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            };
            if !per_output.contains_key(&out) {
                report.notes.push(format!(
                    "{}: the fix changes nothing in it (its build output {})",
                    t.display(),
                    rel(source, &out)
                ));
                continue;
            }
            used.insert(out.clone());
            jobs.push((out, Some(t.clone())));
        }
        for o in per_output.keys() {
            if !used.contains(o) {
                report.skipped.push(o.display().to_string());
            }
        }
    }
    Ok(jobs)
}

/// One changed output bound to its deployed file: the merged patch object and the proof.
struct Bound {
    deployed: ElfInfo,
    patch_object: Vec<u8>,
    binding: bind::Binding,
    functions: Vec<Function>,
    units: Vec<BundleUnit>,
}

/// Merges the patch objects of one output's units and binds them to the deployed file.
fn bind_output(
    opts: &BuildOptions,
    ws: &Workspace,
    graph: &Graph,
    (bi, output, target): (usize, &Path, Option<&Path>),
    rs: &[&UnitResult],
) -> Result<Bound, BuildError> {
    let source = &ws.source;
    let rebuild = ElfInfo::read(output).map_err(BuildError::elf(output))?;
    let deployed = match target {
        Some(t) => ElfInfo::read(t).map_err(BuildError::elf(t))?,
        None => ElfInfo::read(output).map_err(BuildError::elf(output))?,
    };
    // Replaced functions are found by name in the merged object: names must be unique.
    let mut seen = BTreeMap::new();
    for r in rs {
        for f in r.report.changed_functions.iter().filter(|f| !f.fragment) {
            let src = rel(source, &graph.units[r.idx].compile.source);
            if let Some(other) = seen.insert(f.name.clone(), src.clone()) {
                return Err(BuildError::DuplicateFunction {
                    function: f.name.clone(),
                    first: other,
                    second: src,
                });
            }
        }
    }
    let objects: Vec<Vec<u8>> = rs.iter().filter_map(|r| r.patch.clone()).collect();
    let reports: Vec<Report> = rs.iter().map(|r| r.report.clone()).collect();
    let patch_object = merge(&objects, &reports, &ws.work.join(format!("merge{bi}")))?;
    let mut wanted: Vec<Wanted> = reports.iter().flat_map(bind::wanted).collect();
    wanted.sort();
    wanted.dedup();
    let binding = bind::bind(&rebuild, &deployed, &opts.debug_dirs, &wanted)?;
    let mut functions = Vec::new();
    let mut bunits = Vec::new();
    for r in rs {
        let src = rel(source, &graph.units[r.idx].compile.source);
        for f in r.report.changed_functions.iter().filter(|f| !f.fragment) {
            functions.push(Function {
                name: f.original_name.clone(),
                file: f.file.clone(),
                unit: src.clone(),
            });
        }
        bunits.push(BundleUnit {
            source: src,
            report: serde_json::to_value(&r.report).map_err(BuildError::encode("a unit report"))?,
        });
    }
    Ok(Bound {
        deployed,
        patch_object,
        binding,
        functions,
        units: bunits,
    })
}

/// Writes one bundle; its entry in the report.
fn write_bundle(
    opts: &BuildOptions,
    ws: &Workspace,
    output: &Path,
    bound: Bound,
    written_names: &mut BTreeSet<String>,
    progress: &mut dyn FnMut(&str),
) -> Result<BundleReport, BuildError> {
    let Bound {
        deployed,
        patch_object,
        binding,
        functions,
        units: bunits,
    } = bound;
    let patch_id = opts.patch_id.clone().unwrap_or_else(|| {
        opts.diff
            .file_stem()
            .map_or_else(|| "patch".into(), |s| s.to_string_lossy().into_owned())
    });
    let manifest = Manifest {
        format: suture_bundle::MANIFEST_FORMAT.into(),
        patch_id: patch_id.clone(),
        created_by: opts.created_by.clone(),
        target: Target {
            build_id: hex(&binding.build_id),
            file_name: deployed.file_name(),
            soname: deployed.soname.clone(),
            arch: "x86_64".into(),
        },
        twin: binding.twin.clone(),
        functions: functions.clone(),
        symbols: binding.symbols.clone(),
        units: bunits.clone(),
    };
    let bytes = suture_bundle::encode(&Bundle {
        manifest,
        patch_object,
    })
    .map_err(BuildError::encode("the bundle"))?;
    let mut name = format!("{}.suture", deployed.file_name());
    let mut k = 2;
    while !written_names.insert(name.clone()) {
        name = format!("{}.{k}.suture", deployed.file_name());
        k += 1;
    }
    let path = ws.out_dir.join(&name);
    std::fs::write(&path, &bytes).map_err(|e| BuildError::io(&path, e))?;
    progress(&format!(
        "wrote {} for {} (build-id {}): {}",
        path.display(),
        deployed.path,
        hex(&binding.build_id),
        functions
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(BundleReport {
        path: path.display().to_string(),
        output: output.display().to_string(),
        target: deployed.path.clone(),
        build_id: hex(&binding.build_id),
        twin: binding.twin,
        functions: functions.into_iter().map(|f| f.name).collect(),
        units: bunits.into_iter().map(|u| u.source).collect(),
        symbols_verified: binding
            .symbols
            .iter()
            .filter(|s| s.sha256.is_some())
            .count(),
    })
}

/// Runs the whole pipeline: patch, record, select units, compile, diff, bind, write.
/// `progress` receives one line per step.
pub fn build(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildReport, BuildError> {
    let ws = Workspace::prepare(opts)?;
    let touched = patch(&ws, progress)?;
    let (graph, log) = record(opts, &ws, progress)?;
    let compiler = Compiler {
        mounts: &[],
        epoch: ws.epoch.clone(),
    };
    let sel = select_units(&ws.source, &graph, &touched, &compiler, progress)?;
    let patched_compiler = Compiler {
        mounts: &sel.mounts,
        epoch: ws.epoch.clone(),
    };
    let mut results: Vec<UnitResult> = Vec::new();
    let total = sel.affected.len();
    // The fix's own line moves confirm a line-number-only change (suture_object::lines).
    let diff_options = suture_object::Options {
        line_map: Some(std::sync::Arc::new(
            suture_object::lines::LineMap::from_unified_diff(&ws.diff_text),
        )),
        ..opts.diff_options.clone()
    };
    for (n, &ui) in sel.affected.keys().enumerate() {
        let src = rel(&ws.source, &graph.units[ui].compile.source);
        progress(&format!(
            "[{}/{total}] rebuilding {src} (original and patched)",
            n + 1
        ));
        let (a, b) = compile(&ws, &graph, ui, (&compiler, &patched_compiler))?;
        // On-stack replacement maps describe the running code: the original as the build
        // compiled it, when the two compiles above added a flag.
        let as_built = if diff_options.osr {
            let unit = &graph.units[ui];
            let dir = unit_dir(&ws.work, ui);
            let path = dir.join("orig-as-built.o");
            compiler
                .compile_as_built(&unit.compile, &path, &dir.join("orig-as-built.log"))?
                .map(|()| path)
        } else {
            None
        };
        let r = diff(
            &src,
            ui,
            (&a, &b),
            as_built.as_deref(),
            diff_options.clone(),
        )?;
        progress(&format!(
            "[{}/{total}] {src}: {}",
            n + 1,
            verdict_words(&r.report)
        ));
        results.push(r);
    }

    let mut report = verdicts(&ws.source, &graph, sel, &results, &log);
    report
        .refusals
        .extend(out_of_reach(&ws.source, &graph, &results)?);
    if !report.refusals.is_empty() {
        report.outcome = Outcome::Refused;
        return Ok(report);
    }
    let mut per_output: BTreeMap<PathBuf, Vec<&UnitResult>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.patch.is_some()) {
        for o in &graph.units[r.idx].outputs {
            per_output.entry(o.clone()).or_default().push(r);
        }
    }
    if per_output.is_empty() {
        return Ok(report);
    }

    let jobs = bind_targets(opts, &ws.source, &graph, &per_output, &mut report)?;
    let mut written_names = BTreeSet::new();
    for (bi, (output, target)) in jobs.iter().enumerate() {
        let bound = bind_output(
            opts,
            &ws,
            &graph,
            (bi, output, target.as_deref()),
            &per_output[output],
        )?;
        report.notes.extend(bound.binding.notes.iter().cloned());
        let b = write_bundle(opts, &ws, output, bound, &mut written_names, progress)?;
        report.bundles.push(b);
    }
    if !report.bundles.is_empty() {
        report.outcome = Outcome::Written;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_on_stack_function_with_refused_sites_points_at_the_transition() {
        let mut o = OsrSummary {
            function: "serve".into(),
            on_stack: Some("a loop around a call to read".into()),
            sites: 3,
            sites_back: 3,
            refused: Vec::new(),
        };
        let all = osr_note("server.c", &o, "a loop around a call to read");
        assert!(all.contains("at 3 of its 3 call sites"), "{all}");
        assert!(!all.contains("--transition"), "{all}");
        o.refused.push(suture_object::osr::OsrRefusal {
            at: 0x40,
            callee: "poll".into(),
            reason: "the frame differs".into(),
        });
        let some = osr_note("server.c", &o, "a loop around a call to read");
        assert!(
            some.contains("not at +0x40 (the call to poll): the frame differs"),
            "{some}"
        );
        assert!(some.contains("suture apply --transition"), "{some}");
    }
}
