//! The commit routine: the switch to (or back from) patched code, executable by the target.
//!
//! Writing several jumps with one `pwrite` each from suture would leave a half-patched process
//! if suture were killed between two writes. So one stopped thread of the target is pointed
//! at this routine first. Suture then writes the same bytes itself and gives the thread its
//! registers back ([`StoppedProcess::commit_direct`](crate::stop::StoppedProcess::commit_direct)):
//! the routine only runs if suture dies in between, and completes the switch (bytes already
//! written are written again, unchanged). With `SUTURE_COMMIT=routine` (the earlier design,
//! kept for comparison) the thread always runs it, as described below. It opens `/proc/thread-self/mem` (`/proc/self/mem` has no memory once the
//! main thread has exited), writes every jump (and the header's new state),
//! closes the file, sends its own thread the *marker signal* with `tgkill`, restores every
//! general-purpose register and the flags from the commit block, and jumps back to where the
//! thread was stopped.
//!
//! - If suture dies before the thread is pointed here, nothing was written.
//! - Once the thread runs the routine, it completes alone: no breakpoint, no tracer needed.
//! - If a write fails, the routine writes back the bytes it had already replaced and leaves the
//!   header state unchanged, so the target runs its original code.
//!
//! How suture learns that the routine has finished, without a stop per system call: the marker
//! signal is one whose default action is to be ignored (`SIGURG`, `SIGWINCH` or `SIGCHLD`), that
//! the target does not catch and that the chosen thread does not block. While suture traces the
//! thread, the signal gives a signal-delivery-stop at a known address; suture restores the
//! thread's registers there and discards the signal (the fast path: the routine runs at full
//! speed, however many jumps it writes). If suture is gone, the signal is ignored by the kernel
//! and the routine restores the registers itself. When no such signal exists for any stopped
//! thread, the routine sends signal 0 (no signal at all) and suture follows it with
//! `PTRACE_SYSCALL` instead, skipping the `tgkill` at its entry (the slow path: two stops per
//! system call). The routine uses no stack except 256 bytes below the thread's red zone to
//! restore the flags.
//!
//! Layout of the commit block (read-only for the target; written by suture through
//! `/proc/PID/mem`):
//! ```text
//!   0   saved registers: rax rbx rcx rdx rsi rdi rbp rsp r8 .. r15 rip rflags  (18 × u64)
//! 144   "/proc/thread-self/mem\0"
//! 168   state value (u32) written to the header when every jump is in place
//! 172   reserved (u32)
//! 176   writes: n × { bytes [u8; 16] } — new bytes, then the original bytes (for undo)
//! ```

/// General-purpose registers in the order of the commit block.
pub const REGS: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];

const PATH_OFF: u64 = 144;
const STATE_OFF: u64 = 168;
const WRITES_OFF: u64 = 176;
const PATH: &[u8] = b"/proc/thread-self/mem\0";
const SLOT: u64 = 16;

const SYS_OPEN: u32 = 2;
const SYS_CLOSE: u32 = 3;
const SYS_PWRITE64: u32 = 18;
pub(crate) const SYS_GETPID: u32 = 39;
pub(crate) const SYS_GETTID: u32 = 186;
pub(crate) const SYS_TGKILL: u32 = 234;
/// The marker system call: suture's slow path waits for its entry and skips it.
pub const MARKER_SYSCALL: u64 = SYS_TGKILL as u64;

/// Signals whose default action is to be ignored, in order of preference for the marker.
/// `SIGCONT` is left out: sending it resumes a stopped process.
pub const MARKER_CANDIDATES: [i32; 3] = [libc::SIGURG, libc::SIGWINCH, libc::SIGCHLD];

/// One write the routine performs: `new` at `addr`, and `old` to put back on failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub addr: u64,
    pub new: Vec<u8>,
    pub old: Vec<u8>,
}

