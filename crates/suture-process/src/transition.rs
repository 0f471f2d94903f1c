//! The per-thread transition (`apply --transition`): the kernel livepatch consistency model
//! applied to a process.
//!
//! A plain apply waits until no thread is inside a replaced function. In transition mode the
//! switch happens at once, and the threads that hold a frame of a replaced function at that
//! moment (the *old-state* threads) go on running the old versions of every replaced
//! function until they hold none; every other thread, and every thread created later, runs
//! the new versions. No thread ever runs a mixture.
//!
//! How a call knows which version it wants: each replaced function's entry jumps to a
//! *dispatcher* in the region instead of straight to the new code. The dispatcher reads the
//! calling thread's thread pointer (`%fs:0`, which the x86-64 TLS ABI makes the thread
//! pointer itself) and looks it up in the *thread table*; an active entry sends the call down
//! the old path (the function's first instructions, relocated, then a jump back into the old
//! body past them), anything else to the new function. The dispatcher uses two words of
//! stack below the stack pointer at a function entry, where nothing live is stored, and
//! clobbers only the flags, which are not preserved across calls.
//!
//! suture drives the transition: it stops the process now and then, and an old-state thread
//! whose stack holds no replaced frame any more (and is not in a dispatcher) is made
//! new-state by clearing one byte of its entry while every thread is stopped. When every
//! entry is clear the transition is complete. Until then `suture status` lists the threads
//! still running old code, from the table alone.
//!
//! The transition pages of a region (the header records where): the table page (read-only
//! for the target; suture writes it through `/proc/PID/mem`), then the dispatchers' code.
//! ```text
//! table:  0  magic  b"SUTTRN\0\x01"
//!         8  driver u32 (process id of the suture driving the transition), reserved u32
//!        16  slots: SLOTS × { key u64 (thread pointer; 0 ends the table), tid u32,
//!                             active u8 (1 = runs old code), reserved [u8; 3] }
//! ```

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind};

use crate::link::PAGE;

pub const MAGIC: &[u8; 8] = b"SUTTRN\0\x01";
const SLOTS_OFF: u64 = 16;
const SLOT: u64 = 16;
/// The most old-state threads one transition tracks (one table page, one end marker).
pub const SLOTS: usize = ((PAGE - SLOTS_OFF) / SLOT) as usize - 1;
/// Offset of the `active` byte in a slot.
const ACTIVE: u64 = 12;
/// Bytes of a function's entry the jump overwrites.
const JUMP: usize = 5;

#[derive(Clone, Copy)]
/// One replaced function to dispatch: its entry, the new code, and the running code of the old
/// function (at least its first instructions; its whole body for the branch check).
pub struct Function<'a> {
    pub name: &'a str,
    pub from: u64,
    pub to: u64,
    pub code: &'a [u8],
}

/// The dispatchers' code for a region, laid out at `base`.
#[derive(Clone, Debug, Default)]
pub struct Dispatchers {
    pub bytes: Vec<u8>,
    /// Each function's dispatcher, in the order given.
    pub entries: Vec<u64>,
}

/// One slot of the table as read back from a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Slot {
    /// Its index in the table.
    #[serde(skip)]
    pub index: usize,
    #[serde(serialize_with = "crate::hexjson::addr")]
    pub thread_pointer: u64,
    pub tid: i32,
    /// The thread still runs the old code.
    pub active: bool,
}

/// The table bytes with these old-state threads (thread pointer, tid).
pub fn table(threads: &[(u64, i32)]) -> Result<Vec<u8>, String> {
    if threads.len() > SLOTS {
        return Err(format!(
            "{} threads are inside replaced functions; a transition tracks at most {SLOTS}",
            threads.len()
        ));
    }
    let mut b = vec![0u8; PAGE as usize];
    b[..8].copy_from_slice(MAGIC);
    for (i, &(key, tid)) in threads.iter().enumerate() {
        let at = (SLOTS_OFF + SLOT * i as u64) as usize;
        b[at..at + 8].copy_from_slice(&key.to_le_bytes());
        b[at + 8..at + 12].copy_from_slice(&tid.to_le_bytes());
        b[at + ACTIVE as usize] = 1;
    }
    Ok(b)
}

/// The slots of a table page read from a target (untrusted: `None` without the magic).
pub fn decode(b: &[u8]) -> Option<Vec<Slot>> {
    if b.get(..8)? != MAGIC {
        return None;
    }
    let mut out = Vec::new();
    for index in 0..SLOTS {
        let at = (SLOTS_OFF + SLOT * index as u64) as usize;
        let s = b.get(at..at + SLOT as usize)?;
        let key = u64::from_le_bytes(s[..8].try_into().ok()?);
        if key == 0 {
            break;
        }
        out.push(Slot {
            index,
            thread_pointer: key,
            tid: i32::from_le_bytes(s[8..12].try_into().ok()?),
            active: s[ACTIVE as usize] != 0,
        });
    }
    Some(out)
}

