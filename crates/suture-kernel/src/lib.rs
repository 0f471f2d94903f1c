//! Kernel live patches for the running Linux kernel.
//!
//! - [`livepatch`]: the runtime side, `/sys/kernel/livepatch`: load a patch module, wait for
//!   the transition (reporting the tasks that block it), unload, status.
//! - [`kbuild`]: build an out-of-tree module directory against a kernel headers tree.
//! - [`generate`], [`klp`], [`kallsyms`]: the livepatch module for a set of patched units.
//! - [`identity`]: a kernel build's release and vmlinux build-id, recorded in a patch module
//!   and checked before it loads.
//! - [`tree`]: the kernel source tree (checked against the headers, units compiled by kbuild).
//! - [`layouts`]: the descriptor-table layouts the tree's headers declare (a probe compiled
//!   against it), which the derived layouts of the units must agree with.
//!
//! The pipeline of `suture build --kernel` (diff, patched copies, compiles, diffs, generation)
//! is `suture_build::kernel`.

pub mod generate;
pub mod ibt;
pub mod identity;
pub mod kallsyms;
pub mod kbuild;
pub mod klp;
pub mod layouts;
pub mod livepatch;
pub mod tree;
