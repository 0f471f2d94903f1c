//! Fleet rollout: a signed patch repository in The Update Framework's layout (`repo`), and
//! the host agent that pulls it, verifies everything through TUF, applies the patches that
//! match this host's running processes and reverts the ones that were withdrawn (`agent`).
//! See `docs/fleet.md`.
//!
//! Without the `tuf` feature the crate keeps what needs no network or crypto: the custom
//! metadata a target carries (`meta`), the host scan (`host`) and the agent's state (`state`).

pub mod error;
pub mod exec_events;
pub mod host;
pub mod meta;
pub mod metrics;
pub mod state;

#[cfg(feature = "tuf")]
pub mod agent;
#[cfg(feature = "tuf")]
pub mod daemon;
#[cfg(feature = "tuf")]
pub mod fetch;
#[cfg(feature = "tuf")]
pub mod kernel;
#[cfg(feature = "tuf")]
pub mod repo;

pub use error::Error;

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
