//! A fix that frees memory the old code left alone gets a note: whether it is safe live
//! depends on who owns that memory in objects created before the patch, which the code does
//! not say (libpng's CVE-2026-33416 turned an aliased buffer into an owned one, and a live
//! patch of it frees the buffer twice in older objects).

mod support;

use std::path::PathBuf;

use suture_object::{analyze, Object, Status};

const HEAD: &str = "#include <stdlib.h>\nstruct s { char *buf; char *mine; };\n";

fn diff_notes(name: &str, orig: &str, fixed: &str) -> Vec<String> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("frees");
    let flags = vec!["-O2".to_string()];
    let a = support::compile(
        "gcc",
        &flags,
        &format!("{name}.c"),
        &format!("{HEAD}{orig}"),
        &cache,
    )
    .unwrap();
    let b = support::compile(
        "gcc",
        &flags,
        &format!("{name}.c"),
        &format!("{HEAD}{fixed}"),
        &cache,
    )
    .unwrap();
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (oa, ob) = (Object::parse(&a).unwrap(), Object::parse(&b).unwrap());
    let d = analyze(&oa, &ob).unwrap();
    assert_eq!(d.report.status, Status::Patchable);
    d.report.notes
}

#[test]
fn a_fix_that_adds_a_free_is_noted_for_review() {
    let notes = diff_notes(
        "adds",
        "void reset(struct s *p) { p->buf = 0; }\n",
        "void reset(struct s *p) { free(p->buf); p->buf = 0; }\n",
    );
    let note = notes
        .iter()
        .find(|n| n.starts_with("reset now refers to free once (the original never)"))
        .unwrap_or_else(|| panic!("no note on the added free: {notes:?}"));
    assert!(note.contains("ownership"), "{note}");
}

#[test]
fn a_fix_that_keeps_its_frees_gets_no_such_note() {
    // The same free, now after a bounds check: nothing is freed that was not before.
    let notes = diff_notes(
        "keeps",
        "void drop(struct s *p, int n) { free(p->mine); p->mine = 0; (void)n; }\n",
        "void drop(struct s *p, int n) { if (n < 0) return; free(p->mine); p->mine = 0; }\n",
    );
    assert!(
        !notes.iter().any(|n| n.contains("refers to free")),
        "{notes:?}"
    );
}
