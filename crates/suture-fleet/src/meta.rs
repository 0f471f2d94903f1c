//! The custom metadata suture puts on each TUF target (`custom.suture` in `targets.json`):
//! what the file is, what it patches and which channel it belongs to. It is signed with the
//! rest of `targets.json`, so the agent trusts it exactly as much as the file's hash.

use serde::{Deserialize, Serialize};

/// The schema name of [`TargetMeta`].
pub const TARGET_SCHEMA: &str = "suture.fleet-target/1";

/// The key under `custom` that holds [`TargetMeta`].
pub const CUSTOM_KEY: &str = "suture";

/// The channel a target gets when `repo add` is given none, and that an agent follows when
/// given none.
pub const DEFAULT_CHANNEL: &str = "stable";

/// What kind of patch a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A process bundle (`*.suture`, docs/bundle.md).
    Process,
    /// A kernel livepatch module (`*.ko` from `suture build --kernel`).
    Kernel,
}

/// `custom.suture` of a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetMeta {
    /// [`TARGET_SCHEMA`].
    pub schema: String,
    pub kind: Kind,
    /// The patch id: for a bundle the id recorded in processes (its manifest's `patch_id`);
    /// for a module its name. `repo withdraw` takes it.
    pub patch_id: String,
    /// The rollout channel (`stable`, `canary`, ...): an agent takes only its own channel's.
    pub channel: String,
    /// Bundles: the GNU build-ids (hex) of the files the patch is for. An agent applies the
    /// bundle to every process mapping a file with one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_ids: Vec<String>,
    /// Bundles: the patched file's name (a hint for humans; matching is by build-id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// Kernel modules: the kernel release the module was built for (`suture_release=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// Kernel modules: the build-id of the vmlinux it was built for
    /// (`suture_vmlinux_build_id=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_build_id: Option<String>,
    /// Seconds since the epoch when `repo add` added it.
    pub added_at: u64,
}

impl TargetMeta {
    /// Reads `custom.suture` of a target; `None` when it has none (a file suture did not add),
    /// `Err` when it is there but malformed or of an unknown schema.
    pub fn from_custom(
        custom: &std::collections::HashMap<String, serde_json::Value>,
    ) -> Result<Option<TargetMeta>, String> {
        let Some(v) = custom.get(CUSTOM_KEY) else {
            return Ok(None);
        };
        let m: TargetMeta = serde_json::from_value(v.clone())
            .map_err(|e| format!("malformed custom.{CUSTOM_KEY}: {e}"))?;
        if m.schema != TARGET_SCHEMA {
            return Err(format!(
                "custom.{CUSTOM_KEY} has schema {:?}, this suture reads {TARGET_SCHEMA:?}",
                m.schema
            ));
        }
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_custom() {
        let m = TargetMeta {
            schema: TARGET_SCHEMA.into(),
            kind: Kind::Process,
            patch_id: "fix".into(),
            channel: "canary".into(),
            build_ids: vec!["abcd".into()],
            file_name: Some("prog".into()),
            kernel_release: None,
            kernel_build_id: None,
            added_at: 7,
        };
        let mut custom = std::collections::HashMap::new();
        custom.insert(CUSTOM_KEY.to_string(), serde_json::to_value(&m).unwrap());
        assert_eq!(TargetMeta::from_custom(&custom).unwrap(), Some(m));
        assert_eq!(TargetMeta::from_custom(&Default::default()).unwrap(), None);
        custom.insert(CUSTOM_KEY.into(), serde_json::json!({"schema": "other/9"}));
        assert!(TargetMeta::from_custom(&custom).is_err());
    }
}
