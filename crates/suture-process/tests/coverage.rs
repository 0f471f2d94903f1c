//! The "must work for" cases of live patching, each on a fixture program compiled at test time
//! (`tests/fixtures/<case>/`): the program prints what it computes, and each test checks the
//! output before the patch, while it is live, and after revert.
//!
//! - `tls_*`: thread-local variables of a shared library (general- and local-dynamic access
//!   through `__tls_get_addr`), of a PIE executable (accesses relaxed to local-exec), of a
//!   library loaded with `dlopen` (dynamic TLS), and a refusal when nothing in the process
//!   records where a library's TLS is. Several threads, each with its own values. The library
//!   and the executable are patched in the same process and reverted in either order.
//! - `ifunc_*`: calls of libc IFUNCs (`strlen`, `memcpy`) and of an IFUNC defined by the
//!   executable; IFUNCs nothing has resolved (a library's, glibc's), chosen by running their
//!   resolvers in the target and compared with ld.so's own choice; resolvers that fault or
//!   hang, refused without harm.
//! - `stacking_*`: two different patches of one function, and patches of two functions
//!   reverted in either order.
//! - `new_code_and_data_*`: new functions and globals, the original's static local and
//!   unchanged static function, libc's `stderr`; PIE and non-PIE executables. `stderr` used
//!   first by a fix (no copy in the executable): refused with the way out, then applied when
//!   built with `-mno-direct-extern-access`.
//!
//! Every child process is killed on drop; work directories are per test.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use suture_process::apply::{apply, revert, status, ApplyOptions};
use suture_process::ids::Pid;
use suture_process::link::{Plan, PAGE};
use suture_process::symbols::ElfSymbols;
use suture_testkit::cc::gcc;
use suture_testkit::{KillOnDrop, Lines, Scratch, TIMEOUT, WAIT};

const UNIT_FLAGS: [&str; 5] = ["-c", "-O2", "-g", "-ffunction-sections", "-fdata-sections"];

// ---- building ------------------------------------------------------------------------------

fn fixture(case: &str, file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A fresh work directory for one test.
fn work_dir(test: &str) -> Scratch {
    Scratch::new(env!("CARGO_TARGET_TMPDIR"), "coverage", test)
}

/// Compiles `source` as `<unit>.c` in `dir/<side>/` (the file name must match between the
/// original and the fixed side: statics are named by it). Returns the object's path.
fn object(dir: &Path, side: &str, unit: &str, source: &str, extra: &[&str]) -> PathBuf {
    let d = dir.join(side);
    std::fs::create_dir_all(&d).unwrap();
    let c = format!("{unit}.c");
    let o = format!("{unit}.o");
    std::fs::write(d.join(&c), source).unwrap();
    let mut args = UNIT_FLAGS.to_vec();
    args.extend_from_slice(extra);
    args.extend([c.as_str(), "-o", o.as_str()]);
    gcc(&d, &args);
    d.join(o)
}

/// The patch object `suture diff` makes of two builds of a unit.
fn patch(orig: &Path, fixed: &Path) -> Vec<u8> {
    let a = std::fs::read(orig).unwrap();
    let b = std::fs::read(fixed).unwrap();
    let (a, b) = (
        suture_object::Object::parse(&a).unwrap(),
        suture_object::Object::parse(&b).unwrap(),
    );
    let d = suture_object::analyze(&a, &b).unwrap();
    assert_eq!(
        d.report.status,
        suture_object::Status::Patchable,
        "{}",
        serde_json::to_string_pretty(&d.report).unwrap()
    );
    suture_object::emit::emit(&d).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---- running -------------------------------------------------------------------------------

/// A running fixture program, killed on drop; its stdout and stderr lines arrive on channels.
struct Program {
    child: KillOnDrop,
    out: Lines,
    err: Lines,
    pid: Pid,
}

impl Program {
    fn spawn(cmd: &mut Command) -> Program {
        let mut child = KillOnDrop(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = Lines::of(child.stdout.take().unwrap());
        let err = Lines::of(child.stderr.take().unwrap());
        let pid = Pid(child.id() as i32);
        Program {
            child,
            out,
            err,
            pid,
        }
    }

    /// Waits until every line in `want` has been printed on stdout (in any order, later than
    /// anything read so far) and returns the last line read.
    fn expect_all(&self, want: &[String]) -> String {
        let mut pending: BTreeSet<&String> = want.iter().collect();
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.0.recv_timeout(left) {
                Ok(l) => {
                    pending.remove(&l);
                    last = l;
                }
                Err(_) => panic!(
                    "process {} never printed {pending:?} (last line {last:?})",
                    self.pid
                ),
            }
        }
        last
    }

    /// The next stdout line that satisfies `pred`.
    fn expect(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.0.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("process {} never printed {what}", self.pid),
            }
        }
    }

    /// The next stderr line starting with `prefix`.
    fn expect_err(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.0.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("process {} never printed {prefix:?} on stderr", self.pid),
            }
        }
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the program died");
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid.0)).unwrap();
        let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
        assert!(
            !matches!(state, Some("T" | "t")),
            "target left stopped: {state:?}"
        );
    }
}

