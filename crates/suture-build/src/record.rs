//! The compiler wrapper and what it records.
//!
//! `suture build` runs the project's build with a directory of symlinks (`cc`, `gcc`,
//! `clang`, versioned names, ...) first in `PATH`, all pointing at the `suture` binary, and
//! `SUTURE_BUILD_LOG` naming a log file. Started under such a name with that variable set,
//! `suture` is the wrapper ([`wrapper_invocation`], [`run_wrapper`]): it appends one JSON line
//! (working directory, real compiler, arguments) to the log and `exec`s the real compiler found
//! further down `PATH`, so the build behaves exactly as without suture. Classification of the
//! recorded command lines into compiles and links ([`classify`]) happens afterwards, in
//! `suture build`; the wrapper stays as small as possible.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the log file; its presence selects wrapper mode.
pub const LOG_ENV: &str = "SUTURE_BUILD_LOG";
/// Environment variable naming the wrapper directory (skipped when looking for the real tool).
pub const WRAP_DIR_ENV: &str = "SUTURE_BUILD_WRAP_DIR";

/// Names the wrapper answers to: C and C++ compiler drivers, optionally versioned
/// (`gcc-12`, `clang-14`) or target-prefixed (`x86_64-linux-gnu-gcc-12`).
pub fn is_compiler_name(name: &str) -> bool {
    let base = name.strip_prefix("x86_64-linux-gnu-").unwrap_or(name);
    let stem = match base.rsplit_once('-') {
        Some((s, v)) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') => s,
        _ => base,
    };
    matches!(stem, "cc" | "c++" | "gcc" | "g++" | "clang" | "clang++")
}

/// One recorded compiler invocation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invocation {
    pub cwd: PathBuf,
    /// The name the build called (`cc`, `gcc-12`).
    pub tool: String,
    /// The real compiler that ran.
    pub compiler: PathBuf,
    pub args: Vec<String>,
}

/// When this process is the compiler wrapper: the tool name it was called as.
///
/// The name alone decides (not [`LOG_ENV`]): a build system that cached the wrapper's path
/// (CMake does) keeps working after `suture build`, the wrapper then only runs the real
/// compiler.
pub fn wrapper_invocation() -> Option<String> {
    let argv0 = std::env::args_os().next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?.to_string();
    is_compiler_name(&name).then_some(name)
}

