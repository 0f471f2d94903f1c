//! Descriptor-table layouts are derived from the objects (suture-object/src/special.rs): each
//! kernel version's entry layout is recognised by its size and relocation pattern, fields are
//! read at that layout's offsets, and tables that match no known layout, or different layouts
//! in the two objects, are refused naming the section. The objects here are compiled by gcc from
//! userspace copies of the kernel's macros; the real kernels' objects are in kernel_versions.rs.

mod support;

use std::path::PathBuf;

use suture_object::special;
use suture_object::units::Units;
use suture_object::{analyze, Object, Status};

fn build(name: &str, source: &str) -> Vec<u8> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("layouts");
    let flags = vec!["-O2".to_string(), "-fno-pie".to_string()];
    let path = support::compile("gcc", &flags, &format!("{name}.c"), source, &cache).unwrap();
    std::fs::read(path).unwrap()
}

/// An x86 `ALTERNATIVE` site (3 NOPs, replaced by the 2-byte `xor %eax,%eax`) whose
/// `.altinstructions` entry has `fields` after `s32 instr, s32 repl` (`%[il]`/`%[rl]` stand for
/// the original and replacement lengths).
fn alternatives(fields: &str, add: i32) -> String {
    let fields = fields
        .replace("%[il]", "2b - 1b")
        .replace("%[rl]", "4b - 3b");
    format!(
        r#"
#define ALT() asm volatile("1: nop; nop; nop\n2:\n"                          \
    ".pushsection .altinstr_replacement, \"ax\"\n3: xor %%eax, %%eax\n4:\n.popsection\n" \
    ".pushsection .altinstructions, \"a\"\n.long 1b - ., 3b - .\n{fields}\n.popsection" \
    ::: "eax")
int handle(int x)
{{
    ALT();
    x = x * 3 + {add};
    ALT();
    return x;
}}
int other(int x) {{ return x - 1; }}
"#
    )
}

/// Linux 6.3+: `u32 ft_flags; u8 instrlen, replacementlen` (14 bytes).
const ALT14: &str = r".long 0x1234\n.byte %[il], %[rl]";
/// Linux 5.13 to 6.2 and 5.10.y: `u16 cpuid; u8 instrlen, replacementlen` (12 bytes).
const ALT12: &str = r".word 0x1234\n.byte %[il], %[rl]";
/// Linux 4.x: `u16 cpuid; u8 instrlen, replacementlen, padlen` (13 bytes; padlen 7 here, so a
/// length read at the wrong offset shows).
const ALT13: &str = r".word 0x1234\n.byte %[il], %[rl], 7";

fn resolved(bytes: &[u8], name: &str) -> (u64, &'static str) {
    let obj = Object::parse(bytes).unwrap();
    let (found, refused) = special::resolve(&obj);
    assert!(refused.is_empty(), "{refused:?}");
    let t = found
        .iter()
        .find(|t| t.name == name)
        .expect("table resolved");
    (t.entry, t.kernels)
}

/// Every `.altinstructions` entry of `handle` owns the 2 replacement bytes `31 c0`.
fn replacements_of_handle(bytes: &[u8]) -> Vec<Vec<u8>> {
    let obj = Object::parse(bytes).unwrap();
    let units = Units::new(&obj);
    let handle = units
        .ids()
        .find(|u| units.unit(*u).name == "handle")
        .unwrap();
    special::entries_by_unit(&units)[handle.0 as usize]
        .iter()
        .filter(|e| e.table.name == special::ALTINSTRUCTIONS)
        .map(|e| {
            let (sec, a, b) = special::replacement(&units, e).expect("replacement");
            obj.section(sec).bytes(a, b).to_vec()
        })
        .collect()
}

#[test]
fn each_alternatives_layout_is_told_apart_and_read_at_its_offsets() {
    for (name, fields, entry) in [
        ("alt12", ALT12, 12),
        ("alt13", ALT13, 13),
        ("alt14", ALT14, 14),
    ] {
        let bytes = build(name, &alternatives(fields, 7));
        let (size, kernels) = resolved(&bytes, special::ALTINSTRUCTIONS);
        assert_eq!(size, entry, "{name}: {kernels}");
        assert_eq!(
            replacements_of_handle(&bytes),
            vec![vec![0x31, 0xc0]; 2],
            "{name}: replacement length read at the wrong offset"
        );
    }
}

