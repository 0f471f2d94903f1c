//! The repository side: `suture repo init|add|withdraw|refresh`. A TUF repository written and
//! signed by `tough`'s editor, with consistent snapshots (every metadata version and every
//! target file is kept under a name of its own, so an agent fetching while the operator adds
//! a patch never sees a mixture):
//!
//! ```text
//! DIR/metadata/1.root.json        the trusted root to install on hosts
//! DIR/metadata/N.targets.json     targets with custom.suture (crate::meta)
//! DIR/metadata/N.snapshot.json
//! DIR/metadata/timestamp.json
//! DIR/targets/<sha256>.<name>     the bundles and modules
//! ```
//!
//! One ed25519 key per role, generated into a key directory outside DIR (files mode 0600,
//! directory 0700); each role's threshold is 1.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use serde::Serialize;
use tough::editor::signed::{PathExists, SignedRole};
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::{ExpirationEnforcement, RepositoryLoader, TargetName};
use url::Url;

use crate::error::{Error, Result};
use crate::meta::{Kind, TargetMeta, TARGET_SCHEMA};

/// The four top-level roles, in the order their keys are generated.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// How long each role's signature is valid from the moment it is signed.
#[derive(Clone, Copy, Debug)]
pub struct Expiry {
    pub root: Duration,
    pub targets: Duration,
    pub snapshot: Duration,
    /// Seconds, may be negative (a timestamp already expired: for testing agents).
    pub timestamp_secs: i64,
}

impl Default for Expiry {
    fn default() -> Expiry {
        const DAY: u64 = 24 * 3600;
        Expiry {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(90 * DAY),
            timestamp_secs: 7 * DAY as i64,
        }
    }
}

/// What `init` did.
#[derive(Debug, Serialize)]
pub struct Init {
    pub schema: &'static str,
    /// The trusted root to install on hosts (`suture agent --trust`).
    pub root: PathBuf,
    pub metadata: PathBuf,
    pub targets: PathBuf,
    /// The key files, by role.
    pub keys: Vec<(String, PathBuf)>,
}

/// One target of the repository.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    pub name: String,
    pub length: u64,
    pub sha256: String,
    pub meta: Option<TargetMeta>,
}

/// What `add`, `withdraw` and `refresh` did.
#[derive(Debug, Serialize)]
pub struct Signed {
    pub schema: &'static str,
    /// Targets added or withdrawn by this command.
    pub changed: Vec<Listed>,
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    /// RFC 3339.
    pub timestamp_expires: String,
}

const REPO_SCHEMA: &str = "suture.repo/1";

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::with("cannot start the async runtime", e))
}

fn metadata_dir(dir: &Path) -> PathBuf {
    dir.join("metadata")
}

fn targets_dir(dir: &Path) -> PathBuf {
    dir.join("targets")
}

fn key_path(keys: &Path, role: &str) -> PathBuf {
    keys.join(format!("{role}.pk8"))
}

