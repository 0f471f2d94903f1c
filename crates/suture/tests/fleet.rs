//! Fleet rollout end to end (docs/fleet.md): `suture repo` writes a signed TUF repository, a
//! real HTTP server on loopback serves it, and `suture agent --once` passes on simulated hosts
//! (each its own state directory and its own running target, selected with `--pid`) apply the
//! bundle to the running program (its output changes), revert it after a withdrawal, and
//! refuse tampered targets, tampered metadata, an expired timestamp and a replayed older
//! version with a clear error and nothing applied.
//!
//! The fixture is the make project of `crates/suture-build/tests/projects/make`, built once per
//! test binary with a fix that turns its `v=1` into `v=2`.

#![cfg(feature = "fleet")]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use suture_testkit::{run, spawn_lines, text, KillOnDrop, Lines, Scratch};

const BEFORE: &str = "v=1";
const AFTER: &str = "v=2";

fn suture<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_suture")).args(args))
}

fn ok(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn sh(dir: &Path, cmd: &str) {
    let o = run(Command::new("sh").arg("-c").arg(cmd).current_dir(dir));
    assert!(o.status.success(), "{cmd}: {}", text(&o));
}

/// The fixture program and its bundle, built once: (program, bundle).
fn fixture() -> &'static (PathBuf, PathBuf) {
    static F: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleet");
        // Fixtures of earlier runs whose test process is gone.
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("fixture-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let w = base.join(format!("fixture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&w);
        std::fs::create_dir_all(&w).unwrap();
        let projects =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../suture-build/tests/projects/make");
        sh(&w, &format!("cp -r '{}' src", projects.display()));
        let src = w.join("src");
        let orig = std::fs::read_to_string(src.join("version.c")).unwrap();
        std::fs::write(w.join("a.c"), &orig).unwrap();
        (src.join("prog"), build_fix(&w, "fix", "return 2;"))
    })
}

/// `suture build --id ID` of the fixture tree in `w` (its `src/`, the original `version.c`
/// in `a.c`) with `return 1;` changed to `to`; the bundle.
fn build_fix(w: &Path, id: &str, to: &str) -> PathBuf {
    let orig = std::fs::read_to_string(w.join("a.c")).unwrap();
    std::fs::write(w.join(format!("{id}.c")), orig.replace("return 1;", to)).unwrap();
    let d = run(Command::new("diff")
        .args([
            "-u",
            "--label",
            "a/version.c",
            "--label",
            "b/version.c",
            "a.c",
        ])
        .arg(format!("{id}.c"))
        .current_dir(w));
    let patch = w.join(format!("{id}.patch"));
    std::fs::write(&patch, &d.stdout).unwrap();
    let out = w.join(format!("out-{id}"));
    let o = run(Command::new(env!("CARGO_BIN_EXE_suture"))
        .args(["build", "--id", id, "--source"])
        .arg(w.join("src"))
        .arg("--diff")
        .arg(&patch)
        .arg("-o")
        .arg(&out)
        .env("SUTURE_CACHE_DIR", w.join("cache")));
    assert!(o.status.success(), "suture build: {}", text(&o));
    out.join("prog.suture")
}

/// A second bundle for the fixture program: patch `fix-3`, `v=1` → `v=3`, built from the
/// same tree as [`fixture`] (so for the same build-id).
fn fixture_v3() -> &'static PathBuf {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let w = fixture().0.parent().unwrap().parent().unwrap();
        build_fix(w, "fix-3", "return 3;")
    })
}

/// A running fixture program.
struct Target {
    child: KillOnDrop,
    lines: Lines,
}

