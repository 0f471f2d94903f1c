//! Targets suture must refuse cleanly or handle: seccomp filters, memory-deny-write-execute,
//! another mount namespace, coroutine stacks, gone/traced/stopped/32-bit processes.
//!
//! Each test compiles its fixture (`tests/fixtures/refusals`, `tests/fixtures/coroutine`) with
//! gcc at test time, diffs a one-line fix of the patched unit into a real patch object, runs
//! the program and calls `suture_process::apply::apply` on it. After a refusal the program must
//! go on exactly as before: still running (never stopped, never killed), still printing the
//! original result, no SIGTRAP/SIGSYS received, its memory map unchanged and no patch left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use suture_process::apply::{apply, revert, status, ApplyError, ApplyOptions};
use suture_process::error::Error;
use suture_process::ids::{Pid, Tid};
use suture_process::seccomp::{Injected, PR_GET_MDWE};
use suture_process::stop::StoppedProcess;
use suture_testkit::cc::gcc;
use suture_testkit::{Lines, Scratch, TIMEOUT, WAIT};

const MAIN: &str = include_str!("fixtures/refusals/main.c");
const ANSWER: &str = include_str!("fixtures/refusals/answer.c");
const ANSWER_FIXED: &str = include_str!("fixtures/refusals/answer.fixed.c");
const CORO_MAIN: &str = include_str!("fixtures/coroutine/main.c");
const CORO: &str = include_str!("fixtures/coroutine/coro.c");
const CORO_FIXED: &str = include_str!("fixtures/coroutine/coro.fixed.c");
const DEAD_MAIN: &str = include_str!("fixtures/deadstack/main.c");
const DEAD_WORK: &str = include_str!("fixtures/deadstack/work.c");
const DEAD_WORK_FIXED: &str = include_str!("fixtures/deadstack/work.fixed.c");
const REC_MAIN: &str = include_str!("fixtures/records/main.c");
const REC_WORK: &str = include_str!("fixtures/records/work.c");
const REC_WORK_FIXED: &str = include_str!("fixtures/records/work.fixed.c");

// ---- building ------------------------------------------------------------------------------

/// A fresh directory for one test (tests run in parallel, in several processes).
fn work(name: &str) -> Scratch {
    Scratch::new(env!("CARGO_TARGET_TMPDIR"), "refusals", name)
}

const UNIT_FLAGS: [&str; 5] = [
    "-c",
    "-O2",
    "-ffunction-sections",
    "-fdata-sections",
    "-fPIC",
];

/// Compiles `orig` and `fixed` as `name.c` into `dir/orig/name.o` and `dir/fixed/name.o` and
/// returns the patch object `suture diff` would write.
fn unit_and_patch(dir: &Path, name: &str, orig: &str, fixed: &str, extra: &[&str]) -> Vec<u8> {
    for (side, src) in [("orig", orig), ("fixed", fixed)] {
        let d = dir.join(side);
        std::fs::create_dir_all(&d).unwrap();
        let c = format!("{name}.c");
        std::fs::write(d.join(&c), src).unwrap();
        let o = format!("{name}.o");
        gcc(&d, &[&UNIT_FLAGS[..], extra, &[&c, "-o", &o]].concat());
    }
    let read = |side: &str| std::fs::read(dir.join(side).join(format!("{name}.o"))).unwrap();
    let (a, b) = (read("orig"), read("fixed"));
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let d = suture_object::analyze(&a, &b).unwrap();
    assert_eq!(d.report.status, suture_object::Status::Patchable);
    suture_object::emit::emit(&d).unwrap()
}

/// The refusals fixture: `dir/prog` (answer.c linked in) and the patch making answer() 2 + x.
fn refusals_fixture(dir: &Path, extra: &[&str]) -> (PathBuf, Vec<u8>) {
    let patch = unit_and_patch(dir, "answer", ANSWER, ANSWER_FIXED, extra);
    std::fs::write(dir.join("main.c"), MAIN).unwrap();
    gcc(
        dir,
        &[
            &["-O2", "-Wall"],
            extra,
            &["main.c", "orig/answer.o", "-o", "prog", "-lpthread"],
        ]
        .concat(),
    );
    (dir.join("prog"), patch)
}

// ---- running -------------------------------------------------------------------------------

/// A running fixture, killed (with the process it reports as the target) on drop.
struct Target {
    child: Child,
    lines: Lines,
    pid: Pid,
}

impl Target {
    fn start(cmd: &mut Command) -> Target {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("the fixture starts");
        let lines = Lines::of(child.stdout.take().unwrap());
        let mut t = Target {
            pid: Pid(child.id() as i32),
            child,
            lines,
        };
        // The program reports its pid (another process than the child when it forks).
        t.pid = Pid(t.expect("pid ").parse().unwrap());
        t
    }

