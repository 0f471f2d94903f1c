//! Real translation units of other kernel versions than the 6.1 of tests/kernel
//! (tests/kernel-versions/*): Debian 13's 6.12 and Debian 11's 5.10, each case's `file:`
//! compiled with that kernel's Debian config and kbuild flags before and after `fix.diff`, by
//! scripts/kernel-case.sh in `linux-<kernel>` under SUTURE_KERNEL_VERSIONS (prepared by
//! scripts/kernel-version-tree.sh), then judged like the C corpus. Besides the decisions, each
//! case checks the descriptor-table layouts the differ derived from both objects (`layouts:`
//! `name=<entry size>/<address fields>`, every table present listed) and that the emitted patch object's tables
//! have the same layouts.

mod support;

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Trial};
use support::*;
use suture_object::special;
use suture_testkit::tier::root as tier_root;

fn main() {
    let args = Arguments::from_args();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = manifest.join("../..");
    let root = manifest.join("tests/kernel-versions");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel-versions");
    let trees = tier_root("SUTURE_KERNEL_VERSIONS", "kernel-versions");
    let mut trials = Vec::new();
    for dir in cases_in(&root) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let trees = trees.clone();
        let (repo, cache) = (repo.clone(), cache.clone());
        let skip = matches!(trees, Ok(None));
        trials.push(
            Trial::test(name.clone(), move || {
                let trees = trees?.expect("skipped when unset");
                let case = parse_case(&dir)?;
                let kernel = extra(&case, "kernel")?;
                let tree = trees.join(format!("linux-{kernel}"));
                let ready = std::fs::read_to_string(tree.join(".suture-ready")).map_err(|e| {
                    format!(
                        "{}: {e} (scripts/kernel-version-tree.sh {kernel} {} prepares it)",
                        tree.join(".suture-ready").display(),
                        tree.display()
                    )
                })?;
                let (a, b, out) = kernel_case_objects(&repo, &tree, &dir, &cache, &ready)?;
                check_layouts(&case, &a, &b)?;
                judge(
                    &case,
                    &format!("kernel-{kernel}"),
                    &a,
                    &b,
                    &out.join("emitted"),
                )?;
                check_emitted_layouts(&case, &b, &out.join("emitted")).map_err(Into::into)
            })
            .with_ignored_flag(skip),
        );
    }
    libtest_mimic::run(&args, trials).exit();
}

fn extra<'c>(case: &'c Case, key: &str) -> Result<&'c str, String> {
    case.extra
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| format!("{}: no `{key}:` line", case.dir.display()))
}

/// `name=size` for every table `obj` holds, in catalogue order.
fn layouts_of(obj: &suture_object::Object) -> Result<Vec<String>, String> {
    let (found, refused) = special::resolve(obj);
    if !refused.is_empty() {
        return Err(format!("tables without a layout: {refused:?}"));
    }
    Ok(found
        .iter()
        .map(|t| format!("{}={}/{}", t.name, t.entry, t.fields.len()))
        .collect())
}

/// Both objects' tables have exactly the layouts `layouts:` lists, and the two agree.
fn check_layouts(case: &Case, orig: &[u8], patched: &[u8]) -> Result<(), String> {
    let mut want: Vec<String> = extra(case, "layouts")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    want.sort();
    for (side, bytes) in [("original", orig), ("patched", patched)] {
        let obj = suture_object::Object::parse(bytes).map_err(|e| format!("{side}: {e}"))?;
        let mut got = layouts_of(&obj).map_err(|e| format!("{side}: {e}"))?;
        got.sort();
        if got != want {
            return Err(format!(
                "{side} object: table layouts {got:?}, case.txt says {want:?}"
            ));
        }
    }
    let (a, b) = (
        suture_object::Object::parse(orig).map_err(|e| e.to_string())?,
        suture_object::Object::parse(patched).map_err(|e| e.to_string())?,
    );
    replacements_tile(&a).map_err(|e| format!("original: {e}"))?;
    replacements_tile(&b).map_err(|e| format!("patched: {e}"))?;
    let refusals = special::refusals(&a, &b);
    if !refusals.is_empty() {
        return Err(format!("refused: {refusals:?}"));
    }
    Ok(())
}

