//! The kernel source tree side of `suture build --kernel`: which files a fix touches, checking
//! the tree against the target's headers, and compiling single translation units before and
//! after the fix.
//!
//! The tree is one prepared by `scripts/kernel-tree.sh` (Debian's `linux-source` unpacked, the
//! headers' `.config`, `modules_prepare` with the kernel's compiler). Units are compiled by
//! kbuild itself (`make <dir>/<file>.o`, so every flag, `-DMODULE`/`KBUILD_MODNAME` and objtool
//! are Debian's) plus `-ffunction-sections -fdata-sections`.
//!
//! The source tree is never modified: the fix is applied to copies of the touched files in a
//! scratch directory, and the patched compile runs in a private mount namespace
//! (`unshare --mount`, plus `--user --map-root-user` when not root) in which each patched copy
//! is bind-mounted over its original path, so `__FILE__`, relative includes and kbuild's view
//! are those of the real tree, and an interrupted or killed run leaves nothing to restore (the
//! same approach as `suture build` for userspace). kbuild still writes the unit's object and
//! `.cmd` file into the tree, so users of one tree are serialised by an exclusive lock on
//! `<tree>/.suture-lock` (the lock the test tiers take too); objects built from patched
//! sources are deleted afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Tree(String),
    #[error("compiling {file} failed:\n{tail}")]
    Compile { file: String, tail: String },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |err| Error::Io { what, err }
}

/// Files a unified diff changes (`-p1` paths: `+++ b/fs/proc/cmdline.c`), in order.
pub fn touched_files(diff: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut minus: Option<String> = None;
    for line in diff.lines() {
        if let Some(p) = line.strip_prefix("--- ") {
            minus = Some(strip_path(p));
        } else if let Some(p) = line.strip_prefix("+++ ") {
            let mut p = strip_path(p);
            if p == "/dev/null" {
                p = minus.take().unwrap_or_default();
            }
            if !p.is_empty() && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

fn strip_path(p: &str) -> String {
    let p = p.split('\t').next().unwrap_or("").trim();
    if p == "/dev/null" {
        return p.to_string();
    }
    match p.split_once('/') {
        Some((_, rest)) => rest.to_string(),
        None => p.to_string(),
    }
}

/// Checks the files a fix touches: only C translation units can be rebuilt and diffed.
pub fn check_files(files: &[String]) -> Result<(), Error> {
    let mut bad = Vec::new();
    for f in files {
        let why = if f.ends_with(".c") {
            continue;
        } else if f.ends_with(".h") {
            "a header: the units that include it are not rebuilt by suture; move the change \
             into the .c files that need it"
        } else if f.ends_with(".S") || f.ends_with(".s") {
            "assembly: assembly code has no ftrace entries livepatch could redirect"
        } else if f.contains("Makefile") || f.contains("Kconfig") || f.ends_with("Kbuild") {
            "a build or configuration file: a live patch cannot change how the kernel was built"
        } else {
            "not a C source file"
        };
        bad.push(format!("  {f}: {why}"));
    }
    if files.is_empty() {
        return Err(Error::Refused("the diff touches no file".into()));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "the fix changes files suture cannot live-patch:\n{}",
            bad.join("\n")
        )))
    }
}

fn config_lines(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .map(str::to_string)
        .collect();
    v.sort();
    Ok(v)
}

/// `VERSION.PATCHLEVEL.SUBLEVEL` of a kernel tree's top Makefile (Debian's headers Makefile is
/// a one-line `include` of the common headers package's Makefile, which is followed).
pub fn makefile_version(dir: &Path) -> Result<String, Error> {
    let mut path = dir.join("Makefile");
    for _ in 0..3 {
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        let get = |k: &str| {
            text.lines().find_map(|l| {
                let (a, b) = l.split_once('=')?;
                (a.trim() == k).then(|| b.trim().to_string())
            })
        };
        if let (Some(v), Some(p), Some(s)) = (get("VERSION"), get("PATCHLEVEL"), get("SUBLEVEL")) {
            return Ok(format!("{v}.{p}.{s}"));
        }
        match text
            .lines()
            .find_map(|l| l.strip_prefix("include ").map(|p| PathBuf::from(p.trim())))
        {
            Some(next) => path = next,
            None => break,
        }
    }
    Err(Error::Tree(format!(
        "{} names no kernel version",
        path.display()
    )))
}

