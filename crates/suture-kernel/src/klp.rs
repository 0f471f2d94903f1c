//! Livepatch ELF details: preparing a suture patch object for kbuild, and turning the built
//! `.ko` into a livepatch module (Documentation/livepatch/module-elf-format.rst of Linux 6.1).
//!
//! The patch code refers to symbols of the patched kernel object. Exported ones stay ordinary
//! undefined symbols (modpost records their CRCs, the module loader resolves them). The others
//! (statics, non-exported globals) must be resolved by livepatch itself when the patch is
//! enabled: their relocations go into `.klp.rela.<object>.<section>` sections flagged
//! `SHF_RELA_LIVEPATCH`, against symbols named `.klp.sym.<object>.<name>,<sympos>` whose
//! section index is `SHN_LIVEPATCH`. Neither `ld -r` nor modpost keep such symbols and sections
//! intact, so this happens in two steps:
//!
//! 1. [`prepare`], before kbuild: each such undefined symbol becomes a *defined* global named
//!    `.klp.sym.…` in an empty `.suture.klp` section (so modpost sees nothing undefined and the
//!    linker keeps every relocation against it by name); every replacement function also gets a
//!    global alias the generated C file can name (`__suture_new_<n>`), since replacements are
//!    local symbols of the patch object.
//! 2. [`finalize`], after kbuild: those symbols become `SHN_LIVEPATCH`, and every relocation
//!    against them moves from its `.rela.<section>` into `.klp.rela.<object>.<section>`.
//!
//! When they are applied (Linux 6.1): `.klp.rela.vmlinux.*` by the module loader while the
//! patch module loads (`apply_relocations` calls `klp_apply_section_relocs` for vmlinux, before
//! `module_finalize`, jump labels and static calls see the module); `.klp.rela.<module>.*` by
//! livepatch in `klp_init_object_loaded`, when the patch is enabled with the module loaded or
//! when the module loads later. Module-specific sections may not reference vmlinux symbols
//! (`klp_resolve_symbols` refuses): the caller names the object of every symbol, and a module's
//! patch code refers to non-exported vmlinux symbols through `.klp.rela.vmlinux.*`.

use std::collections::{BTreeMap, HashMap};

use object::build::elf::{Builder, SectionData};
use object::build::ByteString;
use object::build::Id;
use object::elf;

