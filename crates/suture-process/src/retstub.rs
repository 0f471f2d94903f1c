//! Return stubs: catching a thread the moment it leaves a busy function.
//!
//! A function that sleeps inside itself and is called again at once (a worker's `poll` loop
//! inside one function, a helper that waits on a condition) is on its thread's stack almost
//! always: stopping the target at random moments never finds it off the stack, so an apply
//! that only polls times out. Instead, when a thread is found inside busy code with a complete
//! unwind, suture points the return address of its *outermost* busy frame at a stub in the
//! patch region. When the function returns, the thread runs the stub, which parks it (a
//! `nanosleep` loop of 1 ms steps) until suture releases it, then jumps to the real return
//! address. While it is parked no busy frame is on its stack, so the switch can happen.
//!
//! **SIGKILL-safety.** The stub needs no tracer: if suture dies at any point, a thread that
//! returns into a stub parks for at most [`PARK_STEPS`] steps (about a second) and then goes
//! on to its real return address by itself. Nothing else is left: no breakpoint, no debug
//! register, no single-step flag (the kernel keeps those of a dead tracer; a trap would then
//! kill the target). The region holding stubs is never unmapped while one may be in use: it is
//! marked retired (state "reverted") before the first stub is armed, so it is not reclaimed as
//! a leftover, and a failed apply retires it instead of unmapping it.
//!
//! **Layout.** Two pages at the end of the patch region. The code page (read-execute) holds
//! [`SLOTS`] entries of 16 bytes, entry *i* being `lea slot_i(%rip), %rdi; jmp common`, then
//! the common code, then the `timespec` of one step. The slot page (read-write) holds, for
//! entry *i* at offset 16 *i*: the real return address (`u64`, 0 = slot free) and a state
//! (`u32`): [`ARMED`] by suture, [`PARKED`] by the stub on arrival, [`RELEASE`] by suture. The
//! stub clears the state, then the return address, as its last acts before the jump.
//!
//! What the stub preserves: `rax` and `rdx` (return values), every callee-saved register, the
//! vector registers (no instruction touches them), and the stack below the caller's stack
//! pointer is free after a return (a caller cannot keep data in the red zone across a call).
//! It clobbers `rcx`, `rsi`, `rdi`, `r8`, `r10`, `r11` and the flags, which the caller cannot
//! expect to survive a call.
//!
//! Not used: on threads whose unwind was incomplete (no exact return address slot), on
//! targets whose seccomp filters refuse the stub's `nanosleep`, on targets with a shadow
//! stack (CET) enabled, where a changed return address would be a control-flow violation, and
//! on programs that can throw exceptions or unwind panics ([`may_unwind_through`]): an
//! exception leaving the function while its return address names a stub would find no unwind
//! rules there and abort the program. Those targets are only polled.

use crate::ids::RemoteAddr;
use crate::mem::ProcessMemory;

pub const PAGE: u64 = 4096;
/// Entries in the code page (16 bytes each, below the common code at 2048).
pub const SLOTS: usize = 128;
const ENTRY: u64 = 16;
const COMMON: u64 = 2048;
const TIMESPEC: u64 = 4080;
/// Steps of 1 ms a parked thread waits for its release before it goes on by itself.
pub const PARK_STEPS: u32 = 1000;

pub const ARMED: u32 = 1;
pub const PARKED: u32 = 2;
pub const RELEASE: u32 = 3;

/// Where a region's stubs are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubArea {
    /// The code page (read-execute).
    pub code: u64,
    /// The slot page (read-write), right after it.
    pub slots: u64,
}

impl StubArea {
    pub fn at(code: u64) -> StubArea {
        StubArea {
            code,
            slots: code + PAGE,
        }
    }

    /// The address a hijacked return goes to for slot `i`.
    pub fn entry(&self, i: usize) -> u64 {
        self.code + ENTRY * i as u64
    }

    fn slot(&self, i: usize) -> RemoteAddr {
        RemoteAddr(self.slots + ENTRY * i as u64)
    }

    pub fn contains_code(&self, pc: u64) -> bool {
        (self.code..self.code + PAGE).contains(&pc)
    }