fn later(d: Duration) -> Result<jiff::Timestamp> {
    secs_from_now(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

fn secs_from_now(secs: i64) -> Result<jiff::Timestamp> {
    // Whole seconds: TUF timestamps are written without fractions.
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map_err(|e| Error::with("bad clock", e))?;
    now.checked_add(jiff::SignedDuration::from_secs(secs))
        .map_err(|e| Error::with("expiry out of range", e))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io("resolve", p, e))
}

fn role_type(role: &str) -> RoleType {
    match role {
        "root" => RoleType::Root,
        "targets" => RoleType::Targets,
        "snapshot" => RoleType::Snapshot,
        _ => RoleType::Timestamp,
    }
}

/// A new ed25519 key, written as PKCS#8 to `path` (created, mode 0600, never overwritten):
/// its TUF form and key id.
fn generate_key(
    path: &Path,
    role: &str,
    rng: &SystemRandom,
) -> Result<(
    tough::schema::key::Key,
    tough::schema::decoded::Decoded<tough::schema::decoded::Hex>,
)> {
    use std::os::unix::fs::OpenOptionsExt;
    let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(rng)
        .map_err(|e| Error::msg(format!("cannot generate the {role} key: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    std::io::Write::write_all(&mut f, pkcs8.as_ref()).map_err(|e| Error::io("write", path, e))?;
    let sign = tough::sign::parse_keypair(pkcs8.as_ref())
        .map_err(|e| Error::with(format!("cannot read back the {role} key"), e))?;
    let key = tough::sign::Sign::tuf_key(&sign);
    let id = key
        .key_id()
        .map_err(|e| Error::with(format!("cannot compute the {role} key id"), e))?;
    Ok((key, id))
}

/// Creates a repository in `dir` (which must not hold one) with new keys in `keys` (outside
/// `dir`; created, must not hold keys already).
pub fn init(dir: &Path, keys: &Path, expiry: &Expiry) -> Result<Init> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = absolute(dir)?;
    let keys = absolute(keys)?;
    if keys.starts_with(&dir) {
        return Err(Error::msg(format!(
            "the key directory {} is inside the repository {}: the keys would be published \
             with it; keep them elsewhere",
            keys.display(),
            dir.display()
        )));
    }
    let meta_dir = metadata_dir(&dir);
    if meta_dir.exists() {
        return Err(Error::msg(format!(
            "{} already holds a repository ({} exists)",
            dir.display(),
            meta_dir.display()
        )));
    }
    for role in ROLES {
        let p = key_path(&keys, role);
        if p.exists() {
            return Err(Error::msg(format!(
                "{} already exists: refusing to overwrite a signing key",
                p.display()
            )));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&keys)
        .map_err(|e| Error::io("create the key directory", &keys, e))?;
    let rng = SystemRandom::new();
    let mut root = Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: later(expiry.root)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    let mut key_files = Vec::new();
    for role in ROLES {
        let path = key_path(&keys, role);
        let (key, id) = generate_key(&path, role, &rng)?;
        root.keys.insert(id.clone(), key);
        root.roles.insert(
            role_type(role),
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
        key_files.push((role.to_string(), path));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let root_key: Vec<Box<dyn KeySource>> = vec![Box::new(LocalKeySource {
            path: key_path(&keys, "root"),
        })];
        let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root), &root_key, &rng)
            .await
            .map_err(|e| Error::with("cannot sign root.json", e))?;
        signed
            .write(&meta_dir, true)
            .await
            .map_err(|e| Error::with(format!("cannot write {}", meta_dir.display()), e))?;
        std::fs::create_dir_all(targets_dir(&dir))
            .map_err(|e| Error::io("create", &targets_dir(&dir), e))?;
        let root_path = meta_dir.join("1.root.json");
        let mut editor = RepositoryEditor::new(&root_path)
            .await
            .map_err(|e| Error::with("cannot open the new root", e))?;
        set_targets(&mut editor, 1, later(expiry.targets)?)?;
        set_versions(&mut editor, 1, 1, expiry)?;
        write_signed(editor, &dir, &keys, &[]).await?;
        Ok(Init {
            schema: REPO_SCHEMA,
            root: root_path,
            metadata: meta_dir.clone(),
            targets: targets_dir(&dir),
            keys: key_files,
        })
    })
}

fn set_targets(
    editor: &mut RepositoryEditor,
    version: u64,
    expires: jiff::Timestamp,
) -> Result<()> {
    let bad = |e| Error::with("cannot set up targets.json", e);
    editor
        .targets_version(NonZeroU64::new(version).unwrap_or(NonZeroU64::MIN))
        .map_err(bad)?;
    editor.targets_expires(expires).map_err(bad)?;
    Ok(())
}

/// Sets the snapshot's and timestamp's versions and expiries; returns the timestamp's expiry.
fn set_versions(
    editor: &mut RepositoryEditor,
    snapshot: u64,
    timestamp: u64,
    expiry: &Expiry,
) -> Result<jiff::Timestamp> {
    let nz = |v: u64| NonZeroU64::new(v).unwrap_or(NonZeroU64::MIN);
    let ts_expires = secs_from_now(expiry.timestamp_secs)?;
    editor
        .snapshot_version(nz(snapshot))
        .snapshot_expires(later(expiry.snapshot)?)
        .timestamp_version(nz(timestamp))
        .timestamp_expires(ts_expires);
    Ok(ts_expires)
}

/// The targets, snapshot and timestamp keys in `keys`; `replace` names a role whose key is
/// taken from another file (a key being rotated in).
fn keys_of(keys: &Path, replace: Option<(&str, &Path)>) -> Result<Vec<Box<dyn KeySource>>> {
    let mut v: Vec<Box<dyn KeySource>> = Vec::new();
    for role in &ROLES[1..] {
        let path = match replace {
            Some((r, p)) if r == *role => p.to_path_buf(),
            _ => key_path(keys, role),
        };
        if !path.is_file() {
            return Err(Error::msg(format!(
                "no {role} key at {} (--keys is the directory `suture repo init` wrote)",
                path.display()
            )));
        }
        v.push(Box::new(LocalKeySource { path }));
    }
    Ok(v)
}

/// Signs the editor's roles with the keys in `keys`, writes the metadata and copies the
/// `files` (path, target name) in.
async fn write_signed(
    editor: RepositoryEditor,
    dir: &Path,
    keys: &Path,
    files: &[(PathBuf, TargetName)],
) -> Result<()> {
    write_signed_with(editor, dir, keys, files, None).await
}

/// [`write_signed`], with one role's key taken from another file.
async fn write_signed_with(
    editor: RepositoryEditor,
    dir: &Path,
    keys: &Path,
    files: &[(PathBuf, TargetName)],
    replace: Option<(&str, &Path)>,
) -> Result<()> {
    let signed = editor
        .sign(&keys_of(keys, replace)?)
        .await
        .map_err(|e| Error::with("cannot sign the repository", e))?;
    let tdir = targets_dir(dir);
    for (path, name) in files {
        signed
            .copy_target(path, &tdir, PathExists::Skip, Some(name))
            .await
            .map_err(|e| Error::with(format!("cannot copy {} in", path.display()), e))?;
    }
    // Targets first, metadata last: an agent sees new metadata only once its files are there.
    // The metadata is written to a staging directory and renamed in, the versioned files
    // before `timestamp.json` (the entry point), so a web server never serves a partly
    // written file and the published repository switches at one rename.
    let staging = dir.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    signed
        .write(&staging)
        .await
        .map_err(|e| Error::with("cannot write the metadata", e))?;
    let meta = metadata_dir(dir);
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&staging)
        .map_err(|e| Error::io("read", &staging, e))?
        .filter_map(|e| Some(e.ok()?.file_name()))
        .collect();
    // `timestamp.json` sorts after the `N.*.json` files, but say it rather than rely on it.
    names.sort_by_key(|n| (n == "timestamp.json", n.clone()));
    for name in names {
        let to = meta.join(&name);
        std::fs::rename(staging.join(&name), &to).map_err(|e| Error::io("write", &to, e))?;
    }
    std::fs::remove_dir(&staging).map_err(|e| Error::io("remove", &staging, e))
}

/// The newest `N.root.json` of the repository.
pub fn latest_root(dir: &Path) -> Result<PathBuf> {
    let meta = metadata_dir(dir);
    let rd = std::fs::read_dir(&meta).map_err(|e| {
        Error::with(
            format!(
                "{} is not a suture repository (no metadata directory)",
                dir.display()
            ),
            e,
        )
    })?;
    rd.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let n: u64 = name.strip_suffix(".root.json")?.parse().ok()?;
        Some((n, meta.join(name)))
    })
    .max()
    .map(|(_, p)| p)
    .ok_or_else(|| Error::msg(format!("{} has no root.json", meta.display())))
}

