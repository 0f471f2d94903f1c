//! Units: the functions and data objects of one object file, and what each relocation of the
//! object really points at.
//!
//! A unit is a symbol-delimited byte range of a section. With `-ffunction-sections` a unit is
//! usually a whole section, but kernel objects keep several functions in one section
//! (`.init.text`, `.noinstr.text`, ...) and data in `.data..read_mostly`, so ranges are the
//! general case. Relocation targets are resolved once, here, into [`Target`]s that name a unit,
//! an external symbol, a string literal, a mergeable constant or an anonymous section: the
//! differ compares targets, never raw section offsets.

use std::cell::OnceCell;
use std::collections::HashMap;

use object::elf;

use crate::elf::{Bind, Object, Place, Reloc, SecIdx, SymIdx, SymKind};
use crate::names;
use crate::x86::{self, Insn};

/// Index of a unit within its object's [`Units`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    Func,
    Data,
}

#[derive(Clone, Debug)]
pub struct Unit {
    /// The primary symbol (globals preferred over local aliases).
    pub sym: SymIdx,
    pub name: String,
    pub key: String,
    pub kind: UnitKind,
    pub section: SecIdx,
    pub start: u64,
    pub end: u64,
    pub bind: Bind,
    pub tls: bool,
    pub ifunc: bool,
    /// Every name of the unit (aliases share one address), sorted.
    pub names: Vec<String>,
}

impl Unit {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// True when the name has no build-dependent numeric component and can be matched exactly.
    pub fn has_stable_name(&self) -> bool {
        self.key == self.name
    }
}

/// What a relocation points at, independent of where things sit in their sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A function or data object of this object. `rel` is the raw target (symbol value plus
    /// addend) relative to the unit start; `entry` says the reference really lands on the
    /// unit's first byte (after accounting for PC-relative instruction ends); `branch` says it
    /// is the operand of a direct `call`/`jmp`/`jcc`.
    Unit {
        unit: UnitId,
        rel: i64,
        entry: bool,
        branch: bool,
    },
    /// A symbol this object does not define.
    External { sym: SymIdx, addend: i64 },
    /// A NUL-terminated string in a mergeable string section starting at `start`.
    Str { sec: SecIdx, start: u64, rel: i64 },
    /// A fixed-size constant in a mergeable constant section.
    Const {
        sec: SecIdx,
        start: u64,
        len: u64,
        rel: i64,
    },
    /// Bytes of a section with no symbol covering them (jump tables, unnamed read-only data
    /// such as string literals at -O0). `offset` is the raw target, `at` where it really lands.
    /// The datum extends from `at` to the next offset of the section that anything refers to
    /// (see [`Units::anon_piece`]).
    Anon { sec: SecIdx, offset: i64, at: i64 },
    /// An absolute symbol, or anything else that has no location (non-allocated sections).
    Absolute { sym: SymIdx, addend: i64 },
}

/// The units of one object plus resolved relocation targets.
pub struct Units<'o, 'a> {
    pub obj: &'o Object<'a>,
    pub units: Vec<Unit>,
    /// Units of each section, sorted by start.
    pub by_section: Vec<Vec<UnitId>>,
    /// Unit defined by each symbol (including aliases).
    pub by_symbol: Vec<Option<UnitId>>,
    /// Relocations of each section: the object's, plus ones synthesized for branches the
    /// assembler resolved itself inside sections shared by several functions.
    pub relocs: Vec<Vec<Reloc>>,
    /// Branches out of a function that cannot be relocated (short jumps to a neighbour in a
    /// shared section): (section, offset).
    pub unrelocatable: Vec<(SecIdx, u64)>,
    /// Resolved target of every relocation of every allocated section (parallel to `relocs`).
    pub targets: Vec<Vec<Target>>,
    /// For sections without symbols: every offset something refers to, sorted.
    pub anon_cuts: Vec<Vec<u64>>,
    /// For each unit, the units referring to it: (referrer, reference lands on entry).
    pub referrers: Vec<Vec<(UnitId, bool)>>,
    insns: Vec<OnceCell<Vec<Insn>>>,
    /// For each section, the unit ending at each offset (the last in `by_section` order).
    ending_at: Vec<HashMap<u64, UnitId>>,
}

