//! Fault injection for tests: when `SUTURE_FAILPOINT` names a point, suture kills itself with
//! SIGKILL there, to prove that a killed suture never leaves a target half-patched.
//!
//! Points: `apply:mapped` (region mapped, nothing written), `apply:written` (code written, not
//! switched), `apply:stopped` (switch stop taken, stacks checked), `commit:started` (a thread
//! is pointed at the commit routine), `commit:midway` (the routine made its first system call),
//! `revert:stopped` (revert's switch stop taken).

pub fn hit(point: &str) {
    if std::env::var_os("SUTURE_FAILPOINT").is_some_and(|v| v == point) {
        tracing::warn!(point, "failpoint: killing suture");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
