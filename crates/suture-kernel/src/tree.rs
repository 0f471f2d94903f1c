//! The kernel source tree: checking it against the target's headers, which kernel object a
//! unit belongs to, and compiling single translation units with kbuild.
//!
//! The tree is one prepared by `scripts/kernel-tree.sh` (Debian's `linux-source` unpacked, the
//! headers' `.config`, `modules_prepare` with the kernel's compiler). Units are compiled by
//! kbuild itself (`make <dir>/<file>.o`, so every flag, `-DMODULE`/`KBUILD_MODNAME` and objtool
//! are Debian's) plus `-ffunction-sections -fdata-sections`. The caller chooses how `make`
//! runs: `suture_build::kernel` runs the patched compile in its private mount namespace, which
//! shows the patched copies over the originals, so the tree's sources are never modified.
//! kbuild still writes the unit's object and `.cmd` file into the tree, so users of one tree
//! are serialised by an exclusive lock on `<tree>/.suture-lock` (the lock the test tiers take
//! too).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Tree(String),
    /// `code` is make's exit code (or that of the sandbox running it).
    #[error("compiling {file} failed:\n{tail}")]
    Compile {
        file: String,
        code: Option<i32>,
        tail: String,
    },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |err| Error::Io { what, err }
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

    /// Compiles one unit with kbuild and returns the object's bytes. `make` is the command
    /// that runs make (plain, or wrapped by the caller); the arguments are added here.
    pub fn compile(&self, file: &str, mut make: Command) -> Result<Vec<u8>, Error> {
        let obj = Path::new(file).with_extension("o");
        self.remove_object(file);
        let out = make
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
            return Err(Error::Compile {
                file: file.into(),
                code: out.status.code(),
                tail: lines[lines.len().saturating_sub(30)..].join("\n"),
            });
        }
        let path = self.dir.join(&obj);
        std::fs::read(&path).map_err(io(format!(
            "reading {} (is {file} built by this configuration?)",
            path.display()
        )))
    }

    /// Deletes the object kbuild wrote for `file` (none is left built from patched sources).
    pub fn remove_object(&self, file: &str) {
        let _ = std::fs::remove_file(self.dir.join(Path::new(file).with_extension("o")));
    }
}
