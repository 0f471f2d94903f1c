//! Suspended frames: return addresses into busy code that no thread's stack shows.
//!
//! A coroutine (`makecontext`/`swapcontext`, boost.context, hand-written switchers) that is
//! *suspended* inside a function keeps that function's frame on a stack no thread is using,
//! and its resume point in a saved context somewhere in the target's memory. The per-thread
//! check of [`crate::stack`] cannot see it. Patching then would leave old code running once
//! the coroutine resumes, mixed with the new code its later calls reach, which is the worst
//! outcome suture knows (a report of success while old code runs; real -O2 targets crashed).
//!
//! **The approximation, and why it is sound.** Any suspended call in a busy function left its
//! return address in writable memory: on the coroutine's stack (pushed by the call that
//! switched away, or by a call further up the chain) or in the saved context (`swapcontext`
//! stores the caller's return address as the saved `rip`). So, while the target is stopped,
//! suture reads every *present or swapped* page of every readable and writable mapping and
//! looks at each aligned 64-bit word: a word equal to an address right after a call
//! instruction inside a busy range counts as a suspended frame, and the switch waits (as for
//! a busy thread) and is refused at the timeout. What is left out, and why it cannot hold a
//! live frame:
//! - pages that are neither present nor swapped (never written: zero or the file's bytes);
//! - the part of a thread's own stack more than the 128-byte red zone below its stack pointer
//!   (dead: whatever runs there next overwrites it). A thread's own stack is the `[stack]`
//!   mapping or a mapping that also holds the thread's TLS block (glibc puts a thread's
//!   control block at the top of its stack). A coroutine stack carved out of the heap or a
//!   larger mapping gets no such exclusion: the memory below its stack pointer may be another
//!   coroutine's;
//! - in a thread whose stack unwinds completely, its frames smaller than [`MIN_STACK`]: they
//!   hold its own live data (uninitialised slots often keep stale return addresses of earlier
//!   calls) and are too small to hold a coroutine's stack; larger frames (a local array used
//!   as a coroutine stack) are read;
//! - below the stack pointer of a thread parked in a return stub, even the red zone (the stub
//!   uses none; what lies there is the dead frame of the function that just returned);
//! - the stacks glibc keeps for threads that exited (joinable ones not yet joined, and its
//!   cache for reuse), when [`crate::nptl`] proves them dead from glibc's own lists and the
//!   thread ids the kernel cleared: no code returns into their stale frames;
//! - mappings that cannot be read (device memory): counted and logged.
//!
//! A word only counts if it points right after a call (any encoding: `e8`, `ff /2`, `ff /3`
//! with prefixes), which leaves out function pointers and most data that happens to point
//! into the code, and if the frame of the function it returns into could lie above it
//! ([`could_be_frame`]: that function's exact unwind rule finds, at its CFA - 8, its own
//! return address: code, or 0 or a sentinel above a 16-byte aligned CFA), which leaves out
//! return addresses programs record as data (allocators that note their callers). Stale
//! return addresses remain possible (a finished coroutine's stack that was not freed, an
//! exited thread's stack the proof does not cover); they make the switch wait and then
//! refuse, never pass: a refusal names the address and the mapping so the operator can see
//! why.
//!
//! Pointer-mangled saved state (glibc's `jmp_buf`) is invisible to the scan, but a coroutine
//! that switched away with `setjmp`/`longjmp` called out of the busy function to do it, and
//! that call's return address is on the coroutine's stack.
//!
//! **Cost.** Memory read before the stop may change before it, so what decides is read in
//! the stop. Where the kernel tracks soft-dirty pages ([`soft_dirty_supported`]), [`prescan`]
//! clears the target's soft-dirty bits and reads everything while it runs; the stop then reads
//! the pagemap and only the pages written since (plus pages where the pre-scan saw a return
//! site, and mappings that are new). Without soft-dirty tracking the stop reads all resident
//! writable memory (about 6 GB/s: `docs/benchmarks.md`). `ApplyOptions::scan_suspended` turns
//! the scan off for an apply, for operators who know the target has no coroutines; a revert
//! always scans.

