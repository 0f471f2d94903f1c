//! Translation units of the recorded build: which outputs each is linked into, which headers
//! it includes, and recompiling it as built (original) or with the fix (patched).
//!
//! The patched compile runs the recorded command unchanged except for the output and section
//! flags, in the private mount namespace of [`crate::sandbox`] that shows each patched copy at
//! its original path.
//!
//! **Extern data through the GOT.** Both compiles of a unit (original and patched, so the diff
//! stays exactly the fix) also get the compiler's flag for indirect access to external data
//! ([`indirect_extern_access`]: gcc ≥ 12 `-mno-direct-extern-access`, clang ≥ 12
//! `-fno-direct-access-external-data`) when it has one. Without it, `-fPIE` code reads an
//! extern variable (`stderr`, `environ`, `optarg`) PC-relatively, trusting the static linker to
//! put a copy of it in the executable (a copy relocation). The linker makes that copy only when
//! the executable already used the variable; a fix that uses one for the first time then needs
//! the library's own, beyond the ±2 GiB a 32-bit displacement reaches from the patch. With the
//! flag, the patch reads the variable's address from a GOT slot that suture's linker fills
//! with the definition the process uses (the executable's copy when there is one, else the
//! library's), like `-fPIC` code does.
//!
//! The flag changes only how addresses of external symbols are formed: the compiler decides
//! it when it legitimises addresses for the instructions it emits (RTL), after all inlining
//! and other GIMPLE optimisation, and it touches neither symbol interposition (which is what
//! makes plain `-fPIC` unsuitable: a default-visibility function may then be interposed, so
//! gcc stops inlining it into its callers in the same unit, and the patched code would no
//! longer match the deployed code) nor code generation for local symbols. Checked on Debian's
//! memcached, zlib and lz4 units built with Debian's flags: every unit defines the same
//! functions and calls the same functions with and without the flag.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::record::{self, Compile, Event, Invocation, Link};
use crate::sandbox::{self, Mount};
use crate::{tail, BuildError};

/// A translation unit and the outputs (executables, shared libraries) it is linked into.
#[derive(Clone, Debug)]
pub struct Unit {
    pub compile: Compile,
    pub outputs: Vec<PathBuf>,
}

/// The recorded build: every unit (the last compile of each object) and every linked output
/// that still exists.
pub struct Graph {
    pub units: Vec<Unit>,
    pub links: Vec<Link>,
}

fn is_linked_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 18];
    let ok = std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok();
    // ELF magic and e_type ET_EXEC (2) or ET_DYN (3).
    ok && head[..4] == *b"\x7fELF" && matches!(head[16], 2 | 3)
}

/// Archive members (name, bytes).
fn archive_members(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(ar) = object::read::archive::ArchiveFile::parse(&*data) else {
        return Vec::new();
    };
    ar.members()
        .filter_map(Result::ok)
        .filter_map(|m| {
            let name = String::from_utf8_lossy(m.name()).into_owned();
            Some((name, m.data(&*data).ok()?.to_vec()))
        })
        .collect()
}

impl Graph {
    pub fn new(invocations: &[Invocation]) -> Graph {
        let mut compiles: BTreeMap<PathBuf, Compile> = BTreeMap::new();
        let mut links: BTreeMap<PathBuf, Link> = BTreeMap::new();
        for inv in invocations {
            for ev in record::classify(inv) {
                match ev {
                    Event::Compile(c) => {
                        if let Some(o) = &c.output {
                            compiles.insert(o.clone(), c);
                        }
                    }
                    Event::Link(l) => {
                        links.insert(l.output.clone(), l);
                    }
                }
            }
        }
        let links: Vec<Link> = links
            .into_values()
            .filter(|l| is_linked_elf(&l.output))
            .collect();
        let mut outputs_of: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        let mut inline: Vec<Unit> = Vec::new();
        let mut by_name: HashMap<String, Vec<&PathBuf>> = HashMap::new();
        for o in compiles.keys() {
            if let Some(n) = o.file_name() {
                by_name
                    .entry(n.to_string_lossy().into_owned())
                    .or_default()
                    .push(o);
            }
        }
        for l in &links {
            let mut objs: Vec<PathBuf> = l.objects.clone();
            let mut archives = l.archives.clone();
            for lib in &l.libs {
                for d in &l.libdirs {
                    let so = d.join(format!("lib{lib}.so"));
                    let a = d.join(format!("lib{lib}.a"));
                    if so.exists() {
                        break;
                    }
                    if a.exists() {
                        archives.push(a);
                        break;
                    }
                }
            }
            for a in &archives {
                // Members are matched to recorded objects by name and identical contents.
                for (name, bytes) in archive_members(a) {
                    for cand in by_name.get(&name).into_iter().flatten() {
                        if std::fs::read(cand).is_ok_and(|b| b == bytes) {
                            objs.push((*cand).clone());
                        }
                    }
                }
            }
            for o in objs {
                if compiles.contains_key(&o) {
                    outputs_of.entry(o).or_default().push(l.output.clone());
                }
            }
            for u in &l.units {
                inline.push(Unit {
                    compile: u.clone(),
                    outputs: vec![l.output.clone()],
                });
            }
        }
        let mut units: Vec<Unit> = compiles
            .into_iter()
            .map(|(o, c)| {
                let mut outputs = outputs_of.remove(&o).unwrap_or_default();
                outputs.sort();
                outputs.dedup();
                Unit {
                    compile: c,
                    outputs,
                }
            })
            .collect();
        units.extend(inline);
        Graph { units, links }
    }
}

