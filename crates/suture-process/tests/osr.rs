//! On-stack replacement on real programs built with gcc -O2 -g: frames of replaced functions
//! that never return (a connection thread's loop, `main`'s epoll loop, a forked helper's loop)
//! move to the fixed code at the equivalent call site while their connections stay open, and
//! revert moves them back. Without the builder's maps the same patches are refused as busy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use suture_process::apply::{apply, revert_timed, ApplyError, ApplyOptions};
use suture_process::ids::Pid;
use suture_testkit::cc::gcc;
use suture_testkit::net::LineClient;
use suture_testkit::{spawn_lines, KillOnDrop, Lines, Scratch, TIMEOUT};

mod common;

const CONN: &str = include_str!("fixtures/osr/conn.c");
const EVLOOP: &str = include_str!("fixtures/osr/evloop.c");
const FORKED: &str = include_str!("fixtures/osr/forked.c");
const REQLOOP: &str = include_str!("fixtures/osr/reqloop.c");
const SAVES: &str = include_str!("fixtures/osr/saves.c");
const COLD: &str = include_str!("fixtures/osr/cold.c");
const RETVAL: &str = include_str!("fixtures/osr/retval.c");
const OUTPARAM: &str = include_str!("fixtures/osr/outparam.c");

struct Built {
    prog: PathBuf,
    /// The patch with on-stack replacement maps.
    patch: Vec<u8>,
    /// The same patch without them.
    plain: Vec<u8>,
    /// The builder's maps of the changed functions, by name.
    osr: Vec<(String, suture_object::osr::OsrTable)>,
}

/// Builds the program from `src` and the patch of the variant `define` (`FIXED`...).
fn build(dir: &Path, src: &str, define: &str) -> Built {
    build_with(dir, src, define, &[])
}

/// [`build`] with more compiler flags.
fn build_with(dir: &Path, src: &str, define: &str, extra: &[&str]) -> Built {
    std::fs::write(dir.join("prog.c"), src).unwrap();
    let mut flags = vec!["-O2", "-g", "-ffunction-sections", "-fdata-sections"];
    flags.extend(extra);
    common::variants(dir, "prog.c", &flags, define);
    gcc(dir, &["orig.o", "-o", "prog", "-lpthread"]);
    let emit = |osr: bool| {
        common::with_diff(dir, osr, |d| {
            let maps = d
                .report
                .changed_functions
                .iter()
                .filter_map(|f| Some((f.name.clone(), f.osr.clone()?)))
                .collect();
            (suture_object::emit::emit(d).unwrap(), maps)
        })
    };
    let (patch, osr) = emit(true);
    Built {
        prog: dir.join("prog"),
        patch,
        plain: emit(false).0,
        osr,
    }
}

fn port_of(line: &str) -> u16 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn opts(id: &str, timeout: Duration) -> ApplyOptions {
    ApplyOptions {
        patch_id: id.into(),
        timeout,
        ..Default::default()
    }
}

/// Kills a forked helper when the test ends.
struct Reap(Pid);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 .0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Without the maps the patch waits for threads that never leave the loop and is refused.
fn refused_as_busy(pid: Pid, plain: &[u8]) {
    match apply(pid, plain, &opts("plain", Duration::from_millis(500))) {
        Err(e @ ApplyError::Busy { .. }) => assert!(
            e.to_string()
                .contains("target rolled back to its original code"),
            "{e}"
        ),
        other => panic!("expected a busy refusal, got {other:?}"),
    }
}