    /// The address of the stub's `syscall` instruction (for the seccomp check).
    pub fn syscall_ip(&self) -> u64 {
        self.code + COMMON + 0x26
    }

    /// The `timespec` the stub passes to `nanosleep`.
    pub fn timespec(&self) -> u64 {
        self.code + TIMESPEC
    }

    /// Reads every slot: (return address, state).
    pub fn read_slots(&self, mem: &ProcessMemory) -> crate::error::Result<Vec<(u64, u32)>> {
        let b = mem.read_vec(RemoteAddr(self.slots), SLOTS * ENTRY as usize)?;
        Ok(b.chunks_exact(ENTRY as usize)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                    u32::from_le_bytes(c[8..12].try_into().expect("4 bytes")),
                )
            })
            .collect())
    }

    /// Arms slot `i` with the real return address (state [`ARMED`]).
    pub fn arm(&self, mem: &ProcessMemory, i: usize, ret: u64) -> crate::error::Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&ret.to_le_bytes());
        b[8..12].copy_from_slice(&ARMED.to_le_bytes());
        mem.write(self.slot(i), &b)
    }

    pub fn set_state(&self, mem: &ProcessMemory, i: usize, state: u32) -> crate::error::Result<()> {
        mem.write(self.slot(i).offset(8), &state.to_le_bytes())
    }

    /// Frees slot `i` (only when no thread can be running its stub).
    pub fn free(&self, mem: &ProcessMemory, i: usize) -> crate::error::Result<()> {
        mem.write(self.slot(i), &[0u8; 16])
    }
}

/// The code page: identical for every region (all addresses in it are relative), so a retired
/// region's page can be written again while a parked thread runs it.
pub fn code_page() -> Vec<u8> {
    let mut page = vec![0xccu8; PAGE as usize];
    for i in 0..SLOTS as u64 {
        let at = (i * ENTRY) as usize;
        // lea slot_i(%rip), %rdi: slot i is one page after entry i, both 16 bytes apart.
        let lea = (PAGE + i * ENTRY) as i64 - (i * ENTRY + 7) as i64;
        page[at..at + 3].copy_from_slice(&[0x48, 0x8d, 0x3d]);
        page[at + 3..at + 7].copy_from_slice(&(lea as i32).to_le_bytes());
        // jmp common
        let rel = COMMON as i64 - (i * ENTRY + 12) as i64;
        page[at + 7] = 0xe9;
        page[at + 8..at + 12].copy_from_slice(&(rel as i32).to_le_bytes());
    }
    let mut common: Vec<u8> = vec![
        0x50, // push %rax
        0x52, // push %rdx
        0xc7, 0x47, 0x08, 0x02, 0x00, 0x00, 0x00, // movl $PARKED, 8(%rdi)
        0x41, 0xb8, 0, 0, 0, 0, // mov $PARK_STEPS, %r8d
        // loop (COMMON + 0x0f):
        0x83, 0x7f, 0x08, 0x03, // cmpl $RELEASE, 8(%rdi)
        0x74, 0x1b, // je out
        0x57, // push %rdi
        0x41, 0x50, // push %r8
        0x48, 0x8d, 0x3d, 0, 0, 0, 0, // lea timespec(%rip), %rdi
        0x31, 0xf6, // xor %esi, %esi
        0xb8, 0x23, 0x00, 0x00, 0x00, // mov $SYS_nanosleep, %eax
        0x0f, 0x05, // syscall
        0x41, 0x58, // pop %r8
        0x5f, // pop %rdi
        0x41, 0xff, 0xc8, // dec %r8d
        0x75, 0xdf, // jne loop
        // out (COMMON + 0x30):
        0xc7, 0x47, 0x08, 0x00, 0x00, 0x00, 0x00, // movl $0, 8(%rdi)
        0x4c, 0x8b, 0x1f, // mov (%rdi), %r11
        0x48, 0xc7, 0x07, 0x00, 0x00, 0x00, 0x00, // movq $0, (%rdi)
        0x5a, // pop %rdx
        0x58, // pop %rax
        0x41, 0xff, 0xe3, // jmp *%r11
    ];
    common[11..15].copy_from_slice(&PARK_STEPS.to_le_bytes());
    let lea_end = COMMON + 0x1f;
    common[0x1b..0x1f].copy_from_slice(&((TIMESPEC as i64 - lea_end as i64) as i32).to_le_bytes());
    page[COMMON as usize..COMMON as usize + common.len()].copy_from_slice(&common);
    page[TIMESPEC as usize..TIMESPEC as usize + 8].copy_from_slice(&0u64.to_le_bytes());
    page[TIMESPEC as usize + 8..TIMESPEC as usize + 16]
        .copy_from_slice(&1_000_000u64.to_le_bytes());
    page
}

