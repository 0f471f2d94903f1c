//! C compilers: running them in place, and cached compiles of single units.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cc args` in `dir` and panics with the compiler's output when it fails.
pub fn run_cc(cc: &str, dir: &Path, args: &[&str]) {
    let out = Command::new(cc)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cc} {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `gcc args` in `dir`.
pub fn gcc(dir: &Path, args: &[&str]) {
    run_cc("gcc", dir, args)
}

/// The first line of `tool --version`, or `None` when the tool is missing.
pub fn tool_version(tool: &str) -> Option<String> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    })
}

/// Hash of files' contents and `extra`, for caching what scripts build from them.
pub fn hash_files(files: &[&Path], extra: &str) -> String {
    let mut h = DefaultHasher::new();
    extra.hash(&mut h);
    for f in files {
        std::fs::read(f).unwrap_or_default().hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// Compiles `source` (its contents, under the file name `unit_name`) with `cc -c flags`,
/// caching the object under `cache` by the hash of compiler, compiler version, flags, name and
/// source. Concurrent compiles of the same unit are safe (written aside, then renamed).
pub fn compile(
    cc: &str,
    flags: &[&str],
    unit_name: &str,
    source: &str,
    cache: &Path,
) -> Result<PathBuf, String> {
    let version = tool_version(cc).ok_or_else(|| format!("{cc} is not installed"))?;
    let mut h = DefaultHasher::new();
    (cc, flags, unit_name, source, &version).hash(&mut h);
    let dir = cache.join(format!("{:016x}", h.finish()));
    let obj = dir.join("unit.o");
    if obj.is_file() {
        return Ok(obj);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(unit_name), source).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!("unit.o.tmp{}", std::process::id()));
    let out = Command::new(cc)
        .current_dir(&dir)
        .arg("-c")
        .args(flags)
        .arg(unit_name)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cc} {} failed:\n{}",
            flags.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &obj).map_err(|e| e.to_string())?;
    Ok(obj)
}
