//! Descriptor tables: sections without symbols whose fixed-size entries describe places in code
//! (the Linux kernel's jump labels, bug and exception tables, alternatives, ORC unwind data,
//! ftrace call sites, ...).
//!
//! An entry belongs to the function its *anchor* field points into (its first address field,
//! at offset 0 in every layout here). The differ compares the entries of correlated functions, so a function whose
//! bytes are identical but whose jump label now tests another key is a change; the emitter
//! carries the entries of included functions into the patch object, split per function, with
//! their relocations rewritten (the anchor and anything else inside included code point at the
//! patch's copy).
//!
//! # Layouts per kernel version
//!
//! Entry layouts change between kernel versions (struct `alt_instr` grew from 12 to 14 bytes in
//! 6.3, jump labels became relative in 5.0, exception-table entries lost their handler pointer
//! in 5.16, `.parainstructions` went away in 6.8). They are not fixed here: every table's layout
//! is derived from the object itself ([`resolve`]) and checked against a catalogue of the
//! x86-64 layouts of Linux 4.18 to 6.12 ([`CATALOGUE`], from each version's
//! `arch/x86/include/asm/*.h` and objtool). A layout is the entry size, the fields the kernel
//! fills with addresses (their offsets and relocation kinds) and the one among them that points
//! at the code the entry belongs to (the *anchor*), plus what the entry owns elsewhere (an
//! alternative's replacement bytes, the parallel `.orc_unwind` entry).
//!
//! An object's table has a catalogue layout when, and only when:
//! - its size is a whole number of entries, and `sh_entsize`, where the toolchain sets it
//!   (objtool does for its own sections since 6.x), is that entry size;
//! - its relocations are exactly the layout's address fields, in every entry, with the
//!   relocation kind of each field (32-bit PC-relative, 64-bit PC-relative or 64-bit absolute),
//!   and nothing else is relocated. This is the relocation pattern of the objects themselves:
//!   its period is the entry size (a pattern check alone cannot tell a 12-byte entry of three
//!   relative pointers from three 4-byte entries, the catalogue can). Two catalogue layouts of
//!   one table never accept the same section: their sizes, relocation kinds or numbers of
//!   address fields differ, and every address field must be relocated in every entry.
//!
//! A table that matches no layout, or layouts that differ between the original and the patched
//! object, is refused naming the section and what did not match ([`refusals`]); nothing in such
//! a table is compared or carried. Tables this crate does not know at all are refused per
//! function by [`unknown_tables_into`] when they point inside a changed function.
//!
//! | section | entry | fields (address fields relocated) | kernels |
//! |---|---|---|---|
//! | `__bug_table` | 12 | `s32 addr, s32 file; u16 line, flags` (line ignored when comparing) | 4.18–6.12, `DEBUG_BUGVERBOSE` |
//! | `__ex_table` | 12 | `s32 insn, s32 fixup, s32 data` | 5.16–6.12 |
//! | `__ex_table` | 12 | `s32 insn, s32 fixup, s32 handler` | 4.18–5.15 |
//! | `__jump_table` | 16 | `s32 code, s32 target; s64 key` (PC-relative) | 5.0–6.12 |
//! | `__jump_table` | 24 | `u64 code, target, key` (absolute) | 4.18–4.20 |
//! | `.altinstructions` | 14 | `s32 instr, s32 repl; u32 ft_flags; u8 instrlen, repllen` | 6.3–6.12 |
//! | `.altinstructions` | 12 | `s32 instr, s32 repl; u16 cpuid; u8 instrlen, repllen` | 5.13–6.2, and 5.10.y (5.10.262 has it) |
//! | `.altinstructions` | 13 | `s32 instr, s32 repl; u16 cpuid; u8 instrlen, repllen, padlen` | 4.18 until `padlen` was dropped (5.13, later in 5.10.y) |
//! | `.parainstructions` | 16 | `u64 instr; u8 type, len; u16 clobbers` (padding after, which 4.18–5.x leave out after an object's last entry) | 4.18–6.7 |
//! | `.static_call_sites` | 8 | `s32 addr, s32 key` (compared, never carried: see below) | 5.10–6.12 |
//! | `.retpoline_sites`, `.return_sites`, `.smp_locks`, `.ibt_endbr_seal`, `.call_sites` | 4 | `s32 addr` | each since it exists |
//! | `.orc_unwind_ip` + `.orc_unwind` | 4 + 6 | parallel arrays: `s32 ip` / `struct orc_entry` | 4.18–6.12 |
//! | `__mcount_loc`, `__patchable_function_entries` | 8 | `u64 addr` | 4.18–6.12 |
//!
//! Checked on real objects (Debian's configurations, kbuild's flags, gcc-12): 6.1 (Debian 12),
//! 6.12 (Debian 13), 5.10 (Debian 11); the absolute jump entries and 13-byte alternatives of the
//! 4.x kernels come from their headers only (no 4.x archive was reachable to build them). The
//! kernel pipeline also checks the layouts found against the target tree's own headers
//! (`suture_kernel::layouts`).
//!
//! Not code tables, so not here: `.printk_index` (pointers `_entry_ptr.N` to `struct pi_entry`
//! objects `_entry.N`, both with symbols, pointing at strings, not code: the units layer
//! handles them as data, and a fix's new `printk` site brings its entry and pointer as new
//! data, still in `.printk_index`, where the module loader finds it for the patch module; checked on 6.12
//! built with `CONFIG_PRINTK_INDEX`) and `__tracepoints_ptrs` (`s32` relative pointers to the
//! `struct tracepoint` objects `__tracepoint_<event>` in `__tracepoints`, data with symbols;
//! checked on 6.12's `drivers/hwmon/hwmon.c`, which defines its events).
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

