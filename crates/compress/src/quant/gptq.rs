//! GPTQ-style error compensation (Frantar et al., 2023) for the text decoder's weights.
//!
//! A layer `y = W x` with input second moments `H = E[x xᵀ]` loses
//! `E‖(W − Ŵ) x‖² = tr((W − Ŵ) H (W − Ŵ)ᵀ)` to quantization, a sum over rows that GPTQ lowers
//! row by row with the same column order for all rows. With `H_λ = H + λ I` (`λ = damp ·
//! mean(diag H)`, grown tenfold until `H_λ` factors) and `U` the upper Cholesky factor of its
//! inverse (`H_λ⁻¹ = Uᵀ U`), columns are quantized left to right; after column `j` of row `w`,
//!
//! ```text
//! e = (w_j − s · q_j) / U_jj,    w_k ← w_k − e · U_jk   for every k > j,
//! ```
//!
//! which is the optimal update of the not-yet-quantized columns for the error just made
//! (the OBS step of `H_λ` restricted to the remaining columns). The scales `s` are fixed
//! beforehand by the MSE clip search on the original weights ([`crate::quant::weights`]), and
//! `q_j = clamp(roundTiesEven(w_j / s), −qmax, qmax)` as there, so the integers and scales
//! follow the same contract; only which integers are chosen changes.
//!
//! `H` comes from the calibration samples run through the float model after the offline
//! rotations ([`input_moments`]); online rotations `R` of a layer's input turn it into
//! `R H Rᵀ` ([`rotate_moments`]), and an up factor reading the latent `c = D x` has
//! `D H Dᵀ`.

use std::collections::{BTreeMap, HashMap};

use faer::{Mat, Side};
use pocketvlm_format::compression::{
    linear_factor_names, qkv_factor_names, text_layer_prefix, text_mlp_linears,
};
use pocketvlm_format::quant::{QuantWeights, Rotation};
use pocketvlm_format::{Compression, ModelConfig};

use crate::calib::Sample;
use crate::error::{CompressError, Result};
use crate::lowrank::linalg::{damped_cholesky, from_rows};
use crate::model::weights::MemoryStore;
use crate::model::{CpuModel, Proj, Tape, Target, Tower};

