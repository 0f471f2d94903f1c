//! `suture build` end to end on the fixture projects in `crates/suture-build/tests/projects`
//! (plain make, autotools + libtool, CMake): build, diff → bundles, apply the bundles to the
//! running program and check its output changes, revert; and every refusal the builder owes
//! (data, structure layout, assembly, build file), the "not compiled" verdict, build-id
//! binding of stripped deployed copies, and apply refusing a binary of another build.
//!
//! Each test copies its project into its own directory under the target dir, so tests run in
//! parallel; every spawned program is killed by a guard.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use suture_testkit::{run, spawn_lines, text, KillOnDrop, Lines};

fn projects() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../suture-build/tests/projects")
}

fn work(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("build")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sh(dir: &Path, cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies a fixture project to `<work>/src`.
fn project(kind: &str, name: &str) -> (PathBuf, PathBuf) {
    let w = work(name);
    let src = w.join("src");
    sh(
        &w,
        &format!(
            "cp -r '{}' '{}'",
            projects().join(kind).display(),
            src.display()
        ),
    );
    (w, src)
}

/// A unified diff replacing `from` by `to` in each file (paths relative to `src`).
fn make_diff(w: &Path, src: &Path, edits: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (i, (rel, from, to)) in edits.iter().enumerate() {
        let orig = std::fs::read_to_string(src.join(rel)).unwrap_or_default();
        let new = if from.is_empty() {
            to.to_string()
        } else {
            assert!(orig.contains(from), "{rel} has no {from:?}");
            orig.replace(from, to)
        };
        let a = w.join(format!("edit{i}.orig"));
        let b = w.join(format!("edit{i}.new"));
        std::fs::write(&a, &orig).unwrap();
        std::fs::write(&b, &new).unwrap();
        let old_label = if orig.is_empty() {
            "/dev/null".to_string()
        } else {
            format!("a/{rel}")
        };
        let out = Command::new("diff")
            .args(["-u", "--label", &old_label, "--label", &format!("b/{rel}")])
            .arg(&a)
            .arg(&b)
            .output()
            .unwrap();
        text += &String::from_utf8_lossy(&out.stdout);
    }
    let p = w.join("fix.patch");
    std::fs::write(&p, text).unwrap();
    p
}

fn suture<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_suture")).args(args))
}

/// `suture build --json`; returns the exit code and the report.
fn build(
    src: &Path,
    diff: &Path,
    out: &Path,
    build_cmd: &str,
    extra: &[&str],
) -> (i32, serde_json::Value, Output) {
    let mut args: Vec<String> = vec![
        "build".into(),
        "--source".into(),
        src.display().to_string(),
        "--diff".into(),
        diff.display().to_string(),
        "--build-cmd".into(),
        build_cmd.into(),
        "-o".into(),
        out.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    // Records of the tree's builds are kept per test (they outlast one run by design).
    let o = Command::new(env!("CARGO_BIN_EXE_suture"))
        .args(&args)
        .env("SUTURE_CACHE_DIR", out.parent().unwrap().join("cache"))
        .output()
        .unwrap();
    let code = o.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (code, v, o)
}

/// A running fixture program (the kit's kill-on-drop child and its stdout lines).
struct Running {
    child: KillOnDrop,
    lines: Lines,
}

impl Running {
    fn spawn(exe: &Path, env: &[(&str, &Path)]) -> Running {
        let mut cmd = Command::new(exe);
        cmd.stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, lines) = spawn_lines(&mut cmd);
        Running { child, lines }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Waits (within the kit's bound) for a line printed after this call that contains `want`.
    fn wait_for(&self, want: &str) {
        self.lines.drain();
        self.lines.wait_for(want);
    }
}

/// `--timeout` of applies and reverts that must succeed: the kit's bound, so that a loaded
/// machine never turns a briefly busy function into a failure.
const T: &str = "60";

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
}

const UTIL_FIX: (&str, &str, &str) = (
    "util.c",
    "return pad(n > max_len ? max_len : n);",
    "return pad(n >= max_len ? max_len - 1 : n);",
);
const VERSION_FIX: (&str, &str, &str) = ("version.c", "return 1;", "return 2;");
const LIB_FIX: (&str, &str, &str) = ("greet.c", "return 2 * x;", "return 3 * x;");
const BEFORE: &str = "limit=8 scale=20 answer=42 v=1";
const AFTER: &str = "limit=7 scale=30 answer=42 v=2";

fn bundle_of<'v>(report: &'v serde_json::Value, file: &str) -> &'v serde_json::Value {
    report["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            let p = b["path"].as_str().unwrap();
            p.ends_with(&format!("/{file}.suture")) || p.contains(&format!("/{file}."))
        })
        .unwrap_or_else(|| panic!("no bundle for {file}: {report:#}"))
}