/// Loads the repository in `dir` from the files (signatures verified, expiry not enforced:
/// an expired repository can still be refreshed).
async fn load_local(dir: &Path) -> Result<(PathBuf, tough::Repository)> {
    let dir = absolute(dir)?;
    let root_path = latest_root(&dir)?;
    let root = std::fs::read(&root_path).map_err(|e| Error::io("read", &root_path, e))?;
    let url = |p: PathBuf| {
        Url::from_directory_path(&p)
            .map_err(|()| Error::msg(format!("{} is not a usable path", p.display())))
    };
    let repo = RepositoryLoader::new(&root, url(metadata_dir(&dir))?, url(targets_dir(&dir))?)
        .expiration_enforcement(ExpirationEnforcement::Unsafe)
        .load()
        .await
        .map_err(|e| Error::with(format!("cannot load the repository {}", dir.display()), e))?;
    Ok((root_path, repo))
}

/// Every target of the repository in `dir`, sorted by name.
pub fn list(dir: &Path) -> Result<Vec<Listed>> {
    runtime()?.block_on(async {
        let (_, repo) = load_local(dir).await?;
        let mut v: Vec<Listed> = repo.all_targets().map(|(n, t)| listed(n, t)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    })
}

fn listed(name: &TargetName, t: &Target) -> Listed {
    Listed {
        name: name.raw().to_string(),
        length: t.length,
        sha256: hex(&t.hashes.sha256),
        meta: TargetMeta::from_custom(&t.custom).ok().flatten(),
    }
}

fn hex(b: &[u8]) -> String {
    suture_bundle::hex(b)
}

/// Reads a file to add: a bundle or a kernel livepatch module, and its metadata and target
/// name.
pub fn describe(path: &Path, channel: &str) -> Result<(TargetMeta, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let now = crate::now_secs();
    if suture_bundle::is_bundle(&bytes) {
        let b = suture_bundle::decode(&bytes)
            .map_err(|e| Error::with(format!("{} is not a valid bundle", path.display()), e))?;
        let m = b.manifest;
        let short = &m.target.build_id[..m.target.build_id.len().min(12)];
        let name = format!("{}.{}.{short}.suture", m.patch_id, m.target.file_name);
        return Ok((
            TargetMeta {
                schema: TARGET_SCHEMA.into(),
                kind: Kind::Process,
                patch_id: m.patch_id,
                channel: channel.into(),
                build_ids: vec![m.target.build_id],
                file_name: Some(m.target.file_name),
                kernel_release: None,
                kernel_build_id: None,
                added_at: now,
                waves: Vec::new(),
                paused: false,
                version: None,
                replaces: Vec::new(),
            },
            name,
        ));
    }
    if bytes.starts_with(b"\x7fELF") {
        use suture_kernel::generate::modinfo;
        use suture_kernel::identity::{MODINFO_BUILD_ID, MODINFO_RELEASE};
        let Some(name) = modinfo(&bytes, "name") else {
            return Err(Error::msg(format!(
                "{} is an ELF file but not a kernel module (no .modinfo name)",
                path.display()
            )));
        };
        let release = modinfo(&bytes, MODINFO_RELEASE);
        let build_id = modinfo(&bytes, MODINFO_BUILD_ID);
        if release.is_none() && build_id.is_none() {
            return Err(Error::msg(format!(
                "{} records no target kernel ({MODINFO_RELEASE}=, {MODINFO_BUILD_ID}=): only \
                 modules from `suture build --kernel` can be added",
                path.display()
            )));
        }
        return Ok((
            TargetMeta {
                schema: TARGET_SCHEMA.into(),
                kind: Kind::Kernel,
                patch_id: name.clone(),
                channel: channel.into(),
                build_ids: Vec::new(),
                file_name: None,
                kernel_release: release,
                kernel_build_id: build_id,
                added_at: now,
                waves: Vec::new(),
                paused: false,
                version: None,
                replaces: Vec::new(),
            },
            format!("{name}.ko"),
        ));
    }
    Err(Error::msg(format!(
        "{} is neither a patch bundle (suture build) nor a kernel livepatch module",
        path.display()
    )))
}

fn target_name(name: &str) -> Result<TargetName> {
    TargetName::new(name).map_err(|e| Error::with(format!("bad target name {name:?}"), e))
}

/// A repository opened for its next version.
struct Next {
    editor: RepositoryEditor,
    repo: tough::Repository,
    targets: u64,
    snapshot: u64,
    timestamp: u64,
    timestamp_expires: jiff::Timestamp,
}

impl Next {
    fn summary(&self, changed: Vec<Listed>) -> Signed {
        Signed {
            schema: REPO_SCHEMA,
            changed,
            targets_version: self.targets,
            snapshot_version: self.snapshot,
            timestamp_version: self.timestamp,
            timestamp_expires: self.timestamp_expires.to_string(),
        }
    }
}

/// Opens the repository for a new version: targets, snapshot and timestamp one up, with fresh
/// expiries. Targets gets a new version even when its content is unchanged (`refresh`): a
/// versioned file is never rewritten, since the published snapshot pins its bytes.
async fn next_version(dir: &Path, expiry: &Expiry) -> Result<Next> {
    let (root_path, repo) = load_local(dir).await?;
    next_version_of(&root_path, repo, expiry).await
}

/// [`next_version`] of a loaded repository, signed under the root at `root_path`.
async fn next_version_of(
    root_path: &Path,
    repo: tough::Repository,
    expiry: &Expiry,
) -> Result<Next> {
    let targets_v = repo.targets().signed.version.get();
    let snapshot_v = repo.snapshot().signed.version.get();
    let timestamp_v = repo.timestamp().signed.version.get();
    let mut editor = RepositoryEditor::from_repo(root_path, repo.clone())
        .await
        .map_err(|e| Error::with("cannot edit the repository", e))?;
    let targets = targets_v + 1;
    set_targets(&mut editor, targets, later(expiry.targets)?)?;
    let timestamp_expires = set_versions(&mut editor, snapshot_v + 1, timestamp_v + 1, expiry)?;
    Ok(Next {
        editor,
        repo,
        targets,
        snapshot: snapshot_v + 1,
        timestamp: timestamp_v + 1,
        timestamp_expires,
    })
}

/// How `repo add` places its files: the channel, the waves (`repo add --wave`
/// specifications, see [`crate::meta::parse_waves`]; none: every host at once), the version
/// and the patch ids replaced (see [`TargetMeta`]).
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub channel: String,
    pub waves: Vec<String>,
    pub version: Option<u64>,
    pub replaces: Vec<String>,
}

