//! The consistency check: is any thread executing, anywhere on its stack, a function that is
//! about to be replaced?
//!
//! Each thread's stack is read in one bulk copy ([`StackSnapshot`]) and unwound with the
//! `.eh_frame` of the mapped objects, of the vDSO (read from the target's memory: a thread
//! stopped in `clock_gettime` is inside it) and of live patch regions. When unwinding cannot reach the
//! end of the stack (missing unwind info, hand-written assembly), the check falls back to a
//! conservative scan: any word of the stack that points into a busy function counts as a frame.
//! A false "busy" only delays the patch; a false "clear" could break the target, so every doubt
//! resolves to busy.
//!
//! **Coroutines** (`makecontext`/`swapcontext`, boost.context, green threads). A thread that is
//! *running* on a coroutine stack is checked like any other: its snapshot starts at its `rsp`,
//! wherever that is (a heap or `mmap` block, up to the end of that mapping), the unwinder walks
//! it (glibc's `__start_context` ends the chain cleanly) and the conservative scan covers that
//! same region. A coroutine that is *suspended* has no thread; [`crate::suspended`] finds it
//! by the return address it left in memory.
//! Tested in `tests/refusals.rs`: a suspended coroutine outside the patched functions; one
//! suspended inside a replaced function (refused; with the scan off it finishes in the old
//! body and a revert is refused); a thread running on a heap stack inside one (busy).

use std::ops::Range;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use object::{Object as _, ObjectSection as _};

/// Code that must not be on any stack at the switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusyRange {
    pub range: Range<u64>,
    pub name: String,
}

/// A copy of one thread's stack from `base` upwards.
#[derive(Clone, Debug, Default)]
pub struct StackSnapshot {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl StackSnapshot {
    fn read(&self, addr: u64) -> Option<u64> {
        let off = addr.checked_sub(self.base)? as usize;
        let b = self.bytes.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

/// What the check found on one thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Clear,
    /// `depth` 0 is the instruction pointer; `exact` is false for the conservative scan.
    Busy {
        name: String,
        depth: usize,
        exact: bool,
        /// When the unwind was complete: where the return address out of the outermost busy
        /// frame is stored on the stack, and its value (see [`crate::retstub`]).
        ret_slot: Option<(u64, u64)>,
    },
}

/// Bytes of a section, shared with the file (or buffer) they are part of: unwind rules are
/// used where they lie, in the mapped file, not copied out of it.
#[derive(Clone)]
pub struct Section {
    owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl Default for Section {
    fn default() -> Section {
        Section {
            owner: std::sync::Arc::new(Vec::new()),
            range: 0..0,
        }
    }
}

impl std::ops::Deref for Section {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

/// Unwind information of the objects in one target.
#[derive(Default)]
pub struct UnwindInfo {
    unwinder: UnwinderX86_64<Section>,
    /// Code ranges that have unwind information. A frame outside them means framehop fell
    /// back to frame pointers, which -O2 code does not keep: such an unwind is not trusted.
    ranges: Vec<Range<u64>>,
    /// framehop's rule cache, shared by every unwind (it is keyed by address and by the
    /// unwinder's module set; making one costs an allocation of several kilobytes).
    cache: std::sync::Mutex<Option<CacheX86_64>>,
    /// On-stack replacement trampolines ([`crate::osr`]): a return address equal to one is
    /// unwound as the `from` it was moved from (the frame still has that shape) and checked
    /// as the `to` it goes on at.
    trampolines: std::collections::HashMap<u64, (u64, u64)>,
    /// The trampolines' code, with where each goes on.
    trampoline_code: Vec<(Range<u64>, u64)>,
}

const MAX_FRAMES: usize = 1024;

impl UnwindInfo {
    /// Adds an ELF file mapped with load `bias`, whose executable code occupies `code`.
    /// Files without `.eh_frame` are skipped (the conservative scan covers them). The unwind
    /// sections stay in `file`, which is kept alive as long as this value.
    pub fn add_elf<F>(&mut self, name: &str, file: std::sync::Arc<F>, bias: u64, code: Range<u64>)
    where
        F: AsRef<[u8]> + Send + Sync + 'static,
    {
        let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = file;
        let bytes: &[u8] = (*owner).as_ref();
        let Ok(elf) = object::File::parse(bytes) else {
            return;
        };
        let section = |n: &str| {
            elf.section_by_name(n).and_then(|s| {
                let (offset, size) = s.file_range()?;
                let range = usize::try_from(offset).ok()?..usize::try_from(offset + size).ok()?;
                bytes.get(range.clone())?;
                let data = Section {
                    owner: owner.clone(),
                    range,
                };
                Some((s.address()..s.address() + s.size(), data))
            })
        };
        let eh_frame = section(".eh_frame");
        if eh_frame.is_none() {
            return;
        }
        let hdr = section(".eh_frame_hdr");
        // Fault the unwind sections' pages in now, while the target runs: the first unwind
        // reads them inside the stop.
        for (_, data) in eh_frame.iter().chain(hdr.iter()) {
            let sum = data
                .iter()
                .step_by(crate::maps::PAGE_SIZE as usize)
                .fold(0u8, |a, b| a ^ b);
            std::hint::black_box(sum);
        }
        // `.text`'s address only (for text-relative pointer encodings): framehop reads code
        // bytes for Mach-O compact unwind info alone.
        let text = elf
            .section_by_name(".text")
            .map(|s| s.address()..s.address() + s.size());
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: text,
            eh_frame_svma: eh_frame.as_ref().map(|t| t.0.clone()),
            eh_frame: eh_frame.map(|t| t.1),
            eh_frame_hdr_svma: hdr.as_ref().map(|t| t.0.clone()),
            eh_frame_hdr: hdr.map(|t| t.1),
            ..Default::default()
        };
        self.ranges.push(code.clone());
        self.unwinder
            .add_module(Module::new(name.to_string(), code, bias, info));
    }

