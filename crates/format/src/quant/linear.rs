//! The CPU reference of a quantized linear layer: exactly the computation documented in
//! [`crate::quant`], f32 in, f32 out.

use std::ops::Range;

use crate::quant::activation::ActivationQuant;
use crate::quant::dot::dot_i8;
use crate::quant::error::QuantError;
use crate::quant::pack::{Bits, unpack};
use crate::quant::rotation::Rotation;

/// The weight side of a quantized linear: integers `[out, cols]` and their scales.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantWeights {
    pub bits: Bits,
    pub out: usize,
    pub cols: usize,
    /// Input columns per scale: `cols` (per output channel) or 64 / 128 (INT4 groups).
    pub group: usize,
    /// Row-major `[out, cols]`, each in `[−qmax, qmax]`.
    pub values: Vec<i8>,
    /// Row-major `[out, cols / group]`.
    pub scales: Vec<f32>,
}

/// Check a weight group size: `None` (one scale per output channel) always works; a group is
/// only for INT4 weights, must be 64 or 128 and must divide the input columns.
pub fn check_group(bits: Bits, group: Option<usize>, cols: usize) -> Result<usize, QuantError> {
    let Some(g) = group else { return Ok(cols) };
    let bad =
        |reason| QuantError::UnsupportedGroup { what: "weights", bits: bits.bits(), group: g, cols, reason };
    if bits != Bits::Int4 {
        return Err(bad("groups are for INT4 weights only"));
    }
    if g != 64 && g != 128 {
        return Err(bad("groups are 64 or 128 columns"));
    }
    if !cols.is_multiple_of(g) {
        return Err(bad("the group must divide the input columns"));
    }
    Ok(g)
}

impl QuantWeights {
    /// Unpack `packed` (see [`crate::quant::pack`]) and check the scales.
    pub fn from_packed(
        bits: Bits,
        out: usize,
        cols: usize,
        group: Option<usize>,
        packed: &[u8],
        scales: Vec<f32>,
    ) -> Result<Self, QuantError> {
        let values = unpack(bits, packed, out, cols)?;
        Self::new(bits, out, cols, group, values, scales)
    }

    /// Check shapes, ranges and scales of unpacked weights.
    pub fn new(
        bits: Bits,
        out: usize,
        cols: usize,
        group: Option<usize>,
        values: Vec<i8>,
        scales: Vec<f32>,
    ) -> Result<Self, QuantError> {
        bits.check_row(cols)?;
        let group = check_group(bits, group, cols)?;
        if values.len() != out * cols {
            return Err(QuantError::LengthMismatch {
                what: "weight values",
                expected: out * cols,
                found: values.len(),
            });
        }
        if let Some(&v) = values.iter().find(|v| (**v as i32).abs() > bits.qmax()) {
            return Err(QuantError::ValueOutOfRange { value: v as i32, bits: bits.bits() });
        }
        let want = out * (cols / group.max(1));
        if scales.len() != want {
            return Err(QuantError::LengthMismatch {
                what: "weight scales",
                expected: want,
                found: scales.len(),
            });
        }
        if let Some((index, &value)) = scales.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s >= 0.0))
        {
            return Err(QuantError::BadScale { index, value });
        }
        Ok(Self { bits, out, cols, group, values, scales })
    }

    /// `ŵ[o][j] = scale[o][j / group] · q[o][j]` as f64 (the float simulation of the weights).
    pub fn dequantize(&self) -> Vec<f64> {
        let groups = self.cols / self.group;
        (0..self.out * self.cols)
            .map(|k| {
                let (o, j) = (k / self.cols, k % self.cols);
                self.scales[o * groups + j / self.group] as f64 * self.values[k] as f64
            })
            .collect()
    }
}

/// A quantized linear layer `y = W x + b` in the contract's arithmetic.
#[derive(Clone, Debug)]
pub struct QuantLinear {
    pub weights: QuantWeights,
    pub activation: ActivationQuant,
    /// Online transforms applied to each input token, in order, before quantizing it.
    pub online: Vec<Rotation>,
    pub bias: Option<Vec<f32>>,
}

