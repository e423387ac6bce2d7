//! Rotation fusion keeps the float model exact, with dense and with low-rank layers.

mod common;

use std::collections::BTreeMap;

use common::{CASES, expected, fixture, last_row, prompt};
use pocketvlm_compress::checkpoint::Checkpoint;
use pocketvlm_compress::hf_config::{model_config, read_json};
use pocketvlm_compress::lowrank::decompose::TransformOptions;
use pocketvlm_compress::lowrank::{Decomposition, Method};
use pocketvlm_compress::model::weights::MemoryStore;
use pocketvlm_compress::model::{CpuModel, Proj, Target, Tower};
use pocketvlm_compress::pipeline::{dense_target_weight, target_factors};
use pocketvlm_compress::rotate::{RotateOptions, random_orthogonal, rotate_model};
use pocketvlm_format::quant::Construction;
use pocketvlm_format::{CalibrationInfo, Compression, KvCacheInfo, LayerRanks, ModelConfig};

fn tiny() -> (ModelConfig, MemoryStore) {
    let cfg = model_config(&read_json(&fixture().join("config.json")).unwrap(), &mut Vec::new()).unwrap();
    let ck = Checkpoint::open(&fixture()).unwrap();
    let store = ck
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.shape.clone(), t.encoding.decode_f32(t.bytes, &t.shape))))
        .collect();
    (cfg, store)
}

