//! `cargo xtask caption`: run a converted model natively on one image or text prompt, on the GPU
//! (the runtime's engine) or, with `--cpu`, on the CPU with the compressor's reference model
//! ([`Reference`]: candle in f32, and for a quantized model the integer arithmetic contract of
//! `pocketvlm_format::quant`), so the two can be compared token for token.
//!
//! Both paths build the prompt the same way: the engine's [`Request::caption`] messages, rendered
//! with the model's chat template, the image preprocessed (split into tiles unless `--no-split`)
//! and the `<image>` tokens expanded by the processor crate. Decoding is greedy, stops after one of
//! the manifest's generation eos ids (kept) or `--max-new-tokens`, and the generated ids become text
//! through the same streaming detokenizer.
//!
//! With `--json`, prints one object with the same keys on both paths:
//! - `device`: the GPU adapter (`"<name> (<backend>, <device type>)"`), or `"cpu-reference"`;
//! - `prompt_ids`, `generated_ids`, `text`;
//! - `top10`: `[id, logit]` at the last prompt position, largest first;
//! - `timings_ms`: `preprocess`, `vision`, `prefill`, `decode` (wall clock);
//! - `tokens_per_s`: generated tokens per second of decoding;
//! - `memory`: bytes of `weights`, `kv_cache` and `activations`. On the GPU they are the
//!   generation's GPU buffers ([`MemoryUsage`]: the weights, the KV cache, the largest pass's
//!   scratch plus the logits). On the CPU `weights` is the model directory's tensor bytes (the sum
//!   of the manifest's tensor lengths, as stored, not as candle holds them in f32) and `kv_cache`
//!   and `activations` are `null`: the reference model does not measure them.
//!
//! On the CPU, `vision` includes the prompt's embedding lookup and `prefill` the first logits.
//!
//! `--parity` runs both and compares them as `pocketvlm_runtime::parity` states: the CPU
//! reference decodes greedily; the GPU decodes greedily on its own (how many leading ids agree),
//! then again following the reference's ids (teacher forcing), its logits compared with the
//! reference's at every step. It prints one JSON object (`free_running_agreement`, `steps`,
//! `teacher_forced`: `tolerance`, `largest_deviation`, `top1_agreement`, `near_ties`,
//! `steps_outside_tolerance`; and `noise_floor`: the same deviation and agreement of the
//! reference against itself with its prompt embeddings rounded once more,
//! [`Reference::perturbed_follow`]). The noise floor is the bar: a quantized model turns a
//! one-ULP difference before a layer into a different integer, so no implementation that rounds
//! its float kernels differently from candle can stay closer to the reference than the reference
//! stays to itself. It fails when the engine's largest deviation exceeds
//! [`NOISE_FLOOR_FACTOR`] times the noise floor's.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pocketvlm_compress::model::CacheKind;
use pocketvlm_compress::model::reference::Reference;
use pocketvlm_format::dir;
use pocketvlm_processor::{DecodeOptions, decode_image_with};
use pocketvlm_runtime::engine::{Engine, Request, Timings, now_ms};
use pocketvlm_runtime::model::CacheKind as EngineCache;
use pocketvlm_runtime::model::MemoryUsage;
use pocketvlm_runtime::model::sampling::top_k;
use pocketvlm_runtime::parity::{relative_difference, teacher_forced};
use pocketvlm_runtime::{DeviceOptions, Gpu};

pub const DEFAULT_PROMPT: &str = "Can you describe this image?";

/// How far beyond the reference's own noise floor `--parity` lets the engine's largest
/// teacher-forced deviation go.
pub const NOISE_FLOOR_FACTOR: f32 = 2.0;

/// The `device` of the CPU path.
const CPU_DEVICE: &str = "cpu-reference";

#[derive(clap::Args)]
pub struct Args {
    /// PocketVLM model directory (from `cargo xtask compress`).
    #[arg(long)]
    model: PathBuf,
    /// Image to describe (PNG or JPEG).
    #[arg(long, conflicts_with = "text")]
    image: Option<PathBuf>,
    /// Question about the image.
    #[arg(long, requires = "image")]
    prompt: Option<String>,
    /// A text-only prompt.
    #[arg(long)]
    text: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Do not split the image into tiles (one tile, faster).
    #[arg(long)]
    no_split: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Run the compressor's CPU reference model instead of the GPU engine (any model directory:
    /// dense, low-rank or quantized; slow).
    #[arg(long)]
    cpu: bool,
    /// With `--cpu` or `--parity`: keep plain keys and values in the K/V cache instead of the
    /// shared latent of the joint-QKV layers (the same model; rounding differs) — with
    /// `--parity` in both the engine and the reference.
    #[arg(long)]
    plain_cache: bool,
    /// Run the GPU engine and the CPU reference and compare them step by step (see the module's
    /// documentation); fails when the engine strays further than twice the reference's own noise
    /// floor.
    #[arg(long, conflicts_with = "cpu")]
    parity: bool,
    /// Relative tolerance on the logits for `--parity`'s count of steps outside it (absolute
    /// below 1).
    #[arg(long, default_value_t = 0.05, requires = "parity")]
    tolerance: f32,
}

