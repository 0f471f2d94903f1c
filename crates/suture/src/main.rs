//! The `suture` command line. Glue only: every decision lives in the library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod build_cmd;
mod deb_cmd;
mod demo;
mod diff_cmd;
#[cfg(feature = "fleet")]
mod fleet_cmd;
mod kernel_build;
mod kernel_cmd;
mod plan_cmd;
mod process_cmd;

/// Exit statuses, documented in `--help` and README.md.
pub mod exit {
    /// Success: patchable changes found / the command did what was asked.
    pub const OK: u8 = 0;
    /// An error: unreadable or malformed input, mismatched objects, a failed tool.
    pub const ERROR: u8 = 1;
    /// At least one change cannot be live-patched.
    pub const UNSUPPORTED: u8 = 2;
    /// No functional change.
    pub const NO_CHANGE: u8 = 3;
}

const EXIT_HELP: &str = "\
Exit status:
  0  success (for `diff`: patchable changes found)
  1  error (unreadable or malformed input, mismatched objects, bad arguments)
  2  at least one change cannot be live-patched
  3  no functional change";

/// Exit status of the kernel commands.
pub(crate) const EXIT_HELP_KERNEL: &str = "\
Exit status:
  0  done
  1  error or refusal; the message says which code the kernel runs (its original code, or
     the patch still fully enabled)";

/// Exit status of the commands that act on processes, or only read them.
pub(crate) const EXIT_HELP_ACT: &str = "\
Exit status:
  0  done in every process asked
  1  error or refusal in at least one of them; each is reported with what happened to it
     (untouched, rolled back to its original code, exited)";

