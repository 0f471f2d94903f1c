//! Shared machinery of the fixture tests: case files, compiling at test time with a cache,
//! checking decisions against expectations and goldens, validating emitted patch objects.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use suture_object::report::{RefScope, Report, Status};

/// What a case expects (see tests/cases/README.md).
#[derive(Debug, Default, Clone)]
pub struct Expect {
    pub status: Option<String>,
    pub changed: Vec<String>,
    pub not_changed: Vec<String>,
    pub new_function: Vec<String>,
    pub new_data: Vec<String>,
    pub references: Vec<String>,
    pub unsupported: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub description: String,
    pub configs: Vec<String>,
    pub cflags: Vec<String>,
    /// Other `key: value` lines (e.g. `file:` of kernel cases).
    pub extra: Vec<(String, String)>,
    pub expect: Expect,
}

pub fn parse_case(dir: &Path) -> Result<Case, String> {
    let path = dir.join("case.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut case = Case {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        dir: dir.to_path_buf(),
        description: String::new(),
        configs: vec!["gcc-O2".into()],
        cflags: Vec::new(),
        extra: Vec::new(),
        expect: Expect::default(),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            if case.description.is_empty() {
                case.description = c.trim().to_string();
            }
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("{}:{}: expected `key: value`", path.display(), n + 1))?;
        let list = || {
            value
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let e = &mut case.expect;
        match key.trim() {
            "configs" => case.configs = list(),
            "cflags" => case.cflags = list(),
            "status" => e.status = Some(value.trim().to_string()),
            "changed" => e.changed.extend(list()),
            "not-changed" => e.not_changed.extend(list()),
            "new-function" => e.new_function.extend(list()),
            "new-data" => e.new_data.extend(list()),
            "references" => e.references.extend(list()),
            "unsupported" => e.unsupported.extend(list()),
            "error" => e.error = Some(value.trim().to_string()),
            other => case
                .extra
                .push((other.to_string(), value.trim().to_string())),
        }
    }
    Ok(case)
}

pub fn cases_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("case.txt").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Splits `gcc-O2` into (`gcc`, `-O2`).
pub fn split_config(config: &str) -> Result<(&str, String), String> {
    let (cc, opt) = config
        .split_once('-')
        .ok_or_else(|| format!("bad config {config:?}: expected <compiler>-O<level>"))?;
    if !opt.starts_with('O') {
        return Err(format!(
            "bad config {config:?}: expected <compiler>-O<level>"
        ));
    }
    Ok((cc, format!("-{opt}")))
}

/// Compiles `source` (its contents, under the file name `unit_name`) with `cc -g
/// -ffunction-sections -fdata-sections flags`, cached by the kit (by source, flags and
/// compiler version).
pub fn compile(
    cc: &str,
    flags: &[String],
    unit_name: &str,
    source: &str,
    cache: &Path,
) -> Result<PathBuf, String> {
    let mut all = vec!["-g", "-ffunction-sections", "-fdata-sections"];
    all.extend(flags.iter().map(String::as_str));
    suture_testkit::cc::compile(cc, &all, unit_name, source, cache)
}

/// `name` from a case file matches a reported symbol when equal or a prefix up to a dot.
pub fn matches(expected: &str, reported: &str) -> bool {
    reported == expected
        || (reported.starts_with(expected) && reported[expected.len()..].starts_with('.'))
}

pub fn status_word(s: Status) -> &'static str {
    match s {
        Status::Patchable => "patchable",
        Status::NoChange => "no-change",
        Status::Unsupported => "unsupported",
    }
}

/// Checks a report against a case's expectations; returns the failed assertions.
pub fn check(e: &Expect, r: &Report) -> Vec<String> {
    let mut fails = Vec::new();
    if let Some(s) = &e.status {
        if s != status_word(r.status) {
            fails.push(format!("status is {}, expected {s}", status_word(r.status)));
        }
    }
    let changed: Vec<&str> = r
        .changed_functions
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let new_fn: Vec<&str> = r.new_functions.iter().map(|f| f.name.as_str()).collect();
    let new_data: Vec<&str> = r.new_data.iter().map(|f| f.name.as_str()).collect();
    let refs: Vec<&str> = r
        .references
        .iter()
        .filter(|x| x.scope == RefScope::Original || x.scope == RefScope::External)
        .map(|x| x.name.as_str())
        .collect();
    let unsupported: Vec<&str> = r.unsupported.iter().map(|u| u.symbol.as_str()).collect();
    let mut need = |what: &str, list: &[String], have: &[&str]| {
        for n in list {
            if !have.iter().any(|h| matches(n, h)) {
                fails.push(format!("{what} {n:?} missing (have {have:?})"));
            }
        }
    };
    need("changed function", &e.changed, &changed);
    need("new function", &e.new_function, &new_fn);
    need("new data", &e.new_data, &new_data);
    need("reference to", &e.references, &refs);
    need("unsupported symbol", &e.unsupported, &unsupported);
    for n in &e.not_changed {
        if let Some(h) = changed.iter().chain(&new_fn).find(|h| matches(n, h)) {
            fails.push(format!("{n:?} must not be changed or new, but {h:?} is"));
        }
    }
    fails
}

