//! The few raw system calls that nix cannot express safely enough for suture.
//!
//! nix models signals as an enum of the 31 standard signals, so its `waitpid` fails with `EINVAL`
//! *after consuming* a stop for a real-time signal (`SIGRTMIN`..`SIGRTMAX`), and its
//! `ptrace::detach` cannot pass one back. glibc itself uses real-time signals (thread
//! cancellation, `setxid` broadcasts that deadlock when lost), so losing them is not acceptable.
//! This module keeps signal numbers as plain integers. It is the only module with `unsafe`.
#![allow(unsafe_code)]

use nix::errno::Errno;
use std::ptr;

/// A decoded wait status of one traced thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    /// The thread exited with this status (only the thread-group leader reports the process's).
    Exited(i32),
    /// The thread was killed by this signal.
    Killed(i32),
    /// Signal-delivery-stop: the thread is about to handle this signal (a single-step trap
    /// arrives this way too, as `SIGTRAP`).
    SignalStop(i32),
    /// A `PTRACE_EVENT_*` stop; `PTRACE_EVENT_STOP` covers interrupt stops, group stops and the
    /// first stop of an automatically attached new thread.
    EventStop { sig: i32, event: i32 },
}

fn decode(status: libc::c_int) -> Option<WaitStatus> {
    if libc::WIFEXITED(status) {
        Some(WaitStatus::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(WaitStatus::Killed(libc::WTERMSIG(status)))
    } else if libc::WIFSTOPPED(status) {
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if event == 0 {
            Some(WaitStatus::SignalStop(sig))
        } else {
            Some(WaitStatus::EventStop { sig, event })
        }
    } else {
        None
    }
}

/// `waitpid(tid, __WALL [| WNOHANG])`. `Ok(None)`: nothing to report yet (only with `nohang`).
pub(crate) fn wait_thread(tid: i32, nohang: bool) -> Result<Option<WaitStatus>, Errno> {
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one c_int through the pointer, which points to a live local.
        let r = unsafe { libc::waitpid(tid, &mut status, flags) };
        match r {
            -1 => match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            },
            0 => return Ok(None),
            _ => return Ok(decode(status)),
        }
    }
}

/// `PTRACE_DETACH` that resumes the thread with `sig` (0: none). The signal is delivered only
/// when the thread is in a signal-delivery-stop.
pub(crate) fn detach(tid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: PTRACE_DETACH dereferences no pointer: `addr` is ignored and `data` carries the
    // signal number by value.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            tid,
            ptr::null_mut::<libc::c_void>(),
            sig as usize as *mut libc::c_void,
        )
    };
    Errno::result(r).map(drop)
}

/// `tgkill(tgid, tid, sig)`: queue `sig` for one thread (the receiver sees `SI_TKILL` from us).
pub(crate) fn tgkill(tgid: i32, tid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: tgkill takes three integers and dereferences nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::c_long::from(tgid),
            libc::c_long::from(tid),
            libc::c_long::from(sig),
        )
    };
    Errno::result(r).map(drop)
}

/// `rt_tgsigqueueinfo(tgid, tid, sig, info)`: queue `sig` for one thread with its full siginfo.
/// The kernel accepts this from another process only for negative `si_code`s other than
/// `SI_TKILL` (`sigqueue`, timers, message queues, asynchronous I/O).
pub(crate) fn tgsigqueueinfo(
    tgid: i32,
    tid: i32,
    sig: i32,
    info: &libc::siginfo_t,
) -> Result<(), Errno> {
    let info: *const libc::siginfo_t = info;
    // SAFETY: the kernel only reads a siginfo_t through the pointer, which comes from a live
    // reference to a complete siginfo_t.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::c_long::from(tgid),
            libc::c_long::from(tid),
            libc::c_long::from(sig),
            info,
        )
    };
    Errno::result(r).map(drop)
}