/// Adds `files` (bundles, kernel modules) as targets placed as `p` says, and re-signs.
pub fn add(
    dir: &Path,
    keys: &Path,
    files: &[PathBuf],
    p: &Placement,
    expiry: &Expiry,
) -> Result<Signed> {
    let channel = p.channel.as_str();
    let waves = crate::meta::parse_waves(&p.waves, crate::now_secs()).map_err(Error::msg)?;
    if files.is_empty() {
        return Err(Error::msg("no file to add"));
    }
    if channel.is_empty()
        || !channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Error::msg(format!(
            "bad channel name {channel:?} (letters, digits, '-', '_', '.')"
        )));
    }
    let described: Vec<(PathBuf, TargetMeta, String)> = files
        .iter()
        .map(|f| {
            describe(f, channel).map(|(mut m, n)| {
                m.waves = waves.clone();
                m.version = p.version;
                m.replaces = p.replaces.clone();
                (f.clone(), m, n)
            })
        })
        .collect::<Result<_>>()?;
    for (f, m, _) in &described {
        if !m.replaces.is_empty() && m.kind == Kind::Kernel {
            return Err(Error::msg(format!(
                "{}: --replaces is for process bundles; a kernel patch replaces others when \
                 built with `suture build --kernel --replace`",
                f.display()
            )));
        }
        if m.replaces.contains(&m.patch_id) {
            return Err(Error::msg(format!(
                "{}: patch {} cannot replace itself",
                f.display(),
                m.patch_id
            )));
        }
    }
    add_described(dir, keys, &described, expiry)
}

