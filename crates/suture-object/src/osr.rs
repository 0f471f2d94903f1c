//! On-stack replacement maps: where a frame of a replaced function that is waiting in a call
//! may go on in the other version of the function, and what has to move for it to.
//!
//! A thread blocked in a call made from a replaced function (a connection loop in `read`, an
//! event loop in `epoll_wait`) holds a frame of the old code. Its return address can be pointed
//! at the equivalent call site of the new code when, and only when, the new code will find
//! everything it reads after that call where it expects it. This module decides that from the
//! two objects, at build time, for every call site of every replaced function, in both
//! directions (apply: original → patched; revert: patched → original):
//!
//! 1. **The equivalent call site.** Calls are keyed by their callee (the relocation's target,
//!    by its build-stable name) and by the chain of inlined functions they sit in (DWARF
//!    `DW_TAG_inlined_subroutine`); the n-th call with a key in one version pairs with the n-th
//!    in the other, and only when both versions have the same number of them. Indirect calls
//!    are never paired (their callee cannot be compared).
//! 2. **The frame.** The CFA rule must be identical at both return addresses (from
//!    `.eh_frame`): the frame is then the same size, so the stack above it works unchanged.
//!    Where the versions keep a caller's callee-saved register (`rbx rbp r12-r15`)
//!    differently (another save slot, or saved in one and untouched in the other), the
//!    caller's value moves to where the destination keeps it, so its epilogue restores it: a
//!    save slot is written only where neither version takes an address.
//! 3. **Everything the new code reads.** A liveness analysis of the destination function
//!    (iced-x86's register and memory use per instruction, a backward data flow over its
//!    control-flow graph including `.cold` parts and jump tables; a call proven never to
//!    return has no fall-through, `NoReturn`) gives the callee-saved registers and the
//!    frame's stack slots that are read after the call before being written. Caller-saved
//!    registers are dead after a call by the ABI (`rax`/`rdx` hold the callee's result, the
//!    same callee's in both versions). Each live register must be
//!    - still the caller's own value (see 2.), or
//!    - a value a forward must-analysis of both versions proves (entry values, constants,
//!      frame and RIP-relative addresses, values a `test r, r; je/jne` found zero), found in
//!      the running frame or recomputed, or
//!    - the location, at the destination's return address, of a variable (DWARF location
//!      lists) that the source has at its return address in a callee-saved register, as
//!      `reg + k`, or as a constant: the value is then moved (`dst = src + k`).
//!
//!    Each live stack slot must be a callee-saved register's save slot, the canary's slot at
//!    the same place in both, a proven value, a variable's memory that the source keeps in
//!    the very same slot, the home of the same variables alone in both versions, or a byte
//!    no path to the call defines (`Side::defined_before`); every variable the destination
//!    has in the frame's memory must be in the same slot in the source (its address may have
//!    escaped, so memory never moves). A variable is only used when its name (with its
//!    inlined-function chain) is unique among the variables in scope at the address.
//!
//! Anything else refuses the site with a reason ([`OsrRefusal`]); apply then treats a frame at
//! such a site as busy, as without OSR. What this cannot see, and why it is still the rule:
//! memory the new code reads through a pointer into its own frame computed *after* the call
//! (such memory is a variable with a frame location, checked above, unless the compiler made
//! an undescribed temporary of it), and DWARF that lies (a compiler bug).
//!
//! The moves are performed by a trampoline the process side generates: the return address
//! is pointed at it, it sets the destination registers from the red zone copies of the
//! sources (so moves that swap registers are right) and jumps to the destination site.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use gimli::{LittleEndian, UnwindSection as _};
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register,
};
use serde::{Deserialize, Serialize};

use crate::diff::{Diff, Role};
use crate::lines::{debug_relocs, each_unit, load_dwarf, Reader, Relocs, TAG};
use crate::names;
use crate::units::{Target, UnitId, Units};

/// DWARF numbers of the callee-saved registers of the x86-64 System V ABI.
pub const CALLEE_SAVED: [u16; 6] = [3, 6, 12, 13, 14, 15];
/// Most moves one site may need: their sources are copied to the red zone (128 bytes).
pub const MAX_MOVES: usize = 15;

/// The on-stack replacement sites of one replaced function.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OsrTable {
    /// Original → patched (apply).
    pub forward: Vec<OsrSite>,
    /// Patched → original (revert).
    pub backward: Vec<OsrSite>,
    /// Call sites of the original whose frames cannot be moved to the patched code, and why.
    pub refused: Vec<OsrRefusal>,
    /// Why the original is likely to be on a stack whenever the patch is applied (`main`, a
    /// thread or callback entry point, a loop around a blocking call), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_stack: Option<String>,
    /// The original code the maps were computed on, when that is not the diff's original
    /// (`changed_functions[].original_code`): the unit compiled exactly as deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_code: Option<crate::report::OriginalCode>,
}

/// Functions that never return: a call to one has no fall-through.
const NORETURN: &[&str] = &[
    "__stack_chk_fail",
    "__stack_chk_fail_local",
    "abort",
    "exit",
    "_exit",
    "_Exit",
    "quick_exit",
    "__assert_fail",
    "__assert_perror_fail",
    "__fortify_fail",
    "__chk_fail",
    "err",
    "errx",
    "verr",
    "verrx",
    "pthread_exit",
    "longjmp",
    "siglongjmp",
    "__longjmp_chk",
    "_Unwind_Resume",
    "__cxa_throw",
    "__cxa_rethrow",
    "__cxa_bad_cast",
    "__libc_fatal",
];

/// Library calls that wait: a loop around one keeps its function on the stack.
const BLOCKING: &[&str] = &[
    "read",
    "recv",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "accept",
    "accept4",
    "poll",
    "ppoll",
    "select",
    "pselect",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "nanosleep",
    "clock_nanosleep",
    "sleep",
    "usleep",
    "pause",
    "sigwait",
    "sigwaitinfo",
    "sigtimedwait",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "pthread_join",
    "sem_wait",
    "sem_timedwait",
    "msgrcv",
    "wait",
    "waitpid",
    "waitid",
    "fgets",
    "getline",
    "getc",
    "fgetc",
    "getchar",
    "fread",
    "io_getevents",
    "pthread_mutex_lock",
    "flock",
    "fcntl",
    "event_base_loop",
    "event_base_dispatch",
    "uv_run",
    "g_main_loop_run",
];

