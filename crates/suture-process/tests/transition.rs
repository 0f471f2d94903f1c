//! The per-thread transition (`apply --transition`) on a real program built with gcc -O2:
//! worker threads that live inside a replaced function finish their calls in the old code
//! (never mixing old and new versions), every other thread and every new one runs the new code
//! at once, and the transition completes as the workers leave the old code; or, when they do
//! not, it times out into a full revert.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

use suture_process::apply::{apply, revert, status, ApplyError, ApplyOptions, Outcome};
use suture_process::ids::Pid;
use suture_testkit::cc::gcc;
use suture_testkit::proc::Lines;
use suture_testkit::{spawn_lines, wait_until, Scratch, TIMEOUT, WAIT};

mod common;

const WORKERS: &str = include_str!("fixtures/transition/workers.c");

/// The program and the patch of its `FIXED` variant, with on-stack replacement maps or (`osr`
/// false) without: then only a transition can apply it while the workers wait.
fn build(dir: &Path, osr: bool) -> (PathBuf, Vec<u8>) {
    std::fs::write(dir.join("workers.c"), WORKERS).unwrap();
    let flags = ["-O2", "-g", "-ffunction-sections"];
    common::variants(dir, "workers.c", &flags, "FIXED");
    let patch = common::with_diff(dir, osr, |d| suture_object::emit::emit(d).unwrap());
    gcc(dir, &["orig.o", "-o", "workers", "-lpthread"]);
    (dir.join("workers"), patch)
}

struct Target {
    child: suture_testkit::proc::KillOnDrop,
    stdin: ChildStdin,
    lines: Lines,
    pid: Pid,
}

impl Target {
    fn start(prog: &Path) -> Target {
        let (mut child, lines) = spawn_lines(Command::new(prog).stdin(Stdio::piped()));
        let stdin = child.0.stdin.take().unwrap();
        lines.wait_for("ready");
        let pid = Pid(child.id() as i32);
        Target {
            child,
            stdin,
            lines,
            pid,
        }
    }

    /// Sends a command and returns the answer line that starts with `prefix`.
    fn ask(&mut self, cmd: &str, prefix: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.lines.wait_for(prefix)
    }

    /// Starts `apply --transition` (limit `limit`) on a thread, and waits until both workers
    /// are listed as old-state.
    fn transition_started(
        &self,
        patch: &[u8],
        limit: Duration,
    ) -> std::thread::JoinHandle<Result<suture_process::apply::Applied, ApplyError>> {
        let (pid, patch) = (self.pid, patch.to_vec());
        let applying = std::thread::spawn(move || apply(pid, &patch, &transition("fix", limit)));
        wait_until("the transition to list both workers", WAIT, || {
            self.old_threads().len() == 2
        });
        applying
    }

    /// The threads the live patch's transition still runs on old code.
    fn old_threads(&self) -> Vec<i32> {
        status(self.pid)
            .unwrap()
            .iter()
            .flat_map(|p| p.old_threads.iter().map(|s| s.tid))
            .collect()
    }
}

fn transition(id: &str, limit: Duration) -> ApplyOptions {
    ApplyOptions {
        patch_id: id.into(),
        timeout: TIMEOUT,
        transition: Some(limit),
        ..Default::default()
    }
}

