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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use pocketvlm_compress::quant::QuantOptions;
use pocketvlm_compress::{DenseOptions, Plan, compress};
use pocketvlm_format::dir;
use pocketvlm_processor::decode_image;
use pocketvlm_runtime::bench::kernels::{KERNEL_REPORT_PREFIX, KernelReport, REPEATS, measure_kernels};
use pocketvlm_runtime::bench::{
    BenchConfig, BenchReport, CACHE_FOLLOW_UP_TOKENS, CACHE_REPORT_PREFIX, CacheReport, KindRecording,
    REPORT_PREFIX, measure, measure_caches,
};
use pocketvlm_runtime::engine::{Engine, now_ms};
use pocketvlm_runtime::model::CacheKind;
use pocketvlm_runtime::{DeviceOptions, Gpu};

use crate::caption::DEFAULT_PROMPT;
use crate::peer::{self, PEER_PROMPT, PeerReport, PeerRun};
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
    /// Also compare the KV caches (plain, latent, latent-keys): decode rate and attention time per step
    /// after prefilling text prompts of these many tokens (comma-separated, e.g. 100,1000,4000).
    #[arg(long, value_delimiter = ',')]
    caches: Vec<usize>,
    /// Decode steps timed at each context of `--caches`.
    #[arg(long, default_value_t = 16)]
    cache_steps: usize,
    /// The KV cache the measured generations keep: latent (the default), latent-keys or plain.
    #[arg(long, default_value = "latent", value_parser = CacheKind::from_name)]
    kv_cache: CacheKind,
    /// Time single kernels at the 256M model's shapes (G MAC/s) natively and in Chromium, instead
    /// of generating with models.
    #[arg(long, conflicts_with_all = ["model", "peer", "caches"])]
    kernels: bool,
    /// Also time each dispatch of the vision tower, the prefill and the later decode steps on the
    /// GPU (timestamp queries, one compute pass per dispatch) and print the GPU time by kind of
    /// work. Slows them: the times and rates of such a run are not comparable with a plain one.
    #[arg(long)]
    gpu_time: bool,
    /// Ask the prompt without the image: text prefill and decode only (no vision tower), for
    /// quick decode measurements. Not with `--peer`.
    #[arg(long, conflicts_with = "peer")]
    text_only: bool,
    /// Also measure how soon a stop ends the vision tower and the prefill: the longest wait
    /// between two points where the stop is asked, and a stop requested halfway through the
    /// vision tower, timed to the error and to an idle GPU (two more calls per model and side).
    #[arg(long)]
    stop_latency: bool,
    /// Also run this many generations in a row on each engine (captions, text questions, chat
    /// turns, stopped captions), each compared with the fresh engine's answer, with the time and
    /// memory of the first and last tenth of the run (issue 16's soak).
    #[arg(long, default_value_t = 0)]
    soak: usize,
    /// Also run transformers.js on this ONNX export of the same checkpoint (see
    /// `../shared/peer/README.md`) in the same Chromium, and print both side by side. Needs
    /// `--no-split` and the peer's prompt (the default).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// The peer harness (default: `../shared/peer` beside the project root).
    #[arg(long)]
    peer_dir: Option<PathBuf>,
    /// transformers.js configurations to run, device:variant, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "webgpu:q4,wasm:q8")]
    peer_runs: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if cfg!(debug_assertions) {
        // An unoptimized build would time the preprocessing and the weight conversion unfairly.
        eprintln!("xtask bench: re-running as an optimized build");
        return sh(cargo()
            .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
            .args(std::env::args_os().skip(1)));
    }
    let peer_runs = match &args.peer {
        Some(_) => check_peer_args(&args)?,
        None => Vec::new(),
    };
    let models = if args.kernels {
        Vec::new()
    } else if args.model.is_empty() {
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
        cache_contexts: args.caches.clone(),
        cache_steps: args.cache_steps,
        kernels: args.kernels,
        gpu_time: args.gpu_time,
        text_only: args.text_only,
        stop_latency: args.stop_latency,
        soak: args.soak,
        kv_cache: args.kv_cache,
    };
    let image_bytes = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;

    let mut native = Vec::new();
    let mut native_caches = Vec::new();
    for (model, name) in models.iter().zip(&config.models) {
        eprintln!("xtask bench: native run of {}", model.display());
        let (report, caches) = pollster::block_on(native_run(model, name, &image_bytes, &config))?;
        native.push(report);
        native_caches.extend(caches);
    }
    let native_kernels = if args.kernels {
        eprintln!("xtask bench: native kernels");
        pollster::block_on(async { measure_kernels(&Gpu::new(&DeviceOptions::default()).await?).await })?
    } else {
        Vec::new()
    };
    let (chromium, chromium_caches, chromium_kernels) = if args.native_only {
        (None, Vec::new(), Vec::new())
    } else {
        eprintln!("xtask bench: Chromium run");
        let browser = browser_run(&models, &image, &config)?;
        (Some(browser.reports), browser.caches, browser.kernels)
    };
    let peers = match &args.peer {
        Some(onnx) => peer::measure(
            &peer::peer_dir(args.peer_dir.as_deref()),
            onnx,
            &image,
            args.max_new_tokens,
            &peer_runs,
        )?,
        None => Vec::new(),
    };
    if args.json {
        let peers: Vec<_> = peers.iter().map(PeerReport::to_json).collect();
        let paths: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
        let json = serde_json::json!({
            "config": config, "models": paths, "native": native, "chromium": chromium,
            "caches": { "native": native_caches, "chromium": chromium_caches },
            "peer": peers,
            "kernels": { "native": native_kernels, "chromium": chromium_kernels },
        });
        println!("{json}");
    } else {
        if args.kernels {
            print_kernels(&native_kernels, (!args.native_only).then_some(&chromium_kernels[..]));
        }
        for (i, model) in models.iter().enumerate() {
            print_table(model, &config, &native[i], chromium.as_ref().map(|c| &c[i]));
            println!();
        }
        if models.len() > 1 {
            print_comparison(&models, &native, chromium.as_deref());
        }
        if let Some(chromium) = &chromium
            && !peers.is_empty()
        {
            print_peer(&models, chromium, &peers);
        }
        for (model, name) in models.iter().zip(&config.models) {
            for (side, reports) in [("native", &native_caches), ("Chromium", &chromium_caches)] {
                print_caches(model, name, side, reports);
            }
        }
    }
    Ok(())
}

