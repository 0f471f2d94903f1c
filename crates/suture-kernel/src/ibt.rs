//! Indirect-branch tracking (`CONFIG_X86_KERNEL_IBT`) and live patches.
//!
//! With IBT an indirect `call`/`jmp` must land on an `ENDBR64`, else the CPU raises a control
//! protection fault (`#CP`, an oops). At build time objtool (`--ibt`) lists every `ENDBR` whose
//! address nothing takes in `.ibt_endbr_seal`, and at boot the kernel turns those into NOPs
//! ("seals" them). Read in Linux 6.12 (Debian 13):
//! - `tools/objtool/check.c`: `validate_ibt` / `validate_ibt_insn` / `validate_ibt_data_reloc`
//!   mark an `ENDBR` used when a relocation points at it from anything but a direct branch, or
//!   from a data section other than a fixed list of tables (`__jump_table`, `__mcount_loc`,
//!   `.orc_unwind_ip`, `.discard.*`, ...); `create_ibt_endbr_seal_sections` lists the rest.
//!   With IBT objtool does not run on the units of vmlinux (`delay-objtool` in
//!   `scripts/Makefile.lib`) but once on the whole `vmlinux.o` (`scripts/Makefile.vmlinux_o`),
//!   and on each module's linked object (`cmd_ld_multi_m` in `scripts/Makefile.build`, or the
//!   single object of a one-file module).
//! - `arch/x86/kernel/alternative.c`: `apply_seal_endbr` writes the NOPs, for vmlinux from
//!   `alternative_instructions` at boot and for modules from `module_finalize`
//!   (`arch/x86/kernel/module.c`, the module's `.ibt_endbr_seal`) when they load.
//! - `include/linux/export.h`: `___EXPORT_SYMBOL` puts `.quad sym` in `.export_symbol`, a data
//!   section objtool counts, so an exported function's `ENDBR` is never sealed.
//!
//! Livepatch itself is unaffected: ftrace redirects a patched function by rewriting the return
//! address of its `__fentry__` call and returning (`ftrace_regs_caller` in
//! `arch/x86/kernel/ftrace_64.S` ends in `RET`), which IBT does not check; indirect calls to
//! the original still land on its own `ENDBR`. The patch module's own functions are checked by
//! objtool when kbuild links the module, like any module's: their address is taken there
//! (`klp_func.new_func`, callbacks, a fix's own function pointers), so their `ENDBR` stays.
//!
//! What breaks is patched code that *newly* takes the address of an existing kernel function
//! and calls it indirectly (a new ops table entry, a callback passed to a registration call):
//! if nothing in vmlinux.o (or in that module) took its address, its `ENDBR` is a NOP in the
//! running kernel, or was never there (gcc's `-fcf-protection=branch` emits none for a static
//! function whose address its unit does not take), and the first indirect call oopses. This
//! includes a pointer to a function the patch replaces: suture points it at the running
//! original, as for every reference of a patch to a replaced function. The rule here: an address-taking
//! reference of a patch to a function of the target that is not exported is accepted only
//! when the original object of the same unit already takes that function's address (then
//! vmlinux.o or the module's object took it too, so it is not sealed); otherwise it is refused.
//! The rule can refuse a function whose address another unit takes; it never accepts a sealed
//! one. Deciding those exactly would need the target's `.ibt_endbr_seal`: the running kernel
//! frees it with its init sections after boot, but the vmlinux inside the release's
//! `vmlinuz` keeps its section headers (6.12.116's lists 12,275 sealed `ENDBR`s), so a later
//! version could read it from the image and map it to functions through the kallsyms copy.
//!
//! Not handled, so refused by [`crate::generate::check_config`]: kCFI/FineIBT
//! (`CONFIG_CFI_CLANG`, which also poisons the hash in front of sealed functions); Debian
//! builds its kernels with gcc, which has neither.

use std::collections::{BTreeMap, HashSet};

use suture_object::elf::{Place, SymKind};
use suture_object::{x86, Object};

const R_X86_64_PC32: u32 = 2;
const R_X86_64_PLT32: u32 = 4;

/// Sections whose relocations objtool does not count as taking an address (6.12
/// `validate_ibt`), plus the tables objtool itself writes after that check (present in the
/// objects of one-file modules and carried by patches: `.return_sites`, `.call_sites`,
/// `.orc_unwind`, `.cfi_sites`).
fn not_address_taking(section: &str) -> bool {
    (section.starts_with(".discard") && section != ".discard.ibt_endbr_noseal")
        || section.starts_with(".debug")
        || section.contains("__patchable_function_entries")
        || matches!(
            section,
            ".altinstructions"
                | ".ibt_endbr_seal"
                | ".orc_unwind_ip"
                | ".orc_unwind"
                | ".parainstructions"
                | ".retpoline_sites"
                | ".return_sites"
                | ".call_sites"
                | ".cfi_sites"
                | ".smp_locks"
                | ".static_call_sites"
                | "_error_injection_whitelist"
                | "_kprobe_blacklist"
                | "__bug_table"
                | "__ex_table"
                | "__jump_table"
                | "__mcount_loc"
                | ".kcfi_traps"
        )
}

