//! `suture plan`: the fleet comparison of `suture_plan`, as text, JSON or an SVG chart.

use std::path::Path;

use anyhow::{Context, Result};

use crate::exit;

pub fn run(
    inventory: Option<&Path>,
    example: bool,
    apply_json: Option<&Path>,
    json: bool,
    svg: Option<&Path>,
) -> Result<u8> {
    let mut inv = match (inventory, example) {
        (Some(path), false) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            suture_plan::Inventory::parse(&text).with_context(|| format!("{}", path.display()))?
        }
        (None, true) => suture_plan::example::fleet_2014(),
        _ => anyhow::bail!("give an inventory file or --example"),
    };
    if let Some(path) = apply_json {
        if inv.fix.kind != suture_plan::FixKind::Process {
            anyhow::bail!("--apply-json is for a process fix (fix kind process): a kernel live patch stops no process");
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let ms = suture_plan::inventory::stop_window_from_apply_json(&text)
            .with_context(|| format!("{}", path.display()))?;
        inv.fix.stop_window_ms = Some(ms);
    }
    let plan = suture_plan::plan(&inv);
    if let Some(path) = svg {
        std::fs::write(path, suture_plan::svg::chart(&plan))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        crate::out(&format!("{}\n", serde_json::to_string_pretty(&plan)?));
    } else {
        crate::out(&suture_plan::human(&plan));
    }
    Ok(exit::OK)
}
