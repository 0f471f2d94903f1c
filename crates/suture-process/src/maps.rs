//! `/proc/PID/maps` as typed mappings, and finding room for patch code near what it patches.

use crate::error::{Error, Result, TargetState};
use crate::ids::{Pid, RemoteAddr};
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The page size of x86-64 Linux user mappings.
pub const PAGE_SIZE: u64 = 4096;

/// How far a `rel32` displacement reaches in either direction.
pub const REL32_REACH: u64 = 0x7fff_ffff;

/// The highest user address suture hands out (the top of the 47-bit address space, minus the
/// guard page the kernel keeps there).
pub const USER_TOP: u64 = 0x7fff_ffff_f000;

/// Room the kernel keeps below the main stack for it to grow into when the stack rlimit is
/// not known: the kernel itself never places mappings closer than 128 MiB (`mmap_base`).
pub const DEFAULT_STACK_RESERVE: u64 = 128 << 20;

/// The stack guard gap the kernel enforces below a growing stack (`stack_guard_gap`, 256 pages).
pub const STACK_GUARD_GAP: u64 = 256 * PAGE_SIZE;

/// The whole of a `/proc` file, read with as few system calls as it takes (usually two): the
/// kernel reports such files as empty, so `std::fs::read` starts with a 32-byte buffer and
/// doubles it, one `read` per step, which costs ~10 calls on a maps file and counts inside a
/// stop.
pub(crate) fn read_proc(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 16 << 10];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(2 * len, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// [`read_proc`] as text (`/proc` text files are ASCII apart from names).
pub(crate) fn read_proc_string(path: impl AsRef<Path>) -> std::io::Result<String> {
    String::from_utf8(read_proc(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The `/proc` directory to read a process's memory-related files from: `/proc/PID`, or
/// `/proc/PID/task/TID` of a live thread when the thread-group leader has exited while other
/// threads run on (the leader's own `maps`, `mem`, `exe` and `root` are then empty or gone).
pub fn live_proc_dir(pid: Pid) -> PathBuf {
    let dir = PathBuf::from(format!("/proc/{}", pid.0));
    if task_state(&dir.join("stat")) != Some('Z') {
        return dir;
    }
    let live = std::fs::read_dir(dir.join("task"))
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| !matches!(task_state(&p.join("stat")), Some('Z' | 'X') | None))
        });
    live.unwrap_or(dir)
}

fn task_state(stat: &Path) -> Option<char> {
    let text = read_proc_string(stat).ok()?;
    text.get(text.rfind(')')? + 2..)?.chars().next()
}

/// Access permissions of a mapping (`rwxp` / `rwxs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s`: a shared mapping; `p`: private (copy-on-write).
    pub shared: bool,
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x'),
            if self.shared { 's' } else { 'p' }
        )
    }
}

/// A device number as `/proc/PID/maps` prints it (`major:minor`, hexadecimal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Dev {
    pub major: u32,
    pub minor: u32,
}

impl Dev {
    /// The device of a `stat` result (`st_dev`), in the kernel's encoding.
    pub fn from_st_dev(dev: u64) -> Dev {
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
        Dev {
            major: major as u32,
            minor: minor as u32,
        }
    }
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}", self.major, self.minor)
    }
}

/// What a mapping maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapName {
    /// Anonymous memory with no name.
    Anonymous,
    /// A file, by its path inside the target's mount namespace (unescaped, without the
    /// ` (deleted)` suffix).
    Path(PathBuf),
    /// A kernel pseudo-name without the brackets: `vdso`, `vvar`, `stack`, `heap`, `vsyscall`,
    /// `anon:NAME` (`PR_SET_VMA_ANON_NAME`), ...
    Pseudo(String),
    /// Anything else the kernel prints (`anon_inode:...`, ...).
    Other(OsString),
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: RemoteAddr,
    /// One past the last byte.
    pub end: RemoteAddr,
    pub perms: Perms,
    /// Offset into the file (for file mappings).
    pub offset: u64,
    pub dev: Dev,
    pub inode: u64,
    pub name: MapName,
    /// The file was deleted (or replaced) since it was mapped.
    pub deleted: bool,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    pub fn is_empty(&self) -> bool {
        self.end.0 == self.start.0
    }

    pub fn contains(&self, addr: RemoteAddr) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The file path, for file mappings.
    pub fn path(&self) -> Option<&Path> {
        match &self.name {
            MapName::Path(p) => Some(p),
            _ => None,
        }
    }

    /// Whether this is the kernel pseudo-mapping `[name]`.
    pub fn is_pseudo(&self, name: &str) -> bool {
        matches!(&self.name, MapName::Pseudo(n) if n == name)
    }

    /// The `map_files` entry of this mapping: `/proc/PID/map_files/<start>-<end>`. It opens the
    /// mapped file itself even when it was deleted or lives in another mount namespace
    /// (opening it needs `CAP_SYS_ADMIN`).
    pub fn map_files_path(&self, pid: Pid) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/map_files/{:x}-{:x}",
            pid.0, self.start.0, self.end.0
        ))
    }

    /// A path that opens this mapping's file from outside the target's mount namespace:
    /// `/proc/PID/root/<path>` when the file there is still the mapped one (same device and
    /// inode), else `/proc/PID/map_files/<start>-<end>`. `None` for non-file mappings.
    pub fn open_path(&self, pid: Pid) -> Option<PathBuf> {
        let path = self.path()?;
        if !self.deleted {
            let mut rooted = live_proc_dir(pid).join("root");
            rooted.push(path.strip_prefix("/").unwrap_or(path));
            if let Ok(meta) = std::fs::metadata(&rooted) {
                if meta.ino() == self.inode && Dev::from_st_dev(meta.dev()) == self.dev {
                    return Some(rooted);
                }
            }
        }
        Some(self.map_files_path(pid))
    }
}

