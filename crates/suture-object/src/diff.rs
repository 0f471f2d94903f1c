//! Correlating two builds of one translation unit and deciding what the patch must contain.
//!
//! 1. Correlate units (functions, data) of the original and patched objects: exact names for
//!    build-stable names, then build-stable keys (clone and static-local numbers dropped), then
//!    by use (which correlated functions refer to them), then by identical contents.
//! 2. Compare correlated functions: size, bytes, and every relocation's *target* (a unit, an
//!    external symbol, the contents of a string or constant, an anonymous table), never raw
//!    section offsets, so unrelated layout shifts are not changes.
//! 3. Include changed and new functions, new data, and copies of changed local read-only data;
//!    close the set over split fragments (`.cold`), which are only patched with their parent.
//! 4. Everything included code refers to that is not included becomes a reference to the
//!    original (or to an external symbol).
//!
//! Same-named statics (`list.0`/`list.1`, two `_rs` in one function) with the same users are
//! told apart by *use position*: for each correlated user, the unit's position among the
//! distinct members of its family the user refers to (in declaration order, which the
//! compilers' numbering keeps; code order changes when a fix moves blocks) and how many it
//! refers to. Only equal, unique signatures pair; a fix that adds a member to a user changes the count
//! and pairs nothing (a shifted "first is first" would hand a running value to the wrong site).
//!
//! Kernel statics that macros create per call site, and what each gets when use cannot match:
//! - rate-limit states (`_rs`) and once-flags (`__warned`, `__print_once`, `__already_done`):
//!   correlated by use when possible, so the patched code shares the running state; otherwise
//!   the patch gets its own copy with a note. Their value only throttles messages: the worst
//!   outcome is one more message or burst, better than refusing the fix.
//! - lockdep class keys (`__key` of `mutex_init`, `spin_lock_init`, `init_waitqueue_head`...):
//!   a key's *address* is the lock class, and locks initialised by unchanged code elsewhere
//!   keep the original's key, so a patched initialiser must use the same key: correlated by
//!   use, refused as ambiguous otherwise. Without `CONFIG_LOCKDEP` (Debian's kernels) the keys
//!   are empty objects, hold no state and never block a patch.
//! - `__func__` (and `CSWTCH` switch tables): read-only and without address identity; the
//!   patch carries its own copy, because gcc numbers them per unit and a large binary defines
//!   one name many times, which a reference to the original's would have to tell apart.
//! - dynamic-debug descriptors (`__UNIQUE_ID_ddebug*` in `__dyndbg`): compared without their
//!   line number, so a descriptor that only moved stays the original's, which is the one
//!   registered with dynamic debug (a copy could never be enabled). A changed format or
//!   function is a changed descriptor, refused like other changed data.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::elf::{Bind, Object, SecIdx};
use crate::names;
use crate::report::*;
use crate::special::{self, Entry};
use crate::units::{Target, Unit, UnitId, UnitKind, Units};
use crate::x86;

/// Why a patched-side unit is part of the patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Replaces the correlated original function (a jump is written at its entry, unless it is
    /// a fragment).
    Changed,
    /// A function the original does not have.
    NewFunc,
    /// A data object the original does not have.
    NewData,
    /// A copy of local read-only data whose contents changed.
    DataCopy,
}

/// The outcome of diffing two objects; [`crate::emit`] turns it into a patch object.
pub struct Diff<'o, 'a> {
    pub orig: Units<'o, 'a>,
    pub patched: Units<'o, 'a>,
    pub p2o: Vec<Option<UnitId>>,
    pub o2p: Vec<Option<UnitId>>,
    pub included: BTreeMap<UnitId, Role>,
    pub report: Report,
}

impl Diff<'_, '_> {
    /// How included code refers to `t` (a patched-side target): `None` when the target is
    /// inside the patch, else the original unit it stands for.
    pub fn original_for(&self, t: &Target) -> Option<UnitId> {
        let Target::Unit {
            unit,
            entry,
            branch,
            ..
        } = *t
        else {
            return None;
        };
        match self.included.get(&unit) {
            // Taking the address of a replaced function keeps the original address, so
            // function pointers compare equal between old and new code; calls go straight to
            // the new code.
            Some(Role::Changed)
                if entry && !branch && !names::is_fragment(&self.patched.unit(unit).name) =>
            {
                self.p2o[unit.0 as usize]
            }
            Some(_) => None,
            None => self.p2o[unit.0 as usize],
        }
    }
}

const INIT_SECTION_PREFIXES: &[&str] = &[".init.", ".exit.", ".head.text"];

/// How to diff.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Keep functions whose only changes are moved line numbers in the patch.
    pub include_line_shifts: bool,
    /// The fix's own line moves (from its diff), when known: a line-number change must then
    /// also be the move the diff makes at that line (the line itself unchanged), not only one
    /// the line tables show.
    pub line_map: Option<std::sync::Arc<crate::lines::LineMap>>,
    /// Compute on-stack replacement maps for the replaced functions ([`crate::osr`]).
    pub osr: bool,
}

pub fn diff<'o, 'a>(orig: &'o Object<'a>, patched: &'o Object<'a>) -> Diff<'o, 'a> {
    diff_with(orig, patched, Options::default())
}

