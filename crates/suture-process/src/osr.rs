//! On-stack replacement at the switch: frames waiting in a call from a replaced function are
//! moved to the equivalent call site of the other version (the sites and what must move for
//! each were decided by the builder, `suture_object::osr`).
//!
//! A frame is moved by rewriting one word, its return address, to a *trampoline*: code in the
//! patch region that, when the callee returns into it, sets the registers the other version
//! expects (every source first copied to the red zone, so moves that exchange registers are
//! right; only `r10`/`r11`, dead after any call, are used besides) and jumps to the other
//! version's return address. So the only change made to a waiting thread during the stop is
//! a memory write, which joins the commit's write list: the switch stays all-or-nothing even if
//! suture is killed (the commit routine completes or undoes every write, return addresses
//! included), and the thread's registers are never touched from outside.
//!
//! The trampolines and their table live in the region's OSR pages (the header records where):
//! ```text
//!   0  magic  b"SUTOSR\0\x01"
//!   8  count  u32, reserved u32
//!  16  entries: count × { from u64, trampoline u64, to u64, direction u64 (0 apply, 1 revert) }
//!      code of the trampolines
//! ```
//! Apply moves frames whose return address is an apply entry's `from`; revert moves frames whose
//! return address is a revert entry's `from`, and puts a frame that an apply moved but that has
//! not returned yet (its return address is the apply trampoline) back to its original `from`.

use suture_object::osr::{OsrDest, OsrSite, OsrSource};

pub const MAGIC: &[u8; 8] = b"SUTOSR\0\x01";
const ENTRY: usize = 32;
/// The most entries a table may hold (and `decode` reads).
const MAX_ENTRIES: usize = 4096;

/// One trampoline: a frame returning to `from` goes on at `to` through `trampoline`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub from: u64,
    pub trampoline: u64,
    pub to: u64,
    pub revert: bool,
}

/// The OSR pages of a region: the table and the code.
#[derive(Clone, Debug, Default)]
pub struct Area {
    pub entries: Vec<Entry>,
    pub bytes: Vec<u8>,
    /// The end of the trampolines' code.
    pub end: u64,
}

/// One replaced function's sites to lay out: the source and destination function addresses
/// and the destination's code (for `Address` sources).
pub struct Function<'a> {
    pub src: u64,
    pub dst: u64,
    pub dst_code: &'a [u8],
    pub sites: &'a [OsrSite],
    pub revert: bool,
}

/// x86 register number of a DWARF register number.
fn x86(dwarf: u16) -> Option<u8> {
    Some(match dwarf {
        0 => 0,
        1 => 2,
        2 => 1,
        3 => 3,
        4 => 6,
        5 => 7,
        6 => 5,
        7 => 4,
        8..=15 => dwarf as u8,
        _ => return None,
    })
}

const R11: u8 = 11;

fn rex(w: bool, r: u8, b: u8) -> u8 {
    0x40 | u8::from(w) << 3 | (r >> 3) << 2 | (b >> 3)
}

/// `mov [rsp + disp], reg` (0x89) / `mov reg, [rsp + disp]` (0x8b) / `lea reg, [rsp + disp]`
/// (0x8d), 64-bit or (`wide` false) 32-bit.
fn rsp_mem_sized(code: &mut Vec<u8>, op: u8, reg: u8, disp: i32, wide: bool) {
    code.extend_from_slice(&[rex(wide, reg, 0), op, 0x84 | (reg & 7) << 3, 0x24]);
    code.extend_from_slice(&disp.to_le_bytes());
}

fn rsp_mem(code: &mut Vec<u8>, op: u8, reg: u8, disp: i32) {
    rsp_mem_sized(code, op, reg, disp, true)
}

/// The displacement from `rsp` at the return of CFA + `offset`.
fn frame_disp(site: &OsrSite, offset: i64) -> Result<i32, String> {
    i32::try_from(site.cfa + offset).map_err(|_| "frame offset out of range".to_string())
}

/// The value a RIP-relative `lea` at `at` of `code` (loaded at `base`) computes.
fn lea_target(code: &[u8], base: u64, at: u32) -> Option<u64> {
    let b = code.get(at as usize..at as usize + 7)?;
    // REX.W (any R), 8D, ModRM mod=00 rm=101, disp32.
    if b[0] & 0xf8 != 0x48 || b[1] != 0x8d || b[2] & 0xc7 != 0x05 {
        return None;
    }
    let disp = i32::from_le_bytes(b[3..7].try_into().ok()?);
    Some(
        base.wrapping_add(u64::from(at) + 7)
            .wrapping_add(disp as i64 as u64),
    )
}

