//! `suture build`: patch bundles from a source tree and a fix. Also the compiler-wrapper mode
//! that the build runs through (see `suture_build::record`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use suture_build::{BuildOptions, Outcome};

use crate::exit;

/// Arguments of `suture build` (userspace).
pub struct Args {
    pub source: Option<PathBuf>,
    pub diff: Vec<PathBuf>,
    pub build_cmd: String,
    pub targets: Vec<PathBuf>,
    pub common: Common,
}

/// Options every userspace `suture build` takes (also `--deb`).
pub struct Common {
    pub output: Option<PathBuf>,
    pub id: Option<String>,
    pub debug_dirs: Vec<PathBuf>,
    pub include_line_shifts: bool,
    pub json: bool,
}

impl Common {
    /// `--debug-dir`, or the default directories.
    pub fn debug_dirs(&mut self) -> Vec<PathBuf> {
        let dirs = std::mem::take(&mut self.debug_dirs);
        if dirs.is_empty() {
            suture_build::bind::default_debug_dirs()
        } else {
            dirs
        }
    }

    pub fn diff_options(&self) -> suture_object::Options {
        suture_object::Options {
            include_line_shifts: self.include_line_shifts,
            osr: true,
            ..Default::default()
        }
    }
}

/// When this process was started by a build as `cc`, `gcc`, ... (wrapper mode): records the
/// command and runs the real compiler. Returns the exit status only when it could not.
pub fn wrapper_mode() -> Option<u8> {
    let tool = suture_build::record::wrapper_invocation()?;
    let code = suture_build::record::run_wrapper(&tool);
    Some(u8::try_from(code).unwrap_or(exit::ERROR))
}

pub fn run(mut a: Args) -> Result<u8> {
    let exe = std::env::current_exe()?;
    let (diff, _combined) = crate::one_diff(&a.diff)?;
    let opts = BuildOptions {
        source: a.source.context("--source is required")?,
        diff,
        build_cmd: a.build_cmd,
        targets: a.targets,
        out_dir: a.common.output.take().context("--output is required")?,
        patch_id: a.common.id.take(),
        created_by: format!("suture {}", env!("CARGO_PKG_VERSION")),
        debug_dirs: a.common.debug_dirs(),
        wrapper_exe: exe,
        diff_options: a.common.diff_options(),
    };
    let json = a.common.json;
    let mut progress = |line: &str| {
        // Progress goes to stderr so stdout stays the result (JSON or the summary).
        eprintln!("suture build: {line}");
    };
    // The error's message and its causes are printed as one line by main.
    let report = suture_build::build(&opts, &mut progress)?;
    if json {
        crate::out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        crate::out(&summary(&report));
    }
    Ok(exit_code(report.outcome))
}

/// The human summary of a `suture build` report (what `--json` does not print).
pub(crate) fn summary(report: &suture_build::BuildReport) -> String {
    let mut t = String::new();
    for f in &report.files {
        let detail = if f.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", f.detail)
        };
        t += &format!("{} [{}]{detail}\n", f.file, f.verdict);
    }
    for r in &report.refusals {
        let sym = if r.symbol.is_empty() {
            String::new()
        } else {
            format!(" {}", r.symbol)
        };
        t += &format!("refused: {}{sym}: {}\n", r.file, r.reason);
    }
    for n in &report.notes {
        t += &format!("note: {n}\n");
    }
    for s in &report.skipped {
        t += &format!("skipped: {s} (no --target names it)\n");
    }
    for b in &report.bundles {
        t += &format!(
            "bundle {} for {} (build-id {}): replaces {}; {} original symbols verified \
             (addresses from {} {})\n",
            b.path,
            b.target,
            b.build_id,
            b.functions.join(", "),
            b.symbols_verified,
            b.twin.kind,
            b.twin.path
        );
    }
    t += match report.outcome {
        Outcome::Written => "",
        Outcome::Refused => "nothing written: the fix cannot be live-patched\n",
        Outcome::NoChange => "nothing written: no change in any compiled output\n",
    };
    t
}

/// The exit status of a build's outcome.
pub(crate) fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Written => exit::OK,
        Outcome::Refused => exit::UNSUPPORTED,
        Outcome::NoChange => exit::NO_CHANGE,
    }
}

/// `suture apply BUNDLE`: the object patched in each process is the mapped file whose
/// build-id is the bundle's; its bytes are checked against the bundle's digests first
/// (`suture_process::bundle`).
pub fn apply_bundle(
    path: &std::path::Path,
    bytes: &[u8],
    req: &crate::process_cmd::ApplyRequest,
    timeout: std::time::Duration,
) -> Result<u8> {
    use serde_json::json;
    use suture_process::bundle::{self, BundleOptions};
    if req.object.is_some() {
        bail!(
            "{} is a bundle: it selects the object to patch by build-id, so --object does not \
             apply",
            path.display()
        );
    }
    let bundle = suture_bundle::decode(bytes).with_context(|| format!("{}", path.display()))?;
    let m = &bundle.manifest;
    let id = req.id.clone().unwrap_or_else(|| m.patch_id.clone());
    let opts = BundleOptions {
        timeout,
        patch_id: Some(id.clone()),
        replace: req.replace.clone(),
        scan_suspended: req.scan_suspended,
        move_frames: req.move_frames,
        transition: crate::process_cmd::transition(req)?,
    };
    let mut results = Vec::new();
    let mut failed = 0;
    let targets = crate::process_cmd::targets(req);
    bundle::apply(&bundle, &targets, &opts, req.jobs, |o| {
        let pid = o.pid;
        match o.result {
            Ok(bundle::BundleApplied { object, applied: a }) => {
                if !req.json {
                    crate::out(&format!(
                        "{id}: live in process {pid} on {object} ({})\n",
                        crate::process_cmd::switch_summary(&a)
                    ));
                }
                results.push(json!({"pid": pid.0, "applied": true, "object": object, "result": a}));
            }
            Err(e) => {
                failed += 1;
                if !req.json {
                    eprintln!("suture: process {pid}: {e}");
                }
                results.push(json!({"pid": pid.0, "applied": false, "error": e.to_string(), "outcome": e.outcome(), "busy": e.busy()}));
            }
        }
    })?;
    crate::process_cmd::sort_by_pid(&mut results);
    let files = patched_files(&results);
    if req.json {
        crate::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({
                "schema": "suture.process/2",
                "patch_id": id,
                "build_id": m.target.build_id,
                "processes": results,
                "files": files
            }))?
        ));
    } else {
        for f in &files {
            let owner = match (&f["package"], &f["version"]) {
                (serde_json::Value::String(p), serde_json::Value::String(v)) => {
                    format!("package {p} {v}, ")
                }
                _ => String::new(),
            };
            crate::out(&format!(
                "{id}: patched {owner}file {} in {} process(es): {}\n",
                f["file"].as_str().unwrap_or_default(),
                f["pids"].as_array().map_or(0, Vec::len),
                f["pids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}

/// The files a bundle patched, each with the processes it was patched in and the Debian
/// package that installed it, when one did.
fn patched_files(results: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut by_file: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for r in results.iter().filter(|r| r["applied"] == true) {
        if let (Some(o), Some(pid)) = (r["object"].as_str(), r["pid"].as_u64()) {
            by_file.entry(o.to_string()).or_default().push(pid);
        }
    }
    by_file
        .into_iter()
        .map(|(file, pids)| {
            let (package, version) = suture_build::deb::owner(&file).unzip();
            serde_json::json!({"file": file, "pids": pids, "package": package, "version": version})
        })
        .collect()
}