/// Builds, applies the program's and the library's bundles to `exe` running, reverts.
fn round_trip(src: &Path, w: &Path, build_cmd: &str, exe: &Path, env: &[(&str, &Path)]) {
    let util_before = std::fs::read(src.join("util.c")).unwrap();
    let diff = make_diff(w, src, &[UTIL_FIX, VERSION_FIX, LIB_FIX]);
    let out = w.join("out");
    let (code, report, o) = build(src, &diff, &out, build_cmd, &[]);
    assert_eq!(code, 0, "{}", text(&o));
    assert_eq!(report["outcome"], "written");
    let prog = bundle_of(&report, "prog");
    // Two units merged into one patch object for the program.
    assert_eq!(prog["units"].as_array().unwrap().len(), 2, "{prog:#}");
    let lib = bundle_of(&report, "libgreet.so")["path"]
        .as_str()
        .unwrap()
        .to_string();
    // The source tree is as it was.
    assert_eq!(std::fs::read(src.join("util.c")).unwrap(), util_before);

    let p = Running::spawn(exe, env);
    p.wait_for(BEFORE);
    let pid = p.pid();
    ok(&suture(&[
        "apply",
        out.join("prog.suture").to_str().unwrap(),
        "--pid",
        &pid,
        "--timeout",
        T,
    ]));
    ok(&suture(&[
        "apply",
        &lib,
        "--pid",
        &pid,
        "--id",
        "lib",
        "--timeout",
        T,
    ]));
    p.wait_for(AFTER);
    ok(&suture(&["revert", "lib", "--pid", &pid, "--timeout", T]));
    ok(&suture(&["revert", "fix", "--pid", &pid, "--timeout", T]));
    p.wait_for(BEFORE);
}

#[test]
fn make_project_round_trip() {
    let (w, src) = project("make", "make-round-trip");
    round_trip(&src, &w, "make", &src.join("prog"), &[]);
}

/// Debian's build flags (`dpkg-buildflags`: hardening, `-ffile-prefix-map`, fortify, PIE).
#[test]
fn debian_build_flags_round_trip() {
    let (w, src) = project("make", "debian-flags");
    round_trip(
        &src,
        &w,
        "make CFLAGS=\"$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)\" \
         LDFLAGS=\"$(dpkg-buildflags --get LDFLAGS)\"",
        &src.join("prog"),
        &[],
    );
}

#[test]
fn autotools_project_round_trip() {
    let (w, src) = project("autotools", "autotools-round-trip");
    sh(&src, "autoreconf -fi");
    let libs = src.join(".libs");
    round_trip(
        &src,
        &w,
        "./configure CFLAGS='-O2 -g' && make",
        &src.join(".libs/prog"),
        &[("LD_LIBRARY_PATH", &libs)],
    );
}

#[test]
fn cmake_project_round_trip() {
    let (w, src) = project("cmake", "cmake-round-trip");
    round_trip(
        &src,
        &w,
        "cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build",
        &src.join("build/prog"),
        &[],
    );
}

/// Runs `suture build` on the make project with one edit; returns (exit code, report).
fn make_case(name: &str, edit: (&str, &str, &str)) -> (i32, serde_json::Value, Output) {
    let (w, src) = project("make", name);
    let diff = make_diff(&w, &src, &[edit]);
    build(&src, &diff, &w.join("out"), "make", &[])
}

fn refusal_mentions(report: &serde_json::Value, file: &str, words: &[&str]) {
    let r = report["refusals"].as_array().unwrap();
    assert!(
        r.iter().any(|x| x["file"] == file
            && words.iter().all(|w| {
                x["reason"].as_str().unwrap().contains(w) || x["symbol"].as_str().unwrap() == *w
            })),
        "no refusal of {file} with {words:?}: {report:#}"
    );
    assert!(report["bundles"].as_array().unwrap().is_empty());
}

