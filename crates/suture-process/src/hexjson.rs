//! How addresses and byte strings appear in suture's JSON (`suture.process/2`,
//! `suture.status/2`): addresses as `"0x…"` strings (a JSON number loses precision above 2^53
//! in many readers, and operators compare them with `/proc/PID/maps`), bytes (build-ids, saved
//! instruction bytes) as lowercase hex strings.

use serde::Serializer;

pub fn addr<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

pub fn bytes<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(v))
}

pub fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct T {
        #[serde(serialize_with = "super::addr")]
        a: u64,
        #[serde(serialize_with = "super::bytes")]
        b: Vec<u8>,
    }

    #[test]
    fn writes_hex_strings() {
        let t = T {
            a: 0x7fff_0000_1000,
            b: vec![0xab, 0x01, 0x00],
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"a":"0x7fff00001000","b":"ab0100"}"#
        );
    }
}
