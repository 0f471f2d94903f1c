//! The private mount namespace both pipelines compile patched sources in.
//!
//! A command runs under `unshare --mount --propagation private` (plus `--user
//! --map-root-user` when not root), and a small shell prologue bind-mounts each patched copy
//! over its original path before `exec`ing the command. The compiler therefore sees the same
//! paths (`__FILE__`, debug info, `#include "..."` lookup relative to the including file) as
//! the real build, the source tree is never written, and the namespace vanishes with the
//! process whatever happens to suture.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// Exit status of the prologue when a bind mount fails.
pub const MOUNT_FAILED: i32 = 125;

/// What to add to a failed command's output when its status is [`MOUNT_FAILED`].
pub const MOUNT_FAILED_HINT: &str =
    "(bind-mounting the patched sources failed: suture needs root or unprivileged user \
     namespaces)";

/// A bind mount: the patched copy shown at the original path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub copy: PathBuf,
    pub original: PathBuf,
}

/// `program` to run with `mounts` in place. Without mounts it is the plain command: nothing
/// needs hiding, so no namespace is created.
pub fn command(mounts: &[Mount], program: impl AsRef<OsStr>) -> Command {
    if mounts.is_empty() {
        return Command::new(program);
    }
    let mut c = Command::new("unshare");
    if !is_root() {
        c.args(["--user", "--map-root-user"]);
    }
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
    c.arg(
        "while [ \"$1\" != -- ]; do mount --bind -- \"$1\" \"$2\" || exit 125; \
         shift 2; done; shift; exec \"$@\"",
    );
    c.arg("suture-bind");
    for m in mounts {
        c.arg(&m.copy).arg(&m.original);
    }
    c.arg("--").arg(program);
    c
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("suture-sandbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn no_mounts_is_the_plain_command() {
        let c = command(&[], "cc");
        assert_eq!(c.get_program(), "cc");
        assert_eq!(c.get_args().count(), 0);
    }

    /// The command sees the copy at the original path; the original file is untouched.
    #[test]
    fn the_copy_is_seen_at_the_original_path() {
        let d = scratch("bind");
        let (orig, copy) = (d.join("x.c"), d.join("x.patched.c"));
        std::fs::write(&orig, "original\n").unwrap();
        std::fs::write(&copy, "patched\n").unwrap();
        let out = command(
            &[Mount {
                copy: copy.clone(),
                original: orig.clone(),
            }],
            "cat",
        )
        .arg(&orig)
        .output()
        .unwrap();
        if out.status.code() == Some(MOUNT_FAILED) {
            eprintln!("note: no mount namespaces here, skipped");
            return;
        }
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "patched\n");
        assert_eq!(std::fs::read_to_string(&orig).unwrap(), "original\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_mount_exits_with_its_own_status() {
        let d = scratch("fail");
        let out = command(
            &[Mount {
                copy: d.join("missing"),
                original: d.join("also-missing"),
            }],
            "true",
        )
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
        assert!(!out.success());
        let _ = std::fs::remove_dir_all(&d);
    }
}
