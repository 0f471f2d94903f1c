//! `suture-bundle`: the patch bundle, suture's only stable on-disk format.
//!
//! A bundle is everything needed to live-patch one output ELF file (an executable or a shared
//! library) that a process maps: a JSON [`Manifest`] saying which file it is for (by GNU
//! build-id), what it replaces and which original symbols it relies on (with their addresses
//! and a SHA-256 of their bytes in the deployed file), followed by one patch object (a
//! relocatable ELF as `suture diff -o` writes it), and a SHA-256 over all of it.
//!
//! The byte layout (all integers little-endian) is documented in `docs/bundle.md`:
//!
//! ```text
//! 0   8   magic  "\x7fSUTBDL\n"
//! 8   2   format major version (this crate writes and reads 1)
//! 10  2   format minor version (readers accept any minor of a major they know)
//! 12  4   number of sections N
//! 16  ..  N sections: kind u32, flags u32 (0), length u64, bytes, zero padding to 8
//! end 32  SHA-256 of every byte before it
//! ```
//!
//! Section kinds in 1.0: 1 = manifest (JSON, exactly one, first), 2 = patch object (exactly
//! one). Readers skip section kinds they do not know (a later minor version may add some);
//! a new major version is rejected with [`Error::UnsupportedVersion`].
//!
//! Invariants: no I/O (bytes in, bytes out); [`decode`] never panics and never allocates more
//! than the input's size, whatever the input.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The first eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"\x7fSUTBDL\n";
/// Format major version written and accepted by this crate.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version written by this crate.
pub const FORMAT_MINOR: u16 = 0;
/// The manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "suture.bundle/1";

const SECTION_MANIFEST: u32 = 1;
const SECTION_PATCH_OBJECT: u32 = 2;
const HEADER_LEN: usize = 16;
const SECTION_HEADER_LEN: usize = 16;
const DIGEST_LEN: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a suture bundle (bad magic)")]
    NotABundle,
    #[error(
        "bundle format version {major}.{minor} is not supported by this suture (it reads \
         {FORMAT_MAJOR}.x); use a newer suture"
    )]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("truncated bundle: {0}")]
    Truncated(&'static str),
    #[error("corrupt bundle: {0}")]
    Corrupt(String),
    #[error("bundle integrity check failed: the SHA-256 digest does not match its contents")]
    Digest,
    #[error("bundle manifest is invalid: {0}")]
    Manifest(String),
}

/// The output ELF file a bundle is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// GNU build-id of the file, lowercase hex. Apply refuses any file with another one.
    pub build_id: String,
    /// The output's file name (a hint for humans; matching is by build-id only).
    pub file_name: String,
    /// `DT_SONAME` of a shared library.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soname: Option<String>,
    /// ELF machine, e.g. `x86_64`.
    pub arch: String,
}

/// A function the patch replaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    /// Name of the function in the deployed file (the original).
    pub name: String,
    /// Source file of a static function (`STT_FILE`), to tell same-named statics apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The translation unit (source path relative to the source tree) it comes from.
    pub unit: String,
}

/// An original symbol the patch relies on: a function it replaces or a function or data
/// object its code references.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    pub name: String,
    /// Source file of a static (`STT_FILE`); absent for globals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// `function` or `object`.
    pub kind: String,
    /// Why the patch needs it: `replaced` or `referenced`.
    pub role: String,
    /// Link-time address (`st_value`) in the unstripped twin; add the load bias at run time.
    pub address: u64,
    pub size: u64,
    /// SHA-256 (hex) of the symbol's bytes in the deployed file; absent for bytes that are not
    /// in the file (`.bss`, thread-local data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Where the symbol addresses came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Twin {
    /// `rebuild` (the build suture ran produced a file with the target's build-id) or
    /// `debug-file` (a separate debug file found by build-id).
    pub kind: String,
    /// Path of the twin when the bundle was built (informational).
    pub path: String,
}

/// One translation unit the patch was built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Source path relative to the source tree.
    pub source: String,
    /// The differ's report (`suture.diff/1`, see docs/diff-json.md).
    pub report: serde_json::Value,
}