/// The peer configurations to run; `Err` when the comparison would not be like for like or the
/// harness cannot run (checked before our runs, which take minutes).
fn check_peer_args(args: &Args) -> Result<Vec<PeerRun>> {
    if let Some(onnx) = &args.peer {
        peer::check_harness(&peer::peer_dir(args.peer_dir.as_deref()), onnx)?;
    }
    if args.native_only {
        bail!("--peer compares in Chromium: drop --native-only");
    }
    if !args.no_split {
        bail!("--peer runs the peer's one-tile case: add --no-split");
    }
    if args.prompt != PEER_PROMPT {
        bail!("--peer runs the peer's prompt {PEER_PROMPT:?}: leave --prompt at its default");
    }
    args.peer_runs.iter().map(|r| PeerRun::parse(r)).collect()
}

/// Our models and transformers.js in the same Chromium: load, time to first token and decode rate,
/// then each of our models against each peer configuration.
fn print_peer(models: &[PathBuf], ours: &[BenchReport], peers: &[PeerReport]) {
    let name =
        |p: &PathBuf| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
    println!();
    println!("Chromium, same image, prompt and checkpoint shape: PocketVLM and transformers.js");
    println!("(PocketVLM's load includes compiling the caption's pipelines, as its `Model.load` does)");
    println!();
    println!("| | load | time to first token | decode rate | prompt tokens | generated |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (model, r) in models.iter().zip(ours) {
        println!(
            "| PocketVLM {} | {} | {} | {} | {} | {} |",
            name(model),
            ms(r.load_ms + r.prepare_ms),
            ms(r.time_to_first_token_ms),
            rate(r.decode_tokens_per_s),
            r.prompt_tokens,
            r.generated_tokens
        );
    }
    for p in peers {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            p.run.label(),
            ms(p.load_ms),
            ms(p.time_to_first_token_ms),
            rate(p.decode_tokens_per_s),
            p.prompt_tokens.map_or("?".into(), |n| n.to_string()),
            p.generated_tokens
        );
    }
    println!();
    println!(
        "| PocketVLM ÷ transformers.js (> 1: we are faster) | time to first token (theirs ÷ ours) | decode rate (ours ÷ theirs) |"
    );
    println!("| --- | --- | --- |");
    for (model, r) in models.iter().zip(ours) {
        for p in peers {
            println!(
                "| {} vs {} | {} | {} |",
                name(model),
                p.run.label(),
                ratio(p.time_to_first_token_ms, r.time_to_first_token_ms),
                ratio(r.decode_tokens_per_s, p.decode_tokens_per_s)
            );
        }
    }
}

