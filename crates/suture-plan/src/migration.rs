//! One VM's live migration: local-disk copy with mirrored writes, then pre-copy of memory in
//! rounds against the dirty rate, then stop-and-copy. Formulas in docs/plan.md.

use serde::Serialize;

use crate::inventory::{Policy, VmClass};

/// How one VM's migration goes at a given bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Migration {
    /// From the start of the disk copy to the VM running on the destination, s.
    pub seconds: f64,
    /// The VM's pause (stop-and-copy plus the policy's switch-over cost), s.
    pub downtime_seconds: f64,
    /// Bytes sent: disk, writes mirrored during the copy, every memory round, the final copy.
    pub bytes: f64,
    /// Memory rounds sent while the VM ran (round 0 is the whole memory).
    pub rounds: u32,
    /// False when the copy could not reach the downtime target: the disk's write rate or the
    /// memory's dirty rate is not below the bandwidth, or `max_rounds` ran out.
    pub converged: bool,
}

/// Migrates `vm` with `bandwidth` bytes/s available to it.
///
/// Disk: a mirror copies the disk while forwarding every new write, so the bulk copy advances
/// at `B - W` and ends after `t_disk = S / (B - W)`, having sent `S + W t_disk`. If `W >= B` the
/// mirror never catches up: the VM is stopped and copied cold (downtime `(S + M) / B`).
///
/// Memory, at the bandwidth left beside the mirror, `Bm = B - W`: round 0 sends all memory
/// `V0 = M` in `t0 = V0 / Bm`; round i sends what was dirtied during round i-1,
/// `Vi = min(M, D t(i-1))`. Once the next round's volume fits the target (`V <= Bm x target`),
/// or after `max_rounds` rounds, the VM stops and the rest is sent: downtime `V / Bm`.
/// With `D >= Bm` rounds never shrink: not converged (unless all memory fits the target).
pub fn migrate(vm: &VmClass, bandwidth: f64, policy: &Policy) -> Migration {
    let (m, d) = (vm.memory_bytes(), vm.dirty_bytes_per_s());
    let (s, w) = (vm.disk_bytes(), vm.disk_write_bytes_per_s());
    let switchover = policy.switchover_ms / 1e3;
    if w >= bandwidth {
        let downtime = (s + m) / bandwidth + switchover;
        return Migration {
            seconds: downtime,
            downtime_seconds: downtime,
            bytes: s + m,
            rounds: 0,
            converged: false,
        };
    }
    let disk_seconds = if s > 0.0 { s / (bandwidth - w) } else { 0.0 };
    let mem_bw = bandwidth - w;
    let fits = mem_bw * policy.downtime_target_ms / 1e3;
    let mut sent = 0.0;
    let mut running = 0.0;
    let mut rounds = 0;
    let mut next = m;
    let mut reached = next <= fits;
    while !reached && rounds < policy.max_rounds {
        let t = next / mem_bw;
        sent += next;
        running += t;
        rounds += 1;
        next = (d * t).min(m);
        reached = next <= fits;
    }
    let stop = next / mem_bw;
    let mirrored = w * (running + stop);
    Migration {
        seconds: disk_seconds + running + stop + switchover,
        downtime_seconds: stop + switchover,
        bytes: s + w * disk_seconds + sent + next + mirrored,
        rounds,
        converged: reached,
    }
}

/// Time for one host to send its VMs over `lanes` concurrent migrations: longest first, each
/// to the lane that frees up first (the sum of one lane's migrations, for the busiest lane).
pub fn evacuation_seconds(migrations: &[(Migration, u64)], lanes: u64) -> f64 {
    let mut times: Vec<f64> = migrations
        .iter()
        .flat_map(|(m, n)| std::iter::repeat_n(m.seconds, *n as usize))
        .collect();
    times.sort_by(|a, b| b.total_cmp(a));
    let mut lane_end = vec![0.0f64; lanes.max(1) as usize];
    for t in times {
        let earliest = lane_end
            .iter_mut()
            .min_by(|a, b| a.total_cmp(b))
            .expect("at least one lane");
        *earliest += t;
    }
    lane_end.into_iter().fold(0.0, f64::max)
}
