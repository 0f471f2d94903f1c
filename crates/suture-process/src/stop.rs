//! Stopping every thread of a process, and letting it go again exactly as it was.
//!
//! [`StoppedProcess::stop`] refuses targets it cannot handle before touching them (gone,
//! zombie, kernel thread, 32-bit, already traced, no permission), then attaches to every thread
//! with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, re-reading `/proc/PID/task` until a scan finds no
//! thread it has not stopped. `PTRACE_O_TRACECLONE` makes threads created meanwhile stop by
//! themselves.
//!
//! **Signals.** A thread that was about to handle a signal when it stopped (a
//! signal-delivery-stop instead of the interrupt) keeps that signal *held*; so does a thread
//! that dequeues one while suture single-steps it for a remote system call. At resume the first
//! held signal of a thread is handed back through `PTRACE_DETACH` with its original siginfo,
//! further ones are queued again for the same thread. Signals sent to a fully stopped process
//! simply stay pending in the kernel and arrive after resume. So the target loses no signal and
//! gets no extra one; the traps of suture's own single steps are discarded.
//!
//! **The tracer thread.** ptrace binds a tracee to the *thread* that attached. All ptrace work
//! of a [`StoppedProcess`] therefore runs on a thread of its own, which keeps the handle `Send`
//! and gives a last line of defence: when that thread ends, the kernel detaches whatever it
//! still traces, including threads that never reached their stop (a thread in uninterruptible
//! sleep past the stop timeout) and would otherwise stop later with nobody to resume them.

use crate::error::{Error, Result, TargetState};
use crate::ids::{Pid, Tid};
use crate::mem::ProcessMemory;
use crate::sys::{self, WaitStatus};
use nix::errno::Errno;
use nix::sys::ptrace;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The general-purpose registers of a thread (`struct user_regs_struct`).
pub type Registers = libc::user_regs_struct;

/// The `cs` selector of 64-bit user code on x86-64 Linux.
pub const USER64_CS: u64 = 0x33;

pub(crate) const PTRACE_EVENT_STOP: i32 = 128;

/// How a stopped thread is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// Stopped by suture's interrupt (or the first stop of a thread created while attaching).
    Interrupt,
    /// The process is in a group stop (`SIGSTOP`, `SIGTSTP`, ...); it stays stopped after resume.
    GroupStop(i32),
    /// A signal-delivery-stop for this signal (the signal itself is held, or it was the trap
    /// of suture's own single step).
    Signal(i32),
    /// Stopped at this `PTRACE_EVENT_*` inside a system call (`clone`): registers may be read
    /// but not changed.
    Event(i32),
}

/// Knobs of [`StoppedProcess::stop_with`].
#[derive(Clone, Debug)]
pub struct StopOptions {
    /// How long all threads together may take to reach their stops.
    pub stop_timeout: Duration,
    /// How many scans of `/proc/PID/task` may still find new threads.
    pub max_rounds: usize,
    /// Wait for another process's stop (of this suture) to end first ([`TURN_WAIT`]). Off
    /// for a stop that releases threads parked at return stubs: they wait for it.
    pub wait_turn: bool,
}

impl Default for StopOptions {
    fn default() -> Self {
        StopOptions {
            stop_timeout: Duration::from_secs(10),
            max_rounds: 100,
            wait_turn: true,
        }
    }
}

/// The seccomp mode of a process (`Seccomp:` in `/proc/PID/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    Disabled,
    Strict,
    Filter,
}

/// A signal suture took out of a thread's way and must hand back.
#[derive(Clone, Copy)]
pub(crate) struct HeldSignal {
    pub(crate) signo: i32,
    pub(crate) info: libc::siginfo_t,
}

pub(crate) struct Thread {
    pub(crate) stop: StopKind,
    pub(crate) held: Vec<HeldSignal>,
    /// Registers before the caller's first `set_regs`, restored at resume.
    pub(crate) saved_regs: Option<Registers>,
    /// Stopped inside a system call (`orig_rax` not -1): a thread blocked in one (a sleep, a
    /// read) observes a stop only if its wait ends meanwhile, so it is resumed after the
    /// threads that were running code.
    in_syscall: bool,
}

impl Thread {
    fn new(stop: StopKind) -> Thread {
        Thread {
            stop,
            held: Vec::new(),
            saved_regs: None,
            in_syscall: false,
        }
    }
}

/// Processes this process currently holds stopped: a second `stop` of one of them would
/// mistake the first one's tracees for its own.
static HELD: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Signalled when a process leaves [`HELD`].
static RELEASED: Condvar = Condvar::new();

/// How long a stop waits for another process's stop (of this suture) to end. Operations on
/// several processes run side by side ([`crate::targets`]), but their stops take turns: two
/// stops at once would share the processors and lengthen both targets' stop windows. A stop
/// lasts milliseconds (a suspended-frame scan of a large heap without soft-dirty tracking can
/// take longer: then stops may overlap after this bound); the bound also keeps a caller that
/// holds one process stopped while it stops another from waiting for itself. A stop that
/// releases threads parked at return stubs does not wait ([`StoppedProcess::stop_parked`]).
const TURN_WAIT: Duration = Duration::from_secs(2);

fn npid(tid: Tid) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(tid.0)
}

