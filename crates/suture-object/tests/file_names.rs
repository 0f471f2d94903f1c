//! Objects of one unit compiled from differently named files (`orig.c`, `fixed.c`), as other
//! differs accept them: a note, and the patch uses the original's name. Also how the report
//! words a fix that changes only an immediate.

mod support;

use std::path::PathBuf;

use suture_object::{analyze, emit::emit, Object, Status};

const ORIG: &str = "static int seen;\nint check(int n) { seen++; return n <= 64; }\n";
const FIXED: &str = "static int seen;\nint check(int n) { seen++; return n < 64; }\n";

#[test]
fn differently_named_sources_were_refused_as_mismatched() {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("file-names");
    let flags = vec!["-O2".to_string()];
    let a = support::compile("gcc", &flags, "orig.c", ORIG, &cache).unwrap();
    let b = support::compile("gcc", &flags, "fixed.c", FIXED, &cache).unwrap();
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (oa, ob) = (Object::parse(&a).unwrap(), Object::parse(&b).unwrap());
    let d = analyze(&oa, &ob).expect("differently named files must be accepted");
    assert_eq!(d.report.status, Status::Patchable);
    assert_eq!(d.report.source_file.as_deref(), Some("orig.c"));
    assert!(
        d.report
            .notes
            .iter()
            .any(|n| n.contains("\"orig.c\"") && n.contains("\"fixed.c\"")),
        "{:?}",
        d.report.notes
    );
    // The static is referenced under the running unit's (original's) file name.
    let patch = emit(&d).unwrap();
    let needle = b"suture.local::orig.c::seen";
    assert!(
        patch.windows(needle.len()).any(|w| w == needle),
        "patch object does not name the original's file"
    );
}

#[test]
fn bounds_fix_changing_only_an_immediate_was_suggested_to_be_a_line_number() {
    // `n <= 64` -> `n < 64` changes only the immediate of a compare (issue 10 item 8): the
    // report must call it a real change and never hint at `__LINE__`.
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("file-names");
    let flags = vec!["-O2".to_string()];
    let a = support::compile("gcc", &flags, "unit.c", ORIG, &cache).unwrap();
    let b = support::compile("gcc", &flags, "unit.c", FIXED, &cache).unwrap();
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (oa, ob) = (Object::parse(&a).unwrap(), Object::parse(&b).unwrap());
    let d = analyze(&oa, &ob).unwrap();
    let f = &d.report.changed_functions[0];
    assert_eq!(f.name, "check");
    let details: Vec<&str> = f.reasons.iter().map(|r| r.detail.as_str()).collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("immediate operands only")),
        "expected an immediate-only change: {details:?}"
    );
    assert!(
        details
            .iter()
            .all(|d| !d.contains("__LINE__") && !d.contains("lines moved")),
        "{details:?}"
    );
}
