//! Fuzz target for the object reader, the differ and the emitter.
//!
//! Input layout (see `fuzz/README.md`):
//! - byte 0 even: the rest is one object, diffed against itself;
//! - byte 0 odd: bytes 1..5 are the little-endian length `n` of the original object, which
//!   follows; the patched object is everything after it (a too-large `n` is clamped).
//!
//! Each side is copied into its own buffer (the ELF reader wants naturally aligned data, as a
//! file read into a `Vec` is), parsed, diffed and the patch object emitted whatever the
//! verdict. Errors are fine; panics, hangs and runaway allocations are findings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suture_object::{analyze, emit, Object};

fn run(orig: &[u8], patched: &[u8]) {
    let (Ok(a), Ok(b)) = (Object::parse(orig), Object::parse(patched)) else {
        return;
    };
    for (x, y) in [(&a, &b), (&b, &a), (&b, &b)] {
        if let Ok(d) = analyze(x, y) {
            // `emit` also serialises the report into the patch object's manifest.
            let _ = emit::emit(&d);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let one = rest.to_vec();
        run(&one, &one);
        return;
    }
    if rest.len() < 4 {
        return;
    }
    let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    let n = n.min(rest.len());
    let (orig, patched) = (rest[..n].to_vec(), rest[n..].to_vec());
    run(&orig, &patched);
});