/// Generated routine and block, for given addresses.
pub struct Commit {
    /// Machine code, to be placed at `code_addr`.
    pub code: Vec<u8>,
    /// The commit block, to be placed at `block_addr` (registers filled in by
    /// [`Commit::block_with_registers`]).
    pub block: Vec<u8>,
    /// The address just after the marker `tgkill`: where its signal-delivery-stop (fast path)
    /// or its system-call stops (slow path) happen.
    pub marker_rip: u64,
    /// The marker signal the routine sends (0: none; suture must follow system calls).
    pub marker_signal: i32,
    /// Every system call the routine can make, for the seccomp check.
    calls: Vec<Call>,
    /// The routine's writes as `(address, new bytes, original bytes)`, the header state last:
    /// what suture writes itself in the direct commit
    /// ([`StoppedProcess::commit_direct`](crate::stop::StoppedProcess::commit_direct)).
    pub writes: Vec<(crate::ids::RemoteAddr, Vec<u8>, Vec<u8>)>,
}

/// A system call of the routine: number, arguments, address after its `syscall`.
#[derive(Clone, Debug)]
struct Call {
    nr: u32,
    args: [u64; 6],
    ip: u64,
}

/// Stand-ins for the argument values known only when the routine runs.
const FD_ARG: u64 = u64::MAX - 1;
const TID_ARG: u64 = u64::MAX - 2;
const PID_ARG: u64 = u64::MAX - 3;

/// A minimal x86-64 assembler for suture's generated routines (also `crate::ifunc`).
pub(crate) struct Asm {
    pub(crate) code: Vec<u8>,
    pub(crate) base: u64,
}

impl Asm {
    pub(crate) fn new(base: u64) -> Asm {
        Asm {
            code: Vec::new(),
            base,
        }
    }
    pub(crate) fn here(&self) -> u64 {
        self.base + self.code.len() as u64
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }
    /// `mov r32, imm32` for eax (0), edx (2), esi (6).
    pub(crate) fn mov_r32(&mut self, reg: u8, imm: u32) {
        self.code.push(0xb8 + reg);
        self.bytes(&imm.to_le_bytes());
    }
    /// `movabs r64, imm64`; `reg` 0-15.
    pub(crate) fn movabs(&mut self, reg: u8, imm: u64) {
        self.code.push(if reg >= 8 { 0x49 } else { 0x48 });
        self.code.push(0xb8 + (reg & 7));
        self.bytes(&imm.to_le_bytes());
    }
    pub(crate) fn syscall(&mut self) {
        self.bytes(&[0x0f, 0x05]);
    }
    /// `mov reg, [rip + (target - next)]`; `reg` 0-15.
    pub(crate) fn load_rip(&mut self, reg: u8, target: u64) {
        self.code.push(if reg >= 8 { 0x4c } else { 0x48 });
        self.code.push(0x8b);
        self.code.push(((reg & 7) << 3) | 0b101);
        let next = self.here() + 4;
        self.bytes(&(target.wrapping_sub(next) as i32).to_le_bytes());
    }
    /// A `jcc rel32` / `jmp rel32` with the displacement to patch later; returns its offset.
    pub(crate) fn jump_placeholder(&mut self, opcode: &[u8]) -> usize {
        self.bytes(opcode);
        let at = self.code.len();
        self.bytes(&[0; 4]);
        at
    }
    pub(crate) fn patch_jump(&mut self, at: usize, target: u64) {
        let next = self.base + at as u64 + 4;
        let d = target.wrapping_sub(next) as i32;
        self.code[at..at + 4].copy_from_slice(&d.to_le_bytes());
    }

