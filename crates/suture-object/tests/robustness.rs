//! Robustness of the object layer: malformed or hostile input must give an `Error`, never a
//! panic, a hang or a runaway allocation; and facts about real objects the differ must not
//! depend on (relocation order, `R_X86_64_NONE` entries).
//!
//! Fixtures are compiled at test time with gcc into `CARGO_TARGET_TMPDIR`. Corrupted variants
//! are produced deterministically (field edits at every structural offset, truncations, and a
//! fixed-seed xorshift PRNG for random flips); each is parsed, diffed and emitted under
//! `catch_unwind`, and any panic or slow run is reported with the mutation that caused it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use suture_object::{analyze, emit::emit, Error, Object, Status};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A unit with what the differ resolves: a jump table, a `.cold` part, strings, a mergeable
/// constant, read-only and writable data, `.bss`, TLS, external calls.
const RICH_ORIG: &str = r#"
#include <stdio.h>
extern void helper(int);
static int counter;
int table[16] = {1, 2, 3};
const char *names[] = {"alpha", "beta", "gamma"};
static const double weights[4] = {1.5, 2.5, 3.5, 4.5};
__thread int tls_count;

int dispatch(int op, int x)
{
	switch (op) {
	case 0: return x + 1;
	case 1: return x * 7;
	case 2: return x - 3;
	case 3: return x << 2;
	case 4: return x ^ 0x55;
	case 5: return x / 3;
	case 6: return -x;
	case 7: return x % 11;
	default: return 0;
	}
}

__attribute__((noinline)) static int scale(int x)
{
	return x * 3 + counter;
}

int compute(int x)
{
	counter++;
	tls_count++;
	if (__builtin_expect(x < 0, 0)) {
		fprintf(stderr, "negative input %d\n", x);
		helper(x);
		return -1;
	}
	return scale(x) + table[x & 15];
}

double mix(double v)
{
	return v * weights[(int)v & 3] + 0.75;
}

const char *name_of(int i)
{
	return i >= 0 && i < 3 ? names[i] : "unknown";
}
"#;

/// `RICH_ORIG` with a changed message in `compute`, a changed constant in `mix`, and a new
/// function using a new `.bss` object.
fn rich_patched() -> String {
    RICH_ORIG
        .replace("negative input %d", "negative input: %d")
        .replace("+ 0.75", "+ 0.875")
        + "\nchar newbuf[64];\nchar *new_buffer(int i) { return &newbuf[i & 63]; }\n"
}

const CFLAGS: &[&str] = &["-O2", "-g", "-ffunction-sections", "-fdata-sections"];

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("robustness")
}

/// Compiles (or links, with `-c` left out of `flags`) `src` as `<tag>/unit.c`; every side of
/// a pair uses the same file name so the objects name the same source file.
fn build(tag: &str, src: &str, flags: &[&str], output: &str) -> Vec<u8> {
    build_file(tag, "unit.c", src, flags, output)
}

/// Where fixture `tag` is built. One directory per test process: nextest runs tests in
/// parallel processes, which must not compile the same fixture into the same files.
fn fixture_dir(tag: &str) -> PathBuf {
    work_dir().join(format!("{tag}.{}", std::process::id()))
}

fn build_file(tag: &str, file: &str, src: &str, flags: &[&str], output: &str) -> Vec<u8> {
    let dir = fixture_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), src).unwrap();
    let out = Command::new("gcc")
        .args(flags)
        .args([file, "-o", output])
        .current_dir(&dir)
        .output()
        .expect("gcc must be installed");
    assert!(
        out.status.success(),
        "gcc {flags:?} failed for {tag}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join(output)).unwrap()
}

/// Compiles `src` as `unit.c` (the same file name for both sides of a pair) and returns the
/// object's path, cached by the kit (by source, flags and compiler version; safe for parallel
/// test processes).
fn compiled(tag: &str, src: &str, flags: &[&str]) -> PathBuf {
    suture_testkit::cc::compile("gcc", flags, "unit.c", src, &work_dir().join("cache"))
        .unwrap_or_else(|e| panic!("{tag}: {e}"))
}

fn compile(tag: &str, src: &str, flags: &[&str]) -> Vec<u8> {
    std::fs::read(compiled(tag, src, flags)).unwrap()
}

struct Pair {
    orig: Vec<u8>,
    patched: Vec<u8>,
}

fn rich() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| Pair {
        orig: compile("rich/orig", RICH_ORIG, CFLAGS),
        patched: compile("rich/patched", &rich_patched(), CFLAGS),
    })
}

// ---------------------------------------------------------------------------------------------
// A minimal ELF64 little-endian layout reader, independent of the crate under test.

fn get(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = 0u64;
    for i in 0..width {
        v |= u64::from(b[at + i]) << (8 * i);
    }
    v
}

fn put(b: &mut [u8], at: usize, width: usize, v: u64) {
    for i in 0..width {
        b[at + i] = (v >> (8 * i)) as u8;
    }
}

const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
const SHDR: usize = 64;
const SYM: usize = 24;
const RELA: usize = 24;

#[derive(Clone, Debug)]
struct Shdr {
    /// Offset of the header itself in the file.
    at: usize,
    name: String,
    sh_type: u32,
    offset: usize,
    size: usize,
    link: u32,
    info: u32,
}

struct Layout {
    shoff: usize,
    sections: Vec<Shdr>,
}

