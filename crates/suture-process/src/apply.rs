//! Applying, reverting and listing live patches in a running process.
//!
//! Apply, in order, and what the target is doing meanwhile:
//! 1. *(running, `prepare`)* Parse the patch, read the patched object's and libraries'
//!    symbols and unwind tables, resolve every symbol, choose a free range within rel32 reach,
//!    link the patch for it, compute the jumps (`redirect_writes`), generate the commit
//!    routine.
//! 2. *(stopped briefly, `map_region`)* Map the region at that address with its final
//!    protections (W^X).
//! 3. *(running)* Write code, data, header (state "loaded") and routine through /proc/PID/mem.
//! 4. *(stopped: the stop window, `switch`)* Check every thread's stack; if a replaced
//!    function is busy, resume and retry until the timeout. Otherwise one thread is pointed at
//!    the commit routine (the safety net should suture die), suture writes every jump and sets
//!    the header to "live", and the thread gets its registers back (`SUTURE_COMMIT=routine`:
//!    the thread runs the routine instead, see [`crate::commit`]).
//!
//! Any failure after step 2 unmaps the region: the target keeps running its original code.
//!
//! **Patch memory is never released once the patch has been live.** After a revert (or a
//! replacement) nothing jumps into the region any more, but the program may still hold
//! pointers into it: a string constant of the patch passed to a library call in flight or
//! stored in a heap object, a new global, the address of a new function registered as a
//! callback. Unmapping would turn those into crashes (the stress test found exactly that: a
//! thread inside `snprintf` with the patch's format string). So a reverted region stays mapped
//! with its header in state "reverted", and the next apply of the same patch id whose linked
//! code and read-only data are byte-identical at that address reuses it (steps 2 and 3 write
//! only the header and the routine; the data segment keeps its values). Repeated
//! apply/revert cycles of one patch therefore use one region; each distinct patch that was
//! live costs its few pages for the life of the process. Regions left "loaded" by an
//! interrupted apply were never live and are reclaimed.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::commit::{Commit, Write, MARKER_CANDIDATES, MARKER_SYSCALL};
use crate::header::{Header, HeaderError, Redirect, State, MAGIC};
use crate::ids::{Pid, RemoteAddr, Tid};
use crate::link::{LinkError, Plan, Request, Resolver, Segment, Value, PAGE};
use crate::maps::{MapName, Maps};
use crate::mem::ProcessMemory;
use crate::remote::{Prot, RoutineEnd, SyscallSite};
use crate::retstub::StubArea;
use crate::stack::{BusyRange, Finding, StackSnapshot, UnwindInfo};
use crate::stop::{Registers, StoppedProcess};
use crate::suspended::{ReturnSites, SuspendedFrame};
use crate::symbols::{ElfSymbols, LiveResolver, Mapped, SharedBytes, TargetResolver};

/// What happened to the target when an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Nothing in the target changed.
    Untouched,
    /// Memory was mapped and released again; the code was never switched.
    RolledBack,
    /// The target died during the operation (killed, or it exited by itself).
    Exited,
    /// The patch went live and was reverted again: every thread runs the original code (a
    /// per-thread transition that did not complete in time).
    Reverted,
    /// A per-thread transition goes on: the threads it lists run the old code, every other
    /// thread the new code (its revert failed after a timeout).
    InTransition,
}

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("{0} (target untouched)")]
    Patch(String),
    /// (The link error is the whole message, not a source: printing the error chain must not
    /// repeat it.)
    #[error("{0} (target untouched)")]
    Link(LinkError),
    /// The process-level error, with the outcome of the whole operation in place of the
    /// target state the failing step reported (apply resumes, and may roll back, afterwards).
    #[error("{}; {}", without_state(&source.to_string()), outcome_word(*.outcome))]
    Process {
        #[source]
        source: crate::error::Error,
        outcome: Outcome,
    },
    #[error("{function} is still running in thread {tid} after {:.2} s{}{}; the patch was not {done} ({outcome})", .waited.as_secs_f64(), .polled_only.map(|why| format!(" (only polled, no return stubs: {why})")).unwrap_or_default(), .not_moved.as_ref().map(|why| format!("; its frame cannot move to the other version: {why}")).unwrap_or_default(), outcome = outcome_word(*.outcome))]
    Busy {
        function: String,
        tid: Tid,
        waited: Duration,
        /// What did not happen: "applied" or "reverted".
        done: &'static str,
        /// Why threads were not caught as they returned ([`crate::retstub`]), when they were
        /// not.
        polled_only: Option<&'static str>,
        /// Why the thread's frame was not moved by on-stack replacement, when the builder
        /// refused the call site it waits at.
        not_moved: Option<String>,
        outcome: Outcome,
    },
    /// A return address into a busy function (or, for a revert, into the patch) sits in
    /// memory outside every thread's live stack: a coroutine or saved context suspended in it
    /// (see [`crate::suspended`]).
    #[error("{} has a suspended call: a return address into it ({:#x}) is stored at {:#x} in {}, outside every thread's live stack (a coroutine or saved context parked inside it, or a stale copy) after {:.2} s; the patch was not {done} ({outcome})", .frame.name, .frame.returns_to, .frame.at, .frame.mapping, .waited.as_secs_f64(), outcome = outcome_word(*.outcome))]
    Suspended {
        frame: SuspendedFrame,
        waited: Duration,
        done: &'static str,
        outcome: Outcome,
    },
    #[error("{0} ({outcome})", outcome = outcome_word(*.1))]
    Target(String, Outcome),
    /// A per-thread transition did not complete within its timeout, nor could on-stack
    /// replacement move the frames left in old code.
    #[error("the transition did not complete in {:.2} s: {} still ran old code ({}){}{}; {outcome}", .waited.as_secs_f64(), if .threads.len() == 1 { "1 thread".to_string() } else { format!("{} threads", .threads.len()) }, .threads.iter().map(|(t, f)| format!("thread {t} in {f}")).collect::<Vec<_>>().join(", "), .why.iter().map(|w| format!("; {w}")).collect::<String>(), .revert_failed.as_ref().map(|e| format!("; reverting failed: {e}")).unwrap_or_default(), outcome = outcome_word(*.outcome))]
    Transition {
        /// The threads left on old code, and the replaced function each was in.
        threads: Vec<(i32, String)>,
        /// Why neither a return stub nor on-stack replacement ended it.
        why: Vec<String>,
        waited: Duration,
        revert_failed: Option<String>,
        outcome: Outcome,
    },
    /// Applying a patch whose id is live already would stack a second copy, and a later
    /// revert would take off one copy while the fix still runs.
    #[error("patch {patch_id:?} is already live in process {pid} (target untouched); revert it first, or apply with --replace {patch_id} to swap in this version")]
    AlreadyLive { patch_id: String, pid: i32 },
}

/// Where replaced code was found in use (the `busy` object of the JSON output): a thread's
/// stack, or a suspended frame in memory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BusyDetail {
    pub function: String,
    /// The thread running it, when one is.
    pub thread: Option<i32>,
    /// For a suspended frame: where its return address is stored, the address, and the
    /// mapping holding it.
    pub suspended_at: Option<String>,
    pub returns_to: Option<String>,
    pub mapping: Option<String>,
    /// For a running thread: why it was only polled, not caught as it returned (`None` when
    /// return stubs were used).
    pub polled_only: Option<String>,
    /// Why on-stack replacement could not move the frame (the builder's reason for its call
    /// site), when that was the obstacle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_moved: Option<String>,
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Untouched => "target untouched",
        Outcome::RolledBack => "target rolled back to its original code",
        Outcome::Exited => "target exited",
        Outcome::Reverted => "the patch was reverted: the target runs its original code",
        Outcome::InTransition => {
            "the transition goes on: the threads listed run the old code, every other thread \
             the new code; `suture revert` ends it"
        }
    }
}

/// `message` without a trailing "; target ..." state.
fn without_state(message: &str) -> &str {
    match message.rfind("; target ") {
        Some(at) => &message[..at],
        None => message,
    }
}

impl From<LinkError> for ApplyError {
    fn from(e: LinkError) -> Self {
        ApplyError::Link(e)
    }
}

impl ApplyError {
    /// What became of the target.
    pub fn outcome(&self) -> Outcome {
        match self {
            ApplyError::Patch(_) | ApplyError::Link(_) | ApplyError::AlreadyLive { .. } => {
                Outcome::Untouched
            }
            ApplyError::Process { outcome, .. }
            | ApplyError::Busy { outcome, .. }
            | ApplyError::Suspended { outcome, .. }
            | ApplyError::Transition { outcome, .. }
            | ApplyError::Target(_, outcome) => *outcome,
        }
    }

    /// For a refusal because replaced code was in use: where (for `--json`).
    pub fn busy(&self) -> Option<BusyDetail> {
        match self {
            ApplyError::Busy {
                function,
                tid,
                polled_only,
                not_moved,
                ..
            } => Some(BusyDetail {
                function: function.clone(),
                thread: Some(tid.0),
                suspended_at: None,
                returns_to: None,
                mapping: None,
                polled_only: polled_only.map(str::to_string),
                not_moved: not_moved.clone(),
            }),
            ApplyError::Suspended { frame, .. } => Some(BusyDetail {
                function: frame.name.clone(),
                thread: None,
                suspended_at: Some(format!("{:#x}", frame.at)),
                returns_to: Some(format!("{:#x}", frame.returns_to)),
                mapping: Some(frame.mapping.clone()),
                polled_only: None,
                not_moved: None,
            }),
            _ => None,
        }
    }

    /// The same error with `outcome` (what became of the target once apply cleaned up).
    fn with_outcome(self, outcome: Outcome) -> ApplyError {
        match self {
            ApplyError::Process { source, .. } => ApplyError::process(source, outcome),
            ApplyError::Busy {
                function,
                tid,
                waited,
                done,
                polled_only,
                not_moved,
                ..
            } => ApplyError::Busy {
                function,
                tid,
                waited,
                done,
                polled_only,
                not_moved,
                outcome,
            },
            ApplyError::Suspended {
                frame,
                waited,
                done,
                ..
            } => ApplyError::Suspended {
                frame,
                waited,
                done,
                outcome,
            },
            ApplyError::Target(m, _) => ApplyError::Target(m, outcome),
            other => ApplyError::Target(other.to_string(), outcome),
        }
    }

    pub(crate) fn process(source: crate::error::Error, outcome: Outcome) -> ApplyError {
        // No roll-back or untouched claim about a process that is gone.
        let outcome = if source.target_exited() {
            Outcome::Exited
        } else {
            outcome
        };
        ApplyError::Process { source, outcome }
    }
}

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// How long to keep retrying while a replaced function is busy.
    pub timeout: Duration,
    /// Name recorded in the target for status and revert.
    pub patch_id: String,
    /// Path (or path suffix) of the mapped object the patch is for; default the executable.
    pub object: Option<String>,
    /// Symbols of the patched object to use where its file lacks them (a stripped deployed
    /// file): link-time values from an unstripped twin with the same build-id, as recorded in a
    /// patch bundle. See [`ElfSymbols::add_missing`].
    pub symbols: Option<std::sync::Arc<ElfSymbols>>,
    /// The GNU build-id the patched object must have (a bundle's): among mapped files matching
    /// `object`, only one with this build-id is patched.
    pub build_id: Option<Vec<u8>>,
    /// A live patch (by id) that this one replaces in the same switch: its jumps are removed,
    /// or overwritten by this patch's, atomically, and its memory is released.
    pub replace: Option<String>,
    /// Look for suspended frames (coroutines, saved contexts) in the replaced functions in
    /// the target's writable memory during the stop ([`crate::suspended`]). On by default;
    /// off only for a target known to have none (the stop is then shorter).
    pub scan_suspended: bool,
    /// Catch threads inside a replaced function as they return ([`crate::retstub`]) instead
    /// of only stopping the target at random moments. On by default.
    pub catch_returns: bool,
    /// Move frames waiting in calls from replaced functions to the patched code where the
    /// patch maps their call sites ([`crate::osr`]). On by default.
    pub move_frames: bool,
    /// Switch at once with a per-thread transition ([`crate::transition`]): threads inside a
    /// replaced function keep running the old versions until they leave them; this is how long
    /// that may take before on-stack replacement moves them or the patch is reverted. `None`:
    /// a plain switch, which waits (up to `timeout`) until no thread is inside.
    pub transition: Option<Duration>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            timeout: Duration::from_secs(3),
            patch_id: "patch".into(),
            object: None,
            symbols: None,
            build_id: None,
            replace: None,
            scan_suspended: true,
            catch_returns: true,
            move_frames: true,
            transition: None,
        }
    }
}

/// A patch that is live in a process.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Applied {
    pub pid: i32,
    #[serde(serialize_with = "crate::hexjson::addr")]
    pub base: u64,
    pub size: u64,
    pub redirects: Vec<Redirect>,
    /// Stop attempts needed (more than 1 when a replaced function was busy).
    pub attempts: u32,
    /// How long the target was stopped for the switch (the last attempt), as suture saw it.
    pub stop_window_us: u64,
    /// The same stop by phase.
    pub stop_phases: StopPhases,
    /// Threads caught by a return stub as they left a busy function (0 when stopping at
    /// random moments found the functions idle).
    pub caught_returns: u32,
    /// Frames moved from a replaced function to the patched code (on-stack replacement).
    pub moved_frames: Vec<MovedFrame>,
    /// The id of the patch this one replaced, if any.
    pub replaced: Option<String>,
    /// How the per-thread transition went (`--transition`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionReport>,
}

/// The course of a per-thread transition ([`crate::transition`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TransitionReport {
    /// The threads that were inside a replaced function at the switch and went on in the old
    /// code.
    pub old_threads: Vec<i32>,
    /// How it completed: every old-state thread left the replaced functions (`returned`), or
    /// the last ones were moved to the new code by on-stack replacement (`moved`).
    pub completed: &'static str,
    /// From the switch to completion.
    pub duration_ms: u64,
    /// Stops made to check the old-state threads.
    pub checks: u32,
    /// The longest of those stops, as suture saw it (stop to resume), in microseconds.
    pub longest_check_us: u64,
    /// Frames moved at the end (on-stack replacement).
    pub moved_frames: Vec<MovedFrame>,
}