/// A header change rebuilds every unit that includes it; only the units whose code changed
/// are patched.
#[test]
fn header_change_patches_the_units_using_it() {
    let (code, report, o) = make_case("header", ("util.h", "\treturn n;\n", "\treturn n - 1;\n"));
    assert_eq!(code, 0, "{}", text(&o));
    let f = &report["files"][0];
    assert_eq!(f["verdict"], "patched", "{report:#}");
    let mut rebuilt: Vec<&str> = f["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    rebuilt.sort_unstable();
    assert_eq!(rebuilt, ["main.c", "util.c", "version.c"], "{report:#}");
    let b = bundle_of(&report, "prog");
    assert_eq!(b["functions"], serde_json::json!(["clamp_len"]), "{b:#}");
    assert_eq!(b["units"], serde_json::json!(["util.c"]), "{b:#}");
}

#[test]
fn data_change_is_refused_naming_the_symbol() {
    let (code, report, o) = make_case(
        "refuse-data",
        (
            "util.c",
            "the_counter = { 0, 100 };",
            "the_counter = { 0, 200 };",
        ),
    );
    assert_eq!(code, 2, "{}", text(&o));
    refusal_mentions(&report, "util.c", &["the_counter"]);
}

/// A project built with link-time optimisation: other units may hold inlined copies of the
/// changed function, so suture refuses instead of writing a bundle.
#[test]
fn lto_build_is_refused() {
    let (w, src) = project("make", "refuse-lto");
    let diff = make_diff(
        &w,
        &src,
        &[("util.c", "the_counter.hits++;", "the_counter.hits += 2;")],
    );
    let (code, report, o) = build(
        &src,
        &diff,
        &w.join("out"),
        "make CFLAGS='-O2 -g -flto' LDFLAGS=-flto",
        &[],
    );
    assert_eq!(code, 2, "{}", text(&o));
    refusal_mentions(&report, "util.c", &["-flto"]);
}

#[test]
fn header_struct_change_is_refused() {
    let (code, report, o) = make_case(
        "refuse-struct",
        ("util.h", "\tint limit;\n", "\tint limit;\n\tint misses;\n"),
    );
    assert_eq!(code, 2, "{}", text(&o));
    refusal_mentions(&report, "util.h", &["struct counter"]);
}

#[test]
fn assembly_change_is_refused() {
    let (code, report, o) = make_case("refuse-asm", ("answer.S", "$42", "$43"));
    assert_eq!(code, 2, "{}", text(&o));
    refusal_mentions(&report, "answer.S", &["assembly"]);
}

#[test]
fn build_file_change_is_refused() {
    let (code, report, o) = make_case("refuse-build-file", ("Makefile", "-O2 -g", "-O1 -g"));
    assert_eq!(code, 2, "{}", text(&o));
    refusal_mentions(&report, "Makefile", &["build file"]);
}

#[test]
fn disabled_code_is_reported_not_compiled() {
    let (code, report, o) = make_case("not-compiled", ("util.c", "return x * 3;", "return x * 4;"));
    assert_eq!(code, 3, "{}", text(&o));
    assert_eq!(report["outcome"], "no-change");
    assert_eq!(report["files"][0]["verdict"], "no-change", "{report:#}");
    // A header only a disabled feature includes may even change a structure.
    let (code, report, o) = make_case(
        "not-compiled-header",
        ("extra.h", "\tint calls;\n", "\tint calls;\n\tint misses;\n"),
    );
    assert_eq!(code, 3, "{}", text(&o));
    assert_eq!(report["files"][0]["verdict"], "not-compiled", "{report:#}");
    // A file the build never compiles.
    let (code, report, o) = make_case(
        "never-compiled",
        ("extra.c", "", "int f(void) { return 1; }\n"),
    );
    assert_eq!(code, 3, "{}", text(&o));
    assert_eq!(report["files"][0]["verdict"], "not-compiled", "{report:#}");
}

/// Every file of a tree, with its contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(snapshot(&p));
        } else {
            v.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    v.sort();
    v
}

