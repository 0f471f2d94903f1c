//! `suture apply`, `suture revert`, `suture status`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use suture_process::apply::{ApplyOptions, LivePatch};
use suture_process::header::State;
use suture_process::ids::Pid;
use suture_process::targets::{self, Targets};

use crate::exit;

/// The processes `--pid`/`--all` name.
pub(crate) fn targets(req: &ApplyRequest) -> Targets {
    pids_or_all(&req.pids, req.all)
}

fn pids_or_all(pids: &[i32], all: bool) -> Targets {
    if all {
        Targets::All
    } else {
        Targets::Pids(pids.iter().copied().map(Pid).collect())
    }
}

fn seconds(s: f64) -> Result<Duration> {
    if !(0.0..=3600.0).contains(&s) {
        bail!("--timeout must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// What `suture apply` was asked to do.
#[derive(Clone)]
pub struct ApplyRequest {
    pub pids: Vec<i32>,
    pub all: bool,
    pub object: Option<String>,
    pub id: Option<String>,
    /// A live patch id this one replaces atomically.
    pub replace: Option<String>,
    pub timeout: f64,
    /// Look for suspended frames in the replaced functions (`--no-suspended-scan` clears it).
    pub scan_suspended: bool,
    /// Move waiting frames to the patched code (`--no-osr` clears it).
    pub move_frames: bool,
    /// `--transition`: switch at once with a per-thread transition, which may take this many
    /// seconds (`--transition-timeout`).
    pub transition: Option<f64>,
    /// How many processes to work on at once (`--jobs`).
    pub jobs: usize,
    pub json: bool,
}

/// The transition's timeout, when `--transition` was given.
pub(crate) fn transition(req: &ApplyRequest) -> Result<Option<Duration>> {
    req.transition
        .map(|s| {
            if !(0.0..=86400.0).contains(&s) {
                bail!("--transition-timeout must be between 0 and 86400 seconds");
            }
            Ok(Duration::from_secs_f64(s))
        })
        .transpose()
}

/// "N functions redirected, stopped X us for the switch", and how many threads were caught
/// as they returned when any were.
pub fn switch_summary(a: &suture_process::apply::Applied) -> String {
    let mut s = format!(
        "{} functions redirected, stopped {} us for the switch",
        a.redirects.len(),
        a.stop_window_us
    );
    if a.caught_returns > 0 {
        s.push_str(&format!(
            "; {} thread(s) caught as they returned from a replaced function",
            a.caught_returns
        ));
    }
    s.push_str(&moved_summary(&a.moved_frames));
    if let Some(t) = &a.transition {
        s.push_str(&transition_summary(t));
    }
    s
}

/// "; per-thread transition: ..." for `apply --transition`.
fn transition_summary(t: &suture_process::apply::TransitionReport) -> String {
    if t.old_threads.is_empty() {
        return "; no thread was inside a replaced function, so no transition was needed".into();
    }
    let list: Vec<String> = t.old_threads.iter().map(i32::to_string).collect();
    let how = match t.completed {
        "moved" => format!(
            "then the last ones were moved to the new code ({} frame(s), on-stack replacement)",
            t.moved_frames.len()
        ),
        "exited" => "until the process ended".to_string(),
        _ => "until they left the replaced functions".to_string(),
    };
    format!(
        "; per-thread transition: thread(s) {} ran the old code {how}, complete after {} ms \
         ({} check(s))",
        list.join(", "),
        t.duration_ms,
        t.checks
    )
}

/// "; N frame(s) moved to the other version (threads ...)" when on-stack replacement moved
/// any.
fn moved_summary(moved: &[suture_process::apply::MovedFrame]) -> String {
    if moved.is_empty() {
        return String::new();
    }
    let mut threads: Vec<i32> = moved.iter().map(|m| m.thread).collect();
    threads.dedup();
    let list: Vec<String> = threads.iter().map(i32::to_string).collect();
    format!(
        "; {} waiting frame(s) moved to the other version (on-stack replacement, thread(s) {})",
        moved.len(),
        list.join(", ")
    )
}

pub fn apply(patch: &Path, req: ApplyRequest) -> Result<u8> {
    if patch.is_dir() {
        return apply_dir(patch, req);
    }
    let bytes = crate::read(patch)?;
    if suture_bundle::is_bundle(&bytes) {
        let timeout = seconds(req.timeout)?;
        return crate::build_cmd::apply_bundle(patch, &bytes, &req, timeout);
    }
    let id = req.id.clone().unwrap_or_else(|| {
        patch
            .file_stem()
            .map_or_else(|| "patch".into(), |s| s.to_string_lossy().into_owned())
    });
    if req.all && req.object.is_none() {
        bail!("--all needs --object");
    }
    let opts = ApplyOptions {
        timeout: seconds(req.timeout)?,
        patch_id: id.clone(),
        object: req.object.clone(),
        replace: req.replace.clone(),
        scan_suspended: req.scan_suspended,
        move_frames: req.move_frames,
        transition: transition(&req)?,
        ..Default::default()
    };
    let json = req.json;
    let mut results = Vec::new();
    let mut failed = 0;
    targets::apply_object(&bytes, &targets(&req), &opts, req.jobs, |o| {
        let pid = o.pid;
        match o.result {
            Ok(a) => {
                if !json {
                    crate::out(&format!(
                        "{id}: live in process {pid} ({})\n",
                        switch_summary(&a)
                    ));
                }
                results.push(json!({"pid": pid.0, "applied": true, "result": a}));
            }
            Err(e) => {
                failed += 1;
                if !json {
                    eprintln!("suture: process {pid}: {e}");
                }
                results.push(json!({"pid": pid.0, "applied": false, "error": e.to_string(), "outcome": e.outcome(), "busy": e.busy()}));
            }
        }
    })?;
    if json {
        sort_by_pid(&mut results);
        crate::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(
                &json!({"schema": "suture.process/2", "patch_id": id, "processes": results})
            )?
        ));
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}

/// Orders per-process results by pid: processes are worked on side by side and finish in
/// any order; the JSON lists them in a stable one.
pub(crate) fn sort_by_pid(results: &mut [serde_json::Value]) {
    results.sort_by_key(|r| r["pid"].as_i64());
}

/// The patch id `revert` means by `arg`: a bundle file stands for the id in its manifest, a
/// patch object (`*.o`) for its file stem (the id `apply` records by default); anything else
/// is the id itself.
fn patch_id_of(arg: &str) -> Result<String> {
    let path = Path::new(arg);
    if !path.is_file() {
        return Ok(arg.to_string());
    }
    let bytes = crate::read(path)?;
    if suture_bundle::is_bundle(&bytes) {
        let b = suture_bundle::decode(&bytes)
            .with_context(|| format!("{} is not a valid bundle", path.display()))?;
        return Ok(b.manifest.patch_id);
    }
    if bytes.starts_with(b"\x7fELF") {
        if let Some(stem) = path.file_stem() {
            return Ok(stem.to_string_lossy().into_owned());
        }
    }
    Ok(arg.to_string())
}

pub fn revert(
    arg: &str,
    pids: &[i32],
    all: bool,
    timeout: f64,
    scan_suspended: bool,
    jobs: usize,
    json: bool,
) -> Result<u8> {
    let timeout = seconds(timeout)?;
    let id = &patch_id_of(arg)?;
    let mut results = Vec::new();
    let mut failed = 0;
    let which = pids_or_all(pids, all);
    targets::revert(id, &which, timeout, scan_suspended, jobs, |o| {
        let pid = o.pid;
        match o.result {
            Ok(r) => {
                if !json {
                    crate::out(&format!(
                        "{id}: reverted in process {pid}{}\n",
                        moved_summary(&r.moved_frames)
                    ));
                }
                results.push(
                    json!({"pid": pid.0, "reverted": true, "attempts": r.attempts,
                    "stop_window_us": r.stop_window_us, "stop_phases": r.stop_phases,
                    "moved_frames": r.moved_frames}),
                );
            }
            Err(e) => {
                failed += 1;
                if !json {
                    eprintln!("suture: process {pid}: {e}");
                }
                results.push(json!({"pid": pid.0, "reverted": false, "error": e.to_string(), "outcome": e.outcome(), "busy": e.busy()}));
            }
        }
    })?;
    if json {
        sort_by_pid(&mut results);
        crate::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(
                &json!({"schema": "suture.process/2", "patch_id": id, "processes": results})
            )?
        ));
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}

use suture_process::hexjson::hex;

pub fn status(pid: Option<i32>, json: bool) -> Result<u8> {
    let which = match pid {
        Some(p) => Targets::Pids(vec![Pid(p)]),
        None => Targets::All,
    };
    let mut live: Vec<LivePatch> = Vec::new();
    // Processes that exist but could not be read: their patches, if any, are not listed.
    let mut unreadable: Vec<(i32, String)> = Vec::new();
    for o in targets::status(&which) {
        match o.result {
            Ok(v) => live.extend(v),
            Err(e) if pid.is_some() => bail!("process {}: {e}", o.pid),
            // A process that ended during the scan has nothing to show.
            Err(_) if !Path::new(&format!("/proc/{}", o.pid.0)).exists() => {}
            Err(e) => unreadable.push((o.pid.0, e.to_string())),
        }
    }
    if let Some((p, why)) = unreadable.first() {
        eprintln!(
            "suture: warning: {} process(es) could not be read, so their patches are not \
             listed (process {p}: {why})",
            unreadable.len()
        );
    }
    if json {
        let unreadable: Vec<_> = unreadable
            .iter()
            .map(|(p, why)| json!({"pid": p, "error": why}))
            .collect();
        crate::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(
                &json!({ "schema": "suture.status/2", "patches": live, "unreadable": unreadable })
            )?
        ));
        return Ok(exit::OK);
    }
    let mut text = String::new();
    if !live.iter().any(|l| l.header.state == State::Live) {
        text.push_str(if live.is_empty() {
            "no live patches\n"
        } else {
            "no live patches; regions of patches that are not live:\n"
        });
    }
    // Live patches first; then regions kept after a revert ("reverted": the program may still
    // point into them, and the next apply of that patch reuses them) and leftovers of an
    // interrupted apply ("loaded": reclaimed by the next apply).
    live.sort_by_key(|l| (l.header.state != State::Live, l.pid, l.base));
    for l in &live {
        let state = serde_json::to_value(l.header.state)?;
        text += &format!(
            "{}\n",
            format_args!(
                "process {}: {} ({}) on {} [build-id {}], {} functions, region {:#x}",
                l.pid,
                l.header.patch_id,
                state.as_str().unwrap_or("?"),
                l.header.object,
                hex(&l.header.build_id),
                l.header.redirects.len(),
                l.base
            )
        );
        if !l.old_threads.is_empty() {
            let list: Vec<String> = l.old_threads.iter().map(|s| s.tid.to_string()).collect();
            let driver = match l.transition_driver {
                Some(d) => format!("suture process {d} drives it"),
                None => "nothing drives it any more (its suture was killed): `suture revert` \
                         ends it"
                    .to_string(),
            };
            text += &format!(
                "  in transition: thread(s) {} still run the old code (every other thread the \
                 new); {driver}\n",
                list.join(", ")
            );
        }
    }
    let states: Vec<State> = live.iter().map(|l| l.header.state).collect();
    if states.contains(&State::Reverted) {
        text.push_str(
            "(reverted: kept mapped after a revert or replacement, because the program may still \
             point into it; the next apply of that patch reuses it)\n",
        );
    }
    if states.contains(&State::Loaded) {
        text.push_str(
            "(loaded: left by an apply that was interrupted before its switch, never live; the \
             next apply in that process reclaims it)\n",
        );
    }
    crate::out(&text);
    Ok(exit::OK)
}