/// The state of the tracer thread: every ptrace call happens here.
pub(crate) struct Tracer {
    pub(crate) pid: Pid,
    pub(crate) threads: BTreeMap<Tid, Thread>,
    released: bool,
    /// Every thread's registers as read when the stop was complete: valid until the first
    /// change of any thread's registers (every resumption of a thread follows one).
    stop_regs: std::cell::RefCell<Option<BTreeMap<Tid, Registers>>>,
    /// The target's memory, for writes made while every thread is stopped
    /// ([`crate::remote`]'s direct commit).
    pub(crate) mem: ProcessMemory,
}

type Job = Box<dyn FnOnce(&mut Tracer) + Send>;

/// A process all of whose threads are stopped under ptrace.
///
/// Resume it with [`resume`](StoppedProcess::resume); dropping it resumes it too. Either way,
/// registers changed through it are restored and held signals handed back first.
pub struct StoppedProcess {
    pid: Pid,
    turn_waited: Duration,
    tids: Vec<Tid>,
    mem: ProcessMemory,
    seccomp: SeccompMode,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StoppedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoppedProcess")
            .field("pid", &self.pid)
            .field("threads", &self.tids.len())
            .finish()
    }
}

impl StoppedProcess {
    /// Stop every thread of `pid` with default options.
    pub fn stop(pid: Pid) -> Result<StoppedProcess> {
        StoppedProcess::stop_with(pid, &StopOptions::default())
    }

    /// [`StoppedProcess::stop`], but when threads of `pid` are `parked` at return stubs (they
    /// wait for this stop), without waiting for another process's turn.
    pub fn stop_parked(pid: Pid, parked: bool) -> Result<StoppedProcess> {
        let opts = StopOptions {
            wait_turn: !parked,
            ..StopOptions::default()
        };
        StoppedProcess::stop_with(pid, &opts)
    }

    /// How long this stop waited for another process's stop to end before it began.
    pub fn turn_waited(&self) -> Duration {
        self.turn_waited
    }

    /// Stop every thread of `pid`.
    pub fn stop_with(pid: Pid, opts: &StopOptions) -> Result<StoppedProcess> {
        let info = precheck(pid)?;
        let mem = ProcessMemory::open(pid)?;
        let queued = Instant::now();
        {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = Instant::now() + TURN_WAIT;
            while opts.wait_turn && !held.is_empty() && !held.contains(&pid.0) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                held = RELEASED
                    .wait_timeout(held, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if !held.insert(pid.0) {
                return Err(Error::AlreadyTraced {
                    pid,
                    tracer: Pid(std::process::id() as i32),
                });
            }
        }
        let turn_waited = queued.elapsed();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Vec<Tid>>>(1);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let opts = opts.clone();
        let tracer_mem = match mem.try_clone() {
            Ok(m) => m,
            Err(e) => {
                unhold(pid);
                return Err(e);
            }
        };
        let spawned = std::thread::Builder::new()
            .name(format!("suture-tracer-{}", pid.0))
            .spawn(move || tracer_main(pid, tracer_mem, opts, ready_tx, jobs_rx));
        let thread = match spawned {
            Ok(t) => t,
            Err(source) => {
                unhold(pid);
                return Err(Error::Proc {
                    path: PathBuf::from("(tracer thread)"),
                    source,
                    state: TargetState::Untouched,
                });
            }
        };
        match receive(&ready_rx).ok_or(()) {
            Ok(Ok(tids)) => Ok(StoppedProcess {
                pid,
                turn_waited,
                tids,
                mem,
                seccomp: info.seccomp,
                jobs: Some(jobs_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                unhold(pid);
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                unhold(pid);
                Err(Error::Detach {
                    pid,
                    detail: "the tracer thread panicked while attaching (the kernel detached it)"
                        .into(),
                })
            }
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The stopped threads, in tid order (thread-group leader first when it is alive).
    pub fn threads(&self) -> &[Tid] {
        &self.tids
    }

    /// The memory of the stopped process.
    pub fn mem(&self) -> &ProcessMemory {
        &self.mem
    }

    /// The process's seccomp mode, as read before attaching.
    pub fn seccomp(&self) -> SeccompMode {
        self.seccomp
    }

    /// How each thread is stopped.
    pub fn stop_kinds(&self) -> Result<Vec<(Tid, StopKind)>> {
        self.call(|t| t.threads.iter().map(|(&tid, th)| (tid, th.stop)).collect())
    }

    /// The signals held for re-injection at resume, per thread, in arrival order.
    pub fn held_signals(&self) -> Result<Vec<(Tid, i32)>> {
        self.call(|t| {
            t.threads
                .iter()
                .flat_map(|(&tid, th)| th.held.iter().map(move |h| (tid, h.signo)))
                .collect()
        })
    }

    /// The registers of one thread.
    pub fn regs(&self, tid: Tid) -> Result<Registers> {
        self.call(move |t| t.getregs(tid))?
    }

    /// The registers of every thread, in one round trip to the tracer thread (as read when
    /// the stop completed, unless registers were changed since).
    pub fn all_regs(&self) -> Result<Vec<(Tid, Registers)>> {
        self.call(|t| {
            if let Some(cached) = t.stop_regs.borrow().as_ref() {
                if cached.len() == t.threads.len()
                    && t.threads.keys().all(|tid| cached.contains_key(tid))
                {
                    return Ok(cached.iter().map(|(&tid, &r)| (tid, r)).collect());
                }
            }
            let tids: Vec<Tid> = t.threads.keys().copied().collect();
            tids.into_iter()
                .map(|tid| Ok((tid, t.getregs(tid)?)))
                .collect::<Result<Vec<_>>>()
        })?
    }

    /// Set the registers of one thread. The thread's registers from before the first change are
    /// restored at resume unless [`keep_regs`](StoppedProcess::keep_regs) is called.
    pub fn set_regs(&mut self, tid: Tid, regs: Registers) -> Result<()> {
        self.call(move |t| t.setregs_tracked(tid, regs))?
    }

    /// Make the current registers of `tid` the ones it resumes with.
    pub fn keep_regs(&mut self, tid: Tid) -> Result<()> {
        self.call(move |t| match t.threads.get_mut(&tid) {
            Some(th) => {
                th.saved_regs = None;
                Ok(())
            }
            None => Err(Error::UnknownThread { pid: t.pid, tid }),
        })?
    }

    /// Restore changed registers, hand back held signals and detach from every thread.
    pub fn resume(mut self) -> Result<()> {
        self.finish()
    }

    /// Run `f` on the tracer thread.
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tracer) -> R + Send + 'static,
    ) -> Result<R> {
        self.call_with(f, true)
    }

    /// [`call`](StoppedProcess::call); `poll`: poll for the answer before blocking (only
    /// while the target is stopped: a thread polling while the target runs yields its
    /// processor to the target's threads, which may keep it until the next scheduler tick).
    fn call_with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tracer) -> R + Send + 'static,
        poll: bool,
    ) -> Result<R> {
        let lost = || Error::Detach {
            pid: self.pid,
            detail: "the tracer thread is gone (the kernel detached the target)".into(),
        };
        let jobs = self.jobs.as_ref().ok_or_else(lost)?;
        let (tx, rx) = mpsc::sync_channel(1);
        jobs.send(Box::new(move |t: &mut Tracer| {
            let _ = tx.send(f(t));
        }))
        .map_err(|_| lost())?;
        if poll {
            receive(&rx).ok_or_else(lost)
        } else {
            rx.recv().map_err(|_| lost())
        }
    }

    fn finish(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Resuming lets the target run while this thread waits: block rather than poll.
        let result = self.call_with(|t| t.release(), false);
        self.jobs = None; // ends the tracer thread's loop
        let joined = thread.join();
        unhold(self.pid);
        match (result, joined) {
            (Ok(r), Ok(())) => r,
            (Err(e), _) => Err(e),
            (Ok(_), Err(_)) => Err(Error::Detach {
                pid: self.pid,
                detail: "the tracer thread panicked while detaching".into(),
            }),
        }
    }
}

impl Drop for StoppedProcess {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(pid = self.pid.0, error = %e, "resuming on drop failed");
        }
    }
}

