//! Data layouts a unit was compiled with, from its DWARF (`-g`), and what a fix changes in them.
//!
//! A live patch replaces code, never data the running program already holds: a struct or
//! union whose size or member offsets differ between the original and the patched build of a
//! unit (a header fix that adds a member, widens an array, reorders fields) would have the new
//! code read the old objects with the new layout. So would a global whose type changed size.
//! [`changes`] compares, for every named struct and union (and every typedef of an anonymous
//! one) defined at the top level of both objects' compile units, the byte size and the bit
//! offset and size of every member (members of anonymous struct/union members are flattened
//! into their container, at their absolute offset), and the type size of every top-level
//! variable (definitions and `extern` declarations). Types only one object defines are not
//! compared (a new type holds no running data; a type the fix stops using is not touched by
//! the patch). A member that keeps its offset and size but changes its type (`int` to
//! `unsigned int`) is a code change, not a layout change, and is left to the differ.

use std::collections::BTreeMap;

use crate::elf::Object;
use crate::lines::{debug_relocs, each_unit, load_dwarf, Reader, Relocs};
use crate::osr::type_size;

/// One member as laid out: name (dotted through named nested members is not needed: nested
/// named members are types of their own), bit offset from the start of the type, bit size.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    name: String,
    bit_offset: u64,
    bits: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    bytes: u64,
    members: Vec<Member>,
}

impl Layout {
    /// Same size, the same (offset, size) of every member in order, and every member name
    /// both have at the same place: the data looks the same (a member renamed in place is the
    /// code's business; two members that swap places are not).
    fn same_shape(&self, other: &Layout) -> bool {
        self.bytes == other.bytes
            && self.members.len() == other.members.len()
            && self
                .members
                .iter()
                .zip(&other.members)
                .all(|(a, b)| (a.bit_offset, a.bits) == (b.bit_offset, b.bits))
            && self.members.iter().all(|a| {
                other
                    .members
                    .iter()
                    .filter(|b| b.name == a.name)
                    .all(|b| (a.bit_offset, a.bits) == (b.bit_offset, b.bits))
            })
    }
}

/// The layouts of one object: types by name (`struct sock`, `union bpf_attr`, `typedef
/// foo_t`) and top-level variables by name with their type's size.
#[derive(Debug, Default)]
pub struct Layouts {
    types: BTreeMap<String, Vec<Layout>>,
    variables: BTreeMap<String, u64>,
}

/// A layout a fix changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutChange {
    /// `struct NAME`, `union NAME`, `typedef NAME` or `variable NAME`.
    pub what: String,
    /// The first member that moved, changed size, appeared or went (types only).
    pub member: Option<String>,
    /// For people: sizes and offsets before and after.
    pub reason: String,
}

type Dw<'a, 'r> = gimli::Dwarf<Reader<'a, 'r>>;
type DwUnit<'a, 'r> = gimli::Unit<Reader<'a, 'r>>;
type Die<'a, 'r> = gimli::DebuggingInformationEntry<Reader<'a, 'r>>;

impl Layouts {
    /// The layouts of an object; `None` when it has no DWARF.
    pub fn read(obj: &Object) -> Option<Layouts> {
        let (relocs, empty) = (debug_relocs(obj), Relocs::default());
        let dwarf = load_dwarf(obj, &relocs, &empty)?;
        let mut out = Layouts::default();
        each_unit(&dwarf, |unit, root| {
            let mut children = root.children();
            while let Ok(Some(child)) = children.next() {
                out.top_level(&dwarf, unit, child.entry());
            }
        });
        for v in out.types.values_mut() {
            v.dedup();
        }
        Some(out)
    }

    fn top_level<'a, 'r>(&mut self, dwarf: &Dw<'a, 'r>, unit: &DwUnit<'a, 'r>, e: &Die<'a, 'r>) {
        let tag = e.tag();
        let kind = match tag {
            gimli::DW_TAG_structure_type => "struct",
            gimli::DW_TAG_union_type => "union",
            gimli::DW_TAG_typedef => "typedef",
            gimli::DW_TAG_variable => {
                if let Some(name) = name_of(dwarf, unit, e) {
                    self.variables.insert(name, type_size(unit, e, 0));
                }
                return;
            }
            _ => return,
        };
        let Some(name) = name_of(dwarf, unit, e) else {
            return;
        };
        let (offset, entry) = if tag == gimli::DW_TAG_typedef {
            // Only typedefs of anonymous structs and unions: the others name a type that is
            // compared under its own name (or a scalar).
            let Some(gimli::AttributeValue::UnitRef(t)) = e.attr_value(gimli::DW_AT_type) else {
                return;
            };
            let Ok(te) = unit.entry(t) else { return };
            let anonymous = matches!(
                te.tag(),
                gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type
            ) && te.attr_value(gimli::DW_AT_name).is_none();
            if !anonymous {
                return;
            }
            (t, te)
        } else {
            (e.offset(), e.clone())
        };
        // A declaration (`struct sock;`) has no size: nothing to compare.
        let Some(bytes) = entry
            .attr_value(gimli::DW_AT_byte_size)
            .and_then(|v| v.udata_value())
        else {
            return;
        };
        let mut members = Vec::new();
        flatten(dwarf, unit, offset, 0, &mut members, 0);
        self.types
            .entry(format!("{kind} {name}"))
            .or_default()
            .push(Layout { bytes, members });
    }
}

