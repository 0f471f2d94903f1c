//! Generating a livepatch module from suture patch objects of kernel translation units.
//!
//! Input: for each changed translation unit, its original object, the patch object
//! [`suture_object::emit::emit`] wrote and the differ's report, plus the kernel object the
//! unit is part of (`vmlinux` or a module name). Output: one `<name>.ko` with one `klp_object`
//! per kernel object, built by kbuild against the target's headers package and finalised by
//! [`crate::klp::finalize`].
//!
//! The generated module:
//! - `klp_func` per replaced function (`old_name` as in the original object, `old_sympos` from
//!   [`crate::kallsyms::sympos`], `new_func` the patch's copy through a global alias);
//! - `klp_object` per kernel object (`name = NULL` for vmlinux). A module's patch code refers
//!   to non-exported vmlinux symbols through `.klp.rela.vmlinux.*` sections, which the module
//!   loader applies when the patch module loads (Linux 6.1 `apply_relocations`); no vmlinux
//!   object is needed for them;
//! - callbacks: new functions of the fix named `suture_pre_patch`, `suture_post_patch`,
//!   `suture_pre_unpatch`, `suture_post_unpatch` (signatures of `struct klp_callbacks`:
//!   `int (*)(struct klp_object *)` for pre-patch, `void (*)(struct klp_object *)` for the
//!   others) become the callbacks of their unit's object. Define them without `static` (or
//!   with `__used`) so the compiler keeps them;
//! - `.replace = true` for a cumulative patch (`replace`): enabling it atomically replaces
//!   every earlier livepatch;
//! - the target kernel's identity in `.modinfo` (`suture_release=`, the headers' release, and
//!   `suture_vmlinux_build_id=`, from a copy of the target's `/sys/kernel/notes`), which
//!   `suture kernel load` checks against the running kernel (see [`crate::identity`]). Without
//!   the notes no module is written: one that cannot be checked is exactly the module that
//!   goes live on the wrong kernel without a word.
//!
//! Shadow variables need nothing from suture: `klp_shadow_alloc/get/get_or_alloc/free[_all]`
//! are exported by vmlinux, so the fix includes `<linux/livepatch.h>` and calls them; they
//! become ordinary (modversioned) references of the module.
//!
//! Refused, per symbol: functions without an ftrace entry (`notrace`, `noinstr`: no
//! `call __fentry__` at their start, so livepatch cannot redirect them), references to symbols
//! the target does not have, duplicated names that cannot be told apart, jump labels,
//! alternatives and paravirt sites whose relocations need a non-exported symbol of a *module*
//! (the module loader processes those tables before livepatch resolves module symbols; vmlinux
//! symbols are resolved before them), kernels built with LTO or kCFI, and with IBT
//! (`CONFIG_X86_KERNEL_IBT`) a reference that newly takes the address of a kernel function
//! whose `ENDBR` the kernel may have sealed ([`crate::ibt`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use object::read::elf::{FileHeader, SectionHeader, Sym as _};
use object::{elf, LittleEndian as LE};
use suture_object::report::Report;

use crate::identity::{self, KernelIdentity};
use crate::kallsyms::{self, ObjectSymbols, UnitHint};
use crate::kbuild::{self, Headers};
use crate::klp::{self, KlpSym, Plan};

/// Callback names a fix can define, and the `klp_callbacks` field each fills.
pub const CALLBACKS: [(&str, &str); 4] = [
    ("suture_pre_patch", "pre_patch"),
    ("suture_post_patch", "post_patch"),
    ("suture_pre_unpatch", "pre_unpatch"),
    ("suture_post_unpatch", "post_unpatch"),
];

