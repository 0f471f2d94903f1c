//! `suture build --deb` on a Debian package installed on this machine, end to end.
//!
//! The machine runs libexpat1 2.5.0-1+deb12u1 (bookworm-security, September 2024). Neither its
//! binary nor its source is in the archive any more: apt serves the sources 2.5.0-1+deb12u2
//! (bookworm) and deb12u5 (bookworm-security, whose files 404 on the mirror). So `suture build
//! --deb` reconstructs the installed source from deb12u2 (reversing the three patches its
//! changelog entry adds), builds it with Debian's `debian/rules build` (which copies `expat/`
//! into `src/` and `srcw/` and builds libexpat and libexpatw), and matches the two installed
//! libraries: their build-ids are not reproduced (the gcc-12 installed now is newer than the
//! one Debian used, and its version string is in the stripped `.comment`), but every section
//! they load is byte-identical to the rebuild's, which proves the reconstruction.
//!
//! The tier's cache is `SUTURE_DEB_BUILD` (set by scripts/test.sh, prepared by
//! scripts/deb-build.sh: deb-src entries, expat's build dependencies); suture keeps its
//! sources and built trees there (`SUTURE_DEB_CACHE`). Without it, or with another libexpat1
//! installed, the test says why and passes, except under `CI`, where it fails.
//!
//! Time on the 2-core test machine: the first `suture build --deb` (download, reconstruction,
//! Debian build of both libraries, the fix) about 50 s; later runs reuse the built tree
//! (about 13 s, mostly the fix's two units compiled twice).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use suture_testkit::proc::{spawn_lines, Lines};
use suture_testkit::{run, text, Scratch};

const TIER: &str = "deb-build";
const INSTALLED: &str = "2.5.0-1+deb12u1";
const NEWER: &str = "2.5.0-1+deb12u2";

/// The tier's cache, when it is prepared.
fn tier_dir() -> Option<PathBuf> {
    let dir = suture_testkit::tier::require("SUTURE_DEB_BUILD", TIER)?;
    if !dir.join(".ready").is_file() {
        return suture_testkit::tier::unavailable(
            TIER,
            &format!(
                "{} is not prepared (no .ready): run scripts/deb-build.sh",
                dir.display()
            ),
        );
    }
    Some(dir)
}

/// The tier's cache, when it is prepared and libexpat1 is at the version the test knows (the
/// archive no longer serves it: the machine must have it installed already).
fn cache() -> Option<PathBuf> {
    let dir = tier_dir()?;
    installed_at(
        "libexpat1",
        INSTALLED,
        "the archive no longer serves it: the machine must have it installed already",
    )
    .then_some(dir)
}

/// `suture build --deb libexpat1=INSTALLED ARGS -o OUT --json`: exit code and report.
fn build_deb(cache: &Path, args: &[&str], out: &Path) -> (Option<i32>, Value) {
    let o = run(Command::new(env!("CARGO_BIN_EXE_suture"))
        .env("SUTURE_DEB_CACHE", cache)
        .args([
            "build",
            "--json",
            "--deb",
            &format!("libexpat1={INSTALLED}"),
        ])
        .args(args)
        .arg("-o")
        .arg(out));
    let report = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("suture build --deb --json: {e}: {}", text(&o)));
    (o.status.code(), report)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn settle(lines: &Lines, want: &str) {
    lines.drain();
    lines.wait_for(want);
    for l in lines.take(5) {
        assert_eq!(l, want, "the driver's behaviour is not stable");
    }
}

