//! `suture build --kernel`: flags to `suture_build::kernel::build`, its report to output and
//! exit codes.

use std::path::PathBuf;

use anyhow::{bail, Result};
use suture_build::kernel::{self, KernelBuildOptions, KernelOutcome};

use crate::exit;

pub struct Args {
    pub source: Option<PathBuf>,
    pub diff: Vec<PathBuf>,
    pub output: Option<PathBuf>,
    pub name: Option<String>,
    pub headers: Option<PathBuf>,
    pub kallsyms: Option<PathBuf>,
    pub kernel_notes: Option<PathBuf>,
    pub modules: Vec<PathBuf>,
    pub replace: bool,
    pub max_header_units: usize,
    pub json: bool,
}

pub fn run(a: Args) -> Result<u8> {
    let (Some(source), Some(output)) = (a.source, a.output) else {
        bail!("suture build --kernel needs --source KSRC, --diff FIX.patch and -o OUTDIR");
    };
    let (diff, _combined) = crate::one_diff(&a.diff)?;
    let json = a.json;
    let opts = KernelBuildOptions {
        source,
        diff,
        out_dir: output,
        name: a.name,
        headers: a.headers,
        kallsyms: a.kallsyms,
        kernel_notes: a.kernel_notes,
        module_dirs: a.modules,
        replace: a.replace,
        max_header_units: a.max_header_units,
    };
    let mut progress = |m: &str| {
        if !json {
            eprintln!("suture: {m}");
        }
    };
    let report = kernel::build(&opts, &mut progress)?;
    if json {
        crate::out(&format!("{}\n", serde_json::to_value(&report)?));
    }
    Ok(match report.status {
        KernelOutcome::Unsupported => {
            if !json {
                eprintln!("suture: {}", report.message);
            }
            exit::UNSUPPORTED
        }
        KernelOutcome::NoChange => {
            if !json {
                eprintln!("suture: the fix changes no code that runs");
            }
            exit::NO_CHANGE
        }
        KernelOutcome::Built => {
            if !json {
                print_built(&report);
            }
            exit::OK
        }
    })
}

fn print_built(report: &kernel::KernelBuildReport) {
    let Some(module) = &report.module else {
        return;
    };
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
        "wrote {} ({} livepatch relocation section(s), for kernel {} with vmlinux build-id {}) \
         in {:.1} s\n",
        module.path.display(),
        module.klp_sections.len(),
        module.target_kernel.release,
        module.target_kernel.vmlinux_build_id,
        report.seconds.map_or(0.0, |s| s.total)
    ));
}