/// Bytes of memory a generation used; `None` where the path cannot measure it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Memory {
    weights: Option<u64>,
    kv_cache: Option<u64>,
    activations: Option<u64>,
}

impl From<MemoryUsage> for Memory {
    fn from(m: MemoryUsage) -> Self {
        Self { weights: Some(m.weights), kv_cache: Some(m.kv_cache), activations: Some(m.activations) }
    }
}

/// One finished generation, from either path.
#[derive(Clone, Debug, PartialEq)]
struct Caption {
    device: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    text: String,
    /// `[id, logit]` at the last prompt position.
    top10: Vec<(u32, f32)>,
    timings: Timings,
    tokens_per_s: f64,
    memory: Memory,
}

impl Caption {
    fn json(&self) -> serde_json::Value {
        let t = &self.timings;
        serde_json::json!({
            "device": self.device,
            "prompt_ids": self.prompt_ids,
            "generated_ids": self.generated_ids,
            "text": self.text,
            "top10": self.top10,
            "timings_ms": {
                "preprocess": t.preprocess_ms,
                "vision": t.vision_ms,
                "prefill": t.prefill_ms,
                "decode": t.decode_ms,
            },
            "tokens_per_s": self.tokens_per_s,
            "memory": {
                "weights": self.memory.weights,
                "kv_cache": self.memory.kv_cache,
                "activations": self.memory.activations,
            },
        })
    }

    /// The one-line summary printed after the streamed text.
    fn summary(&self) -> String {
        let t = &self.timings;
        format!(
            "{}: {} prompt tokens, {} generated; preprocess {:.0} ms, vision {:.0} ms, prefill {:.0} ms, decode {:.1} tok/s",
            self.device,
            self.prompt_ids.len(),
            self.generated_ids.len(),
            t.preprocess_ms,
            t.vision_ms,
            t.prefill_ms,
            self.tokens_per_s
        )
    }
}

/// Generated tokens per second of `decode_ms`.
fn rate(tokens: usize, decode_ms: f64) -> f64 {
    if decode_ms > 0.0 { tokens as f64 / (decode_ms / 1e3) } else { 0.0 }
}

pub fn run(args: Args) -> Result<()> {
    let (text, image) = match (&args.image, &args.text) {
        (Some(path), None) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            // upright, as the browser decodes it: the same file captions the same in both
            let image = decode_image_with(&bytes, DecodeOptions::UPRIGHT)
                .with_context(|| format!("decoding {}", path.display()))?;
            (args.prompt.clone().unwrap_or_else(|| DEFAULT_PROMPT.to_string()), Some(image))
        }
        (None, Some(text)) => (text.clone(), None),
        _ => bail!("give either --image <file> [--prompt <text>] or --text <prompt>"),
    };
    let mut request = Request::caption(&text, image, args.max_new_tokens);
    if args.no_split {
        request.split = Some(false);
    }
    if args.plain_cache && !(args.cpu || args.parity) {
        bail!("--plain-cache needs --cpu or --parity (the engine alone keeps the latent cache)");
    }
    let cache = if args.plain_cache { CacheKind::Plain } else { CacheKind::Latent };
    if args.parity {
        let report = pollster::block_on(parity(&args.model, request, cache, args.tolerance))?;
        println!("{report:#}");
        let deviation = |key: &str| report[key]["largest_deviation"].as_f64().unwrap_or(f64::INFINITY);
        let (engine, floor) = (deviation("teacher_forced"), deviation("noise_floor"));
        if engine > f64::from(NOISE_FLOOR_FACTOR) * floor {
            bail!(
                "the engine deviates by {engine:.3e}, beyond {NOISE_FLOOR_FACTOR} × the noise floor {floor:.3e}"
            );
        }
        return Ok(());
    }
    let stream = !args.json;
    let caption = if args.cpu {
        cpu_caption(&args.model, request, cache, stream)?
    } else {
        pollster::block_on(gpu_caption(&args.model, request, stream))?
    };
    if args.json {
        println!("{}", caption.json());
    } else {
        println!();
        eprintln!("{}", caption.summary());
    }
    Ok(())
}