/// How long a thread waiting for the other side of a [`StoppedProcess`] keeps polling
/// (yielding its processor) before it blocks.
const HANDOFF_SPIN: Duration = Duration::from_micros(300);

/// The next message, `None` once the sender is gone. The caller and the tracer thread hand
/// work back and forth several times while the target is stopped; blocking at once would put
/// a wake-up of the other thread (tens of microseconds in a virtual machine) in the stop each
/// time, so each side polls for a short while first.
fn receive<T>(rx: &mpsc::Receiver<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if started.elapsed() < HANDOFF_SPIN => {
                std::thread::yield_now()
            }
            Err(mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

fn unhold(pid: Pid) {
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid.0);
    RELEASED.notify_all();
}

fn tracer_main(
    pid: Pid,
    mem: ProcessMemory,
    opts: StopOptions,
    ready: mpsc::SyncSender<Result<Vec<Tid>>>,
    jobs: mpsc::Receiver<Job>,
) {
    let span = tracing::debug_span!("tracer", pid = pid.0);
    let _enter = span.enter();
    let mut tracer = Tracer {
        pid,
        threads: BTreeMap::new(),
        released: false,
        stop_regs: std::cell::RefCell::new(None),
        mem,
    };
    let started = Instant::now();
    match tracer.attach_all(&opts).and_then(|()| tracer.check_64bit()) {
        Ok(()) => {
            tracing::debug!(
                threads = tracer.threads.len(),
                micros = started.elapsed().as_micros() as u64,
                "all threads stopped"
            );
            let tids = tracer.threads.keys().copied().collect();
            if ready.send(Ok(tids)).is_err() {
                return; // the caller is gone: dropping the tracer resumes the target
            }
        }
        Err(e) => {
            if let Err(d) = tracer.release() {
                tracing::warn!(error = %d, "detaching after a failed attach");
            }
            let _ = ready.send(Err(e));
            // Returning ends this thread: the kernel detaches any thread that never stopped.
            return;
        }
    }
    while let Some(job) = receive(&jobs) {
        job(&mut tracer);
        if tracer.released {
            // Resumed: end at once (the caller waits for this thread).
            break;
        }
    }
    // `tracer` drops here and releases the target if no job did.
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(pid = self.pid.0, error = %e, "detaching on drop");
        }
    }
}

impl Tracer {
    fn ptrace_err(&self, tid: Tid, op: &'static str, errno: Errno) -> Error {
        // ESRCH on a thread suture holds stopped means it was killed: say so when the whole
        // process is gone or dying, rather than "still stopped".
        let state = if errno == Errno::ESRCH && process_gone(self.pid) {
            TargetState::Exited
        } else {
            TargetState::Stopped
        };
        Error::Ptrace {
            pid: self.pid,
            tid,
            op,
            errno,
            state,
        }
    }

