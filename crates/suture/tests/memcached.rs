//! Proof on a real security update: Debian's memcached 1.6.18-1+deb12u1.
//!
//! The trees are prepared by `scripts/memcached-case.sh CACHE` (see its header) and found
//! through `SUTURE_MEMCACHED_CASE=CACHE/memcached` (set by scripts/test.sh). Without them the
//! tests say so and pass, except under `CI`, where they fail.
//!
//! What the security update's three CVE patches do to Debian's build (established here, not
//! assumed):
//! - `0008-CVE-2026-47783-CVE-2026-47784.patch` fixes `sasl_server_userdb_checkpass()` in
//!   sasl_defs.c, which is compiled only with `--enable-sasl-pwdb`. Debian configures with
//!   `--enable-sasl --enable-tls`, so in Debian's binary the fix changes no code
//!   ([`debian_build_compiles_none_of_the_cve_fixes`]).
//! - `0009-CVE-2023-46852.patch` and `CVE-2023-46853.patch` fix proxy code, compiled only with
//!   `--enable-proxy`.
//!
//! So the live-patch proof runs on the same package configured with Debian's flags plus
//! `--enable-sasl-pwdb` (tree `vuln-pwdb`), the configuration in which the SASL fix has code:
//! [`sasl_fix_goes_live_under_authenticated_load`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use suture_testkit::{run, text, wait_until, Scratch, WAIT};

/// The prepared case directory, or `None` (test skipped) outside CI when it is missing.
fn case_dir() -> Option<PathBuf> {
    let dir = suture_testkit::tier::require("SUTURE_MEMCACHED_CASE", "memcached")?;
    if dir.join(".ready").is_file() {
        return Some(dir);
    }
    suture_testkit::tier::unavailable(
        "memcached",
        &format!(
            "{} is not prepared (no .ready): run scripts/memcached-case.sh",
            dir.display()
        ),
    )
}
fn suture() -> Command {
    Command::new(env!("CARGO_BIN_EXE_suture"))
}

fn tmpdir(name: &str) -> Scratch {
    Scratch::new(env!("CARGO_TARGET_TMPDIR"), "memcached", name)
}

/// `nm` symbol value of `name` in `elf` (None when absent).
fn symbol(elf: &Path, name: &str) -> Option<u64> {
    let out = run(Command::new("nm").arg(elf));
    assert!(out.status.success(), "nm {}: {}", elf.display(), text(&out));
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[2] == name).then(|| u64::from_str_radix(f[0], 16).unwrap())
    })
}

fn build_id(elf: &Path) -> String {
    let out = run(Command::new("readelf").args(["-n"]).arg(elf));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .unwrap_or_else(|| panic!("{} has no build-id", elf.display()))
}

// ---------------------------------------------------------------------------------------------
// memcached binary protocol client (SASL PLAIN, set, get)

const REQ: u8 = 0x80;
const RES: u8 = 0x81;
const OP_GET: u8 = 0x00;
const OP_SET: u8 = 0x01;
const OP_SASL_AUTH: u8 = 0x21;
const OK: u16 = 0;
const AUTH_ERROR: u16 = 0x20;

struct Conn(TcpStream);

struct Reply {
    status: u16,
    value: Vec<u8>,
}