impl Target {
    fn start() -> Target {
        let mut cmd = Command::new(&fixture().0);
        cmd.stdin(Stdio::null());
        let (child, lines) = spawn_lines(&mut cmd);
        let t = Target { child, lines };
        t.lines.wait_for(BEFORE);
        t
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Waits for a line printed after this call that contains `want`.
    fn prints(&self, want: &str) {
        self.lines.drain();
        self.lines.wait_for(want);
    }

    /// The patch ids live in the process, read by `suture status`.
    fn live(&self) -> Vec<String> {
        let v = ok(&suture(&["status", "--pid", &self.pid(), "--json"]));
        v["patches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["header"]["state"] == "live")
            .map(|p| p["header"]["patch_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Nothing was applied: no live patch, and the program still prints the old output.
    fn untouched(&self) {
        assert!(self.live().is_empty(), "{:?}", self.live());
        self.prints(BEFORE);
    }
}

/// A static file server on 127.0.0.1 (ephemeral port) serving `root`, on a thread that lives
/// as long as the test binary. GET only; 404 for anything missing or outside `root`.
fn serve(root: &Path) -> String {
    serve_at(root, "127.0.0.1:0")
}

/// [`serve`] on the address `at`.
fn serve_at(root: &Path, at: &str) -> String {
    let listener = TcpListener::bind(at).unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let root = root.clone();
            std::thread::spawn(move || {
                let _ = answer(&root, conn);
            });
        }
    });
    url
}

fn answer(root: &Path, mut conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let rel = path.trim_start_matches('/');
    let file = (!rel.split('/').any(|c| c == ".." || c.is_empty()))
        .then(|| std::fs::read(root.join(rel)).ok())
        .flatten();
    match file {
        Some(body) => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            conn.write_all(&body)?;
        }
        None => conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    conn.flush()
}

/// A repository with its keys in a scratch directory, served over HTTP.
struct Repo {
    dir: PathBuf,
    keys: PathBuf,
    root: PathBuf,
    url: String,
}

impl Repo {
    fn new(s: &Scratch) -> Repo {
        let dir = s.path().join("repo");
        let keys = s.path().join("keys");
        let v = ok(&suture(&[
            "repo".as_ref(),
            "init".as_ref(),
            dir.as_os_str(),
            "--keys".as_ref(),
            keys.as_os_str(),
            "--json".as_ref(),
        ]));
        let root = PathBuf::from(v["root"].as_str().unwrap());
        assert_eq!(root, dir.join("metadata/1.root.json"));
        let url = serve(&dir);
        Repo {
            dir,
            keys,
            root,
            url,
        }
    }

    /// `suture repo <cmd> DIR <args> --keys KEYDIR --json`.
    fn sign(&self, cmd: &str, args: &[&str]) -> serde_json::Value {
        let mut a: Vec<String> = vec!["repo".into(), cmd.into(), self.dir.display().to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        a.extend([
            "--keys".into(),
            self.keys.display().to_string(),
            "--json".into(),
        ]);
        ok(&suture(&a))
    }

    fn add(&self) -> serde_json::Value {
        self.sign("add", &[fixture().1.to_str().unwrap()])
    }
}

/// A simulated host: its state directory and the one process it considers.
struct Host {
    state: PathBuf,
}

impl Host {
    fn new(s: &Scratch, name: &str) -> Host {
        Host {
            state: s.path().join(name),
        }
    }

    fn pass_output(&self, repo: &Repo, target: &Target) -> Output {
        self.pass_output_with(repo, target, &[])
    }

    fn pass_output_with(&self, repo: &Repo, target: &Target, extra: &[&str]) -> Output {
        let pid = target.pid();
        let mut args = vec![
            "agent",
            "--repo",
            &repo.url,
            "--trust",
            repo.root.to_str().unwrap(),
            "--state",
            self.state.to_str().unwrap(),
            "--pid",
            &pid,
            "--timeout",
            "60",
            "--once",
            "--json",
        ];
        args.extend_from_slice(extra);
        suture(&args)
    }

    /// One pass that must succeed; its report.
    fn pass(&self, repo: &Repo, target: &Target) -> serde_json::Value {
        self.pass_with(repo, target, &[])
    }

    fn pass_with(&self, repo: &Repo, target: &Target, extra: &[&str]) -> serde_json::Value {
        let v = ok(&self.pass_output_with(repo, target, extra));
        assert_eq!(v["schema"], "suture.agent/1", "{v:#}");
        assert_eq!(v["ok"], true, "{v:#}");
        assert_eq!(v["metadata_fetched"], true, "{v:#}");
        v
    }

    /// One pass that must be refused; its error (the `suture.error/1` message and causes).
    fn refused(&self, repo: &Repo, target: &Target) -> String {
        let o = self.pass_output(repo, target);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("error JSON");
        assert_eq!(v["schema"], "suture.error/1", "{v:#}");
        assert_eq!(v["command"], "agent");
        format!("{}: {}", v["error"].as_str().unwrap(), v["causes"])
    }

    fn status(&self) -> serde_json::Value {
        ok(&suture(&[
            "agent",
            "status",
            "--state",
            self.state.to_str().unwrap(),
            "--json",
        ]))
    }
}

fn pids(list: &serde_json::Value) -> Vec<i64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["pid"].as_i64().unwrap())
        .collect()
}

#[test]
fn two_hosts_apply_then_revert_a_withdrawn_patch() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "rollout");
    let repo = Repo::new(&s);
    let (a, b) = (Target::start(), Target::start());
    let (host_a, host_b) = (Host::new(&s, "host-a"), Host::new(&s, "host-b"));

    // An empty repository: nothing to do.
    let v = host_a.pass(&repo, &a);
    assert_eq!(v["targets"], serde_json::json!([]), "{v:#}");

    let added = repo.add();
    let t = &added["changed"][0];
    assert_eq!(t["meta"]["patch_id"], "fix", "{added:#}");
    assert_eq!(t["meta"]["channel"], "stable");
    assert_eq!(t["meta"]["kind"], "process");
    let bundle = suture_bundle_build_id(&fixture().1);
    assert_eq!(t["meta"]["build_ids"], serde_json::json!([bundle]));

    // Host A patches its process; host B's is untouched until host B's agent runs.
    let v = host_a.pass(&repo, &a);
    assert_eq!(pids(&v["applied"]), [i64::from(a.child.id())], "{v:#}");
    assert_eq!(v["targets"][0]["action"], "applied", "{v:#}");
    a.prints(AFTER);
    assert_eq!(a.live(), ["fix"]);
    b.prints(BEFORE);
    let v = host_b.pass(&repo, &b);
    assert_eq!(pids(&v["applied"]), [i64::from(b.child.id())], "{v:#}");
    b.prints(AFTER);

    // Another pass changes nothing; the state says what is live.
    let v = host_a.pass(&repo, &a);
    assert_eq!(v["applied"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["targets"][0]["action"], "live", "{v:#}");
    let st = host_a.status();
    assert_eq!(st["patches"][0]["patch_id"], "fix", "{st:#}");
    assert_eq!(st["patches"][0]["live"], true, "{st:#}");
    assert_eq!(st["patches"][0]["process"]["pid"], a.child.id());

    // A process started on host A after the patch went live is patched by the next pass.
    let c = Target::start();
    let v = host_a.pass_with(&repo, &a, &["--pid", &c.pid()]);
    assert_eq!(pids(&v["applied"]), [i64::from(c.child.id())], "{v:#}");
    c.prints(AFTER);

    // Withdrawn: each host's next pass reverts it, in every process it patched.
    let w = repo.sign("withdraw", &["fix"]);
    assert_eq!(w["changed"].as_array().unwrap().len(), 1, "{w:#}");
    let v = host_a.pass(&repo, &a);
    let mut reverted = pids(&v["reverted"]);
    reverted.sort_unstable();
    let mut want = [i64::from(a.child.id()), i64::from(c.child.id())];
    want.sort_unstable();
    assert_eq!(reverted, want, "{v:#}");
    a.prints(BEFORE);
    c.prints(BEFORE);
    assert!(a.live().is_empty());
    b.prints(AFTER);
    let v = host_b.pass(&repo, &b);
    assert_eq!(pids(&v["reverted"]), [i64::from(b.child.id())], "{v:#}");
    b.prints(BEFORE);
    let st = host_a.status();
    assert_eq!(st["patches"], serde_json::json!([]), "{st:#}");
}

