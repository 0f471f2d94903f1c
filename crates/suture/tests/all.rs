//! `suture apply --all --object PATH`, `suture status` and `suture revert --all` on several
//! real processes, and a refusal through the CLI (no permission to trace).
//!
//! The fixture is the refusals program of suture-process (`answer()` is 1 + x; the fix makes
//! it 2 + x): it prints `tick N answer=A sigs=S` every 2 ms.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use suture_testkit::cc::gcc;
use suture_testkit::{run_into_closed_pipe, spawn_lines, text, KillOnDrop, Lines, Scratch};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../suture-process/tests/fixtures/refusals"
);

fn work(name: &str) -> Scratch {
    Scratch::new(env!("CARGO_TARGET_TMPDIR"), "all", name)
}

fn suture(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_suture"))
        .args(args)
        .output()
        .unwrap()
}

/// Builds `dir/prog` and, with `suture diff -o`, `dir/answer.patch.o`.
fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let f = Path::new(FIXTURE);
    for (side, src) in [("orig", "answer.c"), ("fixed", "answer.fixed.c")] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
        std::fs::copy(f.join(src), dir.join(side).join("answer.c")).unwrap();
        gcc(
            &dir.join(side),
            &[
                "-c",
                "-O2",
                "-ffunction-sections",
                "-fdata-sections",
                "answer.c",
                "-o",
                "answer.o",
            ],
        );
    }
    std::fs::copy(f.join("main.c"), dir.join("main.c")).unwrap();
    gcc(
        dir,
        &["-O2", "main.c", "orig/answer.o", "-lpthread", "-o", "prog"],
    );
    let patch = dir.join("answer.patch.o");
    let out = suture(&[
        "diff",
        dir.join("orig/answer.o").to_str().unwrap(),
        dir.join("fixed/answer.o").to_str().unwrap(),
        "-o",
        patch.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    (dir.join("prog"), patch)
}

/// A running fixture, killed on drop.
struct Running {
    child: KillOnDrop,
    lines: Lines,
}

impl Running {
    fn start(prog: &Path) -> Running {
        let (child, lines) = spawn_lines(Command::new(prog).arg("plain"));
        let r = Running { child, lines };
        r.wait_for("answer=1");
        r
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a line printed after this call that contains `want`.
    fn wait_for(&self, want: &str) {
        self.lines.drain();
        self.lines.wait_for(want);
    }
}

/// The (pid, patch id) pairs `suture status --json` reports for `pids`.
fn live(pids: &[i32]) -> Vec<(i32, String)> {
    let out = suture(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["schema"], "suture.status/2");
    let mut found: Vec<(i32, String)> = v["patches"]
        .as_array()
        .expect("a patches array")
        .iter()
        .filter(|p| p["header"]["state"] == "live")
        .map(|p| {
            (
                p["pid"].as_i64().unwrap() as i32,
                p["header"]["patch_id"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(pid, _)| pids.contains(pid))
        .collect();
    found.sort();
    found
}

#[test]
fn apply_all_patches_every_process_of_the_object_and_revert_all_reverts_them() {
    let dir = work("apply-all");
    let (prog, patch) = build(&dir);
    let a = Running::start(&prog);
    let b = Running::start(&prog);
    // Another program that does not map `prog` must be left alone.
    let other = Running::start(&{
        let p = dir.join("other");
        std::fs::copy(&prog, &p).unwrap();
        p
    });
    let id = format!("all-{}", std::process::id());
    let out = suture(&[
        "apply",
        patch.to_str().unwrap(),
        "--all",
        "--object",
        prog.to_str().unwrap(),
        "--id",
        &id,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["schema"], "suture.process/2");
    let mut applied: Vec<i32> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|p| assert_eq!(p["applied"], true, "{p}"))
        .map(|p| p["pid"].as_i64().unwrap() as i32)
        .collect();
    applied.sort();
    let mut both = vec![a.pid(), b.pid()];
    both.sort();
    assert_eq!(applied, both, "{}", text(&out));
    a.wait_for("answer=2 sigs=0");
    b.wait_for("answer=2 sigs=0");
    other.wait_for("answer=1");

    let pids = [a.pid(), b.pid(), other.pid()];
    assert_eq!(
        live(&pids),
        both.iter().map(|&p| (p, id.clone())).collect::<Vec<_>>()
    );

    let out = suture(&["revert", &id, "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for p in &both {
        assert!(
            stdout.contains(&format!("reverted in process {p}")),
            "{stdout}"
        );
    }
    a.wait_for("answer=1 sigs=0");
    b.wait_for("answer=1 sigs=0");
    assert!(live(&pids).is_empty());
    // Their retired regions stay mapped, but nothing is live to revert any more.
    let out = suture(&["revert", &id, "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not live in any process"),
        "{}",
        text(&out)
    );
}

/// `suture apply --all ... | head -0`: the reader is gone before the first process is
/// reported. Every process is still patched (a closed pipe drops output, never work), and the
/// exit status is the apply's own. Regression: the first write used to end suture at once.
#[test]
fn apply_all_into_a_closed_pipe_still_patches_every_process() {
    let dir = work("closed-pipe");
    let (prog, patch) = build(&dir);
    let a = Running::start(&prog);
    let b = Running::start(&prog);
    let id = format!("pipe-{}", std::process::id());
    let out = run_into_closed_pipe(
        Command::new(env!("CARGO_BIN_EXE_suture"))
            .args(["apply", patch.to_str().unwrap(), "--all", "--object"])
            .arg(&prog)
            .args(["--id", &id]),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut both = vec![a.pid(), b.pid()];
    both.sort();
    assert_eq!(
        live(&both),
        both.iter().map(|&p| (p, id.clone())).collect::<Vec<_>>()
    );
    a.wait_for("answer=2 sigs=0");
    b.wait_for("answer=2 sigs=0");
    let out = suture(&["revert", &id, "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(live(&both).is_empty());
}

/// suture running as an unprivileged user may not trace a root process: exit 1, a message
/// naming the reason, and the target carries on untouched.
#[test]
fn apply_without_permission_is_refused() {
    let dir = work("no-permission");
    let (prog, patch) = build(&dir);
    let t = Running::start(&prog);
    // The unprivileged user must be able to reach the suture binary and the patch.
    let mut p = patch.clone();
    while let Some(parent) = p.parent() {
        let meta = std::fs::metadata(parent).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert!(
            meta.permissions().mode() & 0o001 != 0,
            "{} is not searchable by other users",
            parent.display()
        );
        p = parent.to_path_buf();
    }
    let pid = t.pid().to_string();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_suture"))
        .args(["apply", patch.to_str().unwrap(), "--pid", &pid])
        .output()
        .expect("setpriv runs");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("No permission to trace process {pid}"))
            && stderr.contains("untouched"),
        "{}",
        text(&out)
    );
    t.wait_for("answer=1 sigs=0");
    assert!(live(&[t.pid()]).is_empty());
}

/// `status` over every process says which processes could not be read (their patches would be
/// missing from the list): a root process is unreadable to an unprivileged user, and readable
/// to root.
#[test]
fn status_says_when_processes_could_not_be_read() {
    let dir = work("unreadable");
    let (prog, _) = build(&dir);
    let t = Running::start(&prog);
    let unreadable_pids = |out: &Output| -> Vec<i64> {
        assert_eq!(out.status.code(), Some(0), "{}", text(out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["unreadable"]
            .as_array()
            .expect("an unreadable array")
            .iter()
            .map(|u| u["pid"].as_i64().unwrap())
            .collect()
    };
    let out = suture(&["status", "--json"]);
    assert!(
        !unreadable_pids(&out).contains(&(t.pid() as i64)),
        "{}",
        text(&out)
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_suture"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        unreadable_pids(&out).contains(&(t.pid() as i64)),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not be read"),
        "{}",
        text(&out)
    );
}

/// `revert` takes the patch object that was applied: its id is the file stem, as `apply`
/// records by default.
#[test]
fn revert_by_the_applied_patch_file() {
    let dir = work("revert-by-file");
    let (prog, patch) = build(&dir);
    let t = Running::start(&prog);
    let pid = t.pid().to_string();
    let p = patch.to_str().unwrap();
    let out = suture(&["apply", p, "--pid", &pid, "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    t.wait_for("answer=2 sigs=0");
    let out = suture(&["revert", p, "--pid", &pid, "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("answer.patch: reverted"),
        "{}",
        text(&out)
    );
    t.wait_for("answer=1 sigs=0");
    assert!(live(&[t.pid()]).is_empty());
    // Reverting again fails for that process, and the JSON says the target was untouched.
    let out = suture(&["revert", p, "--pid", &pid, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["schema"], "suture.process/2");
    assert_eq!(v["processes"][0]["reverted"], false, "{v:#}");
    assert_eq!(v["processes"][0]["outcome"], "untouched", "{v:#}");
}
