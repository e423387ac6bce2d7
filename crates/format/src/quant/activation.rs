//! Per-token symmetric dynamic quantization of activations (steps 2–5 of the contract in
//! [`crate::quant`]).

use crate::quant::error::QuantError;
use crate::quant::pack::Bits;

/// How a layer quantizes its input activations: `bits` and the clip ratio `ρ ∈ (0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActivationQuant {
    bits: Bits,
    clip_ratio: f32,
    /// `k = f32(ρ / qmax)`, rounded once from f64.
    step: f32,
}

impl ActivationQuant {
    pub fn new(bits: Bits, clip_ratio: f32) -> Result<Self, QuantError> {
        if !(clip_ratio > 0.0 && clip_ratio <= 1.0) {
            return Err(QuantError::BadClipRatio(clip_ratio));
        }
        let step = (clip_ratio as f64 / bits.qmax() as f64) as f32;
        Ok(Self { bits, clip_ratio, step })
    }

    pub fn bits(&self) -> Bits {
        self.bits
    }

    pub fn clip_ratio(&self) -> f32 {
        self.clip_ratio
    }

    /// The f32 constant `k` with `s = max|x| · k`.
    pub fn step(&self) -> f32 {
        self.step
    }

    /// Quantize one token `x` into `q` (same length) and return its scale `s`:
    ///
    /// ```text
    /// M = max_j |x_j|                       (exact)
    /// s = M · k                             (one f32 multiply, round to nearest even)
    /// if s < f32::MIN_POSITIVE (0 or subnormal): q = 0, s = 0
    /// r = 1 / s                             (correctly rounded f32 division)
    /// q_j = clamp(roundTiesEven(x_j · r), −qmax, qmax)
    /// ```
    ///
    /// `x` must be finite.
    pub fn quantize(&self, x: &[f32], q: &mut [i8]) -> f32 {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = max * self.step;
        if s < f32::MIN_POSITIVE {
            q.fill(0);
            return 0.0;
        }
        let r = 1.0 / s;
        let qmax = self.bits.qmax() as f32;
        for (o, &v) in q.iter_mut().zip(x) {
            *o = (v * r).round_ties_even().clamp(-qmax, qmax) as i8;
        }
        s
    }
}