/// The bundle's JSON manifest (`format` = `suture.bundle/1`). Fields are only added within one
/// major format version; readers ignore fields they do not know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Name recorded in processes for status and revert.
    pub patch_id: String,
    /// `suture <version>` that wrote the bundle.
    pub created_by: String,
    pub target: Target,
    pub twin: Twin,
    pub functions: Vec<Function>,
    pub symbols: Vec<Symbol>,
    pub units: Vec<Unit>,
}

/// A decoded bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    pub manifest: Manifest,
    /// The patch object: one relocatable ELF with a `.suture.patch` manifest section.
    pub patch_object: Vec<u8>,
}

/// True when `bytes` starts with the bundle magic (whatever its version or integrity).
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

fn pad8(v: &mut Vec<u8>) {
    while v.len() % 8 != 0 {
        v.push(0);
    }
}

fn section(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
    pad8(out);
}

/// Serialises a bundle. Deterministic: the same bundle gives the same bytes.
pub fn encode(bundle: &Bundle) -> Result<Vec<u8>, Error> {
    let manifest =
        serde_json::to_vec_pretty(&bundle.manifest).map_err(|e| Error::Manifest(e.to_string()))?;
    let mut out = Vec::with_capacity(
        HEADER_LEN + 2 * SECTION_HEADER_LEN + manifest.len() + bundle.patch_object.len() + 48,
    );
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&2u32.to_le_bytes());
    section(&mut out, SECTION_MANIFEST, &manifest);
    section(&mut out, SECTION_PATCH_OBJECT, &bundle.patch_object);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated(what))?;
        let s = self.b.get(self.pos..end).ok_or(Error::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

/// Reads only the version of a bundle: `(major, minor)`.
pub fn version(bytes: &[u8]) -> Result<(u16, u16), Error> {
    if !is_bundle(bytes) {
        return Err(Error::NotABundle);
    }
    let mut r = Reader { b: bytes, pos: 8 };
    Ok((r.u16("version")?, r.u16("version")?))
}

/// Parses and verifies a bundle: magic, version, integrity digest, section table, manifest.
pub fn decode(bytes: &[u8]) -> Result<Bundle, Error> {
    let (major, minor) = version(bytes)?;
    if major != FORMAT_MAJOR {
        return Err(Error::UnsupportedVersion { major, minor });
    }
    if bytes.len() < HEADER_LEN + DIGEST_LEN {
        return Err(Error::Truncated("header and digest"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST_LEN);
    if Sha256::digest(body).as_slice() != digest {
        return Err(Error::Digest);
    }
    let mut r = Reader { b: body, pos: 12 };
    let count = r.u32("section count")?;
    let mut manifest: Option<&[u8]> = None;
    let mut object: Option<&[u8]> = None;
    for i in 0..count {
        let kind = r.u32("section header")?;
        let _flags = r.u32("section header")?;
        let len = r.u64("section header")?;
        let len = usize::try_from(len)
            .map_err(|_| Error::Corrupt(format!("section {i} length {len} is too large")))?;
        let data = r.take(len, "section contents")?;
        let padding = (8 - len % 8) % 8;
        r.take(padding, "section padding")?;
        let slot = match kind {
            SECTION_MANIFEST => &mut manifest,
            SECTION_PATCH_OBJECT => &mut object,
            _ => continue, // added by a later minor version
        };
        if slot.is_some() {
            return Err(Error::Corrupt(format!("section kind {kind} appears twice")));
        }
        *slot = Some(data);
    }
    if r.pos != body.len() {
        return Err(Error::Corrupt(format!(
            "{} bytes after the last section",
            body.len() - r.pos
        )));
    }
    let manifest = manifest.ok_or_else(|| Error::Corrupt("no manifest section".into()))?;
    let object = object.ok_or_else(|| Error::Corrupt("no patch object section".into()))?;
    let manifest: Manifest =
        serde_json::from_slice(manifest).map_err(|e| Error::Manifest(e.to_string()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(Error::Manifest(format!(
            "format {:?}, expected {MANIFEST_FORMAT:?}",
            manifest.format
        )));
    }
    if parse_hex(&manifest.target.build_id).is_none_or(|b| b.is_empty()) {
        return Err(Error::Manifest(format!(
            "target build-id {:?} is not hex",
            manifest.target.build_id
        )));
    }
    Ok(Bundle {
        manifest,
        patch_object: object.to_vec(),
    })
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex; `None` for odd lengths or other characters.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// SHA-256 of `bytes` as lowercase hex (the form used in manifests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Bundle {
        Bundle {
            manifest: Manifest {
                format: MANIFEST_FORMAT.into(),
                patch_id: "fix".into(),
                created_by: "suture test".into(),
                target: Target {
                    build_id: "0123abcd".into(),
                    file_name: "prog".into(),
                    soname: None,
                    arch: "x86_64".into(),
                },
                twin: Twin {
                    kind: "rebuild".into(),
                    path: "/src/prog".into(),
                },
                functions: vec![Function {
                    name: "check".into(),
                    file: Some("prog.c".into()),
                    unit: "prog.c".into(),
                }],
                symbols: vec![Symbol {
                    name: "check".into(),
                    file: Some("prog.c".into()),
                    kind: "function".into(),
                    role: "replaced".into(),
                    address: 0x1130,
                    size: 17,
                    sha256: Some(sha256_hex(b"x")),
                }],
                units: vec![Unit {
                    source: "prog.c".into(),
                    report: serde_json::json!({"schema": "suture.diff/1"}),
                }],
            },
            patch_object: b"\x7fELF not really".to_vec(),
        }
    }

    #[test]
    fn round_trip_and_determinism() {
        let b = sample();
        let bytes = encode(&b).unwrap();
        assert!(is_bundle(&bytes));
        assert_eq!(encode(&b).unwrap(), bytes);
        assert_eq!(decode(&bytes).unwrap(), b);
        assert_eq!(version(&bytes).unwrap(), (1, 0));
    }

    #[test]
    fn every_corruption_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            let mut c = bytes.clone();
            c[i] ^= 0x41;
            assert!(decode(&c).is_err(), "flipping byte {i} went unnoticed");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    /// Re-seals a modified body with a correct digest, to reach the checks behind it.
    fn reseal(mut body: Vec<u8>) -> Vec<u8> {
        let d = Sha256::digest(&body);
        body.extend_from_slice(&d);
        body
    }

    #[test]
    fn newer_major_is_refused_and_newer_minor_read() {
        let bytes = encode(&sample()).unwrap();
        let mut body = bytes[..bytes.len() - 32].to_vec();
        body[8] = 2;
        let e = decode(&reseal(body.clone())).unwrap_err();
        assert_eq!(e, Error::UnsupportedVersion { major: 2, minor: 0 });
        assert!(e.to_string().contains("2.0 is not supported"), "{e}");
        body[8] = 1;
        body[10] = 7;
        // An unknown section kind added by minor 7 is skipped.
        body[12] = 3;
        body.extend_from_slice(&99u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&3u64.to_le_bytes());
        body.extend_from_slice(b"abc\0\0\0\0\0");
        assert_eq!(decode(&reseal(body)).unwrap(), sample());
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        let mut body = Vec::new();
        body.extend_from_slice(&MAGIC);
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&reseal(body)),
            Err(Error::Truncated(_) | Error::Corrupt(_))
        ));
    }

    #[test]
    fn bad_manifest_is_reported() {
        let mut b = sample();
        b.manifest.target.build_id = "xyz".into();
        let e = decode(&encode(&b).unwrap()).unwrap_err();
        assert!(matches!(e, Error::Manifest(_)), "{e}");
        assert_eq!(decode(b"ELF"), Err(Error::NotABundle));
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(parse_hex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(parse_hex("0").is_none());
        assert!(parse_hex("zz").is_none());
        assert!(parse_hex("é0").is_none());
        assert_eq!(hex(&[1, 0xab]), "01ab");
    }
}