use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::ids::{Pid, RemoteAddr};
use crate::maps::Maps;
use crate::mem::ProcessMemory;
use crate::stack::BusyRange;

const PAGE: u64 = 4096;
/// The x86-64 System V red zone below the stack pointer, which leaf code may use.
pub const RED_ZONE: u64 = 128;
/// Largest single read of target memory.
const CHUNK: u64 = 1 << 20;
/// Bytes the stop's scan reads with one `process_vm_readv` (several pieces at once).
const BATCH: u64 = 8 << 20;

/// Every address right after a call instruction inside the busy ranges (sorted), with the
/// index of its range.
#[derive(Debug, Default)]
pub struct ReturnSites {
    sites: Vec<(u64, usize)>,
    /// Where the target's glibc keeps the stacks of exited threads, which the scan leaves
    /// out when they are proven dead ([`crate::nptl`]).
    library: Option<crate::nptl::ThreadLibrary>,
}

impl ReturnSites {
    /// Reads the code of `busy` from the target (while it runs: the code is not changing) and
    /// finds the return address of every call in it.
    pub fn read(mem: &ProcessMemory, busy: &[BusyRange]) -> ReturnSites {
        ReturnSites::read_except(mem, busy, &[])
    }

    /// [`read`](ReturnSites::read) of `busy` less the ranges of `callless`: code known to
    /// make no calls (suture's own routines), where bytes that look like a call are not one.
    pub fn read_except(
        mem: &ProcessMemory,
        busy: &[BusyRange],
        callless: &[Range<u64>],
    ) -> ReturnSites {
        let mut sites = Vec::new();
        let pieces = busy.iter().enumerate().flat_map(|(i, b)| {
            without(b.range.clone(), callless)
                .into_iter()
                .map(move |r| (i, r))
        });
        for (i, range) in pieces {
            // A call that ends inside the range may start up to 15 bytes before it.
            let lead = 15.min(range.start);
            let from = range.start - lead;
            let len = (range.end - from) as usize;
            let code = match mem.read_vec(RemoteAddr(from), len) {
                Ok(code) => code,
                Err(_) => {
                    // Unreadable code: every position counts (the conservative answer).
                    sites.extend((range.start + 1..=range.end).map(|a| (a, i)));
                    continue;
                }
            };
            sites.extend(
                call_ends(&code)
                    .filter(|&end| end > lead as usize)
                    .map(|end| (from + end as u64, i)),
            );
        }
        sites.sort_unstable();
        sites.dedup_by_key(|s| s.0);
        ReturnSites {
            sites,
            library: None,
        }
    }

    /// The same sites, with the target's thread library (found before the stop), whose
    /// proven-dead thread stacks the scan then leaves out.
    pub fn with_thread_library(self, library: Option<crate::nptl::ThreadLibrary>) -> ReturnSites {
        ReturnSites { library, ..self }
    }