/// A frame waiting in the call whose return address is `from` (offset from the start of the
/// source version) continues at `to` (offset in the destination version) after `moves`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OsrSite {
    pub from: u32,
    pub to: u32,
    pub callee: String,
    /// The CFA's offset from `rsp` at the return address (the same in both versions), for
    /// `Frame` sources.
    #[serde(default)]
    pub cfa: i64,
    /// Performed in parallel (every source read before any destination is written).
    pub moves: Vec<OsrMove>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OsrMove {
    pub dst: OsrDest,
    pub src: OsrSource,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OsrDest {
    /// A callee-saved register (DWARF number).
    Register { reg: u16 },
    /// `size` (4 or 8) bytes at CFA + `offset`: a spill slot whose address the function never
    /// takes.
    Frame { offset: i64, size: u8 },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OsrSource {
    /// `reg + add` (DWARF number: callee-saved, or `rax`/`rdx`, the callee's result).
    Register {
        reg: u16,
        add: i64,
    },
    Constant {
        value: i64,
    },
    /// The address CFA + `offset` of the frame (the same in both versions).
    Frame {
        offset: i64,
    },
    /// The address a RIP-relative `lea` at offset `at` of the destination function computes
    /// (a string or table of the version the frame moves to).
    Address {
        at: u32,
    },
    /// `size` (4 or 8) bytes at CFA + `offset` of the running frame.
    Slot {
        offset: i64,
        size: u8,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OsrRefusal {
    /// Return offset of the call in the original function.
    pub at: u32,
    pub callee: String,
    pub reason: String,
}

/// The DWARF name of a register (for reasons).
pub fn reg_name(r: u16) -> &'static str {
    const NAMES: [&str; 17] = [
        "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip",
    ];
    NAMES.get(usize::from(r)).copied().unwrap_or("?")
}

fn saved_index(r: u16) -> Option<usize> {
    CALLEE_SAVED.iter().position(|&x| x == r)
}

fn dwarf_reg(r: Register) -> Option<u16> {
    Some(match r.full_register() {
        Register::RAX => 0,
        Register::RDX => 1,
        Register::RCX => 2,
        Register::RBX => 3,
        Register::RSI => 4,
        Register::RDI => 5,
        Register::RBP => 6,
        Register::RSP => 7,
        Register::R8 => 8,
        Register::R9 => 9,
        Register::R10 => 10,
        Register::R11 => 11,
        Register::R12 => 12,
        Register::R13 => 13,
        Register::R14 => 14,
        Register::R15 => 15,
        _ => return None,
    })
}

/// Computes the tables of every replaced function of `d` (by index in
/// `d.report.changed_functions`).
pub fn tables(d: &Diff) -> Vec<(usize, OsrTable)> {
    tables_with(d, &d.orig, |_, a| Some(a), false)
}

/// [`tables`] computed against `deployed`, the original unit compiled exactly as the running
/// program was (the diff's original may be compiled differently, e.g. with GOT access to
/// extern data): original functions are looked up there by name, and each table records the
/// code it was computed on (`original_code`).
pub fn tables_against(d: &Diff, deployed: &Units) -> Vec<(usize, OsrTable)> {
    tables_with(
        d,
        deployed,
        |name, _| {
            deployed.ids().find(|&id| {
                let u = deployed.unit(id);
                u.kind == crate::units::UnitKind::Func && u.names.iter().any(|n| n == name)
            })
        },
        true,
    )
}

fn tables_with<'o, 'a>(
    d: &Diff,
    orig: &Units<'o, 'a>,
    find: impl Fn(&str, UnitId) -> Option<UnitId>,
    record_code: bool,
) -> Vec<(usize, OsrTable)> {
    let od = FnDebug::index(orig);
    let pd = FnDebug::index(&d.patched);
    let mut out = Vec::new();
    for (&b, role) in &d.included {
        if *role != Role::Changed {
            continue;
        }
        let ub = d.patched.unit(b);
        if ub.kind != crate::units::UnitKind::Func || names::is_fragment(&ub.name) {
            continue;
        }
        let Some(a) = d.p2o[b.0 as usize] else {
            continue;
        };
        let Some(a) = find(&d.orig.unit(a).name, a) else {
            continue;
        };
        let Some(idx) = d
            .report
            .changed_functions
            .iter()
            .position(|f| f.name == ub.name)
        else {
            continue;
        };
        let old = Side::new(orig, a, od.as_ref());
        let new = Side::new(&d.patched, b, pd.as_ref());
        let (forward, refused) = map(&old, &new);
        let (backward, _) = map(&new, &old);
        out.push((
            idx,
            OsrTable {
                forward,
                backward,
                refused,
                on_stack: on_stack(orig, a, &old),
                original_code: record_code.then(|| {
                    let offsets: Vec<u64> = orig
                        .relocs(a)
                        .map(|(r, _)| r.offset - orig.unit(a).start)
                        .collect();
                    crate::report::OriginalCode::new(orig.bytes(a), &offsets)
                }),
            },
        ));
    }
    out
}

/// Why function `unit` is likely to be on a stack at any moment, if it is.
fn on_stack(u: &Units, unit: UnitId, side: &Side) -> Option<String> {
    let name = &u.unit(unit).name;
    if name == "main" {
        return Some("it is main".into());
    }
    // A call to a waiting function inside a loop: a backward branch of the function spans it.
    let loops: Vec<(u64, u64)> = side
        .code
        .iter()
        .filter(|i| i.unit == unit)
        .flat_map(|i| {
            i.succ
                .iter()
                .map(|&s| &side.code[s])
                .filter(|t| t.unit == unit && t.off <= i.off)
                .map(move |t| (t.off, i.off))
        })
        .collect();
    // A local function of the unit that calls a waiting function itself (a `my_read`
    // wrapper) waits as well.
    let waits_in = |callee: &str| -> Option<String> {
        if BLOCKING.contains(&callee) {
            return Some(callee.to_string());
        }
        let wrapper = u.ids().find(|&id| {
            let x = u.unit(id);
            x.kind == crate::units::UnitKind::Func && x.key == callee
        })?;
        u.relocs(wrapper).find_map(|(_, t)| {
            let name = callee_name(u, &t);
            BLOCKING
                .contains(&name.as_str())
                .then(|| format!("{callee} (which calls {name})"))
        })
    };
    let waits = side.calls.iter().find_map(|c| {
        loops
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&c.ret))
            .then(|| waits_in(&c.callee))
            .flatten()
    });
    if let Some(what) = waits {
        return Some(format!("a loop around a call to {what}"));
    }
    // Its address is taken: a thread entry point or a callback.
    let taken = u.referrers[unit.0 as usize]
        .iter()
        .any(|&(from, entry)| entry && from != unit && !side.calls_to(u, from, unit));
    taken.then(|| "its address is taken (a thread entry point or callback)".into())
}

/// Pairs the call sites of `src` with those of `dst` and checks each pair.
fn map(src: &Side, dst: &Side) -> (Vec<OsrSite>, Vec<OsrRefusal>) {
    let mut sites = Vec::new();
    let mut refused = Vec::new();
    let key = |c: &Call| format!("{}@{}", c.callee, c.inline_path);
    let mut dst_by_key: HashMap<String, Vec<&Call>> = HashMap::new();
    for c in &dst.calls {
        dst_by_key.entry(key(c)).or_default().push(c);
    }
    let mut src_by_key: HashMap<String, Vec<&Call>> = HashMap::new();
    for c in &src.calls {
        src_by_key.entry(key(c)).or_default().push(c);
    }
    let liveness = dst.liveness();
    let past = std::cell::OnceCell::new();
    let values = (src.values(), dst.values());
    for c in &src.calls {
        let refuse = |reason: String| OsrRefusal {
            at: c.ret as u32,
            callee: c.callee.clone(),
            reason,
        };
        if c.indirect {
            refused.push(refuse(
                "an indirect call: its callee cannot be compared".into(),
            ));
            continue;
        }
        let k = key(c);
        let mine = &src_by_key[&k];
        let theirs = dst_by_key.get(&k).map_or(&[][..], |v| &v[..]);
        if mine.len() != theirs.len() {
            refused.push(refuse(format!(
                "{} has {} call(s) to {}{} here, the other version {}",
                src.name,
                mine.len(),
                c.callee,
                if c.inline_path.is_empty() {
                    String::new()
                } else {
                    format!(" (inlined from {})", c.inline_path)
                },
                theirs.len()
            )));
            continue;
        }
        let n = mine
            .iter()
            .position(|x| std::ptr::eq(*x, c))
            .expect("a call is in its own group");
        let d = theirs[n];
        match check(src, c.ret, dst, d.ret, (&liveness, &past), &values) {
            Ok((cfa, moves)) => sites.push(OsrSite {
                from: c.ret as u32,
                to: d.ret as u32,
                callee: c.callee.clone(),
                cfa,
                moves,
            }),
            Err(reason) => refused.push(refuse(reason)),
        }
    }
    (sites, refused)
}

/// Checks that a frame at `from` in `src` can continue at `to` in `dst`; the CFA's offset
/// from `rsp` there and the moves if so.
fn check(
    src: &Side,
    from: u64,
    dst: &Side,
    to: u64,
    (liveness, past): (&Liveness, &std::cell::OnceCell<(Liveness, BTreeSet<usize>)>),
    values: &(Values, Values),
) -> Result<(i64, Vec<OsrMove>), String> {
    // Why a value is read after the call, when only past calls that may not return.
    let hint = |live: &dyn Fn(&Live) -> bool| -> String {
        let (cut, calls) = past.get_or_init(|| {
            let calls = dst.padded_calls();
            (dst.liveness_cut(&calls), calls)
        });
        if calls.is_empty() || cut.at(dst.unit, to).is_none_or(live) {
            return String::new();
        }
        let names: BTreeSet<String> = calls
            .iter()
            .filter_map(|&i| {
                let c = &dst.code[i];
                dst.calls
                    .iter()
                    .find(|x| x.ret == c.off + c.insn.len() as u64)
                    .map(|x| format!("the call to {} at +{:#x}", x.callee, c.off))
            })
            .collect();
        format!(
            "; it is read only on paths past {}, which the compiler may have known never \
             returns (only padding follows), but nothing in the object says so",
            names.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    let at = |side: &Side, vals: &Values, off: u64| {
        side.index
            .get(&(side.unit, off))
            .and_then(|&i| vals[i].clone())
            .unwrap_or(VState {
                regs: [Val::Unknown; 16],
                slots: Default::default(),
                zero: None,
            })
    };
    let vsrc = at(src, &values.0, from);
    let vdst = at(dst, &values.1, to);
    let (src_esc, dst_esc) = (&src.escaped, &dst.escaped);
    let (Some(rs), Some(rd)) = (src.row(src.unit, from), dst.row(dst.unit, to)) else {
        return Err("no unwind information (.eh_frame) at the call".into());
    };
    let (Some(cfa_s), Some(cfa_d)) = (rs.cfa, rd.cfa) else {
        return Err("the frame address is a DWARF expression".into());
    };
    if cfa_s != cfa_d {
        return Err(format!(
            "the frame differs: CFA {}+{} in the running version, {}+{} in the other",
            reg_name(cfa_s.0),
            cfa_s.1,
            reg_name(cfa_d.0),
            cfa_d.1
        ));
    }
    let Some(live) = liveness.at(dst.unit, to) else {
        return Err("the call is the function's last instruction".into());
    };
    if live.unknown {
        return Err(
            "the code after the call reaches stack accesses or jumps suture cannot follow".into(),
        );
    }
    let (Some(vs), Some(vd)) = (src.vars_at(from, &rs), dst.vars_at(to, &rd)) else {
        return Err("no debug information for the function (build with -g)".into());
    };
    // A slot may be written for the destination only where neither version ever takes an
    // address (a spill slot in both): elsewhere a pointer the callee holds may reach it.
    let private = |off: i64, size: u8| src_esc.private(off, size) && dst_esc.private(off, size);
    // Memory variables with an address never move: the callee may hold it.
    for (k, v) in &vd {
        if let Loc::Frame(off) = v.loc {
            match vs.get(k).map(|s| s.loc) {
                Some(Loc::Frame(o)) if o == off => {}
                _ if private(off, v.size.min(8) as u8) => {}
                other => {
                    return Err(format!(
                        "variable {k} is in the frame at CFA{off:+} in the other version, {} in \
                         the running one",
                        describe(other)
                    ))
                }
            }
        }
    }
    // Where the running frame has a value the code proves: a callee-saved register or an
    // unescaped slot.
    let find = |want: Val| -> Option<OsrSource> {
        match want {
            Val::Imm(c) => Some(OsrSource::Constant { value: c }),
            Val::Frame(k) => Some(OsrSource::Frame { offset: k }),
            Val::RipLea(off) => Some(OsrSource::Address { at: off as u32 }),
            Val::Entry(..) | Val::Canary => CALLEE_SAVED
                .iter()
                .find(|&&s| vsrc.regs[usize::from(s)] == want)
                .map(|&s| OsrSource::Register { reg: s, add: 0 })
                .or_else(|| {
                    vsrc.slots
                        .iter()
                        .find(|(_, (v, size))| {
                            *v == want && (*size == 8 || matches!(want, Val::Entry(_, 32)))
                        })
                        .map(|(&offset, &(_, size))| OsrSource::Slot { offset, size })
                }),
            // Meaningful only within one version.
            Val::Def(..) | Val::Unknown => None,
        }
    };
    // What a variable of the destination is, from where the running frame has it.
    let from_var = |k: &str, b: i64| -> Result<OsrSource, String> {
        let src_loc = vs.get(k).map(|s| (s.loc, s.size));
        match src_loc {
            Some((Loc::Reg(s), _)) | Some((Loc::Affine(s, _), _))
                if saved_index(s).is_none() && s > 1 =>
            {
                Err(format!("{k} is in {} (clobbered by the call)", reg_name(s)))
            }
            Some((Loc::Reg(s), _)) => Ok(OsrSource::Register {
                reg: s,
                add: b.wrapping_neg(),
            }),
            Some((Loc::Affine(s, a), _)) => Ok(OsrSource::Register {
                reg: s,
                add: a.wrapping_sub(b),
            }),
            Some((Loc::Const(c), _)) => Ok(OsrSource::Constant {
                value: c.wrapping_sub(b),
            }),
            Some((Loc::Frame(o), size)) if b == 0 && (size == 4 || size == 8) => {
                Ok(OsrSource::Slot {
                    offset: o,
                    size: size as u8,
                })
            }
            other => Err(format!("{k} is {}", describe(other.map(|x| x.0)))),
        }
    };
    let mut moves = Vec::new();
    // The caller's registers, where the other version keeps them: the same frame size, so
    // a save slot the other version uses (never addressed: a `push` or spill) is written
    // with the caller's value from wherever the running version keeps it.
    let mut callers = 0u8;
    for (i, &r) in CALLEE_SAVED.iter().enumerate() {
        if rs.saves[i] == rd.saves[i] {
            continue;
        }
        let differs = || {
            format!(
                "the caller's {} is kept differently ({:?} vs {:?})",
                reg_name(r),
                rs.saves[i],
                rd.saves[i]
            )
        };
        let src = match rs.saves[i] {
            Save::Same => OsrSource::Register { reg: r, add: 0 },
            Save::At(n) => OsrSource::Slot { offset: n, size: 8 },
            Save::Other => return Err(differs()),
        };
        let dst = match rd.saves[i] {
            Save::Same => {
                callers |= 1 << i;
                OsrDest::Register { reg: r }
            }
            Save::At(n) if private(n, 8) => OsrDest::Frame { offset: n, size: 8 },
            _ => return Err(differs()),
        };
        moves.push(OsrMove { dst, src });
    }
    for (i, &r) in CALLEE_SAVED.iter().enumerate() {
        if live.regs & (1 << i) == 0 || callers & (1 << i) != 0 {
            continue;
        }
        if rd.saves[i] == Save::Same && rs.saves[i] == Save::Same {
            continue;
        }
        // What the code itself proves the destination register holds, then DWARF.
        if let Some(p) = find(vdst.regs[usize::from(r)]) {
            if p != (OsrSource::Register { reg: r, add: 0 }) {
                moves.push(OsrMove {
                    dst: OsrDest::Register { reg: r },
                    src: p,
                });
            }
            continue;
        }
        let mut why = Vec::new();
        let mut found = None;
        for (k, v) in &vd {
            let b = match v.loc {
                Loc::Reg(x) if x == r => 0,
                Loc::Affine(x, b) if x == r => b,
                _ => continue,
            };
            match from_var(k, b) {
                Ok(s) => {
                    found = Some(s);
                    break;
                }
                Err(e) => why.push(e),
            }
        }
        match found {
            Some(OsrSource::Register { reg, add: 0 }) if reg == r => {}
            Some(src) => moves.push(OsrMove {
                dst: OsrDest::Register { reg: r },
                src,
            }),
            None => {
                return Err(format!(
                    "{} is read after the call in the other version and holds no value the \
                     running frame has{}{}",
                    reg_name(r),
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", why.join("; "))
                    },
                    hint(&|l: &Live| l.regs & (1 << i) != 0)
                ))
            }
        }
    }
    // Every live byte of the frame must be explained; items explained once.
    let mut explained: BTreeSet<i64> = BTreeSet::new();
    let undefined = std::cell::OnceCell::new();
    let homes = std::cell::OnceCell::new();
    for &b in &live.slots {
        if (-8..0).contains(&b) || explained.contains(&b) {
            continue; // the return address (read by `ret`), or done
        }
        // The stack-protector canary's slot, the same in both versions: only the epilogue
        // reads it, comparing it with the thread's canary, whatever wrote it since.
        if let Some(c) = dst
            .canary
            .filter(|c| src.canary == Some(*c) && (*c..*c + 8).contains(&b))
        {
            explained.extend(c..c + 8);
            continue;
        }
        // A callee-saved register's save slot (identical in both versions).
        if let Some(n) = rd.saves.iter().find_map(|s| match s {
            Save::At(n) if (*n..*n + 8).contains(&b) => Some(*n),
            _ => None,
        }) {
            explained.extend(n..n + 8);
            continue;
        }
        // A value the code proves the slot holds.
        if let Some((&off, &(val, size))) = vdst
            .slots
            .range(b - 7..=b)
            .find(|(&off, (v, size))| off + i64::from(*size) > b && !matches!(v, Val::Def(..)))
        {
            explained.extend(off..off + i64::from(size));
            if vsrc.slots.get(&off) == Some(&(val, size)) {
                continue;
            }
            if !private(off, size) {
                return Err(format!(
                    "the stack slot at CFA{off:+} would need rewriting but the running frame \
                     may hand out its address"
                ));
            }
            let source = find(val).ok_or_else(|| {
                format!(
                    "the stack slot at CFA{off:+} is read after the call in the other version \
                     and the running frame has no copy of its value"
                )
            })?;
            moves.push(OsrMove {
                dst: OsrDest::Frame { offset: off, size },
                src: source,
            });
            continue;
        }
        // A variable of the destination in the frame.
        let var = vd.iter().find(|(_, v)| match v.loc {
            Loc::Frame(off) => off <= b && b < off + v.size.max(1) as i64,
            _ => false,
        });
        let Some((k, v)) = var else {
            // A byte the destination never defines before the call: whatever the running
            // frame holds there is a value the destination could have found itself.
            if undefined
                .get_or_init(|| dst.defined_before(to))
                .as_ref()
                .is_some_and(|d| d.private(b, 1))
            {
                explained.insert(b);
                continue;
            }
            // The home of variables not in scope here, the same ones at the same place in both
            // versions and nothing else there: what the running frame holds there is their
            // value, read by the destination as its own, as for a variable in scope (above).
            if let (Some(s), Some(d)) = homes.get_or_init(|| (src.frame_homes(), dst.frame_homes()))
            {
                if let Some(home) = sole_home(s, d, b) {
                    explained.extend(home);
                    continue;
                }
            }
            return Err(format!(
                "the stack slot at CFA{b:+} is read after the call in the other version and \
                 holds no variable{}",
                hint(&|l: &Live| l.slots.contains(&b))
            ));
        };
        let Loc::Frame(off) = v.loc else {
            unreachable!("matched a frame location")
        };
        explained.extend(off..off + v.size.max(1) as i64);
        if matches!(vs.get(k).map(|s| s.loc), Some(Loc::Frame(o)) if o == off) {
            continue;
        }
        // A spill slot (checked above): move the value in.
        let size = v.size as u8;
        if size != 4 && size != 8 {
            return Err(format!(
                "variable {k} would move into the frame ({size} bytes)"
            ));
        }
        moves.push(OsrMove {
            dst: OsrDest::Frame { offset: off, size },
            src: from_var(k, 0)?,
        });
    }
    if moves.len() > MAX_MOVES {
        return Err(format!(
            "{} values would move (at most {MAX_MOVES})",
            moves.len()
        ));
    }
    let frame_relative = moves.iter().any(|m| {
        matches!(m.src, OsrSource::Frame { .. } | OsrSource::Slot { .. })
            || matches!(m.dst, OsrDest::Frame { .. })
    });
    if frame_relative && cfa_d.0 != 7 {
        return Err("a frame slot or address would move in a frame-pointer function".into());
    }
    Ok((cfa_d.1, moves))
}

/// The bytes of the variables whose homes hold byte `b`, when both versions (`src`, `dst`:
/// [`Side::frame_homes`]) keep the very same variables there for their whole lives (gcc may
/// share a slot between variables whose lives do not overlap: the same ones in both) and no
/// other.
fn sole_home(src: &[Home], dst: &[Home], b: i64) -> Option<Range<i64>> {
    let over = |homes: &[Home], r: &Range<i64>| -> Vec<(i64, i64, String, bool)> {
        let mut v: Vec<(i64, i64, String, bool)> = homes
            .iter()
            .map(|&(k, size, key, whole)| (k, k + size.max(1) as i64, key.to_string(), whole))
            .filter(|(lo, hi, ..)| *lo < r.end && r.start < *hi)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let hull = |v: &[(i64, i64, String, bool)]| -> Option<Range<i64>> {
        let lo = v.iter().map(|x| x.0).min()?;
        let hi = v.iter().map(|x| x.1).max()?;
        Some(lo..hi)
    };
    let home = hull(&over(dst, &(b..b + 1)))?;
    let (a, d) = (over(src, &home), over(dst, &home));
    // Only homes for a variable's whole life (one location, a variable kept in memory):
    // a spilled register's slot, named in a location list, may hold compiler temporaries
    // between its ranges.
    (a == d && d.iter().all(|x| x.3) && hull(&d) == Some(home.clone())).then_some(home)
}

/// A variable's plain frame location: (CFA offset, size, key, for its whole life).
type Home<'a> = (i64, u64, &'a str, bool);

fn describe(l: Option<Loc>) -> String {
    match l {
        None => "not described (optimised out)".into(),
        Some(Loc::Reg(r)) => format!("in {}", reg_name(r)),
        Some(Loc::Affine(r, k)) => format!("{}{k:+}", reg_name(r)),
        Some(Loc::Frame(o)) => format!("in the frame at CFA{o:+}"),
        Some(Loc::Const(c)) => format!("the constant {c}"),
        Some(Loc::Other) => "a computed location".into(),
    }
}

// ---- One version of a function ----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Save {
    /// The caller's value is still in the register.
    Same,
    /// Saved at CFA+n.
    At(i64),
    Other,
}

#[derive(Clone, Debug)]
struct Row {
    range: Range<u64>,
    /// (DWARF register, offset); `None` for an expression.
    cfa: Option<(u16, i64)>,
    saves: [Save; 6],
}

struct Call {
    /// Return offset (end of the call) from the function's start.
    ret: u64,
    callee: String,
    inline_path: String,
    indirect: bool,
}

struct Ins {
    unit: UnitId,
    off: u64,
    insn: Instruction,
    /// Successors (indices); `exit` when control may leave the function here.
    succ: Vec<usize>,
    exit: bool,
    unknown: bool,
}

struct Side<'x, 'o, 'a> {
    u: &'x Units<'o, 'a>,
    unit: UnitId,
    name: String,
    calls: Vec<Call>,
    code: Vec<Ins>,
    index: HashMap<(UnitId, u64), usize>,
    rows: HashMap<UnitId, Vec<Row>>,
    debug: Option<&'x FnVars>,
    /// Frame ranges pointers may reach ([`Side::compute_escaped`]), once per function.
    escaped: Escaped,
    noreturn: NoReturn<'x, 'o, 'a>,
    /// Where the prologue stores the stack-protector canary (CFA offset).
    canary: Option<i64>,
}