/// The build-id a bundle is for (its manifest).
fn suture_bundle_build_id(bundle: &Path) -> String {
    let b = suture_bundle::decode(&std::fs::read(bundle).unwrap()).unwrap();
    b.manifest.target.build_id
}

/// The one target file of the repository.
fn target_file(repo: &Repo) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo.dir.join("targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

#[test]
fn tampered_target_and_metadata_are_refused() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "tampered");
    let repo = Repo::new(&s);
    let p = Target::start();
    let host = Host::new(&s, "host");
    repo.add();

    // One byte of the bundle changed on the server (same length).
    let file = target_file(&repo);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&file, &bad).unwrap();
    let e = host.refused(&repo, &p);
    assert!(
        e.contains("did not verify") && e.contains("nothing was applied"),
        "{e}"
    );
    assert!(e.contains("Hash mismatch"), "{e}");
    p.untouched();
    std::fs::write(&file, &good).unwrap();

    // targets.json edited without its key: another channel's name for the patch.
    let meta = repo.dir.join("metadata/2.targets.json");
    let good_meta = std::fs::read_to_string(&meta).unwrap();
    assert!(good_meta.contains("\"fix\""));
    std::fs::write(&meta, good_meta.replace("\"fix\"", "\"fiy\"")).unwrap();
    let e = host.refused(&repo, &p);
    assert!(e.contains("could not be fetched and verified"), "{e}");
    assert!(
        e.contains("Hash mismatch") && e.contains("2.targets.json"),
        "{e}"
    );
    p.untouched();
    let st = host.status();
    assert!(
        st["last_error"].as_str().unwrap().contains("Hash mismatch"),
        "{st:#}"
    );
    std::fs::write(&meta, good_meta).unwrap();

    // Restored: the same host applies it.
    let v = host.pass(&repo, &p);
    assert_eq!(pids(&v["applied"]), [i64::from(p.child.id())], "{v:#}");
    p.prints(AFTER);
}

#[test]
fn expired_and_replayed_metadata_are_refused() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "expired");
    let repo = Repo::new(&s);
    let p = Target::start();
    let host = Host::new(&s, "host");

    // A timestamp that expired a minute ago, over a repository holding the patch.
    repo.add();
    let expired = repo.sign("refresh", &["--timestamp-expires-in=-60"]);
    assert_eq!(expired["timestamp_version"], 3, "{expired:#}");
    let e = host.refused(&repo, &p);
    assert!(e.contains("timestamp metadata is expired"), "{e}");
    p.untouched();

    // Rollback: the host trusts version 5 (the patch withdrawn); the server then replays the
    // genuine, still unexpired version 4 that listed the patch.
    let fresh = repo.sign("refresh", &[]);
    assert_eq!(fresh["timestamp_version"], 4, "{fresh:#}");
    let old = std::fs::read(repo.dir.join("metadata/timestamp.json")).unwrap();
    repo.sign("withdraw", &["fix"]);
    let v = host.pass(&repo, &p);
    assert_eq!(v["metadata"]["timestamp"], 5, "{v:#}");
    assert_eq!(v["targets"], serde_json::json!([]), "{v:#}");
    std::fs::write(repo.dir.join("metadata/timestamp.json"), old).unwrap();
    let e = host.refused(&repo, &p);
    assert!(
        e.contains(
            "Found version 4 of timestamp metadata when we had previously fetched version 5"
        ),
        "{e}"
    );
    p.untouched();
    // The trusted version stays the newer one.
    let st = host.status();
    assert_eq!(st["metadata"]["timestamp"], 5, "{st:#}");
}

