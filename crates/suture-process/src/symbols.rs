//! Symbols of the ELF files mapped into a target, and a [`Resolver`] over them.
//!
//! Everything here reads file bytes (opened by the caller through `/proc/PID/root` or
//! `/proc/PID/map_files`, so mount namespaces are honoured) and is done before the target is
//! stopped.

use object::elf;

use crate::ids::RemoteAddr;
use crate::link::{Request, Resolver, Value};

/// The symbols of linked ELF files (parsed by `suture-elf`, shared with `suture-build`).
pub use suture_elf::{DynReloc, ElfError as SymbolsError, ElfSymbols, SharedBytes, Sym};

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
            .find_map(|m| m.symbols.global(name).map(|s| (*m, s)))
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
            Request::Global { name, weak } => {
                // A hidden symbol of the patched object binds there, whatever else exports
                // the name (see `ElfSymbols::linker_local`).
                if let Some(own) = self
                    .patched
                    .symbols
                    .linker_local(name)
                    .map_err(|e| format!("{}: {e}", self.patched.path))?
                {
                    return Ok(Some((self.patched, own)));
                }
                match self.definer(name) {
                    Some(found) => Ok(Some(found)),
                    None if *weak => Ok(None),
                    None => Err("not defined by the executable or any loaded library".into()),
                }
            }
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
///   pointers comparable. No such slot: the resolver's result in `chosen`, filled by running
///   the resolver in the target as ld.so would on a first call ([`crate::ifunc`]; see
///   [`LiveResolver::unresolved_ifuncs`]); else refused.
pub struct LiveResolver<'m> {
    pub target: TargetResolver<'m>,
    pub memory: &'m dyn TargetMemory,
    /// IFUNC choices made by calling resolvers in the target: resolver address (load bias
    /// applied) → implementation.
    pub chosen: std::collections::HashMap<u64, u64>,
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

    /// The IFUNCs among `requests` that no GOT slot in the process has resolved and `chosen`
    /// does not know: each with its resolver's address, to be run in the target.
    pub fn unresolved_ifuncs(&self, requests: &[Request]) -> Vec<crate::ifunc::Call> {
        let mut out: Vec<crate::ifunc::Call> = Vec::new();
        for r in requests {
            let Ok(Some((m, s))) = self.target.lookup(r) else {
                continue;
            };
            if !s.ifunc || s.tls {
                continue;
            }
            let resolver = RemoteAddr(s.value.wrapping_add(m.bias));
            if self.resolved_ifunc(m, &s).is_ok() || out.iter().any(|c| c.resolver == resolver) {
                continue;
            }
            out.push(crate::ifunc::Call {
                name: r.name().to_string(),
                resolver,
            });
        }
        out
    }

    fn ifunc(&self, owner: &Mapped, s: &Sym, name: &str) -> Result<Value, String> {
        match self.resolved_ifunc(owner, s) {
            Ok(v) => Ok(v),
            Err(failure) => {
                if let Some(&v) = self.chosen.get(&s.value.wrapping_add(owner.bias)) {
                    return Ok(Value::Address(RemoteAddr(v)));
                }
                Err(format!(
                    "{name} in {} is an IFUNC and no object in the process has a resolved GOT \
                     slot for it (nothing has called it through a PLT or taken its address \
                     yet), and its resolver was not run{}",
                    owner.path,
                    failure.map(|e| format!("; {e}")).unwrap_or_default()
                ))
            }
        }
    }

    /// The implementation ld.so installed in a GOT slot of the process; `Err` carries a read
    /// failure, if any.
    fn resolved_ifunc(&self, owner: &Mapped, s: &Sym) -> Result<Value, Option<String>> {
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
        Err(failure)
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