impl Layout {
    fn of(b: &[u8]) -> Layout {
        let shoff = get(b, 0x28, 8) as usize;
        let shnum = get(b, 0x3c, 2) as usize;
        let shstrndx = get(b, 0x3e, 2) as usize;
        let mut sections: Vec<Shdr> = (0..shnum)
            .map(|i| {
                let at = shoff + i * SHDR;
                Shdr {
                    at,
                    name: String::new(),
                    sh_type: get(b, at + 4, 4) as u32,
                    offset: get(b, at + 24, 8) as usize,
                    size: get(b, at + 32, 8) as usize,
                    link: get(b, at + 40, 4) as u32,
                    info: get(b, at + 44, 4) as u32,
                }
            })
            .collect();
        let strtab = sections[shstrndx].offset;
        for s in &mut sections {
            let start = strtab + get(b, s.at, 4) as usize;
            let end = start + b[start..].iter().position(|&c| c == 0).unwrap();
            s.name = String::from_utf8_lossy(&b[start..end]).into_owned();
        }
        Layout { shoff, sections }
    }
    fn section(&self, name: &str) -> &Shdr {
        self.sections
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("fixture has no section {name}"))
    }
    fn symtab(&self) -> &Shdr {
        self.sections
            .iter()
            .find(|s| s.sh_type == SHT_SYMTAB)
            .unwrap()
    }
    /// File offset of the symbol called `name`.
    fn symbol(&self, b: &[u8], name: &str) -> usize {
        let symtab = self.symtab();
        let strtab = self.sections[symtab.link as usize].offset;
        (0..symtab.size / SYM)
            .map(|i| symtab.offset + i * SYM)
            .find(|&at| {
                let start = strtab + get(b, at, 4) as usize;
                b[start..].starts_with(name.as_bytes()) && b[start + name.len()] == 0
            })
            .unwrap_or_else(|| panic!("fixture has no symbol {name}"))
    }
    fn relas(&self) -> impl Iterator<Item = &Shdr> {
        self.sections.iter().filter(|s| s.sh_type == SHT_RELA)
    }
}

// ---------------------------------------------------------------------------------------------
// The corruption harness

/// Deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values worth writing into a field of `width` bytes that held `v` in a file of `len` bytes.
fn interesting(v: u64, width: usize, len: usize) -> Vec<u64> {
    let max = if width == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    let top = 1u64 << (8 * width - 1);
    let mut out = vec![
        0,
        1,
        3,
        v.wrapping_add(1) & max,
        v ^ top,
        max,
        top - 1,
        top,
        0xffff_ffff & max,
        len as u64 & max,
    ];
    out.retain(|&x| x != v);
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Default)]
struct Tally {
    variants: usize,
    rejected: usize,
    diffed: usize,
    emitted: usize,
}

/// Runs variants of one subject object through parse, analyze and emit.
struct Harness<'a> {
    /// The pristine original every variant is also diffed against.
    orig: Object<'a>,
    subject: &'a [u8],
    layout: Layout,
    tally: Tally,
    failures: Vec<String>,
}

/// A hang guard, not a performance assertion: one variant takes about a millisecond, so
/// anything this slow means unbounded work on hostile input (performance is measured in
/// benchmarks, see docs/benchmarks.md).
const SLOW: Duration = Duration::from_secs(30);

impl<'a> Harness<'a> {
    fn new(orig: &'a [u8], subject: &'a [u8]) -> Self {
        Harness {
            orig: Object::parse(orig).expect("the fixture parses"),
            subject,
            layout: Layout::of(subject),
            tally: Tally::default(),
            failures: Vec::new(),
        }
    }

    /// Checks the subject with `width` bytes at `at` set to each interesting value.
    fn field(&mut self, what: &str, at: usize, width: usize) {
        if at + width > self.subject.len() {
            return;
        }
        let v = get(self.subject, at, width);
        for x in interesting(v, width, self.subject.len()) {
            let mut b = self.subject.to_vec();
            put(&mut b, at, width, x);
            self.check(&format!("{what} (at {at:#x}) {v:#x} -> {x:#x}"), &b);
        }
    }

    fn check(&mut self, what: &str, variant: &[u8]) {
        self.tally.variants += 1;
        let orig = &self.orig;
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| exercise(orig, variant)));
        let took = started.elapsed();
        match result {
            Ok(Outcome::Rejected(e)) => {
                self.tally.rejected += 1;
                if e.to_string().is_empty() {
                    self.failures.push(format!("{what}: error with no message"));
                }
            }
            Ok(Outcome::Accepted { diffed, emitted }) => {
                self.tally.diffed += diffed;
                self.tally.emitted += emitted;
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.failures.push(format!("{what}: PANIC {msg}"));
            }
        }
        if took > SLOW {
            self.failures.push(format!("{what}: took {took:?}"));
        }
    }

    fn finish(self, name: &str) -> Tally {
        let t = self.tally;
        eprintln!(
            "{name}: {} variants, {} rejected, {} diffs, {} patch objects emitted",
            t.variants, t.rejected, t.diffed, t.emitted
        );
        assert!(
            self.failures.is_empty(),
            "{name}: {} of {} variants failed:\n{}",
            self.failures.len(),
            t.variants,
            self.failures
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        t
    }
}

enum Outcome {
    Rejected(Error),
    Accepted { diffed: usize, emitted: usize },
}