pub fn diff_with<'o, 'a>(
    orig: &'o Object<'a>,
    patched: &'o Object<'a>,
    options: Options,
) -> Diff<'o, 'a> {
    let o = Units::new(orig);
    let p = Units::new(patched);
    let (o2p, p2o) = correlate(&o, &p);
    let cmp = Cmp {
        o: &o,
        p: &p,
        o2p: &o2p,
        memo: RefCell::new(HashMap::new()),
        log: RefCell::new(Vec::new()),
        depth: std::cell::Cell::new(0),
    };

    let mut unsupported = Vec::new();
    let mut changed: BTreeMap<UnitId, Vec<Reason>> = BTreeMap::new();
    let mut copies = BTreeSet::new();

    for b in p.ids() {
        let ub = p.unit(b);
        let Some(a) = p2o[b.0 as usize] else {
            continue;
        };
        let ua = o.unit(a);
        match ub.kind {
            UnitKind::Func => {
                let reasons = cmp.compare_func(a, b);
                if !reasons.is_empty() {
                    changed.insert(b, reasons);
                }
            }
            UnitKind::Data => {
                if cmp.data_equal(a, b) {
                    continue;
                }
                let writable = o.is_writable(a) || p.is_writable(b);
                if ua.len() != ub.len() && writable {
                    unsupported.push(Unsupported {
                        symbol: ub.name.clone(),
                        kind: UnsupportedKind::DataSize,
                        reason: format!(
                            "size of data object changed from {} to {} bytes; the running code \
                             and its existing users keep the old layout",
                            ua.len(),
                            ub.len()
                        ),
                    });
                } else if writable {
                    unsupported.push(Unsupported {
                        symbol: ub.name.clone(),
                        kind: UnsupportedKind::DataValue,
                        reason: "initial value of existing data changed; the running program \
                                 already holds its own value, which a code patch cannot change \
                                 (set it from patch code instead)"
                            .into(),
                    });
                } else if ub.bind != Bind::Local {
                    unsupported.push(Unsupported {
                        symbol: ub.name.clone(),
                        kind: UnsupportedKind::DataValue,
                        reason: "contents of global read-only data changed; code in other \
                                 units keeps reading the original"
                            .into(),
                    });
                } else {
                    copies.insert(b);
                }
            }
        }
    }

    let line_shifts = line_shifts(&o, &p, &p2o, &mut changed, &options);

    // Functions whose code is the same but whose descriptor entries (jump labels, bug and
    // exception tables, alternatives, ...) differ.
    let o_entries = special::entries_by_unit(&o);
    let p_entries = special::entries_by_unit(&p);
    for b in p.ids() {
        let Some(a) = p2o[b.0 as usize] else { continue };
        if p.unit(b).kind != UnitKind::Func || changed.contains_key(&b) {
            continue;
        }
        if let Some(r) = cmp.entries_diff(&o_entries[a.0 as usize], &p_entries[b.0 as usize]) {
            changed.insert(b, vec![r]);
        }
    }
    for (sec, f) in special::unknown_tables_into(&p, |u| changed.contains_key(&u)) {
        unsupported.push(Unsupported {
            symbol: p.unit(f).name.clone(),
            kind: UnsupportedKind::SpecialSection,
            reason: format!(
                "{sec} (a section without symbols that describes code) has entries pointing \
                 inside this function; suture does not know its layout, so it cannot carry \
                 them with the patched copy"
            ),
        });
    }
    for reason in special::refusals(orig, patched) {
        unsupported.push(Unsupported {
            symbol: String::new(),
            kind: UnsupportedKind::SpecialSection,
            reason,
        });
    }

    // Symbols that exist on both sides but changed kind cannot be correlated.
    let mut orig_by_name: HashMap<&str, UnitId> = HashMap::new();
    for a in o.ids() {
        orig_by_name.insert(o.unit(a).name.as_str(), a);
    }
    for b in p.ids() {
        if p2o[b.0 as usize].is_some() {
            continue;
        }
        let ub = p.unit(b);
        if let Some(&a) = orig_by_name.get(ub.name.as_str()) {
            let ua = o.unit(a);
            if o2p[a.0 as usize].is_none() && (ua.kind != ub.kind || ua.tls != ub.tls) {
                unsupported.push(Unsupported {
                    symbol: ub.name.clone(),
                    kind: UnsupportedKind::SymbolType,
                    reason: format!("symbol changed from {} to {}", describe(ua), describe(ub)),
                });
            }
        }
        if ub.kind == UnitKind::Data && ub.tls {
            unsupported.push(Unsupported {
                symbol: ub.name.clone(),
                kind: UnsupportedKind::NewTls,
                reason: "new thread-local variable; a running process cannot grow its \
                         thread-local storage (use a global or heap data keyed by thread)"
                    .into(),
            });
        }
    }

    code_address_tables(&p, &p2o, &mut changed, &mut copies, &mut unsupported);
    refuse_escaped_copies(&p, &changed, &mut copies, &mut unsupported);
    refuse_alias_splits(&o, &p, &mut unsupported);
    let mut notes = refuse_ambiguous_statics(&o, &p, &o2p, &p2o, &mut unsupported);
    refuse_new_constructors(&o, &p, &p2o, &mut unsupported);
    let untraceable =
        replace_callers_of_untraceable(&o, &p, &p2o, &mut changed, &mut unsupported, &mut notes);

    // What goes into the patch.
    let mut included: BTreeMap<UnitId, Role> = BTreeMap::new();
    for &b in changed.keys() {
        included.insert(b, Role::Changed);
    }
    for &b in &untraceable {
        included.insert(b, Role::NewFunc);
    }
    for b in p.ids() {
        if p2o[b.0 as usize].is_none() {
            let role = match p.unit(b).kind {
                UnitKind::Func => Role::NewFunc,
                UnitKind::Data => Role::NewData,
            };
            included.insert(b, role);
        }
    }
    for &b in &copies {
        included.insert(b, Role::DataCopy);
    }
    close_over_fragments(&p, &p2o, &mut included, &mut changed);
    copy_compiler_constants(&p, &p2o, &mut included);

    for (&b, role) in &included {
        if *role != Role::Changed {
            continue;
        }
        let ub = p.unit(b);
        let section = &p.obj.section(ub.section).name;
        if ub.ifunc {
            unsupported.push(Unsupported {
                symbol: ub.name.clone(),
                kind: UnsupportedKind::IfuncResolver,
                reason: "IFUNC resolver changed; it ran when the program was loaded and its \
                         choice is already in place"
                    .into(),
            });
        }
        if let Some(&(_, at)) = p
            .unrelocatable
            .iter()
            .find(|(sec, at)| *sec == ub.section && (ub.start..ub.end).contains(at))
        {
            unsupported.push(Unsupported {
                symbol: ub.name.clone(),
                kind: UnsupportedKind::ShortBranch,
                reason: format!(
                    "a short jump at {section}+{at:#x} leaves the function for a neighbour in \
                     the same section, which a copy of the function cannot reach"
                ),
            });
        }
        if INIT_SECTION_PREFIXES.iter().any(|x| section.starts_with(x)) {
            unsupported.push(Unsupported {
                symbol: ub.name.clone(),
                kind: UnsupportedKind::InitCode,
                reason: format!(
                    "start-up code in {section} changed; it has already run and its memory \
                     may be freed"
                ),
            });
        }
    }

    let mut d = Diff {
        orig: o,
        patched: p,
        p2o,
        o2p,
        included,
        report: Report {
            schema: SCHEMA,
            status: Status::NoChange,
            source_file: orig
                .source_file
                .clone()
                .or_else(|| patched.source_file.clone()),
            changed_functions: Vec::new(),
            new_functions: Vec::new(),
            new_data: Vec::new(),
            references: Vec::new(),
            unsupported,
            removed_functions: Vec::new(),
            line_shifts,
            notes,
        },
    };
    let references = collect_references(&d);
    d.report.references = references.0;
    d.report.unsupported.extend(references.1);
    fill_report(&mut d, changed);
    d
}

/// Whether a kernel function starts with its ftrace call (`call __fentry__`, after an
/// `endbr64` or not). `None` when the object makes no ftrace calls at all (not built with
/// `-mfentry`: a userspace object).
fn has_fentry(u: &Units, f: UnitId) -> Option<bool> {
    let fentry = |r: &crate::elf::Reloc| u.obj.symbol(r.sym).name == "__fentry__";
    let uf = u.unit(f);
    if u.relocs(f)
        .any(|(r, _)| fentry(r) && (r.offset == uf.start + 1 || r.offset == uf.start + 5))
    {
        return Some(true);
    }
    let any = u.obj.sections.iter().any(|s| s.relocs.iter().any(&fentry));
    any.then_some(false)
}

/// A changed static function of a kernel unit that has no ftrace entry (a `static inline` of a
/// header that gcc kept out of line, which the kernel's `inline` makes `notrace`, or a clone of
/// one: `zero_user_segments.constprop.0`) cannot be redirected by livepatch. Its patched copy
/// goes into the patch as a new function instead, and every function of the unit that refers
/// to it is replaced so as to call that copy (transitively, when such a caller is itself
/// untraceable). A reference from data (a table of function pointers) would keep the original
/// in use: refused. Returns the functions so moved.
fn replace_callers_of_untraceable(
    o: &Units,
    p: &Units,
    p2o: &[Option<UnitId>],
    changed: &mut BTreeMap<UnitId, Vec<Reason>>,
    unsupported: &mut Vec<Unsupported>,
    notes: &mut Vec<String>,
) -> BTreeSet<UnitId> {
    let untraceable = |b: UnitId| {
        let ub = p.unit(b);
        ub.kind == UnitKind::Func
            && ub.bind == Bind::Local
            && !names::is_fragment(&ub.name)
            && p2o[b.0 as usize].is_some_and(|a| has_fentry(o, a) == Some(false))
    };
    let mut work: Vec<UnitId> = changed
        .keys()
        .copied()
        .filter(|&b| untraceable(b))
        .collect();
    let mut moved = BTreeSet::new();
    while let Some(b) = work.pop() {
        if !moved.insert(b) {
            continue;
        }
        changed.remove(&b);
        let name = p.unit(b).name.clone();
        let mut callers = Vec::new();
        for &(r, _) in &p.referrers[b.0 as usize] {
            if r == b || moved.contains(&r) {
                continue;
            }
            let ur = p.unit(r);
            if ur.kind == UnitKind::Data {
                unsupported.push(Unsupported {
                    symbol: name.clone(),
                    kind: UnsupportedKind::EscapedData,
                    reason: format!(
                        "has no ftrace entry, so its callers would be replaced to call the \
                         patched copy, but {} holds its address, and whoever reads it keeps \
                         calling the original",
                        ur.name
                    ),
                });
                continue;
            }
            if p2o[r.0 as usize].is_none() || names::is_fragment(&ur.name) {
                continue; // new code, or a part of a function patched with it
            }
            callers.push(ur.name.clone());
            if untraceable(r) {
                work.push(r);
            } else {
                changed.entry(r).or_default().push(Reason {
                    kind: ReasonKind::Relocation,
                    detail: format!(
                        "calls {name}, which livepatch cannot redirect (no ftrace entry)"
                    ),
                });
            }
        }
        callers.sort();
        notes.push(format!(
            "{name} has no ftrace entry: the patch carries its new code and replaces its callers \
             ({}) instead",
            if callers.is_empty() {
                "none left".to_string()
            } else {
                callers.join(", ")
            }
        ));
    }
    moved
}