#[test]
fn connection_threads_move_to_the_fixed_code_and_back() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "conn");
    let b = build(&dir, CONN, "FIXED");
    let (child, lines) = spawn_lines(&mut Command::new(&b.prog));
    let port = port_of(&lines.wait_for("port "));
    let pid = Pid(child.0.id() as i32);

    let mut clients: Vec<LineClient> = (0..3).map(|_| LineClient::connect(port)).collect();
    for c in &mut clients {
        assert_eq!(c.ask(b"hello"), "v=1 served=1");
    }
    refused_as_busy(pid, &b.plain);
    for c in &mut clients {
        assert_eq!(c.ask(b"hello"), "v=1 served=2", "untouched by the refusal");
    }

    let applied = apply(pid, &b.patch, &opts("osr", TIMEOUT)).expect("apply with OSR");
    assert_eq!(
        applied.moved_frames.len(),
        3,
        "one frame per connection thread: {applied:?}"
    );
    assert!(applied.moved_frames.iter().all(|m| m.thread != pid.0));
    // The open connections run the fix, and each thread kept its count (a register that moved).
    for c in &mut clients {
        assert_eq!(c.ask(b"hello"), "v=2 served=3");
    }
    assert_eq!(clients[0].ask(&[b'x'; 250]), "v=-1 served=4");
    // A new connection gets it at once.
    let mut fresh = LineClient::connect(port);
    assert_eq!(fresh.ask(b"hello"), "v=2 served=1");

    let reverted = revert_timed(pid, "osr", TIMEOUT).expect("revert with OSR");
    assert_eq!(
        reverted.moved_frames.len(),
        4,
        "the three moved threads and the new one: {:?}",
        reverted.moved_frames
    );
    assert_eq!(clients[1].ask(b"hello"), "v=1 served=4");
    assert_eq!(clients[0].ask(&[b'x'; 250]), "v=1 served=5");
    assert_eq!(fresh.ask(b"hello"), "v=1 served=2");

    // And once more, from the reused region.
    let again = apply(pid, &b.patch, &opts("osr", TIMEOUT)).expect("second apply");
    assert_eq!(again.moved_frames.len(), 4);
    assert_eq!(clients[2].ask(b"hello"), "v=2 served=4");
}

#[test]
fn a_main_epoll_loop_moves_to_the_fixed_code_and_back() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "evloop");
    let b = build(&dir, EVLOOP, "FIXED");
    let (child, lines) = spawn_lines(&mut Command::new(&b.prog));
    let port = port_of(&lines.wait_for("port "));
    let pid = Pid(child.0.id() as i32);

    let mut c = LineClient::connect(port);
    assert_eq!(c.ask(b"hello"), "v=1 served=1");
    refused_as_busy(pid, &b.plain);
    // With the maps but moving turned off: the same refusal, saying why.
    let off = ApplyOptions {
        move_frames: false,
        ..opts("off", Duration::from_millis(500))
    };
    let err = apply(pid, &b.patch, &off).expect_err("main never returns");
    assert!(err.to_string().contains("turned off (--no-osr)"), "{err}");

    let applied = apply(pid, &b.patch, &opts("osr", TIMEOUT)).expect("apply with OSR");
    assert_eq!(applied.moved_frames.len(), 1, "{applied:?}");
    assert_eq!(applied.moved_frames[0].thread, pid.0, "main's own frame");
    assert_eq!(c.ask(b"hello"), "v=2 served=2");
    assert_eq!(c.ask(&[b'x'; 250]), "v=-1 served=3");
    let mut other = LineClient::connect(port);
    assert_eq!(other.ask(b"hi"), "v=2 served=4");

    let reverted = revert_timed(pid, "osr", TIMEOUT).expect("revert with OSR");
    assert_eq!(reverted.moved_frames.len(), 1);
    assert_eq!(c.ask(b"hello"), "v=1 served=5");
    assert_eq!(other.ask(&[b'x'; 250]), "v=1 served=6");
}

#[test]
fn a_forked_helper_loop_moves_to_the_fixed_code_and_back() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "forked");
    let b = build(&dir, FORKED, "FIXED");
    let (_parent, lines) = spawn_lines(&mut Command::new(&b.prog));
    let line = lines.wait_for("port ");
    let port = port_of(&line);
    let helper = Pid(line.split_whitespace().nth(3).unwrap().parse().unwrap());
    let _reap = Reap(helper);

    // The helper waits in read() on an open connection.
    let mut c = LineClient::connect(port);
    assert_eq!(c.ask(b"hello"), "v=1 served=1");
    refused_as_busy(helper, &b.plain);
    let applied = apply(helper, &b.patch, &opts("osr", TIMEOUT)).expect("apply with OSR");
    assert_eq!(applied.moved_frames.len(), 1, "{applied:?}");
    assert_eq!(c.ask(b"hello"), "v=2 served=2");
    drop(c);

    // Now it waits in accept(): revert moves that frame back.
    let mut c = LineClient::connect(port);
    assert_eq!(c.ask(&[b'x'; 250]), "v=-1 served=3");
    drop(c);
    std::thread::sleep(Duration::from_millis(50));
    let reverted = revert_timed(helper, "osr", TIMEOUT).expect("revert with OSR");
    assert_eq!(reverted.moved_frames.len(), 1);
    let mut c = LineClient::connect(port);
    assert_eq!(c.ask(&[b'x'; 250]), "v=1 served=4");
}