    /// Builds the set from known return addresses (tests).
    pub fn from_sites(mut sites: Vec<(u64, usize)>) -> ReturnSites {
        sites.sort_unstable();
        ReturnSites {
            sites,
            library: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    fn lookup(&self, word: u64) -> Option<usize> {
        let first = self.sites.first()?.0;
        let last = self.sites.last()?.0;
        if word < first || word > last {
            return None;
        }
        self.sites
            .binary_search_by_key(&word, |s| s.0)
            .ok()
            .map(|i| self.sites[i].1)
    }

    /// The first aligned word of `bytes` (read from `base`) that is a return site:
    /// (its address, its value, the busy range index).
    pub fn find_in(&self, base: u64, bytes: &[u8]) -> Option<(u64, u64, usize)> {
        let skip = (base.wrapping_neg() % 8) as usize;
        let words = bytes.get(skip..)?;
        words.chunks_exact(8).enumerate().find_map(|(n, w)| {
            let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            self.lookup(v)
                .map(|i| (base + skip as u64 + 8 * n as u64, v, i))
        })
    }
}

/// Whether some call instruction (`e8 rel32`, or `ff /2` or `ff /3` with any addressing
/// form, after legacy and REX prefixes) ends exactly at `end` in `code`. Errs towards yes:
/// a false match only makes a stale word count.
pub fn call_ends_at(code: &[u8], end: usize) -> bool {
    (end.saturating_sub(15)..end.saturating_sub(1))
        .any(|start| call_length(&code[start..end]).is_some_and(|n| start + n == end))
}

/// Every position of `code` where a call instruction ends (the set of `end`s for which
/// [`call_ends_at`] holds), in one pass over the possible starts: the length of a call at a
/// start depends only on its own bytes, so each start is decoded once, not once for each of
/// the 14 ends it could reach.
fn call_ends(code: &[u8]) -> impl Iterator<Item = usize> + '_ {
    (0..code.len()).filter_map(move |start| {
        let n = call_length(&code[start..code.len().min(start + 15)])?;
        (start + n <= code.len()).then_some(start + n)
    })
}

/// The length of the call instruction at the start of `b`, if it is one.
fn call_length(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < 4
        && matches!(
            b.get(i)?,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf2 | 0xf3
        )
    {
        i += 1;
    }
    if (0x40..=0x4f).contains(b.get(i)?) {
        i += 1;
    }
    match *b.get(i)? {
        0xe8 => Some(i + 5),
        0xff => {
            let modrm = *b.get(i + 1)?;
            if !matches!((modrm >> 3) & 7, 2 | 3) {
                return None;
            }
            let (md, rm) = (modrm >> 6, modrm & 7);
            let mut n = i + 2;
            if md == 3 {
                return Some(n);
            }
            if rm == 4 {
                let sib = *b.get(n)?;
                n += 1;
                if md == 0 && sib & 7 == 5 {
                    return Some(n + 4);
                }
            }
            Some(match md {
                0 if rm == 5 => n + 4,
                0 => n,
                1 => n + 1,
                _ => n + 4,
            })
        }
        _ => None,
    }
}

/// A return address into busy code found outside every thread's live stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuspendedFrame {
    /// The busy function (or patch) the word returns into.
    pub name: String,
    /// Where the word is.
    pub at: u64,
    /// The word: an address right after a call in `name`.
    pub returns_to: u64,
    /// The mapping holding it, as `/proc/PID/maps` names it (`[heap]`, a path, or
    /// "anonymous").
    pub mapping: String,
}

/// What a scan read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub mappings: usize,
    pub bytes: u64,
    /// Pages that were present (or swapped) but could not be read.
    pub unreadable_pages: u64,
    /// Stacks of exited threads left out (proven dead, [`crate::nptl`]).
    pub dead_stacks: usize,
    /// Return addresses found that are no suspended call (see [`could_be_frame`]).
    pub not_frames: usize,
}

/// What a scan made of the target before the stop (see [`prescan`]): the mappings it read
/// and the pages where it found a return site. Valid while the soft-dirty bits it cleared
/// are not cleared by anyone else.
#[derive(Debug, Default)]
pub struct PreScan {
    mappings: Vec<Range<u64>>,
    hit_pages: std::collections::HashSet<u64>,
    pub stats: ScanStats,
}

/// Whether this kernel tracks soft-dirty pages (`CONFIG_MEM_SOFT_DIRTY`): checked once on a
/// page of suture's own, which must read soft-dirty after a write that follows a clear.
pub fn soft_dirty_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let probe = || -> std::io::Result<bool> {
            let mut page = vec![0u8; 2 * PAGE as usize];
            let at = (page.as_ptr() as u64).next_multiple_of(PAGE);
            let slot = (at - page.as_ptr() as u64) as usize;
            page[slot] = 1;
            std::hint::black_box(&mut page);
            std::fs::write("/proc/self/clear_refs", "4")?;
            page[slot] = 2;
            std::hint::black_box(&mut page);
            let pagemap = std::fs::File::open("/proc/self/pagemap")?;
            let mut e = [0u8; 8];
            pagemap.read_exact_at(&mut e, at / PAGE * 8)?;
            let dirty = u64::from_le_bytes(e) & SOFT_DIRTY != 0;
            std::hint::black_box(&page);
            Ok(dirty)
        };
        probe().unwrap_or(false)
    })
}

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const SOFT_DIRTY: u64 = 1 << 55;