/// Print a piece of generated text as it comes.
fn print_piece(piece: &str) {
    print!("{piece}");
    std::io::stdout().flush().ok();
}

/// The GPU adapter as `"<name> (<backend>, <device type>)"`.
fn adapter_name(name: &str, backend: impl std::fmt::Debug, device_type: impl std::fmt::Debug) -> String {
    let name = if name.is_empty() { "(unnamed adapter)" } else { name };
    format!("{name} ({backend:?}, {device_type:?})")
}

/// Caption with the runtime's engine on the native GPU.
async fn gpu_caption(model: &Path, request: Request, stream: bool) -> Result<Caption> {
    let data = dir::open(model).with_context(|| format!("reading {}", model.display()))?;
    let tokenizer = dir::read_tokenizer(model, &data.manifest)?;
    let gpu = Gpu::new(&DeviceOptions::default()).await?;
    let engine = Engine::load(gpu, &data, &tokenizer).await?;
    drop(data);
    let mut session = engine.start(request).await?;
    let mut text = String::new();
    let decode_start = now_ms();
    while let Some(piece) = session.next(&engine).await? {
        if stream {
            print_piece(&piece.text);
        }
        text.push_str(&piece.text);
    }
    let decode_ms = now_ms() - decode_start;
    let generated_ids = session.generated().to_vec();
    let info = &engine.gpu.adapter;
    Ok(Caption {
        device: adapter_name(&info.name, info.backend, info.device_type),
        tokens_per_s: rate(generated_ids.len(), decode_ms),
        top10: top_k(&session.prompt_logits, 10),
        memory: session.memory(&engine).into(),
        timings: session.timings,
        prompt_ids: session.prompt_ids,
        generated_ids,
        text,
    })
}

/// The GPU engine against the CPU reference on one request (`--parity`).
async fn parity(
    model: &Path,
    request: Request,
    cache: CacheKind,
    tolerance: f32,
) -> Result<serde_json::Value> {
    let mut reference = Reference::open(model).with_context(|| format!("loading {}", model.display()))?;
    reference.cache = cache;
    let (messages, image, split) = (request.messages.clone(), request.image.clone(), request.split);
    let run = reference.run(&messages, image.as_ref(), split, request.max_new_tokens)?;
    let expected = &run.generated_ids;
    let data = dir::open(model).with_context(|| format!("reading {}", model.display()))?;
    let tokenizer = dir::read_tokenizer(model, &data.manifest)?;
    let mut engine = Engine::load(Gpu::new(&DeviceOptions::default()).await?, &data, &tokenizer).await?;
    drop(data);
    if cache == CacheKind::Plain {
        engine.model.cache_kind = EngineCache::Plain;
    }
    let mut free = engine.start(request.clone()).await?;
    if free.prompt_ids != run.prompt_ids {
        bail!("the engine's prompt ids differ from the reference's");
    }
    while free.next(&engine).await?.is_some() {}
    let agreement = free.generated().iter().zip(expected).take_while(|(g, e)| g == e).count();
    let steps = teacher_forced(&engine, request, expected, &run.step_top, tolerance).await?;
    // The reference against itself after one rounding of its prompt embeddings: how far any
    // implementation that rounds differently can be expected to land.
    let floor_tops = reference.perturbed_follow(&messages, image.as_ref(), split, expected)?;
    let floor: Vec<(f32, bool)> = floor_tops
        .iter()
        .zip(&run.step_top)
        .map(|(got, want)| {
            let deviation = want
                .iter()
                .filter_map(|&(id, e)| got.iter().find(|g| g.0 == id).map(|g| relative_difference(g.1, e)))
                .fold(0f32, f32::max);
            (deviation, got[0].0 == want[0].0)
        })
        .collect();
    let outside: Vec<serde_json::Value> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.passes(tolerance))
        .map(|(i, s)| serde_json::json!({"step": i, "expected": s.expected_id, "got": s.got_id, "deviation": s.deviation, "margin": s.margin}))
        .collect();
    Ok(serde_json::json!({
        "device": adapter_name(&engine.gpu.adapter.name, engine.gpu.adapter.backend, engine.gpu.adapter.device_type),
        "steps": expected.len(),
        "cpu_ids": expected,
        "gpu_ids": free.generated(),
        "free_running_agreement": agreement,
        "noise_floor": {
            "largest_deviation": floor.iter().map(|f| f.0).fold(0f32, f32::max),
            "top1_agreement": floor.iter().filter(|f| f.1).count(),
        },
        "teacher_forced": {
            "tolerance": tolerance,
            "largest_deviation": steps.iter().map(|s| s.deviation).fold(0f32, f32::max),
            "top1_agreement": steps.iter().filter(|s| s.got_id == s.expected_id).count(),
            "near_ties": steps.iter().filter(|s| s.near_tie).count(),
            "steps_outside_tolerance": outside,
        },
    }))
}

