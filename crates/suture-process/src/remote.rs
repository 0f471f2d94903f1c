//! System calls run inside a stopped target by borrowing one of its threads.
//!
//! The borrowed thread gets the system call's number and arguments in its registers and its
//! `rip` on an existing `syscall` instruction (`0f 05`) of the target (in the vDSO, else libc
//! or any executable mapping; any two such bytes do, instruction boundaries do not matter).
//! suture single-steps that one instruction, reads `rax` and puts every register back. `orig_rax`
//! is set to -1 so that a thread stopped inside an interrupted system call does not restart it
//! on our behalf; restoring the registers afterwards restores the pending restart too.
//!
//! Find the [`SyscallSite`] before stopping the target (it reads the target's memory), then
//! [`StoppedProcess::remote`] picks a thread and checks the site is still intact.
//!
//! A signal that the borrowed thread dequeues instead of executing the instruction is held for
//! re-injection at resume and the step retried. Faults caused by the instruction itself are
//! discarded and reported. After the step the thread is moved from the step's `SIGTRAP`
//! signal-delivery-stop back into an interrupt stop (`park`): the kernel delivers a stopped
//! thread's signal when its tracer dies, so a suture killed after a remote system call would
//! otherwise kill the target with that `SIGTRAP`.

use crate::error::{Error, Result, TargetState};
use crate::ids::{Pid, RemoteAddr, Tid};
use crate::maps::{MapName, Maps};
use crate::mem::ProcessMemory;
use crate::stop::{HeldSignal, SeccompMode, StopKind, StoppedProcess, Tracer, PTRACE_EVENT_STOP};
use crate::sys::{self, WaitStatus};
use nix::errno::Errno;
use nix::sys::ptrace;
use std::ops::BitOr;

/// x86-64 system call numbers used here.
pub mod nr {
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
}

const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];
const MAP_PRIVATE: u64 = 0x02;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
/// How often one remote system call may be pre-empted by signal or group stops before giving up.
const MAX_STEP_ATTEMPTS: usize = 64;

/// Memory protection bits (`PROT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Prot(pub u32);

impl Prot {
    pub const NONE: Prot = Prot(0);
    pub const READ: Prot = Prot(1);
    pub const WRITE: Prot = Prot(2);
    pub const EXEC: Prot = Prot(4);
    pub const RW: Prot = Prot(3);
    pub const RX: Prot = Prot(5);

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}

/// The address of a `syscall` instruction in an executable mapping of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallSite {
    pid: Pid,
    addr: RemoteAddr,
}

impl SyscallSite {
    /// Search the running (or stopped) process `pid`.
    pub fn find(pid: Pid) -> Result<SyscallSite> {
        let maps = Maps::read(pid)?;
        let mem = ProcessMemory::open(pid)?;
        SyscallSite::find_in(&maps, &mem)
    }

    /// Search the executable mappings of `maps`: the vDSO first, then libc, then any other.
    pub fn find_in(maps: &Maps, mem: &ProcessMemory) -> Result<SyscallSite> {
        let pid = mem.pid();
        let is_libc = |n: &MapName| match n {
            MapName::Path(p) => p
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("libc.so") || f.starts_with("libc-")),
            _ => false,
        };
        let exec: Vec<_> = maps
            .iter()
            .filter(|m| m.perms.exec && m.end.0 <= crate::maps::USER_TOP)
            .collect();
        let order = exec
            .iter()
            .filter(|m| m.is_pseudo("vdso"))
            .chain(exec.iter().filter(|m| is_libc(&m.name)))
            .chain(
                exec.iter()
                    .filter(|m| !m.is_pseudo("vdso") && !is_libc(&m.name)),
            );
        for m in order {
            let Ok(len) = usize::try_from(m.len()) else {
                continue;
            };
            let Ok(bytes) = mem.read_vec(m.start, len) else {
                continue; // e.g. [vvar]-like or execute-only pages
            };
            if let Some(i) = bytes.windows(2).position(|w| w == SYSCALL_INSN) {
                let addr = m.start.offset(i as u64);
                tracing::debug!(pid = pid.0, addr = %addr, mapping = ?m.name, "syscall site");
                return Ok(SyscallSite { pid, addr });
            }
        }
        Err(Error::NoSyscallSite { pid })
    }

    pub fn addr(&self) -> RemoteAddr {
        self.addr
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }
}

