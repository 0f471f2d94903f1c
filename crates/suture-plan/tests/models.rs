//! The models against hand computations, their monotonic behaviour and their edge cases.

use suture_plan::inventory::GIB;
use suture_plan::migration::{evacuation_seconds, migrate, Migration};
use suture_plan::strategy::{hot_patch, live_migration, reboot, wave_sizes};
use suture_plan::{plan, FixKind, HostClass, Inventory, Policy, Strategy, VmClass};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {
        assert!(
            close($a, $b),
            "{} = {} but expected {}",
            stringify!($a),
            $a,
            $b
        )
    };
}

fn vm(memory_gib: f64, dirty_mb_s: f64, disk_gb: f64, disk_write_mb_s: f64) -> VmClass {
    VmClass {
        count: 1,
        memory_gib,
        dirty_mb_s,
        disk_gb,
        disk_write_mb_s,
    }
}

/// `count` hosts of 8 Gbit/s (1e9 bytes/s at share 1), each with `vms` VMs of 1 GiB that dirty
/// nothing and have no local disk.
fn hosts(count: u64, spare_hosts: u64, vms: u64) -> HostClass {
    HostClass {
        name: "h".into(),
        count,
        nic_gbps: 8.0,
        migration_share: 1.0,
        spare_hosts,
        free_slots: 0,
        vms: vec![VmClass {
            count: vms,
            ..vm(1.0, 0.0, 0.0, 0.0)
        }],
    }
}

fn inventory(hosts: Vec<HostClass>, policy: Policy) -> Inventory {
    let inv = Inventory {
        hosts,
        policy,
        ..Default::default()
    };
    inv.validate().expect("test inventory is valid");
    inv
}

fn with_target(ms: f64) -> Policy {
    Policy {
        downtime_target_ms: ms,
        ..Default::default()
    }
}

#[test]
fn pre_copy_rounds_by_hand() {
    // M = 1 GiB = 1,073,741,824 B, D = 100 MB/s, B = 1e9 B/s, target 100 ms (fits 1e8 B).
    // Round 0: V0 = M, t0 = 1.073741824 s; dirtied V1 = D t0 = 107,374,182.4 B > 1e8: go on.
    // Round 1: t1 = 0.1073741824 s; dirtied V2 = 10,737,418.24 B <= 1e8: stop and copy.
    // Downtime V2 / B = 10.73741824 ms; total t0 + t1 + stop; sent V0 + V1 + V2.
    let b = 1e9;
    let m = migrate(&vm(1.0, 100.0, 0.0, 0.0), b, &with_target(100.0));
    let (v0, v1, v2) = (GIB, GIB * 0.1, GIB * 0.01);
    assert_eq!(m.rounds, 2);
    assert!(m.converged);
    assert_close!(m.downtime_seconds, v2 / b);
    assert_close!(m.seconds, (v0 + v1 + v2) / b);
    assert_close!(m.bytes, v0 + v1 + v2);

    // Target 110 ms (fits 1.1e8 B): V1 = 107,374,182.4 B already fits, so one round, then a
    // pause of V1 / B = 107.37 ms.
    let m = migrate(&vm(1.0, 100.0, 0.0, 0.0), b, &with_target(110.0));
    assert_eq!(m.rounds, 1);
    assert_close!(m.downtime_seconds, v1 / b);
}

#[test]
fn disk_copy_by_hand() {
    // S = 100 GB, W = 100 MB/s, B = 1.1e9 B/s: the mirror advances at B - W = 1e9 B/s, so the
    // copy takes 1e11 / 1e9 = 100 s and sends S + W x 100 s = 1.1e11 B. No memory: nothing
    // to stop for but the 50 ms switch-over.
    let policy = Policy {
        switchover_ms: 50.0,
        ..Default::default()
    };
    let m = migrate(&vm(0.0, 0.0, 100.0, 100.0), 1.1e9, &policy);
    assert_close!(m.seconds, 1e11 / (1.1e9 - 1e8) + 0.05);
    assert_close!(m.bytes, 1e11 + 1e8 * 100.0);
    assert_close!(m.downtime_seconds, 0.05);
    assert_eq!(m.rounds, 0);
    assert!(m.converged);
}

