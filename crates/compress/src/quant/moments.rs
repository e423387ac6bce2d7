//! The calibration moments of every text-decoder linear matrix, in the coordinates its quantizer
//! sees: the input second moments `H = E[x xᵀ]` (GPTQ's curvature, [`crate::quant::gptq`]) and,
//! for the width allocation ([`crate::quant::widths`]), the output-gradient second moments
//! `G = E[g gᵀ]` with `g = ∂L/∂y` (the other Kronecker factor of K-FAC).
//!
//! The samples run through the float model of the store after its offline rotations (image
//! features, cached from the unrotated connector, are rotated by the residual rotation first, as
//! the model's own connector would). Stacked Q/K/V share `H`; each of `q`, `k`, `v` takes its
//! diagonal block of the stacked output's `G` (the cross blocks are not kept). A factored layer
//! `y = U c`, `c = D x` gives its down factor `H` and `G_c = Uᵀ G U` (the gradient reaching the
//! latent is `Uᵀ g`), and its up factors `H_c = D H Dᵀ` and their blocks of `G`. An online
//! rotation `R` of a layer's input turns `H` into `R H Rᵀ` ([`rotate_moments`]); `G` does not
//! change.
//!
//! With gradients, the width allocation also prices the token embeddings and `lm_head`:
//! `lm_head`'s `H` over the rows that predict answer tokens (its only rows with a gradient) and
//! its `G` kept as the gradient rows themselves, `G = Bᵀ B / N` (a `[vocab, vocab]` matrix would
//! not fit; beyond 2 048 rows an unbiased sketch of them, see `GradientRows`), and the embedding table's moments ([`TableMoments`]): the gradient reaching the
//! embeddings and how often each token occurs. Every `G` is normalised by the same `N`, the
//! calibration rows of the decoder, so that the costs of all units add up on one scale: the loss
//! of a sample sums `(gᵀ ΔW x)²` over its rows, and K-FAC's factored expectation times the rows
//! of a sample is what each unit's cost is up to one factor common to all of them.

use std::collections::{BTreeMap, HashMap};

use candle_core::Var;
use faer::Mat;
use pocketvlm_format::compression::{
    kv_factor_names, linear_factor_names, qkv_factor_names, text_layer_prefix, text_mlp_linears,
};
use pocketvlm_format::quant::Rotation;
use pocketvlm_format::quant::rotation::SplitMix64;
use pocketvlm_format::{Compression, ModelConfig};

use crate::calib::Sample;
use crate::error::{CompressError, Result};
use crate::lowrank::linalg::from_rows;
use crate::model::weights::{MemoryStore, stored};
use crate::model::{CpuModel, Proj, Tape, Target, Tower, cross_entropy};
use pocketvlm_format::architecture::{EMBED_TOKENS, LM_HEAD};

/// The moments of one matrix's input (and output gradient).
#[derive(Clone, Debug)]
pub struct Moments {
    /// `E[x xᵀ]`, `[in, in]`.
    pub h: Mat<f64>,
    /// `E[g gᵀ]`, when gradients were taken.
    pub g: Option<OutputMoments>,
}

/// `G = E[g gᵀ]` of a matrix's output gradient.
#[derive(Clone, Debug)]
pub enum OutputMoments {
    /// `G` itself, `[out, out]`.
    Full(Mat<f64>),
    /// `G = Bᵀ B / n` from the gradient rows `B` (`[rows, out]`, row-major f32): an output too
    /// wide to form `G` (`lm_head`'s vocabulary).
    Rows { b: Vec<f32>, out: usize, n: usize },
}

/// The calibration moments the quantizer uses (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct CalibrationMoments {
    /// Every text-decoder linear matrix by tensor name, and with gradients `lm_head` (under the
    /// embeddings' name when tied).
    pub layers: HashMap<String, Moments>,
    /// The token embeddings, with gradients.
    pub table: Option<TableMoments>,
}