/// The input second moments `E[x xᵀ]` of every text-decoder linear matrix in `store` (Hugging
/// Face names and the factor names of `compression`), from `samples` run through the float
/// model of `store`. Image features (cached from the unrotated connector) are rotated by
/// `residual` first, as the model's own connector would.
pub fn input_moments(
    cfg: &ModelConfig,
    store: &MemoryStore,
    compression: Option<&Compression>,
    samples: &[Sample],
    residual: Option<&Rotation>,
) -> Result<HashMap<String, Mat<f64>>> {
    let model = CpuModel::build(cfg.clone(), store, compression)?;
    let layers = cfg.text.num_hidden_layers;
    let projs = [Proj::Qkv, Proj::Out, Proj::Mlp(0), Proj::Mlp(1), Proj::Mlp(2)];
    let targets: Vec<Target> =
        (0..layers).flat_map(|layer| projs.map(|proj| Target { tower: Tower::Text, layer, proj })).collect();
    let mut sums: BTreeMap<Target, (Vec<f64>, usize)> = BTreeMap::new();
    for s in samples {
        let features = s.features_in(residual)?;
        let embeds = model.merge_embeddings(&s.ids, features.as_ref())?;
        let mut tape = Tape::new(targets.iter().copied(), false);
        model.text.forward(&embeds, None, Some(&mut tape))?;
        for entry in tape.entries {
            let rows = entry.x.dim(0)?;
            let xx = entry.x.t()?.matmul(&entry.x)?.flatten_all()?.to_vec1::<f32>()?;
            let (acc, n) = sums.entry(entry.target).or_insert_with(|| (vec![0.0; xx.len()], 0));
            acc.iter_mut().zip(&xx).for_each(|(a, v)| *a += *v as f64);
            *n += rows;
        }
    }
    let moments = |t: &Target| -> Result<Mat<f64>> {
        let (acc, n) = sums.get(t).ok_or_else(|| CompressError::Calibration("no calibration rows".into()))?;
        let d = (acc.len() as f64).sqrt() as usize;
        Ok(Mat::from_fn(d, d, |i, j| acc[i * d + j] / (*n).max(1) as f64))
    };
    // the latent of a factored layer is `c = D x`: E[c cᵀ] = D H Dᵀ
    let latent = |down: &str, h: &Mat<f64>| -> Result<Mat<f64>> {
        let (shape, values) = store
            .get(down)
            .ok_or_else(|| pocketvlm_format::FormatError::MissingTensor { name: down.into() })?;
        let d = from_rows(shape[0], shape[1], values);
        Ok(&d * h * d.transpose())
    };
    let mut out = HashMap::new();
    for i in 0..layers {
        let p = text_layer_prefix(i);
        let attn = format!("{p}.self_attn");
        let ranks = compression.and_then(|c| c.text_layers.get(i));
        let t = |proj| Target { tower: Tower::Text, layer: i, proj };
        let h = moments(&t(Proj::Qkv))?;
        if ranks.is_some_and(|l| l.qkv.is_some()) {
            let [down, q, k, v] = qkv_factor_names(&attn);
            let c = latent(&down, &h)?;
            for up in [q, k, v] {
                out.insert(up, c.clone());
            }
            out.insert(down, h);
        } else {
            for n in ["q_proj", "k_proj", "v_proj"] {
                out.insert(format!("{attn}.{n}.weight"), h.clone());
            }
        }
        out.insert(format!("{attn}.o_proj.weight"), moments(&t(Proj::Out))?);
        for (k, (name, _, _)) in text_mlp_linears(cfg).into_iter().enumerate() {
            let h = moments(&t(Proj::Mlp(k)))?;
            let base = format!("{p}.mlp.{name}");
            if ranks.is_some_and(|l| l.mlp.contains_key(name)) {
                let (down, up) = linear_factor_names(&base);
                out.insert(up, latent(&down, &h)?);
                out.insert(down, h);
            } else {
                out.insert(format!("{base}.weight"), h);
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

/// Re-choose the integers of `q` (whose scales stay) by GPTQ on the float weight `w`
/// (row-major `[q.out, q.cols]`) with input moments `h` (see the module documentation).
pub fn gptq(w: &[f32], q: &QuantWeights, h: &Mat<f64>, damp: f64) -> Result<QuantWeights> {
    let (out, cols) = (q.out, q.cols);
    if h.nrows() != cols || h.ncols() != cols || w.len() != out * cols {
        return Err(CompressError::Calibration(format!(
            "GPTQ: moments {}x{} and weight of {} values for a [{out}, {cols}] layer",
            h.nrows(),
            h.ncols(),
            w.len()
        )));
    }
    // inputs that never occur get unit curvature (their columns cannot affect the output)
    let mut h = h.clone();
    for i in 0..cols {
        if h[(i, i)] <= 0.0 {
            h[(i, i)] = 1.0;
        }
    }
    let (_, l_inv, _) = damped_cholesky(&h, damp)?;
    let h_inv = l_inv.transpose() * &l_inv;
    let llt = h_inv.llt(Side::Lower).map_err(|e| CompressError::Linalg(format!("GPTQ: {e:?}")))?;
    let u = llt.L().transpose().to_owned();
    let u_rows: Vec<Vec<f64>> = (0..cols).map(|j| (0..cols).map(|k| u[(j, k)]).collect()).collect();
    let qmax = q.bits.qmax() as f64;
    let groups = cols / q.group;
    let mut values = vec![0i8; out * cols];
    // rows are independent: split them over the CPU's threads (the result does not depend on it)
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(out.max(1));
    let per = out.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (chunk, (w, values)) in w.chunks(per * cols).zip(values.chunks_mut(per * cols)).enumerate() {
            let u_rows = &u_rows;
            scope.spawn(move || {
                let mut row = vec![0f64; cols];
                for (i, (w, values)) in w.chunks(cols).zip(values.chunks_mut(cols)).enumerate() {
                    let o = chunk * per + i;
                    row.iter_mut().zip(w).for_each(|(r, v)| *r = *v as f64);
                    for j in 0..cols {
                        let s = q.scales[o * groups + j / q.group] as f64;
                        let k = if s > 0.0 { (row[j] / s).round_ties_even().clamp(-qmax, qmax) } else { 0.0 };
                        values[j] = k as i8;
                        let e = (row[j] - s * k) / u_rows[j][j];
                        for (r, uk) in row[j + 1..].iter_mut().zip(&u_rows[j][j + 1..]) {
                            *r -= e * uk;
                        }
                    }
                }
            });
        }
    });
    let group = (q.group != cols).then_some(q.group);
    Ok(QuantWeights::new(q.bits, out, cols, group, values, q.scales.clone())?)
}

/// `tr((W − Ŵ) H (W − Ŵ)ᵀ) / out`: the mean output error energy per row that GPTQ minimises.
pub fn weighted_error(w: &[f32], q: &QuantWeights, h: &Mat<f64>) -> f64 {
    let (out, cols) = (q.out, q.cols);
    let deq = q.dequantize();
    let diff = Mat::from_fn(out, cols, |o, j| w[o * cols + j] as f64 - deq[o * cols + j]);
    let m = &diff * h;
    let mut sum = 0.0;
    for o in 0..out {
        for j in 0..cols {
            sum += m[(o, j)] * diff[(o, j)];
        }
    }
    sum / out.max(1) as f64
}

#[cfg(test)]
mod tests {
    use pocketvlm_format::quant::pack::Bits;
    use pocketvlm_format::quant::{Construction, Rotation};

    use super::*;
    use crate::quant::weights::{ClipSearch, quantize_weights};

    /// A deterministic pseudo-random value in (−1, 1).
    fn noise(k: usize) -> f64 {
        let x = ((k as f64 + 0.5) * 12.9898).sin() * 43758.5453;
        2.0 * (x - x.floor()) - 1.0
    }

    /// Moments of strongly correlated inputs: `H = A Aᵀ / n` for `A` mixing a few factors.
    fn correlated(cols: usize) -> Mat<f64> {
        let n = 256;
        let a = Mat::from_fn(cols, n, |i, t| noise(t * 7 + i % 3) * 2.0 + 0.3 * noise(1000 + t * cols + i));
        &a * a.transpose() / n as f64
    }

    #[test]
    fn gptq_lowers_the_output_error_of_int4_weights() {
        let (out, cols) = (16, 64);
        let w: Vec<f32> = (0..out * cols).map(|k| noise(5000 + k) as f32).collect();
        let h = correlated(cols);
        let plain = quantize_weights(&w, out, cols, Bits::Int4, None, ClipSearch::default()).unwrap();
        let compensated = gptq(&w, &plain, &h, 0.01).unwrap();
        assert_eq!(compensated.scales, plain.scales);
        let (e0, e1) = (weighted_error(&w, &plain, &h), weighted_error(&w, &compensated, &h));
        assert!(e1 < 0.7 * e0, "GPTQ {e1} vs clip search {e0}");
        // with uncorrelated inputs (H = I) there is nothing to compensate: same integers
        let identity = Mat::<f64>::identity(cols, cols);
        assert_eq!(gptq(&w, &plain, &identity, 0.0).unwrap().values, plain.values);
        // wrong shapes are typed errors
        assert!(gptq(&w, &plain, &correlated(32), 0.01).is_err());
    }

    #[test]
    fn rotated_moments_are_r_h_rt() {
        let n = 48;
        let h = correlated(n);
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
}
