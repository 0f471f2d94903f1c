//! Fuzz target for the bundle reader: any input must give a bundle or an error, never a panic,
//! a hang or an allocation beyond the input's size. A decoded bundle must re-encode to bytes
//! that decode to the same bundle.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = suture_bundle::decode(data) {
        let again = suture_bundle::encode(&b).expect("a decoded bundle encodes");
        assert_eq!(suture_bundle::decode(&again).expect("re-decodes"), b);
    }
});