fn name_of<'a, 'r>(dwarf: &Dw<'a, 'r>, unit: &DwUnit<'a, 'r>, e: &Die<'a, 'r>) -> Option<String> {
    use gimli::Reader as _;
    let v = e.attr_value(gimli::DW_AT_name)?;
    let s = dwarf.attr_string(unit, v).ok()?;
    s.to_string_lossy().ok().map(|c| c.into_owned())
}

/// The members of the struct or union at `offset`, at `base` bits from the outer type's start;
/// anonymous struct and union members are flattened.
fn flatten<'a, 'r>(
    dwarf: &Dw<'a, 'r>,
    unit: &DwUnit<'a, 'r>,
    offset: gimli::UnitOffset,
    base: u64,
    out: &mut Vec<Member>,
    depth: u32,
) {
    if depth > 8 {
        return;
    }
    let Ok(mut tree) = unit.entries_tree(Some(offset)) else {
        return;
    };
    let Ok(root) = tree.root() else { return };
    let mut children = root.children();
    while let Ok(Some(child)) = children.next() {
        let m = child.entry();
        if m.tag() != gimli::DW_TAG_member {
            continue;
        }
        let byte = m
            .attr_value(gimli::DW_AT_data_member_location)
            .and_then(|v| v.udata_value())
            .unwrap_or(0);
        let bit = m
            .attr_value(gimli::DW_AT_data_bit_offset)
            .and_then(|v| v.udata_value());
        let at = base + bit.unwrap_or(byte * 8);
        let bits = m
            .attr_value(gimli::DW_AT_bit_size)
            .and_then(|v| v.udata_value())
            .unwrap_or_else(|| type_size(unit, m, 0) * 8);
        let name = name_of(dwarf, unit, m);
        match name {
            Some(name) => out.push(Member {
                name,
                bit_offset: at,
                bits,
            }),
            None => {
                // An anonymous struct or union member: its members are the container's.
                match m.attr_value(gimli::DW_AT_type) {
                    Some(gimli::AttributeValue::UnitRef(t)) => {
                        flatten(dwarf, unit, t, at, out, depth + 1)
                    }
                    _ => out.push(Member {
                        name: "(anonymous)".into(),
                        bit_offset: at,
                        bits,
                    }),
                }
            }
        }
    }
}

fn bits_text(bits: u64) -> String {
    if bits % 8 == 0 {
        format!("{} byte(s)", bits / 8)
    } else {
        format!("{bits} bit(s)")
    }
}

fn at_text(bit: u64) -> String {
    if bit % 8 == 0 {
        format!("byte {}", bit / 8)
    } else {
        format!("bit {bit}")
    }
}

/// The first member difference between two layouts of one type, if any: (member, text).
fn member_difference(a: &Layout, b: &Layout) -> Option<(String, String)> {
    for m in &a.members {
        match b.members.iter().find(|n| n.name == m.name) {
            None => return Some((m.name.clone(), "is removed".into())),
            Some(n) if n.bit_offset != m.bit_offset => {
                let what = format!(
                    "moves from {} to {}",
                    at_text(m.bit_offset),
                    at_text(n.bit_offset)
                );
                return Some((m.name.clone(), what));
            }
            Some(n) if n.bits != m.bits => {
                let what = format!(
                    "changes size from {} to {}",
                    bits_text(m.bits),
                    bits_text(n.bits)
                );
                return Some((m.name.clone(), what));
            }
            Some(_) => {}
        }
    }
    b.members
        .iter()
        .find(|n| !a.members.iter().any(|m| m.name == n.name))
        .map(|n| {
            (
                n.name.clone(),
                format!("is added at {}", at_text(n.bit_offset)),
            )
        })
}

/// The layouts that differ between the original and the patched build of one unit.
pub fn changes(orig: &Layouts, patched: &Layouts) -> Vec<LayoutChange> {
    let mut out = Vec::new();
    for (name, a) in &orig.types {
        let Some(b) = patched.types.get(name) else {
            continue;
        };
        if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_shape(y)) {
            continue;
        }
        // Several definitions of one name (block-scoped types): compare in order.
        let (la, lb) = match a.iter().zip(b).find(|(x, y)| !x.same_shape(y)) {
            Some(p) => p,
            None => (&a[0], &b[0]),
        };
        let mut reason = if la.bytes != lb.bytes {
            format!("its size changes from {} to {} bytes", la.bytes, lb.bytes)
        } else {
            "its members move".to_string()
        };
        let member = member_difference(la, lb);
        if let Some((m, what)) = &member {
            reason.push_str(&format!("; member `{m}` {what}"));
        }
        out.push(LayoutChange {
            what: name.clone(),
            member: member.map(|(m, _)| m),
            reason,
        });
    }
    for (name, &a) in &orig.variables {
        if let Some(&b) = patched.variables.get(name) {
            if a != b {
                out.push(LayoutChange {
                    what: format!("variable {name}"),
                    member: None,
                    reason: format!("its type's size changes from {a} to {b} bytes"),
                });
            }
        }
    }
    out
}
