//! `suture kernel load|unload|status` in the stock Debian kernel, booted in QEMU.
//!
//! The patch modules are compiled at test time against the installed headers of that kernel
//! (the fixtures in tests/guest/fixtures are hand-written livepatch modules; modules generated
//! by `suture build --kernel` go through the same `guest::boot`). One boot runs the whole
//! scenario; a failed check prints the guest console.

mod guest;

use std::process::Command;

use guest::{boot, build_module, build_program, fixture, Initramfs, Script};

const MARKER: &str = "suture-guest-marker-3f9a";
const LOOP_MARKER: &str = "suture-loop-marker-81c2";

/// Load, observe, status, unload, observe again; the clear errors; transitions blocked by a
/// sleeping task (reported, reversed, completed once it wakes, forced on request).
#[test]
fn livepatch_runtime_in_the_stock_kernel() {
    let Some(kernel) = guest::kernel() else {
        return;
    };
    let work = guest::scratch("runtime");
    let replace = fixture("livepatch_replace.c");
    let cmdline = build_module(
        &kernel,
        "suture_fix_cmdline",
        &replace,
        &format!("-DSUTURE_MARKER='\"{MARKER}\"'"),
    );
    let missing = build_module(
        &kernel,
        "suture_fix_missing",
        &replace,
        "-DSUTURE_TARGET='\"suture_no_such_function\"'",
    );
    let pause_patch = build_module(
        &kernel,
        "suture_fix_pause",
        &fixture("livepatch_pause.c"),
        "",
    );
    let loop_patch = build_module(
        &kernel,
        "suture_fix_loop",
        &fixture("livepatch_loop.c"),
        &format!("-DSUTURE_MARKER='\"{LOOP_MARKER}\"'"),
    );
    let pause = build_program(&fixture("pause.c"), &work.join("pause"));

    let mut initramfs = Initramfs::new();
    initramfs
        .suture()
        .program("/bin/pause", &pause)
        .file("/m/suture_fix_cmdline.ko", &cmdline)
        .file("/m/suture_fix_missing.ko", &missing)
        .file("/m/suture_fix_pause.ko", &pause_patch)
        .file("/m/suture_fix_loop.ko", &loop_patch)
        .stock_module(&kernel, "loop");

    let mut s = Script::new();
    s.step("cmdline-before", "cat /proc/cmdline")
        .step("status-empty", "suture kernel status")
        .step(
            "status-empty-json",
            "suture kernel status --json 2>/dev/null",
        )
        // The patch goes live and is visible from userspace.
        .step("load", "suture kernel load /m/suture_fix_cmdline.ko")
        .step("cmdline-patched", "cat /proc/cmdline")
        .step("status-live", "suture kernel status")
        .step(
            "status-live-json",
            "suture kernel status --json 2>/dev/null",
        )
        .step("status-one", "suture kernel status suture_fix_cmdline")
        .step("load-again", "suture kernel load /m/suture_fix_cmdline.ko")
        .step("unload", "suture kernel unload suture_fix_cmdline")
        .step(
            "after-unload",
            "cat /proc/cmdline; ls /sys/kernel/livepatch; \
             grep -c suture_fix_cmdline /proc/modules",
        )
        .step(
            "status-after-json",
            "suture kernel status --json 2>/dev/null",
        )
        // The JSON forms of load and unload, by .ko path.
        .step(
            "load-json",
            "suture kernel load --json /m/suture_fix_cmdline.ko 2>/dev/null",
        )
        .step(
            "unload-json",
            "suture kernel unload --json /m/suture_fix_cmdline.ko 2>/dev/null",
        )
        // Clear errors, and the kernel keeps running.
        .step(
            "not-a-module",
            "echo 'not a module' > /tmp/x.ko; suture kernel load /tmp/x.ko",
        )
        .step("not-a-module-elf", "suture kernel load /bin/busybox")
        .step(
            "not-livepatch",
            "suture kernel load /lib/modules/$(uname -r)/kernel/drivers/block/loop.ko",
        )
        .step("rejected", "suture kernel load /m/suture_fix_missing.ko")
        .step(
            "rejected-json",
            "suture kernel load --json /m/suture_fix_missing.ko 2>/dev/null",
        )
        .step(
            "after-rejected",
            "ls /sys/kernel/livepatch; grep -c suture_fix /proc/modules; cat /proc/cmdline",
        )
        .step("unload-unknown", "suture kernel unload suture_nope")
        .step("status-unknown", "suture kernel status suture_nope")
        // A patch for a module that is not loaded yet: applied when the module arrives.
        .step(
            "module-patch-early",
            "grep -c '^loop ' /proc/modules; suture kernel load /m/suture_fix_loop.ko && \
             suture kernel status suture_fix_loop",
        )
        .step(
            "module-arrives",
            "modprobe loop && echo data > /tmp/backing && losetup /dev/loop0 /tmp/backing && \
             cat /sys/block/loop0/loop/backing_file && suture kernel status suture_fix_loop",
        )
        .step(
            "module-unpatched",
            "suture kernel unload suture_fix_loop && cat /sys/block/loop0/loop/backing_file && \
             losetup -d /dev/loop0",
        )
        .step(
            "unload-not-patch",
            "modprobe loop && grep -c '^loop ' /proc/modules && suture kernel unload loop",
        )
        // A task asleep in pause(2) has __do_sys_pause on its stack: the transition waits.
        .step(
            "start-pause",
            // `inside PID FUNCTION`: wait until the task sleeps in FUNCTION (a guest on a
            // loaded host can take a while to get a new process that far).
            "inside() { n=0; until grep -q \"^\\[<0>\\] $2+\" /proc/$1/stack 2>/dev/null; do \
             n=$((n+1)); [ $n -gt 300 ] && { echo \"$1 never reached $2\"; return 1; }; \
             sleep 0.1; done; }; /bin/pause & PAUSE=$!; inside $PAUSE __do_sys_pause; \
             echo started $PAUSE",
        )
        .step(
            "stuck",
            "suture kernel load --timeout 2.5 /m/suture_fix_pause.ko",
        )
        .step(
            "after-stuck",
            "ls /sys/kernel/livepatch; grep -c suture_fix_pause /proc/modules; \
             kill -0 $PAUSE && echo pause-alive",
        )
        .step(
            "stuck-json",
            "suture kernel load --json --timeout 1 /m/suture_fix_pause.ko 2>/dev/null",
        )
        // The transition completes once the task leaves pause(). A fresh task, checked to be
        // asleep in pause() before the load, is killed only once suture has reported it as
        // not switched yet (an event, not a delay: a loaded guest may take any time to get
        // there), at most 60 s.
        .step(
            "wait-then-complete",
            "kill $PAUSE; wait $PAUSE; /bin/pause & PAUSE=$!; inside $PAUSE __do_sys_pause; \
             suture kernel load --timeout 60 /m/suture_fix_pause.ko >/tmp/load.out 2>&1 & \
             LOAD=$!; n=0; until grep -q 'not switched yet' /tmp/load.out; do \
             n=$((n+1)); [ $n -gt 600 ] && break; sleep 0.1; done; kill $PAUSE; \
             wait $LOAD; st=$?; cat /tmp/load.out; wait; [ $st -eq 0 ]",
        )
        .step("unload-pause", "suture kernel unload suture_fix_pause")
        // --force: completes at once.
        .step(
            "start-pause-2",
            "/bin/pause & PAUSE=$!; inside $PAUSE __do_sys_pause; echo started $PAUSE",
        )
        .step(
            "force",
            "suture kernel load --timeout 1 --force /m/suture_fix_pause.ko",
        )
        // A task asleep in the patch's pause() blocks unpatching: the unload is reversed.
        .step(
            "status-forced",
            "suture kernel status; kill $PAUSE; wait $PAUSE; echo pause-ended; \
             /bin/pause & PAUSE=$!; inside $PAUSE suture_fixture_sys_pause",
        )
        .step(
            "unload-stuck",
            "suture kernel unload --timeout 1.5 suture_fix_pause; \
             cat /sys/kernel/livepatch/suture_fix_pause/enabled",
        )
        // A forced unpatching: the kernel keeps the module (its code may still run).
        .step(
            "unload-forced",
            "suture kernel unload --timeout 1 --force suture_fix_pause; \
             ls /sys/kernel/livepatch; grep -c '^suture_fix_pause ' /proc/modules; \
             kill $PAUSE; wait $PAUSE; echo pause-ended",
        )
        .step("alive", "echo still-alive; cat /proc/sys/kernel/tainted");

    let b = boot(&kernel, "runtime", &mut initramfs, &s);
    eprintln!(
        "guest: /init reached after {:.1} s, run {:.1} s",
        b.boot_seconds.unwrap_or(f64::NAN),
        b.total_seconds
    );

    let orig = b
        .expect("cmdline-before", 0, &["console=ttyS0"])
        .output
        .clone();
    b.ensure(!orig.contains(MARKER), "marker before the patch");
    b.expect("status-empty", 0, &["no kernel live patches"]);
    let v = b.json("status-empty-json");
    b.ensure(
        v["supported"] == true && v["patches"].as_array().is_some_and(|p| p.is_empty()),
        format!("status-empty-json: {v}"),
    );

    b.expect("load", 0, &["suture_fix_cmdline: live (1 function(s)"]);
    b.expect("cmdline-patched", 0, &[MARKER]);
    b.expect(
        "status-live",
        0,
        &[
            "suture_fix_cmdline: enabled",
            "vmlinux: patched",
            "cmdline_proc_show (sympos 1)",
        ],
    );
    let v = b.json("status-live-json");
    let p = &v["patches"][0];
    b.ensure(
        v["patches"].as_array().map(Vec::len) == Some(1)
            && p["name"] == "suture_fix_cmdline"
            && p["enabled"] == true
            && p["transition"] == false
            && p["objects"][0]["name"] == "vmlinux"
            && p["objects"][0]["patched"] == true
            && p["objects"][0]["functions"][0]["name"] == "cmdline_proc_show"
            && p["module"]["refcnt"].as_u64().is_some(),
        format!("status-live-json: {v:#}"),
    );
    // The kernel was tainted 'K' (livepatch, bit 15) by the load.
    b.ensure(
        v["tainted"].as_u64().is_some_and(|t| t & (1 << 15) != 0),
        format!("taint: {}", v["tainted"]),
    );
    b.expect("status-one", 0, &["suture_fix_cmdline: enabled"]);
    b.expect("load-again", 1, &["suture_fix_cmdline is already loaded"]);
    b.expect("unload", 0, &["suture_fix_cmdline: unloaded"]);
    let after = b.expect("after-unload", 1, &[]);
    b.ensure(
        after.output.trim() == format!("{}\n0", orig.trim()),
        format!("after unload: {}", after.output),
    );
    let v = b.json("status-after-json");
    b.ensure(
        v["patches"].as_array().is_some_and(|p| p.is_empty()),
        format!("status after unload: {v}"),
    );

    let v = b.json("load-json");
    b.ensure(
        v["ok"] == true
            && v["schema"] == "suture.kernel/1"
            && v["result"]["patch"] == "suture_fix_cmdline"
            && v["result"]["forced"] == false
            && v["result"]["transition_seconds"].as_f64().is_some()
            && v["result"]["status"]["enabled"] == true,
        format!("load-json: {v:#}"),
    );
    let v = b.json("unload-json");
    b.ensure(
        v["ok"] == true && v["result"]["module_removed"] == true,
        format!("unload-json: {v:#}"),
    );

    b.expect(
        "not-a-module",
        1,
        &["/tmp/x.ko: not a loadable kernel module: not an ELF file"],
    );
    b.expect("not-a-module-elf", 1, &["not a relocatable ELF object"]);
    b.expect(
        "not-livepatch",
        1,
        &["module loop is not a livepatch module"],
    );
    b.expect(
        "rejected",
        1,
        &[
            "the kernel rejected /m/suture_fix_missing.ko: EINVAL",
            "kernel log:",
            "suture_no_such_function",
        ],
    );
    let v = b.json("rejected-json");
    b.ensure(
        v["ok"] == false
            && v["error"]["kind"] == "rejected"
            && v["error"]["kernel_log"].as_array().is_some_and(|l| {
                l.iter().any(|x| {
                    x.as_str()
                        .is_some_and(|x| x.contains("suture_no_such_function"))
                })
            }),
        format!("rejected-json: {v:#}"),
    );
    let after = b.expect("after-rejected", 0, &[]);
    b.ensure(
        after.output.trim() == format!("0\n{}", orig.trim()),
        format!("after a rejected load: {}", after.output),
    );
    b.expect(
        "unload-unknown",
        1,
        &["no live patch named suture_nope (live: none)"],
    );
    b.expect("status-unknown", 1, &["no live patch named suture_nope"]);
    b.expect(
        "module-patch-early",
        0,
        &[
            // The fixture records no target kernel: loaded with a warning (stderr first).
            "0\nsuture: warning: /m/suture_fix_loop.ko: the module does not record",
            "suture_fix_loop: live (1 function(s)",
            "loop: not patched (module not loaded)",
            "loop_attr_do_show_backing_file (sympos 1)",
        ],
    );
    b.expect("module-arrives", 0, &[LOOP_MARKER, "loop: patched\n"]);
    let unpatched = b.expect(
        "module-unpatched",
        0,
        &["suture_fix_loop: unloaded", "/tmp/backing"],
    );
    b.ensure(
        !unpatched.output.contains(LOOP_MARKER),
        "loop still patched after unload",
    );
    b.expect(
        "unload-not-patch",
        1,
        &["1\n", "module loop is loaded but is not a live patch"],
    );

    b.expect("start-pause", 0, &["started"]);
    b.expect(
        "stuck",
        1,
        &[
            "suture_fix_pause: patching transition running for 1 s, 1 task(s) not switched yet",
            "the patching transition of suture_fix_pause did not finish within 2.5 s",
            "it was reversed and the module removed",
            "pause (pid ",
            "__do_sys_pause+",
        ],
    );
    b.expect("after-stuck", 0, &["0\npause-alive"]);
    let v = b.json("stuck-json");
    b.ensure(
        v["error"]["kind"] == "transition_stuck"
            && v["error"]["blockers"][0]["comm"] == "pause"
            && v["error"]["blockers"][0]["stack"][0]
                .as_str()
                .is_some_and(|f| f.starts_with("__do_sys_pause+")),
        format!("stuck-json: {v:#}"),
    );
    b.expect(
        "wait-then-complete",
        0,
        &["not switched yet", "suture_fix_pause: live (1 function(s)"],
    );
    b.expect("unload-pause", 0, &["suture_fix_pause: unloaded"]);
    b.expect("start-pause-2", 0, &["started"]);
    b.expect("force", 0, &["suture_fix_pause: live", "FORCED"]);
    b.expect(
        "status-forced",
        0,
        &[
            "suture_fix_pause: enabled",
            "__do_sys_pause (sympos 1)",
            "pause-ended",
        ],
    );
    b.expect(
        "unload-stuck",
        0,
        &[
            "the unpatching transition of suture_fix_pause did not finish within 1.5 s",
            "it was reversed: the patch stays fully enabled",
            "pause (pid ",
            "suture_fixture_sys_pause+",
        ],
    );
    b.ensure(
        b.step("unload-stuck").output.trim_end().ends_with("\n1"),
        "the patch is enabled again after a reversed unload",
    );
    b.expect(
        "unload-forced",
        0,
        &[
            "suture_fix_pause: unloaded",
            "keeps its module loaded",
            "\n1\n",
            "pause-ended",
        ],
    );
    b.expect("alive", 0, &["still-alive"]);
}

