//! The livepatch runtime: load, unload and inspect patches of the running kernel through
//! `/sys/kernel/livepatch` (kernel documentation: `Documentation/livepatch/livepatch.rst`).
//!
//! How a patch goes live, and what this module does at each step:
//! 1. **Load.** The module file is checked first (ELF, `.modinfo` with `livepatch=Y`, its name),
//!    so the common mistakes get a precise error before the kernel sees anything. Then its
//!    target kernel (see [`crate::identity`]): the release and vmlinux build-id `suture build
//!    --kernel` records must be those of the running kernel, or the load is refused (a module
//!    without them, built by another tool, loads with a warning). Then its dependencies: the
//!    modules named in `.modinfo` `depends=` (those whose exported symbols it uses) that are
//!    not loaded are loaded with modprobe (the kernel's own helper, `/proc/sys/kernel/modprobe`,
//!    or `modprobe` in `PATH`), or the load is refused naming them, instead of letting the
//!    kernel fail with an unknown symbol. Then
//!    `finit_module(2)` (through nix, no `unsafe` here); its `init` calls `klp_enable_patch`,
//!    which redirects the functions and starts a *transition*. A rejection is decoded from the
//!    errno, with the kernel's own explanation taken from `/dev/kmsg` (read from the position
//!    it had just before the call, so only this load's lines are shown).
//! 2. **Transition.** Every task switches to the patched code on its own once none of the
//!    patched functions is on its stack. `<patch>/transition` reads 1 until all have switched;
//!    `/proc/PID/task/TID/patch_state` tells which tasks have not (their state differs from
//!    the target). Those are the *blockers*, reported with `/proc/PID/task/TID/stack`.
//! 3. **Timeout.** If the transition has not finished after `timeout`, the default is to reverse
//!    it (write the opposite value to `enabled`), so the kernel ends fully on its old code (load)
//!    or fully patched (unload), never half and half; a reversed load also removes the module.
//!    `force` (only when the caller asks) writes `force` instead: the kernel marks every task
//!    switched, which is unsafe if a blocker really runs a function being replaced. After a
//!    forced *unpatching* transition the kernel keeps its reference to the patch module forever
//!    (a task may still run the patch's code), so that module can never be removed; a forced
//!    patching transition has no such cost (6.1, `klp_force_transition`).
//! 4. **Unload.** Write 0 to `enabled`, wait for the unpatch transition and for the sysfs
//!    directory to disappear (6.1 removes it once the patch is freed), then `delete_module(2)`.
//!
//! Only one transition can run at a time in the kernel; loading while another patch is in
//! transition is refused up front.
//!
//! A patch for a module (a `klp_object` other than vmlinux) is applied to the module when it
//! loads, and the module can be removed while the patch is live; but Linux 6.1 does not undo
//! the patch's livepatch relocations for a module that goes away (`clear_relocate_add` came
//! in 6.2): when the module loads again, applying them finds the old values ("Invalid
//! relocation target, existing value is nonzero") and livepatch refuses to load the module
//! until the patch is unloaded. A load lists every patched module (`patched_modules`) and,
//! on a kernel without `clear_relocate_add` in its kallsyms (6.1; Debian 13's 6.12 has it),
//! warns for each one the patch has `.klp.rela.<module>.*` sections for (a patch without
//! relocations for a module is simply applied again when it reloads).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{delete_module, finit_module, DeleteModuleFlags, ModuleInitFlags};
use serde::Serialize;

use crate::identity;

/// Errors of the livepatch runtime. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading and removing kernel modules needs root (CAP_SYS_MODULE): run suture as root")]
    NotRoot,
    #[error(
        "this kernel has no livepatch support ({} does not exist): it needs CONFIG_LIVEPATCH=y",
        .0.display()
    )]
    NoLivepatch(PathBuf),
    #[error("this kernel cannot load modules (finit_module: ENOSYS; CONFIG_MODULES is off)")]
    NoModules,
    #[error("{}: not a loadable kernel module: {reason}", path.display())]
    NotAModule { path: PathBuf, reason: String },
    #[error(
        "{}: module {name} is not a livepatch module (its .modinfo has no livepatch=Y); \
         load ordinary modules with modprobe",
        path.display()
    )]
    NotLivepatch { path: PathBuf, name: String },
    #[error("patch {0} is already loaded (see `suture kernel status`; unload it first)")]
    AlreadyLoaded(String),
    /// The module records a target kernel other than the running one.
    #[error(
        "{}: built for another kernel: its {what} is {module} but the running kernel's is \
         {running}; build the patch against this kernel (its headers, and a copy of its \
         /proc/kallsyms and /sys/kernel/notes)",
        path.display()
    )]
    WrongKernel {
        path: PathBuf,
        /// `release` or `vmlinux build-id`.
        what: &'static str,
        module: String,
        running: String,
    },
    /// The running kernel's identity cannot be read, so a module that records one is not
    /// loaded blind.
    #[error(
        "{}: records the kernel it was built for, but the running kernel's {what} cannot be \
         read ({reason}), so it cannot be checked",
        path.display()
    )]
    UnknownKernel {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// Modules the patch needs are not loaded (and could not be loaded).
    #[error(
        "patch {patch} uses symbols exported by {} not loaded{why}: load {} first (modprobe \
         {}) and retry",
        plural(.missing), them(.missing), .missing.join(" ")
    )]
    MissingDependencies {
        patch: String,
        missing: Vec<String>,
        /// What was tried (empty, or `; modprobe ...: ...`).
        why: String,
    },
    #[error(
        "patch {0} is in transition: the kernel runs one transition at a time; wait for it \
         (`suture kernel status`) and retry"
    )]
    Busy(String),
    #[error("the kernel rejected {}: {errno}: {hint}{}", path.display(), render_log(kernel_log))]
    Rejected {
        path: PathBuf,
        errno: Errno,
        hint: &'static str,
        /// The kernel log lines printed during the attempt (empty when `/dev/kmsg` is
        /// unreadable).
        kernel_log: Vec<String>,
    },
    #[error("no live patch named {name} (live: {})", if live.is_empty() { "none".to_string() } else { live.join(", ") })]
    NotLoaded { name: String, live: Vec<String> },
    #[error(
        "module {0} is loaded but is not a live patch (it has no /sys/kernel/livepatch entry)"
    )]
    NotAPatch(String),
    #[error("{}", stuck_message(.patch, *.target, *.waited, .blockers, .outcome))]
    TransitionStuck {
        patch: String,
        target: Target,
        waited: Duration,
        blockers: Vec<Blocker>,
        outcome: StuckOutcome,
    },
    #[error("patch {patch} is disabled but its module could not be removed: {errno}")]
    Remove { patch: String, errno: Errno },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl Error {
    /// A stable identifier of the error, for JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotRoot => "not_root",
            Error::NoLivepatch(_) => "no_livepatch",
            Error::NoModules => "no_modules",
            Error::NotAModule { .. } => "not_a_module",
            Error::NotLivepatch { .. } => "not_livepatch",
            Error::AlreadyLoaded(_) => "already_loaded",
            Error::WrongKernel { .. } => "wrong_kernel",
            Error::UnknownKernel { .. } => "unknown_kernel",
            Error::MissingDependencies { .. } => "missing_dependencies",
            Error::Busy(_) => "busy",
            Error::Rejected { .. } => "rejected",
            Error::NotLoaded { .. } => "not_loaded",
            Error::NotAPatch(_) => "not_a_patch",
            Error::TransitionStuck { .. } => "transition_stuck",
            Error::Remove { .. } => "remove_failed",
            Error::Io { .. } => "io",
        }
    }

    /// The tasks that blocked a transition (empty for other errors).
    pub fn blockers(&self) -> &[Blocker] {
        match self {
            Error::TransitionStuck { blockers, .. } => blockers,
            _ => &[],
        }
    }

    /// The modules a refused load needs loaded first (empty for other errors).
    pub fn missing_modules(&self) -> &[String] {
        match self {
            Error::MissingDependencies { missing, .. } => missing,
            _ => &[],
        }
    }

    /// The kernel log lines captured for a rejected module (empty for other errors).
    pub fn kernel_log(&self) -> &[String] {
        match self {
            Error::Rejected { kernel_log, .. } => kernel_log,
            _ => &[],
        }
    }
}

