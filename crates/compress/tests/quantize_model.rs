//! Rotated and quantized models on the tiny fixture: W8A8 at full rank stays close to the float
//! model through the CPU reference arithmetic, W4A8 (dense and low-rank) writes a valid v3
//! model that runs end to end, and bad recipes get typed errors.

mod common;

use std::path::Path;

use common::{CASES, expected, fixture, last_row, prompt};
use pocketvlm_compress::calib::{self, CalibOptions, CalibSource};
use pocketvlm_compress::checkpoint::Source;
use pocketvlm_compress::model::CpuModel;
use pocketvlm_compress::progress::Progress;
use pocketvlm_compress::quant::{QuantOptions, QuantParts, quantize_dir};
use pocketvlm_compress::{Budgets, CompressError, DenseOptions, LowRankOptions, Method, Plan, compress};
use pocketvlm_format::manifest::QUANTIZATION_VERSION;
use pocketvlm_format::quant::{QuantError, QuantizedTable, Scheme};
use pocketvlm_format::{Encoding, FormatError, dir};

const EMBED: &str = "model.text_model.embed_tokens.weight";

/// Largest last-position logit error over the fixture cases relative to the largest logit, and
/// how many cases keep their top-1 token.
fn fidelity(model: &CpuModel, reference: &CpuModel) -> (f32, usize) {
    let mut worst = 0f32;
    let mut same = 0;
    for case in CASES {
        let p = prompt(&expected(case));
        let a = last_row(&reference.logits(&p).unwrap());
        let b = last_row(&model.logits(&p).unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        worst = worst.max(a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
        let top = |v: &[f32]| v.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        same += usize::from(top(&a) == top(&b));
    }
    (worst, same)
}

fn quantized_dense(out: &Path, bits: &str, group: Option<usize>) -> pocketvlm_format::Manifest {
    let quant = Some(QuantOptions::parse(bits, group).unwrap());
    compress(&fixture(), out, &Plan::Dense(DenseOptions { quant, ..Default::default() })).unwrap().manifest
}

/// Stated tolerance: W8A8 at full rank (dense) keeps last-position logits within 5 % of the
/// largest logit and every case's top-1 token.
const TOLERANCE_W8A8: f32 = 0.05;

#[test]
fn w8a8_dense_stays_close_to_the_float_model() {
    let tmp = tempfile::tempdir().unwrap();
    let m = quantized_dense(tmp.path(), "w8a8", None);
    assert_eq!(m.version, QUANTIZATION_VERSION);
    let q = m.quantization.as_ref().unwrap();
    assert_eq!(q.scheme, "w8a8");
    // vision 2 layers x (q, k, v, out, fc1, fc2) + connector + text 3 layers x (q, k, v, o,
    // gate, up, down) + lm_head, all INT8 weights and activations
    assert_eq!(q.layers.len(), 2 * 6 + 1 + 3 * 7 + 1);
    assert!(q.layers.iter().all(|l| l.weight_bits == 8 && l.activation.bits == 8 && l.group.is_none()));
    let online: Vec<&str> =
        q.layers.iter().filter(|l| !l.online.is_empty()).map(|l| l.weight.as_str()).collect();
    // text: o_proj and down_proj; vision: every layer (LayerNorm fuses nothing); the connector
    assert_eq!(online.len(), 6 + 12 + 1);
    assert!(online.iter().all(|n| n.ends_with("o_proj.weight")
        || n.ends_with("down_proj.weight")
        || n.starts_with("model.vision_model.")
        || n.starts_with("model.connector.")));
    let down = q.layers.iter().find(|l| l.weight.ends_with("0.mlp.down_proj.weight")).unwrap();
    assert_eq!(down.online[0].size, 128);
    let conn = q.layers.iter().find(|l| l.weight.starts_with("model.connector.")).unwrap();
    assert_eq!(conn.online[0].size, 128);
    // the stacked vision Q/K/V share one online rotation (their input is computed once)
    let vision_qkv: Vec<_> =
        q.layers.iter().filter(|l| l.weight.contains("vision_model.encoder.layers.0.self_attn.")).collect();
    assert_eq!(vision_qkv.len(), 4);
    assert!(vision_qkv[..3].iter().all(|l| l.online == vision_qkv[0].online));
    assert_ne!(vision_qkv[3].online, vision_qkv[0].online);
    let data = dir::open(tmp.path()).unwrap();
    assert_eq!(data.manifest.tensor("lm_head.weight").unwrap().encoding().unwrap(), Encoding::I8);
    assert_eq!(data.manifest.tensor("lm_head.weight_scale").unwrap().shape, vec![49280]);
    assert_eq!(q.tables, vec![QuantizedTable { tensor: EMBED.into(), bits: 8 }]);
    let embed = data.manifest.tensor(EMBED).unwrap();
    assert_eq!((embed.encoding().unwrap(), embed.bytes), (Encoding::I8, 49280 * 48));

    let reference = CpuModel::from_hf(&fixture()).unwrap();
    let model = CpuModel::from_format(tmp.path()).unwrap();
    let (err, same) = fidelity(&model, &reference);
    eprintln!("w8a8 dense: relative logit error {err:e}, top-1 kept {same}/{}", CASES.len());
    assert!(err < TOLERANCE_W8A8, "relative logit error {err}");
    assert_eq!(same, CASES.len());
}

#[test]
fn w4a8_dense_with_groups_runs_and_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let m = quantized_dense(tmp.path(), "w4a8", Some(64));
    let data = dir::open(tmp.path()).unwrap();
    assert_eq!(data.manifest, m);
    let q = m.quantization.as_ref().unwrap();
    assert_eq!(q.scheme, "w4a8");
    for l in &q.layers {
        let cols = m.tensor(&l.weight).unwrap().shape[1];
        if l.weight == "lm_head.weight" {
            assert_eq!((l.weight_bits, l.group), (8, None));
        } else {
            // the group divides 64 (vision fc2) and 128 (text down_proj, connector) inputs,
            // not 32 (the other vision layers) or 48 (the other text layers)
            assert_eq!((l.weight_bits, l.group), (4, cols.is_multiple_of(64).then_some(64)), "{}", l.weight);
            assert_eq!(m.tensor(&l.weight).unwrap().encoding().unwrap(), Encoding::I4);
        }
    }
    let down_scale = m.tensor("model.text_model.layers.2.mlp.down_proj.weight_scale").unwrap();
    assert_eq!(down_scale.shape, vec![48, 2]);
    let reference = CpuModel::from_hf(&fixture()).unwrap();
    let model = CpuModel::from_format(tmp.path()).unwrap();
    let (err, same) = fidelity(&model, &reference);
    eprintln!("w4a8 dense g64: relative logit error {err:e}, top-1 kept {same}/{}", CASES.len());
    assert!(err.is_finite());
}

/// QSVD at 90 % QKV and MLP budgets, float or quantized (`bits`): the summary and the
/// calibration loss of the written model.
fn low_rank(out: &Path, bits: Option<&str>) -> pocketvlm_compress::Summary {
    compress(&fixture(), out, &Plan::LowRank(low_rank_options(bits))).unwrap()
}

fn low_rank_options(bits: Option<&str>) -> LowRankOptions {
    let mut c = CalibOptions::new(CalibSource::Images(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images"),
    ));
    c.samples = 3;
    c.max_tokens = 8;
    let budgets = Budgets { qkv_params: Some(0.9), ffn_params: Some(0.9), ..Default::default() };
    let mut opts = LowRankOptions::new(Method::Qsvd, budgets, Some(c));
    opts.quant = bits.map(|b| QuantOptions::parse(b, None).unwrap());
    opts
}

/// The `check` stage measures the quantized model (its image features rotated into the
/// residual basis). Measured calibration losses (every up factor packed, padded rows): float
/// 2.66, W8A8 2.61, W4A8 3.56 (dense 0.12);
/// stated: W8A8 within 10 % of the float low-rank model, W4A8 within a factor 2.
#[test]
fn low_rank_models_quantize_and_report_the_quantized_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let float = low_rank(&tmp.path().join("float"), None).calib_loss.unwrap().1;
    let w8 = low_rank(&tmp.path().join("w8a8"), Some("w8a8")).calib_loss.unwrap().1;
    let dir4 = tmp.path().join("w4a8");
    let summary = low_rank(&dir4, Some("w4a8"));
    let (dense, w4) = summary.calib_loss.unwrap();
    eprintln!("qsvd 90 %: calibration loss float {float}, w8a8 {w8}, w4a8 {w4} (dense {dense})");
    assert!((w8 - float).abs() < 0.1 * float, "w8a8 {w8} vs float {float}");
    assert!(w4.is_finite() && w4 < 2.0 * float, "w4a8 {w4} vs float {float}");
    assert!(summary.stages.iter().any(|(s, _)| *s == "quantize"));

    let m = dir::open(&dir4).unwrap().manifest;
    assert_eq!(m.version, QUANTIZATION_VERSION);
    let q = m.quantization.as_ref().unwrap();
    assert!(q.layers.iter().any(|l| l.weight.ends_with("qkv_down.weight")));
    // every up factor is packed, whatever its rank (rows padded to whole INT4 words), and at
    // 90 % some rank is not a multiple of 8, so the padding is exercised
    let mut padded = 0;
    for t in &m.tensors {
        if t.name.ends_with("_up.weight") || t.name.ends_with(".up.weight") {
            assert_eq!(t.encoding().unwrap(), Encoding::I4, "{}", t.name);
            assert_eq!(t.bytes, (t.shape[0] * t.shape[1].div_ceil(8) * 4) as u64, "{}", t.name);
            padded += usize::from(t.shape[1] % 8 != 0);
        }
    }
    assert!(padded > 0, "no rank needed padding");
    CpuModel::from_format(&dir4).unwrap();
}

