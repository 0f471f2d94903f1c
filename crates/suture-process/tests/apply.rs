//! End to end on a real process: build a program, diff a fix of one of its units, apply the
//! patch to the running program, watch its behaviour change, check status, revert.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use suture_process::apply::{apply, revert, status, ApplyOptions};
use suture_process::header::State;
use suture_process::ids::Pid;
use suture_testkit::cc::gcc;
use suture_testkit::{spawn_lines, Scratch, TIMEOUT};

const MAIN: &str = include_str!("fixtures/versioned/main.c");
const LIB: &str = include_str!("fixtures/versioned/lib.c");
const FIXED: &str = include_str!("fixtures/versioned/lib.fixed.c");

fn build(dir: &Path) -> (PathBuf, Vec<u8>) {
    build_with_main(dir, MAIN)
}

/// Builds `main` with the versioned library unit and the patch for that unit.
fn build_with_main(dir: &Path, main: &str) -> (PathBuf, Vec<u8>) {
    let flags = ["-O2", "-g", "-ffunction-sections", "-fdata-sections", "-c"];
    std::fs::create_dir_all(dir.join("orig")).unwrap();
    std::fs::create_dir_all(dir.join("fixed")).unwrap();
    std::fs::write(dir.join("main.c"), main).unwrap();
    std::fs::write(dir.join("orig/lib.c"), LIB).unwrap();
    std::fs::write(dir.join("fixed/lib.c"), FIXED).unwrap();
    let mut args = flags.to_vec();
    args.extend(["main.c", "-o", "main.o"]);
    gcc(dir, &args);
    for side in ["orig", "fixed"] {
        let mut args = flags.to_vec();
        args.extend(["lib.c", "-o", "lib.o"]);
        gcc(&dir.join(side), &args);
    }
    gcc(dir, &["main.o", "orig/lib.o", "-o", "prog", "-lpthread"]);
    let a = std::fs::read(dir.join("orig/lib.o")).unwrap();
    let b = std::fs::read(dir.join("fixed/lib.o")).unwrap();
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let d = suture_object::analyze(&a, &b).unwrap();
    assert_eq!(d.report.status, suture_object::Status::Patchable);
    (dir.join("prog"), suture_object::emit::emit(&d).unwrap())
}

#[test]
fn apply_changes_behaviour_and_revert_restores_it() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "e2e");
    let (prog, patch) = build(&dir);
    let (mut child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("v=1 s=31");
    let pid = Pid(child.0.id() as i32);

    let opts = ApplyOptions {
        patch_id: "lib-fix".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let applied = apply(pid, &patch, &opts).expect("apply");
    assert_eq!(applied.redirects.len(), 2, "{applied:?}");
    // New code runs: version() is 2 and the changed static helper (inlined into scaled) adds
    // 1000, reading the original global `factor` and static `calls`.
    lines.wait_for("v=2 s=1031");
    let live = status(pid).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].header.patch_id, "lib-fix");
    assert_eq!(live[0].header.state, State::Live);
    assert!(live[0].header.object.ends_with("prog"));

    revert(pid, "lib-fix", TIMEOUT).expect("revert");
    lines.wait_for("v=1 s=31");
    assert!(no_live(pid), "nothing live after revert");

    // Apply again, then the program must still be healthy (no crash, no stray stop).
    apply(pid, &patch, &opts).expect("second apply");
    lines.wait_for("v=2 s=1031");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the program is still running"
    );
    let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.0)).unwrap();
    let st = state
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(st != "T" && st != "t", "target left stopped: {st}");
}

