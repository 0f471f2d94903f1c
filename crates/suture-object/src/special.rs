//! Descriptor tables: sections without symbols whose fixed-size entries describe places in code
//! (the Linux kernel's jump labels, bug and exception tables, alternatives, ORC unwind data,
//! ftrace call sites, ...).
//!
//! An entry belongs to the function its *anchor* field points into (the first field of every
//! table here). The differ compares the entries of correlated functions, so a function whose
//! bytes are identical but whose jump label now tests another key is a change; the emitter
//! carries the entries of included functions into the patch object, split per function, with
//! their relocations rewritten (the anchor and anything else inside included code point at the
//! patch's copy).
//!
//! Layouts are those of Linux 6.1 on x86-64 (checked against `arch/x86/include/asm/*.h` of
//! Debian's 6.1.192 and objects built with gcc-12 and objtool):
//!
//! | section | entry | fields |
//! |---|---|---|
//! | `__bug_table` | 12 | `s32 addr, s32 file; u16 line, flags` (line ignored when comparing) |
//! | `__ex_table` | 12 | `s32 insn, s32 fixup, s32 data` |
//! | `__jump_table` | 16 | `s32 code, s32 target; s64 key` |
//! | `.altinstructions` | 12 | `s32 instr, s32 repl; u16 cpuid; u8 instrlen, repllen` |
//! | `.parainstructions` | 16 | `u64 instr; u8 type, len` |
//! | `.static_call_sites` | 8 | `s32 addr, s32 key` (compared, never carried: see below) |
//! | `.retpoline_sites`, `.return_sites`, `.smp_locks`, `.ibt_endbr_seal`, `.call_sites` | 4 | `s32 addr` |
//! | `.orc_unwind_ip` + `.orc_unwind` | 4 + 6 | parallel arrays: `s32 ip` / `struct orc_entry` |
//! | `__mcount_loc`, `__patchable_function_entries` | 8 | `u64 addr` |
//!
//! `.altinstructions` entries own the bytes of `.altinstr_replacement` their `repl` field points
//! at (`repllen` bytes), which are compared and carried with them.
//!
//! `.static_call_sites` entries are not carried: without its site entry a static call keeps
//! calling through its trampoline, which always jumps to the current target, so dropping the
//! entry is correct (and avoids key references that a module loader would have to resolve
//! before any livepatch relocation is applied).

use crate::elf::{Object, SecIdx};
use crate::units::{Target, UnitId, UnitKind, Units};

/// A descriptor table this crate understands.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// Size of one entry in bytes.
    pub entry: u64,
    /// Byte range of each entry that is not compared (the `__LINE__` of a `WARN`/`BUG`).
    pub ignore: Option<(u64, u64)>,
    /// Whether the emitter copies the entries of included functions.
    pub carry: bool,
    /// The parallel table (same entry index) and its entry size.
    pub parallel: Option<(&'static str, u64)>,
}

const fn table(name: &'static str, entry: u64) -> Table {
    Table {
        name,
        entry,
        ignore: None,
        carry: true,
        parallel: None,
    }
}

/// Every descriptor table, in the order the emitter writes them.
pub static TABLES: &[Table] = &[
    Table {
        ignore: Some((8, 10)),
        ..table("__bug_table", 12)
    },
    table("__ex_table", 12),
    table("__jump_table", 16),
    table(ALTINSTRUCTIONS, 12),
    table(".parainstructions", 16),
    Table {
        carry: false,
        ..table(".static_call_sites", 8)
    },
    table(".retpoline_sites", 4),
    table(".return_sites", 4),
    table(".smp_locks", 4),
    table(".ibt_endbr_seal", 4),
    table(".call_sites", 4),
    Table {
        parallel: Some((ORC_UNWIND, 6)),
        ..table(".orc_unwind_ip", 4)
    },
    table("__mcount_loc", 8),
    table("__patchable_function_entries", 8),
];

pub const ALTINSTRUCTIONS: &str = ".altinstructions";
pub const ALTINSTR_REPLACEMENT: &str = ".altinstr_replacement";
pub const ORC_UNWIND: &str = ".orc_unwind";
/// Offset of the `repl` field and of `repllen` in an `.altinstructions` entry.
pub const ALT_REPL: u64 = 4;
pub const ALT_REPLLEN: u64 = 11;

/// The table a section name denotes, if any.
pub fn table_of(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// True for sections whose contents are described by (or are part of) a descriptor table:
/// relocations in them are plain `S + A` values, never instruction operands.
pub fn is_descriptor_section(name: &str) -> bool {
    table_of(name).is_some() || name == ORC_UNWIND
}

/// One entry of a descriptor table.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub table: &'static Table,
    pub sec: SecIdx,
    /// Index of the entry in its section.
    pub index: u64,
    /// Offset of the anchor target relative to the owning unit's start.
    pub rel: i64,
}

