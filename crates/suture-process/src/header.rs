//! The record a live patch keeps inside its target.
//!
//! Every patch region starts with this header, so `suture status` and `suture revert` work from
//! the process alone, even when suture's own files are gone: the header names the patch and the
//! object it patches, and keeps the original bytes of every function entry it redirected.
//!
//! Layout, version 1 (little-endian):
//! ```text
//!  0  magic        b"SUTURE\0\x01"
//!  8  length       u32  total header bytes
//! 12  state        u32  1 = loaded (not live), 2 = live, 3 = reverted
//! 16  region_size  u64
//! 24  applied_at   u64  seconds since the epoch
//! 32  n_redirects  u32
//! 36  commit       u32  page indexes in the region of the commit routine (low 16 bits) and its
//!                       block (high 16 bits); 0 = not recorded (older headers)
//! 40  patch_id     u16 length + UTF-8
//!     build_id     u16 length + bytes (of the patched object)
//!     object       u16 length + UTF-8 (its path as the target maps it)
//!     redirects    n × { from u64, to u64, len u8, saved [u8; 15] }
//!     eh_frame     { offset u32, length u32 } of the patch's unwind rules in the region
//!                  (optional: absent in headers written before it existed; 0, 0 = none)
//!     stubs        u32 page index of the return stubs' code (their slots are the next page;
//!                  see `retstub.rs`); optional as eh_frame; 0 = none
//!     osr          u32 page index (low 16 bits) and page count (high 16 bits) of the
//!                  on-stack replacement table and trampolines (`osr.rs`); optional; 0 = none
//!     transition   u32 page index (low 16 bits) and page count (high 16 bits) of the
//!                  per-thread transition's table page and dispatchers (`transition.rs`);
//!                  optional; 0 = none
//! ```
//! Data read back from a target is untrusted: [`Header::decode`] bounds every field.

use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"SUTURE\0\x01";
/// The most a header may occupy (and the most `decode` reads).
pub const MAX_LEN: usize = 64 * 1024;
const MAX_REDIRECTS: usize = 2048;
/// The most `.eh_frame` bytes a header may point at.
const MAX_EH_FRAME: u32 = 16 << 20;
const REDIRECT_LEN: usize = 8 + 8 + 1 + 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Code is in place but no function is redirected yet.
    Loaded,
    /// Every redirect is written.
    Live,
    /// The redirects were undone. The region stays mapped (the program may still point into
    /// it) and is reused by the next apply of the same patch.
    Reverted,
}

impl State {
    fn code(self) -> u32 {
        match self {
            State::Loaded => 1,
            State::Live => 2,
            State::Reverted => 3,
        }
    }
    fn from_code(c: u32) -> Option<State> {
        Some(match c {
            1 => State::Loaded,
            2 => State::Live,
            3 => State::Reverted,
            _ => return None,
        })
    }
}

/// One redirected function entry: the jump written at `from` and the bytes it replaced.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Redirect {
    #[serde(serialize_with = "crate::hexjson::addr")]
    pub from: u64,
    #[serde(serialize_with = "crate::hexjson::addr")]
    pub to: u64,
    /// Original bytes at `from` (as many as the jump overwrote).
    #[serde(serialize_with = "crate::hexjson::bytes")]
    pub saved: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub state: State,
    pub region_size: u64,
    pub applied_at: u64,
    pub patch_id: String,
    #[serde(serialize_with = "crate::hexjson::bytes")]
    pub build_id: Vec<u8>,
    pub object: String,
    pub redirects: Vec<Redirect>,
    /// Offset from the region's start and length of the patch's `.eh_frame`, so stack checks
    /// can unwind through patch code.
    pub eh_frame: Option<(u32, u32)>,
    /// Page indexes (from the region's start) of the commit routine's code and block, so
    /// revert writes its routine exactly there (never inferred from mapping boundaries, which
    /// the kernel may merge).
    pub commit_pages: Option<(u16, u16)>,
    /// Page index (from the region's start) of the return stubs' code page; their slots are
    /// the page after it ([`crate::retstub`]).
    pub stubs: Option<u16>,
    /// Page index and page count of the on-stack replacement pages ([`crate::osr`]).
    pub osr: Option<(u16, u16)>,
    /// Page index and page count of the per-thread transition's table page and dispatchers
    /// ([`crate::transition`]); the table is the first page.
    pub transition: Option<(u16, u16)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("no suture header (magic mismatch)")]
    NoMagic,
    #[error("suture header truncated at byte {0}")]
    Truncated(usize),
    #[error("suture header field {0} is invalid")]
    Invalid(&'static str),
    #[error("suture header would exceed {MAX_LEN} bytes")]
    TooLarge,
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) -> Result<(), HeaderError> {
    let n = u16::try_from(s.len()).map_err(|_| HeaderError::TooLarge)?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s);
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeaderError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(HeaderError::Truncated(self.at))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(HeaderError::Truncated(self.at))?;
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, HeaderError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, HeaderError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, HeaderError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], HeaderError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