/// `PTRACE_GETSIGMASK`: the blocked-signal mask of a stopped tracee (bit `n - 1`: signal `n`).
pub(crate) fn getsigmask(tid: i32) -> Result<u64, Errno> {
    let mut mask: u64 = 0;
    // SAFETY: with `addr` = 8 (the size of the kernel's sigset_t on x86-64) the kernel writes
    // exactly 8 bytes through `data`, which points to a live u64.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            tid,
            8usize as *mut libc::c_void,
            (&mut mask as *mut u64).cast::<libc::c_void>(),
        )
    };
    Errno::result(r).map(|_| mask)
}

/// `PTRACE_SECCOMP_GET_FILTER`: the classic-BPF program of seccomp filter `index` (0: the most
/// recently installed) of the stopped tracee `tid`, as raw 8-byte `sock_filter` records.
/// Needs `CAP_SYS_ADMIN`; `ENOENT` past the last filter.
pub(crate) fn seccomp_filter(tid: i32, index: u64) -> Result<Vec<[u8; 8]>, Errno> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    // The kernel never returns more than BPF_MAXINSNS instructions for one filter.
    const MAX_INSNS: usize = 4096;
    // SAFETY: with a null `data` the kernel only returns the instruction count; it reads and
    // writes no memory of ours.
    let n = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as usize as *mut libc::c_void,
            ptr::null_mut::<libc::c_void>(),
        )
    };
    let n = usize::try_from(Errno::result(n)?).map_err(|_| Errno::EINVAL)?;
    if n == 0 || n > MAX_INSNS {
        return Err(Errno::EINVAL);
    }
    let mut buf = vec![[0u8; 8]; n];
    // SAFETY: `buf` holds `n` 8-byte records, exactly the `n * sizeof(struct sock_filter)` bytes
    // the kernel writes for this filter (filters never change once installed, and the tracee
    // is stopped, so it cannot install another one that would shift the index meanwhile).
    let got = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as usize as *mut libc::c_void,
            buf.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    let got = usize::try_from(Errno::result(got)?).map_err(|_| Errno::EINVAL)?;
    buf.truncate(got.min(n));
    Ok(buf)
}

/// A whole file mapped read-only (`MAP_PRIVATE`): its bytes without copying them into the heap
/// (reading a 2 MB libc with `read` cost more than the rest of an apply's preparation: the
/// copy and the page faults of the fresh buffer). Only the pages looked at are read.
///
/// A file truncated while mapped would fault (`SIGBUS`) when a page past its new end is read:
/// suture maps only the ELF files a running process maps itself, and uses the bytes before it
/// stops the target (it copies what it keeps).
pub(crate) struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Send for MappedFile {}
// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    pub(crate) fn open(path: &std::path::Path) -> std::io::Result<MappedFile> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        if len == 0 {
            return Ok(MappedFile {
                ptr: ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only private mapping of an open file, at an address the kernel
        // chooses; nothing else refers to that memory.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedFile { ptr, len })
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping this value owns; no reference outlives it
            // (borrows of the bytes end with the borrow of `self`).
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_file() {
        let path = std::env::temp_dir().join(format!("suture-map-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let m = MappedFile::open(&path).unwrap();
        assert_eq!(&m[..], b"0123456789");
        std::fs::write(&path, b"").unwrap();
        drop(m);
        assert!(MappedFile::open(&path).unwrap().is_empty());
        std::fs::remove_file(&path).unwrap();
        assert!(MappedFile::open(&path).is_err());
    }

    #[test]
    fn decodes_statuses() {
        assert_eq!(decode(42 << 8), Some(WaitStatus::Exited(42)));
        assert_eq!(decode(9), Some(WaitStatus::Killed(9)));
        // A stop for SIGRTMIN+3 (37), which nix cannot represent.
        assert_eq!(decode((37 << 8) | 0x7f), Some(WaitStatus::SignalStop(37)));
        // PTRACE_EVENT_STOP (128) with SIGTRAP.
        assert_eq!(
            decode((128 << 16) | (5 << 8) | 0x7f),
            Some(WaitStatus::EventStop { sig: 5, event: 128 })
        );
        assert_eq!(decode(0xffff), None); // WIFCONTINUED
    }
}