/// The source tree's kernel version and configuration must be those of the headers (the
/// headers' release, e.g. `6.1.0-56-amd64`, is Debian's name for the same build; the tree's
/// own release string lacks Debian's suffix). Returns the headers' release.
pub fn check_tree(tree: &Path, headers: &Path) -> Result<String, Error> {
    let (tv, hv) = (makefile_version(tree)?, makefile_version(headers)?);
    if tv != hv {
        return Err(Error::Tree(format!(
            "the source tree is Linux {tv} but the headers ({}) are Linux {hv}",
            headers.display()
        )));
    }
    let (tc, hc) = (
        config_lines(&tree.join(".config"))?,
        config_lines(&headers.join(".config"))?,
    );
    if tc != hc {
        let only_t: Vec<&String> = tc.iter().filter(|l| !hc.contains(l)).take(5).collect();
        let only_h: Vec<&String> = hc.iter().filter(|l| !tc.contains(l)).take(5).collect();
        return Err(Error::Tree(format!(
            "the source tree's .config differs from the headers' (tree only: {only_t:?}; \
             headers only: {only_h:?}); copy {}/.config and run make olddefconfig",
            headers.display()
        )));
    }
    // The release modules are stamped with (vermagic): UTS_RELEASE of the headers.
    let uts = headers.join("include/generated/utsrelease.h");
    let text = std::fs::read_to_string(&uts).map_err(io(format!("reading {}", uts.display())))?;
    text.split('"')
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| Error::Tree(format!("{} has no UTS_RELEASE", uts.display())))
}

/// The headers package a tree prepared by scripts/kernel-tree.sh was configured from.
pub fn prepared_headers(tree: &Path) -> Option<String> {
    let text = std::fs::read_to_string(tree.join(".suture-ready")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("headers=linux-headers-"))
        .map(str::to_string)
}

/// Which kernel object a compiled unit belongs to: kbuild's `.<file>.o.cmd` records
/// `-DMODULE` and `-DKBUILD_MODNAME` for module objects.
pub fn object_of(tree: &Path, file: &str) -> Result<String, Error> {
    let o = Path::new(file).with_extension("o");
    let cmd = tree.join(o.parent().unwrap_or(Path::new(""))).join(format!(
        ".{}.cmd",
        o.file_name().unwrap_or_default().to_string_lossy()
    ));
    let text = std::fs::read_to_string(&cmd).map_err(io(format!("reading {}", cmd.display())))?;
    if !text.contains("-DMODULE") {
        return Ok("vmlinux".into());
    }
    // -DKBUILD_MODNAME='"loop"'
    let name = text
        .split("-DKBUILD_MODNAME=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(|v| {
            v.trim_matches(|c| c == '\'' || c == '"' || c == '\\')
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error::Tree(format!(
                "{} builds a module object but names no KBUILD_MODNAME",
                cmd.display()
            ))
        })?;
    Ok(name)
}