impl Conn {
    fn connect(port: u16) -> io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Conn(s))
    }

    fn call(&mut self, op: u8, extras: &[u8], key: &[u8], value: &[u8]) -> io::Result<Reply> {
        let body = extras.len() + key.len() + value.len();
        let mut m = Vec::with_capacity(24 + body);
        m.push(REQ);
        m.push(op);
        m.extend_from_slice(&(key.len() as u16).to_be_bytes());
        m.push(extras.len() as u8);
        m.push(0); // data type
        m.extend_from_slice(&0u16.to_be_bytes()); // vbucket
        m.extend_from_slice(&(body as u32).to_be_bytes());
        m.extend_from_slice(&0x5375_7475u32.to_be_bytes()); // opaque
        m.extend_from_slice(&0u64.to_be_bytes()); // cas
        m.extend_from_slice(extras);
        m.extend_from_slice(key);
        m.extend_from_slice(value);
        self.0.write_all(&m)?;
        let mut h = [0u8; 24];
        self.0.read_exact(&mut h)?;
        if h[0] != RES || h[1] != op {
            return Err(io::Error::other(format!(
                "bad response header {:02x?}",
                &h[..8]
            )));
        }
        let klen = u16::from_be_bytes([h[2], h[3]]) as usize;
        let elen = h[4] as usize;
        let status = u16::from_be_bytes([h[6], h[7]]);
        let total = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        if total > 1 << 20 || klen + elen > total {
            return Err(io::Error::other(format!(
                "bad response body length {total}"
            )));
        }
        let mut b = vec![0u8; total];
        self.0.read_exact(&mut b)?;
        Ok(Reply {
            status,
            value: b[elen + klen..].to_vec(),
        })
    }

    /// SASL PLAIN in one step: status 0 accepted, 0x20 refused.
    fn auth(&mut self, user: &str, pass: &str) -> io::Result<u16> {
        let msg = [b"\0", user.as_bytes(), b"\0", pass.as_bytes()].concat();
        Ok(self.call(OP_SASL_AUTH, &[], b"PLAIN", &msg)?.status)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> io::Result<u16> {
        Ok(self.call(OP_SET, &[0; 8], key, value)?.status)
    }

    fn get(&mut self, key: &[u8]) -> io::Result<Reply> {
        self.call(OP_GET, &[], key, &[])
    }
}

/// Result of one fresh connection authenticating as `user`.
fn login(port: u16, user: &str, pass: &str) -> u16 {
    let mut c = Conn::connect(port).expect("connect to memcached");
    let st = c.auth(user, pass).expect("SASL exchange");
    let _ = c.0.shutdown(Shutdown::Both);
    st
}

// ---------------------------------------------------------------------------------------------
// the daemon

struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Starts `bin` with SASL on 127.0.0.1 (a port that was free a moment ago: memcached
    /// cannot be given port 0 and report it, so bind port 0 here and pass the number; a lost
    /// race is retried).
    fn start(bin: &Path, dir: &Path, env: &[(&str, &Path)]) -> Daemon {
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = dir.join(format!("memcached-{attempt}.log"));
            let mut cmd = Command::new(bin);
            cmd.args([
                "-S",
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                "-t",
                "4",
                "-m",
                "64",
                "-vv",
            ])
            .args(["-p", &port.to_string()])
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
            // memcached refuses to run as root without -u; stay root (suture's tests run as
            // root so that ptrace works; the SASL files are readable by all anyway).
            if run(Command::new("id").arg("-u")).stdout.starts_with(b"0") {
                cmd.args(["-u", "root"]);
            }
            let mut d = Daemon {
                child: cmd.spawn().unwrap(),
                port,
                log,
            };
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = d.child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return d;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.child.kill();
            eprintln!(
                "memcached did not start on port {port}: {}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
        }
        panic!("memcached {} did not start", bin.display());
    }
}

// ---------------------------------------------------------------------------------------------
// load: authenticated clients at full rate

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    logins: AtomicU64,
}

struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `conns` persistent authenticated connections doing set+get of their own keys, and one
    /// thread that keeps opening a connection and authenticating (each login runs the
    /// password check, the function being replaced).
    fn start(port: u16, user: &'static str, pass: &'static str, conns: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..conns {
            let (stop, counts, errors) = (stop.clone(), counts.clone(), errors.clone());
            threads.push(std::thread::spawn(move || {
                let fail = |e: String| {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    let mut v = errors.lock().unwrap();
                    if v.len() < 20 {
                        v.push(e);
                    }
                };
                let mut c = match Conn::connect(port) {
                    Ok(c) => c,
                    Err(e) => return fail(format!("conn {i}: connect: {e}")),
                };
                match c.auth(user, pass) {
                    Ok(OK) => {}
                    r => return fail(format!("conn {i}: auth: {r:?}")),
                }
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{i}-{}", n % 64);
                    let val = format!("v{i}-{n}");
                    let r = c.set(key.as_bytes(), val.as_bytes()).and_then(|s| {
                        if s != OK {
                            return Err(io::Error::other(format!("set status {s:#x}")));
                        }
                        let g = c.get(key.as_bytes())?;
                        if g.status != OK || g.value != val.as_bytes() {
                            return Err(io::Error::other(format!(
                                "get status {:#x} value {:?}",
                                g.status,
                                String::from_utf8_lossy(&g.value)
                            )));
                        }
                        Ok(())
                    });
                    match r {
                        Ok(()) => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            fail(format!("conn {i} request {n}: {e}"));
                            // A broken connection would fail every later request: reconnect.
                            match Conn::connect(port).and_then(|mut c2| {
                                c2.auth(user, pass)?;
                                Ok(c2)
                            }) {
                                Ok(c2) => c = c2,
                                Err(e) => return fail(format!("conn {i}: reconnect: {e}")),
                            }
                        }
                    }
                    n += 1;
                }
            }));
        }
        let (s, counts2, errors2) = (stop.clone(), counts.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let r = Conn::connect(port).and_then(|mut c| c.auth(user, pass));
                match r {
                    Ok(OK) => {
                        counts2.logins.fetch_add(1, Ordering::Relaxed);
                    }
                    r => {
                        counts2.failed.fetch_add(1, Ordering::Relaxed);
                        errors2.lock().unwrap().push(format!("login: {r:?}"));
                    }
                }
            }
        }));
        Load {
            stop,
            counts,
            errors,
            threads,
        }
    }

    /// Waits until the clients have made `requests` more successful requests and `logins`
    /// more logins than when called (bounded by the kit's WAIT): progress, not time.
    fn progress(&self, requests: u64, logins: u64) {
        let (ok0, in0) = (
            self.counts.ok.load(Ordering::Relaxed),
            self.counts.logins.load(Ordering::Relaxed),
        );
        wait_until(
            &format!("the load makes {requests} requests and {logins} logins"),
            WAIT,
            || {
                self.counts.ok.load(Ordering::Relaxed) >= ok0 + requests
                    && self.counts.logins.load(Ordering::Relaxed) >= in0 + logins
            },
        );
    }

    /// Stops the clients; (successful requests, successful logins, failures, first errors).
    fn finish(mut self) -> (u64, u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let e = self.errors.lock().unwrap().clone();
        (
            self.counts.ok.load(Ordering::Relaxed),
            self.counts.logins.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
            e,
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Load address of the executable `exe` in `pid` (start of its mapping at offset 0).
fn load_base(pid: i32, exe: &Path) -> u64 {
    let exe = std::fs::canonicalize(exe).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && Path::new(f[5]) == exe && u64::from_str_radix(f[2], 16) == Ok(0))
                .then(|| u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap())
        })
        .unwrap_or_else(|| panic!("{} not mapped in {pid}", exe.display()))
}

/// The live patches of `pid` as `suture status --json` reports them.
fn status(pid: i32) -> serde_json::Value {
    let out = run(suture().args(["status", "--json", "--pid", &pid.to_string()]));
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A patch to apply in [`live_cycle`].
struct Live<'a> {
    /// Bundle or patch object.
    path: &'a Path,
    /// Patch id recorded in the process.
    id: &'a str,
    /// The function the patch must redirect.
    function: &'a str,
    /// An unstripped file with the binary's build-id, for `function`'s address.
    symbols: &'a Path,
}

