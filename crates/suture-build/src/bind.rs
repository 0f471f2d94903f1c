//! Binding a patch to the deployed file: its build-id, symbol addresses from an unstripped
//! twin with that build-id, and the proof that every original symbol the patch relies on is
//! byte-identical in the deployed file and in the rebuild the patch was computed from.
//!
//! The twin is, in order of preference: the rebuild's output when it has the deployed file's
//! build-id; the deployed file itself when it is not stripped; a debug file found by build-id
//! (`<debug-dir>/.build-id/xx/yyyy.debug`); the rebuild's output when its build-id differs but
//! everything the file loads is byte-identical ([`loaded_differences`]: every allocated
//! section but the build-id note has the same name, address, size and bytes), which is how a
//! distribution's stripped file compares with a rebuild whose compiler version string or
//! debug information (both stripped from the package) differ. The comparison reads the deployed file's bytes at
//! the twin's addresses and the rebuild's bytes at the rebuild's own addresses: equal bytes
//! (which include every PC-relative displacement) mean the code the patch was diffed against
//! is the code that runs.

use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile64, SectionHeader as _};
use object::{LittleEndian as LE, Object as _, ObjectSection as _};
use suture_bundle::{hex, Symbol, Twin};
use suture_object::report::{RefScope, Report, SymbolKind};

use crate::elfinfo::{lookup, ElfInfo};
use crate::{BuildError, Mismatch};

/// An original symbol a patch relies on, as the differ names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wanted {
    pub name: String,
    pub file: Option<String>,
    pub kind: &'static str,
    pub role: &'static str,
    /// Defined in another unit or library: only recorded when the output defines it.
    pub external: bool,
}

fn kind_word(k: SymbolKind) -> &'static str {
    match k {
        SymbolKind::Function | SymbolKind::Ifunc => "function",
        SymbolKind::Tls => "tls",
        _ => "object",
    }
}

/// The replaced functions and referenced symbols of a unit's report.
pub fn wanted(report: &Report) -> Vec<Wanted> {
    let mut v = Vec::new();
    for f in &report.changed_functions {
        if f.fragment {
            continue;
        }
        v.push(Wanted {
            name: f.original_name.clone(),
            file: f.file.clone(),
            kind: "function",
            role: "replaced",
            external: false,
        });
    }
    for r in &report.references {
        v.push(Wanted {
            name: r.name.clone(),
            file: r.file.clone(),
            kind: kind_word(r.kind),
            role: "referenced",
            external: r.scope == RefScope::External,
        });
    }
    v.sort();
    v.dedup();
    v
}

/// The result of binding.
pub struct Binding {
    pub build_id: Vec<u8>,
    pub twin: Twin,
    pub symbols: Vec<Symbol>,
    /// Facts worth printing (e.g. "the rebuild's build-id differs, but ...").
    pub notes: Vec<String>,
}

/// `<dir>/.build-id/xx/yyyy.debug` for each debug directory.
pub fn debug_file(dirs: &[PathBuf], build_id: &[u8]) -> Option<PathBuf> {
    let h = hex(build_id);
    if h.len() < 3 {
        return None;
    }
    dirs.iter()
        .map(|d| {
            d.join(".build-id")
                .join(&h[..2])
                .join(format!("{}.debug", &h[2..]))
        })
        .find(|p| p.is_file())
}

fn compilers(e: &ElfInfo) -> String {
    if e.comment.is_empty() {
        "(no .comment)".into()
    } else {
        e.comment.join("; ")
    }
}

