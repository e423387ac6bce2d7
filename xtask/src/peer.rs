//! `cargo xtask bench --peer <onnx_dir>`: transformers.js on the same checkpoint, image and prompt
//! in the same Chromium, beside our own Chromium run.
//!
//! The peer is the harness in `../shared/peer/` (beside the project root; its README says how to
//! export a checkpoint to the ONNX layout transformers.js loads and how to install it with npm).
//! Its `bench.mjs` runs the `nosplit` case (one 512-px tile, "Can you describe this image?",
//! greedy) once per requested (device, variant) in a fresh page and writes JSON, which this
//! module reads. The peer stays a benchmark tool: nothing in `cargo xtask test` or CI runs it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::util::{root, run as sh};

/// One transformers.js configuration: the device (`webgpu` or `wasm`) and the ONNX variant
/// (`fp32`, `q4` or `q8`, as `bench.mjs` names them).
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRun {
    pub device: String,
    pub variant: String,
}

impl PeerRun {
    /// `device:variant`, e.g. `webgpu:q4`.
    pub fn parse(s: &str) -> Result<Self> {
        let Some((device, variant)) = s.split_once(':') else {
            bail!("a peer run is device:variant (e.g. webgpu:q4 or wasm:q8), not {s:?}");
        };
        if !["webgpu", "wasm"].contains(&device) {
            bail!("peer device {device:?}: webgpu or wasm");
        }
        if !["fp32", "q4", "q8"].contains(&variant) {
            bail!("peer variant {variant:?}: fp32, q4 or q8");
        }
        Ok(Self { device: device.into(), variant: variant.into() })
    }

    pub fn label(&self) -> String {
        format!("transformers.js {} {}", self.device, self.variant)
    }
}

/// What one peer run measured (medians of `bench.mjs`, which with one run are that run).
#[derive(Clone, Debug)]
pub struct PeerReport {
    pub run: PeerRun,
    pub load_ms: f64,
    /// Processor call (image decode + preprocessing) to the first generated token.
    pub time_to_first_token_ms: f64,
    pub decode_tokens_per_s: f64,
    pub generated_tokens: usize,
    pub prompt_tokens: Option<usize>,
}

impl PeerReport {
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "device": self.run.device, "variant": self.run.variant, "load_ms": self.load_ms,
            "time_to_first_token_ms": self.time_to_first_token_ms,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "generated_tokens": self.generated_tokens, "prompt_tokens": self.prompt_tokens,
        })
    }
}

/// The prompt of `bench.mjs`'s image cases; ours must be the same for a fair comparison.
pub const PEER_PROMPT: &str = "Can you describe this image?";

/// The harness's directory: `../shared/peer` beside the project root unless given.
pub fn peer_dir(given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| root().join("../shared/peer"))
}

/// Refuse, before anything runs, a harness that is missing or not installed and an `onnx`
/// folder that is not an export.
pub fn check_harness(dir: &Path, onnx: &Path) -> Result<()> {
    if !dir.join("bench.mjs").is_file() {
        bail!("no peer harness at {} (expected bench.mjs; pass --peer-dir)", dir.display());
    }
    if !dir.join("node_modules/@huggingface/transformers").is_dir() {
        bail!(
            "the peer harness is not installed: run `npm install --ignore-scripts` in {} (if that \
             folder is read-only, copy it somewhere writable, install there and pass --peer-dir)",
            dir.display()
        );
    }
    if !onnx.join("onnx").is_dir() {
        bail!("{} is not an ONNX export (no onnx/ folder): see {}/README.md", onnx.display(), dir.display());
    }
    Ok(())
}

/// Run each peer configuration once on `image` with `max_new_tokens` and read its reports.
pub fn measure(
    dir: &Path,
    onnx: &Path,
    image: &Path,
    max_new_tokens: usize,
    runs: &[PeerRun],
) -> Result<Vec<PeerReport>> {
    check_harness(dir, onnx)?;
    let out_dir = root().join("target/xtask/bench");
    std::fs::create_dir_all(&out_dir)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let onnx = std::path::absolute(onnx)?;
    let image = std::path::absolute(image)?;
    let mut reports = Vec::new();
    for run in runs {
        let out = out_dir.join(format!("peer-{}-{}.json", run.device, run.variant));
        let _ = std::fs::remove_file(&out);
        eprintln!("xtask bench: {} (one load, one run)", run.label());
        sh(std::process::Command::new("node")
            .current_dir(dir)
            .arg("bench.mjs")
            .arg("--model")
            .arg(&onnx)
            .arg("--image")
            .arg(&image)
            .args(["--devices", &run.device, "--variants", &run.variant, "--cases", "nosplit"])
            .args(["--runs", "1", "--loads", "1", "--case-timeout-s", "3600"])
            .args(["--max-new-tokens", &max_new_tokens.to_string(), "--threads", &threads.to_string()])
            .arg("--out")
            .arg(&out))?;
        reports.push(read_report(&out, run)?);
    }
    Ok(reports)
}

fn read_report(path: &Path, run: &PeerRun) -> Result<PeerReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let results: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let combo = &results["combos"][0];
    if let Some(err) = combo["errors"].get(0) {
        bail!("{} failed to load: {}", run.label(), err["err"]);
    }
    let case = &combo["cases"]["nosplit"];
    if let Some(err) = case["error"].as_str() {
        bail!("{} failed: {}", run.label(), err.lines().next().unwrap_or(""));
    }
    let (median, first) = (&case["median"], &case["runs"][0]);
    let number = |v: &Value, what: &str| {
        v.as_f64().with_context(|| format!("{}: no {what} in {}", run.label(), path.display()))
    };
    Ok(PeerReport {
        run: run.clone(),
        load_ms: number(&combo["load_ms_median"], "load time")?,
        time_to_first_token_ms: number(&median["ttft_ms"], "time to first token")?,
        decode_tokens_per_s: median["decode_tok_s"].as_f64().unwrap_or(0.0),
        generated_tokens: number(&first["n"], "token count")? as usize,
        prompt_tokens: first["prompt_len"].as_u64().map(|n| n as usize),
    })
}