/// The memory map of a process, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct Maps {
    pub mappings: Vec<Mapping>,
    /// Room kept free below `[stack]` for the main stack to grow into (the target's stack
    /// rlimit when known, at least [`DEFAULT_STACK_RESERVE`]).
    pub stack_reserve: u64,
    /// The lowest address a mapping may have (`vm.mmap_min_addr`).
    pub min_addr: u64,
}

impl Maps {
    /// Read and parse `/proc/PID/maps` (plus the stack rlimit and `vm.mmap_min_addr`).
    pub fn read(pid: Pid) -> Result<Maps> {
        let mut maps = Maps::read_mappings(pid, &live_proc_dir(pid))?;
        if let Some(limit) = stack_rlimit(pid) {
            maps.stack_reserve = maps.stack_reserve.max(limit);
        }
        if let Some(min) = read_proc_string("/proc/sys/vm/mmap_min_addr")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            maps.min_addr = maps.min_addr.max(min);
        }
        Ok(maps)
    }

    /// Only the mappings of `dir/maps` (`dir` from [`live_proc_dir`]), without what placing
    /// new mappings needs (the stack rlimit and `vm.mmap_min_addr`): for readers of the
    /// mappings inside a stop.
    pub fn read_mappings(pid: Pid, dir: &Path) -> Result<Maps> {
        let path = dir.join("maps");
        let text = read_proc(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::NoSuchProcess { pid }
            } else if source.kind() == std::io::ErrorKind::PermissionDenied {
                // The kernel's ptrace access check (another user, not dumpable, Yama, ...).
                Error::PermissionDenied {
                    pid,
                    reason: format!("cannot read {}: {source}", path.display()),
                    state: TargetState::Untouched,
                }
            } else {
                Error::Proc {
                    path: path.clone(),
                    source,
                    state: TargetState::Untouched,
                }
            }
        })?;
        Maps::parse_named(&text, &path.display().to_string())
    }

    /// Parse the text of a maps file.
    pub fn parse(text: &[u8]) -> Result<Maps> {
        Maps::parse_named(text, "input")
    }

    fn parse_named(text: &[u8], source_name: &str) -> Result<Maps> {
        let mut mappings = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let m = parse_line(line).ok_or_else(|| Error::MapsSyntax {
                source_name: source_name.to_string(),
                line: i + 1,
                text: String::from_utf8_lossy(line).into_owned(),
            })?;
            mappings.push(m);
        }
        mappings.sort_by_key(|m| m.start);
        Ok(Maps {
            mappings,
            stack_reserve: DEFAULT_STACK_RESERVE,
            min_addr: 0x10000,
        })
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Mapping> {
        self.mappings.iter()
    }

    /// The mapping containing `addr`.
    pub fn find(&self, addr: RemoteAddr) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.end <= addr);
        self.mappings.get(i).filter(|m| m.contains(addr))
    }

    /// The mappings of the file at `path` (as the target sees it), in address order.
    pub fn of_path<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = &'a Mapping> + 'a {
        self.mappings.iter().filter(move |m| m.path() == Some(path))
    }

    /// The mappings of the file with this device and inode, in address order. Anonymous
    /// mappings (inode 0) never match.
    pub fn of_inode(&self, dev: Dev, inode: u64) -> impl Iterator<Item = &Mapping> + '_ {
        self.mappings
            .iter()
            .filter(move |m| inode != 0 && m.inode == inode && m.dev == dev)
    }

    /// The `[vdso]` mapping.
    pub fn vdso(&self) -> Option<&Mapping> {
        self.mappings.iter().find(|m| m.is_pseudo("vdso"))
    }

    /// A free, page-aligned range of `size` bytes (rounded up to pages) aligned to `align`
    /// (a power of two; at least a page) whose every byte lies within ±2 GiB ([`REL32_REACH`])
    /// of `target`, as close to `target` as possible. It keeps one free page from every
    /// neighbour (so the kernel does not merge it into one) and stays clear of the room the main
    /// stack may grow into ([`Maps::stack_reserve`] plus the guard gap below `[stack]`).
    pub fn free_range_near(&self, target: RemoteAddr, size: u64, align: u64) -> Option<RemoteAddr> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(PAGE_SIZE);
        let size = size.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
        let t = target.0;
        let lo_limit = t.saturating_sub(REL32_REACH).max(self.min_addr);
        // Exclusive end bound: the last byte may be at t + REL32_REACH.
        let hi_limit = t
            .saturating_add(REL32_REACH)
            .saturating_add(1)
            .min(USER_TOP);
        if lo_limit >= hi_limit {
            return None;
        }

        // Occupied intervals, padded; sorted by start after construction.
        let mut busy: Vec<(u64, u64)> = self
            .mappings
            .iter()
            .filter(|m| m.start.0 < USER_TOP)
            .map(|m| {
                let mut lo = m.start.0.saturating_sub(PAGE_SIZE);
                if m.is_pseudo("stack") {
                    // The stack grows down to `end - rlimit`; the kernel keeps a guard gap below.
                    let grow_floor = m.end.0.saturating_sub(self.stack_reserve);
                    lo = lo.min(grow_floor).saturating_sub(STACK_GUARD_GAP);
                }
                (lo, m.end.0.saturating_add(PAGE_SIZE))
            })
            .collect();
        busy.sort_unstable();

        let mut best: Option<(u64, u64)> = None; // (distance, start)
        let mut consider = |h0: u64, h1: u64| -> Option<()> {
            let h0 = h0.max(lo_limit);
            let h1 = h1.min(hi_limit);
            if h1 <= h0 || h1 - h0 < size {
                return None;
            }
            let first = align_up(h0, align)?;
            let last = align_down(h1 - size, align);
            if last < first {
                return None;
            }
            // Centre the range on the target when the hole contains it.
            let c = align_down(t.saturating_sub(size / 2).clamp(first, last), align).max(first);
            let dist = c.abs_diff(t).max((c + size - 1).abs_diff(t));
            if best.is_none_or(|(d, _)| dist < d) {
                best = Some((dist, c));
            }
            Some(())
        };
        let mut cursor = 0u64;
        for &(lo, hi) in &busy {
            if lo > cursor {
                let _ = consider(cursor, lo);
            }
            cursor = cursor.max(hi);
        }
        let _ = consider(cursor, USER_TOP);
        best.map(|(_, start)| RemoteAddr(start))
    }
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

