//! A plain, validated model of an x86-64 relocatable ELF object.
//!
//! Everything the differ and emitter need is read once here into simple structs with bounds
//! already checked, so later stages index without fear of panics. Section and symbol indices are
//! the ELF ones (index 0 is the null entry in both tables).

use object::elf;
use object::read::elf::{FileHeader, Rela, SectionHeader, Sym};
use object::LittleEndian as LE;

use crate::error::{Error, Result};

/// Index of a section in its object's section header table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecIdx(pub u32);

/// Index of a symbol in its object's `.symtab`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SymIdx(pub u32);

/// The symbol types the differ distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SymKind {
    NoType,
    Object,
    Func,
    Section,
    File,
    Common,
    Tls,
    Ifunc,
    Other(u8),
}

/// Symbol binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bind {
    Local,
    Global,
    Weak,
    /// `STB_GNU_UNIQUE`, or a binding this crate does not know.
    Other,
}

/// Where a symbol is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Undefined,
    Section(SecIdx),
    Absolute,
    Common,
    /// A reserved section index this crate does not interpret.
    Other(u16),
}

#[derive(Clone, Debug)]
pub struct Symbol {
    pub name: String,
    pub kind: SymKind,
    pub bind: Bind,
    pub visibility: u8,
    pub place: Place,
    pub value: u64,
    pub size: u64,
    /// The `STT_FILE` symbol that precedes this local symbol, if any.
    pub file: Option<SymIdx>,
}

impl Symbol {
    pub fn section(&self) -> Option<SecIdx> {
        match self.place {
            Place::Section(s) => Some(s),
            _ => None,
        }
    }
    pub fn is_local(&self) -> bool {
        self.bind == Bind::Local
    }
}

/// One `Elf64_Rela` entry, already bounds-checked against its section and the symbol table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloc {
    pub offset: u64,
    pub r_type: u32,
    pub sym: SymIdx,
    pub addend: i64,
}

#[derive(Clone, Debug)]
pub struct Section<'a> {
    pub name: String,
    pub sh_type: u32,
    pub flags: u64,
    pub align: u64,
    pub entsize: u64,
    pub size: u64,
    /// Contents; empty for `SHT_NOBITS`.
    pub data: &'a [u8],
    /// Relocations applying to this section, sorted by offset.
    pub relocs: Vec<Reloc>,
    /// Index of the section's `STT_SECTION` symbol, if the object has one.
    pub section_symbol: Option<SymIdx>,
}

impl<'a> Section<'a> {
    pub fn is_alloc(&self) -> bool {
        self.flags & elf::SHF_ALLOC.0 != 0
    }
    pub fn is_exec(&self) -> bool {
        self.flags & elf::SHF_EXECINSTR.0 != 0
    }
    pub fn is_write(&self) -> bool {
        self.flags & elf::SHF_WRITE.0 != 0
    }
    pub fn is_tls(&self) -> bool {
        self.flags & elf::SHF_TLS.0 != 0
    }
    pub fn is_merge_strings(&self) -> bool {
        let m = elf::SHF_MERGE.0 | elf::SHF_STRINGS.0;
        self.flags & m == m
    }
    pub fn is_merge_consts(&self) -> bool {
        self.flags & elf::SHF_MERGE.0 != 0 && !self.is_merge_strings()
    }
    pub fn is_nobits(&self) -> bool {
        self.sh_type == elf::SHT_NOBITS.0
    }
    /// Bytes in `[start, end)`, or an empty slice for `SHT_NOBITS` (all zero) sections.
    pub fn bytes(&self, start: u64, end: u64) -> &'a [u8] {
        if self.is_nobits() {
            return &[];
        }
        // Callers pass ranges inside the section; clamp anyway so a bug cannot panic.
        let end = (end as usize).min(self.data.len());
        let start = (start as usize).min(end);
        let data: &'a [u8] = self.data;
        &data[start..end]
    }
    /// Relocations whose offset lies in `[start, end)`.
    pub fn relocs_in(&self, start: u64, end: u64) -> &[Reloc] {
        let lo = self.relocs.partition_point(|r| r.offset < start);
        let hi = self.relocs.partition_point(|r| r.offset < end);
        &self.relocs[lo..hi]
    }
}