impl StoppedProcess {
    /// Borrow a thread for remote system calls through `site`. Refuses processes under a seccomp
    /// filter or strict mode (a filter may kill the process for an unexpected `mmap`); see
    /// [`remote_ignoring_seccomp`](StoppedProcess::remote_ignoring_seccomp).
    pub fn remote(&mut self, site: &SyscallSite) -> Result<Remote<'_>> {
        match self.seccomp() {
            SeccompMode::Disabled => self.remote_ignoring_seccomp(site),
            SeccompMode::Strict => Err(Error::Seccomp {
                pid: self.pid(),
                mode: "strict mode",
            }),
            SeccompMode::Filter => Err(Error::Seccomp {
                pid: self.pid(),
                mode: "filter",
            }),
        }
    }

    /// [`remote`](StoppedProcess::remote) for a caller that knows the process's seccomp filter
    /// allows `mmap`, `mprotect` and `munmap` (with `PROT_EXEC`).
    pub fn remote_ignoring_seccomp(&mut self, site: &SyscallSite) -> Result<Remote<'_>> {
        let pid = self.pid();
        if site.pid != pid {
            return Err(Error::SyscallSiteChanged {
                pid,
                addr: site.addr,
            });
        }
        let mut bytes = [0u8; 2];
        self.mem().read(site.addr, &mut bytes)?;
        if bytes != SYSCALL_INSN {
            return Err(Error::SyscallSiteChanged {
                pid,
                addr: site.addr,
            });
        }
        let tid = self
            .call(|t| t.pick_thread())?
            .ok_or(Error::NoUsableThread { pid })?;
        tracing::debug!(pid = pid.0, tid = tid.0, site = %site.addr, "borrowing thread");
        Ok(Remote {
            sp: self,
            site: site.addr,
            tid,
        })
    }
}

/// A thread of a stopped process borrowed for system calls. Each call leaves the thread's
/// registers exactly as they were.
#[derive(Debug)]
pub struct Remote<'a> {
    sp: &'a mut StoppedProcess,
    site: RemoteAddr,
    tid: Tid,
}

impl Remote<'_> {
    /// The borrowed thread.
    pub fn tid(&self) -> Tid {
        self.tid
    }

    /// Run system call `nr` with up to six arguments; returns the raw `rax` (a value in
    /// `-4095..=-1` is `-errno`).
    pub fn syscall(&mut self, nr: u64, args: [u64; 6]) -> Result<u64> {
        let (tid, site) = (self.tid, self.site);
        self.sp
            .call(move |t| t.remote_syscall(tid, site, nr, args))?
    }

    fn checked(&mut self, name: &'static str, nr: u64, args: [u64; 6]) -> Result<u64> {
        let ret = self.syscall(nr, args)?;
        let signed = ret as i64;
        if (-4095..0).contains(&signed) {
            let errno = Errno::from_raw(-signed as i32);
            tracing::debug!(pid = self.sp.pid().0, tid = self.tid.0, name, %errno, "remote system call failed");
            return Err(Error::RemoteSyscall {
                pid: self.sp.pid(),
                tid: self.tid,
                name,
                errno,
            });
        }
        Ok(ret)
    }

    /// `mmap(addr, len, prot, flags, fd, offset)` as given.
    pub fn mmap(
        &mut self,
        addr: RemoteAddr,
        len: u64,
        prot: Prot,
        flags: u64,
        fd: i64,
        offset: u64,
    ) -> Result<RemoteAddr> {
        let args = [addr.0, len, u64::from(prot.0), flags, fd as u64, offset];
        self.checked("mmap", nr::MMAP, args).map(RemoteAddr)
    }

    /// Private anonymous memory at exactly `at` (`MAP_FIXED_NOREPLACE`: fails with `EEXIST`
    /// rather than replace anything).
    pub fn mmap_anonymous_at(
        &mut self,
        at: RemoteAddr,
        len: u64,
        prot: Prot,
    ) -> Result<RemoteAddr> {
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
        let got = self.mmap(at, len, prot, flags, -1, 0)?;
        if got != at {
            // A kernel older than 4.17 takes the unknown flag as a mere hint.
            let _ = self.munmap(got, len);
            return Err(Error::RemoteMmapMisplaced {
                pid: self.sp.pid(),
                name: "mmap",
                wanted: at,
                got,
            });
        }
        Ok(got)
    }

    /// Private anonymous memory wherever the kernel puts it (`hint` may be null).
    pub fn mmap_anonymous(&mut self, hint: RemoteAddr, len: u64, prot: Prot) -> Result<RemoteAddr> {
        self.mmap(hint, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    }

    pub fn mprotect(&mut self, addr: RemoteAddr, len: u64, prot: Prot) -> Result<()> {
        self.checked(
            "mprotect",
            nr::MPROTECT,
            [addr.0, len, u64::from(prot.0), 0, 0, 0],
        )
        .map(drop)
    }

    pub fn munmap(&mut self, addr: RemoteAddr, len: u64) -> Result<()> {
        self.checked("munmap", nr::MUNMAP, [addr.0, len, 0, 0, 0, 0])
            .map(drop)
    }
}