    /// The rest of the next line starting with `prefix`.
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.0.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(e) => panic!("process {} never printed {prefix:?}: {e}", self.pid),
            }
        }
    }

    /// Waits for a tick line containing `want`, from a tick printed after this call.
    fn wait_tick(&self, want: &str) -> String {
        self.lines.drain();
        let deadline = Instant::now() + WAIT;
        loop {
            let l = self.expect("tick ");
            if l.contains(want) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "process {} never printed {want:?} (last: {l})",
                self.pid
            );
        }
    }

    /// The program is alive, running (not stopped), still on its original code and has
    /// received no stray trap or SIGSYS.
    fn assert_unchanged(&mut self, original: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the target died ({:?})",
            self.child.try_wait()
        );
        let a = self.wait_tick(original);
        let b = self.wait_tick(original);
        let n = |l: &str| l.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        assert!(n(&b) > n(&a), "{a} then {b}");
        if a.contains("sigs=") {
            assert!(a.ends_with("sigs=0") && b.ends_with("sigs=0"), "{a} / {b}");
        }
        for (tid, state) in task_states(self.pid) {
            assert!(!matches!(state, 'T' | 't'), "thread {tid} left stopped");
        }
        // Nothing live, and nothing half-made: a region that was live stays mapped, retired
        // ("reverted"); one that never went live is released.
        let left = status(self.pid).unwrap();
        assert!(
            left.iter()
                .all(|p| p.header.state == suture_process::header::State::Reverted),
            "a patch is live or half-made: {left:?}"
        );
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid.0),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn task_states(pid: Pid) -> Vec<(Tid, char)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{}/task", pid.0))
        .into_iter()
        .flatten()
    {
        let e = e.unwrap();
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
        v.push((Tid(e.file_name().to_str().unwrap().parse().unwrap()), state));
    }
    v
}

fn maps(pid: Pid) -> String {
    std::fs::read_to_string(format!("/proc/{}/maps", pid.0)).unwrap()
}

fn opts(id: &str) -> ApplyOptions {
    ApplyOptions {
        patch_id: id.into(),
        timeout: TIMEOUT,
        object: None,
        ..Default::default()
    }
}

/// The system calls an apply makes inside the target, with plausible values: the remote
/// `mmap`s (the region, then its executable pages mapped read-execute in place), `mprotect`
/// and `munmap`, and the commit routine's `open`/`pwrite64`/`close`/`getpid`.
fn apply_calls(pid: Pid) -> Vec<Injected> {
    let (site, routine, base) = (0x7fff_f7fc_1002, 0x5555_5000_0010, 0x5555_5000_0000);
    let fd = suture_process::seccomp::lowest_free_fd(pid).unwrap();
    vec![
        Injected::mmap(site, base, 0x4000, 1, 0x10_0022, -1, 0),
        Injected::mmap(site, base + 0x1000, 0x1000, 5, 0x32, -1, 0),
        Injected::mprotect(site, base + 0x2000, 0x1000, 3),
        Injected::open(routine, base + 0x3090, 2, 0),
        Injected::pwrite64(routine, fd, base + 0x30a8, 8, 0x5555_5555_1130),
        Injected::close(routine, fd),
        Injected::getpid(routine),
        Injected::munmap(site, base, 0x4000),
    ]
}

fn seccomp_refusal(pid: Pid, calls: &[Injected]) -> Result<(), Error> {
    let sp = StoppedProcess::stop(pid).unwrap();
    let r = sp.check_seccomp(calls);
    sp.resume().unwrap();
    r
}

// ---- seccomp and memory-deny-write-execute ---------------------------------------------------

/// Fetches the filters of both threads of a fixture: one filter of `insns` instructions each.
fn assert_one_filter_per_thread(pid: Pid, insns: usize) {
    let sp = StoppedProcess::stop(pid).unwrap();
    let filters = sp.seccomp_filters().unwrap();
    sp.resume().unwrap();
    assert_eq!(filters.len(), 2, "both threads");
    for (tid, f) in &filters {
        assert_eq!(f.len(), 1, "thread {tid} has the one filter");
        assert_eq!(
            f[0].len(),
            insns,
            "thread {tid}: the fixture's instructions"
        );
    }
}