/// A prepared tree, locked for this process.
pub struct Tree {
    pub dir: PathBuf,
    pub cc: String,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Original and patched objects of one unit.
pub struct Built {
    pub file: String,
    pub object: String,
    pub orig: Vec<u8>,
    pub patched: Vec<u8>,
}

impl Tree {
    /// Locks the tree (waiting for other users of it).
    pub fn open(dir: &Path, cc: &str) -> Result<Tree, Error> {
        let lock_path = dir.join(".suture-lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Tree(format!("cannot lock {}: {e}", lock_path.display())))?;
        Ok(Tree {
            dir: dir.to_path_buf(),
            cc: cc.to_string(),
            _lock: lock,
        })
    }

    /// Compiles one unit with kbuild and returns the object's bytes; with `mounts`
    /// (`(patched copy, original path)`), inside a private mount namespace that shows the
    /// copies in place of the originals.
    fn compile(&self, file: &str, mounts: &[(PathBuf, PathBuf)]) -> Result<Vec<u8>, Error> {
        let obj = Path::new(file).with_extension("o");
        let _ = std::fs::remove_file(self.dir.join(&obj));
        let mut cmd = if mounts.is_empty() {
            Command::new("make")
        } else {
            let mut c = Command::new("unshare");
            if !nix::unistd::geteuid().is_root() {
                c.args(["--user", "--map-root-user"]);
            }
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
            c.arg(
                "while [ \"$1\" != -- ]; do mount --bind -- \"$1\" \"$2\" || exit 125; \
                 shift 2; done; shift; exec \"$@\"",
            );
            c.arg("sh");
            for (copy, orig) in mounts {
                c.arg(copy).arg(orig);
            }
            c.args(["--", "make"]);
            c
        };
        let out = cmd
            .arg("-s")
            .arg(format!("CC={}", self.cc))
            .arg("KCFLAGS=-ffunction-sections -fdata-sections")
            .arg(&obj)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(io("running make"))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = text.lines().collect();
            let mut tail = lines[lines.len().saturating_sub(30)..].join("\n");
            if out.status.code() == Some(125) {
                tail.push_str(
                    "\n(bind-mounting the patched sources failed: suture needs root or \
                               unprivileged user namespaces)",
                );
            }
            return Err(Error::Compile {
                file: file.into(),
                tail,
            });
        }
        let path = self.dir.join(&obj);
        std::fs::read(&path).map_err(io(format!(
            "reading {} (is {file} built by this configuration?)",
            path.display()
        )))
    }

    /// Builds every touched unit before and after `diff` (a `-p1` unified diff).
    pub fn build(
        &self,
        diff: &Path,
        files: &[String],
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<Built>, Error> {
        for f in files {
            if !self.dir.join(f).is_file() {
                return Err(Error::Tree(format!(
                    "the fix changes {f}, which the source tree does not have"
                )));
            }
        }
        // The fix applied to copies of the touched files.
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "suture-kbuild-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        let cleanup = Scratch(scratch.clone());
        let mut mounts = Vec::new();
        for f in files {
            let copy = scratch.join(f);
            if let Some(parent) = copy.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("creating {}", parent.display())))?;
            }
            std::fs::copy(self.dir.join(f), &copy)
                .map_err(io(format!("copying {f} to {}", scratch.display())))?;
            mounts.push((copy, self.dir.join(f)));
        }
        let input = std::fs::File::open(diff).map_err(io(format!("reading {}", diff.display())))?;
        let out = Command::new("patch")
            .args(["-p1", "-s", "-f", "--no-backup-if-mismatch", "-r", "-"])
            .current_dir(&scratch)
            .stdin(input)
            .output()
            .map_err(io("running patch"))?;
        if !out.status.success() {
            return Err(Error::Tree(format!(
                "the fix does not apply to {}:\n{}{}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let result = (|| -> Result<Vec<Built>, Error> {
            let mut out = Vec::new();
            for f in files {
                progress(&format!("compiling {f} (original)"));
                let orig = self.compile(f, &[])?;
                progress(&format!("compiling {f} (patched)"));
                let patched = self.compile(f, &mounts)?;
                let object = object_of(&self.dir, f)?;
                out.push(Built {
                    file: f.clone(),
                    object,
                    orig,
                    patched,
                });
            }
            Ok(out)
        })();
        // Leave no object built from patched sources behind.
        for f in files {
            let _ = std::fs::remove_file(self.dir.join(Path::new(f).with_extension("o")));
        }
        drop(cleanup);
        result
    }
}

/// Removes the scratch directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_a_diff() {
        let d = "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c\n--- a/fs/proc/cmdline.c\n\
                 +++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n--- a/x.h\t2020\n+++ b/x.h\t2020\n";
        assert_eq!(touched_files(d), vec!["fs/proc/cmdline.c", "x.h"]);
        assert!(check_files(&touched_files(d)).is_err());
        assert!(check_files(&["a.c".into()]).is_ok());
    }
}