/// Signals that the `syscall` instruction itself can raise.
fn is_fault_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP | libc::SIGSYS
    )
}

impl Tracer {
    /// A thread that can run a system call: not stopped inside one (event stops), preferably
    /// holding no signal, preferably the leader.
    pub(crate) fn pick_thread(&self) -> Option<Tid> {
        let usable = |k: StopKind| !matches!(k, StopKind::Event(_));
        self.threads
            .iter()
            .filter(|(_, th)| usable(th.stop) && th.held.is_empty())
            .map(|(&tid, _)| tid)
            .next()
            .or_else(|| {
                self.threads
                    .iter()
                    .find(|(_, th)| usable(th.stop))
                    .map(|(&tid, _)| tid)
            })
    }

    pub(crate) fn remote_syscall(
        &mut self,
        tid: Tid,
        site: RemoteAddr,
        nr: u64,
        args: [u64; 6],
    ) -> Result<u64> {
        match self.threads.get(&tid) {
            None => return Err(Error::UnknownThread { pid: self.pid, tid }),
            Some(th) if matches!(th.stop, StopKind::Event(_)) => {
                return Err(Error::ThreadInSyscall { pid: self.pid, tid })
            }
            Some(_) => {}
        }
        let saved = self.getregs(tid)?;
        let mut regs = saved;
        regs.rax = nr;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.rip = site.0;
        regs.orig_rax = u64::MAX; // -1: no system call to restart
        self.setregs_raw(tid, regs)?;
        let result = self.step_syscall(tid, site);
        if !self.threads.contains_key(&tid) {
            return result; // the thread died; nothing to restore
        }
        let restored = self.setregs_raw(tid, saved);
        let ret = result?;
        restored?;
        crate::failpoint::hit("remote:stepped");
        tracing::trace!(
            pid = self.pid.0,
            tid = tid.0,
            nr,
            ret = ret as i64,
            "remote system call"
        );
        Ok(ret)
    }

    fn step_err(&self, tid: Tid, detail: String) -> Error {
        Error::RemoteStep {
            pid: self.pid,
            tid,
            detail,
            state: TargetState::Stopped,
        }
    }

