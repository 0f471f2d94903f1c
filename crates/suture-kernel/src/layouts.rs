//! The descriptor-table layouts the target tree's own headers declare.
//!
//! `suture_object::special` derives each table's entry layout from the objects (size,
//! `sh_entsize`, relocation pattern, matched against a catalogue of 4.18-6.12). Where the
//! kernel has a structure for a table, its headers are the authority, so the kernel pipeline
//! also compiles a probe unit against the tree (kbuild, the tree's compiler and flags, as an
//! external module object in a scratch directory: the tree is not written) holding `sizeof` and
//! `offsetof` of those structures, and refuses a unit whose tables fit another layout
//! ([`suture_object::special::disagreements`]). Decided per table:
//!
//! - `.altinstructions`: `struct alt_instr`: size, `repl_offset`, `replacementlen` (the
//!   fields suture reads).
//! - `__jump_table`: `struct jump_entry`: size (with `CONFIG_JUMP_LABEL`).
//! - `__ex_table`: `struct exception_table_entry`: size, and whether the third field is an
//!   address (`handler`, before 5.16) or a number (`data`: the kernel defines `EX_TYPE_DEFAULT`).
//! - `__bug_table`: `struct bug_entry`: size and, with `CONFIG_DEBUG_BUGVERBOSE`, `line` (the
//!   field the differ ignores).
//! - `.static_call_sites`: `struct static_call_site` (with `CONFIG_HAVE_STATIC_CALL_INLINE`).
//! - `.orc_unwind`: `struct orc_entry` (when the tree has `asm/orc_types.h`).
//! - From the objects only: `.parainstructions` (its structure left the headers with the table
//!   in 6.8, with no marker a probe could test; one absolute address per 16 bytes is
//!   unambiguous and no other field is interpreted), and the tables of one `s32` or `u64`
//!   address per entry (`.smp_locks`, `.return_sites`, `__mcount_loc`, ...: nothing to
//!   declare; objtool sets their `sh_entsize` in 6.x, which is checked).

use std::path::Path;
use std::process::{Command, Stdio};

use suture_object::special::Declared;

use crate::tree::{compile_failed, io, Error, Tree};

/// Marks the probe's array and its version.
const MAGIC: u64 = 0x5375_7475_7265_4c31;
/// Values after the magic and the count.
const VALUES: usize = 10;

const PROBE: &str = r#"/* suture: the descriptor-table layouts this kernel's headers declare */
#include <linux/types.h>
#include <linux/stddef.h>
#include <linux/bug.h>
#include <linux/jump_label.h>
#include <asm/alternative.h>
#include <asm/extable.h>
#if __has_include(<asm/extable_fixup_types.h>)
#include <asm/extable_fixup_types.h>
#endif
#if __has_include(<asm/orc_types.h>)
#include <asm/orc_types.h>
#define ORC_SIZE sizeof(struct orc_entry)
#else
#define ORC_SIZE 0
#endif
#ifdef CONFIG_HAVE_STATIC_CALL_INLINE
#include <linux/static_call_types.h>
#define SCS_SIZE sizeof(struct static_call_site)
#else
#define SCS_SIZE 0
#endif
#ifdef EX_TYPE_DEFAULT
#define EX_FIELDS 2
#else
#define EX_FIELDS 3
#endif
#ifdef CONFIG_DEBUG_BUGVERBOSE
#define BUG_LINE offsetof(struct bug_entry, line)
#else
#define BUG_LINE 0
#endif
#ifdef CONFIG_JUMP_LABEL
#define JUMP_SIZE sizeof(struct jump_entry)
#else
#define JUMP_SIZE 0
#endif
const unsigned long long suture_layouts[] = {
	0x5375747572654c31ULL, 10,
	sizeof(struct alt_instr), offsetof(struct alt_instr, repl_offset),
	offsetof(struct alt_instr, replacementlen),
	JUMP_SIZE,
	sizeof(struct exception_table_entry), EX_FIELDS,
	sizeof(struct bug_entry), BUG_LINE,
	SCS_SIZE, ORC_SIZE,
};
"#;

