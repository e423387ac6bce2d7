//! One layer's (or QKV group's) transformed SVD and the factors built from a kept index set.

use faer::Mat;

use crate::error::{CompressError, Result};
use crate::lowrank::linalg::{Svd, damped_cholesky, damped_sqrt_pair, thin_svd};

/// The factorisation recipes (see the module documentation of [`crate::lowrank`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Svd,
    Asvd,
    SvdLlm,
    Qsvd,
    Laser,
}

impl Method {
    pub const ALL: [Method; 5] = [Method::Svd, Method::Asvd, Method::SvdLlm, Method::Qsvd, Method::Laser];

    pub fn name(self) -> &'static str {
        match self {
            Method::Svd => "svd",
            Method::Asvd => "asvd",
            Method::SvdLlm => "svd-llm",
            Method::Qsvd => "qsvd",
            Method::Laser => "laser",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether calibration must back-propagate (output-gradient statistics or scores).
    pub fn needs_gradients(self) -> bool {
        matches!(self, Method::Qsvd | Method::Laser)
    }

    /// Whether ranks are chosen by a cross-layer score (otherwise every layer gets the same rank).
    pub fn loss_aware(self) -> bool {
        matches!(self, Method::Qsvd | Method::Laser)
    }
}

/// Calibration statistics of one group (means over calibration tokens).
#[derive(Clone, Debug)]
pub struct GroupStats {
    /// `E[x xᵀ]`, `[in, in]`.
    pub a: Mat<f64>,
    /// `E|x_j|`, `[in]`.
    pub abs_mean: Vec<f64>,
    /// `E[g gᵀ]` of output gradients, `[out, out]` (laser only).
    pub g: Option<Mat<f64>>,
}

/// A change of coordinates on one side of `W`.
#[derive(Clone, Debug)]
pub enum Xf {
    Identity,
    Diag(Vec<f64>),
    Dense(Mat<f64>),
}

impl Xf {
    /// `X · m`.
    pub fn left(&self, m: &Mat<f64>) -> Mat<f64> {
        match self {
            Xf::Identity => m.clone(),
            Xf::Diag(d) => Mat::from_fn(m.nrows(), m.ncols(), |i, j| d[i] * m[(i, j)]),
            Xf::Dense(x) => x * m,
        }
    }
    /// `Xᵀ · m`.
    pub fn left_t(&self, m: &Mat<f64>) -> Mat<f64> {
        match self {
            Xf::Dense(x) => x.transpose() * m,
            other => other.left(m),
        }
    }
    /// `m · X`.
    pub fn right(&self, m: &Mat<f64>) -> Mat<f64> {
        match self {
            Xf::Identity => m.clone(),
            Xf::Diag(d) => Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] * d[j]),
            Xf::Dense(x) => m * x,
        }
    }
}

/// Knobs of the transforms.
#[derive(Clone, Copy, Debug)]
pub struct TransformOptions {
    /// ASVD exponent α.
    pub alpha: f64,
    /// Relative damping of `A` (times its mean diagonal) before the Cholesky factorisation.
    pub damp_a: f64,
    /// Relative damping of `G` before its square root (laser).
    pub damp_g: f64,
}

impl Default for TransformOptions {
    fn default() -> Self {
        Self { alpha: 0.5, damp_a: 1e-4, damp_g: 1e-2 }
    }
}

/// `W̃ = P_out W P_in = U Σ Vᵀ` with the transforms needed to map factors back.
pub struct Decomposition {
    pub svd: Svd,
    pub out_inv: Xf,
    pub in_inv: Xf,
    pub out_rows: usize,
    pub in_cols: usize,
}

impl Decomposition {
    /// Decompose `w` (`[out, in]`) for `method` given the group's statistics.
    pub fn new(
        method: Method,
        w: &Mat<f64>,
        stats: Option<&GroupStats>,
        opts: &TransformOptions,
    ) -> Result<Self> {
        let need = |what: &str| CompressError::Calibration(format!("{} needs {what}", method.name()));
        let (p_out, out_inv, p_in, in_inv) = match method {
            Method::Svd => (Xf::Identity, Xf::Identity, Xf::Identity, Xf::Identity),
            Method::Asvd => {
                let s = stats.ok_or_else(|| need("activation statistics"))?;
                let floor = s.abs_mean.iter().cloned().fold(0.0, f64::max) * 1e-6 + f64::MIN_POSITIVE;
                let d: Vec<f64> = s.abs_mean.iter().map(|&m| m.max(floor).powf(opts.alpha)).collect();
                let inv = d.iter().map(|v| 1.0 / v).collect();
                (Xf::Identity, Xf::Identity, Xf::Diag(d), Xf::Diag(inv))
            }
            Method::SvdLlm | Method::Qsvd => {
                let s = stats.ok_or_else(|| need("activation statistics"))?;
                let (l, l_inv, _) = damped_cholesky(&s.a, opts.damp_a)?;
                (Xf::Identity, Xf::Identity, Xf::Dense(l), Xf::Dense(l_inv))
            }
            Method::Laser => {
                let s = stats.ok_or_else(|| need("activation statistics"))?;
                let g = s.g.as_ref().ok_or_else(|| need("output-gradient statistics"))?;
                let (l, l_inv, _) = damped_cholesky(&s.a, opts.damp_a)?;
                let (g_half, g_inv_half) = damped_sqrt_pair(g, opts.damp_g)?;
                (Xf::Dense(g_half), Xf::Dense(g_inv_half), Xf::Dense(l), Xf::Dense(l_inv))
            }
        };
        let transformed = p_in.right(&p_out.left(w));
        Ok(Self { svd: thin_svd(&transformed)?, out_inv, in_inv, out_rows: w.nrows(), in_cols: w.ncols() })
    }

    pub fn full_rank(&self) -> usize {
        self.svd.s.len()
    }

    /// `(down [r, in], up [out, r])` for the kept components `kept` (indices into σ, any order),
    /// with `β` splitting Σ: `down = Σ^β Vᵀ P_in⁻¹`, `up = P_out⁻¹ U Σ^(1−β)`.
    pub fn factors(&self, kept: &[usize], beta: f64) -> (Mat<f64>, Mat<f64>) {
        let Svd { u, s, v } = &self.svd;
        let r = kept.len();
        let down_t = Mat::from_fn(r, v.nrows(), |k, j| s[kept[k]].powf(beta) * v[(j, kept[k])]);
        let up = Mat::from_fn(u.nrows(), r, |i, k| u[(i, kept[k])] * s[kept[k]].powf(1.0 - beta));
        (self.in_inv.right(&down_t), self.out_inv.left(&up))
    }

    /// Bases that turn a weight gradient into per-component scores:
    /// `ũ_iᵀ ∂L/∂W̃ ṽ_i = a_iᵀ (∂L/∂W) b_i` with `a = P_out⁻¹ U` (`[out, k]`) and
    /// `b = P_in⁻ᵀ V` (`[in, k]`).
    pub fn score_bases(&self) -> (Mat<f64>, Mat<f64>) {
        (self.out_inv.left(&self.svd.u), self.in_inv.left_t(&self.svd.v))
    }
}
