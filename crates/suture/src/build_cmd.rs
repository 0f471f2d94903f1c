//! `suture build`: patch bundles from a source tree and a fix. Also the compiler-wrapper mode
//! that the build runs through (see `suture_build::record`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use suture_build::{BuildOptions, Outcome};

use crate::exit;

/// Arguments of `suture build` (userspace).
pub struct Args {
    pub source: Option<PathBuf>,
    pub diff: Option<PathBuf>,
    pub build_cmd: String,
    pub targets: Vec<PathBuf>,
    pub output: Option<PathBuf>,
    pub id: Option<String>,
    pub debug_dirs: Vec<PathBuf>,
    pub json: bool,
}

/// When this process was started by a build as `cc`, `gcc`, ... (wrapper mode): records the
/// command and runs the real compiler. Returns the exit status only when it could not.
pub fn wrapper_mode() -> Option<u8> {
    let tool = suture_build::record::wrapper_invocation()?;
    let code = suture_build::record::run_wrapper(&tool);
    Some(u8::try_from(code).unwrap_or(exit::ERROR))
}

pub fn run(a: Args) -> Result<u8> {
    let exe = std::env::current_exe()?;
    let opts = BuildOptions {
        source: a.source.context("--source is required")?,
        diff: a.diff.context("--diff is required")?,
        build_cmd: a.build_cmd,
        targets: a.targets,
        out_dir: a.output.context("--output is required")?,
        patch_id: a.id,
        created_by: format!("suture {}", env!("CARGO_PKG_VERSION")),
        debug_dirs: if a.debug_dirs.is_empty() {
            suture_build::bind::default_debug_dirs()
        } else {
            a.debug_dirs
        },
        wrapper_exe: exe,
    };
    let json = a.json;
    let mut progress = |line: &str| {
        // Progress goes to stderr so stdout stays the result (JSON or the summary).
        eprintln!("suture build: {line}");
    };
    // The error's message and its causes are printed as one line by main.
    let report = suture_build::build(&opts, &mut progress)?;
    if json {
        crate::out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
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
        crate::out(&t);
    }
    Ok(match report.outcome {
        Outcome::Written => exit::OK,
        Outcome::Refused => exit::UNSUPPORTED,
        Outcome::NoChange => exit::NO_CHANGE,
    })
}

/// The build-id of the ELF file at `path`, cached by the file's identity (device, inode).
fn build_id_of(
    path: &std::path::Path,
    key: (u64, u64),
    cache: &mut std::collections::HashMap<(u64, u64), Option<Vec<u8>>>,
) -> Option<Vec<u8>> {
    cache
        .entry(key)
        .or_insert_with(|| {
            let data = std::fs::read(path).ok()?;
            suture_build::elfinfo::build_id(&data)
        })
        .clone()
}

/// The mapped file of `pid` with this build-id: (path as the process sees it, path to open it
/// from here). `Err` lists what the process maps instead.
fn find_object(
    pid: i32,
    build_id: &[u8],
    cache: &mut std::collections::HashMap<(u64, u64), Option<Vec<u8>>>,
) -> std::result::Result<(String, PathBuf), String> {
    use suture_process::maps::{MapName, Maps};
    let maps = Maps::read(suture_process::ids::Pid(pid)).map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    for m in &maps.mappings {
        let (MapName::Path(path), 0) = (&m.name, m.offset) else {
            continue;
        };
        let Some(open) = m.open_path(suture_process::ids::Pid(pid)) else {
            continue;
        };
        let key = (
            (u64::from(m.dev.major) << 32) | u64::from(m.dev.minor),
            m.inode,
        );
        let id = build_id_of(&open, key, cache);
        let shown = path.display().to_string();
        if id.as_deref() == Some(build_id) {
            return Ok((shown, open));
        }
        if !seen.iter().any(|(p, _)| *p == shown) {
            seen.push((shown, id));
        }
    }
    let with_id: Vec<String> = seen
        .iter()
        .filter_map(|(p, id)| Some(format!("{p} ({})", suture_bundle::hex(id.as_deref()?))))
        .collect();
    Err(if with_id.is_empty() {
        "no file with a build-id".into()
    } else {
        with_id.join(", ")
    })
}