#[test]
fn a_changed_function_carries_its_14_byte_alternatives() {
    let a = build("carry14", &alternatives(ALT14, 7));
    let b = build("carry14", &alternatives(ALT14, 9));
    let (oa, ob) = (Object::parse(&a).unwrap(), Object::parse(&b).unwrap());
    let d = analyze(&oa, &ob).unwrap();
    assert_eq!(d.report.status, Status::Patchable, "{:?}", d.report);
    let emitted = suture_object::emit::emit(&d).unwrap();
    assert_eq!(resolved(&emitted, special::ALTINSTRUCTIONS).0, 14);
    let e = Object::parse(&emitted).unwrap();
    let alt = special::section_named(&e, special::ALTINSTRUCTIONS).unwrap();
    assert_eq!(
        e.section(alt).size,
        2 * 14,
        "both entries of handle, none of other"
    );
    assert_eq!(replacements_of_handle(&emitted), vec![vec![0x31, 0xc0]; 2]);
}

/// Linux 4.18-4.20's `__jump_table`: `u64 code, target, key`, all absolute.
fn absolute_jump_label(key: &str) -> String {
    format!(
        r#"
struct static_key {{ int enabled; }} key_a, key_b;
extern void slow_path(void);
int handle(int x)
{{
    asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\n"
             ".pushsection __jump_table, \"aw\"\n.balign 8\n"
             ".quad 1b, %l[yes], %c0\n.popsection" : : "i"(&{key}) : : yes);
    return x + 1;
yes:
    slow_path();
    return x;
}}
"#
    )
}

#[test]
fn absolute_jump_entries_of_4x_kernels_are_compared() {
    let a = build("jump24", &absolute_jump_label("key_a"));
    let b = build("jump24", &absolute_jump_label("key_b"));
    assert_eq!(resolved(&a, "__jump_table"), (24, "4.18-4.20 (absolute)"));
    let (oa, ob) = (Object::parse(&a).unwrap(), Object::parse(&b).unwrap());
    let d = analyze(&oa, &ob).unwrap();
    let changed: Vec<&str> = d
        .report
        .changed_functions
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(changed, ["handle"], "only the jump entry's key differs");
}

fn refusals(orig: &[u8], patched: &[u8]) -> Vec<String> {
    let (oa, ob) = (
        Object::parse(orig).unwrap(),
        Object::parse(patched).unwrap(),
    );
    let d = analyze(&oa, &ob).unwrap();
    assert_eq!(d.report.status, Status::Unsupported);
    d.report
        .unsupported
        .iter()
        .map(|u| u.reason.clone())
        .collect()
}

#[test]
fn a_layout_no_kernel_has_is_refused_naming_the_section() {
    // 10 bytes: `u8 instrlen, replacementlen` right after the offsets.
    let a = build("alt10", &alternatives(r".byte %[il], %[rl]", 7));
    let b = build("alt10", &alternatives(r".byte %[il], %[rl]", 9));
    let reasons = refusals(&a, &b);
    assert!(
        reasons.iter().any(|r| r.starts_with(
            ".altinstructions of the original object matches no entry layout suture knows"
        ) && r.contains("not the 14-byte layout of 6.3-6.12")
            && r.contains("20 bytes are not a whole number of 13-byte entries")),
        "{reasons:#?}"
    );
    let (_, refused) = special::resolve(&Object::parse(&b).unwrap());
    assert_eq!(refused.len(), 1, "{refused:?}");
    // Nothing of an unresolved table is compared or carried.
    let ob = Object::parse(&b).unwrap();
    let units = Units::new(&ob);
    assert!(special::entries_by_unit(&units).iter().all(Vec::is_empty));
}

