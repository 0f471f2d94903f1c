//! Killing suture with SIGKILL at every injected point of `suture apply` never leaves the
//! target half-patched, stopped, or crashed: before the commit it runs its original code, once
//! the commit has started it ends up running the new code (the target finishes the switch).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use suture_testkit::cc::gcc;
use suture_testkit::{spawn_lines, KillOnDrop, Lines, Scratch};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../suture-process/tests/fixtures/versioned"
);
const OLD: &str = "v=1 s=31";
const NEW: &str = "v=2 s=1031";

fn suture() -> Command {
    Command::new(env!("CARGO_BIN_EXE_suture"))
}

/// Builds the program and, with `suture diff -o`, the patch of lib.c.
fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    for side in ["orig", "fixed"] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
    }
    let f = Path::new(FIXTURES);
    std::fs::copy(f.join("main.c"), dir.join("main.c")).unwrap();
    std::fs::copy(f.join("lib.c"), dir.join("orig/lib.c")).unwrap();
    std::fs::copy(f.join("lib.fixed.c"), dir.join("fixed/lib.c")).unwrap();
    let c = ["-c", "-O2", "-g", "-ffunction-sections", "-fdata-sections"];
    gcc(dir, &[&c[..], &["main.c", "-o", "main.o"]].concat());
    for side in ["orig", "fixed"] {
        gcc(
            &dir.join(side),
            &[&c[..], &["lib.c", "-o", "lib.o"]].concat(),
        );
    }
    gcc(dir, &["main.o", "orig/lib.o", "-o", "prog", "-lpthread"]);
    let patch = dir.join("lib.patch.o");
    let st = suture()
        .args(["diff", "orig/lib.o", "fixed/lib.o", "-o"])
        .arg(&patch)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    (dir.join("prog"), patch)
}

fn start(prog: &Path) -> (KillOnDrop, Lines) {
    spawn_lines(&mut Command::new(prog))
}

