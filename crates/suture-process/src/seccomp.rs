//! Will the target's seccomp filters let suture's injected system calls through?
//!
//! suture runs system calls inside the target: `mmap`, `mprotect` and `munmap` on a borrowed
//! thread ([`crate::remote`]), and `open` of `/proc/self/mem`, `pwrite64`, `close` and the
//! marker `tgkill` in the commit routine ([`crate::commit`]). A seccomp filter may answer any of them
//! with `SECCOMP_RET_KILL_PROCESS` (the target dies), `ERRNO` (the apply fails half-way),
//! `TRAP` (a stray `SIGSYS`), `TRACE` or `USER_NOTIF`. systemd's `MemoryDenyWriteExecute=yes`,
//! for one, is a filter that returns `EPERM` for `mprotect` with `PROT_EXEC`.
//!
//! So before injecting anything, suture reads every thread's seccomp mode (it is per thread),
//! fetches the filters of the threads that have some with `PTRACE_SECCOMP_GET_FILTER` (it
//! needs `CAP_SYS_ADMIN` and the thread stopped under ptrace:
//! [`StoppedProcess::check_seccomp`]) and runs each classic-BPF program on the exact
//! `seccomp_data` of each call it is about to make ([`Injected`]: number, `AUDIT_ARCH_X86_64`, the `rip` after the `syscall` instruction,
//! the six arguments). Only `ALLOW` and `LOG` pass; anything else is a refusal naming the system
//! call and the action ([`check`]). Strict mode (`Seccomp: 1`) allows none of them.
//!
//! The programs are untrusted input: the interpreter ([`run`]) accepts only what the kernel's
//! seccomp loader accepts (classic BPF with loads from `seccomp_data`), executes at most one
//! pass over the program (jumps only go forward), and reports malformed programs as errors; a
//! program it cannot evaluate is a refusal, never an allow.
//!
//! `prctl(PR_SET_MDWE)` is not a seccomp filter and shows nowhere in `/proc`: a process under
//! it refuses `mprotect` adding `PROT_EXEC` (`EACCES`) but accepts a fresh `mmap` with
//! `PROT_READ | PROT_EXEC`. [`Injected::get_mdwe`] is the query suture can inject to learn it,
//! and [`MDWE_REASON`] the explanation to give.

use crate::error::{Error, Result};
use crate::ids::{Pid, Tid};
use crate::stop::StoppedProcess;
use nix::errno::Errno;
use std::fmt;

/// `AUDIT_ARCH_X86_64`: the `arch` of every system call of a 64-bit x86-64 thread.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The explanation when `mprotect(PROT_EXEC)` fails with `EACCES` in a target.
pub const MDWE_REASON: &str = "the process forbids making memory executable \
     (prctl PR_SET_MDWE, or a security module's execmem rule)";

/// x86-64 system call numbers suture injects.
pub mod nr {
    pub const OPEN: u32 = 2;
    pub const CLOSE: u32 = 3;
    pub const MMAP: u32 = 9;
    pub const MPROTECT: u32 = 10;
    pub const MUNMAP: u32 = 11;
    pub const PWRITE64: u32 = 18;
    pub const GETPID: u32 = 39;
    pub const PRCTL: u32 = 157;
    pub const TGKILL: u32 = 234;
    pub const OPENAT: u32 = 257;
}

/// `prctl` options for memory-deny-write-execute (Linux 6.3+; not in older headers).
pub const PR_SET_MDWE: u64 = 65;
pub const PR_GET_MDWE: u64 = 66;
pub const PR_MDWE_REFUSE_EXEC_GAIN: u64 = 1;

/// One system call suture will make inside the target, with the exact values the filter sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected {
    /// For messages: `mprotect`, `pwrite64`, ...
    pub name: &'static str,
    pub nr: u32,
    pub args: [u64; 6],
    /// `seccomp_data.instruction_pointer`: the address just after the `syscall` instruction.
    pub ip: u64,
}

