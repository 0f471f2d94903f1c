//! Stock modules installed compressed (Debian 13's `.ko.xz`) are found and read like `.ko`.

use std::path::PathBuf;
use std::process::Command;

use suture_kernel::{generate::find_module, kallsyms::read_module};

#[test]
fn a_compressed_stock_module_was_found_and_read() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compressed-modules");
    let _ = std::fs::remove_dir_all(&dir);
    let sub = dir.join("kernel/drivers/net");
    std::fs::create_dir_all(&sub).unwrap();
    let c = dir.join("m.c");
    std::fs::write(&c, "int xenvif_probe(int x) { return x + 1; }\n").unwrap();
    let ko = sub.join("xen-netback.ko");
    let ok = Command::new("gcc")
        .args(["-O2", "-c", "-o"])
        .arg(&ko)
        .arg(&c)
        .status()
        .unwrap();
    assert!(ok.success());
    for (tool, ext) in [("xz", "xz"), ("gzip", "gz")] {
        let ok = Command::new(tool)
            .arg("-k")
            .arg("-f")
            .arg(&ko)
            .status()
            .unwrap();
        assert!(ok.success(), "{tool}");
        let packed = sub.join(format!("xen-netback.ko.{ext}"));
        let plain = dir.join("plain.ko");
        std::fs::rename(&ko, &plain).unwrap();
        let found = find_module(std::slice::from_ref(&dir), "xen_netback").expect("found");
        assert_eq!(found, packed);
        let syms = read_module(&found).unwrap();
        assert!(syms.contains("xenvif_probe"), "{ext}: {:?}", syms.syms);
        std::fs::remove_file(&packed).unwrap();
        std::fs::rename(&plain, &ko).unwrap();
    }
}