fn opts(id: &str, object: Option<&str>) -> ApplyOptions {
    ApplyOptions {
        patch_id: id.into(),
        object: object.map(str::to_string),
        timeout: TIMEOUT,
        ..Default::default()
    }
}

fn revert_now(pid: Pid, id: &str) {
    revert(pid, id, TIMEOUT).unwrap_or_else(|e| panic!("revert {id}: {e}"));
}

/// A value of `key=` in a line like `c=12 r=0`.
fn field(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

// ---- thread-local storage ------------------------------------------------------------------

/// Builds the library's patch: returns (libtls.so original object, patch).
fn libtls(dir: &Path) -> (PathBuf, Vec<u8>) {
    let pic = ["-fPIC"];
    let orig = object(dir, "orig", "libtls", &fixture("tls", "libtls.c"), &pic);
    let fixed = object(
        dir,
        "fixed",
        "libtls",
        &fixture("tls", "libtls.fixed.c"),
        &pic,
    );
    let p = patch(&orig, &fixed);
    (orig, p)
}

/// TLS of a shared library (general- and local-dynamic accesses linked with a `tls_index`
/// of the patch's own and a call of `__tls_get_addr`) and of a PIE executable built with
/// `-fPIC` (the same access models relaxed to local-exec), in three threads with distinct
/// values, the two patches live at once and reverted in the order they were applied (they
/// patch different objects). A library whose TLS nothing in the process touches is refused.
#[test]
fn tls_of_a_library_and_of_the_executable_patched_in_one_process() {
    let dir = work_dir("tls");
    let pic = ["-fPIC"];
    let (lib_o, lib_patch) = libtls(&dir);
    let exe_o = object(&dir, "orig", "exetls", &fixture("tls", "exetls.c"), &pic);
    let exe_fixed = object(
        &dir,
        "fixed",
        "exetls",
        &fixture("tls", "exetls.fixed.c"),
        &pic,
    );
    let cold_o = object(&dir, "orig", "libcold", &fixture("tls", "libcold.c"), &pic);
    let cold_fixed = object(
        &dir,
        "fixed",
        "libcold",
        &fixture("tls", "libcold.fixed.c"),
        &pic,
    );
    let ie = ["-fPIC", "-ftls-model=initial-exec"];
    let ie_o = object(&dir, "orig", "libie", &fixture("tls", "libie.c"), &ie);
    let ie_fixed = object(
        &dir,
        "fixed",
        "libie",
        &fixture("tls", "libie.fixed.c"),
        &ie,
    );
    let exe_patch = patch(&exe_o, &exe_fixed);
    let cold_patch = patch(&cold_o, &cold_fixed);
    let ie_patch = patch(&ie_o, &ie_fixed);
    // The patches really use the dynamic access models this test is about.
    for (name, p) in [("library", &lib_patch), ("executable", &exe_patch)] {
        let requests = Plan::new(p, PAGE).unwrap().requests();
        assert!(
            requests.iter().any(|r| r.name() == "__tls_get_addr"),
            "the {name} patch does not call __tls_get_addr: {requests:?}"
        );
    }
    std::fs::write(dir.join("main.c"), fixture("tls", "main.c")).unwrap();
    gcc(&dir, &["-shared", s(&lib_o), "-o", "libtls.so"]);
    gcc(&dir, &["-shared", s(&cold_o), "-o", "libcold.so"]);
    gcc(&dir, &["-shared", s(&ie_o), "-o", "libie.so"]);
    gcc(
        &dir,
        &[
            "-O2",
            "-fPIE",
            "-pie",
            "main.c",
            s(&exe_o),
            "-L.",
            "-ltls",
            "-lcold",
            "-lie",
            "-Wl,-rpath,$ORIGIN",
            "-lpthread",
            "-o",
            "prog",
        ],
    );
    let mut prog = Program::spawn(&mut Command::new(dir.join("prog")));
    let pid = prog.pid;
    type F = dyn Fn(i64) -> i64;
    let state3 = |lib: &F, exe: &F, ie: &F| -> Vec<String> {
        (1..=3)
            .map(|i| format!("T{i} lib={} exe={} ie={} cold=1", lib(i), exe(i), ie(i)))
            .collect()
    };
    let state = |lib: &F, exe: &F| state3(lib, exe, &|i| 8 * i);
    prog.expect_all(&state(&|i| 101 * i, &|i| 11 * i));

    // Nothing records where libcold's TLS is: refused by name, target untouched.
    let e = apply(pid, &cold_patch, &opts("cold", Some("libcold.so")))
        .expect_err("a library TLS nothing located must be refused");
    let msg = e.to_string();
    assert!(
        msg.contains("cold_tls") && msg.contains("module id") && msg.contains("untouched"),
        "{msg}"
    );
    assert!(no_live(pid));

    apply(pid, &lib_patch, &opts("lib-tls", Some("libtls.so"))).expect("apply to the library");
    prog.expect_all(&state(&|i| 1001 * i + 500, &|i| 11 * i));
    apply(pid, &exe_patch, &opts("exe-tls", None)).expect("apply to the executable");
    prog.expect_all(&state(&|i| 1001 * i + 500, &|i| 101 * i + 50));
    // An initial-exec library: only its R_X86_64_TPOFF64 slots say where its static TLS is.
    apply(pid, &ie_patch, &opts("ie-tls", Some("libie.so"))).expect("apply to libie");
    let all_live = |ie: &F| state3(&|i| 1001 * i + 500, &|i| 101 * i + 50, ie);
    prog.expect_all(&all_live(&|i| 71 * i + 30));
    assert_eq!(status(pid).unwrap().len(), 3);
    revert_now(pid, "ie-tls");
    prog.expect_all(&all_live(&|i| 8 * i + 3));
    let state = |lib: &F, exe: &F| state3(lib, exe, &|i| 8 * i + 3);
    let live: Vec<_> = status(pid)
        .unwrap()
        .into_iter()
        .filter(|p| p.header.state == suture_process::header::State::Live)
        .collect();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live.iter().any(|p| p.header.object.ends_with("libtls.so")));
    assert!(live.iter().any(|p| p.header.object.ends_with("prog")));

    // The library's patch first: the executable's stays live. The original code now reads
    // what the patch wrote into each thread's variables.
    revert_now(pid, "lib-tls");
    prog.expect_all(&state(&|i| 101 * i + 50, &|i| 101 * i + 50));
    revert_now(pid, "exe-tls");
    prog.expect_all(&state(&|i| 101 * i + 50, &|i| 11 * i + 5));
    assert!(no_live(pid));
    prog.assert_alive();
}