/// The trampoline of one site.
fn trampoline(site: &OsrSite, f: &Function, measure: bool) -> Result<Vec<u8>, String> {
    let mut c = Vec::new();
    for (i, m) in site.moves.iter().enumerate() {
        let slot = -8 * (i as i32 + 1);
        match &m.src {
            OsrSource::Register { reg, add } => {
                let s = x86(*reg).ok_or_else(|| format!("register {reg}"))?;
                // mov r11, src
                c.extend_from_slice(&[rex(true, s, R11), 0x89, 0xc0 | (s & 7) << 3 | (R11 & 7)]);
                if *add != 0 {
                    match i32::try_from(*add) {
                        // add r11, imm32
                        Ok(k) => {
                            c.extend_from_slice(&[0x49, 0x81, 0xc3]);
                            c.extend_from_slice(&k.to_le_bytes());
                        }
                        Err(_) => {
                            // mov r10, imm64; add r11, r10
                            c.extend_from_slice(&[0x49, 0xba]);
                            c.extend_from_slice(&add.to_le_bytes());
                            c.extend_from_slice(&[0x4d, 0x01, 0xd3]);
                        }
                    }
                }
            }
            OsrSource::Constant { value } => {
                c.extend_from_slice(&[0x49, 0xbb]);
                c.extend_from_slice(&value.to_le_bytes());
            }
            OsrSource::Frame { offset } => {
                // The frame is the same in both versions: CFA = rsp + cfa at the return.
                rsp_mem(&mut c, 0x8d, R11, frame_disp(site, *offset)?);
            }
            OsrSource::Slot { offset, size } => {
                // A 32-bit load zero-extends.
                rsp_mem_sized(&mut c, 0x8b, R11, frame_disp(site, *offset)?, *size == 8);
            }
            OsrSource::Address { at } => {
                let v = match lea_target(f.dst_code, f.dst, *at) {
                    Some(v) => v,
                    None if measure => 0,
                    None => {
                        return Err(format!(
                            "no RIP-relative lea at +{at:#x} of the destination function"
                        ))
                    }
                };
                c.extend_from_slice(&[0x49, 0xbb]);
                c.extend_from_slice(&v.to_le_bytes());
            }
        }
        rsp_mem(&mut c, 0x89, R11, slot);
    }
    for (i, m) in site.moves.iter().enumerate() {
        let slot = -8 * (i as i32 + 1);
        match &m.dst {
            OsrDest::Register { reg } => {
                let d = x86(*reg).ok_or_else(|| format!("register {reg}"))?;
                rsp_mem(&mut c, 0x8b, d, slot);
            }
            OsrDest::Frame { offset, size } => {
                rsp_mem(&mut c, 0x8b, R11, slot);
                rsp_mem_sized(&mut c, 0x89, R11, frame_disp(site, *offset)?, *size == 8);
            }
        }
    }
    // jmp [rip + 0]; .quad destination
    c.extend_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
    c.extend_from_slice(&(f.dst + u64::from(site.to)).to_le_bytes());
    Ok(c)
}

impl Area {
    /// Lays out the table and trampolines of `functions` for the pages at `base`.
    pub fn build(base: u64, functions: &[Function]) -> Result<Area, String> {
        Area::layout(base, functions, false)
    }

    /// The size of the pages [`Area::build`] would fill (trampoline sizes do not depend on
    /// addresses).
    pub fn measure(functions: &[Function]) -> Result<u64, String> {
        Ok(Area::layout(0, functions, true)?.bytes.len() as u64)
    }