    pub(crate) fn getregs(&self, tid: Tid) -> Result<Registers> {
        if !self.threads.contains_key(&tid) {
            return Err(Error::UnknownThread { pid: self.pid, tid });
        }
        ptrace::getregs(npid(tid)).map_err(|e| self.ptrace_err(tid, "GETREGS", e))
    }

    /// `PTRACE_SETREGS` without bookkeeping (the caller restores).
    pub(crate) fn setregs_raw(&self, tid: Tid, regs: Registers) -> Result<()> {
        self.stop_regs.borrow_mut().take();
        ptrace::setregs(npid(tid), regs).map_err(|e| self.ptrace_err(tid, "SETREGS", e))
    }

    fn setregs_tracked(&mut self, tid: Tid, regs: Registers) -> Result<()> {
        let stop = match self.threads.get(&tid) {
            Some(th) => th.stop,
            None => return Err(Error::UnknownThread { pid: self.pid, tid }),
        };
        if let StopKind::Event(_) = stop {
            return Err(Error::ThreadInSyscall { pid: self.pid, tid });
        }
        let current = self.getregs(tid)?;
        if let Some(th) = self.threads.get_mut(&tid) {
            th.saved_regs.get_or_insert(current);
        }
        self.setregs_raw(tid, regs)
    }

    /// Attach to and stop every thread.
    fn attach_all(&mut self, opts: &StopOptions) -> Result<()> {
        let pid = self.pid;
        let our_tgid = std::process::id() as i32;
        let options = ptrace::Options::PTRACE_O_TRACECLONE | ptrace::Options::PTRACE_O_TRACEEXEC;
        let deadline = Instant::now() + opts.stop_timeout;
        let mut pending: BTreeSet<Tid> = BTreeSet::new();
        let mut rounds = 0;
        loop {
            let tids = list_tasks(pid).map_err(|e| self.gone_or(e))?;
            // Seize every thread first, then interrupt them: seizing stops nothing, so the
            // target's stop begins at the first interrupt.
            let mut seized = Vec::new();
            for tid in tids {
                if self.threads.contains_key(&tid) || pending.contains(&tid) {
                    continue;
                }
                match ptrace::seize(npid(tid), options) {
                    Ok(()) => {
                        tracing::trace!(tid = tid.0, "seized");
                        seized.push(tid);
                    }
                    Err(Errno::ESRCH) => {} // exited since the scan
                    Err(Errno::EPERM) => {
                        let Ok(st) = read_status(&task_path(pid, tid, "status")) else {
                            continue; // gone
                        };
                        if st.tracer == our_tgid || matches!(st.state, 'Z' | 'X') {
                            // Ours already (created by a seized thread; its clone event adds
                            // it), or dead.
                            continue;
                        }
                        let state = self.attach_state();
                        if st.tracer != 0 {
                            return Err(if state == TargetState::Untouched {
                                Error::AlreadyTraced {
                                    pid,
                                    tracer: Pid(st.tracer),
                                }
                            } else {
                                Error::PermissionDenied {
                                    pid,
                                    reason: format!(
                                        "thread {tid} is traced by process {}",
                                        st.tracer
                                    ),
                                    state: TargetState::Resumed,
                                }
                            });
                        }
                        return Err(Error::PermissionDenied {
                            pid,
                            reason: diagnose_eperm(&st),
                            state,
                        });
                    }
                    Err(e) => return Err(self.attach_err(tid, "SEIZE", e)),
                }
            }
            let new = seized.len();
            // Threads that are running code observe the stop; a thread blocked in the kernel
            // (sleeping, waiting for input) does not unless its wait ends meanwhile. So the
            // blocked ones are stopped first and the running ones last, once the others have
            // reached their stops: the running threads' stop then begins when everything else
            // is ready (they are also resumed first).
            let running: BTreeSet<Tid> = if seized.len() > 1 {
                seized
                    .iter()
                    .copied()
                    .filter(|&tid| task_running(pid, tid))
                    .collect()
            } else {
                BTreeSet::new()
            };
            if !running.is_empty() && running.len() < seized.len() {
                for &tid in seized.iter().filter(|t| !running.contains(t)) {
                    self.interrupt(tid, &mut pending)?;
                }
                self.wait_for_stops(&mut pending, deadline, opts)?;
                seized.retain(|t| running.contains(t));
            }
            for tid in seized {
                // A running thread may have stopped by itself meanwhile (at a `clone` event).
                if !self.threads.contains_key(&tid) {
                    self.interrupt(tid, &mut pending)?;
                }
            }
            if new == 0 && pending.is_empty() {
                break;
            }
            self.wait_for_stops(&mut pending, deadline, opts)?;
            rounds += 1;
            if rounds > opts.max_rounds {
                return Err(Error::ThreadsKeepAppearing { pid, rounds });
            }
        }
        if self.threads.is_empty() {
            return Err(Error::ExitedWhileAttaching { pid });
        }
        tracing::debug!(rounds, "no new threads");
        Ok(())
    }

