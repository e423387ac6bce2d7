//! Fidelity of compressed models against the uncompressed reference, on the CPU model.
//!
//! * **Text perplexity**: held-out English texts, each tokenized and cut into non-overlapping
//!   windows; every token but a window's first is predicted from the tokens before it in its
//!   window. Reported per text for each model and for the reference, and averaged over the
//!   texts (each text weighing the same, whatever its length), with the worst text's relative
//!   increase `ppl_model / ppl_ref − 1`.
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

/// A held-out text and the name it is reported under.
#[derive(Clone, Copy, Debug)]
pub struct Text<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// One model's fidelity on one text.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TextFidelity {
    pub name: String,
    pub perplexity: f64,
    pub reference_perplexity: f64,
    pub kl: f64,
    pub top1_agreement: f64,
    /// Scored positions.
    pub tokens: usize,
}

impl TextFidelity {
    /// `ppl_model / ppl_ref − 1`.
    pub fn perplexity_increase(&self) -> f64 {
        self.perplexity / self.reference_perplexity - 1.0
    }
}

/// One model's fidelity: each text's, their means, and the chat answers'.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Fidelity {
    /// Every text, in the order given.
    pub texts: Vec<TextFidelity>,
    /// Means over the texts, each text weighing the same.
    pub perplexity: f64,
    pub reference_perplexity: f64,
    pub kl: f64,
    pub top1_agreement: f64,
    /// The largest [`TextFidelity::perplexity_increase`] of any text.
    pub worst_perplexity_increase: f64,
    /// Scored text positions, all texts together.
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

impl Acc {
    fn text(&self, name: &str) -> TextFidelity {
        let n = self.n.max(1) as f64;
        TextFidelity {
            name: name.to_string(),
            perplexity: (self.nll / n).exp(),
            reference_perplexity: (self.ref_nll / n).exp(),
            kl: self.kl / n,
            top1_agreement: self.agree as f64 / n,
            tokens: self.n,
        }
    }
}

/// Evaluate `models` against `reference` on `texts` (tokenized with `chat`: at most
/// `opts.max_tokens` of each) and on the chat answers.
pub fn evaluate(
    models: &[&CpuModel],
    reference: &CpuModel,
    chat: &ChatPrompt,
    stop: &[u32],
    texts: &[Text<'_>],
    opts: &EvalOptions,
    stage: &Stage,
) -> Result<Vec<Fidelity>> {
    if texts.is_empty() {
        return Err(CompressError::BadOptions {
            recipe: "eval".into(),
            what: "at least one held-out text".into(),
        });
    }
    let window = opts.window.max(2);
    let tokenized = texts
        .iter()
        .map(|t| {
            let ids = chat.tokenize(t.text, false).map_err(|e| CompressError::Tokenizer(e.to_string()))?;
            Ok(ids[..ids.len().min(opts.max_tokens)].to_vec())
        })
        .collect::<Result<Vec<Vec<u32>>>>()?;
    let windows = |ids: &[u32]| ids.chunks(window).filter(|w| w.len() >= 2).count();
    stage.set_total((tokenized.iter().map(|ids| windows(ids)).sum::<usize>() + CHAT_PROMPTS.len()) as u64);
    // per model, per text
    let mut text_scores: Vec<Vec<TextFidelity>> = models.iter().map(|_| Vec::new()).collect();
    for (t, ids) in texts.iter().zip(&tokenized) {
        let mut accs: Vec<Acc> = models.iter().map(|_| Acc::default()).collect();
        for w in ids.chunks(window).filter(|w| w.len() >= 2) {
            let ref_logits =
                reference.text.logits(&reference.text.forward(&reference.text.embed(w)?, None, None)?)?;
            for (m, acc) in models.iter().zip(accs.iter_mut()) {
                let logits = m.text.logits(&m.text.forward(&m.text.embed(w)?, None, None)?)?;
                score(acc, &ref_logits, &logits, &w[1..], true)?;
            }
            stage.step();
        }
        for (scores, acc) in text_scores.iter_mut().zip(&accs) {
            scores.push(acc.text(t.name));
        }
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
    Ok(text_scores
        .into_iter()
        .zip(&answer_acc)
        .map(|(texts, a)| fidelity(texts, a.text("answers")))
        .collect())
}

/// Means over `texts`, and the answers' perplexities.
fn fidelity(texts: Vec<TextFidelity>, answers: TextFidelity) -> Fidelity {
    let count = texts.len().max(1) as f64;
    let mean = |f: fn(&TextFidelity) -> f64| texts.iter().map(f).sum::<f64>() / count;
    Fidelity {
        perplexity: mean(|t| t.perplexity),
        reference_perplexity: mean(|t| t.reference_perplexity),
        kl: mean(|t| t.kl),
        top1_agreement: mean(|t| t.top1_agreement),
        worst_perplexity_increase: texts
            .iter()
            .map(TextFidelity::perplexity_increase)
            .fold(f64::NEG_INFINITY, f64::max),
        tokens: texts.iter().map(|t| t.tokens).sum(),
        answer_perplexity: answers.perplexity,
        reference_answer_perplexity: answers.reference_perplexity,
        answer_tokens: answers.tokens,
        texts,
    }
}