/// `suture apply DIR`: every bundle (`*.suture`) in DIR, in name order, as `suture build`
/// writes them (one per changed file). With `--all`, a bundle whose file no running process
/// maps is reported and skipped, not an error: nothing runs that code. The exit status is the
/// worst of the bundles'; with `--json`, one document per bundle follows another.
fn apply_dir(dir: &Path, req: ApplyRequest) -> Result<u8> {
    let mut bundles: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "suture") && p.is_file())
        .collect();
    bundles.sort();
    if bundles.is_empty() {
        bail!("{} holds no bundle (*.suture)", dir.display());
    }
    let mut worst = exit::OK;
    for b in &bundles {
        match apply(b, req.clone()) {
            Ok(code) => worst = worst.max(code),
            Err(e)
                if req.all
                    && e.downcast_ref::<suture_process::targets::NoTargets>()
                        .is_some() =>
            {
                if req.json {
                    crate::out(&format!(
                        "{}\n",
                        serde_json::to_string_pretty(&json!({
                            "schema": "suture.process/2",
                            "bundle": b.display().to_string(),
                            "processes": [],
                            "skipped": e.to_string()
                        }))?
                    ));
                } else {
                    crate::out(&format!("{}: skipped: {e}\n", b.display()));
                }
            }
            Err(e) => return Err(e.context(format!("applying {}", b.display()))),
        }
    }
    Ok(worst)
}
