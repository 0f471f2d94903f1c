//! The inventory: the fleet (host classes and the VMs on them), the fix and the policies.
//! Read from JSON (`Inventory::from_json`) or from the CSV form (`Inventory::from_csv`, see
//! `csv.rs`); both are documented in docs/plan.md. Every figure is validated before a model
//! sees it, so the models never meet a negative size, a zero bandwidth or a share above 1.

use serde::{Deserialize, Serialize};

use crate::PlanError;

/// One class of identical hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostClass {
    /// A name for reports and for CSV `vm` rows to refer to.
    pub name: String,
    /// Hosts of this class in service (each runs `vms`).
    pub count: u64,
    /// NIC bandwidth of one host, Gbit/s.
    pub nic_gbps: f64,
    /// Share of the NIC usable for migration traffic, in (0, 1].
    #[serde(default = "default_share")]
    pub migration_share: f64,
    /// Empty hosts of this class available as first destinations (leap-frog's spare).
    #[serde(default)]
    pub spare_hosts: u64,
    /// Free VM slots on each host in service (usable once that host is fixed).
    #[serde(default)]
    pub free_slots: u64,
    /// The VMs on each host of this class.
    #[serde(default)]
    pub vms: Vec<VmClass>,
}

/// `count` identical VMs on each host of a class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmClass {
    pub count: u64,
    /// Guest memory, GiB (2^30 bytes).
    pub memory_gib: f64,
    /// Rate at which the guest dirties memory, MB/s (10^6 bytes).
    pub dirty_mb_s: f64,
    /// Local disk (on the host's own drives), GB (10^9 bytes); 0 for network storage.
    #[serde(default)]
    pub disk_gb: f64,
    /// Rate at which the guest writes its local disk, MB/s.
    #[serde(default)]
    pub disk_write_mb_s: f64,
}

/// What the fix changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FixKind {
    /// The host kernel (a livepatch module, `suture kernel load`).
    Kernel,
    /// A process running per VM, such as the VMM (`suture apply --all`).
    Process,
}

/// suture's measured median apply stop window for a process with 9 threads (a VMM has a few
/// vCPU and I/O threads): 0.107 ms, docs/benchmarks.md, "Stop window at the physical limit",
/// run of 2026-12-05 17:44 (row: new, 1 function, 9 threads, apply).
pub const MEASURED_PROCESS_STOP_MS: f64 = 0.107;
/// The whole `suture apply` of one function to one 9-thread process, CLI wall time: median
/// 3.78 ms, same row.
pub const MEASURED_PROCESS_APPLY_S: f64 = 0.00378;
/// `finit_module` of a one-function livepatch module in the booted guest: median 0.144 s,
/// docs/benchmarks.md, "Kernel live patches in the booted guest" (25 loads).
pub const MEASURED_KERNEL_LOAD_S: f64 = 0.144;
/// End of `finit_module` to the livepatch transition complete: median 0.050 s, same table.
pub const MEASURED_KERNEL_TRANSITION_S: f64 = 0.050;

/// The fix and its costs when hot-patched. Defaults are suture's own measurements
/// (docs/benchmarks.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fix {
    #[serde(default = "default_kind")]
    pub kind: FixKind,
    /// False when suture refuses the fix (the hot-patch strategy is then infeasible).
    #[serde(default = "default_true")]
    pub live_patchable: bool,
    /// Pause of one patched process, ms (default: `MEASURED_PROCESS_STOP_MS` for a process
    /// fix; 0 for a kernel fix, whose livepatch transition stops no task).
    #[serde(default)]
    pub stop_window_ms: Option<f64>,
    /// Kernel fix: module load time per host, s.
    #[serde(default = "default_kernel_load")]
    pub load_seconds: f64,
    /// Kernel fix: transition time per host, s.
    #[serde(default = "default_kernel_transition")]
    pub transition_seconds: f64,
    /// Process fix: wall time of one process's apply (preparation while it runs + stop), s.
    #[serde(default = "default_apply_process")]
    pub apply_seconds_per_process: f64,
    /// Process fix: patched processes per VM.
    #[serde(default = "default_one")]
    pub processes_per_vm: u64,
}

/// The operator's policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Migrations running at once from one host.
    #[serde(default = "default_concurrent")]
    pub concurrent_migrations_per_host: u64,
    /// Total fabric bandwidth all migrations share, Gbit/s (absent: no cap).
    #[serde(default)]
    pub fabric_gbps: Option<f64>,
    /// Largest acceptable stop-and-copy pause, ms.
    #[serde(default = "default_downtime_target")]
    pub downtime_target_ms: f64,
    /// Pre-copy rounds before stop-and-copy is forced.
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    /// Fixed cost added to every migration's pause (device state, network switch-over), ms.
    #[serde(default)]
    pub switchover_ms: f64,
    /// Time for a host to reboot into the fixed kernel, minutes.
    #[serde(default = "default_reboot")]
    pub reboot_minutes: f64,
    /// Time for a VM to boot again after its host rebooted, minutes.
    #[serde(default = "default_vm_restart")]
    pub vm_restart_minutes: f64,
    /// Wait after each wave before the next starts, minutes.
    #[serde(default = "default_soak")]
    pub soak_minutes: f64,
    /// Wave sizes as fractions of the fleet's hosts, in (0, 1]; the last repeats.
    #[serde(default = "default_waves")]
    pub wave_sizes: Vec<f64>,
}

