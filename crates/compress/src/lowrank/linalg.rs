//! Dense f64 helpers on top of faer: row-major conversions, damped Cholesky, symmetric powers.

use faer::{Mat, Side};

use crate::error::{CompressError, Result};

/// A row-major `[rows, cols]` f32 buffer as an f64 matrix.
pub fn from_rows(rows: usize, cols: usize, data: &[f32]) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| data[i * cols + j] as f64)
}

/// A row-major `[rows, cols]` f64 buffer as a matrix.
pub fn from_rows_f64(rows: usize, cols: usize, data: &[f64]) -> Mat<f64> {
    Mat::from_fn(rows, cols, |i, j| data[i * cols + j])
}

/// The matrix as row-major f32 values.
pub fn to_rows_f32(m: &Mat<f64>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            out.push(m[(i, j)] as f32);
        }
    }
    out
}

fn mean_diag(m: &Mat<f64>) -> f64 {
    let n = m.nrows().max(1);
    (0..m.nrows()).map(|i| m[(i, i)]).sum::<f64>() / n as f64
}

/// `m + λ·I`.
fn add_diag(m: &Mat<f64>, lambda: f64) -> Mat<f64> {
    let mut out = m.clone();
    for i in 0..out.nrows() {
        out[(i, i)] += lambda;
    }
    out
}

/// Lower Cholesky factor `L` of `m + λI` (`L Lᵀ = m + λI`) and its inverse. `λ` starts at
/// `damping · mean(diag m)` and grows tenfold until the factorisation succeeds with a
/// well-conditioned factor (every pivot above 1e-10 of the largest), so a singular or
/// indefinite second-moment matrix still gets a usable whitening.
pub fn damped_cholesky(m: &Mat<f64>, damping: f64) -> Result<(Mat<f64>, Mat<f64>, f64)> {
    let scale = mean_diag(m).abs().max(f64::MIN_POSITIVE);
    let mut lambda = damping * scale;
    for _ in 0..20 {
        if let Ok(llt) = add_diag(m, lambda).llt(Side::Lower) {
            let l = llt.L().to_owned();
            let pivots: Vec<f64> = (0..l.nrows()).map(|i| l[(i, i)].abs()).collect();
            let max = pivots.iter().cloned().fold(0.0, f64::max);
            if pivots.iter().all(|&p| p > 1e-10 * max) {
                let mut inv = Mat::<f64>::identity(l.nrows(), l.nrows());
                l.solve_lower_triangular_in_place(inv.as_mut());
                return Ok((l, inv, lambda));
            }
        }
        lambda = if lambda == 0.0 { 1e-8 * scale } else { lambda * 10.0 };
    }
    Err(CompressError::Linalg("second-moment matrix could not be made positive definite".into()))
}

/// `(m + λI)^½` and `(m + λI)^−½` of a symmetric positive semi-definite `m`, with
/// `λ = damping · mean(diag m)`; eigenvalues are floored at that `λ` as well.
pub fn damped_sqrt_pair(m: &Mat<f64>, damping: f64) -> Result<(Mat<f64>, Mat<f64>)> {
    let lambda = (damping * mean_diag(m)).max(f64::MIN_POSITIVE);
    let evd = m.self_adjoint_eigen(Side::Lower).map_err(|e| CompressError::Linalg(format!("{e:?}")))?;
    let (u, s) = (evd.U(), evd.S().column_vector());
    let n = m.nrows();
    let vals: Vec<f64> = (0..n).map(|i| (s[i].max(0.0) + lambda).max(lambda)).collect();
    let scaled = |f: &dyn Fn(f64) -> f64| Mat::from_fn(n, n, |i, k| u[(i, k)] * f(vals[k]));
    let sqrt = scaled(&|v| v.sqrt()) * u.transpose();
    let inv = scaled(&|v| 1.0 / v.sqrt()) * u.transpose();
    Ok((sqrt, inv))
}

/// Thin SVD `m = U diag(σ) Vᵀ`, σ descending.
pub struct Svd {
    pub u: Mat<f64>,
    pub s: Vec<f64>,
    pub v: Mat<f64>,
}

pub fn thin_svd(m: &Mat<f64>) -> Result<Svd> {
    let svd = m.thin_svd().map_err(|e| CompressError::Linalg(format!("SVD failed: {e:?}")))?;
    let s = svd.S().column_vector();
    Ok(Svd { u: svd.U().to_owned(), s: (0..s.nrows()).map(|i| s[i]).collect(), v: svd.V().to_owned() })
}