/// How an address field is relocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// `s32` relative to the field (`R_X86_64_PC32`, `R_X86_64_PLT32`).
    Rel32,
    /// `s64` relative to the field (`R_X86_64_PC64`).
    Rel64,
    /// `u64` absolute address (`R_X86_64_64`).
    Abs64,
}

impl FieldKind {
    fn accepts(self, r_type: u32) -> bool {
        match self {
            FieldKind::Rel32 => r_type == 2 || r_type == 4,
            FieldKind::Rel64 => r_type == 24,
            FieldKind::Abs64 => r_type == 1,
        }
    }
}

/// The layout of one descriptor table in a range of kernel versions.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// Size of one entry in bytes (the stride of the array the kernel walks).
    pub entry: u64,
    /// Bytes of an entry that hold fields; the rest is alignment padding, which the last entry
    /// of an object may lack (5.10's `.parainstructions` aligns before each entry, not after).
    pub used: u64,
    /// The address fields (offset in the entry, kind), relocated in every entry. The first is
    /// the anchor: it points into the code the entry belongs to.
    pub fields: &'static [(u64, FieldKind)],
    /// Byte range of each entry that is not compared (the `__LINE__` of a `WARN`/`BUG`).
    pub ignore: Option<(u64, u64)>,
    /// Whether the emitter copies the entries of included functions.
    pub carry: bool,
    /// The parallel table (same entry index) and its entry size.
    pub parallel: Option<(&'static str, u64)>,
    /// For alternatives: offsets of the field pointing at the replacement code and of its
    /// length byte.
    pub repl: Option<(u64, u64)>,
    /// The kernels whose headers give this layout (for messages).
    pub kernels: &'static str,
}

impl Table {
    /// Offset of the anchor field.
    pub fn anchor(&self) -> u64 {
        self.fields[0].0
    }
}

use FieldKind::{Abs64, Rel32, Rel64};

const fn table(name: &'static str, entry: u64, fields: &'static [(u64, FieldKind)]) -> Table {
    Table {
        name,
        entry,
        used: entry,
        fields,
        ignore: None,
        carry: true,
        parallel: None,
        repl: None,
        kernels: "4.18-6.12",
    }
}