impl QuantLinear {
    /// Check the pieces against each other, including that no group's integer dot product can
    /// overflow i32 (`group · qmax_w · qmax_a ≤ 2³¹ − 1`).
    pub fn new(
        weights: QuantWeights,
        activation: ActivationQuant,
        online: Vec<Rotation>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self, QuantError> {
        let cols = weights.cols;
        let worst = weights.group as u64 * weights.bits.qmax() as u64 * activation.bits().qmax() as u64;
        if worst > i32::MAX as u64 {
            return Err(QuantError::AccumulatorOverflow {
                cols,
                bits_w: weights.bits.bits(),
                bits_a: activation.bits().bits(),
            });
        }
        if let Some(r) = online.iter().find(|r| r.size() != cols) {
            return Err(QuantError::TransformSize { size: r.size(), cols });
        }
        if let Some(b) = &bias
            && b.len() != weights.out
        {
            return Err(QuantError::LengthMismatch { what: "bias", expected: weights.out, found: b.len() });
        }
        Ok(Self { weights, activation, online, bias })
    }

    /// Apply to `x` (row-major `[tokens, cols]`), giving `[tokens, out]`: per token,
    /// [`Self::quantize_token`] (steps 1–5) then [`Self::product`] (steps 6–7).
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>, QuantError> {
        let cols = self.weights.cols;
        if !x.len().is_multiple_of(cols) {
            return Err(QuantError::LengthMismatch {
                what: "layer input",
                expected: x.len().next_multiple_of(cols),
                found: x.len(),
            });
        }
        let mut y = Vec::with_capacity(x.len() / cols * self.weights.out);
        let mut token = vec![0f32; cols];
        let mut q = vec![0i8; cols];
        for row in x.chunks_exact(cols) {
            token.copy_from_slice(row);
            let s_a = self.quantize_token(&mut token, &mut q)?;
            self.product(&q, s_a, &mut y);
        }
        Ok(y)
    }

    /// Steps 1–5 of the contract on one input token (`cols` values): apply the online
    /// transforms to `token` in place, then quantize it into `q` (`cols` values) and return its
    /// scale `s_a`. For the up factors of a joint-QKV layer this pair is the latent K/V cache
    /// entry (see [`crate::quant`], "The latent K/V cache").
    pub fn quantize_token(&self, token: &mut [f32], q: &mut [i8]) -> Result<f32, QuantError> {
        let cols = self.weights.cols;
        for (what, found) in [("layer input token", token.len()), ("activation integers", q.len())] {
            if found != cols {
                return Err(QuantError::LengthMismatch { what, expected: cols, found });
            }
        }
        for r in &self.online {
            r.apply(token)?;
        }
        Ok(self.activation.quantize(token, q))
    }

    /// Steps 6–7 of the contract on one quantized token `(q, s_a)` (`q` has `cols` values):
    /// appends the `out` values `y_o = (t_0 + t_1 + …) · s_a (+ b_o)` with
    /// `t_g = f32(Σ_{j∈g} q_w[o][j] · q_a[j]) · s_w[o][g]`.
    ///
    /// # Panics
    ///
    /// If `q` has fewer than `cols` values.
    pub fn product(&self, q: &[i8], s_a: f32, out: &mut Vec<f32>) {
        for o in 0..self.weights.out {
            let mut v = self.integer_row(o, q) * s_a;
            if let Some(b) = &self.bias {
                v += b[o];
            }
            out.push(v);
        }
    }

    /// `u = t_0 + t_1 + …` of step 7 for output `o`: each group's exact i32 dot product,
    /// converted to f32 and scaled by its weight scale, summed left to right.
    fn integer_row(&self, o: usize, q: &[i8]) -> f32 {
        self.grouped_row(o, |span, wrow| dot_i8(wrow, &q[span]) as f32)
    }

    /// `t_0 + t_1 + …` left to right with `t_g = d_g · s_w[o][g]`, where `d_g = dot(g, q_w[o][g])`
    /// is the group's dot product (given the group's column span and weight integers).
    fn grouped_row(&self, o: usize, dot: impl Fn(Range<usize>, &[i8]) -> f32) -> f32 {
        let w = &self.weights;
        let (cols, group) = (w.cols, w.group);
        let groups = cols / group;
        let wrow = &w.values[o * cols..(o + 1) * cols];
        let srow = &w.scales[o * groups..(o + 1) * groups];
        let mut sum = 0f32;
        for (g, &s_w) in srow.iter().enumerate() {
            let span = g * group..(g + 1) * group;
            let part = dot(span.clone(), &wrow[span]) * s_w;
            sum = if g == 0 { part } else { sum + part };
        }
        sum
    }

    /// The "absorbed V" product on a float latent `c` (`cols` values) for the output rows
    /// `rows` only, appending one value per row:
    ///
    /// ```text
    /// d_g = Σ_{j∈g} f32(q_w[o][j]) · c[j]     (f32, j ascending, one multiply then one add each)
    /// t_g = d_g · s_w[o][g]
    /// u   = t_0 + t_1 + …                     (left to right)
    /// y_o = u (+ b_o)
    /// ```
    ///
    /// **Why.** Attention mixes the values of past tokens with softmax weights `p_t` (`Σ_t p_t = 1`).
    /// With cached latent pairs `(q_a,t, s_a,t)` and `v_t` = [`Self::product`] of a pair,
    ///
    /// ```text
    /// Σ_t p_t · v_t[o] = Σ_t p_t · (Σ_j Ŵ[o][j] · s_a,t · q_a,t[j] + b_o)
    ///                  = Σ_j Ŵ[o][j] · ĉ[j] + b_o,    ĉ[j] = Σ_t p_t · (s_a,t · f32(q_a,t[j]))
    /// ```
    ///
    /// with `Ŵ[o][j] = s_w[o][g(j)] · q_w[o][j]`: one product with the mixed latent `ĉ` instead of
    /// one per past token. Both sides are equal in real arithmetic; in f32 they round
    /// differently (the left side rounds each `v_t`, the right side each `ĉ[j]` and `d_g`).
    ///
    /// # Panics
    ///
    /// If `c` has fewer than `cols` values or `rows` reaches past `out`.
    pub fn absorbed(&self, c: &[f32], rows: Range<usize>, out: &mut Vec<f32>) {
        let dot = |span: Range<usize>, wrow: &[i8]| {
            wrow.iter().zip(&c[span]).fold(0f32, |d, (&w, &x)| d + w as f32 * x)
        };
        for o in rows {
            let mut u = self.grouped_row(o, dot);
            if let Some(b) = &self.bias {
                u += b[o];
            }
            out.push(u);
        }
    }
}