/// Whether any thread of `pid` runs under a seccomp filter (`Seccomp: 2` in its status), or
/// that cannot be read. Used where no stop is at hand to run the filters (crate::seccomp).
pub fn under_seccomp_filter(pid: crate::ids::Pid) -> bool {
    let dir = crate::maps::live_proc_dir(pid).join("task");
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return true;
    };
    tasks.flatten().any(|t| {
        crate::maps::read_proc_string(t.path().join("status")).map_or(true, |st| {
            st.lines()
                .any(|l| l.strip_prefix("Seccomp:").is_some_and(|v| v.trim() != "0"))
        })
    })
}

/// Whether the program can unwind a stack by its unwind tables (C++ `throw`, Rust panics):
/// an unwinder that meets a stub's address as a return address finds no unwind rules there and
/// aborts the program. True when any mapped object imports `_Unwind_RaiseException` or
/// `__cxa_throw` (libstdc++ does; so does a Rust program), or the executable defines them
/// (linked statically). Thread cancellation (`_Unwind_ForcedUnwind`) is not counted: glibc
/// ends such an unwind at a frame without rules by finishing the thread.
pub fn may_unwind_through(mapped: &[crate::symbols::Mapped]) -> bool {
    const THROW: [&str; 2] = ["_Unwind_RaiseException", "__cxa_throw"];
    mapped.iter().any(|m| {
        m.symbols
            .dyn_relocs
            .iter()
            .any(|r| r.symbol.as_deref().is_some_and(|s| THROW.contains(&s)))
            || (m.is_exec && THROW.iter().any(|s| m.symbols.global(s).is_some()))
    })
}

/// Whether a shadow stack (CET) is enabled in the process (`x86_Thread_features` in its
/// status, kernels 6.6 and later). A stub there would be a control-flow violation.
pub fn shadow_stack_enabled(status: &str) -> bool {
    status.lines().any(|l| {
        l.strip_prefix("x86_Thread_features:")
            .is_some_and(|v| v.split_whitespace().any(|f| f == "shstk"))
    })
}

/// The areas of `areas` that have an armed slot now (read while the target runs, so that the
/// stop only looks at those: a stub a killed suture left armed stays armed until undone).
pub fn with_armed_slots(mem: &ProcessMemory, areas: &[StubArea]) -> Vec<StubArea> {
    areas
        .iter()
        .filter(|a| {
            a.read_slots(mem)
                .is_ok_and(|slots| slots.iter().any(|&(ret, state)| ret != 0 && state == ARMED))
        })
        .copied()
        .collect()
}