/// Applies `patch` to the running daemon while authenticated clients keep it busy, checks
/// with `fixed` that the new code answers and that the redirect starts at `function` (the
/// original function's address in the process), reverts, checks with `original` that the old
/// code answers again, and asserts that no client request failed at any point.
fn live_cycle(d: &Daemon, bin: &Path, patch: &Live, fixed: &dyn Fn(u16), original: &dyn Fn(u16)) {
    let Live {
        path: patch,
        id,
        function,
        symbols,
    } = *patch;
    let pid = d.pid();
    let sym = symbol(symbols, function)
        .unwrap_or_else(|| panic!("{function} not in {}", symbols.display()));
    original(d.port);
    let load = Load::start(d.port, "suture", "suture-pass", 3);
    // The load runs before, during and after the switch: each phase waits for progress of
    // its own (together more than the 100 requests and 10 logins checked below).
    load.progress(30, 3);

    let out = run(suture()
        .args(["apply", "--json", "--timeout", "60", "--id", id])
        .arg(patch)
        .args(["--pid", &pid.to_string()]));
    assert_eq!(out.status.code(), Some(0), "apply: {}", text(&out));
    let applied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "{id}: applied, stop window {} us, {} attempt(s)",
        applied["processes"][0]["result"]["stop_window_us"],
        applied["processes"][0]["result"]["attempts"]
    );
    load.progress(30, 3);

    // The fixed function is the one running: its original entry is redirected ...
    let base = load_base(pid, bin);
    let st = status(pid);
    let live: Vec<&serde_json::Value> = st["patches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["header"]["state"] == "live")
        .collect();
    assert_eq!(live.len(), 1, "{st:#}");
    assert_eq!(live[0]["header"]["patch_id"], id);
    let froms: Vec<u64> = live[0]["header"]["redirects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let hex = r["from"].as_str().unwrap().trim_start_matches("0x");
            u64::from_str_radix(hex, 16).unwrap()
        })
        .collect();
    assert!(
        froms.contains(&(base + sym)),
        "{function} ({:#x}) is not redirected: {froms:x?}",
        base + sym
    );
    // ... and the daemon answers as fixed.
    fixed(d.port);
    load.progress(30, 3);

    let out = run(suture().args(["revert", id, "--timeout", "60", "--pid", &pid.to_string()]));
    assert_eq!(out.status.code(), Some(0), "revert: {}", text(&out));
    load.progress(30, 3);
    let (ok, logins, failed, errors) = load.finish();
    eprintln!("{id}: load: {ok} set+get pairs, {logins} logins, {failed} failures");
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(
        ok > 100 && logins > 10,
        "load did not run: {ok} requests, {logins} logins"
    );

    // A reverted patch's region stays mapped (the program may still point into it), marked
    // "reverted" in its header: nothing may be live any more.
    let st = status(pid);
    for p in st["patches"].as_array().unwrap() {
        assert_eq!(p["header"]["patch_id"], id, "after revert: {st:#}");
        assert_eq!(p["header"]["state"], "reverted", "after revert: {st:#}");
    }
    original(d.port);
    assert!(
        matches!(
            Conn::connect(d.port).and_then(|mut c| c.auth("suture", "suture-pass")),
            Ok(OK)
        ),
        "daemon unusable after revert"
    );
}

// ---------------------------------------------------------------------------------------------
// suture build

/// Runs `suture build --json` on a fresh copy of `case/<tree>-src` (an unbuilt tree prepared
/// by memcached-case.sh) with the case's build command; returns the exit code, the report and
/// the copy (whose `memcached` is the rebuild).
fn suture_build(
    case: &Path,
    tree: &str,
    diff: &Path,
    target: &Path,
    dir: &Path,
) -> (Option<i32>, serde_json::Value, PathBuf) {
    let copy = dir.join("tree");
    let st = run(Command::new("cp")
        .arg("-a")
        .arg(case.join(format!("{tree}-src")))
        .arg(&copy));
    assert!(st.status.success(), "{}", text(&st));
    let build_cmd = std::fs::read_to_string(case.join("suture-build-cmd.txt")).unwrap();
    let out = run(suture()
        .args(["build", "--json", "--source"])
        .arg(&copy)
        .arg("--diff")
        .arg(diff)
        .args(["--build-cmd", build_cmd.trim(), "--target"])
        .arg(target)
        .arg("-o")
        .arg(dir.join("out")));
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("suture build --json: {e}: {}", text(&out)));
    eprintln!("suture build {tree}: exit {:?}", out.status.code());
    (out.status.code(), report, copy)
}

/// The verdict `suture build` gave a file of the diff.
fn verdict<'a>(report: &'a serde_json::Value, file: &str) -> &'a str {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == file)
        .unwrap_or_else(|| panic!("{file} not in the report: {report}"))["verdict"]
        .as_str()
        .unwrap()
}

/// The proxy half of the update (CVE-2023-46852, CVE-2023-46853) is code Debian does not
/// compile: every proxy file of the diff must be reported as such.
fn assert_proxy_not_compiled(report: &serde_json::Value) {
    for f in ["proto_proxy.c", "proxy_request.c", "proxy.h"] {
        assert_eq!(verdict(report, f), "not-compiled", "{f}: {report:#}");
    }
}

