//! The three strategies over the whole fleet: hot-patch staged rollout, reboot waves, and
//! leap-frog live migration. Each walks the hosts in inventory order, wave by wave.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::inventory::{FixKind, HostClass, Inventory};
use crate::migration::{evacuation_seconds, migrate, Migration};

/// Which strategy a result is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    HotPatch,
    Reboot,
    LiveMigration,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [
        Strategy::HotPatch,
        Strategy::Reboot,
        Strategy::LiveMigration,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::HotPatch => "hot-patch",
            Strategy::Reboot => "reboot",
            Strategy::LiveMigration => "live-migration",
        }
    }
}

/// A point of the timeline: hosts fixed by then.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub seconds: f64,
    pub hosts_fixed: u64,
}

/// What one strategy costs the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub strategy: Strategy,
    /// False when the strategy cannot fix the whole fleet; `reason` says why.
    pub feasible: bool,
    pub reason: Option<String>,
    /// From the start to the last host fixed, s.
    pub fixed_after_seconds: f64,
    /// Bytes sent over the network for the fix.
    pub data_moved_bytes: f64,
    pub downtime_median_seconds: f64,
    pub downtime_worst_seconds: f64,
    /// Sum over VMs of their downtime, hours.
    pub vm_hours_disrupted: f64,
    /// Empty hosts the strategy needs (leap-frog destinations).
    pub spare_hosts_needed: u64,
    /// Waves run (leap-frog rounds for live migration).
    pub waves: u64,
    /// Of `fixed_after_seconds`, the policy's soak between waves, s.
    pub soak_seconds: f64,
    /// VMs whose migration could not reach the downtime target (live migration only).
    pub vms_not_converged: u64,
    pub timeline: Vec<Point>,
}

/// Per-VM downtimes: VMs by downtime. Downtimes are never negative, and the bits of
/// non-negative floats sort as the floats do, so the map iterates in order of seconds.
#[derive(Debug, Default)]
pub(crate) struct Downtimes(BTreeMap<u64, u64>);

impl Downtimes {
    pub(crate) fn add(&mut self, seconds: f64, vms: u64) {
        if vms > 0 {
            *self.0.entry(seconds.max(0.0).to_bits()).or_insert(0) += vms;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.0.iter().map(|(&bits, &n)| (f64::from_bits(bits), n))
    }

    fn total_seconds(&self) -> f64 {
        self.iter().map(|(s, n)| s * n as f64).sum()
    }

    fn worst(&self) -> f64 {
        self.iter().last().map_or(0.0, |(s, _)| s)
    }

    /// The median VM's downtime (mean of the two middle VMs for an even count).
    fn median(&self) -> f64 {
        let n: u64 = self.0.values().sum();
        if n == 0 {
            return 0.0;
        }
        let nth = |i: u64| {
            let mut seen = 0;
            for (s, k) in self.iter() {
                seen += k;
                if i < seen {
                    return s;
                }
            }
            0.0
        };
        (nth((n - 1) / 2) + nth(n / 2)) / 2.0
    }
}

/// Accumulates one strategy's run.
struct Run {
    outcome: Outcome,
    downtimes: Downtimes,
    now: f64,
}

impl Run {
    fn new(strategy: Strategy) -> Run {
        Run {
            outcome: Outcome {
                strategy,
                feasible: true,
                reason: None,
                fixed_after_seconds: 0.0,
                data_moved_bytes: 0.0,
                downtime_median_seconds: 0.0,
                downtime_worst_seconds: 0.0,
                vm_hours_disrupted: 0.0,
                spare_hosts_needed: 0,
                waves: 0,
                soak_seconds: 0.0,
                vms_not_converged: 0,
                timeline: vec![Point {
                    seconds: 0.0,
                    hosts_fixed: 0,
                }],
            },
            downtimes: Downtimes::default(),
            now: 0.0,
        }
    }