fn plural(modules: &[String]) -> String {
    match modules {
        [one] => format!("module {one}, which is"),
        more => format!("modules {}, which are", more.join(", ")),
    }
}

fn them(modules: &[String]) -> &'static str {
    if modules.len() == 1 {
        "it"
    } else {
        "them"
    }
}

fn render_log(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut s = String::from("\nkernel log:");
    for l in lines {
        s.push_str("\n  ");
        s.push_str(l);
    }
    s
}

fn stuck_message(
    patch: &str,
    target: Target,
    waited: Duration,
    blockers: &[Blocker],
    outcome: &StuckOutcome,
) -> String {
    let what = match target {
        Target::Patched => "patching",
        Target::Unpatched => "unpatching",
    };
    let mut s = format!(
        "the {what} transition of {patch} did not finish within {:.1} s; ",
        waited.as_secs_f64()
    );
    s.push_str(match outcome {
        StuckOutcome::Reversed => match target {
            Target::Patched => {
                "it was reversed and the module removed: the kernel runs its original code"
            }
            Target::Unpatched => "it was reversed: the patch stays fully enabled",
        },
        StuckOutcome::ReverseStuck => {
            "reversing it did not finish either: the patch is still in transition \
             (see `suture kernel status`; `suture kernel unload` finishes the job once it is \
             done; `--force` completes it, at your own risk)"
        }
        StuckOutcome::ReversedModuleKept => {
            "it was reversed (the kernel runs its original code) but the kernel still holds \
             the module; `suture kernel unload` removes it later"
        }
    });
    if blockers.is_empty() {
        s.push_str("\nno task was reported as blocking (a kthread or the idle task may be)");
    } else {
        s.push_str(&format!("\n{} task(s) blocked it:", blockers.len()));
        for b in blockers.iter().take(20) {
            s.push_str(&format!("\n  {b}"));
        }
        if blockers.len() > 20 {
            s.push_str(&format!("\n  ... and {} more", blockers.len() - 20));
        }
    }
    s.push_str(
        "\nretry later or with a longer --timeout; `--force` completes the transition without \
         checking those tasks (unsafe if they run a function being replaced; after a forced \
         unload the module can never be removed)",
    );
    s
}

/// What happened after a transition timed out without `force`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StuckOutcome {
    /// The transition was reversed and finished: the kernel is back where it started.
    Reversed,
    /// The reversal did not finish within the timeout either.
    ReverseStuck,
    /// A load was reversed but its module could not be removed yet.
    ReversedModuleKept,
}

/// The state a transition moves tasks to (the values of `patch_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Unpatched = 0,
    Patched = 1,
}

/// A task that has not switched to the target state yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub pid: i32,
    pub tid: i32,
    pub comm: String,
    /// Its kernel stack, innermost first (`/proc/PID/task/TID/stack`; empty when unreadable).
    pub stack: Vec<String>,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {}", self.comm, self.pid)?;
        if self.tid != self.pid {
            write!(f, ", thread {}", self.tid)?;
        }
        write!(f, ")")?;
        if !self.stack.is_empty() {
            write!(f, " in {}", self.stack.join(" <- "))?;
        }
        Ok(())
    }
}

/// Progress of a transition, passed to the caller's callback about once a second.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    pub patch: String,
    pub target: Target,
    pub elapsed: Duration,
    pub blockers: Vec<Blocker>,
}

/// One live patch as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PatchStatus {
    /// The patch name (its module's name).
    pub name: String,
    pub enabled: bool,
    /// This patch is the one in transition (the kernel runs at most one).
    pub transition: bool,
    /// Patched objects: `vmlinux` or a module name.
    pub objects: Vec<ObjectStatus>,
    /// The module's reference count and taint flags, from `/sys/module/<name>`.
    pub module: Option<ModuleInfo>,
    /// Tasks not yet switched, when in transition.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blockers: Vec<Blocker>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectStatus {
    /// `vmlinux` or the name of a module.
    pub name: String,
    /// Its functions are redirected now (0 for a module that is not loaded).
    pub patched: bool,
    pub functions: Vec<FunctionStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FunctionStatus {
    pub name: String,
    /// Which of several local symbols of that name (the kernel shows 1 for a unique one).
    pub sympos: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleInfo {
    pub refcnt: Option<u64>,
    pub taint: Option<String>,
}

/// Everything `status` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// `/sys/kernel/livepatch` exists.
    pub supported: bool,
    /// `/proc/sys/kernel/tainted` (bit 15, `K`, is set once any live patch was loaded).
    pub tainted: Option<u64>,
    pub patches: Vec<PatchStatus>,
}

/// The target kernel a module records, checked against the running kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IdentityCheck {
    /// `suture_release=` of the module (`None`: not recorded).
    pub module_release: Option<String>,
    /// `suture_vmlinux_build_id=` of the module (`None`: not recorded).
    pub module_build_id: Option<String>,
    /// `/proc/sys/kernel/osrelease` (what `uname -r` prints).
    pub running_release: Option<String>,
    /// The GNU build-id in `/sys/kernel/notes`.
    pub running_build_id: Option<String>,
    /// The module records a vmlinux build-id and it is the running kernel's (and so is the
    /// release, when recorded).
    pub verified: bool,
}

/// The result of a successful load.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub patch: String,
    pub module: PathBuf,
    /// The module's target kernel against the running one.
    pub identity: IdentityCheck,
    /// Modules of `depends=` that were not loaded and were loaded with modprobe first.
    pub dependencies_loaded: Vec<String>,
    /// Modules the patch patches (its objects other than vmlinux), loaded or not.
    pub patched_modules: Vec<String>,
    /// Things to know: a module that records no target kernel, patched modules that must not
    /// be removed and loaded again while the patch is loaded.
    pub warnings: Vec<String>,
    /// Time spent in `finit_module` (relocation, `klp_enable_patch`).
    pub load_seconds: f64,
    /// From the end of `finit_module` to the end of the transition.
    pub transition_seconds: f64,
    /// The transition was completed with `force`.
    pub forced: bool,
    pub status: Option<PatchStatus>,
}

/// The result of a successful unload.
#[derive(Clone, Debug, Serialize)]
pub struct UnloadReport {
    pub patch: String,
    pub transition_seconds: f64,
    pub forced: bool,
    /// The module was removed (false after a forced unpatching transition: the kernel keeps a
    /// reference to that module forever).
    pub module_removed: bool,
}

/// Options of load and unload.
pub struct Options<'a> {
    /// How long to wait for a transition before reversing it (or forcing it, with `force`).
    pub timeout: Duration,
    /// Complete a transition that did not finish in `timeout` with `force`.
    pub force: bool,
    /// Called about once a second while a transition runs.
    pub progress: Option<&'a mut dyn FnMut(&Progress)>,
    /// How dependencies that are not loaded are loaded (load only).
    pub modprobe: Modprobe,
}

/// How a load brings in the modules a patch depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Modprobe {
    /// The kernel's own helper (`/proc/sys/kernel/modprobe`, usually `/sbin/modprobe`) when it
    /// exists, else `modprobe` in `PATH`; without either the load is refused naming them.
    #[default]
    Auto,
    /// Never: a missing dependency refuses the load, naming it.
    Never,
    /// This program, called as `PROGRAM -- NAME` (tests).
    Program(PathBuf),
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            force: false,
            progress: None,
            modprobe: Modprobe::Auto,
        }
    }
}

