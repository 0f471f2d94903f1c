//! The built-in fleet of `suture plan --example`, modelled on the 2014 cloud reboots: 10,000
//! hosts of 20 VMs, each VM with 16 GiB of memory and a 200 GB local disk, 25 GbE per host.
//! The other figures (dirty and write rates, spare hosts, fabric cap) are assumptions, listed
//! in docs/plan.md; the file is `crates/suture-plan/examples/fleet-2014.json`.

use crate::inventory::Inventory;

/// The example inventory as JSON text.
pub const FLEET_2014: &str = include_str!("../examples/fleet-2014.json");

/// The example inventory.
pub fn fleet_2014() -> Inventory {
    Inventory::from_json(FLEET_2014).expect("the built-in example is valid")
}