/// Parses a variant; when it parses, diffs it against the original and against itself and
/// emits a patch object for every diff (the emitter must cope whatever the verdict).
fn exercise(orig: &Object, variant: &[u8]) -> Outcome {
    let v = match Object::parse(variant) {
        Ok(v) => v,
        Err(e) => return Outcome::Rejected(e),
    };
    let (mut diffed, mut emitted) = (0, 0);
    for (a, b) in [(orig, &v), (&v, &v)] {
        if let Ok(d) = analyze(a, b) {
            diffed += 1;
            serde_json::to_string(&d.report).expect("reports serialise");
            if emit(&d).is_ok() {
                emitted += 1;
            }
        }
    }
    Outcome::Accepted { diffed, emitted }
}

/// Every header, section-header, symbol and relocation field, set to each interesting value.
fn corrupt_fields(h: &mut Harness) {
    let header: &[(&str, usize, usize)] = &[
        ("e_type", 0x10, 2),
        ("e_machine", 0x12, 2),
        ("e_version", 0x14, 4),
        ("e_phoff", 0x20, 8),
        ("e_shoff", 0x28, 8),
        ("e_ehsize", 0x34, 2),
        ("e_phentsize", 0x36, 2),
        ("e_phnum", 0x38, 2),
        ("e_shentsize", 0x3a, 2),
        ("e_shnum", 0x3c, 2),
        ("e_shstrndx", 0x3e, 2),
    ];
    for &(what, at, width) in header {
        h.field(what, at, width);
    }
    for i in 0..16 {
        h.field(&format!("e_ident[{i}]"), i, 1);
    }

    let shdr: &[(&str, usize, usize)] = &[
        ("sh_name", 0, 4),
        ("sh_type", 4, 4),
        ("sh_flags", 8, 8),
        ("sh_offset", 24, 8),
        ("sh_size", 32, 8),
        ("sh_link", 40, 4),
        ("sh_info", 44, 4),
        ("sh_addralign", 48, 8),
        ("sh_entsize", 56, 8),
    ];
    // Every field of the headers the reader relies on; where a debug section lies and what it
    // is, for the others.
    let sections = h.layout.sections.clone();
    for (i, s) in sections.iter().enumerate() {
        let debug = s.name.starts_with(".debug") || s.name.starts_with(".rela.debug");
        for &(what, off, width) in shdr {
            if debug && !matches!(what, "sh_type" | "sh_offset" | "sh_size" | "sh_info") {
                continue;
            }
            h.field(&format!("section {i} {} {what}", s.name), s.at + off, width);
        }
    }

    let symtab = h.layout.symtab().clone();
    let sym: &[(&str, usize, usize)] = &[
        ("st_name", 0, 4),
        ("st_info", 4, 1),
        ("st_other", 5, 1),
        ("st_shndx", 6, 2),
        ("st_value", 8, 8),
        ("st_size", 16, 8),
    ];
    for i in 0..symtab.size / SYM {
        for &(what, off, width) in sym {
            h.field(
                &format!("symbol {i} {what}"),
                symtab.offset + i * SYM + off,
                width,
            );
        }
    }

    // Relocations of code and data (all of them), and the first few of each debug section.
    let relas: Vec<Shdr> = h.layout.relas().cloned().collect();
    for r in &relas {
        let count = r.size / RELA;
        let limit = if r.name.starts_with(".rela.debug") {
            1
        } else {
            count
        };
        for j in 0..count.min(limit) {
            let at = r.offset + j * RELA;
            h.field(&format!("{} entry {j} r_offset", r.name), at, 8);
            h.field(&format!("{} entry {j} r_info.type", r.name), at + 8, 4);
            h.field(&format!("{} entry {j} r_info.sym", r.name), at + 12, 4);
            h.field(&format!("{} entry {j} r_addend", r.name), at + 16, 8);
        }
    }
}

/// Plausible but wrong values: other section types and flags, relocations applied to other
/// sections, symbols moved to other sections.
fn corrupt_semantics(h: &mut Harness) {
    let sections = h.layout.sections.clone();
    let set = |h: &mut Harness, what: String, at: usize, width: usize, v: u64| {
        let mut b = h.subject.to_vec();
        put(&mut b, at, width, v);
        h.check(&what, &b);
    };
    // NULL PROGBITS SYMTAB STRTAB RELA NOTE NOBITS REL DYNSYM INIT_ARRAY GROUP SYMTAB_SHNDX
    const TYPES: [u64; 12] = [0, 1, 2, 3, 4, 7, 8, 9, 11, 14, 17, 18];
    // WRITE ALLOC EXECINSTR MERGE STRINGS GROUP TLS
    const FLAGS: [u64; 7] = [0x1, 0x2, 0x4, 0x10, 0x20, 0x200, 0x400];
    for (i, s) in sections.iter().enumerate() {
        for t in TYPES.into_iter().filter(|&t| t != u64::from(s.sh_type)) {
            set(
                h,
                format!("section {i} {} sh_type -> {t}", s.name),
                s.at + 4,
                4,
                t,
            );
        }
        let flags = get(h.subject, s.at + 8, 8);
        for f in FLAGS {
            let what = format!("section {i} {} sh_flags ^ {f:#x}", s.name);
            set(h, what, s.at + 8, 8, flags ^ f);
        }
    }
    let relas: Vec<Shdr> = h.layout.relas().cloned().collect();
    for r in relas.iter().filter(|r| !r.name.starts_with(".rela.debug")) {
        for t in (0..sections.len()).filter(|&t| t != r.info as usize) {
            let what = format!("{} sh_info {} -> {t}", r.name, r.info);
            set(h, what, r.at + 44, 4, t as u64);
        }
    }
    let symtab = h.layout.symtab().clone();
    for i in 0..symtab.size / SYM {
        let at = symtab.offset + i * SYM;
        let kind = h.subject[at + 4] & 0xf;
        // Functions, objects and TLS variables, moved to every other section.
        if !matches!(kind, 1 | 2 | 6) || get(h.subject, at + 6, 2) == 0 {
            continue;
        }
        for t in 1..sections.len() {
            set(
                h,
                format!("symbol {i} st_shndx -> {t}"),
                at + 6,
                2,
                t as u64,
            );
        }
    }
}

