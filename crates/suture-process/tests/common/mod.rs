//! Helpers shared by this crate's test programs (each test file includes this module).

use std::path::Path;

use suture_testkit::cc::gcc;

/// Compiles `src` (in `dir`) twice with `flags`: as `orig.o`, and with `-D<define>` as
/// `fixed.o`.
pub fn variants(dir: &Path, src: &str, flags: &[&str], define: &str) {
    let def = format!("-D{define}");
    for (out, extra) in [("orig.o", None), ("fixed.o", Some(def.as_str()))] {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(extra);
        args.extend(["-c", src, "-o", out]);
        gcc(dir, &args);
    }
}

/// The differ's verdict on `dir/orig.o` → `dir/fixed.o` (with on-stack replacement maps when
/// `osr`), which must be patchable, handed to `f`.
pub fn with_diff<R>(dir: &Path, osr: bool, f: impl FnOnce(&suture_object::diff::Diff) -> R) -> R {
    with_diff_of(dir, ["orig.o", "fixed.o"], osr, f)
}

/// [`with_diff`] of other objects in `dir`.
pub fn with_diff_of<R>(
    dir: &Path,
    [orig, fixed]: [&str; 2],
    osr: bool,
    f: impl FnOnce(&suture_object::diff::Diff) -> R,
) -> R {
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let (a, b) = (read(orig), read(fixed));
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let d = suture_object::analyze_with(
        &a,
        &b,
        suture_object::Options {
            osr,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d.report.status, suture_object::Status::Patchable);
    f(&d)
}
