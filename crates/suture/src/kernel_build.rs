//! `suture build --kernel`: a livepatch module for the target kernel from its source tree and a
//! fix (see `suture_kernel::tree` for the tree side and `suture_kernel::generate` for the
//! module).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use suture_kernel::generate::{self, Options, Unit};
use suture_kernel::kbuild::Headers;
use suture_kernel::tree::{self, Tree};
use suture_object::Status;

use crate::exit;

pub struct Args {
    pub source: Option<PathBuf>,
    pub diff: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub name: Option<String>,
    pub headers: Option<PathBuf>,
    pub kallsyms: Option<PathBuf>,
    pub modules: Vec<PathBuf>,
    pub replace: bool,
    pub json: bool,
}

pub fn run(a: Args) -> Result<u8> {
    let start = Instant::now();
    let (Some(source), Some(diff), Some(output)) = (a.source, a.diff, a.output) else {
        bail!("suture build --kernel needs --source KSRC, --diff FIX.patch and -o OUTDIR");
    };
    let json = a.json;
    let progress = |m: &str| {
        if !json {
            eprintln!("suture: {m}");
        }
    };
    let text = std::fs::read_to_string(&diff)
        .with_context(|| format!("reading the fix {}", diff.display()))?;
    let diff = std::path::absolute(&diff)?;
    let files = tree::touched_files(&text);
    // Exit 2 with the reasons: `reasons` are `{unit, symbol, reason}` objects for --json.
    let refused = |msg: String, reasons: Vec<serde_json::Value>, a_json: bool| -> Result<u8> {
        if a_json {
            let reasons = if reasons.is_empty() {
                vec![json!({ "reason": msg })]
            } else {
                reasons
            };
            crate::out(&format!(
                "{}\n",
                json!({"schema": "suture.kernel-build/1", "status": "unsupported", "reasons": reasons})
            ));
        } else {
            eprintln!("suture: {msg}");
        }
        Ok(exit::UNSUPPORTED)
    };
    if let Err(e) = tree::check_files(&files) {
        return refused(e.to_string(), Vec::new(), json);
    }
    let headers = match a.headers {
        Some(h) => Headers::at(&h)?,
        None => match tree::prepared_headers(&source) {
            Some(rel) => Headers::for_release(&rel)?,
            None => bail!(
                "{} does not say which headers package it was prepared from (no \
                 .suture-ready from scripts/kernel-tree.sh): pass --headers",
                source.display()
            ),
        },
    };
    let release = tree::check_tree(&source, &headers.dir)?;
    if let Err(e) = generate::check_config(&headers) {
        return refused(e.to_string(), Vec::new(), json);
    }
    generate::check_compiler(&headers)?;

    progress(&format!(
        "kernel {release}: rebuilding {} unit(s) of {}",
        files.len(),
        source.display()
    ));
    let t = Tree::open(&source, &headers.cc)?;
    let t_build = Instant::now();
    let built = t.build(&diff, &files, &mut |m| progress(m))?;
    drop(t);
    let compile_s = t_build.elapsed().as_secs_f64();

    // Diff every unit.
    let mut patches = Vec::new();
    let mut reasons = Vec::new();
    let mut reasons_json = Vec::new();
    for b in &built {
        let o = suture_object::Object::parse(&b.orig)
            .with_context(|| format!("{} (original)", b.file))?;
        let p = suture_object::Object::parse(&b.patched)
            .with_context(|| format!("{} (patched)", b.file))?;
        let d = suture_object::analyze(&o, &p).with_context(|| format!("diffing {}", b.file))?;
        match d.report.status {
            Status::NoChange => progress(&format!("{}: no functional change", b.file)),
            Status::Unsupported => {
                for u in &d.report.unsupported {
                    reasons.push(format!("{} ({}): {}", u.symbol, b.file, u.reason));
                    reasons_json.push(json!({
                        "unit": b.file, "symbol": u.symbol, "kind": u.kind, "reason": u.reason,
                    }));
                }
            }
            Status::Patchable => {
                let bytes = suture_object::emit::emit(&d)
                    .with_context(|| format!("writing the patch object of {}", b.file))?;
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
                patches.push((b, bytes, d.report.clone()));
            }
        }
    }
    if !reasons.is_empty() {
        return refused(
            format!(
                "the fix cannot be live-patched:\n  {}",
                reasons.join("\n  ")
            ),
            reasons_json,
            json,
        );
    }
    if patches.is_empty() {
        if json {
            crate::out(&format!(
                "{}\n",
                json!({"schema": "suture.kernel-build/1", "status": "no-change"})
            ));
        } else {
            eprintln!("suture: the fix changes no code that runs");
        }
        return Ok(exit::NO_CHANGE);
    }

    let name = generate::module_name(&match a.name {
        Some(n) => n,
        None => format!(
            "suture_{}",
            diff.file_stem().unwrap_or_default().to_string_lossy()
        ),
    });
    std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
    let units: Vec<Unit> = patches
        .iter()
        .map(|(b, bytes, report)| Unit {
            source: b.file.clone(),
            object: b.object.clone(),
            orig: &b.orig,
            patch: bytes,
            report,
        })
        .collect();
    let opts = Options {
        name,
        replace: a.replace,
        headers,
        kallsyms: a.kallsyms,
        module_dirs: a.modules,
        out_dir: output.clone(),
    };
    progress(&format!("building livepatch module {}", opts.name));
    let module = match generate::generate(&units, &opts) {
        Ok(m) => m,
        Err(generate::Error::Refused(r)) => {
            let list = r.iter().map(|x| json!(x)).collect();
            return refused(generate::Error::Refused(r).to_string(), list, json);
        }

        Err(e) => return Err(e.into()),
    };
    let total_s = start.elapsed().as_secs_f64();
    if json {
        crate::out(&format!(
            "{}\n",
            json!({
                "schema": "suture.kernel-build/1",
                "status": "built",
                "module": module,
                "release": release,
                "units": patches.iter().map(|(b, _, r)| json!({
                    "file": b.file, "object": b.object, "report": r,
                })).collect::<Vec<_>>(),
                "seconds": {"compile": compile_s, "total": total_s},
            })
        ));
    } else {
        for o in &module.objects {
            crate::out(&format!(
                "{}: {}{}\n",
                o.object,
                o.functions.join(" "),
                if o.callbacks.is_empty() {
                    String::new()
                } else {
                    format!(" (callbacks: {})", o.callbacks.join(", "))
                }
            ));
        }
        crate::out(&format!(
            "wrote {} ({} livepatch relocation section(s), vermagic {}) in {total_s:.1} s\n",
            display(&module.path),
            module.klp_sections.len(),
            module.vermagic.trim()
        ));
    }
    Ok(exit::OK)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
