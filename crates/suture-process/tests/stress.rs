//! Under load: a multi-threaded network server (tests/fixtures/netserver, compiled here with
//! gcc) answers a client running at full rate over several loopback connections while its
//! request handler is patched and reverted 1,000 times.
//!
//! Asserted: zero failed requests (every reply is a well-formed `v1:`/`v2:` reply carrying the
//! right checksum of its request, no connection error), zero crashes (the server is alive
//! throughout and exits with status 0 when asked to), the patched code answering while the
//! patch is live and the original code answering after each revert, nothing left in the
//! server at the end. Timings are printed (`--nocapture`), never asserted.
//!
//! How "the right version at the right time" is checked soundly: the patcher publishes a phase
//! counter (SeqCst) — odd while `apply` or `revert` runs, `4k+2` once apply `k` has returned,
//! `4k+4` once revert `k` has returned. A client reads the phase before sending a request and
//! after reading its reply; when both reads agree, the whole request was served inside that
//! phase, so the reply must be `v2` in a live phase and `v1` otherwise. Replies that straddle a
//! switch may be either. Every cycle the patcher also (a) sends one synchronous request on its
//! own connection right after apply (must be `v2`) and right after revert (must be `v1`), and
//! (b) waits until some load connection has had a reply served entirely inside the phase, so
//! every cycle proves the load clients see the patched code while it is live and the original
//! after it is reverted.
//!
//! `SUTURE_STRESS_CYCLES=N` changes the number of cycles for local experiments; CI runs the
//! default of 1,000.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suture_process::apply::{apply, revert, status, ApplyOptions};
use suture_process::ids::Pid;
use suture_testkit::cc::gcc;
use suture_testkit::{Scratch, TIMEOUT, WAIT};

const SERVER: &str = include_str!("fixtures/netserver/server.c");
const HANDLER: &str = include_str!("fixtures/netserver/handler.c");
const FIXED: &str = include_str!("fixtures/netserver/handler.fixed.c");

/// Load connections, each driven by its own client thread at full rate.
const CONNECTIONS: usize = 4;
const DEFAULT_CYCLES: usize = 1000;
/// A reply slower than this is a failure (the server hung or a thread was left stopped):
/// generous, a loaded machine is slow, not hung.
const IO_TIMEOUT: Duration = WAIT;
/// How long the patcher waits for a load connection to be served inside a phase.
const PHASE_WAIT: Duration = WAIT;

/// The server process; killed (and reaped) on drop if the test did not shut it down.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the server and the patch of handler.c.
fn build(dir: &Path) -> (PathBuf, Vec<u8>) {
    let _ = std::fs::remove_dir_all(dir);
    for side in ["orig", "fixed"] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
    }
    std::fs::write(dir.join("server.c"), SERVER).unwrap();
    std::fs::write(dir.join("orig/handler.c"), HANDLER).unwrap();
    std::fs::write(dir.join("fixed/handler.c"), FIXED).unwrap();
    let c = ["-c", "-O2", "-g", "-ffunction-sections", "-fdata-sections"];
    gcc(dir, &[&c[..], &["server.c", "-o", "server.o"]].concat());
    for side in ["orig", "fixed"] {
        gcc(
            &dir.join(side),
            &[&c[..], &["handler.c", "-o", "handler.o"]].concat(),
        );
    }
    gcc(
        dir,
        &["server.o", "orig/handler.o", "-o", "server", "-lpthread"],
    );
    let a = std::fs::read(dir.join("orig/handler.o")).unwrap();
    let b = std::fs::read(dir.join("fixed/handler.o")).unwrap();
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let d = suture_object::analyze(&a, &b).unwrap();
    assert_eq!(d.report.status, suture_object::Status::Patchable);
    (dir.join("server"), suture_object::emit::emit(&d).unwrap())
}