/// Compiles the probe against `tree` in `scratch` (created, left for the caller to remove)
/// and returns what the headers declare.
pub fn declared(tree: &Tree, scratch: &Path) -> Result<Vec<Declared>, Error> {
    std::fs::create_dir_all(scratch).map_err(io(format!("creating {}", scratch.display())))?;
    let write = |name: &str, text: &str| {
        let p = scratch.join(name);
        std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))
    };
    write("suture_layouts.c", PROBE)?;
    write("Kbuild", "obj-m := suture_layouts.o\n")?;
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&tree.dir)
        .arg(format!("M={}", scratch.display()))
        .arg(format!("CC={}", tree.cc))
        .arg("suture_layouts.o")
        .stdin(Stdio::null())
        .output()
        .map_err(io("running make"))?;
    if !out.status.success() {
        return Err(compile_failed(
            "the layout probe (struct alt_instr, jump_entry, ...)",
            &out,
        ));
    }
    let path = scratch.join("suture_layouts.o");
    let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    let values = probe_values(&bytes).ok_or_else(|| Error::Io {
        what: format!("{} holds no layout values", path.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    })?;
    Ok(from_values(&values))
}

/// The values of the probe object's `suture_layouts` array, checked.
fn probe_values(bytes: &[u8]) -> Option<Vec<u64>> {
    let obj = suture_object::Object::parse(bytes).ok()?;
    let sym = obj.symbols.iter().find(|s| s.name == "suture_layouts")?;
    let sec = obj.section(sym.section()?);
    let data = sec.bytes(sym.value, sym.value + sym.size);
    let values: Vec<u64> = data
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    (values.len() == VALUES + 2 && values[0] == MAGIC && values[1] == VALUES as u64)
        .then(|| values[2..].to_vec())
}

/// The declarations the probe's values make (a zero size: not declared).
fn from_values(v: &[u64]) -> Vec<Declared> {
    let nonzero = |x: u64| (x != 0).then_some(x);
    let mut out = vec![Declared {
        name: ".altinstructions",
        source: "struct alt_instr",
        entry: v[0],
        repl: Some((v[1], v[2])),
        ..Default::default()
    }];
    if v[3] != 0 {
        out.push(Declared {
            name: "__jump_table",
            source: "struct jump_entry",
            entry: v[3],
            ..Default::default()
        });
    }
    out.push(Declared {
        name: "__ex_table",
        source: "struct exception_table_entry",
        entry: v[4],
        fields: Some(v[5] as usize),
        ..Default::default()
    });
    out.push(Declared {
        name: "__bug_table",
        source: "struct bug_entry",
        entry: v[6],
        line: nonzero(v[7]),
        ..Default::default()
    });
    if v[8] != 0 {
        out.push(Declared {
            name: ".static_call_sites",
            source: "struct static_call_site",
            entry: v[8],
            ..Default::default()
        });
    }
    if v[9] != 0 {
        out.push(Declared {
            name: ".orc_unwind_ip",
            source: "struct orc_entry",
            entry: 4,
            parallel: Some(v[9]),
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_6_12_declare_14_byte_alternatives_and_data_exception_entries() {
        let d = from_values(&[14, 4, 13, 16, 12, 2, 12, 8, 8, 6]);
        let alt = d.iter().find(|d| d.name == ".altinstructions").unwrap();
        assert_eq!((alt.entry, alt.repl), (14, Some((4, 13))));
        let ex = d.iter().find(|d| d.name == "__ex_table").unwrap();
        assert_eq!((ex.entry, ex.fields), (12, Some(2)));
        let bug = d.iter().find(|d| d.name == "__bug_table").unwrap();
        assert_eq!(bug.line, Some(8));
        let orc = d.iter().find(|d| d.name == ".orc_unwind_ip").unwrap();
        assert_eq!(orc.parallel, Some(6));
    }

    #[test]
    fn options_that_are_off_declare_nothing() {
        // No jump labels, no static calls, no ORC, no verbose bug entries.
        let d = from_values(&[12, 4, 11, 0, 12, 3, 8, 0, 0, 0]);
        let names: Vec<&str> = d.iter().map(|d| d.name).collect();
        assert_eq!(names, [".altinstructions", "__ex_table", "__bug_table"]);
        assert_eq!(d[2].line, None);
    }

    #[test]
    fn a_probe_object_without_the_array_gives_nothing() {
        assert!(probe_values(b"not an object").is_none());
    }
}