    /// Adds the target's vDSO, read from its memory (the kernel maps it; no file holds it):
    /// a thread stopped inside `clock_gettime` or `gettimeofday` is then unwound exactly
    /// through the vDSO's own `.eh_frame` instead of falling back to the conservative scan.
    /// Returns whether unwind rules were added (no vDSO, an unreadable one or one without
    /// `.eh_frame` leaves the scan as the fallback).
    pub fn add_vdso(&mut self, mem: &crate::mem::ProcessMemory, maps: &crate::maps::Maps) -> bool {
        use object::{Object as _, ObjectSegment as _};
        let Some(vdso) = maps.vdso() else {
            return false;
        };
        let (start, end) = (vdso.start.0, vdso.end.0);
        let Ok(image) = mem.read_vec(vdso.start, (end - start) as usize) else {
            return false;
        };
        // The image is linked at 0 on x86-64 (its lowest `PT_LOAD` address, in general).
        let Some(lowest) = object::File::parse(&image[..])
            .ok()
            .and_then(|elf| elf.segments().map(|s| s.address()).min())
        else {
            return false;
        };
        let before = self.ranges.len();
        let bias = start.wrapping_sub(lowest & !(crate::maps::PAGE_SIZE - 1));
        self.add_elf("[vdso]", std::sync::Arc::new(image), bias, start..end);
        self.ranges.len() > before
    }

    /// Adds a live patch region whose linked `.eh_frame` bytes sit at `eh_frame_addr`.
    pub fn add_patch(
        &mut self,
        name: &str,
        code: Range<u64>,
        eh_frame_addr: u64,
        eh_frame: Vec<u8>,
    ) {
        let len = eh_frame.len() as u64;
        // framehop looks addresses up as 32-bit offsets from the module's base: the base must
        // be near the code (a base of 0 truncates them, every lookup misses, and framehop
        // falls back to frame pointers). Addresses are the same in both spaces here.
        let base = code.start.min(eh_frame_addr);
        let eh_frame = Section {
            range: 0..eh_frame.len(),
            owner: std::sync::Arc::new(eh_frame),
        };
        let info = ExplicitModuleSectionInfo {
            base_svma: base,
            eh_frame_svma: Some(eh_frame_addr..eh_frame_addr + len),
            eh_frame: Some(eh_frame),
            ..Default::default()
        };
        self.ranges.push(code.clone());
        self.unwinder
            .add_module(Module::new(name.to_string(), code, base, info));
    }

