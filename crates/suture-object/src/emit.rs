//! Writing the patch object: a relocatable ELF holding only what [`crate::diff`] selected.
//!
//! Layout of a patch object (format version 1):
//! - one section per included function (`.text.<name>`) or data object, symbol at offset 0;
//!   replacements of existing functions are `STB_LOCAL`, new symbols keep their binding;
//! - copies of the strings, mergeable constants and unnamed tables the included code uses
//!   (strings in one non-merging `.rodata.suture.str` section, each behind a local symbol, so no
//!   relocation points into a mergeable section through its section symbol);
//! - undefined symbols for everything else: globals by name, statics of the original as
//!   `suture.local::<file>::<name>` (see [`crate::names::reference_name`]);
//! - `.eh_frame` with the CIEs and FDEs of the included functions;
//! - `.note.GNU-stack`, and `.suture.patch`: the diff report as JSON (schema `suture.diff/1`),
//!   which names the original each function replaces.

use std::collections::HashMap;

use object::elf;
use object::write::{Object as WObject, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionFlags, SectionKind,
    SymbolFlags, SymbolKind, SymbolScope,
};

use crate::diff::{Diff, Role};
use crate::elf::{Bind, Reloc, SecIdx, SymKind};
use crate::error::{Error, Result};
use crate::names;
use crate::special;
use crate::units::{Target, UnitId, UnitKind};

/// Name of the section carrying the JSON manifest.
pub const MANIFEST_SECTION: &str = ".suture.patch";

const SHF_GROUP: u64 = 0x200;

/// Largest section alignment a patch object may ask for: a page. The writer pads the file to
/// each section's alignment, so this also bounds how much larger than its input a patch object
/// can get per section.
const MAX_ALIGN: u64 = 4096;

struct Emitter<'d, 'o, 'a> {
    d: &'d Diff<'o, 'a>,
    out: WObject<'static>,
    units: HashMap<UnitId, SymbolId>,
    undefined: HashMap<String, SymbolId>,
    strings: Option<SectionId>,
    string_syms: HashMap<(SecIdx, u64), SymbolId>,
    anon: HashMap<SecIdx, SectionId>,
    absolute: HashMap<String, SymbolId>,
    /// Copied anonymous sections whose relocations still need writing.
    pending_anon: Vec<SecIdx>,
    /// The first problem met while building the object (see [`Emitter::alignment`]).
    error: Option<Error>,
}

fn st_info(bind: Bind, kind: u8) -> elf::SymbolInfo {
    let b = match bind {
        Bind::Local => elf::STB_LOCAL,
        Bind::Weak => elf::STB_WEAK,
        _ => elf::STB_GLOBAL,
    };
    elf::SymbolInfo::new(b, elf::SymbolType(kind))
}

fn scope(bind: Bind) -> SymbolScope {
    if bind == Bind::Local {
        SymbolScope::Compilation
    } else {
        SymbolScope::Dynamic
    }
}

impl<'d, 'o, 'a> Emitter<'d, 'o, 'a> {
    fn section(
        &mut self,
        name: &str,
        sh_type: u32,
        flags: u64,
        data: &[u8],
        align: u64,
    ) -> SectionId {
        if sh_type == elf::SHT_NOBITS.0 {
            return self.bss_section(name, flags, data.len() as u64, align);
        }
        let align = self.alignment(name, align);
        let id = self
            .out
            .add_section(Vec::new(), name.as_bytes().to_vec(), SectionKind::Other);
        let s = self.out.section_mut(id);
        // The kind only steers `object`'s defaults; type and flags are set explicitly.
        s.flags = SectionFlags::Elf {
            sh_type: elf::SectionType(sh_type),
            sh_flags: elf::SectionFlags(flags),
        };
        s.set_data(data.to_vec(), align);
        id
    }

    /// An `SHT_NOBITS` section of `size` bytes (nothing is allocated for its contents).
    fn bss_section(&mut self, name: &str, flags: u64, size: u64, align: u64) -> SectionId {
        let align = self.alignment(name, align);
        let id = self.out.add_section(
            Vec::new(),
            name.as_bytes().to_vec(),
            SectionKind::UninitializedData,
        );
        let s = self.out.section_mut(id);
        s.flags = SectionFlags::Elf {
            sh_type: elf::SHT_NOBITS,
            sh_flags: elf::SectionFlags(flags),
        };
        s.append_bss(size, align);
        id
    }

