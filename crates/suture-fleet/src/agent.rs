//! The host agent: one pass of pull, verify, select, apply and revert (`suture agent
//! --once`), and the host's status (`suture agent status`).
//!
//! A pass, in order:
//! 1. Load and verify the repository through TUF (`crate::fetch`). Any failure (a bad
//!    signature, tampered or expired metadata, an older version than the one trusted last
//!    time) ends the pass before anything is selected: nothing is applied or reverted.
//! 2. Select: every process bundle of the agent's channel whose build-id is the build-id of
//!    a file mapped by a process on this host (`crate::host`), minus the processes where
//!    that patch is live already.
//! 3. Download every selected bundle through tough (length and SHA-256 checked against the
//!    signed `targets.json`) and check that its manifest says what the signed metadata says
//!    (patch id, build-id). Any failure ends the pass: nothing is applied or reverted.
//! 4. Revert patches this agent applied earlier whose patch id is no longer a target of its
//!    channel (withdrawn), in the processes it applied them to (same pid, same start time).
//! 5. Apply each selected bundle to its processes through `suture_process::bundle::apply`,
//!    the path `suture apply` takes (symbol digests checked, one typed outcome per process).
//! 6. Record what it applied in the state (`crate::state`) and return the report.
//!
//! The agent runs nothing from the repository: a bundle is data (a patch object and a
//! manifest) that only the process-side library interprets after verification.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use suture_process::apply::Outcome;
use suture_process::bundle::{self, BundleOptions};
use suture_process::header::State as PatchState;
use suture_process::ids::Pid;
use suture_process::targets::Targets;
use tough::TargetName;

use crate::error::{Error, Result};
use crate::host::{self, ProcId, Scan};
use crate::meta::{Kind, TargetMeta};
use crate::state::{self, AppliedPatch, State, Versions, Watch};

/// The schema of [`Report`].
pub const REPORT_SCHEMA: &str = "suture.agent/1";
/// The schema of [`Status`].
pub const STATUS_SCHEMA: &str = "suture.agent-status/1";

/// What one pass is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The repository: `http://`, `https://`, `file://` URL or a local directory.
    pub repo: String,
    /// The trusted root (`1.root.json` as `suture repo init` printed it).
    pub trust: PathBuf,
    pub state_dir: PathBuf,
    pub channel: String,
    /// Only these processes (default: every process on the host).
    pub only_pids: Option<Vec<i32>>,
    /// Write Prometheus text-format metrics here after every pass (for node_exporter's
    /// textfile collector).
    pub metrics: Option<PathBuf>,
    /// Per process, how long apply and revert keep retrying while patched code is running.
    pub timeout: Duration,
    /// The health gate run after each apply (see [`Health`]).
    pub health: Health,
    /// What started this pass.
    pub trigger: Trigger,
    /// How the daemon watches for new processes (recorded in the state and the report;
    /// `None` for a single pass).
    pub watch: Option<Watch>,
    /// The daemon's memory of its last full pass (see [`Verified`]); `None` for `--once`.
    pub verified: Option<std::sync::Arc<Verified>>,
}

/// What the daemon keeps from its last full pass: the repository as that pass verified it
/// through TUF, and the targets downloaded since (each checked against its signed length
/// and SHA-256 when it was downloaded). A pass for new processes (exec events or polling)
/// works from it, with no network, while the verified timestamp has not expired: the host
/// acts on the repository as of its last full pass, for new processes as for the ones it
/// patched then. A full pass always fetches and verifies afresh, and replaces it.
#[derive(Default)]
pub struct Verified {
    repo: std::sync::Mutex<Option<std::sync::Arc<tough::Repository>>>,
    files: std::sync::Mutex<VerifiedFiles>,
}

/// (target name, sha256) → the bytes downloaded and checked against them.
type VerifiedFiles = std::collections::HashMap<(String, String), std::sync::Arc<Vec<u8>>>;

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified").finish_non_exhaustive()
    }
}

/// What started a pass.
#[derive(Clone, Debug, Default)]
pub enum Trigger {
    /// A full pass (`--once`, or the daemon's every `--interval`).
    #[default]
    Full,
    /// The daemon's look at `/proc` found new processes that map a watched file.
    Rescan,
    /// Exec events of new processes that map a watched file: pid → when it ran `execve`
    /// (`CLOCK_MONOTONIC` nanoseconds, from the event).
    ExecEvent(std::collections::BTreeMap<i32, u64>),
}

impl Trigger {
    /// The report's `trigger`.
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::Full => "full",
            Trigger::Rescan => "rescan",
            Trigger::ExecEvent(_) => "exec-event",
        }
    }
}

/// The health gate: after a patch goes live in a process, the agent waits `settle`, then the
/// process must still be running (same pid and start time) and `check`, when given, must exit
/// with status 0 within `check_timeout` (run with `sh -c`, environment `SUTURE_PID`,
/// `SUTURE_PATCH_ID`, `SUTURE_OBJECT`). Otherwise the patch is reverted in that process, the
/// failure reported, and the target held back on this host (`State::held`) until the
/// repository publishes another file for it.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub settle: Duration,
    pub check: Option<String>,
    pub check_timeout: Duration,
}

