//! `suture-object`: the relocatable-ELF layer of suture.
//!
//! Reads x86-64 relocatable objects ([`elf`]), splits them into functions and data objects with
//! resolved relocation targets ([`units`]), decides what changed between an original and a
//! patched build of one translation unit ([`diff`]), and writes the patch object holding only
//! what must be loaded ([`emit`]).
//!
//! Invariants: no I/O (byte slices in, byte vectors out); no `unsafe`; deterministic output for
//! the same inputs; malformed input yields an [`Error`], never a panic or an allocation larger
//! than a small multiple of the input.

pub mod diff;
pub mod elf;
pub mod emit;
mod error;
pub mod layout;
pub mod lines;
pub mod names;
pub mod osr;
pub mod report;
pub mod special;
pub mod units;
pub mod x86;

pub use diff::{Diff, Options};
pub use elf::Object;
pub use error::{Error, Result};
pub use report::{Report, Status};

/// Diffs two parsed builds of the same translation unit.
///
/// Objects compiled from differently named files (`orig.c` and `fixed.c`) are accepted with a
/// note: the running unit keeps the original's name, which is what the patch refers to.
/// Link-time-optimisation objects are diffed (fat ones contain code) but always reported
/// unsupported.
pub fn analyze<'o, 'a>(orig: &'o Object<'a>, patched: &'o Object<'a>) -> Result<Diff<'o, 'a>> {
    analyze_with(orig, patched, diff::Options::default())
}

/// [`analyze`] with options. By default a function whose only changes are source line
/// numbers (`__LINE__` in a logging or assert call after the fix moved lines; recognised from
/// the objects' DWARF line tables, so only with `-g`) is left out of the patch, with a note.
pub fn analyze_with<'o, 'a>(
    orig: &'o Object<'a>,
    patched: &'o Object<'a>,
    options: diff::Options,
) -> Result<Diff<'o, 'a>> {
    let mut d = diff::diff_with(orig, patched, options.clone());
    if options.osr {
        for (i, table) in osr::tables(&d) {
            d.report.changed_functions[i].osr = Some(table);
        }
    }
    for s in &d.report.line_shifts {
        let moved: Vec<String> = s.lines.iter().map(|(a, b)| format!("{a}->{b}")).collect();
        d.report.notes.push(format!(
            "{}: only source line numbers differ ({}: line {}), as when a fix moves the lines \
             below it: {}",
            s.function,
            s.file,
            moved.join(", "),
            if s.included {
                "kept in the patch as asked"
            } else {
                "left out of the patch (--include-line-shifts keeps it)"
            }
        ));
    }
    if let (Some(a), Some(b)) = (&orig.source_file, &patched.source_file) {
        if a != b {
            d.report.notes.push(format!(
                "the original was compiled from {a:?} and the patched object from {b:?}; the \
                 patch refers to the running unit's statics under the original's name {a:?}"
            ));
        }
    }
    for (side, obj) in [("original", orig), ("patched", patched)] {
        if obj.is_lto() {
            d.report.unsupported.push(report::Unsupported {
                symbol: String::new(),
                kind: report::UnsupportedKind::Lto,
                reason: format!(
                    "the {side} object holds link-time-optimisation bytecode; code is only \
                     final after the link, so build without -flto"
                ),
            });
            d.report.status = Status::Unsupported;
        }
    }
    Ok(d)
}