impl<'x, 'o, 'a> Side<'x, 'o, 'a> {
    fn new(u: &'x Units<'o, 'a>, unit: UnitId, debug: Option<&'x FnDebug>) -> Self {
        let start = tagged(u, unit, 0);
        let vars = debug.and_then(|d| d.functions.iter().find(|f| f.entry == start));
        let mut side = Side {
            u,
            unit,
            name: u.unit(unit).name.clone(),
            calls: Vec::new(),
            code: Vec::new(),
            index: HashMap::new(),
            rows: HashMap::new(),
            debug: vars,
            escaped: Escaped(Vec::new()),
            noreturn: NoReturn::new(u, debug.map(|d| &d.noreturn)),
            canary: None,
        };
        side.decode();
        side.escaped = side.compute_escaped();
        side.canary = side.canary_slot();
        side
    }

    /// Decodes the function and the `.cold` parts it jumps to, and links the graph.
    fn decode(&mut self) {
        let u = self.u;
        let mut units = vec![self.unit];
        let mut i = 0;
        // Raw branch targets per instruction: Ok((unit, offset)) or Err(()) for leaving.
        let mut targets: Vec<Vec<Result<(UnitId, u64), ()>>> = Vec::new();
        // Jump table entries that may belong to the next table (used where they land on an
        // instruction).
        let mut maybe: Vec<Vec<(UnitId, u64)>> = Vec::new();
        while i < units.len() {
            let unit = units[i];
            i += 1;
            self.rows.insert(unit, rows_of(u, unit));
            let bytes = u.bytes(unit);
            let relocs: Vec<_> = u.relocs(unit).collect();
            let ustart = u.unit(unit).start;
            let mut decoder = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
            let mut insn = Instruction::default();
            while decoder.can_decode() {
                decoder.decode_out(&mut insn);
                let off = insn.ip();
                let len = insn.len() as u64;
                let reloc = relocs
                    .iter()
                    .find(|(r, _)| (ustart + off..ustart + off + len).contains(&r.offset));
                let mut tg = Vec::new();
                let mut tg_maybe = Vec::new();
                let mut exit = false;
                let mut unknown = insn.is_invalid();
                // A branch's relocation holds the target minus the distance from the field to
                // the instruction's end (`.text.unlikely.f-4`).
                let resolved = |r: &crate::elf::Reloc,
                                t: &Target,
                                units: &mut Vec<UnitId>|
                 -> Option<(UnitId, u64)> {
                    if let Target::Unit { unit: tu, rel, .. } = *t {
                        let rel = rel + (ustart + off + len) as i64 - r.offset as i64;
                        let name = &u.unit(tu).name;
                        if tu == self.unit || names::is_fragment(name) && belongs(name, &self.name)
                        {
                            if !units.contains(&tu) {
                                units.push(tu);
                            }
                            return Some((tu, rel as u64));
                        }
                    }
                    None
                };
                match insn.flow_control() {
                    FlowControl::Next | FlowControl::XbeginXabortXend => {}
                    FlowControl::Call | FlowControl::IndirectCall if unit == self.unit => {
                        let (callee, indirect) = match reloc {
                            Some((_, t)) => (callee_name(u, t), false),
                            None if insn.flow_control() == FlowControl::Call => {
                                // A call the assembler resolved inside the section.
                                let at = ustart.wrapping_add(insn.near_branch_target());
                                match u.unit_at(u.unit(unit).section, at as i64) {
                                    Some(t) => (u.unit(t).key.clone(), false),
                                    None => (String::new(), true),
                                }
                            }
                            None => (String::new(), true),
                        };
                        // A frame never waits in a call that does not return.
                        if !reloc.is_some_and(|(_, t)| self.noreturn.call(t)) {
                            self.calls.push(Call {
                                ret: off + len,
                                callee,
                                inline_path: String::new(),
                                indirect,
                            });
                        }
                    }
                    FlowControl::Call | FlowControl::IndirectCall => {}
                    FlowControl::Return => exit = true,
                    FlowControl::Interrupt | FlowControl::Exception => {}
                    FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                        match reloc {
                            Some((r, t)) => match resolved(r, t, &mut units) {
                                Some(x) => tg.push(Ok(x)),
                                None => exit = true,
                            },
                            None => {
                                let t = insn.near_branch_target();
                                if t < bytes.len() as u64 {
                                    tg.push(Ok((unit, t)));
                                } else {
                                    // Outside the unit without a relocation: not followed.
                                    unknown = true;
                                }
                            }
                        }
                    }
                    FlowControl::IndirectBranch => {
                        let (cands, past) = table_targets(u, &units);
                        if cands.is_empty() {
                            unknown = true;
                        }
                        tg.extend(cands.into_iter().map(Ok));
                        tg_maybe = past;
                        exit = true;
                    }
                }
                let is_call = matches!(
                    insn.flow_control(),
                    FlowControl::Call | FlowControl::IndirectCall
                );
                // A call to a function that does not return has no fall-through (gcc puts
                // other code, or nothing, after `call __stack_chk_fail`).
                let noreturn = is_call && reloc.is_some_and(|(_, t)| self.noreturn.call(t));
                let falls = !noreturn
                    && (is_call
                        || matches!(
                            insn.flow_control(),
                            FlowControl::Next
                                | FlowControl::ConditionalBranch
                                | FlowControl::XbeginXabortXend
                        ));
                if falls {
                    if off + len < bytes.len() as u64 {
                        tg.push(Ok((unit, off + len)));
                    } else if !is_call {
                        tg.push(Err(()));
                    }
                    // A call that is the last instruction cannot return either.
                }
                self.index.insert((unit, off), self.code.len());
                self.code.push(Ins {
                    unit,
                    off,
                    insn,
                    succ: Vec::new(),
                    exit,
                    unknown,
                });
                targets.push(tg);
                maybe.push(tg_maybe);
            }
        }
        for (n, (tg, mb)) in targets.into_iter().zip(maybe).enumerate() {
            for t in tg {
                match t.ok().and_then(|k| self.index.get(&k).copied()) {
                    Some(s) => self.code[n].succ.push(s),
                    // Into the middle of an instruction, or off the end: not followed.
                    None => self.code[n].unknown = true,
                }
            }
            let found: Vec<usize> = mb
                .iter()
                .filter_map(|k| self.index.get(k).copied())
                .collect();
            self.code[n].succ.extend(found);
        }
        if let Some(v) = self.debug {
            for c in &mut self.calls {
                // The call instruction itself: one byte before its return address.
                let pc = tagged(u, self.unit, c.ret - 1);
                c.inline_path = v.inline_path(pc);
            }
        }
    }

    /// Whether every reference of unit `from` to `to` is a call or jump (not an address taken).
    fn calls_to(&self, u: &Units, from: UnitId, to: UnitId) -> bool {
        u.relocs(from).all(|(_, t)| match t {
            Target::Unit { unit, branch, .. } => unit != to || branch,
            _ => true,
        })
    }

    fn row(&self, unit: UnitId, off: u64) -> Option<Row> {
        self.rows
            .get(&unit)?
            .iter()
            .find(|r| r.range.contains(&off))
            .cloned()
    }

    /// Variables in scope at return offset `off`, by unique key, with their locations.
    fn vars_at(&self, off: u64, row: &Row) -> Option<HashMap<String, VarAt>> {
        let d = self.debug?;
        let pc = tagged(self.u, self.unit, off);
        let mut out: HashMap<String, VarAt> = HashMap::new();
        let mut dup = BTreeSet::new();
        for v in &d.vars {
            if !v.scopes.is_empty() && !v.scopes.iter().any(|r| r.contains(&pc)) {
                continue;
            }
            let expr = match &v.loc {
                VarLoc::Expr(e) => Some(&e[..]),
                VarLoc::List(l) => l.iter().find(|(r, _)| r.contains(&pc)).map(|(_, e)| &e[..]),
            };
            let Some(expr) = expr else { continue };
            let loc = classify(expr, d.frame_base_cfa, row);
            if out.contains_key(&v.key) {
                dup.insert(v.key.clone());
            }
            out.insert(v.key.clone(), VarAt { loc, size: v.size });
        }
        for k in dup {
            out.remove(&k);
        }
        Some(out)
    }

    /// Forward must-analysis of the values of the general registers (`Val`), per instruction
    /// (state on entry to it); `None` where unreachable from the entry.
    fn values(&self) -> Values {
        let n = self.code.len();
        let mut state: Values = vec![None; n];
        let Some(&entry) = self.index.get(&(self.unit, 0)) else {
            return state;
        };
        let mut regs = [Val::Unknown; 16];
        for (r, v) in regs.iter_mut().enumerate() {
            if r != 7 {
                *v = Val::Entry(r as u16, 64);
            }
        }
        state[entry] = Some(VState {
            regs,
            slots: Default::default(),
            zero: None,
        });
        let floor = &self.escaped;
        let mut factory = InstructionInfoFactory::new();
        let mut work = vec![entry];
        while let Some(i) = work.pop() {
            let Some(mut v) = state[i].clone() else {
                continue;
            };
            let ins = &self.code[i];
            let zero = v.zero;
            self.transfer(i as u32, ins, &mut v, floor, &mut factory);
            // The edge of `je`/`jne` on which the tested value is zero.
            let next = (ins.unit, ins.off + ins.insn.len() as u64);
            let zero_edge = match (zero, ins.insn.mnemonic()) {
                (Some(t), iced_x86::Mnemonic::Je) => Some((t, true)),
                (Some(t), iced_x86::Mnemonic::Jne) => Some((t, false)),
                _ => None,
            };
            for &s in &ins.succ {
                let mut edge = v.clone();
                if let Some((t, taken)) = zero_edge {
                    let falls = (self.code[s].unit, self.code[s].off) == next;
                    let target_is_next = ins.succ.iter().all(|&x| x == s);
                    if falls != taken && !target_is_next {
                        edge.zeroed(t);
                    }
                }
                let v = &edge;
                let merged = match &state[s] {
                    None => v.clone(),
                    Some(old) => {
                        let mut m = old.clone();
                        m.join(v);
                        m
                    }
                };
                if state[s].as_ref() != Some(&merged) {
                    state[s] = Some(merged);
                    work.push(s);
                }
            }
        }
        state
    }

    /// The frame ranges (CFA offsets) that pointers may reach: from every frame address the
    /// function computes (`lea` of a frame address, `mov rsp` to a register) to the end of the
    /// variable DWARF places there, or to the CFA when no variable of known size starts there.
    /// Bytes outside them are the function's own spill slots and stack-protector canary,
    /// reached only by name.
    fn compute_escaped(&self) -> Escaped {
        let sized = self.frame_sizes();
        let starts: BTreeSet<i64> = self.code.iter().filter_map(|i| self.escape(i)).collect();
        Escaped(starts.into_iter().map(|k| extent(&sized, k)).collect())
    }

    /// The CFA offset of the frame address instruction `ins` computes (`lea` of a frame
    /// address, `rsp` as a source operand), `i64::MIN` for one it cannot place.
    fn escape(&self, ins: &Ins) -> Option<i64> {
        use iced_x86::{Mnemonic, OpKind};
        let x = &ins.insn;
        let cfa = self.row(ins.unit, ins.off).and_then(|r| r.cfa);
        match x.mnemonic() {
            Mnemonic::Lea => match (x.memory_base(), cfa) {
                (Register::RSP, Some((7, n))) | (Register::RBP, Some((6, n))) => {
                    Some((x.memory_displacement64() as i64).wrapping_sub(n))
                }
                (Register::RSP | Register::RBP, _) => Some(i64::MIN),
                _ => None,
            },
            // `rsp` as a source: `mov %rsp, reg`, `push %rsp`.
            _ if (0..x.op_count()).any(|i| {
                x.op_kind(i) == OpKind::Register
                    && x.op_register(i) == Register::RSP
                    && (i > 0 || x.mnemonic() == Mnemonic::Push)
            }) =>
            {
                match cfa {
                    Some((7, n)) => Some(-n),
                    _ => Some(i64::MIN),
                }
            }
            _ => None,
        }
    }

    /// Where the function stores the stack-protector canary: `mov %fs:0x28, reg` followed
    /// by a store of that register to the frame, the first time the function loads it.
    fn canary_slot(&self) -> Option<i64> {
        use iced_x86::OpKind;
        let i = self.code.iter().position(|ins| {
            let x = &ins.insn;
            x.op0_kind() == OpKind::Register
                && x.op_count() == 2
                && x.op1_kind() == OpKind::Memory
                && x.segment_prefix() == Register::FS
                && x.memory_base() == Register::None
                && x.memory_displacement64() == 0x28
        })?;
        let reg = self.code[i].insn.op0_register();
        let st = self.code.get(i + 1)?;
        let x = &st.insn;
        let cfa = self.row(st.unit, st.off).and_then(|r| r.cfa);
        match (x.mnemonic(), cfa) {
            (iced_x86::Mnemonic::Mov, Some((7, n)))
                if x.op0_kind() == OpKind::Memory
                    && x.memory_base() == Register::RSP
                    && x.memory_index() == Register::None
                    && x.op1_kind() == OpKind::Register
                    && x.op1_register() == reg
                    && reg.is_gpr64() =>
            {
                Some((x.memory_displacement64() as i64).wrapping_sub(n))
            }
            _ => None,
        }
    }

    /// Sizes of the frame variables by their CFA offset (any scope, any address).
    fn frame_sizes(&self) -> HashMap<i64, u64> {
        let mut sized: HashMap<i64, u64> = HashMap::new();
        for (k, size, ..) in self.homes().0 {
            let s = sized.entry(k).or_insert(size);
            *s = (*s).max(size);
        }
        sized
    }

    /// The frame homes of the variables (any scope, any address): (CFA offset, size, key);
    /// `None` when a location names the frame in a way this does not read (then a slot may
    /// be a home it does not see).
    fn frame_homes(&self) -> Option<Vec<Home<'_>>> {
        let (homes, complete) = self.homes();
        complete.then_some(homes)
    }

    /// The plain frame locations of the variables, and whether no other location names the
    /// frame.
    fn homes(&self) -> (Vec<Home<'_>>, bool) {
        let mut out = Vec::new();
        let mut complete = true;
        let Some(d) = self.debug.filter(|d| d.frame_base_cfa) else {
            return (out, complete);
        };
        for v in &d.vars {
            let (exprs, whole): (Vec<&[u8]>, bool) = match &v.loc {
                VarLoc::Expr(e) => (vec![&e[..]], true),
                VarLoc::List(l) => (l.iter().map(|(_, e)| &e[..]).collect(), false),
            };
            for e in exprs {
                let mut i = 1;
                match read_leb(e, &mut i, true).filter(|_| e.first() == Some(&0x91) && i == e.len())
                {
                    Some(k) => out.push((k, v.size, v.key.as_str(), whole)),
                    None => complete &= !e.contains(&0x91),
                }
            }
        }
        (out, complete)
    }

    /// The frame bytes (CFA offsets) the function may define on some path from its entry to
    /// the return address `to`: written there, or reachable through a frame address computed
    /// there. A byte outside them holds, at `to`, whatever the stack held before the call
    /// that made the frame: no value of the function's own, so any value is one the function
    /// itself might find there. `None` when that cannot be told (jumps it cannot follow, a
    /// frame not addressed from `rsp`).
    fn defined_before(&self, to: u64) -> Option<Escaped> {
        let &at = self.index.get(&(self.unit, to))?;
        let entry = *self.index.get(&(self.unit, 0))?;
        let n = self.code.len();
        // Forward from the entry.
        let mut fwd = vec![false; n];
        let mut work = vec![entry];
        while let Some(i) = work.pop() {
            if std::mem::replace(&mut fwd[i], true) {
                continue;
            }
            if self.code[i].unknown {
                return None;
            }
            work.extend(self.code[i].succ.iter().copied());
        }
        // Backward from the call before `to` (the instructions that may run before it).
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ins) in self.code.iter().enumerate() {
            for &s in &ins.succ {
                preds[s].push(i);
            }
        }
        let mut bwd = vec![false; n];
        let mut work: Vec<usize> = preds[at].clone();
        while let Some(i) = work.pop() {
            if std::mem::replace(&mut bwd[i], true) {
                continue;
            }
            work.extend(preds[i].iter().copied());
        }
        let sized = self.frame_sizes();
        let mut out = Vec::new();
        let mut factory = InstructionInfoFactory::new();
        for (i, ins) in self.code.iter().enumerate() {
            if !(fwd[i] && bwd[i]) {
                continue;
            }
            let cfa = self.row(ins.unit, ins.off).and_then(|r| r.cfa);
            let Some((7, n)) = cfa else {
                return None;
            };
            if let Some(k) = self.escape(ins) {
                if k == i64::MIN {
                    return None;
                }
                out.push(extent(&sized, k));
            }
            for m in factory.info(&ins.insn).used_memory() {
                if !writes(m.access()) {
                    continue;
                }
                match m.base() {
                    Register::RSP if m.index() == Register::None => {
                        let lo = (m.displacement() as i64).wrapping_sub(n);
                        out.push((lo, lo + m.memory_size().size().max(1) as i64));
                    }
                    Register::RSP | Register::ESP => return None,
                    // Through a pointer (`rbp` too: the frame is addressed from `rsp`): one
                    // computed by a frame address above, if into the frame.
                    _ => {}
                }
            }
        }
        Some(Escaped(out))
    }

    fn transfer(
        &self,
        idx: u32,
        ins: &Ins,
        st: &mut VState,
        floor: &Escaped,
        factory: &mut InstructionInfoFactory,
    ) {
        use iced_x86::{Mnemonic, OpKind};
        let x = &ins.insn;
        st.redefine(idx);
        // `test r, r`: the flags say whether r's value is zero; anything else that writes
        // the flags says something else.
        let zero = match (x.mnemonic(), dst_reg_of(x)) {
            (Mnemonic::Test, Some(r))
                if x.op1_kind() == OpKind::Register && x.op1_register() == r =>
            {
                dwarf_reg(r)
                    .map(|d| st.regs[usize::from(d)])
                    .filter(|v| !matches!(v, Val::Unknown | Val::Imm(_)))
                    .map(|v| match v {
                        Val::Entry(d, _) if r.is_gpr32() => Val::Entry(d, 32),
                        Val::Def(d, _) if r.is_gpr32() => Val::Def(d, 32),
                        v => v,
                    })
                    .filter(|_| r.is_gpr32() || r.is_gpr64())
            }
            _ if x.rflags_modified() != 0 => None,
            _ => st.zero,
        };
        st.zero = zero;
        let v = &mut st.regs;
        let cfa = self.row(ins.unit, ins.off).and_then(|r| r.cfa);
        // A frame slot named by an rsp/rbp-relative operand, as (CFA offset, bytes).
        let slot_of = |x: &Instruction| -> Option<(i64, u8)> {
            if x.memory_index() != Register::None {
                return None;
            }
            let n = match (x.memory_base(), cfa) {
                (Register::RSP, Some((7, n))) | (Register::RBP, Some((6, n))) => n,
                _ => return None,
            };
            Some((
                (x.memory_displacement64() as i64).wrapping_sub(n),
                x.memory_size().size() as u8,
            ))
        };
        let reg64 = |r: Register| r.is_gpr64() || r.is_gpr32();
        let dst = (x.op_count() >= 1 && x.op0_kind() == OpKind::Register)
            .then(|| x.op0_register())
            .filter(|r| reg64(*r));
        let narrow = |val: Val, d: Register| match val {
            Val::Entry(r, w) if d.is_gpr32() => Val::Entry(r, w.min(32)),
            Val::Def(i, w) if d.is_gpr32() => Val::Def(i, w.min(32)),
            Val::Imm(c) if d.is_gpr32() => Val::Imm(i64::from(c as u32)),
            val if d.is_gpr64() => val,
            _ => Val::Unknown,
        };
        // A store of a register or immediate into an unescaped slot.
        let mut store: Option<(i64, u8, Val)> = None;
        let new = match (x.mnemonic(), dst) {
            (Mnemonic::Mov, Some(d)) if x.op1_kind() == OpKind::Register => {
                let s = x.op1_register();
                match dwarf_reg(s).map(|r| v[usize::from(r)]) {
                    // `mov rsp, reg`: the frame's address.
                    _ if s == Register::RSP => match cfa {
                        Some((7, n)) if d.is_gpr64() => Some(Val::Frame(-n)),
                        _ => Some(Val::Unknown),
                    },
                    Some(val) if d.is_gpr32() || s.is_gpr64() => Some(narrow(val, d)),
                    _ => Some(Val::Unknown),
                }
            }
            (Mnemonic::Mov, Some(d))
                if x.op1_kind() == OpKind::Memory
                    && x.segment_prefix() == Register::FS
                    && x.memory_base() == Register::None
                    && x.memory_displacement64() == 0x28
                    && d.is_gpr64() =>
            {
                Some(Val::Canary)
            }
            (Mnemonic::Mov, Some(d)) if x.op1_kind() == OpKind::Memory => {
                match slot_of(x).and_then(|(off, size)| {
                    st.slots
                        .get(&off)
                        .filter(|(_, stored)| *stored == size && floor.private(off, size))
                        .map(|(val, _)| *val)
                }) {
                    Some(val) => Some(narrow(val, d)),
                    None => Some(narrow(Val::Def(idx, 64), d)),
                }
            }
            (Mnemonic::Mov, Some(d))
                if matches!(
                    x.op1_kind(),
                    OpKind::Immediate32 | OpKind::Immediate64 | OpKind::Immediate32to64
                ) =>
            {
                let imm = x.immediate(1);
                Some(Val::Imm(if d.is_gpr32() {
                    i64::from(imm as u32)
                } else {
                    imm as i64
                }))
            }
            (Mnemonic::Mov, None) if x.op0_kind() == OpKind::Memory => {
                if let Some((off, size)) =
                    slot_of(x).filter(|&(off, size)| floor.private(off, size))
                {
                    let val = match x.op1_kind() {
                        OpKind::Register => dwarf_reg(x.op1_register())
                            .map(|r| v[usize::from(r)])
                            .map_or(Val::Unknown, |val| match (val, size) {
                                (val, 8) => val,
                                (Val::Entry(r, _), 4) => Val::Entry(r, 32),
                                (Val::Def(i, _), 4) => Val::Def(i, 32),
                                _ => Val::Unknown,
                            }),
                        OpKind::Immediate32 | OpKind::Immediate32to64 => {
                            Val::Imm(x.immediate(1) as i64)
                        }
                        _ => Val::Unknown,
                    };
                    store = Some((off, size, val));
                }
                None
            }
            (Mnemonic::Xor, Some(d))
                if x.op1_kind() == OpKind::Register && x.op1_register() == d =>
            {
                Some(Val::Imm(0))
            }
            (Mnemonic::Lea, Some(d)) if d.is_gpr64() && x.memory_index() == Register::None => {
                match (x.memory_base(), cfa) {
                    (Register::RIP, _) if ins.unit == self.unit => Some(Val::RipLea(ins.off)),
                    (Register::RSP, Some((7, n))) | (Register::RBP, Some((6, n))) => Some(
                        Val::Frame((x.memory_displacement64() as i64).wrapping_sub(n)),
                    ),
                    _ => Some(Val::Unknown),
                }
            }
            _ => None,
        };
        let info = factory.info(x);
        for r in info.used_registers() {
            if writes(r.access()) {
                if let Some(d) = dwarf_reg(r.register()) {
                    v[usize::from(d)] = Val::Unknown;
                }
            }
        }
        // Any other write to the frame forgets the slots it overlaps.
        for m in info.used_memory() {
            if !writes(m.access()) {
                continue;
            }
            let n = match (m.base(), cfa) {
                (Register::RSP, Some((7, n))) | (Register::RBP, Some((6, n))) => n,
                (Register::RSP | Register::RBP, _) => {
                    st.slots.clear();
                    continue;
                }
                _ => continue,
            };
            if m.index() != Register::None {
                st.slots.clear();
                continue;
            }
            let lo = (m.displacement() as i64).wrapping_sub(n);
            let hi = lo + m.memory_size().size().max(1) as i64;
            st.slots
                .retain(|&off, (_, size)| off + i64::from(*size) <= lo || off >= hi);
        }
        if let Some((off, size, val)) = store {
            if val != Val::Unknown {
                st.slots.insert(off, (val, size));
            }
        }
        if matches!(
            x.flow_control(),
            FlowControl::Call | FlowControl::IndirectCall
        ) {
            for r in CALLER_SAVED {
                v[usize::from(r)] = Val::Unknown;
            }
            // The result.
            v[0] = Val::Def(idx, 64);
        }
        if let (Some(val), Some(d)) = (new, dst.and_then(dwarf_reg)) {
            v[usize::from(d)] = val;
        }
    }

    fn liveness(&self) -> Liveness {
        self.liveness_cut(&BTreeSet::new())
    }

    /// Direct calls followed by padding (`nop`, `int3`): a compiler puts nothing after a
    /// call it knows does not return, such as one followed by `__builtin_unreachable()`,
    /// which no object says. Only ever used to explain a refusal.
    fn padded_calls(&self) -> BTreeSet<usize> {
        use iced_x86::Mnemonic;
        (0..self.code.len().saturating_sub(1))
            .filter(|&i| {
                let (c, next) = (&self.code[i], &self.code[i + 1]);
                c.insn.flow_control() == FlowControl::Call
                    && next.unit == c.unit
                    && c.succ.contains(&(i + 1))
                    && matches!(next.insn.mnemonic(), Mnemonic::Nop | Mnemonic::Int3)
            })
            .collect()
    }

    /// [`Side::liveness`] with the fall-through of the calls `cut` removed.
    fn liveness_cut(&self, cut: &BTreeSet<usize>) -> Liveness {
        let n = self.code.len();
        let mut effects = Vec::with_capacity(n);
        let mut factory = InstructionInfoFactory::new();
        for ins in &self.code {
            effects.push(self.effect(ins, &mut factory));
        }
        let mut live_in: Vec<Live> = vec![Live::default(); n];
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ins) in self.code.iter().enumerate() {
            for &s in ins.succ.iter().filter(|_| !cut.contains(&i)) {
                preds[s].push(i);
            }
        }
        let mut work: Vec<usize> = (0..n).collect();
        let mut queued = vec![true; n];
        while let Some(i) = work.pop() {
            queued[i] = false;
            let ins = &self.code[i];
            let mut out = Live::default();
            if ins.exit {
                // The caller's registers must be back by the time control leaves.
                out.regs = 0x3f;
            }
            if ins.unknown {
                out.regs = 0x3f;
                out.unknown = true;
            }
            for &s in ins.succ.iter().filter(|_| !cut.contains(&i)) {
                out.union(&live_in[s]);
            }
            let e = &effects[i];
            let mut inn = out;
            inn.regs &= !e.kill_regs;
            for k in &e.kill_slots {
                inn.slots.remove(k);
            }
            inn.regs |= e.use_regs;
            inn.slots.extend(e.use_slots.iter().copied());
            inn.unknown |= e.unknown;
            if inn != live_in[i] {
                live_in[i] = inn;
                for &p in &preds[i] {
                    if !queued[p] {
                        queued[p] = true;
                        work.push(p);
                    }
                }
            }
        }
        Liveness {
            live_in,
            index: self.index.clone(),
        }
    }

    /// What one instruction reads and writes of the tracked state.
    fn effect(&self, ins: &Ins, factory: &mut InstructionInfoFactory) -> Effect {
        let mut e = Effect::default();
        let info = factory.info(&ins.insn);
        for r in info.used_registers() {
            let Some(i) = dwarf_reg(r.register()).and_then(saved_index) else {
                continue;
            };
            let bit = 1u8 << i;
            match r.access() {
                OpAccess::Read | OpAccess::CondRead => e.use_regs |= bit,
                OpAccess::Write => {
                    if r.register().size() >= 4 {
                        e.kill_regs |= bit;
                    } else {
                        e.use_regs |= bit;
                    }
                }
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => e.use_regs |= bit,
                _ => {}
            }
        }
        let row = self.row(ins.unit, ins.off);
        for m in info.used_memory() {
            if matches!(m.access(), OpAccess::NoMemAccess | OpAccess::None) {
                continue;
            }
            let base = m.base();
            let frame_rel = match (base, row.as_ref().and_then(|r| r.cfa)) {
                (Register::RSP, Some((7, n))) | (Register::RBP, Some((6, n))) => Some(n),
                (Register::RSP | Register::ESP, _) => {
                    e.unknown = true;
                    continue;
                }
                _ => None,
            };
            let Some(n) = frame_rel else { continue };
            if m.index() != Register::None {
                // An indexed frame access (an array in the frame): a write may be left out
                // (it only ever ends a value's life); a read may read any of its slots.
                if !matches!(m.access(), OpAccess::Write | OpAccess::CondWrite) {
                    e.unknown = true;
                }
                continue;
            }
            let off = (m.displacement() as i64).wrapping_sub(n);
            // Bytes, so that a 4-byte spill next to another one is told apart.
            let size = m.memory_size().size().clamp(1, 64) as i64;
            match m.access() {
                OpAccess::Write => e.kill_slots.extend(off..off + size),
                OpAccess::CondWrite => {}
                _ => e.use_slots.extend(off..off + size),
            }
        }
        e
    }
}