/// A filter that kills the process for any new executable memory: suture must refuse before
/// making a single system call in the target.
#[test]
fn seccomp_filter_killing_on_executable_mappings_is_refused() {
    let dir = work("seccomp-kill");
    let (prog, patch) = refusals_fixture(&dir, &[]);
    let mut t = Target::start(Command::new(&prog).arg("seccomp-kill-exec"));
    t.wait_tick("answer=1");
    let before = maps(t.pid);
    assert_one_filter_per_thread(t.pid, 10);
    // Both ways of getting executable memory are fatal under this filter.
    for call in [
        Injected::mmap(0x1002, 0x5555_5000_1000, 0x1000, 5, 0x32, -1, 0),
        Injected::mprotect(0x1002, 0x5555_5000_1000, 0x1000, 5),
    ] {
        let name = call.name;
        let err = seccomp_refusal(t.pid, &[call]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::SeccompForbids { .. }), "{msg}");
        assert!(
            msg.contains(&format!(
                "kill the process (SECCOMP_RET_KILL_PROCESS) for suture's {name}"
            )),
            "{msg}"
        );
    }
    // Everything else suture does passes the same filter.
    let harmless: Vec<Injected> = apply_calls(t.pid)
        .into_iter()
        .filter(|c| c.args[2] & 4 == 0 || !matches!(c.name, "mmap" | "mprotect"))
        .collect();
    seccomp_refusal(t.pid, &harmless).unwrap();

    // The apply is refused and the target lives on, unchanged.
    let msg = apply(t.pid, &patch, &opts("kill")).unwrap_err().to_string();
    assert!(msg.contains("seccomp"), "{msg}");
    // The message states what happened to the target in the end, not mid-way.
    assert!(
        msg.ends_with("; target untouched") && !msg.contains("still stopped"),
        "{msg}"
    );
    t.assert_unchanged("answer=1");
    assert_eq!(before, maps(t.pid));
}

/// systemd's MemoryDenyWriteExecute=yes (here with KILL instead of EPERM) forbids
/// `mprotect(PROT_EXEC)` and writable-executable `mmap`, not a fresh read-execute `mmap`.
#[test]
fn seccomp_filter_killing_on_mprotect_exec_is_evaluated_exactly() {
    let dir = work("seccomp-mdwe");
    let (prog, _) = refusals_fixture(&dir, &[]);
    let mut t = Target::start(Command::new(&prog).arg("seccomp-kill-mprotect"));
    t.wait_tick("answer=1");
    assert_one_filter_per_thread(t.pid, 13);
    let (ip, at) = (0x1002, 0x5555_5000_1000);
    let verdict = |call: Injected| seccomp_refusal(t.pid, &[call]).map_err(|e| e.to_string());
    let msg = verdict(Injected::mprotect(ip, at, 0x1000, 5)).unwrap_err();
    assert!(
        msg.contains("kill the process") && msg.contains("mprotect"),
        "{msg}"
    );
    let msg = verdict(Injected::mmap(ip, at, 0x1000, 7, 0x32, -1, 0)).unwrap_err();
    assert!(
        msg.contains("kill the process") && msg.contains("mmap"),
        "{msg}"
    );
    verdict(Injected::mmap(ip, at, 0x1000, 5, 0x32, -1, 0)).expect("read-execute mmap");
    verdict(Injected::mprotect(ip, at, 0x1000, 3)).expect("read-write mprotect");
    seccomp_refusal(t.pid, &apply_calls(t.pid)).expect("what suture injects");
    t.assert_unchanged("answer=1");
}

#[test]
fn seccomp_filter_failing_pwrite64_is_refused() {
    let dir = work("seccomp-pwrite");
    let (prog, patch) = refusals_fixture(&dir, &[]);
    let mut t = Target::start(Command::new(&prog).arg("seccomp-eperm-pwrite"));
    t.wait_tick("answer=1");
    let before = maps(t.pid);
    let msg = seccomp_refusal(t.pid, &apply_calls(t.pid))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("pwrite64") && msg.contains("EPERM") && msg.contains("SECCOMP_RET_ERRNO"),
        "{msg}"
    );
    let msg = apply(t.pid, &patch, &opts("pwrite"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("seccomp"), "{msg}");
    t.assert_unchanged("answer=1");
    assert_eq!(before, maps(t.pid));
}

#[test]
fn unrelated_seccomp_filter_passes_the_check() {
    let dir = work("seccomp-unrelated-check");
    let (prog, _) = refusals_fixture(&dir, &[]);
    let mut t = Target::start(Command::new(&prog).arg("seccomp-deny-ptrace"));
    t.wait_tick("answer=1");
    let mut calls = apply_calls(t.pid);
    calls.push(Injected::get_mdwe(0x7fff_f7fc_1002));
    assert_eq!(calls.last().unwrap().args[0], PR_GET_MDWE);
    seccomp_refusal(t.pid, &calls).expect("a filter denying only ptrace allows suture");
    // ptrace itself is what the filter denies.
    let ptrace = Injected::new("ptrace", 101, [0; 6], 0);
    let msg = seccomp_refusal(t.pid, &[ptrace]).unwrap_err().to_string();
    assert!(msg.contains("ptrace") && msg.contains("EPERM"), "{msg}");
    t.assert_unchanged("answer=1");
}