    /// `tgkill(getpid(), gettid(), sig)`: the ids as the target's own PID namespace numbers
    /// them (suture's view differs when the target runs in a container). Returns the address
    /// after each of the three `syscall` instructions (the last one: the marker's `rip`).
    pub(crate) fn marker(&mut self, sig: i32) -> [u64; 3] {
        self.mov_r32(RAX, SYS_GETPID);
        self.syscall();
        let getpid = self.here();
        self.bytes(&[0x49, 0x89, 0xc4]); // mov r12, rax
        self.mov_r32(RAX, SYS_GETTID);
        self.syscall();
        let gettid = self.here();
        self.bytes(&[0x89, 0xc6]); // mov esi, eax
        self.bytes(&[0x44, 0x89, 0xe7]); // mov edi, r12d
        self.mov_r32(RAX, SYS_TGKILL);
        self.mov_r32(RDX, sig as u32);
        self.syscall();
        [getpid, gettid, self.here()]
    }

    /// Restores the flags (pushed on the current stack, which must have room) and every
    /// general-purpose register from the saved registers at `block` ([`REGS`] order), then
    /// jumps to the saved `rip`.
    pub(crate) fn restore_registers(&mut self, block: u64) {
        self.bytes(&[0xff, 0x35]); // push qword [rip + rflags]
        let next = self.here() + 4;
        let rflags = block + 8 * reg_index("rflags");
        self.bytes(&(rflags.wrapping_sub(next) as i32).to_le_bytes());
        self.code.push(0x9d); // popfq
        for (enc, &idx) in BLOCK_INDEX.iter().enumerate() {
            self.load_rip(enc as u8, block + 8 * idx as u64);
        }
        self.bytes(&[0xff, 0x25]); // jmp qword [rip + saved rip]
        let next = self.here() + 4;
        let rip = block + 8 * reg_index("rip");
        self.bytes(&(rip.wrapping_sub(next) as i32).to_le_bytes());
    }
}

/// The index of a register in [`REGS`].
fn reg_index(name: &str) -> u64 {
    REGS.iter()
        .position(|r| *r == name)
        .expect("known register") as u64
}

// Register numbers as x86 encodes them.
pub(crate) const RAX: u8 = 0;
pub(crate) const RDX: u8 = 2;
pub(crate) const RSI: u8 = 6;
pub(crate) const RDI: u8 = 7;
const R10: u8 = 10;
/// Block index of each register, in encoding order rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..
const BLOCK_INDEX: [usize; 16] = [0, 2, 3, 1, 7, 6, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15];