#[test]
fn layouts_that_differ_between_the_objects_are_refused() {
    let a = build("mixed", &alternatives(ALT12, 7));
    let b = build("mixed", &alternatives(ALT14, 9));
    let reasons = refusals(&a, &b);
    assert!(
        reasons.iter().any(|r| {
            r.contains(
            ".altinstructions has the 12-byte layout of 5.13-6.2 and 5.10.y (u16 cpuid) in the \
             original object but the 14-byte layout of 6.3-6.12 (u32 ft_flags) in the patched one"
        )
        }),
        "{reasons:#?}"
    );
}

#[test]
fn an_entry_size_the_section_header_contradicts_is_refused() {
    let src = |add: i32| {
        format!(
            r#"
int handle(int x)
{{
    asm volatile("1: nop\n.pushsection .return_sites, \"aM\", @progbits, 8\n"
                 ".long 1b - .\n.long 0\n.popsection");
    return x + {add};
}}
"#
        )
    };
    let reasons = refusals(&build("entsize", &src(1)), &build("entsize", &src(2)));
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with(".return_sites of the original object")
                && r.contains("sh_entsize is 8, not 4")),
        "{reasons:#?}"
    );
}

#[test]
fn exception_entries_with_and_without_a_handler_field_are_not_mixed() {
    // One 5.16+ entry (insn, fixup, data) followed by one 4.x entry (insn, fixup, handler).
    let src = |add: i32| {
        format!(
            r#"
extern void ex_handler_default(void);
int handle(int x)
{{
    asm volatile("1: nop\n2: nop\n"
                 ".pushsection __ex_table, \"a\"\n.balign 4\n"
                 ".long 1b - ., 2b - ., 3\n"
                 ".long 1b - ., 2b - ., ex_handler_default - .\n.popsection");
    return x + {add};
}}
"#
        )
    };
    let reasons = refusals(&build("extable", &src(1)), &build("extable", &src(2)));
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("__ex_table of the original object")
                && r.contains("a relocation at +0x14 lies in no address field")
                && r.contains("entry 0 has 0 relocations at offset 8")),
        "{reasons:#?}"
    );
}

/// Linux 5.10's `.parainstructions`: `.balign 8` before each 12-byte entry and none after, so
/// an object's table is `16n - 4` bytes; the carried entries keep the 16-byte stride.
fn paravirt_sites(add: i32) -> String {
    format!(
        r#"
#define PV_SITE() asm volatile("1: nop; nop\n2:\n.pushsection .parainstructions, \"a\"\n" \
    ".balign 8\n.quad 1b\n.byte 3, 2b - 1b\n.short 0\n.popsection")
int handle(int x)
{{
    PV_SITE();
    x = x * 5 + {add};
    PV_SITE();
    return x;
}}
int other(int x) {{ PV_SITE(); return x - 1; }}
"#
    )
}

#[test]
fn paravirt_entries_without_trailing_padding_keep_their_stride() {
    let a = build("pv510", &paravirt_sites(7));
    let b = build("pv510", &paravirt_sites(9));
    let ob = Object::parse(&b).unwrap();
    let pv = special::section_named(&ob, ".parainstructions").unwrap();
    assert_eq!(ob.section(pv).size, 3 * 16 - 4, "5.10's shape");
    assert_eq!(resolved(&b, ".parainstructions").0, 16);
    let oa = Object::parse(&a).unwrap();
    let d = analyze(&oa, &ob).unwrap();
    assert_eq!(d.report.status, Status::Patchable, "{:?}", d.report);
    let emitted = suture_object::emit::emit(&d).unwrap();
    let e = Object::parse(&emitted).unwrap();
    let pv = special::section_named(&e, ".parainstructions").unwrap();
    let s = e.section(pv);
    assert_eq!(s.size, 2 * 16, "handle's two entries, each a full stride");
    let offsets: Vec<u64> = s.relocs.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 16]);
    assert_eq!(s.bytes(8, 10), [3, 2], "type and length of the first entry");
    assert_eq!(
        s.bytes(24, 26),
        [3, 2],
        "type and length of the second entry"
    );
}
