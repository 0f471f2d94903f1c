//! Exec events from the kernel's process connector (netlink `NETLINK_CONNECTOR`, group
//! `CN_IDX_PROC`): the daemon learns of every `execve` on the host as it happens, instead of
//! listing `/proc` at intervals, so a process started after a patch went live is patched
//! within milliseconds of its exec.
//!
//! Subscribing needs `CAP_NET_ADMIN` in the initial user namespace, a process in the initial
//! pid namespace, a socket in the initial network namespace and a kernel with
//! `CONFIG_PROC_EVENTS`; where any of that is missing, [`ExecEvents::subscribe`] fails and
//! the daemon keeps polling (`crate::agent::run_daemon`). The socket is a plain datagram
//! socket made by `socket2` and read with `nix`: no `unsafe` here.
//!
//! Messages (host byte order): `nlmsghdr` (16 bytes), `cn_msg` (20 bytes: `idx`, `val`,
//! `seq`, `ack`, `len`, `flags`), then `proc_event`: `what` (u32), `cpu` (u32),
//! `timestamp_ns` (u64, `CLOCK_MONOTONIC`), and for `PROC_EVENT_EXEC` the thread's pid and
//! its thread group id; for the acknowledgement of a subscription (`PROC_EVENT_NONE`), `err`.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{self as nsock, NetlinkAddr};

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const NLMSG_DONE: u16 = 3;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_EXEC: u32 = 2;

const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;
/// Offset of `proc_event` in a message.
const EVENT: usize = NLMSG_HDR + CN_MSG;
/// Offset of `event_data` in a message (after `what`, `cpu`, `timestamp_ns`).
const DATA: usize = EVENT + 16;

/// What one read of the socket gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A process (thread group `tgid`) ran `execve`, at `at_ns` (`CLOCK_MONOTONIC`).
    Exec { tgid: i32, at_ns: u64 },
    /// The socket's buffer overflowed: events were lost (look at every young process).
    Lost,
}

/// A subscription to exec events; unsubscribed when dropped.
pub struct ExecEvents {
    sock: socket2::Socket,
    /// Our netlink port id (the kernel assigns it at bind).
    port: u32,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// A control message for the process connector (`PROC_CN_MCAST_LISTEN` or `..._IGNORE`),
/// with `ack` as the connector's acknowledgement number.
fn control(port: u32, op: u32, ack: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(EVENT + 4);
    m.extend_from_slice(&((EVENT + 4) as u32).to_ne_bytes());
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&port.to_ne_bytes());
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&ack.to_ne_bytes());
    m.extend_from_slice(&4u16.to_ne_bytes()); // len of the payload
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&op.to_ne_bytes());
    m
}

/// A message from the process connector, parsed: `Some((what, ack, message))`.
fn parse(m: &[u8]) -> Option<(u32, u32, &[u8])> {
    let len = u32_at(m, 0)? as usize;
    let m = m.get(..len)?;
    if u32_at(m, NLMSG_HDR)? != CN_IDX_PROC || u32_at(m, NLMSG_HDR + 4)? != CN_VAL_PROC {
        return None;
    }
    Some((u32_at(m, EVENT)?, u32_at(m, NLMSG_HDR + 12)?, m))
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl ExecEvents {
    /// Subscribes to the kernel's process events; fails (with the reason) where the process
    /// connector is unavailable or the subscription is not allowed.
    pub fn subscribe() -> io::Result<ExecEvents> {
        let sock = socket2::Socket::new(
            socket2::Domain::from(nix::libc::AF_NETLINK),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::from(NETLINK_CONNECTOR)),
        )?;
        // A large buffer: the daemon may be busy with a pass while processes start. As root,
        // beyond rmem_max; else as large as allowed.
        let fd = sock.as_raw_fd();
        let big = 8 << 20;
        if nsock::setsockopt(&sock, nsock::sockopt::RcvBufForce, &big).is_err() {
            let _ = sock.set_recv_buffer_size(big);
        }
        nsock::bind(fd, &NetlinkAddr::new(0, CN_IDX_PROC)).map_err(errno)?;
        let port = nsock::getsockname::<NetlinkAddr>(fd).map_err(errno)?.pid();
        let ev = ExecEvents { sock, port };
        // The kernel acknowledges the subscription with `ack + 1` (a PROC_EVENT_NONE message
        // carrying an error number) when it has listeners; none within a second means it did
        // not take it (a process outside the initial user or pid namespace gets no answer).
        let ack = std::process::id();
        nsock::send(
            fd,
            &control(port, PROC_CN_MCAST_LISTEN, ack),
            nsock::MsgFlags::empty(),
        )
        .map_err(errno)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not acknowledge the subscription to process events",
                ));
            }
            let Some(m) = ev.read(&mut buf, left)? else {
                continue;
            };
            if let Some((PROC_EVENT_NONE, got, m)) = parse(m) {
                if got == ack.wrapping_add(1) {
                    return match u32_at(m, DATA) {
                        Some(0) => Ok(ev),
                        Some(e) => Err(io::Error::from_raw_os_error(e as i32)),
                        None => Err(io::Error::other("short acknowledgement")),
                    };
                }
            }
        }
    }

    /// One message from the kernel within `timeout`; `None` on timeout or for a message from
    /// another sender (anyone may send to our port: only the kernel's are taken).
    fn read<'a>(&self, buf: &'a mut [u8], timeout: Duration) -> io::Result<Option<&'a [u8]>> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        match nsock::recvfrom::<NetlinkAddr>(self.sock.as_raw_fd(), buf) {
            Ok((n, Some(from))) if from.pid() == 0 => Ok(Some(&buf[..n])),
            Ok(_) => Ok(None),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// The next exec (or loss) event within `timeout`; `Ok(None)` when none came.
    pub fn next(&self, timeout: Duration) -> io::Result<Option<Event>> {
        let mut buf = [0u8; 1024];
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let m = match self.read(&mut buf, left) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    return Ok(Some(Event::Lost))
                }
                Err(e) => return Err(e),
            };
            if let Some((PROC_EVENT_EXEC, _, m)) = parse(m) {
                let (Some(at_ns), Some(tgid)) = (u64_at(m, EVENT + 8), u32_at(m, DATA + 4)) else {
                    continue;
                };
                return Ok(Some(Event::Exec {
                    tgid: tgid as i32,
                    at_ns,
                }));
            }
        }
    }
}

