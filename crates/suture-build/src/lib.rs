//! `suture-build`: from a source tree and a fix (a unified diff) to patch bundles, or to a
//! livepatch module for the kernel ([`kernel`]).
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
//! [`kernel::build`] does the same for a kernel tree with kbuild, and generates the module
//! with `suture_kernel::generate`. Both pipelines share [`patchset`] and [`sandbox`].
//!
//! It never touches a running process, and never modifies the source tree: patched files are
//! seen by the compiler only inside a private mount namespace (a bind mount of the patched
//! copy over the original path, see [`sandbox`]), so paths, `__FILE__` and include lookup are
//! exactly those of the real build, and nothing needs restoring after Ctrl-C or SIGKILL.

use std::path::{Path, PathBuf};

use thiserror::Error;

pub mod bind;
pub mod deb;
pub mod elfinfo;
pub mod includes;
pub mod kernel;
pub mod patchset;
pub mod record;
pub mod sandbox;
pub mod units;

mod run;
pub use run::{build, records_dir, run_build, BuildOptions, BuildReport, Outcome};

/// Why a build could not run to a verdict. Each variant carries what it is about (file,
/// command, symbol...); the message is short and leaves the underlying error to `source()`
/// (print the chain, e.g. anyhow's `{:#}`, to see both). Refusals to live-patch a change are
/// not errors: they are verdicts in the reports.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper program (`objcopy`, `ld`) failed.
    #[error("{command} failed: {stderr}")]
    ToolFailed { command: String, stderr: String },
    #[error("cannot put {dir} first in PATH")]
    WrapperPath {
        dir: String,
        #[source]
        source: std::env::JoinPathsError,
    },
    #[error("the build failed ({cmd}: {status}); last lines of {log}:\n{tail}")]
    BuildFailed {
        cmd: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error(
        "the build compiled nothing that suture saw (it was probably already built, and no \
         earlier record exists in {records}); clean the tree (e.g. `make clean`) or pass a \
         --build-cmd that compiles, then run again"
    )]
    NothingRecorded { records: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("the output directory {path} is inside the source tree; choose one outside it")]
    OutputInSource { path: String },

    #[error("the diff names no files (expected a unified diff with ---/+++ lines)")]
    NoFiles,
    #[error("cannot place {path} in the source tree")]
    Unplaceable { path: String },
    #[error("{path} points outside the source tree")]
    OutsideTree { path: String },
    #[error("the diff changes {file} but the source tree has no such file")]
    MissingFile {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// `output` is what `patch(1)` said.
    #[error("the diff does not apply to {tree}:\n{output}")]
    DoesNotApply { tree: String, output: String },

    /// `which` is `original` or `patched`; `tail` the compiler's last lines.
    #[error("the {which} {file} does not compile ({status}):\n{tail}")]
    Compile {
        file: String,
        which: &'static str,
        status: String,
        tail: String,
    },
    #[error("cannot list the headers of {file}: {stderr}")]
    Deps { file: String, stderr: String },
    /// An object file could not be read, diffed or written (`what` names it).
    #[error("{what}")]
    Analysis {
        what: String,
        #[source]
        source: suture_object::Error,
    },
    #[error(
        "{first} and {second} both replace a function named {function}; one bundle cannot \
         tell them apart (split the fix into two diffs)"
    )]
    DuplicateFunction {
        function: String,
        first: String,
        second: String,
    },
    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A linked ELF file could not be read (`message` names the file).
    #[error("{message}")]
    Elf { file: String, message: String },
    #[error(
        "no output of the build corresponds to {target} (build-id {build_id}; the build \
         produced {outputs})"
    )]
    NoOutputFor {
        target: String,
        build_id: String,
        outputs: String,
    },
    #[error("{target} could be any of {candidates}")]
    AmbiguousTarget { target: String, candidates: String },
    #[error(
        "{file} has no GNU build-id note; a patch must be bound to one (link with \
         -Wl,--build-id)"
    )]
    NoBuildId { file: String },
    #[error("debug file {file} does not carry build-id {build_id}")]
    DebugFileMismatch { file: String, build_id: String },
    /// The rebuild differs from the deployed file, and the deployed file is stripped.
    #[error(
        "the rebuild does not match {}: build-id {} (deployed) vs {} (rebuild of {}); \
         compiler: deployed {} vs rebuild {}; {} is stripped and no debug file {debug_file} \
         exists under {debug_dirs}, so no function can be located or compared (install its \
         debug symbols, or rebuild exactly as it was built: same compiler, flags and paths)",
        .pair.deployed, .pair.deployed_id, .pair.rebuild_id, .pair.rebuild,
        .pair.deployed_compiler, .pair.rebuild_compiler, .pair.deployed
    )]
    Unlocatable {
        pair: Box<Mismatch>,
        debug_file: String,
        debug_dirs: String,
    },
    /// Symbols the patch relies on differ between the rebuild and the deployed file.
    #[error(
        "the rebuild does not match {}: build-id {} (deployed) vs {} (rebuild {}); \
         compiler: deployed {} vs rebuild {}; symbols the patch relies on that differ: {}",
        .pair.deployed, .pair.deployed_id, .pair.rebuild_id, .pair.rebuild,
        .pair.deployed_compiler, .pair.rebuild_compiler, .symbols.join("; ")
    )]
    SymbolsDiffer {
        pair: Box<Mismatch>,
        symbols: Vec<String>,
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
    #[error(
        "{path} is not a copy of the target kernel's /sys/kernel/notes ({reason}); on the \
         target: cat /sys/kernel/notes > notes"
    )]
    KernelNotes { path: String, reason: String },
    #[error("the fix changes {file}, which the source tree does not have")]
    NotInTree { file: String },
    /// `suture build --deb`: the package, its source or its build (`message` says which).
    #[error("{message}")]
    Deb { message: String },
    #[error(transparent)]
    Kernel(#[from] suture_kernel::tree::Error),
    #[error(transparent)]
    Kbuild(#[from] suture_kernel::kbuild::Error),
    #[error(transparent)]
    Generate(#[from] suture_kernel::generate::Error),
}

/// A deployed file and the rebuild that should match it.
#[derive(Debug)]
pub struct Mismatch {
    pub deployed: String,
    pub deployed_id: String,
    pub rebuild: String,
    pub rebuild_id: String,
    /// `.comment` compiler strings.
    pub deployed_compiler: String,
    pub rebuild_compiler: String,
}

impl BuildError {
    pub fn io(path: &Path, source: std::io::Error) -> BuildError {
        BuildError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// A linked ELF file that could not be read (`message` from `suture_elf`).
    pub fn elf(path: &Path) -> impl FnOnce(suture_elf::ElfError) -> BuildError + '_ {
        move |e| BuildError::Elf {
            file: path.display().to_string(),
            message: e.to_string(),
        }
    }

    pub fn encode<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
    ) -> impl FnOnce(E) -> BuildError {
        move |source| BuildError::Encode {
            what,
            source: Box::new(source),
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
