//! Building an out-of-tree module directory with kbuild against a kernel headers tree
//! (Debian's `linux-headers-<release>` package, `/usr/src/linux-headers-<release>`).
//!
//! The module is compiled with the compiler the kernel was built with: the headers' `.config`
//! records it in `CONFIG_CC_VERSION_TEXT` (for Debian 12: `gcc-12 (Debian 12.2.0-14+deb12u1)
//! 12.2.0`), and its first word is the command. Plain `gcc` may be another version, which
//! changes the version text kbuild checks and can change code generation.
//!
//! Usage: put the sources and a `Kbuild` (`obj-m := name.o`) in a directory, then
//! `build_module(dir, &Headers::for_release("6.1.0-56-amd64")?)` returns the `.ko` files.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no kernel headers at {}: install linux-headers-{release} (the headers of the target \
         kernel)",
        path.display()
    )]
    NoHeaders { path: PathBuf, release: String },
    #[error("{}: {what}", path.display())]
    BadHeaders { path: PathBuf, what: String },
    #[error("cannot run make: {0}")]
    Spawn(std::io::Error),
    #[error("kbuild failed in {} (make exit {status}); last output:\n{tail}", dir.display())]
    Failed {
        dir: PathBuf,
        status: String,
        tail: String,
    },
    #[error("kbuild produced no .ko file in {}", .0.display())]
    NoModule(PathBuf),
}

/// A prepared kernel headers tree and the compiler its kernel was built with.
#[derive(Clone, Debug)]
pub struct Headers {
    pub dir: PathBuf,
    /// `CONFIG_CC_VERSION_TEXT` of its `.config`.
    pub cc_version_text: String,
    /// The compiler command (the first word of the version text, e.g. `gcc-12`).
    pub cc: String,
}

impl Headers {
    /// `/usr/src/linux-headers-<release>` (e.g. `6.1.0-56-amd64`).
    pub fn for_release(release: &str) -> Result<Headers, Error> {
        let dir = PathBuf::from(format!("/usr/src/linux-headers-{release}"));
        if !dir.join("Makefile").is_file() {
            return Err(Error::NoHeaders {
                path: dir,
                release: release.into(),
            });
        }
        Headers::at(&dir)
    }

    /// A headers (or configured source) tree at `dir`.
    pub fn at(dir: &Path) -> Result<Headers, Error> {
        let cfg = dir.join(".config");
        let text = std::fs::read_to_string(&cfg).map_err(|e| Error::BadHeaders {
            path: cfg.clone(),
            what: format!("cannot read the kernel configuration: {e}"),
        })?;
        let cc_version_text = text
            .lines()
            .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
            .map(|v| v.trim_matches('"').to_string())
            .ok_or_else(|| Error::BadHeaders {
                path: cfg.clone(),
                what: "no CONFIG_CC_VERSION_TEXT".into(),
            })?;
        let cc = cc_version_text
            .split_whitespace()
            .next()
            .unwrap_or("gcc")
            .to_string();
        Ok(Headers {
            dir: dir.into(),
            cc_version_text,
            cc,
        })
    }
}

/// Runs `make -C <headers> M=<dir> CC=<cc> modules` and returns the `.ko` files in `dir`
/// (sorted). Output goes to `dir/build.log`; on failure its tail is in the error.
pub fn build_module(dir: &Path, headers: &Headers) -> Result<Vec<PathBuf>, Error> {
    let dir = std::path::absolute(dir).map_err(Error::Spawn)?;
    let out = Command::new("make")
        .arg("-C")
        .arg(&headers.dir)
        .arg(format!("M={}", dir.display()))
        .arg(format!("CC={}", headers.cc))
        .arg("modules")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(Error::Spawn)?;
    let mut log = out.stdout.clone();
    log.extend_from_slice(&out.stderr);
    let _ = std::fs::write(dir.join("build.log"), &log);
    if !out.status.success() {
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        return Err(Error::Failed {
            dir,
            status: out.status.to_string(),
            tail,
        });
    }
    let mut kos: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(Error::Spawn)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    kos.sort();
    if kos.is_empty() {
        return Err(Error::NoModule(dir));
    }
    Ok(kos)
}