#[derive(Parser)]
#[command(
    name = "suture",
    version,
    about = "Live patching for running processes and the Linux kernel",
    after_help = EXIT_HELP
)]
struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace); also SUTURE_LOG.
    #[arg(long, global = true, value_name = "LEVEL")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the `build` variant (many options) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Compare two builds of one translation unit and decide what a live patch must contain.
    ///
    /// Both inputs are x86-64 relocatable objects (.o) of the same source file, compiled with
    /// -ffunction-sections -fdata-sections by gcc or clang at any optimisation level.
    #[command(after_help = EXIT_HELP)]
    Diff {
        /// The object built from the deployed source.
        original: PathBuf,
        /// The object built from the fixed source.
        patched: PathBuf,
        /// Print the report as JSON (schema `suture.diff/1`, see docs/diff-json.md).
        #[arg(long)]
        json: bool,
        /// Write the patch object (only the selected code and data) to this file.
        #[arg(short = 'o', long = "output", value_name = "PATCH.o")]
        output: Option<PathBuf>,
        /// Keep functions whose only change is a moved source line number (`__LINE__` in a
        /// logging or assert call below an inserted line). By default they are left out, with
        /// a note; recognising them needs objects compiled with -g.
        #[arg(long)]
        include_line_shifts: bool,
    },
    /// Apply a patch object (from `suture diff -o`) to running processes, without restarting
    /// them. Exit status 0 only when it is live in every process asked.
    #[command(after_help = EXIT_HELP_ACT)]
    Apply {
        /// A patch bundle (from `suture build`), a patch object (from `suture diff -o`), or
        /// a directory: every bundle in it (`*.suture`, in name order; with --all, a bundle
        /// whose file no process maps is skipped with a note).
        patch: PathBuf,
        /// Process to patch (repeat for several).
        #[arg(long = "pid", value_name = "PID", required_unless_present = "all")]
        pids: Vec<i32>,
        /// Every process that maps the patched object: for a bundle, every process mapping a
        /// file with the bundle's build-id; for a patch object, see --object.
        #[arg(long, conflicts_with = "pids")]
        all: bool,
        /// For a bare patch object: the mapped object it is for, a path or path suffix
        /// (default: the executable of each process; required with --all). A bundle selects
        /// its object by build-id instead.
        #[arg(long, value_name = "PATH")]
        object: Option<String>,
        /// Name recorded in the process for status and revert (default: the file stem).
        #[arg(long, value_name = "NAME")]
        id: Option<String>,
        /// Replace this live patch (by id) in the same switch: functions both change move to
        /// the new code, functions only the old one changed get their original code back, and
        /// the old patch's memory is released. For shipping a newer version of a fix.
        #[arg(long, value_name = "ID")]
        replace: Option<String>,
        /// Seconds to keep retrying while a function being replaced is running.
        #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
        timeout: f64,
        /// Do not look for coroutines or saved contexts suspended inside the replaced functions
        /// (by default the stop reads the target's resident writable memory for return
        /// addresses into them, and waits while one is found). Shortens the stop; only for
        /// targets known to run no coroutines: a coroutine suspended in a replaced function
        /// would finish that call in the old code.
        #[arg(long)]
        no_suspended_scan: bool,
        /// Do not move frames that wait in calls from replaced functions to the patched code
        /// (on-stack replacement, docs/osr.md); wait for them to return instead, as a patch
        /// without on-stack replacement maps does.
        #[arg(long)]
        no_osr: bool,
        /// Switch at once with a per-thread transition instead of waiting for busy functions:
        /// threads inside a replaced function keep running the old versions of all replaced
        /// functions until they leave them, every other thread (and every new one) runs the
        /// new versions; no thread mixes the two. `apply` waits for the transition to complete
        /// (`suture status` shows it meanwhile). See docs/transition.md.
        #[arg(long)]
        transition: bool,
        /// How long the transition may take (default 60); then frames still in old code are
        /// moved by on-stack replacement where the patch maps them, or the patch is reverted.
        #[arg(long, value_name = "SECONDS", requires = "transition")]
        transition_timeout: Option<f64>,
        /// How many processes to work on at once (with several `--pid` or `--all`); default
        /// 1, and 8 with `--transition`, whose transitions then overlap. Their stops take
        /// turns, but one process's preparation runs beside another's stop.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: Option<u16>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revert a live patch by its id (the name shown by `suture status`) or by the file it was
    /// applied from.
    #[command(after_help = EXIT_HELP_ACT)]
    Revert {
        /// The patch id, or the bundle or patch object that was applied (its id is read from
        /// the bundle, or is the object's file stem as `apply` records by default).
        #[arg(value_name = "ID|FILE")]
        id: String,
        /// Process to revert in (repeat for several).
        #[arg(long = "pid", value_name = "PID", required_unless_present = "all")]
        pids: Vec<i32>,
        /// Every process where the patch is live.
        #[arg(long, conflicts_with = "pids")]
        all: bool,
        /// Seconds to keep retrying while patched code is running.
        #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
        timeout: f64,
        /// Do not look for coroutines or saved contexts suspended inside the patch's code (by
        /// default the stop reads the target's resident writable memory for return addresses
        /// into it, and waits while one is found). Only for targets known to run no
        /// coroutines: a coroutine suspended in the patch would finish that call in it.
        #[arg(long)]
        no_suspended_scan: bool,
        /// How many processes to work on at once (with several `--pid` or `--all`; default
        /// 1). Their stops take turns, but one process's preparation runs beside another's
        /// stop.
        #[arg(long, default_value_t = suture_process::targets::DEFAULT_JOBS as u16, value_name = "N",
              value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: u16,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the live patches of one process or of every process, read from the processes
    /// themselves (no state on disk).
    #[command(after_help = EXIT_HELP_ACT)]
    Status {
        /// Only this process.
        #[arg(long, value_name = "PID")]
        pid: Option<i32>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage live patches of the running Linux kernel (livepatch modules, through
    /// /sys/kernel/livepatch): load, unload, status.
    #[command(after_help = EXIT_HELP_KERNEL)]
    Kernel {
        #[command(subcommand)]
        command: kernel_cmd::KernelCommand,
    },
    /// Build live-patch bundles from a source tree and a fix (a unified diff).
    ///
    /// Runs the project's build through a compiler wrapper that records every compile and
    /// link, rebuilds only the translation units the diff affects (original and patched, with
    /// one section per function), diffs them, and writes one bundle per changed executable or
    /// shared library into OUTDIR, bound to its GNU build-id. The source tree is never
    /// modified. Exit 0: bundles written; 2: a change cannot be live-patched (reasons per file
    /// and symbol); 3: no change in any compiled output; 1: error (e.g. the build failed).
    #[command(after_help = EXIT_HELP)]
    Build {
        /// The source tree, as it was when the deployed binaries were built.
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present_any = ["kernel", "deb"],
            conflicts_with = "deb"
        )]
        source: Option<PathBuf>,
        /// The fix: a unified diff (`git diff` or `diff -u`; -p1 or -p0 paths). Repeat for a fix
        /// in several patches (applied in order, like a patch series); the default patch id is
        /// the first one's file stem.
        #[arg(
            long,
            value_name = "FIX.patch",
            required_unless_present = "deb",
            conflicts_with = "deb"
        )]
        diff: Vec<PathBuf>,
        /// The project's build command, run with `sh -c` in DIR (CC/CXX are taken from PATH,
        /// where suture's compiler wrapper comes first).
        #[arg(long = "build-cmd", value_name = "CMD", default_value = "make")]
        build_cmd: String,
        /// A deployed binary or library (may be stripped) to bind the bundle to: its build-id,
        /// with every original symbol the patch relies on proved byte-identical. Repeatable.
        #[arg(long = "target", value_name = "PATH")]
        targets: Vec<PathBuf>,
        /// Directory for the bundles (`<file>.suture`), the build log and work files; outside
        /// the source tree. Compile records are kept per tree in $SUTURE_CACHE_DIR (default
        /// ~/.cache/suture).
        #[arg(
            short = 'o',
            long = "output",
            value_name = "OUTDIR",
            required_unless_present_any = ["kernel", "prepare"]
        )]
        output: Option<PathBuf>,
        /// Patch the files of an installed Debian package: PACKAGE (a binary or source package;
        /// its installed version), PACKAGE=VERSION (the installed version), or an unpacked
        /// source tree of it. The source comes from `apt-get source` (cached in
        /// $SUTURE_DEB_CACHE, default /var/tmp/suture/deb); a version the archive no longer
        /// serves is reconstructed from the nearest newer one by reversing the patches its newer
        /// changelog entries added. The package is built the Debian way (`debian/rules build`,
        /// Debian's flags) through the recorded build (once per version; missing build
        /// dependencies are installed with `apt-get build-dep` when run as root); each installed
        /// ELF file is matched with the rebuild by build-id, and when the build-id is not
        /// reproduced the report says why (compiler, build path, dependencies) and whether the
        /// loaded bytes are still identical (then the rebuild gives the addresses). One bundle
        /// is written per installed file the fix changes. Needs --patch or --to; --json prints
        /// schema `suture.deb-build/1` (docs/deb.md).
        #[arg(
            long,
            value_name = "PACKAGE[=VERSION]|SRCDIR",
            conflicts_with = "kernel"
        )]
        deb: Option<String>,
        /// (--deb) The fix: a patch of the source package (-p1 from its root, like
        /// debian/patches). Repeat for a series, applied in order.
        #[arg(long = "patch", value_name = "FILE", requires = "deb")]
        patches: Vec<PathBuf>,
        /// (--deb) The fix: every patch that debian/patches/series of this newer version of the
        /// source package has and the installed version's lacks, in series order.
        #[arg(
            long,
            value_name = "NEWER_VERSION",
            requires = "deb",
            conflicts_with = "patches"
        )]
        to: Option<String>,
        /// (--deb) No fix yet: fetch the installed version's source, build it the Debian way
        /// and bind the installed files (build-ids), so that a fix given later builds in
        /// seconds. Writes no bundle.
        #[arg(long, requires = "deb", conflicts_with_all = ["patches", "to"])]
        prepare: bool,
        /// Patch id recorded in processes (default: the diff's file stem).
        #[arg(long, value_name = "NAME")]
        id: Option<String>,
        /// Where to look for debug files by build-id (`DIR/.build-id/xx/yyyy.debug`); default
        /// /usr/lib/debug. Repeatable.
        #[arg(long = "debug-dir", value_name = "DIR")]
        debug_dirs: Vec<PathBuf>,
        /// Keep functions whose only change is a moved source line number (see `suture diff
        /// --help`); by default they are left out of the bundles, with a note.
        #[arg(long, conflicts_with = "kernel")]
        include_line_shifts: bool,
        /// Build a kernel livepatch module instead: --source is a kernel tree prepared by
        /// scripts/kernel-tree.sh, OUTDIR receives `<name>.ko` (name from --id, default
        /// suture_<diff stem>).
        #[arg(long)]
        kernel: bool,
        /// (--kernel) A copy of the target kernel's /proc/kallsyms, read as root: livepatch
        /// symbol positions (sympos) are computed from it. Needed when vmlinux is patched.
        #[arg(long, value_name = "FILE", requires = "kernel")]
        kallsyms: Option<PathBuf>,
        /// (--kernel) A copy of the target kernel's /sys/kernel/notes (`cat
        /// /sys/kernel/notes > notes` on the target). Required: the module records the build-id
        /// of that kernel's vmlinux and the headers' release, and `suture kernel load` refuses
        /// it on any other kernel.
        #[arg(long = "kernel-notes", value_name = "FILE", requires = "kernel")]
        kernel_notes: Option<PathBuf>,
        /// (--kernel) Where the target's stock modules are (its /lib/modules/<release>),
        /// searched for `<module>.ko` when the fix changes a loadable module. Repeatable.
        #[arg(long = "modules", value_name = "DIR", requires = "kernel")]
        modules: Vec<PathBuf>,
        /// (--kernel) The target's headers tree (default: the headers package KSRC was
        /// prepared from, as recorded by scripts/kernel-tree.sh).
        #[arg(long, value_name = "DIR", requires = "kernel")]
        headers: Option<PathBuf>,
        /// (--kernel) A cumulative patch: enabling it replaces every livepatch already loaded.
        #[arg(long, requires = "kernel")]
        replace: bool,
        /// (--kernel) The most units a changed header may make suture rebuild (the units that
        /// include it, directly or through other headers, and that the configuration builds;
        /// each is compiled before and after the fix). More is refused before compiling.
        #[arg(long = "max-header-units", value_name = "N", requires = "kernel",
              default_value_t = suture_build::kernel::DEFAULT_MAX_HEADER_UNITS)]
        max_header_units: usize,
        /// Print the result as JSON (schema `suture.build/1`, see docs/bundle.md; with
        /// --kernel `suture.kernel-build/1`: status, module, per-unit reports, reasons).
        #[arg(long)]
        json: bool,
    },
    /// Compare hot-patching, rebooting and live-migrating a fleet for one fix: time until every
    /// host is fixed, data moved, per-VM downtime, VM-hours of disruption, spare hosts and
    /// waves, and a recommendation. The inventory (CSV or JSON, see docs/plan.md) lists the
    /// hosts, their VMs, the fix and the policies; the models are documented there too.
    #[command(
        after_help = "Exit status:\n  0  the plan was computed (also when a strategy is \
                            not possible: it says why)\n  1  error (unreadable or malformed \
                            inventory: the line or field is named; cannot write --svg)"
    )]
    Plan {
        /// The inventory: JSON (starts with `{`) or CSV.
        #[arg(value_name = "INVENTORY", required_unless_present = "example")]
        inventory: Option<PathBuf>,
        /// Use the built-in fleet modelled on the 2014 cloud reboots (10,000 hosts x 20 VMs,
        /// 16 GiB memory and 200 GB local disk each, 25 GbE) instead of an inventory.
        #[arg(long, conflicts_with = "inventory")]
        example: bool,
        /// Take the fix's stop window from a `suture apply --json` report (for example of a
        /// staging host): the median `stop_window_us` of the processes it patched.
        #[arg(long = "apply-json", value_name = "FILE")]
        apply_json: Option<PathBuf>,
        /// Print the plan as JSON (schema `suture.plan/1`, see docs/plan.md).
        #[arg(long)]
        json: bool,
        /// Also write an SVG chart of hosts fixed over time per strategy to FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// A signed patch repository for fleet rollout (The Update Framework, see docs/fleet.md):
    /// init, add, withdraw, refresh, list.
    #[cfg(feature = "fleet")]
    #[command(
        after_help = "Exit status:\n  0  done\n  1  error (the published metadata is unchanged)"
    )]
    Repo {
        #[command(subcommand)]
        command: fleet_cmd::RepoCommand,
    },
    /// The host agent: pull the repository, verify it through TUF, apply the patches whose
    /// build-ids match files mapped by running processes, revert withdrawn ones (docs/fleet.md).
    #[cfg(feature = "fleet")]
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Exit status:\n  0  the pass verified the repository and nothing failed\n  1  \
                      the repository did not verify (nothing was applied), or applying or \
                      reverting failed in a process"
    )]
    Agent {
        #[command(flatten)]
        args: fleet_cmd::AgentArgs,
        #[command(subcommand)]
        command: Option<fleet_cmd::AgentCommand>,
    },
    /// Run suture on a built-in example: start a small network service with a memory leak bug,
    /// show the leak, patch it live under load from a shipped fix, show the leak is gone,
    /// revert, and clean up (needs gcc, make and patch).
    #[command(after_help = "Exit status:\n  0  the demo ran to its end\n  1  error")]
    Demo {
        /// Keep the working directory (printed) instead of deleting it.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> ExitCode {
    // Started by a build as `cc`, `gcc`, ... under `suture build`: be the compiler wrapper.
    if let Some(code) = build_cmd::wrapper_mode() {
        return ExitCode::from(code);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors must not look like "unsupported change" (clap's default is 2).
            return ExitCode::from(if e.use_stderr() {
                exit::ERROR
            } else {
                exit::OK
            });
        }
    };
    init_logging(cli.log.as_deref());
    let json_errors = cli.command.json_name();
    let result = match cli.command {
        Command::Diff {
            original,
            patched,
            json,
            output,
            include_line_shifts,
        } => diff_cmd::run(
            &original,
            &patched,
            json,
            output.as_deref(),
            suture_object::Options {
                include_line_shifts,
                osr: true,
                ..Default::default()
            },
        ),
        Command::Apply {
            patch,
            pids,
            all,
            object,
            id,
            replace,
            timeout,
            no_suspended_scan,
            no_osr,
            transition,
            transition_timeout,
            jobs,
            json,
        } => process_cmd::apply(
            &patch,
            process_cmd::ApplyRequest {
                pids,
                all,
                object,
                id,
                replace,
                timeout,
                scan_suspended: !no_suspended_scan,
                move_frames: !no_osr,
                transition: transition.then_some(transition_timeout.unwrap_or(60.0)),
                jobs: jobs.map_or_else(
                    || suture_process::targets::default_jobs(transition),
                    usize::from,
                ),
                json,
            },
        ),
        Command::Revert {
            id,
            pids,
            all,
            timeout,
            no_suspended_scan,
            jobs,
            json,
        } => process_cmd::revert(
            &id,
            &pids,
            all,
            timeout,
            !no_suspended_scan,
            jobs.into(),
            json,
        ),
        Command::Status { pid, json } => process_cmd::status(pid, json),
        Command::Build {
            source,
            diff,
            output,
            id,
            kernel: true,
            kallsyms,
            kernel_notes,
            modules,
            headers,
            replace,
            max_header_units,
            json,
            ..
        } => kernel_build::run(kernel_build::Args {
            source,
            diff,
            output,
            name: id,
            headers,
            kallsyms,
            kernel_notes,
            modules,
            replace,
            max_header_units,
            json,
        }),
        Command::Build {
            deb: Some(deb),
            patches,
            to,
            prepare,
            output,
            id,
            debug_dirs,
            include_line_shifts,
            json,
            ..
        } => deb_cmd::run(deb_cmd::Args {
            spec: deb,
            patches,
            to,
            prepare,
            common: build_cmd::Common {
                output,
                id,
                debug_dirs,
                include_line_shifts,
                json,
            },
        }),
        Command::Build {
            source,
            diff,
            build_cmd,
            targets,
            output,
            id,
            debug_dirs,
            include_line_shifts,
            kernel: false,
            json,
            ..
        } => build_cmd::run(build_cmd::Args {
            source,
            diff,
            build_cmd,
            targets,
            common: build_cmd::Common {
                output,
                id,
                debug_dirs,
                include_line_shifts,
                json,
            },
        }),
        Command::Plan {
            inventory,
            example,
            apply_json,
            json,
            svg,
        } => plan_cmd::run(
            inventory.as_deref(),
            example,
            apply_json.as_deref(),
            json,
            svg.as_deref(),
        ),
        Command::Demo { keep } => demo::run(keep),
        #[cfg(feature = "fleet")]
        Command::Repo { command } => fleet_cmd::repo(command),
        #[cfg(feature = "fleet")]
        Command::Agent { args, command } => fleet_cmd::agent(args, command),
        Command::Kernel { command } => kernel_cmd::run(command),
    };
    match result {
        Ok(code)
            if code == exit::OK && OUTPUT_FAILED.load(std::sync::atomic::Ordering::Relaxed) =>
        {
            ExitCode::from(exit::ERROR)
        }
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("suture: error: {e:#}");
            if let Some(command) = json_errors {
                out(&format!("{}\n", error_json(command, &e)));
            }
            ExitCode::from(exit::ERROR)
        }
    }
}