/// Applying a patch whose id is live already is refused and changes nothing: a second copy
/// would make a later revert report "reverted" while the fix still runs. `--replace` with
/// the same id swaps the version in place instead. Regression: each apply stacked a copy.
#[test]
fn applying_a_live_patch_again_is_refused_not_stacked() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "again");
    let (prog, patch) = build(&dir);
    let (child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("v=1 s=31");
    let pid = Pid(child.0.id() as i32);
    let opts = ApplyOptions {
        patch_id: "fix".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    apply(pid, &patch, &opts).expect("apply");
    lines.wait_for("v=2 s=1031");
    let before = status(pid).unwrap();
    let err = apply(pid, &patch, &opts).unwrap_err();
    assert!(
        matches!(err, suture_process::apply::ApplyError::AlreadyLive { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("target untouched"), "{err}");
    let after = status(pid).unwrap();
    assert_eq!(after.len(), before.len(), "no region was added");
    assert_eq!(
        after
            .iter()
            .filter(|p| p.header.state == State::Live)
            .count(),
        1
    );
    // The same id as its own replacement: one live copy still.
    let swapped = apply(
        pid,
        &patch,
        &ApplyOptions {
            replace: Some("fix".into()),
            ..opts.clone()
        },
    )
    .expect("replace in place");
    assert_eq!(swapped.replaced.as_deref(), Some("fix"));
    lines.wait_for("v=2 s=1031");
    let live = status(pid).unwrap();
    assert_eq!(
        live.iter()
            .filter(|p| p.header.state == State::Live)
            .count(),
        1
    );
    // One revert brings the original back.
    revert(pid, "fix", TIMEOUT).expect("revert");
    lines.wait_for("v=1 s=31");
    assert!(no_live(pid));
}

/// The unit patched lives in a shared library the program loads: the patch is bound to the
/// library (`object`), its statics resolve in the library's symbol table.
#[test]
fn patches_a_function_inside_a_shared_library() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "so");
    for side in ["orig", "fixed"] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
    }
    std::fs::write(dir.join("main.c"), MAIN).unwrap();
    std::fs::write(dir.join("orig/lib.c"), LIB).unwrap();
    std::fs::write(dir.join("fixed/lib.c"), FIXED).unwrap();
    let c = [
        "-c",
        "-O2",
        "-g",
        "-fPIC",
        "-ffunction-sections",
        "-fdata-sections",
    ];
    for side in ["orig", "fixed"] {
        gcc(
            &dir.join(side),
            &[&c[..], &["lib.c", "-o", "lib.o"]].concat(),
        );
    }
    gcc(&dir, &["-shared", "orig/lib.o", "-o", "libver.so"]);
    gcc(
        &dir,
        &[
            "-O2",
            "main.c",
            "-L.",
            "-lver",
            "-Wl,-rpath,$ORIGIN",
            "-lpthread",
            "-o",
            "prog",
        ],
    );
    let a = std::fs::read(dir.join("orig/lib.o")).unwrap();
    let b = std::fs::read(dir.join("fixed/lib.o")).unwrap();
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let d = suture_object::analyze(&a, &b).unwrap();
    let patch = suture_object::emit::emit(&d).unwrap();

    let (child, lines) = spawn_lines(&mut Command::new(dir.join("prog")));
    lines.wait_for("v=1 s=31");
    let pid = Pid(child.0.id() as i32);
    let opts = ApplyOptions {
        patch_id: "so-fix".into(),
        object: Some("libver.so".into()),
        timeout: TIMEOUT,
        ..Default::default()
    };
    apply(pid, &patch, &opts).expect("apply to the library");
    lines.wait_for("v=2 s=1031");
    assert!(status(pid).unwrap()[0].header.object.ends_with("libver.so"));
    revert(pid, "so-fix", TIMEOUT).expect("revert");
    lines.wait_for("v=1 s=31");
}

/// A function that never returns (an event loop) is busy forever: apply must give up after
/// its timeout naming the function and the thread, and leave the target untouched with the
/// patch memory released.
#[test]
fn a_function_that_never_returns_is_refused_by_name() {
    const SPIN: &str = "int spin(volatile int *stop) { while (!*stop) { } return 1; }\n";
    const MAIN_SPIN: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
int spin(volatile int *);
static volatile int never;
static void *loop(void *a) { (void)a; spin(&never); return 0; }
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, loop, 0);
    setvbuf(stdout, 0, _IOLBF, 0);
    for (;;) { printf("alive\n"); usleep(2000); }
}
"#;
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "busy");
    for side in ["orig", "fixed"] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
    }
    std::fs::write(dir.join("main.c"), MAIN_SPIN).unwrap();
    std::fs::write(dir.join("orig/spin.c"), SPIN).unwrap();
    std::fs::write(
        dir.join("fixed/spin.c"),
        SPIN.replace("return 1;", "return 2;"),
    )
    .unwrap();
    let c = ["-c", "-O2", "-ffunction-sections", "-fdata-sections"];
    for side in ["orig", "fixed"] {
        gcc(
            &dir.join(side),
            &[&c[..], &["spin.c", "-o", "spin.o"]].concat(),
        );
    }
    gcc(
        &dir,
        &["-O2", "main.c", "orig/spin.o", "-lpthread", "-o", "prog"],
    );
    let a = std::fs::read(dir.join("orig/spin.o")).unwrap();
    let b = std::fs::read(dir.join("fixed/spin.o")).unwrap();
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let patch = suture_object::emit::emit(&suture_object::analyze(&a, &b).unwrap()).unwrap();

    let (mut child, lines) = spawn_lines(&mut Command::new(dir.join("prog")));
    lines.wait_for("alive");
    let pid = Pid(child.0.id() as i32);
    let maps_before = std::fs::read_to_string(format!("/proc/{}/maps", pid.0)).unwrap();
    let opts = ApplyOptions {
        patch_id: "spin-fix".into(),
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    match apply(pid, &patch, &opts) {
        Err(e @ suture_process::apply::ApplyError::Busy { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("spin") && msg.contains("thread"), "{msg}");
            assert!(
                msg.contains("rolled back") || msg.contains("untouched"),
                "{msg}"
            );
        }
        other => panic!("expected a busy refusal, got {other:?}"),
    }
    assert!(no_live(pid), "nothing left in the target");
    let maps_after = std::fs::read_to_string(format!("/proc/{}/maps", pid.0)).unwrap();
    assert_eq!(
        maps_before.lines().count(),
        maps_after.lines().count(),
        "region released"
    );
    lines.wait_for("alive");
    assert!(child.0.try_wait().unwrap().is_none());
}

