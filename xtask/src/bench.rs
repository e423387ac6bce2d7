//! `cargo xtask bench`: one timed greedy generation per model natively (wgpu on
//! Vulkan/Metal/DX12; lavapipe without a GPU) and in headless Chromium (WebGPU) on the same
//! machine in the same run, printed side by side with Chromium ÷ native ratios and, for every
//! model after the first (e.g. a quantized model of the same checkpoint), its ratios to the
//! first. By default: the tiny fixture converted dense and quantized W4A8. It is a measurement,
//! not a test: it fails only when a side cannot run.
//!
//! Both sides use `pocketvlm_runtime::bench::measure`; the browser side is the `bench_web` test
//! target, built in release mode, fed by the static server (`serve.rs`) and run through
//! wasm-bindgen-test-runner with ChromeDriver; it prints its report as one JSON line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use pocketvlm_compress::quant::QuantOptions;
use pocketvlm_compress::{ConvertOptions, convert};
use pocketvlm_format::dir;
use pocketvlm_processor::decode_image;
use pocketvlm_runtime::bench::{BenchConfig, BenchReport, REPORT_PREFIX, measure};
use pocketvlm_runtime::engine::{Engine, Request, now_ms};
use pocketvlm_runtime::{DeviceOptions, Gpu};

use crate::caption::DEFAULT_PROMPT;
use crate::serve::{Mount, Server};
use crate::setup::{self, CHROMEDRIVER};
use crate::util::{cargo, convert_tiny, human_bytes, root, run as sh};

#[derive(clap::Args)]
pub struct Args {
    /// PocketVLM model directory; repeat to compare models (ratios are to the first). Default:
    /// the tiny fixture converted dense (target/models/tiny) and quantized W4A8
    /// (target/models/tiny-w4a8).
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Image to describe (default: tests/fixtures/images/coffee.png).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Question about the image.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    prompt: String,
    /// Do not split the image into tiles (one tile).
    #[arg(long)]
    no_split: bool,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Skip the Chromium run.
    #[arg(long)]
    native_only: bool,
    /// Print one JSON object (`config`, `native`, `chromium`) instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if cfg!(debug_assertions) {
        // An unoptimized build would time the preprocessing and the weight conversion unfairly.
        eprintln!("xtask bench: re-running as an optimized build");
        return sh(cargo()
            .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
            .args(std::env::args_os().skip(1)));
    }
    let models = if args.model.is_empty() {
        vec![convert_tiny()?, quantize_tiny("w4a8")?]
    } else {
        args.model.clone()
    };
    let image = args.image.clone().unwrap_or_else(|| root().join("tests/fixtures/images/coffee.png"));
    let file_name =
        image.file_name().and_then(|n| n.to_str()).context("the image needs a UTF-8 file name")?;
    let config = BenchConfig {
        models: (0..models.len()).map(|i| format!("model{i}")).collect(),
        image: format!("image/{file_name}"),
        prompt: args.prompt.clone(),
        split: args.no_split.then_some(false),
        max_new_tokens: args.max_new_tokens,
    };
    let image_bytes = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;

    let mut native = Vec::new();
    for (model, name) in models.iter().zip(&config.models) {
        eprintln!("xtask bench: native run of {}", model.display());
        native.push(pollster::block_on(native_run(model, name, &image_bytes, &config))?);
    }
    let chromium = if args.native_only {
        None
    } else {
        eprintln!("xtask bench: Chromium run");
        Some(browser_run(&models, &image, &config)?)
    };
    if args.json {
        let paths: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
        let json =
            serde_json::json!({ "config": config, "models": paths, "native": native, "chromium": chromium });
        println!("{json}");
    } else {
        for (i, model) in models.iter().enumerate() {
            print_table(model, &config, &native[i], chromium.as_ref().map(|c| &c[i]));
            println!();
        }
        if models.len() > 1 {
            print_comparison(&models, &native, chromium.as_deref());
        }
    }
    Ok(())
}

/// The tiny fixture quantized with `bits` (rotated, clip search, no calibration) in
/// `target/models/tiny-<bits>`.
fn quantize_tiny(bits: &str) -> Result<PathBuf> {
    let out = root().join(format!("target/models/tiny-{bits}"));
    let quant = Some(QuantOptions::parse(bits, None)?);
    convert(&root().join("tests/fixtures/tiny"), &out, &ConvertOptions { quant, ..Default::default() })
        .with_context(|| format!("quantizing tests/fixtures/tiny into {}", out.display()))?;
    Ok(out)
}

async fn native_run(model: &Path, name: &str, image: &[u8], config: &BenchConfig) -> Result<BenchReport> {
    let image = decode_image(image)?;
    let start = now_ms();
    let data = dir::open(model).with_context(|| format!("reading {}", model.display()))?;
    let tokenizer = dir::read_tokenizer(model, &data.manifest)?;
    let gpu = Gpu::new(&DeviceOptions::default()).await?;
    let engine = Engine::load(gpu, &data, &tokenizer).await?;
    drop(data);
    let load_ms = now_ms() - start;
    let mut request = Request::caption(&config.prompt, Some(image), config.max_new_tokens);
    request.split = config.split;
    Ok(measure(&engine, request, load_ms, name).await?)
}