/// On a kernel without module support (this host) the commands fail clearly, not obscurely.
#[test]
fn status_and_load_errors_on_the_host() {
    let suture = env!("CARGO_BIN_EXE_suture");
    let st = Command::new(suture)
        .args(["kernel", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        st.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let supported = std::path::Path::new("/sys/kernel/livepatch").is_dir();
    assert_eq!(v["supported"], supported);

    let dir = guest::scratch("host-errors");
    let f = dir.join("x.ko");
    std::fs::write(&f, "not a module").unwrap();
    let out = Command::new(suture)
        .args(["kernel", "load"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loadable kernel module: not an ELF file"),
        "{err}"
    );

    let out = Command::new(suture)
        .args(["kernel", "unload", "suture_nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = if !is_root() {
        "needs root"
    } else if !supported {
        "no livepatch support"
    } else {
        "no live patch named suture_nope"
    };
    assert!(err.contains(expected), "{err}");
}

fn is_root() -> bool {
    // /proc/self/status "Uid:" real effective ... ; effective is the second field.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Figures for docs/benchmarks.md: time from starting QEMU to /init, and the time of `suture
/// kernel load` (finit_module, then the transition) and unload on an idle guest, as medians.
#[test]
#[ignore = "benchmark, not a check: run by scripts/bench-kernel-guest.sh"]
fn guest_benchmark() {
    let Some(kernel) = guest::kernel() else {
        return;
    };
    let boots: usize = std::env::var("SUTURE_BENCH_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let cycles = 5;
    let cmdline = build_module(
        &kernel,
        "suture_fix_cmdline",
        &fixture("livepatch_replace.c"),
        &format!("-DSUTURE_MARKER='\"{MARKER}\"'"),
    );
    let mut initramfs = Initramfs::new();
    initramfs
        .suture()
        .file("/m/suture_fix_cmdline.ko", &cmdline);
    let mut s = Script::new();
    for i in 0..cycles {
        s.step(
            &format!("load{i}"),
            "suture kernel load --json /m/suture_fix_cmdline.ko 2>/dev/null",
        )
        .step(
            &format!("unload{i}"),
            "suture kernel unload --json suture_fix_cmdline 2>/dev/null",
        );
    }
    let (mut boot_s, mut load_s, mut trans_s, mut unload_s) = (vec![], vec![], vec![], vec![]);
    for n in 0..boots {
        let b = boot(&kernel, &format!("bench{n}"), &mut initramfs, &s);
        boot_s.push(b.boot_seconds.expect("/init reached"));
        for i in 0..cycles {
            let l = b.json(&format!("load{i}"));
            let u = b.json(&format!("unload{i}"));
            load_s.push(l["result"]["load_seconds"].as_f64().unwrap());
            trans_s.push(l["result"]["transition_seconds"].as_f64().unwrap());
            unload_s.push(u["result"]["transition_seconds"].as_f64().unwrap());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "guest benchmark ({boots} boots, {} load/unload cycles):\n\
         boot to /init: median {:.2} s (min {:.2}, max {:.2})\n\
         finit_module: median {:.3} s\n\
         load transition: median {:.3} s\n\
         unload (disable to sysfs gone): median {:.3} s",
        boots * cycles,
        median(&mut boot_s),
        boot_s[0],
        boot_s[boot_s.len() - 1],
        median(&mut load_s),
        median(&mut trans_s),
        median(&mut unload_s),
    );
}