/// The embedding table's moments: a linear layer on one-hot tokens.
#[derive(Clone, Debug)]
pub struct TableMoments {
    /// `n_v / N`: how often token `v` occurs among the `N` calibration rows.
    pub frequency: Vec<f64>,
    /// `G = E[g gᵀ]` of the gradient reaching the embeddings at the text positions (the rows
    /// that read the table), `[d, d]`.
    pub g: Mat<f64>,
}

impl TableMoments {
    /// `½ Σ_v (n_v / N) Δe_vᵀ G Δe_v` for the change `delta` (row-major `[vocab, d]`).
    pub fn cost(&self, delta: &[f64]) -> f64 {
        let d = self.g.nrows();
        let mut sum = 0.0;
        for (v, &f) in self.frequency.iter().enumerate().filter(|(_, f)| **f > 0.0) {
            let e = &delta[v * d..(v + 1) * d];
            let quad: f64 = (0..d).map(|i| e[i] * (0..d).map(|j| self.g[(i, j)] * e[j]).sum::<f64>()).sum();
            sum += f * quad;
        }
        0.5 * sum
    }
}

/// Running sums of one tapped target over the samples.
#[derive(Default)]
struct Sums {
    xx: Vec<f64>,
    gg: Vec<f64>,
    rows: usize,
}

fn add(acc: &mut Vec<f64>, t: &candle_core::Tensor) -> Result<()> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    if acc.is_empty() {
        acc.resize(v.len(), 0.0);
    }
    acc.iter_mut().zip(&v).for_each(|(a, x)| *a += *x as f64);
    Ok(())
}

fn square(acc: &[f64], rows: usize) -> Mat<f64> {
    let d = (acc.len() as f64).sqrt().round() as usize;
    Mat::from_fn(d, d, |i, j| acc[i * d + j] / rows.max(1) as f64)
}

/// A latent's down factor and its ups, each with its block of the stacked `[q; k; v]` output
/// (0, 1 or 2).
struct LatentFactors {
    down: String,
    ups: Vec<(String, usize)>,
}

