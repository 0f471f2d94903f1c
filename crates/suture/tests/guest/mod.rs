//! Booted-guest test support: the stock Debian kernel (the `linux-image-<release>` package the
//! installed headers describe, unpacked by `scripts/guest-kernel.sh`) in QEMU under TCG, with an
//! initramfs built here: busybox, the `suture` binary under test with its shared libraries,
//! test programs and modules, and an `/init` running the test's shell steps.
//!
//! A test builds its modules ([`build_module`]), lists steps in a [`Script`], boots once
//! ([`boot`]) and reads each step's output and exit status from the [`Boot`]; boots take
//! seconds, so one boot should run many checks. On a failed check, [`Boot::ensure`] prints the
//! whole guest console.
//!
//! The tier needs `SUTURE_GUEST_CACHE` (set by scripts/test.sh); without it the tests skip
//! locally and fail under `CI`.
#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use suture_kernel::kbuild::Headers;

/// The prepared stock kernel: `CACHE/RELEASE/{vmlinuz,modules/}`.
pub struct GuestKernel {
    pub release: String,
    pub dir: PathBuf,
    pub headers: Headers,
}

/// The guest kernel, or `None` when the tier is not prepared (locally; under `CI` that panics).
pub fn kernel() -> Option<GuestKernel> {
    let unavailable = |why: String| suture_testkit::tier::unavailable("booted-guest", &why);
    let cache = suture_testkit::tier::require("SUTURE_GUEST_CACHE", "booted-guest")?;
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return unavailable("qemu-system-x86_64 is not installed".into());
    }
    // The release whose headers are installed and whose image is prepared.
    let mut found = None;
    if let Ok(rd) = std::fs::read_dir(&cache) {
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for rel in names {
            let dir = cache.join(&rel);
            if dir.join(".ready").exists() {
                if let Ok(h) = Headers::for_release(&rel) {
                    found = Some(GuestKernel {
                        release: rel,
                        dir,
                        headers: h,
                    });
                }
            }
        }
    }
    match found {
        Some(k) => Some(k),
        None => unavailable(format!(
            "no prepared kernel with installed headers in {} (run scripts/guest-kernel.sh {0})",
            cache.display()
        )),
    }
}

/// A prepared older release: its image in `CACHE/guest/<release>-amd64` (scripts/guest-kernel.sh)
/// and the headers recorded by its tree `CACHE/kernel-tree-<release>` (scripts/kernel-tree.sh
/// --release), which need not be installed. `None` when either is missing.
pub fn release(cache: &Path, release: &str) -> Option<GuestKernel> {
    let rel = format!("{release}-amd64");
    let dir = cache.join("guest").join(&rel);
    let tree = cache.join(format!("kernel-tree-{release}"));
    if !dir.join(".ready").exists() {
        return None;
    }
    let ready = std::fs::read_to_string(tree.join(".suture-ready")).ok()?;
    let headers = ready.lines().find_map(|l| l.strip_prefix("headers_dir="))?;
    // A tree prepared in a chroot (scripts/kernel-tree.sh --chroot) names its headers as the
    // chroot sees them.
    let headers = match ready.lines().find_map(|l| l.strip_prefix("chroot=")) {
        Some(root) => Path::new(root).join(headers.trim_start_matches('/')),
        None => PathBuf::from(headers),
    };
    let headers = Headers::at(&headers).ok()?;
    Some(GuestKernel {
        release: rel,
        dir,
        headers,
    })
}