impl Commit {
    /// Generates the routine for code at `code_addr` and its block at `block_addr`, performing
    /// `writes` and then storing `state` (4 bytes) at `state_addr`; it ends by sending
    /// `marker_signal` (0: none) to its own thread.
    ///
    /// Every write must be at most 16 bytes and its `old` bytes as long as its `new` bytes.
    pub fn generate(
        code_addr: u64,
        block_addr: u64,
        writes: &[Write],
        state_addr: u64,
        state: [u8; 4],
        marker_signal: i32,
    ) -> Commit {
        let mut block = vec![0u8; (WRITES_OFF + 2 * SLOT * writes.len() as u64) as usize];
        block[PATH_OFF as usize..PATH_OFF as usize + PATH.len()].copy_from_slice(PATH);
        block[STATE_OFF as usize..STATE_OFF as usize + 4].copy_from_slice(&state);
        for (i, w) in writes.iter().enumerate() {
            assert!(w.new.len() <= SLOT as usize && w.old.len() == w.new.len());
            let at = (WRITES_OFF + 2 * SLOT * i as u64) as usize;
            block[at..at + w.new.len()].copy_from_slice(&w.new);
            let at = at + SLOT as usize;
            block[at..at + w.old.len()].copy_from_slice(&w.old);
        }
        let new_slot = |i: usize| block_addr + WRITES_OFF + 2 * SLOT * i as u64;
        let old_slot = |i: usize| new_slot(i) + SLOT;

        let mut a = Asm {
            code: Vec::new(),
            base: code_addr,
        };
        let mut calls = Vec::new();
        let mut record = |a: &Asm, nr: u32, args: [u64; 6]| {
            calls.push(Call {
                nr,
                args,
                ip: a.here(),
            })
        };
        // fd = open("/proc/thread-self/mem", O_RDWR)
        a.mov_r32(RAX, SYS_OPEN);
        a.movabs(RDI, block_addr + PATH_OFF);
        a.mov_r32(RSI, 2);
        a.bytes(&[0x31, 0xd2]); // xor edx, edx
        a.syscall();
        record(&a, SYS_OPEN, [block_addr + PATH_OFF, 2, 0, 0, 0, 0]);
        a.bytes(&[0x48, 0x85, 0xc0]); // test rax, rax
        let open_failed = a.jump_placeholder(&[0x0f, 0x88]); // js
        a.bytes(&[0x49, 0x89, 0xc4]); // mov r12, rax

        // pwrite64(fd, new_i, len_i, addr_i) for each write; on a short write, undo.
        let mut failed_at = Vec::new();
        let mut pwrite = |a: &mut Asm, src: u64, len: usize, dst: u64| {
            a.mov_r32(RAX, SYS_PWRITE64);
            a.bytes(&[0x4c, 0x89, 0xe7]); // mov rdi, r12
            a.movabs(RSI, src);
            a.mov_r32(RDX, len as u32);
            a.movabs(R10, dst);
            a.syscall();
            record(a, SYS_PWRITE64, [FD_ARG, src, len as u64, dst, 0, 0]);
        };
        for (i, w) in writes.iter().enumerate() {
            pwrite(&mut a, new_slot(i), w.new.len(), w.addr);
            a.bytes(&[0x48, 0x3d]); // cmp rax, imm32
            a.bytes(&(w.new.len() as u32).to_le_bytes());
            failed_at.push(a.jump_placeholder(&[0x0f, 0x85])); // jne undo_i
        }
        // Every jump is in place: publish the state (if that fails, undo every write).
        pwrite(&mut a, block_addr + STATE_OFF, 4, state_addr);
        a.bytes(&[0x48, 0x3d]); // cmp rax, 4
        a.bytes(&4u32.to_le_bytes());
        failed_at.push(a.jump_placeholder(&[0x0f, 0x85])); // jne undo_n
        let done = a.jump_placeholder(&[0xe9]);

        // undo_i: write back the original bytes of writes i-1 .. 0 (write i did not happen).
        let mut undo_entry = vec![0u64; writes.len() + 1];
        for i in (0..=writes.len()).rev() {
            undo_entry[i] = a.here();
            if i > 0 {
                let j = i - 1;
                pwrite(&mut a, old_slot(j), writes[j].old.len(), writes[j].addr);
            }
        }
        // Fall through from the undo chain into close.
        let close_at = a.here();
        a.mov_r32(RAX, SYS_CLOSE);
        a.bytes(&[0x4c, 0x89, 0xe7]); // mov rdi, r12
        a.syscall();
        record(&a, SYS_CLOSE, [FD_ARG, 0, 0, 0, 0, 0]);
        let finish = a.here();
        let [getpid, gettid, tgkill] = a.marker(marker_signal);
        let marker_rip = tgkill;
        for (nr, ip, args) in [
            (SYS_GETPID, getpid, [0; 6]),
            (SYS_GETTID, gettid, [0; 6]),
            (
                SYS_TGKILL,
                tgkill,
                [PID_ARG, TID_ARG, marker_signal as u64, 0, 0, 0],
            ),
        ] {
            calls.push(Call { nr, args, ip });
        }
        // Restore: rflags through a scratch slot below the red zone, then every register.
        a.load_rip(4, block_addr + 8 * reg_index("rsp")); // mov rsp, [saved rsp]
        a.bytes(&[0x48, 0x8d, 0xa4, 0x24, 0x00, 0xfe, 0xff, 0xff]); // lea rsp, [rsp-0x200]
        a.restore_registers(block_addr);

        a.patch_jump(open_failed, finish);
        a.patch_jump(done, close_at);
        for (i, at) in failed_at.into_iter().enumerate() {
            a.patch_jump(at, undo_entry[i]);
        }
        let mut direct: Vec<_> = writes
            .iter()
            .map(|w| (crate::ids::RemoteAddr(w.addr), w.new.clone(), w.old.clone()))
            .collect();
        // The state's original bytes are never written back: it is the last write.
        direct.push((
            crate::ids::RemoteAddr(state_addr),
            state.to_vec(),
            state.to_vec(),
        ));
        Commit {
            code: a.code,
            block,
            marker_rip,
            marker_signal,
            calls,
            writes: direct,
        }
    }