/// The moments of every text-decoder linear matrix in `store` (Hugging Face names and the factor
/// names of `compression`) from `samples`; with `grads`, `G` too (a backward pass per sample on
/// its answer loss), and the moments of `lm_head` and of the embedding table. See the module
/// documentation.
pub fn decoder_moments(
    cfg: &ModelConfig,
    store: &MemoryStore,
    compression: Option<&Compression>,
    samples: &[Sample],
    residual: Option<&Rotation>,
    grads: bool,
) -> Result<CalibrationMoments> {
    let model = CpuModel::build(cfg.clone(), store, compression)?;
    let layers = cfg.text.num_hidden_layers;
    let projs = [Proj::Qkv, Proj::Out, Proj::Mlp(0), Proj::Mlp(1), Proj::Mlp(2)];
    let targets: Vec<Target> =
        (0..layers).flat_map(|layer| projs.map(|proj| Target { tower: Tower::Text, layer, proj })).collect();
    let mut sums: BTreeMap<Target, Sums> = BTreeMap::new();
    let mut ends = EndSums::default();
    for s in samples {
        let features = s.features_in(residual)?;
        let embeds = model.merge_embeddings(&s.ids, features.as_ref())?;
        let mut tape = Tape::new(targets.iter().copied(), grads);
        let grad_store = if grads {
            Some(ends.backward(&model, cfg, &embeds, s, &mut tape)?)
        } else {
            model.text.forward(&embeds, None, Some(&mut tape))?;
            None
        };
        for entry in tape.entries {
            let acc = sums.entry(entry.target).or_default();
            acc.rows += entry.x.dim(0)?;
            add(&mut acc.xx, &entry.x.t()?.matmul(&entry.x)?)?;
            if let (Some(store), Some(probe)) = (&grad_store, &entry.probe) {
                let g = store.get(probe.as_tensor()).ok_or_else(|| {
                    CompressError::Calibration(format!("no gradient reached {:?}", entry.target))
                })?;
                add(&mut acc.gg, &g.t()?.matmul(g)?)?;
            }
        }
    }
    let rows = sums.values().next().map_or(0, |s| s.rows);
    let moments = |t: Target| -> Result<(Mat<f64>, Option<Mat<f64>>)> {
        let s = sums.get(&t).ok_or_else(|| CompressError::Calibration("no calibration rows".into()))?;
        Ok((square(&s.xx, s.rows), grads.then(|| square(&s.gg, s.rows))))
    };
    let tensor = |name: &str| -> Result<Mat<f64>> {
        let (shape, values) = stored(store, name)?;
        Ok(from_rows(shape[0], shape[1], values))
    };
    let block = |g: &Option<Mat<f64>>, start: usize, len: usize| {
        g.as_ref().map(|g| g.submatrix(start, start, len, len).to_owned())
    };
    let mut out = HashMap::new();
    for i in 0..layers {
        let p = text_layer_prefix(i);
        let attn = format!("{p}.self_attn");
        let ranks = compression.and_then(|c| c.text_layers.get(i));
        let t = |proj| Target { tower: Tower::Text, layer: i, proj };
        let (h, g) = moments(t(Proj::Qkv))?;
        let t_cfg = &cfg.text;
        let widths = [t_cfg.num_attention_heads, t_cfg.num_key_value_heads, t_cfg.num_key_value_heads]
            .map(|heads| heads * t_cfg.head_dim);
        let starts = [0, widths[0], widths[0] + widths[1]];
        // the latent's factors, and the dense projections beside it (blocks of [q; k; v])
        let (latent, dense) = match ranks.map_or((None, None), |l| (l.qkv, l.kv)) {
            (Some(_), _) => {
                let [down, q, k, v] = qkv_factor_names(&attn);
                (Some(LatentFactors { down, ups: vec![(q, 0), (k, 1), (v, 2)] }), vec![])
            }
            (None, Some(_)) => {
                let [down, k, v] = kv_factor_names(&attn);
                (Some(LatentFactors { down, ups: vec![(k, 1), (v, 2)] }), vec![0])
            }
            (None, None) => (None, vec![0, 1, 2]),
        };
        if let Some(LatentFactors { down, ups }) = latent {
            let d = tensor(&down)?;
            let c = &d * &h * d.transpose();
            let mats: Vec<(Mat<f64>, usize)> =
                ups.iter().map(|(n, m)| Ok((tensor(n)?, *m))).collect::<Result<_>>()?;
            // G of the latent: the ups stacked over their output rows, Uᵀ G U
            let g_c = g.as_ref().map(|g| {
                let rows: usize = mats.iter().map(|(u, _)| u.nrows()).sum();
                let rank = mats[0].0.ncols();
                let first = starts[mats[0].1];
                let u = Mat::from_fn(rows, rank, |r, k| {
                    let (up, m) = mats.iter().rev().find(|(_, m)| first + r >= starts[*m]).expect("a block");
                    up[(first + r - starts[*m], k)]
                });
                u.transpose() * g.submatrix(first, first, rows, rows) * &u
            });
            for (name, m) in ups {
                out.insert(name, full(c.clone(), block(&g, starts[m], widths[m])));
            }
            out.insert(down, full(h.clone(), g_c));
        }
        for m in dense {
            let n = ["q_proj", "k_proj", "v_proj"][m];
            out.insert(format!("{attn}.{n}.weight"), full(h.clone(), block(&g, starts[m], widths[m])));
        }
        let (h, g) = moments(t(Proj::Out))?;
        out.insert(format!("{attn}.o_proj.weight"), full(h, g));
        for (k, (name, _, _)) in text_mlp_linears(cfg).into_iter().enumerate() {
            let (h, g) = moments(t(Proj::Mlp(k)))?;
            let base = format!("{p}.mlp.{name}");
            if ranks.is_some_and(|l| l.mlp.contains_key(name)) {
                let (down, up) = linear_factor_names(&base);
                let (d, u) = (tensor(&down)?, tensor(&up)?);
                let g_c = g.as_ref().map(|g| u.transpose() * g * &u);
                out.insert(up, full(&d * &h * d.transpose(), g));
                out.insert(down, full(h, g_c));
            } else {
                out.insert(format!("{base}.weight"), full(h, g));
            }
        }
    }
    let mut table = None;
    if grads {
        let head = if cfg.text.tie_word_embeddings { EMBED_TOKENS } else { LM_HEAD };
        out.insert(head.to_string(), ends.head(rows, cfg.text.vocab_size));
        table = Some(ends.table(rows));
    }
    Ok(CalibrationMoments { layers: out, table })
}

