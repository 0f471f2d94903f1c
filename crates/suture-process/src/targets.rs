//! Apply, revert and status over several processes: the processes given, or every process the
//! operation concerns (found by scanning `/proc`). What an agent or the CLI calls; each
//! process gets its own typed outcome, and one process's failure never stops the others.
//!
//! The operations return iterators that do one process per step, so a caller can report each
//! process as soon as it is done.

use std::time::Duration;

use thiserror::Error;

use crate::apply::{self, Applied, ApplyError, ApplyOptions, LivePatch};
use crate::ids::Pid;

/// Which processes an operation is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// These processes, in this order.
    Pids(Vec<Pid>),
    /// Every process (but this one) the operation concerns: for apply, those mapping the
    /// patched object; for revert, those where the patch is present; for status, all.
    All,
}

/// The result of an operation in one process. An error says what became of the target
/// ([`ApplyError::outcome`]).
#[derive(Debug)]
pub struct ProcessOutcome<T, E = ApplyError> {
    pub pid: Pid,
    pub result: Result<T, E>,
}

/// [`Targets::All`] found no process to work on.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NoTargets {
    #[error("no process maps {object}")]
    NoObject { object: String },
    #[error("no process maps an object with build-id {build_id} ({file_name})")]
    NoBuildId { build_id: String, file_name: String },
    #[error("patch {patch_id:?} is not live in any process")]
    NotLive { patch_id: String },
    /// A bare patch object names its object by path; without one there is nothing to look
    /// for in other processes.
    #[error("applying to every process needs the object the patch is for")]
    ObjectNeeded,
}

/// Every process but this one, by pid.
pub fn all_pids() -> Vec<Pid> {
    let me = std::process::id() as i32;
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&p: &i32| p != me)
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v.into_iter().map(Pid).collect()
}

/// Processes mapping a file whose path ends with `object`.
pub fn mapping(object: &str) -> Vec<Pid> {
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/maps"))
                .map(|m| m.lines().any(|l| l.trim_end().ends_with(object)))
                .unwrap_or(false)
        })
        .collect()
}

/// Processes where the patch with this id is live (regions kept after a revert do not
/// count: there is nothing to revert there).
pub fn with_patch(patch_id: &str) -> Vec<Pid> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            apply::status(p)
                .map(|v| {
                    v.iter().any(|x| {
                        x.header.patch_id == patch_id
                            && x.header.state == crate::header::State::Live
                    })
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Applies a bare patch object (from `suture diff -o`) with `opts` to each target. With
/// [`Targets::All`], the targets are the processes mapping `opts.object` (a path suffix).
pub fn apply_object<'a>(
    patch: &'a [u8],
    targets: &Targets,
    opts: &'a ApplyOptions,
) -> Result<impl Iterator<Item = ProcessOutcome<Applied>> + 'a, NoTargets> {
    let pids = match targets {
        Targets::Pids(p) => p.clone(),
        Targets::All => {
            let object = opts.object.as_deref().ok_or(NoTargets::ObjectNeeded)?;
            let found = mapping(object);
            if found.is_empty() {
                return Err(NoTargets::NoObject {
                    object: object.to_string(),
                });
            }
            found
        }
    };
    Ok(pids.into_iter().map(move |pid| ProcessOutcome {
        pid,
        result: apply::apply(pid, patch, opts),
    }))
}

/// Reverts patch `patch_id` in each target. With [`Targets::All`], the targets are the
/// processes where it is live.
pub fn revert<'a>(
    patch_id: &'a str,
    targets: &Targets,
    timeout: Duration,
    scan_suspended: bool,
) -> Result<impl Iterator<Item = ProcessOutcome<apply::Reverted>> + 'a, NoTargets> {
    let pids = match targets {
        Targets::Pids(p) => p.clone(),
        Targets::All => with_patch(patch_id),
    };
    if pids.is_empty() {
        return Err(NoTargets::NotLive {
            patch_id: patch_id.to_string(),
        });
    }
    Ok(pids.into_iter().map(move |pid| ProcessOutcome {
        pid,
        result: apply::revert_with(pid, patch_id, timeout, scan_suspended),
    }))
}

/// The patch regions of each target ([`Targets::All`]: every process but this one; processes
/// that vanish or cannot be read while scanning give errors the caller may ignore).
pub fn status(
    targets: &Targets,
) -> impl Iterator<Item = ProcessOutcome<Vec<LivePatch>, crate::error::Error>> {
    let pids = match targets {
        Targets::Pids(p) => p.clone(),
        Targets::All => all_pids(),
    };
    pids.into_iter().map(|pid| ProcessOutcome {
        pid,
        result: apply::status(pid),
    })
}
