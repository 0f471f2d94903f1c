//! Applying a patch bundle (from `suture build`): the object patched in each process is the
//! mapped file whose build-id is the bundle's, and its bytes are checked against the bundle's
//! digests before anything is done to the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use suture_bundle::{Bundle, Manifest, Symbol};
use thiserror::Error;

use crate::apply::{self, Applied, ApplyError, ApplyOptions, Outcome};
use crate::ids::Pid;
use crate::maps::{MapName, Maps};
use crate::symbols::{ElfSymbols, Sym};
use crate::targets::{all_pids, NoTargets, ProcessOutcome, Targets};

/// Why a bundle was not applied to one process.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BundleError {
    /// `maps` lists the mapped files with their build-ids (or why the map was unreadable).
    #[error(
        "the bundle was built for build-id {build_id} ({file_name}), but the process maps \
         {maps}; nothing was changed"
    )]
    NotMapped {
        build_id: String,
        file_name: String,
        maps: String,
    },
    #[error("cannot read {object}: {error}")]
    Read {
        object: String,
        error: std::io::Error,
    },
    #[error(
        "{object} has the bundle's build-id but not its bytes: {}; nothing was changed",
        .mismatches.join("; ")
    )]
    BytesDiffer {
        object: String,
        mismatches: Vec<String>,
    },
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl BundleError {
    /// What became of the target.
    pub fn outcome(&self) -> Outcome {
        match self {
            BundleError::Apply(e) => e.outcome(),
            _ => Outcome::Untouched,
        }
    }

    /// See [`ApplyError::busy`].
    pub fn busy(&self) -> Option<crate::apply::BusyDetail> {
        match self {
            BundleError::Apply(e) => e.busy(),
            _ => None,
        }
    }
}

/// A bundle applied in one process: the mapped object it patched (as the process names it).
#[derive(Debug)]
pub struct BundleApplied {
    pub object: String,
    pub applied: Applied,
}

/// Options of [`apply`].
#[derive(Clone, Debug)]
pub struct BundleOptions {
    pub timeout: Duration,
    /// Name recorded in the process (default: the bundle's patch id).
    pub patch_id: Option<String>,
    /// A live patch this one replaces in the same switch.
    pub replace: Option<String>,
    /// See [`ApplyOptions::scan_suspended`].
    pub scan_suspended: bool,
    /// See [`ApplyOptions::move_frames`].
    pub move_frames: bool,
    /// See [`ApplyOptions::transition`].
    pub transition: Option<Duration>,
}

/// Build-ids of mapped files, by file identity (device, inode).
#[derive(Default)]
pub struct BuildIds(HashMap<(u64, u64), Option<Vec<u8>>>);

impl BuildIds {
    fn of(&mut self, path: &Path, key: (u64, u64)) -> Option<Vec<u8>> {
        self.0
            .entry(key)
            // Only the headers and note segments are read: a scan of every mapped file of a
            // host stays small.
            .or_insert_with(|| suture_elf::build_id_of_file(path).ok().flatten())
            .clone()
    }

    /// The mapped file of `pid` with this build-id: (path as the process sees it, path to
    /// open it from here). `Err` lists what the process maps instead.
    pub fn find_object(&mut self, pid: Pid, build_id: &[u8]) -> Result<(String, PathBuf), String> {
        let maps = Maps::read(pid).map_err(|e| e.to_string())?;
        let mut seen: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for m in &maps.mappings {
            let (MapName::Path(path), 0) = (&m.name, m.offset) else {
                continue;
            };
            let Some(open) = m.open_path(pid) else {
                continue;
            };
            let key = (
                (u64::from(m.dev.major) << 32) | u64::from(m.dev.minor),
                m.inode,
            );
            let id = self.of(&open, key);
            let shown = path.display().to_string();
            if id.as_deref() == Some(build_id) {
                return Ok((shown, open));
            }
            if !seen.iter().any(|(p, _)| *p == shown) {
                seen.push((shown, id));
            }
        }
        let with_id: Vec<String> = seen
            .iter()
            .filter_map(|(p, id)| Some(format!("{p} ({})", suture_bundle::hex(id.as_deref()?))))
            .collect();
        Err(if with_id.is_empty() {
            "no file with a build-id".into()
        } else {
            with_id.join(", ")
        })
    }
}