    /// Registers the trampolines of an on-stack replacement table.
    pub fn add_trampolines(&mut self, area: &crate::osr::Area) {
        for e in &area.entries {
            self.trampolines.insert(e.trampoline, (e.from, e.to));
        }
        self.trampoline_code.extend(area.code_ranges());
    }

    /// Where a thread whose instruction pointer is inside a trampoline goes on.
    fn in_trampoline(&self, rip: u64) -> Option<u64> {
        self.trampoline_code
            .iter()
            .find(|(r, _)| r.contains(&rip))
            .map(|&(_, to)| to)
    }

    /// The return address a trampoline stands for when unwinding.
    pub fn unwinds_as(&self, ra: u64) -> Option<u64> {
        self.trampolines.get(&ra).map(|&(from, _)| from)
    }

    pub fn module_count(&self) -> usize {
        self.ranges.len()
    }

    /// The frame a suspended call would belong to: the return address `ra` into a function,
    /// stored at `slot`, taken as the slot a `call` in that function pushed, and the
    /// function's own frame unwound one step by its exact rule at `ra` (its stack pointer just
    /// above the slot). Returns that frame's CFA and the word at CFA - 8 (its own return
    /// address). `None` when that is not known: no unwind information for `ra`, a rule that
    /// needs another register (a frame pointer: `rbp` is unknown here, so such a rule stops
    /// the unwind), or memory `read` cannot give.
    pub fn suspended_frame(
        &self,
        ra: u64,
        slot: u64,
        read: impl Fn(u64) -> Option<u64>,
    ) -> Option<(u64, u64)> {
        if !self
            .ranges
            .iter()
            .any(|r| r.contains(&(ra.wrapping_sub(1))))
        {
            return None;
        }
        let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cache = guard.get_or_insert_with(CacheX86_64::new);
        let mut regs = UnwindRegsX86_64::new(ra, slot.checked_add(8)?, 0);
        let address = FrameAddress::from_return_address(ra)?;
        // framehop ends an unwind at a zero return address without giving the CFA: words
        // read as 0 are given to it as 1, and the real word at CFA - 8 is read afterwards.
        let mut nonzero = |addr: u64| read(addr).map(|v| v.max(1)).ok_or(());
        match self
            .unwinder
            .unwind_frame(address, &mut regs, cache, &mut nonzero)
        {
            Ok(Some(_)) => {
                let cfa = regs.sp();
                Some((cfa, read(cfa.checked_sub(8)?)?))
            }
            _ => None,
        }
    }

    /// The frames of a thread whose stack unwinds completely, as address ranges from each
    /// frame's stack pointer to its CFA (innermost first); `None` when the unwind is incomplete.
    pub fn frames(
        &self,
        rip: u64,
        rsp: u64,
        rbp: u64,
        stack: &StackSnapshot,
    ) -> Option<Vec<Range<u64>>> {
        let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cache = guard.get_or_insert_with(CacheX86_64::new);
        let mut read = |addr: u64| stack.read(addr).ok_or(());
        let mut regs = UnwindRegsX86_64::new(rip, rsp, rbp);
        let mut address = FrameAddress::from_instruction_pointer(rip);
        let mut frames = Vec::new();
        for _ in 0..MAX_FRAMES {
            if !self
                .ranges
                .iter()
                .any(|r| r.contains(&address.address_for_lookup()))
            {
                return None;
            }
            let sp = regs.sp();
            match self
                .unwinder
                .unwind_frame(address, &mut regs, cache, &mut read)
            {
                Ok(Some(ra)) => {
                    frames.push(sp..regs.sp());
                    address = FrameAddress::from_return_address(self.unwinds_as(ra).unwrap_or(ra))?;
                }
                Ok(None) => return Some(frames),
                Err(_) => return None,
            }
        }
        None
    }