#[test]
fn repo_commands_explain_their_errors() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "errors");
    let dir = s.path().join("repo");
    // Keys inside the repository would be published.
    let o = suture(&[
        "repo".as_ref(),
        "init".as_ref(),
        dir.as_os_str(),
        "--keys".as_ref(),
        dir.join("keys").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("inside the repository"), "{}", text(&o));
    let repo = Repo::new(&s);
    // Twice in one directory.
    let o = suture(&[
        "repo".as_ref(),
        "init".as_ref(),
        repo.dir.as_os_str(),
        "--keys".as_ref(),
        s.path().join("keys2").as_os_str(),
    ]);
    assert!(
        text(&o).contains("already holds a repository"),
        "{}",
        text(&o)
    );
    // Not a bundle.
    let junk = s.write("junk.bin", "hello");
    let o = suture(&[
        "repo".as_ref(),
        "add".as_ref(),
        repo.dir.as_os_str(),
        junk.as_os_str(),
        "--keys".as_ref(),
        repo.keys.as_os_str(),
    ]);
    assert!(text(&o).contains("neither a patch bundle"), "{}", text(&o));
    // Withdrawing an unknown patch.
    let o = suture(&[
        "repo".as_ref(),
        "withdraw".as_ref(),
        repo.dir.as_os_str(),
        "nope".as_ref(),
        "--keys".as_ref(),
        repo.keys.as_os_str(),
    ]);
    assert!(
        text(&o).contains("no target of patch \"nope\""),
        "{}",
        text(&o)
    );
    // Adding the same bundle twice.
    repo.add();
    let o = suture(&[
        "repo".as_ref(),
        "add".as_ref(),
        repo.dir.as_os_str(),
        fixture().1.as_os_str(),
        "--keys".as_ref(),
        repo.keys.as_os_str(),
    ]);
    assert!(
        text(&o).contains("already in the repository"),
        "{}",
        text(&o)
    );
    // Keys are private.
    use std::os::unix::fs::PermissionsExt;
    for role in ["root", "targets", "snapshot", "timestamp"] {
        let m = std::fs::metadata(repo.keys.join(format!("{role}.pk8"))).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{role}");
    }
    // An agent without a repository says what it needs.
    let o = suture(&["agent", "--once"]);
    assert!(text(&o).contains("--repo URL and --trust"), "{}", text(&o));
}