/// Which calls never return, each proven: a call to one has no fall-through, so the code
/// the compiler placed after it (often another path's code, with other values in the
/// callee-saved registers) is neither live after nor a predecessor of anything.
struct NoReturn<'x, 'o, 'a> {
    u: &'x Units<'o, 'a>,
    declared: Option<&'x BTreeSet<String>>,
    /// Per function of the object: whether it never returns (`false` while being decided,
    /// so recursion counts as returning).
    memo: RefCell<HashMap<UnitId, bool>>,
}

impl<'x, 'o, 'a> NoReturn<'x, 'o, 'a> {
    fn new(u: &'x Units<'o, 'a>, declared: Option<&'x BTreeSet<String>>) -> Self {
        NoReturn {
            u,
            declared,
            memo: RefCell::default(),
        }
    }

    /// Whether a call to `t` never returns: a C library function that never does
    /// ([`NORETURN`]), a function the compilation unit declares `noreturn` (the compiler
    /// relied on it: nothing after such a call belongs to it), or a function of this object
    /// that no other definition can replace at run time (local or non-default visibility)
    /// whose code reaches no `ret` ([`NoReturn::proven`]).
    fn call(&self, t: &Target) -> bool {
        self.call_at(t, 0)
    }

    fn call_at(&self, t: &Target, depth: u32) -> bool {
        let name = callee_name(self.u, t);
        if NORETURN.contains(&name.as_str()) {
            return true;
        }
        let declared = |n: &str| self.declared.is_some_and(|d| d.contains(n));
        match *t {
            Target::External { .. } => declared(&name),
            Target::Unit {
                unit, entry: true, ..
            } => {
                let x = self.u.unit(unit);
                x.kind == crate::units::UnitKind::Func
                    && (x.names.iter().any(|n| declared(n)) || self.proven(unit, depth))
            }
            _ => false,
        }
    }