    /// `hosts` more are fixed `seconds` from now.
    fn wave(&mut self, seconds: f64, hosts: u64) {
        self.now += seconds;
        let fixed = self.outcome.timeline.last().map_or(0, |p| p.hosts_fixed) + hosts;
        self.outcome.timeline.push(Point {
            seconds: self.now,
            hosts_fixed: fixed,
        });
        self.outcome.fixed_after_seconds = self.now;
        self.outcome.waves += 1;
    }

    /// The policy's wait between two waves.
    fn soak(&mut self, seconds: f64) {
        self.now += seconds;
        self.outcome.soak_seconds += seconds;
    }

    fn refuse(&mut self, reason: String) {
        self.outcome.feasible = false;
        self.outcome.reason = Some(reason);
    }

    fn finish(mut self) -> Outcome {
        let d = &self.downtimes;
        self.outcome.downtime_median_seconds = d.median();
        self.outcome.downtime_worst_seconds = d.worst();
        self.outcome.vm_hours_disrupted = d.total_seconds() / 3600.0;
        self.outcome
    }
}

/// Host counts of the policy's waves: each fraction of the fleet rounded up (at least one
/// host), the last fraction repeated until every host is in a wave.
pub fn wave_sizes(hosts: u64, fractions: &[f64]) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut left = hosts;
    let mut i = 0;
    while left > 0 {
        let f = fractions[i.min(fractions.len() - 1)];
        let n = ((f * hosts as f64).ceil() as u64).clamp(1, left);
        sizes.push(n);
        left -= n;
        i += 1;
    }
    sizes
}

/// Hosts in inventory order, taken a number at a time as (class, hosts) parts.
struct Cursor<'a> {
    classes: &'a [HostClass],
    class: usize,
    taken: u64,
}

impl<'a> Cursor<'a> {
    fn new(classes: &'a [HostClass]) -> Self {
        Cursor {
            classes,
            class: 0,
            taken: 0,
        }
    }

    /// The next class with hosts left and how many are left of it.
    fn peek(&mut self) -> Option<(&'a HostClass, u64)> {
        while let Some(c) = self.classes.get(self.class) {
            if self.taken < c.count {
                return Some((c, c.count - self.taken));
            }
            self.class += 1;
            self.taken = 0;
        }
        None
    }

    fn advance(&mut self, n: u64) {
        self.taken += n;
    }

    /// The next `n` hosts (fewer at the end).
    fn take(&mut self, mut n: u64) -> Vec<(&'a HostClass, u64)> {
        let mut parts = Vec::new();
        while n > 0 {
            let Some((c, left)) = self.peek() else { break };
            let k = left.min(n);
            parts.push((c, k));
            self.advance(k);
            n -= k;
        }
        parts
    }
}

/// Runs the policy's waves; `wave` gives one wave's duration for its (class, hosts) parts and
/// records its downtimes. Soak separates waves.
fn staged(
    inv: &Inventory,
    run: &mut Run,
    mut wave: impl FnMut(&[(&HostClass, u64)], &mut Downtimes) -> f64,
) {
    let sizes = wave_sizes(inv.host_count(), &inv.policy.wave_sizes);
    let mut cursor = Cursor::new(&inv.hosts);
    for (i, &size) in sizes.iter().enumerate() {
        if i > 0 {
            run.soak(inv.policy.soak_minutes * 60.0);
        }
        let parts = cursor.take(size);
        let seconds = wave(&parts, &mut run.downtimes);
        run.wave(seconds, size);
    }
}