fn full(h: Mat<f64>, g: Option<Mat<f64>>) -> Moments {
    Moments { h, g: g.map(OutputMoments::Full) }
}

/// Running sums of the two ends of the decoder: the embeddings' gradients and token counts, and
/// `lm_head`'s inputs and gradient rows.
#[derive(Default)]
struct EndSums {
    embed_gg: Vec<f64>,
    text_rows: usize,
    counts: Vec<f64>,
    head_xx: Vec<f64>,
    head_rows: usize,
    head_grads: GradientRows,
}

impl EndSums {
    /// The backward pass of sample `s` on its answer loss with probes at the embeddings and at
    /// the logits, whose gradients (and `lm_head`'s inputs, and the sample's tokens) are added.
    fn backward(
        &mut self,
        model: &CpuModel,
        cfg: &ModelConfig,
        embeds: &candle_core::Tensor,
        s: &Sample,
        tape: &mut Tape,
    ) -> Result<candle_core::backprop::GradStore> {
        let embed_probe = Var::zeros(embeds.shape(), embeds.dtype(), embeds.device())?;
        let embeds = embeds.add(embed_probe.as_tensor())?;
        let (x, logits) = model.answer_logits(&embeds, &s.ids, s.answer_start, Some(tape))?;
        let logit_probe = Var::zeros(logits.shape(), logits.dtype(), logits.device())?;
        let logits = logits.add(logit_probe.as_tensor())?;
        let grads = cross_entropy(&logits, &s.ids[s.answer_start..])?.backward()?;
        let gradient = |probe: &Var| {
            grads.get(probe.as_tensor()).cloned().ok_or_else(|| {
                CompressError::Calibration("no gradient reached the embeddings or the logits".into())
            })
        };
        // the table's rows are read at the text positions only
        let text: Vec<u32> =
            (0..s.ids.len() as u32).filter(|&t| s.ids[t as usize] != cfg.image_token_id).collect();
        let g = gradient(&embed_probe)?
            .index_select(&candle_core::Tensor::new(text.as_slice(), embeds.device())?, 0)?;
        add(&mut self.embed_gg, &g.t()?.matmul(&g)?)?;
        self.text_rows += text.len();
        self.counts.resize(cfg.text.vocab_size, 0.0);
        for &t in &text {
            self.counts[s.ids[t as usize] as usize] += 1.0;
        }
        let x = x.detach();
        add(&mut self.head_xx, &x.t()?.matmul(&x)?)?;
        self.head_rows += x.dim(0)?;
        let g = gradient(&logit_probe)?;
        for row in g.flatten_all()?.to_vec1::<f32>()?.chunks_exact(g.dim(1)?) {
            self.head_grads.push(row);
        }
        Ok(grads)
    }

    /// `lm_head`'s moments: `H` over its rows, `G` from the gradient rows over the decoder's
    /// `rows`.
    fn head(&mut self, rows: usize, vocab: usize) -> Moments {
        let b = std::mem::take(&mut self.head_grads.rows);
        Moments {
            h: square(&self.head_xx, self.head_rows),
            g: Some(OutputMoments::Rows { b, out: vocab, n: rows }),
        }
    }

