//! Reading and writing another process's memory.
//!
//! Reads use `process_vm_readv` (one system call for any size) and fall back to `pread` on
//! `/proc/PID/mem` for what it could not read (it honours page protections, `/proc/PID/mem`
//! does not). Writes use `pwrite` on `/proc/PID/mem`, which also writes read-only text pages:
//! the kernel copies private pages on write, as for a debugger's breakpoint. Writing a running
//! process races with its threads; write while it is stopped
//! ([`StoppedProcess::mem`](crate::stop::StoppedProcess::mem)).
//!
//! A partial read or write is an error that names the first byte not transferred.

use crate::error::{Error, Result, TargetState};
use crate::ids::{Pid, RemoteAddr};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;

/// The memory of one process, through an open `/proc/PID/mem`.
///
/// The file refers to the address space the process had when it was opened: after an `execve`
/// it reads nothing.
#[derive(Debug)]
pub struct ProcessMemory {
    pid: Pid,
    /// The thread whose address space is accessed (the leader unless it has exited).
    via: Pid,
    file: File,
}

impl ProcessMemory {
    /// Open `/proc/PID/mem` for reading and writing (needs ptrace access to the process).
    pub fn open(pid: Pid) -> Result<ProcessMemory> {
        let dir = crate::maps::live_proc_dir(pid);
        let via = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .map_or(pid, Pid);
        let path = dir.join("mem");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ESRCH) => Error::NoSuchProcess { pid },
                Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
                    pid,
                    reason: format!("cannot open {}: {source}", path.display()),
                    state: TargetState::Untouched,
                },
                _ => Error::Proc {
                    path: path.clone(),
                    source,
                    state: TargetState::Untouched,
                },
            })?;
        Ok(ProcessMemory { pid, via, file })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// A second handle on the same open file (for suture's tracer thread).
    pub fn try_clone(&self) -> Result<ProcessMemory> {
        let file = self.file.try_clone().map_err(|source| Error::Proc {
            path: crate::maps::live_proc_dir(self.pid).join("mem"),
            source,
            state: TargetState::Untouched,
        })?;
        Ok(ProcessMemory {
            pid: self.pid,
            via: self.via,
            file,
        })
    }

    /// Fill `buf` from `addr` onwards; all or nothing.
    pub fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len();
        let done = match remote_readv(self.via, addr, buf) {
            Ok(n) => n,
            Err(e) => {
                tracing::trace!(pid = self.pid.0, addr = %addr, error = %e, "process_vm_readv failed; using /proc/PID/mem");
                0
            }
        };
        let mut done = done.min(len);
        while done < len {
            let at = addr.offset(done as u64);
            let err = match self.file.read_at(&mut buf[done..], at.0) {
                Ok(0) => io::Error::new(io::ErrorKind::UnexpectedEof, "end of address space"),
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            return Err(Error::ReadMemory {
                pid: self.pid,
                addr,
                len,
                failed_at: at,
                source: err,
            });
        }
        Ok(())
    }

    /// Fills every buffer from its address, with one `process_vm_readv` for all of them where
    /// it can (falling back to [`read`](ProcessMemory::read) for those it could not fill).
    /// Says for each whether it was filled.
    pub fn read_many(&self, reqs: &mut [(RemoteAddr, Vec<u8>)]) -> Vec<bool> {
        let mut ok = vec![false; reqs.len()];
        // The kernel takes at most IOV_MAX (1024) vectors per call.
        for (chunk, oks) in reqs.chunks_mut(1024).zip(ok.chunks_mut(1024)) {
            let remote: Option<Vec<nix::sys::uio::RemoteIoVec>> = chunk
                .iter()
                .map(|(addr, buf)| {
                    Some(nix::sys::uio::RemoteIoVec {
                        base: usize::try_from(addr.0).ok()?,
                        len: buf.len(),
                    })
                })
                .collect();
            let mut got = match remote {
                Some(remote) => {
                    let mut local: Vec<IoSliceMut> = chunk
                        .iter_mut()
                        .map(|(_, buf)| IoSliceMut::new(buf))
                        .collect();
                    nix::sys::uio::process_vm_readv(
                        nix::unistd::Pid::from_raw(self.via.0),
                        &mut local,
                        &remote,
                    )
                    .unwrap_or(0)
                }
                None => 0,
            };
            // A short count stops at the first byte it could not read: the buffers before it
            // are complete; the rest are read one by one.
            for ((addr, buf), ok) in chunk.iter_mut().zip(oks.iter_mut()) {
                if got >= buf.len() {
                    got -= buf.len();
                    *ok = true;
                } else {
                    got = 0;
                    *ok = self.read(*addr, buf).is_ok();
                }
            }
        }
        ok
    }

    /// Read `len` bytes at `addr`.
    pub fn read_vec(&self, addr: RemoteAddr, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    /// Read a little-endian `u64` at `addr`.
    pub fn read_u64(&self, addr: RemoteAddr) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write all of `data` at `addr`, also into read-only pages. A partial write is an error
    /// naming the first byte not written (the bytes before it *were* written).
    pub fn write(&self, addr: RemoteAddr, data: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < data.len() {
            let at = addr.offset(done as u64);
            let err = match self.file.write_at(&data[done..], at.0) {
                Ok(0) => io::Error::new(io::ErrorKind::WriteZero, "nothing written"),
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            return Err(Error::WriteMemory {
                pid: self.pid,
                addr,
                len: data.len(),
                failed_at: at,
                source: err,
            });
        }
        tracing::trace!(pid = self.pid.0, addr = %addr, len = data.len(), "wrote remote memory");
        Ok(())
    }
}

/// `process_vm_readv` into `buf`; returns how many bytes arrived (a short count stops at the
/// first unreadable page).
fn remote_readv(pid: Pid, addr: RemoteAddr, buf: &mut [u8]) -> nix::Result<usize> {
    let remote = [nix::sys::uio::RemoteIoVec {
        base: usize::try_from(addr.0).map_err(|_| nix::errno::Errno::EFAULT)?,
        len: buf.len(),
    }];
    let mut local = [IoSliceMut::new(buf)];
    nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(pid.0), &mut local, &remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own process is a fine target for memory access (no ptrace needed).
    #[test]
    fn reads_and_writes_own_memory() {
        let me = Pid(std::process::id() as i32);
        let mem = ProcessMemory::open(me).unwrap();
        let data = vec![7u8; 10000];
        let addr = RemoteAddr(data.as_ptr() as u64);
        assert_eq!(mem.read_vec(addr, data.len()).unwrap(), data);
        let mut target = vec![0u8; 16];
        let taddr = RemoteAddr(target.as_ptr() as u64);
        mem.write(taddr, b"0123456789abcdef").unwrap();
        assert_eq!(&mem.read_vec(taddr, 16).unwrap(), b"0123456789abcdef");
        // The write happened behind the compiler's back: make it reload.
        let target = std::hint::black_box(&mut target);
        assert_eq!(target.as_slice(), b"0123456789abcdef");
    }

    #[test]
    fn read_many_fills_what_it_can() {
        let me = Pid(std::process::id() as i32);
        let mem = ProcessMemory::open(me).unwrap();
        let a = vec![1u8; 100];
        let b = vec![2u8; 5000];
        let mut reqs = vec![
            (RemoteAddr(a.as_ptr() as u64), vec![0u8; 100]),
            (RemoteAddr(8), vec![0u8; 4]),
            (RemoteAddr(b.as_ptr() as u64), vec![0u8; 5000]),
            (RemoteAddr(a.as_ptr() as u64), Vec::new()),
        ];
        assert_eq!(mem.read_many(&mut reqs), [true, false, true, true]);
        assert_eq!(reqs[0].1, a);
        assert_eq!(reqs[2].1, b);
    }

    #[test]
    fn unmapped_read_names_the_address() {
        let me = Pid(std::process::id() as i32);
        let mem = ProcessMemory::open(me).unwrap();
        let err = mem.read_vec(RemoteAddr(8), 4).unwrap_err();
        match &err {
            Error::ReadMemory { failed_at, .. } => assert_eq!(*failed_at, RemoteAddr(8)),
            e => panic!("unexpected {e}"),
        }
        assert!(err.to_string().contains("0x8"), "{err}");
    }
}