/// The tiny fixture quantized with `bits` (rotated, clip search, no calibration) in
/// `target/models/tiny-<bits>`.
fn quantize_tiny(bits: &str) -> Result<PathBuf> {
    let out = root().join(format!("target/models/tiny-{bits}"));
    let quant = Some(QuantOptions::parse(bits, None)?);
    compress(
        &root().join("tests/fixtures/tiny"),
        &out,
        &Plan::Dense(DenseOptions { quant, ..Default::default() }),
    )
    .with_context(|| format!("quantizing tests/fixtures/tiny into {}", out.display()))?;
    Ok(out)
}

async fn native_run(
    model: &Path,
    name: &str,
    image: &[u8],
    config: &BenchConfig,
) -> Result<(BenchReport, Vec<CacheReport>)> {
    let image = decode_image(image)?;
    let start = now_ms();
    let data = dir::open(model).with_context(|| format!("reading {}", model.display()))?;
    let tokenizer = dir::read_tokenizer(model, &data.manifest)?;
    let gpu = Gpu::new(&DeviceOptions::default()).await?;
    let mut engine = Engine::load(gpu, &data, &tokenizer).await?;
    drop(data);
    let load_ms = now_ms() - start;
    let report = measure(&mut engine, config.request(&image), load_ms, name, config).await?;
    let caches = measure_caches(&mut engine, name, &config.cache_contexts, config.cache_steps).await?;
    Ok((report, caches))
}

/// What the browser side printed.
struct BrowserResults {
    reports: Vec<BenchReport>,
    caches: Vec<CacheReport>,
    kernels: Vec<KernelReport>,
}

/// Serve `bench.json`, the models and the image; build and run `bench_web` in headless Chromium
/// and parse the report lines it prints (kernels, then each model and its caches).
fn browser_run(models: &[PathBuf], image: &Path, config: &BenchConfig) -> Result<BrowserResults> {
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
    let mut caches = Vec::new();
    let mut kernels = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(at) = line.find(KERNEL_REPORT_PREFIX) {
            let json = &line[at + KERNEL_REPORT_PREFIX.len()..];
            kernels
                .push(serde_json::from_str::<KernelReport>(json).context("parsing a browser kernel report")?);
        } else if let Some(at) = line.find(REPORT_PREFIX) {
            let json = &line[at + REPORT_PREFIX.len()..];
            reports.push(serde_json::from_str::<BenchReport>(json).context("parsing the browser report")?);
        } else if let Some(at) = line.find(CACHE_REPORT_PREFIX) {
            let json = &line[at + CACHE_REPORT_PREFIX.len()..];
            caches.push(serde_json::from_str::<CacheReport>(json).context("parsing a browser cache report")?);
        } else {
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the browser bench failed ({status})");
    }
    if reports.len() != models.len() {
        bail!("the browser bench printed {} report lines for {} models", reports.len(), models.len());
    }
    Ok(BrowserResults { reports, caches, kernels })
}

