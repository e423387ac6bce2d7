//! `cargo xtask eval`: fidelity of compressed models against the uncompressed checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use pocketvlm_compress::checkpoint::SourceMeta;
use pocketvlm_compress::eval::{EvalOptions, evaluate};
use pocketvlm_compress::model::CpuModel;

#[derive(clap::Args)]
pub struct Args {
    /// PocketVLM model directory to evaluate (repeat to evaluate several against one reference pass).
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// The uncompressed Hugging Face checkpoint directory.
    #[arg(long)]
    reference: PathBuf,
    /// Held-out English text for perplexity (see BENCHMARKS.md for the one we use).
    #[arg(long)]
    text: PathBuf,
    /// Text tokens to score.
    #[arg(long, default_value_t = 32768)]
    max_tokens: usize,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Longest reference answer to the chat prompts, in tokens.
    #[arg(long, default_value_t = 48)]
    answer_tokens: usize,
    /// Print one JSON object per model on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let reference = CpuModel::from_hf(&args.reference)
        .with_context(|| format!("loading {}", args.reference.display()))?;
    let meta = SourceMeta::read(&args.reference)?;
    let chat = pocketvlm_processor::Prompt::new(
        &meta.tokenizer_bytes,
        &meta.tokenizer,
        meta.processor.image_seq_len,
    )
    .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let stop = pocketvlm_compress::calib::data::stop_ids(&meta, &chat);
    let models = args
        .model
        .iter()
        .map(|m| CpuModel::from_format(m).with_context(|| format!("loading {}", m.display())))
        .collect::<Result<Vec<_>>>()?;
    let text =
        std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let opts =
        EvalOptions { max_tokens: args.max_tokens, window: args.window, answer_tokens: args.answer_tokens };
    let refs: Vec<&CpuModel> = models.iter().collect();
    let stage = crate::progress::bars().stage("eval");
    let results = evaluate(&refs, &reference, &chat, &stop, &text, &opts, &stage)?;
    drop(stage);
    let seconds = start.elapsed().as_secs_f64();
    for (path, r) in args.model.iter().zip(&results) {
        if args.json {
            let mut v = serde_json::to_value(r)?;
            v["model"] = path.display().to_string().into();
            v["seconds"] = seconds.into();
            println!("{v}");
        } else {
            println!(
                "{}: perplexity {:.3} (reference {:.3}), KL {:.4}, top-1 agreement {:.2}% over {} tokens; \
                 answer perplexity {:.3} (reference {:.3}) over {} tokens",
                path.display(),
                r.perplexity,
                r.reference_perplexity,
                r.kl,
                100.0 * r.top1_agreement,
                r.tokens,
                r.answer_perplexity,
                r.reference_answer_perplexity,
                r.answer_tokens
            );
        }
    }
    if !args.json {
        println!("evaluated in {seconds:.1} s");
    }
    Ok(())
}