    /// `PTRACE_INTERRUPT` of a seized thread, which is then awaited.
    fn interrupt(&self, tid: Tid, pending: &mut BTreeSet<Tid>) -> Result<()> {
        match ptrace::interrupt(npid(tid)) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return Err(self.attach_err(tid, "INTERRUPT", e)),
        }
        pending.insert(tid);
        Ok(())
    }

    /// What becomes of the target if attaching fails now.
    fn attach_state(&self) -> TargetState {
        if self.threads.is_empty() {
            TargetState::Untouched
        } else {
            TargetState::Resumed
        }
    }

    fn attach_err(&self, tid: Tid, op: &'static str, errno: Errno) -> Error {
        Error::Ptrace {
            pid: self.pid,
            tid,
            op,
            errno,
            state: TargetState::Resumed,
        }
    }

    fn gone_or(&self, source: std::io::Error) -> Error {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::ExitedWhileAttaching { pid: self.pid }
        } else {
            Error::Proc {
                path: PathBuf::from(format!("/proc/{}/task", self.pid.0)),
                source,
                state: TargetState::Resumed,
            }
        }
    }

    fn wait_for_stops(
        &mut self,
        pending: &mut BTreeSet<Tid>,
        deadline: Instant,
        opts: &StopOptions,
    ) -> Result<()> {
        // Stops usually arrive within microseconds: yield to the target for a while before
        // sleeping (a sleep costs at least the timer slack, ~50 us).
        let mut idle = 0u32;
        let mut backoff = Duration::from_micros(50);
        while !pending.is_empty() {
            let mut progressed = false;
            for tid in pending.clone() {
                match sys::wait_thread(tid.0, true) {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        progressed = true;
                        self.on_attach_status(tid, status, pending, deadline)?;
                    }
                    Err(Errno::ECHILD) => {
                        progressed = true;
                        pending.remove(&tid);
                    }
                    Err(e) => return Err(self.attach_err(tid, "waitpid", e)),
                }
            }
            if progressed {
                idle = 0;
                backoff = Duration::from_micros(50);
                continue;
            }
            if idle >= 200 && self.reap_dead_threads() {
                // A killed process: its already-stopped threads died, and the leader's exit
                // is reported only once the tracer has collected them (the kernel delays a
                // group leader's death until its other threads are reaped), so without this
                // the wait would run into the stop timeout on every attempt.
                idle = 0;
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                let tid = *pending.first().unwrap_or(&Tid(self.pid.0));
                return Err(Error::StopTimeout {
                    pid: self.pid,
                    tid,
                    waited_ms: opts.stop_timeout.as_millis() as u64,
                });
            }
            idle += 1;
            if idle < 200 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(backoff.min(deadline - now));
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Collects the exit of every already-stopped thread that has died since it stopped (a
    /// stopped traced thread reports nothing else, so a status here is always its death).
    /// True if any had.
    fn reap_dead_threads(&mut self) -> bool {
        let dead: Vec<Tid> = self
            .threads
            .keys()
            .copied()
            .filter(|&tid| match sys::wait_thread(tid.0, true) {
                Ok(Some(WaitStatus::Exited(..) | WaitStatus::Killed(..))) | Err(Errno::ECHILD) => {
                    true
                }
                Ok(Some(other)) => {
                    tracing::warn!(tid = tid.0, ?other, "unexpected status of a stopped thread");
                    false
                }
                _ => false,
            })
            .collect();
        for tid in &dead {
            tracing::trace!(tid = tid.0, "stopped thread died while attaching");
            self.threads.remove(tid);
        }
        !dead.is_empty()
    }

    fn on_attach_status(
        &mut self,
        tid: Tid,
        status: WaitStatus,
        pending: &mut BTreeSet<Tid>,
        deadline: Instant,
    ) -> Result<()> {
        match status {
            WaitStatus::Exited(_) | WaitStatus::Killed(_) => {
                tracing::trace!(tid = tid.0, ?status, "thread ended while attaching");
                pending.remove(&tid);
                self.threads.remove(&tid);
            }
            WaitStatus::SignalStop(sig) => {
                pending.remove(&tid);
                let mut th = Thread::new(StopKind::Signal(sig));
                match ptrace::getsiginfo(npid(tid)) {
                    Ok(info) => th.held.push(HeldSignal { signo: sig, info }),
                    Err(Errno::ESRCH) => return Ok(()), // killed meanwhile
                    Err(e) => return Err(self.attach_err(tid, "GETSIGINFO", e)),
                }
                tracing::debug!(tid = tid.0, sig, "signal arrived while stopping; held");
                self.threads.insert(tid, th);
            }
            WaitStatus::EventStop { sig, event } if event == PTRACE_EVENT_STOP => {
                pending.remove(&tid);
                let stop = if sig == libc::SIGTRAP {
                    StopKind::Interrupt
                } else {
                    StopKind::GroupStop(sig)
                };
                self.threads.insert(tid, Thread::new(stop));
            }
            WaitStatus::EventStop { event, .. } if event == libc::PTRACE_EVENT_EXEC => {
                return Err(Error::ExecedWhileAttaching { pid: self.pid });
            }
            WaitStatus::EventStop { event, .. } => {
                pending.remove(&tid);
                self.threads
                    .insert(tid, Thread::new(StopKind::Event(event)));
                if matches!(
                    event,
                    libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK
                ) {
                    let child = ptrace::getevent(npid(tid))
                        .map_err(|e| self.attach_err(tid, "GETEVENTMSG", e))?;
                    let child = Tid(child as i32);
                    if task_path(self.pid, child, "").exists() {
                        tracing::trace!(tid = tid.0, child = child.0, "new thread while attaching");
                        pending.insert(child);
                    } else {
                        self.let_go_of_foreign(child, deadline);
                    }
                }
            }
        }
        Ok(())
    }

    /// A `clone` without `CLONE_THREAD` made an automatically traced *process*: let it go.
    fn let_go_of_foreign(&self, child: Tid, deadline: Instant) {
        loop {
            match sys::wait_thread(child.0, true) {
                Ok(Some(WaitStatus::EventStop { .. })) | Ok(Some(WaitStatus::SignalStop(_))) => {
                    let _ = sys::detach(child.0, 0);
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(50))
                }
                // Gone, or never stopped in time: the end of the tracer thread detaches it.
                _ => return,
            }
        }
    }

    /// Refuses 32-bit threads; keeps every thread's registers for [`StoppedProcess::all_regs`].
    fn check_64bit(&mut self) -> Result<()> {
        let mut all = BTreeMap::new();
        for (&tid, th) in self.threads.iter_mut() {
            let regs = ptrace::getregs(npid(tid)).map_err(|e| Error::Ptrace {
                pid: self.pid,
                tid,
                op: "GETREGS",
                errno: e,
                state: TargetState::Resumed,
            })?;
            if regs.cs != USER64_CS {
                return Err(Error::Thread32Bit {
                    pid: self.pid,
                    tid,
                    cs: regs.cs,
                });
            }
            th.in_syscall = regs.orig_rax != u64::MAX;
            all.insert(tid, regs);
        }
        *self.stop_regs.borrow_mut() = Some(all);
        Ok(())
    }

    /// The registers that issue again a system call that returned EINTR because suture's
    /// interrupt woke it, when the call is one that has no effect when it fails with EINTR and
    /// whose repetition is what the kernel does itself when no timeout is set: reads, writes,
    /// sends, receives and accepts on sockets with `SO_RCVTIMEO`/`SO_SNDTIMEO` (whose timeout
    /// then starts again). `None` for anything else (`connect` goes on in the background and
    /// may not be issued again).
    fn restart_interrupted(&self, r: Registers) -> Option<Registers> {
        const EINTR: u64 = (-4i64) as u64;
        // read write pread64 pwrite64 readv writev accept sendto recvfrom sendmsg recvmsg
        // accept4 preadv pwritev preadv2 pwritev2
        const SAFE: [u64; 16] = [
            0, 1, 17, 18, 19, 20, 43, 44, 45, 46, 47, 288, 295, 296, 327, 328,
        ];
        if r.rax != EINTR || !SAFE.contains(&r.orig_rax) {
            return None;
        }
        // The instruction before the stop must be the `syscall` that is issued again.
        let mut insn = [0u8; 2];
        self.mem
            .read(crate::ids::RemoteAddr(r.rip.checked_sub(2)?), &mut insn)
            .ok()?;
        (insn == [0x0f, 0x05]).then(|| Registers {
            rax: r.orig_rax,
            rip: r.rip - 2,
            ..r
        })
    }

    /// Restore registers, hand back held signals, detach every thread.
    pub(crate) fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let pid = self.pid;
        let mut problems = Vec::new();
        // Threads that were running code first: they are the ones that observe the stop.
        let mut order: Vec<(Tid, Thread)> = std::mem::take(&mut self.threads).into_iter().collect();
        order.sort_by_key(|(tid, th)| (th.in_syscall, *tid));
        for (tid, th) in order {
            if let Some(regs) = th.saved_regs {
                if let Err(e) = ptrace::setregs(npid(tid), regs) {
                    problems.push(format!("restoring registers of thread {tid}: {e}"));
                }
            }
            // A system call our interrupt broke with EINTR (one with a timeout, which the
            // kernel does not restart by itself) is issued again, as without the stop.
            if th.stop == StopKind::Interrupt && th.held.is_empty() {
                let regs = th
                    .saved_regs
                    .map_or_else(|| ptrace::getregs(npid(tid)).ok(), Some);
                if let Some(again) = regs.and_then(|r| self.restart_interrupted(r)) {
                    match ptrace::setregs(npid(tid), again) {
                        Ok(()) => tracing::debug!(
                            tid = tid.0,
                            nr = again.orig_rax,
                            "system call interrupted by the stop issued again"
                        ),
                        Err(e) => problems
                            .push(format!("restarting the system call of thread {tid}: {e}")),
                    }
                }
            }
            let mut held = th.held.into_iter();
            let mut requeue = Vec::new();
            let mut sig = 0;
            if let Some(first) = held.next() {
                // Only a signal-delivery-stop can take a signal through PTRACE_DETACH.
                if matches!(th.stop, StopKind::Signal(_))
                    && ptrace::setsiginfo(npid(tid), &first.info).is_ok()
                {
                    sig = first.signo;
                } else {
                    requeue.push(first);
                }
            }
            requeue.extend(held);
            match sys::detach(tid.0, sig) {
                Ok(()) => tracing::trace!(tid = tid.0, sig, "detached"),
                Err(Errno::ESRCH) => {
                    // Killed while stopped: reap the traced zombie thread.
                    let _ = sys::wait_thread(tid.0, true);
                    tracing::debug!(tid = tid.0, "thread vanished before detach");
                    continue;
                }
                Err(e) => {
                    problems.push(format!("PTRACE_DETACH of thread {tid}: {e}"));
                    continue;
                }
            }
            for h in requeue {
                if let Err(e) = requeue_signal(pid, tid, &h) {
                    problems.push(format!(
                        "re-sending signal {} to thread {tid}: {e}",
                        h.signo
                    ));
                }
            }
        }
        if problems.is_empty() {
            tracing::debug!("resumed");
            Ok(())
        } else {
            Err(Error::Detach {
                pid,
                detail: problems.join("; "),
            })
        }
    }
}

