//! Laying out a patch object at an address in a target and applying its relocations.
//!
//! Pure computation on bytes: no ptrace. The caller plans the layout ([`Plan::new`]) to learn
//! how much memory to reserve, picks a base address near the code being patched, resolves
//! symbols in the target, and links ([`Plan::link`]); the result is the bytes of each segment
//! and the address of every patch function.
//!
//! Region layout (each segment page-aligned, protections applied by the caller):
//! ```text
//! base ─ header (r--, reserved for the caller) ─ text (r-x: code, far-call stubs)
//!      ─ rodata (r--: read-only data, .eh_frame, GOT slots) ─ data (rw-: data, bss)
//! ```
//! GOT slots are created for GOT-relative references (the static linker would have relaxed
//! them; a runtime loader must provide them). Calls that cannot reach their target with a
//! 32-bit displacement go through a 14-byte absolute stub (`jmp *0(%rip); .quad target`).
//!
//! Thread-local variables (a patch cannot add any; it uses the target's):
//! - Local-exec and initial-exec code (`TPOFF32`, `GOTTPOFF`) needs the variable's offset from
//!   the thread pointer: known for the executable's block ([`Value::TlsOffset`]) and for a
//!   library block in static TLS when the process has a `TPOFF64` slot for it.
//! - General- and local-dynamic code (`TLSGD`, `TLSLD` + `DTPOFF32`, what `-fPIC` produces)
//!   is linked as written when the module id is known ([`Value::Tls`], read by the resolver
//!   from a GOT slot ld.so filled for `DTPMOD64`): the `lea` points at a `tls_index`
//!   {module, offset} of the patch's own, in its read-only GOT area, and the call goes to the
//!   target's `__tls_get_addr`, which finds (or allocates) each thread's block, so static
//!   and dynamic (dlopen) TLS both work. When only the thread-pointer offset is known (the
//!   executable, whose own GD/LD accesses the static linker relaxed away), the sequence is
//!   rewritten to local-exec exactly as the static linker does ([`relax_tls`]); an unexpected
//!   instruction sequence is refused rather than guessed at. Neither known: the resolver
//!   refuses the symbol. TLS descriptors (`-mtls-dialect=gnu2`) are refused.

use std::collections::{BTreeMap, HashMap};

use suture_object::elf::{Bind, Object, Place, SecIdx, SymIdx, SymKind};
use suture_object::names;
use thiserror::Error;

use crate::ids::RemoteAddr;

pub const PAGE: u64 = 4096;
const STUB_SIZE: u64 = 14;

// x86-64 relocation types used by gcc and clang for userspace code.
const R_NONE: u32 = 0;
const R_64: u32 = 1;
const R_PC32: u32 = 2;
const R_PLT32: u32 = 4;
const R_GOTPCREL: u32 = 9;
const R_32: u32 = 10;
const R_32S: u32 = 11;
const R_DTPMOD64: u32 = 16;
const R_DTPOFF64: u32 = 17;
const R_TPOFF64: u32 = 18;
const R_TLSGD: u32 = 19;
const R_TLSLD: u32 = 20;
const R_DTPOFF32: u32 = 21;
const R_GOTTPOFF: u32 = 22;
const R_TPOFF32: u32 = 23;
const R_PC64: u32 = 24;
const R_GOTPC32_TLSDESC: u32 = 34;
const R_TLSDESC_CALL: u32 = 35;
const R_GOTPCRELX: u32 = 41;
const R_REX_GOTPCRELX: u32 = 42;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("patch object: {0}")]
    Object(String),
    #[error("cannot resolve {symbol}: {reason}")]
    Unresolved { symbol: String, reason: String },
    #[error("relocation type {r_type} at {section}+{offset:#x} is not supported")]
    UnsupportedRelocation {
        r_type: u32,
        section: String,
        offset: u64,
    },
    /// A PC-relative access to an external variable (`-fPIE` code assumes the executable
    /// holds a copy of it) that the process has only in a library, beyond ±2 GiB.
    #[error("{symbol} at {target} is out of reach of the patch at {place}: the patch's code reads {symbol} PC-relatively, which is how compilers access external variables in -fPIE code, trusting the executable to hold a copy of them (a copy relocation); the running executable has no copy of {symbol} (the original program never used it), so the patch must reach the library's own. Compile both the original and the fixed unit again with -mno-direct-extern-access (gcc 12 and later; clang: -fno-direct-access-external-data) and diff them again: the patch then reads {symbol} through a GOT slot suture fills. `suture build` does this itself")]
    ExternDataOutOfReach {
        symbol: String,
        target: RemoteAddr,
        place: RemoteAddr,
    },
    #[error("{symbol} at {target} is out of reach of {section}+{offset:#x} at {place} ({kind})")]
    OutOfRange {
        symbol: String,
        target: RemoteAddr,
        place: RemoteAddr,
        section: String,
        offset: u64,
        kind: &'static str,
    },
}

