//! Translation units of real C projects (tests/real/*): Debian source packages fetched and
//! built with Debian's flags by scripts/build-real-case.sh, before and after `fix.diff`, then
//! judged like the C corpus. Runs when SUTURE_DEBIAN_SRC names the source cache.

mod support;

use std::path::PathBuf;

use libtest_mimic::{Arguments, Trial};
use support::*;
use suture_testkit::cc::hash_files;
use suture_testkit::tier::root as tier_root;

fn main() {
    let args = Arguments::from_args();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = manifest.join("../..");
    let root = manifest.join("tests/real");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real");
    let src = tier_root("SUTURE_DEBIAN_SRC", "real-project");
    let mut trials = Vec::new();
    for dir in cases_in(&root) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let src = src.clone();
        let (repo, cache) = (repo.clone(), cache.clone());
        let skip = matches!(src, Ok(None));
        trials.push(
            Trial::test(name.clone(), move || {
                let src = src?.expect("skipped when unset");
                std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
                let case = parse_case(&dir)?;
                let script = repo.join("scripts/build-real-case.sh");
                let key = hash_files(
                    &[
                        &dir.join("fix.diff"),
                        &dir.join("case.txt"),
                        &dir.join("source.txt"),
                        &script,
                    ],
                    "",
                );
                let out = cache.join(format!("{name}-{key}"));
                let (a, b) = build_with_script(
                    &script,
                    &[dir.as_os_str(), out.as_os_str()],
                    &out,
                    &src.join(".suture-lock"),
                )?;
                judge(&case, "gcc-debian", &a, &b, &out.join("emitted")).map_err(Into::into)
            })
            .with_ignored_flag(skip),
        );
    }
    libtest_mimic::run(&args, trials).exit();
}