const ADDR32: &[(u64, FieldKind)] = &[(0, Rel32)];
const ALT: &[(u64, FieldKind)] = &[(0, Rel32), (4, Rel32)];

/// Every descriptor-table layout this crate knows, tables in the order the emitter writes them.
pub static CATALOGUE: &[Table] = &[
    Table {
        ignore: Some((8, 10)),
        kernels: "4.18-6.12 with CONFIG_DEBUG_BUGVERBOSE",
        ..table("__bug_table", 12, &[(0, Rel32), (4, Rel32)])
    },
    Table {
        kernels: "5.16-6.12",
        ..table("__ex_table", 12, &[(0, Rel32), (4, Rel32)])
    },
    Table {
        kernels: "4.18-5.15 (handler pointer)",
        ..table("__ex_table", 12, &[(0, Rel32), (4, Rel32), (8, Rel32)])
    },
    Table {
        kernels: "5.0-6.12 (relative)",
        ..table("__jump_table", 16, &[(0, Rel32), (4, Rel32), (8, Rel64)])
    },
    Table {
        kernels: "4.18-4.20 (absolute)",
        ..table("__jump_table", 24, &[(0, Abs64), (8, Abs64), (16, Abs64)])
    },
    Table {
        repl: Some((4, 13)),
        kernels: "6.3-6.12 (u32 ft_flags)",
        ..table(ALTINSTRUCTIONS, 14, ALT)
    },
    Table {
        repl: Some((4, 11)),
        kernels: "5.13-6.2 and 5.10.y (u16 cpuid)",
        ..table(ALTINSTRUCTIONS, 12, ALT)
    },
    Table {
        repl: Some((4, 11)),
        kernels: "4.18 until padlen was dropped (u8 padlen)",
        ..table(ALTINSTRUCTIONS, 13, ALT)
    },
    Table {
        used: 12,
        kernels: "4.18-6.7",
        ..table(".parainstructions", 16, &[(0, Abs64)])
    },
    Table {
        carry: false,
        kernels: "5.10-6.12",
        ..table(".static_call_sites", 8, ALT)
    },
    table(".retpoline_sites", 4, ADDR32),
    table(".return_sites", 4, ADDR32),
    table(".smp_locks", 4, ADDR32),
    table(".ibt_endbr_seal", 4, ADDR32),
    table(".call_sites", 4, ADDR32),
    Table {
        parallel: Some((ORC_UNWIND, 6)),
        ..table(".orc_unwind_ip", 4, ADDR32)
    },
    table("__mcount_loc", 8, &[(0, Abs64)]),
    table("__patchable_function_entries", 8, &[(0, Abs64)]),
];

pub const ALTINSTRUCTIONS: &str = ".altinstructions";
pub const ALTINSTR_REPLACEMENT: &str = ".altinstr_replacement";
pub const ORC_UNWIND: &str = ".orc_unwind";

/// True when `name` is a descriptor table of the catalogue (whatever its layout).
pub fn is_table(name: &str) -> bool {
    CATALOGUE.iter().any(|t| t.name == name)
}

/// The table names of the catalogue, each once, in catalogue order.
pub fn table_names() -> impl Iterator<Item = &'static str> {
    CATALOGUE
        .iter()
        .enumerate()
        .filter(|(i, t)| !CATALOGUE[..*i].iter().any(|u| u.name == t.name))
        .map(|(_, t)| t.name)
}

