//! `compress` with a low-rank plan on the tiny fixture: every recipe writes a valid v2 model whose CPU
//! logits stay close to the dense model's at a 90 % QKV budget, and bad inputs get typed errors.

mod common;

use std::path::{Path, PathBuf};

use common::{CASES, expected, fixture, last_row, prompt};
use pocketvlm_compress::calib::{CalibOptions, CalibSource};
use pocketvlm_compress::model::CpuModel;
use pocketvlm_compress::{Budgets, CompressError, LowRankOptions, Method, Plan, compress};
use pocketvlm_format::compression::Latent;
use pocketvlm_format::{Encoding, FormatError, dir};

fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images")
}

fn calib() -> CalibOptions {
    let mut c = CalibOptions::new(CalibSource::Images(images()));
    c.samples = 3;
    c.max_tokens = 8;
    c
}

fn options(method: Method, budgets: Budgets) -> LowRankOptions {
    LowRankOptions::new(method, budgets, Some(calib()))
}

/// Largest last-position logit error over the fixture cases, relative to the largest logit,
/// and whether every case keeps its top-1 token.
fn fidelity(model: &CpuModel, reference: &CpuModel) -> (f32, bool) {
    let mut worst = 0f32;
    let mut same_top1 = true;
    for case in CASES {
        let p = prompt(&expected(case));
        let a = last_row(&reference.logits(&p).unwrap());
        let b = last_row(&model.logits(&p).unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        worst = worst.max(a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
        let top = |v: &[f32]| v.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        same_top1 &= top(&a) == top(&b);
    }
    (worst, same_top1)
}

/// Stated tolerance: at a 90 % QKV-parameter budget (27 of 48 components per layer on average),
/// last-position logits stay within 40 % of the largest logit. The tiny model's weights are
/// random, so their spectra are flat and any truncation costs much more than on trained weights
/// (measured: 0.34 svd, 0.34 asvd, 0.34 svd-llm, 0.26 qsvd, 0.27 laser).
const TOLERANCE_90: f32 = 0.40;

#[test]
fn every_recipe_writes_a_v2_model_close_to_dense_at_90_percent() {
    let reference = CpuModel::from_hf(&fixture()).unwrap();
    let mut calib_losses = Vec::new();
    for method in pocketvlm_compress::Method::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let budgets = Budgets { qkv_params: Some(0.9), ..Default::default() };
        let summary = compress(&fixture(), tmp.path(), &Plan::LowRank(options(method, budgets))).unwrap();
        let c = summary.compression().unwrap();
        // the budget is met exactly: at most 0.9, and less than one component (128 params) under
        let dense = 3.0 * 80.0 * 48.0;
        let achieved = c.achieved.qkv_params.unwrap();
        assert!(achieved <= 0.9 && (0.9 - achieved) * dense < 128.0, "{}: {achieved}", method.name());
        let ranks: Vec<usize> = c.text_layers.iter().map(|l| l.qkv.unwrap()).collect();
        assert_eq!(ranks.iter().sum::<usize>(), 81, "{}: {ranks:?}", method.name());
        // the model directory is a valid v2 model with the factor tensors
        let data = dir::open(tmp.path()).unwrap();
        assert_eq!(data.manifest.version, 2);
        let q_up = data.manifest.tensor("model.text_model.layers.0.self_attn.q_up.weight").unwrap();
        assert_eq!(q_up.shape, vec![48, ranks[0]]);
        assert!(data.manifest.tensor("model.text_model.layers.0.self_attn.q_proj.weight").is_err());
        assert!(summary.report.as_ref().is_some_and(|r| r.text.exists() && r.svg.exists()));
        let compressed = CpuModel::from_format(tmp.path()).unwrap();
        let (err, _) = fidelity(&compressed, &reference);
        assert!(err < TOLERANCE_90, "{}: relative logit error {err}", method.name());
        let (dense_loss, loss) = summary.calib_loss.unwrap();
        assert!(loss.is_finite() && dense_loss.is_finite() && loss > dense_loss);
        calib_losses.push((method, loss));
    }
    // whitened and loss-aware recipes fit the calibration data better than plain SVD
    // (measured: svd 3.07, asvd 3.15, svd-llm 0.41, qsvd 0.41, laser 0.36; dense 0.12)
    let svd = calib_losses[0].1;
    for (m, loss) in &calib_losses[2..] {
        assert!(*loss < 0.5 * svd, "{}: calibration loss {loss} vs svd {svd}", m.name());
    }
}

#[test]
fn kv_cache_and_mlp_budgets_are_met() {
    let tmp = tempfile::tempdir().unwrap();
    let budgets = Budgets { kv_cache: Some(0.5), ffn_params: Some(0.5), ..Default::default() };
    let summary = compress(&fixture(), tmp.path(), &Plan::LowRank(options(Method::Laser, budgets))).unwrap();
    let c = summary.compression().unwrap();
    // KV: 3 layers x 2 x 16 values per token; half is 48 latent values in total
    let ranks: Vec<usize> = c.text_layers.iter().map(|l| l.qkv.unwrap()).collect();
    assert_eq!(ranks.iter().sum::<usize>(), 48, "{ranks:?}");
    assert!(c.achieved.kv_cache.unwrap() <= 0.5);
    assert_eq!(c.kv_cache.bytes_per_token, 48 * 2);
    let ffn = c.achieved.ffn_params.unwrap();
    assert!(ffn <= 0.5 && (0.5 - ffn) * 3.0 * 3.0 * 128.0 * 48.0 < 176.0, "{ffn}");
    CpuModel::from_format(tmp.path()).unwrap();
}

/// `--latent kv`: the K/V budget buys a latent for K and V alone, Q keeping `q_proj`. At the
/// whole budget (rank `2·d_kv`, all of `[W_k; W_v]`) the model is the dense one up to float
/// rounding; at half of it the budget is met exactly and, Q being untouched, laser's logits stay
/// closer to dense than with the joint latent's same cache. Both loss-aware recipes run on the
/// K and V columns' statistics (laser's output gradients, qsvd's gradient scores).
#[test]
fn a_kv_latent_keeps_q_dense_and_beats_the_joint_latent_at_the_same_cache() {
    let reference = CpuModel::from_hf(&fixture()).unwrap();
    for method in [Method::Laser, Method::Qsvd] {
        let run = |ratio: f64, latent: Latent| {
            let tmp = tempfile::tempdir().unwrap();
            let mut opts = options(method, Budgets { kv_cache: Some(ratio), ..Default::default() });
            opts.latent = latent;
            // f32 factors: at full rank only float rounding separates the model from dense (the
            // fixture's bf16 would add 2⁻⁹ per factor value)
            opts.factor_encoding = Some(Encoding::F32);
            let summary = compress(&fixture(), tmp.path(), &Plan::LowRank(opts)).unwrap();
            let model = CpuModel::from_format(tmp.path()).unwrap();
            (summary, fidelity(&model, &reference).0, tmp)
        };
        let (whole, err, _) = run(1.0, Latent::Kv);
        let ranks: Vec<_> = whole.compression().unwrap().text_layers.iter().map(|l| (l.qkv, l.kv)).collect();
        assert_eq!(ranks, vec![(None, Some(32)); 3], "{}", method.name());
        assert!(err < 1e-4, "{}: full-rank K/V latent vs dense: {err}", method.name());

        let (half, kv_err, dir) = run(0.5, Latent::Kv);
        let c = half.compression().unwrap();
        assert_eq!(c.text_layers.iter().map(|l| l.kv.unwrap()).sum::<usize>(), 48, "{}", method.name());
        assert_eq!(c.kv_cache.bytes_per_token, 48 * 2);
        // Q dense (3 · 48 · 48) and the latent's 48 components of 48 + 2 · 16 parameters
        let qkv = c.achieved.qkv_params.unwrap();
        assert!((qkv - (3.0 * 48.0 * 48.0 + 48.0 * 80.0) / (3.0 * 80.0 * 48.0)).abs() < 1e-12, "{qkv}");
        let data = dir::open(dir.path()).unwrap();
        let attn = "model.text_model.layers.0.self_attn";
        let r = c.text_layers[0].kv.unwrap();
        assert_eq!(data.manifest.tensor(&format!("{attn}.q_proj.weight")).unwrap().shape, vec![48, 48]);
        assert_eq!(data.manifest.tensor(&format!("{attn}.kv_down.weight")).unwrap().shape, vec![r, 48]);
        assert_eq!(data.manifest.tensor(&format!("{attn}.v_up.weight")).unwrap().shape, vec![16, r]);
        for gone in ["k_proj", "v_proj", "qkv_down", "q_up"] {
            assert!(data.manifest.tensor(&format!("{attn}.{gone}.weight")).is_err(), "{gone}");
        }
        let (_, joint_err, _) = run(0.5, Latent::Qkv);
        eprintln!("{}: K/V latent {kv_err} vs joint latent {joint_err} at half the K/V cache", method.name());
        // measured: laser 0.34 vs 0.53; qsvd 0.44 vs 0.40 — its first-order scores from 3 samples
        // of 8 tokens rank the random fixture's components too noisily to compare structures
        if method == Method::Laser {
            assert!(kv_err < joint_err, "{}: K/V latent {kv_err} vs joint {joint_err}", method.name());
        }
    }
    // a K/V latent needs a text latent budget
    let mut opts = options(Method::Laser, Budgets { ffn_params: Some(0.5), ..Default::default() });
    opts.latent = Latent::Kv;
    let err = compress(&fixture(), tempfile::tempdir().unwrap().path(), &Plan::LowRank(opts)).err().unwrap();
    assert!(matches!(&err, CompressError::BadOptions { recipe, .. } if recipe == "--latent kv"), "{err:?}");
}

#[test]
fn vision_attention_compresses_with_exact_biases() {
    let tmp = tempfile::tempdir().unwrap();
    let budgets = Budgets { vision_qkv_params: Some(0.75), ..Default::default() };
    let summary = compress(&fixture(), tmp.path(), &Plan::LowRank(options(Method::Qsvd, budgets))).unwrap();
    assert_eq!(summary.compression().unwrap().vision_layers.len(), 2);
    let data = dir::open(tmp.path()).unwrap();
    let src = pocketvlm_compress::checkpoint::Checkpoint::open(&fixture()).unwrap();
    let raw = src.tensors();
    let name = "model.vision_model.encoder.layers.0.self_attn.k_proj.bias";
    assert_eq!(data.tensor_bytes(name).unwrap().as_ref(), raw[name].bytes, "biases are copied bit for bit");
    assert!(data.manifest.tensor("model.vision_model.encoder.layers.0.self_attn.qkv_down.weight").is_ok());
    CpuModel::from_format(tmp.path()).unwrap();
}

#[test]
fn bad_inputs_get_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let qkv = Budgets { qkv_params: Some(0.5), ..Default::default() };

    // missing calibration folder
    let mut o = options(Method::Qsvd, qkv);
    o.calib = Some(CalibOptions::new(CalibSource::Images(tmp.path().join("nope"))));
    assert!(matches!(
        compress(&fixture(), &out, &Plan::LowRank(o.clone())),
        Err(CompressError::MissingCalibration { .. })
    ));

    // a folder whose only image cannot be decoded
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("broken.jpg"), b"not a jpeg").unwrap();
    o.calib = Some(CalibOptions::new(CalibSource::Images(bad)));
    assert!(matches!(
        compress(&fixture(), &out, &Plan::LowRank(o.clone())),
        Err(CompressError::UnreadableImage { .. })
    ));

    // budgets out of range, or none at all
    for v in [0.0, -0.5, 1.5, f64::NAN] {
        let b = Budgets { qkv_params: Some(v), ..Default::default() };
        let r = compress(&fixture(), &out, &Plan::LowRank(options(Method::Svd, b)));
        assert!(matches!(r, Err(CompressError::BudgetOutOfRange { name: "qkv-params", .. })), "{v}");
    }
    let r = compress(&fixture(), &out, &Plan::LowRank(options(Method::Svd, Budgets::default())));
    assert!(matches!(r, Err(CompressError::BadOptions { .. })));

    // loss-aware recipes need calibration data
    let r = compress(&fixture(), &out, &Plan::LowRank(LowRankOptions::new(Method::Laser, qkv, None)));
    assert!(matches!(r, Err(CompressError::BadOptions { .. })));

    // a checkpoint of another architecture
    let other = tmp.path().join("llama");
    std::fs::create_dir(&other).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    std::fs::write(other.join("config.json"), config.to_string()).unwrap();
    let r = compress(&other, &out, &Plan::LowRank(options(Method::Qsvd, qkv)));
    assert!(matches!(r, Err(CompressError::Format(FormatError::Unsupported(_)))), "{:?}", r.err());
}

