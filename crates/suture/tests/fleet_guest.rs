//! Kernel patches through the fleet agent in the stock Debian kernel, booted in QEMU: the
//! agent selects a livepatch module of the repository by the running kernel's release and
//! vmlinux build-id and loads it; its state is kept on the guest's disk image; after a
//! reboot (the same disk, a new boot) `suture agent --boot` loads it again from the verified
//! copy without any repository, refuses a tampered copy, and a later pass against a
//! repository that withdrew the patch unloads it.
//!
//! Needs the booted-guest tier (`SUTURE_GUEST_CACHE`, see tests/guest): skips without it
//! locally, fails under `CI`.

#![cfg(feature = "fleet")]

mod guest;

use std::path::Path;
use std::process::Command;

use guest::{boot_with_disk, build_module, fixture, Initramfs, Script};
use suture_testkit::{run, text};

const MARKER: &str = "suture-fleet-kernel-marker-5d1e";
const PATCH: &str = "suture_fleet_cmdline";

fn suture(args: &[&str]) -> serde_json::Value {
    let o = run(Command::new(env!("CARGO_BIN_EXE_suture")).args(args));
    assert!(o.status.success(), "suture {args:?}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// Every file under `dir` into the initramfs under `at`.
fn add_tree(i: &mut Initramfs, dir: &Path, at: &str) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let guest = format!("{at}/{}", e.file_name().to_string_lossy());
        if p.is_dir() {
            add_tree(i, &p, &guest);
        } else {
            i.file(&guest, &p);
        }
    }
}

