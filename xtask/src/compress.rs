//! `cargo xtask compress` and `cargo xtask inspect`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use pocketvlm_compress::{ConvertOptions, Recipe, convert};
use pocketvlm_format::{Manifest, dir};

use crate::util::human_bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json, processor configs).
    #[arg(long)]
    model: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Conversion recipe.
    #[arg(long, default_value = "dense")]
    recipe: String,
    /// Largest shard in MiB.
    #[arg(long, default_value_t = 32)]
    shard_mib: u64,
    /// Print one JSON object on stdout instead of the human-readable summary.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// PocketVLM model directory.
    #[arg(long)]
    model: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let recipe: Recipe = args.recipe.parse()?;
    let start = Instant::now();
    let options = ConvertOptions { recipe, max_shard_bytes: args.shard_mib << 20 };
    let summary = convert(&args.model, &args.out, &options)
        .with_context(|| format!("converting {}", args.model.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        let bytes: serde_json::Map<String, serde_json::Value> = summary
            .manifest
            .component_sizes()
            .into_iter()
            .map(|(c, s)| (c.name().to_string(), s.bytes.into()))
            .collect();
        let out = serde_json::json!({
            "recipe": recipe.name(),
            "bits": null,
            "qkv_params_ratio": 1.0,
            "kv_cache_ratio": 1.0,
            "ffn_params_ratio": 1.0,
            "ranks": null,
            "bytes": bytes,
            "seconds": seconds,
        });
        println!("{out}");
    } else {
        print_summary(&summary.manifest);
        println!("wrote {} in {seconds:.2} s", summary.out_dir.display());
    }
    Ok(())
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
