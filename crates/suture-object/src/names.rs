//! Symbol-name normalisation used to correlate symbols between two builds.
//!
//! GCC and Clang append numbers that change from build to build: IPA clones (`foo.isra.0`,
//! `foo.constprop.1`, `foo.part.0`, `foo.cold`, `foo.lto_priv.0`), static locals (`count.2`),
//! Clang's `foo.llvm.123456`. Dropping every purely numeric dot-separated component gives a key
//! that is stable across builds while still telling a clone from its origin
//! (`foo.constprop.1.isra.0` -> `foo.constprop.isra`).

/// The build-stable key of a symbol name.
pub fn stable_key(name: &str) -> String {
    // The kernel's `__UNIQUE_ID_<name><counter>`: the counter is per translation unit.
    // A static local also gets gcc's `.N` (`__UNIQUE_ID_ddebug624.25`): both numbers go.
    if let Some(rest) = name.strip_prefix("__UNIQUE_ID_") {
        let keyed = stable_key(rest);
        let (first, tail) = keyed.split_once('.').unwrap_or((keyed.as_str(), ""));
        let base = first.trim_end_matches(|c: char| c.is_ascii_digit());
        return if tail.is_empty() {
            format!("__UNIQUE_ID_{base}")
        } else {
            format!("__UNIQUE_ID_{base}.{tail}")
        };
    }
    if !name.contains('.') || name.starts_with('.') {
        return name.to_string();
    }
    let mut parts = name.split('.');
    let mut out = String::with_capacity(name.len());
    out.push_str(parts.next().unwrap_or_default());
    for p in parts {
        if p.is_empty() || p.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if p == "llvm" {
            // `.llvm.<hash>`: the hash is numeric and dropped above; keep the marker.
            out.push_str(".llvm");
            continue;
        }
        out.push('.');
        out.push_str(p);
    }
    out
}

/// True for compiler-split fragments that are not entry points (`foo.cold`, `foo.part.0.cold`):
/// they are only ever jumped to from their parent and jump back into it.
pub fn is_fragment(name: &str) -> bool {
    name.split('.').skip(1).any(|p| p == "cold")
}

/// Prefix of patch-object symbols that stand for a *local* symbol of the original unit.
pub const LOCAL_PREFIX: &str = "suture.local::";

/// Name under which a patch object refers to an original symbol. Globals keep their name so
/// that `ld -r` and symbol lookup work as usual; locals (statics) are qualified with the source
/// file of their unit, `suture.local::<file>::<name>`, which keeps same-named statics of
/// different files apart and cannot clash with any C or C++ symbol.
pub fn reference_name(name: &str, local: bool, file: Option<&str>) -> String {
    if local {
        format!("{LOCAL_PREFIX}{}::{name}", file.unwrap_or(""))
    } else {
        name.to_string()
    }
}

/// Inverse of [`reference_name`] for local references: `(file, name)`.
pub fn parse_local_reference(symbol: &str) -> Option<(&str, &str)> {
    symbol.strip_prefix(LOCAL_PREFIX)?.rsplit_once("::")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_drop_build_numbers() {
        assert_eq!(stable_key("foo"), "foo");
        assert_eq!(stable_key("foo.isra.0"), "foo.isra");
        assert_eq!(stable_key("foo.isra.12"), stable_key("foo.isra.3"));
        assert_eq!(stable_key("foo.constprop.1.isra.0"), "foo.constprop.isra");
        assert_eq!(stable_key("count.2"), "count");
        assert_eq!(stable_key("foo.part.0.cold"), "foo.part.cold");
        assert_eq!(stable_key("foo.llvm.8812345"), "foo.llvm");
        assert_eq!(stable_key(".text.foo"), ".text.foo");
        assert_ne!(stable_key("foo.isra.0"), stable_key("foo.constprop.0"));
        assert_eq!(
            stable_key("__UNIQUE_ID___addressable_tcp_abort1050"),
            stable_key("__UNIQUE_ID___addressable_tcp_abort1051")
        );
        // A dynamic-debug descriptor is a static local: a fix that adds one `__COUNTER__`
        // use (READ_ONCE's compile-time assert) renumbers every later one.
        assert_eq!(
            stable_key("__UNIQUE_ID_ddebug624.25"),
            stable_key("__UNIQUE_ID_ddebug625.25")
        );
        assert_eq!(stable_key("__UNIQUE_ID_ddebug624.25"), "__UNIQUE_ID_ddebug");
        assert_eq!(
            stable_key("__UNIQUE_ID___addressable_tcp_abort1050"),
            "__UNIQUE_ID___addressable_tcp_abort"
        );
    }

    #[test]
    fn local_reference_names_round_trip() {
        let n = reference_name("count.2", true, Some("src/a.c"));
        assert_eq!(n, "suture.local::src/a.c::count.2");
        assert_eq!(parse_local_reference(&n), Some(("src/a.c", "count.2")));
        assert_eq!(reference_name("printf", false, None), "printf");
        assert_eq!(parse_local_reference("printf"), None);
    }

    #[test]
    fn fragments() {
        assert!(is_fragment("foo.cold"));
        assert!(is_fragment("foo.part.0.cold"));
        assert!(!is_fragment("foo.part.0"));
        assert!(!is_fragment("coldstart"));
        assert!(!is_fragment("cold"));
    }
}