    fn table(&self, rows: usize) -> TableMoments {
        let n = rows.max(1) as f64;
        let frequency = self.counts.iter().map(|c| c / n).collect();
        TableMoments { frequency, g: square(&self.embed_gg, self.text_rows) }
    }
}

/// At most this many gradient rows of `lm_head` are kept (400 MB for a 49 152-token vocabulary).
const HEAD_ROWS: usize = 2048;

/// Gradient rows `B` for `G = Bᵀ B / n`, in bounded memory: the first [`HEAD_ROWS`] rows as they
/// are, then each further row `b` added with a random sign `σ = ±1` to a random kept row (a
/// CountSketch `B̃ = S B`). The expectation of `B̃ᵀ B̃` over the signs is `Bᵀ B` — every cross
/// term `σ_r b_r b_sᵀ` has mean zero — so the cost built on it stays unbiased, and exact for a
/// calibration set with at most [`HEAD_ROWS`] answer rows (the 32 image samples have ≈ 1 000).
#[derive(Default)]
struct GradientRows {
    rows: Vec<f32>,
    width: usize,
    seen: usize,
    rng: Option<SplitMix64>,
}

impl GradientRows {
    fn push(&mut self, row: &[f32]) {
        self.width = row.len();
        self.seen += 1;
        if self.seen <= HEAD_ROWS {
            self.rows.extend_from_slice(row);
            return;
        }
        let rng = self.rng.get_or_insert(SplitMix64(0x5EED_0F4E_AD00));
        let draw = rng.next_u64();
        let kept = (draw >> 1) as usize % HEAD_ROWS;
        let sign = if draw & 1 == 1 { -1.0 } else { 1.0 };
        let target = &mut self.rows[kept * self.width..(kept + 1) * self.width];
        target.iter_mut().zip(row).for_each(|(t, v)| *t += sign * v);
    }
}

/// `R H Rᵀ`: the moments of inputs that an online rotation `R` turns into `R x`.
pub fn rotate_moments(h: &Mat<f64>, r: &Rotation) -> Result<Mat<f64>> {
    let n = h.nrows();
    // rows of H rotated: H Rᵀ; its transpose is R H (H is symmetric); rows of that: R H Rᵀ
    let mut rows: Vec<f64> = (0..n * n).map(|k| h[(k / n, k % n)]).collect();
    for pass in 0..2 {
        r.apply_rows(&mut rows)?;
        if pass == 0 {
            rows = (0..n * n).map(|k| rows[(k % n) * n + k / n]).collect();
        }
    }
    Ok(Mat::from_fn(n, n, |i, j| rows[i * n + j]))
}

/// `½ tr(G ΔW H ΔWᵀ)` with `ΔW = W − Ŵ` (row-major `[out, in]`): the K-FAC estimate of the loss
/// a change `ΔW` of a layer's weight costs at a minimum of the loss (the first-order term
/// vanishes in expectation there; `G ⊗ H` approximates the Fisher of the layer's weights).
/// Without `G`, `½ tr(ΔW H ΔWᵀ)`. With gradient rows `B`, `½ tr(C H Cᵀ) / n` for `C = B ΔW`.
pub fn kfac_cost(delta: &[f64], out: usize, cols: usize, h: &Mat<f64>, g: Option<&OutputMoments>) -> f64 {
    let d = Mat::from_fn(out, cols, |o, j| delta[o * cols + j]);
    let (left, scale) = match g {
        Some(OutputMoments::Full(g)) => (g * &d, 1.0),
        Some(OutputMoments::Rows { b, out: width, n }) => {
            (gradient_rows_times(b, *width, &d), 1.0 / (*n).max(1) as f64)
        }
        None => (d.clone(), 1.0),
    };
    let right = match g {
        Some(OutputMoments::Rows { .. }) => &left * h,
        _ => &d * h,
    };
    let mut sum = 0.0;
    for o in 0..left.nrows() {
        for j in 0..cols {
            sum += left[(o, j)] * right[(o, j)];
        }
    }
    0.5 * scale * sum
}