#[test]
fn a_frame_that_cannot_move_is_refused_with_the_reason() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "frame");
    // The fix needs a bigger frame: no call site of the loop can be mapped.
    let b = build(&dir, CONN, "FIXED_FRAME");
    let (child, lines) = spawn_lines(&mut Command::new(&b.prog));
    let port = port_of(&lines.wait_for("port "));
    let pid = Pid(child.0.id() as i32);
    let mut c = LineClient::connect(port);
    assert_eq!(c.ask(b"hello"), "v=1 served=1");

    let err = apply(pid, &b.patch, &opts("frame", Duration::from_millis(500)))
        .expect_err("the thread never leaves connection()");
    let text = err.to_string();
    assert!(
        text.contains("its frame cannot move to the other version")
            && text.contains("connection+0x")
            && text.contains("the call to read")
            && text.contains("the frame differs"),
        "{text}"
    );
    assert!(
        text.contains("target rolled back to its original code"),
        "{text}"
    );
    let busy = err.busy().expect("a busy refusal");
    assert!(busy.not_moved.is_some());
    assert_eq!(c.ask(b"hello"), "v=1 served=2");
}

/// On-stack replacement maps are offsets into the code they were computed on: a patch whose
/// original was compiled differently from the running program (here with GOT access to
/// extern data, as a rebuild may be) must not move a frame by them. Found by trying OSR on
/// real programs, where a thread waiting in `read` was moved as if it returned from another
/// call. The apply waits and refuses, saying why; the program keeps its original code.
#[test]
fn maps_of_other_code_are_not_used() {
    use std::io::Write;
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "other-code");
    std::fs::write(dir.join("main.c"), include_str!("fixtures/osr/extern.c")).unwrap();
    std::fs::write(dir.join("flags.c"), "int quiet;\n").unwrap();
    std::fs::write(
        dir.join("fixed.c"),
        include_str!("fixtures/osr/extern.c").replace("return n > 3;", "return n > 3 ? 2 : 0;"),
    )
    .unwrap();
    let flags = ["-O2", "-g", "-ffunction-sections", "-fdata-sections", "-c"];
    gcc(&dir, &[&flags[..], &["main.c", "-o", "main.o"]].concat());
    gcc(&dir, &["-O2", "-c", "flags.c", "-o", "flags.o"]);
    gcc(&dir, &["main.o", "flags.o", "-o", "prog"]);
    // The patch's original and fix, both through the GOT.
    let got = "-mno-direct-extern-access";
    gcc(
        &dir,
        &[&flags[..], &[got, "main.c", "-o", "orig-got.o"]].concat(),
    );
    gcc(
        &dir,
        &[&flags[..], &[got, "fixed.c", "-o", "fixed-got.o"]].concat(),
    );
    let patch = common::with_diff_of(&dir, ["orig-got.o", "fixed-got.o"], true, |d| {
        let main = &d.report.changed_functions[0];
        assert!(
            !main.osr.as_ref().unwrap().forward.is_empty(),
            "the maps exist"
        );
        suture_object::emit::emit(d).unwrap()
    });

    let mut cmd = Command::new(dir.join("prog"));
    cmd.stdin(std::process::Stdio::piped());
    let (mut child, lines) = spawn_lines(&mut cmd);
    lines.wait_for("ready");
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    lines.wait_for("v=1");
    let pid = Pid(child.id() as i32);
    // A bundle's apply: bound by build-id, so the bare object check is not what refuses.
    let opts = ApplyOptions {
        build_id: suture_process::symbols::ElfSymbols::parse(
            "prog",
            &std::fs::read(dir.join("prog")).unwrap(),
        )
        .unwrap()
        .build_id,
        ..opts("other", Duration::from_millis(500))
    };
    let err = apply(pid, &patch, &opts).expect_err("main waits in read");
    let text = err.to_string();
    assert!(
        text.contains("the running code differs from the object the builder mapped"),
        "{text}"
    );
    stdin.write_all(b"hello\n").unwrap();
    lines.wait_for("v=1");
}