/// Finds the changed functions whose every difference is a line number (see [`LineShift`])
/// and, unless `include`, takes them out of `changed`. Needs both objects' line tables (`-g`);
/// without them nothing is recognised and every function stays.
fn line_shifts(
    o: &Units,
    p: &Units,
    p2o: &[Option<UnitId>],
    changed: &mut BTreeMap<UnitId, Vec<Reason>>,
    options: &Options,
) -> Vec<LineShift> {
    let include = options.include_line_shifts;
    let mut found = Vec::new();
    let candidates: Vec<UnitId> = changed
        .iter()
        .filter(|(_, reasons)| reasons.iter().all(|r| r.kind == ReasonKind::Code))
        .map(|(&b, _)| b)
        .collect();
    if candidates.is_empty() {
        return found;
    }
    let (Some(lo), Some(lp)) = (
        crate::lines::LineTable::read(o.obj),
        crate::lines::LineTable::read(p.obj),
    ) else {
        return found;
    };
    // The same file on both sides, or each object's own source file (`orig.c` and `fixed.c`).
    let same_file = |fa: &str, fb: &str| {
        fa == fb
            || (o.obj.source_file.as_deref() == Some(fa)
                && p.obj.source_file.as_deref() == Some(fb))
    };
    for b in candidates {
        let Some(a) = p2o[b.0 as usize] else { continue };
        let (ua, ub) = (o.unit(a), p.unit(b));
        let Some(changes) = x86::immediate_changes(o.bytes(a), p.bytes(b)) else {
            continue;
        };
        // The code is laid out identically (only immediates differ), so the line tables
        // have the same rows at the same places: pair them up; each pair is where a source
        // line moved (or not). Inlined helpers keep their own file's lines.
        let (ro, rp) = (
            lo.rows_in(ua.section, ua.start, ua.end),
            lp.rows_in(ub.section, ub.start, ub.end),
        );
        let aligned = ro.len() == rp.len() && ro.iter().zip(&rp).all(|(x, y)| x.0 == y.0);
        let confirmed = |f: &str, a: u64, b: u64| {
            options
                .line_map
                .as_ref()
                .is_none_or(|m| m.map(f, a) == Some(b))
        };
        let moved: Vec<(&str, u64, u64)> = if aligned {
            ro.iter()
                .zip(&rp)
                .filter(|(x, y)| same_file(x.1, y.1) && x.2 != y.2)
                .map(|(x, y)| (x.1, x.2, y.2))
                .collect()
        } else {
            Vec::new()
        };
        // An immediate is a moved line when it is a line that moved at the same place in
        // both tables, or (the instruction may carry another line, e.g. a call argument of an
        // inlined helper) when the nearest line at or before it in the function moved by the
        // same amount. With the fix's diff at hand the move must also be the diff's.
        let mut file = None;
        let mut lines = Vec::new();
        for &(_, old, new) in &changes {
            let (Ok(old), Ok(new)) = (u64::try_from(old), u64::try_from(new)) else {
                lines.clear();
                break;
            };
            let mut files: Vec<&str> = moved.iter().map(|m| m.0).collect();
            files.dedup();
            let explained = files.into_iter().find(|&f| {
                let nearest = ro
                    .iter()
                    .zip(&rp)
                    .filter(|(x, y)| x.1 == f && same_file(x.1, y.1) && x.2 <= old)
                    .max_by_key(|(x, _)| x.2);
                let shift_ok = nearest.is_some_and(|(x, y)| {
                    x.2 != y.2 && (y.2 as i64 - x.2 as i64) == (new as i64 - old as i64)
                });
                shift_ok && confirmed(f, old, new)
            });
            match explained {
                Some(f) => {
                    file.get_or_insert_with(|| f.to_string());
                    if !lines.contains(&(old, new)) {
                        lines.push((old, new));
                    }
                }
                None => {
                    lines.clear();
                    break;
                }
            }
        }
        if lines.is_empty() {
            continue;
        }
        if include {
            if let Some(reasons) = changed.get_mut(&b) {
                reasons.push(Reason {
                    kind: ReasonKind::LineNumbers,
                    detail: "only source line numbers differ (kept on request)".into(),
                });
            }
        } else {
            changed.remove(&b);
        }
        found.push(LineShift {
            function: ub.name.clone(),
            file: file.unwrap_or_default(),
            lines,
            included: include,
        });
    }
    found
}

fn describe(u: &Unit) -> &'static str {
    match (u.kind, u.tls) {
        (UnitKind::Func, _) => "a function",
        (UnitKind::Data, true) => "a thread-local variable",
        (UnitKind::Data, false) => "a data object",
    }
}

/// Correlates units of the two objects; returns (orig -> patched, patched -> orig).
fn correlate(o: &Units, p: &Units) -> (Vec<Option<UnitId>>, Vec<Option<UnitId>>) {
    let mut o2p = vec![None; o.units.len()];
    let mut p2o = vec![None; p.units.len()];
    let compatible = |a: UnitId, b: UnitId| {
        let (ua, ub) = (o.unit(a), p.unit(b));
        ua.kind == ub.kind && ua.tls == ub.tls
    };
    let pair =
        |o2p: &mut Vec<Option<UnitId>>, p2o: &mut Vec<Option<UnitId>>, a: UnitId, b: UnitId| {
            o2p[a.0 as usize] = Some(b);
            p2o[b.0 as usize] = Some(a);
        };

    // 1. Exact names that carry no build-dependent number, unique on both sides.
    let index = |u: &Units, stable_only: bool| {
        let mut family: HashMap<&str, usize> = HashMap::new();
        for id in u.ids() {
            *family.entry(u.unit(id).key.as_str()).or_default() += 1;
        }
        let mut m: HashMap<String, Vec<UnitId>> = HashMap::new();
        for id in u.ids() {
            let unit = u.unit(id);
            // clang names static locals `fn.var`, `fn.var.1`, ...: the unnumbered one is only
            // its family's first member, not a stable identity.
            let alone = family[unit.key.as_str()] == 1;
            if !stable_only
                || unit.bind != Bind::Local
                || (unit.has_stable_name() && (alone || unit.kind == UnitKind::Func))
            {
                m.entry(unit.name.clone()).or_default().push(id);
            }
        }
        m
    };
    let (on, pn) = (index(o, true), index(p, true));
    for (name, bs) in &pn {
        if let (Some(as_), [b]) = (on.get(name), bs.as_slice()) {
            if let [a] = as_.as_slice() {
                if compatible(*a, *b) {
                    pair(&mut o2p, &mut p2o, *a, *b);
                }
            }
        }
    }

    // 2-4. Build-stable keys, iterated: each round's matches give later rounds more referrers.
    loop {
        let mut progress = false;
        let mut groups: BTreeMap<&str, (Vec<UnitId>, Vec<UnitId>)> = BTreeMap::new();
        for a in o.ids().filter(|a| o2p[a.0 as usize].is_none()) {
            groups.entry(o.unit(a).key.as_str()).or_default().0.push(a);
        }
        for b in p.ids().filter(|b| p2o[b.0 as usize].is_none()) {
            groups.entry(p.unit(b).key.as_str()).or_default().1.push(b);
        }
        for (as_, bs) in groups.values() {
            if as_.is_empty() || bs.is_empty() {
                continue;
            }
            // Referrers of each candidate, in original-side ids.
            let refs_o = |a: UnitId| -> HashSet<UnitId> {
                o.referrers[a.0 as usize].iter().map(|r| r.0).collect()
            };
            let refs_p = |b: UnitId, p2o: &[Option<UnitId>]| -> HashSet<UnitId> {
                p.referrers[b.0 as usize]
                    .iter()
                    .filter_map(|r| p2o[r.0 .0 as usize])
                    .collect()
            };
            // By use: pair candidates that are each other's unique best overlap of referrers.
            // (Huge families of identical statics are not worth a quadratic search: they stay
            // unpaired and are refused below if writable.)
            if as_.len() * bs.len() > 1 << 16 {
                continue;
            }
            let mut best_a: HashMap<UnitId, (usize, Option<UnitId>)> = HashMap::new();
            let mut best_b: HashMap<UnitId, (usize, Option<UnitId>)> = HashMap::new();
            let refs_b: Vec<HashSet<UnitId>> = bs.iter().map(|&b| refs_p(b, &p2o)).collect();
            for &a in as_ {
                let ra = refs_o(a);
                if ra.is_empty() {
                    continue;
                }
                for (&b, rb) in bs.iter().zip(&refs_b) {
                    if !compatible(a, b) {
                        continue;
                    }
                    let n = rb.intersection(&ra).count();
                    if n == 0 {
                        continue;
                    }
                    for (best, key, other) in [(&mut best_a, a, b), (&mut best_b, b, a)] {
                        let e = best.entry(key).or_insert((0, None));
                        if n > e.0 {
                            *e = (n, Some(other));
                        } else if n == e.0 {
                            e.1 = None; // a tie: ambiguous
                        }
                    }
                }
            }
            let mut used_a = HashSet::new();
            let mut used_b = HashSet::new();
            for (&a, &(_, b)) in &best_a {
                let Some(b) = b else { continue };
                if best_b.get(&b).and_then(|e| e.1) == Some(a) {
                    used_a.insert(a);
                    used_b.insert(b);
                    pair(&mut o2p, &mut p2o, a, b);
                    progress = true;
                }
            }
            let mut rest_a: Vec<_> = as_
                .iter()
                .copied()
                .filter(|a| !used_a.contains(a))
                .collect();
            let mut rest_b: Vec<_> = bs.iter().copied().filter(|b| !used_b.contains(b)).collect();
            // Same users (two `_rs` rate-limit states, or `list.0` and `list.1`, in one
            // function): tell them apart by where each user refers to them.
            if rest_a.len() > 1 || rest_b.len() > 1 {
                let paired = pair_by_use_position(o, p, &o2p, &p2o, &rest_a, &rest_b);
                for &(a, b) in &paired {
                    if compatible(a, b) && o.unit(a).len() == p.unit(b).len() {
                        pair(&mut o2p, &mut p2o, a, b);
                        progress = true;
                    }
                }
                rest_a.retain(|a| o2p[a.0 as usize].is_none());
                rest_b.retain(|b| p2o[b.0 as usize].is_none());
            }
            // One candidate each: pair unless their uses say they are different things (a
            // static local of one function is not the new static local of another).
            if let ([a], [b]) = (rest_a.as_slice(), rest_b.as_slice()) {
                let (ra, rb) = (refs_o(*a), refs_p(*b, &p2o));
                let users_b = &p.referrers[b.0 as usize];
                let disjoint_uses = o.unit(*a).kind == UnitKind::Data
                    && !ra.is_empty()
                    && !users_b.is_empty()
                    && ra.is_disjoint(&rb);
                if compatible(*a, *b) && !disjoint_uses {
                    pair(&mut o2p, &mut p2o, *a, *b);
                    progress = true;
                }
                continue;
            }
            // Several: identical contents identify renumbered clones. Never writable data:
            // zero-initialised counters all look alike, and binding one to another's running
            // value is worse than refusing.
            for &b in &rest_b {
                // (Zero-sized objects, such as lockdep keys without lockdep, hold no state.)
                if p.unit(b).kind == UnitKind::Data && p.is_writable(b) && !p.unit(b).is_empty() {
                    continue;
                }
                let found = rest_a.iter().copied().find(|&a| {
                    o2p[a.0 as usize].is_none()
                        && compatible(a, b)
                        && o.bytes(a) == p.bytes(b)
                        && o.unit(a).len() == p.unit(b).len()
                });
                if let Some(a) = found {
                    pair(&mut o2p, &mut p2o, a, b);
                    progress = true;
                }
            }
        }
        if !progress {
            break;
        }
    }
    (o2p, p2o)
}