/// A library loaded with `dlopen` has dynamic TLS (blocks allocated per thread by
/// `__tls_get_addr`, outside the static TLS area): the patch reaches each thread's block
/// through its module id. A patch object compiled for initial-exec TLS is not the code of that
/// library and is refused; a library built with initial-exec TLS is patched as well.
#[test]
fn tls_of_a_dlopened_library_is_reached_through_its_module() {
    let dir = work_dir("tls-dlopen");
    let (lib_o, lib_patch) = libtls(&dir);
    std::fs::write(dir.join("dlmain.c"), fixture("tls", "dlmain.c")).unwrap();
    gcc(&dir, &["-shared", s(&lib_o), "-o", "libtls.so"]);
    gcc(
        &dir,
        &["-O2", "dlmain.c", "-ldl", "-lpthread", "-o", "dlprog"],
    );
    let lib = dir.join("libtls.so");
    let mut prog = Program::spawn(Command::new(dir.join("dlprog")).arg(&lib));
    let pid = prog.pid;
    let state = |f: &dyn Fn(i64) -> i64| -> Vec<String> {
        (1..=3).map(|i| format!("T{i} lib={}", f(i))).collect()
    };
    prog.expect_all(&state(&|i| 101 * i));

    let ie = ["-fPIC", "-ftls-model=initial-exec"];
    let ie_orig = object(&dir, "ie-orig", "libtls", &fixture("tls", "libtls.c"), &ie);
    let ie_fixed = object(
        &dir,
        "ie-fixed",
        "libtls",
        &fixture("tls", "libtls.fixed.c"),
        &ie,
    );
    let ie_patch = patch(&ie_orig, &ie_fixed);
    // The initial-exec object is not the code libtls.so was built from: refused as such.
    let e = apply(pid, &ie_patch, &opts("dl-ie", Some("libtls.so")))
        .expect_err("a patch object of another build must be refused");
    let msg = e.to_string();
    assert!(
        msg.contains("does not run the code this patch was made from")
            && msg.contains("lib_report")
            && msg.contains("untouched"),
        "{msg}"
    );
    assert!(no_live(pid));
    prog.expect_all(&state(&|i| 101 * i));
    // A library that *was* built with initial-exec TLS and is dlopen()ed: glibc places its
    // block in the static TLS area, so its code, and the patch's, reach it through the thread
    // pointer.
    gcc(&dir, &["-shared", s(&ie_orig), "-o", "libtls-ie.so"]);
    let mut ie_prog =
        Program::spawn(Command::new(dir.join("dlprog")).arg(dir.join("libtls-ie.so")));
    ie_prog.expect_all(&state(&|i| 101 * i));
    apply(ie_prog.pid, &ie_patch, &opts("dl-ie", Some("libtls-ie.so"))).expect("apply");
    ie_prog.expect_all(&state(&|i| 1001 * i + 500));
    revert_now(ie_prog.pid, "dl-ie");
    ie_prog.expect_all(&state(&|i| 101 * i + 50));
    ie_prog.assert_alive();

    apply(pid, &lib_patch, &opts("dl-tls", Some("libtls.so"))).expect("apply");
    prog.expect_all(&state(&|i| 1001 * i + 500));
    revert_now(pid, "dl-tls");
    prog.expect_all(&state(&|i| 101 * i + 50));
    prog.assert_alive();
}

