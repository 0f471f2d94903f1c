//! A self-contained SVG chart of hosts fixed over time, one step line per strategy. Plain
//! text: no scripts, no external fonts or styles (generic `sans-serif`).

use std::fmt::Write as _;

use crate::strategy::Strategy;
use crate::Plan;

const WIDTH: f64 = 780.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const TICKS: u32 = 5;

fn colour(s: Strategy) -> &'static str {
    match s {
        Strategy::HotPatch => "#1b9e77",
        Strategy::Reboot => "#d95f02",
        Strategy::LiveMigration => "#7570b3",
    }
}

/// The chart of `plan`.
pub fn chart(plan: &Plan) -> String {
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let end = plan
        .strategies
        .iter()
        .flat_map(|o| o.timeline.last())
        .map(|p| p.seconds)
        .fold(0.0, f64::max);
    let (unit, per) = if end > 2.0 * 86400.0 {
        ("days", 86400.0)
    } else if end > 2.0 * 3600.0 {
        ("hours", 3600.0)
    } else {
        ("minutes", 60.0)
    };
    let (step, ticks) = nice_step(end.max(per) / per);
    let span = step * f64::from(ticks) * per;
    let (host_step, host_ticks) = nice_step(plan.fleet.hosts.max(1) as f64);
    let host_step = host_step.max(1.0);
    let host_ticks = host_ticks.min((plan.fleet.hosts.max(1) as f64 / host_step).ceil() as u32);
    let top = host_step * f64::from(host_ticks);
    let x = |s: f64| LEFT + s / span * pw;
    let y = |h: u64| TOP + ph - h as f64 / top * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="24" font-size="15">Hosts fixed over time ({} hosts)</text>"#,
        plan.fleet.hosts
    );
    // Axes, grid and tick labels.
    for i in 0..=ticks {
        let f = f64::from(i) / f64::from(ticks);
        let gx = LEFT + f * pw;
        let _ = writeln!(
            s,
            "<line x1=\"{gx:.1}\" y1=\"{TOP}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + ph,
            TOP + ph + 18.0,
            f64::from(i) * step
        );
    }
    for i in 0..=host_ticks {
        let f = f64::from(i) / f64::from(host_ticks);
        let gy = TOP + ph - f * ph;
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>",
            LEFT + pw,
            LEFT - 6.0,
            gy + 4.0,
            f64::from(i) * host_step
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time ({unit})</text>\n\
         <text transform=\"translate(20 {:.1}) rotate(-90)\" text-anchor=\"middle\">hosts fixed</text>",
        LEFT + pw / 2.0,
        HEIGHT - 18.0,
        TOP + ph / 2.0
    );
    // One step line per strategy, and its legend entry.
    for (i, o) in plan.strategies.iter().enumerate() {
        let c = colour(o.strategy);
        let mut d = String::new();
        let mut fixed = 0;
        for (j, p) in o.timeline.iter().enumerate() {
            if j == 0 {
                let _ = write!(d, "M{:.2} {:.2}", x(p.seconds), y(p.hosts_fixed));
            } else {
                let _ = write!(d, " H{:.2} V{:.2}", x(p.seconds), y(p.hosts_fixed));
            }
            fixed = p.hosts_fixed;
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{c}" stroke-width="2"/>"#
        );
        let ly = TOP + 10.0 + 60.0 * i as f64;
        let lx = LEFT + pw + 16.0;
        let (first, second) = if o.feasible {
            (
                format!("done after {}", crate::duration(o.fixed_after_seconds)),
                format!("{} VM-hours down", crate::vm_hours(o.vm_hours_disrupted)),
            )
        } else {
            ("not possible".to_string(), format!("{fixed} hosts fixed"))
        };
        let _ = writeln!(
            s,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{c}\" stroke-width=\"3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            o.strategy.name(),
        );
        for (k, line) in [first, second].iter().enumerate() {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">{line}</text>",
                lx + 30.0,
                ly + 20.0 + 15.0 * k as f64
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A tick step of 1, 2 or 5 times a power of ten giving at most `TICKS` + 1 ticks over `span`
/// (in the axis unit), and the number of steps that cover it.
fn nice_step(span: f64) -> (f64, u32) {
    let raw = span / f64::from(TICKS);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    (step, (span / step).ceil().max(1.0) as u32)
}