fn align_down(v: u64, align: u64) -> u64 {
    v & !(align - 1)
}

/// The soft stack rlimit of `pid` from `/proc/PID/limits` (`None` when unlimited or unknown).
fn stack_rlimit(pid: Pid) -> Option<u64> {
    let text = read_proc_string(format!("/proc/{}/limits", pid.0)).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max stack size"))?;
    let soft = line["Max stack size".len()..].split_whitespace().next()?;
    soft.parse().ok()
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// Split off the next space-separated field.
fn field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let s = *rest;
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    *rest = s.get(end + 1..).unwrap_or(&[]);
    Some(&s[..end])
}

fn parse_line(line: &[u8]) -> Option<Mapping> {
    let mut rest = line;
    let range = field(&mut rest)?;
    let perms = field(&mut rest)?;
    let offset = field(&mut rest)?;
    let dev = field(&mut rest)?;
    let inode = field(&mut rest)?;

    let dash = range.iter().position(|&b| b == b'-')?;
    let start = parse_hex(&range[..dash])?;
    let end = parse_hex(&range[dash + 1..])?;
    if end < start {
        return None;
    }
    let perms = match perms {
        [r, w, x, s] => Perms {
            read: flag(*r, b'r')?,
            write: flag(*w, b'w')?,
            exec: flag(*x, b'x')?,
            shared: match s {
                b's' => true,
                b'p' => false,
                _ => return None,
            },
        },
        _ => return None,
    };
    let offset = parse_hex(offset)?;
    let colon = dev.iter().position(|&b| b == b':')?;
    let dev = Dev {
        major: u32::try_from(parse_hex(&dev[..colon])?).ok()?,
        minor: u32::try_from(parse_hex(&dev[colon + 1..])?).ok()?,
    };
    let inode: u64 = std::str::from_utf8(inode).ok()?.parse().ok()?;

    let mut name = rest;
    while let [b' ', tail @ ..] = name {
        name = tail;
    }
    let (name, deleted) = match name.strip_suffix(b" (deleted)") {
        Some(n) => (n, true),
        None => (name, false),
    };
    let name = if name.is_empty() {
        MapName::Anonymous
    } else if name[0] == b'/' {
        MapName::Path(PathBuf::from(OsString::from_vec(unescape(name))))
    } else if name[0] == b'[' && name.ends_with(b"]") {
        MapName::Pseudo(String::from_utf8_lossy(&name[1..name.len() - 1]).into_owned())
    } else {
        MapName::Other(std::ffi::OsStr::from_bytes(name).to_os_string())
    };
    Some(Mapping {
        start: RemoteAddr(start),
        end: RemoteAddr(end),
        perms,
        offset,
        dev,
        inode,
        name,
        deleted,
    })
}

