//! `cargo xtask compress` and `cargo xtask inspect`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use pocketvlm_compress::calib::{CalibOptions, CalibSource};
use pocketvlm_compress::checkpoint::Source;
use pocketvlm_compress::quant::{QuantOptions, QuantParts, quantize_dir};
use pocketvlm_compress::{
    Budgets, CompressError, DenseOptions, LowRankOptions, Plan, ReportFiles, compress, latent_named,
};
use pocketvlm_format::compression::Latent;
use pocketvlm_format::quant::{Bits, Scheme};
use pocketvlm_format::{Encoding, Manifest, dir};

use crate::util::human_bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json, processor configs).
    #[arg(long)]
    model: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Conversion recipe: dense, or a low-rank recipe (svd, asvd, svd-llm, qsvd, laser).
    #[arg(long, default_value = "dense")]
    recipe: String,
    /// Budget: text QKV factor parameters as a fraction of the dense Q, K and V weights. Several
    /// comma-separated values (here, in --ffn-params or --vision-qkv-params) search them with
    /// --model-bytes: every combination is written at those bytes, its widths chosen, and the
    /// lowest calibration loss wins.
    #[arg(long, value_delimiter = ',')]
    qkv_params: Vec<f64>,
    /// Budget: KV-cache values per token as a fraction of dense K+V (the joint latent is cached);
    /// with --bits, cached bytes (INT8 latent and its scale) against dense f16 K+V.
    #[arg(long)]
    kv_cache: Option<f64>,
    /// What the text decoder's latent (under --qkv-params / --kv-cache) is shared by: qkv (one
    /// latent for Q, K and V) or kv (K and V only, q_proj kept dense: for the same cached values
    /// its rank caps K and V, not Q).
    #[arg(long)]
    latent: Option<String>,
    /// Budget: text MLP parameters as a fraction of the dense gate/up/down weights (several:
    /// searched, see --qkv-params).
    #[arg(long, value_delimiter = ',')]
    ffn_params: Vec<f64>,
    /// Budget: vision-tower QKV factor parameters as a fraction of dense (biases stay exact;
    /// several: searched, see --qkv-params).
    #[arg(long, value_delimiter = ',')]
    vision_qkv_params: Vec<f64>,
    #[command(flatten)]
    calib: CalibArgs,
    /// Share of the singular values given to the down (latent) factor.
    #[arg(long, default_value_t = 0.5)]
    beta: f64,
    /// Search β over these comma-separated values on the calibration loss of the quantized
    /// model (needs --bits and calibration data); overrides --beta.
    #[arg(long, value_delimiter = ',')]
    beta_search: Option<Vec<f64>>,
    /// ASVD activation exponent.
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Encoding of the factor tensors (f32, f16, bf16; default: that of the weights they replace).
    #[arg(long)]
    factor_encoding: Option<String>,
    #[command(flatten)]
    quant: QuantArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Where calibration samples come from (shared by `compress` and `quantize`).
#[derive(clap::Args)]
pub struct CalibArgs {
    /// Calibration images folder (`name.txt` beside `name.jpg` is used as its caption; without
    /// captions the uncompressed model's own greedy answers are the targets).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration text file (language-model-only calibration; with --calib, both: the images'
    /// samples and then the text's windows).
    #[arg(long)]
    calib_text: Option<PathBuf>,
    /// Number of calibration samples (from each of --calib and --calib-text when both are given).
    #[arg(long, default_value_t = 32)]
    calib_samples: usize,
    /// Seed of the calibration sample draw.
    #[arg(long, default_value_t = 0)]
    calib_seed: u64,
    /// Longest calibration answer (images; default 32) or text window (text, or both; default
    /// 256), in tokens.
    #[arg(long)]
    calib_max_tokens: Option<usize>,
    /// Keep prepared calibration samples in this file and reuse them when the checkpoint and
    /// calibration options match (skips the vision tower and the greedy answers).
    #[arg(long)]
    calib_cache: Option<PathBuf>,
    /// Split calibration images into tiles as the processor does by default (slower; off = one
    /// tile per image).
    #[arg(long)]
    tiling: bool,
}