    /// Single-step the `syscall` at `site` until it has run; returns `rax`.
    fn step_syscall(&mut self, tid: Tid, site: RemoteAddr) -> Result<u64> {
        let after = site.offset(SYSCALL_INSN.len() as u64);
        for _ in 0..MAX_STEP_ATTEMPTS {
            ptrace::step(nix::unistd::Pid::from_raw(tid.0), None)
                .map_err(|e| self.ptrace_step_err(tid, "SINGLESTEP", e))?;
            // A single `mmap`/`mprotect`/`munmap` cannot block for long: wait without timeout
            // (the registers cannot be restored while the thread runs).
            let status = sys::wait_thread(tid.0, false)
                .map_err(|e| self.ptrace_step_err(tid, "waitpid", e))?
                .ok_or_else(|| self.step_err(tid, "waitpid reported nothing".into()))?;
            match status {
                WaitStatus::SignalStop(sig) => {
                    let info = ptrace::getsiginfo(nix::unistd::Pid::from_raw(tid.0))
                        .map_err(|e| self.ptrace_step_err(tid, "GETSIGINFO", e))?;
                    let rip = RemoteAddr(self.getregs(tid)?.rip);
                    let th = self.threads.get_mut(&tid).expect("checked by the caller");
                    th.stop = StopKind::Signal(sig);
                    let from_kernel = info.si_code > 0;
                    if sig == libc::SIGTRAP && from_kernel && rip == after {
                        let rax = self.getregs(tid)?.rax;
                        self.park(tid)?;
                        return Ok(rax);
                    }
                    if from_kernel && is_fault_signal(sig) {
                        // Raised by our instruction: discard it.
                        return Err(self.step_err(
                            tid,
                            format!("the system call raised signal {sig} at {rip}"),
                        ));
                    }
                    // Someone else's signal, dequeued before the instruction ran: hold it.
                    th.held.push(HeldSignal { signo: sig, info });
                    tracing::debug!(
                        pid = self.pid.0,
                        tid = tid.0,
                        sig,
                        "signal during remote system call; held"
                    );
                    if rip != site {
                        return Err(self.step_err(
                            tid,
                            format!("signal {sig} stopped it at {rip}, not at {site}"),
                        ));
                    }
                }
                WaitStatus::EventStop { sig, event } if event == PTRACE_EVENT_STOP => {
                    // A pending interrupt or group stop came first; the instruction has not run.
                    let th = self.threads.get_mut(&tid).expect("checked by the caller");
                    th.stop = if sig == libc::SIGTRAP {
                        StopKind::Interrupt
                    } else {
                        StopKind::GroupStop(sig)
                    };
                }
                WaitStatus::EventStop { event, .. } => {
                    if let Some(th) = self.threads.get_mut(&tid) {
                        th.stop = StopKind::Event(event);
                    }
                    return Err(self.step_err(tid, format!("unexpected ptrace event {event}")));
                }
                WaitStatus::Exited(_) | WaitStatus::Killed(_) => {
                    self.threads.remove(&tid);
                    return Err(Error::RemoteStep {
                        pid: self.pid,
                        tid,
                        detail: format!("the thread ended ({status:?})"),
                        state: TargetState::Exited,
                    });
                }
            }
        }
        Err(self.step_err(
            tid,
            format!("{MAX_STEP_ATTEMPTS} attempts were pre-empted by signals or stops"),
        ))
    }

    /// Moves a thread from the single step's `SIGTRAP` signal-delivery-stop into an interrupt
    /// stop, discarding the trap. A thread left in a signal-delivery-stop gets that signal
    /// delivered when its tracer dies (the kernel keeps the stop's signal), and a `SIGTRAP`
    /// would kill the target if suture were killed before resuming it. `PTRACE_INTERRUPT`
    /// first, then `PTRACE_CONT` without a signal: the thread traps into the pending interrupt
    /// stop before it returns to user space, so it runs no instruction. Signals it dequeues
    /// first are held for re-injection.
    fn park(&mut self, tid: Tid) -> Result<()> {
        let npid = nix::unistd::Pid::from_raw(tid.0);
        ptrace::interrupt(npid).map_err(|e| self.ptrace_step_err(tid, "INTERRUPT", e))?;
        ptrace::cont(npid, None).map_err(|e| self.ptrace_step_err(tid, "CONT", e))?;
        for _ in 0..MAX_STEP_ATTEMPTS {
            let status = sys::wait_thread(tid.0, false)
                .map_err(|e| self.ptrace_step_err(tid, "waitpid", e))?
                .ok_or_else(|| self.step_err(tid, "waitpid reported nothing".into()))?;
            match status {
                WaitStatus::EventStop { sig, event } if event == PTRACE_EVENT_STOP => {
                    let th = self.threads.get_mut(&tid).expect("checked by the caller");
                    th.stop = if sig == libc::SIGTRAP {
                        StopKind::Interrupt
                    } else {
                        StopKind::GroupStop(sig)
                    };
                    return Ok(());
                }
                WaitStatus::SignalStop(sig) => {
                    let info = ptrace::getsiginfo(npid)
                        .map_err(|e| self.ptrace_step_err(tid, "GETSIGINFO", e))?;
                    let th = self.threads.get_mut(&tid).expect("checked by the caller");
                    th.stop = StopKind::Signal(sig);
                    th.held.push(HeldSignal { signo: sig, info });
                    ptrace::cont(npid, None).map_err(|e| self.ptrace_step_err(tid, "CONT", e))?;
                }
                WaitStatus::EventStop { event, .. } => {
                    if let Some(th) = self.threads.get_mut(&tid) {
                        th.stop = StopKind::Event(event);
                    }
                    return Err(self.step_err(tid, format!("unexpected ptrace event {event}")));
                }
                WaitStatus::Exited(_) | WaitStatus::Killed(_) => {
                    self.threads.remove(&tid);
                    return Err(Error::RemoteStep {
                        pid: self.pid,
                        tid,
                        detail: format!("the thread ended after its system call ({status:?})"),
                        state: TargetState::Exited,
                    });
                }
            }
        }
        Err(self.step_err(
            tid,
            "signals kept it from reaching its interrupt stop".into(),
        ))
    }

