//! Source lines of the instructions of a relocatable object, from its DWARF line table
//! (`.debug_line`, present when the unit was compiled with `-g`).
//!
//! In an object file every code section starts at address 0 and the line table names its
//! addresses through relocations (with `-ffunction-sections`, one sequence per function
//! section). The relocations are applied here with the target section folded into the
//! address, so each row is known as (section, offset).

use std::collections::HashMap;

use gimli::{EndianSlice, LittleEndian, RelocateReader};

use crate::elf::{Object, SecIdx};

/// Addresses are tagged with their section: `(section + 1) << TAG | offset`.
pub(crate) const TAG: u32 = 40;

#[derive(Debug, Default)]
pub(crate) struct Relocs(HashMap<usize, u64>);

impl gimli::Relocate<usize> for &Relocs {
    fn relocate_address(&self, offset: usize, value: u64) -> gimli::Result<u64> {
        Ok(self.0.get(&offset).copied().unwrap_or(value))
    }
    fn relocate_offset(&self, offset: usize, value: usize) -> gimli::Result<usize> {
        Ok(self.0.get(&offset).map_or(value, |&v| v as usize))
    }
}

pub(crate) type Reader<'a, 'r> = RelocateReader<EndianSlice<'a, LittleEndian>, &'r Relocs>;

/// The relocations of a debug section as a map from offset to value, each target in an
/// allocated section given as a tagged address `(section + 1) << TAG | offset`.
pub(crate) fn reloc_map(obj: &Object, s: &crate::elf::Section) -> Relocs {
    let mut map = Relocs::default();
    for r in &s.relocs {
        let sym = &obj.symbols[r.sym.0 as usize];
        let base = sym.value.wrapping_add(r.addend as u64);
        let value = match sym.section() {
            Some(sec) if obj.section(sec).is_alloc() => {
                (u64::from(sec.0) + 1) << TAG | (base & ((1 << TAG) - 1))
            }
            _ => base,
        };
        map.0.insert(r.offset as usize, value);
    }
    map
}

/// The relocations of every debug section of an object, indexed like its sections (other
/// sections get none), for [`load_dwarf`].
pub(crate) fn debug_relocs(obj: &Object) -> Vec<Relocs> {
    obj.sections
        .iter()
        .map(|s| {
            if s.name.starts_with(".debug") {
                reloc_map(obj, s)
            } else {
                Relocs::default()
            }
        })
        .collect()
}

/// The object's DWARF with `relocs` (from [`debug_relocs`]) applied; `None` without
/// `.debug_info`.
pub(crate) fn load_dwarf<'a, 'r>(
    obj: &Object<'a>,
    relocs: &'r [Relocs],
    empty: &'r Relocs,
) -> Option<gimli::Dwarf<Reader<'a, 'r>>> {
    obj.sections.iter().find(|s| s.name == ".debug_info")?;
    let load = |id: gimli::SectionId| -> Result<Reader<'a, 'r>, ()> {
        let found = obj
            .sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == id.name());
        Ok(match found {
            Some((i, s)) => RelocateReader::new(EndianSlice::new(s.data, LittleEndian), &relocs[i]),
            None => RelocateReader::new(EndianSlice::new(&[], LittleEndian), empty),
        })
    };
    gimli::Dwarf::load(load).ok()
}

/// Calls `f` with every compile unit of `dwarf` and the root of its entries.
pub(crate) fn each_unit<'a, 'r>(
    dwarf: &gimli::Dwarf<Reader<'a, 'r>>,
    mut f: impl FnMut(&gimli::Unit<Reader<'a, 'r>>, gimli::EntriesTreeNode<Reader<'a, 'r>>),
) {
    let mut headers = dwarf.units();
    while let Ok(Some(h)) = headers.next() {
        let Ok(unit) = dwarf.unit(h) else { continue };
        let Ok(mut tree) = unit.entries_tree(None) else {
            continue;
        };
        let Ok(root) = tree.root() else { continue };
        f(&unit, root);
    }
}

/// The line of each instruction address, by code section.
#[derive(Debug, Default)]
pub struct LineTable {
    /// Per section: (offset, file name, line), sorted by offset; a row covers the addresses up
    /// to the next one.
    rows: HashMap<SecIdx, Vec<(u64, usize, u64)>>,
    files: Vec<String>,
}

