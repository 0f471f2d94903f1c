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
    #[error("{} names no kernel version", file.display())]
    NoVersion { file: PathBuf },
    #[error(
        "the source tree is Linux {tree} but the headers ({}) are Linux {headers}",
        dir.display()
    )]
    VersionMismatch {
        tree: String,
        headers: String,
        dir: PathBuf,
    },
    #[error(
        "the source tree's .config differs from the headers' (tree only: {tree_only:?}; \
         headers only: {headers_only:?}); copy {}/.config and run make olddefconfig",
        headers.display()
    )]
    ConfigMismatch {
        headers: PathBuf,
        /// Up to five lines of each side.
        tree_only: Vec<String>,
        headers_only: Vec<String>,
    },
    #[error("{} has no UTS_RELEASE", file.display())]
    NoRelease { file: PathBuf },
    #[error("{} builds a module object but names no KBUILD_MODNAME", file.display())]
    NoModuleName { file: PathBuf },
    #[error("cannot lock {}", file.display())]
    Lock {
        file: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    /// `code` is make's exit code (or that of the sandbox running it).
    #[error("compiling {file} failed:\n{tail}")]
    Compile {
        file: String,
        code: Option<i32>,
        tail: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A failed kbuild compile of `what`, with the last 30 lines make wrote on stderr.
pub(crate) fn compile_failed(what: &str, out: &std::process::Output) -> Error {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    Error::Compile {
        file: what.into(),
        code: out.status.code(),
        tail: lines[lines.len().saturating_sub(30)..].join("\n"),
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
    Err(Error::NoVersion { file: path })
}

/// The source tree's kernel version and configuration must be those of the headers (the
/// headers' release, e.g. `6.1.0-56-amd64`, is Debian's name for the same build; the tree's
/// own release string lacks Debian's suffix). Returns the headers' release.
pub fn check_tree(tree: &Path, headers: &Path) -> Result<String, Error> {
    let (tv, hv) = (makefile_version(tree)?, makefile_version(headers)?);
    if tv != hv {
        return Err(Error::VersionMismatch {
            tree: tv,
            headers: hv,
            dir: headers.to_path_buf(),
        });
    }
    let (tc, hc) = (
        config_lines(&tree.join(".config"))?,
        config_lines(&headers.join(".config"))?,
    );
    if tc != hc {
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter()
                .filter(|l| !b.contains(l))
                .take(5)
                .cloned()
                .collect()
        };
        return Err(Error::ConfigMismatch {
            headers: headers.to_path_buf(),
            tree_only: only(&tc, &hc),
            headers_only: only(&hc, &tc),
        });
    }
    // The release modules are stamped with (vermagic): UTS_RELEASE of the headers.
    let uts = headers.join("include/generated/utsrelease.h");
    let text = std::fs::read_to_string(&uts).map_err(io(format!("reading {}", uts.display())))?;
    text.split('"')
        .nth(1)
        .map(str::to_string)
        .ok_or(Error::NoRelease { file: uts })
}

/// The headers a tree prepared by scripts/kernel-tree.sh was configured from: the recorded
/// `headers_dir` (a release's headers unpacked next to the tree), else the installed
/// `/usr/src/linux-headers-<release>` of the recorded package.
pub fn prepared_headers(tree: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(tree.join(".suture-ready")).ok()?;
    if let Some(dir) = text.lines().find_map(|l| l.strip_prefix("headers_dir=")) {
        return Some(dir.into());
    }
    text.lines()
        .find_map(|l| l.strip_prefix("headers=linux-headers-"))
        .map(|rel| format!("/usr/src/linux-headers-{rel}").into())
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
        .ok_or_else(|| Error::NoModuleName { file: cmd.clone() })?;
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
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, source)| Error::Lock {
                file: lock_path.clone(),
                source,
            },
        )?;
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
            return Err(compile_failed(file, &out));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("suture-tree-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (f, text) in files {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    const MAKEFILE: &str = "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\n";

    #[test]
    fn tree_and_headers_must_agree() {
        let tree = dir("t", &[("Makefile", MAKEFILE), (".config", "CONFIG_A=y\n")]);
        let headers = dir(
            "h",
            &[
                ("Makefile", MAKEFILE),
                (".config", "# comment\nCONFIG_A=y\n"),
                (
                    "include/generated/utsrelease.h",
                    "#define UTS_RELEASE \"6.1.0-57-amd64\"\n",
                ),
            ],
        );
        assert_eq!(check_tree(&tree, &headers).unwrap(), "6.1.0-57-amd64");
        std::fs::write(headers.join(".config"), "CONFIG_A=y\nCONFIG_B=y\n").unwrap();
        match check_tree(&tree, &headers) {
            Err(Error::ConfigMismatch {
                tree_only,
                headers_only,
                ..
            }) => assert_eq!(
                (tree_only, headers_only),
                (vec![], vec!["CONFIG_B=y".into()])
            ),
            other => panic!("{other:?}"),
        }
        std::fs::write(headers.join("Makefile"), MAKEFILE.replace("192", "1")).unwrap();
        let e = check_tree(&tree, &headers).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the source tree is Linux 6.1.192 but the headers"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&tree);
        let _ = std::fs::remove_dir_all(&headers);
    }

    #[test]
    fn module_objects_are_named_by_kbuild() {
        let tree = dir(
            "o",
            &[
                (
                    "fs/.pipe.o.cmd",
                    "cmd_fs/pipe.o := gcc -c -o fs/pipe.o fs/pipe.c\n",
                ),
                (
                    "drivers/block/.loop.o.cmd",
                    "cmd := gcc -DMODULE -DKBUILD_MODNAME='\"loop\"' -c\n",
                ),
                ("drivers/x/.y.o.cmd", "cmd := gcc -DMODULE -c\n"),
            ],
        );
        assert_eq!(object_of(&tree, "fs/pipe.c").unwrap(), "vmlinux");
        assert_eq!(object_of(&tree, "drivers/block/loop.c").unwrap(), "loop");
        assert!(matches!(
            object_of(&tree, "drivers/x/y.c"),
            Err(Error::NoModuleName { .. })
        ));
        let _ = std::fs::remove_dir_all(&tree);
    }
}