fn default_share() -> f64 {
    0.5
}
fn default_kind() -> FixKind {
    FixKind::Kernel
}
fn default_true() -> bool {
    true
}
fn default_kernel_load() -> f64 {
    MEASURED_KERNEL_LOAD_S
}
fn default_kernel_transition() -> f64 {
    MEASURED_KERNEL_TRANSITION_S
}
fn default_apply_process() -> f64 {
    MEASURED_PROCESS_APPLY_S
}
fn default_one() -> u64 {
    1
}
fn default_concurrent() -> u64 {
    2
}
fn default_downtime_target() -> f64 {
    300.0
}
fn default_max_rounds() -> u32 {
    30
}
fn default_reboot() -> f64 {
    10.0
}
fn default_vm_restart() -> f64 {
    2.0
}
fn default_soak() -> f64 {
    60.0
}
fn default_waves() -> Vec<f64> {
    vec![0.01, 0.1, 0.25]
}

impl Default for Fix {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field of Fix has a default")
    }
}

impl Default for Policy {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field of Policy has a default")
    }
}

impl Fix {
    /// The pause of one patched process (or of the VM, for a kernel fix), in seconds.
    pub fn stop_window_seconds(&self) -> f64 {
        let ms = self.stop_window_ms.unwrap_or(match self.kind {
            FixKind::Process => MEASURED_PROCESS_STOP_MS,
            FixKind::Kernel => 0.0,
        });
        ms / 1e3
    }
}

/// The whole input of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub hosts: Vec<HostClass>,
    #[serde(default)]
    pub fix: Fix,
    #[serde(default)]
    pub policy: Policy,
}

impl HostClass {
    /// VMs on each host of this class.
    pub fn vms_per_host(&self) -> u64 {
        self.vms.iter().map(|v| v.count).sum()
    }

    /// Bytes per second of one host's NIC usable for migration.
    pub fn migration_bytes_per_s(&self) -> f64 {
        self.nic_gbps * 1e9 / 8.0 * self.migration_share
    }
}

impl VmClass {
    pub fn memory_bytes(&self) -> f64 {
        self.memory_gib * GIB
    }
    pub fn dirty_bytes_per_s(&self) -> f64 {
        self.dirty_mb_s * 1e6
    }
    pub fn disk_bytes(&self) -> f64 {
        self.disk_gb * 1e9
    }
    pub fn disk_write_bytes_per_s(&self) -> f64 {
        self.disk_write_mb_s * 1e6
    }
}

/// 2^30.
pub const GIB: f64 = 1073741824.0;

/// The most hosts (in service and spare) an inventory may list: far above any fleet, low
/// enough that counts never overflow and a plan's timeline stays small.
pub const MAX_HOSTS: u64 = 1_000_000;
/// The most VMs plus free slots on one host.
pub const MAX_VMS_PER_HOST: u64 = 10_000;

impl Inventory {
    /// Parses and validates the JSON form.
    pub fn from_json(text: &str) -> Result<Inventory, PlanError> {
        let inv: Inventory = serde_json::from_str(text).map_err(|e| PlanError::Malformed {
            line: e.line(),
            message: e.to_string(),
        })?;
        inv.validate()?;
        Ok(inv)
    }

    /// Parses and validates the CSV form (docs/plan.md).
    pub fn from_csv(text: &str) -> Result<Inventory, PlanError> {
        crate::csv::parse(text)
    }

    /// Picks the form by the first non-blank character: `{` is JSON, anything else CSV.
    pub fn parse(text: &str) -> Result<Inventory, PlanError> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Self::from_csv(text)
        }
    }

    pub fn host_count(&self) -> u64 {
        self.hosts.iter().map(|h| h.count).sum()
    }

    pub fn vm_count(&self) -> u64 {
        self.hosts.iter().map(|h| h.count * h.vms_per_host()).sum()
    }

    /// Checks every figure; errors name the field (`hosts[1].nic_gbps`).
    pub fn validate(&self) -> Result<(), PlanError> {
        for (i, h) in self.hosts.iter().enumerate() {
            h.validate(&format!("hosts[{i}]"))?;
        }
        let hosts: u64 = self.hosts.iter().map(|h| h.count + h.spare_hosts).sum();
        if hosts > MAX_HOSTS {
            return Err(invalid(
                "hosts",
                &format!("total {hosts} (spare hosts included) is above {MAX_HOSTS}"),
            ));
        }
        self.fix.validate()?;
        self.policy.validate()
    }
}