/// A second patch stacked on the first: reverting the first is refused while the second is
/// live on top of it; reverting in reverse order restores the original.
#[test]
fn stacked_patches_revert_in_reverse_order() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "stacked");
    let (prog, patch) = build(&dir);
    let (child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("v=1 s=31");
    let pid = Pid(child.0.id() as i32);
    let first = ApplyOptions {
        patch_id: "first".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let second = ApplyOptions {
        patch_id: "second".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    apply(pid, &patch, &first).expect("first");
    apply(pid, &patch, &second).expect("second, on top");
    lines.wait_for("v=2 s=1031");
    assert_eq!(status(pid).unwrap().len(), 2);
    match revert(pid, "first", TIMEOUT) {
        Err(e) => assert!(
            e.to_string().contains("\"second\" was applied on top"),
            "{e}"
        ),
        Ok(_) => panic!("reverting the lower patch first must be refused"),
    }
    revert(pid, "second", TIMEOUT).expect("revert second");
    lines.wait_for("v=2 s=1031");
    revert(pid, "first", TIMEOUT).expect("revert first");
    lines.wait_for("v=1 s=31");
    assert!(no_live(pid));
}

/// The commit routine tells suture it is done with a signal that is ignored by default. A
/// program that catches some of those signals, catches all of them, or blocks all of them must
/// never see one: not delivered to a handler, not left pending (suture then picks another
/// signal, or follows the routine system call by system call).
#[test]
fn the_commit_marker_signal_never_reaches_the_program() {
    const MARKER_MAIN: &str = include_str!("fixtures/marker/main.c");
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "marker");
    let (prog, patch) = build_with_main(&dir, MARKER_MAIN);
    for mode in ["catch-urg", "catch-all", "block-all"] {
        let (child, lines) = spawn_lines(Command::new(&prog).arg(mode));
        lines.wait_for("v=1 s=31 caught=0 pending=0");
        let pid = Pid(child.0.id() as i32);
        let opts = ApplyOptions {
            patch_id: "marker".into(),
            timeout: TIMEOUT,
            ..Default::default()
        };
        for _ in 0..5 {
            let t = Instant::now();
            let a = apply(pid, &patch, &opts).unwrap_or_else(|e| panic!("{mode}: apply: {e}"));
            eprintln!(
                "{mode}: apply {:?} window {} us attempts {}",
                t.elapsed(),
                a.stop_window_us,
                a.attempts
            );
            lines.wait_for("v=2 s=1031 caught=0 pending=0");
            revert(pid, "marker", TIMEOUT).unwrap_or_else(|e| panic!("{mode}: revert: {e}"));
            lines.wait_for("v=1 s=31 caught=0 pending=0");
        }
        // Everything printed from now on still shows no marker signal.
        for l in lines.during(Duration::from_millis(200)) {
            assert!(l.ends_with("caught=0 pending=0"), "{mode}: {l}");
        }
    }
}

/// Builds `dir/prog` from `main` and the unit `lib` (compiled into `dir/orig/lib.o` with
/// function and data sections, ready for [`patch_to`]).
fn program(dir: &Path, main: &str, lib: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("orig")).unwrap();
    std::fs::write(dir.join("main.c"), main).unwrap();
    std::fs::write(dir.join("orig/lib.c"), lib).unwrap();
    let flags = ["-O2", "-g", "-ffunction-sections", "-fdata-sections", "-c"];
    gcc(
        &dir.join("orig"),
        &[&flags[..], &["lib.c", "-o", "lib.o"]].concat(),
    );
    gcc(
        dir,
        &[
            "-O2",
            "-g",
            "main.c",
            "orig/lib.o",
            "-o",
            "prog",
            "-lpthread",
        ],
    );
    dir.join("prog")
}