    /// Whether no path from the entry of function `f` (and of its `.cold` parts) reaches a
    /// `ret`, a jump suture cannot follow, a tail call to a function that may return, or the
    /// end of its code; calls fall through unless they provably do not return.
    fn proven(&self, f: UnitId, depth: u32) -> bool {
        if let Some(&known) = self.memo.borrow().get(&f) {
            return known;
        }
        let u = self.u;
        let x = u.unit(f);
        let fixed = x.bind == crate::elf::Bind::Local
            || x.bind == crate::elf::Bind::Global && u.obj.symbol(x.sym).visibility != 0;
        if !fixed || x.ifunc || depth > 8 {
            return false;
        }
        self.memo.borrow_mut().insert(f, false);
        let never = self.walk(f, depth);
        self.memo.borrow_mut().insert(f, never);
        never
    }

    fn walk(&self, f: UnitId, depth: u32) -> bool {
        let u = self.u;
        let fname = &u.unit(f).name;
        let mut relocs: HashMap<UnitId, Vec<(u64, Target)>> = HashMap::new();
        let mut seen = BTreeSet::new();
        let mut work = vec![(f, 0u64)];
        while let Some((unit, off)) = work.pop() {
            if !seen.insert((unit, off)) {
                continue;
            }
            let bytes = u.bytes(unit);
            let Some(rest) = bytes.get(off as usize..).filter(|r| !r.is_empty()) else {
                return false; // off the end of the code
            };
            let insn = Decoder::with_ip(64, rest, off, DecoderOptions::NONE).decode();
            if insn.is_invalid() {
                return false;
            }
            let len = insn.len() as u64;
            let ustart = u.unit(unit).start;
            let rs = relocs.entry(unit).or_insert_with(|| {
                u.relocs(unit)
                    .map(|(r, t)| (r.offset - ustart, t))
                    .collect()
            });
            let reloc = rs
                .iter()
                .find(|(at, _)| (off..off + len).contains(at))
                .copied();
            let next = (unit, off + len);
            match insn.flow_control() {
                FlowControl::Next | FlowControl::XbeginXabortXend | FlowControl::Interrupt => {
                    work.push(next)
                }
                FlowControl::Call | FlowControl::IndirectCall => {
                    if !reloc.is_some_and(|(_, t)| self.call_at(&t, depth + 1)) {
                        work.push(next);
                    }
                }
                // `ud2`: traps.
                FlowControl::Exception => {}
                FlowControl::Return | FlowControl::IndirectBranch => return false,
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                    if insn.flow_control() == FlowControl::ConditionalBranch {
                        work.push(next);
                    }
                    match reloc {
                        Some((at, Target::Unit { unit: tu, rel, .. }))
                            if tu == f
                                || names::is_fragment(&u.unit(tu).name)
                                    && belongs(&u.unit(tu).name, fname) =>
                        {
                            // The field's distance to the instruction's end, as in `decode`.
                            work.push((tu, (rel + (off + len) as i64 - at as i64) as u64))
                        }
                        // A tail call.
                        Some((_, t)) => {
                            if !self.call_at(&t, depth + 1) {
                                return false;
                            }
                        }
                        None => {
                            let t = insn.near_branch_target();
                            if t >= bytes.len() as u64 {
                                return false;
                            }
                            work.push((unit, t));
                        }
                    }
                }
            }
        }
        true
    }
}

