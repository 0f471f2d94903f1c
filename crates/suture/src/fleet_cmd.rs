//! `suture repo` and `suture agent`: glue over `suture_fleet` (docs/fleet.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Subcommand;
use suture_fleet::{agent, repo};

use crate::exit;

/// `suture repo ...`.
#[derive(Subcommand)]
pub enum RepoCommand {
    /// Create a signed repository in DIR (The Update Framework's layout: root, targets,
    /// snapshot and timestamp roles, one new ed25519 key each, written to KEYDIR). Prints the
    /// trusted root to install on every host (`suture agent --trust`).
    Init {
        /// The repository directory: publish it with any static web server or object store.
        dir: PathBuf,
        /// Where to write the signing keys (outside DIR; created with mode 0700, keys 0600).
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        /// Seconds until the timestamp expires (default 7 days): agents refuse the repository
        /// after that unless `suture repo refresh` re-signs it.
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        timestamp_expires_in: Option<i64>,
        /// Print the result as JSON (schema `suture.repo/1`).
        #[arg(long)]
        json: bool,
    },
    /// Add patch bundles (from `suture build`) and kernel livepatch modules (from `suture
    /// build --kernel`) to the repository, with what they patch (build-ids; kernel release and
    /// build-id), their patch id and channel, and re-sign targets, snapshot and timestamp.
    Add {
        dir: PathBuf,
        /// The bundles (*.suture) and modules (*.ko).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The directory `suture repo init` wrote the keys to.
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        /// The rollout channel: agents apply only their channel's patches.
        #[arg(long, value_name = "NAME", default_value = suture_fleet::meta::DEFAULT_CHANNEL)]
        channel: String,
        /// A wave of a staged rollout, PERCENT@DELAY: the first PERCENT of hosts (by their
        /// random seed) may apply from DELAY after now (seconds, or 30m, 6h, 2d); repeat with
        /// growing percentages, e.g. --wave 1@0 --wave 10@1h --wave 100@1d. Default: every
        /// host at once.
        #[arg(long = "wave", value_name = "PERCENT@DELAY")]
        waves: Vec<String>,
        /// The fix's version (reported by agents).
        #[arg(long, value_name = "N")]
        version: Option<u64>,
        /// A patch id this bundle replaces: where it is live, agents switch to this patch in
        /// one step (as `suture apply --replace`); repeat for several.
        #[arg(long = "replaces", value_name = "ID")]
        replaces: Vec<String>,
        /// Seconds until the new timestamp expires (default 7 days).
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        timestamp_expires_in: Option<i64>,
        /// Print the result as JSON (schema `suture.repo/1`).
        #[arg(long)]
        json: bool,
    },
    /// Withdraw every target of patch ID and re-sign: each agent reverts it where it applied
    /// it, on its next pass.
    Withdraw {
        dir: PathBuf,
        /// The patch id (as `suture repo list` shows it).
        id: String,
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        timestamp_expires_in: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Pause the rollout of patch ID: agents apply it nowhere new, and keep it where it is
    /// live, until `suture repo resume`.
    Pause {
        dir: PathBuf,
        id: String,
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        timestamp_expires_in: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Resume the paused rollout of patch ID.
    Resume {
        dir: PathBuf,
        id: String,
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        timestamp_expires_in: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Re-sign targets (same content), snapshot and timestamp with new expiries (run it from a
    /// timer well before the timestamp expires).
    Refresh {
        dir: PathBuf,
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        /// Seconds until the new timestamp expires (default 7 days; a negative value writes an
        /// expired timestamp, for testing agents).
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        timestamp_expires_in: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Replace the signing key of one role (root, targets, snapshot or timestamp) by a new one:
    /// writes the next root version (signed by the current and, for root, the new root key),
    /// re-signs the other roles, and moves the old key file aside. Agents follow the change
    /// through the root chain from the root they trust.
    RotateKey {
        dir: PathBuf,
        /// root, targets, snapshot or timestamp.
        role: String,
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        timestamp_expires_in: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// List the repository's targets with their metadata (signatures verified, expiry not).
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

impl RepoCommand {
    pub fn json(&self) -> bool {
        match self {
            RepoCommand::Init { json, .. }
            | RepoCommand::Add { json, .. }
            | RepoCommand::Withdraw { json, .. }
            | RepoCommand::Refresh { json, .. }
            | RepoCommand::Pause { json, .. }
            | RepoCommand::Resume { json, .. }
            | RepoCommand::RotateKey { json, .. }
            | RepoCommand::List { json, .. } => *json,
        }
    }
}

/// `suture agent status`.
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Show what the agent applied on this host (from its state, checked against the running
    /// processes) and how its last pass went.
    Status {
        /// The agent's state directory.
        #[arg(long = "state", value_name = "DIR", default_value = suture_fleet::state::DEFAULT_DIR)]
        state_dir: PathBuf,
        /// Print the status as JSON (schema `suture.agent-status/1`).
        #[arg(long)]
        json: bool,
    },
}

/// The options of `suture agent` (a pass).
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The repository: an http://, https:// or file:// URL, or a local directory.
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// The trusted root.json (printed by `suture repo init`), installed on the host.
    #[arg(long, value_name = "ROOT.json")]
    pub trust: Option<PathBuf>,
    /// The agent's state directory (what it applied; the TUF client's trusted metadata).
    #[arg(long = "state", value_name = "DIR", default_value = suture_fleet::state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
    /// The channel to follow.
    #[arg(long, value_name = "NAME", default_value = suture_fleet::meta::DEFAULT_CHANNEL)]
    pub channel: String,
    /// One pass, then exit. Without it the agent runs a pass every --interval seconds.
    #[arg(long)]
    pub once: bool,
    /// At boot, before services start: load again the kernel patches the state records as
    /// loaded, each verified again against the signed metadata kept by the last verified
    /// pass; no network (needs neither --repo nor --trust).
    #[arg(long, conflicts_with = "once")]
    pub boot: bool,
    /// Seconds between full passes (without --once).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub interval: u64,
    /// Without --once: every SECONDS between full passes, look for processes started since
    /// the last look that map a file a patch of the channel is for, and run a pass for them
    /// (0: only full passes).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub rescan: f64,
    /// Without --once: do not take new processes from the kernel's exec events (proc
    /// connector); poll every --rescan seconds instead. Without this flag, polling is only
    /// the fallback where exec events are unavailable.
    #[arg(long)]
    pub no_exec_events: bool,
    /// Only consider these processes and their descendants (repeat for several; default:
    /// every process).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<i32>,
    /// Per process, seconds to keep retrying apply or revert while patched code runs.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,
    /// Health gate: a command run (with `sh -c`) after each apply, with SUTURE_PID,
    /// SUTURE_PATCH_ID and SUTURE_OBJECT set; a non-zero exit (or the process gone) reverts
    /// the patch in that process and holds the target back on this host.
    #[arg(long, value_name = "CMD")]
    pub health_check: Option<String>,
    /// Seconds to wait after each apply before the health gate looks (the process must still
    /// be running, then --health-check must pass).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub health_settle: f64,
    /// Seconds --health-check may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub health_timeout: f64,
    /// After every pass, write Prometheus text-format metrics to FILE (atomically; point
    /// node_exporter's textfile collector at its directory).
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// Print each pass's report as JSON (schema `suture.agent/1`).
    #[arg(long)]
    pub json: bool,
}

fn expiry(secs: Option<i64>) -> repo::Expiry {
    let mut e = repo::Expiry::default();
    if let Some(s) = secs {
        e.timestamp_secs = s;
    }
    e
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    crate::out(&format!("{}\n", serde_json::to_string_pretty(v)?));
    Ok(())
}

fn fleet(e: suture_fleet::Error) -> anyhow::Error {
    anyhow::Error::new(e)
}

fn signed_text(verb: &str, s: &repo::Signed) -> String {
    let mut t = String::new();
    for c in &s.changed {
        let what = c.meta.as_ref().map_or(String::new(), |m| {
            let on = if m.build_ids.is_empty() {
                m.kernel_release.clone().unwrap_or_default()
            } else {
                format!("build-id {}", m.build_ids.join(", "))
            };
            format!(" (patch {}, channel {}, {on})", m.patch_id, m.channel)
        });
        t += &format!("{verb} {}{what}\n", c.name);
    }
    t += &format!(
        "signed: targets v{}, snapshot v{}, timestamp v{} (expires {})\n",
        s.targets_version, s.snapshot_version, s.timestamp_version, s.timestamp_expires
    );
    t
}

/// Prints a signing command's result: its JSON, or one line per changed target and the
/// versions signed.
fn print_signed(verb: &str, r: &repo::Signed, json: bool) -> Result<()> {
    if json {
        print_json(r)
    } else {
        crate::out(&signed_text(verb, r));
        Ok(())
    }
}

/// `repo pause` (`paused`) and `repo resume`.
fn pause(
    dir: &std::path::Path,
    id: &str,
    keys: &std::path::Path,
    timestamp_expires_in: Option<i64>,
    json: bool,
    paused: bool,
) -> Result<()> {
    let r = repo::pause(dir, keys, id, paused, &expiry(timestamp_expires_in)).map_err(fleet)?;
    print_signed(if paused { "paused" } else { "resumed" }, &r, json)
}

pub fn repo(cmd: RepoCommand) -> Result<u8> {
    match cmd {
        RepoCommand::Init {
            dir,
            keys,
            timestamp_expires_in,
            json,
        } => {
            let r = repo::init(&dir, &keys, &expiry(timestamp_expires_in)).map_err(fleet)?;
            if json {
                print_json(&r)?;
            } else {
                crate::out(&format!(
                    "repository in {} (publish this directory)\nkeys in {} (keep them off the \
                     web server)\ntrusted root to install on hosts: {}\n",
                    dir.display(),
                    keys.display(),
                    r.root.display()
                ));
            }
        }
        RepoCommand::Add {
            dir,
            files,
            keys,
            channel,
            waves,
            version,
            replaces,
            timestamp_expires_in,
            json,
        } => {
            let r = repo::add(
                &dir,
                &keys,
                &files,
                &repo::Placement {
                    channel,
                    waves,
                    version,
                    replaces,
                },
                &expiry(timestamp_expires_in),
            )
            .map_err(fleet)?;
            print_signed("added", &r, json)?;
        }
        RepoCommand::Withdraw {
            dir,
            id,
            keys,
            timestamp_expires_in,
            json,
        } => {
            let r =
                repo::withdraw(&dir, &keys, &id, &expiry(timestamp_expires_in)).map_err(fleet)?;
            print_signed("withdrew", &r, json)?;
        }
        RepoCommand::Pause {
            dir,
            id,
            keys,
            timestamp_expires_in,
            json,
        } => pause(&dir, &id, &keys, timestamp_expires_in, json, true)?,
        RepoCommand::Resume {
            dir,
            id,
            keys,
            timestamp_expires_in,
            json,
        } => pause(&dir, &id, &keys, timestamp_expires_in, json, false)?,
        RepoCommand::Refresh {
            dir,
            keys,
            timestamp_expires_in,
            json,
        } => {
            let r = repo::refresh(&dir, &keys, &expiry(timestamp_expires_in)).map_err(fleet)?;
            print_signed("", &r, json)?;
        }
        RepoCommand::RotateKey {
            dir,
            role,
            keys,
            timestamp_expires_in,
            json,
        } => {
            let r =
                repo::rotate(&dir, &keys, &role, &expiry(timestamp_expires_in)).map_err(fleet)?;
            if json {
                print_json(&r)?;
            } else {
                crate::out(&format!(
                    "new {role} key in {}; old one moved to {}\nroot v{} written: {}\n{}",
                    keys.join(format!("{role}.pk8")).display(),
                    r.retired_key.display(),
                    r.root_version,
                    r.root.display(),
                    signed_text("", &r.signed)
                ));
            }
        }
        RepoCommand::List { dir, json } => {
            let r = repo::list(&dir).map_err(fleet)?;
            if json {
                print_json(&serde_json::json!({"schema": "suture.repo-list/1", "targets": r}))?;
            } else if r.is_empty() {
                crate::out("no targets\n");
            } else {
                let mut t = String::new();
                for l in &r {
                    match &l.meta {
                        Some(m) => {
                            t += &format!(
                                "{}: patch {} ({}), channel {}, {}\n",
                                l.name,
                                m.patch_id,
                                match m.kind {
                                    suture_fleet::meta::Kind::Process => "process",
                                    suture_fleet::meta::Kind::Kernel => "kernel",
                                },
                                m.channel,
                                if m.build_ids.is_empty() {
                                    format!("kernel {}", m.kernel_release.as_deref().unwrap_or("?"))
                                } else {
                                    format!("build-id {}", m.build_ids.join(", "))
                                }
                            )
                        }
                        None => t += &format!("{}: (no suture metadata)\n", l.name),
                    }
                }
                crate::out(&t);
            }
        }
    }
    Ok(exit::OK)
}

pub fn agent(args: AgentArgs, command: Option<AgentCommand>) -> Result<u8> {
    if let Some(AgentCommand::Status { state_dir, json }) = command {
        let s = agent::status(&state_dir).map_err(fleet)?;
        if json {
            print_json(&s)?;
        } else {
            crate::out(&status_text(&s));
        }
        return Ok(exit::OK);
    }
    if args.boot {
        if !(0.0..=3600.0).contains(&args.timeout) {
            bail!("--timeout must be between 0 and 3600 seconds");
        }
        let r = suture_fleet::kernel::boot(&args.state_dir, Duration::from_secs_f64(args.timeout))
            .map_err(fleet)?;
        if args.json {
            print_json(&r)?;
        } else {
            crate::out(&boot_text(&r));
        }
        return Ok(if r.ok { exit::OK } else { exit::ERROR });
    }
    let (Some(repo), Some(trust)) = (args.repo.clone(), args.trust.clone()) else {
        bail!("suture agent needs --repo URL and --trust ROOT.json (or the `status` subcommand)");
    };
    for (name, v) in [
        ("--timeout", args.timeout),
        ("--health-settle", args.health_settle),
        ("--health-timeout", args.health_timeout),
    ] {
        if !(0.0..=3600.0).contains(&v) {
            bail!("{name} must be between 0 and 3600 seconds");
        }
    }
    let opts = agent::Options {
        repo,
        trust,
        state_dir: args.state_dir.clone(),
        channel: args.channel.clone(),
        only_pids: (!args.pids.is_empty()).then(|| args.pids.clone()),
        metrics: args.metrics.clone(),
        health: agent::Health {
            settle: Duration::from_secs_f64(args.health_settle),
            check: args.health_check.clone(),
            check_timeout: Duration::from_secs_f64(args.health_timeout),
        },
        timeout: Duration::from_secs_f64(args.timeout),
        trigger: agent::Trigger::Full,
        watch: None,
        verified: None,
    };
    if args.once {
        let r = agent::run_once(&opts).map_err(fleet)?;
        if args.json {
            print_json(&r)?;
        } else {
            crate::out(&report_text(&r));
        }
        return Ok(if r.ok { exit::OK } else { exit::ERROR });
    }
    if !(0.0..=3600.0).contains(&args.rescan) {
        bail!("--rescan must be between 0 and 3600 seconds");
    }
    let (new, watch) = suture_fleet::daemon::NewProcesses::start(
        !args.no_exec_events,
        Duration::from_secs_f64(args.rescan),
    );
    if let (false, Some(why)) = (args.no_exec_events, &watch.reason) {
        eprintln!("suture: agent: {why}; new processes: {}", watch.mode);
    }
    suture_fleet::daemon::run_daemon(
        &opts,
        Duration::from_secs(args.interval.max(1)),
        new,
        watch,
        |r| match r {
            Ok(r) if args.json => {
                let _ = print_json(&r);
            }
            Ok(r) => crate::out(&report_text(&r)),
            Err(e) => eprintln!("suture: agent: {}", e.chain()),
        },
    )
}

fn boot_text(r: &suture_fleet::kernel::BootReport) -> String {
    let mut t = String::new();
    if r.modules.is_empty() {
        t += "no kernel patches to restore\n";
    }
    for m in &r.modules {
        match &m.error {
            None => t += &format!("{}: {} ({})\n", m.patch_id, m.action, m.file.display()),
            Some(e) => t += &format!("{}: {}: {e}\n", m.patch_id, m.action),
        }
    }
    t
}

fn report_text(r: &agent::Report) -> String {
    let mut t = format!(
        "repository {} verified (targets v{}, timestamp v{}, expires {})\n",
        r.repo, r.metadata.targets, r.metadata.timestamp, r.metadata.timestamp_expires
    );
    for a in &r.reverted {
        t += &format!(
            "{}: reverted in process {} (withdrawn)\n",
            a.patch_id, a.pid
        );
    }
    for a in &r.applied {
        t += &format!(
            "{}: live in process {} on {} (stopped {} us)\n",
            a.patch_id, a.pid, a.object, a.stop_window_us
        );
    }
    for k in &r.kernel {
        t += &format!("{}: kernel patch {}\n", k.patch_id, k.action);
    }
    for x in &r.targets {
        match (x.action, x.wave_start) {
            ("waiting", Some(at)) => {
                t += &format!(
                    "{}: waiting for this host's wave (seed {}), from {at} (seconds since the \
                     epoch)\n",
                    x.patch_id, r.seed
                )
            }
            ("not-in-wave", _) => {
                t += &format!(
                    "{}: no wave includes this host (seed {})\n",
                    x.patch_id, r.seed
                )
            }
            _ => {}
        }
    }
    for f in &r.failed {
        t += &format!(
            "{}: {} failed in process {}: {}\n",
            f.patch_id, f.stage, f.pid, f.error
        );
    }
    if r.applied.is_empty() && r.reverted.is_empty() && r.kernel.is_empty() && r.failed.is_empty() {
        t += "nothing to do\n";
    }
    t
}

fn status_text(s: &agent::Status) -> String {
    let mut t = String::new();
    match (s.last_pass, &s.last_error) {
        (None, _) => t += "no pass yet\n",
        (Some(at), None) => {
            t += &format!("last pass at {at} (seconds since the epoch): verified\n")
        }
        (Some(at), Some(e)) => t += &format!("last pass at {at} failed: {e}\n"),
    }
    if let Some(m) = &s.metadata {
        t += &format!(
            "trusted metadata: targets v{}, snapshot v{}, timestamp v{} (expires {})\n",
            m.targets, m.snapshot, m.timestamp, m.timestamp_expires
        );
    }
    if let Some(w) = &s.watch {
        t += &format!("new processes: {}", w.mode);
        if let Some(why) = &w.reason {
            t += &format!(" ({why})");
        }
        t += "\n";
    }
    for k in &s.kernel {
        t += &format!(
            "{}: kernel patch {} ({})\n",
            k.patch.patch_id,
            if k.live { "live" } else { "not live" },
            k.patch.target
        );
    }
    if s.patches.is_empty() && s.kernel.is_empty() {
        t += "no patches applied by the agent\n";
    }
    for h in &s.held {
        t += &format!(
            "{}: held back on this host ({}): {}\n",
            h.patch_id, h.target, h.error
        );
    }
    for p in &s.patches {
        let state = match (p.alive, p.live) {
            (true, true) => "live",
            (true, false) => "not live",
            (false, _) => "process gone",
        };
        t += &format!(
            "{}: {state} in process {} on {} ({})\n",
            p.patch.patch_id, p.patch.process.pid, p.patch.object, p.patch.target
        );
    }
    t
}
