//! `suture build --deb`: bundles for the files of an installed Debian package
//! (`suture_build::deb`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use suture_build::deb::{self, DebFix, DebOptions, DebSpec};

use crate::build_cmd;

/// Arguments of `suture build --deb`.
pub struct Args {
    pub spec: String,
    pub patches: Vec<PathBuf>,
    pub to: Option<String>,
    pub common: build_cmd::Common,
}

pub fn run(mut a: Args) -> Result<u8> {
    let fix = match a.to {
        Some(v) => DebFix::To(v),
        None if a.patches.is_empty() => {
            bail!("--deb needs the fix: --patch FILE (repeatable) or --to NEWER_VERSION")
        }
        None => DebFix::Patches(a.patches),
    };
    let opts = DebOptions {
        spec: DebSpec::parse(&a.spec),
        fix,
        out_dir: a.common.output.take().context("--output is required")?,
        cache: deb::default_cache(),
        patch_id: a.common.id.take(),
        created_by: format!("suture {}", env!("CARGO_PKG_VERSION")),
        debug_dirs: a.common.debug_dirs(),
        wrapper_exe: std::env::current_exe()?,
        diff_options: a.common.diff_options(),
        install_build_deps: true,
    };
    let mut progress = |line: &str| eprintln!("suture build: {line}");
    let report = deb::build(&opts, &mut progress)?;
    if a.common.json {
        crate::out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        let mut t = format!(
            "{} {} ({} source",
            report.source, report.version, report.origin.kind
        );
        if let Some(from) = &report.origin.from_version {
            t += &format!(
                ", reconstructed from {from} without {}",
                report.origin.dropped_patches.join(", ")
            );
        }
        t += &format!("; built in {})\n", report.tree);
        for f in &report.files {
            t += &format!("{} ({}): {}\n", f.path, f.package, f.status);
        }
        t += &build_cmd::summary(&report.build);
        crate::out(&t);
    }
    Ok(build_cmd::exit_code(report.outcome))
}
