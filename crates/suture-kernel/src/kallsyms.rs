//! Symbols of the target kernel, and the `sympos` livepatch needs to tell same-named symbols
//! apart.
//!
//! Livepatch finds a symbol by object (`vmlinux` or a module), name and position: position 0
//! means "the name is unique in that object", position N (1-based) means "the N-th symbol of
//! that name in the object's kallsyms order". Debian's image ships no `System.map` (an 83-byte
//! stub), so the symbols of vmlinux come from a copy of the target's `/proc/kallsyms` (read as
//! root: addresses are needed), and those of a module from its stock `.ko` (a module's kallsyms
//! are its symbol table in file order, minus undefined, unnamed and init-section symbols).
//!
//! Disambiguation (the decision, documented in ARCHITECTURE.md): a name that is unique in its
//! object gets sympos 0. A duplicated name must belong to the translation unit being patched:
//! - in vmlinux, the Debian kernel is not built with `-ffunction-sections`, so a unit's code is
//!   one contiguous range of `.text` (and its data one range of each data section). The unit's
//!   other symbols whose names are unique in kallsyms give those ranges; the candidate inside
//!   the range of its kind (text, data, read-only data, bss) wins. No candidate or several in
//!   the range is a refusal naming the symbol.
//! - in a module, the `.ko` keeps each unit's `STT_FILE` symbol before its local symbols: the
//!   candidate that follows the unit's file symbol wins.

use std::collections::HashMap;
use std::path::Path;

use object::read::elf::{FileHeader, SectionHeader, Sym as _};
use object::{elf, LittleEndian as LE};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: {what}")]
    Format { path: String, what: String },
}

/// One symbol of an object, in kallsyms order.
#[derive(Clone, Debug)]
pub struct Sym {
    pub name: String,
    pub addr: u64,
    /// The kallsyms type letter, lower-cased (`t`, `d`, `r`, `b`, ...).
    pub class: char,
    /// For `.ko` symbols: the source file of the preceding `STT_FILE` symbol.
    pub file: Option<String>,
}

/// The symbols of one object (vmlinux or one module), in kallsyms order.
#[derive(Clone, Debug, Default)]
pub struct ObjectSymbols {
    pub syms: Vec<Sym>,
    by_name: HashMap<String, Vec<usize>>,
    /// A module's symbol table (in symbol-table order), not vmlinux's kallsyms (in address
    /// order).
    pub module: bool,
}

impl ObjectSymbols {
    fn new(syms: Vec<Sym>) -> Self {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in syms.iter().enumerate() {
            by_name.entry(s.name.clone()).or_default().push(i);
        }
        ObjectSymbols {
            syms,
            by_name,
            module: false,
        }
    }

    /// Indices of the symbols called `name`, in kallsyms order.
    pub fn named(&self, name: &str) -> &[usize] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn contains(&self, name: &str) -> bool {
        !self.named(name).is_empty()
    }
}

/// The vmlinux part of a `/proc/kallsyms` copy (lines without a `[module]` column).
pub fn read_kallsyms(path: &Path) -> Result<ObjectSymbols, Error> {
    let text = std::fs::read_to_string(path).map_err(|err| Error::Read {
        path: path.display().to_string(),
        err,
    })?;
    let mut syms = Vec::new();
    let mut nonzero = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if f.next().is_some() {
            continue; // a module's symbol: "addr t name [module]"
        }
        let addr = u64::from_str_radix(addr, 16).map_err(|_| Error::Format {
            path: path.display().to_string(),
            what: format!("not a kallsyms line: {line:?}"),
        })?;
        nonzero |= addr != 0;
        let class = kind.chars().next().unwrap_or('?').to_ascii_lowercase();
        syms.push(Sym {
            name: name.to_string(),
            addr,
            class,
            file: None,
        });
    }
    if syms.is_empty() {
        return Err(Error::Format {
            path: path.display().to_string(),
            what: "no vmlinux symbols (is this a copy of /proc/kallsyms?)".into(),
        });
    }
    if !nonzero {
        return Err(Error::Format {
            path: path.display().to_string(),
            what: "every address is zero: copy /proc/kallsyms as root (kptr_restrict hides \
                   addresses from other users), they are needed to tell same-named symbols apart"
                .into(),
        });
    }
    Ok(ObjectSymbols::new(syms))
}