/// One `.eh_frame` FDE: where it is, its CIE, and the unit it describes.
#[derive(Clone, Copy, Debug)]
pub struct Fde {
    pub at: usize,
    pub len: usize,
    pub cie: usize,
    pub unit: Option<UnitId>,
}

/// Relocation types whose value is relative to the place being relocated.
pub fn is_pc_relative(r_type: u32) -> bool {
    // PC32, PLT32, GOTPCREL, TLSGD, TLSLD, GOTTPOFF, PC16, PC8, PC64, GOTPC32, GOTPC32_TLSDESC,
    // GOTPCRELX, REX_GOTPCRELX, CODE_4_GOTPCRELX, CODE_4_GOTTPOFF, CODE_4_GOTPC32_TLSDESC
    matches!(
        r_type,
        2 | 4 | 9 | 19 | 20 | 22 | 13 | 15 | 24 | 26 | 34 | 41 | 42 | 43 | 44 | 45
    )
}

impl<'o, 'a> Units<'o, 'a> {
    pub fn new(obj: &'o Object<'a>) -> Self {
        let nsec = obj.sections.len();
        // Candidate symbols grouped by (section, value, kind): aliases become one unit.
        let mut groups: HashMap<(SecIdx, u64, bool), Vec<SymIdx>> = HashMap::new();
        for (i, s) in obj.symbols.iter().enumerate() {
            let Place::Section(sec) = s.place else {
                continue;
            };
            let section = obj.section(sec);
            // Strings and constants in mergeable sections are compared by contents, not by
            // the labels some compilers keep for them (clang's `.L.str.N`).
            // `.discard.*` sections never reach the running program (the linker drops them).
            if !section.is_alloc()
                || section.flags & elf::SHF_MERGE.0 != 0
                || s.name.starts_with(".L")
                || section.name.starts_with(".discard")
            {
                continue;
            }
            let func = match s.kind {
                SymKind::Func | SymKind::Ifunc => true,
                SymKind::Object | SymKind::Tls => false,
                _ => continue,
            };
            if func && !section.is_exec() {
                continue;
            }
            groups
                .entry((sec, s.value, func))
                .or_default()
                .push(SymIdx(i as u32));
        }
        let mut keys: Vec<_> = groups.keys().copied().collect();
        keys.sort();

        let mut units = Vec::with_capacity(keys.len());
        let mut by_section: Vec<Vec<UnitId>> = vec![Vec::new(); nsec];
        let mut by_symbol = vec![None; obj.symbols.len()];
        for key in keys {
            let syms = &groups[&key];
            let primary = *syms
                .iter()
                .min_by_key(|&&i| {
                    let s = obj.symbol(i);
                    (
                        s.is_local(),
                        s.name.contains('.'),
                        s.name.len(),
                        s.name.clone(),
                    )
                })
                .expect("groups are never empty");
            let size = syms.iter().map(|&i| obj.symbol(i).size).max().unwrap_or(0);
            let (sec, start, func) = key;
            let s = obj.symbol(primary);
            let id = UnitId(units.len() as u32);
            units.push(Unit {
                sym: primary,
                name: s.name.clone(),
                key: names::stable_key(&s.name),
                kind: if func { UnitKind::Func } else { UnitKind::Data },
                section: sec,
                start,
                end: start + size,
                bind: s.bind,
                tls: s.kind == SymKind::Tls || obj.section(sec).is_tls(),
                ifunc: syms.iter().any(|&i| obj.symbol(i).kind == SymKind::Ifunc),
                names: {
                    let mut n: Vec<String> =
                        syms.iter().map(|&i| obj.symbol(i).name.clone()).collect();
                    n.sort();
                    n.dedup();
                    n
                },
            });
            by_section[sec.0 as usize].push(id);
            for &i in syms {
                by_symbol[i.0 as usize] = Some(id);
            }
        }
        // Sized symbols end where their size says; unsized ones extend to the next unit.
        for list in &mut by_section {
            list.sort_by_key(|u| (units[u.0 as usize].start, u.0));
            for w in 0..list.len() {
                let u = list[w].0 as usize;
                if units[u].end == units[u].start {
                    let sec_size = obj.section(units[u].section).size;
                    let next = list[w + 1..]
                        .iter()
                        .map(|n| units[n.0 as usize].start)
                        .find(|&s| s > units[u].start)
                        .unwrap_or(sec_size);
                    // An unsized symbol spans to the next one, but only when it is alone at its
                    // address; asm labels of size 0 stay empty if the section is shared.
                    if list.len() == 1 || units[u].kind == UnitKind::Func {
                        units[u].end = next;
                    }
                }
            }
        }

        let ending_at = by_section
            .iter()
            .map(|list| list.iter().map(|&u| (units[u.0 as usize].end, u)).collect())
            .collect();
        let mut this = Units {
            obj,
            units,
            by_section,
            by_symbol,
            relocs: obj.sections.iter().map(|s| s.relocs.clone()).collect(),
            unrelocatable: Vec::new(),
            targets: vec![Vec::new(); nsec],
            anon_cuts: vec![Vec::new(); nsec],
            referrers: Vec::new(),
            insns: (0..nsec).map(|_| OnceCell::new()).collect(),
            ending_at,
        };
        this.synthesize_branch_relocs();
        this.resolve_all();
        this
    }