/// The whole update (`--to deb12u2`) is refused, with Debian's reasons: CVE-2023-52425
/// changes the parser's struct and the build files. Its CVE-2024-50602 patch alone
/// (`--patch`) is written as one bundle per installed library, applied to a running driver
/// linked with the installed libexpat.so.1.8.10 (XML_StopParser on a parser that never
/// started fails with XML_ERROR_NOT_STARTED, 44), and reverted.
#[test]
fn expat_installed_library_patched_from_the_newer_debian_source() {
    let Some(cache) = cache() else { return };
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "deb-build", "expat");

    // The whole update.
    let (code, report) = build_deb(&cache, &["--to", NEWER], &dir.dir("to"));
    assert_eq!(code, Some(2), "{report:#}");
    assert_eq!(report["schema"], "suture.deb-build/1");
    assert_eq!(report["source"], "expat");
    assert_eq!(report["version"], INSTALLED);
    let origin = &report["origin"];
    assert_eq!(origin["kind"], "reconstructed", "{origin:#}");
    assert_eq!(origin["from_version"], NEWER, "{origin:#}");
    let added = [
        "expat-2.5.0-CVE-2023-52425.patch",
        "expat-2.5.0-CVE-2024-50602.patch",
        "expat-2.5.0-CVE-2024-8176.patch",
    ];
    assert_eq!(strs(&origin["dropped_patches"]), added, "{origin:#}");
    let patches = strs(&report["fix"]["patches"]);
    let names: Vec<&str> = patches
        .iter()
        .map(|p| p.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, added, "{report:#}");
    // The reconstruction is proved by the installed files: each loads the rebuild's bytes.
    let files = report["files"].as_array().unwrap();
    for lib in ["libexpat.so.1.8.10", "libexpatw.so.1.8.10"] {
        let f = files
            .iter()
            .find(|f| f["path"].as_str().unwrap().ends_with(lib))
            .unwrap_or_else(|| panic!("{lib} not matched: {report:#}"));
        let status = f["status"].as_str().unwrap();
        assert!(
            status == "reproduced" || status == "same-load",
            "{lib}: {f:#}"
        );
        if status == "same-load" {
            assert!(!f["reasons"].as_array().unwrap().is_empty(), "{f:#}");
        }
    }
    let refusals = report["build"]["refusals"].as_array().unwrap();
    assert!(
        refusals.iter().any(|r| r["file"] == "expat/lib/xmlparse.c"
            && r["reason"]
                .as_str()
                .unwrap()
                .contains("struct XML_ParserStruct changes its definition")),
        "{refusals:#?}"
    );
    assert!(report["build"]["bundles"].as_array().unwrap().is_empty());

    // CVE-2024-50602 alone, from the newer source package; the built tree is reused.
    let (code, report) = build_deb(&cache, &["--patch", &patches[1]], &dir.dir("out"));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["debian_build_ran"], false, "{report:#}");
    let bundles = report["build"]["bundles"].as_array().unwrap();
    let mut targets: Vec<&str> = bundles
        .iter()
        .map(|b| b["target"].as_str().unwrap())
        .collect();
    targets.sort_unstable();
    assert_eq!(
        targets,
        [
            "/lib/x86_64-linux-gnu/libexpat.so.1.8.10",
            "/usr/lib/x86_64-linux-gnu/libexpatw.so.1.8.10"
        ],
        "{report:#}"
    );
    for b in bundles {
        let mut f = strs(&b["functions"]);
        f.sort();
        assert_eq!(f, ["XML_ErrorString", "XML_StopParser"], "{b:#}");
    }
    let bundle = bundles
        .iter()
        .find(|b| {
            b["target"]
                .as_str()
                .unwrap()
                .ends_with("/libexpat.so.1.8.10")
        })
        .map(|b| PathBuf::from(b["path"].as_str().unwrap()))
        .unwrap();

    // A driver compiled against the source's headers, linked with the installed library.
    let tree = PathBuf::from(report["tree"].as_str().unwrap());
    let probe = dir.path().join("expat-probe");
    let cc = run(Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-I"])
        .arg(tree.join("expat/lib"))
        .arg("-o")
        .arg(&probe)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/real-fixes/expat-probe.c"
        ))
        .arg("/lib/x86_64-linux-gnu/libexpat.so.1.8.10"));
    assert!(cc.status.success(), "{}", text(&cc));
    let (child, lines) = spawn_lines(Command::new(&probe).arg("stop-unstarted"));
    settle(&lines, "status=1 error=0");
    let suture = || Command::new(env!("CARGO_BIN_EXE_suture"));
    // The output directory with `--all`: every bundle in it, each in every process mapping
    // its installed library (the driver among them); the report names the package, its
    // version, the file and the processes. libexpatw's bundle is skipped when no process maps
    // that library.
    let out_dir = bundle.parent().unwrap();
    let o = run(suture()
        .args(["apply", "--json", "--all", "--timeout", "60"])
        .arg(out_dir));
    // Other processes on the machine may map the library too; one of them being busy must
    // not fail this test, the driver being patched must.
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "apply: {}",
        text(&o)
    );
    settle(&lines, "status=0 error=44");
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(&o.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("apply --json: one document per bundle");
    assert_eq!(docs.len(), 2, "{docs:#?}");
    let applied = docs
        .iter()
        .find(|d| d["files"].as_array().is_some_and(|f| !f.is_empty()))
        .unwrap_or_else(|| panic!("no bundle was applied: {docs:#?}"));
    let other = docs.iter().find(|d| !std::ptr::eq(*d, applied)).unwrap();
    assert!(
        other["skipped"].is_string() || other["files"].as_array().is_some_and(|f| !f.is_empty()),
        "libexpatw's bundle is neither applied nor skipped: {other:#}"
    );
    let file = applied["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["file"] == "/usr/lib/x86_64-linux-gnu/libexpat.so.1.8.10"
                || f["file"] == "/lib/x86_64-linux-gnu/libexpat.so.1.8.10"
        })
        .unwrap_or_else(|| panic!("no libexpat in the report: {applied:#}"));
    assert_eq!(file["package"], "libexpat1:amd64", "{file:#}");
    assert_eq!(file["version"], INSTALLED, "{file:#}");
    assert!(
        file["pids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_u64() == Some(u64::from(child.id()))),
        "the driver is not among the patched processes: {file:#}"
    );
    let o = run(suture().args([
        "revert",
        "expat-2.5.0-CVE-2024-50602",
        "--timeout",
        "60",
        "--all",
    ]));
    assert_eq!(o.status.code(), Some(0), "revert: {}", text(&o));
    settle(&lines, "status=1 error=0");
}