impl CalibArgs {
    /// The calibration options, `None` without a source.
    fn options(&self) -> Option<CalibOptions> {
        let source = match (&self.calib, &self.calib_text) {
            (Some(d), Some(f)) => CalibSource::Both { images: d.clone(), text: f.clone() },
            (Some(d), None) => CalibSource::Images(d.clone()),
            (None, Some(f)) => CalibSource::Text(f.clone()),
            (None, None) => return None,
        };
        let mut c = CalibOptions::new(source);
        c.samples = self.calib_samples;
        c.seed = self.calib_seed;
        if let Some(m) = self.calib_max_tokens {
            c.max_tokens = m;
        }
        c.tiling = self.tiling;
        Some(c)
    }
}

/// How a written model is laid out and reported.
#[derive(clap::Args)]
pub struct OutputArgs {
    /// Largest shard in MiB.
    #[arg(long, default_value_t = 32)]
    shard_mib: u64,
    /// Print one JSON object on stdout instead of the human-readable summary.
    #[arg(long)]
    json: bool,
}

impl OutputArgs {
    fn max_shard_bytes(&self) -> u64 {
        self.shard_mib << 20
    }
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// PocketVLM model directory.
    #[arg(long)]
    model: PathBuf,
}

/// The low-bit options shared by `compress` and `quantize`.
#[derive(clap::Args)]
pub struct QuantArgs {
    /// Low-bit recipe: w8a8, w4a8 or w4a4. Rotates the model (fused randomized Hadamard on the
    /// residual stream, random latent rotations, online Hadamard where nothing can be fused) and
    /// quantizes every linear layer of the vision tower, connector and text decoder at these
    /// widths (the latent K/V cache at INT8), lm_head at W8A8 and the embeddings as an INT8 table.
    #[arg(long, value_parser = Scheme::parse)]
    bits: Option<Scheme>,
    /// Input columns per INT4 weight scale (64 or 128; needs --bits w4a8 or w4a4). Layers whose
    /// width it does not divide keep one scale per output channel.
    #[arg(long)]
    group_size: Option<u16>,
    /// Parts to keep float, comma-separated: vision, connector, embeddings, lm_head, decoder,
    /// decoder.N or decoder.A-B (those layers), decoder.N.attention, decoder.A-B.mlp.
    #[arg(long, default_value = "")]
    float: String,
    /// Quantize only these parts (the names of --float), everything else float: what one part
    /// costs on its own.
    #[arg(long, conflicts_with = "float")]
    quantize_only: Option<String>,
    /// The baseline: round-to-nearest with absmax scales and no rotations at all.
    #[arg(long)]
    rtn: bool,
    /// Clip ratio of INT4 activations (0 < ρ ≤ 1; scale = ρ · max|x| / 7).
    #[arg(long)]
    act_clip: Option<f32>,
    /// GPTQ error compensation of the decoder's weights from the calibration samples' input
    /// moments: `auto` (default) applies it to INT4 weights whenever calibration data is given
    /// (not with --rtn), `on` to any --bits (calibration data required), `off` never.
    #[arg(long, value_enum)]
    gptq: Option<Gptq>,
    /// Weight widths other than the defaults (--bits' for decoder sublayers, INT8 for the
    /// embedding table and lm_head), comma-separated PART=WIDTH: PART is embeddings, lm_head (a
    /// tied one takes the embeddings' width) or names decoder sublayers as --float does
    /// (decoder.N, decoder.A-B, decoder.N.attention, decoder.A-B.mlp), WIDTH is int4 (one scale
    /// per output channel), int4g64 or int4g128 (one per group of input columns, where the group
    /// divides them; not for embeddings), int8 or float (needs --bits w8a8 or w4a8).
    #[arg(long, default_value = "")]
    widths: String,
    /// Byte budget of the whole model's tensors: every quantized decoder sublayer, the embedding
    /// table and lm_head get int4, int8 or float weights, whichever fits the budget with the least
    /// estimated loss (K-FAC, from the calibration samples; needs calibration data and --bits
    /// w8a8 or w4a8); with --group-size G each unit but the table may also take int4 in groups
    /// of G, and the vision tower and connector keep one scale per output channel. Writes
    /// compression-widths.txt and .svg beside the model (each unit's options, the estimated
    /// front).
    #[arg(long, conflicts_with = "widths")]
    model_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Gptq {
    Auto,
    On,
    Off,
}

/// GPTQ's damping: `λ = 0.01 · mean(diag H)` (the paper's default).
pub const GPTQ_DAMP: f64 = 0.01;

impl QuantArgs {
    /// The recipe (`None` without `--bits`); options that need `--bits` are typed errors without.
    /// `calibrated`: calibration samples will be given (GPTQ's `auto`).
    fn options(&self, calibrated: bool) -> Result<Option<QuantOptions>, CompressError> {
        let needs_bits = |flag: &str| CompressError::BadOptions {
            recipe: flag.into(),
            what: "a low-bit recipe (--bits w8a8, w4a8 or w4a4)".into(),
        };
        let Some(bits) = self.bits else {
            let flags = [
                ("--group-size", self.group_size.is_some()),
                ("--float", !self.float.is_empty()),
                ("--quantize-only", self.quantize_only.is_some()),
                ("--rtn", self.rtn),
                ("--act-clip", self.act_clip.is_some()),
                ("--gptq", self.gptq.is_some()),
                ("--widths", !self.widths.is_empty()),
                ("--model-bytes", self.model_bytes.is_some()),
            ];
            return match flags.iter().find(|(_, set)| *set) {
                Some((flag, _)) => Err(needs_bits(flag)),
                None => Ok(None),
            };
        };
        let mut q = QuantOptions::with_group(bits, self.group_size.map(usize::from))?;
        q.parts = match &self.quantize_only {
            Some(only) => QuantParts::quantizing_only(only)?,
            None => QuantParts::keeping_float(&self.float)?,
        };
        if let Some(rho) = self.act_clip {
            q = q.with_int4_clip(rho)?;
        }
        if !self.widths.is_empty() {
            q = q.with_widths(&self.widths)?;
        }
        if let Some(bytes) = self.model_bytes {
            q.check_width_choice("--model-bytes")?;
            if !calibrated {
                return Err(CompressError::BadOptions {
                    recipe: "--model-bytes".into(),
                    what: "calibration data (--calib or --calib-text)".into(),
                });
            }
            q.model_bytes = Some(bytes);
        }
        // INT4 weights: the scheme's, or any sublayer the allocation may give INT4
        let int4 = bits.weight_bits() == Bits::Int4 || self.model_bytes.is_some();
        let gptq = match self.gptq.unwrap_or(Gptq::Auto) {
            Gptq::Auto => calibrated && !self.rtn && int4,
            Gptq::On => true,
            Gptq::Off => false,
        };
        q.gptq = gptq.then_some(GPTQ_DAMP);
        Ok(Some(if self.rtn { q.rtn() } else { q }))
    }

