//! `suture kernel load|unload|status`: kernel live patches through `/sys/kernel/livepatch`.
//!
//! Human output goes to stdout, transition progress to stderr; with `--json` stdout carries
//! exactly one JSON document (schema `suture.kernel/1`), also for errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use suture_kernel::livepatch::{self, Kernel, Modprobe, Options, PatchStatus, Progress, Target};

use crate::{exit, out};

const SCHEMA: &str = "suture.kernel/1";

#[derive(Subcommand)]
pub enum KernelCommand {
    /// Load a livepatch module into the running kernel and wait until every task runs the
    /// patched code. A transition that does not finish in --timeout is reversed (the kernel
    /// ends on its original code and the module is removed) unless --force is given.
    ///
    /// A module built by `suture build --kernel` records the release and vmlinux build-id of
    /// its target kernel; it is refused on any other kernel. Modules it depends on that are
    /// not loaded are loaded with modprobe first.
    #[command(after_help = crate::EXIT_HELP_KERNEL)]
    Load {
        /// The livepatch module (.ko, built for the running kernel).
        patch: PathBuf,
        /// Do not load the modules the patch depends on: refuse, naming them, when one is not
        /// loaded.
        #[arg(long)]
        no_modprobe: bool,
        /// Seconds to wait for the transition; the tasks blocking it are reported every second.
        #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
        timeout: f64,
        /// When the transition does not finish in time, force it instead of reversing it:
        /// blocked tasks are marked switched without checking their stacks (unsafe if they run
        /// a function being replaced).
        #[arg(long)]
        force: bool,
        /// Print the result as JSON (schema suture.kernel/1).
        #[arg(long)]
        json: bool,
    },
    /// Disable a kernel live patch, wait until no task runs its code, and remove its module.
    /// A transition that does not finish in --timeout is reversed (the patch stays enabled)
    /// unless --force is given.
    #[command(after_help = crate::EXIT_HELP_KERNEL)]
    Unload {
        /// The patch name (as `suture kernel status` shows it) or its .ko file.
        patch: String,
        /// Seconds to wait for the transition; the tasks blocking it are reported every second.
        #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
        timeout: f64,
        /// When the transition does not finish in time, force it (unsafe if a blocked task
        /// runs the patch's code); the kernel then keeps the module loaded forever.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON (schema suture.kernel/1).
        #[arg(long)]
        json: bool,
    },
    /// List the kernel's live patches: state, patched objects and functions, and the tasks
    /// blocking a transition in progress.
    #[command(after_help = crate::EXIT_HELP_KERNEL)]
    Status {
        /// Only this patch (an error if it is not live).
        patch: Option<String>,
        /// Print the result as JSON (schema suture.kernel/1).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: KernelCommand) -> Result<u8> {
    match command {
        KernelCommand::Load {
            patch,
            no_modprobe,
            timeout,
            force,
            json,
        } => load(&patch, timeout, force, no_modprobe, json),
        KernelCommand::Unload {
            patch,
            timeout,
            force,
            json,
        } => unload(&patch, timeout, force, json),
        KernelCommand::Status { patch, json } => status(patch.as_deref(), json),
    }
}

fn seconds(s: f64) -> Result<Duration> {
    if !(0.0..=3600.0).contains(&s) {
        bail!("--timeout must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn print_progress(p: &Progress) {
    let what = match p.target {
        Target::Patched => "patching",
        Target::Unpatched => "unpatching",
    };
    let mut line = format!(
        "suture: {}: {what} transition running for {} s",
        p.patch,
        p.elapsed.as_secs()
    );
    if p.blockers.is_empty() {
        line.push('\n');
    } else {
        line.push_str(&format!(
            ", {} task(s) not switched yet:\n",
            p.blockers.len()
        ));
        for b in p.blockers.iter().take(10) {
            line.push_str(&format!("  {b}\n"));
        }
    }
    eprint!("{line}");
}

/// Reports an error: JSON on stdout with `--json`, the message on stderr always.
fn fail(command: &str, e: &livepatch::Error, json: bool) -> Result<u8> {
    eprintln!("suture: error: {e}");
    if json {
        let v = json!({
            "schema": SCHEMA,
            "command": command,
            "ok": false,
            "error": {
                "kind": e.kind(),
                "message": e.to_string(),
                "blockers": e.blockers(),
                "kernel_log": e.kernel_log(),
                "missing_modules": e.missing_modules(),
            },
        });
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    Ok(exit::ERROR)
}

pub fn load(patch: &Path, timeout: f64, force: bool, no_modprobe: bool, json: bool) -> Result<u8> {
    let mut progress = print_progress;
    let opts = Options {
        timeout: seconds(timeout)?,
        force,
        progress: Some(&mut progress),
        modprobe: if no_modprobe {
            Modprobe::Never
        } else {
            Modprobe::Auto
        },
    };
    match Kernel::default().load(patch, opts) {
        Ok(r) => {
            // Warnings go to stderr in both forms (the JSON also has them in `warnings`).
            for w in &r.warnings {
                eprintln!("suture: warning: {w}");
            }
            if !json && !r.dependencies_loaded.is_empty() {
                eprintln!(
                    "suture: loaded module(s) the patch depends on: {}",
                    r.dependencies_loaded.join(", ")
                );
            }
            if json {
                let v = json!({"schema": SCHEMA, "command": "load", "ok": true, "result": r});
                out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
            } else {
                let funcs: usize = r
                    .status
                    .as_ref()
                    .map_or(0, |s| s.objects.iter().map(|o| o.functions.len()).sum());
                out(&format!(
                    "{}: live ({funcs} function(s); {}; loaded in {:.3} s, transition {:.3} s{})\n",
                    r.patch,
                    if r.identity.verified {
                        "built for this kernel (release and build-id checked)"
                    } else {
                        "target kernel not recorded"
                    },
                    r.load_seconds,
                    r.transition_seconds,
                    if r.forced {
                        "; FORCED: blocked tasks were switched without a stack check"
                    } else {
                        ""
                    }
                ));
            }
            Ok(exit::OK)
        }
        Err(e) => fail("load", &e, json),
    }
}

pub fn unload(name: &str, timeout: f64, force: bool, json: bool) -> Result<u8> {
    let mut progress = print_progress;
    let opts = Options {
        timeout: seconds(timeout)?,
        force,
        progress: Some(&mut progress),
        modprobe: Modprobe::Never,
    };
    match Kernel::default().unload(name, opts) {
        Ok(r) => {
            if json {
                let v = json!({"schema": SCHEMA, "command": "unload", "ok": true, "result": r});
                out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
            } else {
                out(&format!(
                    "{}: unloaded (transition {:.3} s){}\n",
                    r.patch,
                    r.transition_seconds,
                    if r.module_removed {
                        ""
                    } else if r.forced {
                        "; the transition was forced, so the kernel keeps its module loaded"
                    } else {
                        "; the kernel still holds a reference to its module, which stays loaded"
                    }
                ));
            }
            Ok(exit::OK)
        }
        Err(e) => fail("unload", &e, json),
    }
}

pub fn status(name: Option<&str>, json: bool) -> Result<u8> {
    let status = match Kernel::default().status() {
        Ok(s) => s,
        Err(e) => return fail("status", &e, json),
    };
    let patches: Vec<&PatchStatus> = status
        .patches
        .iter()
        .filter(|p| name.is_none_or(|n| p.name == n.replace('-', "_")))
        .collect();
    if let Some(n) = name {
        if patches.is_empty() {
            let e = livepatch::Error::NotLoaded {
                name: n.to_string(),
                live: status.patches.iter().map(|p| p.name.clone()).collect(),
            };
            return fail("status", &e, json);
        }
    }
    if json {
        let v: Value = json!({
            "schema": SCHEMA,
            "command": "status",
            "ok": true,
            "supported": status.supported,
            "tainted": status.tainted,
            "patches": patches,
        });
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
        return Ok(exit::OK);
    }
    if !status.supported {
        out("this kernel has no livepatch support (no /sys/kernel/livepatch)\n");
        return Ok(exit::OK);
    }
    if patches.is_empty() {
        out("no kernel live patches\n");
        return Ok(exit::OK);
    }
    let mut s = String::new();
    for p in patches {
        let state = match (p.enabled, p.transition) {
            (true, false) => "enabled",
            (true, true) => "enabled, patching transition in progress",
            (false, true) => "disabled, unpatching transition in progress",
            (false, false) => "disabled",
        };
        s.push_str(&format!("{}: {state}", p.name));
        if let Some(m) = &p.module {
            if let Some(t) = m.taint.as_deref().filter(|t| !t.is_empty()) {
                s.push_str(&format!(" (module taint {t})"));
            }
        }
        s.push('\n');
        for o in &p.objects {
            s.push_str(&format!(
                "  {}: {}\n",
                o.name,
                if o.patched {
                    "patched"
                } else if o.name == "vmlinux" {
                    "not patched"
                } else {
                    "not patched (module not loaded)"
                }
            ));
            for f in &o.functions {
                s.push_str(&format!("    {} (sympos {})\n", f.name, f.sympos));
            }
        }
        for b in &p.blockers {
            s.push_str(&format!("  blocked by {b}\n"));
        }
    }
    out(&s);
    Ok(exit::OK)
}
