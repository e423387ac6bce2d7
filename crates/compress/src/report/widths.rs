//! The width allocation's report, written beside the model when `--model-bytes` chose the widths
//! (see [`crate::quant::widths`]): `compression-widths.txt` lists every unit's options and the one
//! it took; `compression-widths.svg` plots the estimated front — the model's bytes against the
//! summed K-FAC estimate of the loss the quantization adds — from the cheapest options to the least
//! loss, with the uniform widths and the chosen point on the same axes. The estimate is what the
//! allocation minimises, not a measured loss: `cargo xtask eval` measures that.

use std::fmt::Write as _;
use std::path::Path;

use super::ReportFiles;
use crate::error::Result;
use crate::quant::widths::{Width, WidthAllocation};

pub const TEXT_FILE: &str = "compression-widths.txt";
pub const SVG_FILE: &str = "compression-widths.svg";

/// The uniform widths a report compares with, where every unit offers them.
fn uniform_points(a: &WidthAllocation) -> Vec<(String, (u64, f64))> {
    let mut widths = vec![Width::INT4, Width::Int8, Width::Float];
    let grouped = a.units.iter().flat_map(|(_, o, _)| o.iter().map(|c| c.width));
    widths.extend(grouped.filter(|w| matches!(w, Width::Int4 { group: Some(_) })).take(1));
    widths.into_iter().filter_map(|w| Some((format!("uniform {}", w.name()), a.uniform(w)?))).collect()
}

/// The report as text.
pub fn text(a: &WidthAllocation) -> String {
    let mut s = String::new();
    let (bytes, cost) = a.chosen();
    let _ = writeln!(
        s,
        "PocketVLM width allocation: budget {} bytes, {bytes} chosen ({} outside the units)",
        a.budget, a.fixed
    );
    let _ = writeln!(s, "estimated loss added (K-FAC, summed over units): chosen {cost:.4e}");
    for (name, (b, c)) in uniform_points(a) {
        let fits = if b <= a.budget { "fits" } else { "over budget" };
        let _ = writeln!(s, "{name}: {b} bytes, estimated {c:.4e} ({fits})");
    }
    let _ = writeln!(
        s,
        "\n{:<22} {:<9} {:>11} {:>11}  options (width bytes estimated)",
        "unit", "width", "bytes", "estimated"
    );
    for (unit, options, k) in &a.units {
        let c = options[*k];
        let others: Vec<String> =
            options.iter().map(|o| format!("{} {} {:.3e}", o.width.name(), o.bytes, o.cost)).collect();
        let _ = writeln!(
            s,
            "{:<22} {:<9} {:>11} {:>11.3e}  {}",
            unit.name(),
            c.width.name(),
            c.bytes,
            c.cost,
            others.join(", ")
        );
    }
    let _ = writeln!(s, "\nfront (bytes, estimated) from the cheapest options, one point per move:");
    for (b, c) in &a.front {
        let _ = writeln!(s, "{b:>12} {c:.4e}");
    }
    s
}

/// The plot of the front (see the module documentation).
pub fn svg(a: &WidthAllocation) -> String {
    let uniform = uniform_points(a);
    let chosen = a.chosen();
    let points: Vec<(u64, f64)> =
        a.front.iter().copied().chain(uniform.iter().map(|u| u.1)).chain([chosen, (a.budget, 0.0)]).collect();
    let x_lo = points.iter().map(|p| p.0).min().unwrap_or(0) as f64;
    let x_hi = (points.iter().map(|p| p.0).max().unwrap_or(1) as f64).max(x_lo + 1.0);
    let y_hi = points.iter().map(|p| p.1).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let (w, h, left, bottom, top, right) = (760.0, 400.0, 72.0, 44.0, 36.0, 24.0);
    let (plot_w, plot_h) = (w - left - right, h - bottom - top);
    let x = |b: u64| left + plot_w * (b as f64 - x_lo) / (x_hi - x_lo);
    let y = |c: f64| top + plot_h * (1.0 - c / y_hi);
    let mut s = super::svg_open(w, h);
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"20\" font-size=\"13\">Width allocation: estimated loss added against model bytes (budget {:.1} MB)</text>",
        a.budget as f64 / 1e6
    );
    let label = |c: f64| if y_hi >= 0.1 { format!("{c:.3}") } else { format!("{c:.2e}") };
    for k in 0..=4 {
        let (c, b) = (y_hi * k as f64 / 4.0, x_lo + (x_hi - x_lo) * k as f64 / 4.0);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            y(c),
            y(c),
            left - 4.0,
            y(c) + 4.0,
            label(c)
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.1}</text>",
            x(b as u64),
            top + plot_h + 14.0,
            b / 1e6
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1:.1}\" stroke=\"#c33\" stroke-dasharray=\"4 3\"><title>budget {2} bytes</title></line>",
        x(a.budget),
        top + plot_h,
        a.budget
    );
    let path: Vec<String> = a.front.iter().map(|&(b, c)| format!("{:.1},{:.1}", x(b), y(c))).collect();
    let _ = writeln!(
        s,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#4a7bd0\" stroke-width=\"1.5\"/>",
        path.join(" ")
    );
    for (name, (b, c)) in &uniform {
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#777\"><title>{name}: {b} bytes, estimated {c:.4e}</title></circle><text x=\"{:.1}\" y=\"{:.1}\">{name}</text>",
            x(*b),
            y(*c),
            x(*b) + 6.0,
            y(*c) - 6.0
        );
    }
    let _ = writeln!(
        s,
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#c33\"><title>chosen: {} bytes, estimated {:.4e}</title></circle>",
        x(chosen.0),
        y(chosen.1),
        chosen.0,
        chosen.1
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">model bytes (MB; line: the allocation's front, grey: uniform widths, red: chosen, dashed: budget)</text>",
        left + plot_w / 2.0,
        h - 8.0
    );
    let _ = writeln!(
        s,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">estimated loss added (K-FAC)</text>",
        top + plot_h / 2.0
    );
    let _ = writeln!(s, "</svg>");
    s
}

/// Write both files into `dir`; returns their paths.
pub(crate) fn write(dir: &Path, a: &WidthAllocation) -> Result<ReportFiles> {
    super::write_files(dir, (TEXT_FILE, &text(a)), (SVG_FILE, &svg(a)))
}

/// Remove both files from `dir` where they exist (an earlier run's, for another model).
pub(crate) fn remove(dir: &Path) -> Result<()> {
    for path in [dir.join(TEXT_FILE), dir.join(SVG_FILE)] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(super::io_error(&path, e).into());
            }
            _ => {}
        }
    }
    Ok(())
}