/// Queue a held signal again for its thread, keeping its siginfo where the kernel lets another
/// process do that (negative `si_code`s such as `sigqueue` and timers); otherwise (`kill`,
/// `tgkill`, kernel-generated) it arrives as a `tgkill` from suture.
fn requeue_signal(pid: Pid, tid: Tid, h: &HeldSignal) -> std::result::Result<(), Errno> {
    let code = h.info.si_code;
    if code < 0 && code != libc::SI_TKILL {
        match sys::tgsigqueueinfo(pid.0, tid.0, h.signo, &h.info) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!(tid = tid.0, error = %e, "rt_tgsigqueueinfo refused"),
        }
    }
    sys::tgkill(pid.0, tid.0, h.signo)
}

// ---- /proc helpers -------------------------------------------------------------------------

/// Whether process `pid` no longer exists or is dying: no thread of it is alive (a zombie
/// leader whose other threads still run is a live process).
fn process_gone(pid: Pid) -> bool {
    let Ok(tids) = list_tasks(pid) else {
        return true;
    };
    !tids.into_iter().any(|tid| {
        read_status(&task_path(pid, tid, "status")).is_ok_and(|st| !matches!(st.state, 'Z' | 'X'))
    })
}

/// Whether a thread is running or runnable (`R` in its `stat`), as opposed to blocked.
fn task_running(pid: Pid, tid: Tid) -> bool {
    let Ok(stat) = crate::maps::read_proc_string(task_path(pid, tid, "stat")) else {
        return false;
    };
    // "TID (COMM) STATE ...": COMM may contain spaces and parentheses; the last ')' ends it.
    stat.rfind(')')
        .and_then(|at| stat[at + 1..].split_whitespace().next())
        .is_some_and(|state| state == "R")
}