/// The register operand 0 of `x`, if it is one.
fn dst_reg_of(x: &Instruction) -> Option<Register> {
    (x.op_count() >= 1 && x.op0_kind() == iced_x86::OpKind::Register).then(|| x.op0_register())
}

/// Whether an access may write.
fn writes(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite
    )
}

/// Whether `.cold` fragment `frag` belongs to function `f` (`f.cold`, `f.cold.1`...).
fn belongs(frag: &str, f: &str) -> bool {
    frag.strip_prefix(f)
        .is_some_and(|rest| rest.starts_with(".cold"))
}

fn callee_name(u: &Units, t: &Target) -> String {
    match *t {
        Target::Unit { unit, .. } => u.unit(unit).key.clone(),
        Target::External { sym, .. } | Target::Absolute { sym, .. } => {
            let name = &u.obj.symbol(sym).name;
            // `foo@PLT` and versioned names compare by the symbol.
            name.split('@').next().unwrap_or(name).to_string()
        }
        _ => "?".into(),
    }
}

fn tagged(u: &Units, unit: UnitId, off: u64) -> u64 {
    let x = u.unit(unit);
    (u64::from(x.section.0) + 1) << TAG | (x.start + off)
}

/// Places in the code: (unit, offset).
type Places = Vec<(UnitId, u64)>;

