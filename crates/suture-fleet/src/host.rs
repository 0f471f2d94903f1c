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
}

/// The processes an agent considers: `only` when given (an operator's scope, and how tests
/// simulate several hosts on one machine), else every process but this one.
pub fn processes(only: Option<&[i32]>) -> Vec<Pid> {
    match only {
        Some(pids) => pids.iter().copied().map(Pid).collect(),
        None => suture_process::targets::all_pids(),
    }
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
        let gone = ProcId {
            pid: me,
            start_time: a.start_time + 1,
        };
        assert!(!gone.alive());
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
