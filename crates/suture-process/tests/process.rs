//! The process layer against real processes: C targets from `tests/ptrace/` are compiled with
//! gcc into `CARGO_TARGET_TMPDIR` at test time, started, stopped, inspected, changed through
//! remote memory and remote system calls, and resumed; afterwards they must carry on as if
//! nothing happened (no stop, no trap, every signal delivered exactly once).
//!
//! Every child process sits in a guard that kills it on drop, so a failing test leaves nothing
//! running. There are no timing assertions; waits for output have a generous bound only so that
//! a broken build fails instead of hanging.

use nix::sys::signal::{kill, Signal};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use suture_process::error::Error;
use suture_process::ids::{Pid, RemoteAddr, Tid};
use suture_process::maps::{Maps, REL32_REACH};
use suture_process::remote::{Prot, SyscallSite};
use suture_process::stop::{StopKind, StoppedProcess, USER64_CS};
use suture_testkit::{Lines, WAIT};

/// How long a wait for the target may take before the test fails (the kit's bound).
const PATIENCE: Duration = WAIT;

// ---- building the C programs ---------------------------------------------------------------

struct Programs {
    target: PathBuf,
    helpers: PathBuf,
    dir: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ptrace");
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ptrace");
        let target = compile(&dir, &src.join("target.c"), "target", &["-pthread"]);
        let helpers = compile(&dir, &src.join("helpers.c"), "helpers", &[]);
        Programs {
            target,
            helpers,
            dir,
        }
    })
}

fn compile(dir: &Path, src: &Path, name: &str, flags: &[&str]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    // Several test processes (nextest) compile at once, and each may already run a target
    // built from this file: never replace a built program (a running target would then map a
    // deleted file). Name it by what it is built from, and publish it with a hard link, which
    // fails if another process published it first.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (std::fs::read(src).unwrap(), flags).hash(&mut h);
    let out = dir.join(format!("{name}-{:016x}", h.finish()));
    if out.exists() {
        return out;
    }
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-Wall", "-o"])
        .arg(&tmp)
        .arg(src)
        .args(flags)
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed on {}", src.display());
    match std::fs::hard_link(&tmp, &out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("publishing {}: {e}", out.display()),
    }
    let _ = std::fs::remove_file(&tmp);
    out
}

// ---- child processes -----------------------------------------------------------------------

/// A child process killed on drop, with its stdout lines arriving on a channel.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines,
    pid: Pid,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> std::io::Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let lines = Lines::of(child.stdout.take().unwrap());
        let pid = Pid(child.id() as i32);
        Ok(Proc {
            stdin: child.stdin.take(),
            child,
            lines,
            pid,
        })
    }

    /// The next line starting with `prefix` (earlier lines are skipped); returns the rest.
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.0.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(e) => panic!("process {} never printed {prefix:?}: {e}", self.pid),
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn wait_exit(&mut self) -> i32 {
        let status = self.child.wait().unwrap();
        status
            .code()
            .unwrap_or_else(|| panic!("{} died: {status:?}", self.pid))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `target` (see `tests/ptrace/target.c`).
struct Target {
    proc: Proc,
    rtsig: i32,
    magic: RemoteAddr,
    value_fn: RemoteAddr,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

impl Target {
    fn start(args: &[&str]) -> Target {
        let proc = Proc::spawn(Command::new(&programs().target).args(args)).unwrap();
        let pid: i32 = proc.expect("pid ").parse().unwrap();
        assert_eq!(pid, proc.pid.0);
        let rtsig = proc.expect("rtsig ").parse().unwrap();
        let magic = RemoteAddr(hex(&proc.expect("magic ")));
        let value_fn = RemoteAddr(hex(&proc.expect("value_fn ")));
        proc.expect("ready");
        Target {
            proc,
            rtsig,
            magic,
            value_fn,
        }
    }

    fn pid(&self) -> Pid {
        self.proc.pid
    }

    fn progress(&self) -> u64 {
        self.proc.expect("progress ").parse().unwrap()
    }

    /// Wait until the target reports progress beyond what it reported before: it runs.
    fn assert_runs(&self) {
        let before = self.progress();
        while self.progress() <= before {}
    }

    fn status(&mut self) -> BTreeMap<String, String> {
        self.proc.send("status");
        self.proc
            .expect("status ")
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn quit(mut self) -> i32 {
        self.proc.send("quit");
        self.proc.expect("bye");
        self.proc.wait_exit()
    }

    /// The checks every test makes after the last resume: running, never trapped, not stopped,
    /// exits normally.
    fn finish(mut self) {
        self.assert_runs();
        assert_not_stopped(self.pid());
        assert_eq!(self.status()["trap"], "0", "the target received a SIGTRAP");
        assert_eq!(self.quit(), 42);
    }
}

// ---- /proc helpers -------------------------------------------------------------------------

fn tasks(pid: Pid) -> BTreeSet<Tid> {
    std::fs::read_dir(format!("/proc/{}/task", pid.0))
        .unwrap()
        .map(|e| Tid(e.unwrap().file_name().to_str().unwrap().parse().unwrap()))
        .collect()
}

/// The state letter of each thread (`R`, `S`, `t`, ...).
fn task_states(pid: Pid) -> BTreeMap<Tid, char> {
    tasks(pid)
        .into_iter()
        .filter_map(|tid| {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/task/{}/stat", pid.0, tid.0)).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            Some((tid, after.chars().next()?))
        })
        .collect()
}

fn process_state(pid: Pid) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.0)).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .unwrap()
        .trim()
        .to_string()
}

