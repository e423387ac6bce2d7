//! The human-readable compression report and the SVG plot of ranks per layer, written next to
//! the model (`compression-report.txt`, `compression-ranks.svg`); the width allocation's
//! ([`widths`]).

pub mod widths;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pocketvlm_format::{Compression, FormatError, LayerRanks, ModelConfig};

use crate::error::Result;

/// The files of a report, beside the model.
#[derive(Debug)]
pub struct ReportFiles {
    pub text: PathBuf,
    pub svg: PathBuf,
}

pub const REPORT_FILE: &str = "compression-report.txt";
pub const SVG_FILE: &str = "compression-ranks.svg";

fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// The report as text.
pub fn text(
    cfg: &ModelConfig,
    c: &Compression,
    stages: &[(&str, f64)],
    seconds: f64,
    calib_loss: Option<(f64, f64)>,
) -> String {
    let mut s = String::new();
    let t = &cfg.text;
    let (dq, dkv) = (t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim);
    let _ = writeln!(s, "PocketVLM low-rank compression: recipe {} (beta {})", c.recipe, c.beta);
    let _ = writeln!(
        s,
        "calibration: {} samples ({} mode, targets: {}), {} decoder tokens, {} loss tokens, seed {}, tiling {}",
        c.calibration.samples,
        c.calibration.mode,
        c.calibration.targets,
        c.calibration.tokens,
        c.calibration.loss_tokens,
        c.calibration.seed,
        if c.calibration.image_splitting { "on" } else { "off" }
    );
    let _ = writeln!(s, "\n{:<22} {:>10} {:>10}", "budget", "requested", "achieved");
    for (name, want, got) in [
        ("QKV params", c.budgets.qkv_params, c.achieved.qkv_params),
        ("KV cache per token", c.budgets.kv_cache, c.achieved.kv_cache),
        ("MLP params", c.budgets.ffn_params, c.achieved.ffn_params),
    ] {
        let _ = writeln!(s, "{name:<22} {:>10} {:>10}", ratio(want), ratio(got));
    }
    let _ = writeln!(
        s,
        "KV cache: {} bytes/token (dense {}; f16 values; a factored layer caches min(r, 2*d_kv = {}) values)",
        c.kv_cache.bytes_per_token,
        c.kv_cache.dense_bytes_per_token,
        2 * dkv
    );
    let _ = writeln!(
        s,
        "\ntext decoder (latent rank r: QKV of max {}, or K/V (\"kv\", Q dense) of max {}; d_q {dq}, d_kv {dkv}):",
        t.hidden_size.min(dq + 2 * dkv),
        t.hidden_size.min(2 * dkv)
    );
    let _ = writeln!(
        s,
        "{:>5} {:>8} {:>10} {:>10} {:>10}",
        "layer", "latent", "gate_proj", "up_proj", "down_proj"
    );
    let show = |r: Option<usize>| r.map_or("dense".to_string(), |r| r.to_string());
    let latent = |l: &LayerRanks| match (l.qkv, l.kv) {
        (None, Some(r)) => format!("kv {r}"),
        (qkv, _) => show(qkv),
    };
    for l in &c.text_layers {
        let _ = writeln!(
            s,
            "{:>5} {:>8} {:>10} {:>10} {:>10}",
            l.layer,
            latent(l),
            show(l.mlp.get("gate_proj").copied()),
            show(l.mlp.get("up_proj").copied()),
            show(l.mlp.get("down_proj").copied())
        );
    }
    if !c.vision_layers.is_empty() {
        let _ = writeln!(s, "\nvision tower (QKV latent rank):");
        for l in &c.vision_layers {
            let _ = writeln!(s, "{:>5} {:>6}", l.layer, show(l.qkv));
        }
    }
    let _ =
        writeln!(s, "\n{:<11} {:>12} {:>12} {:>12} {:>12}", "component", "params", "dense", "bytes", "dense");
    for z in &c.sizes {
        let _ = writeln!(
            s,
            "{:<11} {:>12} {:>12} {:>12} {:>12}",
            z.component, z.params, z.dense_params, z.bytes, z.dense_bytes
        );
    }
    let (p, dp, b, db) = c.sizes.iter().fold((0, 0, 0, 0), |a, z| {
        (a.0 + z.params, a.1 + z.dense_params, a.2 + z.bytes, a.3 + z.dense_bytes)
    });
    let _ = writeln!(s, "{:<11} {:>12} {:>12} {:>12} {:>12}", "total", p, dp, b, db);
    if let Some((dense, compressed)) = calib_loss {
        let _ = writeln!(
            s,
            "\ncalibration answer loss: dense {dense:.4}, compressed {compressed:.4} (perplexity {:.3} -> {:.3})",
            dense.exp(),
            compressed.exp()
        );
    }
    let _ = writeln!(s, "\ntimings:");
    for (name, secs) in stages {
        let _ = writeln!(s, "  {name:<24} {secs:>8.1} s");
    }
    let _ = writeln!(s, "  {:<24} {seconds:>8.1} s", "total");
    s
}

