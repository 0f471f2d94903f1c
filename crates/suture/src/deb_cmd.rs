//! `suture build --deb`: bundles for the files of an installed Debian package
//! (`suture_build::deb`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use suture_build::deb::{self, DebFix, DebOptions, DebSpec};

use crate::build_cmd;

/// Arguments of `suture build --deb`.
pub struct Args {
    pub spec: String,
    pub patches: Vec<PathBuf>,
    pub to: Option<String>,
    pub prepare: bool,
    pub common: build_cmd::Common,
}

pub fn run(mut a: Args) -> Result<u8> {
    let fix = match a.to {
        Some(v) => DebFix::To(v),
        None if a.prepare => DebFix::Prepare,
        None if a.patches.is_empty() => bail!(
            "--deb needs the fix: --patch FILE (repeatable) or --to NEWER_VERSION (or \
             --prepare to build and bind the installed version ahead of a fix)"
        ),
        None => DebFix::Patches(a.patches),
    };
    let opts = DebOptions {
        spec: DebSpec::parse(&a.spec),
        fix,
        // Preparing writes only logs: they may go to the cache.
        out_dir: match a.common.output.take() {
            Some(o) => o,
            None if a.prepare => deb::default_cache().join("prepare"),
            None => bail!("--output is required"),
        },
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
        match &report.build {
            Some(b) => t += &build_cmd::summary(b),
            None => t += "prepared: a fix given later with --patch or --to reuses this build\n",
        }
        crate::out(&t);
    }
    Ok(report
        .build
        .map_or(crate::exit::OK, |b| build_cmd::exit_code(b.outcome)))
}
