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
    /// The staged rollout: which hosts (by their seed) may apply it from when. Empty: every
    /// host, at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    /// `repo pause`: agents apply it nowhere new (and keep it where it is live) until
    /// `repo resume`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// The fix's version, as the operator numbers it (`repo add --version`): reported by
    /// agents, not used to choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Bundles: patch ids this patch replaces (`repo add --replaces`). Where one of them is
    /// live in a process, the agent applies this one in its place in the same switch (`suture
    /// apply --replace`), never leaving the process unpatched in between; and it does not
    /// apply a replaced patch where one replacing it is live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
}

/// Host seeds are in `0..SEED_RANGE` (each host draws its own once, `crate::state`).
pub const SEED_RANGE: u32 = 10_000;

/// One wave of a staged rollout: hosts whose seed is in `seeds[0]..seeds[1]` (out of
/// [`SEED_RANGE`]) may apply the target from `start` (seconds since the epoch) on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub seeds: [u32; 2],
    pub start: u64,
}

/// Parses `repo add --wave` specifications, `PERCENT@DELAY` each: the first PERCENT percent of
/// hosts (by seed) from DELAY after `now` (seconds, or with a suffix `s`, `m`, `h`, `d`), the
/// next wave up to its PERCENT from its DELAY, and so on. Percentages must increase (up to
/// 100, two decimals at most) and delays must not decrease.
pub fn parse_waves(specs: &[String], now: u64) -> Result<Vec<Wave>, String> {
    let mut waves: Vec<Wave> = Vec::new();
    for spec in specs {
        let bad =
            |why: &str| format!("bad --wave {spec:?}: {why} (PERCENT@DELAY, e.g. 10@0 or 100@6h)");
        let (pct, delay) = spec.split_once('@').ok_or_else(|| bad("no '@'"))?;
        let pct: f64 = pct
            .trim_end_matches('%')
            .parse()
            .map_err(|_| bad("PERCENT is not a number"))?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(bad("PERCENT must be above 0 and at most 100"));
        }
        let to = (pct * f64::from(SEED_RANGE) / 100.0).round() as u32;
        let (num, unit) = match delay.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => delay.split_at(i),
            None => (delay, "s"),
        };
        let n: u64 = num.parse().map_err(|_| bad("DELAY is not a number"))?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad("DELAY's unit must be s, m, h or d")),
        };
        let start = now.saturating_add(n.saturating_mul(mult));
        let from = waves.last().map_or(0, |w| w.seeds[1]);
        if to <= from {
            return Err(bad("percentages must increase from one wave to the next"));
        }
        if waves.last().is_some_and(|w| start < w.start) {
            return Err(bad("a wave cannot start before the one before it"));
        }
        waves.push(Wave {
            seeds: [from, to],
            start,
        });
    }
    Ok(waves)
}

impl TargetMeta {
    /// When a host with this seed may apply the target (seconds since the epoch); `None`
    /// when no wave includes it.
    pub fn wave_start(&self, seed: u32) -> Option<u64> {
        if self.waves.is_empty() {
            return Some(0);
        }
        self.waves
            .iter()
            .filter(|w| w.seeds[0] <= seed && seed < w.seeds[1])
            .map(|w| w.start)
            .min()
    }
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
            waves: parse_waves(&["10@0".into(), "100@1h".into()], 1000).unwrap(),
            paused: true,
            version: Some(3),
            replaces: vec!["fix-1".into()],
        };
        let mut custom = std::collections::HashMap::new();
        custom.insert(CUSTOM_KEY.to_string(), serde_json::to_value(&m).unwrap());
        assert_eq!(TargetMeta::from_custom(&custom).unwrap(), Some(m));
        assert_eq!(TargetMeta::from_custom(&Default::default()).unwrap(), None);
        custom.insert(CUSTOM_KEY.into(), serde_json::json!({"schema": "other/9"}));
        assert!(TargetMeta::from_custom(&custom).is_err());
    }

    #[test]
    fn waves_split_the_seed_range() {
        let w = parse_waves(&["10@0".into(), "50%@30m".into(), "100@1d".into()], 1000).unwrap();
        assert_eq!(
            w,
            [
                Wave {
                    seeds: [0, 1000],
                    start: 1000
                },
                Wave {
                    seeds: [1000, 5000],
                    start: 2800
                },
                Wave {
                    seeds: [5000, 10_000],
                    start: 1000 + 86_400
                },
            ]
        );
        let m = TargetMeta {
            schema: TARGET_SCHEMA.into(),
            kind: Kind::Process,
            patch_id: "fix".into(),
            channel: "stable".into(),
            build_ids: Vec::new(),
            file_name: None,
            kernel_release: None,
            kernel_build_id: None,
            added_at: 0,
            waves: w,
            paused: false,
            version: None,
            replaces: Vec::new(),
        };
        assert_eq!(m.wave_start(0), Some(1000));
        assert_eq!(m.wave_start(999), Some(1000));
        assert_eq!(m.wave_start(1000), Some(2800));
        assert_eq!(m.wave_start(9999), Some(87_400));
        let canary = parse_waves(&["5@0".into()], 0).unwrap();
        let m = TargetMeta { waves: canary, ..m };
        assert_eq!(m.wave_start(600), None);
        for bad in ["10", "0@0", "101@0", "10@1w", "x@0"] {
            assert!(parse_waves(&[bad.into()], 0).is_err(), "{bad}");
        }
        assert!(parse_waves(&["50@0".into(), "40@0".into()], 0).is_err());
        assert!(parse_waves(&["50@1h".into(), "100@0".into()], 0).is_err());
    }
}
