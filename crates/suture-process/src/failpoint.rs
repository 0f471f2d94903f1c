//! Fault injection for tests: when `SUTURE_FAILPOINT` names a point, suture kills itself with
//! SIGKILL there, to prove that a killed suture never leaves a target half-patched.
//!
//! Points: `remote:stepped` (a remote system call has run; its thread is stopped again),
//! `apply:mapped` (region mapped, nothing written), `apply:written` (code written, not
//! switched), `apply:stopped` (switch stop taken, stacks checked), `apply:armed` and
//! `revert:armed` (return stubs armed for busy threads, target resumed; see `retstub.rs`),
//! `commit:armed` (direct commit: a thread is pointed at the commit routine as the safety
//! net, nothing written), `commit:writing` (direct commit: the first jump is written),
//! `commit:started` (a thread
//! is pointed at the commit routine), `commit:running` (the routine was let run to its marker
//! signal), `commit:midway` (the routine made its first system call; this point makes suture
//! follow the routine system call by system call, the path it takes when no marker signal is
//! usable; these three points select the design that runs the routine in the target), `revert:stopped` (revert's switch stop taken), `ifunc:started` and `ifunc:running`
//! (a thread is pointed at, then let run, the routine that calls IFUNC resolvers: see
//! `crate::ifunc`).

pub fn hit(point: &str) {
    if std::env::var_os("SUTURE_FAILPOINT").is_some_and(|v| v == point) {
        tracing::warn!(point, "failpoint: killing suture");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Whether `SUTURE_FAILPOINT` names `point` (for points that change how suture proceeds).
pub fn armed(point: &str) -> bool {
    std::env::var_os("SUTURE_FAILPOINT").is_some_and(|v| v == point)
}