/// Serve `bench.json`, the models and the image; build and run `bench_web` in headless Chromium
/// and parse the report line it prints for each model.
fn browser_run(models: &[PathBuf], image: &Path, config: &BenchConfig) -> Result<Vec<BenchReport>> {
    setup::ensure_all()?;
    let bench_dir = root().join("target/xtask/bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(bench_dir.join("bench.json"), serde_json::to_string_pretty(config)?)?;
    let image_dir = image.parent().context("the image has no directory")?;
    let mut mounts = vec![Mount::new("bench", &bench_dir), Mount::new("bench/image", image_dir)];
    for (model, name) in models.iter().zip(&config.models) {
        mounts.push(Mount::new(&format!("bench/{name}"), model));
    }
    let server = Server::start(mounts)?;
    let mut cmd = cargo();
    cmd.current_dir(root().join("crates/runtime"))
        .env("CHROMEDRIVER", CHROMEDRIVER)
        // SwiftShader runs a 256M-parameter model slowly.
        .env("WASM_BINDGEN_TEST_TIMEOUT", "3600")
        .env("POCKETVLM_TEST_SERVER", server.url())
        .args(["test", "--release", "-p", "pocketvlm-runtime", "--target", "wasm32-unknown-unknown"])
        .args(["--test", "bench_web", "--", "--nocapture"])
        .stdout(Stdio::piped());
    eprintln!(
        "$ POCKETVLM_TEST_SERVER={} cargo test --release --test bench_web … (crates/runtime)",
        server.url()
    );
    let mut child = cmd.spawn().context("starting cargo test for bench_web")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut reports = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match line.find(REPORT_PREFIX) {
            Some(at) => {
                let json = &line[at + REPORT_PREFIX.len()..];
                reports
                    .push(serde_json::from_str::<BenchReport>(json).context("parsing the browser report")?);
            }
            None => eprintln!("{line}"),
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the browser bench failed ({status})");
    }
    if reports.len() != models.len() {
        bail!("the browser bench printed {} report lines for {} models", reports.len(), models.len());
    }
    Ok(reports)
}

fn ms(v: f64) -> String {
    format!("{v:.0} ms")
}

fn rate(v: f64) -> String {
    format!("{v:.1} tok/s")
}

fn ratio(chromium: f64, native: f64) -> String {
    if native > 0.0 { format!("{:.2}", chromium / native) } else { "–".into() }
}

fn print_table(model: &Path, config: &BenchConfig, native: &BenchReport, chromium: Option<&BenchReport>) {
    println!(
        "model {} · {} tile(s), {} prompt tokens, {} generated (max {}), greedy",
        model.display(),
        native.image_tiles,
        native.prompt_tokens,
        native.generated_tokens,
        config.max_new_tokens
    );
    println!();
    println!("| | native | Chromium | Chromium ÷ native |");
    println!("| --- | --- | --- | --- |");
    let row = |name: &str, value: &dyn Fn(&BenchReport) -> f64, show: &dyn Fn(f64) -> String| {
        let n = value(native);
        match chromium {
            Some(c) => println!("| {name} | {} | {} | {} |", show(n), show(value(c)), ratio(value(c), n)),
            None => println!("| {name} | {} | – | – |", show(n)),
        }
    };
    let bytes = |v: f64| human_bytes(v as u64);
    println!("| adapter | {} | {} | |", native.adapter, chromium.map_or("–", |c| c.adapter.as_str()));
    row("largest storage binding", &|r| r.max_storage_binding as f64, &bytes);
    row("load (read/fetch, verify, upload)", &|r| r.load_ms, &ms);
    row("time to first token", &|r| r.time_to_first_token_ms, &ms);
    row("· preprocess", &|r| r.preprocess_ms, &ms);
    row("· vision tower", &|r| r.vision_ms, &ms);
    row("· prefill", &|r| r.prefill_ms, &ms);
    row("prefill rate", &|r| r.prefill_tokens_per_s, &rate);
    row("decode rate", &|r| r.decode_tokens_per_s, &rate);
    row("GPU: weights", &|r| r.weight_bytes as f64, &bytes);
    row("GPU: tables (RoPE, rotations)", &|r| r.table_bytes as f64, &bytes);
    row("GPU: KV cache", &|r| r.kv_cache_bytes as f64, &bytes);
    row("GPU: activations (largest pass)", &|r| r.activation_bytes as f64, &bytes);
    row("GPU: total", &|r| r.gpu_total_bytes() as f64, &bytes);
    if let Some(c) = chromium {
        let same = if c.generated_ids == native.generated_ids { "yes" } else { "NO" };
        println!();
        println!("same greedy ids natively and in Chromium: {same}");
    }
}

/// Every model after the first against the first, on each side: `model ÷ first`.
fn print_comparison(models: &[PathBuf], native: &[BenchReport], chromium: Option<&[BenchReport]>) {
    let name =
        |p: &PathBuf| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
    let first = name(&models[0]);
    print!("| ratio to {first} |");
    for m in &models[1..] {
        print!(" {} native |", name(m));
        if chromium.is_some() {
            print!(" {} Chromium |", name(m));
        }
    }
    println!();
    let columns = (models.len() - 1) * if chromium.is_some() { 2 } else { 1 };
    println!("| --- |{}", " --- |".repeat(columns));
    let row = |label: &str, value: &dyn Fn(&BenchReport) -> f64| {
        print!("| {label} |");
        for i in 1..models.len() {
            print!(" {} |", ratio(value(&native[i]), value(&native[0])));
            if let Some(c) = chromium {
                print!(" {} |", ratio(value(&c[i]), value(&c[0])));
            }
        }
        println!();
    };
    row("load", &|r| r.load_ms);
    row("time to first token", &|r| r.time_to_first_token_ms);
    row("· vision tower", &|r| r.vision_ms);
    row("· prefill", &|r| r.prefill_ms);
    row("decode rate", &|r| r.decode_tokens_per_s);
    row("GPU: weights", &|r| r.weight_bytes as f64);
    row("GPU: KV cache", &|r| r.kv_cache_bytes as f64);
    row("GPU: activations", &|r| r.activation_bytes as f64);
    row("GPU: total", &|r| r.gpu_total_bytes() as f64);
}