#[test]
fn bad_recipes_get_typed_errors() {
    let unknown = QuantOptions::parse("w2a16", None).unwrap_err();
    assert!(matches!(unknown, CompressError::Quant(QuantError::UnknownScheme(s)) if s == "w2a16"));
    for (bits, group) in [("w8a8", 64), ("w4a8", 96), ("w4a4", 256)] {
        let err = QuantOptions::parse(bits, Some(group)).unwrap_err();
        assert!(matches!(err, CompressError::Quant(QuantError::UnsupportedGroup { .. })), "{bits} {group}");
    }
    for s in Scheme::ALL {
        assert_eq!(QuantOptions::parse(s.name(), None).unwrap().scheme, s);
    }
}

/// The RTN baseline: the same layers, no rotation anywhere, absmax scales. At W8A8 it still
/// keeps the fixture's logits within the W8A8 tolerance; the parts named float stay float.
#[test]
fn rtn_baseline_and_float_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = QuantOptions::parse("w8a8", None).unwrap().rtn();
    opts.parts = QuantParts::keeping_float("vision,embeddings").unwrap();
    let m = compress(
        &fixture(),
        tmp.path(),
        &Plan::Dense(DenseOptions { quant: Some(opts), ..Default::default() }),
    )
    .unwrap()
    .manifest;
    let q = m.quantization.as_ref().unwrap();
    assert_eq!(q.residual_rotation, None);
    assert!(q.layers.iter().all(|l| l.online.is_empty()));
    assert!(!q.layers.iter().any(|l| l.weight.starts_with("model.vision_model.")));
    assert!(q.layers.iter().any(|l| l.weight.starts_with("model.connector.")));
    assert!(q.tables.is_empty());
    assert_eq!(m.tensor(EMBED).unwrap().encoding().unwrap(), Encoding::BF16);
    let reference = CpuModel::from_hf(&fixture()).unwrap();
    let (err, same) = fidelity(&CpuModel::from_format(tmp.path()).unwrap(), &reference);
    eprintln!("w8a8 rtn: relative logit error {err:e}, top-1 kept {same}/{}", CASES.len());
    assert!(err < TOLERANCE_W8A8, "relative logit error {err}");
}

