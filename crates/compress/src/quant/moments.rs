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

use std::collections::{BTreeMap, HashMap};

use faer::Mat;
use pocketvlm_format::compression::{
    linear_factor_names, qkv_factor_names, text_layer_prefix, text_mlp_linears,
};
use pocketvlm_format::quant::Rotation;
use pocketvlm_format::{Compression, FormatError, ModelConfig};

use crate::calib::Sample;
use crate::error::{CompressError, Result};
use crate::lowrank::linalg::from_rows;
use crate::model::weights::MemoryStore;
use crate::model::{CpuModel, Proj, Tape, Target, Tower};

/// The moments of one matrix's input (and output gradient).
#[derive(Clone, Debug)]
pub struct Moments {
    /// `E[x xᵀ]`, `[in, in]`.
    pub h: Mat<f64>,
    /// `E[g gᵀ]`, `[out, out]`, when gradients were taken.
    pub g: Option<Mat<f64>>,
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

/// The moments of every text-decoder linear matrix in `store` (Hugging Face names and the factor
/// names of `compression`) from `samples`; with `grads`, `G` too (a backward pass per sample on
/// its answer loss). See the module documentation.
pub fn decoder_moments(
    cfg: &ModelConfig,
    store: &MemoryStore,
    compression: Option<&Compression>,
    samples: &[Sample],
    residual: Option<&Rotation>,
    grads: bool,
) -> Result<HashMap<String, Moments>> {
    let model = CpuModel::build(cfg.clone(), store, compression)?;
    let layers = cfg.text.num_hidden_layers;
    let projs = [Proj::Qkv, Proj::Out, Proj::Mlp(0), Proj::Mlp(1), Proj::Mlp(2)];
    let targets: Vec<Target> =
        (0..layers).flat_map(|layer| projs.map(|proj| Target { tower: Tower::Text, layer, proj })).collect();
    let mut sums: BTreeMap<Target, Sums> = BTreeMap::new();
    for s in samples {
        let features = s.features_in(residual)?;
        let embeds = model.merge_embeddings(&s.ids, features.as_ref())?;
        let mut tape = Tape::new(targets.iter().copied(), grads);
        let grad_store = if grads {
            let loss = model.answer_loss(&embeds, &s.ids, s.answer_start, Some(&mut tape))?;
            Some(loss.backward()?)
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
    let moments = |t: Target| -> Result<(Mat<f64>, Option<Mat<f64>>)> {
        let s = sums.get(&t).ok_or_else(|| CompressError::Calibration("no calibration rows".into()))?;
        Ok((square(&s.xx, s.rows), grads.then(|| square(&s.gg, s.rows))))
    };
    let tensor = |name: &str| -> Result<Mat<f64>> {
        let (shape, values) =
            store.get(name).ok_or_else(|| FormatError::MissingTensor { name: name.into() })?;
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
        if ranks.is_some_and(|l| l.qkv.is_some()) {
            let [down, q, k, v] = qkv_factor_names(&attn);
            let d = tensor(&down)?;
            let c = &d * &h * d.transpose();
            let ups: Vec<Mat<f64>> = [&q, &k, &v].iter().map(|n| tensor(n)).collect::<Result<_>>()?;
            let g_c = g.as_ref().map(|g| {
                let rank = ups[0].ncols();
                let u = Mat::from_fn(g.nrows(), rank, |r, k| {
                    let m = starts.iter().rposition(|&s| r >= s).unwrap_or(0);
                    ups[m][(r - starts[m], k)]
                });
                u.transpose() * g * &u
            });
            for (m, up) in [q, k, v].into_iter().enumerate() {
                out.insert(up, Moments { h: c.clone(), g: block(&g, starts[m], widths[m]) });
            }
            out.insert(down, Moments { h, g: g_c });
        } else {
            for (m, n) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
                out.insert(
                    format!("{attn}.{n}.weight"),
                    Moments { h: h.clone(), g: block(&g, starts[m], widths[m]) },
                );
            }
        }
        let (h, g) = moments(t(Proj::Out))?;
        out.insert(format!("{attn}.o_proj.weight"), Moments { h, g });
        for (k, (name, _, _)) in text_mlp_linears(cfg).into_iter().enumerate() {
            let (h, g) = moments(t(Proj::Mlp(k)))?;
            let base = format!("{p}.mlp.{name}");
            if ranks.is_some_and(|l| l.mlp.contains_key(name)) {
                let (down, up) = linear_factor_names(&base);
                let (d, u) = (tensor(&down)?, tensor(&up)?);
                let g_c = g.as_ref().map(|g| u.transpose() * g * &u);
                out.insert(up, Moments { h: &d * &h * d.transpose(), g });
                out.insert(down, Moments { h, g: g_c });
            } else {
                out.insert(format!("{base}.weight"), Moments { h, g });
            }
        }
    }
    Ok(out)
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
pub fn kfac_cost(delta: &[f64], out: usize, cols: usize, m: &Moments) -> f64 {
    let d = Mat::from_fn(out, cols, |o, j| delta[o * cols + j]);
    let dh = &d * &m.h;
    let gd = match &m.g {
        Some(g) => g * &d,
        None => d.clone(),
    };
    let mut sum = 0.0;
    for o in 0..out {
        for j in 0..cols {
            sum += gd[(o, j)] * dh[(o, j)];
        }
    }
    0.5 * sum
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
            g: Some(Mat::from_fn(out, out, |i, j| g[i] * g[j])),
        };
        let dir: f64 =
            (0..out).map(|o| g[o] * (0..cols).map(|j| delta[o * cols + j] * x[j]).sum::<f64>()).sum();
        let got = kfac_cost(&delta, out, cols, &m);
        assert!((got - 0.5 * dir * dir).abs() < 1e-12 * (1.0 + got.abs()), "{got} vs {}", 0.5 * dir * dir);
        let plain = kfac_cost(&delta, out, cols, &Moments { g: None, ..m.clone() });
        let y: f64 =
            (0..out).map(|o| (0..cols).map(|j| delta[o * cols + j] * x[j]).sum::<f64>().powi(2)).sum();
        assert!((plain - 0.5 * y).abs() < 1e-12 * (1.0 + y));
    }
}
