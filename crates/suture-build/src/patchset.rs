//! The fix as files: which files a unified diff touches, their patched contents (produced by
//! `patch(1)` on copies, never in the source tree), what kind of file each is, and whether a
//! change alters a structure's definition.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BuildError;

/// What a touched file is, for deciding how (and whether) it can be live-patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    /// A C or C++ translation unit.
    Source,
    /// A header (`.h`, `.hpp`, ...).
    Header,
    /// Assembly: its machine code is written by hand, not diffed.
    Assembly,
    /// A build file (Makefile, CMakeLists.txt, configure.ac, ...).
    Build,
    /// Anything else (documentation, tests, data files).
    Other,
}

pub fn kind_of(rel: &Path) -> FileKind {
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = rel
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let build_names = [
        "Makefile",
        "makefile",
        "GNUmakefile",
        "Makefile.am",
        "Makefile.in",
        "CMakeLists.txt",
        "configure",
        "configure.ac",
        "configure.in",
        "meson.build",
        "meson_options.txt",
        "rules",
        "Kbuild",
        "Kconfig",
    ];
    if build_names.contains(&name.as_str())
        || matches!(ext.as_str(), "mk" | "am" | "cmake" | "m4" | "ac")
    {
        return FileKind::Build;
    }
    match ext.as_str() {
        "c" | "cc" | "cpp" | "cxx" | "c++" | "C" => FileKind::Source,
        "h" | "hh" | "hpp" | "hxx" | "h++" | "inc" | "def" => FileKind::Header,
        "s" | "S" | "sx" | "asm" => FileKind::Assembly,
        _ => FileKind::Other,
    }
}

/// One file the diff touches.
#[derive(Clone, Debug)]
pub struct Touched {
    /// Path relative to the source tree.
    pub rel: PathBuf,
    /// Absolute path in the source tree (may not exist for a file the diff creates).
    pub path: PathBuf,
    /// The patched contents, in the work directory.
    pub patched: PathBuf,
    /// True when the diff creates the file.
    pub created: bool,
    /// True when the diff deletes the file.
    pub deleted: bool,
    pub kind: FileKind,
}

/// Paths named by `---`/`+++` header pairs, with `/dev/null` kept as is, for every file of the
/// diff. Hunks are followed by their line counts, so a removed line that reads `-- x` (shown as
/// `--- x`) is not taken for a header; `diff --git`, `index` and other extended header lines
/// are skipped, like text before and between files.
fn diff_paths(diff: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut old: Option<String> = None;
    // Lines of the current hunk still to come: (old side, new side).
    let mut left = (0usize, 0usize);
    for line in diff.lines() {
        if left != (0, 0) {
            let counted = match line.as_bytes().first() {
                Some(b'-') => {
                    left.0 = left.0.saturating_sub(1);
                    true
                }
                Some(b'+') => {
                    left.1 = left.1.saturating_sub(1);
                    true
                }
                // Context; an empty line is context whose leading space was lost (e-mail).
                Some(b' ') | None => {
                    left = (left.0.saturating_sub(1), left.1.saturating_sub(1));
                    true
                }
                Some(b'\\') => true,
                _ => false,
            };
            if counted {
                continue;
            }
            left = (0, 0);
        }
        let pending = old.take();
        if let Some(rest) = header_rest(line, "---") {
            old = Some(header_path(rest));
        } else if let Some(rest) = header_rest(line, "+++") {
            if let Some(o) = pending {
                out.push((o, header_path(rest)));
            }
        } else if let Some(counts) = hunk_counts(line) {
            left = counts;
        }
    }
    out
}

/// What follows `---`/`+++` and at least one space or tab.
fn header_rest<'l>(line: &'l str, mark: &str) -> Option<&'l str> {
    let rest = line.strip_prefix(mark)?;
    rest.starts_with([' ', '\t']).then(|| rest.trim_start())
}