/// Offsets (in `units`) that jump tables in data sections point at: for every data
/// reference of the function's code to the start of a table, the consecutive code addresses
/// stored from there (8-byte absolute entries, or 4-byte entries relative to the table).
/// Entries from the next place the code refers to on are returned apart: gcc puts a
/// function's tables one after the other, so they are usually the next table's, read
/// against the wrong start (they are read again from their own); but the code may also
/// refer into a table (`.L4-8`), so they may be this table's too.
fn table_targets(u: &Units, units: &[UnitId]) -> (Places, Places) {
    let mut starts = BTreeSet::new();
    for &unit in units {
        for (_, t) in u.relocs(unit) {
            if let Target::Anon { sec, at, .. } = t {
                starts.insert((sec, at as u64));
            }
        }
    }
    let (mut out, mut past) = (Vec::new(), Vec::new());
    for &(sec, start) in &starts {
        let section = u.obj.section(sec);
        let next = starts
            .range((sec, start + 1)..)
            .next()
            .filter(|&&(s, _)| s == sec)
            .map_or(u64::MAX, |&(_, n)| n);
        if section.flags & 0x4 != 0 {
            continue; // executable: not a table
        }
        let relocs: Vec<_> = u
            .section_relocs_of(sec, start, section.size)
            .collect::<Vec<_>>();
        let mut expect = start;
        for (r, t) in relocs {
            if r.offset != expect {
                break;
            }
            let Target::Unit { unit, rel, .. } = t else {
                break;
            };
            if !units.contains(&unit) {
                break;
            }
            let (stride, target) = match r.r_type {
                1 => (8, rel),                                  // R_X86_64_64
                2 | 24 => (4, rel - (r.offset - start) as i64), // PC32, PC64-ish
                _ => break,
            };
            if r.offset < next {
                out.push((unit, target as u64));
            } else {
                past.push((unit, target as u64));
            }
            expect += stride;
        }
    }
    (out, past)
}

fn rows_of(u: &Units, unit: UnitId) -> Vec<Row> {
    let mut rows = Vec::new();
    let Ok(Some((sec, fdes))) = u.eh_frame_records() else {
        return rows;
    };
    let data = u.obj.section(sec).data;
    let eh = gimli::EhFrame::new(data, LittleEndian);
    let bases = gimli::BaseAddresses::default().set_eh_frame(0);
    for f in fdes.iter().filter(|f| f.unit == Some(unit)) {
        // The FDE's pc_begin relocation: where in the unit it starts.
        let start = u
            .section_relocs_of(sec, (f.at + 8) as u64, (f.at + 9) as u64)
            .next()
            .and_then(|(_, t)| match t {
                Target::Unit { rel, .. } => Some(rel),
                _ => None,
            })
            .unwrap_or(0);
        let Ok(fde) = eh.fde_from_offset(
            &bases,
            gimli::EhFrameOffset(f.at),
            gimli::EhFrame::cie_from_offset,
        ) else {
            continue;
        };
        let initial = fde.initial_address();
        let mut ctx = gimli::UnwindContext::new();
        let Ok(mut table) = fde.rows(&eh, &bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(row)) = table.next_row() {
            let at = |a: u64| (a.wrapping_sub(initial) as i64 + start) as u64;
            let cfa = match row.cfa() {
                gimli::CfaRule::RegisterAndOffset { register, offset } => {
                    Some((register.0, *offset))
                }
                _ => None,
            };
            let mut saves = [Save::Same; 6];
            for (i, r) in CALLEE_SAVED.iter().enumerate() {
                saves[i] = match row.register(gimli::Register(*r)) {
                    None
                    | Some(gimli::RegisterRule::SameValue)
                    | Some(gimli::RegisterRule::Undefined) => Save::Same,
                    Some(gimli::RegisterRule::Offset(n)) => Save::At(n),
                    Some(_) => Save::Other,
                };
            }
            rows.push(Row {
                range: at(row.start_address())..at(row.end_address()),
                cfa,
                saves,
            });
        }
    }
    rows
}

// ---- What registers hold ----------------------------------------------------------------

/// A value a register provably holds at an instruction (on every path to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    /// The value register `r` had at the function's entry (`w` = 64) or its low 32 bits,
    /// zero-extended (`w` = 32).
    Entry(u16, u8),
    /// The address CFA + k.
    Frame(i64),
    /// The result of the RIP-relative `lea` at this offset of the function.
    RipLea(u64),
    Imm(i64),
    /// The thread's stack-protector canary (`%fs:0x28`), the same for both versions.
    Canary,
    /// The value the instruction at this index last computed (a call's result, a load) or
    /// its low 32 bits zero-extended (`w` = 32): unknown, but the same in every register
    /// and slot holding it. Meaningful only within one version.
    Def(u32, u8),
    Unknown,
}

/// What the registers and the frame's unescaped slots hold before an instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VState {
    regs: [Val; 16],
    /// By CFA offset: (value, bytes stored).
    slots: std::collections::BTreeMap<i64, (Val, u8)>,
    /// The value whose being zero the flags say (`test r, r`).
    zero: Option<Val>,
}

impl VState {
    fn join(&mut self, o: &VState) {
        for r in 0..16 {
            if self.regs[r] != o.regs[r] {
                self.regs[r] = Val::Unknown;
            }
        }
        self.slots.retain(|k, v| o.slots.get(k) == Some(v));
        if self.zero != o.zero {
            self.zero = None;
        }
    }

    /// On the edge where the flags say `t` is zero: every copy of it is the constant 0.
    fn zeroed(&mut self, t: Val) {
        let low = match t {
            Val::Def(i, 64) => Some(Val::Def(i, 32)),
            Val::Entry(r, 64) => Some(Val::Entry(r, 32)),
            _ => None,
        };
        let hit = |v: &Val| *v == t || Some(*v) == low;
        for r in self.regs.iter_mut().filter(|v| hit(v)) {
            *r = Val::Imm(0);
        }
        for (v, _) in self.slots.values_mut().filter(|(v, _)| hit(v)) {
            *v = Val::Imm(0);
        }
    }

    /// Forgets the values instruction `i` computed before (it computes a new one).
    fn redefine(&mut self, i: u32) {
        for r in self.regs.iter_mut() {
            if matches!(*r, Val::Def(j, _) if j == i) {
                *r = Val::Unknown;
            }
        }
        self.slots
            .retain(|_, (v, _)| !matches!(*v, Val::Def(j, _) if j == i));
        if matches!(self.zero, Some(Val::Def(j, _)) if j == i) {
            self.zero = None;
        }
    }
}

/// Frame ranges pointers may reach (see [`Side::compute_escaped`]).
struct Escaped(Vec<(i64, i64)>);

/// The frame range a pointer to CFA + `k` may reach: the variable DWARF places there, or up
/// to the CFA's end of the address space when no variable of known size starts there.
fn extent(sized: &HashMap<i64, u64>, k: i64) -> (i64, i64) {
    match sized.get(&k) {
        Some(&size) if size > 0 => (k, k.saturating_add(size as i64)),
        _ => (k, i64::MAX),
    }
}

impl Escaped {
    /// Whether `size` bytes at CFA + `off` lie outside every range.
    fn private(&self, off: i64, size: u8) -> bool {
        let end = off + i64::from(size);
        self.0.iter().all(|&(lo, hi)| end <= lo || off >= hi)
    }
}

/// Register and slot values per instruction (see [`Side::values`]).
type Values = Vec<Option<VState>>;

const CALLER_SAVED: [u16; 9] = [0, 1, 2, 4, 5, 8, 9, 10, 11];

// ---- Liveness ----------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Live {
    /// Bit i: `CALLEE_SAVED[i]`.
    regs: u8,
    /// Bytes of the frame, by CFA-relative offset.
    slots: BTreeSet<i64>,
    /// Something was reached that the analysis cannot follow.
    unknown: bool,
}

impl Live {
    fn union(&mut self, o: &Live) {
        self.regs |= o.regs;
        self.slots.extend(o.slots.iter().copied());
        self.unknown |= o.unknown;
    }
}

#[derive(Default)]
struct Effect {
    use_regs: u8,
    kill_regs: u8,
    use_slots: Vec<i64>,
    kill_slots: Vec<i64>,
    unknown: bool,
}

struct Liveness {
    live_in: Vec<Live>,
    index: HashMap<(UnitId, u64), usize>,
}

impl Liveness {
    fn at(&self, unit: UnitId, off: u64) -> Option<&Live> {
        self.index.get(&(unit, off)).map(|&i| &self.live_in[i])
    }
}

// ---- DWARF variables -----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Reg(u16),
    /// The value is `reg + k`.
    Affine(u16, i64),
    /// In memory at CFA + k.
    Frame(i64),
    Const(i64),
    Other,
}

#[derive(Clone, Copy, Debug)]
struct VarAt {
    loc: Loc,
    size: u64,
}

enum VarLoc {
    Expr(Vec<u8>),
    /// (tagged address range, expression)
    List(Vec<(Range<u64>, Vec<u8>)>),
}

struct Var {
    key: String,
    /// Tagged address ranges of the innermost scope holding it (empty: the whole function).
    scopes: Vec<Range<u64>>,
    loc: VarLoc,
    size: u64,
}

struct FnVars {
    /// Tagged address of the function's entry.
    entry: u64,
    frame_base_cfa: bool,
    vars: Vec<Var>,
    /// Inlined-function instances: (path, tagged ranges).
    inlines: Vec<(String, Vec<Range<u64>>)>,
}

impl FnVars {
    fn inline_path(&self, pc: u64) -> String {
        // The longest path whose ranges hold the pc (paths nest).
        self.inlines
            .iter()
            .filter(|(_, r)| r.iter().any(|r| r.contains(&pc)))
            .map(|(p, _)| p.as_str())
            .max_by_key(|p| p.len())
            .unwrap_or("")
            .to_string()
    }
}

