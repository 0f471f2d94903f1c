//! The linker on real patch objects: compile a unit before and after a fix, emit the patch with
//! suture-object, link it for an address with a synthetic symbol table, and check the bytes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use suture_process::ids::RemoteAddr;
use suture_process::link::{LinkError, Plan, Request, Resolver, Segment, Value, PAGE};

const ORIG: &str = r#"
#include <stdio.h>
static int hits;
int limit = 8;
static int helper(int v) { return v * 3 + hits; }
int check(int n) {
    hits++;
    return n < limit ? helper(n) : -1;
}
"#;

fn patch_object(fixed: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("link-{}", fixed.len()));
    let objs: Vec<Vec<u8>> = [ORIG, fixed]
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let d = dir.join(i.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("unit.c"), src).unwrap();
            let ok = Command::new("gcc")
                .current_dir(&d)
                .args([
                    "-c",
                    "-O2",
                    "-fno-inline",
                    "-ffunction-sections",
                    "-fdata-sections",
                ])
                .args(["unit.c", "-o", "unit.o"])
                .status()
                .unwrap()
                .success();
            assert!(ok);
            std::fs::read(d.join("unit.o")).unwrap()
        })
        .collect();
    let a = suture_object::Object::parse(&objs[0]).unwrap();
    let b = suture_object::Object::parse(&objs[1]).unwrap();
    let d = suture_object::analyze(&a, &b).unwrap();
    assert_eq!(d.report.status, suture_object::Status::Patchable);
    suture_object::emit::emit(&d).unwrap()
}

struct Table(HashMap<String, Value>);
impl Resolver for Table {
    fn resolve(&self, r: &Request) -> Result<Value, String> {
        self.0
            .get(r.name())
            .copied()
            .ok_or_else(|| "unknown".into())
    }
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn links_near_and_far_references() {
    let fixed = ORIG.replace(
        "return n < limit",
        "if (n < 0) { fprintf(stderr, \"neg\\n\"); return -1; }\n    return n < limit",
    );
    let bytes = patch_object(&fixed);
    let plan = Plan::new(&bytes, 64).unwrap();
    let requests = plan.requests();
    let names: Vec<&str> = requests.iter().map(|r| r.name()).collect();
    for want in ["helper", "hits", "limit", "stderr"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(requests.contains(&Request::Local {
        file: "unit.c".into(),
        name: "hits".into()
    }));
    assert_eq!(plan.region_size() % PAGE, 0);

    let base = RemoteAddr(0x5555_0000_0000);
    let near = |off: u64| Value::Address(base.offset(0x1000_0000 + off));
    let mut table: HashMap<String, Value> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        table.insert(n.to_string(), near(0x100 * i as u64));
    }
    // fwrite (what gcc turns the fprintf into) lives in a library far away.
    let far = RemoteAddr(0x7fff_0000_0000);
    for n in &names {
        if n.starts_with("fwrite") || n.starts_with("fprintf") || n.starts_with("fputs") {
            table.insert(n.to_string(), Value::Address(far));
        }
    }
    let linked = plan.link(base, &Table(table.clone())).unwrap();
    let text = linked
        .segments
        .iter()
        .find(|s| s.0 == Segment::Text)
        .unwrap();
    assert_eq!(
        text.1,
        base.offset(PAGE),
        "text follows the page-rounded header"
    );
    let check = linked.symbols["check"];
    assert!(check.0 >= text.1 .0 && check.0 < text.1 .0 + text.2.len() as u64);

    // Every direct call in the linked code lands on a resolved symbol, a patch function or a
    // stub; the stub's absolute target is the far library function.
    let stub_target = far.0.to_le_bytes();
    let stub_at = text
        .2
        .windows(14)
        .position(|w| w[..6] == [0xff, 0x25, 0, 0, 0, 0] && w[6..] == stub_target);
    assert!(
        stub_at.is_some(),
        "no far-call stub for the library function"
    );
    let stub_addr = text.1 .0 + stub_at.unwrap() as u64;
    let code = &text.2;
    let mut calls_to_stub = 0;
    for i in 0..code.len().saturating_sub(5) {
        if code[i] == 0xe8 {
            let dest = (text.1 .0 as i64 + i as i64 + 5 + read_i32(code, i + 1) as i64) as u64;
            if dest == stub_addr {
                calls_to_stub += 1;
            }
        }
    }
    assert!(
        calls_to_stub >= 1,
        "the far call does not go through its stub"
    );

    // A far *data* reference cannot go through a stub: it must be refused by name, with the
    // way to build a patch that reaches it.
    table.insert("stderr".into(), Value::Address(far));
    match plan.link(base, &Table(table.clone())) {
        Err(e) if matches!(&e, LinkError::ExternDataOutOfReach { symbol, .. } if symbol == "stderr") =>
        {
            assert!(e.to_string().contains("-mno-direct-extern-access"), "{e}");
        }
        other => panic!("expected an out-of-reach error for stderr, got {other:?}"),
    }
    // An unknown symbol is reported by name.
    table.remove("limit");
    match plan.link(base, &Table(table)) {
        Err(LinkError::Unresolved { symbol, .. }) => assert_eq!(symbol, "limit"),
        other => panic!("expected limit to be unresolved, got {other:?}"),
    }
}
