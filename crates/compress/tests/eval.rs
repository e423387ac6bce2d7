//! `eval::evaluate` on the tiny fixture: several held-out texts, each scored and reported, then
//! averaged with each text weighing the same.

mod common;

use common::fixture;
use pocketvlm_compress::calib::data::stop_ids;
use pocketvlm_compress::checkpoint::Source;
use pocketvlm_compress::eval::{EvalOptions, Text, evaluate};
use pocketvlm_compress::model::CpuModel;
use pocketvlm_compress::progress::Progress;
use pocketvlm_compress::quant::QuantOptions;
use pocketvlm_compress::{CompressError, DenseOptions, Plan, compress};
use pocketvlm_processor::Prompt;

const FICTION: &str = "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own \
    amusement, never took up any book but the Baronetage; there he found occupation for an idle hour, \
    and consolation in a distressed one.";
const DIALOGUE: &str = "HAMLET: Who's there?\nHORATIO: Friends to this ground.\nMARCELLUS: And liegemen \
    to the Dane.\nHAMLET: Give you good night.\nHORATIO: O, farewell, honest soldier. Who hath relieved you?";

#[test]
fn texts_are_scored_each_and_averaged() {
    let source = Source::open(&fixture()).unwrap();
    let meta = &source.meta;
    let reference = CpuModel::from_source(&source).unwrap();
    let chat = Prompt::new(&meta.tokenizer_bytes, &meta.tokenizer, meta.processor.image_seq_len).unwrap();
    let stop = stop_ids(meta, &chat);
    let tmp = tempfile::tempdir().unwrap();
    let quant = Some(QuantOptions::parse("w4a8", None).unwrap());
    compress(&fixture(), tmp.path(), &Plan::Dense(DenseOptions { quant, ..Default::default() })).unwrap();
    let quantized = CpuModel::from_format(tmp.path()).unwrap();

    let texts = [Text { name: "fiction", text: FICTION }, Text { name: "dialogue", text: DIALOGUE }];
    let opts = EvalOptions { max_tokens: 40, window: 16, answer_tokens: 4 };
    let stage = Progress::silent().stage("eval");
    let results =
        evaluate(&[&reference, &quantized], &reference, &chat, &stop, &texts, &opts, &stage).unwrap();

    // Scored positions: every token of each window but its first, of at most 40 tokens a text.
    let scored = |text: &str| {
        let n = chat.tokenize(text, false).unwrap().len().min(40);
        (0..n).step_by(16).map(|start| (n - start).min(16) - 1).sum::<usize>()
    };
    let want: Vec<(&str, usize)> = texts.iter().map(|t| (t.name, scored(t.text))).collect();
    for r in &results {
        let got: Vec<(&str, usize)> = r.texts.iter().map(|t| (t.name.as_str(), t.tokens)).collect();
        assert_eq!(got, want);
        assert_eq!(r.tokens, want.iter().map(|w| w.1).sum::<usize>());
    }
    // The reference against itself: the same perplexity, no divergence, the same top-1 token.
    for t in &results[0].texts {
        assert_eq!(t.perplexity, t.reference_perplexity, "{}", t.name);
        assert!(t.kl.abs() < 1e-6 && t.top1_agreement == 1.0, "{t:?}");
    }
    // The quantized model diverges; the summary is the plain mean over the texts and their worst.
    let q = &results[1];
    assert!(q.texts.iter().all(|t| t.kl > 0.0), "{q:?}");
    let mean =
        |f: fn(&pocketvlm_compress::eval::TextFidelity) -> f64| (f(&q.texts[0]) + f(&q.texts[1])) / 2.0;
    assert_eq!(
        (q.kl, q.perplexity, q.top1_agreement),
        (mean(|t| t.kl), mean(|t| t.perplexity), mean(|t| t.top1_agreement))
    );
    let increases: Vec<f64> = q.texts.iter().map(|t| t.perplexity / t.reference_perplexity - 1.0).collect();
    assert_eq!(q.worst_perplexity_increase, increases[0].max(increases[1]));

    let none = evaluate(&[&quantized], &reference, &chat, &stop, &[], &opts, &stage);
    assert!(matches!(none, Err(CompressError::BadOptions { .. })));
}
