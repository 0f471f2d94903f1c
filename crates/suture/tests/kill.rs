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

/// Compiles `orig` and `fixed` as `dir/{orig,fixed}/<unit>.c` (one section per function)
/// and makes their patch with `suture diff -o`; returns the patch's path.
fn patch_of(dir: &Path, unit: &str, orig: &Path, fixed: &Path) -> PathBuf {
    let c = ["-c", "-O2", "-g", "-ffunction-sections", "-fdata-sections"];
    let (src, obj) = (format!("{unit}.c"), format!("{unit}.o"));
    for (side, from) in [("orig", orig), ("fixed", fixed)] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
        std::fs::copy(from, dir.join(side).join(&src)).unwrap();
        gcc(
            &dir.join(side),
            &[&c[..], &[src.as_str(), "-o", obj.as_str()]].concat(),
        );
    }
    let patch = dir.join(format!("{unit}.patch.o"));
    let st = suture()
        .arg("diff")
        .args([format!("orig/{obj}"), format!("fixed/{obj}"), "-o".into()])
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
    patch
}

/// Builds the program and, with `suture diff -o`, the patch of lib.c.
fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let f = Path::new(FIXTURES);
    let patch = patch_of(dir, "lib", &f.join("lib.c"), &f.join("lib.fixed.c"));
    std::fs::copy(f.join("main.c"), dir.join("main.c")).unwrap();
    let c = ["-c", "-O2", "-g", "-ffunction-sections", "-fdata-sections"];
    gcc(dir, &[&c[..], &["main.c", "-o", "main.o"]].concat());
    gcc(dir, &["main.o", "orig/lib.o", "-o", "prog", "-lpthread"]);
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
    applied_with(patch, pid, &[])
}

fn applied_with(patch: &Path, pid: u32, extra: &[&str]) -> serde_json::Value {
    let out = suture()
        .arg("apply")
        .arg(patch)
        .args(["--pid", &pid.to_string(), "--json"])
        .args(extra)
        .output()
        .unwrap();
    succeeded(&out)
}