/// `(old, new)` line counts of a hunk header `@@ -l[,n] +l[,n] @@`.
fn hunk_counts(line: &str) -> Option<(usize, usize)> {
    let mut words = line.strip_prefix("@@ ")?.split(' ');
    let count = |w: Option<&str>, sign: char| -> Option<usize> {
        let range = w?.strip_prefix(sign)?;
        match range.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => range.parse::<usize>().ok().map(|_| 1),
        }
    };
    Some((count(words.next(), '-')?, count(words.next(), '+')?))
}

/// The path of a `---`/`+++` header line: quoted (git's form for unusual names), or ended by
/// a tab, or by whitespace followed by a timestamp (`2024-01-31 10:00:00 +0100` or
/// `Wed Jan 31 10:00:00 2024`), or the whole rest of the line.
fn header_path(rest: &str) -> String {
    if let Some(q) = rest.strip_prefix('"') {
        if let Some(end) = q.find('"') {
            return q[..end].to_string();
        }
    }
    let p = rest.split('\t').next().unwrap_or(rest);
    let mut end = p.len();
    for (i, _) in p.match_indices([' ', '\t']) {
        if is_timestamp(p[i..].trim_start()) {
            end = i;
            break;
        }
    }
    p[..end].trim_end().to_string()
}

fn is_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let iso = digits(0..4) && b.get(4) == Some(&b'-') && digits(5..7) && b.get(7) == Some(&b'-');
    let ctime = ["Mon ", "Tue ", "Wed ", "Thu ", "Fri ", "Sat ", "Sun "]
        .iter()
        .any(|d| t.starts_with(d));
    iso || ctime
}

fn strip(p: &str, n: usize) -> Option<PathBuf> {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    (parts.len() > n).then(|| parts[n..].iter().collect())
}

/// The `-p` level under which the diff's paths exist in `source` (1 for git-style `a/` and
/// `b/` prefixes, 0 for plain paths). Both pipelines place files this way; when no level fits
/// (a tree missing the files), 1.
fn strip_level(source: &Path, pairs: &[(String, String)]) -> usize {
    for n in [1, 0, 2, 3] {
        let ok = pairs.iter().all(|(o, nw)| {
            let p = if o == "/dev/null" { nw } else { o };
            if p == "/dev/null" {
                return true;
            }
            match strip(p, n) {
                Some(rel) => o == "/dev/null" || source.join(rel).exists(),
                None => false,
            }
        });
        if ok {
            return n;
        }
    }
    1
}

/// A file the diff names, placed in the source tree (not yet patched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffFile {
    /// Path relative to the source tree.
    pub rel: PathBuf,
    /// True when the diff creates the file.
    pub created: bool,
    /// True when the diff deletes the file.
    pub deleted: bool,
    pub kind: FileKind,
}

/// The files of a diff (none when it is not a unified diff), in order, placed in `source`:
/// the path-prefix level is the one under which the named files exist (1, 0, 2, 3 are tried
/// in that order; 1 when none fits). A file changed twice (concatenated diffs) is listed once.
pub struct PatchSet {
    /// The `-p` level for `patch(1)`.
    pub level: usize,
    pub files: Vec<DiffFile>,
}

impl PatchSet {
    pub fn parse(source: &Path, diff_text: &str) -> Result<PatchSet, BuildError> {
        let pairs = diff_paths(diff_text);
        let level = strip_level(source, &pairs);
        let mut files: Vec<DiffFile> = Vec::new();
        for (o, n) in &pairs {
            let created = o == "/dev/null";
            let deleted = n == "/dev/null";
            let name = if created { n } else { o };
            let rel =
                strip(name, level).ok_or_else(|| BuildError::Unplaceable { path: name.clone() })?;
            if rel
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(BuildError::OutsideTree {
                    path: rel.display().to_string(),
                });
            }
            // Several diffs concatenated may change one file twice: patch(1) applies them in
            // order to the same copy.
            if let Some(f) = files.iter_mut().find(|f| f.rel == rel) {
                f.deleted = deleted;
                continue;
            }
            files.push(DiffFile {
                kind: kind_of(&rel),
                rel,
                created,
                deleted,
            });
        }
        Ok(PatchSet { level, files })
    }
}

