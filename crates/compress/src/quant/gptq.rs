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
//! rotations ([`crate::quant::moments`]).

use faer::{Mat, Side};
use pocketvlm_format::quant::QuantWeights;

use crate::error::{CompressError, Result};
use crate::lowrank::linalg::damped_cholesky;

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
}