/// Tables the module loader processes when the module loads, before livepatch resolves any
/// symbol: their relocations must not need livepatch.
const LOAD_TIME_TABLES: [&str; 4] = [
    "__jump_table",
    ".altinstructions",
    ".altinstr_replacement",
    ".parainstructions",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the change cannot be live-patched:\n{}", list(.0))]
    Refused(Vec<Refusal>),
    #[error("the target kernel is built without CONFIG_LIVEPATCH")]
    NoLivepatch,
    /// A kernel option livepatch modules built this way cannot serve.
    #[error("the target kernel is built with {option}: {why}")]
    KernelConfig { option: String, why: String },
    #[error(
        "{cc} reports {reports:?} but the kernel was built with {expected:?} \
         (CONFIG_CC_VERSION_TEXT of {}); modules built with another compiler may not match \
         the running code",
        headers.display()
    )]
    CompilerMismatch {
        cc: String,
        reports: String,
        expected: String,
        headers: PathBuf,
    },
    /// `searched` lists the `--modules` directories (empty: none given).
    #[error(
        "the fix changes module {module}, but no {module}.ko of the target kernel was \
         found{}; pass the target's /lib/modules/<release> directory with --modules",
        if searched.is_empty() { String::new() } else { format!(" in {searched}") }
    )]
    NoStockModule { module: String, searched: String },
    #[error(
        "{unit} is part of vmlinux: pass a copy of the target's /proc/kallsyms (read as root) \
         with --kallsyms, which livepatch positions are computed from"
    )]
    NeedKallsyms { unit: String },
    /// `which` is `original object` or `patch object`.
    #[error("{unit}: {which}: {message}")]
    BadObject {
        unit: String,
        which: &'static str,
        message: String,
    },
    #[error("the fix replaces no function, so there is nothing to live-patch")]
    NothingReplaced,
    #[error(
        "pass a copy of the target kernel's /sys/kernel/notes with --kernel-notes (on the \
         target: cat /sys/kernel/notes > notes): the module records the build-id of the kernel \
         it is built for, and `suture kernel load` refuses it on any other"
    )]
    NeedKernelNotes,
    #[error("kbuild did not produce {name}.ko")]
    NoModule { name: String },
    #[error(transparent)]
    Kbuild(#[from] kbuild::Error),
    #[error(transparent)]
    Symbols(#[from] kallsyms::Error),
    #[error(transparent)]
    Elf(#[from] klp::Error),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn list(r: &[Refusal]) -> String {
    r.iter()
        .map(|x| format!("  {} ({}): {}", x.symbol, x.unit, x.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// One reason a change cannot become part of the module.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Refusal {
    pub unit: String,
    pub symbol: String,
    /// The refusal's kind where it has one of the report's kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<suture_object::report::UnsupportedKind>,
    pub reason: String,
}

/// One patched translation unit.
pub struct Unit<'a> {
    /// Source path relative to the tree (`fs/proc/cmdline.c`).
    pub source: String,
    /// `vmlinux` or the module's name (`KBUILD_MODNAME`).
    pub object: String,
    pub orig: &'a [u8],
    pub patch: &'a [u8],
    pub report: &'a Report,
}

pub struct Options {
    /// Module name (also the `/sys/kernel/livepatch/<name>` directory).
    pub name: String,
    pub replace: bool,
    pub headers: Headers,
    /// Copy of the target's `/proc/kallsyms` (needed when vmlinux is patched).
    pub kallsyms: Option<PathBuf>,
    /// Directories to look for the stock `<module>.ko` of patched modules in (searched
    /// recursively), e.g. the target's `/lib/modules/<release>`.
    pub module_dirs: Vec<PathBuf>,
    pub out_dir: PathBuf,
    /// The kernel the module is for: the headers' release and the build-id from the target's
    /// `/sys/kernel/notes`. Required to write a module ([`Error::NeedKernelNotes`]); refusals
    /// are found without it.
    pub target: Option<KernelIdentity>,
}

/// What was generated.
#[derive(Debug, serde::Serialize)]
pub struct Module {
    pub path: PathBuf,
    pub name: String,
    pub vermagic: String,
    /// The kernel it is for, as recorded in its `.modinfo`.
    pub target_kernel: KernelIdentity,
    pub objects: Vec<ObjectSummary>,
    pub klp_sections: Vec<(String, usize)>,
    pub klp_symbols: Vec<String>,
    /// What the module does differently from the fixed kernel code (e.g. tracepoints that
    /// stay off in patched functions).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ObjectSummary {
    pub object: String,
    /// `name,sympos` of every replaced function.
    pub functions: Vec<String>,
    pub callbacks: Vec<String>,
}

#[derive(Default)]
struct ObjectPlan {
    funcs: Vec<(String, usize, String)>,
    callbacks: BTreeMap<&'static str, String>,
}

/// What of the target's configuration the generator must follow.
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// `CONFIG_X86_KERNEL_IBT`: unused `ENDBR`s are sealed, so a patch must not newly take
    /// the address of a kernel function (see [`crate::ibt`]).
    pub ibt: bool,
}

/// Refuses kernel configurations livepatch modules built this way cannot serve; returns what
/// the generator must follow for the others.
pub fn check_config(headers: &Headers) -> Result<Config, Error> {
    let cfg = std::fs::read_to_string(headers.dir.join(".config"))
        .map_err(io(format!("reading {}/.config", headers.dir.display())))?;
    let set = |k: &str| cfg.lines().any(|l| l == format!("{k}=y"));
    if !set("CONFIG_LIVEPATCH") {
        return Err(Error::NoLivepatch);
    }
    for (k, why) in [
        (
            "CONFIG_LTO_CLANG",
            "its code is only final after link-time optimisation, so objects of single units do not match it",
        ),
        (
            "CONFIG_CFI_CLANG",
            "kCFI checks a type hash in front of every indirect-call target (and FineIBT \
             rewrites it at boot), which suture neither compares nor emits",
        ),
    ] {
        if set(k) {
            return Err(Error::KernelConfig {
                option: k.to_string(),
                why: why.to_string(),
            });
        }
    }
    Ok(Config {
        ibt: set("CONFIG_X86_KERNEL_IBT"),
    })
}

/// Checks that `headers.cc` is the compiler the kernel was built with.
pub fn check_compiler(headers: &Headers) -> Result<(), Error> {
    let out = std::process::Command::new(&headers.cc)
        .arg("--version")
        .output()
        .map_err(io(format!(
            "running {} (the kernel's compiler per CONFIG_CC_VERSION_TEXT)",
            headers.cc
        )))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim();
    if first != headers.cc_version_text {
        return Err(Error::CompilerMismatch {
            cc: headers.cc.clone(),
            reports: first.to_string(),
            expected: headers.cc_version_text.clone(),
            headers: headers.dir.clone(),
        });
    }
    Ok(())
}

/// The namespaces of namespaced exports in the headers' `Module.symvers` (its fifth column):
/// symbol name → namespace. A module using such a symbol must import the namespace
/// (`MODULE_IMPORT_NS`), or modpost and the module loader refuse it.
pub fn read_symbol_namespaces(headers: &Headers) -> Result<HashMap<String, String>, Error> {
    let path = headers.dir.join("Module.symvers");
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let ns = f.get(4).filter(|n| !n.is_empty())?;
            Some((f.get(1)?.to_string(), ns.to_string()))
        })
        .collect())
}