const HEADER_CUTS: [usize; 17] = [
    1, 4, 5, 6, 15, 16, 17, 24, 32, 40, 48, 52, 58, 62, 63, 64, 65,
];

/// Truncations at every 1/64th of the file and at every structural boundary.
fn corrupt_truncations(h: &mut Harness) {
    let len = h.subject.len();
    let mut cuts: Vec<usize> = (0..64).map(|k| len * k / 64).collect();
    // Inside e_ident, at its end, at the header fields, at the end of the header.
    cuts.extend(HEADER_CUTS);
    cuts.push(len - 1);
    let shoff = h.layout.shoff;
    for (i, s) in h.layout.sections.iter().enumerate() {
        cuts.extend([
            shoff + i * SHDR,
            shoff + i * SHDR + 32,
            shoff + (i + 1) * SHDR - 1,
        ]);
        if s.sh_type != SHT_NOBITS && s.size > 0 {
            cuts.extend([
                s.offset,
                s.offset + 1,
                s.offset + s.size / 2,
                s.offset + s.size - 1,
            ]);
        }
    }
    cuts.retain(|&c| c < len);
    cuts.sort_unstable();
    cuts.dedup();
    for c in cuts {
        let b = h.subject[..c].to_vec();
        h.check(&format!("truncated to {c} of {len} bytes"), &b);
    }
}

/// Random single- and multi-byte changes (fixed seed), mostly in the structural parts of the
/// file (headers, symbol table, relocations, code), some anywhere.
fn corrupt_random(h: &mut Harness, seed: u64, count: usize) {
    let mut rng = Rng(seed);
    let len = h.subject.len();
    let mut regions: Vec<(usize, usize)> = vec![(0, 64)];
    regions.push((h.layout.shoff, h.layout.sections.len() * SHDR));
    for s in &h.layout.sections {
        let structural = matches!(s.sh_type, SHT_SYMTAB | SHT_RELA)
            || s.name.starts_with(".text")
            || s.name.starts_with(".eh_frame")
            || s.name.ends_with("strtab");
        if structural && s.size > 0 && !s.name.contains("debug") {
            regions.push((s.offset, s.size));
        }
    }
    for n in 0..count {
        let mut b = h.subject.to_vec();
        let flips = 1 + rng.below(4);
        let mut what = Vec::new();
        for _ in 0..flips {
            let at = if rng.below(8) == 0 {
                rng.below(len)
            } else {
                let (start, size) = regions[rng.below(regions.len())];
                (start + rng.below(size)).min(len - 1)
            };
            let value = match rng.below(4) {
                0 => b[at] ^ (1 << rng.below(8)),
                1 => 0xff,
                2 => 0,
                _ => rng.next() as u8,
            };
            what.push(format!("[{at:#x}] {:#04x}->{value:#04x}", b[at]));
            b[at] = value;
        }
        h.check(
            &format!("random #{n} (seed {seed:#x}): {}", what.join(" ")),
            &b,
        );
    }
}

fn corruption_run(name: &str, subject: fn(&Pair) -> &[u8]) -> Tally {
    let pair = rich();
    let mut h = Harness::new(&pair.orig, subject(pair));
    corrupt_truncations(&mut h);
    corrupt_fields(&mut h);
    corrupt_semantics(&mut h);
    corrupt_random(&mut h, 0x5eed_0001 ^ name.len() as u64, 1500);
    h.finish(name)
}

#[test]
fn corrupted_original_never_panics() {
    let t = corruption_run("corrupted original", |p| &p.orig);
    assert!(t.variants > 4000 && t.rejected > 0 && t.diffed > 0);
}

#[test]
fn corrupted_patched_never_panics() {
    let t = corruption_run("corrupted patched", |p| &p.patched);
    // Diffing the pristine original against variants of the patched build emits patches.
    assert!(t.variants > 4000 && t.rejected > 0 && t.emitted > 0);
}

// ---------------------------------------------------------------------------------------------
// Specific corruptions and the errors they must give