/// Kernel throughput natively and in Chromium, G MAC/s, with Chromium ÷ native.
fn print_kernels(native: &[KernelReport], chromium: Option<&[KernelReport]>) {
    println!("Kernels at the 256M model's shapes: best of {REPEATS} runs after a warm-up");
    println!();
    println!("| kernel | shape | native | native G MAC/s | Chromium | Chromium G MAC/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for n in native {
        let c = chromium.and_then(|c| c.iter().find(|c| c.kernel == n.kernel && c.shape == n.shape));
        let (c_ms, c_rate) =
            c.map_or(("–".into(), "–".into()), |c| (call_time(c.best_ms), format!("{:.2}", c.gmacs)));
        let n_ms = call_time(n.best_ms);
        println!("| {} | {} | {n_ms} | {:.2} | {c_ms} | {c_rate} |", n.kernel, n.shape, n.gmacs);
    }
}

/// One call's time: microseconds below a millisecond (the dispatch floor's row), else milliseconds.
fn call_time(ms: f64) -> String {
    if ms < 1.0 { format!("{:.0} µs", ms * 1e3) } else { format!("{ms:.1} ms") }
}

/// The latent-vs-plain cache table of one model on one side: per context, decode rate,
/// attention time per step and cache bytes per token, with latent ÷ plain.
fn print_caches(model: &Path, name: &str, side: &str, reports: &[CacheReport]) {
    let mine: Vec<&CacheReport> = reports.iter().filter(|r| r.model == name).collect();
    if mine.is_empty() {
        return;
    }
    println!();
    println!("KV cache, {side}, {}: {} decode steps per context", model.display(), mine[0].steps);
    println!();
    println!(
        "| context | cache | tok/s | ÷ plain | attention/step | ÷ plain | {CACHE_FOLLOW_UP_TOKENS}-token follow-up | ÷ plain | B/token |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for kinds in mine.chunks(CacheKind::ALL.len()) {
        let plain = kinds[0];
        for r in kinds {
            println!(
                "| {} | {} | {:.1} | {} | {:.1} ms | {} | {} | {} | {} |",
                r.context,
                r.cache,
                r.decode_tokens_per_s,
                ratio(r.decode_tokens_per_s, plain.decode_tokens_per_s),
                r.attention_ms_per_step,
                ratio(r.attention_ms_per_step, plain.attention_ms_per_step),
                ms(r.follow_up_ms),
                ratio(r.follow_up_ms, plain.follow_up_ms),
                r.kv_bytes_per_token,
            );
        }
    }
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
        "model {} · {} tile(s), {} prompt tokens, {} generated (max {}), greedy, {} KV cache",
        model.display(),
        native.image_tiles,
        native.prompt_tokens,
        native.generated_tokens,
        config.max_new_tokens,
        config.kv_cache.name()
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
    row("· then compile the caption's pipelines (prepare)", &|r| r.prepare_ms, &ms);
    row("· · pipelines it compiled", &|r| r.prepared_pipelines as f64, &|v| format!("{v:.0}"));
    row("time to first token", &|r| r.time_to_first_token_ms, &ms);
    row("· pipelines the caption compiled itself", &|r| r.caption_pipelines as f64, &|v| format!("{v:.0}"));
    row("· preprocess", &|r| r.preprocess_ms, &ms);
    row("· vision tower", &|r| r.vision_ms, &ms);
    row("· prefill", &|r| r.prefill_ms, &ms);
    row("prefill rate", &|r| r.prefill_tokens_per_s, &rate);
    row("decode rate", &|r| r.decode_tokens_per_s, &rate);
    row("· weights a step reads", &|r| r.step_weight_bytes as f64, &bytes);
    let percent = |v: f64| format!("{:.1} %", 100.0 * v);
    row("· share of the adapter's memory roofline", &|r| r.roofline_share(), &percent);
    let gb_per_s = |v: f64| format!("{:.2} GB/s", v / 1e9);
    row("· · the adapter's copy rate (the roofline's)", &|r| r.copy_bytes_per_s, &gb_per_s);
    row("· · the roofline: its copy rate ÷ the weights a step reads", &|r| r.roofline_tokens_per_s(), &rate);
    row("· dispatches per decode step", &|r| r.dispatches_per_token, &|v| format!("{v:.0}"));
    row("· host time to record the first step", &|r| r.first_step_record_ms, &ms);
    row("· host time to record a later step", &|r| r.record_ms_per_token, &|v| format!("{v:.2} ms"));
    row("· · bind groups built per later step", &|r| r.bind_groups_built_per_token, &|v| format!("{v:.1}"));
    row("· · host time building them", &|r| r.bind_group_ms_per_token, &|v| format!("{v:.2} ms"));
    if let Some(f) = &native.follow_up {
        let turn = format!("chat follow-up ({} new tokens after {} cached)", f.new_tokens, f.cached_tokens);
        let follow_up = |r: &BenchReport| r.follow_up.clone().unwrap_or_default();
        row(&format!("{turn}: time to first token"), &|r| follow_up(r).time_to_first_token_ms, &ms);
        row("· pipelines the follow-up compiled", &|r| follow_up(r).pipelines as f64, &|v| {
            format!("{v:.0}")
        });
    }
    if native.stop.is_some() {
        let stop = |r: &BenchReport| r.stop.clone().unwrap_or_default();
        let parts = stop(native);
        let (v, p) = (parts.vision_parts, parts.prefill_parts);
        row(
            &format!("stop: longest wait in the vision tower ({v} parts)"),
            &|r| stop(r).vision_longest_wait_ms,
            &ms,
        );
        row(
            &format!("stop: longest wait in the prefill ({p} parts)"),
            &|r| stop(r).prefill_longest_wait_ms,
            &ms,
        );
        let stage = if v > 0 { "the vision tower" } else { "the prefill" };
        row(&format!("stop requested halfway through {stage}, at"), &|r| stop(r).requested_at_ms, &ms);
        let error = |r: &BenchReport| stop(r).to_error_ms.unwrap_or(f64::NAN);
        row("· then until the call failed (Aborted)", &error, &ms);
        row("· then until the GPU was idle", &|r| stop(r).to_idle_ms, &ms);
    }
    if native.soak.is_some() {
        let s = |r: &BenchReport| r.soak.clone().unwrap_or_default();
        let count = |v: f64| format!("{v:.0}");
        row("soak: generations", &|r| s(r).generations as f64, &count);
        row("soak: of those stopped on purpose (Aborted, as they must)", &|r| s(r).stopped as f64, &count);
        row("soak: answers unlike the fresh engine's", &|r| s(r).mismatches.len() as f64, &count);
        row("soak: mean time, first tenth", &|r| s(r).first_tenth_ms, &ms);
        row("soak: mean time, last tenth", &|r| s(r).last_tenth_ms, &ms);
        row(
            "soak: memory at the start (native: RSS; Chromium: JS heap + wasm)",
            &|r| s(r).memory_start as f64,
            &bytes,
        );
        row("soak: memory at the end", &|r| s(r).memory_end as f64, &bytes);
        row(
            "soak: GPU memory held after the first round",
            &|r| s(r).gpu_held_after_first_round as f64,
            &bytes,
        );
        row("soak: GPU memory held at the end", &|r| s(r).gpu_held_end as f64, &bytes);
        for r in std::iter::once(native).chain(chromium) {
            for m in &s(r).mismatches {
                println!("| soak mismatch ({}) | {m} | | |", r.adapter);
            }
        }
    }
    row("GPU: weights", &|r| r.weight_bytes as f64, &bytes);
    row("GPU: tables (RoPE, rotations)", &|r| r.table_bytes as f64, &bytes);
    row("GPU: KV cache", &|r| r.kv_cache_bytes as f64, &bytes);
    row("GPU: activations (largest pass)", &|r| r.activation_bytes as f64, &bytes);
    row("GPU: total", &|r| r.gpu_total_bytes() as f64, &bytes);
    let host = |r: &BenchReport| r.record_by_kind.clone();
    let title =
        "host time to record a later decode step, by kind of work (time since the previous one ended)";
    print_by_kind(title, &host, native, chromium);
    let title = "GPU time of a later decode step, by kind of work (timestamps around each dispatch)";
    print_by_kind(title, &|r: &BenchReport| r.gpu_by_kind.clone(), native, chromium);
    let title = "GPU time of the vision tower, by kind of work (timestamps around each dispatch)";
    print_by_kind(title, &|r: &BenchReport| r.vision_gpu_by_kind.clone(), native, chromium);
    let title = "GPU time of the prefill, by kind of work (timestamps around each dispatch)";
    print_by_kind(title, &|r: &BenchReport| r.prefill_gpu_by_kind.clone(), native, chromium);
    let title = "host time to record the prefill, by kind of work (pipeline compilations included)";
    print_by_kind(title, &|r: &BenchReport| r.prefill_record_by_kind.clone(), native, chromium);
    if let Some(c) = chromium {
        println!();
        println!(
            "same greedy ids natively and in Chromium: {}",
            id_agreement(&native.generated_ids, &c.generated_ids)
        );
    }
}