#[test]
fn waves_channels_and_metrics() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "waves");
    let repo = Repo::new(&s);
    let (a, b) = (Target::start(), Target::start());
    let (host_a, host_b) = (Host::new(&s, "host-a"), Host::new(&s, "host-b"));
    // Host A draws a seed in the first 10 % of the range, host B near its end.
    std::fs::create_dir_all(&host_a.state).unwrap();
    std::fs::create_dir_all(&host_b.state).unwrap();
    std::fs::write(host_a.state.join("seed"), "100\n").unwrap();
    std::fs::write(host_b.state.join("seed"), "9000\n").unwrap();
    let added = repo.sign(
        "add",
        &[
            fixture().1.to_str().unwrap(),
            "--wave",
            "10@0",
            "--wave",
            "100@1d",
        ],
    );
    let waves = &added["changed"][0]["meta"]["waves"];
    assert_eq!(waves[0]["seeds"], serde_json::json!([0, 1000]), "{added:#}");
    assert_eq!(
        waves[1]["seeds"],
        serde_json::json!([1000, 10000]),
        "{added:#}"
    );

    // Following another channel: nothing for this host.
    let v = host_a.pass_with(&repo, &a, &["--channel", "canary"]);
    assert_eq!(v["targets"][0]["action"], "other-channel", "{v:#}");
    assert_eq!(v["applied"], serde_json::json!([]), "{v:#}");

    // The first wave has started: host A applies, with its metrics written.
    let metrics = s.path().join("host-a.prom");
    let v = host_a.pass_with(&repo, &a, &["--metrics", metrics.to_str().unwrap()]);
    assert_eq!(v["seed"], 100, "{v:#}");
    assert_eq!(pids(&v["applied"]), [i64::from(a.child.id())], "{v:#}");
    a.prints(AFTER);
    let m = std::fs::read_to_string(&metrics).unwrap();
    for want in [
        "suture_agent_last_pass_ok 1\n",
        "suture_agent_repository_verified 1\n",
        "suture_agent_seed 100\n",
        "suture_agent_patched_processes{patch_id=\"fix\"} 1\n",
        "suture_agent_metadata_version{role=\"targets\"} 2\n",
        "suture_agent_last_pass_processes{result=\"applied\"} 1\n",
    ] {
        assert!(m.contains(want), "{want} not in:\n{m}");
    }

    // Host B's wave starts in a day: it waits, untouched.
    let v = host_b.pass(&repo, &b);
    assert_eq!(v["targets"][0]["action"], "waiting", "{v:#}");
    assert!(
        v["targets"][0]["wave_start"].as_u64().unwrap()
            > v["started_at"].as_u64().unwrap() + 80_000
    );
    assert_eq!(v["applied"], serde_json::json!([]), "{v:#}");
    b.untouched();

    // A refused pass shows in the metrics too.
    repo.sign("refresh", &["--timestamp-expires-in=-60"]);
    let o = host_a.pass_output_with(&repo, &a, &["--metrics", metrics.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(m.contains("suture_agent_repository_verified 0\n"), "{m}");
    assert!(
        m.contains("suture_agent_patched_processes{patch_id=\"fix\"} 1\n"),
        "{m}"
    );
}

/// The shipped systemd units (the agent, and the early-boot restore of kernel patches) pass
/// `systemd-analyze verify` (with their ExecStart pointed at the binary under test), where
/// systemd-analyze is installed.
#[test]
fn systemd_units_verify() {
    let Ok(o) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: no systemd-analyze");
        return;
    };
    assert!(o.status.success());
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "unit");
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist");
    let mut paths = Vec::new();
    for (name, exec) in [
        (
            "suture-agent.service",
            "ExecStart=/usr/local/bin/suture agent --repo",
        ),
        (
            "suture-kernel-restore.service",
            "ExecStart=/usr/local/bin/suture agent --boot",
        ),
    ] {
        let unit = std::fs::read_to_string(dist.join(name)).unwrap();
        assert!(unit.contains(exec), "{name}");
        let unit = unit.replace("/usr/local/bin/suture", env!("CARGO_BIN_EXE_suture"));
        paths.push(s.write(name, unit));
    }
    // The restore unit is early-boot: no default dependencies, before sysinit.target and the
    // agent.
    let restore = std::fs::read_to_string(&paths[1]).unwrap();
    for want in [
        "DefaultDependencies=no",
        "Before=sysinit.target",
        "suture-agent.service",
    ] {
        assert!(restore.contains(want), "{want}");
    }
    let o = run(Command::new("systemd-analyze").arg("verify").args(&paths));
    assert!(o.status.success(), "{}", text(&o));
    assert!(o.stderr.is_empty() && o.stdout.is_empty(), "{}", text(&o));
}

/// An agent killed during its apply (at a point before the switch and at one during it)
/// leaves the target untouched or fully patched and its state knowing the process; the next
/// pass finishes the job, and a withdrawal reverts it.
#[test]
fn agent_killed_mid_apply_recovers() {
    use std::os::unix::process::ExitStatusExt;
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "killed");
    let repo = Repo::new(&s);
    repo.add();
    let mut hosts = Vec::new();
    for point in ["apply:written", "commit:running"] {
        let p = Target::start();
        let host = Host::new(&s, &point.replace(':', "-"));
        let pid = p.pid();
        let o = run(Command::new(env!("CARGO_BIN_EXE_suture"))
            .args(["agent", "--repo", &repo.url, "--trust"])
            .arg(&repo.root)
            .arg("--state")
            .arg(&host.state)
            .args(["--pid", &pid, "--timeout", "60", "--once", "--json"])
            .env("SUTURE_FAILPOINT", point));
        assert_eq!(o.status.signal(), Some(9), "{point}: {}", text(&o));
        // Untouched or fully patched, never between (suture-process's invariant)...
        p.prints(if p.live().is_empty() { BEFORE } else { AFTER });
        // ... and the agent's state lists the process it was working on.
        let st = host.status();
        assert_eq!(
            st["patches"][0]["process"]["pid"],
            p.child.id(),
            "{point}: {st:#}"
        );
        // The next pass finishes the job.
        let v = host.pass(&repo, &p);
        assert_eq!(v["targets"][0]["pids"][0], p.child.id(), "{point}: {v:#}");
        p.prints(AFTER);
        let st = host.status();
        assert_eq!(
            st["patches"].as_array().unwrap().len(),
            1,
            "{point}: {st:#}"
        );
        assert_eq!(st["patches"][0]["live"], true, "{point}: {st:#}");
        hosts.push((p, host));
    }
    repo.sign("withdraw", &["fix"]);
    for (p, host) in &hosts {
        let v = host.pass(&repo, p);
        assert_eq!(pids(&v["reverted"]), [i64::from(p.child.id())], "{v:#}");
        p.prints(BEFORE);
    }
}

