//! The differ's verdict, as serialised by `suture diff --json`.
//!
//! The schema is documented in `docs/diff-json.md`; the `schema` field names its version.
//! Fields are only ever added within one schema version.

use serde::Serialize;

pub const SCHEMA: &str = "suture.diff/1";

/// Overall verdict; maps to the CLI exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Something changed (a function, or new functions or data) and every change can be
    /// live-patched (exit 0).
    Patchable,
    /// Nothing that runs changed and nothing was added (exit 3).
    NoChange,
    /// At least one change cannot be live-patched (exit 2).
    Unsupported,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonKind {
    /// The function's size differs.
    Size,
    /// Its machine code differs.
    Code,
    /// A relocation points at a different symbol, offset or kind of reference.
    Relocation,
    /// A string literal it uses has different contents.
    String,
    /// Read-only data it uses (a constant, a jump table, a `const` object) differs.
    Data,
    /// It is a cold/split part of an included function, or a function whose split part changed:
    /// the two are only ever patched together.
    Fragment,
    /// An entry of a descriptor table that belongs to it (kernel jump label, bug table,
    /// exception table, alternative, ...) differs: another key, other flags, other fixup.
    Metadata,
    /// Only source line numbers differ (`__LINE__` after lines moved); present only when such
    /// functions are kept on request.
    LineNumbers,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Reason {
    pub kind: ReasonKind,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChangedFunction {
    /// Name in the patched object.
    pub name: String,
    /// Name in the original object (clone numbers may differ).
    pub original_name: String,
    pub section: String,
    pub binding: crate::elf::Bind,
    /// Source file of a local (static) original, to tell same-named statics apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub original_size: u64,
    pub patched_size: u64,
    /// True for split parts (`.cold`) that are never entered by a call: they are copied with
    /// their parent but no jump is written at their start.
    pub fragment: bool,
    pub reasons: Vec<Reason>,
    /// The original function as the compiler wrote it, for `suture apply` to check that the
    /// running code is that build (absent for data and in older patch objects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_code: Option<OriginalCode>,
    /// Where frames waiting in a call from this function can continue in the other version
    /// (on-stack replacement, `crate::osr`), when the build asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub osr: Option<crate::osr::OsrTable>,
}

/// A function whose every code difference is a source line number: an immediate operand equal
/// to the line of its own instruction in both objects (per their DWARF line tables).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LineShift {
    pub function: String,
    pub file: String,
    /// (line in the original, line in the patched object) of each such operand.
    pub lines: Vec<(u64, u64)>,
    /// Whether it is in the patch anyway (asked for with `include_line_shifts`).
    pub included: bool,
}

/// A function's bytes in the original object with every instruction that has a relocation
/// left out: the linker fills those in, and may rewrite them (GOT and TLS relaxations), so only
/// the rest must equal the running code.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OriginalCode {
    /// The bytes, lowercase hex (masked bytes written as 00).
    pub bytes: String,
    /// The masked ranges: (offset, length) from the function's start.
    pub masked: Vec<(u32, u32)>,
}

impl OriginalCode {
    /// From a function's bytes and the offsets (from its start) of its relocations.
    pub fn new(code: &[u8], reloc_offsets: &[u64]) -> OriginalCode {
        let mut masked: Vec<(u32, u32)> = Vec::new();
        for insn in crate::x86::decode(code) {
            let range = insn.start..insn.start + u64::from(insn.len);
            if reloc_offsets.iter().any(|o| range.contains(o)) {
                match masked.last_mut() {
                    Some((at, len)) if u64::from(*at + *len) == insn.start => {
                        *len += u32::from(insn.len)
                    }
                    _ => masked.push((insn.start as u32, u32::from(insn.len))),
                }
            }
        }
        // A relocation the decoder did not place inside an instruction (data in code) masks
        // its own four bytes.
        for &o in reloc_offsets {
            if !masked
                .iter()
                .any(|&(at, len)| (u64::from(at)..u64::from(at + len)).contains(&o))
            {
                let end = (o + 4).min(code.len() as u64);
                masked.push((o as u32, (end - o) as u32));
            }
        }
        masked.sort_unstable();
        let mut bytes = code.to_vec();
        for &(at, len) in &masked {
            for b in &mut bytes[at as usize..(at + len) as usize] {
                *b = 0;
            }
        }
        OriginalCode {
            bytes: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            masked,
        }
    }

