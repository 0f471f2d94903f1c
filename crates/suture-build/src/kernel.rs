//! `suture build --kernel`: a livepatch module for the target kernel from its source tree and
//! a fix.
//!
//! Phases: [`check`] the files the fix touches (only C units) and the tree against the target's
//! headers; [`compile`] every touched unit with kbuild before and after the fix (the fix
//! applied to copies by [`crate::patchset`], the patched compile in [`crate::sandbox`]);
//! [`diff`] each unit with `suture_object`; [`generate()`] the module with
//! `suture_kernel::generate`. The descriptor-table layouts the tree's headers declare
//! ([`declared_layouts`]) are checked against those derived from each unit's objects. The result is a [`KernelBuildReport`] (schema
//! `suture.kernel-build/1`), whatever the verdict; only failures to run are errors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use suture_kernel::generate::{self, Module, Options, Unit};
use suture_kernel::identity::{self, KernelIdentity};
use suture_kernel::kbuild::Headers;
use suture_kernel::tree::{self, Tree};
use suture_object::report::{Report, Status, UnsupportedKind};
use suture_object::special::Declared;

use crate::patchset::{PatchSet, Touched};
use crate::sandbox::{self, Mount};
use crate::BuildError;

/// Inputs of [`build`].
#[derive(Clone, Debug)]
pub struct KernelBuildOptions {
    /// The kernel source tree (prepared by `scripts/kernel-tree.sh`).
    pub source: PathBuf,
    /// The fix, a unified diff.
    pub diff: PathBuf,
    /// Where the module and its build directory go.
    pub out_dir: PathBuf,
    /// Module name (default: `suture_<diff file stem>`), made kernel-safe.
    pub name: Option<String>,
    /// The target's headers (default: the package the tree was prepared from).
    pub headers: Option<PathBuf>,
    /// Copy of the target's `/proc/kallsyms`.
    pub kallsyms: Option<PathBuf>,
    /// Copy of the target's `/sys/kernel/notes`: the build-id of its vmlinux, recorded in the
    /// module with the headers' release so that `suture kernel load` refuses any other kernel.
    /// Required to write a module; a file that is not such a copy is an error before anything
    /// is compiled.
    pub kernel_notes: Option<PathBuf>,
    /// Directories holding the stock `.ko` of patched modules.
    pub module_dirs: Vec<PathBuf>,
    /// A cumulative patch (`.replace = true`).
    pub replace: bool,
    /// The most units a changed header may make suture rebuild (those the configuration
    /// builds); more is refused before compiling ([`DEFAULT_MAX_HEADER_UNITS`]).
    pub max_header_units: usize,
}

/// Default of [`KernelBuildOptions::max_header_units`]: each unit is compiled twice (2-4 s
/// per compile of a warm tree measured on a loaded 2-core machine, docs/benchmarks.md; 3-10 s
/// assumed), so 100 units are 10-35 minutes; a header a whole subsystem includes (ext4.h: 37 units, Bluetooth's
/// hci_core.h: 58, key-type.h: 69) stays under it, a core header of `include/linux/` (list.h:
/// 14,427 units of Debian's configuration) or tty_driver.h (304) does not.
pub const DEFAULT_MAX_HEADER_UNITS: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelOutcome {
    /// The module was written.
    Built,
    /// The fix cannot be live-patched; nothing written.
    Unsupported,
    /// The fix changes no code that runs; nothing written.
    NoChange,
}

/// One reason a fix is refused: per symbol (differ, generator) or for the whole fix.
#[derive(Clone, Debug, Serialize)]
pub struct KernelRefusal {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<UnsupportedKind>,
    pub reason: String,
}

/// A patched unit of the module.
#[derive(Clone, Debug, Serialize)]
pub struct KernelUnitReport {
    pub file: String,
    pub object: String,
    /// The changed headers that made suture rebuild this unit (empty: the fix changes it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub because_of: Vec<String>,
    pub report: Report,
}