fn assert_all_stopped(sp: &StoppedProcess) {
    let pid = sp.pid();
    let ours: BTreeSet<Tid> = sp.threads().iter().copied().collect();
    assert_eq!(ours, tasks(pid), "stopped threads vs /proc/{pid}/task");
    for (tid, state) in task_states(pid) {
        assert_eq!(state, 't', "thread {tid} of {pid} is not in a tracing stop");
    }
}

fn assert_not_stopped(pid: Pid) {
    let state = process_state(pid);
    assert!(!state.starts_with(['T', 't']), "process {pid} is {state}");
    for (tid, state) in task_states(pid) {
        assert!(
            !matches!(state, 'T' | 't'),
            "thread {tid} of {pid} is in state {state}"
        );
    }
}

fn executable_text(pid: Pid, maps: &Maps) -> RemoteAddr {
    let exe = std::fs::read_link(format!("/proc/{}/exe", pid.0)).unwrap();
    let text = maps
        .of_path(&exe)
        .find(|m| m.perms.exec)
        .unwrap_or_else(|| panic!("no text mapping of {}", exe.display()));
    text.start
}

// ---- stopping and resuming -----------------------------------------------------------------

#[test]
fn single_thread_read_write_memory_and_resume() {
    let mut t = Target::start(&["threads", "0"]);
    let pid = t.pid();
    t.assert_runs();
    let sp = StoppedProcess::stop(pid).unwrap();
    assert_eq!(sp.threads(), &[Tid(pid.0)]);
    assert_all_stopped(&sp);

    let regs = sp.regs(Tid(pid.0)).unwrap();
    assert_eq!(regs.cs, USER64_CS);
    let maps = Maps::read(pid).unwrap();
    let at = maps.find(RemoteAddr(regs.rip)).expect("rip is mapped");
    assert!(at.perms.exec, "rip {:#x} in {at:?}", regs.rip);

    // Data.
    let mem = sp.mem();
    assert_eq!(mem.read_u64(t.magic).unwrap(), 0x1122334455667788);
    mem.write(t.magic, &0x00c0_ffee_0000_0042u64.to_le_bytes())
        .unwrap();
    assert_eq!(mem.read_u64(t.magic).unwrap(), 0x00c0_ffee_0000_0042);

    // Read-only text: value_fn is `mov eax, 1; ret`; make it return 7.
    let text = maps.find(t.value_fn).unwrap();
    assert!(!text.perms.write && text.perms.exec, "{text:?}");
    let code = mem.read_vec(t.value_fn, 16).unwrap();
    let imm = code
        .windows(5)
        .position(|w| w == [0xb8, 1, 0, 0, 0])
        .expect("mov eax, 1 in value_fn");
    mem.write(t.value_fn.offset(imm as u64 + 1), &[7]).unwrap();
    assert_eq!(
        mem.read_vec(t.value_fn.offset(imm as u64), 5).unwrap(),
        [0xb8, 7, 0, 0, 0]
    );

    // A read running off the end of the address space names the first unreadable byte.
    let last_page = RemoteAddr(0x7fff_ffff_f000);
    if maps.find(last_page).is_none() {
        let err = mem.read_vec(last_page, 8).unwrap_err();
        assert!(
            matches!(err, Error::ReadMemory { failed_at, .. } if failed_at == last_page),
            "{err}"
        );
    }

    sp.resume().unwrap();
    let status = t.status();
    assert_eq!(status["magic"], "c0ffee00000042");
    assert_eq!(status["value"], "7");
    t.finish();
}

