//! What this host runs: its processes (identified by pid and start time, so a reused pid is
//! never taken for the process a patch was applied to) and the build-ids of the files they
//! map. The build-ids come from `suture_process::bundle::BuildIds`, the same lookup `suture
//! apply` uses, so the agent selects exactly the processes apply would patch.

use serde::{Deserialize, Serialize};
use suture_process::bundle::BuildIds;
use suture_process::ids::Pid;

/// A process: its pid and its start time (clock ticks since boot, field 22 of
/// `/proc/PID/stat`). Two processes with the same pid have different start times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcId {
    /// The process `pid` as it is now; `None` when there is no such process.
    pub fn of(pid: i32) -> Option<ProcId> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses: fields after it are
        // counted from the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let start_time = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(ProcId { pid, start_time })
    }

    /// Whether this very process still exists (same pid, same start time).
    pub fn alive(&self) -> bool {
        ProcId::of(self.pid) == Some(*self)
    }

    /// How long the process has been running (from its start time and `/proc/uptime`).
    pub fn age(&self) -> Option<std::time::Duration> {
        let up: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()?? as f64;
        let started = self.start_time as f64 / hz;
        Some(std::time::Duration::from_secs_f64((up - started).max(0.0)))
    }
}

/// The parent pid of a process.
fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes an agent considers: with `only` (an operator's scope, and how tests simulate
/// several hosts on one machine), those processes and all their descendants; else every
/// process but this one.
pub fn processes(only: Option<&[i32]>) -> Vec<Pid> {
    let all = suture_process::targets::all_pids();
    let Some(roots) = only else {
        return all;
    };
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    for p in &all {
        if let Some(pp) = ppid(p.0) {
            children.entry(pp).or_default().push(p.0);
        }
    }
    let mut out: Vec<i32> = Vec::new();
    let mut todo: Vec<i32> = roots.to_vec();
    while let Some(p) = todo.pop() {
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        todo.extend(children.get(&p).into_iter().flatten());
    }
    out.sort_unstable();
    out.into_iter().map(Pid).collect()
}

/// Whether `pid` is among the processes [`processes`] gives for `only` (itself or a
/// descendant of one of them; every process when `only` is `None`).
pub fn in_scope(pid: i32, only: Option<&[i32]>) -> bool {
    let Some(roots) = only else {
        return true;
    };
    let mut p = pid;
    // Bounded: a parent chain is never longer than the pid space, and a cycle cannot occur
    // (but a racing exit can make a chain end early).
    for _ in 0..4096 {
        if roots.contains(&p) {
            return true;
        }
        match ppid(p) {
            Some(pp) if pp > 0 && pp != p => p = pp,
            _ => return false,
        }
    }
    false
}

/// Build-ids of the files mapped by processes, cached by file identity for one pass.
#[derive(Default)]
pub struct Scan {
    cache: BuildIds,
}

impl Scan {
    /// The processes among `pids` that map a file with the build-id `build_id_hex`, with
    /// that file as the process names it.
    pub fn mapping(&mut self, pids: &[Pid], build_id_hex: &str) -> Vec<(Pid, String)> {
        let Some(id) = suture_bundle::parse_hex(build_id_hex) else {
            return Vec::new();
        };
        pids.iter()
            .filter_map(|&p| {
                let (shown, _) = self.cache.find_object(p, &id).ok()?;
                Some((p, shown))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_stable_identity() {
        let me = std::process::id() as i32;
        let a = ProcId::of(me).expect("own stat");
        assert_eq!(ProcId::of(me), Some(a));
        assert!(a.alive());
        assert!(a.age().is_some());
        let gone = ProcId {
            pid: me,
            start_time: a.start_time + 1,
        };
        assert!(!gone.alive());
    }

    #[test]
    fn scope_takes_descendants() {
        use std::process::{Command, Stdio};
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let scope = processes(Some(&[me]));
        let child_in_scope = in_scope(child.id() as i32, Some(&[me]));
        let _ = child.kill();
        let _ = child.wait();
        assert!(scope.contains(&Pid(me)), "{scope:?}");
        assert!(scope.contains(&Pid(child.id() as i32)), "{scope:?}");
        assert!(!scope.contains(&Pid(1)), "{scope:?}");
        assert!(child_in_scope);
        assert!(in_scope(me, Some(&[me])));
        assert!(!in_scope(1, Some(&[me])));
        assert!(in_scope(1, None));
    }

    #[test]
    fn this_process_maps_its_own_build_id() {
        let me = Pid(std::process::id() as i32);
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let Some(id) = suture_elf::build_id(&exe) else {
            return; // a test binary linked without a build-id has nothing to find
        };
        let mut scan = Scan::default();
        let found = scan.mapping(&[me], &suture_bundle::hex(&id));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(scan.mapping(&[me], "00").is_empty());
    }
}