/// The single bundle of a report: (path, twin path), after checking it is bound to `target`'s
/// build-id and replaces exactly `functions`.
fn bundle(report: &serde_json::Value, target: &Path, functions: &[&str]) -> (PathBuf, PathBuf) {
    let b = report["bundles"].as_array().unwrap();
    assert_eq!(b.len(), 1, "{report:#}");
    let b = &b[0];
    assert_eq!(b["build_id"], build_id(target).as_str(), "{report:#}");
    assert_eq!(b["target"], target.to_str().unwrap());
    let got: Vec<&str> = b["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(got, functions, "{report:#}");
    (
        PathBuf::from(b["path"].as_str().unwrap()),
        PathBuf::from(b["twin"]["path"].as_str().unwrap()),
    )
}

// ---------------------------------------------------------------------------------------------
// tests

/// Debian's configuration (`--enable-sasl --enable-tls`) compiles none of the code the three
/// CVE patches change: memcached built without them is byte-identical to memcached built with
/// them, and `suture build` says so per file (sasl_defs.c: no change in the compiled code;
/// the proxy files: not compiled) and writes nothing. SASL itself is on and works (sasldb).
#[test]
fn debian_build_compiles_none_of_the_cve_fixes() {
    let Some(case) = case_dir() else { return };
    let dir = tmpdir("debian-config");
    let bin = case.join("vuln/memcached");
    assert!(
        std::fs::read(&bin).unwrap() == std::fs::read(case.join("debian/memcached")).unwrap(),
        "Debian's build with and without the CVE patches differ"
    );
    for f in [
        "sasl_server_userdb_checkpass",
        "proxy_process_command",
        "process_request",
    ] {
        assert_eq!(symbol(&bin, f), None, "{f} is compiled into Debian's build");
    }
    assert!(
        symbol(&bin, "init_sasl").is_some(),
        "SASL is not compiled in"
    );

    let sasl = case.join("sasl");
    let d = Daemon::start(&bin, &dir, &[("SASL_CONF_PATH", &sasl.join("conf"))]);
    assert_eq!(
        login(d.port, "suture", "suture-pass"),
        OK,
        "{}",
        d.log.display()
    );
    assert_eq!(login(d.port, "suture", "wrong"), AUTH_ERROR);
    let mut c = Conn::connect(d.port).unwrap();
    assert_eq!(
        c.set(b"k", b"v").unwrap(),
        AUTH_ERROR,
        "unauthenticated set accepted"
    );
    drop(d);

    let (code, report, _) = suture_build(&case, "vuln", &case.join("cve.diff"), &bin, &dir);
    assert_eq!(verdict(&report, "sasl_defs.c"), "no-change", "{report:#}");
    assert_proxy_not_compiled(&report);
    assert_eq!(report["outcome"], "no-change", "{report:#}");
    assert_eq!(code, Some(3));
    assert!(!dir.join("out/memcached.suture").exists());
}

/// The SASL password-check fix (CVE-2026-47783, CVE-2026-47784), built by `suture build` from
/// the CVE patches, goes live in a running memcached while authenticated clients keep it busy:
/// no request fails, the replaced function is the one redirected, the fixed behaviour is
/// observable from outside, and revert restores the original behaviour. The proxy fixes are
/// reported as not compiled.
#[test]
fn sasl_fix_goes_live_under_authenticated_load() {
    let Some(case) = case_dir() else { return };
    let dir = tmpdir("pwdb");
    let bin = case.join("vuln-pwdb/memcached");
    let (code, report, _) = suture_build(&case, "vuln-pwdb", &case.join("cve.diff"), &bin, &dir);
    assert_proxy_not_compiled(&report);
    assert_eq!(verdict(&report, "sasl_defs.c"), "patched", "{report:#}");
    assert_eq!(code, Some(0), "{report:#}");
    let (bundle, _) = bundle(&report, &bin, &["sasl_server_userdb_checkpass"]);

    // The password file: memcached passes the user to its check as `user@realm`, the realm
    // being the host name (sasl_server_new() gets it as server FQDN). `twice` is listed twice:
    // before the fix the check stops at the first line naming the user, so the second
    // password is refused; after it the whole file is scanned and the second one is accepted.
    // That is the fix's one functional difference visible from outside (the rest is timing).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let realm = match host.trim() {
        "" => String::new(),
        h => format!("@{h}"),
    };
    let pwdb = dir.join("pwdb");
    std::fs::write(
        &pwdb,
        format!("suture{realm}:suture-pass\ntwice{realm}:first-pass\ntwice{realm}:second-pass\n"),
    )
    .unwrap();
    let d = Daemon::start(
        &bin,
        &dir,
        &[
            ("SASL_CONF_PATH", &case.join("sasl/conf-pwdb")),
            ("MEMCACHED_SASL_PWDB", &pwdb),
        ],
    );
    let common = |port: u16| {
        assert_eq!(login(port, "suture", "suture-pass"), OK);
        assert_eq!(login(port, "twice", "first-pass"), OK);
        assert_eq!(login(port, "suture", "wrong"), AUTH_ERROR);
        assert_eq!(login(port, "nobody", "suture-pass"), AUTH_ERROR);
    };
    live_cycle(
        &d,
        &bin,
        &Live {
            path: &bundle,
            id: "memcached-sasl-cve",
            function: "sasl_server_userdb_checkpass",
            symbols: &bin,
        },
        &|port| {
            common(port);
            assert_eq!(
                login(port, "twice", "second-pass"),
                OK,
                "the fix is not live"
            );
        },
        &|port| {
            common(port);
            assert_eq!(
                login(port, "twice", "second-pass"),
                AUTH_ERROR,
                "the original check accepts the second entry"
            );
        },
    );
}

/// The memcached binary installed by apt (stripped) is reproduced bit for bit by Debian's
/// source package built with Debian's rules: same build-id, same bytes in every loaded section.
#[test]
fn apt_binary_is_reproduced_by_the_source_package() {
    let Some(case) = case_dir() else { return };
    let apt = Path::new(APT_MEMCACHED);
    assert!(
        apt.exists(),
        "{APT_MEMCACHED} missing (scripts/memcached-case.sh installs it)"
    );
    let rebuild = case.join("debian/memcached");
    assert_eq!(build_id(apt), build_id(&rebuild));
    let dir = tmpdir("apt");
    for sec in [
        ".text",
        ".rodata",
        ".data",
        ".data.rel.ro",
        ".eh_frame",
        ".dynsym",
    ] {
        let a = dir.join(format!("apt{sec}"));
        let r = dir.join(format!("rebuild{sec}"));
        for (elf, o) in [(apt, &a), (rebuild.as_path(), &r)] {
            let out = run(Command::new("objcopy")
                .args(["-O", "binary", "--only-section", sec])
                .arg(elf)
                .arg(o));
            assert!(out.status.success(), "{}", text(&out));
        }
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&r).unwrap());
        assert!(!x.is_empty(), "{sec} empty");
        assert!(
            x == y,
            "{sec} differs between the apt binary and the rebuild"
        );
    }
    assert_eq!(
        symbol(apt, "main"),
        None,
        "the apt binary is expected to be stripped"
    );
}

