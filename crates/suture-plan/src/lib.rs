//! `suture plan`: what fixing a whole fleet costs by hot-patching, by rebooting and by live
//! migration, from an inventory of hosts, VMs, the fix and the operator's policies.
//!
//! Pure computation: text in (`Inventory::parse`), a `Plan` out, rendered as text (`human`),
//! JSON (schema `suture.plan/1`, docs/plan.md) or an SVG chart (`svg::chart`). The models and
//! their assumptions are documented in docs/plan.md and at each function.

mod csv;
pub mod example;
pub mod inventory;
pub mod migration;
pub mod strategy;
pub mod svg;

use std::fmt::Write as _;

use serde::Serialize;

pub use inventory::{Fix, FixKind, HostClass, Inventory, Policy, VmClass};
pub use strategy::{Outcome, Point, Strategy};

/// A rejected inventory.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Unparsable input; `line` is 1-based (0 when the error concerns no single line).
    #[error("{}{message}", if *line > 0 { format!("line {line}: ") } else { String::new() })]
    Malformed { line: usize, message: String },
    /// A value out of range.
    #[error("{field} {message}")]
    Invalid { field: String, message: String },
}

/// The fleet in numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    pub hosts: u64,
    pub vms: u64,
    pub spare_hosts: u64,
    pub memory_bytes: f64,
    pub disk_bytes: f64,
}

/// The strategy to use and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// None when no strategy can fix the fleet.
    pub strategy: Option<Strategy>,
    pub reasons: Vec<String>,
}

/// The comparison (schema `suture.plan/1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub schema: &'static str,
    pub fleet: Fleet,
    /// The fix and policies the plan used, defaults filled in.
    pub fix: Fix,
    pub policy: Policy,
    pub strategies: Vec<Outcome>,
    pub recommendation: Recommendation,
}

/// Runs every model on `inv` (validated by its parser).
pub fn plan(inv: &Inventory) -> Plan {
    let strategies = vec![
        strategy::hot_patch(inv),
        strategy::reboot(inv),
        strategy::live_migration(inv),
    ];
    let fleet = Fleet {
        hosts: inv.host_count(),
        vms: inv.vm_count(),
        spare_hosts: inv.hosts.iter().map(|h| h.spare_hosts).sum(),
        memory_bytes: vm_sum(inv, |v| v.memory_bytes()),
        disk_bytes: vm_sum(inv, |v| v.disk_bytes()),
    };
    let recommendation = recommend(&fleet, &strategies);
    let mut fix = inv.fix.clone();
    fix.stop_window_ms = Some(fix.stop_window_seconds() * 1e3);
    Plan {
        schema: "suture.plan/1",
        fleet,
        fix,
        policy: inv.policy.clone(),
        strategies,
        recommendation,
    }
}

fn vm_sum(inv: &Inventory, f: impl Fn(&VmClass) -> f64) -> f64 {
    let f = &f;
    inv.hosts
        .iter()
        .flat_map(|h| h.vms.iter().map(move |v| f(v) * (v.count * h.count) as f64))
        .sum()
}

/// The feasible strategy with the fewest VM-hours of downtime (then the shortest time to fix
/// the fleet), with the figures that decided it.
fn recommend(fleet: &Fleet, outcomes: &[Outcome]) -> Recommendation {
    let mut reasons = Vec::new();
    if fleet.hosts == 0 {
        reasons.push("the inventory has no hosts: nothing to fix".to_string());
        return Recommendation {
            strategy: None,
            reasons,
        };
    }
    let best = outcomes.iter().filter(|o| o.feasible).min_by(|a, b| {
        a.vm_hours_disrupted
            .total_cmp(&b.vm_hours_disrupted)
            .then(a.fixed_after_seconds.total_cmp(&b.fixed_after_seconds))
    });
    for o in outcomes.iter().filter(|o| !o.feasible) {
        let why = o.reason.as_deref().unwrap_or("infeasible");
        reasons.push(format!("{} is not possible: {why}", o.strategy.name()));
    }
    let Some(best) = best else {
        reasons.push("no strategy can fix this fleet with these policies".to_string());
        return Recommendation {
            strategy: None,
            reasons,
        };
    };
    let mut lead = vec![format!(
        "{}: {} VM-hours of downtime (worst VM {}), fleet fixed after {}",
        best.strategy.name(),
        vm_hours(best.vm_hours_disrupted),
        duration(best.downtime_worst_seconds),
        duration(best.fixed_after_seconds)
    )];
    if best.soak_seconds > best.fixed_after_seconds / 2.0 {
        lead.push(format!(
            "{} of its {} are the policy's soak between waves",
            duration(best.soak_seconds),
            duration(best.fixed_after_seconds)
        ));
    }
    for o in outcomes
        .iter()
        .filter(|o| o.feasible && o.strategy != best.strategy)
    {
        lead.push(format!(
            "against {}: {} VM-hours (worst VM {}), fixed after {}{}",
            o.strategy.name(),
            vm_hours(o.vm_hours_disrupted),
            duration(o.downtime_worst_seconds),
            duration(o.fixed_after_seconds),
            costs(o)
        ));
    }
    lead.append(&mut reasons);
    Recommendation {
        strategy: Some(best.strategy),
        reasons: lead,
    }
}

