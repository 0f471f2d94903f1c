//! The identity of a kernel build: its release (`uname -r`, `UTS_RELEASE`) and the GNU
//! build-id of its vmlinux.
//!
//! Why both: the kernel checks a module's `vermagic` only up to its first word when modules
//! are versioned (`CONFIG_MODVERSIONS`, as in Debian), and then only the CRCs of the symbols
//! the module imports; a module built for 6.1.0-56 loads on 6.1.0-55 without a word if those
//! CRCs agree, although its livepatch positions, its copies of functions and its `.klp.rela`
//! relocations describe another build. The release alone is not enough either: Debian keeps
//! the same release (ABI name) across several package updates. The build-id identifies
//! the exact vmlinux the symbol list (`--kallsyms`) was taken from.
//!
//! Where they come from: at build time from the *target* (never the build machine): the
//! release of the headers the module is built against (`include/generated/utsrelease.h`,
//! which is also the release in `vermagic`), the build-id from a copy of the target's
//! `/sys/kernel/notes` (`suture build --kernel --kernel-notes FILE`). They are recorded in
//! the module's `.modinfo` as [`MODINFO_RELEASE`] and [`MODINFO_BUILD_ID`] (shown by
//! `modinfo`). At load time they are compared with `/proc/sys/kernel/osrelease` and the
//! build-id note of the running kernel's `/sys/kernel/notes`.

use serde::Serialize;

/// `.modinfo` key of the release the module was built for.
pub const MODINFO_RELEASE: &str = "suture_release";
/// `.modinfo` key of the build-id (lower-case hex) of the vmlinux the module was built for.
pub const MODINFO_BUILD_ID: &str = "suture_vmlinux_build_id";

/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;

/// The identity of a kernel build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelIdentity {
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The GNU build-id of vmlinux, lower-case hex.
    pub vmlinux_build_id: String,
}

/// The GNU build-id in the contents of `/sys/kernel/notes` (the kernel's `.notes` section: a
/// sequence of ELF notes, 4-byte aligned), as lower-case hex. `Ok(None)` when the notes are
/// well formed but hold no build-id (a kernel linked without `--build-id`).
pub fn build_id_from_notes(notes: &[u8]) -> Result<Option<String>, String> {
    use object::elf::FileHeader64;
    use object::read::elf::NoteIterator;
    use object::LittleEndian as LE;
    if notes.is_empty() {
        return Err("the file is empty".into());
    }
    let mut it = NoteIterator::<FileHeader64<LE>>::new(LE, 4, notes).map_err(|e| e.to_string())?;
    while let Some(note) = it.next().map_err(|e| format!("malformed notes: {e}"))? {
        if note.n_type(LE).0 == NT_GNU_BUILD_ID && note.name() == b"GNU" {
            let desc = note.desc();
            if desc.is_empty() || desc.len() > 64 {
                return Err(format!("a GNU build-id note of {} bytes", desc.len()));
            }
            return Ok(Some(desc.iter().map(|b| format!("{b:02x}")).collect()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn the_build_id_is_found_among_other_notes() {
        // As 6.1's /sys/kernel/notes: Xen and Linux notes around the GNU build-id.
        let mut n = note(b"Xen\0", 6, b"linux\0");
        n.extend(note(b"Linux\0", 0x100, &[1, 2, 3]));
        n.extend(note(
            b"GNU\0",
            NT_GNU_BUILD_ID,
            &[0xde, 0xad, 0xbe, 0xef, 0x01],
        ));
        n.extend(note(b"Linux\0", 6, b"x"));
        assert_eq!(
            build_id_from_notes(&n).unwrap().as_deref(),
            Some("deadbeef01")
        );
        // A GNU note of another type is not a build-id.
        assert_eq!(
            build_id_from_notes(&note(b"GNU\0", 1, &[0, 0, 0, 0])).unwrap(),
            None
        );
    }

    #[test]
    fn the_machines_own_notes_parse() {
        // Any Linux exposes its notes; this machine's kernel has a build-id like Debian's.
        if let Ok(n) = std::fs::read("/sys/kernel/notes") {
            let id = build_id_from_notes(&n).unwrap();
            assert!(id.as_ref().is_none_or(|i| i.len() == 40), "{id:?}");
        }
    }

    #[test]
    fn malformed_notes_are_errors() {
        assert!(build_id_from_notes(b"").unwrap_err().contains("empty"));
        assert!(build_id_from_notes(b"\x04\0\0\0\x14")
            .unwrap_err()
            .contains("malformed"));
        let mut n = note(b"GNU\0", NT_GNU_BUILD_ID, &[1; 20]);
        n.truncate(30);
        assert!(build_id_from_notes(&n).unwrap_err().contains("malformed"));
        // Sizes near u32::MAX do not overflow or allocate.
        let mut n = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 3, 0, 0, 0];
        n.extend_from_slice(b"GNU\0");
        assert!(build_id_from_notes(&n).is_err());
        // Text is not notes.
        assert!(build_id_from_notes(b"6.1.0-56-amd64\n").is_err());
    }
}
