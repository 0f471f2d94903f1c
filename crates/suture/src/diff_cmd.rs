//! `suture diff`: report and patch-object output.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use suture_object::report::{RefScope, Report, Status};
use suture_object::Object;

use crate::exit;

pub fn run(
    original: &Path,
    patched: &Path,
    json: bool,
    output: Option<&Path>,
    options: suture_object::Options,
) -> Result<u8> {
    let orig_bytes = crate::read(original)?;
    let patched_bytes = crate::read(patched)?;
    let orig = Object::parse(&orig_bytes).with_context(|| format!("{}", original.display()))?;
    let new = Object::parse(&patched_bytes).with_context(|| format!("{}", patched.display()))?;
    let d = suture_object::analyze_with(&orig, &new, options)?;
    let report = &d.report;

    let mut wrote = None;
    if let Some(out) = output {
        if report.status == Status::Patchable {
            let bytes = suture_object::emit::emit(&d)?;
            std::fs::write(out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            wrote = Some(bytes.len());
        }
    }

    if json {
        crate::out(&format!("{}\n", serde_json::to_string_pretty(report)?));
    } else {
        let mut text = human(report);
        if let Some(out) = output {
            match wrote {
                Some(n) => {
                    text += &format!("\nWrote patch object {} ({n} bytes).\n", out.display())
                }
                None => text += &format!("\nNot writing {}: nothing to patch.\n", out.display()),
            }
        }
        crate::out(&text);
    }
    Ok(match report.status {
        Status::Patchable => exit::OK,
        Status::NoChange => exit::NO_CHANGE,
        Status::Unsupported => exit::UNSUPPORTED,
    })
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// The human-readable report.
pub fn human(r: &Report) -> String {
    let mut s = String::new();
    let verdict = match r.status {
        Status::Patchable => "patchable",
        Status::NoChange => "no functional change",
        Status::Unsupported => "cannot be live-patched",
    };
    let _ = write!(
        s,
        "{verdict}: {}",
        plural(r.changed_functions.len(), "changed function")
    );
    if !r.new_functions.is_empty() {
        let _ = write!(s, ", {}", plural(r.new_functions.len(), "new function"));
    }
    if !r.new_data.is_empty() {
        let _ = write!(s, ", {}", plural(r.new_data.len(), "new data object"));
    }
    if !r.unsupported.is_empty() {
        let _ = write!(s, ", {}", plural(r.unsupported.len(), "unsupported change"));
    }
    if let Some(f) = &r.source_file {
        let _ = write!(s, " ({f})");
    }
    s.push('\n');
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }

    if !r.unsupported.is_empty() {
        s.push_str("\nUnsupported:\n");
        for u in &r.unsupported {
            let sym = if u.symbol.is_empty() {
                "(object)"
            } else {
                &u.symbol
            };
            let _ = writeln!(s, "  {sym}: {}", u.reason);
        }
    }
    if !r.changed_functions.is_empty() {
        s.push_str("\nChanged functions:\n");
        for f in &r.changed_functions {
            let name = if f.name == f.original_name {
                f.name.clone()
            } else {
                format!("{} (was {})", f.name, f.original_name)
            };
            let _ = writeln!(s, "  {name}");
            for reason in &f.reasons {
                let kind = serde_json::to_value(reason.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let _ = writeln!(s, "      {kind}: {}", reason.detail);
            }
        }
    }
    for (title, list) in [
        ("New functions", &r.new_functions),
        ("New data", &r.new_data),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{title}:");
        for n in list {
            let extra = n
                .replaces
                .as_ref()
                .map(|o| format!(", new contents of {o}"))
                .unwrap_or_default();
            let _ = writeln!(s, "  {} ({}, {} bytes{extra})", n.name, n.section, n.size);
        }
    }
    let original: Vec<_> = r
        .references
        .iter()
        .filter(|x| x.scope == RefScope::Original)
        .collect();
    if !original.is_empty() {
        s.push_str("\nUses from the original:\n");
        for x in original {
            let kind = serde_json::to_value(x.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let scope = match &x.file {
                Some(f) => format!("static in {f}"),
                None => "global".into(),
            };
            let _ = writeln!(s, "  {} ({kind}, {scope})", x.name);
        }
    }
    let external: Vec<_> = r
        .references
        .iter()
        .filter(|x| x.scope == RefScope::External)
        .map(|x| x.name.as_str())
        .collect();
    if !external.is_empty() {
        let _ = writeln!(s, "\nUses from elsewhere: {}", external.join(", "));
    }
    if !r.removed_functions.is_empty() {
        let _ = writeln!(
            s,
            "\nNo longer present (left in place): {}",
            r.removed_functions.join(", ")
        );
    }
    s
}