/// Compiles `src` as a fixed version of the library unit of `build` (in `dir/<name>/`) and
/// returns the patch from the original unit to it.
fn patch_to(dir: &Path, name: &str, src: &str) -> Vec<u8> {
    let side = dir.join(name);
    std::fs::create_dir_all(&side).unwrap();
    std::fs::write(side.join("lib.c"), src).unwrap();
    gcc(
        &side,
        &[
            "-O2",
            "-g",
            "-ffunction-sections",
            "-fdata-sections",
            "-c",
            "lib.c",
            "-o",
            "lib.o",
        ],
    );
    let a = std::fs::read(dir.join("orig/lib.o")).unwrap();
    let b = std::fs::read(side.join("lib.o")).unwrap();
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let d = suture_object::analyze(&a, &b).unwrap();
    assert_eq!(d.report.status, suture_object::Status::Patchable);
    suture_object::emit::emit(&d).unwrap()
}

/// A newer version of a live patch replaces it in one switch: functions both versions change
/// move to the new code, functions only the old version changed go back to the original, the
/// old region is released, and reverting the new version gives the original program back.
#[test]
fn a_live_patch_is_replaced_by_its_newer_version() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "replace");
    let (prog, v1) = build(&dir);
    // Version 2 of the fix: version() reports 3 and helper() is the original again.
    let v2 = patch_to(
        &dir,
        "v2",
        &LIB.replace("calls++; return 1;", "calls++; return 3;"),
    );
    let (child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("v=1 s=31");
    let pid = Pid(child.0.id() as i32);
    let opts = |id: &str, replace: Option<&str>| ApplyOptions {
        patch_id: id.into(),
        replace: replace.map(Into::into),
        timeout: TIMEOUT,
        ..Default::default()
    };
    apply(pid, &v1, &opts("fix", None)).expect("v1");
    lines.wait_for("v=2 s=1031");
    let a = apply(pid, &v2, &opts("fix-v2", Some("fix"))).expect("v2 replaces v1");
    assert_eq!(a.replaced.as_deref(), Some("fix"));
    lines.wait_for("v=3 s=31");
    let all = status(pid).unwrap();
    let live: Vec<_> = all
        .iter()
        .filter(|p| p.header.state == State::Live)
        .collect();
    assert_eq!(live.len(), 1, "{all:?}");
    assert_eq!(live[0].header.patch_id, "fix-v2");
    // The replaced version's memory stays mapped, retired (the program may point into it).
    assert!(
        all.iter()
            .any(|p| p.header.patch_id == "fix" && p.header.state == State::Reverted),
        "{all:?}"
    );
    // Replacing a patch that is not live, or one with another patch on top, is refused and
    // changes nothing.
    let e = apply(pid, &v1, &opts("x", Some("fix"))).unwrap_err();
    assert!(e.to_string().contains("no live patch \"fix\""), "{e}");
    apply(pid, &v1, &opts("top", None)).expect("stacked on top");
    lines.wait_for("v=2 s=1031");
    let e = apply(pid, &v2, &opts("y", Some("fix-v2"))).unwrap_err();
    assert!(e.to_string().contains("\"top\" was applied on top"), "{e}");
    revert(pid, "top", TIMEOUT).expect("revert top");
    lines.wait_for("v=3 s=31");
    // Reverting the newer version restores the original code, not the version it replaced.
    revert(pid, "fix-v2", TIMEOUT).expect("revert v2");
    lines.wait_for("v=1 s=31");
    assert!(no_live(pid));
}

