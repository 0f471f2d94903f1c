//! `suture-build`: from a source tree and a fix (a unified diff) to patch bundles.
//!
//! [`build`] runs the project's own build through a compiler wrapper ([`record`]) that
//! records every compile and link; applies the diff to copies of the touched files
//! ([`patchset`]); recompiles only the translation units the diff affects, original and
//! patched, with one section per function and data object ([`units`]); diffs them with
//! `suture_object::analyze`; groups the results per output ELF (executable or shared
//! library); binds each output's patch to the deployed file's build-id, proving that every
//! original symbol the patch relies on is byte-identical ([`bind`]); and writes one bundle per
//! output (`suture_bundle`).
//!
//! It never touches a running process, and never modifies the source tree: patched files are
//! seen by the compiler only inside a private mount namespace (a bind mount of the patched
//! copy over the original path, see [`units`]), so paths, `__FILE__` and include lookup are
//! exactly those of the real build, and nothing needs restoring after Ctrl-C or SIGKILL.

use std::path::{Path, PathBuf};

use thiserror::Error;

pub mod bind;
pub mod elfinfo;
pub mod kernel;
pub mod patchset;
pub mod record;
pub mod sandbox;
pub mod units;

mod run;
pub use run::{build, BuildOptions, BuildReport, Outcome};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Diff(String),
    #[error("{0}")]
    Tool(String),
    #[error("the build failed ({cmd}: {status}); last lines of {log}:\n{tail}")]
    BuildFailed {
        cmd: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error("{0}")]
    Compile(String),
    #[error("{0}")]
    Object(String),
    #[error("{0}")]
    Bind(String),
    #[error("{0}")]
    Usage(String),
    /// An object file could not be read, diffed or written (`what` names it).
    #[error("{what}")]
    Analysis {
        what: String,
        #[source]
        source: suture_object::Error,
    },
    #[error("reading the fix {path}")]
    ReadFix {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{tree} does not say which headers package it was prepared from (no .suture-ready \
         from scripts/kernel-tree.sh): pass --headers"
    )]
    NoHeaders { tree: String },
    #[error("the fix changes {file}, which the source tree does not have")]
    NotInTree { file: String },
    #[error(transparent)]
    Kernel(#[from] suture_kernel::tree::Error),
    #[error(transparent)]
    Kbuild(#[from] suture_kernel::kbuild::Error),
    #[error(transparent)]
    Generate(#[from] suture_kernel::generate::Error),
}

impl BuildError {
    pub fn io(path: &Path, source: std::io::Error) -> BuildError {
        BuildError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The last `n` lines of a text file (for error messages about failed commands).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Absolute form of `p` (canonical when it exists).
pub fn abs(p: &Path) -> PathBuf {
    p.canonicalize()
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}
