//! A changed static function without an ftrace entry (the kernel's `inline` is `notrace`, so
//! an out-of-line copy of a header's inline function has none) cannot be redirected by
//! livepatch: the patch carries its new code as a new function and replaces its callers. Units
//! compiled by gcc with the kernel's `-pg -mfentry`.

mod support;

use std::path::PathBuf;

use suture_object::{analyze, Object, Report, Status};

const FENTRY: &[&str] = &["-O2", "-pg", "-mfentry", "-fno-pie"];

const UNIT: &str = r#"
#define notrace __attribute__((no_instrument_function))
static notrace __attribute__((noinline)) int clamp(int v) { return v > LIMIT ? LIMIT : v; }
int read_size(int v) { return clamp(v) * 2; }
int write_size(int v) { return clamp(v + 1); }
int unrelated(int v) { return v - 3; }
"#;

/// The report of `unit` built with `flags`, LIMIT 64 before and 32 after.
fn report(tag: &str, flags: &[&str], unit: &str) -> Report {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("untraceable");
    let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let obj = |limit: u32| {
        let src = format!("#define LIMIT {limit}\n{unit}");
        let name = format!("{tag}-{limit}.c");
        std::fs::read(support::compile("gcc", &flags, &name, &src, &cache).unwrap()).unwrap()
    };
    let (a, b) = (obj(64), obj(32));
    let (a, b) = (Object::parse(&a).unwrap(), Object::parse(&b).unwrap());
    analyze(&a, &b).unwrap().report
}

fn changed(r: &Report) -> Vec<&str> {
    let mut v: Vec<&str> = r
        .changed_functions
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    v.sort();
    v
}

#[test]
fn callers_of_a_changed_untraceable_function_are_replaced() {
    let r = report("callers", FENTRY, UNIT);
    assert_eq!(r.status, Status::Patchable, "{:?}", r.unsupported);
    assert_eq!(changed(&r), ["read_size", "write_size"]);
    let new: Vec<&str> = r.new_functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(new, ["clamp"]);
    assert!(
        r.notes.iter().any(|n| n
            == "clamp has no ftrace entry: the patch carries its new code and replaces its \
                callers (read_size, write_size) instead"),
        "{:?}",
        r.notes
    );
}

#[test]
fn an_untraceable_function_whose_address_is_stored_is_refused() {
    let unit = format!("{UNIT}int (*const hooks[])(int) = {{ clamp }};\n");
    let r = report("table", FENTRY, &unit);
    assert_eq!(r.status, Status::Unsupported);
    assert!(
        r.unsupported
            .iter()
            .any(|u| u.symbol == "clamp" && u.reason.contains("hooks holds its address")),
        "{:?}",
        r.unsupported
    );
}

/// Userspace objects have no ftrace calls at all: a changed static function is replaced
/// itself, as always.
#[test]
fn without_ftrace_calls_nothing_moves() {
    let r = report("user", &["-O2"], UNIT);
    assert_eq!(changed(&r), ["clamp"]);
    assert!(r.new_functions.is_empty());
}
