//! Kernel livepatch modules on the host: which targets are for the running kernel, the
//! verified copies the agent keeps of the modules it loaded (`<state dir>/kernel/`), and
//! `suture agent --boot`, which loads them again early at boot.
//!
//! Loading and unloading go through `suture_kernel::livepatch::Kernel` (what `suture kernel
//! load|unload` runs): identity check against `/sys/kernel/notes`, dependencies by modprobe,
//! `finit_module`, the transition waited for and reversed when it does not finish.
//!
//! At boot there is no network: the agent trusts what it verified before. Each module it
//! loaded was checked through TUF when downloaded; it keeps the module file, and after every
//! verified pass the signed `targets.json` of that pass (`<state dir>/kernel/targets.json`).
//! `--boot` verifies the signatures of that `targets.json` with the trusted root tough keeps
//! (`<state dir>/tuf/root.json`), then each module file against the length and SHA-256 the
//! signed metadata gives its target, then the module's recorded kernel against the running
//! one; only then it loads. Expiry is not checked at boot: a patch that was live before the
//! reboot is restored even if the host was off past the timestamp's lifetime (the next pass
//! online verifies freshness and reverts it if it was withdrawn meanwhile).

use std::path::{Path, PathBuf};

use serde::Serialize;
use suture_kernel::livepatch::{self, Kernel};

use crate::error::{Error, Result};
use crate::meta::TargetMeta;
use crate::state::{self, KernelPatch, State};

/// The schema of [`BootReport`].
pub const BOOT_SCHEMA: &str = "suture.agent-boot/1";

/// `<state dir>/kernel`: the verified module copies and the signed targets metadata.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("kernel")
}

/// The signed `targets.json` of the last verified pass (for `--boot`).
pub fn targets_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("targets.json")
}

/// The running kernel's release and vmlinux build-id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub release: String,
    pub build_id: String,
}

impl Running {
    pub fn of(k: &Kernel) -> std::result::Result<Running, String> {
        Ok(Running {
            release: k.running_release()?,
            build_id: k.running_build_id()?,
        })
    }

    /// The target is for this kernel: it records a vmlinux build-id, and it and the
    /// release (when recorded) are the running kernel's.
    pub fn matches(&self, m: &TargetMeta) -> bool {
        m.kernel_build_id
            .as_deref()
            .is_some_and(|b| b.eq_ignore_ascii_case(&self.build_id))
            && m.kernel_release
                .as_deref()
                .is_none_or(|r| r == self.release)
    }
}

/// Whether patch `name` is loaded and enabled.
pub fn is_live(k: &Kernel, name: &str) -> bool {
    k.patch_status(name)
        .ok()
        .flatten()
        .is_some_and(|p| p.enabled)
}

/// Writes a module downloaded and verified through TUF to the state's cache (0600, by
/// rename), and checks that it is what its signed metadata says: a livepatch module named
/// `meta.patch_id` recording the same target kernel. Returns its path.
pub fn keep_module(
    state_dir: &Path,
    sha256: &str,
    meta: &TargetMeta,
    bytes: &[u8],
) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let d = dir(state_dir);
    state::ensure_dir(&d)?;
    let path = d.join(format!(
        "{}.{}.ko",
        &sha256[..sha256.len().min(16)],
        meta.patch_id
    ));
    let tmp = d.join(format!(".{}.tmp", meta.patch_id));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io("write", &path, e))?;
    let info = match livepatch::inspect_module(&path) {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(Error::msg(format!("is not a kernel module: {e}")));
        }
    };
    let agrees = info.livepatch
        && info.name == meta.patch_id
        && info.release == meta.kernel_release
        && info
            .vmlinux_build_id
            .as_deref()
            .map(str::to_ascii_lowercase)
            == meta.kernel_build_id.as_deref().map(str::to_ascii_lowercase);
    if !agrees {
        let _ = std::fs::remove_file(&path);
        return Err(Error::msg(format!(
            "is wrongly targeted: its module is {:?} (livepatch: {}) for release {:?}, \
             build-id {:?}; the signed metadata says {:?} for release {:?}, build-id {:?}",
            info.name,
            info.livepatch,
            info.release,
            info.vmlinux_build_id,
            meta.patch_id,
            meta.kernel_release,
            meta.kernel_build_id
        )));
    }
    Ok(path)
}

/// Keeps the signed `targets.json` of a verified pass for `--boot` (atomically).
pub fn keep_targets(state_dir: &Path, json: &[u8]) -> Result<()> {
    let d = dir(state_dir);
    state::ensure_dir(&d)?;
    let path = targets_path(state_dir);
    let tmp = d.join(".targets.json.tmp");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io("write", &path, e))
}