/// The facts read from a module file before it is given to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleFile {
    /// The module name (`name=` in `.modinfo`, as the kernel will call it).
    pub name: String,
    pub livepatch: bool,
    pub vermagic: Option<String>,
    /// `suture_release=`: the release of the kernel it was built for.
    pub release: Option<String>,
    /// `suture_vmlinux_build_id=`: the build-id of that kernel's vmlinux.
    pub vmlinux_build_id: Option<String>,
    /// `depends=`: the modules whose exported symbols it uses.
    pub depends: Vec<String>,
    /// Objects with livepatch relocations (`.klp.rela.<object>.<section>`), sorted.
    pub klp_rela_objects: Vec<String>,
}

/// Reads `.modinfo` of a module file.
pub fn inspect_module(path: &Path) -> Result<ModuleFile, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    parse_module(&bytes).map_err(|reason| Error::NotAModule {
        path: path.into(),
        reason,
    })
}

fn parse_module(bytes: &[u8]) -> Result<ModuleFile, String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(bytes).map_err(|e| format!("not an ELF file ({e})"))?;
    if file.kind() != object::ObjectKind::Relocatable {
        return Err("not a relocatable ELF object (modules are .ko files built by kbuild)".into());
    }
    let modinfo = file
        .section_by_name(".modinfo")
        .ok_or("it has no .modinfo section (build it with kbuild)")?;
    let data = modinfo
        .data()
        .map_err(|e| format!("unreadable .modinfo ({e})"))?;
    let mut name = None;
    let mut livepatch = false;
    let mut vermagic = None;
    let (mut release, mut vmlinux_build_id, mut depends) = (None, None, Vec::new());
    for entry in data.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        if let Some((k, v)) = entry.split_once('=') {
            match k {
                "name" => name = Some(v.to_string()),
                "livepatch" => livepatch = v == "Y",
                "vermagic" => vermagic = Some(v.to_string()),
                identity::MODINFO_RELEASE => release = Some(v.to_string()),
                identity::MODINFO_BUILD_ID => vmlinux_build_id = Some(v.to_string()),
                "depends" => depends.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(str::to_string),
                ),
                _ => {}
            }
        }
    }
    for d in &depends {
        if d.len() >= 56
            || !d
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        {
            return Err(format!("invalid module name {d:?} in .modinfo depends="));
        }
    }
    let mut klp_rela_objects: Vec<String> = file
        .sections()
        .filter_map(|s| {
            let n = s.name().ok()?.strip_prefix(".klp.rela.")?;
            Some(n.split_once('.')?.0.to_string())
        })
        .collect();
    klp_rela_objects.sort();
    klp_rela_objects.dedup();
    let name = name.ok_or(".modinfo has no name= (it was not built by kbuild's modpost)")?;
    if name.is_empty() || name.len() >= 56 || name.contains(['/', '\n']) {
        return Err(format!("invalid module name {name:?} in .modinfo"));
    }
    Ok(ModuleFile {
        name,
        livepatch,
        vermagic,
        release,
        vmlinux_build_id,
        depends,
        klp_rela_objects,
    })
}

/// The kernel interfaces used, rooted so tests can point them at a prepared tree.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Where sysfs is mounted (`/sys`).
    pub sys: PathBuf,
    /// Where procfs is mounted (`/proc`).
    pub proc: PathBuf,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            sys: "/sys".into(),
            proc: "/proc".into(),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.into(),
        source,
    }
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

impl Kernel {
    fn klp_root(&self) -> PathBuf {
        self.sys.join("kernel/livepatch")
    }

    fn patch_dir(&self, name: &str) -> PathBuf {
        self.klp_root().join(name)
    }

    fn require_livepatch(&self) -> Result<(), Error> {
        let root = self.klp_root();
        if root.is_dir() {
            Ok(())
        } else {
            Err(Error::NoLivepatch(root))
        }
    }

