//! The kernel pipeline's decisions, through the library (`suture_build::kernel`), on the
//! prepared Linux 6.1 tree (SUTURE_KERNEL_TREE, scripts/kernel-tree.sh). The CLI's flags,
//! JSON and exit codes, and loading the modules into the booted kernel, are tested in
//! `crates/suture/tests/kernel_build.rs`. Under `CI` a missing tree fails; locally the tests
//! are skipped with a note.

use std::path::{Path, PathBuf};

use suture_build::kernel::{self, KernelBuildOptions, KernelOutcome};
use suture_build::patchset::PatchSet;

fn tree() -> Option<PathBuf> {
    match std::env::var_os("SUTURE_KERNEL_TREE").map(PathBuf::from) {
        Some(t) if t.join(".suture-ready").exists() => Some(t),
        other => {
            let why = format!("no prepared kernel tree (SUTURE_KERNEL_TREE={other:?})");
            if std::env::var_os("CI").is_some() {
                panic!("kernel build tier cannot run: {why} (scripts/test.sh prepares it)");
            }
            eprintln!("note: kernel build tier skipped: {why}");
            None
        }
    }
}

/// The names of the functions a unit's patch replaces.
fn changed<'p>(patch: &'p kernel::Patched) -> Vec<&'p str> {
    patch
        .report
        .changed_functions
        .iter()
        .map(|f| f.name.as_str())
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("suture-build-kernel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The units a fix changes itself.
fn own_units(set: &PatchSet) -> Vec<kernel::ToBuild> {
    set.files
        .iter()
        .map(|f| kernel::ToBuild {
            file: f.rel.display().to_string(),
            because_of: Vec::new(),
        })
        .collect()
}

fn options(tree: &Path, diff: &Path, out: &Path) -> KernelBuildOptions {
    KernelBuildOptions {
        source: tree.to_path_buf(),
        diff: diff.to_path_buf(),
        out_dir: out.to_path_buf(),
        name: None,
        headers: None,
        kallsyms: None,
        kernel_notes: None,
        module_dirs: Vec::new(),
        replace: false,
        max_header_units: kernel::DEFAULT_MAX_HEADER_UNITS,
    }
}

/// `kernel::build` of `text` written as a diff in a fresh scratch directory: its report and
/// progress lines.
fn build_text(
    tree: &Path,
    name: &str,
    text: &str,
) -> (kernel::KernelBuildReport, Vec<String>, PathBuf) {
    let work = scratch(name);
    let diff = work.join(format!("{name}.diff"));
    std::fs::write(&diff, text).unwrap();
    let mut lines = Vec::new();
    let r = kernel::build(&options(tree, &diff, &work.join("out")), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    (r, lines, work)
}

/// Files that are neither C units nor headers are refused, with one reason per file, before
/// anything is compiled; nothing is written.
#[test]
fn non_c_files_are_refused_before_compiling() {
    let Some(tree) = tree() else { return };
    let (r, lines, work) = build_text(
        &tree,
        "refused",
        "--- a/include/linux/kernel.h\n+++ b/include/linux/kernel.h\n@@ -1,1 +1,1 @@\n-x\n+y\n\
         --- a/arch/x86/entry/entry_64.S\n+++ b/arch/x86/entry/entry_64.S\n@@ -1,1 +1,1 @@\n-x\n+y\n",
    );
    assert_eq!(r.status, KernelOutcome::Unsupported);
    // The header is not refused for being one (its units would be rebuilt).
    assert!(!r.message.contains("kernel.h"), "{}", r.message);
    assert!(r.message.contains("entry_64.S: assembly"), "{}", r.message);
    assert_eq!(r.reasons.len(), 1, "{:?}", r.reasons);
    assert!(lines.is_empty(), "compiled something: {lines:?}");
    assert!(!work.join("out").exists());
}

/// A header most of the kernel includes is refused before anything is compiled, with the
/// count of units it reaches; the limit can be raised (not done here: hours of compiles).
#[test]
fn a_core_header_is_refused_before_compiling() {
    let Some(tree) = tree() else { return };
    let (r, lines, work) = build_text(
        &tree,
        "core-header",
        "--- a/include/linux/list.h\n+++ b/include/linux/list.h\n@@ -1,1 +1,2 @@\n \
         /* SPDX-License-Identifier: GPL-2.0 */\n+/* a comment */\n",
    );
    assert_eq!(r.status, KernelOutcome::Unsupported);
    assert!(
        r.message
            .contains("more than the limit of 100 (--max-header-units)"),
        "{}",
        r.message
    );
    assert_eq!(r.headers.len(), 1);
    assert_eq!(r.headers[0].header, "include/linux/list.h");
    assert!(
        r.headers[0].units.len() > 5000,
        "{}",
        r.headers[0].units.len()
    );
    assert!(r.headers[0]
        .units
        .contains(&"fs/proc/cmdline.c".to_string()));
    assert!(
        !lines.iter().any(|l| l.starts_with("compiling")),
        "compiled something: {lines:?}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// Regression: the kernel pipeline used to cut the first path component of every file
/// (`-p1`), so a diff with plain paths named `proc/cmdline.c`. It now places files like the
/// userspace pipeline: a plain-path diff builds. A comment-only change compiles to the same
/// code: no change.
#[test]
fn plain_paths_and_a_comment_only_change() {
    let Some(tree) = tree() else { return };
    let work = scratch("plain");
    let diff = work.join("comment.diff");
    let lines = [
        "--- fs/proc/cmdline.c\t2024-01-31 10:00:00",
        "+++ fs/proc/cmdline.c  2024-01-31 10:00:01",
        "@@ -7,6 +7,7 @@",
        " static int cmdline_proc_show(struct seq_file *m, void *v)",
        " {",
        " \tseq_puts(m, saved_command_line);",
        "+\t/* a comment */",
        " \tseq_putc(m, '\\n');",
        " \treturn 0;",
        " }",
        "",
    ];
    std::fs::write(&diff, lines.join("\n")).unwrap();
    let text = std::fs::read_to_string(&diff).unwrap();
    let set = PatchSet::parse(&tree, &text).unwrap();
    assert_eq!(set.level, 0);
    let r = kernel::build(&options(&tree, &diff, &work.join("out")), &mut |_| {}).unwrap();
    assert_eq!(r.status, KernelOutcome::NoChange, "{}", r.message);
    // The tree's source is untouched and no object built from patched sources is left.
    let src = std::fs::read_to_string(tree.join("fs/proc/cmdline.c")).unwrap();
    assert!(!src.contains("a comment"));
    assert!(!tree.join("fs/proc/cmdline.o").exists());
}

/// A changed function body is patchable: the compile and diff phases find it in vmlinux.
#[test]
fn changed_body_is_patchable_in_vmlinux() {
    let Some(tree) = tree() else { return };
    let diff = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../suture-kernel/tests/cases/cmdline-body/fix.diff");
    let text = std::fs::read_to_string(&diff).unwrap();
    let set = PatchSet::parse(&tree, &text).unwrap();
    assert_eq!(set.level, 1);
    let checked = match kernel::check(&tree, None).unwrap() {
        Ok(c) => c,
        Err(r) => panic!("refused: {}", r.message),
    };
    let t = suture_kernel::tree::Tree::open(&tree, &checked.headers.cc).unwrap();
    let built = kernel::compile(&t, &set, &text, &own_units(&set), &mut |_| {})
        .unwrap()
        .built;
    let declared = kernel::declared_layouts(&t).unwrap();
    drop(t);
    assert_eq!(built.len(), 1);
    assert_eq!(
        (built[0].file.as_str(), built[0].object.as_str()),
        ("fs/proc/cmdline.c", "vmlinux")
    );
    let patches = match kernel::diff(&built, &text, &declared, &mut |_| {}).unwrap() {
        Ok(p) => p,
        Err(r) => panic!("refused: {}", r.message),
    };
    // The unit's ORC table fits the layout 6.1's headers declare; headers that declared
    // another `struct orc_entry` would refuse the unit, naming the table.
    let mut other = declared.clone();
    let orc = other
        .iter_mut()
        .find(|d| d.name == ".orc_unwind_ip")
        .expect("6.1 declares struct orc_entry");
    assert_eq!(orc.parallel, Some(6));
    orc.parallel = Some(8);
    let refused = match kernel::diff(&built, &text, &other, &mut |_| {}).unwrap() {
        Ok(_) => panic!("layouts the headers contradict were accepted"),
        Err(r) => r,
    };
    assert!(
        refused.message.contains(
            "fs/proc/cmdline.c: .orc_unwind_ip: the entries fit the 4-byte layout of 4.18-6.12, \
             but the target kernel's struct orc_entry has 8-byte parallel entries"
        ),
        "{}",
        refused.message
    );
    assert_eq!(patches.len(), 1);
    assert_eq!(changed(&patches[0]), ["cmdline_proc_show"]);
}

/// A change the differ refuses gives one reason per symbol, with the unit and the kind.
#[test]
fn changed_data_is_refused_per_symbol() {
    let Some(tree) = tree() else { return };
    let work = scratch("data");
    let diff = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../suture-object/tests/kernel/pipe-max-size-data-unsupported/fix.diff");
    let r = kernel::build(&options(&tree, &diff, &work.join("out")), &mut |_| {}).unwrap();
    assert_eq!(r.status, KernelOutcome::Unsupported);
    let reason = r
        .reasons
        .iter()
        .find(|x| x.symbol.as_deref() == Some("pipe_max_size"))
        .unwrap_or_else(|| panic!("{:?}", r.reasons));
    assert_eq!(reason.unit.as_deref(), Some("fs/pipe.c"));
    assert!(reason.kind.is_some());
    assert!(
        r.message.contains("pipe_max_size (fs/pipe.c)"),
        "{}",
        r.message
    );
    assert!(!work.join("out").exists());
}

/// The 6.12 and 5.10 trees (scripts/kernel-version-tree.sh under SUTURE_KERNEL_VERSIONS):
/// locally skipped when unset, a failure under CI.
fn version_trees() -> Vec<(&'static str, PathBuf)> {
    match std::env::var_os("SUTURE_KERNEL_VERSIONS").map(PathBuf::from) {
        Some(root) => vec![
            ("6.12", root.join("linux-6.12")),
            ("5.10", root.join("linux-5.10")),
        ],
        None if std::env::var_os("CI").is_some() => {
            panic!("SUTURE_KERNEL_VERSIONS is not set (scripts/test.sh prepares the trees)")
        }
        None => {
            eprintln!("note: 6.12 and 5.10 skipped: set SUTURE_KERNEL_VERSIONS");
            Vec::new()
        }
    }
}

/// The pipeline's compile and diff phases on other kernel versions: a real upstream fix
/// (blk-iocost, 6.12.117 -> 6.12.118, and the same fix on 5.10) compiled by kbuild in the
/// sandbox, its tables' layouts agreeing with what the tree's headers declare.
#[test]
fn other_kernel_versions_compile_and_diff_with_their_own_layouts() {
    for (version, tree) in version_trees() {
        let diff = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../suture-object/tests/kernel-versions/{version}-iocost-skip-flush-sequence/fix.diff"
        ));
        let text = std::fs::read_to_string(&diff).unwrap();
        let set = PatchSet::parse(&tree, &text).unwrap();
        let t = suture_kernel::tree::Tree::open(&tree, "gcc-12").unwrap();
        let built = kernel::compile(&t, &set, &text, &own_units(&set), &mut |_| {})
            .unwrap()
            .built;
        let declared = kernel::declared_layouts(&t).unwrap();
        drop(t);
        let patches = match kernel::diff(&built, &text, &declared, &mut |_| {}).unwrap() {
            Ok(p) => p,
            Err(r) => panic!("{version}: refused: {}", r.message),
        };
        assert_eq!(changed(&patches[0]), ["ioc_rqos_done"], "{version}");
        assert!(!tree.join("block/blk-iocost.o").exists(), "{version}");
    }
}

/// What each kernel's headers declare, from the probe compiled against its tree: 6.1 (the
/// prepared tree) and, when SUTURE_KERNEL_VERSIONS is set (scripts/kernel-version-tree.sh),
/// Debian 13's 6.12 and Debian 11's 5.10.
#[test]
fn headers_declare_each_kernel_versions_layouts() {
    let mut trees = Vec::new();
    if let Some(t) = tree() {
        trees.push(("6.1", t));
    }
    trees.extend(version_trees());
    for (version, dir) in trees {
        let t = suture_kernel::tree::Tree::open(&dir, "gcc-12").unwrap();
        let declared = kernel::declared_layouts(&t).unwrap();
        let get = |name: &str| {
            declared
                .iter()
                .find(|d| d.name == name)
                .unwrap_or_else(|| panic!("{version}: {name} not declared: {declared:?}"))
        };
        let alt = get(".altinstructions");
        let (alt_size, repl) = if version == "6.12" {
            (14, (4, 13))
        } else {
            (12, (4, 11))
        };
        assert_eq!((alt.entry, alt.repl), (alt_size, Some(repl)), "{version}");
        let ex = get("__ex_table");
        let fields = if version == "5.10" { 3 } else { 2 };
        assert_eq!((ex.entry, ex.fields), (12, Some(fields)), "{version}");
        assert_eq!(get("__jump_table").entry, 16, "{version}");
        let bug = get("__bug_table");
        assert_eq!((bug.entry, bug.line), (12, Some(8)), "{version}");
        assert_eq!(get(".static_call_sites").entry, 8, "{version}");
        assert_eq!(get(".orc_unwind_ip").parallel, Some(6), "{version}");
        // The probe is built in a scratch directory: nothing is left in the tree.
        assert!(!dir.join("suture_layouts.o").exists());
    }
}