// ---- IFUNC ---------------------------------------------------------------------------------

/// The patch calls libc's `strlen` and `memcpy` (IFUNCs in libc) and the executable's own
/// IFUNC `add_one`: each resolves to the implementation the process already uses. A patch
/// calling `sub_one`, an IFUNC nothing in the process has resolved, gets its resolver's choice.
#[test]
fn ifunc_symbols_of_libc_and_of_the_executable() {
    let dir = work_dir("ifunc");
    let orig = object(&dir, "orig", "text", &fixture("ifunc", "text.c"), &[]);
    let fixed = object(
        &dir,
        "fixed",
        "text",
        &fixture("ifunc", "text.fixed.c"),
        &[],
    );
    let cold_obj = object(&dir, "cold", "text", &fixture("ifunc", "text.cold.c"), &[]);
    let ifuncs = object(&dir, "orig", "ifuncs", &fixture("ifunc", "ifuncs.c"), &[]);
    let good = patch(&orig, &fixed);
    let cold = patch(&orig, &cold_obj);
    let requests = Plan::new(&good, PAGE).unwrap().requests();
    for want in ["strlen", "memcpy", "add_one"] {
        assert!(
            requests.iter().any(|r| r.name() == want),
            "the patch does not call {want}: {requests:?}"
        );
    }
    std::fs::write(dir.join("main.c"), fixture("ifunc", "main.c")).unwrap();
    gcc(&dir, &["-O2", "main.c", s(&orig), s(&ifuncs), "-o", "prog"]);
    let exe = ElfSymbols::parse("prog", &std::fs::read(dir.join("prog")).unwrap()).unwrap();
    assert!(exe.global("add_one").unwrap().ifunc && exe.global("sub_one").unwrap().ifunc);

    let mut prog = Program::spawn(&mut Command::new(dir.join("prog")));
    let pid = prog.pid;
    prog.expect_all(&["m=1 a=2".to_string()]);
    // The libc the program runs really implements both as IFUNCs.
    let libc = mapped_libc(pid);
    assert!(libc.global("strlen").unwrap().ifunc && libc.global("memcpy").unwrap().ifunc);

    // sub_one: its resolver runs in the target (see ifunc_never_resolved_*).
    apply(pid, &cold, &opts("cold", None)).expect("apply");
    prog.expect_all(&["m=9 a=2".to_string()]);
    revert_now(pid, "cold");
    prog.expect_all(&["m=1 a=2".to_string()]);

    apply(pid, &good, &opts("ifunc", None)).expect("apply");
    // strlen("hello") = 5, add_one(5) = 6, memcpy copied the word: 6 * 1000 + 'o'.
    prog.expect_all(&["m=6111 a=2".to_string()]);
    revert_now(pid, "ifunc");
    prog.expect_all(&["m=1 a=2".to_string()]);
    prog.assert_alive();
}