fn flag(b: u8, on: u8) -> Option<bool> {
    match b {
        b'-' => Some(false),
        _ if b == on => Some(true),
        _ => None,
    }
}

/// The kernel escapes a newline in a mapped path as `\012` (octal).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let octal = s
            .get(i + 1..i + 4)
            .filter(|d| s[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1048602                    /usr/bin/tar get
55d0c0a01000-55d0c0a02000 r-xp 00001000 fd:01 1048602                    /usr/bin/tar get
55d0c1c2d000-55d0c1c4e000 rw-p 00000000 00:00 0                          [heap]
7f1e2a000000-7f1e2a022000 r-xp 00000000 08:11 393232                     /lib/libc.so.6 (deleted)
7f1e2a100000-7f1e2a101000 rw-s 00000000 00:01 7                          /memfd:x\\012y (deleted)
7f1e2a200000-7f1e2a201000 rw-p 00000000 00:00 0                          [anon:my name]
7f1e2a300000-7f1e2a301000 rw-p 00000000 00:00 0 
7ffd1b2f0000-7ffd1b311000 rw-p 00000000 00:00 0                          [stack]
7ffd1b3a0000-7ffd1b3a2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_all_kinds_of_lines() {
        let maps = Maps::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(maps.mappings.len(), 10);
        let m = &maps.mappings[1];
        assert_eq!(m.start, RemoteAddr(0x55d0c0a01000));
        assert_eq!(m.end, RemoteAddr(0x55d0c0a02000));
        assert_eq!(m.perms.to_string(), "r-xp");
        assert_eq!(m.offset, 0x1000);
        assert_eq!(
            m.dev,
            Dev {
                major: 0xfd,
                minor: 1
            }
        );
        assert_eq!(m.inode, 1048602);
        assert_eq!(m.path(), Some(Path::new("/usr/bin/tar get")));
        assert!(!m.deleted);
        assert!(maps.mappings[2].is_pseudo("heap"));
        let libc = &maps.mappings[3];
        assert!(libc.deleted);
        assert_eq!(libc.path(), Some(Path::new("/lib/libc.so.6")));
        let memfd = &maps.mappings[4];
        assert!(memfd.perms.shared && memfd.deleted);
        assert_eq!(memfd.path(), Some(Path::new("/memfd:x\ny")));
        assert_eq!(
            maps.mappings[5].name,
            MapName::Pseudo("anon:my name".into())
        );
        assert_eq!(maps.mappings[6].name, MapName::Anonymous);
        assert_eq!(maps.vdso().unwrap().start, RemoteAddr(0x7ffd1b3a0000));
        assert_eq!(maps.mappings[9].perms.to_string(), "--xp");
        assert_eq!(
            maps.of_path(Path::new("/usr/bin/tar get")).count(),
            2,
            "both mappings of the executable"
        );
        assert_eq!(
            maps.of_inode(
                Dev {
                    major: 0xfd,
                    minor: 1
                },
                1048602
            )
            .count(),
            2
        );
        assert_eq!(maps.of_inode(Dev::default(), 0).count(), 0);
        assert_eq!(
            maps.find(RemoteAddr(0x55d0c1c2d123)).unwrap().name,
            MapName::Pseudo("heap".into())
        );
        assert!(maps.find(RemoteAddr(0x55d0c1c4e000)).is_none());
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "zz-1000 r-xp 0 00:00 0",
            "1000-2000 rwxq 0 00:00 0",
            "1000-2000 r-xp 0 0000 0",
            "2000-1000 r-xp 0 00:00 0",
            "1000-2000 r-xp 0 00:00",
        ] {
            let err = Maps::parse(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(err, Error::MapsSyntax { line: 1, .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn dev_from_st_dev_matches_kernel_encoding() {
        // makedev(0xfd, 1) and makedev(259, 70000) as glibc encodes them.
        assert_eq!(
            Dev::from_st_dev(0xfd01),
            Dev {
                major: 0xfd,
                minor: 1
            }
        );
        let (ma, mi) = (259u64, 70000u64);
        let dev = ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12);
        assert_eq!(
            Dev::from_st_dev(dev),
            Dev {
                major: 259,
                minor: 70000
            }
        );
    }

    fn maps_of(ranges: &[(u64, u64, &str)]) -> Maps {
        let text: String = ranges
            .iter()
            .map(|(s, e, n)| format!("{s:x}-{e:x} r-xp 00000000 00:00 0 {n}\n"))
            .collect();
        Maps::parse(text.as_bytes()).unwrap()
    }

    fn assert_free(maps: &Maps, at: u64, size: u64) {
        for m in &maps.mappings {
            assert!(
                at + size + PAGE_SIZE <= m.start.0 || m.end.0 + PAGE_SIZE <= at,
                "{at:#x}+{size:#x} overlaps or touches {m:?}"
            );
        }
    }

    #[test]
    fn free_range_is_near_aligned_and_free() {
        let exe = 0x5555_5555_0000u64;
        let maps = maps_of(&[
            (exe, exe + 0x10_0000, "/bin/x"),
            (exe + 0x10_0000, exe + 0x20_0000, "[heap]"),
            (0x7fff_f000_0000, 0x7fff_f002_0000, "[stack]"),
        ]);
        let at = maps
            .free_range_near(RemoteAddr(exe), 0x3000, 0x1000)
            .unwrap()
            .0;
        assert_eq!(at % PAGE_SIZE, 0);
        assert_free(&maps, at, 0x3000);
        assert!(
            at.abs_diff(exe) < 0x10_0000,
            "as close as possible: {at:#x}"
        );
        // Rounded up to pages and aligned as asked.
        let at = maps
            .free_range_near(RemoteAddr(exe), 1, 0x20_0000)
            .unwrap()
            .0;
        assert_eq!(at % 0x20_0000, 0);
        assert_free(&maps, at, PAGE_SIZE);
        // Bad arguments.
        assert!(maps.free_range_near(RemoteAddr(exe), 0, 4096).is_none());
        assert!(maps.free_range_near(RemoteAddr(exe), 4096, 3000).is_none());
    }

    #[test]
    fn free_range_respects_reach() {
        // Everything within ±2 GiB of the target is taken.
        let t = 0x4000_0000_0000u64;
        let maps = maps_of(&[(t - 0x8000_0000, t + 0x8000_0000, "/big")]);
        assert!(maps.free_range_near(RemoteAddr(t), 4096, 4096).is_none());
        // A hole just inside reach above the target fits exactly; a larger one does not.
        let maps = maps_of(&[(t - 0x8000_0000, t + 0x7fff_0000 - PAGE_SIZE, "/big")]);
        let at = maps
            .free_range_near(RemoteAddr(t), 0x10000, 4096)
            .unwrap()
            .0;
        assert_eq!(at, t + 0x7fff_0000);
        assert_eq!(at + 0x10000 - 1 - t, REL32_REACH);
        assert!(maps.free_range_near(RemoteAddr(t), 0x11000, 4096).is_none());
    }

    #[test]
    fn free_range_avoids_the_stack_growth_area() {
        let stack_end = 0x7ffd_0000_0000u64;
        let maps = maps_of(&[(stack_end - 0x21000, stack_end, "[stack]")]);
        let at = maps
            .free_range_near(RemoteAddr(stack_end - 0x10_0000), 4096, 4096)
            .unwrap()
            .0;
        assert!(
            at + PAGE_SIZE <= stack_end - DEFAULT_STACK_RESERVE - STACK_GUARD_GAP
                || at >= stack_end + PAGE_SIZE,
            "{at:#x} is where the stack grows"
        );
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(b"a\\012b"), b"a\nb");
        assert_eq!(unescape(b"a\\01"), b"a\\01");
        assert_eq!(unescape(b"\\134"), b"\\");
    }
}
