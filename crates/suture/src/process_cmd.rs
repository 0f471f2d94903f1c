//! `suture apply`, `suture revert`, `suture status`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use suture_process::apply::{self, ApplyOptions, LivePatch};
use suture_process::header::State;
use suture_process::ids::Pid;

use crate::exit;

pub(crate) fn all_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&p: &i32| p != me)
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Processes mapping a file whose path ends with `object`.
fn mapping(object: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/maps"))
                .map(|m| m.lines().any(|l| l.trim_end().ends_with(object)))
                .unwrap_or(false)
        })
        .collect()
}

fn seconds(s: f64) -> Result<Duration> {
    if !(0.0..=3600.0).contains(&s) {
        bail!("--timeout must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// What `suture apply` was asked to do.
pub struct ApplyRequest {
    pub pids: Vec<i32>,
    pub all: bool,
    pub object: Option<String>,
    pub id: Option<String>,
    /// A live patch id this one replaces atomically.
    pub replace: Option<String>,
    pub timeout: f64,
    pub json: bool,
}

pub fn apply(patch: &Path, req: ApplyRequest) -> Result<u8> {
    let bytes = crate::read(patch)?;
    if suture_bundle::is_bundle(&bytes) {
        let timeout = seconds(req.timeout)?;
        return crate::build_cmd::apply_bundle(patch, &bytes, &req, timeout);
    }
    let ApplyRequest {
        pids,
        all,
        object,
        id,
        replace,
        timeout,
        json,
    } = req;
    let id = id.unwrap_or_else(|| {
        patch
            .file_stem()
            .map_or_else(|| "patch".into(), |s| s.to_string_lossy().into_owned())
    });
    let targets = if all {
        let o = object.as_deref().context("--all needs --object")?;
        let found = mapping(o);
        if found.is_empty() {
            bail!("no process maps {o}");
        }
        found
    } else {
        pids.to_vec()
    };
    let opts = ApplyOptions {
        timeout: seconds(timeout)?,
        patch_id: id.clone(),
        object,
        replace,
        ..Default::default()
    };
    let mut results = Vec::new();
    let mut failed = 0;
    for pid in targets {
        match apply::apply(Pid(pid), &bytes, &opts) {
            Ok(a) => {
                if !json {
                    println!(
                        "{id}: live in process {pid} ({} functions redirected, stopped {} us for the switch)",
                        a.redirects.len(),
                        a.stop_window_us
                    );
                }
                results.push(json!({"pid": pid, "applied": true, "result": a}));
            }
            Err(e) => {
                failed += 1;
                if !json {
                    eprintln!("suture: process {pid}: {e}");
                }
                results.push(json!({"pid": pid, "applied": false, "error": e.to_string()}));
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"patch": id, "processes": results}))?
        );
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}

pub fn revert(id: &str, pids: &[i32], all: bool, timeout: f64, json: bool) -> Result<u8> {
    let timeout = seconds(timeout)?;
    let targets: Vec<i32> = if all {
        all_pids()
            .into_iter()
            .filter(|&p| {
                apply::status(Pid(p))
                    .map(|v| v.iter().any(|x| x.header.patch_id == id))
                    .unwrap_or(false)
            })
            .collect()
    } else {
        pids.to_vec()
    };
    if targets.is_empty() {
        bail!("patch {id:?} is not live in any process");
    }
    let mut results = Vec::new();
    let mut failed = 0;
    for pid in targets {
        match apply::revert(Pid(pid), id, timeout) {
            Ok(_) => {
                if !json {
                    println!("{id}: reverted in process {pid}");
                }
                results.push(json!({"pid": pid, "reverted": true}));
            }
            Err(e) => {
                failed += 1;
                if !json {
                    eprintln!("suture: process {pid}: {e}");
                }
                results.push(json!({"pid": pid, "reverted": false, "error": e.to_string()}));
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"patch": id, "processes": results}))?
        );
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn status(pid: Option<i32>, json: bool) -> Result<u8> {
    let pids = match pid {
        Some(p) => vec![p],
        None => all_pids(),
    };
    let mut live: Vec<LivePatch> = Vec::new();
    for p in pids {
        match apply::status(Pid(p)) {
            Ok(v) => live.extend(v),
            Err(e) if pid.is_some() => bail!("process {p}: {e}"),
            Err(_) => {} // processes that vanish or cannot be read while scanning
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "patches": live }))?
        );
        return Ok(exit::OK);
    }
    let mut text = String::new();
    if !live.iter().any(|l| l.header.state == State::Live) {
        text.push_str("no live patches\n");
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
    }
    crate::out(&text);
    Ok(exit::OK)
}