    /// On-stack replacement ([`crate::osr`]): when every frame of the thread in `busy` waits
    /// in a call whose return address `target` maps, the writes that move them, as (slot,
    /// return address, new return address). An error when the thread itself runs busy code,
    /// the unwind is incomplete, or a busy frame cannot move (with its return address: a call
    /// site `target` does not map). A return address that `alias` maps
    /// (a trampoline a frame was moved to earlier) is unwound as the address it stands for.
    pub fn movable(
        &self,
        (rip, rsp, rbp): (u64, u64, u64),
        stack: &StackSnapshot,
        busy: &[BusyRange],
        target: impl Fn(u64) -> Option<u64>,
        alias: impl Fn(u64) -> Option<u64>,
    ) -> Result<Vec<(u64, u64, u64)>, Option<u64>> {
        let hit = |pc: u64| busy.iter().any(|b| b.range.contains(&pc));
        if hit(rip) || self.in_trampoline(rip).is_some_and(&hit) {
            return Err(None);
        }
        let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cache = guard.get_or_insert_with(CacheX86_64::new);
        let mut read = |addr: u64| stack.read(addr).ok_or(());
        let mut regs = UnwindRegsX86_64::new(rip, rsp, rbp);
        let mut address = FrameAddress::from_instruction_pointer(rip);
        // The raw return address of the current frame (None for the innermost).
        let mut raw: Option<u64> = None;
        let mut moves = Vec::new();
        for _ in 0..MAX_FRAMES {
            let pc = address.address_for_lookup();
            if !self.ranges.iter().any(|r| r.contains(&pc)) {
                return Err(None);
            }
            let busy_here = hit(pc)
                || raw.is_some_and(|r| {
                    hit(r.wrapping_sub(1))
                        || self
                            .trampolines
                            .get(&r)
                            .is_some_and(|&(_, to)| hit(to.wrapping_sub(1)))
                });
            let sp = regs.sp();
            let next = match self
                .unwinder
                .unwind_frame(address, &mut regs, cache, &mut read)
            {
                Ok(next) => next,
                Err(_) => return Err(None),
            };
            if busy_here {
                // The return address into this frame sits just below the callee's CFA, which
                // is this frame's stack pointer at the call: read it where the unwind found it.
                let ra = raw.ok_or(None)?;
                let to = target(ra).ok_or(Some(ra))?;
                let slot = sp.checked_sub(8).ok_or(None)?;
                if stack.read(slot) != Some(ra) {
                    return Err(None);
                }
                moves.push((slot, ra, to));
            }
            match next {
                Some(ra) => {
                    raw = Some(ra);
                    let shape = self.unwinds_as(ra).or_else(|| alias(ra)).unwrap_or(ra);
                    address = FrameAddress::from_return_address(shape).ok_or(None)?;
                }
                None => return Ok(moves),
            }
        }
        Err(None)
    }

