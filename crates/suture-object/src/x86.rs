//! Just enough x86-64 decoding for the differ: where each instruction ends (to find what a
//! PC-relative relocation really points at), whether an instruction is a direct branch, and
//! whether two same-shaped instruction streams differ only in immediate operands.

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};

/// One decoded instruction: its offset in the section, length and whether it is a direct
/// `call`/`jmp`/`jcc` with a relative target.
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    pub start: u64,
    pub len: u8,
    pub direct_branch: bool,
    /// For direct branches: the target's offset in the section.
    pub branch_target: Option<u64>,
    /// For direct branches: the size of the displacement (1 or 4 bytes).
    pub rel_size: u8,
}

/// Size of the displacement of a direct branch encoded in `bytes` (1 for short forms).
fn branch_rel_size(bytes: &[u8]) -> u8 {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            0xf2 | 0xf3 | 0x2e | 0x3e | 0x26 | 0x36 | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 => i += 1,
            0x40..=0x4f => i += 1,
            _ => break,
        }
    }
    match bytes.get(i) {
        Some(0xeb | 0x70..=0x7f | 0xe0..=0xe3) => 1,
        _ => 4,
    }
}

/// Decodes a code section linearly. Undecodable bytes (padding, data in text) become one-byte
/// pseudo-instructions so decoding always resynchronises and always terminates.
pub fn decode(code: &[u8]) -> Vec<Insn> {
    let mut out = Vec::with_capacity(code.len() / 4 + 1);
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        let start = decoder.position() as u64;
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            out.push(Insn {
                start,
                len: 1,
                direct_branch: false,
                branch_target: None,
                rel_size: 0,
            });
            // An invalid decode still advances; restart right after the first byte.
            let _ = decoder.set_position(start as usize + 1);
            continue;
        }
        // Direct call/jmp/jcc: the only instructions with a relative branch operand.
        let direct_branch = insn.op_count() > 0
            && matches!(
                insn.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            );
        let end = (start as usize + insn.len()).min(code.len());
        out.push(Insn {
            start,
            len: insn.len() as u8,
            direct_branch,
            branch_target: direct_branch.then(|| insn.near_branch_target()),
            rel_size: if direct_branch {
                branch_rel_size(&code[start as usize..end])
            } else {
                0
            },
        });
    }
    out
}

/// The instruction containing byte `offset`, if any.
pub fn insn_at(insns: &[Insn], offset: u64) -> Option<Insn> {
    let i = insns.partition_point(|x| x.start <= offset);
    let insn = *insns.get(i.checked_sub(1)?)?;
    (offset < insn.start + u64::from(insn.len)).then_some(insn)
}

/// True when `a` and `b` decode to the same instructions of the same lengths and every byte
/// that differs lies inside an immediate operand (typically `__LINE__` passed to a logging or
/// assert helper after lines moved).
pub fn differ_only_in_immediates(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a == b {
        return false;
    }
    let mut da = Decoder::with_ip(64, a, 0, DecoderOptions::NONE);
    let mut db = Decoder::with_ip(64, b, 0, DecoderOptions::NONE);
    let (mut ia, mut ib) = (Instruction::default(), Instruction::default());
    while da.can_decode() {
        if !db.can_decode() {
            return false;
        }
        let start = da.position();
        da.decode_out(&mut ia);
        db.decode_out(&mut ib);
        if ia.is_invalid() || ib.is_invalid() || ia.code() != ib.code() || ia.len() != ib.len() {
            return false;
        }
        let end = start + ia.len();
        if a[start..end] == b[start..end] {
            continue;
        }
        let co = da.get_constant_offsets(&ia);
        let mut imm = Vec::new();
        if co.has_immediate() {
            let o = start + co.immediate_offset();
            imm.push(o..o + co.immediate_size());
        }
        if co.has_immediate2() {
            let o = start + co.immediate_offset2();
            imm.push(o..o + co.immediate_size2());
        }
        let only_imm = (start..end)
            .filter(|&i| a[i] != b[i])
            .all(|i| imm.iter().any(|r| r.contains(&i)));
        if !only_imm {
            return false;
        }
    }
    !db.can_decode()
}

/// For two same-shaped instruction streams that differ only in immediate operands: each
/// differing immediate as (instruction offset, value in `a`, value in `b`). `None` when they
/// differ otherwise (or not at all).
pub fn immediate_changes(a: &[u8], b: &[u8]) -> Option<Vec<(u64, i64, i64)>> {
    if !differ_only_in_immediates(a, b) {
        return None;
    }
    let mut da = Decoder::with_ip(64, a, 0, DecoderOptions::NONE);
    let mut db = Decoder::with_ip(64, b, 0, DecoderOptions::NONE);
    let (mut ia, mut ib) = (Instruction::default(), Instruction::default());
    let mut out = Vec::new();
    while da.can_decode() {
        let start = da.position();
        da.decode_out(&mut ia);
        db.decode_out(&mut ib);
        if a[start..start + ia.len()] == b[start..start + ia.len()] {
            continue;
        }
        for op in 0..ia.op_count() {
            let imm = matches!(
                ia.op_kind(op),
                OpKind::Immediate8
                    | OpKind::Immediate16
                    | OpKind::Immediate32
                    | OpKind::Immediate64
                    | OpKind::Immediate8to16
                    | OpKind::Immediate8to32
                    | OpKind::Immediate8to64
                    | OpKind::Immediate32to64
            );
            if imm {
                let (x, y) = (ia.immediate(op) as i64, ib.immediate(op) as i64);
                if x != y {
                    out.push((start as u64, x, y));
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_lengths_and_branches() {
        // call rel32; lea rax,[rip+0]; ret
        let code = [0xe8, 0, 0, 0, 0, 0x48, 0x8d, 0x05, 0, 0, 0, 0, 0xc3];
        let insns = decode(&code);
        assert_eq!(insns.len(), 3);
        assert!(insns[0].direct_branch);
        assert!(!insns[1].direct_branch);
        assert_eq!(
            insn_at(&insns, 8).map(|i| i.start + u64::from(i.len)),
            Some(12)
        );
        assert!(insn_at(&insns, 13).is_none());
        assert_eq!(insns[0].branch_target, Some(5));
        assert_eq!(insns[0].rel_size, 4);
        // jmp short +2; nop; nop
        let short = decode(&[0xeb, 0x02, 0x90, 0x90]);
        assert_eq!((short[0].branch_target, short[0].rel_size), (Some(4), 1));
    }

    #[test]
    fn invalid_bytes_resynchronise() {
        let code = [0x06, 0x06, 0xc3]; // 0x06 is invalid in 64-bit mode
        let insns = decode(&code);
        assert_eq!(insns.len(), 3);
        assert_eq!(insns[2].start, 2);
    }

    #[test]
    fn immediate_only_differences() {
        // mov edx, 17 / mov edx, 19
        let a = [0xba, 17, 0, 0, 0, 0xc3];
        let b = [0xba, 19, 0, 0, 0, 0xc3];
        assert!(differ_only_in_immediates(&a, &b));
        // mov edx,17 vs mov ecx,17: the opcode differs
        let c = [0xb9, 17, 0, 0, 0, 0xc3];
        assert!(!differ_only_in_immediates(&a, &c));
        assert!(!differ_only_in_immediates(&a, &a));
    }
}
