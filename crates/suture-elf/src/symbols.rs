//! The symbols of one linked ELF file, as a loader sees them.

use std::collections::HashMap;

/// The maps of symbol names: apply parses every mapped library's tables (thousands of names in
/// libc) on each call, and std's SipHash was the largest part of that; foldhash is seeded per
/// process as well.
pub type SymbolMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Rela, SectionHeader, Sym as _};
use object::{LittleEndian as LE, Object as _, ObjectSymbol, SymbolKind};

use crate::ElfError;

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
    /// Defined global and weak symbols from `.symtab`, and from `.dynsym` unless that is
    /// looked up through its hash table (`dynamic`); read them with [`ElfSymbols::global`].
    globals: SymbolMap<String, Sym>,
    /// The file, for a `.dynsym` looked up by name through `.gnu.hash` instead of being read
    /// whole ([`ElfSymbols::parse_shared`]).
    dynamic: Option<SharedBytes>,
    /// Defined local symbols from `.symtab`, keyed by (source file, name).
    pub locals: SymbolMap<(String, String), Vec<Sym>>,
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

/// The bytes of a file kept for lookups after parsing (a mapped file, a `Vec<u8>`).
#[derive(Clone)]
pub struct SharedBytes(pub std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>);

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", (*self.0).as_ref().len())
    }
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

