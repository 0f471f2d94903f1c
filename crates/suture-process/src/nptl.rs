//! Thread stacks glibc keeps after their thread exited, found with proof so the
//! suspended-frame scan ([`crate::suspended`]) can leave them out.
//!
//! glibc (`nptl`) keeps the stack of an exited thread: until the thread is joined when it is
//! joinable (on the list `_dl_stack_used`), and afterwards, or at once for a detached thread,
//! in a cache for the next `pthread_create` (the list `_dl_stack_cache`, up to 40 MiB). The
//! dead frames of the thread's last calls stay in it, and stale return addresses into replaced
//! code there made the scan refuse real daemons (tinyproxy). No code will return to them: a
//! thread created on a cached stack starts afresh at its top, and the memory belongs to glibc
//! (a program that kept a context in it would be using freed memory).
//!
//! **The proof, per stack.** Every fact comes from the target and from what libc publishes for
//! `libthread_db` (`_thread_db_*` symbols in libc.so.6's dynamic symbol table, glibc 2.34 and
//! later: the offsets of `struct pthread`'s `list` and `tid`, of `list_t`'s `next` and `prev`,
//! of `_rtld_global`'s `_dl_stack_used` and `_dl_stack_user`, and the sizes of `struct pthread`
//! and `list_t`). A range is left out of the scan only when all of this holds, read in the stop:
//! - its `struct pthread` is a node of `_dl_stack_used` or `_dl_stack_cache`, walked from the
//!   list head in `_rtld_global` with every node's `prev` pointing at the node before it and
//!   the walk closing at the head (a list glibc is changing at the stop fails this and proves
//!   nothing). `_dl_stack_cache` is not published (libthread_db does not need it): it is the
//!   `list_t` after `_dl_stack_user` in `struct rtld_global` (glibc 2.34 and later; checked in
//!   2.36's `ldsodefs.h`), and the same checks apply to every node of it. Stacks a program
//!   supplied (`pthread_attr_setstack`) are on `_dl_stack_user` or on no list: never left out,
//!   the memory is the program's;
//! - the descriptor's thread control block points at itself twice (x86-64 `tcbhead_t`: `tcb`
//!   and `self`), it sits at the top of a writable mapping (less than a page from its end), and
//!   no stopped thread's thread pointer (`fs_base`) is it;
//! - its `tid` is 0 or -1: the kernel clears it when the thread exits (`CLONE_CHILD_CLEARTID`),
//!   after the thread's last user instruction, and sets it at `clone` before the thread runs;
//!   `pthread_join` sets -1 once it has seen the 0 (a joined thread's stack, in the cache);
//! - the descriptor records its stack block (glibc's `stackblock`, `stackblock_size` and
//!   `guardsize`, three consecutive words whose offset is not published) whose writable part
//!   is exactly the mapping: block end at the mapping's end, block start plus guard at its
//!   start. The words are found by that exact agreement with the kernel's mapping; a stack
//!   whose mapping merged with a neighbour (a stack without a guard page) has none and is read;
//! - no stopped thread's stack pointer or thread pointer lies in the mapping.
//!
//! Anything else (another libc, an older glibc with `libpthread.so`, a list being changed, a
//! descriptor that does not check out) is read by the scan as before.

use std::ops::Range;

use crate::maps::Maps;
use crate::mem::ProcessMemory;
use crate::suspended::ThreadStack;
use crate::symbols::Mapped;

const PAGE: u64 = 4096;
/// More stacks than any list of glibc's can hold (the cache is bounded by 40 MiB): a walk
/// that does not close by then is not a list.
const MAX_NODES: usize = 1 << 16;

/// Where a target's glibc keeps its thread stacks, and the layout of its thread descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadLibrary {
    /// The list heads in the target: `_dl_stack_used` and `_dl_stack_cache`.
    heads: [u64; 2],
    /// Offset of `list` in `struct pthread`.
    list: u64,
    /// Offsets of `next` and `prev` in `list_t`.
    next: u64,
    prev: u64,
    /// Offset of `tid` in `struct pthread` (a 32-bit `pid_t`).
    tid: u64,
    /// `sizeof (struct pthread)`.
    size: u64,
}