/// The symbols of the libc `pid` maps.
fn mapped_libc(pid: Pid) -> ElfSymbols {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", pid.0)).unwrap();
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so"))
        .expect("libc mapped");
    ElfSymbols::parse(libc, &std::fs::read(libc).unwrap()).unwrap()
}

/// Builds the `ifunc-cold` fixture's `libsel.so` and `prog` (linked with `orig`) in `dir`.
fn ifunc_cold_program(dir: &Path, orig: &Path) {
    std::fs::write(dir.join("libsel.c"), fixture("ifunc-cold", "libsel.c")).unwrap();
    gcc(
        dir,
        &["-O2", "-fPIC", "-shared", "libsel.c", "-o", "libsel.so"],
    );
    std::fs::write(dir.join("main.c"), fixture("ifunc-cold", "main.c")).unwrap();
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let args = [
        "-O2",
        "main.c",
        s(orig),
        "-L.",
        "-lsel",
        &rpath,
        "-o",
        "prog",
    ];
    gcc(dir, &args);
}

/// IFUNCs nothing in the process has resolved (no GOT slot holds an implementation): a
/// library's `checksum`, whose resolver honours an environment override, and glibc's
/// `wcsrchr` and `strstr` (glibc calls neither itself, so it has no IRELATIVE slot for them).
/// The patch calls them and takes their addresses; suture runs the resolvers in the target.
/// Then the program makes its own first calls (ld.so's lazy binding through the PLT) and asks
/// `dlsym`, which runs the same resolvers in ld.so: the results and addresses must be the ones
/// the patch got. The borrowed thread's registers, vector registers included, are as before.
#[test]
fn ifunc_never_resolved_is_chosen_as_ld_so_would() {
    let dir = work_dir("ifunc-cold");
    let src = |f: &str| fixture("ifunc-cold", f);
    let orig = object(&dir, "orig", "report", &src("report.c"), &[]);
    let fixed = object(&dir, "fixed", "report", &src("report.fixed.c"), &[]);
    ifunc_cold_program(&dir, &orig);

    let mut prog = Program::spawn(
        Command::new(dir.join("prog"))
            .env("SEL_IMPL", "2")
            .env_remove("LD_BIND_NOW")
            .stdin(Stdio::piped()),
    );
    let mut stdin = prog.child.stdin.take().unwrap();
    let pid = prog.pid;
    prog.expect_all(&["ready".to_string()]);
    // glibc really has no resolved slot of its own for them.
    let libc = mapped_libc(pid);
    for name in ["wcsrchr", "strstr"] {
        let sym = libc.global(name).unwrap();
        assert!(sym.ifunc, "{name} is an IFUNC in this libc");
        assert!(
            !libc
                .dyn_relocs
                .iter()
                .any(|r| r.symbol.is_none() && r.addend as u64 == sym.value),
            "libc resolves {name} for itself: the test would not exercise an unresolved IFUNC"
        );
    }

    apply(pid, &patch(&orig, &fixed), &opts("cold", None)).expect("apply");
    stdin.write_all(b"report\n").unwrap();
    let patched = prog.expect("the patched report", |l| l.starts_with("report "));
    stdin.write_all(b"call\n").unwrap();
    let native = prog.expect("the program's own calls", |l| l.starts_with("call "));
    // checksum("abc") with SEL_IMPL=2: the wide variant (not what the CPU would pick).
    let plain = "abc"
        .bytes()
        .fold(0u32, |h, c| h.wrapping_mul(31) + u32::from(c));
    assert_eq!(
        field(&patched, "checksum"),
        i64::from(plain ^ 0x20000),
        "{patched}"
    );
    assert_eq!(field(&patched, "wcsrchr"), 3, "{patched}");
    assert_eq!(field(&patched, "strstr"), 10, "{patched}");
    let tail = |l: &str| l.split_once(' ').unwrap().1.to_string();
    assert_eq!(
        tail(&patched),
        tail(&native),
        "the patch's IFUNC choices differ from ld.so's"
    );
    // The thread suture borrowed (the main thread, asleep with a value in xmm15) got its
    // vector registers back: the resolver of checksum clears xmm15.
    stdin.write_all(b"xmm\n").unwrap();
    prog.expect_all(&["xmm kept".to_string()]);
    revert_now(pid, "cold");
    stdin.write_all(b"report\n").unwrap();
    prog.expect_all(&["report none".to_string()]);
    prog.assert_alive();
}