/// The fixture's checksum: FNV-1a.
fn checksum(p: &[u8]) -> u32 {
    p.iter().fold(2166136261u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A connection speaking the fixture's line protocol.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
    line: String,
}

impl Conn {
    fn open(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
            line: String::new(),
        })
    }

    /// Sends `payload` and checks the reply: a version tag and the payload's checksum.
    fn request(&mut self, payload: &str) -> Result<Version, String> {
        let mut msg = Vec::with_capacity(payload.len() + 1);
        msg.extend_from_slice(payload.as_bytes());
        msg.push(b'\n');
        self.w
            .write_all(&msg)
            .map_err(|e| format!("send failed: {e}"))?;
        self.line.clear();
        match self.r.read_line(&mut self.line) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("receive failed: {e}")),
        }
        let want = format!("{:08x}\n", checksum(payload.as_bytes()));
        let version = match self.line.split_at_checked(3) {
            Some(("v1:", rest)) if rest == want => Version::V1,
            Some(("v2:", rest)) if rest == want => Version::V2,
            _ => {
                return Err(format!(
                    "bad reply {:?} to {payload:?} (want v1/v2:{})",
                    self.line,
                    want.trim_end()
                ))
            }
        };
        Ok(version)
    }

    fn stats(&mut self) -> Result<u64, String> {
        self.w
            .write_all(b"STATS\n")
            .map_err(|e| format!("send failed: {e}"))?;
        self.line.clear();
        self.r
            .read_line(&mut self.line)
            .map_err(|e| format!("receive failed: {e}"))?;
        self.line
            .trim_end()
            .strip_prefix("served ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad STATS reply {:?}", self.line))
    }
}

/// What the patcher and the load clients share.
#[derive(Default)]
struct Shared {
    /// 0: original, before any apply; then per cycle k: 4k+1 applying, 4k+2 live,
    /// 4k+3 reverting, 4k+4 original.
    phase: AtomicU64,
    /// The highest phase in which some load client had a request served entirely, with the
    /// version that phase requires.
    confirmed: AtomicU64,
    /// Load clients that have had their first reply.
    ready: AtomicU64,
    stop: AtomicBool,
    failures: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, msg: String) {
        self.failures.fetch_add(1, SeqCst);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(msg);
        }
    }
}

fn expected(phase: u64) -> Option<Version> {
    match phase % 4 {
        0 => Some(Version::V1),
        2 => Some(Version::V2),
        _ => None,
    }
}

#[derive(Default, Debug)]
struct Counts {
    requests: u64,
    v1: u64,
    v2: u64,
    /// Requests served entirely inside one phase (the ones whose version is checked).
    checked: u64,
}

/// One load connection at full rate until told to stop or until it fails.
fn load(mut conn: Conn, id: usize, shared: &Shared) -> Counts {
    let mut n = Counts::default();
    let mut seq: u64 = 0;
    while !shared.stop.load(SeqCst) {
        seq += 1;
        // Varying lengths and contents, so every checksum differs.
        let payload = format!(
            "c{id}-{seq}-{:x}",
            seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (seq % 48)
        );
        let p0 = shared.phase.load(SeqCst);
        let got = conn.request(&payload);
        let p1 = shared.phase.load(SeqCst);
        n.requests += 1;
        let version = match got {
            Ok(v) => v,
            Err(e) => {
                shared.fail(format!("connection {id}, request {seq}: {e}"));
                break;
            }
        };
        if n.requests == 1 {
            shared.ready.fetch_add(1, SeqCst);
        }
        match version {
            Version::V1 => n.v1 += 1,
            Version::V2 => n.v2 += 1,
        }
        if p0 == p1 {
            if let Some(want) = expected(p0) {
                n.checked += 1;
                if version == want {
                    shared.confirmed.fetch_max(p0, SeqCst);
                } else {
                    shared.fail(format!(
                        "connection {id}, request {seq}: {version:?} reply served entirely \
                         in phase {p0}, which requires {want:?}"
                    ));
                }
            }
        }
    }
    n
}

fn median_min_p90(v: &mut [u64]) -> (u64, u64, u64) {
    v.sort_unstable();
    if v.is_empty() {
        return (0, 0, 0);
    }
    (v[v.len() / 2], v[0], v[(v.len() * 9 / 10).min(v.len() - 1)])
}

