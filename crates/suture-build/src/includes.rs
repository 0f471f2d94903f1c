//! Which C units of a kernel tree a header reaches, and whether the configuration builds them.
//!
//! [`Scan::tree`] reads the `#include` lines of every `.c` and `.h` file of the tree that an
//! x86-64 build can compile (everything but `Documentation/`, `tools/`, `scripts/`,
//! `samples/`, `usr/`, hidden directories and other architectures' `arch/*`). A quoted include
//! is looked up next to the including file, then (like an angle include) in kbuild's include
//! path for x86 ([`INCLUDE_PATH`]). An include found nowhere (a directory's own `-I` flags,
//! a generated file) is kept by its text and matches any header whose path ends with it, so
//! the scan errs towards more units, never fewer: the compiled code decides afterwards
//! (units whose code does not change are dropped). [`Scan::reach`] walks the includes
//! backwards from a header to the `.c` files that include it directly or through other
//! headers (or `.c` files included by others). A header every unit gets through kbuild's
//! `-include` flags ([`FORCED`]) reaches all of them.
//!
//! [`configured`] judges from a unit's Makefile whether the configuration builds it: only when
//! every Makefile line naming the object is gated on options the `.config` leaves unset is it
//! left out without compiling; anything else (no line found, an expression suture does not
//! read) is compiled, and the kallsyms and module checks of `suture_build::kernel` decide.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Component, Path};

/// kbuild's include directories for x86, in its order (`-I` of every unit).
pub const INCLUDE_PATH: &[&str] = &[
    "arch/x86/include",
    "arch/x86/include/generated",
    "include",
    "arch/x86/include/uapi",
    "arch/x86/include/generated/uapi",
    "include/uapi",
    "include/generated/uapi",
];

/// Headers kbuild includes into every unit (`-include`).
pub const FORCED: &[&str] = &[
    "include/linux/compiler-version.h",
    "include/linux/kconfig.h",
    "include/linux/compiler_types.h",
];

/// Top-level directories no x86-64 unit comes from.
const SKIPPED: &[&str] = &[
    "Documentation",
    "tools",
    "scripts",
    "samples",
    "usr",
    "debian",
];

/// The include graph of a tree.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every scanned `.c` file (relative path).
    units: Vec<String>,
    /// Resolved file → the files that include it.
    includers: HashMap<String, Vec<String>>,
    /// Include text found nowhere → the files that include it.
    unresolved: HashMap<String, Vec<String>>,
}

/// The units a header reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// `.c` files that include the header directly or transitively, sorted.
    pub units: Vec<String>,
    /// The header reaches a header kbuild includes into every unit: `units` is all of them.
    pub everything: bool,
}

fn normalize(p: &Path) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_str()?),
            Component::ParentDir => {
                out.pop()?;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out.join("/"))
}

/// The include targets of a source text: (quoted, text).
fn include_lines(text: &str) -> Vec<(bool, &str)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(rest) = rest
            .strip_prefix("include_next")
            .or_else(|| rest.strip_prefix("include"))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let (quoted, close) = match rest.chars().next() {
            Some('"') => (true, '"'),
            Some('<') => (false, '>'),
            _ => continue, // a macro include: not followed
        };
        if let Some(end) = rest[1..].find(close) {
            out.push((quoted, &rest[1..1 + end]));
        }
    }
    out
}

impl Scan {
    /// Scans the tree at `root`.
    pub fn tree(root: &Path) -> std::io::Result<Scan> {
        let mut files = Vec::new();
        walk(root, root, &mut files)?;
        let known: HashSet<&str> = files.iter().map(String::as_str).collect();
        let mut scan = Scan::default();
        for f in &files {
            if f.ends_with(".c") {
                scan.units.push(f.clone());
            }
            let Ok(bytes) = std::fs::read(root.join(f)) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let dir = Path::new(f).parent().unwrap_or(Path::new(""));
            for (quoted, inc) in include_lines(&text) {
                let local = quoted
                    .then(|| normalize(&dir.join(inc)))
                    .flatten()
                    .filter(|p| known.contains(p.as_str()));
                let found = local.or_else(|| {
                    INCLUDE_PATH
                        .iter()
                        .filter_map(|d| normalize(&Path::new(d).join(inc)))
                        .find(|p| known.contains(p.as_str()))
                });
                match found {
                    Some(target) => scan.includers.entry(target).or_default().push(f.clone()),
                    None => scan
                        .unresolved
                        .entry(inc.trim_start_matches("./").to_string())
                        .or_default()
                        .push(f.clone()),
                }
            }
        }
        scan.units.sort();
        Ok(scan)
    }