/// The tables judge's emitted patch object carries resolve to the patched object's layouts,
/// hold the entry counts `carried:` lists (`name=<entries>`, every table listed), each of its
/// alternatives still owns replacement bytes, and it has the sections `emitted-sections:`
/// names.
fn check_emitted_layouts(case: &Case, patched: &[u8], work: &Path) -> Result<(), String> {
    let path = work.join("patch.o");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(()); // not patchable: nothing emitted
    };
    let p = suture_object::Object::parse(patched).map_err(|e| e.to_string())?;
    let e = suture_object::Object::parse(&bytes).map_err(|e| format!("emitted: {e}"))?;
    let want = layouts_of(&p)?;
    for t in layouts_of(&e).map_err(|e| format!("emitted object: {e}"))? {
        if !want.contains(&t) {
            return Err(format!(
                "the emitted object has {t}, the patched object {want:?}"
            ));
        }
    }
    let mut counts: Vec<String> = special::resolve(&e)
        .0
        .iter()
        .map(|t| {
            let sec = special::section_named(&e, t.name).expect("resolved tables exist");
            format!("{}={}", t.name, e.section(sec).size.div_ceil(t.entry))
        })
        .collect();
    counts.sort();
    let mut carried: Vec<String> = extra(case, "carried")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    carried.sort();
    if counts != carried {
        return Err(format!(
            "the emitted object carries {counts:?}, case.txt says {carried:?}"
        ));
    }
    if let Ok(names) = extra(case, "emitted-sections") {
        for name in names.split_whitespace() {
            if special::section_named(&e, name).is_none() {
                return Err(format!("the emitted object has no {name}"));
            }
        }
    }
    let units = suture_object::units::Units::new(&e);
    for entry in special::entries_by_unit(&units).iter().flatten() {
        if entry.table.repl.is_some() && special::replacement(&units, entry).is_none() {
            return Err(format!(
                "emitted {} entry {} has no replacement code",
                entry.table.name, entry.index
            ));
        }
    }
    Ok(())
}

/// The replacement ranges of all `.altinstructions` entries (offset from the `repl` field,
/// length from the byte the layout names) cover `.altinstr_replacement` exactly, as the
/// assembler lays replacements out one after the other: a length read at the wrong offset of
/// the entry shows as a gap or an overrun.
fn replacements_tile(obj: &suture_object::Object) -> Result<(), String> {
    let Some(t) = special::resolve(obj)
        .0
        .into_iter()
        .find(|t| t.name == special::ALTINSTRUCTIONS)
    else {
        return Ok(());
    };
    let sec = special::section_named(obj, t.name).expect("resolved tables exist");
    let units = suture_object::units::Units::new(obj);
    let mut ranges = Vec::new();
    for index in 0..obj.section(sec).size / t.entry {
        let e = special::Entry {
            table: t,
            sec,
            index,
            rel: 0,
        };
        let (rsec, a, b) = special::replacement(&units, &e)
            .ok_or_else(|| format!("alternative {index} has no replacement in range"))?;
        ranges.push((a, b, rsec));
    }
    ranges.sort();
    let mut end = 0;
    for &(a, b, _) in &ranges {
        if a > end {
            return Err(format!("no alternative replaces bytes {end:#x}..{a:#x}"));
        }
        end = end.max(b);
    }
    let size = ranges.first().map_or(0, |r| obj.section(r.2).size);
    if end != size {
        return Err(format!(
            "replacements end at {end:#x}, .altinstr_replacement at {size:#x}"
        ));
    }
    Ok(())
}