/// The bundle's symbols as a symbol table for the patched object (used where the mapped file
/// is stripped).
pub fn bundle_symbols(m: &Manifest) -> ElfSymbols {
    let mut t = ElfSymbols::default();
    t.has_symtab = true;
    for s in &m.symbols {
        let sym = Sym {
            value: s.address,
            size: s.size,
            tls: s.kind == "tls",
            ifunc: false,
        };
        match &s.file {
            Some(f) => t
                .locals
                .entry((f.clone(), s.name.clone()))
                .or_default()
                .push(sym),
            None => {
                t.insert_global(s.name.clone(), sym);
            }
        }
    }
    t
}

/// Checks, against the bytes of a mapped file, that every symbol recorded in a bundle still
/// has the recorded SHA-256 (apply-time proof of byte identity). Returns the mismatches.
pub fn verify_symbols(file: &[u8], symbols: &[Symbol]) -> Vec<String> {
    let mut bad = Vec::new();
    for s in symbols {
        let Some(want) = &s.sha256 else { continue };
        match suture_elf::bytes_at(file, s.address, s.size) {
            Some(b) if suture_bundle::sha256_hex(b) == *want => {}
            Some(_) => bad.push(format!("{} at {:#x}: bytes differ", s.name, s.address)),
            None => bad.push(format!(
                "{} at {:#x}: not in the file's loaded segments",
                s.name, s.address
            )),
        }
    }
    bad
}

/// Applies `bundle` to each target ([`Targets::All`]: every process mapping a file with the
/// bundle's build-id), `jobs` at a time ([`crate::targets::for_each_process`]); `each` gets
/// every outcome as it completes.
pub fn apply(
    bundle: &Bundle,
    targets: &Targets,
    opts: &BundleOptions,
    jobs: usize,
    each: impl FnMut(ProcessOutcome<BundleApplied, BundleError>),
) -> Result<(), NoTargets> {
    let m = &bundle.manifest;
    let build_id = suture_bundle::parse_hex(&m.target.build_id).unwrap_or_default();
    let mut cache = BuildIds::default();
    let pids = match targets {
        Targets::Pids(p) => p.clone(),
        Targets::All => {
            let found: Vec<Pid> = all_pids()
                .into_iter()
                .filter(|&p| cache.find_object(p, &build_id).is_ok())
                .collect();
            if found.is_empty() {
                return Err(NoTargets::NoBuildId {
                    build_id: m.target.build_id.clone(),
                    file_name: m.target.file_name.clone(),
                });
            }
            found
        }
    };
    let symbols = Arc::new(bundle_symbols(m));
    let patch_id = opts.patch_id.clone().unwrap_or_else(|| m.patch_id.clone());
    let cache = std::sync::Mutex::new(cache);
    let work = |pid| apply_one(bundle, pid, &build_id, &symbols, &patch_id, opts, &cache);
    crate::targets::for_each_process(pids, jobs, work, each);
    Ok(())
}

fn apply_one(
    bundle: &Bundle,
    pid: Pid,
    build_id: &[u8],
    symbols: &Arc<ElfSymbols>,
    patch_id: &str,
    opts: &BundleOptions,
    cache: &std::sync::Mutex<BuildIds>,
) -> Result<BundleApplied, BundleError> {
    let m = &bundle.manifest;
    let (object, open) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .find_object(pid, build_id)
        .map_err(|maps| BundleError::NotMapped {
            build_id: m.target.build_id.clone(),
            file_name: m.target.file_name.clone(),
            maps,
        })?;
    let data = std::fs::read(&open).map_err(|error| BundleError::Read {
        object: object.clone(),
        error,
    })?;
    let mismatches = verify_symbols(&data, &m.symbols);
    if !mismatches.is_empty() {
        return Err(BundleError::BytesDiffer { object, mismatches });
    }
    let apply_opts = ApplyOptions {
        timeout: opts.timeout,
        patch_id: patch_id.to_string(),
        object: Some(object.clone()),
        build_id: Some(build_id.to_vec()),
        symbols: Some(symbols.clone()),
        replace: opts.replace.clone(),
        scan_suspended: opts.scan_suspended,
        move_frames: opts.move_frames,
        transition: opts.transition,
        ..Default::default()
    };
    let applied = apply::apply(pid, &bundle.patch_object, &apply_opts)?;
    Ok(BundleApplied { object, applied })
}