    fn name(&self) -> Option<String> {
        self.bits.map(|b| if self.rtn { format!("{}-rtn", b.name()) } else { b.name().to_string() })
    }
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// A float PocketVLM model directory (dense or low-rank).
    #[arg(long)]
    model: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    quant: QuantArgs,
    /// The uncompressed Hugging Face checkpoint the calibration samples are prepared with (their
    /// targets and image features come from it, as in `compress`); needed with calibration data.
    #[arg(long)]
    reference: Option<PathBuf>,
    #[command(flatten)]
    calib: CalibArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `cargo xtask quantize`: rotate and quantize a float model directory.
pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let calib = args.calib.options();
    let Some(opts) = args.quant.options(calib.is_some())? else {
        anyhow::bail!("quantize needs --bits (w8a8, w4a8 or w4a4)");
    };
    let start = Instant::now();
    // the samples serve GPTQ and the width allocation only: prepared (or read from the cache)
    // when one of them runs
    let samples = match (calib.as_ref().filter(|_| opts.needs_samples()), &args.reference) {
        (None, _) => None,
        (Some(c), Some(hf)) => Some(
            Source::open(hf)
                .and_then(|source| {
                    let stage = crate::progress::bars().stage("calibration samples");
                    pocketvlm_compress::calib::cache::load_or_prepare(
                        &source,
                        None,
                        c,
                        args.calib.calib_cache.as_deref(),
                        &stage,
                    )
                })
                .with_context(|| format!("calibration samples of {}", hf.display()))?,
        ),
        (Some(_), None) => {
            return Err(CompressError::BadOptions {
                recipe: "quantize --calib/--calib-text".into(),
                what: "the uncompressed checkpoint (--reference) to prepare the samples with".into(),
            }
            .into());
        }
    };
    let written = quantize_dir(
        &args.model,
        &args.out,
        &opts,
        args.output.max_shard_bytes(),
        samples.as_ref().map(|s| s.samples.as_slice()),
    )
    .with_context(|| format!("quantizing {}", args.model.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    if args.output.json {
        let out = json_summary(&written.manifest, args.quant.name(), opts.gptq.is_some(), seconds);
        println!("{}", serde_json::Value::Object(out));
    } else {
        print_summary(&written.manifest);
        println!("wrote {} in {seconds:.1} s", args.out.display());
        print_widths(written.widths.as_ref());
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let plan = plan(&args)?;
    let summary = compress(&args.model, &args.out, &plan)
        .with_context(|| format!("compressing {}", args.model.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    if args.output.json {
        let gptq = plan.quant().is_some_and(|q| q.gptq.is_some());
        let mut out = json_summary(&summary.manifest, args.quant.name(), gptq, seconds);
        if let Some(c) = summary.compression() {
            out.insert("beta".into(), c.beta.into());
            out.insert("search".into(), summary.search.iter().map(searched_json).collect());
            out.insert("calib_loss".into(), serde_json::to_value(summary.calib_loss)?);
        }
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    match &summary.report {
        Some(report) => {
            print!("{}", std::fs::read_to_string(&report.text)?);
            println!(
                "wrote {} in {seconds:.1} s (report {}, plot {})",
                summary.out_dir.display(),
                report.text.display(),
                report.svg.display()
            );
        }
        None => {
            print_summary(&summary.manifest);
            println!("wrote {} in {seconds:.2} s", summary.out_dir.display());
        }
    }
    print_widths(summary.widths.as_ref());
    Ok(())
}

/// A searched candidate as JSON: its budgets (null where unset), β and calibration loss (null:
/// it did not fit --model-bytes).
fn searched_json(c: &pocketvlm_compress::Searched) -> serde_json::Value {
    let b = &c.budgets;
    serde_json::json!({
        "qkv_params": b.qkv_params,
        "kv_cache": b.kv_cache,
        "ffn_params": b.ffn_params,
        "vision_qkv_params": b.vision_qkv_params,
        "beta": c.beta,
        "calib_loss": c.loss,
    })
}

/// Where the width allocation's report went, when `--model-bytes` chose the widths.
fn print_widths(widths: Option<&ReportFiles>) {
    if let Some(w) = widths {
        println!("widths chosen under --model-bytes: {} (plot {})", w.text.display(), w.svg.display());
    }
}

/// The plan the command line asks for.
fn plan(args: &Args) -> Result<Plan> {
    let calib = args.calib.options();
    let quant = args.quant.options(calib.is_some())?;
    let calib_cache = args.calib.calib_cache.clone();
    let max_shard_bytes = args.output.max_shard_bytes();
    let progress = crate::progress::bars();
    let Some(method) = Plan::method_of(&args.recipe)? else {
        if args.latent.is_some() {
            anyhow::bail!("--latent chooses a low-rank recipe's latent; the dense recipe has none");
        }
        return Ok(Plan::Dense(DenseOptions { max_shard_bytes, quant, calib, calib_cache, progress }));
    };
    let budgets = budget_grid(args);
    let mut opts = LowRankOptions::new(method, budgets[0], calib);
    if budgets.len() > 1 {
        opts.rank_search = Some(budgets);
    }
    if let Some(latent) = &args.latent {
        opts.latent = latent_named(latent)?;
    }
    opts.beta = args.beta;
    opts.beta_search = args.beta_search.clone();
    opts.calib_cache = calib_cache;
    opts.transform.alpha = args.alpha;
    opts.max_shard_bytes = max_shard_bytes;
    opts.progress = progress;
    opts.quant = quant;
    opts.factor_encoding =
        args.factor_encoding.as_deref().map(|e| Encoding::parse(e, "--factor-encoding")).transpose()?;
    Ok(Plan::LowRank(opts))
}

/// Every combination of the budgets' values (one, without a list; none given: one with no
/// budget, which the compressor rejects).
fn budget_grid(args: &Args) -> Vec<Budgets> {
    let values = |v: &[f64]| if v.is_empty() { vec![None] } else { v.iter().copied().map(Some).collect() };
    let mut grid = Vec::new();
    for qkv_params in values(&args.qkv_params) {
        for ffn_params in values(&args.ffn_params) {
            for vision_qkv_params in values(&args.vision_qkv_params) {
                grid.push(Budgets { qkv_params, kv_cache: args.kv_cache, ffn_params, vision_qkv_params });
            }
        }
    }
    grid
}

/// What `--json` prints for a model written (the same keys for every command that writes one):
/// the recipe, bits and GPTQ, the achieved ratios and ranks of its compression section (1.0 and
/// null for a dense model), K/V cache bytes per token (null for a dense model), bytes per
/// component and the seconds it took.
fn json_summary(
    m: &Manifest,
    bits: Option<String>,
    gptq: bool,
    seconds: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let c = m.compression.as_ref();
    let ratio = |get: fn(&pocketvlm_format::Compression) -> Option<f64>| c.map_or(Some(1.0), get);
    let bytes: serde_json::Map<String, serde_json::Value> =
        m.component_sizes().into_iter().map(|(c, s)| (c.name().to_string(), s.bytes.into())).collect();
    let ranks = c.map(|c| c.text_layers.iter().map(|l| l.latent()).collect::<Vec<_>>());
    let latent = c.and_then(|c| c.text_layers.iter().find_map(|l| l.latent_kind())).map(Latent::name);
    let fields: [(&str, serde_json::Value); 11] = [
        ("recipe", m.source.recipe.clone().into()),
        ("bits", bits.into()),
        ("gptq", gptq.into()),
        ("qkv_params_ratio", ratio(|c| c.achieved.qkv_params).into()),
        ("kv_cache_ratio", ratio(|c| c.achieved.kv_cache).into()),
        ("ffn_params_ratio", ratio(|c| c.achieved.ffn_params).into()),
        ("latent", latent.into()),
        ("ranks", serde_json::to_value(ranks).expect("ranks are plain numbers")),
        ("kv_cache_bytes_per_token", c.map(|c| c.kv_cache.bytes_per_token).into()),
        ("bytes", bytes.into()),
        ("seconds", seconds.into()),
    ];
    fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let data = dir::open(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    dir::read_tokenizer(&args.model, &data.manifest)?;
    print_summary(&data.manifest);
    println!("all {} shards verified (sha256)", data.manifest.shards.len());
    Ok(())
}

fn print_summary(m: &Manifest) {
    let c = &m.model;
    println!("PocketVLM model (format v{}, recipe {})", m.version, m.source.recipe);
    println!(
        "  vision:  {} layers, hidden {}, {} heads, tile {}px, patch {}",
        c.vision.num_hidden_layers,
        c.vision.hidden_size,
        c.vision.num_attention_heads,
        c.vision.image_size,
        c.vision.patch_size
    );
    println!(
        "  text:    {} layers, hidden {}, {}/{} heads (head dim {}), vocab {}",
        c.text.num_hidden_layers,
        c.text.hidden_size,
        c.text.num_attention_heads,
        c.text.num_key_value_heads,
        c.text.head_dim,
        c.text.vocab_size
    );
    println!(
        "  image:   {} tokens per tile, longest edge {}",
        m.processor.image_seq_len, m.processor.longest_edge
    );
    if let Some(z) = &m.compression {
        let ranks: Vec<String> =
            z.text_layers.iter().map(|l| l.latent().map_or("dense".into(), |r| r.to_string())).collect();
        let shared = match z.text_layers.iter().find_map(|l| l.latent_kind()) {
            Some(Latent::Kv) => "K/V latent (Q dense)",
            _ => "QKV latent",
        };
        println!("  low-rank: {} ({shared} ranks per layer: {})", z.recipe, ranks.join(" "));
        let kv = &z.kv_cache;
        println!(
            "  KV cache: {} bytes per token ({:.1} % of dense f16 K and V)",
            kv.bytes_per_token,
            100.0 * kv.bytes_per_token as f64 / kv.dense_bytes_per_token.max(1) as f64
        );
    }
    if let Some(q) = &m.quantization {
        let tables: Vec<&str> = q.tables.iter().map(|t| t.tensor.as_str()).collect();
        let rotation = if q.residual_rotation.is_some() { "rotated" } else { "no rotation" };
        let gptq = if q.gptq_damping.is_some() { ", GPTQ" } else { "" };
        println!(
            "  low-bit: {} ({rotation}{gptq}; {} quantized linear layers; quantized tables: {})",
            q.scheme,
            q.layers.len(),
            if tables.is_empty() { "none".to_string() } else { tables.join(", ") }
        );
    }
    println!("  {:<11} {:>12} {:>12}", "component", "params", "bytes");
    for (component, size) in m.component_sizes() {
        println!("  {:<11} {:>12} {:>12}", component.name(), size.params, human_bytes(size.bytes));
    }
    println!(
        "  {} tensors in {} shards, {}",
        m.tensors.len(),
        m.shards.len(),
        human_bytes(m.total_shard_bytes())
    );
    if !m.source.defaulted_keys.is_empty() {
        println!("  config keys resolved to reference defaults: {}", m.source.defaulted_keys.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use pocketvlm_format::quant::QuantError;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// `--bits` and `--group-size` as the command line gives them.
    fn parse(extra: &[&str]) -> Result<Option<QuantOptions>, String> {
        parse_with(extra, false)
    }

    /// [`parse`] when calibration data is (`calibrated`) or is not given.
    fn parse_with(extra: &[&str], calibrated: bool) -> Result<Option<QuantOptions>, String> {
        let base = ["xtask", "--model", "m", "--out", "o"];
        let cli = Cli::try_parse_from(base.iter().chain(extra)).map_err(|e| {
            let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<QuantError>());
            format!("{source:?}")
        })?;
        cli.args.quant.options(calibrated).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn bits_and_group_size_parse_with_typed_errors() {
        assert_eq!(parse(&[]).unwrap(), None);
        let q = parse(&["--bits", "w4a8", "--group-size", "128"]).unwrap().unwrap();
        assert_eq!((q.scheme, q.group), (Scheme::W4A8, Some(128)));
        assert_eq!(parse(&["--bits", "w8a8"]).unwrap().unwrap().scheme, Scheme::W8A8);
        let unknown = parse(&["--bits", "w3a8"]).unwrap_err();
        assert_eq!(unknown, format!("{:?}", Some(&QuantError::UnknownScheme("w3a8".into()))));
        for (bits, group) in [("w4a4", "96"), ("w4a8", "32"), ("w8a8", "64")] {
            let err = parse(&["--bits", bits, "--group-size", group]).unwrap_err();
            assert!(err.starts_with("Quant(UnsupportedGroup"), "{bits} {group}: {err}");
        }
        assert!(parse(&["--group-size", "64"]).unwrap_err().starts_with("BadOptions"));
        assert!(parse(&["--rtn"]).unwrap_err().starts_with("BadOptions"));
        assert!(parse(&["--float", "vision"]).unwrap_err().starts_with("BadOptions"));
        for bad in ["attention", "decoder.x", "decoder.3-1", "decoder.2.ffn", "decoder.128"] {
            assert!(
                parse(&["--bits", "w8a8", "--float", bad]).unwrap_err().starts_with("BadOptions"),
                "{bad}"
            );
        }
        let q = parse(&["--bits", "w8a8", "--float", "decoder.1.mlp,decoder.4-5"]).unwrap().unwrap();
        let layers: Vec<(bool, bool)> = (0..7).map(|i| q.parts.decoder_layer(i)).collect();
        let want = [
            (true, true),
            (true, false),
            (true, true),
            (true, true),
            (false, false),
            (false, false),
            (true, true),
        ];
        assert_eq!(layers, want);
        let q = parse(&["--bits", "w8a8", "--quantize-only", "decoder.2.attention"]).unwrap().unwrap();
        let layers: Vec<(bool, bool)> = (0..4).map(|i| q.parts.decoder_layer(i)).collect();
        assert_eq!(layers, [(false, false), (false, false), (true, false), (false, false)]);
        assert!(!q.parts.vision && !q.parts.connector && !q.parts.embeddings && !q.parts.lm_head);
        assert!(parse(&["--quantize-only", "lm_head"]).unwrap_err().starts_with("BadOptions"));
        let q = parse(&["--bits", "w4a4", "--float", "vision,lm_head", "--rtn"]).unwrap().unwrap();
        assert!(!q.parts.vision && !q.parts.lm_head && q.parts.connector && q.parts.embeddings);
        assert!(q.rotate.is_none());
        assert!(parse(&["--gptq", "on"]).unwrap_err().starts_with("BadOptions"));
        assert!(parse(&["--bits", "w4a8", "--gptq", "maybe"]).is_err());
        // GPTQ: on by default for INT4 weights with calibration data, never for the RTN baseline
        let gptq = |extra: &[&str], calibrated| parse_with(extra, calibrated).unwrap().unwrap().gptq;
        assert_eq!(gptq(&["--bits", "w4a8"], true), Some(GPTQ_DAMP));
        assert_eq!(gptq(&["--bits", "w4a4"], true), Some(GPTQ_DAMP));
        assert_eq!(gptq(&["--bits", "w4a8"], false), None);
        assert_eq!(gptq(&["--bits", "w8a8"], true), None);
        assert_eq!(gptq(&["--bits", "w4a8", "--rtn"], true), None);
        assert_eq!(gptq(&["--bits", "w4a8", "--gptq", "off"], true), None);
        assert_eq!(gptq(&["--bits", "w8a8", "--gptq", "on"], false), Some(GPTQ_DAMP));
        let q = parse(&["--bits", "w4a4", "--act-clip", "0.8"]).unwrap().unwrap();
        assert_eq!(q.int4_clip, 0.8);
        assert!(parse(&["--act-clip", "0.8"]).unwrap_err().starts_with("BadOptions"));
        for bad in ["0", "1.5", "NaN"] {
            let err = parse(&["--bits", "w4a4", "--act-clip", bad]).unwrap_err();
            assert!(err.starts_with("Quant(BadClipRatio"), "{bad}: {err}");
        }
    }

    #[test]
    fn sublayer_widths_and_a_byte_budget_parse_with_typed_errors() {
        use pocketvlm_compress::quant::widths::Sublayer::{Attention, Mlp};
        use pocketvlm_compress::quant::widths::Unit::{Decoder, Embeddings, LmHead};
        use pocketvlm_compress::quant::widths::Width;
        let q = parse(&[
            "--bits",
            "w4a8",
            "--widths",
            "decoder.0-1.mlp=int8,decoder.2=float,decoder.1.mlp=int4,decoder.3.attention=int4g128",
        ])
        .unwrap()
        .unwrap();
        let widths: Vec<_> = q.unit_widths.iter().map(|(k, v)| (*k, *v)).collect();
        let g128 = Width::Int4 { group: Some(128) };
        assert_eq!(
            widths,
            [(Decoder(0, Mlp), Width::Int8), (Decoder(1, Mlp), Width::INT4), (Decoder(3, Attention), g128)]
        );
        assert_eq!(q.parts.decoder_layer(2), (false, false));
        assert_eq!(q.parts.decoder_layer(1), (true, true));
        // a float sublayer made integer again
        let q = parse(&["--bits", "w8a8", "--float", "decoder", "--widths", "decoder.3.attention=int4"])
            .unwrap()
            .unwrap();
        assert_eq!(q.parts.decoder_layer(3), (true, false));
        assert_eq!(q.unit_widths.get(&Decoder(3, Attention)), Some(&Width::INT4));
        // the embeddings and lm_head take widths too; float is the same as --float
        let q = parse(&["--bits", "w8a8", "--widths", "embeddings=int4,lm_head=float"]).unwrap().unwrap();
        assert_eq!(q.unit_widths.get(&Embeddings), Some(&Width::INT4));
        assert_eq!(q.unit_widths.get(&LmHead), None);
        assert!(q.parts.embeddings && !q.parts.lm_head);
        let bad = [
            "decoder.1=int2",
            "decoder.1",
            "head=int4",
            "vision=int4",
            "decoder.200=int8",
            "decoder.1=int4g96",
        ];
        for bad in bad.into_iter().chain(["embeddings=int4g64"]) {
            let err = parse(&["--bits", "w8a8", "--widths", bad]).unwrap_err();
            assert!(err.starts_with("BadOptions"), "{bad}: {err}");
        }
        // other widths pair with INT8 activations only; both options need --bits
        assert!(
            parse(&["--bits", "w4a4", "--widths", "decoder.0=int8"]).unwrap_err().starts_with("BadOptions")
        );
        assert!(parse(&["--widths", "decoder.0=int8"]).unwrap_err().starts_with("BadOptions"));
        assert!(parse(&["--model-bytes", "1000"]).unwrap_err().starts_with("BadOptions"));
        // the budget needs calibration data, and turns GPTQ on (INT4 may be chosen anywhere)
        assert!(parse(&["--bits", "w8a8", "--model-bytes", "1000"]).unwrap_err().starts_with("BadOptions"));
        let q = parse_with(&["--bits", "w8a8", "--model-bytes", "1000"], true).unwrap().unwrap();
        assert_eq!((q.model_bytes, q.gptq), (Some(1000), Some(GPTQ_DAMP)));
        assert!(parse_with(&["--bits", "w4a4", "--model-bytes", "1000"], true).is_err());
        assert!(
            parse_with(&["--bits", "w8a8", "--model-bytes", "9", "--widths", "decoder.0=int8"], true)
                .is_err()
        );
    }

    /// Budgets given several values search every combination (the searched plan's first
    /// candidate stands in its budgets); one value each is a single candidate, no search.
    #[test]
    fn budget_lists_search_every_combination() {
        let args = |extra: &[&str]| {
            let base = ["xtask", "--model", "m", "--out", "o", "--recipe", "laser", "--calib-text", "t"];
            Cli::try_parse_from(base.iter().chain(extra)).unwrap().args
        };
        let a = args(&["--qkv-params", "0.8,1", "--ffn-params", "0.5,0.75,1", "--kv-cache", "0.5"]);
        let grid = budget_grid(&a);
        assert_eq!(grid.len(), 6);
        for q in [0.8, 1.0] {
            for f in [0.5, 0.75, 1.0] {
                let want = Budgets {
                    qkv_params: Some(q),
                    kv_cache: Some(0.5),
                    ffn_params: Some(f),
                    ..Budgets::default()
                };
                assert_eq!(grid.iter().filter(|b| **b == want).count(), 1, "{want:?}");
            }
        }
        let Plan::LowRank(opts) = plan(&a).unwrap() else { panic!("a low-rank plan") };
        assert_eq!((opts.budgets, opts.rank_search), (grid[0], Some(grid.clone())));
        let Plan::LowRank(one) = plan(&args(&["--qkv-params", "0.9"])).unwrap() else { panic!("low-rank") };
        assert_eq!(one.budgets, Budgets { qkv_params: Some(0.9), ..Budgets::default() });
        assert_eq!(one.rank_search, None);
    }

    /// `--calib` and `--calib-text` together calibrate on both.
    #[test]
    fn images_and_text_together_calibrate_on_both() {
        let base = ["xtask", "--model", "m", "--out", "o", "--calib", "pics", "--calib-text", "t.txt"];
        let c = Cli::try_parse_from(base).unwrap().args.calib.options().unwrap();
        let want = CalibSource::Both { images: "pics".into(), text: "t.txt".into() };
        assert_eq!(format!("{:?}", c.source), format!("{want:?}"));
        assert_eq!(c.max_tokens, 256);
    }
}