impl ThreadLibrary {
    /// The thread library of a target from its mapped files (libc.so.6 with the
    /// `_thread_db_*` descriptors, ld.so with `_rtld_global`), reading the descriptors from
    /// the target's read-only data. `None` when the target has no such glibc.
    pub fn find(mapped: &[Mapped], mem: &ProcessMemory) -> Option<ThreadLibrary> {
        let read = |addr: u64, buf: &mut [u8]| mem.read(crate::ids::RemoteAddr(addr), buf).is_ok();
        let libc = mapped
            .iter()
            .find(|m| m.symbols.global("_thread_db_pthread_tid").is_some())?;
        let rtld = mapped
            .iter()
            .find_map(|m| Some(m.bias.wrapping_add(m.symbols.global("_rtld_global")?.value)))?;
        let at = |name: &str| {
            let s = libc.symbols.global(name)?;
            Some(libc.bias.wrapping_add(s.value))
        };
        // A field descriptor: { size in bits, element count, offset } (nptl_db's db_desc_t).
        let field = |name: &str, bits: u32| -> Option<u64> {
            let mut b = [0u8; 12];
            read(at(name)?, &mut b).then_some(())?;
            let word = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
            (word(0) == bits && word(1) == 1).then_some(u64::from(word(2)))
        };
        let size_of = |name: &str| -> Option<u64> {
            let mut b = [0u8; 4];
            read(at(name)?, &mut b).then_some(u64::from(u32::from_le_bytes(b)))
        };
        let list_t = size_of("_thread_db_sizeof_list_t")?;
        let lib = ThreadLibrary {
            heads: [
                rtld.wrapping_add(field("_thread_db_rtld_global__dl_stack_used", 128)?),
                rtld.wrapping_add(field("_thread_db_rtld_global__dl_stack_user", 128)?)
                    .wrapping_add(list_t),
            ],
            list: field("_thread_db_pthread_list", 128)?,
            next: field("_thread_db_list_t_next", 64)?,
            prev: field("_thread_db_list_t_prev", 64)?,
            tid: field("_thread_db_pthread_tid", 32)?,
            size: size_of("_thread_db_sizeof_pthread")?,
        };
        let fits = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= lib.size);
        (list_t == 16
            && lib.size <= 1 << 16
            && fits(lib.list, 16)
            && fits(lib.tid, 4)
            && fits(24, 0)
            && lib.next < 16
            && lib.prev < 16)
            .then_some(lib)
    }

    /// The writable mappings that are proven-dead thread stacks (see the module comment),
    /// read through `read` (the stopped target's memory) with the mappings and threads of the
    /// same stop.
    pub fn dead_stacks(
        &self,
        read: &dyn Fn(u64, &mut [u8]) -> bool,
        maps: &Maps,
        threads: &[ThreadStack],
    ) -> Vec<Range<u64>> {
        let word = |addr: u64| {
            let mut b = [0u8; 8];
            read(addr, &mut b).then(|| u64::from_le_bytes(b))
        };
        let mut dead = Vec::new();
        // The descriptors of the stopped threads (their thread pointers): alive, not read.
        let live: std::collections::HashSet<u64> = threads.iter().map(|t| t.fs_base).collect();
        for head in self.heads {
            let Some(nodes) = self.walk(head, &word) else {
                continue;
            };
            dead.extend(
                nodes
                    .into_iter()
                    .map(|node| node.wrapping_sub(self.list))
                    .filter(|pd| !live.contains(pd))
                    .filter_map(|pd| self.dead_stack(pd, read, maps, threads)),
            );
        }
        dead.sort_by_key(|r| r.start);
        dead.dedup();
        dead
    }

    /// The nodes of the circular list at `head`, if it is one: every node's `prev` is the node
    /// before it, and the walk comes back to the head.
    fn walk(&self, head: u64, word: &dyn Fn(u64) -> Option<u64>) -> Option<Vec<u64>> {
        let mut nodes = Vec::new();
        let mut before = head;
        let mut node = word(head.wrapping_add(self.next))?;
        while node != head {
            if nodes.len() >= MAX_NODES || word(node.wrapping_add(self.prev))? != before {
                return None;
            }
            nodes.push(node);
            before = node;
            node = word(node.wrapping_add(self.next))?;
        }
        (word(head.wrapping_add(self.prev))? == before).then_some(nodes)
    }

    /// The mapping of the stack whose descriptor is at `pd`, when it is proven dead.
    fn dead_stack(
        &self,
        pd: u64,
        read: &dyn Fn(u64, &mut [u8]) -> bool,
        maps: &Maps,
        threads: &[ThreadStack],
    ) -> Option<Range<u64>> {
        let mut desc = vec![0u8; self.size as usize];
        if !read(pd, &mut desc) {
            return None;
        }
        let w = |off: u64| {
            let o = off as usize;
            u64::from_le_bytes(desc[o..o + 8].try_into().expect("8 bytes"))
        };
        let t = self.tid as usize;
        let tid = i32::from_le_bytes(desc[t..t + 4].try_into().expect("4 bytes"));
        let exited = tid == 0 || tid == -1;
        if w(0) != pd || w(16) != pd || !exited || threads.iter().any(|t| t.fs_base == pd) {
            return None;
        }
        let m = maps.find(crate::ids::RemoteAddr(pd))?;
        let (start, end) = (m.start.0, m.end.0);
        let top = pd.checked_add(self.size)?;
        if !(m.perms.read && m.perms.write) || m.path().is_some() || top > end || end - top >= PAGE
        {
            return None;
        }
        // The stack block (stackblock, stackblock_size, guardsize) whose writable part is
        // exactly this mapping.
        let block = (0..self.size.saturating_sub(24))
            .step_by(8)
            .map(|k| (w(k), w(k + 8), w(k + 16)))
            .any(|(block, size, guard)| {
                block % PAGE == 0
                    && size % PAGE == 0
                    && guard % PAGE == 0
                    && guard < size
                    && block.checked_add(size) == Some(end)
                    && block.checked_add(guard) == Some(start)
            });
        let used = |a: u64| (start..end).contains(&a);
        (block && !threads.iter().any(|t| used(t.rsp) || used(t.fs_base))).then_some(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: ThreadLibrary = ThreadLibrary {
        heads: [0x1000, 0x1010],
        list: 0x40,
        next: 0,
        prev: 8,
        tid: 0x50,
        size: 0x100,
    };

    /// A fake target: little-endian words at addresses.
    #[derive(Default)]
    struct Image(std::collections::BTreeMap<u64, u8>);

    impl Image {
        fn put(&mut self, at: u64, v: u64) {
            for (i, b) in v.to_le_bytes().into_iter().enumerate() {
                self.0.insert(at + i as u64, b);
            }
        }
        fn read(&self, at: u64, buf: &mut [u8]) -> bool {
            for (i, b) in buf.iter_mut().enumerate() {
                match self.0.get(&(at + i as u64)) {
                    Some(v) => *b = *v,
                    None => return false,
                }
            }
            true
        }
        /// A thread descriptor at `pd` for a stack block [block, block + size) with `guard`.
        fn descriptor(&mut self, pd: u64, tid: u64, (block, size, guard): (u64, u64, u64)) {
            for off in (0..LIB.size).step_by(8) {
                self.put(pd + off, 0);
            }
            self.put(pd, pd);
            self.put(pd + 16, pd);
            self.put(pd + LIB.tid, tid);
            self.put(pd + 0x80, block);
            self.put(pd + 0x88, size);
            self.put(pd + 0x90, guard);
        }
        /// The circular list at `head` through the descriptors `pds`.
        fn list(&mut self, head: u64, pds: &[u64]) {
            let nodes: Vec<u64> = std::iter::once(head)
                .chain(pds.iter().map(|p| p + LIB.list))
                .collect();
            for (i, &n) in nodes.iter().enumerate() {
                self.put(n + LIB.next, nodes[(i + 1) % nodes.len()]);
                self.put(n + LIB.prev, nodes[(i + nodes.len() - 1) % nodes.len()]);
            }
        }
    }

    fn maps(text: &str) -> Maps {
        Maps::parse(text.as_bytes()).unwrap()
    }

    const MAPS: &str = "\
10000-11000 ---p 00000000 00:00 0
11000-20000 rw-p 00000000 00:00 0
20000-21000 ---p 00000000 00:00 0
21000-30000 rw-p 00000000 00:00 0
";

    fn thread(rsp: u64, fs_base: u64) -> ThreadStack {
        ThreadStack {
            rsp,
            fs_base,
            small_frames: Vec::new(),
        }
    }

    #[test]
    fn exited_threads_stacks_on_either_list_are_dead() {
        let mut img = Image::default();
        // A joinable thread that exited (used list) and a cached stack.
        img.descriptor(0x1ff00, 0, (0x10000, 0x10000, 0x1000));
        img.descriptor(0x2ff00, 0, (0x20000, 0x10000, 0x1000));
        img.list(0x1000, &[0x1ff00]);
        img.list(0x1010, &[0x2ff00]);
        let read = |a: u64, b: &mut [u8]| img.read(a, b);
        let live = [thread(0x7000_0000, 0x7000_1000)];
        assert_eq!(
            LIB.dead_stacks(&read, &maps(MAPS), &live),
            vec![0x11000..0x20000, 0x21000..0x30000]
        );
    }

    #[test]
    fn anything_not_proven_dead_is_kept() {
        let base = |img: &mut Image| {
            img.descriptor(0x1ff00, 0, (0x10000, 0x10000, 0x1000));
            img.list(0x1000, &[0x1ff00]);
            img.list(0x1010, &[]);
        };
        let nobody = [thread(0x7000_0000, 0x7000_1000)];
        let check = |img: &Image, maps_text: &str, threads: &[ThreadStack]| {
            let read = |a: u64, b: &mut [u8]| img.read(a, b);
            LIB.dead_stacks(&read, &maps(maps_text), threads)
        };
        let mut img = Image::default();
        base(&mut img);
        assert_eq!(check(&img, MAPS, &nobody), vec![0x11000..0x20000]);
        // A joined thread (pthread_join wrote -1 over the kernel's 0) is dead too.
        let mut joined = Image::default();
        base(&mut joined);
        joined.put(0x1ff00 + LIB.tid, 0xffff_ffff);
        assert_eq!(check(&joined, MAPS, &nobody), vec![0x11000..0x20000]);
        // A live thread: its tid is set.
        let mut live = Image::default();
        base(&mut live);
        live.put(0x1ff00 + LIB.tid, 1234);
        assert!(check(&live, MAPS, &nobody).is_empty());
        // A thread runs on it, or has its thread pointer there.
        assert!(check(&img, MAPS, &[thread(0x18000, 0x7000_1000)]).is_empty());
        assert!(check(&img, MAPS, &[thread(0x7000_0000, 0x1ff00)]).is_empty());
        // Not a thread control block (tcb or self is not its own address).
        let mut other = Image::default();
        base(&mut other);
        other.put(0x1ff00 + 16, 0);
        assert!(check(&other, MAPS, &nobody).is_empty());
        // A list being changed at the stop: a prev pointer that disagrees.
        let mut torn = Image::default();
        base(&mut torn);
        torn.put(0x1ff00 + LIB.list + LIB.prev, 0x1ff00 + LIB.list);
        assert!(check(&torn, MAPS, &nobody).is_empty());
        // The mapping merged with writable memory below it (no guard page): its stack block
        // no longer matches the mapping.
        let merged = "0f000-20000 rw-p 00000000 00:00 0\n";
        let mut noguard = Image::default();
        noguard.descriptor(0x1ff00, 0, (0x11000, 0xf000, 0));
        noguard.list(0x1000, &[0x1ff00]);
        noguard.list(0x1010, &[]);
        assert!(check(&noguard, merged, &nobody).is_empty());
        // ... or above it: the descriptor is not at its top.
        let above = "11000-28000 rw-p 00000000 00:00 0\n";
        assert!(check(&img, above, &nobody).is_empty());
        // A descriptor on no list (a stack the program supplied, after the join).
        let mut unlisted = Image::default();
        base(&mut unlisted);
        unlisted.list(0x1000, &[]);
        assert!(check(&unlisted, MAPS, &nobody).is_empty());
    }

    #[test]
    fn a_list_that_does_not_close_proves_nothing() {
        let mut img = Image::default();
        img.descriptor(0x1ff00, 0, (0x10000, 0x10000, 0x1000));
        img.list(0x1000, &[0x1ff00]);
        img.list(0x1010, &[]);
        // The node points at itself instead of back to the head.
        img.put(0x1ff00 + LIB.list + LIB.next, 0x1ff00 + LIB.list);
        let read = |a: u64, b: &mut [u8]| img.read(a, b);
        assert!(LIB
            .dead_stacks(&read, &maps(MAPS), &[thread(0x7000_0000, 0)])
            .is_empty());
    }
}