/// Exported symbols of the headers' `Module.symvers`: name → exporting object.
pub fn read_symvers(headers: &Headers) -> Result<HashMap<String, String>, Error> {
    let path = headers.dir.join("Module.symvers");
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (_crc, name, obj) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_string(), obj.rsplit('/').next()?.to_string()))
        })
        .collect())
}

/// Finds `<module>.ko` under `dirs` (module names use `_` where file names may use `-`), or
/// its compressed form (`.ko.xz`, `.ko.zst`, `.ko.gz`: Debian 13 installs `.ko.xz`), which
/// [`kallsyms::read_module`] reads.
pub fn find_module(dirs: &[PathBuf], module: &str) -> Option<PathBuf> {
    fn walk(dir: &Path, want: &str, depth: usize) -> Option<PathBuf> {
        if depth > 12 {
            return None;
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in &entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().replace('-', "_");
            let plain = kallsyms::COMPRESSED
                .iter()
                .find_map(|(ext, _)| name.strip_suffix(ext))
                .unwrap_or(&name);
            if plain == want && p.is_file() {
                return Some(p);
            }
        }
        for e in &entries {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if let Some(p) = walk(&e.path(), want, depth + 1) {
                    return Some(p);
                }
            }
        }
        None
    }
    let want = format!("{module}.ko");
    dirs.iter().find_map(|d| walk(d, &want, 0))
}

/// A module name livepatch accepts, from anything: `[a-z0-9_]`, at most 55 characters.
pub fn module_name(from: &str) -> String {
    let mut s: String = from
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(55);
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "p_");
    }
    s
}

struct Undefined {
    name: String,
}

struct PatchObjectInfo {
    undefined: Vec<Undefined>,
    /// (relocation section name, symbol name) for every relocation in load-time tables.
    load_time_refs: Vec<(String, String)>,
}

