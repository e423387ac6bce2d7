//! Fidelity of compressed models against the uncompressed reference, on the CPU model.
//!
//! * **Text perplexity**: a held-out English text, tokenized and cut into non-overlapping
//!   windows; every token but a window's first is predicted from the tokens before it in its
//!   window. Reported for each model and for the reference.
//! * **KL and top-1 agreement** at the same positions: `KL(p_ref ‖ p_model)` averaged over
//!   positions, and how often both models' most likely next token is the same.
//! * **Answer perplexity**: the reference answers a set of chat prompts greedily; each model's
//!   perplexity on those answers (teacher-forced) measures how well it keeps the reference's
//!   behaviour in chat.

use candle_core::{D, Tensor};
use pocketvlm_processor::{Message, Prompt as ChatPrompt};

use crate::error::{CompressError, Result};
use crate::model::CpuModel;
use crate::progress::Stage;

/// Chat prompts for the answer-perplexity check.
pub const CHAT_PROMPTS: [&str; 12] = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain what a rainbow is to a child.",
    "Write a short poem about the sea.",
    "What are the main differences between cats and dogs as pets?",
    "How do I boil an egg?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "List some good habits for studying.",
    "What is photosynthesis?",
    "Describe a busy city street in the morning.",
    "How can I save money on groceries?",
];

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Tokens of the text to score (at most; the text may be shorter).
    pub max_tokens: usize,
    /// Window length in tokens.
    pub window: usize,
    /// Longest reference answer, in tokens.
    pub answer_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { max_tokens: 32768, window: 512, answer_tokens: 48 }
    }
}

/// One model's fidelity.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Fidelity {
    pub perplexity: f64,
    pub reference_perplexity: f64,
    pub kl: f64,
    pub top1_agreement: f64,
    /// Scored text positions.
    pub tokens: usize,
    pub answer_perplexity: f64,
    pub reference_answer_perplexity: f64,
    pub answer_tokens: usize,
}

/// Per-row `log_softmax` of `[rows, vocab]` logits.
fn log_softmax(z: &Tensor) -> Result<Tensor> {
    let shifted = z.broadcast_sub(&z.max_keepdim(D::Minus1)?)?;
    Ok(shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?)
}

/// Running sums for one model.
#[derive(Default)]
struct Acc {
    nll: f64,
    ref_nll: f64,
    kl: f64,
    agree: usize,
    n: usize,
}

/// Add positions `0..rows-1` of a window: row `i` predicts `targets[i]`.
fn score(acc: &mut Acc, reference: &Tensor, model: &Tensor, targets: &[u32], kl: bool) -> Result<()> {
    let rows = targets.len();
    let lr = log_softmax(&reference.narrow(0, 0, rows)?)?;
    let lm = log_softmax(&model.narrow(0, 0, rows)?)?;
    let lr_rows = lr.to_vec2::<f32>()?;
    let lm_rows = lm.to_vec2::<f32>()?;
    if kl {
        let k = (lr.exp()? * (&lr - &lm)?)?.sum(D::Minus1)?.to_vec1::<f32>()?;
        acc.kl += k.iter().map(|&v| v as f64).sum::<f64>();
        let am = lm.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let ar = lr.argmax(D::Minus1)?.to_vec1::<u32>()?;
        acc.agree += am.iter().zip(&ar).filter(|(a, b)| a == b).count();
    }
    for (i, &t) in targets.iter().enumerate() {
        acc.nll -= lm_rows[i][t as usize] as f64;
        acc.ref_nll -= lr_rows[i][t as usize] as f64;
    }
    acc.n += rows;
    Ok(())
}

/// Evaluate `models` against `reference` on `text` (tokenized with `chat`).
pub fn evaluate(
    models: &[&CpuModel],
    reference: &CpuModel,
    chat: &ChatPrompt,
    stop: &[u32],
    text: &str,
    opts: &EvalOptions,
    stage: &Stage,
) -> Result<Vec<Fidelity>> {
    let ids = chat.tokenize(text, false).map_err(|e| CompressError::Tokenizer(e.to_string()))?;
    let ids = &ids[..ids.len().min(opts.max_tokens)];
    let window = opts.window.max(2);
    let windows: Vec<&[u32]> = ids.chunks(window).filter(|w| w.len() >= 2).collect();
    stage.set_total((windows.len() + CHAT_PROMPTS.len()) as u64);
    let mut text_acc: Vec<Acc> = models.iter().map(|_| Acc::default()).collect();
    for w in &windows {
        let ref_logits =
            reference.text.logits(&reference.text.forward(&reference.text.embed(w)?, None, None)?)?;
        for (m, acc) in models.iter().zip(text_acc.iter_mut()) {
            let logits = m.text.logits(&m.text.forward(&m.text.embed(w)?, None, None)?)?;
            score(acc, &ref_logits, &logits, &w[1..], true)?;
        }
        stage.step();
    }
    let mut answer_acc: Vec<Acc> = models.iter().map(|_| Acc::default()).collect();
    for p in CHAT_PROMPTS {
        let tok = |e: pocketvlm_processor::ProcessorError| CompressError::Tokenizer(e.to_string());
        let rendered = chat.render(&[Message::text("user", p)], true).map_err(tok)?;
        let prompt_ids = chat.encode(&rendered, &[]).map_err(tok)?;
        let answer = reference.generate_from_embeddings(
            &reference.text.embed(&prompt_ids)?,
            opts.answer_tokens,
            stop,
        )?;
        let mut all = prompt_ids.clone();
        all.extend(&answer);
        let start = prompt_ids.len() - 1;
        let n = answer.len();
        let ref_logits = reference
            .text
            .logits(&reference.text.forward(&reference.text.embed(&all)?, None, None)?)?
            .narrow(0, start, n)?;
        for (m, acc) in models.iter().zip(answer_acc.iter_mut()) {
            let logits =
                m.text.logits(&m.text.forward(&m.text.embed(&all)?, None, None)?)?.narrow(0, start, n)?;
            score(acc, &ref_logits, &logits, &answer, false)?;
        }
        stage.step();
    }
    Ok(text_acc
        .iter()
        .zip(&answer_acc)
        .map(|(t, a)| {
            let n = t.n.max(1) as f64;
            let na = a.n.max(1) as f64;
            Fidelity {
                perplexity: (t.nll / n).exp(),
                reference_perplexity: (t.ref_nll / n).exp(),
                kl: t.kl / n,
                top1_agreement: t.agree as f64 / n,
                tokens: t.n,
                answer_perplexity: (a.nll / na).exp(),
                reference_answer_perplexity: (a.ref_nll / na).exp(),
                answer_tokens: a.n,
            }
        })
        .collect())
}