    /// In a section holding several functions the assembler resolves calls and jumps between
    /// them itself, leaving no relocation. A function copied out of such a section would then
    /// branch to garbage: make those branches explicit relocations against the section symbol.
    fn synthesize_branch_relocs(&mut self) {
        for (i, section) in self.obj.sections.iter().enumerate() {
            let sec = SecIdx(i as u32);
            let units = &self.by_section[i];
            if !section.is_exec() || units.len() < 2 {
                continue;
            }
            let Some(section_sym) = section.section_symbol else {
                continue;
            };
            let mut extra = Vec::new();
            let mut unrelocatable = Vec::new();
            for insn in self.insns(sec) {
                let Some(target) = insn.branch_target else {
                    continue;
                };
                let Some(u) = self.unit_at_strict(sec, insn.start as i64) else {
                    continue;
                };
                let unit = self.unit(u);
                if (unit.start..unit.end).contains(&target) {
                    continue;
                }
                let end = insn.start + u64::from(insn.len);
                if insn.rel_size != 4 {
                    unrelocatable.push((sec, insn.start));
                    continue;
                }
                let field = end - 4;
                if self.relocs[i]
                    .binary_search_by_key(&field, |r| r.offset)
                    .is_ok()
                {
                    continue;
                }
                extra.push(Reloc {
                    offset: field,
                    r_type: 2, // R_X86_64_PC32
                    sym: section_sym,
                    addend: target as i64 - 4,
                });
            }
            self.unrelocatable.extend(unrelocatable);
            if !extra.is_empty() {
                self.relocs[i].extend(extra);
                self.relocs[i].sort_by_key(|r| r.offset);
            }
        }
    }