/// Decoder sublayers kept float (`--float decoder.1.mlp,decoder.2.attention`) stay in their
/// rotated float weights, with no entry in the quantization section and no online rotation; the
/// others are quantized as usual. `--quantize-only` quantizes the named sublayers alone. A
/// low-rank model must quantize the attention of every layer that caches its latent.
#[test]
fn decoder_sublayers_can_stay_float() {
    let tmp = tempfile::tempdir().unwrap();
    let quantized = |parts: QuantParts, out: &Path| {
        let mut opts = QuantOptions::parse("w8a8", None).unwrap();
        opts.parts = parts;
        compress(&fixture(), out, &Plan::Dense(DenseOptions { quant: Some(opts), ..Default::default() }))
            .unwrap()
            .manifest
    };
    let names = |m: &pocketvlm_format::Manifest| -> Vec<String> {
        m.quantization.as_ref().unwrap().layers.iter().map(|l| l.weight.clone()).collect()
    };
    let m = quantized(
        QuantParts::keeping_float("decoder.1.mlp,decoder.2.attention").unwrap(),
        &tmp.path().join("a"),
    );
    let layer = |i: usize, part: &str| format!("model.text_model.layers.{i}.{part}");
    let q = names(&m);
    for (i, attention, mlp) in [(0, true, true), (1, true, false), (2, false, true)] {
        let has = |part: &str| q.iter().any(|n| n.starts_with(&layer(i, part)));
        assert_eq!((has("self_attn."), has("mlp.")), (attention, mlp), "layer {i}: {q:?}");
    }
    assert_eq!(m.tensor(&layer(1, "mlp.down_proj.weight")).unwrap().encoding().unwrap(), Encoding::BF16);
    let reference = CpuModel::from_hf(&fixture()).unwrap();
    let (err, _) = fidelity(&CpuModel::from_format(&tmp.path().join("a")).unwrap(), &reference);
    assert!(err < TOLERANCE_W8A8, "relative logit error {err}");

    let only = quantized(QuantParts::quantizing_only("decoder.0.mlp").unwrap(), &tmp.path().join("b"));
    let prefix = layer(0, "mlp.");
    assert!(
        names(&only).iter().all(|n| n.starts_with(&prefix)) && names(&only).len() == 3,
        "{:?}",
        names(&only)
    );
    assert!(only.quantization.as_ref().unwrap().tables.is_empty());

    let mut opts = low_rank_options(Some("w8a8"));
    opts.quant.as_mut().unwrap().parts = QuantParts::keeping_float("decoder.0.attention").unwrap();
    let err = compress(&fixture(), &tmp.path().join("c"), &Plan::LowRank(opts)).err().unwrap();
    assert!(matches!(err, CompressError::BadOptions { .. }), "{err:?}");
}