#[test]
fn kernel_patch_survives_a_reboot() {
    let Some(kernel) = guest::kernel() else {
        return;
    };
    let work = guest::scratch("fleet-kernel");
    let notes = std::fs::read(guest::notes(&kernel)).unwrap();
    let build_id = suture_kernel::identity::build_id_from_notes(&notes)
        .unwrap()
        .expect("the guest kernel has a build-id");
    let module = build_module(
        &kernel,
        PATCH,
        &fixture("livepatch_identity.c"),
        &format!(
            "-DSUTURE_MARKER='\"{MARKER}\"' -DSUTURE_RELEASE='\"{}\"' -DSUTURE_BUILD_ID='\"{build_id}\"'",
            kernel.release
        ),
    );
    // A module for another build of the same release: never selected here.
    let other = build_module(
        &kernel,
        "suture_fleet_other",
        &fixture("livepatch_identity.c"),
        &format!(
            "-DSUTURE_RELEASE='\"{}\"' -DSUTURE_BUILD_ID='\"{}\"'",
            kernel.release,
            "00".repeat(20)
        ),
    );

    // The repository, and a later version of it where the patch is withdrawn.
    let repo = work.join("repo");
    let keys = work.join("keys");
    let s = |a: &[&Path]| {
        a.iter()
            .map(|p| p.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let p = s(&[&repo, &keys, &module, &other]);
    suture(&["repo", "init", &p[0], "--keys", &p[1], "--json"]);
    suture(&[
        "repo", "add", &p[0], &p[2], &p[3], "--keys", &p[1], "--json",
    ]);
    let withdrawn = work.join("repo-withdrawn");
    let o = run(Command::new("cp").arg("-a").arg(&repo).arg(&withdrawn));
    assert!(o.status.success(), "{}", text(&o));
    let w = withdrawn.to_str().unwrap();
    suture(&["repo", "withdraw", w, PATCH, "--keys", &p[1], "--json"]);

    let mut initramfs = Initramfs::new();
    initramfs
        .suture()
        .file("/etc/suture/root.json", &repo.join("metadata/1.root.json"))
        .stock_module(&kernel, "virtio_pci")
        .stock_module(&kernel, "virtio_blk");
    add_tree(&mut initramfs, &repo, "/srv/repo");
    add_tree(&mut initramfs, &withdrawn, "/srv/repo-withdrawn");
    let disk = work.join("disk.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let disk_up = "modprobe virtio_pci && modprobe virtio_blk && test -b /dev/vda";
    let pass = |state: &str, repo: &str, extra: &str| {
        format!(
            "suture agent --trust /etc/suture/root.json --state {state} --repo {repo} --once \
             --json --health-settle 0 {extra} 2>/dev/null"
        )
    };

    // First boot: the agent loads the module for this kernel, its state goes to the disk.
    let mut s1 = Script::new();
    s1.step("disk", disk_up)
        .step("before", "cat /proc/cmdline")
        // A failing health check (run while the patch is live) unloads it and holds it back
        // (in a state directory of its own).
        .step(
            "unhealthy",
            &pass(
                "/tmp/h",
                "/srv/repo",
                &format!(
                    "--health-check 'grep -q {MARKER} /proc/cmdline && \
                     test \"$SUTURE_KERNEL_PATCH\" = 1 && touch /tmp/saw-live; exit 3'"
                ),
            ),
        )
        .step(
            "after-unhealthy",
            "cat /proc/cmdline; ls /sys/kernel/livepatch; test -e /tmp/saw-live && echo saw-live",
        )
        .step("held", &pass("/tmp/h", "/srv/repo", ""))
        .step("pass", &pass("/var/lib/suture", "/srv/repo", ""))
        .step("patched", "cat /proc/cmdline")
        .step(
            "status",
            "suture agent status --state /var/lib/suture --json 2>/dev/null",
        )
        .step("save", "tar -cf /dev/vda -C / var/lib/suture && sync");
    let b = boot_with_disk(&kernel, "fleet-kernel-1", &mut initramfs, &s1, &disk);
    b.expect("disk", 0, &[]);
    let before = &b.expect("before", 0, &[]).output;
    b.ensure(
        !before.contains(MARKER),
        format!("patched before the agent ran: {before}"),
    );
    let r = b.json("unhealthy");
    b.ensure(
        r["ok"] == false
            && r["failed"][0]["stage"] == "health"
            && r["failed"][0]["patch_id"] == PATCH
            && r["failed"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("the patch was unloaded")),
        format!("{r:#}"),
    );
    let after = &b.expect("after-unhealthy", 0, &["saw-live"]).output;
    b.ensure(
        !after.contains(MARKER) && !after.lines().any(|l| l == PATCH),
        format!("still patched after a failed health check: {after}"),
    );
    let r = b.json("held");
    b.ensure(
        r["kernel"].as_array().is_some_and(|k| k.is_empty())
            && r["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["patch_id"] == PATCH && t["action"] == "held"),
        format!("{r:#}"),
    );
    let r = b.json("pass");
    b.ensure(r["ok"] == true, format!("{r:#}"));
    let loaded: Vec<&serde_json::Value> = r["kernel"].as_array().unwrap().iter().collect();
    b.ensure(
        loaded.len() == 1 && loaded[0]["patch_id"] == PATCH && loaded[0]["action"] == "loaded",
        format!("{r:#}"),
    );
    let action = |r: &serde_json::Value, id: &str| {
        r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["patch_id"] == id)
            .map(|t| t["action"].clone())
    };
    b.ensure(
        action(&r, PATCH) == Some("applied".into()),
        format!("{r:#}"),
    );
    b.ensure(
        action(&r, "suture_fleet_other") == Some("no-match".into()),
        format!("{r:#}"),
    );
    b.expect("patched", 0, &[MARKER]);
    let st = b.json("status");
    b.ensure(
        st["kernel"][0]["patch_id"] == PATCH && st["kernel"][0]["live"] == true,
        format!("{st:#}"),
    );
    b.expect("save", 0, &[]);

    // Second boot with the same disk: restored by `--boot` with no repository at all.
    let mut s2 = Script::new();
    s2.step("disk", &format!("{disk_up} && tar -xf /dev/vda -C /"))
        .step("before", "cat /proc/cmdline")
        .step(
            "restore",
            "suture agent --boot --state /var/lib/suture --json 2>/dev/null",
        )
        .step("patched", "cat /proc/cmdline")
        .step(
            "again",
            "suture agent --boot --state /var/lib/suture --json 2>/dev/null",
        )
        // A copy that no longer matches its signed hash is refused, nothing loaded.
        .step(
            "tampered",
            "f=$(ls /var/lib/suture/kernel/*.ko) && cp $f /tmp/good && \
             suture kernel unload suture_fleet_cmdline >/dev/null && printf x >> $f && \
             suture agent --boot --state /var/lib/suture --json 2>/dev/null; echo \"exit=$?\"; \
             cp /tmp/good $f",
        )
        .step(
            "after-tampered",
            "cat /proc/cmdline; ls /sys/kernel/livepatch",
        )
        .step(
            "restore-again",
            "suture agent --boot --state /var/lib/suture 2>&1",
        )
        // A pass against the repository that withdrew it unloads it.
        .step(
            "withdrawn",
            &pass("/var/lib/suture", "/srv/repo-withdrawn", ""),
        )
        .step(
            "unpatched",
            "cat /proc/cmdline; ls /sys/kernel/livepatch; ls /var/lib/suture/kernel",
        );
    let b = boot_with_disk(&kernel, "fleet-kernel-2", &mut initramfs, &s2, &disk);
    b.expect("disk", 0, &[]);
    let before = &b.expect("before", 0, &[]).output;
    b.ensure(
        !before.contains(MARKER),
        format!("patched before --boot: {before}"),
    );
    let r = b.json("restore");
    b.ensure(
        r["ok"] == true
            && r["modules"][0]["action"] == "loaded"
            && r["modules"][0]["patch_id"] == PATCH,
        format!("{r:#}"),
    );
    b.expect("patched", 0, &[MARKER]);
    let r = b.json("again");
    b.ensure(r["modules"][0]["action"] == "live", format!("{r:#}"));
    let t = &b
        .expect(
            "tampered",
            0,
            &["exit=1", "does not match its signed metadata"],
        )
        .output;
    b.ensure(t.contains("\"failed\""), t.clone());
    let after = &b.expect("after-tampered", 0, &[]).output;
    b.ensure(
        !after.contains(MARKER) && !after.contains(PATCH),
        after.clone(),
    );
    b.expect("restore-again", 0, &[&format!("{PATCH}: loaded")]);
    let r = b.json("withdrawn");
    b.ensure(
        r["ok"] == true
            && r["kernel"][0]["action"] == "unloaded"
            && r["kernel"][0]["patch_id"] == PATCH,
        format!("{r:#}"),
    );
    let after = &b.expect("unpatched", 0, &[]).output;
    b.ensure(
        !after.contains(MARKER) && !after.contains(PATCH),
        format!("still patched after the withdrawal: {after}"),
    );
}