/// Undoes the return stubs an earlier suture armed and never released because it died: an
/// armed slot of `areas` that `own` (this operation's slots: area code page, slot) does not
/// name, whose entry address a thread's live stack holds, gets its real return address back in
/// that stack word (and in the snapshot), and the slot is freed. An area a thread is running
/// is left alone (its thread may be about to read its slot). Runs in a stop; returns how many
/// stubs were undone.
pub fn reclaim(
    mem: &ProcessMemory,
    areas: &[StubArea],
    rips: &[u64],
    stacks: &mut [crate::stack::StackSnapshot],
    own: &[(u64, usize)],
) -> crate::error::Result<usize> {
    let mut undone = 0;
    for area in areas {
        if rips.iter().any(|&ip| area.contains_code(ip)) {
            continue;
        }
        let slots = area.read_slots(mem)?;
        for (i, &(ret, state)) in slots.iter().enumerate() {
            if ret == 0 || state != ARMED || own.contains(&(area.code, i)) {
                continue;
            }
            let entry = area.entry(i).to_le_bytes();
            let found = stacks.iter_mut().find_map(|s| {
                let k = s.bytes.chunks_exact(8).position(|w| w == entry)?;
                Some((s, k * 8))
            });
            let Some((stack, off)) = found else { continue };
            mem.write(RemoteAddr(stack.base + off as u64), &ret.to_le_bytes())?;
            stack.bytes[off..off + 8].copy_from_slice(&ret.to_le_bytes());
            area.free(mem, i)?;
            undone += 1;
        }
    }
    Ok(undone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_page_matches_the_assembler() {
        let page = code_page();
        // Entry 0 and entry 5, as `as` assembles `lea 4089(%rip),%rdi; jmp common`.
        assert_eq!(
            &page[..12],
            &[0x48, 0x8d, 0x3d, 0xf9, 0x0f, 0, 0, 0xe9, 0xf4, 0x07, 0, 0]
        );
        let e5 = 5 * 16;
        assert_eq!(
            &page[e5..e5 + 12],
            &[0x48, 0x8d, 0x3d, 0xf9, 0x0f, 0, 0, 0xe9, 0xa4, 0x07, 0, 0]
        );
        // The common code's lea reaches the timespec; the syscall is where syscall_ip says.
        let c = COMMON as usize;
        assert_eq!(
            &page[c + 0x18..c + 0x1f],
            &[0x48, 0x8d, 0x3d, 0xd1, 0x07, 0, 0]
        );
        let area = StubArea::at(0x10000);
        assert_eq!(
            &page[(area.syscall_ip() - area.code) as usize..][..2],
            &[0x0f, 0x05]
        );
        assert_eq!(page[c + 0x09..c + 0x0f], [0x41, 0xb8, 0xe8, 0x03, 0, 0]);
        assert_eq!(
            &page[TIMESPEC as usize + 8..][..8],
            &1_000_000u64.to_le_bytes()
        );
    }

    #[test]
    fn the_stub_runs_in_a_real_process() {
        // Assemble a caller that "returns" into entry 3 of a stub page mapped next to a slot
        // page, with the slot released in advance: the stub must come back to the real return
        // address with rax and rdx intact and the slot cleared. Done in a child process.
        let dir = std::env::temp_dir().join(format!("suture-retstub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut hex = String::new();
        for b in code_page() {
            hex.push_str(&format!("0x{b:02x},"));
        }
        let src = format!(
            r#"#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
static const unsigned char page[] = {{{hex}}};
int main(void) {{
    unsigned char *m = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(m, page, 4096);
    mprotect(m, 4096, PROT_READ | PROT_EXEC);
    uint64_t *slot = (uint64_t *)(m + 4096 + 3 * 16);
    uint64_t rax, rdx;
    __asm__ volatile(
        "lea 1f(%%rip), %%rcx\n\t"
        "mov %%rcx, (%[slot])\n\t"
        "movl $3, 8(%[slot])\n\t"
        "mov $0x1111, %%rax\n\t"
        "mov $0x2222, %%rdx\n\t"
        "push %[entry]\n\t"
        "ret\n"
        "1:\n\t"
        : "=&a"(rax), "=&d"(rdx)
        : [slot] "r"(slot), [entry] "r"(m + 3 * 16)
        : "rcx", "rsi", "rdi", "r8", "r10", "r11", "memory", "cc");
    printf("%lx %lx %lx %lx\n", (unsigned long)rax, (unsigned long)rdx,
           (unsigned long)slot[0], (unsigned long)(slot[1] & 0xffffffff));
    return 0;
}}
"#
        );
        std::fs::write(dir.join("t.c"), src).unwrap();
        let st = std::process::Command::new("gcc")
            .args(["-O2", "-mno-red-zone", "-o"])
            .arg(dir.join("t"))
            .arg(dir.join("t.c"))
            .status()
            .unwrap();
        assert!(st.success());
        let out = std::process::Command::new(dir.join("t")).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1111 2222 0 0");
    }

    #[test]
    fn reads_the_shadow_stack_feature() {
        assert!(shadow_stack_enabled(
            "Name:\tx\nx86_Thread_features:\tshstk wrss\n"
        ));
        assert!(!shadow_stack_enabled("Name:\tx\nx86_Thread_features:\t\n"));
        assert!(!shadow_stack_enabled("Name:\tx\n"));
    }
}