impl LineTable {
    /// The object's line table, or `None` when it has none (no `-g`) or it cannot be read.
    pub fn read(obj: &Object) -> Option<LineTable> {
        let section = |name: &str| {
            obj.sections
                .iter()
                .enumerate()
                .find(|(_, s)| s.name == name)
                .map(|(i, s)| (SecIdx(i as u32), s))
        };
        let (_, line) = section(".debug_line")?;
        let line_relocs = reloc_map(obj, line);
        let empty = Relocs::default();
        let str_section = |name: &str| -> Reader {
            let data = section(name).map_or(&[][..], |(_, s)| s.data);
            RelocateReader::new(EndianSlice::new(data, LittleEndian), &empty)
        };
        let debug_line = gimli::DebugLine::from(RelocateReader::new(
            EndianSlice::new(line.data, LittleEndian),
            &line_relocs,
        ));
        let line_str = gimli::DebugLineStr::from(str_section(".debug_line_str"));
        let debug_str = gimli::DebugStr::from(str_section(".debug_str"));
        let program = debug_line
            .program(gimli::DebugLineOffset(0), 8, None, None)
            .ok()?;
        let mut table = LineTable::default();
        let mut names: HashMap<(u64, u64), usize> = HashMap::new();
        let mut rows = program.rows();
        while let Ok(Some((header, row))) = rows.next_row() {
            if row.end_sequence() {
                continue;
            }
            let (Some(line), address) = (row.line(), row.address()) else {
                continue;
            };
            let tag = address >> TAG;
            if tag == 0 {
                continue;
            }
            let sec = SecIdx((tag - 1) as u32);
            let file = match names.get(&(row.file_index(), 0)) {
                Some(&f) => f,
                None => {
                    let name = header
                        .file(row.file_index())
                        .and_then(|f| attr_string(f.path_name(), &line_str, &debug_str))
                        .unwrap_or_default();
                    table.files.push(name);
                    names.insert((row.file_index(), 0), table.files.len() - 1);
                    table.files.len() - 1
                }
            };
            table
                .rows
                .entry(sec)
                .or_default()
                .push((address & ((1 << TAG) - 1), file, line.get()));
        }
        for v in table.rows.values_mut() {
            // Stable: rows at one address keep their order (their "view").
            v.sort_by_key(|r| r.0);
        }
        Some(table)
    }

    /// The rows for addresses `[start, end)` of section `sec`, in order: (offset from
    /// `start`, file, line).
    pub fn rows_in(&self, sec: SecIdx, start: u64, end: u64) -> Vec<(u64, &str, u64)> {
        self.rows
            .get(&sec)
            .into_iter()
            .flatten()
            .filter(|r| (start..end).contains(&r.0))
            .map(|&(at, file, line)| (at - start, self.files[file].as_str(), line))
            .collect()
    }
}

fn attr_string(
    value: gimli::AttributeValue<Reader>,
    line_str: &gimli::DebugLineStr<Reader>,
    debug_str: &gimli::DebugStr<Reader>,
) -> Option<String> {
    use gimli::Reader as _;
    let r = match value {
        gimli::AttributeValue::String(r) => r,
        gimli::AttributeValue::DebugLineStrRef(o) => line_str.get_str(o).ok()?,
        gimli::AttributeValue::DebugStrRef(o) => debug_str.get_str(o).ok()?,
        _ => return None,
    };
    r.to_string_lossy().ok().map(|s| s.into_owned())
}

/// Where each unchanged line of the files a unified diff touches goes: from the diff's hunks.
/// Used to confirm that a moved line number is the shift the fix causes at that line.
#[derive(Clone, Debug, Default)]
pub struct LineMap {
    files: Vec<(Vec<String>, Vec<Hunk>)>,
}

#[derive(Clone, Debug)]
struct Hunk {
    old_start: u64,
    /// New line of each old line of the hunk (`None`: removed or changed).
    lines: Vec<Option<u64>>,
    /// new - old for the lines after the hunk.
    delta_after: i64,
}