/// Binds a patch computed from `rebuild` to `deployed` (which may be `rebuild` itself).
pub fn bind(
    rebuild: &ElfInfo,
    deployed: &ElfInfo,
    debug_dirs: &[PathBuf],
    wanted: &[Wanted],
) -> Result<Binding, BuildError> {
    let deployed_id = deployed
        .build_id
        .clone()
        .ok_or_else(|| BuildError::NoBuildId {
            file: deployed.path.clone(),
        })?;
    let rebuild_id = rebuild.build_id.clone().unwrap_or_default();
    let mismatch = || {
        Box::new(Mismatch {
            deployed: deployed.path.clone(),
            deployed_id: hex(&deployed_id),
            rebuild: rebuild.path.clone(),
            rebuild_id: hex(&rebuild_id),
            deployed_compiler: compilers(deployed),
            rebuild_compiler: compilers(rebuild),
        })
    };
    let same_build = rebuild_id == deployed_id;
    let same_load = || {
        rebuild.symbols.has_symtab
            && loaded_differences(&rebuild.data, &deployed.data).is_ok_and(|d| d.is_empty())
    };
    let debug;
    let (twin, twin_kind): (&ElfInfo, &str) = if same_build && rebuild.symbols.has_symtab {
        (rebuild, "rebuild")
    } else if deployed.symbols.has_symtab {
        (deployed, "deployed")
    } else if let Some(p) = debug_file(debug_dirs, &deployed_id) {
        debug = ElfInfo::read(&p).map_err(BuildError::elf(&p))?;
        if debug.build_id.as_deref() != Some(&deployed_id) {
            return Err(BuildError::DebugFileMismatch {
                file: p.display().to_string(),
                build_id: hex(&deployed_id),
            });
        }
        (&debug, "debug-file")
    } else if same_load() {
        (rebuild, "rebuild-same-load")
    } else {
        let id = hex(&deployed_id);
        return Err(BuildError::Unlocatable {
            pair: mismatch(),
            debug_file: format!(
                ".build-id/{}/{}.debug",
                &id[..2.min(id.len())],
                id.get(2..).unwrap_or("")
            ),
            debug_dirs: debug_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let mut symbols = Vec::new();
    let mut differ = Vec::new();
    for w in wanted {
        let in_twin = lookup(&twin.symbols, &w.name, w.file.as_deref());
        let in_rebuild = lookup(&rebuild.symbols, &w.name, w.file.as_deref());
        let (t, r) = match (in_twin, in_rebuild) {
            (Ok(t), Ok(r)) => (t, r),
            // Defined outside this output (libc, another library): resolved at apply time.
            (Err(_), Err(_)) if w.external => continue,
            (Err(e), _) => {
                differ.push(format!("{}: not found in {} ({e})", w.name, twin.path));
                continue;
            }
            (Ok(_), Err(e)) => {
                differ.push(format!("{}: not found in the rebuild ({e})", w.name));
                continue;
            }
        };
        if t.tls || r.tls {
            symbols.push(Symbol {
                name: w.name.clone(),
                file: w.file.clone(),
                kind: "tls".into(),
                role: w.role.into(),
                address: t.value,
                size: t.size,
                sha256: None,
            });
            continue;
        }
        let dep = deployed.bytes_at(t.value, t.size);
        let reb = rebuild.bytes_at(r.value, r.size);
        if t.size != r.size {
            differ.push(format!(
                "{}: {} bytes deployed vs {} in the rebuild",
                w.name, t.size, r.size
            ));
        } else if dep.is_some() != reb.is_some() || dep != reb {
            differ.push(format!("{}: bytes differ", w.name));
        }
        symbols.push(Symbol {
            name: w.name.clone(),
            file: w.file.clone(),
            kind: w.kind.into(),
            role: w.role.into(),
            address: t.value,
            size: t.size,
            sha256: dep.map(suture_bundle::sha256_hex),
        });
    }
    if !differ.is_empty() {
        return Err(BuildError::SymbolsDiffer {
            pair: mismatch(),
            symbols: differ,
        });
    }
    let mut notes = Vec::new();
    if twin_kind == "rebuild-same-load" {
        notes.push(format!(
            "{}: build-id {} differs from the rebuild's {}, but every section it loads is \
             byte-identical to the rebuild's (the builds differ only in what the file does not \
             load, such as the compiler's version string or debug information), so the \
             rebuild's symbol table gives the addresses; all {} symbols the patch relies on \
             are byte-identical",
            deployed.path,
            hex(&deployed_id),
            hex(&rebuild_id),
            symbols.len()
        ));
    } else if !same_build {
        notes.push(format!(
            "{}: build-id {} differs from the rebuild's {}, but all {} symbols the patch relies \
             on are byte-identical (addresses from {} {})",
            deployed.path,
            hex(&deployed_id),
            hex(&rebuild_id),
            symbols.len(),
            twin_kind,
            twin.path
        ));
    }
    Ok(Binding {
        build_id: deployed_id,
        twin: Twin {
            kind: twin_kind.into(),
            path: twin.path.clone(),
        },
        symbols,
        notes,
    })
}

/// The allocated sections (what the loader maps) in which two linked ELF files differ: a name
/// for each section missing from one of them or with another address, size or contents. The
/// GNU build-id note is left out (it is what differs between builds that load the same
/// bytes). Empty: everything the two files load is byte-identical.
pub fn loaded_differences(a: &[u8], b: &[u8]) -> Result<Vec<String>, String> {
    /// Name, address, size and contents of an allocated section.
    type Loaded<'a> = (String, u64, u64, &'a [u8]);
    fn loaded(data: &[u8]) -> Result<Vec<Loaded<'_>>, String> {
        let f = ElfFile64::<LE>::parse(data).map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        for s in f.sections() {
            let flags = s.elf_section_header().sh_flags(f.endian());
            let alloc = flags.0 & object::elf::SHF_ALLOC.0 != 0;
            let name = s.name().map_err(|e| e.to_string())?;
            if !alloc || name == ".note.gnu.build-id" {
                continue;
            }
            let bytes = s.data().map_err(|e| e.to_string())?;
            v.push((name.to_string(), s.address(), s.size(), bytes));
        }
        Ok(v)
    }
    let (la, lb) = (loaded(a)?, loaded(b)?);
    let mut differ = Vec::new();
    for (name, addr, size, bytes) in &la {
        match lb.iter().find(|s| &s.0 == name) {
            None => differ.push(format!("{name} (only in one file)")),
            Some((_, a2, s2, b2)) if (a2, s2) != (addr, size) => differ.push(format!(
                "{name} (at {addr:#x}, {size} bytes vs at {a2:#x}, {s2} bytes)"
            )),
            Some((_, _, _, b2)) if b2 != bytes => differ.push(format!("{name} (contents)")),
            Some(_) => {}
        }
    }
    for (name, ..) in &lb {
        if !la.iter().any(|s| &s.0 == name) {
            differ.push(format!("{name} (only in one file)"));
        }
    }
    Ok(differ)
}

/// Default debug-file directories.
pub fn default_debug_dirs() -> Vec<PathBuf> {
    vec![Path::new("/usr/lib/debug").to_path_buf()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_differences_sees_one_changed_byte_of_text() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(loaded_differences(&me, &me), Ok(Vec::new()));
        let f = ElfFile64::<LE>::parse(&*me).unwrap();
        let text = f.section_by_name(".text").unwrap();
        let (off, _) = text.file_range().unwrap();
        let mut other = me.clone();
        other[usize::try_from(off).unwrap() + 16] ^= 0xff;
        assert_eq!(
            loaded_differences(&me, &other),
            Ok(vec![".text (contents)".to_string()])
        );
        // Something the loader does not map (a non-allocated section) is not a difference.
        let comment = f.section_by_name(".comment").unwrap();
        let (off, _) = comment.file_range().unwrap();
        let mut other = me.clone();
        other[usize::try_from(off).unwrap()] ^= 0xff;
        assert_eq!(loaded_differences(&me, &other), Ok(Vec::new()));
    }
}