/// Compressed module file endings and the command that decompresses one to standard output
/// (what kmod does when it loads them; suture runs the tools rather than carry decoders).
pub const COMPRESSED: [(&str, &[&str]); 3] = [
    (".xz", &["xz", "-dc"]),
    (".zst", &["zstd", "-dcq"]),
    (".gz", &["gzip", "-dc"]),
];

/// The bytes of a module file, decompressed when its name ends like [`COMPRESSED`].
pub fn read_module_file(path: &Path) -> Result<Vec<u8>, Error> {
    let read = |err| Error::Read {
        path: path.display().to_string(),
        err,
    };
    let name = path.to_string_lossy();
    let Some((_, cmd)) = COMPRESSED.iter().find(|(ext, _)| name.ends_with(ext)) else {
        return std::fs::read(path).map_err(read);
    };
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .arg(path)
        .output()
        .map_err(read)?;
    if !out.status.success() {
        return Err(Error::Format {
            path: path.display().to_string(),
            what: format!(
                "{} failed: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// The kallsyms of a module as the kernel builds them from its `.ko` (or compressed `.ko`).
pub fn read_module(path: &Path) -> Result<ObjectSymbols, Error> {
    let data = read_module_file(path)?;
    module_symbols(&data).map_err(|what| Error::Format {
        path: path.display().to_string(),
        what,
    })
}

/// Symbols of a relocatable module image in symbol-table order, as `add_kallsyms` keeps them.
pub fn module_symbols(data: &[u8]) -> Result<ObjectSymbols, String> {
    let hdr = elf::FileHeader64::<LE>::parse(data).map_err(|e| e.to_string())?;
    let sections = hdr.sections(LE, data).map_err(|e| e.to_string())?;
    let symtab = sections
        .symbols(LE, data, elf::SHT_SYMTAB)
        .map_err(|e| e.to_string())?;
    let mut syms = Vec::new();
    let mut file = None;
    for s in symtab.iter() {
        let name =
            String::from_utf8_lossy(symtab.symbol_name(LE, s).unwrap_or_default()).into_owned();
        if s.st_type() == elf::STT_FILE {
            file = Some(name);
            continue;
        }
        let shndx = s.st_shndx(LE);
        if name.is_empty() || shndx == elf::SHN_UNDEF || usize::from(shndx.0) >= sections.len() {
            continue;
        }
        let Ok(sec) = sections.section(object::SectionIndex(usize::from(shndx.0))) else {
            continue;
        };

        let flags = sec.sh_flags(LE).0;
        let sname = sections.section_name(LE, sec).unwrap_or_default();
        if flags & elf::SHF_ALLOC.0 == 0 || sname.starts_with(b".init") {
            continue;
        }
        let class = if flags & elf::SHF_EXECINSTR.0 != 0 {
            't'
        } else if sec.sh_type(LE) == elf::SHT_NOBITS {
            'b'
        } else if flags & elf::SHF_WRITE.0 != 0 {
            'd'
        } else {
            'r'
        };
        syms.push(Sym {
            name,
            addr: s.st_value(LE),
            class,
            file: file.clone(),
        });
    }
    Ok(ObjectSymbols {
        module: true,
        ..ObjectSymbols::new(syms)
    })
}

/// Broad kinds of kallsyms classes whose symbols of one translation unit are contiguous.
fn region(class: char) -> char {
    match class {
        't' | 'w' => 't',
        'd' | 'v' | 'g' => 'd',
        'r' | 'n' => 'r',
        'b' | 's' => 'b',
        c => c,
    }
}

/// What the translation unit being patched looks like in the target: its defined symbol names
/// (from the original object) and its source file.
pub struct UnitHint<'a> {
    pub names: &'a [String],
    /// Base name of the source file (`consoles.c`).
    pub file: Option<&'a str>,
}

/// The sympos of `name` (a symbol of the unit described by `hint`) in `syms`, or why none can
/// be given.
pub fn sympos(syms: &ObjectSymbols, name: &str, hint: &UnitHint) -> Result<usize, String> {
    let cands = syms.named(name);
    match cands.len() {
        0 => return Err(format!("{name} is not in the target's symbol table")),
        1 => return Ok(0),
        _ => {}
    }
    // Modules: the candidate after the unit's own file symbol.
    if cands.iter().all(|&i| syms.syms[i].file.is_some()) {
        if let Some(file) = hint.file {
            let hits: Vec<usize> = cands
                .iter()
                .enumerate()
                .filter(|(_, &i)| {
                    syms.syms[i]
                        .file
                        .as_deref()
                        .is_some_and(|f| f.rsplit('/').next() == Some(file))
                })
                .map(|(n, _)| n + 1)
                .collect();
            if let [pos] = hits.as_slice() {
                return Ok(*pos);
            }
        }
        return Err(format!(
            "{name} is defined {} times in the module and the source file does not tell which \
             one is the unit's",
            cands.len()
        ));
    }
    // Modules whose file symbols were stripped (Debian's are): `ld -r` keeps each object's
    // local symbols together in the symbol table, so the unit's own neighbours tell, across
    // sections (a module's symbol values are offsets into different sections).
    if syms.module {
        return by_neighbours(syms, cands, hint, false).ok_or_else(|| {
            format!(
                "{name} is defined {} times in the module, which has no file symbols, and \
                 none of them clearly lies among the unit's other symbols",
                cands.len()
            )
        });
    }
    // vmlinux: ranges of the unit's uniquely named symbols, per region.
    let mut ranges: HashMap<char, (u64, u64)> = HashMap::new();
    for n in hint.names {
        if let [i] = syms.named(n) {
            let s = &syms.syms[*i];
            let r = ranges.entry(region(s.class)).or_insert((s.addr, s.addr));
            r.0 = r.0.min(s.addr);
            r.1 = r.1.max(s.addr);
        }
    }
    let hits: Vec<usize> = cands
        .iter()
        .enumerate()
        .filter(|(_, &i)| {
            let s = &syms.syms[i];
            ranges
                .get(&region(s.class))
                .is_some_and(|&(lo, hi)| lo <= s.addr && s.addr <= hi)
        })
        .map(|(n, _)| n + 1)
        .collect();
    if let [pos] = hits.as_slice() {
        return Ok(*pos);
    }
    // The ranges can mislead: one `__init` function or cold part of the unit, far from the
    // rest, stretches them over other units. The unit's code is laid out together, so the
    // candidate whose nearest neighbours in the symbol table are the unit's own (uniquely
    // named) symbols is its; taken only when it is clearly so.
    if let Some(pos) = by_neighbours(syms, cands, hint, true) {
        return Ok(pos);
    }
    match hits.as_slice() {
        [pos] => Ok(*pos),
        [] => Err(format!(
            "{name} is defined {} times in the target kernel and none of them lies among the \
             translation unit's other symbols",
            cands.len()
        )),
        _ => Err(format!(
            "{name} is defined {} times in the target kernel and {} of them lie among the \
             translation unit's other symbols",
            cands.len(),
            hits.len()
        )),
    }
}

/// Symbols on each side of a candidate that [`by_neighbours`] looks at.
const NEIGHBOURS: usize = 6;

/// The sympos of the one candidate (indices `cands` into `syms`) with at least 2 of the
/// unit's uniquely named symbols among its [`NEIGHBOURS`] neighbours on each side (of the same
/// region when `same_region`: kallsyms is in address order) and at least 2 more than any other
/// candidate; None when no candidate stands out so.
fn by_neighbours(
    syms: &ObjectSymbols,
    cands: &[usize],
    hint: &UnitHint,
    same_region: bool,
) -> Option<usize> {
    let own: std::collections::HashSet<&str> = hint
        .names
        .iter()
        .map(String::as_str)
        .filter(|n| syms.named(n).len() == 1)
        .collect();
    let score = |i: usize| {
        let region_of = region(syms.syms[i].class);
        let lo = i.saturating_sub(NEIGHBOURS);
        let hi = (i + NEIGHBOURS + 1).min(syms.syms.len());
        (lo..hi)
            .filter(|&j| j != i)
            .filter(|&j| {
                let s = &syms.syms[j];
                (!same_region || region(s.class) == region_of) && own.contains(s.name.as_str())
            })
            .count()
    };
    let mut scored: Vec<(usize, usize)> = cands
        .iter()
        .enumerate()
        .map(|(n, &i)| (score(i), n + 1))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    match scored.as_slice() {
        [(best, pos), rest @ ..] if *best >= 2 && rest.first().is_none_or(|r| best - r.0 >= 2) => {
            Some(*pos)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(list: &[(&str, u64, char)]) -> ObjectSymbols {
        ObjectSymbols::new(
            list.iter()
                .map(|&(n, a, c)| Sym {
                    name: n.into(),
                    addr: a,
                    class: c,
                    file: None,
                })
                .collect(),
        )
    }

    /// route.c's `dst_discard` (five in vmlinux): the unit's `__init` function lies far away,
    /// so its range covers four of them; its neighbours tell which is its.
    #[test]
    fn a_far_init_function_does_not_hide_the_units_copy() {
        let mut list = vec![("dst_discard", 0x100, 't')];
        let others = ["o1", "o2", "o3", "o4", "o5", "o6", "o7"];
        list.extend(others.iter().map(|&n| (n, 0x110, 't')));
        list.extend([
            ("rt_a", 0x200, 't'),
            ("rt_b", 0x210, 't'),
            ("dst_discard", 0x220, 't'),
            ("rt_c", 0x230, 't'),
            ("rt_d", 0x240, 't'),
        ]);
        let more = ["p1", "p2", "p3", "p4", "p5", "p6", "p7"];
        list.extend(more.iter().map(|&n| (n, 0x300, 't')));
        list.extend([("dst_discard", 0x400, 't'), ("rt_init", 0x900, 't')]);
        let s = syms(&list);
        let names: Vec<String> = ["rt_a", "rt_b", "rt_c", "rt_d", "rt_init", "dst_discard"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let hint = UnitHint {
            names: &names,
            file: None,
        };
        assert_eq!(sympos(&s, "dst_discard", &hint), Ok(2));
        // Without enough of the unit around any copy, it stays refused.
        let few: Vec<String> = ["rt_a", "rt_init", "dst_discard"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let hint = UnitHint {
            names: &few,
            file: None,
        };
        assert!(sympos(&s, "dst_discard", &hint).is_err());
    }

    /// A Debian module has no file symbols; its locals are grouped per object in symbol-table
    /// order, across sections (values are per-section offsets and tell nothing).
    #[test]
    fn module_statics_without_file_symbols_are_found_by_neighbours() {
        // Two units of eight functions and a table each, the duplicate in the middle of each.
        let unit = |p: &'static str| -> Vec<(String, u64, char)> {
            let mut v: Vec<(String, u64, char)> = (0..8)
                .map(|i| (format!("{p}_fn{i}"), i * 0x10, 't'))
                .collect();
            v.insert(4, ("__already_done.2".into(), 0x8, 'd'));
            v.push((format!("{p}_tab"), 0x80, 'r'));
            v
        };
        let all: Vec<(String, u64, char)> = unit("a").into_iter().chain(unit("b")).collect();
        let list: Vec<(&str, u64, char)> =
            all.iter().map(|(n, a, c)| (n.as_str(), *a, *c)).collect();
        let mut s = syms(&list);
        s.module = true;
        let names: Vec<String> = (0..8)
            .map(|i| format!("b_fn{i}"))
            .chain(["b_tab".to_string(), "__already_done.2".to_string()])
            .collect();
        let hint = UnitHint {
            names: &names,
            file: Some("b.c"),
        };
        assert_eq!(sympos(&s, "__already_done.2", &hint), Ok(2));
        let names: Vec<String> = ["b_fn1", "__already_done.2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let hint = UnitHint {
            names: &names,
            file: Some("b.c"),
        };
        let e = sympos(&s, "__already_done.2", &hint).unwrap_err();
        assert!(e.contains("no file symbols"), "{e}");
    }

    #[test]
    fn unique_names_get_zero_and_duplicates_their_unit_range() {
        let s = syms(&[
            ("a_start", 0x100, 't'),
            ("show", 0x110, 't'),
            ("a_end", 0x180, 't'),
            ("other", 0x200, 't'),
            ("show", 0x210, 't'),
        ]);
        let names = vec![
            "a_start".to_string(),
            "a_end".to_string(),
            "show".to_string(),
        ];
        let hint = UnitHint {
            names: &names,
            file: None,
        };
        assert_eq!(sympos(&s, "a_start", &hint), Ok(0));
        assert_eq!(sympos(&s, "show", &hint), Ok(1));
        let names2 = vec!["other".to_string()];
        let hint2 = UnitHint {
            names: &names2,
            file: None,
        };
        assert!(sympos(&s, "show", &hint2).is_err());
        assert!(sympos(&s, "missing", &hint).is_err());
    }
}