/// Waits until process `pid` is blocked in read(2) or poll(2) (`/proc/<pid>/syscall` starts
/// with its number, 0 or 7).
fn wait_in_read(pid: Pid) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let now = std::fs::read_to_string(format!("/proc/{}/syscall", pid.0)).unwrap_or_default();
        if now.starts_with("0 ") || now.starts_with("7 ") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid:?} never waited in read: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// mini_httpd's request loop, reduced (`fixtures/osr/reqloop.c`): a forked child reads its
/// request into a buffer of its frame in a loop around a read wrapper, and every error goes
/// through a `send_error()` gcc finds never returns (not declared so) and places other code
/// after. Taking such a call for one that returns joined a path with other values into the
/// loop head, and the wait in `my_read` was refused ("rbx ... holds no value the running
/// frame has", rbx being the buffer's address in both versions); and a local the reply
/// after the loop fills through its address and reads directly made a frame slot live at
/// the wait ("the stack slot ... holds no variable"), although nothing defines it before.
/// The builder now proves `send_error()` never returns from its code and that the loop
/// never defines that slot; the waiting child moves with its buffer address and read count
/// intact, reverts, and runs the fix's own check.
#[test]
fn a_request_loop_past_calls_that_never_return_moves_to_the_fixed_code_and_back() {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "reqloop");
    let b = build(&dir, REQLOOP, "FIXED");
    let (_, table) = b
        .osr
        .iter()
        .find(|(f, _)| f == "handle_request")
        .expect("handle_request changed");
    let waits = |sites: &[suture_object::osr::OsrSite]| {
        sites
            .iter()
            .filter(|s| s.callee.starts_with("my_read"))
            .count()
    };
    assert_eq!(waits(&table.forward), 1, "{table:#?}");
    assert_eq!(waits(&table.backward), 1, "{table:#?}");
    // Bytes of the frame the code defines before the call (here through the address of a
    // local, handed to `start_contents()`) and reads after it without a variable there
    // still refuse the site: only bytes never defined before it may hold anything.
    assert!(
        table.refused.iter().any(|r| r.callee == "snprintf"
            && r.reason
                .contains("is read after the call in the other version and holds no variable")),
        "{table:#?}"
    );
    // A call that never returns is no site: a frame never continues after it.
    assert!(
        !table.refused.iter().any(|r| r.callee == "send_error")
            && !table.forward.iter().any(|s| s.callee == "send_error"),
        "{table:#?}"
    );

    let (_parent, lines) = spawn_lines(&mut Command::new(&b.prog));
    let port = port_of(&lines.wait_for("port "));
    // A connection whose child has read the first part of a request and waits for the rest.
    let open = |first: &[u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(suture_testkit::WAIT)).unwrap();
        s.write_all(first).unwrap();
        let line = lines.wait_for("child ");
        let child = Pid(line.split_whitespace().nth(1).unwrap().parse().unwrap());
        wait_in_read(child);
        (s, Reap(child))
    };
    let finish = |mut s: TcpStream, rest: &[u8]| {
        s.write_all(rest).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.trim_end().to_string()
    };

    let (s, child) = open(b"GET /a");
    refused_as_busy(child.0, &b.plain);
    let applied = apply(child.0, &b.patch, &opts("osr", TIMEOUT)).expect("apply with OSR");
    assert_eq!(applied.moved_frames.len(), 1, "{applied:?}");
    assert_eq!(finish(s, b"?q HTTP/1.0\n\n"), "v=2 GET /a reads=2");

    let (s, child) = open(b"GET /b");
    let applied = apply(child.0, &b.patch, &opts("osr", TIMEOUT)).expect("apply with OSR");
    assert_eq!(applied.moved_frames.len(), 1, "{applied:?}");
    let reverted = revert_timed(child.0, "osr", TIMEOUT).expect("revert with OSR");
    assert_eq!(reverted.moved_frames.len(), 1, "{reverted:?}");
    assert_eq!(finish(s, b" HTTP/1.0\n\n"), "v=1 GET /b reads=2");

    // The fix's new check, reached from the moved frame.
    let (s, child) = open(b"GET /c");
    apply(child.0, &b.patch, &opts("osr", TIMEOUT)).expect("apply with OSR");
    assert_eq!(finish(s, &[b'x'; 80]), "error 413 too large");
}