/// Caption with the compressor's CPU reference model ([`Reference`]: the prompt built as the
/// engine builds it).
fn cpu_caption(model_dir: &Path, request: Request, cache: CacheKind, stream: bool) -> Result<Caption> {
    let mut reference =
        Reference::open(model_dir).with_context(|| format!("loading {}", model_dir.display()))?;
    reference.cache = cache;
    let run =
        reference.run(&request.messages, request.image.as_ref(), request.split, request.max_new_tokens)?;
    let chat = &reference.chat;
    let mut decoder = chat.stream_decoder(true);
    let mut text = String::new();
    for &id in &run.generated_ids {
        let piece = decoder.step(chat, id)?.unwrap_or_default();
        if stream {
            print_piece(&piece);
        }
        text.push_str(&piece);
    }
    if let Some(rest) = decoder.finish(chat)? {
        if stream {
            print_piece(&rest);
        }
        text.push_str(&rest);
    }
    Ok(Caption {
        device: CPU_DEVICE.into(),
        tokens_per_s: rate(run.generated_ids.len(), run.decode_ms),
        top10: top_k(&run.prompt_logits, 10),
        memory: Memory {
            weights: Some(reference.manifest.tensors.iter().map(|t| t.bytes).sum()),
            kv_cache: None,
            activations: None,
        },
        timings: Timings {
            preprocess_ms: run.preprocess_ms,
            vision_ms: run.vision_ms,
            prefill_ms: run.prefill_ms,
            decode_ms: run.decode_ms,
        },
        prompt_ids: run.prompt_ids,
        generated_ids: run.generated_ids,
        text,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("caption").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn cpu_flag_is_parsed_with_either_input() {
        let a = parse(&["--model", "m", "--text", "hi", "--cpu", "--json"]).unwrap();
        assert!(a.cpu && a.json);
        assert_eq!(a.text.as_deref(), Some("hi"));
        let a = parse(&["--model", "m", "--image", "x.png", "--cpu", "--no-split"]).unwrap();
        assert!(a.cpu && a.no_split);
        assert!(!parse(&["--model", "m", "--text", "hi"]).unwrap().cpu);
    }

    #[test]
    fn both_paths_print_the_same_keys_and_unknown_memory_is_null() {
        let gpu = Caption {
            device: adapter_name("llvmpipe", format_args!("Vulkan"), format_args!("Cpu")),
            prompt_ids: vec![1, 2],
            generated_ids: vec![3],
            text: "x".into(),
            top10: vec![(3, 1.5)],
            timings: Timings::default(),
            tokens_per_s: 2.0,
            memory: MemoryUsage { weights: 10, kv_cache: 20, activations: 30, ..MemoryUsage::default() }
                .into(),
        };
        let cpu = Caption {
            device: CPU_DEVICE.into(),
            memory: Memory { weights: Some(12), kv_cache: None, activations: None },
            ..gpu.clone()
        };
        let (g, c) = (gpu.json(), cpu.json());
        let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&g), keys(&c));
        assert_eq!(keys(&g["memory"]), keys(&c["memory"]));
        assert_eq!(g["device"], "llvmpipe (Vulkan, Cpu)");
        assert_eq!(g["memory"], serde_json::json!({"weights": 10, "kv_cache": 20, "activations": 30}));
        assert_eq!(c["memory"], serde_json::json!({"weights": 12, "kv_cache": null, "activations": null}));
        assert_eq!(c["device"], "cpu-reference");
        assert_eq!(c["top10"], serde_json::json!([[3, 1.5]]));
        assert_eq!(
            adapter_name("", format_args!("Gl"), format_args!("Other")),
            "(unnamed adapter) (Gl, Other)"
        );
    }
}