impl HostClass {
    /// Checks the host's own figures and its VMs'; `at` prefixes the field names.
    pub fn validate(&self, at: &str) -> Result<(), PlanError> {
        let f = |name: &str| format!("{at}.{name}");
        if self.name.is_empty() {
            return Err(invalid(&f("name"), "must not be empty"));
        }
        positive(&f("nic_gbps"), self.nic_gbps)?;
        positive(&f("migration_share"), self.migration_share)?;
        if self.migration_share > 1.0 {
            return Err(invalid(&f("migration_share"), "must be at most 1"));
        }
        for (j, v) in self.vms.iter().enumerate() {
            v.validate(&format!("{at}.vms[{j}]"))?;
        }
        for (name, n) in [("count", self.count), ("spare_hosts", self.spare_hosts)] {
            if n > MAX_HOSTS {
                return Err(invalid(&f(name), &format!("is above {MAX_HOSTS}")));
            }
        }
        let slots = self.vms.iter().map(|v| v.count).sum::<u64>() + self.free_slots;
        if self.free_slots > MAX_VMS_PER_HOST || slots > MAX_VMS_PER_HOST {
            return Err(invalid(
                &f("vms"),
                &format!("VMs and free slots per host must be at most {MAX_VMS_PER_HOST}"),
            ));
        }
        Ok(())
    }
}

impl VmClass {
    pub fn validate(&self, at: &str) -> Result<(), PlanError> {
        let f = |name: &str| format!("{at}.{name}");
        non_negative(&f("memory_gib"), self.memory_gib)?;
        non_negative(&f("dirty_mb_s"), self.dirty_mb_s)?;
        non_negative(&f("disk_gb"), self.disk_gb)?;
        non_negative(&f("disk_write_mb_s"), self.disk_write_mb_s)
    }
}

impl Fix {
    pub fn validate(&self) -> Result<(), PlanError> {
        if let Some(ms) = self.stop_window_ms {
            non_negative("fix.stop_window_ms", ms)?;
        }
        non_negative("fix.load_seconds", self.load_seconds)?;
        non_negative("fix.transition_seconds", self.transition_seconds)?;
        non_negative(
            "fix.apply_seconds_per_process",
            self.apply_seconds_per_process,
        )
    }
}

impl Policy {
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.concurrent_migrations_per_host == 0 {
            return Err(invalid(
                "policy.concurrent_migrations_per_host",
                "must be at least 1",
            ));
        }
        if let Some(g) = self.fabric_gbps {
            positive("policy.fabric_gbps", g)?;
        }
        positive("policy.downtime_target_ms", self.downtime_target_ms)?;
        if self.max_rounds == 0 {
            return Err(invalid("policy.max_rounds", "must be at least 1"));
        }
        non_negative("policy.switchover_ms", self.switchover_ms)?;
        non_negative("policy.reboot_minutes", self.reboot_minutes)?;
        non_negative("policy.vm_restart_minutes", self.vm_restart_minutes)?;
        non_negative("policy.soak_minutes", self.soak_minutes)?;
        if self.wave_sizes.is_empty() {
            return Err(invalid("policy.wave_sizes", "must list at least one size"));
        }
        for (i, &w) in self.wave_sizes.iter().enumerate() {
            let at = format!("policy.wave_sizes[{i}]");
            positive(&at, w)?;
            if w > 1.0 {
                return Err(invalid(&at, "is a fraction of the fleet: at most 1"));
            }
        }
        Ok(())
    }
}

fn invalid(field: &str, why: &str) -> PlanError {
    PlanError::Invalid {
        field: field.to_string(),
        message: why.to_string(),
    }
}

fn positive(field: &str, v: f64) -> Result<(), PlanError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            field,
            &format!("must be a positive number, not {v}"),
        ))
    }
}

fn non_negative(field: &str, v: f64) -> Result<(), PlanError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(invalid(
            field,
            &format!("must be a number of at least 0, not {v}"),
        ))
    }
}

/// The median stop window, in ms, of the processes a `suture apply --json` report (schema
/// `suture.process/2`, docs/process-json.md) applied to: a fleet's own figure, measured on a
/// staging host, for `fix.stop_window_ms`. Errors when the report is not such a report or no
/// process was patched.
pub fn stop_window_from_apply_json(text: &str) -> Result<f64, PlanError> {
    let malformed = |message: String| PlanError::Malformed { line: 0, message };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| PlanError::Malformed {
        line: e.line(),
        message: e.to_string(),
    })?;
    if v["schema"] != "suture.process/2" {
        return Err(malformed(format!(
            "not a `suture apply --json` report (schema {} instead of \"suture.process/2\")",
            v["schema"]
        )));
    }
    let mut windows: Vec<f64> = v["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["applied"] == true)
        .filter_map(|p| p["result"]["stop_window_us"].as_f64())
        .filter(|us| us.is_finite() && *us >= 0.0)
        .collect();
    if windows.is_empty() {
        return Err(malformed(
            "the apply report has no patched process with a stop window".to_string(),
        ));
    }
    windows.sort_by(f64::total_cmp);
    let n = windows.len();
    let median_us = (windows[(n - 1) / 2] + windows[n / 2]) / 2.0;
    Ok(median_us / 1e3)
}