    /// Checks one thread given its `rip`, `rsp`, `rbp` and stack snapshot.
    pub fn check(
        &self,
        rip: u64,
        rsp: u64,
        rbp: u64,
        stack: &StackSnapshot,
        busy: &[BusyRange],
    ) -> Finding {
        // The scan fallback below tests every stack word: most lie outside all busy ranges.
        let lo = busy.iter().map(|b| b.range.start).min().unwrap_or(0);
        let hi = busy.iter().map(|b| b.range.end).max().unwrap_or(0);
        let hit = |pc: u64| {
            if pc < lo || pc >= hi {
                return None;
            }
            busy.iter().find(|b| b.range.contains(&pc))
        };
        // Inside a trampoline, a thread is already on its way into the code it resumes.
        if let Some(b) = self.in_trampoline(rip).and_then(hit) {
            return Finding::Busy {
                name: b.name.clone(),
                depth: 0,
                exact: true,
                ret_slot: None,
            };
        }
        let mut guard = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cache = guard.get_or_insert_with(CacheX86_64::new);
        let mut read = |addr: u64| stack.read(addr).ok_or(());
        let mut regs = UnwindRegsX86_64::new(rip, rsp, rbp);
        let mut address = FrameAddress::from_instruction_pointer(rip);
        let mut complete = false;
        // The innermost busy frame (name, depth) and the return slot of the outermost one.
        let mut first: Option<(&BusyRange, usize)> = None;
        let mut outermost: Option<(u64, u64)> = None;
        // Where the frame being looked at goes on, when its return address is a trampoline.
        // The raw return address into the frame being looked at.
        let mut resumes: Option<u64> = None;
        let mut raw: Option<u64> = None;
        for depth in 0..MAX_FRAMES {
            // A return address points after the call: look up the call itself.
            let pc = address.address_for_lookup();
            let here = hit(pc)
                .or_else(|| raw.and_then(|r| hit(r.wrapping_sub(1))))
                .or_else(|| resumes.and_then(|to| hit(to.wrapping_sub(1))));
            if let Some(b) = here {
                first.get_or_insert((b, depth));
            } else if !self.ranges.iter().any(|r| r.contains(&pc)) {
                break;
            }
            match self
                .unwinder
                .unwind_frame(address, &mut regs, cache, &mut read)
            {
                Ok(Some(ra)) => {
                    if here.is_some() {
                        // The caller's stack pointer is this frame's CFA; the return address
                        // sits just below it. Only from code with unwind rules (a frame-pointer
                        // guess could name the wrong word).
                        let slot = regs.sp().wrapping_sub(8);
                        let ruled = self.ranges.iter().any(|r| r.contains(&pc));
                        outermost = (ruled && stack.read(slot) == Some(ra)).then_some((slot, ra));
                    }
                    let alias = self.trampolines.get(&ra).copied();
                    resumes = alias.map(|(_, to)| to);
                    raw = Some(ra);
                    match FrameAddress::from_return_address(alias.map_or(ra, |(from, _)| from)) {
                        Some(next) => address = next,
                        None => {
                            complete = true;
                            break;
                        }
                    }
                }
                Ok(None) => {
                    complete = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some((b, depth)) = first {
            return Finding::Busy {
                name: b.name.clone(),
                depth,
                exact: true,
                ret_slot: if complete { outermost } else { None },
            };
        }
        if complete {
            return Finding::Clear;
        }
        // Unwinding stopped early: scan every word above the stack pointer.
        let from = rsp.saturating_sub(stack.base) as usize;
        let words = stack.bytes.get(from..).unwrap_or(&[]);
        for (i, w) in words.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            if let Some(b) = hit(v.wrapping_sub(1)) {
                return Finding::Busy {
                    name: b.name.clone(),
                    depth: i + 1,
                    exact: false,
                    ret_slot: None,
                };
            }
        }
        match hit(rip) {
            Some(b) => Finding::Busy {
                name: b.name.clone(),
                depth: 0,
                exact: true,
                ret_slot: None,
            },
            None => Finding::Clear,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_unwind_info_the_scan_is_conservative() {
        let info = UnwindInfo::default();
        let busy = [BusyRange {
            range: 0x1000..0x1100,
            name: "handler".into(),
        }];
        // A return address into `handler` sits two words above rsp.
        let mut bytes = vec![0u8; 64];
        bytes[16..24].copy_from_slice(&0x1050u64.to_le_bytes());
        let stack = StackSnapshot {
            base: 0x7000,
            bytes,
        };
        match info.check(0x5000, 0x7000, 0, &stack, &busy) {
            Finding::Busy { name, exact, .. } => {
                assert_eq!(name, "handler");
                assert!(!exact);
            }
            other => panic!("expected busy, got {other:?}"),
        }
        let clean = StackSnapshot {
            base: 0x7000,
            bytes: vec![0u8; 64],
        };
        assert_eq!(info.check(0x5000, 0x7000, 0, &clean, &busy), Finding::Clear);
        assert!(matches!(
            info.check(0x1004, 0x7000, 0, &clean, &busy),
            Finding::Busy { depth: 0, .. }
        ));
    }
}
