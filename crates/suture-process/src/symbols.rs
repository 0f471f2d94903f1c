//! Symbols of the ELF files mapped into a target, and a [`Resolver`] over them.
//!
//! Everything here reads file bytes (opened by the caller through `/proc/PID/root` or
//! `/proc/PID/map_files`, so mount namespaces are honoured) and is done before the target is
//! stopped.

use std::collections::HashMap;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Rela, SectionHeader, Sym as _};
use object::{LittleEndian as LE, Object as _, ObjectSymbol, SymbolKind};
use thiserror::Error;

use crate::ids::RemoteAddr;
use crate::link::{Request, Resolver, Value};

#[derive(Debug, Error)]
pub enum SymbolsError {
    #[error("{path}: not an ELF file this loader understands: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: 32-bit objects are not supported")]
    Class32 { path: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sym {
    /// Link-time value (add the object's bias for the runtime address).
    pub value: u64,
    pub size: u64,
    pub tls: bool,
    pub ifunc: bool,
}

/// The symbols of one ELF file (an executable or a shared library).
#[derive(Debug, Default)]
pub struct ElfSymbols {
    pub build_id: Option<Vec<u8>>,
    /// `ET_DYN` (PIE or library): addresses move by the load bias.
    pub relocatable: bool,
    /// Link-time virtual address of the first `PT_LOAD` (page-aligned) and its file offset.
    pub first_load: (u64, u64),
    /// Defined global and weak symbols from `.symtab` and `.dynsym`.
    pub globals: HashMap<String, Sym>,
    /// Defined local symbols from `.symtab`, keyed by (source file, name).
    pub locals: HashMap<(String, String), Vec<Sym>>,
    /// `PT_TLS` size and alignment (for static TLS offsets of the executable).
    pub tls: Option<(u64, u64)>,
    /// True when the file has a `.symtab` (it is not stripped).
    pub has_symtab: bool,
    /// The dynamic relocations that fill GOT slots ld.so decides at run time: module ids and
    /// TLS offsets (`DTPMOD64`, `TPOFF64`) and function addresses (`JUMP_SLOT`, `GLOB_DAT`,
    /// `64`, `IRELATIVE`). Read back from the target's memory to learn what ld.so chose.
    pub dyn_relocs: Vec<DynReloc>,
    /// Link-time address ranges of the PLT sections (a lazy `JUMP_SLOT` still points there).
    pub plt: Vec<std::ops::Range<u64>>,
}

/// One dynamic relocation of a GOT slot, as written in `.rela.dyn` / `.rela.plt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynReloc {
    /// Link-time address of the slot (add the object's bias).
    pub slot: u64,
    pub r_type: u32,
    /// The symbol's name; `None` for symbol 0 (the object itself: local TLS, `IRELATIVE`).
    pub symbol: Option<String>,
    pub addend: i64,
}

/// The dynamic relocation types [`ElfSymbols::dyn_relocs`] keeps.
const KEPT_DYN_RELOCS: [u32; 6] = [
    elf::R_X86_64_64.0,
    elf::R_X86_64_GLOB_DAT.0,
    elf::R_X86_64_JUMP_SLOT.0,
    elf::R_X86_64_DTPMOD64.0,
    elf::R_X86_64_TPOFF64.0,
    elf::R_X86_64_IRELATIVE.0,
];

fn sym_of(s: &object::read::elf::ElfSymbol<'_, '_, elf::FileHeader64<LE>>) -> Sym {
    Sym {
        value: s.address(),
        size: s.size(),
        tls: s.kind() == SymbolKind::Tls,
        ifunc: s.elf_symbol().st_type() == elf::STT_GNU_IFUNC,
    }
}

impl ElfSymbols {
    pub fn parse(path: &str, data: &[u8]) -> Result<ElfSymbols, SymbolsError> {
        if data.get(4) == Some(&1) {
            return Err(SymbolsError::Class32 {
                path: path.to_string(),
            });
        }
        let bad = |e: object::read::Error| SymbolsError::Unreadable {
            path: path.to_string(),
            reason: e.to_string(),
        };
        let file = ElfFile64::<LE>::parse(data).map_err(bad)?;
        let endian = file.endian();
        let header = file.elf_header();
        let mut out = ElfSymbols {
            build_id: file.build_id().map_err(bad)?.map(<[u8]>::to_vec),
            relocatable: header.e_type(endian) == elf::ET_DYN,
            ..Default::default()
        };
        let mut first = None;
        for ph in file.elf_program_headers() {
            match ph.p_type(endian) {
                elf::PT_LOAD if first.is_none() => {
                    let align = ph.p_align(endian).max(1);
                    first = Some((
                        ph.p_vaddr(endian) & !(align - 1),
                        ph.p_offset(endian) & !(align - 1),
                    ));
                }
                elf::PT_TLS => {
                    out.tls = Some((ph.p_memsz(endian), ph.p_align(endian).max(1)));
                }
                _ => {}
            }
        }
        out.first_load = first.unwrap_or((0, 0));
        let mut file_name = String::new();
        for s in file.symbols() {
            out.has_symtab = true;
            if s.kind() == SymbolKind::File {
                file_name = s.name().unwrap_or("").to_string();
                continue;
            }
            if s.is_undefined() || s.kind() == SymbolKind::Section {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            if name.is_empty() {
                continue;
            }
            if s.is_local() {
                out.locals
                    .entry((file_name.clone(), name.to_string()))
                    .or_default()
                    .push(sym_of(&s));
            } else {
                out.globals.entry(name.to_string()).or_insert(sym_of(&s));
            }
        }
        let sections = file.elf_section_table();
        let versions = sections.versions(endian, data).map_err(bad)?;
        for s in file.dynamic_symbols() {
            if s.is_undefined() || s.is_local() {
                continue;
            }
            // Versioned names come without the version here: only the default version of a
            // name (not hidden, `name@@VER`) is what a new reference binds to. libc has both
            // an old `memcpy@GLIBC_2.2.5` and the default `memcpy@@GLIBC_2.14`.
            if versions
                .as_ref()
                .is_some_and(|v| v.version_index(endian, s.index()).is_hidden())
            {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            out.globals.entry(name.to_string()).or_insert(sym_of(&s));
        }
        let dynsym = file.elf_dynamic_symbol_table();
        for section in sections.iter() {
            let name = sections.section_name(endian, section).unwrap_or_default();
            if matches!(name, b".plt" | b".plt.sec" | b".plt.got") {
                let start = section.sh_addr(endian);
                out.plt.push(start..start + section.sh_size(endian));
            }
            let Some((relas, link)) = section.rela(endian, data).map_err(bad)? else {
                continue;
            };
            // Only relocations against the dynamic symbol table are run-time ones.
            if dynsym.is_empty() || link != dynsym.section() {
                continue;
            }
            for r in relas {
                let r_type = r.r_type(endian, false).0;
                if !KEPT_DYN_RELOCS.contains(&r_type) {
                    continue;
                }
                let symbol = match r.symbol(endian, false) {
                    None => None,
                    Some(i) => {
                        let sym = dynsym.symbol(i).map_err(bad)?;
                        let name = sym.name(endian, dynsym.strings()).map_err(bad)?;
                        Some(String::from_utf8_lossy(name).into_owned())
                    }
                };
                out.dyn_relocs.push(DynReloc {
                    slot: r.r_offset(endian),
                    r_type,
                    symbol,
                    addend: r.r_addend(endian),
                });
            }
        }
        Ok(out)
    }

    /// True when the link-time address `addr` lies in a PLT section.
    pub fn in_plt(&self, addr: u64) -> bool {
        self.plt.iter().any(|r| r.contains(&addr))
    }

    /// Adds the symbols of `twin` that this file lacks (a stripped file keeps its dynamic
    /// symbols and gains the statics and globals of its unstripped twin, e.g. those a patch
    /// bundle records). The caller guarantees both describe the same build (same build-id).
    pub fn add_missing(&mut self, twin: &ElfSymbols) {
        for (name, sym) in &twin.globals {
            self.globals.entry(name.clone()).or_insert(*sym);
        }
        for (key, syms) in &twin.locals {
            self.locals
                .entry(key.clone())
                .or_insert_with(|| syms.clone());
        }
        self.has_symtab |= twin.has_symtab;
    }

    /// Load bias for a file whose first `PT_LOAD` is mapped at `start` (the mapping of file
    /// offset 0).
    pub fn bias(&self, start: RemoteAddr) -> u64 {
        if self.relocatable {
            start.0.wrapping_sub(self.first_load.0)
        } else {
            0
        }
    }

    /// Thread-pointer offset of a TLS symbol of the *executable* (variant II static TLS: the
    /// executable's block sits immediately below the thread pointer).
    pub fn exec_tls_offset(&self, sym: &Sym) -> Option<i64> {
        let (size, align) = self.tls?;
        let block = size.div_ceil(align) * align;
        Some(sym.value as i64 - block as i64)
    }
}

/// One file mapped into the target.
pub struct Mapped {
    /// The path as the target sees it (from /proc/PID/maps).
    pub path: String,
    pub symbols: ElfSymbols,
    pub bias: u64,
    /// True for the main executable (its TLS block is the static one at a known offset).
    pub is_exec: bool,
}

/// Resolves a patch's symbols in one target: statics in the patched object, globals in the
/// executable first and then in the libraries in the order given (link order).
pub struct TargetResolver<'m> {
    /// The object the patch was built for (executable or library).
    pub patched: &'m Mapped,
    /// Every mapped object in search order (executable first).
    pub search: Vec<&'m Mapped>,
}

impl<'m> TargetResolver<'m> {
    /// The value of a symbol known from the files alone: addresses, and the executable's
    /// static TLS offsets. Library TLS and IFUNCs need the process ([`LiveResolver`]).
    fn value(m: &Mapped, s: &Sym, name: &str) -> Result<Value, String> {
        if s.tls {
            if !m.is_exec {
                return Err(format!(
                    "{name} is thread-local in {}; a library's TLS is located by reading the \
                     target's memory, which this resolver does not do",
                    m.path
                ));
            }
            return m
                .symbols
                .exec_tls_offset(s)
                .map(Value::TlsOffset)
                .ok_or_else(|| format!("{} has no PT_TLS segment", m.path));
        }
        if s.ifunc {
            return Err(format!(
                "{name} in {} is an IFUNC; its implementation is chosen at run time and read \
                 from the target's memory, which this resolver does not do",
                m.path
            ));
        }
        Ok(Value::Address(RemoteAddr(s.value.wrapping_add(m.bias))))
    }