/// What a patch object asks the target to provide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Request {
    /// A global symbol, looked up in the target's objects in link order.
    Global { name: String, weak: bool },
    /// A static of the original unit `file` (see [`names::reference_name`]).
    Local { file: String, name: String },
}

impl Request {
    fn from_symbol(name: &str, bind: Bind) -> Request {
        match names::parse_local_reference(name) {
            Some((file, sym)) => Request::Local {
                file: file.to_string(),
                name: sym.to_string(),
            },
            None => Request::Global {
                name: name.to_string(),
                weak: bind == Bind::Weak,
            },
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Request::Global { name, .. } | Request::Local { name, .. } => name,
        }
    }
}

/// A resolved symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// An address in the target.
    Address(RemoteAddr),
    /// A thread-local variable of the static TLS block: its offset from the thread pointer.
    TlsOffset(i64),
    /// A thread-local variable of a module (a shared library) whose TLS module id is known:
    /// `__tls_get_addr(&{module, offset})` finds it in every thread, in static or dynamic
    /// (dlopen) TLS. `tp_offset` is its thread-pointer offset when the block is known to be
    /// in static TLS (needed only by initial-exec code).
    Tls {
        module: u64,
        offset: u64,
        tp_offset: Option<i64>,
    },
    /// A weak symbol the target does not define (resolves to 0).
    Absent,
}

/// Resolves the symbols a patch object needs in one target process.
pub trait Resolver {
    fn resolve(&self, request: &Request) -> Result<Value, String>;
}

/// Which segment a section goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Text,
    Rodata,
    Data,
}

#[derive(Clone, Debug)]
struct Placed {
    segment: Segment,
    offset: u64,
}

/// GOT slot kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Slot {
    /// Address of a symbol (GOTPCREL family).
    Address(u32),
    /// Thread-pointer offset of a TLS symbol (GOTTPOFF).
    TpOff(u32),
    /// A `tls_index` {module id, offset} for a general-dynamic access (TLSGD): two words.
    TlsIndex(u32),
    /// A `tls_index` {module id, 0} for a local-dynamic access (TLSLD): two words.
    TlsModule(u32),
}

impl Slot {
    fn words(self) -> u64 {
        match self {
            Slot::Address(_) | Slot::TpOff(_) => 1,
            Slot::TlsIndex(_) | Slot::TlsModule(_) => 2,
        }
    }
}

/// The layout of a patch object, independent of where it will live.
pub struct Plan<'a> {
    obj: Object<'a>,
    placed: BTreeMap<SecIdx, Placed>,
    /// GOT slots in the rodata segment: offset of each.
    got: BTreeMap<Slot, u64>,
    /// Far-call stubs in the text segment, one per external function symbol called.
    stubs: BTreeMap<u32, u64>,
    sizes: BTreeMap<Segment, u64>,
    header: u64,
}

/// A patch object linked for one address.
#[derive(Debug)]
pub struct Linked {
    pub base: RemoteAddr,
    /// Bytes of each segment with its address (bss is included as zeros).
    pub segments: Vec<(Segment, RemoteAddr, Vec<u8>)>,
    /// Address of every function and data object the patch defines, by name.
    pub symbols: HashMap<String, RemoteAddr>,
    /// Resolved value of every request, for the record.
    pub resolved: BTreeMap<Request, Value>,
    /// Where the patch's `.eh_frame` (unwind rules of its code) lies, and its length.
    pub eh_frame: Option<(RemoteAddr, u64)>,
}

/// True when the relocated field at `offset` of `code` is the displacement of a direct call,
/// jmp or jcc (`PLT32` is only ever used for those).
fn is_branch(r_type: u32, code: &[u8], offset: u64) -> bool {
    if r_type == R_PLT32 {
        return true;
    }
    let o = offset as usize;
    let before = |n: usize| o.checked_sub(n).and_then(|i| code.get(i)).copied();
    matches!(before(1), Some(0xe8 | 0xe9))
        || (before(2) == Some(0x0f) && before(1).is_some_and(|b| b & 0xf0 == 0x80))
}