fn inspect_patch(data: &[u8]) -> Result<PatchObjectInfo, String> {
    let hdr = elf::FileHeader64::<LE>::parse(data).map_err(|e| e.to_string())?;
    let sections = hdr.sections(LE, data).map_err(|e| e.to_string())?;
    let symtab = sections
        .symbols(LE, data, elf::SHT_SYMTAB)
        .map_err(|e| e.to_string())?;
    let mut undefined = Vec::new();
    for s in symtab.iter() {
        if s.st_shndx(LE) == elf::SHN_UNDEF && s.st_name(LE) != 0 {
            let name = String::from_utf8_lossy(symtab.symbol_name(LE, s).unwrap_or_default());
            undefined.push(Undefined {
                name: name.into_owned(),
            });
        }
    }
    let mut load_time_refs = Vec::new();
    for sec in sections.iter() {
        if sec.sh_type(LE) != elf::SHT_RELA {
            continue;
        }
        let target = sections
            .section(object::SectionIndex(sec.sh_info(LE) as usize))
            .ok()
            .and_then(|t| sections.section_name(LE, t).ok())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        if !LOAD_TIME_TABLES.contains(&target.as_str()) {
            continue;
        }
        let relas = sec
            .data_as_array::<elf::Rela64<LE>, _>(LE, data)
            .map_err(|e| e.to_string())?;
        for r in relas {
            let idx = r.r_sym(LE, false) as usize;
            let Ok(s) = symtab.symbol(object::SymbolIndex(idx)) else {
                continue;
            };
            if s.st_shndx(LE) == elf::SHN_UNDEF {
                let name = String::from_utf8_lossy(symtab.symbol_name(LE, s).unwrap_or_default());
                load_time_refs.push((target.clone(), name.into_owned()));
            }
        }
    }
    Ok(PatchObjectInfo {
        undefined,
        load_time_refs,
    })
}

/// Does the original function `name` start with an ftrace call (`call __fentry__`)?
fn has_fentry(orig: &suture_object::Object, name: &str) -> Option<bool> {
    let sym = orig
        .symbols
        .iter()
        .find(|s| s.name == name && s.kind == suture_object::elf::SymKind::Func)?;
    let sec = sym.section()?;
    let section = orig.section(sec);
    Some(
        section
            .relocs_in(sym.value, sym.value + 16)
            .iter()
            .any(|r| orig.symbol(r.sym).name == "__fentry__"),
    )
}

/// Whether `name` (an undefined symbol of a patch object) is a static key that only turns on
/// observation: a tracepoint (`__tracepoint_<event>`, whose `key` field the jump label tests)
/// or a dynamic-debug descriptor (`__UNIQUE_ID_ddebug<n>`, `descriptor`). Code compiled for
/// such a key with its compiled default does exactly what it did, minus the trace event or
/// debug message.
fn observation_key(name: &str) -> bool {
    let base = display_name(name);
    let base = base.split('.').next().unwrap_or_default();
    base.starts_with("__tracepoint_")
        || base.starts_with("__UNIQUE_ID_ddebug")
        || base == "descriptor"
}

/// `name` without suture's local-reference prefix.
fn display_name(name: &str) -> String {
    suture_object::names::parse_local_reference(name)
        .map_or(name, |(_, n)| n)
        .to_string()
}

/// Builds the livepatch module.
/// Why a compiled unit of vmlinux is not part of the target kernel, or None when it is (or
/// cannot be told). kbuild compiles a single object on request whatever the configuration
/// says, as built-in code when the configuration does not make it a module, so a fix to a
/// driver the target's configuration leaves out compiles as if it belonged to vmlinux. Its
/// code is then nowhere in the target: none of the unit's functions is in the target's
/// kallsyms, which lists every function of vmlinux (static and `__init` ones too). A unit that
/// defines no function cannot be told and counts as present.
pub fn not_in_vmlinux(
    orig: &[u8],
    kallsyms: &ObjectSymbols,
) -> Result<Option<String>, suture_object::Error> {
    let o = suture_object::Object::parse(orig)?;
    let funcs: Vec<&str> = o
        .symbols
        .iter()
        .filter(|s| s.section().is_some() && s.kind == suture_object::elf::SymKind::Func)
        .map(|s| s.name.as_str())
        .collect();
    if funcs.is_empty() || funcs.iter().any(|f| kallsyms.contains(f)) {
        return Ok(None);
    }
    let mut shown: Vec<&str> = funcs.iter().copied().take(3).collect();
    if funcs.len() > 3 {
        shown.push("...");
    }
    Ok(Some(format!(
        "not built in the target kernel: none of its {} function(s) ({}) is in the target's \
         kallsyms, so its configuration leaves this unit out (kbuild compiled it only because \
         it was asked to); the fix does not apply to this kernel",
        funcs.len(),
        shown.join(", ")
    )))
}