/// The use signature of a unit: for each correlated user (in original-side ids), the unit's
/// position among the distinct members of its name family (same build-stable key) that the
/// user refers to, in declaration order ([`name_numbers`]), and how many members that user
/// refers to. Users not yet correlated are left out on both sides so the signatures stay
/// comparable. The count matters: when a fix adds a third `count` to a function that had two,
/// positions shift and "first is first" would hand an existing counter's running value to the
/// new one; different counts never match, so such families stay unpaired (and are refused).
fn use_signature(
    u: &Units,
    id: UnitId,
    user_to_orig: impl Fn(UnitId) -> Option<UnitId>,
) -> Vec<(UnitId, usize, usize)> {
    let key = u.unit(id).key.as_str();
    let mut sig = Vec::new();
    for &(user, _) in &u.referrers[id.0 as usize] {
        let Some(user_o) = user_to_orig(user) else {
            continue;
        };
        let mut seen: Vec<UnitId> = Vec::new();
        for (_, t) in u.relocs(user) {
            if let Target::Unit { unit, .. } = t {
                if u.unit(unit).key == key && !seen.contains(&unit) {
                    seen.push(unit);
                }
            }
        }
        // Declaration order, not code order: a fix can reorder the user's blocks, but both
        // compilers number a function's same-named statics in declaration order (gcc
        // `_rs.1`, `_rs.0`: reversed; clang `fn._rs`, `fn._rs.1`), the same way on both sides.
        seen.sort_by_cached_key(|&x| name_numbers(&u.unit(x).name));
        if let Some(pos) = seen.iter().position(|&x| x == id) {
            sig.push((user_o, pos, seen.len()));
        }
    }
    sig.sort_unstable();
    sig.dedup();
    sig
}

/// The build-dependent numbers of a name (`_rs.12` -> [12], `fn._rs` -> []), which order a
/// family of same-named statics by declaration.
fn name_numbers(name: &str) -> Vec<u64> {
    name.split('.')
        .skip(1)
        .filter_map(|p| p.parse::<u64>().ok())
        .collect()
}

/// Pairs same-named candidates whose use signatures ([`use_signature`]) are equal, non-empty
/// and unique on both sides. Anything else stays unpaired (and is refused if it holds state).
fn pair_by_use_position(
    o: &Units,
    p: &Units,
    o2p: &[Option<UnitId>],
    p2o: &[Option<UnitId>],
    rest_a: &[UnitId],
    rest_b: &[UnitId],
) -> Vec<(UnitId, UnitId)> {
    let sig_a: Vec<_> = rest_a
        .iter()
        .map(|&a| use_signature(o, a, |r| o2p[r.0 as usize].map(|_| r)))
        .collect();
    let sig_b: Vec<_> = rest_b
        .iter()
        .map(|&b| use_signature(p, b, |r| p2o[r.0 as usize]))
        .collect();
    let mut out = Vec::new();
    for (i, sa) in sig_a.iter().enumerate() {
        if sa.is_empty() || sig_a.iter().filter(|s| *s == sa).count() != 1 {
            continue;
        }
        let matches: Vec<usize> = (0..sig_b.len()).filter(|&j| &sig_b[j] == sa).collect();
        if let [j] = matches.as_slice() {
            out.push((rest_a[i], rest_b[*j]));
        }
    }
    out
}

/// The kernel's dynamic-debug descriptor section and where `lineno:18` sits in its entries
/// (`struct _ddebug` on x86-64: four pointers, then the bit-field word; the same from 4.18 to
/// 6.12, checked in the 5.10, 6.1 and 6.12 headers).
const DYNDBG_SECTION: &str = "__dyndbg";
const DDEBUG_LINENO_AT: usize = 32;

/// (anonymous piece?, original index, patched index, original start, patched start).
type MemoKey = (bool, u32, u32, u64, u64);

struct Cmp<'c, 'o, 'a> {
    o: &'c Units<'o, 'a>,
    p: &'c Units<'o, 'a>,
    o2p: &'c [Option<UnitId>],
    /// Equality of data units and anonymous sections; `true` while a comparison is in progress
    /// (tables that point back into their function are equal unless something else differs).
    memo: RefCell<HashMap<MemoKey, bool>>,
    /// Keys in the order they were memoised, to forget results that relied on an assumption
    /// that turned out false.
    log: RefCell<Vec<MemoKey>>,
    depth: std::cell::Cell<usize>,
}

/// Deeper chains of read-only data are treated as changed (a safe answer) rather than
/// compared recursively.
const MAX_DATA_DEPTH: usize = 256;

fn show_bytes(s: &[u8]) -> String {
    let text = String::from_utf8_lossy(s);
    let mut out: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        out.push_str("...");
    }
    format!("{out:?}")
}