    /// Names of the patches under `/sys/kernel/livepatch`, sorted.
    pub fn patch_names(&self) -> Result<Vec<String>, Error> {
        let root = self.klp_root();
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .map_err(io_err(&root))?
            .filter_map(|e| {
                let e = e.ok()?;
                e.file_type().ok()?.is_dir().then_some(())?;
                e.file_name().into_string().ok()
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every live patch with its objects and functions.
    pub fn status(&self) -> Result<Status, Error> {
        let tainted = read_trim(&self.proc.join("sys/kernel/tainted")).and_then(|s| s.parse().ok());
        if self.require_livepatch().is_err() {
            return Ok(Status {
                supported: false,
                tainted,
                patches: Vec::new(),
            });
        }
        let mut patches = Vec::new();
        for name in self.patch_names()? {
            // A patch can disappear between listing and reading (it was just unloaded).
            if let Some(p) = self.patch_status(&name)? {
                patches.push(p);
            }
        }
        Ok(Status {
            supported: true,
            tainted,
            patches,
        })
    }

    /// One patch, or `None` when it is not (or no longer) live.
    pub fn patch_status(&self, name: &str) -> Result<Option<PatchStatus>, Error> {
        let dir = self.patch_dir(name);
        let (Some(enabled), Some(transition)) = (
            read_trim(&dir.join("enabled")),
            read_trim(&dir.join("transition")),
        ) else {
            return Ok(None);
        };
        let enabled = enabled == "1";
        let transition = transition == "1";
        let mut objects = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for e in entries.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let Ok(obj_name) = e.file_name().into_string() else {
                continue;
            };
            let patched = read_trim(&e.path().join("patched")).as_deref() == Some("1");
            let mut functions: Vec<FunctionStatus> = std::fs::read_dir(e.path())
                .map(|rd| {
                    rd.flatten()
                        .filter(|f| f.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .filter_map(|f| {
                            let n = f.file_name().into_string().ok()?;
                            let (func, pos) = n.rsplit_once(',')?;
                            Some(FunctionStatus {
                                name: func.to_string(),
                                sympos: pos.parse().ok()?,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            functions.sort_by(|a, b| (&a.name, a.sympos).cmp(&(&b.name, b.sympos)));
            objects.push(ObjectStatus {
                name: obj_name,
                patched,
                functions,
            });
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        let mdir = self.sys.join("module").join(name);
        let module = mdir.is_dir().then(|| ModuleInfo {
            refcnt: read_trim(&mdir.join("refcnt")).and_then(|s| s.parse().ok()),
            taint: read_trim(&mdir.join("taint")),
        });
        let blockers = if transition {
            let target = if enabled {
                Target::Patched
            } else {
                Target::Unpatched
            };
            self.blockers(target)
        } else {
            Vec::new()
        };
        Ok(Some(PatchStatus {
            name: name.to_string(),
            enabled,
            transition,
            objects,
            module,
            blockers,
        }))
    }

    /// The patch currently in transition, if any.
    fn in_transition(&self) -> Result<Option<String>, Error> {
        Ok(self
            .patch_names()?
            .into_iter()
            .find(|n| read_trim(&self.patch_dir(n).join("transition")).as_deref() == Some("1")))
    }

    /// Tasks whose `patch_state` is neither the target nor "no transition" (-1).
    pub fn blockers(&self, target: Target) -> Vec<Blocker> {
        let mut out = Vec::new();
        let Ok(procs) = std::fs::read_dir(&self.proc) else {
            return out;
        };
        let mut pids: Vec<i32> = procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let tdir = self.proc.join(pid.to_string()).join("task");
            let Ok(tasks) = std::fs::read_dir(&tdir) else {
                continue;
            };
            let mut tids: Vec<i32> = tasks
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            tids.sort_unstable();
            for tid in tids {
                let t = tdir.join(tid.to_string());
                let Some(state) =
                    read_trim(&t.join("patch_state")).and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                if state == -1 || state == target as i32 {
                    continue;
                }
                let stack = std::fs::read_to_string(t.join("stack"))
                    .map(|s| s.lines().map(stack_frame).collect())
                    .unwrap_or_default();
                out.push(Blocker {
                    pid,
                    tid,
                    comm: read_trim(&t.join("comm")).unwrap_or_default(),
                    stack,
                });
            }
        }
        out
    }

    /// The running kernel's release (`/proc/sys/kernel/osrelease`, what `uname -r` prints).
    pub fn running_release(&self) -> Result<String, String> {
        let p = self.proc.join("sys/kernel/osrelease");
        match std::fs::read_to_string(&p) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Ok(_) => Err(format!("{} is empty", p.display())),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    /// The running kernel's vmlinux build-id (the GNU note in `/sys/kernel/notes`).
    pub fn running_build_id(&self) -> Result<String, String> {
        let p = self.sys.join("kernel/notes");
        let notes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        match identity::build_id_from_notes(&notes) {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(format!("{} holds no GNU build-id note", p.display())),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    /// Compares the target kernel a module records (see [`crate::identity`]) with the running
    /// kernel: a mismatch is an error; a module that records nothing gets a warning (the
    /// second value), since only the kernel's own, weaker checks apply to it.
    pub fn check_identity(
        &self,
        path: &Path,
        module: &ModuleFile,
    ) -> Result<(IdentityCheck, Option<String>), Error> {
        let release = self.running_release();
        let build_id = self.running_build_id();
        let mut check = IdentityCheck {
            module_release: module.release.clone(),
            module_build_id: module.vmlinux_build_id.clone(),
            running_release: release.clone().ok(),
            running_build_id: build_id.clone().ok(),
            verified: false,
        };
        let unknown = |what: &'static str, reason: String| Error::UnknownKernel {
            path: path.into(),
            what,
            reason,
        };
        let wrong = |what: &'static str, module: &str, running: String| Error::WrongKernel {
            path: path.into(),
            what,
            module: module.to_string(),
            running,
        };
        if let Some(want) = &module.release {
            let have = release.clone().map_err(|r| unknown("release", r))?;
            if *want != have {
                return Err(wrong("release", want, have));
            }
        }
        if let Some(want) = &module.vmlinux_build_id {
            let have = build_id.map_err(|r| unknown("vmlinux build-id", r))?;
            if !want.eq_ignore_ascii_case(&have) {
                return Err(wrong("vmlinux build-id", want, have));
            }
            check.verified = true;
            return Ok((check, None));
        }
        let mut warning = format!(
            "{}: the module does not record the vmlinux build-id of the kernel it was built \
             for ({} is not in its .modinfo; `suture build --kernel` records it), so suture \
             cannot check that it was built for this exact kernel",
            path.display(),
            identity::MODINFO_BUILD_ID
        );
        if module.release.is_none() {
            warning.push_str(
                "; the kernel itself accepts a module built for another release when its \
                 symbol versions agree",
            );
            let vermagic_release = module
                .vermagic
                .as_deref()
                .and_then(|v| v.split_whitespace().next());
            if let (Some(v), Ok(r)) = (vermagic_release, &release) {
                if v != r {
                    warning.push_str(&format!(
                        "; its vermagic names release {v}, the running kernel is {r}"
                    ));
                }
            }
        }
        Ok((check, Some(warning)))
    }

    /// Is module `name` loaded (a loadable module in state live or coming)?
    fn module_loaded(&self, name: &str) -> bool {
        let name = name.replace('-', "_");
        matches!(
            read_trim(&self.sys.join("module").join(name).join("initstate")).as_deref(),
            Some("live" | "coming")
        )
    }

    /// The modules of `depends=` that are not loaded.
    pub fn missing_dependencies(&self, module: &ModuleFile) -> Vec<String> {
        module
            .depends
            .iter()
            .filter(|d| !self.module_loaded(d))
            .cloned()
            .collect()
    }

    /// The modprobe to load dependencies with: the kernel's own helper
    /// (`/proc/sys/kernel/modprobe`) when it is a file, else `modprobe` in `PATH`.
    /// `Err(helper)`: neither exists.
    fn modprobe_program(&self) -> Result<PathBuf, String> {
        let helper = read_trim(&self.proc.join("sys/kernel/modprobe"))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/sbin/modprobe".into());
        if Path::new(&helper).is_file() {
            return Ok(helper.into());
        }
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("modprobe"))
                    .find(|c| c.is_file())
            })
            .ok_or(helper)
    }

    /// Loads the modules the patch depends on that are not loaded, with modprobe (which also
    /// loads their own dependencies). Returns those it loaded; refuses, naming them, when they
    /// cannot be loaded. Modules loaded here stay loaded even if the patch is then refused
    /// (as after `modprobe`).
    pub fn load_dependencies(
        &self,
        module: &ModuleFile,
        modprobe: &Modprobe,
    ) -> Result<Vec<String>, Error> {
        let missing = self.missing_dependencies(module);
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let refuse = |missing: Vec<String>, why: String| Error::MissingDependencies {
            patch: module.name.clone(),
            missing,
            why,
        };
        let program = match modprobe {
            Modprobe::Never => {
                return Err(refuse(
                    missing,
                    " (suture was asked not to load modules: --no-modprobe)".into(),
                ))
            }
            Modprobe::Program(p) => p.clone(),
            Modprobe::Auto => match self.modprobe_program() {
                Ok(p) => p,
                Err(helper) => {
                    let why = format!(
                        "; there is no modprobe to load {} with (neither the kernel's helper \
                         {helper} nor modprobe in PATH)",
                        them(&missing)
                    );
                    return Err(refuse(missing, why));
                }
            },
        };
        let mut failures = Vec::new();
        for m in &missing {
            tracing::info!(module = %m, modprobe = %program.display(), "loading a dependency");
            match std::process::Command::new(&program)
                .arg("--")
                .arg(m)
                .stdin(std::process::Stdio::null())
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    let mut text = String::from_utf8_lossy(&o.stderr).trim().to_string();
                    if text.is_empty() {
                        text = String::from_utf8_lossy(&o.stdout).trim().to_string();
                    }
                    let text: String = text
                        .lines()
                        .last()
                        .unwrap_or("")
                        .chars()
                        .take(300)
                        .collect();
                    failures.push(format!("{} {m}: {} {text}", program.display(), o.status));
                }
                Err(e) => failures.push(format!("{}: {e}", program.display())),
            }
        }
        let still = self.missing_dependencies(module);
        if !still.is_empty() {
            let why = if failures.is_empty() {
                format!(
                    "; {} reported success but they are not loaded",
                    program.display()
                )
            } else {
                format!("; {}", failures.join("; "))
            };
            return Err(refuse(still, why));
        }
        Ok(missing)
    }

    /// Loads a livepatch module and waits for its transition to finish.
    pub fn load(&self, path: &Path, mut opts: Options<'_>) -> Result<LoadReport, Error> {
        let info = inspect_module(path)?;
        if !info.livepatch {
            return Err(Error::NotLivepatch {
                path: path.into(),
                name: info.name,
            });
        }
        let (identity, identity_warning) = match self.check_identity(path, &info) {
            // Newer kernels make /sys/kernel/notes readable by root only: say what to do.
            Err(Error::UnknownKernel { .. }) if require_root().is_err() => {
                return Err(Error::NotRoot)
            }
            r => r?,
        };
        require_root()?;
        self.require_livepatch()?;
        let name = info.name.clone();
        if self.patch_dir(&name).exists() || self.sys.join("module").join(&name).exists() {
            return Err(Error::AlreadyLoaded(name));
        }
        if let Some(busy) = self.in_transition()? {
            return Err(Error::Busy(busy));
        }
        let dependencies_loaded = self.load_dependencies(&info, &opts.modprobe)?;
        let mut warnings: Vec<String> = identity_warning.into_iter().collect();
        let file = File::open(path).map_err(io_err(path))?;
        let mut kmsg = KernelLog::open();
        let start = Instant::now();
        let res = finit_module(&file, c"", ModuleInitFlags::empty());
        let load_seconds = start.elapsed().as_secs_f64();
        if let Err(errno) = res {
            let kernel_log = kmsg.as_mut().map(KernelLog::read_new).unwrap_or_default();
            return Err(match errno {
                Errno::ENOSYS => Error::NoModules,
                Errno::EEXIST => Error::AlreadyLoaded(name),
                _ => Error::Rejected {
                    path: path.into(),
                    errno,
                    hint: load_hint(errno),
                    kernel_log,
                },
            });
        }
        tracing::info!(patch = %name, load_seconds, "module loaded");
        let t0 = Instant::now();
        match self.wait_transition(&name, Target::Patched, &mut opts)? {
            Waited::Done => {}
            Waited::TimedOut(blockers) => {
                if opts.force {
                    self.force(&name)?;
                    self.wait_transition(&name, Target::Patched, &mut no_wait(&opts))?;
                    let status = self.patch_status(&name)?;
                    let patched_modules = patched_modules(
                        &info,
                        &status,
                        self.clears_module_relocations(),
                        &mut warnings,
                    );
                    return Ok(LoadReport {
                        status,
                        patch: name,
                        module: path.into(),
                        identity,
                        dependencies_loaded,
                        patched_modules,
                        warnings,
                        load_seconds,
                        transition_seconds: t0.elapsed().as_secs_f64(),
                        forced: true,
                    });
                }
                let waited = opts.timeout;
                // Reverse: back to the original code, then remove the module.
                let mut outcome = self.reverse(&name, Target::Patched, &mut opts)?;
                if outcome == StuckOutcome::Reversed && !self.remove_module(&name)? {
                    outcome = StuckOutcome::ReversedModuleKept;
                }
                return Err(Error::TransitionStuck {
                    patch: name,
                    target: Target::Patched,
                    waited,
                    blockers,
                    outcome,
                });
            }
        }
        let status = self.patch_status(&name)?;
        let patched_modules = patched_modules(
            &info,
            &status,
            self.clears_module_relocations(),
            &mut warnings,
        );
        Ok(LoadReport {
            status,
            patch: name,
            module: path.into(),
            identity,
            dependencies_loaded,
            patched_modules,
            warnings,
            load_seconds,
            transition_seconds: t0.elapsed().as_secs_f64(),
            forced: false,
        })
    }

    /// Disables a live patch, waits for the unpatch transition, removes its module.
    /// `name` is the patch name or the path of its `.ko` file.
    pub fn unload(&self, name: &str, mut opts: Options<'_>) -> Result<UnloadReport, Error> {
        let name = self.resolve_name(name)?;
        require_root()?;
        self.require_livepatch()?;
        let dir = self.patch_dir(&name);
        if !dir.is_dir() {
            let mdir = self.sys.join("module").join(&name);
            if mdir.is_dir() {
                // A livepatch module (taint flag K) without a livepatch entry is what is left
                // of a disabled patch whose module was not removed (e.g. a reversal that
                // outlasted the timeout): removing it is what unload is for.
                if read_trim(&mdir.join("taint")).is_some_and(|t| t.contains('K')) {
                    let module_removed = self.remove_module(&name)?;
                    return Ok(UnloadReport {
                        patch: name,
                        transition_seconds: 0.0,
                        forced: false,
                        module_removed,
                    });
                }
                return Err(Error::NotAPatch(name));
            }
            return Err(Error::NotLoaded {
                name,
                live: self.patch_names()?,
            });
        }
        if let Some(busy) = self.in_transition()? {
            if busy != name {
                return Err(Error::Busy(busy));
            }
        }
        let t0 = Instant::now();
        // `enabled` already 0 means an unpatch transition is running: just wait for it.
        if read_trim(&dir.join("enabled")).as_deref() == Some("1") {
            self.write_attr(&name, "enabled", "0")?;
        }
        let mut forced = false;
        match self.wait_transition(&name, Target::Unpatched, &mut opts)? {
            Waited::Done => {}
            Waited::TimedOut(blockers) => {
                if opts.force {
                    self.force(&name)?;
                    forced = true;
                    self.wait_transition(&name, Target::Unpatched, &mut no_wait(&opts))?;
                } else {
                    let waited = opts.timeout;
                    let outcome = self.reverse(&name, Target::Unpatched, &mut opts)?;
                    return Err(Error::TransitionStuck {
                        patch: name,
                        target: Target::Unpatched,
                        waited,
                        blockers,
                        outcome,
                    });
                }
            }
        }
        let transition_seconds = t0.elapsed().as_secs_f64();
        // A forced unpatching keeps the module reference forever (see the module comment).
        let module_removed = !forced && self.remove_module(&name)?;
        Ok(UnloadReport {
            patch: name,
            transition_seconds,
            forced,
            module_removed,
        })
    }

    /// A patch name, or the name recorded in a `.ko` file given by path.
    fn resolve_name(&self, arg: &str) -> Result<String, Error> {
        let p = Path::new(arg);
        if arg.ends_with(".ko") && p.is_file() {
            return Ok(inspect_module(p)?.name);
        }
        // The kernel reports module names with '_' where the file name had '-'.
        Ok(arg.replace('-', "_"))
    }

    fn write_attr(&self, name: &str, attr: &str, value: &str) -> Result<(), Error> {
        let p = self.patch_dir(name).join(attr);
        std::fs::write(&p, value).map_err(io_err(&p))
    }

    fn force(&self, name: &str) -> Result<(), Error> {
        tracing::info!(patch = %name, "forcing the transition: blocked tasks are marked switched");
        match self.write_attr(name, "force", "1") {
            // EINVAL: the transition finished between the timeout and the write.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc_einval()) => Ok(()),
            r => r,
        }
    }

    /// Reverses a timed-out transition towards `from` (the target of the reversed one).
    fn reverse(
        &self,
        name: &str,
        target: Target,
        opts: &mut Options<'_>,
    ) -> Result<StuckOutcome, Error> {
        let back = match target {
            Target::Patched => ("0", Target::Unpatched),
            Target::Unpatched => ("1", Target::Patched),
        };
        tracing::info!(patch = %name, "transition timed out: reversing it");
        match self.write_attr(name, "enabled", back.0) {
            Ok(()) => {}
            // EINVAL: the transition finished meanwhile; the patch is in its target state and
            // a reversal is a fresh transition, which the kernel refuses for a re-enable.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc_einval()) => {}
            Err(e) => return Err(e),
        }
        // The reversal only has to move back the tasks that already switched, which are not
        // blocked; but the kernel retries once a second, so allow at least REVERSE_MIN.
        let mut ropts = Options {
            timeout: opts.timeout.max(REVERSE_MIN),
            force: false,
            progress: opts.progress.take(),
            modprobe: Modprobe::Never,
        };
        let waited = self.wait_transition(name, back.1, &mut ropts)?;
        opts.progress = ropts.progress.take();
        Ok(match waited {
            Waited::Done => StuckOutcome::Reversed,
            Waited::TimedOut(_) => StuckOutcome::ReverseStuck,
        })
    }

    /// Waits for the patch's transition to end (for `Unpatched`, for its directory to go too).
    fn wait_transition(
        &self,
        name: &str,
        target: Target,
        opts: &mut Options<'_>,
    ) -> Result<Waited, Error> {
        let dir = self.patch_dir(name);
        let start = Instant::now();
        let mut next_report = Duration::from_secs(1);
        loop {
            let done = match target {
                Target::Patched => {
                    read_trim(&dir.join("transition")).as_deref() == Some("0") || !dir.exists()
                }
                Target::Unpatched => !dir.exists(),
            };
            if done {
                return Ok(Waited::Done);
            }
            let elapsed = start.elapsed();
            if elapsed >= opts.timeout {
                return Ok(Waited::TimedOut(self.blockers(target)));
            }
            if elapsed >= next_report {
                next_report += Duration::from_secs(1);
                if let Some(cb) = opts.progress.as_mut() {
                    cb(&Progress {
                        patch: name.to_string(),
                        target,
                        elapsed,
                        blockers: self.blockers(target),
                    });
                }
            }
            // Fine-grained at first (an idle kernel finishes in well under 100 ms), then
            // coarser: the kernel itself retries blocked tasks only once a second.
            let step = (elapsed / 20).clamp(Duration::from_millis(2), Duration::from_millis(50));
            std::thread::sleep(step);
        }
    }

    /// `delete_module(name, O_NONBLOCK)`, retried for a moment while the kernel still holds
    /// the reference it drops right after removing the sysfs directory. `Ok(false)`: the
    /// reference stays (a forced unpatching transition keeps it forever), so the module stays
    /// loaded although its patch is gone.
    fn remove_module(&self, name: &str) -> Result<bool, Error> {
        let cname = CString::new(name).map_err(|_| Error::NotLoaded {
            name: name.into(),
            live: Vec::new(),
        })?;
        let start = Instant::now();
        loop {
            match delete_module(&cname, DeleteModuleFlags::O_NONBLOCK) {
                Ok(()) | Err(Errno::ENOENT) => return Ok(true),
                Err(Errno::EAGAIN | Errno::EBUSY) => {
                    if start.elapsed() > Duration::from_secs(2) {
                        tracing::info!(module = %name, "module still referenced: left loaded");
                        return Ok(false);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(errno) => {
                    return Err(Error::Remove {
                        patch: name.into(),
                        errno,
                    })
                }
            }
        }
    }
}

impl Kernel {
    /// Does the running kernel undo a patch's livepatch relocations for a module that goes
    /// away (`clear_relocate_add`, Linux 6.2 and later, named in its kallsyms)? An unreadable
    /// kallsyms counts as no.
    fn clears_module_relocations(&self) -> bool {
        std::fs::read_to_string(self.proc.join("kallsyms")).is_ok_and(|k| {
            k.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("clear_relocate_add"))
        })
    }
}

/// The modules a live patch patches (from its sysfs objects); a warning for each one the
/// patch has livepatch relocations for, unless the kernel clears those relocations when the
/// module goes away (`clears_relocs`; see the module comment).
fn patched_modules(
    module: &ModuleFile,
    status: &Option<PatchStatus>,
    clears_relocs: bool,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let patch = &module.name;
    let modules: Vec<String> = status
        .iter()
        .flat_map(|s| &s.objects)
        .filter(|o| o.name != "vmlinux")
        .map(|o| o.name.clone())
        .collect();
    for m in modules
        .iter()
        .filter(|m| !clears_relocs && module.klp_rela_objects.contains(m))
    {
        warnings.push(reload_warning(patch, m));
    }
    modules
}

fn reload_warning(patch: &str, m: &str) -> String {
    format!(
        "{patch} patches module {m}: while {patch} is loaded, {m} must not be removed and \
         loaded again: this kernel (no clear_relocate_add, as before Linux 6.2) does not undo \
         the patch's livepatch relocations for {m} when it goes away, so loading {m} again \
         fails; unload {patch} first"
    )
}

/// The least time given to reversing a timed-out transition.
const REVERSE_MIN: Duration = Duration::from_secs(10);

fn libc_einval() -> i32 {
    Errno::EINVAL as i32
}

/// A copy of the options that does not wait (used after `force`, which finishes at once, but
/// a short grace period lets the kernel's work item run).
fn no_wait<'a>(opts: &Options<'_>) -> Options<'a> {
    Options {
        timeout: opts.timeout.min(Duration::from_secs(5)),
        force: false,
        progress: None,
        modprobe: Modprobe::Never,
    }
}

enum Waited {
    Done,
    TimedOut(Vec<Blocker>),
}

/// `[<0>] do_nanosleep+0x8b/0x150` → `do_nanosleep+0x8b/0x150`.
fn stack_frame(line: &str) -> String {
    let l = line.trim();
    match l.strip_prefix("[<").and_then(|r| r.split_once(">] ")) {
        Some((_, f)) => f.to_string(),
        None => l.to_string(),
    }
}

fn require_root() -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

fn load_hint(errno: Errno) -> &'static str {
    match errno {
        Errno::ENOEXEC => {
            "invalid module format: it was built for another kernel (version magic or symbol \
             layout differ; build it against this kernel's headers with its compiler), or it \
             is marked livepatch while livepatch support is disabled"
        }
        Errno::EINVAL => {
            "the module was refused or its init failed: for a live patch, a function or object \
             it names does not exist in the running kernel, a symbol position (sympos) is wrong, \
             or its symbol versions disagree with this kernel"
        }
        Errno::ENOENT => {
            "the module uses a symbol that neither the kernel nor any loaded module exports: a \
             module it needs is not loaded (the kernel log names the symbol), or it was built \
             for another kernel"
        }
        Errno::EPERM => {
            "not permitted: module loading may be disabled (kernel.modules_disabled=1) or the \
             kernel is locked down (Secure Boot); unsigned modules cannot load then"
        }
        Errno::EKEYREJECTED | Errno::ENOKEY | Errno::EBADMSG => {
            "the module's signature is missing or not trusted and this kernel enforces module \
             signatures"
        }
        Errno::EBUSY => "another live patch transition is in progress; retry when it is done",
        Errno::ENOMEM => "the kernel is out of memory",
        Errno::ENODEV => "a device or object the module needs is missing",
        _ => "see the kernel log (dmesg) for the kernel's reason",
    }
}

/// The kernel log, read through `/dev/kmsg` from the moment it was opened.
struct KernelLog {
    file: File,
}

impl KernelLog {
    /// `None` when `/dev/kmsg` is not readable (then errors carry only the errno and hint).
    fn open() -> Option<KernelLog> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open("/dev/kmsg")
            .ok()?;
        // SEEK_END on /dev/kmsg moves past the last record: only new lines are read.
        file.seek(SeekFrom::End(0)).ok()?;
        Some(KernelLog { file })
    }

    /// Messages logged since `open` (or the last call), one string each.
    fn read_new(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(m) = kmsg_message(&buf[..n]) {
                        out.push(m);
                    }
                }
                // EPIPE: records were overwritten before we read them; go on with the next.
                Err(e) if e.raw_os_error() == Some(Errno::EPIPE as i32) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN: nothing more
            }
            if out.len() > 200 {
                out.drain(..100);
            }
        }
        // The last lines are the ones that explain the failure.
        let skip = out.len().saturating_sub(20);
        out.split_off(skip)
    }
}

