//! `suture plan`: the JSON schema of the built-in example, the SVG chart, inventory errors.

use std::process::{Command, Output};

use suture_testkit::Scratch;

fn suture(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_suture"))
        .args(args)
        .output()
        .unwrap()
}

/// Exit status 0, or the failure with suture's stderr.
fn succeeded(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn example_json_has_the_schema_fields_and_the_svg_is_written() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "plan", "example");
    let svg = dir.join("plan.svg");
    let out = suture(&[
        "plan".as_ref(),
        "--example".as_ref(),
        "--json".as_ref(),
        "--svg".as_ref(),
        svg.as_os_str(),
    ]);
    succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["schema"], "suture.plan/1");
    assert_eq!(v["fleet"]["hosts"], 10_000);
    assert_eq!(v["fleet"]["vms"], 200_000);
    assert!(v["fix"]["kind"].is_string() && v["policy"]["wave_sizes"].is_array());
    let strategies = v["strategies"].as_array().expect("strategies");
    let names: Vec<&str> = strategies
        .iter()
        .map(|s| s["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hot-patch", "reboot", "live-migration"]);
    for s in strategies {
        for field in [
            "fixed_after_seconds",
            "data_moved_bytes",
            "downtime_median_seconds",
            "downtime_worst_seconds",
            "vm_hours_disrupted",
            "spare_hosts_needed",
            "waves",
            "soak_seconds",
            "vms_not_converged",
        ] {
            assert!(s[field].is_number(), "{field} in {s}");
        }
        assert!(s["feasible"].is_boolean());
        assert!(s.get("reason").is_some());
        let timeline = s["timeline"].as_array().unwrap();
        assert_eq!(timeline[0]["hosts_fixed"], 0);
        assert_eq!(timeline.last().unwrap()["hosts_fixed"], 10_000);
        assert!(timeline.iter().all(|p| p["seconds"].is_number()));
    }
    assert!(v["recommendation"]["strategy"].is_string());
    assert!(!v["recommendation"]["reasons"]
        .as_array()
        .unwrap()
        .is_empty());

    let chart = std::fs::read_to_string(&svg).expect("the SVG is written");
    assert!(chart.starts_with("<svg "), "{chart}");
    assert!(chart.trim_end().ends_with("</svg>"));
    assert_eq!(chart.matches("<svg").count(), 1);
    assert_eq!(chart.matches("<path ").count(), 3);
    // Every element is closed: tags that open content are balanced.
    for tag in ["text", "svg"] {
        assert_eq!(
            chart.matches(&format!("<{tag} ")).count() + chart.matches(&format!("<{tag}>")).count(),
            chart.matches(&format!("</{tag}>")).count(),
            "{tag}"
        );
    }
    assert!(!chart.contains("<script") && !chart.contains("href"));
}

#[test]
fn the_human_report_recommends_and_a_bad_row_names_its_line() {
    let out = suture(&["plan".as_ref(), "--example".as_ref()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("recommendation: "), "{text}");

    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "plan", "bad-row");
    let inv = dir.join("fleet.csv");
    std::fs::write(&inv, "host,a,2,25\nvm,a,20,16,fast,200\n").unwrap();
    let out = suture(&["plan".as_ref(), inv.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("dirty_mb_s"),
        "{err}"
    );
    let out = suture(&["plan".as_ref(), inv.as_os_str(), "--json".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("error as JSON");
    assert_eq!(v["schema"], "suture.error/1");
    assert_eq!(v["command"], "plan");
}

#[test]
fn the_stop_window_comes_from_an_apply_report() {
    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "plan", "apply-json");
    let (inv, report) = (dir.join("fleet.csv"), dir.join("apply.json"));
    std::fs::write(&inv, "host,a,4,25,0.5,1\nvm,a,2,4,10\nfix,kind,process\n").unwrap();
    std::fs::write(
        &report,
        r#"{"schema":"suture.process/2","processes":[
            {"pid":7,"applied":true,"result":{"stop_window_us":1250}}]}"#,
    )
    .unwrap();
    let args = |extra: &[&std::ffi::OsStr]| {
        let mut a: Vec<&std::ffi::OsStr> = vec!["plan".as_ref(), inv.as_os_str()];
        a.extend_from_slice(extra);
        suture(&a)
    };
    let out = args(&[
        "--apply-json".as_ref(),
        report.as_os_str(),
        "--json".as_ref(),
    ]);
    succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fix"]["stop_window_ms"], 1.25);
    assert_eq!(v["strategies"][0]["downtime_worst_seconds"], 0.00125);
    // A kernel fix stops no process: the report does not apply.
    std::fs::write(&inv, "host,a,4,25,0.5,1\nvm,a,2,4,10\nfix,kind,kernel\n").unwrap();
    let out = args(&["--apply-json".as_ref(), report.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
}