/// A live frame may hold a stale address of patch code (here a variable of `main`; in real
/// programs, often an uninitialised buffer that once held deeper frames). Revert unwinds
/// through the program and the patch exactly, so such a word does not make the patch look
/// busy; only a real frame in patch code does.
#[test]
fn revert_is_not_blocked_by_a_stale_patch_address_in_a_live_frame() {
    const MAIN_STALE: &str = r#"
#include <stdio.h>
#include <unistd.h>
int version(void);
void *where(void);
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    void *volatile keep = 0;
    for (;;) {
        void *w = where();
        if (w) keep = w;
        printf("v=%d keep=%s\n", version(), keep ? "patch" : "none");
        usleep(2000);
    }
}
"#;
    const LIB_STALE: &str = "int version(void) { return 1; }\nvoid *where(void) { return 0; }\n";
    let fixed = LIB_STALE.replace("return 1;", "return 2;").replace(
        "void *where(void) { return 0; }",
        "void *where(void) { here: __asm__ volatile(\"\"); return &&here; }",
    );
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "stale");
    let prog = program(&dir, MAIN_STALE, LIB_STALE);
    let patch = patch_to(&dir, "fixed", &fixed);
    let (child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("v=1 keep=none");
    let pid = Pid(child.0.id() as i32);
    let opts = ApplyOptions {
        patch_id: "stale".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    apply(pid, &patch, &opts).expect("apply");
    lines.wait_for("v=2 keep=patch");
    // The address of patch code now sits in main's frame for good.
    revert(pid, "stale", TIMEOUT).expect("revert despite the stale address");
    lines.wait_for("v=1 keep=patch");
    assert!(no_live(pid));
}

/// Stack checks unwind through the code of live patches (their `.eh_frame`, located by the
/// header): a thread sleeping inside patch A's code, whose caller's frame holds a stale
/// address inside `g`, does not make `g` look busy when patch B replaces `g`.
///
/// Deterministic by design: patched `f(1)` never returns, so once the program prints
/// `parked=1` the worker sits inside patch A's code for good. A stack check that cannot
/// unwind through it finds `g` busy on every attempt (apply B fails after its timeout); a
/// correct one is clear on the first attempt that does not catch `main` inside `g(0)`.
#[test]
fn stack_checks_unwind_through_patch_code() {
    const MAIN_UNWIND: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
volatile int parked;
int f(int forever);
int g(void *volatile *out);
static void *worker(void *arg) {
    (void)arg;
    void *volatile keep = 0;
    g(&keep);
    for (;;) { f(1); usleep(1000); }
    return 0;
}
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    for (;;) {
        printf("f=%d g=%d parked=%d\n", f(0), g(0), parked);
        usleep(2000);
    }
}
"#;
    const LIB_UNWIND: &str = "#include <unistd.h>\n\
        extern volatile int parked;\n\
        int f(int forever) { (void)forever; return 1; }\n\
        int g(void *volatile *out) { if (out) { __asm__ volatile(\"nop; nop\"); here: *out = &&here; } return 1; }\n";
    // Patched f parks the worker (f(1)) inside patch A's code for good; main's f(0) returns 2.
    let a = LIB_UNWIND.replace(
        "{ (void)forever; return 1; }",
        "{ while (forever) { parked = 1; usleep(3000); } return 2; }",
    );
    let b = LIB_UNWIND.replace("} return 1; }", "} return 2; }");
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "unwind-patch");
    let prog = program(&dir, MAIN_UNWIND, LIB_UNWIND);
    let patch_a = patch_to(&dir, "a", &a);
    let patch_b = patch_to(&dir, "b", &b);
    let (child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("f=1 g=1 parked=0");
    let pid = Pid(child.0.id() as i32);
    let opts = |id: &str| ApplyOptions {
        patch_id: id.into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    apply(pid, &patch_a, &opts("a")).expect("apply a");
    // From here on the worker sleeps inside patch A's f, forever.
    lines.wait_for("f=2 g=1 parked=1");
    apply(pid, &patch_b, &opts("b")).expect("apply b while a thread runs patch A's code");
    lines.wait_for("f=2 g=2 parked=1");
}

/// No patch is live in `pid` (reverted regions stay mapped, retired: see apply.rs).
fn no_live(pid: Pid) -> bool {
    status(pid)
        .unwrap()
        .iter()
        .all(|p| p.header.state != suture_process::header::State::Live)
}

/// The program keeps a pointer to a string constant of the patch across the revert (here in a
/// local; in real programs often in a heap object or a library call in flight). Revert must
/// not release that memory: the program goes on printing the string, and the next apply of the
/// same patch reuses the retired region instead of mapping a new one.
#[test]
fn revert_keeps_patch_memory_the_program_may_point_into() {
    const MAIN_PTR: &str = r#"
#include <stdio.h>
#include <unistd.h>
const char *name(void);
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    const char *keep = name();
    for (unsigned long i = 0;; i++) {
        const char *now = name();
        if (now[0] == 't') keep = now;
        printf("now=%s keep=%s\n", now, keep);
        usleep(2000);
    }
}
"#;
    const LIB_PTR: &str = "const char *name(void) { return \"one\"; }\n";
    let fixed = LIB_PTR.replace("\"one\"", "\"two, from the patch\"");
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "retain");
    let prog = program(&dir, MAIN_PTR, LIB_PTR);
    let patch = patch_to(&dir, "fixed", &fixed);
    let (mut child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("now=one keep=one");
    let pid = Pid(child.0.id() as i32);
    let opts = ApplyOptions {
        patch_id: "name".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let first = apply(pid, &patch, &opts).expect("apply");
    lines.wait_for("now=two, from the patch keep=two, from the patch");
    revert(pid, "name", TIMEOUT).expect("revert");
    // The original code runs; the pointer into the patch's rodata stays valid.
    lines.wait_for("now=one keep=two, from the patch");
    std::thread::sleep(Duration::from_millis(50));
    assert!(child.0.try_wait().unwrap().is_none(), "the program died");
    let retired = status(pid).unwrap();
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert_eq!(retired[0].header.state, State::Reverted);
    // Apply again: the same region is switched again, nothing new is mapped.
    let again = apply(pid, &patch, &opts).expect("apply again");
    assert_eq!(again.base, first.base, "the retired region is reused");
    assert_eq!(status(pid).unwrap().len(), 1);
    lines.wait_for("now=two, from the patch");
    revert(pid, "name", TIMEOUT).expect("revert again");
    lines.wait_for("now=one keep=two, from the patch");
}

/// A target in its own PID namespace (a container seen from the host): its commit routine
/// must name itself with the ids of its namespace (it sends its marker signal with
/// getpid()/gettid()), or suture would wait for a marker that never comes while every other
/// thread stays stopped.
#[test]
fn patches_a_process_in_another_pid_namespace() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "pidns");
    let (prog, patch) = build(&dir);
    let (wrapper, lines) = spawn_lines(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(&prog),
    );
    lines.wait_for("v=1 s=31");
    // unshare forks: the program is its child (pid 1 inside the namespace).
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", wrapper.0.id())).unwrap();
    let pid = Pid(children.split_whitespace().next().unwrap().parse().unwrap());
    let ns = std::fs::read_to_string(format!("/proc/{}/status", pid.0)).unwrap();
    assert!(
        ns.lines()
            .any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() == 3),
        "the program runs in a nested PID namespace: {ns}"
    );
    let opts = ApplyOptions {
        patch_id: "pidns".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let a = apply(pid, &patch, &opts).expect("apply");
    lines.wait_for("v=2 s=1031");
    assert!(
        a.stop_window_us < 2_000_000,
        "no wait for a lost marker: {a:?}"
    );
    revert(pid, "pidns", TIMEOUT).expect("revert");
    lines.wait_for("v=1 s=31");
    // Dropping the wrapper kills unshare, which kills the program (--kill-child).
}

