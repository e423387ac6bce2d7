//! Low-rank math: every recipe reconstructs at full rank, the GQA split, whitening undone inside
//! the CPU model, and the allocator's budgets.

mod common;

use std::collections::BTreeMap;

use common::{CASES, expected, fixture, last_row, prompt};
use faer::Mat;
use pocketvlm_compress::allocate::{Choice, Group, allocate_global, allocate_uniform};
use pocketvlm_compress::checkpoint::Checkpoint;
use pocketvlm_compress::hf_config::{model_config, read_json};
use pocketvlm_compress::lowrank::decompose::TransformOptions;
use pocketvlm_compress::lowrank::{Decomposition, GroupStats, Method};
use pocketvlm_compress::model::weights::MemoryStore;
use pocketvlm_compress::model::{CpuModel, Proj, Target, Tower};
use pocketvlm_compress::pipeline::{dense_target_weight, target_factors};
use pocketvlm_format::quant::rotation::SplitMix64;
use pocketvlm_format::{Compression, LayerRanks};

fn random(rng: &mut SplitMix64, rows: usize, cols: usize) -> Mat<f64> {
    Mat::from_fn(rows, cols, |_, _| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
}

/// Statistics from random data: `A = XᵀX/n` (rank-deficient when `n < in`) and `G = YᵀY/n`.
fn stats(rng: &mut SplitMix64, d_in: usize, d_out: usize, n: usize) -> GroupStats {
    let x = random(rng, n, d_in);
    let y = random(rng, n, d_out);
    let a = x.transpose() * &x * (1.0 / n as f64);
    let g = y.transpose() * &y * (1.0 / n as f64);
    let abs_mean = (0..d_in).map(|j| (0..n).map(|i| x[(i, j)].abs()).sum::<f64>() / n as f64).collect();
    GroupStats { a, abs_mean, g: Some(g) }
}

fn max_abs_diff(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut m: f64 = 0.0;
    for i in 0..a.nrows() {
        for j in 0..a.ncols() {
            m = m.max((a[(i, j)] - b[(i, j)]).abs());
        }
    }
    m
}

#[test]
fn full_rank_reconstructs_every_recipe() {
    let mut rng = SplitMix64(7);
    // GQA-shaped stack (9/3 heads of 4: 36 + 12 + 12 rows) and a wide MLP-like matrix; the
    // second statistics use fewer samples than inputs, so A is singular and must be damped.
    for (out, inp, n) in [(60, 36, 200), (24, 40, 16)] {
        let w = random(&mut rng, out, inp);
        let st = stats(&mut rng, inp, out, n);
        for method in Method::ALL {
            let dec = Decomposition::new(method, &w, Some(&st), &TransformOptions::default()).unwrap();
            let all: Vec<usize> = (0..dec.full_rank()).collect();
            for beta in [0.0, 0.5, 1.0] {
                let (down, up) = dec.factors(&all, beta);
                let err = max_abs_diff(&(&up * &down), &w);
                assert!(err < 1e-8, "{} beta {beta} ({out}x{inp}): error {err:e}", method.name());
            }
            // kept indices in any order give the same product
            let mut shuffled = all.clone();
            shuffled.reverse();
            let (down, up) = dec.factors(&shuffled, 0.5);
            assert!(max_abs_diff(&(&up * &down), &w) < 1e-8);
        }
    }
}

#[test]
fn truncation_is_optimal_in_the_recipe_metric() {
    // svd-llm: dropping component i increases E‖ΔW x‖² by exactly σ_i².
    let mut rng = SplitMix64(11);
    let (out, inp) = (20, 16);
    let w = random(&mut rng, out, inp);
    let st = stats(&mut rng, inp, out, 400);
    let dec = Decomposition::new(
        Method::SvdLlm,
        &w,
        Some(&st),
        &TransformOptions { damp_a: 0.0, ..Default::default() },
    )
    .unwrap();
    let kept: Vec<usize> = (0..dec.full_rank()).filter(|&i| i != 3).collect();
    let (down, up) = dec.factors(&kept, 0.5);
    let dw = &(&up * &down) - &w;
    let err = (&dw * &st.a * dw.transpose()).diagonal().column_vector().iter().sum::<f64>();
    let s3 = dec.svd.s[3];
    assert!((err - s3 * s3).abs() < 1e-6 * s3 * s3, "{err} vs {}", s3 * s3);
}

fn tiny_tensors_and_model() -> (pocketvlm_format::ModelConfig, MemoryStore) {
    let cfg = model_config(&read_json(&fixture().join("config.json")).unwrap(), &mut Vec::new()).unwrap();
    let ck = Checkpoint::open(&fixture()).unwrap();
    let store: MemoryStore = ck
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.shape.clone(), t.encoding.decode_f32(t.bytes, &t.shape))))
        .collect();
    (cfg, store)
}