/// The part of the scan that can run while the target runs, when the kernel tracks
/// soft-dirty pages: clears the target's soft-dirty bits, then reads all its resident
/// writable memory, noting the pages that hold a return site (found while running, so not
/// conclusive). The stop then reads only pages written since, pages noted here, and mappings
/// that are new. `None` when soft-dirty tracking is unavailable: the stop reads everything.
///
/// Clearing soft-dirty bits is visible to other users of them (CRIU's incremental dumps of the
/// same process would copy more than needed once).
pub fn prescan(pid: Pid, mem: &ProcessMemory, sites: &ReturnSites) -> Option<PreScan> {
    if sites.is_empty() || !soft_dirty_supported() {
        return None;
    }
    let dir = crate::maps::live_proc_dir(pid);
    std::fs::write(dir.join("clear_refs"), "4").ok()?;
    let maps = Maps::read(pid).ok()?;
    let pagemap = std::fs::File::open(dir.join("pagemap")).ok()?;
    let mut pre = PreScan::default();
    let mut buf = Vec::new();
    for m in writable(&maps) {
        pre.mappings.push(m.start.0..m.end.0);
        pre.stats.mappings += 1;
        for run in page_runs(&pagemap, m.start.0..m.end.0, |_, e| {
            e & (PRESENT | SWAPPED) != 0
        }) {
            read_runs(mem, &run, &mut buf, &mut pre.stats, |at, bytes| {
                let mut from = 0;
                while let Some((addr, _, _)) = sites.find_in(at + from as u64, &bytes[from..]) {
                    pre.hit_pages.insert(addr / PAGE);
                    from = (addr + 8 - at) as usize;
                }
                false
            });
        }
    }
    Some(pre)
}

fn writable(maps: &Maps) -> impl Iterator<Item = &crate::maps::Mapping> {
    maps.iter()
        .filter(|m| m.perms.read && m.perms.write && !m.is_pseudo("vvar"))
}

/// Reads `run` in chunks and hands each to `each` (which returns true to stop).
fn read_runs(
    mem: &ProcessMemory,
    run: &Range<u64>,
    buf: &mut Vec<u8>,
    stats: &mut ScanStats,
    mut each: impl FnMut(u64, &[u8]) -> bool,
) -> bool {
    let mut at = run.start;
    while at < run.end {
        let len = (run.end - at).min(CHUNK);
        buf.resize(len as usize, 0);
        if mem.read(RemoteAddr(at), buf).is_err() {
            stats.unreadable_pages += len.div_ceil(PAGE);
        } else {
            stats.bytes += len;
            if each(at, buf) {
                return true;
            }
        }
        at += len;
    }
    false
}