fn stop_all_threads(workers: usize, cycles: usize) {
    let n = workers.to_string();
    let t = Target::start(&["threads", &n]);
    let pid = t.pid();
    for _ in 0..cycles {
        t.assert_runs();
        let sp = StoppedProcess::stop(pid).unwrap();
        assert_eq!(sp.threads().len(), workers + 1);
        assert_all_stopped(&sp);
        let regs = sp.all_regs().unwrap();
        assert_eq!(regs.len(), workers + 1);
        for (tid, r) in &regs {
            assert_eq!(r.cs, USER64_CS, "thread {tid}");
        }
        for (tid, kind) in sp.stop_kinds().unwrap() {
            assert!(
                matches!(kind, StopKind::Interrupt | StopKind::Signal(_)),
                "thread {tid}: {kind:?}"
            );
        }
        sp.resume().unwrap();
        assert_not_stopped(pid);
    }
    t.finish();
}

#[test]
fn stops_all_of_8_threads() {
    stop_all_threads(8, 5);
}

#[test]
fn stops_all_of_64_threads() {
    stop_all_threads(64, 3);
}

#[test]
fn stops_a_target_that_keeps_creating_threads() {
    let t = Target::start(&["spawner"]);
    let pid = t.pid();
    let site = SyscallSite::find(pid).unwrap();
    let mut most = 0;
    for i in 0..20 {
        t.assert_runs();
        let mut sp = StoppedProcess::stop(pid).unwrap();
        assert_all_stopped(&sp);
        most = most.max(sp.threads().len());
        if i % 2 == 0 {
            let mut remote = sp.remote(&site).unwrap();
            let page = remote
                .mmap_anonymous(RemoteAddr(0), 4096, Prot::RW)
                .unwrap();
            remote.munmap(page, 4096).unwrap();
        }
        sp.resume().unwrap();
    }
    assert!(most > 2, "the spawner never had threads in flight ({most})");
    t.finish();
}

#[test]
fn dropping_or_panicking_resumes() {
    let t = Target::start(&["threads", "3"]);
    let pid = t.pid();
    {
        let sp = StoppedProcess::stop(pid).unwrap();
        assert_all_stopped(&sp);
    }
    t.assert_runs();
    assert_not_stopped(pid);
    let panicked = std::panic::catch_unwind(|| {
        let sp = StoppedProcess::stop(pid).unwrap();
        assert_all_stopped(&sp);
        panic!("on purpose");
    });
    assert!(panicked.is_err());
    t.finish();
}

#[test]
fn a_second_stop_of_the_same_process_is_refused() {
    let t = Target::start(&["threads", "1"]);
    let sp = StoppedProcess::stop(t.pid()).unwrap();
    let err = StoppedProcess::stop(t.pid()).unwrap_err();
    assert!(matches!(err, Error::AlreadyTraced { .. }), "{err}");
    sp.resume().unwrap();
    t.finish();
}