/// The fix as one diff file: the only `--diff`, or several concatenated (in order) into a
/// file named after the first (its stem gives the default patch id) in a private temporary
/// directory, removed when the returned guard drops.
pub(crate) fn one_diff(diffs: &[PathBuf]) -> Result<(PathBuf, Option<TempDir>)> {
    match diffs {
        [] => anyhow::bail!("--diff is required"),
        [one] => Ok((one.clone(), None)),
        [first, ..] => {
            let dir = TempDir(std::env::temp_dir().join(format!(
                "suture-fix-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            )));
            std::fs::create_dir(&dir.0)
                .with_context(|| format!("cannot create {}", dir.0.display()))?;
            let mut text = String::new();
            for d in diffs {
                let t = std::fs::read_to_string(d)
                    .with_context(|| format!("cannot read {}", d.display()))?;
                text.push_str(&t);
                if !text.ends_with('\n') {
                    text.push('\n');
                }
            }
            let name = first.file_name().unwrap_or_else(|| "fix.diff".as_ref());
            let path = dir.0.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok((path, Some(dir)))
        }
    }
}

/// A directory removed (with its contents) when dropped.
pub(crate) struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A whole-command failure under `--json` (schema `suture.error/1`, docs/process-json.md):
/// the message, and its causes outermost first.
fn error_json(command: &str, e: &anyhow::Error) -> String {
    let v = serde_json::json!({
        "schema": "suture.error/1",
        "command": command,
        "ok": false,
        "error": e.to_string(),
        "causes": e.chain().skip(1).map(|c| c.to_string()).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

impl Command {
    /// The command's name when it was asked for JSON (its errors are then JSON too). The
    /// kernel subcommands write their own.
    fn json_name(&self) -> Option<&'static str> {
        match self {
            Command::Diff { json: true, .. } => Some("diff"),
            Command::Apply { json: true, .. } => Some("apply"),
            Command::Revert { json: true, .. } => Some("revert"),
            Command::Status { json: true, .. } => Some("status"),
            Command::Build { json: true, .. } => Some("build"),
            Command::Plan { json: true, .. } => Some("plan"),
            #[cfg(feature = "fleet")]
            Command::Repo { command } if command.json() => Some("repo"),
            #[cfg(feature = "fleet")]
            Command::Agent {
                args: fleet_cmd::AgentArgs { json: true, .. },
                command: None,
            }
            | Command::Agent {
                command: Some(fleet_cmd::AgentCommand::Status { json: true, .. }),
                ..
            } => Some("agent"),
            _ => None,
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_env("SUTURE_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Set once stdout could not be written for another reason than a closed pipe.
static OUTPUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set once stdout is gone (closed pipe or error): later output is dropped.
static OUTPUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes command output to stdout. A closed pipe (`suture status | head`) never panics and
/// never ends the program early: a command that changes processes or the kernel (`apply
/// --all`, `revert --all`, `kernel load`) finishes its work and returns its own exit code;
/// only the rest of its output is dropped, as the reader asked. Another write error is
/// reported once and makes the exit status 1.
pub fn out(text: &str) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if OUTPUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        OUTPUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            OUTPUT_FAILED.store(true, Ordering::Relaxed);
            eprintln!("suture: error: cannot write output: {e}");
        }
    }
}

/// Reads a whole file with its path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