/// Largest logit difference relative to the largest logit, over an image and a text case.
fn logit_error(a: &CpuModel, b: &CpuModel) -> f32 {
    let mut worst = 0f32;
    for case in [CASES[0], CASES[4]] {
        let p = prompt(&expected(case));
        let (x, y) = (last_row(&a.logits(&p).unwrap()), last_row(&b.logits(&p).unwrap()));
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        worst = worst.max(x.iter().zip(&y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale);
    }
    worst
}

#[test]
fn rotated_dense_model_has_the_same_logits() {
    let (cfg, store) = tiny();
    let reference = CpuModel::build(cfg.clone(), &store, None).unwrap();
    for construction in [Construction::Kronecker, Construction::BlockDiagonal] {
        let (mut rcfg, mut rotated) = (cfg.clone(), store.clone());
        let opts = RotateOptions { construction, seed: 5, latents: true };
        let spec = rotate_model(&mut rcfg, &mut rotated, None, &opts).unwrap();
        assert_eq!((spec.size, spec.seed), (48, Some(5)));
        // weights really changed, gains were folded
        let q = "model.text_model.layers.0.self_attn.q_proj.weight";
        assert!(store[q].1.iter().zip(&rotated[q].1).any(|(a, b)| (a - b).abs() > 1e-3));
        assert!(rotated["model.text_model.norm.weight"].1.iter().all(|&g| g == 1.0));
        let e = "model.text_model.embed_tokens.weight";
        assert!(
            store[e].1.iter().zip(&rotated[e].1).any(|(a, b)| (a - b).abs() > 1e-3),
            "embeddings rotated"
        );
        let model = CpuModel::build(rcfg, &rotated, None).unwrap();
        let err = logit_error(&reference, &model);
        assert!(err < 1e-4, "{construction:?}: relative logit error {err:e}");
    }
}

#[test]
fn rotated_low_rank_model_has_the_same_logits() {
    let (cfg, dense) = tiny();
    let raw_ck = Checkpoint::open(&fixture()).unwrap();
    let raw = raw_ck.tensors();
    let mut store = dense.clone();
    let mut text_layers = Vec::new();
    for l in 0..cfg.text.num_hidden_layers {
        let mut ranks = LayerRanks { layer: l, qkv: Some(20), kv: None, mlp: BTreeMap::new() };
        let mut targets = vec![(Target { tower: Tower::Text, layer: l, proj: Proj::Qkv }, 20)];
        if l == 1 {
            ranks.mlp.insert("down_proj".into(), 12);
            ranks.mlp.insert("gate_proj".into(), 30);
            targets.push((Target { tower: Tower::Text, layer: l, proj: Proj::Mlp(2) }, 12));
            targets.push((Target { tower: Tower::Text, layer: l, proj: Proj::Mlp(0) }, 30));
        }
        for (t, rank) in targets {
            let w = dense_target_weight(&cfg, &raw, t).unwrap();
            let dec = Decomposition::new(Method::Svd, &w, None, &TransformOptions::default()).unwrap();
            let kept: Vec<usize> = (0..rank).collect();
            for (name, m) in target_factors(&cfg, &dec, t, &kept, 0.5) {
                let values = (0..m.nrows()).flat_map(|i| (0..m.ncols()).map(move |j| (i, j)));
                store.insert(
                    name,
                    (vec![m.nrows(), m.ncols()], values.map(|(i, j)| m[(i, j)] as f32).collect()),
                );
            }
        }
        text_layers.push(ranks);
    }
    let compression = Compression {
        recipe: "svd".into(),
        beta: 0.5,
        budgets: Default::default(),
        achieved: Default::default(),
        text_layers,
        vision_layers: Vec::new(),
        sizes: Vec::new(),
        kv_cache: KvCacheInfo { element_bytes: 2, bytes_per_token: 0, dense_bytes_per_token: 0 },
        calibration: CalibrationInfo::none(),
    };
    let reference = CpuModel::build(cfg.clone(), &store, Some(&compression)).unwrap();
    let (mut rcfg, mut rotated) = (cfg.clone(), store.clone());
    rotate_model(&mut rcfg, &mut rotated, Some(&compression), &RotateOptions::default()).unwrap();
    let down = "model.text_model.layers.1.mlp.down_proj.down.weight";
    assert!(store[down].1.iter().zip(&rotated[down].1).any(|(a, b)| (a - b).abs() > 1e-3), "latent rotated");
    let model = CpuModel::build(rcfg, &rotated, Some(&compression)).unwrap();
    let err = logit_error(&reference, &model);
    assert!(err < 1e-4, "relative logit error {err:e}");
}

#[test]
fn tied_embeddings_are_rotated_once_or_untied() {
    let (mut cfg, mut store) = tiny();
    cfg.text.tie_word_embeddings = true;
    store.remove("lm_head.weight");
    let reference = CpuModel::build(cfg.clone(), &store, None).unwrap();
    // a non-trivial final gain cannot live in a shared tensor: lm_head is split off
    let (mut rcfg, mut rotated) = (cfg.clone(), store.clone());
    rotate_model(&mut rcfg, &mut rotated, None, &RotateOptions::default()).unwrap();
    assert!(!rcfg.text.tie_word_embeddings && rotated.contains_key("lm_head.weight"));
    assert!(logit_error(&reference, &CpuModel::build(rcfg, &rotated, None).unwrap()) < 1e-4);
    // with a unit gain the shared tensor stays shared, rotated once
    let norm = "model.text_model.norm.weight";
    store.get_mut(norm).unwrap().1.fill(1.0);
    let reference = CpuModel::build(cfg.clone(), &store, None).unwrap();
    let (mut rcfg, mut rotated) = (cfg.clone(), store.clone());
    rotate_model(&mut rcfg, &mut rotated, None, &RotateOptions::default()).unwrap();
    assert!(rcfg.text.tie_word_embeddings && !rotated.contains_key("lm_head.weight"));
    assert!(logit_error(&reference, &CpuModel::build(rcfg, &rotated, None).unwrap()) < 1e-4);
}

#[test]
fn random_orthogonal_is_orthogonal_and_seeded() {
    for n in [1, 7, 20] {
        let u = random_orthogonal(n, 3);
        let p = &u * u.transpose();
        for i in 0..n {
            for j in 0..n {
                assert!((p[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }
    assert_ne!(random_orthogonal(5, 1), random_orthogonal(5, 2));
    assert_eq!(random_orthogonal(5, 1), random_orthogonal(5, 1));
}