/// Wakes worker `i` until it answers from the new code. Every answer is a whole version:
/// 11 from a call that began in the old code, 22 from the new; a mixture (12, 21) fails.
fn until_new(t: &mut Target, i: usize) -> usize {
    let mut old_answers = 0;
    loop {
        let a = t.ask(&format!("w{i}"), &format!("worker {i}: "));
        match a.rsplit(' ').next().unwrap() {
            "22" => return old_answers,
            "11" => old_answers += 1,
            other => panic!("worker {i} mixed versions: {other}"),
        }
        assert!(old_answers < 200, "worker {i} never left the old code");
        // Give the transition a check to catch it (it is parked, or back in old code).
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn waiting_workers_finish_in_old_code_and_everyone_else_runs_the_fix() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "transition", "workers");
    let (prog, patch) = build(&dir, false);
    let mut t = Target::start(&prog);
    let pid = t.pid;
    assert_eq!(t.ask("m", "main: "), "main: 11");

    // Both workers always wait inside step(): a plain switch never finds it idle.
    let plain = ApplyOptions {
        patch_id: "plain".into(),
        timeout: Duration::from_millis(300),
        ..Default::default()
    };
    match apply(pid, &patch, &plain) {
        Err(e @ ApplyError::Busy { .. }) => assert!(e.to_string().contains("step"), "{e}"),
        other => panic!("expected a busy refusal, got {other:?}"),
    }

    let applying = t.transition_started(&patch, TIMEOUT);
    let live = status(pid).unwrap();
    assert_eq!(
        live[0].transition_driver,
        Some(std::process::id() as i32),
        "status names the process driving the transition"
    );
    // The main thread was not inside: it runs the fix at once.
    assert_eq!(t.ask("m", "main: "), "main: 22");
    // A new thread runs it at once too.
    t.ask("spawn", "spawned 2");
    assert_eq!(t.ask("w2", "worker 2: "), "worker 2: 22");
    // Worker 0 finishes its call in the old code (old version() too), then gets the fix.
    let first = t.ask("w0", "worker 0: ");
    assert_eq!(
        first, "worker 0: 11",
        "a call begun in old code ends in old code"
    );
    until_new(&mut t, 0);
    assert_eq!(t.old_threads().len(), 1, "only worker 1 is left");
    assert!(!applying.is_finished(), "apply waits for the transition");
    // Worker 1 likewise; then the transition is complete.
    assert_eq!(t.ask("w1", "worker 1: "), "worker 1: 11");
    until_new(&mut t, 1);
    let applied = applying.join().unwrap().expect("the transition completes");
    let report = applied.transition.expect("a transition report");
    assert_eq!(report.old_threads.len(), 2, "{report:?}");
    assert_eq!(report.completed, "returned");
    assert!(t.old_threads().is_empty());
    assert_eq!(t.ask("w0", "worker 0: "), "worker 0: 22");
    assert_eq!(t.ask("m", "main: "), "main: 22");

    // Revert is the plain one: the workers wait in the new code now, so it catches them as
    // they leave it (wake all of them at once while it waits: each is parked until all are).
    let reverting = std::thread::spawn(move || revert(pid, "fix", TIMEOUT));
    while !reverting.is_finished() {
        writeln!(t.stdin, "w0\nw1\nw2").unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    reverting.join().unwrap().expect("revert");
    let answers: Vec<String> = t
        .lines
        .during(Duration::from_millis(500))
        .into_iter()
        .filter(|l| l.starts_with("worker"))
        .collect();
    assert!(!answers.is_empty());
    assert!(
        answers
            .iter()
            .all(|a| a.ends_with(": 22") || a.ends_with(": 11")),
        "{answers:?}"
    );
    assert_eq!(t.ask("m", "main: "), "main: 11");
}

#[test]
fn a_transition_that_does_not_complete_is_reverted() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "transition", "timeout");
    let (prog, patch) = build(&dir, false);
    let mut t = Target::start(&prog);
    let applying = t.transition_started(&patch, Duration::from_millis(1500));
    // Meanwhile the main thread runs the fix.
    assert_eq!(t.ask("m", "main: "), "main: 22");
    // The workers are never woken: the transition times out and the patch is reverted.
    match applying.join().unwrap() {
        Err(e @ ApplyError::Transition { .. }) => {
            assert_eq!(e.outcome(), Outcome::Reverted, "{e}");
            let msg = e.to_string();
            assert!(msg.contains("2 threads still ran old code"), "{msg}");
            assert!(msg.contains("step"), "{msg}");
            assert!(
                msg.contains("the patch has no on-stack replacement maps"),
                "{msg}"
            );
        }
        other => panic!("expected a transition timeout, got {other:?}"),
    }
    assert!(t.old_threads().is_empty());
    // Everyone runs the original code; the workers' calls end as they began.
    assert_eq!(t.ask("m", "main: "), "main: 11");
    assert_eq!(t.ask("w0", "worker 0: "), "worker 0: 11");
    assert_eq!(t.ask("w1", "worker 1: "), "worker 1: 11");
    assert_eq!(t.ask("w0", "worker 0: "), "worker 0: 11");
}

/// With on-stack replacement maps, frames waiting at mapped call sites move at the switch (no
/// transition for them); a thread running inside the old code goes on there, and when the
/// transition's time is up while it waits at a mapped site, its frame is moved then.
#[test]
fn on_stack_replacement_moves_what_it_can_at_the_switch_and_at_the_timeout() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "transition", "osr");
    let (prog, patch) = build(&dir, true);
    let mut t = Target::start(&prog);
    let pid = t.pid;
    // Worker 0 runs inside step() (not waiting in a call: its frame cannot move); worker 1
    // waits in read() called from step().
    t.ask("s0", "spinning 0");
    let applying = std::thread::spawn({
        let patch = patch.clone();
        move || apply(pid, &patch, &transition("fix", Duration::from_secs(4)))
    });
    wait_until("worker 0 to be the only old-state thread", WAIT, || {
        t.old_threads().len() == 1
    });
    // Worker 1's frame moved at the switch: its call ends in the new code.
    assert_eq!(t.ask("w1", "worker 1: "), "worker 1: 22");
    // Worker 0 stops spinning and waits in the second read() of the old step(), where it
    // stays until the transition's time is up; then its frame moves too.
    t.ask("r", "released");
    let applied = applying
        .join()
        .unwrap()
        .expect("completed by on-stack replacement");
    assert_eq!(applied.moved_frames.len(), 1, "{applied:?}");
    let report = applied.transition.expect("a transition report");
    assert_eq!(report.completed, "moved", "{report:?}");
    assert_eq!(report.moved_frames.len(), 1, "{report:?}");
    assert!(t.old_threads().is_empty());
    assert_eq!(t.ask("w0", "worker 0: "), "worker 0: 22");
    assert_eq!(t.ask("m", "main: "), "main: 22");
}

#[test]
fn a_process_that_ends_during_its_transition_ends_it() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "transition", "exit");
    let (prog, patch) = build(&dir, false);
    let mut t = Target::start(&prog);
    let applying = t.transition_started(&patch, TIMEOUT);
    // (Once the main thread answers from the fix, the switch is over and the transition runs.)
    assert_eq!(t.ask("m", "main: "), "main: 22");
    t.child.0.kill().unwrap();
    let _ = t.child.0.wait();
    let applied = applying
        .join()
        .unwrap()
        .expect("nothing is left on old code");
    let report = applied.transition.expect("a transition report");
    assert_eq!(report.completed, "exited", "{report:?}");
}
