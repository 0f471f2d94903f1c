//! The agent as a daemon (`suture agent` without `--once`): a full pass every `--interval`,
//! and between them a pass for each process started since that maps a file a patch of the
//! channel is for, learnt from the kernel's exec events (`crate::exec_events`) or, where
//! those are unavailable, by listing `/proc` every `--rescan`. Those passes work from the
//! last full pass's verified repository (`crate::agent::Verified`).

use std::time::Duration;

use suture_process::ids::Pid;

use crate::agent::{run_once, Options, Report, Trigger};
use crate::error::Result;
use crate::host::{self, ProcId, Scan};
use crate::meta::Kind;
use crate::state::Watch;

/// The build-ids a watch between passes looks for: those of the process targets of the
/// agent's channel in a verified pass.
fn watched(r: &Report) -> Vec<String> {
    r.targets
        .iter()
        .filter(|t| t.kind == Kind::Process && t.channel == r.channel)
        .flat_map(|t| t.build_ids.iter().cloned())
        .collect()
}

/// A new process that maps nothing watched is looked at again, at growing intervals, until it
/// is this old: it may be between its fork and its exec, or its dynamic loader may not have
/// mapped the patched library yet.
const YOUNG: Duration = Duration::from_secs(2);

/// How the daemon learns of processes started between full passes.
pub enum NewProcesses {
    /// The kernel's exec events (`crate::exec_events`), read by a thread into the channel.
    ExecEvents(std::sync::mpsc::Receiver<std::io::Result<crate::exec_events::Event>>),
    /// Listing `/proc` at this interval.
    Polling(Duration),
    /// Full passes only.
    Off,
}

