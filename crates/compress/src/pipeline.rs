//! The low-rank compressor: calibrate, decompose, allocate, optionally rotate and quantize,
//! write format v2 (v3 when quantized), report.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use faer::Mat;
use pocketvlm_format::architecture::expected_tensors;
use pocketvlm_format::components::Component;
use pocketvlm_format::compression::{
    linear_factor_names, qkv_factor_names, text_layer_prefix, text_mlp_linears, vision_layer_prefix,
};
use pocketvlm_format::{
    CalibrationInfo, ComponentBytes, Compression, Encoding, KvCacheInfo, LayerRanks, Manifest, ModelConfig,
    Ratios,
};

use crate::allocate::{Choice, Group, allocate_global, allocate_uniform};
use crate::budget::{self, Budgets};
use crate::calib::{self, CalibOptions, Samples};
use crate::checkpoint::{Checkpoint, RawTensor};
use crate::checkpoint::{SourceMeta, check_checkpoint_tensors};
use crate::error::{CompressError, Result};
use crate::lowrank::decompose::TransformOptions;
use crate::lowrank::linalg::{from_rows, to_rows_f32};
use crate::lowrank::{Decomposition, Method};
use crate::model::weights::{encode, round_through};
use crate::model::{CpuModel, Proj, Target, Tower};
use crate::progress::Progress;
use crate::quant::{QuantOptions, quantize_tensors};
use crate::report;
use crate::writer::{OutTensor, write_model};

/// Everything a low-rank compression run needs.
#[derive(Clone, Debug)]
pub struct LowRankOptions {
    pub method: Method,
    pub budgets: Budgets,
    /// Share of Σ given to the down factor (`down = Σ^β Vᵀ…`, `up = U Σ^(1−β)`).
    pub beta: f64,
    /// Search β over these values instead (quantized recipes only): each candidate is factored,
    /// quantized, written and measured on the calibration samples; the lowest loss wins.
    pub beta_search: Option<Vec<f64>>,
    pub transform: TransformOptions,
    /// Calibration data; required by every recipe but `svd`.
    pub calib: Option<CalibOptions>,
    /// A file keeping prepared calibration samples between runs (see [`calib::cache`]).
    pub calib_cache: Option<PathBuf>,
    /// Encoding of the factors (default: the checkpoint's encoding of the weights they replace).
    pub factor_encoding: Option<Encoding>,
    pub max_shard_bytes: u64,
    /// Rotate and quantize the text decoder after the factorisation (see
    /// [`crate::quant::model`]); the `check` stage then measures the quantized model.
    pub quant: Option<QuantOptions>,
    /// Show progress bars on stderr.
    /// Where the run reports its stages, their times and each β's loss.
    pub progress: Progress,
}

impl LowRankOptions {
    pub fn new(method: Method, budgets: Budgets, calib: Option<CalibOptions>) -> Self {
        Self {
            method,
            budgets,
            beta: 0.5,
            beta_search: None,
            transform: TransformOptions::default(),
            calib,
            calib_cache: None,
            factor_encoding: None,
            max_shard_bytes: pocketvlm_format::DEFAULT_SHARD_BYTES,
            quant: None,
            progress: Progress::silent(),
        }
    }
}