/// The bundle's symbols as a symbol table for the patched object (used where the mapped file
/// is stripped).
pub(crate) fn bundle_symbols(m: &suture_bundle::Manifest) -> suture_process::symbols::ElfSymbols {
    use suture_process::symbols::{ElfSymbols, Sym};
    let mut t = ElfSymbols {
        has_symtab: true,
        ..Default::default()
    };
    for s in &m.symbols {
        let sym = Sym {
            value: s.address,
            size: s.size,
            tls: s.kind == "tls",
            ifunc: false,
        };
        match &s.file {
            Some(f) => t
                .locals
                .entry((f.clone(), s.name.clone()))
                .or_default()
                .push(sym),
            None => {
                t.globals.insert(s.name.clone(), sym);
            }
        }
    }
    t
}

/// `suture apply BUNDLE`: the object patched in each process is the mapped file whose
/// build-id is the bundle's; its bytes are checked against the bundle's digests first.
pub fn apply_bundle(
    path: &std::path::Path,
    bytes: &[u8],
    req: &crate::process_cmd::ApplyRequest,
    timeout: std::time::Duration,
) -> Result<u8> {
    let (pids, all, object, json) = (&req.pids, req.all, &req.object, req.json);
    let id = req.id.clone();
    use serde_json::json;
    use suture_process::apply::{self, ApplyOptions};
    if object.is_some() {
        bail!(
            "{} is a bundle: it selects the object to patch by build-id, so --object does not \
             apply",
            path.display()
        );
    }
    let bundle = suture_bundle::decode(bytes).with_context(|| format!("{}", path.display()))?;
    let m = &bundle.manifest;
    let build_id = suture_bundle::parse_hex(&m.target.build_id).unwrap_or_default();
    let id = id.unwrap_or_else(|| m.patch_id.clone());
    let mut cache = std::collections::HashMap::new();
    let targets: Vec<i32> = if all {
        let found: Vec<i32> = crate::process_cmd::all_pids()
            .into_iter()
            .filter(|&p| find_object(p, &build_id, &mut cache).is_ok())
            .collect();
        if found.is_empty() {
            bail!(
                "no process maps an object with build-id {} ({})",
                m.target.build_id,
                m.target.file_name
            );
        }
        found
    } else {
        pids.to_vec()
    };
    let symbols = std::sync::Arc::new(bundle_symbols(m));
    let mut results = Vec::new();
    let mut failed = 0;
    for pid in targets {
        let attempt = find_object(pid, &build_id, &mut cache)
            .map_err(|maps| {
                format!(
                    "the bundle was built for build-id {} ({}), but the process maps {maps}; \
                     nothing was changed",
                    m.target.build_id, m.target.file_name
                )
            })
            .and_then(|(object, open)| {
                let data =
                    std::fs::read(&open).map_err(|e| format!("cannot read {object}: {e}"))?;
                let bad = suture_build::bind::verify_symbols(&data, &m.symbols);
                if !bad.is_empty() {
                    return Err(format!(
                        "{object} has the bundle's build-id but not its bytes: {}; nothing \
                         was changed",
                        bad.join("; ")
                    ));
                }
                let opts = ApplyOptions {
                    timeout,
                    patch_id: id.clone(),
                    object: Some(object.clone()),
                    build_id: Some(build_id.clone()),
                    symbols: Some(symbols.clone()),
                    replace: req.replace.clone(),
                };
                apply::apply(suture_process::ids::Pid(pid), &bundle.patch_object, &opts)
                    .map(|a| (object, a))
                    .map_err(|e| e.to_string())
            });
        match attempt {
            Ok((object, a)) => {
                if !json {
                    println!(
                        "{id}: live in process {pid} on {object} ({} functions redirected, \
                         stopped {} us for the switch)",
                        a.redirects.len(),
                        a.stop_window_us
                    );
                }
                results.push(json!({"pid": pid, "applied": true, "object": object, "result": a}));
            }
            Err(e) => {
                failed += 1;
                if !json {
                    eprintln!("suture: process {pid}: {e}");
                }
                results.push(json!({"pid": pid, "applied": false, "error": e}));
            }
        }
    }
    if json {
        crate::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({
                "patch": id,
                "build_id": m.target.build_id,
                "processes": results
            }))?
        ));
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}