/// The target's /proc/kallsyms, dumped from a guest once and cached next to its image.
pub fn kallsyms(kernel: &GuestKernel) -> PathBuf {
    let path = kernel.dir.join("kallsyms");
    if path.exists() {
        return path;
    }
    let mut s = Script::new();
    s.step("kallsyms", "cat /proc/kallsyms");
    let b = boot(kernel, "kallsyms", &mut Initramfs::new(), &s);
    let out = &b.expect("kallsyms", 0, &[" T start_kernel"]).output;
    let tmp = kernel.dir.join(format!("kallsyms.{}", std::process::id()));
    std::fs::write(&tmp, out).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The target's /sys/kernel/notes (its vmlinux build-id), dumped from a guest once (as hex,
/// the console is text) and cached next to its image.
pub fn notes(kernel: &GuestKernel) -> PathBuf {
    let path = kernel.dir.join("notes");
    if path.exists() {
        return path;
    }
    let mut s = Script::new();
    s.step("notes", "od -An -v -tx1 /sys/kernel/notes");
    let b = boot(kernel, "notes", &mut Initramfs::new(), &s);
    let out = &b.expect("notes", 0, &[]).output;
    let bytes: Vec<u8> = out
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|e| panic!("{h:?}: {e}\n{out}")))
        .collect();
    assert!(bytes.len() >= 36, "short notes:\n{out}");
    let tmp = kernel.dir.join(format!("notes.{}", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// A scratch directory for one test (unique per process and tag). Directories that test
/// processes no longer running left behind (tens of MB each: initramfs, modules) are removed
/// first, so repeated local runs do not fill the disk; a failed test's directory stays until
/// the next run, for inspection.
pub fn scratch(tag: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest");
    prune_dead_scratch(&root);
    let d = root.join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes `<tag>-<pid>` directories under `root` whose process is gone.
fn prune_dead_scratch(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.rsplit_once('-'))
            .and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The test fixtures directory (`tests/guest/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guest/fixtures")
        .join(name)
}

/// Builds module `name` from one C source against the guest kernel's headers, with extra
/// `ccflags` (e.g. `-DSUTURE_MARKER='"x"'`), and returns the `.ko`. Any kbuild directory (such
/// as one written by suture's generator) can be built with
/// `suture_kernel::kbuild::build_module(dir, &kernel.headers)` directly.
pub fn build_module(kernel: &GuestKernel, name: &str, source: &Path, ccflags: &str) -> PathBuf {
    let dir = scratch(&format!("module-{name}"));
    std::fs::copy(source, dir.join(format!("{name}.c")))
        .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    std::fs::write(
        dir.join("Kbuild"),
        format!("obj-m := {name}.o\nccflags-y += {ccflags}\n"),
    )
    .unwrap();
    let kos = suture_kernel::kbuild::build_module(&dir, &kernel.headers)
        .unwrap_or_else(|e| panic!("building module {name}: {e}"));
    kos.into_iter()
        .find(|k| k.file_stem().is_some_and(|s| s == name))
        .expect("kbuild wrote the module")
}

/// Compiles a userspace C program for the guest (it gets its shared libraries in the
/// initramfs through [`Initramfs::program`]).
pub fn build_program(source: &Path, out: &Path) -> PathBuf {
    let st = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(out)
        .arg(source)
        .status()
        .expect("gcc runs");
    assert!(st.success(), "gcc {} failed", source.display());
    out.to_path_buf()
}

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// An initramfs (newc cpio, uncompressed: the kernel unpacks it faster than gzip under TCG).
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    /// busybox at /bin/busybox (from the host's busybox-static), /dev/console and the usual
    /// mount points.
    pub fn new() -> Initramfs {
        let mut i = Initramfs {
            entries: BTreeMap::new(),
        };
        for d in [
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
        ] {
            i.entries.insert(d.into(), Entry::Dir);
        }
        i.entries
            .insert("/dev/console".into(), Entry::CharDev { major: 5, minor: 1 });
        i.program("/bin/busybox", Path::new("/bin/busybox"));
        i
    }

    fn parents(&mut self, path: &str) {
        let mut p = Path::new(path).parent();
        while let Some(d) = p {
            let s = d.to_str().unwrap();
            if s != "/" && !s.is_empty() {
                self.entries.entry(s.into()).or_insert(Entry::Dir);
            }
            p = d.parent();
        }
    }

    pub fn bytes(&mut self, guest: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.parents(guest);
        self.entries.insert(
            guest.into(),
            Entry::File {
                data: data.into(),
                mode,
            },
        );
        self
    }

    /// A host file (its contents; symlinks followed).
    pub fn file(&mut self, guest: &str, host: &Path) -> &mut Self {
        let data = std::fs::read(host).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
        self.bytes(guest, data, 0o644)
    }

    /// An executable with the shared libraries `ldd` lists, at their host paths. Debug info is
    /// stripped from the copy (the initramfs stays small).
    pub fn program(&mut self, guest: &str, host: &Path) -> &mut Self {
        // Unique per call: tests of one process may strip the same guest path at once.
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tmp = std::env::temp_dir().join(format!(
            "suture-guest-strip-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            guest.replace('/', "_")
        ));
        let st = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&tmp)
            .arg(host)
            .status()
            .expect("strip runs");
        assert!(st.success(), "strip {} failed", host.display());
        let data = std::fs::read(&tmp).unwrap();
        let _ = std::fs::remove_file(&tmp);
        self.bytes(guest, data, 0o755);
        for lib in shared_libraries(host) {
            let key = lib.to_str().unwrap().to_string();
            if !self.entries.contains_key(&key) {
                let data = std::fs::read(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
                self.bytes(&key, data, 0o755);
            }
        }
        self
    }

    /// The `suture` binary under test, as /bin/suture.
    pub fn suture(&mut self) -> &mut Self {
        self.program("/bin/suture", Path::new(env!("CARGO_BIN_EXE_suture")))
    }

    /// A module of the stock kernel (e.g. `loop`) and the modules it depends on, at their
    /// /lib/modules paths with a matching modules.dep, so `modprobe NAME` works in the guest.
    pub fn stock_module(&mut self, kernel: &GuestKernel, name: &str) -> &mut Self {
        let mdir = kernel.dir.join("modules");
        let dep = std::fs::read_to_string(mdir.join("modules.dep"))
            .unwrap_or_else(|e| panic!("{}/modules.dep: {e}", mdir.display()));
        let deps: BTreeMap<&str, Vec<&str>> = dep
            .lines()
            .filter_map(|l| {
                let (m, d) = l.split_once(':')?;
                Some((m, d.split_whitespace().collect()))
            })
            .collect();
        let file = |m: &str| {
            Path::new(m)
                .file_stem()
                .map(|s| s.to_string_lossy().replace('-', "_"))
        };
        let wanted = name.replace('-', "_");
        let (path, needs) = deps
            .iter()
            .find(|(m, _)| file(m).as_deref() == Some(wanted.as_str()))
            .unwrap_or_else(|| panic!("module {name} is not in {}", mdir.display()));
        let base = format!("/lib/modules/{}", kernel.release);
        let mut lines = String::new();
        let prev = match self.entries.get(&format!("{base}/modules.dep")) {
            Some(Entry::File { data, .. }) => String::from_utf8_lossy(data).into_owned(),
            _ => String::new(),
        };
        lines.push_str(&prev);
        for m in std::iter::once(*path).chain(needs.iter().copied()) {
            self.file(&format!("{base}/{m}"), &mdir.join(m));
            let line = format!(
                "{m}: {}\n",
                deps.get(m).map(|d| d.join(" ")).unwrap_or_default()
            );
            if !lines.contains(&line) {
                lines.push_str(&line);
            }
        }
        self.bytes(&format!("{base}/modules.dep"), lines, 0o644)
    }

    /// Writes the archive.
    pub fn write(&self, out: &Path) {
        let mut buf = Vec::new();
        let mut ino = 1u32;
        let mut put = |name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
            let name = name.trim_start_matches('/');
            let hdr = format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                0,
                0,
                1,
                0,
                data.len(),
                0,
                0,
                rdev.0,
                rdev.1,
                name.len() + 1,
                0
            );
            ino += 1;
            buf.extend_from_slice(hdr.as_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.push(0);
            while buf.len() % 4 != 0 {
                buf.push(0);
            }
            buf.extend_from_slice(data);
            while buf.len() % 4 != 0 {
                buf.push(0);
            }
        };
        // BTreeMap order puts every directory before its contents.
        for (name, e) in &self.entries {
            match e {
                Entry::Dir => put(name, 0o040755, &[], (0, 0)),
                Entry::File { data, mode } => put(name, 0o100000 | mode, data, (0, 0)),
                Entry::Symlink(t) => put(name, 0o120777, t.as_bytes(), (0, 0)),
                Entry::CharDev { major, minor } => put(name, 0o020600, &[], (*major, *minor)),
            }
        }
        put("TRAILER!!!", 0, &[], (0, 0));
        std::fs::write(out, buf).unwrap();
    }
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

/// The shared libraries `ldd` lists for a program (none for a static one).
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(program).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, r)) => r.trim(),
                None => l,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Shell steps run in order by the guest's /init, each in the init shell itself (background
/// jobs and variables carry over), with stdout and stderr captured together.
#[derive(Default)]
pub struct Script {
    steps: Vec<(String, String)>,
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    /// Adds a step; `name` must be unique (letters, digits, `-`, `_`).
    pub fn step(&mut self, name: &str, commands: &str) -> &mut Self {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "bad step name {name}"
        );
        assert!(
            self.steps.iter().all(|(n, _)| n != name),
            "duplicate step {name}"
        );
        self.steps.push((name.into(), commands.into()));
        self
    }

    fn init(&self) -> String {
        let mut s = String::from(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
             mount -t tmpfs tmpfs /tmp\n\
             echo '@@suture:ready'\n",
        );
        for (name, cmds) in &self.steps {
            s.push_str(&format!(
                "echo '@@suture:begin {name}'\n{{\n{cmds}\n}} </dev/null 2>&1\n\
                 echo \"@@suture:end {name} $?\"\n"
            ));
        }
        s.push_str("echo '@@suture:done'\npoweroff -f\n");
        s
    }
}

/// One step's result.
#[derive(Clone, Debug)]
pub struct Step {
    pub output: String,
    pub status: i32,
}

/// A finished guest run.
pub struct Boot {
    pub console: String,
    steps: BTreeMap<String, Step>,
    /// From starting QEMU to /init's first line.
    pub boot_seconds: Option<f64>,
    pub total_seconds: f64,
    console_file: PathBuf,
}

impl Boot {
    /// A step's result; panics (with the console) when the step did not finish.
    pub fn step(&self, name: &str) -> &Step {
        match self.steps.get(name) {
            Some(s) => s,
            None => self.fail(&format!("step {name} did not finish")),
        }
    }

    /// Panics with `what` and the whole console when `cond` is false.
    pub fn ensure(&self, cond: bool, what: impl AsRef<str>) {
        if !cond {
            self.fail(what.as_ref());
        }
    }

    /// Checks a step's exit status and that its output contains every `needles`.
    pub fn expect(&self, name: &str, status: i32, needles: &[&str]) -> &Step {
        let s = self.step(name);
        self.ensure(
            s.status == status,
            format!(
                "step {name}: exit status {} (expected {status}); output:\n{}",
                s.status, s.output
            ),
        );
        for n in needles {
            self.ensure(
                s.output.contains(n),
                format!("step {name}: output lacks {n:?}; output:\n{}", s.output),
            );
        }
        s
    }

    /// The step's output parsed as JSON.
    pub fn json(&self, name: &str) -> serde_json::Value {
        let s = self.step(name);
        serde_json::from_str(&s.output).unwrap_or_else(|e| {
            self.fail(&format!(
                "step {name}: output is not JSON ({e}):\n{}",
                s.output
            ))
        })
    }

    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n===== guest console ({}) =====\n{}\n===== end of guest console =====",
            self.console_file.display(),
            self.console
        )
    }
}

/// Kills QEMU if the test panics or times out.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Hard limit for one guest run: `SUTURE_GUEST_TIMEOUT` seconds (default 600; boots under TCG on
/// a loaded 2-core machine are slow, a hung guest must still end).
fn guest_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("SUTURE_GUEST_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    )
}

/// Boots the guest kernel with `initramfs` plus `/init` from `script` (QEMU, TCG, one CPU,
/// 512 MB, serial console) and collects every step. `tag` names the scratch directory, which
/// keeps `initramfs.cpio` and `console.log`.
pub fn boot(kernel: &GuestKernel, tag: &str, initramfs: &mut Initramfs, script: &Script) -> Boot {
    boot_with(kernel, tag, initramfs, script, &[])
}

/// [`boot`] with a raw disk image as the guest's first virtio disk (`/dev/vda` once the
/// `virtio_pci` and `virtio_blk` modules are loaded: put them in with
/// [`Initramfs::stock_module`]). The image outlives the guest: booting again with it is a
/// reboot of the same machine.
pub fn boot_with_disk(
    kernel: &GuestKernel,
    tag: &str,
    initramfs: &mut Initramfs,
    script: &Script,
    disk: &Path,
) -> Boot {
    let drive = format!("file={},format=raw,if=virtio", disk.display());
    boot_with(kernel, tag, initramfs, script, &["-drive", &drive])
}

fn boot_with(
    kernel: &GuestKernel,
    tag: &str,
    initramfs: &mut Initramfs,
    script: &Script,
    qemu_args: &[&str],
) -> Boot {
    let dir = scratch(&format!("boot-{tag}"));
    initramfs.bytes("/init", script.init(), 0o755);
    let cpio = dir.join("initramfs.cpio");
    initramfs.write(&cpio);
    let console_file = dir.join("console.log");
    let start = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "512M",
            "-smp",
            "1",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(&cpio)
        // loglevel=1: kernel messages stay off the console (they would interleave with step
        // output); tests read them with dmesg. panic=-1: a panic ends QEMU at once.
        .args(["-append", "console=ttyS0 panic=-1 loglevel=1"])
        .args(qemu_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 starts");
    let mut child = Reap(child);
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let limit = guest_timeout();
    let mut lines: Vec<String> = Vec::new();
    let mut ready = None;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((line, at)) => {
                if line == "@@suture:ready" && ready.is_none() {
                    ready = Some(at.duration_since(start).as_secs_f64());
                }
                lines.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.0.kill();
            // Drain what is left.
            while let Ok((line, _)) = rx.recv_timeout(Duration::from_secs(2)) {
                lines.push(line);
            }
            break;
        }
    }
    let _ = reader.join();
    let status = child.0.wait();
    let qemu_err = err_reader.join().unwrap_or_default();
    let total_seconds = start.elapsed().as_secs_f64();
    let mut console = lines.join("\n");
    if timed_out {
        console.push_str(&format!(
            "\n[harness: killed QEMU after the {} s limit (SUTURE_GUEST_TIMEOUT)]",
            limit.as_secs()
        ));
    }
    if !qemu_err.trim().is_empty() {
        console.push_str(&format!("\n[qemu stderr]\n{qemu_err}"));
    }
    let _ = std::fs::write(&console_file, &console);
    let mut steps = BTreeMap::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for l in &lines {
        if let Some(name) = l.strip_prefix("@@suture:begin ") {
            current = Some((name.to_string(), Vec::new()));
        } else if let Some(rest) = l.strip_prefix("@@suture:end ") {
            if let (Some((name, out)), Some((n2, code))) = (current.take(), rest.rsplit_once(' ')) {
                if name == n2 {
                    steps.insert(
                        name,
                        Step {
                            output: out.join("\n"),
                            status: code.parse().unwrap_or(-1),
                        },
                    );
                }
            }
        } else if let Some((_, out)) = current.as_mut() {
            out.push(l);
        }
    }
    let boot = Boot {
        console,
        steps,
        boot_seconds: ready,
        total_seconds,
        console_file,
    };
    if !lines.iter().any(|l| l == "@@suture:done") {
        boot.fail(&format!(
            "the guest did not finish its script (QEMU {status:?}{})",
            if timed_out { ", timed out" } else { "" }
        ));
    }
    boot
}