/// A patch with nothing but code (no unwind tables, strings or data): its text and the commit
/// routine's pages are adjacent read-execute mappings, which the kernel merges into one. Revert
/// must still write its routine into the commit pages the header records, never over the live
/// patch code.
#[test]
fn revert_of_a_code_only_patch_keeps_the_patch_code_intact() {
    const MAIN_ONLY: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
int version(int);
static void *worker(void *arg) {
    (void)arg;
    for (;;) { volatile int v = version(1); (void)v; }
    return 0;
}
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], 0, worker, 0);
    for (;;) { printf("v=%d\n", version(1)); usleep(2000); }
}
"#;
    const LIB_ONLY: &str = "int version(int x) { return x; }\n";
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "code-only");
    let flags = [
        "-O2",
        "-fno-asynchronous-unwind-tables",
        "-ffunction-sections",
        "-fdata-sections",
        "-c",
        "lib.c",
        "-o",
        "lib.o",
    ];
    for (side, src) in [
        ("orig", LIB_ONLY.to_string()),
        ("fixed", LIB_ONLY.replace("return x;", "return x * 2;")),
    ] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
        std::fs::write(dir.join(side).join("lib.c"), src).unwrap();
        gcc(&dir.join(side), &flags);
    }
    std::fs::write(dir.join("main.c"), MAIN_ONLY).unwrap();
    gcc(
        &dir,
        &["-O2", "main.c", "orig/lib.o", "-o", "prog", "-lpthread"],
    );
    let a = std::fs::read(dir.join("orig/lib.o")).unwrap();
    let b = std::fs::read(dir.join("fixed/lib.o")).unwrap();
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let d = suture_object::analyze(&a, &b).unwrap();
    let patch = suture_object::emit::emit(&d).unwrap();
    let (mut child, lines) = spawn_lines(&mut Command::new(dir.join("prog")));
    lines.wait_for("v=1");
    let pid = Pid(child.0.id() as i32);
    let opts = ApplyOptions {
        patch_id: "code-only".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    for _ in 0..5 {
        apply(pid, &patch, &opts).expect("apply");
        lines.wait_for("v=2");
        revert(pid, "code-only", TIMEOUT).expect("revert");
        lines.wait_for("v=1");
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(child.0.try_wait().unwrap().is_none(), "the program died");
}

/// A patch of 300 functions: its header (32 bytes a redirect) spans several pages, and status
/// and revert still find it.
#[test]
fn a_patch_of_300_functions_has_a_multi_page_header() {
    let mut lib = String::new();
    for i in 0..300 {
        lib += &format!("__attribute__((noinline)) int f{i}(int x) {{ return x + {i}; }}\n");
    }
    let fixed = (0..300)
        .map(|i| {
            format!("__attribute__((noinline)) int f{i}(int x) {{ return x + {i} + 1000; }}\n")
        })
        .collect::<String>();
    const MAIN_MANY: &str = r#"
#include <stdio.h>
#include <unistd.h>
int f0(int), f299(int);
int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    for (;;) { printf("a=%d b=%d\n", f0(1), f299(1)); usleep(2000); }
}
"#;
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "many");
    let prog = program(&dir, MAIN_MANY, &lib);
    let patch = patch_to(&dir, "fixed", &fixed);
    let (_child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("a=1 b=300");
    let pid = Pid(_child.0.id() as i32);
    let opts = ApplyOptions {
        patch_id: "many".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let a = apply(pid, &patch, &opts).expect("apply");
    assert_eq!(a.redirects.len(), 300);
    lines.wait_for("a=1001 b=1300");
    let live = status(pid).unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].header.redirects.len(), 300);
    revert(pid, "many", TIMEOUT).expect("revert");
    lines.wait_for("a=1 b=300");
}