/// `B ΔW` for gradient rows `b` (`[rows, out]`, row-major) and `ΔW` `[out, in]`, a block of
/// `ΔW`'s rows at a time.
fn gradient_rows_times(b: &[f32], out: usize, delta: &Mat<f64>) -> Mat<f64> {
    let rows = b.len() / out.max(1);
    let mut c = Mat::<f64>::zeros(rows, delta.ncols());
    const BLOCK: usize = 4096;
    for start in (0..out).step_by(BLOCK) {
        let len = BLOCK.min(out - start);
        let block = Mat::from_fn(rows, len, |r, k| b[r * out + start + k] as f64);
        c += &block * delta.subrows(start, len);
    }
    c
}

#[cfg(test)]
mod tests {
    use pocketvlm_format::quant::{Construction, Rotation};

    use super::*;

    /// A deterministic pseudo-random value in (−1, 1).
    fn noise(k: usize) -> f64 {
        let x = ((k as f64 + 0.5) * 12.9898).sin() * 43758.5453;
        2.0 * (x - x.floor()) - 1.0
    }

    fn gram(n: usize, seed: usize) -> Mat<f64> {
        let a = Mat::from_fn(n, 64, |i, t| {
            noise(seed + t * 7 + i % 3) * 2.0 + 0.3 * noise(seed + 1000 + t * n + i)
        });
        &a * a.transpose() / 64.0
    }

    #[test]
    fn rotated_moments_are_r_h_rt() {
        let n = 48;
        let h = gram(n, 0);
        let r = Rotation::new(n, Construction::Kronecker, Some(3)).unwrap();
        // R column by column: R e_j
        let mut cols = vec![0f64; n * n];
        for j in 0..n {
            let mut e = vec![0f64; n];
            e[j] = 1.0;
            r.apply(&mut e).unwrap();
            (0..n).for_each(|i| cols[i * n + j] = e[i]);
        }
        let rm = Mat::from_fn(n, n, |i, j| cols[i * n + j]);
        let want = &rm * &h * rm.transpose();
        let got = rotate_moments(&h, &r).unwrap();
        let err = (0..n * n).map(|k| (want[(k / n, k % n)] - got[(k / n, k % n)]).abs()).fold(0.0, f64::max);
        assert!(err < 1e-9, "{err}");
    }

    /// For rank-one moments `H = x xᵀ`, `G = g gᵀ` the K-FAC cost is `½ (gᵀ ΔW x)²`, computed
    /// here directly; without `G` it is half the output error `½ ‖ΔW x‖²`.
    #[test]
    fn kfac_cost_of_rank_one_moments_is_half_the_squared_directional_change() {
        let (out, cols) = (5, 7);
        let delta: Vec<f64> = (0..out * cols).map(|k| noise(300 + k)).collect();
        let x: Vec<f64> = (0..cols).map(|k| noise(500 + k)).collect();
        let g: Vec<f64> = (0..out).map(|k| noise(700 + k)).collect();
        let m = Moments {
            h: Mat::from_fn(cols, cols, |i, j| x[i] * x[j]),
            g: Some(OutputMoments::Full(Mat::from_fn(out, out, |i, j| g[i] * g[j]))),
        };
        let dir: f64 =
            (0..out).map(|o| g[o] * (0..cols).map(|j| delta[o * cols + j] * x[j]).sum::<f64>()).sum();
        let got = kfac_cost(&delta, out, cols, &m.h, m.g.as_ref());
        assert!((got - 0.5 * dir * dir).abs() < 1e-12 * (1.0 + got.abs()), "{got} vs {}", 0.5 * dir * dir);
        let plain = kfac_cost(&delta, out, cols, &m.h, None);
        let y: f64 =
            (0..out).map(|o| (0..cols).map(|j| delta[o * cols + j] * x[j]).sum::<f64>().powi(2)).sum();
        assert!((plain - 0.5 * y).abs() < 1e-12 * (1.0 + y));
    }