fn task_path(pid: Pid, tid: Tid, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/task/{}/{}", pid.0, tid.0, file))
}

fn list_tasks(pid: Pid) -> std::io::Result<Vec<Tid>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{}/task", pid.0))? {
        let entry = entry?;
        if let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(Tid(tid));
        }
    }
    tids.sort();
    Ok(tids)
}

/// The fields of `/proc/PID/status` suture looks at.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    pub(crate) state: char,
    pub(crate) tgid: i32,
    pub(crate) tracer: i32,
    pub(crate) uids: [u32; 4],
    pub(crate) seccomp: u32,
    pub(crate) kthread: bool,
}

fn read_status(path: &std::path::Path) -> std::io::Result<Status> {
    Ok(parse_status(&crate::maps::read_proc_string(path)?))
}

fn parse_status(text: &str) -> Status {
    let mut st = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "State" => st.state = value.chars().next().unwrap_or('?'),
            "Tgid" => st.tgid = value.parse().unwrap_or(0),
            "TracerPid" => st.tracer = value.parse().unwrap_or(0),
            "Uid" => {
                for (slot, v) in st.uids.iter_mut().zip(value.split_whitespace()) {
                    *slot = v.parse().unwrap_or(u32::MAX);
                }
            }
            "Seccomp" => st.seccomp = value.parse().unwrap_or(0),
            "Kthread" => st.kthread = value == "1",
            _ => {}
        }
    }
    st
}

/// Facts about the target read before attaching.
pub(crate) struct PrecheckInfo {
    seccomp: SeccompMode,
}

pub(crate) fn precheck(pid: Pid) -> Result<PrecheckInfo> {
    if pid.0 <= 0 {
        return Err(Error::NoSuchProcess { pid });
    }
    if pid.0 == std::process::id() as i32 {
        return Err(Error::SelfTarget { pid });
    }
    let status_path = PathBuf::from(format!("/proc/{}/status", pid.0));
    let st = read_status(&status_path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchProcess { pid },
        _ if source.raw_os_error() == Some(libc::ESRCH) => Error::NoSuchProcess { pid },
        _ => Error::Proc {
            path: status_path.clone(),
            source,
            state: TargetState::Untouched,
        },
    })?;
    if st.tgid != pid.0 {
        return Err(Error::NotAProcess {
            pid,
            tgid: Pid(st.tgid),
        });
    }
    if st.kthread {
        return Err(Error::KernelThread { pid });
    }
    match st.state {
        'X' => return Err(Error::NoSuchProcess { pid }),
        'Z' => {
            // A zombie leader whose other threads still run is a live process.
            let others = list_tasks(pid).map(|t| t.len() > 1).unwrap_or(false);
            if !others {
                return Err(Error::Zombie { pid });
            }
        }
        _ => {}
    }
    if st.tracer != 0 {
        return Err(Error::AlreadyTraced {
            pid,
            tracer: Pid(st.tracer),
        });
    }
    if let Some(reason) = permission_refusal(&st) {
        return Err(Error::PermissionDenied {
            pid,
            reason,
            state: TargetState::Untouched,
        });
    }
    check_elf(pid, &st)?;
    let seccomp = match st.seccomp {
        0 => SeccompMode::Disabled,
        1 => SeccompMode::Strict,
        _ => SeccompMode::Filter,
    };
    Ok(PrecheckInfo { seccomp })
}