pub fn generate(units: &[Unit], opts: &Options) -> Result<Module, Error> {
    let config = check_config(&opts.headers)?;
    check_compiler(&opts.headers)?;
    let symvers = read_symvers(&opts.headers)?;
    let namespaces = read_symbol_namespaces(&opts.headers)?;
    let mut imports: BTreeSet<String> = BTreeSet::new();
    let mut refusals = Vec::new();
    let refuse = |refusals: &mut Vec<Refusal>, unit: &Unit, symbol: &str, reason: String| {
        refusals.push(Refusal {
            unit: unit.source.clone(),
            symbol: symbol.to_string(),
            kind: None,
            reason,
        })
    };

    // Symbol tables of every kernel object involved.
    let mut tables: HashMap<String, ObjectSymbols> = HashMap::new();
    let objects: BTreeSet<&str> = units.iter().map(|u| u.object.as_str()).collect();
    for &o in &objects {
        if o == "vmlinux" {
            continue;
        }
        let ko = find_module(&opts.module_dirs, o).ok_or_else(|| Error::NoStockModule {
            module: o.to_string(),
            searched: opts
                .module_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        tables.insert(o.to_string(), kallsyms::read_module(&ko)?);
    }
    let vmlinux = match &opts.kallsyms {
        Some(p) => Some(kallsyms::read_kallsyms(p)?),
        None => None,
    };

    let mut plans: Vec<Plan> = Vec::new();
    let mut objs: BTreeMap<String, ObjectPlan> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    for (ui, unit) in units.iter().enumerate() {
        let orig = suture_object::Object::parse(unit.orig).map_err(|e| Error::BadObject {
            unit: unit.source.clone(),
            which: "original object",
            message: e.to_string(),
        })?;
        let info = inspect_patch(unit.patch).map_err(|message| Error::BadObject {
            unit: unit.source.clone(),
            which: "patch object",
            message,
        })?;
        let names: Vec<String> = orig
            .symbols
            .iter()
            .filter(|s| {
                s.section().is_some()
                    && matches!(
                        s.kind,
                        suture_object::elf::SymKind::Func | suture_object::elf::SymKind::Object
                    )
            })
            .map(|s| s.name.clone())
            .collect();
        let file = unit.source.rsplit('/').next();
        let hint = UnitHint {
            names: &names,
            file,
        };
        let own_table = |o: &str| -> Option<&ObjectSymbols> {
            if o == "vmlinux" {
                vmlinux.as_ref()
            } else {
                tables.get(o)
            }
        };
        if own_table(&unit.object).is_none() {
            return Err(Error::NeedKallsyms {
                unit: unit.source.clone(),
            });
        }
        let mut plan = Plan::default();
        let op = objs.entry(unit.object.clone()).or_default();
        for (fi, f) in unit
            .report
            .changed_functions
            .iter()
            .filter(|f| !f.fragment)
            .enumerate()
        {
            match has_fentry(&orig, &f.original_name) {
                Some(true) => {}
                Some(false) => {
                    refuse(
                        &mut refusals,
                        unit,
                        &f.original_name,
                        "has no ftrace entry (no call __fentry__ at its start: notrace, noinstr \
                         or an assembly entry point), so livepatch cannot redirect it"
                            .into(),
                    );
                    continue;
                }
                None => {
                    refuse(
                        &mut refusals,
                        unit,
                        &f.original_name,
                        "is not a function of the original object".into(),
                    );
                    continue;
                }
            }
            let table = own_table(&unit.object).expect("checked above");
            let pos = match kallsyms::sympos(table, &f.original_name, &hint) {
                Ok(p) => p,
                Err(e) => {
                    refuse(&mut refusals, unit, &f.original_name, e);
                    continue;
                }
            };
            let alias = format!("__suture_new_{ui}_{fi}");
            plan.aliases.push((f.name.clone(), alias.clone()));
            op.funcs.push((f.original_name.clone(), pos, alias));
        }
        for nf in &unit.report.new_functions {
            if let Some((_, field)) = CALLBACKS.iter().find(|(n, _)| *n == nf.name) {
                let alias = format!("__suture_cb_{ui}_{field}");
                if op.callbacks.insert(field, alias.clone()).is_some() {
                    refuse(
                        &mut refusals,
                        unit,
                        &nf.name,
                        format!("a second {field} callback for {}", unit.object),
                    );
                }
                plan.aliases.push((nf.name.clone(), alias));
            }
        }
        for u in &info.undefined {
            let (name, local) = match suture_object::names::parse_local_reference(&u.name) {
                Some((_, n)) => (n.to_string(), true),
                None => (u.name.clone(), false),
            };
            if !local && symvers.contains_key(&name) {
                if let Some(ns) = namespaces.get(&name) {
                    imports.insert(ns.clone());
                }
                continue; // exported: an ordinary, modversioned reference
            }
            // Where the symbol lives: the unit's own object first, then vmlinux.
            let in_own = own_table(&unit.object).is_some_and(|t| t.contains(&name));
            let object = if in_own || local {
                unit.object.clone()
            } else if unit.object != "vmlinux"
                && vmlinux.as_ref().is_some_and(|t| t.contains(&name))
            {
                "vmlinux".to_string()
            } else if unit.object != "vmlinux" && vmlinux.is_none() {
                refuse(
                    &mut refusals,
                    unit,
                    &name,
                    "is not exported and not defined by the module; pass the target's \
                     /proc/kallsyms with --kallsyms to resolve it in vmlinux"
                        .into(),
                );
                continue;
            } else {
                refuse(
                    &mut refusals,
                    unit,
                    &name,
                    format!(
                        "is neither exported (Module.symvers) nor a symbol of {} in the \
                         target kernel",
                        unit.object
                    ),
                );
                continue;
            };
            let table = own_table(&object).expect("tables of used objects are loaded");
            // Only the unit's own statics are disambiguated by its ranges; another unit's
            // global is unique or refused.
            let empty: [String; 0] = [];
            let h = if object == unit.object {
                UnitHint {
                    names: &names,
                    file,
                }
            } else {
                UnitHint {
                    names: &empty,
                    file: None,
                }
            };
            match kallsyms::sympos(table, &name, &h) {
                Ok(sympos) => {
                    plan.klp.insert(
                        u.name.clone(),
                        KlpSym {
                            object,
                            name,
                            sympos,
                        },
                    );
                }
                Err(e) => refuse(&mut refusals, unit, &name, e),
            }
        }
        if config.ibt {
            let patch = suture_object::Object::parse(unit.patch).map_err(|e| Error::BadObject {
                unit: unit.source.clone(),
                which: "patch object",
                message: e.to_string(),
            })?;
            let target = IbtTarget {
                symvers: &symvers,
                tables: [own_table(&unit.object), vmlinux.as_ref()],
            };
            for (name, why) in crate::ibt::newly_taken(&orig, &patch, &target) {
                refusals.push(Refusal {
                    unit: unit.source.clone(),
                    symbol: name,
                    kind: Some(suture_object::report::UnsupportedKind::IbtAddressTaken),
                    reason: why,
                });
            }
        }
        // vmlinux-specific livepatch relocations are applied by the module loader itself
        // (`apply_relocations`, before `module_finalize` and jump labels); module-specific
        // ones only when livepatch initialises the object, after those tables were processed.
        let late: HashSet<&str> = plan
            .klp
            .iter()
            .filter(|(_, k)| k.object != "vmlinux")
            .map(|(n, _)| n.as_str())
            .collect();
        for (table, sym) in &info.load_time_refs {
            if table == "__jump_table" && late.contains(sym.as_str()) && observation_key(sym) {
                if plan.off_keys.insert(sym.clone()) {
                    notes.push(format!(
                        "{}: {} is a tracepoint or dynamic-debug key of {}, which a livepatch \
                         module cannot reference from __jump_table (the module loader needs it \
                         before livepatch resolves module symbols): in the patched functions \
                         that tracepoint or debug message stays off while the patch is loaded",
                        unit.source,
                        display_name(sym),
                        unit.object
                    ));
                }
                continue;
            }
            if late.contains(sym.as_str()) {
                refuse(
                    &mut refusals,
                    unit,
                    sym,
                    format!(
                        "is referenced from {table} (a jump label, alternative or paravirt \
                         site of the patched code) but is a non-exported symbol of the module: \
                         the module loader processes {table} before livepatch resolves \
                         module symbols"
                    ),
                );
            }
        }
        plans.push(plan);
    }
    if !refusals.is_empty() {
        return Err(Error::Refused(refusals));
    }
    if objs.values().all(|o| o.funcs.is_empty()) {
        return Err(Error::NothingReplaced);
    }
    let target = opts.target.clone().ok_or(Error::NeedKernelNotes)?;

    // The kbuild directory.
    let build = opts.out_dir.join("build");
    if build.exists() {
        std::fs::remove_dir_all(&build).map_err(io(format!("clearing {}", build.display())))?;
    }
    std::fs::create_dir_all(&build).map_err(io(format!("creating {}", build.display())))?;
    let mut objects = vec![format!("{}_main.o", opts.name)];
    for (i, (unit, plan)) in units.iter().zip(&plans).enumerate() {
        let prepared = klp::prepare(unit.patch, plan)?;
        let file = format!("suture_patch_{i}.o");
        std::fs::write(build.join(&file), prepared).map_err(io(format!("writing {file}")))?;
        // modpost reads every object's kbuild command file (for the module's srcversion).
        let path = build.join(&file);
        let p = path.display();
        std::fs::write(
            build.join(format!(".{file}.cmd")),
            format!(
                "savedcmd_{p} := true\nsource_{p} := {p}\ndeps_{p} := \\\n\n{p}: $(deps_{p})\n$(deps_{p}):\n"
            ),
        )
        .map_err(io(format!("writing .{file}.cmd")))?;
        objects.push(file);
    }
    let off_key = plans.iter().any(|p| !p.off_keys.is_empty());
    let c = c_source(opts, &target, &objs, off_key, &imports);
    std::fs::write(build.join(format!("{}_main.c", opts.name)), c)
        .map_err(io("writing the module source"))?;
    std::fs::write(
        build.join("Kbuild"),
        format!(
            "obj-m := {name}.o\n{name}-y := {objs}\n",
            name = opts.name,
            objs = objects.join(" ")
        ),
    )
    .map_err(io("writing Kbuild"))?;
    let kos = kbuild::build_module(&build, &opts.headers)?;
    let built = kos
        .iter()
        .find(|p| p.file_stem().is_some_and(|s| s == opts.name.as_str()))
        .ok_or_else(|| Error::NoModule {
            name: opts.name.clone(),
        })?;
    let data = std::fs::read(built).map_err(io(format!("reading {}", built.display())))?;
    let (out, summary) = klp::finalize(&data)?;
    let path = opts.out_dir.join(format!("{}.ko", opts.name));
    std::fs::write(&path, &out).map_err(io(format!("writing {}", path.display())))?;
    let vermagic = modinfo(&out, "vermagic").unwrap_or_default();
    Ok(Module {
        path,
        name: opts.name.clone(),
        vermagic,
        target_kernel: target,
        objects: objs
            .iter()
            .map(|(o, p)| ObjectSummary {
                object: o.clone(),
                functions: p
                    .funcs
                    .iter()
                    .map(|(n, pos, _)| format!("{n},{pos}"))
                    .collect(),
                callbacks: p.callbacks.keys().map(|s| s.to_string()).collect(),
            })
            .collect(),
        klp_sections: summary.klp_sections,
        klp_symbols: summary.klp_symbols,
        notes,
    })
}

/// The target's symbols as the IBT check needs them: exports and kallsyms types.
struct IbtTarget<'a> {
    symvers: &'a HashMap<String, String>,
    tables: [Option<&'a ObjectSymbols>; 2],
}

impl crate::ibt::Target for IbtTarget<'_> {
    fn exported(&self, name: &str) -> bool {
        self.symvers.contains_key(name)
    }

    fn is_function(&self, name: &str) -> bool {
        self.tables
            .iter()
            .flatten()
            .any(|t| t.named(name).iter().any(|&i| t.syms[i].class == 't'))
    }
}

/// A `key=value` of a module's `.modinfo`.
pub fn modinfo(ko: &[u8], key: &str) -> Option<String> {
    let hdr = elf::FileHeader64::<LE>::parse(ko).ok()?;
    let sections = hdr.sections(LE, ko).ok()?;
    let (_, sec) = sections.section_by_name(LE, b".modinfo")?;
    let data = sec.data(LE, ko).ok()?;
    data.split(|&b| b == 0).find_map(|e| {
        let e = std::str::from_utf8(e).ok()?;
        e.strip_prefix(key)?.strip_prefix('=').map(str::to_string)
    })
}

fn c_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => {
                let _ = write!(out, "\\x{:02x}", c as u32 & 0xff);
            }
        }
    }
    out.push('"');
    out
}