/// The embedding table: each row the CPU model reads is `f32(q) · s` of the stored integers and
/// per-row scales.
#[test]
fn embedding_rows_are_the_table_arithmetic() {
    let tmp = tempfile::tempdir().unwrap();
    quantized_dense(tmp.path(), "w4a8", None);
    let data = dir::open(tmp.path()).unwrap();
    let scales = data.tensor_f32(&format!("{EMBED}_scale")).unwrap();
    let bytes = data.tensor_bytes(EMBED).unwrap();
    let model = CpuModel::from_format(tmp.path()).unwrap();
    for id in [0u32, 1, 2, 49190, 49279] {
        let row = model.text.embed(&[id]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let t = id as usize;
        let want: Vec<f32> =
            bytes[t * 48..(t + 1) * 48].iter().map(|&b| (b as i8) as f32 * scales[t]).collect();
        assert_eq!(row, want, "row {id}");
        assert!(row.iter().any(|&v| v != 0.0));
    }
    // malformed table entries are typed errors
    let table = |m: &mut pocketvlm_format::Manifest| m.quantization.as_mut().unwrap().tables.clone();
    let mut m = data.manifest.clone();
    let t = table(&mut m);
    m.quantization.as_mut().unwrap().tables.extend(t);
    assert!(
        matches!(m.validate(), Err(FormatError::BadTensorEntry { reason, .. }) if reason.contains("twice"))
    );
    let mut m = data.manifest.clone();
    m.quantization.as_mut().unwrap().tables[0].bits = 4;
    assert!(matches!(m.validate(), Err(FormatError::BadTensorEntry { .. })));
    let mut m = data.manifest.clone();
    m.quantization.as_mut().unwrap().tables.clear();
    // (its scale tensor is then one the layout does not expect)
    let err = m.validate().unwrap_err();
    assert!(
        matches!(&err, FormatError::UnexpectedTensor { name } if name.ends_with("embed_tokens.weight_scale")),
        "{err:?}"
    );
    let mut m = data.manifest.clone();
    m.tensors.iter_mut().find(|t| t.name == format!("{EMBED}_scale")).unwrap().shape = vec![7];
    assert!(m.validate().is_err());
}

/// W4A4 keeps the latent (the K/V cache entry) at INT8: the up factors of the joint QKV read
/// INT8 activations, every other layer INT4 ones. Quantizing the written float low-rank
/// directory (`cargo xtask quantize`) writes the same model as compressing with `--bits`, and
/// the manifest's cache size is the INT8 latent plus its scale.
#[test]
fn w4a4_latent_is_int8_and_quantize_dir_matches_compress() {
    let tmp = tempfile::tempdir().unwrap();
    let direct = tmp.path().join("direct");
    let summary = low_rank(&direct, Some("w4a4"));
    let q = summary.manifest.quantization.as_ref().unwrap();
    for l in &q.layers {
        let latent = ["q_up", "k_up", "v_up"].iter().any(|u| l.weight.ends_with(&format!("{u}.weight")));
        let want = if latent || l.weight == "lm_head.weight" { 8 } else { 4 };
        assert_eq!(l.activation.bits, want, "{}", l.weight);
        assert_eq!(l.activation.clip_ratio, if want == 8 { 1.0 } else { 0.9 }, "{}", l.weight);
    }
    let c = summary.manifest.compression.as_ref().unwrap();
    let want: u64 = c.text_layers.iter().map(|l| l.qkv.map_or(2 * 16 * 2, |r| r as u64 + 4)).sum();
    assert_eq!((c.kv_cache.bytes_per_token, c.kv_cache.element_bytes), (want, 1));

    let float = tmp.path().join("float");
    low_rank(&float, None);
    let again = tmp.path().join("again");
    let opts = QuantOptions::parse("w4a4", None).unwrap();
    let m = quantize_dir(&float, &again, &opts, 32 << 20, None).unwrap().manifest;
    assert_eq!(m.quantization, summary.manifest.quantization);
    assert_eq!(m.tensors, summary.manifest.tensors);
    assert_eq!(m.compression.as_ref().unwrap().sizes, c.sizes);
    assert_eq!(m.compression.as_ref().unwrap().kv_cache, c.kv_cache);
    let err = quantize_dir(&again, &tmp.path().join("twice"), &opts, 32 << 20, None).unwrap_err();
    assert!(matches!(err, CompressError::BadOptions { .. }), "{err:?}");
}

/// The β search writes, quantizes and measures every candidate, keeps the one with the lowest
/// calibration loss in the output directory (where an earlier run's extra shards are removed)
/// and removes the others; it needs a quantized recipe and a valid grid.
#[test]
fn beta_search_keeps_the_lowest_calibration_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("searched");
    // an earlier run left more shards in the folder than the chosen candidate has
    std::fs::create_dir_all(&out).unwrap();
    for i in 0..12 {
        std::fs::write(out.join(format!("shard-{i:05}.bin")), b"stale").unwrap();
    }
    let mut opts = low_rank_options(Some("w4a8"));
    opts.beta_search = Some(vec![0.0, 0.5, 1.0]);
    let summary = compress(&fixture(), &out, &Plan::LowRank(opts.clone())).unwrap();
    eprintln!("beta search (qsvd 90 %, w4a8): {:?}", summary.search);
    let betas: Vec<f64> = summary.search.iter().map(|c| c.beta).collect();
    assert_eq!(betas, [0.0, 0.5, 1.0]);
    assert!(summary.search.iter().all(|c| c.budgets == opts.budgets));
    let loss = |c: &pocketvlm_compress::Searched| c.loss.unwrap();
    let best = summary.search.iter().min_by(|a, b| loss(a).total_cmp(&loss(b))).unwrap();
    assert_eq!(summary.compression().unwrap().beta, best.beta);
    assert_eq!(summary.calib_loss.unwrap().1, loss(best));
    assert_eq!(summary.out_dir, out);
    let m = dir::open(&out).unwrap().manifest;
    assert_eq!(m.compression.as_ref().unwrap().beta, best.beta);
    let mut shards: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("shard-"))
        .collect();
    shards.sort();
    assert_eq!(shards, m.shards.iter().map(|s| s.file.clone()).collect::<Vec<_>>(), "stale shards removed");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("searched")]);
    assert!(out.join(summary.report.as_ref().unwrap().text.file_name().unwrap()).exists());

    let mut float = low_rank_options(None);
    float.beta_search = Some(vec![0.5]);
    let err = compress(&fixture(), &tmp.path().join("x"), &Plan::LowRank(float.clone())).err().unwrap();
    assert!(matches!(err, CompressError::BadOptions { .. }), "{err:?}");
    opts.beta_search = Some(vec![0.5, 1.5]);
    let err = compress(&fixture(), &tmp.path().join("y"), &Plan::LowRank(opts.clone())).err().unwrap();
    assert!(matches!(err, CompressError::BudgetOutOfRange { .. }), "{err:?}");
}