/// Records in a table the process id of the suture that drives the transition (the reserved
/// word after the magic), so `status` can tell a transition nobody drives any more.
pub fn set_driver(table: &mut [u8], pid: u32) {
    table[8..12].copy_from_slice(&pid.to_le_bytes());
}

/// The driver's process id a table records (0: none).
pub fn driver(table: &[u8]) -> Option<u32> {
    let pid = u32::from_le_bytes(table.get(8..12)?.try_into().ok()?);
    (pid != 0).then_some(pid)
}

/// Where the `active` byte of slot `index` is, for a table at `table`.
pub fn active_byte(table: u64, index: usize) -> u64 {
    table + SLOTS_OFF + SLOT * index as u64 + ACTIVE
}

/// The size of the dispatchers' code (it does not depend on where anything is).
pub fn measure(functions: &[Function]) -> Result<u64, String> {
    let mut n = 0;
    for f in functions {
        n += dispatcher_len(f)?;
    }
    Ok(n as u64)
}

/// Lays out the dispatchers at `base`, for a table page at `table`.
pub fn build(base: u64, table: u64, functions: &[Function]) -> Result<Dispatchers, String> {
    let mut d = Dispatchers::default();
    for f in functions {
        let at = base + d.bytes.len() as u64;
        d.entries.push(at);
        let code = dispatcher(at, table + SLOTS_OFF, f)?;
        d.bytes.extend_from_slice(&code);
    }
    Ok(d)
}

fn dispatcher_len(f: &Function) -> Result<usize, String> {
    let (insns, _) = entry_instructions(f)?;
    Ok(OLD_PATH + insns.iter().map(|i| i.len()).sum::<usize>() + 5)
}

/// Offset of the old path in a dispatcher (see [`dispatcher`]).
const OLD_PATH: usize = 50;

fn rel32(from_end: u64, to: u64) -> Result<[u8; 4], String> {
    i32::try_from(to.wrapping_sub(from_end) as i64)
        .map(i32::to_le_bytes)
        .map_err(|_| format!("{to:#x} is out of reach of {from_end:#x}"))
}

/// One dispatcher at `at`; `slots` is the address of the table's first slot.
fn dispatcher(at: u64, slots: u64, f: &Function) -> Result<Vec<u8>, String> {
    let mut c = vec![
        0x50, // push rax
        0x51, // push rcx
        0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0, // mov rax, fs:[0]
        0x48, 0x8d, 0x0d, // lea rcx, [rip + slots]
    ];
    c.extend_from_slice(&rel32(at + 18, slots)?);
    // loop (18):
    c.extend_from_slice(&[0x48, 0x83, 0x39, 0x00]); // cmp qword [rcx], 0
    c.extend_from_slice(&[0x74, 41 - 24]); // je new
    c.extend_from_slice(&[0x48, 0x39, 0x01]); // cmp [rcx], rax
    c.extend_from_slice(&[0x75, 35 - 29]); // jne next
    c.extend_from_slice(&[0x80, 0x79, ACTIVE as u8, 0x00]); // cmp byte [rcx + 12], 0
    c.extend_from_slice(&[0x75, 48 - 35]); // jne old
                                           // next (35):
    c.extend_from_slice(&[0x48, 0x83, 0xc1, SLOT as u8]); // add rcx, 16
    c.extend_from_slice(&[0xeb, (18i8 - 41) as u8]); // jmp loop
                                                     // new (41):
    c.extend_from_slice(&[0x59, 0x58, 0xe9]); // pop rcx; pop rax; jmp new function
    c.extend_from_slice(&rel32(at + 48, f.to)?);
    debug_assert_eq!(c.len(), 48);
    // old (48):
    c.extend_from_slice(&[0x59, 0x58]); // pop rcx; pop rax
    debug_assert_eq!(c.len(), OLD_PATH);
    let (insns, resume) = entry_instructions(f)?;
    for insn in &insns {
        let here = at + c.len() as u64;
        c.extend_from_slice(&relocate(f, insn, here)?);
    }
    c.push(0xe9); // jmp back into the old body
    let end = at + c.len() as u64 + 4;
    c.extend_from_slice(&rel32(end, f.from + resume as u64)?);
    Ok(c)
}