/// What a run produced.
pub struct LowRankSummary {
    pub out_dir: PathBuf,
    pub manifest: Manifest,
    pub compression: Compression,
    /// Wall time per stage.
    pub stages: Vec<(&'static str, f64)>,
    /// Mean answer loss of the dense and the compressed model on the calibration samples.
    pub calib_loss: Option<(f64, f64)>,
    pub report_path: PathBuf,
    pub svg_path: PathBuf,
    /// `(β, calibration loss)` of every candidate when β was searched (see
    /// [`LowRankOptions::beta_search`]).
    pub beta_search: Vec<(f64, f64)>,
}

impl LowRankSummary {
    /// Bytes per component, as stored.
    pub fn component_bytes(&self) -> BTreeMap<String, u64> {
        self.manifest.component_sizes().into_iter().map(|(c, s)| (c.name().to_string(), s.bytes)).collect()
    }
}

/// A pool of groups sharing one budget.
struct Pool {
    targets: Vec<Target>,
    /// Budget in the groups' cost unit.
    budget: u64,
    /// Cost of one component of each group.
    unit_cost: Vec<u64>,
    dense_cost: Vec<Option<u64>>,
}

/// Stacked `[W_q; W_k; W_v]` or a single MLP weight as `[out, in]` f64.
pub fn dense_target_weight(
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, RawTensor<'_>>,
    t: Target,
) -> Result<Mat<f64>> {
    let prefix = match t.tower {
        Tower::Text => text_layer_prefix(t.layer),
        Tower::Vision => vision_layer_prefix(t.layer),
    };
    let names: Vec<String> = match t.proj {
        Proj::Qkv => {
            ["q_proj", "k_proj", "v_proj"].iter().map(|p| format!("{prefix}.self_attn.{p}.weight")).collect()
        }
        Proj::Mlp(i) => vec![format!("{prefix}.mlp.{}.weight", mlp_name(cfg, t.tower, i))],
        Proj::Out => vec![format!("{prefix}.self_attn.{}.weight", out_name(t.tower))],
    };
    let mut rows = Vec::new();
    let mut cols = 0;
    let mut values = Vec::new();
    for n in names {
        let raw = tensors
            .get(&n)
            .ok_or_else(|| pocketvlm_format::FormatError::MissingTensor { name: n.clone() })?;
        rows.push(raw.shape[0]);
        cols = raw.shape[1];
        values.extend(raw.encoding.decode_f32(raw.bytes, &raw.shape));
    }
    Ok(from_rows(rows.iter().sum(), cols, &values))
}

/// The attention output projection's name in `tower`.
fn out_name(tower: Tower) -> &'static str {
    match tower {
        Tower::Text => "o_proj",
        Tower::Vision => "out_proj",
    }
}

fn mlp_name(cfg: &ModelConfig, tower: Tower, i: usize) -> &'static str {
    match tower {
        Tower::Text => text_mlp_linears(cfg)[i].0,
        Tower::Vision => pocketvlm_format::compression::vision_mlp_linears(cfg)[i].0,
    }
}

/// Output row splits of a target (`[d_q, d_kv, d_kv]` for QKV).
pub fn out_splits(cfg: &ModelConfig, t: Target, rows: usize) -> Vec<usize> {
    match (t.tower, t.proj) {
        (Tower::Text, Proj::Qkv) => {
            let hd = cfg.text.head_dim;
            let kv = cfg.text.num_key_value_heads * hd;
            vec![cfg.text.num_attention_heads * hd, kv, kv]
        }
        (Tower::Vision, Proj::Qkv) => vec![cfg.vision.hidden_size; 3],
        _ => vec![rows],
    }
}

/// The dense weight a target replaces (for QKV, `q_proj`'s).
fn dense_weight_name(cfg: &ModelConfig, t: Target) -> String {
    let prefix = match t.tower {
        Tower::Text => text_layer_prefix(t.layer),
        Tower::Vision => vision_layer_prefix(t.layer),
    };
    match t.proj {
        Proj::Qkv => format!("{prefix}.self_attn.q_proj.weight"),
        Proj::Mlp(i) => format!("{prefix}.mlp.{}.weight", mlp_name(cfg, t.tower, i)),
        Proj::Out => format!("{prefix}.self_attn.{}.weight", out_name(t.tower)),
    }
}

/// The named factor tensors of a target for the kept components: `qkv_down` and the
/// `q_up`/`k_up`/`v_up` blocks (rows split `[d_q, d_kv, d_kv]`), or `{linear}.down`/`.up`.
pub fn target_factors(
    cfg: &ModelConfig,
    dec: &Decomposition,
    t: Target,
    kept: &[usize],
    beta: f64,
) -> Vec<(String, Mat<f64>)> {
    let (down, up) = dec.factors(kept, beta);
    let prefix = match t.tower {
        Tower::Text => text_layer_prefix(t.layer),
        Tower::Vision => vision_layer_prefix(t.layer),
    };
    match t.proj {
        Proj::Qkv => {
            let [dn, q, k, v] = qkv_factor_names(&format!("{prefix}.self_attn"));
            let ups = split_rows(&up, &out_splits(cfg, t, up.nrows()));
            std::iter::once((dn, down)).chain([q, k, v].into_iter().zip(ups)).collect()
        }
        Proj::Mlp(i) => {
            let (dn, upn) = linear_factor_names(&format!("{prefix}.mlp.{}", mlp_name(cfg, t.tower, i)));
            vec![(dn, down), (upn, up)]
        }
        Proj::Out => {
            let (dn, upn) = linear_factor_names(&format!("{prefix}.self_attn.{}", out_name(t.tower)));
            vec![(dn, down), (upn, up)]
        }
    }
}