const APT_MEMCACHED: &str = "/usr/bin/memcached";

/// A fix of our own for Debian's build: the binary protocol's VERSION command answers
/// unauthenticated clients when SASL is on (it is in the pre-authentication allow list of
/// `authenticated()` in proto_bin.c); the fix makes it require authentication. The line is
/// replaced by a comment, so no line number below it moves.
fn own_fix(tree: &Path, dir: &Path) -> PathBuf {
    one_line_fix(
        tree,
        dir,
        "proto_bin.c",
        (
            "    case PROTOCOL_BINARY_CMD_VERSION:         /* FALLTHROUGH */\n",
            "    /* VERSION requires authentication (suture test fix) */\n",
        ),
    )
}

/// The unified diff (`a/FILE`, `b/FILE`) that replaces the one occurrence of `from` in `file`
/// of `tree` with `to`, written into `dir`.
fn one_line_fix(tree: &Path, dir: &Path, file: &str, (from, to): (&str, &str)) -> PathBuf {
    let src = std::fs::read_to_string(tree.join(file)).unwrap();
    assert_eq!(src.matches(from).count(), 1, "{file} changed upstream");
    let fixed = src.replace(from, to);
    let (a, b) = (dir.join("a"), dir.join("b"));
    for (d, text) in [(&a, &src), (&b, &fixed)] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join(file), text).unwrap();
    }
    let out = run(Command::new("diff")
        .args(["-u", &format!("a/{file}"), &format!("b/{file}")])
        .current_dir(dir));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let diff = dir.join(format!("{file}.diff"));
    std::fs::write(&diff, &out.stdout).unwrap();
    diff
}