/// Key rotation: agents trusting root v1 follow a targets-key rotation (root v2) and a
/// root-key rotation (root v3) through the root chain, keep applying and reverting, and refuse
/// a root version that the current root key did not sign.
#[test]
fn key_rotation_is_followed() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "rotation");
    let repo = Repo::new(&s);
    let p = Target::start();
    let host = Host::new(&s, "host");
    repo.add();
    let v = host.pass(&repo, &p);
    assert_eq!(pids(&v["applied"]), [i64::from(p.child.id())], "{v:#}");
    p.prints(AFTER);

    let r = repo.sign("rotate-key", &["targets"]);
    assert_eq!(r["root_version"], 2, "{r:#}");
    assert!(Path::new(r["retired_key"].as_str().unwrap()).is_file());
    let v = host.pass(&repo, &p);
    assert_eq!(v["metadata"]["root"], 2, "{v:#}");
    assert_eq!(v["targets"][0]["action"], "live", "{v:#}");

    let r = repo.sign("rotate-key", &["root"]);
    assert_eq!(r["root_version"], 3, "{r:#}");
    let v = host.pass(&repo, &p);
    assert_eq!(v["metadata"]["root"], 3, "{v:#}");

    // A root v4 with the current content but a signature the root key never made.
    let v3 = std::fs::read_to_string(repo.dir.join("metadata/3.root.json")).unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&v3).unwrap();
    forged["signed"]["version"] = 4.into();
    let forged_path = repo.dir.join("metadata/4.root.json");
    std::fs::write(&forged_path, serde_json::to_vec_pretty(&forged).unwrap()).unwrap();
    let e = host.refused(&repo, &p);
    assert!(
        e.contains("Failed to verify root metadata: Signature threshold of 1 not met"),
        "{e}"
    );
    std::fs::remove_file(&forged_path).unwrap();

    // Withdrawn under the rotated keys: reverted.
    repo.sign("withdraw", &["fix"]);
    let v = host.pass(&repo, &p);
    assert_eq!(pids(&v["reverted"]), [i64::from(p.child.id())], "{v:#}");
    p.prints(BEFORE);
}

/// The health gate: a check that fails reverts the patch in that process, reports it, and
/// holds the target back on the host; a check that passes (with the process's pid in its
/// environment) keeps it.
#[test]
fn failed_health_check_reverts_and_holds() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "health");
    let repo = Repo::new(&s);
    let p = Target::start();
    let host = Host::new(&s, "host");
    repo.add();
    let o = host.pass_output_with(
        &repo,
        &p,
        &["--health-settle", "0", "--health-check", "exit 3"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failed"][0]["stage"], "health", "{v:#}");
    let e = v["failed"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("failed (exit status: 3)") && e.contains("reverted"),
        "{e}"
    );
    p.untouched();
    // Held back: the next pass does not apply it again.
    let v = host.pass_with(&repo, &p, &["--health-settle", "0"]);
    assert_eq!(v["targets"][0]["action"], "held", "{v:#}");
    p.untouched();

    // Another host whose check sees the patched process passes.
    let q = Target::start();
    let other = Host::new(&s, "other");
    let check = format!(
        "test \"$SUTURE_PID\" = {} && test \"$SUTURE_PATCH_ID\" = fix",
        q.pid()
    );
    let v = other.pass_with(
        &repo,
        &q,
        &["--health-settle", "0", "--health-check", &check],
    );
    assert_eq!(pids(&v["applied"]), [i64::from(q.child.id())], "{v:#}");
    q.prints(AFTER);
}

/// A paused rollout is applied nowhere new but kept where it is live; resumed, it goes on.
#[test]
fn paused_rollout_goes_nowhere_new() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "pause");
    let repo = Repo::new(&s);
    let (a, b) = (Target::start(), Target::start());
    let (host_a, host_b) = (Host::new(&s, "host-a"), Host::new(&s, "host-b"));
    repo.add();
    host_a.pass(&repo, &a);
    a.prints(AFTER);
    let r = repo.sign("pause", &["fix"]);
    assert_eq!(r["changed"][0]["meta"]["paused"], true, "{r:#}");
    let v = host_b.pass(&repo, &b);
    assert_eq!(v["targets"][0]["action"], "paused", "{v:#}");
    b.untouched();
    let v = host_a.pass(&repo, &a);
    assert_eq!(v["targets"][0]["action"], "live", "{v:#}");
    assert_eq!(v["reverted"], serde_json::json!([]), "{v:#}");
    a.prints(AFTER);
    repo.sign("resume", &["fix"]);
    let v = host_b.pass(&repo, &b);
    assert_eq!(pids(&v["applied"]), [i64::from(b.child.id())], "{v:#}");
    b.prints(AFTER);
}