/// The old function's instructions that start in the bytes the jump overwrites, and the offset
/// where the old body goes on after them. Refuses an entry the old path cannot run elsewhere:
/// a branch, call or return among them, or a branch of the body into the overwritten bytes.
fn entry_instructions(f: &Function) -> Result<(Vec<Instruction>, usize), String> {
    let mut decoder = Decoder::with_ip(64, f.code, f.from, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut end = 0;
    let mut insn = Instruction::default();
    while end < JUMP {
        if !decoder.can_decode() {
            return Err(format!(
                "{}: its code ends inside its first {JUMP} bytes",
                f.name
            ));
        }
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            return Err(format!("{}: its first instructions do not decode", f.name));
        }
        if insn.flow_control() != FlowControl::Next {
            return Err(format!(
                "{}: its first instructions branch ({:?}); the old path cannot run them \
                 elsewhere",
                f.name,
                insn.mnemonic()
            ));
        }
        end += insn.len();
        out.push(insn);
    }
    // No branch of the body may land inside the jump (a loop back to the instruction after
    // `endbr64`, say): old-state threads still run the body.
    let mut decoder = Decoder::with_ip(64, f.code, f.from, DecoderOptions::NONE);
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            continue;
        }
        let direct = insn.op_count() > 0
            && matches!(
                insn.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            );
        if direct {
            let t = insn.near_branch_target();
            if t > f.from && t < f.from + JUMP as u64 {
                return Err(format!(
                    "{}: the branch at +{:#x} goes to +{:#x}, inside the entry bytes the jump \
                     overwrites",
                    f.name,
                    insn.ip() - f.from,
                    t - f.from
                ));
            }
        }
    }
    Ok((out, end))
}

/// The bytes of `insn` (decoded at its original address) for address `at`: unchanged, or with
/// the displacement of a RIP-relative operand adjusted.
fn relocate(f: &Function, insn: &Instruction, at: u64) -> Result<Vec<u8>, String> {
    let off = (insn.ip() - f.from) as usize;
    let mut bytes = f.code[off..off + insn.len()].to_vec();
    if insn.is_ip_rel_memory_operand() {
        // The offsets are those of the instruction a decoder decoded last.
        let mut decoder = Decoder::with_ip(64, &bytes, insn.ip(), DecoderOptions::NONE);
        let again = decoder.decode();
        let offsets = decoder.get_constant_offsets(&again);
        if !offsets.has_displacement() || offsets.displacement_size() != 4 {
            return Err(format!(
                "{}: cannot relocate its first instruction ({:?})",
                f.name,
                insn.mnemonic()
            ));
        }
        let target = insn.ip_rel_memory_address();
        let d = offsets.displacement_offset();
        let disp = rel32(at + insn.len() as u64, target)?;
        bytes[d..d + 4].copy_from_slice(&disp);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips_and_ends_at_the_first_empty_slot() {
        let b = table(&[(0x7f00_0000_1000, 41), (0x7f00_0000_9000, 42)]).unwrap();
        let slots = decode(&b).unwrap();
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[1].tid, 42);
        assert!(slots.iter().all(|s| s.active));
        let mut b = b;
        b[active_byte(0, 1) as usize] = 0;
        assert!(!decode(&b).unwrap()[1].active);
        assert!(decode(&b[..100]).is_none() || decode(&b[..100]).unwrap().len() <= 2);
        assert!(decode(&[0u8; 64]).is_none());
        assert!(table(&vec![(1, 1); SLOTS + 1]).is_err());
    }

    #[test]
    fn rip_relative_entry_instructions_are_relocated() {
        // endbr64; lea rax, [rip + 0x100]; ret
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00, 0xc3,
        ];
        let f = Function {
            name: "f",
            from: 0x40_0000,
            to: 0x50_0000,
            code: &code,
        };
        let d = build(0x60_0000, 0x5f_f000, &[f]).unwrap();
        let old = &d.bytes[OLD_PATH..];
        assert_eq!(&old[..4], &code[..4], "endbr64 copied as is");
        // The lea still computes 0x40_0000 + 11 + 0x100.
        let lea_end = 0x60_0000 + OLD_PATH as u64 + 4 + 7;
        let disp = i32::from_le_bytes(old[7..11].try_into().unwrap()) as i64;
        assert_eq!(lea_end as i64 + disp, 0x40_0000 + 11 + 0x100);
        // And the path goes on at +11 of the old body.
        assert_eq!(old[11], 0xe9);
        let back = i32::from_le_bytes(old[12..16].try_into().unwrap()) as i64;
        assert_eq!(lea_end as i64 + 5 + back, 0x40_0000 + 11);
        assert_eq!(measure(&[f]).unwrap() as usize, d.bytes.len());
    }

    #[test]
    fn entries_the_old_path_cannot_run_elsewhere_are_refused() {
        // A body branching back to +4 (after endbr64): jmp -> +4 lands inside the jump.
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x90, 0xeb, 0xfc, 0xc3];
        let f = Function {
            name: "loop",
            from: 0x1000,
            to: 0x2000,
            code: &code,
        };
        let e = measure(&[f]).unwrap_err();
        assert!(e.contains("inside the entry bytes"), "{e}");
        // A function starting with a jump (a thunk).
        let code = [0xe9, 0, 0, 0, 0, 0xc3];
        let f = Function {
            name: "thunk",
            from: 0x1000,
            to: 0x2000,
            code: &code,
        };
        assert!(measure(&[f]).unwrap_err().contains("branch"));
    }
}