/// One module of the state at boot.
#[derive(Clone, Debug, Serialize)]
pub struct BootEntry {
    pub patch_id: String,
    pub target: String,
    pub file: PathBuf,
    /// `loaded`, `live` (loaded already), `failed`.
    pub action: &'static str,
    pub error: Option<String>,
    /// Time in `finit_module` and in the transition, when loaded.
    pub load_seconds: Option<f64>,
    pub transition_seconds: Option<f64>,
}

/// `suture agent --boot --json`.
#[derive(Clone, Debug, Serialize)]
pub struct BootReport {
    pub schema: &'static str,
    /// Every recorded module is live.
    pub ok: bool,
    pub state_dir: PathBuf,
    pub modules: Vec<BootEntry>,
}

/// The signed targets metadata kept by the last verified pass, its signatures checked with
/// the root tough trusts in the state.
fn trusted_targets(state_dir: &Path) -> Result<tough::schema::Signed<tough::schema::Targets>> {
    use tough::schema::{Root, Signed, Targets};
    let root_path = state_dir.join("tuf/root.json");
    let root: Signed<Root> = serde_json::from_slice(
        &std::fs::read(&root_path)
            .map_err(|e| Error::io("read the trusted root", &root_path, e))?,
    )
    .map_err(|e| Error::with(format!("{} is not a TUF root", root_path.display()), e))?;
    root.signed
        .verify_role(&root)
        .map_err(|e| Error::with(format!("{} does not verify", root_path.display()), e))?;
    let path = targets_path(state_dir);
    let targets: Signed<Targets> = serde_json::from_slice(
        &std::fs::read(&path).map_err(|e| Error::io("read the kept targets metadata", &path, e))?,
    )
    .map_err(|e| Error::with(format!("{} is not TUF targets metadata", path.display()), e))?;
    root.signed.verify_role(&targets).map_err(|e| {
        Error::with(
            format!(
                "{} is not signed by the trusted targets key",
                path.display()
            ),
            e,
        )
    })?;
    Ok(targets)
}

/// Checks a kept module against the signed metadata: its target is there with the recorded
/// SHA-256, and the file has that length and hash.
fn verify_kept(
    targets: &tough::schema::Signed<tough::schema::Targets>,
    k: &KernelPatch,
) -> std::result::Result<(), String> {
    let name = tough::TargetName::new(&k.target).map_err(|e| e.to_string())?;
    let t = targets
        .signed
        .targets
        .get(&name)
        .ok_or_else(|| format!("target {} is not in the signed metadata", k.target))?;
    let signed = suture_bundle::hex(&t.hashes.sha256);
    if signed != k.sha256 {
        return Err(format!(
            "target {} is signed with sha256 {signed}, the state recorded {}",
            k.target, k.sha256
        ));
    }
    let bytes = std::fs::read(&k.file).map_err(|e| format!("{}: {e}", k.file.display()))?;
    let have =
        suture_bundle::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref());
    if bytes.len() as u64 != t.length || have != signed {
        return Err(format!(
            "{} does not match its signed metadata (length {}, sha256 {have}; signed: length \
             {}, sha256 {signed})",
            k.file.display(),
            bytes.len(),
            t.length
        ));
    }
    Ok(())
}

/// `suture agent --boot`: loads again every kernel patch the state records as loaded, after
/// verifying it as the module comment says. Needs no network. `Err` when the state or the
/// signed metadata cannot be read or do not verify (nothing loaded then).
pub fn boot(state_dir: &Path, timeout: std::time::Duration) -> Result<BootReport> {
    let _lock = state::lock(state_dir)?;
    let st = State::load(state_dir)?;
    let mut report = BootReport {
        schema: BOOT_SCHEMA,
        ok: true,
        state_dir: state_dir.to_path_buf(),
        modules: Vec::new(),
    };
    if st.kernel.is_empty() {
        return Ok(report);
    }
    let targets = trusted_targets(state_dir)?;
    let k = Kernel::default();
    for p in &st.kernel {
        let mut e = BootEntry {
            patch_id: p.patch_id.clone(),
            target: p.target.clone(),
            file: p.file.clone(),
            action: "failed",
            error: None,
            load_seconds: None,
            transition_seconds: None,
        };
        if is_live(&k, &p.patch_id) {
            e.action = "live";
        } else if let Err(why) = verify_kept(&targets, p) {
            e.error = Some(format!("{why}; not loaded"));
        } else {
            let opts = livepatch::Options {
                timeout,
                ..Default::default()
            };
            match k.load(&p.file, opts) {
                Ok(r) => {
                    e.action = "loaded";
                    e.load_seconds = Some(r.load_seconds);
                    e.transition_seconds = Some(r.transition_seconds);
                }
                Err(err) => e.error = Some(err.to_string()),
            }
        }
        report.ok &= e.action != "failed";
        report.modules.push(e);
    }
    Ok(report)
}