/// One installed library, an older version `scripts/deb-build.sh` installs from the archive,
/// patched live from a fix of a newer version of its source package.
struct Case {
    /// The binary package named to `--deb` (its version is the installed one).
    package: &'static str,
    /// Its source package.
    source: &'static str,
    installed: &'static str,
    /// The source package's newer version whose fix is taken.
    newer: &'static str,
    /// The newer source's patch (under debian/patches) given with `--patch`, or None for
    /// `--to newer` (every patch the newer version added).
    patch: Option<&'static str>,
    /// The installed library the bundle targets.
    library: &'static str,
    /// The functions the bundle replaces, sorted.
    functions: &'static [&'static str],
    /// The probe (scripts/deb-cases/NAME.c), its compiler flags and its argument.
    probe: &'static str,
    cflags: &'static [&'static str],
    probe_arg: &'static str,
    /// The probe's line before and after the fix.
    before: &'static str,
    after: &'static str,
}

/// Whether `package` is installed at `version`; if not, the tier is unavailable (a note
/// locally, a failure under `CI`).
/// `how`: how the machine gets that version.
fn installed_at(package: &str, version: &str, how: &str) -> bool {
    let out = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", package]));
    let have = String::from_utf8_lossy(&out.stdout).into_owned();
    if have == version {
        return true;
    }
    suture_testkit::tier::unavailable::<()>(
        TIER,
        &format!("{package} is installed at {have:?}, not {version} ({how})"),
    );
    false
}

/// Builds the case's fix with `suture build --deb`, checks that the installed library's
/// build-id is bound, runs the probe linked with the installed library, applies the bundle
/// to it (`--pid`: the library is mapped by system processes too), sees the fixed behaviour,
/// reverts and sees the old one.
fn live_case(case: &Case) {
    let Some(cache) = tier_dir() else { return };
    if !installed_at(
        case.package,
        case.installed,
        "scripts/deb-build.sh installs it",
    ) {
        return;
    }
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "deb-build", case.package);
    // `--prepare`: the Debian build and the binding, no fix, no bundle (scripts/test.sh ran
    // it first, so that the Debian build is not timed as part of this test).
    let o = run(Command::new(env!("CARGO_BIN_EXE_suture"))
        .env("SUTURE_DEB_CACHE", &cache)
        .args(["build", "--json", "--prepare", "--deb", case.package]));
    let prepared: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("suture build --deb --prepare --json: {e}: {}", text(&o)));
    assert_eq!(o.status.code(), Some(0), "{prepared:#}");
    assert_eq!(prepared["outcome"], "prepared", "{prepared:#}");
    assert_eq!(prepared["version"], case.installed, "{prepared:#}");
    assert!(
        prepared["fix"].is_null() && prepared["build"].is_null(),
        "{prepared:#}"
    );
    assert!(
        prepared["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with(case.library)
                && f["status"] == "reproduced"),
        "{prepared:#}"
    );
    let fix = match case.patch {
        // The newer source package, unpacked by scripts/deb-build.sh.
        Some(p) => {
            let patch = cache
                .join(format!("fixes/{}_{}", case.source, case.newer))
                .join("debian/patches")
                .join(p);
            assert!(
                patch.is_file(),
                "{} is missing: run scripts/deb-build.sh",
                patch.display()
            );
            vec!["--patch".to_string(), patch.display().to_string()]
        }
        None => vec!["--to".to_string(), case.newer.to_string()],
    };
    let o = run(Command::new(env!("CARGO_BIN_EXE_suture"))
        .env("SUTURE_DEB_CACHE", &cache)
        .args(["build", "--json", "--deb"])
        .arg(format!("{}={}", case.package, case.installed))
        .args(&fix)
        .arg("-o")
        .arg(dir.dir("out")));
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("suture build --deb --json: {e}: {}", text(&o)));
    assert_eq!(o.status.code(), Some(0), "{report:#}");
    let file = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(case.library))
        .unwrap_or_else(|| panic!("{} not matched: {report:#}", case.library));
    let status = file["status"].as_str().unwrap();
    assert!(status == "reproduced" || status == "same-load", "{file:#}");
    let bundle = report["build"]["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["target"].as_str().unwrap().ends_with(case.library))
        .unwrap_or_else(|| panic!("no bundle for {}: {report:#}", case.library));
    let mut functions = strs(&bundle["functions"]);
    functions.sort();
    assert_eq!(functions, case.functions, "{bundle:#}");
    let bundle = PathBuf::from(bundle["path"].as_str().unwrap());
    let library = file["path"].as_str().unwrap().to_string();

    let probe = dir.path().join(case.probe);
    let cc = run(Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror"])
        .args(case.cflags)
        .arg("-o")
        .arg(&probe)
        .arg(format!(
            "{}/../../scripts/deb-cases/{}.c",
            env!("CARGO_MANIFEST_DIR"),
            case.probe
        ))
        .arg(&library));
    assert!(cc.status.success(), "{}", text(&cc));
    let (child, lines) = spawn_lines(Command::new(&probe).arg(case.probe_arg));
    let pid = child.id().to_string();
    settle(&lines, case.before);
    let suture = || Command::new(env!("CARGO_BIN_EXE_suture"));
    let o = run(suture()
        .args(["apply", "--json", "--timeout", "60"])
        .arg(&bundle)
        .args(["--pid", &pid]));
    assert_eq!(o.status.code(), Some(0), "apply: {}", text(&o));
    settle(&lines, case.after);
    let applied: Value = serde_json::from_slice(&o.stdout).expect("apply --json");
    let f = &applied["files"][0];
    // The process maps the file under its merged-/usr path, dpkg lists it under /lib.
    let canon = |p: &str| std::fs::canonicalize(p).unwrap();
    assert_eq!(
        canon(f["file"].as_str().unwrap()),
        canon(&library),
        "{applied:#}"
    );
    assert_eq!(f["version"], case.installed, "{applied:#}");
    assert_eq!(
        f["package"].as_str().unwrap().split(':').next().unwrap(),
        case.package,
        "{applied:#}"
    );
    let id = applied["patch_id"].as_str().unwrap();
    let o = run(suture().args(["revert", id, "--timeout", "60", "--pid", &pid]));
    assert_eq!(o.status.code(), Some(0), "revert: {}", text(&o));
    settle(&lines, case.before);
}