/// A frame that waited in a call from a replaced function and was moved to the other version
/// (on-stack replacement, [`crate::osr`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MovedFrame {
    pub thread: i32,
    /// The return address it had, and the one it got (a trampoline to the other version).
    #[serde(serialize_with = "crate::hexjson::addr")]
    pub from: u64,
    #[serde(serialize_with = "crate::hexjson::addr")]
    pub to: u64,
}

/// How many moved frames (return addresses) one switch can write: the commit routine's pages
/// are sized for them when a patch has on-stack replacement sites.
const OSR_FRAMES: usize = 256;

/// The on-stack replacement functions of a patch: original → patched for apply, patched →
/// original for revert. Without `linked` (measuring) every address is 0.
fn osr_functions<'a>(
    originals: &'a [(&ChangedFn, RemoteAddr)],
    linked: Option<(&'a crate::link::Linked, &'a [Vec<u8>])>,
) -> Vec<crate::osr::Function<'a>> {
    let mut out = Vec::new();
    for (i, (f, from)) in originals.iter().enumerate() {
        let Some(table) = &f.osr else { continue };
        let (new, new_code, old_code): (u64, &[u8], &[u8]) = match linked {
            None => (0, &[], &[]),
            Some((l, codes)) => {
                let Some(to) = l.symbols.get(&f.name) else {
                    continue;
                };
                let code = l
                    .segments
                    .iter()
                    .find(|(_, at, b)| (at.0..at.0 + b.len() as u64).contains(&to.0))
                    .map_or(&[][..], |(_, at, b)| &b[(to.0 - at.0) as usize..]);
                let old = &codes[i];
                (to.0, code, &old[..old.len().min(f.size as usize)])
            }
        };
        let old = if linked.is_some() { from.0 } else { 0 };
        out.push(crate::osr::Function {
            src: old,
            dst: new,
            dst_code: new_code,
            sites: &table.forward,
            revert: false,
        });
        out.push(crate::osr::Function {
            src: new,
            dst: old,
            dst_code: old_code,
            sites: &table.backward,
            revert: true,
        });
    }
    out
}

/// A patch found in a process by its header.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LivePatch {
    pub pid: i32,
    #[serde(serialize_with = "crate::hexjson::addr")]
    pub base: u64,
    pub header: Header,
    /// A live patch's unfinished per-thread transition ([`crate::transition`]): the threads
    /// that still run the old code (empty when there is none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub old_threads: Vec<crate::transition::Slot>,
    /// For an unfinished transition: the suture process driving it, when it still runs
    /// (`None`: it was killed, and nothing will complete the transition; revert ends it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition_driver: Option<i32>,
}

#[derive(Clone)]
struct ChangedFn {
    name: String,
    request: Request,
    size: u64,
    /// The original's code as compiled (patch objects from this suture on).
    original_code: Option<suture_object::report::OriginalCode>,
    /// Where frames waiting in a call from it can move (`suture_object::osr`).
    osr: Option<suture_object::osr::OsrTable>,
}

fn manifest_functions(plan: &Plan) -> Result<Vec<ChangedFn>, ApplyError> {
    let obj = plan.object();
    let section = obj
        .sections
        .iter()
        .find(|s| s.name == suture_object::emit::MANIFEST_SECTION)
        .ok_or_else(|| {
            ApplyError::Patch("the patch object has no .suture.patch manifest".into())
        })?;
    let v: serde_json::Value = serde_json::from_slice(section.data)
        .map_err(|e| ApplyError::Patch(format!("the patch manifest is not valid JSON: {e}")))?;
    if v["schema"] != suture_object::report::SCHEMA {
        return Err(ApplyError::Patch(format!(
            "the patch manifest has schema {}, this suture reads {}",
            v["schema"],
            suture_object::report::SCHEMA
        )));
    }
    let mut out = Vec::new();
    for f in v["changed_functions"].as_array().into_iter().flatten() {
        if f["fragment"].as_bool() == Some(true) {
            continue;
        }
        let name = f["name"].as_str().unwrap_or_default().to_string();
        let original = f["original_name"].as_str().unwrap_or_default().to_string();
        let request = match (f["binding"].as_str(), f["file"].as_str()) {
            (Some("local"), file) => Request::Local {
                file: file.unwrap_or_default().to_string(),
                name: original,
            },
            _ => Request::Global {
                name: original,
                weak: false,
            },
        };
        out.push(ChangedFn {
            name,
            request,
            size: f["original_size"].as_u64().unwrap_or(0),
            original_code: serde_json::from_value(f["original_code"].clone()).ok(),
            osr: serde_json::from_value(f["osr"].clone()).ok(),
        });
    }
    if out.is_empty() {
        return Err(ApplyError::Patch("the patch replaces no function".into()));
    }
    Ok(out)
}

/// Refuses when the running code of `f` (at `from`, with the entry bytes of live patches
/// restored) is not the original code recorded in the patch object.
fn check_original_code(
    mem: &ProcessMemory,
    existing: &[LivePatch],
    f: &ChangedFn,
    from: RemoteAddr,
    object: &str,
) -> Result<(), ApplyError> {
    let Some(code) = &f.original_code else {
        return Ok(());
    };
    match original_difference(mem, existing, code, from)? {
        None => Ok(()),
        Some(off) => Err(ApplyError::Patch(format!(
            "{object} does not run the code this patch was made from: {} at {:#x} differs from the \
             original object at +{off:#x} (another build or version of the program?). A patch \
             object is only for the exact build its original object went into; build a bundle \
             with `suture build` to bind a patch to a build-id",
            f.name, from.0
        ))),
    }
}