impl NewProcesses {
    /// Exec events where the kernel gives them (unless `exec_events` is false), else polling
    /// every `rescan` (zero: off); with the state's record of which and why.
    pub fn start(exec_events: bool, rescan: Duration) -> (NewProcesses, Watch) {
        let fallback = |reason: Option<String>| {
            if rescan.is_zero() {
                (
                    NewProcesses::Off,
                    Watch {
                        mode: "off".into(),
                        reason,
                    },
                )
            } else {
                (
                    NewProcesses::Polling(rescan),
                    Watch {
                        mode: "polling".into(),
                        reason,
                    },
                )
            }
        };
        if !exec_events {
            return fallback(Some("exec events turned off (--no-exec-events)".into()));
        }
        match crate::exec_events::ExecEvents::subscribe() {
            Ok(ev) => {
                if let Err(e) = ev
                    .closer()
                    .and_then(crate::exec_events::unsubscribe_on_termination)
                {
                    tracing::warn!("exec events stay subscribed if the agent is stopped: {e}");
                }
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || loop {
                    match ev.next(Duration::from_secs(3600)) {
                        Ok(None) => {}
                        Ok(Some(e)) => {
                            if tx.send(Ok(e)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                });
                (
                    NewProcesses::ExecEvents(rx),
                    Watch {
                        mode: "exec-events".into(),
                        reason: None,
                    },
                )
            }
            Err(e) => fallback(Some(format!(
                "the kernel's process events (proc connector) are unavailable: {e}"
            ))),
        }
    }
}

/// A new process the daemon looks at until it maps a watched file or is no longer young.
struct Candidate {
    process: ProcId,
    /// When it ran `execve` (`CLOCK_MONOTONIC` ns), from an exec event.
    exec_ns: Option<u64>,
    next: std::time::Instant,
    step: Duration,
}

/// Runs forever: a full pass every `interval`, and between them a pass for each process that
/// started since and maps a file with the build-id of a process target of the channel (as the
/// last verified pass saw them), found as `new` says (exec events or polling). Such a pass
/// works from the repository as the last full pass verified it and the targets downloaded
/// since ([`crate::agent::Verified`]; no network while the verified timestamp has not expired, else it
/// fetches and verifies like any pass). `each` gets every pass's result.
pub fn run_daemon(
    opts: &Options,
    interval: Duration,
    mut new: NewProcesses,
    mut watch_state: Watch,
    mut each: impl FnMut(Result<Report>),
) -> ! {
    use std::collections::HashSet;
    use std::time::Instant;
    let mut opts = opts.clone();
    opts.verified = Some(Default::default());
    let opts = &opts;
    let scope = |opts: &Options| -> HashSet<ProcId> {
        host::processes(opts.only_pids.as_deref())
            .into_iter()
            .filter_map(|p| ProcId::of(p.0))
            .collect()
    };
    let me = std::process::id() as i32;
    let mut watch: Vec<String> = Vec::new();
    loop {
        let mut known = scope(opts);
        let mut full = opts.clone();
        full.watch = Some(watch_state.clone());
        let r = run_once(&full);
        if let Ok(rep) = &r {
            watch = watched(rep);
        }
        each(r);
        let next = Instant::now() + interval;
        let mut young: Vec<Candidate> = Vec::new();
        // Build-ids of mapped files by file identity, kept until the next full pass (every
        // exec of a compiler maps the same few files): a new process costs a read of its
        // maps. A stale entry can only make a pass look at a process (where apply checks the
        // build-id again) or miss one until the next full pass.
        let mut scan = Scan::default();
        loop {
            let now = Instant::now();
            if now >= next {
                break;
            }
            let wake = young.iter().map(|c| c.next).min().unwrap_or(next).min(next);
            let fresh = |p: ProcId, exec_ns: Option<u64>, young: &mut Vec<Candidate>| {
                let now = Instant::now();
                match young.iter_mut().find(|c| c.process == p) {
                    Some(c) => {
                        c.exec_ns = exec_ns.or(c.exec_ns);
                        c.next = now;
                        c.step = Duration::from_millis(1);
                    }
                    None => young.push(Candidate {
                        process: p,
                        exec_ns,
                        next: now,
                        step: Duration::from_millis(1),
                    }),
                }
            };
            let mut lost_events = false;
            match &new {
                NewProcesses::ExecEvents(rx) => {
                    let mut got = rx.recv_timeout(wake.saturating_duration_since(now));
                    loop {
                        match got {
                            Ok(Ok(crate::exec_events::Event::Exec { tgid, at_ns })) => {
                                if tgid != me && host::in_scope(tgid, opts.only_pids.as_deref()) {
                                    if let Some(p) = ProcId::of(tgid) {
                                        fresh(p, Some(at_ns), &mut young);
                                    }
                                }
                            }
                            Ok(Ok(crate::exec_events::Event::Lost)) => lost_events = true,
                            Ok(Err(e)) => {
                                tracing::warn!("exec events failed ({e}); polling instead");
                                watch_state = Watch {
                                    mode: "polling".into(),
                                    reason: Some(format!("reading exec events failed: {e}")),
                                };
                                new = NewProcesses::Polling(Duration::from_secs(1));
                                lost_events = true;
                                break;
                            }
                            Err(_) => break,
                        }
                        got = rx
                            .try_recv()
                            .map_err(|_| std::sync::mpsc::RecvTimeoutError::Timeout);
                    }
                }
                NewProcesses::Polling(every) => {
                    std::thread::sleep((*every).min(wake.saturating_duration_since(now)));
                    lost_events = true;
                }
                NewProcesses::Off => std::thread::sleep(wake.saturating_duration_since(now)),
            }
            if watch.is_empty() {
                young.clear();
                continue;
            }
            if lost_events {
                // Every process not seen before (polling; or events were lost).
                let current = scope(opts);
                for &p in current.difference(&known) {
                    if p.pid != me {
                        fresh(p, None, &mut young);
                    }
                }
                known = current;
            }
            let now = Instant::now();
            let mut hits = std::collections::BTreeMap::new();
            let mut hit_by_poll = false;
            young.retain_mut(|c| {
                if c.next > now {
                    return true;
                }
                if !c.process.alive() {
                    return false;
                }
                let pid = Pid(c.process.pid);
                if watch.iter().any(|id| !scan.mapping(&[pid], id).is_empty()) {
                    tracing::debug!(
                        pid = c.process.pid,
                        since_exec_us = c
                            .exec_ns
                            .map(|at| crate::exec_events::monotonic_ns().saturating_sub(at) / 1000),
                        "a new process maps a watched file"
                    );
                    match c.exec_ns {
                        Some(at) => {
                            hits.insert(c.process.pid, at);
                        }
                        None => {
                            hits.insert(c.process.pid, 0);
                            hit_by_poll = true;
                        }
                    }
                    return false;
                }
                if c.process.age().is_none_or(|a| a >= YOUNG) {
                    return false;
                }
                c.next = now + c.step;
                c.step = (c.step * 2).min(Duration::from_millis(250));
                true
            });
            if hits.is_empty() {
                continue;
            }
            let mut o = opts.clone();
            o.only_pids = Some(hits.keys().copied().collect());
            o.watch = Some(watch_state.clone());
            o.trigger = if hit_by_poll {
                Trigger::Rescan
            } else {
                Trigger::ExecEvent(hits)
            };
            let r = run_once(&o);
            if let Ok(rep) = &r {
                watch = watched(rep);
            }
            each(r);
        }
    }
}