/// `suture revert ID --pid PID`, which must succeed (`what` names the case).
fn reverted(id: &str, pid: u32, what: &str) {
    let out = suture()
        .args(["revert", id, "--pid", &pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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

/// `suture apply PATCH --pid PID` with `SUTURE_FAILPOINT=point`: suture must die there.
fn apply_killed_at(patch: &Path, pid: u32, point: &str) {
    apply_killed_at_with(patch, pid, point, &[])
}

fn apply_killed_at_with(patch: &Path, pid: u32, point: &str, extra: &[&str]) {
    let out = suture()
        .arg("apply")
        .arg(patch)
        .args(["--pid", &pid.to_string()])
        .args(extra)
        .env("SUTURE_FAILPOINT", point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: suture was not killed there"
    );
}

#[test]
fn sigkill_at_every_point_leaves_old_or_new_code_never_a_mixture() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "points");
    let (prog, patch) = build(&dir);
    let points = [
        ("remote:stepped", false),
        ("apply:mapped", false),
        ("apply:written", false),
        ("apply:stopped", false),
        // The direct commit: a thread pointed at the routine, then one jump written.
        ("commit:armed", true),
        ("commit:writing", true),
        // The commit routine run in the target (these points select that design).
        ("commit:started", true),
        ("commit:running", true),
        ("commit:midway", true),
    ];
    for (point, switched) in points {
        let (child, rx) = start(&prog);
        rx.wait_for(OLD);
        let pid = child.id();
        apply_killed_at(&patch, pid, point);
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

/// SIGKILL while a thread of the target runs the routine that calls IFUNC resolvers (before
/// and after it is let run): the routine finishes alone and the thread resumes its own code
/// with its own registers (here: inside `read`, which it re-enters). The program keeps
/// answering with its original code, nothing is live, and the next apply works.
#[test]
fn sigkill_while_ifunc_resolvers_run_leaves_the_target_running() {
    use std::io::Write as _;
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "ifunc");
    let f = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../suture-process/tests/fixtures/ifunc-cold"
    ));
    let patch = patch_of(
        &dir,
        "report",
        &f.join("report.c"),
        &f.join("report.fixed.c"),
    );
    std::fs::copy(f.join("libsel.c"), dir.join("libsel.c")).unwrap();
    std::fs::copy(f.join("main.c"), dir.join("main.c")).unwrap();
    gcc(
        &dir,
        &["-O2", "-fPIC", "-shared", "libsel.c", "-o", "libsel.so"],
    );
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let link = [
        "-O2",
        "main.c",
        "orig/report.o",
        "-L.",
        "-lsel",
        &rpath,
        "-o",
        "prog",
    ];
    gcc(&dir, &link);

    for point in ["ifunc:started", "ifunc:running"] {
        let (mut child, rx) = spawn_lines(
            Command::new(dir.join("prog"))
                .env("SEL_IMPL", "2")
                .stdin(std::process::Stdio::piped()),
        );
        let mut stdin = child.0.stdin.take().unwrap();
        rx.wait_for("ready");
        let pid = child.id();
        apply_killed_at(&patch, pid, point);
        stdin.write_all(b"report\n").unwrap();
        rx.wait_for("report none");
        // The routine restored the main thread's registers itself, xmm15 included.
        stdin.write_all(b"xmm\n").unwrap();
        rx.wait_for("xmm kept");
        let st = state(pid);
        assert!(
            st != "T" && st != "t",
            "{point}: target left stopped ({st})"
        );
        assert_eq!(patch_states(pid), Vec::<String>::new(), "{point}");
        // The next apply runs the resolvers again and gets what the program's own first
        // calls get.
        applied(&patch, pid);
        stdin.write_all(b"report\n").unwrap();
        let patched = rx.wait_for("report checksum=");
        stdin.write_all(b"call\n").unwrap();
        let native = rx.wait_for("call checksum=");
        assert_eq!(
            patched.strip_prefix("report "),
            native.strip_prefix("call "),
            "{point}"
        );
        assert_eq!(
            child.try_wait().unwrap().map(|s| s.to_string()),
            None,
            "{point}"
        );
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
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("no live patches; regions of patches that are not live:\n")
            && text.contains("(reverted)"),
        "{text}"
    );

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

/// SIGKILL right after return stubs were armed (`--no-osr`) for threads that are almost never
/// outside the replaced function: each thread returns into its stub, waits there at most about a second,
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
    // Without on-stack replacement: the threads wait in nanosleep inside nap(), whose frames
    // would otherwise simply move to the fix.
    apply_killed_at_with(&patch, pid, "apply:armed", &["--no-osr"]);
    // 30 ticks of 25 naps of 2 ms: longer than a stub's longest wait.
    rx.drain();
    ticks(&rx, "v=11", 30, "after the kill");
    assert!(child.0.try_wait().unwrap().is_none(), "the target died");
    let st = state(pid);
    assert!(st != "T" && st != "t", "target left stopped ({st})");
    let states = patch_states(pid);
    assert_eq!(states, ["reverted"], "the region stays, retired");

    let v = applied_with(&patch, pid, &["--no-osr"]);
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
    reverted("nap.patch", pid, "nap");
    rx.drain();
    rx.wait_for("v=11");
    ticks(&rx, "v=11", 5, "after the revert");
}

/// SIGKILL at every point of an apply that moves a waiting frame (on-stack replacement): the
/// frame's new return address is one of the commit's writes, so the connection thread ends up
/// either in the original code with its frame as it was, or in the fix with its frame moved —
/// never a moved frame without the switch or the reverse — and it keeps serving.
#[test]
fn sigkill_while_a_frame_moves_leaves_old_or_new_code_never_a_mixture() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "osr");
    let src = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../suture-process/tests/fixtures/osr/conn.c"
    ));
    let text = std::fs::read_to_string(src).unwrap();
    let fixed = dir.join("conn.fixed.c");
    std::fs::write(
        &fixed,
        text.replace(
            "    (void)n;\n    return 1;\n#endif",
            "    return n > 200 ? -1 : 2;\n#endif",
        ),
    )
    .unwrap();
    let patch = patch_of(&dir, "conn", src, &fixed);
    gcc(&dir, &["orig/conn.o", "-o", "server", "-lpthread"]);
    let points = [
        ("apply:stopped", false),
        ("commit:armed", true),
        ("commit:writing", true),
        ("commit:started", true),
        ("commit:midway", true),
    ];
    for (point, switched) in points {
        let (child, rx) = start(&dir.join("server"));
        let port: u16 = rx.wait_for("port ")[5..].trim().parse().unwrap();
        let mut client = suture_testkit::net::LineClient::connect(port);
        let mut ask = |what: &[u8]| client.ask(what);
        assert_eq!(ask(b"hello"), "v=1 served=1", "{point}");
        let pid = child.id();
        apply_killed_at(&patch, pid, point);
        let st = state(pid);
        assert!(
            st != "T" && st != "t",
            "{point}: target left stopped ({st})"
        );
        if switched {
            assert_eq!(ask(b"hello"), "v=2 served=2", "{point}");
            assert_eq!(patch_states(pid), ["live"], "{point}");
        } else {
            assert_eq!(ask(b"hello"), "v=1 served=2", "{point}");
            let v = applied(&patch, pid);
            let moved = v["processes"][0]["result"]["moved_frames"]
                .as_array()
                .unwrap()
                .len();
            assert_eq!(moved, 1, "{point}: {v:#}");
            assert_eq!(ask(b"hello"), "v=2 served=3", "{point}");
        }
        assert!(ask(&[b'x'; 250]).starts_with("v=-1 "), "{point}");
    }
}