    /// Number of `.c` files scanned.
    pub fn unit_count(&self) -> usize {
        self.units.len()
    }

    /// The files including `file`: resolved includes, and unresolved ones whose text ends
    /// `file`'s path.
    fn direct(&self, file: &str) -> Vec<&String> {
        let mut out: Vec<&String> = self.includers.get(file).into_iter().flatten().collect();
        for (text, who) in &self.unresolved {
            let suffix = file.len() > text.len()
                && file.ends_with(text.as_str())
                && file.as_bytes()[file.len() - text.len() - 1] == b'/';
            if suffix || file == text {
                out.extend(who);
            }
        }
        out
    }

    /// The units `header` reaches.
    pub fn reach(&self, header: &str) -> Reach {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut units = Vec::new();
        let mut queue: VecDeque<String> = VecDeque::from([header.to_string()]);
        let mut everything = false;
        while let Some(f) = queue.pop_front() {
            if FORCED.contains(&f.as_str()) {
                everything = true;
            }
            for who in self.direct(&f) {
                if seen.insert(who.as_str()) {
                    if who.ends_with(".c") {
                        units.push(who.clone());
                    }
                    queue.push_back(who.clone());
                }
            }
        }
        if everything {
            return Reach {
                units: self.units.clone(),
                everything,
            };
        }
        units.sort();
        Reach { units, everything }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let ty = entry.file_type()?;
        if ty.is_dir() {
            let top = rel.components().count() == 1;
            if top && SKIPPED.contains(&name.as_ref()) {
                continue;
            }
            if rel.starts_with("arch") && rel.components().count() == 2 && name != "x86" {
                continue;
            }
            walk(root, &path, out)?;
        } else if ty.is_file() && (name.ends_with(".c") || name.ends_with(".h")) {
            if let Some(r) = rel.to_str() {
                out.push(r.to_string());
            }
        }
    }
    Ok(())
}

/// The configuration of a tree as its Makefiles apply it: the `.config` (option → value:
/// `y`, `m`, a number or string) and the Makefiles read so far.
pub struct Gate<'t> {
    tree: &'t Path,
    options: HashMap<String, String>,
    makefiles: std::cell::RefCell<HashMap<std::path::PathBuf, std::rc::Rc<Makefile>>>,
}

/// A directory's `Makefile` and `Kbuild` text, and its words (what `=` and blanks separate).
struct Makefile {
    text: String,
    words: HashSet<String>,
}