impl LineMap {
    /// Reads the hunks of a unified diff (git or plain; paths as in its `+++` lines).
    pub fn from_unified_diff(text: &str) -> LineMap {
        let mut map = LineMap::default();
        let (mut old, mut new) = (0u64, 0u64);
        let mut in_hunk = false;
        for line in text.lines() {
            if let Some(path) = line.strip_prefix("+++ ") {
                let path = path.split('\t').next().unwrap_or("").trim();
                let parts = path.split('/').filter(|c| !c.is_empty() && *c != ".");
                map.files
                    .push((parts.map(str::to_string).collect(), Vec::new()));
                in_hunk = false;
                continue;
            }
            if line.starts_with("--- ") && !in_hunk {
                continue;
            }
            if let Some(rest) = line.strip_prefix("@@ -") {
                // "@@ -OLD[,N] +NEW[,M] @@"
                let mut tokens = rest.split_whitespace();
                let start = |t: Option<&str>| -> Option<u64> {
                    t?.trim_start_matches('+').split(',').next()?.parse().ok()
                };
                let (Some(o), Some(n)) = (start(tokens.next()), start(tokens.next())) else {
                    in_hunk = false;
                    continue;
                };
                old = o;
                new = n;
                if let Some((_, hunks)) = map.files.last_mut() {
                    hunks.push(Hunk {
                        old_start: old,
                        lines: Vec::new(),
                        delta_after: new as i64 - old as i64,
                    });
                }
                in_hunk = true;
                continue;
            }
            if !in_hunk {
                continue;
            }
            let Some((_, hunks)) = map.files.last_mut() else {
                continue;
            };
            let Some(h) = hunks.last_mut() else { continue };
            match line.as_bytes().first() {
                Some(b' ') | None => {
                    h.lines.push(Some(new));
                    old += 1;
                    new += 1;
                }
                Some(b'-') => {
                    h.lines.push(None);
                    old += 1;
                }
                Some(b'+') => new += 1,
                Some(b'\\') => {}
                _ => in_hunk = false,
            }
            h.delta_after = new as i64 - old as i64;
        }
        map
    }

    /// The new line of unchanged line `old` of `file` (a path as the compiler recorded it);
    /// `None` when the line was changed or removed, or the diff does not touch the file.
    pub fn map(&self, file: &str, old: u64) -> Option<u64> {
        let name: Vec<String> = file
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        let (_, hunks) = self.files.iter().find(|(parts, _)| {
            // The diff's path may carry a prefix (`a/`, `b/`); the compiler's may be longer
            // (absolute) or shorter: one must end with the other.
            (0..=usize::from(parts.len() > 1)).any(|drop| {
                let d = &parts[drop..];
                if d.len() <= name.len() {
                    name.ends_with(d)
                } else {
                    d.ends_with(&name[..])
                }
            })
        })?;
        let mut delta = 0i64;
        for h in hunks {
            if old < h.old_start {
                break;
            }
            let i = (old - h.old_start) as usize;
            if i < h.lines.len() {
                return h.lines[i];
            }
            delta = h.delta_after;
        }
        u64::try_from(old as i64 + delta).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "--- a/src/log.c\t2026-01-01\n+++ b/src/log.c\t2026-01-02\n\
@@ -1,3 +1,5 @@\n #include <stdio.h>\n+/* two\n+ lines */\n int a;\n int b;\n\
@@ -10,3 +12,2 @@\n int c;\n-int d;\n int e;\n";

    #[test]
    fn maps_unchanged_lines_through_hunks() {
        let m = LineMap::from_unified_diff(DIFF);
        assert_eq!(m.map("src/log.c", 1), Some(1));
        assert_eq!(m.map("src/log.c", 2), Some(4));
        assert_eq!(m.map("log.c", 5), Some(7), "between hunks: +2");
        assert_eq!(m.map("/build/pkg/src/log.c", 10), Some(12));
        assert_eq!(m.map("src/log.c", 11), None, "removed");
        assert_eq!(m.map("src/log.c", 12), Some(13));
        assert_eq!(m.map("src/log.c", 40), Some(41), "after the last hunk: +1");
        assert_eq!(m.map("src/other.c", 5), None, "not in the diff");
    }
}