    /// The object a global name binds to: the first in search order that defines it.
    pub fn definer(&self, name: &str) -> Option<(&'m Mapped, Sym)> {
        self.search
            .iter()
            .find_map(|m| m.symbols.globals.get(name).map(|s| (*m, *s)))
    }

    /// The definition a request binds to (`None`: a weak symbol the target does not define).
    pub fn lookup(&self, request: &Request) -> Result<Option<(&'m Mapped, Sym)>, String> {
        match request {
            Request::Local { file, name } => {
                let syms = &self.patched.symbols;
                if !syms.has_symtab {
                    return Err(format!(
                        "{} is stripped: statics cannot be located without its symbol table",
                        self.patched.path
                    ));
                }
                match syms
                    .locals
                    .get(&(file.clone(), name.clone()))
                    .map(Vec::as_slice)
                {
                    Some([one]) => Ok(Some((self.patched, *one))),
                    Some([]) | None => {
                        // Fall back to a unique local of that name in any file.
                        let any: Vec<&Sym> = syms
                            .locals
                            .iter()
                            .filter(|((_, n), _)| n == name)
                            .flat_map(|(_, v)| v)
                            .collect();
                        match any.as_slice() {
                            [one] => Ok(Some((self.patched, **one))),
                            [] => Err(format!(
                                "no static {name} of {file} in {}",
                                self.patched.path
                            )),
                            _ => Err(format!(
                                "{} has several statics named {name} and none under file {file}",
                                self.patched.path
                            )),
                        }
                    }
                    Some(_) => Err(format!(
                        "{} has several statics named {name} in {file}",
                        self.patched.path
                    )),
                }
            }
            Request::Global { name, weak } => match self.definer(name) {
                Some(found) => Ok(Some(found)),
                None if *weak => Ok(None),
                None => Err("not defined by the executable or any loaded library".into()),
            },
        }
    }
}

impl Resolver for TargetResolver<'_> {
    fn resolve(&self, request: &Request) -> Result<Value, String> {
        match self.lookup(request)? {
            Some((m, s)) => Self::value(m, &s, request.name()),
            None => Ok(Value::Absent),
        }
    }
}

/// Reads 8-byte words of the target's memory (its GOT slots, filled in by ld.so).
pub trait TargetMemory {
    fn read_u64(&self, addr: RemoteAddr) -> Result<u64, String>;
}

impl TargetMemory for crate::mem::ProcessMemory {
    fn read_u64(&self, addr: RemoteAddr) -> Result<u64, String> {
        crate::mem::ProcessMemory::read_u64(self, addr).map_err(|e| e.to_string())
    }
}

/// A [`TargetResolver`] that also reads the target's memory, for what only ld.so knows:
///
/// - **TLS of a library.** The module id ld.so gave the library is read from a GOT slot it
///   filled for an `R_X86_64_DTPMOD64` relocation against that library (its own GD/LD slots, or
///   another object's); the variable's offset in the module's block is its `st_value`. Patch
///   code then calls `__tls_get_addr` with a `tls_index` of its own ([`Value::Tls`]), which works
///   for static and dynamic (dlopen) TLS alike. When the block is in static TLS and some object
///   has an `R_X86_64_TPOFF64` slot for it, its thread-pointer offset is known too (needed by
///   initial-exec code). A library with neither kind of slot is refused: nothing in the process
///   records where its TLS is.
/// - **IFUNC symbols.** The implementation ld.so chose is read from a resolved GOT slot for the
///   symbol: a `JUMP_SLOT`, `GLOB_DAT` or `64` slot against the name in any object (a lazy
///   `JUMP_SLOT` still pointing into its PLT does not count), or the defining object's own
///   `IRELATIVE` slot whose addend is the resolver. Using what the process uses keeps function
///   pointers comparable and never runs a resolver. No such slot: refused.
pub struct LiveResolver<'m> {
    pub target: TargetResolver<'m>,
    pub memory: &'m dyn TargetMemory,
}

