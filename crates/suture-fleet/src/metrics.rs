//! The agent's Prometheus metrics in the text exposition format, written to a file after
//! every pass (`suture agent --metrics FILE`) for node_exporter's textfile collector, so the
//! fleet's state aggregates in the monitoring operators already run. The file is replaced
//! atomically (written beside it, then renamed), as the collector expects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

/// What a pass exposes.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Seconds since the epoch of the last pass, and of the last one that verified.
    pub last_pass: u64,
    pub last_success: u64,
    /// The last pass verified the repository.
    pub verified: bool,
    /// ... and nothing failed in any process.
    pub ok: bool,
    pub seed: Option<u32>,
    /// Trusted metadata versions by role.
    pub versions: Vec<(&'static str, u64)>,
    /// When the trusted timestamp expires (seconds since the epoch).
    pub timestamp_expires: i64,
    /// Processes the agent applied each patch to (still tracked).
    pub applied_processes: BTreeMap<String, u64>,
    pub pass_applied: u64,
    pub pass_reverted: u64,
    pub pass_failed: u64,
    /// Kernel patches the agent loaded (its state): patch id → enabled in the kernel now.
    pub kernel_patches: BTreeMap<String, bool>,
    /// (patch id, target, action of the last pass).
    pub targets: Vec<(String, String, String)>,
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The text of `m`.
pub fn render(m: &Metrics) -> String {
    let one = |v: String| vec![(String::new(), v)];
    let b = |v: bool| u8::from(v).to_string();
    let mut o = String::new();
    gauge(
        &mut o,
        "suture_agent_last_pass_timestamp_seconds",
        "When the agent's last pass ended.",
        &one(m.last_pass.to_string()),
    );
    gauge(
        &mut o,
        "suture_agent_last_verified_timestamp_seconds",
        "When a pass last verified the repository.",
        &one(m.last_success.to_string()),
    );
    gauge(
        &mut o,
        "suture_agent_repository_verified",
        "1 when the last pass verified the repository, 0 when it was refused or unreachable.",
        &one(b(m.verified)),
    );
    gauge(
        &mut o,
        "suture_agent_last_pass_ok",
        "1 when the last pass verified the repository and nothing failed in any process.",
        &one(b(m.ok)),
    );
    if let Some(seed) = m.seed {
        gauge(
            &mut o,
            "suture_agent_seed",
            "This host's seed for staged rollouts (0-9999).",
            &one(seed.to_string()),
        );
    }
    gauge(
        &mut o,
        "suture_agent_metadata_version",
        "Version of the trusted TUF metadata, by role.",
        &m.versions
            .iter()
            .map(|(r, v)| (format!("{{role=\"{r}\"}}"), v.to_string()))
            .collect::<Vec<_>>(),
    );
    gauge(
        &mut o,
        "suture_agent_timestamp_expiry_timestamp_seconds",
        "When the trusted timestamp metadata expires.",
        &one(m.timestamp_expires.to_string()),
    );
    gauge(
        &mut o,
        "suture_agent_patched_processes",
        "Processes the agent applied the patch to and still tracks.",
        &m.applied_processes
            .iter()
            .map(|(id, n)| (format!("{{patch_id=\"{}\"}}", label(id)), n.to_string()))
            .collect::<Vec<_>>(),
    );
    gauge(
        &mut o,
        "suture_agent_last_pass_processes",
        "Processes patched, reverted and failed in the last pass.",
        &[
            ("applied", m.pass_applied),
            ("reverted", m.pass_reverted),
            ("failed", m.pass_failed),
        ]
        .iter()
        .map(|(k, n)| (format!("{{result=\"{k}\"}}"), n.to_string()))
        .collect::<Vec<_>>(),
    );
    gauge(
        &mut o,
        "suture_agent_kernel_patch_live",
        "Kernel livepatch modules the agent loaded: 1 while enabled in the running kernel.",
        &m.kernel_patches
            .iter()
            .map(|(id, live)| (format!("{{patch_id=\"{}\"}}", label(id)), b(*live)))
            .collect::<Vec<_>>(),
    );
    gauge(
        &mut o,
        "suture_agent_target",
        "Targets of the repository with what the last pass did (action label).",
        &m.targets
            .iter()
            .map(|(id, t, a)| {
                (
                    format!(
                        "{{patch_id=\"{}\",target=\"{}\",action=\"{}\"}}",
                        label(id),
                        label(t),
                        label(a)
                    ),
                    "1".to_string(),
                )
            })
            .collect::<Vec<_>>(),
    );
    o
}

/// Replaces `path` with `text` atomically.
pub fn write(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::msg(format!("{} is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io("write the metrics file", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let mut m = Metrics {
            last_pass: 5,
            verified: true,
            ok: true,
            seed: Some(42),
            versions: vec![("targets", 3)],
            ..Default::default()
        };
        m.applied_processes.insert("fix \"1\"".into(), 2);
        m.kernel_patches.insert("klp_fix".into(), true);
        m.targets
            .push(("fix".into(), "fix.prog.suture".into(), "applied".into()));
        let t = render(&m);
        assert!(t.contains("# TYPE suture_agent_last_pass_ok gauge\nsuture_agent_last_pass_ok 1\n"));
        assert!(t.contains("suture_agent_metadata_version{role=\"targets\"} 3\n"));
        assert!(t.contains("suture_agent_patched_processes{patch_id=\"fix \\\"1\\\"\"} 2\n"));
        assert!(t.contains(
            "suture_agent_target{patch_id=\"fix\",target=\"fix.prog.suture\",action=\"applied\"} 1\n"
        ));
        assert!(t.contains("suture_agent_seed 42\n"));
        assert!(t.contains("suture_agent_kernel_patch_live{patch_id=\"klp_fix\"} 1\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