impl Injected {
    pub fn new(name: &'static str, nr: u32, args: [u64; 6], ip: u64) -> Injected {
        Injected { name, nr, args, ip }
    }
    pub fn mmap(ip: u64, addr: u64, len: u64, prot: u64, flags: u64, fd: i64, off: u64) -> Self {
        Injected::new(
            "mmap",
            nr::MMAP,
            [addr, len, prot, flags, fd as u64, off],
            ip,
        )
    }
    pub fn mprotect(ip: u64, addr: u64, len: u64, prot: u64) -> Self {
        Injected::new("mprotect", nr::MPROTECT, [addr, len, prot, 0, 0, 0], ip)
    }
    pub fn munmap(ip: u64, addr: u64, len: u64) -> Self {
        Injected::new("munmap", nr::MUNMAP, [addr, len, 0, 0, 0, 0], ip)
    }
    /// `open(path, flags, mode)` (the commit routine opens `/proc/self/mem` with `O_RDWR`).
    pub fn open(ip: u64, path: u64, flags: u64, mode: u64) -> Self {
        Injected::new("open", nr::OPEN, [path, flags, mode, 0, 0, 0], ip)
    }
    pub fn openat(ip: u64, dirfd: i64, path: u64, flags: u64, mode: u64) -> Self {
        Injected::new(
            "openat",
            nr::OPENAT,
            [dirfd as u64, path, flags, mode, 0, 0],
            ip,
        )
    }
    pub fn pwrite64(ip: u64, fd: u64, buf: u64, len: u64, offset: u64) -> Self {
        Injected::new("pwrite64", nr::PWRITE64, [fd, buf, len, offset, 0, 0], ip)
    }
    pub fn close(ip: u64, fd: u64) -> Self {
        Injected::new("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0], ip)
    }
    pub fn getpid(ip: u64) -> Self {
        Injected::new("getpid", nr::GETPID, [0; 6], ip)
    }
    pub fn tgkill(ip: u64, tgid: u64, tid: u64, sig: u64) -> Self {
        Injected::new("tgkill", nr::TGKILL, [tgid, tid, sig, 0, 0, 0], ip)
    }
    /// `prctl(PR_GET_MDWE, 0, 0, 0, 0)`: returns the MDWE flags (0: none).
    pub fn get_mdwe(ip: u64) -> Self {
        Injected::new("prctl", nr::PRCTL, [PR_GET_MDWE, 0, 0, 0, 0, 0], ip)
    }

    /// The 64 bytes of `struct seccomp_data` the filter reads.
    pub fn data(&self) -> [u8; SECCOMP_DATA_LEN] {
        let mut d = [0u8; SECCOMP_DATA_LEN];
        d[0..4].copy_from_slice(&self.nr.to_le_bytes());
        d[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
        d[8..16].copy_from_slice(&self.ip.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        d
    }
}

/// `sizeof(struct seccomp_data)`.
pub const SECCOMP_DATA_LEN: usize = 64;

/// The lowest file descriptor not open in `pid`: what the commit routine's `open` returns
/// while the process is stopped (the value filters see as the `fd` of `pwrite64` and `close`).
pub fn lowest_free_fd(pid: Pid) -> Option<u64> {
    let dir = crate::maps::live_proc_dir(pid).join("fd");
    let mut open: Vec<u64> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    open.sort_unstable();
    let mut want = 0;
    for fd in open {
        if fd == want {
            want += 1;
        } else if fd > want {
            break;
        }
    }
    Some(want)
}

// ---- classic BPF ---------------------------------------------------------------------------

/// One classic-BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    pub const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
        Insn { code, jt, jf, k }
    }

    /// From the kernel's 8-byte little-endian record.
    pub fn from_bytes(b: [u8; 8]) -> Insn {
        Insn {
            code: u16::from_le_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Instruction fields (`linux/bpf_common.h`, `linux/filter.h`).
pub mod op {
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const MISC: u16 = 0x07;

    pub const W: u16 = 0x00;
    pub const H: u16 = 0x08;
    pub const B: u16 = 0x10;

    pub const IMM: u16 = 0x00;
    pub const ABS: u16 = 0x20;
    pub const IND: u16 = 0x40;
    pub const MEM: u16 = 0x60;
    pub const LEN: u16 = 0x80;
    pub const MSH: u16 = 0xa0;

    pub const ADD: u16 = 0x00;
    pub const SUB: u16 = 0x10;
    pub const MUL: u16 = 0x20;
    pub const DIV: u16 = 0x30;
    pub const OR: u16 = 0x40;
    pub const AND: u16 = 0x50;
    pub const LSH: u16 = 0x60;
    pub const RSH: u16 = 0x70;
    pub const NEG: u16 = 0x80;
    pub const MOD: u16 = 0x90;
    pub const XOR: u16 = 0xa0;

    pub const JA: u16 = 0x00;
    pub const JEQ: u16 = 0x10;
    pub const JGT: u16 = 0x20;
    pub const JGE: u16 = 0x30;
    pub const JSET: u16 = 0x40;

    pub const K: u16 = 0x00;
    pub const X: u16 = 0x08;
    /// `BPF_RET | BPF_A`.
    pub const A: u16 = 0x10;

    pub const TAX: u16 = 0x00;
    pub const TXA: u16 = 0x80;
}

/// `BPF_MAXINSNS`.
pub const MAX_INSNS: usize = 4096;
/// `BPF_MEMWORDS`: scratch memory slots.
const MEMWORDS: usize = 16;

/// Why a program could not be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BpfError {
    #[error("the program is empty")]
    Empty,
    #[error("the program has {0} instructions (at most 4096)")]
    TooLong(usize),
    #[error("instruction {pc} ({code:#06x}) is not valid in a seccomp filter")]
    BadInstruction { pc: usize, code: u16 },
    #[error("instruction {pc} loads outside seccomp_data (offset {offset})")]
    BadLoad { pc: usize, offset: u64 },
    #[error("instruction {pc} uses scratch slot {slot} (there are 16)")]
    BadSlot { pc: usize, slot: u32 },
    #[error("instruction {pc} jumps past the end of the program")]
    BadJump { pc: usize },
    #[error("the program runs off its end without returning")]
    NoReturn,
    #[error("the program's last instruction is not a return")]
    NoFinalReturn,
}

fn load_word(data: &[u8; SECCOMP_DATA_LEN], pc: usize, offset: u64) -> Result<u32, BpfError> {
    // The kernel accepts only aligned 32-bit loads inside seccomp_data.
    if offset % 4 != 0 || offset + 4 > SECCOMP_DATA_LEN as u64 {
        return Err(BpfError::BadLoad { pc, offset });
    }
    let o = offset as usize;
    Ok(u32::from_le_bytes([
        data[o],
        data[o + 1],
        data[o + 2],
        data[o + 3],
    ]))
}

/// Runs a seccomp classic-BPF program on `data`; returns the 32-bit value it returns.
///
/// Semantics are the kernel's: 32-bit accumulator `A` and index `X`, 16 scratch words (zero
/// at start), unsigned comparisons, division by a zero `X` ends the program with 0 (which is
/// `SECCOMP_RET_KILL_THREAD`), shifts by `X` use its low 5 bits. Instructions the seccomp
/// loader refuses (indirect and byte loads, `MOD`, `RET X`, ...) are errors.
pub fn run(prog: &[Insn], data: &[u8; SECCOMP_DATA_LEN]) -> Result<u32, BpfError> {
    use op::*;
    if prog.is_empty() {
        return Err(BpfError::Empty);
    }
    if prog.len() > MAX_INSNS {
        return Err(BpfError::TooLong(prog.len()));
    }
    // The kernel loads only programs whose last instruction returns.
    if !matches!(prog[prog.len() - 1].code, c if c == RET | K || c == RET | A) {
        return Err(BpfError::NoFinalReturn);
    }
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; MEMWORDS];
    let mut pc = 0usize;
    // Every instruction moves `pc` forward by at least one, so this loop ends within
    // `prog.len()` iterations; the bound makes that explicit.
    for _ in 0..prog.len() {
        let Some(&insn) = prog.get(pc) else {
            return Err(BpfError::NoReturn);
        };
        let bad = || BpfError::BadInstruction {
            pc,
            code: insn.code,
        };
        let slot = |k: u32| {
            usize::try_from(k)
                .ok()
                .filter(|&s| s < MEMWORDS)
                .ok_or(BpfError::BadSlot { pc, slot: k })
        };
        let k = insn.k;
        let mut next = pc + 1;
        match insn.code & 0x07 {
            LD => {
                a = match insn.code & !0x07 {
                    c if c == (W | ABS) => load_word(data, pc, u64::from(k))?,
                    c if c == (W | LEN) => SECCOMP_DATA_LEN as u32,
                    c if c == (W | IMM) => k,
                    c if c == (W | MEM) => mem[slot(k)?],
                    _ => return Err(bad()),
                }
            }
            LDX => {
                x = match insn.code & !0x07 {
                    c if c == (W | IMM) => k,
                    c if c == (W | MEM) => mem[slot(k)?],
                    c if c == (W | LEN) => SECCOMP_DATA_LEN as u32,
                    _ => return Err(bad()),
                }
            }
            ST if insn.code == ST => mem[slot(k)?] = a,
            STX if insn.code == STX => mem[slot(k)?] = x,
            ALU => {
                let operation = insn.code & 0xf0;
                let src = if insn.code & X != 0 { x } else { k };
                if insn.code & 0x08 != 0 && operation == NEG {
                    return Err(bad());
                }
                a = match operation {
                    ADD => a.wrapping_add(src),
                    SUB => a.wrapping_sub(src),
                    MUL => a.wrapping_mul(src),
                    DIV if src == 0 => {
                        if insn.code & X == 0 {
                            return Err(bad()); // the kernel refuses a constant zero divisor
                        }
                        return Ok(0);
                    }
                    DIV => a / src,
                    OR => a | src,
                    AND => a & src,
                    XOR => a ^ src,
                    LSH | RSH if insn.code & X == 0 && src >= 32 => return Err(bad()),
                    LSH => a.wrapping_shl(src & 31),
                    RSH => a.wrapping_shr(src & 31),
                    NEG => a.wrapping_neg(),
                    _ => return Err(bad()),
                };
            }
            JMP => {
                let operation = insn.code & 0xf0;
                let offset = if operation == JA {
                    if insn.code & X != 0 {
                        return Err(bad());
                    }
                    usize::try_from(k).map_err(|_| BpfError::BadJump { pc })?
                } else {
                    let src = if insn.code & X != 0 { x } else { k };
                    let taken = match operation {
                        JEQ => a == src,
                        JGT => a > src,
                        JGE => a >= src,
                        JSET => a & src != 0,
                        _ => return Err(bad()),
                    };
                    usize::from(if taken { insn.jt } else { insn.jf })
                };
                next = pc
                    .checked_add(1)
                    .and_then(|n| n.checked_add(offset))
                    .filter(|&n| n < prog.len())
                    .ok_or(BpfError::BadJump { pc })?;
            }
            RET => {
                return match insn.code & 0x18 {
                    K => Ok(k),
                    A => Ok(a),
                    _ => Err(bad()),
                }
            }
            MISC => match insn.code & 0xf8 {
                TAX => x = a,
                TXA => a = x,
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        }
        pc = next;
    }
    Err(BpfError::NoReturn)
}

// ---- actions -------------------------------------------------------------------------------

/// What a filter decided for one system call (`SECCOMP_RET_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    KillProcess,
    KillThread,
    /// `SIGSYS` to the thread; the data is its `si_errno`.
    Trap(u16),
    /// The call fails with this errno without running.
    Errno(u16),
    /// A user-space supervisor decides.
    UserNotif,
    /// A ptrace tracer decides (without one: `ENOSYS`).
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    /// Decodes a filter's return value. Unknown actions are what the kernel makes of them:
    /// kill the process.
    pub fn from_ret(ret: u32) -> Action {
        let data = (ret & 0xffff) as u16;
        match ret & 0xffff_0000 {
            0x8000_0000 => Action::KillProcess,
            0x0000_0000 => Action::KillThread,
            0x0003_0000 => Action::Trap(data),
            0x0005_0000 => Action::Errno(data),
            0x7fc0_0000 => Action::UserNotif,
            0x7ff0_0000 => Action::Trace(data),
            0x7ffc_0000 => Action::Log,
            0x7fff_0000 => Action::Allow,
            _ => Action::KillProcess,
        }
    }

    /// Whether the system call runs normally.
    pub fn allows(self) -> bool {
        matches!(self, Action::Allow | Action::Log)
    }

    /// The kernel's precedence when several filters answer: the lowest value of the action
    /// bits, read as a signed number, wins.
    fn precedence(ret: u32) -> i32 {
        (ret & 0xffff_0000) as i32
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::KillProcess => f.write_str("kill the process (SECCOMP_RET_KILL_PROCESS)"),
            Action::KillThread => f.write_str("kill the thread (SECCOMP_RET_KILL_THREAD)"),
            Action::Trap(_) => f.write_str("send SIGSYS (SECCOMP_RET_TRAP)"),
            Action::Errno(e) => write!(
                f,
                "fail it with {} (SECCOMP_RET_ERRNO)",
                Errno::from_raw(i32::from(*e))
            ),
            Action::UserNotif => f.write_str("defer it to a supervisor (SECCOMP_RET_USER_NOTIF)"),
            Action::Trace(_) => f.write_str("defer it to a tracer (SECCOMP_RET_TRACE)"),
            Action::Log => f.write_str("log it (SECCOMP_RET_LOG)"),
            Action::Allow => f.write_str("allow it (SECCOMP_RET_ALLOW)"),
        }
    }
}

/// A seccomp filter program.
pub type Program = Vec<Insn>;

/// The combined decision of a thread's filters (newest first, as the kernel stores them) for
/// one call: every filter runs and the most severe action wins. A filter that cannot be
/// evaluated counts as killing the process.
pub fn decide(filters: &[Program], call: &Injected) -> (Action, Option<BpfError>) {
    let data = call.data();
    let mut best: Option<u32> = None;
    let mut error = None;
    for prog in filters {
        let ret = match run(prog, &data) {
            Ok(r) => r,
            Err(e) => {
                error.get_or_insert(e);
                0x8000_0000
            }
        };
        if best.is_none_or(|b| Action::precedence(ret) < Action::precedence(b)) {
            best = Some(ret);
        }
    }
    (best.map_or(Action::Allow, Action::from_ret), error)
}

/// A system call the filters of some thread would not let run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forbidden {
    pub tid: Tid,
    pub syscall: &'static str,
    pub action: Action,
    /// Set when a filter could not be evaluated (the refusal is then a precaution).
    pub malformed: Option<BpfError>,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.malformed {
            Some(e) => write!(
                f,
                "suture cannot evaluate the seccomp filter of thread {} for its {} ({e})",
                self.tid, self.syscall
            ),
            None => write!(
                f,
                "the seccomp filter of thread {} would {} for suture's {}",
                self.tid, self.action, self.syscall
            ),
        }
    }
}