/// Adds files with the metadata and target names given (what `add` derives with
/// [`describe`]), and re-signs. The metadata is signed as given: callers other than `add`
/// (tests of the agent's refusals) can sign metadata that does not describe the file.
pub fn add_described(
    dir: &Path,
    keys: &Path,
    described: &[(PathBuf, TargetMeta, String)],
    expiry: &Expiry,
) -> Result<Signed> {
    runtime()?.block_on(async {
        let mut next = next_version(dir, expiry).await?;
        let mut copies = Vec::new();
        let mut changed = Vec::new();
        for (path, meta, name) in described.iter().cloned() {
            let tname = target_name(&name)?;
            let mut target = Target::from_path(&path)
                .await
                .map_err(|e| Error::with(format!("cannot hash {}", path.display()), e))?;
            if let Some(old) = next.repo.targets().signed.targets.get(&tname) {
                if old.hashes.sha256 == target.hashes.sha256 {
                    return Err(Error::msg(format!(
                        "{} is already in the repository as {name}",
                        path.display()
                    )));
                }
                return Err(Error::msg(format!(
                    "the repository already has a different {name}; withdraw patch {} first",
                    meta.patch_id
                )));
            }
            target.custom.insert(
                crate::meta::CUSTOM_KEY.into(),
                serde_json::to_value(&meta).map_err(|e| Error::with("cannot serialise", e))?,
            );
            changed.push(listed(&tname, &target));
            next.editor
                .add_target(tname.clone(), target)
                .map_err(|e| Error::with(format!("cannot add {name}"), e))?;
            copies.push((path, tname));
        }
        let summary = next.summary(changed);
        write_signed(next.editor, &absolute(dir)?, keys, &copies).await?;
        Ok(summary)
    })
}