/// Scans the stopped target's writable memory for suspended frames in `busy`.
/// `threads` describes each thread's stack. `maps` must be read inside the same stop. With `pre` (a [`prescan`] of this target), a mapping it read is
/// read again only where pages were written since, or held a return site then.
pub fn scan(
    pid: Pid,
    mem: &ProcessMemory,
    (proc_dir, maps, unwind): (&std::path::Path, &Maps, Option<&crate::stack::UnwindInfo>),
    threads: &[ThreadStack],
    sites: &ReturnSites,
    busy: &[BusyRange],
    pre: Option<&PreScan>,
) -> crate::error::Result<(Option<SuspendedFrame>, ScanStats)> {
    let mut stats = ScanStats::default();
    if sites.is_empty() {
        return Ok((None, stats));
    }
    let pagemap_path = proc_dir.join("pagemap");
    let pagemap =
        std::fs::File::open(&pagemap_path).map_err(|source| crate::error::Error::Proc {
            path: pagemap_path.clone(),
            source,
            state: crate::error::TargetState::Untouched,
        })?;
    let small: Vec<Range<u64>> = threads
        .iter()
        .flat_map(|t| t.small_frames.iter().cloned())
        .collect();
    // Stacks glibc keeps for threads that exited: their frames never run again.
    let dead = sites.library.as_ref().map_or_else(Vec::new, |lib| {
        lib.dead_stacks(&|a, b| mem.read(RemoteAddr(a), b).is_ok(), maps, threads)
    });
    if !dead.is_empty() {
        tracing::debug!(
            pid = pid.0,
            stacks = dead.len(),
            "stacks of exited threads left out of the suspended-frame scan"
        );
    }
    stats.dead_stacks = dead.len();
    // Every piece to read, with its mapping; read in batches of one `process_vm_readv` each
    // (a few dozen pieces of a page or two are typical: one call instead of one per piece).
    let mut pieces: Vec<(Range<u64>, &crate::maps::Mapping)> = Vec::new();
    for m in writable(maps) {
        let live = live_part(m.start.0..m.end.0, m.is_pseudo("stack"), threads);
        if live.is_empty() || dead.contains(&(m.start.0..m.end.0)) {
            continue;
        }
        stats.mappings += 1;
        let known = pre.filter(|p| p.mappings.contains(&(m.start.0..m.end.0)));
        let runs = page_runs(&pagemap, live, |page, e| match known {
            Some(p) => {
                e & (PRESENT | SWAPPED) != 0 && (e & SOFT_DIRTY != 0 || p.hit_pages.contains(&page))
            }
            None => e & (PRESENT | SWAPPED) != 0,
        });
        for run in runs.into_iter().flat_map(|r| without(r, &small)) {
            let mut at = run.start;
            while at < run.end {
                let end = run.end.min(at + CHUNK);
                pieces.push((at..end, m));
                at = end;
            }
        }
    }
    let mut bufs: Vec<(RemoteAddr, Vec<u8>)> = Vec::new();
    let mut next = 0;
    while next < pieces.len() {
        // A batch: up to BATCH bytes (at least one piece), buffers reused across batches.
        let mut total = 0;
        let mut count = 0;
        while next + count < pieces.len() && (count == 0 || total < BATCH) {
            let r = &pieces[next + count].0;
            total += r.end - r.start;
            count += 1;
        }
        bufs.resize_with(count, || (RemoteAddr(0), Vec::new()));
        for ((addr, buf), (r, _)) in bufs.iter_mut().zip(&pieces[next..next + count]) {
            *addr = RemoteAddr(r.start);
            buf.resize((r.end - r.start) as usize, 0);
        }
        let filled = mem.read_many(&mut bufs[..count]);
        for (((addr, buf), ok), (_, m)) in bufs[..count]
            .iter()
            .zip(filled)
            .zip(&pieces[next..next + count])
        {
            if !ok {
                stats.unreadable_pages += (buf.len() as u64).div_ceil(PAGE);
                continue;
            }
            stats.bytes += buf.len() as u64;
            let mut from = 0;
            while let Some((at, value, i)) = sites.find_in(addr.0 + from as u64, &buf[from..]) {
                from = (at + 8 - addr.0) as usize;
                if unwind.is_some_and(|u| !could_be_frame(u, mem, maps, at, value)) {
                    stats.not_frames += 1;
                    tracing::debug!(pid = pid.0, at = %RemoteAddr(at), returns_to = %RemoteAddr(value), "a return address whose function's frame has no return address above it: a record of a caller, not a suspended call");
                    continue;
                }
                let mapping = m
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| match &m.name {
                        crate::maps::MapName::Pseudo(n) => format!("[{n}]"),
                        _ => "anonymous".into(),
                    });
                return Ok((
                    Some(SuspendedFrame {
                        name: busy[i].name.clone(),
                        at,
                        returns_to: value,
                        mapping,
                    }),
                    stats,
                ));
            }
        }
        next += count;
    }
    if stats.unreadable_pages > 0 {
        tracing::warn!(
            pid = pid.0,
            pages = stats.unreadable_pages,
            "some resident writable pages could not be read for the suspended-frame scan"
        );
    }
    Ok((None, stats))
}