const NAPPER_MAIN: &str = include_str!("fixtures/napper/main.c");
const NAP: &str = include_str!("fixtures/napper/nap.c");
const NAP_FIXED: &str = include_str!("fixtures/napper/nap.fixed.c");

/// The napper program (threads that are almost never outside `nap()`) and the patch of nap.c.
fn napper(dir: &Path) -> (PathBuf, Vec<u8>) {
    let c = ["-c", "-O2", "-g", "-ffunction-sections", "-fdata-sections"];
    for (side, src) in [("orig", NAP), ("fixed", NAP_FIXED)] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
        std::fs::write(dir.join(side).join("nap.c"), src).unwrap();
        gcc(
            &dir.join(side),
            &[&c[..], &["nap.c", "-o", "nap.o"]].concat(),
        );
    }
    std::fs::write(dir.join("main.c"), NAPPER_MAIN).unwrap();
    gcc(
        dir,
        &["-O2", "main.c", "orig/nap.o", "-lpthread", "-o", "prog"],
    );
    let read = |side: &str| std::fs::read(dir.join(side).join("nap.o")).unwrap();
    let (a, b) = (read("orig"), read("fixed"));
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let patch = suture_object::emit::emit(&suture_object::analyze(&a, &b).unwrap()).unwrap();
    (dir.join("prog"), patch)
}

/// Four threads call `nap()` back to back and it sleeps inside itself: stopping the process at
/// random moments never finds it off every stack (shown with return stubs turned off), so the
/// apply catches each thread as `nap()` returns, parks it in a return stub, and switches while
/// all are parked. The revert does the same with the new `nap()`. The program never misses a
/// beat: each tick's value is the old or the new one, nothing else.
#[test]
fn functions_rarely_off_the_stack_are_caught_as_they_return() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "napper");
    let (prog, patch) = napper(&dir);
    let (mut child, lines) = spawn_lines(&mut Command::new(&prog));
    let pid = Pid(lines.wait_for("pid ")[4..].trim().parse().unwrap());
    assert_eq!(pid.0, child.0.id() as i32);
    lines.wait_for("v=11");

    // Polling alone times out: nap() is on some stack at every stop.
    let polling = ApplyOptions {
        patch_id: "nap".into(),
        timeout: Duration::from_millis(500),
        catch_returns: false,
        ..Default::default()
    };
    match apply(pid, &patch, &polling) {
        Err(e @ suture_process::apply::ApplyError::Busy { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("nap") && msg.contains("turned off"), "{msg}");
        }
        other => panic!("expected nap to be busy when only polling, got {other:?}"),
    }
    assert!(no_live(pid));

    let opts = ApplyOptions {
        patch_id: "nap".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let applied = apply(pid, &patch, &opts).expect("apply");
    assert!(applied.caught_returns >= 1, "{applied:?}");
    lines.drain();
    lines.wait_for("v=12");
    let mut seen = 0;
    while seen < 3 {
        let l = lines.wait_for("tick ");
        assert!(l.ends_with("v=12"), "after the apply: {l}");
        seen += 1;
    }

    revert(pid, "nap", TIMEOUT).expect("revert");
    lines.drain();
    lines.wait_for("v=11");
    for _ in 0..3 {
        let l = lines.wait_for("tick ");
        assert!(l.ends_with("v=11"), "after the revert: {l}");
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the program is alive"
    );
}

