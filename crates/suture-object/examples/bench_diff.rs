//! Differ benchmark: `bench_diff ORIG.o PATCHED.o [RUNS]`.
//!
//! Reads both files once, then times `parse + analyze + emit` RUNS times (default 21) and
//! prints one JSON line: object size, section count, min/median/p90 milliseconds, and the
//! process's peak resident memory (VmHWM) before and after the runs. Run it in a fresh process
//! per input so peak memory belongs to that input (scripts/bench-diff.sh does).

use std::time::Instant;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench_diff ORIG.o PATCHED.o [RUNS]");
        std::process::exit(1);
    }
    let runs: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(21);
    let hwm_before = vm_hwm_kib();
    let a = std::fs::read(&args[1]).expect("read original");
    let b = std::fs::read(&args[2]).expect("read patched");
    let mut times = Vec::with_capacity(runs);
    let mut summary = String::new();
    let mut sections = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let oa = suture_object::Object::parse(&a).expect("parse original");
        let ob = suture_object::Object::parse(&b).expect("parse patched");
        let d = suture_object::analyze(&oa, &ob).expect("analyze");
        let patch = if d.report.status == suture_object::Status::Patchable {
            suture_object::emit::emit(&d).expect("emit").len()
        } else {
            0
        };
        times.push(t.elapsed().as_secs_f64() * 1e3);
        sections = ob.sections.len();
        summary = format!(
            "\"status\":{:?},\"changed\":{},\"patch_bytes\":{patch}",
            format!("{:?}", d.report.status),
            d.report.changed_functions.len()
        );
    }
    times.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "{{\"object_bytes\":{},\"sections\":{sections},\"runs\":{runs},\"min_ms\":{:.2},\"median_ms\":{:.2},\"p90_ms\":{:.2},\"peak_rss_kib_before\":{hwm_before},\"peak_rss_kib\":{},{summary}}}",
        b.len(),
        pct(0.0),
        pct(0.5),
        pct(0.9),
        vm_hwm_kib()
    );
}