/// The flag that makes `compiler` access external data (and take external function addresses)
/// through the GOT, as found by compiling an empty unit with each candidate; `None` when it
/// knows neither (gcc before 12, clang before 12, other compilers). Probed once per compiler.
pub fn indirect_extern_access(compiler: &Path) -> Option<&'static str> {
    use std::sync::{Mutex, OnceLock};
    static PROBED: OnceLock<Mutex<HashMap<PathBuf, Option<&'static str>>>> = OnceLock::new();
    let cache = PROBED.get_or_init(Default::default);
    if let Some(known) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(compiler)
    {
        return *known;
    }
    let found = INDIRECT_EXTERN_FLAGS.into_iter().find(|flag| {
        Command::new(compiler)
            .args([flag, "-Werror", "-x", "c", "-c", "-o", "/dev/null", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_remove(record::LOG_ENV)
            .status()
            .is_ok_and(|s| s.success())
    });
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(compiler.to_path_buf(), found);
    found
}

/// gcc's and clang's spelling of indirect access to external data, in probing order.
pub const INDIRECT_EXTERN_FLAGS: [&str; 2] = [
    "-mno-direct-extern-access",
    "-fno-direct-access-external-data",
];

/// How to run one compile.
pub struct Compiler<'a> {
    /// The patched copies to show at their original paths in patched compiles.
    pub mounts: &'a [Mount],
    /// Fixed `SOURCE_DATE_EPOCH` so `__DATE__`/`__TIME__` agree between the two compiles.
    pub epoch: String,
}

impl Compiler<'_> {
    fn command(&self, unit: &Compile, args: &[String], patched: bool) -> Command {
        let mounts = if patched { self.mounts } else { &[] };
        let mut cmd = sandbox::command(mounts, &unit.compiler);
        cmd.args(args);
        cmd.current_dir(&unit.cwd)
            .env("SOURCE_DATE_EPOCH", &self.epoch)
            .env_remove(record::LOG_ENV)
            .stdin(Stdio::null());
        cmd
    }

    /// Compiles `unit` to `out` (patched: with the fix visible). Errors carry the compiler's
    /// output.
    pub fn compile(
        &self,
        unit: &Compile,
        out: &Path,
        patched: bool,
        log: &Path,
    ) -> Result<(), BuildError> {
        self.compile_with(unit, out, patched, log, true)
    }

    /// The original `unit` compiled exactly as the build did (no GOT access flag), with one
    /// section per function: what the running program's code is, for on-stack replacement
    /// maps. `None` when [`Compiler::compile`] adds no flag (its original is that already).
    pub fn compile_as_built(
        &self,
        unit: &Compile,
        out: &Path,
        log: &Path,
    ) -> Result<Option<()>, BuildError> {
        if indirect_extern_access(&unit.compiler).is_none() {
            return Ok(None);
        }
        self.compile_with(unit, out, false, log, false).map(Some)
    }

    fn compile_with(
        &self,
        unit: &Compile,
        out: &Path,
        patched: bool,
        log: &Path,
        extern_flag: bool,
    ) -> Result<(), BuildError> {
        let mut args = record::unit_args(unit, out);
        if let Some(flag) = indirect_extern_access(&unit.compiler).filter(|_| extern_flag) {
            // Before the trailing `-c -o OUT`, after the build's own flags.
            args.insert(args.len() - 3, flag.to_string());
        }
        let logf = std::fs::File::create(log).map_err(|e| BuildError::io(log, e))?;
        let errf = logf.try_clone().map_err(|e| BuildError::io(log, e))?;
        let status = self
            .command(unit, &args, patched)
            .stdout(logf)
            .stderr(errf)
            .status()
            .map_err(|source| BuildError::Spawn {
                command: unit.compiler.display().to_string(),
                source,
            })?;
        if !status.success() {
            let mut tail = tail(log, 25);
            if patched && status.code() == Some(sandbox::MOUNT_FAILED) {
                tail = format!("{tail}\n{}", sandbox::MOUNT_FAILED_HINT);
            }
            return Err(BuildError::Compile {
                file: unit.source.display().to_string(),
                which: if patched { "patched" } else { "original" },
                status: status.to_string(),
                tail,
            });
        }
        Ok(())
    }

    /// The headers `unit` includes (absolute paths).
    pub fn deps(&self, unit: &Compile) -> Result<Vec<PathBuf>, BuildError> {
        let args = record::deps_args(unit);
        let out = self
            .command(unit, &args, false)
            .output()
            .map_err(|source| BuildError::Spawn {
                command: unit.compiler.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(BuildError::Deps {
                file: unit.source.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(record::parse_deps(
            &unit.cwd,
            &String::from_utf8_lossy(&out.stdout),
        ))
    }
}