/// `SHN_LIVEPATCH`: the symbol is resolved by livepatch.
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// `SHF_RELA_LIVEPATCH`: a relocation section applied by livepatch.
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;
/// The placeholder section of prepared objects.
pub const PLACEHOLDER_SECTION: &str = ".suture.klp";
pub const KLP_SYM_PREFIX: &str = ".klp.sym.";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the object: {0}")]
    Read(object::build::Error),
    #[error("cannot write the object: {0}")]
    Write(object::build::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A symbol resolved by livepatch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KlpSym {
    /// `vmlinux` or a module name.
    pub object: String,
    pub name: String,
    pub sympos: usize,
}

impl KlpSym {
    pub fn symbol_name(&self) -> String {
        format!(
            "{KLP_SYM_PREFIX}{}.{},{}",
            self.object, self.name, self.sympos
        )
    }
}

/// What [`prepare`] does to one patch object.
#[derive(Debug, Default)]
pub struct Plan {
    /// Undefined symbols (by their name in the patch object) resolved by livepatch.
    pub klp: BTreeMap<String, KlpSym>,
    /// Global aliases to add: (defined symbol name, alias).
    pub aliases: Vec<(String, String)>,
    /// Undefined symbols (by their name in the patch object) whose `__jump_table` key
    /// references are pointed at [`OFF_KEY`] instead: a module's tracepoint or dynamic-debug
    /// keys, which the module loader would need before livepatch can resolve them. Their
    /// branches in the patched code then keep their compiled default (off).
    pub off_keys: std::collections::BTreeSet<String>,
}

/// A disabled static key the generated module defines (`struct static_key_false`), standing
/// in for the keys of [`Plan::off_keys`].
pub const OFF_KEY: &str = "__suture_off_key";

/// Applies `plan` to a patch object (see the module comment).
pub fn prepare(data: &[u8], plan: &Plan) -> Result<Vec<u8>, Error> {
    let mut b = Builder::read(data).map_err(Error::Read)?;
    let klp_sec = if plan.klp.is_empty() {
        None
    } else {
        let s = b.sections.add();
        s.name = ByteString::from(PLACEHOLDER_SECTION.as_bytes().to_vec());
        s.sh_type = elf::SHT_PROGBITS;
        s.sh_flags = elf::SectionFlags(elf::SHF_ALLOC.0);
        s.sh_addralign = 1;
        s.data = SectionData::Data(Vec::new().into());
        Some(s.id())
    };
    // The JSON manifest is for suture, not for the kernel (modpost warns about
    // non-allocated sections).
    for sec in b.sections.iter_mut() {
        if sec.name.as_slice() == suture_object::emit::MANIFEST_SECTION.as_bytes() {
            sec.delete = true;
        }
    }
    if !plan.off_keys.is_empty() {
        retarget_off_keys(&mut b, &plan.off_keys);
    }
    let mut found_klp = 0;
    let mut aliases: HashMap<&str, &str> = HashMap::new();
    for (from, to) in &plan.aliases {
        aliases.insert(from.as_str(), to.as_str());
    }
    let mut new_aliases = Vec::new();
    for sym in b.symbols.iter_mut() {
        let name = String::from_utf8_lossy(sym.name.as_slice()).into_owned();
        if sym.section.is_none() && sym.st_shndx == elf::SHN_UNDEF {
            if let Some(k) = plan.klp.get(&name) {
                sym.name = ByteString::from(k.symbol_name().into_bytes());
                sym.section = klp_sec;
                let kind = sym.st_info.st_type();
                // Weak: every patched unit that uses the symbol defines the same placeholder,
                // and kbuild's `ld -r` must merge them, not fail on a duplicate definition.
                sym.st_info = elf::SymbolInfo::new(elf::STB_WEAK, kind);
                sym.st_value = 0;
                sym.st_size = 0;
                found_klp += 1;
            }
        } else if let Some(alias) = aliases.get(name.as_str()) {
            if sym.st_info.st_type() == elf::STT_FUNC {
                new_aliases.push((alias.to_string(), sym.section, sym.st_value, sym.st_size));
            }
        }
    }
    if found_klp != plan.klp.len() {
        return Err(Error::Invalid(format!(
            "the patch object has {found_klp} of the {} symbols to resolve through livepatch",
            plan.klp.len()
        )));
    }
    if new_aliases.len() != plan.aliases.len() {
        return Err(Error::Invalid(format!(
            "the patch object defines {} of the {} functions the module registers",
            new_aliases.len(),
            plan.aliases.len()
        )));
    }
    for (name, section, value, size) in new_aliases {
        let s = b.symbols.add();
        s.name = ByteString::from(name.into_bytes());
        s.section = section;
        s.st_info = elf::SymbolInfo::new(elf::STB_GLOBAL, elf::STT_FUNC);
        s.st_value = value;
        s.st_size = size;
    }
    let mut out = Vec::new();
    b.write(&mut out).map_err(Error::Write)?;
    Ok(out)
}

/// Points every `__jump_table` key relocation to a symbol of `keys` at [`OFF_KEY`], keeping
/// the entry's branch bit (the addend's low bits; keys are 8-byte aligned, so the rest of the
/// addend is the key's offset inside the original symbol, e.g. a tracepoint's `key` field).
fn retarget_off_keys(b: &mut Builder, keys: &std::collections::BTreeSet<String>) {
    let wanted: std::collections::HashSet<usize> = b
        .symbols
        .iter()
        .filter(|s| keys.contains(String::from_utf8_lossy(s.name.as_slice()).as_ref()))
        .map(|s| s.id().index())
        .collect();
    let Some(table) = b
        .sections
        .iter()
        .find(|s| s.name.as_slice() == b"__jump_table")
        .map(|s| s.id())
    else {
        return;
    };
    let off = {
        let s = b.symbols.add();
        s.name = ByteString::from(OFF_KEY.as_bytes().to_vec());
        s.section = None;
        s.st_shndx = elf::SHN_UNDEF;
        s.st_info = elf::SymbolInfo::new(elf::STB_GLOBAL, elf::STT_OBJECT);
        s.id()
    };
    for sec in b.sections.iter_mut() {
        if sec.sh_info_section != Some(table) {
            continue;
        }
        let SectionData::Relocation(relocs) = &mut sec.data else {
            continue;
        };
        for r in relocs.iter_mut() {
            if r.symbol.is_some_and(|s| wanted.contains(&s.index())) {
                r.symbol = Some(off);
                r.r_addend &= 7;
            }
        }
    }
}

/// Summary of a finalised module.
#[derive(Debug, Default, serde::Serialize)]
pub struct Finalized {
    /// `.klp.rela.*` sections written, with their relocation counts.
    pub klp_sections: Vec<(String, usize)>,
    /// Livepatch symbols.
    pub klp_symbols: Vec<String>,
}

/// Turns the placeholders of a kbuild-built `.ko` into livepatch symbols and relocation
/// sections (see the module comment).
pub fn finalize(data: &[u8]) -> Result<(Vec<u8>, Finalized), Error> {
    let mut b = Builder::read(data).map_err(Error::Read)?;
    let mut summary = Finalized::default();
    let mut klp: HashMap<usize, String> = HashMap::new();
    for sym in b.symbols.iter_mut() {
        let name = String::from_utf8_lossy(sym.name.as_slice()).into_owned();
        let Some(rest) = name.strip_prefix(KLP_SYM_PREFIX) else {
            continue;
        };
        let object = rest.split('.').next().unwrap_or_default().to_string();
        if object.is_empty() || !rest.contains(',') {
            return Err(Error::Invalid(format!("malformed livepatch symbol {name}")));
        }
        sym.section = None;
        sym.st_shndx = elf::SymbolSection(SHN_LIVEPATCH);
        // Global again (they were weak only so `ld -r` could merge them), as the kernel's
        // own livepatch tooling emits them.
        sym.st_info = elf::SymbolInfo::new(elf::STB_GLOBAL, sym.st_info.st_type());
        sym.st_value = 0;
        sym.st_size = 0;
        klp.insert(sym.id().index(), object);
        summary.klp_symbols.push(name);
    }
    summary.klp_symbols.sort();
    if klp.is_empty() {
        let mut out = Vec::new();
        b.write(&mut out).map_err(Error::Write)?;
        return Ok((out, summary));
    }
    // Split relocation sections: klp relocations grouped by (object, target section).
    let mut groups: BTreeMap<(String, usize), (Vec<_>, _, _)> = BTreeMap::new();
    for sec in b.sections.iter_mut() {
        if sec.sh_flags.0 & SHF_RELA_LIVEPATCH != 0 {
            continue;
        }
        let Some(target) = sec.sh_info_section else {
            continue;
        };
        let link = sec.sh_link_section;
        let SectionData::Relocation(relocs) = &mut sec.data else {
            continue;
        };
        let mut keep = Vec::with_capacity(relocs.len());
        for r in relocs.drain(..) {
            match r.symbol.and_then(|s| klp.get(&s.index())) {
                Some(object) => groups
                    .entry((object.clone(), target.index()))
                    .or_insert_with(|| (Vec::new(), target, link))
                    .0
                    .push(r),
                None => keep.push(r),
            }
        }
        *relocs = keep;
    }
    for ((object, _), (relocs, target, link)) in groups {
        let target_name =
            String::from_utf8_lossy(b.sections.get(target).name.as_slice()).into_owned();
        let name = format!(".klp.rela.{object}.{target_name}");
        summary.klp_sections.push((name.clone(), relocs.len()));
        let s = b.sections.add();
        s.name = ByteString::from(name.into_bytes());
        s.sh_type = elf::SHT_RELA;
        s.sh_flags =
            elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0 | SHF_RELA_LIVEPATCH);
        s.sh_link_section = link;
        s.sh_info_section = Some(target);
        s.sh_addralign = 8;
        s.sh_entsize = 24;
        s.data = SectionData::Relocation(relocs);
    }
    let mut out = Vec::new();
    b.write(&mut out).map_err(Error::Write)?;
    Ok((out, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::elf::{FileHeader, SectionHeader, Sym as _};
    use object::write::{Object as WObject, Relocation, Symbol, SymbolSection};
    use object::{
        Architecture, BinaryFormat, Endianness, LittleEndian as LE, RelocationFlags, SectionKind,
        SymbolFlags, SymbolKind, SymbolScope,
    };

    /// A patch object: local `f` in `.text` calling exported `g` and reading the original's
    /// static `s`, plus the manifest section.
    fn patch_object() -> Vec<u8> {
        let mut o = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = o.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
        o.append_section_data(text, &[0xe8, 0, 0, 0, 0, 0x8b, 0x05, 0, 0, 0, 0, 0xc3], 16);
        let f = o.add_symbol(Symbol {
            name: b"f".to_vec(),
            value: 0,
            size: 12,
            kind: SymbolKind::Text,
            scope: SymbolScope::Compilation,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
        let _ = f;
        let mut undef = |name: &str| {
            o.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: 0,
                size: 0,
                kind: SymbolKind::Unknown,
                scope: SymbolScope::Dynamic,
                weak: false,
                section: SymbolSection::Undefined,
                flags: SymbolFlags::None,
            })
        };
        let g = undef("g");
        let s = undef("suture.local::a.c::s");
        for (offset, symbol, r_type) in [(1, g, elf::R_X86_64_PLT32), (7, s, elf::R_X86_64_PC32)] {
            o.add_relocation(
                text,
                Relocation {
                    offset,
                    symbol,
                    addend: -4,
                    flags: RelocationFlags::Elf { r_type },
                },
            )
            .unwrap();
        }
        let m = o.add_section(
            Vec::new(),
            suture_object::emit::MANIFEST_SECTION.as_bytes().to_vec(),
            SectionKind::Other,
        );
        o.append_section_data(m, b"{}", 1);
        o.write().unwrap()
    }

    fn symbols(data: &[u8]) -> Vec<(String, u16)> {
        let h = elf::FileHeader64::<LE>::parse(data).unwrap();
        let secs = h.sections(LE, data).unwrap();
        let st = secs.symbols(LE, data, elf::SHT_SYMTAB).unwrap();
        st.iter()
            .map(|s| {
                (
                    String::from_utf8_lossy(st.symbol_name(LE, s).unwrap()).into_owned(),
                    s.st_shndx(LE).0,
                )
            })
            .collect()
    }

    #[test]
    fn placeholders_become_livepatch_symbols_and_sections() {
        let mut plan = Plan::default();
        plan.klp.insert(
            "suture.local::a.c::s".into(),
            KlpSym {
                object: "vmlinux".into(),
                name: "s".into(),
                sympos: 2,
            },
        );
        plan.aliases.push(("f".into(), "__suture_new_0_0".into()));
        let prepared = prepare(&patch_object(), &plan).unwrap();
        let syms = symbols(&prepared);
        let klp = syms
            .iter()
            .find(|(n, _)| n == ".klp.sym.vmlinux.s,2")
            .expect("placeholder");
        assert_ne!(
            klp.1,
            elf::SHN_UNDEF.0,
            "placeholders are defined for modpost"
        );
        assert!(syms.iter().any(|(n, _)| n == "__suture_new_0_0"));
        assert!(syms.iter().any(|(n, i)| n == "g" && *i == elf::SHN_UNDEF.0));

        let (done, summary) = finalize(&prepared).unwrap();
        assert_eq!(
            summary.klp_symbols,
            vec![".klp.sym.vmlinux.s,2".to_string()]
        );
        assert_eq!(
            summary.klp_sections,
            vec![(".klp.rela.vmlinux..text".to_string(), 1)]
        );
        let syms = symbols(&done);
        assert!(syms
            .iter()
            .any(|(n, i)| n == ".klp.sym.vmlinux.s,2" && *i == SHN_LIVEPATCH));
        let h = elf::FileHeader64::<LE>::parse(&*done).unwrap();
        let secs = h.sections(LE, &*done).unwrap();
        let mut seen = 0;
        for sec in secs.iter() {
            let name = secs.section_name(LE, sec).unwrap();
            if name == b".klp.rela.vmlinux..text" {
                assert_eq!(sec.sh_type(LE), elf::SHT_RELA);
                assert_ne!(sec.sh_flags(LE).0 & SHF_RELA_LIVEPATCH, 0);
                assert_ne!(sec.sh_flags(LE).0 & elf::SHF_ALLOC.0, 0);
                seen += 1;
            }
            if name == b".rela.text" {
                assert_eq!(sec.sh_size(LE), 24, "only the reference to g stays");
                seen += 1;
            }
            assert_ne!(name, suture_object::emit::MANIFEST_SECTION.as_bytes());
        }
        assert_eq!(seen, 2);
    }

    /// Two patched units that use the same non-exported symbol each define its placeholder;
    /// kbuild links them with `ld -r`, which must merge the two into one livepatch symbol.
    #[test]
    fn placeholders_of_two_units_link_into_one_symbol() {
        let mut plan = Plan::default();
        plan.klp.insert(
            "suture.local::a.c::s".into(),
            KlpSym {
                object: "vmlinux".into(),
                name: "s".into(),
                sympos: 0,
            },
        );
        let dir = std::env::temp_dir().join(format!("suture-klp-two-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a.o", "b.o"] {
            std::fs::write(dir.join(name), prepare(&patch_object(), &plan).unwrap()).unwrap();
        }
        let out = std::process::Command::new("ld")
            .current_dir(&dir)
            .args(["-r", "a.o", "b.o", "-o", "both.o"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ld -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, summary) = finalize(&std::fs::read(dir.join("both.o")).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            summary.klp_symbols,
            vec![".klp.sym.vmlinux.s,0".to_string()]
        );
        assert_eq!(
            summary.klp_sections,
            vec![(".klp.rela.vmlinux..text".to_string(), 2)]
        );
    }

    #[test]
    fn a_plan_naming_missing_symbols_is_an_error() {
        let mut plan = Plan::default();
        plan.klp.insert(
            "nope".into(),
            KlpSym {
                object: "vmlinux".into(),
                name: "nope".into(),
                sympos: 0,
            },
        );
        assert!(prepare(&patch_object(), &plan).is_err());
    }
}