/// Seccomp is per thread: a filter the worker installed for itself alone (no TSYNC) leaves the
/// leader's `/proc/PID/status` saying `Seccomp: 0`, and must still be found.
#[test]
fn a_filter_on_one_thread_only_is_found() {
    use suture_process::seccomp::ThreadSeccomp;
    let dir = work("seccomp-one-thread");
    let (prog, _) = refusals_fixture(&dir, &[]);
    let mut t = Target::start(Command::new(&prog).arg("seccomp-worker-only"));
    t.expect("worker filtered");
    t.wait_tick("answer=1");
    let leader = Tid(t.pid.0);
    let sp = StoppedProcess::stop(t.pid).unwrap();
    let states = sp.thread_seccomp(None).unwrap();
    let all = sp.check_seccomp(&apply_calls(t.pid));
    let leader_only = sp.check_seccomp_of(Some(&[leader]), &apply_calls(t.pid));
    sp.resume().unwrap();
    assert_eq!(states.len(), 2);
    let worker = states.iter().find(|(tid, _)| *tid != leader).unwrap().0;
    for (tid, state) in &states {
        match state {
            ThreadSeccomp::Disabled => assert_eq!(*tid, leader),
            ThreadSeccomp::Filters(f) => {
                assert_eq!(*tid, worker);
                assert_eq!(f.len(), 1);
                assert_eq!(f[0].len(), 7);
            }
            ThreadSeccomp::Strict => panic!("thread {tid} in strict mode"),
        }
    }
    let msg = all.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("thread {worker} would fail it with EPERM"))
            && msg.contains("pwrite64"),
        "{msg}"
    );
    leader_only.expect("the leader has no filter");
    t.assert_unchanged("answer=1");
}

#[test]
fn unrelated_seccomp_filter_is_patched() {
    let dir = work("seccomp-unrelated");
    let (prog, patch) = refusals_fixture(&dir, &[]);
    let mut t = Target::start(Command::new(&prog).arg("seccomp-deny-ptrace"));
    t.wait_tick("answer=1");
    apply(t.pid, &patch, &opts("unrelated")).expect("apply under an unrelated filter");
    t.wait_tick("answer=2 sigs=0");
    revert(t.pid, "unrelated", TIMEOUT).expect("revert");
    t.assert_unchanged("answer=1");
}

/// Both kinds of memory-deny-write-execute forbid *gaining* `PROT_EXEC` (`mprotect`), not
/// mapping fresh read-execute memory: mapped that way, the patch can go in.
#[test]
fn memory_deny_write_execute_targets_are_patched_without_mprotect_exec() {
    let dir = work("mdwe-patched");
    let (prog, patch) = refusals_fixture(&dir, &[]);
    for mode in ["mdwe", "seccomp-kill-mprotect"] {
        let mut t = Target::start(Command::new(&prog).arg(mode));
        t.wait_tick("answer=1");
        apply(t.pid, &patch, &opts("mdwe")).unwrap_or_else(|e| panic!("{mode}: {e}"));
        t.wait_tick("answer=2 sigs=0");
        revert(t.pid, "mdwe", TIMEOUT).expect("revert");
        t.assert_unchanged("answer=1");
    }
}

// ---- mount namespaces ----------------------------------------------------------------------

/// The program and its library live on a tmpfs mounted only in the target's mount namespace:
/// the paths in its maps do not exist for suture, which must read them through
/// `/proc/PID/root` (or `map_files`).
#[test]
fn patches_a_process_in_another_mount_namespace() {
    let dir = work("mntns");
    let patch = unit_and_patch(&dir, "answer", ANSWER, ANSWER_FIXED, &[]);
    std::fs::write(dir.join("main.c"), MAIN).unwrap();
    gcc(&dir, &["-shared", "orig/answer.o", "-o", "libanswer.so"]);
    gcc(
        &dir,
        &[
            "-O2",
            "main.c",
            "-L.",
            "-lanswer",
            "-Wl,-rpath,$ORIGIN",
            "-lpthread",
            "-o",
            "prog-so",
        ],
    );
    gcc(
        &dir,
        &["-O2", "main.c", "orig/answer.o", "-lpthread", "-o", "prog"],
    );
    let private = dir.join("private");
    std::fs::create_dir_all(&private).unwrap();
    let script = format!(
        "mount -t tmpfs suture-test {p} && cp {d}/prog {d}/prog-so {d}/libanswer.so {p}/ && \
         exec {p}/\"$0\" plain",
        p = private.display(),
        d = dir.display()
    );
    for (exe, object) in [("prog", None), ("prog-so", Some("libanswer.so"))] {
        let mut t = Target::start(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(&script)
                .arg(exe),
        );
        t.wait_tick("answer=1");
        let exe_path = std::fs::read_link(format!("/proc/{}/exe", t.pid.0)).unwrap();
        assert_eq!(exe_path, private.join(exe));
        assert!(
            !exe_path.exists(),
            "the program is invisible outside its namespace"
        );
        let o = ApplyOptions {
            object: object.map(str::to_string),
            ..opts("mntns")
        };
        let applied = apply(t.pid, &patch, &o).unwrap_or_else(|e| panic!("{exe}: {e}"));
        assert_eq!(applied.redirects.len(), 1);
        t.wait_tick("answer=2 sigs=0");
        let live = status(t.pid).unwrap();
        assert_eq!(live.len(), 1);
        assert!(
            live[0].header.object.ends_with(object.unwrap_or(exe)),
            "{}",
            live[0].header.object
        );
        revert(t.pid, "mntns", TIMEOUT).expect("revert");
        t.assert_unchanged("answer=1");
    }
}