/// Split `m`'s rows into consecutive blocks of the given sizes.
pub fn split_rows(m: &Mat<f64>, sizes: &[usize]) -> Vec<Mat<f64>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let block = Mat::from_fn(n, m.ncols(), |i, j| m[(start + i, j)]);
            start += n;
            block
        })
        .collect()
}

/// Compress the checkpoint in `hf_dir` into `out_dir` with a low-rank recipe.
pub fn compress_lowrank(hf_dir: &Path, out_dir: &Path, opts: &LowRankOptions) -> Result<LowRankSummary> {
    let started = Instant::now();
    let mut stages: Vec<(&'static str, f64)> = Vec::new();
    let mut lap = {
        let mut last = Instant::now();
        let progress = opts.progress.clone();
        move |name: &'static str, stages: &mut Vec<(&'static str, f64)>| {
            let secs = last.elapsed().as_secs_f64();
            progress.lap(name, secs);
            stages.push((name, secs));
            last = Instant::now();
        }
    };
    opts.budgets.validate()?;
    if !(0.0..=1.0).contains(&opts.beta) {
        return Err(CompressError::BudgetOutOfRange {
            name: "beta",
            value: opts.beta,
            range: "0 <= beta <= 1",
        });
    }
    let method = opts.method;
    if method != Method::Svd && opts.calib.is_none() {
        return Err(CompressError::BadOptions {
            recipe: method.name().into(),
            what: "calibration data (--calib <images folder> or --calib-text <file>)".into(),
        });
    }

    let mut meta = SourceMeta::read(hf_dir)?;
    let cfg = meta.model.clone();
    let checkpoint = Checkpoint::open(hf_dir)?;
    let tensors = checkpoint.tensors()?;
    check_checkpoint_tensors(&cfg, &tensors)?;
    let model = CpuModel::build(cfg.clone(), &tensors, None)?;
    lap("load", &mut stages);

    // ---- which groups, in which pools
    let t = &cfg.text;
    let mut pools: Vec<Pool> = Vec::new();
    let b = &opts.budgets;
    if let Some(components) = budget::text_qkv_components(&cfg, b, opts.quant.is_some()) {
        pools.push(Pool {
            targets: (0..t.num_hidden_layers)
                .map(|l| Target { tower: Tower::Text, layer: l, proj: Proj::Qkv })
                .collect(),
            budget: components,
            unit_cost: vec![1; t.num_hidden_layers],
            dense_cost: vec![None; t.num_hidden_layers],
        });
    }
    if let Some(r) = b.ffn_params {
        let mut targets = Vec::new();
        let (mut unit, mut dense, mut total) = (Vec::new(), Vec::new(), 0u64);
        for l in 0..t.num_hidden_layers {
            for (i, (_, out, inp)) in text_mlp_linears(&cfg).iter().enumerate() {
                targets.push(Target { tower: Tower::Text, layer: l, proj: Proj::Mlp(i) });
                unit.push((out + inp) as u64);
                dense.push(method.loss_aware().then_some((out * inp) as u64));
                total += (out * inp) as u64;
            }
        }
        pools.push(Pool { targets, budget: budget::share(r, total), unit_cost: unit, dense_cost: dense });
    }
    if let Some(r) = b.vision_qkv_params {
        let n = cfg.vision.num_hidden_layers;
        pools.push(Pool {
            targets: (0..n).map(|l| Target { tower: Tower::Vision, layer: l, proj: Proj::Qkv }).collect(),
            budget: budget::vision_qkv_components(&cfg, r),
            unit_cost: vec![1; n],
            dense_cost: vec![None; n],
        });
    }
    let targets: Vec<Target> = pools.iter().flat_map(|p| p.targets.iter().copied()).collect();

    // ---- calibration
    let (samples, collected) = match &opts.calib {
        Some(c) => {
            let stage = opts.progress.stage("calibration samples");
            let samples =
                calib::cache::load_or_prepare(hf_dir, &model, &meta, c, opts.calib_cache.as_deref(), &stage)?;
            drop(stage);
            lap("samples", &mut stages);
            let stage = opts.progress.stage("statistics");
            let collected =
                calib::collect(&model, &samples.samples, &targets, method == Method::Laser, &stage)?;
            drop(stage);
            lap("statistics", &mut stages);
            (Some(samples), Some(collected))
        }
        None => (None, None),
    };

    // ---- decompositions
    let stage = opts.progress.stage("decompositions");
    stage.set_total(targets.len() as u64);
    let mut decs: BTreeMap<Target, Decomposition> = BTreeMap::new();
    for &tg in &targets {
        let w = dense_target_weight(&cfg, &tensors, tg)?;
        let stats = collected.as_ref().and_then(|c| c.stats.get(&tg));
        decs.insert(tg, Decomposition::new(method, &w, stats, &opts.transform)?);
        stage.step();
    }
    drop(stage);
    lap("decompositions", &mut stages);

    // ---- scores
    let mut scores: BTreeMap<Target, Vec<f64>> = BTreeMap::new();
    if method == Method::Qsvd {
        let bases = decs.iter().map(|(t, d)| (*t, d.score_bases())).collect();
        let stage = opts.progress.stage("gradient scores");
        let samples = &samples.as_ref().expect("qsvd has samples").samples;
        let rms = calib::gradient_scores(&model, samples, &bases, &stage)?;
        drop(stage);
        for (t, d) in &decs {
            scores.insert(*t, d.svd.s.iter().zip(&rms[t]).map(|(s, r)| s * r).collect());
        }
        lap("gradient scores", &mut stages);
    } else {
        for (t, d) in &decs {
            let s = &d.svd.s;
            scores.insert(
                *t,
                if method == Method::Laser { s.iter().map(|x| 0.5 * x * x).collect() } else { s.clone() },
            );
        }
    }

    // ---- allocation
    let mut choices: BTreeMap<Target, Choice> = BTreeMap::new();
    for pool in &pools {
        let groups: Vec<Group> = pool
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| Group {
                scores: scores[t].clone(),
                unit_cost: pool.unit_cost[i],
                dense_cost: pool.dense_cost[i],
                min_rank: 1,
            })
            .collect();
        let chosen = if method.loss_aware() {
            allocate_global(&groups, pool.budget)?
        } else {
            allocate_uniform(&groups, pool.budget)?
        };
        for (t, c) in pool.targets.iter().zip(chosen) {
            choices.insert(*t, c);
        }
    }

    // ---- factors, quantization, the written model and its check: once per candidate β (the
    // search keeps the candidate with the lowest calibration loss)
    let betas = beta_candidates(opts, samples.is_some())?;
    let source_model = meta.model.clone();
    let mut results: Vec<LowRankSummary> = Vec::new();
    for (k, &beta) in betas.iter().enumerate() {
        meta.model = source_model.clone();
        let candidate = if betas.len() == 1 { out_dir.to_path_buf() } else { candidate_dir(out_dir, k) };
        let out_dir = candidate.as_path();
        // ---- factors
        let mut text_layers: Vec<LayerRanks> =
            (0..t.num_hidden_layers).map(|l| LayerRanks { layer: l, ..Default::default() }).collect();
        let mut vision_layers: Vec<LayerRanks> = if b.vision_qkv_params.is_some() {
            (0..cfg.vision.num_hidden_layers).map(|l| LayerRanks { layer: l, ..Default::default() }).collect()
        } else {
            Vec::new()
        };
        let mut factors: HashMap<String, (Vec<usize>, Encoding, Vec<f32>)> = HashMap::new();
        for (tg, choice) in &choices {
            let Choice::Keep(kept) = choice else { continue };
            let layer = match tg.tower {
                Tower::Text => &mut text_layers[tg.layer],
                Tower::Vision => &mut vision_layers[tg.layer],
            };
            match tg.proj {
                Proj::Qkv => layer.qkv = Some(kept.len()),
                Proj::Mlp(i) => {
                    layer.mlp.insert(mlp_name(&cfg, tg.tower, i).to_string(), kept.len());
                }
                Proj::Out => {
                    return Err(CompressError::BadOptions {
                        recipe: method.name().into(),
                        what: "no factored attention output projections (the format has none)".into(),
                    });
                }
            }
            let encoding = opts.factor_encoding.unwrap_or(tensors[&dense_weight_name(&cfg, *tg)].encoding);
            for (name, m) in target_factors(&cfg, &decs[tg], *tg, kept, beta) {
                let values = round_through(encoding, &to_rows_f32(&m))?;
                factors.insert(name, (vec![m.nrows(), m.ncols()], encoding, values));
            }
        }
        lap("allocation and factors", &mut stages);

        // ---- sizes and the compression section
        let mut compression = Compression {
            recipe: method.name().to_string(),
            beta,
            budgets: Ratios { qkv_params: b.qkv_params, kv_cache: b.kv_cache, ffn_params: b.ffn_params },
            achieved: Ratios::default(),
            text_layers,
            vision_layers,
            sizes: Vec::new(),
            kv_cache: KvCacheInfo { element_bytes: 2, bytes_per_token: 0, dense_bytes_per_token: 0 },
            calibration: match (&opts.calib, &samples, &collected) {
                (Some(c), Some(s), Some(col)) => calib_info(c, s, col),
                _ => CalibrationInfo::none(),
            },
        };
        compression.achieved = budget::achieved(&cfg, &compression);
        budget::record_kv_cache(&cfg, &mut compression, opts.quant.is_some());

        let layout = expected_tensors(&cfg, Some(&compression));
        let dense_layout = expected_tensors(&cfg, None);
        let mut sizes: BTreeMap<Component, ComponentBytes> = Component::ALL
            .iter()
            .map(|c| {
                (
                    *c,
                    ComponentBytes {
                        component: c.name().into(),
                        params: 0,
                        bytes: 0,
                        dense_params: 0,
                        dense_bytes: 0,
                    },
                )
            })
            .collect();
        for (name, shape) in &dense_layout {
            let e = sizes.get_mut(&Component::of(name)).expect("every component listed");
            let numel: usize = shape.iter().product();
            e.dense_params += numel as u64;
            e.dense_bytes += tensors[name].bytes.len() as u64;
        }
        let mut out: Vec<OutTensor<'_>> = Vec::with_capacity(layout.len());
        for (name, shape) in layout {
            out.push(match factors.remove(&name) {
                Some((fshape, enc, values)) => {
                    debug_assert_eq!(fshape, shape);
                    OutTensor { name, shape, encoding: enc, bytes: Cow::Owned(encode(enc, &values)?) }
                }
                None => {
                    let raw = &tensors[&name];
                    OutTensor { name, shape, encoding: raw.encoding, bytes: Cow::Borrowed(raw.bytes) }
                }
            });
        }
        // a rotation that unties lm_head changes the config the manifest records
        let quantization = match &opts.quant {
            Some(q) => {
                let (tensors, quantized) = quantize_tensors(
                    &mut meta.model,
                    Some(&compression),
                    out,
                    q,
                    samples.as_ref().map(|s| s.samples.as_slice()),
                )?;
                out = tensors;
                lap("quantize", &mut stages);
                Some(quantized.section)
            }
            None => None,
        };
        compression.sizes = sizes.into_values().collect();
        budget::count_sizes(&mut compression.sizes, &out);
        let manifest = write_model(
            &meta,
            method.name(),
            Some(compression.clone()),
            quantization,
            out,
            out_dir,
            opts.max_shard_bytes,
        )?;
        lap("write", &mut stages);

        // ---- fidelity on the calibration samples, through the written model
        let calib_loss = match (&samples, &collected) {
            (Some(s), Some(c)) => {
                let compressed = CpuModel::from_format(out_dir)?;
                // the cached image features are the float connector's output, rotated into a
                // rotated model's residual basis (`R f`): the check measures the quantized
                // decoder and embeddings, not the quantized vision tower and connector (the
                // fixture model tests measure those end to end against transformers)
                let rotation = match manifest.quantization.as_ref().and_then(|q| q.residual_rotation) {
                    Some(spec) => Some(spec.build()?),
                    None => None,
                };
                let stage = opts.progress.stage("compressed loss");
                stage.set_total(s.samples.len() as u64);
                let mut sum = 0.0;
                for sample in &s.samples {
                    let features = sample.features_in(rotation.as_ref())?;
                    let embeds = compressed.merge_embeddings(&sample.ids, features.as_ref())?;
                    let loss = compressed.answer_loss(&embeds, &sample.ids, sample.answer_start, None)?;
                    sum += loss.to_scalar::<f32>()? as f64;
                    stage.step();
                }
                drop(stage);
                lap("check", &mut stages);
                Some((c.mean_loss, sum / s.samples.len().max(1) as f64))
            }
            _ => None,
        };
        let total = started.elapsed().as_secs_f64();
        let (report_path, svg_path) = report::write(out_dir, &cfg, &compression, &stages, total, calib_loss)?;
        if betas.len() > 1 {
            opts.progress.note(&format!("beta {beta}: calibration loss {:?}", calib_loss.map(|l| l.1)));
        }
        results.push(LowRankSummary {
            out_dir: out_dir.to_path_buf(),
            manifest,
            compression,
            stages: stages.clone(),
            calib_loss,
            report_path,
            svg_path,
            beta_search: Vec::new(),
        });
    }
    pick_beta(results, out_dir)
}