/// The units a changed header reaches.
#[derive(Clone, Debug, Serialize)]
pub struct HeaderReach {
    pub header: String,
    /// Units including it (directly or through other headers) that the configuration builds:
    /// each was compiled before and after the fix.
    pub units: Vec<String>,
    /// Units including it that the configuration leaves out (by their Makefiles): not compiled.
    pub left_out: usize,
    /// The header reaches kbuild's forced headers, hence every unit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub everything: bool,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Seconds {
    pub compile: f64,
    pub total: f64,
}

/// What `suture build --kernel` did (schema `suture.kernel-build/1`). Fields that do not
/// apply to the outcome are left out of the JSON.
#[derive(Debug, Serialize)]
pub struct KernelBuildReport {
    pub schema: &'static str,
    pub status: KernelOutcome,
    /// The refusal as one text for people (the JSON has `reasons`).
    #[serde(skip)]
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<KernelRefusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<Module>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<KernelUnitReport>,
    /// Changed headers and the units each made suture rebuild.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderReach>,
    /// Units the fix changes that the target kernel does not contain (its configuration leaves
    /// them out): left out of the module, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_built: Vec<NotBuilt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<Seconds>,
}

/// A unit of the fix that is not part of the target kernel.
#[derive(Clone, Debug, Serialize)]
pub struct NotBuilt {
    pub unit: String,
    pub reason: String,
}

pub const SCHEMA: &str = "suture.kernel-build/1";

impl KernelBuildReport {
    fn outcome(status: KernelOutcome) -> KernelBuildReport {
        KernelBuildReport {
            schema: SCHEMA,
            status,
            message: String::new(),
            reasons: Vec::new(),
            module: None,
            release: None,
            units: Vec::new(),
            headers: Vec::new(),
            not_built: Vec::new(),
            seconds: None,
        }
    }

    /// Refused with `message`; `reasons` per symbol, or (none) the message as the one reason.
    fn refused(message: String, mut reasons: Vec<KernelRefusal>) -> KernelBuildReport {
        if reasons.is_empty() {
            reasons.push(KernelRefusal {
                unit: None,
                symbol: None,
                kind: None,
                reason: message.clone(),
            });
        }
        KernelBuildReport {
            message,
            reasons,
            ..KernelBuildReport::outcome(KernelOutcome::Unsupported)
        }
    }
}

/// Original and patched objects of one unit.
pub struct Built {
    /// Source path relative to the tree.
    pub file: String,
    /// The changed headers that reach it, when the fix does not change the unit itself.
    pub because_of: Vec<String>,
    /// `vmlinux` or the module's name.
    pub object: String,
    pub orig: Vec<u8>,
    pub patched: Vec<u8>,
}

/// A unit whose change can be patched: its patch object and the differ's report.
pub struct Patched<'b> {
    pub built: &'b Built,
    pub patch: Vec<u8>,
    pub report: Report,
}

/// Checks the files a fix touches: C translation units and headers (whose including units
/// are rebuilt) can be diffed. `Err` is the refusal's text.
pub fn check_files(files: &[String]) -> Result<(), String> {
    if files.is_empty() {
        return Err("the diff touches no file".into());
    }
    let mut bad = Vec::new();
    for f in files {
        let why = if f.ends_with(".c") || f.ends_with(".h") {
            continue;
        } else if f.ends_with(".S") || f.ends_with(".s") {
            "assembly: assembly code has no ftrace entries livepatch could redirect"
        } else if f.contains("Makefile") || f.contains("Kconfig") || f.ends_with("Kbuild") {
            "a build or configuration file: a live patch cannot change how the kernel was built"
        } else {
            "not a C source file"
        };
        bad.push(format!("  {f}: {why}"));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the fix changes files suture cannot live-patch:\n{}",
            bad.join("\n")
        ))
    }
}

/// What [`check`] found: the target's headers and release.
pub struct Checked {
    pub headers: Headers,
    pub release: String,
}