    fn ptrace_step_err(&self, tid: Tid, op: &'static str, errno: Errno) -> Error {
        Error::Ptrace {
            pid: self.pid,
            tid,
            op,
            errno,
            state: TargetState::Stopped,
        }
    }
}

/// How many stops a commit routine may pass before it is considered stuck (the slow path
/// makes `3 + writes` system calls, each giving an entry and an exit stop).
const MAX_ROUTINE_STOPS: usize = 20_000;

/// How long a routine run at full speed may take before suture stops waiting for its marker.
const ROUTINE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The largest run of unchanged bytes [`coalesce`] writes again to join two writes.
const COALESCE_GAP: u64 = 4096;

/// Joins writes (but the last one, which stays separate and last) that lie at most
/// [`COALESCE_GAP`] bytes apart into one write of the whole span: the bytes in between are
/// written back as `read` finds them now (the caller holds every thread stopped), and the
/// span's original bytes become its undo. Writes whose span cannot be read stay as they are.
pub(crate) fn coalesce(
    writes: &[(RemoteAddr, Vec<u8>, Vec<u8>)],
    read: impl Fn(RemoteAddr, usize) -> Option<Vec<u8>>,
) -> Vec<(RemoteAddr, Vec<u8>, Vec<u8>)> {
    let Some((last, rest)) = writes.split_last() else {
        return Vec::new();
    };
    let mut sorted: Vec<&(RemoteAddr, Vec<u8>, Vec<u8>)> = rest.iter().collect();
    sorted.sort_by_key(|w| w.0 .0);
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i].0 .0;
        let mut end = start + sorted[i].1.len() as u64;
        let mut j = i + 1;
        while j < sorted.len() && sorted[j].0 .0 >= end && sorted[j].0 .0 - end <= COALESCE_GAP {
            end = sorted[j].0 .0 + sorted[j].1.len() as u64;
            j += 1;
        }
        let joined = (j - i > 1)
            .then(|| read(RemoteAddr(start), (end - start) as usize))
            .flatten();
        match joined {
            Some(old) => {
                let mut new = old.clone();
                for (addr, bytes, _) in &sorted[i..j] {
                    let at = (addr.0 - start) as usize;
                    new[at..at + bytes.len()].copy_from_slice(bytes);
                }
                out.push((RemoteAddr(start), new, old));
            }
            None => out.extend(sorted[i..j].iter().map(|&w| w.clone())),
        }
        i = j;
    }
    out.push(last.clone());
    out
}

/// Makes a commit routine's block from the registers of the thread that would run it.
pub type BlockOf = Box<dyn FnOnce(&Registers) -> Vec<u8> + Send>;

/// How suture learns that a routine it started has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutineEnd {
    /// The routine sends this signal to its own thread (`tgkill`, `SI_TKILL`) just before
    /// `rip`: the thread runs freely until that signal-delivery-stop, which is discarded.
    Signal { signo: i32, rip: u64 },
    /// Follow the routine with `PTRACE_SYSCALL` until the entry of system call `nr` just
    /// before `rip`, skip that call, and stop at its exit.
    Syscall { nr: u64, rip: u64 },
}

impl StoppedProcess {
    /// Runs code the caller placed in the target on one stopped thread, the other threads
    /// staying stopped: the thread starts at `entry` and runs until `end`; then its registers
    /// become `restore`. Signals that arrive meanwhile are held for re-injection.
    ///
    /// The routine must be able to finish on its own (if suture dies, the kernel detaches the
    /// thread and it runs on): see [`crate::commit`].
    pub fn run_routine(
        &mut self,
        tid: Tid,
        entry: RemoteAddr,
        end: RoutineEnd,
        restore: Registers,
    ) -> Result<()> {
        self.run_routine_within(tid, entry, end, restore, ROUTINE_DEADLINE, "commit")
    }

    /// [`run_routine`](StoppedProcess::run_routine) waiting up to `deadline` for the marker
    /// of a [`RoutineEnd::Signal`] routine. When none comes, the thread is put back into an
    /// interrupt stop wherever it is and `Ok` is returned: the caller tells from the memory
    /// the routine writes whether it finished. `label` names its failpoints
    /// (`<label>:started`, `<label>:running`, `<label>:midway`).
    pub fn run_routine_within(
        &mut self,
        tid: Tid,
        entry: RemoteAddr,
        end: RoutineEnd,
        restore: Registers,
        deadline: std::time::Duration,
        label: &'static str,
    ) -> Result<()> {
        self.call(move |t| t.run_routine(tid, entry, end, restore, deadline, label))?
    }