impl LiveResolver<'_> {
    fn read(&self, m: &Mapped, r: &DynReloc) -> Result<u64, String> {
        let at = RemoteAddr(r.slot.wrapping_add(m.bias));
        self.memory
            .read_u64(at)
            .map_err(|e| format!("reading the GOT slot at {at} of {}: {e}", m.path))
    }

    /// Dynamic relocations of type `r_type` (in every object) that bind to object `owner`:
    /// symbol 0 in `owner` itself, or a name that resolves to `owner`, with that symbol.
    fn relocs_for<'a>(
        &'a self,
        owner: &'a Mapped,
        r_type: u32,
    ) -> impl Iterator<Item = (&'a Mapped, &'a DynReloc, Option<Sym>)> + 'a {
        self.target.search.iter().flat_map(move |m| {
            m.symbols
                .dyn_relocs
                .iter()
                .filter(move |r| r.r_type == r_type)
                .filter_map(move |r| match &r.symbol {
                    None if std::ptr::eq(*m, owner) => Some((*m, r, None)),
                    None => None,
                    Some(name) => match self.target.definer(name) {
                        Some((d, s)) if std::ptr::eq(d, owner) => Some((*m, r, Some(s))),
                        _ => None,
                    },
                })
        })
    }

    fn tls(&self, owner: &Mapped, s: &Sym, name: &str) -> Result<Value, String> {
        let mut module = None;
        let mut failure = None;
        for (m, r, _) in self.relocs_for(owner, elf::R_X86_64_DTPMOD64.0) {
            match self.read(m, r) {
                Ok(0) => {}
                Ok(id) => {
                    module = Some(id);
                    break;
                }
                Err(e) => failure = Some(e),
            }
        }
        // TPOFF64 = tp offset of (symbol + addend); symbol 0 stands for the block's start.
        let mut tp_block = None;
        for (m, r, sym) in self.relocs_for(owner, elf::R_X86_64_TPOFF64.0) {
            if sym.is_some_and(|x| !x.tls) {
                continue;
            }
            match self.read(m, r) {
                Ok(v) => {
                    let within = sym.map_or(0, |x| x.value as i64).wrapping_add(r.addend);
                    tp_block = Some((v as i64).wrapping_sub(within));
                    break;
                }
                Err(e) => failure = Some(e),
            }
        }
        let tp_offset = tp_block.map(|b| b.wrapping_add(s.value as i64));
        match (module, tp_offset) {
            (Some(module), tp_offset) => Ok(Value::Tls {
                module,
                offset: s.value,
                tp_offset,
            }),
            (None, Some(tp)) => Ok(Value::TlsOffset(tp)),
            (None, None) => Err(format!(
                "{name} is thread-local in {}, and no GOT slot in the process records that \
                 library's TLS module id or offset (no R_X86_64_DTPMOD64 or R_X86_64_TPOFF64 \
                 relocation refers to it){}",
                owner.path,
                failure.map(|e| format!("; {e}")).unwrap_or_default()
            )),
        }
    }

    fn ifunc(&self, owner: &Mapped, s: &Sym, name: &str) -> Result<Value, String> {
        let mut failure = None;
        let named = [
            elf::R_X86_64_GLOB_DAT.0,
            elf::R_X86_64_JUMP_SLOT.0,
            elf::R_X86_64_64.0,
        ];
        // Slots against the name, in any object, that bind to this definition.
        let by_name = named.iter().flat_map(|&t| {
            self.relocs_for(owner, t)
                .filter(|(_, r, sym)| {
                    r.addend == 0 && sym.is_some_and(|x| x.value == s.value && x.ifunc)
                })
                .map(|(m, r, _)| (m, r))
        });
        // The defining object's own IRELATIVE slots: the addend is the resolver's address.
        let irelative = owner
            .symbols
            .dyn_relocs
            .iter()
            .filter(|r| {
                r.r_type == elf::R_X86_64_IRELATIVE.0
                    && r.symbol.is_none()
                    && r.addend as u64 == s.value
            })
            .map(|r| (owner, r));
        for (m, r) in irelative.chain(by_name) {
            match self.read(m, r) {
                // A lazy JUMP_SLOT not yet called points back into its object's PLT.
                Ok(v) if v == 0 || m.symbols.in_plt(v.wrapping_sub(m.bias)) => {}
                Ok(v) => return Ok(Value::Address(RemoteAddr(v))),
                Err(e) => failure = Some(e),
            }
        }
        Err(format!(
            "{name} in {} is an IFUNC and no object in the process has a resolved GOT slot for \
             it (nothing has called it through a PLT or taken its address yet), so the \
             implementation ld.so would choose is unknown{}",
            owner.path,
            failure.map(|e| format!("; {e}")).unwrap_or_default()
        ))
    }
}

