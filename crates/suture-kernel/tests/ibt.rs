//! The IBT rule (`suture_kernel::ibt`) on real objects: a unit compiled the way kbuild compiles
//! an IBT kernel's code (`-fcf-protection=branch`, `-mfentry`, kernel code model, function
//! sections), before and after a fix, diffed and emitted by suture-object as for a live patch.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use suture_kernel::ibt::{self, Target};
use suture_object::{analyze, emit::emit, Object};

const ORIG: &str = r#"
struct ops { int (*cb)(int); };
extern int register_ops(struct ops *o);
extern int kernel_fn(int x);
extern int exported_fn(int x);
__attribute__((noinline)) static int helper(int x) { return x + 1; }
__attribute__((noinline)) static int used_cb(int x) { return x * 2; }
__attribute__((noinline)) int unit_global(int x) { return x - 3; }
static struct ops o1 = { .cb = used_cb };
int setup(int n) { register_ops(&o1); return helper(n); }
"#;

/// The body of `setup` in each variant of the fix.
const VARIANTS: [(&str, &str); 6] = [
    // A new table entry pointing at a static of the unit whose address it never took. gcc
    // gives a static function an ENDBR only when its address is taken, so the running
    // `helper` has none; `helper` changes (gains one) and is carried, but the patch's pointer,
    // like every pointer of a patch to a replaced function, is to the running original:
    // refused.
    (
        "new_static_pointer",
        "static struct ops o2 = { .cb = helper };\n\
         int setup(int n) { register_ops(&o1); register_ops(&o2); return helper(n); }",
    ),
    // A global function of the unit always has an ENDBR, sealed when unused: refused.
    (
        "new_global_pointer",
        "int setup(int n) { struct ops o = { .cb = unit_global }; register_ops(&o1); \
         register_ops(&o); return helper(n); }",
    ),
    // The address of a function the original already takes (o1): its ENDBR is kept.
    (
        "known_pointer",
        "int setup(int n) { struct ops o = { .cb = used_cb }; register_ops(&o1); \
         register_ops(&o); return helper(n); }",
    ),
    // New direct calls need no ENDBR.
    (
        "new_calls",
        "int setup(int n) { register_ops(&o1); return helper(n) + kernel_fn(n) + exported_fn(n); }",
    ),
    // The address of a non-exported kernel function of another unit.
    (
        "new_kernel_pointer",
        "int setup(int n) { struct ops o = { .cb = kernel_fn }; register_ops(&o1); \
         register_ops(&o); return helper(n); }",
    ),
    // The address of an exported function: `.export_symbol` keeps its ENDBR.
    (
        "exported_pointer",
        "int setup(int n) { struct ops o = { .cb = exported_fn }; register_ops(&o1); \
         register_ops(&o); return helper(n); }",
    ),
];

struct Kernel;

impl Target for Kernel {
    fn exported(&self, name: &str) -> bool {
        matches!(name, "exported_fn" | "register_ops")
    }
    fn is_function(&self, name: &str) -> bool {
        matches!(name, "kernel_fn" | "exported_fn" | "register_ops")
    }
}

fn compile(dir: &Path, name: &str, src: &str) -> Vec<u8> {
    let c = dir.join(format!("{name}.c"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, src).unwrap();
    let out = Command::new("gcc")
        .args([
            "-O2",
            "-c",
            "-fcf-protection=branch",
            "-mcmodel=kernel",
            "-fno-PIE",
            "-mno-red-zone",
            "-pg",
            "-mfentry",
            "-mrecord-mcount",
            "-ffunction-sections",
            "-fdata-sections",
            "-fno-asynchronous-unwind-tables",
            "-o",
        ])
        .arg(&o)
        .arg(&c)
        .output()
        .expect("running gcc");
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(o).unwrap()
}

/// Symbols the IBT rule refuses for the fix turning ORIG's `setup` into `body`.
fn refused(dir: &Path, name: &str, body: &str) -> HashSet<String> {
    let head = ORIG.split("int setup").next().unwrap();
    // Same file name on both sides, as kbuild compiles the unit before and after the fix.
    let (da, db) = (dir.join(format!("{name}-a")), dir.join(format!("{name}-b")));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let a = compile(&da, "unit", ORIG);
    let b = compile(&db, "unit", &format!("{head}{body}\n"));
    let (oa, ob) = (Object::parse(&a).unwrap(), Object::parse(&b).unwrap());
    let d = analyze(&oa, &ob).unwrap();
    assert!(
        d.report.changed_functions.iter().any(|f| f.name == "setup"),
        "{name}: setup must change: {:?}",
        d.report
    );
    if name == "new_static_pointer" {
        assert!(
            d.report
                .changed_functions
                .iter()
                .any(|f| f.name == "helper"),
            "helper gains an ENDBR: {:?}",
            d.report.changed_functions
        );
    }
    let patch = emit(&d).unwrap();
    let patch = Object::parse(&patch).unwrap();
    let out = ibt::newly_taken(&oa, &patch, &Kernel);
    for why in out.values() {
        assert!(why.contains("IBT") && why.contains("ENDBR"), "{why}");
    }
    out.into_keys().collect()
}

#[test]
fn only_new_pointers_to_functions_whose_endbr_may_be_sealed_were_refused() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ibt");
    let mut got = Vec::new();
    for (name, body) in VARIANTS {
        got.push((name, refused(&dir, name, body)));
    }
    let want = |n: &str| -> HashSet<String> {
        match n {
            "new_static_pointer" => ["helper".to_string()].into(),
            "new_global_pointer" => ["unit_global".to_string()].into(),
            "new_kernel_pointer" => ["kernel_fn".to_string()].into(),
            _ => HashSet::new(),
        }
    };
    for (name, r) in &got {
        assert_eq!(r, &want(name), "variant {name}");
    }
}

#[test]
fn the_original_takes_only_the_addresses_it_stores() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ibt-orig");
    std::fs::create_dir_all(&dir).unwrap();
    let a = compile(&dir, "unit", ORIG);
    let o = Object::parse(&a).unwrap();
    let taken: HashSet<String> = ibt::address_taken(&o)
        .into_iter()
        .filter(|t| t.entry)
        .map(|t| t.symbol)
        .collect();
    // o1's pointer to used_cb; not the calls to helper/register_ops, not __mcount_loc's
    // entries for every function, not __fentry__.
    assert!(taken.contains("used_cb"), "{taken:?}");
    for not in [
        "helper",
        "unit_global",
        "register_ops",
        "setup",
        "__fentry__",
    ] {
        assert!(!taken.contains(not), "{not} in {taken:?}");
    }
}