/// A resolver that faults and one that never returns: the patch is refused naming the
/// failure, the program never sees the fault, keeps running its original code and answers.
#[test]
fn ifunc_resolver_that_faults_or_hangs_is_refused_and_harms_nothing() {
    let dir = work_dir("ifunc-bad");
    let src = |f: &str| fixture("ifunc-cold", f);
    let orig = object(&dir, "orig", "report", &src("report.c"), &[]);
    let crash = object(&dir, "crash", "report", &src("report.crash.c"), &[]);
    let hang = object(&dir, "hang", "report", &src("report.hang.c"), &[]);
    ifunc_cold_program(&dir, &orig);
    let mut prog = Program::spawn(Command::new(dir.join("prog")).stdin(Stdio::piped()));
    let mut stdin = prog.child.stdin.take().unwrap();
    let pid = prog.pid;
    prog.expect_all(&["ready".to_string()]);
    for (id, obj, word) in [
        ("crash", &crash, "signal 11"),
        ("hang", &hang, "did not return"),
    ] {
        let e = apply(pid, &patch(&orig, obj), &opts(id, None)).expect_err("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("IFUNC resolver") && msg.contains(word) && msg.contains("untouched"),
            "{msg}"
        );
        assert!(no_live(pid));
        stdin.write_all(b"report\n").unwrap();
        prog.expect_all(&["report none".to_string()]);
        prog.assert_alive();
    }
    // Nothing of suture's is left mapped but what the process had.
    assert!(status(pid).unwrap().is_empty());
}

// ---- stacking ------------------------------------------------------------------------------

/// Patch A and then a different patch B replace the same function: B's code runs; reverting A
/// under B is refused; reverting B brings A's code back, reverting A the original. Patches of
/// two different functions revert in either order.
#[test]
fn stacking_two_patches_of_one_function_and_of_two_functions() {
    let dir = work_dir("stack");
    let orig = object(&dir, "orig", "f", &fixture("stack", "f.c"), &[]);
    let sides: Vec<Vec<u8>> = ["f.a.c", "f.b.c", "f.g.c"]
        .iter()
        .map(|file| {
            let fixed = object(&dir, file, "f", &fixture("stack", file), &[]);
            patch(&orig, &fixed)
        })
        .collect();
    let (a, b, g) = (&sides[0], &sides[1], &sides[2]);
    std::fs::write(dir.join("main.c"), fixture("stack", "main.c")).unwrap();
    gcc(&dir, &["-O2", "main.c", s(&orig), "-o", "prog"]);
    let mut prog = Program::spawn(&mut Command::new(dir.join("prog")));
    let pid = prog.pid;
    let line = |f: i32, g: i32| vec![format!("f={f} g={g}")];
    prog.expect_all(&line(1, 10));

    apply(pid, a, &opts("A", None)).expect("A");
    prog.expect_all(&line(2, 10));
    apply(pid, b, &opts("B", None)).expect("B on top of A");
    prog.expect_all(&line(3, 10));
    let e = revert(pid, "A", Duration::from_secs(1)).expect_err("A is under B");
    assert!(e.to_string().contains("\"B\" was applied on top"), "{e}");
    prog.expect_all(&line(3, 10));
    revert_now(pid, "B");
    prog.expect_all(&line(2, 10));
    revert_now(pid, "A");
    prog.expect_all(&line(1, 10));
    assert!(no_live(pid));

    // Different functions: any order.
    apply(pid, a, &opts("A", None)).expect("A again");
    apply(pid, g, &opts("G", None)).expect("G");
    prog.expect_all(&line(2, 20));
    revert_now(pid, "A");
    prog.expect_all(&line(1, 20));
    revert_now(pid, "G");
    prog.expect_all(&line(1, 10));
    apply(pid, a, &opts("A", None)).expect("A once more");
    apply(pid, g, &opts("G", None)).expect("G once more");
    prog.expect_all(&line(2, 20));
    revert_now(pid, "G");
    prog.expect_all(&line(2, 10));
    revert_now(pid, "A");
    prog.expect_all(&line(1, 10));
    assert!(no_live(pid));
    prog.assert_alive();
}

// ---- new code and data, PIE and non-PIE ------------------------------------------------------

