//! Choosing the implementation of an IFUNC nothing in the target has resolved yet, by running
//! its resolver inside the target, as ld.so would on the first call.
//!
//! **What ld.so does.** On x86-64, glibc (2.36 included) invokes a resolver with no arguments
//! (`elf_ifunc_invoke` casts it to `ElfW(Addr) (*) (void)`; x86 passes no hwcap, unlike
//! aarch64), on the thread that makes the first call (lazy binding) or at start-up (`BIND_NOW`,
//! `IRELATIVE`, `dlsym`). glibc's own resolvers read the CPU features ld.so computed at start-up
//! (`_dl_x86_get_cpu_features`); gcc's `target_clones` and hand-written resolvers read libgcc's
//! `__cpu_model`, filled by a constructor. Neither changes once the process runs, so calling
//! the resolver now returns what ld.so would install for a call made now: it is the same
//! function ld.so calls, on a thread of the target, with the same (absent) arguments. The
//! choice is not recomputed from the CPU by suture: a resolver may depend on anything
//! (tunables, an environment variable, its library's state).
//!
//! **How it runs.** suture maps a private region in a first short stop
//! (`MAP_FIXED_NOREPLACE` in a free range near the first resolver, after checking every call
//! against the target's seccomp filters): one read-execute page of generated code, then
//! read-write pages with a block (saved registers, results), an XSAVE area and a 64 KiB stack
//! of its own, and writes the code while the target runs. In a second stop, one thread in
//! suture's interrupt stop that does not block the marker signal (see [`crate::commit`]) is
//! pointed at the code, which
//! 1. switches to the private stack, clears the direction flag and saves the whole extended
//!    register state with `xsave64` (`fxsave64` on a CPU without XSAVE, which then has no
//!    other state), then sets a flag;
//! 2. calls each resolver with zeroed argument registers and stores its result, then sets the
//!    "done" flag;
//! 3. restores the extended state (`xrstor64`), sends its own thread the marker signal with
//!    `tgkill`, restores every general-purpose register and the flags from the block and
//!    jumps back to where the thread was stopped (a thread stopped inside a restartable
//!    system call re-executes it, as in the commit routine).
//!
//! The other threads stay stopped throughout; signals that arrive meanwhile are held and
//! re-injected at resume ([`StoppedProcess::run_routine_within`]). suture restores the
//! thread's registers itself at the marker; a third stop unmaps the region. As in apply (map,
//! write while running, switch), the code is written while the target runs and the stop in
//! which a thread is borrowed does nothing else.
//!
//! **Failures.** A resolver that faults: the signal is discarded, the thread is sent to step 3
//! (so its extended state comes back too) and the symbol is refused. A resolver that does not
//! return within [`RESOLVER_DEADLINE`]: the thread is interrupted, sent to step 3 the same
//! way, and the symbol refused (whatever the resolver was doing is abandoned on its own
//! stack). If suture is killed at any point after the thread starts, the routine completes by
//! itself (the marker signal is ignored by default) and the thread resumes its own code with
//! its own registers; only the region stays mapped, referenced by nothing. A resolver that
//! crashes or hangs while suture is gone would have crashed or hung the program's own first
//! call the same way. Refused up front: processes where every thread blocks (or the process
//! catches) all marker candidates (suture could not end a hung resolver without a stop at the
//! marker), and seccomp filters that forbid any call suture makes.
//!
//! Every result must point into an executable mapping of the target, else it is refused.

use std::time::Duration;

use crate::apply::{namespace_pid, regs_array, restartable, ApplyError, Outcome};
use crate::commit::{Asm, RAX, SYS_GETPID, SYS_GETTID, SYS_TGKILL};
use crate::ids::{Pid, RemoteAddr, Tid};
use crate::maps::Maps;
use crate::remote::{Prot, RoutineEnd, SyscallSite};
use crate::seccomp::Injected;
use crate::stop::{Registers, StopKind, StoppedProcess};

/// How long a resolver call may take before it is abandoned (generous: the machine may be
/// loaded; the target's other threads are stopped meanwhile).
pub const RESOLVER_DEADLINE: Duration = Duration::from_secs(10);