/// Runs the health gate for one process; `Err` says why it failed.
fn health_gate(
    h: &Health,
    process: Option<ProcId>,
    patch_id: &str,
    object: &str,
) -> std::result::Result<(), String> {
    if !h.settle.is_zero() {
        std::thread::sleep(h.settle);
    }
    let Some(process) = process.filter(ProcId::alive) else {
        return Err("the process exited after the patch went live".into());
    };
    run_check(
        h,
        &[
            ("SUTURE_PID", process.pid.to_string()),
            ("SUTURE_PATCH_ID", patch_id.into()),
            ("SUTURE_OBJECT", object.into()),
        ],
    )?;
    if !process.alive() {
        return Err("the process exited during the health check".into());
    }
    Ok(())
}

/// The health gate for a kernel patch: after `settle`, the patch must still be enabled and
/// `check` (environment `SUTURE_PID=0`, `SUTURE_PATCH_ID`, `SUTURE_OBJECT=vmlinux`,
/// `SUTURE_KERNEL_PATCH=1`) must pass.
fn kernel_health_gate(
    h: &Health,
    klp: &suture_kernel::livepatch::Kernel,
    patch_id: &str,
) -> std::result::Result<(), String> {
    if !h.settle.is_zero() {
        std::thread::sleep(h.settle);
    }
    let gone = || Err("the kernel patch is no longer enabled".to_string());
    if !crate::kernel::is_live(klp, patch_id) {
        return gone();
    }
    run_check(
        h,
        &[
            ("SUTURE_PID", "0".into()),
            ("SUTURE_PATCH_ID", patch_id.into()),
            ("SUTURE_OBJECT", "vmlinux".into()),
            ("SUTURE_KERNEL_PATCH", "1".into()),
        ],
    )?;
    if !crate::kernel::is_live(klp, patch_id) {
        return gone();
    }
    Ok(())
}

/// Runs the health check command of `h`, when there is one, with `env`.
fn run_check(h: &Health, env: &[(&str, String)]) -> std::result::Result<(), String> {
    let Some(cmd) = &h.check else {
        return Ok(());
    };
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run the health check {cmd:?}: {e}"))?;
    let deadline = std::time::Instant::now() + h.check_timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => break,
            Ok(Some(st)) => return Err(format!("the health check {cmd:?} failed ({st})")),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the health check {cmd:?} did not finish within {} s",
                    h.check_timeout.as_secs_f64()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for the health check: {e}")),
        }
    }
    Ok(())
}

/// What a pass did with one target of the repository.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub patch_id: String,
    pub kind: Kind,
    pub channel: String,
    pub build_ids: Vec<String>,
    /// `applied` (in at least one process this pass; a kernel module: loaded), `live`
    /// (already live in every matching process; the module's patch is enabled), `no-match`
    /// (no process maps a file with its build-id; a module for another kernel),
    /// `other-channel`, `failed` (applying failed in every matching process, or loading), `waiting` (this host's wave
    /// starts at `wave_start`), `not-in-wave` (no wave includes this host's seed), `held`
    /// (it failed this host's health gate earlier; see the state's `held`), `paused` (the
    /// rollout is paused: applied nowhere new), `replaced` (a patch that replaces it is live
    /// in every matching process).
    pub action: &'static str,
    /// When this host's wave starts (seconds since the epoch), for a staged target.
    pub wave_start: Option<u64>,
    /// The matching processes.
    pub pids: Vec<i32>,
    /// The metadata's `version` and `replaces`.
    pub version: Option<u64>,
    pub replaces: Vec<String>,
}

/// A patch applied to one process in this pass.
#[derive(Clone, Debug, Serialize)]
pub struct AppliedReport {
    pub patch_id: String,
    pub target: String,
    pub pid: i32,
    pub object: String,
    pub build_id: String,
    /// How long the process was stopped for the switch.
    pub stop_window_us: u64,
    /// How long the process had been running unpatched when the patch went live
    /// (milliseconds; for a process started after the patch was published, the window during
    /// which it ran unpatched).
    pub process_age_ms: Option<u64>,
    /// For a pass started by exec events: microseconds from the process's `execve` (the
    /// kernel's timestamp of the event) to the patch being live in it, the window during
    /// which the new process ran unpatched.
    pub exec_to_live_us: Option<u64>,
    /// The patch this one replaced in the same switch (`replaces` of its metadata).
    pub replaced: Option<String>,
}

/// A withdrawn patch reverted in one process.
#[derive(Clone, Debug, Serialize)]
pub struct RevertedReport {
    pub patch_id: String,
    pub target: String,
    pub pid: i32,
}

/// A failure in one process.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// `apply`, `revert` or `health` (the patch went live, then the health gate failed);
    /// `kernel-load` or `kernel-unload` for a kernel module (`pid` 0).
    pub stage: &'static str,
    pub patch_id: String,
    pub target: String,
    pub pid: i32,
    pub error: String,
    /// What became of the process (`untouched`, `rolled-back`, `exited`; null when unknown).
    pub outcome: Option<Outcome>,
}