    /// The first offset where `running` (the function's bytes in the target) differs, outside
    /// the masked ranges; `None` when it is the same code. A different length differs at the
    /// shorter end.
    pub fn first_difference(&self, running: &[u8]) -> Option<usize> {
        let want: Vec<u8> = (0..self.bytes.len() / 2)
            .map(|i| u8::from_str_radix(&self.bytes[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        let masked = |i: usize| {
            self.masked
                .iter()
                .any(|&(at, len)| (at as usize..(at + len) as usize).contains(&i))
        };
        (0..want.len().max(running.len())).find(|&i| !masked(i) && want.get(i) != running.get(i))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SymbolKind {
    Function,
    Object,
    Tls,
    Ifunc,
    Unknown,
}

#[derive(Clone, Debug, Serialize)]
pub struct NewSymbol {
    pub name: String,
    pub kind: SymbolKind,
    pub section: String,
    pub binding: crate::elf::Bind,
    pub size: u64,
    /// For read-only data whose contents changed: the original object the copy stands in for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefScope {
    /// Defined by the original translation unit: found in the patched binary's symbol table.
    Original,
    /// Defined elsewhere (another unit, a library such as libc, the kernel).
    External,
}

#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    /// The symbol as named in the original object.
    pub name: String,
    pub kind: SymbolKind,
    pub binding: crate::elf::Bind,
    pub scope: RefScope,
    /// Source file of a local symbol (its `STT_FILE`), to tell same-named statics apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Size in the original object (0 for external symbols).
    pub size: u64,
    /// Name of the symbol in the emitted patch object.
    pub patch_symbol: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsupportedKind {
    /// The initial value of an existing writable object changed.
    DataValue,
    /// The size of an existing data object changed.
    DataSize,
    /// A symbol changed between function and data, or into/out of TLS.
    SymbolType,
    /// Code that runs only at start-up (and is freed afterwards) changed.
    InitCode,
    /// Patched code uses writable data that has no symbol, so the original cannot be found.
    UnnamedData,
    /// The object holds link-time-optimisation bytecode instead of final code.
    Lto,
    /// A new thread-local variable: a running process cannot grow its TLS blocks.
    NewTls,
    /// Several same-named statics that nothing tells apart (same users, same contents).
    AmbiguousData,
    /// Two names of one function (aliases) became separate functions.
    AliasSplit,
    /// An IFUNC resolver changed; it ran when the program was loaded.
    IfuncResolver,
    /// A new constructor (`.init_array`); it would never run in a running program.
    NewConstructor,
    /// Data holding code addresses or pointers that the running program may already have
    /// copied elsewhere, so a patched copy would not take effect.
    EscapedData,
    /// A branch out of a function that cannot be relocated (a short jump into a neighbour in
    /// a shared section).
    ShortBranch,
    /// A changed function has entries in a symbol-less table suture does not know, or a known
    /// descriptor table (kernel special section) fits none of the entry layouts suture knows
    /// (or different ones in the two objects, or not the one the target's headers declare).
    SpecialSection,
    /// A struct or union's size or member offsets, or a global's type size, differ between the
    /// original and patched builds: data the running code holds keeps the old layout.
    TypeLayout,
    /// With indirect-branch tracking (`CONFIG_X86_KERNEL_IBT`): patched code takes the address
    /// of a running kernel function whose entry has no `ENDBR` or a sealed one, because
    /// nothing took its address before (an indirect call through it would oops).
    IbtAddressTaken,
}

#[derive(Clone, Debug, Serialize)]
pub struct Unsupported {
    pub symbol: String,
    pub kind: UnsupportedKind,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub status: Status,
    /// The translation unit's source file name (first `STT_FILE` of the original object, the
    /// one the running code was built from; of the patched object if the original has none).
    pub source_file: Option<String>,
    pub changed_functions: Vec<ChangedFunction>,
    pub new_functions: Vec<NewSymbol>,
    pub new_data: Vec<NewSymbol>,
    pub references: Vec<Reference>,
    pub unsupported: Vec<Unsupported>,
    /// Functions of the original that the patched object no longer has (informational).
    pub removed_functions: Vec<String>,
    /// Functions whose code differs only in line numbers (`__LINE__` passed to a logging or
    /// assert call after lines moved), left out of the patch unless asked otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub line_shifts: Vec<LineShift>,
    /// Facts worth knowing that change no decision (different source file names, ...).
    pub notes: Vec<String>,
}
