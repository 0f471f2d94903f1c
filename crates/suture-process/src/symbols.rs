//! Symbols of the ELF files mapped into a target, and a [`Resolver`] over them.
//!
//! Everything here reads file bytes (opened by the caller through `/proc/PID/root` or
//! `/proc/PID/map_files`, so mount namespaces are honoured) and is done before the target is
//! stopped.

use std::collections::HashMap;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
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
}

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
        for s in file.dynamic_symbols() {
            if s.is_undefined() || s.is_local() {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            // Versioned names come without the version here; the default version wins.
            out.globals.entry(name.to_string()).or_insert(sym_of(&s));
        }
        Ok(out)
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

impl TargetResolver<'_> {
    fn value(m: &Mapped, s: &Sym, name: &str) -> Result<Value, String> {
        if s.tls {
            if !m.is_exec {
                return Err(format!(
                    "{name} is thread-local in {}; only the executable's static TLS block is \
                     supported",
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
                "{name} in {} is an IFUNC; its implementation is chosen at run time",
                m.path
            ));
        }
        Ok(Value::Address(RemoteAddr(s.value.wrapping_add(m.bias))))
    }
}

impl Resolver for TargetResolver<'_> {
    fn resolve(&self, request: &Request) -> Result<Value, String> {
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
                    Some([one]) => Self::value(self.patched, one, name),
                    Some([]) | None => {
                        // Fall back to a unique local of that name in any file.
                        let any: Vec<&Sym> = syms
                            .locals
                            .iter()
                            .filter(|((_, n), _)| n == name)
                            .flat_map(|(_, v)| v)
                            .collect();
                        match any.as_slice() {
                            [one] => Self::value(self.patched, one, name),
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
            Request::Global { name, weak } => {
                for m in &self.search {
                    if let Some(s) = m.symbols.globals.get(name) {
                        return Self::value(m, s, name);
                    }
                }
                if *weak {
                    Ok(Value::Absent)
                } else {
                    Err("not defined by the executable or any loaded library".into())
                }
            }
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
