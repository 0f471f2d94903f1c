//! `suture demo`: the built-in example, end to end on a real process.
//!
//! It compiles a small multi-threaded key/value service shipped in `demo/` (service.c: network
//! and worker threads; proto.c: the request parser, whose heartbeat command trusts the length
//! the client claims and so leaks the session's API key, like Heartbleed), starts it on a free
//! loopback port, shows the leak, builds a live patch from `demo/fix.diff`, applies it while
//! client threads keep the service busy, shows the leak is gone and that no request failed,
//! reverts, shows the leak is back, and stops the service.
//!
//! Clean-up is guaranteed three ways: the service exits by itself when its standard input (a
//! pipe from this process) closes, so it never outlives suture even after SIGKILL; a Drop
//! guard stops it and removes the work directory on every return path; and a SIGINT/SIGTERM
//! handler does the same before exiting with status 130.
//!
//! Building the patch: until `suture build` exists as a library (crates/suture-build),
//! [`build_patch`] does what it will do for this one-file diff: apply the diff to a copy of the
//! source tree, rebuild each changed translation unit with the deployed flags, and diff the
//! objects with suture-object. Switching to the builder means replacing the body of
//! `build_patch` (same inputs: source tree, diff, build directory; same output: patch objects
//! and what each changes); nothing else in the demo depends on how the patch was made.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use suture_process::apply::{self, ApplyOptions};
use suture_process::ids::Pid;

/// The shipped sources, written into the work directory.
const SOURCES: &[(&str, &str)] = &[
    ("service.c", include_str!("../demo/service.c")),
    ("proto.c", include_str!("../demo/proto.c")),
    ("proto.h", include_str!("../demo/proto.h")),
    ("Makefile", include_str!("../demo/Makefile")),
];
const FIX: &str = include_str!("../demo/fix.diff");
const PATCH_ID: &str = "demo-fix";
/// Client threads that keep the service busy while it is patched.
const LOAD_CLIENTS: usize = 3;
/// The attack: a heartbeat that claims 255 bytes and sends 2.
const ATTACK: &str = "ECHO 255 hi";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints a line of the demo's narration. Unlike `crate::out`, a closed pipe does not end the
/// program: the demo goes on so that it cleans up (service, working directory) as usual.
fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

fn step(msg: &str) {
    say(&format!("==> {msg}"));
}

