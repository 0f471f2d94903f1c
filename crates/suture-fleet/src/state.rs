//! The agent's state on the host (`<state dir>/state.json`, schema `suture.agent-state/1`):
//! which patch it applied to which process, so that a later pass reverts exactly those when
//! the patch is withdrawn, and `suture agent status` can say what the host runs. Written
//! atomically (a temporary file renamed over the old one), so a killed agent leaves the old
//! state or the new one. The TUF client's trusted metadata lives beside it in `tuf/`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::ProcId;

/// The schema name of [`State`].
pub const STATE_SCHEMA: &str = "suture.agent-state/1";

/// The default state directory.
pub const DEFAULT_DIR: &str = "/var/lib/suture";

/// A patch the agent applied to one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPatch {
    /// The patch id recorded in the process.
    pub patch_id: String,
    /// The TUF target it came from.
    pub target: String,
    /// The target's sha256 (hex), as signed in `targets.json`.
    pub sha256: String,
    pub process: ProcId,
    /// The mapped file that was patched.
    pub object: String,
    pub build_id: String,
    /// Seconds since the epoch.
    pub applied_at: u64,
}

/// The versions of the trusted metadata of the last verified pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub root: u64,
    pub targets: u64,
    pub snapshot: u64,
    pub timestamp: u64,
    /// When the timestamp expires (RFC 3339).
    pub timestamp_expires: String,
}

/// `state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub schema: String,
    /// The repository of the last pass.
    #[serde(default)]
    pub repo: Option<String>,
    /// Seconds since the epoch when the last pass ended (also a failed one).
    #[serde(default)]
    pub last_pass: Option<u64>,
    /// The last pass's error, when it failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Seconds since the epoch of the last pass that verified the repository.
    #[serde(default)]
    pub last_verified: Option<u64>,
    #[serde(default)]
    pub metadata: Option<Versions>,
    #[serde(default)]
    pub applied: Vec<AppliedPatch>,
    /// Targets that failed this host's health gate: not applied again here until the
    /// repository publishes another file (another sha256) for them.
    #[serde(default)]
    pub held: Vec<Held>,
    /// How the daemon finds processes started between full passes (null after `--once`).
    #[serde(default)]
    pub watch: Option<Watch>,
    /// Kernel livepatch modules the agent loaded (loaded again by `suture agent --boot`).
    #[serde(default)]
    pub kernel: Vec<KernelPatch>,
}

/// A kernel livepatch module the agent loaded, and its verified copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPatch {
    /// The patch (module) name.
    pub patch_id: String,
    /// The TUF target it came from.
    pub target: String,
    /// The target's sha256 (hex), as signed in `targets.json`.
    pub sha256: String,
    /// The verified copy in `<state dir>/kernel/`.
    pub file: PathBuf,
    pub kernel_release: Option<String>,
    pub kernel_build_id: Option<String>,
    /// Seconds since the epoch.
    pub loaded_at: u64,
}

/// How the daemon finds processes started between full passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// `exec-events` (the kernel's process connector: each exec as it happens), `polling`
    /// (listing `/proc` every `--rescan` seconds) or `off` (full passes only).
    pub mode: String,
    /// Why exec events are not used, when they are not.
    pub reason: Option<String>,
}

/// A target held back on this host after failing its health gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub patch_id: String,
    pub target: String,
    pub sha256: String,
    /// Seconds since the epoch.
    pub at: u64,
    pub error: String,
}

impl Default for State {
    fn default() -> State {
        State {
            schema: STATE_SCHEMA.into(),
            repo: None,
            last_pass: None,
            last_error: None,
            last_verified: None,
            metadata: None,
            applied: Vec::new(),
            held: Vec::new(),
            watch: None,
            kernel: Vec::new(),
        }
    }
}

/// `<dir>/state.json`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Creates the state directory (mode 0700) if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create the state directory", dir, e))
}

/// An exclusive lock on a state directory (`<dir>/lock`, `flock`), held for one agent pass so
/// that two agents never apply, revert or record over each other; released when dropped (and
/// by the kernel when the agent dies).
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Takes the state directory's lock, or says that another agent holds it.
pub fn lock(dir: &Path) -> Result<Lock> {
    ensure_dir(dir)?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(Lock)
        .map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                Error::msg(format!(
                    "another suture agent is running with the state directory {} (one agent \
                     per state directory)",
                    dir.display()
                ))
            } else {
                Error::io("lock", &path, errno.into())
            }
        })
}

/// This host's seed for staged rollouts (`crate::meta::Wave`), in `0..SEED_RANGE`: read from
/// `<dir>/seed`, drawn from `/dev/urandom` and written there the first time. Write the file
/// by hand to place a host in a given wave.
pub fn host_seed(dir: &Path) -> Result<u32> {
    use std::io::Read;
    let path = dir.join("seed");
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            return t
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&s| s < crate::meta::SEED_RANGE)
                .ok_or_else(|| {
                    Error::msg(format!(
                        "{} must hold a number below {}",
                        path.display(),
                        crate::meta::SEED_RANGE
                    ))
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("read", &path, e)),
    }
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::io("read", Path::new("/dev/urandom"), e))?;
    let seed = (u64::from_le_bytes(b) % u64::from(crate::meta::SEED_RANGE)) as u32;
    ensure_dir(dir)?;
    std::fs::write(&path, format!("{seed}\n")).map_err(|e| Error::io("write", &path, e))?;
    Ok(seed)
}

impl State {
    /// The state in `dir`; the empty state when there is none yet.
    pub fn load(dir: &Path) -> Result<State> {
        let path = state_path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let s: State = serde_json::from_slice(&bytes)
            .map_err(|e| Error::with(format!("{} is not valid agent state", path.display()), e))?;
        if s.schema != STATE_SCHEMA {
            return Err(Error::msg(format!(
                "{} has schema {:?}; this suture reads {STATE_SCHEMA:?}",
                path.display(),
                s.schema
            )));
        }
        Ok(s)
    }

    /// Writes the state to `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        ensure_dir(dir)?;
        let path = state_path(dir);
        let tmp = dir.join(".state.json.tmp");
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::with("cannot serialise the agent state", e))?;
        text.push(b'\n');
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io("write", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = std::env::temp_dir().join(format!("suture-fleet-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(State::load(&dir).unwrap(), State::default());
        let mut s = State::default();
        s.applied.push(AppliedPatch {
            patch_id: "fix".into(),
            target: "fix.suture".into(),
            sha256: "00".into(),
            process: ProcId {
                pid: 1,
                start_time: 2,
            },
            object: "/bin/prog".into(),
            build_id: "ab".into(),
            applied_at: 3,
        });
        s.save(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), s);
        let held = lock(&dir).unwrap();
        let e = lock(&dir).unwrap_err().chain();
        assert!(e.contains("another suture agent"), "{e}");
        drop(held);
        drop(lock(&dir).unwrap());
        let seed = host_seed(&dir).unwrap();
        assert!(seed < crate::meta::SEED_RANGE);
        assert_eq!(host_seed(&dir).unwrap(), seed);
        std::fs::write(dir.join("seed"), "10000").unwrap();
        assert!(host_seed(&dir).is_err());
        std::fs::write(state_path(&dir), "{\"schema\": \"x/2\"}").unwrap();
        assert!(State::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
