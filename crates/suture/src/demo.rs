//! `suture demo`: the built-in example, runnable on a fresh machine with gcc.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

const SERVICE: &str = include_str!("../demo/service.c");
const FIX: &str = include_str!("../demo/fix.diff");

fn step(msg: &str) {
    println!("==> {msg}");
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {what} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn compile(dir: &Path, src: &str, out: &str) -> Result<()> {
    run_tool(
        Command::new("gcc")
            .current_dir(dir)
            .args(["-c", "-O2", "-g", "-ffunction-sections", "-fdata-sections"])
            .args([src, "-o", out]),
        &format!("gcc -c {src}"),
    )
}

pub fn run(keep: bool) -> Result<u8> {
    let dir = std::env::temp_dir().join(format!("suture-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run_in(&dir);
    if keep {
        println!("Kept the working directory {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(dir: &Path) -> Result<u8> {
    step("Writing the example service (service.c) and its security fix (fix.diff)");
    std::fs::create_dir_all(dir.join("orig"))?;
    std::fs::create_dir_all(dir.join("fixed"))?;
    std::fs::write(dir.join("orig/service.c"), SERVICE)?;
    std::fs::write(dir.join("fixed/service.c"), SERVICE)?;
    std::fs::write(dir.join("fix.diff"), FIX)?;
    println!("{FIX}");
    run_tool(
        Command::new("patch").current_dir(dir.join("fixed")).args([
            "-s",
            "-p1",
            "-i",
            "../fix.diff",
        ]),
        "patch",
    )?;

    step("Compiling both versions with gcc -O2 -ffunction-sections -fdata-sections");
    compile(&dir.join("orig"), "service.c", "service.o")?;
    compile(&dir.join("fixed"), "service.c", "service.o")?;

    step("suture diff orig/service.o fixed/service.o -o service.patch.o");
    let orig = crate::read(&dir.join("orig/service.o"))?;
    let fixed = crate::read(&dir.join("fixed/service.o"))?;
    let a = suture_object::Object::parse(&orig)?;
    let b = suture_object::Object::parse(&fixed)?;
    let d = suture_object::analyze(&a, &b)?;
    print!("{}", crate::diff_cmd::human(&d.report));
    if d.report.status != suture_object::Status::Patchable {
        bail!("the built-in example was expected to be patchable");
    }
    let patch = suture_object::emit::emit(&d)?;
    let out = dir.join("service.patch.o");
    std::fs::write(&out, &patch)?;
    println!();
    step(&format!(
        "Wrote the patch object ({} bytes): only the changed code, with references to the \
         running original by name",
        patch.len()
    ));
    Ok(crate::exit::OK)
}