/// A general- or local-dynamic TLS access rewritten to local-exec because the variable's
/// thread-pointer offset is known: the bytes replacing the sequence and the relocation (the
/// call of `__tls_get_addr`) they make obsolete.
#[derive(Debug, PartialEq, Eq)]
struct Relaxed {
    start: usize,
    bytes: Vec<u8>,
    call_reloc: u64,
}

/// `mov %fs:0, %rax`
const MOV_FS0_RAX: [u8; 9] = [0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0];

/// Rewrites the TLSGD or TLSLD sequence whose relocation is at `offset` of `code`, as the
/// static linker would for an executable:
/// - GD (16 bytes, `data16 lea x@tlsgd(%rip),%rdi; data16 data16 rex64 call __tls_get_addr`,
///   or the `-fno-plt` form with `call *__tls_get_addr@GOTPCREL(%rip)`) becomes
///   `mov %fs:0,%rax; lea tp_offset(%rax),%rax`: `%rax` holds the variable's address as the call
///   would have returned it.
/// - LD (12 bytes `lea x@tlsld(%rip),%rdi; call __tls_get_addr`, 13 with the `-fno-plt` call)
///   becomes `mov %fs:0,%rax` padded with prefixes; the `DTPOFF32` offsets that follow are then
///   linked as thread-pointer offsets.
///
/// Any other instruction sequence is refused (`None`): guessing would corrupt code.
fn relax_tls(r_type: u32, code: &[u8], offset: u64, tp_offset: i64) -> Option<Relaxed> {
    let o = offset as usize;
    let at = |from: usize, len: usize| code.get(from..from.checked_add(len)?);
    match r_type {
        R_TLSGD => {
            let start = o.checked_sub(4)?;
            if at(start, 4)? != [0x66, 0x48, 0x8d, 0x3d] {
                return None;
            }
            let call = at(o + 4, 4)?;
            if call != [0x66, 0x66, 0x48, 0xe8] && call != [0x66, 0x48, 0xff, 0x15] {
                return None;
            }
            at(o + 8, 4)?;
            let tp = i32::try_from(tp_offset).ok()?;
            let mut bytes = MOV_FS0_RAX.to_vec();
            bytes.extend_from_slice(&[0x48, 0x8d, 0x80]);
            bytes.extend_from_slice(&tp.to_le_bytes());
            Some(Relaxed {
                start,
                bytes,
                call_reloc: offset + 8,
            })
        }
        R_TLSLD => {
            let start = o.checked_sub(3)?;
            if at(start, 3)? != [0x48, 0x8d, 0x3d] {
                return None;
            }
            let (len, call_reloc) = match at(o + 4, 2)? {
                [0xe8, _] => (12, offset + 5),
                [0xff, 0x15] => (13, offset + 6),
                _ => return None,
            };
            at(start, len)?;
            let mut bytes = vec![0x66; len - MOV_FS0_RAX.len()];
            bytes.extend_from_slice(&MOV_FS0_RAX);
            Some(Relaxed {
                start,
                bytes,
                call_reloc,
            })
        }
        _ => None,
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    let a = a.max(1);
    v.div_ceil(a) * a
}

fn segment_of(obj: &Object, sec: SecIdx) -> Option<Segment> {
    let s = obj.section(sec);
    if !s.is_alloc() || s.is_tls() {
        return None;
    }
    Some(if s.is_exec() {
        Segment::Text
    } else if s.is_write() {
        Segment::Data
    } else {
        Segment::Rodata
    })
}

impl<'a> Plan<'a> {
    /// Plans the layout of `bytes` (a patch object written by `suture diff -o`), reserving
    /// `header` bytes at the start of the region for the caller.
    pub fn new(bytes: &'a [u8], header: u64) -> Result<Plan<'a>, LinkError> {
        let obj = Object::parse(bytes).map_err(|e| LinkError::Object(e.to_string()))?;
        if let Some(s) = obj.sections.iter().find(|s| s.is_tls() && s.size > 0) {
            return Err(LinkError::Object(format!(
                "section {} defines thread-local data, which a running process cannot grow",
                s.name
            )));
        }
        let mut sizes: BTreeMap<Segment, u64> = BTreeMap::new();
        let mut placed = BTreeMap::new();
        for i in 1..obj.sections.len() {
            let sec = SecIdx(i as u32);
            let Some(seg) = segment_of(&obj, sec) else {
                continue;
            };
            let s = obj.section(sec);
            let size = sizes.entry(seg).or_default();
            let offset = align_up(*size, s.align);
            *size = offset + s.size;
            placed.insert(
                sec,
                Placed {
                    segment: seg,
                    offset,
                },
            );
        }
        let mut got = BTreeMap::new();
        let mut stubs = BTreeMap::new();
        for (&sec, _) in placed.iter() {
            for r in &obj.section(sec).relocs {
                let slot = match r.r_type {
                    R_GOTPCREL | R_GOTPCRELX | R_REX_GOTPCRELX => Some(Slot::Address(r.sym.0)),
                    R_GOTTPOFF => Some(Slot::TpOff(r.sym.0)),
                    R_TLSGD => Some(Slot::TlsIndex(r.sym.0)),
                    R_TLSLD => Some(Slot::TlsModule(r.sym.0)),
                    _ => None,
                };
                if let Some(slot) = slot {
                    got.entry(slot).or_insert(0);
                }
                let sym = obj.symbol(r.sym);
                let section = obj.section(sec);
                if matches!(r.r_type, R_PLT32 | R_PC32)
                    && sym.place == Place::Undefined
                    && section.is_exec()
                    && is_branch(r.r_type, section.data, r.offset)
                {
                    let n = stubs.len() as u64;
                    stubs.entry(r.sym.0).or_insert(n);
                }
            }
        }
        // GOT slots at the end of rodata, stubs at the end of text.
        let ro = sizes.entry(Segment::Rodata).or_default();
        let mut at = align_up(*ro, 16);
        for (slot, v) in got.iter_mut() {
            *v = at;
            at += 8 * slot.words();
        }
        *ro = at;
        let text = sizes.entry(Segment::Text).or_default();
        let stub_base = align_up(*text, 16);
        *text = stub_base + STUB_SIZE * stubs.len() as u64;
        for v in stubs.values_mut() {
            *v = stub_base + *v * STUB_SIZE;
        }
        sizes.entry(Segment::Data).or_default();
        Ok(Plan {
            obj,
            placed,
            got,
            stubs,
            sizes,
            header: align_up(header, PAGE),
        })
    }

    /// The object being linked.
    pub fn object(&self) -> &Object<'a> {
        &self.obj
    }

    /// Offset of each segment from the region base.
    pub fn segment_offset(&self, seg: Segment) -> u64 {
        let mut off = self.header;
        for (&s, &size) in &self.sizes {
            if s == seg {
                return off;
            }
            off += align_up(size, PAGE);
        }
        off
    }

    /// Bytes to reserve for the whole region (page-aligned).
    pub fn region_size(&self) -> u64 {
        self.header + self.sizes.values().map(|&s| align_up(s, PAGE)).sum::<u64>()
    }

    /// The global and static symbols the patch needs from the target.
    pub fn requests(&self) -> Vec<Request> {
        let mut v: Vec<Request> = self
            .obj
            .symbols
            .iter()
            .filter(|s| s.place == Place::Undefined && !s.name.is_empty())
            .map(|s| Request::from_symbol(&s.name, s.bind))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn section_addr(&self, base: RemoteAddr, sec: SecIdx) -> Option<RemoteAddr> {
        let p = self.placed.get(&sec)?;
        Some(base.offset(self.segment_offset(p.segment) + p.offset))
    }

    /// Links the patch for a region starting at `base`.
    pub fn link(&self, base: RemoteAddr, resolver: &dyn Resolver) -> Result<Linked, LinkError> {
        let obj = &self.obj;
        // Resolve every undefined symbol once.
        let mut resolved = BTreeMap::new();
        let mut values: HashMap<u32, Value> = HashMap::new();
        for (i, s) in obj.symbols.iter().enumerate() {
            let value = match s.place {
                Place::Undefined if !s.name.is_empty() => {
                    let req = Request::from_symbol(&s.name, s.bind);
                    let v = match resolved.get(&req) {
                        Some(&v) => v,
                        None => {
                            let v =
                                resolver
                                    .resolve(&req)
                                    .map_err(|reason| LinkError::Unresolved {
                                        symbol: req.name().to_string(),
                                        reason,
                                    })?;
                            if v == Value::Absent && s.bind != Bind::Weak {
                                return Err(LinkError::Unresolved {
                                    symbol: req.name().to_string(),
                                    reason: "not defined in the target".into(),
                                });
                            }
                            resolved.insert(req, v);
                            v
                        }
                    };
                    v
                }
                Place::Section(sec) => match self.section_addr(base, sec) {
                    Some(a) => Value::Address(a.offset(s.value)),
                    None => continue,
                },
                Place::Absolute => Value::Address(RemoteAddr(s.value)),
                _ => continue,
            };
            values.insert(i as u32, value);
        }

        let mut segs: BTreeMap<Segment, Vec<u8>> = self
            .sizes
            .iter()
            .map(|(&s, &size)| (s, vec![0u8; size as usize]))
            .collect();
        for (&sec, p) in &self.placed {
            let s = obj.section(sec);
            if !s.is_nobits() {
                let buf = segs.get_mut(&p.segment).expect("segment exists");
                buf[p.offset as usize..(p.offset + s.size) as usize].copy_from_slice(s.data);
            }
        }
        let seg_base = |seg: Segment| base.offset(self.segment_offset(seg));
        let addr_of = |sym: u32| -> Result<u64, LinkError> {
            match values.get(&sym) {
                Some(Value::Address(a)) => Ok(a.0),
                Some(Value::Absent) => Ok(0),
                Some(Value::TlsOffset(_) | Value::Tls { .. }) | None => {
                    Err(LinkError::Unresolved {
                        symbol: obj.symbol(SymIdx(sym)).name.clone(),
                        reason: "no address".into(),
                    })
                }
            }
        };
        let tpoff_of = |sym: u32| -> Result<i64, LinkError> {
            match values.get(&sym) {
                Some(Value::TlsOffset(o)) => Ok(*o),
                Some(Value::Tls {
                    tp_offset: Some(o), ..
                }) => Ok(*o),
                Some(Value::Tls { module, .. }) => Err(LinkError::Unresolved {
                    symbol: obj.symbol(SymIdx(sym)).name.clone(),
                    reason: format!(
                        "its TLS module {module} has no known offset from the thread pointer \
                         (no R_X86_64_TPOFF64 slot in the process), which initial-exec code \
                         needs; build the patch's unit with -fPIC and the default TLS model"
                    ),
                }),
                _ => Err(LinkError::Unresolved {
                    symbol: obj.symbol(SymIdx(sym)).name.clone(),
                    reason: "not a thread-local variable".into(),
                }),
            }
        };
        // GOT slots and tls_index pairs (pairs of accesses relaxed below stay unused).
        for (slot, &off) in &self.got {
            let words: Vec<u64> = match *slot {
                Slot::Address(sym) => vec![addr_of(sym)?],
                Slot::TpOff(sym) => vec![tpoff_of(sym)? as u64],
                Slot::TlsIndex(sym) => match values.get(&sym) {
                    Some(Value::Tls { module, offset, .. }) => vec![*module, *offset],
                    _ => vec![0, 0],
                },
                Slot::TlsModule(sym) => match values.get(&sym) {
                    Some(Value::Tls { module, .. }) => vec![*module, 0],
                    _ => vec![0, 0],
                },
            };
            let buf = segs.get_mut(&Segment::Rodata).expect("rodata exists");
            for (i, w) in words.iter().enumerate() {
                let o = off as usize + 8 * i;
                buf[o..o + 8].copy_from_slice(&w.to_le_bytes());
            }
        }
        // TLS accesses: a variable with a known module id keeps its call of __tls_get_addr
        // (with our tls_index); one known only by its thread-pointer offset (the executable's,
        // or a library's static block) is relaxed to local-exec.
        let mut consumed: std::collections::HashSet<(SecIdx, u64)> = Default::default();
        for (&sec, p) in &self.placed {
            let s = obj.section(sec);
            for r in s
                .relocs
                .iter()
                .filter(|r| matches!(r.r_type, R_TLSGD | R_TLSLD))
            {
                let sym = obj.symbol(r.sym);
                let tp = match values.get(&r.sym.0) {
                    Some(Value::Tls { .. }) => continue,
                    Some(Value::TlsOffset(tp)) => *tp,
                    _ => {
                        return Err(LinkError::Unresolved {
                            symbol: sym.name.clone(),
                            reason: "a dynamic TLS access refers to a symbol that is not \
                                     thread-local"
                                .into(),
                        })
                    }
                };
                let Some(relaxed) = relax_tls(r.r_type, s.data, r.offset, tp) else {
                    return Err(LinkError::UnsupportedRelocation {
                        r_type: r.r_type,
                        section: format!(
                            "{} (the access to {} is not the standard __tls_get_addr \
                             sequence, so it cannot be rewritten to use its static TLS offset)",
                            s.name, sym.name
                        ),
                        offset: r.offset,
                    });
                };
                let buf = segs.get_mut(&p.segment).expect("segment exists");
                let at = p.offset as usize + relaxed.start;
                buf[at..at + relaxed.bytes.len()].copy_from_slice(&relaxed.bytes);
                consumed.insert((sec, r.offset));
                consumed.insert((sec, relaxed.call_reloc));
            }
        }
        // Far-call stubs: jmp *0(%rip); .quad target
        for (&sym, &off) in &self.stubs {
            let Ok(target) = addr_of(sym) else { continue };
            let buf = segs.get_mut(&Segment::Text).expect("text exists");
            let o = off as usize;
            buf[o..o + 6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
            buf[o + 6..o + 14].copy_from_slice(&target.to_le_bytes());
        }

        for (&sec, p) in &self.placed {
            let s = obj.section(sec);
            for r in &s.relocs {
                if r.r_type == R_NONE || consumed.contains(&(sec, r.offset)) {
                    continue;
                }
                let place = seg_base(p.segment).offset(p.offset + r.offset);
                let at = (p.offset + r.offset) as usize;
                let sym = obj.symbol(r.sym);
                let err_range = |target: u64, kind: &'static str| LinkError::OutOfRange {
                    symbol: sym.name.clone(),
                    target: RemoteAddr(target),
                    place,
                    section: s.name.clone(),
                    offset: r.offset,
                    kind,
                };
                let a = r.addend;
                let p_ = place.0 as i64;
                let bytes: Vec<u8> = match r.r_type {
                    R_64 => (addr_of(r.sym.0)? as i64)
                        .wrapping_add(a)
                        .to_le_bytes()
                        .to_vec(),
                    R_PC64 => (addr_of(r.sym.0)? as i64)
                        .wrapping_add(a)
                        .wrapping_sub(p_)
                        .to_le_bytes()
                        .to_vec(),
                    R_32 => {
                        let v = (addr_of(r.sym.0)? as i64).wrapping_add(a);
                        let v =
                            u32::try_from(v).map_err(|_| err_range(v as u64, "absolute 32-bit"))?;
                        v.to_le_bytes().to_vec()
                    }
                    R_32S => {
                        let v = (addr_of(r.sym.0)? as i64).wrapping_add(a);
                        let v = i32::try_from(v)
                            .map_err(|_| err_range(v as u64, "sign-extended 32-bit"))?;
                        v.to_le_bytes().to_vec()
                    }
                    R_PC32 | R_PLT32 => {
                        let target = addr_of(r.sym.0)?;
                        let mut v = (target as i64).wrapping_add(a).wrapping_sub(p_);
                        if i32::try_from(v).is_err() {
                            // Calls and jumps to far functions go through a stub.
                            match self.stubs.get(&r.sym.0) {
                                Some(&off)
                                    if s.is_exec() && is_branch(r.r_type, s.data, r.offset) =>
                                {
                                    let stub = seg_base(Segment::Text).offset(off).0 as i64;
                                    v = stub.wrapping_add(a).wrapping_sub(p_);
                                }
                                _ if sym.place == Place::Undefined
                                    && !is_branch(r.r_type, s.data, r.offset) =>
                                {
                                    return Err(LinkError::ExternDataOutOfReach {
                                        symbol: sym.name.clone(),
                                        target: RemoteAddr(target),
                                        place,
                                    })
                                }
                                _ => return Err(err_range(target, "32-bit PC-relative")),
                            }
                        }
                        let v = i32::try_from(v)
                            .map_err(|_| err_range(target, "32-bit PC-relative"))?;
                        v.to_le_bytes().to_vec()
                    }
                    R_GOTPCREL | R_GOTPCRELX | R_REX_GOTPCRELX | R_GOTTPOFF => {
                        let slot = if r.r_type == R_GOTTPOFF {
                            Slot::TpOff(r.sym.0)
                        } else {
                            Slot::Address(r.sym.0)
                        };
                        let got = seg_base(Segment::Rodata).offset(self.got[&slot]).0 as i64;
                        let v = got.wrapping_add(a).wrapping_sub(p_);
                        let v =
                            i32::try_from(v).map_err(|_| err_range(got as u64, "GOT-relative"))?;
                        v.to_le_bytes().to_vec()
                    }
                    R_TPOFF32 => {
                        let v = tpoff_of(r.sym.0)?.wrapping_add(a);
                        let v = i32::try_from(v)
                            .map_err(|_| err_range(v as u64, "thread-pointer offset"))?;
                        v.to_le_bytes().to_vec()
                    }
                    R_TPOFF64 => tpoff_of(r.sym.0)?.wrapping_add(a).to_le_bytes().to_vec(),
                    // Not relaxed: PC-relative to our tls_index, passed to __tls_get_addr.
                    R_TLSGD | R_TLSLD => {
                        let slot = if r.r_type == R_TLSGD {
                            Slot::TlsIndex(r.sym.0)
                        } else {
                            Slot::TlsModule(r.sym.0)
                        };
                        let pair = seg_base(Segment::Rodata).offset(self.got[&slot]).0 as i64;
                        let v = pair.wrapping_add(a).wrapping_sub(p_);
                        let v =
                            i32::try_from(v).map_err(|_| err_range(pair as u64, "tls_index"))?;
                        v.to_le_bytes().to_vec()
                    }
                    // Offset within the module's block after a TLSLD call, or from the thread
                    // pointer after a TLSLD sequence relaxed to local-exec.
                    R_DTPOFF32 | R_DTPOFF64 => {
                        let v = match values.get(&r.sym.0) {
                            Some(Value::Tls { offset, .. }) => *offset as i64,
                            Some(Value::TlsOffset(tp)) => *tp,
                            _ => {
                                return Err(LinkError::Unresolved {
                                    symbol: sym.name.clone(),
                                    reason: "not a thread-local variable".into(),
                                })
                            }
                        }
                        .wrapping_add(a);
                        if r.r_type == R_DTPOFF64 {
                            v.to_le_bytes().to_vec()
                        } else {
                            i32::try_from(v)
                                .map_err(|_| err_range(v as u64, "TLS offset"))?
                                .to_le_bytes()
                                .to_vec()
                        }
                    }
                    R_DTPMOD64 => {
                        return Err(LinkError::UnsupportedRelocation {
                            r_type: r.r_type,
                            section: format!(
                                "{} (a TLS module id of {} stored in data; only code accesses \
                                 to thread-local variables are linked)",
                                s.name, sym.name
                            ),
                            offset: r.offset,
                        })
                    }
                    R_GOTPC32_TLSDESC | R_TLSDESC_CALL => {
                        return Err(LinkError::UnsupportedRelocation {
                            r_type: r.r_type,
                            section: format!(
                                "{} (TLS descriptor access to {}: build the patch's unit with \
                                 the default -mtls-dialect=gnu)",
                                s.name, sym.name
                            ),
                            offset: r.offset,
                        })
                    }
                    other => {
                        return Err(LinkError::UnsupportedRelocation {
                            r_type: other,
                            section: s.name.clone(),
                            offset: r.offset,
                        })
                    }
                };
                let buf = segs.get_mut(&p.segment).expect("segment exists");
                if s.is_nobits() || at + bytes.len() > buf.len() {
                    return Err(LinkError::Object(format!(
                        "relocation at {}+{:#x} outside the section",
                        s.name, r.offset
                    )));
                }
                buf[at..at + bytes.len()].copy_from_slice(&bytes);
            }
        }

        let mut symbols = HashMap::new();
        for (i, s) in obj.symbols.iter().enumerate() {
            if matches!(s.kind, SymKind::Func | SymKind::Object | SymKind::Ifunc)
                && s.section().is_some()
            {
                if let Some(Value::Address(a)) = values.get(&(i as u32)) {
                    symbols.insert(s.name.clone(), *a);
                }
            }
        }
        let segments = segs
            .into_iter()
            .map(|(seg, bytes)| (seg, seg_base(seg), bytes))
            .collect();
        let eh_frame = (1..obj.sections.len())
            .map(|i| SecIdx(i as u32))
            .find(|&sec| obj.section(sec).name == ".eh_frame" && obj.section(sec).size > 0)
            .and_then(|sec| Some((self.section_addr(base, sec)?, obj.section(sec).size)));
        Ok(Linked {
            base,
            segments,
            symbols,
            resolved,
            eh_frame,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        assert_eq!(align_up(0, 16), 0);
        assert_eq!(align_up(1, 16), 16);
        assert_eq!(align_up(4096, PAGE), 4096);
        assert_eq!(align_up(5, 0), 5);
    }

    #[test]
    fn branches_are_recognised_by_opcode() {
        // call rel32, jmp rel32, jne rel32, lea rel32(%rip)
        let code = [
            0xe8, 0, 0, 0, 0, 0xe9, 0, 0, 0, 0, 0x0f, 0x85, 0, 0, 0, 0, 0x48, 0x8d, 0x05,
        ];
        assert!(is_branch(R_PC32, &code, 1));
        assert!(is_branch(R_PC32, &code, 6));
        assert!(is_branch(R_PC32, &code, 12));
        assert!(!is_branch(R_PC32, &code, 19));
        assert!(is_branch(R_PLT32, &code, 19));
        assert!(!is_branch(R_PC32, &code, 0));
    }

    #[test]
    fn general_dynamic_tls_relaxes_to_local_exec() {
        // data16 lea x@tlsgd(%rip),%rdi; data16 data16 rex64 call __tls_get_addr@PLT
        let mut code = vec![0x90, 0x66, 0x48, 0x8d, 0x3d, 0, 0, 0, 0];
        code.extend_from_slice(&[0x66, 0x66, 0x48, 0xe8, 0, 0, 0, 0, 0xc3]);
        let r = relax_tls(R_TLSGD, &code, 5, -0x10).unwrap();
        assert_eq!(r.start, 1);
        assert_eq!(r.call_reloc, 13);
        // mov %fs:0,%rax; lea -0x10(%rax),%rax: the same 16 bytes.
        let want = [
            0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0, 0x48, 0x8d, 0x80, 0xf0, 0xff, 0xff, 0xff,
        ];
        assert_eq!(r.bytes, want);
        // The -fno-plt form: call *__tls_get_addr@GOTPCREL(%rip).
        code[9..13].copy_from_slice(&[0x66, 0x48, 0xff, 0x15]);
        assert_eq!(relax_tls(R_TLSGD, &code, 5, -0x10).unwrap().bytes, want);
        // Anything else is refused, as is a truncated sequence.
        code[9] = 0x90;
        assert_eq!(relax_tls(R_TLSGD, &code, 5, -0x10), None);
        assert_eq!(relax_tls(R_TLSGD, &code[..12], 5, -0x10), None);
        assert_eq!(relax_tls(R_TLSGD, &code, 2, -0x10), None);
    }

    #[test]
    fn local_dynamic_tls_relaxes_to_the_thread_pointer() {
        // lea x@tlsld(%rip),%rdi; call __tls_get_addr@PLT
        let code = [0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0];
        let r = relax_tls(R_TLSLD, &code, 3, 0).unwrap();
        assert_eq!((r.start, r.call_reloc), (0, 8));
        assert_eq!(
            r.bytes,
            [0x66, 0x66, 0x66, 0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0]
        );
        // call *__tls_get_addr@GOTPCREL(%rip): one byte longer, one prefix more.
        let code = [0x48, 0x8d, 0x3d, 0, 0, 0, 0, 0xff, 0x15, 0, 0, 0, 0];
        let r = relax_tls(R_TLSLD, &code, 3, 0).unwrap();
        assert_eq!((r.bytes.len(), r.call_reloc), (13, 9));
        assert_eq!(relax_tls(R_TLSLD, &code[..12], 3, 0), None);
        assert_eq!(relax_tls(R_TLSLD, &[0x90; 12], 3, 0), None);
    }

    #[test]
    fn tls_index_pairs_take_two_words() {
        assert_eq!(Slot::Address(1).words(), 1);
        assert_eq!(Slot::TpOff(1).words(), 1);
        assert_eq!(Slot::TlsIndex(1).words(), 2);
        assert_eq!(Slot::TlsModule(1).words(), 2);
    }

    #[test]
    fn requests_decode_local_references() {
        let r = Request::from_symbol("suture.local::a.c::count.2", Bind::Global);
        assert_eq!(
            r,
            Request::Local {
                file: "a.c".into(),
                name: "count.2".into()
            }
        );
        let r = Request::from_symbol("printf", Bind::Weak);
        assert_eq!(
            r,
            Request::Global {
                name: "printf".into(),
                weak: true
            }
        );
    }
}