/// The report of a pass (`suture agent --once --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    /// No failure in any process.
    pub ok: bool,
    pub repo: String,
    pub channel: String,
    pub state_dir: PathBuf,
    /// This host's seed for staged rollouts (`<state dir>/seed`).
    pub seed: u32,
    pub started_at: u64,
    pub finished_at: u64,
    /// What started the pass: `full`, `rescan` (new processes found by listing `/proc`) or
    /// `exec-event` (new processes announced by the kernel's exec events).
    pub trigger: &'static str,
    /// How the daemon watches for new processes (null for `--once`).
    pub watch: Option<Watch>,
    /// The metadata was fetched and verified in this pass (false: a pass for new processes
    /// worked from the daemon's last full pass, see [`Verified`]).
    pub metadata_fetched: bool,
    /// The verified metadata versions.
    pub metadata: Versions,
    pub targets: Vec<TargetReport>,
    pub applied: Vec<AppliedReport>,
    pub reverted: Vec<RevertedReport>,
    /// Kernel livepatch modules loaded or unloaded in this pass.
    pub kernel: Vec<KernelReport>,
    pub failed: Vec<Failure>,
}

/// A kernel livepatch module loaded (or unloaded after a withdrawal) in this pass.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub patch_id: String,
    pub target: String,
    /// `loaded` or `unloaded`.
    pub action: &'static str,
    /// The verified copy loaded (`<state dir>/kernel/`).
    pub file: PathBuf,
    /// Time in `finit_module` (loaded) and in the transition.
    pub load_seconds: Option<f64>,
    pub transition_seconds: f64,
}

/// The patch ids live in a process (empty when it cannot be read).
fn live_ids(pid: Pid) -> BTreeSet<String> {
    suture_process::apply::status(pid)
        .map(|v| {
            v.into_iter()
                .filter(|l| l.header.state == PatchState::Live)
                .map(|l| l.header.patch_id)
                .collect()
        })
        .unwrap_or_default()
}

/// The rollout's gates for a target this host wants: paused, held after a failed health gate,
/// this host's wave. Sets the report's action and wave start; true when it may go ahead.
fn gate(meta: &TargetMeta, report: &mut TargetReport, sha256: &str, st: &State, seed: u32) -> bool {
    if meta.paused {
        report.action = "paused";
        return false;
    }
    if st
        .held
        .iter()
        .any(|h| h.target == report.name && h.sha256 == sha256)
    {
        report.action = "held";
        return false;
    }
    if !meta.waves.is_empty() {
        report.wave_start = meta.wave_start(seed);
        match report.wave_start {
            None => {
                report.action = "not-in-wave";
                return false;
            }
            Some(t) if t > crate::now_secs() => {
                report.action = "waiting";
                return false;
            }
            Some(_) => {}
        }
    }
    true
}

/// Holds a target back on this host after its health gate failed (`why`).
fn hold(st: &mut State, s: &Selected, why: &str) {
    st.held.retain(|h| h.target != s.name.raw());
    st.held.push(state::Held {
        patch_id: s.meta.patch_id.clone(),
        target: s.name.raw().to_string(),
        sha256: s.sha256.clone(),
        at: crate::now_secs(),
        error: why.to_string(),
    });
}

/// Kernel load and unload options of a pass: its `--timeout` for transitions.
fn klp_options(opts: &Options) -> suture_kernel::livepatch::Options<'static> {
    suture_kernel::livepatch::Options {
        timeout: opts.timeout,
        ..Default::default()
    }
}

/// A target selected for this pass, with the processes still to patch.
struct Selected {
    name: TargetName,
    meta: TargetMeta,
    sha256: String,
    length: u64,
    pending: Vec<Pid>,
    /// Processes of `pending` where a patch this one replaces is live: pid → that patch.
    replace: std::collections::BTreeMap<i32, String>,
}

/// Downloads a selected target through tough (length and SHA-256 checked against the
/// signed `targets.json` as it streams in); `Err` ends the pass with nothing applied.
fn download(
    rt: &tokio::runtime::Runtime,
    repo: &tough::Repository,
    s: &Selected,
    verified: Option<&Verified>,
) -> Result<std::sync::Arc<Vec<u8>>> {
    let key = (s.name.raw().to_string(), s.sha256.clone());
    if let Some(b) = verified.and_then(|v| v.files.lock().ok()?.get(&key).cloned()) {
        return Ok(b);
    }
    let bytes = rt.block_on(async {
        use tough::IntoVec;
        let stream = repo
            .read_target(&s.name)
            .await
            .map_err(|e| Error::with(format!("target {} did not verify", s.name.raw()), e))?;
        let Some(stream) = stream else {
            return Err(Error::msg(format!(
                "target {} is in the signed metadata but not in the repository",
                s.name.raw()
            )));
        };
        stream.into_vec().await.map_err(|e| {
            Error::with(
                format!(
                    "target {} did not verify (signed length {}, sha256 {})",
                    s.name.raw(),
                    s.length,
                    s.sha256
                ),
                e,
            )
        })
    });
    let bytes =
        std::sync::Arc::new(bytes.map_err(|e| Error::with("refused; nothing was applied", e))?);
    if let Some(mut files) = verified.and_then(|v| v.files.lock().ok()) {
        files.insert(key, bytes.clone());
    }
    Ok(bytes)
}