    /// A section alignment the writer can honour: a power of two of at most [`MAX_ALIGN`].
    /// Anything else is recorded as the emitter's error and replaced by 1 so emission can run
    /// to its end.
    fn alignment(&mut self, name: &str, align: u64) -> u64 {
        let align = align.max(1);
        if align.is_power_of_two() && align <= MAX_ALIGN {
            return align;
        }
        self.error.get_or_insert_with(|| {
            Error::Unsupported(format!(
                "section {name} requires alignment {align:#x}; at most {MAX_ALIGN:#x} is supported"
            ))
        });
        1
    }

    fn symbol(
        &mut self,
        name: &str,
        section: SymbolSection,
        value: u64,
        size: u64,
        bind: Bind,
        kind: u8,
    ) -> SymbolId {
        self.out.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value,
            size,
            kind: SymbolKind::Unknown,
            scope: scope(bind),
            weak: bind == Bind::Weak,
            section,
            flags: SymbolFlags::Elf {
                st_info: st_info(bind, kind),
                st_other: elf::SymbolOther(0),
            },
        })
    }

    /// Sections and symbols for every included unit (relocations come later, once every
    /// symbol exists).
    fn define_units(&mut self) {
        let p = &self.d.patched;
        for (&u, &role) in &self.d.included {
            let unit = p.unit(u);
            let src = p.obj.section(unit.section);
            let whole = unit.start == 0 && unit.end == src.size;
            let name = if whole {
                src.name.clone()
            } else {
                format!("{}.{}", src.name, unit.name)
            };
            let flags = src.flags & !SHF_GROUP & !(elf::SHF_MERGE.0 | elf::SHF_STRINGS.0);
            // Keep the alignment the unit had inside its section.
            // A unit carved out of a shared section is aligned as its start was: the largest
            // power of two dividing it, at most the section's alignment.
            let align = if whole || unit.start == 0 {
                src.align
            } else {
                src.align.min(1 << unit.start.trailing_zeros().min(63))
            };
            let sec = if src.is_nobits() {
                self.bss_section(&name, flags, unit.len(), align)
            } else {
                self.section(&name, src.sh_type, flags, p.bytes(u), align)
            };
            let bind = match role {
                Role::Changed | Role::DataCopy => Bind::Local,
                Role::NewFunc | Role::NewData => unit.bind,
            };
            let kind = match (unit.kind, unit.tls, unit.ifunc) {
                (UnitKind::Func, _, true) => elf::STT_GNU_IFUNC.0,
                (UnitKind::Func, _, false) => elf::STT_FUNC.0,
                (UnitKind::Data, true, _) => elf::STT_TLS.0,
                (UnitKind::Data, false, _) => elf::STT_OBJECT.0,
            };
            let name = unit.name.clone();
            let sym = self.symbol(
                &name,
                SymbolSection::Section(sec),
                0,
                unit.len(),
                bind,
                kind,
            );
            self.units.insert(u, sym);
        }
    }

    fn undefined(&mut self, name: &str, bind: Bind, kind: u8) -> SymbolId {
        if let Some(&s) = self.undefined.get(name) {
            return s;
        }
        let bind = if bind == Bind::Weak {
            Bind::Weak
        } else {
            Bind::Global
        };
        let s = self.symbol(name, SymbolSection::Undefined, 0, 0, bind, kind);
        self.undefined.insert(name.to_string(), s);
        s
    }

    fn string_symbol(&mut self, sec: SecIdx, start: u64) -> SymbolId {
        if let Some(&s) = self.string_syms.get(&(sec, start)) {
            return s;
        }
        let section = self.d.patched.obj.section(sec);
        let width = section.entsize.clamp(1, 16);
        let mut bytes = self.d.patched.string_at(sec, start).to_vec();
        bytes.extend(std::iter::repeat_n(0, width as usize));
        // Keep the string's alignment: wide literals are read a character at a time. (A
        // character width that is not a power of two, from a corrupt `sh_entsize`, rounds up.)
        let align = section.align.clamp(width, 64).next_power_of_two();
        self.add_rodata(sec, start, &bytes, align, "str")
    }

    fn const_symbol(&mut self, sec: SecIdx, start: u64, len: u64) -> SymbolId {
        if let Some(&s) = self.string_syms.get(&(sec, start)) {
            return s;
        }
        let bytes = self
            .d
            .patched
            .obj
            .section(sec)
            .bytes(start, start + len)
            .to_vec();
        // Aligned like the constant was in its section: the largest power of two dividing its
        // size (an entry size need not be a power of two), at most 64.
        let align = 1 << len.trailing_zeros().min(6);
        self.add_rodata(sec, start, &bytes, align, "const")
    }

    fn add_rodata(
        &mut self,
        sec: SecIdx,
        start: u64,
        bytes: &[u8],
        align: u64,
        what: &str,
    ) -> SymbolId {
        let out_sec = match self.strings {
            Some(s) => s,
            None => {
                let flags = elf::SHF_ALLOC.0;
                let s = self.section(".rodata.suture", elf::SHT_PROGBITS.0, flags, &[], 1);
                self.strings = Some(s);
                s
            }
        };
        let offset = self.out.append_section_data(out_sec, bytes, align);
        let name = format!("suture.{what}.{}", self.string_syms.len());
        let sym = self.symbol(
            &name,
            SymbolSection::Section(out_sec),
            offset,
            bytes.len() as u64,
            Bind::Local,
            elf::STT_OBJECT.0,
        );
        self.string_syms.insert((sec, start), sym);
        sym
    }

    fn anon_section(&mut self, sec: SecIdx) -> SymbolId {
        let id = match self.anon.get(&sec) {
            Some(&id) => id,
            None => {
                let src = self.d.patched.obj.section(sec);
                let flags = src.flags & !SHF_GROUP & !(elf::SHF_MERGE.0 | elf::SHF_STRINGS.0);
                let (name, size, data) = (src.name.clone(), src.size, src.data);
                let id = if src.is_nobits() {
                    self.bss_section(&name, flags, size, src.align)
                } else {
                    self.section(&name, src.sh_type, flags, data, src.align)
                };
                self.anon.insert(sec, id);
                self.pending_anon.push(sec);
                id
            }
        };
        self.out.section_symbol(id)
    }

    /// The symbol and addend a relocation of included code must use for target `t`.
    /// `describes` is set for metadata about included code (unwind tables), which must
    /// always point at the patch's own copy.
    fn map_target(&mut self, t: &Target, describes: bool) -> (SymbolId, i64) {
        let d = self.d;
        let original = match *t {
            Target::Unit { unit, .. } if describes && d.included.contains_key(&unit) => None,
            _ => d.original_for(t),
        };
        if let Some(a) = original {
            let ua = d.orig.unit(a);
            let local = ua.bind == Bind::Local;
            let name = names::reference_name(&ua.name, local, d.orig.obj.file_of(ua.sym));
            let kind = match (ua.kind, ua.tls) {
                (UnitKind::Func, _) => elf::STT_FUNC.0,
                (UnitKind::Data, true) => elf::STT_TLS.0,
                (UnitKind::Data, false) => elf::STT_OBJECT.0,
            };
            let Target::Unit { rel, .. } = *t else {
                unreachable!("original_for only maps units")
            };
            return (self.undefined(&name, ua.bind, kind), rel);
        }
        match *t {
            Target::Unit { unit, rel, .. } => (self.units[&unit], rel),
            Target::External { sym, addend } => {
                let s = d.patched.obj.symbol(sym);
                let kind = match s.kind {
                    SymKind::Tls => elf::STT_TLS.0,
                    SymKind::Func => elf::STT_FUNC.0,
                    SymKind::Object => elf::STT_OBJECT.0,
                    _ => elf::STT_NOTYPE.0,
                };
                let name = s.name.clone();
                (self.undefined(&name, s.bind, kind), addend)
            }
            Target::Str { sec, start, rel } => (self.string_symbol(sec, start), rel),
            Target::Const {
                sec,
                start,
                len,
                rel,
            } => (self.const_symbol(sec, start, len), rel),
            Target::Anon { sec, offset, .. } => (self.anon_section(sec), offset),
            Target::Absolute { sym, addend } => {
                let s = d.patched.obj.symbol(sym);
                let name = if s.name.is_empty() {
                    format!("suture.abs.{}", sym.0)
                } else {
                    s.name.clone()
                };
                let id = match self.absolute.get(&name) {
                    Some(&id) => id,
                    None => {
                        let id = self.symbol(
                            &name,
                            SymbolSection::Absolute,
                            s.value,
                            s.size,
                            Bind::Local,
                            elf::STT_NOTYPE.0,
                        );
                        self.absolute.insert(name, id);
                        id
                    }
                };
                (id, addend)
            }
        }
    }

    fn relocate(
        &mut self,
        out_sec: SectionId,
        relocs: Vec<(Reloc, Target)>,
        base: u64,
        describes: bool,
    ) -> Result<()> {
        for (r, t) in relocs {
            let (symbol, addend) = self.map_target(&t, describes);
            self.out
                .add_relocation(
                    out_sec,
                    Relocation {
                        offset: r.offset - base,
                        symbol,
                        addend,
                        flags: RelocationFlags::Elf {
                            r_type: elf::RelocationType(r.r_type),
                        },
                    },
                )
                .map_err(|e| Error::Write(e.to_string()))?;
        }
        Ok(())
    }

    fn relocate_units(&mut self) -> Result<()> {
        let p = &self.d.patched;
        let included: Vec<UnitId> = self.d.included.keys().copied().collect();
        for u in included {
            let sym = self.units[&u];
            let SymbolSection::Section(out_sec) = self.out.symbol(sym).section else {
                unreachable!("unit symbols are defined")
            };
            let relocs: Vec<_> = p.relocs(u).map(|(r, t)| (*r, t)).collect();
            self.relocate(out_sec, relocs, p.unit(u).start, false)?;
        }
        self.flush_anon()
    }

    /// Writes the relocations of anonymous sections copied so far (copying may reach more).
    fn flush_anon(&mut self) -> Result<()> {
        let p = &self.d.patched;
        while let Some(sec) = self.pending_anon.pop() {
            let out_sec = self.anon[&sec];
            let size = p.obj.section(sec).size;
            let relocs: Vec<_> = p
                .section_relocs(sec, 0, size)
                .map(|(r, t)| (*r, t))
                .collect();
            self.relocate(out_sec, relocs, 0, false)?;
        }
        Ok(())
    }

    /// Copies the descriptor-table entries of included functions (see [`crate::special`]):
    /// one output section per table, entries in unit then entry order, relocations rewritten
    /// so that references into included code point at the patch's copy. An alternative's
    /// replacement bytes go to `.altinstr_replacement`, `.orc_unwind` follows `.orc_unwind_ip`.
    fn special(&mut self) -> Result<()> {
        let p = &self.d.patched;
        let entries = special::entries_by_unit(p);
        let included: Vec<UnitId> = self
            .d
            .included
            .iter()
            .filter(|(u, _)| p.unit(**u).kind == UnitKind::Func)
            .map(|(u, _)| *u)
            .collect();
        let mut repl_out: Option<(SectionId, SymbolId)> = None;
        for t in special::resolve(p.obj).0.into_iter().filter(|t| t.carry) {
            let mine: Vec<&special::Entry> = included
                .iter()
                .flat_map(|u| entries[u.0 as usize].iter())
                .filter(|e| e.table.name == t.name)
                .collect();
            let Some(first) = mine.first() else { continue };
            let src = p.obj.section(first.sec);
            let flags = src.flags & !SHF_GROUP;
            let mut data = Vec::new();
            let mut relocs = Vec::new();
            let mut parallel = Vec::new();
            let mut repl_relocs: Vec<(u64, Reloc, Target)> = Vec::new();
            let mut alt_links = Vec::new();
            for e in &mine {
                let at = data.len() as u64;
                data.extend_from_slice(src.bytes(e.start(), e.end()));
                for (r, target) in p.section_relocs(e.sec, e.start(), e.end()) {
                    let repl_field = t.repl.map(|(repl, _)| e.start() + repl);
                    if let Some((rsec, r0, r1)) =
                        special::replacement(p, e).filter(|_| Some(r.offset) == repl_field)
                    {
                        // The replacement code moves to the patch's `.altinstr_replacement`.
                        let (rs, _) = *repl_out.get_or_insert_with(|| {
                            let s = self.section(
                                special::ALTINSTR_REPLACEMENT,
                                elf::SHT_PROGBITS.0,
                                p.obj.section(rsec).flags & !SHF_GROUP,
                                &[],
                                1,
                            );
                            (s, self.out.section_symbol(s))
                        });
                        let bytes = p.obj.section(rsec).bytes(r0, r1);
                        let new_at = self.out.append_section_data(rs, bytes, 1);
                        for (rr, rt) in p.section_relocs(rsec, r0, r1) {
                            let mut moved = *rr;
                            moved.offset = rr.offset - r0 + new_at;
                            repl_relocs.push((new_at, moved, rt));
                        }
                        alt_links.push((at + r.offset - e.start(), r.r_type, new_at as i64));
                        continue;
                    }
                    let mut moved = *r;
                    moved.offset = r.offset - e.start() + at;
                    relocs.push((moved, target));
                }
                if let Some((par, size)) = t.parallel {
                    let sec = special::section_named(p.obj, par)
                        .ok_or_else(|| Error::Malformed(format!("{} without {par}", t.name)))?;
                    let s = p.obj.section(sec);
                    if (e.index + 1) * size > s.size {
                        return Err(Error::Malformed(format!(
                            "{par} is shorter than {}",
                            t.name
                        )));
                    }
                    parallel.extend_from_slice(s.bytes(e.index * size, (e.index + 1) * size));
                }
                // Entries keep the table's stride, padded even where the object left an
                // entry's padding out (5.10's last `.parainstructions` entry).
                data.resize(data.len().next_multiple_of(t.entry as usize), 0);
            }
            let out_sec = self.section(t.name, src.sh_type, flags, &data, src.align);
            self.relocate(out_sec, relocs, 0, true)?;
            if let Some((rs, rsym)) = repl_out {
                let rel: Vec<_> = repl_relocs.drain(..).map(|(_, r, t)| (r, t)).collect();
                self.relocate(rs, rel, 0, true)?;
                for (offset, r_type, addend) in alt_links.drain(..) {
                    self.out
                        .add_relocation(
                            out_sec,
                            Relocation {
                                offset,
                                symbol: rsym,
                                addend,
                                flags: RelocationFlags::Elf {
                                    r_type: elf::RelocationType(r_type),
                                },
                            },
                        )
                        .map_err(|e| Error::Write(e.to_string()))?;
                }
            }
            if let Some((par, _)) = t.parallel {
                let psec = special::section_named(p.obj, par).expect("checked above");
                let ps = p.obj.section(psec);
                self.section(par, ps.sh_type, ps.flags & !SHF_GROUP, &parallel, ps.align);
            }
        }
        Ok(())
    }

    /// Copies the CIEs and FDEs that describe included functions.
    fn eh_frame(&mut self) -> Result<()> {
        let p = &self.d.patched;
        let Some((sec, records)) = p.eh_frame_records()? else {
            return Ok(());
        };
        let src = p.obj.section(sec);
        let data = src.data;
        let read32 = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
        };
        let keep: Vec<(usize, usize, usize)> = records
            .iter()
            .filter(|f| f.unit.is_some_and(|u| self.d.included.contains_key(&u)))
            .map(|f| (f.at, f.len, f.cie))
            .collect();
        if keep.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        let mut relocs = Vec::new();
        let mut cies: HashMap<usize, usize> = HashMap::new();
        let copy =
            |out: &mut Vec<u8>, relocs: &mut Vec<(Reloc, Target)>, at: usize, total: usize| {
                let new_at = out.len();
                out.extend_from_slice(&data[at..at + total]);
                for r in src.relocs.iter().filter(|r| {
                    r.r_type != 0 && r.offset >= at as u64 && r.offset < (at + total) as u64
                }) {
                    let mut moved = *r;
                    moved.offset = r.offset - at as u64 + new_at as u64;
                    relocs.push((moved, p.resolve(sec, r)));
                }
                new_at
            };
        for &(at, total, cie) in &keep {
            let new_cie = match cies.get(&cie) {
                Some(&c) => c,
                None => {
                    let cie_len = read32(cie).ok_or_else(|| {
                        Error::Malformed(format!(".eh_frame CIE at {cie:#x} is truncated"))
                    })? as usize;
                    if cie + 4 + cie_len > data.len() || read32(cie + 4) != Some(0) {
                        return Err(Error::Malformed(format!("no .eh_frame CIE at {cie:#x}")));
                    }
                    let c = copy(&mut out, &mut relocs, cie, 4 + cie_len);
                    cies.insert(cie, c);
                    c
                }
            };
            let new_at = copy(&mut out, &mut relocs, at, total);
            let ptr = (new_at + 4 - new_cie) as u32;
            out[new_at + 4..new_at + 8].copy_from_slice(&ptr.to_le_bytes());
        }
        let out_sec = self.section(".eh_frame", src.sh_type, elf::SHF_ALLOC.0, &out, 8);
        self.relocate(out_sec, relocs, 0, true)
    }
}

/// Writes the patch object for a diff.
pub fn emit(d: &Diff) -> Result<Vec<u8>> {
    let mut out = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    if let Some(file) = &d.report.source_file {
        out.add_file_symbol(file.as_bytes().to_vec());
    }
    let mut e = Emitter {
        d,
        out,
        units: HashMap::new(),
        undefined: HashMap::new(),
        strings: None,
        string_syms: HashMap::new(),
        anon: HashMap::new(),
        absolute: HashMap::new(),
        pending_anon: Vec::new(),
        error: None,
    };
    e.define_units();
    e.relocate_units()?;
    e.eh_frame()?;
    e.special()?;
    e.flush_anon()?;
    e.section(".note.GNU-stack", elf::SHT_PROGBITS.0, 0, &[], 1);
    let manifest = serde_json::to_vec(&d.report).map_err(|e| Error::Write(e.to_string()))?;
    e.section(MANIFEST_SECTION, elf::SHT_PROGBITS.0, 0, &manifest, 1);
    if let Some(err) = e.error {
        return Err(err);
    }
    e.out.write().map_err(|e| Error::Write(e.to_string()))
}