fn detail(msg: &str) {
    for l in msg.lines() {
        say(&format!("    {l}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Clean-up: the service process and the work directory, reachable from the signal handler.

#[derive(Default)]
struct Resources {
    service: Option<Child>,
    dir: Option<PathBuf>,
}

static RESOURCES: Mutex<Resources> = Mutex::new(Resources {
    service: None,
    dir: None,
});

fn resources() -> std::sync::MutexGuard<'static, Resources> {
    RESOURCES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills the service (if still registered) and waits up to two seconds for it to be reaped.
fn kill_service(mut child: Child) {
    let _ = child.kill();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Stops everything the demo started and removes its work directory; idempotent.
fn clean_up() {
    let (service, dir) = {
        let mut r = resources();
        (r.service.take(), r.dir.take())
    };
    if let Some(child) = service {
        kill_service(child);
    }
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs [`clean_up`] when the demo returns, whether it succeeded or not.
struct Guard;
impl Drop for Guard {
    fn drop(&mut self) {
        clean_up();
    }
}

/// Set by the signal handler; the main thread then stops reporting (its failures are the
/// interrupt's doing) and waits for the handler to exit the process.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!(
            "\nsuture demo: interrupted; stopping the service and removing the work directory"
        );
        clean_up();
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")
}

// ---------------------------------------------------------------------------------------------
// Tools.

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {what} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs the project's build (`make`, with the flags its Makefile sets) in `dir`.
fn make(dir: &Path, targets: &[&str]) -> Result<()> {
    run_tool(
        Command::new("make")
            .current_dir(dir)
            .args(["-s", "--no-print-directory"])
            .args(targets),
        &format!("make {}", targets.join(" ")),
    )
}

/// Copies the regular files of `from` into `to` (created).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The patch build (to become a call into suture-build).

/// One live patch: the patch object for one translation unit.
struct PatchFile {
    /// The source file it changes, relative to the source tree.
    unit: String,
    /// The patch object of the bundle `suture build` wrote.
    bytes: Vec<u8>,
    /// The functions it replaces.
    functions: Vec<String>,
    /// The symbols the bundle records for the deployed binary.
    symbols: std::sync::Arc<suture_process::symbols::ElfSymbols>,
}

/// Builds live patches for the service built by `make` in `deployed` (from the pristine
/// sources in `source`) from the fix `diff`, working in `work`: what
/// `suture build --source SOURCE --diff DIFF -o WORK` will do, reduced to this demo's case
/// (each changed unit is rebuilt with the project's own rule, `make UNIT.o`, in a patched copy
/// of the sources and diffed against the deployed object).
fn build_patch(source: &Path, diff: &Path, deployed: &Path, work: &Path) -> Result<Vec<PatchFile>> {
    let opts = suture_build::BuildOptions {
        source: source.to_path_buf(),
        diff: diff.to_path_buf(),
        build_cmd: "make".into(),
        targets: vec![deployed.to_path_buf()],
        out_dir: work.join("out"),
        patch_id: Some(PATCH_ID.into()),
        created_by: format!("suture {}", env!("CARGO_PKG_VERSION")),
        debug_dirs: Vec::new(),
        wrapper_exe: std::env::current_exe()?,
        diff_options: Default::default(),
    };
    let report = suture_build::build(&opts, &mut |line| detail(line)).context("suture build")?;
    if report.bundles.is_empty() {
        let why: Vec<String> = report
            .refusals
            .iter()
            .map(|r| format!("{} {}: {}", r.file, r.symbol, r.reason))
            .collect();
        bail!(
            "suture build wrote no bundle ({:?}): {}",
            report.outcome,
            why.join("; ")
        );
    }
    let mut out = Vec::new();
    for b in &report.bundles {
        let bytes = crate::read(Path::new(&b.path))?;
        let bundle = suture_bundle::decode(&bytes).with_context(|| b.path.clone())?;
        out.push(PatchFile {
            unit: b.units.join(", "),
            functions: b.functions.clone(),
            symbols: std::sync::Arc::new(suture_process::bundle::bundle_symbols(&bundle.manifest)),
            bytes: bundle.patch_object,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Talking to the service.

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("cannot connect to the service on port {port}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn request(&mut self, line: &str) -> Result<String> {
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .context("send failed")?;
        let mut reply = String::new();
        if self.r.read_line(&mut reply).context("receive failed")? == 0 {
            bail!("the service closed the connection");
        }
        Ok(reply.trim_end().to_string())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Leaked bytes for display: printable ASCII as is, runs of anything else as "..".
fn printable(bytes: &[u8]) -> String {
    let mut s = String::new();
    let mut gap = false;
    for &b in bytes {
        if (0x20..0x7f).contains(&b) {
            s.push(b as char);
            gap = false;
        } else if !gap {
            s.push_str("..");
            gap = true;
        }
    }
    s
}

enum Attack {
    /// The service sent back bytes it was never sent, containing the secret.
    Leaked(Vec<u8>),
    /// The service refused the request.
    Rejected(String),
}

/// Sends the malicious heartbeat on a fresh connection and classifies the answer.
fn attack(port: u16, secret: &str) -> Result<Attack> {
    let reply = Conn::open(port)?.request(ATTACK)?;
    if let Some(h) = reply.strip_prefix("ECHO ") {
        let bytes = unhex(h).with_context(|| format!("malformed reply {reply:?}"))?;
        if !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
            bail!(
                "the service sent {} bytes back but they do not hold the secret: {:?}",
                bytes.len(),
                printable(&bytes)
            );
        }
        return Ok(Attack::Leaked(bytes));
    }
    if reply.starts_with("ERROR") {
        return Ok(Attack::Rejected(reply));
    }
    bail!("unexpected reply to the attack: {reply:?}")
}

fn show_leak(bytes: &[u8], secret: &str) {
    detail(&format!(
        "the service answered with {} bytes although the client sent 2:\n  \"{}\"\n\
         LEAKED the service's API key: {secret}",
        bytes.len(),
        printable(bytes)
    ));
}

// ---------------------------------------------------------------------------------------------
// Load: client threads sending well-formed requests at full rate and checking every reply.

#[derive(Default)]
struct LoadStats {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let mut threads = Vec::new();
        for id in 0..LOAD_CLIENTS {
            let conn = Conn::open(port)?;
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            threads.push(std::thread::spawn(move || {
                client(conn, port, id, &stop, &stats)
            }));
        }
        Ok(Load {
            stop,
            stats,
            threads,
        })
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.stats.ok.load(Ordering::SeqCst),
            self.stats.failed.load(Ordering::SeqCst),
        )
    }

    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let (ok, failed) = self.counts();
        let errors = self
            .stats
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        (ok, failed, errors)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One well-formed request and the reply it must get.
fn exchange(conn: &mut Conn, id: usize, seq: u64) -> Result<()> {
    let key = format!("client{id}-{}", (seq / 3) % 8);
    let (req, want) = match seq % 3 {
        0 => (format!("SET {key} value-{seq}"), "STORED".to_string()),
        1 => (format!("GET {key}"), format!("VALUE value-{}", seq - 1)),
        _ => {
            let payload = format!("beat-{id}-{seq}");
            (
                format!("ECHO {} {payload}", payload.len()),
                format!("ECHO {}", hex(payload.as_bytes())),
            )
        }
    };
    let got = conn.request(&req)?;
    if got != want {
        bail!("{req:?} got {got:?}, want {want:?}");
    }
    Ok(())
}

fn client(mut conn: Conn, port: u16, id: usize, stop: &AtomicBool, stats: &LoadStats) {
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        match exchange(&mut conn, id, seq) {
            Ok(()) => {
                stats.ok.fetch_add(1, Ordering::SeqCst);
                seq += 1;
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut v) = stats.errors.lock() {
                    if v.len() < 5 {
                        v.push(format!("client {id}: {e:#}"));
                    }
                }
                // Start over on a new connection (a GET right after a failed SET would fail).
                match Conn::open(port) {
                    Ok(c) => conn = c,
                    Err(_) => return,
                }
                seq += 3 - seq % 3;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The demo.

/// A secret that differs on every run, so a leak cannot be faked by a constant.
fn fresh_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("sk-live-{:016x}", h.finish())
}

pub fn run(keep: bool) -> Result<u8> {
    let dir = std::env::temp_dir().join(format!("suture-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !keep {
        resources().dir = Some(dir.clone());
    }
    let _guard = Guard;
    install_interrupt_handler()?;
    step(&format!("Work directory {}", dir.display()));
    let result = run_in(&dir);
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if keep {
        say(&format!("Kept the working directory {}", dir.display()));
    }
    result
}

fn run_in(dir: &Path) -> Result<u8> {
    let src = dir.join("src");
    let deployed = dir.join("deployed");
    std::fs::create_dir_all(&src)?;

    step(
        "Writing the example service: service.c (network, 8 worker threads), proto.c and \
         proto.h (request parser), Makefile",
    );
    for (name, text) in SOURCES {
        std::fs::write(src.join(name), text)?;
    }
    let fix = dir.join("fix.diff");
    std::fs::write(&fix, FIX)?;

    step("Building it as deployed: make (gcc -O2 -g, reproducible paths)");
    copy_tree(&src, &deployed)?;
    make(&deployed, &[])?;
    let exe = deployed.join("service");

    let secret = fresh_secret();
    let (pid, port, stdin) = start_service(&exe, &secret)?;

    step(&format!(
        "Attack: {ATTACK:?}, a heartbeat claiming 255 bytes while sending 2"
    ));
    match attack(port, &secret)? {
        Attack::Leaked(bytes) => show_leak(&bytes, &secret),
        Attack::Rejected(r) => {
            bail!("the unpatched service was expected to leak, it answered {r:?}")
        }
    }

    step("The fix (fix.diff):");
    detail(FIX.trim_end());
    step(&format!(
        "Building the live patch: suture build --source {} --diff fix.diff --target {} -o {}",
        src.display(),
        exe.display(),
        dir.join("out").display()
    ));
    let patches = build_patch(&src, &fix, &exe, dir)?;
    for p in &patches {
        detail(&format!("{}: replaces {}", p.unit, p.functions.join(", ")));
    }

    let load = Load::start(port)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.counts();
    step(&format!(
        "Load: {LOAD_CLIENTS} clients sending SET/GET/ECHO at full rate ({:.0} requests/s, {failed} failed so far)",
        ok as f64 / t.elapsed().as_secs_f64()
    ));

    step(&format!(
        "Applying the patch to the running service (pid {pid}) while the clients keep it busy"
    ));
    let mut windows = Vec::new();
    for p in &patches {
        let opts = ApplyOptions {
            patch_id: PATCH_ID.into(),
            timeout: Duration::from_secs(3),
            object: Some(exe.to_string_lossy().into_owned()),
            symbols: Some(p.symbols.clone()),
            ..Default::default()
        };
        let applied = apply::apply(Pid(pid), &p.bytes, &opts)
            .with_context(|| format!("applying the patch of {}", p.unit))?;
        detail(&format!(
            "live: {} replaced; the service was stopped for {} us (stop window){}",
            p.functions.join(", "),
            applied.stop_window_us,
            if applied.attempts > 1 {
                format!(", after {} attempts", applied.attempts)
            } else {
                String::new()
            }
        ));
        windows.push(applied.stop_window_us);
    }

    step(&format!("Attack again: {ATTACK:?}"));
    match attack(port, &secret)? {
        Attack::Rejected(r) => detail(&format!(
            "rejected: {r:?}\nthe bug is gone, without a restart: same process {pid}, same client connections"
        )),
        Attack::Leaked(bytes) => {
            show_leak(&bytes, &secret);
            bail!("the patch is live but the service still leaks");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.counts();
    step(&format!(
        "Load so far, across the switch: {ok} requests answered correctly, {failed} failed"
    ));

    step(&format!(
        "Reverting the patch (suture revert {PATCH_ID} --pid {pid})"
    ));
    let t = Instant::now();
    apply::revert(Pid(pid), PATCH_ID, Duration::from_secs(3)).context("reverting the patch")?;
    detail(&format!(
        "reverted in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    ));
    step(&format!("Attack again: {ATTACK:?}"));
    match attack(port, &secret)? {
        Attack::Leaked(bytes) => {
            show_leak(&bytes, &secret);
            detail("the bug is back: the original code runs again");
        }
        Attack::Rejected(r) => {
            bail!("after the revert the service still rejects the attack: {r:?}")
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed, errors) = load.finish();
    step(&format!(
        "Load in total: {ok} requests answered correctly, {failed} failed"
    ));
    if failed > 0 {
        bail!(
            "{failed} requests failed during the demo:\n{}",
            errors.join("\n")
        );
    }

    step("Stopping the service and cleaning up");
    drop(stdin);
    let status = wait_service(Duration::from_secs(5))?;
    detail(&format!("the service exited ({status})"));
    if !status.success() {
        bail!("the service did not exit cleanly: {status}");
    }
    let window = windows.iter().max().copied().unwrap_or(0);
    say(&format!(
        "Done: the leak was fixed live with a {window} us stop window and {failed} failed of \
         {ok} requests, then reverted."
    ));
    Ok(crate::exit::OK)
}

/// Starts the service, registers it for clean-up, and returns its pid, port and the write
/// end of its standard input (closing it stops the service).
fn start_service(exe: &Path, secret: &str) -> Result<(i32, u16, ChildStdin)> {
    let mut child = Command::new(exe)
        .env("SERVICE_API_KEY", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdin = child.stdin.take().context("no stdin pipe")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let pid = child.id() as i32;
    resources().service = Some(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the service's first line")?;
    let port: u16 = line
        .strip_prefix("listening on 127.0.0.1:")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the service did not start (it printed {line:?})"))?;
    step(&format!(
        "Started the service (pid {pid}): {}",
        line.trim_end()
    ));
    Ok((pid, port, stdin))
}

/// Waits for the registered service to exit after its input was closed.
fn wait_service(timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let mut r = resources();
            let child = r.service.as_mut().context("the service is not running")?;
            if let Some(status) = child.try_wait()? {
                r.service = None;
                return Ok(status);
            }
        }
        if Instant::now() > deadline {
            bail!("the service did not exit within {timeout:?} of its input closing");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaked_bytes_are_shown_readably() {
        assert_eq!(printable(b"hi\0\0\0guest\0sk-1\xff"), "hi..guest..sk-1..");
        assert_eq!(unhex("6869"), Some(b"hi".to_vec()));
        assert_eq!(unhex("6"), None);
        assert_eq!(unhex("zz"), None);
    }
}