/// What a strategy needs beside downtime: data, spare hosts, unconverged migrations.
fn costs(o: &Outcome) -> String {
    let mut s = String::new();
    if o.data_moved_bytes > 0.0 {
        let _ = write!(s, ", {} moved", bytes(o.data_moved_bytes));
    }
    if o.spare_hosts_needed > 0 {
        let _ = write!(s, ", {} spare hosts", o.spare_hosts_needed);
    }
    if o.vms_not_converged > 0 {
        let _ = write!(
            s,
            ", {} VMs whose migration does not converge",
            o.vms_not_converged
        );
    }
    s
}

/// Seconds as the largest fitting unit: `0.41 ms`, `12.0 s`, `3.5 min`, `6.2 h`, `2.1 days`.
pub fn duration(seconds: f64) -> String {
    let s = seconds;
    if s == 0.0 {
        "0 s".to_string()
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 3.0 * 86400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86400.0)
    }
}

/// Bytes in decimal units (TB, PB: how network volumes are quoted).
pub fn bytes(b: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// VM-hours with the precision their size needs.
pub fn vm_hours(h: f64) -> String {
    if h == 0.0 {
        "0".to_string()
    } else if h >= 100.0 {
        format!("{h:.0}")
    } else if h >= 0.01 {
        format!("{h:.2}")
    } else {
        format!("{h:.6}")
    }
}

/// The plan as text for a terminal.
pub fn human(p: &Plan) -> String {
    let mut s = String::new();
    let f = &p.fleet;
    let _ = writeln!(
        s,
        "fleet: {} hosts (+{} spare), {} VMs, {} of memory, {} of local disk; {} fix",
        f.hosts,
        f.spare_hosts,
        f.vms,
        bytes(f.memory_bytes),
        bytes(f.disk_bytes),
        match p.fix.kind {
            FixKind::Kernel => "kernel",
            FixKind::Process => "process",
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<15} {:>12} {:>10} {:>12} {:>12} {:>12} {:>6} {:>6}",
        "strategy",
        "fleet fixed",
        "data",
        "median down",
        "worst down",
        "VM-hours",
        "spare",
        "waves"
    );
    for o in &p.strategies {
        if !o.feasible {
            let why = o.reason.as_deref().unwrap_or("infeasible");
            let _ = writeln!(s, "{:<15} not possible: {why}", o.strategy.name());
            continue;
        }
        let _ = writeln!(
            s,
            "{:<15} {:>12} {:>10} {:>12} {:>12} {:>12} {:>6} {:>6}",
            o.strategy.name(),
            duration(o.fixed_after_seconds),
            bytes(o.data_moved_bytes),
            duration(o.downtime_median_seconds),
            duration(o.downtime_worst_seconds),
            vm_hours(o.vm_hours_disrupted),
            o.spare_hosts_needed,
            o.waves
        );
        if o.vms_not_converged > 0 {
            let _ = writeln!(
                s,
                "{:<15} {} VMs cannot reach the downtime target (dirty or write rate too high)",
                "", o.vms_not_converged
            );
        }
    }
    let _ = writeln!(s);
    match p.recommendation.strategy {
        Some(best) => {
            let _ = writeln!(s, "recommendation: {}", best.name());
        }
        None => {
            let _ = writeln!(s, "recommendation: none");
        }
    }
    for r in &p.recommendation.reasons {
        let _ = writeln!(s, "  - {r}");
    }
    s
}