// ---- coroutines ----------------------------------------------------------------------------

fn coroutine_fixture(dir: &Path) -> (PathBuf, Vec<u8>) {
    let patch = unit_and_patch(dir, "coro", CORO, CORO_FIXED, &[]);
    std::fs::write(dir.join("main.c"), CORO_MAIN).unwrap();
    gcc(
        dir,
        &["-O2", "main.c", "orig/coro.o", "-lpthread", "-o", "prog"],
    );
    (dir.join("prog"), patch)
}

/// A coroutine on a heap stack, suspended outside the replaced functions: the ordinary case
/// patches, and the coroutine calls the new code after it.
#[test]
fn a_suspended_coroutine_outside_the_patched_functions_is_patched() {
    let dir = work("coro-idle");
    let (prog, patch) = coroutine_fixture(&dir);
    let mut t = Target::start(Command::new(&prog).arg("idle"));
    t.wait_tick("main=11 coro=101");
    apply(t.pid, &patch, &opts("coro")).expect("apply");
    t.wait_tick("main=12 coro=102");
    revert(t.pid, "coro", TIMEOUT).expect("revert");
    t.assert_unchanged("main=11 coro=101");
}

/// A coroutine *suspended inside* a replaced function (its context saved by `swapcontext`,
/// its stack on the heap, no thread on it) is found by the suspended-frame scan: the apply
/// waits for it to leave, and at the timeout refuses, naming the function and where the
/// return address into it is stored. The target keeps its original code.
#[test]
fn a_coroutine_suspended_inside_a_replaced_function_is_refused() {
    suspended_coroutine_is_refused("suspended");
}

/// The same with a hand-written switcher that keeps nothing but the coroutine's stack
/// pointer and started it on a stack misaligned by 8 bytes (the psABI wants 16): hold()'s
/// frame has code above it, so it counts although its CFA is not 16-byte aligned.
#[test]
fn a_coroutine_on_a_misaligned_stack_suspended_inside_a_replaced_function_is_refused() {
    suspended_coroutine_is_refused("misaligned");
}

/// Runs the coroutine program in `mode` (its coroutine suspended inside hold()) and checks
/// that an apply is refused for it and leaves the target as it was.
fn suspended_coroutine_is_refused(mode: &str) {
    let dir = work(&format!("coro-{mode}"));
    let (prog, patch) = coroutine_fixture(&dir);
    let mut t = Target::start(Command::new(&prog).arg(mode));
    t.wait_tick("main=11 coro=31");
    let before = maps(t.pid);
    let o = ApplyOptions {
        timeout: Duration::from_millis(300),
        ..opts("coro")
    };
    match apply(t.pid, &patch, &o) {
        Err(e @ ApplyError::Suspended { .. }) => {
            let busy = e.busy().expect("a busy detail");
            assert_eq!(busy.function, "hold", "{e}");
            assert_eq!(busy.thread, None, "{e}");
            let at = u64::from_str_radix(
                busy.suspended_at
                    .as_deref()
                    .unwrap()
                    .trim_start_matches("0x"),
                16,
            )
            .unwrap();
            // The return address lies in the heap (the coroutine's stack or its context) or
            // in the program's data (the saved context is a global).
            let holder = before
                .lines()
                .find(|l| {
                    let (r, _) = l.split_once(' ').unwrap();
                    let (lo, hi) = r.split_once('-').unwrap();
                    (u64::from_str_radix(lo, 16).unwrap()..u64::from_str_radix(hi, 16).unwrap())
                        .contains(&at)
                })
                .expect("the address is mapped");
            assert!(!holder.contains("[stack]"), "{holder}");
            assert_eq!(
                e.outcome(),
                suture_process::apply::Outcome::RolledBack,
                "{e}"
            );
        }
        other => panic!("expected a suspended frame in hold, got {other:?}"),
    }
    t.assert_unchanged("main=11 coro=31");
    assert_eq!(before, maps(t.pid));
}