fn parse_err(b: &[u8]) -> Error {
    match Object::parse(b) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn assert_malformed(b: &[u8], needle: &str) {
    match parse_err(b) {
        Error::Malformed(m) if m.contains(needle) => {}
        e => panic!("expected a malformed-object error mentioning {needle:?}, got {e:?}"),
    }
}

#[test]
fn specific_corruptions_are_malformed() {
    let orig = &rich().orig;
    let l = Layout::of(orig);
    let edit = |at: usize, width: usize, v: u64| {
        let mut b = orig.clone();
        put(&mut b, at, width, v);
        b
    };

    // Truncated inside the ELF header (after e_ident).
    assert_malformed(&orig[..40], "header");
    // Section header table past the end, or with an absurd number of entries.
    assert_malformed(&edit(0x28, 8, orig.len() as u64), "");
    assert_malformed(&edit(0x28, 8, u64::MAX - 7), "");
    assert_malformed(&edit(0x3c, 2, 0xffff), "");
    // Truncated in the middle of the section header table.
    assert_malformed(&orig[..l.shoff + 3 * SHDR + 10], "");
    // Section contents past the end of the file.
    let text = l.section(".text.compute");
    assert_malformed(&edit(text.at + 24, 8, orig.len() as u64), "section");
    assert_malformed(&edit(text.at + 32, 8, 0xffff_ffff), "section");

    // A relocation pointing past the end of its section.
    let rela = l.section(".rela.text.compute");
    let target_size = l.sections[rela.info as usize].size as u64;
    let past = edit(rela.offset, 8, target_size);
    assert_malformed(&past, "outside the section");
    assert!(parse_err(&past)
        .to_string()
        .starts_with("malformed object: "));
    assert_malformed(&edit(rela.offset, 8, u64::MAX - 1), "outside the section");
    // ... naming a symbol that does not exist.
    assert_malformed(&edit(rela.offset + 12, 4, 0xffff_ffff), "names symbol");
    // ... or applying to a section that does not exist.
    assert_malformed(&edit(rela.at + 44, 4, 0xffff_ffff), "applies to section");
    assert_malformed(&edit(rela.at + 44, 4, 0), "applies to section");
    // A relocation section whose size is not a multiple of its entries.
    assert_malformed(
        &edit(rela.at + 32, 8, rela.size as u64 - 1),
        "relocation section",
    );

    // Symbols outside their section, or in a section that does not exist.
    let compute = l.symbol(orig, "compute");
    assert_malformed(&edit(compute + 8, 8, 0x10_0000), "lies outside section");
    assert_malformed(&edit(compute + 16, 8, u64::MAX), "lies outside section");
    assert_malformed(
        &edit(compute + 6, 2, l.sections.len() as u64 + 3),
        "section",
    );
    // A symbol table linked to a string table that does not exist.
    assert_malformed(&edit(l.symtab().at + 40, 4, 0xffff), "");
    // An alignment that is not a power of two.
    assert_malformed(&edit(text.at + 48, 8, 24), "power of two");
}

// ---------------------------------------------------------------------------------------------
// Regression tests for problems found by the fuzzer and the corruption runs

/// The changed function's section `.text.mix` of the patched build, with `edit` applied.
fn patched_with(edit: impl Fn(&Layout, &mut Vec<u8>)) -> Vec<u8> {
    let mut b = rich().patched.clone();
    let l = Layout::of(&b);
    edit(&l, &mut b);
    b
}

fn diff_and_emit(patched: &[u8]) -> (Status, suture_object::Result<Vec<u8>>) {
    let orig = Object::parse(&rich().orig).unwrap();
    let patched = Object::parse(patched).unwrap();
    let d = analyze(&orig, &patched).unwrap();
    (d.report.status, emit(&d))
}

/// Fuzzer finding: a section alignment that is not a power of two reached `object`'s writer,
/// which asserts on it (debug builds) or writes a nonsensical `sh_addralign`.
#[test]
fn non_power_of_two_alignment_is_malformed() {
    for align in [3u64, 24, 0x8000_0001, u64::MAX] {
        let b = patched_with(|l, b| put(b, l.section(".rodata.dispatch").at + 48, 8, align));
        assert_malformed(&b, "not a power of two");
    }
}

/// A huge (power-of-two) alignment on an included section made the writer pad the patch object
/// to that alignment: a 1 TiB allocation (and an abort) from a 13 KiB input.
#[test]
fn emit_refuses_huge_section_alignment() {
    let b = patched_with(|l, b| put(b, l.section(".text.mix").at + 48, 8, 1 << 40));
    let (status, emitted) = diff_and_emit(&b);
    assert_eq!(status, Status::Patchable);
    match emitted {
        Err(Error::Unsupported(m)) => assert!(m.contains("alignment"), "{m}"),
        other => panic!(
            "expected an unsupported-alignment error, got {:?}",
            other.err()
        ),
    }
    // Up to a page, alignments are kept; beyond, even a huge page is refused (the writer pads
    // the file to each section's alignment).
    for (align, kept) in [(64u64, true), (4096, true), (8192, false), (1 << 21, false)] {
        let b = patched_with(|l, b| put(b, l.section(".text.mix").at + 48, 8, align));
        match diff_and_emit(&b).1 {
            Ok(bytes) if kept => {
                let out = Object::parse(&bytes).unwrap();
                let mix = out.sections.iter().find(|s| s.name == ".text.mix").unwrap();
                assert_eq!(mix.align, align);
            }
            Err(Error::Unsupported(_)) if !kept => {}
            other => panic!("alignment {align:#x}: {:?}", other.map(|b| b.len())),
        }
    }
}

/// A new `.bss` object of absurd size made the emitter allocate its zeroes (`vec![0; size]`)
/// although `SHT_NOBITS` sections have no contents in the file.
#[test]
fn emit_huge_bss_without_allocating() {
    const HUGE: u64 = 1 << 50;
    let b = patched_with(|l, b| {
        put(b, l.section(".bss.newbuf").at + 32, 8, HUGE);
        let newbuf = l.symbol(b, "newbuf");
        put(b, newbuf + 16, 8, HUGE);
    });
    let (status, emitted) = diff_and_emit(&b);
    assert_eq!(status, Status::Patchable);
    let bytes = emitted.expect("emits");
    assert!(
        bytes.len() < 64 * 1024,
        "patch object of {} bytes",
        bytes.len()
    );
    let out = Object::parse(&bytes).unwrap();
    let bss = out
        .sections
        .iter()
        .find(|s| s.name == ".bss.newbuf")
        .unwrap();
    assert_eq!((bss.size, bss.data.len()), (HUGE, 0));
}

/// A mergeable-constant section whose entry size is not a power of two: the copied constant
/// was given that entry size as its alignment, which `object` asserts on (debug builds).
#[test]
fn emit_constant_with_odd_entry_size() {
    let b = patched_with(|l, b| put(b, l.section(".rodata.cst8").at + 56, 8, 12));
    let (status, emitted) = diff_and_emit(&b);
    assert_eq!(status, Status::Patchable);
    let bytes = emitted.expect("emits");
    Object::parse(&bytes).unwrap();
}

/// Fuzzer finding: a mergeable string section whose entry size (the character width) is not a
/// power of two gave the copied string that width as its alignment, which `object` asserts on
/// (debug builds).
#[test]
fn emit_string_with_odd_entry_size() {
    for entsize in [3u64, 12] {
        let b = patched_with(|l, b| {
            for s in l.sections.iter().filter(|s| s.name.contains(".str1.")) {
                put(b, s.at + 56, 8, entsize);
            }
        });
        // (Read as strings of 3- or 12-byte characters they may compare differently: only
        // emitting matters here.)
        let bytes = diff_and_emit(&b).1.expect("emits");
        Object::parse(&bytes).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Relocation order

/// Rewrites every `SHT_RELA` section so its entries are in reverse order.
fn reverse_relocations(b: &[u8]) -> Vec<u8> {
    let mut out = b.to_vec();
    for r in Layout::of(b).relas() {
        let n = r.size / RELA;
        for i in 0..n {
            let from = r.offset + (n - 1 - i) * RELA;
            let to = r.offset + i * RELA;
            out[to..to + RELA].copy_from_slice(&b[from..from + RELA]);
        }
    }
    out
}

fn decisions(orig: &[u8], patched: &[u8]) -> (Status, String, Option<Vec<u8>>) {
    let a = Object::parse(orig).unwrap();
    let b = Object::parse(patched).unwrap();
    let d = analyze(&a, &b).unwrap();
    let json = serde_json::to_string_pretty(&d.report).unwrap();
    let emitted = (d.report.status == Status::Patchable).then(|| emit(&d).unwrap());
    (d.report.status, json, emitted)
}

#[test]
fn relocation_order_does_not_matter() {
    let pair = rich();
    let rev_orig = reverse_relocations(&pair.orig);
    let rev_patched = reverse_relocations(&pair.patched);
    assert_ne!(
        rev_orig, pair.orig,
        "the fixture has relocations to reorder"
    );

    let (status, json, _) = decisions(&pair.orig, &rev_orig);
    assert_eq!(status, Status::NoChange, "{json}");
    let (status, json, _) = decisions(&rev_patched, &pair.patched);
    assert_eq!(status, Status::NoChange, "{json}");

    let expected = decisions(&pair.orig, &pair.patched);
    assert_eq!(expected.0, Status::Patchable, "{}", expected.1);
    for (o, p) in [
        (&rev_orig, &pair.patched),
        (&pair.orig, &rev_patched),
        (&rev_orig, &rev_patched),
    ] {
        let got = decisions(o, p);
        assert_eq!(
            got.1, expected.1,
            "reordered relocations changed the decisions"
        );
        assert_eq!(got.0, expected.0);
    }
    // The emitted patch depends on the patched side's relocation *set* only.
    assert_eq!(
        decisions(&rev_orig, &pair.patched).2,
        expected.2,
        "reordering the original's relocations changed the patch object"
    );
}

// ---------------------------------------------------------------------------------------------
// R_X86_64_NONE

const NONE_ORIG: &str = r#"
void helper(void);
int keep_alive(int x)
{
	__asm__ volatile(".reloc ., R_X86_64_NONE, helper");
	return x * 3 + 1;
}
int changes(int x)
{
	__asm__ volatile(".reloc ., R_X86_64_NONE, helper");
	return keep_alive(x) + 2;
}
"#;

fn tool(cmd: &str, args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

#[test]
fn none_relocations_are_ignored_and_not_emitted() {
    let patched_src = NONE_ORIG.replace("keep_alive(x) + 2", "keep_alive(x) + 5");
    let orig_o = compiled("none/orig", NONE_ORIG, CFLAGS);
    let patched_o = compiled("none/patched", &patched_src, CFLAGS);
    let (orig, patched) = (
        std::fs::read(&orig_o).unwrap(),
        std::fs::read(&patched_o).unwrap(),
    );
    for (side, obj) in [("none/orig", &orig_o), ("none/patched", &patched_o)] {
        let out = tool("readelf", &["-rW", "unit.o"], obj.parent().unwrap());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.matches("R_X86_64_NONE").count() >= 2,
            "gas did not emit R_X86_64_NONE relocations in {side}:\n{text}"
        );
    }

    let a = Object::parse(&orig).unwrap();
    let b = Object::parse(&patched).unwrap();
    let has_none = |o: &Object| {
        o.sections
            .iter()
            .any(|s| s.relocs.iter().any(|r| r.r_type == 0))
    };
    assert!(has_none(&a) && has_none(&b));
    let d = analyze(&a, &b).unwrap();
    assert_eq!(d.report.status, Status::Patchable);
    let changed: Vec<_> = d
        .report
        .changed_functions
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(changed, ["changes"]);
    assert_eq!(analyze(&a, &a).unwrap().report.status, Status::NoChange);

    let bytes = emit(&d).unwrap();
    let out = Object::parse(&bytes).unwrap();
    assert!(!has_none(&out), "the patch object carries R_X86_64_NONE");

    let dir = work_dir().join("none/emitted");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("patch.o"), &bytes).unwrap();
    let readelf = tool("readelf", &["-a", "-W", "patch.o"], &dir);
    assert!(
        readelf.status.success() && readelf.stderr.is_empty(),
        "readelf -a: {}",
        String::from_utf8_lossy(&readelf.stderr)
    );
    assert!(!String::from_utf8_lossy(&readelf.stdout).contains("R_X86_64_NONE"));
    let ld = tool("ld", &["-r", "patch.o", "-o", "linked.o"], &dir);
    assert!(
        ld.status.success(),
        "ld -r: {}",
        String::from_utf8_lossy(&ld.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs that are not x86-64 relocatable objects

const PROGRAM: &str = "int answer(void) { return 42; }\nint main(void) { return answer(); }\n";

#[test]
fn executables_and_shared_objects_are_not_relocatable() {
    let exe = build("kinds/exe", PROGRAM, &["-O2", "-no-pie"], "prog");
    match parse_err(&exe) {
        Error::NotRelocatable(m) => assert_eq!(m, "an executable"),
        e => panic!("executable: {e:?}"),
    }
    let pie = build("kinds/pie", PROGRAM, &["-O2", "-fPIE", "-pie"], "prog");
    match parse_err(&pie) {
        Error::NotRelocatable(m) => assert!(m.contains("PIE"), "{m}"),
        e => panic!("PIE executable: {e:?}"),
    }
    let so = build(
        "kinds/so",
        PROGRAM,
        &["-O2", "-fPIC", "-shared"],
        "libunit.so",
    );
    match parse_err(&so) {
        Error::NotRelocatable(m) => assert!(m.contains("shared object"), "{m}"),
        e => panic!("shared object: {e:?}"),
    }
    // A core dump, by its header alone.
    let mut core = rich().orig.clone();
    put(&mut core, 0x10, 2, 4);
    match parse_err(&core) {
        Error::NotRelocatable(m) => assert_eq!(m, "a core dump"),
        e => panic!("core: {e:?}"),
    }
}

#[test]
fn other_classes_byte_orders_and_machines_are_unsupported() {
    // A real 32-bit object when gcc can make one (it needs the i386 multilib); otherwise a
    // 64-bit object relabelled ELFCLASS32, which is refused by the same check.
    std::fs::create_dir_all(work_dir().join("kinds")).unwrap();
    let real32 = Command::new("gcc")
        .args(["-m32", "-c", "-x", "c", "-", "-o"])
        .arg(work_dir().join("kinds/m32.o"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(PROGRAM.as_bytes())?;
            c.wait()
        });
    let obj32 = match real32 {
        Ok(s) if s.success() => std::fs::read(work_dir().join("kinds/m32.o")).unwrap(),
        _ => {
            eprintln!("gcc -m32 unavailable: relabelling a 64-bit object as ELFCLASS32");
            let mut b = rich().orig.clone();
            b[4] = 1;
            b
        }
    };
    assert_eq!(obj32[4], 1, "ELFCLASS32");
    match parse_err(&obj32) {
        Error::Unsupported(m) => assert!(m.contains("64-bit"), "{m}"),
        e => panic!("32-bit: {e:?}"),
    }
    let mut relabelled = rich().orig.clone();
    relabelled[4] = 1;
    assert!(matches!(parse_err(&relabelled), Error::Unsupported(_)));

    let mut big = rich().orig.clone();
    big[5] = 2; // ELFDATA2MSB
    match parse_err(&big) {
        Error::Unsupported(m) => assert!(m.contains("little-endian"), "{m}"),
        e => panic!("big-endian: {e:?}"),
    }

    for (machine, name) in [
        (183u64, "AArch64"),
        (3, "i386"),
        (243, "RISC-V"),
        (0, "none"),
    ] {
        let mut b = rich().orig.clone();
        put(&mut b, 0x12, 2, machine);
        match parse_err(&b) {
            Error::Unsupported(m) => assert_eq!(m, format!("machine {machine} is not x86-64")),
            e => panic!("{name}: {e:?}"),
        }
    }
}

#[test]
fn empty_and_non_elf_inputs_are_not_elf() {
    let inputs: &[&[u8]] = &[
        b"",
        b"\x7f",
        b"\x7fELF",
        b"\x7fELF\x02\x01\x01",
        b"\x7fELX\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        b"!<arch>\n",
        b"#include <stdio.h>\nint main(void) { return 0; }\n",
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        &[0u8; 4096],
        &[0xffu8; 64],
    ];
    for input in inputs {
        assert!(
            matches!(parse_err(input), Error::NotElf),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert!(matches!(parse_err(RICH_ORIG.as_bytes()), Error::NotElf));
    assert!(matches!(parse_err(&rich().orig[..15]), Error::NotElf));
}

// ---------------------------------------------------------------------------------------------
// Deep recursion

/// C source of `n` read-only nodes chained by pointers (`n0 -> n1 -> ... -> n<n>`), walked by
/// `walk`; `bump` changes `walk`.
fn chain_source(n: usize, bump: bool) -> String {
    let mut s = String::from("struct node { const struct node *next; int v; };\n");
    s += &format!("static const struct node n{n} = {{ 0, {n} }};\n");
    for i in (0..n).rev() {
        s += &format!("static const struct node n{i} = {{ &n{}, {i} }};\n", i + 1);
    }
    let add = if bump { " + 1" } else { "" };
    s += &format!(
        "int walk(void) {{ int s = 0; for (const struct node *p = &n0; p; p = p->next) \
         s += p->v{add}; return s; }}\n"
    );
    s
}

/// Regression (found by this suite): comparing read-only data recursed one level per object,
/// so a long chain of pointers in `.rodata` overflowed the stack and aborted the process.
/// Comparison depth is now bounded (deeper chains count as changed, a safe answer).
#[test]
fn deep_rodata_pointer_chain_overflows_stack() {
    let n = 5_000;
    let orig = compile("chain/orig", &chain_source(n, false), CFLAGS);
    let patched = compile("chain/patched", &chain_source(n, true), CFLAGS);
    let status = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let a = Object::parse(&orig).unwrap();
            let b = Object::parse(&patched).unwrap();
            analyze(&a, &b).unwrap().report.status
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(status, Status::Patchable);
}

// ---------------------------------------------------------------------------------------------
// Input-size scaling

/// Assembly of one section holding `n` sized objects and then, past a gap, an unnamed datum
/// that a function refers to `n` times; `extra` is appended to the function body.
fn many_units_source(n: usize, extra: &str) -> String {
    let mut s = String::from(".file \"unit.c\"\n.section .rodata.pool,\"a\"\n");
    for i in 0..n {
        s += &format!(".type o{i},@object\n.size o{i},4\no{i}: .long {i}\n");
    }
    s += ".zero 16\n.Ltail: .zero 64\n";
    s += ".section .text.f,\"ax\",@progbits\n.globl f\n.type f,@function\nf:\n";
    for _ in 0..n {
        s += "lea .Ltail(%rip), %rax\n";
    }
    s + extra + "ret\n.size f,.-f\n"
}

/// Finding of this suite: `Units::unit_at` looked for a unit ending exactly at a target by
/// scanning every unit before it, so each reference to unnamed data behind `n` units cost
/// O(n): quadratic in the input (40,000 units and references, a 2.6 MB object, took 3.3 s in
/// the release CLI; 20,000 took 16 s in a debug build, 0.4 s once indexed).
#[test]
fn unit_at_is_not_quadratic() {
    let n = 20_000;
    let orig = build_file(
        "many-units/orig",
        "unit.s",
        &many_units_source(n, ""),
        &["-c"],
        "unit.o",
    );
    let patched = build_file(
        "many-units/patched",
        "unit.s",
        &many_units_source(n, "nop\n"),
        &["-c"],
        "unit.o",
    );
    let (a, b) = (
        Object::parse(&orig).unwrap(),
        Object::parse(&patched).unwrap(),
    );
    let d = analyze(&a, &b).unwrap();
    assert_eq!(d.report.status, Status::Patchable);
}

/// C source of one function with `n` block-scope statics all called `c` (gcc names them
/// `c.0`, `c.1`, ...: one build-stable key, one referrer).
fn same_key_statics_source(n: usize, bump: bool) -> String {
    let body = "\t{ static int c; c += x; s += c; }\n".repeat(n);
    let ret = if bump { "s + 1" } else { "s" };
    format!("int f(int x)\n{{\n\tint s = 0;\n{body}\treturn {ret};\n}}\n")
}

/// Regression (found by this suite): correlation compared every unmatched original unit of a
/// key with every patched one, so 4,000 statics of one name took seconds (8,000: minutes).
/// Huge families are now skipped by the by-use search; and since nothing tells these
/// zero-initialised, identically used counters apart, the differ must refuse rather than
/// guess which running counter is which.
#[test]
fn many_indistinguishable_statics_are_refused_not_guessed() {
    let n = 4_000;
    let flags = ["-O1", "-ffunction-sections", "-fdata-sections"];
    let orig = compile("same-key/orig", &same_key_statics_source(n, false), &flags);
    let patched = compile(
        "same-key/patched",
        &same_key_statics_source(n, true),
        &flags,
    );
    let (a, b) = (
        Object::parse(&orig).unwrap(),
        Object::parse(&patched).unwrap(),
    );
    let d = analyze(&a, &b).unwrap();
    assert_eq!(d.report.status, Status::Unsupported);
    assert!(d
        .report
        .unsupported
        .iter()
        .any(|u| u.kind == suture_object::report::UnsupportedKind::AmbiguousData));
    assert_eq!(d.report.changed_functions.len(), 1);
}
