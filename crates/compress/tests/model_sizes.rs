//! The fixtures with the other SmolVLM sizes' traits (`tests/fixtures/README.md`) through the
//! compressor: `tiny-2b` (SmolVLM-Instruct 2.2B: patch 14 on 132-px tiles, which it does not
//! divide, so the grid floors to 9×9 patches as 384 px floors to 27×27; pixel-shuffle scale 3;
//! as many key-value heads as query heads) and `tiny-500m` (SmolVLM-500M: 15 query heads over 5
//! key-value heads, scale 4, lm_head tied). The CPU model gives transformers' logits and greedy
//! ids, the dense conversion records the floored grid, and a W4A8 conversion runs end to end on
//! the integer contract's CPU reference with transformers' prompt ids.

mod common;

use common::{CASES, expected_in, fixture_named, last_row, prompt_in, top_logits};
use pocketvlm_compress::model::CpuModel;
use pocketvlm_compress::model::reference::Reference;
use pocketvlm_compress::quant::QuantOptions;
use pocketvlm_compress::{DenseOptions, Plan, compress};
use pocketvlm_format::dir;
use pocketvlm_processor::{Message, decode_image};
use pocketvlm_test_support::ids;

/// `(fixture, patches per tile side, image tokens per tile)`.
const SIZES: [(&str, usize, usize); 2] = [("tiny-2b", 9, 9), ("tiny-500m", 8, 4)];

const END_OF_UTTERANCE: u32 = 49279;

#[test]
fn cpu_model_matches_transformers_on_every_size() {
    for (name, _, _) in SIZES {
        let dir = fixture_named(name);
        let model = CpuModel::from_hf(&dir).unwrap();
        for case in CASES {
            let exp = expected_in(&dir, case);
            let ours = last_row(&model.logits(&prompt_in(&dir, &exp)).unwrap());
            let reference = top_logits(&exp);
            let scale = reference.iter().map(|(_, v)| v.abs()).fold(0f32, f32::max);
            let worst =
                reference.iter().map(|&(id, v)| (ours[id as usize] - v).abs() / scale).fold(0f32, f32::max);
            assert!(worst <= 1e-4, "{name} {case}: relative logit error {worst:e}");
            let argmax = ours.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(argmax as u32, reference[0].0, "{name} {case}: top-1 token");
        }
        for case in ["text_chat", "chelsea_split"] {
            let exp = expected_in(&dir, case);
            let want = ids(&exp["generated_ids"]);
            let got = model.generate(&prompt_in(&dir, &exp), want.len(), &[END_OF_UTTERANCE]).unwrap();
            assert_eq!(got, want, "{name} {case}: greedy ids");
        }
    }
}

#[test]
fn every_size_converts_with_the_floored_patch_grid() {
    for (name, side, seq) in SIZES {
        let dir = fixture_named(name);
        let out = tempfile::tempdir().unwrap();
        let summary = compress(&dir, out.path(), &Plan::Dense(DenseOptions::default())).unwrap();
        let m = &summary.manifest;
        assert_eq!(m.model.vision.patches_per_side(), side, "{name}");
        assert_eq!((m.model.image_seq_len(), m.processor.image_seq_len), (seq, seq), "{name}");
        assert_eq!(m.processor.max_image_size, m.model.vision.image_size, "{name}");
        dir::open(out.path()).unwrap();
        // The converted model (read back from the format) decodes an image case as transformers.
        let model = CpuModel::from_format(out.path()).unwrap();
        let exp = expected_in(&dir, "chelsea_split");
        let want = ids(&exp["generated_ids"]);
        let got = model.generate(&prompt_in(&dir, &exp), want.len(), &[END_OF_UTTERANCE]).unwrap();
        assert_eq!(got, want, "{name}: greedy ids of the converted model");
    }
}

/// `cargo xtask compress --model <fixture> --recipe dense --bits w4a8`, then the integer
/// contract's CPU reference runs a text, a split-image and a single-tile case from the chat
/// messages and image files (preprocessing, prompt, vision tower, greedy decoding).
#[test]
fn every_size_runs_w4a8_end_to_end_on_the_cpu_reference() {
    for (name, _, _) in SIZES {
        let dir = fixture_named(name);
        let out = tempfile::tempdir().unwrap();
        let quant = Some(QuantOptions::parse("w4a8", None).unwrap());
        let summary =
            compress(&dir, out.path(), &Plan::Dense(DenseOptions { quant, ..Default::default() })).unwrap();
        assert_eq!(summary.manifest.quantization.as_ref().unwrap().scheme, "w4a8");
        let reference = Reference::open(out.path()).unwrap();
        for case in ["text_chat", "chelsea_split", "coffee_nosplit"] {
            let exp = expected_in(&dir, case);
            let messages: Vec<Message> = serde_json::from_value(exp["messages"].clone()).unwrap();
            let image = exp["image"]
                .as_str()
                .map(|rel| decode_image(&std::fs::read(dir.join("expected").join(rel)).unwrap()).unwrap());
            let max_new = exp["max_new_tokens"].as_u64().unwrap() as usize;
            let run = reference
                .run(&messages, image.as_ref(), exp["do_image_splitting"].as_bool(), max_new)
                .unwrap();
            assert_eq!(run.prompt_ids, ids(&exp["prompt_ids"]), "{name} {case}: prompt ids");
            assert!(run.prompt_logits.iter().all(|v| v.is_finite()), "{name} {case}: logits");
            let want = ids(&exp["generated_ids"]);
            assert!(!run.generated_ids.is_empty() && run.generated_ids.len() <= max_new, "{name} {case}");
            let top1 = run.prompt_logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            let rank = top_logits(&exp).iter().position(|&(id, _)| id as usize == top1);
            assert!(
                rank.is_some_and(|r| r < 10),
                "{name} {case}: W4A8 top-1 {top1} outside transformers' top 10"
            );
            let same = run.generated_ids.iter().zip(&want).take_while(|(a, b)| a == b).count();
            eprintln!(
                "{name} {case} w4a8: top-1 {top1} is transformers' #{rank:?}; first {same} of {} greedy ids agree",
                want.len()
            );
        }
    }
}