    pub fn unit(&self, u: UnitId) -> &Unit {
        &self.units[u.0 as usize]
    }
    pub fn ids(&self) -> impl Iterator<Item = UnitId> {
        (0..self.units.len() as u32).map(UnitId)
    }
    pub fn bytes(&self, u: UnitId) -> &'a [u8] {
        let unit = self.unit(u);
        self.obj.section(unit.section).bytes(unit.start, unit.end)
    }
    /// Relocations of a unit with their resolved targets, `R_X86_64_NONE` entries dropped.
    pub fn relocs(&self, u: UnitId) -> impl Iterator<Item = (&Reloc, Target)> + '_ {
        let unit = self.unit(u);
        self.section_relocs(unit.section, unit.start, unit.end)
    }
    /// Relocations of a section range with their targets, `R_X86_64_NONE` entries dropped.
    pub fn section_relocs(
        &self,
        sec: SecIdx,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (&Reloc, Target)> + '_ {
        let relocs = &self.relocs[sec.0 as usize];
        let lo = relocs.partition_point(|r| r.offset < start);
        let hi = relocs.partition_point(|r| r.offset < end);
        let targets = &self.targets[sec.0 as usize];
        (lo..hi).filter_map(move |i| {
            let r = &relocs[i];
            let t = *targets.get(i)?;
            (r.r_type != 0).then_some((r, t))
        })
    }
    /// Relocations of a section range resolved on the spot (for sections whose targets are
    /// not precomputed, such as `.eh_frame`).
    pub fn section_relocs_of(
        &self,
        sec: SecIdx,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (&Reloc, Target)> + '_ {
        let relocs = &self.relocs[sec.0 as usize];
        let lo = relocs.partition_point(|r| r.offset < start);
        let hi = relocs.partition_point(|r| r.offset < end);
        relocs[lo..hi]
            .iter()
            .filter(|r| r.r_type != 0)
            .map(move |r| (r, self.resolve(sec, r)))
    }

    /// Decoded instructions of a code section (decoded on first use).
    pub fn insns(&self, sec: SecIdx) -> &[Insn] {
        self.insns[sec.0 as usize].get_or_init(|| x86::decode(self.obj.section(sec).data))
    }

    /// The unit covering offset `t` of `sec` (or ending exactly at it, for one-past-the-end
    /// pointers; or the only unit of the section).
    pub fn unit_at(&self, sec: SecIdx, t: i64) -> Option<UnitId> {
        if let Some(u) = self.unit_at_strict(sec, t) {
            return Some(u);
        }
        let list = &self.by_section[sec.0 as usize];
        let size = self.obj.section(sec).size;
        // One past the end of the last object (`&arr[N]`), when nothing follows it.
        if t >= 0 && t as u64 == size {
            if let Some(&u) = self.ending_at[sec.0 as usize].get(&size) {
                return Some(u);
            }
        }
        // A unit filling its whole section owns every offset into it (`arr[i - 1]` bases).
        if let [u] = list.as_slice() {
            let unit = self.unit(*u);
            if unit.start == 0 && unit.end == size {
                return Some(*u);
            }
        }
        None
    }

    /// The unit whose bytes cover offset `t` of `sec`.
    pub fn unit_at_strict(&self, sec: SecIdx, t: i64) -> Option<UnitId> {
        let list = &self.by_section[sec.0 as usize];
        if t < 0 {
            return None;
        }
        let t = t as u64;
        let i = list.partition_point(|u| self.unit(*u).start <= t);
        // The last unit starting at or before t that covers it (ranges rarely nest, so
        // looking a few units back is enough).
        list[..i]
            .iter()
            .rev()
            .take(8)
            .copied()
            .find(|&u| t < self.unit(u).end)
    }

    /// Where an instruction-relative reference really lands, relative to the raw target:
    /// the distance from the relocated field to the end of its instruction.
    fn pc_adjust(&self, sec: SecIdx, r: &Reloc) -> (i64, bool) {
        let section = self.obj.section(sec);
        // Descriptor tables hold plain `S + A` values (`.long 1b - .`): the kernel adds the
        // field's own address back, so the target is the raw one.
        if !is_pc_relative(r.r_type) || crate::special::is_descriptor_section(&section.name) {
            return (0, false);
        }
        if !section.is_exec() {
            // A table entry `.long target - table` (jump tables, relative lookup tables):
            // its value is relative to the table's start, the enclosing object or the last
            // offset code refers to.
            let table = match self.unit_at_strict(sec, r.offset as i64) {
                Some(u) => self.unit(u).start,
                None => {
                    let cuts = &self.anon_cuts[sec.0 as usize];
                    let i = cuts.partition_point(|&c| c <= r.offset);
                    if i > 0 {
                        cuts[i - 1]
                    } else {
                        0
                    }
                }
            };
            return (table as i64 - r.offset as i64, false);
        }
        match x86::insn_at(self.insns(sec), r.offset) {
            Some(insn) => (
                (insn.start + u64::from(insn.len)) as i64 - r.offset as i64,
                insn.direct_branch,
            ),
            None => (4, false),
        }
    }

    /// Resolves one relocation of section `sec`.
    pub fn resolve(&self, sec: SecIdx, r: &Reloc) -> Target {
        let sym = self.obj.symbol(r.sym);
        match sym.place {
            Place::Undefined | Place::Common => Target::External {
                sym: r.sym,
                addend: r.addend,
            },
            Place::Absolute | Place::Other(_) => Target::Absolute {
                sym: r.sym,
                addend: r.addend,
            },
            Place::Section(tsec) => {
                let raw = (sym.value as i64).wrapping_add(r.addend);
                let section = self.obj.section(tsec);
                if !section.is_alloc() {
                    return Target::Absolute {
                        sym: r.sym,
                        addend: r.addend,
                    };
                }
                let (adj, branch) = self.pc_adjust(sec, r);
                let t = raw.wrapping_add(adj);
                // A reference through a named unit symbol keeps that unit even when the
                // target lies outside it (negative offsets, one-past-the-end).
                let named = if sym.kind != SymKind::Section {
                    self.by_symbol[r.sym.0 as usize]
                } else {
                    None
                };
                if let Some(u) = named.or_else(|| self.unit_at(tsec, t)) {
                    // (`unit_at` only falls back beyond a unit's bytes when nothing unnamed
                    // can be there.)
                    let unit = self.unit(u);
                    return Target::Unit {
                        unit: u,
                        rel: raw.wrapping_sub(unit.start as i64),
                        entry: t == unit.start as i64,
                        branch,
                    };
                }
                if section.is_merge_strings() && !section.is_nobits() {
                    let data = section.data;
                    let k = section.entsize.clamp(1, 16) as usize;
                    let at = (t.max(0) as usize).min(data.len());
                    let at = at - at % k;
                    // Characters are `k` bytes wide; a string ends with a zero character.
                    let mut start = at;
                    while start >= k && data[start - k..start].iter().any(|&b| b != 0) {
                        start -= k;
                    }
                    return Target::Str {
                        sec: tsec,
                        start: start as u64,
                        rel: raw.wrapping_sub(start as i64),
                    };
                }
                if section.is_merge_consts() && section.entsize > 0 {
                    let at = t.max(0) as u64;
                    let start = at - at % section.entsize;
                    return Target::Const {
                        sec: tsec,
                        start,
                        len: section.entsize,
                        rel: raw.wrapping_sub(start as i64),
                    };
                }
                Target::Anon {
                    sec: tsec,
                    offset: raw,
                    at: t,
                }
            }
        }
    }

    fn resolve_all(&mut self) {
        // Code first: its references define where unnamed data starts (`anon_cuts`), which
        // table entries in data need to find their table.
        let n = self.obj.sections.len();
        let mut targets = vec![Vec::new(); n];
        for pass_exec in [true, false] {
            for (i, section) in self.obj.sections.iter().enumerate() {
                if !section.is_alloc()
                    || self.relocs[i].is_empty()
                    || section.name == ".eh_frame"
                    || section.is_exec() != pass_exec
                {
                    continue;
                }
                let sec = SecIdx(i as u32);
                targets[i] = self.relocs[i]
                    .iter()
                    .map(|r| self.resolve(sec, r))
                    .collect();
            }
            let mut cuts = vec![Vec::new(); n];
            for t in targets.iter().flatten() {
                if let Target::Anon { sec, at, .. } = *t {
                    cuts[sec.0 as usize].push(at.max(0) as u64);
                }
            }
            for c in &mut cuts {
                c.sort_unstable();
                c.dedup();
            }
            self.anon_cuts = cuts;
        }
        self.targets = targets;
        let mut referrers = vec![Vec::new(); self.units.len()];
        for u in self.ids() {
            for (_, t) in self.relocs(u) {
                if let Target::Unit { unit, entry, .. } = t {
                    if unit != u {
                        referrers[unit.0 as usize].push((u, entry));
                    }
                }
            }
        }
        for list in &mut referrers {
            list.sort();
            list.dedup();
        }
        self.referrers = referrers;
    }

    /// The FDEs of `.eh_frame` with the unit each describes (from its `pc_begin` relocation).
    pub fn eh_frame_records(&self) -> crate::Result<Option<(SecIdx, Vec<Fde>)>> {
        use crate::Error;
        let Some(idx) = self
            .obj
            .sections
            .iter()
            .position(|s| s.name == ".eh_frame" && !s.is_nobits())
        else {
            return Ok(None);
        };
        let sec = SecIdx(idx as u32);
        let src = self.obj.section(sec);
        let data = src.data;
        let read32 = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
        };
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 4 <= data.len() {
            let Some(len) = read32(at) else { break };
            if len == 0 {
                break;
            }
            if len == u32::MAX {
                return Err(Error::Unsupported("64-bit .eh_frame records".into()));
            }
            let total = 4 + len as usize;
            if at + total > data.len() || len < 4 {
                return Err(Error::Malformed(format!(
                    ".eh_frame record at {at:#x} overruns the section"
                )));
            }
            let id = read32(at + 4).unwrap_or(0) as usize;
            if id != 0 {
                let cie = (at + 4).checked_sub(id).ok_or_else(|| {
                    Error::Malformed(format!(
                        ".eh_frame FDE at {at:#x} points before the section"
                    ))
                })?;
                let pc = src.relocs_in((at + 8) as u64, (at + 9) as u64).first();
                let unit = pc.and_then(|r| match self.resolve(sec, r) {
                    Target::Unit { unit, .. } => Some(unit),
                    _ => None,
                });
                out.push(Fde {
                    at,
                    len: total,
                    cie,
                    unit,
                });
            }
            at += total;
        }
        Ok(Some((sec, out)))
    }

    /// The byte range `[start, end)` of the anonymous datum at `at`: from the last referenced
    /// offset at or before it to the next referenced offset (or the section end).
    pub fn anon_piece(&self, sec: SecIdx, at: i64) -> (u64, u64) {
        let size = self.obj.section(sec).size;
        let at = (at.max(0) as u64).min(size);
        let cuts = &self.anon_cuts[sec.0 as usize];
        let i = cuts.partition_point(|&c| c <= at);
        let start = if i > 0 { cuts[i - 1] } else { 0 };
        let end = cuts.get(i).copied().unwrap_or(size).max(start);
        (start, end)
    }

    /// The NUL-terminated string at `start` of a mergeable string section.
    pub fn string_at(&self, sec: SecIdx, start: u64) -> &'a [u8] {
        let section = self.obj.section(sec);
        let data = section.data;
        // Characters are `entsize` bytes wide (wide and UTF-16/32 literals).
        let k = section.entsize.clamp(1, 16) as usize;
        let s = (start as usize).min(data.len());
        let end = data[s..]
            .chunks(k)
            .position(|c| c.iter().all(|&b| b == 0))
            .map_or(data.len(), |p| s + p * k);
        &data[s..end]
    }

    /// True when the unit's bytes may change at run time (so a changed value cannot be
    /// carried by a patch). `.data.rel.ro` is read-only once the dynamic loader is done.
    pub fn is_writable(&self, u: UnitId) -> bool {
        let section = self.obj.section(self.unit(u).section);
        section.is_write() && !section.name.starts_with(".data.rel.ro")
    }
}