/// Where the running code at `from` (with the entry bytes of live patches restored) first
/// differs from `code`, outside the instructions the linker fills in; `None` when it does not.
fn original_difference(
    mem: &ProcessMemory,
    existing: &[LivePatch],
    code: &suture_object::report::OriginalCode,
    from: RemoteAddr,
) -> Result<Option<usize>, ApplyError> {
    let len = code.bytes.len() / 2;
    let mut running = mem
        .read_vec(from, len)
        .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    for r in existing
        .iter()
        .filter(|p| p.header.state == State::Live)
        .flat_map(|p| &p.header.redirects)
    {
        if let Some(at) = r.from.checked_sub(from.0).map(|o| o as usize) {
            for (i, b) in r.saved.iter().enumerate() {
                if let Some(slot) = running.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
    }
    Ok(code.first_difference(&running))
}

/// The mapped ELF files of a process: the patched object first, then the others in map order.
struct Loaded {
    mapped: Vec<Mapped>,
    files: Vec<(
        String,
        std::sync::Arc<crate::sys::MappedFile>,
        u64,
        std::ops::Range<u64>,
    )>,
    patched: usize,
}

impl Loaded {
    /// The executable first, then the libraries in map order (the dynamic linker's order
    /// for the common case).
    fn search(&self) -> Vec<&Mapped> {
        let mut v: Vec<&Mapped> = self.mapped.iter().filter(|m| m.is_exec).collect();
        v.extend(self.mapped.iter().filter(|m| !m.is_exec));
        v
    }
}

fn load_objects(
    pid: Pid,
    maps: &Maps,
    object: Option<&str>,
    build_id: Option<&[u8]>,
) -> Result<Loaded, ApplyError> {
    // Through a live thread: the leader's own exe link is gone once the main thread exited.
    let exe = std::fs::read_link(crate::maps::live_proc_dir(pid).join("exe")).map_err(|e| {
        ApplyError::Target(
            format!("cannot read /proc/{}/exe: {e}", pid.0),
            Outcome::Untouched,
        )
    })?;
    let wanted = |p: &std::path::Path| match object {
        Some(o) => p.to_string_lossy().ends_with(o),
        None => p == exe,
    };
    let mut mapped = Vec::new();
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut patched_at = None;
    for m in maps.iter() {
        let (MapName::Path(path), 0) = (&m.name, m.offset) else {
            continue;
        };
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(open) = m.open_path(pid) else {
            continue;
        };
        let Ok(bytes) = crate::sys::MappedFile::open(&open) else {
            continue;
        };
        let bytes = std::sync::Arc::new(bytes);
        let name = path.to_string_lossy().into_owned();
        let Ok(symbols) = ElfSymbols::parse_shared(&name, SharedBytes(bytes.clone())) else {
            continue;
        };
        let bias = symbols.bias(m.start);
        let code = maps
            .of_path(path)
            .filter(|x| x.perms.exec)
            .map(|x| x.start.0..x.end.0)
            .next()
            .unwrap_or(0..0);
        // With a build-id (a bundle), only the file that has it: two mapped files may share a
        // path suffix (a system library and an application's private copy).
        let identified = build_id.is_none_or(|id| symbols.build_id.as_deref() == Some(id));
        if wanted(path) && identified && patched_at.is_none() {
            patched_at = Some(mapped.len());
        }
        mapped.push(Mapped {
            path: name.clone(),
            symbols,
            bias,
            is_exec: *path == exe,
        });
        files.push((name, bytes, bias, code));
    }
    let Some(patched) = patched_at else {
        return Err(ApplyError::Target(
            format!(
                "the process does not map {}{}",
                object.map_or_else(|| exe.display().to_string(), str::to_string),
                build_id.map_or_else(String::new, |id| format!(
                    " with build-id {}",
                    id.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ))
            ),
            Outcome::Untouched,
        ));
    };
    Ok(Loaded {
        mapped,
        files,
        patched,
    })
}

pub(crate) fn regs_array(r: &Registers) -> [u64; 18] {
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.eflags,
    ]
}

/// Registers for the routine's own restore: a thread interrupted inside a restartable system
/// call resumes by re-executing it.
pub(crate) fn restartable(mut r: Registers) -> Registers {
    let rax = r.rax as i64;
    if (r.orig_rax as i64) >= 0 {
        match rax {
            -514..=-512 => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            -516 => {
                r.rax = 219; // restart_syscall
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r
}

/// Reads every thread's stack (from its stack pointer to the end of its mapping, at most
/// `cap` bytes), with one system call for all of them where it can; a stack that cannot be
/// read is empty.
fn snapshots(
    mem: &ProcessMemory,
    maps: &Maps,
    regs: &[(Tid, Registers)],
    cap: u64,
) -> Vec<StackSnapshot> {
    let mut reqs: Vec<(RemoteAddr, Vec<u8>)> = regs
        .iter()
        .map(|(_, r)| {
            let end = maps
                .find(RemoteAddr(r.rsp))
                .map_or(r.rsp + 4096, |m| m.end.0)
                .min(r.rsp.saturating_add(cap));
            (
                RemoteAddr(r.rsp),
                vec![0u8; end.saturating_sub(r.rsp) as usize],
            )
        })
        .collect();
    let ok = mem.read_many(&mut reqs);
    reqs.into_iter()
        .zip(ok)
        .map(|((base, mut bytes), ok)| {
            if !ok {
                bytes.clear();
            }
            StackSnapshot {
                base: base.0,
                bytes,
            }
        })
        .collect()
}

const STACK_CAP: u64 = 1 << 20;

/// Finds the free range for a region of `size` bytes near `center`.
fn place(maps: &Maps, center: RemoteAddr, size: u64) -> Result<RemoteAddr, ApplyError> {
    maps.free_range_near(center, size, PAGE).ok_or_else(|| {
        ApplyError::Target(
            format!("no free address range of {size} bytes within 2 GiB of {center}"),
            Outcome::Untouched,
        )
    })
}

fn jump(from: u64, to: u64) -> Result<Vec<u8>, ApplyError> {
    let rel = (to as i64) - (from as i64 + 5);
    let rel = i32::try_from(rel).map_err(|_| {
        ApplyError::Target(
            format!("{to:#x} is out of jump range of {from:#x}"),
            Outcome::Untouched,
        )
    })?;
    let mut v = vec![0xe9];
    v.extend_from_slice(&rel.to_le_bytes());
    Ok(v)
}

fn unmap(pid: Pid, site: &SyscallSite, base: RemoteAddr, size: u64) -> Outcome {
    let done = StoppedProcess::stop(pid).and_then(|mut sp| {
        // The munmap was checked against the target's seccomp filters before mapping.
        let r = sp
            .remote_ignoring_seccomp(site)
            .and_then(|mut rm| rm.munmap(base, size));
        sp.resume().and(r)
    });
    match done {
        Ok(()) => Outcome::RolledBack,
        Err(e) if e.process_gone() => {
            tracing::debug!(pid = pid.0, %e, "the target died before its region was released");
            Outcome::Exited
        }
        Err(e) => {
            tracing::error!(pid = pid.0, %e, "could not release the patch region");
            Outcome::RolledBack
        }
    }
}

/// Everything apply decides and builds while the target runs: the linked patch, the jumps and
/// the commit routine, where the region goes, and what the stack check must look for.
struct Prepared {
    maps: Maps,
    mem: ProcessMemory,
    unwind: UnwindInfo,
    busy: Vec<BusyRange>,
    /// Return addresses into `busy` (for the suspended-frame scan).
    sites: ReturnSites,
    /// The target runs with a shadow stack: no return stubs.
    shadow_stack: bool,
    /// The target can throw exceptions or unwind panics: no return stubs.
    throws: bool,
    site: SyscallSite,
    commit: Commit,
    region: Region,
    code_addr: RemoteAddr,
    block_addr: RemoteAddr,
    header_bytes: Vec<u8>,
    /// The on-stack replacement table and trampolines (empty without OSR sites).
    osr: crate::osr::Area,
    /// The switch's writes (the commit routine is generated again from them, with the
    /// return addresses of moved frames added, when frames move).
    writes: Vec<Write>,
    /// Return addresses of call sites the builder refused to map (or whole functions whose
    /// maps do not fit the running code), with the reason.
    refusals: Vec<(std::ops::Range<u64>, String)>,
    /// The linked segments to write (empty for a reused region: its bytes are there).
    segments: Vec<(Segment, RemoteAddr, Vec<u8>)>,
    redirects: Vec<Redirect>,
    replaced: Option<LivePatch>,
    /// Regions an interrupted apply left behind (never switched, so nothing points into them).
    leftovers: Vec<(RemoteAddr, u64)>,
    /// The per-thread transition's table and dispatchers (`--transition`).
    transition: Option<Transition>,
    /// The return stubs of the patch regions in the process that a killed suture left armed.
    stub_areas: Vec<StubArea>,
}

/// What a per-thread transition needs at and after the switch.
struct Transition {
    table: RemoteAddr,
    dispatchers: (RemoteAddr, Vec<u8>),
    /// The bytes of every replaced entry the jump overwrites, less its first, and the
    /// function's name: no thread may be there at the switch (its next instruction would be
    /// half a jump), nor hold an address there.
    entries: Vec<(std::ops::Range<u64>, String)>,
    /// How long the old-state threads may take.
    timeout: Duration,
}

/// Step 1 of [`apply`]: everything that can be done while the target runs.
fn prepare(pid: Pid, patch: &[u8], opts: &ApplyOptions) -> Result<Prepared, ApplyError> {
    let plan = Plan::new(patch, PAGE)?;
    let functions = manifest_functions(&plan)?;
    // Refusals that need no file of the target (gone, zombie, traced, no permission, 32-bit).
    crate::stop::precheck(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let maps = Maps::read(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let mem = ProcessMemory::open(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    // The patch regions already in the target, read once: live ones (to replace, to unwind
    // through), retired ones (to reuse), leftovers of an interrupted apply (to reclaim).
    let existing = status_in(pid, &maps, &mem);
    let replaced = match &opts.replace {
        Some(id) => {
            let p = latest_live(&existing, id, pid)?;
            check_on_top(&mem, &existing, &p)?;
            Some(p)
        }
        None => None,
    };
    // A patch still in its per-thread transition: its old-state threads call the old versions
    // of its functions, and a patch over them would mix versions.
    if let Some(t) = existing.iter().find(|p| !p.old_threads.is_empty()) {
        return Err(ApplyError::Target(
            format!(
                "patch {:?} is still in its per-thread transition ({} thread(s) run its old \
                 code): {}",
                t.header.patch_id,
                t.old_threads.len(),
                match t.transition_driver {
                    Some(d) => format!(
                        "suture process {d} drives it; wait until it completes, or revert it first"
                    ),
                    None => "nothing drives it any more (the suture that started it was \
                             killed): revert it first"
                        .to_string(),
                }
            ),
            Outcome::Untouched,
        ));
    }
    if opts.transition.is_some() && opts.replace.is_some() {
        return Err(ApplyError::Patch(
            "a per-thread transition cannot replace another live patch yet: revert it first, \
             or apply without --transition"
                .into(),
        ));
    }
    // The same id live already (and not the one being swapped out): a second copy.
    if opts.replace.as_deref() != Some(opts.patch_id.as_str())
        && latest_live(&existing, &opts.patch_id, pid).is_ok()
    {
        return Err(ApplyError::AlreadyLive {
            patch_id: opts.patch_id.clone(),
            pid: pid.0,
        });
    }
    let mut loaded = load_objects(pid, &maps, opts.object.as_deref(), opts.build_id.as_deref())?;
    if let Some(extra) = &opts.symbols {
        loaded.mapped[loaded.patched].symbols.add_missing(extra);
    }
    let patched = &loaded.mapped[loaded.patched];
    // The header must fit the pages reserved for it: one page holds ~120 redirects.
    let header_len = Header::encoded_len(
        &opts.patch_id,
        patched.symbols.build_id.as_deref().unwrap_or_default(),
        &patched.path,
        functions.len() + replaced.as_ref().map_or(0, |p| p.header.redirects.len()),
    );
    let plan = if header_len as u64 > PAGE {
        Plan::new(patch, (header_len as u64).div_ceil(PAGE) * PAGE)?
    } else {
        plan
    };
    let mut resolver = LiveResolver {
        target: TargetResolver {
            patched,
            search: loaded.search(),
        },
        memory: &mem,
        chosen: Default::default(),
    };
    let site = SyscallSite::find_in(&maps, &mem)
        .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    // IFUNCs nothing in the process has resolved: run their resolvers in the target, as
    // ld.so would on a first call (see crate::ifunc).
    let unresolved = resolver.unresolved_ifuncs(&plan.requests());
    if !unresolved.is_empty() {
        let chosen = crate::ifunc::call_resolvers(pid, &maps, &site, &unresolved)?;
        for (c, v) in unresolved.iter().zip(chosen) {
            tracing::debug!(pid = pid.0, ifunc = %c.name, resolver = %c.resolver, chosen = %RemoteAddr(v), "IFUNC resolver run in the target");
            resolver.chosen.insert(c.resolver.0, v);
        }
    }
    let mut originals = Vec::new();
    for f in &functions {
        let Value::Address(from) =
            resolver
                .resolve(&f.request)
                .map_err(|reason| LinkError::Unresolved {
                    symbol: f.request.name().to_string(),
                    reason,
                })?
        else {
            return Err(ApplyError::Patch(format!(
                "{} has no address",
                f.request.name()
            )));
        };
        originals.push((f, from));
    }
    // A bare patch object is not bound to a build-id (a bundle is): check that the running
    // functions are the code it was made from, so another build or version is refused.
    if opts.build_id.is_none() {
        for (f, from) in &originals {
            check_original_code(&mem, &existing, f, *from, &patched.path)?;
        }
    }
    // On-stack replacement maps are offsets into the code they were computed on: they are
    // used only where the running function is that code (a bundle's build may compile the
    // original differently, e.g. with GOT access to extern data; its own binding covers the
    // symbols the patch uses, not these bodies).
    let mut osr_dropped: Vec<(std::ops::Range<u64>, String)> = Vec::new();
    let mut checked: Vec<(ChangedFn, RemoteAddr)> = Vec::with_capacity(originals.len());
    for (f, from) in &originals {
        let mut f = ChangedFn::clone(f);
        if let Some(table) = f.osr.take() {
            // The code the maps were computed on: recorded with them when the builder used
            // another compile than the diff's original.
            let why = match table.original_code.as_ref().or(f.original_code.as_ref()) {
                None => Some("the patch does not record the original code".to_string()),
                Some(code) => original_difference(&mem, &existing, code, *from)?.map(|off| {
                    format!(
                        "the running code differs from the object the builder mapped at \
                         +{off:#x} (it compiled the unit differently)"
                    )
                }),
            };
            match why {
                None => f.osr = Some(table),
                Some(why) => {
                    tracing::info!(function = %f.name, %why, "frames of this function are not moved");
                    osr_dropped.push((
                        from.0..from.0 + f.size.max(1),
                        format!("{}: {why}", f.request.name()),
                    ));
                }
            }
        }
        checked.push((f, *from));
    }
    let originals: Vec<(&ChangedFn, RemoteAddr)> =
        checked.iter().map(|(f, from)| (f, *from)).collect();
    let mut unwind = unwind_info(&loaded, &mem, &maps, &existing);
    // On-stack replacement (crate::osr): the trampolines' size does not depend on where
    // anything is, so the pages are counted before the region is placed.
    let osr_len = crate::osr::Area::measure(&osr_functions(&originals, None))
        .map_err(|e| ApplyError::Patch(format!("on-stack replacement: {e}")))?;
    let osr_pages = if osr_len > 16 {
        osr_len.div_ceil(PAGE)
    } else {
        0
    };
    // The per-thread transition's dispatchers need each old function's running code.
    // The running code of each replaced function, read once for the transition's dispatchers
    // and the OSR trampolines.
    let old_code: Vec<Vec<u8>> = if opts.transition.is_some() || osr_pages > 0 {
        originals
            .iter()
            .map(|(f, from)| mem.read_vec(*from, f.size.max(16) as usize))
            .collect::<Result<_, _>>()
            .map_err(|e| ApplyError::process(e, Outcome::Untouched))?
    } else {
        Vec::new()
    };
    let dispatch = |to: &dyn Fn(&ChangedFn) -> u64| -> Vec<crate::transition::Function> {
        originals
            .iter()
            .zip(&old_code)
            .map(|((f, from), code)| crate::transition::Function {
                name: f.request.name(),
                from: from.0,
                to: to(f),
                code,
            })
            .collect()
    };
    let transition_pages = match opts.transition {
        None => 0,
        Some(_) => {
            let len = crate::transition::measure(&dispatch(&|_| 0)).map_err(|e| {
                ApplyError::Patch(format!("cannot apply with a per-thread transition: {e}"))
            })?;
            1 + len.div_ceil(PAGE)
        }
    };
    let dummy = Commit::generate(
        0,
        0,
        &vec![
            Write {
                addr: 0,
                new: vec![0; 8],
                old: vec![0; 8]
            };
            // Each function, each entry of a replaced patch, its header state, and return
            // addresses of moved frames (apply now or revert later).
            originals.len()
                + replaced.as_ref().map_or(0, |p| p.header.redirects.len() + 1)
                + if osr_pages > 0 { OSR_FRAMES } else { 0 }
                + if transition_pages > 0 {
                    crate::transition::SLOTS
                } else {
                    0
                }
        ],
        0,
        [0; 4],
        0,
    );
    let code_pages = (dummy.code.len() as u64).div_ceil(PAGE).max(1);
    let block_pages = (dummy.block.len() as u64).div_ceil(PAGE).max(1);
    let plan_size = plan.region_size();
    // Then two pages of return stubs (crate::retstub), then the OSR pages.
    // Then the transition's table page and dispatchers.
    let size = plan_size + (code_pages + block_pages + 2 + osr_pages + transition_pages) * PAGE;
    let center = RemoteAddr(originals.iter().map(|(_, a)| a.0).min().unwrap_or(0));
    let (base, linked, reused) =
        match reusable(&mem, &plan, &resolver, &existing, &opts.patch_id, size)? {
            Some((base, linked)) => (base, linked, true),
            None => {
                let base = place(&maps, center, size)?;
                (base, plan.link(base, &resolver)?, false)
            }
        };
    let code_addr = base.offset(plan_size);
    let block_addr = code_addr.offset(code_pages * PAGE);
    let stubs = StubArea::at(block_addr.0 + block_pages * PAGE);
    let osr_addr = RemoteAddr(stubs.code + 2 * PAGE);
    let osr = if osr_pages > 0 {
        let functions = osr_functions(&originals, Some((&linked, &old_code)));
        crate::osr::Area::build(osr_addr.0, &functions)
            .map_err(|e| ApplyError::Patch(format!("on-stack replacement: {e}")))?
    } else {
        crate::osr::Area::default()
    };
    unwind.add_trampolines(&osr);
    let transition_at = RemoteAddr(osr_addr.0 + osr_pages * PAGE);
    let transition = match opts.transition {
        None => None,
        Some(timeout) => {
            let code_at = transition_at.offset(PAGE);
            let d = crate::transition::build(
                code_at.0,
                transition_at.0,
                &dispatch(&|f| linked.symbols.get(&f.name).map_or(0, |a| a.0)),
            )
            .map_err(|e| {
                ApplyError::Patch(format!("cannot apply with a per-thread transition: {e}"))
            })?;
            Some((
                d.entries,
                Transition {
                    table: transition_at,
                    dispatchers: (code_at, d.bytes),
                    entries: originals
                        .iter()
                        .map(|(f, from)| (from.0 + 1..from.0 + 5, f.request.name().to_string()))
                        .collect(),
                    timeout,
                },
            ))
        }
    };
    let (via, transition) = match transition {
        Some((v, t)) => (Some(v), Some(t)),
        None => (None, None),
    };

    let (writes, redirects, busy) = redirect_writes(
        &mem,
        &maps,
        &originals,
        &linked,
        via.as_deref(),
        replaced.as_ref(),
    )?;
    let header = Header {
        // A reused region stays "reverted" until the routine publishes "live": if suture dies
        // before, it must not look like a never-live leftover (those get unmapped).
        state: if reused {
            State::Reverted
        } else {
            State::Loaded
        },
        region_size: size,
        applied_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        patch_id: opts.patch_id.clone(),
        build_id: patched.symbols.build_id.clone().unwrap_or_default(),
        object: patched.path.clone(),
        redirects: redirects.clone(),
        eh_frame: linked
            .eh_frame
            .map(|(at, len)| ((at.0 - base.0) as u32, len as u32)),
        commit_pages: u16::try_from((code_addr.0 - base.0) / PAGE)
            .ok()
            .zip(u16::try_from((block_addr.0 - base.0) / PAGE).ok()),
        stubs: u16::try_from((stubs.code - base.0) / PAGE).ok(),
        osr: (osr_pages > 0)
            .then(|| {
                u16::try_from((osr_addr.0 - base.0) / PAGE)
                    .ok()
                    .zip(u16::try_from(osr_pages).ok())
            })
            .flatten(),
        transition: (transition_pages > 0)
            .then(|| {
                u16::try_from((transition_at.0 - base.0) / PAGE)
                    .ok()
                    .zip(u16::try_from(transition_pages).ok())
            })
            .flatten(),
    };
    let header_bytes = header
        .encode()
        .map_err(|e| ApplyError::Patch(e.to_string()))?;
    let commit = Commit::generate(
        code_addr.0,
        block_addr.0,
        &writes,
        base.0 + Header::STATE_OFFSET,
        Header::state_bytes(State::Live),
        marker_signal(pid),
    );

    // Regions an interrupted apply left behind (never switched, so nothing points into them).
    let leftovers: Vec<(RemoteAddr, u64)> = existing
        .iter()
        .filter(|p| p.header.state == State::Loaded)
        .map(|p| (RemoteAddr(p.base), p.header.region_size))
        .collect();

    let stub_areas = crate::retstub::with_armed_slots(&mem, &stub_areas(&existing));
    let text_at = base.offset(plan.segment_offset(Segment::Text));
    let text_len = plan.segment_offset(Segment::Rodata) - plan.segment_offset(Segment::Text);
    let data_at = base.offset(plan.segment_offset(Segment::Data));
    let data_len = plan_size - plan.segment_offset(Segment::Data);
    Ok(Prepared {
        region: Region {
            base,
            size,
            text: (text_at, text_len),
            data: (data_at, data_len),
            code: (code_addr, code_pages * PAGE),
            stubs,
            osr: (osr_addr, osr_pages * PAGE),
            transition: (transition_at, transition_pages * PAGE),
            reused,
        },
        osr,
        writes,
        refusals: osr_dropped
            .into_iter()
            .chain(originals.iter().flat_map(|(f, from)| {
                let name = f.request.name().to_string();
                f.osr.iter().flat_map(move |t| {
                    let name = name.clone();
                    t.refused.iter().map(move |r| {
                        let at = from.0 + u64::from(r.at);
                        (
                            at..at + 1,
                            format!(
                                "{name}+{:#x}, {}: {}",
                                r.at,
                                if r.callee.is_empty() {
                                    "an indirect call".to_string()
                                } else {
                                    format!("the call to {}", r.callee)
                                },
                                r.reason
                            ),
                        )
                    })
                })
            }))
            .collect(),
        segments: if reused { Vec::new() } else { linked.segments },
        shadow_stack: crate::maps::read_proc_string(crate::maps::live_proc_dir(pid).join("status"))
            .map_or(true, |st| crate::retstub::shadow_stack_enabled(&st)),
        throws: crate::retstub::may_unwind_through(&loaded.mapped),
        sites: if opts.scan_suspended {
            ReturnSites::read(&mem, &busy)
                .with_thread_library(crate::nptl::ThreadLibrary::find(&loaded.mapped, &mem))
        } else {
            ReturnSites::default()
        },
        maps,
        mem,
        unwind,
        busy,
        site,
        commit,
        code_addr,
        block_addr,
        header_bytes,
        redirects,
        replaced,
        leftovers,
        transition,
        stub_areas,
    })
}

/// Applies a patch object to a running process: [`prepare`] while it runs, map the region
/// (one short stop, skipped for a reused region), write it while it runs, then [`switch`]
/// (stop, stack check, commit).
pub fn apply(pid: Pid, patch: &[u8], opts: &ApplyOptions) -> Result<Applied, ApplyError> {
    // 1. Everything that can be done while the target runs.
    let p = prepare(pid, patch, opts)?;
    let Region {
        base, size, reused, ..
    } = p.region;
    let mem = &p.mem;

    // 2. Map the region with its final protections (and release leftovers in the same stop);
    //    a reused region is mapped already.
    let seccomp_ok = if !reused || !p.leftovers.is_empty() {
        map_region(pid, &p.site, &p.commit, &p.leftovers, &p.region)?
    } else {
        // No stop here to run the seccomp check: stubs only where no filter is installed.
        !crate::retstub::under_seccomp_filter(pid)
    };
    let no_stubs = no_stubs_reason(opts.catch_returns, seccomp_ok, p.shadow_stack, p.throws);
    let stubs_ok = no_stubs.is_none();
    let osr_off = if opts.move_frames {
        osr_off_reason(p.shadow_stack, p.throws)
    } else {
        Some("moving frames is turned off (--no-osr)")
    };
    crate::failpoint::hit("apply:mapped");
    let retired = std::cell::Cell::new(false);
    let fail = |e: ApplyError| -> ApplyError {
        let outcome = if reused || retired.get() {
            // Never switched this time; the region stays retired (it may be referenced).
            let _ = mem.write(
                base.offset(Header::STATE_OFFSET),
                &Header::state_bytes(State::Reverted),
            );
            Outcome::Untouched
        } else {
            unmap(pid, &p.site, base, size)
        };
        e.with_outcome(outcome)
    };

    // 3. Write everything while the target runs (nothing refers to the region yet). A reused
    //    region's code and read-only data are identical already; its data keeps the values
    //    the program gave it.
    let written = (|| {
        mem.write(base, &p.header_bytes)?;
        for (_, addr, bytes) in &p.segments {
            mem.write(*addr, bytes)?;
        }
        mem.write(p.code_addr, &p.commit.code)?;
        mem.write(p.block_addr, &p.commit.block)?;
        // Identical bytes in every region: rewriting a reused region's page is harmless
        // even to a thread parked in it.
        mem.write(
            RemoteAddr(p.region.stubs.code),
            &crate::retstub::code_page(),
        )?;
        // Identical bytes in a reused region (same addresses, same sites).
        if !p.osr.is_empty() {
            mem.write(p.region.osr.0, &p.osr.bytes)?;
        }
        // An empty table until the switch fills it; the dispatchers (identical bytes in a
        // reused region, where nothing jumps to them any more).
        if let Some(t) = &p.transition {
            let empty = crate::transition::table(&[]).expect("an empty table fits");
            mem.write(t.table, &empty)?;
            mem.write(t.dispatchers.0, &t.dispatchers.1)?;
        }
        Ok(())
    })();
    written.map_err(|e| fail(ApplyError::process(e, Outcome::Untouched)))?;
    crate::failpoint::hit("apply:written");

    // 4. The switch: stop, stack check, commit.
    let (done, armed) = switch(
        pid,
        &Switch {
            maps: &p.maps,
            unwind: &p.unwind,
            busy: &p.busy,
            sites: opts.scan_suspended.then_some(&p.sites),
            stubs: stubs_ok.then_some(p.region.stubs),
            retire_at: (!reused).then_some(base.offset(Header::STATE_OFFSET)),
            no_stubs: no_stubs.unwrap_or(""),
            commit: &p.commit,
            writes: &p.writes,
            osr: (!p.osr.is_empty() && osr_off.is_none()).then_some(&p.osr),
            refusals: &p.refusals,
            osr_off: osr_off.filter(|_| !p.osr.is_empty()),
            code_addr: p.code_addr,
            block_addr: p.block_addr,
            state_addr: base.offset(Header::STATE_OFFSET),
            want: State::Live,
            timeout: opts.timeout,
            failpoint: "apply:stopped",
            failpoint_armed: "apply:armed",
            transition: p.transition.as_ref(),
            stub_areas: &p.stub_areas,
        },
        // The replaced patch's region stays mapped, retired (see the module comment).
        |_| {},
    );
    // A region whose return stub may still be entered is never unmapped: it stays, retired.
    retired.set(armed);
    let done = done.map_err(fail)?;
    tracing::info!(pid = pid.0, patch = %opts.patch_id, functions = p.redirects.len(), "patch applied");
    let transition = match &p.transition {
        None => None,
        Some(t) => Some(drive(
            pid,
            &opts.patch_id,
            t,
            &Driven {
                unwind: &p.unwind,
                busy: &p.busy,
                sites: opts.scan_suspended.then_some(&p.sites),
                stubs: stubs_ok.then_some(p.region.stubs),
                no_stubs,
                osr_off: osr_off.filter(|_| !p.osr.is_empty()),
                stub_areas: &p.stub_areas,
                osr: (!p.osr.is_empty() && osr_off.is_none()).then_some(&p.osr),
                code_addr: p.code_addr,
                block_addr: p.block_addr,
                state_addr: base.offset(Header::STATE_OFFSET),
            },
            &done.old,
        )?),
    };
    Ok(Applied {
        pid: pid.0,
        base: base.0,
        size,
        redirects: p.redirects,
        attempts: done.attempts,
        stop_window_us: done.window.as_micros() as u64,
        stop_phases: done.phases,
        caught_returns: done.caught,
        moved_frames: done.moved,
        replaced: p.replaced.map(|r| r.header.patch_id),
        transition,
    })
}

/// The jumps of the switch (each with the bytes it overwrites), the header's redirects (with
/// the original bytes a revert restores) and the code that must not be running: for every
/// replaced function, and for the entries and region of a replaced patch. Reads the target
/// while it runs.
#[allow(clippy::type_complexity)]
fn redirect_writes(
    mem: &ProcessMemory,
    maps: &Maps,
    originals: &[(&ChangedFn, RemoteAddr)],
    linked: &crate::link::Linked,
    via: Option<&[u64]>,
    replaced: Option<&LivePatch>,
) -> Result<(Vec<Write>, Vec<Redirect>, Vec<BusyRange>), ApplyError> {
    let mut writes = Vec::new();
    let mut redirects = Vec::new();
    let mut busy = Vec::new();
    for (i, (f, from)) in originals.iter().enumerate() {
        let mut to = *linked.symbols.get(&f.name).ok_or_else(|| {
            ApplyError::Patch(format!("the patch object does not define {}", f.name))
        })?;
        // A per-thread transition goes through the function's dispatcher.
        if let Some(d) = via.and_then(|v| v.get(i)) {
            to = RemoteAddr(*d);
        }
        let mut new = jump(from.0, to.0)?;
        // At an 8-byte aligned entry (gcc aligns functions to 16), write 8 bytes: one aligned
        // store, so no thread can ever execute half a jump.
        let width = if from.0 % 8 == 0 { 8 } else { new.len() };
        let old = mem
            .read_vec(*from, width)
            .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
        // Over a replaced patch's jump, keep the original bytes it saved: reverting this patch
        // must give back the original function, not the replaced patch.
        let prior = replaced.and_then(|p| p.header.redirects.iter().find(|r| r.from == from.0));
        let original = match prior {
            Some(r) if r.saved.len() == width => r.saved.clone(),
            Some(r) => {
                return Err(ApplyError::Target(
                    format!(
                        "the replaced patch saved {} bytes at {:#x}, this one needs {width}",
                        r.saved.len(),
                        r.from
                    ),
                    Outcome::Untouched,
                ))
            }
            None => old.clone(),
        };
        new.extend_from_slice(&original[new.len()..]);
        busy.push(BusyRange {
            range: from.0..from.0 + f.size.max(new.len() as u64),
            name: f.request.name().to_string(),
        });
        redirects.push(Redirect {
            from: from.0,
            to: to.0,
            saved: original,
        });
        writes.push(Write {
            addr: from.0,
            new,
            old,
        });
    }
    if let Some(p) = replaced {
        // Entries only the replaced patch redirects go back to their original bytes; its
        // code must not be running; its header says "reverted" once the switch is done.
        for r in &p.header.redirects {
            if redirects.iter().any(|x| x.from == r.from) {
                continue;
            }
            let current = mem
                .read_vec(RemoteAddr(r.from), r.saved.len())
                .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
            writes.push(Write {
                addr: r.from,
                new: r.saved.clone(),
                old: current,
            });
        }
        busy.extend(region_code(maps, p));
        writes.push(Write {
            addr: p.base + Header::STATE_OFFSET,
            new: Header::state_bytes(State::Reverted).to_vec(),
            old: Header::state_bytes(State::Live).to_vec(),
        });
    }
    Ok((writes, redirects, busy))
}

/// Where a patch region's parts go (their final protections are mapped in one stop).
struct Region {
    base: RemoteAddr,
    size: u64,
    /// Read-execute patch code.
    text: (RemoteAddr, u64),
    /// Read-write patch data.
    data: (RemoteAddr, u64),
    /// The commit routine's code pages (read-execute).
    code: (RemoteAddr, u64),
    /// The return stubs' code page (read-execute) and slot page (read-write).
    stubs: StubArea,
    /// The on-stack replacement pages (read-execute; length 0 without).
    osr: (RemoteAddr, u64),
    /// The transition's table page (read-only) and dispatchers (read-execute); length 0
    /// without.
    transition: (RemoteAddr, u64),
    /// The region is mapped already (a retired region of the same patch).
    reused: bool,
}

/// Step 2 of apply, the one short stop before the switch: checks that every system call
/// suture will inject passes the target's seccomp filters, releases `leftovers` and maps the
/// region with its final protections (unless reused). The target is resumed before this
/// returns; on failure nothing of the region stays mapped.
fn map_region(
    pid: Pid,
    site: &SyscallSite,
    commit: &Commit,
    leftovers: &[(RemoteAddr, u64)],
    region: &Region,
) -> Result<bool, ApplyError> {
    let Region {
        base,
        size,
        text: (text_at, text_len),
        data: (data_at, data_len),
        code: (code_addr, code_len),
        stubs,
        osr: (osr_at, osr_len),
        transition: (trans_at, trans_len),
        reused,
    } = *region;
    let mut sp =
        StoppedProcess::stop(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    // Every system call suture will make in the target, with its exact arguments, must
    // pass the seccomp filters of every thread (see crate::seccomp).
    let calls = {
        use crate::seccomp::Injected;
        let ip = site.addr().0 + 2;
        let fd = crate::seccomp::lowest_free_fd(pid).unwrap_or(3);
        let fixed = 0x32; // MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED
        let mut c = vec![Injected::mmap(ip, base.0, size, 1, 0x10_0022, -1, 0)];
        if text_len > 0 {
            c.push(Injected::mmap(ip, text_at.0, text_len, 5, fixed, -1, 0));
        }
        if data_len > 0 {
            c.push(Injected::mprotect(ip, data_at.0, data_len, 3));
        }
        c.push(Injected::mmap(ip, code_addr.0, code_len, 5, fixed, -1, 0));
        c.push(Injected::mmap(ip, stubs.code, PAGE, 5, fixed, -1, 0));
        c.push(Injected::mprotect(ip, stubs.slots, PAGE, 3));
        if osr_len > 0 {
            c.push(Injected::mmap(ip, osr_at.0, osr_len, 5, fixed, -1, 0));
        }
        if trans_len > PAGE {
            c.push(Injected::mmap(
                ip,
                trans_at.0 + PAGE,
                trans_len - PAGE,
                5,
                fixed,
                -1,
                0,
            ));
        }
        c.push(Injected::munmap(ip, base.0, size));
        for &(at, len) in leftovers {
            c.push(Injected::munmap(ip, at.0, len));
        }
        // The commit routine's calls (the thread that runs it is chosen in the switch:
        // the leader's tid stands for it).
        let ns = namespace_pid(pid).unwrap_or(pid.0) as u64;
        c.extend(commit.syscalls(fd, ns, ns));
        c
    };
    if let Err(e) = sp.check_seccomp(&calls) {
        let _ = sp.resume();
        return Err(ApplyError::process(e, Outcome::Untouched));
    }
    // The return stubs' one system call: without it, busy functions are only polled.
    let stubs_ok = sp
        .check_seccomp(&[crate::seccomp::Injected::new(
            "nanosleep",
            35,
            [stubs.timespec(), 0, 0, 0, 0, 0],
            stubs.syscall_ip(),
        )])
        .is_ok();
    let mapped = (|| {
        let mut rm = sp.remote_ignoring_seccomp(site)?;
        for &(at, len) in leftovers {
            rm.munmap(at, len)?;
        }
        if reused {
            return Ok(());
        }
        rm.mmap_anonymous_at(base, size, Prot::READ)?;
        let r = (|| {
            // Executable pages are mapped executable from the start (MAP_FIXED over our own
            // fresh region): PR_SET_MDWE and MemoryDenyWriteExecute forbid gaining
            // PROT_EXEC through mprotect, not mapping read-execute memory.
            let fixed = 0x32; // MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED
            if text_len > 0 {
                rm.mmap(text_at, text_len, Prot::READ | Prot::EXEC, fixed, -1, 0)?;
            }
            if data_len > 0 {
                rm.mprotect(data_at, data_len, Prot::READ | Prot::WRITE)?;
            }
            rm.mmap(code_addr, code_len, Prot::RX, fixed, -1, 0)?;
            rm.mmap(RemoteAddr(stubs.code), PAGE, Prot::RX, fixed, -1, 0)?;
            rm.mprotect(RemoteAddr(stubs.slots), PAGE, Prot::READ | Prot::WRITE)?;
            if osr_len > 0 {
                rm.mmap(osr_at, osr_len, Prot::RX, fixed, -1, 0)?;
            }
            // The table page stays read-only (suture writes it through /proc/PID/mem).
            if trans_len > PAGE {
                rm.mmap(
                    trans_at.offset(PAGE),
                    trans_len - PAGE,
                    Prot::RX,
                    fixed,
                    -1,
                    0,
                )?;
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = rm.munmap(base, size);
        }
        r
    })();
    let resumed = sp.resume();
    mapped.map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    resumed.map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    Ok(stubs_ok)
}

/// Everything the switch needs, prepared before the target is stopped.
struct Switch<'a> {
    maps: &'a Maps,
    unwind: &'a UnwindInfo,
    busy: &'a [BusyRange],
    /// Return addresses into `busy`; `None` skips the suspended-frame scan.
    sites: Option<&'a ReturnSites>,
    /// The region's return stubs, when a busy thread may be caught as it returns
    /// ([`crate::retstub`]); `None` only polls.
    stubs: Option<StubArea>,
    /// The header state to set to "reverted" before the first stub is armed (an apply's new
    /// region: armed stubs must keep it from being reclaimed as a leftover).
    retire_at: Option<RemoteAddr>,
    /// Why `stubs` is `None` (said in a busy refusal).
    no_stubs: &'static str,
    commit: &'a Commit,
    /// The writes `commit` was generated from (without the header state).
    writes: &'a [Write],
    /// The region's on-stack replacement table: busy frames it maps are moved, not waited for.
    osr: Option<&'a crate::osr::Area>,
    /// Call sites (return addresses) the builder refused to map, with the reason.
    refusals: &'a [(std::ops::Range<u64>, String)],
    /// Why frames are not moved in this process although the patch maps sites.
    osr_off: Option<&'static str>,
    code_addr: RemoteAddr,
    block_addr: RemoteAddr,
    state_addr: RemoteAddr,
    /// The header state the routine writes when every write is done.
    want: State,
    timeout: Duration,
    failpoint: &'static str,
    /// The failpoint right after return stubs were armed (the target resumed).
    failpoint_armed: &'static str,
    /// Switch with a per-thread transition: threads inside `busy` become old-state threads
    /// (written to the table in the stop) instead of holding the switch up.
    transition: Option<&'a Transition>,
    /// The return stubs of patch regions in the process that had armed slots before the stop:
    /// stubs a killed suture left armed are undone in it ([`crate::retstub::reclaim`]).
    stub_areas: &'a [StubArea],
}

struct Switched {
    attempts: u32,
    window: Duration,
    /// Threads caught by a return stub on the way (0 when polling sufficed).
    caught: u32,
    phases: StopPhases,
    moved: Vec<MovedFrame>,
    /// With a transition: the threads that went on in old code, and the function each was in.
    old: Vec<(Tid, String)>,
}

/// Where the time of the switch's stop went, in microseconds, as suture saw it (the last,
/// successful stop).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StopPhases {
    /// Seizing every thread (no stop yet), then interrupting the blocked ones and the running
    /// ones, until all are stopped. The running threads' own stop starts late in this phase.
    pub stop_us: u64,
    /// Reading every thread's registers.
    pub registers_us: u64,
    /// Copying every thread's stack.
    pub stacks_us: u64,
    /// Unwinding and checking the stacks against the replaced code.
    pub check_us: u64,
    /// The suspended-frame scan of writable memory (`suspended.rs`).
    pub scan_us: u64,
    /// Writing the jumps and the header state (with `SUTURE_COMMIT=routine`: running the
    /// commit routine in the target), and checking the state.
    pub commit_us: u64,
    /// Releasing stubs and resuming every thread.
    pub resume_us: u64,
}

/// Why waiting frames are not moved (on-stack replacement) in a process; `None` when they can
/// be. A moved frame's return address points at a trampoline: a shadow stack (CET) would stop
/// the return, and an unwinder (C++ `throw`, Rust panics) would find no unwind rules there.
fn osr_off_reason(shadow_stack: bool, throws: bool) -> Option<&'static str> {
    if shadow_stack {
        Some("frames are not moved in a program running with a shadow stack")
    } else if throws {
        Some(
            "frames are not moved in a program that can throw exceptions or unwind panics \
             (an unwinder would meet the trampoline)",
        )
    } else {
        None
    }
}

/// Why busy threads are only polled, not caught as they return; `None` when stubs can be used.
fn no_stubs_reason(
    wanted: bool,
    seccomp_ok: bool,
    shadow_stack: bool,
    throws: bool,
) -> Option<&'static str> {
    if !wanted {
        Some("turned off")
    } else if throws {
        Some("the program can throw exceptions or unwind panics, which would stop at a stub")
    } else if shadow_stack {
        Some("the program runs with a shadow stack")
    } else if !seccomp_ok {
        Some("its seccomp filters do not allow the stubs' nanosleep")
    } else {
        None
    }
}

/// Return stubs armed during one switch.
struct Arms {
    area: Option<StubArea>,
    armed: Vec<Armed>,
    /// A stub was armed at some point (the region's state was set to "reverted").
    ever: bool,
    /// A stub may still be entered or run: the region must stay mapped.
    lingering: bool,
    caught: u32,
}

struct Armed {
    slot: usize,
    /// Where on the thread's stack the hijacked return address is.
    at: u64,
    ret: u64,
}

impl Arms {
    fn new(area: Option<StubArea>) -> Arms {
        Arms {
            area,
            armed: Vec::new(),
            ever: false,
            lingering: false,
            caught: 0,
        }
    }

    /// Undoes or releases every stub still armed, in one more stop of the target (nothing to do
    /// when none is).
    fn release_in_stop(&mut self, pid: Pid) {
        if self.armed.is_empty() {
            return;
        }
        match StoppedProcess::stop_parked(pid, true) {
            Ok(sp) => {
                let regs = sp.all_regs().unwrap_or_default();
                self.release(sp.mem(), &regs);
                let _ = sp.resume();
            }
            Err(e) => {
                self.lingering = true;
                tracing::warn!(pid = pid.0, %e, "could not stop the target to release return stubs; they release themselves within a second");
            }
        }
    }

    /// Forgets stubs whose thread passed through by itself (its slot is free again).
    fn sync(&mut self, slots: &[(u64, u32)]) {
        self.armed.retain(|a| slots[a.slot].0 == a.ret);
    }

    /// Arms a stub for every busy thread with an exact return slot not armed yet. Runs in a
    /// stop. Returns how many were armed.
    fn arm(
        &mut self,
        mem: &ProcessMemory,
        retire_at: Option<RemoteAddr>,
        findings: &[(u64, u64)],
    ) -> crate::error::Result<usize> {
        let Some(area) = self.area else {
            return Ok(0);
        };
        let slots = area.read_slots(mem)?;
        self.sync(&slots);
        let mut n = 0;
        for &(at, ret) in findings {
            if self.armed.iter().any(|a| a.at == at) {
                continue;
            }
            // Only a word that is a real return address: right after a call instruction.
            let lead = mem.read_vec(RemoteAddr(ret - 15), 15)?;
            if !crate::suspended::call_ends_at(&lead, 15) {
                continue;
            }
            let Some(slot) = (0..crate::retstub::SLOTS)
                .find(|&i| slots[i].0 == 0 && !self.armed.iter().any(|a| a.slot == i))
            else {
                break;
            };
            if !self.ever {
                if let Some(state) = retire_at {
                    mem.write(state, &Header::state_bytes(State::Reverted))?;
                }
                self.ever = true;
            }
            area.arm(mem, slot, ret)?;
            mem.write(RemoteAddr(at), &area.entry(slot).to_le_bytes())?;
            self.armed.push(Armed { slot, at, ret });
            self.caught += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Lets every thread parked in a stub go on (in a stop), keeping the stubs not reached yet.
    fn release_parked(&mut self, mem: &ProcessMemory) -> crate::error::Result<()> {
        let Some(area) = self.area else {
            return Ok(());
        };
        let slots = area.read_slots(mem)?;
        self.sync(&slots);
        let mut kept = Vec::new();
        for a in self.armed.drain(..) {
            if slots[a.slot].1 == crate::retstub::PARKED {
                area.set_state(mem, a.slot, crate::retstub::RELEASE)?;
            } else {
                kept.push(a);
            }
        }
        self.armed = kept;
        Ok(())
    }

    /// The real return address behind an armed stub's entry (for unwinding through it).
    fn stub_return(&self, ra: u64) -> Option<u64> {
        let area = self.area?;
        self.armed
            .iter()
            .find(|a| area.entry(a.slot) == ra)
            .map(|a| a.ret)
    }

    /// Waits (the target running) until every armed thread has returned into its stub, or
    /// `limit` passes.
    fn wait_arrivals(&mut self, mem: &ProcessMemory, limit: Instant) {
        let Some(area) = self.area else { return };
        while !self.armed.is_empty() && Instant::now() < limit {
            match area.read_slots(mem) {
                Ok(slots) => {
                    self.sync(&slots);
                    if self
                        .armed
                        .iter()
                        .all(|a| slots[a.slot].1 != crate::retstub::ARMED)
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Releases every armed stub (in a stop): parked threads go on to their real return
    /// addresses within a step; a stub not reached yet is undone when provably no thread is
    /// in it, else released so that it passes straight through.
    fn release(&mut self, mem: &ProcessMemory, regs: &[(Tid, Registers)]) {
        let Some(area) = self.area else { return };
        let in_stub = regs.iter().any(|(_, r)| area.contains_code(r.rip));
        let Ok(slots) = area.read_slots(mem) else {
            return;
        };
        for a in self.armed.drain(..) {
            let (ret, state) = slots[a.slot];
            if ret != a.ret {
                continue;
            }
            let entry = area.entry(a.slot);
            let untouched = state == crate::retstub::ARMED
                && !in_stub
                && mem.read_u64(RemoteAddr(a.at)).ok() == Some(entry);
            let undone = untouched
                && mem.write(RemoteAddr(a.at), &a.ret.to_le_bytes()).is_ok()
                && area.free(mem, a.slot).is_ok();
            if !undone {
                let _ = area.set_state(mem, a.slot, crate::retstub::RELEASE);
                self.lingering = true;
            }
        }
    }
}

/// Stops the target until no thread runs a busy range (retrying until the timeout, catching
/// busy threads as they return where it can), then writes the switch with the commit routine
/// as its safety net (or has one thread run it), and checks the header state it leaves. `then` runs in the same stop after a successful switch
/// (revert releases the region there). Also says whether a return stub may still be entered
/// (the region must then stay mapped).
fn switch(
    pid: Pid,
    sw: &Switch,
    then: impl FnOnce(&mut StoppedProcess),
) -> (Result<Switched, ApplyError>, bool) {
    let mut arms = Arms::new(sw.stubs);
    let result = switch_loop(pid, sw, &mut arms, then);
    // Failed with stubs armed: undo or release them.
    arms.release_in_stop(pid);
    (result, arms.lingering)
}

fn switch_loop(
    pid: Pid,
    sw: &Switch,
    arms: &mut Arms,
    then: impl FnOnce(&mut StoppedProcess),
) -> Result<Switched, ApplyError> {
    let started = Instant::now();
    // The part of the suspended-frame scan that can run before the stop (needs soft-dirty
    // tracking; without it the stop reads everything).
    let pre = sw.sites.and_then(|sites| {
        let mem = ProcessMemory::open(pid).ok()?;
        crate::suspended::prescan(pid, &mem, sites)
    });
    if let Some(p) = &pre {
        tracing::debug!(
            pid = pid.0,
            mappings = p.stats.mappings,
            bytes = p.stats.bytes,
            "suspended-frame scan before the stop"
        );
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let t0 = Instant::now();
        let mut phases = StopPhases::default();
        let mut lap = {
            let mut last = t0;
            move || {
                let now = Instant::now();
                let us = now.duration_since(last).as_micros() as u64;
                last = now;
                us
            }
        };
        let mut sp = StoppedProcess::stop_parked(pid, !arms.armed.is_empty())
            .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
        // Waiting for another process's stop to end is no part of this one.
        let queued = sp.turn_waited();
        phases.stop_us = lap().saturating_sub(queued.as_micros() as u64);
        let regs = sp
            .all_regs()
            .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
        phases.registers_us = lap();
        let mut blocked = None;
        let mut slots = Vec::new();
        let mut moved: Vec<(Tid, u64, u64, u64)> = Vec::new();
        // A return address into busy code at a call site the builder refused to map.
        let mut unmoved: Option<u64> = None;
        let mut stacks = snapshots(sp.mem(), sw.maps, &regs, STACK_CAP);
        reclaim_stubs(&sp, &regs, &mut stacks, sw.stub_areas, arms);
        phases.stacks_us = lap();
        // With a transition: threads that go on in old code (tid, thread pointer, function).
        let mut old: Vec<(Tid, u64, String)> = Vec::new();
        for ((tid, r), stack) in regs.iter().zip(&stacks) {
            if let Some(name) = sw.transition.and_then(|t| t.inside_entry(r.rip, stack)) {
                blocked.get_or_insert((name, *tid));
                continue;
            }
            if let Finding::Busy { name, ret_slot, .. } =
                sw.unwind.check(r.rip, r.rsp, r.rbp, stack, sw.busy)
            {
                // Frames waiting in calls at mapped sites move instead (crate::osr).
                let revert = sw.want == State::Reverted;
                let movable = (sw.osr.is_some() || !sw.refusals.is_empty()).then(|| {
                    sw.unwind.movable(
                        (r.rip, r.rsp, r.rbp),
                        stack,
                        sw.busy,
                        |ra| sw.osr.and_then(|area| area.target(ra, revert)),
                        |ra| arms.stub_return(ra),
                    )
                });
                match movable {
                    Some(Ok(m)) if !m.is_empty() => {
                        moved.extend(m.into_iter().map(|(slot, ra, to)| (*tid, slot, ra, to)));
                    }
                    // With a transition, a thread whose frames cannot move goes on in the old
                    // code.
                    _ if sw.transition.is_some() => old.push((*tid, r.fs_base, name)),
                    other => {
                        if let Some(Err(Some(ra))) = other {
                            unmoved.get_or_insert(ra);
                        }
                        blocked.get_or_insert((name, *tid));
                        slots.extend(ret_slot);
                    }
                }
            }
        }
        let done = if sw.want == State::Reverted {
            "reverted"
        } else {
            "applied"
        };
        if let Some((function, tid)) = blocked {
            // Catch the busy threads as they return (see crate::retstub).
            let armed = if started.elapsed() < sw.timeout {
                arms.arm(sp.mem(), sw.retire_at, &slots)
            } else {
                Ok(0)
            };
            let _ = sp.resume();
            if let Err(e) = armed {
                return Err(ApplyError::process(e, Outcome::Untouched));
            }
            if !arms.armed.is_empty() {
                crate::failpoint::hit(sw.failpoint_armed);
            }
            if started.elapsed() >= sw.timeout {
                return Err(ApplyError::Busy {
                    function,
                    tid,
                    waited: started.elapsed(),
                    done,
                    polled_only: sw.stubs.is_none().then_some(sw.no_stubs),
                    not_moved: unmoved
                        .and_then(|ra| {
                            sw.refusals
                                .iter()
                                .find(|(at, _)| at.contains(&ra))
                                .map(|(_, why)| why.clone())
                        })
                        .or_else(|| sw.osr_off.map(str::to_string)),
                    outcome: Outcome::Untouched,
                });
            }
            if arms.armed.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            } else {
                let limit = (Instant::now() + Duration::from_millis(200)).min(started + sw.timeout);
                if let Ok(mem) = ProcessMemory::open(pid) {
                    arms.wait_arrivals(&mem, limit);
                }
            }
            continue;
        }
        phases.check_us = lap();
        // (No return site in the replaced code: nothing can be suspended in it.)
        if let Some(sites) = sw.sites.filter(|s| !s.is_empty()) {
            let found = suspended_in(
                &sp,
                &regs,
                &stacks,
                sw.unwind,
                (sites, sw.busy),
                pre.as_ref(),
                &[],
            );
            match found {
                Err(e) => {
                    let _ = sp.resume();
                    return Err(ApplyError::process(e, Outcome::Untouched));
                }
                Ok((Some(frame), _)) => {
                    let _ = sp.resume();
                    if started.elapsed() >= sw.timeout {
                        return Err(ApplyError::Suspended {
                            frame,
                            waited: started.elapsed(),
                            done,
                            outcome: Outcome::Untouched,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Ok((None, stats)) => {
                    tracing::debug!(
                        pid = pid.0,
                        mappings = stats.mappings,
                        bytes = stats.bytes,
                        "no suspended frame in busy code"
                    );
                }
            }
        }
        // The transition's old-state threads, in its table before the jumps go in.
        if let Some(t) = sw.transition {
            if let Err(why) = t.write_table(&sp, &regs, &old) {
                let _ = sp.resume();
                return Err(ApplyError::Target(why, Outcome::Untouched));
            }
        }
        // Moved frames: their return addresses join the switch's writes, so the commit
        // routine completes or undoes them with the jumps.
        let regenerated;
        let commit = if moved.is_empty() {
            sw.commit
        } else if moved.len() > OSR_FRAMES {
            let _ = sp.resume();
            return Err(ApplyError::Target(
                format!(
                    "{} frames would move (at most {OSR_FRAMES} in one switch)",
                    moved.len()
                ),
                Outcome::Untouched,
            ));
        } else {
            let mut writes = sw.writes.to_vec();
            writes.extend(moved.iter().map(|&(_, slot, ra, to)| Write {
                addr: slot,
                new: to.to_le_bytes().to_vec(),
                old: ra.to_le_bytes().to_vec(),
            }));
            let at = (sw.code_addr, sw.block_addr);
            regenerated = match write_commit(sp.mem(), pid, at, &writes, sw.state_addr, sw.want) {
                Ok(c) => c,
                Err(e) => {
                    let _ = sp.resume();
                    return Err(ApplyError::process(e, Outcome::Untouched));
                }
            };
            &regenerated
        };
        phases.scan_us = lap();
        crate::failpoint::hit(sw.failpoint);
        let run = if commit_in_target() {
            let (tid, saved, end) = routine_thread(&sp, &regs, commit);
            let block = commit.block_with_registers(&regs_array(&restartable(saved)));
            sp.mem()
                .write(sw.block_addr, &block)
                .and_then(|()| sp.run_routine(tid, sw.code_addr, end, saved))
        } else {
            let template = commit.block.clone();
            let block_of = Box::new(move |r: &Registers| {
                let mut b = template;
                for (i, v) in regs_array(&restartable(*r)).iter().enumerate() {
                    b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
                b
            });
            sp.commit_direct(sw.code_addr, sw.block_addr, block_of, commit.writes.clone())
        };
        let state = sp.mem().read_vec(sw.state_addr, 4);
        let switched = matches!(&state, Ok(b) if b[..] == Header::state_bytes(sw.want));
        phases.commit_us = lap();
        if switched {
            then(&mut sp);
            // Parked threads go on (in the new code's world) once resumed.
            arms.release(sp.mem(), &regs);
        }
        let resumed = sp.resume();
        phases.resume_us = lap();
        let window = t0.elapsed().saturating_sub(queued);
        tracing::debug!(pid = pid.0, ?phases, "stop phases of the switch");
        if !switched {
            let detail = match run {
                Err(e) => e.to_string(),
                Ok(()) => "the commit routine could not write every jump".into(),
            };
            return Err(ApplyError::Target(detail, Outcome::Untouched));
        }
        if let Err(e) = resumed {
            tracing::warn!(pid = pid.0, %e, "resuming after the switch");
        }
        if !moved.is_empty() {
            tracing::info!(
                pid = pid.0,
                frames = moved.len(),
                "frames moved to the other version (on-stack replacement)"
            );
        }
        return Ok(Switched {
            attempts,
            window,
            caught: arms.caught,
            phases,
            moved: moved
                .into_iter()
                .map(|(tid, _, from, to)| MovedFrame {
                    thread: tid.0,
                    from,
                    to,
                })
                .collect(),
            old: old.into_iter().map(|(tid, _, f)| (tid, f)).collect(),
        });
    }
}

/// The return stubs of the patch regions of a process.
fn stub_areas(patches: &[LivePatch]) -> Vec<StubArea> {
    patches
        .iter()
        .filter_map(|p| {
            p.header
                .stubs
                .map(|page| StubArea::at(p.base + u64::from(page) * PAGE))
        })
        .collect()
}

/// Undoes, in a stop, the return stubs a killed suture left armed (see
/// [`crate::retstub::reclaim`]); this operation's own stubs (`arms`) stay.
fn reclaim_stubs(
    sp: &StoppedProcess,
    regs: &[(Tid, Registers)],
    stacks: &mut [StackSnapshot],
    areas: &[StubArea],
    arms: &Arms,
) {
    if areas.is_empty() {
        return;
    }
    let own: Vec<(u64, usize)> = arms
        .area
        .map(|a| arms.armed.iter().map(|x| (a.code, x.slot)).collect())
        .unwrap_or_default();
    let rips: Vec<u64> = regs.iter().map(|(_, r)| r.rip).collect();
    match crate::retstub::reclaim(sp.mem(), areas, &rips, stacks, &own) {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                pid = sp.pid().0,
                stubs = n,
                "return stubs a killed suture left armed were undone"
            )
        }
        Err(e) => tracing::warn!(pid = sp.pid().0, %e, "could not undo return stubs left armed"),
    }
}

/// The suspended-frame scan ([`crate::suspended`]) of a stopped process for return addresses
/// into `busy` outside every thread's live stack. The live stacks of the threads in `skip`
/// (old-state threads of a transition, which may hold old frames) are not read.
#[allow(clippy::too_many_arguments)]
fn suspended_in(
    sp: &StoppedProcess,
    regs: &[(Tid, Registers)],
    stacks: &[StackSnapshot],
    unwind: &UnwindInfo,
    (sites, busy): (&ReturnSites, &[BusyRange]),
    pre: Option<&crate::suspended::PreScan>,
    skip: &[Tid],
) -> crate::error::Result<(Option<SuspendedFrame>, crate::suspended::ScanStats)> {
    let pid = sp.pid();
    let threads: Vec<crate::suspended::ThreadStack> = regs
        .iter()
        .zip(stacks)
        .map(|((tid, r), stack)| crate::suspended::ThreadStack {
            rsp: r.rsp,
            fs_base: r.fs_base,
            small_frames: if skip.contains(tid) {
                let live = r.rsp.saturating_sub(crate::suspended::RED_ZONE)
                    ..stack.base + stack.bytes.len() as u64;
                std::iter::once(live).collect()
            } else {
                unwind
                    .frames(r.rip, r.rsp, r.rbp, stack)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| f.end - f.start < crate::suspended::MIN_STACK)
                    .collect()
            },
        })
        .collect();
    // The mappings as they are now: a stack mapped since `prepare` must be read too.
    let dir = crate::maps::live_proc_dir(pid);
    let maps = Maps::read_mappings(pid, &dir)?;
    crate::suspended::scan(
        pid,
        sp.mem(),
        (dir.as_path(), &maps, Some(unwind)),
        &threads,
        sites,
        busy,
        pre,
    )
}

/// What [`drive`] needs of the apply that started the transition.
struct Driven<'a> {
    unwind: &'a UnwindInfo,
    /// The replaced (old) functions.
    busy: &'a [BusyRange],
    sites: Option<&'a ReturnSites>,
    /// The region's return stubs, when threads may be caught as they leave old code.
    stubs: Option<StubArea>,
    /// Why there are none.
    no_stubs: Option<&'static str>,
    /// Why frames are not moved in this process, when the patch has maps.
    osr_off: Option<&'static str>,
    /// The return stubs of patch regions in the process that a killed suture left armed.
    stub_areas: &'a [StubArea],
    /// The region's on-stack replacement pages, when frames may move in this process.
    osr: Option<&'a crate::osr::Area>,
    code_addr: RemoteAddr,
    block_addr: RemoteAddr,
    state_addr: RemoteAddr,
}

/// Drives a per-thread transition to its end: checks the old-state threads now and then (a
/// short stop each time) and makes each one new-state once it holds no frame of a replaced
/// function. At the timeout, frames left in old code are moved by on-stack replacement where
/// the patch maps them; otherwise the patch is reverted.
fn drive(
    pid: Pid,
    patch_id: &str,
    t: &Transition,
    d: &Driven,
    old: &[(Tid, String)],
) -> Result<TransitionReport, ApplyError> {
    let started = Instant::now();
    let old_threads: Vec<i32> = old.iter().map(|(tid, _)| tid.0).collect();
    let longest = std::cell::Cell::new(Duration::ZERO);
    let report = |completed, checks, moved_frames| TransitionReport {
        old_threads: old_threads.clone(),
        completed,
        duration_ms: started.elapsed().as_millis() as u64,
        checks,
        longest_check_us: longest.get().as_micros() as u64,
        moved_frames,
    };
    if old.is_empty() {
        return Ok(report("returned", 0, Vec::new()));
    }
    tracing::info!(pid = pid.0, threads = ?old_threads, "per-thread transition: these threads run the old code until they leave it");
    crate::failpoint::hit("transition:switched");
    // Old code is the replaced functions and the dispatchers (whose old path runs the old
    // entry instructions).
    let mut busy = d.busy.to_vec();
    busy.push(BusyRange {
        range: t.dispatchers.0 .0..t.dispatchers.0 .0 + t.dispatchers.1.len() as u64,
        name: "a transition dispatcher".into(),
    });
    let in_transition = |e: crate::error::Error| ApplyError::process(e, Outcome::InTransition);
    // An old-state thread that calls a replaced function in a loop is almost never found
    // outside it: catch it as it returns from its outermost old frame (crate::retstub), so
    // the next check finds it parked in the stub with no old frame, and releases it new-state.
    let mut arms = Arms::new(d.stubs);
    let mut checks = 0;
    let mut pause = Duration::from_millis(2);
    let outcome = loop {
        if arms.armed.is_empty() {
            std::thread::sleep(pause);
        } else if let Ok(mem) = ProcessMemory::open(pid) {
            arms.wait_arrivals(&mem, Instant::now() + pause);
        }
        pause = (pause * 2).min(Duration::from_millis(100));
        checks += 1;
        let step = check_old_threads(pid, t, d, &busy, &mut arms, started).map(|(left, took)| {
            longest.set(longest.get().max(took));
            left
        });
        match step {
            // A process that ended has no thread left on old code.
            Err(e) if gone(pid, &e) => {
                tracing::info!(pid = pid.0, "the process ended during its transition");
                return Ok(report("exited", checks, Vec::new()));
            }
            Err(e) => break Err(Ok(in_transition(e))),
            Ok(left) if left.is_empty() => break Ok(()),
            Ok(left) if started.elapsed() >= t.timeout => break Err(Err(left)),
            Ok(_) if !arms.armed.is_empty() => crate::failpoint::hit("transition:armed"),
            Ok(_) => {}
        }
    };
    // Undo or release the stubs still armed (their threads stay old-state).
    arms.release_in_stop(pid);
    let left = match outcome {
        Ok(()) => {
            tracing::info!(pid = pid.0, checks, "per-thread transition complete");
            return Ok(report("returned", checks, Vec::new()));
        }
        Err(Ok(e)) => return Err(e),
        Err(Err(left)) => left,
    };
    // Timed out: move what is left by on-stack replacement, in one switch whose writes also
    // make those threads new-state (all-or-nothing, like any switch).
    let mut why = Vec::new();
    if let Some(reason) = d.no_stubs {
        why.push(format!(
            "threads were only checked, not caught as they left the old code ({reason})"
        ));
    }
    match d.osr {
        Some(area) => match complete_by_osr(pid, t, d, area, &busy) {
            Ok(moved) => {
                tracing::info!(
                    pid = pid.0,
                    frames = moved.len(),
                    "per-thread transition completed by on-stack replacement"
                );
                return Ok(report("moved", checks, moved));
            }
            Err(e) => {
                tracing::info!(pid = pid.0, %e, "on-stack replacement could not complete the transition");
                why.push(format!(
                    "on-stack replacement could not move their frames: {}",
                    without_state(&e.to_string())
                ));
            }
        },
        None => why.push(match d.osr_off {
            Some(off) => format!("on-stack replacement is off: {off}"),
            None => "the patch has no on-stack replacement maps".to_string(),
        }),
    }
    let threads: Vec<(i32, String)> = left.into_iter().map(|(tid, f)| (tid.0, f)).collect();
    let waited = started.elapsed();
    match revert_timed(pid, patch_id, Duration::from_secs(3)) {
        Ok(_) => Err(ApplyError::Transition {
            threads,
            why,
            waited,
            revert_failed: None,
            outcome: Outcome::Reverted,
        }),
        Err(e) => Err(ApplyError::Transition {
            threads,
            why,
            waited,
            revert_failed: Some(e.to_string()),
            outcome: if e.outcome() == Outcome::Exited {
                Outcome::Exited
            } else {
                Outcome::InTransition
            },
        }),
    }
}

/// Whether the process is gone (or only a zombie is left) after an operation on it failed with
/// `e`: said by `e`, or by `/proc` within a moment (a process that is exiting fails reads of
/// its memory before it becomes a zombie).
fn gone(pid: Pid, e: &crate::error::Error) -> bool {
    if e.process_gone() {
        return true;
    }
    let dead = || crate::stop::precheck(pid).is_err_and(|e| e.process_gone());
    let until = Instant::now() + Duration::from_millis(200);
    loop {
        if dead() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One check of a transition's old-state threads, in a short stop: each one found outside old
/// code (or parked in a return stub after leaving it) becomes new-state; stubs are armed for
/// the others while there is time. Returns the threads left in old code (and the function),
/// and how long the target was stopped.
fn check_old_threads(
    pid: Pid,
    t: &Transition,
    d: &Driven,
    busy: &[BusyRange],
    arms: &mut Arms,
    started: Instant,
) -> crate::error::Result<(Vec<(Tid, String)>, Duration)> {
    // Stacks mapped since the apply are read whole.
    let maps = Maps::read(pid)?;
    let t0 = Instant::now();
    let sp = StoppedProcess::stop_parked(pid, !arms.armed.is_empty())?;
    let t0 = t0 + sp.turn_waited();
    let step = (|| -> crate::error::Result<Vec<(Tid, String)>> {
        let regs = sp.all_regs()?;
        let table = sp.mem().read_vec(t.table, PAGE as usize)?;
        let slots = crate::transition::decode(&table).unwrap_or_default();
        // The thread each active slot stands for is the one with that thread pointer (glibc
        // may have given an exited thread's to a new one); only their stacks are read.
        let owners: Vec<(usize, Option<(Tid, Registers)>)> = slots
            .iter()
            .filter(|s| s.active)
            .map(|s| {
                let owner = regs.iter().find(|(_, r)| r.fs_base == s.thread_pointer);
                (s.index, owner.copied())
            })
            .collect();
        let theirs: Vec<(Tid, Registers)> = owners.iter().filter_map(|(_, o)| *o).collect();
        let mut stacks = snapshots(sp.mem(), &maps, &theirs, STACK_CAP);
        reclaim_stubs(&sp, &regs, &mut stacks, d.stub_areas, arms);
        let mut stacks = stacks.into_iter();
        let mut clear = Vec::new();
        let mut left = Vec::new();
        let mut ret_slots = Vec::new();
        for (index, owner) in owners {
            match owner {
                None => clear.push(index),
                Some((tid, r)) => {
                    let stack = stacks.next().unwrap_or_default();
                    match d.unwind.check(r.rip, r.rsp, r.rbp, &stack, busy) {
                        Finding::Clear => clear.push(index),
                        Finding::Busy {
                            name,
                            ret_slot,
                            depth,
                            exact,
                        } => {
                            tracing::trace!(tid = tid.0, rip = %RemoteAddr(r.rip), %name, depth, exact, "still in old code");
                            left.push((tid, name));
                            ret_slots.extend(ret_slot);
                        }
                    }
                }
            }
        }
        // A coroutine parked in old code would return into it in whatever thread resumes it:
        // nobody leaves the old code while one is.
        if !clear.is_empty() {
            if let Some(sites) = d.sites.filter(|s| !s.is_empty()) {
                let still: Vec<Tid> = left.iter().map(|(tid, _)| *tid).collect();
                let stacks = snapshots(sp.mem(), &maps, &regs, STACK_CAP);
                let (frame, _) =
                    suspended_in(&sp, &regs, &stacks, d.unwind, (sites, d.busy), None, &still)?;
                if let Some(f) = frame {
                    tracing::debug!(pid = pid.0, function = %f.name, at = %RemoteAddr(f.at), returns_to = %RemoteAddr(f.returns_to), mapping = %f.mapping, "a suspended frame in old code holds the transition");
                    clear.clear();
                    left.push((Tid(0), format!("{} (a suspended frame)", f.name)));
                }
            }
        }
        for i in clear {
            sp.mem().write(
                RemoteAddr(crate::transition::active_byte(t.table.0, i)),
                &[0],
            )?;
        }
        // Parked threads go on (new-state now, or old-state if a suspended frame held them);
        // stubs not reached yet stay armed.
        arms.release_parked(sp.mem())?;
        if !left.is_empty() && started.elapsed() < t.timeout {
            let n = arms.arm(sp.mem(), None, &ret_slots)?;
            tracing::debug!(
                pid = pid.0,
                left = left.len(),
                exits = ret_slots.len(),
                armed = n,
                "old-state threads checked"
            );
        }
        Ok(left)
    })();
    let resumed = sp.resume();
    let took = t0.elapsed();
    let left = step?;
    resumed?;
    Ok((left, took))
}

/// One switch that moves every old-state thread's frames in old code to the new code
/// (on-stack replacement) and clears its table entry, or changes nothing.
fn complete_by_osr(
    pid: Pid,
    t: &Transition,
    d: &Driven,
    area: &crate::osr::Area,
    busy: &[BusyRange],
) -> Result<Vec<MovedFrame>, ApplyError> {
    let mem = ProcessMemory::open(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    // Threads started since the apply have stacks the apply's map does not know.
    let maps = Maps::read(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let table = mem
        .read_vec(t.table, PAGE as usize)
        .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let writes: Vec<Write> = crate::transition::decode(&table)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.active)
        .map(|s| Write {
            addr: crate::transition::active_byte(t.table.0, s.index),
            new: vec![0],
            old: vec![1],
        })
        .collect();
    let at = (d.code_addr, d.block_addr);
    let commit = write_commit(&mem, pid, at, &writes, d.state_addr, State::Live)
        .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let (done, _) = switch(
        pid,
        &Switch {
            maps: &maps,
            unwind: d.unwind,
            busy,
            sites: d.sites,
            stubs: None,
            retire_at: None,
            no_stubs: "not used to complete a transition",
            commit: &commit,
            writes: &writes,
            osr: Some(area),
            refusals: &[],
            osr_off: None,
            code_addr: d.code_addr,
            block_addr: d.block_addr,
            state_addr: d.state_addr,
            want: State::Live,
            timeout: Duration::from_secs(1),
            failpoint: "transition:stopped",
            failpoint_armed: "transition:armed",
            transition: None,
            stub_areas: d.stub_areas,
        },
        |_| {},
    );
    done.map(|s| s.moved)
}

impl Transition {
    /// The function whose overwritten entry bytes the thread is in or holds an address of.
    fn inside_entry(&self, rip: u64, stack: &StackSnapshot) -> Option<String> {
        let hit = |v: u64| self.entries.iter().find(|(r, _)| r.contains(&v));
        if let Some((_, name)) = hit(rip) {
            return Some(format!("the entry of {name}"));
        }
        stack
            .bytes
            .chunks_exact(8)
            .find_map(|w| hit(u64::from_le_bytes(w.try_into().expect("8 bytes"))))
            .map(|(_, name)| format!("an address inside the entry of {name}"))
    }

    /// Writes the table of old-state threads (in the stop). Every thread must have a thread
    /// pointer the dispatchers can read: `%fs:0` holding its own address (the x86-64 TLS ABI).
    fn write_table(
        &self,
        sp: &StoppedProcess,
        regs: &[(Tid, Registers)],
        old: &[(Tid, u64, String)],
    ) -> Result<(), String> {
        if let Some((tid, _)) = regs.iter().find(|(_, r)| r.fs_base == 0) {
            return Err(format!(
                "thread {} has no thread pointer (fs base 0): a per-thread transition cannot \
                 tell its calls apart",
                tid.0
            ));
        }
        for (tid, fs, _) in old {
            if sp.mem().read_u64(RemoteAddr(*fs)).ok() != Some(*fs) {
                return Err(format!(
                    "thread {}'s thread pointer {fs:#x} does not point at itself (not the x86-64 \
                     TLS layout): a per-thread transition cannot tell its calls apart",
                    tid.0
                ));
            }
        }
        let threads: Vec<(u64, i32)> = old.iter().map(|(tid, fs, _)| (*fs, tid.0)).collect();
        let mut table = crate::transition::table(&threads)?;
        crate::transition::set_driver(&mut table, std::process::id());
        sp.mem()
            .write(self.table, &table)
            .map_err(|e| format!("writing the transition table: {e}"))
    }
}

/// Generates the commit routine of `writes` (ending in header state `want` at `state`) for the
/// region's commit pages `(code, block)` and writes it there.
fn write_commit(
    mem: &ProcessMemory,
    pid: Pid,
    (code, block): (RemoteAddr, RemoteAddr),
    writes: &[Write],
    state: RemoteAddr,
    want: State,
) -> crate::error::Result<Commit> {
    let commit = Commit::generate(
        code.0,
        block.0,
        writes,
        state.0,
        Header::state_bytes(want),
        marker_signal(pid),
    );
    mem.write(code, &commit.code)?;
    mem.write(block, &commit.block)?;
    Ok(commit)
}

/// Whether the switch runs the commit routine in the target (the design before the direct
/// commit, kept for comparison: `SUTURE_COMMIT=routine`, and for the failpoints inside the
/// routine) rather than writing the jumps from suture with the routine as a safety net.
fn commit_in_target() -> bool {
    std::env::var_os("SUTURE_COMMIT").is_some_and(|v| v == "routine")
        || ["commit:started", "commit:running", "commit:midway"]
            .iter()
            .any(|p| crate::failpoint::armed(p))
}

/// The marker signal for a commit routine in `pid`: the first of [`MARKER_CANDIDATES`] the
/// process does not catch (0 when it catches them all). Read before the stop; a handler
/// installed in between only matters if suture also dies while the routine runs.
pub(crate) fn marker_signal(pid: Pid) -> i32 {
    let status = crate::maps::read_proc_string(crate::maps::live_proc_dir(pid).join("status"));
    let caught = status.ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    match caught {
        Some(caught) => MARKER_CANDIDATES
            .into_iter()
            .find(|&sig| caught & (1 << (sig - 1)) == 0)
            .unwrap_or(0),
        None => 0,
    }
}

/// The process's id in its own (innermost) PID namespace, from `NSpid:` of its status.
pub(crate) fn namespace_pid(pid: Pid) -> Option<i32> {
    let status =
        crate::maps::read_proc_string(crate::maps::live_proc_dir(pid).join("status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Chooses the thread that runs the commit routine and how suture learns it finished: the
/// first thread that does not block the marker signal runs at full speed to the marker's
/// signal-delivery-stop; without one, the first thread is followed system call by system call.
fn routine_thread(
    sp: &StoppedProcess,
    regs: &[(Tid, Registers)],
    commit: &Commit,
) -> (Tid, Registers, RoutineEnd) {
    let sig = commit.marker_signal;
    let kinds = sp.stop_kinds().unwrap_or_default();
    let hijackable = |tid: Tid| {
        !kinds
            .iter()
            .any(|(t, k)| *t == tid && matches!(k, crate::stop::StopKind::Event(_)))
    };
    if sig != 0 && !crate::failpoint::armed("commit:midway") {
        for (tid, r) in regs {
            if !hijackable(*tid) {
                continue;
            }
            if matches!(sp.signal_mask(*tid), Ok(mask) if mask & (1 << (sig - 1)) == 0) {
                let end = RoutineEnd::Signal {
                    signo: sig,
                    rip: commit.marker_rip,
                };
                return (*tid, *r, end);
            }
        }
    }
    let (tid, r) = regs
        .iter()
        .find(|(t, _)| hijackable(*t))
        .copied()
        .unwrap_or(regs[0]);
    let end = RoutineEnd::Syscall {
        nr: MARKER_SYSCALL,
        rip: commit.marker_rip,
    };
    (tid, r, end)
}

/// Patches live in a process, found by the headers at the start of their regions.
pub fn status(pid: Pid) -> Result<Vec<LivePatch>, crate::error::Error> {
    let maps = Maps::read(pid)?;
    let mem = ProcessMemory::open(pid)?;
    Ok(status_in(pid, &maps, &mem))
}

/// [`status`] with the process's mappings and memory already at hand.
fn status_in(pid: Pid, maps: &Maps, mem: &ProcessMemory) -> Vec<LivePatch> {
    let mut out = Vec::new();
    for m in maps.iter() {
        if !matches!(m.name, MapName::Anonymous) || !m.perms.read || m.perms.write || m.perms.exec {
            continue;
        }
        let mut magic = [0u8; 8];
        if mem.read(m.start, &mut magic).is_err() || &magic != MAGIC {
            continue;
        }
        // The header's own length (a header may span several pages).
        let mut len = [0u8; 4];
        if mem.read(m.start.offset(8), &mut len).is_err() {
            continue;
        }
        let len = (u32::from_le_bytes(len) as usize).clamp(64, crate::header::MAX_LEN);
        let Ok(bytes) = mem.read_vec(m.start, len) else {
            continue;
        };
        match Header::decode(&bytes) {
            Ok(header) => {
                let (old_threads, transition_driver) = old_threads(mem, m.start.0, &header);
                out.push(LivePatch {
                    pid: pid.0,
                    base: m.start.0,
                    old_threads,
                    transition_driver,
                    header,
                })
            }
            Err(HeaderError::NoMagic) => {}
            Err(e) => tracing::warn!(pid = pid.0, base = m.start.0, %e, "unreadable suture header"),
        }
    }
    out
}

/// The threads a live patch's transition still runs on the old code (read from its table), and
/// the suture process driving it if one still runs.
fn old_threads(
    mem: &ProcessMemory,
    base: u64,
    header: &Header,
) -> (Vec<crate::transition::Slot>, Option<i32>) {
    let Some((page, _)) = header.transition.filter(|_| header.state == State::Live) else {
        return (Vec::new(), None);
    };
    let Ok(table) = mem.read_vec(RemoteAddr(base + u64::from(page) * PAGE), PAGE as usize) else {
        return (Vec::new(), None);
    };
    let old: Vec<crate::transition::Slot> = crate::transition::decode(&table)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.active)
        .collect();
    // (A process id can be reused; a dead driver is what matters, and a reused id only
    // hides that until the other process ends.)
    let driver = crate::transition::driver(&table)
        .filter(|d| !old.is_empty() && std::path::Path::new(&format!("/proc/{d}")).exists());
    (old, driver.map(|d| d as i32))
}

/// A retired (reverted) region of patch `patch_id`, of `size` bytes, where the patch links to
/// exactly the code and read-only data the region holds: it can be switched again as it is.
fn reusable<'p>(
    mem: &ProcessMemory,
    plan: &Plan<'p>,
    resolver: &dyn Resolver,
    existing: &[LivePatch],
    patch_id: &str,
    size: u64,
) -> Result<Option<(RemoteAddr, crate::link::Linked)>, ApplyError> {
    let mut retired: Vec<&LivePatch> = existing
        .iter()
        .filter(|p| {
            p.header.state == State::Reverted
                && p.header.patch_id == patch_id
                && p.header.region_size == size
        })
        .collect();
    retired.sort_by_key(|p| std::cmp::Reverse((p.header.applied_at, p.base)));
    for p in retired {
        let base = RemoteAddr(p.base);
        let linked = plan.link(base, resolver)?;
        let same = linked
            .segments
            .iter()
            .filter(|(seg, _, _)| *seg != Segment::Data)
            .all(|(_, at, bytes)| mem.read_vec(*at, bytes.len()).is_ok_and(|b| b == *bytes));
        if same {
            return Ok(Some((base, linked)));
        }
    }
    Ok(None)
}

/// The most recent live patch with this id.
fn latest_live(patches: &[LivePatch], patch_id: &str, pid: Pid) -> Result<LivePatch, ApplyError> {
    patches
        .iter()
        .filter(|p| p.header.patch_id == patch_id && p.header.state == State::Live)
        .max_by_key(|p| (p.header.applied_at, p.base))
        .cloned()
        .ok_or_else(|| {
            ApplyError::Target(
                format!("no live patch {patch_id:?} in process {}", pid.0),
                Outcome::Untouched,
            )
        })
}

/// Refuses when a later patch was applied over one of `p`'s entries: stacked patches come off
/// in reverse order.
fn check_on_top(
    mem: &ProcessMemory,
    patches: &[LivePatch],
    p: &LivePatch,
) -> Result<(), ApplyError> {
    let patch_id = &p.header.patch_id;
    for r in &p.header.redirects {
        let current = mem
            .read_vec(RemoteAddr(r.from), 5)
            .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
        if jump(r.from, r.to).ok().as_deref() != Some(&current[..]) {
            let later = patches.iter().find(|q| {
                q.base != p.base
                    && q.header.state == State::Live
                    && q.header.redirects.iter().any(|x| x.from == r.from)
            });
            let why = match later {
                Some(q) => format!(
                    "patch {:?} was applied on top of {patch_id:?}; revert it first",
                    q.header.patch_id
                ),
                None => format!(
                    "the entry at {:#x} no longer holds the jump of {patch_id:?}",
                    r.from
                ),
            };
            return Err(ApplyError::Target(why, Outcome::Untouched));
        }
    }
    Ok(())
}

/// The unwind rules of everything a thread of the target can be running: its mapped ELF
/// files, the vDSO and every live patch.
fn unwind_info(
    loaded: &Loaded,
    mem: &ProcessMemory,
    maps: &Maps,
    patches: &[LivePatch],
) -> UnwindInfo {
    let mut unwind = UnwindInfo::default();
    for (name, bytes, bias, code) in &loaded.files {
        unwind.add_elf(name, bytes.clone(), *bias, code.clone());
    }
    if !unwind.add_vdso(mem, maps) {
        tracing::debug!(
            pid = mem.pid().0,
            "no vDSO unwind rules: the scan covers it"
        );
    }
    add_live_patches(&mut unwind, mem, maps, patches);
    unwind
}

/// The unwind rules apply and revert use for the process `pid` (its files, vDSO and live
/// patches), read while it runs: for tools and tests that check stacks themselves.
pub fn process_unwind_info(pid: Pid) -> Result<UnwindInfo, ApplyError> {
    let maps = Maps::read(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let mem = ProcessMemory::open(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let loaded = load_objects(pid, &maps, None, None)?;
    let patches = status(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    Ok(unwind_info(&loaded, &mem, &maps, &patches))
}

/// Adds the unwind rules (`.eh_frame`, located by the header) of every live patch, so a thread
/// inside patch code is unwound exactly.
fn add_live_patches(
    unwind: &mut UnwindInfo,
    mem: &ProcessMemory,
    maps: &Maps,
    patches: &[LivePatch],
) {
    // Trampolines of every region (a frame moved by a revert may still wait to return into
    // one of a retired region).
    for p in patches {
        if let Some(area) = osr_area(mem, p) {
            unwind.add_trampolines(&area);
        }
    }
    // Live patches' code, and retired regions with trampolines (a frame waiting to return
    // into one still has the shape of the region's code).
    for p in patches
        .iter()
        .filter(|p| p.header.state == State::Live || p.header.osr.is_some())
    {
        let Some((off, len)) = p.header.eh_frame else {
            continue;
        };
        let at = p.base + u64::from(off);
        let Ok(bytes) = mem.read_vec(RemoteAddr(at), len as usize) else {
            continue;
        };
        for code in region_code(maps, p) {
            let name = format!("patch {}", p.header.patch_id);
            unwind.add_patch(&name, code.range, at, bytes.clone());
        }
    }
}

/// The on-stack replacement table of a region, read back from the target.
fn osr_area(mem: &ProcessMemory, p: &LivePatch) -> Option<crate::osr::Area> {
    let (page, n) = p.header.osr?;
    let at = p.base + u64::from(page) * PAGE;
    let len = u64::from(n) * PAGE;
    let bytes = mem.read_vec(RemoteAddr(at), len as usize).ok()?;
    crate::osr::Area::decode(&bytes, at..at + len)
}

/// The code pages of a patch region: busy while any thread runs them.
/// The return stubs' page is not patch code: a thread parked there has left it.
fn region_code(maps: &Maps, p: &LivePatch) -> Vec<BusyRange> {
    let stubs = p
        .header
        .stubs
        .map(|page| {
            let at = p.base + u64::from(page) * PAGE;
            at..at + PAGE
        })
        .unwrap_or(0..0);
    let mut out = Vec::new();
    for m in maps
        .iter()
        .filter(|m| m.start.0 >= p.base && m.end.0 <= p.base + p.header.region_size && m.perms.exec)
    {
        // The mapping less the stub page: before it and after it (empty pieces dropped).
        let (start, end) = (m.start.0, m.end.0);
        let pieces = [
            start..end.min(start.max(stubs.start)),
            start.max(end.min(stubs.end))..end,
        ];
        for range in pieces.into_iter().filter(|r| !r.is_empty()) {
            out.push(BusyRange {
                range,
                name: format!("patch {} code", p.header.patch_id),
            });
        }
    }
    out
}

/// A revert done: the patch it reverted and how long its switch stopped the target.
#[derive(Clone, Debug)]
pub struct Reverted {
    pub patch: LivePatch,
    /// Stops of the switch (1 unless busy code made it retry).
    pub attempts: u32,
    /// The last (successful) stop of the switch, as suture saw it.
    pub stop_window_us: u64,
    pub stop_phases: StopPhases,
    /// Frames moved from the patch back to the original code (on-stack replacement).
    pub moved_frames: Vec<MovedFrame>,
}

/// Reverts the live patch `patch_id` (the most recent one with that id): the same switch in
/// reverse, checking that no thread runs patch code, then releases its memory.
pub fn revert(pid: Pid, patch_id: &str, timeout: Duration) -> Result<LivePatch, ApplyError> {
    revert_timed(pid, patch_id, timeout).map(|r| r.patch)
}

/// [`revert`], also saying how long the switch stopped the target.
pub fn revert_timed(pid: Pid, patch_id: &str, timeout: Duration) -> Result<Reverted, ApplyError> {
    revert_with(pid, patch_id, timeout, true)
}

/// [`revert_timed`]; `scan_suspended` false skips the suspended-frame scan of the patch's code
/// (as `apply --no-suspended-scan` does: only for a target known to run no coroutines, since
/// a coroutine suspended in patch code would finish that call in it after the revert).
pub fn revert_with(
    pid: Pid,
    patch_id: &str,
    timeout: Duration,
    scan_suspended: bool,
) -> Result<Reverted, ApplyError> {
    let maps = Maps::read(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let mem = ProcessMemory::open(pid).map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let patches = status_in(pid, &maps, &mem);
    let p = latest_live(&patches, patch_id, pid)?;
    check_on_top(&mem, &patches, &p)?;
    // The entries as they are now (one read for all of them).
    let mut current: Vec<(RemoteAddr, Vec<u8>)> = p
        .header
        .redirects
        .iter()
        .map(|r| (RemoteAddr(r.from), vec![0; r.saved.len()]))
        .collect();
    let filled = mem.read_many(&mut current);
    for ((addr, buf), ok) in current.iter_mut().zip(filled) {
        if !ok {
            // Read again for the error (it failed once already, in `read_many`).
            mem.read(*addr, buf)
                .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
        }
    }
    let writes: Vec<Write> = p
        .header
        .redirects
        .iter()
        .zip(current)
        .map(|(r, (_, old))| Write {
            addr: r.from,
            new: r.saved.clone(),
            old,
        })
        .collect();
    // The routine goes in the region's own commit pages, as the header records them (older
    // headers: the last executable mapping of the region, then the next mapping).
    let (code_page, block_addr) = match p.header.commit_pages {
        Some((code, block)) => (
            p.base + u64::from(code) * PAGE,
            p.base + u64::from(block) * PAGE,
        ),
        None => {
            let region = maps
                .find(RemoteAddr(p.base))
                .map(|m| m.start.0..m.end.0)
                .unwrap_or(p.base..p.base + p.header.region_size);
            let end = p.base + p.header.region_size;
            let code_page = maps
                .iter()
                .filter(|m| m.start.0 >= region.start && m.end.0 <= end && m.perms.exec)
                .map(|m| m.start.0)
                .max()
                .ok_or_else(|| {
                    ApplyError::Target(
                        "the patch region has no code pages".into(),
                        Outcome::Untouched,
                    )
                })?;
            let block_addr = maps
                .iter()
                .filter(|m| m.start.0 > code_page && m.start.0 < end)
                .map(|m| m.start.0)
                .min()
                .unwrap_or(code_page + PAGE);
            (code_page, block_addr)
        }
    };
    let at = (RemoteAddr(code_page), RemoteAddr(block_addr));
    let state = RemoteAddr(p.base + Header::STATE_OFFSET);
    let commit = write_commit(&mem, pid, at, &writes, state, State::Reverted)
        .map_err(|e| ApplyError::process(e, Outcome::Untouched))?;
    let busy = region_code(&maps, &p);
    // A revert always looks for suspended frames in the patch: "reverted" while a coroutine
    // is parked in patch code would be untrue. The commit routine's own pages are left out of
    // that search (not of the threads' check): the routine makes no calls, so no return
    // address can point into it, but bytes of its addresses that look like a call made the
    // stop read all writable memory on some reverts and not others, by where things lay.
    let routine = p
        .header
        .commit_pages
        .map(|_| code_page..code_page + (commit.code.len() as u64).div_ceil(PAGE) * PAGE);
    // Unwind exactly through the program's files and every live patch's code (the scan of
    // every stack word remains the fallback when an unwind is incomplete).
    let loaded = load_objects(pid, &maps, None, None)?;
    let sites = ReturnSites::read_except(&mem, &busy, routine.as_slice())
        .with_thread_library(crate::nptl::ThreadLibrary::find(&loaded.mapped, &mem));
    let unwind = unwind_info(&loaded, &mem, &maps, &patches);
    let base = RemoteAddr(p.base);
    // The region's return stubs (regions from before they existed have none).
    let shadow = crate::maps::read_proc_string(crate::maps::live_proc_dir(pid).join("status"))
        .map_or(true, |st| crate::retstub::shadow_stack_enabled(&st));
    let no_stubs = if p.header.stubs.is_none() {
        Some("the patch region has none (made by an older suture)")
    } else {
        no_stubs_reason(
            true,
            !crate::retstub::under_seccomp_filter(pid),
            shadow,
            crate::retstub::may_unwind_through(&loaded.mapped),
        )
    };
    let stubs = p
        .header
        .stubs
        .filter(|_| no_stubs.is_none())
        .map(|page| StubArea::at(p.base + u64::from(page) * PAGE));
    let osr = osr_area(&mem, &p).filter(|a| !a.is_empty());
    let osr_off = osr_off_reason(shadow, crate::retstub::may_unwind_through(&loaded.mapped))
        .filter(|_| osr.is_some());
    let osr = osr.filter(|_| osr_off.is_none());
    let (done, _) = switch(
        pid,
        &Switch {
            maps: &maps,
            unwind: &unwind,
            busy: &busy,
            sites: scan_suspended.then_some(&sites),
            stubs,
            retire_at: None,
            no_stubs: no_stubs.unwrap_or(""),
            commit: &commit,
            writes: &writes,
            osr: osr.as_ref(),
            refusals: &[],
            osr_off,
            code_addr: RemoteAddr(code_page),
            block_addr: RemoteAddr(block_addr),
            state_addr: base.offset(Header::STATE_OFFSET),
            want: State::Reverted,
            timeout,
            failpoint: "revert:stopped",
            failpoint_armed: "revert:armed",
            transition: None,
            stub_areas: &crate::retstub::with_armed_slots(&mem, &stub_areas(&patches)),
        },
        // The region stays mapped, retired: the program may still point into it (see the
        // module comment); the next apply of this patch reuses it.
        |_| {},
    );
    let done = done?;
    tracing::info!(pid = pid.0, patch = patch_id, "patch reverted");
    Ok(Reverted {
        patch: p,
        attempts: done.attempts,
        stop_window_us: done.window.as_micros() as u64,
        stop_phases: done.phases,
        moved_frames: done.moved,
    })
}