const PAGE: u64 = 4096;
const STACK: u64 = 64 * 1024;
/// Block offsets: saved registers (18 × u64, [`crate::commit::REGS`] order), flags, results.
const SAVED_FLAG: u64 = 144;
const DONE_FLAG: u64 = 152;
const RESULTS: u64 = 160;
/// Results that fit the block page.
pub const MAX_RESOLVERS: usize = ((PAGE - RESULTS) / 8) as usize;

/// A resolver to run: the IFUNC's name (for messages) and the resolver's address.
#[derive(Clone, Debug)]
pub struct Call {
    pub name: String,
    pub resolver: RemoteAddr,
}

/// The size of the XSAVE area for the state the OS enabled, or `None` without XSAVE.
fn xsave_size() -> Option<u64> {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return None;
    }
    Some(u64::from(std::arch::x86_64::__cpuid_count(0xd, 0).ebx))
}

/// The generated routine for a region at `base`.
struct Routine {
    code: Vec<u8>,
    code_addr: u64,
    /// Where the block is (saved registers, flags, results).
    block: u64,
    /// The restoring tail (step 3): entered directly to abandon a resolver.
    epilogue: u64,
    marker_rip: u64,
    calls: Vec<Injected>,
    size: u64,
}

fn generate(base: u64, resolvers: &[RemoteAddr], marker: i32, xsave: Option<u64>) -> Routine {
    let block = base + PAGE;
    let area = block + PAGE;
    // fxsave needs 512 bytes; xsave the size the CPU reports (both 64-byte aligned here).
    let area_len = xsave.unwrap_or(512).max(576).div_ceil(PAGE) * PAGE;
    let stack_top = area + area_len + STACK;
    let size = stack_top - base;
    let mut a = Asm::new(base);
    let mut calls = Vec::new();
    const RCX: u8 = 1;
    const RSP: u8 = 4;
    let set_flag = |a: &mut Asm, at: u64| {
        a.movabs(RCX, at);
        a.bytes(&[0x48, 0xc7, 0x01, 1, 0, 0, 0]); // mov qword [rcx], 1
    };
    // 1. Own stack, direction flag clear, extended state saved.
    a.movabs(RSP, stack_top);
    a.bytes(&[0xfc]); // cld
    a.bytes(&[0xb8, 0xff, 0xff, 0xff, 0xff]); // mov eax, -1 (every state component)
    a.bytes(&[0xba, 0xff, 0xff, 0xff, 0xff]); // mov edx, -1
    a.movabs(RCX, area);
    match xsave {
        Some(_) => a.bytes(&[0x48, 0x0f, 0xae, 0x21]), // xsave64 [rcx]
        None => a.bytes(&[0x48, 0x0f, 0xae, 0x01]),    // fxsave64 [rcx]
    }
    set_flag(&mut a, block + SAVED_FLAG);
    // 2. Each resolver, with no arguments (zeroed registers), its result stored.
    for (i, r) in resolvers.iter().enumerate() {
        a.bytes(&[0x31, 0xff]); // xor edi, edi
        a.bytes(&[0x31, 0xf6]); // xor esi, esi
        a.bytes(&[0x31, 0xd2]); // xor edx, edx
        a.movabs(RAX, r.0);
        a.bytes(&[0xff, 0xd0]); // call rax
        a.movabs(RCX, block + RESULTS + 8 * i as u64);
        a.bytes(&[0x48, 0x89, 0x01]); // mov [rcx], rax
    }
    set_flag(&mut a, block + DONE_FLAG);
    // 3. The epilogue: extended state back, marker, registers back.
    let epilogue = a.here();
    a.movabs(RSP, stack_top);
    a.bytes(&[0xb8, 0xff, 0xff, 0xff, 0xff]);
    a.bytes(&[0xba, 0xff, 0xff, 0xff, 0xff]);
    a.movabs(RCX, area);
    match xsave {
        Some(_) => a.bytes(&[0x48, 0x0f, 0xae, 0x29]), // xrstor64 [rcx]
        None => a.bytes(&[0x48, 0x0f, 0xae, 0x09]),    // fxrstor64 [rcx]
    }
    let [getpid, gettid, marker_rip] = a.marker(marker);
    calls.extend([
        (SYS_GETPID, getpid),
        (SYS_GETTID, gettid),
        (SYS_TGKILL, marker_rip),
    ]);
    // The flags through the private stack (rsp is its top), every register, the saved rip.
    a.restore_registers(block);
    assert!(a.code.len() as u64 <= PAGE, "the routine fits its page");
    Routine {
        code: a.code,
        code_addr: base,
        block,
        epilogue,
        marker_rip,
        calls: calls
            .into_iter()
            .map(|(nr, ip)| {
                let name = match nr {
                    SYS_GETPID => "getpid",
                    SYS_GETTID => "gettid",
                    _ => "tgkill",
                };
                Injected::new(name, nr, [0; 6], ip)
            })
            .collect(),
        size,
    }
}

