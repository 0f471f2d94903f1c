//! Helpers shared by this crate's test programs (each test file includes this module).

use std::path::Path;

use suture_testkit::cc::gcc;

/// Compiles `src` (in `dir`) twice with `flags`, as `orig.o` and with `-D<define>` as
/// `fixed.o`, and returns the patch object of the difference (with on-stack replacement maps
/// when `osr`); the differ must find it patchable.
pub fn variant_patch(dir: &Path, src: &str, flags: &[&str], define: &str, osr: bool) -> Vec<u8> {
    let def = format!("-D{define}");
    for (out, extra) in [("orig.o", None), ("fixed.o", Some(def.as_str()))] {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(extra);
        args.extend(["-c", src, "-o", out]);
        gcc(dir, &args);
    }
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let (a, b) = (read("orig.o"), read("fixed.o"));
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
    suture_object::emit::emit(&d).unwrap()
}
