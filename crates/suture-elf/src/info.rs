//! A linked ELF file as a whole: build-id, soname, the compiler recorded in `.comment`,
//! symbols and the bytes at a link-time address.

use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{LittleEndian as LE, Object as _, ObjectSection as _};

use crate::{ElfError, ElfSymbols, Sym};

/// What suture needs to know about one linked ELF file.
pub struct ElfInfo {
    pub path: String,
    pub data: Vec<u8>,
    pub build_id: Option<Vec<u8>>,
    pub soname: Option<String>,
    /// Contents of `.comment` (compiler identification strings), deduplicated.
    pub comment: Vec<String>,
    pub symbols: ElfSymbols,
    /// `ET_EXEC` or `ET_DYN` (not a relocatable object or core file).
    pub linked: bool,
}

impl ElfInfo {
    pub fn read(path: &std::path::Path) -> Result<ElfInfo, ElfError> {
        let data = std::fs::read(path).map_err(|error| ElfError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&path.display().to_string(), data)
    }

    pub fn parse(path: &str, data: Vec<u8>) -> Result<ElfInfo, ElfError> {
        let symbols = ElfSymbols::parse(path, &data)?;
        let file = ElfFile64::<LE>::parse(&*data).map_err(|e| ElfError::Unreadable {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        let endian = file.endian();
        let e_type = file.elf_header().e_type(endian);
        let mut comment: Vec<String> = Vec::new();
        if let Some(s) = file.section_by_name(".comment") {
            if let Ok(bytes) = s.data() {
                for part in bytes.split(|b| *b == 0) {
                    let t = String::from_utf8_lossy(part).trim().to_string();
                    if !t.is_empty() && !comment.contains(&t) {
                        comment.push(t);
                    }
                }
            }
        }
        let soname = soname(&file);
        Ok(ElfInfo {
            path: path.to_string(),
            build_id: symbols.build_id.clone(),
            soname,
            comment,
            symbols,
            linked: e_type == elf::ET_EXEC || e_type == elf::ET_DYN,
            data,
        })
    }

    /// The file bytes backing `[addr, addr + size)` (link-time addresses), when they are all
    /// in the file (not `.bss`).
    pub fn bytes_at(&self, addr: u64, size: u64) -> Option<&[u8]> {
        bytes_at(&self.data, addr, size)
    }

    pub fn file_name(&self) -> String {
        std::path::Path::new(&self.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn soname(file: &ElfFile64<'_, LE>) -> Option<String> {
    let endian = file.endian();
    let data = file.data();
    let sections = file.elf_section_table();
    for s in sections.iter() {
        if s.sh_type(endian) != elf::SHT_DYNAMIC {
            continue;
        }
        let dyns = s.data_as_array::<elf::Dyn64<LE>, _>(endian, data).ok()?;
        let strtab_idx = s.sh_link(endian);
        let strings = sections
            .strings(endian, data, object::SectionIndex(strtab_idx as usize))
            .ok()?;
        for d in dyns {
            if d.d_tag(endian) == elf::DT_SONAME {
                let off = u32::try_from(d.d_val(endian)).ok()?;
                return strings
                    .get(off)
                    .ok()
                    .map(|b| String::from_utf8_lossy(b).into_owned());
            }
        }
    }
    None
}

/// The bytes of a linked ELF file at link-time addresses `[addr, addr + size)`, found through
/// its `PT_LOAD` program headers.
pub fn bytes_at(data: &[u8], addr: u64, size: u64) -> Option<&[u8]> {
    let file = ElfFile64::<LE>::parse(data).ok()?;
    let endian = file.endian();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != elf::PT_LOAD {
            continue;
        }
        let (va, filesz, off) = (ph.p_vaddr(endian), ph.p_filesz(endian), ph.p_offset(endian));
        if addr >= va && addr.checked_add(size)? <= va.checked_add(filesz)? {
            let start = usize::try_from(off.checked_add(addr - va)?).ok()?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            return data.get(start..end);
        }
    }
    None
}

/// Finds a symbol as the differ names it: a static by (source file, name), falling back to a
/// unique local of that name; a global by name, the file's own hidden symbol first
/// ([`ElfSymbols::linker_local`]). `Err` says why not.
pub fn lookup(symbols: &ElfSymbols, name: &str, file: Option<&str>) -> Result<Sym, String> {
    if let Some(file) = file {
        match symbols
            .locals
            .get(&(file.to_string(), name.to_string()))
            .map(Vec::as_slice)
        {
            Some([one]) => return Ok(*one),
            Some([_, _, ..]) => return Err(format!("several statics named {name} in {file}")),
            _ => {}
        }
        let any: Vec<&Sym> = symbols
            .locals
            .iter()
            .filter(|((_, n), _)| n == name)
            .flat_map(|(_, v)| v)
            .collect();
        return match any.as_slice() {
            [one] => Ok(**one),
            [] => symbols
                .global(name)
                .ok_or_else(|| format!("no static {name} of {file}")),
            _ => Err(format!("several statics named {name} and none in {file}")),
        };
    }
    if let Some(own) = symbols.linker_local(name)? {
        return Ok(own);
    }
    symbols
        .global(name)
        .ok_or_else(|| format!("no symbol {name}"))
}

/// The GNU build-id of an ELF file, without parsing its symbols.
pub fn build_id(data: &[u8]) -> Option<Vec<u8>> {
    let file = ElfFile64::<LE>::parse(data).ok()?;
    file.build_id().ok()?.map(<[u8]>::to_vec)
}

/// The GNU build-id of the ELF file at `path`, reading only what it needs: the ELF and
/// program headers and the `PT_NOTE` segments (a few KiB of a linked file), falling back to
/// the section headers for a file without a build-id note segment. `Ok(None)`: not a 64-bit
/// little-endian ELF file, or no build-id. Scanning every file mapped on a host this way
/// costs kilobytes where [`build_id`] needs the whole file in memory.
pub fn build_id_of_file(path: &std::path::Path) -> std::io::Result<Option<Vec<u8>>> {
    let cache = object::ReadCache::new(std::fs::File::open(path)?);
    Ok(build_id_in(&cache))
}

fn build_id_in<'a, R: object::ReadRef<'a>>(data: R) -> Option<Vec<u8>> {
    let hdr = elf::FileHeader64::<LE>::parse(data).ok()?;
    let endian = hdr.endian().ok()?;
    for ph in hdr.program_headers(endian, data).ok()? {
        let Ok(Some(mut notes)) = ph.notes(endian, data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.n_type(endian) == elf::NT_GNU_BUILD_ID && note.name() == elf::ELF_NOTE_GNU {
                return Some(note.desc().to_vec());
            }
        }
    }
    let file = ElfFile64::<LE, R>::parse(data).ok()?;
    file.build_id().ok()?.map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("suture-elf-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn build_id_of_file_agrees_with_the_whole_file() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let whole = build_id(&exe);
        assert!(whole.is_some(), "the test binary is linked with a build-id");
        let from_file = build_id_of_file(std::path::Path::new("/proc/self/exe")).unwrap();
        assert_eq!(from_file, whole);
        if let Ok(sh) = std::fs::read("/bin/sh") {
            assert_eq!(
                build_id_of_file(std::path::Path::new("/bin/sh")).unwrap(),
                build_id(&sh)
            );
        }

        // Without note segments (every PT_NOTE made PT_NULL), the section headers answer.
        let mut bytes = exe.clone();
        let hdr = elf::FileHeader64::<LE>::parse(&*exe).unwrap();
        let (phoff, phentsize, phnum) = (
            hdr.e_phoff.get(LE) as usize,
            usize::from(hdr.e_phentsize.get(LE)),
            usize::from(hdr.e_phnum.get(LE)),
        );
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            if u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) == elf::PT_NOTE.0 {
                bytes[at..at + 4].copy_from_slice(&elf::PT_NULL.0.to_le_bytes());
            }
        }
        let p = temp("no-note-segment", &bytes);
        assert_eq!(build_id_of_file(&p).unwrap(), whole);
        std::fs::remove_file(&p).unwrap();

        let p = temp("not-elf", b"#!/bin/sh\n");
        assert_eq!(build_id_of_file(&p).unwrap(), None);
        std::fs::remove_file(&p).unwrap();
        assert!(build_id_of_file(std::path::Path::new("/nonexistent/file")).is_err());
    }
}