/// The thread to run the routine: one in suture's interrupt stop (not at a ptrace event
/// inside a system call, not in a signal-delivery-stop, whose signal the kernel would deliver
/// if suture died) that does not block `sig`.
fn pick_thread(sp: &StoppedProcess, sig: i32) -> Option<(Tid, Registers)> {
    let kinds = sp.stop_kinds().ok()?;
    let regs = sp.all_regs().ok()?;
    regs.into_iter().find(|(tid, _)| {
        let interrupted = kinds
            .iter()
            .any(|(t, k)| t == tid && matches!(k, StopKind::Interrupt));
        interrupted && matches!(sp.signal_mask(*tid), Ok(mask) if mask & (1 << (sig - 1)) == 0)
    })
}

fn refuse(detail: String, outcome: Outcome) -> ApplyError {
    ApplyError::Target(detail, outcome)
}

/// Runs `calls` in the target and returns each resolver's result, checked to point into an
/// executable mapping of `maps`. Three short stops: map the region (the seccomp check first),
/// run the routine, release the region. Errors leave the target untouched (the region
/// released) unless it exited.
pub fn call_resolvers(
    pid: Pid,
    maps: &Maps,
    site: &SyscallSite,
    calls: &[Call],
) -> Result<Vec<u64>, ApplyError> {
    let names = || {
        calls
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if calls.len() > MAX_RESOLVERS {
        return Err(ApplyError::Patch(format!(
            "the patch needs {} IFUNC resolvers run, at most {MAX_RESOLVERS} are supported",
            calls.len()
        )));
    }
    let marker = crate::apply::marker_signal(pid);
    if marker == 0 {
        return Err(refuse(
            format!(
                "cannot run the IFUNC resolver of {}: the process catches every signal suture \
                 could end the call with",
                names()
            ),
            Outcome::Untouched,
        ));
    }
    let xsave = xsave_size();
    let resolvers: Vec<RemoteAddr> = calls.iter().map(|c| c.resolver).collect();
    let size = generate(0, &resolvers, marker, xsave).size;
    let base = maps
        .free_range_near(resolvers[0], size, PAGE)
        .ok_or_else(|| {
            refuse(
                format!("no free address range of {size} bytes to run IFUNC resolvers in"),
                Outcome::Untouched,
            )
        })?;
    let r = generate(base.0, &resolvers, marker, xsave);
    let untouched = |e: crate::error::Error| ApplyError::process(e, Outcome::Untouched);

    // 1. Map the region (code read-execute, the rest read-write) and fill in the code.
    let mut sp = StoppedProcess::stop(pid).map_err(untouched)?;
    let mapped = map(&mut sp, site, base, &r, marker);
    let resumed = sp.resume();
    mapped?;
    let release = || {
        let done = StoppedProcess::stop(pid).and_then(|mut sp| {
            let r = sp
                .remote_ignoring_seccomp(site)
                .and_then(|mut rm| rm.munmap(base, r.size));
            sp.resume().and(r)
        });
        if let Err(e) = &done {
            tracing::warn!(pid = pid.0, %e, "could not release the IFUNC resolver region");
        }
    };
    if let Err(e) = resumed.and_then(|()| sp_write_code(pid, base, &r)) {
        release();
        return Err(untouched(e));
    }

    // 2. Run the routine.
    let mut sp = match StoppedProcess::stop(pid) {
        Ok(sp) => sp,
        Err(e) => {
            release();
            return Err(untouched(e));
        }
    };
    let outcome = run(&mut sp, &r, marker, calls.len());
    let resumed = sp.resume();
    // 3. Release the region, unless its thread may still need it.
    let keep = matches!(&outcome, Err(Ran::Stuck(_)) | Err(Ran::Exited(_)));
    if !keep {
        release();
    }
    let results = match outcome {
        Ok(v) => v,
        Err(Ran::Exited(e)) => return Err(ApplyError::process(e, Outcome::Exited)),
        Err(Ran::Process(e)) => return Err(untouched(e)),
        Err(Ran::Refused(why)) | Err(Ran::Stuck(why)) => {
            return Err(refuse(
                format!(
                    "running the IFUNC resolver of {} in the target failed: {why}",
                    names()
                ),
                Outcome::Untouched,
            ))
        }
    };
    resumed.map_err(untouched)?;
    for (c, &v) in calls.iter().zip(&results) {
        let ok = maps.find(RemoteAddr(v)).is_some_and(|m| m.perms.exec);
        if !ok {
            return Err(ApplyError::Patch(format!(
                "the IFUNC resolver of {} returned {v:#x}, which is not in executable memory of \
                 the process",
                c.name
            )));
        }
    }
    Ok(results)
}

/// Step 1 in the stop: the seccomp check of every call suture and the routine make, then the
/// mappings.
fn map(
    sp: &mut StoppedProcess,
    site: &SyscallSite,
    base: RemoteAddr,
    r: &Routine,
    marker: i32,
) -> Result<(), ApplyError> {
    let pid = sp.pid();
    let untouched = |e: crate::error::Error| ApplyError::process(e, Outcome::Untouched);
    let ip = site.addr().0 + 2;
    let ns = namespace_pid(pid).unwrap_or(pid.0) as u64;
    let mut injected = vec![
        Injected::mmap(ip, base.0, r.size, 3, 0x10_0022, -1, 0),
        Injected::mmap(ip, base.0, PAGE, 5, FIXED, -1, 0),
        Injected::munmap(ip, base.0, r.size),
    ];
    for c in &r.calls {
        let mut c = c.clone();
        if c.nr == SYS_TGKILL {
            c.args = [ns, ns, marker as u64, 0, 0, 0];
        }
        injected.push(c);
    }
    sp.check_seccomp(&injected).map_err(untouched)?;
    let mut rm = sp.remote_ignoring_seccomp(site).map_err(untouched)?;
    rm.mmap_anonymous_at(base, r.size, Prot::RW)
        .map_err(untouched)?;
    // Read-execute from the start (MDWE forbids gaining PROT_EXEC, not mapping it).
    if let Err(e) = rm.mmap(base, PAGE, Prot::RX, FIXED, -1, 0) {
        let _ = rm.munmap(base, r.size);
        return Err(untouched(e));
    }
    Ok(())
}

const FIXED: u64 = 0x32; // MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED

fn sp_write_code(pid: Pid, base: RemoteAddr, r: &Routine) -> crate::error::Result<()> {
    crate::mem::ProcessMemory::open(pid)?.write(base, &r.code)
}

/// How step 2 failed.
enum Ran {
    /// The target died.
    Exited(crate::error::Error),
    /// A process-level error before the thread was pointed at the routine.
    Process(crate::error::Error),
    /// The resolver faulted or hung; the thread was put back where it was.
    Refused(String),
    /// The thread could not be put back through the epilogue: it may still need the region.
    Stuck(String),
}

/// Step 2 in the stop: one thread runs the routine; on failure it is put back.
fn run(sp: &mut StoppedProcess, r: &Routine, marker: i32, n: usize) -> Result<Vec<u64>, Ran> {
    let Some((tid, saved)) = pick_thread(sp, marker) else {
        return Err(Ran::Refused(
            "every thread blocks the marker signal or is not in an interrupt stop".into(),
        ));
    };
    let mut block = vec![0u8; RESULTS as usize];
    for (i, v) in regs_array(&restartable(saved)).iter().enumerate() {
        block[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    sp.mem()
        .write(RemoteAddr(r.block), &block)
        .map_err(Ran::Process)?;
    let end = RoutineEnd::Signal {
        signo: marker,
        rip: r.marker_rip,
    };
    let first = sp.run_routine_within(
        tid,
        RemoteAddr(r.code_addr),
        end,
        saved,
        RESOLVER_DEADLINE,
        "ifunc",
    );
    let flag = |sp: &StoppedProcess, off: u64| {
        sp.mem().read_u64(RemoteAddr(r.block + off)).map(|v| v == 1)
    };
    let done = flag(sp, DONE_FLAG).unwrap_or(false);
    let failure = match first {
        Err(e) if e.target_exited() => return Err(Ran::Exited(e)),
        Ok(()) if done => None,
        Ok(()) => Some(format!(
            "it did not return within {}s",
            RESOLVER_DEADLINE.as_secs()
        )),
        Err(e) => Some(e.to_string()),
    };
    // On success suture restored the thread's registers at the marker. Otherwise the thread
    // never reached the marker (it stops there whenever it passes it: the signal is not
    // blocked), so it is in the routine or a resolver, or stopped by the resolver's fault
    // with only its general registers put back: it goes through the epilogue, which restores
    // its extended state and its registers (it needs the region until then).
    let back = sp.regs(tid).is_ok_and(|x| x.rip == saved.rip);
    let failure = match failure {
        None if !back => Some("the routine did not end at its marker".to_string()),
        f => f,
    };
    if let Some(why) = failure {
        let recovered = if flag(sp, SAVED_FLAG).unwrap_or(false) {
            sp.run_routine_within(
                tid,
                RemoteAddr(r.epilogue),
                end,
                saved,
                RESOLVER_DEADLINE,
                "ifunc-epilogue",
            )
            .and_then(|()| sp.regs(tid))
            .map(|x| x.rip == saved.rip)
        } else {
            // Stopped before its state was saved: nothing of it changed but the registers.
            sp.set_regs(tid, saved)
                .and_then(|()| sp.keep_regs(tid))
                .map(|()| true)
        };
        return Err(match recovered {
            Ok(true) => Ran::Refused(why),
            Err(e) if e.target_exited() => Ran::Exited(e),
            other => Ran::Stuck(format!(
                "{why}; and its thread could not be put back where it was ({other:?})"
            )),
        });
    }
    (0..n)
        .map(|i| {
            sp.mem()
                .read_u64(RemoteAddr(r.block + RESULTS + 8 * i as u64))
        })
        .collect::<Result<Vec<u64>, _>>()
        .map_err(Ran::Process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routine_calls_each_resolver_and_ends_with_the_marker_and_a_jump_back() {
        let r = generate(
            0x10000,
            &[RemoteAddr(0x7000_1000), RemoteAddr(0x7000_2000)],
            libc::SIGURG,
            Some(2432),
        );
        assert_eq!(r.block, 0x11000);
        // Code page, block page, an XSAVE area of one page, the stack.
        assert_eq!(r.size, 3 * PAGE + STACK);
        let code = &r.code;
        // Each resolver address appears once as a movabs rax immediate followed by call rax.
        for addr in [0x7000_1000u64, 0x7000_2000] {
            let mut pat = vec![0x48, 0xb8];
            pat.extend_from_slice(&addr.to_le_bytes());
            pat.extend_from_slice(&[0xff, 0xd0]);
            assert!(code.windows(pat.len()).any(|w| w == pat), "{addr:#x}");
        }
        // xsave64 before the calls, xrstor64 after the epilogue.
        let find = |p: &[u8]| code.windows(p.len()).position(|w| w == p).unwrap();
        assert!(find(&[0x48, 0x0f, 0xae, 0x21]) < (r.epilogue - 0x10000) as usize);
        assert!(find(&[0x48, 0x0f, 0xae, 0x29]) > (r.epilogue - 0x10000) as usize);
        let m = (r.marker_rip - 0x10000) as usize;
        assert_eq!(&code[m - 2..m], &[0x0f, 0x05]);
        let n = code.len();
        assert_eq!(&code[n - 6..n - 4], &[0xff, 0x25]);
        let names: Vec<&str> = r.calls.iter().map(|c| c.name).collect();
        assert_eq!(names, ["getpid", "gettid", "tgkill"]);
        // Without XSAVE: fxsave64/fxrstor64.
        let f = generate(0x10000, &[RemoteAddr(1)], libc::SIGURG, None);
        assert!(f.code.windows(4).any(|w| w == [0x48, 0x0f, 0xae, 0x01]));
        assert!(f.code.windows(4).any(|w| w == [0x48, 0x0f, 0xae, 0x09]));
    }
}
