//! Child processes: killed when dropped, their output read line by line with bounded waits.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::WAIT;

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a stream, read on a thread of their own.
#[derive(Debug)]
pub struct Lines(pub Receiver<String>);

impl Lines {
    pub fn of(r: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line containing `want`, skipping others; panics after [`WAIT`] or at the end
    /// of the stream.
    pub fn wait_for(&self, want: &str) -> String {
        self.wait_for_by(want, WAIT)
    }

    /// [`Lines::wait_for`] with an explicit bound.
    pub fn wait_for_by(&self, want: &str, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(l) if l.contains(want) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line containing {want:?} within {bound:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the stream ended without a line containing {want:?}")
                }
            }
        }
    }

    /// Drops the lines already received (so the next wait sees only lines printed from now).
    pub fn drain(&self) {
        while self.0.try_recv().is_ok() {}
    }

    /// The next line, or `None` after `bound` or at the end of the stream.
    pub fn next_within(&self, bound: Duration) -> Option<String> {
        self.0.recv_timeout(bound).ok()
    }

    /// The next `n` lines (waiting up to [`WAIT`] for each); panics when the stream ends first.
    pub fn take(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.0
                    .recv_timeout(WAIT)
                    .unwrap_or_else(|e| panic!("line {} of {n} never came: {e:?}", i + 1))
            })
            .collect()
    }

    /// Every line printed during the next `d` (a sample, never an assertion on time).
    pub fn during(&self, d: Duration) -> Vec<String> {
        let end = Instant::now() + d;
        let mut v = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(l) => v.push(l),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        v
    }
}

/// Starts `cmd` with its stdout piped and read line by line.
pub fn spawn_lines(cmd: &mut Command) -> (KillOnDrop, Lines) {
    let mut child = KillOnDrop(
        cmd.stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
    );
    let out = child.0.stdout.take().unwrap();
    (child, Lines::of(out))
}

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after `bound`.
pub fn wait_until(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not reached within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