/// Hot-patch staged rollout: every host of a wave is patched at once; a host takes the module
/// load and transition (kernel) or one apply per process, one after another (process, as
/// `suture apply --all` does); each VM pauses for the stop window of each patched process.
pub fn hot_patch(inv: &Inventory) -> Outcome {
    let mut run = Run::new(Strategy::HotPatch);
    let fix = &inv.fix;
    if !fix.live_patchable {
        run.refuse("the fix cannot be live-patched (fix.live_patchable is false)".into());
        return run.finish();
    }
    let pause = match fix.kind {
        FixKind::Kernel => fix.stop_window_seconds(),
        FixKind::Process => fix.stop_window_seconds() * fix.processes_per_vm as f64,
    };
    staged(inv, &mut run, |parts, downtimes| {
        let mut longest = 0.0f64;
        for &(class, hosts) in parts {
            let vms = class.vms_per_host();
            let host_seconds = match fix.kind {
                FixKind::Kernel => fix.load_seconds + fix.transition_seconds,
                FixKind::Process => {
                    (vms * fix.processes_per_vm) as f64 * fix.apply_seconds_per_process
                }
            };
            longest = longest.max(host_seconds);
            downtimes.add(pause, vms * hosts);
        }
        longest
    });
    run.finish()
}

/// Reboot waves: every host of a wave reboots at once with its VMs shut down; its VMs are back
/// after the reboot plus their own restart. A process fix restarts the VMs only.
pub fn reboot(inv: &Inventory) -> Outcome {
    let mut run = Run::new(Strategy::Reboot);
    let p = &inv.policy;
    let host_down = match inv.fix.kind {
        FixKind::Kernel => p.reboot_minutes * 60.0,
        FixKind::Process => 0.0,
    };
    let per_vm = host_down + p.vm_restart_minutes * 60.0;
    staged(inv, &mut run, |parts, downtimes| {
        let mut longest = 0.0f64;
        for &(class, hosts) in parts {
            let vms = class.vms_per_host();
            downtimes.add(per_vm, vms * hosts);
            longest = longest.max(if vms > 0 { per_vm } else { host_down });
        }
        longest
    });
    run.finish()
}

/// Leap-frog live migration. Destinations are a pool of free VM slots: at first the spare
/// hosts' (each holds its class's VMs plus free slots); hosts are evacuated into the pool in
/// rounds, as many as their VMs fit, then updated while empty (reboot for a kernel fix, nothing
/// for a process fix: the destination runs the fixed process); each evacuated host's slots take
/// the place of those its VMs used, plus its free slots. Free slots on hosts not yet fixed are
/// never destinations (a VM put there would have to move again). Every evacuating host runs
/// `concurrent_migrations_per_host` migrations, each at the host's migration bandwidth divided
/// among them, or the fabric cap divided among all migrations of the round, whichever is less.
pub fn live_migration(inv: &Inventory) -> Outcome {
    let mut run = Run::new(Strategy::LiveMigration);
    let p = &inv.policy;
    let update_seconds = match inv.fix.kind {
        FixKind::Kernel => p.reboot_minutes * 60.0,
        FixKind::Process => 0.0,
    };
    let spare_slots = |c: &HostClass| c.vms_per_host() + c.free_slots;
    let mut pool: u64 = inv
        .hosts
        .iter()
        .map(|c| c.spare_hosts * spare_slots(c))
        .sum();
    // The spare capacity each round needed beyond what fixed hosts' free slots provided.
    let mut gained = 0u64;
    let mut spare_needed = 0u64;
    let sizes = wave_sizes(inv.host_count(), &p.wave_sizes);
    let mut cursor = Cursor::new(&inv.hosts);
    let mut memo = Evacuations::new();
    'waves: for (i, &size) in sizes.iter().enumerate() {
        if i > 0 {
            run.soak(p.soak_minutes * 60.0);
        }
        let mut wave_left = size;
        while wave_left > 0 {
            let round = leap_round(&mut cursor, wave_left, pool);
            if round.is_empty() {
                let (class, _) = cursor.peek().expect("hosts are left in the wave");
                run.refuse(if pool == 0 {
                    "no spare capacity: leap-frog needs empty hosts (spare_hosts) to move \
                     the first VMs to"
                        .to_string()
                } else {
                    format!(
                        "a host of class {:?} has {} VMs but only {pool} free slots are on \
                         fixed or spare hosts",
                        class.name,
                        class.vms_per_host()
                    )
                });
                break 'waves;
            }
            let moved: u64 = round.iter().map(|&(c, n)| c.vms_per_host() * n).sum();
            spare_needed = spare_needed.max(moved.saturating_sub(gained));
            let seconds = migrate_round(inv, &round, &mut run, &mut memo) + update_seconds;
            let hosts: u64 = round.iter().map(|&(_, n)| n).sum();
            let freed: u64 = round.iter().map(|&(c, n)| c.free_slots * n).sum();
            pool += freed;
            gained += freed;
            wave_left -= hosts;
            run.wave(seconds, hosts);
        }
    }
    run.outcome.spare_hosts_needed = spare_hosts_for(inv, spare_needed);
    run.finish()
}