    /// Every system call the routine can make, with its exact arguments, for a routine run by
    /// thread `tid` of process `pid` (as the target's PID namespace numbers them) whose `open`
    /// returns `fd`.
    pub fn syscalls(&self, fd: u64, pid: u64, tid: u64) -> Vec<crate::seccomp::Injected> {
        self.calls
            .iter()
            .map(|c| {
                let args = c.args.map(|v| match v {
                    FD_ARG => fd,
                    TID_ARG => tid,
                    PID_ARG => pid,
                    v => v,
                });
                let name = match c.nr {
                    SYS_OPEN => "open",
                    SYS_PWRITE64 => "pwrite64",
                    SYS_CLOSE => "close",
                    SYS_GETPID => "getpid",
                    SYS_GETTID => "gettid",
                    _ => "tgkill",
                };
                crate::seccomp::Injected::new(name, c.nr, args, c.ip)
            })
            .collect()
    }

    /// The block with the running thread's registers filled in (values in [`REGS`] order).
    pub fn block_with_registers(&self, regs: &[u64; 18]) -> Vec<u8> {
        let mut b = self.block.clone();
        for (i, v) in regs.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_holds_path_state_and_writes() {
        let w = vec![Write {
            addr: 0x401000,
            new: vec![0xe9, 1, 2, 3, 4],
            old: vec![0x55, 0x48, 0x89, 0xe5, 0x90],
        }];
        let c = Commit::generate(0x10000, 0x20000, &w, 0x30000, [2, 0, 0, 0], libc::SIGURG);
        assert_eq!(&c.block[144..166], b"/proc/thread-self/mem\0");
        assert_eq!(&c.block[168..172], &[2, 0, 0, 0]);
        assert_eq!(&c.block[176..181], &[0xe9, 1, 2, 3, 4]);
        assert_eq!(&c.block[192..197], &[0x55, 0x48, 0x89, 0xe5, 0x90]);
        // open, the write, its undo, the state, close, the marker: each with the address
        // after its `syscall` instruction.
        let calls = c.syscalls(5, 77, 1234);
        let names: Vec<&str> = calls.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["open", "pwrite64", "pwrite64", "pwrite64", "close", "getpid", "gettid", "tgkill"]
        );
        for call in &calls {
            let at = (call.ip - 0x10000) as usize;
            assert_eq!(&c.code[at - 2..at], &[0x0f, 0x05], "{}", call.name);
        }
        assert_eq!(calls[1].args[..4], [5, 0x20000 + 176, 5, 0x401000]);
        assert_eq!(calls[7].args[..3], [77, 1234, libc::SIGURG as u64]);
        let regs: [u64; 18] = std::array::from_fn(|i| i as u64 * 0x1111);
        let b = c.block_with_registers(&regs);
        assert_eq!(
            u64::from_le_bytes(b[16 * 8..17 * 8].try_into().unwrap()),
            16 * 0x1111
        );
        // The marker tgkill ends just before marker_rip.
        let m = (c.marker_rip - 0x10000) as usize;
        assert_eq!(&c.code[m - 2..m], &[0x0f, 0x05]);
        assert_eq!(c.marker_signal, libc::SIGURG);
        // The routine ends with an indirect jump through the saved rip.
        let n = c.code.len();
        assert_eq!(&c.code[n - 6..n - 4], &[0xff, 0x25]);
        let disp = i32::from_le_bytes(c.code[n - 4..].try_into().unwrap()) as i64;
        assert_eq!(0x10000 + n as i64 + disp, 0x20000 + 16 * 8);
    }
}