/// Runs one pass. `Err` when the repository or a selected target did not verify (nothing was
/// applied or reverted then) or the state cannot be read or written; failures in single
/// processes are entries of the report's `failed`.
pub fn run_once(opts: &Options) -> Result<Report> {
    let started_at = crate::now_secs();
    let _lock = state::lock(&opts.state_dir)?;
    let mut st = State::load(&opts.state_dir)?;
    let result = pass(opts, &mut st, started_at);
    st.last_pass = Some(crate::now_secs());
    st.repo = Some(opts.repo.clone());
    if opts.watch.is_some() {
        st.watch = opts.watch.clone();
    }
    match &result {
        Ok(report) => {
            st.last_error = None;
            if report.metadata_fetched {
                st.last_verified = Some(report.finished_at);
            }
            st.metadata = Some(report.metadata.clone());
            let path = opts.state_dir.join("last-report.json");
            let text = serde_json::to_vec_pretty(report)
                .map_err(|e| Error::with("cannot serialise the report", e))?;
            std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
        }
        Err(e) => st.last_error = Some(e.chain()),
    }
    st.save(&opts.state_dir)?;
    if let Some(path) = &opts.metrics {
        let text = crate::metrics::render(&metrics_of(&st, result.as_ref().ok()));
        crate::metrics::write(path, &text)?;
    }
    result
}