/// With a low-bit recipe the KV-cache budget counts bytes as cached (the INT8 latent plus its
/// 4-byte scale per layer) against dense f16 K and V: 25 % of the fixture's 3 · 2 · 16 · 2 = 192
/// bytes leaves 48 − 3 · 4 = 36 latent values in all, twice the 24 a float latent gets.
#[test]
fn kv_budget_counts_cached_bytes_when_quantized() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = low_rank_options(Some("w4a8"));
    opts.budgets = Budgets { kv_cache: Some(0.25), ..Default::default() };
    let c = compress(&fixture(), &tmp.path().join("q"), &Plan::LowRank(opts.clone()))
        .unwrap()
        .manifest
        .compression
        .unwrap();
    let ranks: usize = c.text_layers.iter().map(|l| l.qkv.unwrap()).sum();
    assert_eq!((c.kv_cache.bytes_per_token, c.kv_cache.dense_bytes_per_token), (ranks as u64 + 12, 192));
    assert!(ranks <= 36 && ranks > 24, "ranks {ranks}");
    assert!(c.achieved.kv_cache.unwrap() <= 0.25);
    opts.quant = None;
    let c = compress(&fixture(), &tmp.path().join("f"), &Plan::LowRank(opts.clone()))
        .unwrap()
        .manifest
        .compression
        .unwrap();
    let ranks: usize = c.text_layers.iter().map(|l| l.qkv.unwrap()).sum();
    assert!(ranks <= 24, "float ranks {ranks}");
}