/// A parsed relocatable object.
#[derive(Debug)]
pub struct Object<'a> {
    pub sections: Vec<Section<'a>>,
    pub symbols: Vec<Symbol>,
    /// Name of the first `STT_FILE` symbol: the translation unit's source file.
    pub source_file: Option<String>,
    /// The input was LLVM bitcode (clang -flto), not ELF; the object is empty.
    pub llvm_bitcode: bool,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl<'a> Object<'a> {
    /// Parses an x86-64 ELF64 relocatable object.
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        // clang -flto writes LLVM bitcode (raw, or in the bitcode wrapper) instead of ELF: an
        // empty object flagged as LTO, so it is refused like a gcc LTO object.
        if data.starts_with(b"BC\xc0\xde") || data.starts_with(&[0xde, 0xc0, 0x17, 0x0b]) {
            return Ok(Object {
                sections: Vec::new(),
                symbols: Vec::new(),
                source_file: None,
                llvm_bitcode: true,
            });
        }
        if data.len() < 16 || &data[..4] != b"\x7fELF" {
            return Err(Error::NotElf);
        }
        if data[4] != elf::ELFCLASS64.0 {
            return Err(Error::Unsupported(
                "only 64-bit ELF objects are supported".into(),
            ));
        }
        if data[5] != elf::ELFDATA2LSB.0 {
            return Err(Error::Unsupported(
                "only little-endian ELF objects are supported".into(),
            ));
        }
        let header = elf::FileHeader64::<LE>::parse(data).map_err(Error::malformed)?;
        let endian = header.endian().map_err(Error::malformed)?;
        let machine = header.e_machine(endian);
        if machine != elf::EM_X86_64 {
            return Err(Error::Unsupported(format!(
                "machine {} is not x86-64",
                machine.0
            )));
        }
        let e_type = header.e_type(endian);
        if e_type != elf::ET_REL {
            return Err(Error::NotRelocatable(match e_type {
                elf::ET_EXEC => "an executable".into(),
                elf::ET_DYN => "a shared object or PIE executable".into(),
                elf::ET_CORE => "a core dump".into(),
                other => format!("ELF type {}", other.0),
            }));
        }
        let table = header.sections(endian, data).map_err(Error::malformed)?;
        let nsec = table.len();

        let mut sections = Vec::with_capacity(nsec);
        for (index, sh) in table.enumerate() {
            let name = table.section_name(endian, sh).map_err(Error::malformed)?;
            let sh_type = sh.sh_type(endian);
            let size = sh.sh_size(endian);
            let bytes: &[u8] = if sh_type == elf::SHT_NOBITS || sh_type == elf::SHT_NULL {
                &[]
            } else {
                sh.data(endian, data)
                    .map_err(|e| Error::Malformed(format!("section {} contents: {e}", index.0)))?
            };
            let align = sh.sh_addralign(endian);
            if align > 1 && !align.is_power_of_two() {
                return Err(Error::Malformed(format!(
                    "section {:?} has alignment {align:#x}, not a power of two",
                    lossy(name)
                )));
            }
            sections.push(Section {
                name: lossy(name),
                sh_type: sh_type.0,
                flags: sh.sh_flags(endian).0,
                align,
                entsize: sh.sh_entsize(endian),
                size,
                data: bytes,
                relocs: Vec::new(),
                section_symbol: None,
            });
        }

        // The symbol table (relocatable objects have exactly one `.symtab`).
        let symtab = table
            .symbols(endian, data, elf::SHT_SYMTAB)
            .map_err(Error::malformed)?;
        let mut symbols = Vec::with_capacity(symtab.len());
        let mut current_file: Option<SymIdx> = None;
        let mut source_file = None;
        for (index, sym) in symtab.enumerate() {
            let name = lossy(symtab.symbol_name(endian, sym).map_err(Error::malformed)?);
            let kind = match sym.st_type() {
                elf::STT_NOTYPE => SymKind::NoType,
                elf::STT_OBJECT => SymKind::Object,
                elf::STT_FUNC => SymKind::Func,
                elf::STT_SECTION => SymKind::Section,
                elf::STT_FILE => SymKind::File,
                elf::STT_COMMON => SymKind::Common,
                elf::STT_TLS => SymKind::Tls,
                elf::STT_GNU_IFUNC => SymKind::Ifunc,
                other => SymKind::Other(other.0),
            };
            let bind = match sym.st_bind() {
                elf::STB_LOCAL => Bind::Local,
                elf::STB_GLOBAL => Bind::Global,
                elf::STB_WEAK => Bind::Weak,
                _ => Bind::Other,
            };
            let shndx = sym.st_shndx(endian);
            let place = if shndx == elf::SHN_UNDEF {
                Place::Undefined
            } else if shndx == elf::SHN_ABS {
                Place::Absolute
            } else if shndx == elf::SHN_COMMON {
                Place::Common
            } else {
                match symtab
                    .symbol_section(endian, sym, index)
                    .map_err(Error::malformed)?
                {
                    Some(s) if s.0 < nsec && s.0 != 0 => Place::Section(SecIdx(s.0 as u32)),
                    Some(s) => {
                        return Err(Error::Malformed(format!(
                            "symbol {name:?} refers to section {} of {nsec}",
                            s.0
                        )))
                    }
                    None => Place::Other(shndx.0),
                }
            };
            if kind == SymKind::File {
                current_file = Some(SymIdx(index.0 as u32));
                if source_file.is_none() && !name.is_empty() {
                    source_file = Some(name.clone());
                }
            }
            let value = sym.st_value(endian);
            let size = sym.st_size(endian);
            if let Place::Section(s) = place {
                let sec = &sections[s.0 as usize];
                if kind != SymKind::Section
                    && (value > sec.size || value.checked_add(size).is_none_or(|e| e > sec.size))
                {
                    return Err(Error::Malformed(format!(
                        "symbol {name:?} [{value:#x}, +{size:#x}) lies outside section {:?} of size {:#x}",
                        sec.name, sec.size
                    )));
                }
            }
            symbols.push(Symbol {
                name,
                kind,
                bind,
                visibility: sym.st_other().0 & 3,
                place,
                value,
                size,
                file: if bind == Bind::Local {
                    current_file
                } else {
                    None
                },
            });
        }
        if symbols.is_empty() {
            return Err(Error::Malformed("object has no symbol table".into()));
        }
        for (i, s) in symbols.iter().enumerate() {
            if s.kind == SymKind::Section {
                if let Place::Section(sec) = s.place {
                    sections[sec.0 as usize]
                        .section_symbol
                        .get_or_insert(SymIdx(i as u32));
                }
            }
        }

        // Relocations.
        for (index, sh) in table.enumerate() {
            let sh_type = sh.sh_type(endian);
            if sh_type == elf::SHT_REL {
                return Err(Error::Unsupported(format!(
                    "section {:?} holds REL relocations; x86-64 objects use RELA",
                    sections[index.0].name
                )));
            }
            if sh_type != elf::SHT_RELA {
                continue;
            }
            let target = sh.sh_info(endian) as usize;
            if target == 0 || target >= nsec {
                return Err(Error::Malformed(format!(
                    "relocation section {:?} applies to section {target} of {nsec}",
                    sections[index.0].name
                )));
            }
            let relas = sh
                .data_as_array::<elf::Rela64<LE>, _>(endian, data)
                .map_err(|e| {
                    Error::Malformed(format!(
                        "relocation section {:?}: {e}",
                        sections[index.0].name
                    ))
                })?;
            let tsize = sections[target].size;
            let tname = sections[target].name.clone();
            let mut list = Vec::with_capacity(relas.len());
            for r in relas {
                let offset = r.r_offset(endian);
                let sym = r.r_sym(endian, false);
                if sym as usize >= symbols.len() {
                    return Err(Error::Malformed(format!(
                        "relocation at {tname}+{offset:#x} names symbol {sym} of {}",
                        symbols.len()
                    )));
                }
                let r_type = r.r_type(endian, false).0;
                if r_type != elf::R_X86_64_NONE.0
                    && offset
                        .checked_add(reloc_width(r_type))
                        .is_none_or(|e| e > tsize)
                {
                    return Err(Error::Malformed(format!(
                        "relocation at {tname}+{offset:#x} lies outside the section (size {tsize:#x})"
                    )));
                }
                list.push(Reloc {
                    offset,
                    r_type,
                    sym: SymIdx(sym),
                    addend: r.r_addend(endian),
                });
            }
            let relocs = &mut sections[target].relocs;
            relocs.extend(list);
        }
        for s in &mut sections {
            // Relocations are not necessarily sorted in the file.
            s.relocs.sort_by_key(|r| r.offset);
        }

        Ok(Object {
            sections,
            symbols,
            source_file,
            llvm_bitcode: false,
        })
    }

    pub fn section(&self, i: SecIdx) -> &Section<'a> {
        &self.sections[i.0 as usize]
    }
    pub fn symbol(&self, i: SymIdx) -> &Symbol {
        &self.symbols[i.0 as usize]
    }
    /// Name of the `STT_FILE` a local symbol belongs to.
    pub fn file_of(&self, i: SymIdx) -> Option<&str> {
        self.symbol(i)
            .file
            .map(|f| self.symbol(f).name.as_str())
            .filter(|n| !n.is_empty())
    }
    /// True when the object carries GCC or LLVM link-time-optimisation bytecode.
    pub fn is_lto(&self) -> bool {
        self.llvm_bitcode
            || self.sections.iter().any(|s| {
                s.name.starts_with(".gnu.lto_") || s.name == ".llvm.lto" || s.name == ".llvmbc"
            })
    }
}

/// Number of bytes a relocation of this type writes.
pub fn reloc_width(r_type: u32) -> u64 {
    match r_type {
        // NONE, TLSDESC_CALL
        0 | 35 => 0,
        // 64, DTPMOD64, DTPOFF64, TPOFF64, PC64, GOTOFF64, GOT64, GOTPCREL64, GOTPC64, GOTPLT64,
        // PLTOFF64, SIZE64, RELATIVE64
        1 | 16 | 17 | 18 | 24 | 25 | 27 | 28 | 29 | 30 | 31 | 33 | 38 => 8,
        // 16, PC16
        12 | 13 => 2,
        // 8, PC8
        14 | 15 => 1,
        _ => 4,
    }
}