// ---- remote system calls ---------------------------------------------------------------------

#[test]
fn remote_mmap_near_the_executable() {
    let mut t = Target::start(&["threads", "4"]);
    let pid = t.pid();
    let site = SyscallSite::find(pid).unwrap();
    t.assert_runs();

    let mut sp = StoppedProcess::stop(pid).unwrap();
    let regs_before = sp.all_regs().unwrap();
    let maps = Maps::read(pid).unwrap();
    let text = executable_text(pid, &maps);
    let near = |a: RemoteAddr| a.0.abs_diff(text.0) + 4096 <= REL32_REACH;

    let data_at = maps.free_range_near(text, 4096, 4096).unwrap();
    let mut remote = sp.remote(&site).unwrap();
    let data = remote.mmap_anonymous_at(data_at, 4096, Prot::RW).unwrap();
    assert_eq!(data, data_at);
    // The same range again: the kernel says EEXIST, as a typed error.
    let err = remote
        .mmap_anonymous_at(data_at, 4096, Prot::RW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::RemoteSyscall {
                errno: nix::errno::Errno::EEXIST,
                ..
            }
        ),
        "{err}"
    );

    let maps = Maps::read(pid).unwrap();
    let code_at = maps.free_range_near(text, 4096, 4096).unwrap();
    let code = remote.mmap_anonymous_at(code_at, 4096, Prot::RW).unwrap();
    // mov eax, 123; ret
    sp.mem().write(code, &[0xb8, 123, 0, 0, 0, 0xc3]).unwrap();
    sp.mem().write(data, b"patch data").unwrap();
    assert_eq!(sp.mem().read_vec(data, 10).unwrap(), b"patch data");
    // Reading past the mapping names the first unmapped byte (free_range_near left a gap).
    let err = sp.mem().read_vec(data, 8192).unwrap_err();
    assert!(
        matches!(err, Error::ReadMemory { failed_at, .. } if failed_at == data.offset(4096)),
        "{err}"
    );

    let mut remote = sp.remote(&site).unwrap();
    remote.mprotect(code, 4096, Prot::RX).unwrap();
    let maps = Maps::read(pid).unwrap();
    let m = maps.find(data).expect("data page mapped");
    assert_eq!(
        (m.start, m.end, m.perms.to_string()),
        (data, data.offset(4096), "rw-p".into())
    );
    let m = maps.find(code).expect("code page mapped");
    assert_eq!(
        (m.start, m.end, m.perms.to_string()),
        (code, code.offset(4096), "r-xp".into())
    );
    assert!(
        near(data) && near(code),
        "text {text}, data {data}, code {code}"
    );

    remote.munmap(data, 4096).unwrap();
    assert!(Maps::read(pid).unwrap().find(data).is_none());

    // Every thread's registers are exactly as before.
    assert_eq!(sp.all_regs().unwrap(), regs_before);
    assert!(sp.held_signals().unwrap().is_empty());
    sp.resume().unwrap();

    // The new code runs in the target.
    t.proc.send(&format!("call {:x}", code.0));
    assert_eq!(t.proc.expect("called "), "123");

    let sp = StoppedProcess::stop(pid).unwrap();
    let mut sp = sp;
    sp.remote(&site).unwrap().munmap(code, 4096).unwrap();
    assert!(Maps::read(pid).unwrap().find(code).is_none());
    sp.resume().unwrap();
    t.finish();
}

#[test]
fn signals_sent_while_stopped_arrive_once() {
    // Without remote system calls: the signals wait in the kernel.
    let mut t = Target::start(&["threads", "2"]);
    let pid = t.pid();
    let sp = StoppedProcess::stop(pid).unwrap();
    kill(nix::unistd::Pid::from_raw(pid.0), Signal::SIGUSR1).unwrap();
    sp.resume().unwrap();
    t.assert_runs();
    let status = t.status();
    assert_eq!(
        (status["usr1"].as_str(), status["usr2"].as_str()),
        ("1", "0")
    );
    t.finish();
}