/// The β values to try: `opts.beta` alone, or the search grid (which needs calibration samples
/// to measure and a quantized recipe to matter: β only changes how the factors quantize).
fn beta_candidates(opts: &LowRankOptions, calibrated: bool) -> Result<Vec<f64>> {
    let Some(grid) = &opts.beta_search else { return Ok(vec![opts.beta]) };
    let bad = |what: &str| CompressError::BadOptions { recipe: "--beta-search".into(), what: what.into() };
    if opts.quant.is_none() {
        return Err(bad("a low-bit recipe (--bits): β does not change a float model"));
    }
    if !calibrated {
        return Err(bad("calibration data to measure each candidate"));
    }
    if grid.is_empty() {
        return Err(bad("at least one β"));
    }
    if let Some(&value) = grid.iter().find(|b| !(0.0..=1.0).contains(*b)) {
        return Err(CompressError::BudgetOutOfRange { name: "beta", value, range: "0 <= beta <= 1" });
    }
    Ok(grid.clone())
}

/// Where β candidate `k` is written before the search picks one.
fn candidate_dir(out_dir: &Path, k: usize) -> PathBuf {
    let name = out_dir.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
    out_dir.with_file_name(format!(".{name}.beta-{k}"))
}

/// Keep the candidate with the lowest calibration loss: its files move into `out_dir`, the
/// other candidates are removed, and the summary lists every candidate's loss.
fn pick_beta(mut results: Vec<LowRankSummary>, out_dir: &Path) -> Result<LowRankSummary> {
    if results.len() == 1 {
        return Ok(results.remove(0));
    }
    let loss = |r: &LowRankSummary| r.calib_loss.map_or(f64::INFINITY, |l| l.1);
    let search: Vec<(f64, f64)> = results.iter().map(|r| (r.compression.beta, loss(r))).collect();
    let best =
        (0..results.len()).min_by(|&a, &b| loss(&results[a]).total_cmp(&loss(&results[b]))).unwrap_or(0);
    let io =
        |path: &Path, e| pocketvlm_format::FormatError::Io { path: path.display().to_string(), source: e };
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    for (k, r) in results.iter().enumerate() {
        if k == best {
            for entry in std::fs::read_dir(&r.out_dir).map_err(|e| io(&r.out_dir, e))? {
                let from = entry.map_err(|e| io(&r.out_dir, e))?.path();
                let to = out_dir.join(from.file_name().unwrap_or_default());
                std::fs::rename(&from, &to).map_err(|e| io(&from, e))?;
            }
        }
        std::fs::remove_dir_all(&r.out_dir).map_err(|e| io(&r.out_dir, e))?;
    }
    let mut chosen = results.swap_remove(best);
    chosen.report_path = out_dir.join(chosen.report_path.file_name().unwrap_or_default());
    chosen.svg_path = out_dir.join(chosen.svg_path.file_name().unwrap_or_default());
    chosen.out_dir = out_dir.to_path_buf();
    chosen.beta_search = search;
    Ok(chosen)
}

fn calib_info(c: &CalibOptions, s: &Samples, col: &calib::Collected) -> CalibrationInfo {
    CalibrationInfo {
        mode: s.mode.into(),
        targets: s.targets.clone(),
        samples: s.samples.len(),
        loss_tokens: col.loss_tokens,
        tokens: col.tokens,
        seed: c.seed,
        image_splitting: c.tiling,
    }
}
