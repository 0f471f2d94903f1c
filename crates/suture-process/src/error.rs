//! Errors of the process layer (maps, memory, stopping, remote system calls).
//!
//! Every message says what became of the target, so an operator reading one line knows whether
//! the process is still running its original code: "target untouched" (suture never attached),
//! "target resumed" (suture attached, changed nothing and detached), "target still stopped"
//! (the error happened while the caller holds a [`StoppedProcess`](crate::stop::StoppedProcess);
//! dropping it resumes the target) or "target exited".

use crate::ids::{Pid, RemoteAddr, Tid};
use nix::errno::Errno;
use std::fmt;
use std::path::PathBuf;

/// What became of the target when an error was returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// suture never attached.
    Untouched,
    /// suture attached, restored everything it changed and detached.
    Resumed,
    /// The caller still holds the target stopped (registers as they were before the failed step).
    Stopped,
    /// The target no longer exists.
    Exited,
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetState::Untouched => "target untouched",
            TargetState::Resumed => "target resumed",
            TargetState::Stopped => "target still stopped",
            TargetState::Exited => "target exited",
        })
    }
}

/// An error of the process layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- Refusals before attaching (the target is untouched).
    #[error("Process {pid} does not exist; target untouched")]
    NoSuchProcess { pid: Pid },
    #[error("Process {pid} is a zombie; target untouched")]
    Zombie { pid: Pid },
    #[error("Process {pid} is a kernel thread; target untouched")]
    KernelThread { pid: Pid },
    #[error("{pid} is a thread of process {tgid}, not a process; target untouched")]
    NotAProcess { pid: Pid, tgid: Pid },
    #[error("Process {pid} is suture itself; target untouched")]
    SelfTarget { pid: Pid },
    #[error("Process {pid} is already traced by process {tracer}; target untouched")]
    AlreadyTraced { pid: Pid, tracer: Pid },
    #[error("No permission to trace process {pid}: {reason}; {state}")]
    PermissionDenied {
        pid: Pid,
        reason: String,
        state: TargetState,
    },
    #[error("Process {pid} is not a 64-bit x86-64 program ({what}); target untouched")]
    Not64Bit { pid: Pid, what: String },

    // ---- Failures while attaching (whatever was attached has been detached again).
    #[error("Thread {tid} of process {pid} runs 32-bit code (cs {cs:#x}); target resumed")]
    Thread32Bit { pid: Pid, tid: Tid, cs: u64 },
    #[error("Thread {tid} of process {pid} did not stop within {waited_ms} ms; target resumed")]
    StopTimeout { pid: Pid, tid: Tid, waited_ms: u64 },
    #[error("Process {pid} kept creating threads through {rounds} scans; target resumed")]
    ThreadsKeepAppearing { pid: Pid, rounds: usize },
    #[error("Process {pid} exited while suture was attaching; target exited")]
    ExitedWhileAttaching { pid: Pid },
    #[error("Process {pid} called execve while suture was attaching; target resumed")]
    ExecedWhileAttaching { pid: Pid },

    // ---- Generic system-call failures.
    #[error("ptrace {op} on thread {tid} of process {pid} failed: {errno}; {state}")]
    Ptrace {
        pid: Pid,
        tid: Tid,
        op: &'static str,
        errno: Errno,
        state: TargetState,
    },
    #[error("Cannot read {path}: {source}; {state}")]
    Proc {
        path: PathBuf,
        source: std::io::Error,
        state: TargetState,
    },
    #[error("Cannot detach from process {pid}: {detail}; the target may stay stopped")]
    Detach { pid: Pid, detail: String },

    // ---- /proc/PID/maps.
    #[error("Line {line} of the memory map of {source_name} is malformed: {text:?}")]
    MapsSyntax {
        source_name: String,
        line: usize,
        text: String,
    },

    // ---- Remote memory.
    #[error("Cannot read {len} bytes at {addr} in process {pid}: the bytes at {failed_at} are unreadable ({source})")]
    ReadMemory {
        pid: Pid,
        addr: RemoteAddr,
        len: usize,
        failed_at: RemoteAddr,
        source: std::io::Error,
    },
    #[error("Cannot write {len} bytes at {addr} in process {pid}: the bytes at {failed_at} were not written ({source})")]
    WriteMemory {
        pid: Pid,
        addr: RemoteAddr,
        len: usize,
        failed_at: RemoteAddr,
        source: std::io::Error,
    },

    // ---- Remote system calls (the target is still stopped, registers restored).
    #[error(
        "No syscall instruction found in an executable mapping of process {pid}; target untouched"
    )]
    NoSyscallSite { pid: Pid },
    #[error("The bytes at {addr} in process {pid} are no longer a syscall instruction; target still stopped")]
    SyscallSiteChanged { pid: Pid, addr: RemoteAddr },
    #[error("Process {pid} runs under a seccomp {mode}, which could kill it for a remote system call; target still stopped")]
    Seccomp { pid: Pid, mode: &'static str },
    #[error("Process {pid} runs under a seccomp filter that forbids what suture must do: {detail}; target still stopped")]
    SeccompForbids { pid: Pid, detail: String },
    #[error("Cannot read the seccomp filters of thread {tid} of process {pid} (PTRACE_SECCOMP_GET_FILTER: {errno}; it needs CAP_SYS_ADMIN, and suture must not run under seccomp itself); target still stopped")]
    SeccompUnreadable { pid: Pid, tid: Tid, errno: Errno },
    #[error("No thread of process {pid} is stopped where it can run a system call; target still stopped")]
    NoUsableThread { pid: Pid },
    #[error("Thread {tid} is not a stopped thread of process {pid}")]
    UnknownThread { pid: Pid, tid: Tid },
    #[error("Thread {tid} of process {pid} is stopped inside a system call; its registers cannot be changed")]
    ThreadInSyscall { pid: Pid, tid: Tid },
    #[error("Remote {name} in process {pid} failed: {errno}; target still stopped")]
    RemoteSyscall {
        pid: Pid,
        tid: Tid,
        name: &'static str,
        errno: Errno,
    },
    #[error(
        "Remote {name} in process {pid} returned {got} instead of {wanted}; target still stopped"
    )]
    RemoteMmapMisplaced {
        pid: Pid,
        name: &'static str,
        wanted: RemoteAddr,
        got: RemoteAddr,
    },
    #[error("Remote system call on thread {tid} of process {pid} went wrong: {detail}; {state}")]
    RemoteStep {
        pid: Pid,
        tid: Tid,
        detail: String,
        state: TargetState,
    },
}

impl Error {
    /// Whether the target died (the process no longer runs), whatever step noticed it.
    pub fn target_exited(&self) -> bool {
        match self {
            Error::ExitedWhileAttaching { .. } => true,
            Error::Ptrace { state, .. }
            | Error::Proc { state, .. }
            | Error::RemoteStep { state, .. } => *state == TargetState::Exited,
            _ => false,
        }
    }

    /// Whether the process is gone or only a zombie is left: the target died, or it was found
    /// so before anything was done to it.
    pub fn process_gone(&self) -> bool {
        self.target_exited() || matches!(self, Error::NoSuchProcess { .. } | Error::Zombie { .. })
    }
}

/// `Result` of the process layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