/// The worker program of the transition tests built in `dir` (`dir/workers`), and the patch
/// of its `FIXED` variant made with `suture diff -o`.
fn workers(dir: &Path) -> PathBuf {
    let src = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../suture-process/tests/fixtures/transition/workers.c"
    ));
    let fixed = dir.join("workers.fixed.c");
    let text = std::fs::read_to_string(src).unwrap();
    std::fs::write(&fixed, format!("#define FIXED 1\n{text}")).unwrap();
    let patch = patch_of(dir, "workers", src, &fixed);
    gcc(dir, &["orig/workers.o", "-o", "workers", "-lpthread"]);
    patch
}

/// Starts `dir/workers` with its commands on a pipe, once it is ready.
fn start_workers(dir: &Path) -> (KillOnDrop, Lines, std::process::ChildStdin) {
    let (mut child, rx) =
        spawn_lines(Command::new(dir.join("workers")).stdin(std::process::Stdio::piped()));
    let stdin = child.0.stdin.take().unwrap();
    rx.wait_for("ready");
    (child, rx, stdin)
}

/// `suture apply PATCH ARGS --no-osr --json` on a thread of its own (`--no-osr`: waiting
/// workers stay in the old code rather than move at the switch).
fn applying_in_background(
    patch: &Path,
    args: &[&str],
) -> std::thread::JoinHandle<std::process::Output> {
    let mut cmd = suture();
    cmd.arg("apply")
        .arg(patch)
        .args(args)
        .args(["--no-osr", "--json"]);
    std::thread::spawn(move || cmd.output().unwrap())
}

