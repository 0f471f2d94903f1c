//! Facts about linked ELF files, from `suture-elf` (shared with `suture-process`, so the
//! builder needs no process code).

pub use suture_elf::{build_id, bytes_at, lookup, ElfError, ElfInfo, ElfSymbols, Sym};