/// Why `t` is not the layout of `obj`'s section `sec`, or `None` when it is.
fn mismatch(obj: &Object, sec: SecIdx, t: &Table) -> Option<String> {
    let s = obj.section(sec);
    if s.size % t.entry != 0 && s.size % t.entry != t.used {
        return Some(format!(
            "{} bytes are not a whole number of {}-byte entries",
            s.size, t.entry
        ));
    }
    if s.entsize != 0 && s.entsize != t.entry {
        return Some(format!("sh_entsize is {}, not {}", s.entsize, t.entry));
    }
    let mut seen = vec![0u8; s.size.div_ceil(t.entry) as usize * t.fields.len()];
    for r in s.relocs.iter().filter(|r| r.r_type != 0) {
        let (index, at) = (r.offset / t.entry, r.offset % t.entry);
        let Some(f) = t.fields.iter().position(|(o, _)| *o == at) else {
            return Some(format!(
                "a relocation at +{:#x} lies in no address field (entry offset {at})",
                r.offset
            ));
        };
        if !t.fields[f].1.accepts(r.r_type) {
            return Some(format!(
                "the relocation at +{:#x} has type {}, not a {:?} field's",
                r.offset, r.r_type, t.fields[f].1
            ));
        }
        seen[index as usize * t.fields.len() + f] += 1;
    }
    if let Some(i) = seen.iter().position(|&n| n != 1) {
        let (index, f) = (i / t.fields.len(), i % t.fields.len());
        return Some(format!(
            "entry {index} has {} relocations at offset {} instead of one",
            seen[i], t.fields[f].0
        ));
    }
    None
}