/// The target prints `want` from now on: the first such line, then the next 50 lines (2 ms
/// apart in the fixture), all exactly `want`. Counts lines, never time windows.
fn only(rx: &Lines, want: &str, what: &str) {
    rx.wait_for(want);
    let after = rx.take(50);
    assert!(
        after.iter().all(|l| l == want),
        "{what}: expected only {want:?}, got {:?}",
        after
            .iter()
            .filter(|l| *l != want)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// `suture apply PATCH --pid PID --json`, which must succeed: its JSON.
fn applied(patch: &Path, pid: u32) -> serde_json::Value {
    let out = suture()
        .arg("apply")
        .arg(patch)
        .args(["--pid", &pid.to_string(), "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The state of every patch region in `pid`, as `suture status --json` reports it.
fn patch_states(pid: u32) -> Vec<String> {
    let status = suture()
        .args(["status", "--json", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    v["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["header"]["state"].as_str().unwrap().to_string())
        .collect()
}

fn state(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s.rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn sigkill_at_every_point_leaves_old_or_new_code_never_a_mixture() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "points");
    let (prog, patch) = build(&dir);
    let points = [
        ("apply:mapped", false),
        ("apply:written", false),
        ("apply:stopped", false),
        ("commit:started", true),
        ("commit:running", true),
        ("commit:midway", true),
    ];
    for (point, switched) in points {
        let (child, rx) = start(&prog);
        rx.wait_for(OLD);
        let pid = child.id();
        let out = suture()
            .arg("apply")
            .arg(&patch)
            .args(["--pid", &pid.to_string()])
            .env("SUTURE_FAILPOINT", point)
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: suture was not killed there"
        );
        // Once the target prints the version it ends up with, it prints nothing else (and it
        // keeps printing: `only` takes the next 50 lines).
        let want = if switched { NEW } else { OLD };
        only(&rx, want, point);
        let st = state(pid);
        assert!(
            st != "T" && st != "t",
            "{point}: target left stopped ({st})"
        );
        // The process itself says what happened: live after the switch, merely loaded (not
        // switched, reclaimable) before it.
        let states = patch_states(pid);
        if switched {
            assert_eq!(states, ["live"], "{point}");
        } else {
            assert!(states.iter().all(|s| *s == "loaded"), "{point}: {states:?}");
            // The next apply reclaims what the killed one left and switches normally.
            applied(&patch, pid);
            let states = patch_states(pid);
            assert_eq!(states, ["live"], "{point}: leftovers not reclaimed");
            only(&rx, NEW, point);
        }
    }
}

#[test]
fn apply_status_revert_through_the_cli() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "cli-apply");
    let (prog, patch) = build(&dir);
    let (child, rx) = start(&prog);
    rx.wait_for(OLD);
    let pid = child.id().to_string();
    let out = suture()
        .arg("apply")
        .arg(&patch)
        .args(["--pid", &pid, "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["patch_id"], "lib.patch");
    assert_eq!(v["processes"][0]["applied"], true);
    only(&rx, NEW, "after apply");

    let out = suture().args(["status", "--pid", &pid]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("lib.patch (live)") && text.contains("2 functions"),
        "{text}"
    );

    // A newer version replaces it in one switch (--replace); the old one is retired.
    let out = suture()
        .arg("apply")
        .arg(&patch)
        .args([
            "--pid",
            &pid,
            "--id",
            "lib.patch.v2",
            "--replace",
            "lib.patch",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["processes"][0]["result"]["replaced"], "lib.patch");
    let out = suture().args(["status", "--pid", &pid]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("lib.patch.v2 (live)") && text.contains("lib.patch (reverted)"),
        "{text}"
    );
    // The state word is explained where it appears.
    assert!(text.contains("(reverted: kept mapped"), "{text}");
    assert!(!text.contains("(loaded:"), "{text}");
    only(&rx, NEW, "after replace");
    let out = suture()
        .args(["revert", "lib.patch.v2", "--pid", &pid])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    only(&rx, OLD, "after revert");
    let out = suture().args(["status", "--pid", &pid]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("no live patches"));

    // Errors: a process that does not exist, a patch that is not live.
    let out = suture()
        .arg("apply")
        .arg(&patch)
        .args(["--pid", "999999999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("999999999"));
    let out = suture()
        .args(["revert", "nope", "--pid", &pid])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no live patch"));
}

/// Builds the napper program (threads almost never outside `nap()`, which sleeps inside
/// itself) and, with `suture diff -o`, the patch of nap.c (`v=11` becomes `v=12`).
fn build_napper(dir: &Path) -> (PathBuf, PathBuf) {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../suture-process/tests/fixtures/napper");
    let c = ["-c", "-O2", "-g", "-ffunction-sections", "-fdata-sections"];
    for (side, src) in [("orig", "nap.c"), ("fixed", "nap.fixed.c")] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
        std::fs::copy(f.join(src), dir.join(side).join("nap.c")).unwrap();
        gcc(
            &dir.join(side),
            &[&c[..], &["nap.c", "-o", "nap.o"]].concat(),
        );
    }
    std::fs::copy(f.join("main.c"), dir.join("main.c")).unwrap();
    gcc(
        dir,
        &["-O2", "main.c", "orig/nap.o", "-lpthread", "-o", "prog"],
    );
    let patch = dir.join("nap.patch.o");
    let out = suture()
        .args(["diff", "orig/nap.o", "fixed/nap.o", "-o"])
        .arg(&patch)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("prog"), patch)
}

/// The next `n` tick lines all end with `want`.
fn ticks(rx: &Lines, want: &str, n: usize, what: &str) {
    let mut seen = 0;
    while seen < n {
        let l = rx.wait_for("tick ");
        assert!(
            l.ends_with(want),
            "{what}: expected ticks ending {want:?}, got {l}"
        );
        seen += 1;
    }
}

/// SIGKILL right after return stubs were armed for threads that are almost never outside the
/// replaced function: each thread returns into its stub, waits there at most about a second,
/// and goes on to its real return address by itself. The program keeps running its original
/// code, never stops or crashes, and the region stays mapped ("reverted", retired), so no
/// thread can return into unmapped memory; the next apply reuses it and switches.
#[test]
fn sigkill_with_return_stubs_armed_leaves_the_original_code_running() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "stubs");
    let (prog, patch) = build_napper(&dir);
    let (mut child, rx) = start(&prog);
    let pid: u32 = rx.wait_for("pid ")[4..].trim().parse().unwrap();
    rx.wait_for("v=11");
    let out = suture()
        .arg("apply")
        .arg(&patch)
        .args(["--pid", &pid.to_string()])
        .env("SUTURE_FAILPOINT", "apply:armed")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "suture was not killed with stubs armed"
    );
    // 30 ticks of 25 naps of 2 ms: longer than a stub's longest wait.
    rx.drain();
    ticks(&rx, "v=11", 30, "after the kill");
    assert!(child.0.try_wait().unwrap().is_none(), "the target died");
    let st = state(pid);
    assert!(st != "T" && st != "t", "target left stopped ({st})");
    let states = patch_states(pid);
    assert_eq!(states, ["reverted"], "the region stays, retired");

    let v = applied(&patch, pid);
    assert!(
        v["processes"][0]["result"]["caught_returns"]
            .as_u64()
            .unwrap()
            >= 1,
        "{v}"
    );
    rx.drain();
    rx.wait_for("v=12");
    ticks(&rx, "v=12", 5, "after the apply");
    let out = suture()
        .args(["revert", "nap.patch", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rx.drain();
    rx.wait_for("v=11");
    ticks(&rx, "v=11", 5, "after the revert");
}