#[test]
fn mirrored_writes_slow_the_memory_rounds() {
    // B = 1e9, W = 2e8 leaves Bm = 8e8 for memory; M = 1 GiB, no dirtying: one round of
    // M / Bm, mirrored writes W x M / Bm added to the bytes after the disk's S + W t_disk.
    let (b, w, s) = (1e9, 2e8, 4e9);
    let m = migrate(&vm(1.0, 0.0, 4.0, 200.0), b, &Policy::default());
    let t_disk = s / (b - w);
    let t_mem = GIB / (b - w);
    assert_close!(m.seconds, t_disk + t_mem);
    assert_close!(m.bytes, s + w * t_disk + GIB + w * t_mem);
}

#[test]
fn dirty_rate_above_bandwidth_does_not_converge() {
    // D = 1.5 GB/s >= B = 1 GB/s: each round re-sends all of M (the dirty set is capped at M),
    // so after max_rounds = 5 the stop copies all M: downtime M / B, total 6 M / B.
    let policy = Policy {
        max_rounds: 5,
        ..Default::default()
    };
    let m = migrate(&vm(1.0, 1500.0, 0.0, 0.0), 1e9, &policy);
    assert!(!m.converged);
    assert_eq!(m.rounds, 5);
    assert_close!(m.downtime_seconds, GIB / 1e9);
    assert_close!(m.seconds, 6.0 * GIB / 1e9);
}

#[test]
fn disk_writes_above_bandwidth_force_a_cold_copy() {
    // W = 2 GB/s >= B = 1 GB/s: the mirror never catches up; stopped, the VM's S + M go at B.
    let m = migrate(&vm(1.0, 0.0, 10.0, 2000.0), 1e9, &Policy::default());
    assert!(!m.converged);
    assert_close!(m.downtime_seconds, (1e10 + GIB) / 1e9);
}

#[test]
fn fleet_with_dirty_rate_above_bandwidth_reports_every_vm() {
    let mut h = hosts(4, 1, 2);
    h.vms[0].dirty_mb_s = 2000.0; // B per migration: 1e9 B/s, one lane each
    let policy = Policy {
        concurrent_migrations_per_host: 1,
        ..Default::default()
    };
    let o = live_migration(&inventory(vec![h], policy));
    assert!(o.feasible);
    assert_eq!(o.vms_not_converged, 8);
    // Forced stop copies all memory: at least M / B of downtime.
    assert!(o.downtime_median_seconds >= GIB / 1e9);
    let p = plan(&inventory(vec![hosts(1, 1, 1)], Policy::default()));
    assert_eq!(p.strategies[2].vms_not_converged, 0);
}

#[test]
fn evacuation_assigns_longest_first() {
    // Times 5, 4, 3, 3, 3 on 2 lanes, longest first to the lane free first:
    // lane A 5, lane B 4; 3 -> B (7); 3 -> A (8); 3 -> B (10). Evacuation 10.
    let at = |seconds| Migration {
        seconds,
        downtime_seconds: 0.0,
        bytes: 0.0,
        rounds: 1,
        converged: true,
    };
    let ms = [(at(3.0), 3), (at(5.0), 1), (at(4.0), 1)];
    assert_close!(evacuation_seconds(&ms, 2), 10.0);
    // One lane: the sum, 18; five lanes: the longest, 5.
    assert_close!(evacuation_seconds(&ms, 1), 18.0);
    assert_close!(evacuation_seconds(&ms, 5), 5.0);
}

#[test]
fn waves_round_up_and_repeat_the_last_size() {
    // 10 hosts at 20%, then 50% repeated: 2, 5, then the 3 left.
    assert_eq!(wave_sizes(10, &[0.2, 0.5]), [2, 5, 3]);
    // 1% of 3 hosts rounds up to one host a wave.
    assert_eq!(wave_sizes(3, &[0.01]), [1, 1, 1]);
    assert!(wave_sizes(0, &[0.5]).is_empty());
}

fn staged_policy() -> Policy {
    Policy {
        wave_sizes: vec![0.2, 0.5],
        reboot_minutes: 10.0,
        vm_restart_minutes: 2.0,
        soak_minutes: 60.0,
        ..Default::default()
    }
}