/// VERSION without authentication: the version string, or None when refused.
fn version_unauthenticated(port: u16) -> Option<String> {
    let mut c = Conn::connect(port).unwrap();
    let r = c.call(0x0b, &[], &[], &[]).unwrap();
    match r.status {
        OK => Some(String::from_utf8_lossy(&r.value).into_owned()),
        AUTH_ERROR => None,
        s => panic!("VERSION: status {s:#x}"),
    }
}

/// Our own fix, built by `suture build` from Debian's source package, binds to the stripped
/// memcached installed by apt by its build-id (symbols from the reproducible rebuild) and goes
/// live in a running /usr/bin/memcached under authenticated load, then reverts.
#[test]
fn own_fix_binds_to_the_apt_binary_and_goes_live() {
    let Some(case) = case_dir() else { return };
    let dir = tmpdir("own-fix");
    let apt = Path::new(APT_MEMCACHED);
    assert!(
        apt.exists(),
        "{APT_MEMCACHED} missing (scripts/memcached-case.sh installs it)"
    );
    let diff = own_fix(&case.join("debian-src"), &dir);
    let (code, report, _) = suture_build(&case, "debian", &diff, apt, &dir);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(verdict(&report, "proto_bin.c"), "patched");
    // `authenticated()` is small and static: gcc inlines it into its only caller.
    let (bundle, twin) = bundle(&report, apt, &["try_read_command_binary"]);
    assert_eq!(
        report["bundles"][0]["twin"]["kind"], "rebuild",
        "{report:#}"
    );
    assert_eq!(build_id(&twin), build_id(apt));

    let d = Daemon::start(apt, &dir, &[("SASL_CONF_PATH", &case.join("sasl/conf"))]);
    live_cycle(
        &d,
        apt,
        &Live {
            path: &bundle,
            id: "memcached-version-auth",
            function: "try_read_command_binary",
            symbols: &twin,
        },
        &|port| {
            assert_eq!(version_unauthenticated(port), None, "the fix is not live");
            let mut c = Conn::connect(port).unwrap();
            assert_eq!(c.auth("suture", "suture-pass").unwrap(), OK);
            let r = c.call(0x0b, &[], &[], &[]).unwrap();
            assert_eq!((r.status, r.value.as_slice()), (OK, &b"1.6.18"[..]));
        },
        &|port| {
            assert_eq!(version_unauthenticated(port).as_deref(), Some("1.6.18"));
        },
    );
}

/// A fix in `main()` (one word of an error message): gcc builds main()'s local getopt_long
/// table from an unnamed constant in plain `.data` (it holds string addresses and the unit is
/// PIE), which `suture build` used to refuse as "writable data in .data that has no symbol".
/// The constant is carried by the patch: the build writes a bundle replacing main for the apt
/// binary.
#[test]
fn fix_in_main_with_its_options_table_is_built() {
    let Some(case) = case_dir() else { return };
    let dir = tmpdir("main-fix");
    let apt = Path::new(APT_MEMCACHED);
    let diff = one_line_fix(
        &case.join("debian-src"),
        &dir,
        "memcached.c",
        (
            "perror(\"failed to ignore SIGPIPE; sigaction\");",
            "perror(\"could not ignore SIGPIPE; sigaction\");",
        ),
    );
    let (code, report, _) = suture_build(&case, "debian", &diff, apt, &dir);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(verdict(&report, "memcached.c"), "patched");
    bundle(&report, apt, &["main"]);
}