/// Withdraws every target of patch `id`; agents revert it where they applied it.
pub fn withdraw(dir: &Path, keys: &Path, id: &str, expiry: &Expiry) -> Result<Signed> {
    edit_patch(dir, keys, id, expiry, |_| None)
}

/// Pauses (`paused`) or resumes the rollout of patch `id`: agents apply a paused patch
/// nowhere new, and keep it where it is live.
pub fn pause(dir: &Path, keys: &Path, id: &str, paused: bool, expiry: &Expiry) -> Result<Signed> {
    edit_patch(dir, keys, id, expiry, |m| {
        let mut m = m.clone();
        m.paused = paused;
        Some(m)
    })
}

/// Re-signs the repository with every target of patch `id` changed by `edit`: its new
/// metadata, or `None` to remove it. Refuses a patch id with no target.
fn edit_patch(
    dir: &Path,
    keys: &Path,
    id: &str,
    expiry: &Expiry,
    edit: impl Fn(&TargetMeta) -> Option<TargetMeta>,
) -> Result<Signed> {
    runtime()?.block_on(async {
        let mut next = next_version(dir, expiry).await?;
        let mut changed = Vec::new();
        let all: Vec<(TargetName, Target)> = next
            .repo
            .all_targets()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        for (name, t) in &all {
            let l = listed(name, t);
            let Some(meta) = l.meta.as_ref().filter(|m| m.patch_id == id) else {
                continue;
            };
            let edited = edit(meta);
            next.editor
                .remove_target(name)
                .map_err(|e| Error::with(format!("cannot change {}", l.name), e))?;
            if let Some(m) = edited {
                let mut t = t.clone();
                t.custom.insert(
                    crate::meta::CUSTOM_KEY.into(),
                    serde_json::to_value(&m).map_err(|e| Error::with("cannot serialise", e))?,
                );
                changed.push(listed(name, &t));
                next.editor
                    .add_target(name.clone(), t)
                    .map_err(|e| Error::with(format!("cannot change {}", l.name), e))?;
            } else {
                changed.push(l);
            }
        }
        if changed.is_empty() {
            let mut ids: Vec<String> = all
                .iter()
                .filter_map(|(n, t)| Some(listed(n, t).meta?.patch_id))
                .collect();
            ids.sort();
            ids.dedup();
            return Err(Error::msg(format!(
                "no target of patch {id:?} in the repository (patches: {})",
                if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                }
            )));
        }
        let summary = next.summary(changed);
        write_signed(next.editor, &absolute(dir)?, keys, &[]).await?;
        Ok(summary)
    })
}

/// Re-signs targets (same content, next version), snapshot and timestamp with new expiries.
pub fn refresh(dir: &Path, keys: &Path, expiry: &Expiry) -> Result<Signed> {
    runtime()?.block_on(async {
        let next = next_version(dir, expiry).await?;
        let summary = next.summary(Vec::new());
        write_signed(next.editor, &absolute(dir)?, keys, &[]).await?;
        Ok(summary)
    })
}

/// What `rotate` did.
#[derive(Debug, Serialize)]
pub struct Rotated {
    pub schema: &'static str,
    pub role: String,
    /// The new root: agents reach it from their trusted root through the root chain.
    pub root: PathBuf,
    pub root_version: u64,
    /// Where the replaced key was moved (kept for audit; it no longer signs anything).
    pub retired_key: PathBuf,
    /// The re-signed targets, snapshot and timestamp.
    pub signed: Signed,
}

