//! The C fixture corpus (tests/cases): every case is compiled at test time in each of its
//! configs, diffed, checked against its expectations and golden decisions, and its patch
//! object validated with binutils. One test per case and config.

mod support;

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Failed, Trial};
use support::*;
use suture_testkit::cc::tool_version;

fn run_case(case: &Case, config: &str, cache: &Path) -> Result<(), Failed> {
    let (cc, opt) = split_config(config)?;
    let mut flags = vec![opt];
    flags.extend(case.cflags.iter().cloned());
    let unit = format!("{}.c", case.name);
    let read =
        |f: &str| std::fs::read_to_string(case.dir.join(f)).map_err(|e| format!("{}: {e}", f));
    let orig_o = compile(cc, &flags, &unit, &read("orig.c")?, cache)?;
    let patched_o = compile(cc, &flags, &unit, &read("patched.c")?, cache)?;
    let orig_bytes = std::fs::read(&orig_o).map_err(|e| e.to_string())?;
    let patched_bytes = std::fs::read(&patched_o).map_err(|e| e.to_string())?;
    let work = cache.join("emitted").join(&case.name).join(config);
    let verdict = judge(case, config, &orig_bytes, &patched_bytes, &work);
    // A known limitation is a strict expected failure: once it passes, the marker must go.
    match (known_limitation(case), verdict) {
        (None, v) => v.map_err(Failed::from),
        (Some(_), Err(_)) => Ok(()),
        (Some(why), Ok(())) => Err(format!(
            "known limitation now passes ({why}): remove `known-limitation` from case.txt"
        )
        .into()),
    }
}

fn known_limitation(case: &Case) -> Option<&str> {
    case.extra
        .iter()
        .find(|(k, _)| k == "known-limitation")
        .map(|(_, v)| v.as_str())
}

fn main() {
    let args = Arguments::from_args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("corpus");
    let have_clang = tool_version("clang").is_some();
    let mut trials = Vec::new();
    for dir in cases_in(&root) {
        let case = match parse_case(&dir) {
            Ok(c) => c,
            Err(e) => {
                let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                trials.push(Trial::test(format!("{name}::case"), move || Err(e.into())));
                continue;
            }
        };
        for config in case.configs.clone() {
            let ignored = config.starts_with("clang") && !have_clang;
            let case = case.clone();
            let cache = cache.clone();
            let name = format!("{}::{config}", case.name);
            trials.push(
                Trial::test(name, move || run_case(&case, &config, &cache))
                    .with_ignored_flag(ignored),
            );
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