/// libcare's `simplest` test (`fixtures/osr/saves.c`, waiting on its input instead of
/// sleeping): the fix empties a function inlined into the loop, and gcc then keeps the
/// caller's registers differently in the same frame size (rbx at CFA-24 and rbp at CFA-16,
/// against rbx alone at CFA-16). Refused before ("the caller's rbx is kept differently");
/// now the trampoline moves the caller's values to where the other version keeps them,
/// and `main`, which holds two values in callee-saved registers across the loop, finds
/// them intact when the loop ends after an apply and a revert.
#[test]
fn a_loop_whose_fix_keeps_the_callers_registers_elsewhere_moves_and_back() {
    use std::io::Write;
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "saves");
    let b = build(&dir, SAVES, "FIXED");
    let (_, table) = b
        .osr
        .iter()
        .find(|(f, _)| f == "greet_loop")
        .expect("greet_loop changed");
    let waits: Vec<_> = table
        .forward
        .iter()
        .filter(|s| s.callee == "getc")
        .collect();
    assert_eq!(waits.len(), 2, "{table:#?}");
    assert!(
        waits.iter().all(|s| s
            .moves
            .iter()
            .any(|m| matches!(m.dst, suture_object::osr::OsrDest::Frame { .. }))),
        "a save slot is written: {table:#?}"
    );

    let mut cmd = Command::new(&b.prog);
    cmd.stdin(std::process::Stdio::piped());
    let (mut child, lines) = spawn_lines(&mut cmd);
    let next = || lines.0.recv_timeout(suture_testkit::WAIT).expect("a line");
    assert_eq!(next(), "Hello. This is an UNPATCHED version!");
    let mut stdin = child.0.stdin.take().unwrap();
    let pid = Pid(child.id() as i32);
    wait_in_read(pid);
    refused_as_busy(pid, &b.plain);

    let applied = apply(pid, &b.patch, &opts("osr", TIMEOUT)).expect("apply with OSR");
    assert_eq!(applied.moved_frames.len(), 1, "{applied:?}");
    // Three turns: the emptied greeting prints nothing between the other two.
    stdin.write_all(b"\n\n\n").unwrap();
    assert_eq!(next(), "Hello from another function");
    assert_eq!(next(), "Hello from another function");
    wait_in_read(pid);

    let reverted = revert_timed(pid, "osr", TIMEOUT).expect("revert with OSR");
    assert_eq!(reverted.moved_frames.len(), 1, "{reverted:?}");
    stdin.write_all(b"\n").unwrap();
    assert_eq!(next(), "Hello. This is an UNPATCHED version!");
    drop(stdin);
    assert_eq!(next(), "bye 0 0", "main's registers survived both moves");
    assert!(child.0.wait().unwrap().success());
}

/// Runs `b`'s program, which prints `ready` and then a line with `key` per input, and waits
/// in read(2) on its input: the first input runs the original; with the waiting frame moved
/// by an apply, the second the fix; moved back by a revert, the third the original again
/// (`steps`: input and the line it must print). Stdin is closed at the end.
fn round_trip(b: &Built, key: &str, steps: [(&[u8], &str); 3]) -> (KillOnDrop, Lines) {
    use std::io::Write;
    let mut cmd = Command::new(&b.prog);
    cmd.stdin(std::process::Stdio::piped());
    let (mut child, lines) = spawn_lines(&mut cmd);
    lines.wait_for("ready");
    let mut stdin = child.0.stdin.take().unwrap();
    let pid = Pid(child.id() as i32);
    let step = |stdin: &mut std::process::ChildStdin, (input, want): (&[u8], &str)| {
        stdin.write_all(input).unwrap();
        assert_eq!(lines.wait_for(key), want);
        wait_in_read(pid);
    };
    step(&mut stdin, steps[0]);
    refused_as_busy(pid, &b.plain);
    let applied = apply(pid, &b.patch, &opts("osr", TIMEOUT)).expect("apply with OSR");
    assert_eq!(applied.moved_frames.len(), 1, "{applied:?}");
    step(&mut stdin, steps[1]);
    let reverted = revert_timed(pid, "osr", TIMEOUT).expect("revert with OSR");
    assert_eq!(reverted.moved_frames.len(), 1, "{reverted:?}");
    step(&mut stdin, steps[2]);
    drop(stdin);
    (child, lines)
}