/// Replaces the key of `role` (root, targets, snapshot or timestamp) by a new one: writes root
/// version N+1 listing it, signed by the current root key and (for a root rotation) by the new
/// one too, as TUF's root chain requires, moves the old key file aside, and re-signs targets,
/// snapshot and timestamp with the keys the new root names.
pub fn rotate(dir: &Path, keys: &Path, role: &str, expiry: &Expiry) -> Result<Rotated> {
    if !ROLES.contains(&role) {
        return Err(Error::msg(format!(
            "no role {role:?} (root, targets, snapshot, timestamp)"
        )));
    }
    let dir = absolute(dir)?;
    let old_path = latest_root(&dir)?;
    let old: tough::schema::Signed<Root> = serde_json::from_slice(
        &std::fs::read(&old_path).map_err(|e| Error::io("read", &old_path, e))?,
    )
    .map_err(|e| Error::with(format!("{} is not a root", old_path.display()), e))?;
    let rng = SystemRandom::new();
    let new_key_path = keys.join(format!("{role}.pk8.new"));
    let _ = std::fs::remove_file(&new_key_path);
    let (key, id) = generate_key(&new_key_path, role, &rng)?;
    let mut root = old.signed.clone();
    root.version = root.version.saturating_add(1);
    root.expires = later(expiry.root)?;
    let rt = role_type(role);
    let old_ids = root
        .roles
        .get(&rt)
        .map(|r| r.keyids.clone())
        .unwrap_or_default();
    for old_id in &old_ids {
        if !root
            .roles
            .iter()
            .any(|(t, r)| *t != rt && r.keyids.contains(old_id))
        {
            root.keys.remove(old_id);
        }
    }
    root.keys.insert(id.clone(), key);
    root.roles.insert(
        rt,
        RoleKeys {
            keyids: vec![id],
            threshold: NonZeroU64::MIN,
            _extra: HashMap::new(),
        },
    );
    let version = root.version.get();
    let root_path = metadata_dir(&dir).join(format!("{version}.root.json"));
    let retired = keys.join(format!("{role}.pk8.retired-root-v{}", version - 1));
    let rt_async = runtime()?;
    let signed = rt_async.block_on(async {
        // Loaded under the current root: its roles still verify with the keys it lists.
        let (_, repo) = load_local(&dir).await?;
        let old_root_key: Vec<Box<dyn KeySource>> = vec![Box::new(LocalKeySource {
            path: key_path(keys, "root"),
        })];
        let new_root_key: Vec<Box<dyn KeySource>> = vec![Box::new(LocalKeySource {
            path: if role == "root" {
                new_key_path.clone()
            } else {
                key_path(keys, "root")
            },
        })];
        // Signed by the new root's root key...
        let by_new = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root.clone()),
            &new_root_key,
            &rng,
        )
        .await
        .map_err(|e| Error::with("cannot sign the new root", e))?;
        // ... and by the current root's, which agents trust.
        let by_old = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(old.signed.clone()),
            &old_root_key,
            &rng,
        )
        .await
        .map_err(|e| Error::with("cannot sign the new root with the current root key", e))?;
        let both = by_new
            .add_old_signatures(by_old.signed().signatures.clone())
            .map_err(|e| Error::with("cannot sign the new root", e))?;
        // The new root goes out with the re-signed roles (timestamp last); the key files are
        // swapped only once all of it is published.
        let staging = dir.join(format!(".staging-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        both.write(&staging, true)
            .await
            .map_err(|e| Error::with("cannot write the new root", e))?;
        let staged_root = staging.join(format!("{version}.root.json"));
        let next = next_version_of(&staged_root, repo, expiry).await?;
        let summary = next.summary(Vec::new());
        let replace = (role != "root").then_some((role, new_key_path.as_path()));
        write_signed_with(next.editor, &dir, keys, &[], replace).await?;
        let _ = std::fs::remove_dir_all(&staging);
        let current = key_path(keys, role);
        std::fs::rename(&current, &retired).map_err(|e| Error::io("retire", &current, e))?;
        std::fs::rename(&new_key_path, &current).map_err(|e| Error::io("install", &current, e))?;
        Ok::<Signed, Error>(summary)
    })?;
    Ok(Rotated {
        schema: REPO_SCHEMA,
        role: role.to_string(),
        root: root_path,
        root_version: version,
        retired_key: retired,
        signed,
    })
}
