//! `cargo xtask caption`: run a converted model natively on one image or text prompt.
//!
//! With `--json`, prints one object: `prompt_ids`, `generated_ids`, `text`, `top10` (`[id, logit]`
//! at the last prompt position), `timings_ms` (`preprocess`, `vision`, `prefill`, `decode`),
//! `tokens_per_s` (decode).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use pocketvlm_format::dir;
use pocketvlm_processor::decode_image;
use pocketvlm_runtime::engine::{Engine, Request, now_ms};
use pocketvlm_runtime::model::sampling::top_k;
use pocketvlm_runtime::{DeviceOptions, Gpu};

pub const DEFAULT_PROMPT: &str = "Can you describe this image?";

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
}

pub fn run(args: Args) -> Result<()> {
    pollster::block_on(caption(args))
}

async fn caption(args: Args) -> Result<()> {
    let (text, image) = match (&args.image, &args.text) {
        (Some(path), None) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let image = decode_image(&bytes).with_context(|| format!("decoding {}", path.display()))?;
            (args.prompt.clone().unwrap_or_else(|| DEFAULT_PROMPT.to_string()), Some(image))
        }
        (None, Some(text)) => (text.clone(), None),
        _ => bail!("give either --image <file> [--prompt <text>] or --text <prompt>"),
    };
    let data = dir::open(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    let tokenizer = dir::read_tokenizer(&args.model, &data.manifest)?;
    let gpu = Gpu::new(&DeviceOptions::default()).await?;
    let engine = Engine::load(gpu, &data, &tokenizer).await?;
    let mut request = Request::caption(&text, image, args.max_new_tokens);
    if args.no_split {
        request.split = Some(false);
    }
    let mut session = engine.start(request).await?;
    let mut out = String::new();
    let decode_start = now_ms();
    while let Some(piece) = session.next(&engine).await? {
        if !args.json {
            print!("{}", piece.text);
            std::io::stdout().flush().ok();
        }
        out.push_str(&piece.text);
    }
    let decode_s = (now_ms() - decode_start) / 1e3;
    let generated = session.generated().to_vec();
    let tokens_per_s = if decode_s > 0.0 { generated.len() as f64 / decode_s } else { 0.0 };
    let t = session.timings;
    if args.json {
        let top10: Vec<(u32, f32)> = top_k(&session.prompt_logits, 10);
        let json = serde_json::json!({
            "prompt_ids": session.prompt_ids,
            "generated_ids": generated,
            "text": out,
            "top10": top10,
            "timings_ms": {
                "preprocess": t.preprocess_ms,
                "vision": t.vision_ms,
                "prefill": t.prefill_ms,
                "decode": t.decode_ms,
            },
            "tokens_per_s": tokens_per_s,
        });
        println!("{json}");
    } else {
        println!();
        eprintln!(
            "{} prompt tokens, {} generated; preprocess {:.0} ms, vision {:.0} ms, prefill {:.0} ms, decode {:.1} tok/s",
            session.prompt_ids.len(),
            generated.len(),
            t.preprocess_ms,
            t.vision_ms,
            t.prefill_ms,
            tokens_per_s
        );
    }
    Ok(())
}