/// Whether the return address `value` into a busy function f, stored at `at`, can be the
/// return slot of a suspended call in f. If it is, f's frame lies right above it and f's exact
/// unwind rule at `value` (stack-pointer based, from `.eh_frame`) gives its CFA and, at CFA - 8,
/// f's own return address. A frame counts when that return address is in executable memory
/// (after the call that entered f, or the code a context library made a coroutine's first
/// function return to: glibc's `__start_context`, boost.context's `finish`), whatever the
/// stack's alignment: a hand-written switcher, or code built with
/// `-mpreferred-stack-boundary=3`, need not keep the psABI's 16-byte alignment. It also counts
/// when the CFA is 16-byte aligned, as the psABI and context libraries make a coroutine's first
/// frame, and the word is 0 or no user address (a first function that never returns, or a
/// library's sentinel such as minicoro's `0xdeaddeaddeaddead`).
///
/// Anything else is a record of a caller kept as data, not a frame: haproxy built with
/// `DEBUG_MEMORY_POOLS` (as Debian builds it) stores the return address of every pool
/// allocation at the end of the allocated item (there, the frame it would belong to has a
/// misaligned CFA and 0 above it). Whatever cannot be checked (no rule, a frame-pointer rule,
/// unreadable memory) counts as a frame.
///
/// A context saved by a signal handler that switches away (preemptive green threads) holds
/// the interrupted instruction in `gregs[REG_RIP]` with the stack pointer right below it in
/// `gregs[REG_RSP]`: f's frame is then the one above that stack pointer, which is tried too.
/// (The scan sees such a context only when the instruction follows a call.)
fn could_be_frame(
    unwind: &crate::stack::UnwindInfo,
    mem: &ProcessMemory,
    maps: &Maps,
    at: u64,
    value: u64,
) -> bool {
    let read = |a: u64| mem.read_u64(RemoteAddr(a)).ok();
    let plausible = |slot: u64| match unwind.suspended_frame(value, slot, read) {
        None => true,
        Some((cfa, caller)) => {
            maps.find(RemoteAddr(caller)).is_some_and(|m| m.perms.exec)
                || (cfa % 16 == 0 && (caller == 0 || caller >= USER_END))
        }
    };
    if plausible(at) {
        return true;
    }
    // `gregs[REG_RSP]` right below `gregs[REG_RIP]`: a stack pointer into writable memory.
    read(at.wrapping_sub(8)).is_some_and(|rsp| {
        rsp > 8
            && maps
                .find(RemoteAddr(rsp - 8))
                .is_some_and(|m| m.perms.write)
            && plausible(rsp - 8)
    })
}

/// The end of the user half of the x86-64 address space: a word at or above it is no user
/// address (a sentinel, or not an address at all).
const USER_END: u64 = 0x0000_8000_0000_0000;

/// `range` less every range of `holes`, in order.
fn without(range: Range<u64>, holes: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut holes: Vec<&Range<u64>> = holes
        .iter()
        .filter(|h| h.start < range.end && h.end > range.start)
        .collect();
    holes.sort_by_key(|h| h.start);
    let mut out = Vec::new();
    let mut at = range.start;
    for h in holes {
        if h.start > at {
            out.push(at..h.start);
        }
        at = at.max(h.end);
    }
    if at < range.end {
        out.push(at..range.end);
    }
    out
}

/// What the scan needs of one stopped thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadStack {
    pub rsp: u64,
    /// The TLS base (`fs_base`): glibc puts it at the top of the thread's own stack mapping.
    pub fs_base: u64,
    /// For a thread whose stack unwound completely: its frames smaller than [`MIN_STACK`]
    /// (stack pointer to CFA). They hold its own live data, often stale copies of return
    /// addresses in uninitialised slots, and are too small to hold a coroutine's stack.
    pub small_frames: Vec<Range<u64>>,
}