impl Header {
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        if self.redirects.len() > MAX_REDIRECTS {
            return Err(HeaderError::TooLarge);
        }
        let mut out = Vec::with_capacity(256 + self.redirects.len() * REDIRECT_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&0u32.to_le_bytes()); // length, patched below
        out.extend_from_slice(&self.state.code().to_le_bytes());
        out.extend_from_slice(&self.region_size.to_le_bytes());
        out.extend_from_slice(&self.applied_at.to_le_bytes());
        out.extend_from_slice(&(self.redirects.len() as u32).to_le_bytes());
        let commit = self
            .commit_pages
            .map_or(0, |(code, block)| u32::from(code) | u32::from(block) << 16);
        out.extend_from_slice(&commit.to_le_bytes());
        put_str(&mut out, self.patch_id.as_bytes())?;
        put_str(&mut out, &self.build_id)?;
        put_str(&mut out, self.object.as_bytes())?;
        for r in &self.redirects {
            if r.saved.len() > 15 {
                return Err(HeaderError::Invalid("saved bytes"));
            }
            out.extend_from_slice(&r.from.to_le_bytes());
            out.extend_from_slice(&r.to.to_le_bytes());
            out.push(r.saved.len() as u8);
            let mut saved = [0u8; 15];
            saved[..r.saved.len()].copy_from_slice(&r.saved);
            out.extend_from_slice(&saved);
        }
        let (off, len) = self.eh_frame.unwrap_or((0, 0));
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&u32::from(self.stubs.unwrap_or(0)).to_le_bytes());
        let osr = self
            .osr
            .map_or(0, |(page, n)| u32::from(page) | u32::from(n) << 16);
        out.extend_from_slice(&osr.to_le_bytes());
        let transition = self
            .transition
            .map_or(0, |(page, n)| u32::from(page) | u32::from(n) << 16);
        out.extend_from_slice(&transition.to_le_bytes());
        if out.len() > MAX_LEN {
            return Err(HeaderError::TooLarge);
        }
        let len = out.len() as u32;
        out[8..12].copy_from_slice(&len.to_le_bytes());
        Ok(out)
    }

    /// The encoded length of a header with these strings and `redirects` redirects.
    pub fn encoded_len(patch_id: &str, build_id: &[u8], object: &str, redirects: usize) -> usize {
        40 + 2
            + patch_id.len()
            + 2
            + build_id.len()
            + 2
            + object.len()
            + redirects * REDIRECT_LEN
            + 8
            + 4
            + 4
            + 4
    }

    /// Offset of the `state` field, for updating it in place with one small write.
    pub const STATE_OFFSET: u64 = 12;

    pub fn state_bytes(state: State) -> [u8; 4] {
        state.code().to_le_bytes()
    }

    /// Decodes a header from bytes read at the start of a candidate region.
    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        if b.len() < 8 || &b[..8] != MAGIC {
            return Err(HeaderError::NoMagic);
        }
        let mut r = Reader { b, at: 8 };
        let len = r.u32()? as usize;
        if len > MAX_LEN || len > b.len() {
            return Err(HeaderError::Truncated(b.len()));
        }
        let mut r = Reader {
            b: &b[..len],
            at: 12,
        };
        let state = State::from_code(r.u32()?).ok_or(HeaderError::Invalid("state"))?;
        let region_size = r.u64()?;
        let applied_at = r.u64()?;
        let n = r.u32()? as usize;
        let commit = r.u32()?;
        let commit_pages = match (commit & 0xffff, commit >> 16) {
            (0, 0) => None,
            (code, block)
                if code > 0 && block > code && (u64::from(block) + 1) * 4096 <= region_size =>
            {
                Some((code as u16, block as u16))
            }
            _ => return Err(HeaderError::Invalid("commit pages")),
        };
        if n > MAX_REDIRECTS {
            return Err(HeaderError::Invalid("redirect count"));
        }
        let text = |s: &[u8], what| {
            std::str::from_utf8(s)
                .map(str::to_string)
                .map_err(|_| HeaderError::Invalid(what))
        };
        let patch_id = text(r.bytes()?, "patch id")?;
        let build_id = r.bytes()?.to_vec();
        let object = text(r.bytes()?, "object")?;
        let mut redirects = Vec::with_capacity(n);
        for _ in 0..n {
            let from = r.u64()?;
            let to = r.u64()?;
            let k = r.take(1)?[0] as usize;
            let saved = r.take(15)?;
            if k > 15 {
                return Err(HeaderError::Invalid("saved length"));
            }
            redirects.push(Redirect {
                from,
                to,
                saved: saved[..k].to_vec(),
            });
        }
        let eh_frame = if r.at + 8 <= r.b.len() {
            let (off, len) = (r.u32()?, r.u32()?);
            // An implausible record only loses the unwind rules, never the patch itself.
            let plausible =
                len > 0 && len <= MAX_EH_FRAME && u64::from(off) + u64::from(len) <= region_size;
            plausible.then_some((off, len))
        } else {
            None
        };
        // Two pages from the stub page on must lie in the region; anything else is ignored
        // (the region is then used without stubs).
        let stubs = if r.at + 4 <= r.b.len() {
            let page = r.u32()?;
            (page > 0 && (u64::from(page) + 2) * 4096 <= region_size)
                .then(|| u16::try_from(page).ok())
                .flatten()
        } else {
            None
        };
        // Pages that would leave the region are ignored (frames are then not moved; no
        // transition is reported).
        let mut pages = || -> Result<Option<(u16, u16)>, HeaderError> {
            if r.at + 4 > r.b.len() {
                return Ok(None);
            }
            let v = r.u32()?;
            let (page, n) = ((v & 0xffff) as u16, (v >> 16) as u16);
            Ok(
                (page > 0 && n > 0 && (u64::from(page) + u64::from(n)) * 4096 <= region_size)
                    .then_some((page, n)),
            )
        };
        let osr = pages()?;
        let transition = pages()?;
        Ok(Header {
            state,
            region_size,
            applied_at,
            patch_id,
            build_id,
            object,
            redirects,
            eh_frame,
            commit_pages,
            stubs,
            osr,
            transition,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            state: State::Live,
            region_size: 0x5000,
            applied_at: 1_700_000_000,
            patch_id: "service.patch".into(),
            build_id: vec![0xab; 20],
            object: "/usr/sbin/service".into(),
            redirects: vec![
                Redirect {
                    from: 0x5555_0000_1130,
                    to: 0x5555_8000_1000,
                    saved: vec![0xf3, 0x0f, 0x1e, 0xfa, 0x55],
                },
                Redirect {
                    from: 0x5555_0000_2000,
                    to: 0x5555_8000_1100,
                    saved: vec![0x41, 0x57, 0x41, 0x56, 0x41],
                },
            ],
            eh_frame: Some((0x1000, 0x80)),
            commit_pages: Some((3, 4)),
            stubs: None,
            osr: None,
            transition: None,
        }
    }

    /// Headers written before the `.eh_frame` record existed still decode, without it; a range
    /// outside the region is refused.
    #[test]
    fn eh_frame_record_is_optional_and_bounded() {
        let mut b = sample().encode().unwrap();
        // A header from before the trailing records (eh_frame, stubs, osr).
        b.truncate(b.len() - 16);
        let len = b.len() as u32;
        b[8..12].copy_from_slice(&len.to_le_bytes());
        let old = Header::decode(&b).unwrap();
        assert_eq!(old.eh_frame, None);
        assert_eq!(old.redirects, sample().redirects);
        let mut h = sample();
        h.eh_frame = Some((0x4ff0, 0x20));
        let decoded = Header::decode(&h.encode().unwrap()).unwrap();
        assert_eq!(decoded.eh_frame, None, "out of the region: ignored");
        assert_eq!(
            decoded.redirects, h.redirects,
            "the patch itself stays visible"
        );
        h.eh_frame = Some((0, u32::MAX));
        h.region_size = u64::MAX;
        assert_eq!(Header::decode(&h.encode().unwrap()).unwrap().eh_frame, None);
    }

    /// The osr record: round-trips; absent in older headers; pages outside the region are
    /// ignored (frames are then not moved).
    #[test]
    fn osr_record_is_optional_and_bounded() {
        let mut h = sample();
        h.osr = Some((3, 2)); // pages 3 and 4 of a 5-page region
        assert_eq!(
            Header::decode(&h.encode().unwrap()).unwrap().osr,
            Some((3, 2))
        );
        let mut b = h.encode().unwrap();
        // A header from before the osr record (and the transition record after it).
        b.truncate(b.len() - 8);
        let len = b.len() as u32;
        b[8..12].copy_from_slice(&len.to_le_bytes());
        assert_eq!(Header::decode(&b).unwrap().osr, None);
        h.osr = Some((4, 2));
        assert_eq!(Header::decode(&h.encode().unwrap()).unwrap().osr, None);
    }

    /// The transition record: round-trips; absent in older headers; pages that would leave
    /// the region are ignored (no transition is reported).
    #[test]
    fn transition_record_is_optional_and_bounded() {
        let mut h = sample();
        h.transition = Some((3, 2));
        let b = h.encode().unwrap();
        assert_eq!(Header::decode(&b).unwrap().transition, Some((3, 2)));
        let mut old = b.clone();
        old.truncate(b.len() - 4);
        let len = old.len() as u32;
        old[8..12].copy_from_slice(&len.to_le_bytes());
        assert_eq!(Header::decode(&old).unwrap().transition, None);
        h.transition = Some((4, 2));
        assert_eq!(
            Header::decode(&h.encode().unwrap()).unwrap().transition,
            None
        );
    }

    /// The stubs record: round-trips; absent in older headers; a page whose two pages would
    /// leave the region is ignored (the region is then used without stubs).
    #[test]
    fn stubs_record_is_optional_and_bounded() {
        let mut h = sample();
        h.stubs = Some(3);
        assert_eq!(Header::decode(&h.encode().unwrap()).unwrap().stubs, Some(3));
        let mut b = h.encode().unwrap();
        // A header from before the stubs record (and the records after it).
        b.truncate(b.len() - 12);
        let len = b.len() as u32;
        b[8..12].copy_from_slice(&len.to_le_bytes());
        let old = Header::decode(&b).unwrap();
        assert_eq!(old.stubs, None);
        assert_eq!(old.eh_frame, h.eh_frame);
        h.stubs = Some(4); // pages 4 and 5 of a 5-page region
        assert_eq!(Header::decode(&h.encode().unwrap()).unwrap().stubs, None);
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let b = h.encode().unwrap();
        assert_eq!(
            b.len(),
            Header::encoded_len(&h.patch_id, &h.build_id, &h.object, h.redirects.len())
        );
        assert_eq!(Header::decode(&b).unwrap(), h);
        // Trailing bytes (the rest of the page) are ignored.
        let mut padded = b.clone();
        padded.resize(4096, 0);
        assert_eq!(Header::decode(&padded).unwrap(), h);
    }

    #[test]
    fn state_updates_in_place() {
        let mut b = sample().encode().unwrap();
        let at = Header::STATE_OFFSET as usize;
        b[at..at + 4].copy_from_slice(&Header::state_bytes(State::Reverted));
        assert_eq!(Header::decode(&b).unwrap().state, State::Reverted);
    }

    #[test]
    fn hostile_bytes_are_errors() {
        let b = sample().encode().unwrap();
        assert_eq!(Header::decode(&b[..4]), Err(HeaderError::NoMagic));
        for cut in 8..b.len() {
            assert!(Header::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[12] = 9;
        assert_eq!(Header::decode(&bad), Err(HeaderError::Invalid("state")));
        let mut huge = b.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Header::decode(&huge).is_err());
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut m = b.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % m.len() as u64) as usize;
            m[i] ^= (x >> 32) as u8 | 1;
            let _ = Header::decode(&m); // must not panic
        }
    }
}