fn pass(opts: &Options, st: &mut State, started_at: u64) -> Result<Report> {
    let t0 = std::time::Instant::now();
    let trust = std::fs::read(&opts.trust)
        .map_err(|e| Error::io("read the trusted root", &opts.trust, e))?;
    let url = crate::fetch::repo_url(&opts.repo)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Error::with("cannot start the async runtime", e))?;
    let cached = match (&opts.trigger, &opts.verified) {
        (Trigger::Full, _) | (_, None) => None,
        (_, Some(v)) => v
            .repo
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .filter(|r| r.timestamp().signed.expires.as_second() > crate::now_secs() as i64),
    };
    let fetched = cached.is_none();
    let repo = match cached {
        Some(r) => r,
        None => {
            let r = std::sync::Arc::new(rt.block_on(crate::fetch::load(
                &url,
                &trust,
                &opts.state_dir.join("tuf"),
            ))?);
            if let Some(v) = &opts.verified {
                if let Ok(mut slot) = v.repo.lock() {
                    *slot = Some(r.clone());
                }
                if let Ok(mut files) = v.files.lock() {
                    files.clear();
                }
            }
            r
        }
    };
    tracing::debug!(
        elapsed_ms = t0.elapsed().as_secs_f64() * 1000.0,
        "repository verified"
    );
    let metadata = Versions {
        root: repo.root().signed.version.get(),
        targets: repo.targets().signed.version.get(),
        snapshot: repo.snapshot().signed.version.get(),
        timestamp: repo.timestamp().signed.version.get(),
        timestamp_expires: repo.timestamp().signed.expires.to_string(),
    };

    // Select.
    let seed = state::host_seed(&opts.state_dir)?;
    let pids = host::processes(opts.only_pids.as_deref());
    let mut scan = Scan::default();
    let klp = suture_kernel::livepatch::Kernel::default();
    let running = crate::kernel::Running::of(&klp).ok();
    let mut kernel_selected = Vec::new();
    let mut prefetch = Vec::new();
    let mut reports = Vec::new();
    let mut selected = Vec::new();
    let mut channel_ids = BTreeSet::new();
    let mut all: Vec<(&TargetName, &tough::schema::Target)> = repo.all_targets().collect();
    all.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
    // Patch id → the patch ids of the channel that replace it.
    let mut replaced_by: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (_, t) in &all {
        if let Ok(Some(m)) = TargetMeta::from_custom(&t.custom) {
            if m.channel == opts.channel {
                for old in &m.replaces {
                    replaced_by
                        .entry(old.clone())
                        .or_default()
                        .push(m.patch_id.clone());
                }
            }
        }
    }
    for (name, t) in all {
        let meta = match TargetMeta::from_custom(&t.custom) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                return Err(Error::msg(format!(
                    "target {} of the signed metadata: {e}; nothing was applied",
                    name.raw()
                )))
            }
        };
        let mut report = TargetReport {
            name: name.raw().to_string(),
            patch_id: meta.patch_id.clone(),
            kind: meta.kind,
            channel: meta.channel.clone(),
            build_ids: meta.build_ids.clone(),
            action: "no-match",
            wave_start: None,
            pids: Vec::new(),
            version: meta.version,
            replaces: meta.replaces.clone(),
        };
        if meta.channel != opts.channel {
            report.action = "other-channel";
            reports.push(report);
            continue;
        }
        if meta.kind == Kind::Kernel {
            channel_ids.insert(meta.patch_id.clone());
            let sha256 = suture_bundle::hex(&t.hashes.sha256);
            if !meta.waves.is_empty() {
                report.wave_start = meta.wave_start(seed);
            }
            if !running.as_ref().is_some_and(|r| r.matches(&meta)) {
                // For another kernel (or this kernel's identity cannot be read).
            } else if crate::kernel::is_live(&klp, &meta.patch_id) {
                report.action = "live";
            } else if gate(&meta, &mut report, &sha256, st, seed) {
                kernel_selected.push((
                    reports.len(),
                    Selected {
                        name: name.clone(),
                        sha256,
                        length: t.length,
                        meta,
                        pending: Vec::new(),
                        replace: Default::default(),
                    },
                ));
            }
            reports.push(report);
            continue;
        }
        channel_ids.insert(meta.patch_id.clone());
        let mut pending = Vec::new();
        let mut replace = std::collections::BTreeMap::new();
        let mut superseded = 0;
        for id in &meta.build_ids {
            for (pid, _) in scan.mapping(&pids, id) {
                if report.pids.contains(&pid.0) {
                    continue; // maps files with two of the target's build-ids
                }
                report.pids.push(pid.0);
                let live = live_ids(pid);
                if live.contains(&meta.patch_id) {
                    continue;
                }
                let newer = replaced_by.get(&meta.patch_id);
                if newer.is_some_and(|n| n.iter().any(|n| live.contains(n))) {
                    superseded += 1;
                    continue;
                }
                if let Some(old) = meta.replaces.iter().find(|o| live.contains(*o)) {
                    replace.insert(pid.0, old.clone());
                }
                pending.push(pid);
            }
        }
        if !report.pids.is_empty() {
            report.action = if superseded == report.pids.len() {
                "replaced"
            } else {
                "live"
            };
        }
        let sha256 = suture_bundle::hex(&t.hashes.sha256);
        if !meta.waves.is_empty() {
            report.wave_start = meta.wave_start(seed);
        }
        if !pending.is_empty() && !gate(&meta, &mut report, &sha256, st, seed) {
            pending.clear();
        }
        let s = Selected {
            name: name.clone(),
            sha256: suture_bundle::hex(&t.hashes.sha256),
            length: t.length,
            meta,
            pending,
            replace,
        };
        if !s.pending.is_empty() {
            selected.push((reports.len(), s));
        } else if fetched && opts.verified.is_some() {
            // A daemon's full pass: downloaded now so that a new process mapping the file
            // is patched without a download in its window.
            prefetch.push(s);
        }
        reports.push(report);
    }

    // Download and check every selected bundle and module before changing anything.
    let mut bundles = Vec::new();
    for (_, s) in &selected {
        let bytes = download(&rt, &repo, s, opts.verified.as_deref())?;
        let b = suture_bundle::decode(&bytes).map_err(|e| {
            Error::with(
                format!(
                    "target {} is not a valid bundle; nothing was applied",
                    s.name.raw()
                ),
                e,
            )
        })?;
        let m = &b.manifest;
        if m.patch_id != s.meta.patch_id || !s.meta.build_ids.contains(&m.target.build_id) {
            return Err(Error::msg(format!(
                "target {} is wrongly targeted: its bundle is patch {:?} for build-id {}, the \
                 signed metadata says patch {:?} for {}; nothing was applied",
                s.name.raw(),
                m.patch_id,
                m.target.build_id,
                s.meta.patch_id,
                s.meta.build_ids.join(", ")
            )));
        }
        bundles.push(b);
    }
    for s in &prefetch {
        if let Err(e) = download(&rt, &repo, s, opts.verified.as_deref()) {
            tracing::debug!("prefetching {}: {}", s.name.raw(), e.chain());
        }
    }
    let mut modules = Vec::new();
    for (_, s) in &kernel_selected {
        let bytes = download(&rt, &repo, s, opts.verified.as_deref())?;
        let path = crate::kernel::keep_module(&opts.state_dir, &s.sha256, &s.meta, &bytes)
            .map_err(|e| {
                Error::msg(format!(
                    "target {} {}; nothing was applied",
                    s.name.raw(),
                    e.chain()
                ))
            })?;
        modules.push(path);
    }

    tracing::debug!(
        elapsed_ms = t0.elapsed().as_secs_f64() * 1000.0,
        "selected and downloaded"
    );
    let mut failed = Vec::new();

    // Revert withdrawn patches.
    let mut reverted = Vec::new();
    let mut keep = Vec::new();
    for a in std::mem::take(&mut st.applied) {
        if !a.process.alive() {
            continue; // the process ended: nothing to keep track of
        }
        let pid = Pid(a.process.pid);
        if !live_ids(pid).contains(&a.patch_id) {
            // Reverted by someone else, or recorded by an agent that was killed before its
            // apply switched (selection above has taken the process up again if the patch is
            // still wanted).
            continue;
        }
        let replaced_here = selected
            .iter()
            .any(|(_, s)| s.replace.get(&a.process.pid) == Some(&a.patch_id));
        if channel_ids.contains(&a.patch_id) || replaced_here {
            // Still wanted; or withdrawn but about to be replaced in this process in one
            // switch (reverting first would leave it unpatched in between).
            keep.push(a);
            continue;
        }
        let result = revert_in(&a.patch_id, pid, opts.timeout);
        match result {
            Ok(()) => reverted.push(RevertedReport {
                patch_id: a.patch_id.clone(),
                target: a.target.clone(),
                pid: pid.0,
            }),
            Err(error) => {
                failed.push(Failure {
                    stage: "revert",
                    patch_id: a.patch_id.clone(),
                    target: a.target.clone(),
                    pid: pid.0,
                    error,
                    outcome: None,
                });
                keep.push(a);
            }
        }
    }
    st.applied = keep;

    // Unload withdrawn kernel patches (those this agent loaded).
    let mut kernel_reports = Vec::new();
    let mut keep = Vec::new();
    for k in std::mem::take(&mut st.kernel) {
        let live = crate::kernel::is_live(&klp, &k.patch_id);
        if channel_ids.contains(&k.patch_id) || !live {
            // Still wanted (kept), or not loaded any more (unloaded by someone else, or not
            // yet loaded again after a reboot: `--boot` does that; the selection above takes
            // it up again if it is still wanted).
            if live {
                keep.push(k);
            } else if !modules.contains(&k.file) {
                // Not loaded and not about to be (withdrawn, or for another kernel now): its
                // copy goes too.
                let _ = std::fs::remove_file(&k.file);
            }
            continue;
        }
        let kopts = klp_options(opts);
        match klp.unload(&k.patch_id, kopts) {
            Ok(r) => {
                let _ = std::fs::remove_file(&k.file);
                kernel_reports.push(KernelReport {
                    patch_id: k.patch_id.clone(),
                    target: k.target.clone(),
                    action: "unloaded",
                    file: k.file.clone(),
                    load_seconds: None,
                    transition_seconds: r.transition_seconds,
                });
            }
            Err(e) => {
                failed.push(Failure {
                    stage: "kernel-unload",
                    patch_id: k.patch_id.clone(),
                    target: k.target.clone(),
                    pid: 0,
                    error: e.to_string(),
                    outcome: None,
                });
                keep.push(k);
            }
        }
    }
    st.kernel = keep;

    // Load kernel patches for this kernel.
    for ((index, s), path) in kernel_selected.iter().zip(&modules) {
        // Recorded before the load, like a process before its apply.
        st.kernel.retain(|k| k.patch_id != s.meta.patch_id);
        st.kernel.push(state::KernelPatch {
            patch_id: s.meta.patch_id.clone(),
            target: s.name.raw().to_string(),
            sha256: s.sha256.clone(),
            file: path.clone(),
            kernel_release: s.meta.kernel_release.clone(),
            kernel_build_id: s.meta.kernel_build_id.clone(),
            loaded_at: crate::now_secs(),
        });
        st.save(&opts.state_dir)?;
        let kopts = klp_options(opts);
        let loaded = klp
            .load(path, kopts)
            .map_err(|e| ("kernel-load", e.to_string()));
        let loaded = loaded.and_then(|r| match kernel_health_gate(&opts.health, &klp, &s.meta.patch_id) {
            Ok(()) => Ok(r),
            Err(why) => {
                let kopts = klp_options(opts);
                let unloaded = !crate::kernel::is_live(&klp, &s.meta.patch_id)
                    || klp.unload(&s.meta.patch_id, kopts).is_ok();
                hold(st, s, &why);
                Err((
                    "health",
                    format!(
                        "{why}; {}",
                        if unloaded {
                            "the patch was unloaded; the target is held back on this host"
                        } else {
                            "unloading the patch failed too; the target is held back on this host"
                        }
                    ),
                ))
            }
        });
        match loaded {
            Ok(r) => {
                reports[*index].action = "applied";
                kernel_reports.push(KernelReport {
                    patch_id: s.meta.patch_id.clone(),
                    target: s.name.raw().to_string(),
                    action: "loaded",
                    file: path.clone(),
                    load_seconds: Some(r.load_seconds),
                    transition_seconds: r.transition_seconds,
                });
            }
            Err((stage, error)) => {
                reports[*index].action = "failed";
                if !crate::kernel::is_live(&klp, &s.meta.patch_id) {
                    st.kernel.retain(|k| k.patch_id != s.meta.patch_id);
                    let _ = std::fs::remove_file(path);
                }
                failed.push(Failure {
                    stage,
                    patch_id: s.meta.patch_id.clone(),
                    target: s.name.raw().to_string(),
                    pid: 0,
                    error,
                    outcome: None,
                });
            }
        }
    }
    if !st.kernel.is_empty() {
        // What `--boot` verifies the kept modules against.
        let json = serde_json::to_vec(repo.targets())
            .map_err(|e| Error::with("cannot serialise the targets metadata", e))?;
        crate::kernel::keep_targets(&opts.state_dir, &json)?;
    }

    // Apply.
    let mut applied = Vec::new();
    let bopts = BundleOptions {
        timeout: opts.timeout,
        patch_id: None,
        replace: None,
        scan_suspended: true,
        move_frames: true,
        transition: None,
    };
    for ((index, s), b) in selected.iter().zip(&bundles) {
        // One apply per patch replaced (none, or one of `replaces`), each over its processes.
        let mut groups: std::collections::BTreeMap<Option<&String>, Vec<Pid>> = Default::default();
        for p in &s.pending {
            groups.entry(s.replace.get(&p.0)).or_default().push(*p);
        }
        let mut any = false;
        for (replaced, pending) in groups {
            let bopts = BundleOptions {
                replace: replaced.cloned(),
                ..bopts.clone()
            };
            let idents: Vec<Option<ProcId>> = pending.iter().map(|p| ProcId::of(p.0)).collect();
            // Recorded before the apply: an agent killed during it still knows which processes it
            // may have patched (the next pass drops the entries whose patch is not live).
            for process in idents.iter().flatten() {
                let known = st
                    .applied
                    .iter()
                    .any(|a| a.patch_id == s.meta.patch_id && a.process == *process);
                if !known {
                    st.applied.push(AppliedPatch {
                        patch_id: s.meta.patch_id.clone(),
                        target: s.name.raw().to_string(),
                        sha256: s.sha256.clone(),
                        process: *process,
                        object: String::new(),
                        build_id: b.manifest.target.build_id.clone(),
                        applied_at: crate::now_secs(),
                    });
                }
            }
            st.save(&opts.state_dir)?;
            let forget = |st: &mut State, process: Option<ProcId>| {
                st.applied
                    .retain(|a| !(a.patch_id == s.meta.patch_id && Some(a.process) == process));
            };
            let mut done = Vec::new();
            let each = |o: suture_process::targets::ProcessOutcome<_, _>| {
                done.push((o, crate::exec_events::monotonic_ns()));
            };
            let started = bundle::apply(
                b,
                &Targets::Pids(pending.clone()),
                &bopts,
                suture_process::targets::default_jobs(bopts.transition.is_some()),
                each,
            );
            // Outcomes arrive as processes finish: each is paired with its process's identity
            // by pid, not by position.
            done.sort_by_key(|(o, _)| pending.iter().position(|p| *p == o.pid));
            let outcomes = match started {
                Ok(()) => done,
                Err(e) => {
                    for (p, ident) in pending.iter().zip(&idents) {
                        forget(st, *ident);
                        failed.push(Failure {
                            stage: "apply",
                            patch_id: s.meta.patch_id.clone(),
                            target: s.name.raw().to_string(),
                            pid: p.0,
                            error: e.to_string(),
                            outcome: Some(Outcome::Untouched),
                        });
                    }
                    reports[*index].action = "failed";
                    continue;
                }
            };
            for (o, live_ns) in outcomes {
                let ident = pending
                    .iter()
                    .position(|p| *p == o.pid)
                    .and_then(|i| idents[i]);
                match o.result {
                    Ok(done) => {
                        let live_age_ms = ident.and_then(|p| p.age()).map(|d| d.as_millis() as u64);
                        let exec_to_live_us = match &opts.trigger {
                            Trigger::ExecEvent(seen) => seen
                                .get(&o.pid.0)
                                .map(|&at| live_ns.saturating_sub(at) / 1000),
                            _ => None,
                        };
                        if let Err(why) =
                            health_gate(&opts.health, ident, &s.meta.patch_id, &done.object)
                        {
                            let pid = o.pid;
                            let reverted = !ident.is_some_and(|p| p.alive())
                                || revert_in(&s.meta.patch_id, pid, opts.timeout).is_ok();
                            if reverted {
                                forget(st, ident);
                            }
                            hold(st, s, &why);
                            failed.push(Failure {
                            stage: "health",
                            patch_id: s.meta.patch_id.clone(),
                            target: s.name.raw().to_string(),
                            pid: pid.0,
                            error: format!(
                                "{why}; {}",
                                if reverted {
                                    "the patch was reverted; the target is held back on this host"
                                } else {
                                    "reverting the patch failed too; the target is held back on this host"
                                }
                            ),
                            outcome: None,
                        });
                            continue;
                        }
                        any = true;
                        let build_id = b.manifest.target.build_id.clone();
                        applied.push(AppliedReport {
                            patch_id: s.meta.patch_id.clone(),
                            target: s.name.raw().to_string(),
                            pid: o.pid.0,
                            object: done.object.clone(),
                            build_id,
                            stop_window_us: done.applied.stop_window_us,
                            process_age_ms: live_age_ms,
                            exec_to_live_us,
                            replaced: replaced.cloned(),
                        });
                        if let Some(old) = replaced {
                            // Replaced in the same switch: no longer live there.
                            st.applied
                                .retain(|a| !(a.patch_id == *old && Some(a.process) == ident));
                        }
                        for a in st.applied.iter_mut() {
                            if a.patch_id == s.meta.patch_id && Some(a.process) == ident {
                                a.object = done.object.clone();
                                a.applied_at = crate::now_secs();
                            }
                        }
                    }
                    Err(e) => {
                        forget(st, ident);
                        failed.push(Failure {
                            stage: "apply",
                            patch_id: s.meta.patch_id.clone(),
                            target: s.name.raw().to_string(),
                            pid: o.pid.0,
                            error: e.to_string(),
                            outcome: Some(e.outcome()),
                        })
                    }
                }
            }
        }
        reports[*index].action = if any { "applied" } else { "failed" };
    }

    Ok(Report {
        schema: REPORT_SCHEMA,
        ok: failed.is_empty(),
        repo: opts.repo.clone(),
        channel: opts.channel.clone(),
        state_dir: opts.state_dir.clone(),
        seed,
        started_at,
        finished_at: crate::now_secs(),
        trigger: opts.trigger.name(),
        watch: opts.watch.clone(),
        metadata_fetched: fetched,
        metadata,
        targets: reports,
        applied,
        reverted,
        kernel: kernel_reports,
        failed,
    })
}

