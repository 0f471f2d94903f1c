//! suture's test kit: the helpers every test suite of the workspace shares. A dev-dependency
//! only (`publish = false`); std only, so it never slows a build down.
//!
//! # Fixture convention
//! - Fixture sources live in files under the owning crate's `tests/fixtures/<case>/` (or, for
//!   the differ corpora, `tests/cases/<case>/`, `tests/kernel/<case>/`, `tests/real/<case>/`
//!   with a `case.txt`), read with `include_str!` or from `CARGO_MANIFEST_DIR`. Small programs
//!   written inline in a test are fine when the test is about that program.
//! - A test builds in its own scratch directory ([`scratch::Scratch`]), never in the source
//!   tree: `<CARGO_TARGET_TMPDIR>/<suite>/<test>-<pid>`, emptied when created and removed when
//!   the test passes (kept after a failure, for a look).
//! - Objects are compiled with [`cc::compile`] (cached by source, flags and compiler
//!   version) or, for multi-file programs linked in place, [`cc::run_cc`].
//!
//! # Time
//! Tests never assert on durations. They wait for events (a line printed, a state reached)
//! with [`WAIT`], a bound generous enough for a loaded machine (it only decides how long a
//! broken test hangs before it fails), and give timeouts of the code under test ([`TIMEOUT`])
//! the same generosity unless the test is about the timeout itself.
//!
//! # Tiers
//! Tiers that need prepared caches (kernel tree, Debian sources, QEMU guest, memcached) get
//! their root from an environment variable through [`tier::root`]: unset, the tier is skipped
//! locally and fails under `CI`.

use std::time::Duration;

pub mod cc;
pub mod net;
pub mod proc;
pub mod scratch;
pub mod tier;

pub use proc::{spawn_lines, wait_until, KillOnDrop, Lines};
pub use scratch::Scratch;

/// How long a test waits for an event before it fails: generous, for loaded machines.
pub const WAIT: Duration = Duration::from_secs(120);

/// The timeout tests give to the code under test (apply, revert) when the timeout is not what
/// they test: a refusal for being busy must mean busy, not slow.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Text of a finished command for assertion messages: exit code, stdout and stderr.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` with its stdout a pipe whose reader is gone before it writes (`cmd | head -0`),
/// capturing stderr; checks that it did not panic.
pub fn run_into_closed_pipe(cmd: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{cmd:?} panicked:\n{err}");
    out
}

/// Runs `cmd` to completion, capturing its output.
pub fn run(cmd: &mut std::process::Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}
