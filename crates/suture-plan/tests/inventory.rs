//! Inventory parsing: the CSV and JSON forms, and rejection of malformed rows by line.

use suture_plan::{FixKind, Inventory, PlanError};

const SMALL_CSV: &str = include_str!("../examples/small-fleet.csv");

/// The error's line, or a panic showing what was returned.
fn line_of(text: &str) -> usize {
    match Inventory::parse(text) {
        Err(PlanError::Malformed { line, message }) => {
            assert!(!message.is_empty());
            line
        }
        other => panic!("expected a malformed-input error, got {other:?}"),
    }
}

#[test]
fn the_csv_example_parses() {
    let inv = Inventory::parse(SMALL_CSV).expect("examples/small-fleet.csv is valid");
    assert_eq!(inv.hosts.len(), 2);
    assert_eq!(inv.hosts[0].name, "web");
    assert_eq!(inv.hosts[0].vms.len(), 2);
    assert_eq!(inv.hosts[1].spare_hosts, 1);
    assert_eq!(inv.fix.kind, FixKind::Process);
    assert_eq!(inv.policy.wave_sizes, [0.05, 0.25, 0.5]);
    assert_eq!(inv.policy.fabric_gbps, Some(400.0));
    // Defaults for what the CSV does not set.
    assert_eq!(inv.policy.max_rounds, 30);
}

#[test]
fn csv_and_json_give_the_same_inventory() {
    let csv = "host,a,3,10,0.5,1,2\nvm,a,4,8,20,100,2\nfix,kind,process\n\
               policy,wave_sizes,0.5,1\npolicy,soak_minutes,5\n";
    let json = r#"{"hosts":[{"name":"a","count":3,"nic_gbps":10,"migration_share":0.5,
        "spare_hosts":1,"free_slots":2,"vms":[{"count":4,"memory_gib":8,"dirty_mb_s":20,
        "disk_gb":100,"disk_write_mb_s":2}]}],"fix":{"kind":"process"},
        "policy":{"wave_sizes":[0.5,1],"soak_minutes":5}}"#;
    assert_eq!(
        Inventory::parse(csv).unwrap(),
        Inventory::parse(json).unwrap()
    );
}

#[test]
fn the_built_in_example_parses_as_json() {
    let inv = Inventory::parse(suture_plan::example::FLEET_2014).unwrap();
    assert_eq!(inv, suture_plan::example::fleet_2014());
}

#[test]
fn malformed_csv_rows_are_rejected_with_their_line() {
    let head = "# fleet\nhost,a,3,10\n";
    // (row on line 3, why it is wrong)
    for bad in [
        "vm,a,two,8,20",           // count not a number
        "vm,a,2,8",                // too few fields
        "vm,b,2,8,20",             // no host class b
        "vm,a,2,-8,20",            // negative memory
        "host,c,1,10,1.5",         // share above 1
        "host,a,1,10",             // class defined twice
        "host,d,1,0",              // zero bandwidth
        "rack,r1",                 // unknown record
        "policy,soak,5",           // unknown key
        "policy,max_rounds,0",     // invalid value
        "policy,wave_sizes,0.5,2", // a fraction above 1
        "policy,soak_minutes,5,6", // one value only
        "fix,kind,firmware",       // unknown kind
        "fix,stop_window_ms,-1",   // negative
        "host,e,1,10,0.5,1,2,3",   // too many fields
        "vm,a,1,8,nan",            // not a finite number
    ] {
        let text = format!("{head}{bad}\nvm,a,1,1,1\n");
        assert_eq!(line_of(&text), 3, "{bad}");
    }
    // Blank and comment lines count: the bad row is on line 5.
    assert_eq!(line_of("host,a,1,10\n\n# note\n\nvm,a,x,1,1\n"), 5);
    // A setting given twice: the second line.
    assert_eq!(
        line_of("policy,soak_minutes,5\nhost,a,1,1\npolicy,soak_minutes,6\n"),
        3
    );
}

#[test]
fn malformed_json_is_rejected_with_its_line() {
    let text =
        "{\n  \"hosts\": [\n    {\"name\": \"a\", \"count\": \"many\", \"nic_gbps\": 10}\n  ]\n}\n";
    assert_eq!(line_of(text), 3);
    let unknown = "{\n\"hosts\": [],\n\"polcy\": {}\n}";
    assert_eq!(line_of(unknown), 3);
}

#[test]
fn invalid_json_values_name_their_field() {
    let text = r#"{"hosts":[{"name":"a","count":1,"nic_gbps":10,"migration_share":2}]}"#;
    match Inventory::parse(text) {
        Err(e @ PlanError::Invalid { .. }) => {
            assert!(e.to_string().contains("hosts[0].migration_share"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fleets_beyond_the_limits_are_refused() {
    // Each class within the limit, together above it.
    let text = "host,a,600000,10\nhost,b,600000,10\n";
    match Inventory::parse(text) {
        Err(e @ PlanError::Invalid { .. }) => assert!(e.to_string().contains("hosts"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stop_window_from_an_apply_report() {
    use suture_plan::inventory::stop_window_from_apply_json;
    // Patched processes stopped 300, 500 and 900 us (a failed one has no result): median
    // 500 us = 0.5 ms.
    let report = r#"{"schema":"suture.process/2","patch_id":"fix","processes":[
        {"pid":1,"applied":true,"result":{"stop_window_us":900}},
        {"pid":2,"applied":false,"error":"busy","outcome":"untouched"},
        {"pid":3,"applied":true,"result":{"stop_window_us":300}},
        {"pid":4,"applied":true,"result":{"stop_window_us":500}}]}"#;
    assert_eq!(stop_window_from_apply_json(report).unwrap(), 0.5);
    // Even count: the mean of the middle two, (300 + 500) / 2 us.
    let two = report.replace(r#"{"stop_window_us":900}"#, r#"{}"#);
    assert_eq!(stop_window_from_apply_json(&two).unwrap(), 0.4);
    assert!(stop_window_from_apply_json(r#"{"schema":"suture.status/2"}"#).is_err());
    let none = r#"{"schema":"suture.process/2","processes":[]}"#;
    assert!(stop_window_from_apply_json(none).is_err());
}
