//! The suspended-coroutine check of `suture apply` on the stock Debian kernel, booted in
//! QEMU: that kernel tracks soft-dirty pages (`CONFIG_MEM_SOFT_DIRTY`), so most of the scan
//! for suspended frames runs before the stop and the stop re-reads only pages written since.
//! (The machine the suite runs on may lack soft-dirty tracking; there the stop reads
//! everything, which `suture-process`'s own tests cover.)
//!
//! The program is suture-process's coroutine fixture: `idle` keeps a coroutine suspended
//! outside the patched unit, `suspended` keeps one suspended inside `hold()`, which the patch
//! replaces.

mod guest;

use std::path::Path;

use guest::{boot, Initramfs, Script};
use suture_testkit::cc::gcc;

const MAIN: &str = include_str!("../../suture-process/tests/fixtures/coroutine/main.c");
const CORO: &str = include_str!("../../suture-process/tests/fixtures/coroutine/coro.c");
const CORO_FIXED: &str = include_str!("../../suture-process/tests/fixtures/coroutine/coro.fixed.c");

fn compile_unit(dir: &Path, side: &str, src: &str) {
    let d = dir.join(side);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("coro.c"), src).unwrap();
    gcc(
        &d,
        &[
            "-c",
            "-O2",
            "-ffunction-sections",
            "-fdata-sections",
            "-fPIC",
            "coro.c",
            "-o",
            "coro.o",
        ],
    );
}

#[test]
fn suspended_coroutines_are_found_with_soft_dirty_tracking() {
    let Some(kernel) = guest::kernel() else {
        return;
    };
    let work = guest::scratch("coroutine");
    compile_unit(&work, "orig", CORO);
    compile_unit(&work, "fixed", CORO_FIXED);
    std::fs::write(work.join("main.c"), MAIN).unwrap();
    gcc(
        &work,
        &["-O2", "main.c", "orig/coro.o", "-lpthread", "-o", "prog"],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suture"))
        .arg("diff")
        .arg(work.join("orig/coro.o"))
        .arg(work.join("fixed/coro.o"))
        .arg("-o")
        .arg(work.join("coro-fix.o"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut initramfs = Initramfs::new();
    initramfs
        .suture()
        .program("/bin/prog", &work.join("prog"))
        .file("/m/coro-fix.o", &work.join("coro-fix.o"));
    // Each program prints a tick line every few milliseconds; `until` waits for a line.
    let wait_for = |file: &str, what: &str| {
        format!("i=0; until grep -q '{what}' {file}; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done")
    };
    let mut s = Script::new();
    s.step(
        "suspended-start",
        &format!(
            "/bin/prog suspended > /tmp/s.out & S=$!; {}; tail -n 1 /tmp/s.out",
            wait_for("/tmp/s.out", "main=11 coro=31")
        ),
    )
    .step(
        "suspended-apply",
        "SUTURE_LOG=suture_process=debug suture apply /m/coro-fix.o --pid $S --timeout 1 \
         --json 2>/tmp/apply.log",
    )
    .step("suspended-log", "cat /tmp/apply.log")
    .step(
        "suspended-after",
        &format!(
            "> /tmp/s.out; {}; tail -n 1 /tmp/s.out; kill $S",
            wait_for("/tmp/s.out", "tick")
        ),
    )
    .step(
        "idle-start",
        &format!(
            "/bin/prog idle > /tmp/i.out & I=$!; {}",
            wait_for("/tmp/i.out", "main=11 coro=101")
        ),
    )
    .step(
        "idle-apply",
        "SUTURE_LOG=suture_process=debug suture apply /m/coro-fix.o --pid $I --timeout 5",
    )
    .step(
        "idle-after",
        &format!(
            "> /tmp/i.out; {}; tail -n 1 /tmp/i.out; kill $I",
            wait_for("/tmp/i.out", "main=12 coro=102")
        ),
    );
    let b = boot(&kernel, "coroutine", &mut initramfs, &s);

    b.expect("suspended-start", 0, &["main=11 coro=31"]);
    let refused = b.step("suspended-apply");
    b.ensure(
        refused.status == 1,
        format!("apply should refuse: {}", refused.output),
    );
    let json = b.json("suspended-apply");
    let p = &json["processes"][0];
    b.ensure(p["applied"] == false, format!("{json}"));
    b.ensure(p["busy"]["function"] == "hold", format!("{json}"));
    b.ensure(p["busy"]["thread"].is_null(), format!("{json}"));
    b.ensure(p["busy"]["suspended_at"].is_string(), format!("{json}"));
    // The soft-dirty path ran: memory was read before the stop.
    b.expect(
        "suspended-log",
        0,
        &["suspended-frame scan before the stop"],
    );
    b.expect("suspended-after", 0, &["main=11 coro=31"]);

    b.expect("idle-start", 0, &[]);
    let applied = b.expect(
        "idle-apply",
        0,
        &["live in process", "suspended-frame scan before the stop"],
    );
    // The stop re-read only what was written since the pre-scan: less than the pre-scan read.
    let bytes_after = |marker: &str| -> u64 {
        let line = applied
            .output
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| b.fail(&format!("no {marker:?} line")));
        // The log is coloured on the guest's console: drop the escape sequences.
        let line = strip_ansi(line);
        let at = line.find("bytes=").expect("bytes=") + "bytes=".len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = bytes_after("suspended-frame scan before the stop");
    let in_stop = bytes_after("no suspended frame in busy code");
    b.ensure(
        in_stop < before,
        format!("the stop read {in_stop} bytes, the pre-scan {before}"),
    );
    b.expect("idle-after", 0, &["main=12 coro=102"]);
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
