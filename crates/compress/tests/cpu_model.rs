//! The CPU model against transformers: last-position logits of every tiny-fixture case within
//! 1e-4 relative (to the largest reference logit), and greedy decoding with the KV cache giving
//! transformers' tokens.

mod common;

use common::{CASES, expected, fixture, last_row, prompt, top_logits};
use pocketvlm_compress::model::CpuModel;

#[test]
fn last_position_logits_match_transformers() {
    let model = CpuModel::from_hf(&fixture()).unwrap();
    for case in CASES {
        let exp = expected(case);
        let logits = model.logits(&prompt(&exp)).unwrap();
        let ours = last_row(&logits);
        let reference = top_logits(&exp);
        let scale = reference.iter().map(|(_, v)| v.abs()).fold(0f32, f32::max);
        let worst =
            reference.iter().map(|&(id, v)| (ours[id as usize] - v).abs() / scale).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{case}: relative logit error {worst:e}");
        let argmax = ours.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax as u32, reference[0].0, "{case}: top-1 token");
    }
}

#[test]
fn greedy_generation_with_cache_matches_transformers() {
    let model = CpuModel::from_hf(&fixture()).unwrap();
    for case in ["text_chat", "chelsea_split"] {
        let exp = expected(case);
        let want: Vec<u32> =
            exp["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = model.generate(&prompt(&exp), want.len(), &[49279]).unwrap();
        assert_eq!(got, want, "{case}");
    }
}