/// New functions and new globals (zero and initialised), the original's static local (the
/// counter carries on from where the original left it) and unchanged static function, and
/// libc's `stderr`.
fn new_code_and_data(test: &str, pie: bool) {
    let dir = work_dir(test);
    let (cflag, lflag) = if pie {
        ("-fPIE", "-pie")
    } else {
        ("-fno-pie", "-no-pie")
    };
    let orig = object(
        &dir,
        "orig",
        "unit",
        &fixture("features", "unit.c"),
        &[cflag],
    );
    let fixed = object(
        &dir,
        "fixed",
        "unit",
        &fixture("features", "unit.fixed.c"),
        &[cflag],
    );
    let p = patch(&orig, &fixed);
    std::fs::write(dir.join("main.c"), fixture("features", "main.c")).unwrap();
    gcc(
        &dir,
        &["-O2", cflag, lflag, "main.c", s(&orig), "-o", "prog"],
    );
    let exe = ElfSymbols::parse("prog", &std::fs::read(dir.join("prog")).unwrap()).unwrap();
    assert_eq!(exe.relocatable, pie, "ET_DYN exactly when PIE");

    let mut prog = Program::spawn(&mut Command::new(dir.join("prog")));
    let pid = prog.pid;
    // Let the original count a while, so that a restarted counter would show.
    let before = prog.expect("c >= 50", |l| field(l, "c") >= 50 && field(l, "r") == 0);
    let before = field(&before, "c");
    apply(pid, &p, &opts("features", None)).expect("apply");
    // The first line computed by the patched counter (main calls counter before report, so
    // report is patched too): twice(base()) + bonus = 2 * 7 + 5, and the counter carries on
    // the original's static local.
    let live = prog.expect("a patched counter", |l| field(l, "c") > 1_000_000);
    assert_eq!(field(&live, "r"), 19, "{live}");
    let live = field(&live, "c");
    assert!(
        live - 1_000_000 > before,
        "the patched counter must carry on the original's static local: {before} then {live}"
    );
    // patched_calls (a new zero-initialised global) counts on libc's stderr.
    let first = prog.expect_err("report ");
    let n: i64 = first["report ".len()..].parse().unwrap();
    assert!(n >= 1, "{first}");
    prog.expect_err(&format!("report {}", n + 1));
    revert_now(pid, "features");
    let after = prog.expect("the original counter", |l| field(l, "c") < 1_000_000);
    assert_eq!(field(&after, "r"), 0, "{after}");
    let after = field(&after, "c");
    assert!(
        after > live - 1_000_000,
        "original code, same static local: {live} then {after}"
    );
    assert!(no_live(pid));
    prog.assert_alive();
}

#[test]
fn new_code_and_data_in_a_pie_executable() {
    new_code_and_data("features-pie", true);
}

#[test]
fn new_code_and_data_in_a_non_pie_executable() {
    new_code_and_data("features-nopie", false);
}

/// A fix that writes to `stderr`, which the program never used: its PIE executable has no copy
/// of it, so the patch needs glibc's own, more than 2 GiB away. A patch of units compiled
/// the default way reads `stderr` PC-relatively (assuming a copy relocation): refused, and the
/// message says how to build it. The same units compiled with `-mno-direct-extern-access`
/// (what `suture build` does) read it through a GOT slot: applied, and the program's stderr
/// shows the fix.
#[test]
fn stderr_first_used_by_the_fix() {
    let dir = work_dir("stderr-first");
    let src = |f: &str| fixture("stderr-first", f);
    let orig = object(&dir, "orig", "check", &src("check.c"), &[]);
    let fixed = object(&dir, "fixed", "check", &src("check.fixed.c"), &[]);
    let indirect = ["-mno-direct-extern-access"];
    let orig_got = object(&dir, "orig-got", "check", &src("check.c"), &indirect);
    let fixed_got = object(&dir, "fixed-got", "check", &src("check.fixed.c"), &indirect);
    std::fs::write(dir.join("main.c"), src("main.c")).unwrap();
    gcc(&dir, &["-O2", "main.c", s(&orig), "-o", "prog"]);
    let exe = ElfSymbols::parse("prog", &std::fs::read(dir.join("prog")).unwrap()).unwrap();
    assert!(exe.relocatable, "a PIE executable");
    assert!(exe.global("stderr").is_none(), "no copy of stderr");

    let mut prog = Program::spawn(&mut Command::new(dir.join("prog")));
    let pid = prog.pid;
    prog.expect_all(&["v=8".to_string()]);
    let e = apply(pid, &patch(&orig, &fixed), &opts("direct", None)).expect_err("out of reach");
    let msg = e.to_string();
    for want in [
        "stderr",
        "out of reach",
        "copy relocation",
        "-mno-direct-extern-access",
        "untouched",
    ] {
        assert!(msg.contains(want), "{want:?} missing: {msg}");
    }
    assert!(status(pid).unwrap().is_empty());

    apply(pid, &patch(&orig_got, &fixed_got), &opts("got", None)).expect("apply");
    prog.expect_err("check: 9 clamped");
    prog.expect_all(&["v=7".to_string()]);
    revert_now(pid, "got");
    prog.expect_all(&["v=8".to_string()]);
    prog.assert_alive();
}