/// Replace every text layer's Q/K/V by full-rank factors of `method` and compare the CPU
/// model's logits with the dense model: whitening is undone and the GQA split is right.
#[test]
fn full_rank_factors_give_the_dense_model() {
    let (cfg, dense) = tiny_tensors_and_model();
    let ck = Checkpoint::open(&fixture()).unwrap();
    let raw = ck.tensors();
    let reference = CpuModel::build(cfg.clone(), &dense, None).unwrap();
    let exp = expected(CASES[0]);
    let want = last_row(&reference.logits(&prompt(&exp)).unwrap());
    let mut rng = SplitMix64(3);
    for method in Method::ALL {
        let mut store = dense.clone();
        let mut text_layers = Vec::new();
        for l in 0..cfg.text.num_hidden_layers {
            let t = Target { tower: Tower::Text, layer: l, proj: Proj::Qkv };
            let w = dense_target_weight(&cfg, &raw, t).unwrap();
            assert_eq!((w.nrows(), w.ncols()), (48 + 16 + 16, 48));
            let st = stats(&mut rng, w.ncols(), w.nrows(), 500);
            let dec = Decomposition::new(method, &w, Some(&st), &TransformOptions::default()).unwrap();
            let all: Vec<usize> = (0..dec.full_rank()).collect();
            for (name, m) in target_factors(&cfg, &dec, t, &all, 0.5) {
                let values = (0..m.nrows())
                    .flat_map(|i| (0..m.ncols()).map(move |j| (i, j)))
                    .map(|(i, j)| m[(i, j)] as f32);
                store.insert(name, (vec![m.nrows(), m.ncols()], values.collect()));
            }
            let p = format!("model.text_model.layers.{l}.self_attn");
            // the split is [d_q, d_kv, d_kv] = [48, 16, 16] (3 query heads, 1 KV head), never thirds
            assert_eq!(store[&format!("{p}.q_up.weight")].0, vec![48, 48]);
            assert_eq!(store[&format!("{p}.k_up.weight")].0, vec![16, 48]);
            assert_eq!(store[&format!("{p}.v_up.weight")].0, vec![16, 48]);
            for n in ["q_proj", "k_proj", "v_proj"] {
                store.remove(&format!("{p}.{n}.weight"));
            }
            text_layers.push(LayerRanks { layer: l, qkv: Some(48), kv: None, mlp: BTreeMap::new() });
        }
        let compression = Compression {
            recipe: method.name().into(),
            beta: 0.5,
            budgets: Default::default(),
            achieved: Default::default(),
            text_layers,
            vision_layers: Vec::new(),
            sizes: Vec::new(),
            kv_cache: pocketvlm_format::KvCacheInfo {
                element_bytes: 2,
                bytes_per_token: 0,
                dense_bytes_per_token: 0,
            },
            calibration: pocketvlm_format::CalibrationInfo::none(),
        };
        let factored = CpuModel::build(cfg.clone(), &store, Some(&compression)).unwrap();
        let got = last_row(&factored.logits(&prompt(&exp)).unwrap());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < 1e-4, "{}: relative logit error {err:e}", method.name());
    }
}

fn group(scores: Vec<f64>, unit: u64, dense: Option<u64>) -> Group {
    Group { scores, unit_cost: unit, dense_cost: dense, min_rank: 1 }
}

fn spent(groups: &[Group], choices: &[Choice]) -> u64 {
    groups.iter().zip(choices).map(|(g, c)| c.cost(g)).sum()
}

#[test]
fn global_allocation_meets_the_budget_and_keeps_the_best_components() {
    let mut rng = SplitMix64(5);
    let groups: Vec<Group> = (0..6)
        .map(|g| group((0..40).map(|_| (rng.next_u64() % 10_000) as f64 * (g + 1) as f64).collect(), 7, None))
        .collect();
    for budget in [6 * 7, 100, 777, 1000, 6 * 40 * 7] {
        let choices = allocate_global(&groups, budget).unwrap();
        let cost = spent(&groups, &choices);
        assert!(cost <= budget && budget - cost < 7, "budget {budget}: spent {cost}");
        // every kept component scores at least as high as every dropped one (beyond the minimum rank)
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for (g, c) in groups.iter().zip(&choices) {
            let Choice::Keep(k) = c else { panic!("no dense option offered") };
            for (i, s) in g.scores.iter().enumerate() {
                if k.contains(&i) { kept.push((*s, k[0] == i)) } else { dropped.push(*s) }
            }
        }
        let min_kept = kept.iter().filter(|(_, first)| !first).map(|(s, _)| *s).fold(f64::INFINITY, f64::min);
        let max_dropped = dropped.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert!(min_kept >= max_dropped, "budget {budget}: kept {min_kept} < dropped {max_dropped}");
    }
    // non-prefix choices: the best components of a group need not be its first ones
    let g = vec![group(vec![1.0, 5.0, 3.0, 9.0], 1, None)];
    assert_eq!(allocate_global(&g, 2).unwrap(), vec![Choice::Keep(vec![3, 1])]);
}

#[test]
fn dense_option_is_taken_when_low_rank_does_not_pay() {
    // Flat spectrum: every component matters; rank 6 of a 10x10 matrix costs 6*20 > 100 dense.
    let flat = group(vec![1.0; 10], 20, Some(100));
    // Steep spectrum: two components carry everything.
    let steep = group(vec![100.0, 50.0, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3], 20, Some(100));
    let groups = vec![flat, steep];
    let choices = allocate_global(&groups, 140).unwrap();
    assert_eq!(choices[0], Choice::Dense);
    assert_eq!(choices[1], Choice::Keep(vec![0, 1]));
    assert!(spent(&groups, &choices) <= 140);
}

#[test]
fn uniform_allocation_gives_equal_ranks() {
    let groups: Vec<Group> =
        (0..4).map(|_| group((0..10).map(|i| 10.0 - i as f64).collect(), 3, None)).collect();
    let choices = allocate_uniform(&groups, 3 * 22).unwrap();
    let ranks: Vec<usize> =
        choices.iter().map(|c| if let Choice::Keep(k) = c { k.len() } else { 0 }).collect();
    assert_eq!(ranks, vec![6, 6, 5, 5]);
    assert_eq!(spent(&groups, &choices), 66);
    assert!(allocate_uniform(&groups, 3).is_err(), "below one component per group");
}