/// Where a pass's time goes by kind of work (a later decode step's, the vision tower's, the
/// prefill's), as `kinds` reads it from a report (most Chromium time first, else most native
/// time); nothing when neither side has any.
fn print_by_kind(
    title: &str,
    kinds: &dyn Fn(&BenchReport) -> Vec<KindRecording>,
    native: &BenchReport,
    chromium: Option<&BenchReport>,
) {
    let by_kind = |r: &BenchReport| -> BTreeMap<String, (f64, f64)> {
        kinds(r).into_iter().map(|k| (k.kind, (k.per_step, k.ms_per_step))).collect()
    };
    let (n, c) = (by_kind(native), chromium.map(by_kind).unwrap_or_default());
    let mut kinds: Vec<&String> = n.keys().chain(c.keys()).collect();
    kinds.sort();
    kinds.dedup();
    let key = |k: &String| c.get(k).or(n.get(k)).map_or(0.0, |v| v.1);
    kinds.sort_by(|a, b| key(b).total_cmp(&key(a)));
    if kinds.is_empty() {
        return;
    }
    println!();
    println!("{title}:");
    println!();
    println!("| kind | dispatches | native | Chromium | Chromium per item |");
    println!("| --- | --- | --- | --- | --- |");
    for k in kinds {
        let count = n.get(k).or(c.get(k)).map_or(0.0, |v| v.0);
        let show =
            |m: &BTreeMap<String, (f64, f64)>| m.get(k).map_or("–".into(), |v| format!("{:.2} ms", v.1));
        let per_item =
            c.get(k).filter(|v| v.0 > 0.0).map_or("–".into(), |v| format!("{:.0} µs", v.1 * 1e3 / v.0));
        println!("| {k} | {count:.0} | {} | {} | {per_item} |", show(&n), show(&c));
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

/// "yes" when the native and Chromium runs generated the same ids, else where they first part.
fn id_agreement(native: &[u32], chromium: &[u32]) -> String {
    match native.iter().zip(chromium).position(|(a, b)| a != b) {
        None if native.len() == chromium.len() => "yes".into(),
        None => format!("NO ({} ids natively, {} in Chromium)", native.len(), chromium.len()),
        Some(i) => format!(
            "NO (from generated token {} of {}: id {} natively, {} in Chromium)",
            i + 1,
            native.len(),
            native[i],
            chromium[i]
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::id_agreement;

    #[test]
    fn id_agreement_names_the_first_difference() {
        assert_eq!(id_agreement(&[1, 2, 3], &[1, 2, 3]), "yes");
        assert_eq!(
            id_agreement(&[1, 2, 3], &[1, 5, 6]),
            "NO (from generated token 2 of 3: id 2 natively, 5 in Chromium)"
        );
        assert_eq!(id_agreement(&[1, 2], &[1, 2, 3]), "NO (2 ids natively, 3 in Chromium)");
    }
}
