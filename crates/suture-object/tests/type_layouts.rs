//! Data layouts from DWARF (suture-object/src/layout.rs): a fix that changes a struct's size
//! or member offsets, or a global's type size, is a layout change; one that only changes code
//! (an inline function of a header, a macro) is not. The units are compiled by gcc with `-g`
//! from a made-up header included by one unit, before and after the header's change.

mod support;

use std::path::PathBuf;

use suture_object::layout::{changes, LayoutChange, Layouts};
use suture_object::Object;

fn build(name: &str, source: &str) -> Vec<u8> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("type-layouts");
    let flags = vec!["-O2".to_string(), "-g".to_string()];
    let path = support::compile("gcc", &flags, &format!("{name}.c"), source, &cache).unwrap();
    std::fs::read(path).unwrap()
}

/// The unit including `header`: it uses the types so that gcc emits them.
fn unit(header: &str) -> String {
    format!(
        "{header}\nstruct conn *conns;\nunion key k;\nnamed_t n;\n\
         int use(struct conn *c) {{ return c->fd + c->queued + conn_ready(c) + table[1]; }}\n"
    )
}

const HEADER: &str = "struct conn { int fd; unsigned flags : 3; unsigned dead : 1; \
     struct { long sent; long queued; }; char name[8]; };\n\
     union key { int i; long l; };\n\
     typedef struct { short a; short b; } named_t;\n\
     extern int table[4];\n\
     static inline int conn_ready(struct conn *c) { return c->flags & 1; }\n";

fn compare(name: &str, changed: &str) -> Vec<LayoutChange> {
    let a = build(&format!("{name}-a"), &unit(HEADER));
    let b = build(&format!("{name}-b"), &unit(changed));
    let (a, b) = (Object::parse(&a).unwrap(), Object::parse(&b).unwrap());
    changes(
        &Layouts::read(&a).expect("DWARF"),
        &Layouts::read(&b).expect("DWARF"),
    )
}

#[test]
fn code_only_header_changes_keep_layouts() {
    // A changed inline function: its callers change, the data does not.
    let c = compare(
        "inline",
        &HEADER.replace("return c->flags & 1;", "return (c->flags & 1) && !c->dead;"),
    );
    assert_eq!(c, vec![]);
    // A member renamed in place keeps the layout (the code that uses it is the differ's).
    let c = compare("same", &HEADER.replace("short b;", "short c;"));
    assert_eq!(c, vec![]);
}

#[test]
fn layout_changes_are_named() {
    let c = compare("member", &HEADER.replace("int fd;", "int fd; int refs;"));
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].what, "struct conn");
    assert_eq!(c[0].member.as_deref(), Some("flags"));
    assert_eq!(
        c[0].reason,
        "its size changes from 32 to 40 bytes; member `flags` moves from byte 4 to byte 8"
    );
    // A bit-field widened: same size, the next bit-field moves.
    let c = compare("bits", &HEADER.replace("flags : 3", "flags : 5"));
    assert_eq!(c[0].what, "struct conn");
    assert_eq!(
        c[0].reason,
        "its members move; member `flags` changes size from 3 bit(s) to 5 bit(s)"
    );
    // A member of an anonymous struct member, and a union, and a typedef'd anonymous struct.
    let c = compare("anon", &HEADER.replace("long sent;", "int sent;"));
    assert_eq!(c[0].member.as_deref(), Some("sent"));
    let c = compare("union", &HEADER.replace("long l;", "long l[2];"));
    assert_eq!(
        (c[0].what.as_str(), c[0].reason.as_str()),
        ("union key", "its size changes from 8 to 16 bytes; member `l` changes size from 8 byte(s) to 16 byte(s)")
    );
    let c = compare("typedef", &HEADER.replace("short b;", "short b; short d;"));
    assert_eq!(c[0].what, "typedef named_t");
    assert_eq!(c[0].member.as_deref(), Some("d"));
    // Two members of one size that swap places: same shape, other offsets.
    let c = compare(
        "swap",
        &HEADER.replace("short a; short b;", "short b; short a;"),
    );
    assert_eq!(c[0].what, "typedef named_t");
    assert_eq!(
        c[0].reason,
        "its members move; member `a` moves from byte 0 to byte 2"
    );
    // A global whose type grows.
    let c = compare("global", &HEADER.replace("table[4]", "table[8]"));
    assert_eq!(c[0].what, "variable table");
    assert_eq!(c[0].reason, "its type's size changes from 16 to 32 bytes");
}