/// With the scan turned off (`scan_suspended: false`, the operator's opt-out), the suspended
/// call finishes in the old body, which suture leaves intact (only the entry's first bytes
/// become a jump), and later calls run the new code. The coroutine then parks inside the
/// *patch*: a revert finds it and refuses, so "reverted" is never said while patch code is
/// still suspended on a stack.
#[test]
fn without_the_scan_a_suspended_call_finishes_old_and_revert_still_refuses() {
    let dir = work("coro-suspended-noscan");
    let (prog, patch) = coroutine_fixture(&dir);
    let t = Target::start(Command::new(&prog).arg("suspended"));
    t.wait_tick("main=11 coro=31");
    let o = ApplyOptions {
        scan_suspended: false,
        ..opts("coro")
    };
    apply(t.pid, &patch, &o).expect("apply");
    // Read the ticks in order: the first one printed by the new step() still shows the value of
    // the old hold() the coroutine was suspended in; then the new hold() takes over.
    let first_new = loop {
        let l = t.expect("tick ");
        if l.contains("main=12") {
            break l;
        }
        assert!(l.ends_with("main=11 coro=31"), "{l}");
    };
    assert!(first_new.ends_with("main=12 coro=31"), "{first_new}");
    t.wait_tick("main=12 coro=32");
    match revert(t.pid, "coro", Duration::from_millis(300)) {
        Err(e @ ApplyError::Suspended { .. }) => {
            assert!(e.to_string().contains("was not reverted"), "{e}");
        }
        other => panic!("expected the revert to find the coroutine in the patch, got {other:?}"),
    }
    // Still fully patched.
    t.wait_tick("main=12 coro=32");
    // The operator's way out (`revert --no-suspended-scan`): the revert goes through, and the
    // suspended call finishes in the patch's code, as the apply's did in the old code.
    suture_process::apply::revert_with(t.pid, "coro", Duration::from_secs(3), false)
        .expect("revert without the scan");
    let first_old = loop {
        let l = t.expect("tick ");
        if l.contains("main=11") {
            break l;
        }
    };
    assert!(first_old.ends_with("main=11 coro=32"), "{first_old}");
    t.wait_tick("main=11 coro=31");
}

// ---- stacks of exited threads --------------------------------------------------------------

fn deadstack_fixture(dir: &Path) -> (PathBuf, Vec<u8>) {
    let patch = unit_and_patch(dir, "work", DEAD_WORK, DEAD_WORK_FIXED, &[]);
    std::fs::write(dir.join("main.c"), DEAD_MAIN).unwrap();
    gcc(
        dir,
        &["-O2", "main.c", "orig/work.o", "-lpthread", "-o", "prog"],
    );
    (dir.join("prog"), patch)
}

/// Runs the fixture in `mode` and expects `apply` to find a suspended frame in `function` outside
/// every live thread's stack pointer, and the target to go on unchanged.
fn expect_suspended_in(mode: &str, function: &str) {
    let dir = work(&format!("dead-{mode}"));
    let (prog, patch) = deadstack_fixture(&dir);
    let mut t = Target::start(Command::new(&prog).arg(mode));
    t.expect("ready");
    t.wait_tick("v=11");
    let before = maps(t.pid);
    let o = ApplyOptions {
        timeout: Duration::from_millis(300),
        ..opts("dead")
    };
    match apply(t.pid, &patch, &o) {
        Err(e @ ApplyError::Suspended { .. }) => {
            assert_eq!(e.busy().expect("a busy detail").function, function, "{e}");
        }
        other => panic!("expected a suspended frame in {function}, got {other:?}"),
    }
    t.assert_unchanged("v=11");
    assert_eq!(before, maps(t.pid));
}

/// Two threads called deep() (replaced) and exited, one joined (its stack in glibc's cache),
/// one not (its stack still on glibc's list of used stacks): both stacks still hold the return
/// address into deep() (the fixture checks), and no code will ever return to it. The scan
/// proves those stacks dead from glibc's own lists and the kernel-cleared thread ids, so the
/// apply goes through (without that it waited for them and refused at the timeout).
#[test]
fn stale_frames_on_the_stacks_of_exited_threads_do_not_hold_the_apply() {
    let dir = work("dead-exited");
    let (prog, patch) = deadstack_fixture(&dir);
    let t = Target::start(Command::new(&prog).arg("exited"));
    assert_eq!(
        t.expect("stale "),
        "1",
        "the joined thread's stack lost the frame"
    );
    assert_eq!(
        t.expect("stale "),
        "2",
        "the unjoined thread's stack lost the frame"
    );
    t.expect("ready");
    t.wait_tick("v=11");
    apply(t.pid, &patch, &opts("dead")).expect("apply");
    t.wait_tick("v=12");
    revert(t.pid, "dead", TIMEOUT).expect("revert");
    t.wait_tick("v=11");
}