impl Resolver for LiveResolver<'_> {
    fn resolve(&self, request: &Request) -> Result<Value, String> {
        let name = request.name();
        match self.target.lookup(request)? {
            None => Ok(Value::Absent),
            Some((m, s)) if s.tls && !m.is_exec => self.tls(m, &s, name),
            Some((m, s)) if s.ifunc => self.ifunc(m, &s, name),
            Some((m, s)) => TargetResolver::value(m, &s, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_offsets_follow_variant_ii() {
        let s = ElfSymbols {
            tls: Some((12, 8)),
            ..Default::default()
        };
        let sym = Sym {
            value: 4,
            size: 4,
            tls: true,
            ifunc: false,
        };
        // Block rounded to 16 bytes below the thread pointer; the symbol is 4 bytes into it.
        assert_eq!(s.exec_tls_offset(&sym), Some(-12));
    }

    #[test]
    fn bias_of_pie_and_fixed_executables() {
        let mut s = ElfSymbols {
            relocatable: true,
            ..Default::default()
        };
        assert_eq!(s.bias(RemoteAddr(0x5555_5555_4000)), 0x5555_5555_4000);
        s.relocatable = false;
        s.first_load = (0x400000, 0);
        assert_eq!(s.bias(RemoteAddr(0x400000)), 0);
    }
}