/// The layout of every catalogue table `obj` holds (in catalogue order), and for each table
/// none fits, why: `(name, reason)`.
pub fn resolve(obj: &Object) -> (Vec<&'static Table>, Vec<(&'static str, String)>) {
    let mut found = Vec::new();
    let mut refused = Vec::new();
    for name in table_names() {
        let Some(sec) = section_named(obj, name) else {
            continue;
        };
        if obj.section(sec).size == 0 {
            continue;
        }
        let candidates: Vec<&'static Table> = CATALOGUE.iter().filter(|t| t.name == name).collect();
        let fits: Vec<&'static Table> = candidates
            .iter()
            .copied()
            .filter(|t| mismatch(obj, sec, t).is_none())
            .collect();
        match fits.as_slice() {
            [t] => found.push(*t),
            [] => {
                let why: Vec<String> = candidates
                    .iter()
                    .map(|t| {
                        format!(
                            "not the {}-byte layout of {}: {}",
                            t.entry,
                            t.kernels,
                            mismatch(obj, sec, t).unwrap_or_default()
                        )
                    })
                    .collect();
                refused.push((name, why.join("; ")));
            }
            many => refused.push((
                name,
                format!(
                    "fits {} layouts suture knows ({}), so which one is meant is not known",
                    many.len(),
                    many.iter()
                        .map(|t| t.kernels)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
    (found, refused)
}

/// Why the descriptor tables of two objects cannot be trusted: a table of either object with no
/// known layout, or one table whose layouts differ between them (one kernel cannot have both).
pub fn refusals(orig: &Object, patched: &Object) -> Vec<String> {
    let (a, ra) = resolve(orig);
    let (b, rb) = resolve(patched);
    let mut out = Vec::new();
    for (side, refused) in [("original", ra), ("patched", rb)] {
        for (name, why) in refused {
            out.push(format!(
                "{name} of the {side} object matches no entry layout suture knows for x86-64 \
                 Linux 4.18-6.12 ({why}); its entries cannot be compared or carried"
            ));
        }
    }
    for x in &a {
        if let Some(y) = b
            .iter()
            .find(|y| y.name == x.name && !std::ptr::eq(*x, **y))
        {
            out.push(format!(
                "{} has the {}-byte layout of {} in the original object but the {}-byte \
                 layout of {} in the patched one: they are not builds of one kernel",
                x.name, x.entry, x.kernels, y.entry, y.kernels
            ));
        }
    }
    out
}

/// True for sections whose contents are described by (or are part of) a descriptor table:
/// relocations in them are plain `S + A` values, never instruction operands.
pub fn is_descriptor_section(name: &str) -> bool {
    is_table(name) || name == ORC_UNWIND
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
    /// End of the entry's fields (its padding is neither compared nor copied).
    pub fn end(&self) -> u64 {
        self.start() + self.table.used
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

/// The descriptor entries of every function unit, in table order then entry order, for the
/// tables whose layout [`resolve`] found (the others are refused by [`refusals`]).
/// Entries whose anchor is not inside a function (replacement code, unnamed code) belong to no
/// unit and are left out.
pub fn entries_by_unit(u: &Units) -> Vec<Vec<Entry>> {
    let mut out = vec![Vec::new(); u.units.len()];
    for t in resolve(u.obj).0 {
        let Some(sec) = section_named(u.obj, t.name) else {
            continue;
        };
        let section = u.obj.section(sec);
        for (r, target) in u.section_relocs(sec, 0, section.size) {
            if r.offset % t.entry != t.anchor() {
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
    PREFIXES.iter().any(|p| name.starts_with(p)) || name == ORC_UNWIND || is_table(name)
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
    let (repl, repllen) = e.table.repl?;
    let section = u.obj.section(e.sec);
    let len = u64::from(*section.data.get((e.start() + repllen) as usize)?);
    let (_, t) = u
        .section_relocs(e.sec, e.start() + repl, e.start() + repl + 1)
        .next()?;
    let (sec, at) = match t {
        Target::Anon { sec, offset, .. } => (sec, offset),
        _ => return None,
    };
    let size = u.obj.section(sec).size;
    let at = u64::try_from(at).ok()?;
    (at.checked_add(len)? <= size).then_some((sec, at, at + len))
}

/// What a kernel's own headers declare about one table's entries (`sizeof` and `offsetof` of
/// the structure the kernel walks it with), to check a layout derived from an object against.
/// `None` fields are not declared (the headers do not say, or the option is off).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    /// The section.
    pub name: &'static str,
    /// The structure, for messages (`struct alt_instr`).
    pub source: &'static str,
    pub entry: u64,
    /// Offset of an alternative's replacement field and of its length byte.
    pub repl: Option<(u64, u64)>,
    /// Offset of a bug entry's `line`.
    pub line: Option<u64>,
    /// How many fields are addresses (an exception entry's third field is a handler pointer
    /// before 5.16, a number since).
    pub fields: Option<usize>,
    /// Entry size of the parallel table (`struct orc_entry`).
    pub parallel: Option<u64>,
}

/// Where the layouts derived from `obj` disagree with what the target kernel's headers declare:
/// one message per table, naming it, the layout its entries fit and what the headers say.
pub fn disagreements(obj: &Object, declared: &[Declared]) -> Vec<String> {
    let mut out = Vec::new();
    for t in resolve(obj).0 {
        for d in declared.iter().filter(|d| d.name == t.name) {
            let mut differ = Vec::new();
            if d.entry != t.entry {
                differ.push(format!("{} bytes per entry", d.entry));
            }
            if let Some((repl, len)) = d.repl {
                if t.repl != Some((repl, len)) {
                    differ.push(format!(
                        "the replacement at offset {repl} and its length at {len}"
                    ));
                }
            }
            if let Some(line) = d.line {
                if t.ignore.map(|(lo, _)| lo) != Some(line) {
                    differ.push(format!("the line number at offset {line}"));
                }
            }
            if let Some(n) = d.fields {
                if t.fields.len() != n {
                    differ.push(format!("{n} address fields"));
                }
            }
            if let Some(size) = d.parallel {
                if t.parallel.map(|(_, s)| s) != Some(size) {
                    differ.push(format!("{size}-byte parallel entries"));
                }
            }
            if !differ.is_empty() {
                out.push(format!(
                    "{}: the entries fit the {}-byte layout of {}, but the target kernel's {} \
                     has {}; the entries cannot be read either way",
                    t.name,
                    t.entry,
                    t.kernels,
                    d.source,
                    differ.join(", ")
                ));
            }
        }
    }
    out
}