/// A live thread keeps a coroutine on an array in its own stack frame, suspended inside
/// hold(): that stack is glibc's too, but its thread is alive, so it is read and the frame
/// found.
#[test]
fn a_coroutine_suspended_on_a_live_threads_stack_is_still_found() {
    expect_suspended_in("live", "hold");
}

/// A coroutine's first function (started by `makecontext`) suspended in itself: its frame's
/// return slot holds glibc's `__start_context`, not the return address of a call, and the
/// frame is still recognised as one (the check that leaves out records of callers keeps it).
#[test]
fn a_coroutine_suspended_in_its_first_function_is_still_found() {
    expect_suspended_in("entry", "park");
}

/// Return addresses into a replaced function that the program keeps as data (an allocator
/// that records its callers, as haproxy's pools do in Debian's build): the function's frame
/// above such a word would hold its own return address, and holds a pattern that is no
/// address, so it is no suspended call and the apply goes through (before, it waited and
/// refused at the timeout).
#[test]
fn records_of_callers_kept_as_data_do_not_hold_the_apply() {
    let dir = work("records");
    let patch = unit_and_patch(&dir, "work", REC_WORK, REC_WORK_FIXED, &[]);
    std::fs::write(dir.join("main.c"), REC_MAIN).unwrap();
    gcc(&dir, &["-O2", "main.c", "orig/work.o", "-o", "prog"]);
    let t = Target::start(&mut Command::new(dir.join("prog")));
    t.wait_tick("v=11");
    apply(t.pid, &patch, &opts("records")).expect("apply");
    t.wait_tick("v=12");
    revert(t.pid, "records", TIMEOUT).expect("revert");
    t.wait_tick("v=11");
}

/// A thread on a stack the program supplied exited and was joined, and the program reused
/// the memory for a coroutine suspended inside hold(): the thread descriptor glibc left at its
/// top is on none of glibc's lists (the memory is the program's), so the stack is read.
#[test]
fn a_coroutine_on_the_supplied_stack_of_an_exited_thread_is_still_found() {
    expect_suspended_in("userstack", "hold");
}

/// A thread currently running on a coroutine's heap stack inside a replaced function (asleep
/// in a callee): its stack is found from its `rsp`, so the function is busy.
#[test]
fn a_thread_running_on_a_coroutine_stack_inside_the_function_is_busy() {
    let dir = work("coro-busy");
    let (prog, patch) = coroutine_fixture(&dir);
    let mut t = Target::start(Command::new(&prog).arg("busy"));
    t.expect("lingering");
    t.wait_tick("main=11 coro=101");
    let before = maps(t.pid);
    let o = ApplyOptions {
        timeout: Duration::from_millis(300),
        ..opts("coro")
    };
    match apply(t.pid, &patch, &o) {
        Err(e @ ApplyError::Busy { .. }) => {
            let ApplyError::Busy {
                ref function, tid, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(function, "linger", "{e}");
            assert_ne!(tid.0, t.pid.0, "the worker thread, not the main one: {e}");
        }
        other => panic!("expected linger to be busy, got {other:?}"),
    }
    t.assert_unchanged("main=11 coro=101");
    assert_eq!(before, maps(t.pid));
}

// ---- gone, traced, stopped, 32-bit ---------------------------------------------------------

#[test]
fn refuses_a_process_that_does_not_exist() {
    let dir = work("gone");
    let (_, patch) = refusals_fixture(&dir, &[]);
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = Pid(gone.id() as i32);
    gone.wait().unwrap();
    let msg = apply(pid, &patch, &opts("gone")).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!("Process {} does not exist; target untouched", pid.0)
    );
}

/// The target dies while apply waits for a busy function: apply ends with an error saying
/// so, it neither hangs nor panics.
#[test]
fn a_target_that_exits_during_apply_ends_the_apply() {
    let dir = work("exits");
    let (prog, patch) = coroutine_fixture(&dir);
    let mut t = Target::start(Command::new(&prog).arg("busy"));
    t.expect("lingering");
    let pid = t.pid;
    let o = ApplyOptions {
        timeout: Duration::from_secs(60),
        ..opts("exits")
    };
    let started = Instant::now();
    let applying = std::thread::spawn(move || apply(pid, &patch, &o));
    std::thread::sleep(Duration::from_millis(300));
    t.child.kill().unwrap();
    // The exit status may already have been collected by suture's tracer thread (it lives in
    // this process and waits for the traced target): then this wait finds no child (ECHILD).
    match t.child.wait() {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::ECHILD) => {}
        Err(e) => panic!("waiting for the killed target: {e}"),
    }
    let err = applying.join().unwrap().unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "apply kept waiting"
    );
    // Depending on where the kill lands, apply finds the process gone, exited, or dead but not
    // yet reaped (a zombie): each says the target died.
    let msg = err.to_string();
    assert!(
        msg.contains("does not exist") || msg.contains("exited") || msg.contains("is a zombie"),
        "{msg}"
    );
}