/// A fix that does not compile is an error showing the compiler's message; neither that nor a
/// successful run changes a byte of the tree (the build's own outputs aside).
#[test]
fn source_tree_is_never_modified() {
    let (w, src) = project("make", "untouched");
    let good = w.join("good.patch");
    std::fs::copy(make_diff(&w, &src, &[UTIL_FIX]), &good).unwrap();
    let (code, _, o) = build(&src, &good, &w.join("out"), "make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
    let before = snapshot(&src);
    let bad = w.join("bad.patch");
    std::fs::copy(
        make_diff(
            &w,
            &src,
            &[("util.c", "the_counter.hits++;", "the_counter.hits++ oops;")],
        ),
        &bad,
    )
    .unwrap();
    let (code, _, o) = build(&src, &bad, &w.join("out"), "make", &[]);
    assert_eq!(code, 1, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not compile") && err.contains("oops"),
        "{err}"
    );
    assert!(snapshot(&src) == before, "the failed run changed the tree");
    let (code, _, o) = build(&src, &good, &w.join("out"), "make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
    assert!(snapshot(&src) == before, "the second run changed the tree");
}

/// On a tree built without suture, make compiles nothing: suture says so instead of
/// pretending the diff touches nothing.
#[test]
fn already_built_tree_without_records_is_explained() {
    let (w, src) = project("make", "prebuilt");
    sh(&src, "make");
    let diff = make_diff(&w, &src, &[UTIL_FIX]);
    let (code, _, o) = build(&src, &diff, &w.join("out"), "make", &[]);
    assert_eq!(code, 1, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("compiled nothing") && err.contains("make clean"),
        "{err}"
    );
    // After a clean, the records exist and a second run needs no rebuild.
    let (code, _, o) = build(&src, &diff, &w.join("out"), "make clean && make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
    let (code, _, o) = build(&src, &diff, &w.join("out"), "make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
}

/// A fix that logs to `stderr`, which the program never used before (the usual hardening
/// fix: report the bad input, then clamp it). The PIE executable holds no copy of `stderr`
/// (nothing in it referred to it), so the patch must read glibc's own, more than 2 GiB
/// away: `suture build` compiles the units it rebuilds with
/// `-mno-direct-extern-access`, which reads extern data through a GOT slot the patch's
/// loader fills. Regression: the build said yes and apply said "stderr ... is out of reach".
#[test]
fn fix_using_stderr_for_the_first_time_applies() {
    let (w, src) = project("make", "stderr-first");
    let main = std::fs::read_to_string(src.join("main.c")).unwrap();
    assert!(
        !main.contains("stderr"),
        "the program must not use stderr before the fix"
    );
    let fix = (
        "util.c",
        "\treturn pad(n > max_len ? max_len : n);",
        "\tif (n > max_len)\n\t\tfprintf(stderr, \"clamp_len: %d clamped\\n\", n);\n\
         \treturn pad(n >= max_len ? max_len - 1 : n);",
    );
    let include = (
        "util.c",
        "#include \"util.h\"\n",
        "#include <stdio.h>\n#include \"util.h\"\n",
    );
    // Both edits in one file: apply them in sequence to one diff.
    let orig = std::fs::read_to_string(src.join("util.c")).unwrap();
    let fixed = orig.replace(include.1, include.2).replace(fix.1, fix.2);
    assert_ne!(orig, fixed);
    let diff = make_diff(&w, &src, &[("util.c", &orig, &fixed)]);
    let out = w.join("out");
    let (code, _, o) = build(&src, &diff, &out, "make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
    // The deployed program really has no copy of stderr (no symbol, no copy relocation).
    let exe = std::fs::read(src.join("prog")).unwrap();
    let syms = suture_process::symbols::ElfSymbols::parse("prog", &exe).unwrap();
    assert!(
        syms.global("stderr").is_none(),
        "the executable defines stderr"
    );

    let mut cmd = Command::new(src.join("prog"));
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let (mut child, lines) = spawn_lines(&mut cmd);
    let err = Lines::of(child.0.stderr.take().unwrap());
    lines.wait_for(BEFORE);
    let pid = child.id().to_string();
    let o = suture(&[
        "apply",
        out.join("prog.suture").to_str().unwrap(),
        "--pid",
        &pid,
        "--timeout",
        T,
    ]);
    ok(&o);
    err.wait_for("clamp_len: 12 clamped");
    lines.drain();
    lines.wait_for("limit=7 scale=20 answer=42 v=1");
    ok(&suture(&["revert", "fix", "--pid", &pid, "--timeout", T]));
    lines.drain();
    lines.wait_for(BEFORE);
}

/// The same fix built by a compiler without a flag for GOT access to external data (here gcc
/// behind a `gcc-11` that rejects the flag, as gcc 11 does): the patch would read `stderr`
/// PC-relatively from a copy the executable does not have, so the build refuses, naming the
/// symbol, the reason and the flag, instead of writing a bundle apply would refuse.
#[test]
fn fix_using_stderr_without_the_flag_is_refused_at_build_time() {
    let (w, src) = project("make", "stderr-old-gcc");
    let bin = w.join("old-gcc");
    std::fs::create_dir_all(&bin).unwrap();
    // It runs the real gcc by its absolute path (through PATH, suture's wrapper would record
    // that compile as the unit's).
    let gcc = Command::new("sh")
        .args(["-c", "command -v gcc"])
        .output()
        .unwrap();
    let gcc = String::from_utf8(gcc.stdout).unwrap().trim().to_string();
    assert!(gcc.starts_with('/'), "gcc not found: {gcc:?}");
    std::fs::write(
        bin.join("gcc-11"),
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in \
             -mno-direct-extern-access|-fno-direct-access-external-data) \
             echo \"gcc-11: error: unrecognized command-line option '$a'\" >&2; exit 1;; \
             esac; done\nexec {gcc} \"$@\"\n"
        ),
    )
    .unwrap();
    sh(&w, "chmod 755 old-gcc/gcc-11");
    let orig = std::fs::read_to_string(src.join("util.c")).unwrap();
    let fixed = orig
        .replace(
            "#include \"util.h\"\n",
            "#include <stdio.h>\n#include \"util.h\"\n",
        )
        .replace(
            "\treturn pad(n > max_len ? max_len : n);",
            "\tif (n > max_len)\n\t\tfprintf(stderr, \"clamp_len: %d clamped\\n\", n);\n\
             \treturn pad(n > max_len ? max_len : n);",
        );
    let diff = make_diff(&w, &src, &[("util.c", &orig, &fixed)]);
    let out = w.join("out");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new(env!("CARGO_BIN_EXE_suture"))
        .args(["build", "--source"])
        .arg(&src)
        .arg("--diff")
        .arg(&diff)
        .args(["--build-cmd", "make CC=gcc-11", "-o"])
        .arg(&out)
        .arg("--json")
        .env("PATH", path)
        .env("SUTURE_CACHE_DIR", w.join("cache"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    refusal_mentions(
        &report,
        "util.c",
        &["stderr", "no copy", "-mno-direct-extern-access"],
    );
    let symbols: Vec<&str> = report["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["symbol"].as_str().unwrap())
        .collect();
    assert_eq!(symbols, ["stderr"], "{report:#}");
}

#[test]
fn build_failure_shows_the_log_tail() {
    let (w, src) = project("make", "build-fails");
    let diff = make_diff(&w, &src, &[UTIL_FIX]);
    let (code, _, o) = build(
        &src,
        &diff,
        &w.join("out"),
        "echo compiling; echo broken-toolchain >&2; exit 7",
        &[],
    );
    assert_eq!(code, 1, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the build failed") && err.contains("broken-toolchain"),
        "{err}"
    );
}

/// A stripped deployed copy of the same build binds (addresses from the rebuild, its twin),
/// and the bundle applies to the stripped program; a different build is refused at build
/// time (naming what differs) and at apply time (by build-id).
#[test]
fn targets_bind_by_build_id() {
    let (w, src) = project("make", "targets");
    let deployed = w.join("deployed");
    std::fs::create_dir_all(&deployed).unwrap();
    sh(&src, "make");
    sh(
        &w,
        "strip -o deployed/prog src/prog && strip -o deployed/libgreet.so src/libgreet.so",
    );
    sh(&src, "make clean");
    let diff = make_diff(&w, &src, &[UTIL_FIX, VERSION_FIX]);
    let out = w.join("out");
    let target = deployed.join("prog");
    let (code, report, o) = build(
        &src,
        &diff,
        &out,
        "make",
        &["--target", target.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{}", text(&o));
    let b = bundle_of(&report, "prog");
    assert_eq!(b["target"], target.to_str().unwrap());
    assert_eq!(b["twin"]["kind"], "rebuild");
    assert!(b["symbols_verified"].as_u64().unwrap() >= 2, "{b:#}");

    // `--all` finds the process by build-id (unique to this test's build: paths are in it).
    let p = Running::spawn(&target, &[]);
    p.wait_for(BEFORE);
    let o = suture(&[
        "apply",
        out.join("prog.suture").to_str().unwrap(),
        "--all",
        "--timeout",
        T,
    ]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("live in process {}", p.pid())),
        "{}",
        text(&o)
    );
    p.wait_for("limit=7 scale=20 answer=42 v=2");
    // Revert by the bundle file: its manifest names the patch id.
    ok(&suture(&[
        "revert",
        out.join("prog.suture").to_str().unwrap(),
        "--pid",
        &p.pid(),
        "--timeout",
        T,
    ]));
    p.wait_for(BEFORE);

    // A damaged bundle is refused before anything else happens.
    let mut damaged = std::fs::read(out.join("prog.suture")).unwrap();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x20;
    std::fs::write(w.join("damaged.suture"), &damaged).unwrap();
    let o = suture(&[
        "apply",
        w.join("damaged.suture").to_str().unwrap(),
        "--pid",
        &p.pid(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("integrity check failed"),
        "{}",
        text(&o)
    );

    // Same build-id, other bytes: apply re-checks the recorded digests and refuses.
    let tampered = w.join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    let info = suture_build::elfinfo::ElfInfo::read(&src.join("prog")).unwrap();
    let sym = suture_build::elfinfo::lookup(&info.symbols, "the_counter", Some("util.c")).unwrap();
    let at =
        info.bytes_at(sym.value, sym.size).unwrap().as_ptr() as usize - info.data.as_ptr() as usize;
    let mut data = info.data.clone();
    data[at + 4] ^= 1; // the_counter.limit, 100 -> 101: the program's output does not change
    std::fs::write(tampered.join("prog"), &data).unwrap();
    sh(
        &w,
        "chmod 755 tampered/prog && cp src/libgreet.so tampered/",
    );
    let t = Running::spawn(&tampered.join("prog"), &[]);
    t.wait_for(BEFORE);
    let o = suture(&[
        "apply",
        out.join("prog.suture").to_str().unwrap(),
        "--pid",
        &t.pid(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not its bytes") && err.contains("the_counter"),
        "{err}"
    );
    t.wait_for(BEFORE);

    // Another build of the same source (other flags): different build-id and code.
    let other = w.join("other");
    sh(
        &w,
        &format!("cp -r '{}' other", projects().join("make").display()),
    );
    sh(
        &other,
        "make CFLAGS='-O1 -g' && mkdir deployed && strip -o deployed/prog prog",
    );
    let stripped = other.join("deployed/prog");
    let (code, _, o) = build(
        &src,
        &diff,
        &w.join("out2"),
        "make",
        &["--target", stripped.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not match") && err.contains("build-id") && err.contains("stripped"),
        "{err}"
    );
    // With its debug file, the functions are compared and the differing ones named.
    let dbg = w.join("debug");
    let id = {
        let r = Command::new("readelf")
            .args(["-n"])
            .arg(other.join("prog"))
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&r.stdout).to_string();
        t.lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
            .unwrap()
    };
    let dfile = dbg
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(dfile.parent().unwrap()).unwrap();
    sh(
        &other,
        &format!("objcopy --only-keep-debug prog '{}'", dfile.display()),
    );
    let (code, _, o) = build(
        &src,
        &diff,
        &w.join("out3"),
        "make",
        &[
            "--target",
            stripped.to_str().unwrap(),
            "--debug-dir",
            dbg.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("clamp_len") && err.contains("differ"), "{err}");

    // The bundle for the first build cannot be applied to the other build's program.
    let q = Running::spawn(&other.join("prog"), &[]);
    q.wait_for(BEFORE);
    let o = suture(&[
        "apply",
        out.join("prog.suture").to_str().unwrap(),
        "--pid",
        &q.pid(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("built for build-id") && err.contains("nothing was changed"),
        "{err}"
    );
    q.wait_for(BEFORE);
}

/// A fix that only inserts lines above a function passing `__LINE__` to its logger: the
/// function's code differs only in that line number, so `suture build` leaves it out, says so,
/// and writes nothing (exit 3); `--include-line-shifts` keeps it and writes a bundle.
#[test]
fn a_moved_line_number_is_left_out_unless_asked() {
    let w = work("line-shift");
    let src = w.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("Makefile"),
        "CFLAGS ?= -O2 -g\nprog: log.o\n\t$(CC) $(CFLAGS) log.o -o prog\nlog.o: log.c\n\t$(CC) $(CFLAGS) -c log.c -o log.o\n",
    )
    .unwrap();
    std::fs::write(
        src.join("log.c"),
        "#include <stdio.h>\n\
         static void note(const char *what, int line) { fprintf(stderr, \"%s at %d\\n\", what, line); }\n\
         int check(int n) {\n\
         \tif (n > 64) {\n\
         \t\tnote(\"too big\", __LINE__);\n\
         \t\treturn -1;\n\
         \t}\n\
         \treturn n;\n\
         }\n\
         int main(int argc, char **argv) { (void)argv; return check(argc) < 0; }\n",
    )
    .unwrap();
    let diff = make_diff(
        &w,
        &src,
        &[(
            "log.c",
            "int check(int n) {\n",
            "/* check() rejects sizes above 64:\n * the caller logs and drops the request. */\nint check(int n) {\n",
        )],
    );
    let (code, report, o) = build(&src, &diff, &w.join("out"), "make", &[]);
    assert_eq!(code, 3, "{}", text(&o));
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("check")
            && notes.contains("line")
            && notes.contains("--include-line-shifts"),
        "{report:#}"
    );
    assert_eq!(report["units"][0]["line_shifts"][0], "check", "{report:#}");
    assert!(report["bundles"].as_array().unwrap().is_empty());

    let (code, report, o) = build(
        &src,
        &diff,
        &w.join("out-kept"),
        "make",
        &["--include-line-shifts"],
    );
    assert_eq!(code, 0, "{}", text(&o));
    let b = &report["bundles"][0];
    assert!(
        b["functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "check"),
        "{report:#}"
    );
}

/// A fix in two patches (`--diff` twice, applied in order like a series): one bundle holds
/// both changes, and the default patch id is the first patch's name.
#[test]
fn several_diffs_make_one_fix() {
    let (w, src) = project("make", "two-diffs");
    let first = make_diff(&w, &src, &[LIB_FIX]);
    let first = {
        let p = w.join("first.patch");
        std::fs::rename(&first, &p).unwrap();
        p
    };
    let second = make_diff(&w, &src, &[UTIL_FIX]);
    let (code, report, o) = build(
        &src,
        &first,
        &w.join("out"),
        "make",
        &["--diff", second.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{}", text(&o));
    let all: Vec<String> = report["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["functions"].as_array().unwrap().iter())
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert!(all.iter().any(|f| f == "clamp_len"), "{report:#}");
    assert!(
        all.len() >= 2,
        "both patches are in the bundles: {report:#}"
    );
    for b in report["bundles"].as_array().unwrap() {
        let bytes = std::fs::read(b["path"].as_str().unwrap()).unwrap();
        let bundle = suture_bundle::decode(&bytes).unwrap();
        assert_eq!(bundle.manifest.patch_id, "first", "{report:#}");
    }
}

/// A build that copies a source into a build directory before compiling it (the compiled file
/// is the copy): the fix to the original is applied to the copy, with a note, and the patch
/// goes live in the running program.
#[test]
fn a_build_that_compiles_a_copy_gets_the_fix() {
    let w = work("copied-source");
    let src = w.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("Makefile"),
        "CFLAGS ?= -O2 -g\n\
         prog: build/calc.c main.c\n\
         \t$(CC) $(CFLAGS) -c build/calc.c -o build/calc.o\n\
         \t$(CC) $(CFLAGS) -c main.c -o main.o\n\
         \t$(CC) $(CFLAGS) build/calc.o main.o -o prog\n\
         build/calc.c: calc.c\n\
         \tmkdir -p build && cp calc.c build/calc.c\n",
    )
    .unwrap();
    std::fs::write(
        src.join("calc.c"),
        "int limit(int n) { return n > 8 ? 8 : n; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("main.c"),
        "#include <stdio.h>\n#include <unistd.h>\nint limit(int);\n\
         int main(void) { setvbuf(stdout, 0, _IOLBF, 0);\n\
         for (;;) { printf(\"limit=%d\\n\", limit(100)); usleep(2000); } }\n",
    )
    .unwrap();
    let diff = make_diff(&w, &src, &[("calc.c", "n > 8 ? 8 : n", "n > 7 ? 7 : n")]);
    let (code, report, o) = build(&src, &diff, &w.join("out"), "make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
    assert!(
        report["notes"].to_string().contains("copy"),
        "the copy is named: {report:#}"
    );
    let b = bundle_of(&report, "prog");
    assert_eq!(b["functions"], serde_json::json!(["limit"]), "{b:#}");

    let prog = Running::spawn(&src.join("prog"), &[]);
    prog.wait_for("limit=8");
    let out = suture(&[
        "apply",
        b["path"].as_str().unwrap(),
        "--pid",
        &prog.pid(),
        "--timeout",
        T,
    ]);
    ok(&out);
    prog.wait_for("limit=7");
}

/// A CMakeLists.txt change is refused where the build is a CMake build, and only reported as
/// not part of the build where the build never used CMake (the make project carries none, so a
/// new CMake file next to it is such a case).
#[test]
fn cmake_files_count_only_where_the_build_uses_cmake() {
    let (w, src) = project("cmake", "cmake-file-used");
    let diff = make_diff(
        &w,
        &src,
        &[(
            "CMakeLists.txt",
            "add_library(greet SHARED greet.c)",
            "add_library(greet SHARED greet.c)\nadd_compile_definitions(EXTRA=1)",
        )],
    );
    let (code, report, o) = build(
        &src,
        &diff,
        &w.join("out"),
        "cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build",
        &[],
    );
    assert_eq!(code, 2, "{}", text(&o));
    refusal_mentions(&report, "CMakeLists.txt", &["build file"]);

    let (w, src) = project("make", "cmake-file-unused");
    std::fs::write(src.join("CMakeLists.txt"), "project(unused C)\n").unwrap();
    let diff = make_diff(
        &w,
        &src,
        &[
            (
                "CMakeLists.txt",
                "project(unused C)\n",
                "project(unused C)\nadd_compile_definitions(EXTRA=1)\n",
            ),
            UTIL_FIX,
        ],
    );
    let (code, report, o) = build(&src, &diff, &w.join("out"), "make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
    let f = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == "CMakeLists.txt")
        .unwrap();
    assert_eq!(f["verdict"], "not-compiled", "{report:#}");
    assert!(
        f["detail"].as_str().unwrap().contains("does not use CMake"),
        "{report:#}"
    );
}

/// `suture apply BUNDLE --pid PID --json`, which must succeed: how many frames it moved.
fn moved_frames_of_apply(bundle: &Path, pid: &str) -> usize {
    let o = suture(&[
        "apply",
        bundle.to_str().unwrap(),
        "--pid",
        pid,
        "--timeout",
        T,
        "--json",
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["processes"][0]["result"]["moved_frames"]
        .as_array()
        .unwrap_or_else(|| panic!("{v:#}"))
        .len()
}

/// A fix inlined into a connection loop that never returns: the build says the function is
/// usually on a stack and that its waiting frames can move; apply moves the waiting thread of
/// an open connection to the fix and revert moves it back, through the CLI and a bundle.
#[test]
fn a_loop_that_never_returns_is_reported_and_its_waiting_frames_move() {
    let w = work("osr");
    let src = w.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("server.c"),
        include_str!("../../suture-process/tests/fixtures/osr/conn.c"),
    )
    .unwrap();
    std::fs::write(
        src.join("Makefile"),
        "CFLAGS = -O2 -g\nserver: server.c\n\t$(CC) $(CFLAGS) -o server server.c -lpthread\n",
    )
    .unwrap();
    let diff = make_diff(
        &w,
        &src,
        &[(
            "server.c",
            "    (void)n;\n    return 1;\n#endif",
            "    return n > 200 ? -1 : 2;\n#endif",
        )],
    );
    let out = w.join("out");
    let (code, report, o) = build(&src, &diff, &out, "make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
    let osr = &report["units"][0]["osr"][0];
    assert_eq!(osr["function"], "connection", "{report:#}");
    assert!(
        osr["on_stack"]
            .as_str()
            .is_some_and(|s| s.contains("a loop around a call to read")),
        "{report:#}"
    );
    assert_eq!(osr["sites"], 4, "{report:#}");
    assert!(
        report["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("connection is usually on a stack")),
        "{report:#}"
    );
    let bundle = out.join("server.suture");

    let server = Running::spawn(&src.join("server"), &[]);
    let port: u16 = server.lines.wait_for("port ")[5..].trim().parse().unwrap();
    let mut client = suture_testkit::net::LineClient::connect(port);
    let mut ask = |what: &[u8]| client.ask(what);
    assert_eq!(ask(b"hello"), "v=1 served=1");
    let pid = server.pid();
    assert_eq!(moved_frames_of_apply(&bundle, &pid), 1);
    assert_eq!(ask(b"hello"), "v=2 served=2");
    let o = suture(&[
        "revert",
        bundle.to_str().unwrap(),
        "--pid",
        &pid,
        "--timeout",
        T,
    ]);
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 waiting frame(s) moved"),
        "{}",
        text(&o)
    );
    assert_eq!(ask(&[b'x'; 250]), "v=1 served=3");
}

/// The builder compiles units with GOT access to extern data, so a loop that reads a global of
/// another unit is not byte for byte the running loop: the on-stack replacement maps are
/// computed on the unit compiled exactly as built, and the waiting frame of `main` moves.
#[test]
fn a_loop_reading_another_units_global_moves_too() {
    use std::io::Write;
    let w = work("osr-extern");
    let src = w.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("flags.c"), "int quiet;\n").unwrap();
    std::fs::write(
        src.join("main.c"),
        include_str!("../../suture-process/tests/fixtures/osr/extern.c"),
    )
    .unwrap();
    std::fs::write(
        src.join("Makefile"),
        "CFLAGS = -O2 -g\nprog: main.c flags.c\n\t$(CC) $(CFLAGS) -o prog main.c flags.c\n",
    )
    .unwrap();
    let diff = make_diff(
        &w,
        &src,
        &[("main.c", "return n > 3;", "return n > 3 ? 2 : 0;")],
    );
    let out = w.join("out");
    let (code, report, o) = build(&src, &diff, &out, "make", &[]);
    assert_eq!(code, 0, "{}", text(&o));
    let osr = &report["units"][0]["osr"][0];
    assert_eq!(osr["function"], "main", "{report:#}");
    assert!(osr["sites"].as_u64().unwrap() >= 1, "{report:#}");

    let mut cmd = Command::new(src.join("prog"));
    cmd.stdin(Stdio::piped());
    let (mut child, lines) = spawn_lines(&mut cmd);
    lines.wait_for("ready");
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    lines.wait_for("v=1");
    let pid = child.id().to_string();
    let bundle = out.join("prog.suture");
    assert_eq!(moved_frames_of_apply(&bundle, &pid), 1);
    stdin.write_all(b"hello\n").unwrap();
    lines.wait_for("v=2");
}