/// Checks every call against every thread's filters; the first refusal found (threads in
/// order, calls in order).
pub fn check(threads: &[(Tid, Vec<Program>)], calls: &[Injected]) -> Option<Forbidden> {
    for (i, (tid, filters)) in threads.iter().enumerate() {
        // Threads share their filters (inherited at clone, or synchronised): evaluate each
        // distinct list once.
        if filters.is_empty() || threads[..i].iter().any(|(_, f)| f == filters) {
            continue;
        }
        for call in calls {
            let (action, malformed) = decide(filters, call);
            if !action.allows() || malformed.is_some() {
                return Some(Forbidden {
                    tid: *tid,
                    syscall: call.name,
                    action,
                    malformed,
                });
            }
        }
    }
    None
}

/// A thread's seccomp mode (`Seccomp:` in `/proc/PID/task/TID/status`): 0 none, 1 strict,
/// 2 filter. Seccomp is per thread: a filter installed without `SECCOMP_FILTER_FLAG_TSYNC`
/// binds only its thread (and the threads it creates later), so the leader's mode says
/// nothing about the others.
fn thread_mode(pid: Pid, tid: Tid) -> Option<u32> {
    let text =
        crate::maps::read_proc_string(format!("/proc/{}/task/{}/status", pid.0, tid.0)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What a thread's seccomp state is, fetched while it is stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreadSeccomp {
    /// No seccomp: every system call runs.
    Disabled,
    /// Strict mode: only read, write, exit and sigreturn run.
    Strict,
    /// These filters, newest first.
    Filters(Vec<Program>),
}

fn fetch(pid: Pid, tid: Tid) -> Result<ThreadSeccomp> {
    match thread_mode(pid, tid) {
        Some(0) => return Ok(ThreadSeccomp::Disabled),
        Some(1) => return Ok(ThreadSeccomp::Strict),
        None if !std::path::Path::new(&format!("/proc/{}/task/{}", pid.0, tid.0)).exists() => {
            return Ok(ThreadSeccomp::Disabled); // the thread is gone
        }
        _ => {}
    }
    let mut filters = Vec::new();
    for index in 0..=1024u64 {
        match crate::sys::seccomp_filter(tid.0, index) {
            Ok(raw) => filters.push(raw.into_iter().map(Insn::from_bytes).collect()),
            // Past the last filter.
            Err(Errno::ENOENT) => break,
            Err(errno) => return Err(Error::SeccompUnreadable { pid, tid, errno }),
        }
    }
    Ok(ThreadSeccomp::Filters(filters))
}

impl StoppedProcess {
    /// The seccomp state of the given stopped threads (all of them when `None`). Fetching
    /// filters needs `CAP_SYS_ADMIN` (and suture itself not under seccomp); threads without
    /// a filter need nothing.
    pub fn thread_seccomp(&self, tids: Option<&[Tid]>) -> Result<Vec<(Tid, ThreadSeccomp)>> {
        let pid = self.pid();
        let wanted: Option<Vec<Tid>> = tids.map(<[Tid]>::to_vec);
        self.call(move |t| {
            t.threads
                .keys()
                .filter(|tid| wanted.as_ref().is_none_or(|w| w.contains(tid)))
                .map(|&tid| Ok((tid, fetch(pid, tid)?)))
                .collect::<Result<Vec<_>>>()
        })?
    }

    /// Every stopped thread's seccomp filters, newest first (an empty list: no filter).
    pub fn seccomp_filters(&self) -> Result<Vec<(Tid, Vec<Program>)>> {
        Ok(self
            .thread_seccomp(None)?
            .into_iter()
            .map(|(tid, s)| match s {
                ThreadSeccomp::Filters(f) => (tid, f),
                _ => (tid, Vec::new()),
            })
            .collect())
    }

    /// Refuses (with [`Error::SeccompForbids`], or [`Error::Seccomp`] for strict mode) unless
    /// the seccomp state of *every* thread lets each of `calls` run normally: any thread may be
    /// borrowed for a remote call or run the commit routine. Reads one small `/proc` file per
    /// thread; filters are fetched only for threads that have some. Call it right after
    /// stopping the target and before the first remote system call, then use
    /// [`remote_ignoring_seccomp`](StoppedProcess::remote_ignoring_seccomp).
    pub fn check_seccomp(&self, calls: &[Injected]) -> Result<()> {
        self.check_seccomp_of(None, calls)
    }

    /// [`check_seccomp`](StoppedProcess::check_seccomp) for the given threads only (e.g. the
    /// one about to run the commit routine, re-checked in the switch's stop).
    pub fn check_seccomp_of(&self, tids: Option<&[Tid]>, calls: &[Injected]) -> Result<()> {
        let mut filtered = Vec::new();
        for (tid, state) in self.thread_seccomp(tids)? {
            match state {
                ThreadSeccomp::Disabled => {}
                ThreadSeccomp::Strict => {
                    return Err(Error::Seccomp {
                        pid: self.pid(),
                        mode: "strict mode",
                    })
                }
                ThreadSeccomp::Filters(f) => filtered.push((tid, f)),
            }
        }
        match check(&filtered, calls) {
            None => Ok(()),
            Some(f) => Err(Error::SeccompForbids {
                pid: self.pid(),
                detail: f.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::op::*;
    use super::*;

    const ALLOW: u32 = 0x7fff_0000;
    const KILL_PROCESS: u32 = 0x8000_0000;
    const ERRNO_EPERM: u32 = 0x0005_0001;
    const LOG: u32 = 0x7ffc_0000;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
        Insn::new(code, jt, jf, k)
    }

    /// What systemd's MemoryDenyWriteExecute does for mprotect, with KILL instead of EPERM:
    /// check the arch, then kill `mprotect` whose `prot` has PROT_EXEC.
    fn deny_mprotect_exec(action: u32) -> Program {
        vec![
            ins(LD | W | ABS, 0, 0, 4),
            ins(JMP | JEQ | K, 1, 0, AUDIT_ARCH_X86_64),
            ins(RET | K, 0, 0, KILL_PROCESS),
            ins(LD | W | ABS, 0, 0, 0),
            ins(JMP | JEQ | K, 0, 3, nr::MPROTECT),
            ins(LD | W | ABS, 0, 0, 16 + 2 * 8), // low half of args[2]
            ins(JMP | JSET | K, 0, 1, 4),
            ins(RET | K, 0, 0, action),
            ins(RET | K, 0, 0, ALLOW),
        ]
    }

    fn deny_nr(nr: u32, action: u32) -> Program {
        vec![
            ins(LD | W | ABS, 0, 0, 0),
            ins(JMP | JEQ | K, 0, 1, nr),
            ins(RET | K, 0, 0, action),
            ins(RET | K, 0, 0, ALLOW),
        ]
    }

    #[test]
    fn seccomp_data_layout() {
        let c = Injected::pwrite64(0x1002, 7, 0x2000, 8, 0x3000);
        let d = c.data();
        assert_eq!(&d[0..4], &18u32.to_le_bytes());
        assert_eq!(&d[4..8], &[0x3e, 0, 0, 0xc0]);
        assert_eq!(&d[8..16], &0x1002u64.to_le_bytes());
        assert_eq!(&d[16..24], &7u64.to_le_bytes());
        assert_eq!(&d[40..48], &0x3000u64.to_le_bytes());
    }

    #[test]
    fn mprotect_exec_filter() {
        let p = deny_mprotect_exec(KILL_PROCESS);
        let rx = Injected::mprotect(0, 0x1000, 0x1000, 5);
        let rw = Injected::mprotect(0, 0x1000, 0x1000, 3);
        let mmap_rx = Injected::mmap(0, 0x1000, 0x1000, 5, 0x22, -1, 0);
        assert_eq!(run(&p, &rx.data()), Ok(KILL_PROCESS));
        assert_eq!(run(&p, &rw.data()), Ok(ALLOW));
        assert_eq!(run(&p, &mmap_rx.data()), Ok(ALLOW));
        let f = check(&[(Tid(5), vec![p])], &[rw, rx]).unwrap();
        assert_eq!(f.syscall, "mprotect");
        assert_eq!(f.action, Action::KillProcess);
        assert!(f.to_string().contains("kill the process"), "{f}");
        assert!(f.to_string().contains("mprotect"), "{f}");
    }

    #[test]
    fn most_severe_action_wins_across_filters() {
        let calls = [Injected::pwrite64(0, 3, 0, 8, 0)];
        let filters = vec![
            deny_nr(nr::PWRITE64, LOG),
            deny_nr(nr::PWRITE64, ERRNO_EPERM),
            deny_nr(nr::GETPID, KILL_PROCESS),
        ];
        assert_eq!(
            decide(&filters, &calls[0]),
            (Action::Errno(libc::EPERM as u16), None)
        );
        let f = check(&[(Tid(1), vec![]), (Tid(2), filters)], &calls).unwrap();
        assert_eq!(f.tid, Tid(2));
        assert!(f.to_string().contains("EPERM"), "{f}");
        // LOG alone lets it through.
        assert!(check(&[(Tid(1), vec![deny_nr(nr::PWRITE64, LOG)])], &calls).is_none());
        // KILL_PROCESS beats KILL_THREAD (0), which beats TRAP.
        let many = vec![
            deny_nr(nr::PWRITE64, 0x0003_0000),
            deny_nr(nr::PWRITE64, 0),
            deny_nr(nr::PWRITE64, KILL_PROCESS),
        ];
        assert_eq!(decide(&many, &calls[0]).0, Action::KillProcess);
        assert_eq!(decide(&many[..2], &calls[0]).0, Action::KillThread);
    }

    #[test]
    fn unrelated_filters_allow_everything_suture_does() {
        let calls = [
            Injected::mmap(0x10, 0x7000_0000, 0x3000, 1, 0x10_0022, -1, 0),
            Injected::mprotect(0x10, 0x7000_0000, 0x1000, 5),
            Injected::open(0x20, 0x7000_2090, 2, 0),
            Injected::pwrite64(0x20, 3, 0x7000_20a8, 8, 0x401000),
            Injected::close(0x20, 3),
            Injected::getpid(0x20),
            Injected::munmap(0x10, 0x7000_0000, 0x3000),
        ];
        let threads = vec![(Tid(9), vec![deny_nr(101 /* ptrace */, ERRNO_EPERM)])];
        assert_eq!(check(&threads, &calls), None);
    }

    #[test]
    fn alu_scratch_and_index_registers() {
        // A = nr; M[3] = A; X = 2; A = (A * 4 + X) ^ 1 ... computed values returned.
        let p = vec![
            ins(LD | W | ABS, 0, 0, 0),
            ins(ST, 0, 0, 3),
            ins(LDX | W | IMM, 0, 0, 2),
            ins(ALU | MUL | K, 0, 0, 4),
            ins(ALU | ADD | X, 0, 0, 0),
            ins(ALU | XOR | K, 0, 0, 1),
            ins(ALU | LSH | K, 0, 0, 8),
            ins(ALU | RSH | X, 0, 0, 0),
            ins(ALU | OR | K, 0, 0, 0x7fff_0000),
            ins(MISC | TAX, 0, 0, 0),
            ins(LD | W | MEM, 0, 0, 3),
            ins(ALU | SUB | K, 0, 0, 1),
            ins(ALU | NEG, 0, 0, 0),
            ins(ALU | AND | K, 0, 0, 0xff),
            ins(ALU | DIV | K, 0, 0, 3),
            ins(STX, 0, 0, 15),
            ins(LD | W | MEM, 0, 0, 15),
            ins(RET | A, 0, 0, 0),
        ];
        let d = Injected::getpid(0).data(); // nr 39
        let expect = ((((39u32 * 4 + 2) ^ 1) << 8) >> 2) | 0x7fff_0000;
        assert_eq!(run(&p, &d), Ok(expect));
        // Division by a zero X ends the program with 0 (kill thread).
        let z = vec![
            ins(LD | W | IMM, 0, 0, 5),
            ins(ALU | DIV | X, 0, 0, 0),
            ins(RET | K, 0, 0, ALLOW),
        ];
        assert_eq!(run(&z, &d), Ok(0));
        assert_eq!(decide(&[z], &Injected::getpid(0)).0, Action::KillThread);
        // JGT/JGE/JA and TXA.
        let j = vec![
            ins(LD | W | ABS, 0, 0, 0),
            ins(JMP | JGT | K, 0, 2, 38),
            ins(JMP | JGE | K, 1, 0, 40),
            ins(JMP | JA, 0, 0, 1),
            ins(RET | K, 0, 0, ALLOW),
            ins(LDX | W | LEN, 0, 0, 0),
            ins(MISC | TXA, 0, 0, 0),
            ins(RET | A, 0, 0, 0),
        ];
        assert_eq!(run(&j, &d), Ok(64)); // 39 > 38, 39 < 40, ja skips the allow
    }

    #[test]
    fn malformed_programs_are_errors_never_allows() {
        let d = Injected::getpid(0).data();
        assert_eq!(run(&[], &d), Err(BpfError::Empty));
        assert_eq!(
            run(&vec![ins(RET | K, 0, 0, ALLOW); MAX_INSNS + 1], &d),
            Err(BpfError::TooLong(MAX_INSNS + 1))
        );
        // Loads outside seccomp_data, unaligned, or of bytes.
        for (code, k) in [(LD | W | ABS, 64), (LD | W | ABS, 2), (LD | B | ABS, 0)] {
            assert!(run(&[ins(code, 0, 0, k), ins(RET | A, 0, 0, 0)], &d).is_err());
        }
        // What the seccomp loader refuses: indirect loads, MOD, RET X, no final return.
        let ret = ins(RET | A, 0, 0, 0);
        for code in [LD | W | IND, ALU | MOD | K, ALU | MOD | X, RET | X] {
            assert_eq!(
                run(&[ins(code, 0, 0, 1), ret], &d),
                Err(BpfError::BadInstruction { pc: 0, code }),
                "{code:#x}"
            );
        }
        assert_eq!(
            run(&[ret, ins(LD | W | IMM, 0, 0, 1)], &d),
            Err(BpfError::NoFinalReturn)
        );
        // Jumps past the end, bad slots, unknown opcodes.
        assert_eq!(
            run(&[ins(JMP | JA, 0, 0, u32::MAX), ret], &d),
            Err(BpfError::BadJump { pc: 0 })
        );
        assert_eq!(
            run(&[ins(JMP | JEQ | K, 5, 5, 0), ret], &d),
            Err(BpfError::BadJump { pc: 0 })
        );
        assert!(matches!(
            run(&[ins(ST, 0, 0, 16), ins(RET | K, 0, 0, ALLOW)], &d),
            Err(BpfError::BadSlot { .. })
        ));
        for code in [
            0xffffu16,
            ALU | 0xf0,
            JMP | 0x70,
            RET | X,
            MISC | 0x40,
            LDX | MSH,
        ] {
            assert!(
                run(&[ins(code, 0, 0, 0), ins(RET | K, 0, 0, ALLOW)], &d).is_err(),
                "{code:#x}"
            );
        }
        // Constant zero divisor and oversized constant shifts are refused by the kernel.
        for code in [ALU | DIV | K, ALU | MOD | K] {
            assert!(run(&[ins(code, 0, 0, 0), ins(RET | K, 0, 0, ALLOW)], &d).is_err());
        }
        assert!(run(
            &[ins(ALU | LSH | K, 0, 0, 32), ins(RET | K, 0, 0, ALLOW)],
            &d
        )
        .is_err());
        // An unevaluable filter makes check refuse.
        let f = check(
            &[(Tid(3), vec![vec![ins(0xffff, 0, 0, 0)]])],
            &[Injected::getpid(0)],
        )
        .unwrap();
        assert!(f.malformed.is_some());
        assert!(f.to_string().contains("cannot evaluate"), "{f}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: random programs over every opcode byte.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let d = Injected::mmap(1, 2, 3, 4, 5, 6, 7).data();
        for _ in 0..20_000 {
            let len = (next() % 12) as usize + 1;
            let prog: Vec<Insn> = (0..len)
                .map(|_| Insn::from_bytes(next().to_le_bytes()))
                .map(|mut i| {
                    i.code &= 0xff;
                    i.k %= 80;
                    i.jt %= 4;
                    i.jf %= 4;
                    i
                })
                .collect();
            let _ = run(&prog, &d);
        }
    }

    #[test]
    fn actions_decode_like_the_kernel() {
        assert_eq!(Action::from_ret(0x8000_0000), Action::KillProcess);
        assert_eq!(Action::from_ret(0), Action::KillThread);
        assert_eq!(Action::from_ret(0x0003_0005), Action::Trap(5));
        assert_eq!(Action::from_ret(0x0005_000d), Action::Errno(13));
        assert_eq!(Action::from_ret(0x7fc0_0000), Action::UserNotif);
        assert_eq!(Action::from_ret(0x7ff0_0001), Action::Trace(1));
        assert_eq!(Action::from_ret(0x7ffc_0000), Action::Log);
        assert_eq!(Action::from_ret(0x7fff_0000), Action::Allow);
        assert_eq!(Action::from_ret(0x1234_0000), Action::KillProcess);
        assert!(Action::Log.allows() && !Action::Trace(0).allows());
    }
}