/// `name` in the `.dynsym` of `data` through its `.gnu.hash` table, as the dynamic linker
/// finds it: the first defined, non-local entry of that name whose version is not hidden (the
/// entry [`ElfSymbols::parse`] keeps when it reads the whole table).
///
/// The hash table's own search (`GnuHashTable::find` with no version wanted) accepts an entry
/// whose version index is hidden but global (`0x8001`, e.g. libsctp's plain `sctp_connectx`
/// beside `sctp_connectx@@VERS_3`), so its answer is only taken when that entry is one the
/// whole-table read would keep; otherwise the table is read in order for that name.
fn dynamic_lookup(data: &[u8], name: &str) -> Option<Sym> {
    let header = elf::FileHeader64::<LE>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let (hash, link) = sections.gnu_hash(endian, data).ok()??;
    let symbols = sections.symbol_table_by_index(endian, data, link).ok()?;
    let versions = sections.versions(endian, data).ok()?.unwrap_or_default();
    let kept = |index: object::SymbolIndex, s: &elf::Sym64<LE>| {
        !s.is_undefined(endian)
            && s.st_bind() != elf::STB_LOCAL
            && !versions.version_index(endian, index).is_hidden()
    };
    let key = name.as_bytes();
    let (index, found) = hash.find(endian, key, elf::gnu_hash(key), None, &symbols, &versions)?;
    let s = if kept(index, found) {
        found
    } else {
        symbols.enumerate().find_map(|(i, s)| {
            (symbols.symbol_name(endian, s).ok() == Some(key) && kept(i, s)).then_some(s)
        })?
    };
    Some(Sym {
        value: s.st_value(endian),
        size: s.st_size(endian),
        tls: s.st_type() == elf::STT_TLS,
        ifunc: s.st_type() == elf::STT_GNU_IFUNC,
    })
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
    /// A symbol that was global when this file was linked but is local in it: a hidden or
    /// internal symbol (`-fvisibility=hidden`, `__attribute__((visibility("hidden")))`,
    /// internal aliases) of one of its units. `ld` lists such symbols after an `STT_FILE`
    /// symbol with an empty name. Every reference inside the file was bound to that definition,
    /// never to another object's export of the name. `Err` when the name is there twice, which
    /// a well-formed output cannot have.
    pub fn linker_local(&self, name: &str) -> Result<Option<Sym>, String> {
        match self
            .locals
            .get(&(String::new(), name.to_string()))
            .map(Vec::as_slice)
        {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(*one)),
            Some(_) => Err(format!(
                "several linker-local (hidden) symbols named {name}"
            )),
        }
    }

    pub fn parse(path: &str, data: &[u8]) -> Result<ElfSymbols, ElfError> {
        Self::parse_with(path, data, None)
    }

    /// Like [`ElfSymbols::parse`], but keeps `data` and, when the file has a `.gnu.hash`
    /// table, looks `.dynsym` names up through it on demand rather than reading every
    /// exported name now: apply needs a few names of each mapped library, and reading all of
    /// libc's (about 3,000 allocations and hash insertions) was a tenth of a call's time.
    pub fn parse_shared(path: &str, data: SharedBytes) -> Result<ElfSymbols, ElfError> {
        let bytes: &[u8] = (*data.0).as_ref();
        Self::parse_with(path, bytes, Some(data.clone()))
    }

    fn parse_with(
        path: &str,
        data: &[u8],
        shared: Option<SharedBytes>,
    ) -> Result<ElfSymbols, ElfError> {
        if data.get(4) == Some(&1) {
            return Err(ElfError::Class32 {
                path: path.to_string(),
            });
        }
        let bad = |e: object::read::Error| ElfError::Unreadable {
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
        let sections = file.elf_section_table();
        let hashed = shared.is_some() && sections.gnu_hash(endian, data).map_err(bad)?.is_some();
        // Sized once: growing the maps symbol by symbol rehashed them a dozen times.
        let dynamic = if hashed {
            0
        } else {
            file.dynamic_symbols().count()
        };
        out.globals.reserve(file.symbols().count() + dynamic);
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
        if hashed {
            out.dynamic = shared;
        }
        let versions = sections.versions(endian, data).map_err(bad)?;
        for s in file.dynamic_symbols().filter(|_| !hashed) {
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

    /// The defined global or weak symbol `name` a new reference would bind to in this file:
    /// from `.symtab` first, then the default version (not hidden, `name@@VER`) in `.dynsym`.
    pub fn global(&self, name: &str) -> Option<Sym> {
        if let Some(s) = self.globals.get(name) {
            return Some(*s);
        }
        let data: &[u8] = (*self.dynamic.as_ref()?.0).as_ref();
        dynamic_lookup(data, name)
    }

    /// Records a global symbol (a patch bundle's record of a stripped file's symbols).
    pub fn insert_global(&mut self, name: String, sym: Sym) {
        self.globals.insert(name, sym);
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
            if self.global(name).is_none() {
                self.globals.insert(name.clone(), *sym);
            }
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
    pub fn bias(&self, start: impl Into<u64>) -> u64 {
        if self.relocatable {
            start.into().wrapping_sub(self.first_load.0)
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
        assert_eq!(s.bias(0x5555_5555_4000u64), 0x5555_5555_4000);
        s.relocatable = false;
        s.first_load = (0x400000, 0);
        assert_eq!(s.bias(0x400000u64), 0);
    }

    /// Every exported name of real system libraries binds to the same symbol whether
    /// `.dynsym` was read whole or is looked up through `.gnu.hash` (libc has versioned
    /// duplicates such as `memcpy@GLIBC_2.2.5` / `memcpy@@GLIBC_2.14`, IFUNCs and TLS).
    #[test]
    fn hashed_lookups_agree_with_the_whole_table() {
        let mut checked = 0;
        for path in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ] {
            let Ok(data) = std::fs::read(path) else {
                continue;
            };
            let eager = ElfSymbols::parse(path, &data).unwrap();
            let lazy =
                ElfSymbols::parse_shared(path, SharedBytes(std::sync::Arc::new(data.clone())))
                    .unwrap();
            assert!(lazy.dynamic.is_some(), "{path} has a .gnu.hash table");
            let file = ElfFile64::<LE>::parse(&*data).unwrap();
            for s in file.dynamic_symbols() {
                let name = s.name().unwrap();
                assert_eq!(lazy.global(name), eager.global(name), "{name} in {path}");
                checked += 1;
            }
            assert_eq!(lazy.global("no_such_symbol_anywhere"), None);
            assert_eq!(
                lazy.global("memcpy").is_some(),
                eager.global("memcpy").is_some()
            );
        }
        assert!(checked > 1000, "only {checked} names checked");
        let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let lazy =
            ElfSymbols::parse_shared("libc", SharedBytes(std::sync::Arc::new(libc))).unwrap();
        let memcpy = lazy.global("memcpy").unwrap();
        assert!(memcpy.ifunc, "the default memcpy is an IFUNC");
        assert!(
            lazy.global("errno").unwrap().tls,
            "glibc exports errno as TLS"
        );
    }

    /// An entry whose version index is hidden but global (`0x8001`, as libsctp's plain
    /// `sctp_connectx` beside `sctp_connectx@@VERS_3`) is not what a new reference binds to;
    /// the hash table's search returns it first. Made here by setting a hidden `foo@VERS_1`'s
    /// index to 0x8001 in a freshly linked library.
    #[test]
    fn a_hidden_global_entry_is_passed_over() {
        let dir = std::env::temp_dir().join(format!("suture-elf-hidden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("l.c"),
            "int foo(void) { return 1; }\nint foo_v3(void) { return 3; }\n\
             __asm__(\".symver foo, foo@VERS_1\");\n\
             __asm__(\".symver foo_v3, foo@@VERS_3\");\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("v.map"),
            "VERS_1 { global: foo; local: *; };\nVERS_3 { global: foo; } VERS_1;\n",
        )
        .unwrap();
        let st = std::process::Command::new("gcc")
            .args([
                "-shared",
                "-fPIC",
                "-Wl,--version-script=v.map",
                "-o",
                "l.so",
                "l.c",
            ])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        let mut data = std::fs::read(dir.join("l.so")).unwrap();
        let (versym_at, v1, v3) = {
            let file = ElfFile64::<LE>::parse(&*data).unwrap();
            let sections = file.elf_section_table();
            let versym = sections
                .iter()
                .find(|s| s.sh_type(LE) == elf::SHT_GNU_VERSYM)
                .unwrap();
            let versions = sections.versions(LE, &*data).unwrap().unwrap();
            let (mut v1, mut v3) = (None, None);
            for s in file.dynamic_symbols().filter(|s| s.name() == Ok("foo")) {
                if versions.version_index(LE, s.index()).is_hidden() {
                    v1 = Some((s.index().0, s.address()));
                } else {
                    v3 = Some(s.address());
                }
            }
            let (index, v1) = v1.unwrap();
            (versym.sh_offset(LE) as usize + 2 * index, v1, v3.unwrap())
        };
        assert_ne!(v1, v3);
        data[versym_at..versym_at + 2].copy_from_slice(&0x8001u16.to_le_bytes());
        let eager = ElfSymbols::parse("l.so", &data).unwrap();
        let lazy = ElfSymbols::parse_shared("l.so", SharedBytes(std::sync::Arc::new(data.clone())))
            .unwrap();
        assert!(lazy.dynamic.is_some());
        assert_eq!(eager.global("foo").unwrap().value, v3);
        assert_eq!(
            lazy.global("foo").unwrap().value,
            v3,
            "the default foo@@VERS_3"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A library linked with only the SysV hash table is read whole, as before.
    #[test]
    fn a_file_without_gnu_hash_is_read_whole() {
        let dir = std::env::temp_dir().join(format!("suture-elf-sysv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("l.c");
        std::fs::write(&src, "int exported_one(void) { return 1; }\n").unwrap();
        let so = dir.join("l.so");
        let st = std::process::Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,--hash-style=sysv", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
        let data = std::fs::read(&so).unwrap();
        let lazy =
            ElfSymbols::parse_shared("l.so", SharedBytes(std::sync::Arc::new(data))).unwrap();
        assert!(lazy.dynamic.is_none());
        assert!(lazy.globals.contains_key("exported_one"));
        assert!(lazy.global("exported_one").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