/// The tree against the target's headers, and the kernel's configuration and compiler.
/// `Ok(Err(refusal))` when the configuration cannot be served.
pub fn check(
    source: &Path,
    headers: Option<&Path>,
) -> Result<Result<Checked, KernelBuildReport>, BuildError> {
    let headers = match headers {
        Some(h) => Headers::at(h)?,
        None => match tree::prepared_headers(source) {
            Some(dir) => Headers::at(&dir)?,
            None => {
                return Err(BuildError::NoHeaders {
                    tree: source.display().to_string(),
                })
            }
        },
    };
    let release = tree::check_tree(source, &headers.dir)?;
    if let Err(e) = generate::check_config(&headers) {
        return Ok(Err(KernelBuildReport::refused(with_causes(&e), Vec::new())));
    }
    generate::check_compiler(&headers)?;
    Ok(Ok(Checked { headers, release }))
}

/// The vmlinux build-id in a copy of the target's `/sys/kernel/notes`.
pub fn read_notes(path: &Path) -> Result<String, BuildError> {
    let bad = |reason: String| BuildError::KernelNotes {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    match identity::build_id_from_notes(&bytes) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(bad(
            "it holds no GNU build-id note (was the kernel linked without --build-id?)".into(),
        )),
        Err(e) => Err(bad(e)),
    }
}

/// An error's message followed by its causes (`a: b: c`).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// Removes the scratch directory when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// A fresh, empty path under the temporary directory (`suture-<what>-<pid>-<n>`) and the
    /// guard that removes it.
    fn new(what: &str) -> (PathBuf, Scratch) {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "suture-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        (dir.clone(), Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A unit to compile: one the fix changes, or one that changed headers reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToBuild {
    pub file: String,
    /// The changed headers reaching it; empty for a unit the fix changes.
    pub because_of: Vec<String>,
}

/// What [`units_to_build`] decided.
pub struct Plan {
    pub units: Vec<ToBuild>,
    pub headers: Vec<HeaderReach>,
    /// Units of the fix that the configuration leaves out by their Makefiles (not compiled).
    pub not_built: Vec<NotBuilt>,
}