    fn layout(base: u64, functions: &[Function], measure: bool) -> Result<Area, String> {
        let count: usize = functions.iter().map(|f| f.sites.len()).sum();
        if count > MAX_ENTRIES {
            return Err(format!(
                "{count} on-stack replacement sites (at most {MAX_ENTRIES})"
            ));
        }
        let mut code = Vec::new();
        let code_at = base + 16 + (count * ENTRY) as u64;
        let mut entries = Vec::with_capacity(count);
        for f in functions {
            for s in f.sites {
                // A site whose trampoline cannot be made (its destination code is not what
                // the map describes) is left out: its frames are waited for, as without OSR.
                let Ok(t) = trampoline(s, f, measure) else {
                    continue;
                };
                // 16-byte aligned trampolines.
                code.resize(code.len().next_multiple_of(16), 0xcc);
                let at = code_at + code.len() as u64;
                code.extend(t);
                entries.push(Entry {
                    from: f.src + u64::from(s.from),
                    trampoline: at,
                    to: f.dst + u64::from(s.to),
                    revert: f.revert,
                });
            }
        }
        // The table was laid out for every site; unused entries stay zero (never matched).
        let mut bytes = Vec::with_capacity(16 + count * ENTRY + code.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for e in &entries {
            for v in [e.from, e.trampoline, e.to, u64::from(e.revert)] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        bytes.resize(16 + count * ENTRY, 0);
        bytes.extend(code);
        let end = base + bytes.len() as u64;
        Ok(Area {
            entries,
            bytes,
            end,
        })
    }

    /// Reads a table back from a target (untrusted: bounded, and every trampoline must lie in
    /// `pages`).
    pub fn decode(b: &[u8], pages: std::ops::Range<u64>) -> Option<Area> {
        if b.get(..8)? != MAGIC {
            return None;
        }
        let n = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?) as usize;
        if n > MAX_ENTRIES {
            return None;
        }
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let mut entries = Vec::with_capacity(n);
        for i in 0..n {
            let at = 16 + i * ENTRY;
            let e = Entry {
                from: word(at)?,
                trampoline: word(at + 8)?,
                to: word(at + 16)?,
                revert: word(at + 24)? == 1,
            };
            if !pages.contains(&e.trampoline) {
                return None;
            }
            entries.push(e);
        }
        Some(Area {
            entries,
            bytes: Vec::new(),
            end: pages.end,
        })
    }

    /// Where a frame with return address `ra` goes for an apply (`revert` false) or a revert.
    pub fn target(&self, ra: u64, revert: bool) -> Option<u64> {
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.revert == revert && e.from == ra)
        {
            return Some(e.trampoline);
        }
        // A frame moved the other way that has not returned yet goes back where it was (its
        // frame still has that shape).
        self.entries
            .iter()
            .find(|e| e.revert != revert && e.trampoline == ra)
            .map(|e| e.from)
    }

    /// For unwinding: the return address a trampoline stands for (the frame below it still has
    /// the shape of the code it was moved from).
    pub fn unwinds_as(&self, ra: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.trampoline == ra)
            .map(|e| e.from)
    }

    /// Each trampoline's code (up to the next one) and where it goes on: a thread stopped
    /// inside one is already on its way to `to`.
    pub fn code_ranges(&self) -> Vec<(std::ops::Range<u64>, u64)> {
        let mut starts: Vec<(u64, u64)> =
            self.entries.iter().map(|e| (e.trampoline, e.to)).collect();
        starts.sort_unstable();
        starts
            .iter()
            .enumerate()
            .map(|(i, &(at, to))| {
                let end = starts.get(i + 1).map_or(self.end, |n| n.0);
                (at..end.max(at), to)
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suture_object::osr::OsrMove;

    #[test]
    fn table_round_trips_and_targets() {
        let sites = [OsrSite {
            from: 0x10,
            to: 0x20,
            callee: "read".into(),
            cfa: 0x40,
            moves: vec![
                OsrMove {
                    dst: OsrDest::Register { reg: 3 },
                    src: OsrSource::Register { reg: 6, add: 0 },
                },
                OsrMove {
                    dst: OsrDest::Register { reg: 6 },
                    src: OsrSource::Register { reg: 3, add: -8 },
                },
                OsrMove {
                    dst: OsrDest::Register { reg: 12 },
                    src: OsrSource::Frame { offset: -0x20 },
                },
                OsrMove {
                    dst: OsrDest::Frame {
                        offset: -0x38,
                        size: 4,
                    },
                    src: OsrSource::Slot {
                        offset: -0x30,
                        size: 4,
                    },
                },
            ],
        }];
        let f = Function {
            src: 0x1000,
            dst: 0x9000,
            dst_code: &[],
            sites: &sites,
            revert: false,
        };
        let area = Area::build(0x5000, &[f]).unwrap();
        assert_eq!(area.entries.len(), 1);
        let t = area.entries[0].trampoline;
        assert_eq!(area.target(0x1010, false), Some(t));
        assert_eq!(area.target(0x1010, true), None);
        assert_eq!(
            area.target(t, true),
            Some(0x1010),
            "a moved frame goes back"
        );
        let back = Area::decode(&area.bytes, 0x5000..0x6000).unwrap();
        assert_eq!(back.entries, area.entries);
        assert!(Area::decode(&area.bytes, 0x7000..0x8000).is_none());
        // The code ends with the jump to the destination.
        assert_eq!(
            &area.bytes[area.bytes.len() - 8..],
            &0x9020u64.to_le_bytes()
        );
    }

    #[test]
    fn lea_targets_are_rip_relative() {
        // lea r13, [rip + 0x10] at +4 of code loaded at 0x1000.
        let code = [0x90, 0x90, 0x90, 0x90, 0x4c, 0x8d, 0x2d, 0x10, 0, 0, 0];
        assert_eq!(lea_target(&code, 0x1000, 4), Some(0x1000 + 4 + 7 + 0x10));
        assert_eq!(lea_target(&code, 0x1000, 0), None);
    }
}