#[test]
fn reboot_waves_by_hand() {
    // 10 hosts x 2 VMs, waves of 2, 5, 3 hosts: each wave is a 10 min reboot plus 2 min of VM
    // restart, with 60 min of soak between waves: 3 x 12 + 2 x 60 = 156 min.
    // Every VM is down 12 min: 20 VMs x 0.2 h = 4 VM-hours.
    let o = reboot(&inventory(vec![hosts(10, 0, 2)], staged_policy()));
    assert!(o.feasible);
    assert_eq!(o.waves, 3);
    assert_close!(o.fixed_after_seconds, (3.0 * 12.0 + 2.0 * 60.0) * 60.0);
    assert_close!(o.soak_seconds, 2.0 * 3600.0);
    assert_close!(o.downtime_median_seconds, 12.0 * 60.0);
    assert_close!(o.downtime_worst_seconds, 12.0 * 60.0);
    assert_close!(o.vm_hours_disrupted, 20.0 * 12.0 / 60.0);
    let fixed: Vec<u64> = o.timeline.iter().map(|p| p.hosts_fixed).collect();
    assert_eq!(fixed, [0, 2, 7, 10]);
    assert_eq!(o.data_moved_bytes, 0.0);
}

#[test]
fn hot_patch_waves_by_hand() {
    // Kernel fix: each wave takes one module load plus transition per host, all hosts at
    // once (defaults 0.144 s + 0.050 s); 3 waves and 2 soaks of 60 min. No VM pauses.
    let mut inv = inventory(vec![hosts(10, 0, 2)], staged_policy());
    let per_host = inv.fix.load_seconds + inv.fix.transition_seconds;
    let o = hot_patch(&inv);
    assert_close!(o.fixed_after_seconds, 3.0 * per_host + 2.0 * 3600.0);
    assert_eq!(o.vm_hours_disrupted, 0.0);
    assert_eq!(o.waves, 3);
    // Process fix: 2 VMs x 1 process applied one after another, 1 s each, so a wave is 2 s;
    // every VM pauses once for the measured stop window.
    inv.fix.kind = FixKind::Process;
    inv.fix.apply_seconds_per_process = 1.0;
    let stop = inv.fix.stop_window_seconds();
    assert!(stop > 0.0);
    let o = hot_patch(&inv);
    assert_close!(o.fixed_after_seconds, 3.0 * 2.0 + 2.0 * 3600.0);
    assert_close!(o.downtime_worst_seconds, stop);
    assert_close!(o.vm_hours_disrupted, 20.0 * stop / 3600.0);
}

fn leap_policy(fabric_gbps: Option<f64>) -> Policy {
    Policy {
        concurrent_migrations_per_host: 1,
        fabric_gbps,
        wave_sizes: vec![1.0],
        reboot_minutes: 10.0,
        ..Default::default()
    }
}

#[test]
fn leap_frog_by_hand() {
    // 4 hosts x 2 VMs of 1 GiB that dirty nothing, 1 spare host (2 slots), one migration per
    // host at 1e9 B/s: a VM moves in M / B = 1.073741824 s, a host empties in twice that.
    // The spare holds one host's VMs, so 4 rounds of (2 M / B + 600 s reboot).
    let o = live_migration(&inventory(vec![hosts(4, 1, 2)], leap_policy(None)));
    assert!(o.feasible, "{:?}", o.reason);
    let round = 2.0 * GIB / 1e9 + 600.0;
    assert_eq!(o.waves, 4);
    assert_close!(o.fixed_after_seconds, 4.0 * round);
    assert_close!(o.data_moved_bytes, 8.0 * GIB);
    assert_eq!(o.spare_hosts_needed, 1);
    assert_eq!(o.downtime_worst_seconds, 0.0);

    // Two spare hosts: rounds of 2 hosts, 2 rounds.
    let o = live_migration(&inventory(vec![hosts(4, 2, 2)], leap_policy(None)));
    assert_eq!(o.waves, 2);
    assert_close!(o.fixed_after_seconds, 2.0 * round);
    assert_eq!(o.spare_hosts_needed, 2);

    // Policy waves of half the fleet with 60 min of soak: one round of 2 hosts per wave, and
    // the soak once between the two waves.
    let policy = Policy {
        wave_sizes: vec![0.5],
        soak_minutes: 60.0,
        ..leap_policy(None)
    };
    let o = live_migration(&inventory(vec![hosts(4, 2, 2)], policy));
    assert_eq!(o.waves, 2);
    assert_close!(o.fixed_after_seconds, 2.0 * round + 3600.0);
    assert_close!(o.soak_seconds, 3600.0);

    // A fabric cap of 8 Gbit/s (1e9 B/s) shared by the 2 migrations of a round: 5e8 B/s each.
    let o = live_migration(&inventory(vec![hosts(4, 2, 2)], leap_policy(Some(8.0))));
    assert_close!(o.fixed_after_seconds, 2.0 * (2.0 * GIB / 5e8 + 600.0));
}

