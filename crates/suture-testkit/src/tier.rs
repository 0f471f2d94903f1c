//! The CI gate for tiers that need prepared caches.

use std::path::PathBuf;

/// The tier's root from `var`, or why the tier cannot run. Locally an unset variable skips the
/// tier (`Ok(None)`, with a note on stderr); under `CI` it is an error.
pub fn root(var: &str, tier: &str) -> Result<Option<PathBuf>, String> {
    match std::env::var_os(var) {
        Some(v) => Ok(Some(PathBuf::from(v))),
        None if std::env::var_os("CI").is_some() => Err(format!(
            "{var} is not set: the {tier} tier must run in CI (scripts/test.sh prepares it)"
        )),
        None => {
            eprintln!("note: {tier} tier skipped: set {var} (scripts/test.sh does)");
            Ok(None)
        }
    }
}

/// [`root`] for `#[test]` functions: `None` skips locally, a missing cache under `CI` panics.
pub fn require(var: &str, tier: &str) -> Option<PathBuf> {
    root(var, tier).unwrap_or_else(|e| panic!("{e}"))
}

/// A tier whose root is set but not usable (`why`): `None` locally (with a note), a panic
/// under `CI`.
pub fn unavailable<T>(tier: &str, why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("the {tier} tier cannot run: {why} (scripts/test.sh prepares it)");
    }
    eprintln!("note: {tier} tier skipped: {why} (scripts/test.sh prepares it)");
    None
}