#[test]
fn signals_taken_during_remote_calls_are_handed_back_once() {
    let mut t = Target::start(&["threads", "2"]);
    let pid = t.pid();
    let site = SyscallSite::find(pid).unwrap();
    let mut sp = StoppedProcess::stop(pid).unwrap();
    let regs_before = sp.all_regs().unwrap();

    let npid = nix::unistd::Pid::from_raw(pid.0);
    kill(npid, Signal::SIGUSR1).unwrap();
    kill(npid, Signal::SIGUSR2).unwrap();
    let sender = Proc::spawn(Command::new(&programs().helpers).args([
        "sigqueue",
        &pid.0.to_string(),
        &t.rtsig.to_string(),
        "777",
    ]))
    .unwrap();
    sender.expect("sent");
    let sender_pid = sender.pid;

    // The borrowed thread dequeues all three before its system call can run.
    let mut remote = sp.remote(&site).unwrap();
    let borrowed = remote.tid();
    let page = remote
        .mmap_anonymous(RemoteAddr(0), 4096, Prot::RW)
        .unwrap();
    remote.munmap(page, 4096).unwrap();
    assert_eq!(
        sp.held_signals().unwrap(),
        vec![
            (borrowed, libc::SIGUSR1),
            (borrowed, libc::SIGUSR2),
            (borrowed, t.rtsig)
        ]
    );
    assert_eq!(sp.all_regs().unwrap(), regs_before);
    sp.resume().unwrap();

    t.assert_runs();
    let status = t.status();
    let got = |k: &str| status[k].clone();
    assert_eq!(
        [got("usr1"), got("usr2"), got("rt")],
        ["1", "1", "1"].map(String::from),
        "{status:?}"
    );
    // The real-time signal kept its siginfo: sigqueue's value, code and sender.
    assert_eq!(got("rtval"), "777");
    assert_eq!(got("rtcode"), libc::SI_QUEUE.to_string());
    assert_eq!(got("rtpid"), sender_pid.0.to_string());
    t.finish();
}