/// A loop whose error path gcc moves to a `.cold` part (`fixtures/osr/cold.c`): the code
/// after the wait in `read` jumps there and back. The analyses followed those jumps 4 bytes
/// short (a branch's relocation holds the target minus the field's distance to the
/// instruction's end), saw jumps into nothing, and refused every site ("jumps suture cannot
/// follow"). The waiting frame now moves with its running total and moves back.
#[test]
fn a_loop_with_a_cold_part_moves_to_the_fixed_code_and_back() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "cold");
    let b = build(&dir, COLD, "FIXED");
    assert!(
        b.osr.iter().any(|(f, t)| f == "serve"
            && t.forward.iter().any(|s| s.callee == "read")
            && t.backward.iter().any(|s| s.callee == "read")),
        "{:#?}",
        b.osr
    );
    let (mut child, lines) = round_trip(
        &b,
        "total=",
        [
            (b"abc\n", "v=1 total=4"),
            (b"de\n", "v=2 total=7"),
            (b"f\n", "v=1 total=9"),
        ],
    );
    lines.wait_for("bye");
    assert!(child.0.wait().unwrap().success());
}

/// memcached's `main`, reduced (`fixtures/osr/retval.c`, with Debian's
/// `-fstack-protector-strong`): gcc keeps the return value in a callee-saved register it
/// sets from a call's result on the path where that result was tested zero, so no
/// instruction writes 0 there; and an array of the frame written at a variable index made
/// the analysis forget that the canary's slot holds the canary. The site where `main` waits
/// was refused ("r12 is read after the call in the other version and holds no value the
/// running frame has", then "the stack slot at CFA-40 ... holds no variable"). The analysis
/// now learns from `test r, r; jne` that the value is 0 on the way on, and takes the canary's
/// slot, the same in both versions, for what it is (only the epilogue reads it). The frame
/// moves, keeps its array's address and its return value, and moves back.
#[test]
fn a_main_whose_return_value_is_known_from_a_test_moves_and_back() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "retval");
    let b = build_with(&dir, RETVAL, "FIXED", &["-fstack-protector-strong"]);
    assert!(
        b.osr.iter().any(|(f, t)| f == "main"
            && t.forward.iter().any(|s| s.callee == "wait_once")
            && t.backward.iter().any(|s| s.callee == "wait_once")),
        "{:#?}",
        b.osr
    );
    let (mut child, lines) = round_trip(
        &b,
        "served=",
        [
            (b"ab\n", "v=1 served=3"),
            (b"cd\n", "v=2 served=6"),
            (b"e\n", "v=1 served=8"),
        ],
    );
    assert!(lines.wait_for("bye ").ends_with("_prog"), "the array kept");
    assert!(child.0.wait().unwrap().success(), "the return value kept");
}

/// dnsmasq's main loop, reduced (`fixtures/osr/outparam.c`): it waits in `do_poll()`, then an
/// inlined `async_event()` reads an event through the address of a local computed once
/// before the loop and reads that local directly. The local's slot was live at the wait with
/// no variable in scope there ("the stack slot at CFA-60 ... holds no variable"); it is the
/// home of the same variable at the same place in both versions, and nothing else's, so the
/// value there is that variable's. The frame moves and moves back; the events carry on.
#[test]
fn a_loop_reading_an_out_parameter_moves_and_back() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "osr", "outparam");
    let b = build(&dir, OUTPARAM, "FIXED");
    assert!(
        b.osr
            .iter()
            .any(|(f, t)| f == "main"
                && t.forward.iter().filter(|s| s.callee == "do_poll").count() == 2),
        "{:#?}",
        b.osr
    );
    let (mut child, lines) = round_trip(
        &b,
        "v=",
        [
            (b"eHello\n", "v=1 event 1 Hello"),
            (b"x12\n", "v=2 other 2 3"),
            (b"eBye\n", "v=1 event 3 Bye"),
        ],
    );
    lines.wait_for("bye");
    assert!(child.0.wait().unwrap().success());
}