/// GPTQ re-chooses the decoder's integers from the calibration samples' input moments (same
/// scales; the layer-error reduction itself is tested in `quant::gptq`); it needs those
/// samples: quantizing a written directory with it and without them is a typed error, and with
/// the same samples (`cargo xtask quantize --reference … --calib …`) it writes exactly what
/// `compress` writes. On this fixture the
/// calibration answers are 8 tokens, so each layer sees fewer rows than it has inputs and GPTQ
/// overfits (measured: calibration loss 3.61 without, 3.80 with, although every layer's
/// calibration output error drops 1.1–9×): the model runs, no claim is made here.
#[test]
fn gptq_uses_the_calibration_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = low_rank(&tmp.path().join("plain"), Some("w4a8"));
    let mut opts = low_rank_options(Some("w4a8"));
    opts.quant.as_mut().unwrap().gptq = Some(0.01);
    let compensated = compress(&fixture(), &tmp.path().join("gptq"), &Plan::LowRank(opts.clone())).unwrap();
    let (l0, l1) = (plain.calib_loss.unwrap().1, compensated.calib_loss.unwrap().1);
    eprintln!("qsvd 90 % w4a8 calibration loss: clip search {l0}, gptq {l1}");
    assert!(l1.is_finite() && l1 < 2.0 * l0, "gptq {l1} vs {l0}");
    let a = dir::open(&tmp.path().join("plain")).unwrap();
    let b = dir::open(&tmp.path().join("gptq")).unwrap();
    let name = "model.text_model.layers.0.mlp.down_proj.weight";
    assert_eq!(
        a.tensor_bytes(&format!("{name}_scale")).unwrap(),
        b.tensor_bytes(&format!("{name}_scale")).unwrap()
    );
    assert_ne!(a.tensor_bytes(name).unwrap(), b.tensor_bytes(name).unwrap());
    let damping = |d: &pocketvlm_format::ModelData| d.manifest.quantization.as_ref().unwrap().gptq_damping;
    assert_eq!((damping(&a), damping(&b)), (None, Some(0.01)));
    let mut q = QuantOptions::parse("w4a8", None).unwrap();
    q.gptq = Some(0.01);
    let err = quantize_dir(&tmp.path().join("plain"), &tmp.path().join("x"), &q, 32 << 20, None).unwrap_err();
    assert!(matches!(err, CompressError::BadOptions { .. }), "{err:?}");

    let float = tmp.path().join("float");
    low_rank(&float, None);
    let c = opts.calib.as_ref().unwrap();
    let samples = calib::cache::load_or_prepare(
        &Source::open(&fixture()).unwrap(),
        None,
        c,
        None,
        &Progress::silent().stage("calibration samples"),
    )
    .unwrap();
    let again = tmp.path().join("again");
    let m = quantize_dir(&float, &again, &q, 32 << 20, Some(&samples.samples)).unwrap().manifest;
    assert_eq!(m.tensors, compensated.manifest.tensors);
    let c = dir::open(&again).unwrap();
    for t in &m.tensors {
        assert_eq!(c.tensor_bytes(&t.name).unwrap(), b.tensor_bytes(&t.name).unwrap(), "{}", t.name);
    }
}