/// libxml2 2.9.14+dfsg-1.3~deb12u4 (bookworm-security), installed by scripts/deb-build.sh,
/// whose build-id Debian's build reproduces; the fix of CVE-2025-9714 from deb12u6
/// (bookworm): XPath evaluation keeps the caller's recursion depth instead of resetting it.
#[test]
fn libxml2_xpath_depth_fix_from_a_newer_debian_source() {
    live_case(&Case {
        package: "libxml2",
        source: "libxml2",
        installed: "2.9.14+dfsg-1.3~deb12u4",
        newer: "2.9.14+dfsg-1.3~deb12u6",
        patch: Some("CVE-2025-9714.patch"),
        library: "/libxml2.so.2.9.14",
        // xmlXPathRunEval is static and inlined into its two callers.
        functions: &[
            "xmlXPathCompiledEvalInternal",
            "xmlXPathCtxtCompile",
            "xmlXPathEval",
            "xmlXPathEvalExpr",
        ],
        probe: "libxml2-probe",
        cflags: &["-I/usr/include/libxml2"],
        probe_arg: "xpath-depth",
        before: "count=3 depth=0",
        after: "count=3 depth=100",
    });
}

/// liblzma5 5.4.1-1+deb12u1 (bookworm), installed by scripts/deb-build.sh while the machine's
/// xz-utils stays at deb12u2 (a partial upgrade, which `--deb liblzma5` follows), patched with
/// every fix xz-utils 5.4.1-1+deb12u2 (bookworm-security) added (`--to`): GHSA-5qpq-xqfv-j9pg
/// (a failed LZMA1 decoder initialisation is cleaned up at once) and two hardenings of the
/// decoders. Debian's build reproduces the installed build-id.
#[test]
fn liblzma_update_from_a_newer_debian_source() {
    live_case(&Case {
        package: "liblzma5",
        source: "xz-utils",
        installed: "5.4.1-1+deb12u1",
        newer: "5.4.1-1+deb12u2",
        patch: None,
        library: "/liblzma.so.5.4.1",
        functions: &[
            "alone_decode",
            "lzip_decode",
            "lzma_lz_decoder_init",
            "microlzma_decode",
            "stream_decode_mt",
        ],
        probe: "liblzma-probe",
        cflags: &[],
        probe_arg: "alone-init-failure",
        before: "ret=5 live=4 after-end=0",
        after: "ret=5 live=2 after-end=0",
    });
}
