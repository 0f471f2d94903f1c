//! Objects of one unit compiled from differently named files (`orig.c`, `fixed.c`), as other
//! differs accept them: a note, and the patch uses the original's name.

#[allow(dead_code)]
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