fn c_source(
    opts: &Options,
    target: &KernelIdentity,
    objs: &BTreeMap<String, ObjectPlan>,
    off_key: bool,
    imports: &BTreeSet<String>,
) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "// SPDX-License-Identifier: GPL-2.0\n\
         /* Generated by suture: livepatch module {}. Do not edit. */\n\
         #include <linux/module.h>\n\
         #include <linux/kernel.h>\n\
         #include <linux/livepatch.h>\n",
        opts.name
    );
    // The namespaces of the namespaced exports the patched code uses (the patched module
    // imports them in its own .modinfo, which the patch does not carry).
    for ns in imports {
        let _ = writeln!(c, "MODULE_IMPORT_NS({ns});");
    }
    if off_key {
        let _ = writeln!(
            c,
            "#include <linux/jump_label.h>\n\n\
             /* Stands in for module tracepoint and dynamic-debug keys in __jump_table. */\n\
             struct static_key_false {} = STATIC_KEY_FALSE_INIT;\n",
            klp::OFF_KEY
        );
    }
    for p in objs.values() {
        for (_, _, alias) in &p.funcs {
            let _ = writeln!(c, "extern void {alias}(void);");
        }
        for (field, alias) in &p.callbacks {
            let ret = if *field == "pre_patch" { "int" } else { "void" };
            let _ = writeln!(c, "extern {ret} {alias}(struct klp_object *obj);");
        }
    }
    for (i, p) in objs.values().enumerate() {
        let _ = writeln!(c, "\nstatic struct klp_func suture_funcs_{i}[] = {{");
        for (name, pos, alias) in &p.funcs {
            let _ = writeln!(
                c,
                "\t{{ .old_name = {}, .new_func = {alias}, .old_sympos = {pos} }},",
                c_string(name)
            );
        }
        let _ = writeln!(c, "\t{{ }}\n}};");
    }
    let _ = writeln!(c, "\nstatic struct klp_object suture_objs[] = {{");
    for (i, (name, p)) in objs.iter().enumerate() {
        let oname = if name == "vmlinux" {
            "NULL".to_string()
        } else {
            c_string(name)
        };
        let _ = write!(
            c,
            "\t{{\n\t\t.name = {oname},\n\t\t.funcs = suture_funcs_{i},\n"
        );
        if !p.callbacks.is_empty() {
            let _ = writeln!(c, "\t\t.callbacks = {{");
            for (field, alias) in &p.callbacks {
                let _ = writeln!(c, "\t\t\t.{field} = {alias},");
            }
            let _ = writeln!(c, "\t\t}},");
        }
        let _ = writeln!(c, "\t}},");
    }
    let _ = writeln!(
        c,
        "\t{{ }}\n}};\n\n\
         static struct klp_patch suture_patch = {{\n\
         \t.mod = THIS_MODULE,\n\
         \t.objs = suture_objs,\n\
         \t.replace = {},\n\
         }};\n\n\
         static int __init suture_patch_init(void)\n{{\n\treturn klp_enable_patch(&suture_patch);\n}}\n\n\
         static void __exit suture_patch_exit(void)\n{{\n}}\n\n\
         module_init(suture_patch_init);\n\
         module_exit(suture_patch_exit);\n\
         MODULE_LICENSE(\"GPL\");\n\
         MODULE_DESCRIPTION(\"suture live patch {}\");\n\
         MODULE_INFO(livepatch, \"Y\");\n\
         MODULE_INFO({}, {});\n\
         MODULE_INFO({}, {});",
        if opts.replace { "true" } else { "false" },
        opts.name,
        identity::MODINFO_RELEASE,
        c_string(&target.release),
        identity::MODINFO_BUILD_ID,
        c_string(&target.vmlinux_build_id),
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_kernel_safe() {
        assert_eq!(module_name("fix-cmdline.patch"), "fix_cmdline_patch");
        assert_eq!(module_name("1x"), "p_1x");
        assert_eq!(module_name(&"a".repeat(80)).len(), 55);
    }

    #[test]
    fn the_target_kernel_is_recorded_in_modinfo() {
        let opts = Options {
            name: "p".into(),
            replace: false,
            headers: Headers {
                dir: "/nonexistent".into(),
                cc_version_text: "gcc".into(),
                cc: "gcc".into(),
            },
            kallsyms: None,
            module_dirs: Vec::new(),
            out_dir: "/nonexistent".into(),
            target: None,
        };
        let target = KernelIdentity {
            release: "6.1.0-57-amd64".into(),
            vmlinux_build_id: "2401381".into(),
        };
        let c = c_source(&opts, &target, &BTreeMap::new(), false, &BTreeSet::new());
        assert!(
            c.contains("MODULE_INFO(suture_release, \"6.1.0-57-amd64\");"),
            "{c}"
        );
        assert!(
            c.contains("MODULE_INFO(suture_vmlinux_build_id, \"2401381\");"),
            "{c}"
        );
    }

    #[test]
    fn c_strings_are_escaped() {
        assert_eq!(c_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