#[test]
fn spare_hosts_needed_counts_what_fixed_hosts_do_not_provide() {
    // 10 hosts x 2 VMs with 2 free slots each; 3 spare hosts of 4 slots (pool 12); policy
    // waves of 2, 6, then 2 hosts. Round 1 moves 4 VMs (nothing gained yet: 4 from spares);
    // its 2 hosts add 4 free slots. Round 2 moves 12 VMs, 4 of them into gained slots: 8 from
    // spares = 2 spare hosts. Round 3 moves 4 with 16 gained. Needed: 2 of the 3.
    let mut h = hosts(10, 3, 2);
    h.free_slots = 2;
    let policy = Policy {
        wave_sizes: vec![0.2, 0.6],
        ..leap_policy(None)
    };
    let o = live_migration(&inventory(vec![h], policy));
    let fixed: Vec<u64> = o.timeline.iter().map(|p| p.hosts_fixed).collect();
    assert_eq!(fixed, [0, 2, 8, 10]);
    assert_eq!(o.spare_hosts_needed, 2);
}

#[test]
fn median_and_worst_downtime_over_mixed_vms() {
    // One host with 2 VMs of 1 GiB and 2 of 3 GiB, D = 10 MB/s, B = 1e9 B/s, target 50 ms
    // (fits 5e7 B). Round 0 sends M in M / B; the dirtied D M / B = 0.01 M fits, so the pause
    // is 0.01 M / B: 10.74 ms for 1 GiB, 32.21 ms for 3 GiB. Four VMs: the median is the mean
    // of the second and third, (10.74 + 32.21) / 2 ms; worst 32.21 ms; VM-hours the sum.
    let mut h = hosts(1, 1, 0);
    h.vms = vec![
        VmClass {
            count: 2,
            ..vm(1.0, 10.0, 0.0, 0.0)
        },
        VmClass {
            count: 2,
            ..vm(3.0, 10.0, 0.0, 0.0)
        },
    ];
    let policy = Policy {
        downtime_target_ms: 50.0,
        ..leap_policy(None)
    };
    let o = live_migration(&inventory(vec![h], policy));
    let (small, large) = (0.01 * GIB / 1e9, 0.03 * GIB / 1e9);
    assert_close!(o.downtime_median_seconds, (small + large) / 2.0);
    assert_close!(o.downtime_worst_seconds, large);
    assert_close!(o.vm_hours_disrupted, 2.0 * (small + large) / 3600.0);
}

#[test]
fn free_slots_of_fixed_hosts_join_the_pool() {
    // 6 hosts x 2 VMs with 2 free slots each, 1 spare (4 slots: its 2 VMs' worth + 2 free).
    // Round 1: the pool of 4 takes 2 hosts (4 VMs); they add 2 x 2 free slots: pool 8.
    // Round 2: 4 hosts (8 VMs) fit: done in 2 rounds. Spare needed: round 1 moves 4 VMs with
    // nothing gained yet; round 2 moves 8 with 4 gained: 4 slots = 1 spare host.
    let mut h = hosts(6, 1, 2);
    h.free_slots = 2;
    let o = live_migration(&inventory(vec![h], leap_policy(None)));
    assert_eq!(o.waves, 2);
    let fixed: Vec<u64> = o.timeline.iter().map(|p| p.hosts_fixed).collect();
    assert_eq!(fixed, [0, 2, 6]);
    assert_eq!(o.spare_hosts_needed, 1);
}

fn example() -> Inventory {
    suture_plan::example::fleet_2014()
}

fn outcome(inv: &Inventory, s: Strategy) -> suture_plan::Outcome {
    plan(inv)
        .strategies
        .into_iter()
        .find(|o| o.strategy == s)
        .expect("every strategy is reported")
}

#[test]
fn larger_disks_slow_migration_and_leave_hot_patching_unchanged() {
    let small = example();
    let mut large = example();
    for v in &mut large.hosts[0].vms {
        v.disk_gb *= 2.0;
    }
    let (ms, ml) = (
        outcome(&small, Strategy::LiveMigration),
        outcome(&large, Strategy::LiveMigration),
    );
    assert!(ml.fixed_after_seconds > ms.fixed_after_seconds);
    assert!(ml.data_moved_bytes > ms.data_moved_bytes);
    assert_eq!(
        outcome(&small, Strategy::HotPatch),
        outcome(&large, Strategy::HotPatch)
    );
    assert_eq!(
        outcome(&small, Strategy::Reboot),
        outcome(&large, Strategy::Reboot)
    );
}

