//! Apply, revert and status over several processes: the processes given, or every process the
//! operation concerns (found by scanning `/proc`). What an agent or the CLI calls; each
//! process gets its own typed outcome, and one process's failure never stops the others.
//!
//! Apply and revert work on up to `jobs` processes at once ([`for_each_process`]) and hand
//! each outcome to the caller's `each` as soon as that process is done, in completion order.
//! Running several at once matters when processes wait: a transition's checks can take
//! seconds, and a host runs many processes of one binary. Their stops take turns (see
//! [`crate::stop`]); the default is one process at a time except for transitions
//! ([`default_jobs`]). Status reads one process per step.

use std::sync::{mpsc, Mutex};
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

/// How many processes apply and revert work on at once unless told otherwise: 1 (one after
/// another), but [`TRANSITION_JOBS`] for an apply with a per-thread transition, which spends
/// its time waiting. Working on several processes at once runs one's preparation (parsing
/// files, the pre-stop scan) beside another's stop, on the same processors.
pub const DEFAULT_JOBS: usize = 1;
/// The default for `apply --transition`.
pub const TRANSITION_JOBS: usize = 8;

/// The default number of processes to work on at once.
pub fn default_jobs(transition: bool) -> usize {
    if transition {
        TRANSITION_JOBS
    } else {
        DEFAULT_JOBS
    }
}

/// Runs `work` for every pid (a pid listed twice once), on up to `jobs` threads (1: one after
/// another, in order), and calls `each` on the calling thread with every outcome as it
/// completes.
pub fn for_each_process<T: Send, E: Send>(
    mut pids: Vec<Pid>,
    jobs: usize,
    work: impl Fn(Pid) -> Result<T, E> + Sync,
    mut each: impl FnMut(ProcessOutcome<T, E>),
) {
    // Two workers on one process would each take the other's region for a leftover.
    let mut seen = std::collections::HashSet::new();
    pids.retain(|p| seen.insert(*p));
    let jobs = jobs.clamp(1, pids.len().max(1));
    if jobs == 1 {
        for pid in pids {
            each(ProcessOutcome {
                pid,
                result: work(pid),
            });
        }
        return;
    }
    let queue = Mutex::new(pids.into_iter());
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let (tx, queue, work) = (tx.clone(), &queue, &work);
            s.spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(pid) = next else { break };
                let result = work(pid);
                if tx.send(ProcessOutcome { pid, result }).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for o in rx {
            each(o);
        }
    });
}

/// Applies a bare patch object (from `suture diff -o`) with `opts` to each target, `jobs` at
/// a time; `each` gets every outcome. With [`Targets::All`], the targets are the processes
/// mapping `opts.object` (a path suffix).
pub fn apply_object(
    patch: &[u8],
    targets: &Targets,
    opts: &ApplyOptions,
    jobs: usize,
    each: impl FnMut(ProcessOutcome<Applied>),
) -> Result<(), NoTargets> {
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
    for_each_process(pids, jobs, |pid| apply::apply(pid, patch, opts), each);
    Ok(())
}

/// Reverts patch `patch_id` in each target. With [`Targets::All`], the targets are the
/// processes where it is live.
pub fn revert(
    patch_id: &str,
    targets: &Targets,
    timeout: Duration,
    scan_suspended: bool,
    jobs: usize,
    each: impl FnMut(ProcessOutcome<apply::Reverted>),
) -> Result<(), NoTargets> {
    let pids = match targets {
        Targets::Pids(p) => p.clone(),
        Targets::All => with_patch(patch_id),
    };
    if pids.is_empty() {
        return Err(NoTargets::NotLive {
            patch_id: patch_id.to_string(),
        });
    }
    let work = |pid| apply::revert_with(pid, patch_id, timeout, scan_suspended);
    for_each_process(pids, jobs, work, each);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pid is worked on once (a pid listed twice too), each outcome reaches `each` on
    /// the calling thread, in order with one job and all of them with several, which do run
    /// at the same time.
    #[test]
    fn each_process_once_in_order_or_side_by_side() {
        let pids: Vec<Pid> = [3, 1, 2, 3, 1].into_iter().map(Pid).collect();
        let mut seen = Vec::new();
        let ok = |p: Pid| -> Result<i32, ()> { Ok(p.0 * 10) };
        for_each_process(pids.clone(), 1, ok, |o| seen.push((o.pid.0, o.result)));
        assert_eq!(seen, [(3, Ok(30)), (1, Ok(10)), (2, Ok(20))]);

        // Three jobs: each work item waits (at most a minute) until all three have started,
        // which only side by side can happen, and says whether they did.
        let started = (Mutex::new(0), std::sync::Condvar::new());
        let me = std::thread::current().id();
        let mut seen = Vec::new();
        let work = |p: Pid| -> Result<(i32, bool), ()> {
            let (count, all) = &started;
            let mut n = count.lock().unwrap();
            *n += 1;
            all.notify_all();
            let limit = std::time::Duration::from_secs(60);
            let (n, _) = all.wait_timeout_while(n, limit, |n| *n < 3).unwrap();
            Ok((p.0, *n == 3))
        };
        for_each_process(pids, 3, work, |o| {
            assert_eq!(std::thread::current().id(), me);
            seen.push(o.result.unwrap());
        });
        seen.sort();
        assert_eq!(seen, [(1, true), (2, true), (3, true)]);
    }
}