/// The metrics of a pass (`report`: `None` when it failed) and the state after it.
fn metrics_of(st: &State, report: Option<&Report>) -> crate::metrics::Metrics {
    let mut m = crate::metrics::Metrics {
        last_pass: st.last_pass.unwrap_or(0),
        last_success: st.last_verified.unwrap_or(0),
        ok: report.is_some_and(|r| r.ok),
        verified: report.is_some(),
        ..Default::default()
    };
    for a in &st.applied {
        *m.applied_processes.entry(a.patch_id.clone()).or_default() += 1;
    }
    let klp = suture_kernel::livepatch::Kernel::default();
    for k in &st.kernel {
        m.kernel_patches.insert(
            k.patch_id.clone(),
            crate::kernel::is_live(&klp, &k.patch_id),
        );
    }
    if let Some(v) = &st.metadata {
        m.versions = vec![
            ("root", v.root),
            ("targets", v.targets),
            ("snapshot", v.snapshot),
            ("timestamp", v.timestamp),
        ];
        m.timestamp_expires = v
            .timestamp_expires
            .parse::<jiff::Timestamp>()
            .map_or(0, |t| t.as_second());
    }
    if let Some(r) = report {
        m.seed = Some(r.seed);
        m.pass_applied = r.applied.len() as u64;
        m.pass_reverted = r.reverted.len() as u64;
        m.pass_failed = r.failed.len() as u64;
        for t in &r.targets {
            m.targets
                .push((t.patch_id.clone(), t.name.clone(), t.action.to_string()));
        }
    }
    m
}

