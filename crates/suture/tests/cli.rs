//! The `suture` binary's contract: exit codes, JSON output, when `-o` writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use suture_testkit::cc::run_cc;
use suture_testkit::{run_into_closed_pipe, text, Scratch};

fn work(name: &str) -> Scratch {
    Scratch::new(env!("CARGO_TARGET_TMPDIR"), "cli", name)
}

/// Compiles `src` as `unit.c` in `dir/<tag>/` and returns the object.
fn object(dir: &Path, tag: &str, src: &str) -> PathBuf {
    let d = dir.join(tag);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("unit.c"), src).unwrap();
    run_cc(
        "gcc",
        &d,
        &[
            "-c",
            "-O2",
            "-ffunction-sections",
            "-fdata-sections",
            "unit.c",
            "-o",
            "unit.o",
        ],
    );
    d.join("unit.o")
}

fn suture(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_suture"))
        .args(args)
        .output()
        .unwrap()
}

fn diff(a: &Path, b: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["diff".as_ref(), a.as_os_str(), b.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    suture(&args)
}

const BASE: &str = "int limit = 10;\nint check(int n) { return n < limit; }\n\
                    int twice(int n) { return 2 * n; }\n";

#[test]
fn patchable_change_exits_0_and_writes_the_patch() {
    let d = work("patchable");
    let a = object(&d, "a", BASE);
    let b = object(&d, "b", &BASE.replace("n < limit", "n >= 0 && n < limit"));
    let out_path = d.join("patch.o");
    let out = diff(&a, &b, &["--json", "-o", out_path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["schema"], "suture.diff/1");
    assert_eq!(v["status"], "patchable");
    let changed: Vec<&str> = v["changed_functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["check"]);
    let refs: Vec<&str> = v["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["limit"]);
    let patch = std::fs::read(&out_path).expect("patch object written");
    assert_eq!(&patch[..4], b"\x7fELF");
}

#[test]
fn no_change_exits_3_and_writes_nothing() {
    let d = work("nochange");
    let a = object(&d, "a", BASE);
    let b = object(&d, "b", &format!("/* a comment */\n{BASE}"));
    let out_path = d.join("patch.o");
    let out = diff(&a, &b, &["-o", out_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no functional change"));
    assert!(!out_path.exists());
}

#[test]
fn data_change_exits_2_with_the_symbol_and_a_reason() {
    let d = work("unsupported");
    let a = object(&d, "a", BASE);
    let b = object(&d, "b", &BASE.replace("limit = 10", "limit = 20"));
    let out_path = d.join("patch.o");
    let out = diff(&a, &b, &["--json", "-o", out_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "unsupported");
    assert_eq!(v["unsupported"][0]["symbol"], "limit");
    assert_eq!(v["unsupported"][0]["kind"], "data-value");
    assert!(v["unsupported"][0]["reason"].as_str().unwrap().len() > 20);
    assert!(!out_path.exists());
}

#[test]
fn errors_exit_1_with_a_message() {
    let d = work("errors");
    let a = object(&d, "a", BASE);
    let junk = d.join("junk.o");
    std::fs::write(&junk, b"this is not an object").unwrap();
    let out = diff(&a, &junk, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not an ELF file") && err.contains("junk.o"),
        "{err}"
    );

    let out = diff(&a, &d.join("missing.o"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    // An executable is not a relocatable object.
    let exe = d.join("a.out");
    std::fs::write(d.join("main.c"), "int main(void) { return 0; }\n").unwrap();
    assert!(Command::new("gcc")
        .arg(d.join("main.c"))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap()
        .success());
    let out = diff(&exe, &a, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a relocatable object"));
}

#[test]
fn usage_errors_exit_1_not_2() {
    let out = suture(&["diff".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let out = suture(&["frobnicate".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let out = suture(&["diff".as_ref(), "--help".as_ref()]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Exit status") && help.contains("--json"),
        "{help}"
    );
}

/// Every subcommand's `--help` states its exit codes.
#[test]
fn every_subcommand_help_states_its_exit_status() {
    for cmd in [
        &["diff"][..],
        &["apply"],
        &["revert"],
        &["status"],
        &["build"],
        &["demo"],
        &["plan"],
        &["kernel", "load"],
        &["kernel", "unload"],
        &["kernel", "status"],
    ] {
        let mut args: Vec<&std::ffi::OsStr> = cmd.iter().map(|a| a.as_ref()).collect();
        args.push("--help".as_ref());
        let out = suture(&args);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Exit status:\n  0  "), "{cmd:?}: {help}");
    }
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let d = work("epipe");
    // 3,000 changed functions: far more JSON than a pipe buffers.
    let src = |k: i32| -> String {
        (0..3000)
            .map(|i| format!("int f{i}(int x) {{ return x * {} + {i}; }}\n", k + i))
            .collect()
    };
    let a = object(&d, "a", &src(1));
    let b = object(&d, "b", &src(2));
    let out = run_into_closed_pipe(
        Command::new(env!("CARGO_BIN_EXE_suture"))
            .arg("diff")
            .arg(&a)
            .arg(&b)
            .arg("--json"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn status_json_into_a_closed_pipe_ends_quietly() {
    // `suture status --json | head -0`: the reader is gone before suture writes anything.
    let out =
        run_into_closed_pipe(Command::new(env!("CARGO_BIN_EXE_suture")).args(["status", "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Under `--json`, a failure of the whole command (not of one process) is a JSON object on
/// stdout too (`suture.error/1`), with the exit status 1 and the message on stderr.
#[test]
fn whole_command_failures_are_json_under_json() {
    let dir = work("json-errors");
    let missing = dir.join("missing.o");
    let m = missing.as_os_str();
    let (pid, json) = ("--pid".as_ref(), "--json".as_ref());
    let cases: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        ("apply", vec!["apply".as_ref(), m, pid, "1".as_ref(), json]),
        ("diff", vec!["diff".as_ref(), m, m, json]),
    ];
    for (command, args) in cases {
        let out = suture(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{command}: {stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{command}: stdout is not JSON ({e}): {stdout}"));
        assert_eq!(v["schema"], "suture.error/1", "{command}: {v}");
        assert_eq!(v["command"], command, "{v}");
        assert_eq!(v["ok"], false, "{v}");
        assert!(v["error"].as_str().unwrap().contains("missing.o"), "{v}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("suture: error:"),
            "{command}"
        );
    }
}