#[test]
fn no_signal_is_lost_or_duplicated_under_a_flood() {
    // A thread of the target queues real-time signals to its own process all the time, so they
    // arrive while suture attaches, while it single-steps and while it detaches.
    let mut t = Target::start(&["flood", "3"]);
    let pid = t.pid();
    let site = SyscallSite::find(pid).unwrap();
    let cycles = 30;
    let mut held = 0;
    for _ in 0..cycles {
        t.assert_runs();
        let mut sp = StoppedProcess::stop(pid).unwrap();
        assert_all_stopped(&sp);
        let before = sp.all_regs().unwrap();
        // One more, queued while the target is stopped: the borrowed thread takes it (unless it
        // is inside the handler, where the signal is blocked).
        let flood_sig = (t.rtsig + 1).to_string();
        let pid_arg = pid.0.to_string();
        let sender = Proc::spawn(
            Command::new(&programs().helpers).args(["sigqueue", &pid_arg, &flood_sig, "0"]),
        )
        .unwrap();
        sender.expect("sent");
        let mut remote = sp.remote(&site).unwrap();
        for _ in 0..3 {
            let page = remote
                .mmap_anonymous(RemoteAddr(0), 4096, Prot::RW)
                .unwrap();
            remote.munmap(page, 4096).unwrap();
        }
        assert_eq!(sp.all_regs().unwrap(), before);
        held += sp.held_signals().unwrap().len();
        sp.resume().unwrap();
    }
    assert!(held > 0, "no signal was ever held in {cycles} cycles");
    t.proc.send("quiet");
    let sent = t.proc.expect("quiet sent=").parse::<usize>().unwrap() + cycles;
    let deadline = Instant::now() + PATIENCE;
    loop {
        t.proc.send("flood");
        let line = t.proc.expect("flood ");
        let received: usize = line.rsplit('=').next().unwrap().parse().unwrap();
        assert!(
            received <= sent,
            "received {received} of {sent} signals sent"
        );
        if received == sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {received} of {sent} signals arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.finish();
}

#[test]
fn a_target_in_group_stop_stays_stopped() {
    let t = Target::start(&["threads", "2"]);
    let pid = t.pid();
    let site = SyscallSite::find(pid).unwrap();
    let npid = nix::unistd::Pid::from_raw(pid.0);
    kill(npid, Signal::SIGSTOP).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !task_states(pid).values().all(|&s| s == 'T') {
        assert!(Instant::now() < deadline, "SIGSTOP never took effect");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut sp = StoppedProcess::stop(pid).unwrap();
    assert_all_stopped(&sp);
    for (tid, kind) in sp.stop_kinds().unwrap() {
        assert_eq!(kind, StopKind::GroupStop(libc::SIGSTOP), "thread {tid}");
    }
    let mut remote = sp.remote(&site).unwrap();
    let page = remote
        .mmap_anonymous(RemoteAddr(0), 4096, Prot::RW)
        .unwrap();
    remote.munmap(page, 4096).unwrap();
    sp.resume().unwrap();
    // Still stopped by its SIGSTOP, as before suture came.
    let deadline = Instant::now() + PATIENCE;
    while !task_states(pid).values().all(|&s| s == 'T') {
        assert!(
            Instant::now() < deadline,
            "the group stop was lost: {:?}",
            task_states(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(npid, Signal::SIGCONT).unwrap();
    t.finish();
}

#[test]
fn a_process_whose_main_thread_exited_is_stopped_without_it() {
    let t = Target::start(&["orphan", "3"]);
    let pid = t.pid();
    let deadline = Instant::now() + PATIENCE;
    while !process_state(pid).starts_with('Z') {
        assert!(Instant::now() < deadline, "the main thread never exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    let site = SyscallSite::find(pid).unwrap();
    let mut sp = StoppedProcess::stop(pid).unwrap();
    let live: BTreeSet<Tid> = task_states(pid)
        .into_iter()
        .filter(|&(_, s)| s != 'Z')
        .map(|(tid, _)| tid)
        .collect();
    assert_eq!(sp.threads().iter().copied().collect::<BTreeSet<_>>(), live);
    assert!(!live.contains(&Tid(pid.0)));
    assert!(live.iter().all(|tid| task_states(pid)[tid] == 't'));
    let mut remote = sp.remote(&site).unwrap();
    let page = remote
        .mmap_anonymous(RemoteAddr(0), 4096, Prot::RW)
        .unwrap();
    remote.munmap(page, 4096).unwrap();
    sp.resume().unwrap();
    t.finish();
}

// ---- refusals ------------------------------------------------------------------------------

fn assert_untouched_message(err: &Error) {
    let msg = err.to_string();
    assert!(msg.starts_with(|c: char| c.is_uppercase()), "{msg}");
    assert!(msg.ends_with("target untouched"), "{msg}");
}

#[test]
fn refuses_a_process_that_does_not_exist() {
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let err = StoppedProcess::stop(Pid(pid_max)).unwrap_err();
    assert!(matches!(err, Error::NoSuchProcess { .. }), "{err}");
    assert_untouched_message(&err);

    // A pid that existed a moment ago.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = Pid(gone.id() as i32);
    gone.wait().unwrap();
    let err = StoppedProcess::stop(pid).unwrap_err();
    assert!(matches!(err, Error::NoSuchProcess { .. }), "{err}");
    assert!(SyscallSite::find(pid).is_err());
}

#[test]
fn refuses_a_process_traced_by_someone_else() {
    let t = Target::start(&["threads", "1"]);
    let pid = t.pid();
    let tracer =
        Proc::spawn(Command::new(&programs().helpers).args(["trace", &pid.0.to_string()])).unwrap();
    tracer.expect("traced");
    let err = StoppedProcess::stop(pid).unwrap_err();
    assert!(
        matches!(err, Error::AlreadyTraced { tracer: tp, .. } if tp == tracer.pid),
        "{err}"
    );
    assert_untouched_message(&err);
    drop(tracer); // killing the tracer detaches it
    t.finish();
}

#[test]
fn refuses_a_zombie() {
    let mut p = Proc::spawn(Command::new(&programs().target).arg("exit")).unwrap();
    let pid = p.pid;
    let deadline = Instant::now() + PATIENCE;
    while !process_state(pid).starts_with('Z') {
        assert!(Instant::now() < deadline, "{pid} never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = StoppedProcess::stop(pid).unwrap_err();
    assert!(matches!(err, Error::Zombie { .. }), "{err}");
    assert_untouched_message(&err);
    assert_eq!(p.wait_exit(), 3);
}

/// A minimal static i386 program: `for (;;) nanosleep(&(struct timespec){1, 0}, 0);`
fn elf32_sleeper() -> Vec<u8> {
    let base: u32 = 0x0804_8000;
    let code_off: u32 = 52 + 32;
    let ts = base + code_off + 16;
    let mut code = vec![0xb8, 162, 0, 0, 0]; // mov eax, SYS_nanosleep
    code.push(0xbb); // mov ebx, ts
    code.extend(ts.to_le_bytes());
    code.extend([0x31, 0xc9, 0xcd, 0x80, 0xeb, 0xf0]); // xor ecx, ecx; int 0x80; jmp start
    code.extend(1u32.to_le_bytes());
    code.extend(0u32.to_le_bytes());
    let size = code_off + code.len() as u32;
    let mut elf = Vec::new();
    elf.extend(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    for v in [2u16, 3] {
        elf.extend(v.to_le_bytes()); // e_type EXEC, e_machine 386
    }
    elf.extend(1u32.to_le_bytes()); // e_version
    elf.extend((base + code_off).to_le_bytes()); // e_entry
    elf.extend(52u32.to_le_bytes()); // e_phoff
    elf.extend(0u32.to_le_bytes()); // e_shoff
    elf.extend(0u32.to_le_bytes()); // e_flags
    for v in [52u16, 32, 1, 40, 0, 0] {
        elf.extend(v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    for v in [1u32, 0, base, base, size, size, 5, 0x1000] {
        elf.extend(v.to_le_bytes()); // PT_LOAD r-x
    }
    elf.extend(code);
    elf
}

#[test]
fn refuses_a_32_bit_process() {
    use std::os::unix::fs::PermissionsExt;
    let path = programs().dir.join(format!("elf32-{}", std::process::id()));
    std::fs::write(&path, elf32_sleeper()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = match Proc::spawn(&mut Command::new(&path)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipped: this kernel cannot run i386 programs ({e})");
            return;
        }
    };
    // Wait until the exec has happened (the exe link names our file).
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_link(format!("/proc/{}/exe", p.pid.0))
        .ok()
        .as_deref()
        != Some(&path)
    {
        assert!(Instant::now() < deadline, "the i386 program never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = StoppedProcess::stop(p.pid).unwrap_err();
    assert!(matches!(err, Error::Not64Bit { .. }), "{err}");
    assert_untouched_message(&err);
    assert!(!process_state(p.pid).starts_with(['T', 't', 'Z']));
    drop(p);
    let _ = std::fs::remove_file(&path);
}

// ---- the vDSO ------------------------------------------------------------------------------

/// Threads stopped inside the vDSO (`clock_gettime`, `gettimeofday`) unwind exactly through
/// the vDSO's own unwind rules, read from the target's memory: the function that called into
/// the vDSO is found as a busy frame with its return slot (exact, not the conservative scan's
/// guess), and a function that is not on the stack leaves the thread clear.
#[test]
fn threads_inside_the_vdso_unwind_exactly() {
    use suture_process::stack::{BusyRange, Finding, StackSnapshot};
    let exe = compile(
        &programs().dir,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ptrace/vdso.c"),
        "vdso",
        &["-pthread"],
    );
    let proc = Proc::spawn(&mut Command::new(&exe)).unwrap();
    proc.expect("ready");
    let pid = proc.pid;
    let maps = Maps::read(pid).unwrap();
    let vdso = maps.vdso().expect("the target maps a vDSO");
    let vdso = vdso.start.0..vdso.end.0;
    // Function ranges from the executable's symbols, at its load address.
    let bytes = std::fs::read(&exe).unwrap();
    let syms = suture_elf::ElfSymbols::parse("vdso", &bytes).unwrap();
    let first = maps
        .iter()
        .find(|m| m.path() == Some(exe.as_path()))
        .expect("the executable is mapped");
    let bias = syms.bias(first.start.0);
    let range = |name: &str| {
        let s = &syms.global(name).unwrap();
        assert!(s.size > 0, "{name} has a size");
        BusyRange {
            range: bias + s.value..bias + s.value + s.size,
            name: name.into(),
        }
    };
    let unwind = suture_process::apply::process_unwind_info(pid).unwrap();

    // Stop until each spinning thread has been caught inside the vDSO (it spends most of its
    // time there; a stop that finds it in its own loop is simply retried).
    let mut caught: BTreeMap<&str, (u64, u64, u64, StackSnapshot)> = BTreeMap::new();
    let deadline = Instant::now() + PATIENCE;
    while caught.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "threads never stopped inside the vDSO {vdso:x?}: caught {:?}",
            caught.keys()
        );
        let sp = StoppedProcess::stop(pid).unwrap();
        for (tid, r) in sp.all_regs().unwrap() {
            if !vdso.contains(&r.rip) {
                continue;
            }
            let which = if tid.0 == pid.0 {
                "spin_clock"
            } else {
                "spin_gtod"
            };
            let end = maps
                .find(RemoteAddr(r.rsp))
                .map_or(r.rsp + 4096, |m| m.end.0);
            let end = end.min(r.rsp + (256 << 10));
            let stack = StackSnapshot {
                base: r.rsp,
                bytes: sp
                    .mem()
                    .read_vec(RemoteAddr(r.rsp), (end - r.rsp) as usize)
                    .unwrap(),
            };
            caught.insert(which, (r.rip, r.rsp, r.rbp, stack));
        }
        sp.resume().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    for (which, (rip, rsp, rbp, stack)) in &caught {
        let frames = unwind.frames(*rip, *rsp, *rbp, stack);
        assert!(
            frames.is_some(),
            "{which}: the unwind from {rip:#x} in the vDSO is incomplete"
        );
        match unwind.check(*rip, *rsp, *rbp, stack, &[range(which)]) {
            Finding::Busy {
                name,
                depth,
                exact,
                ret_slot,
            } => {
                assert_eq!(&name, which);
                assert!(exact, "{which}: found by the scan, not by the unwind");
                assert!(depth >= 1, "{which} is below the vDSO frame: depth {depth}");
                assert!(ret_slot.is_some(), "{which}: no return slot");
            }
            Finding::Clear => panic!("{which} is on the stack below the vDSO"),
        }
        assert_eq!(
            unwind.check(*rip, *rsp, *rbp, stack, &[range("not_on_stack")]),
            Finding::Clear,
            "{which}"
        );
    }
}

/// A thread blocked in `recv` on a socket with a receive timeout sees no EINTR from suture's
/// stops: the kernel fails such a call with EINTR when the interrupt wakes it (it restarts only
/// calls without a timeout), and suture issues it again before resuming the thread.
#[test]
fn a_receive_with_a_timeout_is_not_broken_by_stops() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ptrace/timeo.c");
    let prog = compile(&programs().dir, &src, "timeo", &["-pthread"]);
    let mut p = Proc::spawn(&mut Command::new(prog)).unwrap();
    p.expect("ready");
    for round in 0..20 {
        let sp = StoppedProcess::stop(p.pid).unwrap();
        sp.resume().unwrap();
        if round % 5 == 4 {
            p.send("x");
            assert_eq!(p.expect(""), "got 1", "round {round}");
        }
    }
    p.send("x");
    assert_eq!(p.expect(""), "got 1");
}
