//! Linear layers (dense or low-rank, float or quantized) and the tape that records what
//! calibration needs from them.

use std::collections::HashSet;

use candle_core::{Tensor, Var};
use pocketvlm_format::quant::QuantLinear;

use crate::error::Result;

/// Which tower a layer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tower {
    Text,
    Vision,
}

/// A compressible projection of a transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// Q, K and V stacked along output rows (`[d_q; d_kv; d_kv]`), one shared input.
    Qkv,
    /// K and V stacked (`[d_kv; d_kv]`) apart from Q: a text layer's K/V latent. Calibrated on
    /// the K and V columns of the stacked output.
    Kv,
    /// An MLP linear by index: text `gate_proj`, `up_proj`, `down_proj`; vision `fc1`, `fc2`.
    Mlp(usize),
    /// The attention output projection (text `o_proj`, vision `out_proj`); never factored, tapped
    /// for the quantizer's input statistics.
    Out,
}

/// One compressible linear (or stacked group) of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub tower: Tower,
    pub layer: usize,
    pub proj: Proj,
}

/// One matrix of a linear layer: float, held transposed (`[in, out]`) so a row-major
/// activation block multiplies it directly, or quantized: one or more layers of the format's
/// reference arithmetic ([`QuantLinear`]) sharing the input, their outputs concatenated (the
/// stacked Q, K and V). Quantized matrices carry no gradient.
pub enum Weight {
    Float(Tensor),
    Quant(Vec<QuantLinear>),
}

impl Weight {
    pub fn out_features(&self) -> usize {
        match self {
            Weight::Float(w_t) => w_t.dims()[1],
            Weight::Quant(parts) => parts.iter().map(|q| q.weights.out).sum(),
        }
    }

    /// `x · Wᵀ` for `x` of shape `[rows, in]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Weight::Float(w_t) => Ok(x.matmul(w_t)?),
            Weight::Quant(parts) => {
                let rows = x.dim(0)?;
                let input = x.detach().contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let outs = parts
                    .iter()
                    .map(|q| {
                        let y = forward_tokens(q, &input, rows)?;
                        Ok(Tensor::from_vec(y, (rows, q.weights.out), x.device())?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&outs, 1)?)
            }
        }
    }
}

/// [`QuantLinear::forward`] on `rows` tokens, split across the CPU's threads (tokens are
/// independent, so the result is the same as one call).
fn forward_tokens(q: &QuantLinear, input: &[f32], rows: usize) -> Result<Vec<f32>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
    if threads <= 1 {
        return Ok(q.forward(input)?);
    }
    let cols = q.weights.cols;
    let per = rows.div_ceil(threads) * cols;
    let parts: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = input.chunks(per).map(|chunk| s.spawn(move || q.forward(chunk))).collect();
        handles.into_iter().map(|h| h.join().expect("a quantized forward thread panicked")).collect()
    });
    let mut y = Vec::with_capacity(rows * q.weights.out);
    for part in parts {
        y.extend(part?);
    }
    Ok(y)
}

/// `y = up · (down · x) + b`, or `y = up · x + b` when there is no `down`.
pub struct Linear {
    /// The down factor (`[r, in]`), if the layer is factored.
    pub down: Option<Weight>,
    /// The weight (`[out, in]`) or the up factor (`[out, r]`).
    pub up: Weight,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.up.out_features()
    }

    /// Apply to `x` (`[rows, in]`), recording `x` and a gradient probe on the output when the
    /// tape wants `target`.
    pub fn forward(&self, x: &Tensor, target: Target, tape: Option<&mut Tape>) -> Result<Tensor> {
        let h = match &self.down {
            Some(d) => d.apply(x)?,
            None => x.clone(),
        };
        let mut y = self.up.apply(&h)?;
        if let Some(tape) = tape {
            y = tape.tap(target, x, y)?;
        }
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// What one tapped linear saw in one forward pass.
pub struct TapEntry {
    pub target: Target,
    /// The input rows `[rows, in]` (detached).
    pub x: Tensor,
    /// A zero variable added to the output: after `backward`, its gradient is `∂L/∂y`.
    pub probe: Option<Var>,
}

/// Records inputs (and, with gradients, output-gradient probes) of the wanted targets.
pub struct Tape {
    wanted: HashSet<Target>,
    grads: bool,
    pub entries: Vec<TapEntry>,
}

impl Tape {
    pub fn new(wanted: impl IntoIterator<Item = Target>, grads: bool) -> Self {
        Self { wanted: wanted.into_iter().collect(), grads, entries: Vec::new() }
    }

    /// Whether the tape records `target`.
    pub fn wants(&self, target: Target) -> bool {
        self.wanted.contains(&target)
    }

    pub fn wants_tower(&self, tower: Tower) -> bool {
        self.wanted.iter().any(|t| t.tower == tower)
    }

    /// Record `x` and, with gradients, a probe on `y` (returned with the probe added) when the
    /// tape wants `target`; `y` unchanged otherwise.
    pub fn tap(&mut self, target: Target, x: &Tensor, y: Tensor) -> Result<Tensor> {
        if !self.wanted.contains(&target) {
            return Ok(y);
        }
        let (y, probe) = if self.grads {
            let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
            (y.add(probe.as_tensor())?, Some(probe))
        } else {
            (y, None)
        };
        self.entries.push(TapEntry { target, x: x.detach(), probe });
        Ok(y)
    }
}