/// The agent as a daemon with `extra` options, a patch live in the repository and a program
/// started only after the daemon's first full pass (the next one is an hour away): the program
/// gets patched by a pass for new processes. Returns that pass's report and the agent's
/// status, or `None` when the agent says it watches new processes otherwise than `mode`
/// (with that status, for the caller to decide).
fn daemon_patches_a_later_process(
    extra: &[&str],
    mode: &str,
) -> Result<(serde_json::Value, serde_json::Value), serde_json::Value> {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "daemon");
    let repo = Repo::new(&s);
    let host = Host::new(&s, "host");
    repo.add();
    // A shell that starts the program (as its child) once told to, on a line of stdin.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("read go; \"$0\"")
        .arg(&fixture().0)
        .stdin(Stdio::piped());
    let (mut shell, lines) = spawn_lines(&mut cmd);
    // The program is the shell's child: killed (by the shell's pid as parent) even when the
    // test fails, before the shell itself.
    struct KillChildren(u32);
    impl Drop for KillChildren {
        fn drop(&mut self) {
            let _ = Command::new("pkill")
                .args(["-P", &self.0.to_string()])
                .status();
        }
    }
    let _children = KillChildren(shell.id());
    let mut agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_suture"))
            .args(["agent", "--repo", &repo.url, "--trust"])
            .arg(&repo.root)
            .arg("--state")
            .arg(&host.state)
            .args(["--pid", &shell.id().to_string()])
            .args(["--interval", "3600", "--health-settle", "0"])
            .args(extra)
            .args(["--timeout", "60", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The first full pass has found nothing to patch (the state is written after the report).
    suture_testkit::wait_until("the agent's first pass", suture_testkit::WAIT, || {
        host.state.join("last-report.json").is_file() && !host.status()["last_pass"].is_null()
    });
    let st = host.status();
    if st["watch"]["mode"] != mode {
        return Err(st);
    }
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    // (Not waiting for the unpatched output first: on a loaded machine the agent may patch
    // the program before it prints its first line.)
    lines.wait_for(AFTER);
    let st = host.status();
    let prog = st["patches"][0]["process"]["pid"]
        .as_i64()
        .expect("tracked");
    assert_eq!(st["patches"][0]["live"], true, "{st:#}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.state.join("last-report.json")).unwrap())
            .unwrap();
    assert_eq!(pids(&report["applied"]), [prog], "{report:#}");
    assert!(
        report["applied"][0]["process_age_ms"].is_u64(),
        "{report:#}"
    );
    // SIGTERM still ends the daemon by that signal (with exec events a thread of its own takes
    // it, unsubscribes, then lets it through).
    let o = run(Command::new("kill").args(["-TERM", &agent.id().to_string()]));
    assert!(o.status.success(), "{}", text(&o));
    let mut ended = None;
    suture_testkit::wait_until("the agent to end on SIGTERM", suture_testkit::WAIT, || {
        ended = agent.0.try_wait().unwrap();
        ended.is_some()
    });
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(ended.and_then(|s| s.signal()), Some(15), "{ended:?}");
    Ok((report, st))
}

/// A process started after the patch went live is patched from its exec event (the kernel's
/// process connector), the daemon's polling turned off (`--rescan 0`): the pass that patched
/// it says it was started by exec events and how long after the exec the patch went live.
#[test]
fn daemon_patches_a_process_started_later_from_its_exec_event() {
    let (report, st) = match daemon_patches_a_later_process(&["--rescan", "0"], "exec-events") {
        Ok(r) => r,
        Err(st) => {
            let why = format!("the agent does not get exec events here: {}", st["watch"]);
            if std::env::var_os("CI").is_some() {
                panic!("{why}");
            }
            eprintln!("skipped: {why}");
            return;
        }
    };
    assert_eq!(st["watch"]["reason"], serde_json::Value::Null, "{st:#}");
    assert_eq!(report["trigger"], "exec-event", "{report:#}");
    // Worked from the daemon's last full pass: no fetch in the exec's window.
    assert_eq!(report["metadata_fetched"], false, "{report:#}");
    assert_eq!(report["watch"]["mode"], "exec-events", "{report:#}");
    let window = report["applied"][0]["exec_to_live_us"].as_u64();
    assert!(window.is_some(), "{report:#}");
    eprintln!("exec to patch live: {} us", window.unwrap_or(0));
}

/// Without exec events (`--no-exec-events`), the daemon finds the new process by listing
/// `/proc` every `--rescan` seconds, and says so.
#[test]
fn daemon_patches_a_process_started_later_by_polling() {
    let (report, st) =
        daemon_patches_a_later_process(&["--no-exec-events", "--rescan", "0.05"], "polling")
            .unwrap_or_else(|st| panic!("{st:#}"));
    assert!(
        st["watch"]["reason"]
            .as_str()
            .unwrap()
            .contains("--no-exec-events"),
        "{st:#}"
    );
    assert_eq!(report["trigger"], "rescan", "{report:#}");
    assert_eq!(report["metadata_fetched"], false, "{report:#}");
    assert_eq!(
        report["applied"][0]["exec_to_live_us"],
        serde_json::Value::Null
    );
    eprintln!(
        "the process ran unpatched for {} ms",
        report["applied"][0]["process_age_ms"]
    );
}

/// A patch that `replaces` another takes its place in one switch where it is live (no revert
/// first), the replaced one is not applied again while it stays in the repository, and its
/// later withdrawal reverts nothing.
#[test]
fn replacing_patch_switches_in_one_step() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "replaces");
    let repo = Repo::new(&s);
    let host = Host::new(&s, "host");
    let p = Target::start();
    repo.add();
    let v = host.pass(&repo, &p);
    assert_eq!(pids(&v["applied"]), [p.child.id() as i64], "{v:#}");
    p.prints(AFTER);
    let added = repo.sign(
        "add",
        &[
            fixture_v3().to_str().unwrap(),
            "--version",
            "2",
            "--replaces",
            "fix",
        ],
    );
    assert_eq!(
        added["changed"][0]["meta"]["replaces"][0], "fix",
        "{added:#}"
    );
    assert_eq!(added["changed"][0]["meta"]["version"], 2, "{added:#}");
    let v = host.pass(&repo, &p);
    assert_eq!(v["applied"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["applied"][0]["patch_id"], "fix-3", "{v:#}");
    assert_eq!(v["applied"][0]["replaced"], "fix", "{v:#}");
    assert!(v["reverted"].as_array().unwrap().is_empty(), "{v:#}");
    assert_eq!(p.live(), ["fix-3"]);
    p.prints("v=3");
    // The replaced patch, still published, is not applied again.
    let v = host.pass(&repo, &p);
    assert!(v["applied"].as_array().unwrap().is_empty(), "{v:#}");
    let fix = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["patch_id"] == "fix")
        .unwrap();
    assert_eq!(fix["action"], "replaced", "{v:#}");
    let st = host.status();
    let tracked: Vec<&str> = st["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["patch_id"].as_str().unwrap())
        .collect();
    assert_eq!(tracked, ["fix-3"], "{st:#}");
    // Withdrawing the replaced patch reverts nothing.
    repo.sign("withdraw", &["fix"]);
    let v = host.pass(&repo, &p);
    assert!(v["reverted"].as_array().unwrap().is_empty(), "{v:#}");
    assert_eq!(p.live(), ["fix-3"]);
    p.prints("v=3");
}

/// A network namespace with a veth pair to the test's namespace: the host side
/// `10.<a>.<b>.1/30` here, `10.<a>.<b>.2/30` inside. Deleted (with the pair) when dropped.
struct NetNs {
    name: String,
    host_ip: String,
}

impl NetNs {
    /// `None` when namespaces cannot be made here (not root); under `CI` that panics.
    fn new(n: u32) -> Option<NetNs> {
        let pid = std::process::id();
        let name = format!("suture-fleet-{pid}-{n}");
        let (a, b) = (100 + pid % 100, (pid / 100 % 60) * 4 + n);
        let host_ip = format!("10.{a}.{b}.1");
        let (vh, vg) = (
            format!("sfh{}n{n}", pid % 100_000),
            format!("sfg{}n{n}", pid % 100_000),
        );
        let ip = |args: &str| {
            Command::new("ip")
                .args(args.split_whitespace())
                .output()
                .map(|o| {
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    )
                })
                .unwrap_or((false, "ip is not installed".into()))
        };
        let (ok, err) = ip(&format!("netns add {name}"));
        if !ok {
            return suture_testkit::tier::unavailable(
                "network-namespace",
                &format!("ip netns add: {err}"),
            );
        }
        let ns = NetNs { name, host_ip };
        for cmd in [
            format!("link add {vh} type veth peer name {vg}"),
            format!("link set {vg} netns {}", ns.name),
            format!("addr add {}/30 dev {vh}", ns.host_ip),
            format!("link set {vh} up"),
            format!("-n {} addr add 10.{a}.{b}.2/30 dev {vg}", ns.name),
            format!("-n {} link set {vg} up", ns.name),
            format!("-n {} link set lo up", ns.name),
        ] {
            let (ok, err) = ip(&cmd);
            assert!(ok, "ip {cmd}: {err}");
        }
        Some(ns)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Simulated hosts in network namespaces: each agent runs in a namespace of its own and
/// reaches the repository only through its veth pair (the server on loopback is out of its
/// reach), and each patches its own program.
#[test]
fn hosts_in_network_namespaces() {
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "netns");
    let repo = Repo::new(&s);
    repo.add();
    let mut spaces = Vec::new();
    for n in 0..2 {
        match NetNs::new(n) {
            Some(ns) => spaces.push(ns),
            None => return,
        }
    }
    for (n, ns) in spaces.iter().enumerate() {
        let url = serve_at(&repo.dir, &format!("{}:0", ns.host_ip));
        let p = Target::start();
        let state = s.path().join(format!("ns-host{n}"));
        let agent = |url: &str| {
            run(Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .arg(env!("CARGO_BIN_EXE_suture"))
                .args(["agent", "--repo", url, "--trust"])
                .arg(&repo.root)
                .arg("--state")
                .arg(&state)
                .args([
                    "--pid",
                    &p.pid(),
                    "--health-settle",
                    "0",
                    "--once",
                    "--json",
                ]))
        };
        // Loopback inside the namespace is not the test's: the repository is not there.
        let o = agent(&repo.url);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        p.untouched();
        let o = agent(&url);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(pids(&v["applied"]), [p.child.id() as i64], "{v:#}");
        assert_eq!(v["repo"], url.as_str());
        p.prints(AFTER);
    }
}