/// Wakes both workers of every program (`w0`, `w1` on its stdin) until the `suture apply
/// --json` running on `applying` is done (each call that began in the old code ends there),
/// and returns its JSON once it succeeded.
fn woken_until_applied(
    applying: std::thread::JoinHandle<std::process::Output>,
    stdins: &mut [&mut std::process::ChildStdin],
) -> serde_json::Value {
    use std::io::Write;
    let mut woken = 0;
    while !applying.is_finished() {
        for stdin in stdins.iter_mut() {
            writeln!(stdin, "w0\nw1").unwrap();
        }
        woken += 1;
        assert!(woken < 1000, "the transition never completed");
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    succeeded(&applying.join().unwrap())
}

/// The JSON a suture command printed, once it exited with status 0.
fn succeeded(out: &std::process::Output) -> serde_json::Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// SIGKILL while `apply --transition --no-osr` drives its transition (right after the switch,
/// and with return stubs armed for the waiting workers; without `--no-osr` their frames would
/// move at the switch): every thread stays on one version. The
/// workers, inside the replaced function at the switch, keep running the old code (also after
/// a stub parked them and let them go by itself); the main thread runs the fix; `status` shows
/// the transition, and `revert` ends it.
#[test]
fn sigkill_during_a_transition_leaves_every_thread_on_one_version() {
    use std::io::Write;
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "transition");
    let patch = workers(&dir);
    for point in ["transition:switched", "transition:armed"] {
        let (child, rx, mut stdin) = start_workers(&dir);
        let mut ask = |cmd: &str, prefix: &str| {
            writeln!(stdin, "{cmd}").unwrap();
            rx.wait_for(prefix)
        };
        let pid = child.id();
        apply_killed_at_with(&patch, pid, point, &["--transition", "--no-osr"]);
        let st = state(pid);
        assert!(
            st != "T" && st != "t",
            "{point}: target left stopped ({st})"
        );
        let status = suture()
            .args(["status", "--json", "--pid", &pid.to_string()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(v["patches"][0]["header"]["state"], "live", "{point}: {v:#}");
        assert_eq!(
            v["patches"][0]["old_threads"].as_array().map(Vec::len),
            Some(2),
            "{point}: {v:#}"
        );
        let text = suture()
            .args(["status", "--pid", &pid.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("in transition: thread(s)"), "{point}: {text}");
        assert!(
            text.contains("nothing drives it any more"),
            "{point}: {text}"
        );
        assert!(
            v["patches"][0].get("transition_driver").is_none(),
            "{point}: {v:#}"
        );
        assert_eq!(ask("m", "main: "), "main: 22", "{point}");
        for _ in 0..3 {
            assert_eq!(ask("w0", "worker 0: "), "worker 0: 11", "{point}");
        }
        // Worker 1 is left waiting (with a stub armed at "transition:armed").
        reverted("workers.patch", pid, point);
        assert_eq!(ask("m", "main: "), "main: 11", "{point}");
        // A stub the killed suture left armed is undone at the next stop: a plain apply moves
        // both waiting workers (on-stack replacement) as on a fresh process.
        let v = applied(&patch, pid);
        let moved = v["processes"][0]["result"]["moved_frames"]
            .as_array()
            .unwrap();
        assert_eq!(moved.len(), 2, "{point}: {v:#}");
        assert_eq!(ask("w1", "worker 1: "), "worker 1: 22", "{point}");
        assert_eq!(ask("w0", "worker 0: "), "worker 0: 22", "{point}");
    }
}

/// `suture apply --transition` through the CLI (`--no-osr`, so that the waiting workers are
/// not moved at the switch): it waits for the transition, says which threads ran the old code
/// until they left it, and reports it in `--json`.
#[test]
fn apply_with_a_transition_through_the_cli() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "transition-cli");
    let patch = workers(&dir);
    let (child, _rx, mut stdin) = start_workers(&dir);
    let pid = child.id();
    let pid_arg = pid.to_string();
    let applying = applying_in_background(&patch, &["--pid", &pid_arg, "--transition"]);
    let v = woken_until_applied(applying, &mut [&mut stdin]);
    let t = &v["processes"][0]["result"]["transition"];
    assert_eq!(t["completed"], "returned", "{v:#}");
    assert_eq!(t["old_threads"].as_array().map(Vec::len), Some(2), "{v:#}");
    reverted("workers.patch", pid, "after the transition");
    let help = suture().args(["apply", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--transition-timeout"));
    let bad = suture()
        .arg("apply")
        .arg(&patch)
        .args(["--pid", &pid.to_string(), "--transition-timeout", "5"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("required arguments were not provided"),
        "--transition-timeout needs --transition"
    );
}

/// Several processes are worked on side by side: `apply --transition` on two programs whose
/// workers wait inside the replaced function has both transitions running at once. Worked on
/// one after the other, the second could not start before the first completed, and the first
/// completes only once its workers are woken, which the test does only after it has seen both
/// processes in transition. Then both complete, and the JSON lists the processes in pid order.
#[test]
fn transitions_of_several_processes_run_side_by_side() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "kill", "transition-jobs");
    let patch = workers(&dir);
    let (a, _rxa, mut ina) = start_workers(&dir);
    let (b, _rxb, mut inb) = start_workers(&dir);
    let pids = [a.id(), b.id()];
    let (pa, pb) = (pids[0].to_string(), pids[1].to_string());
    let args = [
        "--pid",
        &pa,
        "--pid",
        &pb,
        "--transition",
        "--transition-timeout",
        "300",
    ];
    let applying = applying_in_background(&patch, &args);
    let in_transition = |pid: u32| {
        let out = suture()
            .args(["status", "--json", "--pid", &pid.to_string()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["patches"][0]["old_threads"].as_array().map(Vec::len) == Some(2)
            && v["patches"][0].get("transition_driver").is_some()
    };
    suture_testkit::wait_until(
        "both processes to be in transition at once",
        suture_testkit::WAIT,
        || pids.iter().all(|&p| in_transition(p)),
    );
    assert!(!applying.is_finished());
    let v = woken_until_applied(applying, &mut [&mut ina, &mut inb]);
    let listed: Vec<u64> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    let mut sorted = pids.map(u64::from).to_vec();
    sorted.sort();
    assert_eq!(listed, sorted, "{v:#}");
    for p in v["processes"].as_array().unwrap() {
        assert_eq!(p["result"]["transition"]["completed"], "returned", "{v:#}");
    }
    let out = suture()
        .args(["revert", "workers.patch", "--jobs", "1"])
        .args(["--pid", &pids[0].to_string(), "--pid", &pids[1].to_string()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = suture()
        .args(["revert", "workers.patch", "--jobs", "0", "--all"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1), "--jobs 0 is refused");
}