/// One patch of the state, as the host runs it now.
#[derive(Clone, Debug, Serialize)]
pub struct StatusEntry {
    #[serde(flatten)]
    pub patch: AppliedPatch,
    /// The process still exists (same pid, same start time).
    pub alive: bool,
    /// The patch is live in it (read from the process).
    pub live: bool,
}

/// `suture agent status --json`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub schema: &'static str,
    pub state_dir: PathBuf,
    pub repo: Option<String>,
    pub last_pass: Option<u64>,
    pub last_verified: Option<u64>,
    pub last_error: Option<String>,
    pub metadata: Option<Versions>,
    pub patches: Vec<StatusEntry>,
    /// Targets held back after failing the health gate.
    pub held: Vec<state::Held>,
    /// How the daemon watched for new processes (as its last pass recorded).
    pub watch: Option<Watch>,
    /// Kernel patches the agent loaded, with `live` (enabled in the running kernel now).
    pub kernel: Vec<KernelStatus>,
}

/// A kernel patch of the state, as the running kernel has it.
#[derive(Clone, Debug, Serialize)]
pub struct KernelStatus {
    #[serde(flatten)]
    pub patch: state::KernelPatch,
    pub live: bool,
}

/// The host's state in `state_dir`, checked against the running processes.
pub fn status(state_dir: &Path) -> Result<Status> {
    let st = State::load(state_dir)?;
    let patches = st
        .applied
        .iter()
        .map(|a| {
            let alive = a.process.alive();
            StatusEntry {
                patch: a.clone(),
                alive,
                live: alive && live_ids(Pid(a.process.pid)).contains(&a.patch_id),
            }
        })
        .collect();
    Ok(Status {
        schema: STATUS_SCHEMA,
        state_dir: state_dir.to_path_buf(),
        repo: st.repo,
        last_pass: st.last_pass,
        last_verified: st.last_verified,
        last_error: st.last_error,
        metadata: st.metadata,
        patches,
        held: st.held,
        watch: st.watch,
        kernel: st
            .kernel
            .into_iter()
            .map(|k| KernelStatus {
                live: crate::kernel::is_live(
                    &suture_kernel::livepatch::Kernel::default(),
                    &k.patch_id,
                ),
                patch: k,
            })
            .collect(),
    })
}

/// Reverts `patch_id` in process `pid` (with the suspended-frame scan); `Ok` when it is not
/// live there either.
fn revert_in(
    patch_id: &str,
    pid: Pid,
    timeout: std::time::Duration,
) -> std::result::Result<(), String> {
    let mut result = Ok(());
    suture_process::targets::revert(patch_id, &Targets::Pids(vec![pid]), timeout, true, 1, |o| {
        result = o.result.map(|_| ()).map_err(|e| e.to_string());
    })
    .map_err(|e| e.to_string())?;
    result
}