#[test]
fn refuses_a_process_under_a_debugger() {
    let dir = work("traced");
    let (prog, patch) = refusals_fixture(&dir, &[]);
    let mut t = Target::start(Command::new(&prog).arg("traced"));
    t.wait_tick("answer=1");
    let tracer = t.child.id();
    let before = maps(t.pid);
    let msg = apply(t.pid, &patch, &opts("traced"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "Process {} is already traced by process {tracer}; target untouched",
            t.pid.0
        )
    );
    t.assert_unchanged("answer=1");
    assert_eq!(before, maps(t.pid));
}

/// A target stopped by SIGSTOP is patched and stays stopped: nothing runs until SIGCONT,
/// then it runs the new code.
#[test]
fn a_stopped_target_is_patched_and_stays_stopped() {
    use nix::sys::signal::{kill, Signal};
    let dir = work("sigstop");
    let (prog, patch) = refusals_fixture(&dir, &[]);
    let mut t = Target::start(Command::new(&prog).arg("plain"));
    t.wait_tick("answer=1");
    let npid = nix::unistd::Pid::from_raw(t.pid.0);
    kill(npid, Signal::SIGSTOP).unwrap();
    let deadline = Instant::now() + WAIT;
    while !task_states(t.pid).iter().all(|&(_, s)| s == 'T') {
        assert!(Instant::now() < deadline, "SIGSTOP never took effect");
        std::thread::sleep(Duration::from_millis(5));
    }
    while t.lines.0.recv_timeout(Duration::from_millis(50)).is_ok() {}
    apply(t.pid, &patch, &opts("stopped")).expect("apply to a stopped process");
    // Still stopped, every thread, and silent.
    std::thread::sleep(Duration::from_millis(100));
    let states = task_states(t.pid);
    assert!(states.iter().all(|&(_, s)| s == 'T'), "{states:?}");
    if let Ok(l) = t.lines.0.recv_timeout(Duration::from_millis(100)) {
        panic!("the stopped target ran: {l}");
    }
    kill(npid, Signal::SIGCONT).unwrap();
    t.wait_tick("answer=2 sigs=0");
    revert(t.pid, "stopped", TIMEOUT).expect("revert");
    t.assert_unchanged("answer=1");
}

/// The main thread has exited (a zombie leader) while the other threads run on: the process
/// is alive and patchable; its files are read through a live thread's `/proc` directory.
#[test]
fn patches_a_process_whose_main_thread_exited() {
    let dir = work("leader-exits");
    let (prog, patch) = refusals_fixture(&dir, &[]);
    let t = Target::start(Command::new(&prog).arg("leader-exits"));
    t.wait_tick("answer=1");
    let deadline = Instant::now() + WAIT;
    while !task_states(t.pid).contains(&(Tid(t.pid.0), 'Z')) {
        assert!(Instant::now() < deadline, "the main thread never exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    apply(t.pid, &patch, &opts("leader")).expect("apply");
    t.wait_tick("answer=2 sigs=0");
    revert(t.pid, "leader", TIMEOUT).expect("revert");
    t.wait_tick("answer=1 sigs=0");
    assert!(status(t.pid)
        .unwrap()
        .iter()
        .all(|p| p.header.state == suture_process::header::State::Reverted));
}

#[test]
fn refuses_a_32_bit_process() {
    let dir = work("m32");
    // The patch is for the 64-bit build; the target is the same program built with -m32.
    let (_, patch) = refusals_fixture(&dir, &[]);
    std::fs::write(dir.join("answer32.c"), ANSWER).unwrap();
    gcc(
        &dir,
        &[
            "-m32",
            "-O2",
            "main.c",
            "answer32.c",
            "-lpthread",
            "-o",
            "prog32",
        ],
    );
    let mut t = Target::start(Command::new(dir.join("prog32")).arg("plain"));
    t.wait_tick("answer=1");
    let msg = apply(t.pid, &patch, &opts("m32")).unwrap_err().to_string();
    assert!(
        msg.contains("is not a 64-bit x86-64 program") && msg.contains("untouched"),
        "{msg}"
    );
    t.assert_unchanged("answer=1");
}

#[test]
fn refuses_a_zombie() {
    let dir = work("zombie");
    let (_, patch) = refusals_fixture(&dir, &[]);
    let mut child = Command::new("true").spawn().unwrap();
    let pid = Pid(child.id() as i32);
    let deadline = Instant::now() + WAIT;
    while !task_states(pid).iter().all(|&(_, s)| s == 'Z') {
        assert!(Instant::now() < deadline, "{pid} never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    let msg = apply(pid, &patch, &opts("zombie")).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!("Process {} is a zombie; target untouched", pid.0)
    );
    assert!(child.wait().unwrap().success());
}