/// A dense conversion with calibration data applies GPTQ to its INT4 weights: the same model as
/// quantizing the float dense directory with those samples. Calibration data without a low-bit
/// recipe is a typed error (a float dense conversion uses none).
#[test]
fn dense_conversion_with_calibration_uses_gptq() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = low_rank_options(None).calib;
    let mut q = QuantOptions::parse("w4a8", None).unwrap();
    q.gptq = Some(0.01);
    let with = |quant: Option<QuantOptions>| {
        Plan::Dense(DenseOptions { quant, calib: calib.clone(), ..Default::default() })
    };
    let direct = compress(&fixture(), &tmp.path().join("direct"), &with(Some(q.clone()))).unwrap().manifest;
    let plain = quantized_dense(&tmp.path().join("plain"), "w4a8", None);
    let name = "model.text_model.layers.0.mlp.down_proj.weight";
    let (a, b) =
        (dir::open(&tmp.path().join("direct")).unwrap(), dir::open(&tmp.path().join("plain")).unwrap());
    assert_ne!(a.tensor_bytes(name).unwrap(), b.tensor_bytes(name).unwrap(), "GPTQ changed the integers");
    assert_eq!(plain.tensors.len(), direct.tensors.len());

    compress(&fixture(), &tmp.path().join("float"), &Plan::Dense(DenseOptions::default())).unwrap();
    let samples = calib::cache::load_or_prepare(
        &Source::open(&fixture()).unwrap(),
        None,
        calib.as_ref().unwrap(),
        None,
        &Progress::silent().stage("calibration samples"),
    )
    .unwrap();
    let again = tmp.path().join("again");
    let m = quantize_dir(&tmp.path().join("float"), &again, &q, 32 << 20, Some(&samples.samples))
        .unwrap()
        .manifest;
    assert_eq!(m.tensors, direct.tensors);
    let c = dir::open(&again).unwrap();
    for t in &m.tensors {
        assert_eq!(c.tensor_bytes(&t.name).unwrap(), a.tensor_bytes(&t.name).unwrap(), "{}", t.name);
    }

    let err = compress(&fixture(), &tmp.path().join("x"), &with(None)).unwrap_err();
    assert!(matches!(err, CompressError::BadOptions { .. }), "{err:?}");
}