#[test]
fn text_calibration_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("calib.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog. ".repeat(40)).unwrap();
    let mut c = CalibOptions::new(CalibSource::Text(text));
    c.samples = 4;
    c.max_tokens = 32;
    let budgets = Budgets { qkv_params: Some(0.6), ..Default::default() };
    let o = LowRankOptions::new(Method::Qsvd, budgets, Some(c));
    let summary = compress(&fixture(), &tmp.path().join("out"), &Plan::LowRank(o.clone())).unwrap();
    assert_eq!(summary.compression().unwrap().calibration.mode, "text");
    assert_eq!(summary.compression().unwrap().calibration.samples, 4);
    assert_eq!(summary.compression().unwrap().calibration.loss_tokens, 4 * 31);
}

/// Images and text together: the images' samples, then the text's windows (each part drawing
/// the sample count), and the same samples again from the cache.
#[test]
fn image_and_text_calibration_together() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("calib.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog. ".repeat(40)).unwrap();
    let calibration = |source: CalibSource| {
        let mut c = CalibOptions::new(source);
        (c.samples, c.max_tokens) = (3, 16);
        let budgets = Budgets { qkv_params: Some(0.6), ..Default::default() };
        let mut o = LowRankOptions::new(Method::Qsvd, budgets, Some(c));
        o.calib_cache = Some(tmp.path().join("both.cache"));
        let out = tmp.path().join("out");
        compress(&fixture(), &out, &Plan::LowRank(o)).unwrap().compression().unwrap().calibration.clone()
    };
    let alone = [CalibSource::Images(images()), CalibSource::Text(text.clone())].map(calibration);
    let both = CalibSource::Both { images: images(), text };
    let (first, cached) = (calibration(both.clone()), calibration(both));
    assert_eq!(first, cached, "read back from the cache");
    assert_eq!((first.mode.as_str(), first.targets.as_str()), ("images+text", "self-distillation+text"));
    assert_eq!(first.samples, alone[0].samples + alone[1].samples);
    assert_eq!(alone[1].samples, 3);
    assert_eq!(first.loss_tokens, alone[0].loss_tokens + alone[1].loss_tokens);
    assert_eq!(first.tokens, alone[0].tokens + alone[1].tokens);
}

#[test]
fn v1_models_still_load_and_v1_cannot_carry_factors() {
    let tmp = tempfile::tempdir().unwrap();
    let dense = tmp.path().join("dense");
    compress(&fixture(), &dense, &Plan::Dense(Default::default())).unwrap();
    let path = dense.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["version"] = 1.into();
    std::fs::write(&path, m.to_string()).unwrap();
    let v1 = CpuModel::from_format(&dense).unwrap();
    let reference = CpuModel::from_hf(&fixture()).unwrap();
    assert_eq!(fidelity(&v1, &reference).0, 0.0, "a v1 dense model is the checkpoint exactly");

    let low = tmp.path().join("low");
    let budgets = Budgets { qkv_params: Some(0.5), ..Default::default() };
    compress(&fixture(), &low, &Plan::LowRank(LowRankOptions::new(Method::Svd, budgets, None))).unwrap();
    let path = low.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["version"] = 1.into();
    std::fs::write(&path, m.to_string()).unwrap();
    assert!(matches!(dir::read_manifest(&low), Err(FormatError::InvalidManifest(_))));
}