    /// The switch written by suture itself while every thread is stopped, with a commit
    /// routine as the safety net: thread `tid` is first pointed at the routine at `entry`
    /// (which performs the same `writes` and restores the thread's registers from its block,
    /// see [`crate::commit`]); then suture writes each `(addr, new, old)` through
    /// `/proc/PID/mem`, one `pwrite` each, in order; then the thread gets its registers back.
    /// If suture is killed in between, the kernel detaches the thread, which runs the routine
    /// and completes the switch (rewriting bytes already written is harmless), so the target
    /// runs the old or the new code, never a mixture; no context switch into the target is
    /// needed otherwise. A failed write undoes the ones before it (in reverse order) and is
    /// returned.
    ///
    /// The thread is the first one in an interrupt stop (else the first not stopped inside
    /// `clone`); `block_of` makes the routine's block from its registers, written at
    /// `block_addr` before the thread is pointed at the routine. One round trip to the tracer
    /// thread for everything.
    pub fn commit_direct(
        &mut self,
        entry: RemoteAddr,
        block_addr: RemoteAddr,
        block_of: BlockOf,
        writes: Vec<(RemoteAddr, Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        self.call(move |t| t.commit_direct(entry, block_addr, block_of, &writes))?
    }

    /// The signal mask of a stopped thread (bit `n - 1` for signal `n`).
    pub fn signal_mask(&self, tid: Tid) -> Result<u64> {
        self.call(move |t| {
            sys::getsigmask(tid.0).map_err(|e| Error::Ptrace {
                pid: t.pid,
                tid,
                op: "GETSIGMASK",
                errno: e,
                state: TargetState::Stopped,
            })
        })?
    }
}

use crate::stop::Registers;

impl Tracer {
    fn run_routine(
        &mut self,
        tid: Tid,
        entry: RemoteAddr,
        end: RoutineEnd,
        restore: Registers,
        deadline: std::time::Duration,
        label: &'static str,
    ) -> Result<()> {
        if !self.threads.contains_key(&tid) {
            return Err(Error::UnknownThread { pid: self.pid, tid });
        }
        let mut regs = self.getregs(tid)?;
        regs.rip = entry.0;
        regs.orig_rax = u64::MAX; // not inside a system call any more
        self.setregs_raw(tid, regs)?;
        crate::failpoint::hit(&format!("{label}:started"));
        let npid = nix::unistd::Pid::from_raw(tid.0);
        let mut in_marker = false;
        for _ in 0..MAX_ROUTINE_STOPS {
            match end {
                RoutineEnd::Signal { .. } => {
                    ptrace::cont(npid, None).map_err(|e| self.ptrace_step_err(tid, "CONT", e))?
                }
                RoutineEnd::Syscall { .. } => ptrace::syscall(npid, None)
                    .map_err(|e| self.ptrace_step_err(tid, "SYSCALL", e))?,
            }
            if let RoutineEnd::Signal { .. } = end {
                crate::failpoint::hit(&format!("{label}:running"));
            }
            let status = match end {
                RoutineEnd::Signal { .. } => match self.wait_routine(tid, deadline)? {
                    Some(status) => status,
                    None => {
                        // No marker within the deadline (its tgkill failed?): the routine has
                        // restored the thread itself and it runs on. Stop it again.
                        self.reinterrupt(tid)?;
                        return Ok(());
                    }
                },
                RoutineEnd::Syscall { .. } => sys::wait_thread(tid.0, false)
                    .map_err(|e| self.ptrace_step_err(tid, "waitpid", e))?
                    .ok_or_else(|| self.step_err(tid, "waitpid reported nothing".into()))?,
            };
            match status {
                WaitStatus::SignalStop(sig) => {
                    let info = ptrace::getsiginfo(npid)
                        .map_err(|e| self.ptrace_step_err(tid, "GETSIGINFO", e))?;
                    match end {
                        RoutineEnd::Signal { signo, rip } if sig == signo => {
                            // A tgkill at our address: the routine's own (the sender's pid is
                            // not compared: the target may number itself differently in its
                            // PID namespace; only its own tgkill stops it at `rip`).
                            let from_us = info.si_code == libc::SI_TKILL;
                            if from_us && self.getregs(tid)?.rip == rip {
                                self.finish_routine(tid, sig, restore)?;
                                return Ok(());
                            }
                        }
                        RoutineEnd::Syscall { nr, rip }
                            if sig == libc::SIGTRAP
                                && (info.si_code == libc::SIGTRAP
                                    || info.si_code == libc::SIGTRAP | 0x80) =>
                        {
                            crate::failpoint::hit(&format!("{label}:midway"));
                            let mut r = self.getregs(tid)?;
                            if in_marker {
                                // The stop after the marker's entry is its exit: every write
                                // is done (the entry's number was replaced by -1).
                                self.finish_routine(tid, libc::SIGTRAP, restore)?;
                                return Ok(());
                            }
                            if r.orig_rax == nr && r.rip == rip {
                                // Its entry: skip the call (no signal is ever sent).
                                r.orig_rax = u64::MAX;
                                self.setregs_raw(tid, r)?;
                                in_marker = true;
                            }
                            continue;
                        }
                        _ => {}
                    }
                    if info.si_code > 0 && is_fault_signal(sig) {
                        // The routine faulted: it cannot have written anything half-way (each
                        // write is one system call), so put the thread back as it was.
                        let _ = self.setregs_raw(tid, restore);
                        return Err(
                            self.step_err(tid, format!("the {label} routine raised signal {sig}"))
                        );
                    }
                    let th = self.threads.get_mut(&tid).expect("checked above");
                    th.held.push(HeldSignal { signo: sig, info });
                }
                WaitStatus::EventStop { .. } => continue,
                WaitStatus::Exited(_) | WaitStatus::Killed(_) => {
                    self.threads.remove(&tid);
                    return Err(Error::RemoteStep {
                        pid: self.pid,
                        tid,
                        detail: format!("the thread ended while committing ({status:?})"),
                        state: TargetState::Exited,
                    });
                }
            }
        }
        Err(self.step_err(tid, format!("the {label} routine did not finish")))
    }