impl Cmp<'_, '_, '_> {
    fn name_o(&self, t: &Target) -> String {
        target_name(self.o, t)
    }
    fn name_p(&self, t: &Target) -> String {
        target_name(self.p, t)
    }

    /// Why two relocation targets differ, or `None` when they are equivalent.
    fn target_diff(&self, a: &Target, b: &Target) -> Option<Reason> {
        let relocation = |detail: String| {
            Some(Reason {
                kind: ReasonKind::Relocation,
                detail,
            })
        };
        match (a, b) {
            (
                Target::Unit {
                    unit: ua, rel: ra, ..
                },
                Target::Unit {
                    unit: ub, rel: rb, ..
                },
            ) => {
                if self.o2p[ua.0 as usize] != Some(*ub) {
                    return relocation(format!(
                        "refers to {} instead of {}",
                        self.name_p(b),
                        self.name_o(a)
                    ));
                }
                if ra != rb {
                    return relocation(format!(
                        "refers to {}{:+} instead of {}{:+}",
                        self.name_p(b),
                        rb,
                        self.name_o(a),
                        ra
                    ));
                }
                let unit = self.o.unit(*ua);
                if unit.kind == UnitKind::Data
                    && !self.o.is_writable(*ua)
                    && !self.data_equal(*ua, *ub)
                {
                    return Some(Reason {
                        kind: ReasonKind::Data,
                        detail: format!("read-only data {} changed", unit.name),
                    });
                }
                None
            }
            (
                Target::External {
                    sym: sa,
                    addend: aa,
                },
                Target::External {
                    sym: sb,
                    addend: ab,
                },
            ) => {
                let (na, nb) = (&self.o.obj.symbol(*sa).name, &self.p.obj.symbol(*sb).name);
                (na != nb || aa != ab)
                    .then(|| relocation(format!("refers to {nb}{ab:+} instead of {na}{aa:+}")))
                    .flatten()
            }
            (
                Target::Str {
                    sec: sa,
                    start: xa,
                    rel: ra,
                },
                Target::Str {
                    sec: sb,
                    start: xb,
                    rel: rb,
                },
            ) => {
                let (s1, s2) = (self.o.string_at(*sa, *xa), self.p.string_at(*sb, *xb));
                if s1 != s2 || ra != rb {
                    return Some(Reason {
                        kind: ReasonKind::String,
                        detail: format!("string {} became {}", show_bytes(s1), show_bytes(s2)),
                    });
                }
                None
            }
            (
                Target::Const {
                    sec: sa,
                    start: xa,
                    len: la,
                    rel: ra,
                },
                Target::Const {
                    sec: sb,
                    start: xb,
                    len: lb,
                    rel: rb,
                },
            ) => {
                let c1 = self.o.obj.section(*sa).bytes(*xa, xa + la);
                let c2 = self.p.obj.section(*sb).bytes(*xb, xb + lb);
                (c1 != c2 || ra != rb)
                    .then(|| {
                        Some(Reason {
                            kind: ReasonKind::Data,
                            detail: format!("constant in {} changed", self.o.obj.section(*sa).name),
                        })
                    })
                    .flatten()
            }
            (
                Target::Anon {
                    sec: sa,
                    offset: oa,
                    at: ta,
                },
                Target::Anon {
                    sec: sb,
                    offset: ob,
                    at: tb,
                },
            ) => {
                let (pa, pb) = (self.o.anon_piece(*sa, *ta), self.p.anon_piece(*sb, *tb));
                if oa - pa.0 as i64 != ob - pb.0 as i64 || !self.anon_equal(*sa, pa, *sb, pb) {
                    return Some(Reason {
                        kind: ReasonKind::Data,
                        detail: format!(
                            "unnamed data in {} (a jump table, constant or literal) changed",
                            self.p.obj.section(*sb).name
                        ),
                    });
                }
                None
            }
            (
                Target::Absolute {
                    sym: sa,
                    addend: aa,
                },
                Target::Absolute {
                    sym: sb,
                    addend: ab,
                },
            ) => {
                let (x, y) = (self.o.obj.symbol(*sa), self.p.obj.symbol(*sb));
                (x.name != y.name || x.value != y.value || aa != ab)
                    .then(|| relocation(format!("refers to {} instead of {}", y.name, x.name)))
                    .flatten()
            }
            _ => relocation(format!(
                "refers to {} instead of {}",
                self.name_p(b),
                self.name_o(a)
            )),
        }
    }

    /// Compares relocation lists of two byte ranges (offsets relative to the range starts).
    fn relocs_diff<'r>(
        &self,
        a: impl Iterator<Item = (&'r crate::elf::Reloc, Target)>,
        a_start: u64,
        b: impl Iterator<Item = (&'r crate::elf::Reloc, Target)>,
        b_start: u64,
        out: &mut Vec<Reason>,
    ) {
        let a: Vec<_> = a.collect();
        let b: Vec<_> = b.collect();
        if a.len() != b.len() {
            out.push(Reason {
                kind: ReasonKind::Relocation,
                detail: format!("{} relocations instead of {}", b.len(), a.len()),
            });
            return;
        }
        for ((ra, ta), (rb, tb)) in a.iter().zip(&b) {
            if ra.offset - a_start != rb.offset - b_start || ra.r_type != rb.r_type {
                out.push(Reason {
                    kind: ReasonKind::Relocation,
                    detail: format!("relocation at +{:#x} changed kind", rb.offset - b_start),
                });
                return;
            }
            if let Some(r) = self.target_diff(ta, tb) {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }

    fn compare_func(&self, a: UnitId, b: UnitId) -> Vec<Reason> {
        let (ua, ub) = (self.o.unit(a), self.p.unit(b));
        let (ba, bb) = (self.o.bytes(a), self.p.bytes(b));
        let mut reasons = Vec::new();
        if ua.len() != ub.len() {
            reasons.push(Reason {
                kind: ReasonKind::Size,
                detail: format!("{} bytes instead of {}", ub.len(), ua.len()),
            });
        }
        if ba != bb {
            // Never guess a line shift from "only an immediate differs": a bound (`n <= 64` ->
            // `n < 64`), a flag or a size is an immediate too, and is exactly what fixes change.
            let detail = if x86::differ_only_in_immediates(ba, bb) {
                "instructions differ in immediate operands only (constants, bounds or sizes; a line \
                 number moved by the fix is recognised and left out only in objects built with -g)"
            } else {
                "instructions differ"
            };
            reasons.push(Reason {
                kind: ReasonKind::Code,
                detail: detail.into(),
            });
        }
        if reasons.is_empty() {
            self.relocs_diff(
                self.o.relocs(a),
                ua.start,
                self.p.relocs(b),
                ub.start,
                &mut reasons,
            );
        }
        reasons
    }

    /// Why the descriptor entries of two correlated functions differ, if they do. Entries are
    /// compared in table order: their position in the function, their bytes (minus ignored
    /// fields such as `__bug_table` line numbers), what their relocations point at, the
    /// parallel `.orc_unwind` entry and an alternative's replacement code.
    fn entries_diff(&self, ea: &[Entry], eb: &[Entry]) -> Option<Reason> {
        let metadata = |detail: String| {
            Some(Reason {
                kind: ReasonKind::Metadata,
                detail,
            })
        };
        let count = |es: &[Entry], name: &str| es.iter().filter(|e| e.table.name == name).count();
        for name in special::table_names() {
            let (na, nb) = (count(ea, name), count(eb, name));
            if na != nb {
                return metadata(format!("{nb} entries in {name} instead of {na}"));
            }
        }
        for (x, y) in ea.iter().zip(eb) {
            let name = x.table.name;
            if x.rel != y.rel {
                return metadata(format!(
                    "a {name} entry moved from +{:#x} to +{:#x}",
                    x.rel, y.rel
                ));
            }
            let (sa, sb) = (self.o.obj.section(x.sec), self.p.obj.section(y.sec));
            let (mut ba, mut bb) = (
                sa.bytes(x.start(), x.end()).to_vec(),
                sb.bytes(y.start(), y.end()).to_vec(),
            );
            if let Some((lo, hi)) = x.table.ignore {
                for v in [&mut ba, &mut bb] {
                    for byte in v.iter_mut().take(hi as usize).skip(lo as usize) {
                        *byte = 0;
                    }
                }
            }
            if ba != bb {
                return metadata(format!("the {name} entry at +{:#x} differs", y.rel));
            }
            let mut reasons = Vec::new();
            self.relocs_diff(
                self.o.section_relocs(x.sec, x.start(), x.end()),
                x.start(),
                self.p.section_relocs(y.sec, y.start(), y.end()),
                y.start(),
                &mut reasons,
            );
            if let Some(r) = reasons.first() {
                return metadata(format!("the {name} entry at +{:#x}: {}", y.rel, r.detail));
            }
            if let Some((par, size)) = x.table.parallel {
                let pa = special::section_named(self.o.obj, par).map(|s| {
                    self.o
                        .obj
                        .section(s)
                        .bytes(x.index * size, (x.index + 1) * size)
                });
                let pb = special::section_named(self.p.obj, par).map(|s| {
                    self.p
                        .obj
                        .section(s)
                        .bytes(y.index * size, (y.index + 1) * size)
                });
                if pa != pb {
                    return metadata(format!("the {par} entry at +{:#x} differs", y.rel));
                }
            }
            match (
                special::replacement(self.o, x),
                special::replacement(self.p, y),
            ) {
                (None, None) => {}
                (Some((sa, a0, a1)), Some((sb, b0, b1))) => {
                    if !self.range_equal(sa, (a0, a1), sb, (b0, b1)) {
                        return metadata(format!(
                            "the replacement code of the alternative at +{:#x} differs",
                            y.rel
                        ));
                    }
                }
                _ => {
                    return metadata(format!(
                        "the replacement code of the alternative at +{:#x} differs",
                        y.rel
                    ))
                }
            }
        }
        None
    }

    /// Memoised, cycle-safe comparison. While `key` is being compared it is assumed equal
    /// (tables pointing back into their function compare equal unless something else
    /// differs). If it turns out different, every "equal" concluded under that assumption is
    /// forgotten.
    fn memoised(&self, key: MemoKey, compare: impl FnOnce() -> bool) -> bool {
        if let Some(&v) = self.memo.borrow().get(&key) {
            return v;
        }
        if self.depth.get() >= MAX_DATA_DEPTH {
            return false;
        }
        let mark = self.log.borrow().len();
        self.memo.borrow_mut().insert(key, true);
        self.log.borrow_mut().push(key);
        self.depth.set(self.depth.get() + 1);
        let equal = compare();
        self.depth.set(self.depth.get() - 1);
        if !equal {
            let mut memo = self.memo.borrow_mut();
            let mut log = self.log.borrow_mut();
            for k in log.drain(mark + 1..) {
                if memo.get(&k) == Some(&true) {
                    memo.remove(&k);
                }
            }
            memo.insert(key, false);
        }
        equal
    }

    fn data_equal(&self, a: UnitId, b: UnitId) -> bool {
        self.memoised((false, a.0, b.0, 0, 0), || self.data_equal_now(a, b))
    }

    fn data_equal_now(&self, a: UnitId, b: UnitId) -> bool {
        let (ua, ub) = (self.o.unit(a), self.p.unit(b));
        let in_dyndbg = |u: &Units, x: &Unit| u.obj.section(x.section).name == DYNDBG_SECTION;
        if in_dyndbg(self.o, ua) && in_dyndbg(self.p, ub) {
            return self.ddebug_equal(a, b);
        }
        self.range_equal(
            ua.section,
            (ua.start, ua.end),
            ub.section,
            (ub.start, ub.end),
        )
    }

    /// Compares two anonymous pieces `[start, end)` of sections `a` and `b`.
    fn anon_equal(&self, a: SecIdx, pa: (u64, u64), b: SecIdx, pb: (u64, u64)) -> bool {
        self.memoised((true, a.0, b.0, pa.0, pb.0), || {
            self.range_equal(a, pa, b, pb)
        })
    }

    /// Bytes and relocation targets of `[start, end)` of section `a` (original) and `b`
    /// (patched) are equivalent.
    /// Dynamic-debug descriptors (`struct _ddebug`, one per `pr_debug`/`dev_dbg` call site)
    /// compared without their line number: it moves whenever lines above the call site do, and
    /// the running kernel's descriptor is the one registered with dynamic debug (its flags are
    /// what `dynamic_debug/control` switches, its static key is what the call site's jump label
    /// tests). Equal but for the line, the patched code keeps using the original descriptor; a
    /// copy would be unregistered and could never be enabled.
    fn ddebug_equal(&self, a: UnitId, b: UnitId) -> bool {
        let (ua, ub) = (self.o.unit(a), self.p.unit(b));
        let (ba, bb) = (self.o.bytes(a), self.p.bytes(b));
        if ba.len() != bb.len() || ba.len() < DDEBUG_LINENO_AT + 4 {
            return self.range_equal(
                ua.section,
                (ua.start, ua.end),
                ub.section,
                (ub.start, ub.end),
            );
        }
        let masked = |x: &[u8]| {
            let mut v = x.to_vec();
            v[DDEBUG_LINENO_AT] = 0;
            v[DDEBUG_LINENO_AT + 1] = 0;
            v[DDEBUG_LINENO_AT + 2] &= !0x03; // lineno:18 is the low 18 bits
            v
        };
        if masked(ba) != masked(bb) {
            return false;
        }
        let mut reasons = Vec::new();
        self.relocs_diff(
            self.o.section_relocs(ua.section, ua.start, ua.end),
            ua.start,
            self.p.section_relocs(ub.section, ub.start, ub.end),
            ub.start,
            &mut reasons,
        );
        reasons.is_empty()
    }

    fn range_equal(&self, a: SecIdx, pa: (u64, u64), b: SecIdx, pb: (u64, u64)) -> bool {
        let (sa, sb) = (self.o.obj.section(a), self.p.obj.section(b));
        let mut equal = pa.1 - pa.0 == pb.1 - pb.0
            && sa.is_nobits() == sb.is_nobits()
            && sa.bytes(pa.0, pa.1) == sb.bytes(pb.0, pb.1);
        if equal {
            let mut reasons = Vec::new();
            self.relocs_diff(
                self.o.section_relocs(a, pa.0, pa.1),
                pa.0,
                self.p.section_relocs(b, pb.0, pb.1),
                pb.0,
                &mut reasons,
            );
            equal = reasons.is_empty();
        }
        equal
    }
}

/// A readable name for a relocation target, for messages.
pub fn target_name(u: &Units, t: &Target) -> String {
    match *t {
        Target::Unit { unit, .. } => u.unit(unit).name.clone(),
        Target::External { sym, .. } | Target::Absolute { sym, .. } => {
            u.obj.symbol(sym).name.clone()
        }
        Target::Str { sec, start, .. } => format!("string {}", show_bytes(u.string_at(sec, start))),
        Target::Const { sec, .. } => format!("a constant in {}", u.obj.section(sec).name),
        Target::Anon { sec, .. } => format!("unnamed data in {}", u.obj.section(sec).name),
    }
}

/// Split fragments and their parents are only ever patched together: a `.cold` part jumps back
/// into the body of the function it was split from.
fn close_over_fragments(
    p: &Units,
    p2o: &[Option<UnitId>],
    included: &mut BTreeMap<UnitId, Role>,
    changed: &mut BTreeMap<UnitId, Vec<Reason>>,
) {
    let mut work: Vec<UnitId> = included.keys().copied().collect();
    while let Some(u) = work.pop() {
        if p.unit(u).kind != UnitKind::Func {
            continue;
        }
        let u_fragment = names::is_fragment(&p.unit(u).name);
        let mut add = Vec::new();
        // Forward: fragments it jumps into, or any function entered other than at its start.
        for (_, t) in p.relocs(u) {
            if let Target::Unit { unit, entry, .. } = t {
                let g = p.unit(unit);
                if unit != u && g.kind == UnitKind::Func && (names::is_fragment(&g.name) || !entry)
                {
                    add.push((unit, u));
                }
            }
        }
        // Backward: functions that jump into it other than at its start, or that own it.
        for &(r, entry) in &p.referrers[u.0 as usize] {
            if p.unit(r).kind == UnitKind::Func && (u_fragment || !entry) {
                add.push((r, u));
            }
        }
        for (g, because) in add {
            if included.contains_key(&g) || p2o[g.0 as usize].is_none() {
                continue;
            }
            included.insert(g, Role::Changed);
            changed.insert(
                g,
                vec![Reason {
                    kind: ReasonKind::Fragment,
                    detail: format!(
                        "split part of the same function as {}, patched together",
                        p.unit(because).name
                    ),
                }],
            );
            work.push(g);
        }
    }
}

fn symbol_kind(u: &Unit) -> SymbolKind {
    match (u.kind, u.tls, u.ifunc) {
        (UnitKind::Func, _, true) => SymbolKind::Ifunc,
        (UnitKind::Func, _, false) => SymbolKind::Function,
        (UnitKind::Data, true, _) => SymbolKind::Tls,
        (UnitKind::Data, false, _) => SymbolKind::Object,
    }
}

/// Original and external symbols the included units refer to, plus references that cannot be
/// resolved in a running program.
fn collect_references(d: &Diff) -> (Vec<Reference>, Vec<Unsupported>) {
    let p = &d.patched;
    let o = &d.orig;
    let mut refs: BTreeMap<String, Reference> = BTreeMap::new();
    let mut bad = Vec::new();
    // Everything the patch object will carry: included units, the anonymous sections they
    // reach (copied whole, transitively), and the unwind records of included functions.
    let mut sources: Vec<(UnitId, Target, bool)> = Vec::new();
    let mut anon_seen: BTreeSet<SecIdx> = BTreeSet::new();
    let mut anon_work: Vec<(SecIdx, UnitId)> = Vec::new();
    for &u in d.included.keys() {
        for (_, t) in p.relocs(u) {
            sources.push((u, t, false));
        }
    }
    // Descriptor entries carried with included functions (see `emit::special`).
    let entries = special::entries_by_unit(p);
    for &u in d.included.keys() {
        for e in entries[u.0 as usize].iter().filter(|e| e.table.carry) {
            for (_, t) in p.section_relocs(e.sec, e.start(), e.end()) {
                if !matches!(t, Target::Anon { .. }) || special::replacement(p, e).is_none() {
                    sources.push((u, t, true));
                }
            }
            if let Some((rsec, r0, r1)) = special::replacement(p, e) {
                for (_, t) in p.section_relocs(rsec, r0, r1) {
                    sources.push((u, t, true));
                }
            }
        }
    }
    if let Ok(Some((sec, fdes))) = p.eh_frame_records() {
        let section = p.obj.section(sec);
        let mut cies = BTreeSet::new();
        for f in &fdes {
            if let Some(u) = f.unit.filter(|u| d.included.contains_key(u)) {
                cies.insert((f.cie, u));
                for (_, t) in p.section_relocs_of(sec, f.at as u64, (f.at + f.len) as u64) {
                    sources.push((u, t, true));
                }
            }
        }
        for (cie, u) in cies {
            let len = section.data.get(cie..cie + 4).map_or(0, |b| {
                u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
            });
            for (_, t) in p.section_relocs_of(sec, cie as u64, (cie + 4 + len) as u64) {
                sources.push((u, t, true));
            }
        }
    }
    let mut i = 0;
    while i < sources.len() || !anon_work.is_empty() {
        if i == sources.len() {
            let (sec, u) = anon_work.pop().expect("not empty");
            let size = p.obj.section(sec).size;
            sources.extend(p.section_relocs(sec, 0, size).map(|(_, t)| (u, t, false)));
            continue;
        }
        let (u, t, describes) = sources[i];
        i += 1;
        if let Target::Anon { sec, .. } = t {
            if anon_seen.insert(sec) {
                anon_work.push((sec, u));
            }
        }
        {
            let own = matches!(t, Target::Unit { unit, .. } if describes && d.included.contains_key(&unit));
            if let Some(a) = d.original_for(&t).filter(|_| !own) {
                let ua = o.unit(a);
                let local = ua.bind == Bind::Local;
                let file = if local {
                    o.obj.file_of(ua.sym).map(str::to_string)
                } else {
                    None
                };
                let patch_symbol = names::reference_name(&ua.name, local, file.as_deref());
                refs.entry(patch_symbol.clone()).or_insert(Reference {
                    name: ua.name.clone(),
                    kind: symbol_kind(ua),
                    binding: ua.bind,
                    scope: RefScope::Original,
                    file,
                    size: ua.len(),
                    patch_symbol,
                });
                continue;
            }
            match t {
                Target::External { sym, .. } => {
                    let s = p.obj.symbol(sym);
                    if s.name.is_empty() {
                        continue;
                    }
                    refs.entry(s.name.clone()).or_insert(Reference {
                        name: s.name.clone(),
                        kind: match s.kind {
                            crate::elf::SymKind::Tls => SymbolKind::Tls,
                            crate::elf::SymKind::Func => SymbolKind::Function,
                            crate::elf::SymKind::Object => SymbolKind::Object,
                            _ => SymbolKind::Unknown,
                        },
                        binding: s.bind,
                        scope: RefScope::External,
                        file: None,
                        size: 0,
                        patch_symbol: s.name.clone(),
                    });
                }
                Target::Anon { sec, .. } => {
                    let section = p.obj.section(sec);
                    if section.is_write()
                        && !section.name.starts_with(".data.rel.ro")
                        && !constant_pool(p, sec)
                    {
                        let name = p.unit(u).name.clone();
                        if !bad.iter().any(|x: &Unsupported| x.symbol == name) {
                            bad.push(Unsupported {
                                symbol: name,
                                kind: UnsupportedKind::UnnamedData,
                                reason: format!(
                                    "uses writable data in {} that has no symbol, so the \
                                     running original cannot be located (build with \
                                     -fdata-sections)",
                                    section.name
                                ),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    (refs.into_values().collect(), bad)
}

/// Whether writable section `sec` holds nothing but the compiler's unnamed constants: no
/// symbol defines anything in it. gcc compiling PIC or PIE code puts the initializer image of
/// an automatic aggregate that holds addresses (a local `struct option longopts[]` with its
/// strings, copied onto the stack on each call) into plain `.data` as a label-less constant,
/// since it needs load-time relocations; every variable of the program has a symbol (statics
/// a local one), and with `-fdata-sections` a section of its own. The constant is only ever
/// read (the function copies it), so a copy in the patch with the patched object's contents
/// and relocations is exact, as for unnamed read-only data. A writable section that also holds
/// named variables (an object built without `-fdata-sections`) gives no such assurance, nor
/// does one of another name: UBSan's `.data.rel.local..Lubsan_data*` records, which the
/// runtime writes (it reports each place once), or a section a program's assembly made.
fn constant_pool(u: &Units, sec: SecIdx) -> bool {
    matches!(
        u.obj.section(sec).name.as_str(),
        ".data" | ".data.rel" | ".data.rel.local"
    ) && u
        .by_section
        .get(sec.0 as usize)
        .is_some_and(|units| units.is_empty())
        && !u.obj.symbols.iter().any(|s| {
            s.section() == Some(sec)
                && !matches!(
                    s.kind,
                    crate::elf::SymKind::Section | crate::elf::SymKind::File
                )
        })
}

fn fill_report(d: &mut Diff, changed: BTreeMap<UnitId, Vec<Reason>>) {
    let nothing_included = d.included.is_empty();
    let (o, p) = (&d.orig, &d.patched);
    let section_name = |u: &Unit| p.obj.section(u.section).name.clone();
    let mut changed_functions = Vec::new();
    let mut new_functions = Vec::new();
    let mut new_data = Vec::new();
    let mut free_notes = Vec::new();
    for (&b, role) in &d.included {
        let ub = p.unit(b);
        match role {
            Role::Changed => {
                let a = d.p2o[b.0 as usize].expect("changed units are correlated");
                let ua = o.unit(a);
                if ua.kind == UnitKind::Func {
                    free_notes.extend(added_frees(o, a, p, b));
                }
                let mut reasons = changed.get(&b).cloned().unwrap_or_default();
                reasons.sort();
                changed_functions.push(ChangedFunction {
                    name: ub.name.clone(),
                    original_name: ua.name.clone(),
                    section: section_name(ub),
                    binding: ub.bind,
                    file: (ua.bind == Bind::Local)
                        .then(|| o.obj.file_of(ua.sym).map(str::to_string))
                        .flatten(),
                    original_size: ua.len(),
                    patched_size: ub.len(),
                    fragment: names::is_fragment(&ub.name),
                    reasons,
                    original_code: (ua.kind == UnitKind::Func).then(|| {
                        let offsets: Vec<u64> =
                            o.relocs(a).map(|(r, _)| r.offset - ua.start).collect();
                        OriginalCode::new(o.bytes(a), &offsets)
                    }),
                    osr: None,
                });
            }
            Role::NewFunc | Role::NewData | Role::DataCopy => {
                let entry = NewSymbol {
                    name: ub.name.clone(),
                    kind: symbol_kind(ub),
                    section: section_name(ub),
                    binding: ub.bind,
                    size: ub.len(),
                    replaces: (*role == Role::DataCopy)
                        .then(|| d.p2o[b.0 as usize].map(|a| o.unit(a).name.clone()))
                        .flatten(),
                };
                if *role == Role::NewFunc {
                    new_functions.push(entry);
                } else {
                    new_data.push(entry);
                }
            }
        }
    }
    let mut removed: Vec<String> = o
        .ids()
        .filter(|a| d.o2p[a.0 as usize].is_none() && o.unit(*a).kind == UnitKind::Func)
        .map(|a| o.unit(a).name.clone())
        .collect();
    removed.sort();
    changed_functions.sort_by(|x, y| x.name.cmp(&y.name));
    new_functions.sort_by(|x, y| x.name.cmp(&y.name));
    new_data.sort_by(|x, y| x.name.cmp(&y.name));
    let r = &mut d.report;
    r.unsupported
        .sort_by(|x, y| (x.kind, &x.symbol).cmp(&(y.kind, &y.symbol)));
    r.unsupported
        .dedup_by(|x, y| x.kind == y.kind && x.symbol == y.symbol);
    r.status = if !r.unsupported.is_empty() {
        Status::Unsupported
    } else if nothing_included {
        // New global functions or data count as changes: other units' patches may use them.
        Status::NoChange
    } else {
        Status::Patchable
    };
    r.changed_functions = changed_functions;
    r.new_functions = new_functions;
    r.new_data = new_data;
    r.removed_functions = removed;
    r.notes.extend(free_notes);
}

/// True for the name of a function (or function pointer) that releases memory: the C library's
/// `free`, the kernel's `kfree` family, and the `*_free` / `*Free` convention of libraries
/// (`png_free`, `g_free`, `xmlFree`, ...).
fn is_deallocator(name: &str) -> bool {
    const EXACT: [&str; 7] = [
        "free",
        "cfree",
        "kfree",
        "kvfree",
        "vfree",
        "kfree_sensitive",
        "kmem_cache_free",
    ];
    EXACT.contains(&name) || name.ends_with("_free") || name.ends_with("Free")
}

/// A note when the patched function `b` refers to deallocators more often than its original
/// `a`. A fix that frees memory the old code left alone is safe live only if no object made
/// before the patch still shares that memory: a change of ownership (a buffer that used to be
/// aliased and is now freed by its holder) frees it twice in objects from before the patch,
/// and nothing in the code says which one it is. Counted per deallocator name, so a free that
/// merely moved is not reported.
fn added_frees(o: &Units, a: UnitId, p: &Units, b: UnitId) -> Option<String> {
    let count = |u: &Units, id: UnitId| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for (_, t) in u.relocs(id) {
            let name = target_name(u, &t);
            if is_deallocator(&name) {
                *n.entry(name).or_default() += 1;
            }
        }
        n
    };
    let (before, after) = (count(o, a), count(p, b));
    let added: Vec<String> = after
        .iter()
        .filter(|(name, &n)| n > before.get(*name).copied().unwrap_or(0))
        .map(|(name, &n)| {
            let times = |n: usize| match n {
                0 => "never".to_string(),
                1 => "once".to_string(),
                n => format!("{n} times"),
            };
            format!(
                "{name} {} (the original {})",
                times(n),
                times(before.get(name).copied().unwrap_or(0))
            )
        })
        .collect();
    if added.is_empty() {
        return None;
    }
    Some(format!(
        "{} now refers to {}: a fix that frees memory the old code left alone is safe live only \
         if no object created before the patch still shares that memory (an ownership change \
         would free it twice); review it before applying",
        p.unit(b).name,
        added.join(", ")
    ))
}

/// Named data holding addresses *inside* a changed function (computed-goto label tables) must
/// point into the new code: copy it when it is local read-only data (its users then change
/// too), otherwise refuse.
fn code_address_tables(
    p: &Units,
    p2o: &[Option<UnitId>],
    changed: &mut BTreeMap<UnitId, Vec<Reason>>,
    copies: &mut BTreeSet<UnitId>,
    unsupported: &mut Vec<Unsupported>,
) {
    loop {
        let mut progress = false;
        for b in p.ids() {
            let ub = p.unit(b);
            if ub.kind != UnitKind::Data || p2o[b.0 as usize].is_none() || copies.contains(&b) {
                continue;
            }
            let into = p.relocs(b).find_map(|(_, t)| match t {
                Target::Unit {
                    unit, entry: false, ..
                } if changed.contains_key(&unit) && p.unit(unit).kind == UnitKind::Func => {
                    Some(unit)
                }
                _ => None,
            });
            let Some(f) = into else { continue };
            if p.is_writable(b) || ub.bind != Bind::Local {
                if !unsupported.iter().any(|x| x.symbol == ub.name) {
                    unsupported.push(Unsupported {
                        symbol: ub.name.clone(),
                        kind: UnsupportedKind::EscapedData,
                        reason: format!(
                            "holds addresses inside the changed function {}, and the running \
                             program may have copied them",
                            p.unit(f).name
                        ),
                    });
                }
                continue;
            }
            copies.insert(b);
            progress = true;
            for &(r, _) in &p.referrers[b.0 as usize] {
                if p.unit(r).kind == UnitKind::Func && p2o[r.0 as usize].is_some() {
                    changed.entry(r).or_insert_with(|| {
                        vec![Reason {
                            kind: ReasonKind::Data,
                            detail: format!(
                                "uses {}, which holds addresses inside changed code",
                                ub.name
                            ),
                        }]
                    });
                }
            }
        }
        if !progress {
            break;
        }
    }
}

/// A changed read-only table of pointers is copied for the patched code, but if its only users
/// changed *because of* it, the table is what the fix is about, and its address may already
/// have been handed out (registered at start-up): the copy would never be used.
fn refuse_escaped_copies(
    p: &Units,
    changed: &BTreeMap<UnitId, Vec<Reason>>,
    copies: &mut BTreeSet<UnitId>,
    unsupported: &mut Vec<Unsupported>,
) {
    let mut refused = Vec::new();
    for &b in copies.iter() {
        // Tables of function pointers (ops, callbacks) are what programs register at start-up;
        // tables of values or data pointers are read through the table.
        let holds_code = p.relocs(b).any(|(_, t)| {
            matches!(t, Target::Unit { unit, .. } if p.unit(unit).kind == UnitKind::Func)
                || matches!(t, Target::External { sym, .. }
                    if p.obj.symbol(sym).kind == crate::elf::SymKind::Func)
        });
        if !holds_code {
            continue;
        }
        let data_only = p.referrers[b.0 as usize].iter().any(|&(r, _)| {
            changed
                .get(&r)
                .is_some_and(|rs| rs.iter().all(|x| x.kind == ReasonKind::Data))
        });
        if data_only {
            refused.push(b);
            unsupported.push(Unsupported {
                symbol: p.unit(b).name.clone(),
                kind: UnsupportedKind::EscapedData,
                reason: "a read-only table of function pointers changed; its address may \
                         already be stored elsewhere (registered at start-up), where the running \
                         program keeps using the original"
                    .into(),
            });
        }
    }
    for b in refused {
        copies.remove(&b);
    }
}

/// Read-only statics the compiler makes whose address nothing compares or stores for later:
/// function-name strings and switch tables. gcc numbers them per unit (`__func__.25`), so one
/// name is defined by many units of a large binary (five times in Debian's vmlinux for one
/// kernel name), and a reference to the original's would have to be told apart from the rest.
const COMPILER_CONSTANTS: &[&str] = &["__func__", "__FUNCTION__", "__PRETTY_FUNCTION__", "CSWTCH"];

/// Included code gets its own copy of the [`COMPILER_CONSTANTS`] it uses instead of a
/// reference to the original's: equal contents, no address identity, nothing to locate.
fn copy_compiler_constants(
    p: &Units,
    p2o: &[Option<UnitId>],
    included: &mut BTreeMap<UnitId, Role>,
) {
    // Functions, and data the patch carries itself (a dynamic-debug descriptor names its
    // function with `__func__`).
    let funcs: Vec<UnitId> = included.keys().copied().collect();
    for f in funcs {
        for (_, t) in p.relocs(f) {
            let Target::Unit { unit, .. } = t else {
                continue;
            };
            let u = p.unit(unit);
            // gcc: `__func__.25` (key `__func__`); clang: `fn.__func__`.
            let base = u.key.rsplit('.').next().unwrap_or(&u.key);
            if u.kind == UnitKind::Data
                && u.bind == Bind::Local
                && !p.is_writable(unit)
                && p2o[unit.0 as usize].is_some()
                && COMPILER_CONSTANTS.contains(&base)
            {
                included.entry(unit).or_insert(Role::DataCopy);
            }
        }
    }
}

/// Aliases are one function with several names: a jump at its entry redirects every name, so
/// names that became separate functions cannot be patched apart.
fn refuse_alias_splits(o: &Units, p: &Units, unsupported: &mut Vec<Unsupported>) {
    let mut unit_of_name: HashMap<&str, UnitId> = HashMap::new();
    for b in p.ids() {
        for n in &p.unit(b).names {
            unit_of_name.insert(n.as_str(), b);
        }
    }
    for a in o.ids() {
        let names = &o.unit(a).names;
        if names.len() < 2 {
            continue;
        }
        let units: BTreeSet<UnitId> = names
            .iter()
            .filter_map(|n| unit_of_name.get(n.as_str()).copied())
            .collect();
        if units.len() > 1 {
            unsupported.push(Unsupported {
                symbol: o.unit(a).name.clone(),
                kind: UnsupportedKind::AliasSplit,
                reason: format!(
                    "{} were one function under several names and are now separate; a jump \
                     at the shared entry cannot tell their callers apart",
                    names.join(", ")
                ),
            });
        }
    }
}

/// Writable statics that correlation could not tell apart: binding one to another's running
/// value (or resetting it) would be silently wrong.
/// Per-call-site kernel statics whose running value only limits how often a message is
/// printed: once-flags (`WARN_ONCE`'s `__warned`, `printk_once`'s `__print_once`,
/// `DO_ONCE_LITE`'s `__already_done`) and rate-limit states (`_rs` of `*_ratelimited` and
/// `WARN_RATELIMIT`). When use cannot match them, the patch gets its own copy: the patched
/// function may print once more (or one more burst), which is harmless, and far better than
/// refusing the fix or handing one call site another's state.
const PRINT_LIMIT_STATE: &[&str] = &["__warned", "__print_once", "__already_done", "_rs"];

/// Refuses families of writable statics that correlation left unmatched (wrong matches would
/// hand one variable another's running value); returns notes for the print-limit states
/// ([`PRINT_LIMIT_STATE`]) that get their own copy instead.
fn refuse_ambiguous_statics(
    o: &Units,
    p: &Units,
    o2p: &[Option<UnitId>],
    p2o: &[Option<UnitId>],
    unsupported: &mut Vec<Unsupported>,
) -> Vec<String> {
    let mut notes = Vec::new();
    let mut groups: BTreeMap<&str, (Vec<UnitId>, Vec<UnitId>)> = BTreeMap::new();
    for a in o.ids() {
        let u = o.unit(a);
        if u.kind == UnitKind::Data
            && o2p[a.0 as usize].is_none()
            && o.is_writable(a)
            && !u.is_empty()
        {
            groups.entry(u.key.as_str()).or_default().0.push(a);
        }
    }
    for b in p.ids() {
        let u = p.unit(b);
        if u.kind == UnitKind::Data
            && p2o[b.0 as usize].is_none()
            && p.is_writable(b)
            && !u.is_empty()
        {
            if let Some(g) = groups.get_mut(u.key.as_str()) {
                g.1.push(b);
            }
        }
    }
    let names = |u: &Units, ids: &[UnitId]| -> String {
        let mut v: Vec<&str> = ids.iter().map(|&i| u.unit(i).name.as_str()).collect();
        v.sort_unstable();
        v.join(", ")
    };
    for (key, (as_, bs)) in groups {
        let total_p = p.ids().filter(|&b| p.unit(b).key == key).count();
        if bs.is_empty() || (as_.len() < 2 && total_p < 2) {
            continue;
        }
        // gcc: `_rs.3` (key `_rs`); clang: `fn._rs.1` (key `fn._rs`).
        let base = key.rsplit('.').next().unwrap_or(key);
        if PRINT_LIMIT_STATE.contains(&base) {
            notes.push(format!(
                "{} (print-limit state) could not be matched to the original's by use; the \
                 patch gets its own, so the patched code may print once more",
                names(p, &bs)
            ));
            continue;
        }
        unsupported.push(Unsupported {
            symbol: p.unit(bs[0]).name.clone(),
            kind: UnsupportedKind::AmbiguousData,
            reason: format!(
                "static variables named {key} cannot be matched: the patched object's {} \
                 against the original's {}; neither their users, nor where those users refer \
                 to them, nor their contents tell them apart, and a wrong match would hand one \
                 variable another's running value",
                names(p, &bs),
                if as_.is_empty() {
                    "(none left unmatched)".to_string()
                } else {
                    names(o, &as_)
                }
            ),
        });
    }
    notes
}

/// Constructors run when a program starts; one added by the fix would never run.
fn refuse_new_constructors(
    o: &Units,
    p: &Units,
    p2o: &[Option<UnitId>],
    unsupported: &mut Vec<Unsupported>,
) {
    let ctor_targets = |u: &Units| -> Vec<Target> {
        let mut v = Vec::new();
        for (i, s) in u.obj.sections.iter().enumerate() {
            let n = &s.name;
            if n.starts_with(".init_array")
                || n.starts_with(".ctors")
                || n.starts_with(".preinit_array")
            {
                v.extend(u.targets[i].iter().copied());
            }
        }
        v
    };
    let orig: BTreeSet<UnitId> = ctor_targets(o)
        .into_iter()
        .filter_map(|t| match t {
            Target::Unit { unit, .. } => Some(unit),
            _ => None,
        })
        .collect();
    for t in ctor_targets(p) {
        let Target::Unit { unit, .. } = t else {
            continue;
        };
        let known = p2o[unit.0 as usize].is_some_and(|a| orig.contains(&a));
        if !known {
            unsupported.push(Unsupported {
                symbol: p.unit(unit).name.clone(),
                kind: UnsupportedKind::NewConstructor,
                reason: "new constructor; constructors run when the program starts, so it would \
                         never run in the running process (call it from patched code instead)"
                    .into(),
            });
        }
    }
}