impl ExecEvents {
    /// A handle that ends this subscription from another thread (e.g. on SIGTERM, when the
    /// thread reading events will never drop it).
    pub fn closer(&self) -> io::Result<Closer> {
        Ok(Closer {
            sock: self.sock.try_clone()?,
            port: self.port,
        })
    }
}

/// Ends a subscription (see [`ExecEvents::closer`]).
pub struct Closer {
    sock: socket2::Socket,
    port: u32,
}

impl Closer {
    /// Tells the kernel this listener is gone: kernels that count listeners by their
    /// messages go on building events while the count is above zero.
    pub fn unsubscribe(&self) {
        ignore(&self.sock, self.port);
    }
}

/// Sends `PROC_CN_MCAST_IGNORE` (errors ignored: nothing more can be done).
fn ignore(sock: &socket2::Socket, port: u32) {
    let _ = nsock::send(
        sock.as_raw_fd(),
        &control(port, PROC_CN_MCAST_IGNORE, 0),
        nsock::MsgFlags::empty(),
    );
}

impl Drop for ExecEvents {
    fn drop(&mut self) {
        ignore(&self.sock, self.port);
    }
}

/// Unsubscribes when the process is told to stop: SIGTERM and SIGINT are blocked in the
/// calling thread (call it before other threads start: they inherit the mask; children
/// started with `std::process::Command` get an empty mask) and taken by a thread of their
/// own, which unsubscribes, then lets the signal end the process as it would have.
pub fn unsubscribe_on_termination(closer: Closer) -> io::Result<()> {
    use nix::sys::signal::{self, SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(errno)?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            closer.unsubscribe();
            // Default disposition, unblocked here: the signal ends the process.
            let mut only = SigSet::empty();
            only.add(sig);
            let _ = only.thread_unblock();
            let _ = signal::raise(sig);
        }
    });
    Ok(())
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock of [`Event::Exec`]'s `at_ns`).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_message_layout() {
        let m = control(7, PROC_CN_MCAST_LISTEN, 42);
        assert_eq!(m.len(), 40);
        assert_eq!(u32_at(&m, 0), Some(40));
        assert_eq!(u32_at(&m, 12), Some(7));
        assert_eq!(u32_at(&m, 16), Some(CN_IDX_PROC));
        assert_eq!(u32_at(&m, 28), Some(42));
        assert_eq!(u32_at(&m, 36), Some(PROC_CN_MCAST_LISTEN));
        assert!(parse(&m[..20]).is_none());
    }

    /// Where the process connector is available (root in the initial namespaces), a child's
    /// exec arrives as an event with its pid; elsewhere the subscription fails with a reason.
    #[test]
    fn a_child_exec_arrives() {
        let ev = match ExecEvents::subscribe() {
            Ok(ev) => ev,
            Err(e) => {
                eprintln!("skipped: no process events here: {e}");
                return;
            }
        };
        let before = monotonic_ns();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let _ = child.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no exec event for {pid}"
            );
            match ev.next(Duration::from_secs(1)).unwrap() {
                Some(Event::Exec { tgid, at_ns }) if tgid == pid => {
                    assert!(at_ns >= before && at_ns <= monotonic_ns());
                    break;
                }
                _ => {}
            }
        }
    }
}