/// The hosts of one leap-frog round: in order, while their VMs fit in `pool` free slots.
fn leap_round<'a>(
    cursor: &mut Cursor<'a>,
    mut wave_left: u64,
    mut pool: u64,
) -> Vec<(&'a HostClass, u64)> {
    let mut round = Vec::new();
    while wave_left > 0 {
        let Some((class, left)) = cursor.peek() else {
            break;
        };
        let vms = class.vms_per_host();
        let fit = pool.checked_div(vms).unwrap_or(u64::MAX);
        let n = left.min(wave_left).min(fit);
        if n == 0 {
            break;
        }
        round.push((class, n));
        cursor.advance(n);
        pool -= n * vms;
        wave_left -= n;
        if n < left {
            break; // the pool is full (or the wave is complete)
        }
    }
    round
}

/// Migrates every VM of one round's hosts at once and returns the slowest host's evacuation.
/// A class's migrations and evacuation time at one bandwidth, by (class address, bandwidth
/// bits): rounds of a steady leap-frog repeat the same computation.
type Evacuations = HashMap<(usize, u64), (Vec<(Migration, u64)>, f64)>;

fn migrate_round(
    inv: &Inventory,
    round: &[(&HostClass, u64)],
    run: &mut Run,
    memo: &mut Evacuations,
) -> f64 {
    let p = &inv.policy;
    let lanes = |c: &HostClass| p.concurrent_migrations_per_host.min(c.vms_per_host());
    let all_lanes: u64 = round.iter().map(|&(c, n)| lanes(c) * n).sum();
    let fabric_share = p
        .fabric_gbps
        .map_or(f64::INFINITY, |g| g * 1e9 / 8.0 / all_lanes.max(1) as f64);
    let mut longest = 0.0f64;
    for &(class, hosts) in round {
        let host_lanes = lanes(class);
        if host_lanes == 0 {
            continue;
        }
        let bandwidth = (class.migration_bytes_per_s() / host_lanes as f64).min(fabric_share);
        let key = (std::ptr::from_ref(class) as usize, bandwidth.to_bits());
        let (migrations, evacuation) = memo.entry(key).or_insert_with(|| {
            let migrations: Vec<(Migration, u64)> = class
                .vms
                .iter()
                .map(|vm| (migrate(vm, bandwidth, p), vm.count))
                .collect();
            let seconds = evacuation_seconds(&migrations, host_lanes);
            (migrations, seconds)
        });
        for (m, count) in migrations.iter() {
            let vms = count * hosts;
            run.downtimes.add(m.downtime_seconds, vms);
            run.outcome.data_moved_bytes += m.bytes * vms as f64;
            if !m.converged {
                run.outcome.vms_not_converged += vms;
            }
        }
        longest = longest.max(*evacuation);
    }
    longest
}

/// The fewest spare hosts, in inventory order, whose slots hold `slots` VMs.
fn spare_hosts_for(inv: &Inventory, mut slots: u64) -> u64 {
    let mut hosts = 0;
    for c in &inv.hosts {
        let each = c.vms_per_host() + c.free_slots;
        if slots == 0 || each == 0 {
            continue;
        }
        let n = slots.div_ceil(each).min(c.spare_hosts);
        hosts += n;
        slots = slots.saturating_sub(n * each);
    }
    hosts
}