/// Finds `tool` in `PATH`, skipping the wrapper directory and anything that is this binary.
pub fn find_real(tool: &str) -> Option<PathBuf> {
    let wrap = std::env::var_os(WRAP_DIR_ENV).map(PathBuf::from);
    let wrap = wrap.and_then(|w| w.canonicalize().ok());
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if wrap.is_some() && dir.canonicalize().ok() == wrap {
            continue;
        }
        let cand = dir.join(tool);
        let Ok(real) = cand.canonicalize() else {
            continue;
        };
        if Some(&real) == me.as_ref() {
            continue;
        }
        if is_executable(&cand) {
            return Some(cand);
        }
    }
    None
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The wrapper: record and `exec` the real compiler. Returns only on failure (exit status).
pub fn run_wrapper(tool: &str) -> i32 {
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(real) = find_real(tool) else {
        eprintln!("suture (compiler wrapper): {tool} not found in PATH");
        return 127;
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let inv = Invocation {
        cwd,
        tool: tool.to_string(),
        compiler: real.clone(),
        args: args.clone(),
    };
    if let Some(log) = std::env::var_os(LOG_ENV) {
        if let Ok(mut line) = serde_json::to_vec(&inv) {
            line.push(b'\n');
            // One write(2) with O_APPEND per line: parallel builds (make -j) cannot interleave.
            let res = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .and_then(|mut f| f.write_all(&line));
            if let Err(e) = res {
                eprintln!(
                    "suture (compiler wrapper): cannot append to {}: {e}",
                    Path::new(&log).display()
                );
                return 126;
            }
        }
    }
    // argv[0] is the real path: gcc finds its own programs (cc1, collect2) relative to it.
    let err = std::process::Command::new(&real).args(&args).exec();
    eprintln!(
        "suture (compiler wrapper): cannot run {}: {err}",
        real.display()
    );
    127
}

/// Reads a wrapper log (missing file: no records). Lines that do not parse are skipped: a
/// build killed mid-write leaves at most one torn line.
pub fn read_log(path: &Path) -> Vec<Invocation> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lang {
    C,
    Cxx,
    Asm,
}

/// Kind of a command-line input by its extension.
fn input_kind(p: &str) -> Option<Input> {
    let ext = Path::new(p).extension()?.to_str()?;
    Some(match ext {
        "c" | "i" => Input::Source(Lang::C),
        "cc" | "cpp" | "cxx" | "c++" | "C" | "ii" => Input::Source(Lang::Cxx),
        "s" | "S" | "sx" | "asm" => Input::Source(Lang::Asm),
        "o" | "obj" => Input::Object,
        "a" => Input::Archive,
        _ if p.contains(".so") => Input::SharedLib,
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Source(Lang),
    Object,
    Archive,
    SharedLib,
}

/// Options whose value is the next argument when not joined (`-I dir`, `-o out`).
const WITH_VALUE: &[&str] = &[
    "-o",
    "-I",
    "-D",
    "-U",
    "-include",
    "-imacros",
    "-iquote",
    "-isystem",
    "-idirafter",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-isysroot",
    "-MF",
    "-MT",
    "-MQ",
    "-x",
    "-L",
    "-l",
    "-Xlinker",
    "-Xassembler",
    "-Xpreprocessor",
    "-Xclang",
    "-T",
    "-u",
    "-e",
    "-z",
    "--param",
    "-aux-info",
    "-target",
    "-B",
    "-dumpbase",
    "-dumpdir",
];

/// One translation unit compiled by a recorded command.
#[derive(Clone, Debug, Serialize)]
pub struct Compile {
    pub cwd: PathBuf,
    pub compiler: PathBuf,
    pub tool: String,
    /// The command's arguments as the build gave them.
    pub args: Vec<String>,
    /// The source argument as written (relative to `cwd` or absolute).
    pub source_arg: String,
    /// The source, absolute.
    pub source: PathBuf,
    pub lang: Lang,
    /// The object written (absolute); `None` when compiled and linked in one command.
    pub output: Option<PathBuf>,
}

/// One link of an executable or shared library.
#[derive(Clone, Debug, Serialize)]
pub struct Link {
    pub cwd: PathBuf,
    pub output: PathBuf,
    pub objects: Vec<PathBuf>,
    pub archives: Vec<PathBuf>,
    pub libs: Vec<String>,
    pub libdirs: Vec<PathBuf>,
    /// Sources compiled by the link command itself (`cc -o prog prog.c`).
    pub units: Vec<Compile>,
}

#[derive(Clone, Debug)]
pub enum Event {
    Compile(Compile),
    Link(Link),
}

/// Absolute, lexically normalised `p` relative to `cwd` (symlinks resolved when it exists).
pub fn absolute(cwd: &Path, p: &str) -> PathBuf {
    let joined = cwd.join(p);
    if let Ok(c) = joined.canonicalize() {
        return c;
    }
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Splits one invocation into the compiles and the link it performs.
pub fn classify(inv: &Invocation) -> Vec<Event> {
    let mut mode_compile = false;
    let mut preprocess_only = false;
    let mut output: Option<String> = None;
    let mut sources: Vec<(String, Lang)> = Vec::new();
    let mut objects = Vec::new();
    let mut archives = Vec::new();
    let mut libs = Vec::new();
    let mut libdirs = Vec::new();
    let mut forced: Option<Lang> = None;
    let mut i = 0;
    while i < inv.args.len() {
        let a = inv.args[i].as_str();
        let next = inv.args.get(i + 1).map(String::as_str);
        if WITH_VALUE.contains(&a) {
            let v = next.unwrap_or("");
            match a {
                "-o" => output = Some(v.to_string()),
                "-l" => libs.push(v.to_string()),
                "-L" => libdirs.push(absolute(&inv.cwd, v)),
                "-x" => {
                    forced = match v {
                        "c" => Some(Lang::C),
                        "c++" => Some(Lang::Cxx),
                        "assembler" | "assembler-with-cpp" => Some(Lang::Asm),
                        _ => None,
                    }
                }
                _ => {}
            }
            i += 2;
            continue;
        }
        match a {
            "-c" => mode_compile = true,
            "-S" | "-E" | "-M" | "-MM" | "-fsyntax-only" => preprocess_only = true,
            "-" => {}
            _ if a.starts_with("-o") => output = Some(a[2..].to_string()),
            _ if a.starts_with("-l") => libs.push(a[2..].to_string()),
            _ if a.starts_with("-L") => libdirs.push(absolute(&inv.cwd, &a[2..])),
            _ if a.starts_with('-') => {}
            _ => match (forced, input_kind(a)) {
                (Some(l), _) => sources.push((a.to_string(), l)),
                (None, Some(Input::Source(l))) => sources.push((a.to_string(), l)),
                (None, Some(Input::Object)) => objects.push(absolute(&inv.cwd, a)),
                (None, Some(Input::Archive)) => archives.push(absolute(&inv.cwd, a)),
                (None, Some(Input::SharedLib)) | (None, None) => {}
            },
        }
        i += 1;
    }
    if preprocess_only {
        return Vec::new();
    }
    let unit = |src: &str, lang: Lang, out: Option<PathBuf>| Compile {
        cwd: inv.cwd.clone(),
        compiler: inv.compiler.clone(),
        tool: inv.tool.clone(),
        args: inv.args.clone(),
        source_arg: src.to_string(),
        source: absolute(&inv.cwd, src),
        lang,
        output: out,
    };
    if mode_compile {
        return sources
            .iter()
            .map(|(s, l)| {
                let out = match (&output, sources.len()) {
                    (Some(o), 1) => o.clone(),
                    _ => {
                        let stem = Path::new(s).file_stem().unwrap_or_default();
                        format!("{}.o", stem.to_string_lossy())
                    }
                };
                Event::Compile(unit(s, *l, Some(absolute(&inv.cwd, &out))))
            })
            .collect();
    }
    if sources.is_empty() && objects.is_empty() && archives.is_empty() {
        return Vec::new();
    }
    let out = output.unwrap_or_else(|| "a.out".into());
    vec![Event::Link(Link {
        cwd: inv.cwd.clone(),
        output: absolute(&inv.cwd, &out),
        objects,
        archives,
        libs,
        libdirs,
        units: sources.iter().map(|(s, l)| unit(s, *l, None)).collect(),
    })]
}

/// Arguments that recompile `unit` into `output` with one section per function and data
/// object, without link-time optimisation and without touching the build's own files (its
/// dependency files, its objects).
pub fn unit_args(unit: &Compile, output: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    let args = &unit.args;
    let mut forced = false;
    while i < args.len() {
        let a = args[i].as_str();
        let next = args.get(i + 1).cloned().unwrap_or_default();
        match a {
            "-o" | "-MF" | "-MT" | "-MQ" | "-l" | "-L" | "-Xlinker" | "-T" | "-u" | "-e" | "-z" => {
                i += 2;
                continue;
            }
            "-c"
            | "-MD"
            | "-MMD"
            | "-MP"
            | "-MG"
            | "-shared"
            | "-rdynamic"
            | "-static"
            | "-pie"
            | "-no-pie"
            | "-static-pie"
            | "-ffat-lto-objects"
            | "-fno-fat-lto-objects" => {
                i += 1;
                continue;
            }
            "-x" => forced = true,
            _ => {}
        }
        if WITH_VALUE.contains(&a) {
            out.push(a.to_string());
            out.push(next);
            i += 2;
            continue;
        }
        let drop = a.starts_with("-o")
            || a.starts_with("-MF")
            || a.starts_with("-MT")
            || a.starts_with("-MQ")
            || a.starts_with("-Wp,-MD,")
            || a.starts_with("-Wp,-MMD,")
            || a.starts_with("-flto")
            || a.starts_with("-save-temps")
            || a.starts_with("-Wl,")
            || a.starts_with("-l")
            || a.starts_with("-L");
        let other_input =
            !a.starts_with('-') && a != unit.source_arg && (forced || input_kind(a).is_some());
        if !drop && !other_input {
            out.push(a.to_string());
        }
        i += 1;
    }
    out.extend(
        [
            "-ffunction-sections",
            "-fdata-sections",
            "-fno-lto",
            "-c",
            "-o",
        ]
        .map(String::from),
    );
    out.push(output.to_string_lossy().into_owned());
    out
}

/// Arguments that print the unit's header dependencies (make syntax) on stdout.
pub fn deps_args(unit: &Compile) -> Vec<String> {
    let mut a = unit_args(unit, Path::new("/dev/null"));
    // Replace the trailing `-c -o /dev/null` with `-M`: preprocess only, list every header.
    a.truncate(a.len() - 3);
    a.push("-M".into());
    a
}

/// Parses make-syntax dependencies (`-M` output) into absolute paths.
pub fn parse_deps(cwd: &Path, text: &str) -> Vec<PathBuf> {
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let Some((_, deps)) = line.split_once(": ").or_else(|| line.split_once(":\t")) else {
            continue;
        };
        for d in deps.split_whitespace() {
            out.push(absolute(cwd, d));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(cwd: &str, args: &[&str]) -> Invocation {
        Invocation {
            cwd: cwd.into(),
            tool: "cc".into(),
            compiler: "/usr/bin/cc".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn compiler_names() {
        for n in [
            "cc",
            "gcc",
            "gcc-12",
            "clang-14",
            "x86_64-linux-gnu-gcc-12",
            "c++",
        ] {
            assert!(is_compiler_name(n), "{n}");
        }
        for n in ["suture", "ld", "gcc-ar", "cc1", "make"] {
            assert!(!is_compiler_name(n), "{n}");
        }
    }

    #[test]
    fn compile_and_link_are_told_apart() {
        let ev = classify(&inv(
            "/p",
            &["-O2", "-I", "inc", "-c", "src/a.c", "-o", "obj/a.o", "-MD"],
        ));
        let [Event::Compile(c)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(c.source, PathBuf::from("/p/src/a.c"));
        assert_eq!(c.output.as_deref(), Some(Path::new("/p/obj/a.o")));
        let args = unit_args(c, Path::new("/t/o.o"));
        assert!(!args.contains(&"obj/a.o".to_string()), "{args:?}");
        assert!(!args.contains(&"-MD".to_string()), "{args:?}");
        assert!(args.ends_with(&["-c".into(), "-o".into(), "/t/o.o".into()]));

        let ev = classify(&inv(
            "/p",
            &["-shared", "a.o", "libx.a", "-L.", "-lm", "-o", "libq.so.1"],
        ));
        let [Event::Link(l)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(l.output, PathBuf::from("/p/libq.so.1"));
        assert_eq!(l.objects, vec![PathBuf::from("/p/a.o")]);
        assert_eq!(l.archives, vec![PathBuf::from("/p/libx.a")]);
        assert_eq!(l.libs, vec!["m".to_string()]);

        let ev = classify(&inv("/p", &["-O2", "prog.c", "-o", "prog"]));
        let [Event::Link(l)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(l.units.len(), 1);
        assert!(classify(&inv("/p", &["-E", "a.c"])).is_empty());
        assert!(classify(&inv("/p", &["--version"])).is_empty());
    }

    #[test]
    fn deps_are_parsed() {
        let d = parse_deps(
            Path::new("/p"),
            "a.o: a.c \\\n inc/x.h /usr/include/stdio.h\n",
        );
        assert_eq!(
            d,
            vec![
                PathBuf::from("/p/a.c"),
                PathBuf::from("/p/inc/x.h"),
                PathBuf::from("/usr/include/stdio.h")
            ]
        );
    }
}