/// A fix of a function whose local table of options gcc initialises from an unnamed constant
/// in plain `.data` (PIE: the table holds string addresses): the patch carries its own copy of
/// the constant with its relocations, and the patched lookup finds the same options.
#[test]
fn unnamed_constant_initialiser_in_data_is_carried() {
    let dir = work_dir("options-table");
    let src = |f: &str| fixture("options-table", f);
    let orig = object(&dir, "orig", "unit", &src("unit.c"), &[]);
    let fixed = object(&dir, "fixed", "unit", &src("unit.fixed.c"), &[]);
    std::fs::write(dir.join("main.c"), src("main.c")).unwrap();
    gcc(&dir, &["-O2", "main.c", s(&orig), "-o", "prog"]);
    // The construct is there: the unit's .data holds no symbol at all.
    let o = std::fs::read(&orig).unwrap();
    let o = suture_object::Object::parse(&o).unwrap();
    let data = o
        .sections
        .iter()
        .position(|x| x.name == ".data" && x.size > 0)
        .expect("an unnamed constant in .data");
    assert!(!o.symbols.iter().any(|x| {
        x.section().is_some_and(|i| i.0 as usize == data)
            && x.kind == suture_object::elf::SymKind::Object
    }));

    let mut prog = Program::spawn(&mut Command::new(dir.join("prog")));
    let pid = prog.pid;
    prog.expect_all(&["v=7 w=40".to_string()]);
    apply(pid, &patch(&orig, &fixed), &opts("table", None)).expect("apply");
    prog.expect_all(&["v=107 w=140".to_string()]);
    revert_now(pid, "table");
    prog.expect_all(&["v=7 w=40".to_string()]);
    prog.assert_alive();
}

/// No patch is live in `pid` (reverted regions stay mapped, retired: see apply.rs).
fn no_live(pid: Pid) -> bool {
    status(pid)
        .unwrap()
        .iter()
        .all(|p| p.header.state != suture_process::header::State::Live)
}

/// A library built with `-fvisibility=hidden`: the fixed unit calls a helper and reads a table
/// of another unit, both hidden (local in the linked library). The executable exports a
/// `helper` of its own, first in search order: the patch must still bind to the library's
/// hidden one, as the static linker bound the original. Regression: "cannot resolve helper:
/// not defined by the executable or any loaded library".
#[test]
fn hidden_symbols_of_a_library_bind_inside_it() {
    let dir = work_dir("hidden");
    let d = dir.path();
    let hidden = ["-fPIC", "-fvisibility=hidden"];
    let unit = |k: i32| {
        format!(
            "int helper(int x);\nextern const int table[2];\n\
             __attribute__((visibility(\"default\"))) int answer(int x) \
             {{ return helper(x) + table[1] + {k}; }}\n"
        )
    };
    let a_orig = object(d, "orig", "a", &unit(1), &hidden);
    let a_fixed = object(d, "fixed", "a", &unit(2), &hidden);
    let b = object(
        d,
        "orig",
        "b",
        "int helper(int x) { return x * 10; }\nconst int table[2] = {3, 100};\n",
        &hidden,
    );
    gcc(d, &["-shared", "-o", "libhidden.so", s(&a_orig), s(&b)]);
    std::fs::write(
        d.join("main.c"),
        "#include <stdio.h>\n#include <unistd.h>\nint answer(int x);\n\
         int helper(int x) { return -1000 + x; }\n\
         int main(void) { for (;;) { printf(\"answer=%d\\n\", answer(4)); fflush(stdout); \
         usleep(2000); } }\n",
    )
    .unwrap();
    gcc(
        d,
        &[
            "-O2",
            "-rdynamic",
            "main.c",
            "-L.",
            "-lhidden",
            &format!("-Wl,-rpath,{}", d.display()),
            "-o",
            "prog",
        ],
    );
    let p = Program::spawn(&mut Command::new(d.join("prog")));
    p.expect("the original", |l| l == "answer=141");
    let patch = patch(&a_orig, &a_fixed);
    apply(p.pid, &patch, &opts("hidden", Some("libhidden.so"))).expect("apply");
    p.expect("the fix, bound to the hidden helper", |l| l == "answer=142");
    revert_now(p.pid, "hidden");
    p.expect("the original again", |l| l == "answer=141");
    assert!(no_live(p.pid));
}