/// One reference that takes the address of a function (not a direct call or jump).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The symbol referred to (a defined function's name, or an undefined symbol's name as it
    /// stands in the object).
    pub symbol: String,
    /// Whether the reference is to the symbol's first byte (where its `ENDBR` is).
    pub entry: bool,
    /// Where the reference is: the containing function, else the section.
    pub from: String,
}

/// Every address-taking reference of `obj` to a function it defines or to an undefined
/// symbol (which may be a function of the kernel), as objtool's `--ibt` check sees it.
pub fn address_taken(obj: &Object) -> Vec<Taken> {
    let mut out = Vec::new();
    for (si, sec) in obj.sections.iter().enumerate() {
        if sec.relocs.is_empty() || !sec.is_alloc() || not_address_taking(&sec.name) {
            continue;
        }
        let insns = if sec.is_exec() {
            x86::decode(sec.data)
        } else {
            Vec::new()
        };
        for r in &sec.relocs {
            if sec.is_exec() {
                // Calls and jumps do not need an ENDBR at their target.
                if x86::insn_at(&insns, r.offset).is_some_and(|i| i.direct_branch) {
                    continue;
                }
            }
            // objtool: the target of a PC-relative reference in code is sym + addend + 4;
            // in data, sym + addend.
            let pcrel = matches!(r.r_type, R_X86_64_PC32 | R_X86_64_PLT32);
            let off = r.addend + if sec.is_exec() && pcrel { 4 } else { 0 };
            let sym = obj.symbol(r.sym);
            let (symbol, entry) = match (sym.kind, sym.place) {
                (SymKind::Section, Place::Section(s)) => {
                    let Ok(off) = u64::try_from(off) else {
                        continue;
                    };
                    let Some(f) = obj.symbols.iter().find(|f| {
                        f.kind == SymKind::Func && f.place == Place::Section(s) && f.value == off
                    }) else {
                        continue;
                    };
                    (f.name.clone(), true)
                }
                (SymKind::Func, Place::Section(_)) | (_, Place::Undefined) => {
                    (sym.name.clone(), off == 0)
                }
                _ => continue,
            };
            if symbol.is_empty() {
                continue;
            }
            let from = obj
                .symbols
                .iter()
                .find(|f| {
                    f.kind == SymKind::Func
                        && f.place == Place::Section(suture_object::elf::SecIdx(si as u32))
                        && f.value <= r.offset
                        && r.offset < f.value + f.size.max(1)
                })
                .map_or_else(|| sec.name.clone(), |f| f.name.clone());
            out.push(Taken {
                symbol,
                entry,
                from,
            });
        }
    }
    out
}

/// What the check needs to know about the target kernel's symbols.
pub trait Target {
    /// Is `name` an exported symbol (whose `ENDBR` `.export_symbol` keeps)?
    fn exported(&self, name: &str) -> bool;
    /// Is `name` a function of the target (kallsyms type `t`), as far as known?
    fn is_function(&self, name: &str) -> bool;
}

/// The functions of the target whose address `patch` takes while `orig` (the same unit as
/// built) does not: symbol → reason. `patch` refers to the target's symbols through undefined
/// symbols (suture's local-reference names for the unit's statics); functions it defines
/// itself are in the patch module, whose `ENDBR`s objtool keeps for it.
pub fn newly_taken(orig: &Object, patch: &Object, target: &dyn Target) -> BTreeMap<String, String> {
    let plain = |name: &str| {
        suture_object::names::parse_local_reference(name)
            .map_or(name, |(_, n)| n)
            .to_string()
    };
    let already: HashSet<String> = address_taken(orig)
        .into_iter()
        .filter(|t| t.entry)
        .map(|t| plain(&t.symbol))
        .collect();
    let orig_function = |name: &str| {
        orig.symbols
            .iter()
            .any(|s| s.name == name && s.kind == SymKind::Func && s.section().is_some())
    };
    let mut out = BTreeMap::new();
    for t in address_taken(patch) {
        let sym = patch.symbols.iter().find(|s| s.name == t.symbol);
        if !sym.is_some_and(|s| s.place == Place::Undefined) {
            continue; // the patch's own function
        }
        let local = suture_object::names::parse_local_reference(&t.symbol).is_some();
        let name = plain(&t.symbol);
        if !local && target.exported(&name) {
            continue;
        }
        if !(orig_function(&name) || target.is_function(&name)) {
            continue;
        }
        if already.contains(&name) {
            continue;
        }
        let carried = patch
            .symbols
            .iter()
            .any(|s| s.name == name && s.kind == SymKind::Func && s.section().is_some());
        out.entry(name.clone()).or_insert_with(|| {
            format!(
                "the patched code ({}) takes the address of the running {name}{}, which the \
                 original unit never does: with CONFIG_X86_KERNEL_IBT an indirect call must \
                 land on an ENDBR, and the running {name} has none (gcc gives a static \
                 function one only when its address is taken) or a sealed one (the kernel \
                 turns the ENDBR of every function whose address vmlinux or its module never \
                 takes into a NOP at boot), so a call through that pointer would oops (#CP)",
                t.from,
                if carried {
                    " (pointers of a patch to a function it replaces are to the running \
                     original)"
                } else {
                    ""
                }
            )
        });
    }
    out
}