struct FnDebug {
    functions: Vec<FnVars>,
    /// Functions the compilation unit declares `noreturn` (`DW_AT_noreturn`): the compiler
    /// put no code after a call to one, so nothing after such a call is reachable.
    noreturn: BTreeSet<String>,
}

fn read_leb(b: &[u8], i: &mut usize, signed: bool) -> Option<i64> {
    let mut result: i64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b.get(*i)?;
        *i += 1;
        if shift < 64 {
            result |= i64::from(byte & 0x7f) << shift;
        }
        shift += 7;
        if byte & 0x80 == 0 {
            if signed && shift < 64 && byte & 0x40 != 0 {
                result |= -1i64 << shift;
            }
            return Some(result);
        }
    }
}

/// The simple location forms, from an expression's bytes.
fn classify(e: &[u8], frame_base_cfa: bool, row: &Row) -> Loc {
    let mut i = 1;
    let op = match e.first() {
        Some(&op) => op,
        None => return Loc::Other,
    };
    let stack_value = |i: usize| e.get(i..) == Some(&[0x9f][..]);
    let num = |i: &mut usize, n: usize, signed: bool| -> Option<i64> {
        let b = e.get(*i..*i + n)?;
        *i += n;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b);
        let u = u64::from_le_bytes(v);
        Some(if signed && n < 8 {
            let sh = 64 - 8 * n as u32;
            ((u << sh) as i64) >> sh
        } else {
            u as i64
        })
    };
    let r = (|| -> Option<Loc> {
        Some(match op {
            0x50..=0x6f if e.len() == 1 => Loc::Reg(u16::from(op - 0x50)),
            0x90 => {
                let r = read_leb(e, &mut i, false)?;
                (i == e.len()).then_some(Loc::Reg(r as u16))?
            }
            0x70..=0x8f => {
                let reg = u16::from(op - 0x70);
                let k = read_leb(e, &mut i, true)?;
                if stack_value(i) {
                    Loc::Affine(reg, k)
                } else if i == e.len() && reg == 7 {
                    // Memory at rsp + k.
                    match row.cfa {
                        Some((7, n)) => Loc::Frame(k - n),
                        _ => Loc::Other,
                    }
                } else {
                    Loc::Other
                }
            }
            0x91 if frame_base_cfa => {
                let k = read_leb(e, &mut i, true)?;
                (i == e.len()).then_some(Loc::Frame(k))?
            }
            0x30..=0x4f if stack_value(1) => Loc::Const(i64::from(op - 0x30)),
            0x08..=0x0f => {
                let (n, s) = match op {
                    0x08 => (1, false),
                    0x09 => (1, true),
                    0x0a => (2, false),
                    0x0b => (2, true),
                    0x0c => (4, false),
                    0x0d => (4, true),
                    0x0e => (8, false),
                    _ => (8, true),
                };
                let v = num(&mut i, n, s)?;
                stack_value(i).then_some(Loc::Const(v))?
            }
            0x10 | 0x11 => {
                let v = read_leb(e, &mut i, op == 0x11)?;
                stack_value(i).then_some(Loc::Const(v))?
            }
            0x9e => {
                let n = read_leb(e, &mut i, false)? as usize;
                if n == 0 || n > 8 || i + n != e.len() {
                    return None;
                }
                Loc::Const(num(&mut i, n, false)?)
            }
            _ => return None,
        })
    })();
    r.unwrap_or(Loc::Other)
}

type Dw<'a, 'r> = gimli::Dwarf<Reader<'a, 'r>>;
type DwUnit<'a, 'r> = gimli::Unit<Reader<'a, 'r>>;

impl FnDebug {
    /// The variables of every function of an object with DWARF (`-g`).
    fn index(u: &Units) -> Option<FnDebug> {
        let obj = u.obj;
        let (relocs, empty) = (debug_relocs(obj), Relocs::default());
        let dwarf = load_dwarf(obj, &relocs, &empty)?;
        let mut functions = Vec::new();
        let mut noreturn = BTreeSet::new();
        each_unit(&dwarf, |unit, root| {
            let _ = collect_functions(&dwarf, unit, root, &mut functions, &mut noreturn);
        });
        Some(FnDebug {
            functions,
            noreturn,
        })
    }
}

fn attr_name<'a, 'r>(
    dwarf: &Dw<'a, 'r>,
    unit: &DwUnit<'a, 'r>,
    e: &gimli::DebuggingInformationEntry<Reader<'a, 'r>>,
) -> Option<String> {
    use gimli::Reader as _;
    if let Some(v) = e.attr_value(gimli::DW_AT_name) {
        if let Ok(s) = dwarf.attr_string(unit, v) {
            return s.to_string_lossy().ok().map(|c| c.into_owned());
        }
    }
    for at in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
        if let Some(gimli::AttributeValue::UnitRef(off)) = e.attr_value(at) {
            if let Ok(origin) = unit.entry(off) {
                if let Some(n) = attr_name(dwarf, unit, &origin) {
                    return Some(n);
                }
            }
        }
    }
    None
}

fn ranges<'a, 'r>(
    dwarf: &Dw<'a, 'r>,
    unit: &DwUnit<'a, 'r>,
    e: &gimli::DebuggingInformationEntry<Reader<'a, 'r>>,
) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    if let Ok(mut it) = dwarf.die_ranges(unit, e) {
        while let Ok(Some(r)) = it.next() {
            out.push(r.begin..r.end);
        }
    }
    out
}

pub(crate) fn type_size<'a, 'r>(
    unit: &DwUnit<'a, 'r>,
    e: &gimli::DebuggingInformationEntry<Reader<'a, 'r>>,
    depth: u32,
) -> u64 {
    if depth > 16 {
        return 8;
    }
    if let Some(v) = e.attr_value(gimli::DW_AT_byte_size) {
        if let Some(n) = v.udata_value() {
            return n;
        }
    }
    let Some(gimli::AttributeValue::UnitRef(t)) = e.attr_value(gimli::DW_AT_type) else {
        return 8;
    };
    let Ok(te) = unit.entry(t) else { return 8 };
    if te.tag() == gimli::DW_TAG_array_type {
        let elem = type_size(unit, &te, depth + 1);
        let mut count = 1u64;
        if let Ok(mut tree) = unit.entries_tree(Some(t)) {
            if let Ok(root) = tree.root() {
                let mut ch = root.children();
                while let Ok(Some(c)) = ch.next() {
                    let ce = c.entry();
                    let n = match (
                        ce.attr_value(gimli::DW_AT_count),
                        ce.attr_value(gimli::DW_AT_upper_bound),
                    ) {
                        (Some(c), _) => c.udata_value(),
                        (None, Some(ub)) => ub.udata_value().map(|x| x + 1),
                        _ => None,
                    };
                    count = count.saturating_mul(n.unwrap_or(1));
                }
            }
        }
        return elem.saturating_mul(count);
    }
    type_size(unit, &te, depth + 1)
}

fn collect_functions<'a, 'r>(
    dwarf: &Dw<'a, 'r>,
    unit: &DwUnit<'a, 'r>,
    node: gimli::EntriesTreeNode<Reader<'a, 'r>>,
    out: &mut Vec<FnVars>,
    noreturn: &mut BTreeSet<String>,
) -> gimli::Result<()> {
    let mut children = node.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        if e.tag() == gimli::DW_TAG_subprogram {
            if matches!(
                e.attr_value(gimli::DW_AT_noreturn),
                Some(gimli::AttributeValue::Flag(true))
            ) {
                noreturn.extend(attr_name(dwarf, unit, e));
            }
            let rs = ranges(dwarf, unit, e);
            if let Some(entry) = rs.first().map(|r| r.start).filter(|_| !rs.is_empty()) {
                let low = match e.attr_value(gimli::DW_AT_low_pc) {
                    Some(v) => dwarf.attr_address(unit, v)?.unwrap_or(entry),
                    None => entry,
                };
                let frame_base_cfa = matches!(
                    e.attr_value(gimli::DW_AT_frame_base),
                    Some(gimli::AttributeValue::Exprloc(ref x)) if {
                        use gimli::Reader as _;
                        x.0.to_slice().map(|b| b[..] == [0x9c]).unwrap_or(false)
                    }
                );
                let mut f = FnVars {
                    entry: low,
                    frame_base_cfa,
                    vars: Vec::new(),
                    inlines: Vec::new(),
                };
                collect_vars(dwarf, unit, child, "", &[], &mut f)?;
                out.push(f);
                continue;
            }
        }
        collect_functions(dwarf, unit, child, out, noreturn)?;
    }
    Ok(())
}

fn collect_vars<'a, 'r>(
    dwarf: &Dw<'a, 'r>,
    unit: &DwUnit<'a, 'r>,
    node: gimli::EntriesTreeNode<Reader<'a, 'r>>,
    path: &str,
    scopes: &[Range<u64>],
    f: &mut FnVars,
) -> gimli::Result<()> {
    use gimli::Reader as _;
    let mut children = node.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        match e.tag() {
            gimli::DW_TAG_variable | gimli::DW_TAG_formal_parameter => {
                let Some(name) = attr_name(dwarf, unit, e) else {
                    continue;
                };
                let size = match e.attr_value(gimli::DW_AT_abstract_origin) {
                    Some(gimli::AttributeValue::UnitRef(o)) => {
                        unit.entry(o).map(|oe| type_size(unit, &oe, 0)).unwrap_or(8)
                    }
                    _ => type_size(unit, e, 0),
                };
                let loc = match e.attr_value(gimli::DW_AT_location) {
                    Some(gimli::AttributeValue::Exprloc(x)) => {
                        VarLoc::Expr(x.0.to_slice()?.into_owned())
                    }
                    Some(v) => match dwarf.attr_locations(unit, v)? {
                        Some(mut it) => {
                            let mut list = Vec::new();
                            while let Some(le) = it.next()? {
                                list.push((
                                    le.range.begin..le.range.end,
                                    le.data.0.to_slice()?.into_owned(),
                                ));
                            }
                            VarLoc::List(list)
                        }
                        None => continue,
                    },
                    None => continue,
                };
                f.vars.push(Var {
                    key: if path.is_empty() {
                        name
                    } else {
                        format!("{path}>{name}")
                    },
                    scopes: scopes.to_vec(),
                    loc,
                    size,
                });
            }
            gimli::DW_TAG_lexical_block => {
                let rs = ranges(dwarf, unit, e);
                let inner = if rs.is_empty() { scopes.to_vec() } else { rs };
                collect_vars(dwarf, unit, child, path, &inner, f)?;
            }
            gimli::DW_TAG_inlined_subroutine => {
                let rs = ranges(dwarf, unit, e);
                let name = attr_name(dwarf, unit, e).unwrap_or_else(|| "?".into());
                let p = if path.is_empty() {
                    name
                } else {
                    format!("{path}>{name}")
                };
                f.inlines.push((p.clone(), rs.clone()));
                collect_vars(dwarf, unit, child, &p, &rs, f)?;
            }
            _ => {}
        }
    }
    Ok(())
}