#[test]
fn more_spare_capacity_speeds_migration() {
    let mut times = Vec::new();
    for spare in [50, 100, 200, 400] {
        let mut inv = example();
        inv.hosts[0].spare_hosts = spare;
        let o = outcome(&inv, Strategy::LiveMigration);
        assert!(o.feasible);
        times.push(o.fixed_after_seconds);
    }
    assert!(times.windows(2).all(|w| w[1] < w[0]), "{times:?}");
}

/// A higher dirty rate sends more and takes longer. The pause itself is not monotonic (one
/// more round can end below the previous pause), but stays within the target while converging.
#[test]
fn higher_dirty_rate_sends_more_and_keeps_the_pause_within_target() {
    let mut runs = Vec::new();
    for dirty in [10.0, 100.0, 300.0] {
        let mut inv = example();
        inv.hosts[0].vms[0].dirty_mb_s = dirty;
        let o = outcome(&inv, Strategy::LiveMigration);
        assert_eq!(o.vms_not_converged, 0);
        assert!(o.downtime_worst_seconds <= inv.policy.downtime_target_ms / 1e3);
        runs.push((o.data_moved_bytes, o.fixed_after_seconds));
    }
    assert!(
        runs.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 > w[0].1),
        "{runs:?}"
    );
}

#[test]
fn no_spare_capacity_makes_migration_impossible() {
    let mut inv = example();
    inv.hosts[0].spare_hosts = 0;
    let p = plan(&inv);
    let m = &p.strategies[2];
    assert_eq!(m.strategy, Strategy::LiveMigration);
    assert!(!m.feasible);
    assert!(m.reason.as_deref().unwrap().contains("no spare capacity"));
    assert!(p.strategies[..2].iter().all(|o| o.feasible));
    assert_eq!(p.recommendation.strategy, Some(Strategy::HotPatch));
    assert!(p
        .recommendation
        .reasons
        .iter()
        .any(|r| r.contains("live-migration is not possible")));
}

#[test]
fn a_host_larger_than_the_pool_is_reported() {
    let big = HostClass {
        name: "big".into(),
        spare_hosts: 0,
        ..hosts(1, 0, 10)
    };
    let inv = inventory(vec![hosts(2, 1, 2), big], leap_policy(None));
    let o = live_migration(&inv);
    assert!(!o.feasible);
    assert!(o.reason.as_deref().unwrap().contains("\"big\""), "{o:?}");
    assert_eq!(o.timeline.last().unwrap().hosts_fixed, 2);
}

#[test]
fn an_empty_fleet_needs_nothing() {
    let p = plan(&inventory(Vec::new(), Policy::default()));
    for o in &p.strategies {
        assert!(o.feasible);
        assert_eq!(o.fixed_after_seconds, 0.0);
        assert_eq!(o.waves, 0);
        assert_eq!(o.vm_hours_disrupted, 0.0);
    }
    assert_eq!(p.recommendation.strategy, None);
    assert!(p.recommendation.reasons[0].contains("no hosts"));
    assert!(suture_plan::svg::chart(&p).ends_with("</svg>\n"));
}

#[test]
fn a_fix_that_cannot_be_live_patched_is_not_recommended_for_hot_patching() {
    let mut inv = example();
    inv.fix.live_patchable = false;
    let p = plan(&inv);
    assert!(!p.strategies[0].feasible);
    // Fewest VM-hours of what is left: migration's sub-second pauses against reboots.
    assert_eq!(p.recommendation.strategy, Some(Strategy::LiveMigration));
}

#[test]
fn the_example_is_the_2014_fleet() {
    let inv = example();
    assert_eq!(inv.host_count(), 10_000);
    assert_eq!(inv.vm_count(), 200_000);
    let v = &inv.hosts[0].vms[0];
    assert_eq!((v.memory_gib, v.disk_gb), (16.0, 200.0));
    assert_eq!(inv.hosts[0].nic_gbps, 25.0);
    let p = plan(&inv);
    assert_eq!(p.recommendation.strategy, Some(Strategy::HotPatch));
    assert!(p.strategies.iter().all(|o| o.feasible));
}
