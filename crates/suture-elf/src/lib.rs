//! `suture-elf`: facts about linked ELF files (executables, shared libraries, debug files).
//!
//! Used by both sides of suture: `suture-build` (binding a patch to a deployed file) and
//! `suture-process` (resolving a patch's symbols in the files a target maps). Bytes in, facts
//! out: no ptrace, no process access, no `unsafe`; the only I/O is [`ElfInfo::read`].
//!
//! - [`ElfSymbols`]: build-id, load layout, statics by `STT_FILE`, globals (default symbol
//!   versions), `PT_TLS`, and the GOT-filling dynamic relocations of one file.
//! - [`ElfInfo`]: a file with its symbols, soname and `.comment`; [`bytes_at`] link-time
//!   addresses; [`build_id`] without parsing symbols; [`lookup`] a symbol as the differ names it.

mod info;
mod symbols;

pub use info::{build_id, build_id_of_file, bytes_at, lookup, ElfInfo};
pub use symbols::{DynReloc, ElfSymbols, SharedBytes, Sym};

/// Why a linked ELF file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ElfError {
    /// The file could not be read (the I/O error is part of the message, not a `source()`,
    /// so printing an error chain does not repeat it).
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: not an ELF file this loader understands: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: 32-bit objects are not supported")]
    Class32 { path: String },
}
