//! Kernel live patches for the running Linux kernel.
//!
//! - [`livepatch`]: the runtime side, `/sys/kernel/livepatch`: load a patch module, wait for
//!   the transition (reporting the tasks that block it), unload, status.
//! - [`kbuild`]: build an out-of-tree module directory against a kernel headers tree.

pub mod generate;
pub mod kallsyms;
pub mod kbuild;
pub mod klp;
pub mod livepatch;
pub mod tree;