    fn commit_direct(
        &mut self,
        entry: RemoteAddr,
        block_addr: RemoteAddr,
        block_of: BlockOf,
        writes: &[(RemoteAddr, Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        let pick = |want: fn(StopKind) -> bool| {
            self.threads
                .iter()
                .find(|(_, th)| want(th.stop))
                .map(|(&tid, _)| tid)
        };
        let tid = pick(|k| k == StopKind::Interrupt)
            .or(pick(|k| !matches!(k, StopKind::Event(_))))
            .ok_or(Error::ThreadInSyscall {
                pid: self.pid,
                tid: Tid(self.pid.0),
            })?;
        let current = self.getregs(tid)?;
        self.mem.write(block_addr, &block_of(&current))?;
        let mut armed = current;
        armed.rip = entry.0;
        armed.orig_rax = u64::MAX; // not inside a system call any more
                                   // Should anything below fail, resuming gives the thread its own registers back.
        let had_saved = {
            let th = self.threads.get_mut(&tid).expect("checked above");
            let had = th.saved_regs.is_some();
            th.saved_regs.get_or_insert(current);
            had
        };
        // Jumps a few bytes apart become one write (fewer system calls in the stop).
        let writes = &coalesce(writes, |addr, len| self.mem.read_vec(addr, len).ok());
        self.setregs_raw(tid, armed)?;
        crate::failpoint::hit("commit:armed");
        let mut failed = None;
        for (i, (addr, new, _)) in writes.iter().enumerate() {
            if let Err(e) = self.mem.write(*addr, new) {
                failed = Some((i, e));
                break;
            }
            if i == 0 {
                crate::failpoint::hit("commit:writing");
            }
        }
        if let Some((i, _)) = &failed {
            for (addr, _, old) in writes[..*i].iter().rev() {
                if let Err(e) = self.mem.write(*addr, old) {
                    tracing::warn!(pid = self.pid.0, addr = %addr, %e, "undoing a jump write");
                }
            }
        }
        // Disarm: the thread goes on with its own registers.
        self.setregs_raw(tid, current)?;
        if !had_saved {
            if let Some(th) = self.threads.get_mut(&tid) {
                th.saved_regs = None;
            }
        }
        match failed {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for the next stop of `tid` while it runs a routine at full speed: `None` when none
    /// came within `deadline`. Polls (yielding for the first 2 ms, then sleeping), so a
    /// routine that never stops cannot hang suture with the other threads stopped.
    fn wait_routine(
        &mut self,
        tid: Tid,
        deadline: std::time::Duration,
    ) -> Result<Option<WaitStatus>> {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = sys::wait_thread(tid.0, true)
                .map_err(|e| self.ptrace_step_err(tid, "waitpid", e))?
            {
                return Ok(Some(status));
            }
            let waited = started.elapsed();
            if waited >= deadline {
                return Ok(None);
            }
            if waited < std::time::Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }

    /// Puts a thread that ran past its routine back into an interrupt stop (holding signals
    /// that arrive first); its registers are the ones the routine restored.
    fn reinterrupt(&mut self, tid: Tid) -> Result<()> {
        let npid = nix::unistd::Pid::from_raw(tid.0);
        ptrace::interrupt(npid).map_err(|e| self.ptrace_step_err(tid, "INTERRUPT", e))?;
        loop {
            let status = sys::wait_thread(tid.0, false)
                .map_err(|e| self.ptrace_step_err(tid, "waitpid", e))?
                .ok_or_else(|| self.step_err(tid, "waitpid reported nothing".into()))?;
            match status {
                WaitStatus::SignalStop(sig) => {
                    let info = ptrace::getsiginfo(npid)
                        .map_err(|e| self.ptrace_step_err(tid, "GETSIGINFO", e))?;
                    let th = self.threads.get_mut(&tid).expect("checked by the caller");
                    th.held.push(HeldSignal { signo: sig, info });
                    ptrace::cont(npid, None).map_err(|e| self.ptrace_step_err(tid, "CONT", e))?;
                }
                WaitStatus::EventStop { sig, .. } => {
                    let th = self.threads.get_mut(&tid).expect("checked by the caller");
                    th.stop = if sig == libc::SIGTRAP {
                        StopKind::Interrupt
                    } else {
                        StopKind::GroupStop(sig)
                    };
                    return Ok(());
                }
                WaitStatus::Exited(_) | WaitStatus::Killed(_) => {
                    self.threads.remove(&tid);
                    return Err(Error::RemoteStep {
                        pid: self.pid,
                        tid,
                        detail: format!("the thread ended after its routine ({status:?})"),
                        state: TargetState::Exited,
                    });
                }
            }
        }
    }

    /// The routine is done: give the thread its registers back. It stays in a
    /// signal-delivery-stop for `sig`, which resuming discards (it is not held).
    fn finish_routine(&mut self, tid: Tid, sig: i32, restore: Registers) -> Result<()> {
        self.setregs_raw(tid, restore)?;
        let th = self.threads.get_mut(&tid).expect("checked by the caller");
        th.stop = StopKind::Signal(sig);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_writes_become_one_and_the_last_stays_last() {
        // Memory 0x1000.. holds bytes equal to the low byte of their address.
        let read = |addr: RemoteAddr, len: usize| {
            Some((0..len as u64).map(|i| (addr.0 + i) as u8).collect())
        };
        let w = |addr: u64, new: &[u8]| (RemoteAddr(addr), new.to_vec(), vec![0; new.len()]);
        let writes = vec![
            w(0x1010, &[0xaa, 0xaa]),
            w(0x1000, &[0xbb]),
            w(0x9000, &[0xcc]),
            w(0x1000 + COALESCE_GAP + 0x20, &[0xdd]),
            w(0x5000, &[0xee]), // the state: never joined
        ];
        let out = coalesce(&writes, read);
        assert_eq!(out.len(), 4);
        let (addr, new, old) = &out[0];
        assert_eq!(*addr, RemoteAddr(0x1000));
        assert_eq!(new.len(), 0x12);
        assert_eq!(
            (new[0], new[1], new[0x10], new[0x11]),
            (0xbb, 0x01, 0xaa, 0xaa)
        );
        assert_eq!(old[0x10], 0x10);
        // More than the gap away: separate.
        assert_eq!(out[1].0, RemoteAddr(0x1000 + COALESCE_GAP + 0x20));
        assert_eq!(out[2].0, RemoteAddr(0x9000));
        assert_eq!(out[3], writes[4]);
        // Unreadable spans keep their writes.
        let out = coalesce(&writes, |_, _| None);
        assert_eq!(out.len(), 5);
        assert_eq!(out[4], writes[4]);
    }
}