/// The units to compile for a fix: its own `.c` files that the configuration builds (by their
/// Makefiles, `crate::includes::Gate`; the others are not built), then the units its
/// headers reach that the configuration builds (sorted, each once with every header reaching
/// it), and what each header reaches. Refused (`Err`) when more than `max` units are reached.
pub fn units_to_build(
    source: &Path,
    files: &[String],
    max: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Result<Plan, KernelBuildReport>, BuildError> {
    let gate = crate::includes::Gate::new(source);
    let mut units = Vec::new();
    let mut not_built = Vec::new();
    for f in files.iter().filter(|f| f.ends_with(".c")) {
        let object = Path::new(f).with_extension("o");
        match gate.configured(&object.to_string_lossy()) {
            Ok(()) => units.push(ToBuild {
                file: f.clone(),
                because_of: Vec::new(),
            }),
            Err(why) => {
                let reason = format!("not built in the target kernel: {why}");
                progress(&format!("{f}: {reason}"));
                not_built.push(NotBuilt {
                    unit: f.clone(),
                    reason,
                });
            }
        }
    }
    let headers: Vec<&String> = files.iter().filter(|f| f.ends_with(".h")).collect();
    if headers.is_empty() {
        return Ok(Ok(Plan {
            units,
            headers: Vec::new(),
            not_built,
        }));
    }
    let t = Instant::now();
    let scan = crate::includes::Scan::tree(source).map_err(|e| BuildError::io(source, e))?;
    progress(&format!(
        "scanned the includes of {} units in {:.1} s",
        scan.unit_count(),
        t.elapsed().as_secs_f64()
    ));
    let mut reaches = Vec::new();
    let mut extra: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for h in headers {
        let reach = scan.reach(h);
        let mut kept = Vec::new();
        let mut left_out = 0;
        for u in &reach.units {
            let object = Path::new(u).with_extension("o");
            match gate.configured(&object.to_string_lossy()) {
                Ok(()) => kept.push(u.clone()),
                Err(_) => left_out += 1,
            }
        }
        progress(&format!(
            "{h}: included by {} unit(s), {} of them built by this configuration",
            reach.units.len(),
            kept.len()
        ));
        for u in &kept {
            if !files.contains(u) {
                extra.entry(u.clone()).or_default().push(h.clone());
            }
        }
        reaches.push(HeaderReach {
            header: h.clone(),
            units: kept,
            left_out,
            everything: reach.everything,
        });
    }
    if extra.len() > max {
        let per: Vec<String> = reaches
            .iter()
            .map(|r| {
                format!(
                    "{} reaches {} configured unit(s){}",
                    r.header,
                    r.units.len(),
                    if r.everything {
                        " (every unit: kbuild includes it into all of them)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let message = format!(
            "the fix's headers reach {} units of this configuration besides the fix's own, \
             more than the limit of {max} (--max-header-units): {}. Each would be compiled \
             before and after the fix, about {} at 3-10 s per compile; a header that many \
             units share usually declares data layouts or code the whole kernel depends on. \
             Raise the limit to try anyway",
            extra.len(),
            per.join("; "),
            duration(extra.len() * 2 * 3, extra.len() * 2 * 10),
        );
        let mut refused = KernelBuildReport::refused(message, Vec::new());
        refused.headers = reaches;
        return Ok(Err(refused));
    }
    units.extend(
        extra
            .into_iter()
            .map(|(file, because_of)| ToBuild { file, because_of }),
    );
    Ok(Ok(Plan {
        units,
        headers: reaches,
        not_built,
    }))
}

/// What [`compile`] produced.
pub struct Compiled {
    pub built: Vec<Built>,
    /// Units only a header reaches that do not compile in this configuration.
    pub not_built: Vec<NotBuilt>,
    /// The layout changes of the first unit that has any ([`layout_refusals`]); compiling
    /// stopped there, since they refuse the whole fix.
    pub layout: Vec<KernelRefusal>,
}

/// The data layouts one unit's two builds disagree on (`suture_object::layout`), as refusals:
/// the running kernel's data keeps the old layout whatever code is patched.
pub fn layout_refusals(b: &Built) -> Result<Vec<KernelRefusal>, BuildError> {
    let bad = |what: &str| {
        let what = format!("{} ({what})", b.file);
        move |source| BuildError::Analysis { what, source }
    };
    let o = suture_object::Object::parse(&b.orig).map_err(bad("original"))?;
    let p = suture_object::Object::parse(&b.patched).map_err(bad("patched"))?;
    let (Some(lo), Some(lp)) = (
        suture_object::layout::Layouts::read(&o),
        suture_object::layout::Layouts::read(&p),
    ) else {
        return Ok(Vec::new());
    };
    Ok(suture_object::layout::changes(&lo, &lp)
        .into_iter()
        .map(|c| KernelRefusal {
            unit: Some(b.file.clone()),
            symbol: Some(c.what.clone()),
            kind: Some(UnsupportedKind::TypeLayout),
            reason: format!(
                "{} changes its layout: {}; the running kernel's data keeps the old layout, \
                 which a live patch cannot change",
                c.what, c.reason
            ),
        })
        .collect())
}

/// `a`-`b` seconds for people: minutes, or hours above two.
fn duration(a: usize, b: usize) -> String {
    if b > 2 * 3600 {
        format!("{}-{} hours", a / 3600, b.div_ceil(3600))
    } else {
        format!("{}-{} minutes", a / 60, b.div_ceil(60))
    }
}

/// Compiles every unit of `units` before and after the fix, the fix's own units first. The
/// fix is applied to copies in a scratch directory; the patched compile sees them over the
/// originals in the sandbox. A unit only a header reaches whose original does not compile is
/// not part of this configuration: it is returned as not built, with kbuild's last line. The
/// first unit whose data layouts change stops the compiles.
pub fn compile(
    tree: &Tree,
    set: &PatchSet,
    diff_text: &str,
    units: &[ToBuild],
    progress: &mut dyn FnMut(&str),
) -> Result<Compiled, BuildError> {
    for f in set.files.iter().map(|f| rel_name(&f.rel)) {
        if !tree.dir.join(&f).is_file() {
            return Err(BuildError::NotInTree { file: f });
        }
    }
    let (scratch, _cleanup) = Scratch::new("kbuild");
    let touched = set.apply(&tree.dir, diff_text, &scratch)?;
    let mounts = mounts(&tree.dir, &touched);
    let result = (|| -> Result<Compiled, BuildError> {
        let mut out = Vec::new();
        let mut not_built = Vec::new();
        for (i, u) in units.iter().enumerate() {
            let f = &u.file;
            let why = if u.because_of.is_empty() {
                String::new()
            } else {
                format!(
                    " [{}/{}, includes {}]",
                    i + 1,
                    units.len(),
                    u.because_of.join(", ")
                )
            };
            progress(&format!("compiling {f} (original){why}"));
            let orig = match tree.compile(f, std::process::Command::new("make")) {
                Ok(o) => o,
                Err(tree::Error::Compile { tail, .. }) if !u.because_of.is_empty() => {
                    let reason = format!(
                        "does not compile in this configuration: {}",
                        tail.lines().last().unwrap_or("")
                    );
                    progress(&format!("{f}: {reason}"));
                    not_built.push(NotBuilt {
                        unit: f.clone(),
                        reason,
                    });
                    continue;
                }
                Err(e) => return Err(compile_error(e)),
            };
            progress(&format!("compiling {f} (patched){why}"));
            let patched = tree
                .compile(f, sandbox::command(&mounts, "make"))
                .map_err(compile_error)?;
            let object = tree::object_of(&tree.dir, f)?;
            let b = Built {
                file: f.clone(),
                because_of: u.because_of.clone(),
                object,
                orig,
                patched,
            };
            let layout = layout_refusals(&b)?;
            out.push(b);
            if !layout.is_empty() {
                progress(&format!(
                    "{f}: data layouts change; not compiling the other units"
                ));
                return Ok(Compiled {
                    built: out,
                    not_built,
                    layout,
                });
            }
        }
        Ok(Compiled {
            built: out,
            not_built,
            layout: Vec::new(),
        })
    })();
    // Leave no object built from patched sources behind.
    for u in units {
        tree.remove_object(&u.file);
    }
    result
}

/// What the tree's headers declare about descriptor-table entries (a probe compiled against
/// the tree in a scratch directory; see `suture_kernel::layouts`).
pub fn declared_layouts(tree: &Tree) -> Result<Vec<Declared>, BuildError> {
    let (scratch, _cleanup) = Scratch::new("layouts");
    Ok(suture_kernel::layouts::declared(tree, &scratch)?)
}

fn rel_name(rel: &Path) -> String {
    rel.display().to_string()
}

fn mounts(tree: &Path, touched: &[Touched]) -> Vec<Mount> {
    let tree = std::path::absolute(tree).unwrap_or_else(|_| tree.to_path_buf());
    touched
        .iter()
        .map(|t| Mount {
            copy: crate::abs(&t.patched),
            original: tree.join(&t.rel),
        })
        .collect()
}

/// A failed kbuild compile; a failed bind mount says what suture needs.
fn compile_error(e: tree::Error) -> BuildError {
    match e {
        tree::Error::Compile {
            file,
            code: Some(sandbox::MOUNT_FAILED),
            tail,
        } => BuildError::Kernel(tree::Error::Compile {
            file,
            code: Some(sandbox::MOUNT_FAILED),
            tail: format!("{tail}\n{}", sandbox::MOUNT_FAILED_HINT),
        }),
        e => BuildError::Kernel(e),
    }
}

/// The differ's verdict on every unit: the patchable ones, or the refusal. `diff_text` (the
/// fix) confirms functions that differ only by moved line numbers, which are left out;
/// `declared` (from [`declared_layouts`]) is what the tree's headers say the descriptor
/// tables look like: a unit whose tables fit other layouts is refused.
pub fn diff<'b>(
    built: &'b [Built],
    diff_text: &str,
    declared: &[Declared],
    progress: &mut dyn FnMut(&str),
) -> Result<Result<Vec<Patched<'b>>, KernelBuildReport>, BuildError> {
    let options = suture_object::Options {
        line_map: Some(std::sync::Arc::new(
            suture_object::lines::LineMap::from_unified_diff(diff_text),
        )),
        ..Default::default()
    };
    let mut patches = Vec::new();
    let mut lines = Vec::new();
    let mut reasons = Vec::new();
    for b in built {
        let object = |what: &str| {
            let what = format!("{} ({what})", b.file);
            move |source| BuildError::Analysis { what, source }
        };
        let o = suture_object::Object::parse(&b.orig).map_err(object("original"))?;
        let p = suture_object::Object::parse(&b.patched).map_err(object("patched"))?;
        let d = suture_object::analyze_with(&o, &p, options.clone()).map_err(|source| {
            BuildError::Analysis {
                what: format!("diffing {}", b.file),
                source,
            }
        })?;
        let mut disagree = suture_object::special::disagreements(&o, declared);
        disagree.extend(suture_object::special::disagreements(&p, declared));
        disagree.dedup();
        if !disagree.is_empty() {
            for reason in disagree {
                lines.push(format!("{}: {reason}", b.file));
                reasons.push(KernelRefusal {
                    unit: Some(b.file.clone()),
                    symbol: None,
                    kind: Some(UnsupportedKind::SpecialSection),
                    reason,
                });
            }
            continue;
        }
        match d.report.status {
            Status::NoChange => progress(&format!("{}: no functional change", b.file)),
            Status::Unsupported => {
                for u in &d.report.unsupported {
                    lines.push(format!("{} ({}): {}", u.symbol, b.file, u.reason));
                    reasons.push(KernelRefusal {
                        unit: Some(b.file.clone()),
                        symbol: Some(u.symbol.clone()),
                        kind: Some(u.kind),
                        reason: u.reason.clone(),
                    });
                }
            }
            Status::Patchable => {
                let patch =
                    suture_object::emit::emit(&d).map_err(|source| BuildError::Analysis {
                        what: format!("writing the patch object of {}", b.file),
                        source,
                    })?;
                progress(&format!(
                    "{} ({}): {} changed, {} new function(s)",
                    b.file,
                    b.object,
                    d.report
                        .changed_functions
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    d.report.new_functions.len()
                ));
                for n in &d.report.notes {
                    progress(&format!("{}: note: {n}", b.file));
                }
                patches.push(Patched {
                    built: b,
                    patch,
                    report: d.report.clone(),
                });
            }
        }
    }
    if !reasons.is_empty() {
        return Ok(Err(KernelBuildReport::refused(
            format!("the fix cannot be live-patched:\n  {}", lines.join("\n  ")),
            reasons,
        )));
    }
    Ok(Ok(patches))
}

/// The livepatch module for the patched units; `Ok(Err(refusal))` when the generator refuses
/// a symbol.
pub fn generate(
    patches: &[Patched],
    opts: Options,
) -> Result<Result<Module, KernelBuildReport>, BuildError> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| BuildError::io(&opts.out_dir, e))?;
    let units: Vec<Unit> = patches
        .iter()
        .map(|p| Unit {
            source: p.built.file.clone(),
            object: p.built.object.clone(),
            orig: &p.built.orig,
            patch: &p.patch,
            report: &p.report,
        })
        .collect();
    match generate::generate(&units, &opts) {
        Ok(m) => Ok(Ok(m)),
        Err(generate::Error::Refused(r)) => {
            let reasons = r
                .iter()
                .map(|x| KernelRefusal {
                    unit: Some(x.unit.clone()),
                    symbol: Some(x.symbol.clone()),
                    kind: x.kind,
                    reason: x.reason.clone(),
                })
                .collect();
            let message = generate::Error::Refused(r).to_string();
            Ok(Err(KernelBuildReport::refused(message, reasons)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the whole pipeline. `progress` receives one line per step.
pub fn build(
    opts: &KernelBuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelBuildReport, BuildError> {
    let start = Instant::now();
    let text = std::fs::read_to_string(&opts.diff).map_err(|source| BuildError::ReadFix {
        path: opts.diff.display().to_string(),
        source,
    })?;
    let set = PatchSet::parse(&opts.source, &text)?;
    let files: Vec<String> = set.files.iter().map(|f| rel_name(&f.rel)).collect();
    if let Err(message) = check_files(&files) {
        return Ok(KernelBuildReport::refused(message, Vec::new()));
    }
    let Checked { headers, release } = match check(&opts.source, opts.headers.as_deref())? {
        Ok(c) => c,
        Err(refused) => return Ok(refused),
    };

    // The target's identity: read now, so a wrong file fails before minutes of compiling.
    let target = match &opts.kernel_notes {
        Some(p) => Some(KernelIdentity {
            release: release.clone(),
            vmlinux_build_id: read_notes(p)?,
        }),
        None => None,
    };
    let Plan {
        units: to_build,
        headers: reaches,
        not_built: left_out,
    } = match units_to_build(&opts.source, &files, opts.max_header_units, progress)? {
        Ok(u) => u,
        Err(refused) => return Ok(refused),
    };
    progress(&format!(
        "kernel {release}: rebuilding {} unit(s) of {}",
        to_build.len(),
        opts.source.display()
    ));
    let t = Tree::open(&opts.source, &headers.cc)?;
    let t_build = Instant::now();
    let Compiled {
        built,
        not_built: failed,
        layout,
    } = compile(&t, &set, &text, &to_build, progress)?;
    let mut not_built = left_out;
    not_built.extend(failed);
    if !layout.is_empty() {
        let lines: Vec<String> = layout
            .iter()
            .map(|r| format!("{}: {}", r.unit.as_deref().unwrap_or(""), r.reason))
            .collect();
        let mut refused = KernelBuildReport::refused(
            format!("the fix cannot be live-patched:\n  {}", lines.join("\n  ")),
            layout,
        );
        refused.not_built = not_built;
        refused.headers = reaches;
        return Ok(refused);
    }
    let declared = declared_layouts(&t)?;
    drop(t);
    let compile_s = t_build.elapsed().as_secs_f64();

    // Units the target's configuration leaves out: nothing to patch there, whatever the
    // fix changes in them (a fix often touches drivers of other architectures or options).
    let built = match &opts.kallsyms {
        None => built,
        Some(p) => {
            let table = suture_kernel::kallsyms::read_kallsyms(p)
                .map_err(|e| BuildError::from(generate::Error::Symbols(e)))?;
            let mut kept = Vec::new();
            for b in built {
                let why = if b.object == "vmlinux" {
                    generate::not_in_vmlinux(&b.orig, &table).map_err(|source| {
                        BuildError::Analysis {
                            what: format!("{} (original)", b.file),
                            source,
                        }
                    })?
                } else {
                    None
                };
                match why {
                    Some(reason) => {
                        progress(&format!("{}: {reason}", b.file));
                        not_built.push(NotBuilt {
                            unit: b.file.clone(),
                            reason,
                        });
                    }
                    None => kept.push(b),
                }
            }
            kept
        }
    };

    let patches = match diff(&built, &text, &declared, progress)? {
        Ok(p) => p,
        Err(mut refused) => {
            refused.not_built = not_built;
            refused.headers = reaches;
            return Ok(refused);
        }
    };
    if patches.is_empty() {
        return Ok(KernelBuildReport {
            not_built,
            headers: reaches,
            ..KernelBuildReport::outcome(KernelOutcome::NoChange)
        });
    }

    let name = generate::module_name(&match &opts.name {
        Some(n) => n.clone(),
        None => format!(
            "suture_{}",
            opts.diff.file_stem().unwrap_or_default().to_string_lossy()
        ),
    });
    progress(&format!("building livepatch module {name}"));
    let gen_opts = Options {
        name,
        replace: opts.replace,
        headers,
        kallsyms: opts.kallsyms.clone(),
        module_dirs: opts.module_dirs.clone(),
        out_dir: opts.out_dir.clone(),
        target,
    };
    let module = match generate(&patches, gen_opts)? {
        Ok(m) => m,
        Err(mut refused) => {
            refused.not_built = not_built;
            refused.headers = reaches;
            return Ok(refused);
        }
    };
    Ok(KernelBuildReport {
        module: Some(module),
        release: Some(release),
        units: patches
            .iter()
            .map(|p| KernelUnitReport {
                file: p.built.file.clone(),
                object: p.built.object.clone(),
                because_of: p.built.because_of.clone(),
                report: p.report.clone(),
            })
            .collect(),
        headers: reaches,
        not_built,
        seconds: Some(Seconds {
            compile: compile_s,
            total: start.elapsed().as_secs_f64(),
        }),
        ..KernelBuildReport::outcome(KernelOutcome::Built)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_units_and_headers_are_accepted() {
        let d = "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c\n--- a/fs/proc/cmdline.c\n\
                 +++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n--- a/x.h\t2020\n+++ b/x.h\t2020\n";
        let set = PatchSet::parse(Path::new("/nonexistent"), d).unwrap();
        let files: Vec<String> = set.files.iter().map(|f| rel_name(&f.rel)).collect();
        assert_eq!(files, vec!["fs/proc/cmdline.c", "x.h"]);
        assert!(check_files(&files).is_ok());
        assert!(check_files(&["a.c".into(), "b.h".into()]).is_ok());
        assert!(check_files(&["arch/x86/entry/entry_64.S".into()])
            .unwrap_err()
            .contains("assembly"));
        assert_eq!(check_files(&[]).unwrap_err(), "the diff touches no file");
    }

    #[test]
    fn kernel_notes_must_hold_a_build_id() {
        let d = std::env::temp_dir().join(format!("suture-notes-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let text = d.join("kallsyms");
        std::fs::write(&text, "ffffffff81000000 T _stext\n").unwrap();
        let e = read_notes(&text).unwrap_err().to_string();
        assert!(
            e.contains("is not a copy of the target kernel's /sys/kernel/notes"),
            "{e}"
        );
        assert!(e.contains("cat /sys/kernel/notes > notes"), "{e}");
        let e = read_notes(&d.join("missing")).unwrap_err().to_string();
        assert!(e.contains("No such file"), "{e}");
        // A GNU build-id note of 20 bytes, as every Debian kernel has.
        let mut notes = Vec::new();
        for w in [4u32, 20, 3] {
            notes.extend_from_slice(&w.to_le_bytes());
        }
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0xab; 20]);
        let good = d.join("notes");
        std::fs::write(&good, notes).unwrap();
        assert_eq!(read_notes(&good).unwrap(), "ab".repeat(20));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The JSON of each outcome has the fields of `suture.kernel-build/1` and no others.
    #[test]
    fn report_json_per_outcome() {
        let r = KernelBuildReport::outcome(KernelOutcome::NoChange);
        assert_eq!(
            serde_json::to_value(&r).unwrap().to_string(),
            r#"{"schema":"suture.kernel-build/1","status":"no-change"}"#
        );
        let r = KernelBuildReport::refused("the diff touches no file".into(), Vec::new());
        assert_eq!(
            serde_json::to_value(&r).unwrap().to_string(),
            r#"{"reasons":[{"reason":"the diff touches no file"}],"schema":"suture.kernel-build/1","status":"unsupported"}"#
        );
    }
}