impl Entry {
    pub fn start(&self) -> u64 {
        self.index * self.table.entry
    }
    pub fn end(&self) -> u64 {
        self.start() + self.table.entry
    }
}

/// The section of `obj` named `name`, if there is exactly one.
pub fn section_named(obj: &Object, name: &str) -> Option<SecIdx> {
    let mut found = obj
        .sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == name && !s.is_nobits());
    let (i, _) = found.next()?;
    found.next().is_none().then_some(SecIdx(i as u32))
}

/// The descriptor entries of every function unit, in table order then entry order.
/// Entries whose anchor is not inside a function (replacement code, unnamed code) belong to no
/// unit and are left out.
pub fn entries_by_unit(u: &Units) -> Vec<Vec<Entry>> {
    let mut out = vec![Vec::new(); u.units.len()];
    for t in TABLES {
        let Some(sec) = section_named(u.obj, t.name) else {
            continue;
        };
        let section = u.obj.section(sec);
        if section.size % t.entry != 0 {
            continue;
        }
        for (r, target) in u.section_relocs(sec, 0, section.size) {
            if r.offset % t.entry != 0 {
                continue;
            }
            if let Target::Unit { unit, rel, .. } = target {
                if u.unit(unit).kind == UnitKind::Func {
                    out[unit.0 as usize].push(Entry {
                        table: t,
                        sec,
                        index: r.offset / t.entry,
                        rel,
                    });
                }
            }
        }
    }
    out
}

/// Tables whose size is not a whole number of entries: their layout is not the one this crate
/// knows (another kernel version or architecture), so nothing in them can be trusted.
pub fn malformed_tables(obj: &Object) -> Vec<&'static str> {
    TABLES
        .iter()
        .filter(|t| section_named(obj, t.name).is_some_and(|s| obj.section(s).size % t.entry != 0))
        .map(|t| t.name)
        .collect()
}

/// Sections whose contents are not descriptor tables even though they may point inside
/// functions: data and read-only data (jump tables are copied with the code that uses them),
/// start-up data, discarded sections, unwind information, alternative replacement code.
fn never_a_table(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        ".rodata",
        ".data",
        ".bss",
        ".init",
        ".exit",
        ".discard",
        ".eh_frame",
        ".debug",
        ".altinstr_",
        ".note",
        ".gcc_except_table",
        ".tbss",
        ".tdata",
        ".ctors",
        ".dtors",
        ".init_array",
        ".fini_array",
        ".preinit_array",
        ".text",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || name == ORC_UNWIND || table_of(name).is_some()
}

/// Symbol-less, allocated, non-code sections this crate does not know whose relocations point
/// *inside* (not at the entry of) a function `selected` accepts: `(section name, function)`.
pub fn unknown_tables_into(u: &Units, selected: impl Fn(UnitId) -> bool) -> Vec<(String, UnitId)> {
    let mut out = Vec::new();
    for (i, section) in u.obj.sections.iter().enumerate() {
        let sec = SecIdx(i as u32);
        if !section.is_alloc()
            || section.is_exec()
            || !u.by_section[i].is_empty()
            || never_a_table(&section.name)
        {
            continue;
        }
        for (_, t) in u.section_relocs(sec, 0, section.size) {
            if let Target::Unit {
                unit, entry: false, ..
            } = t
            {
                if u.unit(unit).kind == UnitKind::Func
                    && selected(unit)
                    && !out.iter().any(|(_, f)| *f == unit)
                {
                    out.push((section.name.clone(), unit));
                }
            }
        }
    }
    out
}

/// The `.altinstr_replacement` range `[start, end)` an `.altinstructions` entry owns.
pub fn replacement(u: &Units, e: &Entry) -> Option<(SecIdx, u64, u64)> {
    if e.table.name != ALTINSTRUCTIONS {
        return None;
    }
    let section = u.obj.section(e.sec);
    let len = u64::from(*section.data.get((e.start() + ALT_REPLLEN) as usize)?);
    let (_, t) = u
        .section_relocs(e.sec, e.start() + ALT_REPL, e.start() + ALT_REPL + 1)
        .next()?;
    let (sec, at) = match t {
        Target::Anon { sec, offset, .. } => (sec, offset),
        _ => return None,
    };
    let size = u.obj.section(sec).size;
    let at = u64::try_from(at).ok()?;
    (at.checked_add(len)? <= size).then_some((sec, at, at + len))
}