/// The decisions of a report as stable text, for golden files.
pub fn decisions(r: &Report) -> String {
    let mut s = format!("status: {}\n", status_word(r.status));
    for f in &r.changed_functions {
        let kinds: Vec<String> = f
            .reasons
            .iter()
            .map(|x| {
                serde_json::to_value(x.kind)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let mut kinds = kinds;
        kinds.dedup();
        s += &format!("changed: {} ({})\n", f.name, kinds.join(", "));
    }
    for f in &r.new_functions {
        s += &format!("new-function: {}\n", f.name);
    }
    for f in &r.new_data {
        match &f.replaces {
            Some(o) => s += &format!("new-data: {} (replaces {o})\n", f.name),
            None => s += &format!("new-data: {}\n", f.name),
        }
    }
    for u in &r.unsupported {
        let k = serde_json::to_value(u.kind).unwrap();
        s += &format!("unsupported: {} ({})\n", u.symbol, k.as_str().unwrap());
    }
    for x in &r.references {
        let scope = match x.scope {
            RefScope::Original => "uses-original",
            RefScope::External => "uses-external",
        };
        s += &format!("{scope}: {}\n", x.name);
    }
    for f in &r.removed_functions {
        s += &format!("removed: {f}\n");
    }
    s
}

pub fn blessing() -> bool {
    std::env::var_os("SUTURE_BLESS").is_some_and(|v| v != "0")
}

/// Compares `actual` with the golden file, or rewrites it when blessing.
pub fn golden(path: &Path, actual: &str) -> Result<(), String> {
    if blessing() {
        std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(path, actual).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).map_err(|_| {
        format!(
            "no golden file {} (run with SUTURE_BLESS=1 to create it, then review it)",
            path.display()
        )
    })?;
    if expected != actual {
        return Err(format!(
            "decisions differ from {} (SUTURE_BLESS=1 rewrites it when intended)\n--- golden\n{expected}--- actual\n{actual}",
            path.display()
        ));
    }
    Ok(())
}

/// The emitted object must pass `readelf -a` without a warning and link with `ld -r`.
pub fn validate_patch_object(bytes: &[u8], dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let obj = dir.join("patch.o");
    std::fs::write(&obj, bytes).map_err(|e| e.to_string())?;
    let out = Command::new("readelf")
        .args(["-a", "-W"])
        .arg(&obj)
        .output()
        .map_err(|e| format!("cannot run readelf: {e}"))?;
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(format!(
            "readelf -a complains about the patch object:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let linked = dir.join("linked.o");
    let out = Command::new("ld")
        .arg("-r")
        .arg("-o")
        .arg(&linked)
        .arg(&obj)
        .output()
        .map_err(|e| format!("cannot run ld: {e}"))?;
    if !out.status.success() || !out.stderr.is_empty() {
        return Err(format!(
            "ld -r rejects the patch object:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Our own reader must accept what we wrote, and every changed function must be defined.
    let o = suture_object::Object::parse(bytes).map_err(|e| format!("re-reading: {e}"))?;
    let manifest = o
        .sections
        .iter()
        .find(|s| s.name == suture_object::emit::MANIFEST_SECTION)
        .ok_or("no manifest section")?;
    let report: serde_json::Value =
        serde_json::from_slice(manifest.data).map_err(|e| format!("manifest: {e}"))?;
    // Every undefined symbol is a reference the manifest declares (the loader resolves them).
    let declared: Vec<&str> = report["references"]
        .as_array()
        .ok_or("manifest lacks references")?
        .iter()
        .filter_map(|r| r["patch_symbol"].as_str())
        .collect();
    for s in &o.symbols {
        if s.place == suture_object::elf::Place::Undefined
            && !s.name.is_empty()
            && !declared.contains(&s.name.as_str())
        {
            return Err(format!(
                "undefined symbol {} is not declared in the manifest",
                s.name
            ));
        }
    }
    for f in report["changed_functions"]
        .as_array()
        .ok_or("manifest lacks functions")?
    {
        let name = f["name"].as_str().unwrap_or_default();
        if !o
            .symbols
            .iter()
            .any(|s| s.name == name && s.section().is_some())
        {
            return Err(format!(
                "changed function {name} is not defined in the patch object"
            ));
        }
    }
    Ok(())
}

/// Diffs two objects and checks everything a case promises: expectations, golden decisions
/// (`golden/<label>.txt` in the case directory) and, when patchable, a valid patch object.
pub fn judge(
    case: &Case,
    label: &str,
    orig: &[u8],
    patched: &[u8],
    work: &Path,
) -> Result<(), String> {
    let a = suture_object::Object::parse(orig).map_err(|e| format!("original: {e}"))?;
    let b = suture_object::Object::parse(patched).map_err(|e| format!("patched: {e}"))?;
    let d = match suture_object::analyze(&a, &b) {
        Ok(d) => d,
        Err(e) => {
            return match &case.expect.error {
                Some(want) if e.to_string().contains(want.as_str()) => Ok(()),
                _ => Err(format!("differ failed: {e}")),
            }
        }
    };
    if let Some(want) = &case.expect.error {
        return Err(format!(
            "expected an error containing {want:?}, got a report"
        ));
    }
    let fails = check(&case.expect, &d.report);
    if !fails.is_empty() {
        return Err(format!(
            "{}\n\ndecisions:\n{}",
            fails.join("\n"),
            decisions(&d.report)
        ));
    }
    golden(
        &case.dir.join("golden").join(format!("{label}.txt")),
        &decisions(&d.report),
    )?;
    if d.report.status == suture_object::Status::Patchable {
        let bytes = suture_object::emit::emit(&d).map_err(|e| format!("emit: {e}"))?;
        validate_patch_object(&bytes, work)?;
    }
    Ok(())
}

/// Runs a build script that writes `out/orig.o` and `out/patched.o`, serialised with other
/// users of `lock` (a shared source tree), and caches the result under `out`.
pub fn build_with_script(
    script: &Path,
    args: &[&std::ffi::OsStr],
    out: &Path,
    lock: &Path,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    build_with_script_env(script, args, &[], out, lock)
}

/// [`build_with_script`] with environment variables for the script.
pub fn build_with_script_env(
    script: &Path,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, String)],
    out: &Path,
    lock: &Path,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (o, p) = (out.join("orig.o"), out.join("patched.o"));
    if !(o.is_file() && p.is_file()) {
        std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
        let res = Command::new("flock")
            .arg(lock)
            .arg("bash")
            .arg(script)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !res.status.success() {
            let err = String::from_utf8_lossy(&res.stderr);
            let tail: Vec<&str> = err.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let _ = std::fs::remove_file(&o);
            let _ = std::fs::remove_file(&p);
            return Err(format!("{} failed:\n{}", script.display(), tail.join("\n")));
        }
    }
    let read = |f: &Path| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()));
    Ok((read(&o)?, read(&p)?))
}

/// The two objects of a kernel fixture case (`orig.o`, `patched.o`) built in `tree` by
/// scripts/kernel-case.sh, cached in `cache/<case>-<key>` (the key hashes the case's files, the
/// scripts and `tree_id`, what identifies the tree's build), and that directory. A `kcflags:`
/// line of the case adds compiler flags to kbuild's (scripts/kernel-tu.sh's SUTURE_KCFLAGS).
pub fn kernel_case_objects(
    repo: &Path,
    tree: &Path,
    case: &Path,
    cache: &Path,
    tree_id: &str,
) -> Result<(Vec<u8>, Vec<u8>, PathBuf), String> {
    let script = repo.join("scripts/kernel-case.sh");
    let key = suture_testkit::cc::hash_files(
        &[
            &case.join("fix.diff"),
            &case.join("case.txt"),
            &script,
            &repo.join("scripts/kernel-tu.sh"),
        ],
        tree_id,
    );
    let name = case.file_name().unwrap().to_string_lossy();
    let out = cache.join(format!("{name}-{key}"));
    let mut envs = Vec::new();
    if let Some(extra) = parse_case(case)?
        .extra
        .iter()
        .find(|(k, _)| k == "kcflags")
        .map(|(_, v)| v.clone())
    {
        envs.push((
            "SUTURE_KCFLAGS",
            format!("-ffunction-sections -fdata-sections {extra}"),
        ));
    }
    let (a, b) = build_with_script_env(
        &script,
        &[tree.as_os_str(), case.as_os_str(), out.as_os_str()],
        &envs,
        &out,
        &tree.join(".suture-lock"),
    )?;
    Ok((a, b, out))
}