/// A bare patch object carries the original functions' code as compiled (relocated
/// instructions left out): applied to a program built from other code (here the original unit
/// compiled at -O1, and another version of it), it is refused by name before anything is
/// written; the program's own build applies.
#[test]
fn a_patch_object_for_another_build_is_refused() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "other-build");
    let (prog, good) = build(&dir);
    let (mut child, lines) = spawn_lines(&mut Command::new(&prog));
    lines.wait_for("v=1");
    let pid = Pid(child.0.id() as i32);
    let patch_of = |name: &str, flags: &[&str], orig_src: &str| -> Vec<u8> {
        let d = dir.join(name);
        for (side, src) in [("orig", orig_src), ("fixed", FIXED)] {
            std::fs::create_dir_all(d.join(side)).unwrap();
            std::fs::write(d.join(side).join("lib.c"), src).unwrap();
            let mut args = flags.to_vec();
            args.extend(["-g", "-ffunction-sections", "-fdata-sections", "-c"]);
            args.extend(["lib.c", "-o", "lib.o"]);
            gcc(&d.join(side), &args);
        }
        let a = std::fs::read(d.join("orig/lib.o")).unwrap();
        let b = std::fs::read(d.join("fixed/lib.o")).unwrap();
        let (a, b) = (
            suture_object::Object::parse(&a).unwrap(),
            suture_object::Object::parse(&b).unwrap(),
        );
        suture_object::emit::emit(&suture_object::analyze(&a, &b).unwrap()).unwrap()
    };
    let opts = |id: &str| ApplyOptions {
        patch_id: id.into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let other_flags = patch_of("o1", &["-O1"], LIB);
    let other_version = patch_of("v0", &["-O2"], &LIB.replace("return 1;", "return 0;"));
    for (id, patch) in [("o1", &other_flags), ("v0", &other_version)] {
        let e = apply(pid, patch, &opts(id)).expect_err("another build must be refused");
        let msg = e.to_string();
        assert!(
            msg.contains("does not run the code this patch was made from")
                && msg.contains("version")
                && msg.contains("untouched"),
            "{id}: {msg}"
        );
        assert!(no_live(pid), "{id}: nothing left");
    }
    lines.drain();
    lines.wait_for("v=1");
    apply(pid, &good, &opts("good")).expect("the program's own build applies");
    lines.wait_for("v=2");
    assert!(child.0.try_wait().unwrap().is_none());
}

/// A C++ program whose threads are almost never outside `nap()`: it can throw exceptions, and an
/// exception leaving `nap()` while its return address named a return stub would find no unwind
/// rules there and abort the program. So no stub is armed: the apply only polls, times out and
/// refuses, and the program runs on unharmed.
#[test]
fn return_stubs_are_not_used_in_programs_that_can_throw() {
    const MAIN_CXX: &str = r#"
#include <cstdio>
#include <thread>
#include <unistd.h>
extern "C" int nap(int);
int main() {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    std::printf("pid %d\n", getpid());
    std::thread t([] { for (;;) nap(10); });
    for (unsigned long n = 0;; n++) {
        int v = nap(10);
        if (n % 25 == 0)
            std::printf("tick %lu v=%d\n", n / 25, v);
    }
}
"#;
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "apply", "napper-cxx");
    let (_, patch) = napper(&dir);
    std::fs::write(dir.join("main.cc"), MAIN_CXX).unwrap();
    let st = Command::new("g++")
        .args(["-O2", "-pthread", "main.cc", "orig/nap.o", "-o", "prog-cxx"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let (mut child, lines) = spawn_lines(&mut Command::new(dir.join("prog-cxx")));
    let pid = Pid(lines.wait_for("pid ")[4..].trim().parse().unwrap());
    lines.wait_for("v=11");
    let opts = ApplyOptions {
        patch_id: "nap".into(),
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    match apply(pid, &patch, &opts) {
        Err(e @ suture_process::apply::ApplyError::Busy { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("nap") && msg.contains("no return stubs") && msg.contains("throw"),
                "{msg}"
            );
        }
        other => panic!("expected nap to stay busy without return stubs, got {other:?}"),
    }
    assert!(no_live(pid));
    lines.drain();
    lines.wait_for("v=11");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the program is alive"
    );
}
