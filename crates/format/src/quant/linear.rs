//! The CPU reference of a quantized linear layer: exactly the computation documented in
//! [`crate::quant`], f32 in, f32 out.

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

    /// Apply to `x` (row-major `[tokens, cols]`), giving `[tokens, out]`.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>, QuantError> {
        let w = &self.weights;
        let (cols, out, group) = (w.cols, w.out, w.group);
        if !x.len().is_multiple_of(cols) {
            return Err(QuantError::LengthMismatch {
                what: "layer input",
                expected: x.len().next_multiple_of(cols),
                found: x.len(),
            });
        }
        let groups = cols / group;
        let mut y = Vec::with_capacity(x.len() / cols * out);
        let mut token = vec![0f32; cols];
        let mut q = vec![0i8; cols];
        for row in x.chunks_exact(cols) {
            token.copy_from_slice(row);
            for r in &self.online {
                r.apply(&mut token)?;
            }
            let s_a = self.activation.quantize(&token, &mut q);
            for o in 0..out {
                let wrow = &w.values[o * cols..(o + 1) * cols];
                let srow = &w.scales[o * groups..(o + 1) * groups];
                let mut sum = 0f32;
                for (g, &s_w) in srow.iter().enumerate() {
                    let span = g * group..(g + 1) * group;
                    let acc = dot_i8(&wrow[span.clone()], &q[span]);
                    let part = acc as f32 * s_w;
                    sum = if g == 0 { part } else { sum + part };
                }
                let mut v = sum * s_a;
                if let Some(b) = &self.bias {
                    v += b[o];
                }
                y.push(v);
            }
        }
        Ok(y)
    }
}
