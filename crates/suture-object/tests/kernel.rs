//! Real Linux kernel translation units (tests/kernel/*): each case's `file:` of Debian's
//! `linux-source` is compiled with Debian's config and compiler, before and after `fix.diff`,
//! by scripts/kernel-case.sh in the tree named by SUTURE_KERNEL_TREE (prepared by
//! scripts/kernel-tree.sh), then judged like the C corpus.

mod support;

use std::path::PathBuf;

use libtest_mimic::{Arguments, Trial};
use support::*;
use suture_testkit::tier::root as tier_root;

fn main() {
    let args = Arguments::from_args();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = manifest.join("../..");
    let root = manifest.join("tests/kernel");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel");
    let tree = tier_root("SUTURE_KERNEL_TREE", "kernel");
    let mut trials = Vec::new();
    for dir in cases_in(&root) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let tree = tree.clone();
        let (repo, cache) = (repo.clone(), cache.clone());
        let skip = matches!(tree, Ok(None));
        trials.push(
            Trial::test(name.clone(), move || {
                let tree = tree?.expect("skipped when unset");
                let case = parse_case(&dir)?;
                let version = std::fs::read_to_string(tree.join("include/config/kernel.release"))
                    .unwrap_or_default();
                let (a, b, out) = kernel_case_objects(&repo, &tree, &dir, &cache, &version)?;
                judge(&case, "kernel", &a, &b, &out.join("emitted")).map_err(Into::into)
            })
            .with_ignored_flag(skip),
        );
    }
    libtest_mimic::run(&args, trials).exit();
}
