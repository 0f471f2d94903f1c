//! `suture-process`: live patching of running processes.
//!
//! The only crate of suture that calls ptrace. Its promise: a target is left running either
//! fully patched or untouched, and never receives a stray stop or trap after suture detaches.
//!
//! Modules:
//! - [`ids`]: typed process, thread and address values.
//! - [`link`]: laying out a patch object for a given place in a target and applying its
//!   relocations (pure computation: no ptrace, testable on bytes).
//! - [`seccomp`]: whether the target's seccomp filters let suture's injected system calls run
//!   (a classic-BPF interpreter over the filters fetched from every thread).
pub mod apply;
pub mod bundle;
pub mod commit;
pub mod error;
pub mod failpoint;
pub mod header;
pub mod hexjson;
pub mod ids;
pub mod ifunc;
pub mod link;
pub mod maps;
pub mod mem;
pub mod nptl;
pub mod osr;
pub mod remote;
pub mod retstub;
pub mod seccomp;
pub mod stack;
pub mod stop;
pub mod suspended;
pub mod symbols;
mod sys;
pub mod targets;
pub mod transition;
