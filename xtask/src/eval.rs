//! `cargo xtask eval`: fidelity of compressed models against the uncompressed checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use pocketvlm_compress::checkpoint::Source;
use pocketvlm_compress::eval::{EvalOptions, Text, evaluate};
use pocketvlm_compress::model::CpuModel;

#[derive(clap::Args)]
pub struct Args {
    /// PocketVLM model directory to evaluate (repeat to evaluate several against one reference pass).
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// The uncompressed Hugging Face checkpoint directory.
    #[arg(long)]
    reference: PathBuf,
    /// Held-out English text for perplexity, reported under its file name (repeat for several:
    /// each is reported, then their mean; see BENCHMARKS.md for the ones we use).
    #[arg(long, required = true)]
    text: Vec<PathBuf>,
    /// Tokens of each text to score (at most).
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
    let source =
        Source::open(&args.reference).with_context(|| format!("reading {}", args.reference.display()))?;
    let reference = CpuModel::from_source(&source)?;
    let meta = &source.meta;
    let chat = pocketvlm_processor::Prompt::new(
        &meta.tokenizer_bytes,
        &meta.tokenizer,
        meta.processor.image_seq_len,
    )
    .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let stop = pocketvlm_compress::calib::data::stop_ids(meta, &chat);
    let models = args
        .model
        .iter()
        .map(|m| CpuModel::from_format(m).with_context(|| format!("loading {}", m.display())))
        .collect::<Result<Vec<_>>>()?;
    let contents = args
        .text
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> =
        args.text.iter().map(|p| p.file_stem().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let texts: Vec<Text<'_>> = names.iter().zip(&contents).map(|(name, text)| Text { name, text }).collect();
    let opts =
        EvalOptions { max_tokens: args.max_tokens, window: args.window, answer_tokens: args.answer_tokens };
    let refs: Vec<&CpuModel> = models.iter().collect();
    let stage = crate::progress::bars().stage("eval");
    let results = evaluate(&refs, &reference, &chat, &stop, &texts, &opts, &stage)?;
    drop(stage);
    let seconds = start.elapsed().as_secs_f64();
    for (path, r) in args.model.iter().zip(&results) {
        if args.json {
            let mut v = serde_json::to_value(r)?;
            v["model"] = path.display().to_string().into();
            v["seconds"] = seconds.into();
            println!("{v}");
        } else {
            println!("{}:", path.display());
            for t in &r.texts {
                println!(
                    "  {}: perplexity {:.3} (reference {:.3}, {:+.2}%), KL {:.4}, top-1 agreement {:.2}% over {} tokens",
                    t.name,
                    t.perplexity,
                    t.reference_perplexity,
                    100.0 * t.perplexity_increase(),
                    t.kl,
                    100.0 * t.top1_agreement,
                    t.tokens
                );
            }
            println!(
                "  mean of {} texts: perplexity {:.3} (reference {:.3}; worst text {:+.2}%), KL {:.4}, top-1 agreement {:.2}%",
                r.texts.len(),
                r.perplexity,
                r.reference_perplexity,
                100.0 * r.worst_perplexity_increase,
                r.kl,
                100.0 * r.top1_agreement
            );
            println!(
                "  answers: perplexity {:.3} (reference {:.3}) over {} tokens",
                r.answer_perplexity, r.reference_answer_perplexity, r.answer_tokens
            );
        }
    }
    if !args.json {
        println!("evaluated in {seconds:.1} s");
    }
    Ok(())
}