/// Applies `diff` to copies of the files it touches (under `work/patched`), leaving the
/// source tree untouched.
pub fn apply(source: &Path, diff_text: &str, work: &Path) -> Result<Vec<Touched>, BuildError> {
    let set = PatchSet::parse(source, diff_text)?;
    if set.files.is_empty() {
        return Err(BuildError::NoFiles);
    }
    set.apply(source, diff_text, work)
}

impl PatchSet {
    /// Copies the files to `work/patched` and runs `patch(1)` on the copies.
    pub fn apply(
        &self,
        source: &Path,
        diff_text: &str,
        work: &Path,
    ) -> Result<Vec<Touched>, BuildError> {
        std::fs::create_dir_all(work).map_err(|e| BuildError::io(work, e))?;
        let level = self.level;
        let diff_file = work.join("fix.patch");
        std::fs::write(&diff_file, diff_text).map_err(|e| BuildError::io(&diff_file, e))?;
        let root = work.join("patched");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| BuildError::io(&root, e))?;
        let mut touched = Vec::new();
        for f in &self.files {
            let (rel, created, deleted) = (f.rel.clone(), f.created, f.deleted);
            let path = source.join(&rel);
            let copy = root.join(&rel);
            if let Some(parent) = copy.parent() {
                std::fs::create_dir_all(parent).map_err(|e| BuildError::io(parent, e))?;
            }
            if !created {
                std::fs::copy(&path, &copy).map_err(|source| BuildError::MissingFile {
                    file: rel.display().to_string(),
                    source,
                })?;
            }
            touched.push(Touched {
                kind: f.kind,
                rel,
                path,
                patched: copy,
                created,
                deleted,
            });
        }
        let out = Command::new("patch")
            .arg(format!("-p{level}"))
            .args(["--batch", "--forward", "--no-backup-if-mismatch", "-r", "-"])
            .arg("-d")
            .arg(&root)
            .arg("-i")
            .arg(std::path::absolute(&diff_file).unwrap_or(diff_file))
            .output()
            .map_err(|source| BuildError::Spawn {
                command: "patch(1)".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(BuildError::DoesNotApply {
                tree: source.display().to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(touched)
    }
}

/// Structure, union and class definitions in C/C++ text: name → body with comments and
/// whitespace normalised away.
pub fn structs(text: &str) -> Vec<(String, String)> {
    let clean = strip_comments(text);
    let bytes = clean.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i;
        if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &clean[word_start..i];
            let prev_ok = word_start == 0 || !is_ident(bytes[word_start - 1]);
            if prev_ok && matches!(word, "struct" | "union" | "class") {
                // `struct NAME {` (a definition) as opposed to `struct NAME *p;`.
                let mut j = i;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                let name_start = j;
                while j < bytes.len() && is_ident(bytes[j]) {
                    j += 1;
                }
                let name = clean[name_start..j].to_string();
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < bytes.len() && bytes[j] == b'{' {
                    let mut depth = 0usize;
                    let body_start = j;
                    while j < bytes.len() {
                        match bytes[j] {
                            b'{' => depth += 1,
                            b'}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    let body = clean[body_start..j.min(clean.len())]
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    let name = if name.is_empty() {
                        format!("<anonymous {word} at offset {word_start}>")
                    } else {
                        format!("{word} {name}")
                    };
                    out.push((name, body));
                    // Nested definitions are part of the outer body.
                    i = j;
                }
            }
            continue;
        }
        i += 1;
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '/' && chars.peek() == Some(&'*') {
            chars.next();
            let mut prev = ' ';
            for d in chars.by_ref() {
                if prev == '*' && d == '/' {
                    break;
                }
                prev = d;
            }
            out.push(' ');
        } else if c == '/' && chars.peek() == Some(&'/') {
            for d in chars.by_ref() {
                if d == '\n' {
                    out.push('\n');
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Named structures whose definition differs between the two texts (changed or removed):
/// running code holds data laid out the old way, so such changes cannot be live-patched.
pub fn changed_structs(orig: &str, patched: &str) -> Vec<String> {
    let a = structs(orig);
    let b = structs(patched);
    let mut out = Vec::new();
    for (name, body) in &a {
        if name.starts_with('<') {
            continue;
        }
        match b.iter().find(|(n, _)| n == name) {
            Some((_, nb)) if nb == body => {}
            Some(_) => out.push(format!("{name} changes its definition")),
            None => out.push(format!("{name} is removed")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_levels() {
        let d = "diff --git a/src/x.c b/src/x.c\n--- a/src/x.c\t2024-01-01\n+++ b/src/x.c\n@@ -1 +1 @@\n";
        assert_eq!(
            diff_paths(d),
            vec![("a/src/x.c".to_string(), "b/src/x.c".to_string())]
        );
        assert_eq!(strip("a/src/x.c", 1), Some(PathBuf::from("src/x.c")));
    }

    fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("suture-patchset-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (f, text) in files {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    fn rels(set: &PatchSet) -> Vec<String> {
        set.files
            .iter()
            .map(|f| f.rel.display().to_string())
            .collect()
    }

    /// Regression: the kernel pipeline used to strip the first component of every path
    /// (`-p1`) while the userspace one found the level under which the files exist. Both now
    /// use the latter: plain paths are not cut, `a/`/`b/` prefixes are.
    #[test]
    fn prefix_stripping_is_the_same_for_both_pipelines() {
        let src = tree("levels", &[("fs/proc/cmdline.c", "a\n")]);
        let plain = "--- fs/proc/cmdline.c\n+++ fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n";
        let set = PatchSet::parse(&src, plain).unwrap();
        assert_eq!(
            (set.level, rels(&set)),
            (0, vec!["fs/proc/cmdline.c".into()])
        );
        let git = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n";
        let set = PatchSet::parse(&src, git).unwrap();
        assert_eq!(
            (set.level, rels(&set)),
            (1, vec!["fs/proc/cmdline.c".into()])
        );
        // Two levels of prefix (a diff made one directory above the tree).
        let deep = "--- linux/x/fs/proc/cmdline.c\n+++ linux/y/fs/proc/cmdline.c\n@@ -1 +1 @@\n";
        let set = PatchSet::parse(&src, deep).unwrap();
        assert_eq!(
            (set.level, rels(&set)),
            (2, vec!["fs/proc/cmdline.c".into()])
        );
        // Files the tree lacks: placed as `-p1`, so the caller can name them in its refusal.
        let missing = "--- a/include/x.h\n+++ b/include/x.h\n@@ -1 +1 @@\n";
        let set = PatchSet::parse(&src, missing).unwrap();
        assert_eq!((set.level, rels(&set)), (1, vec!["include/x.h".into()]));
        // Both pipelines patch copies with that level; the tree is untouched.
        let work = src.with_extension("work");
        let touched = PatchSet::parse(&src, plain)
            .unwrap()
            .apply(&src, plain, &work)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&touched[0].patched).unwrap(), "b\n");
        assert_eq!(
            std::fs::read_to_string(src.join("fs/proc/cmdline.c")).unwrap(),
            "a\n"
        );
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&work);
    }

    #[test]
    fn created_deleted_and_repeated_files() {
        let src = tree("kinds", &[("a.c", "x\n"), ("old.c", "y\n")]);
        let d = "--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-x\n+z\n\
                 --- /dev/null\n+++ b/new.c\n@@ -0,0 +1 @@\n+n\n\
                 --- a/old.c\n+++ /dev/null\n@@ -1 +0,0 @@\n-y\n\
                 --- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-z\n+w\n";
        let set = PatchSet::parse(&src, d).unwrap();
        assert_eq!(set.level, 1);
        assert_eq!(rels(&set), vec!["a.c", "new.c", "old.c"]);
        assert!(set.files[1].created && !set.files[1].deleted);
        assert!(set.files[2].deleted && !set.files[2].created);
        let work = src.with_extension("work");
        let touched = set.apply(&src, d, &work).unwrap();
        assert_eq!(std::fs::read_to_string(&touched[0].patched).unwrap(), "w\n");
        assert!(PatchSet::parse(&src, "no diff here\n")
            .unwrap()
            .files
            .is_empty());
        assert!(apply(&src, "no diff here\n", &work).is_err());
        let bad = "--- a/../etc/x\n+++ b/../etc/x\n";
        assert!(PatchSet::parse(&src, bad).is_err());
        let _ = std::fs::remove_dir_all(&src);
        let _ = std::fs::remove_dir_all(&work);
    }

    /// Headers as diff tools write them: tab or spaces before a timestamp, ctime stamps, extra
    /// spaces after the mark, git's extended headers and quoted names, several files.
    #[test]
    fn headers_as_they_come() {
        let pair = |o: &str, n: &str| (o.to_string(), n.to_string());
        let d = "--- a/x.c  2024-01-31 10:00:00.000000000 +0100\n\
                 +++ b/x.c  2024-01-31 10:00:01.000000000 +0100\n@@ -1 +1 @@\n-a\n+b\n";
        assert_eq!(diff_paths(d), vec![pair("a/x.c", "b/x.c")]);
        let d = "--- old/x.c\tWed Jan 31 10:00:00 2024\n+++ new/x.c Wed Jan 31 10:00:00 2024\n";
        assert_eq!(diff_paths(d), vec![pair("old/x.c", "new/x.c")]);
        let d = "---  a/x.c\n+++\tb/x.c\n@@ -1 +1 @@\n-a\n+b\n";
        assert_eq!(diff_paths(d), vec![pair("a/x.c", "b/x.c")]);
        let d = "From 1234 Mon Sep 17 00:00:00 2001\nSubject: fix\n---\n x.c | 2 +-\n\n\
                 diff --git a/x.c b/x.c\nindex 1..2 100644\n--- a/x.c\n+++ b/x.c\n\
                 @@ -1,3 +1,3 @@\n a\n--- removed line of dashes\n+++ added one\n c\n\
                 diff --git a/new file.c b/new file.c\nnew file mode 100644\n\
                 --- /dev/null\n+++ \"b/new file.c\"\n@@ -0,0 +1 @@\n+x\n\
                 diff --git a/y.c b/y.c\ndeleted file mode 100644\n--- a/y.c\n+++ /dev/null\n\
                 @@ -1,2 +0,0 @@\n-y\n-\n-- \n2.39.2\n";
        assert_eq!(
            diff_paths(d),
            vec![
                pair("a/x.c", "b/x.c"),
                pair("/dev/null", "b/new file.c"),
                pair("a/y.c", "/dev/null")
            ]
        );
        assert_eq!(hunk_counts("@@ -3 +3,0 @@ fn"), Some((1, 0)));
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(Path::new("src/Makefile.am")), FileKind::Build);
        assert_eq!(kind_of(Path::new("CMakeLists.txt")), FileKind::Build);
        assert_eq!(kind_of(Path::new("a/b.S")), FileKind::Assembly);
        assert_eq!(kind_of(Path::new("a/b.h")), FileKind::Header);
        assert_eq!(kind_of(Path::new("a/b.c")), FileKind::Source);
        assert_eq!(kind_of(Path::new("README")), FileKind::Other);
    }

    #[test]
    fn struct_changes_are_found_and_comments_ignored() {
        let a = "struct conn { int fd; /* the socket */ char *buf; };\nstruct conn *c;\n";
        let b = "struct conn { int fd; // socket\n char *buf; };\nstruct conn *c; int x;\n";
        assert!(changed_structs(a, b).is_empty());
        let c = "struct conn { int fd; long len; char *buf; };\n";
        assert_eq!(
            changed_structs(a, c),
            vec!["struct conn changes its definition".to_string()]
        );
        assert_eq!(
            changed_structs("typedef union u { int a; } u_t;", ""),
            vec!["union u is removed".to_string()]
        );
    }
}