/// The SVG plot: one bar per text layer for the QKV rank (and dots for MLP ranks), against the
/// full rank.
pub fn svg(cfg: &ModelConfig, c: &Compression) -> String {
    let t = &cfg.text;
    let (dq, dkv) = (t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim);
    let max_qkv = t.hidden_size.min(dq + 2 * dkv);
    let max_mlp = t.hidden_size.min(t.intermediate_size);
    let ymax = max_qkv.max(max_mlp) as f64;
    let n = c.text_layers.len().max(1);
    let (w, h, left, bottom, top) = (760.0, 360.0, 56.0, 40.0, 36.0);
    let plot_w = w - left - 20.0;
    let plot_h = h - bottom - top;
    let bw = plot_w / n as f64;
    let y = |v: f64| top + plot_h * (1.0 - v / ymax);
    let mut s = svg_open(w, h);
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"20\" font-size=\"13\">Ranks per text layer: {} (QKV params {}, KV cache {}, MLP params {})</text>",
        c.recipe,
        ratio(c.achieved.qkv_params),
        ratio(c.achieved.kv_cache),
        ratio(c.achieved.ffn_params)
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>",
            left + plot_w,
            y(v),
            y(v),
            left - 4.0,
            y(v) + 4.0,
            v
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#c33\" stroke-dasharray=\"4 3\"/>",
        left + plot_w,
        y(2.0 * dkv as f64),
        y(2.0 * dkv as f64)
    );
    for (i, l) in c.text_layers.iter().enumerate() {
        let x = left + i as f64 * bw;
        if let Some(r) = l.latent() {
            let kind = l.latent_kind().map_or("", |k| k.name());
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7bd0\"><title>layer {} {kind} rank {r}</title></rect>",
                x + 1.0,
                y(r as f64),
                (bw - 2.0).max(1.0),
                plot_h * r as f64 / ymax,
                l.layer
            );
        }
        for (j, (name, color)) in
            [("gate_proj", "#e08a1e"), ("up_proj", "#2a9d4b"), ("down_proj", "#8a3fb8")].iter().enumerate()
        {
            if let Some(&r) = l.mlp.get(*name) {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>layer {} {name} rank {r}</title></circle>",
                    x + bw * (j as f64 + 1.0) / 4.0,
                    y(r as f64),
                    l.layer
                );
            }
        }
        if i % 5 == 0 {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + bw / 2.0,
                top + plot_h + 14.0,
                l.layer
            );
        }
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">layer (bars: QKV latent rank; dots: gate/up/down rank; dashed: 2·d_kv)</text>",
        left + plot_w / 2.0,
        h - 6.0
    );
    let _ = writeln!(s, "</svg>");
    s
}

/// An SVG document of `w` × `h` pixels on a white background, open for its elements.
fn svg_open(w: f64, h: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    s
}

/// Write both files into `dir`; returns their paths.
pub fn write(
    dir: &Path,
    cfg: &ModelConfig,
    c: &Compression,
    stages: &[(&str, f64)],
    seconds: f64,
    calib_loss: Option<(f64, f64)>,
) -> Result<ReportFiles> {
    write_files(dir, (REPORT_FILE, &text(cfg, c, stages, seconds, calib_loss)), (SVG_FILE, &svg(cfg, c)))
}

/// Append the search's candidates to the report text at `path`: each one's budgets, β and
/// calibration loss (or that it did not fit the byte budget), the kept one marked.
pub fn append_search(path: &Path, searched: &[crate::Searched], kept: usize) -> Result<()> {
    let mut s = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    let _ = writeln!(s, "\nsearch ({} candidates, the lowest calibration loss kept):", searched.len());
    for (k, c) in searched.iter().enumerate() {
        let loss = c.loss.map_or("does not fit --model-bytes".into(), |l| format!("calibration loss {l:.5}"));
        let mark = if k == kept { "  <- kept" } else { "" };
        let _ = writeln!(s, "  {} --beta {}: {loss}{mark}", c.budgets, c.beta);
    }
    std::fs::write(path, s).map_err(|e| io_error(path, e))?;
    Ok(())
}

/// Write a report's text and plot into `dir` under their file names; returns their paths.
fn write_files(dir: &Path, text: (&str, &str), svg: (&str, &str)) -> Result<ReportFiles> {
    let files = ReportFiles { text: dir.join(text.0), svg: dir.join(svg.0) };
    for (path, contents) in [(&files.text, text.1), (&files.svg, svg.1)] {
        std::fs::write(path, contents).map_err(|e| io_error(path, e))?;
    }
    Ok(files)
}

fn io_error(path: &Path, e: std::io::Error) -> FormatError {
    FormatError::Io { path: path.display().to_string(), source: e }
}