/// The smallest stack a coroutine can run on (`MINSIGSTKSZ`): a frame smaller than this
/// cannot contain one.
pub const MIN_STACK: u64 = 2048;

/// The part of `range` that can hold a suspended frame: without the stack below the stack
/// pointer of a thread whose own stack it is (`main_stack`, or the thread's TLS base lies in it
/// as well). Below it lie dead frames, full of stale return addresses, and at most the red zone
/// of the function the thread runs, which holds that function's data: neither is a context
/// something will switch back to (a coroutine's saved frames are on a stack no thread runs on,
/// which is read whole).
fn live_part(range: Range<u64>, main_stack: bool, threads: &[ThreadStack]) -> Range<u64> {
    let lowest_live = threads
        .iter()
        .filter(|t| range.contains(&t.rsp) && (main_stack || range.contains(&t.fs_base)))
        .map(|t| t.rsp & !7)
        .min();
    match lowest_live {
        Some(from) => from.max(range.start)..range.end,
        None => range,
    }
}

/// The runs of pages of `range` whose `/proc/PID/pagemap` entry `want(page, entry)` accepts.
/// When the pagemap cannot be read, the whole range (the conservative answer).
fn page_runs(
    pagemap: &std::fs::File,
    range: Range<u64>,
    want: impl Fn(u64, u64) -> bool,
) -> Vec<Range<u64>> {
    let first = range.start / PAGE;
    let last = range.end.div_ceil(PAGE);
    let mut runs: Vec<Range<u64>> = Vec::new();
    let mut entries = vec![0u8; 8 * 4096];
    let mut page = first;
    while page < last {
        let n = (last - page).min(4096);
        let chunk = &mut entries[..8 * n as usize];
        if pagemap.read_exact_at(chunk, page * 8).is_err() {
            return vec![range];
        }
        for (k, e) in chunk.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            let p = page + k as u64;
            if !want(p, e) {
                continue;
            }
            let start = (p * PAGE).max(range.start);
            let end = ((p + 1) * PAGE).min(range.end);
            match runs.last_mut() {
                Some(r) if r.end == start => r.end = end,
                _ => runs.push(start..end),
            }
        }
        page += n;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_every_call_encoding() {
        // (bytes, length) of calls gcc and hand-written code use.
        let calls: &[&[u8]] = &[
            &[0xe8, 1, 2, 3, 4],                      // call rel32
            &[0xff, 0xd0],                            // call *%rax
            &[0x41, 0xff, 0xd3],                      // call *%r11
            &[0x3e, 0xff, 0xd0],                      // notrack call *%rax
            &[0xff, 0x15, 1, 2, 3, 4],                // call *x(%rip)
            &[0xff, 0x10],                            // call *(%rax)
            &[0xff, 0x50, 0x08],                      // call *8(%rax)
            &[0xff, 0x90, 1, 2, 3, 4],                // call *0x4030201(%rax)
            &[0xff, 0x14, 0x24],                      // call *(%rsp)
            &[0xff, 0x54, 0x24, 0x08],                // call *8(%rsp)
            &[0xff, 0x14, 0xc5, 1, 2, 3, 4],          // call *x(,%rax,8)
            &[0x41, 0xff, 0x94, 0x24, 1, 2, 3, 4],    // call *x(%r12)
            &[0x64, 0xff, 0x14, 0x25, 0x10, 0, 0, 0], // call *%fs:0x10
            &[0xf2, 0xe8, 1, 2, 3, 4],                // bnd call rel32
        ];
        for c in calls {
            let mut code = vec![0x90u8; 20];
            code.extend_from_slice(c);
            assert!(call_ends_at(&code, code.len()), "{c:x?}");
            assert_eq!(call_length(c), Some(c.len()), "{c:x?}");
        }
        // Not calls: jmp *%rax (ff /4), push (ff /6), ret, nops.
        for c in [
            &[0xffu8, 0xe0][..],
            &[0xff, 0x30],
            &[0xc3],
            &[0x90, 0x90, 0x90],
        ] {
            let mut code = vec![0x90u8; 20];
            code.extend_from_slice(c);
            assert!(!call_ends_at(&code, code.len()), "{c:x?}");
        }
    }

    #[test]
    fn one_pass_finds_the_same_call_ends_as_every_end_checked() {
        // Bytes where calls and their prefixes are frequent, with calls overlapping.
        let mut code = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pick = [0xe8, 0xff, 0x41, 0x66, 0xf2, 0x15, 0x14, 0x24, 0x90, 0xd0];
            code.push(if x % 3 == 0 {
                (x >> 8) as u8
            } else {
                pick[(x >> 16) as usize % 10]
            });
        }
        let every: Vec<usize> = (1..=code.len())
            .filter(|&e| call_ends_at(&code, e))
            .collect();
        let mut once: Vec<usize> = call_ends(&code).collect();
        once.sort_unstable();
        once.dedup();
        assert!(every.len() > 1000, "{}", every.len());
        assert_eq!(once, every);
    }

    #[test]
    fn finds_only_aligned_return_sites() {
        let sites = ReturnSites::from_sites(vec![(0x1005, 0), (0x2010, 1)]);
        let mut bytes = vec![0u8; 64];
        // A function pointer and an unrelated word are not sites.
        bytes[0..8].copy_from_slice(&0x1000u64.to_le_bytes());
        bytes[8..16].copy_from_slice(&0x1006u64.to_le_bytes());
        // A site at an unaligned place is not a frame.
        bytes[17..25].copy_from_slice(&0x1005u64.to_le_bytes());
        assert_eq!(sites.find_in(0x7000, &bytes), None);
        bytes[40..48].copy_from_slice(&0x2010u64.to_le_bytes());
        assert_eq!(sites.find_in(0x7000, &bytes), Some((0x7028, 0x2010, 1)));
        // A buffer that starts unaligned is read from its first aligned word.
        assert_eq!(
            sites.find_in(0x7004, &bytes[4..]),
            Some((0x7028, 0x2010, 1))
        );
    }

    #[test]
    fn the_dead_stack_below_a_stack_pointer_is_left_out() {
        let t = |rsp: u64, fs_base: u64| ThreadStack {
            rsp,
            fs_base,
            small_frames: Vec::new(),
        };
        let live = |main: bool, threads: &[ThreadStack]| live_part(0x1000..0x9000, main, threads);
        // The main stack, and a thread stack holding its thread's TLS at the top.
        assert_eq!(live(true, &[t(0x8000, 0)]), 0x8000..0x9000);
        let tls = 0x8f00;
        assert_eq!(live(false, &[t(0x8000, tls)]), 0x8000..0x9000);
        assert_eq!(
            live(false, &[t(0x8000, tls), t(0x6008, tls)]),
            0x6008..0x9000
        );
        assert_eq!(live(true, &[t(0xa000, 0)]), 0x1000..0x9000);
        assert_eq!(live(true, &[t(0x1010, 0)]), 0x1010..0x9000);
        // A stack pointer in memory that is not the thread's own stack (a coroutine stack in
        // the heap): what lies below it may be another coroutine's, so nothing is left out.
        assert_eq!(live(false, &[t(0x8000, 0x20000)]), 0x1000..0x9000);
    }

    #[test]
    fn small_frames_are_cut_out_of_a_range() {
        let whole = without(0x1000..0x2000, &[]);
        assert_eq!((whole.len(), whole[0].clone()), (1, 0x1000..0x2000));
        assert_eq!(
            without(
                0x1000..0x2000,
                &[0x1100..0x1200, 0x1180..0x1300, 0x1f00..0x2100]
            ),
            vec![0x1000..0x1100, 0x1300..0x1f00]
        );
        let everything = [0x0..0x3000, 0x1000..0x1000];
        assert!(without(0x1000..0x2000, &everything).is_empty());
    }
}