fn proc_state(pid: i32) -> (String, String) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let st = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    (st, tracer)
}

#[test]
fn thousand_apply_revert_cycles_under_full_load() {
    let cycles: usize = std::env::var("SUTURE_STRESS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "stress", "netserver");
    let (prog, patch) = build(&dir);

    let mut child = Command::new(&prog)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    // The server's stderr (its crash report, if it crashes), collected for failure messages.
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let (mut pipe, sink) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
    }
    let stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut server = Server { child, stdin };
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let port: u16 = first
        .trim_end()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the server printed {first:?} instead of its port"));
    let pid = Pid(server.child.id() as i32);

    // All connections (and so all server threads) exist before the first apply.
    let shared = Arc::new(Shared::default());
    let mut sync = Conn::open(port).expect("connect");
    assert_eq!(sync.request("hello"), Ok(Version::V1));
    let mut clients = Vec::new();
    for id in 0..CONNECTIONS {
        let conn = Conn::open(port).expect("connect");
        let shared = Arc::clone(&shared);
        clients.push(std::thread::spawn(move || load(conn, id, &shared)));
    }
    // Let every connection be served once, in the original phase.
    let t = Instant::now();
    while shared.ready.load(SeqCst) < CONNECTIONS as u64 {
        assert!(
            t.elapsed() < PHASE_WAIT && shared.failures.load(SeqCst) == 0,
            "the load connections never got a reply: {:?}",
            shared.errors.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let maps_before = std::fs::read_to_string(format!("/proc/{}/maps", pid.0)).unwrap();
    // The mappings after the first cycle: the reverted patch's region stays mapped, retired
    // (the program may still point into it), and every later apply reuses it.
    let mut maps_first = None;

    let opts = ApplyOptions {
        patch_id: "netserver-v2".into(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let mut apply_window = Vec::new();
    let mut apply_call = Vec::new();
    let mut revert_call = Vec::new();
    let mut retried = 0;
    let started = Instant::now();
    let mut done = 0;
    // Waits until a load client had a request served entirely inside `phase`.
    let confirm = |phase: u64, cycle: usize| {
        let t = Instant::now();
        while shared.confirmed.load(SeqCst) < phase {
            if t.elapsed() > PHASE_WAIT {
                shared.fail(format!(
                    "cycle {cycle}: no load connection was served entirely inside phase \
                     {phase} within {PHASE_WAIT:?}"
                ));
                return;
            }
            std::thread::yield_now();
        }
    };
    for cycle in 0..cycles {
        if shared.failures.load(SeqCst) > 0 {
            break;
        }
        let base = 4 * cycle as u64;
        shared.phase.store(base + 1, SeqCst);
        let t = Instant::now();
        let applied = match apply(pid, &patch, &opts) {
            Ok(a) => a,
            Err(e) => {
                shared.fail(format!("cycle {cycle}: apply failed: {e}"));
                break;
            }
        };
        apply_call.push(t.elapsed().as_micros() as u64);
        shared.phase.store(base + 2, SeqCst);
        apply_window.push(applied.stop_window_us);
        if applied.attempts > 1 {
            retried += 1;
        }
        match sync.request(&format!("sync-apply-{cycle}")) {
            Ok(Version::V2) => {}
            other => shared.fail(format!(
                "cycle {cycle}: the request right after apply returned got {other:?}, want V2"
            )),
        }
        confirm(base + 2, cycle);

        shared.phase.store(base + 3, SeqCst);
        let t = Instant::now();
        if let Err(e) = revert(pid, &opts.patch_id, TIMEOUT) {
            shared.fail(format!("cycle {cycle}: revert failed: {e}"));
            break;
        }
        revert_call.push(t.elapsed().as_micros() as u64);
        shared.phase.store(base + 4, SeqCst);
        match sync.request(&format!("sync-revert-{cycle}")) {
            Ok(Version::V1) => {}
            other => shared.fail(format!(
                "cycle {cycle}: the request right after revert returned got {other:?}, want V1"
            )),
        }
        confirm(base + 4, cycle);
        done += 1;
        if done == 1 {
            maps_first = std::fs::read_to_string(format!("/proc/{}/maps", pid.0)).ok();
        }
    }
    let elapsed = started.elapsed();
    // Keep the load on a little after the last revert: still v1, still no failure.
    std::thread::sleep(Duration::from_millis(100));
    shared.stop.store(true, SeqCst);
    let counts: Vec<Counts> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let total: u64 = counts.iter().map(|c| c.requests).sum();
    let v1: u64 = counts.iter().map(|c| c.v1).sum();
    let v2: u64 = counts.iter().map(|c| c.v2).sum();
    let checked: u64 = counts.iter().map(|c| c.checked).sum();
    let (am, amin, ap90) = median_min_p90(&mut apply_window);
    let (acm, _, _) = median_min_p90(&mut apply_call);
    let (rcm, _, _) = median_min_p90(&mut revert_call);
    println!(
        "stress: {done}/{cycles} apply/revert cycles in {:.1} s over {CONNECTIONS} load \
         connections: {total} requests ({:.0}/s), {v1} v1, {v2} v2, {checked} checked against \
         their phase; {retried} applies needed a retry",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "stress: apply stop window (suture's view) median {am} us, min {amin} us, p90 {ap90} \
         us; whole apply call median {acm} us; whole revert call median {rcm} us (revert does \
         not report its stop window)"
    );

    // A failure first: its messages and whether the server died say more than what follows.
    let errors = shared.errors.lock().unwrap().clone();
    if let Ok(Some(exit)) = server.child.try_wait() {
        std::thread::sleep(Duration::from_millis(200)); // let the stderr reader finish
        panic!(
            "the server died ({exit:?}) in cycle {done}; failures:\n{}\nserver stderr:\n{}",
            errors.join("\n"),
            stderr.lock().unwrap()
        );
    }
    assert_eq!(
        shared.failures.load(SeqCst),
        0,
        "failed requests or checks after {done} cycles:\n{}",
        errors.join("\n")
    );
    let (state, tracer) = proc_state(pid.0);
    let live = status(pid);
    let maps_after = std::fs::read_to_string(format!("/proc/{}/maps", pid.0)).unwrap();
    let served = sync.stats().expect("STATS after the cycles");
    assert_eq!(
        sync.request("after"),
        Ok(Version::V1),
        "v1 after the last revert"
    );
    drop(sync);

    // Shut the server down: it exits 0 when its standard input closes.
    drop(server.stdin.take());
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);

    assert_eq!(done, cycles, "every cycle ran");
    assert!(counts.iter().all(|c| c.requests > 0), "{counts:?}");
    assert!(v2 > 0 && v1 > 0, "both versions answered the load clients");
    assert!(
        state != "T" && state != "t" && tracer == "0",
        "server left stopped ({state}) or traced (by {tracer})"
    );
    assert!(
        live.as_ref().is_ok_and(
            |v| v.len() == 1 && v[0].header.state == suture_process::header::State::Reverted
        ),
        "one retired region and nothing live after the last revert: {live:?}"
    );
    let maps_first = maps_first.expect("the mappings after the first cycle");
    assert!(
        maps_first.lines().count() > maps_before.lines().count(),
        "the first cycle's region stays mapped"
    );
    assert_eq!(
        maps_first.lines().count(),
        maps_after.lines().count(),
        "every cycle after the first reuses the retired region:\nafter one cycle:\n\
         {maps_first}\nafter all:\n{maps_after}"
    );
    // Every load request went through respond() (the synchronous ones too).
    assert!(
        served >= total,
        "the server counted {served} requests, the clients sent {total}"
    );
    let exit = exit.expect("the server exits when its input closes");
    assert_eq!(
        exit.code(),
        Some(0),
        "server exit status {exit:?} (output {rest:?})"
    );
    assert!(rest.contains("served "), "{rest:?}");
}
