//! Correctly signed metadata that does not describe its file is refused before anything is
//! applied: a bundle whose manifest names another patch id, or another build-id, than its
//! signed `custom.suture` (a build machine signing the wrong file, or metadata edited before
//! signing). The "host" is this test process, whose executable has a build-id; the agent
//! stops at the cross-check, before any process is touched.

#![cfg(feature = "tuf")]

use std::path::{Path, PathBuf};

use suture_fleet::agent::{self, Options};
use suture_fleet::meta::{Kind, TargetMeta, TARGET_SCHEMA};
use suture_fleet::repo::{self, Expiry};
use suture_testkit::Scratch;

fn own_build_id() -> Option<String> {
    let exe = std::fs::read("/proc/self/exe").unwrap();
    suture_elf::build_id(&exe).map(|id| suture_bundle::hex(&id))
}

fn bundle(dir: &Path, name: &str, patch_id: &str, build_id: &str) -> PathBuf {
    let b = suture_bundle::Bundle {
        manifest: suture_bundle::Manifest {
            format: "suture.bundle/1".into(),
            patch_id: patch_id.into(),
            created_by: "test".into(),
            target: suture_bundle::Target {
                build_id: build_id.into(),
                file_name: "self".into(),
                soname: None,
                arch: "x86_64".into(),
            },
            twin: suture_bundle::Twin {
                kind: "rebuild".into(),
                path: "/nowhere".into(),
            },
            functions: Vec::new(),
            symbols: Vec::new(),
            units: Vec::new(),
        },
        patch_object: b"\x7fELF not really".to_vec(),
    };
    let p = dir.join(name);
    std::fs::write(&p, suture_bundle::encode(&b).unwrap()).unwrap();
    p
}

fn meta(patch_id: &str, build_id: &str) -> TargetMeta {
    TargetMeta {
        schema: TARGET_SCHEMA.into(),
        kind: Kind::Process,
        patch_id: patch_id.into(),
        channel: "stable".into(),
        build_ids: vec![build_id.into()],
        file_name: None,
        kernel_release: None,
        kernel_build_id: None,
        added_at: 0,
        waves: Vec::new(),
        paused: false,
        version: None,
        replaces: Vec::new(),
    }
}

#[test]
fn metadata_not_describing_its_bundle_is_refused() {
    let Some(me) = own_build_id() else {
        eprintln!("skipped: the test binary has no build-id");
        return;
    };
    let s = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "fleet", "wrong-target");
    let dir = s.path().join("repo");
    let keys = s.path().join("keys");
    let init = repo::init(&dir, &keys, &Expiry::default()).unwrap();
    let opts = Options {
        repo: dir.display().to_string(),
        trust: init.root.clone(),
        state_dir: s.path().join("state"),
        channel: "stable".into(),
        only_pids: Some(vec![std::process::id() as i32]),
        metrics: None,
        timeout: std::time::Duration::from_secs(1),
        health: Default::default(),
        trigger: Default::default(),
        watch: None,
        verified: None,
    };

    // The signed metadata says patch "fix" for this executable; the bundle is patch "other".
    let wrong_id = bundle(s.path(), "a.suture", "other", &me);
    repo::add_described(
        &dir,
        &keys,
        &[(wrong_id, meta("fix", &me), "a.suture".into())],
        &Expiry::default(),
    )
    .unwrap();
    let e = agent::run_once(&opts).unwrap_err().chain();
    assert!(
        e.contains("wrongly targeted") && e.contains("nothing was applied"),
        "{e}"
    );
    repo::withdraw(&dir, &keys, "fix", &Expiry::default()).unwrap();

    // The signed metadata says this executable's build-id; the bundle is for another file.
    let wrong_file = bundle(s.path(), "b.suture", "fix2", &"ab".repeat(20));
    repo::add_described(
        &dir,
        &keys,
        &[(wrong_file, meta("fix2", &me), "b.suture".into())],
        &Expiry::default(),
    )
    .unwrap();
    let e = agent::run_once(&opts).unwrap_err().chain();
    assert!(
        e.contains("wrongly targeted") && e.contains(&"ab".repeat(20)),
        "{e}"
    );

    // The state records the refusal and nothing applied.
    let st = agent::status(&opts.state_dir).unwrap();
    assert!(st.patches.is_empty());
    assert!(st.last_error.unwrap().contains("wrongly targeted"));
}