    /// `G` given as gradient rows `B` (`G = Bᵀ B / n`) costs what the full `G` does; the table's
    /// cost is K-FAC's with the one-hot input moments `H = diag(n_v / N)`.
    #[test]
    fn gradient_rows_and_the_table_cost_what_full_k_fac_does() {
        let (out, cols, rows, n) = (9, 6, 4, 7);
        let delta: Vec<f64> = (0..out * cols).map(|k| noise(900 + k)).collect();
        let b: Vec<f32> = (0..rows * out).map(|k| noise(1300 + k) as f32).collect();
        let bm = Mat::from_fn(rows, out, |r, o| b[r * out + o] as f64);
        let h = gram(cols, 40);
        let full = Moments { h: h.clone(), g: Some(OutputMoments::Full(bm.transpose() * &bm / n as f64)) };
        let factored = Moments { h, g: Some(OutputMoments::Rows { b, out, n }) };
        let (want, got) = (
            kfac_cost(&delta, out, cols, &full.h, full.g.as_ref()),
            kfac_cost(&delta, out, cols, &factored.h, factored.g.as_ref()),
        );
        assert!((want - got).abs() < 1e-12 * (1.0 + want.abs()), "{got} vs {want}");

        // the table: `out` tokens of width `cols`, some never seen
        let frequency: Vec<f64> =
            (0..out).map(|v| if v % 3 == 1 { 0.0 } else { (v + 1) as f64 / 50.0 }).collect();
        let g = gram(cols, 80);
        let table = TableMoments { frequency: frequency.clone(), g: g.clone() };
        // as a linear layer y = Eᵀ x on one-hot x: W = Eᵀ `[cols, out]`, H = diag(freq), G = g
        let transposed: Vec<f64> = (0..cols * out).map(|k| delta[(k % out) * cols + k / out]).collect();
        let m = Moments {
            h: Mat::from_fn(out, out, |i, j| if i == j { frequency[i] } else { 0.0 }),
            g: Some(OutputMoments::Full(g)),
        };
        let want = kfac_cost(&transposed, cols, out, &m.h, m.g.as_ref());
        let got = table.cost(&delta);
        assert!((want - got).abs() < 1e-12 * (1.0 + want.abs()), "{got} vs {want}");
    }

    /// Up to [`HEAD_ROWS`] gradient rows are kept exactly; beyond, memory stays at that many rows
    /// and `B̃ᵀ B̃` averages to `Bᵀ B` (here: its trace, over many rows of one direction with
    /// random signs, stays within a few per cent).
    #[test]
    fn gradient_rows_are_exact_up_to_the_cap_and_bounded_beyond() {
        let mut rows = GradientRows::default();
        let row = |k: usize| -> Vec<f32> { (0..3).map(|j| noise(k * 3 + j) as f32).collect() };
        for k in 0..HEAD_ROWS {
            rows.push(&row(k));
        }
        let exact: Vec<f32> = (0..HEAD_ROWS).flat_map(row).collect();
        assert_eq!(rows.rows, exact);
        let mut sketch = GradientRows::default();
        let extra = 50 * HEAD_ROWS;
        for _ in 0..HEAD_ROWS + extra {
            sketch.push(&[1.0, 0.0, 0.0]);
        }
        assert_eq!(sketch.rows.len(), 3 * HEAD_ROWS);
        // tr(BᵀB) = number of rows; the sketch's is that plus zero-mean cross terms
        let trace: f64 = sketch.rows.iter().map(|v| (*v as f64).powi(2)).sum();
        let want = (HEAD_ROWS + extra) as f64;
        assert!((trace / want - 1.0).abs() < 0.05, "{trace} vs {want}");
    }
}