/// Makefile lines with continuations joined.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        match line.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl<'t> Gate<'t> {
    /// The tree's `.config`.
    pub fn new(tree: &'t Path) -> Gate<'t> {
        let text = std::fs::read_to_string(tree.join(".config")).unwrap_or_default();
        let options = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        Gate::with_options(tree, options)
    }

    pub fn with_options(tree: &'t Path, options: HashMap<String, String>) -> Gate<'t> {
        Gate {
            tree,
            options,
            makefiles: Default::default(),
        }
    }

    /// `Makefile` and `Kbuild` of `dir` (relative to the tree), read once.
    fn makefile(&self, dir: &Path) -> std::rc::Rc<Makefile> {
        if let Some(m) = self.makefiles.borrow().get(dir) {
            return m.clone();
        }
        let text = ["Makefile", "Kbuild"]
            .iter()
            .filter_map(|m| std::fs::read_to_string(self.tree.join(dir).join(m)).ok())
            .collect::<Vec<_>>()
            .join("\n");
        let words = text
            .split(|c: char| c.is_whitespace() || c == '=')
            .filter(|w| w.ends_with(".o"))
            .map(str::to_string)
            .collect();
        let m = std::rc::Rc::new(Makefile { text, words });
        self.makefiles
            .borrow_mut()
            .insert(dir.to_path_buf(), m.clone());
        m
    }

    /// Whether the configuration builds `object` (a `.o` path relative to the tree): `Err`
    /// names the options whose absence leaves it out. Only a Makefile that positively gates
    /// every mention of the object on unset options says no.
    pub fn configured(&self, object: &str) -> Result<(), String> {
        if self.named_above(Path::new(object)) {
            return Ok(()); // another Makefile builds it by its path: compiled, to be sure
        }
        self.configured_at(Path::new(object), 0).map_err(|options| {
            format!(
                "its Makefile builds {object} only with {}, which the configuration leaves out",
                options.join(" or ")
            )
        })
    }

    /// Whether a Makefile of a directory above `object`'s names it by its path from there
    /// (`obj-$(CONFIG_X) += dir/file.o`): its own directory's gating is then not the whole
    /// story.
    fn named_above(&self, object: &Path) -> bool {
        let mut dir = object.parent();
        while let Some(d) = dir {
            let Some(parent) = d.parent() else { break };
            if let Ok(rel) = object.strip_prefix(parent) {
                let rel = rel.to_string_lossy();
                if self.makefile(parent).words.contains(rel.as_ref()) {
                    return true;
                }
            }
            dir = Some(parent);
        }
        false
    }

    fn configured_at(&self, object: &Path, depth: u32) -> Result<(), Vec<String>> {
        if depth > 4 {
            return Ok(());
        }
        let Some(dir) = object.parent() else {
            return Ok(());
        };
        let Some(name) = object.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        let makefile = self.makefile(dir);
        if !makefile.words.contains(name) {
            return Ok(()); // not named here: nothing says no
        }
        let mut unset = Vec::new();
        for line in logical_lines(&makefile.text) {
            let Some((lhs, rhs)) = line
                .split_once(":=")
                .or_else(|| line.split_once("+="))
                .or_else(|| line.split_once('='))
            else {
                continue;
            };
            if !rhs.split_whitespace().any(|w| w == name) {
                continue;
            }
            let lhs = lhs.trim();
            // `obj-y`, `obj-$(CONFIG_X)`, `ext4-y`, `ext4-$(CONFIG_X)`, `ext4-objs`, `lib-y`...
            let (owner, gate) = match lhs.find("-$(") {
                Some(i) => {
                    let inner = &lhs[i + 3..];
                    match inner.strip_suffix(')') {
                        Some(opt) if opt.starts_with("CONFIG_") && !opt.contains('(') => {
                            (&lhs[..i], Some(opt))
                        }
                        _ => return Ok(()), // an expression suture does not read
                    }
                }
                None => match lhs.rsplit_once('-') {
                    Some((owner, "y" | "m" | "objs")) => (owner, None),
                    // `-n`, `ccflags-y` style variables never name objects to build
                    _ => continue,
                },
            };
            if let Some(opt) = gate {
                if !matches!(self.options.get(opt).map(String::as_str), Some("y" | "m")) {
                    unset.push(opt.to_string());
                    continue;
                }
            }
            if matches!(owner, "obj" | "lib" | "extra" | "core" | "head") {
                return Ok(());
            }
            // A part of a composite object: built when that object is.
            match self.configured_at(&dir.join(format!("{owner}.o")), depth + 1) {
                Ok(()) => return Ok(()),
                Err(options) => unset.extend(options),
            }
        }
        if unset.is_empty() {
            return Ok(());
        }
        unset.sort();
        unset.dedup();
        Err(unset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("suture-inc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (f, text) in files {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    #[test]
    fn includes_are_followed_backwards_to_units() {
        let t = tree(
            "reach",
            &[
                (
                    "include/linux/compiler_types.h",
                    "#include <linux/compiler_attributes.h>\n",
                ),
                ("include/linux/compiler_attributes.h", ""),
                (
                    "include/linux/list.h",
                    "#include <linux/compiler_attributes.h>\n",
                ),
                ("include/net/sock.h", "  #  include <linux/list.h>\n"),
                ("fs/ext4/ext4.h", "#include <linux/list.h>\n"),
                ("fs/ext4/mballoc.h", "#include \"ext4.h\"\n"),
                ("fs/ext4/mballoc.c", "#include \"mballoc.h\"\n"),
                ("fs/ext4/inode.c", "#include \"ext4.h\"\n#include MACRO_H\n"),
                ("fs/ext4/sub/x.c", "#include \"../ext4.h\"\n"),
                ("drivers/y/y.c", "#include \"y_regs.h\"\n"),
                ("drivers/y/gen/y_regs.h", ""),
                ("drivers/z/z.c", "#include \"other.c\"\n"),
                ("drivers/z/other.c", "#include <net/sock.h>\n"),
                ("arch/arm/kernel/a.c", "#include <linux/list.h>\n"),
                ("tools/t.c", "#include <linux/list.h>\n"),
                (".suture-headers/h.c", "#include <linux/list.h>\n"),
            ],
        );
        let s = Scan::tree(&t).unwrap();
        assert_eq!(
            s.reach("fs/ext4/mballoc.h").units,
            vec!["fs/ext4/mballoc.c"]
        );
        assert_eq!(
            s.reach("fs/ext4/ext4.h").units,
            vec!["fs/ext4/inode.c", "fs/ext4/mballoc.c", "fs/ext4/sub/x.c"]
        );
        // Through a header and a .c file included by another .c file; arch/arm, tools and
        // hidden directories are not x86 units.
        assert_eq!(
            s.reach("include/linux/list.h").units,
            vec![
                "drivers/z/other.c",
                "drivers/z/z.c",
                "fs/ext4/inode.c",
                "fs/ext4/mballoc.c",
                "fs/ext4/sub/x.c"
            ]
        );
        assert!(!s.reach("include/linux/list.h").everything);
        // Found nowhere by the include path: matched by its path's end.
        assert_eq!(
            s.reach("drivers/y/gen/y_regs.h").units,
            vec!["drivers/y/y.c"]
        );
        // Reaching a forced header is reaching every unit.
        let all = s.reach("include/linux/compiler_attributes.h");
        assert!(all.everything);
        assert_eq!(all.units.len(), s.unit_count());
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn makefiles_gate_units_on_the_configuration() {
        let t = tree(
            "cfg",
            &[
                (
                    "fs/ext4/Makefile",
                    "obj-$(CONFIG_EXT4_FS) += ext4.o\n\next4-y := balloc.o \\\n\t\tinode.o\n\
                     ext4-$(CONFIG_EXT4_FS_POSIX_ACL) += acl.o\n\
                     ext4-$(CONFIG_EXT4_KUNIT) += kunit.o # tests\n",
                ),
                ("drivers/q/Makefile", "obj-$(CONFIG_Q) += q.o\n"),
                (
                    "drivers/w/Makefile",
                    "obj-$(subst m,y,$(CONFIG_W)) += w.o\n",
                ),
                ("drivers/Makefile", "obj-$(CONFIG_OTHER) += q/shared.o\n"),
                ("drivers/q/Kbuild", "obj-$(CONFIG_Q) += shared.o\n"),
            ],
        );
        let config: HashMap<String, String> =
            [("CONFIG_EXT4_FS", "m"), ("CONFIG_EXT4_FS_POSIX_ACL", "y")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let gate = Gate::with_options(&t, config.clone());
        assert_eq!(gate.configured("fs/ext4/inode.o"), Ok(()));
        assert_eq!(gate.configured("fs/ext4/acl.o"), Ok(()));
        let e = gate.configured("fs/ext4/kunit.o").unwrap_err();
        assert!(e.contains("only with CONFIG_EXT4_KUNIT"), "{e}");
        let e = gate.configured("drivers/q/q.o").unwrap_err();
        assert!(e.contains("CONFIG_Q"), "{e}");
        // Not named, or named in an expression suture does not read: compiled.
        assert_eq!(gate.configured("drivers/q/other.o"), Ok(()));
        assert_eq!(gate.configured("drivers/w/w.o"), Ok(()));
        // Gated in its directory, but named by its path from above: compiled to be sure.
        assert_eq!(gate.configured("drivers/q/shared.o"), Ok(()));
        let mut off = config.clone();
        off.remove("CONFIG_EXT4_FS");
        let e = Gate::with_options(&t, off.clone())
            .configured("fs/ext4/inode.o")
            .unwrap_err();
        assert!(e.contains("CONFIG_EXT4_FS"), "{e}");
        let _ = std::fs::remove_dir_all(&t);
    }
}