/// One `/dev/kmsg` record (`prio,seq,usec,flags;text\n KEY=value...`) → its text.
fn kmsg_message(record: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(record);
    let first = s.lines().next()?;
    let (_, text) = first.split_once(';')?;
    Some(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("suture-kernel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn put(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn status_reads_the_sysfs_layout() {
        // The layout documented in kernel/livepatch/core.c of 6.1 (the real tree is checked in
        // the booted-guest tests; this covers parsing details such as sympos and sorting).
        let d = tmp("status");
        let k = Kernel {
            sys: d.join("sys"),
            proc: d.join("proc"),
        };
        let p = d.join("sys/kernel/livepatch/fix_a");
        put(&p.join("enabled"), "1\n");
        put(&p.join("transition"), "0\n");
        put(&p.join("vmlinux/patched"), "1\n");
        std::fs::create_dir_all(p.join("vmlinux/cmdline_proc_show,1")).unwrap();
        std::fs::create_dir_all(p.join("vmlinux/meminfo_proc_show,2")).unwrap();
        put(&p.join("loop/patched"), "0\n");
        std::fs::create_dir_all(p.join("loop/lo_release,0")).unwrap();
        put(&d.join("sys/module/fix_a/refcnt"), "0\n");
        put(&d.join("sys/module/fix_a/taint"), "OEK\n");
        put(&d.join("proc/sys/kernel/tainted"), "45056\n");
        let s = k.status().unwrap();
        assert!(s.supported);
        assert_eq!(s.tainted, Some(45056));
        assert_eq!(s.patches.len(), 1);
        let p = &s.patches[0];
        assert_eq!(
            (p.name.as_str(), p.enabled, p.transition),
            ("fix_a", true, false)
        );
        type Obj<'a> = (&'a str, bool, Vec<(&'a str, u64)>);
        let objs: Vec<Obj> = p
            .objects
            .iter()
            .map(|o| {
                (
                    o.name.as_str(),
                    o.patched,
                    o.functions
                        .iter()
                        .map(|f| (f.name.as_str(), f.sympos))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            objs,
            [
                ("loop", false, vec![("lo_release", 0)]),
                (
                    "vmlinux",
                    true,
                    vec![("cmdline_proc_show", 1), ("meminfo_proc_show", 2)]
                )
            ]
        );
        assert_eq!(
            p.module,
            Some(ModuleInfo {
                refcnt: Some(0),
                taint: Some("OEK".into())
            })
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_livepatch_directory_means_unsupported() {
        let d = tmp("unsupported");
        let k = Kernel {
            sys: d.join("sys"),
            proc: d.join("proc"),
        };
        let s = k.status().unwrap();
        assert!(!s.supported && s.patches.is_empty());
        let e = k.require_livepatch().unwrap_err().to_string();
        assert!(e.contains("CONFIG_LIVEPATCH"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn blockers_are_tasks_not_in_the_target_state() {
        let d = tmp("blockers");
        let k = Kernel {
            sys: d.join("sys"),
            proc: d.join("proc"),
        };
        // pid 10: two threads, one switched; pid 11: no transition state; "self" is ignored.
        put(&d.join("proc/10/task/10/patch_state"), "1\n");
        put(&d.join("proc/10/task/12/patch_state"), "0\n");
        put(&d.join("proc/10/task/12/comm"), "worker\n");
        put(
            &d.join("proc/10/task/12/stack"),
            "[<0>] do_nanosleep+0x8b/0x150\n[<0>] hrtimer_nanosleep+0x9e/0x120\n",
        );
        put(&d.join("proc/11/task/11/patch_state"), "-1\n");
        std::fs::create_dir_all(d.join("proc/self")).unwrap();
        let b = k.blockers(Target::Patched);
        assert_eq!(
            b,
            [Blocker {
                pid: 10,
                tid: 12,
                comm: "worker".into(),
                stack: vec![
                    "do_nanosleep+0x8b/0x150".into(),
                    "hrtimer_nanosleep+0x9e/0x120".into()
                ],
            }]
        );
        assert_eq!(
            b[0].to_string(),
            "worker (pid 10, thread 12) in do_nanosleep+0x8b/0x150 <- hrtimer_nanosleep+0x9e/0x120"
        );
        // Unpatching: the thread still patched (state 1) is the one that blocks.
        let b = k.blockers(Target::Unpatched);
        assert_eq!((b.len(), b[0].tid), (1, 10));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn non_modules_are_refused_before_the_kernel_sees_them() {
        let e = parse_module(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(e.contains("not an ELF file"), "{e}");
        // An ELF executable is not a module either.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let e = parse_module(&exe).unwrap_err();
        assert!(e.contains("relocatable"), "{e}");
    }

    /// A relocatable object with the given `.modinfo` entries, as `<dir>/<file>` (compiled by
    /// gcc, so the ELF is a real one).
    fn fake_module(dir: &Path, file: &str, entries: &[&str]) -> PathBuf {
        let c = dir.join(format!("{file}.c"));
        let body: String = entries.iter().map(|e| format!("{e}\\0")).collect();
        std::fs::write(
            &c,
            format!(
                "__attribute__((section(\".modinfo\"), used, aligned(1))) \
                 static const char modinfo[] = \"{body}\";\nint f(void) {{ return 0; }}\n"
            ),
        )
        .unwrap();
        let ko = dir.join(file);
        let st = std::process::Command::new("cc")
            .args(["-c", "-o"])
            .arg(&ko)
            .arg(&c)
            .status()
            .expect("cc runs");
        assert!(st.success());
        ko
    }

    /// Notes as in /sys/kernel/notes with one GNU build-id.
    fn notes(id: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [4u32, id.len() as u32, 3] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(b"GNU\0");
        v.extend_from_slice(id);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    /// A prepared tree of a running 6.1.0-55 kernel with build-id 0x11 * 20.
    fn running_kernel(d: &Path) -> Kernel {
        put(&d.join("proc/sys/kernel/osrelease"), "6.1.0-55-amd64\n");
        std::fs::create_dir_all(d.join("sys/kernel/livepatch")).unwrap();
        std::fs::write(d.join("sys/kernel/notes"), notes(&[0x11; 20])).unwrap();
        Kernel {
            sys: d.join("sys"),
            proc: d.join("proc"),
        }
    }

    const RUNNING_ID: &str = "1111111111111111111111111111111111111111";

    #[test]
    fn modinfo_identity_and_dependencies_are_read() {
        let d = tmp("modinfo");
        let ko = fake_module(
            &d,
            "p.ko",
            &[
                "livepatch=Y",
                "suture_release=6.1.0-56-amd64",
                "suture_vmlinux_build_id=abcd",
                "depends=sunrpc,dm-mod",
                "name=p",
                "vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ",
            ],
        );
        let m = inspect_module(&ko).unwrap();
        assert_eq!(m.name, "p");
        assert_eq!(m.release.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(m.vmlinux_build_id.as_deref(), Some("abcd"));
        assert_eq!(m.depends, ["sunrpc", "dm-mod"]);
        // An empty depends= (what modpost writes for a module needing nothing) is no module.
        let ko = fake_module(&d, "q.ko", &["depends=", "name=q"]);
        assert!(inspect_module(&ko).unwrap().depends.is_empty());
        assert!(m.klp_rela_objects.is_empty());
        let ko = fake_module(&d, "r.ko", &["depends=../x", "name=r"]);
        let e = inspect_module(&ko).unwrap_err().to_string();
        assert!(e.contains("depends="), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Patched modules are listed; those the patch has livepatch relocations for get the
    /// warning that they cannot be reloaded while it is loaded.
    #[test]
    fn patched_modules_with_relocations_get_the_reload_warning() {
        let d = tmp("reload");
        let ko = fake_module(&d, "p.ko", &["livepatch=Y", "name=p"]);
        // A relocation section as klp::finalize names them (object, then the patched section).
        let c = d.join("rela.c");
        std::fs::write(
            &c,
            "__attribute__((section(\".klp.rela.loop..text.f\"), used)) static const int r = 1;\n",
        )
        .unwrap();
        let o = d.join("rela.o");
        assert!(std::process::Command::new("cc")
            .args(["-c", "-o"])
            .arg(&o)
            .arg(&c)
            .status()
            .unwrap()
            .success());
        let both = d.join("both.ko");
        assert!(std::process::Command::new("ld")
            .args(["-r", "-o"])
            .arg(&both)
            .arg(&ko)
            .arg(&o)
            .status()
            .unwrap()
            .success());
        let info = inspect_module(&both).unwrap();
        assert_eq!(info.klp_rela_objects, ["loop"]);
        let obj = |name: &str| ObjectStatus {
            name: name.into(),
            patched: false,
            functions: Vec::new(),
        };
        let status = Some(PatchStatus {
            name: "p".into(),
            enabled: true,
            transition: false,
            objects: vec![obj("loop"), obj("sch_fq"), obj("vmlinux")],
            module: None,
            blockers: Vec::new(),
        });
        let mut warnings = Vec::new();
        assert_eq!(
            patched_modules(&info, &status, false, &mut warnings),
            ["loop", "sch_fq"]
        );
        assert_eq!(warnings, [reload_warning("p", "loop")]);
        assert!(warnings[0].contains("loop must not be removed and loaded again"));
        // A kernel that clears the relocations (6.2 and later) reloads the module fine.
        let mut warnings = Vec::new();
        patched_modules(&info, &status, true, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        let proc = d.join("proc");
        std::fs::create_dir_all(&proc).unwrap();
        let k = Kernel {
            sys: d.join("sys"),
            proc: proc.clone(),
        };
        assert!(!k.clears_module_relocations());
        std::fs::write(
            proc.join("kallsyms"),
            "0000000000000000 T module_finalize\n0000000000000000 T clear_relocate_add\n",
        )
        .unwrap();
        assert!(k.clears_module_relocations());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A module built for another release or another build of the kernel is refused before
    /// the kernel sees it (the release check first: it is the clearer message), naming both.
    #[test]
    fn a_module_for_another_kernel_is_refused() {
        let d = tmp("identity");
        let k = running_kernel(&d);
        let base = ["livepatch=Y", "name=p"];
        let module = |file: &str, extra: &[&str]| {
            let e: Vec<&str> = base.iter().chain(extra).copied().collect();
            fake_module(&d, file, &e)
        };
        let other_release = module(
            "a.ko",
            &[
                "suture_release=6.1.0-56-amd64",
                &format!("suture_vmlinux_build_id={RUNNING_ID}"),
            ],
        );
        let e = k.load(&other_release, Options::default()).unwrap_err();
        assert_eq!(e.kind(), "wrong_kernel");
        let msg = e.to_string();
        assert!(
            msg.contains(
                "its release is 6.1.0-56-amd64 but the running kernel's is 6.1.0-55-amd64"
            ),
            "{msg}"
        );
        let other_build = module(
            "b.ko",
            &[
                "suture_release=6.1.0-55-amd64",
                "suture_vmlinux_build_id=2222",
            ],
        );
        let msg = k
            .load(&other_build, Options::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!(
                "its vmlinux build-id is 2222 but the running kernel's is {RUNNING_ID}"
            )),
            "{msg}"
        );
        // The right one passes the check, verified.
        let right = module(
            "c.ko",
            &[
                "suture_release=6.1.0-55-amd64",
                &format!("suture_vmlinux_build_id={}", RUNNING_ID.to_uppercase()),
            ],
        );
        let info = inspect_module(&right).unwrap();
        let (c, warning) = k.check_identity(&right, &info).unwrap();
        assert!(c.verified && warning.is_none(), "{c:?} {warning:?}");
        assert_eq!(c.running_build_id.as_deref(), Some(RUNNING_ID));
        // A module of another tool: accepted with a warning that says what was not checked.
        let foreign = module(
            "d.ko",
            &["vermagic=6.1.0-56-amd64 SMP mod_unload modversions "],
        );
        let info = inspect_module(&foreign).unwrap();
        let (c, warning) = k.check_identity(&foreign, &info).unwrap();
        assert!(!c.verified);
        let w = warning.unwrap();
        assert!(w.contains("does not record the vmlinux build-id"), "{w}");
        assert!(
            w.contains(
                "its vermagic names release 6.1.0-56-amd64, the running kernel is 6.1.0-55-amd64"
            ),
            "{w}"
        );
        // The running kernel's build-id unreadable: a module that records one is not loaded.
        std::fs::remove_file(d.join("sys/kernel/notes")).unwrap();
        let e = k.load(&right, Options::default()).unwrap_err();
        assert_eq!(e.kind(), "unknown_kernel", "{e}");
        assert!(e.to_string().contains("kernel/notes"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Dependencies that are not loaded are loaded with modprobe (the kernel's helper by
    /// default), or named in the refusal.
    #[test]
    fn missing_dependencies_are_loaded_or_named() {
        let d = tmp("deps");
        let k = running_kernel(&d);
        put(&d.join("sys/module/libcrc32c/initstate"), "live\n");
        // Built-in modules have a /sys/module directory but no initstate.
        std::fs::create_dir_all(d.join("sys/module/sunrpc/parameters")).unwrap();
        let ko = fake_module(
            &d,
            "p.ko",
            &["livepatch=Y", "name=p", "depends=libcrc32c,sunrpc,dm-mod"],
        );
        let info = inspect_module(&ko).unwrap();
        assert_eq!(k.missing_dependencies(&info), ["sunrpc", "dm-mod"]);
        let e = k.load_dependencies(&info, &Modprobe::Never).unwrap_err();
        assert_eq!(e.kind(), "missing_dependencies");
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "patch p uses symbols exported by modules sunrpc, dm-mod, which are not loaded"
            ),
            "{msg}"
        );
        assert!(
            msg.ends_with("load them first (modprobe sunrpc dm-mod) and retry"),
            "{msg}"
        );
        // A modprobe that loads what it is asked for (it marks the module live), installed as
        // the kernel's helper.
        let log = d.join("modprobe.log");
        let script = d.join("modprobe");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {log}\nmkdir -p {sys}/module/$(echo $2 | tr - _)\n\
                 echo live > {sys}/module/$(echo $2 | tr - _)/initstate\n",
                log = log.display(),
                sys = d.join("sys").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        put(
            &d.join("proc/sys/kernel/modprobe"),
            &format!("{}\n", script.display()),
        );
        assert_eq!(
            k.load_dependencies(&info, &Modprobe::Auto).unwrap(),
            ["sunrpc", "dm-mod"]
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-- sunrpc\n-- dm-mod\n"
        );
        assert!(k.missing_dependencies(&info).is_empty());
        assert!(k
            .load_dependencies(&info, &Modprobe::Never)
            .unwrap()
            .is_empty());
        // A modprobe that fails: its message is in the refusal.
        let fail = d.join("failing-modprobe");
        std::fs::write(
            &fail,
            "#!/bin/sh\necho \"modprobe: FATAL: Module $2 not found\" >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fail, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let ko = fake_module(&d, "q.ko", &["livepatch=Y", "name=q", "depends=nfsd"]);
        let info = inspect_module(&ko).unwrap();
        let msg = k
            .load_dependencies(&info, &Modprobe::Program(fail.clone()))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("module nfsd, which is not loaded"), "{msg}");
        assert!(msg.contains("Module nfsd not found"), "{msg}");
        assert!(
            msg.ends_with("load it first (modprobe nfsd) and retry"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn kmsg_records_are_reduced_to_their_text() {
        assert_eq!(
            kmsg_message(
                b"3,1234,5678901,-;livepatch: failed to find symbol 'nope'\n SUBSYSTEM=x\n"
            ),
            Some("livepatch: failed to find symbol 'nope'".into())
        );
        assert_eq!(kmsg_message(b"garbage"), None);
    }

    #[test]
    fn rejection_messages_carry_the_kernel_log() {
        let e = Error::Rejected {
            path: "/x/p.ko".into(),
            errno: Errno::EINVAL,
            hint: load_hint(Errno::EINVAL),
            kernel_log: vec!["livepatch: failed to find symbol 'nope'".into()],
        };
        let s = e.to_string();
        assert!(s.starts_with("the kernel rejected /x/p.ko: EINVAL"), "{s}");
        assert!(
            s.ends_with("kernel log:\n  livepatch: failed to find symbol 'nope'"),
            "{s}"
        );
    }
}