fn yama_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Our own status (effective capabilities, uids).
fn own_status() -> (bool, [u32; 4]) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_sys_ptrace = text
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 19) != 0);
    (cap_sys_ptrace, parse_status(&text).uids)
}

/// Refusals that are certain before trying.
fn permission_refusal(target: &Status) -> Option<String> {
    let (cap, uids) = own_status();
    match yama_scope() {
        Some(3) => return Some("Yama ptrace_scope is 3 (no process may be traced)".into()),
        Some(2) if !cap => {
            return Some("Yama ptrace_scope is 2 (only CAP_SYS_PTRACE may trace)".into())
        }
        _ => {}
    }
    // ptrace_may_access: our fsuid must equal the target's real, effective and saved uid.
    let fsuid = uids[3];
    if !cap && target.uids[..3].iter().any(|&u| u != fsuid) {
        return Some(format!(
            "it runs as uid {}, suture as uid {fsuid}, without CAP_SYS_PTRACE",
            target.uids[1]
        ));
    }
    None
}

/// Why the kernel said EPERM to `PTRACE_SEIZE`, as far as can be told.
fn diagnose_eperm(target: &Status) -> String {
    if let Some(reason) = permission_refusal(target) {
        return reason;
    }
    let (cap, _) = own_status();
    match yama_scope() {
        Some(1) if !cap => {
            "Yama ptrace_scope is 1 (only ancestors or a declared tracer may trace)".into()
        }
        _ if !cap => "the process is not dumpable, or a security module refused".into(),
        _ => "a security module refused".into(),
    }
}

/// Refuse anything but a 64-bit x86-64 ELF.
fn check_elf(pid: Pid, st: &Status) -> Result<()> {
    use std::io::Read;
    let path = crate::maps::live_proc_dir(pid).join("exe");
    let mut header = [0u8; 20];
    let read = std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut header));
    match read {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No executable: a kernel thread, or the process is exiting.
            return Err(if st.state == 'Z' {
                Error::Zombie { pid }
            } else {
                Error::NoSuchProcess { pid }
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Error::PermissionDenied {
                pid,
                reason: format!("cannot read {}: {e}", path.display()),
                state: TargetState::Untouched,
            });
        }
        Err(source) => {
            return Err(Error::Proc {
                path,
                source,
                state: TargetState::Untouched,
            })
        }
    }
    if &header[..4] != b"\x7fELF" {
        return Err(Error::Not64Bit {
            pid,
            what: "its executable is not an ELF file".into(),
        });
    }
    let class = header[4];
    let machine = u16::from_le_bytes([header[18], header[19]]);
    if class != 2 {
        return Err(Error::Not64Bit {
            pid,
            what: format!(
                "ELF class {}, machine {machine}",
                if class == 1 { "32" } else { "unknown" }
            ),
        });
    }
    if machine != 62 {
        return Err(Error::Not64Bit {
            pid,
            what: format!("ELF machine {machine}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let st = parse_status(
            "Name:\tx\nState:\tt (tracing stop)\nTgid:\t10\nPid:\t11\nTracerPid:\t7\n\
             Uid:\t1000\t1001\t1002\t1003\nSeccomp:\t2\nKthread:\t0\n",
        );
        assert_eq!(st.state, 't');
        assert_eq!(st.tgid, 10);
        assert_eq!(st.tracer, 7);
        assert_eq!(st.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(st.seccomp, 2);
        assert!(!st.kthread);
    }

    #[test]
    fn tells_running_threads_from_blocked_ones() {
        let me = Pid(std::process::id() as i32);
        let tid = Tid(nix::unistd::gettid().as_raw());
        // This thread runs while it reads its own state.
        assert!(task_running(me, tid));
        let (tx, rx) = mpsc::channel::<()>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = rx.recv(); // blocked in the kernel until told
        });
        let other = Tid(tid_rx.recv().unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while task_running(me, other) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!task_running(me, other));
        tx.send(()).unwrap();
        sleeper.join().unwrap();
        assert!(
            !task_running(me, Tid(i32::MAX)),
            "a thread that does not exist"
        );
    }

    #[test]
    fn refuses_self_and_invalid_pids() {
        let me = Pid(std::process::id() as i32);
        assert!(matches!(
            StoppedProcess::stop(me),
            Err(Error::SelfTarget { .. })
        ));
        assert!(matches!(
            StoppedProcess::stop(Pid(0)),
            Err(Error::NoSuchProcess { .. })
        ));
        assert!(matches!(
            StoppedProcess::stop(Pid(-5)),
            Err(Error::NoSuchProcess { .. })
        ));
    }

    #[test]
    fn refuses_kernel_threads() {
        // kthreadd is pid 2 on every Linux system (outside pid namespaces).
        if std::fs::read_to_string("/proc/2/status").is_ok_and(|s| s.contains("kthreadd")) {
            let err = StoppedProcess::stop(Pid(2)).unwrap_err();
            assert!(matches!(err, Error::KernelThread { .. }), "{err}");
        }
    }

    #[test]
    fn stopped_process_is_send() {
        fn is_send<T: Send>() {}
        is_send::<StoppedProcess>();
    }
}
